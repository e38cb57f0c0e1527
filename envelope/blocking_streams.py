"""Streams (pipes, stdin/stdout, FIFOs, devices, file objects) on the object layer, blocking.

`envelope.sync.encrypt` / `decrypt` with a blocking source and sink (a path, or a binary file
object whose `read`/`write` are plain methods) come here instead of starting an event loop:
one thread reads a batch, seals or opens it while it is in the CPU cache and writes it, with
one batch of look-ahead to know which is final. A stream's position is unknown in advance, so
there is no positional parallelism as in `envelope.files`; streams are rarely faster than
one core anyway.

The release rule is the pipeline's: each batch of plaintext is written only after every tag
in it verified; on failure the error is raised and what was written before stays written (a
stream cannot be taken back), so a stream is whole only once the call returns.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from functools import partial

from ._plan import segments_within
from .errors import ConfigurationError, HeaderFormatError
from .hazmat.format import FIXED_PREFIX_LEN, TAG_LEN, Header
from .hazmat.keyschedule import ObjectKeys
from .hazmat.segments import open_segments, seal_segments
from .objects import PageBuffer, PreparedObject, Tracked, header_length, parse_object_header

__all__ = (
    "fill",
    "flush_all",
    "open_stream",
    "read_into_of",
    "read_stream_header",
    "says_nothing_now",
    "seal_stream",
    "wait_ready",
    "write_all",
)

ReadInto = Callable[[memoryview], int]
Write = Callable[[memoryview], None]
Progress = Callable[[int], None]


def says_nothing_now(stream: object, *, reading: bool) -> bool:
    """Whether a None from `stream` means "nothing now" (Python's io contract for raw and
    buffered streams, and what a read of a non-blocking descriptor answers) rather than what
    it always meant for other file-like objects: the end of the input, or a write that
    returned nothing (such a wrapper may have written it all: never written twice)."""
    if isinstance(stream, io.RawIOBase | io.BufferedIOBase):
        return True
    if not reading:
        return False
    try:
        return not os.get_blocking(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, TypeError):
        return False


def flush_all(stream: object) -> None:
    """`stream.flush()` (if it has one), waiting while a non-blocking descriptor cannot take
    the buffered bytes yet (BlockingIOError): the end of the output is never dropped."""
    flush = getattr(stream, "flush", None)
    if not callable(flush):
        return
    while True:
        try:
            flush()
            return
        except BlockingIOError:
            wait_ready(stream, writing=True)


def wait_ready(stream: object, *, writing: bool) -> None:
    """Block until a non-blocking `stream` can be read (or written): it answered None or
    raised BlockingIOError, Python's "nothing now", which is neither the end of the input nor
    a whole write. A stream with no descriptor to wait on cannot be waited for: refused."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        fd = None
    if not isinstance(fd, int):
        side = "sink" if writing else "source"
        raise ConfigurationError(
            f"the {side} is non-blocking (it answered None: nothing now) and has no file "
            "descriptor to wait on; pass a blocking stream"
        )
    import selectors  # only non-blocking streams come here

    with selectors.DefaultSelector() as sel:
        try:
            sel.register(fd, selectors.EVENT_WRITE if writing else selectors.EVENT_READ)
        except PermissionError:  # epoll cannot watch a regular file: it is always ready
            return
        sel.select()


def binary(stream: object, role: str) -> None:
    """Refuse a text-mode file object as a source or a sink (ConfigurationError): objects and
    their plaintext are bytes, and a text stream would fail deep inside with a TypeError."""
    if isinstance(stream, io.TextIOBase):
        mode = "'rb'" if role == "source" else "'wb'"
        raise ConfigurationError(
            f"the {role} is a text stream ({type(stream).__name__}): open it in binary mode "
            f"({mode}), or pass its .buffer"
        )
    if getattr(stream, "closed", False) is True:
        raise ConfigurationError(f"the {role} ({type(stream).__name__}) is closed")


def read_into_of(stream: object) -> ReadInto | None:
    """`stream`'s `readinto` (else its `read`) as a ReadInto that blocks: a non-blocking
    stream's None is waited out, so it is never taken for the end of the input (that would
    seal a shorter, valid object). None if `stream` has neither method."""
    binary(stream, "source")
    readinto = getattr(stream, "readinto", None)
    waits = says_nothing_now(stream, reading=True)
    if callable(readinto):

        def via_readinto(buf: memoryview) -> int:
            while True:
                try:
                    n = readinto(buf)
                except BlockingIOError:
                    n = None
                    if not waits:
                        raise
                if n is not None or not waits:
                    return int(n or 0)
                wait_ready(stream, writing=False)

        return via_readinto
    read = getattr(stream, "read", None)
    if not callable(read):
        return None

    def via_read(buf: memoryview) -> int:
        while True:
            try:
                chunk = read(len(buf))
            except BlockingIOError:
                chunk = None
                if not waits:
                    raise
            if chunk is not None or not waits:
                n = len(chunk or b"")
                buf[:n] = chunk or b""
                return n
            wait_ready(stream, writing=False)

    return via_read


def write_all(stream: object, data: memoryview) -> None:
    """Write all of `data` to a file object, blocking: a raw stream may write part (or, when
    non-blocking, None: nothing now, or raise BlockingIOError with what it did write)."""
    write = stream.write  # type: ignore[attr-defined]
    waits = says_nothing_now(stream, reading=False)
    while data:
        try:
            n = write(data)
        except BlockingIOError as e:
            data = data[e.characters_written :]
            wait_ready(stream, writing=True)
            continue
        if n is None:
            if not waits:  # a file-like object that returns nothing wrote it all
                return
            wait_ready(stream, writing=True)
            continue
        data = data[n:]


