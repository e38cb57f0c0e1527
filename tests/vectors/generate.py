"""Generate the format v1 known-answer vectors in tests/vectors/ (see docs/vectors.md).

    .venv/bin/python tests/vectors/generate.py          # rewrite the JSON files
    .venv/bin/python tests/vectors/generate.py --check  # exit 1 if they differ

Every input is fixed, so the output is deterministic: `tests/test_vectors.py` regenerates the
files in memory and requires them to equal the stored ones byte for byte.

Ciphertexts come from `envelope.hazmat.object.seal_object` (the reference path). The derived
values recorded next to them (PRK, K_hdr, C, K_e, HD, nonces) are computed here a second time,
independently, with the standard library's `hmac` and `hashlib` only, straight from
docs/format.md section 5; the generator refuses to write vectors on which the two disagree.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope.hazmat.format import MAX_KMS_CTX_LEN, WrappedKey, encode_context
from envelope.hazmat.object import seal_object

HERE = Path(__file__).resolve().parent

# -- fixed inputs (docs/vectors.md, "Inputs") -----------------------------------------------

DATA_KEY = bytes(range(0x20))
MESSAGE_ID = bytes(range(0x40, 0x60))
OTHER_MESSAGE_ID = bytes(range(0x60, 0x80))  # for the negative "spliced" vector
KMS_CONTEXT = {"bucket": "example-bucket", "prefix": "vectors/"}
OBJECT_CONTEXT = {"path": "vectors/object.bin", "schema": "v1"}
WRAPPED_KEY = WrappedKey(
    provider_id="memory",
    key_id="vector-key",
    # 0x01 || 60 fixed bytes: the shape (61 bytes) of a memory-backend wrapped key.
    ciphertext=b"\x01" + bytes((0xA0 + i) % 256 for i in range(60)),
)
SEG_LOG2 = 12
S = 1 << SEG_LOG2
T = S + 16
EPOCH_LOG2 = 40
TINY_EPOCH_LOG2 = 13  # two 4 KiB segments per epoch

LENGTHS = [
    ("empty", 0),
    ("one_byte", 1),
    ("s_minus_1", S - 1),
    ("s", S),
    ("s_plus_1", S + 1),
    ("3s", 3 * S),
    ("3s_plus_5", 3 * S + 5),
]


def plaintext(length: int) -> bytes:
    """The fixed plaintext pattern: byte i is i mod 251."""
    return bytes(i % 251 for i in range(length))


# -- an independent statement of the key schedule (docs/format.md section 5) ----------------


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha512).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int = 32) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha512).digest()
        out += block
        counter += 1
    return out[:length]


def label(suite: int, what: bytes) -> bytes:
    return b"ENV1" + struct.pack(">H", suite) + what


def derive(data_key: bytes, message_id: bytes, suite: int = 1) -> dict[str, bytes]:
    prk = hkdf_extract(message_id, data_key)
    return {
        "prk": prk,
        "header_key": hkdf_expand(prk, label(suite, b"header")),
        "commitment": hkdf_expand(prk, label(suite, b"commit")),
    }


def segment_key(prk: bytes, epoch: int, suite: int = 1) -> bytes:
    return hkdf_expand(prk, label(suite, b"segment" + struct.pack(">I", epoch)))


def nonce(index: int, final: bool) -> bytes:
    return struct.pack(">Q", index) + b"\x00\x00\x00" + (b"\x01" if final else b"\x00")


def split_header(ct: bytes) -> dict[str, Any]:
    """Field offsets of a header, found by walking it as section 4 describes."""
    header_len = struct.unpack_from(">I", ct, 8)[0]
    pos = 80
    kms_len = struct.unpack_from(">H", ct, pos)[0]
    pos += 2 + kms_len
    obj_len = struct.unpack_from(">H", ct, pos)[0]
    pos += 2 + obj_len
    return {"header_len": header_len, "kms_ctx_len_at": 80, "edk_start": pos}


# -- building vectors -----------------------------------------------------------------------


def _wrapped_json(w: WrappedKey) -> dict[str, str]:
    return {"provider_id": w.provider_id, "key_id": w.key_id, "ciphertext": w.ciphertext.hex()}


def positive(name: str, length: int, *, epoch_log2: int = EPOCH_LOG2) -> dict[str, Any]:
    pt = plaintext(length)
    ct = seal_object(
        pt,
        data_key=DATA_KEY,
        message_id=MESSAGE_ID,
        wrapped_keys=[WRAPPED_KEY],
        seg_log2=SEG_LOG2,
        kms_context=KMS_CONTEXT,
        object_context=OBJECT_CONTEXT,
        epoch_log2=epoch_log2,
    )
    k = derive(DATA_KEY, MESSAGE_ID)
    f = split_header(ct)
    h = f["header_len"]
    hd = hashlib.sha256(ct[0:8] + ct[12 : f["edk_start"]]).digest()
    mac = hmac.new(k["header_key"], ct[: h - 32], hashlib.sha256).digest()
    if ct[48:80] != k["commitment"] or ct[h - 32 : h] != mac:
        raise SystemExit(f"{name}: commitment or header MAC disagrees with section 5")
    n = max(1, -(-length // S))
    shift = epoch_log2 - SEG_LOG2
    segments = []
    keys: dict[int, bytes] = {}
    for i in range(n):
        e = i >> shift
        keys.setdefault(e, segment_key(k["prk"], e))
        start = h + i * T
        end = min(len(ct), start + T)
        final = i == n - 1
        got = AESGCM(keys[e]).decrypt(nonce(i, final), ct[start:end], hd)
        if got != pt[i * S : (i + 1) * S]:
            raise SystemExit(f"{name}: segment {i} disagrees with section 6")
        segments.append(
            {
                "index": i,
                "epoch": e,
                "final": final,
                "nonce": nonce(i, final).hex(),
                "offset": start,
                "length": end - start,
            }
        )
    return {
        "name": name,
        "inputs": {
            "data_key": DATA_KEY.hex(),
            "message_id": MESSAGE_ID.hex(),
            "seg_log2": SEG_LOG2,
            "epoch_log2": epoch_log2,
            "kms_context": KMS_CONTEXT,
            "object_context": OBJECT_CONTEXT,
            "wrapped_keys": [_wrapped_json(WRAPPED_KEY)],
            "plaintext": {"pattern": "byte i = i mod 251", "length": length},
        },
        "plaintext_sha256": hashlib.sha256(pt).hexdigest(),
        "derived": {
            "prk": k["prk"].hex(),
            "header_key": k["header_key"].hex(),
            "commitment": k["commitment"].hex(),
            "segment_keys": {str(e): key.hex() for e, key in sorted(keys.items())},
            "kms_context_block": encode_context(KMS_CONTEXT, limit=MAX_KMS_CTX_LEN).hex(),
            "header_len": h,
            "bound_digest": hd.hex(),
            "header_mac": mac.hex(),
            "segments": segments,
        },
        "ciphertext": ct.hex(),
        "ciphertext_sha256": hashlib.sha256(ct).hexdigest(),
    }


def _seal(length: int, message_id: bytes = MESSAGE_ID) -> bytes:
    return seal_object(
        plaintext(length),
        data_key=DATA_KEY,
        message_id=message_id,
        wrapped_keys=[WRAPPED_KEY],
        seg_log2=SEG_LOG2,
        kms_context=KMS_CONTEXT,
        object_context=OBJECT_CONTEXT,
    )


def _set(ct: bytes, offset: int, value: bytes) -> bytes:
    return ct[:offset] + value + ct[offset + len(value) :]


def _flip(ct: bytes, offset: int, mask: int = 0x01) -> bytes:
    return _set(ct, offset, bytes([ct[offset] ^ mask]))


def negatives() -> list[dict[str, Any]]:
    one = _seal(1)
    s1 = _seal(S + 1)
    s3 = _seal(3 * S)
    other = _seal(3 * S, OTHER_MESSAGE_ID)
    h = split_header(s3)["header_len"]
    h1 = split_header(one)["header_len"]
    assert split_header(s1)["header_len"] == h == h1

    def seg(ct: bytes, i: int) -> bytes:
        return ct[h + i * T : h + (i + 1) * T]

    cases: list[tuple[str, str, str, str, Callable[[], bytes]]] = [
        (
            "truncated_at_segment_boundary",
            "s_plus_1",
            "the final segment (17 bytes) is removed; segment 0 was sealed as non-final",
            "TruncatedObjectError",
            lambda: s1[: h + T],
        ),
        (
            "truncated_to_header",
            "one_byte",
            "every segment removed: the header alone, an empty body",
            "TruncatedObjectError",
            lambda: one[:h1],
        ),
        (
            "truncated_inside_segment",
            "3s",
            "cut in the middle of segment 1: the short last segment fails as final and as "
            "non-final",
            "AuthenticationError",
            lambda: s3[: h + T + T // 2],
        ),
        (
            "truncated_to_tag_only_remainder",
            "3s",
            "cut 16 bytes into segment 2: a 16-byte final segment after others is impossible "
            "(r >= 17 when n > 1), rejected from the length before any decryption",
            "AuthenticationError",
            lambda: s3[: h + 2 * T + 16],
        ),
        (
            "truncated_inside_header",
            "one_byte",
            "only the first 100 bytes: the object ends inside its header",
            "HeaderFormatError",
            lambda: one[:100],
        ),
        (
            "appended_segment",
            "3s",
            "a copy of segment 0 appended after the final segment",
            "AuthenticationError",
            lambda: s3 + seg(s3, 0),
        ),
        (
            "appended_empty_segment",
            "3s",
            "16 bytes appended: an empty final segment is allowed only for the empty object, "
            "and a streaming reader meets the old final segment failing as non-final first",
            "AuthenticationError",
            lambda: s3 + bytes(16),
        ),
        (
            "swapped_segments",
            "3s",
            "segments 0 and 1 exchanged",
            "AuthenticationError",
            lambda: s3[:h] + seg(s3, 1) + seg(s3, 0) + seg(s3, 2),
        ),
        (
            "spliced_segment",
            "3s",
            "segment 1 replaced by segment 1 of an object sealed under the same data key "
            f"with message id {OTHER_MESSAGE_ID.hex()}",
            "AuthenticationError",
            lambda: s3[:h] + seg(s3, 0) + seg(other, 1) + seg(s3, 2),
        ),
        (
            "foreign_header",
            "3s",
            "the header of the object with message id "
            f"{OTHER_MESSAGE_ID.hex()} (same data key) in front of this body",
            "AuthenticationError",
            lambda: other[:h] + s3[h:],
        ),
        (
            "segment_body_bit_flip",
            "3s",
            "bit 0 of the first byte of segment 1 flipped",
            "AuthenticationError",
            lambda: _flip(s3, h + T),
        ),
        (
            "segment_tag_bit_flip",
            "3s",
            "bit 0 of the last byte of segment 2 (its tag) flipped",
            "AuthenticationError",
            lambda: _flip(s3, h + 3 * T - 1),
        ),
        (
            "header_mac_bit_flip",
            "one_byte",
            "bit 0 of the first header MAC byte flipped",
            "AuthenticationError",
            lambda: _flip(one, h1 - 32),
        ),
        (
            "commitment_bit_flip",
            "one_byte",
            "bit 0 of the first commitment byte (offset 48) flipped",
            "AuthenticationError",
            lambda: _flip(one, 48),
        ),
        (
            "object_context_bit_flip",
            "one_byte",
            "bit 0 of the first object-context key byte flipped ('path' -> 'qath'): the "
            "header still parses, the header MAC fails",
            "AuthenticationError",
            lambda: _flip(one, _obj_ctx_first_key_offset(one)),
        ),
        (
            "bad_magic",
            "one_byte",
            "magic 89 45 4e 56 changed to 89 45 4e 57",
            "HeaderFormatError",
            lambda: _set(one, 3, b"W"),
        ),
        (
            "wrong_version",
            "one_byte",
            "version byte (offset 4) set to 0x02",
            "UnsupportedVersionError",
            lambda: _set(one, 4, b"\x02"),
        ),
        (
            "flags_set",
            "one_byte",
            "flags byte (offset 5) set to 0x01",
            "HeaderFormatError",
            lambda: _set(one, 5, b"\x01"),
        ),
        (
            "unknown_suite",
            "one_byte",
            "suite_id (offset 6) set to 0x0002 (reserved, not implemented)",
            "UnsupportedSuiteError",
            lambda: _set(one, 6, b"\x00\x02"),
        ),
        (
            "oversized_header_len",
            "one_byte",
            "header_len (offset 8) set to 2^20 + 1",
            "HeaderFormatError",
            lambda: _set(one, 8, struct.pack(">I", (1 << 20) + 1)),
        ),
        (
            "oversized_kms_context_length",
            "one_byte",
            "kms_ctx_len (offset 80) set to 8193, one over MAX_KMS_CTX_LEN",
            "HeaderFormatError",
            lambda: _set(one, 80, struct.pack(">H", 8193)),
        ),
        (
            "seg_log2_too_large",
            "one_byte",
            "seg_log2 (offset 12) set to 27, one over MAX_SEG_LOG2",
            "HeaderFormatError",
            lambda: _set(one, 12, b"\x1b"),
        ),
        (
            "reserved_nonzero",
            "one_byte",
            "reserved byte at offset 15 set to 0x01",
            "HeaderFormatError",
            lambda: _set(one, 15, b"\x01"),
        ),
        (
            "wrong_data_key",
            "one_byte",
            "sealed under data key 0x20..0x3f but opened with 0x00..0x1f: the commitment fails",
            "AuthenticationError",
            lambda: seal_object(
                plaintext(1),
                data_key=bytes(range(0x20, 0x40)),
                message_id=MESSAGE_ID,
                wrapped_keys=[WRAPPED_KEY],
                seg_log2=SEG_LOG2,
                kms_context=KMS_CONTEXT,
                object_context=OBJECT_CONTEXT,
            ),
        ),
    ]
    out = []
    for name, base, mutation, error, make in cases:
        ct = make()
        out.append(
            {
                "name": name,
                "base": base,
                "mutation": mutation,
                "data_key": DATA_KEY.hex(),
                "expected_error": error,
                "ciphertext": ct.hex(),
                "ciphertext_sha256": hashlib.sha256(ct).hexdigest(),
            }
        )
    return out


def _obj_ctx_first_key_offset(ct: bytes) -> int:
    """Offset of the first key byte of the object context: after its len, count, key len."""
    kms_len = struct.unpack_from(">H", ct, 80)[0]
    return 80 + 2 + kms_len + 2 + 2 + 2


def _document(description: str, vectors: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": "envelope object format v1 (docs/format.md)",
        "description": description,
        "generator": "tests/vectors/generate.py (docs/vectors.md)",
        "vectors": vectors,
    }


def build() -> Mapping[str, str]:
    """File name -> exact file content, for every vector file."""
    docs = {
        "v1_known_answer.json": _document(
            "Positive vectors: seal_object over fixed inputs, S = 4096, plaintext lengths "
            "0, 1, S-1, S, S+1, 3S, 3S+5.",
            [positive(name, n) for name, n in LENGTHS],
        ),
        "v1_epoch.json": _document(
            "Positive vector with a test-only epoch of 2^13 bytes (two 4 KiB segments): "
            "segments 0-1 use K_0, segments 2-3 use K_1. Production readers use 2^40 and "
            "MUST reject it.",
            [positive("epoch_rekey_3s_plus_5", 3 * S + 5, epoch_log2=TINY_EPOCH_LOG2)],
        ),
        "v1_negative.json": _document(
            "Negative vectors: each ciphertext MUST be rejected with the named error.",
            negatives(),
        ),
    }
    return {name: json.dumps(doc, indent=2) + "\n" for name, doc in docs.items()}


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        bad = [n for n, text in files.items() if (HERE / n).read_text("utf-8") != text]
        for n in bad:
            print(f"{n} differs from a fresh generation")
        return 1 if bad else 0
    for name, text in files.items():
        (HERE / name).write_text(text, "utf-8")
        print(f"wrote {name} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
