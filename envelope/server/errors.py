"""Errors as the AWS KMS JSON protocol shows them: ``__type``, ``message`` and a status code.

A refusal on the wire is ``{"__type": CODE, "message": TEXT}`` with the HTTP status AWS uses for
that code. The KMS API reference gives 400 for every KMS error except `KMSInternalException`
and `KeyUnavailableException` (500) and `DependencyTimeoutException` (503); of the common errors
of every AWS API, `InternalFailure` is 500. Authentication refusals (`envelope.server.auth`)
carry their own status, 400, as AWS's JSON-protocol services answer them. Everything else a
client can see (validation, throttling, access denied, malformed requests) is 400, as AWS KMS
answers it.

`WireError` is what the HTTP layer raises for refusals that happen before the service is called
(unknown operation, unparseable body, a member that fails the model's constraints); the
service's own `KmsServiceError` carries a `code` and message and gets its status from
`status_for`.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = (
    "INTERNAL_MESSAGE",
    "SILENT",
    "STATUS",
    "WireError",
    "status_for",
)

#: Codes whose status is not 400 (AWS KMS API reference; AWS common errors).
STATUS: Mapping[str, int] = {
    "KMSInternalException": 500,
    "KeyUnavailableException": 500,
    "InternalFailure": 500,
    "DependencyTimeoutException": 503,
    "ServiceUnavailable": 503,
    "UnrecognizedClientException": 400,
    "MissingAuthenticationTokenException": 400,
    "RequestEntityTooLargeException": 413,
}

#: Codes AWS answers with no message at all (recorded against AWS: a ciphertext that does not
#: open, a signature or MAC that does not verify say nothing about why). In process, the
#: library and the CLI still get the service's reason.
SILENT: frozenset[str] = frozenset(
    {"InvalidCiphertextException", "KMSInvalidSignatureException", "KMSInvalidMacException"}
)

#: What a client is told about a failure inside the server; the detail goes to the log only.
INTERNAL_MESSAGE = "The service encountered an internal error. Try again later."


def status_for(code: str) -> int:
    """The HTTP status AWS answers `code` with (400 unless listed in `STATUS`)."""
    return STATUS.get(code, 400)


class WireError(Exception):
    """A refusal produced by the HTTP layer itself, already in AWS's terms."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status_for(code) if status is None else status
