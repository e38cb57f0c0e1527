"""`envelope bench lake`: on a generated tree, the KMS calls are estimated exactly and the
duration within a factor of 2 of the real job that follows."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio

from envelope.bench import lake
from envelope.bench.kms import CountingKms
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.lake import jobs
from envelope.lake.listing import Entry

from .conftest import check_keys, finite_positive
from .test_machine_encrypt import nonblank


def generate(root: Path) -> None:
    block = os.urandom(1 << 20)
    for i in range(400):
        d = root / f"d{i // 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"o{i:04d}.bin").write_bytes(block[i : i + 4096])
    for i in range(2):
        (root / f"big{i}.bin").write_bytes(block)


def test_lake_estimate_against_the_real_job(bench: Any, tmp_path: Path) -> None:
    src, scratch = tmp_path / "src", tmp_path / "scratch"
    generate(src)
    scratch.mkdir()
    png = tmp_path / "lake.png"
    data = bench("lake", str(src), "--sample", "80", "--cache-max-objects", "30",
                 "--dir", str(scratch), "--plot", str(png))  # fmt: skip
    nonblank(png)
    leaves = check_keys(data, "lake")
    assert data["objects"] == 402 and data["bytes"] == 400 * 4096 + 2 * (1 << 20)
    finite_positive(leaves, "estimate.duration_s", "estimate.kms_calls", "estimate.cost_usd",
                    "estimate.headroom", "sample.small_objects_per_s")  # fmt: skip
    assert list(scratch.iterdir()) == []  # the sample's output is gone

    async def real() -> tuple[float, int]:
        kms = MemoryKms()
        counting = CountingKms(kms)
        keyring = Keyring(counting, kms.create_key("real"), cache=CachePolicy(max_objects=30))
        t0 = time.perf_counter()
        report = await jobs.encrypt_prefix(str(src), str(tmp_path / "out"), keyring=keyring)
        assert report.ok and report.done == 402
        return time.perf_counter() - t0, counting.calls["GenerateDataKey"]

    seconds, calls = anyio.run(real)
    assert data["estimate"]["kms_calls"] == calls == 14  # ceil(402 / 30)
    assert data["estimate"]["kms_calls_exact"] is True
    assert seconds / 2 <= data["estimate"]["duration_s"] <= seconds * 2, (seconds, data)


def e(size: int) -> Entry:
    return Entry("x", size, None)


def test_kms_calls_follow_the_policy() -> None:
    policy = CachePolicy(max_objects=3, max_bytes=100)
    assert lake.kms_calls([10] * 7, policy, 1.0) == (3, True)  # objects bound: 3+3+1
    # bytes bind: 40+40, then 40+40, then 40; an object over max_bytes gets its own key
    calls, exact = lake.kms_calls([40, 40, 40, 40, 40, 500], policy, 1.0)
    assert calls == 4 and exact is False
    assert lake.kms_calls([10] * 7, None, 1.0) == (7, True)
    # a job longer than the TTL windows needs a key per window at least
    ttl = CachePolicy(ttl=10, refresh_ahead=0, ttl_jitter=0)
    assert lake.kms_calls([1] * 5, ttl, 35.0) == (4, False)


def test_sample_is_spread_and_bounded() -> None:
    entries = [e(10)] * 50 + [e(1000)] * 5
    small, large = lake.pick_sample(entries, 100, 10, 2500)
    assert len(small) == 10 and len(large) == 2


def test_no_cache_measures_and_counts_without_one(bench: Any, tmp_path: Path) -> None:
    """`--no-cache` was ignored: the estimate replaced "no policy" with the default cache, so
    the sample ran cached and the call count was the cached one (review)."""
    src = tmp_path / "src"
    for i in range(30):
        (src / "d").mkdir(parents=True, exist_ok=True)
        (src / "d" / f"o{i}").write_bytes(os.urandom(1000))
    data = bench("lake", str(src), "--sample", "10", "--no-cache", "--to-nowhere")
    assert data["cache_policy"]["enabled"] is False
    assert data["estimate"]["kms_calls"] == 30  # one per object
    assert data["sample"]["kms_calls"] >= 10  # the sample asked once per object too
