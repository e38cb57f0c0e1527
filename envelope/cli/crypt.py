"""`envelope encrypt`, `envelope decrypt` and `envelope keygen`."""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from dataclasses import asdict
from typing import IO, Any

from .. import sync
from ..atomic import own_descriptor
from ..errors import ConfigurationError
from ..kms.filekey import generate_key_file
from ..kms.keyspec import KeySpec
from ..objects import check_not_the_input
from ..options import ObjectInfo, Options
from ._common import (
    add_engine_arguments,
    add_key_arguments,
    add_metrics_argument,
    announcing_a_new_store,
    input_size,
    key_spec,
    metrics_observer,
    one_file,
    parse_pairs,
    progress_bar,
    safety_arguments,
)
from ._output import add_output_arguments, emit, output_requested
from ._stdio import require_open

_OUT_HELP = (
    "output file (a regular file is replaced atomically: nothing appears under OUT unless the "
    "whole run succeeds; a device or FIFO is written through; a symlink's target is written), "
    "or - for stdout"
)
_DECRYPT_OUT_HELP = (
    _OUT_HELP
    + ". Streamed output (-, a pipe, a FIFO, a device) is released segment by segment: every "
    "byte written was authenticated before it was released, but the stream as a whole is "
    "authenticated (not truncated, nothing missing) only once envelope exits 0"
)


def _add_io(p: argparse.ArgumentParser, *, decrypt: bool = False) -> None:
    p.add_argument("input", metavar="IN", help="input file, or - for stdin")
    p.add_argument("output", metavar="OUT", help=_DECRYPT_OUT_HELP if decrypt else _OUT_HELP)
    add_output_arguments(p)  # a summary on stdout only when --json/--output/--query is given
    p.set_defaults(
        settings=("key", "home", "region", "principal", "output", "cache", "retry", "fsync"),
        summary_on_stdout=True,
    )
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.add_argument("--workers", type=int, default=None, help="crypto threads (default: all cores)")
    add_engine_arguments(p, encrypt=not decrypt)
    p.add_argument(
        "--fsync",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fsync the output (and its folder) before it is renamed into place, so it "
        "survives a power cut too; default $ENVELOPE_FSYNC or the profile's fsync, else off, "
        "like cp, age and the lake jobs (the rename is still atomic against a crash or kill "
        "of envelope): see docs/security.md",
    )
    safety_arguments(p)  # for a folder IN (the lake job over a local tree)
    add_metrics_argument(p)


def add_crypt_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "encrypt", help="encrypt a file, a stream, or a folder (every file in it, to OUT/)"
    )
    _add_io(p)
    add_key_arguments(p, encrypt=True)
    p.add_argument(
        "--context",
        metavar="KEY=VALUE",
        action="append",
        help="per-object context pair, bound in the header (may repeat)",
    )
    p.add_argument(
        "--kms-context",
        metavar="KEY=VALUE",
        action="append",
        help="KMS-level context pair, sent to the KMS with the data-key request (may repeat)",
    )
    p.set_defaults(handler=cmd_encrypt)

    p = sub.add_parser(
        "decrypt", help="decrypt a file, a stream, or a folder (every file in it, to OUT/)"
    )
    _add_io(p, decrypt=True)
    add_key_arguments(p, encrypt=False)
    p.add_argument(
        "--expect-context",
        metavar="KEY=VALUE",
        action="append",
        help="refuse the object unless its per-object context has this pair (may repeat)",
    )
    p.set_defaults(handler=cmd_decrypt)

    p = sub.add_parser("keygen", help="create a local wrapping-key file (mode 0600)")
    p.add_argument(
        "path", metavar="KEYFILE", help="where to write the new key file (must not exist)"
    )
    p.set_defaults(handler=cmd_keygen)


def _open_in(path: str) -> str | IO[bytes]:
    if path != "-":
        return path
    require_open(0, "the input is - (standard input)")
    return sys.stdin.buffer


def _open_out(path: str, *, ciphertext: bool = False) -> str | IO[bytes]:
    if path != "-":
        return path
    require_open(1, "the output is - (standard output)")
    if ciphertext and sys.stdout.isatty():
        # binary on a terminal garbles it and is lost (age refuses this too)
        raise ConfigurationError(
            "refusing to write ciphertext to a terminal: redirect stdout (> FILE, | cmd) or "
            "name an output file"
        )
    return sys.stdout.buffer


def _summary(op: str, info: ObjectInfo, args: argparse.Namespace) -> None:
    """The object's header facts, as data, when the command line asked for output."""
    if output_requested(args):
        d = asdict(info)
        d["operation"] = op
        d["wrapped_keys"] = [
            {"provider_id": w.provider_id, "key_id": w.key_id} for w in info.wrapped_keys
        ]
        emit(args, d, "Encrypt" if op == "encrypt" else "Decrypt")


