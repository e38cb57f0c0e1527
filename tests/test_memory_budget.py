"""The memory budget: plans that fit it, pipelines that stay in it, and segment sizes refused.

Peak memory here is measured with tracemalloc (every buffer the pipeline or the reader
allocates is a traced Python allocation), in process and fast; tests/test_memory.py measures
real RSS in a child process.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from envelope import api, sync
from envelope._pipeline import minimum_bytes, plan_pipeline
from envelope.errors import AuthenticationError, ConfigurationError
from envelope.hazmat.format import TAG_LEN
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.reader import open_decrypted

KIB, MIB = 1 << 10, 1 << 20
#: what a call allocates besides its buffers (slots, events, headers, the key schedule)
SLACK = 256 * KIB


class Discard:
    """A sink that keeps nothing, so only the engine's own memory is measured."""

    def __init__(self) -> None:
        self.n = 0

    async def write(self, data: memoryview) -> None:
        self.n += len(data)

    async def commit(self) -> None:
        return None

    async def abort(self) -> None:
        return None


@pytest.fixture(scope="module")
def kms() -> MemoryKms:
    return MemoryKms()


@pytest.fixture(scope="module")
def kr(kms: MemoryKms) -> Keyring:
    return Keyring(kms, kms.create_key())


@contextmanager
def traced() -> Iterator[None]:
    """Trace allocations only here: what was allocated before is not counted, even if freed."""
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def added_peak(fn: Callable[[], object]) -> int:
    """Peak bytes `fn` held at once (allocated during the call and not yet freed)."""
    with traced():
        fn()
        return tracemalloc.get_traced_memory()[1]


