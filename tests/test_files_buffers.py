"""Where the file-to-file path's batch buffers sit and how large they are (`envelope.files`).

The kernel's page-cache copies run at a fraction of their speed on some CPUs when the user
buffer's offset within a page differs from the file offset's by a few bytes (a bytearray's
data starts 16 bytes into a page), so every positional read and write uses a buffer placed at
the file offset modulo a page; and a small file gets buffers of its own size, not a batch's.
"""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from envelope import api, blocking_streams, files, objects, sync
from envelope.errors import AuthenticationError
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms


@pytest.fixture
def kr() -> Keyring:
    kms = MemoryKms()
    return Keyring(kms, kms.create_key("b"), cache=CachePolicy())


def _address(view: memoryview) -> int:
    probe = ctypes.c_char.from_buffer(view)
    try:
        return ctypes.addressof(probe)
    finally:
        del probe


@pytest.mark.parametrize("segment_size", [4096, 1 << 16])
def test_positional_io_uses_buffers_at_the_file_offset_modulo_a_page(
    tmp_path: Path, kr: Keyring, segment_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int, int]] = []
    real_preadv, real_pwrite = os.preadv, os.pwrite

    def preadv(fd: int, bufs: list[memoryview], offset: int) -> int:
        seen.append(("read", _address(bufs[0]) % objects.PAGE, offset % objects.PAGE))
        return real_preadv(fd, bufs, offset)

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if offset:  # (the header, written once at 0 from its own bytes)
            seen.append(("write", _address(data) % objects.PAGE, offset % objects.PAGE))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(files.os, "preadv", preadv)
    monkeypatch.setattr(files.os, "pwrite", pwrite)
    data = os.urandom(13 * segment_size + 123)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    opts = api.Options(segment_size=segment_size, batch_bytes=3 * segment_size, workers=2)
    sync.encrypt(str(src), str(tmp_path / "o.env"), keyring=kr, options=opts, durable=False)
    sync.decrypt(str(tmp_path / "o.env"), str(tmp_path / "o.bin"), keyring=kr, options=opts,
                 durable=False)
    assert (tmp_path / "o.bin").read_bytes() == data
    reads = [s for s in seen if s[0] == "read"]
    writes = [s for s in seen if s[0] == "write"]
    assert len(reads) >= 2 * 5 and len(writes) >= 5  # every batch of both directions seen
    assert {s[2] for s in seen} != {0}  # decrypt reads and encrypt writes are not page-aligned
    assert all(addr == off for _, addr, off in seen), seen


class _Recorded(objects.PageBuffer):
    """The real buffer, remembered (its size, what it was told it holds, how it was wiped)."""

    made: ClassVar[list[_Recorded]] = []

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size
        self.wiped: bool | None = None
        _Recorded.made.append(self)

    def wipe(self, *, everything: bool = False) -> None:
        self.wiped = everything
        super().wipe(everything=everything)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[_Recorded]:
    _Recorded.made = []
    monkeypatch.setattr(files, "PageBuffer", _Recorded)
    monkeypatch.setattr(blocking_streams, "PageBuffer", _Recorded)
    return _Recorded.made


def test_a_small_file_gets_small_buffers(
    tmp_path: Path, kr: Keyring, recorded: list[_Recorded]
) -> None:
    src = tmp_path / "tiny.bin"
    src.write_bytes(b"x")
    opts = api.Options(workers=2)  # 1 MiB segments, 2 MiB batches
    sync.encrypt(str(src), str(tmp_path / "t.env"), keyring=kr, options=opts, durable=False)
    sync.decrypt(str(tmp_path / "t.env"), str(tmp_path / "t.bin"), keyring=kr, options=opts,
                 durable=False)
    assert (tmp_path / "t.bin").read_bytes() == b"x"
    assert len(recorded) == 4  # one pair each way: one batch, so one worker
    assert all(b.size <= 1 + 2 * 16 for b in recorded), [b.size for b in recorded]  # not 2 MiB
    assert all(b.wiped is False and 0 < b.used < objects.PAGE + 17 for b in recorded)


def test_a_small_stream_touches_and_wipes_only_what_it_used(
    kr: Keyring, recorded: list[_Recorded]
) -> None:
    sink = io.BytesIO()
    prepared = objects.new_object(kr)
    blocking_streams.seal_stream(prepared, io.BytesIO(b"x").readinto, sink.write,
                                 batch_bytes=2 << 20)
    # one batch in with its look-ahead byte, one out: nothing else
    assert [b.size for b in recorded] == [(2 << 20) + 1, (2 << 20) + 32]
    # what was read and written, not the 2 MiB batches
    assert [b.used - b.used % objects.PAGE for b in recorded] == [0, 0]
    assert all(b.wiped is False for b in recorded)


