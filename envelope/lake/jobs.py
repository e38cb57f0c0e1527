"""Bulk jobs over whole prefixes: encrypt, decrypt, verify and re-wrap.

    report = await encrypt_prefix("raw/", "s3://lake/enc/?endpoint_override=...", keyring=kr)
    report = await verify_prefix("s3://lake/enc/", keyring=kr)
    report = await rewrap_prefix("s3://lake/enc/", keyring=kr, to=new_kr)
    report = await decrypt_prefix("s3://lake/enc/", "restored/", keyring=kr)

Every object is one unit of work: many are in flight at once (bounded), small ones are read,
sealed and written in a single worker-thread hop, large ones stream through the bounded
pipeline. Each output appears only when whole (see `envelope.lake.sinks`). A failed object is
recorded and the rest go on (unless `fail_fast`). Re-running a job skips what is already done
- checked cheaply from sizes, times and headers, without a manifest - and removes temporary
files a killed run left behind, so a crash or Ctrl-C loses nothing and duplicates nothing.

What a job touches is bounded (`envelope.lake.listing`, `.paths`, `.lock`): source links are
not followed unless asked, and never out of the source root unless allowed; keys with ``..``,
``.`` or empty segments are refused per object; a destination overlapping its source is
refused before anything is written; and a job holds a lock on its destination, so a second job
there fails clearly instead of deleting the first one's temporaries.

Each object's path relative to the prefix is bound into its per-object context under
``envelope:path``: an encrypted object moved or swapped to another path fails to decrypt and
to verify, unless the caller turns `bind_path` off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Literal, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread
import pyarrow.fs as pafs

from .. import api, objects, streams
from .._pipeline import first_error
from ..atomic import is_stale_temporary, write_bytes
from ..errors import (
    ConfigurationError,
    EnvelopeError,
    InvalidObjectError,
    KmsError,
    LockHeldError,
)
from ..keyring import Keyring
from ..kms.base import WrappedKey
from ..metrics import NULL_OBSERVER, Observer
from ..objects import MAX_EDKS, Header, ObjectPath, check_contexts, pick_path
from . import direct
from .fs import (
    ArrowSource,
    Location,
    SourceGuard,
    open_source_at,
    read_whole,
    redact_uri,
    resolve,
)
from .listing import Entry, Listing, SkippedPath, scan
from .lock import DEFAULT_LOCK_TTL, LOCK_NAME, DestinationLock, acquire, live_local_lock
from .paths import check_apart, check_local_output
from .s3 import client_for, split_path
from .sinks import GuardedSink, atomic_sink, is_temporary, write_whole

__all__ = (
    "DEFAULT_LAKE_OPTIONS",
    "PATH_CONTEXT_KEY",
    "Entry",
    "JobReport",
    "JobStart",
    "LakeOptions",
    "ObjectResult",
    "Progress",
    "SkippedPath",
    "begin_job",
    "decrypt_prefix",
    "encrypt_prefix",
    "list_objects",
    "remove_temporaries",
    "rewrap_prefix",
    "run_job",
    "verify_prefix",
)

PATH_CONTEXT_KEY = "envelope:path"
Operation = Literal["encrypt", "decrypt", "verify", "rewrap"]
Status = Literal["done", "skipped", "failed", "planned"]


@dataclass(frozen=True, slots=True)
class LakeOptions:
    """How a bulk job runs. Memory is bounded by `concurrency` small objects (each held whole,
    twice) plus `large_concurrency` large ones, which share `engine.memory_budget` (each gets
    `large_engine`: an equal share, whether it streams or goes file to file)."""

    concurrency: int = 16
    large_concurrency: int = 4
    small_object_bytes: int = 8 << 20
    engine: api.Options = field(default_factory=lambda: api.Options(workers=2, depth=4))
    bind_path: bool = True
    resume: bool = True
    dry_run: bool = False
    fail_fast: bool = False
    durable: bool = False  # fsync every output (local disks); see docs/lake.md
    follow_symlinks: bool = False  # follow links in a local source (inside its root only)
    allow_outside: bool = False  # with follow_symlinks: also links leading out of the root
    break_lock: bool = False  # remove a destination lock that is stale or known dead
    lock_ttl: float = DEFAULT_LOCK_TTL  # seconds without renewal before a lock looks stale

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.large_concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        if self.lock_ttl <= 0:
            raise ConfigurationError("lock_ttl must be > 0 seconds")
        if self.small_object_bytes < 0:
            raise ConfigurationError("small_object_bytes must be >= 0")
        _ = self.large_engine  # a segment size the budget cannot hold at all: refuse now

    @property
    def large_slots(self) -> int:
        """How many large objects run at once: `large_concurrency`, fewer when the segment
        size is so large that the memory budget holds fewer (at least one)."""
        s = self.engine.segment_size
        need = max(api.MIN_MEMORY_BUDGET, 2 * (s + TAG_OVERHEAD) + 1)
        return max(1, min(self.large_concurrency, self.engine.memory_budget // need))

    @property
    def large_engine(self) -> api.Options:
        """Engine options for one large object: an equal share of the memory budget among
        the `large_slots` in flight, so the whole job stays within `engine.memory_budget`."""
        share = max(api.MIN_MEMORY_BUDGET, self.engine.memory_budget // self.large_slots)
        return dataclasses.replace(self.engine, memory_budget=share)


#: Bytes a sealed segment adds (its tag), for memory planning.
TAG_OVERHEAD = 16


DEFAULT_LAKE_OPTIONS = LakeOptions()


@dataclass(slots=True)
class ObjectResult:
    path: str
    status: Status
    bytes: int = 0
    error_type: str | None = None
    error: str | None = None


@dataclass(slots=True)
class JobReport:
    """What a job did: counts, bytes, time, and every failure with its reason.

    `skipped` counts objects already done (resume); `skipped_paths` lists what the job left
    alone on purpose, with the reason (links not followed, special files, a lock); `notes`
    says what else happened that an operator should know (a stale lock taken over). A dry run
    counts and lists (`planned_paths`, sorted) what a real run would process, after the same
    resume check."""

    operation: Operation
    source: str
    destination: str | None
    objects: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    planned: int = 0
    bytes: int = 0
    seconds: float = 0.0
    removed_temporaries: int = 0
    failures: list[ObjectResult] = field(default_factory=list)
    skipped_paths: list[SkippedPath] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    planned_paths: list[str] = field(default_factory=list)
    #: Why the job as a whole did not run or finish (a lock held, a bad setting, an
    #: interrupt), when it did not: a --report file then says so, rather than an older
    #: run's report staying in place (review).
    error: str | None = None

    def __post_init__(self) -> None:
        # reports are printed, written (--report) and logged: never a credential of a URI
        self.source = redact_uri(self.source)
        if self.destination is not None:
            self.destination = redact_uri(self.destination)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.error is None

    def add(self, r: ObjectResult) -> None:
        self.objects += 1
        if r.status == "done":
            self.done += 1
            self.bytes += r.bytes
        elif r.status == "skipped":
            self.skipped += 1
        elif r.status == "planned":
            self.planned += 1
            self.planned_paths.append(r.path)
        else:
            self.failed += 1
            self.failures.append(r)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ok"] = self.ok
        d["mb_per_s"] = round(self.bytes / self.seconds / 1e6, 3) if self.seconds else None
        d["objects_per_s"] = round(self.done / self.seconds, 3) if self.seconds else None
        return d

    def write(self, path: str) -> None:
        """Write the report as JSON by the one output rule (`envelope.atomic`): atomically for
        a file, through for a device or FIFO, a symlink's target rather than the link."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        write_bytes(path, text.encode(), durable=False)


