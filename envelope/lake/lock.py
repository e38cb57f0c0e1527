"""One job per destination: a lock object in the destination prefix.

Two jobs writing one destination would each delete the other's temporary files at start (the
clean-up of a killed run) and race on every output. A job therefore takes
``<destination>/.envelope-lock`` before it cleans or writes anything, and holds it until it
ends, however it ends (success, failure, Ctrl-C, SIGTERM: the caller releases in ``finally``).
The lock names its holder (job id, operation, host, pid, start time, last renewal) so a second
job's error says who is in the way.

Locally the lock file is created with ``O_EXCL`` and its holder keeps an ``flock`` on it while
alive: the kernel drops the flock when the process dies, however it dies, so a lock of this
host whose flock is free (or, without a flock, whose pid is gone) is *provably* stale and is
taken over with a note in the report (a re-run after SIGKILL needs no manual step, even
when the new job has the dead one's pid, as PID 1 of a restarted container does). On S3 the
lock object is
created with a conditional PutObject (``If-None-Match: *``, via botocore), so two jobs cannot
both create it; elsewhere creation is a best effort (check, write, read back). A holder renews
its lock every `ttl` / 5 seconds; a lock whose holder cannot be checked (another host, an
object store) counts as stale once its last renewal is older than `ttl`. A stale lock that is
not provably dead, or a lock the user knows to be dead, is removed only with ``break_lock``
(``--break-lock``); a holder that provably runs (same host, flock held or pid alive and the
lock fresh) is never broken.

Locally a destination nested in another job's is taken as that job's too: a job whose
destination lies inside (or holds) the destination of a running job is refused, or the two
would write the same files, each binding its own relative paths (review).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import stat
import threading
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import pyarrow.fs as pafs

from ..errors import ConfigurationError, LockHeldError, StaleLockError
from .fs import Location, open_output
from .s3 import client_for, split_path

__all__ = (
    "DEFAULT_LOCK_TTL",
    "LOCK_NAME",
    "DestinationLock",
    "Holder",
    "acquire",
    "is_lock_name",
    "live_local_lock",
)

LOCK_NAME = ".envelope-lock"
DEFAULT_LOCK_TTL = 900.0
_HOST = socket.gethostname()
_ATTEMPTS = 40  # bounded retries of the create/inspect loop (a racing job, a half-written lock)
#: job ids of the locks this process holds now (a lock naming this pid but none of these is
#: an earlier process's that had the same pid)
_HELD: set[str] = set()


def is_lock_name(path: str) -> bool:
    return path.rsplit("/", 1)[-1] == LOCK_NAME


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lock: written into the lock as JSON."""

    job_id: str
    operation: str
    host: str
    pid: int
    started: float
    renewed: float

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder | None:
        """The holder in a lock's content, or None if it is empty or unreadable."""
        try:
            d = json.loads(data.decode())
            return cls(
                str(d["job_id"]),
                str(d["operation"]),
                str(d["host"]),
                int(d["pid"]),
                float(d["started"]),
                float(d["renewed"]),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        age = max(0.0, time.time() - self.renewed)
        return (
            f"job {self.job_id} ({self.operation}), pid {self.pid} on host {self.host}, "
            f"started {started}, last renewed {age:.0f} s ago"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _verdict(
    where: str, holder: Holder | None, ttl: float, break_lock: bool, flock_free: bool | None
) -> bool:
    """Decide about an existing lock: True to take it over (with a note), or raise.

    `flock_free` is None where no flock exists (object stores, some network filesystems)."""
    if holder is None:
        if flock_free is False:
            raise LockHeldError(f"{where} is locked by a running job (details not written)", None)
        if flock_free:  # local: nobody holds it and nobody wrote it: a job died taking it
            return True
        if break_lock:
            return True
        raise StaleLockError(
            f"{where} holds an unreadable lock ({LOCK_NAME}); if no job is running there, "
            "re-run with --break-lock",
            None,
        )
    who = holder.describe()
    same_host = holder.host == _HOST
    # Our own pid proves nothing unless the job is one of ours: it may be an earlier process
    # that had this pid (PID 1 of a restarted container), or a twin host of the same name.
    own_pid = holder.pid == os.getpid()
    alive = same_host and (holder.job_id in _HELD if own_pid else _pid_alive(holder.pid))
    gone = same_host and not own_pid and not alive
    fresh = time.time() - holder.renewed <= ttl
    if flock_free is False:
        raise LockHeldError(f"{where} is locked by a running {who}; wait for it to finish", holder)
    if same_host and (flock_free or gone):
        # provably dead: a live holder on this host keeps its flock (whatever process now has
        # its pid), or, without a flock, its pid is gone (another host's flock on a shared
        # filesystem is not trusted to be visible here)
        return True
    if same_host and alive and fresh:
        raise LockHeldError(f"{where} is locked by a running {who}; wait for it to finish", holder)
    if break_lock:
        return True
    if fresh:
        raise LockHeldError(
            f"{where} is locked by {who}; if that job is no longer running, re-run with "
            "--break-lock",
            holder,
        )
    raise StaleLockError(
        f"{where} has a stale lock: {who} (older than the {ttl:.0f} s lock TTL); if that job "
        "is no longer running, re-run with --break-lock",
        holder,
    )


class DestinationLock:
    """A held lock. `release()` (or leaving the `with` block) gives it up; it is idempotent."""

    def __init__(self, where: str, holder: Holder, store: _Store, ttl: float) -> None:
        self.where = where
        self.holder = holder
        self.took_over: Holder | None = None
        self.broke_unreadable = False
        self._store = store
        self._stop = threading.Event()
        self._released = False
        self._renewer = threading.Thread(
            target=self._renew, args=(max(0.05, ttl / 5),), name="envelope-lock", daemon=True
        )
        _HELD.add(holder.job_id)
        self._renewer.start()

    @property
    def held(self) -> bool:
        return not self._released

    def _renew(self, interval: float) -> None:
        holder = self.holder
        while not self._stop.wait(interval):
            holder = Holder(**{**asdict(holder), "renewed": time.time()})
            with contextlib.suppress(Exception):  # a missed renewal only ages the lock
                self._store.renew(holder)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._stop.set()
        self._renewer.join()
        try:
            self._store.remove_own(self.holder)
        finally:
            _HELD.discard(self.holder.job_id)

    def __enter__(self) -> DestinationLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Store(Protocol):
    def renew(self, holder: Holder) -> None: ...

    def remove_own(self, holder: Holder) -> None: ...


# -- local disks: O_EXCL plus flock -----------------------------------------------------------


class _LocalStore:
    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self._io = threading.Lock()

    def renew(self, holder: Holder) -> None:
        data = holder.to_bytes()
        with self._io:
            if self.fd >= 0:
                os.pwrite(self.fd, data, 0)
                os.ftruncate(self.fd, len(data))

    def remove_own(self, holder: Holder) -> None:
        with self._io:
            try:
                if _same_file(self.fd, self.path):
                    os.unlink(self.path)  # while still holding the flock
            finally:
                fd, self.fd = self.fd, -1  # forgotten first: see atomic.OutputFile._close
                os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _flock(fd: int, *, wait: bool) -> bool | None:
    """Take the flock: True if taken, False if another holds it, None where the filesystem
    has no flock (then liveness rests on the pid and the TTL, as on object stores)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _NO_FLOCK:
            return None
        raise
    return True


def _read_fd(fd: int) -> bytes:
    return os.pread(fd, 64 << 10, 0)


def live_local_lock(directory: str) -> bool:
    """Whether the local folder `directory` holds a lake lock (a regular file) whose holder
    is alive: its flock is taken."""
    try:
        fd = os.open(
            os.path.join(directory, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        free = _flock(fd, wait=False)
        if free:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return free is False
    finally:
        os.close(fd)


def _locked_ancestor(directory: str) -> str | None:
    """The nearest folder above `directory` that a running job holds as its destination."""
    child, parent = directory, os.path.dirname(directory)
    while parent != child:
        if live_local_lock(parent):
            return parent
        child, parent = parent, os.path.dirname(parent)
    return None


def _acquire_local(directory: str, holder: Holder, break_lock: bool, ttl: float) -> DestinationLock:
    lock = _acquire_local_here(directory, holder, break_lock, ttl)
    outer = _locked_ancestor(directory)
    if outer is not None:
        lock.release()
        raise LockHeldError(
            f"{directory} is inside {outer}, the destination of a running job; wait for it "
            "to finish",
            None,
        )
    return lock


def _acquire_local_here(
    directory: str, holder: Holder, break_lock: bool, ttl: float
) -> DestinationLock:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    took_over: Holder | None = None
    broke_unreadable = False
    for attempt in range(_ATTEMPTS):
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            try:
                _flock(fd, wait=True)  # blocks only while an inspector peeks
                os.write(fd, holder.to_bytes())
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            lock = DestinationLock(directory, holder, _LocalStore(path, fd), ttl)
            lock.took_over, lock.broke_unreadable = took_over, broke_unreadable
            return lock
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            continue  # released meanwhile: try to create it again
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ConfigurationError(
                    f"{path!r} is a symbolic link; a lock must be a plain file: remove it"
                ) from None
            raise
        try:
            free = _flock(fd, wait=False)
            current = Holder.from_bytes(_read_fd(fd))
            if not _same_file(fd, path):
                continue  # replaced while we looked
            if current is None and attempt < _ATTEMPTS - 1:
                # Just created and not yet written (or being renewed): look again shortly.
                if not free or attempt < 5:
                    if free:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    time.sleep(0.05)
                    continue
            if _verdict(directory, current, ttl, break_lock, free):
                if _same_file(fd, path):
                    os.unlink(path)  # under its flock, so no one else removes it twice
                took_over = current
                broke_unreadable = current is None
        finally:
            os.close(fd)
    raise LockHeldError(f"{directory} is locked by another job that keeps changing it", None)


# -- object stores: conditional create --------------------------------------------------------


class _RemoteStore:
    """A lock object on S3 (botocore: conditional put) or any pyarrow filesystem (best effort)."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self.client = client_for(fs)
        self.bucket, self.key = split_path(path)

    def read(self) -> bytes | None:
        if self.client is not None:
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=self.key)
            except self.client.exceptions.NoSuchKey:
                return None
            return bytes(resp["Body"].read())
        try:
            with self.fs.open_input_stream(self.path) as f:
                return bytes(f.read())
        except FileNotFoundError:
            return None

    def create(self, data: bytes) -> bool:
        """Create the lock object unless it exists; False if it does."""
        if self.client is not None:
            from botocore.exceptions import ClientError, ParamValidationError

            try:
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")
                return True
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                    409,
                    412,
                ):
                    return False
                if status != 501 and code != "NotImplemented":
                    raise
            except ParamValidationError:  # a botocore too old to send If-None-Match
                pass
            # A store without conditional writes: the best effort below.
        if self.read() is not None:
            return False
        self.write(data)
        return self.read() == data  # a racing job's write would show here (not guaranteed)

    def write(self, data: bytes) -> None:
        if self.client is not None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data)
            return
        with open_output(self.fs, self.path) as f:
            f.write(data)

    def delete(self) -> None:
        if self.client is not None:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path)

    def _own(self, holder: Holder) -> bool:
        data = self.read()
        current = Holder.from_bytes(data) if data is not None else None
        return current is not None and current.job_id == holder.job_id

    def renew(self, holder: Holder) -> None:
        if self._own(holder):
            self.write(holder.to_bytes())

    def remove_own(self, holder: Holder) -> None:
        if self._own(holder):
            self.delete()


