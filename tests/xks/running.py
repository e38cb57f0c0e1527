"""``envelope xks serve`` as a real process, for the end-to-end tests and `bench/keystores.py`.

One runner: a private SoftHSM2 token with one proxy key, a CA and a server certificate made
here, TLS on a free loopback port, one keystore with one credential (its secret passed through
the environment, never the config file), started, waited for and stopped with SIGTERM. `connect`
makes the KMS side: an external key store pointing at it, connected, and a key in it.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.softhsm import make_token
from tests.xks.tls import make_ca, make_server_cert

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out.append(int(k))
        out.extend(_children(int(k)))
    return out


class XksProxy:
    """``envelope xks serve`` in a subprocess on loopback TLS, in front of its own token, with
    the key `key_label` made in it (``envelope xks create-key``) before it starts.

    `only_listed_keys`: the keystore serves `key_label` alone (``keys = [...]``), else every
    key of the token. The proxy's output goes to `log` (its access log names each request)."""

    def __init__(
        self,
        folder: Path,
        *,
        key_label: str,
        prefix: str,
        access_key_id: str,
        workers: int = 1,
        log_level: str = "warning",
        only_listed_keys: bool = False,
    ) -> None:
        self.folder = folder
        self.key_label, self.prefix, self.access_key_id = key_label, prefix, access_key_id
        folder.mkdir(parents=True, exist_ok=True)
        token_label = "xks-" + secrets.token_hex(4)
        pin = "97531"
        module = make_token(folder, label=token_label, pin=pin).module
        self.ca = make_ca(folder, "xks-ca")
        cert, key = make_server_cert(folder, self.ca, "xks-proxy")
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()  # 44 of [A-Za-z0-9+/=]
        self.port = _free_port()
        self.config = folder / "xks-proxy.toml"
        keys = f'keys = ["{key_label}"]\n' if only_listed_keys else ""
        self.config.write_text(
            f"""
[server]
port = {self.port}
workers = {workers}
log_level = "{log_level}"
graceful_shutdown_seconds = 1
region = "us-east-1"

[tls]
cert = "{cert}"
key = "{key}"

[token]
module = "{module}"
label = "{token_label}"
pin_env = "RUN_XKS_PIN"

[[keystore]]
path_prefix = "{prefix}"
{keys}[[keystore.credential]]
access_key_id = "{access_key_id}"
secret_access_key_env = "RUN_XKS_SECRET"
"""
        )
        self.env = dict(
            os.environ, RUN_XKS_PIN=pin, RUN_XKS_SECRET=self.secret, PYTHONPATH=str(REPO)
        )
        cli = [sys.executable, "-m", "envelope.cli.main", "xks"]
        made = subprocess.run(
            [*cli, "create-key", key_label, "--config", str(self.config), "--json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        if made.returncode != 0:
            raise RuntimeError(f"envelope xks create-key failed: {made.stderr.strip()}")
        self.log = folder / "proxy.log"
        with self.log.open("wb") as f:
            self.proc = subprocess.Popen(
                [*cli, "serve", "--config", str(self.config)],
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        self._wait()

    @property
    def endpoint(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def uri_path(self) -> str:
        return f"{self.prefix}/kms/xks/v1"

    def _wait(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_file))
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xks serve exited {self.proc.returncode}: {self._tail()}")
            try:
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                    ctx.wrap_socket(raw, server_hostname="localhost"),
                ):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"xks serve did not start: {self._tail()}")
            time.sleep(0.05)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def connect(self, svc: Any, name: str) -> tuple[str, dict[str, Any]]:
        """An external key store in `svc` (a `KeyService`) through this proxy, connected, and
        a key in it backed by `key_label`: (custom key store id, the key's metadata). The
        caller's process must trust the proxy's CA (``$ENVELOPE_XKS_CA_FILE``)."""
        store = svc.create_custom_key_store(
            custom_key_store_name=name,
            custom_key_store_type="EXTERNAL_KEY_STORE",
            xks_proxy_uri_endpoint=self.endpoint,
            xks_proxy_uri_path=self.uri_path,
            xks_proxy_connectivity="PUBLIC_ENDPOINT",
            xks_proxy_authentication_credential={
                "AccessKeyId": self.access_key_id,
                "RawSecretAccessKey": self.secret,
            },
        )["CustomKeyStoreId"]
        svc.connect_custom_key_store(custom_key_store_id=store)
        meta = svc.create_key(
            origin="EXTERNAL_KEY_STORE", custom_key_store_id=store, xks_key_id=self.key_label
        )["KeyMetadata"]
        return str(store), dict(meta)

    def cpu_seconds(self) -> float:
        """User+system CPU of the proxy and its worker processes so far (from /proc)."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
