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
   the large ones at its MB/s. With `to_nowhere` the sample is encrypted and its output
   discarded (`encrypt_to_nowhere`): nothing is written, so the estimate is the read and
   encrypt cost alone.
4. Price the calls (`price_per_10k`) and set their rate against the quota.

Without a key the sample runs on an in-memory KMS (no KMS latency in the sample; with the
cache that is one call per `max_objects` objects anyway).

`compare_jobs` (what `bench/lake.py` prints) times real encrypt and decrypt jobs over a tree
against `copy_prefix`, a plain copy of it through the same job runner; `generate_tree` makes
such a tree.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .. import api
from ..keycache import CachePolicy
from ..keyring import Keyring
from ..kms.base import KmsBackend
from ..kms.memory import MemoryKms
from ..lake import jobs
from ..lake.fs import open_source_at, read_whole, redact_uri, resolve
from ..lake.listing import Entry, Listing
from ..streams import CountingSink
from .kms import DEFAULT_PRICE_PER_10K, DEFAULT_QUOTA_PER_S, CountingKms
from .timing import KIB, MIB, Progress, best, interleaved, no_progress

__all__ = (
    "compare_jobs",
    "copy_prefix",
    "encrypt_to_nowhere",
    "estimate",
    "generate_tree",
    "kms_calls",
    "pick_sample",
)


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


def job_failure(report: jobs.JobReport, what: str = "") -> Exception:
    """A failed benchmark job's first failure as the error it was (its envelope error class,
    so that the command line says it in one line with that error's exit code: a key that does
    not exist is exit 3), else a RuntimeError. It was a RuntimeError and a traceback."""
    from .. import errors

    first = report.failures[0]
    cls = getattr(errors, first.error_type or "", None)
    message = f"{what}{first.path} failed: {first.error}"
    if isinstance(cls, type) and issubclass(cls, errors.EnvelopeError):
        try:
            return cls(message)
        except TypeError:  # (an error class with a constructor of its own)
            pass
    return RuntimeError(message)


