"""Accounts, IAM, AWS managed keys, condition keys filled by the service, and tampering
(issue 10), against a real SQLite store holding two accounts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from envelope.service import KeyService, RequestContext
from envelope.service.errors import (
    AccessDeniedException,
    NotFoundException,
    TamperedStoreError,
)

from .access_helpers import (
    ROOT_A,
    ROOT_B,
    VIA,
    A,
    B,
    assert_denied,
    attach,
    aws,
    doc,
    role,
    root_stmt,
    session,
    stmt,
    user,
)
from .conftest import DAY, FakeClock, new_key

VIA_CTX = RequestContext(via_service=VIA)


def ok(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except AccessDeniedException:
        return False
    return True


# -- cross-account ----------------------------------------------------------------------------


def test_cross_account_needs_key_policy_and_callers_iam(svc: KeyService) -> None:
    """AWS rule: a principal of another account may use a key only if the key policy allows
    its account (or it) AND its own account's IAM policy allows it; either side alone fails."""
    kid = svc.arn(new_key(svc))
    blob = svc.encrypt(key_id=kid, plaintext=b"p")["CiphertextBlob"]
    carol = user(svc, "carol", account=B)

    def decrypt() -> Any:
        return svc.decrypt(ciphertext_blob=blob, principal=carol)

    assert_denied(svc, decrypt, carol, B)  # neither
    attach(svc, carol, stmt(Action="kms:Decrypt", Resource=kid))
    assert_denied(svc, decrypt, carol, B)  # IAM only
    svc.put_key_policy(
        key_id=kid, policy=doc(root_stmt(), stmt(Sid="B", Principal=aws(B), Action="kms:Decrypt"))
    )
    assert decrypt()["Plaintext"] == b"p"  # both
    svc.delete_principal_policy(arn=carol, policy_name="p", principal=ROOT_B)
    assert_denied(svc, decrypt, carol, B)  # key policy only
    # the other account's root needs no IAM policy, only the key policy
    assert svc.decrypt(ciphertext_blob=blob, principal=ROOT_B)["Plaintext"] == b"p"
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=ROOT_B), ROOT_B, B)