def fill(read_into: ReadInto, buf: memoryview) -> int:
    """Fill `buf`; fewer bytes only at the end of the input."""
    got = 0
    while got < len(buf):
        n = read_into(buf[got:])
        if not n:
            break
        got += n
    return got


def read_stream_header(read_into: ReadInto, *, max_wrapped_keys: int) -> Header:
    """Read exactly one header from the stream (not authenticated yet)."""
    prefix = bytearray(FIXED_PREFIX_LEN)
    got = fill(read_into, memoryview(prefix))
    raw = bytearray(header_length(memoryview(prefix)[:got]))
    raw[:FIXED_PREFIX_LEN] = prefix
    got += fill(read_into, memoryview(raw)[FIXED_PREFIX_LEN:])
    if got < len(raw):
        raise HeaderFormatError("object ends inside its header")
    return parse_object_header(memoryview(raw), max_wrapped_keys=max_wrapped_keys)


def seal_stream(
    prepared: PreparedObject,
    read_into: ReadInto,
    write: Write,
    *,
    batch_bytes: int,
    memory_budget: int | None = None,
    on_progress: Progress | None = None,
    track: Tracked | None = None,
) -> int:
    """Write the header and the sealed stream; returns the plaintext length."""
    s = 1 << prepared.seg_log2
    write(memoryview(prepared.header))
    return _batches(
        read_into, write, seg_in=s, seg_out=s + TAG_LEN, batch_bytes=batch_bytes,
        memory_budget=memory_budget, in_at=0, out_at=len(prepared.header),
        step=partial(seal_segments, prepared.keys, prepared.bound_digest),
        seg_log2=prepared.seg_log2, count_input=True, on_progress=on_progress, track=track,
    )


def open_stream(
    header: Header,
    keys: ObjectKeys,
    read_into: ReadInto,
    write: Write,
    *,
    batch_bytes: int,
    memory_budget: int | None = None,
    on_progress: Progress | None = None,
    track: Tracked | None = None,
) -> int:
    """Open the stream after its header (authenticated); returns the plaintext length.

    A batch is written only once every tag in it verified.
    """
    s = 1 << header.seg_log2
    return _batches(
        read_into, write, seg_in=s + TAG_LEN, seg_out=s, batch_bytes=batch_bytes,
        memory_budget=memory_budget, in_at=header.header_len, out_at=0,
        step=partial(open_segments, keys, header.bound_digest),
        seg_log2=header.seg_log2, count_input=False, on_progress=on_progress, track=track,
    )


Step = Callable[[int, memoryview, memoryview, int, bool], int]


def _batches(
    read_into: ReadInto,
    write: Write,
    *,
    seg_in: int,
    seg_out: int,
    batch_bytes: int,
    memory_budget: int | None,
    in_at: int,
    out_at: int,
    step: Step,
    seg_log2: int,
    count_input: bool,
    on_progress: Progress | None,
    track: Tracked | None,
) -> int:
    """The one loop of both directions: read a batch and one byte more (the look-ahead that
    says whether it is the last), `step(first, src, dst, seg_log2, final)` it, write what it
    produced; the look-ahead byte starts the next batch. Two buffers, one in and one out,
    as many segments each as `batch_bytes` and `memory_budget` allow (the async pipeline's
    least: `_plan.minimum_bytes`). Returns the plaintext bytes (the input's when sealing,
    the output's when opening). Every buffer, plaintext on either side, is zeroed at the end
    however it ends. Each batch sits in its buffer at its stream position (`in_at`,
    `out_at`: where the batches start, after a header) modulo a page: see `objects.PAGE`."""
    k = segments_within(memory_budget, seg_in, seg_out, batch_bytes >> seg_log2)
    size_in, size_out = k * seg_in, k * seg_out
    inb, out = PageBuffer(size_in + 1), PageBuffer(size_out)
    ok = False
    src = dst = memoryview(b"")
    try:
        pos_in, pos_out, index, total = in_at, out_at, 0, 0
        ahead: int | None = None  # the look-ahead byte read with the previous batch
        while True:
            src = inb.at(pos_in, size_in + 1)
            n = 0
            if ahead is not None:
                src[0], n = ahead, 1
            n += fill(read_into, src[n:])
            inb.filled(n)
            last = n <= size_in
            if not last:
                ahead, n = src[size_in], size_in
            dst = out.at(pos_out, size_out)
            w = _run(track, -(-n // seg_in) or 1, step, index, src[:n], dst, seg_log2, last)
            out.filled(w)
            write(dst[:w])
            pos_in, pos_out = pos_in + n, pos_out + w
            done = n if count_input else w
            total += done
            if on_progress is not None:
                on_progress(done)
            if last:
                ok = True
                return total
            index += k
    finally:
        src = dst = memoryview(b"")  # (drop this frame's views, so each unmaps now)
        for buf in (inb, out):
            buf.wipe(everything=not ok)


def _run(
    track: Tracked | None, segments: int, step: Step,
    first: int, src: memoryview, dst: memoryview, seg_log2: int, final: bool,
) -> int:
    """`step(...)`, reported to the observer as one batch of `segments` when it counts."""
    if track is None:
        return step(first, src, dst, seg_log2, final)
    result = [0]

    def call(a: int, _b: int) -> None:
        result[0] = step(a, src, dst, seg_log2, final)

    track.timed_range(call)(first, first + segments)
    return result[0]
