"""The condition keys AWS KMS puts in each request ("Condition keys for AWS KMS" and IAM's
global keys), each shown to be present: a Deny conditioned on it stops the call, and the same
call with a value outside the condition goes through.

Without a key in the request a condition on it is false, so a Deny on a key this service never
supplied was silently skipped (a Deny of CreateKey with BypassPolicyLockoutSafetyCheck, AWS's
own example, let the bypass through).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from envelope.service import KeyService
from envelope.service.errors import AccessDeniedException

from .access_helpers import A, attach, stmt, user

Call = Callable[[KeyService, str, str], Any]


def _key(svc: KeyService, **kw: Any) -> str:
    return str(svc.create_key(**kw)["KeyMetadata"]["Arn"])


def _policy(svc: KeyService, key: str, caller: str, bypass: bool) -> Any:
    text = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                stmt(Principal={"AWS": f"arn:aws:iam::{A}:root"}),
                stmt(Principal={"AWS": caller}),
            ],
        }
    )
    return svc.put_key_policy(
        key_id=key, policy=text, bypass_policy_lockout_safety_check=bypass, principal=caller
    )


def _sign(svc: KeyService, caller: str, algorithm: str) -> Any:
    key = _key(svc, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY")
    return svc.sign(
        key_id=key, message=b"m", signing_algorithm=algorithm, message_type="RAW", principal=caller
    )


def _mac(svc: KeyService, caller: str, algorithm: str) -> Any:
    key = _key(svc, key_spec="HMAC_256", key_usage="GENERATE_VERIFY_MAC")
    return svc.generate_mac(key_id=key, message=b"m", mac_algorithm=algorithm, principal=caller)


def _reencrypt(svc: KeyService, caller: str, same: bool) -> Any:
    a, b = _key(svc), _key(svc)
    blob = svc.encrypt(key_id=a, plaintext=b"p")["CiphertextBlob"]
    return svc.re_encrypt(
        ciphertext_blob=blob, destination_key_id=a if same else b, principal=caller
    )


#: (condition key, Deny's condition, a call the Deny stops, the same call outside the condition)
CASES: list[tuple[str, dict[str, Any], Callable[[KeyService, str], Any], Callable[..., Any]]] = [
    (
        "kms:BypassPolicyLockoutSafetyCheck on CreateKey",
        {"Bool": {"kms:BypassPolicyLockoutSafetyCheck": "true"}},
        lambda s, c: s.create_key(bypass_policy_lockout_safety_check=True, principal=c),
        lambda s, c: s.create_key(principal=c),
    ),
    (
        "kms:BypassPolicyLockoutSafetyCheck on PutKeyPolicy",
        {"Bool": {"kms:BypassPolicyLockoutSafetyCheck": "true"}},
        lambda s, c: _policy(s, _key(s), c, True),
        lambda s, c: _policy(s, _key(s), c, False),
    ),
    (
        "kms:ScheduleKeyDeletionPendingWindowInDays",
        {"NumericLessThan": {"kms:ScheduleKeyDeletionPendingWindowInDays": "30"}},
        lambda s, c: s.schedule_key_deletion(key_id=_key(s), pending_window_in_days=7, principal=c),
        lambda s, c: s.schedule_key_deletion(key_id=_key(s), principal=c),
    ),
    (
        "kms:RotationPeriodInDays",
        {"NumericLessThan": {"kms:RotationPeriodInDays": "180"}},
        lambda s, c: s.enable_key_rotation(key_id=_key(s), rotation_period_in_days=90, principal=c),
        lambda s, c: s.enable_key_rotation(
            key_id=_key(s), rotation_period_in_days=365, principal=c
        ),
    ),
    (
        "kms:GrantIsForAWSResource on ListGrants",
        {"Bool": {"kms:GrantIsForAWSResource": "false"}},
        lambda s, c: s.list_grants(key_id=_key(s), principal=c),
        None,
    ),
    (
        "kms:ReEncryptOnSameKey",
        {"Bool": {"kms:ReEncryptOnSameKey": "true"}},
        lambda s, c: _reencrypt(s, c, True),
        lambda s, c: _reencrypt(s, c, False),
    ),
    (
        "kms:DataKeyPairSpec",
        {"StringEquals": {"kms:DataKeyPairSpec": "RSA_2048"}},
        lambda s, c: s.generate_data_key_pair(
            key_id=_key(s), key_pair_spec="RSA_2048", principal=c
        ),
        lambda s, c: s.generate_data_key_pair(
            key_id=_key(s), key_pair_spec="ECC_NIST_P256", principal=c
        ),
    ),
    (
        # the algorithm that encrypts the data key (the developer guide); the XKS prefetch
        # set it and the transaction did not, so the two decided differently (diff review)
        "kms:EncryptionAlgorithm on GenerateDataKey",
        {"StringEquals": {"kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}},
        lambda s, c: s.generate_data_key(key_id=_key(s), key_spec="AES_256", principal=c),
        lambda s, c: s.describe_key(key_id=_key(s), principal=c),
    ),
    (
        "kms:EncryptionAlgorithm on GenerateDataKeyPair",
        {"StringEquals": {"kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}},
        lambda s, c: s.generate_data_key_pair(
            key_id=_key(s), key_pair_spec="ECC_NIST_P256", principal=c
        ),
        None,
    ),
    (
        "kms:SigningAlgorithm",
        {"StringEquals": {"kms:SigningAlgorithm": "ECDSA_SHA_256", "kms:MessageType": "RAW"}},
        lambda s, c: _sign(s, c, "ECDSA_SHA_256"),
        None,
    ),
    (
        "kms:MacAlgorithm",
        {"StringEquals": {"kms:MacAlgorithm": "HMAC_SHA_256"}},
        lambda s, c: _mac(s, c, "HMAC_SHA_256"),
        None,
    ),
    (
        "kms:MultiRegion",
        {"Bool": {"kms:MultiRegion": "true"}},
        lambda s, c: s.create_key(multi_region=True, principal=c),
        lambda s, c: s.create_key(principal=c),
    ),
    (
        "kms:MultiRegionKeyType on a key",
        {"StringEquals": {"kms:MultiRegionKeyType": "PRIMARY"}},
        lambda s, c: s.describe_key(key_id=_key(s, multi_region=True), principal=c),
        lambda s, c: s.describe_key(key_id=_key(s), principal=c),
    ),
    (
        "kms:ReplicaRegion",
        {"StringEquals": {"kms:ReplicaRegion": "eu-west-1"}},
        lambda s, c: s.replicate_key(
            key_id=_key(s, multi_region=True), replica_region="eu-west-1", principal=c
        ),
        lambda s, c: s.replicate_key(
            key_id=_key(s, multi_region=True), replica_region="us-west-2", principal=c
        ),
    ),
    (
        "kms:WrappingAlgorithm and kms:WrappingKeySpec",
        {
            "StringEquals": {
                "kms:WrappingAlgorithm": "RSAES_OAEP_SHA_1",
                "kms:WrappingKeySpec": "RSA_2048",
            }
        },
        lambda s, c: s.get_parameters_for_import(
            key_id=_key(s, origin="EXTERNAL"),
            wrapping_algorithm="RSAES_OAEP_SHA_1",
            wrapping_key_spec="RSA_2048",
            principal=c,
        ),
        lambda s, c: s.get_parameters_for_import(
            key_id=_key(s, origin="EXTERNAL"),
            wrapping_algorithm="RSAES_OAEP_SHA_256",
            wrapping_key_spec="RSA_2048",
            principal=c,
        ),
    ),
    (
        "aws:PrincipalType and aws:username",
        {"StringEquals": {"aws:PrincipalType": "User", "aws:username": "caller"}},
        lambda s, c: s.describe_key(key_id=_key(s), principal=c),
        None,
    ),
    (
        "aws:RequestedRegion and aws:ViaAWSService",
        {
            "StringEquals": {"aws:RequestedRegion": "us-east-1"},
            "Bool": {"aws:ViaAWSService": "false"},
        },
        lambda s, c: s.describe_key(key_id=_key(s), principal=c),
        None,
    ),
    (
        "aws:EpochTime",
        {"NumericGreaterThan": {"aws:EpochTime": "1000"}},
        lambda s, c: s.describe_key(key_id=_key(s), principal=c),
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "condition", "denied", "allowed"), CASES, ids=[c[0] for c in CASES]
)
def test_a_deny_on_each_condition_key_applies(
    svc: KeyService,
    name: str,
    condition: dict[str, Any],
    denied: Callable[[KeyService, str], Any],
    allowed: Callable[[KeyService, str], Any] | None,
) -> None:
    caller = user(svc, "caller")
    attach(svc, caller, stmt(), stmt("Deny", Condition=condition))
    with pytest.raises(AccessDeniedException, match="explicit deny"):
        denied(svc, caller)
    if allowed is not None:
        allowed(svc, caller)
    # and without the Deny, the call it stopped goes through
    attach(svc, caller, stmt())
    denied(svc, caller)


def test_create_grant_conditions_read_the_grants_context_constraint(svc: KeyService) -> None:
    """kms:EncryptionContext:<key> and kms:EncryptionContextKeys list CreateGrant among their
    operations: there they read the encryption context constraint of the grant requested."""
    caller, grantee = user(svc, "caller"), user(svc, "grantee")
    key = _key(svc)
    attach(
        svc,
        caller,
        stmt(
            Action="kms:CreateGrant",
            Condition={
                "StringEquals": {"kms:EncryptionContext:Dept": "IT"},
                "ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "Dept"},
            },
        ),
    )

    def create(constraints: dict[str, Any] | None) -> Any:
        return svc.create_grant(
            key_id=key,
            grantee_principal=grantee,
            operations=["Decrypt"],
            constraints=constraints,
            principal=caller,
        )

    create({"EncryptionContextEquals": {"Dept": "IT"}})
    create({"EncryptionContextSubset": {"Dept": "IT"}})
    for other in ({"EncryptionContextEquals": {"Dept": "HR"}}, None):
        with pytest.raises(AccessDeniedException):
            create(other)


def test_a_key_policy_with_forallvalues_on_an_encryption_context_key_is_refused(
    svc: KeyService,
) -> None:
    """The guide's warning on kms:EncryptionContext:<key>: ForAllValues holds for a request
    with no encryption context at all, so KMS refuses it in a key policy
    (OverlyPermissiveCondition); the policy is unchanged."""
    from envelope.service.errors import MalformedPolicyDocumentException

    key = _key(svc)
    before = svc.get_key_policy(key_id=key)["Policy"]
    text = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                stmt(Principal={"AWS": f"arn:aws:iam::{A}:root"}),
                stmt(
                    Principal={"AWS": "*"},
                    Action="kms:Decrypt",
                    Condition={"ForAllValues:StringEquals": {"kms:EncryptionContext:AppName": "X"}},
                ),
            ],
        }
    )
    with pytest.raises(MalformedPolicyDocumentException, match="OverlyPermissiveCondition"):
        svc.put_key_policy(key_id=key, policy=text)
    assert svc.get_key_policy(key_id=key)["Policy"] == before
    # ... on aws:RequestTag/ too, and in a Deny: the guide's warning names any policy that
    # "includes" such a condition (review), in its own words
    for effect, key_name, what in (
        ("Allow", "aws:RequestTag/env", "tag"),
        ("Deny", "kms:EncryptionContext:AppName", "encryption context"),
    ):
        text = json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    stmt(Principal={"AWS": f"arn:aws:iam::{A}:root"}),
                    stmt(
                        Effect=effect,
                        Principal={"AWS": "*"},
                        Action="kms:Decrypt",
                        Condition={"ForAllValues:StringEquals": {key_name: "X"}},
                    ),
                ],
            }
        )
        with pytest.raises(MalformedPolicyDocumentException) as e:
            svc.put_key_policy(key_id=key, policy=text)
        assert e.value.message == (
            "OverlyPermissiveCondition: Using the ForAllValues set operator with a "
            f"single-valued condition key matches requests without the specified {what} or "
            f"with an unspecified {what}. To fix, remove ForAllValues."
        )
    assert svc.get_key_policy(key_id=key)["Policy"] == before


@pytest.mark.parametrize("text", ["€", "日本", "\U0001f600", "\x7f", "\x85"])
def test_a_key_policy_holds_only_latin_1(svc: KeyService, text: str) -> None:
    """AWS KMS, "Key policy format": printable ASCII and Latin-1 Supplement characters, tab,
    line feed and carriage return; anything else is MalformedPolicyDocumentException."""
    from envelope.service.errors import MalformedPolicyDocumentException

    key = _key(svc)
    ok = {
        "Version": "2012-10-17",
        "Statement": [stmt(Sid="Root ok é", Principal={"AWS": f"arn:aws:iam::{A}:root"})],
    }
    svc.put_key_policy(key_id=key, policy=json.dumps(ok, ensure_ascii=False))
    bad = dict(ok, Statement=[dict(ok["Statement"][0], Sid=f"Root {text}")])
    with pytest.raises(MalformedPolicyDocumentException, match="Latin-1"):
        svc.put_key_policy(key_id=key, policy=json.dumps(bad, ensure_ascii=False))


@pytest.mark.parametrize(
    ("sids", "ok"),
    [(["A1", "B2"], True), (["has space"], False), (["dash-ed"], False), (["A", "A"], False)],
)
def test_an_identity_policys_sids_follow_iams_rules(
    svc: KeyService, sids: list[str], ok: bool
) -> None:
    """IAM: a Sid holds letters and digits only and is unique within the policy."""
    from envelope.service.errors import MalformedPolicyDocumentException

    caller = user(svc, "caller")
    statements = [stmt(Sid=sid) for sid in sids]
    if ok:
        attach(svc, caller, *statements)
    else:
        with pytest.raises(MalformedPolicyDocumentException, match="Sid"):
            attach(svc, caller, *statements)


def test_a_deny_on_an_encryption_context_value_sees_every_spelling_of_its_key(
    svc: KeyService,
) -> None:
    """``kms:EncryptionContext:<k>`` ignores the case of `k` (AWS's "case sensitivity of the
    encryption context condition"). With ``stage`` and ``Stage`` both in a context, only the
    pair listed last was seen: adding ``Stage: Test`` after ``stage: Restricted`` slipped past
    a Deny on ``stage = Restricted`` (review). Every value of the key is seen now."""
    key = _key(svc)
    caller = user(svc, "caller")
    deny = {"StringEquals": {"kms:EncryptionContext:stage": "Restricted"}}
    attach(
        svc, caller, stmt(Action="kms:Encrypt"), stmt("Deny", Action="kms:Encrypt", Condition=deny)
    )
    for ctx in (
        {"stage": "Restricted"},
        {"stage": "Restricted", "Stage": "Test"},
        {"Stage": "Test", "stage": "Restricted"},
        {"STAGE": "Restricted", "stage": "Test"},
    ):
        with pytest.raises(AccessDeniedException, match="explicit deny"):
            svc.encrypt(key_id=key, plaintext=b"x", encryption_context=ctx, principal=caller)
    svc.encrypt(
        key_id=key, plaintext=b"x", encryption_context={"stage": "Test", "Stage": "Dev"},
        principal=caller,
    )


def test_request_alias_covers_decrypt_and_reencrypt_from(svc: KeyService) -> None:
    """kms:RequestAlias applies to every cryptographic operation whose KeyId is an alias
    (AWS's condition keys page). Decrypt and ReEncrypt's source authorized the key the
    ciphertext names without it: an Allow through the alias refused them, and a Deny on the
    alias did not stop Decrypt (review)."""
    key = _key(svc)
    svc.create_alias(alias_name="alias/fin", target_key_id=key)
    other = _key(svc)
    svc.create_alias(alias_name="alias/other", target_key_id=other)
    through = {"StringEquals": {"kms:RequestAlias": "alias/fin"}}
    alice = user(svc, "alice")
    actions = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*"]
    attach(svc, alice, stmt(Action=actions, Condition=through))
    blob = svc.encrypt(key_id="alias/fin", plaintext=b"x", principal=alice)["CiphertextBlob"]
    arn = f"arn:aws:kms:us-east-1:{A}:alias/fin"
    for ref in ("alias/fin", arn):
        assert svc.decrypt(ciphertext_blob=blob, key_id=ref, principal=alice)["Plaintext"] == b"x"
    svc.re_encrypt(
        ciphertext_blob=blob, source_key_id="alias/fin", destination_key_id="alias/fin",
        principal=alice,
    )
    with pytest.raises(AccessDeniedException):  # no alias named: the Allow does not hold
        svc.decrypt(ciphertext_blob=blob, principal=alice)
    with pytest.raises(AccessDeniedException):  # an alias of another key sets nothing
        svc.decrypt(ciphertext_blob=blob, key_id="alias/other", principal=alice)
    bob = user(svc, "bob")
    attach(
        svc, bob, stmt(Action=["kms:Encrypt", "kms:Decrypt"]),
        stmt("Deny", Action=["kms:Encrypt", "kms:Decrypt"], Condition=through),
    )
    with pytest.raises(AccessDeniedException, match="explicit deny"):
        svc.decrypt(ciphertext_blob=blob, key_id="alias/fin", principal=bob)
    assert svc.decrypt(ciphertext_blob=blob, principal=bob)["Plaintext"] == b"x"
