"""Multi-Region keys: ReplicateKey and UpdatePrimaryRegion (`mrk-` ids, shared material)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from .._regions import aws_kms_regions
from . import _authz, _materials, _states
from ._core import (
    RequestContext,
    Response,
    ServiceCore,
    _Call,
    _check_region,
    _Key,
)
from ._states import (
    MANAGE,
    UPDATE_PRIMARY,
)
from .errors import (
    AlreadyExistsException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)


class MultiRegionOps(ServiceCore):
    """ReplicateKey and UpdatePrimaryRegion."""

    # -- multi-Region keys ----------------------------------------------------------------

    def _primary(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        key_id: str,
        group: str,
        now: float,
        if_replica: str,
    ) -> _Key:
        """A multi-Region primary key; a replica is refused with `if_replica` ({arn}: its ARN)."""
        key = self._key(conn, call, key_id, group, now)
        if not key.multi_region:
            raise UnsupportedOperationException(f"{key.arn} is not a multi-Region key")
        if key.meta["x_mr_type"] != "PRIMARY":
            raise UnsupportedOperationException(if_replica.format(arn=key.arn))
        return key

    def replicate_key(
        self,
        *,
        key_id: str,
        replica_region: str,
        description: str | None = None,
        tags: Sequence[Mapping[str, str]] | None = None,
        policy: str | None = None,
        bypass_policy_lockout_safety_check: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _check_region(replica_region)
            known = aws_kms_regions()
            if known is not None and replica_region not in known:
                # a replica there could never be reached over the wire (`envelope serve`
                # answers for AWS's Regions): AWS has no endpoint for the name
                raise ValidationException(
                    f"{replica_region!r} is not an AWS Region of this key's partition (aws): a "
                    "replica must be in the same partition as its primary key"
                )
            call.values["kms:replicaregion"] = replica_region
            key = self._primary(  # AWS's words
                conn, call, key_id, MANAGE, now, "{arn} is not a multi-region primary key."
            )
            there = self._load(conn, replica_region, key.id)
            if there is not None:  # a replica past its deletion date is gone: purged now
                there = self._settle(conn, there, now, call)
            if replica_region == self.region or there is not None:
                raise AlreadyExistsException(f"{key.id} already exists in {replica_region}")
            # AWS: "kms:CreateKey in an IAM policy in the replica Region. To use the Tags
            # parameter, kms:TagResource in an IAM policy in the replica Region."
            new_tags = self._check_tags(tags, {}, new_key=True)
            call.values.update(_authz.tag_values("aws:requesttag/", new_tags))
            call.values["aws:tagkeys"] = list(new_tags)
            # the replica's own condition keys, as its CreateKey and a later call on it see them
            call.values["kms:keyspec"] = key.meta["KeySpec"]
            call.values["kms:keyusage"] = key.meta["KeyUsage"]
            call.values["kms:keyorigin"] = key.meta["Origin"]
            call.values["kms:multiregion"] = True
            call.values["kms:multiregionkeytype"] = "REPLICA"
            self._authorize_account(conn, call, "kms:CreateKey")
            if new_tags:
                self._authorize_account(conn, call, "kms:TagResource")
            replica_arn = self.arn(key.id, replica_region, key.account)
            replica_policy = (
                None
                if policy is None
                else self._checked_policy(
                    conn,
                    call,
                    policy,
                    replica_arn,
                    key.account,
                    bypass_policy_lockout_safety_check,
                    new_tags=new_tags,
                )
            )
            replica = self._new_key(
                conn,
                call,
                now,
                spec=key.spec,
                usage=key.usage,
                origin=key.meta["Origin"],
                description="" if description is None else description,  # not shared (AWS)
                multi_region=True,
                manager="CUSTOMER",
                tags=new_tags,
                region=replica_region,
                key_id=key.id,
                account=key.account,
                policy=replica_policy,
            )
            replica.meta["x_mr_type"] = "REPLICA"
            replica.meta["x_primary_region"] = self.region
            if key.meta["Origin"] == "EXTERNAL":
                replica.meta["x_mats"] = _materials.for_replica(key.meta)
            self._save(conn, replica)
            meta = self._metadata(conn, replica)
            meta["MultiRegionConfiguration"] = self._metadata(conn, key)[
                "MultiRegionConfiguration"
            ] | {"MultiRegionKeyType": "REPLICA"}
            # As AWS answers it (a recorded response): the replica as it is being made,
            # Creating and not yet enabled, without key material named. Here the making is
            # done by the time the call returns: DescribeKey then says Enabled.
            if meta.get("KeyState") == "Enabled":  # (a replica awaiting its import says so)
                meta.update(KeyState="Creating", Enabled=False)
                meta.pop("CurrentKeyMaterialId", None)
            return {
                "ReplicaKeyMetadata": meta,
                "ReplicaPolicy": replica.meta.get("x_policy")
                or _authz.default_key_policy(replica.account),
                # an empty list for a replica without tags, as in AWS's own example answer
                # (botocore's examples-1.json), which clients index without a check
                "ReplicaTags": [
                    {"TagKey": k, "TagValue": v} for k, v in replica.meta["x_tags"].items()
                ],
            }

        return self._run("ReplicateKey", principal, context, {"ReplicaRegion": replica_region}, op)

    def update_primary_region(
        self,
        *,
        key_id: str,
        primary_region: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _check_region(primary_region)
            call.values["kms:primaryregion"] = primary_region
            key = self._primary(
                conn,
                call,
                key_id,
                UPDATE_PRIMARY,
                now,
                "call UpdatePrimaryRegion in the primary key's Region",
            )
            if primary_region == self.region:
                return {}
            new = self._load(conn, primary_region, key.id)
            if new is None:
                raise NotFoundException(f"{key.id} has no replica in {primary_region}")
            _states.check(new.state, UPDATE_PRIMARY, new.arn)
            for region in [self.region, *self._replica_regions(conn, key)]:
                k = key if region == self.region else self._load(conn, region, key.id)
                if k is None:
                    continue
                k.meta["x_primary_region"] = primary_region
                k.meta["x_mr_type"] = "PRIMARY" if region == primary_region else "REPLICA"
                if region == primary_region:
                    k.meta["x_rot_period"] = key.meta["x_rot_period"]
                    k.meta["x_rot_next"] = key.meta["x_rot_next"]
                    k.meta["x_on_demand"] = key.meta["x_on_demand"]
                self._save(conn, k)
            return {}

        return self._run(
            "UpdatePrimaryRegion", principal, context, {"PrimaryRegion": primary_region}, op
        )
