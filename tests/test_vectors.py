"""Known-answer vectors of format v1 (tests/vectors/*.json, docs/vectors.md).

Positive vectors are checked byte for byte against the reference sealer, against a second,
independent statement of the key schedule (stdlib hmac/hashlib and plain AES-GCM), and are
opened by the reference opener and by the real engine (`decrypt_bytes` and streaming
`decrypt`) through a keyring whose backend knows only the fixed data key. Negative vectors
must raise exactly the named error, on every path.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import io
import json
import struct
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope import api, errors, objects
from envelope.api import Options, decrypt, decrypt_bytes
from envelope.errors import AuthenticationError, KmsKeyError
from envelope.hazmat.format import WrappedKey, parse_header
from envelope.hazmat.keyschedule import EPOCH_LOG2
from envelope.hazmat.object import open_object_with_key, seal_object
from envelope.hazmat.segments import Layout
from envelope.keyring import Keyring
from envelope.kms.base import DataKey

VECTORS = Path(__file__).parent / "vectors"
FILES = ("v1_known_answer.json", "v1_epoch.json", "v1_negative.json")


def _load(name: str) -> list[dict[str, Any]]:
    return list(json.loads((VECTORS / name).read_text("utf-8"))["vectors"])


KNOWN = _load("v1_known_answer.json")
EPOCH = _load("v1_epoch.json")
POSITIVE = KNOWN + EPOCH
NEGATIVE = _load("v1_negative.json")
BY_NAME = {v["name"]: v for v in POSITIVE}

# A segment size of 4 KiB and one segment per batch: the engine crosses batch boundaries.
OPTIONS = Options(segment_size=4096, batch_bytes=4096, workers=2)


def _plaintext(spec: Mapping[str, Any]) -> bytes:
    assert spec["pattern"] == "byte i = i mod 251"
    return bytes(i % 251 for i in range(spec["length"]))


def _wrapped(v: Mapping[str, Any]) -> list[WrappedKey]:
    return [
        WrappedKey(w["provider_id"], w["key_id"], bytes.fromhex(w["ciphertext"]))
        for w in v["inputs"]["wrapped_keys"]
    ]


class FixedKeyBackend:
    """A KmsBackend that knows one wrapped key, one KMS context and the data key behind them."""

    provider_id = "memory"

    def __init__(self, data_key: bytes, wrapped: WrappedKey, context: Mapping[str, str]) -> None:
        self._key = data_key
        self._wrapped = wrapped
        self._context = dict(context)
        self.calls: Counter[str] = Counter()

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        self.calls["GenerateDataKey"] += 1
        if key_id != self._wrapped.key_id or dict(context) != self._context:
            raise KmsKeyError("fixed backend: unknown key or context")
        return DataKey(self._key, self._wrapped)

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        self.calls["Encrypt"] += 1
        if bytes(plaintext) != self._key or dict(context) != self._context:
            raise KmsKeyError("fixed backend wraps only its own key")
        return self._wrapped

    async def decrypt_data_key(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        self.calls["Decrypt"] += 1
        if wrapped != self._wrapped or dict(context) != self._context:
            raise KmsKeyError("fixed backend: wrapped key or context does not match")
        return bytearray(self._key)

    def can_unwrap(self, wrapped: WrappedKey) -> bool:
        return (wrapped.provider_id, wrapped.key_id) == (
            self._wrapped.provider_id,
            self._wrapped.key_id,
        )

    async def aclose(self) -> None:
        return None


def _backend(v: Mapping[str, Any] = KNOWN[0]) -> FixedKeyBackend:
    return FixedKeyBackend(
        bytes.fromhex(v["inputs"]["data_key"]), _wrapped(v)[0], v["inputs"]["kms_context"]
    )


def _ids(vs: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vs]


# -- the files themselves -------------------------------------------------------------------


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("_vector_generator", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regeneration_reproduces_the_stored_files_byte_for_byte() -> None:
    files = _generator().build()
    assert sorted(files) == sorted(FILES)
    for name in FILES:
        assert files[name] == (VECTORS / name).read_text("utf-8"), name


def test_vector_set_covers_the_required_cases() -> None:
    assert [v["inputs"]["plaintext"]["length"] for v in KNOWN] == [
        0,
        1,
        4095,
        4096,
        4097,
        3 * 4096,
        3 * 4096 + 5,
    ]
    assert [v["inputs"]["epoch_log2"] for v in EPOCH] == [13]
    names = set(_ids(NEGATIVE))
    assert {
        "truncated_at_segment_boundary",
        "truncated_inside_segment",
        "appended_segment",
        "swapped_segments",
        "header_mac_bit_flip",
        "wrong_version",
        "unknown_suite",
        "oversized_kms_context_length",
        "flags_set",
    } <= names
    assert len(names) == len(NEGATIVE)


@pytest.mark.parametrize("v", POSITIVE + NEGATIVE, ids=_ids(POSITIVE + NEGATIVE))
def test_recorded_sha256_matches(v: dict[str, Any]) -> None:
    assert hashlib.sha256(bytes.fromhex(v["ciphertext"])).hexdigest() == v["ciphertext_sha256"]


# -- positive vectors -----------------------------------------------------------------------


@pytest.mark.parametrize("v", POSITIVE, ids=_ids(POSITIVE))
def test_seal_object_reproduces_the_vector(v: dict[str, Any]) -> None:
    i = v["inputs"]
    pt = _plaintext(i["plaintext"])
    assert hashlib.sha256(pt).hexdigest() == v["plaintext_sha256"]
    ct = seal_object(
        pt,
        data_key=bytes.fromhex(i["data_key"]),
        message_id=bytes.fromhex(i["message_id"]),
        wrapped_keys=_wrapped(v),
        seg_log2=i["seg_log2"],
        kms_context=i["kms_context"],
        object_context=i["object_context"],
        epoch_log2=i["epoch_log2"],
    )
    assert ct.hex() == v["ciphertext"]


def _hkdf_sha512(salt: bytes, ikm: bytes, info: bytes) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha512).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha512).digest()[:32]


@pytest.mark.parametrize("v", POSITIVE, ids=_ids(POSITIVE))
def test_vector_agrees_with_the_spec_independently(v: dict[str, Any]) -> None:
    """Section 4-6 restated with hashlib/hmac/AES-GCM only, against the recorded bytes."""
    i, d = v["inputs"], v["derived"]
    ct = bytes.fromhex(v["ciphertext"])
    dk, mid = bytes.fromhex(i["data_key"]), bytes.fromhex(i["message_id"])
    lbl = b"ENV1" + struct.pack(">H", 1)
    assert hmac.new(mid, dk, hashlib.sha512).hexdigest() == d["prk"]
    k_hdr = _hkdf_sha512(mid, dk, lbl + b"header")
    assert k_hdr.hex() == d["header_key"]
    assert _hkdf_sha512(mid, dk, lbl + b"commit").hex() == d["commitment"]

    # Fixed part (section 4).
    assert ct[0:4] == b"\x89ENV" and ct[4] == 1 and ct[5] == 0
    assert struct.unpack(">H", ct[6:8])[0] == 1
    h = struct.unpack(">I", ct[8:12])[0]
    assert h == d["header_len"]
    assert ct[12] == i["seg_log2"] and ct[13:16] == b"\0\0\0"
    assert ct[16:48] == mid and ct[48:80].hex() == d["commitment"]
    kms_len = struct.unpack(">H", ct[80:82])[0]
    assert ct[82 : 82 + kms_len].hex() == d["kms_context_block"]
    obj_at = 82 + kms_len
    edk_start = obj_at + 2 + struct.unpack(">H", ct[obj_at : obj_at + 2])[0]

    # Header MAC and HD (section 5).
    mac = hmac.new(k_hdr, ct[: h - 32], hashlib.sha256).digest()
    assert mac.hex() == d["header_mac"] == ct[h - 32 : h].hex()
    hd = hashlib.sha256(ct[0:8] + ct[12:edk_start]).digest()
    assert hd.hex() == d["bound_digest"]
    header = parse_header(ct[:h])
    assert header.bound_digest == hd
    assert dict(header.kms_context) == i["kms_context"]
    assert dict(header.object_context) == i["object_context"]
    assert list(header.wrapped_keys) == _wrapped(v)

    # Segments (section 6): nonces, epochs, offsets, and plain AES-GCM opens each one.
    pt = _plaintext(i["plaintext"])
    s = 1 << i["seg_log2"]
    n = max(1, -(-len(pt) // s))
    assert len(d["segments"]) == n and len(ct) == h + len(pt) + 16 * n
    shift = i["epoch_log2"] - i["seg_log2"]
    for seg in d["segments"]:
        idx, final = seg["index"], seg["index"] == n - 1
        assert seg["final"] is final and seg["epoch"] == idx >> shift
        nonce = struct.pack(">Q", idx) + b"\0\0\0" + (b"\x01" if final else b"\x00")
        assert seg["nonce"] == nonce.hex()
        k_e = _hkdf_sha512(mid, dk, lbl + b"segment" + struct.pack(">I", seg["epoch"]))
        assert d["segment_keys"][str(seg["epoch"])] == k_e.hex()
        assert seg["offset"] == h + idx * (s + 16)
        body = ct[seg["offset"] : seg["offset"] + seg["length"]]
        assert AESGCM(k_e).decrypt(nonce, body, hd) == pt[idx * s : (idx + 1) * s]


@pytest.mark.parametrize("v", POSITIVE, ids=_ids(POSITIVE))
def test_open_object_with_key(v: dict[str, Any]) -> None:
    i = v["inputs"]
    got = open_object_with_key(
        bytes.fromhex(v["ciphertext"]),
        data_key=bytes.fromhex(i["data_key"]),
        epoch_log2=i["epoch_log2"],
    )
    assert got == _plaintext(i["plaintext"])


@pytest.mark.anyio
@pytest.mark.parametrize("v", KNOWN, ids=_ids(KNOWN))
async def test_engine_decrypts_the_vector(v: dict[str, Any]) -> None:
    i = v["inputs"]
    pt = _plaintext(i["plaintext"])
    ct = bytes.fromhex(v["ciphertext"])
    backend = _backend(v)
    keyring = Keyring(decrypt_with=[backend])
    got = await decrypt_bytes(
        ct,
        keyring=keyring,
        expected_context=i["object_context"],
        expected_kms_context=i["kms_context"],
        options=OPTIONS,
    )
    assert bytes(got) == pt

    sink = io.BytesIO()
    info = await decrypt(
        ct, sink, keyring=keyring, expected_context=i["object_context"], options=OPTIONS
    )
    assert sink.getvalue() == pt
    assert info.message_id == i["message_id"]
    assert info.segment_size == 1 << i["seg_log2"]
    assert info.header_len == v["derived"]["header_len"]
    assert (info.plaintext_len, info.ciphertext_len) == (len(pt), len(ct))
    assert dict(info.kms_context) == i["kms_context"]
    assert dict(info.object_context) == i["object_context"]
    assert list(info.wrapped_keys) == _wrapped(v)
    assert backend.calls == Counter({"Decrypt": 2})


def _segments(v: Mapping[str, Any]) -> list[bytes]:
    ct = bytes.fromhex(v["ciphertext"])
    return [ct[s["offset"] : s["offset"] + s["length"]] for s in v["derived"]["segments"]]


def test_epoch_vector_rekeys_at_segment_2() -> None:
    """Same inputs as 3s_plus_5 but a 2^13-byte epoch: only segments 2-3 change."""
    tiny, normal = EPOCH[0], BY_NAME["3s_plus_5"]
    assert tiny["inputs"]["plaintext"] == normal["inputs"]["plaintext"]
    h = tiny["derived"]["header_len"]
    assert tiny["ciphertext"][: 2 * h] == normal["ciphertext"][: 2 * h]
    a, b = _segments(tiny), _segments(normal)
    assert [s["epoch"] for s in tiny["derived"]["segments"]] == [0, 0, 1, 1]
    assert a[:2] == b[:2]
    assert a[2] != b[2] and a[3] != b[3]
    assert tiny["derived"]["segment_keys"]["0"] == normal["derived"]["segment_keys"]["0"]


@pytest.mark.anyio
async def test_epoch_vector_is_rejected_by_production_readers() -> None:
    """Readers derive K_e with epochs of 2^40 bytes, so segment 2 fails under K_0."""
    v = EPOCH[0]
    i = v["inputs"]
    ct = bytes.fromhex(v["ciphertext"])
    pt = _plaintext(i["plaintext"])
    with pytest.raises(AuthenticationError) as e:
        open_object_with_key(ct, data_key=bytes.fromhex(i["data_key"]), epoch_log2=EPOCH_LOG2)
    assert type(e.value) is AuthenticationError
    keyring = Keyring(decrypt_with=[_backend(v)])
    with pytest.raises(AuthenticationError) as e:
        await decrypt_bytes(ct, keyring=keyring, options=OPTIONS)
    assert type(e.value) is AuthenticationError
    sink = io.BytesIO()
    with pytest.raises(AuthenticationError) as e:
        await decrypt(ct, sink, keyring=keyring, options=OPTIONS)
    assert type(e.value) is AuthenticationError
    # One segment per batch: segments 0 and 1 (epoch 0) authenticated and were released.
    assert sink.getvalue() == pt[: 2 * 4096]


# -- negative vectors -----------------------------------------------------------------------


def _error(name: str) -> type[Exception]:
    cls = getattr(errors, name)
    assert isinstance(cls, type) and issubclass(cls, errors.EnvelopeError)
    return cls


def _raises_exactly(expected: type[Exception], exc: BaseException) -> None:
    assert type(exc) is expected, f"expected {expected.__name__}, got {exc!r}"


@pytest.mark.parametrize("v", NEGATIVE, ids=_ids(NEGATIVE))
def test_negative_vector_reference_path(v: dict[str, Any]) -> None:
    expected = _error(v["expected_error"])
    with pytest.raises(errors.EnvelopeError) as e:
        open_object_with_key(bytes.fromhex(v["ciphertext"]), data_key=bytes.fromhex(v["data_key"]))
    _raises_exactly(expected, e.value)


@pytest.mark.anyio
@pytest.mark.parametrize("v", NEGATIVE, ids=_ids(NEGATIVE))
async def test_negative_vector_engine(v: dict[str, Any]) -> None:
    expected = _error(v["expected_error"])
    ct = bytes.fromhex(v["ciphertext"])
    backend = _backend()
    keyring = Keyring(decrypt_with=[backend])
    with pytest.raises(errors.EnvelopeError) as e:
        await decrypt_bytes(ct, keyring=keyring, options=OPTIONS)
    _raises_exactly(expected, e.value)

    sink = io.BytesIO()
    with pytest.raises(errors.EnvelopeError) as e:
        await decrypt(ct, sink, keyring=keyring, options=OPTIONS)
    _raises_exactly(expected, e.value)
    # Whatever was released is a prefix of the base plaintext, in whole segments.
    base = BY_NAME[v["base"]]
    written = sink.getvalue()
    assert written == _plaintext(base["inputs"]["plaintext"])[: len(written)]
    assert len(written) % 4096 == 0
    if issubclass(expected, errors.HeaderFormatError):
        # Malformed headers are refused before any KMS call and before any output.
        assert backend.calls == Counter()
        assert written == b""


# -- the engine writes the same bytes; random access arithmetic ------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("v", KNOWN, ids=_ids(KNOWN))
async def test_engine_encrypts_to_the_vector(v: dict[str, Any], monkeypatch: Any) -> None:
    """With the vector's data key and message id, both engine writers give its exact bytes."""
    i = v["inputs"]
    pt = _plaintext(i["plaintext"])
    mid = bytes.fromhex(i["message_id"])
    monkeypatch.setattr(objects, "message_id_source", lambda n: mid)  # the seam, not urandom
    keyring = Keyring(_backend(v), _wrapped(v)[0].key_id)
    for opts in (OPTIONS, Options(segment_size=4096, batch_bytes=3 * 4096, workers=2)):
        ct = await api.encrypt_bytes(
            pt,
            keyring=keyring,
            kms_context=i["kms_context"],
            object_context=i["object_context"],
            options=opts,
        )
        assert bytes(ct).hex() == v["ciphertext"]
        sink = io.BytesIO()
        info = await api.encrypt(
            pt,
            sink,
            keyring=keyring,
            kms_context=i["kms_context"],
            object_context=i["object_context"],
            options=opts,
        )
        assert sink.getvalue().hex() == v["ciphertext"]
        assert (info.plaintext_len, info.ciphertext_len) == (len(pt), len(ct))


