"""`envelope` command line: the only place that prints or exits.

    envelope keygen KEYFILE
    envelope encrypt IN OUT --key-file KEYFILE      (IN/OUT may be '-' for stdin/stdout)
    envelope decrypt IN OUT --key-file KEYFILE
    envelope demo

Exit codes: 0 success, 1 the object is invalid (authentication, truncation, bad header) or a
lake job had failed objects, 2 usage or configuration error, 3 KMS failure, 4 context
mismatch, 5 an I/O error (disk full, broken pipe, ...), 130 interrupted (SIGINT), 143
terminated (SIGTERM: `timeout`, systemd, `docker stop`), 129 hung up (SIGHUP).

Every command that prints data takes `--output json|text|table` and `--query JMESPATH` (as the
AWS CLI), and settings come from flags, then the environment, then a profile of the config file
(`--profile`), then defaults: docs/cli.md, `envelope.config`, `envelope.cli._output`.

SIGTERM and SIGHUP are handled exactly like SIGINT, which every command already handles
cleanly: the running work is cancelled, every temporary file is removed and no target is
touched; only the exit code says which signal it was.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

from .. import __version__
from ..errors import (
    ConfigurationError,
    ContextMismatchError,
    EnvelopeError,
    InvalidObjectError,
    KmsError,
    SourceChangedError,
)
from ..printable import printable
from ._common import (
    EXIT_CONTEXT,
    EXIT_INVALID,
    EXIT_IO,
    EXIT_KMS,
    EXIT_USAGE,
    envelope_warnings,
    err,
)

__all__ = ("build_parser", "main")

#: Each command and the module that defines it. Only the module of the command being run is
#: imported, so `envelope encrypt` never loads pyarrow, rich, the KMS service or Prometheus
#: (start-up is most of the cost of encrypting a small file). Optional parts that fail to
#: import are left out of the listing, never break the core commands.
_COMMANDS: dict[str, str] = {
    "encrypt": "envelope.cli.crypt",
    "decrypt": "envelope.cli.crypt",
    "keygen": "envelope.cli.crypt",
    "demo": "envelope.cli.demo",
    "keys": "envelope.cli.keys",
    "audit": "envelope.cli.audit",
    "iam": "envelope.cli.iam",
    "grants": "envelope.cli.grants",
    "keystores": "envelope.cli.keystores",
    "policy": "envelope.cli.policy",
    "lake": "envelope.cli.lake",
    "serve": "envelope.cli.serve",
    "xks": "envelope.cli.xks",
    "bench": "envelope.cli.bench",
}


def _register(module_name: str, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        if module_name == "envelope.cli.crypt":
            raise
        return
    register = getattr(module, "register", None) or getattr(module, "add_crypt_commands", None)
    if register is None:
        register = module.add_demo_command
    register(sub)


def _command(argv: Sequence[str]) -> str | None:
    """The command word of `argv` (the first argument that is not an option), if known."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in _COMMANDS else None
    return None


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized without `shutil`: argparse builds a formatter for every
    `add_argument` and the stock one imports `shutil` (and with it `bz2` and `lzma`) to ask
    the terminal's width, a few milliseconds of every command's start-up. Same rule as
    `shutil.get_terminal_size`: $COLUMNS, else the terminal of stdout, else 80."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help uses `_Formatter`; sub-parsers are made of this class too.

    An argument a command does not know is reported by that command's own parser, with its
    usage (`envelope lake verify: error: unrecognized arguments: --bogus`): argparse leaves it
    to the top-level parser, which prints `usage: envelope [-h] ... COMMAND ...` instead. No
    parser here is called for known arguments only, so extras are always an error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error("unrecognized arguments: " + " ".join(extras))
        return parsed, extras


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with only the module of the command in `argv` loaded (all without one)."""
    parser: argparse.ArgumentParser = _Parser(
        prog="envelope",
        description="High-throughput envelope encryption of data at rest.",
    )
    parser.add_argument("--version", action="version", version=f"envelope {__version__}")
    parser.add_argument(
        "--profile",
        metavar="NAME",
        default=None,
        help="settings profile from the config file (default $ENVELOPE_PROFILE, else "
        "[profile.default] if there is one); also accepted after the command",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command = _command(argv) if argv is not None else None
    if command:
        wanted = [_COMMANDS[command]]
    elif argv is not None and "--version" in argv and not {"-h", "--help"} & set(argv):
        wanted = []  # (argparse prints it before it asks for a command: no module is needed)
    else:
        wanted = list(dict.fromkeys(_COMMANDS.values()))
    for name in wanted:
        _register(name, sub)
    return parser


#: Signals that stop a command the way SIGINT does, and the names said on exit.
_STOP_SIGNALS = {signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


class _Stopped:
    signum: int | None = None
    #: The code the command returned, once it has.
    code: int | None = None
    #: Set once the command's work is over (its outputs renamed or removed, its exit code
    #: about to be decided): a signal from then on is late (`_around_the_command`).
    over = False


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM/SIGHUP into the SIGINT path: asyncio's runner cancels the running task
    (so every sink aborts and removes its temporary) and raises KeyboardInterrupt; plain
    blocking code gets KeyboardInterrupt directly."""
    _Stopped.signum = signum
    if callable(signal.getsignal(signal.SIGINT)):
        signal.raise_signal(signal.SIGINT)
        return
    # SIGINT ignored (a background job of a non-interactive shell): asyncio's runner then
    # installs no handler, so a running job is cancelled here as it would have done;
    # KeyboardInterrupt raised at a random point of the event loop could skip an abort
    sync = sys.modules.get("envelope.sync")
    if sync is None or not sync.interrupt():
        raise KeyboardInterrupt


