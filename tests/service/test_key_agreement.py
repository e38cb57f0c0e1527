"""KEY_AGREEMENT keys and DeriveSharedSecret (ECDH), to the AWS KMS documentation.

Every shared secret the KMS returns is checked against one the test computes on its own: the
peer's private key (made here) with the KMS key's public key from GetPublicKey, which is what
the peer in AWS's workflow does.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from envelope.server.wire import WireModel
from envelope.service import KeyService
from envelope.service.errors import (
    AccessDeniedException,
    DisabledException,
    DryRunOperationException,
    InvalidGrantTokenException,
    InvalidKeyUsageException,
    KMSInvalidStateException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)

from .access_helpers import A, assert_denied, attach, stmt, user
from .conftest import new_key
from .test_rotation_import_mrk import import_material

CURVES: dict[str, ec.EllipticCurve] = {
    "ECC_NIST_P256": ec.SECP256R1(),
    "ECC_NIST_P384": ec.SECP384R1(),
    "ECC_NIST_P521": ec.SECP521R1(),
}
SECRET_BYTES = {"ECC_NIST_P256": 32, "ECC_NIST_P384": 48, "ECC_NIST_P521": 66}


def spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def kms_public(svc: KeyService, kid: str) -> ec.EllipticCurvePublicKey:
    public = serialization.load_der_public_key(svc.get_public_key(key_id=kid)["PublicKey"])
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


def agreement_key(svc: KeyService, spec: str = "ECC_NIST_P256", **kw: Any) -> str:
    return new_key(svc, key_spec=spec, key_usage="KEY_AGREEMENT", **kw)


def derive(svc: KeyService, kid: str, public_key: bytes, **kw: Any) -> Any:
    return svc.derive_shared_secret(
        key_id=kid, key_agreement_algorithm="ECDH", public_key=public_key, **kw
    )


@pytest.mark.parametrize("spec", sorted(CURVES))
def test_the_secret_is_the_one_the_peer_derives_on_its_own(svc: KeyService, spec: str) -> None:
    kid = agreement_key(svc, spec)
    peer = ec.generate_private_key(CURVES[spec])
    out = derive(svc, kid, spki(peer))
    expected = peer.exchange(ec.ECDH(), kms_public(svc, kid))
    assert out["SharedSecret"] == expected
    assert len(expected) == SECRET_BYTES[spec]
    assert out["KeyId"] == svc.arn(kid)
    assert out["KeyAgreementAlgorithm"] == "ECDH"
    assert out["KeyOrigin"] == "AWS_KMS"
    # another peer, another secret; the same peer again, the same secret
    other = ec.generate_private_key(CURVES[spec])
    assert derive(svc, kid, spki(other))["SharedSecret"] != expected
    assert derive(svc, kid, spki(peer))["SharedSecret"] == expected


def test_two_kms_keys_agree_through_their_public_keys(svc: KeyService) -> None:
    """AWS's workflow with both parties in KMS: Alice and Bob exchange GetPublicKey outputs."""
    alice, bob = agreement_key(svc), agreement_key(svc)
    a_pub = svc.get_public_key(key_id=alice)["PublicKey"]
    b_pub = svc.get_public_key(key_id=bob)["PublicKey"]
    secret = derive(svc, alice, b_pub)["SharedSecret"]
    assert secret == derive(svc, bob, a_pub)["SharedSecret"]
    assert secret != derive(svc, alice, a_pub)["SharedSecret"]


