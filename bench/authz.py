"""Microseconds per `authorize` call: a 20-statement key policy, 5 IAM policies on the caller
and 100 grants on the key (most for other grantees or operations).

Three requests: allowed through the key policy's delegation to IAM (the common case), allowed
only by the last matching grant (every statement and grant examined), and denied (likewise).
``--json`` prints one object for scripts: `authz_evaluator_us_per_call`, the worst case of
the pure decision (bench/kms.py reports it under the same name; its `authz_us_per_call` is
another figure: what enforcement adds to a whole service call).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envelope.service.access import (
    GrantView,
    Policy,
    Request,
    authorize,
    parse_policy,
    parse_principal,
)

A = "111122223333"
KEY = f"arn:aws:kms:us-east-1:{A}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CALLER = f"arn:aws:sts::{A}:assumed-role/LakeJob/run-42"
ACTIONS = ["kms:Encrypt", "kms:ReEncrypt*", "kms:DescribeKey", "kms:CreateGrant", "kms:Sign"]


def key_policy() -> Policy:
    statements = [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{A}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "DenyOutsideLake",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "forbidden"}},
        },
    ]
    for i in range(18):
        statements.append(
            {
                "Sid": f"Team{i}",
                "Effect": "Allow",
                "Principal": {
                    "AWS": [f"arn:aws:iam::{A}:role/Team{i}", f"arn:aws:iam::{A}:user/u{i}"]
                },
                "Action": [ACTIONS[i % len(ACTIONS)], "kms:GenerateDataKey*"],
                "Resource": "*",
                "Condition": {"StringLike": {"kms:EncryptionContext:team": f"team{i}-*"}},
            }
        )
    return parse_policy(
        json.dumps({"Version": "2012-10-17", "Statement": statements}), resource_policy=True
    )


def iam_policies() -> list[tuple[str, Policy]]:
    out = []
    for i in range(5):
        statements = [
            {
                "Sid": "Other",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": "arn:aws:s3:::lake/*",
            },
            {
                "Sid": "Gen",
                "Effect": "Allow",
                "Action": "kms:GenerateDataKey",
                "Resource": f"arn:aws:kms:*:{A}:key/*",
                "Condition": {
                    "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["purpose", "team"]}
                },
            },
        ]
        if i == 4:
            statements.append(
                {"Sid": "Read", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY}
            )
        out.append(
            (
                f"policy{i}",
                parse_policy(json.dumps({"Statement": statements}), resource_policy=False),
            )
        )
    return out


def grants() -> list[GrantView]:
    out = []
    for i in range(100):
        grantee = (
            f"arn:aws:iam::{A}:role/Other{i % 7}" if i % 10 else f"arn:aws:iam::{A}:role/LakeJob"
        )
        ops = frozenset({"Encrypt", "GenerateDataKey"}) if i != 99 else frozenset({"Verify"})
        out.append(
            GrantView(f"g{i:03d}", grantee, ops, {"purpose": "lake"} if i % 3 else None, None)
        )
    out.append(
        GrantView(
            "g-last",
            f"arn:aws:iam::{A}:role/LakeJob",
            frozenset({"Verify"}),
            None,
            {"purpose": "lake"},
        )
    )
    return out[-100:]


def measure(
    request: Request, kp: Policy, iam: list[tuple[str, Policy]], gs: list[GrantView], n: int
) -> tuple[float, bool]:
    decision = authorize(request, key_policy=kp, iam_policies=iam, grants=gs)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            authorize(request, key_policy=kp, iam_policies=iam, grants=gs)
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6, decision.allowed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("-n", type=int, default=20000, help="decisions timed per case (20000)")
    args = parser.parse_args()
    kp, iam, gs = key_policy(), iam_policies(), grants()
    who = parse_principal(CALLER)
    ctx = {"purpose": "lake", "team": "team3-a"}
    values = {
        "kms:encryptioncontext:purpose": "lake",
        "kms:encryptioncontext:team": "team3-a",
        "kms:encryptioncontextkeys": ["purpose", "team"],
        "kms:calleraccount": A,
        "aws:principalarn": CALLER,
    }
    cases = {
        "allowed_by_iam": Request("kms:Decrypt", who, KEY, A, values, ctx),
        "allowed_by_last_grant": Request("kms:Verify", who, KEY, A, values, ctx),
        "denied": Request("kms:ScheduleKeyDeletion", who, KEY, A, values, ctx),
    }
    results = {}
    for name, request in cases.items():
        us, allowed = measure(request, kp, iam, gs, args.n)
        results[name] = {"us_per_call": round(us, 2), "allowed": allowed}
    worst = max(r["us_per_call"] for r in results.values())
    if args.json:
        print(json.dumps({"authz_evaluator_us_per_call": worst, "cases": results}))
        return
    print("authorize: 20-statement key policy, 5 IAM policies, 100 grants")
    for name, r in results.items():
        print(f"  {name:24s} {r['us_per_call']:7.2f} us/call  (allowed={r['allowed']})")
    print(f"  worst                    {worst:7.2f} us/call")


if __name__ == "__main__":
    main()
