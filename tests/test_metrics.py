"""Metrics: the Observer protocol, and a real HTTP scrape of the Prometheus exporter."""

from __future__ import annotations

import inspect
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from envelope import api, sync
from envelope.errors import InvalidObjectError
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.faults import FaultyKms
from envelope.kms.memory import MemoryKms
from envelope.kms.retry import RetryingKms, RetryPolicy
from envelope.metrics import NULL_OBSERVER, NullObserver, Observer
from envelope.prometheus import LATENCY_BUCKETS, PrometheusObserver, serve_metrics

# 3 segments per object, one segment per worker batch: every segment goes through a worker.
OPTIONS = api.Options(segment_size=4096, batch_bytes=4096, workers=1)
SIZE = 10_000

Sample = tuple[str, tuple[tuple[str, str], ...]]


def test_null_observer_implements_every_event() -> None:
    events = {
        name
        for name, _ in inspect.getmembers(Observer, inspect.isfunction)
        if not name.startswith("_")
    }
    assert {"object_started", "object_finished", "batch_processed"} <= events
    assert {"kms_call_finished", "kms_retry", "cache_lookup", "cache_eviction"} <= events
    for name in events:
        fn = getattr(NullObserver, name)
        assert inspect.signature(fn) == inspect.signature(getattr(Observer, name)), name
    _: Observer = NULL_OBSERVER
    __: Observer = PrometheusObserver(CollectorRegistry())


def test_sub_millisecond_buckets() -> None:
    assert LATENCY_BUCKETS[0] < 0.0001 and sum(b < 0.001 for b in LATENCY_BUCKETS) >= 5


def test_observers_on_one_registry_share_collectors() -> None:
    registry = CollectorRegistry()
    PrometheusObserver(registry).object_started("encrypt")
    PrometheusObserver(registry).object_started("encrypt")
    assert registry.get_sample_value("envelope_objects_in_flight", {"direction": "encrypt"}) == 2
    PrometheusObserver()  # the global registry, twice: no duplicate-registration error
    PrometheusObserver()


def _scrape(url: str) -> tuple[str, dict[Sample, float]]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        ctype = resp.headers["Content-Type"]
        text = resp.read().decode("utf-8")
    values: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return ctype, values


class Scraper:
    def __init__(self, url: str) -> None:
        self.url = url
        self.base: dict[Sample, float] = {}
        self.now: dict[Sample, float] = {}

    async def scrape(self) -> None:
        ctype, self.now = await anyio.to_thread.run_sync(_scrape, self.url)
        assert ctype.startswith("text/plain") and "version=0.0.4" in ctype

    def delta(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return self.now.get(key, 0.0) - self.base.get(key, 0.0)


@pytest.mark.anyio
async def test_http_scrape_shows_exact_counts() -> None:
    registry = CollectorRegistry()
    obs = PrometheusObserver(registry)
    server = serve_metrics(0, registry=registry)
    try:
        assert server.addr == "127.0.0.1" and server.port > 0
        kms = MemoryKms()
        key_id = kms.create_key()
        flaky = FaultyKms(kms, script=["throttle"])  # the first KMS call is throttled once

        async def no_sleep(_: float) -> None:
            await anyio.lowlevel.checkpoint()

        backend = RetryingKms(flaky, RetryPolicy(), sleep=no_sleep, observer=obs)
        kr = Keyring(backend, key_id, cache=CachePolicy(), observer=obs)
        scraper = Scraper(server.url)
        await scraper.scrape()
        scraper.base = scraper.now

        data = [bytes([i]) * SIZE for i in range(20)]
        cts = [
            await api.encrypt_bytes(d, keyring=kr, options=OPTIONS, observer=obs) for d in data[:10]
        ]

        await scraper.scrape()  # during the job
        d = scraper.delta
        assert d("envelope_objects_total", direction="encrypt", outcome="ok") == 10
        assert d("envelope_bytes_total", direction="encrypt") == 10 * SIZE
        assert d("envelope_segments_total", direction="encrypt") == 30
        assert d("envelope_segment_seconds_count", direction="encrypt") == 30
        assert d("envelope_objects_in_flight", direction="encrypt") == 0
        calls = "envelope_kms_calls_total"
        assert d(calls, backend="memory", operation="GenerateDataKey", outcome="throttled") == 1
        assert d(calls, backend="memory", operation="GenerateDataKey", outcome="ok") == 1
        assert d("envelope_kms_throttles_total", backend="memory", operation="GenerateDataKey") == 1
        assert (
            d(
                "envelope_kms_retries_total",
                backend="memory",
                operation="GenerateDataKey",
                reason="throttled",
            )
            == 1
        )
        assert (
            d("envelope_kms_call_seconds_count", backend="memory", operation="GenerateDataKey") == 2
        )
        assert d("envelope_cache_misses_total", cache="encrypt") == 1
        assert d("envelope_cache_hits_total", cache="encrypt") == 9
        assert d("envelope_cache_entries", cache="encrypt") == 1

        cts += [
            await api.encrypt_bytes(x, keyring=kr, options=OPTIONS, observer=obs) for x in data[10:]
        ]
        for ct, x in zip(cts, data, strict=True):
            assert await api.decrypt_bytes(ct, keyring=kr, options=OPTIONS, observer=obs) == x
        with pytest.raises(InvalidObjectError):  # a damaged object is counted as an error
            await api.decrypt_bytes(cts[0][:-1], keyring=kr, options=OPTIONS, observer=obs)

        await scraper.scrape()  # after the job
        assert d("envelope_objects_total", direction="encrypt", outcome="ok") == 20
        assert d("envelope_bytes_total", direction="encrypt") == 20 * SIZE
        assert d("envelope_objects_total", direction="decrypt", outcome="ok") == 20
        assert d("envelope_objects_total", direction="decrypt", outcome="error") == 1
        assert d("envelope_bytes_total", direction="decrypt") == 20 * SIZE
        assert d(calls, backend="memory", operation="GenerateDataKey", outcome="ok") == 1
        assert d(calls, backend="memory", operation="Decrypt", outcome="ok") == 1
        assert d("envelope_cache_hits_total", cache="encrypt") == 19
        assert d("envelope_cache_misses_total", cache="decrypt") == 1
        assert d("envelope_cache_hits_total", cache="decrypt") == 20  # 19 + the damaged object
        assert d("envelope_cache_entries", cache="decrypt") == 1
        assert d("envelope_kms_in_flight", backend="memory") == 0
        assert d("envelope_objects_in_flight", direction="decrypt") == 0
        assert kms.calls["GenerateDataKey"] == 1 and kms.calls["Decrypt"] == 1

        assert kr.cache is not None
        kr.cache.clear()
        await scraper.scrape()
        assert d("envelope_cache_evictions_total", cache="encrypt", reason="cleared") == 1
        assert d("envelope_cache_entries", cache="encrypt") == 0
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError):
        _scrape(server.url)
    server.close()  # idempotent


