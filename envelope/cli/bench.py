"""`envelope bench machine|encrypt|peers|kms|lake`: throughput, peers and KMS cost, measured here.

Every subcommand prints rich tables on a terminal and data elsewhere or when asked (`--output
json|text`, `--json`, `--query`: docs/cli.md; keys: docs/bench.md),
`--markdown FILE` for a report to paste into an issue and `--plot FILE.png` (matplotlib, the
`bench` extra). Sizes and rounds are flags, so a run can take a second or an hour. Ctrl-C
stops a run cleanly: temporary files are removed and child processes are killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ConfigurationError
from ._common import byte_size, positive_int
from ._output import add_output_arguments, emit, resolve_format

__all__ = ("register",)

#: The peers' names (envelope.bench.peers.PEERS), here so that the parser needs no import.
_PEER_NAMES = (
    "envelope",
    "envelope-fsync",
    "tink",
    "aws-encryption-sdk-best",
    "aws-encryption-sdk-default",
    "age",
    "openssl",
    "cp",
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


#: The smallest data a throughput figure is measured over: below it a run lasts microseconds,
#: so a ratio is timer resolution and start-up (`--size 1` printed ratios of 0.005 and 26).
MIN_MEASURED = 1 << 20


def _measured_size(text: str) -> int:
    """A `--size` or `--file-size` for a throughput figure: a byte size of at least 1M."""
    size = byte_size(text)
    if size < MIN_MEASURED:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too small to time: at least 1M (the defaults give figures worth "
            "comparing)"
        )
    return size


def _int_list(text: str) -> list[int]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items or not all(x.isdigit() and int(x) > 0 for x in items):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of positive whole numbers")
    return sorted({int(x) for x in items})


def _cost_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--price",
        type=_positive_float,
        default=0.03,
        metavar="USD",
        help="price per 10,000 requests (AWS list price 0.03)",
    )
    p.add_argument(
        "--quota",
        type=_positive_float,
        default=5500.0,
        metavar="PER_S",
        help="request quota per second (AWS shared quota starts at 5500)",
    )
    p.add_argument(
        "--cache-max-objects",
        type=positive_int,
        default=None,
        help="cache policy: objects per key",
    )
    p.add_argument(
        "--cache-ttl", type=_positive_float, default=None, help="cache policy: seconds per key"
    )


def _policy(args: argparse.Namespace) -> Any:
    from ..keycache import CachePolicy

    changes: dict[str, Any] = {}
    if args.cache_max_objects is not None:
        changes["max_objects"] = args.cache_max_objects
    if args.cache_ttl is not None:
        changes["ttl"] = changes["decrypt_ttl"] = args.cache_ttl
    return CachePolicy(**changes)


def _common(p: argparse.ArgumentParser, *, rounds: bool = True, scratch: bool = True) -> None:
    """The output options, and `--rounds` / `--dir` for the benchmarks that use them (an
    option a benchmark would ignore is not offered)."""
    add_output_arguments(p)  # --output json|text|table, --query, --json (docs/cli.md)
    # the output format from $ENVELOPE_OUTPUT or the profile when --output is not given, as
    # every other command that prints data (both were ignored here; review)
    p.set_defaults(settings=("output",))
    g = p.add_argument_group("reports")
    g.add_argument("--markdown", metavar="FILE", help="write a Markdown report to FILE")
    g.add_argument("--plot", metavar="FILE.png", help="draw the result (needs the bench extra)")
    if rounds:
        p.add_argument(
            "--rounds", type=positive_int, default=3, help="interleaved rounds; best kept (3)"
        )
    if scratch:
        p.add_argument("--dir", metavar="DIR", help="scratch folder (default: the system temp)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="measure throughput, peers, KMS cost, lake estimates")
    ops = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    p = ops.add_parser("machine", help="this machine's limits: AES-GCM, memory, file copies")
    p.add_argument("--size", type=_measured_size, default=256 << 20, help="data size (256M)")
    _common(p)
    p.set_defaults(handler=cmd_machine)

    p = ops.add_parser("encrypt", help="envelope's throughput as ratios to this machine's limits")
    p.add_argument(
        "--size", type=_measured_size, default=256 << 20, help="in-memory data size (256M)"
    )
    p.add_argument(
        "--file-size", type=_measured_size, default=None, help="file size (default --size)"
    )
    p.add_argument(
        "--max-object", type=byte_size, default=4 << 20, help="largest small object (4M; up to 1G)"
    )
    _common(p)
    p.set_defaults(handler=cmd_encrypt)

    p = ops.add_parser(
        "peers", help="envelope beside Tink, the AWS Encryption SDK, age, openssl, cp"
    )
    p.add_argument("--size", type=_measured_size, default=512 << 20, help="file size (512M)")
    p.add_argument(
        "--peers",
        metavar="NAME,...",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=None,
        help="only these (default: all): " + ", ".join(_PEER_NAMES),
    )
    _common(p)
    p.set_defaults(handler=cmd_peers)

    p = ops.add_parser("kms", help="KMS latency, throughput and the cost the data-key cache saves")
    p.add_argument("--key", required=True, metavar="URI", help="the key (any key URI)")
    p.add_argument("--home", metavar="DIR", help="the embedded KMS's home ($ENVELOPE_HOME)")
    p.add_argument("--kms-endpoint", metavar="URL", help="an AWS KMS compatible endpoint")
    p.add_argument(
        "--concurrency",
        type=_int_list,
        default=[1, 4, 16],
        metavar="N,...",
        help="concurrent callers, one step each (1,4,16)",
    )
    p.add_argument(
        "--seconds", type=_positive_float, default=2.0, help="per operation and step (2)"
    )
    p.add_argument(
        "--objects", type=positive_int, default=10_000, help="objects in the job (10000)"
    )
    p.add_argument("--object-size", type=byte_size, default=1024, help="bytes per object (1K)")
    p.add_argument(
        "--job-concurrency", type=positive_int, default=16, help="objects in flight (16)"
    )
    _cost_arguments(p)
    p.add_argument(
        "--inject-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="add this many ms to every call (what a remote KMS would cost)",
    )
    _common(p, rounds=False, scratch=False)  # steps of --seconds each; nothing written
    p.set_defaults(handler=cmd_kms)

    p = ops.add_parser("lake", help="estimate a lake encrypt job (duration, KMS calls, cost)")
    p.add_argument("src", metavar="SRC", help="the prefix the job would encrypt")
    p.add_argument("--key", metavar="URI", help="time the sample against this key (optional)")
    p.add_argument("--home", metavar="DIR", help="the embedded KMS's home ($ENVELOPE_HOME)")
    p.add_argument("--kms-endpoint", metavar="URL", help="an AWS KMS compatible endpoint")
    p.add_argument("--sample", type=positive_int, default=200, help="small objects to time (200)")
    p.add_argument(
        "--sample-bytes", type=byte_size, default=256 << 20, help="large objects to time (256M)"
    )
    p.add_argument(
        "--concurrency", type=positive_int, default=16, help="the job's objects in flight (16)"
    )
    p.add_argument("--no-cache", action="store_true", help="the job runs without the cache")
    p.add_argument(
        "--to-nowhere",
        action="store_true",
        help="encrypt the sample and discard its output (no scratch writes: read+encrypt alone)",
    )
    _cost_arguments(p)
    _common(p, rounds=False)  # one timed sample: the estimate
    p.set_defaults(handler=cmd_lake)


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress line on stderr when it is a terminal: rounds done of each group."""
    if not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rounds]}"),  # (empty until a total is known: "0/None")
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=None, rounds="")

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, rounds=f"{done}/{total} rounds")

        yield update


