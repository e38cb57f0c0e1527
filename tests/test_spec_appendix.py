"""docs/format.md Appendix A: the key-file and memory backends' formats, checked from the spec.

The reader below is written from docs/format.md alone, with `cryptography`'s HKDF, HMAC and
AES-GCM: it reads a key file, derives the key id and the wrapping subkey, finds its entry in a
header, unwraps the data key and opens the object (sections 4-7 and Appendix A). It imports
nothing from `envelope`; envelope's own code appears only in the cross-checks, which require
it to give the same answers (and the typed errors) on the same vectors.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

VECTORS = Path(__file__).parent / "vectors"
KEYFILE = json.loads((VECTORS / "v1_keyfile.json").read_text("utf-8"))
MEMORY = json.loads((VECTORS / "v1_memory.json").read_text("utf-8"))


class Rejected(Exception):
    """The spec reader refuses its input."""


# -- the spec reader: docs/format.md, Appendix A and sections 4-7 ---------------------------


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def read_key_file(text: str) -> bytes:
    """A.2.1: prefix, the canonical standard padded base64 of exactly 32 bytes; surrounding
    whitespace (exactly SP, HT, LF, VT, FF, CR) ignored."""
    body = text.strip(" \t\n\v\f\r")
    prefix = "envelope-file-key-v1:"
    if not body.startswith(prefix):
        raise Rejected("not an envelope key file")
    encoded = body[len(prefix) :]
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise Rejected("not base64") from None
    if len(key) != 32:
        raise Rejected("not 32 bytes")
    if base64.b64encode(key).decode("ascii") != encoded:
        raise Rejected("not the canonical encoding")
    return key


def file_key_id(key: bytes) -> str:
    """A.2.2: fp- and the first 16 bytes of HMAC-SHA-256(K_id, "envelope/file-key-id")."""
    k_id = hkdf_sha256(key, None, b"envelope/file-key/id")
    return "fp-" + hmac.new(k_id, b"envelope/file-key-id", hashlib.sha256).hexdigest()[:32]


def file_wrap_key(key: bytes) -> bytes:
    return hkdf_sha256(key, None, b"envelope/file-key/wrap")


def unwrap(master: bytes, key_id: str, wrapped: bytes, kms_ctx_block: bytes) -> bytes:
    """A.1: 0x02 || salt(16) || nonce(12) || AES-256-GCM(K, nonce, DK, AAD), 77 bytes."""
    if len(wrapped) != 77 or wrapped[0] != 0x02:
        raise Rejected("malformed wrapped key")
    salt, nonce, sealed = wrapped[1:17], wrapped[17:29], wrapped[29:]
    kek = hkdf_sha256(master, salt, b"envelope/aeswrap/v2")
    kid = key_id.encode("utf-8")
    aad = b"envelope/aeswrap/v2" + struct.pack(">H", len(kid)) + kid + kms_ctx_block
    try:
        return AESGCM(kek).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise Rejected("wrong key, key id or KMS context") from None


def context_block(context: Mapping[str, str]) -> bytes:
    """Section 3: u16 count, then the pairs sorted by key bytes."""
    out = struct.pack(">H", len(context))
    for k, v in sorted((k.encode(), v.encode()) for k, v in context.items()):
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def open_object(obj: bytes, unwrap_entry: Any) -> bytes:
    """Sections 4-7, in order. `unwrap_entry(provider, key_id, wrapped, kms_ctx)` returns the
    data key, or None when the entry is not this reader's."""
    if len(obj) < 12 or obj[:8] != b"\x89ENV\x01\x00\x00\x01":
        raise Rejected("prefix")
    h = struct.unpack_from(">I", obj, 8)[0]
    if not 129 <= h <= 1 << 20 or len(obj) < h:
        raise Rejected("header_len")
    if not 12 <= obj[12] <= 26 or obj[13:16] != b"\0\0\0":
        raise Rejected("seg_log2 or reserved")
    k, mid, commitment = obj[12], obj[16:48], obj[48:80]

    def take(pos: int, width: int) -> tuple[bytes, int]:
        n = int.from_bytes(obj[pos : pos + width], "big")
        if pos + width + n > h - 32:
            raise Rejected("field past the header")
        return obj[pos + width : pos + width + n], pos + width + n

    kms_ctx, pos = take(80, 2)
    _obj_ctx, w = take(pos, 2)
    count, pos, data_key = obj[w], w + 1, None
    if not 1 <= count <= 8:
        raise Rejected("edk_count")
    for _ in range(count):
        pid, pos = take(pos, 1)
        kid, pos = take(pos, 2)
        wrapped, pos = take(pos, 2)
        if data_key is None:
            data_key = unwrap_entry(pid.decode("ascii"), kid.decode("utf-8"), wrapped, kms_ctx)
    if pos != h - 32 or data_key is None:
        raise Rejected("no entry of mine" if data_key is None else "trailing header bytes")

    prk = hmac.new(mid, data_key, hashlib.sha512).digest()
    assert len(prk) == 64  # section 5: PRK is HashLen (64) bytes; only the outputs are 32

    def expand(info: bytes) -> bytes:
        return HKDFExpand(hashes.SHA512(), 32, b"ENV1\x00\x01" + info).derive(prk)

    if not hmac.compare_digest(expand(b"commit"), commitment):
        raise Rejected("commitment")
    mac = hmac.new(expand(b"header"), obj[: h - 32], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, obj[h - 32 : h]):
        raise Rejected("header MAC")
    hd = hashlib.sha256(obj[0:8] + obj[12:w]).digest()

    # Section 7, steps 8-10, with the object length known.
    t, body = (1 << k) + 16, len(obj) - h
    if body == 0:
        raise Rejected("empty body")
    n = -(-body // t)
    r = body - (n - 1) * t
    if r < 16 or (n > 1 and r == 16):
        raise Rejected("impossible body length")
    out = b""
    for i in range(n):
        seg = obj[h + i * t : h + (i + 1) * t]
        key = expand(b"segment" + struct.pack(">I", i >> (40 - k)))
        nonce = struct.pack(">Q", i) + b"\0\0\0" + (b"\x01" if i == n - 1 else b"\x00")
        try:
            out += AESGCM(key).decrypt(nonce, seg, hd)
        except InvalidTag:
            raise Rejected(f"segment {i}") from None
    return out


def key_file_reader(text: str) -> Any:
    """The entry chooser of a reader holding one key file (A.2.3)."""
    key = read_key_file(text)
    key_id = file_key_id(key)

    def unwrap_entry(pid: str, kid: str, wrapped: bytes, kms_ctx: bytes) -> bytes | None:
        if (pid, kid) != ("file", key_id):
            return None
        return unwrap(file_wrap_key(key), kid, wrapped, kms_ctx)

    return unwrap_entry


def memory_reader(master: bytes, key_id: str) -> Any:
    def unwrap_entry(pid: str, kid: str, wrapped: bytes, kms_ctx: bytes) -> bytes | None:
        if (pid, kid) != ("memory", key_id):
            return None
        return unwrap(master, kid, wrapped, kms_ctx)

    return unwrap_entry


def _plaintext(spec: Mapping[str, Any]) -> bytes:
    assert spec["pattern"] == "byte i = i mod 251"
    return bytes(i % 251 for i in range(spec["length"]))


def _ids(vs: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vs]


# -- the key file ----------------------------------------------------------------------------


def test_key_file_gives_the_recorded_key_subkeys_and_key_id() -> None:
    kf = KEYFILE["key_file"]
    key = read_key_file(kf["text"])
    assert key.hex() == kf["key"]
    assert file_wrap_key(key).hex() == kf["wrap_subkey"]
    assert hkdf_sha256(key, None, b"envelope/file-key/id").hex() == kf["id_subkey"]
    assert file_key_id(key) == kf["key_id"]
    assert len(kf["key_id"]) == 35 and kf["provider_id"] == "file"
    # The key file text is exactly prefix || base64 || LF, as `envelope keygen` writes it.
    assert kf["text"] == "envelope-file-key-v1:" + base64.b64encode(key).decode() + "\n"
    assert read_key_file(KEYFILE["accepted_key_file_text"]) == key


BAD_FILES = KEYFILE["negative_key_files"]


@pytest.mark.parametrize("v", BAD_FILES, ids=_ids(BAD_FILES))
def test_malformed_key_file_is_refused(v: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(Rejected):
        read_key_file(v["text"])
    # Cross-check: envelope's backend refuses the same file with the named error.
    from envelope import errors
    from envelope.kms.filekey import FileKeyBackend

    path = tmp_path / "bad.key"
    path.write_text(v["text"], "ascii")
    with pytest.raises(errors.EnvelopeError) as e:
        FileKeyBackend(path)
    assert type(e.value).__name__ == v["expected_error"]


# -- wrapped keys ---------------------------------------------------------------------------


def _master(doc: Mapping[str, Any]) -> bytes:
    if "key_file" in doc:
        return file_wrap_key(read_key_file(doc["key_file"]["text"]))
    return bytes.fromhex(doc["master_key"]["key"])


WRAPS = [(KEYFILE, w) for w in KEYFILE["wraps"]] + [(MEMORY, w) for w in MEMORY["wraps"]]


@pytest.mark.parametrize(("doc", "w"), WRAPS, ids=[w["name"] for _, w in WRAPS])
def test_wrapped_key_unwraps_to_the_recorded_data_key(doc: Any, w: dict[str, Any]) -> None:
    wrapped = bytes.fromhex(w["wrapped"])
    block = context_block(w["kms_context"])
    dk = unwrap(_master(doc), w["key_id"], wrapped, block)
    assert dk.hex() == w["data_key"] and len(dk) == 32
    # The recorded intermediate values are the ones A.1 defines.
    salt = bytes.fromhex(w["salt"])
    assert wrapped[1:17] == salt and wrapped[17:29].hex() == w["nonce"]
    assert hkdf_sha256(_master(doc), salt, b"envelope/aeswrap/v2").hex() == w["wrap_key"]
    kid = w["key_id"].encode()
    assert w["aad"] == (b"envelope/aeswrap/v2" + struct.pack(">H", len(kid)) + kid + block).hex()


NEG_WRAPS = [(KEYFILE, n) for n in KEYFILE["negative_wraps"]] + [
    (MEMORY, n) for n in MEMORY["negative_wraps"]
]


@pytest.mark.parametrize(
    ("doc", "n"), NEG_WRAPS, ids=[f"{d['wraps'][0]['name']}-{n['name']}" for d, n in NEG_WRAPS]
)
def test_bad_wrapped_key_is_refused(doc: Any, n: dict[str, Any]) -> None:
    wrapped, block = bytes.fromhex(n["wrapped"]), context_block(n["kms_context"])
    with pytest.raises(Rejected):
        unwrap(_master(doc), n["key_id"], wrapped, block)


# -- whole objects --------------------------------------------------------------------------


OBJECTS = [(KEYFILE, o) for o in KEYFILE["objects"]] + [(MEMORY, o) for o in MEMORY["objects"]]


def _reader(doc: Mapping[str, Any]) -> Any:
    if "key_file" in doc:
        return key_file_reader(doc["key_file"]["text"])
    return memory_reader(bytes.fromhex(doc["master_key"]["key"]), doc["master_key"]["key_id"])


@pytest.mark.parametrize(("doc", "o"), OBJECTS, ids=_ids([o for _, o in OBJECTS]))
def test_object_opens_with_only_the_key_and_the_spec(doc: Any, o: dict[str, Any]) -> None:
    obj = bytes.fromhex(o["ciphertext"])
    assert hashlib.sha256(obj).hexdigest() == o["ciphertext_sha256"]
    got = open_object(obj, _reader(doc))
    assert got == _plaintext(o["plaintext"])
    assert hashlib.sha256(got).hexdigest() == o["plaintext_sha256"]


def test_a_key_file_opens_nothing_sealed_for_another_key() -> None:
    other = "envelope-file-key-v1:" + base64.b64encode(bytes(32)).decode() + "\n"
    for o in KEYFILE["objects"]:
        with pytest.raises(Rejected, match="no entry of mine"):
            open_object(bytes.fromhex(o["ciphertext"]), key_file_reader(other))


def test_second_entry_is_found_after_a_foreign_one() -> None:
    o = next(o for o in KEYFILE["objects"] if o["name"] == "file_second_entry")
    assert [w["provider_id"] for w in o["wrapped_keys"]] == ["memory", "file"]
    # The memory master is not this reader's: it must skip that entry and use the file's.
    assert open_object(bytes.fromhex(o["ciphertext"]), _reader(KEYFILE)) == _plaintext(
        o["plaintext"]
    )
    # And a memory reader holding the memory master opens the same object from entry one.
    mem = MEMORY["master_key"]
    got = open_object(
        bytes.fromhex(o["ciphertext"]), memory_reader(bytes.fromhex(mem["key"]), mem["key_id"])
    )
    assert got == _plaintext(o["plaintext"])


def test_truncation_rules_reject_cut_objects() -> None:
    """Section 7, steps 8-10: an empty body, a body cut at a segment boundary or inside a tag."""
    o = next(o for o in KEYFILE["objects"] if o["name"] == "file_s_plus_1")
    obj = bytes.fromhex(o["ciphertext"])
    h = struct.unpack_from(">I", obj, 8)[0]
    t = 4096 + 16
    reader = _reader(KEYFILE)
    assert len(obj) == h + t + 17
    for cut, why in [
        (h, "empty body"),
        (h + t, "segment 0"),  # the only segment left was sealed non-final
        (h + t + 16, "impossible body length"),  # a 16-byte final after another segment
        (h + t + 8, "impossible body length"),  # inside a tag
    ]:
        with pytest.raises(Rejected, match=why):
            open_object(obj[:cut], reader)
    empty = next(o for o in KEYFILE["objects"] if o["name"] == "file_empty")
    e = bytes.fromhex(empty["ciphertext"])
    assert len(e) == struct.unpack_from(">I", e, 8)[0] + 16  # one empty final segment
    assert open_object(e, reader) == b""
    with pytest.raises(Rejected, match="empty body"):
        open_object(e[:-16], reader)


# -- cross-checks against envelope's own code -----------------------------------------------


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_keyfile_vector_generator", VECTORS / "generate_keyfile.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regeneration_reproduces_the_stored_files_byte_for_byte() -> None:
    files = _generator().build()
    assert sorted(files) == ["v1_keyfile.json", "v1_memory.json"]
    for name, text in files.items():
        assert text == (VECTORS / name).read_text("utf-8"), name


def test_envelope_decrypts_the_key_file_objects(tmp_path: Path) -> None:
    """The library, given only the key file, opens every object the spec reader opened."""
    from envelope import sync
    from envelope.keyring import Keyring
    from envelope.kms.filekey import FileKeyBackend

    path = tmp_path / "vector.key"
    path.write_text(KEYFILE["key_file"]["text"], "ascii")
    path.chmod(0o600)  # as `envelope keygen` makes them (a wider mode is warned about)
    backend = FileKeyBackend(path)
    assert backend.key_id == KEYFILE["key_file"]["key_id"]
    keyring = Keyring(decrypt_with=[backend])
    for o in KEYFILE["objects"]:
        got = sync.decrypt_bytes(bytes.fromhex(o["ciphertext"]), keyring=keyring)
        assert bytes(got) == _plaintext(o["plaintext"]), o["name"]


@pytest.mark.parametrize("n", KEYFILE["negative_wraps"], ids=_ids(KEYFILE["negative_wraps"]))
def test_envelope_refuses_the_bad_wrapped_keys(n: dict[str, Any], tmp_path: Path) -> None:
    import anyio

    from envelope import errors
    from envelope.hazmat.format import WrappedKey
    from envelope.kms.filekey import FileKeyBackend

    path = tmp_path / "vector.key"
    path.write_text(KEYFILE["key_file"]["text"], "ascii")
    path.chmod(0o600)  # as `envelope keygen` makes them (a wider mode is warned about)
    backend = FileKeyBackend(path)
    entry = WrappedKey("file", n["key_id"], bytes.fromhex(n["wrapped"]))

    async def attempt() -> object:
        result: Any = backend.decrypt_data_key(entry, context=n["kms_context"])
        return await result if hasattr(result, "__await__") else result

    with pytest.raises(errors.EnvelopeError) as e:
        anyio.run(attempt)
    assert type(e.value).__name__ == n["expected_error"]
