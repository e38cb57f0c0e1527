"""Segment layout, STREAM nonces and batch seal/open (docs/format.md sections 6-8).

Hazardous layer. Functions here run on worker threads: they take memoryviews of preallocated
buffers and call AESGCM.encrypt_into / decrypt_into, which release the GIL, so several batches
seal in parallel without copies.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag

from ..errors import AuthenticationError, ConfigurationError, TruncatedObjectError
from .format import TAG_LEN
from .keyschedule import ObjectKeys

__all__ = ("MAX_SEGMENTS", "Layout", "open_segments", "seal_segments", "segment_nonce")

#: Policy cap on segments per object (the nonce field could count to 2^64).
MAX_SEGMENTS = 1 << 32

_NONCE = struct.Struct(">Q3xB")


def segment_nonce(index: int, final: bool) -> bytes:
    """nonce_i = u64(i) || 00 00 00 || final flag (0x00 or 0x01)."""
    return _NONCE.pack(index, 1 if final else 0)


class Layout:
    """Where every segment of an object sits; pure arithmetic (docs/format.md section 8).

    A plain class, not a dataclass: one is made per object, and a frozen dataclass costs
    about 2 ms to define at import (start-up) and twice the time to construct.
    """

    __slots__ = ("header_len", "seg_log2")

    def __init__(self, header_len: int, seg_log2: int) -> None:
        self.header_len = header_len
        self.seg_log2 = seg_log2

    def __repr__(self) -> str:
        return f"Layout(header_len={self.header_len}, seg_log2={self.seg_log2})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return (self.header_len, self.seg_log2) == (other.header_len, other.seg_log2)

    def __hash__(self) -> int:
        return hash((self.header_len, self.seg_log2))

    @property
    def segment_size(self) -> int:
        return 1 << self.seg_log2

    @property
    def ct_segment_size(self) -> int:
        return (1 << self.seg_log2) + TAG_LEN

    def segment_count(self, plaintext_len: int) -> int:
        """n = max(1, ceil(P / S)): an empty object still has one (empty) final segment."""
        if plaintext_len < 0:
            raise ConfigurationError("negative length")
        return max(1, -(-plaintext_len >> self.seg_log2))

    def ciphertext_length(self, plaintext_len: int) -> int:
        # segment_count written out: this runs once or twice per object, on the hot path
        if plaintext_len < 0:
            raise ConfigurationError("negative length")
        n = max(1, -(-plaintext_len >> self.seg_log2))
        if n > MAX_SEGMENTS:
            raise ConfigurationError("object exceeds 2^32 segments; use a larger segment size")
        return self.header_len + plaintext_len + n * TAG_LEN

    def plaintext_length(self, ciphertext_len: int) -> int:
        """P from the total object length Lc; rejects impossible lengths (truncation)."""
        body = ciphertext_len - self.header_len
        if body <= 0:
            raise TruncatedObjectError()  # the header, and nothing after it
        t = (1 << self.seg_log2) + TAG_LEN
        n = -(-body // t)
        r = body - (n - 1) * t
        if n > MAX_SEGMENTS or r < TAG_LEN or (n > 1 and r < TAG_LEN + 1):
            # No valid object has this length; nothing was authenticated, so the
            # failure stays opaque (docs/format.md section 7).
            raise AuthenticationError()
        return body - n * TAG_LEN

    def ciphertext_range(self, offset: int, length: int, ciphertext_len: int) -> tuple[int, int]:
        """The one contiguous ciphertext byte range [start, end) holding plaintext [offset,
        offset+length): whole segments, for a single ranged GET."""
        plen = self.plaintext_length(ciphertext_len)
        if offset < 0 or length < 0:
            raise ConfigurationError("offset and length must be non-negative")
        if length == 0 or offset >= plen:
            return (ciphertext_len, ciphertext_len)
        last = min(offset + length, plen) - 1
        t = self.ct_segment_size
        start = self.header_len + (offset >> self.seg_log2) * t
        end = min(ciphertext_len, self.header_len + ((last >> self.seg_log2) + 1) * t)
        return (start, end)


def seal_segments(
    keys: ObjectKeys,
    hd: bytes,
    first_index: int,
    src: memoryview,
    dst: memoryview,
    seg_log2: int,
    final: bool,
) -> int:
    """Seal the plaintext segments in `src` (all full but perhaps the last) into `dst`.

    `final` says the batch ends the object: its last segment gets the final flag. Returns the
    number of ciphertext bytes written at the start of `dst`.
    """
    s = 1 << seg_log2
    t = s + TAG_LEN
    length = len(src)
    count = max(1, -(-length // s))
    if first_index + count > MAX_SEGMENTS:
        raise ConfigurationError("object exceeds 2^32 segments; use a larger segment size")
    if not final and length % s:
        raise ConfigurationError("only the final batch may end with a short segment")
    if length == 0 and not (final and first_index == 0):
        raise ConfigurationError("only an empty object has an empty segment")
    out = 0
    for j in range(count):
        i = first_index + j
        a = j * s
        b = min(a + s, length)
        out = j * t + (b - a) + TAG_LEN
        keys.segment_cipher(i).encrypt_into(
            _NONCE.pack(i, 1 if (final and j == count - 1) else 0), src[a:b], hd, dst[j * t : out]
        )
    return out


def open_segments(
    keys: ObjectKeys,
    hd: bytes,
    first_index: int,
    src: memoryview,
    dst: memoryview,
    seg_log2: int,
    final: bool,
    scratch: memoryview | None = None,
) -> int:
    """Open the ciphertext segments in `src` into `dst`; returns plaintext bytes written.

    On any failure the bytes written to `dst` are zeroed before raising, so no plaintext of an
    unauthenticated segment survives in the buffer. If the last segment of a final batch fails
    as final but authenticates as non-final, the object was cut at a segment boundary:
    TruncatedObjectError.

    AES-GCM writes a segment's plaintext before it checks the tag. Where `dst` is memory that
    another process can read while this runs (a caller's shared mapping:
    `objects.process_private`), pass `scratch`, a private buffer of at least one segment: each
    segment is opened there and copied into `dst` only once its tag verified (the caller wipes
    `scratch` when done with it). Process-private buffers need none.
    """
    s = 1 << seg_log2
    t = s + TAG_LEN
    length = len(src)
    count = max(1, -(-length // t))
    r = length - (count - 1) * t
    if length == 0 and first_index == 0:
        raise TruncatedObjectError()  # the header, and nothing after it
    if (
        r < TAG_LEN
        or (count > 1 and r == TAG_LEN)
        or (not final and r != t)
        or first_index + count > MAX_SEGMENTS
        or (final and r == TAG_LEN and first_index != 0)  # empty final only if n == 1
    ):
        raise AuthenticationError()
    written = 0
    for j in range(count):
        i = first_index + j
        a = j * t
        b = min(a + t, length)
        is_final = final and j == count - 1
        cipher = keys.segment_cipher(i)
        final_out = dst[j * s : j * s + (b - a) - TAG_LEN]
        out = final_out if scratch is None else scratch[: len(final_out)]
        try:
            cipher.decrypt_into(_NONCE.pack(i, 1 if is_final else 0), src[a:b], hd, out)
        except InvalidTag:
            out[:] = bytes(len(out))
            truncated = False
            if is_final:
                try:
                    cipher.decrypt_into(_NONCE.pack(i, 0), src[a:b], hd, out)
                    truncated = b - a == t
                except InvalidTag:
                    pass
                out[:] = bytes(len(out))
            dst[:written] = bytes(written)
            if truncated:
                raise TruncatedObjectError() from None
            # The same opaque message as a commitment or header-MAC failure (format.md 7).
            raise AuthenticationError() from None
        if scratch is not None:
            final_out[:] = out
        written = j * s + (b - a) - TAG_LEN
    return written