def test_dashboard_queries_only_exported_metrics() -> None:
    """Every metric the Grafana dashboard queries is one the exporter produces."""
    registry = CollectorRegistry()
    o = PrometheusObserver(registry)
    o.object_started("encrypt")
    o.object_finished("encrypt", 1, True)
    o.batch_processed("encrypt", 1, 0.0001)
    o.kms_call_started("memory", "Decrypt")
    o.kms_call_finished("memory", "Decrypt", "throttled", 0.0001)
    o.kms_retry("memory", "Decrypt", "throttled", 1, 0.1)
    o.kms_gave_up("memory", "Decrypt", "budget")
    o.cache_lookup("decrypt", True)
    o.cache_lookup("decrypt", False)
    o.cache_eviction("decrypt", "expired")
    o.cache_refresh("decrypt", True)
    o.cache_entries("decrypt", 1)
    exported = {s.name for family in registry.collect() for s in family.samples}
    path = Path(__file__).resolve().parent.parent / "configs" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"envelope_[a-z_]+", target["expr"])
    }
    assert len(queried) >= 15
    assert queried <= exported, queried - exported


def test_two_caches_on_one_registry_add_up_their_entries() -> None:
    """Observers on one registry share collectors, and each cache set the gauge to its own
    count: two keyrings with 3 and 1 live keys showed 1 (review). The gauge sums now."""
    registry = CollectorRegistry()
    kms = MemoryKms()
    a = Keyring(kms, kms.create_key(), cache=CachePolicy(), observer=PrometheusObserver(registry))
    b = Keyring(kms, kms.create_key(), cache=CachePolicy(), observer=PrometheusObserver(registry))
    for i in range(3):
        sync.encrypt_bytes(b"x", keyring=a, kms_context={"n": str(i)})
    sync.encrypt_bytes(b"x", keyring=b)

    def entries() -> float | None:
        return registry.get_sample_value("envelope_cache_entries", {"cache": "encrypt"})

    assert entries() == 4
    assert b.cache is not None
    b.cache.clear()
    assert entries() == 3


def test_the_series_alerts_watch_exist_before_their_first_event() -> None:
    """A labelled counter born at 1 shows no increase(), so the documented alerts
    (increase(envelope_kms_gave_up_total[5m]) > 0, refreshes with outcome="error") missed a
    process's first event (review): the series exist at 0 from the observer's (cache) or the
    backend's first call (KMS)."""
    registry = CollectorRegistry()
    o = PrometheusObserver(registry)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("envelope_cache_refreshes_total", cache="encrypt", outcome="error") == 0
    assert value("envelope_cache_evictions_total", cache="decrypt", reason="capacity") == 0
    call = {"backend": "aws", "operation": "Decrypt"}
    assert value("envelope_kms_gave_up_total", **call, reason="budget") is None
    o.kms_call_started("aws", "Decrypt")
    o.kms_call_finished("aws", "Decrypt", "ok", 0.001)
    for reason in ("attempts", "budget", "deadline"):
        assert value("envelope_kms_gave_up_total", **call, reason=reason) == 0
    assert value("envelope_kms_retries_total", **call, reason="throttled") == 0
    assert value("envelope_kms_throttles_total", **call) == 0


def test_a_forked_child_s_entries_gauge_starts_from_its_empty_cache() -> None:
    """After os.fork() the child's cache starts empty, but the gauge it inherited (a sum of
    deltas) kept the parent's count for ever (diff review)."""
    import os

    registry = CollectorRegistry()
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy(), observer=PrometheusObserver(registry))
    sync.encrypt_bytes(b"x", keyring=kr)

    def entries() -> float | None:
        return registry.get_sample_value("envelope_cache_entries", {"cache": "encrypt"})

    assert entries() == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the gauge, then leave at once
        os.write(write, str(entries()).encode())
        os._exit(0)
    os.close(write)
    got = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert got == "0.0" and entries() == 1