@pytest.mark.parametrize("spec", sorted(CURVES))
def test_metadata_and_public_key_name_the_key_agreement_algorithm(
    svc: KeyService, spec: str
) -> None:
    created = svc.create_key(key_spec=spec, key_usage="KEY_AGREEMENT")["KeyMetadata"]
    described = svc.describe_key(key_id=created["KeyId"])["KeyMetadata"]
    for meta in (created, described):
        assert meta["KeyUsage"] == "KEY_AGREEMENT" and meta["KeySpec"] == spec
        assert meta["KeyAgreementAlgorithms"] == ["ECDH"]
        assert "SigningAlgorithms" not in meta and "EncryptionAlgorithms" not in meta
    pub = svc.get_public_key(key_id=created["KeyId"])
    assert pub["KeyUsage"] == "KEY_AGREEMENT" and pub["KeyAgreementAlgorithms"] == ["ECDH"]
    assert "SigningAlgorithms" not in pub
    assert kms_public(svc, created["KeyId"]).curve.name == CURVES[spec].name
    # a signing key on the same curve names no key agreement algorithm
    sign = svc.create_key(key_spec=spec, key_usage="SIGN_VERIFY")["KeyMetadata"]
    assert "KeyAgreementAlgorithms" not in sign
    assert "KeyAgreementAlgorithms" not in svc.get_public_key(key_id=sign["KeyId"])


@pytest.mark.parametrize(
    "spec", ["SYMMETRIC_DEFAULT", "RSA_2048", "HMAC_256", "ECC_SECG_P256K1", "SM2"]
)
def test_key_agreement_is_refused_for_other_key_specs(svc: KeyService, spec: str) -> None:
    """AWS: KEY_AGREEMENT is for the NIST-standard curves (and SM2 in China Regions only);
    ECC_SECG_P256K1 keys are SIGN_VERIFY only."""
    before = svc.list_keys()["Keys"]
    with pytest.raises(ValidationException) as e:
        svc.create_key(key_spec=spec, key_usage="KEY_AGREEMENT")
    assert svc.list_keys()["Keys"] == before
    if spec == "SM2":
        assert "China" in str(e.value)


@pytest.mark.parametrize(
    ("spec", "usage"),
    [
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
        ("ECC_NIST_P256", "SIGN_VERIFY"),
        ("RSA_2048", "ENCRYPT_DECRYPT"),
        ("HMAC_256", "GENERATE_VERIFY_MAC"),
    ],
)
def test_only_key_agreement_keys_derive(svc: KeyService, spec: str, usage: str) -> None:
    kid = new_key(svc, key_spec=spec, key_usage=usage)
    peer = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidKeyUsageException, match="which is not valid for DeriveSharedSecret"):
        derive(svc, kid, spki(peer))
    assert svc.audit_tail(1)[0]["error_code"] == "InvalidKeyUsageException"


def test_a_key_agreement_key_does_nothing_else(svc: KeyService) -> None:
    kid = agreement_key(svc)
    calls = [
        lambda: svc.sign(key_id=kid, message=b"m", signing_algorithm="ECDSA_SHA_256"),
        lambda: svc.verify(
            key_id=kid, message=b"m", signature=b"s", signing_algorithm="ECDSA_SHA_256"
        ),
        lambda: svc.encrypt(key_id=kid, plaintext=b"x"),
        lambda: svc.generate_data_key(key_id=kid, key_spec="AES_256"),
        lambda: svc.generate_data_key_pair(key_id=kid, key_pair_spec="ECC_NIST_P256"),
        lambda: svc.generate_mac(key_id=kid, message=b"m", mac_algorithm="HMAC_SHA_256"),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyUsageException):
            call()
    with pytest.raises(UnsupportedOperationException):
        svc.enable_key_rotation(key_id=kid)


def _off_curve_point() -> bytes:
    """A P-256 SubjectPublicKeyInfo whose point is (1, 1), which is not on the curve."""
    good = spki(ec.generate_private_key(ec.SECP256R1()))
    point = b"\x04" + (1).to_bytes(32, "big") + (1).to_bytes(32, "big")
    return good[: -len(point)] + point


