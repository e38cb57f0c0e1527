"""Blocking versions of the recipes in `envelope.api`, for code without an event loop.

Each call runs the async recipe to completion on a fresh event loop (anyio.run). Do not call
these from inside a running event loop: use the `envelope.api` coroutines there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import anyio

from . import api
from .errors import ConfigurationError

__all__ = (
    "decrypt",
    "decrypt_bytes",
    "decrypt_into",
    "encrypt",
    "encrypt_bytes",
    "encrypt_into",
    "run",
)

T = TypeVar("T")


def run(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run one coroutine function to completion on a new event loop."""
    try:
        return anyio.run(partial(fn, *args, **kwargs))
    except RuntimeError as e:
        if "already running" in str(e).lower() or "running event loop" in str(e):
            raise ConfigurationError(
                "envelope.sync cannot run inside an event loop; await the envelope.api functions"
            ) from None
        raise


def encrypt(*args: Any, **kwargs: Any) -> api.ObjectInfo:
    """Blocking `envelope.api.encrypt`."""
    return run(api.encrypt, *args, **kwargs)


def decrypt(*args: Any, **kwargs: Any) -> api.ObjectInfo:
    """Blocking `envelope.api.decrypt`."""
    return run(api.decrypt, *args, **kwargs)


def encrypt_bytes(*args: Any, **kwargs: Any) -> bytearray:
    """Blocking `envelope.api.encrypt_bytes`."""
    return run(api.encrypt_bytes, *args, **kwargs)


def decrypt_bytes(*args: Any, **kwargs: Any) -> bytearray:
    """Blocking `envelope.api.decrypt_bytes`."""
    return run(api.decrypt_bytes, *args, **kwargs)


def encrypt_into(*args: Any, **kwargs: Any) -> int:
    """Blocking `envelope.api.encrypt_into`."""
    return run(api.encrypt_into, *args, **kwargs)


def decrypt_into(*args: Any, **kwargs: Any) -> int:
    """Blocking `envelope.api.decrypt_into`."""
    return run(api.decrypt_into, *args, **kwargs)
