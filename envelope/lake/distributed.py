"""Scale-out on Dask: the objects of one job spread over a cluster's workers.

The driver lists the prefix and removes temporaries once, cuts the objects into chunks and
submits one task per chunk. Each worker process builds its keyring once from a picklable
`KeySpec` (`envelope.kms.keyspec`: the same rules as the command line) and keeps it (its own
data-key cache and KMS client) for every chunk it runs; each chunk is the ordinary
single-machine job over that chunk's entries, so results, per-object failure reporting and
the resume rule are the same as on one machine. Dask retries a task whose worker died;
re-running a chunk is safe because finished objects are skipped.

The KMS must be reachable from every worker: the embedded store on a shared path works (it is
safe for several processes), and so will the KMS server.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio

from ..errors import ConfigurationError
from ..keyring import Keyring
from ..kms.base import WrappedKey
from ..kms.keyspec import KeySpec, Purpose
from ..metrics import NULL_OBSERVER, Direction, Observer
from ..uri_secrets import redact_uri
from . import jobs
from .fs import absolute, resolve

__all__ = ("KeySpec", "run_distributed", "run_on_dask")


@dataclass(frozen=True, slots=True)
class _Task:
    operation: str
    source: str
    destination: str | None
    keys: KeySpec
    to: KeySpec | None
    options: jobs.LakeOptions
    kms_context: Mapping[str, str] = field(default_factory=dict)
    object_context: Mapping[str, str] = field(default_factory=dict)
    #: The name of the job's Dask Event that tells its chunks to stop (the driver was
    #: interrupted): a chunk starts no further slice of its objects once it is set.
    stop: str = ""


# One keyring per worker process and spec (the spec names its purpose), reused by every
# chunk the worker runs, so its data-key cache and KMS client live as long as the worker.
_WORKER_KEYRINGS: dict[KeySpec, Keyring] = {}
_WORKER_LOCK = threading.Lock()


# A rewrap's new wraps by data key, per job (its stop event's name) on this worker, shared by
# its slices and chunks: each slice was a new job with a cache of its own, and wrapped every
# data key again, so the objects of one data key ended under several wrapped keys (review).
# The few latest jobs are kept (wrapped keys and MACs only: no secret).
_WORKER_WRAPS: dict[str, dict[bytes, WrappedKey]] = {}


def _job_wraps(job: str) -> dict[bytes, WrappedKey]:
    with _WORKER_LOCK:
        got = _WORKER_WRAPS.get(job)
        if got is None:
            got = _WORKER_WRAPS[job] = {}
            while len(_WORKER_WRAPS) > 4:
                del _WORKER_WRAPS[next(iter(_WORKER_WRAPS))]
        return got


def _worker_keyring(spec: KeySpec) -> Keyring:
    with _WORKER_LOCK:
        got = _WORKER_KEYRINGS.get(spec)
        if got is None:
            got = _WORKER_KEYRINGS[spec] = spec.keyring()
        return got


#: A chunk runs its objects in slices of about this many bytes (or `4 * concurrency`
#: objects), and looks at the job's stop event between slices.
_SLICE_BYTES = 64 << 20

#: What a chunk reports: the counters and lists the driver adds up.
_PART_COUNTS = ("done", "skipped", "failed", "planned", "objects", "bytes")


def _slices(entries: Sequence[jobs.Entry], most: int) -> list[Sequence[jobs.Entry]]:
    out: list[Sequence[jobs.Entry]] = []
    first, size = 0, 0
    for i, e in enumerate(entries):
        size += e.size
        if i + 1 - first >= most or size >= _SLICE_BYTES:
            out.append(entries[first : i + 1])
            first, size = i + 1, 0
    if first < len(entries):
        out.append(entries[first:])
    return out


def _run_chunk(task: _Task, entries: Sequence[jobs.Entry]) -> dict[str, Any]:
    """Runs on a Dask worker: the single-machine job over one chunk of entries, a slice at
    a time; it stops between slices once the driver sets the job's stop event (it was
    interrupted, and holds the destination's lock until its chunks have ended)."""
    keyring = _worker_keyring(task.keys)
    to = _worker_keyring(task.to) if task.to is not None else None
    options = task.options
    stop = _distributed().Event(task.stop) if task.stop else None
    wraps = _job_wraps(task.stop) if task.operation == "rewrap" and task.stop else None
    part: dict[str, Any] = dict.fromkeys(_PART_COUNTS, 0)
    part["failures"], part["planned_paths"] = [], []
    for piece in _slices(entries, 4 * options.concurrency):
        if stop is not None and stop.is_set():
            break

        async def go(piece: Sequence[jobs.Entry] = piece) -> jobs.JobReport:
            return await jobs.run_job(
                task.operation,
                task.source,
                task.destination,
                keyring=keyring,
                to=to,
                kms_context=task.kms_context,
                object_context=task.object_context,
                options=options,
                entries=piece,
                wrapped_cache=wraps,
            )

        got: dict[str, Any] = anyio.run(go).to_dict()
        for name in _PART_COUNTS:
            part[name] += got[name]
        part["failures"].extend(got["failures"])
        part["planned_paths"].extend(got["planned_paths"])
        if options.fail_fast and got["failures"]:
            break
    return part


