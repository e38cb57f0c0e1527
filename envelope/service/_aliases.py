"""Alias and tag operations (the `alias/` rules; `alias/aws/` reserved; 50 tags)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from . import _authz
from ._core import (
    _ALIAS_RE,
    MAX_ALIASES_PER_KEY,
    RequestContext,
    Response,
    ServiceCore,
    _Call,
    _Key,
    _page,
    _paging,
)
from ._specs import key_type
from ._states import (
    MANAGE,
    READ,
)
from .errors import (
    AlreadyExistsException,
    InvalidAliasNameException,
    LimitExceededException,
    NotFoundException,
    TagException,
    ValidationException,
)


class AliasTagOps(ServiceCore):
    """Aliases and tags."""

    def _room_for_alias(self, conn: sqlite3.Connection, key_id: str) -> None:
        """LimitExceededException when the key holds its MAX_ALIASES_PER_KEY aliases already,
        as AWS's quotas page says a request over a resource quota is answered (there was no
        limit; review)."""
        (n,) = conn.execute(
            "SELECT count(*) FROM aliases WHERE region=? AND key_id=?", (self.region, key_id)
        ).fetchone()
        if int(n) >= MAX_ALIASES_PER_KEY:
            raise LimitExceededException(
                f"a KMS key can have at most {MAX_ALIASES_PER_KEY} aliases; this one has {n}"
            )

    # -- aliases --------------------------------------------------------------------------

    @staticmethod
    def _check_alias(name: Any) -> str:
        if not isinstance(name, str) or not 1 <= len(name) <= 256:
            raise ValidationException("AliasName must be 1..256 characters")
        if not name.startswith("alias/"):  # AWS's own words for this one
            raise ValidationException(
                'Alias must start with the prefix "alias/". Please see '
                "https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html"
            )
        if not _ALIAS_RE.match(name):
            raise InvalidAliasNameException(
                "AliasName must start with alias/ and contain only a-z A-Z 0-9 / _ -"
            )
        if name.startswith("alias/aws/"):
            raise InvalidAliasNameException("alias/aws/ names are reserved for AWS managed keys")
        return name

    @staticmethod
    def _check_target(target_key_id: Any) -> None:
        """An alias's target is named by key id or key ARN, never by another alias."""
        ref = str(target_key_id or "")
        if ref.startswith("alias/") or (ref.startswith("arn:aws:kms:") and ":alias/" in ref):
            raise ValidationException("TargetKeyId must be a key id or key ARN")

    def _existing_alias(
        self, conn: sqlite3.Connection, call: _Call, alias_name: Any
    ) -> tuple[str, str]:
        """(alias name, key id) of an alias that must exist in this Region and the caller's
        account; the caller must be allowed the operation on the alias (identity policies)."""
        name = self._check_alias(alias_name)
        self._authorize_alias(conn, call, name)
        target = self._alias_target(conn, name, self._account_of(call))
        if target is None:
            raise NotFoundException(
                f"Alias {self._alias_arn(name, self._account_of(call))} is not found."
            )
        return name, target

    def _account_of(self, call: _Call) -> str:
        return call.account or self.account

    def _authorize_alias(self, conn: sqlite3.Connection, call: _Call, name: str) -> None:
        """AWS authorizes alias operations twice: on the alias (identity policies only, since
        an alias has no policy of its own) and on the key (its key policy)."""
        self._authorize_account(conn, call, resource=self._alias_arn(name, self._account_of(call)))

    def _own_key(
        self, conn: sqlite3.Connection, call: _Call, ref: Any, now: float, op: str
    ) -> _Key:
        """An alias's target: a customer managed key of the caller's own account."""
        key = self._customer_key(conn, call, ref, MANAGE, now, op)
        if key.account != self._account_of(call):
            raise NotFoundException(
                f"Key '{key.arn}' does not exist in account {self._account_of(call)}: an alias "
                "must be in the same account as its key"
            )
        return key

    def create_alias(
        self,
        *,
        alias_name: str,
        target_key_id: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            name = self._check_alias(alias_name)
            self._check_target(target_key_id)
            self._authorize_alias(conn, call, name)
            key = self._own_key(conn, call, target_key_id, now, "CreateAlias")
            account = self._account_of(call)
            if self._alias_target(conn, name, account) is not None:
                raise AlreadyExistsException(
                    f"An alias with the name {self._alias_arn(name, account)} already exists"
                )
            self._room_for_alias(conn, key.id)
            conn.execute(
                "INSERT INTO aliases(region, account, name, key_id, created, updated) "
                "VALUES (?,?,?,?,?,?)",
                (self.region, account, name, key.id, now, now),
            )
            return {}

        return self._run("CreateAlias", principal, context, {"AliasName": alias_name}, op)

    def update_alias(
        self,
        *,
        alias_name: str,
        target_key_id: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            name, old_id = self._existing_alias(conn, call, alias_name)
            self._check_target(target_key_id)
            old = self._load(conn, self.region, old_id)
            if old is not None:  # AWS checks the old target's key policy too
                self._authorize_key(conn, call, old, "kms:UpdateAlias")
            key = self._own_key(conn, call, target_key_id, now, "UpdateAlias")
            # AWS (UpdateAlias): "the current and new KMS key must be the same type (both
            # symmetric or both asymmetric or both HMAC), and they must have the same key
            # usage"; the key spec may differ (RSA_2048 -> RSA_3072, ECC -> RSA signing)
            if old is not None and (key_type(old.spec), old.usage) != (
                key_type(key.spec),
                key.usage,
            ):
                raise ValidationException(
                    f"the new target key must be of the same type ({key_type(old.spec)}) and "
                    f"have the same KeyUsage ({old.usage}) as the alias's current key"
                )
            if key.id != old_id:
                self._room_for_alias(conn, key.id)
            conn.execute(
                "UPDATE aliases SET key_id=?, updated=? WHERE region=? AND account=? AND name=?",
                (key.id, now, self.region, self._account_of(call), name),
            )
            return {}

        return self._run("UpdateAlias", principal, context, {"AliasName": alias_name}, op)

    def delete_alias(
        self,
        *,
        alias_name: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            name, old_id = self._existing_alias(conn, call, alias_name)
            account = self._account_of(call)
            call.key_id = self.arn(old_id, account=account)
            old = self._load(conn, self.region, old_id)
            if old is not None:
                self._authorize_key(conn, call, old, "kms:DeleteAlias")
            conn.execute(
                "DELETE FROM aliases WHERE region=? AND account=? AND name=?",
                (self.region, account, name),
            )
            return {}

        return self._run("DeleteAlias", principal, context, {"AliasName": alias_name}, op)

    def list_aliases(
        self,
        *,
        key_id: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            self._authorize_account(conn, call)
            n, after = _paging(call, limit, marker, 50, 100)
            account = self._account_of(call)
            sql = (
                "SELECT name, key_id, created, updated FROM aliases "
                "WHERE region=? AND account=? AND name>?"
            )
            args: list[Any] = [self.region, account, after]
            if key_id is not None:
                # ListAliases is authorized by identity policies alone, as in AWS
                key = self._key(conn, call, key_id, READ, now, authorize=False)
                sql += " AND key_id=?"
                args.append(key.id)
            rows = conn.execute(sql + " ORDER BY name LIMIT ?", (*args, n + 1)).fetchall()
            items, extra = _page(call, list(rows), n, lambda r: str(r[0]))
            aliases = [
                {
                    "AliasName": a,
                    "AliasArn": self._alias_arn(a, account),
                    "TargetKeyId": k,
                    "CreationDate": float(c),
                    "LastUpdatedDate": float(u),
                }
                for a, k, c, u in items
            ]
            return {"Aliases": aliases, **extra}

        return self._run("ListAliases", principal, context, {}, op)

    # -- tags -----------------------------------------------------------------------------

    def tag_resource(
        self,
        *,
        key_id: str,
        tags: Sequence[Mapping[str, str]],
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            # the request's tags as condition keys (validated after the key's state, as in AWS)
            requested = {
                t["TagKey"]: t["TagValue"]
                for t in tags or ()
                if isinstance(t, Mapping)
                and isinstance(t.get("TagKey"), str)
                and isinstance(t.get("TagValue"), str)
            }
            call.values.update(_authz.tag_values("aws:requesttag/", requested))
            call.values["aws:tagkeys"] = list(requested)
            key = self._customer_key(conn, call, key_id, MANAGE, now, "TagResource")
            key.meta["x_tags"] = self._check_tags(tags, key.meta["x_tags"])
            self._save(conn, key)
            return {}

        return self._run("TagResource", principal, context, {}, op)

    def untag_resource(
        self,
        *,
        key_id: str,
        tag_keys: Sequence[str],
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            call.values["aws:tagkeys"] = [k for k in tag_keys if isinstance(k, str)]
            key = self._customer_key(conn, call, key_id, MANAGE, now, "UntagResource")
            tags = dict(key.meta["x_tags"])  # never mutate the cached copy in place
            for k in tag_keys:
                if not isinstance(k, str) or not 1 <= len(k) <= 128:
                    raise TagException("TagKey must be 1..128 characters")
                tags.pop(k, None)
            key.meta["x_tags"] = tags
            self._save(conn, key)
            return {}

        return self._run("UntagResource", principal, context, {"TagKeys": list(tag_keys)}, op)

    def list_resource_tags(
        self,
        *,
        key_id: str,
        limit: int | None = None,
        marker: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            n, after = _paging(call, limit, marker, 50, 50)
            key = self._key(conn, call, key_id, READ, now)
            tags = sorted((k, v) for k, v in key.meta["x_tags"].items() if k > after)
            items, extra = _page(call, tags, n, lambda t: str(t[0]))
            return {"Tags": [{"TagKey": k, "TagValue": v} for k, v in items], **extra}

        return self._run("ListResourceTags", principal, context, {}, op)
