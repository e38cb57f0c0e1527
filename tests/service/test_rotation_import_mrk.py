"""Rotation keeps every backing key; import flow; multi-Region keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from envelope.service import KeyService, KmsServiceError

from .conftest import DAY, FakeClock, new_key, open_store


def code_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(KmsServiceError) as info:
        fn()
    return info.value.code


# -- rotation -------------------------------------------------------------------------------


def test_rotation_then_decrypt_every_older_ciphertext(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc)
    made: list[tuple[bytes, bytes]] = []
    for i in range(4):
        pt = f"generation {i}".encode()
        made.append((svc.encrypt(key_id=kid, plaintext=pt)["CiphertextBlob"], pt))
        dk = svc.generate_data_key(key_id=kid, key_spec="AES_256")
        made.append((dk["CiphertextBlob"], dk["Plaintext"]))
        svc.rotate_key_on_demand(key_id=kid)
    for blob, pt in made:
        assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == pt
    # each generation used a different backing key
    assert len({blob[2 + 36 : 2 + 36 + 4] for blob, _ in made}) == 4
    assert len(svc.list_key_rotations(key_id=kid)["Rotations"]) == 4


def test_automatic_rotation_when_due(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc)
    svc.enable_key_rotation(key_id=kid, rotation_period_in_days=90)
    old = svc.encrypt(key_id=kid, plaintext=b"old")["CiphertextBlob"]
    clock.advance(days=89)
    svc.encrypt(key_id=kid, plaintext=b"x")
    assert svc.list_key_rotations(key_id=kid)["Rotations"] == []
    clock.advance(days=1)
    new = svc.encrypt(key_id=kid, plaintext=b"new")["CiphertextBlob"]
    rots = svc.list_key_rotations(key_id=kid)["Rotations"]
    assert [r["RotationType"] for r in rots] == ["AUTOMATIC"]
    assert rots[0]["RotationDate"] == pytest.approx(clock.now)
    assert svc.get_key_rotation_status(key_id=kid)["NextRotationDate"] == pytest.approx(
        clock.now + 90 * DAY
    )
    assert old[38:42] != new[38:42]
    assert svc.decrypt(ciphertext_blob=old)["Plaintext"] == b"old"
    # disabled keys are not rotated; re-enabling catches up
    svc.disable_key(key_id=kid)
    clock.advance(days=200)
    svc.describe_key(key_id=kid)
    assert len(svc.list_key_rotations(key_id=kid)["Rotations"]) == 1
    svc.enable_key(key_id=kid)
    svc.describe_key(key_id=kid)
    assert len(svc.list_key_rotations(key_id=kid)["Rotations"]) == 2
    assert svc.get_key_rotation_status(key_id=kid)["NextRotationDate"] > clock.now


def test_a_key_pending_deletion_reports_rotation_off_and_is_not_rotated(
    svc: KeyService, clock: FakeClock
) -> None:
    """AWS (GetKeyRotationStatus): "While a KMS key is pending deletion, its key rotation
    status is false and KMS does not rotate the key material. If you cancel the deletion, the
    original key rotation status returns to true." """
    kid = new_key(svc)
    svc.enable_key_rotation(key_id=kid, rotation_period_in_days=90)
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=30)
    status = svc.get_key_rotation_status(key_id=kid)
    assert status["KeyRotationEnabled"] is False
    assert "NextRotationDate" not in status and "RotationPeriodInDays" not in status
    clock.advance(days=29)
    svc.describe_key(key_id=kid)
    assert svc.list_key_rotations(key_id=kid)["Rotations"] == []
    svc.cancel_key_deletion(key_id=kid)
    status = svc.get_key_rotation_status(key_id=kid)
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 90


