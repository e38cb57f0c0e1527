"""Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.

A grant lets one principal (the grantee) call a few operations on one key, optionally only with
a given encryption context, until it is retired or revoked. Grants are stored beside the key
(``grants`` table, each row authenticated under the row key), take effect in the transaction
that creates them (so a grant token is never needed for consistency, only accepted), and go
with their key when it is deleted. The evaluator (`access.authorize`) checks a grant's
operations and constraints on every call it allows; explicit Deny in a policy still wins.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from . import _authz, _rows
from ._core import (
    GRANT_TOKEN_PREFIX,
    RequestContext,
    Response,
    ServiceCore,
    _Call,
    _grant_tokens,
    _Key,
    _page,
    _paging,
)
from ._states import GRANT, READ
from .access import Decision, grant_covers
from .errors import (
    AccessDeniedException,
    InvalidGrantIdException,
    InvalidGrantTokenException,
    KmsServiceError,
    LimitExceededException,
    ValidationException,
)

#: What a grant may allow (botocore's GrantOperation enum).
GRANT_OPERATIONS = (
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "Encapsulate",
    "Decapsulate",
)
# operations with no encryption context: a grant that has constraints cannot include them
_NO_CONTEXT = frozenset(
    {
        "Sign",
        "Verify",
        "GetPublicKey",
        "GenerateMac",
        "VerifyMac",
        "DeriveSharedSecret",
        "Encapsulate",
        "Decapsulate",
    }
)
_ANY_KEY = ("CreateGrant", "RetireGrant", "DescribeKey")
# what each kind of key supports (the AWS guide's "Grant operations"): a grant for another
# operation is refused with ValidationException, as CreateGrant's documentation says
_SUPPORTED_BY_USAGE = {
    "SYMMETRIC": frozenset(
        {
            "Decrypt",
            "Encrypt",
            "GenerateDataKey",
            "GenerateDataKeyWithoutPlaintext",
            "GenerateDataKeyPair",
            "GenerateDataKeyPairWithoutPlaintext",
            "ReEncryptFrom",
            "ReEncryptTo",
            *_ANY_KEY,
        }
    ),
    "ENCRYPT_DECRYPT": frozenset(
        {"Decrypt", "Encrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey", *_ANY_KEY}
    ),
    "SIGN_VERIFY": frozenset({"Sign", "Verify", "GetPublicKey", *_ANY_KEY}),
    "GENERATE_VERIFY_MAC": frozenset({"GenerateMac", "VerifyMac", *_ANY_KEY}),
    "KEY_AGREEMENT": frozenset({"DeriveSharedSecret", "GetPublicKey", *_ANY_KEY}),
    "ENCAPSULATE_DECAPSULATE": frozenset({"Encapsulate", "Decapsulate", "GetPublicKey", *_ANY_KEY}),
}
_PRINCIPAL = re.compile(r"^[\w+=,.@:/-]{1,256}$")
_SERVICE = re.compile(r"^([A-Za-z0-9\-]+)\.([A-Za-z0-9\-]+)(\.[A-Za-z0-9\-]+)+$")
_NAME = re.compile(r"^[a-zA-Z0-9:/_-]{1,256}$")
MAX_GRANTS_PER_KEY = 50_000

__all__ = ("GRANT_OPERATIONS", "GrantOps")


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


_CONTEXT_CONSTRAINTS = ("EncryptionContextEquals", "EncryptionContextSubset")
_MAX_CONSTRAINT_PAIRS = 8
_MAX_CONSTRAINT_VALUE = 384
#: GrantConstraints.SourceArn's pattern in botocore's model (20..512 characters)
_SOURCE_ARN = re.compile(r"^arn:aws[a-z0-9-]*:[a-z0-9-]+:[a-z0-9-]*:[0-9]{12}:.+$")


def _constraints(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {*_CONTEXT_CONSTRAINTS, "SourceArn"}:
        raise ValidationException(
            "Constraints takes EncryptionContextEquals, EncryptionContextSubset and SourceArn"
        )
    if all(m in value for m in _CONTEXT_CONSTRAINTS):
        # AWS's answer when both are given, even one empty (a real response, aws-sdk-java
        # #328): one kind of encryption context constraint per grant (review)
        raise ValidationException("More than one constraint supplied")
    out: dict[str, Any] = {}
    for member, ctx in value.items():
        if member == "SourceArn":
            if not isinstance(ctx, str) or not 20 <= len(ctx) <= 512 or not _SOURCE_ARN.match(ctx):
                raise ValidationException(
                    "SourceArn must be the ARN of a resource (20..512 characters, "
                    "arn:aws...:service:region:account-id:resource)"
                )
            out[member] = ctx
            continue
        if not isinstance(ctx, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in ctx.items()
        ):
            raise ValidationException(f"{member} must be a map of strings")
        # the API reference (CreateGrant, Constraints): "Each constraint value can include up
        # to 8 encryption context pairs. The encryption context value in each constraint
        # cannot exceed 384 characters." (review)
        if len(ctx) > _MAX_CONSTRAINT_PAIRS:
            raise ValidationException(
                f"{member} holds {len(ctx)} encryption context pairs; a grant constraint may "
                f"hold up to {_MAX_CONSTRAINT_PAIRS}"
            )
        if any(len(v) > _MAX_CONSTRAINT_VALUE for v in ctx.values()):
            raise ValidationException(
                f"an encryption context value in {member} exceeds "
                f"{_MAX_CONSTRAINT_VALUE} characters"
            )
        out[member] = dict(ctx)
    return out or None


class GrantOps(ServiceCore):
    """Grants on a key."""

    def _grant_principal(self, value: Any, service: Any, member: str) -> str | None:
        """GranteePrincipal / RetiringPrincipal (an ARN) or their *ServicePrincipal twin."""
        if value is not None and service is not None:
            raise ValidationException(f"{member} and {member[:-9]}ServicePrincipal are exclusive")
        if service is not None:
            if not isinstance(service, str) or not _SERVICE.match(service) or len(service) > 128:
                raise ValidationException(f"{member[:-9]}ServicePrincipal is not a service name")
            return service
        if value is None:
            return None
        if not isinstance(value, str) or not _PRINCIPAL.match(value):
            raise ValidationException(f"{member} must match [\\w+=,.@:/-]{{1,256}}")
        try:
            self._access.principal(value)
        except KmsServiceError:
            raise ValidationException(f"{member} {value!r} is not a principal ARN") from None
        return value

    def _grant_rows(self, conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
        out = []
        for gid, text, mac in conn.execute(sql, args).fetchall():
            out.append(self._access._authentic(text, mac, "grants", str(gid)))
        return out

    def create_grant(
        self,
        *,
        key_id: str,
        operations: Sequence[str],
        grantee_principal: str | None = None,
        retiring_principal: str | None = None,
        constraints: Mapping[str, Mapping[str, str]] | None = None,
        grant_tokens: Sequence[str] = (),
        name: str | None = None,
        grantee_service_principal: str | None = None,
        retiring_service_principal: str | None = None,
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        params: dict[str, Any] = {
            "GranteePrincipal": grantee_principal or grantee_service_principal,
            "RetiringPrincipal": retiring_principal or retiring_service_principal,
            "Operations": list(operations) if isinstance(operations, Sequence) else None,
            "Name": name,
        }

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            grantee = self._grant_principal(
                grantee_principal, grantee_service_principal, "GranteePrincipal"
            )
            if grantee is None:
                raise ValidationException("GranteePrincipal is required")
            retiring = self._grant_principal(
                retiring_principal, retiring_service_principal, "RetiringPrincipal"
            )
            ops = self._operations(operations)
            cons = _constraints(constraints)
            if grantee_service_principal is not None:  # CreateGrant's documented rule
                if not (cons or {}).get("SourceArn"):
                    raise ValidationException(
                        "a grant for a GranteeServicePrincipal must have a SourceArn constraint"
                    )
                if retiring is None:
                    raise ValidationException(
                        "a grant for a GranteeServicePrincipal must name a RetiringPrincipal "
                        "or a RetiringServicePrincipal"
                    )
            if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
                raise ValidationException("Name must match [a-zA-Z0-9:/_-]{1,256}")
            params["Constraints"] = cons
            call.values["kms:grantoperations"] = list(ops)
            call.values["kms:grantisforawsresource"] = call.ctx.via_service is not None
            kinds = [c for c in _CONTEXT_CONSTRAINTS if c in (cons or {})]
            if kinds:  # the condition key's values (the AWS guide): context constraints only
                call.values["kms:grantconstrainttype"] = kinds
            call.values["kms:granteeprincipal"] = grantee
            if retiring is not None:
                call.values["kms:retiringprincipal"] = retiring
            # kms:EncryptionContext:<key> and kms:EncryptionContextKeys list CreateGrant among
            # their operations: there they read the grant's encryption context constraint
            constrained = (cons or {}).get("EncryptionContextEquals")
            if constrained is None:
                constrained = (cons or {}).get("EncryptionContextSubset")
            if constrained is not None:
                call.enc_context = dict(constrained)
            key = self._key(conn, call, key_id, GRANT, now)
            kind = "SYMMETRIC" if key.spec == "SYMMETRIC_DEFAULT" else key.usage
            unsupported = [op for op in ops if op not in _SUPPORTED_BY_USAGE.get(kind, _ANY_KEY)]
            if unsupported:
                raise ValidationException(
                    f"{key.arn} ({key.spec}, {key.usage}) does not support "
                    f"{', '.join(unsupported)}: a grant may allow only operations its key supports"
                )
            if any(c in (cons or {}) for c in _CONTEXT_CONSTRAINTS) and (
                _NO_CONTEXT.intersection(ops)
                or key.algorithm_members().get("EncryptionAlgorithms") != ["SYMMETRIC_DEFAULT"]
            ):
                raise ValidationException(
                    "encryption context grant constraints apply only to operations with an "
                    "encryption context on symmetric encryption keys"
                )
            self._check_narrower(conn, call, key, ops, cons)
            grantee_member = "GranteePrincipal"
            if grantee_service_principal is not None:
                grantee_member = "GranteeServicePrincipal"
            retiring_member = "RetiringPrincipal"
            if retiring_service_principal is not None:
                retiring_member = "RetiringServicePrincipal"
            # "the account under which the grant was issued": the caller's (another account's
            # principal may create grants on a key whose policy lets it; review)
            issuer = call.caller.account if call.caller is not None else key.account
            body: dict[str, Any] = {
                "KeyId": key.arn,
                "Name": name,
                grantee_member: grantee,
                retiring_member: retiring,
                "IssuingAccount": f"arn:aws:iam::{issuer}:root",
                "Operations": list(ops),
                "Constraints": cons,
            }
            if name is not None:
                for row in self._grant_rows(
                    conn,
                    "SELECT grant_id, body, mac FROM grants WHERE region=? AND key_id=? AND name=?",
                    (key.region, key.id, name),
                ):
                    # the same grant: the same parameters, Operations as a set (its order
                    # says nothing; a retry that listed them in another order made a second
                    # grant)
                    if all(
                        sorted(row.get(k) or ()) == sorted(v)
                        if k == "Operations"
                        else row.get(k) == v
                        for k, v in body.items()
                    ):
                        token = self._issue_token(conn, str(row["GrantId"]))
                        call.params["GrantId"] = row["GrantId"]
                        return {"GrantToken": token, "GrantId": row["GrantId"]}
            count = conn.execute(
                "SELECT COUNT(*) FROM grants WHERE region=? AND key_id=?", (key.region, key.id)
            ).fetchone()[0]
            if count >= MAX_GRANTS_PER_KEY:
                raise LimitExceededException(f"{key.arn} has {MAX_GRANTS_PER_KEY} grants")
            grant_id = secrets.token_hex(32)
            body = {"GrantId": grant_id, **body, "CreationDate": now}
            text = json.dumps(body, sort_keys=True, separators=(",", ":"))
            conn.execute(
                "INSERT INTO grants(grant_id, region, key_id, grantee, retiring, name, "
                "body, mac) VALUES (?,?,?,?,?,?,?,?)",
                (
                    grant_id,
                    key.region,
                    key.id,
                    grantee,
                    retiring,
                    name,
                    text,
                    _rows.record_mac(self.store.row_key, "grants", grant_id, text),
                ),
            )
            token = self._issue_token(conn, grant_id)
            call.params["GrantId"] = grant_id
            return {"GrantToken": token, "GrantId": grant_id}

        return self._run("CreateGrant", principal, context, params, op, dry_run=dry_run)

    @staticmethod
    def _issue_token(conn: sqlite3.Connection, grant_id: str) -> str:
        """A new token for a grant. An idempotent CreateGrant issues another one; as in AWS,
        every token of a grant names it ("grant tokens for the same grant ID can be used
        interchangeably"). Only a hash is stored: a token is a bearer secret for RetireGrant."""
        token = _new_token()
        conn.execute(
            "INSERT INTO grant_tokens(token_hash, grant_id) VALUES (?, ?)",
            (_token_hash(token), grant_id),
        )
        return token

    @staticmethod
    def _operations(value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise ValidationException("Operations must be a non-empty list")
        ops = tuple(dict.fromkeys(value))
        bad = [o for o in ops if o not in GRANT_OPERATIONS]
        if bad:
            raise ValidationException(
                f"Operations has {bad[0]!r}; valid operations: {', '.join(GRANT_OPERATIONS)}"
            )
        if ops == ("CreateGrant",):  # AWS's words (a recorded response; review)
            raise ValidationException("Grants must not contain only the CreateGrant operation.")
        return ops

    def _check_narrower(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        key: _Key,
        ops: Sequence[str],
        cons: Mapping[str, Any] | None,
    ) -> None:
        """A grantee allowed CreateGrant only by a grant may not give more than it holds: one
        of its grants on the key that hold CreateGrant must cover the new grant's operations
        and constraints (any of them, not only the one the evaluator met first: a grantee
        holding Encrypt under one grant and Decrypt under another was refused a Decrypt
        grant its second grant covered; review)."""
        matched = call.matched[-1] if call.matched else ""
        if not matched.startswith("grant:"):
            return
        parent_id = matched[len("grant:") :]
        caller = call.caller
        assert caller is not None
        who = {caller.arn, caller.identity_arn}
        held = [
            view
            for view in map(
                _authz.grant_view,
                self._grant_rows(
                    conn,
                    "SELECT grant_id, body, mac FROM grants WHERE region=? AND key_id=?",
                    (key.region, key.id),
                ),
            )
            if view.grantee in who
            and "CreateGrant" in view.operations
            # (a grant for requests made on behalf of one resource allows none made
            # directly: it covers nothing here; diff review)
            and (view.source_arn is None or view.source_arn == call.values.get("aws:sourcearn"))
        ]
        equals = (cons or {}).get("EncryptionContextEquals")
        subset = (cons or {}).get("EncryptionContextSubset")
        if not any(grant_covers(g, ops, equals, subset) for g in held):
            call.decision = "denied"
            call.reason = f"grant {parent_id} does not hold everything the new grant gives"
            raise AccessDeniedException(
                f"User: {call.principal} is not authorized to perform: kms:CreateGrant on "
                f"resource: {key.arn} because grant {parent_id} does not hold every operation "
                "and constraint of the new grant"
            )

    def list_grants(
        self,
        *,
        key_id: str,
        limit: int | None = None,
        marker: str | None = None,
        grant_id: str | None = None,
        grantee_principal: str | None = None,
        grantee_service_principal: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            n, after = _paging(call, limit, marker, 50, 100)  # "between 1 and 100" (docs)
            grantee = self._grant_principal(
                grantee_principal, grantee_service_principal, "GranteePrincipal"
            )
            if grant_id is not None and (not isinstance(grant_id, str) or not grant_id):
                raise ValidationException("GrantId must be 1..128 characters")
            call.values["kms:grantisforawsresource"] = call.ctx.via_service is not None
            key = self._key(conn, call, key_id, READ, now)
            sql = (
                "SELECT grant_id, body, mac FROM grants WHERE region=? AND key_id=? AND grant_id>?"
            )
            args: list[Any] = [key.region, key.id, after]
            if grant_id is not None:
                sql += " AND grant_id=?"
                args.append(grant_id)
            if grantee is not None:
                sql += " AND grantee=?"
                args.append(grantee)
            rows = self._grant_rows(conn, sql + " ORDER BY grant_id LIMIT ?", (*args, n + 1))
            if grant_id is not None and not rows and after == "":
                exists = conn.execute(
                    "SELECT 1 FROM grants WHERE grant_id=? AND region=? AND key_id=?",
                    (grant_id, key.region, key.id),
                ).fetchone()
                if exists is None:
                    raise InvalidGrantIdException(f"{key.arn} has no grant {grant_id}")
            items, extra = _page(call, rows, n, lambda g: str(g["GrantId"]))
            return {"Grants": [_entry(g) for g in items], **extra}

        return self._run("ListGrants", principal, context, {}, op)

    def list_retirable_grants(
        self,
        *,
        retiring_principal: str | None = None,
        retiring_service_principal: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            n, after = _paging(call, limit, marker, 50, 100)  # "between 1 and 100" (docs)
            retiring = self._grant_principal(
                retiring_principal, retiring_service_principal, "RetiringPrincipal"
            )
            if retiring is None:
                raise ValidationException("RetiringPrincipal is required")
            # AWS: "The authorized resource in ListRetirableGrants calls is the retiring
            # principal specified in the request", which "must [be] a principal in your AWS
            # account" (it was authorized on "*", for any account's principal; review)
            owner = self._access.principal(retiring).account
            if owner is None or owner == call.account:
                self._authorize_account(conn, call, resource=retiring)
            else:
                request, _ = self._authorize_account(conn, call, resource=retiring, explain=True)
                self._decided(
                    call,
                    request,
                    Decision(
                        False,
                        None,
                        f"{retiring} is not a principal of account {call.account} (the "
                        "retiring principal must be in your own account)",
                    ),
                )
            rows = self._grant_rows(
                conn,
                "SELECT grant_id, body, mac FROM grants WHERE retiring=? AND region=? "
                "AND grant_id>? ORDER BY grant_id LIMIT ?",
                (retiring, self.region, after, n + 1),
            )
            items, extra = _page(call, rows, n, lambda g: str(g["GrantId"]))
            return {"Grants": [_entry(g) for g in items], **extra}

        return self._run("ListRetirableGrants", principal, context, {}, op)

    def retire_grant(
        self,
        *,
        grant_token: str | None = None,
        key_id: str | None = None,
        grant_id: str | None = None,
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """Retire a grant: by its token, or by key and grant id. Allowed to the retiring
        principal, to the grantee when the grant includes RetireGrant, and to the account that
        owns the key: its root, or a principal of that account to whom an identity policy
        delegates ``kms:RetireGrant`` (as in AWS; the key policy is not consulted)."""

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            if grant_token is not None:
                if not isinstance(grant_token, str) or not 1 <= len(grant_token) <= 8192:
                    raise InvalidGrantTokenException("GrantToken must be 1..8192 characters")
                rows = self._grant_rows(
                    conn,
                    "SELECT g.grant_id, g.body, g.mac FROM grant_tokens t JOIN grants g "
                    "ON g.grant_id = t.grant_id WHERE t.token_hash=?",
                    (_token_hash(grant_token),),
                )
                if not rows:
                    raise InvalidGrantTokenException("the grant token names no grant")
                grant = rows[0]
                if grant_id is not None and grant_id != grant["GrantId"]:
                    raise InvalidGrantTokenException("the grant token names another grant")
            else:
                if key_id is None or grant_id is None:
                    raise ValidationException("RetireGrant needs GrantToken, or KeyId and GrantId")
                key = self._key(conn, call, key_id, READ, now, authorize=False)
                rows = self._grant_rows(
                    conn,
                    "SELECT grant_id, body, mac FROM grants WHERE grant_id=? AND region=? "
                    "AND key_id=?",
                    (grant_id, key.region, key.id),
                )
                if not rows:
                    raise InvalidGrantIdException(f"{key.arn} has no grant {grant_id}")
                grant = rows[0]
            call.key_id = str(grant["KeyId"])
            call.params["GrantId"] = grant["GrantId"]
            self._may_retire(conn, call, grant)
            delete_grants(conn, "grant_id=?", (grant["GrantId"],))
            return {}

        return self._run("RetireGrant", principal, context, {}, op, dry_run=dry_run)

    def _may_retire(self, conn: sqlite3.Connection, call: _Call, grant: Mapping[str, Any]) -> None:
        """AWS's rule: the grant says who may retire it (its retiring principal; its grantee if
        it includes RetireGrant), and the key's account may, itself (root) or through a
        principal it delegates ``kms:RetireGrant`` to in an identity policy; so may a principal
        of a retiring account (a retiring principal that is an account root) to whom that
        account delegates ``kms:RetireGrant``. An identity policy
        that denies ``kms:RetireGrant`` stops anyone it applies to. The key policy plays no
        part."""
        caller = call.caller
        assert caller is not None
        who = {caller.arn, caller.identity_arn}
        key_account = str(grant["KeyId"]).split(":")[4]
        _, identity = self._authorize_account(
            conn, call, "kms:RetireGrant", str(grant["KeyId"]), explain=True
        )
        if not identity.allowed and identity.matched:  # an explicit Deny
            call.decision = "denied"
            call.reason = identity.reason
            raise AccessDeniedException(
                f"User: {caller.arn} is not authorized to perform: kms:RetireGrant on resource: "
                f"{grant['KeyId']} with an explicit deny in an identity-based policy"
            )
        retiring = grant.get("RetiringPrincipal") or grant.get("RetiringServicePrincipal")
        grantee = grant.get("GranteePrincipal") or grant.get("GranteeServicePrincipal")
        if retiring in who:
            call.matched.append("retiring-principal")
        elif grantee in who and "RetireGrant" in grant["Operations"]:
            call.matched.append(f"grant:{grant['GrantId']}")
        elif caller.kind == "root" and caller.account == key_account:
            call.matched.append("root")
        elif caller.kind == "root" and grant.get("IssuingAccount") == caller.arn:
            # AWS ("Retiring and revoking grants"): "the AWS account (root user) in which the
            # grant was created" may retire it (a grant created from another account; review)
            call.matched.append("issuing-account")
        elif caller.account == key_account and identity.allowed:
            call.matched.append(identity.matched or "iam")  # delegated by the key's account
        elif retiring == f"arn:aws:iam::{caller.account}:root" and identity.allowed:
            # AWS: "If the retiring principal is a different AWS account, administrators in
            # the other account can use kms:RetireGrant to delegate permission"
            call.matched.append(identity.matched or "iam")
        else:
            call.decision = "denied"
            call.reason = (
                "not the retiring principal, a grantee holding RetireGrant, the key's account, "
                "or a principal its retiring account delegates kms:RetireGrant to"
            )
            raise AccessDeniedException(
                f"User: {caller.arn} is not authorized to perform: kms:RetireGrant on resource: "
                f"{grant['KeyId']} because it is not the grant's retiring principal, a grantee "
                "whose grant includes RetireGrant, or the account that owns the key (nor a "
                "principal of that account allowed kms:RetireGrant by an identity policy)"
            )
        call.decision = "allowed"

    def revoke_grant(
        self,
        *,
        key_id: str,
        grant_id: str,
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            if not isinstance(grant_id, str) or not 1 <= len(grant_id) <= 128:
                raise ValidationException("GrantId must be 1..128 characters")
            call.params["GrantId"] = grant_id
            call.values["kms:grantisforawsresource"] = call.ctx.via_service is not None
            key = self._key(conn, call, key_id, READ, now)
            if not delete_grants(
                conn, "grant_id=? AND region=? AND key_id=?", (grant_id, key.region, key.id)
            ):
                raise InvalidGrantIdException(f"{key.arn} has no grant {grant_id}")
            return {}

        return self._run("RevokeGrant", principal, context, {}, op, dry_run=dry_run)


def delete_grants(conn: sqlite3.Connection, where: str, args: Sequence[Any]) -> int:
    """Delete the grants matching `where` with their tokens; how many were deleted."""
    conn.execute(
        f"DELETE FROM grant_tokens WHERE grant_id IN (SELECT grant_id FROM grants WHERE {where})",
        args,
    )
    return conn.execute(f"DELETE FROM grants WHERE {where}", args).rowcount


def _new_token() -> str:
    return GRANT_TOKEN_PREFIX + secrets.token_urlsafe(48)


def _entry(g: Mapping[str, Any]) -> Response:
    """A GrantListEntry (members that are None left out, as AWS does). A store written before
    grants kept the *ServicePrincipal members apart held a service name under
    GranteePrincipal / RetiringPrincipal: it is answered under its own member."""
    out = {k: v for k, v in g.items() if v is not None}
    for member in ("GranteePrincipal", "RetiringPrincipal"):
        value = out.get(member)
        if isinstance(value, str) and not value.startswith("arn:") and _SERVICE.match(value):
            out[member[:-9] + "ServicePrincipal"] = out.pop(member)
    return out
