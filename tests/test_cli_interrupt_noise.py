"""An interrupted command ends with its exit code and no traceback: a worker thread it can no
longer stop, a signal during the exit, an interrupt a finalizer swallowed. (A signal during an
event loop's close: tests/test_signal_safe_loop.py.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

STRANDED = """
import asyncio, atexit, sys
import anyio
import envelope.cli.main as cli

def interrupted_command(argv, *, _enable_gc=False):
    # An anyio worker thread whose stop callback never runs: the loop is left by an
    # interrupt before it processes the main task's done-callbacks (what a signal landing
    # during the loop's teardown does).
    async def job():
        await anyio.to_thread.run_sync(lambda: None)
        raise KeyboardInterrupt
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(loop.create_task(job()))
    except KeyboardInterrupt:
        pass
    print("interrupted", file=sys.stderr)
    return 130

cli.main = interrupted_command
{disable}
atexit.register(lambda: print("exit handlers ran", file=sys.stderr))
cli.run()
"""


@pytest.mark.parametrize("guarded", [True, False])
def test_an_interrupted_command_exits_even_with_a_stranded_worker_thread(guarded: bool) -> None:
    """The process must end with its exit code (and its exit handlers run) even when a
    non-daemon anyio worker thread can no longer be told to stop; without the guard, the
    interpreter joins that thread forever."""
    disable = "" if guarded else "cli.exit_despite_stranded_threads = lambda code: None"
    cmd = [sys.executable, "-c", STRANDED.format(disable=disable)]
    if not guarded:
        with pytest.raises(subprocess.TimeoutExpired):
            subprocess.run(cmd, capture_output=True, text=True, timeout=8)
        return
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 130, out.stderr
    assert "interrupted" in out.stderr and "exit handlers ran" in out.stderr, out.stderr


LATE = """
import atexit, os, signal, sys
import envelope.cli.main as cli

def finished_command(argv, *, _enable_gc=False):
    print("output", end="")  # still in stdout's buffer when the exit begins
    return {code}

cli.main = finished_command
atexit.register(lambda: os.kill(os.getpid(), signal.{sig}))  # lands while the exit runs
cli.run()
"""


@pytest.mark.parametrize("code", [0, 3])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_during_the_exit_of_a_finished_command_keeps_its_code(sig: str, code: int) -> None:
    """A signal that lands after the command is over (here from an exit handler, as a SIGINT
    inside `logging.shutdown` did in the signal tests) prints no traceback, loses nothing
    already printed and does not change the exit code: the work was done."""
    out = subprocess.run(
        [sys.executable, "-c", LATE.format(sig=sig, code=code)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == code, (out.returncode, out.stderr)
    assert out.stdout == "output"


#: A job whose finalizer is interrupted (`{interrupt}`), then goes on for 5 s unless stopped.
JOB_WITH_A_FINALIZER = """
    class C:
        pass
    c = C()
    def finalizer(ref):
        {interrupt}
    ref = weakref.ref(c, finalizer)
    del c
    t = time.monotonic()
    while time.monotonic() - t < 5:  # the job goes on
        pass
    print("finished", file=sys.stderr)
    return 0
"""

SWALLOWED = (
    """
import signal, sys, time, weakref
import envelope.cli.main as cli
{disable}

def command(argv, *, _enable_gc=False):
    cli._Stopped.signum = signal.SIGHUP  # what the SIGHUP handler records before it interrupts
"""
    + JOB_WITH_A_FINALIZER.replace(
        "{interrupt}", "raise KeyboardInterrupt  # the handler's interrupt, in a finalizer"
    )
    + """
