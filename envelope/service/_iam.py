"""Accounts and principals: IAM users and roles, their identity policies and tags.

The store holds several accounts; an account exists once anything of it does (a key, a user, a
role). IAM is global (not per Region), as in AWS. Managing it follows IAM's own rule: the
account root may do everything in its account, anyone else needs an identity policy that
allows the ``iam:`` action (``iam:CreateUser``, ``iam:PutRolePolicy``, ...) on the principal's
ARN. Every change is one transaction with one audit record, like a KMS call, and bumps the
access generation so every process drops its cached identities.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import Mapping
from typing import Any

from . import _authz, _rows
from ._core import RequestContext, Response, ServiceCore, _Call, _int_in, _page, _paging
from ._grants import delete_grants
from ._trust import default_trust_policy, parse_trust_policy
from .access import parse_policy
from .access.document import check_new_identity_policy
from .errors import (
    AccessDeniedException,
    AlreadyExistsException,
    LimitExceededException,
    NotFoundException,
    ValidationException,
)

__all__ = ("KINDS", "IamOps")

KINDS = ("user", "role")
_NAME = re.compile(r"^[\w+=,.@-]{1,64}$", re.ASCII)
_PATH = re.compile(r"^/(?:[\w+=,.@-]+/)*$", re.ASCII)
_POLICY_NAME = re.compile(r"^[\w+=,.@-]{1,128}$", re.ASCII)
MAX_POLICIES = 10
MAX_TAGS = 50


def _tags(tags: Any) -> dict[str, str]:
    """IAM tags: a list of {Key, Value} or a plain mapping."""
    if tags is None:
        return {}
    items = (
        tags.items()
        if isinstance(tags, Mapping)
        else [
            (t.get("Key"), t.get("Value")) if isinstance(t, Mapping) else (None, None) for t in tags
        ]
    )
    out: dict[str, str] = {}
    for k, v in items:
        if not isinstance(k, str) or not 1 <= len(k) <= 128 or not isinstance(v, str):
            raise ValidationException("each tag needs a Key of 1..128 characters and a Value")
        if len(v) > 256:
            raise ValidationException("a tag Value is at most 256 characters")
        if k.lower().startswith("aws:"):
            # IAM reserves the prefix (InvalidInput); these tags are what aws:PrincipalTag/<k>
            # conditions read, so a caller must not set names in AWS's space
            raise ValidationException(f"tag keys beginning with aws: are reserved, not {k!r}")
        out[k] = v
    if len(out) > MAX_TAGS:
        raise LimitExceededException(f"a principal can have at most {MAX_TAGS} tags")
    return out



#: IAM's quotas on the aggregate size of a principal's inline policies (characters, white
#: space not counted): "Aggregate size of inline user policies 2,048", role 10,240.
_INLINE_LIMITS = {"user": 2048, "role": 10240}


def _policy_size(document: str) -> int:
    """A policy's size as IAM counts it against its quotas: without white space."""
    return sum(1 for c in document if not c.isspace())


def _same_name(conn: sqlite3.Connection, account: str, kind: str, name: str) -> str | None:
    """The ARN of a user (or role) of `account` called `name` in any case, on any path."""
    prefix = f"arn:aws:iam::{account}:{kind}/"
    for (arn,) in conn.execute(
        "SELECT arn FROM principals WHERE account=? AND kind=? AND arn>=? AND arn<?",
        (account, kind, prefix, prefix[:-1] + "0"),  # ('0' follows '/')
    ):
        if str(arn).rsplit("/", 1)[1].lower() == name.lower():
            return str(arn)
    return None

