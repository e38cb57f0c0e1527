"""Format v1 header: constants, encoding and defensive parsing (docs/format.md sections 2-4).

Hazardous layer. This module knows bytes, not keys: it encodes and parses the header and the
two context blocks, and checks every length against a named limit *before* slicing. The MAC and
the commitment are computed in `envelope.hazmat.keyschedule`; the order of checks that a
decryptor MUST follow is enforced in `envelope.hazmat.keyschedule.open_header`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import (
    HeaderFormatError,
    UnsupportedSuiteError,
    UnsupportedVersionError,
)

__all__ = (
    "COMMITMENT_LEN",
    "DATA_KEY_LEN",
    "DEFAULT_SEG_LOG2",
    "FIXED_PREFIX_LEN",
    "HEADER_MAC_LEN",
    "MAGIC",
    "MAX_EDKS",
    "MAX_HEADER_LEN",
    "MAX_KMS_CTX_LEN",
    "MAX_OBJ_CTX_LEN",
    "MAX_SEG_LOG2",
    "MESSAGE_ID_LEN",
    "MIN_HEADER_LEN",
    "MIN_SEG_LOG2",
    "SUITE_AES256GCM_HKDF_SHA512_COMMIT",
    "TAG_LEN",
    "VERSION",
    "Header",
    "WrappedKey",
    "decode_context",
    "encode_context",
    "encode_header",
    "parse_header",
    "parse_prefix",
)

# -- 2. Constants and limits ---------------------------------------------------------------

MAGIC = b"\x89ENV"
VERSION = 1
SUITE_AES256GCM_HKDF_SHA512_COMMIT = 0x0001
SUPPORTED_SUITES = frozenset({SUITE_AES256GCM_HKDF_SHA512_COMMIT})

DATA_KEY_LEN = 32
MESSAGE_ID_LEN = 32
COMMITMENT_LEN = 32
HEADER_MAC_LEN = 32
TAG_LEN = 16

MIN_SEG_LOG2 = 12  # 4 KiB
MAX_SEG_LOG2 = 26  # 64 MiB
DEFAULT_SEG_LOG2 = 20  # 1 MiB

#: magic, version, flags, suite, header_len: enough to learn how many bytes the header has.
FIXED_PREFIX_LEN = 12
MAX_HEADER_LEN = 1 << 20
MAX_KMS_CTX_LEN = 8192
MAX_OBJ_CTX_LEN = 16384
MAX_EDKS = 8
MAX_PROVIDER_ID_LEN = 64
MAX_KEY_ID_LEN = 2048
MAX_EDK_LEN = 4096

_FIXED = struct.Struct(">4sBBHIB3s32s32s")  # through the commitment: 80 bytes
_U16 = struct.Struct(">H")
_EMPTY_CONTEXT = b"\0\0"
_BOUND_TAIL_START = 12  # header[0:8] || header[12:end of obj_ctx] is what segments bind to
#: smallest possible header: fixed part, two empty contexts, one minimal EDK, the MAC.
MIN_HEADER_LEN = _FIXED.size + (2 + 2) + (2 + 2) + 1 + (1 + 1 + 2 + 1 + 2 + 1) + HEADER_MAC_LEN


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """One wrapped (encrypted) data key, as recorded in the header.

    `provider_id` names the kind of backend that wrapped it (``memory``, ``file``, ``local``,
    ``aws-kms``, ...), `key_id` the wrapping key in that backend's namespace, `ciphertext` the
    backend-opaque wrapped bytes. None of these is secret.
    """

    provider_id: str
    key_id: str
    ciphertext: bytes

    def __post_init__(self) -> None:
        pid = self.provider_id.encode("ascii", "strict") if self.provider_id.isascii() else b""
        if not 1 <= len(pid) <= MAX_PROVIDER_ID_LEN:
            raise HeaderFormatError(f"provider id must be 1..{MAX_PROVIDER_ID_LEN} ASCII bytes")
        try:
            kid_len = len(self.key_id.encode("utf-8"))
        except UnicodeEncodeError:
            raise HeaderFormatError("key id must be valid Unicode text") from None
        if not 1 <= kid_len <= MAX_KEY_ID_LEN:
            raise HeaderFormatError(f"key id must be 1..{MAX_KEY_ID_LEN} UTF-8 bytes")
        if not 1 <= len(self.ciphertext) <= MAX_EDK_LEN:
            raise HeaderFormatError(f"wrapped key must be 1..{MAX_EDK_LEN} bytes")

    def __repr__(self) -> str:
        return (
            f"WrappedKey(provider_id={self.provider_id!r}, key_id={self.key_id!r}, "
            f"ciphertext=<{len(self.ciphertext)} bytes>)"
        )


# -- 3. Encryption contexts -----------------------------------------------------------------


def encode_context(context: Mapping[str, str], *, limit: int = MAX_KMS_CTX_LEN) -> bytes:
    """Canonical serialization: u16 count, then (u16 len, key, u16 len, value) sorted by key bytes.

    The same mapping always gives the same bytes, so a context can be hashed, compared and bound.
    """
    if type(context) is dict and not context:  # most objects: every small one pays for this
        return _EMPTY_CONTEXT
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise HeaderFormatError("context keys and values must be str")
    try:
        items = sorted((k.encode("utf-8"), v.encode("utf-8")) for k, v in context.items())
    except UnicodeEncodeError:
        raise HeaderFormatError("context keys and values must be valid Unicode text") from None
    if len(items) > 0xFFFF:
        raise HeaderFormatError("too many context pairs")
    parts = [struct.pack(">H", len(items))]
    for k, v in items:
        if not k:
            raise HeaderFormatError("context keys must not be empty")
        if len(k) > 0xFFFF or len(v) > 0xFFFF:
            raise HeaderFormatError("context key or value over 65535 bytes")
        parts.append(struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v)
    out = b"".join(parts)
    if len(out) > limit:
        raise HeaderFormatError(f"context is {len(out)} bytes; the limit is {limit}")
    return out


def decode_context(data: bytes) -> dict[str, str]:
    """Parse a canonical context block. Rejects duplicates, unsorted keys and trailing bytes."""
    if data == _EMPTY_CONTEXT:  # most objects: decrypting small ones pays for every call
        return {}
    if len(data) < 2:
        raise HeaderFormatError("context block shorter than its count")
    (count,) = struct.unpack_from(">H", data, 0)
    pos = 2
    out: dict[str, str] = {}
    prev: bytes | None = None
    for _ in range(count):
        k, pos = _take_bounded(data, pos, 0xFFFF, "context key")
        v, pos = _take_bounded(data, pos, 0xFFFF, "context value")
        if not k:
            raise HeaderFormatError("context key is empty")
        if prev is not None and k <= prev:
            raise HeaderFormatError("context keys are not sorted and unique")
        prev = k
        try:
            out[k.decode("utf-8")] = v.decode("utf-8")
        except UnicodeDecodeError:
            raise HeaderFormatError("context is not valid UTF-8") from None
    if pos != len(data):
        raise HeaderFormatError("trailing bytes after context pairs")
    return out


# -- 4. The header --------------------------------------------------------------------------


class Header(NamedTuple):
    """A parsed (or to-be-encoded) v1 header. Holds no secret.

    `bound_digest` is HD: SHA-256 over every header byte except `header_len`, the wrapped-key
    list and the MAC. It is the AAD of every segment, so re-wrapping rewrites only the header.

    A named tuple, not a frozen dataclass: one is made for every object opened, and a frozen
    dataclass's constructor (a checked ``object.__setattr__`` per field) cost about a quarter
    of parsing a small object's header; a tuple is as immutable and built in one step.
    """

    seg_log2: int
    message_id: bytes
    commitment: bytes
    kms_context: Mapping[str, str]
    object_context: Mapping[str, str]
    wrapped_keys: tuple[WrappedKey, ...]
    suite_id: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT
    header_len: int = 0
    bound_digest: bytes = b""
    header_mac: bytes = b""
    raw: bytes = b""

    def __repr__(self) -> str:  # without `raw`, which repeats every field
        return (
            f"Header(seg_log2={self.seg_log2}, message_id={self.message_id!r}, "
            f"commitment={self.commitment!r}, kms_context={self.kms_context!r}, "
            f"object_context={self.object_context!r}, wrapped_keys={self.wrapped_keys!r}, "
            f"suite_id={self.suite_id}, header_len={self.header_len}, "
            f"bound_digest={self.bound_digest!r}, header_mac={self.header_mac!r})"
        )

    @property
    def segment_size(self) -> int:
        return 1 << self.seg_log2


def _fixed_and_contexts(
    *,
    suite_id: int,
    header_len: int,
    seg_log2: int,
    message_id: bytes,
    commitment: bytes,
    kms_ctx: bytes,
    obj_ctx: bytes,
) -> bytes:
    return (
        _FIXED.pack(
            MAGIC, VERSION, 0, suite_id, header_len, seg_log2, b"\0\0\0", message_id, commitment
        )
        + struct.pack(">H", len(kms_ctx))
        + kms_ctx
        + struct.pack(">H", len(obj_ctx))
        + obj_ctx
    )


#: The last single wrapped key encoded, and its encoding: objects sealed under one cached data
#: key carry the very same `WrappedKey`, so its list is encoded once, not per object. (A
#: tuple swapped whole: threads read a consistent pair.)
_LAST_EDKS: tuple[WrappedKey | None, bytes] = (None, b"")


def _encode_edks(wrapped_keys: Sequence[WrappedKey]) -> bytes:
    global _LAST_EDKS
    if len(wrapped_keys) == 1:
        last = _LAST_EDKS
        if wrapped_keys[0] is last[0]:
            return last[1]
        out = _encode_edk_list(wrapped_keys)
        if type(wrapped_keys[0].ciphertext) is bytes:  # (immutable: a bytearray could change)
            _LAST_EDKS = (wrapped_keys[0], out)
        return out
    return _encode_edk_list(wrapped_keys)


def _encode_edk_list(wrapped_keys: Sequence[WrappedKey]) -> bytes:
    if not 1 <= len(wrapped_keys) <= MAX_EDKS:
        raise HeaderFormatError(f"an object carries 1..{MAX_EDKS} wrapped keys")
    parts = [bytes([len(wrapped_keys)])]
    for w in wrapped_keys:
        pid = w.provider_id.encode("ascii")
        kid = w.key_id.encode("utf-8")
        parts.append(
            bytes([len(pid)])
            + pid
            + struct.pack(">H", len(kid))
            + kid
            + struct.pack(">H", len(w.ciphertext))
            + w.ciphertext
        )
    return b"".join(parts)


def bound_digest_of(unmacd: bytes, edk_start: int) -> bytes:
    """HD = SHA-256(header[0:8] || header[12:edk_start]): everything but header_len, EDKs, MAC."""
    h = hashlib.sha256()
    h.update(unmacd[:8])
    h.update(unmacd[_BOUND_TAIL_START:edk_start])
    return h.digest()


def encode_header(
    *,
    seg_log2: int,
    message_id: bytes,
    commitment: bytes,
    kms_context: Mapping[str, str],
    object_context: Mapping[str, str],
    wrapped_keys: Sequence[WrappedKey],
    suite_id: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT,
) -> tuple[bytes, int, bytes]:
    """Encode a header without its MAC.

    Returns (header bytes without the MAC, total header_len, HD). The caller appends the
    32-byte MAC computed over the returned bytes.
    """
    if not MIN_SEG_LOG2 <= seg_log2 <= MAX_SEG_LOG2:
        raise HeaderFormatError(f"seg_log2 must be {MIN_SEG_LOG2}..{MAX_SEG_LOG2}")
    if len(message_id) != MESSAGE_ID_LEN or len(commitment) != COMMITMENT_LEN:
        raise HeaderFormatError("message id and commitment are 32 bytes each")
    kms_ctx = encode_context(kms_context, limit=MAX_KMS_CTX_LEN)
    obj_ctx = encode_context(object_context, limit=MAX_OBJ_CTX_LEN)
    edks = _encode_edks(wrapped_keys)
    # header_len is known before packing: every part's size is.
    header_len = _FIXED.size + 2 + len(kms_ctx) + 2 + len(obj_ctx) + len(edks) + HEADER_MAC_LEN
    if header_len > MAX_HEADER_LEN:
        raise HeaderFormatError(f"header would be {header_len} bytes; limit {MAX_HEADER_LEN}")
    head = _fixed_and_contexts(
        suite_id=suite_id,
        header_len=header_len,
        seg_log2=seg_log2,
        message_id=message_id,
        commitment=commitment,
        kms_ctx=kms_ctx,
        obj_ctx=obj_ctx,
    )
    unmacd = head + edks
    return unmacd, header_len, bound_digest_of(unmacd, len(head))


def parse_prefix(prefix: bytes) -> int:
    """Check the first 12 bytes and return header_len (docs/format.md 4.1, steps 1-2).

    Raises before the caller reads any further bytes, so an oversized length costs nothing.
    """
    if len(prefix) < FIXED_PREFIX_LEN:
        if not MAGIC.startswith(bytes(prefix[: len(MAGIC)])):  # (a few bytes of anything else)
            raise HeaderFormatError("not an envelope object (bad magic)")
        raise HeaderFormatError("object is shorter than the fixed header prefix")
    magic, version, flags, suite_id, header_len = struct.unpack_from(">4sBBHI", prefix, 0)
    if magic != MAGIC:
        raise HeaderFormatError("not an envelope object (bad magic)")
    if version != VERSION:
        raise UnsupportedVersionError(f"unsupported format version {version}")
    if flags != 0:
        raise HeaderFormatError("reserved flag bits are set")
    if suite_id not in SUPPORTED_SUITES:
        raise UnsupportedSuiteError(f"unsupported algorithm suite 0x{suite_id:04x}")
    if not MIN_HEADER_LEN <= header_len <= MAX_HEADER_LEN:
        raise HeaderFormatError(
            f"header_len {header_len} outside {MIN_HEADER_LEN}..{MAX_HEADER_LEN}"
        )
    return int(header_len)


def parse_header(
    data: bytes, *, max_wrapped_keys: int = MAX_EDKS, header_len: int | None = None
) -> Header:
    """Parse a whole header (exactly header_len bytes). Authenticates nothing.

    Every length is checked against its limit before it is used to slice. `header_len` is
    what `parse_prefix` returned for these same bytes, when the caller has called it already
    (a reader does, to know how much to read): not parsed twice.
    """
    data = bytes(data)  # no copy of bytes; a view's slices below must be bytes too
    if header_len is None:
        header_len = parse_prefix(data)
    if len(data) != header_len:
        raise HeaderFormatError(f"header is {len(data)} bytes but its header_len says {header_len}")
    (_, _, _, suite_id, _, seg_log2, reserved, message_id, commitment) = _FIXED.unpack_from(data, 0)
    if reserved != b"\0\0\0":
        raise HeaderFormatError("reserved header bytes are not zero")
    if not MIN_SEG_LOG2 <= seg_log2 <= MAX_SEG_LOG2:
        raise HeaderFormatError(f"seg_log2 {seg_log2} outside {MIN_SEG_LOG2}..{MAX_SEG_LOG2}")
    body_end = header_len - HEADER_MAC_LEN
    tail = data[_FIXED.size : body_end]
    parsed = _TAIL_MEMO.get(tail)
    if parsed is None:
        parsed = _parse_tail(tail, max_wrapped_keys)
    kms_ctx, obj_ctx, wrapped, edk_at = parsed
    if len(wrapped) > max_wrapped_keys:  # (a reader's own limit: the memo may hold more)
        raise HeaderFormatError(
            f"object carries {len(wrapped)} wrapped keys; this reader allows {max_wrapped_keys}"
        )
    return Header(  # by position, in the fields' order: keywords cost a microsecond more
        seg_log2,
        message_id,
        commitment,
        dict(kms_ctx) if kms_ctx else {},  # (each header its own: the memo's stay unseen)
        dict(obj_ctx) if obj_ctx else {},
        wrapped,
        suite_id,
        header_len,
        bound_digest_of(data, _FIXED.size + edk_at),
        data[body_end:header_len],
        data,
    )


#: A header's variable part (its two contexts and its wrapped-key list), parsed, by its bytes.
#: Objects sealed under one cached data key with one context carry the very same part, so a
#: reader of many small objects parses it once (about 2 us of a 16 KiB object's 50), and the
#: wrapped keys come back as the very same tuple (the keyring then remembers their route).
#: Bounded in entries and in the size of a part kept (never more than ~512 KiB), and safe to
#: share by threads (a lost race parses twice). Only a part that parsed whole is kept.
_TAIL_MEMO: dict[bytes, tuple[dict[str, str], dict[str, str], tuple[WrappedKey, ...], int]] = {}
_TAIL_MEMO_ENTRIES = 256
_TAIL_MEMO_MAX_BYTES = 2048


def _parse_tail(
    tail: bytes, max_wrapped_keys: int
) -> tuple[dict[str, str], dict[str, str], tuple[WrappedKey, ...], int]:
    """(KMS context, object context, wrapped keys, where the list starts in `tail`) of a
    header's variable part, which must fill `tail` exactly; kept in `_TAIL_MEMO`."""
    kms_raw, pos = _take_bounded(tail, 0, MAX_KMS_CTX_LEN, "kms context")
    obj_raw, pos = _take_bounded(tail, pos, MAX_OBJ_CTX_LEN, "object context")
    edk_at = pos
    if pos + 1 > len(tail):
        raise HeaderFormatError("wrapped-key count runs past the header")
    count = tail[pos]
    if not 1 <= count <= MAX_EDKS:
        raise HeaderFormatError(f"wrapped-key count {count} outside 1..{MAX_EDKS}")
    if count > max_wrapped_keys:
        raise HeaderFormatError(
            f"object carries {count} wrapped keys; this reader allows {max_wrapped_keys}"
        )
    wrapped = _wrapped_key_list(tail[edk_at:])  # (its errors before the contexts', as before)
    parsed = (decode_context(kms_raw), decode_context(obj_raw), wrapped, edk_at)
    if len(tail) <= _TAIL_MEMO_MAX_BYTES:
        if len(_TAIL_MEMO) >= _TAIL_MEMO_ENTRIES:
            _TAIL_MEMO.clear()
        _TAIL_MEMO[tail] = parsed
    return parsed


