"""A bounded pool of sessions: a thread borrows one session for one token call.

A PKCS#11 session runs one operation at a time, and opening one per call costs a round trip
(on a network HSM, several). So each process keeps up to `size` sessions open and lends each to
one thread at a time; a thread that finds none free waits (up to `timeout` seconds, then the
token is reported unavailable rather than hanging the caller for ever).

Sessions are opened lazily, so a process that makes one call at a time keeps one session. The
pool is most-recently-used first, so a lightly loaded process keeps reusing the same few.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import TokenUnavailable

__all__ = ("SessionPool",)

S = TypeVar("S")


class SessionPool(Generic[S]):
    """Up to `size` sessions made by `open_session`, closed by `close_session`."""

    def __init__(
        self,
        open_session: Callable[[], S],
        close_session: Callable[[S], None],
        size: int,
        *,
        timeout: float = 30.0,
    ) -> None:
        self.size = size
        self._open = open_session
        self._close = close_session
        self._timeout = timeout
        self._free = threading.BoundedSemaphore(size)  # sessions not lent out (or not opened)
        self._lock = threading.Lock()
        self._idle: list[S] = []
        self._closed = False
        self.opened = 0  # sessions opened over the pool's life (a statistic for tests and docs)

    def borrow(self) -> S:
        if not self._free.acquire(timeout=self._timeout):
            raise TokenUnavailable(
                "NETWORK_ERRORS",
                f"no token session came free in {self._timeout:g} s ({self.size} busy)",
            )
        try:
            with self._lock:
                if self._closed:
                    raise TokenUnavailable("INTERNAL_ERROR", "the token was closed")
                if self._idle:
                    return self._idle.pop()
            session = self._open()
            with self._lock:
                self.opened += 1
            return session
        except BaseException:
            self._free.release()
            raise

    def give_back(self, session: S) -> None:
        """Return a session that is fine for the next call."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._idle.append(session)
        if closed:
            self._quietly_close(session)
        self._free.release()

    def discard(self, session: S) -> None:
        """Drop a session that failed in a way that may leave it unusable."""
        self._quietly_close(session)
        self._free.release()

    def close(self) -> None:
        """Close the idle sessions now, and the lent ones as they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for session in idle:
            self._quietly_close(session)

    def _quietly_close(self, session: S) -> None:
        try:
            self._close(session)
        except Exception:  # a session that will not close is gone for us either way
            pass
