"""How to reach a token: the PKCS#11 module, the token's label, the user PIN, the pool size.

The PIN is a secret: it is never in a repr, a message or a pickle. Where it comes from when it is
not given directly is `pin_from_source`: a file (RFC 7512's ``pin-source=file:...``) or
``$ENVELOPE_HSM_PIN``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError
from ..printable import is_utf8

__all__ = ("PIN_ENV", "TokenConfig", "pin_from_source")

#: The environment variable a PIN is read from when no other source is named.
PIN_ENV = "ENVELOPE_HSM_PIN"
#: PKCS#11 puts no bound on a PIN; a PIN file larger than this is not a PIN file.
_MAX_PIN_FILE = 4096


@dataclass(frozen=True, repr=False)
class TokenConfig:
    """Where a token is and how to log in to it (CKU_USER).

    `pool_size` bounds the sessions one process keeps open on the token: at most that many token
    calls run at once in this process; more threads wait for a session.
    """

    module: str
    token_label: str
    pin: str
    pool_size: int = 8

    def __post_init__(self) -> None:
        if not self.module:
            raise ConfigurationError("a token needs the path of its PKCS#11 module")
        if not self.token_label:
            raise ConfigurationError("a token needs its label")
        if not self.pin:
            raise ConfigurationError(f"the token's user PIN is empty (set ${PIN_ENV})")
        if not is_utf8(self.pin) or not is_utf8(self.token_label):
            raise ConfigurationError(
                "the token's label or user PIN is not UTF-8 text (bytes of another encoding)"
            )
        if len(self.token_label.encode("utf-8")) > 32:
            raise ConfigurationError("a PKCS#11 token label is at most 32 bytes")
        if not isinstance(self.pool_size, int) or not 1 <= self.pool_size <= 1024:
            raise ConfigurationError("pool_size is a session count from 1 to 1024")

    def __repr__(self) -> str:
        return (
            f"TokenConfig(module={self.module!r}, token_label={self.token_label!r}, "
            f"pin=<secret>, pool_size={self.pool_size})"
        )

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a token configuration holds a PIN and cannot be pickled")


def pin_from_source(source: str | None = None) -> str:
    """The user PIN: from `source` (``file:/path``, RFC 7512's ``pin-source``; the file's first
    line) or, without a source, from ``$ENVELOPE_HSM_PIN``."""
    if source is None:
        pin = os.environ.get(PIN_ENV, "")
        if not pin:
            raise ConfigurationError(
                f"no PIN for the token: set ${PIN_ENV} or give pin-source=file:/path"
            )
        return pin
    if not source.startswith("file:"):
        raise ConfigurationError(
            "pin-source must be a file: URI (pin-source=file:/path/to/pin-file)"
        )
    path = Path(source[len("file:") :].removeprefix("//"))
    if not path.is_absolute():
        # not quoted: a PIN written where the path goes would be shown (review)
        raise ConfigurationError("pin-source is file: and an absolute path (file:/path/to/pin)")
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_PIN_FILE + 1)
    except OSError as e:
        raise ConfigurationError(f"cannot read the PIN file {path}: {e.strerror}") from None
    if len(raw) > _MAX_PIN_FILE:
        raise ConfigurationError(f"the PIN file {path} is larger than {_MAX_PIN_FILE} bytes")
    try:
        lines: list[str] | None = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        lines = None  # raised below, outside: the decode error holds the file (the PIN)
    if lines is None:
        raise ConfigurationError(f"the PIN file {path} is not UTF-8 text")
    if not lines or not lines[0]:
        raise ConfigurationError(f"the PIN file {path} is empty")
    return lines[0]
