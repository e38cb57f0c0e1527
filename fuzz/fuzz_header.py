#!/usr/bin/env python3
"""Coverage-guided fuzz target (atheris/libFuzzer) for the format v1 header parser.

    .venv/bin/python fuzz/fuzz_header.py OUT_DIR tests/reliability/corpus/header -runs=1000000

libFuzzer writes the new inputs it finds to the first folder: give it a scratch folder and the
checked-in seed corpus second, so the seeds are only read. Any exception other than an
`envelope.errors.EnvelopeError` is a crash (libFuzzer saves the input as ``crash-<sha1>``); a
header that parses must also re-encode to the same bytes (the parser is canonical).
Regenerate the seeds with ``python -m tests.reliability.make_corpus``.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["envelope"]):
    from envelope.errors import EnvelopeError
    from envelope.hazmat.format import Header, encode_header, parse_header, parse_prefix
    from envelope.objects import parse_object_header


def _canonical(h: Header, data: bytes) -> None:
    unmacd, header_len, _ = encode_header(
        seg_log2=h.seg_log2,
        message_id=h.message_id,
        commitment=h.commitment,
        kms_context=h.kms_context,
        object_context=h.object_context,
        wrapped_keys=h.wrapped_keys,
        suite_id=h.suite_id,
    )
    if unmacd + h.header_mac != data[:header_len]:
        raise AssertionError("parser accepted a non-canonical header")


def test_one_input(data: bytes) -> None:
    try:
        if len(data) >= 12:
            parse_prefix(data[:12])
        _canonical(parse_header(data), data)
    except EnvelopeError:
        pass
    try:
        _canonical(parse_object_header(memoryview(data)), data)
    except EnvelopeError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
