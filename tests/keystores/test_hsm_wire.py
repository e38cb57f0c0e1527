"""An HSM-backed key's lifecycle over the AWS wire protocol: boto3 against `envelope serve`.

The server is the real `envelope serve` (SigV4 on every request) on a store whose HSM cluster
is a private SoftHSM2 token; boto3 validates every request and response against botocore's
KMS model, so the shapes are AWS's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from ..server.conftest import Server, start_server
from ..softhsm import make_token
from .conftest import HsmToken

ANCHOR = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hsm: HsmToken) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("serve-hsm")
    srv = start_server(base / "home", base / "server.log")
    try:
        yield srv
    finally:
        srv.stop()


def code(e: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


def test_hsm_key_lifecycle_over_the_wire(server: Server, hsm: HsmToken, tmp_path: Path) -> None:
    local = server.service()
    try:
        cluster = local.register_hsm_cluster(module=hsm.module, token_label=hsm.label)[
            "CloudHsmClusterId"
        ]
    finally:
        local.close()
    kms: Any = server.client("admin")
    store = kms.create_custom_key_store(
        CustomKeyStoreName="wire-hsm",
        CloudHsmClusterId=cluster,
        KeyStorePassword=hsm.pin,
        TrustAnchorCertificate=ANCHOR,
    )["CustomKeyStoreId"]
    (entry,) = kms.describe_custom_key_stores(CustomKeyStoreId=store)["CustomKeyStores"]
    assert entry["ConnectionState"] == "DISCONNECTED" and entry["CloudHsmClusterId"] == cluster
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store)
    assert code(e) == "CustomKeyStoreInvalidStateException"
    kms.connect_custom_key_store(CustomKeyStoreId=store)
    (entry,) = kms.describe_custom_key_stores(CustomKeyStoreName="wire-hsm")["CustomKeyStores"]
    assert entry["ConnectionState"] == "CONNECTED"

    meta = kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store)["KeyMetadata"]
    assert meta["Origin"] == "AWS_CLOUDHSM" and meta["CustomKeyStoreId"] == store
    assert meta["CloudHsmClusterId"] == cluster
    kid = meta["KeyId"]
    assert hsm.token().key_attributes(f"kms-{kid}")["extractable"] is False

    ctx = {"table": "orders"}
    blob = kms.encrypt(KeyId=kid, Plaintext=b"row", EncryptionContext=ctx)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"row"
    dk = kms.generate_data_key(KeyId=kid, KeySpec="AES_256")
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"table": "other"})
    assert code(e) == "InvalidCiphertextException"

    kms.disconnect_custom_key_store(CustomKeyStoreId=store)
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Unavailable"
    for call in (
        lambda: kms.encrypt(KeyId=kid, Plaintext=b"x"),
        lambda: kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx),
        lambda: kms.generate_data_key(KeyId=kid, KeySpec="AES_256"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert code(e) == "KMSInvalidStateException"
    kms.connect_custom_key_store(CustomKeyStoreId=store)
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"row"

    with pytest.raises(botocore.exceptions.ClientError) as e:
        kms.delete_custom_key_store(CustomKeyStoreId=store)
    assert code(e) == "CustomKeyStoreInvalidStateException"
    kms.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "PendingDeletion"

    # a wrong PIN over the wire: FAILED with AWS's code
    bad = kms.create_custom_key_store(
        CustomKeyStoreName="wire-bad-pin",
        CloudHsmClusterId=_second_cluster(server, tmp_path),
        KeyStorePassword="not-the-pin",
        TrustAnchorCertificate=ANCHOR,
    )["CustomKeyStoreId"]
    kms.connect_custom_key_store(CustomKeyStoreId=bad)
    (entry,) = kms.describe_custom_key_stores(CustomKeyStoreId=bad)["CustomKeyStores"]
    assert entry["ConnectionState"] == "FAILED"
    assert entry["ConnectionErrorCode"] == "INVALID_CREDENTIALS"

    # audited, with the HSM calls
    local = server.service()
    try:
        records = local.audit_tail(60)
    finally:
        local.close()
    enc = [r for r in records if r["operation"] == "Encrypt" and r["outcome"] == "ok"]
    assert enc and enc[-1]["keystore_calls"][0]["CustomKeyStoreId"] == store
    # and measured: the token's calls in the server's /metrics, with sub-millisecond buckets
    status, _, text = server.http("GET", "/metrics")
    assert status == 200
    metrics = text.decode()
    assert 'envelope_hsm_call_seconds_bucket{le="0.0001",op="encrypt",outcome="ok"}' in metrics


def _second_cluster(server: Server, tmp_path: Path) -> str:
    """A cluster on a token of its own (one token is one cluster)."""
    spare = make_token(tmp_path, label="wire-" + secrets.token_hex(3), pin="12345678")
    local = server.service()
    try:
        out = local.register_hsm_cluster(module=spare.module, token_label=spare.token_label)
        return str(out["CloudHsmClusterId"])
    finally:
        local.close()
