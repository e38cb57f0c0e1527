"""Key lifecycle and rotation operations (CreateKey .. CancelKeyDeletion, *KeyRotation*)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence

from . import _authz, _materials, _specs, _states
from ._core import (
    DAY,
    MAX_ON_DEMAND_ROTATIONS,
    RequestContext,
    Response,
    _Call,
    _grant_tokens,
    _int_in,
    _Key,
    _limit,
    _marker_decode,
    _page,
    _paging,
    key_material_id,
    wrong_origin,
)
from ._keystore_rows import CUSTOM_ORIGINS
from ._keystores import KeyStoreOps
from ._states import (
    CANCEL,
    DISABLED,
    ENABLE_DISABLE,
    ENABLED,
    MANAGE,
    PENDING_DELETION,
    PENDING_IMPORT,
    PENDING_REPLICA_DELETION,
    READ,
    ROTATION,
    SCHEDULE,
)
from .errors import (
    InvalidMarkerException,
    KMSInvalidStateException,
    LimitExceededException,
    UnsupportedOperationException,
    ValidationException,
)


class LifecycleOps(KeyStoreOps):
    """CreateKey .. CancelKeyDeletion, and rotation."""

    # -- key lifecycle --------------------------------------------------------------------

    def create_key(
        self,
        *,
        description: str = "",
        key_usage: str | None = None,
        key_spec: str | None = None,
        customer_master_key_spec: str | None = None,
        origin: str = "AWS_KMS",
        multi_region: bool = False,
        tags: Sequence[Mapping[str, str]] | None = None,
        policy: str | None = None,
        bypass_policy_lockout_safety_check: bool = False,
        custom_key_store_id: str | None = None,
        xks_key_id: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        usage_given = key_usage is not None
        key_usage = key_usage or _specs.ENCRYPT_DECRYPT
        spec = key_spec or customer_master_key_spec or _specs.SYMMETRIC_DEFAULT
        params = {
            "KeySpec": spec,
            "KeyUsage": key_usage,
            "Origin": origin,
            "MultiRegion": multi_region,
        }

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            new_tags = self._check_tags(tags, {}, new_key=True)
            call.values.update(_authz.tag_values("aws:requesttag/", new_tags))
            call.values["aws:tagkeys"] = list(new_tags)
            call.values["kms:keyspec"] = spec
            call.values["kms:keyusage"] = key_usage
            call.values["kms:keyorigin"] = origin
            call.values["kms:bypasspolicylockoutsafetycheck"] = (
                bypass_policy_lockout_safety_check is True
            )
            call.values["kms:multiregion"] = multi_region is True
            if multi_region is True:
                call.values["kms:multiregionkeytype"] = "PRIMARY"
            self._authorize_account(conn, call)
            if new_tags:  # AWS: "To add tags when creating a KMS key, the caller must have
                # kms:TagResource permission in an IAM policy" (it was not asked; review)
                self._authorize_account(conn, call, "kms:TagResource")
            if key_spec and customer_master_key_spec and key_spec != customer_master_key_spec:
                raise ValidationException("KeySpec and CustomerMasterKeySpec differ")
            if not isinstance(description, str) or len(description) > 8192:
                raise ValidationException("Description must be at most 8192 characters")
            if not usage_given and spec != _specs.SYMMETRIC_DEFAULT:
                raise ValidationException(  # AWS's words
                    "You must specify a KeyUsage value for all KMS keys except for symmetric "
                    "encryption keys."
                )
            _specs.validate_spec(spec, key_usage)
            custom = origin in CUSTOM_ORIGINS or custom_key_store_id is not None
            if custom:
                if custom_key_store_id is None:
                    raise UnsupportedOperationException(f"Origin {origin} needs a CustomKeyStoreId")
                if spec != _specs.SYMMETRIC_DEFAULT or key_usage != _specs.ENCRYPT_DECRYPT:
                    raise UnsupportedOperationException(
                        "keys in custom key stores are SYMMETRIC_DEFAULT ENCRYPT_DECRYPT keys"
                    )
                if multi_region:
                    raise UnsupportedOperationException(
                        "multi-Region keys cannot be created in a custom key store"
                    )
                call.params["CustomKeyStoreId"] = custom_key_store_id
                if xks_key_id is not None:
                    call.params["XksKeyId"] = xks_key_id
            elif xks_key_id is not None:
                raise ValidationException("XksKeyId needs Origin EXTERNAL_KEY_STORE")
            elif origin not in ("AWS_KMS", "EXTERNAL"):
                raise ValidationException(
                    "Origin must be AWS_KMS, EXTERNAL, AWS_CLOUDHSM or EXTERNAL_KEY_STORE"
                )
            account = call.account or self.account
            key_id = f"mrk-{uuid.uuid4().hex}" if multi_region else str(uuid.uuid4())
            key_policy = (
                None
                if policy is None
                else self._checked_policy(
                    conn,
                    call,
                    policy,
                    self.arn(key_id, account=account),
                    account,
                    bypass_policy_lockout_safety_check,
                    new_tags=new_tags,
                )
            )
            extra = (
                self._custom_key_material(
                    conn,
                    call,
                    now,
                    store_id=custom_key_store_id,
                    origin=origin,
                    xks_key_id=xks_key_id,
                    key_id=key_id,
                    account=account,
                )
                if custom
                else None
            )
            key = self._new_key(
                conn,
                call,
                now,
                spec=spec,
                usage=key_usage,
                origin=origin,
                description=description,
                multi_region=bool(multi_region),
                manager="CUSTOMER",
                tags=new_tags,
                key_id=key_id,
                account=account,
                policy=key_policy,
                extra=extra,
            )
            call.key_id = key.arn
            return {"KeyMetadata": self._metadata(conn, key)}

        return self._run("CreateKey", principal, context, params, op)

    def describe_key(
        self,
        *,
        key_id: str,
        grant_tokens: Sequence[str] = (),
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            key = self._key(conn, call, key_id, READ, now, managed=True)
            return {"KeyMetadata": self._metadata(conn, key)}

        return self._run("DescribeKey", principal, context, {}, op)

    def list_keys(
        self,
        *,
        limit: int | None = None,
        marker: str | None = None,
        resource_owners: Sequence[str] | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """ListKeys: the caller's account's keys in this Region. `resource_owners` as AWS:
        ``SELF`` (the default) and ``OTHER_ACCOUNTS_VIA_RAM``, keys other accounts share
        through Resource Access Manager: there is no RAM here, so that part is always empty
        (another account's key is used by its ARN, under its key policy and grants)."""
        owners = ["SELF"] if resource_owners is None else list(resource_owners)

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            if (
                not 1 <= len(owners) <= 2
                or len(set(owners)) != len(owners)
                or any(o not in ("SELF", "OTHER_ACCOUNTS_VIA_RAM") for o in owners)
            ):
                raise ValidationException(
                    "ResourceOwners must be one or both of SELF and OTHER_ACCOUNTS_VIA_RAM"
                )
            self._authorize_account(conn, call)
            n, after = _paging(call, limit, marker, 100, 1000)
            if "SELF" not in owners:
                return {"Keys": [], "Truncated": False}
            self._sweep(conn, now)
            account = call.account or self.account
            items: list[str] = []
            # the caller's account only; keys made before schema 4 belong to the service's
            while len(items) <= n:
                rows = conn.execute(
                    "SELECT key_id, meta FROM keys WHERE region=? AND key_id>? ORDER BY key_id "
                    "LIMIT ?",
                    (self.region, after, n + 1),
                ).fetchall()
                if not rows:
                    break
                for kid, text in rows:
                    if _owner(text, self.account) == account:
                        items.append(str(kid))
                after = str(rows[-1][0])
            page, extra = _page(call, items, n, lambda k: k)
            return {
                "Keys": [{"KeyId": k, "KeyArn": self.arn(k, account=account)} for k in page],
                **extra,
            }

        params = {} if resource_owners is None else {"ResourceOwners": owners}
        return self._run("ListKeys", principal, context, params, op)

    def run_due_tasks(
        self, *, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        """Apply every due deletion, rotation and expiry now, in every Region of the store (AWS
        does this in the background; a replica's deletion waited for a call in its Region)."""

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            self._authorize_account(conn, call)
            self._sweep(conn, now, every_region=True)
            return {}

        return self._run("RunDueTasks", principal, context, {}, op)

    def update_key_description(
        self,
        *,
        key_id: str,
        description: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            if not isinstance(description, str) or len(description) > 8192:
                raise ValidationException("Description must be at most 8192 characters")
            key = self._customer_key(conn, call, key_id, MANAGE, now, "UpdateKeyDescription")
            key.meta["Description"] = description
            self._save(conn, key)
            return {}

        return self._run("UpdateKeyDescription", principal, context, {}, op)

    def _set_enabled(
        self,
        opname: str,
        key_id: str,
        enabled: bool,
        principal: str | None,
        context: RequestContext | None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            key = self._customer_key(conn, call, key_id, ENABLE_DISABLE, now, opname)
            key.meta["KeyState"] = ENABLED if enabled else DISABLED
            self._save(conn, key)
            return {}

        return self._run(opname, principal, context, {}, op)

    def enable_key(
        self, *, key_id: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        return self._set_enabled("EnableKey", key_id, True, principal, context)

    def disable_key(
        self, *, key_id: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        return self._set_enabled("DisableKey", key_id, False, principal, context)

    def schedule_key_deletion(
        self,
        *,
        key_id: str,
        pending_window_in_days: int | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        days = 30 if pending_window_in_days is None else pending_window_in_days

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _int_in(days, 7, 30, "PendingWindowInDays")
            call.values["kms:schedulekeydeletionpendingwindowindays"] = days
            key = self._customer_key(conn, call, key_id, SCHEDULE, now, "ScheduleKeyDeletion")
            m = key.meta
            m["PendingDeletionWindowInDays"] = days
            replicas = (
                key.multi_region
                and m["x_mr_type"] == "PRIMARY"
                and bool(self._replica_regions(conn, key))
            )
            if replicas:
                m["KeyState"] = PENDING_REPLICA_DELETION
                m["DeletionDate"] = None
            else:
                m["KeyState"] = PENDING_DELETION
                m["DeletionDate"] = now + days * DAY
            self._save(conn, key)
            out: Response = {
                "KeyId": key.arn,
                "KeyState": m["KeyState"],
                "PendingWindowInDays": days,
            }
            if m["DeletionDate"] is not None:
                out["DeletionDate"] = m["DeletionDate"]
            return out

        return self._run(
            "ScheduleKeyDeletion", principal, context, {"PendingWindowInDays": days}, op
        )

    def cancel_key_deletion(
        self, *, key_id: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            key = self._key(conn, call, key_id, CANCEL, now)
            m = key.meta
            m["KeyState"] = DISABLED
            if m["Origin"] == "EXTERNAL" and not _materials.complete(m):
                m["KeyState"] = PENDING_IMPORT
            m["DeletionDate"] = None
            m["PendingDeletionWindowInDays"] = None
            self._save(conn, key)
            return {"KeyId": key.arn}

        return self._run("CancelKeyDeletion", principal, context, {}, op)

    # -- rotation -------------------------------------------------------------------------

    def _rotation_key(
        self, conn: sqlite3.Connection, call: _Call, key_id: str, now: float, opname: str
    ) -> _Key:
        """The key a rotation-changing operation acts on: customer managed and rotatable.

        What the key is (its spec, origin, a replica) is checked before its state, as AWS's
        key-state table answers: an imported key still pending import gets "origin is
        EXTERNAL" (UnsupportedOperationException) from Enable/DisableKeyRotation, not
        KMSInvalidStateException (review)."""
        key = self._customer_key(conn, call, key_id, READ, now, opname)
        if key.spec != _specs.SYMMETRIC_DEFAULT:
            raise UnsupportedOperationException(f"{opname}: {key.spec} keys cannot be rotated")
        if key.meta["Origin"] != "AWS_KMS" and not (
            # AWS rotates an imported key on demand only, to material imported beforehand;
            # custom key store keys never
            key.meta["Origin"] == "EXTERNAL" and opname == "RotateKeyOnDemand"
        ):
            raise wrong_origin(key)
        if key.meta.get("x_mr_type") == "REPLICA":
            raise UnsupportedOperationException(f"{opname}: rotate the primary key instead")
        _states.check(key.state, ROTATION, key.arn)
        return key

    def _rotate_imported(self, conn: sqlite3.Connection, key: _Key, now: float) -> None:
        """RotateKeyOnDemand of a key with imported material: the material pending rotation
        becomes current in every Region of the key (each must hold it), the current one stays
        for decryption."""
        pending = _materials.pending(key.meta)
        if pending is None:  # AWS's words
            raise KMSInvalidStateException(
                f"No available key material pending rotation for the key: {key.arn}."
            )
        version = pending[0]
        family = [key, *self._other_regions(conn, key)]
        lacking = [
            k.region
            for k in family
            if not _materials.entries(k.meta).get(str(version), {}).get("imported")
        ]
        if lacking:
            raise KMSInvalidStateException(
                f"The key material (id: {key_material_id(key.id, version)}) pending rotation "
                f"for {key.arn} is not yet imported into the key in "
                f"{', '.join(sorted(lacking))}: import it there with ImportType "
                "EXISTING_KEY_MATERIAL first."
            )
        for k in family:
            mats = _materials.entries(k.meta)
            for entry in mats.values():
                if entry["state"] == _materials.CURRENT:
                    entry["state"] = _materials.NON_CURRENT
            entry = mats[str(version)]
            entry.update(state=_materials.CURRENT, rotated=now, rtype="ON_DEMAND")
            _materials.refresh(k.meta)
            if k is not key:
                self._save(conn, k)

    def enable_key_rotation(
        self,
        *,
        key_id: str,
        rotation_period_in_days: int | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        days = 365 if rotation_period_in_days is None else rotation_period_in_days

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _int_in(days, 90, 2560, "RotationPeriodInDays")
            call.values["kms:rotationperiodindays"] = days
            key = self._rotation_key(conn, call, key_id, now, "EnableKeyRotation")
            key.meta["x_rot_period"] = days
            key.meta["x_rot_next"] = now + days * DAY
            self._save(conn, key)
            return {}

        return self._run(
            "EnableKeyRotation", principal, context, {"RotationPeriodInDays": days}, op
        )

    def disable_key_rotation(
        self, *, key_id: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            key = self._rotation_key(conn, call, key_id, now, "DisableKeyRotation")
            key.meta["x_rot_period"] = None
            key.meta["x_rot_next"] = None
            self._save(conn, key)
            return {}

        return self._run("DisableKeyRotation", principal, context, {}, op)

    def get_key_rotation_status(
        self, *, key_id: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            key = self._key(conn, call, key_id, READ, now)
            if key.spec != _specs.SYMMETRIC_DEFAULT:
                # asymmetric and HMAC keys: "The key rotation status of these KMS keys is
                # always false" (AWS's GetKeyRotationStatus reference, and what AWS answers:
                # Terraform reads it for every key); Enable/DisableKeyRotation refuse them
                return {"KeyId": key.arn, "KeyRotationEnabled": False}
            src = key
            if key.meta.get("x_mr_type") == "REPLICA":
                primary = self._load(conn, key.meta["x_primary_region"], key.id)
                src = primary or key
            m = src.meta
            # AWS: "While a KMS key is pending deletion, its key rotation status is false";
            # the status comes back when the deletion is cancelled (it is kept, not cleared)
            enabled = m["x_rot_next"] is not None and key.state not in (
                PENDING_DELETION,
                PENDING_REPLICA_DELETION,
            )
            out: Response = {"KeyId": key.arn, "KeyRotationEnabled": enabled}
            if enabled:
                out["RotationPeriodInDays"] = m["x_rot_period"]
                out["NextRotationDate"] = m["x_rot_next"]
            return out

        return self._run("GetKeyRotationStatus", principal, context, {}, op)

    def rotate_key_on_demand(
        self, *, key_id: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            key = self._rotation_key(conn, call, key_id, now, "RotateKeyOnDemand")
            if key.meta["x_on_demand"] >= MAX_ON_DEMAND_ROTATIONS:
                raise LimitExceededException(  # AWS's words; its guide puts the limit at 25
                    "The on-demand rotations limit has been reached for the given keyId. No more "
                    f"on-demand rotations can be performed for this key: {key.arn}"
                )
            before = self._current_version(conn, key)
            if key.meta["Origin"] == "EXTERNAL":
                self._rotate_imported(conn, key, now)
            else:
                self._rotate(conn, key, now, "ON_DEMAND")
            # the audit record names the material rotated from and to
            for version in (before, self._current_version(conn, key)):
                call.material_ids.append(key_material_id(key.id, version))
            key.meta["x_on_demand"] += 1
            self._save(conn, key)
            return {"KeyId": key.arn}

        return self._run("RotateKeyOnDemand", principal, context, {}, op)

    def list_key_rotations(
        self,
        *,
        key_id: str,
        include_key_material: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """ListKeyRotations: the materials that rotations made current, oldest first; with
        IncludeKeyMaterial ALL_KEY_MATERIAL also the first material and any pending one."""
        include = include_key_material or "ROTATIONS_ONLY"

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            if include not in ("ROTATIONS_ONLY", "ALL_KEY_MATERIAL"):
                raise ValidationException(
                    "IncludeKeyMaterial must be ALL_KEY_MATERIAL or ROTATIONS_ONLY"
                )
            n = _limit(limit, 100, 1000)
            try:
                after = int(_marker_decode(call, marker) or "0")
            except ValueError:
                raise InvalidMarkerException("Marker was not issued by this service") from None
            key = self._key(conn, call, key_id, READ, now)
            if key.spec != _specs.SYMMETRIC_DEFAULT or key.meta["Origin"] not in (
                "AWS_KMS",
                "EXTERNAL",
            ):
                raise UnsupportedOperationException(
                    "only symmetric keys of AWS_KMS or EXTERNAL origin have rotations"
                )
            every = include == "ALL_KEY_MATERIAL"
            if key.meta["Origin"] == "EXTERNAL":
                entries = self._imported_rotations(conn, key, every, after)
            else:
                rows = conn.execute(
                    "SELECT version, created, kind FROM material WHERE key_id=? AND version>? "
                    "ORDER BY version LIMIT ?",
                    (key.id, after if every else max(after, 1), n + 1),
                ).fetchall()
                current = self._current_version(conn, key)
                entries = []
                for v, created, kind in rows:
                    entry: Response = {
                        "KeyId": key.arn,
                        "KeyMaterialId": key_material_id(key.id, int(v)),
                        "KeyMaterialState": "CURRENT" if int(v) == current else "NON_CURRENT",
                    }
                    if int(v) > 1:  # the first material came with the key, not a rotation
                        entry["RotationDate"] = float(created)
                        entry["RotationType"] = str(kind)
                    entries.append((int(v), entry))
            items, extra = _page(call, entries[: n + 1], n, lambda e: str(e[0]))
            return {"Rotations": [e for _, e in items], **extra}

        return self._run(
            "ListKeyRotations", principal, context, {"IncludeKeyMaterial": include}, op
        )

    def _imported_rotations(
        self, conn: sqlite3.Connection, key: _Key, every: bool, after: int
    ) -> list[tuple[int, Response]]:
        """ListKeyRotations entries of a key with imported material (this Region's view)."""
        mats = _materials.entries(key.meta)
        others = self._other_regions(conn, key)
        out: list[tuple[int, Response]] = []
        for v in sorted(int(x) for x in mats):
            e = mats[str(v)]
            if v <= after or not (every or e.get("rotated") is not None):
                continue
            everywhere = all(
                _materials.entries(k.meta).get(str(v), {}).get("imported") for k in (key, *others)
            )
            entry: Response = {"KeyId": key.arn, "KeyMaterialId": key_material_id(key.id, v)}
            if e.get("desc") is not None:
                entry["KeyMaterialDescription"] = e["desc"]
            entry["ImportState"] = "IMPORTED" if e["imported"] else "PENDING_IMPORT"
            entry["KeyMaterialState"] = _materials.shown_state(e, everywhere)
            if e["imported"] and e.get("model"):
                entry["ExpirationModel"] = e["model"]
                if e["model"] == "KEY_MATERIAL_EXPIRES" and e.get("valid_to") is not None:
                    entry["ValidTo"] = e["valid_to"]
            if e.get("rotated") is not None:
                entry["RotationDate"] = e["rotated"]
                entry["RotationType"] = e["rtype"]
            out.append((v, entry))
        return out


def _owner(meta_text: object, default: str) -> str:
    """The owning account in a key row's stored metadata (authenticated when the key is used;
    listing only needs to know whose it is)."""
    try:
        meta = json.loads(str(meta_text))
    except ValueError:
        return default
    return str(meta.get("x_account") or default) if isinstance(meta, dict) else default
