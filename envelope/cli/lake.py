"""`envelope lake encrypt|decrypt|verify|rewrap`: bulk jobs over whole prefixes.

Exit codes: 0 every object succeeded (or was already done), 1 some object failed (see the
summary and `--report`), 2 usage or configuration error, 3 a KMS failure before any object, or
a job in which nothing was done because the KMS refused or failed every object (for example
AccessDenied for the principal the job runs as: the fix is a permission, not a re-run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import sync
from ..errors import ConfigurationError, EnvelopeError
from ..keyring import Keyring
from ..kms.keyspec import KeySpec
from ..metrics import Observer
from ..objects import KeptPaths
from ..options import Options
from ..printable import printable
from ._common import (
    EXIT_KMS,
    add_engine_arguments,
    add_key_arguments,
    add_metrics_argument,
    announcing_a_new_store,
    key_spec,
    metrics_observer,
    parse_pairs,
    positive_int,
    safety_arguments,
)
from ._output import add_output_arguments, emit, output_requested

if TYPE_CHECKING:  # (pyarrow and the KMS service: loaded by a job, not by `--help`)
    from ..lake import jobs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lake = sub.add_parser("lake", help="bulk jobs over whole prefixes (local paths, s3://...)")
    ops = lake.add_subparsers(dest="lake_command", metavar="OPERATION", required=True)

    p = ops.add_parser("encrypt", help="encrypt every object under SRC into DST")
    p.add_argument("src", metavar="SRC", help="source prefix: a local folder or s3://BUCKET/PREFIX")
    p.add_argument("dst", metavar="DST", help="destination prefix (same forms; not inside SRC)")
    add_key_arguments(p, encrypt=True)
    _common(p, encrypt=True)
    p.set_defaults(handler=cmd_lake, operation="encrypt")

    p = ops.add_parser("decrypt", help="decrypt every object under SRC into DST")
    p.add_argument("src", metavar="SRC", help="source prefix: a local folder or s3://BUCKET/PREFIX")
    p.add_argument("dst", metavar="DST", help="destination prefix (same forms; not inside SRC)")
    add_key_arguments(p, encrypt=False)
    _common(p)
    p.set_defaults(handler=cmd_lake, operation="decrypt")

    p = ops.add_parser("verify", help="authenticate every object under PREFIX; write nothing")
    p.add_argument("src", metavar="PREFIX", help="a local folder or s3://BUCKET/PREFIX")
    add_key_arguments(p, encrypt=False)
    _common(p)
    p.set_defaults(handler=cmd_lake, operation="verify", dst=None)

    p = ops.add_parser("rewrap", help="move every object under PREFIX to another KMS key")
    p.add_argument("src", metavar="PREFIX", help="a local folder or s3://BUCKET/PREFIX")
    p.add_argument("--to-key", required=True, metavar="URI", help="the new key (as --key)")
    add_key_arguments(p, encrypt=False)
    _common(p)
    p.set_defaults(handler=cmd_lake, operation="rewrap", dst=None)


def _common(p: argparse.ArgumentParser, *, encrypt: bool = False) -> None:
    add_output_arguments(p)  # the summary as data with --json/--output/--query
    p.set_defaults(
        settings=("key", "home", "region", "principal", "output", "cache", "retry", "fsync")
    )
    p.add_argument("--report", metavar="FILE", help="write the full JSON report to FILE")
    p.add_argument("--dry-run", action="store_true", help="list what would be done; do nothing")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed object")
    p.add_argument("--no-resume", action="store_true", help="redo objects already done")
    p.add_argument(
        "--no-bind-path",
        action="store_true",
        help="do not bind/require each object's relative path in its context",
    )
    p.add_argument(
        "--fsync",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fsync every output (local disks); default $ENVELOPE_FSYNC or the profile's "
        "fsync, else off",
    )
    safety_arguments(p)
    p.add_argument(
        "--concurrency", type=positive_int, default=16, help="objects in flight (default 16)"
    )
    add_engine_arguments(p, encrypt=encrypt)
    if encrypt:
        p.add_argument(
            "--context",
            metavar="KEY=VALUE",
            action="append",
            help="per-object context pair, bound in every header (may repeat)",
        )
    else:  # the name `envelope decrypt` uses, and the lake's own
        p.add_argument(
            "--expect-context",
            "--context",
            dest="context",
            metavar="KEY=VALUE",
            action="append",
            help="a pair every object's context must hold (may repeat)",
        )
    p.add_argument(
        "--kms-context",
        metavar="KEY=VALUE",
        action="append",
        help="KMS-level context pair, sent with every key call (may repeat)"
        if encrypt
        else "a pair every object's KMS context must hold (may repeat)",
    )
    p.add_argument("--no-progress", action="store_true", help="never show a progress display")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing Dask cluster (or set DASK_SCHEDULER_ADDRESS)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="start a local Dask cluster of N worker processes (even if DASK_SCHEDULER_ADDRESS "
        "is set)",
    )
    add_metrics_argument(p)


def _safety_options(args: argparse.Namespace) -> dict[str, bool]:
    """The link and lock options (folder mode of `encrypt`/`decrypt` may lack them)."""
    return {
        "follow_symlinks": bool(getattr(args, "follow_symlinks", False)),
        "allow_outside": bool(getattr(args, "allow_outside", False)),
        "break_lock": bool(getattr(args, "break_lock", False)),
    }


class _RichProgress:
    """Objects, bytes, throughput, ETA and failures on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        # (the task counts objects; rich's TransferSpeedColumn would show objects/s as bytes/s)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("objects"),
            TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: Any = None
        self._failed = 0
        self._bytes = 0
        self._t0 = 0.0

    def start(self, operation: str, objects: int, total_bytes: int) -> None:
        self._progress.start()
        self._t0 = time.perf_counter()
        self._task = self._progress.add_task(operation, total=objects, failed=0, speed="")

    def advance(self, result: jobs.ObjectResult) -> None:
        if result.status == "failed":
            self._failed += 1
        elif result.status == "done":
            self._bytes += result.bytes
        rate = self._bytes / max(time.perf_counter() - self._t0, 1e-6)
        self._progress.update(
            self._task, advance=1, failed=self._failed, speed=f"{rate / 1e6:.1f} MB/s"
        )

    def stop(self) -> None:
        self._progress.stop()


