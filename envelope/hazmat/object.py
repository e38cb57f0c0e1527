"""One-shot, single-threaded seal/open of a whole object from explicit parts.

The reference path: no KMS, no threads, no randomness. Test vectors are generated and checked
with it (fixed data key and message id), and it is the shortest readable statement of the
format; the streaming engine must produce the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .format import WrappedKey, parse_header, parse_prefix
from .keyschedule import EPOCH_LOG2, ObjectKeys, open_header, seal_header
from .segments import Layout, open_segments, seal_segments

__all__ = ("open_object_with_key", "seal_object")


def seal_object(
    plaintext: bytes,
    *,
    data_key: bytes,
    message_id: bytes,
    wrapped_keys: Sequence[WrappedKey],
    seg_log2: int,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    epoch_log2: int = EPOCH_LOG2,
) -> bytes:
    keys = ObjectKeys(data_key, message_id, seg_log2=seg_log2, epoch_log2=epoch_log2)
    header, hd = seal_header(
        keys,
        seg_log2=seg_log2,
        message_id=message_id,
        kms_context=kms_context or {},
        object_context=object_context or {},
        wrapped_keys=wrapped_keys,
    )
    layout = Layout(len(header), seg_log2)
    out = bytearray(layout.ciphertext_length(len(plaintext)))
    out[: len(header)] = header
    seal_segments(
        keys, hd, 0, memoryview(plaintext), memoryview(out)[len(header) :], seg_log2, True
    )
    return bytes(out)


def open_object_with_key(
    ciphertext: bytes, *, data_key: bytes, epoch_log2: int = EPOCH_LOG2
) -> bytes:
    """Open a whole object given its data key; raises the engine's typed errors."""
    header_len = parse_prefix(ciphertext[:12])
    header = parse_header(ciphertext[:header_len])
    keys = open_header(header, data_key, epoch_log2=epoch_log2)
    layout = Layout(header_len, header.seg_log2)
    out = bytearray(layout.plaintext_length(len(ciphertext)))
    open_segments(
        keys,
        header.bound_digest,
        0,
        memoryview(ciphertext)[header_len:],
        memoryview(out),
        header.seg_log2,
        True,
    )
    return bytes(out)
