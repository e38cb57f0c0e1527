"""Graceful shutdown: SIGTERM stops new connections, finishes the calls in flight, exits 0."""

from __future__ import annotations

import base64
import json
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
