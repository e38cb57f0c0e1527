"""Alias and tag operations (the `alias/` rules; `alias/aws/` reserved; 50 tags)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from ._core import (
    _ALIAS_RE,
    RequestContext,
    Response,
    ServiceCore,
    _Call,
    _page,
    _paging,
)
from ._states import (
    MANAGE,
    READ,
)
from .errors import (
    AlreadyExistsException,
    InvalidAliasNameException,
    NotFoundException,
    TagException,
    ValidationException,
)


class AliasTagOps(ServiceCore):
    """Aliases and tags."""

    # -- aliases --------------------------------------------------------------------------

    @staticmethod
    def _check_alias(name: Any) -> str:
        if not isinstance(name, str) or not 1 <= len(name) <= 256:
            raise ValidationException("AliasName must be 1..256 characters")
        if not _ALIAS_RE.match(name):
            raise InvalidAliasNameException(
                "AliasName must start with alias/ and contain only a-z A-Z 0-9 / _ -"
            )
        if name.startswith("alias/aws/"):
            raise InvalidAliasNameException("alias/aws/ names are reserved for AWS managed keys")
        return name

    def _existing_alias(self, conn: sqlite3.Connection, alias_name: Any) -> tuple[str, str]:
        """(alias name, key id) of an alias that must exist in this Region."""
        name = self._check_alias(alias_name)
        target = self._alias_target(conn, name)
        if target is None:
            raise NotFoundException(f"Alias {self._alias_arn(name)} is not found.")
        return name, target

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
            if (
                target_key_id
                and str(target_key_id).startswith(("alias/", "arn:aws:kms:"))
                and (":alias/" in str(target_key_id) or str(target_key_id).startswith("alias/"))
            ):
                raise ValidationException("TargetKeyId must be a key id or key ARN")
            key = self._customer_key(conn, call, target_key_id, MANAGE, now, "CreateAlias")
            if self._alias_target(conn, name) is not None:
                raise AlreadyExistsException(
                    f"An alias with the name {self._alias_arn(name)} already exists"
                )
            conn.execute(
                "INSERT INTO aliases(region, name, key_id, created, updated) VALUES (?,?,?,?,?)",
                (self.region, name, key.id, now, now),
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
            name, old_id = self._existing_alias(conn, alias_name)
            key = self._customer_key(conn, call, target_key_id, MANAGE, now, "UpdateAlias")
            old = self._load(conn, self.region, old_id)
            if old is not None and (old.spec, old.usage) != (key.spec, key.usage):
                raise ValidationException(
                    "the new target key must have the same KeySpec and KeyUsage as the old one"
                )
            conn.execute(
                "UPDATE aliases SET key_id=?, updated=? WHERE region=? AND name=?",
                (key.id, now, self.region, name),
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
            name, old_id = self._existing_alias(conn, alias_name)
            call.key_id = self.arn(old_id)
            conn.execute("DELETE FROM aliases WHERE region=? AND name=?", (self.region, name))
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
            n, after = _paging(limit, marker, 50, 100)
            sql = "SELECT name, key_id, created, updated FROM aliases WHERE region=? AND name>?"
            args: list[Any] = [self.region, after]
            if key_id is not None:
                key = self._key(conn, call, key_id, READ, now)
                sql += " AND key_id=?"
                args.append(key.id)
            rows = conn.execute(sql + " ORDER BY name LIMIT ?", (*args, n + 1)).fetchall()
            items, extra = _page(list(rows), n, lambda r: str(r[0]))
            aliases = [
                {
                    "AliasName": a,
                    "AliasArn": self._alias_arn(a),
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
            n, after = _paging(limit, marker, 50, 50)
            key = self._key(conn, call, key_id, READ, now)
            tags = sorted((k, v) for k, v in key.meta["x_tags"].items() if k > after)
            items, extra = _page(tags, n, lambda t: str(t[0]))
            return {"Tags": [{"TagKey": k, "TagValue": v} for k, v in items], **extra}

        return self._run("ListResourceTags", principal, context, {}, op)