class Progress(Protocol):
    """Told the plan once, then each object's result as it finishes."""

    def start(self, operation: str, objects: int, total_bytes: int) -> None: ...

    def advance(self, result: ObjectResult) -> None: ...


# -- listing and cheap "already done" checks ---------------------------------------------


def list_objects(loc: Location, options: LakeOptions = DEFAULT_LAKE_OPTIONS) -> list[Entry]:
    """Every object under the prefix (recursively), sorted; temporary files are left out.

    Only the objects a job would process: `scan` also says what was skipped or refused."""
    return scan(
        loc, follow_symlinks=options.follow_symlinks, allow_outside=options.allow_outside
    ).entries


def _local_temporaries(root: str, busy: list[str] | None = None) -> list[str]:
    """Stale temporaries under a local folder (no live writer holds their flock), never
    following links, and never inside a nested folder holding a lake lock of its own
    (another job's destination); the nested folders whose job is running are added to
    `busy`."""
    found: list[str] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = list(it)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if folder != root and any(
            c.name == LOCK_NAME and c.is_file(follow_symlinks=False) for c in children
        ):
            if busy is not None and live_local_lock(folder):
                busy.append(folder)
            continue
        for c in children:
            if c.is_dir(follow_symlinks=False):
                stack.append(c.path)
            elif is_temporary(c.name) and is_stale_temporary(c.path):
                found.append(c.path)  # a regular file whose writer's flock is gone
    return found


def _remote_temporaries(loc: Location) -> tuple[list[str], list[str]]:
    """(temporaries under the prefix, folders under it with a lock of their own: other jobs'
    destinations, whose temporaries are theirs and not in the first list)."""
    base = loc.path.rstrip("/")
    infos = [
        fi
        for fi in loc.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        if fi.type == pafs.FileType.File
    ]
    locked = [
        fi.path.rsplit("/", 1)[0] + "/"
        for fi in infos
        if fi.path.rsplit("/", 1)[-1] == LOCK_NAME and fi.path.rsplit("/", 1)[0] != base
    ]
    temporaries = [
        fi.path
        for fi in infos
        if is_temporary(fi.path) and not any(fi.path.startswith(p) for p in locked)
    ]
    return temporaries, locked


def _abort_stale_uploads(loc: Location, locked: Sequence[str]) -> int:
    """Abort the multipart uploads a killed run left open under an S3 prefix: no listing
    shows them, and S3 bills their parts until they are aborted. Called only while holding
    the prefix's lock and before the job writes anything, so every open upload there is a
    dead job's; those under `locked` folders (other jobs' destinations) are left."""
    client = client_for(loc.fs)
    if client is None:
        return 0
    bucket, key = split_path(loc.path)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    n = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=prefix
    ):
        for upload in page.get("Uploads", []):
            if any(f"{bucket}/{upload['Key']}".startswith(p) for p in locked):
                continue
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            n += 1
    return n


def remove_temporaries(
    loc: Location, lock: DestinationLock, busy: list[str] | None = None
) -> tuple[int, int]:
    """Delete temporary files, and abort S3 multipart uploads, that a killed run left under
    the prefix; returns how many of each.

    Only while holding the prefix's `lock`: then no other job writes here, so every temporary
    is a dead job's (folders with a lock of their own, other jobs' destinations, are left;
    locally, those whose job is running are added to `busy`)."""
    if not lock.held:
        raise ConfigurationError("temporaries are removed only while holding the lock")
    folder = loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory
    aborted = 0
    if loc.is_local:
        paths = _local_temporaries(loc.path, busy) if folder else []
    else:
        paths, locked = _remote_temporaries(loc) if folder else ([], [])
        aborted = _abort_stale_uploads(loc, locked)  # (uploads may be all there is)
    n = 0
    for path in paths:
        try:
            loc.fs.delete_file(path)
            n += 1
        except FileNotFoundError:
            pass
    return n, aborted


def _removed_temporary(loc: Location, skipped: SkippedPath) -> bool:
    """Whether a skipped path is a temporary that is no longer there: a rewrap listed the
    temporaries a killed run left as skipped, then removed them and said so too (review)."""
    name = skipped.path.rsplit("/", 1)[-1]
    if not is_temporary(name):
        return False
    try:
        return bool(loc.fs.get_file_info(loc.join(skipped.path)).type == pafs.FileType.NotFound)
    except (OSError, EnvelopeError):
        return False


