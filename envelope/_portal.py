"""One process-wide event loop on a daemon thread, for blocking callers of async-only code.

The synchronous object layer never starts an event loop per call: a data-key cache hit is a
locked lookup. Only a miss (a KMS call through an async backend and the async retry layer)
needs a loop, and it gets this one: started on first use, shared by every thread, restarted
in a forked child (the thread does not survive `fork`). It is a daemon thread, so it never
holds up interpreter exit; close what holds resources (`Keyring.close`) before exiting.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # anyio is imported on first use: blocking callers that never miss skip it
    from anyio.from_thread import BlockingPortal

__all__ = ("call", "prepare")

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_pid = 0


def _start() -> BlockingPortal:
    import anyio
    import anyio.from_thread

    ready = threading.Event()
    box: list[BlockingPortal] = []

    async def main() -> None:
        async with anyio.from_thread.BlockingPortal() as portal:
            box.append(portal)
            ready.set()
            await portal.sleep_until_stopped()

    threading.Thread(target=anyio.run, args=(main,), name="envelope-portal", daemon=True).start()
    ready.wait()
    return box[0]


def _get() -> BlockingPortal:
    global _portal, _pid
    with _lock:
        if _portal is None or _pid != os.getpid():
            _portal, _pid = _start(), os.getpid()
        return _portal


def prepare() -> None:
    """Import, on the calling thread, what the loop's thread needs to start (anyio and its
    asyncio backend). A process forked while another thread is importing a module deadlocks
    when the child imports that module (CPython does not release a module's import lock in the
    child), and the portal's first start imports anyio's backend on a thread of its own; a
    keyring that will need the portal calls this when it is made, so the import is done
    before any worker pool forks. Best effort: a missing backend fails later, where it is used.
    """
    import importlib

    try:
        importlib.import_module("anyio.from_thread")
        importlib.import_module("anyio._backends._asyncio")
    except ImportError:  # pragma: no cover - anyio's layout; the start imports it anyway
        pass


def _after_fork_in_child() -> None:
    """A child forked while another thread held `_lock` (starting the portal takes tens of
    milliseconds) would wait on it for ever: the child gets a new lock, and no portal (the
    loop's thread did not come along)."""
    global _lock, _portal, _pid
    _lock = threading.Lock()
    _portal, _pid = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run `await fn(*args)` on the shared loop from any plain thread; its result or error."""
    return _get().call(fn, *args)