def _wrapped_key_list(data: bytes) -> tuple[WrappedKey, ...]:
    """The wrapped keys of a header's list (its count byte, already checked, then the keys),
    which must fill `data` exactly."""
    pos = 1
    wrapped: list[WrappedKey] = []
    view = data
    for _ in range(data[0]):
        if pos + 1 > len(view):
            raise HeaderFormatError("provider id length runs past the header")
        plen = view[pos]
        pos += 1
        if not 1 <= plen <= MAX_PROVIDER_ID_LEN or pos + plen > len(view):
            raise HeaderFormatError("provider id length out of bounds")
        pid = view[pos : pos + plen]
        pos += plen
        kid, pos = _take_bounded(view, pos, MAX_KEY_ID_LEN, "key id")
        edk, pos = _take_bounded(view, pos, MAX_EDK_LEN, "wrapped key")
        if not pid.isascii() or not kid or not edk:
            raise HeaderFormatError("malformed wrapped-key entry")
        try:
            kid_s = kid.decode("utf-8")
        except UnicodeDecodeError:
            raise HeaderFormatError("key id is not valid UTF-8") from None
        wrapped.append(WrappedKey(pid.decode("ascii"), kid_s, edk))
    if pos != len(data):
        raise HeaderFormatError("header_len does not match the header's fields")
    return tuple(wrapped)


def _take_bounded(data: bytes, pos: int, limit: int, what: str) -> tuple[bytes, int]:
    if pos + 2 > len(data):
        raise HeaderFormatError(f"{what} length runs past the header")
    (n,) = _U16.unpack_from(data, pos)
    if n > limit:
        raise HeaderFormatError(f"{what} length {n} over its limit {limit}")
    pos += 2
    if pos + n > len(data):
        raise HeaderFormatError(f"{what} runs past the header")
    return bytes(data[pos : pos + n]), pos + n
