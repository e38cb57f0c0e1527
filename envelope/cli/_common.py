"""Helpers shared by the CLI commands: output, exit codes, progress bars, keyrings."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ConfigurationError
from ..keyring import Keyring
from ..kms.base import KmsBackend
from ..kms.filekey import FileKeyBackend
from ..kms.uri import open_backend, open_local_backend
from ..metrics import NULL_OBSERVER, Observer

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_KMS = 3
EXIT_CONTEXT = 4
EXIT_IO = 5

#: The key `envelope encrypt` uses when given none: the embedded KMS's managed key for
#: envelope, created on first use (rotation always on, cannot be disabled or deleted).
DEFAULT_KEY = "local:alias/aws/envelope"

#: Inputs at least this large get a progress bar on a terminal.
PROGRESS_MIN_BYTES = 8 << 20


def err(message: str) -> None:
    print(f"envelope: {message}", file=sys.stderr)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """KEY=VALUE arguments into a dict."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"{what} must be KEY=VALUE, got {item!r}")
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


def add_metrics_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-port",
        type=int,
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
    with serve_metrics(port, registry=observer.registry):
        yield observer


def input_size(path: str) -> int | None:
    if path == "-":
        return None
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def add_key_arguments(p: argparse.ArgumentParser, *, encrypt: bool) -> None:
    g = p.add_argument_group("keys")
    g.add_argument(
        "--key",
        metavar="URI",
        help=(
            "key to encrypt under: local:ALIAS|KEY-ID|ARN (or a bare alias/key id) of the "
            "embedded KMS under --home, or file:PATH; default: the embedded KMS's managed key "
            "alias/aws/envelope"
            if encrypt
            else "extra key URI to try when unwrapping (the header names the key)"
        ),
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


def keyring_for_encrypt(args: argparse.Namespace, observer: Observer = NULL_OBSERVER) -> Keyring:
    key_files: list[str] = args.key_file or []
    if args.key and key_files:
        raise ConfigurationError("give either --key or --key-file, not both")
    if len(key_files) > 1:
        raise ConfigurationError("encrypt takes one --key-file")
    if key_files:
        backend = FileKeyBackend(key_files[0])
        return Keyring(backend, backend.key_id, observer=observer)
    backend2, key_id = open_backend(args.key or DEFAULT_KEY, home=args.home)
    return Keyring(backend2, key_id, observer=observer)


def keyring_for_decrypt(args: argparse.Namespace, observer: Observer = NULL_OBSERVER) -> Keyring:
    """The keys a reader may use: exactly the `--key-file`s and `--key` given; with neither,
    the embedded KMS under `--home`. A key file alone never touches `$ENVELOPE_HOME` (it
    would open, and write the audit log of, a KMS the user did not ask for)."""
    backends: list[KmsBackend] = [FileKeyBackend(p) for p in args.key_file or []]
    if args.key:
        backends.append(open_backend(args.key, home=args.home)[0])
    if not backends:
        backends.append(open_local_backend(args.home, must_exist=True))
    return Keyring(decrypt_with=backends, observer=observer)
