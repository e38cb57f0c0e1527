"""`envelope demo`: the main job end to end on a throwaway sample, with nothing to set up.

It opens an embedded KMS in a fresh home (a temporary one unless --home), creates a key and
the alias alias/demo, generates a sample file, encrypts it under the alias, reads a range back
through the seekable reader, shows that a flipped bit is caught, decrypts with no key argument
(the header names the key), compares, verifies the KMS audit log and prints throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time

from .. import sync
from ..api import Options
from ..errors import AuthenticationError
from ..keyring import Keyring
from ..kms.uri import open_local_backend
from ..reader import open_decrypted
from ._common import print_json


def add_demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on a generated sample")
    p.add_argument("--size-mib", type=int, default=256, help="sample size (default 256 MiB)")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep the files")
    p.add_argument(
        "--home", metavar="DIR", help="embedded KMS home to use (default: a fresh one in DIR)"
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(handler=cmd_demo)


def _sample(path: str, size: int) -> str:
    """Write `size` bytes of cheap, incompressible-enough data; return its SHA-256."""
    block = hashlib.sha256(b"envelope demo").digest() * (1 << 15)  # 1 MiB
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        i = 0
        while left:
            chunk = block[: min(left, len(block))]
            chunk = i.to_bytes(8, "big") + chunk[8:] if len(chunk) > 8 else chunk
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            i += 1
    return h.hexdigest()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cmd_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="envelope-demo-") as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        size = args.size_mib << 20
        plain, enc, back = (os.path.join(work, n) for n in ("sample.bin", "sample.env", "back.bin"))
        backend_home = args.home or os.path.join(work, "kms-home")
        backend = open_local_backend(backend_home)
        service = backend.service
        key_id = service.create_key(description="envelope demo")["KeyMetadata"]["KeyId"]
        try:
            service.create_alias(alias_name="alias/demo", target_key_id=key_id)
        except Exception:  # an existing --home may have it: point it at the new key
            service.update_alias(alias_name="alias/demo", target_key_id=key_id)
        keyring = Keyring(backend, "alias/demo")
        digest = _sample(plain, size)
        ctx = {"object": "sample.bin"}

        t0 = time.perf_counter()
        info = sync.encrypt(plain, enc, keyring=keyring, object_context=ctx)
        t_enc = time.perf_counter() - t0

        with open_decrypted(enc, keyring=keyring, expected_context=ctx) as reader:
            offset = size // 3
            reader.seek(offset)
            piece = reader.read(4096)
            with open(plain, "rb") as f:
                f.seek(offset)
                ranged_ok = piece == f.read(4096)

        tampered = os.path.join(work, "tampered.env")
        with open(enc, "rb") as src, open(tampered, "wb") as dst:
            dst.write(src.read())
        with open(tampered, "r+b") as f:
            f.seek(info.header_len + size // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 1]))
        try:
            sync.decrypt(tampered, os.path.join(work, "tampered.out"), keyring=keyring)
            tamper_caught = False
        except AuthenticationError:
            tamper_caught = not os.path.exists(os.path.join(work, "tampered.out"))

        t0 = time.perf_counter()
        sync.decrypt(enc, back, keyring=keyring, expected_context=ctx, options=Options())
        t_dec = time.perf_counter() - t0
        same = _sha256(back) == digest
        kms_calls = len(service.audit_tail(1_000_000))
        sync.run(keyring.aclose)  # seals the audit log
        audit = open_local_backend(backend_home).service
        report = audit.verify_audit_log()
        audit.close()

        result = {
            "bytes": size,
            "ciphertext_bytes": info.ciphertext_len,
            "encrypt_mb_per_s": round(size / t_enc / 1e6, 1),
            "decrypt_mb_per_s": round(size / t_dec / 1e6, 1),
            "round_trip_identical": same,
            "ranged_read_ok": ranged_ok,
            "tamper_detected": tamper_caught,
            "kms_key": key_id,
            "kms_audit_records": kms_calls,
            "kms_audit_log_verified": report.ok,
            "work_dir": work if args.keep else None,
        }
    if args.json:
        print_json(result)
    else:
        print(f"sample          {size >> 20} MiB -> {info.ciphertext_len} bytes encrypted")
        print(f"encrypt         {result['encrypt_mb_per_s']} MB/s")
        print(f"decrypt         {result['decrypt_mb_per_s']} MB/s")
        print(f"round trip      {'identical' if same else 'DIFFERENT'}")
        print(f"ranged read     {'ok' if ranged_ok else 'FAILED'}")
        print(f"tampering       {'detected, nothing written' if tamper_caught else 'MISSED'}")
        print(f"KMS audit log   {kms_calls} records, {'verified' if report.ok else 'BROKEN'}")
    return 0 if (same and ranged_ok and tamper_caught and report.ok) else 1
