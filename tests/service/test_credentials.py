"""Access keys (IAM) and role sessions (STS AssumeRole) in the embedded KMS (issue 11).

AWS rules under test: a secret access key is returned once, by CreateAccessKey / AssumeRole,
and stored only sealed; keys are managed by the account root or under an ``iam:`` identity
policy, never from another account; AssumeRole follows the role's trust policy (naming a
principal trusts it; naming an account delegates to that account's IAM) with DurationSeconds
900..MaxSessionDuration and at most one hour for role chaining.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from envelope.service import KeyService
from envelope.service.errors import (
    AccessDeniedException,
    AlreadyExistsException,
    LimitExceededException,
    MalformedPolicyDocumentException,
    NotFoundException,
    TamperedStoreError,
    ValidationException,
)

from .access_helpers import (
    ROOT_A,
    ROOT_B,
    A,
    B,
    assert_denied,
    attach,
    aws,
    doc,
    dump,
    role,
    session,
    stmt,
    user,
)
from .conftest import FakeClock


def trust(*principals: str, **extra: Any) -> str:
    statement = {"Effect": "Allow", "Principal": aws(*principals), "Action": "sts:AssumeRole"}
    return doc({**statement, **extra})


def new_key_of(svc: KeyService, arn: str, principal: str = ROOT_A) -> dict[str, Any]:
    out: dict[str, Any] = svc.create_access_key(user_arn=arn, principal=principal)["AccessKey"]
    return out


# -- access keys --------------------------------------------------------------------------


def test_create_access_key_shape_and_secret_shown_once(svc: KeyService) -> None:
    alice = user(svc, "alice")
    key = new_key_of(svc, alice)
    assert key["AccessKeyId"].startswith("AKIA") and len(key["AccessKeyId"]) == 20
    assert len(key["SecretAccessKey"]) == 40
    assert key["Status"] == "Active" and key["UserName"] == "alice"
    listed = svc.list_access_keys(user_arn=alice)
    assert listed["AccessKeyMetadata"] == [
        {k: key[k] for k in ("UserName", "AccessKeyId", "Status", "CreateDate")}
    ]
    # the secret is stored sealed: not in any row of the store, in any encoding
    rows = repr(dump(svc))
    assert key["SecretAccessKey"] not in rows
    resolved = svc.resolve_credentials(key["AccessKeyId"], svc.now())
    assert resolved is not None and resolved.secret == key["SecretAccessKey"]
    assert resolved.principal_arn == alice and resolved.active
    assert key["SecretAccessKey"] not in repr(resolved)


def test_secrets_never_in_audit_records(svc: KeyService) -> None:
    alice = user(svc, "alice")
    key = new_key_of(svc, alice)
    r = role(svc, "reader")
    creds = svc.assume_role(role_arn=r, role_session_name="s1")["Credentials"]
    svc.update_access_key(access_key_id=key["AccessKeyId"], status="Inactive")
    svc.delete_access_key(access_key_id=key["AccessKeyId"])
    conn = sqlite3.connect(str(svc.store.path))
    try:
        audit = "\n".join(str(b) for (b,) in conn.execute("SELECT body FROM audit"))
    finally:
        conn.close()
    for secret in (key["SecretAccessKey"], creds["SecretAccessKey"], creds["SessionToken"]):
        assert secret not in audit
    # but the records name the keys, as CloudTrail does
    assert key["AccessKeyId"] in audit and creds["AccessKeyId"] in audit
    assert [r["operation"] for r in svc.audit_tail(3)] == [
        "sts:AssumeRole",
        "iam:UpdateAccessKey",
        "iam:DeleteAccessKey",
    ]


def test_at_most_two_keys_per_user(svc: KeyService) -> None:
    alice = user(svc, "alice")
    new_key_of(svc, alice)
    new_key_of(svc, alice)
    with pytest.raises(LimitExceededException, match="AccessKeysPerUser: 2"):
        new_key_of(svc, alice)


def test_update_and_delete(svc: KeyService) -> None:
    alice = user(svc, "alice")
    kid = new_key_of(svc, alice)["AccessKeyId"]
    svc.update_access_key(access_key_id=kid, status="Inactive")
    assert svc.list_access_keys(user_arn=alice)["AccessKeyMetadata"][0]["Status"] == "Inactive"
    resolved = svc.resolve_credentials(kid, svc.now())
    assert resolved is not None and not resolved.active
    with pytest.raises(ValidationException):
        svc.update_access_key(access_key_id=kid, status="Disabled")
    svc.delete_access_key(access_key_id=kid)
    assert svc.list_access_keys(user_arn=alice)["AccessKeyMetadata"] == []
    assert svc.resolve_credentials(kid, svc.now()) is None
    with pytest.raises(NotFoundException, match=kid):
        svc.delete_access_key(access_key_id=kid)


def test_key_of_another_user_named_is_not_found(svc: KeyService) -> None:
    alice, bob = user(svc, "alice"), user(svc, "bob")
    kid = new_key_of(svc, alice)["AccessKeyId"]
    with pytest.raises(NotFoundException):
        svc.delete_access_key(access_key_id=kid, user_arn=bob)
    assert svc.resolve_credentials(kid, svc.now()) is not None


def test_iam_policy_lets_a_user_manage_keys(svc: KeyService) -> None:
    """AWS rule: iam:CreateAccessKey etc. on the user's ARN, e.g. a user's own keys."""
    alice = user(svc, "alice")
    attach(
        svc,
        alice,
        stmt(
            Action=["iam:CreateAccessKey", "iam:ListAccessKeys", "iam:DeleteAccessKey"],
            Resource=alice,
        ),
    )
    kid = svc.create_access_key(principal=alice)["AccessKey"]["AccessKeyId"]  # herself
    assert svc.list_access_keys(principal=alice)["AccessKeyMetadata"][0]["AccessKeyId"] == kid
    bob = user(svc, "bob")
    assert_denied(svc, lambda: svc.create_access_key(user_arn=bob, principal=alice), alice, A)
    # UpdateAccessKey is not in her policy
    assert_denied(
        svc,
        lambda: svc.update_access_key(access_key_id=kid, status="Inactive", principal=alice),
        alice,
        A,
    )
    svc.delete_access_key(access_key_id=kid, principal=alice)


def test_never_another_account(svc: KeyService) -> None:
    """AWS rule: IAM is per account: another account's root or iam:* admin reaches nothing."""
    alice = user(svc, "alice")
    kid = new_key_of(svc, alice)["AccessKeyId"]
    admin_b = user(svc, "admin", account=B)
    attach(svc, admin_b, stmt(Action="iam:*"))
    for caller in (ROOT_B, admin_b):
        assert_denied(svc, lambda c=caller: svc.create_access_key(user_arn=alice, principal=c),
                      caller, B)
        assert_denied(svc, lambda c=caller: svc.list_access_keys(user_arn=alice, principal=c),
                      caller, B)
        assert_denied(
            svc,
            lambda c=caller: svc.delete_access_key(access_key_id=kid, user_arn=alice, principal=c),
            caller,
            B,
        )
        # without the user, the key is looked up in the caller's own account: not there
        before = dump(svc)
        with pytest.raises(NotFoundException):
            svc.update_access_key(access_key_id=kid, status="Inactive", principal=caller)
        assert dump(svc) == before