def test_a_failed_stream_wipes_its_whole_buffers(kr: Keyring, recorded: list[_Recorded]) -> None:
    sealed = io.BytesIO()
    data = os.urandom(3 * 4096 + 5)
    blocking_streams.seal_stream(objects.new_object(kr, seg_log2=12), io.BytesIO(data).readinto,
                                 sealed.write, batch_bytes=4096)
    recorded.clear()
    blob = bytearray(sealed.getvalue())
    blob[-3] ^= 1  # the last segment's tag
    source = io.BytesIO(bytes(blob))
    header = blocking_streams.read_stream_header(source.readinto, max_wrapped_keys=1)
    keys = objects.open_object_keys(
        header, kr.decryption_key_blocking(header.wrapped_keys, header.kms_context)
    )
    with pytest.raises(AuthenticationError):
        blocking_streams.open_stream(header, keys, source.readinto, io.BytesIO().write,
                                     batch_bytes=4096)
    assert len(recorded) == 2 and all(b.wiped is True for b in recorded)


@pytest.mark.parametrize("n", [0, 1, 4095, 65536, 65537, 3 * 65536 + 5])
def test_zero_overwrites_exactly_what_it_is_asked_to(n: int) -> None:
    whole = bytearray(os.urandom(n) + b"\xff")
    objects.zero(whole, n)
    assert whole == bytes(n) + b"\xff"  # the byte after `length` is kept
    mapped = mmap.mmap(-1, n + 1, flags=mmap.MAP_PRIVATE)
    mapped[:] = os.urandom(n + 1)
    objects.zero(mapped)
    assert mapped[:] == bytes(n + 1)
    mapped.close()  # (no view of it is left behind)


def test_a_file_round_trip_loads_no_ctypes_and_no_event_loop(tmp_path: Path) -> None:
    """What the CLI's start-up imports for a file: ctypes (about 2 ms) and anyio are not."""
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(100_000))
    code = (
        "import sys\n"
        "from envelope import sync\n"
        "from envelope.keyring import Keyring\n"
        "from envelope.kms.filekey import FileKeyBackend, generate_key_file\n"
        "src, d = sys.argv[1], sys.argv[2]\n"
        "generate_key_file(d + '/k.key')\n"
        "b = FileKeyBackend(d + '/k.key')\n"
        "kr = Keyring(b, b.key_id)\n"
        "sync.encrypt(src, d + '/o.env', keyring=kr, durable=False)\n"
        "sync.decrypt(d + '/o.env', d + '/o.bin', keyring=kr, durable=False)\n"
        "print(','.join(m for m in ('ctypes', 'anyio') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.bin").read_bytes() == src.read_bytes()
    assert r.stdout.strip() == ""


def test_stream_batches_sit_at_their_stream_position_modulo_a_page(kr: Keyring) -> None:
    """A stream's reads and writes (stdin redirected from a file, a pipe) are placed as a
    file's are: by their position in the stream, the header included."""
    data = os.urandom(9 * 4096 + 77)
    pos = {"in": 0, "out": 0}
    placed: list[tuple[str, int, int]] = []
    source = io.BytesIO(data)
    sink = io.BytesIO()

    def read_into(buf: memoryview) -> int:
        if len(buf) >= 4096:  # (not the lengths of the header's own small reads)
            placed.append(("read", _address(buf) % objects.PAGE, pos["in"] % objects.PAGE))
        n = source.readinto(buf)
        pos["in"] += n
        return n

    def write(view: memoryview) -> None:
        if len(view) >= 4096:
            placed.append(("write", _address(view) % objects.PAGE, pos["out"] % objects.PAGE))
        sink.write(view)
        pos["out"] += len(view)

    prepared = objects.new_object(kr, seg_log2=12)
    n = blocking_streams.seal_stream(prepared, read_into, write, batch_bytes=2 * 4096)
    assert n == len(data)
    sealed = sink.getvalue()
    source, sink = io.BytesIO(sealed), io.BytesIO()
    pos["in"] = pos["out"] = 0
    header = blocking_streams.read_stream_header(read_into, max_wrapped_keys=1)
    keys = objects.open_object_keys(
        header, kr.decryption_key_blocking(header.wrapped_keys, header.kms_context)
    )
    blocking_streams.open_stream(header, keys, read_into, write, batch_bytes=2 * 4096)
    assert sink.getvalue() == data
    assert len(placed) >= 4 * 4 and {off for _, _, off in placed} != {0}
    assert all(addr == off for _, addr, off in placed), placed


def test_a_sparse_zero_clears_every_written_block() -> None:
    buf = bytearray(300_000)
    for at in (0, 65_535, 65_536, 200_001, 299_999):
        buf[at] = 0xFF
    objects.zero(buf, sparse=True)
    assert buf == bytearray(300_000)
    buf[5] = 1
    objects.zero(buf, 4, sparse=True)  # only the first 4 bytes asked for
    assert buf[5] == 1


def test_wiping_after_a_failure_does_not_fault_in_a_buffer_never_written() -> None:
    """A failing tiny object with 64 MiB segments: its batch buffers were handed out whole
    but hardly written; wiping them everything=True zeroes what was written (the kernel's
    zero page is only read elsewhere), so peak RSS does not grow by the buffers' size."""
    code = """
import resource, sys
from envelope import objects
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
bufs = [objects.PageBuffer(64 << 20) for _ in range(2)]
for b in bufs:
    view = b.at(100, 64 << 20)
    view[:4096] = b"\\x01" * 4096
    view.release()
    b.wipe(everything=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown_kib = int(out.stdout)
    assert grown_kib < 16 * 1024, f"peak RSS grew by {grown_kib} KiB"
