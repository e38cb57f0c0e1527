"""HSM key stores (AWS_CLOUDHSM over PKCS#11) in the embedded KMS, with a real SoftHSM2 token.

AWS rules checked here (AWS KMS API reference and Developer Guide, "CloudHSM key stores"):
a new store is DISCONNECTED; keys are made in a connected store only; a key's material is a
non-extractable key in the HSM and its cryptography runs there; while the store is
disconnected its keys are Unavailable and every use fails with KMSInvalidStateException;
reconnected, old ciphertext decrypts; a store with keys cannot be deleted; deleting a key
destroys its HSM object after the waiting period.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from envelope.service import KeyService
from envelope.service.errors import (
    AccessDeniedException,
    CloudHsmClusterInUseException,
    CloudHsmClusterNotFoundException,
    CloudHsmClusterNotRelatedException,
    CustomKeyStoreHasCMKsException,
    CustomKeyStoreInvalidStateException,
    CustomKeyStoreNameInUseException,
    CustomKeyStoreNotFoundException,
    IncorrectTrustAnchorException,
    InvalidCiphertextException,
    KMSInvalidStateException,
    TamperedStoreError,
    UnsupportedOperationException,
    ValidationException,
)

from ..service.conftest import FakeClock, open_store
from ..softhsm import make_token
from .conftest import HsmToken

CTX = {"dataset": "sales"}
ANCHOR = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def svc(tmp_path: Path, clock: FakeClock) -> Iterator[KeyService]:
    service = KeyService(open_store(tmp_path / "home"), clock=clock, owns_store=True)
    yield service
    service.close()


def make_store(svc: KeyService, hsm: HsmToken, name: str = "hsm") -> tuple[str, str]:
    cluster = svc.register_hsm_cluster(module=hsm.module, token_label=hsm.label)[
        "CloudHsmClusterId"
    ]
    store = svc.create_custom_key_store(
        custom_key_store_name=name,
        cloud_hsm_cluster_id=cluster,
        key_store_password=hsm.pin,
        trust_anchor_certificate=ANCHOR,
    )["CustomKeyStoreId"]
    return cluster, store


def entry(svc: KeyService, store: str) -> dict[str, Any]:
    (e,) = svc.describe_custom_key_stores(custom_key_store_id=store)["CustomKeyStores"]
    return dict(e)


def test_lifecycle_of_an_hsm_key(svc: KeyService, hsm: HsmToken, clock: FakeClock) -> None:
    cluster, store = make_store(svc, hsm)
    e = entry(svc, store)
    assert e["ConnectionState"] == "DISCONNECTED" and e["CloudHsmClusterId"] == cluster
    assert e["CustomKeyStoreType"] == "AWS_CLOUDHSM" and "KeyStorePassword" not in e
    with pytest.raises(CustomKeyStoreInvalidStateException):
        svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)
    svc.connect_custom_key_store(custom_key_store_id=store)
    assert entry(svc, store)["ConnectionState"] == "CONNECTED"

    meta = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]
    assert meta["Origin"] == "AWS_CLOUDHSM" and meta["CustomKeyStoreId"] == store
    assert meta["CloudHsmClusterId"] == cluster and meta["KeyState"] == "Enabled"
    kid = meta["KeyId"]
    label = f"kms-{kid}"
    # the material is in the token, sensitive and never extractable
    attrs = hsm.token().key_attributes(label)
    assert attrs["extractable"] is False and attrs["sensitive"] is True
    assert attrs["never_extractable"] is True and attrs["value_len"] == 32

    blob = svc.encrypt(key_id=kid, plaintext=b"secret", encryption_context=CTX)["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=blob, encryption_context=CTX)["Plaintext"] == b"secret"
    with pytest.raises(InvalidCiphertextException):
        svc.decrypt(ciphertext_blob=blob, encryption_context={"dataset": "other"})
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidCiphertextException):
        svc.decrypt(ciphertext_blob=tampered, encryption_context=CTX)
    dk = svc.generate_data_key(key_id=kid, key_spec="AES_256", encryption_context=CTX)
    assert len(dk["Plaintext"]) == 32
    back = svc.decrypt(ciphertext_blob=dk["CiphertextBlob"], encryption_context=CTX)
    assert back["Plaintext"] == dk["Plaintext"]
    wp = svc.generate_data_key_without_plaintext(key_id=kid, number_of_bytes=16)
    assert len(svc.decrypt(ciphertext_blob=wp["CiphertextBlob"])["Plaintext"]) == 16
    # ReEncrypt out of the HSM to an ordinary key and back
    plain_key = svc.create_key()["KeyMetadata"]["KeyId"]
    moved = svc.re_encrypt(
        ciphertext_blob=blob,
        source_encryption_context=CTX,
        destination_key_id=plain_key,
    )["CiphertextBlob"]
    again = svc.re_encrypt(
        ciphertext_blob=moved, destination_key_id=kid, destination_encryption_context=CTX
    )["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=again, encryption_context=CTX)["Plaintext"] == b"secret"
    assert (
        len(svc.generate_random(number_of_bytes=24, custom_key_store_id=store)["Plaintext"]) == 24
    )

    # every HSM call is in the audit record of the KMS call that made it
    rec = next(r for r in svc.audit_tail(40) if r["operation"] == "GenerateDataKey")
    (hcall,) = rec["keystore_calls"]
    assert hcall["CustomKeyStoreId"] == store and hcall["Call"] == "Encrypt"
    assert hcall["Outcome"] == "ok" and hcall["Milliseconds"] >= 0

    # disconnected: Unavailable, every use refused, management still works
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "Unavailable"
    for use in (
        lambda: svc.encrypt(key_id=kid, plaintext=b"x"),
        lambda: svc.decrypt(ciphertext_blob=blob, encryption_context=CTX),
        lambda: svc.generate_data_key(key_id=kid, key_spec="AES_256"),
    ):
        with pytest.raises(KMSInvalidStateException):
            use()
    with pytest.raises(CustomKeyStoreInvalidStateException):
        svc.disconnect_custom_key_store(custom_key_store_id=store)
    svc.tag_resource(key_id=kid, tags=[{"TagKey": "k", "TagValue": "v"}])
    # reconnected: the old ciphertext decrypts
    svc.connect_custom_key_store(custom_key_store_id=store)
    assert svc.decrypt(ciphertext_blob=blob, encryption_context=CTX)["Plaintext"] == b"secret"

    # rotation is not for keys in custom key stores
    with pytest.raises(UnsupportedOperationException):
        svc.enable_key_rotation(key_id=kid)

    # a store with keys cannot be deleted; deletion needs DISCONNECTED first
    with pytest.raises(CustomKeyStoreInvalidStateException):
        svc.delete_custom_key_store(custom_key_store_id=store)
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    with pytest.raises(CustomKeyStoreHasCMKsException):
        svc.delete_custom_key_store(custom_key_store_id=store)

    # the key is deleted after its window while the store is disconnected: the token object
    # stays until the store is connected again, then goes
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    clock.advance(days=8)
    svc.list_keys()
    svc.run_due_tasks()
    assert hsm.token().has_key(label)
    svc.connect_custom_key_store(custom_key_store_id=store)
    assert not hsm.token().has_key(label)
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    svc.delete_custom_key_store(custom_key_store_id=store)
    with pytest.raises(CustomKeyStoreNotFoundException):
        entry(svc, store)


def test_a_deleted_key_leaves_the_token_once_its_window_ends(
    svc: KeyService, hsm: HsmToken, clock: FakeClock
) -> None:
    _, store = make_store(svc, hsm, "hsm-delete")
    svc.connect_custom_key_store(custom_key_store_id=store)
    kid = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]["KeyId"]
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    clock.advance(days=6)
    svc.run_due_tasks()
    assert hsm.token().has_key(f"kms-{kid}")
    clock.advance(days=2)
    svc.run_due_tasks()
    assert not hsm.token().has_key(f"kms-{kid}")
    # the destruction has an audit record of its own (it had none)
    (record,) = [r for r in svc.audit_tail(5) if r["operation"] == "DestroyHsmKeys"]
    assert record["principal"] == "AWS Internal" and record["outcome"] == "ok"
    assert [(c["Call"], c["Outcome"], c["Label"]) for c in record["keystore_calls"]] == [
        ("DestroyKey", "ok", f"kms-{kid}")
    ]
    assert svc.verify_audit_log().ok


def test_a_deleted_key_leaves_the_token_despite_an_object_added_under_its_label(
    svc: KeyService, hsm: HsmToken, clock: FakeClock
) -> None:
    """The pending deletion named the label alone: one object added under it by anyone with
    the PIN made every DestroyKey fail, and the deleted key's material stayed (review). The
    key made for the KMS goes, by its CKA_ID; the stranger is left alone."""
    _, store = make_store(svc, hsm, "hsm-decoy")
    svc.connect_custom_key_store(custom_key_store_id=store)
    kid = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]["KeyId"]
    label = f"kms-{kid}"
    token = hsm.token()

    def add_decoy(session: Any) -> None:
        from pkcs11 import KeyType

        session.p11.generate_key(KeyType.AES, 256, label=label, id=b"decoy", store=True)

    token._run(add_decoy)
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    clock.advance(days=8)
    svc.run_due_tasks()

    def ids(session: Any) -> list[bytes]:
        from pkcs11 import Attribute

        return sorted(bytes(o[Attribute.ID]) for o in token._objects(session, label))

    assert token._run(ids) == [b"decoy"]
    (record,) = [r for r in svc.audit_tail(5) if r["operation"] == "DestroyHsmKeys"]
    assert [c["Outcome"] for c in record["keystore_calls"]] == ["ok"]


#: An HSM administrator changing the token user's PIN (C_Login, C_SetPIN), in a process of its
#: own: python-pkcs11 has no C_SetPIN.
_SET_PIN = r"""
import ctypes, sys
module = sys.argv[1]
label, old, new = (a.encode() for a in sys.argv[2:5])
lib = ctypes.CDLL(module)
assert lib.C_Initialize(None) == 0
n = ctypes.c_ulong()
lib.C_GetSlotList(1, None, ctypes.byref(n))
slots = (ctypes.c_ulong * n.value)()
lib.C_GetSlotList(1, slots, ctypes.byref(n))
class Info(ctypes.Structure):
    _fields_ = [("label", ctypes.c_char * 32), ("rest", ctypes.c_char * 512)]
