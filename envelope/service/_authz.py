"""The service side of access control: what the pure evaluator (`access`) needs, from the store.

`access.authorize` decides; this module gathers its inputs for one call: the caller's identity
(its tags and identity policies, from the ``principals`` and ``identity_policies`` tables), the
key policy (kept in the key row, so it is authenticated with the key and changes atomically with
it), the grants of the key for the caller, and the condition context (``kms:*`` and ``aws:*``
keys). Each row is authenticated under the row key (`_rows.record_mac`), so editing the SQLite
file to widen access is refused as tampering, like an edited key row.

Caching keeps enforcement within a few microseconds of a call: parsed policies are cached by
their text (a policy is immutable once parsed), and a caller's identity by its ARN under the
store's *access generation*, a random number rewritten by every change to principals or
identity policies (in any process), read once per call.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import _rows
from .access import (
    Decision,
    GrantView,
    Policy,
    Principal,
    parse_policy,
    parse_principal,
)
from .errors import TamperedStoreError

__all__ = (
    "ACCESS_GEN",
    "AccessCache",
    "Identity",
    "bump_generation",
    "default_key_policy",
    "managed_key_policy",
)

ACCESS_GEN = "access_gen"
DEFAULT_POLICY_NAME = "default"


def default_key_policy(account: str) -> str:
    """AWS's default key policy: the account root may do everything, which delegates the key
    to the account's IAM policies (and lets the root manage the key even when IAM says no)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )


