"""The key schedule's derivations against `cryptography`'s own HKDF.

`ObjectKeys` expands with one HMAC keyed by PRK and copied per label (the single-block case
of HKDF-Expand), not with an `HKDFExpand` per label; these checks hold it to the library's
HKDF for any data key, message id, suite and epoch.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope.hazmat.keyschedule import ObjectKeys

KEY = st.binary(min_size=32, max_size=32)


def _hkdf(data_key: bytes, message_id: bytes, suite: int, what: bytes) -> bytes:
    info = b"ENV1" + struct.pack(">H", suite) + what
    return HKDF(hashes.SHA512(), 32, salt=message_id, info=info).derive(data_key)


@settings(max_examples=60, deadline=None)
@given(
    data_key=KEY,
    message_id=KEY,
    suite=st.integers(0, 0xFFFF),
    epoch=st.integers(0, 0xFFFFFFFF),
)
def test_every_derived_key_is_the_libraries_hkdf(
    data_key: bytes, message_id: bytes, suite: int, epoch: int
) -> None:
    keys = ObjectKeys(bytearray(data_key), message_id, seg_log2=12, suite_id=suite, epoch_log2=12)
    assert keys.header_key == _hkdf(data_key, message_id, suite, b"header")
    assert keys.commitment == _hkdf(data_key, message_id, suite, b"commit")
    k_e = _hkdf(data_key, message_id, suite, b"segment" + struct.pack(">I", epoch))
    nonce = bytes(12)
    # segment `epoch` is the first of epoch `epoch` (epoch_log2 == seg_log2)
    sealed = keys.segment_cipher(epoch).encrypt(nonce, b"probe", None)
    assert sealed == AESGCM(k_e).encrypt(nonce, b"probe", None)


def test_a_copied_expansion_leaves_the_next_one_unchanged() -> None:
    """The PRK-keyed HMAC is copied, never consumed: deriving in any order gives the same keys."""
    a = ObjectKeys(bytes(32), bytes(32), seg_log2=12, epoch_log2=12)
    b = ObjectKeys(bytes(32), bytes(32), seg_log2=12, epoch_log2=12)
    nonce = bytes(12)
    first = [a.segment_cipher(e).encrypt(nonce, b"", None) for e in (3, 0, 7)]
    second = [b.segment_cipher(e).encrypt(nonce, b"", None) for e in (7, 3, 0)]
    assert first == [second[1], second[2], second[0]]
    assert a.header_key == b.header_key
    assert a.commitment == b.commitment
