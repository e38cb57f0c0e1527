"""`explain=True`: the decision names the statement that allowed or denied, and says for every
other statement and grant why it did not apply."""

from __future__ import annotations

from envelope.service.access import Request, authorize

from .helpers import ALICE, BOB, KEY, A, aws, caller, grant, iam_policy, key_policy, stmt

POLICY = key_policy(
    stmt(Sid="Owner", Principal=aws(f"arn:aws:iam::{A}:root")),
    stmt(Sid="BobOnly", Principal=aws(BOB), Action="kms:Decrypt"),
    stmt(Sid="AliceEncrypt", Principal=aws(ALICE), Action="kms:Encrypt"),
    stmt(
        Sid="LakeOnly",
        Principal=aws(ALICE),
        Action="kms:Decrypt",
        Condition={"StringEquals": {"kms:EncryptionContext:purpose": "lake"}},
    ),
)
IAM = iam_policy(stmt(Sid="ReadAll", Action="kms:Decrypt"))
DENY_WEB = iam_policy(
    stmt("Deny", Sid="NoWeb", Condition={"StringEquals": {"kms:EncryptionContext:purpose": "web"}})
)


def request(purpose: str | None) -> Request:
    values = {} if purpose is None else {"kms:encryptioncontext:purpose": purpose}
    return Request("kms:Decrypt", caller(ALICE), KEY, A, values)


def test_allow_is_explained_statement_by_statement() -> None:
    d = authorize(request(None), key_policy=POLICY, iam_policies=[("reader", IAM)], explain=True)
    assert d.allowed and d.matched == "iam:reader:ReadAll"
    lines = dict(line.split(": ", 1) for line in d.explanation)
    assert lines["key-policy:Owner (Allow)"].startswith("applies: allows the caller's account")
    assert (
        lines["key-policy:BobOnly (Allow)"] == "does not apply: Principal does not name the caller"
    )
    assert (
        lines["key-policy:AliceEncrypt (Allow)"] == "does not apply: kms:Decrypt is not in Action"
    )
    assert lines["key-policy:LakeOnly (Allow)"] == (
        "does not apply: condition StringEquals kms:EncryptionContext:purpose: "
        "the key is missing from the request"
    )
    assert lines["iam:reader:ReadAll (Allow)"] == "applies: allows the caller"


def test_deny_is_named_and_explained() -> None:
    d = authorize(
        request("web"),
        key_policy=POLICY,
        iam_policies=[("reader", IAM), ("guard", DENY_WEB)],
        explain=True,
    )
    assert not d.allowed
    assert d.matched == "iam:guard:NoWeb"
    assert d.reason == "explicit deny in an identity-based policy"
    assert "iam:guard:NoWeb (Deny): applies: denies the caller" in d.explanation
    assert (
        "key-policy:LakeOnly (Allow): does not apply: condition StringEquals "
        "kms:EncryptionContext:purpose: no request value matches"
    ) in d.explanation
    message = d.message(request("web"))
    assert message == (
        f"User: {ALICE} is not authorized to perform: kms:Decrypt on resource: {KEY} "
        "with an explicit deny in an identity-based policy"  # AWS's wording for a Deny
    )


def test_grants_are_explained_when_policies_do_not_allow() -> None:
    grants = (
        grant("g-bob", BOB, "Decrypt"),
        grant("g-enc", ALICE, "Encrypt"),
        grant("g-ctx", ALICE, "Decrypt", equals={"purpose": "lake"}),
    )
    r = Request("kms:Decrypt", caller(ALICE), KEY, A, {}, encryption_context={"purpose": "web"})
    d = authorize(r, key_policy=POLICY, iam_policies=[], grants=grants, explain=True)
    assert not d.allowed and d.matched is None
    assert d.reason == "no identity-based policy allows the kms:Decrypt action"
    assert f"grant:g-bob: does not apply: its grantee {BOB} is not the caller" in d.explanation
    assert "grant:g-enc: does not apply: it does not grant Decrypt" in d.explanation
    assert (
        "grant:g-ctx: does not apply: the encryption context does not satisfy its "
        "EncryptionContextEquals constraint"
    ) in d.explanation
    ok = authorize(
        Request("kms:Decrypt", caller(ALICE), KEY, A, {}, encryption_context={"purpose": "lake"}),
        key_policy=POLICY,
        iam_policies=[],
        grants=grants,
        explain=True,
    )
    assert ok.allowed and ok.matched == "grant:g-ctx"
    assert "grant:g-ctx: applies: grants Decrypt to the caller" in ok.explanation


def test_fast_path_leaves_explanation_empty() -> None:
    d = authorize(request(None), key_policy=POLICY, iam_policies=[("reader", IAM)])
    assert d.allowed and d.explanation == ()
