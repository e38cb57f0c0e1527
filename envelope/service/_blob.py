"""The symmetric ciphertext blob: it names its key and backing-key version, like AWS's.

    blob = 0x01 || u8 len(key id) || key id || u32 version || salt(16) || nonce(12) || ct || tag(16)
    message key = SHA-256("envelope/kms/ct/v1" || backing key || salt)
    ct || tag = AES-256-GCM(message key, nonce, plaintext,
                            AAD = blob[0 : 22 + len(key id)] || canonical(encryption context))
    canonical(context) = u16 count, then (u16 len, key, u16 len, value) for each pair sorted by key

The key id (not the ARN) is recorded, so a multi-Region key's ciphertext opens in any Region
that holds a replica. A fresh random salt gives every message its own AES key, so the GCM
random-nonce bound (2**32 messages per key) does not limit how long a backing key is used.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import InvalidCiphertextException

_VERSION = 1
_SALT = 16
_NONCE = 12
_TAG = 16
_DOMAIN = b"envelope/kms/ct/v1"
MAX_CIPHERTEXT = 6144


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    """u16 count, then (u16 len, key, u16 len, value) sorted by key: one mapping, one encoding."""
    if not context:
        return b""
    items = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items())
    parts = [struct.pack(">H", len(items))]
    for k, v in items:
        parts.append(struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v)
    return b"".join(parts)


@dataclass(frozen=True)
class Parsed:
    key_id: str
    version: int
    header: bytes
    salt: bytes
    nonce: bytes
    body: bytes


def parse(blob: bytes) -> Parsed:
    """Split a blob into its parts; any malformation is InvalidCiphertextException."""
    if len(blob) < 2 or blob[0] != _VERSION:
        raise InvalidCiphertextException("the ciphertext is not a KMS ciphertext blob")
    n = blob[1]
    fixed = 2 + n + 4
    if n == 0 or len(blob) < fixed + _SALT + _NONCE + _TAG:
        raise InvalidCiphertextException("the ciphertext is truncated")
    try:
        key_id = blob[2 : 2 + n].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidCiphertextException("the ciphertext names no valid key") from None
    (version,) = struct.unpack(">I", blob[2 + n : fixed])
    salt = blob[fixed : fixed + _SALT]
    nonce = blob[fixed + _SALT : fixed + _SALT + _NONCE]
    return Parsed(
        key_id, version, blob[: fixed + _SALT], salt, nonce, blob[fixed + _SALT + _NONCE :]
    )


def _message_key(material: bytes, salt: bytes) -> AESGCM:
    # SHA-256 over fixed-length inputs (no length-extension concern) keyed by a uniformly
    # random 256-bit backing key is a PRF; it is several times cheaper than HMAC here.
    return AESGCM(hashlib.sha256(_DOMAIN + material + salt).digest())


def seal(
    key_id: str, version: int, material: bytes, plaintext: bytes, context: Mapping[str, str] | None
) -> bytes:
    kid = key_id.encode("ascii")
    salt = os.urandom(_SALT)
    nonce = os.urandom(_NONCE)
    header = bytes((_VERSION, len(kid))) + kid + struct.pack(">I", version) + salt
    ct = _message_key(material, salt).encrypt(nonce, plaintext, header + canonical_context(context))
    return header + nonce + ct


def open_(parsed: Parsed, material: bytes, context: Mapping[str, str] | None) -> bytes:
    try:
        return _message_key(material, parsed.salt).decrypt(
            parsed.nonce, parsed.body, parsed.header + canonical_context(context)
        )
    except InvalidTag:
        raise InvalidCiphertextException(
            "the ciphertext does not decrypt: it was altered or the encryption context differs"
        ) from None
