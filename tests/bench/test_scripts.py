"""bench/*.py, thin wrappers over envelope.bench, keep printing the JSON keys other tools read.

Each key set below was recorded by running the script BEFORE it became a wrapper (its own
measuring code then): it is the contract, so it is written out here, not derived from the
code under test. Each script runs at its smallest size, as a process, with --json.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

CLI_KEYS = {
    "cp_mbps",
    "cp_decrypt_slot_mbps",
    "cli_encrypt_mbps",
    "cli_decrypt_mbps",
    "startup_s",
    "startup_rss_mib",
    "ratios.encrypt_to_cp",
    "ratios.decrypt_to_cp",
    "size_mib",
    "cores",
}

_OBJECT_FIGURES = {
    "floor_per_s",
    "floor_all_per_s",
    "sync_encrypt_per_s",
    "sync_decrypt_per_s",
    "async_encrypt_per_s_64",
    "async_decrypt_per_s_64",
    "batch_encrypt_per_s",
    "batch_decrypt_per_s",
}
OBJECTS_KEYS = (
    _OBJECT_FIGURES
    | {
        "ratios.sync_encrypt",
        "ratios.sync_decrypt",
        "ratios.async_encrypt_64_all",
        "ratios.async_decrypt_64_all",
        "ratios.batch_encrypt_all",
        "ratios.batch_decrypt_all",
        "cores",
    }
    | {f"by_size.{size}.{k}" for size in ("1k", "16k", "256k") for k in _OBJECT_FIGURES}
)

LAKE_KEYS = {
    "objects",
    "small_objects",
    "small_objects_per_s",
    "small_decrypt_objects_per_s",
    "small_copy_objects_per_s",
    "large_objects",
    "large_mbps",
    "large_decrypt_mbps",
    "large_copy_mbps",
    "kms_calls",
    "ratio_small_encrypt_to_copy",
    "ratio_small_decrypt_to_copy",
    "ratio_large_encrypt_to_copy",
    "ratio_large_decrypt_to_copy",
    "kms_calls_per_object",
}


CORE_KEYS = {
    "cores",
    "raw_mbps",
    "raw_full_mbps",
    "raw_all_mbps",
    "encrypt_1w_mbps",
    "decrypt_1w_mbps",
    "encrypt_all_mbps",
    "decrypt_all_mbps",
    "stream_encrypt_mbps",
    "stream_decrypt_mbps",
    "file_encrypt_mbps",
    "file_decrypt_mbps",
    "copy_mbps",
    "peak_rss_mib",
    "rss_stream_mib",
    "decrypt_rss_64mib_seg_mib",
    "decrypt_rss_64mib_seg_added_mib",
    "decrypt_rss_64mib_seg_budget160_mib",
    "decrypt_rss_64mib_seg_budget160_added_mib",
    "decrypt_rss_1mib_seg_mib",
    "decrypt_rss_1mib_seg_added_mib",
    "bench_peak_rss_mib",
    "ratio_encrypt_1w_to_raw",
    "ratio_decrypt_1w_to_raw",
    "ratio_encrypt_1w_to_raw_full",
    "ratio_decrypt_1w_to_raw_full",
    "raw_scaling",
    "ratio_encrypt_all_to_raw_all",
    "ratio_decrypt_all_to_raw_all",
    "ratio_encrypt_all_to_1w",
    "ratio_decrypt_all_to_1w",
    "ratio_file_encrypt_to_copy",
    "ratio_file_decrypt_to_copy",
}


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a JSON object by dotted path."""
    if not isinstance(value, dict):
        return {prefix[:-1]: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(leaves(v, f"{prefix}{k}."))
    return out


def run_script(name: str, *args: str, tmp_path: Path) -> dict[str, Any]:
    env = {**os.environ, "BENCH_DIR": str(tmp_path), "ENVELOPE_HOME": str(tmp_path / "home")}
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got: dict[str, Any] = json.loads(r.stdout)
    return leaves(got)


def check(got: dict[str, Any], keys: set[str]) -> None:
    assert set(got) == keys, (sorted(set(got) - keys), sorted(keys - set(got)))
    for k, v in got.items():
        assert isinstance(v, (int, float)) and not isinstance(v, bool), (k, v)
        assert math.isfinite(v) and v >= 0, (k, v)


def test_cli_script(tmp_path: Path) -> None:
    got = run_script("cli.py", "--size-mib", "1", "--rounds", "1", "--dir", str(tmp_path / "w"),
                     tmp_path=tmp_path)
    assert isinstance(got.pop("filesystem"), str)  # (the work folder's: ext4, tmpfs, ...)
    check(got, CLI_KEYS)
    assert got["size_mib"] == 1
    for k in ("cli_encrypt_mbps", "cli_decrypt_mbps", "cp_mbps", "startup_s", "startup_rss_mib"):
        assert got[k] > 0, k
    assert got["ratios.encrypt_to_cp"] == pytest.approx(
        got["cli_encrypt_mbps"] / got["cp_mbps"], abs=0.01
    )
    assert got["ratios.decrypt_to_cp"] == pytest.approx(
        got["cli_decrypt_mbps"] / got["cp_decrypt_slot_mbps"], abs=0.01
    )


def test_objects_script(tmp_path: Path) -> None:
    got = run_script("objects.py", "--seconds", "0", "--rounds", "1", "--call-kib", "16",
                     tmp_path=tmp_path)
    check(got, OBJECTS_KEYS)
    for k in _OBJECT_FIGURES:
        assert got[k] > 0 and got[k] == got[f"by_size.16k.{k}"], k


def test_lake_script(tmp_path: Path) -> None:
    got = run_script("lake.py", "--small", "5", "--large", "1", "--large-mib", "4",
                     "--rounds", "1", tmp_path=tmp_path)  # fmt: skip
    check(got, LAKE_KEYS)
    assert (got["objects"], got["small_objects"], got["large_objects"]) == (6, 5, 1)
    # the local KMS's audit log: one data key for the encrypt job (cached), one unwrap for
    # the decrypt job (cached too), whatever order the rounds took
    assert got["kms_calls"] == 2
    for k in LAKE_KEYS - {"objects", "small_objects", "large_objects", "kms_calls"}:
        assert got[k] > 0, k
    assert not list(tmp_path.glob("envelope-lake-bench-*"))  # its tree removed (BENCH_DIR)


def test_core_script(tmp_path: Path) -> None:
    got = run_script("core.py", "--mib", "4", "--file-mib", "4", "--rss-mib", "8",
                     "--seg-rss-mib", "4", "--reps", "1", "--file-reps", "1",
                     tmp_path=tmp_path)  # fmt: skip
    check(got, CORE_KEYS)
    for k in CORE_KEYS - {"rss_stream_mib"}:
        assert got[k] > 0 or k.endswith("_added_mib"), k  # (peak minus baseline: may be 0)
    assert got["rss_stream_mib"] == 8
    assert got["ratio_file_encrypt_to_copy"] == pytest.approx(
        got["file_encrypt_mbps"] / got["copy_mbps"], rel=0.01
    )


def test_a_run_is_calibrated_after_its_first_call() -> None:
    """The first call of the all-core floor starts its processes; calibrating `--seconds`
    on it made that figure's timed run last a few milliseconds (review)."""
    import time

    from envelope.bench.objects import _lasting

    calls = []

    def run() -> int:
        calls.append(1)
        time.sleep(0.2 if len(calls) == 1 else 0.002)  # a slow first call, as process start-up
        return 1

    repeated, done = _lasting(run, 0.1)
    repeated()
    assert done() >= 20  # about 0.1 s of 2 ms calls, not one call's worth


def test_whole_object_runs_are_one_thread_at_every_size() -> None:
    """The per-object figures are compared with one thread of the primitive work; at the
    default options an object of 4 MiB and more was spread over the worker pool (review)."""
    import os
    import threading

    from envelope import objects
    from envelope.bench.objects import cached_keyring, sync_runs

    seen: set[str] = set()
    sealed = objects.seal_segments

    def spy(*args: object, **kw: object) -> object:
        seen.add(threading.current_thread().name)
        return sealed(*args, **kw)  # type: ignore[arg-type]

    objects.seal_segments = spy  # type: ignore[assignment]
    try:
        enc, _ = sync_runs(os.urandom(8 << 20), cached_keyring(), 1)
        enc()
    finally:
        objects.seal_segments = sealed
    assert seen == {threading.current_thread().name}
