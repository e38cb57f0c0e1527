"""Fuzzing the header parser and the whole decrypt path: only `envelope.errors` may come out.

Targets (each counts its inputs in the reliability summary):

- hypothesis over arbitrary bytes, over mutations of the seed corpus (tests/reliability/corpus/
  header, written by `make_corpus.py`) and over structurally valid headers with one field bent;
- a seeded loop of the same mutations, cheap enough for a million inputs at full size;
- the whole decrypt path (in memory and streaming) over mutated objects sealed under a memory
  KMS key: a changed object must fail with a typed error, never decrypt;
- atheris (coverage-guided, `fuzz/fuzz_header.py`) for a short run when it is installed.

A parse that succeeds must also be canonical: re-encoding what was parsed gives the same bytes,
so the parser never accepts two spellings of one header.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope import api, sync
from envelope.api import Options, parse_object_header
from envelope.errors import EnvelopeError
from envelope.hazmat.format import (
    HEADER_MAC_LEN,
    Header,
    encode_header,
    parse_header,
    parse_prefix,
)
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.streams import BufferSink

from . import make_corpus
from .mutate import OPS, apply, random_ops
from .support import CORPUS, ROOT, child_env, count, rng, size, where

SUITE = "fuzz"
SEEDS: list[bytes] = [p.read_bytes() for p in sorted(CORPUS.glob("*.bin"))]


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _check_canonical(h: Header, data: bytes) -> None:
    unmacd, header_len, hd = encode_header(
        seg_log2=h.seg_log2,
        message_id=h.message_id,
        commitment=h.commitment,
        kms_context=h.kms_context,
        object_context=h.object_context,
        wrapped_keys=h.wrapped_keys,
        suite_id=h.suite_id,
    )
    assert unmacd + h.header_mac == data[:header_len], "parser accepted a non-canonical header"
    assert header_len == h.header_len and hd == h.bound_digest


def parse_everyway(data: bytes) -> None:
    """Every entry point a reader uses on untrusted header bytes; typed errors only."""
    try:
        if len(data) >= 12:
            parse_prefix(data[:12])
        h = parse_header(data)
        _check_canonical(h, data)
    except EnvelopeError:
        pass
    try:
        h = parse_object_header(memoryview(data))  # the header at the start of a whole object
        _check_canonical(h, data)
    except EnvelopeError:
        pass


def _typed_only(data: bytes) -> None:
    try:
        parse_everyway(data)
    except Exception as e:  # the finding: report the input and where it escaped
        tb = "".join(traceback.format_exception(e))
        raise AssertionError(f"untyped {type(e).__name__} for input {data.hex()}\n{tb}") from e


def test_corpus_is_current_and_parses_typed() -> None:
    """The seed corpus is what make_corpus.py writes; its real headers parse, the rest fail
    typed. (A stale corpus would quietly fuzz yesterday's format.)"""
    assert make_corpus.main(["--check"]) == 0
    files = sorted(CORPUS.glob("*.bin"))
    assert len(files) >= 30
    for p in files:
        data = p.read_bytes()
        if p.name.startswith("header-"):
            _check_canonical(parse_header(data), data)
        else:
            with pytest.raises(EnvelopeError):
                parse_header(data)
        count(SUITE, "corpus files")


@fuzz_settings(size(1000, 20_000))
@given(st.binary(max_size=1024))
def test_arbitrary_bytes(data: bytes) -> None:
    count(SUITE, "header inputs (hypothesis)")
    _typed_only(data)
    _typed_only(b"\x89ENV\x01\x00\x00\x01" + data)  # past the magic, into the lengths


_op = st.tuples(st.integers(0, OPS - 1), st.integers(0, 1 << 21), st.integers(0, (1 << 20) - 1))


@fuzz_settings(size(600, 30_000))
@given(
    st.sampled_from(range(len(SEEDS))),
    st.lists(_op, min_size=1, max_size=6),
    st.sampled_from(range(len(SEEDS))),
)
def test_mutated_corpus(i: int, ops: list[tuple[int, int, int]], j: int) -> None:
    count(SUITE, "header inputs (hypothesis)")
    _typed_only(apply(SEEDS[i], ops, SEEDS[j]))


@fuzz_settings(size(300, 5_000))
@given(
    seg_log2=st.integers(12, 26),
    kms=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4),
    obj=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4),
    n_keys=st.integers(1, 8),
    kid=st.text(min_size=1, max_size=12),
    edk=st.binary(min_size=1, max_size=80),
    ops=st.lists(_op, min_size=0, max_size=3),
)
def test_structured_headers_bent(
    seg_log2: int,
    kms: dict[str, str],
    obj: dict[str, str],
    n_keys: int,
    kid: str,
    edk: bytes,
    ops: list[tuple[int, int, int]],
) -> None:
    """Valid headers of every shape round-trip; bent ones fail typed."""
    from envelope.hazmat.format import WrappedKey

    count(SUITE, "header inputs (hypothesis)")
    try:
        unmacd, _, _ = encode_header(
            seg_log2=seg_log2,
            message_id=b"m" * 32,
            commitment=b"c" * 32,
            kms_context=kms,
            object_context=obj,
            wrapped_keys=[WrappedKey("p", kid, edk)] * n_keys,
        )
    except EnvelopeError:
        return  # e.g. a surrogate in the text: refused typed, which is the point
    raw = unmacd + b"\xaa" * HEADER_MAC_LEN
    h = parse_header(raw)
    assert (h.kms_context, h.object_context, len(h.wrapped_keys)) == (kms, obj, n_keys)
    _typed_only(apply(raw, ops, raw))


