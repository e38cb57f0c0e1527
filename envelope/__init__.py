"""envelope: high-throughput envelope encryption of data at rest.

The public surface: async recipes (`encrypt`, `decrypt`, `encrypt_bytes`, `decrypt_bytes`),
their blocking twins in `envelope.sync`, the `Keyring` that says which keys to use, the
seekable reader, and the error tree in `envelope.errors`.
"""

from __future__ import annotations

from .api import ObjectInfo as ObjectInfo
from .api import Options as Options
from .api import decrypt as decrypt
from .api import decrypt_bytes as decrypt_bytes
from .api import encrypt as encrypt
from .api import encrypt_bytes as encrypt_bytes
from .errors import AuthenticationError as AuthenticationError
from .errors import ContextMismatchError as ContextMismatchError
from .errors import EnvelopeError as EnvelopeError
from .keyring import Keyring as Keyring
from .kms.base import DataKey as DataKey
from .kms.base import KmsBackend as KmsBackend

__version__ = "0.1.0"

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
    "encrypt",
    "encrypt_bytes",
)
