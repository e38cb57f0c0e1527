"""`envelope serve` killed with SIGKILL in the middle of a storm of writes, then restarted on the
same store: every call the server acknowledged is still there and works, and the audit log
verifies.

The server runs in its own process group (``start_new_session``), so the kill takes the
supervisor and both worker processes at once, as a power cut or the OOM killer of a container
would; no process of the old server is left to finish anything.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

from .conftest import REGION, REPO, Server, _prepare, free_port, real_auth

pytestmark = pytest.mark.skipif(
    not real_auth(), reason="worker processes start the real `envelope serve` (needs SigV4)"
)

CLIENTS = 8
_SESSION = boto3.session.Session()


def launch(home: Path, log: Path, creds: Server | None = None, *extra: str) -> Server:
    """`envelope serve --workers 2` in a new session (its own process group) on a free port."""
    if creds is None:
        credentials, arns = _prepare(home)
    else:
        credentials, arns = creds.credentials, creds.arns
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO)
    # the workers' metrics files: under the test's directory, so a killed server leaves no
    # directory of its own behind in /tmp
    metrics = log.with_suffix(".metrics")
    metrics.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    cmd = [sys.executable, "-m", "envelope.cli.main", "serve", "--home", str(home)]
    cmd += ["--port", str(port), "--workers", "2", *extra]
    with log.open("wb") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(home, port, proc, log, credentials, arns)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if server.http("GET", "/healthz")[0] == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            kill_group(server)
            raise RuntimeError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.05)


def kill_group(server: Server) -> None:
    """SIGKILL to the server's whole process group; wait until none of it is left."""
    pgid = server.proc.pid
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.proc.wait(30)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {pgid} outlived SIGKILL")
        time.sleep(0.02)


def client(server: Server) -> Any:
    """An admin client without retries. Made in the main thread (a boto3 session is not
    thread-safe) from one session, whose loaded service model the clients share."""
    key, secret = server.credentials["admin"]
    return _SESSION.client(
        "kms",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=2,
        ),
    )


@dataclass
class Storm:
    """What the server acknowledged (a complete 200 answer), shared by the client threads."""

    keys: list[str] = field(default_factory=list)
    data_keys: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    errors_before_kill: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # how each client's last call ended
    lock: threading.Lock = field(default_factory=threading.Lock)
    killed_at: float | None = None

    def acknowledged(self) -> int:
        with self.lock:
            return len(self.request_ids)


def storm_client(kms: Any, storm: Storm, seed: int, stop: threading.Event) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with storm.lock:
                targets = list(storm.keys)
            if rng.random() < 0.25:
                resp = kms.create_key(Description=f"storm {seed}")
                with storm.lock:
                    storm.keys.append(resp["KeyMetadata"]["Arn"])
                    storm.request_ids.append(resp["ResponseMetadata"]["RequestId"])
            else:
                key = rng.choice(targets)
                resp = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
                assert resp["KeyId"] == key
                with storm.lock:
                    storm.data_keys.append((key, resp["Plaintext"], resp["CiphertextBlob"]))
                    storm.request_ids.append(resp["ResponseMetadata"]["RequestId"])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if storm.killed_at is not None:
                # the server is gone: what was not acknowledged does not count
                with storm.lock:
                    storm.interrupted.append(type(exc).__name__)
                return
            # set before the kill: an error while it is unset happened with the server up
            with storm.lock:
                storm.errors_before_kill.append(repr(exc))
            time.sleep(0.01)


def envelope_audit_verify(home: Path) -> dict[str, Any]:
    """`envelope audit verify --home HOME`: exit 0 and its report says ok."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVELOPE_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "envelope.cli.main", "audit", "verify", "--home", str(home)]
    r = subprocess.run(
        [*cmd, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    assert report["ok"] is True and report["store_problems"] == [], report
    return report


@pytest.mark.slow
def test_sigkill_during_a_storm_loses_nothing_acknowledged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = launch(home, tmp_path / "first.log")
    storm = Storm()
    try:
        admin = client(first)
        for _ in range(4):
            resp = admin.create_key(Description="before the storm")
            storm.keys.append(resp["KeyMetadata"]["Arn"])
            storm.request_ids.append(resp["ResponseMetadata"]["RequestId"])
        clients = [client(first) for _ in range(CLIENTS)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=storm_client, args=(kms, storm, i, stop), daemon=True)
            for i, kms in enumerate(clients)
        ]
        for t in threads:
            t.start()
        # kill in full flight: after enough acknowledged calls that all 8 are busy
        deadline = time.monotonic() + 30
        while storm.acknowledged() < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        in_flight_before = storm.acknowledged()
        storm.killed_at = time.monotonic()
        kill_group(first)
        stop.set()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
    finally:
        if first.proc.poll() is None:
            kill_group(first)
    assert storm.errors_before_kill == []
    # every client's last call failed with the kill; some were on the wire when it came
    assert len(storm.interrupted) == CLIENTS, storm.interrupted
    assert "ConnectionClosedError" in storm.interrupted, storm.interrupted
    assert in_flight_before >= 200, "the storm never got going"
    created = len(storm.keys) - 4
    assert created > 0 and len(storm.data_keys) > 0, (created, len(storm.data_keys))

    # the store as the kill left it: the audit chain, seals and key rows check
    report = envelope_audit_verify(home)
    assert report["records"] >= len(storm.request_ids)

    second = launch(home, tmp_path / "second.log", first)
    try:
        checkers = [client(second) for _ in range(CLIENTS)]

        def describe(i: int) -> None:
            for arn in storm.keys[i::CLIENTS]:
                meta = checkers[i].describe_key(KeyId=arn)["KeyMetadata"]
                assert (meta["Arn"], meta["KeyState"]) == (arn, "Enabled")

        def decrypt(i: int) -> None:
            for arn, plain, blob in storm.data_keys[i::CLIENTS]:
                resp = checkers[i].decrypt(CiphertextBlob=blob)
                assert (resp["KeyId"], resp["Plaintext"]) == (arn, plain)

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(describe, range(CLIENTS)))
            list(pool.map(decrypt, range(CLIENTS)))

        # every acknowledged call has its audit record (committed before the answer)
        svc = second.service()
        try:
            audited = {rec.get("request_id") for rec in svc.audit_tail(1_000_000)}
        finally:
            svc.close()
        missing = [rid for rid in storm.request_ids if rid not in audited]
        assert missing == [], f"{len(missing)} acknowledged calls have no audit record"
        assert second.stop() == 0
    finally:
        if second.proc.poll() is None:
            kill_group(second)
    assert envelope_audit_verify(home)["records"] > report["records"]
