"""Helpers shared by the CLI commands: output, exit codes, progress bars, key arguments."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ConfigurationError
from ..kms.keyspec import DEFAULT_KEY, KeySpec, Purpose
from ..kms.uri import is_aws_key
from ..metrics import NULL_OBSERVER, Observer

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_KMS = 3
EXIT_CONTEXT = 4
EXIT_IO = 5

#: Inputs at least this large get a progress bar on a terminal.
PROGRESS_MIN_BYTES = 8 << 20


def err(message: str) -> None:
    print(f"envelope: {message}", file=sys.stderr)


@contextlib.contextmanager
def envelope_warnings() -> Iterator[None]:
    """Show this package's own warnings (an exposed root-key file, ...) as one
    ``envelope: warning: ...`` line, like every other message of the command line, whichever
    command raised them; a warning from elsewhere keeps Python's form (its file and line help
    whoever reports it)."""
    import warnings

    shown = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if category.__module__.startswith("envelope."):
            err(f"warning: {message}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def print_json(obj: Any) -> None:
    """`obj` as the printer's JSON (`--output json`): one JSON style for every command."""
    from ._output import format_data, jsonable

    sys.stdout.write(format_data(jsonable(obj), "json") or "{}\n")
    sys.stdout.flush()


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """KEY=VALUE arguments into a dict; a key given twice with different values is refused
    (one of them would be dropped without a word)."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"{what} must be KEY=VALUE, got {item!r}")
        if out.get(key, value) != value:
            raise ConfigurationError(f"{what} gives {key!r} twice: {out[key]!r} and {value!r}")
        out[key] = value
    return out


@contextlib.contextmanager
def progress_bar(
    label: str, total: int | None, *, enabled: bool
) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal and the input is large."""
    if not enabled or not sys.stderr.isatty() or (total is not None and total < PROGRESS_MIN_BYTES):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)

        yield advance


def positive_int(text: str) -> int:
    """A whole number of at least 1 (counts, rounds, sizes in MiB)."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def byte_size(text: str) -> int:
    """A positive number of bytes from `1048576`, `64K`, `256M`, `1G` (binary units; `KiB` and
    `MB` spellings too): the one parser of every size flag."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    if not digits.isdigit() or int(digits) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or a number with K/M/G)")
    return int(digits) * mult


def add_engine_arguments(p: argparse.ArgumentParser, *, encrypt: bool) -> None:
    """`--memory-budget` (and, to encrypt, `--segment-size`): the same flags for one file, a
    folder and a lake job."""
    from ..options import DEFAULT_MEMORY_BUDGET

    p.add_argument(
        "--memory-budget",
        type=byte_size,
        default=DEFAULT_MEMORY_BUDGET,
        metavar="SIZE",
        help="most memory the buffers may hold, in bytes or with a K/M/G suffix "
        "(default 256M, at least 4M); a segment size it cannot hold is refused",
    )
    if encrypt:
        p.add_argument(
            "--segment-size",
            type=byte_size,
            default=1 << 20,
            metavar="SIZE",
            help="plaintext bytes per segment, a power of two from 4K to 64M (default 1M)",
        )


def port_number(text: str) -> int:
    """A TCP port to listen on, 1-65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def add_metrics_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics while running",
    )


@contextlib.contextmanager
def metrics_observer(args: argparse.Namespace) -> Iterator[Observer]:
    """A Prometheus observer with its /metrics endpoint, or the null observer."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        yield NULL_OBSERVER
        return
    from ..prometheus import PrometheusObserver, serve_metrics

    observer = PrometheusObserver()
    try:
        server = serve_metrics(port, registry=observer.registry)
    except OSError as e:  # taken, or not ours to bind: said before any work starts
        raise ConfigurationError(
            f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}: {e.strerror or e}"
        ) from None
    with server:
        yield observer


def input_size(path: str) -> int | None:
    if path == "-":
        return None
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def add_principal_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, *, shown: bool = True
) -> None:
    """``--as ARN``: the principal the embedded KMS sees (its policies and grants decide).
    Not `shown` where it does not apply (the audit commands): still parsed, so that it is
    refused with the reason rather than as an unknown option."""
    p.add_argument(
        "--as",
        dest="principal",
        metavar="ARN",
        default=argparse.SUPPRESS,
        help="call the embedded KMS as this principal (an IAM user or role ARN, an "
        "assumed-role session ARN or an account root); default $ENVELOPE_PRINCIPAL, the "
        "profile's principal, else the local account root"
        if shown
        else argparse.SUPPRESS,
    )


def add_key_arguments(p: argparse.ArgumentParser, *, encrypt: bool) -> None:
    g = p.add_argument_group("keys")
    add_principal_argument(g)
    g.add_argument(
        "--key",
        metavar="URI",
        help=(
            "key to encrypt under: local:ALIAS|KEY-ID|ARN (or a bare alias/key id) of the "
            "embedded KMS under --home; an AWS KMS key: arn:aws:kms:REGION:ACCOUNT:key/ID, "
            "arn:...:alias/NAME, aws-kms:alias/NAME, aws-kms:KEY-ID or "
            "aws-kms://REGION/...; or file:PATH; default: the embedded KMS's managed key "
            + DEFAULT_KEY.removeprefix("local:")
            if encrypt
            else "the key to unwrap with, and no other (a data key wrapped under another key is "
            "refused, as AWS KMS's Decrypt with a KeyId): local:..., file:PATH, or an AWS KMS "
            "key (arn:aws:kms:..., aws-kms:...); aws-kms: alone lets any AWS KMS key the "
            "header names be tried; without a key argument, the embedded KMS under --home "
            "unwraps with the key the header names"
        ),
    )
    g.add_argument(
        "--kms-endpoint",
        metavar="URL",
        default=None,
        help="AWS-KMS-compatible endpoint for AWS KMS keys (default $AWS_ENDPOINT_URL_KMS, "
        "else AWS's own for the key's Region); on decrypt it also lets AWS KMS keys named "
        "by the header be tried",
    )
    g.add_argument(
        "--key-file",
        metavar="PATH",
        action="append",
        help="a local wrapping-key file from `envelope keygen` (may repeat on decrypt)",
    )
    g.add_argument(
        "--home",
        metavar="DIR",
        default=None,
        help="embedded KMS home (default $ENVELOPE_HOME or ~/.envelope)",
    )


