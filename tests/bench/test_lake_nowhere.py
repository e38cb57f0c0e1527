"""`envelope bench lake SRC --to-nowhere`: the sample is encrypted and its output discarded.
Nothing is written under the scratch folder (not even a temporary folder: its mtime stays
put, and a regular file given as the scratch folder is never used), every sample object is
encrypted (the discarded ciphertext outweighs the plaintext), and the KMS call estimate is
still exact against the real job."""

from __future__ import annotations

import os
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
from envelope.lake.fs import resolve

from .conftest import check_keys, finite_positive

SMALL, LARGE = 60, 1
LARGE_SIZE = 9 << 20  # above the job's 8 MiB small-object limit: streamed


def generate(root: Path) -> int:
    """A tiny tree; its total size."""
    block = os.urandom(LARGE_SIZE)
    for i in range(SMALL):
        d = root / f"d{i // 20}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"o{i:03d}.bin").write_bytes(block[i : i + 3000 + i])
    (root / "big.bin").write_bytes(block)
    return sum(3000 + i for i in range(SMALL)) + LARGE_SIZE


def real_job_calls(src: Path, out: Path, max_objects: int) -> int:
    async def run() -> int:
        kms = MemoryKms()
        counting = CountingKms(kms)
        policy = CachePolicy(max_objects=max_objects)
        keyring = Keyring(counting, kms.create_key("real"), cache=policy)
        report = await jobs.encrypt_prefix(str(src), str(out), keyring=keyring)
        assert report.ok and report.done == SMALL + LARGE
        return counting.calls["GenerateDataKey"]

    return anyio.run(run)


def test_to_nowhere_writes_nothing_and_estimates_calls_exactly(
    bench: Any, tmp_path: Path
) -> None:
    src, scratch = tmp_path / "src", tmp_path / "scratch"
    total = generate(src)
    scratch.mkdir()
    before = scratch.stat().st_mtime_ns
    data = bench("lake", str(src), "--sample", "40", "--cache-max-objects", "25",
                 "--dir", str(scratch), "--to-nowhere")  # fmt: skip
    leaves = check_keys(data, "lake")
    assert data["to_nowhere"] is True
    assert data["objects"] == SMALL + LARGE and data["bytes"] == total
    assert data["sample"]["small_objects"] == 40 and data["sample"]["large_objects"] == 1
    finite_positive(leaves, "estimate.duration_s", "sample.small_objects_per_s",
                    "sample.large_mbps", "estimate.kms_calls", "estimate.cost_usd")  # fmt: skip
    assert list(scratch.iterdir()) == []
    assert scratch.stat().st_mtime_ns == before  # no entry was even created and removed

    calls = real_job_calls(src, tmp_path / "out", 25)
    assert data["estimate"]["kms_calls"] == calls == 3  # ceil(61 / 25)
    assert data["estimate"]["kms_calls_exact"] is True

    # the same run without --to-nowhere does write a scratch folder (and removes it): the
    # mtime check above can tell
    data = bench("lake", str(src), "--sample", "5", "--dir", str(scratch))
    assert data["to_nowhere"] is False
    assert list(scratch.iterdir()) == [] and scratch.stat().st_mtime_ns != before


def test_scratch_is_never_touched(tmp_path: Path) -> None:
    """A regular file as the scratch folder: a sample job written there would fail."""
    src = tmp_path / "src"
    generate(src)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"")

    async def run(to_nowhere: bool) -> dict[str, Any]:
        return await lake.estimate(str(src), sample=10, scratch=str(not_a_folder),
                                   to_nowhere=to_nowhere)  # fmt: skip

    got = anyio.run(run, True)
    assert got["to_nowhere"] is True and got["sample"]["small_objects"] == 10
    with pytest.raises(NotADirectoryError):
        anyio.run(run, False)


def test_encrypt_to_nowhere_encrypts_every_object(tmp_path: Path) -> None:
    src = tmp_path / "src"
    total = generate(src)

    async def run() -> jobs.JobReport:
        kms = MemoryKms()
        counting = CountingKms(kms)
        keyring = Keyring(counting, kms.create_key("n"), cache=CachePolicy(max_objects=25))
        entries = jobs.list_objects(resolve(str(src)))
        report = await lake.encrypt_to_nowhere(str(src), entries, keyring, jobs.LakeOptions())
        assert counting.calls["GenerateDataKey"] == 3  # one data key per object, as the job
        return report

    report = anyio.run(run)
    assert report.ok and report.done == SMALL + LARGE
    # ciphertext bytes: every object's header and tags on top of its plaintext
    assert total < report.bytes < total + (SMALL + LARGE) * 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
