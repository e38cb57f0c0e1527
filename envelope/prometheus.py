"""Prometheus metrics for the whole pipeline: an `Observer` over prometheus-client.

    obs = PrometheusObserver()                       # registers in prometheus_client.REGISTRY
    handle = serve_metrics(9464)                     # GET http://127.0.0.1:9464/metrics
    kr = Keyring(kms, key_id, cache=CachePolicy(), retry=RetryPolicy(), observer=obs)
    await encrypt_bytes(data, keyring=kr, observer=obs)
    handle.close()

The core never imports this module; only code that wants Prometheus does. Metric names (all
prefixed `envelope_`, see docs/metrics.md for the full list and PromQL examples):

    objects_total{direction,outcome}          bytes_total{direction}
    objects_in_flight{direction}              segments_total{direction}
    segment_seconds{direction}                (histogram: mean seal/open time per segment)
    batch_seconds{direction}                  (histogram: one worker hop)
    kms_calls_total{backend,operation,outcome}   kms_call_seconds{backend,operation}
    kms_in_flight{backend}                    kms_throttles_total{backend,operation}
    kms_retries_total{backend,operation,reason}  kms_retry_sleep_seconds_total{backend}
    kms_gave_up_total{backend,operation,reason}
    cache_hits_total{cache}    cache_misses_total{cache}    cache_evictions_total{cache,reason}
    cache_refreshes_total{cache,outcome}      cache_entries{cache}

Label values are fixed vocabularies (directions, operation names, outcomes) and backend names,
never key ids, contexts or anything secret, so cardinality stays bounded.
"""

from __future__ import annotations

import threading
import weakref
from typing import Final, get_args
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from .metrics import (
    CacheName,
    Direction,
    EvictionReason,
    GiveUpReason,
    KmsOutcome,
    RetryReason,
)

__all__ = ("LATENCY_BUCKETS", "MetricsServer", "PrometheusObserver", "serve_metrics")

