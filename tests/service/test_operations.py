"""Every operation's parameter bounds and the AWS error name each refusal carries."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from envelope.service import KeyService, KmsServiceError
from envelope.service import errors as E

from .conftest import FakeClock, new_key


def code_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(KmsServiceError) as info:
        fn()
    return info.value.code


def test_error_codes_are_aws_names() -> None:
    for name in E.__all__:
        cls = getattr(E, name)
        if name in (
            "KmsServiceError",
            "RootKeyError",
            "StoreError",
            "TamperedStoreError",
            "DigestError",
        ):
            assert cls.code == "KMSInternalException"  # not AWS errors (see errors.py)
            continue
        assert cls.code == name
        assert cls("x").code == name


def test_create_key_defaults_and_metadata(svc: KeyService) -> None:
    meta = svc.create_key(description="d")["KeyMetadata"]
    assert meta["KeyState"] == "Enabled" and meta["Enabled"] is True
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT" and meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert meta["Origin"] == "AWS_KMS" and meta["KeyManager"] == "CUSTOMER"
    assert meta["MultiRegion"] is False
    assert meta["Arn"] == f"arn:aws:kms:us-east-1:000000000000:key/{meta['KeyId']}"
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert svc.describe_key(key_id=meta["Arn"])["KeyMetadata"] == meta


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"key_spec": "AES_256"}, "ValidationException"),
        ({"key_usage": "SIGN_VERIFY"}, "ValidationException"),
        ({"key_spec": "HMAC_256"}, "ValidationException"),  # HMAC needs GENERATE_VERIFY_MAC
        ({"key_spec": "ECC_NIST_P256", "key_usage": "ENCRYPT_DECRYPT"}, "ValidationException"),
        ({"origin": "AWS_CLOUDHSM"}, "UnsupportedOperationException"),
        ({"origin": "SOMEWHERE"}, "ValidationException"),
        ({"description": "x" * 8193}, "ValidationException"),
        ({"tags": [{"TagKey": "aws:x", "TagValue": "v"}]}, "TagException"),
        ({"tags": [{"TagKey": "", "TagValue": "v"}]}, "TagException"),
        ({"tags": [{"TagKey": "k", "TagValue": "v" * 257}]}, "TagException"),
        (
            {"tags": [{"TagKey": f"k{i}", "TagValue": "v"} for i in range(51)]},
            "TagException",  # AWS's recorded answer on CreateKey ("Too many tags")
        ),
    ],
)
def test_create_key_refusals(svc: KeyService, kwargs: dict[str, Any], code: str) -> None:
    assert code_of(lambda: svc.create_key(**kwargs)) == code


def test_key_references(svc: KeyService) -> None:
    kid = new_key(svc)
    arn = svc.arn(kid)
    svc.create_alias(alias_name="alias/ref", target_key_id=kid)
    for ref in (kid, arn, "alias/ref", "arn:aws:kms:us-east-1:000000000000:alias/ref"):
        assert svc.describe_key(key_id=ref)["KeyMetadata"]["KeyId"] == kid
    assert code_of(lambda: svc.describe_key(key_id="1234")) == "NotFoundException"
    assert code_of(lambda: svc.describe_key(key_id="alias/none")) == "NotFoundException"
    other = f"arn:aws:kms:eu-west-1:000000000000:key/{kid}"
    assert code_of(lambda: svc.describe_key(key_id=other)) == "NotFoundException"
    assert code_of(lambda: svc.describe_key(key_id="arn:aws:s3:::b")) == "InvalidArnException"
    assert code_of(lambda: svc.describe_key(key_id="")) == "ValidationException"
    assert code_of(lambda: svc.describe_key(key_id="x" * 2049)) == "ValidationException"


def test_encrypt_decrypt_bounds(svc: KeyService) -> None:
    kid = new_key(svc)
    assert code_of(lambda: svc.encrypt(key_id=kid, plaintext=b"")) == "ValidationException"
    assert code_of(lambda: svc.encrypt(key_id=kid, plaintext=b"x" * 4097)) == "ValidationException"
    out = svc.encrypt(key_id=kid, plaintext=b"x" * 4096, encryption_context={"a": "1"})
    assert out["KeyId"] == svc.arn(kid) and out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    blob = out["CiphertextBlob"]
    # KeyId is optional for symmetric keys; the blob names its key
    dec = svc.decrypt(ciphertext_blob=blob, encryption_context={"a": "1"})
    assert dec["Plaintext"] == b"x" * 4096 and dec["KeyId"] == svc.arn(kid)
    for ctx in ({}, {"a": "2"}, {"a": "1", "b": "1"}):
        err = code_of(lambda c=ctx: svc.decrypt(ciphertext_blob=blob, encryption_context=c))
        assert err == "InvalidCiphertextException"
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    assert code_of(
        lambda: svc.decrypt(ciphertext_blob=bytes(flipped), encryption_context={"a": "1"})
    ) == ("InvalidCiphertextException")
    assert code_of(lambda: svc.decrypt(ciphertext_blob=b"garbage")) == "InvalidCiphertextException"
    assert code_of(lambda: svc.decrypt(ciphertext_blob=b"")) == "ValidationException"
    assert code_of(lambda: svc.decrypt(ciphertext_blob=b"x" * 6145)) == "ValidationException"
    other = new_key(svc)
    assert (
        code_of(
            lambda: svc.decrypt(ciphertext_blob=blob, encryption_context={"a": "1"}, key_id=other)
        )
        == "IncorrectKeyException"
    )
    assert svc.decrypt(ciphertext_blob=blob, encryption_context={"a": "1"}, key_id=kid)
    bad_ctx: Any = {"a": 1}  # not a map of strings
    err = code_of(lambda: svc.encrypt(key_id=kid, plaintext=b"x", encryption_context=bad_ctx))
    assert err == "ValidationException"


def test_generate_data_key_bounds(svc: KeyService) -> None:
    kid = new_key(svc)
    assert len(svc.generate_data_key(key_id=kid, key_spec="AES_128")["Plaintext"]) == 16
    assert len(svc.generate_data_key(key_id=kid, key_spec="AES_256")["Plaintext"]) == 32
    for n in (1, 1024):
        out = svc.generate_data_key(key_id=kid, number_of_bytes=n)
        assert len(out["Plaintext"]) == n
        assert svc.decrypt(ciphertext_blob=out["CiphertextBlob"])["Plaintext"] == out["Plaintext"]
    for kwargs in (
        {},
        {"key_spec": "AES_256", "number_of_bytes": 32},
        {"key_spec": "AES_512"},
        {"number_of_bytes": 0},
        {"number_of_bytes": 1025},
    ):
        assert code_of(lambda k=kwargs: svc.generate_data_key(key_id=kid, **k)) == (
            "ValidationException"
        )
    out = svc.generate_data_key_without_plaintext(key_id=kid, key_spec="AES_256")
    assert "Plaintext" not in out
    assert len(svc.decrypt(ciphertext_blob=out["CiphertextBlob"])["Plaintext"]) == 32


def test_generate_random_bounds(svc: KeyService) -> None:
    assert len(svc.generate_random(number_of_bytes=1024)["Plaintext"]) == 1024
    for n in (0, 1025):
        assert code_of(lambda n=n: svc.generate_random(number_of_bytes=n)) == "ValidationException"


def test_re_encrypt(svc: KeyService) -> None:
    a, b = new_key(svc), new_key(svc)
    blob = svc.encrypt(key_id=a, plaintext=b"hi", encryption_context={"x": "1"})["CiphertextBlob"]
    out = svc.re_encrypt(
        ciphertext_blob=blob,
        source_encryption_context={"x": "1"},
        destination_key_id=b,
        destination_encryption_context={"y": "2"},
    )
    assert out["SourceKeyId"] == svc.arn(a) and out["KeyId"] == svc.arn(b)
    dec = svc.decrypt(ciphertext_blob=out["CiphertextBlob"], encryption_context={"y": "2"})
    assert dec["Plaintext"] == b"hi"
    assert (
        code_of(lambda: svc.re_encrypt(ciphertext_blob=blob, destination_key_id=b))
        == "InvalidCiphertextException"
    )


def test_schedule_and_cancel_deletion_bounds(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc)
    for days in (6, 31):
        assert (
            code_of(lambda d=days: svc.schedule_key_deletion(key_id=kid, pending_window_in_days=d))
            == "ValidationException"
        )
    out = svc.schedule_key_deletion(key_id=kid)
    assert out["PendingWindowInDays"] == 30 and out["KeyState"] == "PendingDeletion"
    assert out["DeletionDate"] == clock.now + 30 * 86400
    assert code_of(lambda: svc.schedule_key_deletion(key_id=kid)) == "KMSInvalidStateException"
    svc.cancel_key_deletion(key_id=kid)
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "Disabled"
    assert code_of(lambda: svc.cancel_key_deletion(key_id=kid)) == "KMSInvalidStateException"


def test_deletion_happens_when_window_ends(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc)
    svc.create_alias(alias_name="alias/gone", target_key_id=kid)
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    clock.advance(days=7, seconds=-1)
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    clock.advance(seconds=1)
    assert code_of(lambda: svc.describe_key(key_id=kid)) == "NotFoundException"
    assert svc.list_keys()["Keys"] == []
    assert svc.list_aliases()["Aliases"] == []


def test_pending_deletion_use_is_an_alarm(svc: KeyService) -> None:
    kid = new_key(svc)
    blob = svc.encrypt(key_id=kid, plaintext=b"x")["CiphertextBlob"]
    svc.schedule_key_deletion(key_id=kid)
    assert code_of(lambda: svc.decrypt(ciphertext_blob=blob)) == "KMSInvalidStateException"
    last = svc.audit_tail(1)[0]
    assert last["operation"] == "Decrypt" and last["alarm"] == 1
    assert last["error_code"] == "KMSInvalidStateException" and last["outcome"] == "error"
    svc.cancel_key_deletion(key_id=kid)
    assert code_of(lambda: svc.decrypt(ciphertext_blob=blob)) == "DisabledException"
    assert svc.audit_tail(1)[0]["alarm"] == 0


def test_rotation_bounds(svc: KeyService) -> None:
    kid = new_key(svc)
    for days in (89, 2561):
        assert (
            code_of(lambda d=days: svc.enable_key_rotation(key_id=kid, rotation_period_in_days=d))
            == "ValidationException"
        )
    assert svc.get_key_rotation_status(key_id=kid)["KeyRotationEnabled"] is False
    svc.enable_key_rotation(key_id=kid)
    st = svc.get_key_rotation_status(key_id=kid)
    assert st["KeyRotationEnabled"] is True and st["RotationPeriodInDays"] == 365
    svc.disable_key_rotation(key_id=kid)
    assert svc.get_key_rotation_status(key_id=kid)["KeyRotationEnabled"] is False
    hmac_key = new_key(svc, key_spec="HMAC_256", key_usage="GENERATE_VERIFY_MAC")
    assert code_of(lambda: svc.enable_key_rotation(key_id=hmac_key)) == (
        "UnsupportedOperationException"
    )
    assert code_of(lambda: svc.rotate_key_on_demand(key_id=hmac_key)) == (
        "UnsupportedOperationException"
    )
    # their status is always false, as AWS answers it (it refused; Terraform reads it for
    # every key it manages; review)
    rsa = new_key(svc, key_spec="RSA_2048", key_usage="SIGN_VERIFY")
    for k in (hmac_key, rsa):
        assert svc.get_key_rotation_status(key_id=k) == {
            "KeyId": svc.arn(k),
            "KeyRotationEnabled": False,
        }


def test_on_demand_rotation_limit(svc: KeyService) -> None:
    kid = new_key(svc)
    for _ in range(25):
        svc.rotate_key_on_demand(key_id=kid)
    assert code_of(lambda: svc.rotate_key_on_demand(key_id=kid)) == "LimitExceededException"
    rots = svc.list_key_rotations(key_id=kid, limit=10)
    assert len(rots["Rotations"]) == 10 and rots["Truncated"] is True
    rest = svc.list_key_rotations(key_id=kid, marker=rots["NextMarker"], limit=100)
    assert len(rest["Rotations"]) == 15 and rest["Truncated"] is False
    assert {r["RotationType"] for r in rest["Rotations"]} == {"ON_DEMAND"}


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("demo", "ValidationException"),  # AWS: 'Alias must start with the prefix "alias/"'
        ("alias/has space", "InvalidAliasNameException"),
        ("alias/aws/s3", "InvalidAliasNameException"),
        ("alias/" + "x" * 251, "ValidationException"),
    ],
)
def test_alias_name_rules(svc: KeyService, name: str, code: str) -> None:
    kid = new_key(svc)
    assert code_of(lambda: svc.create_alias(alias_name=name, target_key_id=kid)) == code


def test_alias_lifecycle(svc: KeyService) -> None:
    a, b = new_key(svc), new_key(svc)
    svc.create_alias(alias_name="alias/app", target_key_id=a)
    assert code_of(lambda: svc.create_alias(alias_name="alias/app", target_key_id=b)) == (
        "AlreadyExistsException"
    )
    assert code_of(lambda: svc.create_alias(alias_name="alias/x", target_key_id="alias/app")) == (
        "ValidationException"
    )
    blob = svc.encrypt(key_id="alias/app", plaintext=b"p")["CiphertextBlob"]
    svc.update_alias(alias_name="alias/app", target_key_id=b)
    assert svc.describe_key(key_id="alias/app")["KeyMetadata"]["KeyId"] == b
    assert svc.decrypt(ciphertext_blob=blob)["KeyId"] == svc.arn(a)  # blob names its key
    rsa_key = new_key(svc, key_spec="RSA_2048", key_usage="SIGN_VERIFY")
    assert code_of(lambda: svc.update_alias(alias_name="alias/app", target_key_id=rsa_key)) == (
        "ValidationException"
    )
    assert svc.describe_key(key_id="alias/app")["KeyMetadata"]["KeyId"] == b  # unchanged
    assert code_of(lambda: svc.update_alias(alias_name="alias/none", target_key_id=a)) == (
        "NotFoundException"
    )
    listed = svc.list_aliases(key_id=b)["Aliases"]
    assert [x["AliasName"] for x in listed] == ["alias/app"]
    svc.delete_alias(alias_name="alias/app")
    assert code_of(lambda: svc.delete_alias(alias_name="alias/app")) == "NotFoundException"
    svc.schedule_key_deletion(key_id=a)
    assert code_of(lambda: svc.create_alias(alias_name="alias/late", target_key_id=a)) == (
        "KMSInvalidStateException"
    )


def test_a_key_holds_at_most_50_aliases(svc: KeyService) -> None:
    """AWS's resource quota "Aliases per KMS key": 50, a 51st refused with
    LimitExceededException by CreateAlias and by UpdateAlias onto that key (there was no
    limit; review)."""
    full, other = new_key(svc), new_key(svc)
    for i in range(50):
        svc.create_alias(alias_name=f"alias/a{i}", target_key_id=full)
    assert code_of(
        lambda: svc.create_alias(alias_name="alias/a50", target_key_id=full)
    ) == "LimitExceededException"
    svc.create_alias(alias_name="alias/b", target_key_id=other)
    assert code_of(
        lambda: svc.update_alias(alias_name="alias/b", target_key_id=full)
    ) == "LimitExceededException"
    svc.update_alias(alias_name="alias/a0", target_key_id=full)  # (to its own key: no change)
    svc.delete_alias(alias_name="alias/a49")
    svc.update_alias(alias_name="alias/b", target_key_id=full)
    assert len(svc.list_aliases(key_id=full)["Aliases"]) == 50


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        # AWS (UpdateAlias): the same type (symmetric, asymmetric or HMAC) and the same usage;
        # the key spec may differ
        (("RSA_2048", "ENCRYPT_DECRYPT"), ("RSA_3072", "ENCRYPT_DECRYPT"), True),
        (("ECC_NIST_P256", "SIGN_VERIFY"), ("ECC_NIST_P384", "SIGN_VERIFY"), True),
        (("ECC_NIST_P256", "SIGN_VERIFY"), ("RSA_2048", "SIGN_VERIFY"), True),
        (("HMAC_256", "GENERATE_VERIFY_MAC"), ("HMAC_512", "GENERATE_VERIFY_MAC"), True),
        (("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"), ("RSA_2048", "ENCRYPT_DECRYPT"), False),
        (("RSA_2048", "SIGN_VERIFY"), ("RSA_2048", "ENCRYPT_DECRYPT"), False),
        (("HMAC_256", "GENERATE_VERIFY_MAC"), ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"), False),
        (("ECC_NIST_P256", "KEY_AGREEMENT"), ("ECC_NIST_P256", "SIGN_VERIFY"), False),
    ],
)
def test_update_alias_needs_the_same_key_type_and_usage(
    svc: KeyService, old: tuple[str, str], new: tuple[str, str], allowed: bool
) -> None:
    a = new_key(svc, key_spec=old[0], key_usage=old[1])
    b = new_key(svc, key_spec=new[0], key_usage=new[1])
    svc.create_alias(alias_name="alias/moving", target_key_id=a)
    if allowed:
        svc.update_alias(alias_name="alias/moving", target_key_id=b)
    else:
        with pytest.raises(E.ValidationException, match="same type"):
            svc.update_alias(alias_name="alias/moving", target_key_id=b)
    target = svc.describe_key(key_id="alias/moving")["KeyMetadata"]["KeyId"]
    assert target == (b if allowed else a)


def test_list_keys_pagination(svc: KeyService) -> None:
    ids = sorted(new_key(svc) for _ in range(7))
    seen: list[str] = []
    marker = None
    while True:
        page = svc.list_keys(limit=3, marker=marker)
        seen += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert seen == ids
    assert code_of(lambda: svc.list_keys(limit=0)) == "ValidationException"
    assert code_of(lambda: svc.list_keys(limit=1001)) == "ValidationException"
    assert code_of(lambda: svc.list_keys(marker="!!bogus")) == "InvalidMarkerException"


def test_a_marker_serves_only_the_operation_that_issued_it(svc: KeyService) -> None:
    """A NextMarker of ListKeys is not a marker of ListAliases, ListGrants, ListResourceTags,
    ListKeyRotations or ListKeyPolicies: InvalidMarkerException, not a page from elsewhere."""
    kid = new_key(svc, tags=[{"TagKey": f"t{i}", "TagValue": "v"} for i in range(3)])
    for i in range(3):
        new_key(svc)
        svc.create_alias(alias_name=f"alias/m{i}", target_key_id=kid)
        svc.create_grant(key_id=kid, grantee_principal=svc.root_principal, operations=["Encrypt"])
    marker = svc.list_keys(limit=1)["NextMarker"]
    for call in (
        lambda: svc.list_aliases(marker=marker),
        lambda: svc.list_grants(key_id=kid, marker=marker),
        lambda: svc.list_resource_tags(key_id=kid, marker=marker),
        lambda: svc.list_key_rotations(key_id=kid, marker=marker),
        lambda: svc.list_key_policies(key_id=kid, marker=marker),
    ):
        assert code_of(call) == "InvalidMarkerException"
    # each operation's own markers go on working
    assert svc.list_keys(limit=1, marker=marker)["Keys"]
    aliases = svc.list_aliases(limit=1)
    assert svc.list_aliases(marker=aliases["NextMarker"])["Aliases"]
    assert code_of(lambda: svc.list_keys(marker=aliases["NextMarker"])) == "InvalidMarkerException"
    tags = svc.list_resource_tags(key_id=kid, limit=1)
    assert len(svc.list_resource_tags(key_id=kid, marker=tags["NextMarker"])["Tags"]) == 2


def test_tags(svc: KeyService) -> None:
    kid = new_key(svc, tags=[{"TagKey": "team", "TagValue": "a"}])
    svc.tag_resource(key_id=kid, tags=[{"TagKey": "env", "TagValue": "prod"}])
    svc.tag_resource(key_id=kid, tags=[{"TagKey": "team", "TagValue": "b"}])
    tags = svc.list_resource_tags(key_id=kid)["Tags"]
    assert tags == [{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "team", "TagValue": "b"}]
    svc.untag_resource(key_id=kid, tag_keys=["env"])
    assert svc.list_resource_tags(key_id=kid)["Tags"] == [{"TagKey": "team", "TagValue": "b"}]
    assert (
        code_of(lambda: svc.tag_resource(key_id=kid, tags=[{"TagKey": "aws:k", "TagValue": "v"}]))
        == "TagException"
    )
    many = [{"TagKey": f"k{i}", "TagValue": "v"} for i in range(50)]
    assert code_of(lambda: svc.tag_resource(key_id=kid, tags=many)) == "LimitExceededException"


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ([{"TagKey": "AWS:k", "TagValue": "v"}], "Tags beginning with aws: are reserved"),
        ([{"TagKey": "Aws:k", "TagValue": "v"}], "Tags beginning with aws: are reserved"),
        (
            [{"TagKey": "t", "TagValue": "a"}, {"TagKey": "t", "TagValue": "b"}],
            "Duplicate tag keys",
        ),
        ([{"TagKey": f"k{i}", "TagValue": "v"} for i in range(51)], "Too many tags"),
    ],
)
def test_tag_refusals_as_aws_words_them(
    svc: KeyService, tags: list[dict[str, str]], message: str
) -> None:
    """AWS's recorded answers (TagException and its message) on CreateKey; TagResource refuses
    the same tags (but more than 50 there is LimitExceededException, as its model lists)."""
    with pytest.raises(E.TagException, match=message):
        svc.create_key(tags=tags)
    assert svc.list_keys()["Keys"] == []  # nothing was made
    if message != "Too many tags":
        kid = new_key(svc)
        with pytest.raises(E.TagException, match=message):
            svc.tag_resource(key_id=kid, tags=tags)
        assert svc.list_resource_tags(key_id=kid)["Tags"] == []


def test_update_description(svc: KeyService) -> None:
    kid = new_key(svc)
    svc.update_key_description(key_id=kid, description="new")
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["Description"] == "new"
    assert (
        code_of(lambda: svc.update_key_description(key_id=kid, description="x" * 8193))
        == "ValidationException"
    )


def test_aws_managed_keys(svc: KeyService) -> None:
    """Used through their service (kms:ViaService) by the account; never managed by anyone:
    the fixed key policy allows no management action, so AWS (and we) answer AccessDenied."""
    from envelope.service import RequestContext

    via = RequestContext(via_service="s3.us-east-1.amazonaws.com")
    out = svc.generate_data_key(key_id="alias/aws/s3", key_spec="AES_256", context=via)
    meta = svc.describe_key(key_id="alias/aws/s3")["KeyMetadata"]
    assert meta["KeyManager"] == "AWS" and out["KeyId"] == meta["Arn"]
    assert svc.get_key_rotation_status(key_id=meta["KeyId"])["KeyRotationEnabled"] is True
    kid = meta["KeyId"]
    # not through the service: refused even to the account root
    assert code_of(lambda: svc.encrypt(key_id=kid, plaintext=b"x")) == "AccessDeniedException"
    for fn in (
        lambda: svc.disable_key(key_id=kid),
        lambda: svc.schedule_key_deletion(key_id=kid),
        lambda: svc.disable_key_rotation(key_id=kid),
        lambda: svc.update_key_description(key_id=kid, description="x"),
        lambda: svc.tag_resource(key_id=kid, tags=[{"TagKey": "a", "TagValue": "b"}]),
        lambda: svc.create_alias(alias_name="alias/mine", target_key_id=kid),
        lambda: svc.put_key_policy(key_id=kid, policy=svc.get_key_policy(key_id=kid)["Policy"]),
    ):
        assert code_of(fn) == "AccessDeniedException"
    # created once: a second use finds the same key
    out = svc.encrypt(key_id="alias/aws/s3", plaintext=b"x", context=via)
    assert out["KeyId"] == meta["Arn"]
    assert code_of(lambda: svc.delete_alias(alias_name="alias/aws/s3")) == (
        "InvalidAliasNameException"
    )


@pytest.mark.parametrize(
    "name",
    [
        "alias/aws/third",
        "alias/aws/typo-service",
        "alias/aws/S3",
        # any alias whose name from its 11th character was a service's made one (found by a
        # conformance review): a customer's alias/dev/s3 was taken for good by a managed key
        "alias/dev/s3",
        "alias/qa1/rds",
        "alias/AWS/s3",
        "alias/0123s3",
    ],
)
def test_only_predefined_aws_aliases_make_a_managed_key(svc: KeyService, name: str) -> None:
    """A typo in an alias/aws/ name is NotFoundException, as in AWS, not a new AWS managed key
    that nobody could ever disable or delete; and only an alias/aws/ name makes one."""
    from envelope.service import RequestContext

    via = RequestContext(via_service="s3.us-east-1.amazonaws.com")
    before = svc.list_keys()["Keys"]
    assert code_of(lambda: svc.describe_key(key_id=name)) == "NotFoundException"
    assert (
        code_of(lambda: svc.generate_data_key(key_id=name, key_spec="AES_256", context=via))
        == "NotFoundException"
    )
    assert svc.list_keys()["Keys"] == before
    assert all(a["AliasName"] != name for a in svc.list_aliases()["Aliases"])


def test_wrong_key_usage(svc: KeyService) -> None:
    sign_key = new_key(svc, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY")
    mac_key = new_key(svc, key_spec="HMAC_256", key_usage="GENERATE_VERIFY_MAC")
    sym = new_key(svc)
    for kid in (sign_key, mac_key):
        assert code_of(lambda k=kid: svc.encrypt(key_id=k, plaintext=b"x")) == (
            "InvalidKeyUsageException"
        )
        assert code_of(lambda k=kid: svc.generate_data_key(key_id=k, key_spec="AES_256")) == (
            "InvalidKeyUsageException"
        )
    assert (
        code_of(lambda: svc.sign(key_id=sym, message=b"m", signing_algorithm="ECDSA_SHA_256"))
        == "InvalidKeyUsageException"
    )
    assert (
        code_of(lambda: svc.generate_mac(key_id=sym, message=b"m", mac_algorithm="HMAC_SHA_256"))
        == "InvalidKeyUsageException"
    )
    assert code_of(lambda: svc.get_public_key(key_id=sym)) == "UnsupportedOperationException"


def test_the_key_state_table_s_create_grant_and_cancel_key_deletion_rows(
    svc: KeyService,
) -> None:
    """CreateGrant is refused on a Disabled key (DisabledException) and on one pending import,
    unlike the other management operations; CancelKeyDeletion of a key not pending deletion
    says so in the table's words (review)."""
    grantee = "arn:aws:iam::000000000000:role/Reader"
    kid, imported = new_key(svc), new_key(svc, origin="EXTERNAL")
    svc.disable_key(key_id=kid)
    for key, code, words in (
        (kid, "DisabledException", "is disabled."),
        (imported, "KMSInvalidStateException", "is pending import."),
    ):
        with pytest.raises(KmsServiceError) as info:
            svc.create_grant(key_id=key, grantee_principal=grantee, operations=["Decrypt"])
        assert info.value.code == code and str(info.value).endswith(words)
    assert svc.list_grants(key_id=kid)["Grants"] == []
    svc.enable_key(key_id=kid)
    assert svc.create_grant(key_id=kid, grantee_principal=grantee, operations=["Decrypt"])
    with pytest.raises(KmsServiceError) as info:
        svc.cancel_key_deletion(key_id=kid)
    assert info.value.code == "KMSInvalidStateException"
    assert str(info.value).endswith("is not pending deletion.")


