"""Key URIs: one string names a backend and a key.

    file:/path/to/key-file        a local wrapping key (envelope keygen)
    local:alias/demo              the embedded KMS under $ENVELOPE_HOME (key id, ARN or alias)
    alias/demo, KEY-ID, arn:...   shorthand for local:...

Backends are imported only when a URI names them, so optional parts stay optional.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import ConfigurationError
from .base import KmsBackend
from .filekey import FileKeyBackend

__all__ = ("open_backend", "open_local_backend")


def open_local_backend(
    home: str | os.PathLike[str] | None = None, *, must_exist: bool = False
) -> Any:
    """The embedded KMS backend over the store under `home` (default $ENVELOPE_HOME).

    With `must_exist`, a home without a store raises ConfigurationError instead of creating
    one (a reader has nothing to find in an empty KMS).
    """
    try:
        module = importlib.import_module("envelope.kms.local")
    except ImportError as e:
        raise ConfigurationError(f"the embedded KMS is not available: {e}") from None
    return module.open_local(home=home, must_exist=must_exist)


def open_backend(uri: str, *, home: str | os.PathLike[str] | None = None) -> tuple[KmsBackend, str]:
    """Return (backend, key id) for a key URI."""
    if not uri:
        raise ConfigurationError("empty key URI")
    if uri.startswith("file:"):
        backend = FileKeyBackend(uri[len("file:") :])
        return backend, backend.key_id
    if uri.startswith("local:"):
        uri = uri[len("local:") :]
    elif ":" in uri and not uri.startswith("arn:"):
        scheme = uri.split(":", 1)[0]
        raise ConfigurationError(f"unknown key URI scheme {scheme!r}")
    backend = open_local_backend(home)
    return backend, backend.resolve_key_id(uri) if hasattr(backend, "resolve_key_id") else uri