def _access_denied(e: BaseException) -> bool:
    """Whether `e` (botocore's or pyarrow's) is the store refusing this caller access."""
    if isinstance(e, PermissionError):
        return True
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("AccessDenied", "Forbidden", "403") or status == 403
    return isinstance(e, OSError) and "ACCESS_DENIED" in str(e).upper().replace(" ", "_")


def _locked_remote_ancestor(loc: Location, ttl: float) -> str | None:
    """The nearest prefix above `loc` whose lock a job holds (renewed within `ttl`, or one
    that cannot be read: held, to be safe): nested destinations count on object stores as
    they do locally. A job in a prefix inside a running job's took its lock, wrote into the
    outer job's destination and aborted its open uploads as a dead job's (review)."""
    path = loc.path.rstrip("/")
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        try:
            data = _RemoteStore(loc.fs, f"{path}/{LOCK_NAME}").read()
        except Exception as e:
            # A prefix this job may not read above its own is not one it can know about:
            # credentials scoped to a prefix are common, and such jobs ran before (review)
            if _access_denied(e):
                continue
            raise
        found = Holder.from_bytes(data) if data is not None else None
        # (an unreadable lock object is no running job's: S3 puts a lock whole or not at all)
        if found is not None and time.time() - found.renewed <= ttl:
            return path
    return None


