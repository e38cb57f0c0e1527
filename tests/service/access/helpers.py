"""Shared builders for the access tests: accounts, callers, keys and policy JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from envelope.service.access import GrantView, Policy, Principal, parse_policy, parse_principal

A = "111122223333"
B = "444455556666"
KEY = f"arn:aws:kms:us-east-1:{A}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_KEY = f"arn:aws:kms:us-east-1:{A}:key/0987dcba-09fe-87dc-65ba-ab0987654321"

ROOT_A = f"arn:aws:iam::{A}:root"
ALICE = f"arn:aws:iam::{A}:user/Alice"
BOB = f"arn:aws:iam::{A}:user/Bob"
READER = f"arn:aws:iam::{A}:role/Reader"
READER_S1 = f"arn:aws:sts::{A}:assumed-role/Reader/job-1"
READER_S2 = f"arn:aws:sts::{A}:assumed-role/Reader/job-2"
ROOT_B = f"arn:aws:iam::{B}:root"
CAROL_B = f"arn:aws:iam::{B}:user/Carol"
SERVICE = "envelope.amazonaws.com"
OTHER_SERVICE = "s3.amazonaws.com"


def stmt(effect: str = "Allow", **members: Any) -> dict[str, Any]:
    """A statement; keyword names are the AWS member names."""
    out: dict[str, Any] = {"Effect": effect}
    out.update(members)
    if "Action" not in out and "NotAction" not in out:
        out["Action"] = "kms:*"
    if "Resource" not in out and "NotResource" not in out:
        out["Resource"] = "*"
    return out


def aws(*arns: str) -> dict[str, Any]:
    return {"AWS": list(arns) if len(arns) > 1 else arns[0]}


def key_policy(*statements: dict[str, Any]) -> Policy:
    return parse_policy(
        json.dumps({"Version": "2012-10-17", "Statement": list(statements)}), resource_policy=True
    )


def iam_policy(*statements: dict[str, Any]) -> Policy:
    return parse_policy(
        json.dumps({"Version": "2012-10-17", "Statement": list(statements)}), resource_policy=False
    )


def default_policy(account: str = A) -> Policy:
    """The KMS default key policy: the account root may do everything (delegation to IAM)."""
    return key_policy(
        stmt(Sid="Enable IAM User Permissions", Principal=aws(f"arn:aws:iam::{account}:root"))
    )


def caller(arn: str) -> Principal:
    return parse_principal(arn)


def grant(
    grant_id: str,
    grantee: str,
    *operations: str,
    equals: Mapping[str, str] | None = None,
    subset: Mapping[str, str] | None = None,
    source_arn: str | None = None,
) -> GrantView:
    return GrantView(grant_id, grantee, frozenset(operations), equals, subset, source_arn)
