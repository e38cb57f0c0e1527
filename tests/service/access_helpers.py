"""Shared builders for the service-level access tests: principals, policy JSON, store dumps."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from envelope.service import KeyService
from envelope.service.errors import AccessDeniedException

A = "000000000000"  # the service's own account (the `svc` fixture's default)
B = "111111111111"  # another account in the same store
ROOT_A = f"arn:aws:iam::{A}:root"
ROOT_B = f"arn:aws:iam::{B}:root"
VIA = "envelope.us-east-1.amazonaws.com"

#: Rows that are audit bookkeeping: they change on every call, accepted or refused.
_BOOKKEEPING_META = frozenset({"seal_counter"})


def stmt(effect: str = "Allow", **members: Any) -> dict[str, Any]:
    """A policy statement; keyword names are the AWS member names."""
    out: dict[str, Any] = {"Effect": effect, **members}
    if "Action" not in out and "NotAction" not in out:
        out["Action"] = "kms:*"
    if "Resource" not in out and "NotResource" not in out:
        out["Resource"] = "*"
    return out


def aws(*arns: str) -> dict[str, Any]:
    return {"AWS": list(arns) if len(arns) > 1 else arns[0]}


def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def root_stmt(account: str = A) -> dict[str, Any]:
    """The default key policy's statement: the account root may do everything (IAM delegation)."""
    return stmt(Sid="Enable IAM User Permissions", Principal=aws(f"arn:aws:iam::{account}:root"))


def user(svc: KeyService, name: str, account: str = A, **kw: Any) -> str:
    """An IAM user created by its account root; returns its ARN."""
    out = svc.create_user(user_name=name, principal=f"arn:aws:iam::{account}:root", **kw)
    return str(out["User"]["Arn"])


def role(svc: KeyService, name: str, account: str = A, **kw: Any) -> str:
    out = svc.create_role(role_name=name, principal=f"arn:aws:iam::{account}:root", **kw)
    return str(out["Role"]["Arn"])


def session(role_arn: str, name: str = "s1") -> str:
    """The assumed-role session principal of a role."""
    account = role_arn.split(":")[4]
    return f"arn:aws:sts::{account}:assumed-role/{role_arn.rsplit('/', 1)[1]}/{name}"


def attach(svc: KeyService, arn: str, *statements: dict[str, Any], name: str = "p") -> None:
    """Attach an identity policy to a user or role (as its account root)."""
    account = arn.split(":")[4]
    svc.put_principal_policy(
        arn=arn,
        policy_name=name,
        policy_document=doc(*statements),
        principal=f"arn:aws:iam::{account}:root",
    )


def dump(svc: KeyService) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the store except the audit log and its bookkeeping, in a stable order."""
    conn = sqlite3.connect(str(svc.store.path))
    try:
        tables = [
            str(r[0])
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        out: dict[str, list[tuple[Any, ...]]] = {}
        for t in tables:
            if t in ("audit", "seals"):
                continue
            rows = conn.execute(f'SELECT * FROM "{t}"').fetchall()
            if t == "meta":
                rows = [r for r in rows if r[0] not in _BOOKKEEPING_META]
            out[t] = sorted(rows, key=repr)
        return out
    finally:
        conn.close()


def last_seq(svc: KeyService) -> int:
    tail = svc.audit_tail(1)
    return int(tail[0]["seq"]) if tail else 0  # type: ignore[call-overload]


def assert_denied(
    svc: KeyService, call: Callable[[], Any], principal: str, account: str
) -> AccessDeniedException:
    """`call` raises AccessDeniedException, changes no row, and leaves exactly one denial
    record naming the caller, its account and a reason."""
    before, seq = dump(svc), last_seq(svc)
    with pytest.raises(AccessDeniedException) as info:
        call()
    assert dump(svc) == before, "a denied call changed the store"
    records = [r for r in svc.audit_tail(5) if int(r["seq"]) > seq]  # type: ignore[call-overload]
    assert len(records) == 1, records
    rec = records[0]
    assert rec["decision"] == "denied"
    assert rec["outcome"] == "error"
    assert rec["error_code"] == "AccessDeniedException"
    assert rec["principal"] == principal
    assert rec["account"] == account
    assert isinstance(rec["reason"], str) and rec["reason"]
    assert f"User: {principal} is not authorized to perform:" in str(info.value)
    return info.value
