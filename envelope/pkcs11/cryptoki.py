"""The Cryptoki calls made through ctypes, on the module's own function list.

python-pkcs11 drives sessions, objects, key generation and attributes. Five things it does not
do the way a shared, multi-threaded, multi-process token needs, so they are made here:

* ``C_Initialize`` with ``CKF_OS_LOCKING_OK``. python-pkcs11 passes ``NULL``, which tells the
  module the application is single-threaded: SoftHSM2 then switches its mutexes off
  (``MutexFactory::disable``) and concurrent calls corrupt its session and object state.
* ``C_Finalize`` (only in a forked child, to start the module over).
* ``C_Login``/``C_Logout`` on a session we keep open: python-pkcs11 logs in when it opens a
  session and logs out when it closes it, and a logout ends the login of every session of the
  process. Here one login is made per process and token and outlives any pooled session.
* ``C_GetSessionInfo`` (the liveness check).
* ``C_EncryptInit``/``C_Encrypt`` and their decrypt twins with ``CKM_AES_GCM``: the hot path.
  The IV goes in a buffer we own and is read back after the call, so a module that writes its
  own IV into ``pIv`` (as AWS CloudHSM's does) is handled; and no per-call object is built.

ctypes releases the GIL for the length of each call, like python-pkcs11's ``nogil`` blocks.
The function list is the one the module hands out (``C_GetFunctionList``), laid out as in
PKCS#11 v2.40 (``pkcs11f.h``); a PKCS#11 3.x module serves that list too.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Final

__all__ = (
    "CKF_OS_LOCKING_OK",
    "CKM_AES_GCM",
    "CKU_USER",
    "CallFailed",
    "Cryptoki",
    "GCM_IV_LEN",
    "GCM_TAG_LEN",
    "ModuleLoadError",
    "rv_name",
)

CK_ULONG = ctypes.c_ulong
CK_RV = ctypes.c_ulong

CKF_OS_LOCKING_OK: Final = 0x00000002
CKU_USER: Final = 1
CKM_AES_GCM: Final = 0x00001087
CKS_RO_USER_FUNCTIONS: Final = 1
CKS_RW_USER_FUNCTIONS: Final = 3
GCM_IV_LEN: Final = 12
GCM_TAG_LEN: Final = 16

#: The return values this package acts on or names in messages (PKCS#11 v2.40 pkcs11t.h).
RV_NAMES: Final[dict[int, str]] = {
    0x000: "CKR_OK",
    0x001: "CKR_CANCEL",
    0x002: "CKR_HOST_MEMORY",
    0x003: "CKR_SLOT_ID_INVALID",
    0x005: "CKR_GENERAL_ERROR",
    0x006: "CKR_FUNCTION_FAILED",
    0x007: "CKR_ARGUMENTS_BAD",
    0x00A: "CKR_CANT_LOCK",
    0x011: "CKR_ATTRIBUTE_SENSITIVE",
    0x01B: "CKR_ACTION_PROHIBITED",
    0x020: "CKR_DATA_INVALID",
    0x021: "CKR_DATA_LEN_RANGE",
    0x030: "CKR_DEVICE_ERROR",
    0x031: "CKR_DEVICE_MEMORY",
    0x032: "CKR_DEVICE_REMOVED",
    0x040: "CKR_ENCRYPTED_DATA_INVALID",
    0x041: "CKR_ENCRYPTED_DATA_LEN_RANGE",
    0x050: "CKR_FUNCTION_CANCELED",
    0x054: "CKR_FUNCTION_NOT_SUPPORTED",
    0x060: "CKR_KEY_HANDLE_INVALID",
    0x063: "CKR_KEY_TYPE_INCONSISTENT",
    0x068: "CKR_KEY_FUNCTION_NOT_PERMITTED",
    0x070: "CKR_MECHANISM_INVALID",
    0x071: "CKR_MECHANISM_PARAM_INVALID",
    0x082: "CKR_OBJECT_HANDLE_INVALID",
    0x090: "CKR_OPERATION_ACTIVE",
    0x091: "CKR_OPERATION_NOT_INITIALIZED",
    0x0A0: "CKR_PIN_INCORRECT",
    0x0A1: "CKR_PIN_INVALID",
    0x0A2: "CKR_PIN_LEN_RANGE",
    0x0A3: "CKR_PIN_EXPIRED",
    0x0A4: "CKR_PIN_LOCKED",
    0x0B0: "CKR_SESSION_CLOSED",
    0x0B1: "CKR_SESSION_COUNT",
    0x0B3: "CKR_SESSION_HANDLE_INVALID",
    0x0B5: "CKR_SESSION_READ_ONLY",
    0x0D0: "CKR_TEMPLATE_INCOMPLETE",
    0x0D1: "CKR_TEMPLATE_INCONSISTENT",
    0x0E0: "CKR_TOKEN_NOT_PRESENT",
    0x0E1: "CKR_TOKEN_NOT_RECOGNIZED",
    0x100: "CKR_USER_ALREADY_LOGGED_IN",
    0x101: "CKR_USER_NOT_LOGGED_IN",
    0x102: "CKR_USER_PIN_NOT_INITIALIZED",
    0x103: "CKR_USER_TYPE_INVALID",
    0x104: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    0x150: "CKR_BUFFER_TOO_SMALL",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
    0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
}
_BY_NAME: Final = {name: rv for rv, name in RV_NAMES.items()}


def rv(name: str) -> int:
    """The numeric value of a ``CKR_*`` name (for the tables of the modules that act on them)."""
    return _BY_NAME[name]


def rv_name(value: int) -> str:
    return RV_NAMES.get(value, f"CKR 0x{value:08X}")


class ModuleLoadError(Exception):
    """The shared library does not load or is not a PKCS#11 module (internal to the package)."""


