"""The issue's "the encryptor and a lake job run end to end with a key in each kind of store":
``envelope encrypt``/``decrypt`` of a file and ``envelope lake encrypt``/``lake decrypt`` of a
small prefix, as a user runs them (real processes), with the key named by an alias of the
embedded KMS, for a key in an HSM store (a private SoftHSM2 token) and a key in an external
store (``envelope xks serve`` on loopback TLS, in front of another SoftHSM2 token).

Real parts only: the SQLite store in ``$ENVELOPE_HOME``, the tokens, the proxy process. The
stores and keys are made with the library on the same home (the keystores CLI has its own
tests); every byte must come back, the audit log must show the data keys were made through
the custom key store, and once the store is disconnected the same file no longer decrypts
(the data key really depends on the HSM or the external key).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from envelope.service import open_service
from tests.xks.running import XksProxy

from .conftest import HsmToken

REPO = Path(__file__).resolve().parents[2]
ANCHOR = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
XKS_ACCESS_KEY = "ENDTOENDXKSACCESSKEY"
XKS_PREFIX = "/e2e"
XKS_KEY = "e2e-external-key"
#: Variables of the caller's environment that would change what the CLI does.
_DROP = ("ENVELOPE_", "AWS_")


@pytest.fixture(scope="module")
def xks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XksProxy]:
    """``envelope xks serve`` with TLS on loopback, its key ``e2e-external-key`` in a token."""
    proxy = XksProxy(
        tmp_path_factory.mktemp("xks-e2e"),
        key_label=XKS_KEY,
        prefix=XKS_PREFIX,
        access_key_id=XKS_ACCESS_KEY,
        log_level="info",  # the access log names each request the KMS made
        only_listed_keys=True,
    )
    try:
        yield proxy
    finally:
        proxy.stop()


def _env(home: Path) -> dict[str, str]:
    """The CLI's environment: this KMS home, no config file, nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP)}
    return env | {"ENVELOPE_HOME": str(home), "ENVELOPE_CONFIG": "", "PYTHONPATH": str(REPO)}


def envelope(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args],
        capture_output=True,
        env=env,
        timeout=180,
        check=False,
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def round_trips(tmp_path: Path, env: dict[str, str], key: str, arn: str) -> Path:
    """A file and a small prefix through the encryptor and a lake job under `key`, back
    byte for byte. Returns the encrypted file (for the caller's later checks)."""
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(1_500_000))
    enc, back = tmp_path / "in.bin.env", tmp_path / "back.bin"
    r = envelope(env, "encrypt", str(src), str(enc), "--key", key, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["wrapped_keys"][0]["key_id"] == arn
    assert src.read_bytes()[:4096] not in enc.read_bytes()
    r = envelope(env, "decrypt", str(enc), str(back))  # the header names the key
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()

    lake = tmp_path / "raw"
    files = {
        "day=1/a.csv": b"id,v\n" + b"1,2\n" * 5000,
        "day=1/b.bin": os.urandom(300_000),
        "day=2/c.bin": os.urandom(70_000),
        "day=2/empty": b"",
    }
    for rel, data in files.items():
        (lake / rel).parent.mkdir(parents=True, exist_ok=True)
        (lake / rel).write_bytes(data)
    sealed, opened = tmp_path / "sealed", tmp_path / "opened"
    r = envelope(env, "lake", "encrypt", str(lake), str(sealed), "--key", key, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["ok"] is True and summary["done"] == len(files)
    assert all(
        data[:64] not in (sealed / rel).read_bytes()
        for rel, data in files.items()
        if len(data) >= 64
    )
    r = envelope(env, "lake", "decrypt", str(sealed), str(opened), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["done"] == len(files)
    assert _tree(opened) == files
    return enc


def through_store(home: Path, arn: str, store_id: str) -> list[dict[str, object]]:
    """The audit records of data keys made under `arn`, each with its store's call."""
    svc = open_service(home)
    try:
        records = svc.audit_tail(200)
        assert svc.verify_audit_log().ok
    finally:
        svc.close()
    made = [
        r
        for r in records
        if r["operation"] == "GenerateDataKey" and r["outcome"] == "ok" and r["key_id"] == arn
    ]
    for r in made:
        (call,) = r["keystore_calls"]  # type: ignore[misc]
        assert call["CustomKeyStoreId"] == store_id and call["Outcome"] == "ok"
    return made


def disconnected_refuses(home: Path, env: dict[str, str], store_id: str, enc: Path) -> None:
    svc = open_service(home)
    try:
        svc.disconnect_custom_key_store(custom_key_store_id=store_id)
    finally:
        svc.close()
    out = enc.parent / "refused.bin"
    r = envelope(env, "decrypt", str(enc), str(out))
    assert r.returncode == 3 and b"KMSInvalidStateException" in r.stderr, r.stderr
    assert not out.exists()


def test_a_key_in_an_hsm_store(tmp_path: Path, hsm: HsmToken) -> None:
    home = tmp_path / "home"
    svc = open_service(home)
    try:
        cluster = svc.register_hsm_cluster(module=hsm.module, token_label=hsm.label)
        store = svc.create_custom_key_store(
            custom_key_store_name="e2e-hsm",
            cloud_hsm_cluster_id=cluster["CloudHsmClusterId"],
            key_store_password=hsm.pin,
            trust_anchor_certificate=ANCHOR,
        )["CustomKeyStoreId"]
        svc.connect_custom_key_store(custom_key_store_id=store)
        meta = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]
        svc.create_alias(alias_name="alias/in-hsm", target_key_id=meta["KeyId"])
    finally:
        svc.close()
    assert f"kms-{meta['KeyId']}" in hsm.token().list_keys()
    env = _env(home)
    enc = round_trips(tmp_path, env, "alias/in-hsm", meta["Arn"])
    assert len(through_store(home, meta["Arn"], store)) >= 2  # the file and the lake job
    disconnected_refuses(home, env, store, enc)


def test_a_key_in_an_external_store(
    tmp_path: Path, xks: XksProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    # every process of the KMS trusts the proxy's CA; a loaded CI machine gets 5 s, not 250 ms
    trust = {"ENVELOPE_XKS_CA_FILE": str(xks.ca.cert_file), "ENVELOPE_XKS_TIMEOUT": "5"}
    for name, value in trust.items():
        monkeypatch.setenv(name, value)
    env = _env(home) | trust
    svc = open_service(home)
    try:
        store, meta = xks.connect(svc, "e2e-xks")
        svc.create_alias(alias_name="alias/external", target_key_id=meta["KeyId"])
    finally:
        svc.close()
    enc = round_trips(tmp_path, env, "alias/external", meta["Arn"])
    made = through_store(home, meta["Arn"], store)
    assert len(made) >= 2
    # the proxy served them: its access log names the KMS requests
    log = xks.log.read_text()
    assert all(str(r["request_id"]) in log for r in made)
    disconnected_refuses(home, env, store, enc)
