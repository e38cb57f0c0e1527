"""The one local output writer: what "write to this path" means, for every kind of path.

Every local output of envelope (the CLI's files, the lake jobs' objects, the direct
file-to-file path, JSON reports) goes through `OutputFile`, so one rule holds everywhere:

- **A regular file, or a path that does not exist yet** is replaced atomically: the bytes go
  to a temporary file beside it, ``.<name>.<random>.envelope-tmp`` (mode 0600 while written),
  which is renamed over the target only by `OutputFile.commit`; `OutputFile.discard` removes
  it. Nothing partial, and no unauthenticated plaintext, ever stands under the final name.
  The new file takes the old file's mode, or 0666 minus the umask for a new one.
- **A symlink** is resolved, and its target is what is written (by the rule above); the link
  itself is never replaced. A dangling link creates its target, as ``cp`` does.
- **A character or block device, a FIFO or a socket** is written *through*: replacing
  ``/dev/null`` or a named pipe with a regular file would break it for everyone (and, as root,
  leave the plaintext world-readable under a device's name). Nothing is atomic there: the
  caller's release-after-authentication rule per segment still holds, and a failure is
  reported by a non-zero exit, as with a pipe on stdout.
- **A directory** is refused.

The lake jobs ask for regular files only (``regular_only``): an object's output that is a
FIFO, socket or device is refused there, never written through (someone who may write to a
destination could otherwise plant a named pipe and read an object's plaintext from it, or
stall the job for ever on a pipe with no reader).

A temporary file is held under an exclusive `flock` by the process writing it. A killed
process's lock dies with it, so `remove_stale_temporaries` (run by every new writer of the same
target, and by the lake jobs at start) removes what a killed run left, and never touches a
temporary another live process is still writing. Every live temporary of this process is also
recorded, so a signal handler can remove them before the process exits.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from typing import Literal

from .errors import ConfigurationError, UnsafePathError

__all__ = (
    "TMP_SUFFIX",
    "OutputFile",
    "is_temporary",
    "is_stale_temporary",
    "not_a_regular_file",
    "remove_live_temporaries",
    "remove_stale_temporaries",
    "resolve_output",
    "temporary_name",
    "write_bytes",
    "within",
)

#: The suffix of every temporary file envelope writes. Resume and cleanup depend on it.
TMP_SUFFIX = ".envelope-tmp"

OutputKind = Literal["atomic", "through"]

_live: set[str] = set()
_live_lock = threading.Lock()


def within(path: str, folder: str) -> bool:
    """`path` is `folder` or lies under it (both real, local paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_temporary(path: str) -> bool:
    """Whether `path` (any separator style) is named as `temporary_name` names envelope's
    temporary files: ``.<name>.<12 hex digits>.envelope-tmp``. Anything else that merely ends
    in the suffix is someone's data (a job deleted ``.q.report.envelope-tmp`` from its
    destination, and passed over a source file so named)."""
    name = path.replace(os.sep, "/").rsplit("/", 1)[-1]
    return _TEMPORARY.fullmatch(name) is not None


_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}" + re.escape(TMP_SUFFIX), re.DOTALL)


#: The longest file name most file systems take (NAME_MAX), in bytes.
_NAME_MAX = 255


def _stem(name: str) -> str:
    """`name` as it goes into its temporaries' names: cut (at a character) so that the
    temporary fits NAME_MAX. A target name of 229-255 bytes is legal, and the 27 bytes a
    temporary adds made it fail with "File name too long" though the final name fits."""
    room = _NAME_MAX - len(f"..{'0' * 12}{TMP_SUFFIX}")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= room:
        return name
    return raw[:room].decode("utf-8", "ignore")


def temporary_name(path: str) -> str:
    """A fresh temporary name beside `path` (``/``-separated paths work on object stores)."""
    head, _, name = path.rpartition("/")
    tmp = f".{_stem(name)}.{os.urandom(6).hex()}{TMP_SUFFIX}"
    return f"{head}/{tmp}" if head else tmp


