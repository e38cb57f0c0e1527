"""`envelope bench kms`: latency measured right (a backend with 5 ms injected shows a p50
within 10% of it) and the cached job makes exactly the calls the cache policy promises."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio

from envelope.bench import kms
from envelope.keycache import CachePolicy
from envelope.kms.filekey import generate_key_file
from envelope.kms.memory import MemoryKms

from .conftest import check_keys, finite_positive
from .test_machine_encrypt import nonblank


def test_kms_with_injected_latency(bench: Any, tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    generate_key_file(key)
    png, md = tmp_path / "kms.png", tmp_path / "kms.md"
    data = bench(
        "kms", "--key", f"file:{key}", "--inject-latency", "5", "--seconds", "0.3",
        "--concurrency", "1,4", "--objects", "100", "--cache-max-objects", "7",
        "--plot", str(png), "--markdown", str(md),
    )  # fmt: skip
    leaves = check_keys(data, "kms")
    for row in data["latency"]:
        finite_positive(row, "calls", "per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms")
        assert row["errors"] == 0
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["p999_ms"] <= row["max_ms"]
    for op in ("generate_data_key", "decrypt"):
        one = next(r for r in data["latency"] if r["operation"] == op and r["concurrency"] == 1)
        assert abs(one["p50_ms"] - 5.0) <= 0.5, one
        four = next(r for r in data["latency"] if r["operation"] == op and r["concurrency"] == 4)
        assert four["per_s"] > 2 * one["per_s"]  # callers overlap: throughput scales
    uncached, cached = data["jobs"]
    assert uncached["cache"] is False and cached["cache"] is True
    assert uncached["generate_data_key_calls"] == uncached["decrypt_calls"] == 100
    assert uncached["kms_calls"] == uncached["promised_kms_calls"] == 200
    # 100 objects, 7 per data key: 15 GenerateDataKey, and a reader needs one Decrypt per key
    assert cached["generate_data_key_calls"] == cached["decrypt_calls"] == math.ceil(100 / 7)
    assert cached["kms_calls"] == cached["promised_kms_calls"] == 30
    assert math.isclose(uncached["cost_usd"], 200 * 0.03 / 10_000)
    assert math.isclose(cached["cost_per_million_objects_usd"], 0.3e6 * 0.03 / 10_000)
    assert math.isclose(
        cached["headroom"], 5500 / cached["encrypt_kms_requests_per_s"], rel_tol=1e-3
    )
    finite_positive(leaves, "generate_data_key_p50_ms", "decrypt_max_per_s",
                    "cost_saved_per_million_objects_usd", "calls_saved_by_cache")  # fmt: skip
    nonblank(png)
    assert "| operation |" in md.read_text()


def test_cache_promise_counts_the_byte_limit_too() -> None:
    """4 KiB objects under a 16 KiB byte limit: 4 objects per data key, whatever max_objects."""
    policy = CachePolicy(max_objects=100, max_bytes=16 << 10)
    assert kms.cache_promise(policy, 50, 4 << 10) == 13

    async def run() -> list[dict[str, Any]]:
        backend = MemoryKms()
        return await kms.job(backend, backend.create_key("b"), objects=50, object_size=4 << 10,
                             concurrency=8, policy=policy)  # fmt: skip

    _, cached = anyio.run(run)
    assert cached["generate_data_key_calls"] == 13
    assert cached["kms_calls"] == cached["promised_kms_calls"] == 26


def test_bad_concurrency_is_a_usage_error(tmp_path: Path) -> None:
    import pytest

    from envelope.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "kms", "--key", "file:/nonexistent", "--concurrency", "0,2"])
    assert e.value.code == 2


def test_concurrent_callers_are_concurrent_with_a_backend_that_never_yields() -> None:
    """The embedded KMS and a key file never yield to the event loop, so the callers (tasks
    of one loop) took turns: the first ran alone until the deadline and every
    `--concurrency` row measured one caller (review). Each caller is a thread now."""
    import threading
    import time

    class Blocking(MemoryKms):
        def __init__(self) -> None:
            super().__init__()
            self.lock = threading.Lock()
            self.in_flight = 0
            self.most = 0
            self.threads: set[int] = set()

        async def generate_data_key(self, key_id: str, *, context: Any) -> Any:
            with self.lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
                self.threads.add(threading.get_ident())
            time.sleep(0.002)  # noqa: ASYNC251 (blocking work that never yields, as the KMS)
            with self.lock:
                self.in_flight -= 1
            return await super().generate_data_key(key_id, context=context)

    backend = Blocking()
    key = backend.create_key("k")
    samples, errors, _ = anyio.run(
        kms._timed_calls, "generate_data_key", backend, key, None, 4, 0.3  # type: ignore[arg-type]
    )
    assert errors == 0 and samples
    assert len(backend.threads) == 4 and backend.most > 1


def test_inputs_that_measure_nothing_or_hang_are_refused(capsys: Any) -> None:
    """`--inject-latency nan` added no latency and printed null, `inf` hung until killed,
    `--peers ""` measured nothing and exited 0, `--max-object 512` measured no object
    (review)."""
    from envelope.cli.main import main

    for argv in (
        ["bench", "kms", "--key", "file:/nonexistent", "--inject-latency", "nan"],
        ["bench", "kms", "--key", "file:/nonexistent", "--inject-latency", "inf"],
        ["bench", "peers", "--peers", ""],
        ["bench", "encrypt", "--max-object", "512"],
    ):
        assert main([*argv, "--json"]) == 2, argv
        assert capsys.readouterr().out == ""
