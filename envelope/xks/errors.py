"""Errors of the XKS proxy API, for both of its sides.

    XksError (EnvelopeError)
     ├── XksProxyError        the proxy answered with an XKS error (errorName, HTTP status);
     │                        also what `envelope xks serve` raises inside to answer one
     ├── XksInvalidResponse   the proxy's answer is not what the specification allows (not
     │                        JSON, a member missing, a wrong length, a CDIV that does not match)
     └── XksTransportError    no answer at all
          ├── XksUnreachable  cannot connect (refused, no route, name not found, connection
          │                   dropped before an answer)
          ├── XksTimeout      no answer within the timeout (connect or read)
          └── XksTlsError     the TLS handshake failed (untrusted CA, wrong host name, protocol)

The KMS maps them onto its own errors and ConnectionErrorCodes (the specification's "KMS
Considerations" table). No message carries a secret, plaintext, AAD or key material: they
name operations, key ids, members and lengths.
"""

from __future__ import annotations

from ..errors import EnvelopeError
from .spec import ERROR_STATUS, error_message

__all__ = (
    "XksError",
    "XksInvalidResponse",
    "XksProxyError",
    "XksTimeout",
    "XksTlsError",
    "XksTransportError",
    "XksUnreachable",
)


class XksError(EnvelopeError):
    """Root of the XKS errors."""


class XksProxyError(XksError):
    """An XKS error answer: `error_name` (one of `spec.ERROR_STATUS`), `message` (the
    optional errorMessage: printable ASCII, under 512 characters) and the HTTP `status`
    (by default the specification's status for the name)."""

    def __init__(self, error_name: str, message: str = "", status: int | None = None) -> None:
        self.error_name = error_name
        self.message = error_message(message)
        self.status = status if status is not None else ERROR_STATUS.get(error_name, 500)
        super().__init__(
            f"{error_name} ({self.status})" + (f": {self.message}" if self.message else "")
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.error_name, self.message, self.status))


class XksInvalidResponse(XksError):
    """The proxy answered something the specification does not allow."""


class XksTransportError(XksError):
    """The request got no answer from the proxy."""


class XksUnreachable(XksTransportError):
    """No connection to the proxy (or it closed before answering)."""


class XksTimeout(XksTransportError):
    """No answer within the per-request timeout."""


class XksTlsError(XksTransportError):
    """The TLS connection to the proxy could not be established or verified."""