_DESCRIPTOR_ALIAS = re.compile(
    r"/dev/(?:std(?:in|out|err)|fd/\d+)|/proc/(self|thread-self|\d+)(?:/task/\d+)?/fd/\d+"
)
_STD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def _normal(text: str) -> str:
    """An absolute path without ``.``, ``..`` or repeated slashes (POSIX lets a path keep a
    leading ``//``, and ``//dev/stdout`` passed for an ordinary path)."""
    text = os.path.normpath(text)
    return "/" + text.lstrip("/") if text.startswith("//") else text


def _alias_match(path: str | os.PathLike[str]) -> re.Match[str] | None:
    """The descriptor path that `path` is, or leads to through symbolic links (``so ->
    /dev/stdout``), before the descriptor's own link to its file is followed."""
    text = _normal(os.path.abspath(os.fspath(path)))
    for _ in range(40):  # (the kernel's own limit on links followed)
        # its folder resolved (`devlink/fd/1` with devlink -> /dev is /proc/PID/fd/1: the
        # folder's links were not followed, and the >> log was replaced; diff review), its
        # last name not: that is the descriptor's own link to its file
        head, name = os.path.split(text)
        text = _normal(os.path.join(os.path.realpath(head), name))
        match = _DESCRIPTOR_ALIAS.fullmatch(text)
        if match is not None:
            return match
        try:
            link = os.readlink(text)
        except OSError:  # not a link (or none there): an ordinary path
            return None
        text = _normal(os.path.join(os.path.dirname(text), link))
    return None


def descriptor_alias(path: str | os.PathLike[str]) -> int | None:
    """The descriptor number a path such as ``/dev/stdout``, ``/dev/fd/3`` or
    ``/proc/self/fd/1`` names, spelled with extra slashes or reached through links, else
    None. Such a path is not a file to replace: resolved, ``/dev/stdout`` is whatever the
    shell redirected to, and replacing it atomically wiped a file opened with ``>>`` (and
    ``//dev/stdout`` or a link to ``/dev/stdout`` still did; review)."""
    match = _alias_match(path)
    if match is None:
        return None
    text = match.group(0)
    return _STD_NAMES[text] if text in _STD_NAMES else int(text.rsplit("/", 1)[1])


def own_descriptor(path: str | os.PathLike[str]) -> int | None:
    """`descriptor_alias`, for this process's own descriptors only (``/proc/<another
    pid>/fd/1`` is another process's standard output, not ours)."""
    match = _alias_match(path)
    if match is None:
        return None
    owner = match.group(1)
    if owner not in (None, "self", "thread-self", str(os.getpid())):
        return None
    text = match.group(0)
    return _STD_NAMES[text] if text in _STD_NAMES else int(text.rsplit("/", 1)[1])


#: The outputs this process has made visible under their names, most recent last (at most
#: 64): a command interrupted as it finished learns that its output stands (`was_committed`).
_COMMITTED: list[str] = []


def _committed(path: str) -> None:
    with _live_lock:
        _COMMITTED.append(path)
        del _COMMITTED[:-64]


def forget_commits() -> None:
    """Start a new command: `was_committed` answers for what is renamed from now on (a
    process that runs several commands must not take an earlier one's output for this
    one's)."""
    with _live_lock:
        _COMMITTED.clear()


def was_committed(path: str | os.PathLike[str]) -> bool:
    """Whether this process renamed a finished output over `path` (its real path), whatever
    came after (a signal received once the rename was done)."""
    real = os.path.realpath(os.fspath(path))
    with _live_lock:
        return real in _COMMITTED


#: Refusals of the storage itself (permission, a read-only or full file system, a failed
#: device): I/O errors, the CLI's exit 5 as docs/cli.md says, not a usage error.
_STORAGE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.ENOSPC, errno.EDQUOT}
)


def _cannot_write(e: OSError, where: str, to: str = "") -> Exception:
    """The error for an output that cannot be opened: the `OSError` (with a message naming
    the output) for a refusal of the storage, else a `ConfigurationError` (a path that
    cannot be an output: no such folder, a name too long, ...)."""
    if e.errno in _STORAGE_ERRNOS:
        return OSError(e.errno, f"cannot write {to}{where!r}: {e.strerror}")
    return ConfigurationError(f"cannot write {to}{where!r}: {e.strerror}")


def _is_file(path: str, made: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino)


