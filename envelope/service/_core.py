"""The machinery every operation shares: one call = one transaction + one audit record.

`ServiceCore` holds the plumbing of `KeyService` (see `service.py` for the operations): running a
call (`_run`), reading and writing key rows with their cached metadata, applying what became due
(`_settle`), backing-key material and its cache, and the AWS-shaped `KeyMetadata`. The request
helpers (`_bytes`, `_context`, pagination markers) validate members the way AWS does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from cachetools import LRUCache
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from .._names import REGION as _REGION_RE
from .._ratelimit import RateQuota
from .._regions import PARTITION
from ..errors import ThrottlingError
from . import _authz, _keystore_links, _materials, _rows, _specs, _states, audit, digests
from ._columns import stored_blob, translated, unsealed
from ._states import (
    DISABLED,
    ENABLED,
    PENDING_DELETION,
    PENDING_IMPORT,
    PENDING_REPLICA_DELETION,
)
from .access import Decision, Principal, Request, authorize, parse_policy
from .access.document import check_new_key_policy
from .errors import (
    AccessDeniedException,
    DryRunOperationException,
    InvalidArnException,
    InvalidCiphertextException,
    InvalidGrantTokenException,
    InvalidKeyUsageException,
    InvalidMarkerException,
    KMSInternalException,
    KMSInvalidStateException,
    KmsServiceError,
    LimitExceededException,
    MalformedPolicyDocumentException,
    NotFoundException,
    StoreError,
    TagException,
    TamperedStoreError,
    ThrottlingException,
    UnsupportedOperationException,
    ValidationException,
)
from .store import Store, material_aad

_log = logging.getLogger("envelope.service")

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "000000000000"
DAY = 86400.0
MAX_PLAINTEXT = 4096
MAX_TAGS = 50
#: AWS's quota "Aliases per KMS key" (the developer guide's resource quotas).
MAX_ALIASES_PER_KEY = 50
MAX_ON_DEMAND_ROTATIONS = 25
IMPORT_TOKEN_TTL = DAY
#: At most this many calls share one commit (bounds a commit's latency and size).
MAX_GROUP = 64
#: How long a call waiting for group commit sleeps before it checks that someone leads.
_LEAD_CHECK_SECONDS = 0.5
#: The values of the deprecated KeyMetadata.CustomerMasterKeySpec (botocore's model enum): it
#: is not answered for a spec it has no value for (ML-DSA, ML-KEM, Edwards keys).
_CMK_SPECS = frozenset(
    {
        "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
        "ECC_SECG_P256K1", "SYMMETRIC_DEFAULT", "HMAC_224", "HMAC_256", "HMAC_384",
        "HMAC_512", "SM2",
    }
)  # fmt: skip


def deprecated_spec(spec: str) -> dict[str, str]:
    """The deprecated CustomerMasterKeySpec member beside KeySpec (DescribeKey, GetPublicKey):
    left out for a spec its enum has no value for (ML-DSA, ML-KEM, Edwards keys), by both
    (GetPublicKey answered ML_DSA_44 there while DescribeKey left it out; review)."""
    return {"CustomerMasterKeySpec": spec} if spec in _CMK_SPECS else {}


_ACTION_NAME = re.compile(r"[a-z0-9-]+:[A-Z][A-Za-z0-9]*")
_ALIAS_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")
#: The services whose AWS managed key (``alias/aws/<service>``) is made on first use: the
#: predefined aliases AWS keeps in every account for the services that integrate with KMS,
#: and this project's own ``envelope``. (AWS's ListAliases "might also include" them without a
#: TargetKeyId before first use; here ListAliases shows one once its key is made.)
#: Any other ``alias/aws/`` name is NotFoundException, as in AWS: a typo must not leave a key
#: that nobody can disable or delete.
MANAGED_SERVICES = frozenset(
    {
        "acm",
        "backup",
        "codeartifact",
        "codecommit",
        "connect",
        "dms",
        "dynamodb",
        "ebs",
        "ecr",
        "elasticfilesystem",
        "envelope",
        "es",
        "fsx",
        "glue",
        "kafka",
        "kinesis",
        "kinesisvideo",
        "lambda",
        "lightsail",
        "rds",
        "redshift",
        "s3",
        "secretsmanager",
        "sns",
        "sqs",
        "ssm",
        "timestream",
        "xray",
    }
)
#: A key id as AWS makes them: a UUID, or ``mrk-`` and 32 hex digits for a multi-Region key.
#: Anything else is not a key id at all, answered "Invalid keyId '...'" as AWS answers it.
_KEY_ID_RE = re.compile(
    r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)
#: The operations whose key the API reference asks for as "the key ID or key ARN" (only the
#: cryptographic operations, DescribeKey and GetPublicKey take an alias name or alias ARN too):
#: an alias there is not resolved but refused, "Invalid keyId '...'", as any other string that
#: is not a key id. (CreateAlias and UpdateAlias refuse an alias target in their own words, and
#: so does GetKeyLastUsage; GenerateMac and VerifyMac, whose reference says neither, take
#: aliases.)
#: AWS KMS's message when an operation that wants a key id or key ARN is given an alias.
ALIASES_NOT_SUPPORTED = "Key Aliases are not supported for this operation."
KEY_ID_ONLY = frozenset(
    {
        "CancelKeyDeletion",
        "CreateGrant",
        "DeleteImportedKeyMaterial",
        "DisableKey",
        "DisableKeyRotation",
        "EnableKey",
        "EnableKeyRotation",
        "GetKeyPolicy",
        "GetKeyRotationStatus",
        "GetParametersForImport",
        "ImportKeyMaterial",
        "ListAliases",
        "ListGrants",
        "ListKeyPolicies",
        "ListKeyRotations",
        "ListResourceTags",
        "PutKeyPolicy",
        "ReplicateKey",
        "RetireGrant",
        "RevokeGrant",
        "RotateKeyOnDemand",
        "ScheduleKeyDeletion",
        "TagResource",
        "UntagResource",
        "UpdateKeyDescription",
        "UpdatePrimaryRegion",
    }
)
#: How long `custom_key_store_types` trusts what it read.
_STORE_TYPES_TTL = 1.0
_DATA_KEY_SPECS = {"AES_128": 16, "AES_256": 32}
_WRAPPING_ALGORITHMS = (
    "RSAES_OAEP_SHA_1",
    "RSAES_OAEP_SHA_256",
    "RSA_AES_KEY_WRAP_SHA_1",
    "RSA_AES_KEY_WRAP_SHA_256",
)
_WRAPPING_KEY_SPECS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}

Clock = Callable[[], "float | datetime"]
Response = dict[str, Any]


@dataclass(frozen=True)
class RequestContext:
    """Where a request came from; recorded in the audit log with the principal."""

    source_ip: str = "127.0.0.1"
    user_agent: str = "envelope"
    request_id: str | None = None
    #: The AWS service making the call for the principal (``kms:ViaService``), e.g.
    #: ``envelope.us-east-1.amazonaws.com`` when the encryptor calls through its backend.
    via_service: str | None = None
    #: Whether the request came over TLS (``aws:SecureTransport``): set by the HTTP server;
    #: None for a call made in process, which crossed no network.
    secure_transport: bool | None = None


_LOCAL = RequestContext()
#: ``aws:PrincipalType`` of each kind of caller (IAM's values; a service principal has none)
_PRINCIPAL_TYPES = {"root": "Account", "user": "User", "assumed-role": "AssumedRole"}


class _Call:
    """One call in flight: what the audit record will say about it."""

    __slots__ = (
        "account",
        "alarm",
        "caller",
        "ctx",
        "decision",
        "enc_context",
        "head",
        "identity_stamp",
        "key_id",
        "keystore_calls",
        "matched",
        "material_ids",
        "new_material",
        "op",
        "params",
        "prefetched",
        "principal",
        "purges",
        "reason",
        "request_id",
        "values",
    )

    def __init__(self, op: str, principal: str, ctx: RequestContext, params: dict[str, Any]):
        self.op = op
        self.principal = principal
        self.ctx = ctx
        self.params = params
        self.key_id: str | None = None
        #: The caller, parsed (set by `_run` before the operation runs) and its account.
        self.caller: Principal | None = None
        self.account: str | None = None
        #: The access decision for the audit record: "allowed" / "denied" (None: not reached).
        self.decision: str | None = None
        self.matched: list[str] = []
        self.reason: str | None = None
        #: The request's encryption context (condition keys and grant constraints).
        self.enc_context: dict[str, str] | None = None
        #: Extra condition-context values of this request (lower-case names).
        self.values: dict[str, Any] = {}
        #: The caller's identity stamp, read with the key row (see `_load`).
        self.identity_stamp: str | None = None
        self.alarm = False
        self.new_material: dict[tuple[str, int], _Material] = {}
        self.head: audit.Head | None = None
        # keys found past their deletion date: purged even if the call itself fails
        self.purges: list[tuple[str, str]] = []
        #: HSM and XKS calls made for this call (custom key stores), for its audit record.
        self.keystore_calls: list[dict[str, Any]] = []
        #: The request id, once something outside needed it (an XKS proxy's kmsRequestId).
        self.request_id: str | None = None
        #: Key-material ids of the symmetric backing keys this call used, in order (answered
        #: as KeyMaterialId; ReEncrypt's source first, then its destination).
        self.material_ids: list[str] = []
        #: An external key store's answer obtained before the transaction (`_keystores`).
        self.prefetched: Any = None

    def begin_attempt(self) -> None:
        """Forget what an earlier attempt of this call found: a call whose group commit failed
        as a whole runs again on its own (`_commit_pending`), and it kept the rolled-back
        attempt's new key material (`_material` then handed out material no store held:
        data keys no other process could decrypt) and doubled its audit record's matched
        statements and material ids (review)."""
        self.decision = None
        self.matched = []
        self.reason = None
        self.identity_stamp = None
        self.alarm = False
        self.new_material = {}
        self.head = None
        self.purges = []
        self.material_ids = []
        # (not `keystore_calls`: the HSM and proxy calls it lists were made, an XKS proxy's
        # before the first attempt even began, and the audit record names every one)


class _Slot:
    """A call waiting for group commit: its outcome once its transaction committed.

    Its thread sleeps on `wake` (a lock taken at birth) until the leader releases it: when the
    call is committed (`done`), or to hand it the lead (`lead`)."""

    __slots__ = ("call", "done", "error", "fn", "lead", "result", "wake")

    def __init__(
        self, call: _Call, fn: Callable[[sqlite3.Connection, _Call, float], Response]
    ) -> None:
        self.call = call
        self.fn = fn
        self.done = False
        self.lead = False
        self.result: Response | None = None
        self.error: Exception | None = None
        self.wake = threading.Lock()
        self.wake.acquire()

    def succeed(self, result: Response | None) -> None:
        self.result, self.done = result, True
        self._release()

    def fail(self, error: Exception) -> None:
        self.error, self.done = error, True
        self._release()

    def _release(self) -> None:
        # (only the leader settles or hands over slots, so this test cannot race)
        if self.wake.locked():
            self.wake.release()

    def outcome(self) -> Response:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class _Key:
    """A key row: `meta` is the stored JSON (AWS fields plus internal ``x_`` fields)."""

    __slots__ = ("account", "arn", "id", "meta", "region")

    def __init__(
        self, region: str, key_id: str, meta: dict[str, Any], arn: str, account: str
    ) -> None:
        self.region = region
        self.id = key_id
        self.meta = meta
        self.arn = arn
        #: The account that owns the key (``x_account``; keys made before schema 4 belong to
        #: the service's account).
        self.account = account

    @property
    def state(self) -> str:
        return str(self.meta["KeyState"])

    @property
    def spec(self) -> str:
        return str(self.meta["KeySpec"])

    @property
    def usage(self) -> str:
        return str(self.meta["KeyUsage"])

    @property
    def aws_managed(self) -> bool:
        return bool(self.meta["KeyManager"] == "AWS")

    @property
    def multi_region(self) -> bool:
        return bool(self.meta["MultiRegion"])

    def algorithms(self) -> _specs.Algorithms:
        return _specs.validate_spec(self.spec, self.usage)

    def algorithm_members(self) -> dict[str, list[str]]:
        """The non-empty EncryptionAlgorithms / SigningAlgorithms / MacAlgorithms /
        KeyAgreementAlgorithms members."""
        algs = self.algorithms()
        out: dict[str, list[str]] = {}
        for member, names in (
            ("EncryptionAlgorithms", algs.encryption),
            ("SigningAlgorithms", algs.signing),
            ("MacAlgorithms", algs.mac),
            ("KeyAgreementAlgorithms", algs.key_agreement),
            ("EncapsulationAlgorithms", algs.encapsulation),
        ):
            if names:
                out[member] = list(names)
        return out


class _Material:
    __slots__ = ("_private", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._private: PrivateKeyTypes | None = None

    def private(self) -> PrivateKeyTypes:
        if self._private is None:
            self._private = _specs.load_private(self.raw)
        return self._private

    def __repr__(self) -> str:
        return "_Material(<secret>)"


class _RequestIds:
    """Request ids shaped like UUIDs: a random per-service prefix and a counter.

    Unique across processes (64 random bits per service) and far cheaper than `uuid.uuid4()`
    on the hot path.
    """

    __slots__ = ("_n", "_prefix")

    def __init__(self) -> None:
        x = os.urandom(10).hex()
        self._prefix = f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{x[16:20]}-"
        self._n = 0

    def __call__(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n:012x}"


def _epoch(t: float | datetime) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


def _seal_quietly(store: Store, clock: Clock, close: bool) -> None:
    """Best-effort final seal (a finalizer must not raise). A store whose file is gone (a
    temporary store removed before the process exits) has nothing left to seal, and
    publishing its digests would recreate the folder it was removed with."""
    if store.closed:
        return
    if not store.path.exists():
        store.close()
        return
    try:
        with store.write() as conn:
            audit.seal_now(conn, store.sealer, _epoch(clock()))
        store.publish_digests(strict=False)
    except Exception:  # pragma: no cover - nothing useful to do at exit
        pass
    finally:
        if close:
            store.close()


def _authentic_meta(
    store: Store, region: str, key_id: str, text: object, mac: object
) -> dict[str, Any] | None:
    """A key row's parsed metadata if its MAC verifies (and it is a JSON object), else None."""
    if not isinstance(text, str) or not _rows.check(store.row_key, region, key_id, text, mac):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _dry_run(
    fn: Callable[[sqlite3.Connection, _Call, float], Response], flag: object
) -> Callable[[sqlite3.Connection, _Call, float], Response]:
    """DryRun: the whole call (validation, authorization, key state, the work itself) runs in
    its transaction, then `DryRunOperationException` rolls it back, as AWS answers a dry run
    that would have succeeded; a call that would fail fails with its own error."""

    def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
        if not isinstance(flag, bool):
            raise ValidationException("DryRun must be a boolean")
        call.params["DryRun"] = True
        fn(conn, call, now)
        raise DryRunOperationException(
            "The request would have succeeded, but the DryRun option is set."
        )

    return op