for slot in slots[: n.value]:
    info = Info()
    lib.C_GetTokenInfo(ctypes.c_ulong(slot), ctypes.byref(info))
    if info.label.rstrip() == label:
        h = ctypes.c_ulong()
        assert lib.C_OpenSession(ctypes.c_ulong(slot), 6, None, None, ctypes.byref(h)) == 0
        assert lib.C_Login(h, 1, old, ctypes.c_ulong(len(old))) == 0
        rv = lib.C_SetPIN(h, old, ctypes.c_ulong(len(old)), new, ctypes.c_ulong(len(new)))
        lib.C_Finalize(None)
        sys.exit(rv)
sys.exit(9)
"""


def test_a_pin_changed_in_the_token_is_taken_by_update_and_connect(
    svc: KeyService, tmp_path: Path
) -> None:
    """The operator's procedure after the HSM administrator changed the PIN (disconnect,
    UpdateCustomKeyStore KeyStorePassword, connect) failed with INVALID_CREDENTIALS until the
    process restarted: it was still logged in with the old PIN (review)."""
    import subprocess
    import sys

    config = make_token(tmp_path, label="pin-" + secrets.token_hex(4), pin="11112222")
    own = HsmToken(config)
    _, store = make_store(svc, own, "rotated")
    svc.connect_custom_key_store(custom_key_store_id=store)
    kid = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]["KeyId"]
    blob = svc.encrypt(key_id=kid, plaintext=b"before")["CiphertextBlob"]
    done = subprocess.run(
        [sys.executable, "-c", _SET_PIN, own.module, own.label, own.pin, "33334444"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    svc.update_custom_key_store(custom_key_store_id=store, key_store_password="99990000")
    svc.connect_custom_key_store(custom_key_store_id=store)  # a wrong one: said so
    e = entry(svc, store)
    assert e["ConnectionState"] == "FAILED" and e["ConnectionErrorCode"] == "INVALID_CREDENTIALS"
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    svc.update_custom_key_store(custom_key_store_id=store, key_store_password="33334444")
    svc.connect_custom_key_store(custom_key_store_id=store)
    assert entry(svc, store)["ConnectionState"] == "CONNECTED"
    assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == b"before"
    again = svc.encrypt(key_id=kid, plaintext=b"after")["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=again)["Plaintext"] == b"after"


def test_wrong_pin_fails_the_connection_and_an_update_mends_it(
    svc: KeyService, hsm: HsmToken
) -> None:
    cluster = svc.register_hsm_cluster(module=hsm.module, token_label=hsm.label)[
        "CloudHsmClusterId"
    ]
    store = svc.create_custom_key_store(
        custom_key_store_name="bad-pin",
        cloud_hsm_cluster_id=cluster,
        key_store_password="wrong-pin-0",
        trust_anchor_certificate=ANCHOR,
    )["CustomKeyStoreId"]
    svc.connect_custom_key_store(custom_key_store_id=store)
    e = entry(svc, store)
    assert e["ConnectionState"] == "FAILED" and e["ConnectionErrorCode"] == "INVALID_CREDENTIALS"
    with pytest.raises(CustomKeyStoreInvalidStateException):
        svc.connect_custom_key_store(custom_key_store_id=store)  # FAILED: disconnect first
    with pytest.raises(CustomKeyStoreInvalidStateException):
        svc.update_custom_key_store(custom_key_store_id=store, key_store_password=hsm.pin)
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    svc.update_custom_key_store(custom_key_store_id=store, key_store_password=hsm.pin)
    svc.connect_custom_key_store(custom_key_store_id=store)
    assert entry(svc, store)["ConnectionState"] == "CONNECTED"
    assert "ConnectionErrorCode" not in entry(svc, store)


def test_create_refusals(svc: KeyService, hsm: HsmToken, tmp_path: Path) -> None:
    with pytest.raises(CloudHsmClusterNotFoundException):
        svc.create_custom_key_store(
            custom_key_store_name="x",
            cloud_hsm_cluster_id="cluster-abcdefghijk",
            key_store_password=hsm.pin,
            trust_anchor_certificate=ANCHOR,
        )
    cluster = svc.register_hsm_cluster(
        module=hsm.module, token_label=hsm.label, trust_anchor_certificate=ANCHOR
    )["CloudHsmClusterId"]
    with pytest.raises(IncorrectTrustAnchorException):
        svc.create_custom_key_store(
            custom_key_store_name="x",
            cloud_hsm_cluster_id=cluster,
            key_store_password=hsm.pin,
            trust_anchor_certificate=ANCHOR.replace("MIIB", "MIIC"),
        )
    with pytest.raises(ValidationException):  # AWS: the trust anchor is required
        svc.create_custom_key_store(
            custom_key_store_name="x", cloud_hsm_cluster_id=cluster, key_store_password=hsm.pin
        )
    first = svc.create_custom_key_store(
        custom_key_store_name="x",
        cloud_hsm_cluster_id=cluster,
        key_store_password=hsm.pin,
        trust_anchor_certificate=ANCHOR,
    )["CustomKeyStoreId"]
    with pytest.raises(CloudHsmClusterInUseException):
        svc.create_custom_key_store(
            custom_key_store_name="y",
            cloud_hsm_cluster_id=cluster,
            key_store_password=hsm.pin,
            trust_anchor_certificate=ANCHOR,
        )
    # one token is one cluster: registered again (under another id) it would let a second
    # store share it
    with pytest.raises(CloudHsmClusterInUseException, match="already registered as"):
        svc.register_hsm_cluster(module=hsm.module, token_label=hsm.label)
    spare = make_token(tmp_path, label="spare-" + secrets.token_hex(3), pin=hsm.pin)
    other = svc.register_hsm_cluster(module=spare.module, token_label=spare.token_label)[
        "CloudHsmClusterId"
    ]
    with pytest.raises(CustomKeyStoreNameInUseException):
        svc.create_custom_key_store(
            custom_key_store_name="x",
            cloud_hsm_cluster_id=other,
            key_store_password=hsm.pin,
            trust_anchor_certificate=ANCHOR,
        )
    second = svc.create_custom_key_store(
        custom_key_store_name="y",
        cloud_hsm_cluster_id=other,
        key_store_password=hsm.pin,
        trust_anchor_certificate=ANCHOR,
    )["CustomKeyStoreId"]
    with pytest.raises(CustomKeyStoreNameInUseException):
        svc.update_custom_key_store(custom_key_store_id=second, new_custom_key_store_name="x")
    svc.delete_custom_key_store(custom_key_store_id=second)
    # keys in custom key stores: symmetric, single-Region, with the store's origin
    svc.connect_custom_key_store(custom_key_store_id=first)
    for bad in (
        {"origin": "AWS_CLOUDHSM"},  # no store named
        {"origin": "AWS_KMS", "custom_key_store_id": first},
        {"origin": "EXTERNAL_KEY_STORE", "custom_key_store_id": first, "xks_key_id": "k"},
        {"origin": "AWS_CLOUDHSM", "custom_key_store_id": first, "multi_region": True},
        {
            "origin": "AWS_CLOUDHSM",
            "custom_key_store_id": first,
            "key_spec": "RSA_2048",
            "key_usage": "ENCRYPT_DECRYPT",
        },
    ):
        with pytest.raises(UnsupportedOperationException):
            svc.create_key(**bad)  # type: ignore[arg-type]
    with pytest.raises(CustomKeyStoreNotFoundException):
        svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id="cks-0000000000000000")
    # nothing was left behind by the refusals: the store has no keys
    svc.disconnect_custom_key_store(custom_key_store_id=first)
    svc.delete_custom_key_store(custom_key_store_id=first)


def test_only_the_administrator_registers_clusters_and_iam_governs_stores(
    svc: KeyService, hsm: HsmToken
) -> None:
    svc.create_user(user_name="ops")
    ops = "arn:aws:iam::000000000000:user/ops"
    with pytest.raises(AccessDeniedException):
        svc.register_hsm_cluster(module=hsm.module, token_label=hsm.label, principal=ops)
    cluster = svc.register_hsm_cluster(module=hsm.module, token_label=hsm.label)[
        "CloudHsmClusterId"
    ]
    args = {
        "custom_key_store_name": "iam",
        "cloud_hsm_cluster_id": cluster,
        "key_store_password": hsm.pin,
        "trust_anchor_certificate": ANCHOR,
    }
    with pytest.raises(AccessDeniedException):
        svc.create_custom_key_store(**args, principal=ops)
    svc.put_principal_policy(
        arn=ops,
        policy_name="ks",
        policy_document=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "kms:*CustomKeyStore*", "Resource": "*"}
                ],
            }
        ),
    )
    store = svc.create_custom_key_store(**args, principal=ops)["CustomKeyStoreId"]
    svc.connect_custom_key_store(custom_key_store_id=store, principal=ops)
    # another account sees none of it
    with pytest.raises(CustomKeyStoreNotFoundException):
        svc.describe_custom_key_stores(
            custom_key_store_id=store, principal="arn:aws:iam::111111111111:root"
        )


def test_an_edited_store_row_is_refused(svc: KeyService, hsm: HsmToken, tmp_path: Path) -> None:
    _, store = make_store(svc, hsm, "tamper")
    conn = sqlite3.connect(tmp_path / "home" / "kms.sqlite3")
    body = json.loads(
        conn.execute("SELECT body FROM custom_key_stores WHERE store_id=?", (store,)).fetchone()[0]
    )
    body["ConnectionState"] = "CONNECTED"
    with conn:
        conn.execute(
            "UPDATE custom_key_stores SET body=? WHERE store_id=?", (json.dumps(body), store)
        )
    conn.close()
    with pytest.raises(TamperedStoreError):
        svc.describe_custom_key_stores(custom_key_store_id=store)


def test_key_policies_and_grants_govern_hsm_keys_as_any_other(
    svc: KeyService, hsm: HsmToken
) -> None:
    _, store = make_store(svc, hsm, "governed")
    svc.connect_custom_key_store(custom_key_store_id=store)
    kid = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]["KeyId"]
    svc.create_user(user_name="reader")
    reader = "arn:aws:iam::000000000000:user/reader"
    blob = svc.encrypt(key_id=kid, plaintext=b"p", encryption_context=CTX)["CiphertextBlob"]
    # no policy, no grant: refused before the HSM is asked
    with pytest.raises(AccessDeniedException):
        svc.decrypt(ciphertext_blob=blob, encryption_context=CTX, principal=reader)
    assert "keystore_calls" not in svc.audit_tail(1)[0]
    # a grant for Decrypt with this encryption context: allowed, only with it
    svc.create_grant(
        key_id=kid,
        grantee_principal=reader,
        operations=["Decrypt"],
        constraints={"EncryptionContextEquals": CTX},
    )
    out = svc.decrypt(ciphertext_blob=blob, encryption_context=CTX, principal=reader)
    assert out["Plaintext"] == b"p"
    with pytest.raises(AccessDeniedException):
        svc.encrypt(key_id=kid, plaintext=b"q", principal=reader)
    # a key policy that denies Decrypt to everyone but the root wins over the grant
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::000000000000:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Effect": "Deny",
                "Principal": {"AWS": reader},
                "Action": "kms:Decrypt",
                "Resource": "*",
            },
        ],
    }
    svc.put_key_policy(key_id=kid, policy_name="default", policy=json.dumps(policy))
    with pytest.raises(AccessDeniedException):
        svc.decrypt(ciphertext_blob=blob, encryption_context=CTX, principal=reader)


def test_a_store_whose_keys_waiting_periods_ended_can_be_deleted(
    svc: KeyService, hsm: HsmToken, clock: FakeClock
) -> None:
    """AWS: a custom key store can be deleted once its keys are deleted. A key whose waiting
    period ended is deleted, even if nothing has looked at it since: the delete refused with
    CustomKeyStoreHasCMKsException until a DescribeKey purged it."""
    _, store = make_store(svc, hsm, "hsm-due")
    svc.connect_custom_key_store(custom_key_store_id=store)
    kid = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]["KeyId"]
    svc.schedule_key_deletion(key_id=kid, pending_window_in_days=7)
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    clock.advance(days=6)
    with pytest.raises(CustomKeyStoreHasCMKsException):
        svc.delete_custom_key_store(custom_key_store_id=store)
    clock.advance(days=2)
    svc.delete_custom_key_store(custom_key_store_id=store)
    with pytest.raises(CustomKeyStoreNotFoundException):
        entry(svc, store)


def test_moving_a_store_to_another_token_opens_it_with_the_new_password(
    svc: KeyService, hsm: HsmToken, tmp_path: Path
) -> None:
    """UpdateCustomKeyStore naming both a new cluster and a new KeyStorePassword checks the new
    cluster (does its token hold the store's keys?) with the new password, the one the store
    will log in with from then on; the old one need not open it."""
    _, store = make_store(svc, hsm, name="moving")
    svc.connect_custom_key_store(custom_key_store_id=store)
    kid = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]["KeyId"]
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    # the copy's token has a PIN of its own and holds the store's key: its label and CKA_ID,
    # generated sensitive and never extractable (a backup restored, as far as the KMS can see)
    copy = make_token(tmp_path, label="copy-" + secrets.token_hex(3), pin="87654321")
    key_id_hex = str(hsm.token().key_attributes(f"kms-{kid}")["key_id"])
    _in_token(
        tmp_path, copy.module, copy.token_label, copy.pin, f"kms-{kid}", "generate", key_id_hex
    )
    cluster = svc.register_hsm_cluster(module=copy.module, token_label=copy.token_label)[
        "CloudHsmClusterId"
    ]
    with pytest.raises(CloudHsmClusterNotRelatedException):  # a PIN that opens neither
        svc.update_custom_key_store(
            custom_key_store_id=store, cloud_hsm_cluster_id=cluster, key_store_password="0000000"
        )
    assert entry(svc, store)["CloudHsmClusterId"] != cluster  # the refusal changed nothing
    svc.update_custom_key_store(
        custom_key_store_id=store, cloud_hsm_cluster_id=cluster, key_store_password=copy.pin
    )
    assert entry(svc, store)["CloudHsmClusterId"] == cluster
    svc.connect_custom_key_store(custom_key_store_id=store)
    assert entry(svc, store)["ConnectionState"] == "CONNECTED"
    record = [r for r in svc.audit_tail(10) if r["operation"] == "UpdateCustomKeyStore"][-1]
    assert [c["Call"] for c in record["keystore_calls"]] == ["Probe", "FindKeys"]


_SWAP = """
import sys
import pkcs11
from pkcs11 import Attribute as A, KeyType, Mechanism, ObjectClass

module, token_label, pin, label, mode, key_id = sys.argv[1:]
lib = pkcs11.lib(module)
with lib.get_token(token_label=token_label).open(user_pin=pin, rw=True) as s:
    if mode == "generate":
        s.generate_key(KeyType.AES, 256, label=label, id=bytes.fromhex(key_id), store=True,
                       template={A.SENSITIVE: True, A.EXTRACTABLE: False, A.PRIVATE: True})
        sys.exit(0)
    if mode != "beside":
        for o in s.get_objects({A.LABEL: label}):
            o.destroy()
    if mode == "derived":
        # sensitive, never extractable and always sensitive, yet of a value the attacker
        # knows: derived from a base key by encrypting known data with it (AES-ECB)
        base = s.generate_key(KeyType.AES, 256, store=False, template={
            A.SENSITIVE: True, A.EXTRACTABLE: False, A.ENCRYPT: True, A.DERIVE: True})
        base.derive_key(KeyType.AES, 256, mechanism=Mechanism.AES_ECB_ENCRYPT_DATA,
                        mechanism_param=bytes(32), store=True, label=label,
                        id=bytes.fromhex(key_id), template={
            A.TOKEN: True, A.PRIVATE: True, A.SENSITIVE: True, A.EXTRACTABLE: False,
            A.ENCRYPT: True, A.DECRYPT: True})
        sys.exit(0)
    s.create_object({
        A.CLASS: ObjectClass.SECRET_KEY, A.KEY_TYPE: KeyType.AES, A.VALUE: bytes(32),
        A.TOKEN: True, A.PRIVATE: True, A.LABEL: label, A.ENCRYPT: True, A.DECRYPT: True,
        A.SENSITIVE: mode == "sensitive-copy", A.EXTRACTABLE: mode != "sensitive-copy",
        A.ID: bytes.fromhex(key_id) if mode != "beside" else b"attacker",
    })
"""


def _in_token(tmp_path: Path, *args: str) -> None:
    """`_SWAP` in another process: someone else with the PIN, changing the token."""
    import subprocess
    import sys

    script = tmp_path / "swap.py"
    script.write_text(_SWAP)
    subprocess.run([sys.executable, str(script), *args], check=True, timeout=60)


@pytest.mark.parametrize("mode", ["replace", "sensitive-copy", "derived", "beside"])
def test_a_key_swapped_in_under_the_label_is_not_used(
    svc: KeyService, hsm: HsmToken, tmp_path: Path, mode: str
) -> None:
    """Someone with the token's PIN replaces a KMS key's token object with a key of known
    value under the same label (and even the same CKA_ID, or a sensitive copy made from a
    known value, or one derived inside the token from known data, which the token reports as
    sensitive, never extractable and always sensitive): the KMS refused nothing and sealed
    data keys under it. Now only the key with the recorded CKA_ID, generated in the token
    (CKA_LOCAL, CKM_AES_KEY_GEN) and sensitive and never extractable since, is used; a key
    merely added beside it under the label changes nothing."""
    _, store = make_store(svc, hsm, f"hsm-swap-{mode}")
    svc.connect_custom_key_store(custom_key_store_id=store)
    meta = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]
    kid = meta["KeyId"]
    blob = svc.encrypt(key_id=kid, plaintext=b"before", encryption_context=CTX)["CiphertextBlob"]
    key_id_hex = str(hsm.token().key_attributes(f"kms-{kid}")["key_id"])
    assert key_id_hex
    _in_token(tmp_path, hsm.module, hsm.label, hsm.pin, f"kms-{kid}", mode, key_id_hex)
    if mode == "beside":  # ours is still there and still the one used
        out = svc.generate_data_key(key_id=kid, key_spec="AES_256", encryption_context=CTX)
        assert (
            svc.decrypt(ciphertext_blob=out["CiphertextBlob"], encryption_context=CTX)["Plaintext"]
            == out["Plaintext"]
        )
        assert svc.decrypt(ciphertext_blob=blob, encryption_context=CTX)["Plaintext"] == b"before"
        return
    with pytest.raises(KMSInvalidStateException) as e:
        svc.generate_data_key(key_id=kid, key_spec="AES_256", encryption_context=CTX)
    assert "ValueError" not in str(e.value), e.value  # refused as unprotected, not by accident
    with pytest.raises(KMSInvalidStateException):
        svc.decrypt(ciphertext_blob=blob, encryption_context=CTX)


def test_unavailable_keys_are_enabled_and_disabled_for_when_the_store_reconnects(
    svc: KeyService, hsm: HsmToken
) -> None:
    """AWS: "You can view and manage unavailable KMS keys, but you cannot use them in
    cryptographic operations". EnableKey and DisableKey were KMSInvalidStateException."""
    _, store = make_store(svc, hsm, "hsm-manage")
    svc.connect_custom_key_store(custom_key_store_id=store)
    kid = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]["KeyId"]
    svc.disconnect_custom_key_store(custom_key_store_id=store)

    def state() -> str:
        return str(svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"])

    assert state() == "Unavailable"
    svc.disable_key(key_id=kid)
    assert state() == "Unavailable"
    svc.connect_custom_key_store(custom_key_store_id=store)
    assert state() == "Disabled"
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    svc.enable_key(key_id=kid)
    svc.connect_custom_key_store(custom_key_store_id=store)
    assert state() == "Enabled"
    svc.encrypt(key_id=kid, plaintext=b"x")


@pytest.mark.parametrize(
    "op", ["generate_data_key_pair", "generate_data_key_pair_without_plaintext"]
)
def test_data_key_pairs_are_not_made_under_a_custom_key_store_key(
    svc: KeyService, hsm: HsmToken, op: str
) -> None:
    """The API reference of GenerateDataKeyPair: "You cannot use an asymmetric KMS key or a
    KMS key in a custom key store" (UnsupportedOperationException); both were served."""
    _, store = make_store(svc, hsm, f"hsm-pair-{op}")
    svc.connect_custom_key_store(custom_key_store_id=store)
    kid = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]["KeyId"]
    with pytest.raises(UnsupportedOperationException, match="custom key store"):
        getattr(svc, op)(key_id=kid, key_pair_spec="ECC_NIST_P256")