def _bad_public_keys() -> dict[str, bytes]:
    good = spki(ec.generate_private_key(ec.SECP256R1()))
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return {
        "garbage": b"not a key",
        "base64 of the DER": base64.b64encode(good),  # the AWS CLI v1 double-encoding mistake
        "PEM": pem,
        "truncated": good[:-1],
        "trailing bytes": good + b"\x00",
        "off the curve": _off_curve_point(),
        "RSA": spki(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "P-384 for a P-256 key": spki(ec.generate_private_key(ec.SECP384R1())),
        "secp256k1 for a P-256 key": spki(ec.generate_private_key(ec.SECP256K1())),
    }


@pytest.mark.parametrize("case", sorted(_bad_public_keys()))
def test_a_bad_peer_public_key_is_a_validation_error(svc: KeyService, case: str) -> None:
    kid = agreement_key(svc)
    with pytest.raises(ValidationException, match="PublicKey"):
        derive(svc, kid, _bad_public_keys()[case])


def test_member_validation(svc: KeyService) -> None:
    kid = agreement_key(svc)
    peer = spki(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValidationException, match="KeyAgreementAlgorithm"):
        svc.derive_shared_secret(key_id=kid, key_agreement_algorithm="ECDHE", public_key=peer)
    for bad in (b"", b"\x30" * 8193, "not bytes"):
        with pytest.raises(ValidationException, match="PublicKey"):
            derive(svc, kid, bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationException, match="GrantTokens"):
        derive(svc, kid, peer, grant_tokens=["t"] * 11)
    with pytest.raises(InvalidGrantTokenException):  # not a token this KMS issued
        derive(svc, kid, peer, grant_tokens=["token"])
    token = svc.create_grant(
        key_id=kid, grantee_principal=svc.root_principal, operations=["DeriveSharedSecret"]
    )["GrantToken"]
    assert derive(svc, kid, peer, grant_tokens=[token])["SharedSecret"]


def test_key_states(svc: KeyService) -> None:
    peer = spki(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(NotFoundException):
        derive(svc, "alias/none", peer)
    disabled = agreement_key(svc)
    svc.disable_key(key_id=disabled)
    with pytest.raises(DisabledException):
        derive(svc, disabled, peer)
    svc.enable_key(key_id=disabled)
    assert derive(svc, disabled, peer)["SharedSecret"]
    pending = agreement_key(svc)
    svc.schedule_key_deletion(key_id=pending, pending_window_in_days=7)
    with pytest.raises(KMSInvalidStateException):
        derive(svc, pending, peer)


def test_an_alias_names_the_key(svc: KeyService) -> None:
    kid = agreement_key(svc)
    svc.create_alias(alias_name="alias/agree", target_key_id=kid)
    peer = ec.generate_private_key(ec.SECP256R1())
    out = derive(svc, "alias/agree", spki(peer))
    assert out["KeyId"] == svc.arn(kid)
    assert out["SharedSecret"] == peer.exchange(ec.ECDH(), kms_public(svc, kid))


def test_dry_run(svc: KeyService) -> None:
    kid = agreement_key(svc)
    peer = spki(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(DryRunOperationException):
        derive(svc, kid, peer, dry_run=True)
    rec = svc.audit_tail(1)[0]
    assert rec["operation"] == "DeriveSharedSecret" and rec["params"]["DryRun"] is True
    # a dry run that would fail answers its own error
    sign = new_key(svc, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY")
    with pytest.raises(InvalidKeyUsageException):
        derive(svc, sign, peer, dry_run=True)
    with pytest.raises(ValidationException):
        derive(svc, kid, b"junk", dry_run=True)


def test_the_secret_is_not_in_the_audit_log(svc: KeyService) -> None:
    kid = agreement_key(svc)
    secret = derive(svc, kid, spki(ec.generate_private_key(ec.SECP256R1())))["SharedSecret"]
    rec = svc.audit_tail(1)[0]
    assert rec["params"] == {"KeyAgreementAlgorithm": "ECDH"} and rec["outcome"] == "ok"
    text = json.dumps(rec)
    for form in (secret.hex(), base64.b64encode(secret).decode()):
        assert form not in text


def test_authorization_by_policy_condition_and_grant(svc: KeyService) -> None:
    kid = agreement_key(svc)
    arn = svc.arn(kid)
    peer = spki(ec.generate_private_key(ec.SECP256R1()))
    alice = user(svc, "alice")
    assert_denied(svc, lambda: derive(svc, kid, peer, principal=alice), alice, A)
    # an IAM policy allowing the action only with another algorithm still denies
    attach(
        svc,
        alice,
        stmt(
            Action="kms:DeriveSharedSecret",
            Condition={"StringEquals": {"kms:KeyAgreementAlgorithm": "SM2"}},
        ),
    )
    assert_denied(svc, lambda: derive(svc, arn, peer, principal=alice), alice, A)
    attach(
        svc,
        alice,
        stmt(
            Action="kms:DeriveSharedSecret",
            Condition={"StringEquals": {"kms:KeyAgreementAlgorithm": "ECDH"}},
        ),
    )
    assert derive(svc, arn, peer, principal=alice)["SharedSecret"]
    # a grant for DeriveSharedSecret lets a user with no policy derive, and nothing else
    bob = user(svc, "bob")
    svc.create_grant(key_id=kid, grantee_principal=bob, operations=["DeriveSharedSecret"])
    assert derive(svc, arn, peer, principal=bob)["SharedSecret"]
    with pytest.raises(AccessDeniedException):
        svc.get_public_key(key_id=arn, principal=bob)
    assert "grant:" in str(svc.audit_tail(2)[0]["matched"])


def test_imported_key_material(svc: KeyService) -> None:
    """AWS: KeyOrigin EXTERNAL keys derive too; the secret is the imported private key's."""
    kid = agreement_key(svc, origin="EXTERNAL")
    peer = spki(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(KMSInvalidStateException):
        derive(svc, kid, peer)  # PendingImport: no material yet
    private = ec.generate_private_key(ec.SECP256R1())
    material = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    import_material(svc, kid, material, "RSA_AES_KEY_WRAP_SHA_256")
    mine = ec.generate_private_key(ec.SECP256R1())
    out = derive(svc, kid, spki(mine))
    assert out["KeyOrigin"] == "EXTERNAL"
    assert out["SharedSecret"] == private.exchange(ec.ECDH(), mine.public_key())


def test_a_multi_region_replica_derives_the_same_secret(svc: KeyService) -> None:
    kid = agreement_key(svc, multi_region=True)
    svc.replicate_key(key_id=kid, replica_region="eu-west-1")
    replica = svc.for_region("eu-west-1")
    meta = replica.describe_key(key_id=kid)["KeyMetadata"]
    assert meta["KeyAgreementAlgorithms"] == ["ECDH"]
    peer = spki(ec.generate_private_key(ec.SECP256R1()))
    assert derive(replica, kid, peer)["SharedSecret"] == derive(svc, kid, peer)["SharedSecret"]


def test_over_the_wire_model(svc: KeyService) -> None:
    """The AWS JSON protocol: base64 blobs in and out, and Recipient refused (no Nitro
    Enclaves here) rather than answered with the secret in plaintext."""
    from envelope.server.errors import WireError

    wire = WireModel(KeyService)
    op = wire.operation("TrentService.DeriveSharedSecret")
    assert op.method == "derive_shared_secret"
    kid = agreement_key(svc)
    peer = ec.generate_private_key(ec.SECP256R1())
    body = {
        "KeyId": kid,
        "KeyAgreementAlgorithm": "ECDH",
        "PublicKey": base64.b64encode(spki(peer)).decode(),
    }
    kwargs = wire.parse(op, json.dumps(body).encode())
    out = json.loads(wire.render(op, svc.derive_shared_secret(**kwargs)))
    assert set(out) == {"KeyId", "SharedSecret", "KeyAgreementAlgorithm", "KeyOrigin"}
    expected = peer.exchange(ec.ECDH(), kms_public(svc, kid))
    assert base64.b64decode(out["SharedSecret"]) == expected
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": "AA=="}
    with pytest.raises(WireError) as e:
        wire.parse(op, json.dumps({**body, "Recipient": recipient}).encode())
    assert e.value.code == "UnsupportedOperationException"
    with pytest.raises(WireError) as e:
        wire.parse(op, json.dumps({**body, "KeyAgreementAlgorithm": "X"}).encode())
    assert e.value.code == "ValidationException"
