"""Turn a PKCS#11 return value, or python-pkcs11's exception for one, into a `TokenError`.

One table decides which failures make the token unavailable, and with which AWS
ConnectionErrorCode; everything else is a plain `TokenError` naming the call and the CKR.
"""

from __future__ import annotations

import re
from typing import Final

from .cryptoki import rv, rv_name
from .errors import ConnectionErrorCode, TokenError, TokenUnavailable

__all__ = ("UNAVAILABLE", "from_exception", "from_rv", "rv_of")

UNAVAILABLE: Final[dict[int, ConnectionErrorCode]] = {
    rv("CKR_PIN_INCORRECT"): "INVALID_CREDENTIALS",
    rv("CKR_PIN_INVALID"): "INVALID_CREDENTIALS",
    rv("CKR_PIN_LEN_RANGE"): "INVALID_CREDENTIALS",
    rv("CKR_PIN_EXPIRED"): "INVALID_CREDENTIALS",
    rv("CKR_PIN_LOCKED"): "USER_LOCKED_OUT",
    rv("CKR_USER_PIN_NOT_INITIALIZED"): "USER_NOT_FOUND",
    rv("CKR_DEVICE_REMOVED"): "NETWORK_ERRORS",
    rv("CKR_DEVICE_ERROR"): "NETWORK_ERRORS",
    rv("CKR_DEVICE_MEMORY"): "NETWORK_ERRORS",
    rv("CKR_TOKEN_NOT_PRESENT"): "NETWORK_ERRORS",
    rv("CKR_TOKEN_NOT_RECOGNIZED"): "NETWORK_ERRORS",
    rv("CKR_FUNCTION_CANCELED"): "NETWORK_ERRORS",
    rv("CKR_SESSION_COUNT"): "INTERNAL_ERROR",
    rv("CKR_CRYPTOKI_NOT_INITIALIZED"): "INTERNAL_ERROR",
    rv("CKR_USER_ANOTHER_ALREADY_LOGGED_IN"): "INTERNAL_ERROR",
}

#: python-pkcs11 raises one class per CKR and keeps no number: its class names, back to CKRs.
_EXCEPTIONS: Final[dict[str, str]] = {
    "PinIncorrect": "CKR_PIN_INCORRECT",
    "PinInvalid": "CKR_PIN_INVALID",
    "PinLenRange": "CKR_PIN_LEN_RANGE",
    "PinExpired": "CKR_PIN_EXPIRED",
    "PinLocked": "CKR_PIN_LOCKED",
    "UserPinNotInitialized": "CKR_USER_PIN_NOT_INITIALIZED",
    "UserAlreadyLoggedIn": "CKR_USER_ALREADY_LOGGED_IN",
    "UserNotLoggedIn": "CKR_USER_NOT_LOGGED_IN",
    "AnotherUserAlreadyLoggedIn": "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    "DeviceRemoved": "CKR_DEVICE_REMOVED",
    "DeviceError": "CKR_DEVICE_ERROR",
    "DeviceMemory": "CKR_DEVICE_MEMORY",
    "TokenNotPresent": "CKR_TOKEN_NOT_PRESENT",
    "TokenNotRecognised": "CKR_TOKEN_NOT_RECOGNIZED",
    "FunctionCancelled": "CKR_FUNCTION_CANCELED",
    "SessionCount": "CKR_SESSION_COUNT",
    "SessionClosed": "CKR_SESSION_CLOSED",
    "SessionHandleInvalid": "CKR_SESSION_HANDLE_INVALID",
    "ObjectHandleInvalid": "CKR_OBJECT_HANDLE_INVALID",
    "KeyHandleInvalid": "CKR_KEY_HANDLE_INVALID",
    "OperationActive": "CKR_OPERATION_ACTIVE",
    "AttributeSensitive": "CKR_ATTRIBUTE_SENSITIVE",
    "GeneralError": "CKR_GENERAL_ERROR",
    "FunctionFailed": "CKR_FUNCTION_FAILED",
    "TemplateInconsistent": "CKR_TEMPLATE_INCONSISTENT",
}


def rv_of(exc: BaseException) -> int | None:
    """The CKR a python-pkcs11 exception stands for, when this package acts on it."""
    name = _EXCEPTIONS.get(type(exc).__name__)
    return rv(name) if name is not None else None


def from_rv(value: int, what: str) -> TokenError:
    code = UNAVAILABLE.get(value)
    if code is not None:
        return TokenUnavailable(code, f"{what}: {rv_name(value)}")
    return TokenError(f"{what} failed: {rv_name(value)}")


def from_exception(exc: BaseException, what: str) -> TokenError:
    value = rv_of(exc)
    if value is None:
        # python-pkcs11 names a return value it has no class for in its message
        match = re.fullmatch(r"Unmapped error code (0x[0-9a-fA-F]+)", str(exc))
        value = int(match.group(1), 16) if match else None
    if value is not None:
        return from_rv(value, what)
    return TokenError(f"{what} failed: {type(exc).__name__}")
