"""Large local objects in lake jobs: file to file on one thread, segment by segment.

In a lake job many objects are in flight, so parallelism comes from objects, not from inside
one: each large object is sealed (or opened) by `envelope.files` with one worker and one
segment per batch, so a segment is read, sealed while still in the CPU cache and written: the
memory traffic of a plain copy plus AES, and nothing else. Same guarantees as every output:
a temporary file renamed over the target only once whole (`envelope.atomic`), each
segment's plaintext written only after its tag verified, and the same format v1 bytes.

Sources are opened without following links unless the job follows them
(`--follow-symlinks`, whose links were checked when the job listed them): the job listed a
regular file, and a link or special file swapped in since is refused (`UnsafePathError`).
"""

from __future__ import annotations

import os

from .. import files
from ..atomic import OutputFile
from ..objects import Header, ObjectKeys, PreparedObject
from .fs import SourceGuard

__all__ = ("open_file", "seal_file")


def _output(path: str, durable: bool) -> OutputFile:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return OutputFile(path, durable=durable, clean_stale=False, regular_only=True)


def _commit(out: OutputFile, guard: SourceGuard | None) -> None:
    if guard is None:
        out.commit()
        return
    guard.check()
    out.commit(mtime_ns=guard.changed_ns)


def seal_file(
    prepared: PreparedObject,
    src: str,
    dst: str,
    *,
    expected_size: int,
    durable: bool,
    memory_budget: int | None = None,
    follow_links: bool = False,
    guard: SourceGuard | None = None,
) -> int:
    """Encrypt local file `src` to `dst` under a prepared header; returns plaintext bytes.
    Two segment buffers are held; a segment `memory_budget` cannot hold is refused.
    `guard`: the source as the job found it, checked before the commit (and the output's
    modification time)."""
    out = _output(dst, durable)
    try:
        n = files.seal_file(
            prepared, src, out, workers=1, batch_bytes=1, follow_links=follow_links,
            expected_size=expected_size, memory_budget=memory_budget,
        )
        _commit(out, guard)
        return n
    finally:
        out.discard()


def open_file(
    header: Header,
    keys: ObjectKeys,
    src: str,
    dst: str,
    *,
    durable: bool,
    memory_budget: int | None = None,
    follow_links: bool = False,
    guard: SourceGuard | None = None,
) -> int:
    """Decrypt local file `src` (header already authenticated) to `dst`; returns its length.
    `guard` as in `seal_file`."""
    out = _output(dst, durable)
    try:
        n = files.open_file(
            header, keys, src, out, workers=1, batch_bytes=1, follow_links=follow_links,
            memory_budget=memory_budget,
        )
        _commit(out, guard)
        return n
    finally:
        out.discard()
