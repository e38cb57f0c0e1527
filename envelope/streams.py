"""Sources and sinks: where plaintext and ciphertext come from and go to.

The engine reads fixed-size batches with `Source.readinto` (which fills the buffer unless the
input ends) and writes with `Sink.write`, then either `commit`s or `abort`s. Adapters cover
bytes, paths, sync binary files, async files (anyio's and aiofiles') and async byte iterators.

A path sink follows `envelope.atomic`: a regular or new file is written to a temporary file
beside it, fsynced and renamed over it only on `commit` (`abort` removes it), so no partial
output and no unauthenticated plaintext ever stands under the final name; a device or FIFO is
written through, and a symlink's target is written, never the link.

Blocking file calls run on worker threads, a batch (several MiB) per hop, so the event loop
never stalls on disk I/O.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO, Any, Protocol, TypeAlias, cast

import anyio.to_thread

from .atomic import OutputFile
from .blocking_streams import (
    binary,
    fill,
    flush_all,
    read_into_of,
    says_nothing_now,
    wait_ready,
    write_all,
)
from .errors import ConfigurationError

__all__ = (
    "AsyncReadable",
    "AsyncWritable",
    "Sink",
    "SinkLike",
    "Source",
    "SourceLike",
    "AtomicFileSink",
    "BufferSink",
    "CountingSink",
    "open_sink",
    "open_source",
    "read_full",
)


class Source(Protocol):
    async def readinto(self, buf: memoryview) -> int:
        """Fill `buf`; return fewer bytes than its length only at end of input."""
        ...

    async def aclose(self) -> None: ...


class Sink(Protocol):
    async def write(self, data: memoryview) -> None: ...

    async def commit(self) -> None:
        """Everything was written and authenticated: make it visible."""
        ...

    async def abort(self) -> None:
        """Something failed: leave nothing behind (for a path, the target is untouched)."""
        ...


class AsyncReadable(Protocol):
    """An async binary file: anyio's AsyncFile, aiofiles' files, or anything alike."""

    async def read(self, size: int = -1, /) -> bytes: ...


class AsyncWritable(Protocol):
    async def write(self, data: bytes, /) -> int | None: ...


SourceLike: TypeAlias = (
    "bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes] "
    "| AsyncReadable | AsyncIterable[bytes] | Source"
)
SinkLike: TypeAlias = "str | os.PathLike[str] | IO[bytes] | AsyncWritable | Sink"


def _is_async_file(obj: object) -> bool:
    return inspect.iscoroutinefunction(getattr(obj, "read", None)) or inspect.iscoroutinefunction(
        getattr(obj, "write", None)
    )


class _BytesSource:
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._mv = memoryview(data).cast("B")
        self._pos = 0

    async def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), len(self._mv) - self._pos)
        buf[:n] = self._mv[self._pos : self._pos + n]
        self._pos += n
        return n

    def remaining(self) -> int:
        """Bytes not yet read: the pipeline sizes its buffers to them (`run_pipeline`)."""
        return len(self._mv) - self._pos

    async def aclose(self) -> None:
        self._mv.release()


class _SyncFileSource:
    def __init__(self, f: IO[bytes], *, owned: bool) -> None:
        self._f = f
        self._owned = owned
        read_into = read_into_of(f)
        if read_into is None:
            raise ConfigurationError(f"{type(f).__name__} has neither readinto nor read")
        self._read_into = read_into

    async def readinto(self, buf: memoryview) -> int:
        return await anyio.to_thread.run_sync(fill, self._read_into, buf)

    async def aclose(self) -> None:
        if self._owned:
            self._f.close()


async def read_full(source: Source, buf: memoryview) -> int:
    """Fill `buf` from `source`; fewer bytes only at the end of the input. A source that
    answers part of what was asked is asked again: a short read taken for the end sealed a
    shorter object that verifies, and failed a whole one as tampered (review)."""
    got = 0
    while got < len(buf):
        n = await source.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


class _AsyncFileSource:
    """anyio's and aiofiles' files over a sync file: a read may return part of what was
    asked, and a non-blocking descriptor's None ("nothing now") is waited out, never taken for
    the end of the input (as `blocking_streams.read_into_of` does for sync files)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        readinto = getattr(f, "readinto", None)
        self._readinto = readinto if inspect.iscoroutinefunction(readinto) else None
        self._waits = says_nothing_now(f, reading=True)

    async def _some(self, buf: memoryview) -> int | None:
        try:
            if self._readinto is not None:
                n = await self._readinto(buf)
                return None if n is None else int(n)
            chunk = await self._f.read(len(buf))
        except BlockingIOError:
            if not self._waits:
                raise
            return None
        if chunk is None:
            return None
        buf[: len(chunk)] = chunk
        return len(chunk)

    async def readinto(self, buf: memoryview) -> int:
        got = 0
        while got < len(buf):
            n = await self._some(buf[got:])
            if n is None:
                if not self._waits:
                    break  # (a reader without a descriptor: None was its end)
                await anyio.to_thread.run_sync(lambda: wait_ready(self._f, writing=False))
                continue
            if not n:
                break
            got += n
        return got

    async def aclose(self) -> None:
        return None


