"""A blocking portal: run the async backends' coroutines from plain (non-async) threads.

Some callers are synchronous and run on threads `envelope` does not own: pyarrow calls a
Parquet `KmsClient` on its own Arrow threads, for example. They cannot `await`, and starting
an event loop per call (``anyio.run``) costs a loop each time and breaks backends that keep
loop-bound state. A `Portal` runs one event loop on a dedicated daemon thread instead, and
hands it coroutines::

    portal = default_portal()                 # process-wide; the loop starts on first use
    wrapped = portal.call(partial(kms.encrypt_data_key, key_id, dk, context=ctx))

Rules:

- The loop is started lazily, by the first `call`, under a lock (so at most one per portal
  however many threads race), and stopped by `close` or at interpreter exit.
- Any number of threads may call at once; their coroutines run concurrently on the loop.
- Calling from the portal's own loop thread would wait for itself forever: it raises
  `ConfigurationError` instead (await the coroutine there). Calling from another event loop's
  thread works but blocks that loop for the duration of the call: prefer
  ``anyio.to_thread.run_sync`` around blocking code there.
- After ``fork()`` the child does not inherit the loop thread: the next call starts a new one.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .errors import ConfigurationError

__all__ = ("Portal", "default_portal")

T = TypeVar("T")


class Portal:
    """An event loop on a dedicated daemon thread, started on first use; thread-safe.

    `backend` is the anyio backend of the loop ("asyncio" or "trio"); `name` names its thread.
    Usable as a context manager (closes on exit). `close` may be followed by another `call`,
    which starts a fresh loop.
    """

    def __init__(self, *, backend: str = "asyncio", name: str = "envelope-portal") -> None:
        self.backend = backend
        self.name = name
        self._lock = threading.Lock()
        self._cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._thread_id: int | None = None
        self._pid: int | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Portal(backend={self.backend!r}, name={self.name!r}, {state})"

    @property
    def running(self) -> bool:
        return self._portal is not None and self._pid == os.getpid()

    def in_loop_thread(self) -> bool:
        """Is the calling thread the portal's own loop thread?"""
        return self.running and threading.get_ident() == self._thread_id

    def _started(self) -> BlockingPortal:
        portal = self._portal
        if portal is not None and self._pid == os.getpid():
            return portal
        with self._lock:
            if self._portal is None or self._pid != os.getpid():
                # After a fork the old loop thread does not exist here: forget it, do not stop it.
                cm = start_blocking_portal(self.backend, name=self.name)
                started = cm.__enter__()
                try:
                    thread_id = started.call(threading.get_ident)
                except BaseException:
                    cm.__exit__(None, None, None)
                    raise
                self._cm, self._portal = cm, started
                self._thread_id, self._pid = thread_id, os.getpid()
            return self._portal

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the portal's loop and block until it returns.

        Exceptions raised by the coroutine propagate unchanged. Raises ConfigurationError when
        called from the portal's own loop thread (that would deadlock).
        """
        if self.in_loop_thread():
            raise ConfigurationError(
                f"{self.name}: a blocking call from the portal's own event-loop thread would "
                "deadlock; await the coroutine directly instead"
            )
        job: Callable[[], Awaitable[T]] = partial(fn, *args, **kwargs)
        return self._started().call(job)

    def close(self, *, cancel: bool = False) -> None:
        """Stop the loop and join its thread.

        Calls in flight finish first, unless `cancel` (used at interpreter exit, so that a hung
        KMS call cannot hang the exit): then they are cancelled and their callers see
        cancellation errors.
        """
        if self.in_loop_thread():
            raise ConfigurationError(f"{self.name}: cannot close a portal from its own loop")
        with self._lock:
            cm, portal, mine = self._cm, self._portal, self._pid == os.getpid()
            self._cm = self._portal = None
            self._thread_id = self._pid = None
        if cm is None or portal is None or not mine:
            return
        if cancel:
            try:
                portal.call(portal.stop, True)
            except RuntimeError:  # already stopping
                pass
        cm.__exit__(None, None, None)

    def __enter__(self) -> Portal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: Portal | None = None
_default_lock = threading.Lock()


def default_portal() -> Portal:
    """The process-wide portal (asyncio loop, thread ``envelope-kms-portal``), closed at exit."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Portal(name="envelope-kms-portal")
    return _default


@atexit.register
def _close_default() -> None:
    portal = _default
    if portal is not None and not portal.in_loop_thread():
        portal.close(cancel=True)