def test_another_account_may_only_use_a_key_never_manage_it(svc: KeyService) -> None:
    """AWS rule: whatever the key policy says, another account may perform only the
    cryptographic operations and CreateGrant, DescribeKey, GetKeyRotationStatus,
    GetPublicKey, ListGrants, RetireGrant and RevokeGrant on a key: a policy giving it
    kms:* lets it use the key, not disable, delete, re-policy, tag or describe its usage."""
    kid = svc.arn(new_key(svc))
    svc.put_key_policy(
        key_id=kid, policy=doc(root_stmt(), stmt(Sid="B", Principal=aws(ROOT_B), Action="kms:*"))
    )
    blob = svc.encrypt(key_id=kid, plaintext=b"p", principal=ROOT_B)["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=blob, principal=ROOT_B)["Plaintext"] == b"p"
    assert svc.describe_key(key_id=kid, principal=ROOT_B)["KeyMetadata"]["Arn"] == kid
    svc.get_key_rotation_status(key_id=kid, principal=ROOT_B)
    svc.create_grant(key_id=kid, grantee_principal=ROOT_B, operations=["Decrypt"], principal=ROOT_B)
    svc.list_grants(key_id=kid, principal=ROOT_B)
    for call in (
        lambda: svc.disable_key(key_id=kid, principal=ROOT_B),
        lambda: svc.schedule_key_deletion(key_id=kid, principal=ROOT_B),
        lambda: svc.put_key_policy(key_id=kid, policy=doc(root_stmt(B)), principal=ROOT_B),
        lambda: svc.get_key_policy(key_id=kid, principal=ROOT_B),
        lambda: svc.tag_resource(
            key_id=kid, tags=[{"TagKey": "t", "TagValue": "v"}], principal=ROOT_B
        ),
        lambda: svc.update_key_description(key_id=kid, description="x", principal=ROOT_B),
        lambda: svc.enable_key_rotation(key_id=kid, principal=ROOT_B),
        lambda: svc.list_resource_tags(key_id=kid, principal=ROOT_B),
        lambda: svc.get_key_last_usage(key_id=kid, principal=ROOT_B),
    ):
        denied = assert_denied(svc, call, ROOT_B, B)
        assert "another account" in str(denied)
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "Enabled"
    why = svc.explain_access(principal=ROOT_B, action="kms:DisableKey", key_id=kid)
    assert why["Allowed"] is False


def test_another_accounts_key_is_reachable_only_by_arn(svc: KeyService) -> None:
    """AWS rule: a key id or alias name resolves in the caller's account; another account's
    key is named by its key ARN (or alias ARN), otherwise it is NotFound."""
    kid = new_key(svc)
    svc.create_alias(alias_name="alias/shared", target_key_id=kid)
    svc.put_key_policy(key_id=kid, policy=doc(root_stmt(), stmt(Sid="B", Principal=aws(ROOT_B))))
    for ref in (kid, "alias/shared"):
        with pytest.raises(NotFoundException):
            svc.describe_key(key_id=ref, principal=ROOT_B)
    for ref in (svc.arn(kid), f"arn:aws:kms:us-east-1:{A}:alias/shared"):
        meta = svc.describe_key(key_id=ref, principal=ROOT_B)["KeyMetadata"]
        assert meta["KeyId"] == kid and meta["AWSAccountId"] == A


def test_list_keys_and_aliases_show_only_the_callers_account(svc: KeyService) -> None:
    """AWS rule: ListKeys and ListAliases list the caller's account only."""
    ka = new_key(svc)
    svc.create_alias(alias_name="alias/a", target_key_id=ka)
    kb = new_key(svc, principal=ROOT_B)
    svc.create_alias(alias_name="alias/b", target_key_id=kb, principal=ROOT_B)
    assert svc.describe_key(key_id=kb, principal=ROOT_B)["KeyMetadata"]["AWSAccountId"] == B
    assert [k["KeyId"] for k in svc.list_keys()["Keys"]] == [ka]
    assert [k["KeyId"] for k in svc.list_keys(principal=ROOT_B)["Keys"]] == [kb]
    assert [a["AliasName"] for a in svc.list_aliases()["Aliases"]] == ["alias/a"]
    b_aliases = svc.list_aliases(principal=ROOT_B)["Aliases"]
    assert [(a["AliasName"], a["AliasArn"]) for a in b_aliases] == [
        ("alias/b", f"arn:aws:kms:us-east-1:{B}:alias/b")
    ]


# -- AWS managed keys -------------------------------------------------------------------------


def test_aws_managed_key_only_via_the_service_by_the_same_account(svc: KeyService) -> None:
    """AWS rule: an AWS managed key (alias/aws/<service>) is usable only through its service
    (kms:ViaService) by principals of its account; never directly, never from another account
    (even through the service); its policy, state, deletion and rotation cannot be changed."""
    out = svc.encrypt(key_id="alias/aws/envelope", plaintext=b"p", context=VIA_CTX)
    arn = out["KeyId"]
    assert svc.describe_key(key_id=arn)["KeyMetadata"]["KeyManager"] == "AWS"
    assert_denied(svc, lambda: svc.encrypt(key_id="alias/aws/envelope", plaintext=b"p"), ROOT_A, A)
    blob = out["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=blob, context=VIA_CTX)["Plaintext"] == b"p"
    carol = user(svc, "carol", account=B)
    attach(svc, carol, stmt(Action="kms:*"))
    for who in (ROOT_B, carol):
        assert_denied(
            svc,
            lambda w=who: svc.decrypt(ciphertext_blob=blob, principal=w, context=VIA_CTX),
            who,
            B,
        )
        assert_denied(
            svc,
            lambda w=who: svc.encrypt(key_id=arn, plaintext=b"p", principal=w, context=VIA_CTX),
            who,
            B,
        )
    for manage in (
        lambda: svc.put_key_policy(
            key_id=arn, policy=doc(root_stmt()), bypass_policy_lockout_safety_check=True
        ),
        lambda: svc.disable_key(key_id=arn),
        lambda: svc.schedule_key_deletion(key_id=arn, pending_window_in_days=7),
        lambda: svc.enable_key_rotation(key_id=arn),
        lambda: svc.disable_key_rotation(key_id=arn),
        lambda: svc.rotate_key_on_demand(key_id=arn),
        lambda: svc.update_key_description(key_id=arn, description="mine"),
    ):
        assert_denied(svc, manage, ROOT_A, A)
    # not even through the service
    assert_denied(svc, lambda: svc.disable_key(key_id=arn, context=VIA_CTX), ROOT_A, A)
    assert svc.describe_key(key_id=arn)["KeyMetadata"]["KeyState"] == "Enabled"


def test_managed_key_never_created_for_another_account_by_arn(svc: KeyService) -> None:
    """AWS rule: another account's AWS managed key cannot be named into existence or used."""
    with pytest.raises((NotFoundException, AccessDeniedException)):
        svc.encrypt(
            key_id=f"arn:aws:kms:us-east-1:{A}:alias/aws/envelope",
            plaintext=b"p",
            principal=ROOT_B,
            context=VIA_CTX,
        )
    assert svc.list_aliases()["Aliases"] == []


# -- IAM --------------------------------------------------------------------------------------


def test_iam_managed_by_root_or_by_iam_allow(svc: KeyService) -> None:
    """AWS rule: the account root may manage its IAM; a user needs an identity policy allowing
    the iam: action (here iam:PutUserPolicy on the target user)."""
    alice = user(svc, "alice")
    bob = user(svc, "bob")
    assert_denied(svc, lambda: svc.create_user(user_name="x", principal=alice), alice, A)
    put = lambda: svc.put_principal_policy(  # noqa: E731
        arn=bob, policy_name="p", policy_document=doc(stmt(Action="kms:*")), principal=alice
    )
    assert_denied(svc, put, alice, A)
    attach(svc, alice, stmt(Action="iam:PutUserPolicy", Resource=bob))
    put()
    assert svc.list_principal_policies(arn=bob)["PolicyNames"] == ["p"]
    # the Allow is for PutUserPolicy on bob only
    assert_denied(svc, lambda: svc.create_user(user_name="x", principal=alice), alice, A)
    assert_denied(
        svc,
        lambda: svc.put_principal_policy(
            arn=alice, policy_name="q", policy_document=doc(stmt()), principal=alice
        ),
        alice,
        A,
    )


def test_assumed_role_sessions_act_with_the_roles_policies(svc: KeyService) -> None:
    """AWS rule: a role session is authorized by its role's identity policies and tags; the
    key policy may name the role; another session of the same role has the same access."""
    kid = svc.arn(new_key(svc))
    writer = role(svc, "writer")
    s1, s2 = session(writer, "job-1"), session(writer, "job-2")
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=s1), s1, A)
    attach(svc, writer, stmt(Action="kms:Encrypt", Resource=kid))
    for s in (s1, s2):
        svc.encrypt(key_id=kid, plaintext=b"p", principal=s)
        assert svc.audit_tail(1)[0]["principal"] == s
    blob = svc.encrypt(key_id=kid, plaintext=b"p")["CiphertextBlob"]
    assert_denied(svc, lambda: svc.decrypt(ciphertext_blob=blob, principal=s1), s1, A)
    # a role session of a role that does not exist is refused
    ghost = f"arn:aws:sts::{A}:assumed-role/ghost/job-1"
    assert not ok(lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=ghost))