def pick_sample(
    entries: list[Entry], small_limit: int, sample: int, sample_bytes: int
) -> tuple[list[Entry], list[Entry]]:
    """(small, large) entries spread evenly over the listing: up to `sample` small ones and
    large ones up to `sample_bytes` in all, never more (it bounds what a dry run encrypts and
    writes to scratch: the first large object was taken whatever its size, and a 1 GiB one
    filled the scratch folder under a 1 MiB cap). Without one that fits, the smallest large
    object if it fits, else none (`estimate` then says so)."""
    small = [e for e in entries if e.size <= small_limit]
    large = [e for e in entries if e.size > small_limit]
    step = max(1, len(small) // max(1, sample))
    picked_small = small[::step][:sample]
    picked_large: list[Entry] = []
    total = 0
    for e in large[:: max(1, len(large) // 8)] if large else ():
        if total + e.size <= sample_bytes:
            picked_large.append(e)
            total += e.size
    if large and not picked_large:
        smallest = min(large, key=lambda e: e.size)
        if smallest.size <= sample_bytes:
            picked_large.append(smallest)
    return picked_small, picked_large


async def encrypt_to_nowhere(
    src: str, entries: list[Entry], keyring: Keyring, options: jobs.LakeOptions
) -> jobs.JobReport:
    """`entries` of `src` encrypted as `jobs.encrypt_prefix` encrypts them (same runner and
    concurrency, same object context and engine options, one data key per object through
    the keyring) with every output discarded: small objects read whole and sealed in one
    worker-thread hop, large ones streamed through the pipeline into a `CountingSink` (the
    job's path to an object store; a local job seals them file to file). The report's
    objects' `bytes` are the ciphertext bytes produced. Nothing is written anywhere."""
    loc = resolve(src)
    engine, large = options.engine, options.large_engine

    async def one(entry: Entry) -> jobs.ObjectResult:
        path = loc.join(entry.rel)
        octx = {jobs.PATH_CONTEXT_KEY: entry.rel} if options.bind_path else {}
        if entry.size <= options.small_object_bytes:
            prepared = await api.prepare_object(
                keyring, object_context=octx, options=engine, expected_bytes=entry.size
            )

            def work() -> int:
                data = read_whole(loc.fs, path, entry.size, follow_links=options.follow_symlinks)
                return len(api.seal_prepared(prepared, data))

            n = await anyio.to_thread.run_sync(work)
        else:
            sink = CountingSink()
            await api.encrypt(
                await open_source_at(loc.fs, path),
                sink,
                keyring=keyring,
                object_context=octx,
                options=large,
            )
            n = sink.bytes
        return jobs.ObjectResult(entry.rel, "done", n)

    start = jobs.JobStart(Listing(entries))
    return await jobs._run("encrypt", src, None, start, one, options, None)


async def _timed_job(
    src: str,
    entries: list[Entry],
    keyring: Keyring,
    options: jobs.LakeOptions,
    scratch: str | None,
) -> float:
    """Seconds of one sample job: into a scratch folder under `scratch` (removed after), or
    with `scratch` None to nowhere."""
    if scratch is None:
        t0 = time.perf_counter()
        report = await encrypt_to_nowhere(src, entries, keyring, options)
        seconds = time.perf_counter() - t0
    else:
        with tempfile.TemporaryDirectory(prefix="envelope-bench-lake-", dir=scratch) as out:
            t0 = time.perf_counter()
            report = await jobs.encrypt_prefix(
                src, out, keyring=keyring, options=options, entries=entries
            )
            seconds = time.perf_counter() - t0
    if not report.ok:
        raise job_failure(report, "sample object ")
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
    to_nowhere: bool = False,
    price_per_10k: float = DEFAULT_PRICE_PER_10K,
    quota_per_s: float = DEFAULT_QUOTA_PER_S,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """The estimate (keys: module docstring, docs/bench.md). `policy` None is the lake jobs'
    default cache; `CachePolicy(enabled=False)` measures and counts without one."""
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
        where = None if to_nowhere else scratch or tempfile.gettempdir()
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
    large_from = "large objects"
    if large and not s_large:
        # no large object fits --sample-bytes: timed at the small objects' byte rate, which
        # per-object costs make slower (the estimate errs long), and said so
        large_from = "small objects (no large object fits --sample-bytes)"
        large_rate = sum(e.size for e in s_small) / max(1e-6, small_s - fixed) if s_small else 0.0
    large_part = sum(e.size for e in large) / large_rate if large_rate else 0.0
    duration = fixed + small_part + large_part
    calls, exact = kms_calls([e.size for e in entries], policy, duration)
    total = sum(e.size for e in entries)
    rate = calls / duration if duration > 0 else 0.0
    return {
        "source": redact_uri(src),  # (an S3 URI may carry an access key and its secret)
        "to_nowhere": to_nowhere,
        "objects": len(entries),
        "bytes": total,
        "small_objects": len(small),
        "large_objects": len(large),
        "listing_s": listing_s,
        "cache_policy": {
            "enabled": policy.enabled,
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
            "large_rate_from": large_from,
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


def generate_tree(root: Path, small: int, large: int, large_size: int) -> None:
    """`small` objects of 16 KiB under root/small (100 a folder) and `large` of `large_size`
    bytes under root/large, random-looking bytes."""
    block = os.urandom(16 * KIB)
    for i in range(small):
        d = root / "small" / f"d{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"o{i:06d}.bin").write_bytes(block[i % 64 :] + block[: i % 64])
    chunk = os.urandom(4 * MIB)
    for i in range(large):
        d = root / "large"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"big{i}.bin", "wb") as f:
            for _ in range(large_size // len(chunk)):
                f.write(chunk)
            f.write(chunk[: large_size % len(chunk)])  # (any size: 2 MiB made empty files)


async def copy_prefix(src: str, dst: str, options: jobs.LakeOptions) -> jobs.JobReport:
    """The baseline of a lake job: the job runner moving bytes with no crypto and no KMS
    (same concurrency; small objects read whole and written in one hop, large ones through
    a user-space buffer of the engine's batch size)."""
    s, d = resolve(src), resolve(dst)
    entries = await anyio.to_thread.run_sync(jobs.list_objects, s)

    def copy_one(entry: Entry) -> int:
        sp, dp = s.join(entry.rel), d.join(entry.rel)
        os.makedirs(os.path.dirname(dp), exist_ok=True)
        if entry.size <= options.small_object_bytes:
            with open(sp, "rb") as f:
                data = f.read()
            with open(dp + ".tmp", "wb") as f:
                f.write(data)
            os.replace(dp + ".tmp", dp)
            return len(data)
        n = 0
        buf = bytearray(options.engine.batch_bytes)
        with open(sp, "rb", buffering=0) as fi, open(dp + ".tmp", "wb", buffering=0) as fo:
            while k := fi.readinto(buf):
                fo.write(memoryview(buf)[:k])
                n += k
        os.replace(dp + ".tmp", dp)
        return n

    async def one(entry: Entry) -> jobs.ObjectResult:
        return jobs.ObjectResult(entry.rel, "done", await anyio.to_thread.run_sync(copy_one, entry))

    start = jobs.JobStart(Listing(entries))
    return await jobs._run("encrypt", src, dst, start, one, options, None)


def compare_jobs(
    src: Path, work: Path, keyring: Keyring, options: jobs.LakeOptions, rounds: int
) -> dict[str, float]:
    """Best wall seconds of `copy`, `encrypt` and `decrypt` jobs over `src` (outputs under
    `work`), in `rounds` interleaved rounds, each run after its previous output is removed
    and os.sync() (one run's writeback must not throttle the next): on shared VMs the page
    cache's state swings a single run by 2-10x, and taking turns gives every job the same
    chances. Also `bytes` and `objects` of the tree."""
    out = {name: str(work / name) for name in ("copy", "encrypt", "decrypt")}

    def job(make: Callable[[], Awaitable[jobs.JobReport]]) -> Callable[[], None]:
        def run() -> None:
            report = anyio.run(make)
            if not report.ok:
                raise job_failure(report)

        return run

    runs: dict[str, Callable[[], object]] = {
        "copy": job(lambda: copy_prefix(str(src), out["copy"], options)),
        "encrypt": job(
            lambda: jobs.encrypt_prefix(str(src), out["encrypt"], keyring=keyring, options=options)
        ),
        "decrypt": job(
            lambda: jobs.decrypt_prefix(
                out["encrypt"], out["decrypt"], keyring=keyring, options=options
            )
        ),
    }

    def before(name: str) -> None:
        shutil.rmtree(out[name], ignore_errors=True)
        os.sync()

    try:
        # one untimed run of each job first, in this order (decrypt reads encrypt's tree):
        # the first job of a process pays for imports, thread pools and a cold page cache,
        # which with few rounds decided the ratios (the copy always ran first)
        for name in ("copy", "encrypt", "decrypt"):
            before(name)
            runs[name]()
        t = interleaved(rounds, runs, warm=False, before=before)
    finally:
        for path in out.values():
            shutil.rmtree(path, ignore_errors=True)
    files = [p for p in src.rglob("*") if p.is_file()]
    return {
        **{f"{name}_s": best(v) for name, v in t.items()},
        "bytes": sum(p.stat().st_size for p in files),
        "objects": len(files),
    }
