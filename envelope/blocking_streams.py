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

import ctypes
from collections.abc import Callable
from functools import partial

from .errors import HeaderFormatError
from .hazmat.format import FIXED_PREFIX_LEN, TAG_LEN, Header
from .hazmat.keyschedule import ObjectKeys
from .hazmat.segments import open_segments, seal_segments
from .objects import PreparedObject, Tracked, header_length, parse_object_header

__all__ = ("open_stream", "read_stream_header", "seal_stream")

ReadInto = Callable[[memoryview], int]
Write = Callable[[memoryview], None]
Progress = Callable[[int], None]


def _fill(read_into: ReadInto, buf: memoryview) -> int:
    """Fill `buf`; fewer bytes only at the end of the input."""
    got = 0
    while got < len(buf):
        n = read_into(buf[got:])
        if not n:
            break
        got += n
    return got


def _zero(buf: bytearray) -> None:
    if buf:
        ctypes.memset((ctypes.c_char * len(buf)).from_buffer(buf), 0, len(buf))


def read_stream_header(read_into: ReadInto, *, max_wrapped_keys: int) -> Header:
    """Read exactly one header from the stream (not authenticated yet)."""
    prefix = bytearray(FIXED_PREFIX_LEN)
    got = _fill(read_into, memoryview(prefix))
    raw = bytearray(header_length(memoryview(prefix)[:got]))
    raw[:FIXED_PREFIX_LEN] = prefix
    got += _fill(read_into, memoryview(raw)[FIXED_PREFIX_LEN:])
    if got < len(raw):
        raise HeaderFormatError("object ends inside its header")
    return parse_object_header(memoryview(raw), max_wrapped_keys=max_wrapped_keys)


def seal_stream(
    prepared: PreparedObject,
    read_into: ReadInto,
    write: Write,
    *,
    batch_bytes: int,
    on_progress: Progress | None = None,
    track: Tracked | None = None,
) -> int:
    """Write the header and the sealed stream; returns the plaintext length."""
    seg_log2 = prepared.seg_log2
    s = 1 << seg_log2
    k = max(1, batch_bytes >> seg_log2)
    keys, hd = prepared.keys, prepared.bound_digest
    write(memoryview(prepared.header))
    cur, nxt, out = bytearray(k * s), bytearray(k * s), bytearray(k * (s + TAG_LEN))
    try:
        n, index, total = _fill(read_into, memoryview(cur)), 0, 0
        while True:
            m = _fill(read_into, memoryview(nxt)) if n == len(cur) else 0

            seal = partial(_seal, keys, hd, memoryview(cur)[:n], memoryview(out), seg_log2, m == 0)
            w = _run(track, seal, index, -(-n // s) or 1)
            write(memoryview(out)[:w])
            total += n
            if on_progress is not None:
                on_progress(n)
            if m == 0:
                return total
            cur, nxt, n, index = nxt, cur, m, index + k
    finally:
        _zero(cur)
        _zero(nxt)


def open_stream(
    header: Header,
    keys: ObjectKeys,
    read_into: ReadInto,
    write: Write,
    *,
    batch_bytes: int,
    on_progress: Progress | None = None,
    track: Tracked | None = None,
) -> int:
    """Open the stream after its header (authenticated); returns the plaintext length.

    A batch is written only once every tag in it verified; plaintext buffers are zeroed at
    the end however it ends.
    """
    seg_log2 = header.seg_log2
    s = 1 << seg_log2
    t = s + TAG_LEN
    k = max(1, batch_bytes >> seg_log2)
    hd = header.bound_digest
    cur, nxt, out = bytearray(k * t), bytearray(k * t), bytearray(k * s)
    try:
        n, index, total = _fill(read_into, memoryview(cur)), 0, 0
        while True:
            m = _fill(read_into, memoryview(nxt)) if n == len(cur) else 0

            open_ = partial(_open, keys, hd, memoryview(cur)[:n], memoryview(out), seg_log2, m == 0)
            w = _run(track, open_, index, -(-n // t) or 1)
            write(memoryview(out)[:w])
            total += w
            if on_progress is not None:
                on_progress(w)
            if m == 0:
                return total
            cur, nxt, n, index = nxt, cur, m, index + k
    finally:
        _zero(out)


def _seal(
    keys: ObjectKeys, hd: bytes, src: memoryview, dst: memoryview, seg_log2: int, final: bool,
    first: int, _last: int,
) -> int:
    return seal_segments(keys, hd, first, src, dst, seg_log2, final)


def _open(
    keys: ObjectKeys, hd: bytes, src: memoryview, dst: memoryview, seg_log2: int, final: bool,
    first: int, _last: int,
) -> int:
    return open_segments(keys, hd, first, src, dst, seg_log2, final)


def _run(
    track: Tracked | None, fn: Callable[[int, int], int], first: int, segments: int
) -> int:
    """`fn(first, first + segments)`, reported to the observer as one batch when it counts."""
    if track is None:
        return fn(first, first + segments)
    result = [0]

    def call(a: int, b: int) -> None:
        result[0] = fn(a, b)

    track.timed_range(call)(first, first + segments)
    return result[0]
