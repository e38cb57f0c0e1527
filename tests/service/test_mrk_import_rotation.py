"""Multi-Region keys with imported material, multi-Region rotation, asymmetric/HMAC import."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from envelope.service import KeyService, KmsServiceError

from .conftest import DAY, FakeClock, new_key, open_store
from .test_rotation_import_mrk import code_of, import_material

EU = "eu-west-1"
AP = "ap-south-1"


def external_mrk(svc: KeyService, **kw: object) -> str:
    return new_key(svc, origin="EXTERNAL", multi_region=True, **kw)


def state(svc: KeyService, kid: str) -> str:
    return str(svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"])


# -- 1. multi-Region keys with imported key material -----------------------------------------


def test_external_multi_region_key_replicas_import_the_same_material(svc: KeyService) -> None:
    kid = external_mrk(svc, description="byok")
    meta = svc.describe_key(key_id=kid)["KeyMetadata"]
    assert kid.startswith("mrk-")
    assert meta["Origin"] == "EXTERNAL" and meta["MultiRegion"] is True
    assert meta["KeyState"] == "PendingImport"
    material = bytes(range(7, 39))
    import_material(svc, kid, material)
    assert state(svc, kid) == "Enabled"
    blob = svc.encrypt(key_id=kid, plaintext=b"from us", encryption_context={"a": "b"})[
        "CiphertextBlob"
    ]

    out = svc.replicate_key(key_id=kid, replica_region=EU)
    rmeta = out["ReplicaKeyMetadata"]
    assert rmeta["Origin"] == "EXTERNAL" and rmeta["KeyState"] == "PendingImport"
    assert rmeta["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    eu = svc.for_region(EU)
    # the replica has no material of its own yet, even though the primary's is in the store
    assert code_of(lambda: eu.decrypt(ciphertext_blob=blob, encryption_context={"a": "b"})) == (
        "KMSInvalidStateException"
    )
    assert code_of(lambda: eu.encrypt(key_id=kid, plaintext=b"x")) == "KMSInvalidStateException"
    # a different material is refused in the replica Region
    with pytest.raises(KmsServiceError) as info:
        import_material(eu, kid, bytes(32))
    assert info.value.code == "IncorrectKeyMaterialException"
    assert state(eu, kid) == "PendingImport"
    # the same material is accepted (with any wrapping algorithm), and ciphertexts cross over
    import_material(eu, kid, material, "RSA_AES_KEY_WRAP_SHA_256")
    assert state(eu, kid) == "Enabled"
    dec = eu.decrypt(ciphertext_blob=blob, encryption_context={"a": "b"})
    assert dec["Plaintext"] == b"from us" and dec["KeyId"] == rmeta["Arn"]
    back = eu.encrypt(key_id=kid, plaintext=b"from eu")["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=back)["Plaintext"] == b"from eu"
    # imported keys rotate on demand only, to material imported for it, from the primary
    assert code_of(lambda: svc.rotate_key_on_demand(key_id=kid)) == "KMSInvalidStateException"
    assert code_of(lambda: eu.rotate_key_on_demand(key_id=kid)) == (
        "UnsupportedOperationException"
    )
    assert code_of(lambda: svc.enable_key_rotation(key_id=kid)) == ("UnsupportedOperationException")
    with pytest.raises(KmsServiceError) as e:  # AWS's words
        svc.enable_key_rotation(key_id=kid)
    assert e.value.message == (
        f"{svc.describe_key(key_id=kid)['KeyMetadata']['Arn']} origin is EXTERNAL which is "
        "not valid for this operation."
    )


def test_rotation_of_a_key_pending_import_is_refused_for_its_origin(svc: KeyService) -> None:
    """AWS's key-state table: Enable/DisableKeyRotation on a key pending import answer
    UnsupportedOperationException ("origin is EXTERNAL"), as after its import; the state was
    checked first (KMSInvalidStateException; review). Its status reads false."""
    arn = svc.create_key(origin="EXTERNAL")["KeyMetadata"]["Arn"]
    for change in (svc.enable_key_rotation, svc.disable_key_rotation):
        with pytest.raises(KmsServiceError) as e:
            change(key_id=arn)
        assert e.value.code == "UnsupportedOperationException"
        assert e.value.message == f"{arn} origin is EXTERNAL which is not valid for this operation."
    assert svc.get_key_rotation_status(key_id=arn)["KeyRotationEnabled"] is False
    # an AWS_KMS key's state still answers as before
    kid = svc.create_key()["KeyMetadata"]["KeyId"]
    svc.disable_key(key_id=kid)
    assert code_of(lambda: svc.enable_key_rotation(key_id=kid)) == "DisabledException"
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    assert code_of(lambda: svc.enable_key_rotation(key_id=kid)) == "KMSInvalidStateException"


def test_replica_imported_first_fixes_the_material_for_the_primary(svc: KeyService) -> None:
    kid = external_mrk(svc)
    svc.replicate_key(key_id=kid, replica_region=EU)
    eu = svc.for_region(EU)
    material = b"\x42" * 32
    import_material(eu, kid, material)
    assert state(eu, kid) == "Enabled" and state(svc, kid) == "PendingImport"
    with pytest.raises(KmsServiceError) as info:
        import_material(svc, kid, b"\x43" * 32)
    assert info.value.code == "IncorrectKeyMaterialException"
    blob = eu.encrypt(key_id=kid, plaintext=b"eu first")["CiphertextBlob"]
    import_material(svc, kid, material)
    assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == b"eu first"


def test_material_of_each_region_is_deleted_and_expires_separately(
    svc: KeyService, clock: FakeClock
) -> None:
    kid = external_mrk(svc)
    material = bytes(range(32))
    import_material(svc, kid, material)
    svc.replicate_key(key_id=kid, replica_region=EU)
    svc.replicate_key(key_id=kid, replica_region=AP)
    eu, ap = svc.for_region(EU), svc.for_region(AP)
    import_material(eu, kid, material)
    import_material(ap, kid, material, valid_to=clock.now + 2 * DAY)
    blob = svc.encrypt(key_id=kid, plaintext=b"shared")["CiphertextBlob"]

    # deleting in the primary's Region leaves the replicas working
    svc.delete_imported_key_material(key_id=kid)
    assert state(svc, kid) == "PendingImport"
    assert code_of(lambda: svc.decrypt(ciphertext_blob=blob)) == "KMSInvalidStateException"
    assert eu.decrypt(ciphertext_blob=blob)["Plaintext"] == b"shared"
    assert ap.decrypt(ciphertext_blob=blob)["Plaintext"] == b"shared"

    # the material expires in ap-south-1 only
    clock.advance(days=2)
    assert state(ap, kid) == "PendingImport"
    assert "ValidTo" not in ap.describe_key(key_id=kid)["KeyMetadata"]
    assert eu.decrypt(ciphertext_blob=blob)["Plaintext"] == b"shared"

    # once no Region holds it, the material is gone from the store
    eu.delete_imported_key_material(key_id=kid)
    assert code_of(lambda: eu.decrypt(ciphertext_blob=blob)) == "KMSInvalidStateException"
    # ... but its fingerprint still pins which material may come back
    with pytest.raises(KmsServiceError) as info:
        import_material(ap, kid, b"\x01" * 32)
    assert info.value.code == "IncorrectKeyMaterialException"
    import_material(ap, kid, material)
    assert ap.decrypt(ciphertext_blob=blob)["Plaintext"] == b"shared"
    assert state(svc, kid) == "PendingImport" and state(eu, kid) == "PendingImport"


def test_external_replica_deletion_and_cancel(svc: KeyService, clock: FakeClock) -> None:
    kid = external_mrk(svc)
    material = b"\x11" * 32
    import_material(svc, kid, material)
    svc.replicate_key(key_id=kid, replica_region=EU)
    eu = svc.for_region(EU)
    # a replica that never imported goes back to PendingImport when its deletion is cancelled,
    # although the primary's material is in the store
    eu.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    assert state(eu, kid) == "PendingDeletion"
    eu.cancel_key_deletion(key_id=kid)
    assert state(eu, kid) == "PendingImport"
    # a primary with material goes to Disabled
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    assert state(svc, kid) == "PendingReplicaDeletion"
    svc.cancel_key_deletion(key_id=kid)
    assert state(svc, kid) == "Disabled"
    svc.enable_key(key_id=kid)
    blob = svc.encrypt(key_id=kid, plaintext=b"kept")["CiphertextBlob"]
    # the replica is deleted; the primary (and its material) survive
    eu.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    clock.advance(days=7)
    assert code_of(lambda: eu.describe_key(key_id=kid)) == "NotFoundException"
    assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == b"kept"


def test_external_multi_region_key_survives_reopen(home: Path, clock: FakeClock) -> None:
    a = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = external_mrk(a)
    import_material(a, kid, b"\x05" * 32)
    a.replicate_key(key_id=kid, replica_region=EU)
    blob = a.encrypt(key_id=kid, plaintext=b"durable")["CiphertextBlob"]
    a.close()
    b = KeyService(open_store(home), clock=clock, region=EU, owns_store=True)
    assert b.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(KmsServiceError) as info:
        import_material(b, kid, b"\x06" * 32)
    assert info.value.code == "IncorrectKeyMaterialException"
    import_material(b, kid, b"\x05" * 32)
    assert b.decrypt(ciphertext_blob=blob)["Plaintext"] == b"durable"
    b.close()


# -- 2. automatic rotation of a multi-Region key ---------------------------------------------


def _version(blob: bytes) -> int:
    n = blob[1]
    return int.from_bytes(blob[2 + n : 2 + n + 4], "big")


def test_replica_used_when_primary_rotation_is_due(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc, multi_region=True)
    svc.replicate_key(key_id=kid, replica_region=EU)
    eu = svc.for_region(EU)
    svc.enable_key_rotation(key_id=kid, rotation_period_in_days=90)
    before = svc.encrypt(key_id=kid, plaintext=b"v1")["CiphertextBlob"]
    assert _version(before) == 1
    status = eu.get_key_rotation_status(key_id=kid)
    assert status["KeyRotationEnabled"] and status["NextRotationDate"] == clock.now + 90 * DAY
    due = clock.now + 90 * DAY

    clock.advance(days=90)
    # the replica is touched first: it must already use the rotated material
    in_eu = eu.encrypt(key_id=kid, plaintext=b"eu v2")["CiphertextBlob"]
    assert _version(in_eu) == 2
    in_us = svc.encrypt(key_id=kid, plaintext=b"us v2")["CiphertextBlob"]
    assert _version(in_us) == 2
    for s in (svc, eu):
        assert s.decrypt(ciphertext_blob=in_eu)["Plaintext"] == b"eu v2"
        assert s.decrypt(ciphertext_blob=in_us)["Plaintext"] == b"us v2"
        assert s.decrypt(ciphertext_blob=before)["Plaintext"] == b"v1"
    # one rotation, dated at the due time, and the next one scheduled once
    rotations = svc.list_key_rotations(key_id=kid)["Rotations"]
    assert [(r["RotationType"], r["RotationDate"]) for r in rotations] == [("AUTOMATIC", due)]
    assert eu.list_key_rotations(key_id=kid)["Rotations"] == [
        r | {"KeyId": eu.describe_key(key_id=kid)["KeyMetadata"]["Arn"]} for r in rotations
    ]
    assert eu.get_key_rotation_status(key_id=kid)["NextRotationDate"] == due + 90 * DAY
    assert svc.get_key_rotation_status(key_id=kid)["NextRotationDate"] == due + 90 * DAY


def test_replica_catches_up_several_missed_rotations_once(
    svc: KeyService, clock: FakeClock
) -> None:
    kid = new_key(svc, multi_region=True)
    svc.replicate_key(key_id=kid, replica_region=EU)
    svc.replicate_key(key_id=kid, replica_region=AP)
    eu, ap = svc.for_region(EU), svc.for_region(AP)
    svc.enable_key_rotation(key_id=kid, rotation_period_in_days=100)
    start = clock.now
    clock.advance(days=250)  # two periods passed: AWS rotates once, then schedules the next
    blobs = [s.generate_data_key(key_id=kid, key_spec="AES_256") for s in (ap, eu, svc)]
    assert {_version(b["CiphertextBlob"]) for b in blobs} == {2}
    for s in (svc, eu, ap):
        for b in blobs:
            assert s.decrypt(ciphertext_blob=b["CiphertextBlob"])["Plaintext"] == b["Plaintext"]
    assert len(svc.list_key_rotations(key_id=kid)["Rotations"]) == 1
    assert ap.get_key_rotation_status(key_id=kid)["NextRotationDate"] == start + 300 * DAY
    clock.advance(days=50)
    assert _version(eu.encrypt(key_id=kid, plaintext=b"v3")["CiphertextBlob"]) == 3


def test_disabled_primary_is_not_rotated_through_its_replica(
    svc: KeyService, clock: FakeClock
) -> None:
    kid = new_key(svc, multi_region=True)
    svc.replicate_key(key_id=kid, replica_region=EU)
    eu = svc.for_region(EU)
    svc.enable_key_rotation(key_id=kid, rotation_period_in_days=90)
    svc.disable_key(key_id=kid)  # key state is per Region: the replica stays enabled
    clock.advance(days=91)
    assert _version(eu.encrypt(key_id=kid, plaintext=b"x")["CiphertextBlob"]) == 1
    svc.enable_key(key_id=kid)
    blob = eu.encrypt(key_id=kid, plaintext=b"y")["CiphertextBlob"]
    assert _version(blob) == 2
    assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == b"y"


def test_rotation_follows_update_primary_region(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc, multi_region=True)
    svc.replicate_key(key_id=kid, replica_region=EU)
    eu = svc.for_region(EU)
    svc.enable_key_rotation(key_id=kid, rotation_period_in_days=90)
    svc.update_primary_region(key_id=kid, primary_region=EU)
    clock.advance(days=90)
    # us-east-1 is now the replica: using it applies the due rotation of the EU primary
    blob = svc.encrypt(key_id=kid, plaintext=b"z")["CiphertextBlob"]
    assert _version(blob) == 2
    assert eu.decrypt(ciphertext_blob=blob)["Plaintext"] == b"z"
    assert len(eu.list_key_rotations(key_id=kid)["Rotations"]) == 1


# -- 3. importing asymmetric and HMAC key material --------------------------------------------


def _pkcs8(private: PrivateKeyTypes) -> bytes:
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


_ECC = {
    "ECC_NIST_P256": (ec.SECP256R1, "ECDSA_SHA_256", hashes.SHA256, "RSA_2048"),
    "ECC_NIST_P384": (ec.SECP384R1, "ECDSA_SHA_384", hashes.SHA384, "RSA_2048"),
    # P-521 PKCS#8 (241 bytes) does not fit RSA-2048 OAEP-SHA-256 (190 bytes at most)
    "ECC_NIST_P521": (ec.SECP521R1, "ECDSA_SHA_512", hashes.SHA512, "RSA_3072"),
    "ECC_SECG_P256K1": (ec.SECP256K1, "ECDSA_SHA_256", hashes.SHA256, "RSA_2048"),
}


def _import(
    svc: KeyService, kid: str, material: bytes, algorithm: str, wrapping_key_spec: str
) -> None:
    from .test_rotation_import_mrk import wrap

    params = svc.get_parameters_for_import(
        key_id=kid, wrapping_algorithm=algorithm, wrapping_key_spec=wrapping_key_spec
    )
    svc.import_key_material(
        key_id=kid,
        import_token=params["ImportToken"],
        encrypted_key_material=wrap(params, material, algorithm),
        expiration_model="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )


@pytest.mark.parametrize("spec", sorted(_ECC))
def test_import_ecc_private_key_then_sign_and_verify(svc: KeyService, spec: str) -> None:
    curve, alg, h, wks = _ECC[spec]
    private = ec.generate_private_key(curve())
    kid = new_key(svc, key_spec=spec, key_usage="SIGN_VERIFY", origin="EXTERNAL")
    assert code_of(lambda: svc.get_public_key(key_id=kid)) == "KMSInvalidStateException"
    _import(svc, kid, _pkcs8(private), "RSAES_OAEP_SHA_256", wks)
    assert state(svc, kid) == "Enabled"
    public = private.public_key()
    assert svc.get_public_key(key_id=kid)["PublicKey"] == public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    msg = b"signed with imported material"
    sig = svc.sign(key_id=kid, message=msg, signing_algorithm=alg)["Signature"]
    public.verify(sig, msg, ec.ECDSA(h()))  # raises if wrong
    digest = hashlib.new(h.name, msg).digest()
    sig2 = svc.sign(key_id=kid, message=digest, message_type="DIGEST", signing_algorithm=alg)[
        "Signature"
    ]
    public.verify(sig2, digest, ec.ECDSA(utils.Prehashed(h())))
    # a signature made outside KMS by the same private key verifies inside
    local = private.sign(msg, ec.ECDSA(h()))
    assert svc.verify(key_id=kid, message=msg, signature=local, signing_algorithm=alg)[
        "SignatureValid"
    ]
    other = ec.generate_private_key(curve()).sign(msg, ec.ECDSA(h()))
    assert (
        code_of(lambda: svc.verify(key_id=kid, message=msg, signature=other, signing_algorithm=alg))
        == "KMSInvalidSignatureException"
    )


@pytest.mark.parametrize(
    ("spec", "bits", "wks"),
    [
        ("RSA_2048", 2048, "RSA_2048"),
        ("RSA_3072", 3072, "RSA_3072"),
        ("RSA_4096", 4096, "RSA_4096"),
    ],
)
def test_import_rsa_private_key_then_sign_and_verify(
    svc: KeyService, spec: str, bits: int, wks: str
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = _pkcs8(private)
    kid = new_key(svc, key_spec=spec, key_usage="SIGN_VERIFY", origin="EXTERNAL")
    # an RSA private key is far longer than one OAEP block: AWS requires RSA_AES_KEY_WRAP for
    # RSA key material (RSAES_OAEP_SHA_256 is refused for it: see the test below)
    _import(svc, kid, der, "RSA_AES_KEY_WRAP_SHA_256", wks)
    public = private.public_key()
    msg = b"rsa import"
    pss = svc.sign(key_id=kid, message=msg, signing_algorithm="RSASSA_PSS_SHA_256")["Signature"]
    public.verify(
        pss,
        msg,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    v15 = svc.sign(key_id=kid, message=msg, signing_algorithm="RSASSA_PKCS1_V1_5_SHA_384")[
        "Signature"
    ]
    public.verify(v15, msg, padding.PKCS1v15(), hashes.SHA384())
    local = private.sign(msg, padding.PKCS1v15(), hashes.SHA512())
    assert svc.verify(
        key_id=kid, message=msg, signature=local, signing_algorithm="RSASSA_PKCS1_V1_5_SHA_512"
    )["SignatureValid"]
    with pytest.raises(InvalidSignature):
        public.verify(v15, b"other", padding.PKCS1v15(), hashes.SHA384())


def test_import_rsa_encryption_key_then_decrypt_locally_made_ciphertext(svc: KeyService) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = new_key(svc, key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT", origin="EXTERNAL")
    _import(svc, kid, _pkcs8(private), "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    blob = private.public_key().encrypt(b"to kms", oaep)
    out = svc.decrypt(ciphertext_blob=blob, key_id=kid, encryption_algorithm="RSAES_OAEP_SHA_256")
    assert out["Plaintext"] == b"to kms"
    back = svc.encrypt(key_id=kid, plaintext=b"from kms", encryption_algorithm="RSAES_OAEP_SHA_256")
    assert private.decrypt(back["CiphertextBlob"], oaep) == b"from kms"


def test_imported_asymmetric_material_must_match_the_key_spec(svc: KeyService) -> None:
    p256 = _pkcs8(ec.generate_private_key(ec.SECP256R1()))
    kid = new_key(svc, key_spec="ECC_NIST_P384", key_usage="SIGN_VERIFY", origin="EXTERNAL")
    with pytest.raises(KmsServiceError) as info:
        _import(svc, kid, p256, "RSAES_OAEP_SHA_256", "RSA_2048")
    assert info.value.code == "IncorrectKeyMaterialException"
    with pytest.raises(KmsServiceError) as info:
        _import(svc, kid, b"\x30" * 100, "RSAES_OAEP_SHA_256", "RSA_2048")
    assert info.value.code == "IncorrectKeyMaterialException"
    rsa_kid = new_key(svc, key_spec="RSA_3072", key_usage="SIGN_VERIFY", origin="EXTERNAL")
    der2048 = _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(KmsServiceError) as info:
        _import(svc, rsa_kid, der2048, "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048")
    assert info.value.code == "IncorrectKeyMaterialException"
    assert state(svc, kid) == "PendingImport" and state(svc, rsa_kid) == "PendingImport"
    # re-importing a different key pair into a key that had material is refused
    good = _pkcs8(ec.generate_private_key(ec.SECP384R1()))
    _import(svc, kid, good, "RSAES_OAEP_SHA_256", "RSA_2048")
    svc.delete_imported_key_material(key_id=kid)
    with pytest.raises(KmsServiceError) as info:
        _import(
            svc,
            kid,
            _pkcs8(ec.generate_private_key(ec.SECP384R1())),
            "RSAES_OAEP_SHA_256",
            "RSA_2048",
        )
    assert info.value.code == "IncorrectKeyMaterialException"
    _import(svc, kid, good, "RSAES_OAEP_SHA_256", "RSA_2048")
    assert state(svc, kid) == "Enabled"


_HMAC = {
    "HMAC_224": ("HMAC_SHA_224", "sha224", 28, 64),
    "HMAC_256": ("HMAC_SHA_256", "sha256", 32, 64),
    "HMAC_384": ("HMAC_SHA_384", "sha384", 48, 128),
    "HMAC_512": ("HMAC_SHA_512", "sha512", 64, 128),
}


@pytest.mark.parametrize("spec", sorted(_HMAC))
def test_import_hmac_material_then_generate_and_verify_mac(svc: KeyService, spec: str) -> None:
    alg, digest, lo, hi = _HMAC[spec]
    for size in (lo, hi):
        kid = new_key(svc, key_spec=spec, key_usage="GENERATE_VERIFY_MAC", origin="EXTERNAL")
        material = bytes((i * 7 + size) % 256 for i in range(size))
        _import(svc, kid, material, "RSAES_OAEP_SHA_256", "RSA_2048")
        msg = b"mac me"
        tag = svc.generate_mac(key_id=kid, message=msg, mac_algorithm=alg)["Mac"]
        assert tag == hmac.digest(material, msg, digest)
        local = hmac.digest(material, b"other", digest)
        assert svc.verify_mac(key_id=kid, message=b"other", mac=local, mac_algorithm=alg)[
            "MacValid"
        ]
        with pytest.raises(KmsServiceError) as info:
            svc.verify_mac(key_id=kid, message=msg, mac=local, mac_algorithm=alg)
        assert info.value.code == "KMSInvalidMacException"
    for size in (lo - 1, hi + 1):
        kid = new_key(svc, key_spec=spec, key_usage="GENERATE_VERIFY_MAC", origin="EXTERNAL")
        with pytest.raises(KmsServiceError) as info:
            _import(svc, kid, b"\x01" * size, "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048")
        assert info.value.code == "IncorrectKeyMaterialException"


def test_multi_region_imported_signing_key(svc: KeyService) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    der = _pkcs8(private)
    kid = new_key(
        svc, key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY", origin="EXTERNAL", multi_region=True
    )
    _import(svc, kid, der, "RSAES_OAEP_SHA_256", "RSA_2048")
    svc.replicate_key(key_id=kid, replica_region=EU)
    eu = svc.for_region(EU)
    other = _pkcs8(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(KmsServiceError) as info:
        _import(eu, kid, other, "RSAES_OAEP_SHA_256", "RSA_2048")
    assert info.value.code == "IncorrectKeyMaterialException"
    _import(eu, kid, der, "RSA_AES_KEY_WRAP_SHA_1", "RSA_4096")
    sig = svc.sign(key_id=kid, message=b"m", signing_algorithm="ECDSA_SHA_256")["Signature"]
    assert eu.verify(key_id=kid, message=b"m", signature=sig, signing_algorithm="ECDSA_SHA_256")[
        "SignatureValid"
    ]
    assert eu.get_public_key(key_id=kid)["PublicKey"] == svc.get_public_key(key_id=kid)["PublicKey"]


def test_a_replica_past_its_deletion_date_is_gone_in_every_region(
    svc: KeyService, clock: FakeClock
) -> None:
    """A replica's row stayed until a call in its own Region purged it: the primary listed
    it, ReplicateKey back there was AlreadyExists, and a primary in PendingReplicaDeletion
    never began its own window (review). AWS deletes in the background; its window begins
    when the last replica is deleted."""
    from envelope.service.errors import NotFoundException

    eu = svc.for_region("eu-west-1")
    k = svc.create_key(multi_region=True)["KeyMetadata"]["KeyId"]
    svc.replicate_key(key_id=k, replica_region="eu-west-1")
    eu.schedule_key_deletion(key_id=k, pending_window_in_days=7)
    clock.advance(days=10)
    meta = svc.describe_key(key_id=k)["KeyMetadata"]
    assert meta["MultiRegionConfiguration"]["ReplicaKeys"] == []
    svc.replicate_key(key_id=k, replica_region="eu-west-1")  # there again
    assert eu.describe_key(key_id=k)["KeyMetadata"]["KeyState"] == "Enabled"

    k2 = svc.create_key(multi_region=True)["KeyMetadata"]["KeyId"]
    svc.replicate_key(key_id=k2, replica_region="eu-west-1")
    eu.schedule_key_deletion(key_id=k2, pending_window_in_days=7)
    svc.schedule_key_deletion(key_id=k2, pending_window_in_days=7)
    assert svc.describe_key(key_id=k2)["KeyMetadata"]["KeyState"] == "PendingReplicaDeletion"
    clock.advance(days=10)  # the replica went on day 7: the primary's window ends on day 14
    meta = svc.describe_key(key_id=k2)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    assert meta["DeletionDate"] == pytest.approx(clock.now + 4 * 86400)
    clock.advance(days=5)
    svc.run_due_tasks()
    with pytest.raises(NotFoundException):
        svc.describe_key(key_id=k2)
    eu.run_due_tasks()  # (nothing left there either)
    with pytest.raises(NotFoundException):
        eu.describe_key(key_id=k2)


def test_run_due_tasks_settles_every_region(svc: KeyService, clock: FakeClock) -> None:
    """run_due_tasks applies "every due deletion": another Region's keys too."""
    eu = svc.for_region("eu-west-1")
    k = eu.create_key()["KeyMetadata"]["KeyId"]
    eu.schedule_key_deletion(key_id=k, pending_window_in_days=7)
    clock.advance(days=8)
    svc.run_due_tasks()
    rows = svc.store._conn.execute("SELECT COUNT(*) FROM keys WHERE key_id=?", (k,)).fetchone()
    assert rows[0] == 0