def _finish(args: argparse.Namespace, title: str, result: dict[str, Any], kind: str) -> int:
    """The JSON or the tables first (a plot or a Markdown file that cannot be written then
    loses no measurement), then the plot and the Markdown."""
    from ..bench import report

    # The command line's output rules (docs/cli.md): the tables for a person on a terminal,
    # the data (as docs/bench.md names it) in json or text everywhere else or when asked
    if resolve_format(args) == "table" and getattr(args, "query", None) is None:
        report.print_table(title, result)
    else:
        emit(args, report.cleaned(result), title)
    plot = getattr(args, "plot", None)
    if plot:
        from ..bench import plot as plotting

        plotting.draw(kind, result, plot)
    if args.markdown:
        rel = (
            os.path.relpath(plot, os.path.dirname(os.path.abspath(args.markdown))) if plot else None
        )
        with open(args.markdown, "w") as f:
            f.write(report.to_markdown(title, result, plot=rel))
    return 0


#: What `--plot` can write (matplotlib's formats that need nothing more).
_PLOT_FORMATS = (".png", ".svg", ".pdf")


def _check_plot(args: argparse.Namespace) -> None:
    """Refuse before measuring anything (minutes, at the defaults) what would fail once the
    figures are in: `--plot` without matplotlib or in a format it cannot write, an output
    file in a folder that does not exist, a `--dir` that is not a folder."""
    plot = getattr(args, "plot", None)
    if plot:
        from ..bench.plot import require_matplotlib

        require_matplotlib()
        if os.path.splitext(plot)[1].lower() not in _PLOT_FORMATS:
            raise ConfigurationError(f"--plot {plot!r}: name a {', '.join(_PLOT_FORMATS)} file")
    outputs = [(f, p) for f, p in (("--plot", plot), ("--markdown", args.markdown)) if p]
    for flag, path in outputs:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ConfigurationError(f"{flag} {path!r}: no folder {folder!r}")
    if outputs:  # never over the embedded KMS's files or the key file (as every writer)
        from ..kms.local import home_paths
        from ..objects import KeptPaths

        key = getattr(args, "key", None) or ""
        kept = KeptPaths.of(
            [
                *home_paths(getattr(args, "home", None)),
                *([key[5:]] if key.startswith("file:") else []),
            ]
        )
        for _, path in outputs:
            kept.check(path)
    scratch = getattr(args, "dir", None)
    if scratch is not None and not os.path.isdir(scratch):
        raise ConfigurationError(f"--dir {scratch!r} is not a folder")