def resolve_output(path: str | os.PathLike[str]) -> tuple[str, OutputKind]:
    """The real path to write and how: ``atomic`` (temp file + rename) or ``through``.

    Raises `ConfigurationError` for a directory, a path whose folder does not exist, or a path
    that names an open descriptor (``/dev/stdout``: write to the stream itself instead).
    """
    if not os.fspath(path):  # (realpath("") is the working folder: "it is a folder")
        raise ConfigurationError("the output path is empty")
    fd = descriptor_alias(path)
    if fd is not None:
        raise ConfigurationError(
            f"{os.fspath(path)!r} names open descriptor {fd}, not a file: pass the stream "
            "itself (the command line writes standard output for -)"
        )
    real = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _cannot_write(e, os.fspath(path)) from None
    if os.fspath(path).endswith(("/", "/.")) and (st is None or not stat.S_ISDIR(st.st_mode)):
        # a name ending in "/" is a folder's (as `cp` and the shell read it); its last name
        # was dropped and a file by that name written or replaced (review)
        raise ConfigurationError(f"cannot write {os.fspath(path)!r}: not a folder")
    if st is None:
        parent = os.path.dirname(real)
        if not os.path.isdir(parent):
            raise ConfigurationError(f"cannot write {os.fspath(path)!r}: no folder {parent!r}")
        return real, "atomic"
    if stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"cannot write {os.fspath(path)!r}: it is a folder")
    if stat.S_ISREG(st.st_mode):
        return real, "atomic"
    return real, "through"  # character/block device, FIFO, socket


def _lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def is_stale_temporary(tmp: str) -> bool:
    """True if `tmp` is a temporary that no live process holds (its writer died)."""
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True  # our lock is dropped when fd closes
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str) -> int:
    """Remove the temporaries beside `path` (for that target) that a killed run left behind."""
    directory, name = os.path.split(os.path.abspath(path))
    prefix = f".{_stem(name)}."
    removed = 0
    try:
        entries = os.listdir(directory)
    except OSError:
        return 0
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(TMP_SUFFIX)):
            continue
        # `.<name>.<12 hex>.envelope-tmp`: match this target's own names exactly
        middle = entry[len(prefix) : -len(TMP_SUFFIX)]
        if len(middle) != 12 or any(c not in "0123456789abcdef" for c in middle):
            continue
        tmp = os.path.join(directory, entry)
        if is_stale_temporary(tmp):
            try:
                os.unlink(tmp)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def remove_live_temporaries() -> None:
    """Remove every temporary this process is writing (for a signal handler before exit)."""
    with _live_lock:
        paths = list(_live)
        _live.clear()
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass


def _keep_owner(fd: int, old: os.stat_result) -> None:
    """A file replaced keeps its owner and group where this process may set them (root, or a
    group of its own): a lake rewrap run as root gave every object to root, so the group
    that read it could no longer (review). Where it may not, the new file is this
    process's, as any new file is."""
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.fchown(fd, old.st_uid, old.st_gid)
    except PermissionError:
        try:
            os.fchown(fd, -1, old.st_gid)  # the group alone, if it is one of ours
        except PermissionError:
            pass


_umask_lock = threading.Lock()