def test_a_store_belongs_to_its_region(svc: KeyService, hsm: HsmToken) -> None:
    """A custom key store belongs to one account and Region (AWS: DescribeCustomKeyStores
    "gets information about custom key stores in the account and Region"): from another
    Region it is not listed, not found by id, and no key can be made in it; it was seen,
    connected, disconnected and used from every Region of the store."""
    _, store = make_store(svc, hsm, name="regional")
    svc.connect_custom_key_store(custom_key_store_id=store)
    eu = svc.for_region("eu-west-1")
    assert eu.describe_custom_key_stores()["CustomKeyStores"] == []
    for call in (
        lambda: eu.describe_custom_key_stores(custom_key_store_id=store),
        lambda: eu.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store),
        lambda: eu.disconnect_custom_key_store(custom_key_store_id=store),
        lambda: eu.update_custom_key_store(
            custom_key_store_id=store, new_custom_key_store_name="x"
        ),
        lambda: eu.delete_custom_key_store(custom_key_store_id=store),
    ):
        with pytest.raises(CustomKeyStoreNotFoundException):
            call()
    e = entry(svc, store)
    assert (e["ConnectionState"], e["CustomKeyStoreName"]) == ("CONNECTED", "regional")
    assert "Region" not in e
    kid = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]["KeyId"]
    blob = svc.encrypt(key_id=kid, plaintext=b"x", encryption_context=CTX)["CiphertextBlob"]
    assert svc.decrypt(ciphertext_blob=blob, encryption_context=CTX)["Plaintext"] == b"x"