def _spec_range(h: int, k: int, total: int, p: int, m: int) -> tuple[int, int]:
    """docs/format.md section 8, transcribed."""
    t = (1 << k) + 16
    body = total - h
    n = -(-body // t)
    plen = body - 16 * n
    if m == 0 or p >= plen:
        return (total, total)
    q = min(p + m, plen) - 1
    return (h + (p >> k) * t, min(total, h + ((q >> k) + 1) * t))


@pytest.mark.parametrize("v", KNOWN, ids=_ids(KNOWN))
def test_random_access_ranges(v: dict[str, Any]) -> None:
    i, d = v["inputs"], v["derived"]
    ct = bytes.fromhex(v["ciphertext"])
    pt = _plaintext(i["plaintext"])
    h, k = d["header_len"], i["seg_log2"]
    s, t = 1 << k, (1 << k) + 16
    layout = Layout(h, k)
    assert layout.plaintext_length(len(ct)) == len(pt)
    assert layout.ciphertext_length(len(pt)) == len(ct)
    hd = bytes.fromhex(d["bound_digest"])
    key = AESGCM(bytes.fromhex(d["segment_keys"]["0"]))
    n = len(d["segments"])
    points = sorted({0, 1, s - 1, s, s + 1, 2 * s + 3, len(pt) - 1, len(pt), len(pt) + 7})
    for p in (x for x in points if x >= 0):
        for m in (0, 1, 2, s, s + 1, 3 * s):
            got = layout.ciphertext_range(p, m, len(ct))
            assert got == _spec_range(h, k, len(ct), p, m), (p, m)
            start, end = got
            if start == end:
                assert m == 0 or p >= len(pt)
                continue
            # The range holds whole segments, and they open to exactly the requested bytes.
            assert (start - h) % t == 0 and (end == len(ct) or (end - h) % t == 0)
            first = (start - h) // t
            out = b""
            for j in range(first, first + -(-(end - start) // t)):
                a = h + j * t
                nonce = struct.pack(">Q", j) + b"\0\0\0" + (b"\x01" if j == n - 1 else b"\x00")
                out += key.decrypt(nonce, ct[a : min(a + t, len(ct))], hd)
            assert out[p - first * s : p - first * s + m] == pt[p : p + m]