def _check_nested(target: Location, busy: Sequence[str], listing: Listing) -> None:
    """Refuse a job that would write inside the destination of a running job nested in its
    own (the two would write the same files, each binding its own relative paths; review).
    A nested destination this job writes nothing into is left to its job."""
    for folder in busy:
        prefix = os.path.relpath(folder, target.path).replace(os.sep, "/") + "/"
        if any(e.rel.startswith(prefix) for e in listing.entries):
            raise LockHeldError(
                f"{folder} is the destination of a running job, and this job would write "
                "there; wait for it to finish",
                None,
            )


@dataclass(slots=True)
class JobStart:
    """A job ready to run: its listing, and (when it writes) its held destination lock."""

    listing: Listing
    lock: DestinationLock | None = None
    removed: int = 0
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def begin_job(
    operation: str,
    src: Location,
    dst: Location | None,
    options: LakeOptions,
    entries: Sequence[Entry] | None = None,
) -> JobStart:
    """Check, list, lock and clean, in that order, before anything is written (blocking I/O:
    call from a worker thread). The caller must `release()` the result in a ``finally``.

    - `dst` (encrypt, decrypt) must not overlap the source;
    - the source is listed under the link rules (rewrap, which rewrites in place, never
      follows links); with `entries` given (a chunk of a distributed job) no listing;
    - the written prefix (`dst`, or the source for rewrap) is locked, and a killed run's
      temporaries are removed under the lock; a chunk (`entries` given) does neither, its
      driver does, once. A dry run writes nothing and takes no lock.
    """
    if dst is not None:
        check_apart(src.fs, src.path, dst.fs, dst.path)
        if dst.is_local and dst.fs.get_file_info(dst.path).type == pafs.FileType.File:
            raise ConfigurationError(
                f"the destination {dst.path} is a file: a lake job writes a folder of objects"
            )
    if entries is not None:
        listing = Listing(list(entries))
    else:
        follow = options.follow_symlinks and operation != "rewrap"
        listing = scan(
            src,
            follow_symlinks=follow,
            allow_outside=options.allow_outside,
            exclude=dst.path if dst is not None and dst.is_local and src.is_local else None,
        )
        if operation == "rewrap":  # it writes where it reads: the lock there is its own
            listing.skipped = [s for s in listing.skipped if s.path != LOCK_NAME]
    start = JobStart(listing)
    target = src if operation == "rewrap" else dst
    if entries is not None or options.dry_run or target is None:
        return start
    lock = acquire(target, operation=operation, break_lock=options.break_lock, ttl=options.lock_ttl)
    start.lock = lock
    try:
        if lock.took_over is not None:
            start.notes.append(
                f"took over the lock of {target.path} from a job that is gone: "
                f"{lock.took_over.describe()}"
            )
        elif lock.broke_unreadable:
            start.notes.append(f"removed an unreadable lock from {target.path}")
        busy: list[str] = []
        start.removed, aborted = remove_temporaries(target, lock, busy)
        if target is src and start.removed:  # (rewrap) listed as skipped, and removed since
            listing.skipped = [s for s in listing.skipped if not _removed_temporary(src, s)]
        _check_nested(target, busy, start.listing)
        if aborted:
            start.notes.append(
                f"aborted {aborted} unfinished multipart upload(s) left under {target.path} "
                "by a job that is gone"
            )
    except BaseException:
        lock.release()
        raise
    return start


@contextlib.asynccontextmanager
async def _started(
    operation: str,
    src: Location,
    dst: Location | None,
    options: LakeOptions,
    entries: Sequence[Entry] | None,
) -> AsyncIterator[JobStart]:
    """`begin_job` on a worker thread, released on the way out however the job ends.

    A signal can end the wait for the thread (asyncio's runner cancels the task natively,
    which a shielded scope does not hold off) while the thread goes on and takes the lock:
    whichever of the two comes second releases it, so a lock taken is never left behind."""
    handoff = threading.Lock()
    state: dict[str, Any] = {"start": None, "gone": False}

    def begin() -> JobStart:
        started = begin_job(operation, src, dst, options, entries)
        with handoff:
            orphaned = state["gone"]
            state["start"] = started
        if orphaned:
            started.release()
        return started

    try:
        with anyio.CancelScope(shield=True):  # a lock taken is never lost to a cancellation
            start = await anyio.to_thread.run_sync(begin)
    except BaseException:
        with handoff:
            state["gone"] = True
            taken = state["start"]
        if taken is not None:
            taken.release()
        raise
    try:
        await anyio.lowlevel.checkpoint()
        yield start
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(start.release)


def _read_header(
    fs: pafs.FileSystem, path: str, max_wrapped_keys: int = MAX_EDKS
) -> tuple[Header, int]:
    """Parse an object's header with usually one ranged read; returns (header, object size)."""
    with fs.open_input_file(path) as f:
        size = int(f.size())
        first = bytes(f.read_at(min(size, 64 << 10), 0))  # holds any usual header

        def read_range(offset: int, n: int) -> bytes:
            if offset + n <= len(first):
                return first[offset : offset + n]
            return bytes(f.read_at(n, offset))

        return objects.read_header(read_range, max_wrapped_keys=max_wrapped_keys), size


def _info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo | None:
    fi = fs.get_file_info(path)
    return fi if fi.type == pafs.FileType.File else None


def _route(entry: Entry, src: Location, dst: Location, options: LakeOptions) -> ObjectPath:
    return pick_path(
        entry.size,
        local_source=src.is_local,
        local_target=dst.is_local,
        small_limit=options.small_object_bytes,
    )


def _guards(src: Location, options: LakeOptions) -> Callable[[str], SourceGuard | None]:
    """A `SourceGuard` for each object of a local source, taken before it is read; None on
    an object store, whose objects are replaced whole (and whose times are whole seconds,
    which `_output_current` already distrusts)."""
    if not src.is_local:
        return lambda path: None
    return lambda path: SourceGuard(path, follow_links=options.follow_symlinks)


#: How a job's outputs' times compare with their sources' (`_times`, `_output_current`).
Times = Literal["stamped", "exact", "seconds"]


