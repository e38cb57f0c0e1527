"""Standard input, output and error that the command was started without.

A process started with a standard descriptor closed (``2>&-``, ``>&-``, ``<&-``, a careless
supervisor) has that number free: the first file the command opened took it, so its output
file became "standard error" and a notice (the new embedded KMS's) went into the middle of the
ciphertext, which then failed to decrypt, with exit 0; Python also leaves `sys.stderr` None
there, and `print(..., file=None)` writes to standard output (review). `hold` fills each
closed one with ``/dev/null`` before anything else is opened, and remembers which were closed:
a command that must read or write one of them (``-``, a data summary) is refused with a
usage error instead of reading nothing or printing into the void.
"""

from __future__ import annotations

import os
import sys

from ..errors import ConfigurationError

__all__ = ("hold", "is_closed", "require_open")

_NAMES = {0: "input", 1: "output", 2: "error"}

#: The standard descriptors this process was started without.
_closed: set[int] = set()


def hold() -> None:
    """Fill every closed standard descriptor with ``/dev/null`` (for a process of its own:
    `envelope.cli.main.run`), and give Python's streams back where it left them None."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _closed.add(fd)
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:  # (lower numbers are open: the lowest free is this one)
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, encoding="utf-8", closefd=False)
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)


def is_closed(fd: int) -> bool:
    """Whether standard descriptor `fd` was closed when the command started."""
    return fd in _closed


def require_open(fd: int, why: str) -> None:
    """ConfigurationError if standard descriptor `fd` was closed when the command started."""
    if fd in _closed:
        raise ConfigurationError(f"standard {_NAMES[fd]} is closed, and {why}")
