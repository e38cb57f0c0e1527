"""Listing a job's source: what is processed, what is skipped and why, what is refused.

Local folders are walked with ``os.scandir`` without following symbolic links (pyarrow's own
listing follows them, out of the tree and into loops). By default every link is skipped and
reported; with ``follow_symlinks`` a link to a file or folder is followed only while its
resolved target stays inside the source root (unless ``allow_outside``), and a dangling or
looping link is reported, never silently dropped. Sockets, FIFOs and devices are reported too.

S3 prefixes are listed with botocore where available, which shows the keys exactly as stored:
pyarrow's listing turns ``a/`` with content into ``a`` and walks ``a/../b`` as folders. Every
relative path is checked by `envelope.lake.paths.check_relative`; an unsafe one is a failed
object in the report, never joined to the destination.
"""

from __future__ import annotations

import calendar
import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from ..atomic import within
from ..errors import ConfigurationError
from .fs import Location
from .lock import LOCK_NAME
from .paths import path_problem
from .s3 import client_for, split_path
from .sinks import is_temporary

__all__ = ("Entry", "Listing", "Rejected", "SkippedPath", "scan")


@dataclass(frozen=True, slots=True)
class Entry:
    """One object under a prefix: its path relative to the prefix, its size, and when it last
    changed (ns): an object store's modification time; for a local file the later of its
    modification and status-change times, since a copy that keeps an old modification time
    (``cp -p``, ``rsync -a``, ``tar x``, a file written then renamed in) is still a change,
    and a resumed job compared modification times only, and kept the stale output (review)."""

    rel: str
    size: int
    changed_ns: int | None