def test_disabled_key_refuses_crypto(svc: KeyService) -> None:
    kid = new_key(svc)
    blob = svc.encrypt(key_id=kid, plaintext=b"x")["CiphertextBlob"]
    svc.disable_key(key_id=kid)
    assert code_of(lambda: svc.decrypt(ciphertext_blob=blob)) == "DisabledException"
    assert code_of(lambda: svc.encrypt(key_id=kid, plaintext=b"x")) == "DisabledException"
    svc.enable_key(key_id=kid)
    assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == b"x"


def test_principal_and_context_are_recorded(svc: KeyService) -> None:
    from envelope.service import RequestContext

    kid = new_key(svc)
    alice = svc.create_user(user_name="alice")["User"]["Arn"]
    svc.put_principal_policy(
        arn=alice,
        policy_name="encrypt",
        policy_document='{"Version": "2012-10-17", "Statement": {"Effect": "Allow", '
        '"Action": "kms:Encrypt", "Resource": "*"}}',
    )
    ctx = RequestContext(source_ip="10.0.0.7", user_agent="tests/1.0", request_id="req-1")
    svc.encrypt(
        key_id=kid,
        plaintext=b"secret plaintext",
        principal="arn:aws:iam::000000000000:user/alice",
        context=ctx,
    )
    rec = svc.audit_tail(1)[0]
    assert rec["principal"] == "arn:aws:iam::000000000000:user/alice"
    assert (rec["source_ip"], rec["user_agent"], rec["request_id"]) == (
        "10.0.0.7",
        "tests/1.0",
        "req-1",
    )
    assert (rec["account"], rec["decision"], rec["matched"]) == (
        "000000000000",
        "allowed",
        "iam:encrypt:#0",
    )
    assert svc.audit_tail(2)[0]["principal"] == "arn:aws:iam::000000000000:root"


