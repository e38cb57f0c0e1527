"""Policy variables through the service, with real users, roles, tags and the decision memo:
one group policy that lets every user use only the keys tagged with its own name, and
``aws:userid`` as AWS gives it (a user's AIDA id, a session's ``AROA...:session``, the root's
account id). Before variables were expanded every call below that should pass was denied."""

from __future__ import annotations

import re

import pytest

from envelope.service import KeyService
from envelope.service.errors import AccessDeniedException

from .access_helpers import ROOT_A, A, attach, aws, doc, role, root_stmt, session, stmt, user
from .conftest import new_key


def _tagged(svc: KeyService, owner: str) -> str:
    return new_key(svc, tags=[{"TagKey": "owner", "TagValue": owner}])


def _encrypt(svc: KeyService, kid: str, who: str) -> None:
    svc.encrypt(key_id=kid, plaintext=b"p", principal=who)


def test_one_policy_gives_each_user_its_own_keys(svc: KeyService) -> None:
    own_keys = stmt(
        Action="kms:Encrypt",
        Resource="*",
        Condition={"StringEquals": {"aws:ResourceTag/owner": "${aws:username}"}},
    )
    alice, bob = user(svc, "alice"), user(svc, "bob")
    for who in (alice, bob):
        attach(svc, who, own_keys)
    alices, bobs = _tagged(svc, "alice"), _tagged(svc, "bob")
    _encrypt(svc, alices, alice)
    _encrypt(svc, bobs, bob)
    with pytest.raises(AccessDeniedException):
        _encrypt(svc, bobs, alice)
    # the remembered decision for alice on her key does not outlive the tag it read
    svc.tag_resource(key_id=alices, tags=[{"TagKey": "owner", "TagValue": "bob"}])
    with pytest.raises(AccessDeniedException):
        _encrypt(svc, alices, alice)
    _encrypt(svc, alices, bob)


def test_resource_variable_from_a_principal_tag(svc: KeyService) -> None:
    kid = new_key(svc)
    other = new_key(svc)
    app = user(svc, "app", tags=[{"Key": "key", "Value": kid}])
    attach(
        svc, app, stmt(Action="kms:Encrypt", Resource="arn:aws:kms:*:*:key/${aws:PrincipalTag/key}")
    )
    _encrypt(svc, kid, app)
    with pytest.raises(AccessDeniedException):
        _encrypt(svc, other, app)


def test_aws_userid_for_users_sessions_and_the_root(svc: KeyService) -> None:
    kid = new_key(svc)
    alice = user(svc, "alice")
    jobs = role(svc, "jobs")
    for who in (alice, jobs):
        # allowed only when aws:userid has the shape AWS gives that kind of caller
        attach(
            svc,
            who,
            stmt(
                Action="kms:Encrypt",
                Resource="*",
                Condition={"StringLike": {"aws:userid": ["AIDA*", "AROA*:nightly"]}},
            ),
        )
    _encrypt(svc, kid, alice)
    _encrypt(svc, kid, session(jobs, "nightly"))
    with pytest.raises(AccessDeniedException):
        _encrypt(svc, kid, session(jobs, "adhoc"))
    alice_id = svc.get_principal(arn=alice, principal=f"arn:aws:iam::{A}:root")["User"]["UserId"]
    assert re.fullmatch(r"AIDA[A-Z0-9]{16,32}", alice_id)
    assert re.fullmatch(r"AIDA[A-Z0-9]{16,32}", alice_id)
    # the exact id: a Deny naming alice's id stops her and nobody else
    deny = stmt(
        "Deny",
        Action="kms:Encrypt",
        Resource="*",
        Condition={"StringEquals": {"aws:userid": alice_id}},
    )
    attach(svc, alice, deny, name="deny")
    with pytest.raises(AccessDeniedException):
        _encrypt(svc, kid, alice)
    _encrypt(svc, kid, session(jobs, "nightly"))

    # the root's aws:userid is its account id
    root_deny = stmt(
        "Deny",
        Principal=aws(ROOT_A),
        Action="kms:Encrypt",
        Condition={"StringEquals": {"aws:userid": A}},
    )
    svc.put_key_policy(key_id=kid, policy=doc(root_stmt(), root_deny), principal=ROOT_A)
    with pytest.raises(AccessDeniedException):
        _encrypt(svc, kid, ROOT_A)


def test_a_2008_policy_keeps_variables_literal(svc: KeyService) -> None:
    alice = user(svc, "alice")
    text = doc(
        stmt(
            Action="kms:Encrypt",
            Resource="*",
            Condition={"StringEquals": {"aws:ResourceTag/owner": "${aws:username}"}},
        )
    ).replace("2012-10-17", "2008-10-17")
    svc.put_principal_policy(
        arn=alice, policy_name="old", policy_document=text, principal=f"arn:aws:iam::{A}:root"
    )
    with pytest.raises(AccessDeniedException):
        _encrypt(svc, _tagged(svc, "alice"), alice)
    _encrypt(svc, _tagged(svc, "${aws:username}"), alice)


def test_a_tag_guard_in_the_key_policy_denies_a_caller_without_the_tag(svc: KeyService) -> None:
    """The key policy denies Encrypt unless the key's dept tag is the caller's; every user has
    an allow-all identity policy. A user with no dept tag must stay denied (it was let through
    while an unresolved variable made the Deny not apply)."""
    kid = new_key(svc, tags=[{"TagKey": "dept", "TagValue": "finance"}])
    guard = stmt(
        "Deny",
        Principal=aws("*"),
        Action="kms:Encrypt",
        Condition={"StringNotEquals": {"aws:ResourceTag/dept": "${aws:PrincipalTag/dept}"}},
    )
    svc.put_key_policy(key_id=kid, policy=doc(root_stmt(), guard), principal=ROOT_A)
    finance = user(svc, "fin", tags=[{"Key": "dept", "Value": "finance"}])
    hr = user(svc, "hr", tags=[{"Key": "dept", "Value": "hr"}])
    nobody = user(svc, "untagged")
    for who in (finance, hr, nobody):
        attach(svc, who, stmt(Action="kms:*", Resource="*"))
    _encrypt(svc, kid, finance)
    for who in (hr, nobody):
        with pytest.raises(AccessDeniedException):
            _encrypt(svc, kid, who)