@contextmanager
def _progress(args: argparse.Namespace) -> Iterator[Any]:
    if args.no_progress or args.json or not sys.stderr.isatty():
        yield None
        return
    p = _RichProgress()
    try:
        yield p
    finally:
        p.stop()


def _not_stdout(dst: str | None) -> None:
    """`-` means stdout to every command; a job writes many objects, so it is refused rather
    than taken as a folder called `-`."""
    if dst == "-":
        raise ConfigurationError(
            "a job over a folder or prefix writes many objects and cannot write to stdout; "
            "give a destination folder (./- for one called '-')"
        )


def cmd_lake(args: argparse.Namespace) -> int:
    try:
        return _lake(args)
    except BaseException as e:
        if args.report and not getattr(args, "report_written", False) and _replaceable(args.report):
            # a setting refused before the job began (--context, --kms-context, the key): the
            # report of an earlier run was left there, read as this one's (review)
            _failed_report(args.operation, args, e)
        raise


def _regular_or_missing(path: str) -> bool:
    import stat

    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _replaceable(path: str) -> bool:
    """Whether a refused command may write its failure over `path`: nothing is there, or an
    earlier report is (before the keys are known, a file that is neither may be one of them,
    as a report over the root key would destroy it)."""
    import json

    if not _regular_or_missing(path):
        return False  # (a FIFO would block this read, a device is no report)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"operation", "ok"} <= doc.keys()


