"""Every error `envelope` raises, as one tree.

Callers catch by situation. The tree::

    EnvelopeError
     ├── InvalidObjectError            the bytes are not a valid object: trust none of it
     │    ├── AuthenticationError      opaque: segment tag, key commitment or header MAC failed
     │    │    └── TruncatedObjectError   the object ends before its final segment
     │    └── HeaderFormatError        malformed header (bad magic, a length over its limit, ...)
     │         ├── UnsupportedVersionError
     │         └── UnsupportedSuiteError
     ├── ContextMismatchError          the object's context lacks a pair the caller required
     ├── KmsError                      a key-management backend failed or refused
     │    ├── NoBackendError           no configured backend can unwrap this object's data key
     │    ├── KmsKeyError              the backend refused: unknown key, disabled key, wrong context
     │    │    └── KmsAccessDeniedError  no key policy, identity policy or grant allows the call
     │    └── KmsUnavailableError      throttled, timed out or unreachable
     │         ├── ThrottlingError     the backend's request-rate quota was exceeded
     │         ├── KmsTransientError   a 5xx, internal error or dropped connection
     │         ├── KmsTimeoutError     a connect or read timeout
     │         └── RetryExhaustedError  the retry layer gave up (attempts)
     │              ├── RetryBudgetExhaustedError   the backend's retry budget is empty
     │              └── RetryDeadlineExceededError  the call's deadline passed
     ├── ConfigurationError            a bad argument or setting (also a ValueError)
     │    ├── UnsafePathError          an object key or path cannot be mapped safely (lake jobs)
     │    ├── LockHeldError            another job holds the destination's lock (lake jobs)
     │    └── StaleLockError           the lock looks abandoned; --break-lock removes it
     └── ClosedError                   a reader or writer used after close

Every error class lives here, whichever module raises it, so `envelope.errors` is the one
place to import them from.

Why one opaque `AuthenticationError`: a tag failure, a commitment mismatch and a header-MAC
failure all mean "these bytes were not produced under this key"; telling them apart would give
an attacker an oracle and the user nothing to act on. `TruncatedObjectError` is the one named
case, because it is only raised after the last present segment *authenticated* as a non-final
segment, so naming it reveals nothing an attacker does not already know (how long the object is).

No message carries key material, plaintext or ciphertext bytes: messages name fields, lengths,
limits, key ids and segment indexes only.
"""

from __future__ import annotations

from typing import Literal

__all__ = (
    "AuthenticationError",
    "ClosedError",
    "ConfigurationError",
    "ContextMismatchError",
    "EnvelopeError",
    "HeaderFormatError",
    "InvalidObjectError",
    "KmsError",
    "KmsAccessDeniedError",
    "KmsKeyError",
    "KmsTimeoutError",
    "KmsTransientError",
    "KmsUnavailableError",
    "LockHeldError",
    "NoBackendError",
    "NoStoreError",
    "RetryBudgetExhaustedError",
    "RetryDeadlineExceededError",
    "RetryExhaustedError",
    "SourceChangedError",
    "StaleLockError",
    "ThrottlingError",
    "TruncatedObjectError",
    "UnencryptedParquetError",
    "UnsafePathError",
    "UnsupportedSuiteError",
    "UnsupportedVersionError",
)


class EnvelopeError(Exception):
    """Root of every error this library raises on purpose."""


class InvalidObjectError(EnvelopeError):
    """The input is not a valid `envelope` object; none of its plaintext may be trusted."""


class UnencryptedParquetError(InvalidObjectError):
    """A file read as PME-encrypted is not encrypted: pyarrow would read a plain file in its
    place without a word, so a writer with no key could swap forged rows in."""


class AuthenticationError(InvalidObjectError):
    """Authentication failed: a segment tag, the key commitment or the header MAC.

    Deliberately opaque. It means the object was altered, or was sealed under another data key.
    """

    def __init__(self, message: str = "authentication failed") -> None:
        super().__init__(message)