class Digest(Discard):
    """A sink that keeps only a hash of what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.h = hashlib.sha256()

    async def write(self, data: memoryview) -> None:
        self.n += len(data)
        self.h.update(data)


# -- plans ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seg_log2", range(12, 27))
def test_every_plan_fits_its_budget_or_there_is_none(seg_log2: int) -> None:
    s = 1 << seg_log2
    for budget in (4 * MIB, 9 * MIB, 33 * MIB, 160 * MIB, 256 * MIB, 1 << 30):
        for workers in (1, 2, 3, 8, 64):
            for seg_in, seg_out in ((s, s + TAG_LEN), (s + TAG_LEN, s)):
                plan = plan_pipeline(
                    budget=budget,
                    segment_in=seg_in,
                    segment_out=seg_out,
                    max_segments_per_batch=max(1, (4 * MIB) >> seg_log2),
                    workers=workers,
                    depth=2 * workers + 2,
                )
                if budget < minimum_bytes(seg_in, seg_out):
                    assert plan is None
                    continue
                assert plan is not None
                assert plan.peak_bytes <= budget
                assert 1 <= plan.workers <= workers and plan.workers <= plan.outputs
                assert plan.inputs >= plan.outputs >= 1
                assert plan.in_batch == plan.segments_per_batch * seg_in


def test_the_default_plan_keeps_every_worker_busy() -> None:
    """1 MiB segments, 2 workers: 2 MiB batches, workers + 1 = 3 in and 3 out (12 MiB): each
    worker has a batch while one more is read and one written. (The former defaults, 4 MiB
    batches and 2 x workers + 2 each side, 48 MiB, measured the same throughput:
    docs/performance.md.)"""
    plan = api.Options(workers=2).plan("decrypt", 20)
    assert (plan.segments_per_batch, plan.inputs, plan.outputs, plan.workers) == (2, 3, 3, 2)
    assert plan.peak_bytes < 13 * MIB  # 12 MiB of batches, plus tags and look-ahead bytes


def test_64_mib_segments_under_the_default_budget() -> None:
    plan = api.Options(workers=2).plan("decrypt", 26)
    assert (plan.inputs, plan.outputs, plan.workers) == (2, 1, 1)
    assert plan.peak_bytes <= 256 * MIB


def test_budget_validation() -> None:
    for bad in (0, -1, 4 * MIB - 1, 1.5e9, True, "256M"):
        with pytest.raises(ConfigurationError, match="memory_budget"):
            api.Options(memory_budget=bad)  # type: ignore[arg-type]
    assert api.Options(memory_budget=4 * MIB).memory_budget == 4 * MIB


def test_encrypt_refuses_a_segment_size_the_budget_cannot_hold() -> None:
    with pytest.raises(ConfigurationError) as e:
        api.Options(segment_size=64 * MIB, memory_budget=100 * MIB)
    msg = str(e.value)
    assert "64 MiB" in msg and "100 MiB" in msg and "--memory-budget" in msg
    assert "at least 129 MiB" in msg and "--segment-size" in msg
    api.Options(segment_size=64 * MIB, memory_budget=129 * MIB)  # the figure it names works


# -- pipelines stay in their budget ------------------------------------------------------------


@pytest.fixture(scope="module")
def objects(kr: Keyring) -> dict[int, tuple[bytes, bytes]]:
    """Plaintext and ciphertext of 24 MiB + 5 bytes for a few segment sizes."""
    data = os.urandom(24 * MIB + 5)
    out = {}
    for seg in (64 * KIB, MIB, 4 * MIB):
        opts = api.Options(segment_size=seg)
        out[seg] = (data, bytes(sync.encrypt_bytes(data, keyring=kr, options=opts)))
    return out


@pytest.mark.parametrize("budget", [4 * MIB, 9 * MIB, 20 * MIB])
@pytest.mark.parametrize("workers", [1, 2, 8])
def test_streaming_pipelines_stay_within_the_budget(
    objects: dict[int, tuple[bytes, bytes]], kr: Keyring, budget: int, workers: int
) -> None:
    for seg, (data, ct) in objects.items():
        s = seg
        opts = api.Options(workers=workers, memory_budget=budget)
        if budget < minimum_bytes(s + TAG_LEN, s):
            with pytest.raises(ConfigurationError, match="memory budget"):
                sync.decrypt(ct, Discard(), keyring=kr, options=opts)
            continue
        sink = Digest()
        peak = added_peak(lambda: sync.decrypt(ct, sink, keyring=kr, options=opts))  # noqa: B023
        assert sink.h.digest() == hashlib.sha256(data).digest()
        assert peak <= budget + SLACK, (seg, peak)

        enc_opts = api.Options(segment_size=seg, workers=workers, memory_budget=budget)
        sink = Discard()
        peak = added_peak(lambda: sync.encrypt(data, sink, keyring=kr, options=enc_opts))  # noqa: B023
        assert sink.n == len(ct)
        assert peak <= budget + SLACK, (seg, peak)


def test_a_budget_of_exactly_the_minimum_works_and_one_byte_less_is_refused(
    kr: Keyring,
) -> None:
    seg = 2 * MIB  # the smallest budget (4 MiB) cannot hold it: 4 MiB + 17 bytes are needed
    data = os.urandom(5 * seg + 7)
    ct = bytes(sync.encrypt_bytes(data, keyring=kr, options=api.Options(segment_size=seg)))
    need = minimum_bytes(seg + TAG_LEN, seg)
    assert need == 4 * MIB + TAG_LEN + 1
    sink = Digest()
    opts = api.Options(memory_budget=need, workers=2)
    peak = added_peak(lambda: sync.decrypt(ct, sink, keyring=kr, options=opts))
    assert sink.h.digest() == hashlib.sha256(data).digest()
    assert need <= peak <= need + SLACK  # it did hold a segment in and one out
    out = io.BytesIO()
    with pytest.raises(ConfigurationError, match="2 MiB"):
        sync.decrypt(ct, out, keyring=kr, options=api.Options(memory_budget=need - 1))
    assert out.getvalue() == b""


# -- refused before any output ----------------------------------------------------------------


def test_decrypt_refuses_a_segment_size_the_budget_cannot_hold_and_writes_nothing(
    tmp_path: Path, kr: Keyring
) -> None:
    """The header names 8 MiB segments; a 12 MiB budget cannot hold two. Refused once the
    header authenticated and before any output: no temporary file, no target, nothing on a
    stream."""
    ct = bytes(
        sync.encrypt_bytes(b"x" * 1000, keyring=kr, options=api.Options(segment_size=8 * MIB))
    )
    opts = api.Options(memory_budget=12 * MIB)
    target = tmp_path / "out.bin"
    with pytest.raises(ConfigurationError) as e:
        sync.decrypt(ct, str(target), keyring=kr, options=opts)
    msg = str(e.value)
    assert "8 MiB" in msg and "12 MiB" in msg and "memory_budget" in msg
    assert "--memory-budget" in msg and "at least 17 MiB" in msg
    assert list(tmp_path.iterdir()) == []
    stream = io.BytesIO()
    with pytest.raises(ConfigurationError):
        sync.decrypt(ct, stream, keyring=kr, options=opts)
    assert stream.getvalue() == b""
    # and the figure it names is enough
    sync.decrypt(ct, stream, keyring=kr, options=api.Options(memory_budget=17 * MIB))
    assert stream.getvalue() == b"x" * 1000


def test_a_forged_segment_size_is_an_invalid_object_not_a_budget_to_raise(
    tmp_path: Path, kr: Keyring
) -> None:
    """``seg_log2`` (header byte 12) raised to 64 MiB segments in a 4 KiB-segment object: the
    budget check ran on the unauthenticated header, so every face answered ConfigurationError
    with advice to raise the budget (CLI exit 2), and following it gave AuthenticationError.
    The header authenticates first now: AuthenticationError everywhere, nothing written."""
    ct = bytearray(
        sync.encrypt_bytes(os.urandom(9000), keyring=kr, options=api.Options(segment_size=4096))
    )
    assert ct[12] == 12
    ct[12] = 26
    small = api.Options(memory_budget=4 * MIB)
    target = tmp_path / "out.bin"
    faces = {
        "bytes": lambda: sync.decrypt_bytes(bytes(ct), keyring=kr, options=small),
        "path": lambda: sync.decrypt(bytes(ct), str(target), keyring=kr, options=small),
        "reader": lambda: open_decrypted(io.BytesIO(bytes(ct)), keyring=kr, options=small),
    }
    for name, face in faces.items():
        with pytest.raises(AuthenticationError):
            face()
        assert list(tmp_path.iterdir()) == [], name
    with pytest.raises(AuthenticationError):
        anyio.run(lambda: api.decrypt(bytes(ct), str(target), keyring=kr, options=small))
    assert list(tmp_path.iterdir()) == []
    # the CLI: exit 1 (an invalid object), not 2 (raise the budget)
    key, src, enc = tmp_path / "k.key", tmp_path / "in.bin", tmp_path / "in.env"
    args = ("--key-file", str(key), "--no-progress")
    assert _envelope("keygen", str(key)).returncode == 0
    src.write_bytes(os.urandom(9000))
    r = _envelope("encrypt", str(src), str(enc), *args, "--segment-size", "4096")
    assert r.returncode == 0, r.stderr
    forged = bytearray(enc.read_bytes())
    forged[12] = 26
    enc.write_bytes(forged)
    r = _envelope("decrypt", str(enc), str(target), *args, "--memory-budget", "4M")
    assert r.returncode == 1 and b"memory budget" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "in.env", "k.key"]


def test_the_reader_refuses_it_too(kr: Keyring) -> None:
    ct = bytes(sync.encrypt_bytes(b"y" * 10, keyring=kr, options=api.Options(segment_size=8 * MIB)))
    with pytest.raises(ConfigurationError, match="8 MiB"):
        open_decrypted(io.BytesIO(ct), keyring=kr, options=api.Options(memory_budget=12 * MIB))


def _envelope(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "ENVELOPE_HOME": "/nonexistent-envelope-home-for-tests"}
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args],
        capture_output=True,
        env=env,
        timeout=120,
    )


def test_cli_memory_budget(tmp_path: Path) -> None:
    key, src = tmp_path / "k.key", tmp_path / "in.bin"
    assert _envelope("keygen", str(key)).returncode == 0
    src.write_bytes(os.urandom(3 * MIB))
    enc, back = tmp_path / "in.env", tmp_path / "back.bin"
    args = ("--key-file", str(key), "--no-progress")

    big = ("--segment-size", str(8 * MIB))
    r = _envelope("encrypt", str(src), str(enc), *args, *big, "--memory-budget", "12M")
    assert r.returncode == 2 and b"--memory-budget" in r.stderr and b"8 MiB" in r.stderr
    assert not enc.exists()

    r = _envelope("encrypt", str(src), str(enc), *args, *big)
    assert r.returncode == 0, r.stderr
    r = _envelope("decrypt", str(enc), str(back), *args, "--memory-budget", "12M")
    assert r.returncode == 2 and b"at least 17 MiB" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "in.env", "k.key"]
    r = _envelope("decrypt", str(enc), str(back), *args, "--memory-budget", "17MiB")
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()

    r = _envelope("decrypt", str(enc), str(back), *args, "--memory-budget", "lots")
    assert r.returncode == 2 and b"not a size" in r.stderr


# -- the seekable reader's cache ---------------------------------------------------------------


def test_reader_cache_is_bounded_by_bytes(kr: Keyring) -> None:
    """8 MiB segments, 40 MiB budget: the cache keeps what is left beside one segment being
    fetched and opened (two segments), not 8 segments (64 MiB) as a count-bounded cache did."""
    seg = 8 * MIB
    data = os.urandom(6 * seg + 3)
    ct = bytes(sync.encrypt_bytes(data, keyring=kr, options=api.Options(segment_size=seg)))
    budget = 40 * MIB
    opts = api.Options(memory_budget=budget)
    with traced(), open_decrypted(io.BytesIO(ct), keyring=kr, options=opts) as r:
        assert r.cache_bytes == budget - (2 * seg + TAG_LEN)
        for _ in range(2):
            for i in range(7):
                at = i * seg
                assert r.pread(at + 5, 100) == data[at + 5 : at + 105]
                # a 12 MiB read is returned to the caller: it counts here, and still fits
                assert r.pread(at, 3 * seg // 2) == data[at : at + 3 * seg // 2]
        held, peak = tracemalloc.get_traced_memory()
        assert peak <= budget + SLACK, peak
        assert 2 * seg <= held <= 2 * seg + SLACK  # the cache: two segments, not eight
        r.close()
        assert tracemalloc.get_traced_memory()[0] <= SLACK  # closed: the cache is gone


def test_reader_revisits_come_from_the_cache(kr: Keyring) -> None:
    """Bounded, the cache still serves a revisit (a Parquet footer, then its column chunks)."""

    class Counting(io.BytesIO):
        reads = 0

        def read(self, n: int | None = -1) -> bytes:
            Counting.reads += 1
            return super().read(n)

    seg = 64 * KIB
    data = os.urandom(10 * seg)
    ct = bytes(sync.encrypt_bytes(data, keyring=kr, options=api.Options(segment_size=seg)))
    with open_decrypted(Counting(ct), keyring=kr) as r:
        assert r.pread(9 * seg + 1, 10) == data[9 * seg + 1 : 9 * seg + 11]
        before = Counting.reads
        assert r.pread(9 * seg + 100, 10) == data[9 * seg + 100 : 9 * seg + 110]
        assert Counting.reads == before


class _Plain:
    """A blocking sink (a plain `write`): `envelope.sync` streams into it on the calling
    thread, with no event loop (`envelope.blocking_streams`)."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, data: memoryview) -> int:
        self.h.update(data)
        self.n += len(data)
        return len(data)


