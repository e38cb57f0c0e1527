"""Key schedule, key commitment and header MAC (docs/format.md section 5).

Hazardous layer. From a 32-byte data key (DK) and the object's 32-byte message id::

    PRK   = HKDF-Extract(SHA-512, salt = message_id, IKM = DK)
    K_hdr = HKDF-Expand(SHA-512, PRK, "ENV1" || u16(suite) || "header", 32)
    C     = HKDF-Expand(SHA-512, PRK, "ENV1" || u16(suite) || "commit", 32)
    K_e   = HKDF-Expand(SHA-512, PRK, "ENV1" || u16(suite) || "segment" || u32(e), 32)

The DK itself never keys a cipher, so a cached DK can seal any number of objects: each object
(and each 2^40-byte epoch of it) has its own GCM key.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from hmac import compare_digest

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import AuthenticationError, ConfigurationError
from .format import (
    DATA_KEY_LEN,
    DEFAULT_SEG_LOG2,
    MESSAGE_ID_LEN,
    SUITE_AES256GCM_HKDF_SHA512_COMMIT,
    Header,
    WrappedKey,
    encode_header,
)

__all__ = ("EPOCH_LOG2", "ObjectKeys", "open_header", "seal_header")

_SHA512 = hashes.SHA512()
_SHA256 = hashes.SHA256()
#: Every derived key (K_hdr, C, K_e) is 32 bytes.
_KEY_LEN = 32

#: Each segment key K_e seals at most 2^EPOCH_LOG2 plaintext bytes.
EPOCH_LOG2 = 40


class ObjectKeys:
    """The per-object keys derived from a data key. Never printed, never pickled.

    `epoch_log2` is a seam for tests (to cross epochs with small objects); production code
    always uses EPOCH_LOG2.
    """

    __slots__ = ("_ciphers", "_label", "_prk_mac", "commitment", "epoch_shift", "header_key")

    def __init__(
        self,
        data_key: bytes | bytearray | memoryview,
        message_id: bytes,
        *,
        seg_log2: int = DEFAULT_SEG_LOG2,
        suite_id: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT,
        epoch_log2: int = EPOCH_LOG2,
    ) -> None:
        if len(data_key) != DATA_KEY_LEN:
            raise ConfigurationError(f"data key must be {DATA_KEY_LEN} bytes")
        if len(message_id) != MESSAGE_ID_LEN:
            raise ConfigurationError(f"message id must be {MESSAGE_ID_LEN} bytes")
        if epoch_log2 < seg_log2:
            raise ConfigurationError("an epoch holds at least one segment")
        extract = crypto_hmac.HMAC(message_id, _SHA512)
        extract.update(data_key)  # no immutable copy of the data key
        self._prk_mac = crypto_hmac.HMAC(extract.finalize(), _SHA512)
        self._label = b"ENV1" + struct.pack(">H", suite_id)
        self.header_key = self._expand(b"header")
        self.commitment = self._expand(b"commit")
        self.epoch_shift = epoch_log2 - seg_log2
        self._ciphers: dict[int, AESGCM] = {}

    def _expand(self, info: bytes) -> bytes:
        """HKDF-Expand(SHA-512, PRK, label || info, 32) (RFC 5869 section 2.3).

        Every output is 32 bytes, under SHA-512's 64, so the expansion is its first block
        alone: T(1) = HMAC(PRK, info || 0x01), truncated. The HMAC keyed with PRK is made
        once and copied for each label: an `HKDFExpand` per label keys a new HMAC each time,
        and the three of them were about a fifth of a 16 KiB object's whole cost.
        `test_keyschedule` checks every label against `HKDFExpand`."""
        h = self._prk_mac.copy()
        h.update(self._label + info + b"\x01")
        return h.finalize()[:_KEY_LEN]

    def segment_cipher(self, index: int) -> AESGCM:
        """The AES-GCM instance for segment `index` (K_e for e = index >> epoch_shift)."""
        epoch = index >> self.epoch_shift
        c = self._ciphers.get(epoch)
        if c is None:
            c = AESGCM(self._expand(b"segment" + struct.pack(">I", epoch)))
            self._ciphers[epoch] = c
        return c

    def mac(self, data: bytes) -> bytes:
        h = crypto_hmac.HMAC(self.header_key, _SHA256)
        h.update(data)
        return h.finalize()

    def __repr__(self) -> str:
        return "ObjectKeys(<secret>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("ObjectKeys cannot be pickled")


def seal_header(
    keys: ObjectKeys,
    *,
    seg_log2: int,
    message_id: bytes,
    kms_context: Mapping[str, str],
    object_context: Mapping[str, str],
    wrapped_keys: Sequence[WrappedKey],
) -> tuple[bytes, bytes]:
    """Encode and MAC a header. Returns (header bytes, HD)."""
    unmacd, header_len, hd = encode_header(
        seg_log2=seg_log2,
        message_id=message_id,
        commitment=keys.commitment,
        kms_context=kms_context,
        object_context=object_context,
        wrapped_keys=wrapped_keys,
    )
    raw = unmacd + keys.mac(unmacd)
    assert len(raw) == header_len
    return raw, hd


def open_header(
    header: Header, data_key: bytes | bytearray | memoryview, *, epoch_log2: int = EPOCH_LOG2
) -> ObjectKeys:
    """Derive the object's keys, then check commitment and header MAC, in that order.

    Both comparisons are constant time. Any failure raises the opaque AuthenticationError,
    before a single segment is opened.
    """
    keys = ObjectKeys(
        data_key,
        header.message_id,
        seg_log2=header.seg_log2,
        suite_id=header.suite_id,
        epoch_log2=epoch_log2,
    )
    if not compare_digest(keys.commitment, header.commitment):
        raise AuthenticationError()
    expected = keys.mac(header.raw[: header.header_len - len(header.header_mac)])
    if not compare_digest(expected, header.header_mac):
        raise AuthenticationError()
    return keys


def _warm_up() -> None:
    """Use each primitive once at import, on the importing thread. OpenSSL fetches and caches
    an algorithm under a write lock the first time it is used; a worker pool forked while
    another thread made that first use hands its children the lock held, and their first
    HMAC waits for ever. Done here, the first use precedes any thread the library starts
    (about 50 microseconds, once per process)."""
    keys = ObjectKeys(bytes(DATA_KEY_LEN), bytes(MESSAGE_ID_LEN))
    keys.segment_cipher(0).encrypt(bytes(12), b"", None)
    keys.mac(b"")


_warm_up()
