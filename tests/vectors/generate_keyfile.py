"""Generate the Appendix A vectors of docs/format.md: key-file and memory backends.

    .venv/bin/python tests/vectors/generate_keyfile.py          # rewrite the two JSON files
    .venv/bin/python tests/vectors/generate_keyfile.py --check  # exit 1 if they differ

A sibling of `generate.py` (whose file set `tests/test_vectors.py` pins), for the wrapped-key
formats that the object format leaves opaque. Every input is fixed, so the output is
deterministic; `tests/test_spec_appendix.py` regenerates the files in memory and requires them
to equal the stored ones byte for byte.

The key ids, subkeys and wrapped keys are computed here from Appendix A alone (stdlib `hmac`
for HKDF-SHA-256 and HMAC, plain AES-GCM), because the backends draw their salts and nonces
from the CSPRNG. The generator then refuses to write anything that envelope's own code does
not accept: `FileKeyBackend` must read the key file and name it with the same key id, the
file and memory backends must unwrap every wrapped key to the recorded data key, and
`open_object_with_key` must open every object. The objects themselves are sealed by
`envelope.hazmat.object.seal_object`, the reference sealer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import struct
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope.errors import EnvelopeError
from envelope.hazmat.format import MAX_KMS_CTX_LEN, WrappedKey, encode_context
from envelope.hazmat.object import open_object_with_key, seal_object
from envelope.kms.filekey import FileKeyBackend
from envelope.kms.memory import MemoryKms

HERE = Path(__file__).resolve().parent

# -- fixed inputs (docs/vectors.md, "Appendix A vectors") -----------------------------------

FILE_KEY = bytes(range(0x80, 0xA0))  # the 32 bytes a key file holds
MEMORY_MASTER = bytes(range(0xA0, 0xC0))  # a memory backend's master key
MEMORY_KEY_ID = "mem-vector"
DATA_KEY = bytes(range(0x20))  # the same data key as v1_known_answer.json
KMS_CONTEXT = {"bucket": "example-bucket", "prefix": "vectors/"}
OBJECT_CONTEXT = {"path": "vectors/object.bin", "schema": "v1"}
SEG_LOG2 = 12
S = 1 << SEG_LOG2

KEY_FILE_PREFIX = "envelope-file-key-v1:"
WRAP_LABEL = b"envelope/aeswrap/v2"
WRAP_VERSION = b"\x02"
WRAPPED_LEN = 1 + 16 + 12 + 32 + 16


def plaintext(length: int) -> bytes:
    """The fixed plaintext pattern of every vector: byte i is i mod 251."""
    return bytes(i % 251 for i in range(length))


def fixed(label: str, n: int) -> bytes:
    """A fixed, distinct value per use: the first n bytes of SHA-256("envelope vector " || label).

    Salts, nonces and message ids are random in real use; a vector needs them fixed, and
    distinct, so that no two vectors reuse a nonce under one key.
    """
    return hashlib.sha256(b"envelope vector " + label.encode()).digest()[:n]


# -- Appendix A, stated independently -------------------------------------------------------


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 with SHA-256, L = 32 (one block). An empty salt means 32 zero bytes."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def file_subkeys(key: bytes) -> dict[str, Any]:
    k_wrap = hkdf_sha256(key, b"", b"envelope/file-key/wrap")
    k_id = hkdf_sha256(key, b"", b"envelope/file-key/id")
    tag = hmac.new(k_id, b"envelope/file-key-id", hashlib.sha256).digest()
    return {"k_wrap": k_wrap, "k_id": k_id, "key_id": "fp-" + tag[:16].hex()}


def key_file_text(key: bytes) -> str:
    return KEY_FILE_PREFIX + base64.b64encode(key).decode("ascii") + "\n"


def wrap_aad(key_id: str, context: Mapping[str, str]) -> bytes:
    kid = key_id.encode("utf-8")
    return WRAP_LABEL + struct.pack(">H", len(kid)) + kid + context_block(context)


def context_block(context: Mapping[str, str]) -> bytes:
    """Section 3, restated: u16 count, then the pairs sorted by key bytes."""
    pairs = sorted((k.encode(), v.encode()) for k, v in context.items())
    out = struct.pack(">H", len(pairs))
    for k, v in pairs:
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def wrap(
    master: bytes, key_id: str, data_key: bytes, context: Mapping[str, str], name: str
) -> dict[str, Any]:
    salt, nonce = fixed(name + " salt", 16), fixed(name + " nonce", 12)
    kek = hkdf_sha256(master, salt, WRAP_LABEL)
    aad = wrap_aad(key_id, context)
    wrapped = WRAP_VERSION + salt + nonce + AESGCM(kek).encrypt(nonce, data_key, aad)
    assert len(wrapped) == WRAPPED_LEN
    return {
        "name": name,
        "key_id": key_id,
        "kms_context": dict(context),
        "data_key": data_key.hex(),
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "wrap_key": kek.hex(),
        "aad": aad.hex(),
        "wrapped": wrapped.hex(),
    }


# -- envelope's own code must agree ---------------------------------------------------------


def _result(value: Any) -> Any:
    """A backend call's result, whether the backend offers it blocking or async."""
    if inspect.isawaitable(value):

        async def wait() -> Any:
            return await value

        return asyncio.run(wait())
    return value


