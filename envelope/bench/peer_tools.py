"""The Python peers of `envelope bench peers`, each run as a process of its own, file to file.

    python -m envelope.bench.peer_tools tink keygen KEYSET
    python -m envelope.bench.peer_tools tink encrypt|decrypt KEYSET SRC DST
    python -m envelope.bench.peer_tools esdk-best|esdk-default keygen KEY
    python -m envelope.bench.peer_tools esdk-best|esdk-default encrypt|decrypt KEY SRC DST
    python -m envelope.bench.peer_tools envelope|envelope-fsync keygen|encrypt|decrypt ...

Each does what that library's documentation shows for files: Tink's streaming AEAD
(AES256_GCM_HKDF_1MB, a cleartext JSON keyset) and the AWS Encryption SDK for Python with a
raw AES-256 wrapping key (no KMS: the figure is the SDK's own work). `esdk-default` is the
SDK's defaults (committing suite with ECDSA P-384 signatures, 4 KiB frames); `esdk-best` its
fastest settings (committing suite without signatures, 1 MiB frames). Both read and write in
1 MiB pieces. Nothing here is imported by envelope itself.
"""

from __future__ import annotations

import os
import sys
from typing import Any

CHUNK = 1 << 20
AAD = b"envelope-bench"


def _tink(op: str, key: str, src: str = "", dst: str = "") -> None:
    import tink  # type: ignore[import-untyped,unused-ignore]
    from tink import secret_key_access, streaming_aead  # type: ignore[import-untyped,unused-ignore]

    streaming_aead.register()
    if op == "keygen":
        handle = tink.new_keyset_handle(
            streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB
        )
        with open(key, "w") as f:
            f.write(tink.json_proto_keyset_format.serialize(handle, secret_key_access.TOKEN))
        return
    with open(key) as f:
        handle = tink.json_proto_keyset_format.parse(f.read(), secret_key_access.TOKEN)
    primitive: Any = handle.primitive(streaming_aead.StreamingAead)
    if op == "encrypt":
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            with primitive.new_encrypting_stream(fo, AAD) as enc:
                while chunk := fi.read(CHUNK):
                    enc.write(chunk)
    else:
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            with primitive.new_decrypting_stream(fi, AAD) as dec:
                while chunk := dec.read(CHUNK):
                    fo.write(chunk)


def _esdk(variant: str, op: str, key: str, src: str = "", dst: str = "") -> None:
    if op == "keygen":
        with open(key, "w") as f:
            f.write(os.urandom(32).hex())
        return
    import aws_encryption_sdk  # type: ignore[import-untyped,unused-ignore]
    from aws_encryption_sdk.identifiers import (  # type: ignore[import-untyped,unused-ignore]
        Algorithm,
        CommitmentPolicy,
        EncryptionKeyType,
        WrappingAlgorithm,
    )
    from aws_encryption_sdk.internal.crypto.wrapping_keys import (  # type: ignore[import-untyped,unused-ignore]
        WrappingKey,
    )
    from aws_encryption_sdk.key_providers.raw import (  # type: ignore[import-untyped,unused-ignore]
        RawMasterKey,
    )

    with open(key) as f:
        raw = bytes.fromhex(f.read().strip())
    master = RawMasterKey(
        provider_id="envelope-bench",
        key_id=b"bench",
        wrapping_key=WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=raw,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        ),
    )
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    settings: dict[str, Any] = {}
    if op == "encrypt" and variant == "esdk-best":
        settings = {
            "algorithm": Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
            "frame_length": CHUNK,
        }
    mode = "e" if op == "encrypt" else "d"
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        with client.stream(mode=mode, source=fi, key_provider=master, **settings) as stream:
            while chunk := stream.read(CHUNK):
                fo.write(chunk)


def _envelope(durable: bool, op: str, key: str, src: str = "", dst: str = "") -> None:
    """envelope in process, as `envelope encrypt|decrypt --key-file` does it."""
    from envelope import sync
    from envelope.keyring import Keyring
    from envelope.kms.filekey import FileKeyBackend, generate_key_file

    if op == "keygen":
        generate_key_file(key)
        return
    backend = FileKeyBackend(key)
    keyring = Keyring(backend, backend.key_id)
    if op == "encrypt":
        sync.encrypt(src, dst, keyring=keyring, durable=durable)
    else:
        sync.decrypt(src, dst, keyring=keyring, durable=durable)


TOOLS = ("tink", "esdk-best", "esdk-default", "envelope", "envelope-fsync")


def run(tool: str, op: str, key: str, src: str = "", dst: str = "") -> None:
    """One operation of one tool, in this process (`envelope bench peers` times it in
    process too, where the library's own work is all there is to time)."""
    if tool == "tink":
        _tink(op, key, src, dst)
    elif tool in ("esdk-best", "esdk-default"):
        _esdk(tool, op, key, src, dst)
    elif tool in ("envelope", "envelope-fsync"):
        _envelope(tool == "envelope-fsync", op, key, src, dst)
    else:
        raise ValueError(f"unknown tool {tool!r}")


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] in TOOLS and argv[1] in ("keygen", "encrypt", "decrypt"):
        run(*argv)
        return 0
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