def test_rotation_survives_reopen(home: Path, clock: FakeClock) -> None:
    a = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(a)
    blob = a.encrypt(key_id=kid, plaintext=b"v1")["CiphertextBlob"]
    a.rotate_key_on_demand(key_id=kid)
    a.close()
    b = KeyService(open_store(home), clock=clock, owns_store=True)
    assert b.decrypt(ciphertext_blob=blob)["Plaintext"] == b"v1"
    blob2 = b.encrypt(key_id=kid, plaintext=b"v2")["CiphertextBlob"]
    assert b.decrypt(ciphertext_blob=blob2)["Plaintext"] == b"v2"
    b.close()


# -- import ---------------------------------------------------------------------------------


def wrap(params: dict[str, Any], material: bytes, algorithm: str) -> bytes:
    public = serialization.load_der_public_key(params["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey)
    h: hashes.HashAlgorithm = hashes.SHA256() if algorithm.endswith("256") else hashes.SHA1()
    oaep = padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)
    if algorithm.startswith("RSAES_OAEP"):
        return public.encrypt(material, oaep)
    aes = bytes(range(32))
    return public.encrypt(aes, oaep) + keywrap.aes_key_wrap_with_padding(aes, material)


def import_material(
    svc: KeyService,
    kid: str,
    material: bytes,
    algorithm: str = "RSAES_OAEP_SHA_256",
    *,
    key_ref: str | None = None,
    **kw: Any,
) -> Any:
    """GetParametersForImport on `kid`, then ImportKeyMaterial naming the key as `key_ref`
    (default `kid`); returns the import's response."""
    params = svc.get_parameters_for_import(
        key_id=kid, wrapping_algorithm=algorithm, wrapping_key_spec="RSA_2048"
    )
    if "valid_to" not in kw:  # AWS's default model (KEY_MATERIAL_EXPIRES) needs a date
        kw.setdefault("expiration_model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    return svc.import_key_material(
        key_id=kid if key_ref is None else key_ref,
        import_token=params["ImportToken"],
        encrypted_key_material=wrap(params, material, algorithm),
        **kw,
    )


@pytest.mark.parametrize(
    "algorithm",
    [
        "RSAES_OAEP_SHA_1",
        "RSAES_OAEP_SHA_256",
        "RSA_AES_KEY_WRAP_SHA_1",
        "RSA_AES_KEY_WRAP_SHA_256",
    ],
)
def test_import_end_to_end(svc: KeyService, algorithm: str) -> None:
    kid = new_key(svc, origin="EXTERNAL")
    meta = svc.describe_key(key_id=kid)["KeyMetadata"]
    assert meta["KeyState"] == "PendingImport" and meta["Origin"] == "EXTERNAL"
    assert code_of(lambda: svc.encrypt(key_id=kid, plaintext=b"x")) == "KMSInvalidStateException"
    material = bytes(range(100, 132))
    import_material(svc, kid, material, algorithm)
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "Enabled"
    blob = svc.encrypt(key_id=kid, plaintext=b"imported")["CiphertextBlob"]

    svc.delete_imported_key_material(key_id=kid)
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "PendingImport"
    assert code_of(lambda: svc.decrypt(ciphertext_blob=blob)) == "KMSInvalidStateException"
    # a different material is refused; the same one brings the key back
    with pytest.raises(KmsServiceError) as info:
        import_material(svc, kid, bytes(32), algorithm)
    assert info.value.code == "IncorrectKeyMaterialException"
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "PendingImport"
    import_material(svc, kid, material, algorithm)
    assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == b"imported"
    # re-importing the same material while enabled is allowed (it updates the expiry)
    import_material(svc, kid, material, algorithm)


def test_import_refusals(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc, origin="EXTERNAL")
    other = new_key(svc, origin="EXTERNAL")
    native = new_key(svc)
    get = svc.get_parameters_for_import
    assert (
        code_of(
            lambda: get(
                key_id=native, wrapping_algorithm="RSAES_OAEP_SHA_256", wrapping_key_spec="RSA_2048"
            )
        )
        == "UnsupportedOperationException"
    )
    assert (
        code_of(
            lambda: get(
                key_id=kid, wrapping_algorithm="RSAES_PKCS1_V1_5", wrapping_key_spec="RSA_2048"
            )
        )
        == "ValidationException"
    )
    assert (
        code_of(
            lambda: get(
                key_id=kid, wrapping_algorithm="RSAES_OAEP_SHA_256", wrapping_key_spec="RSA_1024"
            )
        )
        == "ValidationException"
    )
    params = get(key_id=kid, wrapping_algorithm="RSAES_OAEP_SHA_256", wrapping_key_spec="RSA_2048")
    assert params["ParametersValidTo"] == clock.now + DAY
    good = wrap(params, bytes(32), "RSAES_OAEP_SHA_256")

    def imp(key: str, token: bytes, blob: bytes, **kw: Any) -> str:
        if "valid_to" not in kw:
            kw.setdefault("expiration_model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
        return code_of(
            lambda: svc.import_key_material(
                key_id=key, import_token=token, encrypted_key_material=blob, **kw
            )
        )

    assert imp(other, params["ImportToken"], good) == "InvalidImportTokenException"
    assert imp(kid, b"\x00" * 32, good) == "InvalidImportTokenException"
    assert (
        imp(kid, params["ImportToken"], good[:-1] + bytes([good[-1] ^ 1]))
        == "InvalidCiphertextException"
    )
    short = wrap(params, bytes(16), "RSAES_OAEP_SHA_256")
    assert imp(kid, params["ImportToken"], short) == "IncorrectKeyMaterialException"
    assert imp(kid, params["ImportToken"], good, valid_to=clock.now - 1) == "ValidationException"
    # ValidTo: "The maximum value is 365 days from the request date."
    assert (
        imp(kid, params["ImportToken"], good, valid_to=clock.now + 365 * DAY + 1)
        == "ValidationException"
    )
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "PendingImport"
    assert (
        imp(
            kid,
            params["ImportToken"],
            good,
            valid_to=clock.now + 10,
            expiration_model="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
        == "ValidationException"
    )
    clock.advance(days=1)
    assert imp(kid, params["ImportToken"], good) == "ExpiredImportTokenException"
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "PendingImport"


def test_imported_material_expires(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc, origin="EXTERNAL")
    material = b"\x07" * 32
    import_material(svc, kid, material, valid_to=clock.now + 2 * DAY)
    meta = svc.describe_key(key_id=kid)["KeyMetadata"]
    assert meta["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    blob = svc.encrypt(key_id=kid, plaintext=b"x")["CiphertextBlob"]
    clock.advance(days=2)
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "PendingImport"
    assert code_of(lambda: svc.decrypt(ciphertext_blob=blob)) == "KMSInvalidStateException"
    import_material(svc, kid, material)
    assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == b"x"
    # AWS's answer when no new material was imported to rotate to (none can be, here)
    assert code_of(lambda: svc.rotate_key_on_demand(key_id=kid)) == "KMSInvalidStateException"
    assert svc.list_key_rotations(key_id=kid)["Rotations"] == []


# -- multi-Region ---------------------------------------------------------------------------


def test_multi_region_encrypt_primary_decrypt_replica(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc, multi_region=True, description="mr")
    assert kid.startswith("mrk-") and len(kid) == 36
    out = svc.replicate_key(key_id=kid, replica_region="eu-west-1")
    rmeta = out["ReplicaKeyMetadata"]
    assert rmeta["Arn"] == f"arn:aws:kms:eu-west-1:000000000000:key/{kid}"
    assert rmeta["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    eu = svc.for_region("eu-west-1")
    blob = svc.encrypt(key_id=kid, plaintext=b"both", encryption_context={"c": "1"})
    dec = eu.decrypt(ciphertext_blob=blob["CiphertextBlob"], encryption_context={"c": "1"})
    assert dec["Plaintext"] == b"both" and dec["KeyId"] == rmeta["Arn"]
    back = eu.encrypt(key_id=kid, plaintext=b"back")["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=back)["Plaintext"] == b"back"
    # rotation on the primary is shared with the replica; old ciphertext still opens
    assert code_of(lambda: eu.rotate_key_on_demand(key_id=kid)) == "UnsupportedOperationException"
    svc.rotate_key_on_demand(key_id=kid)
    newer = svc.encrypt(key_id=kid, plaintext=b"v2")["CiphertextBlob"]
    assert eu.decrypt(ciphertext_blob=newer)["Plaintext"] == b"v2"
    assert eu.decrypt(ciphertext_blob=blob["CiphertextBlob"], encryption_context={"c": "1"})
    cfg = svc.describe_key(key_id=kid)["KeyMetadata"]["MultiRegionConfiguration"]
    assert cfg["MultiRegionKeyType"] == "PRIMARY"
    assert [r["Region"] for r in cfg["ReplicaKeys"]] == ["eu-west-1"]
    # Regions are separate namespaces
    single = new_key(svc)
    assert code_of(lambda: eu.describe_key(key_id=single)) == "NotFoundException"
    assert code_of(lambda: svc.replicate_key(key_id=single, replica_region="eu-west-1")) == (
        "UnsupportedOperationException"
    )
    assert code_of(lambda: svc.replicate_key(key_id=kid, replica_region="eu-west-1")) == (
        "AlreadyExistsException"
    )
    assert code_of(lambda: svc.replicate_key(key_id=kid, replica_region="Mars")) == (
        "ValidationException"
    )


def test_update_primary_region_needs_both_keys_enabled(svc: KeyService) -> None:
    """"Both the primary key and the replica key must be in the Enabled key state when the
    operation starts" (Developer Guide, "Change the primary key"): a Disabled one is
    DisabledException (it made the replica the primary; review), and nothing changes."""
    us, eu = svc, svc.for_region("eu-west-1")
    for disabled in (us, eu):
        kid = new_key(us, multi_region=True)
        us.replicate_key(key_id=kid, replica_region="eu-west-1")
        disabled.disable_key(key_id=kid)
        assert code_of(
            lambda k=kid: us.update_primary_region(key_id=k, primary_region="eu-west-1")
        ) == ("DisabledException")
        mr = eu.describe_key(key_id=kid)["KeyMetadata"]["MultiRegionConfiguration"]
        assert mr["MultiRegionKeyType"] == "REPLICA"
        disabled.enable_key(key_id=kid)
        us.update_primary_region(key_id=kid, primary_region="eu-west-1")
        mr = eu.describe_key(key_id=kid)["KeyMetadata"]["MultiRegionConfiguration"]
        assert mr["MultiRegionKeyType"] == "PRIMARY"


def test_update_primary_region_and_deletion(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc, multi_region=True)
    svc.replicate_key(key_id=kid, replica_region="ap-south-1")
    ap = svc.for_region("ap-south-1")
    svc.update_primary_region(key_id=kid, primary_region="ap-south-1")
    assert (
        ap.describe_key(key_id=kid)["KeyMetadata"]["MultiRegionConfiguration"]["MultiRegionKeyType"]
        == "PRIMARY"
    )
    assert code_of(lambda: svc.update_primary_region(key_id=kid, primary_region="ap-south-1")) == (
        "UnsupportedOperationException"
    )
    # the primary (now in ap-south-1) waits for its replicas to go first
    out = ap.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    assert out["KeyState"] == "PendingReplicaDeletion"
    waiting = ap.describe_key(key_id=kid)["KeyMetadata"]
    assert waiting["PendingDeletionWindowInDays"] == 7  # shown only in this state
    blob = svc.encrypt(key_id=kid, plaintext=b"x")["CiphertextBlob"]
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    clock.advance(days=7)
    assert code_of(lambda: svc.describe_key(key_id=kid)) == "NotFoundException"
    meta = ap.describe_key(key_id=kid)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    assert meta["DeletionDate"] == clock.now + 7 * DAY
    assert code_of(lambda: ap.decrypt(ciphertext_blob=blob)) == "KMSInvalidStateException"
    ap.cancel_key_deletion(key_id=kid)
    ap.enable_key(key_id=kid)
    assert ap.decrypt(ciphertext_blob=blob)["Plaintext"] == b"x"
