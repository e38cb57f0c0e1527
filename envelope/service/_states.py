"""Key states and what each allows, following the AWS KMS key-state table.

`check(state, group)` raises the exception AWS returns when an operation of `group` is called on
a key in `state`. Operations are grouped by how the table treats them, so the rule for each
operation is one line here and the state-machine test can hold an independent model of it.
"""

from __future__ import annotations

from .errors import DisabledException, KMSInvalidStateException

ENABLED = "Enabled"
DISABLED = "Disabled"
PENDING_DELETION = "PendingDeletion"
PENDING_IMPORT = "PendingImport"
PENDING_REPLICA_DELETION = "PendingReplicaDeletion"
UNAVAILABLE = "Unavailable"
CREATING = "Creating"
UPDATING = "Updating"

PENDING = (PENDING_DELETION, PENDING_REPLICA_DELETION)

# group -> states in which the operation is allowed; any other state raises (see `check`)
CRYPTO = "crypto"  # Encrypt, Decrypt, ReEncrypt, GenerateDataKey*, Sign, Verify, *Mac, GetPublicKey
ENABLE_DISABLE = "enable-disable"  # EnableKey, DisableKey
ROTATION = "rotation"  # EnableKeyRotation, DisableKeyRotation, RotateKeyOnDemand
# UpdateKeyDescription, Tag/UntagResource, Create/UpdateAlias target, import, replicate
MANAGE = "manage"
#: DeleteImportedKeyMaterial: also while the key waits for deletion (its state stays)
DELETE_MATERIAL = "delete-material"
SCHEDULE = "schedule"  # ScheduleKeyDeletion
CANCEL = "cancel"  # CancelKeyDeletion
READ = "read"  # DescribeKey, ListResourceTags, GetKeyRotationStatus, ListKeyRotations
#: CreateGrant: the key-state table refuses it on a Disabled key (DisabledException) and on one
#: pending import, unlike the other management operations; a disconnected store's key is fine
GRANT = "grant"
#: UpdatePrimaryRegion: "both the primary key and the replica key must be in the Enabled key
#: state when the operation starts" (Developer Guide, "Change the primary key"); a Disabled
#: one is DisabledException, the error botocore's model lists for the operation
UPDATE_PRIMARY = "update-primary"

_ALLOWED: dict[str, frozenset[str]] = {
    CRYPTO: frozenset({ENABLED}),
    # Unavailable (a disconnected custom key store): "you can view and manage unavailable KMS
    # keys" (the key-state table); the stored state changes, and shows once it reconnects
    ENABLE_DISABLE: frozenset({ENABLED, DISABLED, UNAVAILABLE}),
    ROTATION: frozenset({ENABLED}),
    # Unavailable: a key of a disconnected custom key store is still managed and deletable
    MANAGE: frozenset({ENABLED, DISABLED, PENDING_IMPORT, UNAVAILABLE}),
    DELETE_MATERIAL: frozenset({ENABLED, DISABLED, PENDING_IMPORT, *PENDING}),
    SCHEDULE: frozenset({ENABLED, DISABLED, PENDING_IMPORT, UNAVAILABLE}),
    CANCEL: frozenset(PENDING),
    GRANT: frozenset({ENABLED, UNAVAILABLE}),
    UPDATE_PRIMARY: frozenset({ENABLED}),
    READ: frozenset(
        {
            ENABLED,
            DISABLED,
            PENDING_DELETION,
            PENDING_IMPORT,
            PENDING_REPLICA_DELETION,
            UNAVAILABLE,
            CREATING,
            UPDATING,
        }
    ),
}
# groups in which a Disabled key gets DisabledException rather than KMSInvalidStateException
_DISABLED_EXCEPTION = frozenset({CRYPTO, ROTATION, GRANT, UPDATE_PRIMARY})


def _spoken(state: str) -> str:
    """A KeyState as AWS words it in messages: PendingImport -> "pending import"."""
    return "".join(" " + c.lower() if c.isupper() else c for c in state).strip()


def check(state: str, group: str, arn: str) -> None:
    if state in _ALLOWED[group]:
        return
    if state == DISABLED and group in _DISABLED_EXCEPTION:
        raise DisabledException(f"{arn} is disabled.")
    if group == CANCEL:  # (the key-state table's own words)
        raise KMSInvalidStateException(f"{arn} is not pending deletion.")
    err = KMSInvalidStateException(f"{arn} is {_spoken(state)}.")
    if state in PENDING and group == CRYPTO:
        err.alarm = True  # someone still uses a key that is about to be destroyed
    raise err
