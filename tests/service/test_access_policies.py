"""Key policies at the service level (issue 10): round trip, lockout safety check, the root is
not above the key policy, malformed policies refused precisely and without a change."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope.service import KeyService
from envelope.service.errors import (
    AccessDeniedException,
    MalformedPolicyDocumentException,
    NotFoundException,
)

from .access_helpers import ROOT_A, A, assert_denied, attach, aws, doc, dump, root_stmt, stmt, user
from .conftest import new_key

_ACTIONS = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:GenerateDataKey*",
    "kms:ReEncrypt*",
    "kms:Describe*",
    "kms:*",
    "kms:CreateGrant",
]
_OPERATORS = ["StringEquals", "StringLike", "StringNotEqualsIgnoreCase", "ForAnyValue:StringEquals"]


@st.composite
def policies(draw: st.DrawFn, principals: list[str]) -> str:
    """A valid key policy that keeps the account root (so the lockout check passes), written
    with arbitrary layout, key order and optional members: the text must come back unchanged."""
    statements: list[dict[str, Any]] = [root_stmt()]
    for i in range(draw(st.integers(0, 4))):
        s: dict[str, Any] = {
            "Effect": draw(st.sampled_from(["Allow", "Deny"])),
            "Principal": draw(
                st.sampled_from(
                    [
                        "*",
                        aws(
                            *draw(
                                st.lists(
                                    st.sampled_from(principals), min_size=1, max_size=3, unique=True
                                )
                            )
                        ),
                    ]
                )
            ),
            "Action": draw(
                st.one_of(
                    st.sampled_from(_ACTIONS),
                    st.lists(st.sampled_from(_ACTIONS), min_size=1, max_size=3, unique=True),
                )
            ),
            "Resource": "*",
        }
        if s["Effect"] == "Deny":
            # a Deny of PutKeyPolicy to the root would (rightly) fail the lockout check
            s["Action"] = draw(st.sampled_from(["kms:Decrypt", ["kms:Encrypt", "kms:Sign"]]))
        if draw(st.booleans()):
            s["Sid"] = f"S{i}" + draw(st.text("abcXYZ019", max_size=6))
        if draw(st.booleans()):
            s["Condition"] = {
                draw(st.sampled_from(_OPERATORS)): {
                    "kms:EncryptionContext:" + draw(st.text("abc", min_size=1, max_size=4)): draw(
                        st.text("xyz*?é ", min_size=1, max_size=6)
                    )
                }
            }
        statements.append(s)
    body: dict[str, Any] = {"Version": "2012-10-17", "Statement": statements}
    if draw(st.booleans()):
        body = {"Id": draw(st.text("abc-", min_size=1, max_size=8)), **body}
    if len(statements) == 1 and draw(st.booleans()):
        body["Statement"] = statements[0]  # a single statement, not a list
    return json.dumps(
        body,
        indent=draw(st.sampled_from([None, 1, 2, 4])),
        sort_keys=draw(st.booleans()),
        ensure_ascii=draw(st.booleans()),
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_put_get_key_policy_round_trips_exactly(svc: KeyService, data: st.DataObject) -> None:
    """AWS rule: GetKeyPolicy returns the policy document exactly as PutKeyPolicy stored it
    (same text, layout included), and CreateKey with Policy does the same."""
    if not hasattr(svc, "_rt_key"):
        svc._rt_key = new_key(svc)  # type: ignore[attr-defined]
        svc._rt_users = [user(svc, "u1"), user(svc, "u2")]  # type: ignore[attr-defined]
    kid = svc._rt_key  # type: ignore[attr-defined]
    principals = [*svc._rt_users, ROOT_A, A, f"arn:aws:iam::{'1' * 12}:root"]  # type: ignore[attr-defined]
    text = data.draw(policies(principals))
    svc.put_key_policy(key_id=kid, policy=text)
    assert svc.get_key_policy(key_id=kid) == {"Policy": text, "PolicyName": "default"}


def test_create_key_with_policy_and_list_key_policies(svc: KeyService) -> None:
    """AWS rule: CreateKey takes Policy (kept as given); a key has exactly one policy, named
    default, which ListKeyPolicies lists; the default key policy gives the account root kms:*."""
    reader = user(svc, "reader")
    text = doc(root_stmt(), stmt(Sid="Read", Principal=aws(reader), Action="kms:Decrypt"))
    kid = str(svc.create_key(policy=text)["KeyMetadata"]["KeyId"])
    assert svc.get_key_policy(key_id=kid)["Policy"] == text
    assert svc.list_key_policies(key_id=kid) == {"PolicyNames": ["default"], "Truncated": False}
    plain = new_key(svc)
    default = json.loads(svc.get_key_policy(key_id=plain)["Policy"])
    assert default["Statement"][0]["Principal"] == {"AWS": ROOT_A}
    assert default["Statement"][0]["Action"] == "kms:*"
    with pytest.raises(NotFoundException, match="no key policy named other"):
        svc.get_key_policy(key_id=kid, policy_name="other")


def test_lockout_check_refuses_then_bypass_accepts_and_key_obeys(svc: KeyService) -> None:
    """AWS rule: PutKeyPolicy (and CreateKey with Policy) refuses, with
    MalformedPolicyDocumentException, a policy that would stop the caller from calling
    PutKeyPolicy again, unless BypassPolicyLockoutSafetyCheck is set; with it the policy is
    stored and then enforced: the root is locked out, the named user is not."""
    kid = new_key(svc)
    operator = user(svc, "operator")
    only_operator = doc(stmt(Sid="Op", Principal=aws(operator), Action="kms:*"))
    before = dump(svc)
    with pytest.raises(MalformedPolicyDocumentException, match="will not allow you to update"):
        svc.put_key_policy(key_id=kid, policy=only_operator)
    with pytest.raises(MalformedPolicyDocumentException, match="will not allow you to update"):
        svc.create_key(policy=only_operator)
    assert dump(svc) == before
    svc.put_key_policy(key_id=kid, policy=only_operator, bypass_policy_lockout_safety_check=True)
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=ROOT_A), ROOT_A, A)
    assert_denied(
        svc,
        lambda: svc.put_key_policy(key_id=kid, policy=doc(root_stmt()), principal=ROOT_A),
        ROOT_A,
        A,
    )
    # the operator, named by the key policy itself, needs no IAM policy
    svc.encrypt(key_id=kid, plaintext=b"p", principal=operator)
    # and the check holds for it too: a policy dropping the operator itself is refused
    with pytest.raises(MalformedPolicyDocumentException):
        svc.put_key_policy(key_id=kid, policy=doc(root_stmt()), principal=operator)
    both = doc(root_stmt(), stmt(Sid="Op", Principal=aws(operator), Action="kms:*"))
    svc.put_key_policy(key_id=kid, policy=both, principal=operator)
    svc.encrypt(key_id=kid, plaintext=b"p", principal=ROOT_A)


def test_lockout_check_sees_the_keys_own_condition_keys(svc: KeyService) -> None:
    """The check asks what a later PutKeyPolicy would be asked, with the key's spec, tags and
    aliases: a policy allowing the root on kms:KeySpec or aws:ResourceTag was refused as a
    lockout, though once in force it lets the root put it again (review)."""
    on_spec = doc(
        stmt(
            Sid="root",
            Principal=aws(ROOT_A),
            Condition={"StringEquals": {"kms:KeySpec": "SYMMETRIC_DEFAULT"}},
        )
    )
    on_tag = doc(
        stmt(
            Sid="root",
            Principal=aws(ROOT_A),
            Condition={"StringEquals": {"aws:ResourceTag/env": "prod"}},
        )
    )
    kid = new_key(svc)
    svc.tag_resource(key_id=kid, tags=[{"TagKey": "env", "TagValue": "prod"}])
    svc.put_key_policy(key_id=kid, policy=on_spec)
    svc.put_key_policy(key_id=kid, policy=on_spec)  # and again, in force
    svc.put_key_policy(key_id=kid, policy=on_tag)
    svc.create_key(policy=on_spec)
    svc.create_key(policy=on_tag, tags=[{"TagKey": "env", "TagValue": "prod"}])
    with pytest.raises(MalformedPolicyDocumentException):  # still refused where it locks out
        svc.create_key(policy=on_tag, tags=[{"TagKey": "env", "TagValue": "dev"}])
    with pytest.raises(MalformedPolicyDocumentException):
        svc.create_key(
            policy=on_spec, key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT"
        )


def test_lockout_check_counts_the_callers_iam_policy(svc: KeyService) -> None:
    """AWS rule: the lockout check asks whether the CALLER could still call PutKeyPolicy; a user
    who may only through IAM (the key policy delegating to the root) keeps that as long as the
    policy keeps the root statement."""
    kid = new_key(svc)
    admin = user(svc, "admin")
    attach(svc, admin, stmt(Action="kms:*"))
    keeps = doc(root_stmt(), stmt(Sid="R", Principal=aws(admin), Action="kms:Decrypt"))
    svc.put_key_policy(key_id=kid, policy=keeps, principal=admin)
    drops = doc(stmt(Sid="R", Principal=aws(admin), Action="kms:Decrypt"))
    with pytest.raises(MalformedPolicyDocumentException):
        svc.put_key_policy(key_id=kid, policy=drops, principal=admin)


def test_root_cannot_use_a_key_whose_policy_omits_it(svc: KeyService) -> None:
    """AWS rule: the key policy is the root of trust; even the account root cannot use a key
    whose custom policy does not name it (or its account), and IAM policies of the account's
    users then count for nothing."""
    app = user(svc, "app")
    attach(svc, app, stmt(Action="kms:*"))  # IAM alone is not enough without delegation
    other = user(svc, "other")
    kid = str(
        svc.create_key(
            policy=doc(stmt(Sid="Other", Principal=aws(other), Action="kms:*")),
            bypass_policy_lockout_safety_check=True,
        )["KeyMetadata"]["KeyId"]
    )
    for who in (ROOT_A, app):
        assert_denied(
            svc, lambda w=who: svc.encrypt(key_id=kid, plaintext=b"p", principal=w), who, A
        )
        assert_denied(svc, lambda w=who: svc.describe_key(key_id=kid, principal=w), who, A)
    svc.encrypt(key_id=kid, plaintext=b"p", principal=other)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", ""),
        (
            doc(
                root_stmt(),
                stmt(Principal="*", Condition={"StringEqualz": {"kms:CallerAccount": A}}),
            ),
            "unknown condition operator 'StringEqualz'",
        ),
        (
            doc(root_stmt(), stmt(Principal=aws("not-an-arn"))),
            "'not-an-arn' is not a valid principal",
        ),
        (
            json.dumps({"Version": "2012-10-17", "Statement": [root_stmt()], "Id": "a" * 33000}),
            "the limit is 32768 bytes",
        ),
        (
            doc(root_stmt(), {**stmt(Principal="*"), "Effect": "Maybe"}),
            "'Maybe' is not Allow or Deny",
        ),
        (doc(root_stmt(), stmt()), "Principal"),  # a key policy statement needs a Principal
        (
            doc(root_stmt(), stmt(Principal=aws(f"arn:aws:iam::{A}:user/ghost"))),
            "arn:aws:iam::000000000000:user/ghost does not exist",
        ),
        (
            doc(root_stmt(), stmt(Principal=aws(f"arn:aws:iam::{A}:role/ghost"))),
            "role/ghost does not exist",
        ),
    ],
)
def test_malformed_policies_refused_precisely_without_change(
    svc: KeyService, policy: str, message: str
) -> None:
    """AWS rule: an invalid key policy (bad JSON, unknown operator, bad or nonexistent principal,
    over 32 KB, bad Effect, no Principal) is refused with MalformedPolicyDocumentException and a
    message saying what is wrong; the key keeps its policy. CreateKey refuses it too."""
    kid = new_key(svc)
    old = svc.get_key_policy(key_id=kid)["Policy"]
    before = dump(svc)
    with pytest.raises(MalformedPolicyDocumentException) as info:
        svc.put_key_policy(key_id=kid, policy=policy, bypass_policy_lockout_safety_check=True)
    assert message in str(info.value)
    with pytest.raises(MalformedPolicyDocumentException):
        svc.create_key(policy=policy, bypass_policy_lockout_safety_check=True)
    assert dump(svc) == before
    assert svc.get_key_policy(key_id=kid)["Policy"] == old
    rec = svc.audit_tail(3)
    assert [r["error_code"] for r in rec[:2]] == ["MalformedPolicyDocumentException"] * 2


def test_policy_naming_a_deleted_user_cannot_be_put_again(svc: KeyService) -> None:
    """AWS rule: a key policy may name only principals that exist; once a user is deleted, a
    policy naming it is refused."""
    app = user(svc, "app")
    kid = new_key(svc)
    svc.put_key_policy(key_id=kid, policy=doc(root_stmt(), stmt(Principal=aws(app))))
    svc.delete_principal(arn=app)
    with pytest.raises(MalformedPolicyDocumentException, match="does not exist"):
        svc.put_key_policy(key_id=kid, policy=doc(root_stmt(), stmt(Principal=aws(app))))


def test_deleted_user_named_by_key_policy_is_no_longer_allowed(svc: KeyService) -> None:
    """AWS rule: deleting an IAM user named in a key policy ends its access at once."""
    app = user(svc, "app")
    kid = new_key(svc)
    svc.put_key_policy(key_id=kid, policy=doc(root_stmt(), stmt(Principal=aws(app))))
    svc.encrypt(key_id=kid, plaintext=b"p", principal=app)
    svc.delete_principal(arn=app)
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=app), app, A)


def test_a_principal_that_does_not_exist_is_nobody(svc: KeyService) -> None:
    """AWS rule: only existing principals make requests; even "*" does not let an unknown
    user or role ARN in."""
    ghost = f"arn:aws:iam::{A}:user/never-created"
    kid = new_key(svc)
    svc.put_key_policy(
        key_id=kid,
        policy=doc(root_stmt(), stmt(Principal="*", Action="kms:Encrypt")),
    )
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=ghost), ghost, A)


def test_a_user_created_again_is_not_the_user_a_policy_named(svc: KeyService) -> None:
    """AWS rule: a key policy names a principal by its unique id; once the user is deleted the
    policy shows that id (GetKeyPolicy), and a new user of the same name is someone else."""
    app = user(svc, "app")
    kid = new_key(svc)
    svc.put_key_policy(key_id=kid, policy=doc(root_stmt(), stmt(Principal=aws(app))))
    svc.delete_principal(arn=app)
    shown = svc.get_key_policy(key_id=kid)["Policy"]
    assert app not in shown and '"AIDA' in shown
    user(svc, "app")
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=app), app, A)


def test_put_key_policy_needs_permission_to_put_key_policy(svc: KeyService) -> None:
    """AWS rule: PutKeyPolicy is itself authorized by the key policy: a user allowed only
    kms:Encrypt by IAM cannot change the key policy."""
    kid = new_key(svc)
    app = user(svc, "app")
    attach(svc, app, stmt(Action="kms:Encrypt"))
    svc.encrypt(key_id=kid, plaintext=b"p", principal=app)
    with pytest.raises(AccessDeniedException, match="kms:PutKeyPolicy"):
        svc.put_key_policy(key_id=kid, policy=doc(root_stmt()), principal=app)


def test_a_deleted_grantee_takes_its_grants_with_it(svc: KeyService) -> None:
    """A grant names its grantee; once the grantee is deleted, a principal created again under
    the same name does not inherit the grant (AWS ties it to the unique id)."""
    app = user(svc, "app")
    kid = new_key(svc)
    svc.create_grant(key_id=kid, grantee_principal=app, operations=["Encrypt"])
    svc.encrypt(key_id=kid, plaintext=b"p", principal=app)
    svc.delete_principal(arn=app)
    assert svc.list_grants(key_id=kid)["Grants"] == []
    user(svc, "app")
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=app), app, A)
