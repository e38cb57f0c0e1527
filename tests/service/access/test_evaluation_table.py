"""The evaluation table: each row is one AWS rule, checked through `authorize`.

Rows name the rule they check in their id. Structural rows cover who may use a key (key
policy, IAM delegation, cross-account, AWS managed keys, Deny, Not* elements, wildcards,
services, sessions, grants); condition rows cover every operator with a present key, a missing
key, its IfExists form and multivalued keys under ForAnyValue/ForAllValues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from envelope.service.access import GrantView, Policy, Request, authorize

from .helpers import (
    ALICE,
    BOB,
    CAROL_B,
    KEY,
    OTHER_KEY,
    OTHER_SERVICE,
    READER,
    READER_S1,
    READER_S2,
    ROOT_A,
    ROOT_B,
    SERVICE,
    A,
    B,
    aws,
    caller,
    default_policy,
    grant,
    iam_policy,
    key_policy,
    stmt,
)


@dataclass(frozen=True)
class Case:
    caller: str
    allowed: bool
    key_policy: Policy | None = None
    iam: tuple[Policy, ...] = ()
    action: str = "kms:Decrypt"
    resource: str = KEY
    account: str | None = A
    values: dict[str, Any] = field(default_factory=dict)
    grants: tuple[GrantView, ...] = ()
    context: dict[str, str] | None = None
    managed: bool = False
    matched: str | None = "-"  # "-": not checked
    reason: str | None = None  # a substring the reason must contain


BUCKET_ARN = f"arn:aws:s3:us-east-1:{A}:accesspoint/lake"
IAM_DECRYPT = iam_policy(stmt(Sid="Dec", Action="kms:Decrypt"))
IAM_ALL = iam_policy(stmt(Sid="All", Action="kms:*"))
IAM_DENY_DECRYPT = iam_policy(stmt("Deny", Sid="NoDec", Action="kms:Decrypt"))
ONLY_ALICE = key_policy(stmt(Sid="Alice", Principal=aws(ALICE)))
ACCOUNT_B_TOO = key_policy(
    stmt(Sid="Owner", Principal=aws(ROOT_A)), stmt(Sid="PartnerB", Principal=aws(B))
)
CAROL_DIRECT = key_policy(
    stmt(Sid="Owner", Principal=aws(ROOT_A)), stmt(Sid="Carol", Principal=aws(CAROL_B))
)
EVERYONE = key_policy(stmt(Sid="Anyone", Principal="*"))
IAM_KEY_ONLY = iam_policy(stmt(Sid="ThisKey", Action="kms:Decrypt", Resource=KEY))
IAM_OTHER_KEY = iam_policy(stmt(Sid="Other", Action="kms:Decrypt", Resource=OTHER_KEY))
MANAGED = key_policy(
    stmt(
        Sid="ViaEnvelope",
        Principal="*",
        Action=["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
        Condition={"StringEquals": {"kms:CallerAccount": A, "kms:ViaService": SERVICE}},
    )
)
VIA = {"kms:calleraccount": A, "kms:viaservice": SERVICE}


def row(rule: str, case: Case) -> Any:
    return pytest.param(case, id=rule)


STRUCTURE = [
    # -- the key policy is the root of trust ----------------------------------------------------
    row(
        "default-policy/root-allowed-by-key-policy",
        Case(ROOT_A, True, default_policy(), matched="key-policy:Enable IAM User Permissions"),
    ),
    row(
        "default-policy/delegates-to-iam:user-with-iam-allow",
        Case(ALICE, True, default_policy(), (IAM_DECRYPT,), matched="iam:p0:Dec"),
    ),
    row(
        "default-policy/delegates-to-iam:user-without-iam-denied",
        Case(ALICE, False, default_policy(), reason="no identity-based policy allows"),
    ),
    row(
        "default-policy/iam-allows-other-action-only",
        Case(ALICE, False, default_policy(), (IAM_DECRYPT,), action="kms:Encrypt"),
    ),
    row(
        "default-policy/session-uses-role-iam",
        Case(READER_S1, True, default_policy(), (IAM_DECRYPT,)),
    ),
    row(
        "custom-policy/root-omitted-cannot-use-key",
        Case(ROOT_A, False, ONLY_ALICE, reason="no resource-based policy allows the kms:Decrypt"),
    ),
    row(
        "custom-policy/iam-alone-not-enough-without-delegation",
        Case(BOB, False, ONLY_ALICE, (IAM_ALL,), reason="no resource-based policy"),
    ),
    row(
        "custom-policy/named-user-needs-no-iam",
        Case(ALICE, True, ONLY_ALICE, matched="key-policy:Alice"),
    ),
    row(
        "custom-policy/role-arn-matches-its-sessions",
        Case(READER_S1, True, key_policy(stmt(Sid="R", Principal=aws(READER)))),
    ),
    row(
        "custom-policy/session-arn-matches-only-that-session",
        Case(READER_S2, False, key_policy(stmt(Principal=aws(READER_S1)))),
    ),
    row(
        "custom-policy/exact-session-arn-allowed",
        Case(READER_S1, True, key_policy(stmt(Principal=aws(READER_S1)))),
    ),
    row("custom-policy/user-arn-does-not-match-other-user", Case(BOB, False, ONLY_ALICE)),
    row(
        "custom-policy/account-id-same-as-root-arn-for-root",
        Case(ROOT_A, True, key_policy(stmt(Principal=aws(A)))),
    ),
    row(
        "custom-policy/account-id-delegates-for-users",
        Case(ALICE, True, key_policy(stmt(Principal=aws(A))), (IAM_DECRYPT,)),
    ),
    row(
        "custom-policy/star-principal-allows-same-account-without-iam",
        Case(BOB, True, EVERYONE, matched="key-policy:Anyone"),
    ),
    row("no-key-policy/key-request-denied-even-for-root", Case(ROOT_A, False, None, (IAM_ALL,))),
    # -- cross-account: both sides must allow --------------------------------------------------
    row(
        "cross-account/key-policy-names-account+iam-allows",
        Case(
            CAROL_B, True, ACCOUNT_B_TOO, (IAM_DECRYPT,), matched="key-policy:PartnerB,iam:p0:Dec"
        ),
    ),
    row(
        "cross-account/key-policy-names-account-no-iam-denied",
        Case(CAROL_B, False, ACCOUNT_B_TOO, reason="no identity-based policy"),
    ),
    row(
        "cross-account/iam-allows-key-policy-silent-denied",
        Case(CAROL_B, False, default_policy(), (IAM_ALL,), reason="no resource-based policy"),
    ),
    row("cross-account/key-policy-names-user-no-iam-denied", Case(CAROL_B, False, CAROL_DIRECT)),
    row(
        "cross-account/key-policy-names-user+iam-allows",
        Case(CAROL_B, True, CAROL_DIRECT, (IAM_DECRYPT,), matched="key-policy:Carol,iam:p0:Dec"),
    ),
    row("cross-account/other-root-needs-no-iam", Case(ROOT_B, True, ACCOUNT_B_TOO)),
    row("cross-account/star-principal-still-needs-caller-iam", Case(CAROL_B, False, EVERYONE)),
    row("cross-account/star-principal+iam-allows", Case(CAROL_B, True, EVERYONE, (IAM_KEY_ONLY,))),
    row(
        "cross-account/iam-resource-must-cover-key",
        Case(CAROL_B, False, ACCOUNT_B_TOO, (IAM_OTHER_KEY,)),
    ),
    # -- AWS managed keys ---------------------------------------------------------------------
    row(
        "aws-managed/same-account-via-service-allowed",
        Case(ALICE, True, MANAGED, values=VIA, managed=True),
    ),
    row(
        "aws-managed/same-account-without-via-service-denied",
        Case(ALICE, False, MANAGED, values={"kms:calleraccount": A}, managed=True),
    ),
    row(
        "aws-managed/other-account-always-denied-even-star-and-iam",
        Case(
            CAROL_B,
            False,
            EVERYONE,
            (IAM_ALL,),
            values=VIA,
            managed=True,
            reason="AWS managed keys cannot be used from another account",
        ),
    ),
    row(
        "aws-managed/other-account-denied-even-with-grant",
        Case(CAROL_B, False, MANAGED, managed=True, grants=(grant("g1", CAROL_B, "Decrypt"),)),
    ),
    # -- explicit Deny beats Allow everywhere ---------------------------------------------------
    row(
        "deny-beats-allow/in-key-policy",
        Case(
            ALICE,
            False,
            key_policy(
                stmt(Principal=aws(ALICE)),
                stmt("Deny", Sid="NoDec", Principal=aws(ALICE), Action="kms:Decrypt"),
            ),
            matched="key-policy:NoDec",
            reason="explicit deny in a resource-based policy",
        ),
    ),
    row(
        "deny-beats-allow/in-iam",
        Case(
            ALICE,
            False,
            ONLY_ALICE,
            (IAM_ALL, IAM_DENY_DECRYPT),
            matched="iam:p1:NoDec",
            reason="explicit deny in an identity-based policy",
        ),
    ),
    row(
        "deny-beats-allow/against-grant-key-policy-deny",
        Case(
            ALICE,
            False,
            key_policy(stmt("Deny", Principal="*", Action="kms:Decrypt")),
            grants=(grant("g1", ALICE, "Decrypt"),),
        ),
    ),
    row(
        "deny-beats-allow/against-grant-iam-deny",
        Case(
            ALICE,
            False,
            default_policy(),
            (IAM_DENY_DECRYPT,),
            grants=(grant("g1", ALICE, "Decrypt"),),
        ),
    ),
    row(
        "deny-beats-allow/account-principal-in-deny-matches-every-principal",
        Case(ALICE, False, key_policy(stmt(Principal=aws(ALICE)), stmt("Deny", Principal=aws(A)))),
    ),
    row(
        "deny-beats-allow/deny-for-other-account-does-not-apply",
        Case(ALICE, True, key_policy(stmt(Principal=aws(ALICE)), stmt("Deny", Principal=aws(B)))),
    ),
    row(
        "deny-beats-allow/deny-with-failing-condition-does-not-apply",
        Case(
            ALICE,
            True,
            key_policy(
                stmt(Principal=aws(ALICE)),
                stmt("Deny", Principal="*", Condition={"Bool": {"aws:SecureTransport": "false"}}),
            ),
            values={"aws:securetransport": True},
        ),
    ),
    # -- NotAction / NotPrincipal / NotResource ------------------------------------------------
    row(
        "not-action/allow-everything-but-listed:other-action-allowed",
        Case(
            ALICE, True, key_policy(stmt(Principal=aws(ALICE), NotAction="kms:ScheduleKeyDeletion"))
        ),
    ),
    row(
        "not-action/allow-everything-but-listed:listed-action-denied",
        Case(
            ALICE,
            False,
            key_policy(stmt(Principal=aws(ALICE), NotAction="kms:ScheduleKeyDeletion")),
            action="kms:ScheduleKeyDeletion",
        ),
    ),
    row(
        "not-action/deny-all-but-decrypt:decrypt-allowed",
        Case(
            ALICE,
            True,
            key_policy(
                stmt(Principal=aws(ALICE)), stmt("Deny", Principal="*", NotAction="kms:Decrypt")
            ),
        ),
    ),
    row(
        "not-action/deny-all-but-decrypt:encrypt-denied",
        Case(
            ALICE,
            False,
            key_policy(
                stmt(Principal=aws(ALICE)), stmt("Deny", Principal="*", NotAction="kms:Decrypt")
            ),
            action="kms:Encrypt",
        ),
    ),
    row(
        # AWS validates the account first: it must be named too, or the Deny applies to it
        "not-principal/deny-all-but-alice-and-her-account:alice-allowed",
        Case(
            ALICE,
            True,
            key_policy(stmt(Principal="*"), stmt("Deny", NotPrincipal=aws(ALICE, ROOT_A))),
        ),
    ),
    row(
        "not-principal/deny-all-but-alice-without-her-account:alice-denied",
        Case(ALICE, False, key_policy(stmt(Principal="*"), stmt("Deny", NotPrincipal=aws(ALICE)))),
    ),
    row(
        "not-principal/deny-all-but-alice-and-her-account:bob-of-that-account-denied",
        Case(
            BOB,
            False,
            key_policy(stmt(Principal="*"), stmt("Deny", NotPrincipal=aws(ALICE, ROOT_A))),
        ),
    ),
    row(
        "not-principal/deny-all-but-alice:bob-denied",
        Case(BOB, False, key_policy(stmt(Principal="*"), stmt("Deny", NotPrincipal=aws(ALICE)))),
    ),
    row(
        "not-principal/allow-all-but-bob:alice-allowed",
        Case(ALICE, True, key_policy(stmt(NotPrincipal=aws(BOB)))),
    ),
    row(
        "not-principal/allow-all-but-bob:bob-denied",
        Case(BOB, False, key_policy(stmt(NotPrincipal=aws(BOB)))),
    ),
    row(
        "not-resource/iam-allows-all-but-key:key-denied",
        Case(ALICE, False, default_policy(), (iam_policy(stmt(NotResource=KEY)),)),
    ),
    row(
        "not-resource/iam-allows-all-but-other-key:key-allowed",
        Case(ALICE, True, default_policy(), (iam_policy(stmt(NotResource=OTHER_KEY)),)),
    ),
    row(
        "resource/iam-specific-key-arn-allowed",
        Case(ALICE, True, default_policy(), (IAM_KEY_ONLY,)),
    ),
    row(
        "resource/iam-wildcard-arn-allowed",
        Case(
            ALICE, True, default_policy(), (iam_policy(stmt(Resource=f"arn:aws:kms:*:{A}:key/*")),)
        ),
    ),
    row(
        "resource/iam-wildcard-arn-other-account-does-not-match",
        Case(
            ALICE, False, default_policy(), (iam_policy(stmt(Resource=f"arn:aws:kms:*:{B}:key/*")),)
        ),
    ),
    row(
        "resource/matching-is-case-sensitive",
        Case(
            ALICE,
            False,
            default_policy(),
            (iam_policy(stmt(Resource=KEY.replace("1234abcd", "1234ABCD"))),),
        ),
    ),
    # -- action wildcards and case -------------------------------------------------------------
    row(
        "action-wildcard/kms-star",
        Case(ALICE, True, key_policy(stmt(Principal=aws(ALICE))), action="kms:ReEncryptFrom"),
    ),
    row(
        "action-wildcard/star",
        Case(
            ALICE,
            True,
            key_policy(stmt(Principal=aws(ALICE), Action="*")),
            action="kms:CreateGrant",
        ),
    ),
    row(
        "action-wildcard/generate-star-covers-generate-data-key-without-plaintext",
        Case(
            ALICE,
            True,
            key_policy(stmt(Principal=aws(ALICE), Action="kms:Generate*")),
            action="kms:GenerateDataKeyWithoutPlaintext",
        ),
    ),
    row(
        "action-wildcard/generate-star-not-decrypt",
        Case(ALICE, False, key_policy(stmt(Principal=aws(ALICE), Action="kms:Generate*"))),
    ),
    row(
        "action-wildcard/reencrypt-star-covers-reencrypt-to",
        Case(
            ALICE,
            True,
            key_policy(stmt(Principal=aws(ALICE), Action="kms:ReEncrypt*")),
            action="kms:ReEncryptTo",
        ),
    ),
    row(
        "action-wildcard/question-mark-one-character",
        Case(ALICE, True, key_policy(stmt(Principal=aws(ALICE), Action="kms:?ecrypt"))),
    ),
    row(
        "action-case-insensitive/policy-lower-case",
        Case(ALICE, True, key_policy(stmt(Principal=aws(ALICE), Action="KMS:decrypt"))),
    ),
    row(
        "action-case-insensitive/iam-mixed-case",
        Case(ALICE, True, default_policy(), (iam_policy(stmt(Action="kms:DECRYPT")),)),
    ),
    row(
        "action/exact-name-does-not-prefix-match",
        Case(ALICE, False, key_policy(stmt(Principal=aws(ALICE), Action="kms:Decry"))),
    ),
    # -- service principals ---------------------------------------------------------------------
    row(
        "service-principal/named-service-allowed",
        Case(SERVICE, True, key_policy(stmt(Principal={"Service": SERVICE}))),
    ),
    row(
        "service-principal/other-service-denied",
        Case(OTHER_SERVICE, False, key_policy(stmt(Principal={"Service": SERVICE}))),
    ),
    row(
        "service-principal/account-delegation-does-not-cover-services",
        Case(SERVICE, False, default_policy(), (IAM_ALL,)),
    ),
    row("service-principal/star-covers-services", Case(SERVICE, True, EVERYONE)),
    # -- account-level operations: IAM alone ----------------------------------------------------
    row(
        "account-level/root-implicitly-allowed",
        Case(ROOT_A, True, None, action="kms:ListKeys", resource="*", account=None, matched="root"),
    ),
    row(
        "account-level/user-with-iam-allowed",
        Case(
            ALICE,
            True,
            None,
            (iam_policy(stmt(Action="kms:CreateKey")),),
            action="kms:CreateKey",
            resource="*",
            account=None,
        ),
    ),
    row(
        "account-level/user-without-iam-denied",
        Case(
            ALICE,
            False,
            None,
            action="kms:ListKeys",
            resource="*",
            account=None,
            reason="no identity-based policy allows the kms:ListKeys action",
        ),
    ),
    row(
        "account-level/iam-key-resource-does-not-cover-star",
        Case(ALICE, False, None, (IAM_KEY_ONLY,), action="kms:Decrypt", resource="*", account=None),
    ),
    row(
        "account-level/iam-deny-wins",
        Case(
            ALICE,
            False,
            None,
            (IAM_ALL, iam_policy(stmt("Deny", Action="kms:CreateKey"))),
            action="kms:CreateKey",
            resource="*",
            account=None,
        ),
    ),
    # -- grants ---------------------------------------------------------------------------------
    row(
        "grant/allows-its-operation-without-policy",
        Case(
            ALICE,
            True,
            key_policy(stmt(Principal=aws(BOB))),
            grants=(grant("g1", ALICE, "Decrypt"),),
            matched="grant:g1",
        ),
    ),
    row(
        "grant/wrong-operation-denied",
        Case(
            ALICE,
            False,
            key_policy(stmt(Principal=aws(BOB))),
            grants=(grant("g1", ALICE, "Encrypt"),),
        ),
    ),
    row(
        "grant/source-arn-met",
        Case(
            ALICE,
            True,
            key_policy(stmt(Principal=aws(BOB))),
            values={"aws:sourcearn": BUCKET_ARN},
            grants=(grant("g1", ALICE, "Decrypt", source_arn=BUCKET_ARN),),
            matched="grant:g1",
        ),
    ),
    row(
        "grant/source-arn-absent-denied",  # a direct call is made on behalf of no resource
        Case(
            ALICE,
            False,
            key_policy(stmt(Principal=aws(BOB))),
            grants=(grant("g1", ALICE, "Decrypt", source_arn=BUCKET_ARN),),
        ),
    ),
    row(
        "grant/source-arn-other-resource-denied",
        Case(
            ALICE,
            False,
            key_policy(stmt(Principal=aws(BOB))),
            values={"aws:sourcearn": BUCKET_ARN + "-other"},
            grants=(grant("g1", ALICE, "Decrypt", source_arn=BUCKET_ARN),),
        ),
    ),
    row(
        "grant/wrong-grantee-denied",
        Case(
            ALICE,
            False,
            key_policy(stmt(Principal=aws(BOB))),
            grants=(grant("g1", BOB, "Decrypt"),),
        ),
    ),
    row(
        "grant/role-grantee-covers-session",
        Case(READER_S1, True, ONLY_ALICE, grants=(grant("g1", READER, "Decrypt"),)),
    ),
    row(
        "grant/context-equals-exact-allowed",
        Case(
            ALICE,
            True,
            ONLY_ALICE,
            action="kms:Encrypt",
            context={"purpose": "lake"},
            grants=(grant("g1", ALICE, "Encrypt", equals={"purpose": "lake"}),),
        ),
    ),
    row(
        "grant/context-equals-extra-pair-denied",
        Case(
            ALICE,
            False,
            key_policy(stmt(Principal=aws(BOB))),
            action="kms:Encrypt",
            context={"purpose": "lake", "x": "1"},
            grants=(grant("g1", ALICE, "Encrypt", equals={"purpose": "lake"}),),
        ),
    ),
    row(
        "grant/context-equals-missing-context-denied",
        Case(
            ALICE,
            False,
            key_policy(stmt(Principal=aws(BOB))),
            context=None,
            grants=(grant("g1", ALICE, "Decrypt", equals={"purpose": "lake"}),),
        ),
    ),
    row(
        "grant/context-subset-extra-pairs-allowed",
        Case(
            ALICE,
            True,
            key_policy(stmt(Principal=aws(BOB))),
            context={"purpose": "lake", "x": "1"},
            grants=(grant("g1", ALICE, "Decrypt", subset={"purpose": "lake"}),),
        ),
    ),
    row(
        "grant/context-subset-wrong-value-denied",
        Case(
            ALICE,
            False,
            key_policy(stmt(Principal=aws(BOB))),
            context={"purpose": "web"},
            grants=(grant("g1", ALICE, "Decrypt", subset={"purpose": "lake"}),),
        ),
    ),
    row(
        # AWS GrantConstraints: "the key in each key-value pair is not case sensitive, but the
        # value is case sensitive"
        "grant/context-keys-ignore-case",
        Case(
            ALICE,
            True,
            key_policy(stmt(Principal=aws(BOB))),
            context={"Purpose": "lake"},
            grants=(grant("g1", ALICE, "Decrypt", subset={"purpose": "lake"}),),
        ),
    ),
    row(
        "grant/context-values-are-case-sensitive",
        Case(
            ALICE,
            False,
            key_policy(stmt(Principal=aws(BOB))),
            context={"purpose": "Lake"},
            grants=(grant("g1", ALICE, "Decrypt", subset={"purpose": "lake"}),),
        ),
    ),
    row(
        "grant/cross-account-grantee-needs-no-iam",
        Case(CAROL_B, True, default_policy(), grants=(grant("g1", CAROL_B, "Decrypt"),)),
    ),
    row(
        "grant/second-grant-matches-after-non-matching",
        Case(
            ALICE,
            True,
            key_policy(stmt(Principal=aws(BOB))),
            grants=(
                grant("g1", BOB, "Decrypt"),
                grant("g2", ALICE, "Encrypt"),
                grant("g3", ALICE, "Decrypt"),
            ),
            matched="grant:g3",
        ),
    ),
]


# -- condition operators -------------------------------------------------------------------------

MISSING = object()
KEYNAME = "kms:EncryptionContext:Purpose"  # mixed case in the policy; the context is lower-case


def cond(
    rule: str, op: str, policy_value: Any, request_value: Any, allowed: bool, key: str = KEYNAME
) -> Any:
    values = {} if request_value is MISSING else {key.lower(): request_value}
    policy = key_policy(stmt(Principal=aws(ALICE), Condition={op: {key: policy_value}}))
    return row(f"condition/{op}/{rule}", Case(ALICE, allowed, policy, values=values))


T0 = "2030-01-01T00:00:00Z"
T0_DT = datetime(2030, 1, 1, tzinfo=UTC)
T1_DT = datetime(2030, 6, 1, tzinfo=UTC)
TIME = "aws:CurrentTime"
IP = "aws:SourceIp"
NUM = "kms:GrantCount"
ARN = "aws:PrincipalArn"
BOOL = "kms:GrantIsForAWSResource"
KEYS = "kms:EncryptionContextKeys"
B64 = "aGVsbG8="  # b"hello"

CONDITIONS = [
    cond("present-match", "StringEquals", "lake", "lake", True),
    cond("present-no-match-case-sensitive", "StringEquals", "lake", "Lake", False),
    cond("missing-key-false", "StringEquals", "lake", MISSING, False),
    cond("values-or", "StringEquals", ["web", "lake"], "lake", True),
    cond("ifexists-missing-true", "StringEqualsIfExists", "lake", MISSING, True),
    cond("ifexists-present-no-match", "StringEqualsIfExists", "lake", "web", False),
    cond("present-equal-false", "StringNotEquals", "lake", "lake", False),
    cond("present-other-true", "StringNotEquals", "lake", "web", True),
    cond("missing-key-true", "StringNotEquals", "lake", MISSING, True),
    cond("ifexists-missing-true", "StringNotEqualsIfExists", "lake", MISSING, True),
    cond("ifexists-present-equal-false", "StringNotEqualsIfExists", "lake", "lake", False),
    cond("other-case-matches", "StringEqualsIgnoreCase", "LAKE", "lake", True),
    cond("present-no-match", "StringEqualsIgnoreCase", "lake", "web", False),
    cond("missing-key-false", "StringEqualsIgnoreCase", "lake", MISSING, False),
    cond("ifexists-missing-true", "StringEqualsIgnoreCaseIfExists", "lake", MISSING, True),
    cond("other-case-equal-false", "StringNotEqualsIgnoreCase", "LAKE", "lake", False),
    cond("missing-key-true", "StringNotEqualsIgnoreCase", "lake", MISSING, True),
    cond("ifexists-present-other-true", "StringNotEqualsIgnoreCaseIfExists", "lake", "web", True),
    cond("star-matches", "StringLike", "la*", "lake", True),
    cond("question-mark-one-char", "StringLike", "l?ke", "like", True),
    cond("question-mark-not-two", "StringLike", "l?ke", "leeke", False),
    cond("case-sensitive", "StringLike", "la*", "Lake", False),
    cond("missing-key-false", "StringLike", "*", MISSING, False),
    cond("ifexists-missing-true", "StringLikeIfExists", "la*", MISSING, True),
    cond("matching-false", "StringNotLike", "la*", "lake", False),
    cond("missing-key-true", "StringNotLike", "la*", MISSING, True),
    cond("ifexists-present-not-matching-true", "StringNotLikeIfExists", "la*", "web", True),
    cond("string-policy-number-request", "NumericEquals", "5", 5, True, NUM),
    cond("present-no-match", "NumericEquals", 5, 6, False, NUM),
    cond("missing-key-false", "NumericEquals", 5, MISSING, False, NUM),
    cond("ifexists-missing-true", "NumericEqualsIfExists", 5, MISSING, True, NUM),
    cond("request-not-a-number-false", "NumericEquals", 5, "five", False, NUM),
    cond("present-other-true", "NumericNotEquals", 5, 6, True, NUM),
    cond("present-equal-false", "NumericNotEquals", 5, "5", False, NUM),
    cond("missing-key-true", "NumericNotEquals", 5, MISSING, True, NUM),
    cond("less-true", "NumericLessThan", 5, 4, True, NUM),
    cond("equal-false", "NumericLessThan", 5, 5, False, NUM),
    cond("missing-key-false", "NumericLessThan", 5, MISSING, False, NUM),
    cond("ifexists-missing-true", "NumericLessThanIfExists", 5, MISSING, True, NUM),
    cond("equal-true", "NumericLessThanEquals", 5, 5, True, NUM),
    cond("greater-false", "NumericLessThanEquals", 5, 5.5, False, NUM),
    cond("missing-key-false", "NumericLessThanEquals", 5, MISSING, False, NUM),
    cond("greater-true", "NumericGreaterThan", "5", 6, True, NUM),
    cond("equal-false", "NumericGreaterThan", 5, 5, False, NUM),
    cond("missing-key-false", "NumericGreaterThan", 5, MISSING, False, NUM),
    cond("ifexists-missing-true", "NumericGreaterThanIfExists", 5, MISSING, True, NUM),
    cond("equal-true", "NumericGreaterThanEquals", 5, 5, True, NUM),
    cond("less-false", "NumericGreaterThanEquals", 5, 4, False, NUM),
    cond("ifexists-present-less-false", "NumericGreaterThanEqualsIfExists", 5, 4, False, NUM),
    cond("same-instant-true", "DateEquals", T0, T0_DT, True, TIME),
    cond("epoch-policy-value", "DateEquals", int(T0_DT.timestamp()), T0_DT, True, TIME),
    cond("other-instant-false", "DateEquals", T0, T1_DT, False, TIME),
    cond("missing-key-false", "DateEquals", T0, MISSING, False, TIME),
    cond("ifexists-missing-true", "DateEqualsIfExists", T0, MISSING, True, TIME),
    cond("other-instant-true", "DateNotEquals", T0, T1_DT, True, TIME),
    cond("missing-key-true", "DateNotEquals", T0, MISSING, True, TIME),
    cond("earlier-true", "DateLessThan", "2030-06-01T00:00:00Z", T0_DT, True, TIME),
    cond("later-false", "DateLessThan", T0, T1_DT, False, TIME),
    cond("missing-key-false", "DateLessThan", T0, MISSING, False, TIME),
    cond("ifexists-missing-true", "DateLessThanIfExists", T0, MISSING, True, TIME),
    cond("equal-true", "DateLessThanEquals", T0, T0_DT, True, TIME),
    cond("missing-key-false", "DateLessThanEquals", T0, MISSING, False, TIME),
    cond("later-true", "DateGreaterThan", T0, T1_DT, True, TIME),
    cond("equal-false", "DateGreaterThan", T0, T0_DT, False, TIME),
    cond("iso-string-request-value", "DateGreaterThan", T0, "2031-01-01T00:00:00Z", True, TIME),
    cond("missing-key-false", "DateGreaterThan", T0, MISSING, False, TIME),
    cond("equal-true", "DateGreaterThanEquals", T0, T0_DT, True, TIME),
    cond("ifexists-missing-true", "DateGreaterThanEqualsIfExists", T0, MISSING, True, TIME),
    cond("true-matches-true", "Bool", "true", True, True, BOOL),
    cond("true-vs-false", "Bool", "true", False, False, BOOL),
    cond("json-bool-policy-string-request", "Bool", True, "TRUE", True, BOOL),
    cond("missing-key-false", "Bool", "true", MISSING, False, BOOL),
    cond("ifexists-missing-true", "BoolIfExists", "false", MISSING, True, BOOL),
    cond("ifexists-present-mismatch-false", "BoolIfExists", "false", True, False, BOOL),
    cond("true-key-missing", "Null", "true", MISSING, True),
    cond("true-key-present-false", "Null", "true", "lake", False),
    cond("false-key-present", "Null", "false", "lake", True),
    cond("false-key-missing-false", "Null", "false", MISSING, False),
    cond("false-empty-list-is-present", "Null", "false", [], True, KEYS),
    cond("same-bytes", "BinaryEquals", B64, B64, True),
    cond("other-bytes", "BinaryEquals", B64, "aGVsbG9v", False),
    cond("missing-key-false", "BinaryEquals", B64, MISSING, False),
    cond("ifexists-missing-true", "BinaryEqualsIfExists", B64, MISSING, True),
    cond("inside-cidr", "IpAddress", "203.0.113.0/24", "203.0.113.7", True, IP),
    cond("outside-cidr", "IpAddress", "203.0.113.0/24", "198.51.100.1", False, IP),
    cond("ipv6", "IpAddress", "2001:db8::/32", "2001:db8::1", True, IP),
    cond("missing-key-false", "IpAddress", "203.0.113.0/24", MISSING, False, IP),
    cond("ifexists-missing-true", "IpAddressIfExists", "203.0.113.0/24", MISSING, True, IP),
    cond("outside-true", "NotIpAddress", "203.0.113.0/24", "198.51.100.1", True, IP),
    cond("inside-false", "NotIpAddress", "203.0.113.0/24", "203.0.113.9", False, IP),
    cond("missing-key-true", "NotIpAddress", "203.0.113.0/24", MISSING, True, IP),
    cond(
        "ifexists-present-inside-false",
        "NotIpAddressIfExists",
        "203.0.113.1",
        "203.0.113.1",
        False,
        IP,
    ),
    cond("exact", "ArnEquals", READER, READER, True, ARN),
    cond("wildcards-like-arnlike", "ArnEquals", f"arn:aws:iam::{A}:role/*", READER, True, ARN),
    cond("missing-key-false", "ArnEquals", READER, MISSING, False, ARN),
    cond("ifexists-missing-true", "ArnEqualsIfExists", READER, MISSING, True, ARN),
    cond("wildcard-resource", "ArnLike", f"arn:aws:iam::{A}:user/*", ALICE, True, ARN),
    cond(
        "star-does-not-cross-components",
        "ArnLike",
        f"arn:*:{A}:*:*:*",
        f"arn:aws:kms:us-east-1:{A}:key/a:b:c",
        False,
        ARN,
    ),
    cond(
        "resource-component-may-hold-colons",
        "ArnLike",
        f"arn:aws:kms:*:{A}:key/*",
        f"arn:aws:kms:us-east-1:{A}:key/a:b:c",
        True,
        ARN,
    ),
    cond("account-component-wildcard", "ArnLike", "arn:aws:iam::*:role/Reader", READER, True, ARN),
    cond("not-an-arn-request-false", "ArnLike", "arn:aws:iam::*:*", "Alice", False, ARN),
    cond("missing-key-false", "ArnLike", READER, MISSING, False, ARN),
    cond("ifexists-missing-true", "ArnLikeIfExists", READER, MISSING, True, ARN),
    cond("other-true", "ArnNotEquals", READER, ALICE, True, ARN),
    cond("missing-key-true", "ArnNotEquals", READER, MISSING, True, ARN),
    cond("matching-false", "ArnNotLike", f"arn:aws:iam::{A}:*", ALICE, False, ARN),
    cond("missing-key-true", "ArnNotLike", READER, MISSING, True, ARN),
    # multivalued keys and set operators
    cond(
        "one-value-matches",
        "ForAnyValue:StringEquals",
        ["purpose", "team"],
        ["purpose", "x"],
        True,
        KEYS,
    ),
    cond("no-value-matches", "ForAnyValue:StringEquals", ["purpose"], ["x", "y"], False, KEYS),
    cond("empty-set-false", "ForAnyValue:StringEquals", ["purpose"], [], False, KEYS),
    cond("missing-key-false", "ForAnyValue:StringEquals", ["purpose"], MISSING, False, KEYS),
    cond(
        "ifexists-missing-true", "ForAnyValue:StringEqualsIfExists", "purpose", MISSING, True, KEYS
    ),
    cond(
        "all-values-listed",
        "ForAllValues:StringEquals",
        ["purpose", "team"],
        ["team", "purpose"],
        True,
        KEYS,
    ),
    cond(
        "one-value-unlisted-false",
        "ForAllValues:StringEquals",
        ["purpose"],
        ["purpose", "x"],
        False,
        KEYS,
    ),
    cond("empty-set-true", "ForAllValues:StringEquals", ["purpose"], [], True, KEYS),
    cond("missing-key-true", "ForAllValues:StringEquals", ["purpose"], MISSING, True, KEYS),
    cond("wildcards", "ForAllValues:StringLike", "p*", ["purpose", "project"], True, KEYS),
    cond("ignore-case", "ForAnyValue:StringEqualsIgnoreCase", "PURPOSE", ["purpose"], True, KEYS),
    cond(
        "some-value-unlisted-true",
        "ForAnyValue:StringNotEquals",
        "purpose",
        ["purpose", "x"],
        True,
        KEYS,
    ),
    cond(
        "all-values-listed-false",
        "ForAnyValue:StringNotEquals",
        "purpose",
        ["purpose"],
        False,
        KEYS,
    ),
    cond("no-value-listed-true", "ForAllValues:StringNotEquals", "secret", ["a", "b"], True, KEYS),
    cond(
        "one-value-listed-false",
        "ForAllValues:StringNotEquals",
        "secret",
        ["a", "secret"],
        False,
        KEYS,
    ),
    cond(
        "multivalued-without-set-operator-any",
        "StringEquals",
        "purpose",
        ["x", "purpose"],
        True,
        KEYS,
    ),
    cond(
        "multivalued-without-set-operator-negated-none",
        "StringNotEquals",
        "purpose",
        ["x", "purpose"],
        False,
        KEYS,
    ),
    cond(
        "single-value-treated-as-one-element-set",
        "ForAllValues:StringEquals",
        "purpose",
        "purpose",
        True,
        KEYS,
    ),
    cond(
        "condition-key-case-insensitive",
        "StringEquals",
        "lake",
        "lake",
        True,
        "KMS:ENCRYPTIONCONTEXT:PURPOSE",
    ),
]

AND_OR = [
    row(
        "condition/several-keys-in-one-operator-and:both-match",
        Case(
            ALICE,
            True,
            key_policy(
                stmt(
                    Principal=aws(ALICE),
                    Condition={
                        "StringEquals": {
                            "kms:EncryptionContext:a": "1",
                            "kms:EncryptionContext:b": "2",
                        }
                    },
                )
            ),
            values={"kms:encryptioncontext:a": "1", "kms:encryptioncontext:b": "2"},
        ),
    ),
    row(
        "condition/several-keys-in-one-operator-and:one-fails",
        Case(
            ALICE,
            False,
            key_policy(
                stmt(
                    Principal=aws(ALICE),
                    Condition={
                        "StringEquals": {
                            "kms:EncryptionContext:a": "1",
                            "kms:EncryptionContext:b": "2",
                        }
                    },
                )
            ),
            values={"kms:encryptioncontext:a": "1", "kms:encryptioncontext:b": "3"},
        ),
    ),
    row(
        "condition/several-operators-and:one-fails",
        Case(
            ALICE,
            False,
            key_policy(
                stmt(
                    Principal=aws(ALICE),
                    Condition={
                        "StringEquals": {"kms:ViaService": SERVICE},
                        "Bool": {"kms:GrantIsForAWSResource": "true"},
                    },
                )
            ),
            values={"kms:viaservice": SERVICE, "kms:grantisforawsresource": False},
        ),
    ),
    row(
        "condition/several-operators-and:all-hold",
        Case(
            ALICE,
            True,
            key_policy(
                stmt(
                    Principal=aws(ALICE),
                    Condition={
                        "StringEquals": {"kms:ViaService": SERVICE},
                        "Bool": {"kms:GrantIsForAWSResource": "true"},
                    },
                )
            ),
            values={"kms:viaservice": SERVICE, "kms:grantisforawsresource": True},
        ),
    ),
    row(
        "condition/iam-statement-conditions-apply-too",
        Case(
            ALICE,
            False,
            default_policy(),
            (
                iam_policy(
                    stmt(Condition={"StringEquals": {"kms:EncryptionContext:purpose": "lake"}})
                ),
            ),
            values={"kms:encryptioncontext:purpose": "web"},
        ),
    ),
]


@pytest.mark.parametrize("case", STRUCTURE + CONDITIONS + AND_OR)
def test_evaluation(case: Case) -> None:
    request = Request(
        action=case.action,
        caller=caller(case.caller),
        resource=case.resource,
        resource_account=case.account,
        values=case.values,
        encryption_context=case.context,
        aws_managed=case.managed,
    )
    iam = [(f"p{i}", p) for i, p in enumerate(case.iam)]
    decision = authorize(request, key_policy=case.key_policy, iam_policies=iam, grants=case.grants)
    assert decision.allowed is case.allowed, decision
    if case.matched != "-":
        assert decision.matched == case.matched, decision
    if case.reason is not None:
        assert case.reason in decision.reason, decision
    # The explained path is a second implementation of the same order: it must agree.
    explained = authorize(
        request, key_policy=case.key_policy, iam_policies=iam, grants=case.grants, explain=True
    )
    assert (explained.allowed, explained.matched, explained.reason) == (
        decision.allowed,
        decision.matched,
        decision.reason,
    )
    assert explained.explanation


def test_table_is_large_enough() -> None:
    assert len(STRUCTURE + CONDITIONS + AND_OR) >= 90
