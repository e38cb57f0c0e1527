"""Credentials for callers over the wire: users' access keys and roles' sessions (STS).

An access key (``AKIA...``, IAM's CreateAccessKey) belongs to a user or to the account root;
a session (``ASIA...`` with a session token, STS's AssumeRole) to an assumed-role session of a
role, until it expires. Both live in the ``access_keys`` table: the secret access key sealed
under the root key (bound to the key id and its owner), the session token only as its SHA-256,
and the row authenticated under the row key (`_rows.record_mac`) so that editing the file
cannot move a key to another principal, re-activate it or extend a session. A secret is
returned once, by the call that creates it, and never appears in an audit record, a log line,
an exception or a repr.

Managing keys is authorized as IAM does: the root of the user's account, or an identity policy
allowing ``iam:CreateAccessKey`` (``ListAccessKeys``, ``UpdateAccessKey``,
``DeleteAccessKey``) on the user's ARN; never from another account; the root's own keys only
by the root. AssumeRole is decided by the role's trust policy (`_trust`) and, where it
delegates to an account, by the caller's identity policies, as in AWS STS. One deliberate
difference: AWS refuses the account root's credentials for AssumeRole; here the root is the
store's operator (the CLI's default principal), so it may assume a role that trusts its
account, as the root of that account.

`resolve_credentials` serves the SigV4 authenticator (`envelope.server.auth`) on every
request: it is neither authorized nor audited, and keeps unsealed secrets in memory per access
key id, valid while the store's access generation (rewritten by every change to keys,
principals or policies, in any process) is unchanged: one small read per request.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _authz, _rows
from ._core import RequestContext, Response, _Call, _int_in, _no_such_principal
from ._iam import IamOps
from ._trust import default_trust_policy, parse_trust_policy
from .access import Decision, Policy, Request, authorize
from .errors import (
    AccessDeniedException,
    KmsServiceError,
    LimitExceededException,
    NotFoundException,
    StoreError,
    ValidationException,
)

__all__ = ("CredentialOps", "ResolvedCredentials")

#: IAM's AccessKeysPerUser quota.
MAX_KEYS_PER_USER = 2
#: How long an expired session is kept (so that it is refused as expired, not unknown).
EXPIRED_KEPT = 86400.0
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)
_ROLE_ARN = re.compile(
    r"^arn:aws:iam::(\d{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$", re.ASCII
)
_OWNER_ARN = re.compile(
    r"^arn:aws:iam::(\d{12}):(root|user/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64})$", re.ASCII
)
_SECRET_AAD = b"envelope/kms/access-key-secret/v1|"
_TABLE = "access_keys"


def _stamp(conn: sqlite3.Connection, owner: str, key_id: str) -> tuple[Any, ...]:
    """The MACs of an access key's row and of its owner's principal row: they change whenever
    either row changes, appears or goes (the credential cache's validity)."""
    row = conn.execute(
        "SELECT mac, (SELECT mac FROM principals WHERE arn=?) FROM access_keys "
        "WHERE access_key_id=?",
        (owner, key_id),
    ).fetchone()
    return () if row is None else tuple(row)


@dataclass(frozen=True, slots=True)
class ResolvedCredentials:
    """What the authenticator needs to check a request signed with one access key."""

    principal_arn: str
    secret: str = field(repr=False)
    #: SHA-256 of the session token (sessions only; None for a user's or root's key).
    session_token_hash: bytes | None
    #: When a session ends (epoch seconds); None for a long-term key.
    expires: float | None
    active: bool


def _new_key_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_B32) for _ in range(16))


def _secret() -> str:
    """40 characters of the base64 alphabet, like an AWS secret access key (240 bits)."""
    return base64.b64encode(os.urandom(30)).decode("ascii")


def _session_token() -> str:
    return base64.b64encode(b"envelope/sts/v1:" + os.urandom(96)).decode("ascii")


