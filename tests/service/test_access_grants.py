"""Grants at the service level (issue 10): constraints on every cryptographic call, retire and
revoke at once, idempotent CreateGrant, no widening, deletion with the key, listing.

Every grantee here is an IAM user with no identity policy on a key with the default key policy,
so the grant is the only thing that can allow it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from envelope.service import KeyService
from envelope.service.errors import (
    AccessDeniedException,
    InvalidGrantIdException,
    InvalidGrantTokenException,
    NotFoundException,
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
    root_stmt,
    stmt,
    user,
)
from .conftest import FakeClock, new_key

EQ = "EncryptionContextEquals"
SUB = "EncryptionContextSubset"


def grant(svc: KeyService, key: str, grantee: str, *ops: str, **kw: Any) -> dict[str, Any]:
    return svc.create_grant(key_id=key, grantee_principal=grantee, operations=list(ops), **kw)


def allowed(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except AccessDeniedException:
        return False
    return True


@pytest.fixture
def key(svc: KeyService) -> str:
    return svc.arn(new_key(svc))


@pytest.fixture
def grantee(svc: KeyService) -> str:
    return user(svc, "grantee")


# -- constraints ------------------------------------------------------------------------------


@pytest.mark.parametrize("constraint", [EQ, SUB])
def test_constraints_do_not_bind_describe_key_and_retire_grant(
    svc: KeyService, key: str, grantee: str, constraint: str
) -> None:
    """AWS (GrantConstraints): a grant with an encryption context constraint may include
    DescribeKey and RetireGrant, "but the constraint doesn't apply to these operations"."""
    made = grant(
        svc,
        key,
        grantee,
        "Decrypt",
        "DescribeKey",
        "RetireGrant",
        constraints={constraint: {"Dept": "IT"}},
    )
    assert svc.describe_key(key_id=key, principal=grantee)["KeyMetadata"]["Arn"] == key
    assert not allowed(lambda: svc.encrypt(key_id=key, plaintext=b"p", principal=grantee))
    svc.retire_grant(key_id=key, grant_id=made["GrantId"], principal=grantee)
    assert svc.list_grants(key_id=key)["Grants"] == []


@pytest.mark.parametrize("constraint", [EQ, SUB])
def test_a_constraint_holds_at_most_8_pairs_of_at_most_384_characters(
    svc: KeyService, key: str, grantee: str, constraint: str
) -> None:
    """CreateGrant, Constraints: "Each constraint value can include up to 8 encryption
    context pairs. The encryption context value in each constraint cannot exceed 384
    characters." Over either, ValidationException and no grant (review)."""
    grant(svc, key, grantee, "Decrypt", constraints={constraint: {f"k{i}": "v" for i in range(8)}})
    grant(svc, key, grantee, "Decrypt", constraints={constraint: {"k": "v" * 384}})
    before = len(svc.list_grants(key_id=key)["Grants"])
    for ctx in ({f"k{i}": "v" for i in range(9)}, {"k": "v" * 385}):
        with pytest.raises(ValidationException):
            grant(svc, key, grantee, "Decrypt", constraints={constraint: ctx})
    assert len(svc.list_grants(key_id=key)["Grants"]) == before


def test_one_kind_of_context_constraint_and_not_create_grant_alone(
    svc: KeyService, key: str, grantee: str
) -> None:
    """AWS's recorded answers (review): both context constraints in one grant, even one of
    them empty, is "More than one constraint supplied"; a grant of CreateGrant alone is
    "Grants must not contain only the CreateGrant operation.". Neither makes a grant."""
    for both in ({EQ: {"a": "b"}, SUB: {"c": "d"}}, {EQ: {}, SUB: {"c": "d"}}):
        with pytest.raises(ValidationException) as e:
            grant(svc, key, grantee, "Decrypt", constraints=both)
        assert e.value.message == "More than one constraint supplied"
    with pytest.raises(ValidationException) as e:
        grant(svc, key, grantee, "CreateGrant")
    assert e.value.message == "Grants must not contain only the CreateGrant operation."
    assert svc.list_grants(key_id=key)["Grants"] == []
    grant(svc, key, grantee, "CreateGrant", "Decrypt")  # with another operation: a grant


