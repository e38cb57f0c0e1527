"""Local file to local file on the object layer: every core, positional I/O, no event loop.

A format v1 object's layout is fixed by its header length, segment size and plaintext
length, so every batch of segments has a known place in the input and in the output. Each
worker thread therefore takes the next batch index, reads it with `pread`, seals or opens it
while it is still in the CPU cache, and writes it with `pwrite`: no queue, no ordering, no
hand-off between threads, and memory of two batch buffers per thread. This is the loop that
keeps pace with a plain copy.

The output is an `envelope.atomic.OutputFile` (a temporary file renamed over the target only
once whole; removed on any failure), so batches may be written in any order: nothing under
the final name ever holds unauthenticated plaintext. A device or FIFO target cannot take
positional writes: callers send those through the streaming pipeline instead.

On decrypt, the final flag of the last segment (found from the input's size) is checked like
every tag, so a truncated object fails; a source that changes size while it is read fails.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import IO

from .atomic import OutputFile
from .errors import (
    ConfigurationError,
    SourceChangedError,
    UnsafePathError,
)
from .hazmat.format import TAG_LEN, Header
from .hazmat.keyschedule import ObjectKeys
from .hazmat.segments import Layout, open_segments, seal_segments
from .metrics import NULL_OBSERVER
from .objects import PageBuffer, PreparedObject, Tracked, run_ranges

__all__ = ("open_file", "seal_file")

Progress = Callable[[int], None]


def _pread_full(fd: int, buf: memoryview, offset: int) -> int:
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


Buffers = tuple[PageBuffer, PageBuffer]


def _batches(
    count: int,
    per_batch: int,
    workers: int,
    sizes: tuple[int, int],
    run: Callable[[int, Buffers], int],
) -> None:
    """Run `run(b, buffers)` for every batch index on `workers` threads (`run_ranges`: each
    takes the next batch until none is left); each thread owns one pair of buffers, zeroed
    when the work ends however it ends (they hold plaintext)."""
    owned: dict[int, Buffers] = {}

    def batch(first: int, _last: int) -> None:
        bufs = owned.get(threading.get_ident())
        if bufs is None:
            bufs = owned[threading.get_ident()] = (PageBuffer(sizes[0]), PageBuffer(sizes[1]))
        run(first // per_batch, bufs)

    failed = True
    try:
        run_ranges(batch, count, per_batch, workers)
        failed = False
    finally:
        _wipe(owned.values(), failed)


def _wipe(owned: Iterable[Buffers], everything: bool) -> None:
    for a, b in owned:
        a.wipe(everything=everything)
        b.wipe(everything=everything)


def _timed(
    track: Tracked | None, run: Callable[[int, Buffers], int]
) -> Callable[[int, Buffers], int]:
    if track is None or track.observer is NULL_OBSERVER:
        return run
    observer, direction = track.observer, track.direction

    def timed(b: int, bufs: Buffers) -> int:
        t0 = time.perf_counter()
        segments = run(b, bufs)
        observer.batch_processed(direction, segments, time.perf_counter() - t0)
        return segments

    return timed


def _open_source(path: str, follow_links: bool) -> IO[bytes]:
    """Open `path` for reading; with `follow_links=False` a link or a special file is refused
    (a lake job listed a regular file: whatever stands there now must still be one)."""
    if follow_links:
        return open(path, "rb", buffering=0)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePathError(f"{path!r} became a symbolic link after it was listed") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path!r} is no longer a regular file")
    return os.fdopen(fd, "rb", buffering=0)


def _plan(seg: int, per_batch_bytes: int, workers: int, budget: int | None) -> tuple[int, int]:
    """(segments per batch, workers) so that workers x two buffers fit in `budget`."""
    per_batch = max(1, per_batch_bytes // seg)
    if budget is not None:
        while per_batch > 1 and workers * 2 * per_batch * (seg + TAG_LEN) > budget:
            per_batch //= 2
        while workers > 1 and workers * 2 * per_batch * (seg + TAG_LEN) > budget:
            workers -= 1
        if 2 * (seg + TAG_LEN) > budget:
            raise ConfigurationError(
                f"memory budget of {budget} bytes cannot hold a {seg}-byte segment"
            )
    return per_batch, workers


def seal_file(
    prepared: PreparedObject,
    src: str,
    out: OutputFile,
    *,
    workers: int,
    batch_bytes: int = 2 << 20,
    memory_budget: int | None = None,
    on_progress: Progress | None = None,
    track: Tracked | None = None,
    follow_links: bool = True,
    expected_size: int | None = None,
) -> int:
    """Seal local file `src` into `out` (not committed here); returns the plaintext length.

    `expected_size` (a lake job's listed size) must match the file's size, before and after.
    A file written to while it was read (its size or modification time moved) is refused: the
    output would hold a mix of its old and new bytes, and look current to a resumed job.
    """
    seg_log2 = prepared.seg_log2
    s = 1 << seg_log2
    hl = len(prepared.header)

    def changed() -> Exception:
        return SourceChangedError(f"{src!r} changed while it was encrypted; nothing written")

    with _open_source(src, follow_links) as f:
        fd = f.fileno()
        before = os.fstat(fd)
        size = before.st_size
        if expected_size is not None and size != expected_size:
            raise SourceChangedError(f"{src!r} changed size while the job ran")
        _pwrite_all(out.fd, memoryview(prepared.header), 0)
        _transform(
            fd, out.fd, in_at=0, in_seg=s, in_end=size, out_at=hl, out_seg=s + TAG_LEN,
            count=Layout(hl, seg_log2).segment_count(size),
            step=partial(seal_segments, prepared.keys, prepared.bound_digest),
            seg_log2=seg_log2, workers=workers, batch_bytes=batch_bytes,
            memory_budget=memory_budget, changed=changed, count_input=True,
            on_progress=on_progress, track=track,
        )
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (size, before.st_mtime_ns):
            raise changed()
    return size


def open_file(
    header: Header,
    keys: ObjectKeys,
    src: str,
    out: OutputFile,
    *,
    workers: int,
    batch_bytes: int = 2 << 20,
    memory_budget: int | None = None,
    on_progress: Progress | None = None,
    track: Tracked | None = None,
    follow_links: bool = True,
) -> int:
    """Open local file `src` (header authenticated) into `out`; returns the plaintext length.

    Every segment's tag is verified before its plaintext is written to the temporary file;
    on any failure the caller discards `out`, so no plaintext survives.
    """
    seg_log2 = header.seg_log2
    s = 1 << seg_log2
    hl = header.header_len

    def changed() -> Exception:
        # not a truncation: the file moved under us (an I/O condition, exit 5: run again)
        return SourceChangedError(f"{src!r} changed size while it was decrypted; nothing written")

    with _open_source(src, follow_links) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        layout = Layout(hl, seg_log2)
        # an empty body is TruncatedObjectError, an impossible length (1..15 bytes of a
        # segment) the opaque AuthenticationError, as on every other face (format.md §7.1)
        plen = layout.plaintext_length(size)
        _transform(
            fd, out.fd, in_at=hl, in_seg=s + TAG_LEN, in_end=size, out_at=0, out_seg=s,
            count=layout.segment_count(plen),
            step=partial(open_segments, keys, header.bound_digest),
            seg_log2=seg_log2, workers=workers, batch_bytes=batch_bytes,
            memory_budget=memory_budget, changed=changed, count_input=False,
            on_progress=on_progress, track=track,
        )
        if os.fstat(fd).st_size != size:
            raise changed()
    return plen


Step = Callable[[int, memoryview, memoryview, int, bool], int]


def _transform(
    fd: int,
    out_fd: int,
    *,
    in_at: int,
    in_seg: int,
    in_end: int,
    out_at: int,
    out_seg: int,
    count: int,
    step: Step,
    seg_log2: int,
    workers: int,
    batch_bytes: int,
    memory_budget: int | None,
    changed: Callable[[], Exception],
    count_input: bool,
    on_progress: Progress | None,
    track: Tracked | None,
) -> None:
    """The one positional loop of both directions: segment i of the input starts at
    `in_at + i * in_seg` and its result goes to `out_at + i * out_seg`; each batch is read,
    `step(first, src, dst, seg_log2, final)`-ed and written by whichever worker takes it."""
    per_batch, workers = _plan(1 << seg_log2, batch_bytes, workers, memory_budget)

    def run(b: int, bufs: Buffers) -> int:
        first = b * per_batch
        last = min(first + per_batch, count)
        src_at, dst_at = in_at + first * in_seg, out_at + first * out_seg
        n = min(in_end, in_at + last * in_seg) - src_at
        view = bufs[0].at(src_at, n)
        got = _pread_full(fd, view, src_at)
        bufs[0].filled(got)
        if got != n:
            raise changed()
        k = last - first
        out = bufs[1].at(dst_at, min(k * out_seg, n + k * TAG_LEN))
        w = step(first, view, out, seg_log2, last == count)
        bufs[1].filled(w)
        _pwrite_all(out_fd, out[:w], dst_at)
        if on_progress is not None:
            on_progress(n if count_input else w)
        return last - first

    # no larger than the object needs (a 1-byte file must not fault in 8 MiB of buffers)
    k = min(per_batch, count)
    size_in = min(k * in_seg, in_end - in_at)
    sizes = (size_in, min(k * out_seg, size_in + k * TAG_LEN))
    _batches(count, per_batch, workers, sizes, _timed(track, run))