@pytest.mark.parametrize("budget", [4 * MIB + 2 * TAG_LEN + 1, 9 * MIB, 20 * MIB])
def test_blocking_streams_stay_within_the_budget(
    monkeypatch: pytest.MonkeyPatch, kr: Keyring, budget: int
) -> None:
    """A blocking source and sink (file objects) take the one-thread stream loop, whose
    buffers are anonymous mappings that tracemalloc does not see: every buffer it maps
    during one call is counted instead. They fit the budget whatever the batch size asked,
    down to the pipeline's least (one segment in, the look-ahead byte, one segment out)."""
    from envelope import blocking_streams

    mapped: list[int] = []

    class Counted(blocking_streams.PageBuffer):  # type: ignore[name-defined]
        def __init__(self, size: int) -> None:
            mapped.append(size)
            super().__init__(size)

    monkeypatch.setattr(blocking_streams, "PageBuffer", Counted)
    seg = 2 * MIB
    data = os.urandom(9 * seg + 5)
    opts = api.Options(segment_size=seg, memory_budget=budget, batch_bytes=64 * MIB)
    sink = _Plain()
    sync.encrypt(io.BytesIO(data), sink, keyring=kr, options=opts)
    assert 0 < sum(mapped) <= budget, mapped
    ct = bytes(sync.encrypt_bytes(data, keyring=kr, options=api.Options(segment_size=seg)))
    assert sink.n == len(ct)
    mapped.clear()
    out = _Plain()
    sync.decrypt(io.BytesIO(ct), out, keyring=kr, options=opts)
    assert 0 < sum(mapped) <= budget, mapped
    assert out.h.digest() == hashlib.sha256(data).digest()


