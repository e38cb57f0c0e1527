"""The Python peers of `envelope bench peers`, each run as a process of its own, file to file.

    python -m envelope.bench.peer_tools tink keygen KEYSET
    python -m envelope.bench.peer_tools tink encrypt|decrypt KEYSET SRC DST
    python -m envelope.bench.peer_tools esdk-best|esdk-default keygen KEY
    python -m envelope.bench.peer_tools esdk-best|esdk-default encrypt|decrypt KEY SRC DST

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


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] in ("keygen", "encrypt", "decrypt"):
        tool, op, *rest = argv
        if tool == "tink":
            _tink(op, *rest)
            return 0
        if tool in ("esdk-best", "esdk-default"):
            _esdk(tool, op, *rest)
            return 0
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
