"""envelope: high-throughput envelope encryption of data at rest.

The public surface: the async recipes (`encrypt`, `decrypt`, `encrypt_bytes`, `decrypt_bytes`,
`encrypt_into`, `decrypt_into`, `encrypt_many`, `decrypt_many`, `rewrap`), their blocking twins
in `envelope.sync`, the `Keyring` that says which keys to use with its `CachePolicy` and
`RetryPolicy`, `open_backend` for a key URI, and the seekable reader `open_decrypted`. Every
error class lives in `envelope.errors`, and only there.

`_EXPORTS` below is the one table: it makes `__all__` and the lazy-import map. Names are loaded
on first use, so importing a part that does not need the encryptor (the KMS service,
`envelope.service`) does not load it. The `TYPE_CHECKING` imports repeat the table for type
checkers; a test holds the two equal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from .api import ObjectInfo as ObjectInfo
    from .api import Options as Options
    from .api import decrypt as decrypt
    from .api import decrypt_bytes as decrypt_bytes
    from .api import decrypt_into as decrypt_into
    from .api import decrypt_many as decrypt_many
    from .api import encrypt as encrypt
    from .api import encrypt_bytes as encrypt_bytes
    from .api import encrypt_into as encrypt_into
    from .api import encrypt_many as encrypt_many
    from .api import rewrap as rewrap
    from .keycache import CachePolicy as CachePolicy
    from .keyring import Keyring as Keyring
    from .kms.base import DataKey as DataKey
    from .kms.base import KmsBackend as KmsBackend
    from .kms.retry import RetryPolicy as RetryPolicy
    from .kms.uri import open_backend as open_backend
    from .reader import aopen_decrypted as aopen_decrypted
    from .reader import open_decrypted as open_decrypted

#: Public name -> the module (relative to this package) that defines it.
_EXPORTS: dict[str, str] = {
    "ObjectInfo": "api",
    "Options": "api",
    "decrypt": "api",
    "decrypt_bytes": "api",
    "decrypt_into": "api",
    "decrypt_many": "api",
    "encrypt": "api",
    "encrypt_bytes": "api",
    "encrypt_into": "api",
    "encrypt_many": "api",
    "rewrap": "api",
    "CachePolicy": "keycache",
    "Keyring": "keyring",
    "DataKey": "kms.base",
    "KmsBackend": "kms.base",
    "RetryPolicy": "kms.retry",
    "open_backend": "kms.uri",
    "aopen_decrypted": "reader",
    "open_decrypted": "reader",
}

__all__ = tuple(sorted(_EXPORTS))


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'envelope' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
