"""The ASGI application of `envelope xks serve`: the XKS proxy API v1 over a PKCS#11 token.

    POST {prefix}/kms/xks/v1/health                     GetHealthStatus
    POST {prefix}/kms/xks/v1/keys/{keyId}/metadata      GetKeyMetadata
    POST {prefix}/kms/xks/v1/keys/{keyId}/encrypt       Encrypt
    POST {prefix}/kms/xks/v1/keys/{keyId}/decrypt       Decrypt
    GET  /ping                                          "pong" (load balancers; no auth)
    GET  /metrics                                       Prometheus text (no auth)

The external key id is the label of an AES key in the token. Per request, in this order:

1. the path names a configured key store and an operation, else ``InvalidUriPathException``
   (404); another method than POST on an operation's URI is 405 (``Allow: POST``);
2. the body is at most `max_request_bytes`, else ``UnsupportedOperationException`` (501, the
   specification's error for sizes past an implementation's limits);
3. SigV4 for ``kms-xks-proxy`` in the configured Region with one of that key store's
   credentials, within 5 minutes of the proxy's clock (`envelope.server.auth.Authenticator`),
   else ``AuthenticationFailedException`` (401);
4. the key store's request quota, else ``ThrottlingException`` (429);
5. a JSON object of ``Content-Type: application/json`` with the request metadata the
   specification requires, else ``ValidationException`` (400);
6. secondary authorization (not for GetHealthStatus): the request's awsPrincipalArn matches
   the key's or the store's principal patterns, if any, else ``AccessDeniedException`` (403);
   then the operation's own members (``ValidationException``; ``encryptionAlgorithm`` other
   than AES_GCM or a CDIV algorithm other than SHA_256 is ``UnsupportedOperationException``);
7. the key: allowed in this store and present in the token (``KeyNotFoundException``), not
   disabled (``InvalidStateException``), an AES-256 key allowed to encrypt/decrypt
   (``InvalidKeyUsageException``);
8. the token call: AES-GCM inside the token, with the AAD the specification prescribes
   (`spec.proxy_aad`: lengths, AAD, ciphertext metadata); a tag that does not verify is
   ``InvalidCiphertextException``; a token that fails is ``InternalException`` (or
   ``DependencyTimeoutException`` past ``dependency_timeout_ms``).

Steps 1-6 are here, 7 and 8 in `envelope.xks.operations`. One JSON log line per request
(logger ``envelope.xks.access``: the request metadata, kmsRequestId first among them, the key
id, status, error and duration; never a body, a plaintext, an AAD, a key or a secret) and
Prometheus metrics with sub-millisecond buckets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any, Final

import anyio
import anyio.to_thread
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .._ratelimit import TokenBucket
from .._serving import BodyTooLarge, ClientGone, RequestMetrics, decode_headers, read_body
from ..errors import ConfigurationError
from ..server.auth import Authenticator, AuthError, StaticCredentials
from .config import KeyStoreSettings, XksSettings, load_settings
from .errors import XksProxyError
from .operations import Operations, TokenLike
from .spec import (
    API_PATH,
    OPERATIONS,
    SERVICE,
    SKEW,
    RequestMetadata,
    SpecViolation,
)

__all__ = ("ProxyMetrics", "XksProxyApp")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON: Final = b"application/json"
_BY_SEGMENT: Final = {segment: name for name, segment in OPERATIONS.items()}
#: How often the config file is looked at for changed key stores (seconds).
RELOAD_SECONDS: Final = 1.0
#: How long a key's attributes are trusted before the token is asked again (seconds).
KEY_CACHE_SECONDS: Final = 10.0

log = logging.getLogger("envelope.xks.access")
errlog = logging.getLogger("envelope.xks")


class ProxyMetrics(RequestMetrics):
    """Requests by operation and outcome, and their latency (`envelope._serving`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(
            requests=(
                "envelope_xks_proxy_requests",
                "XKS proxy requests, by operation and outcome (OK or the XKS errorName)",
            ),
            latency=(
                "envelope_xks_proxy_request_seconds",
                "Time from an XKS request's body to its answer, by operation",
            ),
            outcome_label="outcome",
            registry=registry,
        )


class _Store:
    """A configured key store with its verifier and quota."""

    __slots__ = ("auth", "bucket", "settings")

    def __init__(
        self,
        settings: KeyStoreSettings,
        regions: tuple[str, ...],
        clock: Callable[[], float],
        share: int,
    ) -> None:
        self.settings = settings
        creds = StaticCredentials(
            {c.access_key_id: c.secret_access_key for c in settings.credentials}, regions[0]
        )
        self.auth = Authenticator(
            creds, clock=clock, skew=SKEW, regions=regions, service_name=SERVICE
        )
        rate = settings.requests_per_second
        self.bucket = (
            TokenBucket(rate / share, max(1.0, rate / share), clock=time.monotonic)
            if rate
            else None
        )


class _Outcome:
    __slots__ = (
        "access_key_id",
        "body",
        "code",
        "headers",
        "key_id",
        "md",
        "operation",
        "status",
        "store",
    )

    def __init__(self) -> None:
        self.status = 200
        self.code = "OK"
        self.body = b"{}"
        self.operation = "unknown"
        self.store: str | None = None
        self.key_id: str | None = None
        self.md: RequestMetadata | None = None
        self.access_key_id: str | None = None
        self.headers: list[tuple[bytes, bytes]] = []

    def fail(self, e: XksProxyError) -> None:
        self.code = e.error_name
        self.status = e.status
        doc = {"errorName": e.error_name}
        if e.message:
            doc["errorMessage"] = e.message
        self.body = json.dumps(doc, separators=(",", ":")).encode()


class XksProxyApp:
    """The ASGI callable. `token` is this process's `envelope.pkcs11.Token`; `share` is the
    number of worker processes (each enforces its share of a key store's quota)."""

    def __init__(
        self,
        settings: XksSettings,
        token: TokenLike,
        *,
        clock: Callable[[], float] = time.time,
        metrics: ProxyMetrics | None = None,
        share: int = 1,
        close: Callable[[], None] | None = None,
    ) -> None:
        settings.check_serving()
        self.settings = settings
        self.token = token
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        self._clock = clock
        self._share = share
        self.stores = self._stores(settings)
        self._source = settings.source
        self._stamp = self._file_stamp()
        self._next_check = time.monotonic() + RELOAD_SECONDS
        self._close = close
        self._access = _AccessLog()
        self.operations = Operations(settings, token, errlog)
        self.pid = os.getpid()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._close is not None:
                        await anyio.to_thread.run_sync(self._close)
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    @staticmethod
    def _authorize(store: KeyStoreSettings, key_id: str | None, md: RequestMetadata) -> None:
        """Secondary authorization (the specification's Authorization section): the calling
        principal must match one of the patterns configured for the key (or the store)."""
        patterns = store.principals_for(key_id)
        if patterns is None:
            return
        principal = md.aws_principal_arn
        if any(fnmatchcase(principal, pattern) for pattern in patterns):
            return
        errlog.warning(
            "access denied: %s may not use key %s of %s (allowed: %s; kmsRequestId %s)",
            principal[:300],
            key_id,
            store.path_prefix or "/",
            ", ".join(patterns),
            md.kms_request_id[:200],
        )
        raise XksProxyError(
            "AccessDeniedException", "the proxy's authorization does not allow this principal"
        )

    # -- the key stores, reloaded when the config file changes ----------------------------

    def _stores(self, settings: XksSettings) -> dict[str, _Store]:
        return {
            ks.path_prefix: _Store(ks, settings.regions, self._clock, self._share)
            for ks in settings.keystores
        }

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._source is None:
            return None
        try:
            st = os.stat(self._source)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _maybe_reload(self) -> None:
        """The key stores of the config file again if it changed (looked at once every
        RELOAD_SECONDS): credentials can be added and removed without a restart, as the
        specification recommends for their rotation. A file that does not load is logged and
        the running key stores stay. The other settings need a restart."""
        now = time.monotonic()
        if now < self._next_check or self._source is None:
            return
        self._next_check = now + RELOAD_SECONDS
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            fresh = load_settings(self._source)
            fresh.check_serving()
            # (the running settings with the new stores: checked again, the health key
            # against their keys lists too)
            settings = replace(self.settings, keystores=fresh.keystores)
        except ConfigurationError as e:
            errlog.error(
                "%s changed but does not load; the key stores stay as they were: %s",
                self._source,
                e,
            )
            return
        self.stores = self._stores(settings)
        self.operations.use_keystores(settings)
        errlog.warning(
            "key stores reloaded from %s: %s",
            self._source,
            ", ".join(
                f"{p or '/'} ({len(st.settings.credentials)} credentials)"
                for p, st in self.stores.items()
            ),
        )

    # -- routing ------------------------------------------------------------------------

    def _route(self, path: str) -> tuple[_Store, str, str | None]:
        """(key store, operation, key id) of an XKS path, or InvalidUriPathException."""
        cut = path.rfind(API_PATH + "/")
        store = self.stores.get(path[:cut]) if cut >= 0 else None
        if store is None:
            raise XksProxyError("InvalidUriPathException", "no XKS key store at this URI path")
        rest = path[cut + len(API_PATH) + 1 :].split("/")
        if rest == ["health"]:
            return store, "GetHealthStatus", None
        if len(rest) == 3 and rest[0] == "keys" and rest[2] in _BY_SEGMENT and rest[2] != "health":
            return store, _BY_SEGMENT[rest[2]], rest[1]
        raise XksProxyError("InvalidUriPathException", "no XKS operation at this URI path")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "/")
        method = scope.get("method", "GET")
        if method == "GET" and path == "/ping":
            await _respond(send, 200, b"pong\n", b"text/plain", [])
            return
        if method == "GET" and path == "/metrics":
            body = self.metrics.exposition()
            await _respond(send, 200, body, CONTENT_TYPE_LATEST.encode(), [])
            return
        started = served_from = time.perf_counter()
        out = _Outcome()
        client = scope.get("client")
        self._maybe_reload()
        try:
            store, out.operation, out.key_id = self._route(path)
            out.store = store.settings.path_prefix
            if method != "POST":
                out.headers.append((b"allow", b"POST"))
                raise XksProxyError(
                    "UnsupportedOperationException", "XKS operations take POST only", 405
                )
            headers, first = decode_headers(scope.get("headers") or ())
            limit = self.settings.max_request_bytes
            try:
                body = await read_body(
                    receive, first.get("content-length"), limit, self.settings.body_timeout_seconds
                )
            except ClientGone:
                return  # never whole: nothing to answer or serve
            except BodyTooLarge:
                # the rest is dropped as it arrives (the protocol's drain), unless the client
                # waits for "100 Continue" and may never send it: then the answer closes
                if "100-continue" in first.get("expect", "").lower():
                    out.headers.append((b"connection", b"close"))
                raise _too_large(limit) from None
            except TimeoutError:
                out.headers.append((b"connection", b"close"))  # (the rest may never come)
                raise XksProxyError(
                    "ValidationException",
                    "the request body did not arrive within "
                    f"{self.settings.body_timeout_seconds:g} seconds",
                    408,
                ) from None
            # the latency histogram starts once the body is in: its upload is the client's
            served_from = time.perf_counter()
            out.access_key_id = self._authenticate(store, scope, headers, first, body)
            if store.bucket is not None and store.bucket.take() > 0:
                raise XksProxyError(
                    "ThrottlingException", "this key store's request rate is exceeded"
                )
            out.body = await self._serve(store, out, first.get("content-type", ""), body)
        except XksProxyError as e:
            out.fail(e)
        except Exception as e:
            errlog.error(
                "internal error on %s %s: %s",
                out.operation,
                out.key_id,
                "".join(traceback.format_exception_only(type(e), e)).strip(),
            )
            out.fail(XksProxyError("InternalException", "internal error of the XKS proxy"))
        await _respond(send, out.status, out.body, JSON, out.headers)
        now = time.perf_counter()
        elapsed = now - started
        self.metrics.observe(out.operation, out.code, now - served_from)
        if log.isEnabledFor(logging.INFO):
            md = out.md
            self._access.add(
                json.dumps(
                    {
                        "time": round(time.time(), 3),
                        "kmsRequestId": md.kms_request_id if md else None,
                        "operation": out.operation,
                        "keyId": out.key_id,
                        "status": out.status,
                        "error": None if out.code == "OK" else out.code,
                        "duration_ms": round(elapsed * 1000, 3),
                        "kmsOperation": md.kms_operation if md else None,
                        "awsPrincipalArn": (md.aws_principal_arn or None) if md else None,
                        "kmsKeyArn": md.kms_key_arn if md else None,
                        "kmsViaService": md.kms_via_service if md else None,
                        "awsSourceVpc": md.aws_source_vpc if md else None,
                        "awsSourceVpce": md.aws_source_vpce if md else None,
                        "pathPrefix": out.store,
                        "accessKeyId": out.access_key_id,
                        "sourceIp": client[0] if client else None,
                        "pid": self.pid,
                    },
                    separators=(",", ":"),
                )
            )

    def _authenticate(
        self,
        store: _Store,
        scope: Scope,
        headers: list[tuple[str, str]],
        first: Mapping[str, str],
        body: bytes,
    ) -> str:
        try:
            return store.auth.verify(
                method=scope.get("method", "POST"),
                host=first.get("host", ""),
                # the path as sent (what the client signed); ASGI's raw_path is optional
                path=(scope.get("raw_path") or scope.get("path", "/").encode())
                .decode("latin-1")
                .split("?", 1)[0]
                or "/",
                query=scope.get("query_string", b"").decode("latin-1"),
                headers=headers,
                body=body,
            ).access_key_id
        except AuthError as e:
            raise XksProxyError("AuthenticationFailedException", f"{e.code}: {e.message}") from None

    # -- the operations -------------------------------------------------------------------

    async def _serve(self, store: _Store, out: _Outcome, content_type: str, body: bytes) -> bytes:
        if out.operation == "GetHealthStatus":
            # The specification's error table has no ValidationException for GetHealthStatus
            # ("ALL except GetHealthStatus"): a signed request with a malformed body is still
            # answered, as the deep check depends on nothing it says. Never under secondary
            # authorization.
            with contextlib.suppress(XksProxyError):
                self._document(out, content_type, body)
            answer = await self.operations.health()
        else:
            doc = self._document(out, content_type, body)
            assert out.key_id is not None and out.md is not None
            self._authorize(store.settings, out.key_id, out.md)
            if out.operation == "GetKeyMetadata":
                answer = await self.operations.metadata(store.settings, out.key_id)
            elif out.operation == "Encrypt":
                answer = await self.operations.encrypt(store.settings, out.key_id, doc)
            else:
                answer = await self.operations.decrypt(store.settings, out.key_id, doc)
        return json.dumps(answer, separators=(",", ":")).encode()

    @staticmethod
    def _document(out: _Outcome, content_type: str, body: bytes) -> dict[str, Any]:
        """The request's JSON object, its requestMetadata parsed into `out.md`, or
        ValidationException."""
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise XksProxyError("ValidationException", "Content-Type must be application/json")
        try:
            doc = json.loads(body)
            parsed = True
        except (ValueError, RecursionError):  # (RecursionError: nested past the parser's stack)
            parsed = False
        if not parsed:
            # raised outside the except block: the decode error holds the whole body (a
            # plaintext), and ``from None`` would still keep it as __context__ (diff review)
            raise XksProxyError("ValidationException", "the body is not valid JSON")
        if not isinstance(doc, dict):
            raise XksProxyError("ValidationException", "the body must be a JSON object")
        try:
            out.md = RequestMetadata.from_wire(out.operation, doc.get("requestMetadata"))
        except SpecViolation as e:
            raise XksProxyError("ValidationException", str(e)) from None
        return doc


def _too_large(limit: int) -> XksProxyError:
    return XksProxyError("UnsupportedOperationException", f"the request body exceeds {limit} bytes")


class _AccessLog:
    """The access log's lines, handed to logging once per event-loop turn: under load the
    requests of one turn share one log record (each still one JSON line), so the logging
    machinery (a record, a lock, a write and a flush: about 40 us) runs once per batch."""

    __slots__ = ("_lines", "_scheduled")

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._scheduled = False

    def add(self, line: str) -> None:
        self._lines.append(line)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a direct call): now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        lines, self._lines = self._lines, []
        if lines:
            # makeRecord, not log.info: no stack walk for the caller's file and line
            log.handle(log.makeRecord(log.name, logging.INFO, "", 0, "\n".join(lines), (), None))


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
