"""The embedded KMS: a key-lifecycle service modelled on AWS KMS over a durable SQLite store.

`open_service()` opens the store under ``$ENVELOPE_HOME`` (default ``~/.envelope``) with the
root-key file next to it and returns a `KeyService`. The service never imports the encryptor;
`envelope.kms.local` adapts it to the encryptor's `KmsBackend` Protocol.
"""

from __future__ import annotations

from ._authz import via_service as via_service
from ._home import ROOT_KEY_NAME as ROOT_KEY_NAME
from ._home import default_home as default_home
from ._home import home_paths as home_paths
from ._home import open_service as open_service
from ._home import store_path as store_path
from .errors import KmsServiceError as KmsServiceError
from .errors import RootKeyError as RootKeyError
from .rootkey import FileRootKey as FileRootKey
from .rootkey import PassphraseRootKey as PassphraseRootKey
from .rootkey import RootKeyProvider as RootKeyProvider
from .service import KeyService as KeyService
from .service import RequestContext as RequestContext
from .store import Store as Store

__all__ = (
    "FileRootKey",
    "KeyService",
    "KmsServiceError",
    "PassphraseRootKey",
    "RequestContext",
    "RootKeyError",
    "RootKeyProvider",
    "Store",
    "default_home",
    "open_service",
    "ROOT_KEY_NAME",
    "home_paths",
    "store_path",
    "via_service",
)
