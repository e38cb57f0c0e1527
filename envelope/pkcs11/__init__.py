"""Keys in a PKCS#11 token (an HSM, or SoftHSM2 in tests), used through python-pkcs11.

    from envelope.pkcs11 import Token, TokenConfig
    token = Token.open(TokenConfig(module, token_label, pin))

`Token` (``token``) is the whole interface: AES-256 keys that never leave the token, AES-GCM
inside it, safe from many threads and processes. The parts: `config` (where the token is),
`library` (one initialisation with CKF_OS_LOCKING_OK and one login per process), `pool` (the
sessions), `cryptoki` (the calls made through ctypes), `failures` (return values to errors),
`errors`, `metrics` (``envelope_hsm_call_seconds``) and `uri` (``pkcs11:`` URIs, RFC 7512).
python-pkcs11 (the ``hsm`` extra) is imported only when a token is first opened.
"""

from __future__ import annotations

from .config import TokenConfig, pin_from_source
from .errors import (
    ConnectionErrorCode,
    KeyAlreadyInToken,
    KeyNotInToken,
    KeyNotProtected,
    TokenDecryptError,
    TokenError,
    TokenUnavailable,
)
from .token import KeyHandle, Token, probe_token

__all__ = (
    "ConnectionErrorCode",
    "KeyAlreadyInToken",
    "KeyHandle",
    "KeyNotInToken",
    "KeyNotProtected",
    "Token",
    "TokenConfig",
    "TokenDecryptError",
    "TokenError",
    "TokenUnavailable",
    "pin_from_source",
    "probe_token",
)