def managed_key_policy(account: str, service: str, region: str) -> str:
    """The fixed policy of an AWS managed key (``alias/aws/<service>``), as AWS writes it:
    use only through that service by principals of the same account; metadata readable by the
    account through IAM. Nothing else, so it can never be changed, disabled or shared."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": f"auto-{service}-1",
            "Statement": [
                {
                    "Sid": f"Allow access through {service} for all principals in the account "
                    f"that are authorized to use {service}",
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": [
                        "kms:Encrypt",
                        "kms:Decrypt",
                        "kms:ReEncrypt*",
                        "kms:GenerateDataKey*",
                        "kms:CreateGrant",
                        "kms:DescribeKey",
                    ],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {
                            "kms:CallerAccount": account,
                            "kms:ViaService": via_service(service, region),
                        }
                    },
                },
                {
                    "Sid": "Allow direct access to key metadata to the account",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": ["kms:Describe*", "kms:Get*", "kms:List*"],
                    "Resource": "*",
                },
            ],
        },
        indent=2,
    )


def via_service(service: str, region: str) -> str:
    """The ``kms:ViaService`` value of calls made through `service` (AWS's endpoint name)."""
    return f"{service}.{region}.amazonaws.com"


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller as access control sees it: who, which tags, which identity policies."""

    principal: Principal
    exists: bool
    tags: Mapping[str, str] = field(default_factory=dict)
    policies: tuple[tuple[str, Policy], ...] = ()
    unique_id: str | None = None  # the user's or role's AIDA.../AROA... id

    @property
    def user_id(self) -> str | None:
        """The caller's ``aws:userid`` as AWS gives it: a user's unique id, a role session's
        ``role-id:session-name``, the account id for the root; None for a service."""
        caller = self.principal
        if caller.kind == "root":
            return caller.account
        if self.unique_id is None:
            return None
        if caller.kind == "assumed-role":
            return f"{self.unique_id}:{caller.arn.rsplit('/', 1)[-1]}"
        return self.unique_id


def bump_generation(conn: sqlite3.Connection) -> None:
    """Invalidate every process's cached identities (call inside the writing transaction)."""
    conn.execute(
        "INSERT INTO meta(name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
        (ACCESS_GEN, str(secrets.randbits(62)).encode()),
    )


def principals_named(conn: sqlite3.Connection, account: str, kind: str, name: str) -> list[str]:
    """The ARNs of `account`'s users (or roles, `kind`) called `name` in any case, on any
    path: one at most in a store made since names are unique, as in IAM. Matched by SQLite
    (LIKE ignores ASCII case, and IAM names are ASCII) over the account's rows, not in
    Python row by row (a role session's every call did that: 8 ms a call with 2,000 roles;
    diff review)."""
    prefix = _like_escape(f"arn:aws:iam::{account}:{kind}/")
    escaped = _like_escape(name)
    return [
        str(arn)
        for (arn,) in conn.execute(
            "SELECT arn FROM principals WHERE account=? AND kind=? "
            "AND (arn LIKE ? ESCAPE '\\' OR arn LIKE ? ESCAPE '\\')",
            (account, kind, prefix + escaped, prefix + "%/" + escaped),
        )
    ]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def policy_names(conn: sqlite3.Connection, arn: str) -> list[str]:
    """The names of a principal's identity-policy rows, in order (what its row names)."""
    return [
        str(n)
        for (n,) in conn.execute(
            "SELECT name FROM identity_policies WHERE principal=? ORDER BY name", (arn,)
        )
    ]


def check_policy_names(arn: str, body: Mapping[str, Any], names: list[str]) -> None:
    """Each policy row is authenticated alone; the set is in the principal's authenticated row
    (``PolicyNames``): rows that are not the ones it names were deleted, added or renamed
    outside the KMS, and are refused (the caller's access, or a change that would write the
    tampered set into a new authentic row)."""
    if body.get("PolicyNames") != names:
        raise TamperedStoreError(
            f"the identity policies of {arn!r} are not the ones its authenticated row names "
            "(a policy row was deleted, added or renamed outside the KMS): refused, and "
            "nothing was changed; restore the store from a backup"
        )


#: An SQL expression (two parameters: the identity ARN twice) whose value changes whenever the
#: principal's row or any of its identity-policy rows changes, appears or goes: their MACs,
#: each bound to its row's table, key and text (`_rows`).
IDENTITY_STAMP = (
    "(SELECT ifnull(group_concat(hex(mac)), '') FROM (SELECT mac FROM principals WHERE arn=? "
    "UNION ALL SELECT mac FROM (SELECT mac FROM identity_policies WHERE principal=? "
    "ORDER BY name)))"
)

_CACHE_LIMIT = 4096


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Bounded plain-dict caches (cheaper than an LRU on the per-call path): a full cache is
    emptied and refilled by the calls that follow."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


class AccessCache:
    """Parsed policies by text, callers by ARN, identities by ARN under the access generation."""

    def __init__(self, row_key: bytes) -> None:
        self._row_key = row_key
        self._policies: dict[tuple[str, bool], Policy] = {}
        self._principals: dict[str, Principal] = {}
        self._identities: dict[str, tuple[str, Identity]] = {}
        self._second = -1
        self._iso = ""
        #: Allowed decisions by (caller, key, action), with what they were made from: see
        #: `decided` and `remember_decision`.
        self._decisions: dict[tuple[str, str, str], tuple[Any, ...]] = {}

    def decided(
        self,
        caller: str,
        resource: str,
        action: str,
        identity: Identity,
        key_policy: Policy,
        aws_managed: bool,
        values: ConditionContext,
    ) -> Decision | None:
        """The decision an earlier identical evaluation made, if still valid.

        `authorize` is a pure function of the policies, the request's caller, action and
        resource, and the condition values it reads. A decision is reused only for the same
        caller, key and action, the very same identity and key-policy objects (both are
        replaced when anything in them changes: the identity cache by the access generation,
        the policy cache by the policy's text), and equal values for every condition key the
        earlier evaluation read. Only decisions that policies allowed are kept, so grants
        (consulted only when policies do not allow) never enter into it."""
        memo = self._decisions.get((caller, resource, action))
        if (
            memo is None
            or memo[0] is not identity
            or memo[1] is not key_policy
            or memo[2] != aws_managed
        ):
            return None
        for name, value in memo[3]:
            if values.get(name) != value:
                return None
        decision: Decision = memo[4]
        return decision

    def remember_decision(
        self,
        caller: str,
        resource: str,
        action: str,
        identity: Identity,
        key_policy: Policy,
        aws_managed: bool,
        reads: list[tuple[str, Any]],
        decision: Decision,
    ) -> None:
        _remember(
            self._decisions,
            (caller, resource, action),
            # each name once (several statements often test the same condition key)
            (identity, key_policy, aws_managed, tuple(dict(reads).items()), decision),
        )

    def policy(self, text: str, *, resource_policy: bool) -> Policy:
        """A stored policy, parsed once (it was validated when it was stored)."""
        hit = self._policies.get((text, resource_policy))
        if hit is None:
            hit = parse_policy(text, resource_policy=resource_policy)
            _remember(self._policies, (text, resource_policy), hit)
        return hit

    def iso_time(self, now: float) -> str:
        """``aws:CurrentTime`` for `now`, formatted once per second."""
        second = int(now)
        if second != self._second:
            self._second, self._iso = second, iso_time(now)
        return self._iso

    def principal(self, arn: str) -> Principal:
        hit = self._principals.get(arn)
        if hit is None:
            hit = parse_principal(arn)
            _remember(self._principals, arn, hit)
        return hit

    def identity(
        self, conn: sqlite3.Connection, caller: Principal, stamp: str | None = None
    ) -> Identity:
        """The caller's stored tags and identity policies (none for the root or a service).

        Reused while the rows it was read from are unchanged: its `stamp` is the MACs of the
        caller's principal row and identity-policy rows (`IDENTITY_STAMP`), which any change
        to them changes; `stamp` is given when the caller already read it in this transaction.
        (Not the access generation, a number outside every MAC: an editor of the file who put
        an old one back made a running process keep a deleted Deny policy in force.)"""
        if caller.kind in ("root", "service"):  # nothing stored: one object per caller
            hit = self._identities.get(caller.arn)
            if hit is None:
                hit = ("", self._load_identity(conn, caller))
                _remember(self._identities, caller.arn, hit)
            return hit[1]
        if stamp is None:
            arn = caller.identity_arn
            stamp = str(conn.execute(f"SELECT {IDENTITY_STAMP}", (arn, arn)).fetchone()[0])
        hit = self._identities.get(caller.arn)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        identity = self._load_identity(conn, caller)
        _remember(self._identities, caller.arn, (stamp, identity))
        return identity

    def _load_identity(self, conn: sqlite3.Connection, caller: Principal) -> Identity:
        if caller.kind in ("root", "service"):
            return Identity(caller, True)
        arn = caller.identity_arn
        row = conn.execute("SELECT body, mac FROM principals WHERE arn=?", (arn,)).fetchone()
        if row is None:
            return Identity(caller, False)
        body = self._authentic(row[0], row[1], "principals", arn)
        policies = []
        for name, text, mac in conn.execute(
            "SELECT name, body, mac FROM identity_policies WHERE principal=? ORDER BY name",
            (arn,),
        ):
            doc = self._authentic(text, mac, "identity_policies", f"{arn}|{name}")
            policies.append((str(name), self.policy(str(doc["Document"]), resource_policy=False)))
        check_policy_names(arn, body, [name for name, _ in policies])
        tags = body.get("Tags") or {}
        unique_id = body.get("Id")
        return Identity(
            caller,
            True,
            dict(tags),
            tuple(policies),
            unique_id if isinstance(unique_id, str) else None,
        )

    def _authentic(self, text: object, mac: object, table: str, ident: str) -> dict[str, Any]:
        if isinstance(text, str) and _rows.check_record(self._row_key, table, ident, text, mac):
            parsed = json.loads(text)
            if isinstance(parsed, dict):
                return parsed
        raise TamperedStoreError(
            f"the stored {table.replace('_', ' ')} row {ident!r} fails authentication under "
            "the root key: it was changed outside the KMS; restore the store from a backup"
        )

    def grants(
        self, conn: sqlite3.Connection, region: str, key_id: str, grantees: Iterable[str]
    ) -> list[GrantView]:
        """The grants of a key whose grantee is one of `grantees` (authenticated rows)."""
        out: list[GrantView] = []
        for grantee in dict.fromkeys(grantees):
            for gid, text, mac in conn.execute(
                "SELECT grant_id, body, mac FROM grants WHERE region=? AND key_id=? AND grantee=?",
                (region, key_id, grantee),
            ):
                body = self._authentic(text, mac, "grants", str(gid))
                out.append(grant_view(body))
        return out


def grant_view(body: Mapping[str, Any]) -> GrantView:
    """A stored grant (its ListGrants entry) as the evaluator sees it."""
    constraints = body.get("Constraints") or {}
    return GrantView(
        grant_id=str(body["GrantId"]),
        grantee=str(body.get("GranteePrincipal") or body["GranteeServicePrincipal"]),
        operations=frozenset(body["Operations"]),
        context_equals=constraints.get("EncryptionContextEquals"),
        context_subset=constraints.get("EncryptionContextSubset"),
        source_arn=constraints.get("SourceArn"),
    )


_MISSING: Any = object()


class ConditionContext(Mapping[str, Any]):
    """The condition context of one request, computed only where a statement asks.

    Most policies test one or two condition keys; building every value of every request
    (the encryption context under lower-cased names, tags, ...) cost more than deciding.
    `base` holds the plain values; the rest are looked up on demand, with AWS's
    case-insensitive key names (`get` takes lower-case names, as the evaluator passes them).
    Iterating materializes everything (for explanations and tests)."""

    __slots__ = ("_aliases", "_base", "_ctx", "_lctx", "_ptags", "_reads", "_rtags")

    def __init__(
        self,
        base: dict[str, Any],
        enc_context: Mapping[str, str] | None = None,
        principal_tags: Mapping[str, str] | None = None,
        resource_tags: Mapping[str, str] | None = None,
        aliases: Callable[[], list[str]] | None = None,
    ) -> None:
        self._base = base
        self._ctx = enc_context or None
        self._lctx: dict[str, Any] | None = None
        self._ptags = principal_tags or None
        self._rtags = resource_tags or None
        self._aliases = aliases
        #: (name, value) of every lookup, once `record` was called (`AccessCache.decided`).
        self._reads: list[tuple[str, Any]] | None = None

    def record(self) -> list[tuple[str, Any]]:
        """Record every lookup from now on; the list they are appended to."""
        self._reads = []
        return self._reads

    def get(self, name: str, default: Any = None) -> Any:
        v = self._get(name, default)
        if self._reads is not None:
            self._reads.append((name, v))
        return v

    def _get(self, name: str, default: Any) -> Any:
        v = self._base.get(name, _MISSING)
        if v is not _MISSING:
            return v
        if name.startswith("kms:encryptioncontext"):
            if self._ctx is None:
                return default
            if name == "kms:encryptioncontextkeys":
                return list(self._ctx)
            if name.startswith("kms:encryptioncontext:"):
                if self._lctx is None:
                    self._lctx = _by_lower_key(self._ctx)
                return self._lctx.get(name[22:], default)
            return default
        if name.startswith("aws:principaltag/"):
            return _tag(self._ptags, name[17:], default)
        if name.startswith("aws:resourcetag/"):
            return _tag(self._rtags, name[16:], default)
        if name == "kms:resourcealiases" and self._aliases is not None:
            found = self._base[name] = self._aliases()
            return found
        return default

    def _all(self) -> dict[str, Any]:
        out = dict(self._base)
        if self._ctx is not None:
            out.update(encryption_context_values(self._ctx))
        out.update(tag_values("aws:principaltag/", self._ptags or {}))
        out.update(tag_values("aws:resourcetag/", self._rtags or {}))
        if self._aliases is not None and "kms:resourcealiases" not in out:
            out["kms:resourcealiases"] = self.get("kms:resourcealiases")
        return out

    def __getitem__(self, name: str) -> Any:
        v = self._get(name, _MISSING)
        if v is _MISSING:
            raise KeyError(name)
        return v

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _tag(tags: Mapping[str, str] | None, key: str, default: Any) -> Any:
    if not tags:
        return default
    for k, v in tags.items():
        if k.lower() == key:
            return v
    return default


def iso_time(now: float) -> str:
    """``aws:CurrentTime`` (ISO 8601, UTC)."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encryption_context_values(ctx: Mapping[str, str] | None) -> dict[str, Any]:
    """``kms:EncryptionContext:<k>`` and ``kms:EncryptionContextKeys`` for a request."""
    if not ctx:
        return {}
    values: dict[str, Any] = {
        f"kms:encryptioncontext:{k}": v for k, v in _by_lower_key(ctx).items()
    }
    values["kms:encryptioncontextkeys"] = list(ctx)
    return values


def _by_lower_key(ctx: Mapping[str, str]) -> dict[str, Any]:
    """``kms:EncryptionContext:<k>``'s value for each lower-cased key `k`: the pair's value, or
    the list of every value when keys differ only in case (``stage``, ``STAGE``). The condition
    key ignores case, as AWS documents; keeping only the last such pair let a caller slip past
    a Deny on ``stage = Restricted`` by adding ``Stage`` after it (review). A multivalued value
    matches a positive operator when any value does and a negated one when none does
    (`conditions`), so a Deny on either spelling's value applies."""
    out: dict[str, Any] = {}
    for k, v in ctx.items():
        key = k.lower()
        if key not in out:
            out[key] = v
        elif isinstance(out[key], list):
            out[key].append(v)
        else:
            out[key] = [out[key], v]
    return out


def tag_values(prefix: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """``aws:ResourceTag/<k>`` / ``aws:PrincipalTag/<k>`` / ``aws:RequestTag/<k>`` values."""
    return {f"{prefix}{k.lower()}": v for k, v in tags.items()}