def _refuse(why: str) -> None:
    raise SystemExit(f"generate_keyfile: {why}; not writing vectors")


def _unwrap_with(backend: Any, provider: str, w: Mapping[str, Any]) -> bytes:
    entry = WrappedKey(provider, w["key_id"], bytes.fromhex(w["wrapped"]))
    if not backend.can_unwrap(entry):
        _refuse(f"{provider} backend does not claim wrap {w['name']}")
    got = _result(backend.decrypt_data_key(entry, context=w["kms_context"]))
    return bytes(got)


def _file_backend(text: str) -> FileKeyBackend:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vector.key"
        path.write_text(text, "ascii")
        path.chmod(0o600)  # as `envelope keygen` makes them
        return FileKeyBackend(path)


def _refused_key_file(text: str) -> str:
    """The envelope error class FileKeyBackend raises for a key file, or "" if it accepts it."""
    try:
        _file_backend(text)
    except EnvelopeError as e:
        return type(e).__name__
    return ""


# -- building vectors -----------------------------------------------------------------------


def seal(
    name: str, length: int, entries: list[WrappedKey], kms_context: Mapping[str, str]
) -> dict[str, Any]:
    pt = plaintext(length)
    message_id = fixed(name + " message id", 32)
    ct = seal_object(
        pt,
        data_key=DATA_KEY,
        message_id=message_id,
        wrapped_keys=entries,
        seg_log2=SEG_LOG2,
        kms_context=kms_context,
        object_context=OBJECT_CONTEXT,
    )
    if open_object_with_key(ct, data_key=DATA_KEY) != pt:
        _refuse(f"object {name} does not open")
    return {
        "name": name,
        "message_id": message_id.hex(),
        "seg_log2": SEG_LOG2,
        "kms_context": dict(kms_context),
        "object_context": OBJECT_CONTEXT,
        "wrapped_keys": [
            {"provider_id": e.provider_id, "key_id": e.key_id, "wrapped": e.ciphertext.hex()}
            for e in entries
        ],
        "plaintext": {"pattern": "byte i = i mod 251", "length": length},
        "plaintext_sha256": hashlib.sha256(pt).hexdigest(),
        "ciphertext": ct.hex(),
        "ciphertext_sha256": hashlib.sha256(ct).hexdigest(),
    }


def _entry(provider: str, w: Mapping[str, Any]) -> WrappedKey:
    return WrappedKey(provider, w["key_id"], bytes.fromhex(w["wrapped"]))