@pytest.mark.parametrize(
    ("key_spec", "usage", "algorithm", "wrapping"),
    [
        ("RSA_2048", "SIGN_VERIFY", "RSAES_OAEP_SHA_256", "RSA_4096"),
        ("RSA_3072", "ENCRYPT_DECRYPT", "RSAES_OAEP_SHA_1", "RSA_4096"),
        ("ECC_NIST_P521", "SIGN_VERIFY", "RSAES_OAEP_SHA_256", "RSA_2048"),
    ],
)
def test_wrapping_the_reference_excludes_is_refused_before_a_token_is_made(
    svc: KeyService, key_spec: str, usage: str, algorithm: str, wrapping: str
) -> None:
    """GetParametersForImport's WrappingAlgorithm: RSAES_OAEP_* is "Supported for all types of
    key material, except RSA key material (private key)", and "You cannot use the
    RSAES_OAEP_SHA_256 wrapping algorithm with the RSA_2048 wrapping key spec to wrap
    ECC_NIST_P521 key material". Both were answered with a token and a wrapping key (review)."""
    kid = new_key(svc, key_spec=key_spec, key_usage=usage, origin="EXTERNAL")
    assert code_of(
        lambda: svc.get_parameters_for_import(
            key_id=kid, wrapping_algorithm=algorithm, wrapping_key_spec=wrapping
        )
    ) == "ValidationException"
    # the wrapping the reference names for it is served
    svc.get_parameters_for_import(
        key_id=kid, wrapping_algorithm="RSA_AES_KEY_WRAP_SHA_256", wrapping_key_spec=wrapping
    )

