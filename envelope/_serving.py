"""What the two HTTP servers (`envelope serve`, `envelope xks serve`) share: per-request
metrics and running uvicorn.

Both are ASGI apps under uvicorn with optional workers, count requests by operation and
outcome, and time them with sub-millisecond buckets; one implementation of each keeps their
behaviour the same (the TCP_NODELAY fix below was found once and applies to both).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import shutil
import socket
import ssl
import stat
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from .errors import ConfigurationError
from .prometheus import LATENCY_BUCKETS

__all__ = (
    "ListenSettings",
    "RequestMetrics",
    "base_options",
    "decode_headers",
    "run_uvicorn",
    "serve_with",
)


def decode_headers(
    raw: Iterable[tuple[bytes, bytes]],
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """An ASGI scope's headers as text (latin-1, as HTTP/1.1 carries them; names lower-cased),
    and the first value of each name: one pass for everything a request reads (SigV4 needs
    them all, in order; routing needs a few by name)."""
    headers: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    for k, v in raw:
        name = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        headers.append((name, value))
        if name not in first:
            first[name] = value
    return headers, first


class RequestMetrics:
    """A request counter by operation and outcome, and a latency histogram by operation.

    Label values are fixed vocabularies (operation names, error codes), so cardinality stays
    bounded. With several workers and ``$PROMETHEUS_MULTIPROC_DIR`` set, every process writes
    its own files and `exposition` merges them (prometheus-client's multiprocess mode); alone,
    it also shows the default registry, where the HSM token's and XKS client's call
    histograms live.
    """

    def __init__(
        self,
        *,
        requests: tuple[str, str],
        latency: tuple[str, str],
        outcome_label: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            requests[0], requests[1], ("operation", outcome_label), registry=self.registry
        )
        self.latency = Histogram(
            latency[0],
            latency[1],
            ("operation",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # the labelled children, looked up once per label set (`labels()` costs as much as
        # the update itself)
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        counter = self._counters.get((operation, outcome))
        if counter is None:
            counter = self._counters[(operation, outcome)] = self.requests.labels(
                operation, outcome
            )
        histogram = self._histograms.get(operation)
        if histogram is None:
            histogram = self._histograms[operation] = self.latency.labels(operation)
        counter.inc()
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry) + generate_latest(REGISTRY)


#: Seconds within which a request's headers must arrive whole: each worker sets its server's
#: setting (`set_header_timeout`) before it serves; the HTTP protocol reads it per connection.
header_timeout_seconds = 10.0
#: The most bytes a request's start line and headers may take (a SigV4 request with a session
#: token needs a few KiB).
MAX_HEADER_BYTES = 64 * 1024
#: The most bytes of a body answered before it was read whole (over the size limit) that a
#: connection drops to serve the client's next request; beyond, it is closed.
MAX_DRAIN_BYTES = 16 * 1024 * 1024


def set_header_timeout(seconds: float) -> None:
    """This worker's header deadline (`envelope.server.protocol`), from its settings."""
    global header_timeout_seconds
    header_timeout_seconds = float(seconds)


class ClientGone(Exception):
    """The client closed the connection before its request's body was whole."""


class BodyTooLarge(Exception):
    """The request's body is over the limit (it was not read further)."""


async def read_body(receive: Any, declared: str | None, limit: int, seconds: float) -> bytes:
    """A request's whole body, for both servers: `BodyTooLarge` past `limit` bytes (by its
    Content-Length or as it arrives), `ClientGone` if the client leaves first (a partial body
    is never served), `TimeoutError` if it takes more than `seconds` (a client that
    trickles it would hold the socket)."""
    import anyio

    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    with anyio.fail_after(seconds):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


#: Open connections per worker process before new ones are answered 503.
MAX_CONNECTIONS_PER_WORKER = 2048


class InsecureTlsKeyWarning(UserWarning):
    """The server's TLS private key file can be read by group or others."""


_WARNED_KEYS: set[str] = set()


def check_tls(options: Mapping[str, Any]) -> None:
    """The TLS files of `options` load, before any worker starts: a certificate whose key does
    not match made each worker fail as it started, and uvicorn start it again, for ever."""
    cert, key = options.get("ssl_certfile"), options.get("ssl_keyfile")
    client_ca = options.get("ssl_ca_certs")
    for path in (cert, key, client_ca):
        if path is not None and not os.path.isfile(path):
            raise ConfigurationError(f"TLS file {path} does not exist")
    if key is not None and key not in _WARNED_KEYS:
        mode = stat.S_IMODE(os.stat(key).st_mode)
        if mode & 0o077:
            _WARNED_KEYS.add(key)  # (checked again as uvicorn starts: said once)
            warnings.warn(
                InsecureTlsKeyWarning(
                    f"TLS private key {key} is accessible by group or others (mode {mode:04o}): "
                    f"anyone who can read it can pose as this server: chmod 600 {key}"
                ),
                stacklevel=2,
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if cert is not None:
        asked: list[bool] = []

        def no_passphrase() -> bytes:
            # OpenSSL asks only for an encrypted key; it prompted on the terminal (three
            # times, once per load) and failed with "Invalid argument" without one (review)
            asked.append(True)
            return b""

        try:
            context.load_cert_chain(cert, key, password=no_passphrase)
        except (OSError, ssl.SSLError) as e:
            if asked:
                raise ConfigurationError(
                    f"the TLS private key {key or cert} is encrypted with a passphrase, which "
                    "the server has no setting for: decrypt it (openssl pkey -in KEY -out "
                    "PLAIN.pem) and keep the plain key readable by the server's user alone"
                ) from None
            raise ConfigurationError(
                f"the TLS certificate {cert} and key {key} do not load as a pair: {e}"
            ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigurationError(
                f"the TLS client CA file {client_ca} does not load: {e}"
            ) from None


def run_uvicorn(app_factory: str, options: dict[str, Any], what: str) -> None:
    """Run `app_factory` ("module:function") under uvicorn with `options`.

    With several workers, uvicorn binds the shared socket itself with protocol 0, and asyncio
    sets TCP_NODELAY only on sockets whose protocol is IPPROTO_TCP: every response (headers and
    body are two writes) then waited for the client's delayed ACK, about 40 ms a call. Linux
    copies TCP_NODELAY from the listening socket to the connections it accepts, so it is set
    there.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    check_tls(options)
    config = uvicorn.Config(app_factory, **options)
    server = uvicorn.Server(config)
    failed = ConfigurationError(
        f"{what} could not start on {config.host}:{config.port} (see above)"
    )
    try:
        if config.workers > 1:
            try:
                sock = config.bind_socket()
            except SystemExit:  # uvicorn has logged why it cannot bind, and exits
                raise failed from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kwargs: dict[str, Any] = {"sockets": [sock]}
            if "target" in inspect.signature(Multiprocess).parameters:
                kwargs["target"] = server.run
            supervisor = Multiprocess(config, **kwargs)
            supervisor.run()
            if any(_start_failed(p) for p in getattr(supervisor, "processes", ())):
                # a worker (re)started and could not serve: the supervisor stopped the server,
                # which must not exit 0 (a service manager would not restart it)
                raise ConfigurationError(f"{what} stopped: a worker could not start (see above)")
            return
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the signal it handled once the shutdown is complete
    except SystemExit:  # uvicorn exits with its own code (3) when it cannot bind or start
        if server.started:
            raise
    if config.workers == 1 and not server.started:
        raise failed


@contextmanager
def worker_start(what: str) -> Iterator[None]:
    """Around what a worker opens as it starts (its store, its token): a failure there exits
    the worker with uvicorn's start-up failure code, after one line saying why.

    uvicorn restarts a worker that died (an OOM kill, a crash); if what it opens has gone
    since (the store moved, the disk read-only, the token removed), the new worker fails the
    same way. It exited 1, which uvicorn restarted for ever (453 restarts and 1 MB of
    tracebacks in 25 s, the parent alive, then exiting 0 so that no service manager restarted
    it); on the start-up failure code the supervisor stops the server (`run_uvicorn` then
    exits non-zero)."""
    try:
        yield
    except Exception as e:
        from uvicorn.config import STARTUP_FAILURE

        logging.getLogger("uvicorn.error").error("%s: a worker cannot start: %s", what, e)
        sys.exit(STARTUP_FAILURE)


def _start_failed(process: Any) -> bool:
    """Whether a uvicorn worker process exited with uvicorn's start-up failure code."""
    from uvicorn.config import STARTUP_FAILURE

    return getattr(process, "exitcode", None) == STARTUP_FAILURE


class ListenSettings(Protocol):
    """What both servers' settings say about listening (`ServerSettings`, `XksSettings`)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def log_level(self) -> str: ...
    @property
    def workers(self) -> int: ...
    @property
    def graceful_shutdown_seconds(self) -> float: ...
    @property
    def tls_cert(self) -> str | None: ...
    @property
    def tls_key(self) -> str | None: ...


def base_options(settings: ListenSettings) -> dict[str, Any]:
    """The uvicorn options both servers start from: the app factory, no access log (each app
    writes one structured line per request), no Server header, the corked HTTP protocol (one
    write per response), graceful shutdown, workers and TLS."""
    host, port, log_level = settings.host, settings.port, settings.log_level
    workers, graceful_shutdown_seconds = settings.workers, settings.graceful_shutdown_seconds
    tls_cert, tls_key = settings.tls_cert, settings.tls_key
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": False,
        "lifespan": "on",
        "server_header": False,
        "http": "envelope.server.protocol:CorkedHTTPProtocol",
        # uvicorn takes whole seconds, and reads 0 (or None) as "wait for ever"
        "timeout_graceful_shutdown": max(1, math.ceil(graceful_shutdown_seconds)),
        # connections (and requests) per worker past which uvicorn answers 503 at once:
        # clients that hold sockets cannot use up the process's file descriptors
        "limit_concurrency": MAX_CONNECTIONS_PER_WORKER,
        # The client address is the socket's peer, never a header: uvicorn otherwise takes
        # X-Forwarded-For from loopback peers, so any local client could choose the address
        # that aws:SourceIp conditions test and the audit log records.
        "proxy_headers": False,
    }
    if workers > 1:
        options["workers"] = workers
    if tls_cert is not None:
        options["ssl_certfile"] = tls_cert
        options["ssl_keyfile"] = tls_key
    return options


def serve_with(app_factory: str, options: dict[str, Any], what: str, metrics_prefix: str) -> None:
    """`run_uvicorn`, with a private Prometheus multiprocess folder for several workers (unless
    ``$PROMETHEUS_MULTIPROC_DIR`` names one), removed afterwards."""
    metrics_dir: str | None = None
    if options.get("workers", 1) > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix=metrics_prefix)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        run_uvicorn(app_factory, options, what)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
