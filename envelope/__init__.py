"""envelope: high-throughput envelope encryption of data at rest.

The public surface: async recipes (`encrypt`, `decrypt`, `encrypt_bytes`, `decrypt_bytes`,
`encrypt_into`, `decrypt_into`, `rewrap`), their blocking twins in `envelope.sync`, the
`Keyring` that says which keys to use, the seekable reader in `envelope.reader`, and the error
tree in `envelope.errors`.

Names are loaded on first use, so importing a part that does not need the encryptor (the KMS
service, `envelope.service`) does not load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import ObjectInfo as ObjectInfo
    from .api import Options as Options
    from .api import decrypt as decrypt
    from .api import decrypt_bytes as decrypt_bytes
    from .api import decrypt_into as decrypt_into
    from .api import encrypt as encrypt
    from .api import encrypt_bytes as encrypt_bytes
    from .api import encrypt_into as encrypt_into
    from .api import rewrap as rewrap
    from .errors import AuthenticationError as AuthenticationError
    from .errors import ContextMismatchError as ContextMismatchError
    from .errors import EnvelopeError as EnvelopeError
    from .keyring import Keyring as Keyring
    from .kms.base import DataKey as DataKey
    from .kms.base import KmsBackend as KmsBackend

from ._version import __version__ as __version__

_WHERE = {
    "ObjectInfo": "api",
    "Options": "api",
    "decrypt": "api",
    "decrypt_bytes": "api",
    "decrypt_into": "api",
    "encrypt": "api",
    "encrypt_bytes": "api",
    "encrypt_into": "api",
    "rewrap": "api",
    "AuthenticationError": "errors",
    "ContextMismatchError": "errors",
    "EnvelopeError": "errors",
    "Keyring": "keyring",
    "DataKey": "kms.base",
    "KmsBackend": "kms.base",
}

__all__ = (
    "AuthenticationError",
    "ContextMismatchError",
    "DataKey",
    "EnvelopeError",
    "Keyring",
    "KmsBackend",
    "ObjectInfo",
    "Options",
    "decrypt",
    "decrypt_bytes",
    "decrypt_into",
    "encrypt",
    "encrypt_bytes",
    "encrypt_into",
    "rewrap",
)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'envelope' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