@pytest.mark.parametrize(
    ("constraint", "context", "ok"),
    [
        (EQ, {"a": "1"}, True),
        (EQ, {"a": "1", "b": "2"}, False),  # Equals: no extra pair
        (EQ, {"a": "2"}, False),
        (EQ, {}, False),
        (SUB, {"a": "1"}, True),
        (SUB, {"a": "1", "b": "2"}, True),  # Subset: extra pairs allowed
        (SUB, {"b": "2"}, False),
        (SUB, {}, False),
    ],
)
def test_constraints_on_every_context_operation(
    svc: KeyService, key: str, grantee: str, constraint: str, context: dict[str, str], ok: bool
) -> None:
    """AWS rule: a grant with EncryptionContextEquals allows only a request whose context is
    exactly the constraint; with EncryptionContextSubset, one whose context includes every pair
    of it. Checked on Encrypt, Decrypt, ReEncryptFrom/To and every GenerateDataKey*."""
    ops = [
        "Encrypt",
        "Decrypt",
        "ReEncryptFrom",
        "ReEncryptTo",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    ]
    grant(svc, key, grantee, *ops, constraints={constraint: {"a": "1"}})
    blob = svc.encrypt(key_id=key, plaintext=b"p", encryption_context=context)["CiphertextBlob"]
    as_grantee: dict[str, Callable[[], Any]] = {
        "Encrypt": lambda: svc.encrypt(
            key_id=key, plaintext=b"p", encryption_context=context, principal=grantee
        ),
        "Decrypt": lambda: svc.decrypt(
            ciphertext_blob=blob, encryption_context=context, principal=grantee
        ),
        "ReEncrypt": lambda: svc.re_encrypt(
            ciphertext_blob=blob,
            source_encryption_context=context,
            destination_key_id=key,
            destination_encryption_context=context,
            principal=grantee,
        ),
        "GenerateDataKey": lambda: svc.generate_data_key(
            key_id=key, key_spec="AES_256", encryption_context=context, principal=grantee
        ),
        "GenerateDataKeyWithoutPlaintext": lambda: svc.generate_data_key_without_plaintext(
            key_id=key, key_spec="AES_256", encryption_context=context, principal=grantee
        ),
        "GenerateDataKeyPair": lambda: svc.generate_data_key_pair(
            key_id=key, key_pair_spec="ECC_NIST_P256", encryption_context=context, principal=grantee
        ),
        "GenerateDataKeyPairWithoutPlaintext": (
            lambda: svc.generate_data_key_pair_without_plaintext(
                key_id=key,
                key_pair_spec="ECC_NIST_P256",
                encryption_context=context,
                principal=grantee,
            )
        ),
    }
    for fn in as_grantee.values():
        if ok:
            fn()
        else:
            assert_denied(svc, fn, grantee, A)


def test_reencrypt_checks_source_and_destination_contexts_separately(
    svc: KeyService, grantee: str
) -> None:
    """AWS rule: ReEncrypt is two authorizations, ReEncryptFrom with the source context on the
    source key and ReEncryptTo with the destination context on the destination key."""
    src, dst = svc.arn(new_key(svc)), svc.arn(new_key(svc))
    grant(svc, src, grantee, "ReEncryptFrom", constraints={EQ: {"s": "1"}})
    grant(svc, dst, grantee, "ReEncryptTo", constraints={EQ: {"d": "1"}})
    blob = svc.encrypt(key_id=src, plaintext=b"p", encryption_context={"s": "1"})["CiphertextBlob"]

    def reencrypt(sctx: dict[str, str], dctx: dict[str, str], b: bytes = blob) -> Any:
        return svc.re_encrypt(
            ciphertext_blob=b,
            source_encryption_context=sctx,
            destination_key_id=dst,
            destination_encryption_context=dctx,
            principal=grantee,
        )

    out = reencrypt({"s": "1"}, {"d": "1"})
    assert out["KeyId"] == dst
    assert_denied(svc, lambda: reencrypt({"s": "1"}, {"d": "2"}), grantee, A)
    other = svc.encrypt(key_id=src, plaintext=b"p", encryption_context={"s": "2"})
    assert_denied(
        svc, lambda: reencrypt({"s": "2"}, {"d": "1"}, other["CiphertextBlob"]), grantee, A
    )
    # the grant on the source alone does not allow encrypting under the destination key
    assert_denied(
        svc,
        lambda: svc.re_encrypt(
            ciphertext_blob=blob,
            source_encryption_context={"s": "1"},
            destination_key_id=src,
            destination_encryption_context={"s": "1"},
            principal=grantee,
        ),
        grantee,
        A,
    )


def test_grant_allows_only_its_operations(svc: KeyService, key: str, grantee: str) -> None:
    """AWS rule: a grant allows exactly the operations it lists."""
    grant(svc, key, grantee, "GenerateDataKey")
    svc.generate_data_key(key_id=key, key_spec="AES_128", principal=grantee)
    blob = svc.encrypt(key_id=key, plaintext=b"p")["CiphertextBlob"]
    assert_denied(svc, lambda: svc.decrypt(ciphertext_blob=blob, principal=grantee), grantee, A)
    assert_denied(
        svc, lambda: svc.encrypt(key_id=key, plaintext=b"p", principal=grantee), grantee, A
    )
    assert_denied(svc, lambda: svc.describe_key(key_id=key, principal=grantee), grantee, A)


