"""A stop signal that lands while an event loop closes leaves it closed, not half closed.

`BaseSelectorEventLoop.close` interrupted between forgetting its self-pipe and marking itself
closed left a loop whose finalizer printed "Exception ignored in BaseEventLoop.__del__ ...
Traceback" after the CLI had answered "hung up" (seen in the signal tests, a SIGHUP to a
lake job). Here the interrupt is made to land at exactly that point, in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

INTERRUPTED_CLOSE = """
import asyncio, gc, signal, sys
from envelope._signal_safe_loop import SignalSafeLoop

loop = (SignalSafeLoop if sys.argv[1] == "safe" else asyncio.SelectorEventLoop)()
forget_self_pipe = loop._close_self_pipe

def interrupted_after_forgetting():
    forget_self_pipe()
    signal.raise_signal(signal.SIGINT)  # the handler's KeyboardInterrupt lands here

loop._close_self_pipe = interrupted_after_forgetting
try:
    loop.close()
except KeyboardInterrupt:
    print("interrupted; closed:", loop.is_closed())
del loop, forget_self_pipe
gc.collect()
print("exit", file=sys.stderr)
"""


@pytest.mark.parametrize("kind", ["safe", "asyncio"])
def test_an_interrupt_during_close_is_raised_after_the_loop_is_closed(kind: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_CLOSE, kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == f"interrupted; closed: {kind == 'safe'}", out.stdout
    assert out.stderr.rstrip().endswith("exit")
    assert ("Exception ignored" in out.stderr) is (kind != "safe"), out.stderr


HANDLERS = """
import signal
from envelope._signal_safe_loop import HELD, SignalSafeLoop

def mine(signum, frame):
    pass

signal.signal(signal.SIGTERM, mine)
before = {s: signal.getsignal(s) for s in HELD}
SignalSafeLoop().close()
assert {s: signal.getsignal(s) for s in HELD} == before
print("restored")
"""


def test_close_puts_every_handler_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", HANDLERS], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "restored", out.stderr


RUN = """
import asyncio, sys
import envelope.sync as sync

{policy}

async def which():
    return type(asyncio.get_running_loop()).__name__

print(sync.run(which))
"""


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", "SignalSafeLoop"),
        (
            "class Mine(asyncio.DefaultEventLoopPolicy):\n    pass\n"
            "asyncio.set_event_loop_policy(Mine())",
            "_UnixSelectorEventLoop",
        ),
    ],
)
def test_sync_run_uses_it_unless_a_policy_was_installed(policy: str, expected: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", RUN.format(policy=policy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == expected, out.stderr