def test_audit_never_holds_secrets(svc: KeyService, home: Any) -> None:
    kid = new_key(svc)
    secret = b"TOP-SECRET-PLAINTEXT"
    out = svc.encrypt(key_id=kid, plaintext=secret)
    dk = svc.generate_data_key(key_id=kid, key_spec="AES_256")
    svc.decrypt(ciphertext_blob=out["CiphertextBlob"])
    import sqlite3

    conn = sqlite3.connect(home / "kms.sqlite3")
    bodies = "".join(r[0] for r in conn.execute("SELECT body FROM audit"))
    conn.close()
    import base64

    for value in (secret, dk["Plaintext"], out["CiphertextBlob"], dk["CiphertextBlob"]):
        assert value.hex() not in bodies
        assert base64.b64encode(value).decode() not in bodies
    assert secret.decode() not in bodies


def test_threads_share_one_service(svc: KeyService) -> None:
    import threading

    kid = new_key(svc)
    blobs: list[tuple[bytes, bytes]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(100):
                r = svc.generate_data_key(key_id=kid, key_spec="AES_256")
                blobs.append((r["CiphertextBlob"], r["Plaintext"]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(blobs) == 400
    for blob, pt in blobs[::37]:
        assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == pt
    report = svc.verify_audit_log()
    assert report.ok and report.records == 1 + 400 + len(blobs[::37])


@pytest.mark.parametrize(
    ("spec", "usage", "refused", "accepted"),
    [
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", ["Sign"], ["GenerateDataKeyPair", "ReEncryptTo"]),
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", ["GenerateMac"], ["Decrypt"]),
        ("RSA_2048", "ENCRYPT_DECRYPT", ["GenerateDataKey"], ["GetPublicKey", "Decrypt"]),
        ("ECC_NIST_P256", "SIGN_VERIFY", ["GenerateDataKey", "Decrypt"], ["Sign", "Verify"]),
        ("HMAC_256", "GENERATE_VERIFY_MAC", ["Encrypt"], ["GenerateMac", "DescribeKey"]),
        ("ECC_NIST_P256", "KEY_AGREEMENT", ["Sign"], ["DeriveSharedSecret", "GetPublicKey"]),
    ],
)
def test_a_grant_allows_only_what_its_key_supports(
    svc: KeyService, spec: str, usage: str, refused: list[str], accepted: list[str]
) -> None:
    """CreateGrant's documentation: "you cannot create a grant for a symmetric encryption KMS
    key that allows the Sign operation, or a grant for an asymmetric KMS key that allows the
    GenerateDataKey operation. If you try, KMS returns a ValidationError exception"."""
    kid = new_key(svc, key_spec=spec, key_usage=usage)
    grantee = "arn:aws:iam::000000000000:user/someone"
    with pytest.raises(E.ValidationException, match="does not support"):
        svc.create_grant(key_id=kid, grantee_principal=grantee, operations=[*accepted, *refused])
    assert svc.list_grants(key_id=kid)["Grants"] == []
    svc.create_grant(key_id=kid, grantee_principal=grantee, operations=accepted)


def test_update_alias_takes_a_key_not_an_alias(svc: KeyService) -> None:
    a, b = new_key(svc), new_key(svc)
    svc.create_alias(alias_name="alias/one", target_key_id=a)
    svc.create_alias(alias_name="alias/two", target_key_id=b)
    for target in ("alias/one", "arn:aws:kms:us-east-1:000000000000:alias/one"):
        with pytest.raises(E.ValidationException, match="key id or key ARN"):
            svc.update_alias(alias_name="alias/two", target_key_id=target)
    assert svc.describe_key(key_id="alias/two")["KeyMetadata"]["KeyId"] == b


def test_key_material_ids_follow_rotation(svc: KeyService) -> None:
    """AWS names each backing key (KeyMaterialId, 64 hex digits): DescribeKey's
    CurrentKeyMaterialId is what new ciphertext uses, a rotation changes it, and Decrypt and
    ReEncrypt answer the id of the material a ciphertext was made under."""
    kid = new_key(svc)
    first = svc.describe_key(key_id=kid)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert len(first) == 64 and int(first, 16) >= 0
    old = svc.generate_data_key(key_id=kid, key_spec="AES_256")
    assert old["KeyMaterialId"] == first
    svc.rotate_key_on_demand(key_id=kid)
    second = svc.describe_key(key_id=kid)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert second != first
    assert svc.decrypt(ciphertext_blob=old["CiphertextBlob"])["KeyMaterialId"] == first
    new = svc.encrypt(key_id=kid, plaintext=b"x")
    assert svc.decrypt(ciphertext_blob=new["CiphertextBlob"])["KeyMaterialId"] == second
    other = new_key(svc)
    moved = svc.re_encrypt(ciphertext_blob=old["CiphertextBlob"], destination_key_id=other)
    assert moved["SourceKeyMaterialId"] == first
    assert (
        moved["DestinationKeyMaterialId"]
        == (svc.describe_key(key_id=other)["KeyMetadata"]["CurrentKeyMaterialId"])
    )
    (rotation,) = svc.list_key_rotations(key_id=kid)["Rotations"]
    assert rotation["KeyMaterialId"] == second and rotation["KeyMaterialState"] == "CURRENT"
    pair = svc.generate_data_key_pair_without_plaintext(key_id=kid, key_pair_spec="ECC_NIST_P256")
    assert pair["KeyMaterialId"] == second
    rsa = new_key(svc, key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT")
    assert "CurrentKeyMaterialId" not in svc.describe_key(key_id=rsa)["KeyMetadata"]


def test_pending_deletion_window_shown_only_for_a_primary_awaiting_replicas(
    svc: KeyService,
) -> None:
    """KeyMetadata.PendingDeletionWindowInDays "is present only when the KeyState of the KMS
    key is PendingReplicaDeletion" (botocore's model); DeletionDate says when."""
    kid = new_key(svc)
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    meta = svc.describe_key(key_id=kid)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and "DeletionDate" in meta
    assert "PendingDeletionWindowInDays" not in meta


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("fake-key-id", "Invalid keyId 'fake-key-id'"),
        ("134f2428cec14b25a1ae9048164dba47", "Invalid keyId '134f2428cec14b25a1ae9048164dba47'"),
        ("mrk-fake-key-id", "Invalid keyId 'mrk-fake-key-id'"),
        (
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "Key 'arn:aws:kms:us-east-1:000000000000:key/1234abcd-12ab-34cd-56ef-1234567890ab' "
            "does not exist",
        ),
        (
            "arn:aws:kms:eu-west-1:000000000000:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "Invalid arn eu-west-1",
        ),
        (  # another partition's key is not one of this (aws) endpoint's, whatever its id
            "arn:aws-cn:kms:us-east-1:000000000000:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "Invalid arn aws-cn",
        ),
    ],
)
def test_unknown_keys_are_answered_in_aws_words(svc: KeyService, ref: str, message: str) -> None:
    """NotFoundException with the messages AWS was recorded giving: a reference that is not a
    key id at all, a key id of no key, and an ARN of another Region."""
    with pytest.raises(E.NotFoundException) as info:
        svc.describe_key(key_id=ref)
    assert info.value.message == message


@pytest.mark.parametrize("partition", ["aws-us-gov", "aws-cn"])
def test_a_key_or_alias_arn_of_another_partition_reaches_nothing(
    svc: KeyService, partition: str
) -> None:
    """A key's ARN with another partition names another key (partitions are separate
    worlds): never the key of the same id here; a partition that is no partition at all is
    not an ARN."""
    kid = new_key(svc)
    svc.create_alias(alias_name="alias/p", target_key_id=kid)
    for ref in (svc.arn(kid), f"arn:aws:kms:us-east-1:{svc.account}:alias/p"):
        assert svc.describe_key(key_id=ref)["KeyMetadata"]["KeyId"] == kid
        other = ref.replace("arn:aws:", f"arn:{partition}:", 1)
        assert code_of(lambda o=other: svc.describe_key(key_id=o)) == "NotFoundException"
        assert code_of(lambda o=other: svc.encrypt(key_id=o, plaintext=b"x")) == (
            "NotFoundException"
        )
        for bad in ("arn::", "arn:bogus1:", "arn:AWS:"):
            broken = ref.replace("arn:aws:", bad, 1)
            assert code_of(lambda b=broken: svc.describe_key(key_id=b)) == "InvalidArnException"


def test_rsa_ciphertext_without_its_algorithm_is_a_key_usage_error(svc: KeyService) -> None:
    """Decrypt naming an RSA key but not the algorithm (SYMMETRIC_DEFAULT by default) is
    InvalidKeyUsageException, as for Encrypt: "the encryption algorithm ... specified for the
    operation is incompatible with the type of key material"; a damaged blob under a
    symmetric key stays InvalidCiphertextException."""
    rsa = new_key(svc, key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT")
    ct = svc.encrypt(key_id=rsa, plaintext=b"x", encryption_algorithm="RSAES_OAEP_SHA_256")
    blob = ct["CiphertextBlob"]
    assert code_of(lambda: svc.decrypt(ciphertext_blob=blob, key_id=rsa)) == (
        "InvalidKeyUsageException"
    )
    assert code_of(lambda: svc.decrypt(ciphertext_blob=blob)) == "InvalidCiphertextException"
    out = svc.decrypt(ciphertext_blob=blob, key_id=rsa, encryption_algorithm="RSAES_OAEP_SHA_256")
    assert out["Plaintext"] == b"x" and "KeyMaterialId" not in out
    sym = new_key(svc)
    assert code_of(lambda: svc.decrypt(ciphertext_blob=b"\x01junk", key_id=sym)) == (
        "InvalidCiphertextException"
    )


def test_list_limits_follow_each_operations_documented_range(svc: KeyService) -> None:
    """ListAliases, ListGrants and ListRetirableGrants take Limit 1..100, ListResourceTags
    1..50, ListKeys and ListKeyRotations 1..1000 (the API reference of each; the model itself
    allows 1..1000 everywhere)."""
    kid = new_key(svc)
    me = "arn:aws:iam::000000000000:root"
    for fn, top in (
        (lambda n: svc.list_aliases(limit=n), 100),
        (lambda n: svc.list_grants(key_id=kid, limit=n), 100),
        (lambda n: svc.list_retirable_grants(retiring_principal=me, limit=n), 100),
        (lambda n: svc.list_resource_tags(key_id=kid, limit=n), 50),
        (lambda n: svc.list_keys(limit=n), 1000),
    ):
        fn(top)
        assert code_of(lambda f=fn, t=top: f(t + 1)) == "ValidationException"
        assert code_of(lambda f=fn: f(0)) == "ValidationException"


def test_import_key_material_answers_and_defaults_as_aws(svc: KeyService) -> None:
    """ImportKeyMaterial answers KeyId (ARN) and KeyMaterialId; its ExpirationModel defaults to
    KEY_MATERIAL_EXPIRES, so an import without ValidTo must say it never expires."""
    from .test_rotation_import_mrk import wrap

    kid = svc.create_key(origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    params = svc.get_parameters_for_import(
        key_id=kid, wrapping_algorithm="RSAES_OAEP_SHA_256", wrapping_key_spec="RSA_2048"
    )
    blob = wrap(params, bytes(range(32)), "RSAES_OAEP_SHA_256")
    with pytest.raises(E.ValidationException, match="A validTo date must be set"):
        svc.import_key_material(
            key_id=kid, import_token=params["ImportToken"], encrypted_key_material=blob
        )
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "PendingImport"
    out = svc.import_key_material(
        key_id=kid,
        import_token=params["ImportToken"],
        encrypted_key_material=blob,
        expiration_model="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    meta = svc.describe_key(key_id=kid)["KeyMetadata"]
    assert out == {"KeyId": meta["Arn"], "KeyMaterialId": meta["CurrentKeyMaterialId"]}


def test_refusals_in_aws_recorded_words(svc: KeyService) -> None:
    """Error messages as real AWS KMS was recorded giving them (codes were already right)."""
    sym = new_key(svc)
    sign = new_key(svc, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY")
    mac = new_key(svc, key_spec="HMAC_224", key_usage="GENERATE_VERIFY_MAC")
    rsa = new_key(svc, key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT")
    arn = svc.describe_key(key_id=sym)["KeyMetadata"]["Arn"]

    def message(fn: Callable[[], Any]) -> str:
        with pytest.raises(KmsServiceError) as info:
            fn()
        return info.value.message

    assert (
        message(lambda: svc.generate_mac(key_id=sym, message=b"m", mac_algorithm="HMAC_SHA_256"))
        == f"{arn} key usage is ENCRYPT_DECRYPT which is not valid for GenerateMac."
    )
    sign_arn = svc.describe_key(key_id=sign)["KeyMetadata"]["Arn"]
    assert message(lambda: svc.encrypt(key_id=sign, plaintext=b"x")) == (
        f"{sign_arn} key usage is SIGN_VERIFY which is not valid for Encrypt."
    )
    assert (
        message(lambda: svc.generate_mac(key_id=mac, message=b"m", mac_algorithm="HMAC_SHA_256"))
        == "Algorithm HMAC_SHA_256 is incompatible with key spec HMAC_224."
    )
    assert (
        message(
            lambda: svc.sign(
                key_id=sign,
                message=b"short",
                message_type="DIGEST",
                signing_algorithm="ECDSA_SHA_256",
            )
        )
        == "Digest is invalid length for algorithm ECDSA_SHA_256."
    )
    assert (
        message(
            lambda: svc.encrypt(
                key_id=rsa, plaintext=bytes(215), encryption_algorithm="RSAES_OAEP_SHA_1"
            )
        )
        == "Algorithm RSAES_OAEP_SHA_1 and key spec RSA_2048 cannot encrypt data larger than "
        "214 bytes."
    )
    assert (
        message(
            lambda: svc.get_parameters_for_import(
                key_id=sym, wrapping_algorithm="RSAES_OAEP_SHA_256", wrapping_key_spec="RSA_2048"
            )
        )
        == f"{arn} origin is AWS_KMS which is not valid for this operation."
    )
    assert message(lambda: svc.create_key(key_spec="HMAC_256")) == (
        "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys."
    )
    assert message(lambda: svc.create_key(key_spec="RSA_2048", key_usage="KEY_AGREEMENT")) == (
        "KeyUsage KEY_AGREEMENT is not compatible with KeySpec RSA_2048"
    )
    blob = svc.encrypt(key_id=sym, plaintext=b"x")["CiphertextBlob"]
    assert message(lambda: svc.decrypt(ciphertext_blob=blob, key_id=rsa)) == (
        "The key ID in the request does not identify a CMK that can perform this operation."
    )
    external = svc.create_key(origin="EXTERNAL")["KeyMetadata"]
    assert message(lambda: svc.encrypt(key_id=external["KeyId"], plaintext=b"x")) == (
        f"{external['Arn']} is pending import."
    )
    svc.schedule_key_deletion(key_id=sym, pending_window_in_days=7)
    assert message(lambda: svc.encrypt(key_id=sym, plaintext=b"x")) == f"{arn} is pending deletion."


def test_replicate_key_answers_as_aws(svc: KeyService) -> None:
    """ReplicateKey answers the replica's policy; ReplicaTags, empty when it has none (AWS's
    example answer in botocore's examples-1.json has ``"ReplicaTags": []``); the
    description is not shared by multi-Region keys ("The default value is an empty string")."""
    kid = svc.create_key(multi_region=True, description="primary")["KeyMetadata"]["KeyId"]
    out = svc.replicate_key(key_id=kid, replica_region="eu-west-1")
    assert out["ReplicaTags"] == []
    assert json.loads(out["ReplicaPolicy"])["Statement"]
    assert out["ReplicaKeyMetadata"]["Description"] == ""
    tagged = svc.create_key(multi_region=True)["KeyMetadata"]["KeyId"]
    out = svc.replicate_key(
        key_id=tagged, replica_region="eu-west-1", tags=[{"TagKey": "t", "TagValue": "v"}]
    )
    assert out["ReplicaTags"] == [{"TagKey": "t", "TagValue": "v"}]


def test_import_type_as_aws_defines_it(svc: KeyService) -> None:
    """NEW_KEY_MATERIAL for a key's first material, EXISTING_KEY_MATERIAL to import it again;
    the same material imported as new is refused (it is already associated with the key)."""
    from .test_rotation_import_mrk import import_material

    kid = svc.create_key(origin="EXTERNAL")["KeyMetadata"]["KeyId"]

    def imp(import_type: str) -> Any:
        return import_material(svc, kid, bytes(range(32)), import_type=import_type)

    assert code_of(lambda: imp("EXISTING_KEY_MATERIAL")) == "ValidationException"
    imp("NEW_KEY_MATERIAL")
    assert code_of(lambda: imp("NEW_KEY_MATERIAL")) == "IncorrectKeyMaterialException"
    svc.delete_imported_key_material(key_id=kid)
    imp("EXISTING_KEY_MATERIAL")
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "Enabled"


def test_a_deletion_window_out_of_range_is_refused_in_aws_words(svc: KeyService) -> None:
    """ScheduleKeyDeletion with 6 or 31 days: ValidationException "PendingWindowInDays must be
    between 7 and 30", AWS's message (a client matching on it missed "must be 7..30")."""
    kid = new_key(svc)
    for days in (6, 31):
        with pytest.raises(
            E.ValidationException, match=r"^PendingWindowInDays must be between 7 and 30$"
        ):
            svc.schedule_key_deletion(key_id=kid, pending_window_in_days=days)
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "Enabled"


def test_a_data_key_size_given_twice_or_not_at_all_is_refused_in_aws_words(
    svc: KeyService,
) -> None:
    """GenerateDataKey without KeySpec and NumberOfBytes, or with both: ValidationException
    in the words AWS is recorded answering (review)."""
    kid = new_key(svc)
    for kw in ({}, {"key_spec": "AES_256", "number_of_bytes": 32}):
        with pytest.raises(
            E.ValidationException, match=r"^Please specify either number of bytes or key spec\.$"
        ):
            svc.generate_data_key(key_id=kid, **kw)  # type: ignore[arg-type]
