"""KMS latency, throughput and cost against any backend, and what the data-key cache saves.

1. `latency`: GenerateDataKey and Decrypt called back to back by 1..N concurrent callers for
   a fixed time each: calls per second and latency percentiles (p50, p90, p99, p99.9).
2. `job`: the same job of M objects encrypted (then decrypted) with the data-key cache and
   without it: KMS calls counted at the backend, objects per second, what those calls cost at
   a price per 10,000 requests (default the AWS list price, USD 0.03) and the headroom
   against a request quota (default 5,500/s, where AWS's shared quota for these calls
   starts): `headroom` is the quota over the job's KMS requests per second, i.e. how many
   such jobs could run at once. `promised_kms_calls` is what the cache policy promises for
   the job (`cache_promise`): the measured count must equal it.

The backend is anything a key URI names (embedded, `envelope serve`, AWS KMS); `FaultyKms`
can add latency to see what a remote KMS would do to a job.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from .. import api
from ..keycache import CachePolicy
from ..keyring import Keyring
from ..kms.base import DataKey, KmsBackend, WrappedKey
from .timing import Progress, no_progress, percentile

__all__ = ("CountingKms", "cache_promise", "job", "latency", "measure", "precise_sleep")

#: AWS KMS list price (USD per 10,000 symmetric requests) and its lowest shared quota for
#: cryptographic operations (requests per second), both as of 2025.
DEFAULT_PRICE_PER_10K = 0.03
DEFAULT_QUOTA_PER_S = 5500.0

CONTEXT: Mapping[str, str] = {"purpose": "envelope-bench"}


class CountingKms:
    """A backend wrapper that counts the calls that reach `inner` (what the KMS bills)."""

    def __init__(self, inner: KmsBackend) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    @property
    def provider_id(self) -> str:
        return self.inner.provider_id

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        self.calls["GenerateDataKey"] += 1
        return await self.inner.generate_data_key(key_id, context=context)

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        self.calls["Encrypt"] += 1
        return await self.inner.encrypt_data_key(key_id, plaintext, context=context)

    async def decrypt_data_key(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        self.calls["Decrypt"] += 1
        return await self.inner.decrypt_data_key(wrapped, context=context)

    def can_unwrap(self, wrapped: WrappedKey) -> bool:
        return self.inner.can_unwrap(wrapped)

    async def aclose(self) -> None:
        return None  # the caller owns `inner`


async def precise_sleep(seconds: float) -> None:
    """Sleep `seconds` to within a few microseconds: the event loop's own timers wake up to a
    millisecond late (epoll's timeout is in whole ms), which would add 10-20% to an injected
    5 ms. The last 2 ms are spent yielding to the loop until the deadline."""
    deadline = time.perf_counter() + seconds
    if seconds > 0.002:
        await anyio.sleep(seconds - 0.002)
    while time.perf_counter() < deadline:
        await anyio.lowlevel.checkpoint()


async def _timed_calls(
    op: str, backend: KmsBackend, key_id: str, wrapped: WrappedKey, callers: int, seconds: float
) -> tuple[list[float], int, float]:
    """Per-call latencies (s), errors and wall time of `callers` loops calling for `seconds`.

    Each caller is a thread with an event loop of its own, as separate clients are: a backend
    that never yields to its loop (the embedded KMS, a key file) left tasks of one loop taking
    turns, the first running alone until the deadline, so every concurrency measured one."""
    samples: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                if op == "generate_data_key":
                    (await backend.generate_data_key(key_id, context=CONTEXT)).wipe()
                else:
                    (await backend.decrypt_data_key(wrapped, context=CONTEXT))[:] = bytes(32)
            except Exception:  # a benchmark counts failures instead of stopping at one
                with lock:
                    errors[0] += 1
                await anyio.lowlevel.checkpoint()
                continue
            took = time.perf_counter() - t0
            with lock:
                samples.append(took)

    limiter = anyio.CapacityLimiter(callers)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(partial(anyio.to_thread.run_sync, anyio.run, caller, limiter=limiter))
    return samples, errors[0], time.perf_counter() - start


async def latency(
    backend: KmsBackend,
    key_id: str,
    *,
    concurrency: list[int],
    seconds: float,
    progress: Progress = no_progress,
) -> list[dict[str, Any]]:
    """One row per operation and number of concurrent callers (keys: docs/bench.md)."""
    dk = await backend.generate_data_key(key_id, context=CONTEXT)
    wrapped = dk.wrapped
    dk.wipe()
    rows = []
    steps = [(op, c) for op in ("generate_data_key", "decrypt") for c in concurrency]
    for i, (op, callers) in enumerate(steps):
        await _timed_calls(op, backend, key_id, wrapped, callers, min(0.05, seconds))  # warm
        samples, errors, wall = await _timed_calls(op, backend, key_id, wrapped, callers, seconds)
        samples.sort()
        ms = [s * 1e3 for s in samples]
        rows.append(
            {
                "operation": op,
                "concurrency": callers,
                "calls": len(ms),
                "errors": errors,
                "per_s": len(ms) / wall,
                "mean_ms": sum(ms) / len(ms) if ms else math.nan,
                "p50_ms": percentile(ms, 50),
                "p90_ms": percentile(ms, 90),
                "p99_ms": percentile(ms, 99),
                "p999_ms": percentile(ms, 99.9),
                "max_ms": ms[-1] if ms else math.nan,
            }
        )
        progress(i + 1, len(steps))
    return rows


def cache_promise(policy: CachePolicy, objects: int, object_size: int) -> int:
    """GenerateDataKey calls the cache promises for `objects` objects of `object_size` bytes
    encrypted under one key and context within one TTL: a data key serves `max_objects`
    objects, and no more plaintext bytes than `max_bytes` (each object charged up front)."""
    per_key = policy.max_objects
    if object_size > 0:
        per_key = min(per_key, max(1, policy.max_bytes // object_size))
    return math.ceil(objects / per_key)


def _shortest_ttl(policy: CachePolicy) -> float:
    """The earliest an entry can expire or start refreshing (jitter only shortens a TTL)."""
    ttl = min(policy.ttl, policy.decrypt_ttl) * (1.0 - policy.ttl_jitter)
    return max(ttl / 2, ttl - policy.refresh_ahead)


async def _one_job(
    backend: KmsBackend,
    key_id: str,
    cache: CachePolicy | None,
    objects: int,
    object_size: int,
    concurrency: int,
    price_per_10k: float,
    quota_per_s: float,
) -> dict[str, Any]:
    counting = CountingKms(backend)
    data = os.urandom(object_size)
    sealed: list[bytes] = [b""] * objects
    limiter = anyio.CapacityLimiter(concurrency)

    async def run(fn: Any) -> float:
        async def one(i: int) -> None:
            async with limiter:
                await fn(i)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(objects):
                tg.start_soon(one, i)
        return time.perf_counter() - t0

    writer = Keyring(counting, key_id, cache=cache)

    async def seal(i: int) -> None:
        sealed[i] = bytes(await api.encrypt_bytes(data, keyring=writer, kms_context=CONTEXT))

    enc_s = await run(seal)
    reader = Keyring(counting, cache=cache)  # a new process reading: its own cache

    async def check(i: int) -> None:
        if await api.decrypt_bytes(sealed[i], keyring=reader) != data:
            raise AssertionError("KMS job round trip failed")

    dec_s = await run(check)
    gdk, dec = counting.calls["GenerateDataKey"], counting.calls["Decrypt"]
    calls = gdk + dec
    rate = gdk / enc_s
    row: dict[str, Any] = {
        "cache": cache is not None,
        "objects": objects,
        "object_size": object_size,
        "concurrency": concurrency,
        "generate_data_key_calls": gdk,
        "decrypt_calls": dec,
        "kms_calls": calls,
        "promised_kms_calls": None,
        "encrypt_objects_per_s": objects / enc_s,
        "decrypt_objects_per_s": objects / dec_s,
        "encrypt_kms_requests_per_s": rate,
        "cost_usd": calls * price_per_10k / 10_000,
        "cost_per_million_objects_usd": calls / objects * 1e6 * price_per_10k / 10_000,
        "headroom": quota_per_s / rate if rate else math.inf,
    }
    if cache is not None and max(enc_s, dec_s) < _shortest_ttl(cache):
        row["promised_kms_calls"] = 2 * cache_promise(cache, objects, object_size)
    elif cache is None:
        row["promised_kms_calls"] = 2 * objects
    return row


async def job(
    backend: KmsBackend,
    key_id: str,
    *,
    objects: int,
    object_size: int,
    concurrency: int,
    policy: CachePolicy,
    price_per_10k: float = DEFAULT_PRICE_PER_10K,
    quota_per_s: float = DEFAULT_QUOTA_PER_S,
) -> list[dict[str, Any]]:
    """The job without the cache, then with it (keys: docs/bench.md)."""
    return [
        await _one_job(
            backend, key_id, cache, objects, object_size, concurrency, price_per_10k, quota_per_s
        )
        for cache in (None, policy)
    ]


async def measure(
    backend: KmsBackend,
    key_id: str,
    *,
    concurrency: list[int],
    seconds: float = 2.0,
    objects: int = 10_000,
    object_size: int = 1024,
    job_concurrency: int = 16,
    policy: CachePolicy | None = None,
    price_per_10k: float = DEFAULT_PRICE_PER_10K,
    quota_per_s: float = DEFAULT_QUOTA_PER_S,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Latency rows, then the job rows, and the summary figures (docs/bench.md)."""
    policy = policy or CachePolicy()
    rows = await latency(
        backend, key_id, concurrency=concurrency, seconds=seconds, progress=progress
    )
    jobs = await job(
        backend,
        key_id,
        objects=objects,
        object_size=object_size,
        concurrency=job_concurrency,
        policy=policy,
        price_per_10k=price_per_10k,
        quota_per_s=quota_per_s,
    )
    uncached, cached = jobs
    first = {r["operation"]: r for r in rows if r["concurrency"] == concurrency[0]}
    top = {r["operation"]: r for r in rows if r["concurrency"] == concurrency[-1]}
    return {
        "provider": backend.provider_id,
        "seconds": seconds,
        "price_per_10k_usd": price_per_10k,
        "quota_per_s": quota_per_s,
        "cache_policy": {
            "ttl": policy.ttl,
            "max_objects": policy.max_objects,
            "max_bytes": policy.max_bytes,
        },
        "generate_data_key_p50_ms": first["generate_data_key"]["p50_ms"],
        "decrypt_p50_ms": first["decrypt"]["p50_ms"],
        "generate_data_key_max_per_s": max(
            r["per_s"] for r in rows if r["operation"] == "generate_data_key"
        ),
        "decrypt_max_per_s": max(r["per_s"] for r in rows if r["operation"] == "decrypt"),
        "generate_data_key_top_concurrency_per_s": top["generate_data_key"]["per_s"],
        "calls_saved_by_cache": uncached["kms_calls"] - cached["kms_calls"],
        "cost_saved_per_million_objects_usd": uncached["cost_per_million_objects_usd"]
        - cached["cost_per_million_objects_usd"],
        "latency": rows,
        "jobs": jobs,
    }