class CallFailed(Exception):
    """A Cryptoki call returned something other than CKR_OK (internal to the package: the token
    layer turns it into a `TokenError`)."""

    def __init__(self, function: str, value: int) -> None:
        super().__init__(f"{function} returned {rv_name(value)}")
        self.function = function
        self.rv = value


# Windows' PKCS#11 headers pack structures to 1 byte; elsewhere natural alignment.
_PACK: Final = 1 if sys.platform == "win32" else 0


class CK_C_INITIALIZE_ARGS(ctypes.Structure):
    _pack_ = _PACK
    _fields_ = (
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", CK_ULONG),
        ("pReserved", ctypes.c_void_p),
    )


class CK_SESSION_INFO(ctypes.Structure):
    _pack_ = _PACK
    _fields_ = (
        ("slotID", CK_ULONG),
        ("state", CK_ULONG),
        ("flags", CK_ULONG),
        ("ulDeviceError", CK_ULONG),
    )


class CK_GCM_PARAMS(ctypes.Structure):
    """v2.40 errata / v3.0 layout, with ``ulIvBits`` (what SoftHSM2 and python-pkcs11 use)."""

    _pack_ = _PACK
    _fields_ = (
        ("pIv", ctypes.c_void_p),
        ("ulIvLen", CK_ULONG),
        ("ulIvBits", CK_ULONG),
        ("pAAD", ctypes.c_char_p),
        ("ulAADLen", CK_ULONG),
        ("ulTagBits", CK_ULONG),
    )


class CK_MECHANISM(ctypes.Structure):
    _pack_ = _PACK
    _fields_ = (
        ("mechanism", CK_ULONG),
        ("pParameter", ctypes.c_void_p),
        ("ulParameterLen", CK_ULONG),
    )