def _no_such_principal(caller: Principal) -> Decision:
    """A user or role the store does not hold (never created, or deleted) is nobody: no
    statement can allow it, even one naming its ARN or "*" (AWS ties a policy to the
    principal's unique id, so a deleted user's name stops working at once)."""
    return Decision(
        False,
        None,
        f"the principal {caller.identity_arn} does not exist (it was never created, or it was "
        "deleted)",
        (f"caller: {caller.identity_arn} is not a user or role of this store",),
    )


def _store_failure(e: BaseException, store: Store) -> KmsServiceError:
    """A store failure as a service error: corruption is `StoreError` (not retryable), an
    edited column `TamperedStoreError` (`_columns.translated`); a busy, full or failing disk
    is `KMSInternalException` (transient)."""
    meant = translated(e, store.path) if isinstance(e, sqlite3.Error) else None
    return meant or KMSInternalException(f"the store failed: {type(e).__name__}")


def _require(value: Any, name: str) -> Any:
    if value is None or value == "" or value == b"":
        raise ValidationException(f"{name} is required")
    return value


def _bytes(value: Any, name: str, lo: int, hi: int) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValidationException(f"{name} must be bytes")
    b = bytes(value)
    if not lo <= len(b) <= hi:
        raise ValidationException(f"{name} must be {lo}..{hi} bytes")
    return b


def _context(ctx: Mapping[str, str] | None) -> dict[str, str]:
    if ctx is None:
        return {}
    if not isinstance(ctx, Mapping):
        raise ValidationException("EncryptionContext must be a map of strings")
    out: dict[str, str] = {}
    for k, v in ctx.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise ValidationException("EncryptionContext must be a map of non-empty strings")
        out[k] = v
    if sum(len(k) + len(v) for k, v in out.items()) > 8192:
        raise ValidationException("EncryptionContext is too large")
    return out


#: Every grant token this service has issued: the prefix, then 48 random bytes, base64url.
GRANT_TOKEN_PREFIX = "envgt1-"
_GRANT_TOKEN_RE = re.compile(r"envgt1-[A-Za-z0-9_-]{64}\Z")


def _grant_tokens(tokens: Any) -> list[str]:
    """GrantTokens as AWS constrains them: up to 10 strings of 1..8192 characters, each a
    grant token (InvalidGrantTokenException, "the specified grant token is not valid", for
    anything this service could not have issued, such as a grant id passed by mistake).

    Grants here take effect in the same transaction that creates them, so a token is never
    needed for consistency; a well-formed one is accepted wherever AWS takes one (what a
    caller may do is decided by the grants in force, not by the tokens it passes).
    """
    if tokens is None:
        return []
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise ValidationException("GrantTokens must be a list of strings")
    if len(tokens) > 10:
        raise ValidationException("GrantTokens must have at most 10 members")
    for t in tokens:
        if not isinstance(t, str) or not 1 <= len(t) <= 8192:
            raise InvalidGrantTokenException("a grant token must be 1..8192 characters")
        if _GRANT_TOKEN_RE.match(t) is None:
            raise InvalidGrantTokenException("the specified grant token is not valid")
    return list(tokens)


def _names_alias(ref: Any) -> bool:
    """An alias name (``alias/...``) or an alias ARN."""
    return isinstance(ref, str) and (ref.startswith("alias/") or ":alias/" in ref)


def valid_key_id(text: str) -> bool:
    """Is `text` shaped as a key id this service makes (a UUID, or ``mrk-`` and 32 hex)?"""
    return _KEY_ID_RE.match(text) is not None


def recorded_reference(ref: str) -> str:
    """A key reference as the audit record keeps it: as given when it is shaped like one (a key
    id, an ARN, an alias), else only its length. A key file's contents passed as `--key` went
    into the hash-chained log, which cannot be cleaned without breaking its seals (review)."""
    if valid_key_id(ref) or ref.startswith(("arn:", "alias/")):
        return ref[:2048]
    return f"<not a key reference: {len(ref)} characters, not recorded>"


def wrong_usage(key: _Key, op: str) -> InvalidKeyUsageException:
    """A key used for an operation its KeyUsage does not allow, in AWS's words."""
    return InvalidKeyUsageException(
        f"{key.arn} key usage is {key.usage} which is not valid for {op}."
    )


def wrong_origin(key: _Key) -> UnsupportedOperationException:
    """A key whose origin an operation does not serve (importing into a KMS-made key, rotating
    an imported or custom-store key automatically), in AWS's words."""
    return UnsupportedOperationException(
        f"{key.arn} origin is {key.meta['Origin']} which is not valid for this operation."
    )


def key_material_id(key_id: str, version: int) -> str:
    """The KeyMaterialId of version `version` of a key's backing key: 64 hex digits, as AWS's.

    Derived from the key id and the version, not from the material (which it must not reveal):
    the same on every replica of a multi-Region key, fixed for the life of the material, and
    the same again when one key's imported material is imported again."""
    return hashlib.sha256(
        b"envelope/kms/key-material-id/v1\0" + key_id.encode() + version.to_bytes(4, "big")
    ).hexdigest()