# -- condition keys the service fills ---------------------------------------------------------


@pytest.fixture
def app(svc: KeyService) -> str:
    return user(svc, "app")


def test_caller_account(svc: KeyService, app: str) -> None:
    """AWS rule: kms:CallerAccount is the caller's account."""
    kid = svc.arn(
        new_key(
            svc,
            policy=doc(
                root_stmt(),
                stmt(
                    Sid="Acct",
                    Principal="*",
                    Action="kms:Encrypt",
                    Condition={"StringEquals": {"kms:CallerAccount": A}},
                ),
            ),
        )
    )
    svc.encrypt(key_id=kid, plaintext=b"p", principal=app)
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=ROOT_B), ROOT_B, B)


def test_via_service(svc: KeyService, app: str) -> None:
    """AWS rule: kms:ViaService is the service calling on the principal's behalf, absent on a
    direct call."""
    kid = svc.arn(new_key(svc))
    attach(
        svc, app, stmt(Action="kms:Encrypt", Condition={"StringEquals": {"kms:ViaService": VIA}})
    )
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=app), app, A)
    svc.encrypt(key_id=kid, plaintext=b"p", principal=app, context=VIA_CTX)


def test_principal_tag(svc: KeyService, app: str) -> None:
    """AWS rule: aws:PrincipalTag/<k> is the calling user's (or role's) tag."""
    kid = svc.arn(new_key(svc))
    attach(
        svc,
        app,
        stmt(Action="kms:Encrypt", Condition={"StringEquals": {"aws:PrincipalTag/team": "blue"}}),
    )
    call = lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=app)  # noqa: E731
    assert_denied(svc, call, app, A)
    svc.tag_principal(arn=app, tags={"team": "red"})
    assert_denied(svc, call, app, A)
    svc.tag_principal(arn=app, tags=[{"Key": "team", "Value": "blue"}])
    call()