def _wrapped_negatives(base: Mapping[str, Any], other_key_id: str) -> list[dict[str, Any]]:
    """Wrapped keys a reader MUST refuse to unwrap (Appendix A.3), from the first wrap."""
    raw = bytes.fromhex(base["wrapped"])
    flipped = bytearray(raw)
    flipped[-1] ^= 0x01
    cases = [
        ("wrong_kms_context", base["key_id"], {"bucket": "other-bucket"}, raw,
         "the right wrapped key, unwrapped under another KMS context: the AAD differs"),
        ("other_key_id", other_key_id, base["kms_context"], raw,
         "the right wrapped key under another key id: the key id is in the AAD"),
        ("tag_bit_flip", base["key_id"], base["kms_context"], bytes(flipped),
         "bit 0 of the last byte (the GCM tag) flipped"),
        ("short", base["key_id"], base["kms_context"], raw[:-1],
         f"one byte short ({WRAPPED_LEN - 1} bytes): refused before any decryption"),
        ("long", base["key_id"], base["kms_context"], raw + b"\x00",
         f"one byte appended ({WRAPPED_LEN + 1} bytes): refused before any decryption"),
        ("version_1", base["key_id"], base["kms_context"], b"\x01" + raw[1:],
         "first byte 0x01 instead of 0x02: refused before any decryption"),
    ]  # fmt: skip
    return [
        {
            "name": name,
            "base": base["name"],
            "mutation": why,
            "key_id": kid,
            "kms_context": ctx,
            "wrapped": w.hex(),
            "expected_error": "KmsKeyError",
        }
        for name, kid, ctx, w, why in cases
    ]


def keyfile_document() -> dict[str, Any]:
    sub = file_subkeys(FILE_KEY)
    text = key_file_text(FILE_KEY)
    backend = _file_backend(text)
    if backend.key_id != sub["key_id"]:
        _refuse(f"FileKeyBackend names the key {backend.key_id}, Appendix A {sub['key_id']}")
    wraps = [
        wrap(sub["k_wrap"], sub["key_id"], DATA_KEY, KMS_CONTEXT, "file_wrap"),
        wrap(sub["k_wrap"], sub["key_id"], DATA_KEY, {}, "file_wrap_empty_context"),
    ]
    for w in wraps:
        if _unwrap_with(backend, "file", w) != DATA_KEY:
            _refuse(f"FileKeyBackend unwraps {w['name']} to another key")
    memory_wrap = wrap(MEMORY_MASTER, MEMORY_KEY_ID, DATA_KEY, KMS_CONTEXT, "memory_wrap")
    file_entry, empty_ctx_entry = _entry("file", wraps[0]), _entry("file", wraps[1])
    objects = [
        seal("file_empty", 0, [file_entry], KMS_CONTEXT),
        seal("file_s_plus_1", S + 1, [file_entry], KMS_CONTEXT),
        seal("file_empty_kms_context", 100, [empty_ctx_entry], {}),
        seal("file_second_entry", 3 * S + 5, [_entry("memory", memory_wrap), file_entry],
             KMS_CONTEXT),
    ]  # fmt: skip
    b64 = base64.b64encode(FILE_KEY).decode("ascii")
    bad_files = [
        ("wrong_prefix", "envelope-file-key-v2:" + b64 + "\n", "the version label is v2"),
        ("short_key", KEY_FILE_PREFIX + base64.b64encode(FILE_KEY[:31]).decode() + "\n",
         "31 bytes of key"),
        ("long_key", KEY_FILE_PREFIX + base64.b64encode(FILE_KEY + b"\0").decode() + "\n",
         "33 bytes of key"),
        ("unpadded_base64", KEY_FILE_PREFIX + b64.rstrip("=") + "\n", "base64 without its '='"),
        ("urlsafe_alphabet", KEY_FILE_PREFIX + base64.urlsafe_b64encode(bytes(range(0xF8, 0x100))
         * 4).decode() + "\n", "base64url alphabet ('-' and '_')"),
        ("space_inside", KEY_FILE_PREFIX + b64[:20] + " " + b64[20:] + "\n",
         "a space inside the base64"),
        ("noncanonical_base64", KEY_FILE_PREFIX + _unused_bit_set(b64) + "\n",
         "an unused low bit of the last base64 character set (decodes to the same key)"),
        ("other_whitespace", "\x1c" + KEY_FILE_PREFIX + b64 + "\x1f\n",
         "0x1C and 0x1F around the line (not whitespace to a key file)"),
    ]  # fmt: skip
    negative_files = []
    for name, bad, why in bad_files:
        error = _refused_key_file(bad)
        if error != "ConfigurationError":
            _refuse(f"FileKeyBackend gives {error or 'no error'} for key file {name}")
        negative_files.append({"name": name, "mutation": why, "text": bad, "expected_error": error})
    accepted = "\r\n  " + text.rstrip("\n") + " \t\r\n"
    if _refused_key_file(accepted) or _file_backend(accepted).key_id != sub["key_id"]:
        _refuse("FileKeyBackend does not ignore surrounding whitespace")
    other = file_subkeys(bytes(32))["key_id"]
    negative_wraps = _wrapped_negatives(wraps[0], other)
    for n in negative_wraps:
        entry = WrappedKey("file", n["key_id"], bytes.fromhex(n["wrapped"]))
        try:
            _result(backend.decrypt_data_key(entry, context=n["kms_context"]))
        except EnvelopeError as e:
            if type(e).__name__ != n["expected_error"]:
                _refuse(f"{n['name']}: FileKeyBackend raised {type(e).__name__}")
        else:
            _refuse(f"{n['name']}: FileKeyBackend unwrapped it")
    return {
        "format": "envelope object format v1, Appendix A.2: the key-file backend (docs/format.md)",
        "description": "A key file, its subkeys and key id; data keys wrapped under it; objects "
        "whose data key only the key file unwraps; key files and wrapped keys a reader MUST "
        "refuse.",
        "generator": "tests/vectors/generate_keyfile.py (docs/vectors.md)",
        "key_file": {
            "text": text,
            "key": FILE_KEY.hex(),
            "wrap_subkey": sub["k_wrap"].hex(),
            "id_subkey": sub["k_id"].hex(),
            "key_id": sub["key_id"],
            "provider_id": "file",
        },
        "wraps": wraps,
        "objects": objects,
        "negative_key_files": negative_files,
        "accepted_key_file_text": accepted,
        "negative_wraps": negative_wraps,
    }