def test_a_token_deleted_under_a_running_process_and_made_again_reconnects(
    svc: KeyService, tmp_path: Path
) -> None:
    """SoftHSM2 fails every token listing (CKR_GENERAL_ERROR) once a token's files are
    deleted under a process that has seen it: Connect said INTERNAL_ERROR ("retry"), and kept
    saying it after the token was made again, until the process restarted (review). The
    module now starts over: the store is FAILED with CLUSTER_NOT_FOUND while the token is
    gone, and connects once it is back."""
    from .. import softhsm

    label = "gone-" + secrets.token_hex(4)
    config = make_token(tmp_path / "softhsm", label=label, pin="12345678")
    _, store = make_store(svc, HsmToken(config), name="gone")
    with softhsm._lock:
        softhsm._forget(label)
    svc.connect_custom_key_store(custom_key_store_id=store)
    e = entry(svc, store)
    assert (e["ConnectionState"], e.get("ConnectionErrorCode")) == ("FAILED", "CLUSTER_NOT_FOUND")
    with softhsm._lock:
        done = softhsm._util(
            "--init-token", "--free", "--label", label, "--pin", "12345678", "--so-pin", "5678"
        )
        assert done.returncode == 0, done.stderr
        softhsm._made[label] = ("12345678", "5678")
    svc.disconnect_custom_key_store(custom_key_store_id=store)
    svc.connect_custom_key_store(custom_key_store_id=store)
    assert entry(svc, store)["ConnectionState"] == "CONNECTED"