def _acquire_remote(loc: Location, holder: Holder, break_lock: bool, ttl: float) -> DestinationLock:
    store = _RemoteStore(loc.fs, loc.join(LOCK_NAME))
    where = loc.path
    took_over: Holder | None = None
    broke_unreadable = False
    for _ in range(_ATTEMPTS):
        if store.create(holder.to_bytes()):
            lock = DestinationLock(where, holder, store, ttl)
            lock.took_over, lock.broke_unreadable = took_over, broke_unreadable
            try:
                outer = _locked_remote_ancestor(loc, ttl)
            except BaseException:
                lock.release()  # (never a held lock, and its renewer, left behind)
                raise
            if outer is not None:
                lock.release()
                raise LockHeldError(
                    f"{where} is inside {outer}, the destination of a running job; wait for "
                    "it to finish",
                    None,
                )
            return lock
        data = store.read()
        if data is None:
            continue  # released meanwhile
        current = Holder.from_bytes(data)
        if _verdict(where, current, ttl, break_lock, None):
            store.delete()
            took_over = current
            broke_unreadable = current is None
    raise LockHeldError(f"{where} is locked by another job that keeps changing it", None)


def acquire(
    loc: Location,
    *,
    operation: str,
    break_lock: bool = False,
    ttl: float = DEFAULT_LOCK_TTL,
    job_id: str | None = None,
) -> DestinationLock:
    """Take the lock of the destination `loc` (blocking I/O: call from a worker thread).

    Raises `LockHeldError` naming the holder while another job runs there, `StaleLockError`
    for a lock that looks abandoned but cannot be proven so (unless `break_lock`)."""
    if ttl <= 0:
        raise ConfigurationError("the lock TTL must be > 0 seconds")
    now = time.time()
    holder = Holder(job_id or secrets.token_hex(8), operation, _HOST, os.getpid(), now, now)
    if loc.is_local:
        return _acquire_local(os.path.abspath(loc.path), holder, break_lock, ttl)
    return _acquire_remote(loc, holder, break_lock, ttl)