@dataclass(frozen=True, slots=True)
class SkippedPath:
    """Something in the source the job left alone on purpose: a link, a special file."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """An object the job refuses to process (an unsafe key, an unreadable folder)."""

    path: str
    error_type: str
    reason: str


@dataclass(slots=True)
class Listing:
    entries: list[Entry]
    skipped: list[SkippedPath] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def scan(
    loc: Location,
    *,
    follow_symlinks: bool = False,
    allow_outside: bool = False,
    exclude: str | None = None,
) -> Listing:
    """Every object under the prefix (recursively, sorted), with what was skipped or refused.

    Temporary files of the atomic writers are left out silently; a job lock is reported.
    `exclude` is a local folder (the job's destination) that a followed link must not lead
    into: the job would read its own outputs."""
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise ConfigurationError(f"{loc.path!r} does not exist")
    if info.type == pafs.FileType.File:
        raise ConfigurationError(f"{loc.path!r} is a file; lake jobs take a prefix (directory)")
    if loc.is_local:
        out = _walk_local(loc.path, follow_symlinks, allow_outside, exclude)
    else:
        client = client_for(loc.fs)
        out = _list_s3(client, loc) if client is not None else _list_arrow(loc)
    out.entries.sort(key=lambda e: e.rel)
    out.skipped.sort(key=lambda s: s.path)
    out.rejected.sort(key=lambda r: r.path)
    return out


def _admit(out: Listing, rel: str, size: int, changed_ns: int | None) -> None:
    """The one place an object of a listing becomes an Entry, a skipped lock or a refusal."""
    name = rel.rsplit("/", 1)[-1]
    if name and is_temporary(name):  # a run's own (a later one, or its clean-up, removes it)
        out.skipped.append(SkippedPath(rel, "an envelope temporary file (of an unfinished run)"))
        return
    if name == LOCK_NAME:
        out.skipped.append(SkippedPath(rel, "a lake job's lock file"))
        return
    problem = path_problem(rel)
    if problem is not None:
        out.rejected.append(Rejected(rel, "UnsafePathError", f"refusing object {rel!r}: {problem}"))
        return
    out.entries.append(Entry(rel, size, changed_ns))


# -- local folders -------------------------------------------------------------------------


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    return "not a regular file"


def _walk_local(root: str, follow: bool, allow_outside: bool, exclude: str | None) -> Listing:
    out = Listing([])
    root_real = os.path.realpath(root)
    exclude_real = os.path.realpath(exclude) if exclude is not None else None
    top = os.stat(root)
    # (folder path, its relative prefix, the (dev, ino) of it and its ancestors: loop guard)
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        (root, "", frozenset({(top.st_dev, top.st_ino)}))
    ]
    while stack:
        folder, prefix, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = list(it)
        except OSError as e:
            out.rejected.append(
                Rejected(prefix.rstrip("/") or ".", type(e).__name__, f"cannot list folder: {e}")
            )
            continue
        for de in children:
            rel = prefix + de.name
            try:
                st = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            except OSError as e:
                out.rejected.append(Rejected(rel, type(e).__name__, str(e)))
                continue
            if stat.S_ISLNK(st.st_mode):
                if not follow:
                    out.skipped.append(
                        SkippedPath(rel, "symbolic link, not followed (--follow-symlinks)")
                    )
                    continue
                try:
                    st = os.stat(de.path)
                except FileNotFoundError:
                    out.skipped.append(SkippedPath(rel, "dangling symbolic link"))
                    continue
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        out.skipped.append(SkippedPath(rel, "symbolic link loop"))
                    else:
                        out.skipped.append(SkippedPath(rel, f"symbolic link: {e.strerror}"))
                    continue
                target = os.path.realpath(de.path)
                if exclude_real is not None and within(target, exclude_real):
                    out.skipped.append(
                        SkippedPath(rel, "symbolic link leads into the destination, not followed")
                    )
                    continue
                if not allow_outside and not within(target, root_real):
                    out.skipped.append(
                        SkippedPath(
                            rel,
                            "symbolic link leads outside the source root, not followed "
                            "(--allow-outside)",
                        )
                    )
                    continue
            if stat.S_ISDIR(st.st_mode):
                if de.name == LOCK_NAME:  # its copy would stand where a job's lock goes
                    out.skipped.append(
                        SkippedPath(rel, f"a folder named {LOCK_NAME}, a name lake jobs reserve")
                    )
                    continue
                if (  # a folder reached through a link to outside may hold the destination
                    follow
                    and exclude_real is not None
                    and within(os.path.realpath(de.path), exclude_real)
                ):
                    out.skipped.append(SkippedPath(rel, "the destination, not read"))
                    continue
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    out.skipped.append(
                        SkippedPath(rel, "symbolic link loop (leads back to a parent folder)")
                    )
                    continue
                stack.append((de.path, rel + "/", ancestors | {ident}))
            elif stat.S_ISREG(st.st_mode):
                _admit(out, rel, st.st_size, max(st.st_mtime_ns, st.st_ctime_ns))
            elif not is_temporary(de.name):
                out.skipped.append(SkippedPath(rel, _kind(st.st_mode)))
    return out


# -- object stores ---------------------------------------------------------------------------


def _mtime_ns(last_modified: Any) -> int | None:
    try:
        whole = calendar.timegm(last_modified.utctimetuple())
        return int(whole) * 1_000_000_000 + int(last_modified.microsecond) * 1000
    except (AttributeError, TypeError, ValueError):
        return None


def _list_s3(client: Any, loc: Location) -> Listing:
    """Raw keys from ListObjectsV2: exactly what is stored, nothing normalised away."""
    out = Listing([])
    bucket, key = split_path(loc.path)
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", ()):
            rel = str(obj["Key"])[len(prefix) :]
            size = int(obj.get("Size", 0))
            if size == 0 and (rel == "" or (rel.endswith("/") and not path_problem(rel[:-1]))):
                continue  # an empty folder marker ("a/"), as consoles create
            _admit(out, rel, size, _mtime_ns(obj.get("LastModified")))
    return out


def _list_arrow(loc: Location) -> Listing:
    """Any other pyarrow filesystem: its own listing (which may normalise keys). A sub-tree of
    a local disk gets its files' status-change times too, as a local listing does (resume
    compares it to the nanosecond; without them a `cp -p` update was kept stale there)."""
    out = Listing([])
    base = loc.path.rstrip("/")
    local_root = _local_root(loc.fs)
    for fi in loc.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if fi.type != pafs.FileType.File:
            continue
        rel = fi.path[len(base) :]
        rel = rel[1:] if rel.startswith("/") else rel
        changed = fi.mtime_ns
        if local_root is not None and changed is not None:
            try:
                st = os.stat(os.path.join(local_root, fi.path.lstrip("/")))
                changed = max(changed, st.st_ctime_ns)
            except OSError:
                pass  # (gone since: the object fails when it is read)
        _admit(out, rel, int(fi.size or 0), changed)
    return out


def _local_root(fs: pafs.FileSystem) -> str | None:
    """The local folder a sub-tree filesystem stands on, or None (not a local disk)."""
    root = ""
    while isinstance(fs, pafs.SubTreeFileSystem):
        root = os.path.join(fs.base_path, root) if root else fs.base_path
        fs = fs.base_fs
    return root if root and isinstance(fs, pafs.LocalFileSystem) else None