def test_root_keys_belong_to_the_root(svc: KeyService) -> None:
    """AWS rule: only the root manages the root's access keys; no IAM policy delegates it."""
    key = svc.create_access_key(principal=ROOT_A)["AccessKey"]
    assert key["UserName"] == "root"
    resolved = svc.resolve_credentials(key["AccessKeyId"], svc.now())
    assert resolved is not None and resolved.principal_arn == ROOT_A
    admin = user(svc, "admin")
    attach(svc, admin, stmt(Action="iam:*"))
    with pytest.raises(AccessDeniedException):
        svc.create_access_key(user_arn=ROOT_A, principal=admin)
    with pytest.raises(AccessDeniedException):
        svc.delete_access_key(access_key_id=key["AccessKeyId"], principal=admin)
    assert svc.resolve_credentials(key["AccessKeyId"], svc.now()) is not None


def test_roles_do_not_get_access_keys(svc: KeyService) -> None:
    r = role(svc, "r")
    with pytest.raises(ValidationException, match="assume-role"):
        svc.create_access_key(user_arn=r)


def test_tampered_key_row_is_refused(svc: KeyService) -> None:
    """Editing the file to move a key to the root (or re-activate it) is tampering."""
    alice = user(svc, "alice")
    kid = new_key_of(svc, alice)["AccessKeyId"]
    svc.update_access_key(access_key_id=kid, status="Inactive")
    conn = sqlite3.connect(str(svc.store.path))
    try:
        conn.execute(
            "UPDATE access_keys SET body=replace(body, '\"Inactive\"', '\"Active\"')"
        )
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(TamperedStoreError):
        svc.resolve_credentials(kid, svc.now())


