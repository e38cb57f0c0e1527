"""The seekable decrypting reader and the plaintext-to-ciphertext range map."""

from __future__ import annotations

import io
import os
import random
from functools import partial
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import api, sync
from envelope.errors import AuthenticationError, ClosedError, TruncatedObjectError
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.reader import AsyncDecryptingReader, ciphertext_range, open_decrypted

S = 4096
OPTS = api.Options(segment_size=S)
_kms = MemoryKms()
KR = Keyring(_kms, _kms.create_key())
DATA = os.urandom(25 * S + 123)
CT = bytes(sync.encrypt_bytes(DATA, keyring=KR, options=OPTS, object_context={"k": "v"}))


class CountingFile:
    """A RangeFile over bytes that records every range read (like ranged GETs)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[tuple[int, int]] = []

    def size(self) -> int:
        return len(self.data)

    def read_range(self, offset: int, length: int) -> bytes:
        self.ranges.append((offset, offset + length))
        return self.data[offset : offset + length]

    def close(self) -> None:
        pass


@settings(max_examples=80, deadline=None)
@given(offset=st.integers(0, len(DATA) + 10), length=st.integers(0, 5 * S))
def test_random_reads_match_and_fetch_one_range(offset: int, length: int) -> None:
    rf = CountingFile(CT)
    with open_decrypted(rf, keyring=KR) as r:
        rf.ranges.clear()
        r.seek(offset)
        got = r.read(length)
        assert got == DATA[offset : offset + length]
        assert r.tell() == offset + len(got)
        if got:
            # exactly one ciphertext range, and it is the one ciphertext_range predicts
            assert rf.ranges == [ciphertext_range(r.header, len(CT), offset, length)]


def test_read_whole_seek_end_and_sizes(tmp_path: Path) -> None:
    p = tmp_path / "o.env"
    p.write_bytes(CT)
    with open_decrypted(p, keyring=KR, expected_context={"k": "v"}) as r:
        assert r.size == len(DATA)
        assert r.read() == DATA
        assert r.read(10) == b""
        assert r.seek(-5, os.SEEK_END) == len(DATA) - 5
        assert r.read() == DATA[-5:]
        assert r.verified_size() == len(DATA)
        r.seek(3)
        assert r.seek(4, os.SEEK_CUR) == 7
        buf = bytearray(9)
        assert r.readinto(buf) == 9 and bytes(buf) == DATA[7:16]
    with pytest.raises(ClosedError):
        r.read(1)


def test_pyarrow_reads_through_the_reader() -> None:
    with open_decrypted(io.BytesIO(CT), keyring=KR) as r:
        f = pa.PythonFile(r, mode="r")
        assert f.size() == len(DATA)
        f.seek(S - 3)
        assert f.read(10) == DATA[S - 3 : S + 7]


def test_truncated_object_cannot_pass_for_a_shorter_one() -> None:
    header_len = api.parse_object_header(memoryview(CT)).header_len
    cut = CT[: header_len + 10 * (S + 16)]
    with open_decrypted(io.BytesIO(cut), keyring=KR) as r:
        assert r.size == 10 * S  # provisional
        assert r.read(S) == DATA[:S]  # authenticated non-final segments may be read
        with pytest.raises(TruncatedObjectError):
            r.seek(0, os.SEEK_END)
        with pytest.raises(TruncatedObjectError):
            r.verified_size()
        r.seek(9 * S)
        with pytest.raises(TruncatedObjectError):
            r.read()


def test_pread_at_the_provisional_end_checks_the_final_segment() -> None:
    """An EOF probe with pread alone said b"" (end of file) on an object whose final segment
    was cut off; read() and readinto() already verified it (review)."""
    header_len = api.parse_object_header(memoryview(CT)).header_len
    cut = CT[: header_len + 10 * (S + 16)]
    with open_decrypted(io.BytesIO(cut), keyring=KR) as r:
        assert r.pread(r.size, 0) == b""  # nothing asked, nothing to vouch for
        with pytest.raises(TruncatedObjectError):
            r.pread(r.size, 100)
    with open_decrypted(io.BytesIO(CT), keyring=KR) as r:
        assert r.pread(len(DATA), 100) == b"" and r.pread(len(DATA) + 5, 1) == b""


def test_numpy_positions_are_python_ints_inside() -> None:
    """Positions given as numpy integers (a pandas or Arrow caller's offsets) were used as
    given after the check: offset + length wrapped at 2**63, so a valid range read back as
    empty (a false end of file), and read(2**63) raised OverflowError (review)."""
    import numpy as np  # installed with the test extra (matplotlib, dask)

    big = 2**63 - 1
    with open_decrypted(io.BytesIO(CT), keyring=KR) as r:
        assert r.pread(np.int64(5), np.int64(big)) == DATA[5:]
        assert r.seek(np.int64(5)) == 5 and type(r.tell()) is int
        assert r.read(2**63) == DATA[5:]
        r.seek(np.int32(7))
        assert r.read(np.int64(10)) == DATA[7:17]
        r.seek(np.int64(big))
        assert r.seek(10, os.SEEK_CUR) == big + 10


def test_an_object_that_shrinks_under_the_reader_is_source_changed(tmp_path: Path) -> None:
    """Not a header fault (HeaderFormatError, as before) nor a truncation: the file moved
    under the reader, an I/O condition to retry (SourceChangedError, CLI exit 5)."""
    from envelope.errors import SourceChangedError

    p = tmp_path / "o.env"
    p.write_bytes(CT)
    with open_decrypted(str(p), keyring=KR) as r:
        os.truncate(p, len(CT) - 3 * (S + 16))
        with pytest.raises(SourceChangedError):
            r.pread(len(DATA) - 10, 10)


def test_lines_come_whole_and_fast_and_the_end_is_checked() -> None:
    """Iterating the reader (a CSV) went through IOBase's readline, a byte at a time: about
    24 us a byte (review). Lines are read from a window of authenticated plaintext now; the
    same lines, `size` and seeks honoured, and a cut-off object still refused at its end."""
    lines = [b"%d,%s\n" % (i, os.urandom(6).hex().encode()) for i in range(3000)] + [b"tail"]
    text = b"".join(lines)
    ct = bytes(sync.encrypt_bytes(text, keyring=KR, options=OPTS))
    with open_decrypted(io.BytesIO(ct), keyring=KR) as r:
        assert list(r) == lines
        r.seek(3)
        first = r.readline()
        assert first == text[3 : text.index(b"\n") + 1] and r.tell() == len(lines[0])
        assert r.readline(4) == lines[1][:4] and r.readline() == lines[1][4:]
        assert r.readline(0) == b"" and r.tell() == len(lines[0]) + len(lines[1])
        r.seek(len(text) - 2)
        assert r.readline() == b"il" and r.readline() == b""
    header_len = api.parse_object_header(memoryview(ct)).header_len
    cut = ct[: header_len + 10 * (S + 16)]
    with open_decrypted(io.BytesIO(cut), keyring=KR) as r, pytest.raises(TruncatedObjectError):
        list(r)
    # damage in segment 7 is met there, not a window earlier (diff review)
    bad = bytearray(ct)
    bad[header_len + 7 * (S + 16) + 100] ^= 1
    got = []
    with open_decrypted(io.BytesIO(bytes(bad)), keyring=KR) as r:
        with pytest.raises(AuthenticationError):
            for line in r:
                got.append(line)
    assert b"".join(got) == text[: len(b"".join(got))] and len(b"".join(got)) > 7 * S - 100


def test_damaged_segment_fails_only_where_read() -> None:
    bad = bytearray(CT)
    header_len = api.parse_object_header(memoryview(CT)).header_len
    bad[header_len + 7 * (S + 16) + 100] ^= 1
    with open_decrypted(io.BytesIO(bytes(bad)), keyring=KR) as r:
        assert r.pread(0, 7 * S) == DATA[: 7 * S]
        assert r.pread(8 * S, S) == DATA[8 * S : 9 * S]
        with pytest.raises(AuthenticationError):
            r.pread(7 * S + 5, 1)


@pytest.mark.anyio
async def test_async_reader(anyio_backend: str) -> None:
    async with await AsyncDecryptingReader.open(io.BytesIO(CT), keyring=KR) as r:
        offsets = random.Random(1).sample(range(len(DATA)), 20)
        for off in offsets:
            await r.seek(off)
            assert await r.read(100) == DATA[off : off + 100]
        assert await r.verified_size() == len(DATA)


def test_ciphertext_range_arithmetic() -> None:
    h = api.parse_object_header(memoryview(CT))
    hl, t = h.header_len, S + 16
    assert ciphertext_range(h, len(CT), 0, 1) == (hl, hl + t)
    assert ciphertext_range(h, len(CT), S - 1, 2) == (hl, hl + 2 * t)
    assert ciphertext_range(h, len(CT), len(DATA) - 1, 100) == (hl + 25 * t, len(CT))
    assert ciphertext_range(h, len(CT), len(DATA), 5) == (len(CT), len(CT))
    assert ciphertext_range(h, len(CT), 3, 0) == (len(CT), len(CT))


def test_bad_positions_are_configuration_errors_and_closed_readers_say_so(
    tmp_path: Path,
) -> None:
    """pread and seek check their arguments where they are given (one typed error whatever
    the source), and a closed reader answers ClosedError to everything, verified_size too."""
    from envelope.errors import ConfigurationError

    p = tmp_path / "o.env"
    p.write_bytes(CT)
    for source in (str(p), io.BytesIO(CT)):
        r = open_decrypted(source, keyring=KR)
        for offset, length in ((-1, 2), (0, -5), (1.5, 2)):
            with pytest.raises(ConfigurationError):
                r.pread(offset, length)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            r.seek(1.5)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            r.read(2.0)  # type: ignore[arg-type]
        r.close()
        for call in (r.verified_size, partial(r.pread, 0, 1), r.tell, partial(r.read, 1)):
            with pytest.raises(ClosedError):
                call()


def test_a_huge_claimed_size_is_not_allocated_before_a_segment_authenticates(
    tmp_path: Path,
) -> None:
    """A valid header in front of a sparse terabyte: the reader's size is claimed by the file's
    length and a header no segment has vouched for yet, so a whole read must fail on the first
    tag, not ask for a terabyte first (it raised MemoryError; review)."""
    opts = api.Options(segment_size=4096)
    ct = sync.encrypt_bytes(os.urandom(3 * 4096 + 5), keyring=KR, options=opts)
    header_len = len(ct) - (3 * (4096 + 16) + 5 + 16)
    path = tmp_path / "sparse.env"
    with open(path, "wb") as f:
        f.write(ct[:header_len])
        f.truncate(header_len + (1 << 40) + 5)
    with open_decrypted(path, keyring=KR) as reader:
        assert reader.size > 1 << 39
        with pytest.raises(AuthenticationError):
            reader.read()
        with pytest.raises(AuthenticationError):
            reader.pread(0, 1 << 40)
    # a real object's first authentic segments do not change that: the hole fails next
    with open(path, "r+b") as f:
        f.write(ct[: len(ct) - 5 - 16])
    with open_decrypted(path, keyring=KR) as reader:
        with pytest.raises(AuthenticationError):
            reader.read()


def test_a_short_final_segment_is_cached_where_a_full_one_would_not_fit() -> None:
    """The cache counted segments by their nominal size: under a budget whose cache holds
    less than one segment, nothing was cached, and every small read of a short final segment
    fetched and opened it again (16 MiB fetched for each 4 KiB read of a 16 MiB object with
    64 MiB segments; review)."""
    big = 2 << 20  # a 5 MiB memory budget caches less than one such segment
    data = os.urandom(big + 100_000)
    opts = api.Options(memory_budget=5 << 20)
    sealed = bytes(sync.encrypt_bytes(data, keyring=KR, options=api.Options(segment_size=big)))
    f = open_decrypted(io.BytesIO(sealed), keyring=KR, options=opts)
    assert 100_000 <= f.cache_bytes < big
    before = f._rf.reads  # type: ignore[attr-defined]
    for i in range(big, len(data), 4096):
        assert f.pread(i, 4096) == data[i : i + 4096]
    assert f._rf.reads - before == 1  # type: ignore[attr-defined]


def test_lines_of_a_segment_the_cache_cannot_hold_are_read_from_one_fetch() -> None:
    """readline's 64 KiB windows each fetched and opened the whole segment again when the
    cache could not hold it: the window is the rest of the segment then."""
    big = 2 << 20  # lines of 100 bytes in segments the least budget cannot cache
    text = b"".join(b"%099d\n" % i for i in range(3 * big // 100))
    opts = api.Options(memory_budget=5 << 20)
    sealed = bytes(sync.encrypt_bytes(text, keyring=KR, options=api.Options(segment_size=big)))
    f = open_decrypted(io.BytesIO(sealed), keyring=KR, options=opts)
    assert f.cache_bytes < big
    before = f._rf.reads  # type: ignore[attr-defined]
    assert b"".join(f) == text
    assert f._rf.reads - before <= 4  # type: ignore[attr-defined]


def test_a_fifo_path_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    """A FIFO's path was opened (blocking until a writer came) and read as a file: an
    untyped UnsupportedOperation after its bytes were consumed. A file object whose seek
    fails (no `seekable()` to ask) raised it too. ConfigurationError, nothing read."""
    from envelope.errors import ConfigurationError

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigurationError, match="not a regular file"):
        open_decrypted(fifo, keyring=KR)

    class NoSeek(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            return CT[:n]

        def seek(self, offset: int, whence: int = 0) -> int:
            raise io.UnsupportedOperation("not seekable")

    raw = NoSeek()
    raw.seekable = None  # type: ignore[assignment,method-assign]
    with pytest.raises(ConfigurationError, match="seekable"):
        open_decrypted(raw, keyring=KR)  # type: ignore[arg-type]


def test_a_closed_reader_says_so_on_every_path() -> None:
    """Iterating, readlines and `with` on a closed reader raised ValueError, as did reads
    racing a close from another thread: `except ClosedError` missed them (review)."""
    import threading

    f = open_decrypted(io.BytesIO(CT), keyring=KR, options=OPTS)
    f.close()
    for use in (lambda: iter(f), f.readlines, lambda: f.__enter__(), f.read, f.readline):
        with pytest.raises(ClosedError):
            use()
    errors: list[BaseException] = []
    for _ in range(20):
        g = open_decrypted(io.BytesIO(CT), keyring=KR, options=OPTS)
        stop = threading.Event()

        def hammer(g: object = g, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    g.pread(random.randrange(len(DATA)), 3 * S)  # type: ignore[attr-defined]
                except ClosedError:
                    return
                except BaseException as e:  # anything else is the bug
                    errors.append(e)
                    return

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for th in threads:
            th.start()
        g.close()
        stop.set()
        for th in threads:
            th.join(10)
    assert errors == []


def test_a_failed_readline_leaves_the_position_where_it_was() -> None:
    """readline moved the position through each window it had read before a later fetch
    failed (a transient S3 error): a retry returned the line's tail, where read() and
    readinto() leave the position alone (review)."""
    lines = b"".join(b"line %05d " % i + b"x" * 200 + b"\n" for i in range(100))
    ct = bytes(sync.encrypt_bytes(lines, keyring=KR, options=OPTS))

    class Flaky(CountingFile):
        fail_at: int | None = None

        def read_range(self, offset: int, length: int) -> bytes:
            if self.fail_at is not None and offset <= self.fail_at < offset + length:
                self.fail_at = None
                raise OSError("transient network error")
            return super().read_range(offset, length)

    rf = Flaky(ct)
    with open_decrypted(rf, keyring=KR) as f:
        start = lines.rfind(b"\n", 0, S) + 1  # a line across segments 0 and 1
        f.seek(start)
        rf.fail_at = f.header.header_len + S + 16 + 1  # the fetch of segment 1 fails once
        with pytest.raises(OSError, match="transient"):
            f.readline()
        assert f.tell() == start
        assert f.readline() == lines[start : lines.index(b"\n", start) + 1]
