"""The KMS's live connections to custom key stores, per process, and their failures as KMS errors.

A custom key store's row (`_keystores`) says *what* to connect to and whether it is connected;
this module holds *the connection itself*, which is per process: a PKCS#11 token is opened once
per process (`envelope.pkcs11.Token.open`: one library initialisation, one login, a pool of
sessions), and an XKS proxy is reached through one keep-alive `envelope.xks.XksClient` per proxy
setting. Several server workers each open their own; a store disconnected by one worker is seen
by the others on their next call, because every call reads the row.

Failures become the errors AWS KMS returns (`hsm_error`, `xks_error`, the connection codes):
AWS's cryptographic operations answer every failure of an external key store's configuration or
connection with ``KMSInvalidStateException`` and a message naming the cause (AWS KMS Developer
Guide, "Troubleshooting external key stores"); management operations have their own exceptions.

The PKCS#11 and XKS packages are imported only when a store of that kind is used, so a KMS with
no custom key store loads neither.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import (
    CustomKeyStoreInvalidStateException,
    InvalidCiphertextException,
    KMSInvalidStateException,
    KmsServiceError,
    XksKeyInvalidConfigurationException,
)

if TYPE_CHECKING:
    from envelope.pkcs11 import Token
    from envelope.xks.client import XksClient

__all__ = (
    "XKS_CA_FILE_ENV",
    "XKS_TIMEOUT_ENV",
    "hsm_connection_code",
    "hsm_error",
    "open_token",
    "xks_client",
    "xks_connection_code",
    "xks_create_key_error",
    "xks_error",
)

#: A CA bundle (PEM) the KMS trusts for XKS proxies' TLS certificates, besides the system's.
XKS_CA_FILE_ENV = "ENVELOPE_XKS_CA_FILE"
#: Seconds the KMS waits for one XKS proxy request (AWS waits 250 ms).
XKS_TIMEOUT_ENV = "ENVELOPE_XKS_TIMEOUT"

_lock = threading.Lock()
_clients: dict[tuple[Any, ...], XksClient] = {}


def open_token(module: str, token_label: str, pin: str) -> Token:
    """The process's connection to a token (opened, logged in, pooled), or TokenUnavailable."""
    from envelope.pkcs11 import Token, TokenConfig

    return Token.open(TokenConfig(module=module, token_label=token_label, pin=pin))


def xks_client(
    endpoint: str, uri_path: str, access_key_id: str, secret: str, region: str
) -> XksClient:
    """One pooled client per proxy setting (endpoint, path, credential) and Region in this
    process. Its requests are signed for `region`, the KMS Region calling the proxy (the XKS
    spec's credential scope, Appendix A): they were signed for us-east-1 from every Region,
    and a proxy elsewhere refused them all as a bad credential (review)."""
    from envelope.xks.client import XksClient

    ca_file = os.environ.get(XKS_CA_FILE_ENV) or None
    timeout_text = os.environ.get(XKS_TIMEOUT_ENV)
    timeout = float(timeout_text) if timeout_text else None
    # the secret is part of the identity of a setting, but never kept in clear as a dict key
    ident = (
        endpoint,
        uri_path,
        access_key_id,
        hashlib.sha256(secret.encode()).digest(),
        region,
        ca_file,
        timeout,
    )
    with _lock:
        client = _clients.get(ident)
        if client is None:
            kwargs: dict[str, Any] = {"ca_file": ca_file, "region": region}
            if timeout is not None:
                kwargs["timeout"] = timeout
            client = XksClient(endpoint, uri_path, access_key_id, secret, **kwargs)
            _clients[ident] = client
        return client


def hsm_connection_code(error: BaseException) -> str:
    """The ConnectionErrorCode of a failed attempt to reach a token."""
    code = getattr(error, "code", None)
    return code if isinstance(code, str) and code else "INTERNAL_ERROR"


def deletion_entry(label: str, key_id: bytes | None) -> str:
    """What a pending token deletion records (`token_deletions.label`): the key's label and,
    when known, "#" and its CKA_ID in hex. Destroying by label alone failed for good once
    anyone added an object under the label (two objects: which one?), and the deleted key's
    material stayed in the token (review). Entries written before hold the label alone."""
    return label if key_id is None else f"{label}#{key_id.hex()}"


def parse_deletion_entry(entry: str) -> tuple[str, bytes | None]:
    """(label, CKA_ID or None) of a `deletion_entry`."""
    label, sep, hex_id = entry.partition("#")
    if not sep:
        return entry, None
    try:
        return label, bytes.fromhex(hex_id)
    except ValueError:
        return entry, None


def hsm_key_id(meta: Mapping[str, Any]) -> bytes | None:
    """The CKA_ID recorded when the key was made in the HSM (`x_hsm_id`): the token uses only
    the key with this id, still protected as made, never another given the same label."""
    raw = meta.get("x_hsm_id")
    if not isinstance(raw, str) or not raw:
        return None
    return bytes.fromhex(raw)


def hsm_error(error: BaseException, what: str) -> KmsServiceError:
    """A token failure during a cryptographic operation, as AWS reports CloudHSM failures."""
    from envelope.pkcs11 import TokenDecryptError

    if isinstance(error, TokenDecryptError):
        return InvalidCiphertextException(
            "the ciphertext does not decrypt: it was altered or the encryption context differs"
        )
    return KMSInvalidStateException(
        f"{what} failed in the custom key store's HSM ({type(error).__name__}: "
        f"{_first_line(error)})"
    )