def test_grant_tokens_are_accepted_and_the_grant_works_at_once(
    svc: KeyService, key: str, grantee: str
) -> None:
    """AWS rule: GrantTokens make a new grant usable before it is consistent; here a grant is
    consistent at once, and its token is accepted on every operation that takes GrantTokens."""
    token = grant(svc, key, grantee, "Encrypt", "Decrypt")["GrantToken"]
    blob = svc.encrypt(key_id=key, plaintext=b"p", grant_tokens=[token], principal=grantee)
    out = svc.decrypt(
        ciphertext_blob=blob["CiphertextBlob"], grant_tokens=[token], principal=grantee
    )
    assert out["Plaintext"] == b"p"


@pytest.mark.parametrize(
    "bad",
    ["garbage", "0" * 64, "envgt1-short", "envgt1-" + "A" * 63 + "!", "envgt2-" + "A" * 64],
)
def test_a_grant_token_this_kms_did_not_issue_is_refused(
    svc: KeyService, key: str, grantee: str, bad: str
) -> None:
    """AWS: InvalidGrantTokenException, "the specified grant token is not valid", on every
    operation that takes GrantTokens (a grant id passed as a token, say); nothing is done."""
    token = grant(svc, key, grantee, "Encrypt", "Decrypt", "CreateGrant")["GrantToken"]
    for call in (
        lambda: svc.encrypt(key_id=key, plaintext=b"p", grant_tokens=[token, bad]),
        lambda: svc.generate_data_key(key_id=key, key_spec="AES_256", grant_tokens=[bad]),
        lambda: svc.create_grant(
            key_id=key, grantee_principal=grantee, operations=["Decrypt"], grant_tokens=[bad]
        ),
    ):
        with pytest.raises(InvalidGrantTokenException, match="not valid"):
            call()
    assert svc.audit_tail(1)[0]["error_code"] == "InvalidGrantTokenException"
    assert len(svc.list_grants(key_id=key)["Grants"]) == 1  # no grant was made