def _lake(args: argparse.Namespace) -> int:
    from ..lake import jobs

    _not_stdout(args.dst)
    options = jobs.LakeOptions(
        concurrency=args.concurrency,
        dry_run=args.dry_run,
        fail_fast=args.fail_fast,
        resume=not args.no_resume,
        bind_path=not args.no_bind_path,
        durable=bool(args.fsync),
        engine=Options(
            workers=2,
            depth=4,
            segment_size=getattr(args, "segment_size", 1 << 20),  # rewrap keeps the source's
            memory_budget=args.memory_budget,
        ),
        **_safety_options(args),
    )
    octx = parse_pairs(args.context, "--context")
    kctx = parse_pairs(args.kms_context, "--kms-context")
    op = args.operation
    keys = key_spec(args, "encrypt" if op == "encrypt" else "decrypt", bulk=True)
    to_keys = key_spec(args, "encrypt", target=True, bulk=True) if op == "rewrap" else None
    with (
        announcing_a_new_store(keys, to_keys),
        metrics_observer(args) as observer,
        _progress(args) as progress,
    ):
        keyring = keys.keyring(observer)
        to: Keyring | None = None
        if to_keys is not None:
            to = to_keys.keyring(observer)
        scheduler = getattr(args, "scheduler", None)
        if not scheduler and not args.workers:  # the variable, as --scheduler (lake.md)
            scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        t0 = time.perf_counter()
        report_checked = False  # (a refused --report path is never written, not even to fail)
        try:
            if args.report:  # an output too: never over the keys (checked before the job)
                KeptPaths([k for k in (keyring, to) if k is not None]).check(args.report)
                report_checked = True
                # first a report that says it is not finished: a run killed outright (SIGKILL,
                # the OOM killer) writes nothing more, and the last run's `"ok": true` was
                # left there, read as this one's (review). Not into a FIFO or a device, which
                # would get two reports.
                if _regular_or_missing(args.report):
                    _error_report(op, args, UNFINISHED)
            if scheduler or args.workers:
                from ..lake.distributed import run_distributed

                report = run_distributed(
                    op,
                    args.src,
                    args.dst,
                    keys=keys,
                    to=to_keys,
                    options=options,
                    kms_context=kctx,
                    object_context=octx,
                    progress=progress,
                    scheduler=scheduler,
                    workers=args.workers,
                    observer=observer,
                )
            else:
                report = sync.run(
                    partial(
                        jobs.run_job,
                        op,
                        args.src,
                        args.dst,
                        keyring=keyring,
                        to=to,
                        kms_context=kctx,
                        object_context=octx,
                        options=options,
                        progress=progress,
                        observer=observer,
                    )
                )
        except BaseException as e:
            args.report_written = True  # (whatever happens here: not again by `cmd_lake`)
            if report_checked:
                # (a report over a key file or the root key, refused above, destroyed the
                # keys it was refused to protect: diff review)
                _failed_report(op, args, e)
            raise
        finally:
            sync.run(keyring.aclose)
            if to is not None:
                sync.run(to.aclose)
        report.seconds = report.seconds or time.perf_counter() - t0
    if args.report:
        args.report_written = True
        report.write(args.report)
    _print_summary(report, args)
    return _exit_code(report)


#: The error a --report holds while its run has not finished (or was killed outright).
UNFINISHED = "the run writing this report has not finished: still running, or killed"


def _failed_report(op: str, args: argparse.Namespace, e: BaseException) -> None:
    """The --report of a job that did not run or finish: its error in place of counts (an
    older run's report left there read as this run's; review). Best effort: the job's own
    error is what the command reports."""
    why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
    _error_report(op, args, why)


def _error_report(op: str, args: argparse.Namespace, why: str) -> None:
    """Write the --report of a run that has no counts to give: `why` as its error."""
    from ..lake import jobs

    try:
        jobs.JobReport(op, args.src, args.dst, error=why).write(args.report)  # type: ignore[arg-type]
    except (OSError, EnvelopeError):
        pass


