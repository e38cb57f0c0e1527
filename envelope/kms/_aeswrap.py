"""Wrapping a data key under a local 256-bit key (shared by the memory and file backends).

    salt    = 16 random bytes, fresh per wrap
    K_wrap  = HKDF-SHA-256(ikm = wrapping key, salt = salt, info = "envelope/aeswrap/v2")
    wrapped = 0x02 || salt || nonce(12) || AES-256-GCM(K_wrap, nonce, data key,
              AAD = "envelope/aeswrap/v2" || u16(len key_id) || key_id || canonical(context))

A fresh key per wrap keeps the random 96-bit nonces far from their collision bound however
many data keys one long-lived wrapping key protects.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import KmsKeyError
from ..hazmat.format import DATA_KEY_LEN, MAX_KMS_CTX_LEN, encode_context

_VERSION = b"\x02"
_LABEL = b"envelope/aeswrap/v2"
_SALT = 16
WRAPPED_LEN = 1 + _SALT + 12 + DATA_KEY_LEN + 16


def _aad(key_id: str, context: Mapping[str, str]) -> bytes:
    kid = key_id.encode("utf-8")
    return (
        _LABEL + struct.pack(">H", len(kid)) + kid + encode_context(context, limit=MAX_KMS_CTX_LEN)
    )


def _cipher(master: bytes | bytearray, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(hashes.SHA256(), 32, salt, _LABEL).derive(master))


def wrap(
    master: bytes | bytearray, key_id: str, plaintext: bytes | bytearray, context: Mapping[str, str]
) -> bytes:
    salt, nonce = os.urandom(_SALT), os.urandom(12)
    sealed = _cipher(master, salt).encrypt(nonce, bytes(plaintext), _aad(key_id, context))
    return _VERSION + salt + nonce + sealed


def unwrap(
    master: bytes | bytearray, key_id: str, wrapped: bytes, context: Mapping[str, str]
) -> bytearray:
    if len(wrapped) != WRAPPED_LEN or wrapped[:1] != _VERSION:
        raise KmsKeyError(f"wrapped key for {key_id!r} is malformed")
    salt, nonce, sealed = (
        wrapped[1 : 1 + _SALT],
        wrapped[1 + _SALT : 13 + _SALT],
        wrapped[13 + _SALT :],
    )
    try:
        return bytearray(_cipher(master, salt).decrypt(nonce, sealed, _aad(key_id, context)))
    except InvalidTag:
        raise KmsKeyError(
            f"cannot unwrap the data key under {key_id!r}: wrong key or encryption context"
        ) from None
