"""An asyncio event loop that a signal cannot leave half closed.

A signal handler's KeyboardInterrupt lands wherever the main thread is, and
`BaseSelectorEventLoop.close` is not safe against it: interrupted after it closed and forgot
its self-pipe and before it marked itself closed, it leaves a loop that is neither open nor
closed, whose finalizer later fails with "Exception ignored in BaseEventLoop.__del__ ...
Traceback" (AttributeError or "Invalid file descriptor: -1", by where the interrupt landed).
The signal tests met it when a SIGHUP reached a lake job as its runner closed the loop.

Here `close` runs with the stop signals held: one that arrives meanwhile is recorded and
raised again, through the handler that was in place, once the loop is wholly closed. Only
the close is held; the runner's earlier teardown (cancelling tasks, joining the executor's
threads) stays interruptible, so a second Ctrl-C still works there.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import warnings
from collections.abc import Callable
from types import FrameType

#: The signals a command stops on (the CLI turns SIGTERM and SIGHUP into SIGINT's path).
HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalSafeLoop(asyncio.SelectorEventLoop):
    """asyncio's default loop on POSIX, with a close that runs to its end."""

    def close(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            super().close()  # Python runs signal handlers on the main thread only
            return
        caught: list[int] = []

        def hold(signum: int, frame: FrameType | None) -> None:
            caught.append(signum)

        previous: dict[int, object] = {}
        try:
            for s in HELD:
                if callable(signal.getsignal(s)):
                    previous[s] = signal.signal(s, hold)
        finally:
            try:
                super().close()
            finally:
                for held, handler in previous.items():
                    signal.signal(held, handler)  # type: ignore[arg-type]
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What `envelope.sync.run` gives anyio as its loop factory: `SignalSafeLoop` where
    asyncio would have made its default loop; None (asyncio's own choice) under an event-loop
    policy someone installed (uvloop, for instance), which is theirs to keep."""
    with warnings.catch_warnings():  # the policy API is deprecated from Python 3.14
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
    return SignalSafeLoop if type(policy) is asyncio.DefaultEventLoopPolicy else None