cli.main = command
cli.run()
"""
)


@pytest.mark.parametrize("guarded", [True, False])
def test_an_interrupt_a_finalizer_swallowed_is_delivered_again(guarded: bool) -> None:
    """A stop signal whose KeyboardInterrupt lands inside a finalizer (as SIGHUP did in
    importlib's module-lock callback, in the signal tests) was printed as "Exception ignored
    in ..." and lost: the job ran on. It now stops the job, with the signal's exit code."""
    disable = "" if guarded else "cli.redeliver_interrupts_from_finalizers = lambda: None"
    out = subprocess.run(
        [sys.executable, "-c", SWALLOWED.format(disable=disable)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if not guarded:
        assert "Exception ignored" in out.stderr and "finished" in out.stderr, out.stderr
        return
    assert out.returncode == 129, out.stderr
    assert "Traceback" not in out.stderr and "finished" not in out.stderr, out.stderr
    assert "hung up; no partial file was left" in out.stderr


def test_ctrl_c_while_the_command_s_modules_import_is_a_quiet_130() -> None:
    """Ctrl-C in the first tenth of a second (the imports, before `main` handles signals)
    printed a Python traceback (review). The console script's entry point imports behind a
    guard: here a finder interrupts the import of `envelope.cli.main`, as a signal would."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Interrupting:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'envelope.cli.main':\n"
        "            raise KeyboardInterrupt\n"
        "        return None\n"
        "sys.meta_path.insert(0, Interrupting())\n"
        "from envelope.cli.entry import run\n"
        "run()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "encrypt", "x", "y"], capture_output=True, timeout=60
    )
    assert r.returncode == 130 and r.stderr == b"envelope: interrupted\n", r.stderr


SWALLOWED_IN_MAIN = (
    """
import os, signal, sys, time, weakref
import envelope.cli.main as cli

def handler(args):
"""
    + JOB_WITH_A_FINALIZER.replace(
        "{interrupt}",
        "os.kill(os.getpid(), signal.SIGHUP); time.sleep(0.05)  # the signal, in a finalizer",
    )
    + """
cli._run = lambda fn, args: handler(args)
sys.exit(cli.main(["keys", "list"]))
"""
)


def test_main_alone_delivers_an_interrupt_a_finalizer_swallowed() -> None:
    """The signal tests call `main()` as code of its own would, without `run()`'s hook: a
    SIGHUP that landed in importlib's module-lock callback there was printed as "Exception
    ignored ... Traceback" and lost (a CI run). `main` installs the hook while its signal
    handlers are in place."""
    out = subprocess.run(
        [sys.executable, "-c", SWALLOWED_IN_MAIN],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 129, out.stderr
    assert "Traceback" not in out.stderr and "finished" not in out.stderr, out.stderr


BETWEEN = """
import os, signal, sys
import envelope.cli.main as cli

where = sys.argv[1]
if where == "after the work":  # the instant between the restored handlers and the late ones
    real = cli.end_on_late_signals
    def late(code):
        os.kill(os.getpid(), signal.SIGTERM)
        real(code)
    cli.end_on_late_signals = late
else:  # before the work: the command must not run
    real_parser = cli.build_parser
    def parser(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_parser(argv)
    cli.build_parser = parser
sys.argv = ["envelope", "encrypt", sys.argv[2], sys.argv[3], "--key-file", sys.argv[4]]
cli.run()
"""


@pytest.mark.parametrize("where", ["after the work", "before the work"])
def test_a_sigterm_around_the_command(tmp_path: Path, where: str) -> None:
    """A SIGTERM in the instant after the command had restored the default handlers, before
    the late ones, ended a finished command as killed by the signal (-15, its output in place,
    no word; review): the command's own code now. One before the work still ends the process
    at once, nothing written."""
    key, src, out = tmp_path / "k.key", tmp_path / "p.bin", tmp_path / "p.env"
    subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "keygen", str(key)], check=True, timeout=60
    )
    src.write_bytes(b"x" * 100_000)
    r = subprocess.run(
        [sys.executable, "-c", BETWEEN, where, str(src), str(out), str(key)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if where == "after the work":
        assert r.returncode == 0 and out.stat().st_size > 100_000, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr
    else:
        assert r.returncode == -signal.SIGTERM and not out.exists(), (r.returncode, r.stderr)
