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

from collections.abc import Callable
from functools import partial

from .errors import HeaderFormatError
from .hazmat.format import FIXED_PREFIX_LEN, TAG_LEN, Header
from .hazmat.keyschedule import ObjectKeys
from .hazmat.segments import open_segments, seal_segments
from .objects import PageBuffer, PreparedObject, Tracked, header_length, parse_object_header

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
    s = 1 << prepared.seg_log2
    write(memoryview(prepared.header))
    return _batches(
        read_into, write, seg_in=s, seg_out=s + TAG_LEN, batch_bytes=batch_bytes,
        in_at=0, out_at=len(prepared.header),
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
    on_progress: Progress | None = None,
    track: Tracked | None = None,
) -> int:
    """Open the stream after its header (authenticated); returns the plaintext length.

    A batch is written only once every tag in it verified.
    """
    s = 1 << header.seg_log2
    return _batches(
        read_into, write, seg_in=s + TAG_LEN, seg_out=s, batch_bytes=batch_bytes,
        in_at=header.header_len, out_at=0,
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
    in_at: int,
    out_at: int,
    step: Step,
    seg_log2: int,
    count_input: bool,
    on_progress: Progress | None,
    track: Tracked | None,
) -> int:
    """The one loop of both directions: read a batch, look one batch ahead to know whether
    it is the last, `step(first, src, dst, seg_log2, final)` it, write what it produced.
    Returns the plaintext bytes (the input's when sealing, the output's when opening). Every
    buffer, plaintext on either side, is zeroed at the end however it ends. Each batch sits
    in its buffer at its stream position (`in_at`, `out_at`: where the batches start, after
    a header) modulo a page: see `objects.PAGE`."""
    k = max(1, batch_bytes >> seg_log2)
    size_in, size_out = k * seg_in, k * seg_out
    cur, nxt, out = PageBuffer(size_in), PageBuffer(size_in), PageBuffer(size_out)
    ok = False
    try:
        pos_in, pos_out = in_at, out_at
        src = cur.at(pos_in, size_in)
        n, index, total = _fill(read_into, src), 0, 0
        cur.filled(n)
        while True:
            m = 0
            if n == size_in:  # (a short batch is the last: no look-ahead, nothing touched)
                ahead = nxt.at(pos_in + n, size_in)
                m = _fill(read_into, ahead)
                nxt.filled(m)
            dst = out.at(pos_out, size_out)
            w = _run(track, -(-n // seg_in) or 1, step, index, src[:n], dst, seg_log2, m == 0)
            out.filled(w)
            write(dst[:w])
            pos_in, pos_out = pos_in + n, pos_out + w
            done = n if count_input else w
            total += done
            if on_progress is not None:
                on_progress(done)
            if m == 0:
                ok = True
                return total
            cur, nxt, src, n, index = nxt, cur, ahead, m, index + k
    finally:
        src = ahead = dst = memoryview(b"")  # (drop this frame's views, so each unmaps now)
        for buf in (cur, nxt, out):
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