def _unused_bit_set(b64: str) -> str:
    """`b64` (32 bytes: 43 characters and one '=') with the lowest of the last character's
    two unused bits set: the same bytes to a lenient decoder, not the canonical text."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet[alphabet.index(b64[42]) | 1]
    return b64[:42] + last + b64[43:]


def memory_document() -> dict[str, Any]:
    kms = MemoryKms()
    # The one way in for a chosen master key: the backend keeps its keys in a dict, and this
    # is a test-only backend whose keys never leave the process.
    kms._keys[MEMORY_KEY_ID] = MEMORY_MASTER
    wraps = [wrap(MEMORY_MASTER, MEMORY_KEY_ID, DATA_KEY, KMS_CONTEXT, "memory_wrap")]
    if _unwrap_with(kms, "memory", wraps[0]) != DATA_KEY:
        _refuse("MemoryKms unwraps memory_wrap to another key")
    objects = [seal("memory_s_plus_1", S + 1, [_entry("memory", wraps[0])], KMS_CONTEXT)]
    negative_wraps = _wrapped_negatives(wraps[0], "mem-other")
    kms._keys["mem-other"] = MEMORY_MASTER  # so other_key_id fails on the AAD, not the lookup
    for n in negative_wraps:
        entry = WrappedKey("memory", n["key_id"], bytes.fromhex(n["wrapped"]))
        try:
            _result(kms.decrypt_data_key(entry, context=n["kms_context"]))
        except EnvelopeError as e:
            if type(e).__name__ != n["expected_error"]:
                _refuse(f"{n['name']}: MemoryKms raised {type(e).__name__}")
        else:
            _refuse(f"{n['name']}: MemoryKms unwrapped it")
    return {
        "format": "envelope object format v1, Appendix A.3: the memory backend, TEST-ONLY "
        "(docs/format.md)",
        "description": "A memory-backend master key, a data key wrapped under it, an object "
        "whose data key it unwraps, and wrapped keys a reader MUST refuse. The memory "
        "backend's master keys never leave its process: these vectors pin the wrapping for "
        "tests, not a storage format.",
        "generator": "tests/vectors/generate_keyfile.py (docs/vectors.md)",
        "master_key": {
            "key": MEMORY_MASTER.hex(),
            "key_id": MEMORY_KEY_ID,
            "provider_id": "memory",
        },
        "wraps": wraps,
        "objects": objects,
        "negative_wraps": negative_wraps,
    }


def build() -> Mapping[str, str]:
    """File name -> exact file content, for the two Appendix A vector files."""
    assert encode_context(KMS_CONTEXT, limit=MAX_KMS_CTX_LEN) == context_block(KMS_CONTEXT)
    docs = {"v1_keyfile.json": keyfile_document(), "v1_memory.json": memory_document()}
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
