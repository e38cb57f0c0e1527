"""SigV4 signing of XKS requests with botocore's signer, without botocore's per-request cost.

`botocore.auth.SigV4Auth.add_auth` on an `AWSRequest` costs about 200 us here: it builds
`HTTPHeaders` (an `email.message`), re-parses the URL several times and derives the signing key
with four HMACs on every call. An XKS client signs thousands of small requests a second with one
key, so `Signer` keeps botocore's canonical request, string to sign and signature code (the
parts that must be right) and feeds it a light request: exactly the two headers AWS KMS signs
(``host;x-amz-date``, Appendix A of the specification), the body's hash computed once, and the
signing key derived once a day.

The server side of the same protocol is `envelope.server.auth` (a verifier built the same way).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator

from botocore.auth import SigV4Auth
from botocore.credentials import Credentials

from .spec import SERVICE

__all__ = ("Signer",)

#: A path botocore's canonicalisation leaves as it is (no character to escape, no empty, "."
#: or ".." segment): every XKS path (the specification's alphabets for the prefix and the key
#: id). Its canonical request is then written directly.
_PLAIN_PATH = re.compile(r"^(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~-]+)+$")


class _Headers:
    """The signed headers as botocore's signer reads them (names lower-case)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def get_all(self, name: str, failobj: object = None) -> list[str] | object:
        return self._values.get(name, failobj)


class _Request:
    """What `SigV4Auth.canonical_request` and `string_to_sign` read of a request."""

    __slots__ = ("context", "headers", "method", "params", "payload_hash", "url")

    def __init__(self, url: str, headers: _Headers, timestamp: str, payload_hash: str) -> None:
        self.method = "POST"
        self.url = url
        self.params: dict[str, str] = {}
        self.headers = headers
        self.context = {"timestamp": timestamp}
        self.payload_hash = payload_hash


class Signer(SigV4Auth):  # type: ignore[misc]  # botocore ships no type hints
    """Signs POST requests for ``kms-xks-proxy`` with one access key in one Region.

    Thread-safe: no per-request state; the day's signing key is replaced atomically."""

    def __init__(self, access_key_id: str, secret_access_key: str, region: str) -> None:
        super().__init__(Credentials(access_key_id, secret_access_key), SERVICE, region)
        self._day_key: tuple[str, bytes] = ("", b"")

    def __repr__(self) -> str:
        key, region = self.credentials.access_key, self._region_name
        return f"Signer(access_key_id={key!r}, region={region!r})"

    def headers_to_sign(self, request: _Request) -> _Headers:
        return request.headers

    def canonical_request(self, request: _Request) -> str:
        path = request.url.split("/", 3)[3] if request.url.count("/") >= 3 else ""
        path = "/" + path
        if not _PLAIN_PATH.match(path):
            return str(super().canonical_request(request))
        # botocore's form for a POST with no query and the two signed headers
        return (
            f"POST\n{path}\n\nhost:{request.headers.get_all('host')[0]}\n"  # type: ignore[index]
            f"x-amz-date:{request.context['timestamp']}\n\nhost;x-amz-date\n"
            f"{request.payload_hash}"
        )

    def payload(self, request: _Request) -> str:
        return request.payload_hash

    def signature(self, string_to_sign: str, request: _Request) -> str:
        day = request.context["timestamp"][0:8]
        cached_day, k_signing = self._day_key
        if cached_day != day:
            k_date = self._sign(f"AWS4{self.credentials.secret_key}".encode(), day)
            k_service = self._sign(self._sign(k_date, self._region_name), self._service_name)
            k_signing = self._sign(k_service, "aws4_request")
            self._day_key = (day, k_signing)
        return str(self._sign(k_signing, string_to_sign, hex=True))

    def sign(self, host: str, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
        """The ``Host``, ``X-Amz-Date`` and ``Authorization`` headers of ``POST path`` with
        `body` to `host` (the Host header's value: ``name`` or ``name:port``)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        request = _Request(
            f"https://{host}{path}",
            _Headers({"host": [host], "x-amz-date": [stamp]}),
            stamp,
            hashlib.sha256(body).hexdigest(),
        )
        canonical = self.canonical_request(request)
        signature = self.signature(self.string_to_sign(request, canonical), request)
        return {
            "Host": host,
            "X-Amz-Date": stamp,
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={self.scope(request)}, "
                f"SignedHeaders=host;x-amz-date, Signature={signature}"
            ),
        }