class IamOps(ServiceCore):
    """IAM users and roles with inline identity policies."""

    def _iam_run(
        self,
        action: str,
        principal: str | None,
        context: RequestContext | None,
        params: dict[str, Any],
        resource: Any,
        fn: Any,
    ) -> Response:
        """Run an IAM call: authorize ``iam:<action>`` on `resource(call)`, then `fn`."""

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            arn = resource(call)
            call.key_id = arn
            owner = arn.split(":")[4] if arn.startswith("arn:") else call.account
            if owner != call.account:
                # IAM is per account: no root or iam:* policy of one account reaches another's
                # users and roles
                call.decision = "denied"
                call.reason = "IAM principals of another account cannot be managed"
                raise AccessDeniedException(
                    f"User: {call.principal} is not authorized to perform: iam:{action} on "
                    f"resource: {arn} because it belongs to another account ({owner})"
                )
            self._authorize_account(conn, call, f"iam:{action}", arn)
            result: Response = fn(conn, call, now, arn)
            return result

        return self._run(f"iam:{action}", principal, context, params, op)

    def _arn_in_account(self, call: _Call, kind: str, name: Any, path: Any = "/") -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValidationException(f"the {kind} name must be 1..64 of [A-Za-z0-9+=,.@_-]")
        if not isinstance(path, str) or not _PATH.match(path) or len(path) > 512:
            raise ValidationException("Path must be / or /a/b/ of [A-Za-z0-9+=,.@_-]")
        return f"arn:aws:iam::{call.account or self.account}:{kind}{path}{name}"

    def _principal_row(self, conn: sqlite3.Connection, arn: str) -> dict[str, Any]:
        row = conn.execute("SELECT body, mac FROM principals WHERE arn=?", (arn,)).fetchone()
        if row is None:
            raise NotFoundException(f"The principal {arn} does not exist")
        return self._access._authentic(row[0], row[1], "principals", arn)

    def _check_policy_set(self, conn: sqlite3.Connection, arn: str) -> None:
        """The principal's policy rows are the ones its authenticated row names (call before
        changing one): else a change would write the tampered set into a new authentic row."""
        _authz.check_policy_names(
            arn, self._principal_row(conn, arn), _authz.policy_names(conn, arn)
        )

    def _name_policies(self, conn: sqlite3.Connection, arn: str) -> None:
        """Record in the principal's authenticated row the names of its identity policies, as
        they are now (call after adding or deleting one, the set checked before with
        `_check_policy_set`): a policy row deleted outside the KMS is then refused as
        tampering (`_authz.AccessCache`), not read as never attached."""
        body = self._principal_row(conn, arn)
        body["PolicyNames"] = _authz.policy_names(conn, arn)
        self._write_principal(conn, body)

    def _write_principal(self, conn: sqlite3.Connection, body: dict[str, Any]) -> None:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        conn.execute(
            "INSERT INTO principals(arn, account, kind, body, mac) VALUES (?,?,?,?,?) "
            "ON CONFLICT(arn) DO UPDATE SET body=excluded.body, mac=excluded.mac",
            (
                body["Arn"],
                body["Account"],
                body["Kind"],
                text,
                _rows.record_mac(self.store.row_key, "principals", body["Arn"], text),
            ),
        )
        _authz.bump_generation(conn)

    def _create(
        self,
        kind: str,
        name: str,
        path: str,
        tags: Any,
        description: str | None,
        principal: str | None,
        context: RequestContext | None,
        trust: str | None = None,
        max_session: int = 3600,
    ) -> Response:
        action = "CreateUser" if kind == "user" else "CreateRole"

        def fn(conn: sqlite3.Connection, call: _Call, now: float, arn: str) -> Response:
            if conn.execute("SELECT 1 FROM principals WHERE arn=?", (arn,)).fetchone():
                raise AlreadyExistsException(f"the {kind} {arn} already exists")
            same = _same_name(conn, str(call.account or self.account), kind, name)
            if same is not None:
                # IAM: names are unique in an account whatever the path, and not case
                # sensitive; a role session names its role by name alone (review)
                raise AlreadyExistsException(
                    f"a {kind} named {name!r} already exists in this account: {same} (names "
                    "are unique in an account, whatever the path, without regard to case)"
                )
            if description is not None and (
                not isinstance(description, str) or len(description) > 1000
            ):
                raise ValidationException("Description must be at most 1000 characters")
            body = {
                "Arn": arn,
                "Id": unique_id(kind),
                "Account": call.account or self.account,
                "Kind": kind,
                "Name": name,
                "Path": path,
                "CreateDate": now,
                "Tags": _tags(tags),
                "Description": description,
                "PolicyNames": [],
            }
            if kind == "role":
                # who may assume it (`_trust`), and for how long (IAM's MaxSessionDuration)
                body["MaxSessionDuration"] = _int_in(max_session, 3600, 43200, "MaxSessionDuration")
                doc = trust or default_trust_policy(str(body["Account"]))
                parse_trust_policy(doc, lambda a: self._exists(conn, a, arn))
                body["AssumeRolePolicyDocument"] = doc
            self._write_principal(conn, body)
            return {kind.capitalize(): _public(body)}

        return self._iam_run(
            action,
            principal,
            context,
            {"Name": name, "Path": path},
            lambda call: self._arn_in_account(call, kind, name, path),
            fn,
        )

    def create_user(
        self,
        *,
        user_name: str,
        path: str = "/",
        tags: Any = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """An IAM user in the caller's account; returns ``{"User": {...}}`` with its Arn."""
        return self._create("user", user_name, path, tags, None, principal, context)

    def create_role(
        self,
        *,
        role_name: str,
        path: str = "/",
        description: str | None = None,
        tags: Any = None,
        assume_role_policy_document: str | None = None,
        max_session_duration: int = 3600,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """An IAM role in the caller's account; its sessions
        (``arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION``, from `assume_role`) act with its
        policies. `assume_role_policy_document`: its trust policy (default: trust its own
        account, see `_trust`); `max_session_duration`: 3600..43200 s."""
        return self._create(
            "role",
            role_name,
            path,
            tags,
            description,
            principal,
            context,
            assume_role_policy_document,
            max_session_duration,
        )

    @staticmethod
    def _exists(conn: sqlite3.Connection, arn: str, creating: str | None = None) -> bool:
        """Is `arn` a user or role of the store (or the one being created)?"""
        if arn == creating:
            return True
        return conn.execute("SELECT 1 FROM principals WHERE arn=?", (arn,)).fetchone() is not None

    def delete_principal(
        self, *, arn: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        """Delete a user or role with its identity policies (its grants stay until retired,
        as in AWS, but match nobody unless the principal is created again)."""
        kind = _kind_of(arn)
        action = "DeleteUser" if kind == "user" else "DeleteRole"

        def fn(conn: sqlite3.Connection, call: _Call, now: float, target: str) -> Response:
            body = self._principal_row(conn, target)
            self._forget_in_key_policies(conn, target, str(body.get("Id") or unique_id(kind)))
            conn.execute("DELETE FROM identity_policies WHERE principal=?", (target,))
            # its grants go too: a principal created again under this name is someone else
            # (AWS keeps such grants but they name a unique id that no longer exists)
            call.params["GrantsDeleted"] = delete_grants(conn, "grantee=?", (target,))
            # its access keys (a user) or sessions (a role) end with it
            conn.execute("DELETE FROM access_keys WHERE principal=?", (target,))
            conn.execute("DELETE FROM principals WHERE arn=?", (target,))
            _authz.bump_generation(conn)
            return {}

        return self._iam_run(action, principal, context, {}, lambda call: arn, fn)

    def _forget_in_key_policies(self, conn: sqlite3.Connection, arn: str, uid: str) -> None:
        """What AWS does when a principal named in key policies is deleted: each policy now
        shows the principal's unique id instead of its ARN, so the statement names nobody,
        and a principal created again under the same name is not the one it named."""
        needle = json.dumps(arn)
        for region, key_id in conn.execute(
            "SELECT region, key_id FROM keys WHERE instr(meta, ?) > 0",
            (json.dumps(needle)[1:-1],),
        ).fetchall():
            key = self._load(conn, str(region), str(key_id))
            text = key.meta.get("x_policy") if key is not None else None
            if key is None or not isinstance(text, str) or needle not in text:
                continue
            key.meta["x_policy"] = text.replace(needle, json.dumps(uid))
            self._save(conn, key)

    def get_principal(
        self, *, arn: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        kind = _kind_of(arn)
        action = "GetUser" if kind == "user" else "GetRole"

        def fn(conn: sqlite3.Connection, call: _Call, now: float, target: str) -> Response:
            return {kind.capitalize(): _public(self._principal_row(conn, target))}

        return self._iam_run(action, principal, context, {}, lambda call: arn, fn)

    def list_principals(
        self,
        *,
        kind: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """Users and roles of the caller's account (``kind`` "user" or "role" to filter)."""
        if kind is not None and kind not in KINDS:
            raise ValidationException("kind must be user or role")

        def fn(conn: sqlite3.Connection, call: _Call, now: float, target: str) -> Response:
            n, after = _paging(call, limit, marker, 100, 1000)
            sql = "SELECT arn, body, mac FROM principals WHERE account=? AND arn>?"
            args: list[Any] = [call.account or self.account, after]
            if kind is not None:
                sql += " AND kind=?"
                args.append(kind)
            rows = conn.execute(sql + " ORDER BY arn LIMIT ?", (*args, n + 1)).fetchall()
            bodies = [self._access._authentic(b, m, "principals", str(a)) for a, b, m in rows]
            items, extra = _page(call, bodies, n, lambda b: str(b["Arn"]))
            return {"Principals": [_public(b) for b in items], **extra}

        action = {"user": "ListUsers", "role": "ListRoles", None: "ListUsers"}[kind]
        return self._iam_run(action, principal, context, {}, lambda call: "*", fn)

    def tag_principal(
        self,
        *,
        arn: str,
        tags: Any,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        kind = _kind_of(arn)
        action = "TagUser" if kind == "user" else "TagRole"

        def fn(conn: sqlite3.Connection, call: _Call, now: float, target: str) -> Response:
            body = self._principal_row(conn, target)
            body["Tags"] = {**body.get("Tags", {}), **_tags(tags)}
            _tags(body["Tags"])  # the limit counts the merged set
            self._write_principal(conn, body)
            return {}

        return self._iam_run(action, principal, context, {}, lambda call: arn, fn)

    # -- identity policies ------------------------------------------------------------------

    def put_principal_policy(
        self,
        *,
        arn: str,
        policy_name: str,
        policy_document: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """Attach (or replace) an inline identity policy (IAM's PutUserPolicy/PutRolePolicy)."""
        kind = _kind_of(arn)
        action = "PutUserPolicy" if kind == "user" else "PutRolePolicy"

        def fn(conn: sqlite3.Connection, call: _Call, now: float, target: str) -> Response:
            name = _policy_name(policy_name)
            self._check_policy_set(conn, target)
            check_new_identity_policy(parse_policy(policy_document, resource_policy=False))
            count = conn.execute(
                "SELECT COUNT(*) FROM identity_policies WHERE principal=? AND name<>?",
                (target, name),
            ).fetchone()[0]
            if count >= MAX_POLICIES:
                raise LimitExceededException(f"{target} has {MAX_POLICIES} identity policies")
            # IAM's quota: the inline policies of a user total at most 2,048 characters, a
            # role's 10,240, white space not counted (32 KiB each were taken; review)
            limit = _INLINE_LIMITS[kind]
            total = _policy_size(policy_document) + sum(
                _policy_size(str(json.loads(str(body))["Document"]))
                for (body,) in conn.execute(
                    "SELECT body FROM identity_policies WHERE principal=? AND name<>?",
                    (target, name),
                )
            )
            if total > limit:
                raise LimitExceededException(  # IAM's words
                    f"Maximum policy size of {limit} bytes exceeded for {kind} "
                    f"{target.rsplit('/', 1)[1]}"
                )
            text = json.dumps({"Document": policy_document, "Updated": now})
            conn.execute(
                "INSERT INTO identity_policies(principal, name, body, mac) VALUES (?,?,?,?) "
                "ON CONFLICT(principal, name) DO UPDATE SET body=excluded.body, mac=excluded.mac",
                (
                    target,
                    name,
                    text,
                    _rows.record_mac(
                        self.store.row_key, "identity_policies", f"{target}|{name}", text
                    ),
                ),
            )
            self._name_policies(conn, target)
            return {}

        return self._iam_run(
            action, principal, context, {"PolicyName": policy_name}, lambda call: arn, fn
        )

    def get_principal_policy(
        self,
        *,
        arn: str,
        policy_name: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        kind = _kind_of(arn)
        action = "GetUserPolicy" if kind == "user" else "GetRolePolicy"

        def fn(conn: sqlite3.Connection, call: _Call, now: float, target: str) -> Response:
            name = _policy_name(policy_name)
            row = conn.execute(
                "SELECT body, mac FROM identity_policies WHERE principal=? AND name=?",
                (target, name),
            ).fetchone()
            if row is None:
                raise NotFoundException(f"{target} has no identity policy named {name}")
            body = self._access._authentic(row[0], row[1], "identity_policies", f"{target}|{name}")
            return {"PolicyName": name, "PolicyDocument": body["Document"], "Arn": target}

        return self._iam_run(
            action, principal, context, {"PolicyName": policy_name}, lambda call: arn, fn
        )

    def delete_principal_policy(
        self,
        *,
        arn: str,
        policy_name: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        kind = _kind_of(arn)
        action = "DeleteUserPolicy" if kind == "user" else "DeleteRolePolicy"

        def fn(conn: sqlite3.Connection, call: _Call, now: float, target: str) -> Response:
            name = _policy_name(policy_name)
            self._check_policy_set(conn, target)
            cur = conn.execute(
                "DELETE FROM identity_policies WHERE principal=? AND name=?", (target, name)
            )
            if cur.rowcount == 0:
                raise NotFoundException(f"{target} has no identity policy named {name}")
            self._name_policies(conn, target)
            return {}

        return self._iam_run(
            action, principal, context, {"PolicyName": policy_name}, lambda call: arn, fn
        )

    def list_principal_policies(
        self, *, arn: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        kind = _kind_of(arn)
        action = "ListUserPolicies" if kind == "user" else "ListRolePolicies"

        def fn(conn: sqlite3.Connection, call: _Call, now: float, target: str) -> Response:
            self._principal_row(conn, target)
            names = [
                str(r[0])
                for r in conn.execute(
                    "SELECT name FROM identity_policies WHERE principal=? ORDER BY name",
                    (target,),
                )
            ]
            return {"PolicyNames": names, "IsTruncated": False}

        return self._iam_run(action, principal, context, {}, lambda call: arn, fn)

    def list_accounts(
        self, *, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        """Every account the store knows (of its keys and principals); only for the root of
        the service's own account (the store's administrator)."""

        def fn(conn: sqlite3.Connection, call: _Call, now: float, target: str) -> Response:
            accounts = {self.account}
            accounts.update(str(r[0]) for r in conn.execute("SELECT account FROM principals"))
            accounts.update(str(r[0]) for r in conn.execute("SELECT DISTINCT account FROM aliases"))
            for (text,) in conn.execute("SELECT meta FROM keys"):
                try:
                    owner = json.loads(str(text)).get("x_account")
                except (ValueError, AttributeError):
                    continue
                if isinstance(owner, str):
                    accounts.add(owner)
            return {"Accounts": sorted(accounts)}

        def admin_only(call: _Call) -> str:
            # the store's own account root administers the store; other accounts must not
            # learn which accounts share it
            if call.principal != self.root_principal:
                call.decision = "denied"
                call.reason = "only the store's administrator account root may list accounts"
                raise AccessDeniedException(
                    f"User: {call.principal} is not authorized to perform: iam:ListAccounts on "
                    f"resource: * because only {self.root_principal} may list the accounts of "
                    "this store"
                )
            return "*"

        return self._iam_run("ListAccounts", principal, context, {}, admin_only, fn)


def unique_id(kind: str) -> str:
    """A principal's unique id in AWS's shape: AIDA... for users, AROA... for roles."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return ("AIDA" if kind == "user" else "AROA") + "".join(
        secrets.choice(alphabet) for _ in range(17)
    )


def _kind_of(arn: Any) -> str:
    if isinstance(arn, str):
        m = re.match(r"^arn:aws:iam::\d{12}:(user|role)/", arn)
        if m:
            return m.group(1)
    raise ValidationException(f"{arn!r} is not the ARN of an IAM user or role")


def _policy_name(name: Any) -> str:
    if not isinstance(name, str) or not _POLICY_NAME.match(name):
        raise ValidationException("PolicyName must be 1..128 of [A-Za-z0-9+=,.@_-]")
    return name


def _public(body: Mapping[str, Any]) -> Response:
    """A principal as IAM returns it: no internal fields, tags as a list."""
    out: Response = {
        "Arn": body["Arn"],
        ("UserId" if body["Kind"] == "user" else "RoleId"): body.get("Id"),
        "Path": body["Path"],
        "CreateDate": body["CreateDate"],
        "Tags": [{"Key": k, "Value": v} for k, v in (body.get("Tags") or {}).items()],
        "Account": body["Account"],
    }
    out["UserName" if body["Kind"] == "user" else "RoleName"] = body["Name"]
    if body.get("Description"):
        out["Description"] = body["Description"]
    if body["Kind"] == "role":
        out["AssumeRolePolicyDocument"] = body.get("AssumeRolePolicyDocument") or (
            default_trust_policy(str(body["Account"]))
        )
        out["MaxSessionDuration"] = body.get("MaxSessionDuration", 3600)
    return out