@contextmanager
def _stop_signals() -> Iterator[None]:
    previous = {s: signal.signal(s, _on_stop_signal) for s in _STOP_SIGNALS}
    hook = sys.unraisablehook
    if not isinstance(hook, _LostInterrupt):  # (`main` called by code of its own, not `run`)
        sys.unraisablehook = _LostInterrupt(hook)
    try:
        yield
    finally:
        _Stopped.over = True
        sys.unraisablehook = hook
        for s, h in previous.items():
            signal.signal(s, h)


def _around_the_command(signum: int, frame: FrameType | None) -> None:
    """`run`'s handler of SIGTERM and SIGHUP outside `_stop_signals`: before the command's
    work, the default (the process ends); once the work is over, nothing here
    (`end_on_late_signals` then ends the process with the command's own code). Between the
    restore of the default handlers and `end_on_late_signals` a SIGTERM ended a finished
    command as killed (-15, its output in place and no word; review). SIGINT keeps Python's
    own handler: asyncio cancels its running task cleanly only under that one, and the
    instant after the work is `run`'s `except KeyboardInterrupt`."""
    if _Stopped.over:
        return
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def main(argv: Sequence[str] | None = None, *, _enable_gc: bool = False) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if _enable_gc:  # `run`: parsing is done, the command's own work collects as usual
        import gc

        gc.enable()
    handler: Callable[[argparse.Namespace], int] = args.handler
    # The settings export the Region and the principal to the environment for what the command
    # starts (the embedded KMS behind a key URI, Dask workers); a caller running `main` in its
    # own process gets its environment back as it was.
    exported = {name: os.environ.get(name) for name in _EXPORTED}
    try:
        try:
            _settings(args)
            _check_stdout(args)
        except ConfigurationError as e:
            err(str(e))
            return EXIT_USAGE
        _Stopped.signum, _Stopped.code, _Stopped.over = None, None, False
        from ..atomic import forget_commits

        forget_commits()  # `_interrupted` asks about this command's outputs only
        try:
            with _stop_signals(), envelope_warnings():
                code = _run(handler, args)
        except KeyboardInterrupt:  # a signal that arrived while the handlers were restored
            code = _interrupted(args)
        _Stopped.code = code
        return code
    finally:
        for name, value in exported.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: Commands that print their data only when asked (`--output`, `--json`, `--query`).
_QUIET_COMMANDS = frozenset({"encrypt", "decrypt", "lake"})


def _check_stdout(args: argparse.Namespace) -> None:
    """A command that prints data, started with standard output closed, is refused before it
    does anything: it was refused only when it came to print, the key it had been asked to
    create already made (exit 2 says nothing was done; diff review)."""
    from ._output import output_requested
    from ._stdio import is_closed

    prints = hasattr(args, "json") or "output" in getattr(args, "settings", ())
    if not is_closed(1) or not prints:
        return
    if getattr(args, "command", None) not in _QUIET_COMMANDS or output_requested(args):
        raise ConfigurationError(
            "standard output is closed, and this command prints its data there"
        )


#: The environment variables `envelope.config.apply_settings` may export for a command.
_EXPORTED = ("ENVELOPE_REGION", "ENVELOPE_PRINCIPAL")