def _times(src: Location, dst: Location) -> Times:
    """``stamped``: a local source written by the local writer, which stamps each output with
    its source's change time (`SourceGuard`); ``exact``: both on local disks otherwise (a
    sub-tree filesystem over one), outputs at their write times, to the nanosecond;
    ``seconds``: an object store at either end."""
    if src.is_local and dst.is_local:
        return "stamped"
    return "exact" if _local(src.fs, dst.fs) else "seconds"


def _output_current(dst: pafs.FileInfo, src: Entry, times: Times) -> bool:
    """Whether `dst` was written from `src` as it is now.

    ``stamped``: the output is current when its time is its source's stamp, exactly (the
    change time the job read: the later of modification and status change): a source changed
    since has another change time, whatever the clocks did. (Later-or-equal let a source
    whose modification time lay in the future, as `tar x` or `rsync -a` from a host whose
    clock runs ahead leave it, keep its first output after every edit, and a
    `--follow-symlinks` link pointed back at an older file keep the newer file's output;
    review.) A destination that keeps whole seconds holds the stamp cut to its second.

    ``exact``: an output written at or after its source's change (nanoseconds).

    ``seconds``: object stores keep whole seconds (S3's LastModified) and set them themselves,
    so a source changed in the same second as its output was written may be newer or older:
    that output is not trusted (the object is done again), so a source rewritten just after
    its output is never skipped. The cost is redoing an object whose source and output share
    a second, once: the new output is a second later."""
    if src.changed_ns is None or dst.mtime_ns is None:
        return True
    second = 1_000_000_000
    if times == "stamped":
        stamp = src.changed_ns
        return bool(dst.mtime_ns == stamp or dst.mtime_ns == stamp // second * second)
    if times == "exact":
        return bool(dst.mtime_ns >= src.changed_ns)
    return bool(dst.mtime_ns // second > src.changed_ns // second)


def _local(*filesystems: pafs.FileSystem) -> bool:
    """Whether every filesystem is a local disk (times to the nanosecond), a sub-tree of one
    included."""

    def base(fs: pafs.FileSystem) -> pafs.FileSystem:
        while isinstance(fs, pafs.SubTreeFileSystem):
            fs = fs.base_fs
        return fs

    return all(isinstance(base(fs), pafs.LocalFileSystem) for fs in filesystems)


def _encrypted_done(
    fs: pafs.FileSystem,
    path: str,
    src: Entry,
    times: Times,
    object_context: Mapping[str, str],
    kms_context: Mapping[str, str],
) -> Header | None:
    """The output's header if the output is current (see `_output_current`), is this source's
    ciphertext by length, and its header holds exactly the contexts this run would write (the
    path binding among them): a re-run with other --context or --kms-context pairs encrypts
    again. Whether it is under this run's key is the caller's check (it may cost a KMS call)."""
    dst = _info(fs, path)
    if dst is None or not _output_current(dst, src, times):
        return None
    try:
        header, size = _read_header(fs, path)
    except (EnvelopeError, OSError):
        return None
    if header.object_context != object_context or header.kms_context != kms_context:
        return None
    return header if size == objects.ciphertext_length(header, src.size) else None


def _decrypted_done(
    src_fs: pafs.FileSystem,
    src_path: str,
    dst_fs: pafs.FileSystem,
    path: str,
    src: Entry,
    times: Times,
    keyring: Keyring,
    object_context: Mapping[str, str],
    kms_context: Mapping[str, str] | None,
) -> bool:
    """Whether the output is current (see `_output_current`), of this object's plaintext
    length, and the object one this run would have written: its contexts hold the pairs this
    run asks for, and a backend of this run's keyring can try one of its wrapped keys (no KMS
    call). Without the last two, an output an unchecked run left was "already done" for a
    run with --expect-context, --kms-context or another key, which a fresh run refuses
    (review)."""
    dst = _info(dst_fs, path)
    if dst is None or not _output_current(dst, src, times):
        return False
    try:
        header, size = _read_header(src_fs, src_path)
        if dst.size != objects.plaintext_length(header, size):
            return False
        objects.check_contexts(header, object_context, kms_context)
    except (EnvelopeError, OSError):
        return False
    backends = keyring.backends
    return any(b.can_unwrap(w) for w in header.wrapped_keys for b in backends)


# -- the runner ----------------------------------------------------------------------------


ObjectFn = Callable[[Entry], Awaitable[ObjectResult]]


async def _run(
    operation: Operation,
    source: str,
    destination: str | None,
    start: JobStart,
    fn: ObjectFn,
    options: LakeOptions,
    progress: Progress | None,
    done: Callable[[Entry], Awaitable[bool]] | None = None,
) -> JobReport:
    """Run `fn` on every listed entry, bounded; a dry run asks only `done` (the operation's
    resume check, with `options.resume`) and plans the rest."""
    entries = start.listing.entries
    rejected = start.listing.rejected
    report = JobReport(operation, source, destination, removed_temporaries=start.removed)
    report.skipped_paths.extend(start.listing.skipped)
    report.notes.extend(start.notes)
    if progress is not None:
        progress.start(operation, len(entries) + len(rejected), sum(e.size for e in entries))
    for r in rejected:  # refused at listing (an unsafe key): failed objects, with the reason
        result = ObjectResult(r.path, "failed", 0, r.error_type, r.reason)
        report.add(result)
        if progress is not None:
            progress.advance(result)
    if rejected and options.fail_fast:
        return report
    small = anyio.CapacityLimiter(options.concurrency)
    large = anyio.CapacityLimiter(options.large_slots)
    t0 = time.perf_counter()

    async def one(entry: Entry) -> None:
        limiter = large if entry.size > options.small_object_bytes else small
        async with limiter:
            try:
                if not options.dry_run:
                    result = await fn(entry)
                elif options.resume and done is not None and await done(entry):
                    result = ObjectResult(entry.rel, "skipped", entry.size)
                else:
                    result = ObjectResult(entry.rel, "planned", entry.size)
            except Exception as e:
                # One object's failure, whatever it is (a typed envelope error, a
                # filesystem fault, pyarrow's ArrowInvalid), is that object's result: the
                # rest of the job goes on and the report names it. Cancellation is not
                # an Exception and stops the job.
                said = "; ".join([str(e), *getattr(e, "__notes__", ())])
                result = ObjectResult(entry.rel, "failed", 0, type(e).__name__, said)
        report.add(result)
        if progress is not None:
            progress.advance(result)
        if result.status == "failed" and options.fail_fast:
            raise _FailFast(result)

    try:
        async with anyio.create_task_group() as tg:
            # Start tasks only as fast as they can run, so millions of entries never become
            # millions of waiting tasks.
            gate = anyio.Semaphore(options.concurrency + options.large_concurrency)
            for entry in entries:
                await gate.acquire()

                async def run_and_release(e: Entry = entry) -> None:
                    try:
                        await one(e)
                    finally:
                        gate.release()

                tg.start_soon(run_and_release)
    except BaseExceptionGroup as group:
        first = first_error(group)
        if not isinstance(first, _FailFast):
            raise first from None
    report.seconds = time.perf_counter() - t0
    report.planned_paths.sort()
    return report


class _FailFast(Exception):
    def __init__(self, result: ObjectResult) -> None:
        super().__init__(result.error)
        self.result = result


def _check_context(options: LakeOptions, extra: Mapping[str, str] | None) -> None:
    """With `bind_path`, the job writes (and requires) each object's own path under
    `envelope:path`; a caller's pair of that name would be silently replaced, so it is
    refused before the job starts."""
    if options.bind_path and extra and PATH_CONTEXT_KEY in extra:
        raise ConfigurationError(
            f"{PATH_CONTEXT_KEY} is set by the job to each object's relative path; drop it "
            "from the context, or turn path binding off (--no-bind-path, bind_path=False)"
        )


def _object_context(
    entry: Entry, options: LakeOptions, extra: Mapping[str, str] | None
) -> dict[str, str]:
    ctx = dict(extra or {})
    if options.bind_path:
        ctx[PATH_CONTEXT_KEY] = entry.rel
    return ctx


def _expected(
    entry: Entry, options: LakeOptions, extra: Mapping[str, str] | None
) -> dict[str, str]:
    return _object_context(entry, options, extra)


def _real_root(loc: Location) -> str | None:
    """A local destination's real path, which every output must stay under (None elsewhere:
    object stores have no links)."""
    return os.path.realpath(loc.path) if loc.is_local else None


# -- encrypt -------------------------------------------------------------------------------


def _kept(keyring: Keyring, dst: Location) -> objects.KeptPaths | None:
    """The keyring's kept paths, for a local destination (every object's target is checked
    against them: a source file named root.key, encrypted into the KMS home, replaced the
    root-key file; one named like the key file, into its folder, sealed the key under
    itself). None for an object store, which holds no local key."""
    return objects.KeptPaths([keyring], dst.path) if dst.is_local else None


async def encrypt_prefix(
    source: str,
    destination: str,
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    options: LakeOptions = DEFAULT_LAKE_OPTIONS,
    progress: Progress | None = None,
    observer: Observer = NULL_OBSERVER,
    source_fs: pafs.FileSystem | None = None,
    destination_fs: pafs.FileSystem | None = None,
    entries: Sequence[Entry] | None = None,
) -> JobReport:
    """Encrypt every object under `source` to the same relative path under `destination`."""
    _check_context(options, object_context)
    src, dst = (
        resolve(source, filesystem=source_fs),
        resolve(destination, filesystem=destination_fs),
    )
    engine = options.engine
    large = options.large_engine  # one large object's share of the memory budget
    dst_real = _real_root(dst)
    times = _times(src, dst)  # (once per job: how each output's time is judged)
    kept = _kept(keyring, dst)
    target: list[tuple[str, str]] = []  # (provider, key id) this run's headers name
    learning = anyio.Lock()
    #: the error of a failed `learn_target`, raised again for each object that needs it
    #: instead of asking the KMS (and its retries) once per object, one at a time
    unlearned: list[BaseException] = []
    #: what the keyring names: outputs whose header names exactly this are under this run's
    #: key without asking the KMS (a key file, a key ARN); an alias or a bare id is learned
    named = (
        (keyring.backend.provider_id, keyring.key_id)
        if keyring.backend is not None and keyring.key_id is not None
        else None
    )

    def output_header(entry: Entry) -> Header | None:
        dst_path = dst.join(entry.rel)
        if kept is not None:  # (first: over a key file is the more telling refusal)
            kept.check(dst_path)
        if dst_real is not None:
            check_local_output(dst_real, dst_path, entry.rel)
        if not options.resume:
            return None
        return _encrypted_done(
            dst.fs,
            dst_path,
            entry,
            times,
            _object_context(entry, options, object_context),
            kms_context or {},
        )

    async def learn_target() -> None:
        """Which (provider, key id) this run's headers name, from a data key of the run's
        own (through the cache, which serves the objects written next): an alias or a key
        URI names its key only through the KMS's answer."""
        key = await keyring.encryption_key(kms_context or {})
        try:
            target.append((key.wrapped.provider_id, key.wrapped.key_id))
        finally:
            key.wipe()

    async def done(entry: Entry) -> bool:
        """Resume: an output already there counts as done only if it is current and under
        this run's key (a re-run under another key encrypts again: its outputs would
        otherwise be a mix of two keys, and the old key's retirement would break them)."""
        header = await anyio.to_thread.run_sync(output_header, entry)
        if header is None:
            return False
        names = {(w.provider_id, w.key_id) for w in header.wrapped_keys}
        if names == {named}:
            return True
        if not target:
            async with learning:
                if unlearned:
                    raise KmsError(
                        f"cannot tell whether this output is under this run's key: {unlearned[0]}"
                    ) from None
                if not target:
                    try:
                        await learn_target()
                    except EnvelopeError as e:
                        unlearned.append(e)
                        raise
        return names == {target[0]}

    guard_of = _guards(src, options)

    async def one(entry: Entry) -> ObjectResult:
        src_path, dst_path = src.join(entry.rel), dst.join(entry.rel)
        if await done(entry):
            return ObjectResult(entry.rel, "skipped", entry.size)
        octx = _object_context(entry, options, object_context)
        route = _route(entry, src, dst, options)
        if route == "streamed":  # api.encrypt reports it to the observer itself
            guard = await anyio.to_thread.run_sync(guard_of, src_path)
            sink = atomic_sink(dst.fs, dst_path, durable=options.durable)
            info = await api.encrypt(
                await open_source_at(src.fs, src_path),
                sink if guard is None else GuardedSink(sink, guard),
                keyring=keyring,
                kms_context=kms_context,
                object_context=octx,
                options=large,
                observer=observer,
            )
            return ObjectResult(entry.rel, "done", info.plaintext_len)
        with objects.Tracked(observer, "encrypt") as track:
            track.plaintext_len = n = await local(entry, src_path, dst_path, octx, route)
        return ObjectResult(entry.rel, "done", n)

    async def local(
        entry: Entry, src_path: str, dst_path: str, octx: Mapping[str, str], route: str
    ) -> int:
        """The small and direct routes (whole in memory, or file to file): plaintext bytes."""
        if route == "small":
            prepared = await api.prepare_object(
                keyring,
                kms_context=kms_context,
                object_context=octx,
                options=engine,
                expected_bytes=entry.size,
            )

            def work() -> int:
                guard = guard_of(src_path)
                data = read_whole(
                    src.fs, src_path, entry.size, follow_links=options.follow_symlinks
                )
                sealed = api.seal_prepared(prepared, data)
                write_whole(dst.fs, dst_path, sealed, durable=options.durable, guard=guard)
                return len(data)

            return await anyio.to_thread.run_sync(work)
        prepared = await api.prepare_object(
            keyring,
            kms_context=kms_context,
            object_context=octx,
            options=engine,
            expected_bytes=entry.size,
        )
        return await anyio.to_thread.run_sync(
            lambda: direct.seal_file(
                prepared,
                src_path,
                dst_path,
                expected_size=entry.size,
                durable=options.durable,
                memory_budget=large.memory_budget,
                follow_links=options.follow_symlinks,  # (links checked when listed)
                guard=guard_of(src_path),
            )
        )

    async with _started("encrypt", src, dst, options, entries) as start:
        return await _run("encrypt", source, destination, start, one, options, progress, done)


# -- decrypt and verify --------------------------------------------------------------------


async def _open_small(
    ciphertext: bytes,
    keyring: Keyring,
    expected: Mapping[str, str],
    expected_kms: Mapping[str, str] | None,
    engine: api.Options,
    then: Callable[[bytearray], None] | None = None,
) -> int:
    """Authenticate a whole small object's header, then, in one worker-thread hop, open every
    segment and hand the plaintext to `then` (write it) before wiping it."""
    header = objects.parse_object_header(
        memoryview(ciphertext), max_wrapped_keys=engine.max_wrapped_keys
    )
    keys = await api.open_object(
        header, keyring=keyring, expected_context=expected, expected_kms_context=expected_kms
    )

    def work() -> int:
        plain = api.open_whole(header, keys, ciphertext)
        try:
            if then is not None:
                then(plain)
            return len(plain)
        finally:
            plain[:] = bytes(len(plain))

    return await anyio.to_thread.run_sync(work)


async def decrypt_prefix(
    source: str,
    destination: str,
    *,
    keyring: Keyring,
    object_context: Mapping[str, str] | None = None,
    kms_context: Mapping[str, str] | None = None,
    options: LakeOptions = DEFAULT_LAKE_OPTIONS,
    progress: Progress | None = None,
    observer: Observer = NULL_OBSERVER,
    source_fs: pafs.FileSystem | None = None,
    destination_fs: pafs.FileSystem | None = None,
    entries: Sequence[Entry] | None = None,
) -> JobReport:
    """Decrypt every object under `source` to the same relative path under `destination`.

    `object_context` pairs (and the object's own path, when `bind_path`) are required in
    every object's context, and `kms_context` pairs in its KMS context (an object without
    them fails with ContextMismatchError, and no plaintext of it is written).
    """
    _check_context(options, object_context)
    src, dst = (
        resolve(source, filesystem=source_fs),
        resolve(destination, filesystem=destination_fs),
    )
    engine = options.engine
    large = options.large_engine  # one large object's share of the memory budget
    dst_real = _real_root(dst)
    times = _times(src, dst)  # (once per job: how each output's time is judged)

    kept = _kept(keyring, dst)

    def already_done(entry: Entry) -> bool:
        src_path, dst_path = src.join(entry.rel), dst.join(entry.rel)
        if kept is not None:  # (first: over a key file is the more telling refusal)
            kept.check(dst_path)
        if dst_real is not None:
            check_local_output(dst_real, dst_path, entry.rel)
        return options.resume and _decrypted_done(
            src.fs, src_path, dst.fs, dst_path, entry, times, keyring,
            _expected(entry, options, object_context), kms_context,
        )  # fmt: skip

    async def done(entry: Entry) -> bool:
        return await anyio.to_thread.run_sync(already_done, entry)

    guard_of = _guards(src, options)

    async def one(entry: Entry) -> ObjectResult:
        src_path, dst_path = src.join(entry.rel), dst.join(entry.rel)
        route = _route(entry, src, dst, options)
        small = route == "small"

        def check_and_read() -> tuple[bytes, SourceGuard | None] | None:
            """One hop: the resume check, then the source's guard and (small objects) the
            whole ciphertext."""
            if already_done(entry):
                return None
            guard = None if route == "streamed" else guard_of(src_path)
            if not small:
                return b"", guard
            data = read_whole(src.fs, src_path, entry.size, follow_links=options.follow_symlinks)
            return data, guard

        read = await anyio.to_thread.run_sync(check_and_read)
        if read is None:
            return ObjectResult(entry.rel, "skipped", entry.size)
        ciphertext, guard = read
        expected = _expected(entry, options, object_context)
        if route == "streamed":  # api.decrypt reports it to the observer itself
            guard = await anyio.to_thread.run_sync(guard_of, src_path)
            sink = atomic_sink(dst.fs, dst_path, durable=options.durable)
            info = await api.decrypt(
                await open_source_at(src.fs, src_path),
                sink if guard is None else GuardedSink(sink, guard),
                keyring=keyring,
                expected_context=expected,
                expected_kms_context=kms_context,
                options=large,
                observer=observer,
            )
            return ObjectResult(entry.rel, "done", info.plaintext_len)
        with objects.Tracked(observer, "decrypt") as track:
            track.plaintext_len = n = await local(entry, ciphertext, expected, route, guard)
        return ObjectResult(entry.rel, "done", n)

    async def local(
        entry: Entry,
        ciphertext: bytes,
        expected: Mapping[str, str],
        route: str,
        guard: SourceGuard | None,
    ) -> int:
        """The small and direct routes (whole in memory, or file to file): plaintext bytes."""
        src_path, dst_path = src.join(entry.rel), dst.join(entry.rel)
        if route == "small":
            return await _open_small(
                ciphertext,
                keyring,
                expected,
                kms_context,
                engine,
                lambda plain: write_whole(
                    dst.fs, dst_path, plain, durable=options.durable, guard=guard
                ),
            )
        header, _ = await anyio.to_thread.run_sync(
            _read_header, src.fs, src_path, engine.max_wrapped_keys
        )
        keys = await api.open_object(
            header,
            keyring=keyring,
            expected_context=expected,
            expected_kms_context=kms_context,
        )
        # refuse what won't fit once the header authenticated (a forged segment size is an
        # AuthenticationError, not a budget to raise), before any output
        large.plan("decrypt", header.seg_log2)
        return await anyio.to_thread.run_sync(
            lambda: direct.open_file(
                header,
                keys,
                src_path,
                dst_path,
                durable=options.durable,
                memory_budget=large.memory_budget,
                follow_links=options.follow_symlinks,  # (links checked when listed)
                guard=guard,
            )
        )

    async with _started("decrypt", src, dst, options, entries) as start:
        return await _run("decrypt", source, destination, start, one, options, progress, done)


async def verify_prefix(
    source: str,
    *,
    keyring: Keyring,
    object_context: Mapping[str, str] | None = None,
    kms_context: Mapping[str, str] | None = None,
    options: LakeOptions = DEFAULT_LAKE_OPTIONS,
    progress: Progress | None = None,
    observer: Observer = NULL_OBSERVER,
    source_fs: pafs.FileSystem | None = None,
    entries: Sequence[Entry] | None = None,
) -> JobReport:
    """Authenticate every object under `source` completely; write no plaintext anywhere.
    `object_context` and `kms_context` pairs are required as in `decrypt_prefix`."""
    _check_context(options, object_context)
    src = resolve(source, filesystem=source_fs)
    engine = options.engine
    large = options.large_engine  # one large object's share of the memory budget

    async def one(entry: Entry) -> ObjectResult:
        path = src.join(entry.rel)
        expected = _expected(entry, options, object_context)
        if entry.size <= options.small_object_bytes:
            ciphertext = await anyio.to_thread.run_sync(
                partial(read_whole, src.fs, path, entry.size, follow_links=options.follow_symlinks)
            )
            with objects.Tracked(observer, "decrypt") as track:
                track.plaintext_len = n = await _open_small(
                    ciphertext, keyring, expected, kms_context, engine
                )
        else:
            info = await api.decrypt(
                await open_source_at(src.fs, path),
                streams.CountingSink(),
                keyring=keyring,
                expected_context=expected,
                expected_kms_context=kms_context,
                options=large,
                observer=observer,
            )
            n = info.plaintext_len
        return ObjectResult(entry.rel, "done", n)

    async with _started("verify", src, None, options, entries) as start:
        return await _run("verify", source, None, start, one, options, progress)


# -- rewrap --------------------------------------------------------------------------------


async def rewrap_prefix(
    source: str,
    *,
    keyring: Keyring,
    to: Keyring,
    object_context: Mapping[str, str] | None = None,
    kms_context: Mapping[str, str] | None = None,
    options: LakeOptions = DEFAULT_LAKE_OPTIONS,
    progress: Progress | None = None,
    source_fs: pafs.FileSystem | None = None,
    entries: Sequence[Entry] | None = None,
    wrapped_cache: dict[bytes, WrappedKey] | None = None,
) -> JobReport:
    """Move every object under `source` to `to`'s key, in place: only headers change.

    Each object's header is authenticated and its contexts checked (`object_context` and
    `kms_context` pairs required, as in `decrypt_prefix`: an object without them fails and
    is left as it was), its data key unwrapped (with `keyring`) and wrapped
    under the new key, and the object rewritten atomically with the new header and the body
    copied byte for byte. Objects already under the new key are skipped. Data keys shared by
    many objects (a cache's bucket keys) are wrapped once per job; `wrapped_cache` (new data
    keys' wraps under `to`, by a MAC of the data key) may be shared by the calls that run one
    job in parts (a Dask worker's slices), so that each is wrapped once there too.

    Which (provider, key id) `to` writes is learned from the job's first real wrap, made with
    that object's own KMS context (a key policy may require one), so a job costs no KMS call
    beyond one wrap per data key; objects wait for it only until that first wrap is done.
    """
    _check_context(options, object_context)
    src = resolve(source, filesystem=source_fs)
    target: list[tuple[str, str]] = []  # learned from the first wrap (`fresh_header`)
    learning = anyio.Lock()
    if wrapped_cache is None:
        wrapped_cache = {}
    engine = options.engine

    def bound_path(entry: Entry, header: Header) -> None:
        if options.bind_path and header.object_context.get(PATH_CONTEXT_KEY) != entry.rel:
            raise InvalidObjectError(
                f"object context names path {header.object_context.get(PATH_CONTEXT_KEY)!r}, "
                f"not {entry.rel!r}: refusing to re-wrap a moved or swapped object"
            )

    def already_under_target(entry: Entry, header: Header) -> bool:
        """Already under the new key: nothing to write. Its contexts as its header states
        them must still be the expected ones, so that a job run with the wrong pairs reports
        it as failed rather than done (authenticating them would cost a KMS call per object
        left as it is; decrypting it authenticates them)."""
        if not all((w.provider_id, w.key_id) == target[0] for w in header.wrapped_keys):
            return False
        bound_path(entry, header)
        check_contexts(header, _expected(entry, options, object_context), kms_context)
        return True

    def learned(w: WrappedKey) -> None:
        if not target:
            target.append((w.provider_id, w.key_id))

    async def probe(header: Header) -> None:
        """Learn the target from a wrap of a throwaway key under `to`, with this object's own
        KMS context (a key policy may require it): for an object the source keyring cannot
        read (a re-run finds objects already under the new key) and for a dry run."""
        throwaway = bytearray(os.urandom(32))
        try:
            learned(await to.wrap_key(throwaway, header.kms_context))
        finally:
            throwaway[:] = bytes(32)

    async def fresh_header(entry: Entry, header: Header) -> bytes:
        bound_path(entry, header)
        new = await api.rewrap_header(
            header,
            keyring=keyring,
            to=to,
            wrapped_cache=wrapped_cache,
            expected_context=_expected(entry, options, object_context),
            expected_kms_context=kms_context,
        )
        if not target:  # parsed once per job, not once per object
            learned(objects.parse_object_header(memoryview(new)).wrapped_keys[0])
        return new

    async def first(entry: Entry, header: Header) -> bytes | None:
        """The first object of a resumed job (one at a time until the target is known): its
        real wrap says what the target is; if it cannot be re-wrapped (with the source
        keyring, an object already under the new key may be unreadable), a throwaway wrap
        says it, and an object already under the target is then skipped as any other."""
        try:
            new = await fresh_header(entry, header)
        except Exception:
            if not target:
                try:
                    await probe(header)
                except Exception:
                    pass  # the object's own error is the one to report
            if target and already_under_target(entry, header):
                return None
            raise
        return None if already_under_target(entry, header) else new

    async def skip_or_header(entry: Entry, header: Header) -> bytes | None:
        """None when the object is already under the target key (resume), else its new
        header. Until the first wrap says what the target is, one object at a time wraps."""
        if not options.resume:
            return await fresh_header(entry, header)
        if not target:
            async with learning:
                if not target:
                    return await first(entry, header)
        if already_under_target(entry, header):
            return None
        return await fresh_header(entry, header)

    async def done(entry: Entry) -> bool:
        """A dry run's resume check: one throwaway wrap learns the target (nothing is read
        with the source keyring, nothing written); every object is judged from its header."""
        header, _ = await anyio.to_thread.run_sync(
            _read_header, src.fs, src.join(entry.rel), engine.max_wrapped_keys
        )
        if not target:
            async with learning:
                if not target:
                    await probe(header)
        return already_under_target(entry, header)

    async def one(entry: Entry) -> ObjectResult:
        path = src.join(entry.rel)
        header, _ = await anyio.to_thread.run_sync(
            _read_header, src.fs, path, engine.max_wrapped_keys
        )
        new_header = await skip_or_header(entry, header)
        if new_header is None:
            return ObjectResult(entry.rel, "skipped", entry.size)
        stream = await anyio.to_thread.run_sync(src.fs.open_input_stream, path)
        try:
            sink = await anyio.to_thread.run_sync(
                partial(atomic_sink, src.fs, path, durable=options.durable, replacing=True)
            )
        except BaseException:
            await anyio.to_thread.run_sync(stream.close)
            raise
        try:
            await sink.write(memoryview(new_header))
            source_ = ArrowSource(stream)
            skip = bytearray(header.header_len)
            if await source_.readinto(memoryview(skip)) != header.header_len or (
                bytes(skip) != header.raw
            ):
                # Replaced between the two reads: never splice an old header onto a new body.
                raise InvalidObjectError(f"{entry.rel!r} changed while being re-wrapped")
            buf = bytearray(max(1, engine.batch_bytes))
            view = memoryview(buf)
            copied = 0
            while n := await source_.readinto(view):
                await sink.write(view[:n])
                copied += n
                if n < len(buf):
                    break
            await sink.commit()
        except BaseException as e:
            await api.abort_keeping(sink, e)
            raise
        finally:
            await anyio.to_thread.run_sync(stream.close)
        return ObjectResult(entry.rel, "done", copied)

    async with _started("rewrap", src, None, options, entries) as start:
        return await _run("rewrap", source, source, start, one, options, progress, done)


async def run_job(
    operation: str,
    source: str,
    destination: str | None,
    *,
    keyring: Keyring,
    to: Keyring | None = None,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    options: LakeOptions = DEFAULT_LAKE_OPTIONS,
    progress: Progress | None = None,
    observer: Observer = NULL_OBSERVER,
    entries: Sequence[Entry] | None = None,
    wrapped_cache: dict[bytes, WrappedKey] | None = None,
) -> JobReport:
    """Any of the four jobs by name (for the CLI and the Dask workers). `kms_context` and
    `object_context` are written by encrypt and required by the others; `wrapped_cache` is
    rewrap's (`rewrap_prefix`)."""
    if operation in ("encrypt", "decrypt") and destination is None:
        raise ConfigurationError(f"{operation} needs a destination")
    if operation == "encrypt":
        assert destination is not None
        return await encrypt_prefix(
            source,
            destination,
            keyring=keyring,
            kms_context=kms_context,
            object_context=object_context,
            options=options,
            progress=progress,
            observer=observer,
            entries=entries,
        )
    if operation == "decrypt":
        assert destination is not None
        return await decrypt_prefix(
            source,
            destination,
            keyring=keyring,
            object_context=object_context,
            kms_context=kms_context,
            options=options,
            progress=progress,
            observer=observer,
            entries=entries,
        )
    if operation == "verify":
        return await verify_prefix(
            source,
            keyring=keyring,
            object_context=object_context,
            kms_context=kms_context,
            options=options,
            progress=progress,
            observer=observer,
            entries=entries,
        )
    if operation == "rewrap":
        if to is None:
            raise ConfigurationError("rewrap needs a target keyring")
        return await rewrap_prefix(
            source,
            keyring=keyring,
            to=to,
            object_context=object_context,
            kms_context=kms_context,
            options=options,
            progress=progress,
            entries=entries,
            wrapped_cache=wrapped_cache,
        )
    raise ConfigurationError(f"unknown lake operation {operation!r}")
