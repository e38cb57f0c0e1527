"""Rotation of imported key material: several materials per key, as AWS KMS serves it.

New material is imported with ImportType NEW_KEY_MATERIAL (PENDING_ROTATION), RotateKeyOnDemand
makes it current, earlier materials keep decrypting; each material is deleted, expires and is
imported again on its own; a multi-Region key rotates from its primary once every Region holds
the new material.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from envelope.service import KeyService, _materials

from .conftest import DAY, FakeClock, new_key, open_store
from .test_rotation_import_mrk import code_of, wrap

M1, M2, M3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
EU, AP = "eu-west-1", "ap-south-1"


def imp(svc: KeyService, kid: str, material: bytes, **kw: Any) -> dict[str, Any]:
    params = svc.get_parameters_for_import(
        key_id=kid, wrapping_algorithm="RSAES_OAEP_SHA_256", wrapping_key_spec="RSA_2048"
    )
    if "valid_to" not in kw:
        kw.setdefault("expiration_model", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    return svc.import_key_material(
        key_id=kid,
        import_token=params["ImportToken"],
        encrypted_key_material=wrap(params, material, "RSAES_OAEP_SHA_256"),
        **kw,
    )


def meta(svc: KeyService, kid: str) -> dict[str, Any]:
    return dict(svc.describe_key(key_id=kid)["KeyMetadata"])


def listed(svc: KeyService, kid: str, every: bool = True) -> list[dict[str, Any]]:
    include = "ALL_KEY_MATERIAL" if every else "ROTATIONS_ONLY"
    return list(svc.list_key_rotations(key_id=kid, include_key_material=include)["Rotations"])


def test_rotate_to_new_imported_material_and_decrypt_with_the_old(svc: KeyService) -> None:
    kid = new_key(svc, origin="EXTERNAL")
    first = imp(svc, kid, M1, key_material_description="first")
    id1 = first["KeyMaterialId"]
    assert first["KeyId"].endswith(kid) and len(id1) == 64
    assert meta(svc, kid)["CurrentKeyMaterialId"] == id1
    c1 = svc.encrypt(key_id=kid, plaintext=b"under m1")["CiphertextBlob"]

    second = imp(svc, kid, M2, import_type="NEW_KEY_MATERIAL")
    id2 = second["KeyMaterialId"]
    assert id2 != id1
    # pending: not used yet, listed only with ALL_KEY_MATERIAL
    assert meta(svc, kid)["CurrentKeyMaterialId"] == id1
    assert listed(svc, kid, every=False) == []
    arn = meta(svc, kid)["Arn"]
    assert listed(svc, kid) == [
        {
            "KeyId": arn,
            "KeyMaterialId": id1,
            "KeyMaterialDescription": "first",
            "ImportState": "IMPORTED",
            "KeyMaterialState": "CURRENT",
            "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
        },
        {
            "KeyId": arn,
            "KeyMaterialId": id2,
            "ImportState": "IMPORTED",
            "KeyMaterialState": "PENDING_ROTATION",
            "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
        },
    ]
    # one material pending at a time (AWS's words), and known material is not new
    with pytest.raises(Exception) as info:
        imp(svc, kid, M3, import_type="NEW_KEY_MATERIAL")
    assert getattr(info.value, "code", "") == "KMSInvalidStateException"
    assert f"because another key material (id: {id2}) is pending rotation." in str(info.value)
    assert code_of(lambda: imp(svc, kid, M1, import_type="NEW_KEY_MATERIAL")) == (
        "IncorrectKeyMaterialException"
    )

    assert svc.rotate_key_on_demand(key_id=kid) == {"KeyId": arn}
    assert meta(svc, kid)["CurrentKeyMaterialId"] == id2
    c2 = svc.encrypt(key_id=kid, plaintext=b"under m2")["CiphertextBlob"]
    out1, out2 = svc.decrypt(ciphertext_blob=c1), svc.decrypt(ciphertext_blob=c2)
    assert (out1["Plaintext"], out1["KeyMaterialId"]) == (b"under m1", id1)
    assert (out2["Plaintext"], out2["KeyMaterialId"]) == (b"under m2", id2)
    rotations = listed(svc, kid, every=False)
    assert [(r["KeyMaterialId"], r["KeyMaterialState"], r["RotationType"]) for r in rotations] == [
        (id2, "CURRENT", "ON_DEMAND")
    ]
    assert rotations[0]["RotationDate"] == svc.now()
    assert [r["KeyMaterialState"] for r in listed(svc, kid)] == ["NON_CURRENT", "CURRENT"]
    # nothing pending any more
    assert code_of(lambda: svc.rotate_key_on_demand(key_id=kid)) == "KMSInvalidStateException"
    assert meta(svc, kid)["KeyState"] == "Enabled"


def test_each_material_is_deleted_and_imported_again_on_its_own(svc: KeyService) -> None:
    kid = new_key(svc, origin="EXTERNAL")
    id1 = imp(svc, kid, M1, key_material_description="one")["KeyMaterialId"]
    c1 = svc.encrypt(key_id=kid, plaintext=b"1")["CiphertextBlob"]
    id2 = imp(svc, kid, M2, import_type="NEW_KEY_MATERIAL")["KeyMaterialId"]
    svc.rotate_key_on_demand(key_id=kid)
    c2 = svc.encrypt(key_id=kid, plaintext=b"2")["CiphertextBlob"]

    # deleting an earlier material makes the key PendingImport (AWS: any associated material)
    out = svc.delete_imported_key_material(key_id=kid, key_material_id=id1)
    assert out == {"KeyId": meta(svc, kid)["Arn"], "KeyMaterialId": id1}
    m = meta(svc, kid)
    assert m["KeyState"] == "PendingImport" and m["CurrentKeyMaterialId"] == id2
    for blob in (c1, c2):
        assert code_of(lambda b=blob: svc.decrypt(ciphertext_blob=b)) == "KMSInvalidStateException"
    states = {r["KeyMaterialId"]: r["ImportState"] for r in listed(svc, kid)}
    assert states == {id1: "PENDING_IMPORT", id2: "IMPORTED"}

    # the id must name the material being imported; a new import takes no id
    assert code_of(lambda: imp(svc, kid, M1, key_material_id=id2)) == (
        "IncorrectKeyMaterialException"
    )
    assert code_of(
        lambda: imp(svc, kid, M3, import_type="NEW_KEY_MATERIAL", key_material_id=id1)
    ) == ("ValidationException")
    assert code_of(lambda: imp(svc, kid, M3)) == "IncorrectKeyMaterialException"
    for bad in ("", "x" * 257, "semi;colon"):
        assert code_of(lambda d=bad: imp(svc, kid, M1, key_material_description=d)) == (
            "ValidationException"
        )
    assert meta(svc, kid)["KeyState"] == "PendingImport"  # failed calls changed nothing

    imp(svc, kid, M1, key_material_id=id1, import_type="EXISTING_KEY_MATERIAL")
    assert meta(svc, kid)["KeyState"] == "Enabled"
    assert svc.decrypt(ciphertext_blob=c1)["Plaintext"] == b"1"
    # the description is kept when an import does not give one
    assert listed(svc, kid)[0]["KeyMaterialDescription"] == "one"

    # the current one, by default
    assert svc.delete_imported_key_material(key_id=kid)["KeyMaterialId"] == id2
    m = meta(svc, kid)
    assert m["KeyState"] == "PendingImport" and m["CurrentKeyMaterialId"] == id2
    assert "ExpirationModel" in m  # m1 is still held
    svc.delete_imported_key_material(key_id=kid, key_material_id=id1)
    assert "ExpirationModel" not in meta(svc, kid)
    assert code_of(
        lambda: svc.delete_imported_key_material(key_id=kid, key_material_id="ab" * 32)
    ) == ("NotFoundException")
    imp(svc, kid, M2)
    assert meta(svc, kid)["KeyState"] == "PendingImport"  # m1 still missing
    imp(svc, kid, M1)
    assert meta(svc, kid)["KeyState"] == "Enabled"
    assert svc.decrypt(ciphertext_blob=c2)["Plaintext"] == b"2"


def test_pending_material_deleted_is_dissociated(svc: KeyService) -> None:
    kid = new_key(svc, origin="EXTERNAL")
    imp(svc, kid, M1)
    id2 = imp(svc, kid, M2, import_type="NEW_KEY_MATERIAL")["KeyMaterialId"]
    svc.delete_imported_key_material(key_id=kid, key_material_id=id2)
    assert meta(svc, kid)["KeyState"] == "Enabled"
    assert [r["KeyMaterialState"] for r in listed(svc, kid)] == ["CURRENT"]
    # different material may now be imported in its place, and rotated to
    id3 = imp(svc, kid, M3, import_type="NEW_KEY_MATERIAL")["KeyMaterialId"]
    assert id3 != id2
    svc.rotate_key_on_demand(key_id=kid)
    assert meta(svc, kid)["CurrentKeyMaterialId"] == id3


def test_materials_expire_separately(svc: KeyService, clock: FakeClock) -> None:
    kid = new_key(svc, origin="EXTERNAL")
    imp(svc, kid, M1, valid_to=clock.now + 5 * DAY)
    id2 = imp(svc, kid, M2, import_type="NEW_KEY_MATERIAL", valid_to=clock.now + 2 * DAY)[
        "KeyMaterialId"
    ]
    # DescribeKey's ValidTo: the earliest of the materials permanently associated
    assert meta(svc, kid)["ValidTo"] == clock.now + 5 * DAY
    clock.advance(days=2)
    # the pending one expired: the key is unchanged, the material is no longer held
    assert meta(svc, kid)["KeyState"] == "Enabled"
    pend = next(r for r in listed(svc, kid) if r["KeyMaterialId"] == id2)
    assert pend["ImportState"] == "PENDING_IMPORT" and "ValidTo" not in pend
    assert code_of(lambda: svc.rotate_key_on_demand(key_id=kid)) == "KMSInvalidStateException"
    imp(svc, kid, M2, valid_to=clock.now + 10 * DAY)
    svc.rotate_key_on_demand(key_id=kid)
    m = meta(svc, kid)
    assert m["CurrentKeyMaterialId"] == id2 and m["ValidTo"] == clock.now + 3 * DAY
    clock.advance(days=3)  # the earlier material expires: the key waits for it
    assert meta(svc, kid)["KeyState"] == "PendingImport"


def test_asymmetric_keys_keep_their_first_material(svc: KeyService) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    kid = new_key(svc, origin="EXTERNAL", key_spec="ECC_NIST_P256", key_usage="SIGN_VERIFY")
    der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    imp(svc, kid, der)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert code_of(lambda: imp(svc, kid, other, import_type="NEW_KEY_MATERIAL")) == (
        "UnsupportedOperationException"
    )
    assert code_of(lambda: imp(svc, kid, der, key_material_description="x")) == (
        "ValidationException"
    )
    assert code_of(lambda: svc.list_key_rotations(key_id=kid)) == "UnsupportedOperationException"


def test_aws_kms_key_lists_its_first_material_on_request(svc: KeyService) -> None:
    kid = new_key(svc)
    svc.rotate_key_on_demand(key_id=kid)
    every = listed(svc, kid)
    assert [r["KeyMaterialState"] for r in every] == ["NON_CURRENT", "CURRENT"]
    assert "RotationDate" not in every[0] and every[1]["RotationType"] == "ON_DEMAND"
    assert listed(svc, kid, every=False) == every[1:]
    assert code_of(lambda: svc.list_key_rotations(key_id=kid, include_key_material="SOME")) == (
        "ValidationException"
    )
    page = svc.list_key_rotations(key_id=kid, include_key_material="ALL_KEY_MATERIAL", limit=1)
    assert page["Truncated"] is True and len(page["Rotations"]) == 1
    rest = svc.list_key_rotations(
        key_id=kid, include_key_material="ALL_KEY_MATERIAL", marker=page["NextMarker"]
    )
    assert page["Rotations"] + rest["Rotations"] == every


def test_multi_region_rotation_waits_for_every_region(svc: KeyService) -> None:
    kid = new_key(svc, origin="EXTERNAL", multi_region=True)
    id1 = imp(svc, kid, M1)["KeyMaterialId"]
    svc.replicate_key(key_id=kid, replica_region=EU)
    eu = svc.for_region(EU)
    imp(eu, kid, M1)
    c1 = svc.encrypt(key_id=kid, plaintext=b"m1")["CiphertextBlob"]

    assert code_of(lambda: imp(eu, kid, M2, import_type="NEW_KEY_MATERIAL")) == (
        "UnsupportedOperationException"
    )
    id2 = imp(svc, kid, M2, import_type="NEW_KEY_MATERIAL")["KeyMaterialId"]
    assert listed(svc, kid)[1]["KeyMaterialState"] == "PENDING_MULTI_REGION_IMPORT_AND_ROTATION"
    assert code_of(lambda: svc.rotate_key_on_demand(key_id=kid)) == "KMSInvalidStateException"
    assert imp(eu, kid, M2)["KeyMaterialId"] == id2  # EXISTING: the primary's new material
    for region in (svc, eu):
        assert listed(region, kid)[1]["KeyMaterialState"] == "PENDING_ROTATION"
    assert code_of(lambda: eu.rotate_key_on_demand(key_id=kid)) == "UnsupportedOperationException"
    svc.rotate_key_on_demand(key_id=kid)
    assert meta(svc, kid)["CurrentKeyMaterialId"] == meta(eu, kid)["CurrentKeyMaterialId"] == id2
    c2 = eu.encrypt(key_id=kid, plaintext=b"m2 from eu")["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=c2)["KeyMaterialId"] == id2
    assert eu.decrypt(ciphertext_blob=c1)["Plaintext"] == b"m1"

    # a replica made after the rotation needs every associated material before it is usable
    svc.replicate_key(key_id=kid, replica_region=AP)
    ap = svc.for_region(AP)
    assert [r["ImportState"] for r in listed(ap, kid)] == ["PENDING_IMPORT", "PENDING_IMPORT"]
    imp(ap, kid, M2)
    assert meta(ap, kid)["KeyState"] == "PendingImport"
    imp(ap, kid, M1)
    assert meta(ap, kid)["KeyState"] == "Enabled"
    assert ap.decrypt(ciphertext_blob=c1)["Plaintext"] == b"m1"

    # a pending material deleted in the primary goes from every Region; in a replica, only there
    id3 = imp(svc, kid, M3, import_type="NEW_KEY_MATERIAL")["KeyMaterialId"]
    imp(eu, kid, M3)
    eu.delete_imported_key_material(key_id=kid, key_material_id=id3)
    assert [r["ImportState"] for r in listed(eu, kid)][-1] == "PENDING_IMPORT"
    assert [r["KeyMaterialId"] for r in listed(svc, kid)][-1] == id3
    svc.delete_imported_key_material(key_id=kid, key_material_id=id3)
    assert [r["KeyMaterialId"] for r in listed(eu, kid)] == [id1, id2]
    assert meta(eu, kid)["KeyState"] == "Enabled"


def test_materials_survive_reopen(home: Path, clock: FakeClock) -> None:
    a = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(a, origin="EXTERNAL")
    imp(a, kid, M1)
    c1 = a.encrypt(key_id=kid, plaintext=b"1")["CiphertextBlob"]
    imp(a, kid, M2, import_type="NEW_KEY_MATERIAL")
    a.close()
    b = KeyService(open_store(home), clock=clock, owns_store=True)
    b.rotate_key_on_demand(key_id=kid)
    assert b.decrypt(ciphertext_blob=c1)["Plaintext"] == b"1"
    assert [r["KeyMaterialState"] for r in listed(b, kid)] == ["NON_CURRENT", "CURRENT"]
    b.close()


def test_rows_from_before_several_materials_read_as_one() -> None:
    old = {"x_fp": "ab", "x_version": 1, "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}
    mats = _materials.entries(old)
    assert mats == {
        "1": {
            "fp": "ab",
            "state": "CURRENT",
            "imported": True,
            "model": "KEY_MATERIAL_DOES_NOT_EXPIRE",
            "valid_to": None,
        }
    }
    assert "x_fp" not in old
    deleted = {"x_fp": "ab", "x_version": 0, "KeyState": "PendingImport"}
    assert _materials.entries(deleted)["1"]["imported"] is False
    assert _materials.complete(deleted) is False
    assert _materials.next_expiry({"ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": 5.0}) == 5


def test_material_is_deleted_from_a_key_pending_deletion(svc: KeyService) -> None:
    kid = new_key(svc, origin="EXTERNAL")
    imp(svc, kid, M1)
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    svc.delete_imported_key_material(key_id=kid)  # AWS: allowed, the state stays
    assert meta(svc, kid)["KeyState"] == "PendingDeletion"
    assert code_of(lambda: imp(svc, kid, M1)) == "KMSInvalidStateException"
    svc.cancel_key_deletion(key_id=kid)
    assert meta(svc, kid)["KeyState"] == "PendingImport"


def test_audit_records_name_the_key_materials(svc: KeyService) -> None:
    """Which material encrypted, decrypted, was imported, deleted or rotated to: in the
    audit record of the call (CloudTrail's keyMaterialId), never for a refused call."""
    kid = new_key(svc, origin="EXTERNAL")
    id1 = imp(svc, kid, M1)["KeyMaterialId"]
    blob = svc.encrypt(key_id=kid, plaintext=b"x")["CiphertextBlob"]
    id2 = imp(svc, kid, M2, import_type="NEW_KEY_MATERIAL")["KeyMaterialId"]
    svc.rotate_key_on_demand(key_id=kid)
    svc.decrypt(ciphertext_blob=blob)
    svc.delete_imported_key_material(key_id=kid, key_material_id=id1)
    assert code_of(lambda: svc.encrypt(key_id=kid, plaintext=b"x")) == "KMSInvalidStateException"
    records = [r for r in svc.audit_tail(30) if r["key_id"] and str(r["key_id"]).endswith(kid)]
    named = [
        (r["operation"], r.get("key_material_ids"))
        for r in records
        if r["operation"] not in ("GetParametersForImport", "CreateKey")
    ]
    assert named == [
        ("ImportKeyMaterial", [id1]),
        ("Encrypt", [id1]),
        ("ImportKeyMaterial", [id2]),
        ("RotateKeyOnDemand", [id1, id2]),
        ("Decrypt", [id1]),
        ("DeleteImportedKeyMaterial", [id1]),
        ("Encrypt", None),
    ]
    report = svc.verify_audit_log()
    assert report.ok


def test_a_failed_write_leaves_no_trace_in_the_cached_key(
    svc: KeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Materials are changed in place on the loaded key: a call whose write fails after that
    (here the store refusing the row) must not leave its change in the cached metadata."""
    import sqlite3

    from envelope.service._core import ServiceCore

    kid = new_key(svc, origin="EXTERNAL")
    imp(svc, kid, M1)
    id2 = imp(svc, kid, M2, import_type="NEW_KEY_MATERIAL")["KeyMaterialId"]
    assert [r["ImportState"] for r in listed(svc, kid)] == ["IMPORTED", "IMPORTED"]
    real = ServiceCore._save

    def failing(self: ServiceCore, conn: sqlite3.Connection, key: Any, **kw: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ServiceCore, "_save", failing)
    for call in (
        lambda: svc.delete_imported_key_material(key_id=kid, key_material_id=id2),
        lambda: svc.rotate_key_on_demand(key_id=kid),
    ):
        with pytest.raises(Exception):  # noqa: B017 - the store failure, as the caller sees it
            call()
    monkeypatch.setattr(ServiceCore, "_save", real)
    assert [r["KeyMaterialState"] for r in listed(svc, kid)] == ["CURRENT", "PENDING_ROTATION"]
    assert [r["ImportState"] for r in listed(svc, kid)] == ["IMPORTED", "IMPORTED"]
    svc.rotate_key_on_demand(key_id=kid)
    assert meta(svc, kid)["CurrentKeyMaterialId"] == id2


def test_new_material_in_the_primary_after_a_replica_imported_first(svc: KeyService) -> None:
    """A replica imported the key's first material before the primary had any; new material
    imported into the primary then waits for rotation, and the primary still needs the
    first material before it is usable."""
    kid = new_key(svc, origin="EXTERNAL", multi_region=True)
    svc.replicate_key(key_id=kid, replica_region=EU)
    eu = svc.for_region(EU)
    id1 = imp(eu, kid, M1)["KeyMaterialId"]
    id2 = imp(svc, kid, M2, import_type="NEW_KEY_MATERIAL")["KeyMaterialId"]
    states = {
        r["KeyMaterialId"]: (r["KeyMaterialState"], r["ImportState"]) for r in listed(svc, kid)
    }
    assert states == {
        id1: ("CURRENT", "PENDING_IMPORT"),
        id2: ("PENDING_MULTI_REGION_IMPORT_AND_ROTATION", "IMPORTED"),
    }
    assert meta(svc, kid)["KeyState"] == "PendingImport"
    imp(svc, kid, M1)
    assert meta(svc, kid)["KeyState"] == "Enabled"
    blob = svc.encrypt(key_id=kid, plaintext=b"x")["CiphertextBlob"]
    assert eu.decrypt(ciphertext_blob=blob)["KeyMaterialId"] == id1
