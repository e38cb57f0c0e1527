"""A dry run of a lake encrypt job: what it would take, estimated before it is run.

1. List SRC (any prefix `envelope lake` takes: a folder, s3://...) and size it.
2. Count the KMS calls the job will make, from the data-key cache policy: the job encrypts
   every object under one key and one KMS context, so a data key serves `max_objects`
   objects (each object's size counted up front against `max_bytes`; an object larger than
   `max_bytes` gets a key of its own). When the cached objects' bytes stay within one key's
   `max_bytes` and the job is shorter than the TTL, the count is exact (`kms_calls_exact`);
   otherwise it is what listing order gives (the job's concurrency may reorder it slightly),
   plus one call per TTL window.
3. Time a sample: up to `sample` small objects (spread over the listing) and up to
   `sample_bytes` of large ones, encrypted by the real job code with the job's options into
   a scratch folder that is removed afterwards, after an untimed warm-up job (thread pools,
   imports, the first data key); an empty job measures the fixed cost of starting one. The
   duration estimate is that fixed cost plus the small objects at the sample's objects/s and
   the large ones at its MB/s.
4. Price the calls (`price_per_10k`) and set their rate against the quota.

Without a key the sample runs on an in-memory KMS (no KMS latency in the sample; with the
cache that is one call per `max_objects` objects anyway).
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import anyio

from ..keycache import CachePolicy
from ..keyring import Keyring
from ..kms.base import KmsBackend
from ..kms.memory import MemoryKms
from ..lake import jobs
from ..lake.fs import resolve
from ..lake.listing import Entry
from .kms import DEFAULT_PRICE_PER_10K, DEFAULT_QUOTA_PER_S, CountingKms
from .timing import MIB, Progress, no_progress

__all__ = ("estimate", "kms_calls", "pick_sample")


def kms_calls(sizes: list[int], policy: CachePolicy | None, duration: float) -> tuple[int, bool]:
    """(GenerateDataKey calls, exact) for objects of `sizes` in job order."""
    if policy is None or not policy.enabled:
        return len(sizes), True
    calls, objects, nbytes = 0, 0, 0
    fresh = True
    for size in sizes:
        if size > policy.max_bytes:
            calls += 1  # a one-use key, the cache bypassed
            continue
        if (
            fresh
            or objects >= policy.max_objects
            or nbytes >= policy.max_bytes
            or nbytes + size > policy.max_bytes
        ):
            calls += 1
            objects, nbytes, fresh = 0, 0, False
        objects += 1
        nbytes += size
    cached = [s for s in sizes if s <= policy.max_bytes]
    exact = sum(cached) <= policy.max_bytes
    ttl = policy.ttl * (1.0 - policy.ttl_jitter)
    window = max(ttl / 2, ttl - policy.refresh_ahead)
    if cached and duration >= window:
        calls = max(calls, math.ceil(duration / window))
        exact = False
    return calls, exact


def pick_sample(
    entries: list[Entry], small_limit: int, sample: int, sample_bytes: int
) -> tuple[list[Entry], list[Entry]]:
    """(small, large) entries spread evenly over the listing: up to `sample` small ones and
    large ones up to `sample_bytes` in all (at least one large one if there are any)."""
    small = [e for e in entries if e.size <= small_limit]
    large = [e for e in entries if e.size > small_limit]
    step = max(1, len(small) // max(1, sample))
    picked_small = small[::step][:sample]
    picked_large: list[Entry] = []
    total = 0
    for e in large[:: max(1, len(large) // 8)] if large else ():
        if picked_large and total + e.size > sample_bytes:
            break
        picked_large.append(e)
        total += e.size
    return picked_small, picked_large


async def _timed_job(
    src: str, entries: list[Entry], keyring: Keyring, options: jobs.LakeOptions, scratch: str
) -> float:
    with tempfile.TemporaryDirectory(prefix="envelope-bench-lake-", dir=scratch) as out:
        t0 = time.perf_counter()
        report = await jobs.encrypt_prefix(
            src, out, keyring=keyring, options=options, entries=entries
        )
        seconds = time.perf_counter() - t0
    if not report.ok:
        first = report.failures[0]
        raise RuntimeError(f"sample object {first.path} failed: {first.error}")
    return seconds


async def estimate(
    src: str,
    *,
    backend: KmsBackend | None = None,
    key_id: str | None = None,
    policy: CachePolicy | None = None,
    options: jobs.LakeOptions | None = None,
    sample: int = 200,
    sample_bytes: int = 256 * MIB,
    scratch: str | None = None,
    price_per_10k: float = DEFAULT_PRICE_PER_10K,
    quota_per_s: float = DEFAULT_QUOTA_PER_S,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """The estimate (keys: module docstring, docs/bench.md)."""
    options = options or jobs.LakeOptions()
    policy = policy if policy is not None else CachePolicy()
    t0 = time.perf_counter()
    entries = await anyio.to_thread.run_sync(jobs.list_objects, resolve(src), options)
    listing_s = time.perf_counter() - t0
    progress(1, 4)
    limit = options.small_object_bytes
    small, large = [e for e in entries if e.size <= limit], [e for e in entries if e.size > limit]
    s_small, s_large = pick_sample(entries, limit, sample, sample_bytes)
    own = backend is None
    if backend is None:
        memory = MemoryKms()
        backend, key_id = memory, memory.create_key("bench-lake")
    assert key_id is not None
    counting = CountingKms(backend)
    keyring = Keyring(counting, key_id, cache=policy)
    try:
        where = scratch or tempfile.gettempdir()
        # warm-up, untimed: thread pools, imports and the first data key are not per-object
        await _timed_job(src, (s_small or s_large)[: options.concurrency], keyring, options, where)
        fixed = await _timed_job(src, [], keyring, options, where)
        progress(2, 4)
        small_s = await _timed_job(src, s_small, keyring, options, where)
        progress(3, 4)
        large_s = await _timed_job(src, s_large, keyring, options, where)
        progress(4, 4)
    finally:
        if own:
            await backend.aclose()
    small_rate = len(s_small) / max(1e-6, small_s - fixed) if s_small else 0.0
    large_bytes = sum(e.size for e in s_large)
    large_rate = large_bytes / max(1e-6, large_s - fixed) if s_large else 0.0
    small_part = len(small) / small_rate if small_rate else 0.0
    large_part = sum(e.size for e in large) / large_rate if large_rate else 0.0
    duration = fixed + small_part + large_part
    calls, exact = kms_calls([e.size for e in entries], policy, duration)
    total = sum(e.size for e in entries)
    rate = calls / duration if duration > 0 else 0.0
    return {
        "source": src,
        "objects": len(entries),
        "bytes": total,
        "small_objects": len(small),
        "large_objects": len(large),
        "listing_s": listing_s,
        "cache_policy": {
            "ttl": policy.ttl,
            "max_objects": policy.max_objects,
            "max_bytes": policy.max_bytes,
        },
        "sample": {
            "small_objects": len(s_small),
            "small_seconds": small_s,
            "small_objects_per_s": small_rate,
            "large_objects": len(s_large),
            "large_bytes": large_bytes,
            "large_seconds": large_s,
            "large_mbps": large_rate / 1e6,
            "job_start_seconds": fixed,
            "kms_calls": counting.calls["GenerateDataKey"],
        },
        "estimate": {
            "duration_s": duration,
            "small_s": small_part,
            "large_s": large_part,
            "objects_per_s": len(entries) / duration if duration > 0 else 0.0,
            "mbps": total / duration / 1e6 if duration > 0 else 0.0,
            "kms_calls": calls,
            "kms_calls_exact": exact,
            "kms_requests_per_s": rate,
            "cost_usd": calls * price_per_10k / 10_000,
            "headroom": quota_per_s / rate if rate else math.inf,
            "kms_calls_without_cache": len(entries),
            "cost_without_cache_usd": len(entries) * price_per_10k / 10_000,
        },
        "price_per_10k_usd": price_per_10k,
        "quota_per_s": quota_per_s,
    }
