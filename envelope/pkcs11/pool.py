"""A bounded pool of sessions: a thread borrows one session for one token call.

A PKCS#11 session runs one operation at a time, and opening one per call costs a round trip
(on a network HSM, several). So each process keeps up to `size` sessions open and lends each to
one thread at a time; a thread that finds none free waits (up to `timeout` seconds, then the
token is reported unavailable rather than hanging the caller for ever).

Sessions are opened lazily, so a process that makes one call at a time keeps one session. The
pool is most-recently-used first, so a lightly loaded process keeps reusing the same few.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import TokenUnavailable

__all__ = ("SessionPool",)

S = TypeVar("S")


class SessionPool(Generic[S]):
    """Up to `size` sessions made by `open_session`, closed by `close_session`.

    A queue holds one ticket per session that may be lent (`size` in all); a borrower takes a
    ticket, then an idle session or, if none is idle, opens one. Both are C-level structures
    (`queue.SimpleQueue`, `collections.deque`), so a borrow and a return cost about a
    microsecond and no Python-level lock.
    """

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
        self._tickets: queue.SimpleQueue[bool] = queue.SimpleQueue()
        for _ in range(size):
            self._tickets.put(True)
        self._idle: deque[S] = deque()  # most recently returned last (LIFO)
        self._closed = False
        self.opened = 0  # sessions opened over the pool's life (a statistic for tests and docs)

    def borrow(self) -> S:
        try:
            self._tickets.get(timeout=self._timeout)
        except queue.Empty:
            raise TokenUnavailable(
                "NETWORK_ERRORS",
                f"no token session came free in {self._timeout:g} s ({self.size} busy)",
            ) from None
        try:
            if self._closed:
                raise TokenUnavailable("INTERNAL_ERROR", "the token was closed")
            try:
                return self._idle.pop()
            except IndexError:
                session = self._open()
                self.opened += 1
                return session
        except BaseException:
            self._tickets.put(True)
            raise

    def give_back(self, session: S) -> None:
        """Return a session that is fine for the next call."""
        if self._closed:
            self._quietly_close(session)
        else:
            self._idle.append(session)
            if self._closed:  # closed meanwhile: `close` may have missed it
                self._drain()
        self._tickets.put(True)

    def discard(self, session: S) -> None:
        """Drop a session that failed in a way that may leave it unusable."""
        self._quietly_close(session)
        self._tickets.put(True)

    def close(self) -> None:
        """Close the idle sessions now, and the lent ones as they come back."""
        self._closed = True
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                session = self._idle.pop()
            except IndexError:
                return
            self._quietly_close(session)

    def _quietly_close(self, session: S) -> None:
        try:
            self._close(session)
        except Exception:  # a session that will not close is gone for us either way
            pass
