"""The server's fast paths give the same answers as the slow ones they replace.

- SigV4: the authenticator feeds botocore's signer a light request object instead of an
  `AWSRequest` with `HTTPHeaders`; the signatures it accepts must be exactly botocore's over the
  same signed headers (including headers botocore itself never signs, such as User-Agent,
  repeated headers and folded whitespace), and its per-key signer cache must not outlive a
  secret.
- HTTP: `CorkedHTTPProtocol` writes each response with one write on the socket, and the
  bytes are the same response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from envelope.server.auth import MISMATCH, Authenticator, AuthError
from envelope.server.protocol import CorkedHTTPProtocol, CorkedTransport
from envelope.service import FileRootKey, KeyService, Store

from .conftest import Server

NOW = 1_800_000_000.0
AMZ_DATE = "20270115T080000Z"  # NOW as SigV4's basic ISO-8601
HOST = "127.0.0.1:8080"


@pytest.fixture
def kms(tmp_path: Path) -> Iterator[KeyService]:
    home = tmp_path / "home"
    home.mkdir()
    store = Store.open(home / "kms.sqlite3", FileRootKey(home / "root.key"))
    svc = KeyService(store, clock=lambda: NOW, owns_store=True)
    yield svc
    svc.close()


@pytest.fixture
def creds(kms: KeyService) -> Credentials:
    arn = kms.create_user(user_name="alice")["User"]["Arn"]
    key = kms.create_access_key(user_arn=arn)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


class _SignsEverything(SigV4Auth):  # type: ignore[misc]
    """Stock botocore, except that it signs every header of the request (as other SDKs may)."""

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        out = HTTPHeaders()
        for name, value in request.headers.items():
            out[name.lower()] = value
        return out


def _reference_sign(
    creds: Credentials, headers: list[tuple[str, str]], body: bytes, query: str = ""
) -> list[tuple[str, str]]:
    """`headers` plus X-Amz-Date and an Authorization made by botocore over an `AWSRequest`."""
    request = AWSRequest(
        method="POST", url=f"https://{HOST}/" + (f"?{query}" if query else ""), data=body
    )
    for name, value in headers:
        request.headers[name] = value  # HTTPHeaders keeps repeated names
    request.headers["X-Amz-Date"] = AMZ_DATE
    request.context["timestamp"] = AMZ_DATE
    signer = _SignsEverything(creds, "kms", "us-east-1")
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signed = signer.signed_headers(signer.headers_to_sign(request))
    auth = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{AMZ_DATE[:8]}/us-east-1/kms/"
        f"aws4_request, SignedHeaders={signed}, Signature={signature}"
    )
    return [*request.headers.items(), ("Authorization", auth)]


def _verify(
    auth: Authenticator, headers: list[tuple[str, str]], body: bytes, query: str = ""
) -> str:
    return auth.authenticate(
        method="POST", host=HOST, path="/", query=query, headers=headers, body=body
    )


BODY = json.dumps({"KeyId": "alias/x", "KeySpec": "AES_256"}).encode()
CASES: dict[str, tuple[list[tuple[str, str]], bytes, str]] = {
    "boto3-like": (
        [
            ("Host", HOST),
            ("X-Amz-Target", "TrentService.GenerateDataKey"),
            ("Content-Type", "application/x-amz-json-1.1"),
        ],
        BODY,
        "",
    ),
    "user-agent and folded spaces signed": (
        [
            ("Host", HOST),
            ("X-Amz-Target", "TrentService.GenerateDataKey"),
            ("User-Agent", "  aws-sdk-go/1.0   (go1.22;  linux)  "),
            ("Content-Type", "application/x-amz-json-1.1"),
        ],
        BODY,
        "",
    ),
    "repeated header, mixed-case names": (
        [
            ("HOST", HOST),
            ("x-amz-target", "TrentService.GenerateDataKey"),
            ("X-Custom", "one"),
            ("x-custom", "two"),
        ],
        BODY,
        "",
    ),
    "content hash signed, query string, empty body": (
        [
            ("Host", HOST),
            ("X-Amz-Target", "TrentService.ListKeys"),
            ("X-Amz-Content-SHA256", hashlib.sha256(b"").hexdigest()),
        ],
        b"",
        "b=2&a=1",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_accepts_exactly_botocores_signature(
    kms: KeyService, creds: Credentials, case: str
) -> None:
    headers, body, query = CASES[case]
    auth = Authenticator(kms, clock=lambda: NOW)
    signed = _reference_sign(creds, headers, body, query)
    assert _verify(auth, signed, body, query).endswith(":user/alice")
    # and any change to what was signed is refused (the fast path checks every signed byte)
    for i, (name, value) in enumerate(signed):
        if name.lower() in ("authorization", "x-amz-date", "host", "x-amz-content-sha256"):
            continue
        tampered = [*signed[:i], (name, value + "x"), *signed[i + 1 :]]
        with pytest.raises(AuthError) as e:
            _verify(auth, tampered, body, query)
        assert e.value.code == "InvalidSignatureException" and e.value.message == MISMATCH
    with pytest.raises(AuthError):
        _verify(auth, signed, body + b" ", query)
    if query:
        with pytest.raises(AuthError):
            _verify(auth, signed, body, "a=1&b=3")


def test_signer_cache_follows_the_secret(kms: KeyService, creds: Credentials) -> None:
    """A cached signer is used only with the secret it was made from."""
    auth = Authenticator(kms, clock=lambda: NOW)
    headers = [("Host", HOST), ("X-Amz-Target", "TrentService.ListKeys")]
    _verify(auth, _reference_sign(creds, headers, b"{}"), b"{}")  # caches alice's signer
    first = auth._verifier(creds.access_key, creds.secret_key, "us-east-1")
    other = auth._verifier(
        creds.access_key, "another-secret-of-40-characters-xxxxxxxxx", "us-east-1"
    )
    assert other is not first and other.credentials.secret_key.startswith("another")
    # the service still has the real secret: a request signed with it is accepted again
    assert _verify(auth, _reference_sign(creds, headers, b"{}"), b"{}").endswith(":user/alice")
    forged = Credentials(creds.access_key, "another-secret-of-40-characters-xxxxxxxxx")
    with pytest.raises(AuthError) as e:
        _verify(auth, _reference_sign(forged, headers, b"{}"), b"{}")
    assert e.value.code == "InvalidSignatureException"


# ---------------------------------------------------------------------------- one write


class _CountingTransport(asyncio.Transport):
    """A real socket transport that counts the writes reaching it."""

    def __init__(self, inner: asyncio.Transport) -> None:
        super().__init__()
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def close(self) -> None:
        self.inner.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    body = b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def test_one_write_per_response() -> None:
    import uvicorn
    from uvicorn.server import ServerState

    transports: list[_CountingTransport] = []

    async def main() -> list[bytes]:
        config = uvicorn.Config(_app, lifespan="off", log_level="warning")
        config.load()
        state = ServerState()

        class Counted(CorkedHTTPProtocol):  # type: ignore[misc]
            def connection_made(self, transport: asyncio.Transport) -> None:
                counting = _CountingTransport(transport)
                transports.append(counting)
                super().connection_made(counting)

        server = await asyncio.get_running_loop().create_server(
            lambda: Counted(config=config, server_state=state, app_state={}), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for _ in range(3):  # keep-alive: three requests on one connection
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            head = await reader.readuntil(b"\r\n\r\n")
            answers.append(head + await reader.readexactly(11))
        writer.close()
        server.close()
        await server.wait_closed()
        return answers

    answers = asyncio.run(main())
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") and a.endswith(b'{"ok":true}') for a in answers)
    (transport,) = transports
    assert len(transport.writes) == 3  # status line, headers and body together, each time
    assert all(w.endswith(b'{"ok":true}') for w in transport.writes)


def test_corked_transport_flushes_on_the_next_loop_turn_and_on_close() -> None:
    """Writes outside a response cycle (uvicorn's own 400s) still leave, in order."""

    async def main() -> tuple[list[bytes], list[bytes]]:
        loop = asyncio.get_running_loop()
        sent: list[bytes] = []
        closed: list[bytes] = []

        class Sink(asyncio.Transport):
            def write(self, data: Any) -> None:
                sent.append(bytes(data))

            def is_closing(self) -> bool:
                return bool(closed)

            def close(self) -> None:
                closed.append(b"closed")

        corked = CorkedTransport(Sink(), loop)
        corked.write(b"a")
        corked.write(b"b")
        assert sent == []
        await asyncio.sleep(0)
        assert sent == [b"ab"]
        corked.write(b"c")
        corked.close()
        return sent, closed

    sent, closed = asyncio.run(main())
    assert sent == [b"ab", b"c"] and closed == [b"closed"]


@pytest.mark.parametrize("host", ["[::1", "a]b"])
def test_a_host_no_url_can_hold_is_a_signature_mismatch(
    kms: KeyService, creds: Credentials, host: str
) -> None:
    """botocore canonicalises through a URL; a Host header that is not one ("[::1": urlsplit's
    "Invalid IPv6 URL") was an internal error, answered 500."""
    auth = Authenticator(kms, clock=lambda: NOW)
    signed = _reference_sign(creds, CASES["boto3-like"][0], BODY)
    with pytest.raises(AuthError) as e:
        auth.authenticate(method="POST", host=host, path="/", query="", headers=signed, body=BODY)
    assert e.value.code == "InvalidSignatureException"


def test_the_server_runs_on_uvloop(server: Server) -> None:
    """uvicorn takes uvloop when it is installed, and the `server` extra installs it: its C
    transports and TLS cost the server a quarter less CPU per request than asyncio's (docs/
    server.md). A configuration that pinned uvicorn to asyncio's loop would fail here."""
    pid = server.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    maps = "".join(Path(f"/proc/{p}/maps").read_text() for p in (str(pid), *children))
    assert "uvloop" in maps
