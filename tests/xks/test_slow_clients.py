"""`envelope xks serve` and clients that hold sockets: a body that never finishes is cut off
(408) and one left half-sent is not served, with the same reader as `envelope serve`
(`envelope._serving.read_body`); the header deadline comes from the proxy's [server] table."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Proxy, start_proxy


@pytest.fixture(scope="module")
def quick(xks_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    folder = tmp_path_factory.mktemp("slow")
    p = start_proxy(folder, server="header_timeout_seconds = 1\nbody_timeout_seconds = 1")
    try:
        yield p
    finally:
        p.stop()


def _send(proxy: Proxy, data: bytes, *, wait: bool = True) -> bytes:
    context = ssl.create_default_context(cafile=str(proxy.ca.cert_file))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(data)
            if not wait:
                return b""
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, TimeoutError, ssl.SSLError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)


HEAD = (
    b"POST /ks/a/kms/xks/v1/keys/k1/encrypt HTTP/1.1\r\nHost: localhost\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
)


def test_a_body_that_never_finishes_is_cut_off(quick: Proxy) -> None:
    started = time.monotonic()
    answer = _send(quick, HEAD + b"{")
    assert b" 408 " in answer.split(b"\r\n", 1)[0], answer
    assert b"did not arrive within 1 seconds" in answer
    assert time.monotonic() - started < 8


def test_headers_that_trickle_are_cut_off(quick: Proxy) -> None:
    answer = _send(quick, b"POST /ks/a/kms/xks/v1/keys/k1/encrypt HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_a_half_sent_request_is_not_served(quick: Proxy) -> None:
    """It was served as a request with the part of the body that came (and answered, to no
    one, and logged)."""
    time.sleep(0.3)

    def served() -> int:
        return quick.log.read_bytes().count(b'"keyId":"k1"')

    before = served()
    _send(quick, HEAD + b'{"requestMetadata": {', wait=False)
    time.sleep(1.0)
    assert served() == before
    assert quick.raw("GET", "/ping", sign=False)[0] == 200
