"""pyarrow filesystems as sources, sinks and random-access files for the engine.

`resolve(uri)` turns a local path or any pyarrow filesystem URI (``s3://bucket/prefix?...``)
into a (FileSystem, path) pair. Reads go through pyarrow's own input files on worker threads;
`ArrowRangeFile` gives the seekable reader positional reads (one ranged GET each on S3).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import anyio.to_thread
import pyarrow as pa
import pyarrow.fs as pafs

from ..blocking_streams import fill
from ..errors import ConfigurationError, SourceChangedError
from ..streams import Source, open_source
from ..uri_secrets import redact_uri, without_secrets
from .paths import check_relative, is_utf8

__all__ = (
    "ArrowRangeFile",
    "ArrowSource",
    "Location",
    "SourceGuard",
    "open_output",
    "open_source_at",
    "read_whole",
    "redact_uri",
    "resolve",
)


@dataclass(frozen=True, slots=True)
class Location:
    """A filesystem and a base path inside it."""

    fs: pafs.FileSystem
    path: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, relative: str) -> str:
        """The path of `relative` under this prefix; an unsafe relative path (``..``, ``.``,
        empty segments, see `envelope.lake.paths`) raises `UnsafePathError` instead."""
        return f"{self.path.rstrip('/')}/{check_relative(relative)}"


def absolute(uri: str) -> str:
    """A local path made absolute against this process's working folder; a URI as given.
    What a job hands to other processes: a Dask worker has a working folder of its own, where
    a relative path names other files."""
    return uri if "://" in uri else os.path.abspath(uri)


def resolve(uri: str, *, filesystem: pafs.FileSystem | None = None) -> Location:
    """(filesystem, path) for a URI or local path; `filesystem` overrides the URI's own."""
    if not is_utf8(uri):
        raise ConfigurationError(
            f"{uri!r} is not valid UTF-8: pyarrow's filesystems address paths as UTF-8, "
            "so a lake job cannot read or write under it (rename it)"
        )
    if filesystem is not None:
        return Location(filesystem, uri)
    if "://" not in uri:
        return Location(pafs.LocalFileSystem(), absolute(uri))
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except ValueError as e:  # a URI pyarrow cannot take: the caller's to fix
        raise ConfigurationError(without_secrets(f"cannot open {uri!r}: {e}", uri)) from None
    except OSError as e:  # the store could not be reached (a bucket's Region is looked up)
        raise OSError(
            e.errno or errno.EIO, without_secrets(f"cannot reach {uri!r}: {e}", uri)
        ) from None
    return Location(fs, path)


def open_output(fs: pafs.FileSystem, path: str) -> pa.NativeFile:
    """`fs.open_output_stream(path)`, its parent folder made first where the filesystem has
    folders that must exist (a local disk under a SubTreeFileSystem, HDFS, ...); object
    stores have none, never raise for a missing parent and so never get folder markers."""
    try:
        return fs.open_output_stream(path)
    except FileNotFoundError:
        parent = path.rpartition("/")[0]
        if not parent:
            raise
        fs.create_dir(parent, recursive=True)
        return fs.open_output_stream(path)


class ArrowSource:
    """Engine Source over a pyarrow input stream; reads run on worker threads."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self._f = stream

    async def readinto(self, buf: memoryview) -> int:
        return await anyio.to_thread.run_sync(fill, self._f.readinto, buf)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._f.close)


class ArrowRangeFile:
    """RangeFile (see envelope.reader) over a pyarrow random-access file.

    Each `read_range` is one positional read: on S3, one ranged GET. `reads` counts them.
    """

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        try:
            self._f = fs.open_input_file(path)
        except (OSError, FileNotFoundError) as e:
            raise ConfigurationError(f"cannot open {path!r}: {e}") from None
        self.path = path
        self.reads = 0
        self.bytes_read = 0

    def size(self) -> int:
        return int(self._f.size())

    def read_range(self, offset: int, length: int) -> bytes:
        self.reads += 1
        data = self._f.read_at(length, offset)
        self.bytes_read += len(data)
        return bytes(data)

    def close(self) -> None:
        self._f.close()


async def open_source_at(fs: pafs.FileSystem, path: str) -> Source:
    """An engine Source for one object. Local files are read with plain unbuffered reads
    straight into the engine's buffers (no intermediate Arrow buffer, no extra copy)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return open_source(path)
    stream = await anyio.to_thread.run_sync(fs.open_input_stream, path)
    return ArrowSource(stream)


def _open_regular(path: str, follow_links: bool) -> int:
    """Open a local file for reading, refusing what the listing would not have admitted had
    it been there then: a link swapped in (unless links are followed), a FIFO or a device
    (opened non-blocking, so a FIFO cannot hang the job)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_links:
            raise ConfigurationError(
                f"{path!r} became a symbolic link after the listing; not followed"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigurationError(f"{path!r} is no longer a regular file")
    os.set_blocking(fd, True)
    return fd


class SourceGuard:
    """What a local source file was when a job began an object, checked again before the
    object's output is committed, and the change time the output is stamped with.

    A source changed (rewritten in place, or replaced by a rename) after it was read but
    before its output was written left an output made from the old bytes that looked newer
    than the change, so a resumed job kept it for good (review). Now such an object fails
    (SourceChangedError: the next run does it), and a local output's modification time is
    the source's change time as seen before the read: a change the check misses (after it,
    before the rename) still leaves the source newer than its output for the resume."""

    __slots__ = ("_follow", "_path", "_seen")

    def __init__(self, path: str, *, follow_links: bool) -> None:
        self._path, self._follow = path, follow_links
        self._seen = self._now()

    def _now(self) -> tuple[int, int, int, int]:
        st = os.stat(self._path) if self._follow else os.lstat(self._path)
        return st.st_dev, st.st_ino, st.st_size, max(st.st_mtime_ns, st.st_ctime_ns)

    @property
    def changed_ns(self) -> int:
        """The source's change time (the later of modification and status change) as seen."""
        return self._seen[3]

    def check(self) -> None:
        """SourceChangedError if the file at the path is not the one seen, unchanged."""
        try:
            now = self._now()
        except OSError:
            now = None
        if now != self._seen:
            raise SourceChangedError(
                f"{self._path!r} changed while the job processed it; its output not written"
            )


def read_whole(fs: pafs.FileSystem, path: str, size: int, *, follow_links: bool = True) -> bytes:
    """A whole small object of the listed `size`, from a worker thread.

    Reads at most size + 1 bytes: an object that grew or shrank since the listing is refused
    (the job reports it and a re-run picks it up), so memory stays bounded by the listing.
    Locally, a file replaced by a link since the listing is refused unless `follow_links`.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        with open(_open_regular(path, follow_links), "rb", buffering=0) as f:
            before = os.fstat(f.fileno()).st_mtime_ns
            data = f.read(size + 1)
            if os.fstat(f.fileno()).st_mtime_ns != before:  # written to while read: torn
                raise SourceChangedError(f"{path!r} changed while it was read; nothing written")
    else:
        with fs.open_input_stream(path) as f:
            data = bytes(f.read(size + 1))
    if len(data) != size:
        raise SourceChangedError(f"{path!r} changed size while the job ran")
    return data