def _settings(args: argparse.Namespace) -> None:
    """Check the output options, then fill in what the command line left unset from the
    environment and the profile (`envelope.config.apply_settings`: flags > environment >
    profile > defaults), before the command does anything."""
    from ..config import apply_settings
    from ._output import prepare_output

    prepare_output(args)
    apply_settings(args)


def _interrupted(args: argparse.Namespace | None = None) -> int:
    from ..atomic import remove_live_temporaries, was_committed

    remove_live_temporaries()  # belt and braces: every sink already removed its own
    signum = _Stopped.signum
    output = getattr(args, "output", None)
    if (
        getattr(args, "command", None) in ("encrypt", "decrypt")
        and isinstance(output, str)
        and output != "-"
        and was_committed(output)
    ):
        # the signal came as the output's rename was done (a rename of 2 GB takes about a
        # second): the command did its work, and the file under the name is the new one
        what = "interrupted" if signum is None else _STOP_SIGNALS[signal.Signals(signum)]
        err(f"{what} after {printable(output)} was written completely (it stands)")
        return 0
    streamed = _streamed_plaintext(args)
    tail = (
        f"; any plaintext already written to {streamed} is an authenticated but incomplete "
        "prefix"
        if streamed is not None
        else "; no partial file was left under a target name"
    )
    if signum is None:
        err("interrupted" + tail)
        return 130
    err(_STOP_SIGNALS[signal.Signals(signum)] + tail)
    return 128 + signum


def _streamed_plaintext(args: argparse.Namespace | None) -> str | None:
    """Where a one-file decrypt writes plaintext as it goes (standard output, a FIFO, a
    device: no temporary, no rename), named for a message; None for anything else. Its
    failure or interruption leaves there the segments authenticated so far, which "no
    partial file was left" hid (review)."""
    if args is None or getattr(args, "command", None) != "decrypt":
        return None
    output = getattr(args, "output", None)
    if output == "-":
        return "standard output"
    if not isinstance(output, str):
        return None
    try:
        st = os.stat(output)
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return None
    return printable(output)


