"""Write the header seed corpus: real v1 headers, then named mutations of them.

    python -m tests.reliability.make_corpus            # (re)write tests/reliability/corpus/header
    python -m tests.reliability.make_corpus --check    # exit 1 if the files are not what it writes

The headers are sealed exactly as the encryptor seals them (`seal_header` over `ObjectKeys`),
from fixed data keys and message ids, so the corpus is reproducible byte for byte and a test
checks that it is current. The mutations are the classic ways a parser breaks: truncation,
bad magic/version/suite/flags, every length field at 0, at its limit and past it, counts out of
range, trailing bytes, invalid UTF-8. Both fuzzers (hypothesis and atheris) start from it.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from envelope.hazmat.format import (
    MAX_EDK_LEN,
    MAX_EDKS,
    MAX_KEY_ID_LEN,
    MAX_PROVIDER_ID_LEN,
    WrappedKey,
)
from envelope.hazmat.keyschedule import ObjectKeys, seal_header

CORPUS = Path(__file__).with_name("corpus") / "header"

#: offsets inside the fixed part (docs/format.md 4): magic 0, version 4, flags 5, suite 6..8,
#: header_len 8..12, seg_log2 12, reserved 13..16, message id 16..48, commitment 48..80,
#: then u16 kms-context length at 80.
KMS_CTX_LEN_AT = 80


def _fixed(label: str, n: int) -> bytes:
    return hashlib.sha512(label.encode()).digest()[:n]


def _header(
    name: str,
    *,
    seg_log2: int = 20,
    kms: dict[str, str] | None = None,
    obj: dict[str, str] | None = None,
    wrapped: list[WrappedKey] | None = None,
) -> bytes:
    keys = ObjectKeys(_fixed(f"dk/{name}", 32), _fixed(f"mid/{name}", 32), seg_log2=seg_log2)
    raw, _ = seal_header(
        keys,
        seg_log2=seg_log2,
        message_id=_fixed(f"mid/{name}", 32),
        kms_context=kms or {},
        object_context=obj or {},
        wrapped_keys=wrapped or [WrappedKey("memory", "mem-0", _fixed(f"edk/{name}", 60))],
    )
    return raw


def real_headers() -> dict[str, bytes]:
    """A few headers as the encryptor writes them, across the format's variety."""
    local_arn = "arn:aws:kms:us-east-1:111122223333:key/" + "0" * 8 + "-0000-4000-8000-" + "0" * 12
    return {
        "minimal": _header("minimal", seg_log2=12, wrapped=[WrappedKey("m", "k", b"\x01")]),
        "memory-default": _header("memory-default"),
        "local-contexts": _header(
            "local-contexts",
            kms={"tenant": "acme", "purpose": "lake"},
            obj={"envelope:path": "year=2026/part-0001.parquet", "table": "events"},
            wrapped=[WrappedKey("local", local_arn, _fixed("blob", 150))],
        ),
        "file-unicode": _header(
            "file-unicode",
            seg_log2=26,
            obj={"pfad": "données/ファイル.csv", "ü": ""},
            wrapped=[WrappedKey("file", "file-6f2a", _fixed("fk", 44))],
        ),
        "eight-keys": _header(
            "eight-keys",
            wrapped=[WrappedKey(f"p{i}", f"key-{i}", _fixed(f"e{i}", 40)) for i in range(MAX_EDKS)],
        ),
        "limits": _header(
            "limits",
            wrapped=[
                WrappedKey("p" * MAX_PROVIDER_ID_LEN, "k" * MAX_KEY_ID_LEN, b"\xee" * MAX_EDK_LEN)
            ],
        ),
    }


def _set(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def mutations(headers: dict[str, bytes]) -> Iterator[tuple[str, bytes]]:
    base = headers["local-contexts"]
    tiny = headers["minimal"]
    edits: dict[str, Callable[[bytes], bytes]] = {
        "empty": lambda h: b"",
        "prefix-only": lambda h: h[:12],
        "cut-mid-fixed": lambda h: h[:47],
        "cut-before-mac": lambda h: h[:-32],
        "cut-one": lambda h: h[:-1],
        "trailing-byte": lambda h: h + b"\0",
        "bad-magic": lambda h: _set(h, 0, b"\x89ENW"),
        "version-2": lambda h: _set(h, 4, b"\x02"),
        "flags-set": lambda h: _set(h, 5, b"\x80"),
        "suite-ffff": lambda h: _set(h, 6, b"\xff\xff"),
        "header-len-zero": lambda h: _set(h, 8, struct.pack(">I", 0)),
        "header-len-max": lambda h: _set(h, 8, struct.pack(">I", 0xFFFFFFFF)),
        "header-len-plus-one": lambda h: _set(h, 8, struct.pack(">I", len(h) + 1)),
        "seg-log2-11": lambda h: _set(h, 12, b"\x0b"),
        "seg-log2-27": lambda h: _set(h, 12, b"\x1b"),
        "reserved-set": lambda h: _set(h, 13, b"\x01"),
        "kms-ctx-len-ffff": lambda h: _set(h, KMS_CTX_LEN_AT, b"\xff\xff"),
        "kms-ctx-len-limit": lambda h: _set(h, KMS_CTX_LEN_AT, struct.pack(">H", 8192)),
        "kms-ctx-len-zero": lambda h: _set(h, KMS_CTX_LEN_AT, b"\0\0"),
        "kms-ctx-count-ffff": lambda h: _set(h, KMS_CTX_LEN_AT + 2, b"\xff\xff"),
        "kms-ctx-bad-utf8": lambda h: _set(h, KMS_CTX_LEN_AT + 6, b"\xff\xfe"),
    }
    for name, edit in edits.items():
        yield f"mut-{name}", edit(base)
    # the minimal header's wrapped-key entry sits right after two empty contexts
    edk_at = KMS_CTX_LEN_AT + 4 + 4
    yield "mut-edk-count-zero", _set(tiny, edk_at, b"\0")
    yield "mut-edk-count-nine", _set(tiny, edk_at, bytes([MAX_EDKS + 1]))
    yield "mut-edk-count-ff", _set(tiny, edk_at, b"\xff")
    yield "mut-provider-len-zero", _set(tiny, edk_at + 1, b"\0")
    yield "mut-provider-len-ff", _set(tiny, edk_at + 1, b"\xff")
    yield "mut-provider-non-ascii", _set(tiny, edk_at + 2, b"\xc3")
    yield "mut-key-id-len-ffff", _set(tiny, edk_at + 3, b"\xff\xff")
    yield "mut-edk-len-ffff", _set(tiny, edk_at + 6, b"\xff\xff")


def corpus() -> dict[str, bytes]:
    headers = real_headers()
    out = {f"header-{name}": raw for name, raw in headers.items()}
    out.update(mutations(headers))
    return out


def main(argv: list[str]) -> int:
    files = corpus()
    if "--check" in argv:
        stale = [
            name
            for name, data in files.items()
            if not (CORPUS / f"{name}.bin").is_file()
            or (CORPUS / f"{name}.bin").read_bytes() != data
        ]
        if stale:
            print(f"corpus out of date: {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (CORPUS / f"{name}.bin").write_bytes(data)
    print(f"wrote {len(files)} files to {CORPUS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
