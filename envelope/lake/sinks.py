"""Atomic output on any pyarrow filesystem: nothing appears under the final name until whole.

Locally: a temporary file beside the target, fsynced and renamed (`AtomicFileSink`). On S3
(with botocore): the final key directly, by a multipart upload that is completed only when the
object is whole and aborted on any error (`envelope.lake.s3`). On other object stores: a
temporary key beside the target, written with the filesystem's own output stream, then moved
onto the final key; pyarrow cannot abort an upload (closing always completes it,
apache/arrow#40502), so writing the final key directly would publish a partial object.

Temporary names are ``.<name>.<random>.envelope-tmp`` (`envelope.atomic`, the one place that
spells them); `is_temporary` recognises them so a re-run can clean up after a killed one.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import anyio.to_thread
import pyarrow.fs as pafs

from ..atomic import TMP_SUFFIX, is_temporary, temporary_name, write_bytes
from ..streams import AtomicFileSink, Sink
from .fs import SourceGuard, open_output
from .s3 import MultipartSink, client_for, object_attributes, put_whole

__all__ = ("TMP_SUFFIX", "ArrowAtomicSink", "atomic_sink", "is_temporary", "write_whole")

def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _ensure_parent(fs: pafs.FileSystem, path: str) -> None:
    parent = path.rpartition("/")[0]
    if parent and _is_local(fs):
        os.makedirs(parent, exist_ok=True)


class ArrowAtomicSink:
    """Sink over a non-local pyarrow filesystem: temporary key, then move."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self.tmp_path = temporary_name(path)
        self._stream: Any = None
        self._done = False

    def _open(self) -> None:
        _ensure_parent(self.fs, self.path)
        self._stream = open_output(self.fs, self.tmp_path)

    async def write(self, data: memoryview) -> None:
        if self._stream is None:
            await anyio.to_thread.run_sync(self._open)
        await anyio.to_thread.run_sync(self._stream.write, data)

    def _finish(self) -> None:
        if self._stream is None:
            self._open()
        self._stream.close()
        self.fs.move(self.tmp_path, self.path)

    async def commit(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await anyio.to_thread.run_sync(self._finish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._remove)
            raise

    def _remove(self) -> None:
        """Close (pyarrow completes the upload: nothing else is possible) and delete the
        temporary key. A failed delete is raised, not swallowed: the temporary key holds
        whatever was written, and the job must report it (a re-run deletes it)."""
        try:
            if self._stream is not None and not self._stream.closed:
                self._stream.close()
        finally:
            try:
                self.fs.delete_file(self.tmp_path)
            except FileNotFoundError:
                pass

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        await anyio.to_thread.run_sync(self._remove)


def atomic_sink(
    fs: pafs.FileSystem, path: str, *, durable: bool = True, replacing: bool = False
) -> Sink:
    """The right atomic sink for `fs`: a real rename locally, an abortable multipart upload
    on S3 (see envelope.lake.s3), a temporary key and a move elsewhere. `replacing`: the
    object at `path` is rewritten in place (a rewrap), and keeps its attributes (locally its
    mode and owner, as every replaced file does; on S3 its headers, metadata and tags)."""
    if _is_local(fs):
        _ensure_parent(fs, path)
        return AtomicFileSink(path, durable=durable, clean_stale=False, regular_only=True)
    client = client_for(fs)
    if client is not None:
        attributes = object_attributes(client, path) if replacing else None
        return MultipartSink(client, path, attributes=attributes)
    return ArrowAtomicSink(fs, path)


class GuardedSink:
    """A sink whose commit first looks at the object's local source again (`SourceGuard`):
    a large local object streamed to an object store, whose upload completes as the stream
    ends, was the one route a source changed or replaced after it was read could be
    committed from."""

    def __init__(self, inner: Sink, guard: SourceGuard) -> None:
        self._inner, self._guard = inner, guard

    async def write(self, data: memoryview) -> None:
        await self._inner.write(data)

    async def commit(self) -> None:
        # (refused, the caller aborts this sink, and with it the upload: `api._sink_scope`)
        await anyio.to_thread.run_sync(self._guard.check)
        await self._inner.commit()

    async def abort(self) -> None:
        await self._inner.abort()


def write_whole(
    fs: pafs.FileSystem,
    path: str,
    data: bytes | bytearray,
    *,
    durable: bool,
    guard: SourceGuard | None = None,
) -> None:
    """Write a whole small object atomically from a worker thread (one hop for the lot).
    `guard`: a local source as the job found it, checked before the output is committed; a
    local output gets its change time as modification time (`SourceGuard`)."""
    _ensure_parent(fs, path)
    if _is_local(fs):
        write_bytes(
            path, data, durable=durable, clean_stale=False, regular_only=True,
            before_commit=None if guard is None else guard.check,
            mtime_ns=None if guard is None else guard.changed_ns,
        )  # fmt: skip
        return
    client = client_for(fs)
    if client is not None:
        if guard is not None:
            guard.check()
        put_whole(client, path, data)  # one PutObject: whole or nothing, no temporary key
        return
    tmp = temporary_name(path)
    try:
        with open_output(fs, tmp) as out:
            out.write(data)
        if guard is not None:
            guard.check()
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except FileNotFoundError:
            pass
        raise