#: CK_FUNCTION_LIST up to C_DecryptFinal, in pkcs11f.h order (the rest is never read).
_FUNCTIONS: Final = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
    "C_InitToken", "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession",
    "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState", "C_SetOperationState",
    "C_Login", "C_Logout", "C_CreateObject", "C_CopyObject", "C_DestroyObject",
    "C_GetObjectSize", "C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit",
    "C_FindObjects", "C_FindObjectsFinal", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate",
    "C_EncryptFinal", "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal",
)  # fmt: skip


class CK_VERSION(ctypes.Structure):
    _pack_ = _PACK
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class CK_FUNCTION_LIST(ctypes.Structure):
    _pack_ = _PACK
    _fields_ = (("version", CK_VERSION), *((name, ctypes.c_void_p) for name in _FUNCTIONS))


_P = ctypes.c_void_p
_PROTOTYPES: Final[dict[str, Any]] = {
    "C_Initialize": ctypes.CFUNCTYPE(CK_RV, _P),
    "C_Finalize": ctypes.CFUNCTYPE(CK_RV, _P),
    "C_GetSessionInfo": ctypes.CFUNCTYPE(CK_RV, CK_ULONG, ctypes.POINTER(CK_SESSION_INFO)),
    "C_Login": ctypes.CFUNCTYPE(CK_RV, CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG),
    "C_Logout": ctypes.CFUNCTYPE(CK_RV, CK_ULONG),
    "C_EncryptInit": ctypes.CFUNCTYPE(CK_RV, CK_ULONG, ctypes.POINTER(CK_MECHANISM), CK_ULONG),
    "C_Encrypt": ctypes.CFUNCTYPE(
        CK_RV, CK_ULONG, ctypes.c_char_p, CK_ULONG, _P, ctypes.POINTER(CK_ULONG)
    ),
    "C_DecryptInit": ctypes.CFUNCTYPE(CK_RV, CK_ULONG, ctypes.POINTER(CK_MECHANISM), CK_ULONG),
    "C_Decrypt": ctypes.CFUNCTYPE(
        CK_RV, CK_ULONG, ctypes.c_char_p, CK_ULONG, _P, ctypes.POINTER(CK_ULONG)
    ),
}


