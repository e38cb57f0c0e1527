"""`XksClient` against proxies that fail: nothing listening, a proxy that never answers, a
certificate from an untrusted CA or for another name, and answers the specification does not
allow. The broken proxies are real TLS servers on loopback (a small `http.server`), so the
client's real urllib3 pool, TLS stack and timeouts are what is tested."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from envelope.errors import ConfigurationError
from envelope.xks.client import RequestMetadata, XksCiphertext, XksClient
from envelope.xks.errors import (
    XksInvalidResponse,
    XksProxyError,
    XksTimeout,
    XksTlsError,
    XksUnreachable,
)

from .tls import Ca, make_ca, make_server_cert

KEY_ID = "AKIAI2SFODNN7EXAMPLE"
SECRET = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"
MD = RequestMetadata("arn:aws:iam::111122223333:user/alice", "arn:aws:kms:k", "Encrypt", "r-1")
PREFIX = "/ks"


class Pki:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca: Ca = make_ca(folder, "trusted-ca")
        self.other_ca: Ca = make_ca(folder, "untrusted-ca")
        self.cert = make_server_cert(folder, self.ca, "proxy")
        self.untrusted_cert = make_server_cert(folder, self.other_ca, "rogue")
        self.wrong_name_cert = make_server_cert(
            folder, self.ca, "elsewhere", hosts=("elsewhere.example",)
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Canned(ThreadingHTTPServer):
    """A TLS proxy answering from `answers` (path -> (status, body)); counts connections."""

    daemon_threads = True

    def __init__(self, cert: tuple[Path, Path]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*cert)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.silent = False
        self.close_after_answer = False

    @property
    def endpoint(self) -> str:
        return f"https://localhost:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Canned

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()
        self.server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append((self.path, dict(self.headers.items()), body))
        if self.server.silent:
            time.sleep(5)
            return
        status, answer = self.server.answers.get(self.path, (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.wfile.flush()
        if self.server.close_after_answer:
            self.close_connection = True


@pytest.fixture
def canned(pki: Pki) -> Iterator[Canned]:
    server = Canned(pki.cert)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def client_for(endpoint: str, pki: Pki, timeout: float = 5.0, ca: Path | None = None) -> XksClient:
    return XksClient(
        endpoint,
        PREFIX + "/kms/xks/v1",
        KEY_ID,
        SECRET,
        ca_file=str(ca or pki.ca.cert_file),
        timeout=timeout,
    )


def encrypt_answer(plaintext_len: int, aad: bytes, *, cdiv_ok: bool = True) -> dict[str, str]:
    iv, ct, tag = b"i" * 12, b"c" * plaintext_len, b"t" * 16
    value = hashlib.sha256(aad + iv + ct + tag).digest()
    if not cdiv_ok:
        value = bytes([value[0] ^ 1]) + value[1:]
    return {
        "ciphertext": base64.b64encode(ct).decode(),
        "initializationVector": base64.b64encode(iv).decode(),
        "authenticationTag": base64.b64encode(tag).decode(),
        "ciphertextDataIntegrityValue": base64.b64encode(value).decode(),
    }


ENCRYPT_PATH = PREFIX + "/kms/xks/v1/keys/k1/encrypt"


def test_nothing_listening_is_unreachable(pki: Pki) -> None:
    client = client_for(f"https://localhost:{free_port()}", pki, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(XksUnreachable):
        client.encrypt("k1", b"x" * 32, b"", MD)
    assert time.monotonic() - started < 1.5


def test_a_proxy_that_never_answers_times_out(pki: Pki, canned: Canned) -> None:
    canned.silent = True
    client = client_for(canned.endpoint, pki, timeout=0.25)
    started = time.monotonic()
    with pytest.raises(XksTimeout) as e:
        client.encrypt("k1", b"x" * 32, b"", MD)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0, elapsed
    assert "0.25" in str(e.value)


def test_a_handshake_that_never_completes_times_out(pki: Pki) -> None:
    # the kernel accepts the TCP connection (backlog) but no one ever speaks TLS
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = client_for(f"https://localhost:{listener.getsockname()[1]}", pki, timeout=0.25)
        started = time.monotonic()
        with pytest.raises(XksTimeout):
            client.health(MD)
        assert time.monotonic() - started < 1.0


def test_an_untrusted_ca_is_a_tls_error(pki: Pki) -> None:
    server = Canned(pki.untrusted_cert)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        with pytest.raises(XksTlsError) as e:
            client_for(server.endpoint, pki).health(MD)
        assert "certificate" in str(e.value).lower()
        assert server.requests == []  # nothing was sent
    finally:
        server.shutdown()
        server.server_close()


def test_a_certificate_for_another_name_is_a_tls_error(pki: Pki) -> None:
    server = Canned(pki.wrong_name_cert)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        with pytest.raises(XksTlsError):
            client_for(server.endpoint, pki).health(MD)
    finally:
        server.shutdown()
        server.server_close()


def test_requests_are_signed_json_posts_on_one_kept_alive_connection(
    pki: Pki, canned: Canned
) -> None:
    canned.answers[ENCRYPT_PATH] = (200, json.dumps(encrypt_answer(5, b"ctx")).encode())
    client = client_for(canned.endpoint, pki)
    for _ in range(20):
        out = client.encrypt("k1", b"hello", b"ctx", MD)
    assert out == XksCiphertext(b"c" * 5, b"i" * 12, b"t" * 16, None)
    assert canned.connections == 1
    path, headers, body = canned.requests[-1]
    assert path == ENCRYPT_PATH
    assert headers["Content-Type"] == "application/json"
    assert headers["Host"] == f"localhost:{canned.server_address[1]}"
    assert "Credential=AKIAI2SFODNN7EXAMPLE/" in headers["Authorization"]
    assert "/us-east-1/kms-xks-proxy/aws4_request" in headers["Authorization"]
    doc = json.loads(body)
    assert doc["plaintext"] == "aGVsbG8="
    assert doc["additionalAuthenticatedData"] == "Y3R4"
    assert doc["encryptionAlgorithm"] == "AES_GCM"
    assert doc["ciphertextDataIntegrityValueAlgorithm"] == "SHA_256"
    assert doc["requestMetadata"]["kmsRequestId"] == "r-1"
    assert SECRET not in repr(client) and SECRET not in json.dumps(headers)


def test_a_closed_keep_alive_connection_is_replaced(pki: Pki, canned: Canned) -> None:
    canned.answers[ENCRYPT_PATH] = (200, json.dumps(encrypt_answer(5, b"")).encode())
    canned.close_after_answer = True
    client = client_for(canned.endpoint, pki)
    for _ in range(3):
        client.encrypt("k1", b"hello", b"", MD)
    assert canned.connections == 3


@pytest.mark.parametrize(
    ("status", "answer", "expected"),
    [
        (200, b"not json", "not a JSON object"),
        (200, b"[1, 2]", "not a JSON object"),
        (200, json.dumps({"ciphertext": "Y2NjY2M="}).encode(), "initializationVector"),
        (200, json.dumps(encrypt_answer(4, b"")).encode(), "not as long as the plaintext"),
        (200, json.dumps(encrypt_answer(5, b"", cdiv_ok=False)).encode(), "does not match"),
        (
            200,
            json.dumps(encrypt_answer(5, b"") | {"initializationVector": "aWlp"}).encode(),
            "12 or 16 bytes",
        ),
        (
            200,
            json.dumps(encrypt_answer(5, b"") | {"authenticationTag": "dHR0"}).encode(),
            "16 bytes",
        ),
        (
            200,
            json.dumps(encrypt_answer(5, b"") | {"ciphertext": "Y2Nj!2M="}).encode(),
            "Base64",
        ),
        (500, b"<html>oops</html>", "without a known errorName"),
        (200, b"[" * 5000 + b"]" * 5000, "not a JSON object"),  # nested past the parser's stack
        (500, b'{"a":' * 5000 + b"1" + b"}" * 5000, "without a known errorName"),
        (400, json.dumps({"errorName": "NoSuchThing"}).encode(), "without a known errorName"),
    ],
)
def test_answers_outside_the_specification_are_invalid(
    pki: Pki, canned: Canned, status: int, answer: bytes, expected: str
) -> None:
    canned.answers[ENCRYPT_PATH] = (status, answer)
    with pytest.raises(XksInvalidResponse) as e:
        client_for(canned.endpoint, pki).encrypt("k1", b"hello", b"", MD)
    assert expected in str(e.value)


def test_ciphertext_metadata_over_20_bytes_is_invalid(pki: Pki, canned: Canned) -> None:
    doc = encrypt_answer(5, b"") | {"ciphertextMetadata": base64.b64encode(b"m" * 21).decode()}
    canned.answers[ENCRYPT_PATH] = (200, json.dumps(doc).encode())
    with pytest.raises(XksInvalidResponse, match="20 bytes"):
        client_for(canned.endpoint, pki).encrypt("k1", b"hello", b"", MD, integrity=False)


def test_an_error_answer_is_a_typed_proxy_error(pki: Pki, canned: Canned) -> None:
    canned.answers[ENCRYPT_PATH] = (
        404,
        json.dumps({"errorName": "KeyNotFoundException", "errorMessage": "no k1 \u00e9"}).encode(),
    )
    with pytest.raises(XksProxyError) as e:
        client_for(canned.endpoint, pki).encrypt("k1", b"hello", b"", MD)
    assert (e.value.error_name, e.value.status, e.value.message) == (
        "KeyNotFoundException",
        404,
        "no k1 ?",
    )


@pytest.mark.parametrize(
    ("answer", "valid"),
    [
        (
            {
                "xksProxyFleetSize": 1,
                "xksProxyVendor": "v",
                "xksProxyModel": "m",
                "ekmVendor": "e",
                "ekmFleetDetails": [{"id": "a", "model": "b", "healthStatus": "DEGRADED"}],
            },
            True,
        ),
        ({"xksProxyFleetSize": 0}, False),
        (
            {
                "xksProxyFleetSize": 1,
                "xksProxyVendor": "v",
                "xksProxyModel": "m",
                "ekmVendor": "e",
                "ekmFleetDetails": [],
            },
            False,
        ),
        (
            {
                "xksProxyFleetSize": 1,
                "xksProxyVendor": "v",
                "xksProxyModel": "m",
                "ekmVendor": "e",
                "ekmFleetDetails": [{"id": "a", "model": "b", "healthStatus": "FINE"}],
            },
            False,
        ),
    ],
)
def test_health_answers_are_checked(
    pki: Pki, canned: Canned, answer: dict[str, Any], valid: bool
) -> None:
    canned.answers[PREFIX + "/kms/xks/v1/health"] = (200, json.dumps(answer).encode())
    client = client_for(canned.endpoint, pki)
    if valid:
        assert client.health(MD) == answer
        sent = json.loads(canned.requests[-1][2])
        assert sent == {"requestMetadata": {"kmsRequestId": "r-1", "kmsOperation": "Encrypt"}}
    else:
        with pytest.raises(XksInvalidResponse):
            client.health(MD)


def test_bad_arguments_are_configuration_errors(pki: Pki) -> None:
    with pytest.raises(ConfigurationError):
        XksClient("http://localhost:1", "/kms/xks/v1", KEY_ID, SECRET)
    with pytest.raises(ConfigurationError):
        XksClient("https://localhost:1/path", "/kms/xks/v1", KEY_ID, SECRET)
    with pytest.raises(ConfigurationError):
        XksClient("https://localhost:1", "/a b", KEY_ID, SECRET)
    client = XksClient("https://localhost:1", "/p", KEY_ID, SECRET)
    assert client.uri_path == "/p/kms/xks/v1"
    with pytest.raises(ConfigurationError):
        client.encrypt("a/b", b"x", b"", MD)
    with pytest.raises(ConfigurationError):
        client.encrypt("k", b"x", b"", RequestMetadata("arn", None, "Encrypt", "r"))


def test_a_ca_file_is_trusted_besides_the_systems(pki: Pki) -> None:
    """ENVELOPE_XKS_CA_FILE is documented as CAs trusted "besides the system's", but the
    client trusted that file alone: one proxy behind a private CA took the public CAs away
    from every other store of the KMS."""
    client = client_for("https://localhost:1", pki)
    trusted = {c["serialNumber"] for c in client._transport._context.get_ca_certs()}
    system = {c["serialNumber"] for c in ssl.create_default_context().get_ca_certs()}
    private = {c["serialNumber"] for c in _load(pki.ca.cert_file).get_ca_certs()}
    assert private <= trusted and system <= trusted
    with pytest.raises(ConfigurationError, match="cannot load the CA file"):
        client_for("https://localhost:1", pki, ca=Path("/nonexistent/ca.pem"))


def _load(path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(path))
    return context


class _EndlessChunkLine(_Handler):
    """Answers chunked, then sends a chunk-size line (or, with `server.trailers`, trailers)
    that never ends."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        if getattr(self.server, "trailers", False):
            self.wfile.write(b"0\r\n")
        for _ in range(8):
            self.wfile.write(b"f" * 16384)
            self.wfile.flush()
        time.sleep(1.0)


@pytest.mark.parametrize("trailers", [False, True])
def test_a_chunked_answer_without_end_is_refused_at_a_bound(
    pki: Pki, canned: Canned, trailers: bool
) -> None:
    """The chunk-size line and the final CRLF were read without a bound: a hostile proxy made
    the KMS hold all it sent until the deadline (review). Refused past the header limit."""
    canned.RequestHandlerClass = _EndlessChunkLine
    canned.trailers = trailers  # type: ignore[attr-defined]
    client = client_for(canned.endpoint, pki, timeout=5.0)
    started = time.monotonic()
    with pytest.raises(XksInvalidResponse):
        client.encrypt("k1", b"x" * 32, b"", MD)
    assert time.monotonic() - started < 1.0