def test_deleting_a_user_ends_its_keys(svc: KeyService) -> None:
    alice = user(svc, "alice")
    kid = new_key_of(svc, alice)["AccessKeyId"]
    svc.delete_principal(arn=alice)
    assert svc.resolve_credentials(kid, svc.now()) is None
    user(svc, "alice")
    assert svc.resolve_credentials(kid, svc.now()) is None


# -- AssumeRole ---------------------------------------------------------------------------


def test_assume_role_shape(svc: KeyService, clock: FakeClock) -> None:
    r = role(svc, "reader")
    out = svc.assume_role(role_arn=r, role_session_name="job-7", duration_seconds=1800)
    creds, who = out["Credentials"], out["AssumedRoleUser"]
    assert creds["AccessKeyId"].startswith("ASIA") and len(creds["SecretAccessKey"]) == 40
    assert creds["Expiration"] == clock.now + 1800
    assert who["Arn"] == session(r, "job-7")
    rec = svc.audit_tail(1)[0]
    assert rec["operation"] == "sts:AssumeRole" and rec["decision"] == "allowed"
    # what allowed it is the role's trust policy, not a key policy (no key is involved)
    assert rec["matched"] == "trust-policy:#0"
    assert rec["params"]["AccessKeyId"] == creds["AccessKeyId"]
    assert rec["key_id"] == r
    resolved = svc.resolve_credentials(creds["AccessKeyId"], clock.now)
    assert resolved is not None and resolved.principal_arn == who["Arn"]
    assert resolved.expires == creds["Expiration"] and resolved.session_token_hash
    role_id = svc.get_principal(arn=r)["Role"]["RoleId"]
    assert who["AssumedRoleId"] == f"{role_id}:job-7"


def test_names_are_unique_in_an_account_whatever_the_path_and_case(svc: KeyService) -> None:
    """IAM: a role (or user) name is unique in its account, on any path, in any case."""
    role(svc, "Ops")
    for name, path in (("Ops", "/sandbox/"), ("OPS", "/"), ("ops", "/a/b/")):
        with pytest.raises(AlreadyExistsException, match="already exists"):
            svc.create_role(role_name=name, path=path, principal=ROOT_A)
    user(svc, "bob")
    with pytest.raises(AlreadyExistsException):
        svc.create_user(user_name="Bob", principal=ROOT_A)
    role(svc, "bob")  # a role may share a user's name
    role(svc, "Ops", account=B)  # and another account's role a name


def test_inline_policies_are_held_to_iams_aggregate_quotas(svc: KeyService) -> None:
    """IAM: a user's inline policies total at most 2,048 characters, a role's 10,240, white
    space not counted (32 KiB each were taken; review)."""
    alice = user(svc, "alice")

    def sized(n: int) -> str:  # a valid policy of about n characters, spaced out
        sid = "S" * max(1, n - 100)
        return json.dumps({"Version": "2012-10-17", "Statement": [stmt(Sid=sid)]}, indent=8)

    svc.put_principal_policy(arn=alice, policy_name="a", policy_document=sized(1200))
    with pytest.raises(LimitExceededException, match="2048"):
        svc.put_principal_policy(arn=alice, policy_name="b", policy_document=sized(1200))
    svc.put_principal_policy(arn=alice, policy_name="a", policy_document=sized(1900))  # replaced
    r = role(svc, "worker")
    for name in "abcd":
        svc.put_principal_policy(arn=r, policy_name=name, policy_document=sized(2000))
    with pytest.raises(LimitExceededException, match="10240"):
        svc.put_principal_policy(arn=r, policy_name="e", policy_document=sized(2500))