def _umask() -> int:
    """This process's umask, read where Linux shows it (4.7 and later). Asking `os.umask`
    means setting it: for that moment every file any thread of the process created got mode
    0666 (the lake jobs write from many threads; review), so that is the fallback only."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        umask = os.umask(0o077)  # (the safe value, for the moment it is set)
        os.umask(umask)
    return umask


def _new_file_mode() -> int:
    return 0o666 & ~_umask()


class OutputFile:
    """Blocking writer for one local output path, by the rules in the module docstring.

    Use `write` (whole buffers), then exactly one of `commit` or `discard`; `discard` after
    `commit` does nothing, so ``try: ... commit() finally: discard()`` is the idiom.
    `durable=True` fsyncs the file before the rename and the folder after it. `clean_stale`
    first removes what a killed writer of the same target left (a listing of the folder: the
    lake jobs turn it off per object and clean the whole destination once, under their lock).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        clean_stale: bool = True,
        regular_only: bool = False,
    ) -> None:
        self.requested = os.fspath(path)
        self.path, self.kind = resolve_output(path)
        self.durable = durable
        self.tmp_path: str | None = None
        self._done = False
        if self.kind == "through" and regular_only:
            self._done = True
            raise not_a_regular_file(self.requested)
        if self.kind == "through":
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NOCTTY)
            except OSError as e:
                raise _cannot_write(e, self.requested) from None
            return
        directory = os.path.dirname(self.path)
        if clean_stale:
            remove_stale_temporaries(self.path)
        tmp = temporary_name(self.path)
        with _live_lock:  # recorded before it exists: a signal at any point finds it
            _live.add(tmp)
        try:
            self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except BaseException as e:
            if not isinstance(e, OSError):  # interrupted: the file may exist (the name is ours)
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            with _live_lock:
                _live.discard(tmp)
            if isinstance(e, OSError):
                raise _cannot_write(e, directory, "to ") from None
            raise
        self.tmp_path = tmp
        try:
            _lock(self.fd)
        except BaseException:
            self._done = True
            self._remove()
            raise

    @property
    def atomic(self) -> bool:
        return self.kind == "atomic"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(self.fd, view) :]

    def commit(self, *, mtime_ns: int | None = None) -> None:
        """Make the output visible under its name (atomic targets) or just finish it.
        `mtime_ns`: the modification time the output gets (a lake job stamps its source's
        change time, which its resume compares; set before the rename)."""
        if self._done:
            return
        self._done = True
        try:
            if self.tmp_path is None:
                self._close()
                return
            if mtime_ns is not None:
                os.utime(self.fd, ns=(time.time_ns(), mtime_ns))
            try:
                old = os.stat(self.path)
            except FileNotFoundError:
                mode = _new_file_mode()
            else:
                mode = old.st_mode & 0o7777
                _keep_owner(self.fd, old)
            os.fchmod(self.fd, mode)
            if self.durable:
                os.fsync(self.fd)
            made = os.fstat(self.fd)
            try:
                os.replace(self.tmp_path, self.path)
            except BaseException:
                # a signal's KeyboardInterrupt is raised as the call returns, the rename done:
                # the file under the name says which (a rename of 2 GB took 0.9 s on ext4)
                if _is_file(self.path, made):
                    self._forget()
                    _committed(self.path)
                raise
            self._forget()
            _committed(self.path)
            self._close()  # the lock is released only once the name is final
            if self.durable:
                dfd = os.open(os.path.dirname(self.path), os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except BaseException:
            self._remove()
            raise

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self.tmp_path or "")
        self.tmp_path = None

    def _remove(self) -> None:
        tmp = self.tmp_path
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            self._forget()
        self._close()

    def _close(self) -> None:
        # The descriptor is forgotten *before* it is closed: a signal landing between the two
        # (KeyboardInterrupt on SIGINT) must not leave a stale number that the cleanup closes a
        # second time (EBADF replacing the interrupt, or worse, closing a descriptor another
        # thread has just been given). A leaked descriptor at exit is the lesser harm.
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def discard(self) -> None:
        """Something failed: remove the temporary (the target is untouched)."""
        if self._done:
            return
        self._done = True
        self._remove()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def not_a_regular_file(path: str) -> UnsafePathError:
    """The refusal of an output that is a FIFO, socket or device where only a regular file
    may be written (`OutputFile`'s ``regular_only``)."""
    return UnsafePathError(
        f"{path!r} is not a regular file (a FIFO, socket or device): not written through"
    )


def write_bytes(
    path: str | os.PathLike[str],
    data: bytes | bytearray,
    *,
    durable: bool,
    clean_stale: bool = True,
    regular_only: bool = False,
    before_commit: Callable[[], None] | None = None,
    mtime_ns: int | None = None,
) -> None:
    """Write a whole small output by the same rules (reports, small lake objects).
    `before_commit` runs once the bytes are written, before the rename (raising, it leaves the
    target as it was); `mtime_ns` as `OutputFile.commit`."""
    out = OutputFile(path, durable=durable, clean_stale=clean_stale, regular_only=regular_only)
    try:
        out.write(data)
        if before_commit is not None:
            before_commit()
        out.commit(mtime_ns=mtime_ns)
    finally:
        out.discard()