class TruncatedObjectError(AuthenticationError):
    """The object ends before its final segment.

    Raised when the body is empty, or when the last present segment fails as final but
    authenticates as a non-final segment (the object was cut at a segment boundary). A cut
    inside a segment, or any length no valid object can have, is the opaque
    AuthenticationError: nothing authenticated says more.
    """

    def __init__(self, message: str = "object is truncated: no final segment") -> None:
        super().__init__(message)


class HeaderFormatError(InvalidObjectError):
    """The header is malformed: bad magic, reserved bits set, a length over its named limit."""


class UnsupportedVersionError(HeaderFormatError):
    """The header declares a format version this library does not read."""


class UnsupportedSuiteError(HeaderFormatError):
    """The header declares an algorithm suite this library does not read or does not allow."""


class ContextMismatchError(EnvelopeError):
    """The object's per-object or KMS context lacks a pair the caller required."""


class KmsError(EnvelopeError):
    """A key-management backend failed or refused."""


class NoBackendError(KmsError):
    """No configured backend can unwrap any of the object's wrapped data keys."""


class KmsKeyError(KmsError):
    """The backend refused the key: unknown, disabled, wrong wrapping key or wrong context."""


class KmsAccessDeniedError(KmsKeyError):
    """The KMS denied the call: the caller lacks the permission the message names (a key
    policy, identity policy or grant), or a policy explicitly denies it. Not retryable."""


class KmsUnavailableError(KmsError):
    """The backend is throttling, timing out or unreachable, and retries are exhausted."""


class ThrottlingError(KmsUnavailableError):
    """The service refused the request because a request-rate quota was exceeded.

    The equivalent of AWS KMS's ``ThrottlingException``: always safe to retry after a backoff.
    `retry_after` (seconds), when known, is the earliest time a retry could succeed.
    """

    code = "ThrottlingException"

    def __init__(
        self,
        message: str = "rate exceeded",
        *,
        operation: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.retry_after = retry_after


class KmsTransientError(KmsUnavailableError):
    """A transient backend failure (HTTP 5xx, internal error, connection reset): retryable."""


class KmsTimeoutError(KmsUnavailableError):
    """A backend call timed out (connect or read timeout): retryable."""


class ConfigurationError(EnvelopeError, ValueError):
    """A bad argument or setting, caught before any data is touched."""


class NoStoreError(ConfigurationError):
    """There is no embedded KMS store where one must exist (`open_local_backend`'s
    `must_exist`): a reader has nothing to find in an empty KMS."""


class SourceChangedError(EnvelopeError):
    """The input changed while it was read (its size or modification time moved): nothing
    was written, and a run once it stopped changing does it (the CLI's exit 5, I/O)."""


class ClosedError(EnvelopeError):
    """A reader or writer was used after it was closed."""


class RetryExhaustedError(KmsUnavailableError):
    """The retry layer (`envelope.kms.retry`) gave up; `__cause__` is the last backend error.

    `reason` is "attempts", "budget" or "deadline"; `kind` the `ErrorKind` of the last error.
    """

    reason: Literal["attempts", "budget", "deadline"] = "attempts"

    def __init__(
        self, message: str, *, backend: str, operation: str, attempts: int, kind: object
    ) -> None:
        super().__init__(message)
        self.backend = backend
        self.operation = operation
        self.attempts = attempts
        self.kind = kind


class RetryBudgetExhaustedError(RetryExhaustedError):
    """The backend's retry budget is empty: failing fast instead of adding to a retry storm."""

    reason: Literal["attempts", "budget", "deadline"] = "budget"


class RetryDeadlineExceededError(RetryExhaustedError):
    """The call's overall deadline passed (or the next backoff would cross it)."""

    reason: Literal["attempts", "budget", "deadline"] = "deadline"


class UnsafePathError(ConfigurationError):
    """An object's key cannot be mapped safely to a path under the destination."""


class LockHeldError(ConfigurationError):
    """Another job holds the destination's lock; `holder` says who (or None if unreadable)."""

    def __init__(self, message: str, holder: object | None) -> None:
        super().__init__(message)
        self.holder = holder


class StaleLockError(ConfigurationError):
    """The destination's lock looks abandoned but cannot be proven so; `break_lock` removes it."""

    def __init__(self, message: str, holder: object | None) -> None:
        super().__init__(message)
        self.holder = holder