#: Seconds. KMS calls to an in-process or nearby KMS take 20-250 us and one segment seals in
#: tens of microseconds, so the buckets start well below a millisecond (the client's default
#: buckets start at 5 ms and would put everything in the first bucket).
LATENCY_BUCKETS: Final = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _Metrics:
    """The collectors, registered once per registry."""

    def __init__(self, registry: CollectorRegistry, ns: str) -> None:
        r = registry
        self.objects = Counter(
            "objects", "Objects processed, by outcome.", ["direction", "outcome"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.bytes = Counter(
            "bytes", "Plaintext bytes of objects that succeeded.", ["direction"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "objects_in_flight", "Objects being encrypted or decrypted now.", ["direction"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.segments = Counter(
            "segments", "Segments sealed or opened.", ["direction"], namespace=ns, registry=r
        )
        self.segment_seconds = Histogram(
            "segment_seconds", "Mean seal/open time per segment, one sample per worker batch.",
            ["direction"], buckets=LATENCY_BUCKETS, namespace=ns, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "batch_seconds", "Duration of one worker batch of segments.", ["direction"],
            buckets=LATENCY_BUCKETS, namespace=ns, registry=r,
        )  # fmt: skip
        self.kms_calls = Counter(
            "kms_calls", "KMS backend calls (every attempt), by outcome.",
            ["backend", "operation", "outcome"], namespace=ns, registry=r,
        )  # fmt: skip
        self.kms_seconds = Histogram(
            "kms_call_seconds", "Duration of one KMS backend attempt.", ["backend", "operation"],
            buckets=LATENCY_BUCKETS, namespace=ns, registry=r,
        )  # fmt: skip
        self.kms_in_flight = Gauge(
            "kms_in_flight", "KMS backend calls in progress.", ["backend"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.throttles = Counter(
            "kms_throttles", "KMS calls answered with throttling.", ["backend", "operation"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "kms_retries", "Retries of KMS calls, by the error that caused them.",
            ["backend", "operation", "reason"], namespace=ns, registry=r,
        )  # fmt: skip
        self.retry_sleep = Counter(
            "kms_retry_sleep_seconds", "Time spent backing off before retries.", ["backend"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.gave_up = Counter(
            "kms_gave_up", "KMS calls that failed after the retry layer gave up.",
            ["backend", "operation", "reason"], namespace=ns, registry=r,
        )  # fmt: skip
        self.hits = Counter(
            "cache_hits", "Data-key cache hits.", ["cache"], namespace=ns, registry=r
        )
        self.misses = Counter(
            "cache_misses", "Data-key cache misses (each one a KMS request).", ["cache"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.evictions = Counter(
            "cache_evictions", "Data-key cache entries retired (and zeroed), by reason.",
            ["cache", "reason"], namespace=ns, registry=r,
        )  # fmt: skip
        self.refreshes = Counter(
            "cache_refreshes", "Refreshes ahead of expiry, by outcome.", ["cache", "outcome"],
            namespace=ns, registry=r,
        )  # fmt: skip
        self.entries = Gauge(
            "cache_entries", "Live data-key cache entries.", ["cache"], namespace=ns, registry=r
        )
        # Every series an alert may watch exists at 0 before its first event: a series born
        # at 1 shows no increase(), so "gave up > 0 in 5 m" missed a process's first give-up.
        # The cache's labels are known now; a backend's and operation's at its first call.
        for cache in get_args(CacheName):
            for counter in (self.hits, self.misses, self.entries):
                counter.labels(cache)
            for reason in get_args(EvictionReason):
                self.evictions.labels(cache, reason)
            for outcome in ("ok", "error"):
                self.refreshes.labels(cache, outcome)
        self._kms_seen: set[tuple[str, str]] = set()

    def kms_series(self, backend: str, operation: str) -> None:
        """Create the KMS series of (`backend`, `operation`) at 0, once (its first call)."""
        if (backend, operation) in self._kms_seen:
            return
        self._kms_seen.add((backend, operation))
        for outcome in get_args(KmsOutcome):
            self.kms_calls.labels(backend, operation, outcome)
        self.throttles.labels(backend, operation)
        for retry in get_args(RetryReason):
            self.retries.labels(backend, operation, retry)
        for gave_up in get_args(GiveUpReason):
            self.gave_up.labels(backend, operation, gave_up)
        self.retry_sleep.labels(backend)


# Collectors per registry and namespace (weakly keyed: a dropped registry takes its own along).
_registered: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metrics]] = (
    weakref.WeakKeyDictionary()
)
_registered_lock = threading.Lock()


class PrometheusObserver:
    """An `envelope.metrics.Observer` that updates Prometheus collectors.

    `registry` defaults to prometheus_client's global REGISTRY (what `serve_metrics` serves).
    Observers built on the same registry share one set of collectors, so building several is
    harmless.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, namespace: str = "envelope"
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        with _registered_lock:
            spaces = _registered.setdefault(self.registry, {})
            metrics = spaces.get(namespace)
            if metrics is None:
                metrics = spaces[namespace] = _Metrics(self.registry, namespace)
        self._m = metrics

    def __repr__(self) -> str:
        return "PrometheusObserver()"

    # -- engine -----------------------------------------------------------------------------

    def object_started(self, direction: Direction) -> None:
        self._m.in_flight.labels(direction).inc()

    def object_finished(self, direction: Direction, plaintext_bytes: int, ok: bool) -> None:
        m = self._m
        m.in_flight.labels(direction).dec()
        m.objects.labels(direction, "ok" if ok else "error").inc()
        if ok and plaintext_bytes:
            m.bytes.labels(direction).inc(plaintext_bytes)

    def batch_processed(self, direction: Direction, segments: int, seconds: float) -> None:
        m = self._m
        m.segments.labels(direction).inc(segments)
        m.batch_seconds.labels(direction).observe(seconds)
        if segments > 0:
            m.segment_seconds.labels(direction).observe(seconds / segments)

    # -- KMS --------------------------------------------------------------------------------

    def kms_call_started(self, backend: str, operation: str) -> None:
        self._m.kms_series(backend, operation)
        self._m.kms_in_flight.labels(backend).inc()

    def kms_call_finished(
        self, backend: str, operation: str, outcome: KmsOutcome, seconds: float
    ) -> None:
        m = self._m
        m.kms_in_flight.labels(backend).dec()
        m.kms_calls.labels(backend, operation, outcome).inc()
        m.kms_seconds.labels(backend, operation).observe(seconds)
        if outcome == "throttled":
            m.throttles.labels(backend, operation).inc()

    def kms_retry(
        self, backend: str, operation: str, reason: RetryReason, attempt: int, delay: float
    ) -> None:
        self._m.retries.labels(backend, operation, reason).inc()
        self._m.retry_sleep.labels(backend).inc(delay)

    def kms_gave_up(self, backend: str, operation: str, reason: GiveUpReason) -> None:
        self._m.gave_up.labels(backend, operation, reason).inc()

    # -- cache ------------------------------------------------------------------------------

    def cache_lookup(self, cache: CacheName, hit: bool) -> None:
        (self._m.hits if hit else self._m.misses).labels(cache).inc()

    def cache_eviction(self, cache: CacheName, reason: EvictionReason) -> None:
        self._m.evictions.labels(cache, reason).inc()

    def cache_refresh(self, cache: CacheName, ok: bool) -> None:
        self._m.refreshes.labels(cache, "ok" if ok else "error").inc()

    def cache_entries(self, cache: CacheName, count: int) -> None:
        # one cache's count: observers share their collectors (one registry), so several
        # caches report here and a set() would keep only the last; the gauge sums the deltas
        return None

    def cache_entries_changed(self, cache: CacheName, delta: int) -> None:
        self._m.entries.labels(cache).inc(delta)


class MetricsServer:
    """A running /metrics endpoint; `close()` stops it (idempotent)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, addr: str, port: int) -> None:
        self._server: WSGIServer | None = server
        self._thread = thread
        self.addr = addr
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def __repr__(self) -> str:
        return f"MetricsServer({self.url})"

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(
    port: int, addr: str = "127.0.0.1", *, registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve `registry` (default: the global REGISTRY) at http://addr:port/metrics.

    Loopback by default: metrics reveal traffic patterns, so exposing them is a choice.
    Port 0 picks a free port; the handle's `port` says which.
    """
    server, thread = start_http_server(
        port, addr=addr, registry=registry if registry is not None else REGISTRY
    )
    return MetricsServer(server, thread, addr, int(server.server_address[1]))
