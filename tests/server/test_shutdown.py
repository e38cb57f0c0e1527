"""Graceful shutdown: SIGTERM stops new connections, finishes the calls in flight, exits 0."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time
from pathlib import Path

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest

from envelope.service import open_service

from .conftest import REGION, start_server


def _signed(port: int, key: str, secret: str, target: str, body: bytes) -> bytes:
    url = f"http://127.0.0.1:{port}/"
    req = botocore.awsrequest.AWSRequest(
        "POST",
        url,
        data=body,
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
    )
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(key, secret), "kms", REGION).add_auth(
        req
    )
    head = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in req.headers.items() if k.lower() != "host"]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


@pytest.mark.slow
def test_sigterm_finishes_the_call_in_flight(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "home", tmp_path / "server.log")
    try:
        key_id = srv.client().create_key()["KeyMetadata"]["KeyId"]
        body = json.dumps({"KeyId": key_id, "KeySpec": "AES_256"}).encode()
        key, secret = srv.credentials["admin"]
        head = _signed(srv.port, key, secret, "TrentService.GenerateDataKey", body)
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        # the headers and half the body: the call is in flight in the server
        sock.sendall(head + body[:10])
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # the listening socket closes: new connections are refused
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        assert srv.proc.poll() is None, "exited with a call in flight"
        sock.sendall(body[10:])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
        sock.close()
        status_line, _, rest = response.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 200 OK"
        answer = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert srv.proc.wait(30) == 0
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)
    # the acknowledged data key is durable and the store was closed cleanly
    svc = open_service(srv.home)
    try:
        plain = svc.decrypt(ciphertext_blob=base64.b64decode(answer["CiphertextBlob"]))
        assert plain["Plaintext"] == base64.b64decode(answer["Plaintext"])
        assert svc.verify_audit_log().ok
    finally:
        svc.close()


def _workers(pid: int) -> list[int]:
    """The uvicorn worker processes of server `pid` (spawned: not its resource tracker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    found = []
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    found.append(child)
        except FileNotFoundError:
            pass
    return found


@pytest.mark.slow
def test_a_worker_that_cannot_reopen_the_store_stops_the_server_with_an_error(
    tmp_path: Path,
) -> None:
    """A worker that died (an OOM kill) is restarted; when its store has gone meanwhile, the
    restarted worker cannot start, and uvicorn restarted it for ever (453 times in 25 s, a
    traceback each) while the parent stayed up and later exited 0, so a service manager never
    restarted it (review). Now the server stops, exits non-zero, and says why once."""
    import subprocess

    srv = start_server(tmp_path / "home", tmp_path / "server.log", "--workers", "2")
    try:
        deadline = time.monotonic() + 30
        while len(_workers(srv.proc.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        (srv.home / "kms.sqlite3").rename(srv.home / "moved.sqlite3")
        os.kill(_workers(srv.proc.pid)[-1], signal.SIGKILL)
        try:
            code = srv.proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the server kept restarting a worker that cannot start") from None
    finally:
        srv.stop(signal.SIGKILL)
    log = srv.log.read_text()
    assert code != 0, log
    assert "a worker cannot start" in log and "no embedded KMS store" in log
    assert log.count("Traceback") == 0 and log.count("a worker cannot start") <= 2, log


def test_a_store_deleted_under_the_server_takes_no_more_writes(tmp_path: Path) -> None:
    """SQLite writes on into a file deleted (or replaced) under it: the server acknowledged
    CreateKey calls that were gone once it restarted on the path, its health check said ok,
    and a store failure's detail went to the client word for word (review). Now the write is
    refused (KMSInternalException, the detail in the server's log), /healthz answers 503."""
    import botocore.exceptions

    from envelope.server.errors import INTERNAL_MESSAGE

    srv = start_server(tmp_path / "home", tmp_path / "server.log")
    try:
        kms = srv.client()
        kms.create_key()
        for name in ("kms.sqlite3", "kms.sqlite3-wal", "kms.sqlite3-shm"):
            (srv.home / name).unlink(missing_ok=True)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            kms.create_key()
        error = info.value.response["Error"]
        assert (error["Code"], error["Message"]) == ("KMSInternalException", INTERNAL_MESSAGE)
        status, _, body = srv.http("GET", "/healthz")
        assert status == 503 and b"store unavailable" in body
    finally:
        assert srv.stop() == 0
    log = srv.log.read_text()
    assert "was deleted or replaced" in log and "Traceback" not in log, log


def test_an_embedded_service_refuses_to_write_a_replaced_store(tmp_path: Path) -> None:
    """The same through the Python API: a store file replaced by a copy (a restore over a
    running process) is not written through the old file; closing does not fail."""
    import shutil

    from envelope.service.errors import StoreError

    home = tmp_path / "home"
    svc = open_service(home)
    svc.create_key()
    shutil.copy(home / "kms.sqlite3", tmp_path / "copy.sqlite3")
    os.replace(tmp_path / "copy.sqlite3", home / "kms.sqlite3")
    with pytest.raises(StoreError, match="deleted or replaced"):
        svc.create_key()
    svc.close()
