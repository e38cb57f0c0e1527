"""`envelope serve` in a subprocess on loopback with a fresh store, and boto3 clients for it.

One server per test module (start-up is about a second). The principals are created in the store
before the server starts: ``admin`` (an IAM user allowed ``kms:*``: with the default key policy,
which delegates to IAM, it manages every key it creates) and ``alice`` (no identity policy: only
what key policies and grants give her).

Credentials: each user gets a real access key (`create_access_key`) and the server is the real
`envelope serve`, checking SigV4 on every request.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
import pytest

from envelope.service import KeyService, open_service

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ADMIN_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}],
    }
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    credentials: dict[str, tuple[str, str]] = field(default_factory=dict)
    arns: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, user: str = "admin", *, validate: bool = True) -> Any:
        key, secret = self.credentials[user]
        return boto3.client(
            "kms",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1}, parameter_validation=validate
            ),
        )

    def raw(
        self,
        target: str | None,
        body: bytes,
        *,
        user: str = "admin",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """A signed POST / with any target and body, for what boto3 will not send."""
        return self.http("POST", "/", body, self.signed_headers(target, body, user, headers))

    def signed_headers(
        self,
        target: str | None,
        body: bytes,
        user: str = "admin",
        headers: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The headers of a POST / of `body` to `target`, SigV4-signed as `user`."""
        key, secret = self.credentials[user]
        hdrs = {"Content-Type": "application/x-amz-json-1.1", **(headers or {})}
        if target is not None:
            hdrs["X-Amz-Target"] = target
        req = botocore.awsrequest.AWSRequest("POST", self.endpoint + "/", data=body, headers=hdrs)
        creds = botocore.credentials.Credentials(key, secret)
        botocore.auth.SigV4Auth(creds, "kms", REGION).add_auth(req)
        return dict(req.headers.items())

    def http(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def service(self) -> KeyService:
        """The same store opened in this process (to read the audit log)."""
        return open_service(self.home)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out


def _prepare(home: Path) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    svc = open_service(home)
    try:
        arns = {name: svc.create_user(user_name=name)["User"]["Arn"] for name in ("admin", "alice")}
        svc.put_principal_policy(
            arn=arns["admin"], policy_name="kms-admin", policy_document=ADMIN_POLICY
        )
        creds: dict[str, tuple[str, str]] = {}
        for name, arn in arns.items():
            key = svc.create_access_key(user_arn=arn)["AccessKey"]
            creds[name] = (key["AccessKeyId"], key["SecretAccessKey"])
        return creds, arns
    finally:
        svc.close()


def start_server(home: Path, log: Path, *extra: str) -> Server:
    """Prepare the store under `home`, start the server and wait until /healthz answers."""
    creds, arns = _prepare(home)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVELOPE_")}
    env["ENVELOPE_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    launcher = ["envelope.cli.main"]
    cmd = [
        sys.executable,
        "-m",
        *launcher,
        "serve",
        "--home",
        str(home),
        "--port",
        str(port),
        *extra,
    ]
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    server = Server(home, port, proc, log, creds, arns)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            status, _, _ = server.http("GET", "/healthz")
            if status == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop(signal.SIGKILL)
            raise RuntimeError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("serve")
    srv = start_server(base / "home", base / "server.log")
    try:
        yield srv
    finally:
        srv.stop()