def test_a_session_acts_as_its_role_with_a_path(svc: KeyService) -> None:
    """A session ARN names its role without the path: the service finds the role by name.
    It was evaluated as the path-less ``role/Ops`` (review): with another role's powers when
    one existed, refused everything when none did."""
    kid = svc.create_key(principal=ROOT_A)["KeyMetadata"]["Arn"]
    weak = role(svc, "Ops", path="/sandbox/")
    assert weak == f"arn:aws:iam::{A}:role/sandbox/Ops"
    attach(svc, weak, stmt(Action="kms:DescribeKey"))
    out = svc.assume_role(role_arn=weak, role_session_name="x1", principal=ROOT_A)
    sess = out["AssumedRoleUser"]["Arn"]
    assert sess == f"arn:aws:sts::{A}:assumed-role/Ops/x1"
    svc.describe_key(key_id=kid, principal=sess)  # its role's policy applies
    before = dump(svc)
    with pytest.raises(AccessDeniedException):
        svc.schedule_key_deletion(key_id=kid, principal=sess)
    with pytest.raises(AccessDeniedException):
        svc.disable_key(key_id=kid, principal=sess)
    assert dump(svc) == before
    decision = svc.explain_access(action="kms:DescribeKey", key_id=kid, principal=sess)
    assert decision["Allowed"], decision


def test_a_session_follows_its_role_made_again_on_another_path(svc: KeyService) -> None:
    """The role a session name resolves to is remembered until a principal is made or
    deleted: a role made again elsewhere is the one a later call finds."""
    kid = svc.create_key(principal=ROOT_A)["KeyMetadata"]["Arn"]
    first = role(svc, "Ops", path="/a/")
    attach(svc, first, stmt(Action="kms:DescribeKey"))
    sess = session(first)
    svc.describe_key(key_id=kid, principal=sess)
    svc.delete_principal(arn=first)
    role(svc, "Ops", path="/b/")  # no policy
    with pytest.raises(AccessDeniedException):
        svc.describe_key(key_id=kid, principal=sess)


def test_a_key_policy_names_a_roles_sessions_by_its_path(svc: KeyService) -> None:
    r = role(svc, "app", path="/teams/data/")
    policy = doc(
        stmt(Sid="root", Principal=aws(ROOT_A)),
        stmt(Sid="app", Principal=aws(r), Action="kms:Encrypt"),
    )
    kid = svc.create_key(policy=policy, principal=ROOT_A)["KeyMetadata"]["Arn"]
    sess = svc.assume_role(role_arn=r, role_session_name="j1", principal=ROOT_A)
    who = sess["AssumedRoleUser"]["Arn"]
    blob = svc.encrypt(key_id=kid, plaintext=b"x", principal=who)["CiphertextBlob"]
    with pytest.raises(AccessDeniedException):
        svc.decrypt(ciphertext_blob=blob, principal=who)


def test_a_name_two_old_roles_share_is_refused(svc: KeyService) -> None:
    """Stores made before names were unique may hold two roles of one name: their sessions
    are refused (which role is meant cannot be told), not given either role's powers."""
    strong = role(svc, "Ops")
    attach(svc, strong, stmt(Action="kms:*"))
    kid = svc.create_key(principal=ROOT_A)["KeyMetadata"]["Arn"]
    old = svc.get_principal(arn=strong)["Role"]
    with svc.store.write() as conn:  # a second "Ops", written as an old store could hold it
        body = {**svc._principal_row(conn, strong), "Arn": f"arn:aws:iam::{A}:role/x/Ops"}
        body["Id"] = "AROA" + "X" * 17
        svc._write_principal(conn, body)
    assert old["Arn"] == strong
    with pytest.raises(AccessDeniedException, match="2 roles"):
        svc.describe_key(key_id=kid, principal=session(strong))