def run_folder(operation: str, args: argparse.Namespace, keys: KeySpec, observer: Observer) -> int:
    """`envelope encrypt DIR OUT` / `decrypt DIR OUT`: the lake job over a local folder."""
    from ..lake import jobs

    _not_stdout(args.output)
    options = jobs.LakeOptions(
        engine=Options(
            segment_size=getattr(args, "segment_size", 1 << 20),
            memory_budget=args.memory_budget,
        ),
        durable=bool(getattr(args, "fsync", False)),
        **_safety_options(args),
    )
    bulk = keys.bulk().keyring(observer)
    try:
        report = sync.run(
            partial(
                jobs.run_job,
                operation,
                args.input,
                args.output,
                keyring=bulk,
                kms_context=parse_pairs(getattr(args, "kms_context", None), "--kms-context"),
                object_context=parse_pairs(
                    args.context if operation == "encrypt" else args.expect_context, "--context"
                ),
                options=options,
                observer=observer,
            )
        )
    finally:
        sync.run(bulk.aclose)
    _print_summary(report, args, quiet=True)
    return _exit_code(report)


def _exit_code(report: jobs.JobReport) -> int:
    """0 all done; 3 when nothing was done and every failure was the KMS's (a refusal such as
    AccessDenied, or an unavailable KMS); else 1."""
    if report.ok:
        return 0
    from ..errors import KmsError

    kms_errors: set[str] = set()
    todo: list[type[BaseException]] = [KmsError]
    while todo:
        cls = todo.pop()
        kms_errors.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    if (
        report.done == 0
        and report.failures
        and all(f.error_type in kms_errors for f in report.failures)
    ):
        return EXIT_KMS
    return 1


def _print_summary(r: jobs.JobReport, args: argparse.Namespace, *, quiet: bool = False) -> None:
    """The report as data when the command line asked for output (--json, --output,
    --query), else a few lines for a person. `quiet` (the folder mode of `encrypt` and
    `decrypt`, which print nothing when all goes well): only what went wrong or was left
    alone, on stderr."""
    if output_requested(args):
        emit(args, r.to_dict(), "Lake" + r.operation.capitalize())
        return
    out = sys.stderr if quiet else sys.stdout
    if not quiet:
        rate = f"{r.bytes / r.seconds / 1e6:.1f} MB/s" if r.seconds and r.bytes else "-"
        print(
            f"{r.operation}: {r.objects} objects: {r.done} done, {r.skipped} already done, "
            f"{r.failed} failed"
            + (f", {r.planned} planned (dry run)" if r.planned else "")
            + (f", {len(r.skipped_paths)} paths skipped" if r.skipped_paths else "")
        )
        print(f"{r.bytes} bytes in {r.seconds:.2f} s ({rate})")
        if r.removed_temporaries:
            print(f"removed {r.removed_temporaries} temporary files left by an earlier run")
    elif r.skipped:  # (the folder mode said nothing: a re-run looked as if it did nothing)
        print(
            f"note: {r.skipped} object{'s' if r.skipped > 1 else ''} already done in the "
            "destination (current for their source, contexts and key) left as they are; "
            f"remove them, or run `envelope lake {r.operation} --no-resume`, to do them again",
            file=out,
        )
    # object names and error texts are anyone's text (a shared bucket, a header): shown
    # escaped, as --output text shows them, so none can forge a line or command a terminal
    for note in r.notes:
        print(f"note: {printable(note)}", file=out)
    for s in r.skipped_paths[:50]:
        print(f"SKIPPED {printable(s.path)}: {printable(s.reason)}", file=out)
    if len(r.skipped_paths) > 50:
        print(f"... and {len(r.skipped_paths) - 50} more skipped (see --report)", file=out)
    for path in r.planned_paths:  # a dry run: the whole plan, one path a line
        print(f"PLANNED {printable(path)}", file=out)
    for f in r.failures[:50]:
        print(f"FAILED {printable(f.path)}: {f.error_type}: {printable(f.error or '')}", file=out)
    if len(r.failures) > 50:
        print(f"... and {len(r.failures) - 50} more (see --report)", file=out)