def _check_paths(args: argparse.Namespace) -> None:
    """What a path argument gets wrong, before any KMS is opened (or started: a typo must not
    make a store and a root key before it is refused). ``/dev/stdout`` (``/dev/fd/1``,
    ``/proc/self/fd/1``) is standard output, as ``-``, and ``/dev/stdin`` standard input:
    resolved as paths, they named the shell's redirect target, which was then replaced (a
    file opened with ``>>`` lost what it held) or not found (a pipe)."""
    if own_descriptor(args.input) == 0:
        args.input = "-"
    if own_descriptor(args.output) == 1:
        args.output = "-"
    if args.input == "-":
        require_open(0, "the input is - (standard input)")
    if args.output == "-":
        require_open(1, "the output is - (standard output)")
    elif output_requested(args):
        require_open(1, "--output prints the summary there")
    if args.output != "-":
        _check_replaceable(args.output)
    if args.input != "-":
        try:
            os.stat(args.input)
        except OSError as e:
            raise ConfigurationError(f"cannot open {args.input!r}: {e.strerror}") from None
        if args.output != "-":
            check_not_the_input(args.input, args.output)
        elif _same_file(args.input, sys.stdout):  # `encrypt f - >> f`: appended to itself
            raise ConfigurationError(f"standard output is {args.input!r} itself: write elsewhere")
    elif args.output != "-" and _same_file(args.output, sys.stdin):
        # `encrypt - f < f`: `encrypt f f` is refused, and this replaced f with itself sealed
        raise ConfigurationError(f"standard input is {args.output!r} itself: write elsewhere")


def _same_file(path: str, stream: IO[Any]) -> bool:
    """Whether `path` is the file open as `stream` (False if either is not there)."""
    try:
        a, b = os.stat(path), os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _check_replaceable(path: str) -> None:
    """An existing file the command could not write to is refused (exit 5), as `cp` and a
    shell's ``>`` refuse it: the output replaces a file by renaming over it, which only the
    folder's permission governs, so a read-only (0444) file was silently replaced (review)."""
    try:
        st = os.stat(path)
    except OSError:
        return  # (a new file, or one `resolve_output` refuses with its reason)
    if stat.S_ISREG(st.st_mode) and not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, "Permission denied (the file is read-only)", path)


def _is_folder(path: str) -> bool:
    return path != "-" and os.path.isdir(path)


def cmd_encrypt(args: argparse.Namespace) -> int:
    spec = key_spec(args, "encrypt")
    with announcing_a_new_store(spec):
        return _encrypt(args, spec)


def _encrypt(args: argparse.Namespace, spec: KeySpec) -> int:
    if _is_folder(args.input):
        with metrics_observer(args) as observer:
            from .lake import run_folder

            return run_folder("encrypt", args, spec, observer)
    options = Options(
        segment_size=args.segment_size, workers=args.workers, memory_budget=args.memory_budget
    )
    _check_paths(args)
    out = _open_out(args.output, ciphertext=True)  # before the KMS is opened
    with (
        metrics_observer(args) as observer,
        progress_bar("encrypting", input_size(args.input), enabled=not args.no_progress) as advance,
    ):
        keyring = one_file(spec).keyring(observer)
        try:
            info = sync.encrypt(
                _open_in(args.input),
                out,
                keyring=keyring,
                kms_context=parse_pairs(args.kms_context, "--kms-context"),
                object_context=parse_pairs(args.context, "--context"),
                options=options,
                on_progress=advance,
                observer=observer,
                durable=bool(args.fsync),
            )
        finally:
            keyring.close()  # the embedded KMS seals its audit log
    _summary("encrypt", info, args)
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    if _is_folder(args.input):
        with metrics_observer(args) as observer:
            from .lake import run_folder

            return run_folder("decrypt", args, key_spec(args, "decrypt"), observer)
    _check_paths(args)
    with (
        metrics_observer(args) as observer,
        progress_bar("decrypting", input_size(args.input), enabled=not args.no_progress) as advance,
    ):
        keyring = one_file(key_spec(args, "decrypt")).keyring(observer)
        try:
            info = sync.decrypt(
                _open_in(args.input),
                _open_out(args.output),
                keyring=keyring,
                expected_context=parse_pairs(args.expect_context, "--expect-context"),
                options=Options(workers=args.workers, memory_budget=args.memory_budget),
                on_progress=advance,
                observer=observer,
                durable=bool(args.fsync),
            )
        finally:
            keyring.close()
    _summary("decrypt", info, args)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.path == "-":
        raise ConfigurationError(
            "keygen writes a key file, never to stdout; name a file (./- for one called '-')"
        )
    key_id = generate_key_file(args.path)
    print(f"wrote {args.path} (key id {key_id})", file=sys.stderr)
    return 0