class Cryptoki:
    """The typed entry points of one loaded module (process-wide; see `library`)."""

    def __init__(self, module: str) -> None:
        try:
            self._dll = ctypes.CDLL(module)
            get_list = self._dll.C_GetFunctionList
        except (OSError, AttributeError) as e:
            raise ModuleLoadError(str(e)) from None
        get_list.restype = CK_RV
        get_list.argtypes = (ctypes.POINTER(ctypes.POINTER(CK_FUNCTION_LIST)),)
        table = ctypes.POINTER(CK_FUNCTION_LIST)()
        value = get_list(ctypes.byref(table))
        if value != 0 or not table:
            raise ModuleLoadError(f"C_GetFunctionList returned {rv_name(value)}")
        self.version = (table.contents.version.major, table.contents.version.minor)
        self.addresses: dict[str, int] = {}
        fns: dict[str, Any] = {}
        for name, prototype in _PROTOTYPES.items():
            address = getattr(table.contents, name)
            if not address:
                raise ModuleLoadError(f"the module's function list has no {name}")
            self.addresses[name] = address
            fns[name] = prototype(address)
        self._initialize = fns["C_Initialize"]
        self._finalize = fns["C_Finalize"]
        self._session_info = fns["C_GetSessionInfo"]
        self._login = fns["C_Login"]
        self._logout = fns["C_Logout"]
        self._encrypt_init = fns["C_EncryptInit"]
        self._encrypt = fns["C_Encrypt"]
        self._decrypt_init = fns["C_DecryptInit"]
        self._decrypt = fns["C_Decrypt"]

    def initialize(self) -> int:
        """``C_Initialize`` telling the module to use its own (OS) locks; returns the CKR."""
        args = CK_C_INITIALIZE_ARGS(None, None, None, None, CKF_OS_LOCKING_OK, None)
        return int(self._initialize(ctypes.byref(args)))

    def finalize(self) -> int:
        return int(self._finalize(None))

    def login(self, session: int, pin: str) -> int:
        """``C_Login`` as CKU_USER; returns the CKR (the caller decides what is acceptable)."""
        data = pin.encode("utf-8")
        return int(self._login(session, CKU_USER, data, len(data)))

    def logout(self, session: int) -> int:
        return int(self._logout(session))

    def session_state(self, session: int) -> int:
        """The session's CKS_* state; `CallFailed` if the session is gone."""
        info = CK_SESSION_INFO()
        value = self._session_info(session, ctypes.byref(info))
        if value:
            raise CallFailed("C_GetSessionInfo", value)
        return int(info.state)

    @staticmethod
    def is_user_state(state: int) -> bool:
        return state in (CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS)

    def encrypt_gcm(
        self, session: int, key: int, iv: bytes, plaintext: bytes, aad: bytes
    ) -> tuple[bytes, bytes, bytes]:
        """AES-GCM in the token: returns (iv, ciphertext, tag). The IV is the one the module
        used: ours, unless the module wrote its own into the buffer."""
        iv_buf = ctypes.create_string_buffer(iv, GCM_IV_LEN)
        params = CK_GCM_PARAMS(
            ctypes.addressof(iv_buf), GCM_IV_LEN, GCM_IV_LEN * 8, aad, len(aad), GCM_TAG_LEN * 8
        )
        mech = CK_MECHANISM(CKM_AES_GCM, ctypes.addressof(params), ctypes.sizeof(params))
        value = self._encrypt_init(session, ctypes.byref(mech), key)
        if value:
            raise CallFailed("C_EncryptInit", value)
        size = len(plaintext) + GCM_TAG_LEN
        out = ctypes.create_string_buffer(size)
        out_len = CK_ULONG(size)
        value = self._encrypt(session, plaintext, len(plaintext), out, ctypes.byref(out_len))
        if value:
            raise CallFailed("C_Encrypt", value)
        if out_len.value != size:
            # A module that puts the IV or the tag elsewhere (older CloudHSM SDKs prepend the
            # IV) is not one this layout describes: refuse rather than mis-split.
            raise CallFailed("C_Encrypt", 0x005)
        raw = out.raw
        return iv_buf.raw, raw[: len(plaintext)], raw[len(plaintext) : size]

    def decrypt_gcm(
        self, session: int, key: int, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes
    ) -> bytes:
        """The plaintext; `CallFailed` if the tag does not verify (SoftHSM2 answers a bad tag
        with CKR_GENERAL_ERROR, others with CKR_ENCRYPTED_DATA_INVALID). The IV and tag lengths
        are fixed: a shorter tag would be checked as a truncated tag and accepted."""
        if len(iv) != GCM_IV_LEN or len(tag) != GCM_TAG_LEN:
            raise ValueError("AES-GCM here takes a 12-byte IV and a 16-byte tag")
        iv_buf = ctypes.create_string_buffer(iv, GCM_IV_LEN)
        params = CK_GCM_PARAMS(
            ctypes.addressof(iv_buf), GCM_IV_LEN, GCM_IV_LEN * 8, aad, len(aad), GCM_TAG_LEN * 8
        )
        mech = CK_MECHANISM(CKM_AES_GCM, ctypes.addressof(params), ctypes.sizeof(params))
        value = self._decrypt_init(session, ctypes.byref(mech), key)
        if value:
            raise CallFailed("C_DecryptInit", value)
        data = ciphertext + tag
        # some modules want room for the whole input before they drop the tag
        out = ctypes.create_string_buffer(len(data))
        out_len = CK_ULONG(len(data))
        value = self._decrypt(session, data, len(data), out, ctypes.byref(out_len))
        if value:
            raise CallFailed("C_Decrypt", value)
        return out.raw[: out_len.value]