def test_deny_in_key_policy_beats_a_grant(svc: KeyService, key: str, grantee: str) -> None:
    """AWS rule: an explicit Deny in the key policy wins over any Allow, a grant included."""
    grant(svc, key, grantee, "Encrypt", "Decrypt")
    svc.encrypt(key_id=key, plaintext=b"p", principal=grantee)
    svc.put_key_policy(
        key_id=key,
        policy=doc(root_stmt(), stmt("Deny", Principal=aws(grantee), Action="kms:Encrypt")),
    )
    assert_denied(
        svc, lambda: svc.encrypt(key_id=key, plaintext=b"p", principal=grantee), grantee, A
    )
    # the Deny names Encrypt only: the grant's Decrypt still works
    blob = svc.encrypt(key_id=key, plaintext=b"p")["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=blob, principal=grantee)["Plaintext"] == b"p"


# -- retire and revoke ------------------------------------------------------------------------


def test_retire_by_token_by_retiring_principal_takes_effect_at_once(
    svc: KeyService, key: str, grantee: str
) -> None:
    """AWS rule: the retiring principal may retire a grant by its token; the grant stops
    allowing at once."""
    retirer = user(svc, "retirer")
    g = grant(svc, key, grantee, "Encrypt", retiring_principal=retirer)
    svc.encrypt(key_id=key, plaintext=b"p", principal=grantee)
    svc.retire_grant(grant_token=g["GrantToken"], principal=retirer)
    assert svc.audit_tail(1)[0]["decision"] == "allowed"
    assert_denied(
        svc, lambda: svc.encrypt(key_id=key, plaintext=b"p", principal=grantee), grantee, A
    )
    assert svc.list_grants(key_id=key)["Grants"] == []


def test_retire_by_key_and_grant_id_by_grantee_holding_retire_grant(
    svc: KeyService, key: str, grantee: str
) -> None:
    """AWS rule: a grantee whose grant includes RetireGrant may retire it (key id + grant id)."""
    g = grant(svc, key, grantee, "Encrypt", "RetireGrant")
    svc.retire_grant(key_id=key, grant_id=g["GrantId"], principal=grantee)
    assert_denied(
        svc, lambda: svc.encrypt(key_id=key, plaintext=b"p", principal=grantee), grantee, A
    )


def test_retire_by_the_keys_account_root(svc: KeyService, key: str, grantee: str) -> None:
    """AWS rule: the account that owns the key may retire any of its grants."""
    g = grant(svc, key, grantee, "Encrypt")
    svc.retire_grant(key_id=key, grant_id=g["GrantId"], principal=ROOT_A)
    assert svc.list_grants(key_id=key)["Grants"] == []


def test_a_grant_made_from_another_account_is_that_account_s_to_retire(
    svc: KeyService, key: str, grantee: str
) -> None:
    """A principal of account B that A's key policy lets create grants made one: its
    IssuingAccount named A ("the account under which the grant was issued" is B's), and B's
    root, "the AWS account (root user) in which the grant was created", could not retire it
    (review). Another account's root still cannot."""
    svc.put_key_policy(
        key_id=key,
        policy=doc(root_stmt(), stmt(Principal=aws(ROOT_B), Action="kms:CreateGrant")),
    )
    maker = user(svc, "maker", account=B)
    attach(svc, maker, stmt(Action="kms:*"))
    made = svc.create_grant(
        key_id=key, grantee_principal=grantee, operations=["Decrypt"], principal=maker
    )
    (listed,) = svc.list_grants(key_id=key)["Grants"]
    assert listed["IssuingAccount"] == ROOT_B
    stranger = f"arn:aws:iam::{'2' * 12}:root"
    assert_denied(
        svc,
        lambda: svc.retire_grant(key_id=key, grant_id=made["GrantId"], principal=stranger),
        stranger,
        "2" * 12,
    )
    svc.retire_grant(key_id=key, grant_id=made["GrantId"], principal=ROOT_B)
    assert svc.list_grants(key_id=key)["Grants"] == []


def test_retire_refused_to_anyone_else(svc: KeyService, key: str, grantee: str) -> None:
    """AWS rule: RetireGrant is allowed only to the retiring principal, a grantee holding
    RetireGrant, or the key's account (its root, or a principal of it to whom an identity policy
    delegates kms:RetireGrant); anyone else (the grantee without RetireGrant, a user of another
    account even with an IAM policy allowing kms:RetireGrant, another account's root) is
    refused, and the grant stays."""
    retirer = user(svc, "retirer")
    other = user(svc, "other", account=B)
    svc.put_principal_policy(
        arn=other,
        policy_document=doc(stmt(Action="kms:RetireGrant")),
        policy_name="p",
        principal=ROOT_B,
    )
    g = grant(svc, key, grantee, "Encrypt", retiring_principal=retirer)
    for who in (grantee, other, f"arn:aws:iam::{'1' * 12}:root"):
        account = who.split(":")[4]
        assert_denied(
            svc,
            lambda w=who: svc.retire_grant(grant_token=g["GrantToken"], principal=w),
            who,
            account,
        )
        assert_denied(
            svc,
            lambda w=who: svc.retire_grant(key_id=key, grant_id=g["GrantId"], principal=w),
            who,
            account,
        )
    svc.encrypt(key_id=key, plaintext=b"p", principal=grantee)


def test_a_retiring_account_delegates_retire_grant_to_its_principals(
    svc: KeyService, key: str, grantee: str
) -> None:
    """AWS: "If the retiring principal is a different AWS account, administrators in the other
    account can use kms:RetireGrant to delegate permission" to its users; a user of that
    account without the permission is refused, and so is one of a third account."""
    delegated = user(svc, "retirer", account=B)
    bare = user(svc, "bare", account=B)
    svc.put_principal_policy(
        arn=delegated,
        policy_document=doc(stmt(Action="kms:RetireGrant")),
        policy_name="p",
        principal=ROOT_B,
    )
    by_token = grant(svc, key, grantee, "Encrypt", retiring_principal=ROOT_B)
    by_id = grant(svc, key, grantee, "Decrypt", retiring_principal=ROOT_B)
    assert_denied(
        svc, lambda: svc.retire_grant(grant_token=by_token["GrantToken"], principal=bare), bare, B
    )
    svc.retire_grant(grant_token=by_token["GrantToken"], principal=delegated)
    svc.retire_grant(key_id=key, grant_id=by_id["GrantId"], principal=delegated)
    assert svc.list_grants(key_id=key)["Grants"] == []


def test_revoke_takes_effect_at_once_and_needs_permission(
    svc: KeyService, key: str, grantee: str
) -> None:
    """AWS rule: RevokeGrant is authorized by the key policy (not by the grant); a revoked grant
    stops allowing at once; revoking an unknown grant is InvalidGrantId."""
    g = grant(svc, key, grantee, "Encrypt", "RetireGrant")
    assert_denied(
        svc,
        lambda: svc.revoke_grant(key_id=key, grant_id=g["GrantId"], principal=grantee),
        grantee,
        A,
    )
    svc.revoke_grant(key_id=key, grant_id=g["GrantId"])
    assert_denied(
        svc, lambda: svc.encrypt(key_id=key, plaintext=b"p", principal=grantee), grantee, A
    )
    with pytest.raises(InvalidGrantIdException):
        svc.revoke_grant(key_id=key, grant_id=g["GrantId"])


# -- CreateGrant ------------------------------------------------------------------------------


def test_create_grant_idempotent_by_name(svc: KeyService, key: str, grantee: str) -> None:
    """AWS rule: CreateGrant with the same Name and the same parameters returns the same grant
    id and creates no second grant; a different parameter makes a new grant."""
    a = grant(svc, key, grantee, "Decrypt", name="job-1", constraints={EQ: {"a": "1"}})
    b = grant(svc, key, grantee, "Decrypt", name="job-1", constraints={EQ: {"a": "1"}})
    assert a["GrantId"] == b["GrantId"]
    assert len(svc.list_grants(key_id=key)["Grants"]) == 1
    # the operations are a set: a retry listing them in another order is the same grant (it
    # made a second one; found by a conformance review)
    d = grant(svc, key, grantee, "Decrypt", "DescribeKey", name="job-2")
    e = grant(svc, key, grantee, "DescribeKey", "Decrypt", name="job-2")
    assert d["GrantId"] == e["GrantId"]
    svc.revoke_grant(key_id=key, grant_id=d["GrantId"])
    c = grant(svc, key, grantee, "Encrypt", name="job-1")
    assert c["GrantId"] != a["GrantId"]
    assert len(svc.list_grants(key_id=key)["Grants"]) == 2
    # the first token still names the grant (every token of a re-created grant retires it)
    svc.retire_grant(grant_token=a["GrantToken"])
    assert [g["GrantId"] for g in svc.list_grants(key_id=key)["Grants"]] == [c["GrantId"]]


def test_grantee_can_narrow_but_not_widen(svc: KeyService, key: str, grantee: str) -> None:
    """AWS rule: a grantee allowed CreateGrant only by its grant may give no more than it holds:
    not more operations, not weaker constraints; a narrower grant is fine."""
    grant(svc, key, grantee, "Decrypt", "Encrypt", "CreateGrant", constraints={SUB: {"a": "1"}})
    third = user(svc, "third")

    def sub(*ops: str, **kw: Any) -> Callable[[], Any]:
        return lambda: grant(svc, key, third, *ops, principal=grantee, **kw)

    narrow = sub("Decrypt", constraints={EQ: {"a": "1", "b": "2"}})()
    blob = svc.encrypt(key_id=key, plaintext=b"p", encryption_context={"a": "1", "b": "2"})
    svc.decrypt(
        ciphertext_blob=blob["CiphertextBlob"],
        encryption_context={"a": "1", "b": "2"},
        principal=third,
    )
    sub("Decrypt", constraints={SUB: {"a": "1", "c": "3"}})()
    for wider in (
        sub("Decrypt", "GenerateDataKey", constraints={SUB: {"a": "1"}}),  # more operations
        sub("Decrypt"),  # no constraint at all
        sub("Decrypt", constraints={SUB: {"b": "2"}}),  # another context
        sub("Decrypt", constraints={EQ: {"b": "2"}}),
        sub("Decrypt", "CreateGrant", "RetireGrant", constraints={SUB: {"a": "1"}}),
    ):
        assert_denied(svc, wider, grantee, A)
    assert narrow["GrantId"] in {g["GrantId"] for g in svc.list_grants(key_id=key)["Grants"]}


# -- lifetime and listing ---------------------------------------------------------------------


def test_grants_go_with_the_deleted_key(
    svc: KeyService, key: str, grantee: str, clock: FakeClock
) -> None:
    """AWS rule: a grant never outlives its key: when the key is deleted its grants are gone
    (ListRetirableGrants no longer shows them, and the rows are removed)."""
    retirer = user(svc, "retirer")
    grant(svc, key, grantee, "Encrypt", retiring_principal=retirer)
    keep = svc.arn(new_key(svc))
    kept = grant(svc, keep, grantee, "Encrypt", retiring_principal=retirer)
    svc.schedule_key_deletion(key_id=key, pending_window_in_days=7)
    clock.advance(days=7, seconds=1)
    svc.run_due_tasks()
    with pytest.raises(NotFoundException):
        svc.describe_key(key_id=key)
    listed = svc.list_retirable_grants(retiring_principal=retirer)["Grants"]
    assert [g["GrantId"] for g in listed] == [kept["GrantId"]]
    conn = sqlite3.connect(str(svc.store.path))
    try:
        key_ids = {r[0] for r in conn.execute("SELECT key_id FROM grants")}
    finally:
        conn.close()
    assert key_ids == {keep.rsplit("/", 1)[1]}


def test_list_grants_filters_and_pages(svc: KeyService, key: str, grantee: str) -> None:
    """AWS rule: ListGrants pages with Limit/NextMarker over every grant of the key, and filters
    by GrantId and GranteePrincipal; an unknown GrantId is InvalidGrantId."""
    other = user(svc, "other")
    mine = {grant(svc, key, grantee, "Encrypt", name=f"g{i}")["GrantId"] for i in range(4)}
    theirs = {grant(svc, key, other, "Decrypt", name=f"o{i}")["GrantId"] for i in range(3)}
    seen: list[str] = []
    marker = None
    pages = 0
    while True:
        page = svc.list_grants(key_id=key, limit=2, marker=marker)
        assert len(page["Grants"]) <= 2
        seen += [g["GrantId"] for g in page["Grants"]]
        pages += 1
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert pages == 4 and sorted(seen) == sorted(mine | theirs)
    by_grantee = svc.list_grants(key_id=key, grantee_principal=other)["Grants"]
    assert {g["GrantId"] for g in by_grantee} == theirs
    assert all(g["GranteePrincipal"] == other for g in by_grantee)
    one = next(iter(mine))
    (entry,) = svc.list_grants(key_id=key, grant_id=one)["Grants"]
    assert entry["GrantId"] == one and entry["Operations"] == ["Encrypt"]
    assert entry["KeyId"] == key and entry["IssuingAccount"] == f"arn:aws:iam::{A}:root"
    with pytest.raises(InvalidGrantIdException):
        svc.list_grants(key_id=key, grant_id="0" * 64)


def test_list_retirable_grants_shows_only_the_retiring_principals(
    svc: KeyService, key: str, grantee: str
) -> None:
    """AWS rule: ListRetirableGrants lists the grants (of every key) whose RetiringPrincipal is
    the one asked for, and is authorized by IAM (kms:ListRetirableGrants)."""
    retirer = user(svc, "retirer")
    key2 = svc.arn(new_key(svc))
    want = {
        grant(svc, key, grantee, "Encrypt", retiring_principal=retirer)["GrantId"],
        grant(svc, key2, grantee, "Decrypt", retiring_principal=retirer)["GrantId"],
    }
    grant(svc, key, grantee, "Decrypt", retiring_principal=grantee)
    grant(svc, key, grantee, "GenerateDataKey")
    got = svc.list_retirable_grants(retiring_principal=retirer)["Grants"]
    assert {g["GrantId"] for g in got} == want
    assert {g["KeyId"] for g in got} == {key, key2}
    assert_denied(
        svc,
        lambda: svc.list_retirable_grants(retiring_principal=retirer, principal=retirer),
        retirer,
        A,
    )
    svc.put_principal_policy(
        arn=retirer, policy_name="p", policy_document=doc(stmt(Action="kms:ListRetirableGrants"))
    )
    mine = svc.list_retirable_grants(retiring_principal=retirer, principal=retirer)["Grants"]
    assert {g["GrantId"] for g in mine} == want


def test_create_grant_through_grants_is_covered_by_any_of_them(svc: KeyService, key: str) -> None:
    """A grantee holding CreateGrant under two grants may give what either one covers: only
    the first grant the evaluator met was tried (review)."""
    g, other = user(svc, "g"), user(svc, "other")
    grant(
        svc, key, g, "Encrypt", "CreateGrant",
        constraints={"EncryptionContextSubset": {"a": "1"}},
    )
    grant(svc, key, g, "Decrypt", "CreateGrant")
    svc.create_grant(key_id=key, grantee_principal=other, operations=["Decrypt"], principal=g)
    sub = {"EncryptionContextSubset": {"a": "1"}}
    svc.create_grant(
        key_id=key, grantee_principal=other, operations=["Encrypt"], constraints=sub, principal=g
    )
    assert_denied(  # neither covers both operations
        svc,
        lambda: svc.create_grant(
            key_id=key, grantee_principal=other, operations=["Encrypt", "Decrypt"], principal=g
        ),
        g,
        A,
    )


def test_a_grant_limited_to_a_source_arn_covers_no_direct_create_grant(
    svc: KeyService, key: str
) -> None:
    """A grant for requests made on behalf of one resource is unusable directly: it must not
    cover a grant its holder creates directly either (diff review: bob gave himself an
    unrestricted Decrypt grant through it)."""
    bob = user(svc, "bob")
    grant(svc, key, bob, "CreateGrant", "DescribeKey")  # (CreateGrant alone is refused)
    grant(
        svc, key, bob, "Decrypt", "CreateGrant",
        constraints={"SourceArn": "arn:aws:s3:us-east-1:000000000000:bucket-x"},
    )
    assert_denied(
        svc,
        lambda: svc.create_grant(
            key_id=key, grantee_principal=bob, operations=["Decrypt"], principal=bob
        ),
        bob,
        A,
    )


def test_list_retirable_grants_is_authorized_on_the_retiring_principal(
    svc: KeyService, key: str, grantee: str
) -> None:
    """AWS: "The authorized resource in ListRetirableGrants calls is the retiring principal
    specified in the request", which must be in the caller's account. It was authorized on
    "*" for any account's principal: another account's root read this one's grants (review)."""
    retirer = user(svc, "retirer")
    grant(svc, key, grantee, "Encrypt", retiring_principal=retirer)
    assert_denied(
        svc, lambda: svc.list_retirable_grants(retiring_principal=retirer, principal=ROOT_B),
        ROOT_B, B,
    )
    lister = user(svc, "lister")
    attach(svc, lister, stmt(Action="kms:ListRetirableGrants", Resource=retirer))
    listed = svc.list_retirable_grants(retiring_principal=retirer, principal=lister)
    assert len(listed["Grants"]) == 1
    other = user(svc, "other")
    assert_denied(
        svc, lambda: svc.list_retirable_grants(retiring_principal=other, principal=lister),
        lister, A,
    )
    attach(
        svc, lister, stmt(Action="kms:ListRetirableGrants", Resource=retirer, Effect="Deny"),
        name="deny",
    )
    assert_denied(
        svc, lambda: svc.list_retirable_grants(retiring_principal=retirer, principal=lister),
        lister, A,
    )


def test_the_keys_account_delegates_retiring_and_an_identity_deny_stops_it(
    svc: KeyService, key: str, grantee: str
) -> None:
    """AWS: "The AWS account that owns the KMS key can delegate the kms:RetireGrant permission
    to an IAM principal in the account", and "to deny permission to retire a grant, you can use
    a Deny action with the kms:RetireGrant permission" in an IAM policy: a grantee whose own
    grant includes RetireGrant is then refused too."""
    delegate = user(svc, "delegate")
    svc.put_principal_policy(
        arn=delegate, policy_name="p", policy_document=doc(stmt(Action="kms:RetireGrant"))
    )
    g = grant(svc, key, grantee, "Encrypt")
    svc.retire_grant(key_id=key, grant_id=g["GrantId"], principal=delegate)
    assert svc.list_grants(key_id=key)["Grants"] == []
    g = grant(svc, key, grantee, "Encrypt", "RetireGrant")
    svc.put_principal_policy(
        arn=grantee,
        policy_name="no-retire",
        policy_document=doc(stmt("Deny", Action="kms:RetireGrant")),
    )
    assert_denied(
        svc, lambda: svc.retire_grant(grant_token=g["GrantToken"], principal=grantee), grantee, A
    )
    assert [x["GrantId"] for x in svc.list_grants(key_id=key)["Grants"]] == [g["GrantId"]]


# -- service principals and SourceArn --------------------------------------------------------

BUCKET = f"arn:aws:s3:us-east-1:{A}:accesspoint/lake"
S3 = "s3.amazonaws.com"


def test_a_service_principal_grant_needs_a_source_arn_and_a_retiring_principal(
    svc: KeyService, key: str
) -> None:
    """AWS (CreateGrant, GranteeServicePrincipal): "you must also specify a SourceArn grant
    constraint. In addition, you must specify either a RetiringPrincipal or a
    RetiringServicePrincipal." A refused call creates nothing."""
    for kw in (
        {"retiring_service_principal": S3},
        {"constraints": {"SourceArn": BUCKET}},
        {"constraints": {"EncryptionContextSubset": {"a": "1"}}, "retiring_service_principal": S3},
    ):
        with pytest.raises(ValidationException):
            svc.create_grant(key_id=key, grantee_service_principal=S3, operations=["Encrypt"], **kw)
    assert svc.list_grants(key_id=key)["Grants"] == []
    made = svc.create_grant(
        key_id=key,
        grantee_service_principal=S3,
        retiring_service_principal=S3,
        operations=["Encrypt", "Decrypt"],
        constraints={"SourceArn": BUCKET, "EncryptionContextSubset": {"a": "1"}},
    )
    (entry,) = svc.list_grants(key_id=key)["Grants"]
    assert entry["GrantId"] == made["GrantId"]
    assert entry["GranteeServicePrincipal"] == S3
    assert entry["RetiringServicePrincipal"] == S3
    assert "GranteePrincipal" not in entry and "RetiringPrincipal" not in entry
    assert entry["Constraints"] == {"SourceArn": BUCKET, "EncryptionContextSubset": {"a": "1"}}
    listed = svc.list_grants(key_id=key, grantee_service_principal=S3)["Grants"]
    assert [g["GrantId"] for g in listed] == [made["GrantId"]]
    retirable = svc.list_retirable_grants(retiring_service_principal=S3)["Grants"]
    assert [g["GrantId"] for g in retirable] == [made["GrantId"]]
    # its retiring service principal retires it (RetireGrant is not bound by SourceArn)
    svc.retire_grant(key_id=key, grant_id=made["GrantId"], principal=S3)
    assert svc.list_grants(key_id=key)["Grants"] == []
    again = svc.create_grant(
        key_id=key,
        grantee_service_principal=S3,
        retiring_principal=f"arn:aws:iam::{A}:root",
        operations=["Encrypt", "RetireGrant"],
        constraints={"SourceArn": BUCKET},
    )
    svc.retire_grant(grant_token=again["GrantToken"], principal=S3)  # a grantee with RetireGrant
    assert svc.list_grants(key_id=key)["Grants"] == []


def test_a_grant_with_a_principal_keeps_its_members(
    svc: KeyService, key: str, grantee: str
) -> None:
    """A grant for an IAM principal retired by a service lists each under its own member."""
    grant(svc, key, grantee, "Encrypt", retiring_service_principal=S3)
    (entry,) = svc.list_grants(key_id=key)["Grants"]
    assert entry["GranteePrincipal"] == grantee
    assert entry["RetiringServicePrincipal"] == S3
    assert "GranteeServicePrincipal" not in entry and "RetiringPrincipal" not in entry


def test_a_source_arn_grant_allows_no_direct_call(svc: KeyService, key: str, grantee: str) -> None:
    """AWS: a SourceArn constraint allows the grant only for a request made on behalf of that
    resource; a principal calling for itself is not. The constraint fits every kind of key (a
    signing key here), unlike the encryption context constraints."""
    grant(svc, key, grantee, "Encrypt", constraints={"SourceArn": BUCKET})
    assert_denied(
        svc, lambda: svc.encrypt(key_id=key, plaintext=b"p", principal=grantee), grantee, A
    )
    signing = svc.arn(new_key(svc, key_usage="SIGN_VERIFY", key_spec="ECC_NIST_P256"))
    grant(svc, signing, grantee, "Sign", constraints={"SourceArn": BUCKET})
    with pytest.raises(ValidationException):
        grant(svc, signing, grantee, "Sign", constraints={"EncryptionContextSubset": {"a": "1"}})
    for bad in ("bucket", "arn:aws:s3:::bucket", "x" * 600):
        with pytest.raises(ValidationException):
            grant(svc, key, grantee, "Encrypt", constraints={"SourceArn": bad})


def test_a_context_with_keys_that_differ_only_in_case_meets_constraints_pair_by_pair(
    svc: KeyService, key: str, grantee: str
) -> None:
    """Constraint keys ignore case, so ``stage`` and ``STAGE`` are two pairs of one key. The
    context was folded into one mapping, which kept whichever the caller listed last: an
    EncryptionContextEquals ``{stage: A}`` accepted ``{STAGE: B, stage: A}`` (an extra pair)
    and refused the same pairs in the other order (review)."""
    grant(svc, key, grantee, "Encrypt", constraints={EQ: {"stage": "A"}})
    for ctx, ok in (
        ({"stage": "A"}, True),
        ({"STAGE": "A"}, True),
        ({"STAGE": "B", "stage": "A"}, False),
        ({"stage": "A", "STAGE": "B"}, False),
        ({"stage": "A", "Stage": "A"}, False),
    ):
        call = lambda c=ctx: svc.encrypt(  # noqa: E731
            key_id=key, plaintext=b"x", encryption_context=c, principal=grantee
        )
        assert allowed(call) is ok, ctx
    other = user(svc, "other")
    grant(svc, key, other, "Encrypt", constraints={SUB: {"stage": "A", "team": "x"}})
    for ctx, ok in (
        ({"STAGE": "B", "stage": "A", "team": "x"}, True),  # both required pairs are there
        ({"stage": "A", "STAGE": "B", "team": "x"}, True),
        ({"stage": "B", "STAGE": "B", "team": "x"}, False),
    ):
        call = lambda c=ctx: svc.encrypt(  # noqa: E731
            key_id=key, plaintext=b"x", encryption_context=c, principal=other
        )
        assert allowed(call) is ok, ctx
