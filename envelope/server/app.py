"""The ASGI application of `envelope serve`: AWS KMS's JSON protocol over the embedded KMS.

    POST /   X-Amz-Target: TrentService.<Operation>   Content-Type: application/x-amz-json-1.1
    GET  /healthz                                      {"status": "ok"} (503 when the store
                                                       file was deleted or replaced)
    GET  /metrics                                      Prometheus text

Per request: read the body (refused past `max_request_bytes` with 413), authenticate it (the
`authenticate` callable, in production `envelope.server.auth.Authenticator.authenticate`,
returns the caller's principal ARN or raises an error carrying ``code``, ``status`` and
``message``), find the operation, translate and validate the body by botocore's model
(`wire.WireModel`), call the `KeyService` method as that principal with a `RequestContext`
(source address, user agent, request id), and answer AWS-shaped JSON, or
``{"__type": CODE, "message": TEXT}`` with the status AWS uses. Every response carries
``x-amzn-RequestId``. One JSON log line per request (logger ``envelope.server.access``): time,
request id, worker pid, source address, principal, operation, status, error code, duration;
never a body, a key, a signature or the Authorization header.

Blocking service calls: a call is 50-300 us of CPU under the store's lock, so the fast
operations run on the event-loop thread; operations that can take long (key-pair generation,
imports, replication, key creation with RSA specs) run on a worker thread so they do not stall
the other requests of this process. Measured (2 cores, 8 keep-alive connections, 1 and 2
workers): running every call through `anyio.to_thread` costs 40-50% more server CPU per
GenerateDataKey or Decrypt and 30% of the throughput, although group commit then lets the
threads share commits: a commit here (WAL, ``synchronous=NORMAL``) is cheaper than the thread
hop and the GIL hand-offs it brings.

Graceful shutdown: uvicorn stops accepting on SIGTERM/SIGINT and waits for in-flight requests
(up to the configured grace period) before the lifespan shutdown closes the store.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

import anyio
import anyio.to_thread
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .._ratelimit import TokenBucket
from .._serving import BodyTooLarge, ClientGone, RequestMetrics, decode_headers, read_body
from ..service import KeyService, KmsServiceError, RequestContext
from ..service.errors import StoreError
from .errors import INTERNAL_MESSAGE, SILENT, WireError, status_for
from .wire import TARGET_PREFIX, Operation, WireModel

__all__ = (
    "AMZ_JSON",
    "SLOW_OPERATIONS",
    "Authenticate",
    "KmsApp",
    "ServerMetrics",
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

AMZ_JSON = b"application/x-amz-json-1.1"
#: The longest User-Agent kept (CloudTrail's userAgent field is cut at 1 KiB too).
MAX_USER_AGENT = 1024

#: Operations run on a worker thread: they can take from milliseconds (RSA/ECC generation,
#: imports, replicas) to a second (RSA 4096), and must not stall the event loop.
SLOW_OPERATIONS = frozenset(
    {
        "CreateKey",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GetParametersForImport",
        "ImportKeyMaterial",
        "ReplicateKey",
        "Sign",
        "Verify",
        "Decrypt",  # RSA keys decrypt with the private key (milliseconds); see `_offload`
        "DeriveSharedSecret",
        "GetKeyLastUsage",  # a scan of the audit log: seconds on a log of millions of records
        # an HSM login, or a round trip to an external proxy (up to its timeout)
        "CreateCustomKeyStore",
        "ConnectCustomKeyStore",
        "DisconnectCustomKeyStore",
        "UpdateCustomKeyStore",
        "DeleteCustomKeyStore",
        "DescribeCustomKeyStores",
    }
)

#: Seconds a request's body may take to arrive once its headers have, by default (a client
#: trickling it holds a socket and, unbounded, could hold them all).
BODY_TIMEOUT_SECONDS = 30.0
#: Refusals before authentication (unsigned, badly signed, unknown keys) are audited, but at
#: most this many per second from one source address (in bursts of `REFUSAL_AUDIT_BURST`),
#: per worker: an unauthenticated flood must not grow the log without bound. Those over it
#: are counted, and the next audited refusal says how many (`SuppressedRefusals`).
REFUSAL_AUDIT_RATE = 5.0
REFUSAL_AUDIT_BURST = 50.0
#: And at most this many per second from all addresses together (bursts of
#: `REFUSAL_AUDIT_TOTAL_BURST`), per worker.
REFUSAL_AUDIT_TOTAL_RATE = 20.0
REFUSAL_AUDIT_TOTAL_BURST = 200.0
_REFUSAL_SOURCES = 4096  # addresses tracked at once (the least recent are forgotten)
_FAST_DECRYPT_LIMIT = 512  # bytes: symmetric ciphertexts of envelope's KMS are well below it

log = logging.getLogger("envelope.server.access")
errlog = logging.getLogger("envelope.server")


class Signed(Protocol):
    """Who signed a request, and the Region its credential scope names."""

    @property
    def principal(self) -> str: ...

    @property
    def region(self) -> str: ...


class Authenticate(Protocol):
    """Who signed this request: a principal ARN (served in the service's own Region), or a
    `Signed` naming the Region to serve it in; raises an error with code/status/message."""

    def __call__(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        checked: object = None,
    ) -> str | Signed: ...


class ServerMetrics(RequestMetrics):
    """Per-operation request counter and latency histogram (`envelope._serving`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(
            requests=(
                "envelope_server_requests",
                "KMS API requests served, by operation and outcome (OK or the AWS error code)",
            ),
            latency=(
                "envelope_server_request_seconds",
                "Time from the request's body to its response, by operation",
            ),
            outcome_label="code",
            registry=registry,
        )


class _RefusalBudget:
    """May this refusal be audited? Within a per-address budget (one noisy client does not use
    up the rest) and a budget for all addresses together (a client rotating addresses, as any
    local one can on 127.0.0.0/8, still cannot grow the log faster than that): two kinds of
    `TokenBucket`. Refusals not audited are counted, whatever their address, and the next
    audited one carries the count (`admit`'s answer), so no count is lost when an address is
    forgotten."""

    def __init__(
        self,
        rate: float,
        burst: float,
        total_rate: float,
        total_burst: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._sources: dict[str, TokenBucket] = {}
        self._total = TokenBucket(total_rate, total_burst, clock=clock)
        self._suppressed = 0

    def admit(self, source: str) -> int | None:
        """None: over a budget (counted); else how many were not audited since the last
        refusal that was, from any address."""
        bucket = self._sources.pop(source, None)  # re-inserted last: the most recent
        if bucket is None:
            if len(self._sources) >= _REFUSAL_SOURCES:
                del self._sources[next(iter(self._sources))]
            bucket = TokenBucket(self.rate, self.burst, clock=self.clock)
        self._sources[source] = bucket
        if bucket.take() or self._total.take():
            self._suppressed += 1
            return None
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


class _Outcome:
    """What one request turned into, for the response, the metrics and the log line."""

    __slots__ = ("body", "code", "operation", "principal", "status")

    def __init__(self) -> None:
        self.status = 200
        self.code = "OK"
        self.body = b"{}"
        self.operation = "unknown"
        self.principal: str | None = None

    def fail(self, code: str, message: str, status: int | None = None) -> None:
        self.code = code
        self.status = status_for(code) if status is None else status
        doc: dict[str, str] = {"__type": code}
        if message and code not in SILENT:
            doc["message"] = message
        self.body = json.dumps(doc).encode()


class KmsApp:
    """The ASGI callable. `service` is this process's `KeyService` (closed at shutdown)."""

    def __init__(
        self,
        service: KeyService,
        authenticate: Authenticate,
        *,
        wire: WireModel | None = None,
        metrics: ServerMetrics | None = None,
        max_request_bytes: int = 1 << 20,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
        close_service: bool = True,
        check_headers: Callable[[Sequence[tuple[str, str]]], object] | None = None,
    ) -> None:
        self.service = service
        self.authenticate = authenticate
        #: The authenticator's checks that need no body, run before the body is read; what
        #: they return is handed to `authenticate` as ``checked`` (so not done twice).
        self.check_headers = check_headers
        self.wire = wire if wire is not None else WireModel(type(service))
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.max_request_bytes = max_request_bytes
        self.body_timeout = body_timeout
        self.close_service = close_service
        self.in_flight = 0
        self.pid = os.getpid()
        self._refusals = _RefusalBudget(
            REFUSAL_AUDIT_RATE,
            REFUSAL_AUDIT_BURST,
            REFUSAL_AUDIT_TOTAL_RATE,
            REFUSAL_AUDIT_TOTAL_BURST,
        )
        #: The store's other Regions, served to requests signed for them (`_service_for`).
        self._regions: dict[str, KeyService] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.close_service:
                    # in-flight requests have finished: uvicorn waits for them first
                    for other in list(self._regions.values()):
                        await anyio.to_thread.run_sync(other.close)
                    await anyio.to_thread.run_sync(self.service.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "/")
        method = scope.get("method", "GET")
        if path == "/healthz" and method in ("GET", "HEAD"):
            try:
                self.service.store.check_file()
            except StoreError as e:  # (the reason is the operator's: logged, not answered)
                errlog.error("health check failed: %s", e)
                unavailable = b'{"status":"store unavailable"}'
                await _respond(send, 503, unavailable, b"application/json", None)
                return
            await _respond(send, 200, b'{"status":"ok"}', b"application/json", None)
            return
        if path == "/metrics" and method == "GET":
            await _respond(send, 200, self.metrics.exposition(), CONTENT_TYPE_LATEST.encode(), None)
            return
        if path != "/" or method != "POST":
            # in the AWS error shape, with a request id, as every other answer of the API,
            # and its log line (it had none: a request id no log held; review)
            started = time.perf_counter()
            request_id = str(uuid.uuid4())
            await _respond(
                send,
                404,
                b'{"__type":"UnknownOperationException","message":"Not Found: the KMS API is '
                b'POST / with an X-Amz-Target header"}',
                AMZ_JSON,
                request_id,
            )
            _, first = decode_headers(scope.get("headers") or ())
            seconds = time.perf_counter() - started
            self._log_line(
                request_id, scope, first.get("user-agent", ""), None, "unknown", 404,
                "UnknownOperationException", seconds,
            )
            # counted as an unknown target is: a scanner probing paths shows on a dashboard
            self.metrics.observe("unknown", "UnknownOperationException", seconds)
            return
        await self._kms(scope, receive, send)

    async def _kms(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        headers, first = decode_headers(scope.get("headers") or ())
        client = scope.get("client")
        source_ip = client[0] if client else "unknown"
        user_agent = first.get("user-agent", "")
        target = first.get("x-amz-target")
        out = _Outcome()
        ctx = self._context(scope, source_ip, user_agent, request_id)
        claimed = self._claimed(target, out)
        self.in_flight += 1
        refused_early = False
        body_unread = False  # (refused before its whole body was read)
        served_from = started  # when the whole body was in (refused earlier: the start)
        checked: object = None
        try:
            # refused on its headers alone, a request's body is never read: a client without
            # a valid access key cannot make the worker hold bodies. The connection is then
            # closed after the answer: the unread body (a client waiting on 100 Continue, or
            # still sending) must not be taken for what comes next on it.
            if self.check_headers is not None:
                refused_early, checked = self._headers_pass(headers, claimed, ctx, out, request_id)
            if not refused_early:
                try:
                    body = await read_body(
                        receive,
                        first.get("content-length"),
                        self.max_request_bytes,
                        self.body_timeout,
                    )
                except ClientGone:
                    return  # nothing to answer, serve or audit: the request never was whole
                except TimeoutError:
                    body_unread = True
                    out.fail(
                        "RequestTimeoutException",
                        f"The request body did not arrive within {self.body_timeout:g} seconds",
                        408,
                    )
                except BodyTooLarge:
                    # the rest of the body is dropped as it arrives (the protocol's drain),
                    # unless the client waits for "100 Continue" and may never send it
                    body_unread = "100-continue" in first.get("expect", "").lower()
                    out.fail(
                        "RequestEntityTooLargeException",
                        f"The request body exceeds the limit of {self.max_request_bytes} bytes",
                    )
                else:
                    # the latency histogram starts here: the time a client takes to send its
                    # body is the client's (a body trickled for 4 s made a 1 ms call look 4 s)
                    served_from = time.perf_counter()
                    await self._serve(
                        scope, headers, first, body, target, claimed, ctx, request_id, out, checked
                    )
        finally:
            self.in_flight -= 1
        # A body that may never come whole: the connection closes after the answer, or the
        # next request's bytes would be taken for the rest of it (RFC 9112 9.6)
        close = refused_early or body_unread
        await _respond(send, out.status, out.body, AMZ_JSON, request_id, close=close)
        now = time.perf_counter()
        self.metrics.observe(out.operation, out.code, now - served_from)
        self._log_line(
            request_id, scope, user_agent, out.principal, out.operation, out.status,
            None if out.code == "OK" else out.code, now - started,
        )

    def _log_line(
        self,
        request_id: str,
        scope: Scope,
        user_agent: str,
        principal: str | None,
        operation: str,
        status: int,
        error: str | None,
        elapsed: float,
    ) -> None:
        """The one JSON line every answered API request gets (docs/server.md)."""
        if not log.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        log.info(
            json.dumps(
                {
                    "time": round(time.time(), 3),
                    "request_id": request_id,
                    "pid": self.pid,
                    "source_ip": client[0] if client else "unknown",
                    "user_agent": user_agent[:200],
                    "principal": principal,
                    "operation": operation,
                    "status": status,
                    "error": error,
                    "duration_ms": round(elapsed * 1000, 3),
                },
                separators=(",", ":"),
            )
        )

    @staticmethod
    def _context(scope: Scope, source_ip: str, user_agent: str, request_id: str) -> RequestContext:
        # what a client sends is bounded before it is written anywhere (the audit log keeps
        # every record, and an unauthenticated request is audited too)
        return RequestContext(
            source_ip=source_ip,
            user_agent=user_agent[:MAX_USER_AGENT],
            request_id=request_id,
            secure_transport=scope.get("scheme") == "https",  # uvicorn's own TLS, no proxy header
        )

    def _claimed(self, target: str | None, out: _Outcome) -> str:
        """The operation the target names, if it is one (also `out`'s), else ``unknown``."""
        claimed = ""
        if target and target.startswith(TARGET_PREFIX):
            claimed = target[len(TARGET_PREFIX) :]
        if claimed in self.wire.operations:
            out.operation = claimed
            return claimed
        return "unknown"  # never an unchecked name in the log

    def _refused(
        self, e: Exception, claimed: str, ctx: RequestContext, out: _Outcome, request_id: str
    ) -> None:
        """The authenticator's refusal (an error with code, status, message) as the answer,
        audited; anything else is an internal error. A store error met while looking up the
        caller's key (a tampered access-key row) carries a code too, but it is the operator's
        alarm, not the caller's answer: logged, and KMSInternalException to the caller."""
        code = getattr(e, "code", None)
        if isinstance(e, StoreError):
            errlog.error("store error on request %s: %s", request_id, e)
            out.fail("KMSInternalException", INTERNAL_MESSAGE)
            return
        if not isinstance(code, str):
            self._internal(out, e, request_id)
            return
        status = getattr(e, "status", None)
        out.fail(code, str(getattr(e, "message", "")), status if isinstance(status, int) else None)
        self._audit_refusal(claimed, ctx, e)

    def _headers_pass(
        self,
        headers: Sequence[tuple[str, str]],
        claimed: str,
        ctx: RequestContext,
        out: _Outcome,
        request_id: str,
    ) -> tuple[bool, object]:
        """What the authenticator can check without the body (`check_headers`), before the
        body is read: (refused, what it returned). Refused: `out` is filled."""
        assert self.check_headers is not None
        try:
            return False, self.check_headers(headers)
        except Exception as e:
            self._refused(e, claimed, ctx, out, request_id)
            return True, None

    async def _serve(
        self,
        scope: Scope,
        headers: Sequence[tuple[str, str]],
        first: Mapping[str, str],
        body: bytes,
        target: str | None,
        claimed: str,
        ctx: RequestContext,
        request_id: str,
        out: _Outcome,
        checked: object = None,
    ) -> None:
        try:
            who = self._authenticate(scope, headers, first, body, checked)
            out.principal = who if isinstance(who, str) else who.principal
            service = self._service_for(None if isinstance(who, str) else who.region)
        except WireError as e:
            out.fail(e.code, e.message, e.status)
            return
        except Exception as e:  # the authenticator's refusal: code, status, message
            self._refused(e, claimed, ctx, out, request_id)
            return
        try:
            op = self.wire.operation(target)
            kwargs = self.wire.parse(op, body)
            assert op.method is not None
            fn = getattr(service, op.method)
            if _offload(op, kwargs) or self._key_stores_defined():
                result = await anyio.to_thread.run_sync(
                    lambda: fn(principal=out.principal, context=ctx, **kwargs)
                )
            else:
                result = fn(principal=out.principal, context=ctx, **kwargs)
            out.body = self.wire.render(op, result)
        except WireError as e:
            out.fail(e.code, e.message, e.status)
        except KmsServiceError as e:
            if isinstance(e, StoreError) or e.code == "KMSInternalException":
                # the store's failures (a full disk, an unwritable WAL, corruption) are the
                # operator's to read and fix; the caller is told what AWS tells it. They went
                # to the client word for word, and the log held only the error code (review).
                errlog.error("internal error on request %s: %s", request_id, e)
                out.fail("KMSInternalException", INTERNAL_MESSAGE)
            else:
                out.fail(e.code, e.message)
        except Exception as e:
            self._internal(out, e, request_id)

    def _key_stores_defined(self) -> bool:
        """Whether the store defines a custom key store (the service reads it at most once a
        second).

        A call on a key in a custom key store waits on the HSM or on a round trip to the
        external proxy (as long as its timeout when the proxy is slow); run inline, it would
        stall every other request of this worker meanwhile. Which key a request uses is known
        only inside the call, so while any custom key store is defined every call runs on a
        worker thread, and the thread hop's cost (about 40% more server CPU) is paid only by
        the stores that have one."""
        types = getattr(self.service, "custom_key_store_types", None)
        if types is None:
            return False
        try:
            return bool(types())
        except Exception:
            return True  # unsure: the safe side is off the event loop

    def _service_for(self, region: str | None) -> KeyService:
        """The service of the Region a request was signed for: the store serves every Region
        its authenticator accepts, as AWS's Regional endpoints would (multi-Region keys and
        their replicas are reached with a client configured for each Region)."""
        if region is None or region == self.service.region:
            return self.service
        other = self._regions.get(region)
        if other is None:
            other = self._regions.setdefault(region, self.service.for_region(region))
        return other

    def _authenticate(
        self,
        scope: Scope,
        headers: Sequence[tuple[str, str]],
        first: Mapping[str, str],
        body: bytes,
        checked: object = None,
    ) -> str | Signed:
        host = first.get("host", "")
        path = scope.get("raw_path", b"/").decode("latin-1").split("?", 1)[0] or "/"
        query = scope.get("query_string", b"").decode("latin-1")
        method = scope.get("method", "POST")
        if checked is None:  # (an authenticator without check_headers takes no `checked`)
            return self.authenticate(
                method=method, host=host, path=path, query=query, headers=headers, body=body
            )
        return self.authenticate(
            method=method,
            host=host,
            path=path,
            query=query,
            headers=headers,
            body=body,
            checked=checked,
        )

    def _audit_refusal(self, operation: str, ctx: RequestContext, e: Exception) -> None:
        """Record a request refused before any principal was established (if the service can),
        within the source address's budget (`REFUSAL_AUDIT_RATE`)."""
        record = getattr(self.service, "record_unauthenticated", None)
        if record is None:
            return
        suppressed = self._refusals.admit(ctx.source_ip or "unknown")
        if suppressed is None:
            return
        try:
            record(
                operation=operation or "unknown",
                context=ctx,
                error_code=str(getattr(e, "code", "")),
                reason=str(getattr(e, "audit_message", None) or getattr(e, "message", "")),
                access_key_id=getattr(e, "access_key_id", None),
                suppressed=suppressed,
            )
        except Exception:
            errlog.exception("could not audit an unauthenticated request")

    def _internal(self, out: _Outcome, e: BaseException, request_id: str = "") -> None:
        errlog.error(
            "internal error on request %s: %s",
            request_id,
            "".join(traceback.format_exception_only(type(e), e)).strip(),
        )
        out.fail("KMSInternalException", INTERNAL_MESSAGE)


def _offload(op: Operation, kwargs: Mapping[str, Any]) -> bool:
    if op.name not in SLOW_OPERATIONS:
        return False
    if op.name == "Decrypt":
        # symmetric ciphertexts are small and fast; RSA ones need the private key
        blob = kwargs.get("ciphertext_blob", b"")
        return "encryption_algorithm" in kwargs or len(blob) > _FAST_DECRYPT_LIMIT
    if op.name == "CreateKey":
        spec = kwargs.get("key_spec") or kwargs.get("customer_master_key_spec")
        return spec not in (None, "SYMMETRIC_DEFAULT") or bool(kwargs.get("multi_region"))
    return True


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    request_id: str | None,
    *,
    close: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    if request_id is not None:
        headers.append((b"x-amzn-requestid", request_id.encode()))
    if close:  # the server closes the connection after this answer
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