def key_spec(
    args: argparse.Namespace, purpose: Purpose, *, target: bool = False, bulk: bool = False
) -> KeySpec:
    """The one place the CLI turns its key arguments into a `KeySpec` (the rules are
    `envelope.kms.keyspec`'s). `target`: rewrap's `--to-key`, one key to seal under in the
    same `--home` (and `--kms-endpoint`, when it is an AWS key). `bulk`: the lake jobs'
    data-key cache and retry profile. An empty `--key`, `--key-file` or `--home` is refused
    (`KeySpec`; the settings refuse the flags first): from an unset shell variable, taken
    as no key it sealed under the default key, taken as the working directory it put a root
    key beside the data."""
    endpoint = getattr(args, "kms_endpoint", None)
    if endpoint == "":  # an unset shell variable: AWS keys' calls went to AWS's own endpoint
        raise ConfigurationError("--kms-endpoint is empty")
    if target:
        key, files = args.to_key, ()
        if endpoint is not None and not (key and is_aws_key(key)):
            endpoint = None  # the endpoint is the source's; --to-key is not an AWS key
    else:
        key, files = getattr(args, "key", None), tuple(getattr(args, "key_file", None) or ())
    home = getattr(args, "home", None)
    sources = getattr(args, "setting_sources", {})
    if (
        purpose == "encrypt"
        and not files
        and sources.get("home") == "flag"
        and _starts_a_store(key)
    ):
        _check_home_folder(home)
    spec = KeySpec(
        key=key,
        key_files=files,
        home=home,
        cache=getattr(args, "cache", None),  # from $ENVELOPE_CACHE or the profile
        retry=getattr(args, "retry", None),  # from $ENVELOPE_RETRY or the profile
        purpose=purpose,
        kms_endpoint=endpoint,
    )
    return spec.bulk() if bulk else spec


def one_file(spec: KeySpec) -> KeySpec:
    """`spec` for one file's keyring: the `default` retry profile unless one was set (3
    attempts within 30 s, as the AWS SDKs' standard mode), so one ThrottlingException from a
    remote KMS does not fail the command. (A folder goes through the lake jobs: `bulk`.)"""
    return spec if spec.retry is not None else dataclasses.replace(spec, retry="default")


@contextlib.contextmanager
def announcing_a_new_store(*specs: KeySpec | None) -> Iterator[None]:
    """Say on stderr, once, when sealing under one of `specs` started a new embedded KMS:
    it made a root key that is the only way to open what it protects, which a user of a first
    `envelope encrypt` was not told (review)."""
    fresh = []
    for spec in specs:
        if spec is None or spec.purpose != "encrypt" or spec.key_files:
            continue
        if not _starts_a_store(spec.key):
            continue
        from ..kms.local import store_path

        store = store_path(spec.home)
        if not store.exists():
            fresh.append(store)
    try:
        yield
    finally:
        for store in fresh:
            if store.exists():
                from ..kms.local import ROOT_KEY_NAME

                root = store.parent / ROOT_KEY_NAME  # (none with a passphrase or an HSM key)
                what = f"its root key ({root})" if root.exists() else "its root key"
                print(
                    f"envelope: started a new embedded KMS in {store.parent}; {what} is the "
                    "only way to decrypt what it protects: back it up (docs/security.md)",
                    file=sys.stderr,
                )


def _starts_a_store(key: str | None) -> bool:
    """Whether sealing under `key` may start a new embedded KMS: the default key, or another
    AWS managed key of the embedded KMS (made on first use)."""
    from ..kms.uri import names_managed_key

    if key is None:
        return True
    if is_aws_key(key) or key.startswith("file:"):
        return False
    return names_managed_key(key.removeprefix("local:"))


def _check_home_folder(home: str | None) -> None:
    """A home given with --home must be a folder that exists before `encrypt` starts a KMS in
    it: a mistyped one was a new KMS holding the only key of what it sealed (docs/cli.md).
    A home set in the environment or a profile, and the default ~/.envelope, are made on
    first use."""
    if home is None or os.path.isdir(os.path.expanduser(home)):
        return
    if os.path.exists(os.path.expanduser(home)):
        raise ConfigurationError(f"the KMS home {home!r} is not a folder")
    raise ConfigurationError(
        f"no KMS home folder {home!r}: make it first (mkdir -m 700 {home}) to start a new "
        "embedded KMS there, or give the home that holds your keys"
    )


def safety_arguments(p: argparse.ArgumentParser) -> None:
    """What a job over a folder may touch: links in the source, and the destination's lock
    (`envelope lake ...` and the folder mode of `envelope encrypt|decrypt`)."""
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="follow symbolic links in a local source (default: skip and report them); "
        "never out of the source root without --allow-outside",
    )
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="with --follow-symlinks: also follow links that lead outside the source root",
    )
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="remove the destination's lock when it is stale or its job is known to be gone",
    )
