"""What a token call can fail with, as one small tree under `envelope.errors.EnvelopeError`.

    TokenError                  a token call failed (the PKCS#11 return value is named)
     ├── TokenUnavailable       the token cannot be used at all: `code` says why
     ├── KeyNotInToken          no secret key with that label in the token
     ├── KeyAlreadyInToken      create_aes_key with a label that is taken
     └── TokenDecryptError      AES-GCM did not verify: wrong key, IV, AAD, or altered bytes

`TokenUnavailable.code` is one of the ConnectionErrorCode values AWS KMS gives a CloudHSM key
store, so the service can hand it on unchanged. No message carries a PIN, key material or
plaintext: they name the module path, the token label, key labels and PKCS#11 return values.
"""

from __future__ import annotations

from typing import Literal

from ..errors import EnvelopeError

__all__ = (
    "ConnectionErrorCode",
    "KeyAlreadyInToken",
    "KeyNotInToken",
    "KeyNotProtected",
    "TokenDecryptError",
    "TokenError",
    "TokenListingError",
    "TokenUnavailable",
)

#: The subset of AWS KMS's ConnectionErrorCode that a PKCS#11 token can produce.
ConnectionErrorCode = Literal[
    "CLUSTER_NOT_FOUND",  # the module does not load, or no token carries the label
    "INVALID_CREDENTIALS",  # wrong PIN
    "USER_LOCKED_OUT",  # the user PIN is locked
    "USER_NOT_FOUND",  # the user PIN was never initialised
    "NETWORK_ERRORS",  # the device was removed, or stopped answering
    "INTERNAL_ERROR",  # anything else
]


class TokenError(EnvelopeError):
    """A call into the PKCS#11 token failed."""


class TokenListingError(TokenError):
    """The module could not list its tokens (SoftHSM2 answers CKR_GENERAL_ERROR for ever
    once a token's files were deleted under the process): starting the module over may
    help, which `Token` does once."""


class TokenUnavailable(TokenError):
    """The token cannot be used: the module, the token, the login or the device failed."""

    def __init__(self, code: ConnectionErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ConnectionErrorCode = code
        self.message = message


class KeyNotProtected(TokenError):
    """The key with the label and CKA_ID the KMS recorded is no longer as protected as it was
    made (generated in the token, sensitive, never extractable): it is not used."""

    def __init__(self, label: str, wrong: list[str]) -> None:
        super().__init__(
            f"the key labelled {label!r} in the token is not {', '.join(wrong)} as the KMS made "
            "it: it is not used (its value may be known outside the token)"
        )
        self.label = label


class KeyNotInToken(TokenError):
    """No secret key with this label is in the token."""

    def __init__(self, label: str) -> None:
        super().__init__(f"no secret key labelled {label!r} in the token")
        self.label = label


class KeyAlreadyInToken(TokenError):
    """A key with this label is already in the token (labels name keys, so they stay unique)."""

    def __init__(self, label: str) -> None:
        super().__init__(f"a key labelled {label!r} is already in the token")
        self.label = label


class TokenDecryptError(TokenError):
    """The token's AES-GCM refused the ciphertext: its tag does not verify under this key,
    IV and AAD. Deliberately one error, whatever was altered."""

    def __init__(self, message: str = "the ciphertext does not verify under this key") -> None:
        super().__init__(message)
