"""An interrupted command's exit prints no traceback from a half-closed asyncio loop.

KeyboardInterrupt can land inside `BaseSelectorEventLoop.close`, after the self-pipe socket
was closed and before the loop is marked closed; the loop's finalizer then fails at exit
("Exception ignored in BaseEventLoop.__del__ ... Invalid file descriptor: -1"). Here a loop
is left in exactly that state in a fresh interpreter, with and without the CLI's hook.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HALF_CLOSED = """
import asyncio, gc, sys
{install}
loop = asyncio.new_event_loop()
loop._ssock.close()  # what close() had done when the interrupt landed
del loop
gc.collect()
print("exit", file=sys.stderr)
"""


@pytest.mark.parametrize("hooked", [False, True])
def test_a_half_closed_loop_is_quiet_only_with_the_hook(hooked: bool) -> None:
    install = (
        "from envelope.cli.main import quiet_half_closed_loops; quiet_half_closed_loops()"
        if hooked
        else ""
    )
    out = subprocess.run(
        [sys.executable, "-c", HALF_CLOSED.format(install=install)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stderr.rstrip().endswith("exit")
    assert ("Invalid file descriptor" in out.stderr) is not hooked, out.stderr


def test_other_unraisable_errors_are_still_reported() -> None:
    code = (
        "from envelope.cli.main import quiet_half_closed_loops; quiet_half_closed_loops()\n"
        "class C:\n"
        "    def __del__(self):\n"
        "        raise ValueError('still shown')\n"
        "C()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "still shown" in out.stderr


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


SWALLOWED = """
import signal, sys, time, weakref
import envelope.cli.main as cli
{disable}

def command(argv, *, _enable_gc=False):
    cli._Stopped.signum = signal.SIGHUP  # what the SIGHUP handler records before it interrupts
    class C:
        pass
    c = C()
    def finalizer(ref):
        raise KeyboardInterrupt  # the handler's interrupt, landing inside a finalizer
    ref = weakref.ref(c, finalizer)
    del c
    t = time.monotonic()
    while time.monotonic() - t < 5:  # the job goes on
        pass
    print("finished", file=sys.stderr)
    return 0

cli.main = command
cli.run()
"""


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