def test_resource_tag(svc: KeyService, app: str) -> None:
    """AWS rule: aws:ResourceTag/<k> is the key's tag, read at the time of the call."""
    kid = svc.arn(new_key(svc))
    attach(
        svc,
        app,
        stmt(Action="kms:Encrypt", Condition={"StringEquals": {"aws:ResourceTag/env": "prod"}}),
    )
    call = lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=app)  # noqa: E731
    assert_denied(svc, call, app, A)
    svc.tag_resource(key_id=kid, tags=[{"TagKey": "env", "TagValue": "prod"}])
    call()
    svc.untag_resource(key_id=kid, tag_keys=["env"])
    assert_denied(svc, call, app, A)


def test_request_tag_and_tag_keys_on_create_key_and_tag_resource(svc: KeyService, app: str) -> None:
    """AWS rule: aws:RequestTag/<k> and aws:TagKeys are the tags a CreateKey or TagResource
    request carries."""
    attach(
        svc,
        app,
        stmt(Action="kms:CreateKey", Condition={"StringEquals": {"aws:RequestTag/team": "blue"}}),
        stmt(
            Action="kms:TagResource",
            Condition={"ForAllValues:StringEquals": {"aws:TagKeys": ["team", "env"]}},
        ),
    )

    def create(value: str) -> Any:
        return svc.create_key(tags=[{"TagKey": "team", "TagValue": value}], principal=app)

    kid = create("blue")["KeyMetadata"]["Arn"]
    assert_denied(svc, lambda: create("red"), app, A)
    assert_denied(svc, lambda: svc.create_key(principal=app), app, A)

    def tag(key: str) -> Any:
        return svc.tag_resource(key_id=kid, tags=[{"TagKey": key, "TagValue": "x"}], principal=app)

    tag("env")
    assert_denied(svc, lambda: tag("owner"), app, A)


def test_tags_on_a_new_key_need_tag_resource_too(svc: KeyService, app: str) -> None:
    """AWS: "To add tags when creating a KMS key, the caller must have kms:TagResource
    permission in an IAM policy"; ReplicateKey needs kms:CreateKey, and kms:TagResource for
    its Tags. Only the operation's own action was asked (review)."""
    attach(svc, app, stmt(Action="kms:CreateKey"), stmt(Action="kms:TagResource", Effect="Deny"))
    tags = [{"TagKey": "team", "TagValue": "finance"}]
    assert_denied(svc, lambda: svc.create_key(tags=tags, principal=app), app, A)
    svc.create_key(principal=app)  # without tags, CreateKey alone is enough
    primary = svc.create_key(multi_region=True)["KeyMetadata"]["Arn"]
    replicator = user(svc, "replicator")
    attach(svc, replicator, stmt(Action="kms:ReplicateKey"))
    assert_denied(
        svc,
        lambda: svc.replicate_key(key_id=primary, replica_region="eu-west-1", principal=replicator),
        replicator,
        A,
    )
    attach(svc, replicator, stmt(Action="kms:CreateKey"), name="create")
    assert_denied(
        svc,
        lambda: svc.replicate_key(
            key_id=primary, replica_region="eu-west-1", tags=tags, principal=replicator
        ),
        replicator,
        A,
    )
    svc.replicate_key(key_id=primary, replica_region="eu-west-1", principal=replicator)