def _run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except KeyboardInterrupt:
        return _interrupted(args)
    except ContextMismatchError as e:
        err(str(e))
        return EXIT_CONTEXT
    except InvalidObjectError as e:
        streamed = _streamed_plaintext(args)
        err(
            f"{type(e).__name__}: {e}"
            + (
                f" (any plaintext already written to {streamed} is an authenticated but "
                "incomplete prefix: do not use it)"
                if streamed is not None
                else ""
            )
        )
        return EXIT_INVALID
    except KmsError as e:
        err(f"{type(e).__name__}: {e}")
        return EXIT_KMS
    except SourceChangedError as e:  # an I/O condition: run again once it stops changing
        err(str(e))
        return EXIT_IO
    except (ConfigurationError, EnvelopeError) as e:
        err(str(e))
        return EXIT_USAGE
    except OSError as e:  # disk full, broken pipe, permission: a message, not a traceback
        err(f"I/O error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
        return EXIT_IO
    except MemoryError:  # (`bench machine --size 8G` under a memory limit was a traceback)
        err("out of memory: give a smaller size, or run where more memory is available")
        return EXIT_USAGE
    except Exception as e:
        # an object store that cannot be reached or refuses (botocore's errors are not
        # OSError): the storage failed, as a disk does; anything else stays a traceback
        if not type(e).__module__.startswith("botocore"):
            raise
        err(f"I/O error: {type(e).__name__}: {e}")
        return EXIT_IO


def run() -> None:
    """The `envelope` console script (through `envelope.cli.entry`): `main` for a process of its
    own.

    The cyclic garbage collector is off while the command's modules import and its arguments
    parse (they make many objects and no garbage; collecting them is most of what a small
    command's start-up costs beyond the imports), and everything still alive is frozen out of
    the collector before the interpreter exits, so shutdown does not walk it. Code that calls
    `main()` in its own process keeps its collector as it was."""
    import gc

    from . import _stdio

    _stdio.hold()  # (first: before anything opens a file in a closed descriptor's place)
    redeliver_interrupts_from_finalizers()
    for s in _STOP_SIGNALS:
        if signal.getsignal(s) == signal.SIG_DFL:  # (one ignored, as by nohup, stays so)
            signal.signal(s, _around_the_command)
    gc.disable()
    try:
        code = main(sys.argv[1:], _enable_gc=True)
    except KeyboardInterrupt:  # in the instant after `main` restored the signal handlers
        # the command's own code if it had one: its work was over (outputs renamed)
        code = _Stopped.code if _Stopped.code is not None else _interrupted()
    finally:
        gc.enable()
    end_on_late_signals(code)
    if code >= 128:  # stopped by a signal
        exit_despite_stranded_threads(code)
    gc.freeze()
    sys.exit(code)


def redeliver_interrupts_from_finalizers() -> None:
    """Deliver again an interrupt that a finalizer swallowed.

    A signal turns into KeyboardInterrupt wherever the main thread is, and that can be
    inside a finalizer: a `__del__`, or a weakref callback such as the one importlib runs when
    a module lock is collected. Python cannot raise from there; it prints "Exception ignored
    in: ... KeyboardInterrupt" and carries on, so the user's Ctrl-C (or SIGTERM, which the
    CLI turns into one) is lost and a traceback is printed (seen in the signal tests). Such an
    interrupt is sent again instead: a bare thread (`_thread`, which nothing waits for) sends
    SIGINT to the main thread a few milliseconds later, once the finalizer and this hook have
    returned, and wakes a blocking wait as the first signal did; one that lands in a
    finalizer again is sent again. The stop signal that caused it is still recorded
    (`_Stopped`), so the exit code names it. Every other unraisable exception is reported as
    before."""
    if not isinstance(sys.unraisablehook, _LostInterrupt):
        sys.unraisablehook = _LostInterrupt(sys.unraisablehook)


class _LostInterrupt:
    """The `sys.unraisablehook` of `redeliver_interrupts_from_finalizers`, also installed by
    `main` while its signal handlers are (the signal tests call `main` directly, and one
    SIGHUP landed in a module-lock callback there and was lost)."""

    def __init__(self, previous: Callable[[Any], object]) -> None:
        import _thread

        self.previous = previous
        self.main_thread = _thread.get_ident()

    def __call__(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and callable(
            signal.getsignal(signal.SIGINT)
        ):
            import _thread

            _thread.start_new_thread(self._resend, ())
            return
        self.previous(unraisable)

    def _resend(self) -> None:
        import time

        time.sleep(0.005)
        if sys.unraisablehook is not self:
            return  # the command is over (its handlers restored): nothing left to interrupt
        signal.pthread_kill(self.main_thread, signal.SIGINT)


def end_on_late_signals(code: int) -> None:
    """Let a signal that arrives once the command is over end the process at once, quietly,
    with the code the command chose.

    The command has finished (or been interrupted and cleaned up) by then: every output is
    renamed or removed and the exit code is decided. A SIGINT during the interpreter's exit
    would otherwise raise KeyboardInterrupt inside whichever exit handler is running and print
    "Exception ignored in atexit callback ... Traceback" (seen in the signal tests, a SIGINT
    landing in `logging.shutdown`), and a SIGTERM or SIGHUP would end it by the default
    action with -N, as if the work had been cut short. Standard streams are flushed first so
    nothing already printed is lost; the remaining exit handlers are skipped, since nothing
    is left for them to save."""

    def finish(signum: int, frame: FrameType | None) -> None:
        _flushed_exit(code)

    for s in (signal.SIGINT, *_STOP_SIGNALS):
        signal.signal(s, finish)


def _flushed_exit(code: int) -> NoReturn:
    """Leave now with `code`, after what the standard streams still buffer."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def exit_despite_stranded_threads(code: int, grace: float = 10.0) -> None:
    """End an interrupted command even if a thread it started can no longer be stopped.

    The interpreter joins every non-daemon thread before it exits. anyio's worker threads are
    non-daemon and are told to stop by a callback of the event loop's main task; a signal that
    lands while that loop is being torn down (KeyboardInterrupt goes wherever the main thread
    is) skips the callback, and the worker then waits for work forever: the process had
    already cleaned up and said "interrupted", and hung (seen in the signal tests, 1 run in
    ~50). After `grace` seconds for such threads to end by themselves (long enough for a
    clean-up still running on a worker thread, such as a lake job's lock release on a busy
    disk, to finish), the exit handlers run
    and the process leaves with its exit code without joining them: the work they belonged to
    was cancelled and its output already discarded."""
    import threading
    import time

    def stranded() -> list[threading.Thread]:
        me = threading.current_thread()
        return [t for t in threading.enumerate() if t is not me and not t.daemon]

    deadline = time.monotonic() + grace
    for t in stranded():
        t.join(max(0.0, deadline - time.monotonic()))
    if not stranded():
        return
    import atexit

    atexit._run_exitfuncs()
    _flushed_exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