def token_hash(token: str) -> bytes:
    """How a session token is stored and compared."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _aad(key_id: str, owner: str) -> bytes:
    return _SECRET_AAD + key_id.encode() + b"|" + owner.encode()


def _key_id_arg(value: Any) -> str:
    if not isinstance(value, str) or not _KEY_ID.match(value):
        raise ValidationException(
            "AccessKeyId must be 16..128 characters of upper-case letters and digits"
        )
    return value


def _metadata(body: dict[str, Any]) -> Response:
    """A key as ListAccessKeys shows it (never its secret)."""
    return {
        "UserName": body["UserName"],
        "AccessKeyId": body["AccessKeyId"],
        "Status": body["Status"],
        "CreateDate": body["CreateDate"],
    }


class CredentialOps(IamOps):
    """Access keys (IAM), role sessions (STS) and their lookup for request authentication."""

    # -- rows -----------------------------------------------------------------------------

    def _write_key(self, conn: sqlite3.Connection, body: dict[str, Any]) -> None:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        conn.execute(
            "INSERT INTO access_keys(access_key_id, principal, account, kind, expires, body, mac) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(access_key_id) DO UPDATE SET "
            "body=excluded.body, mac=excluded.mac",
            (
                body["AccessKeyId"],
                body["Owner"],
                body["Account"],
                body["Kind"],
                body.get("Expiration"),
                text,
                _rows.record_mac(self.store.row_key, _TABLE, body["AccessKeyId"], text),
            ),
        )

    def _key_row(self, conn: sqlite3.Connection, key_id: str) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT body, mac FROM access_keys WHERE access_key_id=?", (key_id,)
        ).fetchone()
        if row is None:
            return None
        return self._access._authentic(row[0], row[1], _TABLE, key_id)

    def _owner_id(self, conn: sqlite3.Connection, arn: str) -> str | None:
        """The unique id of a key's owner (AIDA.../AROA...; the account id for the root), or
        None if it does not exist: a key binds its owner's id, so a user deleted and created
        again under the same name does not inherit the old user's keys."""
        if arn.endswith(":root"):
            return arn.split(":")[4]
        row = conn.execute("SELECT body, mac FROM principals WHERE arn=?", (arn,)).fetchone()
        if row is None:
            return None
        return str(self._access._authentic(row[0], row[1], "principals", arn).get("Id"))

    def _owner_arg(self, call: _Call, user_arn: Any) -> str:
        """The user (or root) whose keys a call manages: `user_arn`, else the caller."""
        caller = call.caller
        assert caller is not None
        if user_arn is None:
            if caller.kind not in ("user", "root"):
                raise ValidationException(
                    "UserArn is required when the caller is not a user or an account root"
                )
            return caller.arn
        if not isinstance(user_arn, str) or not _OWNER_ARN.match(user_arn):
            raise ValidationException(
                f"{str(user_arn)[:200]!r} is not the ARN of an IAM user or account root (roles "
                "get temporary credentials from assume-role)"
            )
        if user_arn.endswith(":root") and caller.arn != user_arn:
            # IAM policies cannot delegate the root's own credentials (as in AWS)
            call.decision = "denied"
            call.reason = "only the account root manages its own access keys"
            raise AccessDeniedException(
                f"User: {caller.arn} is not authorized to manage the access keys of {user_arn}: "
                "only the account root itself may"
            )
        return user_arn

    def _key_run(
        self,
        action: str,
        access_key_id: Any,
        user_arn: Any,
        principal: str | None,
        context: RequestContext | None,
        fn: Callable[[sqlite3.Connection, _Call, float, dict[str, Any]], Response],
    ) -> Response:
        """An IAM call on one access key, authorized on its owner's ARN.

        With `user_arn`, as IAM: the caller must be allowed the action on that user (never
        another account's), then the key must be one of that user's (else not found). Without
        it, the key is looked up in the caller's account (another account's key is not
        found), then the caller must be allowed the action on its owner.
        """
        key_id = _key_id_arg(access_key_id)

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            if user_arn is not None:
                owner = self._owner_arg(call, user_arn)
                self._authorize_owner(conn, call, action, owner)
            body = self._key_row(conn, key_id)
            if (
                body is None
                or body["Kind"] != "user"
                or body["Account"] != call.account
                or (user_arn is not None and body["Owner"] != owner)
            ):
                raise NotFoundException(f"The Access Key with id {key_id} cannot be found.")
            if user_arn is None:
                owner = str(body["Owner"])
                self._owner_arg(call, owner)  # the root's keys are the root's own
                self._authorize_owner(conn, call, action, owner)
            return fn(conn, call, now, body)

        return self._run(f"iam:{action}", principal, context, {"AccessKeyId": key_id}, op)

    def _authorize_owner(
        self, conn: sqlite3.Connection, call: _Call, action: str, owner: str
    ) -> None:
        """``iam:<action>`` on a key owner's ARN, in the caller's account only (`_iam_run`)."""
        call.key_id = owner
        account = owner.split(":")[4]
        if account != call.account:
            call.decision = "denied"
            call.reason = "IAM principals of another account cannot be managed"
            raise AccessDeniedException(
                f"User: {call.principal} is not authorized to perform: iam:{action} on "
                f"resource: {owner} because it belongs to another account ({account})"
            )
        self._authorize_account(conn, call, f"iam:{action}", owner)

    # -- IAM: access keys -----------------------------------------------------------------

    def create_access_key(
        self,
        *,
        user_arn: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """A new access key for a user (or the account root; default: the caller):
        ``{"AccessKey": {"UserName", "AccessKeyId", "SecretAccessKey", "Status": "Active",
        "CreateDate"}}``. The secret is shown by this call only; keep it safe."""
        params: dict[str, Any] = {"UserArn": user_arn}

        def fn(conn: sqlite3.Connection, call: _Call, now: float, owner: str) -> Response:
            owner_id = self._owner_id(conn, owner)
            if owner_id is None:
                raise NotFoundException(f"The user with name {owner} cannot be found.")
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM access_keys WHERE principal=? AND kind='user'", (owner,)
            ).fetchone()
            if count >= MAX_KEYS_PER_USER:
                raise LimitExceededException(
                    f"Cannot exceed quota for AccessKeysPerUser: {MAX_KEYS_PER_USER}"
                )
            key_id = _new_key_id("AKIA")
            secret = _secret()
            name = owner.rsplit("/", 1)[-1] if not owner.endswith(":root") else "root"
            body = {
                "AccessKeyId": key_id,
                "Kind": "user",
                "Owner": owner,
                "OwnerId": owner_id,
                "Principal": owner,
                "Account": owner.split(":")[4],
                "UserName": name,
                "Status": "Active",
                "CreateDate": now,
                "SealedSecret": base64.b64encode(
                    self.store.root.seal(secret.encode("ascii"), _aad(key_id, owner))
                ).decode("ascii"),
            }
            self._write_key(conn, body)
            params["AccessKeyId"] = key_id  # the audit record names the key, never its secret
            return {"AccessKey": {**_metadata(body), "SecretAccessKey": secret}}

        def resource(call: _Call) -> str:
            owner = self._owner_arg(call, user_arn)
            params["UserArn"] = owner
            return owner

        return self._iam_run("CreateAccessKey", principal, context, params, resource, fn)

    def list_access_keys(
        self,
        *,
        user_arn: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """The access keys of a user (or root; default: the caller), without secrets:
        ``{"AccessKeyMetadata": [...], "IsTruncated": False}``."""

        def fn(conn: sqlite3.Connection, call: _Call, now: float, owner: str) -> Response:
            if self._owner_id(conn, owner) is None:
                raise NotFoundException(f"The user with name {owner} cannot be found.")
            rows = conn.execute(
                "SELECT access_key_id, body, mac FROM access_keys WHERE principal=? AND "
                "kind='user' ORDER BY access_key_id",
                (owner,),
            ).fetchall()
            keys = [_metadata(self._access._authentic(b, m, _TABLE, str(k))) for k, b, m in rows]
            return {"AccessKeyMetadata": keys, "IsTruncated": False}

        return self._iam_run(
            "ListAccessKeys",
            principal,
            context,
            {"UserArn": user_arn},
            lambda call: self._owner_arg(call, user_arn),
            fn,
        )

    def update_access_key(
        self,
        *,
        access_key_id: str,
        status: str,
        user_arn: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """Make a key ``Inactive`` (refused at once, everywhere) or ``Active`` again."""
        if status not in ("Active", "Inactive"):
            raise ValidationException("Status must be Active or Inactive")

        def fn(conn: sqlite3.Connection, call: _Call, now: float, body: dict[str, Any]) -> Response:
            call.params["Status"] = status
            if body["Status"] != status:
                body["Status"] = status
                self._write_key(conn, body)
                _authz.bump_generation(conn)  # every process drops its cached secret
            return {}

        return self._key_run("UpdateAccessKey", access_key_id, user_arn, principal, context, fn)

    def delete_access_key(
        self,
        *,
        access_key_id: str,
        user_arn: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """Delete an access key: requests signed with it are refused from now on."""

        def fn(conn: sqlite3.Connection, call: _Call, now: float, body: dict[str, Any]) -> Response:
            conn.execute("DELETE FROM access_keys WHERE access_key_id=?", (body["AccessKeyId"],))
            _authz.bump_generation(conn)
            return {}

        return self._key_run("DeleteAccessKey", access_key_id, user_arn, principal, context, fn)

    # -- IAM: trust policies --------------------------------------------------------------

    def update_assume_role_policy(
        self,
        *,
        role_arn: str,
        policy_document: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """Replace a role's trust policy (IAM's UpdateAssumeRolePolicy). Sessions already
        issued keep working until they expire, as in AWS."""
        if not isinstance(role_arn, str) or not _ROLE_ARN.match(role_arn):
            raise ValidationException(f"{str(role_arn)[:200]!r} is not the ARN of an IAM role")

        def fn(conn: sqlite3.Connection, call: _Call, now: float, arn: str) -> Response:
            body = self._principal_row(conn, arn)
            parse_trust_policy(policy_document, lambda a: self._exists(conn, a))
            body["AssumeRolePolicyDocument"] = policy_document
            self._write_principal(conn, body)
            return {}

        return self._iam_run(
            "UpdateAssumeRolePolicy", principal, context, {}, lambda call: role_arn, fn
        )

    # -- STS ------------------------------------------------------------------------------

    def assume_role(
        self,
        *,
        role_arn: str,
        role_session_name: str,
        duration_seconds: int = 3600,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """Temporary credentials of a role session (STS AssumeRole):
        ``{"Credentials": {"AccessKeyId": "ASIA...", "SecretAccessKey", "SessionToken",
        "Expiration"}, "AssumedRoleUser": {"Arn", "AssumedRoleId"}}``.

        Allowed when the role's trust policy allows the caller (see `_trust`); 900 s up to
        the role's MaxSessionDuration (at most 3600 s for a role session assuming a role:
        role chaining). The secret and token are returned once and stored sealed / hashed.
        """
        params: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": role_session_name,
            "DurationSeconds": duration_seconds,
        }

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            caller = call.caller
            assert caller is not None
            m = _ROLE_ARN.match(role_arn) if isinstance(role_arn, str) else None
            if m is None:
                raise ValidationException(
                    f"{str(role_arn)[:200]!r} is not the ARN of an IAM role (RoleArn)"
                )
            if not isinstance(role_session_name, str) or not _SESSION_NAME.match(role_session_name):
                raise ValidationException(
                    "RoleSessionName must be 2..64 characters of [A-Za-z0-9+=,.@_-]"
                )
            duration = _int_in(duration_seconds, 900, 43200, "DurationSeconds")
            call.key_id = role_arn
            account, role_name = m.group(1), m.group(2)
            row = conn.execute(
                "SELECT body, mac FROM principals WHERE arn=? AND kind='role'", (role_arn,)
            ).fetchone()
            role = (
                None
                if row is None
                else self._access._authentic(row[0], row[1], "principals", role_arn)
            )
            request, decision = self._decide_assume(conn, call, now, role_arn, account, role)
            self._decided(call, request, decision)
            assert role is not None
            if caller.kind == "assumed-role" and duration > 3600:
                raise ValidationException(
                    "The requested DurationSeconds exceeds the 1 hour session limit for roles "
                    "assumed by role chaining."
                )
            if duration > int(role.get("MaxSessionDuration", 3600)):
                raise ValidationException(
                    "The requested DurationSeconds exceeds the MaxSessionDuration set for this "
                    "role."
                )
            purged = conn.execute(
                "DELETE FROM access_keys WHERE kind='session' AND expires < ?",
                (now - EXPIRED_KEPT,),
            )
            if purged.rowcount:
                _authz.bump_generation(conn)  # cached lookups of the purged sessions go too
            session_arn = f"arn:aws:sts::{account}:assumed-role/{role_name}/{role_session_name}"
            key_id = _new_key_id("ASIA")
            secret = _secret()
            token = _session_token()
            expires = now + duration
            assumed_id = f"{role['Id']}:{role_session_name}"
            body = {
                "AccessKeyId": key_id,
                "Kind": "session",
                "Owner": role_arn,
                "OwnerId": str(role["Id"]),
                "Principal": session_arn,
                "Account": account,
                "UserName": role_name,
                "Status": "Active",
                "CreateDate": now,
                "Expiration": expires,
                "AssumedBy": caller.arn,
                "SessionTokenHash": token_hash(token).hex(),
                "SealedSecret": base64.b64encode(
                    self.store.root.seal(secret.encode("ascii"), _aad(key_id, session_arn))
                ).decode("ascii"),
            }
            self._write_key(conn, body)
            params["AccessKeyId"] = key_id
            return {
                "Credentials": {
                    "AccessKeyId": key_id,
                    "SecretAccessKey": secret,
                    "SessionToken": token,
                    "Expiration": expires,
                },
                "AssumedRoleUser": {"Arn": session_arn, "AssumedRoleId": assumed_id},
                "PackedPolicySize": 0,
            }

        return self._run("sts:AssumeRole", principal, context, params, op)

    def _decide_assume(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        now: float,
        role_arn: str,
        account: str,
        role: dict[str, Any] | None,
    ) -> tuple[Request, Decision]:
        """The trust policy as the resource policy, the caller's IAM policies as identity."""
        caller = call.caller
        assert caller is not None
        identity = self._access.identity(conn, caller)
        values = self._caller_values(call, now, identity)
        values.update(_authz.tag_values("aws:principaltag/", identity.tags))
        request = Request(
            action="sts:AssumeRole",
            caller=caller,
            resource=role_arn,
            resource_account=account,
            values=values,
        )
        if role is None:
            call.reason = "the role does not exist"
            return request, Decision(
                False, None, "no resource-based policy allows the sts:AssumeRole action"
            )
        if not identity.exists:
            return request, _no_such_principal(caller)
        text = role.get("AssumeRolePolicyDocument") or default_trust_policy(account)
        trust = self._trust_policy(str(text))
        decision = authorize(request, key_policy=trust, iam_policies=identity.policies)
        # the evaluator calls every resource policy a key policy: here it is the trust policy
        matched = decision.matched
        if matched is not None and "key-policy:" in matched:
            decision = dataclasses.replace(
                decision, matched=matched.replace("key-policy:", "trust-policy:")
            )
        return request, decision

    def _trust_policy(self, text: str) -> Policy:
        cache: dict[str, Policy] = self.__dict__.setdefault("_trust_cache", {})
        hit = cache.get(text)
        if hit is None:
            hit = parse_trust_policy(text)
            if len(cache) >= 1024:
                cache.clear()
            cache[text] = hit
        return hit

    # -- the authenticator's lookup -------------------------------------------------------

    def resolve_credentials(self, access_key_id: str, now: float) -> ResolvedCredentials | None:
        """The owner and secret of an access key, or None when the store has no such key
        (or its owner no longer exists). Not authorized, not audited: the SigV4
        authenticator's lookup, cached per key id.

        A cached answer is reused while the rows it was read from are unchanged: the access
        key's row and its owner's principal row, by their MACs (each bound to its row's table,
        key and text). Not the access generation, a number outside every MAC: an editor of
        the file who put an old one back made a running server keep accepting a deleted or
        deactivated access key."""
        if not isinstance(access_key_id, str) or not _KEY_ID.match(access_key_id):
            return None
        # (created on first use: the service's constructor is shared plumbing, `_core`)
        cache: dict[str, tuple[str, tuple[Any, ...], ResolvedCredentials]] = (
            self.__dict__.setdefault("_credential_cache", {})
        )
        with self.store.read() as conn:
            hit = cache.get(access_key_id)
            if hit is not None and hit[1] == _stamp(conn, hit[0], access_key_id):
                return hit[2]
            loaded = self._load_credentials(conn, access_key_id)
            if loaded is None:  # unknown ids are not cached: a key created next is found
                return None
            owner, resolved = loaded
            stamp = _stamp(conn, owner, access_key_id)
        if len(cache) >= 4096:
            cache.clear()
        cache[access_key_id] = (owner, stamp, resolved)
        return resolved

    def _load_credentials(
        self, conn: sqlite3.Connection, key_id: str
    ) -> tuple[str, ResolvedCredentials] | None:
        """(the key's owner, its credentials), or None when there is no such key."""
        body = self._key_row(conn, key_id)
        if body is None:
            return None
        owner = str(body["Owner"])
        if self._owner_id(conn, owner) != body.get("OwnerId"):
            return None  # its user or role was deleted (and perhaps created again)
        principal = str(body["Principal"])
        try:
            secret = self.store.root.unseal(
                base64.b64decode(body["SealedSecret"]), _aad(key_id, principal)
            ).decode("ascii")
        except (ValueError, UnicodeDecodeError, StoreError):
            raise StoreError(
                f"the sealed secret of access key {key_id} does not open under the root key"
            ) from None
        token = body.get("SessionTokenHash")
        expires = body.get("Expiration")
        return owner, ResolvedCredentials(
            principal_arn=principal,
            secret=secret,
            session_token_hash=bytes.fromhex(token) if isinstance(token, str) else None,
            expires=float(expires) if expires is not None else None,
            active=body["Status"] == "Active",
        )

    # -- refusals before any principal ----------------------------------------------------

    def record_unauthenticated(
        self,
        *,
        operation: str,
        context: RequestContext,
        error_code: str,
        reason: str,
        access_key_id: str | None = None,
        suppressed: int = 0,
    ) -> None:
        """Audit a request refused before it had a principal (unsigned, badly signed, an
        unknown or expired key): principal ``anonymous``, decision ``denied``, the claimed
        access key id in its parameters. Never a secret: the caller passes none.
        `suppressed`: refusals the server did not record since the last one it did (its budget
        against floods), as ``SuppressedRefusals``."""
        params: dict[str, Any] = {}
        if access_key_id:
            params["AccessKeyId"] = str(access_key_id)[:128]
        if suppressed:
            params["SuppressedRefusals"] = int(suppressed)
        call = _Call(str(operation)[:128], "anonymous", context, params)
        call.decision = "denied"
        call.reason = reason[:1000]
        err = KmsServiceError(reason[:1000])
        err.code = str(error_code)[:128]
        now = self.now()
        with self.store.lock:
            try:
                with self.store.write() as conn:
                    self._record(conn, call, now, err)
            except BaseException:
                self._audit_head = None
                raise
            self._audit_head = call.head
            if self.store.sealer.dirty:
                self.store.publish_digests(strict=False)
