"""Large local objects sealed and opened file to file on one worker thread, segment by segment.

In a lake job many objects are in flight, so parallelism comes from objects, not from inside
one: each large object's own pipeline of reader, worker and writer hops only moves batches
through main memory. Here one thread reads a segment, seals (or opens) it while it is still in
the CPU cache and writes it, with one segment of look-ahead to know which is final: the
memory traffic of a plain copy plus AES, and nothing else.

Same guarantees as the engine: the output is a temporary file renamed over the target only
once whole (removed on any error, so no unauthenticated plaintext stands under the final
name), a segment's plaintext is written only after its tag verified, and the result is the
same format v1 object byte for byte.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import IO

from ..api import PreparedObject
from ..atomic import OutputFile
from ..errors import ConfigurationError
from ..hazmat.format import TAG_LEN, Header
from ..hazmat.keyschedule import ObjectKeys
from ..hazmat.segments import open_segments, seal_segments
from .paths import UnsafePathError

__all__ = ("open_file", "seal_file")


def _fill(f: IO[bytes], buf: bytearray) -> int:
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _open_source(path: str) -> IO[bytes]:
    """Open a listed source file, refusing a link or special file swapped in after listing."""
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


def _output(path: str, durable: bool) -> OutputFile:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return OutputFile(path, durable=durable, clean_stale=False)


def seal_file(
    prepared: PreparedObject, src: str, dst: str, *, expected_size: int, durable: bool
) -> int:
    """Encrypt local file `src` to `dst` under a prepared header; returns plaintext bytes."""
    s = 1 << prepared.seg_log2
    out = _output(dst, durable)
    try:
        with _open_source(src) as f:
            out.write(memoryview(prepared.header))
            cur, nxt, sealed = bytearray(s), bytearray(s), bytearray(s + TAG_LEN)
            n, index, total = _fill(f, cur), 0, 0
            while True:
                m = _fill(f, nxt) if n == s else 0
                w = seal_segments(
                    prepared.keys,
                    prepared.bound_digest,
                    index,
                    memoryview(cur)[:n],
                    memoryview(sealed),
                    prepared.seg_log2,
                    m == 0,
                )
                out.write(memoryview(sealed)[:w])
                total += n
                if m == 0:
                    break
                cur, nxt, n, index = nxt, cur, m, index + 1
        if total != expected_size:
            raise ConfigurationError(f"{src!r} changed size while the job ran")
        out.commit()
        return total
    except BaseException:
        out.discard()
        raise


def open_file(header: Header, keys: ObjectKeys, src: str, dst: str, *, durable: bool) -> int:
    """Decrypt local file `src` (header already authenticated) to `dst`; returns its length.

    Each segment's plaintext is written only after its tag verified; on any failure the
    temporary file, holding only authenticated segments, is removed.
    """
    s = 1 << header.seg_log2
    t = s + TAG_LEN
    out = _output(dst, durable)
    try:
        with _open_source(src) as f:
            f.seek(header.header_len)
            cur, nxt, plain = bytearray(t), bytearray(t), bytearray(s)
            n, index, total = _fill(f, cur), 0, 0
            try:
                while True:
                    m = _fill(f, nxt) if n == t else 0
                    w = open_segments(
                        keys,
                        header.bound_digest,
                        index,
                        memoryview(cur)[:n],
                        memoryview(plain),
                        header.seg_log2,
                        m == 0,
                    )
                    out.write(memoryview(plain)[:w])
                    total += w
                    if m == 0:
                        break
                    cur, nxt, n, index = nxt, cur, m, index + 1
            finally:
                plain[:] = bytes(len(plain))
        out.commit()
        return total
    except BaseException:
        out.discard()
        raise
