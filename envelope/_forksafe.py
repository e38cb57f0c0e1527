"""Locks that a forked child gets fresh, never as another thread held them at the fork.

`os.fork()` copies only the calling thread: a lock another thread held at that moment stays
held in the child, and the child's first use of it waits for ever. Objects whose `_lock`
guards state the child goes on using (a retry budget, a key-file backend) register here and
get a new lock of the same kind in the child (an adversarial review forked while a thread
was inside `RetryBudget.release`: 20 of 20 children hung on their first encrypt).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ("renew_after_fork", "renew_global_after_fork")

_RLOCK = type(threading.RLock())
_holders: weakref.WeakSet[Any] = weakref.WeakSet()
_globals: list[tuple[dict[str, Any], str]] = []


def renew_after_fork(holder: Any) -> None:
    """Give `holder._lock` (a `threading.Lock` or `RLock`) a fresh lock in a forked child."""
    _holders.add(holder)


def renew_global_after_fork(namespace: dict[str, Any], name: str) -> None:
    """The same for a module's lock: `renew_global_after_fork(globals(), "_lock_name")`."""
    _globals.append((namespace, name))


def _fresh(lock: Any) -> Any:
    return threading.RLock() if isinstance(lock, _RLOCK) else threading.Lock()


def _after_fork_in_child() -> None:
    for holder in list(_holders):
        holder._lock = _fresh(holder._lock)
    for namespace, name in _globals:
        namespace[name] = _fresh(namespace[name])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
