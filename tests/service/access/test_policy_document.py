"""Policy documents: every malformed case is refused with a message naming the problem, valid
policies parse, and the text is kept byte for byte (GetKeyPolicy returns what was put)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from envelope.service.access import MAX_POLICY_BYTES, parse_policy, parse_principal, root_of
from envelope.service.errors import MalformedPolicyDocumentException, ValidationException

from .helpers import ALICE, READER, READER_S1, A, aws, stmt


def doc(*statements: Any, **top: Any) -> str:
    body: dict[str, Any] = {"Version": "2012-10-17", "Statement": list(statements)}
    body.update(top)
    return json.dumps(body)


GOOD = stmt(Principal=aws(ALICE))

MALFORMED = [
    ("bad-json", '{"Version": "2012-10-17", "Statement": [', True, "not valid JSON"),
    ("nan-constant", '{"Statement": NaN}', True, "NaN is not valid JSON"),
    ("over-32kb", doc(GOOD, Id="x" * MAX_POLICY_BYTES), True, "the limit is 32768 bytes"),
    ("not-an-object", "[1, 2]", True, "must be a JSON object"),
    ("duplicate-member", '{"Statement": [], "Statement": []}', True, "duplicate member"),
    ("unknown-top-member", doc(GOOD, Extra=1), True, "unknown top-level member 'Extra'"),
    ("wrong-version", doc(GOOD, Version="2020-01-01"), True, "Version '2020-01-01'"),
    ("statement-missing", json.dumps({"Version": "2012-10-17"}), True, "Statement is missing"),
    ("statement-empty", doc(), True, "Statement is an empty list"),
    ("statement-not-object", doc("Allow"), True, "Statement[0]: a statement must be a JSON"),
    ("unknown-statement-member", doc(dict(GOOD, Foo=1)), True, "unknown member 'Foo'"),
    (
        "missing-effect",
        doc({k: v for k, v in GOOD.items() if k != "Effect"}),
        True,
        "Statement[0]: Effect is missing",
    ),
    ("bad-effect", doc(dict(GOOD, Effect="allow")), True, "'allow' is not Allow or Deny"),
    (
        "action-and-not-action",
        doc(dict(GOOD, NotAction="kms:Decrypt")),
        True,
        "exactly one of Action or NotAction",
    ),
    (
        "no-action",
        doc({k: v for k, v in GOOD.items() if k != "Action"}),
        True,
        "exactly one of Action or NotAction",
    ),
    (
        "no-resource",
        doc({k: v for k, v in GOOD.items() if k != "Resource"}),
        True,
        "exactly one of Resource or NotResource",
    ),
    ("bad-resource", doc(dict(GOOD, Resource="key/1")), True, "'key/1' is not a resource"),
    (
        "non-kms-action-in-key-policy",
        doc(dict(GOOD, Action="s3:GetObject")),
        True,
        "a key policy may name only kms: actions",
    ),
    ("bad-action-syntax", doc(dict(GOOD, Action="Decrypt")), True, "'Decrypt' is not an action"),
    (
        "empty-action-list",
        doc(dict(GOOD, Action=[])),
        True,
        "Statement[0].Action: the list is empty",
    ),
    (
        "missing-principal-in-key-policy",
        doc(stmt()),
        True,
        "needs exactly one of Principal or NotPrincipal",
    ),
    (
        "principal-and-not-principal",
        doc(dict(GOOD, NotPrincipal=aws(ALICE))),
        True,
        "needs exactly one of Principal or NotPrincipal",
    ),
    (
        "principal-in-iam-policy",
        doc(GOOD),
        False,
        "Principal is not allowed in an identity-based (IAM) policy",
    ),
    (
        "not-principal-in-iam-policy",
        doc(stmt(NotPrincipal=aws(ALICE))),
        False,
        "NotPrincipal is not allowed in an identity-based",
    ),
    ("bad-principal-string", doc(stmt(Principal="Alice")), True, 'must be "*" or an object'),
    (
        "bad-principal-arn",
        doc(stmt(Principal=aws("arn:aws:iam::123:user/Alice"))),
        True,
        "'arn:aws:iam::123:user/Alice' is not a valid principal",
    ),
    (
        "bad-principal-wildcard-arn",
        doc(stmt(Principal=aws(f"arn:aws:iam::{A}:user/*"))),
        True,
        "is not a valid principal",
    ),
    (
        "unsupported-principal-type",
        doc(stmt(Principal={"Federated": "cognito"})),
        True,
        "unsupported principal type 'Federated'",
    ),
    (
        "bad-service-principal",
        doc(stmt(Principal={"Service": "example.com"})),
        True,
        "'example.com' is not a service principal",
    ),
    (
        "principal-value-not-string",
        doc(stmt(Principal={"AWS": [1]})),
        True,
        "1 must be a non-empty string",
    ),
    (
        "unknown-operator",
        doc(dict(GOOD, Condition={"StringEqualz": {"aws:x": "a"}})),
        True,
        "unknown condition operator 'StringEqualz'",
    ),
    (
        "bad-set-operator",
        doc(dict(GOOD, Condition={"ForSomeValues:StringEquals": {"aws:x": "a"}})),
        True,
        "unknown condition operator 'ForSomeValues:StringEquals'",
    ),
    (
        "null-ifexists",
        doc(dict(GOOD, Condition={"NullIfExists": {"aws:x": "true"}})),
        True,
        "Null takes no IfExists or set operator",
    ),
    (
        "for-any-value-null",
        doc(dict(GOOD, Condition={"ForAnyValue:Null": {"aws:x": "true"}})),
        True,
        "Null takes no IfExists or set operator",
    ),
    (
        "condition-not-object",
        doc(dict(GOOD, Condition=["StringEquals"])),
        True,
        "Condition must be an object",
    ),
    (
        "condition-value-object",
        doc(dict(GOOD, Condition={"StringEquals": {"aws:x": {"a": 1}}})),
        True,
        "must be a string, number or boolean",
    ),
    (
        "condition-value-null",
        doc(dict(GOOD, Condition={"StringEquals": {"aws:x": None}})),
        True,
        "must be a string, number or boolean",
    ),
    (
        "condition-empty-values",
        doc(dict(GOOD, Condition={"StringEquals": {"aws:x": []}})),
        True,
        "the list of condition values is empty",
    ),
    (
        "numeric-not-a-number",
        doc(dict(GOOD, Condition={"NumericLessThan": {"aws:x": "ten"}})),
        True,
        "'ten' must be a number",
    ),
    (
        "date-not-a-date",
        doc(dict(GOOD, Condition={"DateLessThan": {"aws:x": "tomorrow"}})),
        True,
        "must be a date",
    ),
    (
        "bool-not-a-bool",
        doc(dict(GOOD, Condition={"Bool": {"aws:x": "yes"}})),
        True,
        "'yes' must be true or false",
    ),
    (
        "ip-not-an-ip",
        doc(dict(GOOD, Condition={"IpAddress": {"aws:SourceIp": "10.0.0.300"}})),
        True,
        "must be an IP address or CIDR",
    ),
    (
        "binary-not-base64",
        doc(dict(GOOD, Condition={"BinaryEquals": {"aws:x": "***"}})),
        True,
        "must be base64 text",
    ),
    (
        "arn-not-an-arn",
        doc(dict(GOOD, Condition={"ArnLike": {"aws:SourceArn": "bucket"}})),
        True,
        "is not an ARN",
    ),
    (
        "bad-condition-key",
        doc(dict(GOOD, Condition={"StringEquals": {"purpose": "a"}})),
        True,
        "'purpose' is not a condition key",
    ),
]


@pytest.mark.parametrize(
    ("text", "resource_policy", "expected"),
    [pytest.param(t, r, e, id=i) for i, t, r, e in MALFORMED],
)
def test_malformed_policy_is_refused_with_a_precise_message(
    text: str, resource_policy: bool, expected: str
) -> None:
    with pytest.raises(MalformedPolicyDocumentException) as info:
        parse_policy(text, resource_policy=resource_policy)
    assert expected in info.value.message


def test_not_a_string_is_refused() -> None:
    with pytest.raises(MalformedPolicyDocumentException, match="must be a JSON string"):
        parse_policy(b"{}", resource_policy=True)  # type: ignore[arg-type]


def test_size_limit_counts_utf8_bytes_not_characters() -> None:
    good = doc(GOOD)
    pad = MAX_POLICY_BYTES - len(good.encode()) - len(', "Id": ""')
    at_limit = doc(GOOD, Id="x" * pad)
    assert len(at_limit.encode()) == MAX_POLICY_BYTES
    parse_policy(at_limit, resource_policy=True)
    # One two-byte character instead of one ASCII one: same length, one byte over.
    over = doc(GOOD, Id="é" + "x" * (pad - 1)).replace("\\u00e9", "é")
    assert len(over) == MAX_POLICY_BYTES
    with pytest.raises(MalformedPolicyDocumentException, match="32769 bytes"):
        parse_policy(over, resource_policy=True)


def test_principal_exists_false_names_the_invalid_principal() -> None:
    text = doc(stmt(Sid="Readers", Principal=aws(ALICE, READER)))
    with pytest.raises(MalformedPolicyDocumentException) as info:
        parse_policy(text, resource_policy=True, principal_exists=lambda arn: arn != READER)
    message = info.value.message
    assert message.startswith("Policy contains a statement with one or more invalid principals.")
    assert READER in message and "Readers" in message


def test_principal_exists_is_asked_only_about_users_and_roles() -> None:
    asked: list[str] = []

    def exists(arn: str) -> bool:
        asked.append(arn)
        return True

    text = doc(stmt(Principal=aws(ALICE, A, f"arn:aws:iam::{A}:root", READER_S1, "*")))
    parse_policy(text, resource_policy=True, principal_exists=exists)
    assert asked == [ALICE]


VALID = [
    (
        "default-key-policy",
        doc(stmt(Sid="Enable IAM User Permissions", Principal=aws(f"arn:aws:iam::{A}:root"))),
        True,
    ),
    ("single-statement-object", json.dumps({"Statement": GOOD}), True),
    ("version-2008", doc(GOOD, Version="2008-10-17"), True),
    ("with-id", doc(GOOD, Id="key-policy-1"), True),
    ("service-principal-list", doc(stmt(Principal={"Service": ["envelope.amazonaws.com"]})), True),
    ("star-principal", doc(stmt(Principal="*")), True),
    ("aws-star-principal", doc(stmt(Principal={"AWS": "*"})), True),
    ("iam-any-service-actions", doc(stmt(Action=["s3:GetObject", "kms:Decrypt", "*"])), False),
    (
        "every-operator",
        doc(
            dict(
                GOOD,
                Condition={
                    "ForAnyValue:StringLikeIfExists": {"kms:EncryptionContextKeys": ["a*", "b?"]},
                    "ForAllValues:StringEquals": {"aws:TagKeys": ["x"]},
                    "NumericLessThanEquals": {"kms:GrantCount": 3},
                    "DateGreaterThan": {"aws:CurrentTime": "2020-01-01"},
                    "Bool": {"aws:SecureTransport": True},
                    "Null": {"aws:ResourceTag/env": "false"},
                    "IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "2001:db8::/32"]},
                    "ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/Admin*"},
                    "BinaryEquals": {"kms:x": "aGVsbG8="},
                },
            )
        ),
        True,
    ),
]


@pytest.mark.parametrize(
    ("text", "resource_policy"), [pytest.param(t, r, id=i) for i, t, r in VALID]
)
def test_valid_policy_parses_and_keeps_text_exactly(text: str, resource_policy: bool) -> None:
    policy = parse_policy(text, resource_policy=resource_policy)
    assert policy.text is text
    assert len(policy.statements) >= 1


def test_text_is_kept_byte_for_byte_with_odd_formatting() -> None:
    text = (
        '{ "Statement" :{"Effect":"Allow" ,\n\t"Principal":"*",'
        '"Action":"kms:*",\r\n"Resource":"*"}}  '
    )
    assert parse_policy(text, resource_policy=True).text == text


def test_statements_are_labelled_by_sid_or_index() -> None:
    policy = parse_policy(doc(GOOD, dict(GOOD, Sid="Second")), resource_policy=True)
    assert [s.label for s in policy.statements] == ["#0", "Second"]
    assert [s.index for s in policy.statements] == [0, 1]


def test_error_names_the_statement_by_sid() -> None:
    text = doc(GOOD, dict(GOOD, Sid="Broken", Effect="Maybe"))
    with pytest.raises(MalformedPolicyDocumentException, match=r"Statement\[1\] \(Sid 'Broken'\)"):
        parse_policy(text, resource_policy=True)


PRINCIPALS = [
    (f"arn:aws:iam::{A}:root", "root", ""),
    (f"arn:aws:iam::{A}:user/Alice", "user", "Alice"),
    (f"arn:aws:iam::{A}:user/division/team/Alice", "user", "Alice"),
    (f"arn:aws:iam::{A}:role/Reader", "role", "Reader"),
    (f"arn:aws:sts::{A}:assumed-role/Reader/job-1", "assumed-role", "Reader"),
    ("envelope.amazonaws.com", "service", "envelope"),
]


@pytest.mark.parametrize(("arn", "kind", "name"), PRINCIPALS)
def test_parse_principal(arn: str, kind: str, name: str) -> None:
    p = parse_principal(arn)
    assert (p.arn, p.kind, p.name) == (arn, kind, name)
    if kind == "service":
        assert p.account is None and p.root_arn is None and p.identity_arn == arn
    else:
        assert p.account == A and p.root_arn == f"arn:aws:iam::{A}:root"
    if kind == "assumed-role":
        assert p.identity_arn == READER
    elif kind != "service":
        assert p.identity_arn == arn


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Alice",
        A,
        f"arn:aws:iam::{A}:group/Admins",
        f"arn:aws-cn:iam::{A}:root",
        "arn:aws:iam::12345:root",
        f"arn:aws:sts::{A}:assumed-role/Reader",
        f"arn:aws:iam::{A}:user/",
        "example.com",
        f"arn:aws:iam::{A}:user/a b",
    ],
)
def test_parse_principal_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValidationException, match="is not a principal"):
        parse_principal(text)


def test_root_of() -> None:
    assert root_of(A) == parse_principal(f"arn:aws:iam::{A}:root")
    with pytest.raises(ValidationException):
        root_of("12")