def test_request_alias_and_resource_aliases(svc: KeyService, app: str) -> None:
    """AWS rule: kms:RequestAlias is the alias the request named (absent for a key id);
    kms:ResourceAliases are the aliases the key has, however it was named."""
    kid = new_key(svc)
    bare = new_key(svc)
    svc.create_alias(alias_name="alias/app", target_key_id=kid)
    attach(
        svc,
        app,
        stmt(Action="kms:Encrypt", Condition={"StringEquals": {"kms:RequestAlias": "alias/app"}}),
        name="by-request",
    )
    svc.encrypt(key_id="alias/app", plaintext=b"p", principal=app)
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=app), app, A)
    svc.delete_principal_policy(arn=app, policy_name="by-request")
    attach(
        svc,
        app,
        stmt(
            Action="kms:Encrypt",
            Condition={"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/app"}},
        ),
        name="by-resource",
    )
    svc.encrypt(key_id=kid, plaintext=b"p", principal=app)
    assert_denied(svc, lambda: svc.encrypt(key_id=bare, plaintext=b"p", principal=app), app, A)


def test_encryption_context_keys(svc: KeyService, app: str) -> None:
    """AWS rule: kms:EncryptionContextKeys are the keys of the request's encryption context."""
    kid = svc.arn(new_key(svc))
    attach(
        svc,
        app,
        stmt(
            Action="kms:Encrypt",
            Condition={
                "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["tenant"]},
                "Null": {"kms:EncryptionContextKeys": "false"},
            },
        ),
    )

    def enc(ctx: dict[str, str]) -> Any:
        return svc.encrypt(key_id=kid, plaintext=b"p", encryption_context=ctx, principal=app)

    enc({"tenant": "t1"})
    assert_denied(svc, lambda: enc({"tenant": "t1", "other": "x"}), app, A)
    assert_denied(svc, lambda: enc({}), app, A)


def test_grant_operations_on_create_grant(svc: KeyService, app: str) -> None:
    """AWS rule: kms:GrantOperations are the operations a CreateGrant request would grant."""
    kid = svc.arn(new_key(svc))
    grantee = user(svc, "grantee")
    attach(
        svc,
        app,
        stmt(
            Action="kms:CreateGrant",
            Condition={"ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt"]}},
        ),
    )

    def create(*ops: str) -> Any:
        return svc.create_grant(
            key_id=kid, grantee_principal=grantee, operations=list(ops), principal=app
        )

    create("Decrypt")
    assert_denied(svc, lambda: create("Decrypt", "Encrypt"), app, A)


