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
