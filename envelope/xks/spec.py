"""The AWS KMS External Key Store (XKS) Proxy API, version 1, as data: paths, members, limits,
error names and statuses, and the two byte strings both sides compute.

Source: "AWS KMS External Key Store (XKS) Proxy API Specification" v1.0.3 (May 2024,
github.com/aws/aws-kms-xksproxy-api-spec). Every constant below names the sentence of the
specification it comes from; where the specification is silent, docs/xks.md records the choice.

    POST {prefix}/kms/xks/v1/health                      GetHealthStatus
    POST {prefix}/kms/xks/v1/keys/{keyId}/metadata       GetKeyMetadata
    POST {prefix}/kms/xks/v1/keys/{keyId}/encrypt        Encrypt
    POST {prefix}/kms/xks/v1/keys/{keyId}/decrypt        Decrypt

JSON bodies (``Content-Type: application/json``), byte strings as standard padded Base64
(RFC 4648 section 4), every request signed with SigV4 for the service ``kms-xks-proxy``
(``SignedHeaders=host;x-amz-date``). An error is ``{"errorName": ..., "errorMessage": ...}``
with the status of `ERROR_STATUS`.

Both the client (`envelope.xks.client`, what the KMS calls) and the proxy (`envelope.xks.app`)
import this module, so the two sides cannot disagree on a name or a limit.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = (
    "AES_GCM",
    "API_PATH",
    "CDIV_SHA_256",
    "DEFAULT_TIMEOUT",
    "ERROR_STATUS",
    "HEALTH_STATUSES",
    "IV_LENGTHS",
    "KEY_SPEC_AES_256",
    "KEY_STATUSES",
    "MAX_CIPHERTEXT_METADATA",
    "MIN_AAD_SUPPORTED",
    "MIN_PLAINTEXT_SUPPORTED",
    "OPERATIONS",
    "SERVICE",
    "TAG_LENGTH",
    "RequestMetadata",
    "SpecViolation",
    "b64decode",
    "b64encode",
    "cdiv",
    "check_access_key_id",
    "check_key_id",
    "check_secret_access_key",
    "error_message",
    "key_path",
    "health_path",
    "proxy_aad",
    "split_uri_path",
)

#: "we use `kms-xks-proxy` for this specification" (Appendix A): the SigV4 service name.
SERVICE: Final = "kms-xks-proxy"
#: The fixed part of every URI: ``https://<server>[/<optional-path-prefix>]/kms/xks/v1``.
API_PATH: Final = "/kms/xks/v1"

#: Operation name -> the last path segment that selects it.
OPERATIONS: Final[Mapping[str, str]] = {
    "GetHealthStatus": "health",
    "GetKeyMetadata": "metadata",
    "Encrypt": "encrypt",
    "Decrypt": "decrypt",
}

#: "For the v1 specification, this MUST be AES_GCM" (encryptionAlgorithm).
AES_GCM: Final = "AES_GCM"
#: "For the first version (v1) of this specification, this MUST be SHA_256" (CDIV algorithm).
CDIV_SHA_256: Final = "SHA_256"
#: "The XKS Proxy must use the string AES_256 to indicate a 256-bit AES key" (keySpec).
KEY_SPEC_AES_256: Final = "AES_256"
#: "The supported values are ENABLED and DISABLED" (keyStatus).
KEY_STATUSES: Final = frozenset({"ENABLED", "DISABLED"})
#: "The possible statuses are ACTIVE, DEGRADED and UNAVAILABLE" (ekmFleetDetails.healthStatus).
HEALTH_STATUSES: Final = frozenset({"ACTIVE", "DEGRADED", "UNAVAILABLE"})
#: "The response MUST NOT contain more than ten keyUsage values"; "at least one and no more
#: than ten entries in ekmFleetDetails".
MAX_KEY_USAGES: Final = 10
MAX_EKM_FLEET: Final = 10

#: "The initialization vector MUST be either 12 bytes (96 bits) or 16 bytes (128 bits)".
IV_LENGTHS: Final = frozenset({12, 16})
#: "Authentication tag size MUST be 16 bytes (128 bits)".
TAG_LENGTH: Final = 16
#: "When present, the size of the field MUST NOT exceed 20 bytes" (ciphertextMetadata).
MAX_CIPHERTEXT_METADATA: Final = 20
#: "The proxy MUST support the ability to process up to 4300 bytes of plaintext data" (and
#: "4300 bytes of ciphertext" for Decrypt).
MIN_PLAINTEXT_SUPPORTED: Final = 4300
#: "The XKS Proxy MUST be able to handle AAD values up to 8192 bytes in length".
MIN_AAD_SUPPORTED: Final = 8192
#: The AAD length travels in 2 bytes (proxy_aad), so no AAD can be longer than this.
MAX_AAD: Final = 0xFFFF
#: "If KMS does not receive a response from the XKS proxy for any API call within 250ms, KMS
#: will time out" (seconds).
DEFAULT_TIMEOUT: Final = 0.25
#: "Any requests more than 5 minutes in the past (or future, due to clock drift) SHOULD fail
#: authentication" (seconds).
SKEW: Final = 300.0
#: "The XKS Proxy MUST support ARN lengths of up to 2048 characters".
MAX_ARN: Final = 2048

#: Error name -> HTTP status ("Error codes" table).
ERROR_STATUS: Final[Mapping[str, int]] = {
    "ValidationException": 400,
    "InvalidStateException": 400,
    "InvalidCiphertextException": 400,
    "InvalidKeyUsageException": 400,
    "AuthenticationFailedException": 401,
    "AccessDeniedException": 403,
    "KeyNotFoundException": 404,
    "InvalidUriPathException": 404,
    "ThrottlingException": 429,
    "InternalException": 500,
    "UnsupportedOperationException": 501,
    "DependencyTimeoutException": 503,
}

#: "the length of an externalKeyId MUST NOT exceed 128 characters and they MUST be restricted
#: to ... letters A through Z, the digits 0 through 9, the hyphen, the period and the
#: underscore" (a run of periods alone is refused here: URL normalisation would eat it).
_KEY_ID = re.compile(r"^(?!\.+$)[A-Za-z0-9._-]{1,128}$")
#: "The total length of the XksProxyUriPath MUST NOT exceed 128 characters and MUST NOT
#: include any characters other than a through z, A through Z, 0 through 9, slash (/), dash
#: (-) and underscore (_)".
_URI_PATH = re.compile(r"^(/[A-Za-z0-9_-]+)*/kms/xks/v1$")
_MAX_URI_PATH = 128
#: "The access key id is a random string of length no less than 20 characters and no more
#: than 30 characters. The only characters allowed are uppercase 'A' through 'Z' and the
#: digits '2' through '7'." (Appendix A)
_ACCESS_KEY_ID = re.compile(r"^[A-Z2-7]{20,30}$")
#: KMS's XksProxyAuthenticationCredential: "A secret string of 43-64 characters. Valid
#: characters are a-z, A-Z, 0-9, /, +, and =."
_SECRET = re.compile(r"^[A-Za-z0-9/+=]{43,64}$")
#: "The errorMessage, if included, MUST be less than 512 characters in length and only use
#: printable ASCII characters".
_MAX_ERROR_MESSAGE = 511
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")


class SpecViolation(ValueError):
    """A value the specification does not allow; `member` names where it was found."""

    def __init__(self, member: str, message: str) -> None:
        super().__init__(f"{member}: {message}")
        self.member = member
        self.message = message


# -- paths --------------------------------------------------------------------------------


def split_uri_path(uri_path: str) -> str:
    """The optional path prefix of an XksProxyUriPath (``/a/b/kms/xks/v1`` -> ``/a/b``);
    `SpecViolation` if it is not one."""
    if len(uri_path) > _MAX_URI_PATH or not _URI_PATH.match(uri_path):
        raise SpecViolation(
            "XksProxyUriPath",
            "must be at most 128 characters of a-z, A-Z, 0-9, '/', '-', '_', ending in "
            f"{API_PATH} (got {uri_path[:140]!r})",
        )
    return uri_path[: -len(API_PATH)]


def check_key_id(key_id: str) -> str:
    """`key_id` if it is a valid externalKeyId, else `SpecViolation`."""
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise SpecViolation(
            "externalKeyId",
            "must be 1-128 characters of A-Z, a-z, 0-9, '-', '.', '_' (and not only periods)",
        )
    return key_id


def check_access_key_id(value: str) -> str:
    if not isinstance(value, str) or not _ACCESS_KEY_ID.match(value):
        raise SpecViolation(
            "AccessKeyId", "must be 20-30 characters of 'A'-'Z' and '2'-'7' (XKS Appendix A)"
        )
    return value


def shown_key_id(value: object) -> str:
    """`value` (a configured access key id) fit for a message: quoted when it is one, else
    only its length. A credential with its id and secret swapped has its secret where the id
    goes, and a message or a log line must not carry it."""
    if isinstance(value, str) and _ACCESS_KEY_ID.match(value):
        return repr(value)
    n = len(value) if isinstance(value, str) else 0
    return f"<an access key id that is not one: {n} characters, not shown (a secret?)>"


def check_secret_access_key(value: str) -> str:
    if not isinstance(value, str) or not _SECRET.match(value):
        # never echo the value: it is a secret
        raise SpecViolation(
            "RawSecretAccessKey", "must be 43-64 characters of a-z, A-Z, 0-9, '/', '+', '='"
        )
    return value


def health_path(prefix: str) -> str:
    return f"{prefix}{API_PATH}/health"


def key_path(prefix: str, key_id: str, operation: str) -> str:
    """The URI path of a key operation (`operation`: GetKeyMetadata, Encrypt or Decrypt)."""
    return f"{prefix}{API_PATH}/keys/{key_id}/{OPERATIONS[operation]}"


# -- members --------------------------------------------------------------------------------


def b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64decode(value: object, member: str) -> bytes:
    """Standard padded Base64 (RFC 4648 section 4), strictly: no URL-safe alphabet, no
    whitespace, no missing or excess padding (binascii's strict mode: a third of the cost of
    `base64.b64decode`, which an XKS call pays five times on each side)."""
    if not isinstance(value, str):
        raise SpecViolation(member, "must be a Base64 string")
    try:
        return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SpecViolation(member, "is not valid standard Base64") from None


def error_message(text: str) -> str:
    """`text` as an errorMessage may carry it: printable ASCII, under 512 characters."""
    clean = _NOT_PRINTABLE.sub("?", text)
    return clean if len(clean) <= _MAX_ERROR_MESSAGE else clean[: _MAX_ERROR_MESSAGE - 3] + "..."


def proxy_aad(aad: bytes | None, ciphertext_metadata: bytes | None) -> bytes:
    """The AAD given to AES-GCM inside the key manager (Encrypt, "ciphertextMetadata"):

        2-byte big-endian length of additionalAuthenticatedData || additionalAuthenticatedData
        || 1-byte length of ciphertextMetadata || ciphertextMetadata

    "If the additionalAuthenticatedData or ciphertextMetadata is not present, the
    corresponding length MUST be set to zero." The lengths keep a caller from moving bytes
    between the two fields and still decrypting."""
    a = aad or b""
    m = ciphertext_metadata or b""
    if len(a) > MAX_AAD:
        raise SpecViolation("additionalAuthenticatedData", f"longer than {MAX_AAD} bytes")
    if len(m) > MAX_CIPHERTEXT_METADATA:
        raise SpecViolation("ciphertextMetadata", f"longer than {MAX_CIPHERTEXT_METADATA} bytes")
    return len(a).to_bytes(2, "big") + a + bytes((len(m),)) + m


def cdiv(
    aad: bytes | None,
    ciphertext_metadata: bytes | None,
    iv: bytes,
    ciphertext: bytes,
    tag: bytes,
) -> bytes:
    """The Ciphertext Data Integrity Value (Appendix C): SHA-256 over
    ``additionalAuthenticatedData || ciphertextMetadata || initializationVector || ciphertext
    || authenticationTag`` (absent fields are empty; no lengths, by the specification)."""
    h = hashlib.sha256()
    if aad:
        h.update(aad)
    if ciphertext_metadata:
        h.update(ciphertext_metadata)
    h.update(iv)
    h.update(ciphertext)
    h.update(tag)
    return h.digest()


# -- requestMetadata --------------------------------------------------------------------------

#: The requestMetadata members each operation requires (the others are optional).
_REQUIRED: Final[Mapping[str, tuple[str, ...]]] = {
    "GetHealthStatus": ("kmsRequestId", "kmsOperation"),
    "GetKeyMetadata": ("awsPrincipalArn", "kmsOperation", "kmsRequestId"),
    "Encrypt": ("awsPrincipalArn", "kmsKeyArn", "kmsOperation", "kmsRequestId"),
    "Decrypt": ("awsPrincipalArn", "kmsKeyArn", "kmsOperation", "kmsRequestId"),
}
_OPTIONAL: Final = ("awsSourceVpc", "awsSourceVpce", "kmsKeyArn", "kmsViaService")


@dataclass(frozen=True, slots=True)
class RequestMetadata:
    """The ``requestMetadata`` of every XKS request: who called KMS, on which key, in which
    KMS operation and request (for the proxy's log and optional authorization).

    `kms_key_arn` is required for Encrypt and Decrypt, optional for GetKeyMetadata and not
    sent with GetHealthStatus (nor is `aws_principal_arn`)."""

    aws_principal_arn: str
    kms_key_arn: str | None
    kms_operation: str
    kms_request_id: str
    kms_via_service: str | None = None
    aws_source_vpc: str | None = None
    aws_source_vpce: str | None = None

    def to_wire(self, operation: str) -> dict[str, str]:
        """The JSON object sent with `operation` (only the members that operation carries)."""
        values = {
            "awsPrincipalArn": self.aws_principal_arn,
            "kmsKeyArn": self.kms_key_arn,
            "kmsOperation": self.kms_operation,
            "kmsRequestId": self.kms_request_id,
            "kmsViaService": self.kms_via_service,
            "awsSourceVpc": self.aws_source_vpc,
            "awsSourceVpce": self.aws_source_vpce,
        }
        if operation == "GetHealthStatus":
            return {"kmsRequestId": self.kms_request_id, "kmsOperation": self.kms_operation}
        for name in _REQUIRED[operation]:
            if not values[name]:
                raise SpecViolation(f"requestMetadata.{name}", f"is required for {operation}")
        return {k: v for k, v in values.items() if v is not None}

    @classmethod
    def from_wire(cls, operation: str, value: Any) -> RequestMetadata:
        """Parse the requestMetadata of a request for `operation`: required members present
        and non-empty strings, optional ones strings when present. Other members are allowed
        (Appendix B: KMS may add fields), kmsOperation may name any KMS operation ("The XKS
        Proxy MUST NOT reject a request as invalid if it sees a kmsOperation other than those
        listed") and kmsRequestId is opaque ("MUST NOT perform any validation on its
        structure")."""
        if not isinstance(value, dict):
            raise SpecViolation("requestMetadata", "is required and must be a JSON object")
        for name in _REQUIRED[operation]:
            v = value.get(name)
            if not isinstance(v, str) or not v:
                raise SpecViolation(f"requestMetadata.{name}", "is required (a non-empty string)")
        for name in _OPTIONAL:
            v = value.get(name)
            if v is not None and not isinstance(v, str):
                raise SpecViolation(f"requestMetadata.{name}", "must be a string")
        for name in ("awsPrincipalArn", "kmsKeyArn"):
            v = value.get(name)
            if isinstance(v, str) and len(v) > MAX_ARN:
                raise SpecViolation(f"requestMetadata.{name}", f"longer than {MAX_ARN} characters")
        return cls(
            aws_principal_arn=value.get("awsPrincipalArn") or "",
            kms_key_arn=value.get("kmsKeyArn"),
            kms_operation=value["kmsOperation"],
            kms_request_id=value["kmsRequestId"],
            kms_via_service=value.get("kmsViaService"),
            aws_source_vpc=value.get("awsSourceVpc"),
            aws_source_vpce=value.get("awsSourceVpce"),
        )