class _IterSource:
    def __init__(self, it: AsyncIterable[bytes]) -> None:
        self._it: AsyncIterator[bytes] = aiter(it)
        self._rest = memoryview(b"")
        self._done = False

    async def readinto(self, buf: memoryview) -> int:
        got = 0
        while got < len(buf):
            if not self._rest:
                if self._done:
                    break
                try:
                    chunk = await anext(self._it)
                except StopAsyncIteration:
                    self._done = True
                    break
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise ConfigurationError("async iterator sources must yield bytes")
                self._rest = memoryview(chunk).cast("B")
                continue
            n = min(len(buf) - got, len(self._rest))
            buf[got : got + n] = self._rest[:n]
            self._rest = self._rest[n:]
            got += n
        return got

    async def aclose(self) -> None:
        close = getattr(self._it, "aclose", None)
        if close is not None:
            await close()


def open_source(src: SourceLike) -> Source:
    """Adapt any supported input. bytes-likes are data; str and PathLike are paths."""
    if isinstance(src, bytes | bytearray | memoryview):
        return _BytesSource(src)
    if isinstance(src, str | os.PathLike):
        try:
            f = open(src, "rb")
        except OSError as e:
            raise ConfigurationError(f"cannot open {os.fspath(src)!r}: {e.strerror}") from None
        return _SyncFileSource(f, owned=True)
    if _is_async_file(src):  # (before the engine's own Sources: anyio's file looks like one)
        return _AsyncFileSource(src)
    if all(inspect.iscoroutinefunction(getattr(src, m, None)) for m in ("readinto", "aclose")):
        return cast("Source", src)  # already an engine Source
    if hasattr(src, "__aiter__"):
        return _IterSource(cast("AsyncIterable[bytes]", src))
    if hasattr(src, "read"):
        return _SyncFileSource(cast("IO[bytes]", src), owned=False)
    raise ConfigurationError(f"unsupported source type {type(src).__name__}")


class CountingSink:
    """A sink that keeps nothing and counts the bytes it was given: for checking that
    ciphertext decrypts without writing the plaintext anywhere (a lake ``verify`` job), and
    for timing the pipeline alone (`envelope bench`)."""

    def __init__(self) -> None:
        self.bytes = 0

    async def write(self, data: memoryview) -> None:
        self.bytes += len(data)

    async def commit(self) -> None:
        return None

    async def abort(self) -> None:
        return None


class BufferSink:
    """Collects output in memory."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    async def write(self, data: memoryview) -> None:
        self.buffer += data

    async def commit(self) -> None:
        return None

    async def abort(self) -> None:
        self.buffer[:] = bytes(len(self.buffer))
        del self.buffer[:]


class AtomicFileSink:
    """Async sink over `envelope.atomic.OutputFile`: a regular (or new) file is replaced
    atomically on commit, a device or FIFO is written through, a symlink's target is written.

    `durable=False` skips the two fsyncs: the rename is still atomic for other processes and
    against a crash of this one, but not against power loss (for scratch output that can be
    rebuilt).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        clean_stale: bool = True,
        regular_only: bool = False,
    ) -> None:
        self._out = OutputFile(
            path, durable=durable, clean_stale=clean_stale, regular_only=regular_only
        )
        self.durable = durable
        self.path = self._out.path

    @property
    def tmp_path(self) -> str | None:
        return self._out.tmp_path

    @property
    def atomic(self) -> bool:
        return self._out.atomic

    async def write(self, data: memoryview) -> None:
        await anyio.to_thread.run_sync(self._out.write, data)

    async def commit(self) -> None:
        await anyio.to_thread.run_sync(self._out.commit)

    async def abort(self) -> None:
        self._out.discard()


class _SyncFileSink:
    def __init__(self, f: IO[bytes]) -> None:
        binary(f, "sink")
        self._f = f

    async def write(self, data: memoryview) -> None:
        await anyio.to_thread.run_sync(write_all, self._f, data)

    async def commit(self) -> None:
        await anyio.to_thread.run_sync(flush_all, self._f)

    async def abort(self) -> None:
        return None


class _AsyncFileSink:
    """anyio's and aiofiles' files: a write may take part of the data (a pipe, a socket) or,
    non-blocking, none of it; the rest is written again, so the call returns only once all of
    it was taken (a decrypt returned with most of its plaintext dropped; review)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        inner = getattr(f, "wrapped", None) or getattr(f, "_file", None)  # (anyio, aiofiles)
        self._waits = inner is not None and says_nothing_now(inner, reading=False)

    async def write(self, data: memoryview) -> None:
        rest = memoryview(bytes(data))
        while rest:
            try:
                n = await self._f.write(rest if len(rest) < len(data) else rest.obj)
            except BlockingIOError as e:
                rest = rest[e.characters_written :]
                n = 0
            if n is None and not self._waits:
                return  # a writer that answers nothing took it all
            if n:
                rest = rest[n:]
            elif rest:
                await anyio.to_thread.run_sync(lambda: wait_ready(self._f, writing=True))

    async def commit(self) -> None:
        flush = getattr(self._f, "flush", None)
        if flush is not None and inspect.iscoroutinefunction(flush):
            await flush()

    async def abort(self) -> None:
        return None


def open_sink(dst: SinkLike) -> Sink:
    """Adapt any supported output. A str or PathLike is written atomically."""
    if isinstance(dst, str | os.PathLike):
        return AtomicFileSink(dst)
    if isinstance(dst, BufferSink | AtomicFileSink) or all(
        inspect.iscoroutinefunction(getattr(dst, m, None)) for m in ("write", "commit", "abort")
    ):
        return cast("Sink", dst)
    if _is_async_file(dst):
        return _AsyncFileSink(dst)
    if hasattr(dst, "write"):
        return _SyncFileSink(cast("IO[bytes]", dst))
    raise ConfigurationError(f"unsupported sink type {type(dst).__name__}")