def _distributed() -> Any:
    """The `distributed` module, imported only when a job asks for Dask."""
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise ConfigurationError(
            "Dask is not installed: pip install 'envelope-kms[dask]'"
        ) from None


def _chunks(entries: Sequence[jobs.Entry], n_workers: int) -> list[list[jobs.Entry]]:
    """About four chunks per worker, balanced by bytes, so stragglers stay small."""
    if not entries:
        return []
    target = max(1, 4 * n_workers)
    total = sum(e.size + 4096 for e in entries)
    per = max(1, total // target)
    out: list[list[jobs.Entry]] = [[]]
    acc = 0
    for e in entries:
        if acc >= per and out[-1]:
            out.append([])
            acc = 0
        out[-1].append(e)
        acc += e.size + 4096
    return out


def _job_keys(operation: str, keys: KeySpec, to: KeySpec | None) -> tuple[KeySpec, KeySpec | None]:
    """The specs the workers build from: the purpose set by the operation, the lake jobs'
    cache and retry defaults where unset, and paths pinned for other processes."""
    if not isinstance(keys, KeySpec) or not (to is None or isinstance(to, KeySpec)):
        raise ConfigurationError("keys and to must be envelope.kms.keyspec.KeySpec")
    if operation == "rewrap":
        if to is None:
            raise ConfigurationError("rewrap needs the target key: to=KeySpec(key=...)")
        to = to.for_purpose("encrypt").bulk().pinned()
    elif to is not None:
        raise ConfigurationError(f"only rewrap takes a target key, not {operation}")
    purpose: Purpose = "encrypt" if operation == "encrypt" else "decrypt"
    return keys.for_purpose(purpose).bulk().pinned(), to


def _warn_of_credentials(client: Any, source: str, destination: str | None) -> None:
    """A URI holding credentials (``s3://KEY:SECRET@...``) travels in every task to the
    scheduler and the workers, which Dask sends unencrypted unless its comms use TLS: said
    once, naming the URI without its secrets (it went without a word; review)."""
    address = str(getattr(getattr(client, "scheduler", None), "address", "") or "")
    if address.startswith(("tls://", "inproc://")):
        return
    for uri in (source, destination):
        if uri is not None and redact_uri(uri) != uri:
            warnings.warn(
                f"{redact_uri(uri)} holds credentials, which go to the Dask scheduler and "
                f"workers in every task, unencrypted over {address or 'the cluster'}: give "
                "the workers their credentials from their environment (AWS_* variables, an "
                "instance profile) instead, or run the cluster with TLS",
                stacklevel=3,
            )


def run_on_dask(
    client: Any,
    operation: str,
    source: str,
    destination: str | None,
    *,
    keys: KeySpec,
    to: KeySpec | None = None,
    options: jobs.LakeOptions = jobs.DEFAULT_LAKE_OPTIONS,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    progress: jobs.Progress | None = None,
    retries: int = 2,
    observer: Observer = NULL_OBSERVER,
) -> jobs.JobReport:
    """Run one lake job over a Dask cluster (`client` is a distributed.Client).

    `observer` hears of every object as its chunk's result reaches the driver (objects, bytes
    and failures: a `--metrics-port` of the driver shows the job); the KMS calls are made,
    and counted, in the workers.

    `keys` names the keys to seal under (encrypt) or read with (decrypt, verify, rewrap);
    its purpose is set from `operation`. `to` is rewrap's target key. Unset cache and retry
    take the lake defaults (`KeySpec.bulk`). The driver checks, lists, locks the destination
    and cleans, once, and holds the lock until every chunk has finished (chunks take none);
    then it removes what a worker that died mid-object left (temporaries, S3 uploads).
    Local paths are made absolute here: a worker resolves a relative one against its own
    working folder."""
    keys, to = _job_keys(operation, keys, to)
    source = absolute(source)
    destination = absolute(destination) if destination is not None else None
    _warn_of_credentials(client, source, destination)
    task = _Task(
        operation,
        source,
        destination,
        keys,
        to,
        options,
        dict(kms_context or {}),
        dict(object_context or {}),
        stop=f"envelope-stop-{uuid.uuid4().hex}",
    )
    src = resolve(source)
    dst = resolve(destination) if operation in ("encrypt", "decrypt") and destination else None
    start = jobs.begin_job(operation, src, dst, options)
    submitted: list[Any] = []
    ended = True  # whether no chunk may still be writing (the lock may go)
    try:
        try:
            report = _run_chunks(client, task, start, progress, retries, submitted, observer)
        except BaseException:
            ended = _stop_chunks(client, task, submitted)
            raise
        if start.lock is not None:  # every chunk has finished: what is left is a dead worker's
            removed, aborted = jobs.remove_temporaries(dst or src, start.lock)
            report.removed_temporaries += removed
            if removed or aborted:
                report.notes.append(
                    f"removed {removed} temporary file(s) and aborted {aborted} multipart "
                    "upload(s) left by a worker that died during the job (its chunk was run "
                    "again)"
                )
        return report
    finally:
        if ended:
            start.release()


def _stop_chunks(client: Any, task: _Task, submitted: list[Any]) -> bool:
    """The driver was interrupted (or failed): tell the chunks to stop at their next slice
    and wait for them, so that none is still writing once the lock goes (they kept writing
    after the driver had exited and released it, so another job could take the lock while
    they did). False if that wait is interrupted too (a second Ctrl-C): the lock is then
    kept, for `--break-lock` once the workers are done."""
    d = _distributed()
    try:
        d.Event(task.stop, client=client).set()  # a chunk that starts from now on does nothing
        unfinished = [f for f in submitted if not f.done()]
        states = _task_states(client, [f.key for f in unfinished])
        # a chunk no worker has taken may never be taken (no free worker, none at all):
        # cancelled, not waited for; those a worker holds end at their next slice
        idle = [f for f in unfinished if states.get(f.key) != "processing"]
        client.cancel(idle)
        d.wait([f for f in unfinished if f not in idle], timeout=_STOP_WAIT)
    except BaseException:
        return False
    return True


#: How long an interrupted driver waits for its running chunks to reach their next slice
#: before it leaves, keeping the lock.
_STOP_WAIT = 300.0


def _task_states(client: Any, keys: list[Any]) -> dict[Any, str]:
    """The scheduler's state of each task (``processing``: a worker holds it)."""
    if not keys:
        return {}

    def states(dask_scheduler: Any) -> dict[Any, str]:
        tasks = dask_scheduler.tasks
        return {k: tasks[k].state for k in keys if k in tasks}

    got: dict[Any, str] = client.run_on_scheduler(states)
    return got


def _run_chunks(
    client: Any,
    task: _Task,
    start: jobs.JobStart,
    progress: jobs.Progress | None,
    retries: int,
    submitted: list[Any],
    observer: Observer = NULL_OBSERVER,
) -> jobs.JobReport:
    as_completed = _distributed().as_completed
    operation, source, destination = task.operation, task.source, task.destination
    entries = start.listing.entries
    removed = start.removed
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    report = jobs.JobReport(operation, source, destination, removed_temporaries=removed)  # type: ignore[arg-type]
    report.skipped_paths.extend(start.listing.skipped)
    report.notes.extend(start.notes)
    for r in start.listing.rejected:
        report.add(jobs.ObjectResult(r.path, "failed", 0, r.error_type, r.reason))
    if progress is not None:
        progress.start(operation, len(entries), sum(e.size for e in entries))
    t0 = time.perf_counter()
    # Chunks are submitted a few per worker at a time, so that with fail_fast the job stops
    # as a local one does: after the first failure no further chunk starts (those running
    # stop at their own first failure), and every submitted chunk is waited for.
    pending = iter(_chunks(entries, n_workers))

    def submit() -> Any | None:
        chunk = next(pending, None)
        if chunk is None:
            return None
        fut = client.submit(_run_chunk, task, chunk, retries=retries, pure=False)
        submitted.append(fut)
        return fut

    first = [f for f in (submit() for _ in range(2 * n_workers)) if f is not None]
    running = as_completed(first)
    stopping = False
    for fut in running:
        try:
            part = fut.result()
        except Exception:
            # a chunk that failed for good (its workers died more often than `retries`):
            # the others still write under the driver's lock, so they are waited for first
            _distributed().wait([f for f in submitted if not f.done()])
            raise
        for name in ("done", "skipped", "failed", "planned", "objects", "bytes"):
            setattr(report, name, getattr(report, name) + part[name])
        for f in part["failures"]:
            report.failures.append(jobs.ObjectResult(**f))
        report.planned_paths.extend(part["planned_paths"])
        if progress is not None:
            _advance(progress, part)
        _observe(observer, operation, part)
        stopping = stopping or (task.options.fail_fast and bool(part["failures"]))
        if not stopping:
            nxt = submit()
            if nxt is not None:
                running.add(nxt)
    report.seconds = time.perf_counter() - t0
    report.planned_paths.sort()
    return report


def _advance(progress: jobs.Progress, part: Mapping[str, Any]) -> None:
    """Tell `progress` a finished chunk's objects: its failures one by one, then its other
    objects, the first of which carries the bytes the chunk sealed or opened (a chunk
    reports only its total)."""
    for f in part["failures"]:
        progress.advance(jobs.ObjectResult(**f))
    for i in range(part["objects"] - len(part["failures"])):
        progress.advance(jobs.ObjectResult("", "done", part["bytes"] if i == 0 else 0))


def _observe(observer: Observer, operation: str, part: Mapping[str, Any]) -> None:
    """Tell `observer` a finished chunk's objects as a local job's would have: each object
    sealed or opened (its bytes, the chunk's total, on the first) and each failed one; the
    skipped and planned are not objects the engine ran, and rewrap opens no body."""
    direction: Direction
    if operation == "encrypt":
        direction = "encrypt"
    elif operation in ("decrypt", "verify"):
        direction = "decrypt"
    else:
        return
    for i in range(part["done"]):
        observer.object_started(direction)
        observer.object_finished(direction, part["bytes"] if i == 0 else 0, True)
    for _ in part["failures"]:
        observer.object_started(direction)
        observer.object_finished(direction, 0, False)


def _check_address(address: str, where: str) -> None:
    """A scheduler address Dask can parse (ConfigurationError, exit 2): a malformed one was
    a traceback and exit 1 from deep in the client (review)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except (ValueError, TypeError) as e:
        raise ConfigurationError(
            f"{where} {address!r} is not a Dask scheduler address (tcp://HOST:PORT): {e}"
        ) from None


def run_distributed(
    operation: str,
    source: str,
    destination: str | None,
    *,
    keys: KeySpec,
    to: KeySpec | None = None,
    options: jobs.LakeOptions = jobs.DEFAULT_LAKE_OPTIONS,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    progress: jobs.Progress | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    observer: Observer = NULL_OBSERVER,
) -> jobs.JobReport:
    """`run_on_dask` on the cluster at `scheduler`, else on a local cluster of `workers`
    worker processes (one thread each) started for this job, else on the cluster at
    $DASK_SCHEDULER_ADDRESS (asking for `workers` starts a local cluster even when it is set),
    else on a local cluster of Dask's default size."""
    if workers is not None and workers < 1:
        raise ConfigurationError(f"workers must be at least 1, not {workers}")
    dist = _distributed()
    Client, LocalCluster = dist.Client, dist.LocalCluster
    run = partial(
        run_on_dask,
        operation=operation,
        source=source,
        destination=destination,
        keys=keys,
        to=to,
        options=options,
        kms_context=kms_context,
        object_context=object_context,
        progress=progress,
        observer=observer,
    )
    address = scheduler or (None if workers else os.environ.get("DASK_SCHEDULER_ADDRESS"))
    if address:
        _check_address(address, "--scheduler" if scheduler else "DASK_SCHEDULER_ADDRESS")
        with Client(address) as client:
            return run(client)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",  # None still binds :8787 for its HTTP routes
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        return run(client)