def _int_in(value: Any, lo: int, hi: int, name: str) -> int:
    """An integer request member in lo..hi (AWS's range constraints), else ValidationException."""
    if not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationException(f"{name} must be between {lo} and {hi}")  # (AWS's wording)
    return value


def _check_region(region: Any) -> str:
    if not isinstance(region, str) or not _REGION_RE.match(region):
        raise ValidationException(f"{region!r} is not a Region name")
    return region


def _limit(limit: int | None, default: int, hi: int) -> int:
    return default if limit is None else _int_in(limit, 1, hi, "Limit")


def _paging(
    call: _Call, limit: int | None, marker: str | None, default: int, hi: int
) -> tuple[int, str]:
    """(page size, last item of the previous page or "") for a paginated List* call."""
    return _limit(limit, default, hi), _marker_decode(call, marker) or ""


def _marker_encode(call: _Call, value: str) -> str:
    """A NextMarker: the last item of the page, bound to the operation that listed it."""
    return base64.urlsafe_b64encode(f"m1:{call.op}:{value}".encode()).decode()


def _marker_decode(call: _Call, marker: str | None) -> str | None:
    """The last item of the previous page, from a Marker this operation issued
    (InvalidMarkerException for anything else: a marker of another List operation too)."""
    if marker is None:
        return None
    try:
        text = base64.urlsafe_b64decode(marker.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidMarkerException("Marker was not issued by this service") from None
    prefix = f"m1:{call.op}:"
    if not text.startswith(prefix):
        raise InvalidMarkerException("Marker was not issued by this service") from None
    return text[len(prefix) :]


def _page(
    call: _Call, items: list[Any], limit: int, key: Callable[[Any], str]
) -> tuple[list[Any], Response]:
    extra: Response = {"Truncated": len(items) > limit}
    if len(items) > limit:
        items = items[:limit]
        extra["NextMarker"] = _marker_encode(call, key(items[-1]))
    return items, extra


_services: weakref.WeakSet[ServiceCore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for service in list(_services):
        service._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ServiceCore:
    """The embedded KMS for one Region of a store (other Regions are other namespaces).

    Thread-safe: calls serialise on the store's lock (and across processes on SQLite's).
    `clock` returns the current time (epoch seconds or an aware datetime) so tests can move it.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        owns_store: bool = False,
        quota: RateQuota | None = None,
        principal: str | None = None,
        group_commit: bool = True,
    ) -> None:
        if not _REGION_RE.match(region):
            raise ValidationException(f"{region!r} is not a Region name")
        if not re.fullmatch(r"\d{12}", account):
            raise ValidationException("the account id must be 12 digits")
        self.store = store
        self.region = region
        self.account = account
        self.root_principal = f"arn:aws:iam::{account}:root"
        #: Who calls when a call names no principal (the CLI's ``--as``); the account root
        #: unless configured. Access control applies to it like to any other principal.
        self.default_principal = principal or self.root_principal
        self._clock: Clock = clock or time.time
        self._owns_store = owns_store
        #: Per-operation-family request-rate quota (as AWS KMS enforces); None = unlimited.
        self.quota = quota
        #: Parsed key rows by (Region, key id), with the row's text and MAC they were parsed
        #: from: reused only while the row holds exactly those (see `_load`).
        self._meta_cache: LRUCache[tuple[str, str], tuple[str, bytes, dict[str, Any]]] = LRUCache(
            maxsize=16384
        )
        self._materials: LRUCache[tuple[str, int], _Material] = LRUCache(maxsize=4096)
        self._fp_key: bytes | None = None
        self._audit_head: audit.Head | None = None
        self._request_id = _RequestIds()
        self._access = _authz.AccessCache(store.row_key)
        #: Calls from several threads share commits (see `_run`); off: one transaction each.
        self.group_commit = group_commit
        self._pending: list[_Slot] = []
        self._pending_lock = threading.Lock()
        #: A thread is committing the waiting calls (`_run`).
        self._leading = False
        _services.add(self)
        #: How many calls the last commit held (`_commit_pending`).
        self._last_group = 1
        #: A key of an HSM key store was purged: destroy its token object after the commit.
        self._token_deletions_due = False
        #: The kinds of custom key store the store defines, and when that was read
        #: (`custom_key_store_types`).
        self._store_types: tuple[frozenset[str], float] = (frozenset(), -_STORE_TYPES_TTL - 1.0)
        #: Custom key stores' parsed rows and live connections, keyed by the row's MAC
        #: (`_keystore_rows`).
        self._keystore_cache: dict[tuple[str, str], Any] = {}
        #: (account, role name) -> (access generation, the ARNs of roles of that name):
        #: `session_role`'s lookups, good while the generation holds.
        self._session_roles: dict[tuple[str, str], tuple[bytes | None, tuple[str, ...]]] = {}
        # Seal at garbage collection or interpreter exit if the caller forgets `close()`; it
        # must not hold `self`, only what sealing needs.
        self._finalizer = weakref.finalize(self, _seal_quietly, store, self._clock, owns_store)
        #: `close` seals the log up to its last record; a reader that must not write (audit
        #: verify, audit tail: never sign over records it has not vouched for) turns it off.
        self.seal_on_close = True

    def __repr__(self) -> str:
        return f"KeyService(region={self.region!r}, store={self.store!r})"

    # -- plumbing -------------------------------------------------------------------------

    def now(self) -> float:
        return _epoch(self._clock())

    def arn(self, key_id: str, region: str | None = None, account: str | None = None) -> str:
        return f"arn:aws:kms:{region or self.region}:{account or self.account}:key/{key_id}"

    def _alias_arn(self, name: str, account: str | None = None) -> str:
        return f"arn:aws:kms:{self.region}:{account or self.account}:{name}"

    def custom_key_store_types(self) -> frozenset[str]:
        """The kinds of custom key store the store defines (``AWS_CLOUDHSM``,
        ``EXTERNAL_KEY_STORE``), read at most once a `_STORE_TYPES_TTL` (a store another
        process creates is seen within it; this process's own at once). Not an operation, not
        audited: while an external key store is defined, Encrypt, Decrypt and GenerateDataKey*
        make a key's proxy call before the store lock (`_run`'s prefetch), and a server runs
        its calls off its event loop while any custom key store is defined."""
        types, read_at = self._store_types
        now = time.monotonic()
        if now - read_at > _STORE_TYPES_TTL:
            with self.store.read() as conn:  # (a handful of rows: parsed here, not by JSON1)
                rows = conn.execute("SELECT body FROM custom_key_stores").fetchall()
            found = set()
            for (body,) in rows:
                try:
                    found.add(str(json.loads(str(body)).get("CustomKeyStoreType")))
                except (ValueError, AttributeError):
                    found.add("unreadable")  # (its own call reports the tampered row)
            types = frozenset(found)
            self._store_types = (types, now)
        return types

    def _run(
        self,
        op: str,
        principal: str | None,
        context: RequestContext | None,
        params: dict[str, Any],
        fn: Callable[[sqlite3.Connection, _Call, float], Response],
        *,
        dry_run: bool = False,
        prefetch: Callable[[_Call], None] | None = None,
    ) -> Response:
        """Run `fn` in a store transaction with its audit record (group commit).

        `prefetch`, if given, runs first, outside the store lock: it may call an external key
        store's proxy and leave the answer in ``call.prefetched``, so that slow round trips of
        concurrent calls overlap instead of queueing behind the lock (a round trip made inside
        the lock would also stall every other call's prefetch, which reads under it). It
        decides nothing: `fn` checks everything again in the transaction and uses the answer
        only if it matches (`_keystore_crypto`); a failing prefetch is ignored.
        """
        call = _Call(op, principal or self.default_principal, context or _LOCAL, params)
        if dry_run is not False:
            fn = _dry_run(fn, dry_run)
        elif prefetch is not None:
            try:
                prefetch(call)
            except Exception:
                call.prefetched = None
        if not self.group_commit:
            # One call at a time per store in this process (SQLite serialises writers anyway);
            # the lock also covers the caches, which are updated only after a commit.
            with self.store.lock:
                return self._run_locked(call, fn)
        # Group commit: one thread at a time leads, committing every call waiting for it in
        # one transaction (`_commit_pending`); a call that arrived while a commit was in flight
        # is in the next one. The others sleep on their own slot until the leader wakes them,
        # each only once its own commit is done, or hands one of them the lead when its own
        # call is done. (They used to queue for the store lock instead: a thread whose call was
        # committed then waited behind the next leader's whole commit to learn it, so commits
        # held one or two calls where eight threads were calling.)
        slot = _Slot(call, fn)
        try:  # (from the queueing on: an interrupt anywhere leaves the lead to someone)
            with self._pending_lock:
                self._pending.append(slot)
                slot.lead = not self._leading
                self._leading = True
            if not slot.lead:
                while not slot.wake.acquire(timeout=_LEAD_CHECK_SECONDS):
                    if self._lead_lost(slot):
                        break
            if not slot.done:
                with self.store.lock:
                    while not slot.done:
                        if not self._commit_pending():  # (taken, never settled: see there)
                            slot.fail(KMSInternalException("the call was interrupted"))
        finally:
            self._pass_lead(slot)
        return slot.outcome()

    def _lead_lost(self, slot: _Slot) -> bool:
        """A waiting call heard nothing for a while: True once it is settled or leads, taking
        the lead itself when nobody is committing (the store lock is free). A leader
        interrupted in its hand-over (a KeyboardInterrupt between two bytecodes) would
        otherwise leave every later call waiting for ever; a second leader is harmless, since
        commits take the store lock one at a time."""
        with self._pending_lock:
            if slot.done or slot.lead:
                return True
            if not self.store.lock.acquire(blocking=False):
                return False  # a leader is at work
            self.store.lock.release()
            slot.lead = self._leading = True
            return True

    def _pass_lead(self, slot: _Slot) -> None:
        """After `slot`'s call returned (or was interrupted): a leader hands the lead to the
        oldest waiting call, or leaves it free; an interrupted call that was never run leaves
        the queue (nothing was done for it)."""
        with self._pending_lock:
            if not slot.done and slot in self._pending:
                self._pending.remove(slot)
            if not slot.lead:
                return
            # (two leaders, after a takeover in `_lead_lost`, must not hand one call the lead
            # twice: its lock would be released twice)
            heir = next((s for s in self._pending if not s.lead), None)
            if heir is not None:
                heir.lead = True
                heir.wake.release()
            elif not self._pending:
                self._leading = False
            # (else every waiting call already has the lead: one of them leads next)

    def _reset_after_fork(self) -> None:
        """In a forked child: the parent's waiting calls belong to threads that do not exist
        here, and must never be run in the child; the lock may have been held at the fork."""
        self._pending_lock = threading.Lock()
        self._pending = []
        self._leading = False

    def _commit_pending(self) -> bool:
        """Run and commit the waiting calls (the caller holds the store lock); False when none
        waited (a leader's own call that is neither waiting nor settled was taken by a commit
        an interrupt cut short before it could settle it)."""
        batch: list[_Slot] = []
        try:  # (every call taken from the queue is settled, even if interrupted here)
            if len(self._pending) < self._last_group:
                # Fewer calls wait than the last commit held: its callers, just woken, are
                # probably on their way back with their next call. Letting the GIL go once
                # lets them queue for this commit instead of the next (measured: 8 threads
                # with synchronous=FULL went from 3,000-3,400 to 3,500-3,700 calls/s). Never
                # taken by a lone thread, whose every commit holds one call.
                time.sleep(0)
            with self._pending_lock:
                batch = self._pending[:MAX_GROUP]  # (a copy, taken before they leave it)
                del self._pending[: len(batch)]
            self._last_group = len(batch)
            if not batch:
                return False
            if len(batch) > 1:
                try:
                    self._run_batch(batch)
                    return True
                except Exception:
                    # The batch's transaction failed as a whole (a store failure, or a bug
                    # in one call), so nothing of it was committed or acknowledged: each call
                    # runs again on its own, where only the failing one fails.
                    self._audit_head = None
            for slot in batch:
                if not slot.done:
                    self._run_single(slot)
            return True
        finally:
            for slot in batch:
                if not slot.done:  # interrupted (KeyboardInterrupt) before its commit
                    with self._pending_lock:
                        if slot in self._pending:  # (interrupted between taking and removing)
                            self._pending.remove(slot)
                    slot.fail(KMSInternalException("the call was interrupted; nothing was done"))

    def _run_single(self, slot: _Slot) -> None:
        try:
            slot.succeed(self._run_locked(slot.call, slot.fn))
        except Exception as e:  # handed to the calling thread, which raises it
            slot.fail(e)

    def _prepare(self, call: _Call) -> None:
        """Who calls, and the request-rate quota: refused before any work (and audited)."""
        call.caller = self._access.principal(call.principal)
        call.account = call.caller.account or self.account
        if self.quota is not None:
            try:
                self.quota.check(call.op)
            except ThrottlingError:
                # AWS's recorded words (its knowledge center's "ThrottlingException" page); the
                # family and its rate are the server's configuration, not the caller's business
                raise ThrottlingException(
                    "You have exceeded the rate at which you may call KMS. Reduce the frequency "
                    "of your calls."
                ) from None

    def _resolve_session(self, conn: sqlite3.Connection, call: _Call) -> None:
        """A role session's caller, bound to its role's full ARN (see `session_role`)."""
        caller = call.caller
        if caller is not None and caller.kind == "assumed-role" and caller.role_arn is None:
            call.caller = self.session_role(conn, caller)

    def session_role(self, conn: sqlite3.Connection, caller: Principal) -> Principal:
        """`caller`, a role session, with the ARN of its role, path included.

        A session ARN names its role without the path (``assumed-role/Ops/x1`` is a session of
        ``role/sandbox/Ops``), and role names are unique in an account, as in IAM, so the name
        finds the role. Without this, a session of ``role/sandbox/Ops`` was evaluated as
        ``role/Ops``: with another role's policies, grants and key-policy entries when both
        existed, and refused everything when only the role with a path did (review). A name
        no role has leaves the path-less ARN (a principal that does not exist: refused). Two
        roles of one name (possible in stores made before names were unique) are refused:
        which one the session belongs to cannot be told."""
        account = caller.account
        assert account is not None
        # remembered until a user or role is made or deleted (each bumps the access
        # generation): the lookup reads every role row of the account (0.6 ms with 1,000)
        row = conn.execute("SELECT value FROM meta WHERE name=?", (_authz.ACCESS_GEN,)).fetchone()
        generation = None if row is None else stored_blob(row[0], "the access generation")
        remembered = self._session_roles.get((account, caller.name))
        if remembered is not None and remembered[0] == generation:
            found = remembered[1]
        else:
            found = tuple(
                arn
                for arn in _authz.principals_named(conn, account, "role", caller.name)
                if arn.rsplit("/", 1)[1] == caller.name  # (the session names it as it is)
            )
            if len(self._session_roles) >= 4096:
                self._session_roles.clear()
            self._session_roles[(account, caller.name)] = (generation, found)
        if not found:
            return caller
        if len(found) > 1:
            raise AccessDeniedException(
                f"the session {caller.arn} names role {caller.name!r}, which {len(found)} roles "
                f"of account {account} are called ({', '.join(sorted(found))}): delete or rename "
                "all but one (role names are unique in an account)"
            )
        return Principal(caller.arn, account, caller.kind, caller.name, found[0])

    def _run_batch(self, batch: list[_Slot]) -> None:
        """Several calls in one transaction, each in a savepoint: a refused call is rolled
        back to its savepoint and its refusal recorded in its place, as `_run_locked` would in
        a transaction of its own; the others are unaffected. One commit acknowledges them all."""
        outcomes: list[tuple[_Slot, Response | None, KmsServiceError | None]] = []
        with self.store.write() as conn:
            for slot in batch:
                call = slot.call
                now = self.now()
                head = self._audit_head
                conn.execute("SAVEPOINT envelope_call")
                err: KmsServiceError | None = None
                result: Response | None = None
                call.begin_attempt()
                try:
                    self._prepare(call)
                    self._resolve_session(conn, call)
                    result = slot.fn(conn, call, now)
                    self._record(conn, call, now, None)
                    self._audit_head = call.head
                except KmsServiceError as e:
                    err = e
                if err is None:
                    conn.execute("RELEASE envelope_call")
                else:
                    conn.execute("ROLLBACK TO envelope_call")
                    conn.execute("RELEASE envelope_call")
                    self._audit_head = head
                    call.new_material.clear()
                    call.alarm = call.alarm or err.alarm
                    for region, key_id in call.purges:
                        key = self._load(conn, region, key_id)
                        if key is not None:
                            self._settle(conn, key, now)
                    self._record(conn, call, now, err)
                    self._audit_head = call.head
                outcomes.append((slot, result, err))
        # committed: only now are the calls' materials known to be durable (see `_material`)
        for slot, result, err in outcomes:
            if err is None:
                self._materials.update(slot.call.new_material)
                slot.succeed(result)
            else:
                slot.fail(err)
        if self.store.sealer.dirty:
            self.store.publish_digests(strict=False)
        self._after_commit()

    def _after_commit(self) -> None:
        """Work that must follow a commit: destroying the token objects of purged keys (never
        before: a rolled-back purge must find its key material still in the token)."""
        if self._token_deletions_due:
            self._token_deletions_due = False
            try:
                self._settle_token_deletions()
            except Exception:  # best effort: the rows stay for the next attempt
                _log.warning("destroying token objects of deleted keys failed", exc_info=True)

    def _settle_token_deletions(self) -> None:
        """Overridden by the custom-key-store operations (`_keystores`)."""

    def _run_locked(
        self, call: _Call, fn: Callable[[sqlite3.Connection, _Call, float], Response]
    ) -> Response:
        now = self.now()
        err: KmsServiceError
        call.begin_attempt()
        try:
            self._prepare(call)
            with self.store.write() as conn:
                self._resolve_session(conn, call)
                result = fn(conn, call, now)
                self._record(conn, call, now, None)
            # only now is the material known to be committed (see `_material`)
            self._materials.update(call.new_material)
            self._audit_head = call.head
            if self.store.sealer.dirty:
                self.store.publish_digests(strict=False)
            self._after_commit()
            return result
        except KmsServiceError as e:
            err = e
        except (sqlite3.Error, OSError) as e:
            err = _store_failure(e, self.store)
        call.alarm = call.alarm or err.alarm
        self._audit_head = None
        try:
            with self.store.write() as conn:
                for region, key_id in call.purges:
                    key = self._load(conn, region, key_id)
                    if key is not None:
                        self._settle(conn, key, now)
                self._record(conn, call, now, err)
        except (sqlite3.DatabaseError, StoreError):
            if isinstance(err, StoreError):
                raise err from None  # a corrupt store cannot record the refusal either
            raise
        self._audit_head = call.head
        if self.store.sealer.dirty:
            self.store.publish_digests(strict=False)
        self._after_commit()
        raise err

    def _record(
        self, conn: sqlite3.Connection, call: _Call, now: float, err: KmsServiceError | None
    ) -> None:
        body: dict[str, object] = {
            "time": now,
            "principal": call.principal,
            "operation": call.op,
            "key_id": call.key_id,
            "request_id": self._call_request_id(call),
            "source_ip": call.ctx.source_ip,
            "user_agent": call.ctx.user_agent,
            "region": self.region,
            "outcome": "ok" if err is None else "error",
            "error_code": None if err is None else err.code,
            "alarm": 1 if call.alarm else 0,
            "params": call.params,
            "account": call.account,
            "decision": call.decision,
            "matched": ",".join(call.matched) or None,
            "reason": call.reason,
        }
        if call.keystore_calls:
            body["keystore_calls"] = call.keystore_calls
        if call.material_ids and err is None:
            body["key_material_ids"] = call.material_ids
        changes = conn.total_changes
        call.head = audit.append(conn, body, self.store.sealer, now, self._audit_head)
        self.store.audit_rows(conn.total_changes - changes)

    def _call_request_id(self, call: _Call) -> str:
        """The call's request id (the client's, else one made here), fixed once asked for."""
        if call.request_id is None:
            call.request_id = call.ctx.request_id or self._request_id()
        return call.request_id

    def close(self) -> None:
        """Seal the audit log up to its last record (bounds an undetectable tail cut)."""
        self._finalizer.detach()
        if self.store.closed:
            return
        try:
            if self.seal_on_close and self.store.path.exists():  # (see `_seal_quietly`)
                try:
                    self.store.check_file()
                except StoreError:  # replaced: a seal would go to the file no one will read
                    pass
                else:
                    self.seal_audit_log(strict=False)
        finally:
            if self._owns_store:
                self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def seal_audit_log(self, *, strict: bool = True) -> int | None:
        """Seal the last record (if not sealed yet) and publish every pending digest."""
        with self.store.write() as conn:
            seq = audit.seal_now(conn, self.store.sealer, self.now())
        self.store.publish_digests(strict=strict)
        return seq

    def verify_audit_log(self) -> audit.VerifyReport:
        with self.store.read() as conn:
            return audit.verify(conn, self.store.audit_public_key)

    def check_digests(
        self,
        location: digests.DigestLocation | None = None,
        *,
        expected_fingerprint: str | None = None,
    ) -> tuple[digests.ChainReport, list[str], list[int]]:
        """The digest chain at `location` (default the store's), and this store against it:
        (chain report, problems of the store against the chain, seals not yet published)."""
        where = location or self.store.digests
        chain = digests.verify_chain(where, expected_fingerprint=expected_fingerprint)
        with self.store.read() as conn:
            try:
                counter = self.store.seal_counter(conn)
            except StoreError as e:
                return chain, [f"the store's seal counter fails authentication: {e}"], []
            problems, unpublished = digests.check_store(
                conn,
                chain,
                store_id=self.store.store_id,
                public_key=self.store.audit_public_bytes,
                seal_counter=counter,
                location=where,
            )
        return chain, problems, unpublished

    def check_store(self) -> list[str]:
        """Every key row and key-material row authentic? One sentence per problem found."""
        from ._storecheck import check_store

        with self.store.read() as conn:
            return check_store(self.store, conn)

    def audit_tail(self, n: int = 20) -> list[dict[str, object]]:
        with self.store.read() as conn:
            return list(audit.tail(conn, n))

    # -- key rows -------------------------------------------------------------------------

    def _load(
        self, conn: sqlite3.Connection, region: str, key_id: str, call: _Call | None = None
    ) -> _Key | None:
        """A key row, authenticated. With `call`, the same statement also reads the caller's
        identity stamp into it (the identity cache's validity, `_authz.IDENTITY_STAMP`: one
        query per call, not two)."""
        caller = None if call is None else call.caller
        if caller is not None and caller.kind not in ("root", "service"):
            arn = caller.identity_arn
            row = conn.execute(
                f"SELECT meta, mac, {_authz.IDENTITY_STAMP} FROM keys WHERE region=? AND key_id=?",
                (arn, arn, region, key_id),
            ).fetchone()
            if row is not None and call is not None:
                call.identity_stamp = str(row[2])
        else:
            row = conn.execute(
                "SELECT meta, mac FROM keys WHERE region=? AND key_id=?", (region, key_id)
            ).fetchone()
        if row is None:
            return None
        text, mac = row[0], row[1]
        cached = self._meta_cache.get((region, key_id))
        if cached is not None and cached[0] == text and cached[1] == mac:
            # The row is byte for byte the one authenticated and parsed before, so this is
            # what checking it again would give. (Not the row's `gen` counter, which is outside
            # the MAC: an editor of the file who put an old `gen` back made a process keep a
            # key it had seen Enabled in use after it was disabled.) A shallow copy: writers
            # replace nested values (x_tags) instead of mutating them (but x_mats, below).
            meta = dict(cached[2])
        else:
            parsed = _authentic_meta(self.store, region, key_id, text, mac)
            if parsed is None:
                raise TamperedStoreError(
                    f"the stored metadata of key {self.arn(key_id, region)} fails "
                    "authentication under the root key: it was changed outside the KMS (an "
                    "edited KeyState, usage, dates or tags, or a row copied from another key). "
                    "The key is refused; restore the store from a backup."
                )
            self._meta_cache[(region, key_id)] = (text, bytes(mac), parsed)
            meta = dict(parsed)
        if "x_mats" in meta:
            # imported materials are changed in place (`_materials`): this key's own copy, so
            # a write rolled back later cannot leave its changes in the cached value
            meta["x_mats"] = {v: dict(e) for v, e in meta["x_mats"].items()}
        account = str(meta.get("x_account") or self.account)
        return _Key(region, key_id, meta, self.arn(key_id, region, account), account)

    def _save(self, conn: sqlite3.Connection, key: _Key, *, insert: bool = False) -> None:
        # `gen` is kept for earlier versions' caches, which key on it (this one keys on the
        # row's text and MAC): random, so never reused
        gen = secrets.randbits(62)
        text = json.dumps(key.meta, sort_keys=True, separators=(",", ":"))
        mac = _rows.mac(self.store.row_key, key.region, key.id, text)
        if insert:
            conn.execute(
                "INSERT INTO keys(region, key_id, gen, meta, mac) VALUES (?,?,?,?,?)",
                (key.region, key.id, gen, text, mac),
            )
        else:
            conn.execute(
                "UPDATE keys SET gen=?, meta=?, mac=? WHERE region=? AND key_id=?",
                (gen, text, mac, key.region, key.id),
            )

    def _resolve_id(
        self, conn: sqlite3.Connection, ref: Any, *, managed: bool, account: str | None = None
    ) -> tuple[str, bool, str | None]:
        """Resolve a key id, key ARN, alias name or alias ARN.

        Returns (key id, created-managed-key?, the account the reference names or None). A key
        id or alias name is the caller's (`account`); only an ARN reaches another account's
        key, as in AWS. An ``alias/aws/`` alias is created on first use, in the caller's account.
        """
        if not isinstance(ref, str) or not ref:
            raise ValidationException("KeyId is required")
        if len(ref) > 2048:
            raise ValidationException("KeyId must be at most 2048 characters")
        account = account or self.account
        named: str | None = None
        name = ref
        if ref.startswith("arn:"):
            parts = ref.split(":", 5)
            if (
                len(parts) != 6
                or parts[2] != "kms"
                or not re.fullmatch(r"\d{12}", parts[4])
                or not re.fullmatch(r"aws(-[a-z]+)*", parts[1])
            ):
                raise InvalidArnException(f"{ref} is not a KMS ARN")
            if parts[1] != PARTITION:  # another partition's key (aws-cn, aws-us-gov, ...)
                raise NotFoundException(f"Invalid arn {parts[1]}")
            if parts[3] != self.region:
                raise NotFoundException(f"Invalid arn {parts[3]}")  # AWS's words
            named = parts[4]
            resource = parts[5]
            if resource.startswith("key/"):
                return resource[4:], False, named
            if not resource.startswith("alias/"):
                raise InvalidArnException(f"{ref} names neither a key nor an alias")
            name = resource
        if name.startswith("alias/"):
            owner = named or account
            target = self._alias_target(conn, name, owner)
            if target is not None:
                return target, False, owner
            if (
                managed
                and owner == account
                and name.startswith("alias/aws/")
                and name[len("alias/aws/") :] in MANAGED_SERVICES
            ):
                return self._create_managed_key(conn, name, account), True, owner
            raise NotFoundException(f"Alias {self._alias_arn(name, owner)} is not found.")
        if named is None and not valid_key_id(name):
            raise NotFoundException(f"Invalid keyId '{name}'")
        return name, False, named or account

    def _alias_target(self, conn: sqlite3.Connection, name: str, account: str) -> str | None:
        """The key id an alias of this Region and account points to (None: no such alias)."""
        row = conn.execute(
            "SELECT key_id FROM aliases WHERE region=? AND account=? AND name=?",
            (self.region, account, name),
        ).fetchone()
        return None if row is None else str(row[0])

    def _key(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        ref: Any,
        group: str,
        now: float,
        *,
        managed: bool = False,
        action: str | None = None,
        any_account: bool = False,
        authorize: bool = True,
    ) -> _Key:
        """Resolve, settle what is due, record the key in the audit record, authorize the
        caller (`action`, default ``kms:<operation>``), then check the key's state.

        `any_account`: the reference comes from a ciphertext (Decrypt), which may name a key of
        any account; a reference the caller typed reaches another account only as an ARN.
        """
        if call.key_id is None and isinstance(ref, str):
            call.key_id = recorded_reference(ref)  # what was asked, until it is an ARN
        if call.op in KEY_ID_ONLY and _names_alias(ref):
            # AWS's answer, alias name or alias ARN alike (its body, as clients have recorded
            # it for CreateGrant and GetKeyPolicy): InvalidArnException, not NotFound
            raise InvalidArnException(ALIASES_NOT_SUPPORTED)
        key_id, _, named = self._resolve_id(conn, ref, managed=managed, account=call.account)
        key = self._load(conn, self.region, key_id, call)
        if key is not None and not any_account and named != key.account:
            key = None  # another account's key, named without its ARN: not found, as in AWS
        if key is not None:
            key = self._settle(conn, key, now, call)
        if key is None:
            raise NotFoundException(f"Key '{self.arn(key_id, account=named)}' does not exist")
        call.key_id = key.arn
        if authorize:
            if _names_alias(ref):
                call.values["kms:requestalias"] = ref.rsplit(":", 1)[-1]
            self._authorize_key(conn, call, key, action or f"kms:{call.op}")
        if "CustomKeyStoreId" in key.meta:
            from ._keystore_rows import effective_state

            _states.check(effective_state(self, conn, key), group, key.arn)
        else:
            _states.check(key.state, group, key.arn)
        return key

    # -- access control -------------------------------------------------------------------

    def _caller_values(self, call: _Call, now: float, identity: _authz.Identity) -> dict[str, Any]:
        """Condition keys every request has: who calls, from where, when, through what."""
        caller = call.caller
        assert caller is not None
        values: dict[str, Any] = {
            "aws:sourceip": call.ctx.source_ip,
            "aws:currenttime": self._access.iso_time(now),
            "aws:epochtime": int(now),
            "aws:principalarn": caller.identity_arn,
            "aws:requestedregion": self.region,
            "aws:viaawsservice": bool(call.ctx.via_service),
            "aws:principalisawsservice": caller.kind == "service",
        }
        kind = _PRINCIPAL_TYPES.get(caller.kind)
        if kind is not None:
            values["aws:principaltype"] = kind
        if caller.kind == "user":
            values["aws:username"] = caller.name
        user_id = identity.user_id
        if user_id is not None:
            values["aws:userid"] = user_id
        if caller.account is not None:
            values["kms:calleraccount"] = caller.account
            values["aws:principalaccount"] = caller.account
        if call.ctx.via_service:
            values["kms:viaservice"] = call.ctx.via_service
        if call.ctx.secure_transport is not None:
            values["aws:securetransport"] = call.ctx.secure_transport
        values.update(call.values)
        return values

    def _authorize_key(self, conn: sqlite3.Connection, call: _Call, key: _Key, action: str) -> None:
        """Is the caller allowed `action` on `key`? Key policy, identity policies, grants."""
        request, decision = self._decide_key(conn, call, key, action, explain=False)
        self._decided(call, request, decision)

    def _key_values(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        key: _Key,
        identity: _authz.Identity,
        now: float,
    ) -> _authz.ConditionContext:
        """The condition context of a call on `key`: the caller's values and the key's (its
        spec, usage, origin, multi-Region type, tags, aliases)."""
        m = key.meta
        base = self._caller_values(call, now, identity)
        base["kms:keyspec"] = m["KeySpec"]
        base["kms:keyusage"] = m["KeyUsage"]
        base["kms:keyorigin"] = m["Origin"]
        base["kms:multiregion"] = key.multi_region
        if key.multi_region:
            base["kms:multiregionkeytype"] = m.get("x_mr_type", "PRIMARY")

        def aliases() -> list[str]:
            return [
                str(r[0])
                for r in conn.execute(
                    "SELECT name FROM aliases WHERE region=? AND account=? AND key_id=?",
                    (key.region, key.account, key.id),
                )
            ]

        return _authz.ConditionContext(
            base, call.enc_context, identity.tags, m.get("x_tags"), aliases
        )

    def _decide_key(
        self, conn: sqlite3.Connection, call: _Call, key: _Key, action: str, *, explain: bool
    ) -> tuple[Request, Decision]:
        caller = call.caller
        assert caller is not None
        now = self.now()
        identity = self._access.identity(conn, caller, call.identity_stamp)
        call.identity_stamp = None  # a later check in this call (after a write) reads it afresh
        m = key.meta
        policy_text = m.get("x_policy") or _authz.default_key_policy(key.account)
        key_policy = self._access.policy(policy_text, resource_policy=True)
        values = self._key_values(conn, call, key, identity, now)
        request = Request(
            action=action,
            caller=caller,
            resource=key.arn,
            resource_account=key.account,
            values=values,
            encryption_context=call.enc_context,
            aws_managed=key.aws_managed,
        )
        if not identity.exists:
            return request, _no_such_principal(caller)
        reads = None
        if not explain:
            known = self._access.decided(
                caller.arn, key.arn, action, identity, key_policy, key.aws_managed, values
            )
            if known is not None:
                return request, known
            reads = values.record()
        decision = authorize(
            request, key_policy=key_policy, iam_policies=identity.policies, explain=explain
        )
        if reads is not None and decision.allowed:
            self._access.remember_decision(
                caller.arn,
                key.arn,
                action,
                identity,
                key_policy,
                key.aws_managed,
                reads,
                decision,
            )
        if (explain or not decision.allowed) and caller.kind != "service":
            grants = self._access.grants(
                conn, key.region, key.id, (caller.identity_arn, caller.arn)
            )
            if grants:
                decision = authorize(
                    request,
                    key_policy=key_policy,
                    iam_policies=identity.policies,
                    grants=grants,
                    explain=explain,
                )
        return request, decision

    def _authorize_account(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        action: str | None = None,
        resource: str = "*",
        *,
        explain: bool = False,
    ) -> tuple[Request, Decision]:
        """An account-level action (CreateKey, ListKeys, ...; an alias): identity policies."""
        caller = call.caller
        assert caller is not None
        identity = self._access.identity(conn, caller)
        values = _authz.ConditionContext(
            self._caller_values(call, self.now(), identity), call.enc_context, identity.tags
        )
        request = Request(
            action=action or f"kms:{call.op}",
            caller=caller,
            resource=resource,
            resource_account=None,
            values=values,
            encryption_context=call.enc_context,
        )
        decision = (
            authorize(request, key_policy=None, iam_policies=identity.policies, explain=explain)
            if identity.exists
            else _no_such_principal(caller)
        )
        if not explain:
            self._decided(call, request, decision)
        return request, decision

    def _is_kms_action(self, action: str) -> bool:
        """`kms:Name` where Name is an operation this KMS serves (a public method of the
        service, by its snake-case name), or one of the IAM actions that are not operations
        (ReEncrypt is authorized as kms:ReEncryptFrom and kms:ReEncryptTo)."""
        service, _, name = action.partition(":")
        if service != "kms":
            return False
        if name in ("ReEncryptFrom", "ReEncryptTo"):
            return True
        method = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        return not method.startswith("_") and callable(getattr(type(self), method, None))

    def explain_access(
        self,
        *,
        principal: str,
        action: str,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
        via_service: str | None = None,
        source_ip: str = "127.0.0.1",
        values: Mapping[str, Any] | None = None,
    ) -> Response:
        """Would `principal` be allowed `action` (``kms:Decrypt``) on `key_id` (or, with no
        key, at the account level) with this encryption context? Which statement or grant
        decides, and why each other one does not apply.

        An operator's tool (``envelope policy explain``): it reads the store and changes
        nothing, so it is neither authorized nor audited, like ``audit tail``. The request's
        other condition keys (tags, aliases, the caller's account) are filled in as a real call
        would fill them; `values` adds or overrides any (lower-case names).
        """
        if not isinstance(action, str) or not _ACTION_NAME.fullmatch(action):
            # one action, named in full: a pattern (kms:*, kms:Get*) is a policy's way to
            # name many, and no single call is ever made under it
            raise ValidationException(
                f"action must be one service:Action name, e.g. kms:Decrypt, not {action!r}"
            )
        if not self._is_kms_action(action):
            # a typo (kms:Decryptt) matched kms:* and was answered "allowed"
            raise ValidationException(
                f"{action!r} is not an AWS KMS action (kms:Decrypt, kms:ReEncryptFrom, ...)"
            )
        call = _Call(
            action.split(":", 1)[1],
            principal,
            RequestContext(source_ip=source_ip, via_service=via_service),
            {},
        )
        call.caller = self._access.principal(principal)
        call.account = call.caller.account or self.account
        call.enc_context = _context(encryption_context) if encryption_context else None
        call.values.update({k.lower(): v for k, v in (values or {}).items()})
        with self.store.read() as conn:
            self._resolve_session(conn, call)
            if key_id is None:
                request, decision = self._authorize_account(conn, call, action, explain=True)
            else:
                kid, _, named = self._resolve_id(conn, key_id, managed=False, account=call.account)
                key = self._load(conn, self.region, kid)
                if key is None or named != key.account:
                    raise NotFoundException(f"Key '{self.arn(kid, account=named)}' does not exist")
                if _names_alias(key_id):
                    call.values.setdefault("kms:requestalias", key_id.rsplit(":", 1)[-1])
                request, decision = self._decide_key(conn, call, key, action, explain=True)
        return {
            "Allowed": decision.allowed,
            "Principal": principal,
            "Action": action,
            "Resource": request.resource,
            "Matched": decision.matched,
            "Reason": decision.reason,
            "Message": None if decision.allowed else decision.message(request),
            "Explanation": list(decision.explanation),
        }

    def _principal_exists(self, conn: sqlite3.Connection, arn: str) -> bool:
        """Does a policy's user or role principal exist (AWS refuses policies naming ones that
        do not)? An assumed-role session exists when its role does."""
        try:
            principal = self._access.principal(arn)
        except KmsServiceError:
            return False
        if principal.kind in ("root", "service"):
            return True
        if principal.kind == "assumed-role":
            try:
                principal = self.session_role(conn, principal)
            except AccessDeniedException:
                return False  # (a name two roles share names neither)
        row = conn.execute(
            "SELECT 1 FROM principals WHERE arn=?", (principal.identity_arn,)
        ).fetchone()
        return row is not None

    def _checked_policy(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        text: Any,
        key_arn: str,
        account: str,
        bypass: Any,
        key: _Key | None = None,
        new_tags: Mapping[str, str] | None = None,
    ) -> str:
        """A key policy to store: valid (`MalformedPolicyDocumentException` otherwise) and, unless
        `bypass`, one that still lets the caller call PutKeyPolicy (AWS's lockout safety check).

        The check asks what a later PutKeyPolicy on the key would be asked, with the key's own
        condition keys: `key` (PutKeyPolicy; ReplicateKey passes its primary, whose spec,
        usage and origin the replica has), or for a key being made, the ones its request
        set, and `new_tags` as its resource tags. Without them a policy allowing the caller
        on ``kms:KeySpec`` or ``aws:ResourceTag`` was refused as a lockout (review)."""
        if not isinstance(bypass, bool):
            raise ValidationException("BypassPolicyLockoutSafetyCheck must be a boolean")
        if not isinstance(text, str) or not text:
            raise ValidationException("Policy must be a non-empty string")
        policy = parse_policy(
            text,
            resource_policy=True,
            principal_exists=lambda arn: self._principal_exists(conn, arn),
        )
        check_new_key_policy(policy)
        if bypass:
            return text
        caller = call.caller
        assert caller is not None
        identity = self._access.identity(conn, caller)
        if key is not None:
            values = self._key_values(conn, call, key, identity, self.now())
        else:
            values = _authz.ConditionContext(
                self._caller_values(call, self.now(), identity),
                call.enc_context,
                identity.tags,
                new_tags,
            )
        request = Request(
            action="kms:PutKeyPolicy",
            caller=caller,
            resource=key_arn,
            resource_account=account,
            values=values,
        )
        if not authorize(request, key_policy=policy, iam_policies=identity.policies).allowed:
            raise MalformedPolicyDocumentException(
                "The new key policy will not allow you to update the key policy in the future."
            )
        return text

    @staticmethod
    def _decided(call: _Call, request: Request, decision: Decision) -> None:
        if decision.allowed:
            call.decision = call.decision or "allowed"
            if decision.matched:
                call.matched.append(decision.matched)
            return
        call.decision = "denied"
        call.reason = decision.reason
        raise AccessDeniedException(decision.message(request))

    def _settle(
        self, conn: sqlite3.Connection, key: _Key, now: float, call: _Call | None = None
    ) -> _Key | None:
        """Apply what became due since the last call: deletion, rotation, material expiry."""
        m = key.meta
        state = key.state
        if state == PENDING_DELETION and m["DeletionDate"] <= now:
            self._purge(conn, key)
            if call is not None:
                call.purges.append((key.region, key.id))
            return None
        if state == PENDING_REPLICA_DELETION:
            rows = self._replica_rows(conn, key)
            gone = [other for _, other in rows if other is not None and self._gone(other)]
            for other in gone:  # (their Region's next call would have; purged here)
                self._purge(conn, other)
                if call is not None:
                    call.purges.append((other.region, other.id))
            if len(gone) == len(rows):
                # AWS: "when all replicas are deleted, it changes to PendingDeletion and its
                # waiting period begins": when the last one went, not when this was seen
                began = max((float(o.meta["DeletionDate"]) for o in gone), default=now)
                m["KeyState"] = PENDING_DELETION
                m["DeletionDate"] = began + m["PendingDeletionWindowInDays"] * DAY
                self._save(conn, key)
                if m["DeletionDate"] <= now:
                    return self._settle(conn, key, now, call)
        elif m.get("x_mr_type") == "REPLICA" and m["Origin"] == "AWS_KMS":
            # A replica shares its primary's backing keys and rotation schedule: a rotation
            # that is due is applied to the primary before the replica uses the material, so
            # both Regions encrypt under the same newest backing key.
            primary = self._load(conn, m["x_primary_region"], key.id)
            if primary is not None and primary.meta.get("x_mr_type") == "PRIMARY":
                self._settle(conn, primary, now, call)
        elif (
            state == ENABLED
            and m.get("x_rot_next") is not None
            and m["x_rot_next"] <= now
            and m.get("x_mr_type") != "REPLICA"
        ):
            due = float(m["x_rot_next"])
            self._rotate(conn, key, due, "AUTOMATIC")
            period = m["x_rot_period"] * DAY
            nxt = due + period
            if nxt <= now:
                nxt += ((now - nxt) // period + 1) * period
            m["x_rot_next"] = nxt
            self._save(conn, key)
        elif (
            state in (ENABLED, DISABLED, PENDING_IMPORT)
            and (expiry := _materials.next_expiry(m)) is not None
            and expiry <= now
        ):
            self._drop_imported(conn, key, _materials.expired(m, now))
        return key

    def _drop_imported(
        self, conn: sqlite3.Connection, key: _Key, versions: list[int], *, delete: bool = False
    ) -> None:
        """Remove imported materials from a key in its Region (deleted, or expired): the key
        becomes PendingImport if a material permanently associated with it goes, current or
        not (AWS's rule; a key pending deletion keeps its state), but not for one pending
        rotation.

        A material pending rotation that is deleted (`delete`) in the primary's Region (or of
        a single-Region key) is no longer associated with the key at all, in any Region: AWS
        lets different material be imported in its place. Each Region holds its own copy of a
        material, and the material rows are shared by every Region of a multi-Region key, so a
        row goes only once no Region holds that version any more.
        """
        m = key.meta
        mats = _materials.entries(m)
        others = self._other_regions(conn, key)
        changed: dict[str, _Key] = {}
        for v in versions:
            entry = mats.get(str(v))
            if entry is None:
                continue
            if delete and entry["state"] == _materials.PENDING and m.get("x_mr_type") != "REPLICA":
                del mats[str(v)]
                for other in others:
                    if _materials.entries(other.meta).pop(str(v), None) is not None:
                        _materials.refresh(other.meta)
                        changed[other.region] = other
                continue
            entry["imported"] = False
            entry.pop("model", None)
            entry.pop("valid_to", None)
        _materials.refresh(m)
        self._save(conn, key)
        for other in changed.values():
            self._save(conn, other)
        for v in versions:
            held = [
                _materials.entries(k.meta).get(str(v), {}).get("imported") for k in (key, *others)
            ]
            if not any(held):
                conn.execute("DELETE FROM material WHERE key_id=? AND version=?", (key.id, v))
                self._materials.pop((key.id, v), None)

    def _other_regions(self, conn: sqlite3.Connection, key: _Key) -> list[_Key]:
        """The same multi-Region key in every other Region that holds it."""
        out = []
        for region in self._replica_regions(conn, key):
            other = self._load(conn, region, key.id)
            if other is not None:
                out.append(other)
        return out

    def _purge(self, conn: sqlite3.Connection, key: _Key) -> None:
        if "x_hsm_label" in key.meta:
            conn.execute(
                "INSERT OR IGNORE INTO token_deletions(store_id, label, due) VALUES (?,?,?)",
                (
                    str(key.meta["CustomKeyStoreId"]),
                    _keystore_links.deletion_entry(
                        str(key.meta["x_hsm_label"]), _keystore_links.hsm_key_id(key.meta)
                    ),
                    self.now(),
                ),
            )
            # the token object goes once this deletion is committed (`_after_commit`)
            self._token_deletions_due = True
        conn.execute("DELETE FROM keys WHERE region=? AND key_id=?", (key.region, key.id))
        conn.execute("DELETE FROM aliases WHERE region=? AND key_id=?", (key.region, key.id))
        conn.execute("DELETE FROM import_tokens WHERE region=? AND key_id=?", (key.region, key.id))
        # a grant never outlives its key (in this Region)
        conn.execute(
            "DELETE FROM grant_tokens WHERE grant_id IN "
            "(SELECT grant_id FROM grants WHERE region=? AND key_id=?)",
            (key.region, key.id),
        )
        conn.execute("DELETE FROM grants WHERE region=? AND key_id=?", (key.region, key.id))
        if conn.execute("SELECT 1 FROM keys WHERE key_id=?", (key.id,)).fetchone() is None:
            conn.execute("DELETE FROM material WHERE key_id=?", (key.id,))

    def _replica_regions(self, conn: sqlite3.Connection, key: _Key) -> list[str]:
        """The other Regions holding this multi-Region key, without those whose copy is past
        its deletion date (deleted, as AWS would have deleted it in the background, whether
        or not a call in its Region has purged the row yet: the primary listed a dead
        replica, and never began its own waiting period; review)."""
        if not key.multi_region:
            return []
        return [region for region, other in self._replica_rows(conn, key) if not self._gone(other)]

    def _replica_rows(
        self, conn: sqlite3.Connection, key: _Key
    ) -> list[tuple[str, _Key | None]]:
        """(Region, key row) of every other Region's copy of this multi-Region key; None for
        a row edited outside the KMS (refused where it is used: its Region still holds it)."""
        out: list[tuple[str, _Key | None]] = []
        for (region,) in conn.execute(
            "SELECT region FROM keys WHERE key_id=? AND region<>? ORDER BY region",
            (key.id, key.region),
        ).fetchall():
            try:
                other = self._load(conn, str(region), key.id)
            except TamperedStoreError:
                other = None
            out.append((str(region), other))
        return out

    def _gone(self, key: _Key | None) -> bool:
        """A key past its deletion date: deleted, though its row may not be purged yet."""
        return (
            key is not None
            and key.state == PENDING_DELETION
            and key.meta["DeletionDate"] <= self.now()
        )

    # -- material -------------------------------------------------------------------------

    def _put_material(
        self,
        conn: sqlite3.Connection,
        call: _Call | None,
        key_id: str,
        version: int,
        raw: bytes,
        now: float,
        kind: str,
    ) -> None:
        sealed = self.store.root.seal(raw, material_aad(key_id, version))
        conn.execute(
            "INSERT OR REPLACE INTO material(key_id, version, created, kind, sealed) "
            "VALUES (?,?,?,?,?)",
            (key_id, version, now, kind, sealed),
        )
        if call is not None:
            call.new_material[(key_id, version)] = _Material(raw)

    def _material(
        self, conn: sqlite3.Connection, call: _Call, key_id: str, version: int
    ) -> _Material:
        cached = self._materials.get((key_id, version))
        if cached is not None:
            return cached
        pending = call.new_material.get((key_id, version))
        if pending is not None:
            return pending
        row = conn.execute(
            "SELECT sealed FROM material WHERE key_id=? AND version=?", (key_id, version)
        ).fetchone()
        if row is None:
            raise InvalidCiphertextException("the ciphertext names a backing key that is gone")
        what = f"the key material of key {key_id} (version {version})"
        mat = _Material(unsealed(self.store.root, row[0], material_aad(key_id, version), what))
        # The row may have been written by this very transaction (an automatic rotation), so it
        # is cached only once the transaction commits.
        call.new_material[(key_id, version)] = mat
        return mat

    def _current_version(self, conn: sqlite3.Connection, key: _Key) -> int:
        if key.multi_region and key.meta["Origin"] != "EXTERNAL":
            # rotation on the primary writes the shared rows; a replica catches up lazily
            row = conn.execute("SELECT MAX(version) FROM material WHERE key_id=?", (key.id,))
            v = row.fetchone()[0]
            return int(v) if v is not None else 0
        return int(key.meta["x_version"])

    def _current(self, conn: sqlite3.Connection, call: _Call, key: _Key) -> tuple[int, _Material]:
        version = self._current_version(conn, key)
        if version == 0:
            raise KMSInvalidStateException(f"{key.arn} has no key material")
        try:
            return version, self._material(conn, call, key.id, version)
        except InvalidCiphertextException:
            # the authenticated key row names this version as current: its row was deleted
            raise TamperedStoreError(
                f"the current key material of {key.arn} (version {version}) is missing from "
                "the store: its row was deleted outside the KMS. Restore the store from a "
                "backup."
            ) from None

    def _check_imported(self, key: _Key, version: int) -> None:
        """A ciphertext of a key with imported material names one of its materials that
        rotation made current at some point (never one pending rotation)."""
        entry = _materials.entries(key.meta).get(str(version))
        if entry is None or entry["state"] == _materials.PENDING:
            raise InvalidCiphertextException("the ciphertext names an unknown backing key")
        if not entry["imported"]:  # the key is PendingImport then: a second guard
            raise KMSInvalidStateException(f"{key.arn} is pending import.")

    def _rotate(self, conn: sqlite3.Connection, key: _Key, when: float, kind: str) -> None:
        version = self._current_version(conn, key) + 1
        # Rotation may happen in a transaction that then rolls back: do not cache its material.
        raw = _specs.generate_material(key.spec)
        self._put_material(conn, None, key.id, version, raw, when, kind)
        key.meta["x_version"] = version

    def _fingerprint(self, conn: sqlite3.Connection, key_id: str, raw: bytes) -> str:
        if self._fp_key is None:
            row = conn.execute("SELECT value FROM meta WHERE name='fingerprint_key'").fetchone()
            if row is None:
                raise TamperedStoreError(
                    "the store's fingerprint key is missing: it was deleted outside the KMS"
                )
            self._fp_key = unsealed(
                self.store.root, row[0], b"fingerprint-key", "the store's fingerprint key"
            )
        return hmac.new(self._fp_key, key_id.encode() + b"|" + raw, "sha256").hexdigest()

    # -- metadata -------------------------------------------------------------------------

    def _metadata(self, conn: sqlite3.Connection, key: _Key) -> Response:
        m = key.meta
        state = m["KeyState"]
        if "CustomKeyStoreId" in m:
            from ._keystore_rows import effective_state

            state = effective_state(self, conn, key)
        out: Response = {
            "AWSAccountId": key.account,
            "KeyId": key.id,
            "Arn": key.arn,
            "CreationDate": m["CreationDate"],
            "Enabled": state == ENABLED,
            "Description": m["Description"],
            "KeyUsage": m["KeyUsage"],
            "KeyState": state,
            "Origin": m["Origin"],
            "KeyManager": m["KeyManager"],
            "KeySpec": m["KeySpec"],
            "MultiRegion": m["MultiRegion"],
        }
        out.update(deprecated_spec(m["KeySpec"]))
        out.update(key.algorithm_members())
        for f in (
            "DeletionDate",
            "PendingDeletionWindowInDays",
            "ValidTo",
            "ExpirationModel",
            "CustomKeyStoreId",
            "CloudHsmClusterId",
            "XksKeyConfiguration",
        ):
            if m.get(f) is not None:
                out[f] = m[f]
        if state != PENDING_REPLICA_DELETION:
            # AWS shows the window only while a primary waits for its replicas to go
            out.pop("PendingDeletionWindowInDays", None)
        if (
            m["KeySpec"] == _specs.SYMMETRIC_DEFAULT
            and m["Origin"] in ("AWS_KMS", "EXTERNAL")
            and "CustomKeyStoreId" not in m
        ):
            if m["Origin"] == "EXTERNAL":
                # AWS keeps naming the current material after it is deleted or expires
                cur = _materials.current(m)
                version = cur[0] if cur is not None else 0
            else:
                version = self._current_version(conn, key)
            if version:
                out["CurrentKeyMaterialId"] = key_material_id(key.id, version)
        if key.multi_region:
            primary = m["x_primary_region"]
            regions = [key.region, *self._replica_regions(conn, key)]
            out["MultiRegionConfiguration"] = {
                "MultiRegionKeyType": m["x_mr_type"],
                "PrimaryKey": {
                    "Arn": self.arn(key.id, primary, key.account),
                    "Region": primary,
                },
                "ReplicaKeys": [
                    {"Arn": self.arn(key.id, r, key.account), "Region": r}
                    for r in sorted(regions)
                    if r != primary
                ],
            }
        return out

    def _new_key(
        self,
        conn: sqlite3.Connection,
        call: _Call | None,
        now: float,
        *,
        spec: str,
        usage: str,
        origin: str,
        description: str,
        multi_region: bool,
        manager: str,
        tags: dict[str, str],
        region: str | None = None,
        key_id: str | None = None,
        account: str | None = None,
        policy: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> _Key:
        """A new key row (and its first backing key, for AWS_KMS and EXTERNAL_KEY_STORE keys:
        an external key store's key is encrypted under KMS material too). `extra`: more
        metadata members (a custom key store's)."""
        region = region or self.region
        account = account or self.account
        if key_id is None:
            key_id = f"mrk-{uuid.uuid4().hex}" if multi_region else str(uuid.uuid4())
        meta: dict[str, Any] = {
            "KeyId": key_id,
            "CreationDate": now,
            "Description": description,
            "KeyUsage": usage,
            "KeySpec": spec,
            "KeyState": PENDING_IMPORT if origin == "EXTERNAL" else ENABLED,
            "Origin": origin,
            "KeyManager": manager,
            "MultiRegion": multi_region,
            "x_version": 0,
            "x_rot_period": None,
            "x_rot_next": None,
            "x_on_demand": 0,
            "x_tags": tags,
            "x_mr_type": "PRIMARY" if multi_region else None,
            "x_primary_region": region if multi_region else None,
            "x_account": account,
            "x_policy": policy or _authz.default_key_policy(account),
        }
        if origin == "EXTERNAL":
            meta["x_mats"] = {}
        if extra:
            meta.update(extra)
        key = _Key(region, key_id, meta, self.arn(key_id, region, account), account)
        if origin == "AWS_CLOUDHSM":
            meta["x_version"] = 1  # one backing key, in the token (never rotated)
        if origin in ("AWS_KMS", "EXTERNAL_KEY_STORE"):
            existing = conn.execute("SELECT 1 FROM material WHERE key_id=?", (key_id,)).fetchone()
            if existing is None:
                self._put_material(
                    conn, call, key_id, 1, _specs.generate_material(spec), now, "CREATE"
                )
            meta["x_version"] = 1
        self._save(conn, key, insert=True)
        return key

    def _create_managed_key(self, conn: sqlite3.Connection, alias: str, account: str) -> str:
        now = self.now()
        service = alias[len("alias/aws/") :]
        key = self._new_key(
            conn,
            None,
            now,
            spec=_specs.SYMMETRIC_DEFAULT,
            usage=_specs.ENCRYPT_DECRYPT,
            origin="AWS_KMS",
            description=f"Default key that protects my {service} resources when no other key "
            "is defined",
            multi_region=False,
            manager="AWS",
            tags={},
            account=account,
            policy=_authz.managed_key_policy(account, service, self.region),
        )
        key.meta["x_rot_period"] = 365
        key.meta["x_rot_next"] = now + 365 * DAY
        self._save(conn, key)
        conn.execute(
            "INSERT INTO aliases(region, account, name, key_id, created, updated) "
            "VALUES (?,?,?,?,?,?)",
            (self.region, account, alias, key.id, now, now),
        )
        return key.id

    @staticmethod
    def _customer_managed(key: _Key, op: str) -> None:
        if key.aws_managed:
            raise UnsupportedOperationException(f"{op} is not supported on AWS managed keys")

    def _customer_key(
        self, conn: sqlite3.Connection, call: _Call, ref: Any, group: str, now: float, op: str
    ) -> _Key:
        """`_key`, then refuse AWS managed keys (operations that change a key)."""
        key = self._key(conn, call, ref, group, now)
        self._customer_managed(key, op)
        return key

    def _sweep(self, conn: sqlite3.Connection, now: float, *, every_region: bool = False) -> None:
        """Settle every key of this Region, or of every Region (deletions and rotations that
        are due). A key row edited outside the KMS is skipped here: it is refused (and
        alarmed) wherever it is used, and one such row made every ListKeys of the Region
        fail (review)."""
        rows = conn.execute(
            "SELECT region, key_id FROM keys" + ("" if every_region else " WHERE region=?"),
            () if every_region else (self.region,),
        ).fetchall()
        for region, kid in rows:
            try:
                key = self._load(conn, str(region), str(kid))
            except TamperedStoreError:
                continue
            if key is not None:
                self._settle(conn, key, now)

    @staticmethod
    def _check_tags(
        tags: Sequence[Mapping[str, str]] | None,
        existing: dict[str, str],
        *,
        new_key: bool = False,
    ) -> dict[str, str]:
        """`existing` with `tags` applied, checked as AWS checks them: a key listed twice in
        one request, or a key beginning with ``aws:`` in any case, is a TagException; more than
        50 tags is a TagException when the key is being created (CreateKey, ReplicateKey) and
        LimitExceededException when tags are added to a key (TagResource)."""
        out = dict(existing)
        seen: set[str] = set()
        for t in tags or ():
            if not isinstance(t, Mapping) or "TagKey" not in t or "TagValue" not in t:
                raise ValidationException("each tag needs TagKey and TagValue")
            k, v = t["TagKey"], t["TagValue"]
            if not isinstance(k, str) or not 1 <= len(k) <= 128:
                raise TagException("TagKey must be 1..128 characters")
            if not isinstance(v, str) or len(v) > 256:
                raise TagException("TagValue must be 0..256 characters")
            if k[:4].lower() == "aws:":
                raise TagException("Tags beginning with aws: are reserved")
            if k in seen:
                raise TagException("Duplicate tag keys")
            seen.add(k)
            out[k] = v
        if len(out) > MAX_TAGS:
            if new_key:
                raise TagException("Too many tags")
            raise LimitExceededException(f"a key can have at most {MAX_TAGS} tags")
        return out
