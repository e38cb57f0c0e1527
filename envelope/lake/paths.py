"""What a lake job may touch: safe relative paths, and a destination apart from its source.

Every output path a job writes is ``destination + "/" + rel``, where `rel` comes from a listing
of the source. On an object store a key is any string, so a listing can hold ``a/../b``,
``a/./b``, ``a//b`` or ``a/`` (with content): joined naively, ``a/../../x`` would climb out of
the destination prefix on a local disk, and the others name a different object than the one
listed (pyarrow normalises some of them on the way). `check_relative` is the one gate every
relative path goes through (`Location.join` calls it), whatever filesystem it came from.

A destination inside its source (or equal to it) would encrypt its own output on the next run,
or encrypt in place over the source; a source inside its destination mixes inputs and outputs.
`check_apart` refuses both before anything is written: locally by resolved real paths, on an
object store by the normalised bucket/prefix on the same endpoint.
"""

from __future__ import annotations

import os
import posixpath
import stat

import pyarrow.fs as pafs

from ..atomic import not_a_regular_file
from ..errors import ConfigurationError, UnsafePathError

__all__ = ("check_apart", "check_relative", "check_local_output", "is_utf8", "path_problem")


def is_utf8(text: str) -> bool:
    """Whether `text` can be written as UTF-8: a local name of bytes that are not UTF-8
    reaches Python with surrogates (``os.fsdecode``), and no pyarrow filesystem can address it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def path_problem(rel: str) -> str | None:
    """Why `rel` is not a safe relative path, or None when it is.

    Safe: non-empty segments separated by single ``/``, none of them ``.`` or ``..``, no NUL,
    no leading or trailing ``/``, and valid UTF-8 (a local name of other bytes reaches Python
    with surrogates, which no filesystem of pyarrow can address).
    """
    if not rel:
        return "empty relative path"
    if "\x00" in rel:
        return "NUL character in the key"
    if not is_utf8(rel):
        return (
            "the name is not valid UTF-8 (object stores, pyarrow and the job's journal "
            "hold names as UTF-8): rename it"
        )
    if rel.startswith("/"):
        return "key is absolute (starts with '/')"
    if rel.endswith("/"):
        return "key ends with '/' (a folder marker with content)"
    for segment in rel.split("/"):
        if segment == "":
            return "empty path segment ('//') in the key"
        if segment in (".", ".."):
            return f"{segment!r} path segment in the key"
    return None


def check_relative(rel: str) -> str:
    """`rel` itself if safe to join under a prefix, else `UnsafePathError` with the reason."""
    problem = path_problem(rel)
    if problem is not None:
        raise UnsafePathError(f"refusing object {rel!r}: {problem}")
    return rel


def check_local_output(root_real: str, path: str, rel: str) -> None:
    """Refuse a local output `path` (object `rel` under the destination, whose real path is
    `root_real`) with a symbolic link standing at it or on the way to it (a folder), since
    the output writer writes a link's target: one leading outside would carry the write
    elsewhere, and one inside sends two objects to one file (``a.txt -> b.txt``: both
    written there, one lost, both counted done; review). And refuse one that is a FIFO,
    socket or device: the resume check would open it to read a header (a FIFO with no writer
    blocks for ever), before the writer's own refusal (`OutputFile`'s ``regular_only``)."""
    real = os.path.realpath(path)
    if real != os.path.join(root_real, *rel.split("/")):
        inside = real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)
        raise UnsafePathError(
            f"{path!r} leads "
            + ("to another path of the destination" if inside else "outside the destination")
            + " through a symbolic link; not written (a job writes no object through a link)"
        )
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return  # (nothing there yet, or the writer says what is wrong)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # (a folder is refused by the writer)
        raise not_a_regular_file(path)


# -- source and destination apart ------------------------------------------------------------


def _real(path: str) -> str:
    """The resolved real path (links followed as far as the path exists)."""
    return os.path.realpath(path)


def _store_identity(fs: pafs.FileSystem) -> tuple[object, ...]:
    """What tells two filesystems of one type apart: for S3, the endpoint (bucket names are
    unique per endpoint, whatever the credentials); otherwise the type alone, which errs on
    the side of refusing."""
    if isinstance(fs, pafs.S3FileSystem):
        opts = fs.__reduce__()[1][0]
        endpoint = str(opts.get("endpoint_override") or "")
        return ("s3", _endpoint_identity(endpoint, str(opts.get("scheme") or "https")))
    return (type(fs).__name__,)


def _endpoint_identity(endpoint: str, scheme: str = "https") -> str:
    """One spelling per endpoint: without its scheme (pyarrow takes ``http://host:port`` and
    ``host:port`` with a separate scheme alike), case, trailing slash or the host's trailing
    dot, the scheme's default port spelled out or not, loopback named one way. Two spellings
    of one store counted as two, and a destination inside the source was accepted (review)."""
    if "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
    host = endpoint.rstrip("/").lower()
    default = {"http": ":80", "https": ":443"}.get(scheme.lower(), "")
    if default and host.endswith(default):
        host = host[: -len(default)]
    host = host.rstrip(".") if ":" not in host else host.replace(".:", ":")
    for loopback in ("localhost", "[::1]"):
        if host == loopback or host.startswith(loopback + ":"):
            return "127.0.0.1" + host[len(loopback) :]
    return host


def _normalised(path: str) -> str:
    norm = posixpath.normpath("/" + path.strip("/"))
    return norm.rstrip("/") or "/"


def _inside(child: str, parent: str) -> bool:
    """`child` equals `parent` or lies under it (both normalised, '/'-separated)."""
    if parent == "/":
        return True
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def check_apart(
    src_fs: pafs.FileSystem, src_path: str, dst_fs: pafs.FileSystem, dst_path: str
) -> None:
    """Refuse a destination equal to, inside, or containing the source (`ConfigurationError`).

    Locally the resolved real paths are compared, so links and ``..`` cannot hide an overlap;
    on object stores the normalised bucket/prefix on the same endpoint.
    """
    src_local = isinstance(src_fs, pafs.LocalFileSystem)
    dst_local = isinstance(dst_fs, pafs.LocalFileSystem)
    if src_local != dst_local:
        return
    if src_local:
        s, d = _real(src_path), _real(dst_path)
    else:
        if _store_identity(src_fs) != _store_identity(dst_fs):
            return
        s, d = _normalised(src_path), _normalised(dst_path)
    if s == d:
        raise ConfigurationError(
            f"the destination {dst_path!r} is the source itself: a job would encrypt its "
            "own output; write to a separate prefix"
        )
    if _inside(d, s):
        raise ConfigurationError(
            f"the destination {dst_path!r} is inside the source {src_path!r}: the next run "
            "would process its own output; write to a prefix outside the source"
        )
    if _inside(s, d):
        raise ConfigurationError(
            f"the source {src_path!r} is inside the destination {dst_path!r}: outputs and "
            "inputs would mix; write to a prefix outside the source"
        )