def xks_connection_code(error: BaseException) -> str:
    """The ConnectionErrorCode of a failed attempt to reach an XKS proxy (AWS's names)."""
    from envelope.xks import errors as x

    if isinstance(error, x.XksTimeout):
        return "XKS_PROXY_TIMED_OUT"
    if isinstance(error, x.XksTlsError):
        return "XKS_PROXY_INVALID_TLS_CONFIGURATION"
    if isinstance(error, x.XksUnreachable):
        return "XKS_PROXY_NOT_REACHABLE"
    if isinstance(error, x.XksInvalidResponse):
        return "XKS_PROXY_INVALID_RESPONSE"
    if isinstance(error, x.XksProxyError):
        if error.error_name == "AuthenticationFailedException":
            return "INVALID_CREDENTIALS"
        if error.error_name == "AccessDeniedException":
            return "XKS_PROXY_ACCESS_DENIED"
        if error.error_name == "InvalidUriPathException":
            return "XKS_PROXY_INVALID_CONFIGURATION"
        # well-formed answers that the proxy cannot serve now: the XKS specification's "KMS
        # considerations" group them with an unreachable and a timed-out proxy, and
        # XKS_PROXY_INVALID_RESPONSE is for an answer KMS cannot interpret
        if error.error_name == "ThrottlingException":
            return "XKS_PROXY_NOT_REACHABLE"
        if error.error_name == "DependencyTimeoutException":
            return "XKS_PROXY_TIMED_OUT"
        return "XKS_PROXY_INVALID_RESPONSE"
    return "INTERNAL_ERROR"


#: What the KMS tells a caller for each error an XKS proxy may answer (the XKS API's names).
_XKS_MESSAGES = {
    "ValidationException": "the external key store proxy rejected the request as invalid",
    "InvalidStateException": "the external key is not enabled in the external key manager",
    "InvalidCiphertextException": (
        "the external key store proxy rejected the request because the ciphertext or the "
        "additional authenticated data (the encryption context) is corrupted, missing or "
        "otherwise invalid"
    ),
    "InvalidKeyUsageException": "the external key does not allow this operation",
    "AuthenticationFailedException": (
        "the external key store proxy rejected the request: the custom key store's proxy "
        "authentication credential is not valid"
    ),
    "AccessDeniedException": "the external key store proxy denied access to the external key",
    "KeyNotFoundException": "the external key store proxy has no external key with this id",
    "InvalidUriPathException": "the external key store proxy rejected the custom key store's "
    "XksProxyUriPath",
    "UnsupportedOperationException": "the external key store proxy does not support this request",
    "ThrottlingException": "the external key store proxy is throttling requests",
    "InternalException": "the external key store proxy failed internally",
    "DependencyTimeoutException": "the external key manager did not answer the proxy in time",
}


def xks_error(error: BaseException, what: str) -> KmsServiceError:
    """An XKS failure during a cryptographic operation: always KMSInvalidStateException, as AWS
    answers it, with the cause in the message."""
    return KMSInvalidStateException(f"{what} failed: {_xks_why(error)}.")


def xks_create_key_error(error: BaseException) -> KmsServiceError:
    """An XKS failure while CreateKey asks the proxy about the external key, mapped as the XKS
    proxy API specification's "KMS considerations" table maps it for CreateKey: the external
    key's own state or usage is XksKeyInvalidConfigurationException, a proxy that denies
    access is KMSInvalidStateException, and anything else (the proxy unreachable, slow,
    refusing the credential or the path, throttling, failing) says the custom key store is
    not in a state to make keys: CustomKeyStoreInvalidStateException. (For the proxy's
    UnsupportedOperationException the table names XksKeyInvalidResponseException, which the
    KMS API does not have, neither among CreateKey's errors nor anywhere in botocore's model:
    it is answered as the table answers the other replies the KMS cannot use.)"""
    from envelope.xks import errors as x

    why = f"CreateKey failed: {_xks_why(error)}."
    if isinstance(error, x.XksProxyError):
        if error.error_name in ("InvalidStateException", "InvalidKeyUsageException"):
            return XksKeyInvalidConfigurationException(why)
        if error.error_name == "AccessDeniedException":
            return KMSInvalidStateException(why)
    return CustomKeyStoreInvalidStateException(why)


def _xks_why(error: BaseException) -> str:
    """The cause of an XKS failure, in words for the caller's message."""
    from envelope.xks import errors as x

    if isinstance(error, x.XksProxyError):
        why = _XKS_MESSAGES.get(error.error_name, f"the proxy answered {error.error_name}")
    elif isinstance(error, x.XksTimeout):
        why = "the external key store proxy did not respond in time"
    elif isinstance(error, x.XksTlsError):
        why = "the TLS connection to the external key store proxy failed"
        if "CERTIFICATE_VERIFY_FAILED" in str(error):
            why += (
                f" (its certificate is not trusted: add its CA with ${XKS_CA_FILE_ENV}, "
                "or use a publicly trusted certificate)"
            )
    elif isinstance(error, x.XksUnreachable):
        why = "the external key store proxy cannot be reached"
    elif isinstance(error, x.XksInvalidResponse):
        why = (
            "the external key store proxy returned a response the XKS API does not allow ("
            f"{_first_line(error)})"
        )
    else:  # a local misconfiguration ($ENVELOPE_XKS_TIMEOUT, the CA file): say which
        why = f"{type(error).__name__}: {_first_line(error)}"
    return why


def _first_line(error: BaseException) -> str:
    text = str(error).splitlines()
    return text[0][:200] if text else type(error).__name__