def test_default_trust_delegates_to_the_accounts_iam(svc: KeyService) -> None:
    """AWS rule: a trust policy naming the account root lets identities of that account whose
    IAM policies allow sts:AssumeRole on the role (and nobody else)."""
    r = role(svc, "reader")
    alice, bob = user(svc, "alice"), user(svc, "bob")
    attach(svc, alice, stmt(Action="sts:AssumeRole", Resource=r))
    assert svc.assume_role(role_arn=r, role_session_name="a1", principal=alice)
    err = assert_denied(
        svc, lambda: svc.assume_role(role_arn=r, role_session_name="b1", principal=bob), bob, A
    )
    assert f"sts:AssumeRole on resource: {r}" in str(err)
    stranger = user(svc, "stranger", account=B)
    attach(svc, stranger, stmt(Action="sts:AssumeRole"))
    assert_denied(
        svc,
        lambda: svc.assume_role(role_arn=r, role_session_name="s1", principal=stranger),
        stranger,
        B,
    )


def test_trust_naming_a_user_needs_no_identity_policy(svc: KeyService) -> None:
    """AWS rule: a role's trust policy naming a same-account user is enough on its own."""
    bob = user(svc, "bob")
    r = role(svc, "r", assume_role_policy_document=trust(bob))
    assert svc.assume_role(role_arn=r, role_session_name="b1", principal=bob)
    carol = user(svc, "carol")
    attach(svc, carol, stmt(Action="sts:AssumeRole"))
    assert_denied(
        svc, lambda: svc.assume_role(role_arn=r, role_session_name="c1", principal=carol), carol, A
    )


