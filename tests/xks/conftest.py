"""`envelope xks serve` in a subprocess on loopback, with TLS (a certificate made here) and a
private SoftHSM2 token (`tests.softhsm`), once per test module.

The token holds: ``k1`` (made with ``envelope xks create-key``), ``k-disabled`` (configured as
disabled), ``k-outside`` (in the token, not in the key store's allow-list), ``health`` (the
deep health check's key), and two keys made with python-pkcs11 directly, as another tool would:
``aes128`` (AES-128) and ``encrypt-only`` (CKA_DECRYPT false).

Three key stores: ``/ks/a`` (two credentials, for rotation; ciphertext metadata ``v1``; an
allow-list of keys), ``/ks/b`` (another credential; 5 requests per second) and ``/ks/c``
(secondary authorization: principals of account 111122223333 and ec2.amazonaws.com only, and
only alice on ``aes128``). tests/keystores uses this proxy too (``/ks/a``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from envelope.cli.main import main
from envelope.xks._sigv4 import Signer
from envelope.xks.client import RequestMetadata, XksClient
from tests.softhsm import make_token

from .tls import Ca, make_ca, make_server_cert

REPO = Path(__file__).resolve().parents[2]
TOKEN_LABEL = "xks-tests"
PIN = "24680"
KEY_A1 = "AKIAI2SFODNN7EXAMPLE"
SECRET_A1 = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"
KEY_A2 = "XKSROTATEDKEY2345672ABCDE"
SECRET_A2 = "sARwWk4ciLnN0bZ7+J8wWesEGbZ/f0MZRMsjFn3e4cQ="
KEY_B = "BKSBSTOREKEY234567BBBB"
SECRET_B = "Rq8yV0p9kM3xN2bT7cW5zL1aH6jD4fG0sE8uI2oP5rY="
KEY_C = "CKSCSTOREKEY234567CCCC"
SECRET_C = "Zc7yV0p9kM3xN2bT7cW5zL1aH6jD4fG0sE8uI2oP5rY="
MD = RequestMetadata(
    "arn:aws:iam::111122223333:user/alice",
    "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "GenerateDataKey",
    "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
    kms_via_service="ebs",
)

_ODD_KEYS = """
import sys, pkcs11
from pkcs11 import Attribute, KeyType, MechanismFlag
module, label, pin = sys.argv[1:4]
token = pkcs11.lib(module).get_token(token_label=label)
with token.open(user_pin=pin, rw=True) as s:
    private = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True}
    s.generate_key(KeyType.AES, 128, label="aes128", store=True, template=private,
                   capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT)
    s.generate_key(KeyType.AES, 256, label="encrypt-only", store=True, template=private,
                   capabilities=MechanismFlag.ENCRYPT)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proxy:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    ca: Ca
    other_ca: Ca
    folder: Path
    #: (certificate, key) this proxy's clients present (mutual TLS), if it asks for one
    client_cert: tuple[Path, Path] | None = None

    @property
    def endpoint(self) -> str:
        return f"https://localhost:{self.port}"

    def client(
        self,
        uri_path: str = "/ks/a/kms/xks/v1",
        key: str = KEY_A1,
        secret: str = SECRET_A1,
        *,
        timeout: float = 10.0,
        ca: Path | None = None,
        client_cert: tuple[Path, Path] | bool | None = True,
    ) -> XksClient:
        """A client; `client_cert` True: the proxy's usual client certificate (if any)."""
        cert = self.client_cert if client_cert is True else client_cert or None
        return XksClient(
            self.endpoint,
            uri_path,
            key,
            secret,
            region="us-east-1",
            ca_file=str(ca or self.ca.cert_file),
            timeout=timeout,
            client_cert=str(cert[0]) if cert else None,
            client_key=str(cert[1]) if cert else None,
        )

    def raw(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        key: str = KEY_A1,
        secret: str = SECRET_A1,
        sign: bool = True,
        at: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One request as given (signed unless `sign` is false), and the decoded answer."""
        hdrs = {"Content-Type": "application/json"}
        if sign:
            hdrs |= Signer(key, secret, "us-east-1").sign(f"localhost:{self.port}", path, body, at)
        hdrs |= headers or {}
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_file))
        if self.client_cert is not None:
            ctx.load_cert_chain(*self.client_cert)
        conn = http.client.HTTPSConnection("localhost", self.port, context=ctx, timeout=30)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            try:
                doc: Any = json.loads(data)
            except ValueError:
                doc = data
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, doc
        finally:
            conn.close()

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def write_config(folder: Path, port: int, cert: Path, key: Path, **extra: str) -> Path:
    text = f"""
[server]
port = {port}
log_level = "info"
region = ["us-east-1", "us-west-2"]
{extra.get("server", "")}

[tls]
cert = "{cert}"
key = "{key}"
{extra.get("tls", "")}

[token]
module = "/usr/lib/softhsm/libsofthsm2.so"
label = "{TOKEN_LABEL}"
pin_env = "XKS_TEST_PIN"

[health]
key = "{extra.get("health_key", "health")}"

[[keystore]]
path_prefix = "/ks/a"
keys = ["k1", "k-disabled", "aes128", "encrypt-only"]
disabled_keys = ["k-disabled"]
ciphertext_metadata = "v1"
[[keystore.credential]]
access_key_id = "{KEY_A1}"
secret_access_key_env = "XKS_TEST_SECRET_A1"
[[keystore.credential]]
access_key_id = "{KEY_A2}"
secret_access_key = "{SECRET_A2}"

[[keystore]]
path_prefix = "/ks/b"
requests_per_second = 5
[[keystore.credential]]
access_key_id = "{KEY_B}"
secret_access_key = "{SECRET_B}"

[[keystore]]
path_prefix = "/ks/c"
keys = ["k1", "aes128"]
allowed_principals = ["arn:aws:iam::111122223333:*", "ec2.amazonaws.com"]
key_principals = {{ aes128 = ["arn:aws:iam::111122223333:user/alice"] }}
[[keystore.credential]]
access_key_id = "{KEY_C}"
secret_access_key = "{SECRET_C}"
"""
    path = folder / "xks-proxy.toml"
    path.write_text(text)
    return path


def make_keys(folder: Path) -> Path:
    """The token and its keys (before any proxy starts); the config file."""
    config = make_token(folder, label=TOKEN_LABEL, pin=PIN)
    os.environ["XKS_TEST_PIN"] = PIN
    os.environ["XKS_TEST_SECRET_A1"] = SECRET_A1
    placeholder = write_config(folder, 1, folder / "c.pem", folder / "c.key")
    for label in ("k1", "k-disabled", "k-outside", "health"):
        assert main(["xks", "create-key", label, "--config", str(placeholder), "--json"]) == 0
    done = subprocess.run(
        [sys.executable, "-c", _ODD_KEYS, config.module, TOKEN_LABEL, PIN],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return placeholder


def start_proxy(folder: Path, client_cert: tuple[Path, Path] | None = None, **extra: str) -> Proxy:
    ca = make_ca(folder, "ca")
    other = make_ca(folder, "other-ca")
    cert, key = make_server_cert(folder, ca, "proxy")
    port = free_port()
    config = write_config(folder, port, cert, key, **extra)
    log = folder / "proxy.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "envelope.cli.main", "xks", "serve", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    proxy = Proxy(port, proc, log, ca, other, folder, client_cert)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}:\n{log.read_text()}")
        try:
            status, _, _ = proxy.raw("GET", "/ping", sign=False)
            if status == 200:
                return proxy
        except OSError:
            pass
        if time.monotonic() > deadline:
            proxy.proc.kill()
            raise RuntimeError(f"proxy did not start:\n{log.read_text()}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def xks_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("xks")
    make_keys(folder)
    return folder


@pytest.fixture(scope="module")
def proxy(xks_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp("proxy")
    p = start_proxy(folder)
    try:
        yield p
    finally:
        p.stop()