def test_seeded_mutation_loop() -> None:
    """The same mutations without hypothesis's overhead: sized for a million at full scale."""
    r = rng("mutation-loop")
    n = size(60_000, 1_000_000)
    for k in range(n):
        seed = SEEDS[r.randrange(len(SEEDS))]
        data = apply(seed, random_ops(r), SEEDS[r.randrange(len(SEEDS))])
        try:
            parse_everyway(data)
        except Exception as e:
            raise AssertionError(
                f"untyped {type(e).__name__} at input {k} {where()}: {data.hex()}\n"
                + "".join(traceback.format_exception(e))
            ) from e
    count(SUITE, "header inputs (seeded loop)", n)


# -- the whole decrypt path ------------------------------------------------------------------


class _Objects:
    """A few real objects under one memory-KMS key, at the sizes where segment logic turns."""

    def __init__(self) -> None:
        kms = MemoryKms()
        self.keyring = Keyring(kms, kms.create_key("fuzz"))
        self.items: list[tuple[bytes, bytes]] = []
        opts = Options(segment_size=4096)
        for n in (0, 1, 4095, 4096, 4097, 3 * 4096 + 5):
            pt = os.urandom(n)
            ct = sync.encrypt_bytes(
                pt, keyring=self.keyring, object_context={"p": str(n)}, options=opts
            )
            self.items.append((bytes(ct), pt))


_OBJECTS: _Objects | None = None


def objects() -> _Objects:
    global _OBJECTS
    if _OBJECTS is None:
        _OBJECTS = _Objects()
    return _OBJECTS


async def decrypt_mutated(ct: bytes, pt: bytes, data: bytes, streaming: bool) -> None:
    kr = objects().keyring
    try:
        if streaming:
            sink = BufferSink()
            await api.decrypt(io.BytesIO(data), sink, keyring=kr)
            out = bytes(sink.buffer)
        else:
            out = bytes(await api.decrypt_bytes(data, keyring=kr))
    except EnvelopeError:
        assert data != ct, "the untouched object failed to decrypt"
        return
    except Exception as e:
        raise AssertionError(
            f"untyped {type(e).__name__} from decrypt (streaming={streaming}) of {data.hex()}\n"
            + "".join(traceback.format_exception(e))
        ) from e
    assert data == ct, "a changed object decrypted: tampering went undetected"
    assert out == pt


@fuzz_settings(size(200, 5_000))
@given(
    st.integers(0, 5),
    st.lists(_op, min_size=1, max_size=4),
    st.booleans(),
)
def test_decrypt_mutated_objects(i: int, ops: list[tuple[int, int, int]], streaming: bool) -> None:
    ct, pt = objects().items[i]
    count(SUITE, "whole objects decrypted (hypothesis)")
    data = apply(ct, ops, objects().items[(i + 1) % 6][0])
    anyio.run(decrypt_mutated, ct, pt, data, streaming)


def test_decrypt_seeded_loop() -> None:
    """Seeded mutations of whole objects, all in one event loop (no per-input loop start)."""
    r = rng("decrypt-loop")
    n = size(2000, 100_000)
    items = objects().items

    async def loop() -> None:
        for _ in range(n):
            ct, pt = items[r.randrange(len(items))]
            data = apply(ct, random_ops(r, limit=len(ct) + 1), items[r.randrange(len(items))][0])
            await decrypt_mutated(ct, pt, data, r.random() < 0.1)

    anyio.run(loop)
    count(SUITE, "whole objects decrypted (seeded loop)", n)


# -- atheris ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install -e '.[test]' installs it on Linux)",
)
def test_atheris_run(tmp_path: Path) -> None:
    """A coverage-guided run of fuzz/fuzz_header.py (short in CI, a million inputs at full
    size): it must finish without a crash.

    New inputs go to a scratch folder (libFuzzer writes to its first corpus folder), so the
    checked-in seeds are only read."""
    runs = size(20_000, 1_000_000)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "fuzz_header.py"),
            str(tmp_path),
            str(CORPUS),
            f"-runs={runs}",
            f"-seed={rng('atheris').randrange(1, 1 << 31)}",
            f"-artifact_prefix={tmp_path}/",
        ],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=size(120, 7200),
        check=False,
    )
    assert proc.returncode == 0, f"atheris found a crash {where()}:\n{proc.stderr[-6000:]}"
    count(SUITE, "header inputs (atheris)", runs)