def cmd_machine(args: argparse.Namespace) -> int:
    from ..bench import machine

    _check_plot(args)
    with _progress("machine") as progress:
        result = machine.measure(
            size=args.size, rounds=args.rounds, directory=args.dir, progress=progress
        )
    return _finish(args, "envelope bench machine", result, "machine")


def cmd_encrypt(args: argparse.Namespace) -> int:
    from ..bench import encrypt

    if not 1 << 10 <= args.max_object <= 1 << 30:  # below 1K no object size is measured
        raise ConfigurationError("--max-object is 1K to 1G")
    _check_plot(args)
    with _progress("encrypt") as progress:
        result = encrypt.measure(
            size=args.size,
            file_size=args.file_size,
            max_object=args.max_object,
            rounds=args.rounds,
            directory=args.dir,
            progress=progress,
        )
    return _finish(args, "envelope bench encrypt", result, "encrypt")


def cmd_peers(args: argparse.Namespace) -> int:
    from ..bench import peers

    if args.peers is not None and not args.peers:
        raise ConfigurationError(f"--peers names no peer; known: {', '.join(_PEER_NAMES)}")
    unknown = sorted(set(args.peers or ()) - set(_PEER_NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown peer {', '.join(unknown)}; known: {', '.join(_PEER_NAMES)}"
        )
    _check_plot(args)
    with _progress("peers") as progress:
        result = peers.measure(
            size=args.size,
            rounds=args.rounds,
            directory=args.dir,
            only=args.peers,
            progress=progress,
        )
    return _finish(args, "envelope bench peers", result, "peers")


def cmd_kms(args: argparse.Namespace) -> int:
    from .. import sync
    from ..bench import kms
    from ..kms.uri import open_backend

    if not 0 <= args.inject_latency <= 60_000:  # NaN too (it added nothing), inf hung
        raise ConfigurationError("--inject-latency is 0 to 60000 milliseconds")
    _check_plot(args)
    policy = _policy(args)
    backend, key_id = open_backend(args.key, home=args.home, kms_endpoint=args.kms_endpoint)

    async def run() -> dict[str, Any]:
        measured: Any = backend
        if args.inject_latency:
            from ..kms.faults import FaultyKms

            measured = FaultyKms(
                backend, latency=args.inject_latency / 1e3, sleep=kms.precise_sleep
            )
        try:
            with _progress("kms") as progress:
                return await kms.measure(
                    measured,
                    key_id,
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    objects=args.objects,
                    object_size=args.object_size,
                    job_concurrency=args.job_concurrency,
                    policy=policy,
                    price_per_10k=args.price,
                    quota_per_s=args.quota,
                    progress=progress,
                )
        finally:
            await backend.aclose()

    result = sync.run(run)
    result["inject_latency_ms"] = args.inject_latency
    return _finish(args, "envelope bench kms", result, "kms")


def cmd_lake(args: argparse.Namespace) -> int:
    from .. import sync
    from ..bench import lake
    from ..lake import jobs

    _check_plot(args)
    from ..keycache import CachePolicy

    # off is said explicitly: None is the estimate's "the lake jobs' default cache"
    policy = CachePolicy(enabled=False) if args.no_cache else _policy(args)
    options = jobs.LakeOptions(concurrency=args.concurrency)

    async def run() -> dict[str, Any]:
        backend, key_id = None, None
        if args.key:
            from ..kms.uri import open_backend

            backend, key_id = open_backend(args.key, home=args.home, kms_endpoint=args.kms_endpoint)
        try:
            with _progress("lake") as progress:
                return await lake.estimate(
                    args.src,
                    backend=backend,
                    key_id=key_id,
                    policy=policy,
                    options=options,
                    sample=args.sample,
                    sample_bytes=args.sample_bytes,
                    scratch=args.dir,
                    to_nowhere=args.to_nowhere,
                    price_per_10k=args.price,
                    quota_per_s=args.quota,
                    progress=progress,
                )
        finally:
            if backend is not None:
                await backend.aclose()

    result = sync.run(run)
    return _finish(args, "envelope bench lake", result, "lake")
