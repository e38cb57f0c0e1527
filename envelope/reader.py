"""Random access into an encrypted object: a seekable, verifying plaintext reader.

    with open_decrypted("big.env", keyring=kr) as f:     # header checked, key unwrapped
        f.seek(10 << 30)
        chunk = f.read(4096)                              # reads and opens one segment

Only the segments that hold the requested bytes are read (one contiguous ciphertext range per
read call, so over S3 one ranged GET) and each is authenticated before any of its bytes are
returned. `size` is the plaintext length implied by the ciphertext length: provisional until
the final segment has verified; `verified_size()` and `seek(0, SEEK_END)` verify it first, so
a truncated object cannot pass for a shorter valid one.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from typing import IO, Protocol

import anyio.to_thread
from cachetools import LRUCache

from .api import DEFAULT_MEMORY_BUDGET, DEFAULT_OPTIONS, Options, open_object
from .blocking_streams import binary
from .errors import ClosedError, ConfigurationError, SourceChangedError
from .keyring import Keyring
from .objects import (
    TAG_LEN,
    Header,
    ObjectKeys,
    check_keyring,
    layout,
    open_object_keys,
    open_range,
    read_header,
)
from .options import check_options, whole_number

__all__ = (
    "AsyncDecryptingReader",
    "DecryptingReader",
    "RangeFile",
    "aopen_decrypted",
    "ciphertext_range",
    "open_decrypted",
)


class RangeFile(Protocol):
    """Positional reads over ciphertext: a local file, or an object store with ranged GETs."""

    def size(self) -> int: ...

    def read_range(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class _SeekableFile:
    """RangeFile over a seekable binary file object (thread-safe: one lock around seek+read)."""

    def __init__(self, f: IO[bytes], *, owned: bool) -> None:
        self._f = f
        self._owned = owned
        self._lock = threading.Lock()
        self.reads = 0  # number of positional reads, for tests and diagnostics

    def size(self) -> int:
        with self._lock:
            return self._seek(0, os.SEEK_END)

    def _seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        try:
            return self._f.seek(offset, whence)
        except io.UnsupportedOperation:  # (a file object without `seekable()` to ask first)
            raise ConfigurationError(_NOT_SEEKABLE) from None

    def read_range(self, offset: int, length: int) -> bytes:
        with self._lock:
            self.reads += 1
            self._seek(offset)
            first = self._f.read(length)  # one allocation, no copy, in the usual case
            if len(first) == length or not first:
                return first
            out = bytearray(first)  # a short read (a pipe-like file): gather the rest
            while len(out) < length:
                chunk = self._f.read(length - len(out))
                if not chunk:
                    break
                out += chunk
            return bytes(out)

    def close(self) -> None:
        if self._owned:
            self._f.close()


def ciphertext_range(
    header: Header, ciphertext_len: int, offset: int, length: int
) -> tuple[int, int]:
    """[start, end) of the one ciphertext byte range holding plaintext [offset, offset+length).

    Whole segments only: fetch this range (one ranged GET), then open its segments. Returns an
    empty range at the end of the object when nothing is requested.
    """
    return layout(header).ciphertext_range(offset, length, ciphertext_len)


_NOT_SEEKABLE = (
    "random access needs a seekable source; this stream (a pipe or a socket?) is not: decrypt "
    "it as a stream instead"
)


def _as_range_file(source: str | os.PathLike[str] | IO[bytes] | RangeFile) -> RangeFile:
    if isinstance(source, str | os.PathLike):
        try:
            # a FIFO's open waits for a writer, then its reads consume the pipe: only a file
            # (or a block device holding one) has positions to read at (review)
            mode = os.stat(source).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise ConfigurationError(
                    f"{os.fspath(source)!r} is not a regular file: {_NOT_SEEKABLE}"
                )
            return _SeekableFile(open(source, "rb"), owned=True)
        except OSError as e:
            raise ConfigurationError(f"cannot open {os.fspath(source)!r}: {e.strerror}") from None
    if hasattr(source, "read_range"):
        return source  # type: ignore[return-value]
    if hasattr(source, "seek") and hasattr(source, "read"):
        binary(source, "source")
        seekable = getattr(source, "seekable", None)
        if callable(seekable) and not seekable():
            raise ConfigurationError(_NOT_SEEKABLE)
        return _SeekableFile(source, owned=False)
    raise ConfigurationError("random access needs a path, a seekable file or a RangeFile")


def _read_header(rf: RangeFile, max_wrapped_keys: int) -> Header:
    return read_header(rf.read_range, max_wrapped_keys=max_wrapped_keys)


class DecryptingReader(io.RawIOBase):
    """A read-only, seekable binary file of an object's plaintext. Build with open_decrypted."""

    def __init__(
        self,
        rf: RangeFile,
        header: Header,
        keys: ObjectKeys,
        ciphertext_len: int,
        *,
        cache_segments: int = 8,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        super().__init__()
        self._rf = rf
        self.header = header
        self._keys = keys
        self._layout = layout(header)
        self._ct_len = ciphertext_len
        self._size = self._layout.plaintext_length(ciphertext_len)
        self._count = self._layout.segment_count(self._size)
        self._pos = 0
        self._verified = False
        #: `readline`'s window: authenticated plaintext and the offset it starts at
        self._window: tuple[bytes, int] = (b"", 0)
        #: recently opened (authenticated) segments, so readers that revisit a segment (a
        #: Parquet footer, then its column chunks) do not fetch and open it again. Bounded by
        #: bytes: at most `cache_segments` segments, and only what the memory budget leaves
        #: beside one segment being fetched and opened (with 64 MiB segments and the default
        #: 256 MiB budget, one segment).
        s, t = self._layout.segment_size, self._layout.ct_segment_size
        self.cache_bytes = max(0, min(cache_segments * s, memory_budget - (s + t)))
        #: segments opened per range read: a long read is fetched and opened this many at a
        #: time, each step holding its ciphertext, its plaintext and the bytes copied out
        #: (about three times its size) beside the cache, within the memory budget
        self._step = max(1, (memory_budget - self.cache_bytes) // (3 * (s + t)))
        self._cache: LRUCache[int, bytes | bytearray] = LRUCache(
            maxsize=max(1, self.cache_bytes), getsizeof=len
        )
        self._lock = threading.Lock()

    # -- information
    @property
    def size(self) -> int:
        """Plaintext length implied by the ciphertext length (provisional; see verified_size)."""
        return self._size

    def verified_size(self) -> int:
        """Authenticate the final segment, then return the plaintext length."""
        self._check_open()
        if not self._verified:
            self._open_range(self._count - 1, self._count, 0, 0)
        return self._size

    def ciphertext_range(self, offset: int, length: int) -> tuple[int, int]:
        return self._layout.ciphertext_range(offset, length, self._ct_len)

    # -- io.RawIOBase
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        offset = whole_number(offset, "seek offset")  # a numpy integer would overflow below
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self.verified_size() + offset
        else:
            raise ConfigurationError(f"bad whence {whence}")
        if pos < 0:
            raise ConfigurationError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Read into `buffer` straight from each step of segments (no copy of the whole)."""
        self._check_open()
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size:
            self.verified_size()  # EOF is only trusted once the final segment verified
            return 0
        n = self._pread_into(self._pos, view[: max(0, min(len(view), self._size - self._pos))])
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        if size is not None:
            size = whole_number(size, "size")
        if size is None or size < 0:
            size = max(0, self._size - self._pos)
        if self._pos >= self._size:
            self.verified_size()  # EOF is only trusted once the final segment verified
            return b""
        end = min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        data = self.pread(self._pos, end - self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readline(self, size: int | None = -1) -> bytes:
        """One line (through b"\n"), at most `size` bytes. IOBase's own reads a byte at a
        time: iterating the reader over a CSV cost about 24 us a byte (review). Lines come
        from a window of authenticated plaintext (up to 64 KiB, never past the segment the
        position is in: damage further on is reported where it is read, not a line early),
        kept until the position leaves it."""
        self._check_open()
        limit = -1 if size is None else whole_number(size, "size")
        out = bytearray()
        start = self._pos
        try:
            return self._readline(out, limit)
        except BaseException:
            # as read() and readinto() leave it: a retry after a failed fetch (a transient
            # S3 error) reads the whole line again, not its tail (review)
            self._pos = start
            raise

    def _readline(self, out: bytearray, limit: int) -> bytes:
        while limit < 0 or len(out) < limit:
            buf, at = self._window
            off = self._pos - at
            if not 0 <= off < len(buf):
                s = self._layout.segment_size
                rest = s - self._pos % s  # (within this segment)
                # 64 KiB windows, unless the cache cannot hold the segment: then each window
                # fetched and opened all of it again, so the window is the rest of it
                span = min(1 << 16, rest) if self.cache_bytes >= s else rest
                buf, at, off = self.pread(self._pos, span), self._pos, 0
                if not buf:
                    break  # (pread verified the final segment: a true end)
                self._window = (buf, at)
            stop = len(buf) if limit < 0 else min(len(buf), off + limit - len(out))
            end = buf.find(b"\n", off, stop)
            upto = end + 1 if end >= 0 else stop
            out += buf[off:upto]
            self._pos = at + upto
            if end >= 0:
                break
        return bytes(out)

    def pread(self, offset: int, length: int) -> bytes:
        """Plaintext [offset, offset+length) without moving the position. Thread-safe."""
        self._check_open()
        # as Python ints: a numpy integer's sum wraps (a valid range read back as empty)
        offset, length = whole_number(offset, "offset"), whole_number(length, "length")
        if offset < 0 or length < 0:
            raise ConfigurationError(f"offset and length must be >= 0, not {offset}, {length}")
        end = min(self._size, offset + length)
        if offset >= end:
            if length and offset >= self._size:
                self.verified_size()  # EOF is only trusted once the final segment verified
            return b""
        s = self._layout.segment_size
        first, last = offset // s, (end - 1) // s + 1
        if last - first <= 3 * self._step:
            # one range read holds ~2 copies of its segments and the result; stepping holds
            # the result twice (filled, then as bytes) and ~3 steps: it pays only beyond this
            return self._open_range(first, last, offset - first * s, end - first * s)
        # Grown as the steps authenticate, never sized in advance: the size comes from the
        # file's length and a header not yet vouched for by any segment, so a valid header in
        # front of a sparse terabyte asked for a terabyte before the first tag failed (review).
        out = bytearray()
        for piece in self._steps(offset, end):
            out += piece
        return bytes(out)

    def _pread_into(self, offset: int, dst: memoryview) -> int:
        """Plaintext from `offset` into all of `dst` (within the size), `_step` segments at a
        time, so that a long read never holds more than one step of ciphertext."""
        done = 0
        for piece in self._steps(offset, min(self._size, offset + len(dst))):
            dst[done : done + len(piece)] = piece
            done += len(piece)
        return done

    def _steps(self, offset: int, end: int) -> Iterator[bytes]:
        """The authenticated plaintext of [offset, end), `_step` segments at a time."""
        s = self._layout.segment_size
        at = offset
        while at < end:
            first = at // s
            last = min((end - 1) // s + 1, first + self._step)
            stop = min(end, last * s)
            piece = self._open_range(first, last, at - first * s, stop - first * s)
            at += len(piece)
            yield piece
            del piece

    def _open_range(self, first: int, last: int, lo_cut: int = 0, hi_cut: int = -1) -> bytes:
        """Plaintext [lo_cut, hi_cut) of segments [first, last) (relative to segment `first`):
        cached segments from the cache, the rest fetched in one range read (one ranged GET)
        and authenticated before use.

        Memory: the ciphertext is dropped as soon as it is opened, and only the requested
        bytes are copied out, so a one-segment read holds one segment of ciphertext and one of
        plaintext at a time, besides the cache (see `cache_bytes`)."""
        s = self._layout.segment_size
        with self._lock:
            have = {i: self._cache[i] for i in range(first, last) if i in self._cache}
        missing = [i for i in range(first, last) if i not in have]
        lo = hi = 0
        out = bytearray()
        final = False
        if missing:
            lo, hi = missing[0], missing[-1] + 1
            t = self._layout.ct_segment_size
            start = self.header.header_len + lo * t
            stop = min(self._ct_len, self.header.header_len + hi * t)
            try:
                ct = self._rf.read_range(start, stop - start)
            except ValueError:  # ("I/O operation on closed file")
                if self.closed:  # closed by another thread while this read ran
                    raise ClosedError("reader is closed") from None
                raise
            if len(ct) != stop - start:
                # the object moved under the reader (not a header fault nor a truncation)
                raise SourceChangedError("the object changed size while it was read")
            final = hi == self._count
            out = bytearray((stop - start) - (hi - lo) * TAG_LEN)
            open_range(self.header, self._keys, lo, memoryview(ct), memoryview(out), final)
            del ct
        view = memoryview(out)

        def segment(i: int) -> bytes | bytearray | memoryview:
            return have[i] if i in have else view[(i - lo) * s : (i - lo + 1) * s]

        pieces = [segment(i) for i in range(first, last)]
        whole = sum(len(p) for p in pieces)
        hi_cut = whole if hi_cut < 0 else hi_cut
        wanted: list[bytes | bytearray | memoryview] = []
        pos = 0
        for p in pieces:
            a, b = max(lo_cut, pos), min(hi_cut, pos + len(p))
            if a < b:
                wanted.append(memoryview(p)[a - pos : b - pos])
            pos += len(p)
        result = b"".join(wanted)  # the requested bytes, copied out once
        del wanted, pieces
        view.release()
        if missing:
            self._remember(lo, hi, out, final)
        return result

    def _remember(self, lo: int, hi: int, out: bytearray, final: bool) -> None:
        """Cache the newest opened segments that fit; a lone segment is cached as the very
        buffer it was opened into (no copy)."""
        s = self._layout.segment_size
        # by the segments' real lengths: a short final segment is cached where a full one
        # would not fit (counted by the nominal size, none was, and every small read of it
        # fetched and opened it again: 16 MiB for each 4 KiB; review)
        n, room = 0, self.cache_bytes
        for i in range(hi - 1, lo - 1, -1):
            size = min(s, len(out) - (i - lo) * s)
            if size > room:
                break
            n, room = n + 1, room - size
        with self._lock:
            if final:
                self._verified = True
            if self.closed:
                return  # (a read that was running when the reader closed: nothing to keep)
            if hi - lo == 1 and n:
                self._cache[lo] = out
                return
            for i in range(hi - n, hi):
                self._cache[i] = bytes(out[(i - lo) * s : (i - lo + 1) * s])

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError("reader is closed")

    # IOBase's own checks of these raise ValueError, which `except ClosedError` misses
    def __iter__(self) -> DecryptingReader:
        self._check_open()
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        self._check_open()
        return super().readlines(-1 if hint is None else hint)

    def __enter__(self) -> DecryptingReader:
        self._check_open()
        return self

    def close(self) -> None:
        if not self.closed:
            self._cache.clear()
            self._window = (b"", 0)
            self._rf.close()
        super().close()

    def __repr__(self) -> str:
        return f"DecryptingReader(size={self._size}, segment_size={self._layout.segment_size})"


async def aopen_decrypted(
    source: str | os.PathLike[str] | IO[bytes] | RangeFile,
    *,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
) -> DecryptingReader:
    """Parse and authenticate the header (one KMS unwrap), then return a seekable reader."""
    rf = _as_range_file(source)
    try:
        check_options(options)
        header = await anyio.to_thread.run_sync(_read_header, rf, options.max_wrapped_keys)
        ct_len = await anyio.to_thread.run_sync(rf.size)
        keys = await open_object(
            header,
            keyring=keyring,
            expected_context=expected_context,
            expected_kms_context=expected_kms_context,
        )
        # a segment too large for the budget: refused once the header authenticated (a
        # forged segment size is AuthenticationError, not advice to raise the budget)
        options.plan("decrypt", header.seg_log2)
        return DecryptingReader(rf, header, keys, ct_len, memory_budget=options.memory_budget)
    except BaseException:
        rf.close()
        raise


def open_decrypted(
    source: str | os.PathLike[str] | IO[bytes] | RangeFile,
    *,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
) -> DecryptingReader:
    """Blocking `aopen_decrypted`, on the calling thread (no event loop; a warm data-key
    cache makes it one header read and two HMACs)."""
    rf = _as_range_file(source)
    try:
        check_options(options)
        header = _read_header(rf, options.max_wrapped_keys)
        ct_len = rf.size()
        check_keyring(keyring)
        keys = open_object_keys(
            header,
            keyring.decryption_key_blocking(header.wrapped_keys, header.kms_context),
            expected_context=expected_context,
            expected_kms_context=expected_kms_context,
        )
        # a segment too large for the budget: refused once the header authenticated (a
        # forged segment size is AuthenticationError, not advice to raise the budget)
        options.plan("decrypt", header.seg_log2)
        return DecryptingReader(rf, header, keys, ct_len, memory_budget=options.memory_budget)
    except BaseException:
        rf.close()
        raise


class AsyncDecryptingReader:
    """Async face of DecryptingReader: each read runs on a worker thread."""

    def __init__(self, reader: DecryptingReader) -> None:
        self.reader = reader

    @classmethod
    async def open(
        cls,
        source: str | os.PathLike[str] | IO[bytes] | RangeFile,
        *,
        keyring: Keyring,
        expected_context: Mapping[str, str] | None = None,
        expected_kms_context: Mapping[str, str] | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> AsyncDecryptingReader:
        return cls(
            await aopen_decrypted(
                source,
                keyring=keyring,
                expected_context=expected_context,
                expected_kms_context=expected_kms_context,
                options=options,
            )
        )

    @property
    def size(self) -> int:
        return self.reader.size

    async def read(self, size: int = -1) -> bytes:
        return await anyio.to_thread.run_sync(self.reader.read, size)

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return await anyio.to_thread.run_sync(self.reader.seek, offset, whence)

    async def tell(self) -> int:
        return self.reader.tell()

    async def verified_size(self) -> int:
        return await anyio.to_thread.run_sync(self.reader.verified_size)

    async def aclose(self) -> None:
        self.reader.close()

    async def __aenter__(self) -> AsyncDecryptingReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
