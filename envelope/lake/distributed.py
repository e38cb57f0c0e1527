"""Scale-out on Dask: the objects of one job spread over a cluster's workers.

The driver lists the prefix and removes temporaries once, cuts the objects into chunks and
submits one task per chunk. Each worker process builds its keyring from a picklable `KeySpec`
once and keeps it (its own data-key cache and KMS client) for every chunk it runs; each chunk
is the ordinary single-machine job over that chunk's entries, so results, per-object failure
reporting and the resume rule are the same as on one machine. Dask retries a task whose worker
died; re-running a chunk is safe because finished objects are skipped.

The KMS must be reachable from every worker: the embedded store on a shared path works (it is
safe for several processes), and so will the KMS server.
"""

from __future__ import annotations

import argparse
import importlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..errors import ConfigurationError
from ..keycache import CachePolicy
from ..keyring import Keyring
from ..kms.base import KmsBackend
from ..kms.filekey import FileKeyBackend
from ..kms.retry import RetryPolicy
from ..kms.uri import open_backend, open_local_backend
from . import jobs
from .fs import resolve

__all__ = ("KeySpec", "run_distributed", "run_on_dask")


@dataclass(frozen=True, slots=True)
class KeySpec:
    """How to build a keyring anywhere: key URIs and files, no key material (picklable)."""

    key: str | None = None
    key_files: tuple[str, ...] = ()
    home: str | None = None
    to_key: str | None = None

    def _backends(self) -> list[KmsBackend]:
        backends: list[KmsBackend] = [FileKeyBackend(p) for p in self.key_files]
        if not any(b.provider_id == "local" for b in backends):
            try:
                backends.append(open_local_backend(self.home, must_exist=bool(backends)))
            except ConfigurationError:
                if not backends:
                    raise
        return backends

    def encrypt_keyring(self) -> Keyring:
        if self.key_files:
            b = FileKeyBackend(self.key_files[0])
            return _bulk(Keyring(b, b.key_id))
        backend, key_id = open_backend(self.key or "local:alias/aws/envelope", home=self.home)
        return _bulk(Keyring(backend, key_id))

    def decrypt_keyring(self) -> Keyring:
        backends = self._backends()
        if self.key:
            backends.append(open_backend(self.key, home=self.home)[0])
        return _bulk(Keyring(decrypt_with=backends))

    def target_keyring(self) -> Keyring:
        if not self.to_key:
            raise ConfigurationError("rewrap needs a target key")
        backend, key_id = open_backend(self.to_key, home=self.home)
        return _bulk(Keyring(backend, key_id))


def _bulk(k: Keyring) -> Keyring:
    return Keyring(
        k.backend,
        k.key_id,
        decrypt_with=[b for b in k.backends if b is not k.backend],
        cache=CachePolicy(),
        retry=RetryPolicy.bulk(),
    )


@dataclass(frozen=True, slots=True)
class _Task:
    operation: str
    source: str
    destination: str | None
    keys: KeySpec
    options: jobs.LakeOptions
    kms_context: Mapping[str, str] = field(default_factory=dict)
    object_context: Mapping[str, str] = field(default_factory=dict)


# One set of keyrings per worker process and job kind, reused by every chunk it runs.
_WORKER_KEYRINGS: dict[tuple[KeySpec, str], tuple[Keyring, Keyring | None]] = {}
_WORKER_LOCK = threading.Lock()


def _keyrings(spec: KeySpec, operation: str) -> tuple[Keyring, Keyring | None]:
    with _WORKER_LOCK:
        got = _WORKER_KEYRINGS.get((spec, operation))
        if got is None:
            keyring = spec.encrypt_keyring() if operation == "encrypt" else spec.decrypt_keyring()
            to = spec.target_keyring() if operation == "rewrap" else None
            got = _WORKER_KEYRINGS[(spec, operation)] = (keyring, to)
        return got


def _run_chunk(task: _Task, entries: Sequence[jobs.Entry]) -> dict[str, Any]:
    """Runs on a Dask worker: the single-machine job over one chunk of entries."""
    keyring, to = _keyrings(task.keys, task.operation)
    options = task.options

    async def go() -> jobs.JobReport:
        return await jobs.run_job(
            task.operation,
            task.source,
            task.destination,
            keyring=keyring,
            to=to,
            kms_context=task.kms_context,
            object_context=task.object_context,
            options=options,
            entries=entries,
        )

    return anyio.run(go).to_dict()


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


def run_on_dask(
    client: Any,
    operation: str,
    source: str,
    destination: str | None,
    *,
    keys: KeySpec,
    options: jobs.LakeOptions = jobs.DEFAULT_LAKE_OPTIONS,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    progress: jobs.Progress | None = None,
    retries: int = 2,
) -> jobs.JobReport:
    """Run one lake job over a Dask cluster (`client` is a distributed.Client).

    The driver checks, lists, locks the destination and cleans, once, and holds the lock
    until every chunk has finished (chunks take none)."""
    task = _Task(
        operation,
        source,
        destination,
        keys,
        options,
        dict(kms_context or {}),
        dict(object_context or {}),
    )
    dst = resolve(destination) if operation in ("encrypt", "decrypt") and destination else None
    start = jobs.begin_job(operation, resolve(source), dst, options)
    try:
        return _run_chunks(client, task, start, progress, retries)
    finally:
        start.release()


def _run_chunks(
    client: Any,
    task: _Task,
    start: jobs.JobStart,
    progress: jobs.Progress | None,
    retries: int,
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
    futures = [
        client.submit(_run_chunk, task, chunk, retries=retries, pure=False)
        for chunk in _chunks(entries, n_workers)
    ]
    for fut in as_completed(futures):
        part = fut.result()
        for name in ("done", "skipped", "failed", "planned", "objects", "bytes"):
            setattr(report, name, getattr(report, name) + part[name])
        for f in part["failures"]:
            report.failures.append(jobs.ObjectResult(**f))
        if progress is not None:
            for f in part["failures"]:
                progress.advance(jobs.ObjectResult(**f))
            for _ in range(part["objects"] - len(part["failures"])):
                progress.advance(jobs.ObjectResult("", "done"))
    report.seconds = time.perf_counter() - t0
    return report


def run_distributed(
    operation: str,
    args: argparse.Namespace,
    options: jobs.LakeOptions,
    *,
    kms_context: Mapping[str, str],
    object_context: Mapping[str, str],
    progress: jobs.Progress | None,
) -> jobs.JobReport:
    """CLI entry: attach to --scheduler / $DASK_SCHEDULER_ADDRESS or start --workers N."""
    dist = _distributed()
    Client, LocalCluster = dist.Client, dist.LocalCluster
    keys = KeySpec(
        key=args.key,
        key_files=tuple(args.key_file or ()),
        home=os.path.abspath(args.home) if args.home else os.environ.get("ENVELOPE_HOME"),
        to_key=getattr(args, "to_key", None),
    )
    address = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with Client(address) as client:
            return run_on_dask(
                client,
                operation,
                args.src,
                args.dst,
                keys=keys,
                options=options,
                kms_context=kms_context,
                object_context=object_context,
                progress=progress,
            )
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        return run_on_dask(
            client,
            operation,
            args.src,
            args.dst,
            keys=keys,
            options=options,
            kms_context=kms_context,
            object_context=object_context,
            progress=progress,
        )