def test_cross_account_needs_both_sides(svc: KeyService) -> None:
    """AWS rule: across accounts the trust policy must name the caller (or its account) AND
    the caller's own IAM must allow sts:AssumeRole."""
    stranger = user(svc, "stranger", account=B)
    r = role(svc, "shared", assume_role_policy_document=trust(ROOT_B))
    assert_denied(
        svc,
        lambda: svc.assume_role(role_arn=r, role_session_name="x1", principal=stranger),
        stranger,
        B,
    )
    attach(svc, stranger, stmt(Action="sts:AssumeRole", Resource=r))
    out = svc.assume_role(role_arn=r, role_session_name="x1", principal=stranger)
    assert out["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{A}:assumed-role/shared/x1"


def test_deny_in_trust_policy_wins(svc: KeyService) -> None:
    alice = user(svc, "alice")
    attach(svc, alice, stmt(Action="sts:AssumeRole"))
    policy = doc(
        {"Effect": "Allow", "Principal": aws(ROOT_A), "Action": "sts:AssumeRole"},
        {"Effect": "Deny", "Principal": aws(alice), "Action": "sts:AssumeRole"},
    )
    r = role(svc, "r", assume_role_policy_document=policy)
    assert_denied(
        svc, lambda: svc.assume_role(role_arn=r, role_session_name="a1", principal=alice), alice, A
    )


def test_missing_role_is_access_denied(svc: KeyService) -> None:
    """AWS answers AccessDenied, not NoSuchEntity, so roles cannot be probed."""
    ghost = f"arn:aws:iam::{A}:role/ghost"
    alice = user(svc, "alice")
    attach(svc, alice, stmt(Action="sts:AssumeRole"))
    err = assert_denied(
        svc, lambda: svc.assume_role(role_arn=ghost, role_session_name="a1", principal=alice),
        alice, A,
    )
    assert "does not exist" not in str(err)
    assert svc.audit_tail(1)[0]["reason"]


@pytest.mark.parametrize("seconds", [899, 43201, "3600", None])
def test_duration_bounds(svc: KeyService, seconds: Any) -> None:
    r = role(svc, "r", max_session_duration=43200)
    with pytest.raises(ValidationException, match="DurationSeconds"):
        svc.assume_role(role_arn=r, role_session_name="s1", duration_seconds=seconds)


def test_duration_up_to_the_roles_maximum(svc: KeyService, clock: FakeClock) -> None:
    r = role(svc, "r")  # MaxSessionDuration defaults to one hour, as in IAM
    assert svc.get_principal(arn=r)["Role"]["MaxSessionDuration"] == 3600
    with pytest.raises(ValidationException, match="MaxSessionDuration"):
        svc.assume_role(role_arn=r, role_session_name="s1", duration_seconds=3601)
    long = role(svc, "long", max_session_duration=43200)
    out = svc.assume_role(role_arn=long, role_session_name="s1", duration_seconds=43200)
    assert out["Credentials"]["Expiration"] == clock.now + 43200
    assert svc.assume_role(role_arn=r, role_session_name="s2", duration_seconds=900)


def test_role_chaining_is_limited_to_one_hour(svc: KeyService) -> None:
    first = role(svc, "first")
    second = role(svc, "second", max_session_duration=43200)
    chained = session(first, "s1")
    attach(svc, first, stmt(Action="sts:AssumeRole", Resource=second))
    with pytest.raises(ValidationException, match="role chaining"):
        svc.assume_role(
            role_arn=second, role_session_name="s2", duration_seconds=7200, principal=chained
        )
    out = svc.assume_role(
        role_arn=second, role_session_name="s2", duration_seconds=3600, principal=chained
    )
    assert out["AssumedRoleUser"]["Arn"] == session(second, "s2")


@pytest.mark.parametrize("name", ["x", "a" * 65, "bad name", "sl/ash"])
def test_session_name_rules(svc: KeyService, name: str) -> None:
    r = role(svc, "r")
    with pytest.raises(ValidationException, match="RoleSessionName"):
        svc.assume_role(role_arn=r, role_session_name=name)


def test_trust_policy_rules(svc: KeyService) -> None:
    """IAM rules for AssumeRolePolicyDocument: sts actions, no Resource, real principals."""
    bad = [
        doc({"Effect": "Allow", "Principal": aws(ROOT_A), "Action": "kms:Decrypt"}),
        doc(
            {"Effect": "Allow", "Principal": aws(ROOT_A), "Action": "sts:AssumeRole",
             "Resource": "*"}
        ),
        doc({"Effect": "Allow", "Action": "sts:AssumeRole"}),
        trust(f"arn:aws:iam::{A}:user/nobody-here"),
        "{not json",
        "[" * 1000 + "]" * 1000,  # nested past the JSON parser's stack (was a RecursionError)
    ]
    for policy in bad:
        with pytest.raises(MalformedPolicyDocumentException):
            role(svc, "r", assume_role_policy_document=policy)
    with pytest.raises(LimitExceededException, match="ACLSizePerRole"):
        role(svc, "r", assume_role_policy_document=trust(ROOT_A, Sid="x" * 2100))
    assert svc.list_principals(kind="role")["Principals"] == []


def test_update_assume_role_policy(svc: KeyService) -> None:
    alice = user(svc, "alice")
    r = role(svc, "r")
    assert_denied(
        svc, lambda: svc.assume_role(role_arn=r, role_session_name="a1", principal=alice), alice, A
    )
    svc.update_assume_role_policy(role_arn=r, policy_document=trust(alice))
    assert svc.get_principal(arn=r)["Role"]["AssumeRolePolicyDocument"] == trust(alice)
    assert svc.assume_role(role_arn=r, role_session_name="a1", principal=alice)


def test_deleting_a_role_ends_its_sessions(svc: KeyService) -> None:
    r = role(svc, "r")
    kid = svc.assume_role(role_arn=r, role_session_name="s1")["Credentials"]["AccessKeyId"]
    assert svc.resolve_credentials(kid, svc.now()) is not None
    svc.delete_principal(arn=r)
    assert svc.resolve_credentials(kid, svc.now()) is None


def test_expired_sessions_are_purged_after_a_day(svc: KeyService, clock: FakeClock) -> None:
    r = role(svc, "r")
    kid = svc.assume_role(role_arn=r, role_session_name="s1", duration_seconds=900)[
        "Credentials"
    ]["AccessKeyId"]
    clock.advance(901)
    resolved = svc.resolve_credentials(kid, clock.now)
    assert resolved is not None and resolved.expires is not None and resolved.expires < clock.now
    clock.advance(days=1.1)
    svc.assume_role(role_arn=r, role_session_name="s2")
    assert svc.resolve_credentials(kid, clock.now) is None


def test_session_acts_with_the_roles_policies(svc: KeyService) -> None:
    """The point of a session: KMS calls as the session are authorized by the role's policy."""
    r = role(svc, "r")
    attach(svc, r, stmt(Action="kms:CreateKey"))
    who = svc.assume_role(role_arn=r, role_session_name="s1")["AssumedRoleUser"]["Arn"]
    svc.create_key(principal=who)
    assert_denied(svc, lambda: svc.list_keys(principal=who), who, A)