def test_source_ip(svc: KeyService, app: str) -> None:
    """AWS rule: aws:SourceIp is the address the request came from."""
    kid = svc.arn(new_key(svc))
    attach(
        svc,
        app,
        stmt(Action="kms:Encrypt", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
    )

    def enc(ip: str) -> Any:
        return svc.encrypt(
            key_id=kid, plaintext=b"p", principal=app, context=RequestContext(source_ip=ip)
        )

    enc("10.1.2.3")
    assert_denied(svc, lambda: enc("192.168.0.1"), app, A)


def test_current_time(svc: KeyService, app: str, clock: FakeClock) -> None:
    """AWS rule: aws:CurrentTime is the time of the request (DateLessThan ends access)."""
    kid = svc.arn(new_key(svc))
    attach(
        svc,
        app,
        stmt(
            Action="kms:Encrypt",
            Condition={"DateLessThan": {"aws:CurrentTime": "2027-02-01T00:00:00Z"}},
        ),
    )
    svc.encrypt(key_id=kid, plaintext=b"p", principal=app)  # 2027-01-15
    clock.advance(days=30)
    assert_denied(svc, lambda: svc.encrypt(key_id=kid, plaintext=b"p", principal=app), app, A)
    assert clock.now > 1_800_000_000 + 29 * DAY


# -- tampering --------------------------------------------------------------------------------


def _edit(svc: KeyService, sql: str, *args: Any) -> None:
    conn = sqlite3.connect(str(svc.store.path))
    try:
        with conn:
            assert conn.execute(sql, args).rowcount == 1
    finally:
        conn.close()


def _bump(svc: KeyService) -> None:
    """Change the access generation, as any other process's IAM write would, so the edited
    row is read again rather than served from this process's cache."""
    _edit(svc, "UPDATE meta SET value=? WHERE name='access_gen'", b"12345")


def test_edited_identity_policy_row_is_tampering(svc: KeyService, app: str) -> None:
    """Tampering rule: widening an identity policy by editing the store is refused as
    TamperedStoreError on the next call that reads it, never allowed."""
    kid = svc.arn(new_key(svc))
    attach(svc, app, stmt(Action="kms:DescribeKey"))
    conn = sqlite3.connect(str(svc.store.path))
    (body,) = conn.execute(
        "SELECT body FROM identity_policies WHERE principal=?", (app,)
    ).fetchone()
    conn.close()
    widened = json.loads(body)
    widened["Document"] = doc(stmt(Action="kms:*"))
    _edit(svc, "UPDATE identity_policies SET body=? WHERE principal=?", json.dumps(widened), app)
    _bump(svc)
    with pytest.raises(TamperedStoreError):
        svc.encrypt(key_id=kid, plaintext=b"p", principal=app)


def test_edited_principal_row_is_tampering(svc: KeyService, app: str) -> None:
    """Tampering rule: adding a tag to a principal row by hand (to meet an aws:PrincipalTag
    condition) is refused as TamperedStoreError."""
    kid = svc.arn(new_key(svc))
    attach(
        svc,
        app,
        stmt(Action="kms:Encrypt", Condition={"StringEquals": {"aws:PrincipalTag/team": "blue"}}),
    )
    conn = sqlite3.connect(str(svc.store.path))
    (body,) = conn.execute("SELECT body FROM principals WHERE arn=?", (app,)).fetchone()
    conn.close()
    edited = json.loads(body)
    edited["Tags"] = {"team": "blue"}
    _edit(svc, "UPDATE principals SET body=? WHERE arn=?", json.dumps(edited), app)
    _bump(svc)
    with pytest.raises(TamperedStoreError):
        svc.encrypt(key_id=kid, plaintext=b"p", principal=app)


def test_edited_grant_row_is_tampering(svc: KeyService, app: str) -> None:
    """Tampering rule: widening a grant's operations or retargeting its grantee in the store is
    refused as TamperedStoreError when the grant is read."""
    kid = svc.arn(new_key(svc))
    g = svc.create_grant(key_id=kid, grantee_principal=app, operations=["Encrypt"])
    conn = sqlite3.connect(str(svc.store.path))
    (body,) = conn.execute("SELECT body FROM grants WHERE grant_id=?", (g["GrantId"],)).fetchone()
    conn.close()
    edited = json.loads(body)
    edited["Operations"] = ["Encrypt", "Decrypt"]
    _edit(svc, "UPDATE grants SET body=? WHERE grant_id=?", json.dumps(edited), g["GrantId"])
    blob = svc.encrypt(key_id=kid, plaintext=b"p")["CiphertextBlob"]
    with pytest.raises(TamperedStoreError):
        svc.decrypt(ciphertext_blob=blob, principal=app)
    with pytest.raises(TamperedStoreError):
        svc.list_grants(key_id=kid)


def test_principal_tags_in_aws_reserved_space_are_refused(svc: KeyService, app: str) -> None:
    """IAM reserves tag keys beginning with aws: (InvalidInput), as KMS does for its own
    tags; IAM users and roles took them, and they feed aws:PrincipalTag conditions (review)."""
    from envelope.service.errors import ValidationException

    for tags in ({"aws:x": "1"}, [{"Key": "AWS:team", "Value": "blue"}]):
        with pytest.raises(ValidationException, match="reserved"):
            svc.tag_principal(arn=app, tags=tags)
    with pytest.raises(ValidationException, match="reserved"):
        svc.create_user(user_name="carol", tags={"aws:y": "2"})
