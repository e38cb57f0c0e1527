"""Wrapping a data key under a local 256-bit AES key (shared by the memory and file backends).

wrapped = 0x01 || nonce(12) || AES-256-GCM(wrapping key, nonce, data key,
          AAD = "envelope/aeswrap/v1" || u16(len key_id) || key_id || canonical(context))
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import KmsKeyError
from ..hazmat.format import DATA_KEY_LEN, MAX_KMS_CTX_LEN, encode_context

_VERSION = b"\x01"
WRAPPED_LEN = 1 + 12 + DATA_KEY_LEN + 16


def _aad(key_id: str, context: Mapping[str, str]) -> bytes:
    kid = key_id.encode("utf-8")
    return (
        b"envelope/aeswrap/v1"
        + struct.pack(">H", len(kid))
        + kid
        + encode_context(context, limit=MAX_KMS_CTX_LEN)
    )


def wrap(
    cipher: AESGCM, key_id: str, plaintext: bytes | bytearray, context: Mapping[str, str]
) -> bytes:
    nonce = os.urandom(12)
    return _VERSION + nonce + cipher.encrypt(nonce, bytes(plaintext), _aad(key_id, context))


def unwrap(cipher: AESGCM, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytearray:
    if len(wrapped) != WRAPPED_LEN or wrapped[:1] != _VERSION:
        raise KmsKeyError(f"wrapped key for {key_id!r} is malformed")
    try:
        return bytearray(cipher.decrypt(wrapped[1:13], wrapped[13:], _aad(key_id, context)))
    except InvalidTag:
        raise KmsKeyError(
            f"cannot unwrap the data key under {key_id!r}: wrong key or encryption context"
        ) from None