def test_a_long_read_is_opened_a_step_at_a_time(kr: Keyring) -> None:
    """A read far longer than the budget holds the result (twice for `read`, which returns
    bytes; once for `readinto`, which fills the caller's buffer) and one step of segments,
    not all of their ciphertext and plaintext at once."""
    seg, n = 256 * KIB, 40 * MIB + 7
    data = os.urandom(n)
    ct = bytes(sync.encrypt_bytes(data, keyring=kr, options=api.Options(segment_size=seg)))
    budget = 8 * MIB
    opts = api.Options(memory_budget=budget)
    with open_decrypted(io.BytesIO(ct), keyring=kr, options=opts) as r:
        with traced():
            assert r.read() == data
            peak = tracemalloc.get_traced_memory()[1]
        assert peak <= 2 * n + budget + SLACK, peak
        into = bytearray(n)
        r.seek(0)
        with traced():
            assert r.readinto(into) == n
            peak = tracemalloc.get_traced_memory()[1]
        assert into == data
        assert peak <= budget + SLACK, peak
        # a read that starts and ends inside segments, across steps
        assert r.pread(3 * seg + 11, 9 * MIB) == data[3 * seg + 11 : 3 * seg + 11 + 9 * MIB]


@pytest.mark.parametrize("direction", ["encrypt", "decrypt"])
def test_a_small_object_with_huge_segments_gets_buffers_of_its_size(
    kr: Keyring, direction: str
) -> None:
    """The streaming pipeline sizes its batch buffers to an input of known length: a
    100-byte object with 64 MiB segments allocated (and zero-filled) two 64 MiB buffers."""
    import anyio

    opts = api.Options(segment_size=64 * MIB)
    data = os.urandom(100)
    ct = bytes(sync.encrypt_bytes(data, keyring=kr, options=opts))

    async def run() -> None:
        if direction == "encrypt":
            await api.encrypt(data, Discard(), keyring=kr, options=opts)
        else:
            await api.decrypt(ct, Discard(), keyring=kr, options=opts)

    anyio.run(run)  # warm: the key is cached, imports done
    assert added_peak(lambda: anyio.run(run)) <= SLACK
