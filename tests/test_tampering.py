"""Every way of damaging an object is rejected by the real engine, and no plaintext leaks.

Each case runs through `decrypt_bytes`, streaming `decrypt` into a path (which must leave
neither the target nor a temporary file behind) and streaming `decrypt` into a BytesIO (which
may have received only whole batches of segments that precede the damaged one: exactly
plaintext[: (d // k) * k * S] for damaged segment d and k segments per batch). The keyring is
a real MemoryKms one (tests/conftest.py). Errors are asserted by exact class.
"""

from __future__ import annotations

import io
import os
import random
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from envelope.api import Options, decrypt, decrypt_bytes, encrypt_bytes
from envelope.errors import (
    AuthenticationError,
    ContextMismatchError,
    EnvelopeError,
    HeaderFormatError,
    KmsKeyError,
    NoBackendError,
    TruncatedObjectError,
    UnsupportedSuiteError,
    UnsupportedVersionError,
)
from envelope.hazmat.format import (
    MAX_EDK_LEN,
    MAX_HEADER_LEN,
    MAX_KEY_ID_LEN,
    MAX_KMS_CTX_LEN,
    MAX_OBJ_CTX_LEN,
    MAX_PROVIDER_ID_LEN,
    MAX_SEG_LOG2,
    MIN_HEADER_LEN,
    Header,
    parse_header,
    parse_prefix,
)
from envelope.hazmat.object import seal_object
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms

S = 4096
T = S + 16
KCTX = {"bucket": "example-bucket", "prefix": "data/"}
OCTX = {"path": "data/part-0001.bin", "schema": "v1"}
BATCHES = [4096, 16384]  # one segment per batch, and four


def _opts(batch: int = 4096, **kw: int) -> Options:
    return Options(segment_size=S, batch_bytes=batch, workers=2, **kw)


def _pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


PT = _pattern(6 * S + 100)  # 7 segments, the last one 100 bytes
PT_FULL = _pattern(8 * S, seed=2)  # 8 segments, the last one full


async def _seal(keyring: Keyring, pt: bytes = PT) -> bytes:
    return bytes(
        await encrypt_bytes(
            pt, keyring=keyring, kms_context=KCTX, object_context=OCTX, options=_opts()
        )
    )


def _hlen(ct: bytes) -> int:
    return parse_prefix(ct[:12])


def _seg(ct: bytes, i: int) -> tuple[int, int]:
    """[start, end) of ciphertext segment i."""
    h = _hlen(ct)
    return h + i * T, min(len(ct), h + (i + 1) * T)


def _flip(ct: bytes, pos: int, mask: int = 0x01) -> bytes:
    b = bytearray(ct)
    b[pos] ^= mask
    return bytes(b)


def _set(ct: bytes, pos: int, value: bytes) -> bytes:
    return ct[:pos] + value + ct[pos + len(value) :]


@dataclass
class Reader:
    """Runs one ciphertext through the three decrypt paths and checks what each released."""

    keyring: Keyring
    kms: MemoryKms
    out_dir: Path

    async def rejects(
        self,
        ct: bytes,
        expected: type[EnvelopeError],
        *,
        plaintext: bytes = PT,
        damaged: int | None = None,
        batch: int = 4096,
        kms_calls: int | None = None,
        max_wrapped_keys: int = 8,
        expected_context: Mapping[str, str] | None = None,
        expected_kms_context: Mapping[str, str] | None = None,
    ) -> None:
        """`damaged`: index of the first segment that must fail (None: fail before any).

        `kms_calls`: KMS Decrypt calls each path must make (0 for format errors).
        """
        opts = _opts(batch, max_wrapped_keys=max_wrapped_keys)
        ctx = {"expected_context": expected_context, "expected_kms_context": expected_kms_context}
        k = max(1, batch // S)
        released = 0 if damaged is None else (damaged // k) * k * S

        before = self.kms.calls["Decrypt"]
        with pytest.raises(EnvelopeError) as e:
            await decrypt_bytes(ct, keyring=self.keyring, options=opts, **ctx)
        assert type(e.value) is expected, f"decrypt_bytes: {e.value!r}"

        target = self.out_dir / "plain.bin"
        with pytest.raises(EnvelopeError) as e:
            await decrypt(ct, target, keyring=self.keyring, options=opts, **ctx)
        assert type(e.value) is expected, f"decrypt to a path: {e.value!r}"
        assert not target.exists()
        assert os.listdir(self.out_dir) == []

        sink = io.BytesIO()
        with pytest.raises(EnvelopeError) as e:
            await decrypt(ct, sink, keyring=self.keyring, options=opts, **ctx)
        assert type(e.value) is expected, f"decrypt to a stream: {e.value!r}"
        written = sink.getvalue()
        assert written == plaintext[:released], (len(written), released)
        if kms_calls is not None:
            assert self.kms.calls["Decrypt"] - before == 3 * kms_calls


@pytest.fixture
def reader(keyring: Keyring, memory_kms: MemoryKms, tmp_path: Path) -> Reader:
    out = tmp_path / "out"
    out.mkdir()
    return Reader(keyring, memory_kms, out)


@pytest.mark.anyio
async def test_untouched_object_decrypts(keyring: Keyring, reader: Reader) -> None:
    ct = await _seal(keyring)
    assert bytes(await decrypt_bytes(ct, keyring=keyring, expected_context=OCTX)) == PT
    target = reader.out_dir / "plain.bin"
    await decrypt(ct, target, keyring=keyring, options=_opts(16384))
    assert target.read_bytes() == PT


# -- the header, byte by byte ---------------------------------------------------------------

Expect = Callable[[int], type[EnvelopeError]]


def _always(cls: type[EnvelopeError]) -> Expect:
    return lambda mask: cls


def _text(if_ascii: type[EnvelopeError]) -> Expect:
    # A low-bit flip keeps ASCII text valid (and, for these keys, still sorted); a high-bit
    # flip makes a lone UTF-8 continuation byte (or non-ASCII provider id): malformed.
    return lambda mask: if_ascii if mask < 0x80 else HeaderFormatError


def header_map(h: Header) -> list[tuple[str, Expect]]:
    """What a flip of each header byte must raise, field by field (docs/format.md 4, 7)."""
    fields: list[tuple[str, int, Expect]] = [
        ("magic", 4, _always(HeaderFormatError)),
        ("version", 1, _always(UnsupportedVersionError)),
        ("flags", 1, _always(HeaderFormatError)),
        ("suite_id", 2, _always(UnsupportedSuiteError)),
        ("header_len", 4, _always(HeaderFormatError)),
        (
            "seg_log2",
            1,
            lambda m: AuthenticationError if 12 <= (h.seg_log2 ^ m) <= 26 else HeaderFormatError,
        ),
        ("reserved", 3, _always(HeaderFormatError)),
        ("message_id", 32, _always(AuthenticationError)),
        ("commitment", 32, _always(AuthenticationError)),
    ]

    def context(name: str, ctx: Mapping[str, str], content: type[EnvelopeError]) -> None:
        block = 2 + sum(4 + len(k.encode()) + len(v.encode()) for k, v in ctx.items())
        fields.append((f"{name}_len", 2, _always(HeaderFormatError)))
        fields.append((f"{name}_count", 2, _always(HeaderFormatError)))
        for k, v in sorted(ctx.items()):
            fields.append((f"{name}_key_len", 2, _always(HeaderFormatError)))
            fields.append((f"{name}_key", len(k.encode()), _text(content)))
            fields.append((f"{name}_value_len", 2, _always(HeaderFormatError)))
            fields.append((f"{name}_value", len(v.encode()), _text(content)))
        assert block == 2 + sum(n for f, n, _ in fields[-4 * len(ctx) :])

    # The KMS context goes to the KMS before the MAC is checked: the KMS refuses it.
    context("kms_ctx", h.kms_context, KmsKeyError)
    # The object context is only bound by the MAC.
    context("obj_ctx", h.object_context, AuthenticationError)
    fields.append(("edk_count", 1, _always(HeaderFormatError)))
    for w in h.wrapped_keys:
        fields += [
            ("provider_id_len", 1, _always(HeaderFormatError)),
            # Another provider id or key id: no configured backend claims the entry.
            ("provider_id", len(w.provider_id), _text(NoBackendError)),
            ("key_id_len", 2, _always(HeaderFormatError)),
            ("key_id", len(w.key_id.encode()), _text(NoBackendError)),
            ("edk_len", 2, _always(HeaderFormatError)),
            # The wrapped key itself is opaque to us: the backend refuses to unwrap it.
            ("edk", len(w.ciphertext), _always(KmsKeyError)),
        ]
    fields.append(("header_mac", 32, _always(AuthenticationError)))
    out = [(name, expect) for name, n, expect in fields for _ in range(n)]
    assert len(out) == h.header_len
    return out


def _kms_calls(cls: type[EnvelopeError]) -> int:
    """A format error or an unclaimed wrapped key never reaches the KMS; the rest do, once."""
    return 0 if issubclass(cls, HeaderFormatError | NoBackendError) else 1


async def _outcome(
    coro_fn: Callable[[], Awaitable[object]], kms: MemoryKms
) -> tuple[type[BaseException] | None, int]:
    before = kms.calls["Decrypt"]
    try:
        await coro_fn()
    except EnvelopeError as e:
        return type(e), kms.calls["Decrypt"] - before
    return None, kms.calls["Decrypt"] - before


@pytest.mark.anyio
@pytest.mark.parametrize("mask", [0x01, 0x80])
async def test_bit_flip_in_every_header_byte(
    keyring: Keyring, memory_kms: MemoryKms, reader: Reader, mask: int
) -> None:
    ct = await _seal(keyring, PT[: S + 7])
    header = parse_header(ct[: _hlen(ct)])
    expected = header_map(header)
    wrong = []
    for pos, (field, expect) in enumerate(expected):
        bad = _flip(ct, pos, mask)
        want = expect(mask)
        # decrypt_bytes for every flip; the streaming paths alternate (both see every field).
        got = await _outcome(
            partial(decrypt_bytes, bad, keyring=keyring, options=_opts()), memory_kms
        )
        if got != (want, _kms_calls(want)):
            wrong.append((pos, field, "bytes", got, want))
        if pos % 2:
            sink: io.BytesIO | Path = io.BytesIO()
        else:
            sink = reader.out_dir / "plain.bin"
        got = await _outcome(
            partial(decrypt, bad, sink, keyring=keyring, options=_opts()), memory_kms
        )
        if got != (want, _kms_calls(want)):
            wrong.append((pos, field, "stream", got, want))
        if isinstance(sink, io.BytesIO):
            assert sink.getvalue() == b""
        assert os.listdir(reader.out_dir) == []
    assert wrong == []


@pytest.mark.anyio
async def test_header_fields_each_reach_their_check(reader: Reader, keyring: Keyring) -> None:
    """Named mutations (not flips) of every fixed field, through all three paths."""
    ct = await _seal(keyring, PT[:100])
    h = _hlen(ct)
    cases: list[tuple[bytes, type[EnvelopeError]]] = [
        (_set(ct, 0, b"\x89ENW"), HeaderFormatError),
        (_set(ct, 4, b"\x00"), UnsupportedVersionError),
        (_set(ct, 4, b"\x02"), UnsupportedVersionError),
        (_set(ct, 5, b"\x80"), HeaderFormatError),
        (_set(ct, 6, b"\x00\x00"), UnsupportedSuiteError),
        (_set(ct, 6, b"\x00\x02"), UnsupportedSuiteError),
        (_set(ct, 6, b"\xff\xff"), UnsupportedSuiteError),
        (_set(ct, 8, struct.pack(">I", MIN_HEADER_LEN - 1)), HeaderFormatError),
        (_set(ct, 8, struct.pack(">I", MAX_HEADER_LEN + 1)), HeaderFormatError),
        (_set(ct, 8, struct.pack(">I", 0xFFFFFFFF)), HeaderFormatError),
        (_set(ct, 8, struct.pack(">I", len(ct) + 1)), HeaderFormatError),  # past the end
        (_set(ct, 12, b"\x0b"), HeaderFormatError),
        (_set(ct, 12, bytes([MAX_SEG_LOG2 + 1])), HeaderFormatError),
        (_set(ct, 12, b"\x0d"), AuthenticationError),  # in range: only the MAC catches it
        (_set(ct, 13, b"\x00\x00\x01"), HeaderFormatError),
        (ct[:11], HeaderFormatError),
        (ct[: h - 1], HeaderFormatError),
        (b"", HeaderFormatError),
    ]
    for bad, cls in cases:
        calls = 1 if cls is AuthenticationError else 0
        await reader.rejects(bad, cls, kms_calls=calls)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("what", "limit"),
    [
        ("kms_ctx", MAX_KMS_CTX_LEN),
        ("obj_ctx", MAX_OBJ_CTX_LEN),
        ("provider_id", MAX_PROVIDER_ID_LEN),
        ("key_id", MAX_KEY_ID_LEN),
        ("edk", MAX_EDK_LEN),
    ],
)
async def test_oversized_length_fields(
    reader: Reader, keyring: Keyring, what: str, limit: int
) -> None:
    """A length field one over its named limit is refused before slicing, before any KMS call."""
    ct = await _seal(keyring, PT[:100])
    header = parse_header(ct[: _hlen(ct)])
    kms_len = struct.unpack_from(">H", ct, 80)[0]
    obj_at = 82 + kms_len
    edk_at = obj_at + 2 + struct.unpack_from(">H", ct, obj_at)[0]
    w = header.wrapped_keys[0]
    kid_at = edk_at + 1 + 1 + len(w.provider_id)
    where = {
        "kms_ctx": (80, ">H"),
        "obj_ctx": (obj_at, ">H"),
        "provider_id": (edk_at + 1, ">B"),
        "key_id": (kid_at, ">H"),
        "edk": (kid_at + 2 + len(w.key_id.encode()), ">H"),
    }
    pos, fmt = where[what]
    await reader.rejects(_set(ct, pos, struct.pack(fmt, limit + 1)), HeaderFormatError, kms_calls=0)
    # The largest encodable value is refused too (it runs past the header).
    top = 0xFF if fmt == ">B" else 0xFFFF
    await reader.rejects(_set(ct, pos, struct.pack(fmt, top)), HeaderFormatError, kms_calls=0)


@pytest.mark.anyio
async def test_too_many_wrapped_keys(memory_kms: MemoryKms, tmp_path: Path) -> None:
    """max_wrapped_keys is enforced while parsing, before the first KMS call."""
    key_id = memory_kms.create_key("multi")
    keyring = Keyring(memory_kms, key_id)
    dk = await memory_kms.generate_data_key(key_id, context=KCTX)
    wrapped = [dk.wrapped] + [
        await memory_kms.encrypt_data_key(key_id, dk.plaintext, context=KCTX) for _ in range(2)
    ]
    ct = seal_object(
        PT,
        data_key=bytes(dk.plaintext),
        message_id=os.urandom(32),
        wrapped_keys=wrapped,
        seg_log2=12,
        kms_context=KCTX,
        object_context=OCTX,
    )
    out = tmp_path / "out"
    out.mkdir()
    r = Reader(keyring, memory_kms, out)
    for limit in (1, 2):
        await r.rejects(ct, HeaderFormatError, kms_calls=0, max_wrapped_keys=limit)
    assert bytes(await decrypt_bytes(ct, keyring=keyring, options=_opts(max_wrapped_keys=3))) == PT
    # Nine entries cannot even be encoded; a count byte of 9 is refused whatever the option.
    kms_len = struct.unpack_from(">H", ct, 80)[0]
    obj_at = 82 + kms_len
    edk_at = obj_at + 2 + struct.unpack_from(">H", ct, obj_at)[0]
    assert ct[edk_at] == 3
    await r.rejects(_set(ct, edk_at, b"\x09"), HeaderFormatError, kms_calls=0)
    await r.rejects(_set(ct, edk_at, b"\x00"), HeaderFormatError, kms_calls=0)


# -- segments -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("batch", BATCHES)
async def test_bit_flip_in_each_segment_body_and_tag(
    reader: Reader, keyring: Keyring, batch: int
) -> None:
    ct = await _seal(keyring)
    n = 7
    for i in range(n):
        a, b = _seg(ct, i)
        for pos in (a, (a + b - 16) // 2, b - 17, b - 16, b - 1):  # body first/mid/last, tag
            await reader.rejects(_flip(ct, pos), AuthenticationError, damaged=i, batch=batch)


@pytest.mark.anyio
@pytest.mark.parametrize("batch", BATCHES)
async def test_truncation_at_every_segment_boundary(
    reader: Reader, keyring: Keyring, batch: int
) -> None:
    for pt in (PT, PT_FULL):
        ct = await _seal(keyring, pt)
        h = _hlen(ct)
        n = -(-len(pt) // S)
        for m in range(n):  # keep segments 0 .. m-1
            await reader.rejects(
                ct[: h + m * T],
                TruncatedObjectError,
                plaintext=pt,
                damaged=m - 1 if m else None,
                batch=batch,
            )


@pytest.mark.anyio
@pytest.mark.parametrize("batch", BATCHES)
async def test_truncation_inside_a_segment(reader: Reader, keyring: Keyring, batch: int) -> None:
    """A last segment of 17..T-1 bytes fails as final and as non-final: AuthenticationError."""
    ct = await _seal(keyring)
    h = _hlen(ct)
    for m in (0, 1, 3, 4, 5):
        for c in (17, 18, 100, T // 2, T - 1):
            await reader.rejects(ct[: h + m * T + c], AuthenticationError, damaged=m, batch=batch)
    # Inside the final (116-byte) segment.
    for c in (17, 50, 115):
        await reader.rejects(ct[: h + 6 * T + c], AuthenticationError, damaged=6, batch=batch)


@pytest.mark.anyio
@pytest.mark.parametrize("batch", BATCHES)
async def test_impossible_remainder_is_rejected_opaquely(
    reader: Reader, keyring: Keyring, batch: int
) -> None:
    """A last segment of 1..16 bytes (16 only allowed for the empty object) is impossible.

    It is rejected from the length alone, and with the same class on every path: whether the
    object was cut inside a segment or had bytes appended after a full final segment cannot be
    told from the length, and a streaming reader meets the appended case as an authentication
    failure of the old final segment. So both are AuthenticationError (docs/format.md 7).
    """
    ct = await _seal(keyring)
    h = _hlen(ct)
    for m in (0, 1, 4):
        for c in (1, 15, 16):
            if m == 0 and c == 16:
                continue  # a 16-byte single segment is a well-formed (empty) final segment
            await reader.rejects(ct[: h + m * T + c], AuthenticationError, damaged=m, batch=batch)
    full = await _seal(keyring, PT_FULL)
    for extra in (b"\x00", bytes(15), bytes(16)):
        await reader.rejects(
            full + extra, AuthenticationError, plaintext=PT_FULL, damaged=7, batch=batch
        )


@pytest.mark.anyio
@pytest.mark.parametrize("batch", BATCHES)
async def test_single_segment_of_sixteen_bytes(
    reader: Reader, keyring: Keyring, batch: int
) -> None:
    """Body cut to 16 bytes: parsed as an empty final segment, whose tag then fails."""
    ct = await _seal(keyring)
    await reader.rejects(ct[: _hlen(ct) + 16], AuthenticationError, damaged=0, batch=batch)


@pytest.mark.anyio
@pytest.mark.parametrize("batch", BATCHES)
async def test_appended_segment(reader: Reader, keyring: Keyring, batch: int) -> None:
    ct = await _seal(keyring)
    a, b = _seg(ct, 0)
    # After a short final segment: the old final segment is now read with a wrong length.
    await reader.rejects(ct + ct[a:b], AuthenticationError, damaged=6, batch=batch)
    await reader.rejects(ct + b"\x00", AuthenticationError, damaged=6, batch=batch)
    # After a full final segment: the old final segment fails as non-final.
    full = await _seal(keyring, PT_FULL)
    a, b = _seg(full, 0)
    await reader.rejects(
        full + full[a:b], AuthenticationError, plaintext=PT_FULL, damaged=7, batch=batch
    )
    a, b = _seg(full, 7)
    await reader.rejects(
        full + full[a:b], AuthenticationError, plaintext=PT_FULL, damaged=7, batch=batch
    )


@pytest.mark.anyio
@pytest.mark.parametrize("batch", BATCHES)
async def test_swapped_segments(reader: Reader, keyring: Keyring, batch: int) -> None:
    for pt, pairs in ((PT, [(0, 1), (2, 5), (4, 5)]), (PT_FULL, [(6, 7), (0, 7)])):
        ct = await _seal(keyring, pt)
        for i, j in pairs:
            si, sj = _seg(ct, i), _seg(ct, j)
            assert si[1] - si[0] == sj[1] - sj[0] == T
            bad = (
                ct[: si[0]]
                + ct[sj[0] : sj[1]]
                + ct[si[1] : sj[0]]
                + ct[si[0] : si[1]]
                + ct[sj[1] :]
            )
            await reader.rejects(bad, AuthenticationError, plaintext=pt, damaged=i, batch=batch)
    # A duplicated segment in place of its successor.
    ct = await _seal(keyring)
    a, b = _seg(ct, 2)
    await reader.rejects(
        ct[:b] + ct[a:b] + ct[b + T :], AuthenticationError, damaged=3, batch=batch
    )


async def _same_dk_objects(
    memory_kms: MemoryKms, key_id: str, pt: bytes, count: int
) -> list[bytes]:
    """Objects sealed under one data key (as a cached key would), fresh message id each."""
    dk = await memory_kms.generate_data_key(key_id, context=KCTX)
    return [
        seal_object(
            pt,
            data_key=bytes(dk.plaintext),
            message_id=os.urandom(32),
            wrapped_keys=[dk.wrapped],
            seg_log2=12,
            kms_context=KCTX,
            object_context=OCTX,
        )
        for _ in range(count)
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("batch", BATCHES)
async def test_segment_spliced_from_another_object_under_the_same_data_key(
    reader: Reader, keyring: Keyring, memory_kms: MemoryKms, batch: int
) -> None:
    a, b = await _same_dk_objects(memory_kms, keyring.key_id or "", PT, 2)
    assert a[: _hlen(a)] != b[: _hlen(b)] and len(a) == len(b)
    assert bytes(await decrypt_bytes(a, keyring=keyring)) == PT
    for i in (0, 3, 6):
        lo, hi = _seg(a, i)
        await reader.rejects(
            a[:lo] + b[lo:hi] + a[hi:], AuthenticationError, damaged=i, batch=batch
        )


@pytest.mark.anyio
@pytest.mark.parametrize("batch", BATCHES)
async def test_header_from_another_object_under_the_same_data_key(
    reader: Reader, keyring: Keyring, memory_kms: MemoryKms, batch: int
) -> None:
    a, b = await _same_dk_objects(memory_kms, keyring.key_id or "", PT, 2)
    h = _hlen(a)
    # The header authenticates (it is b's own), but every segment of a fails under b's keys.
    await reader.rejects(b[:h] + a[h:], AuthenticationError, damaged=0, batch=batch, kms_calls=1)


@pytest.mark.anyio
async def test_wrong_data_key(reader: Reader, keyring: Keyring, memory_kms: MemoryKms) -> None:
    """A header whose wrapped key unwraps to another data key fails the commitment."""
    dk = await memory_kms.generate_data_key(keyring.key_id or "", context=KCTX)
    ct = seal_object(
        PT,
        data_key=os.urandom(32),
        message_id=os.urandom(32),
        wrapped_keys=[dk.wrapped],
        seg_log2=12,
        kms_context=KCTX,
        object_context=OCTX,
    )
    await reader.rejects(ct, AuthenticationError, kms_calls=1)


@pytest.mark.anyio
async def test_wrong_expected_context(reader: Reader, keyring: Keyring) -> None:
    ct = await _seal(keyring)
    # checked once the header is authenticated (a tampered header is AuthenticationError)
    for expected in ({"path": "data/part-0002.bin"}, {"path": OCTX["path"], "tenant": "a"}):
        await reader.rejects(ct, ContextMismatchError, kms_calls=1, expected_context=expected)
    await reader.rejects(
        ct, ContextMismatchError, kms_calls=1, expected_kms_context={"bucket": "other"}
    )
    # The object context is not the KMS context, and vice versa.
    await reader.rejects(ct, ContextMismatchError, kms_calls=1, expected_context=KCTX)


@pytest.mark.anyio
async def test_kms_context_changed(reader: Reader, keyring: Keyring, memory_kms: MemoryKms) -> None:
    """The KMS refuses to unwrap under another context, before the header MAC is checked."""
    ct = await _seal(keyring)
    pos = ct.index(b"example-bucket")
    await reader.rejects(_set(ct, pos, b"exbmple-bucket"), KmsKeyError, kms_calls=1)
    # Same with a well-formed header and a valid MAC: the data key was wrapped under KCTX, the
    # header claims another context.
    dk = await memory_kms.generate_data_key(keyring.key_id or "", context=KCTX)
    forged = seal_object(
        PT,
        data_key=bytes(dk.plaintext),
        message_id=os.urandom(32),
        wrapped_keys=[dk.wrapped],
        seg_log2=12,
        kms_context={**KCTX, "prefix": "other/"},
        object_context=OCTX,
    )
    await reader.rejects(forged, KmsKeyError, kms_calls=1)


@pytest.mark.anyio
async def test_unknown_wrapping_key(reader: Reader, memory_kms: MemoryKms) -> None:
    """An object for a key this keyring's backend lacks: no backend claims it."""
    other = MemoryKms()
    ct = await _seal(Keyring(other, other.create_key("elsewhere")))
    await reader.rejects(ct, NoBackendError, kms_calls=0)


@pytest.mark.anyio
async def test_streaming_failure_surfaces_as_the_segment_error(
    keyring: Keyring, memory_kms: MemoryKms, reader: Reader
) -> None:
    """The pipeline's writer fails first; the reader side must not replace its error.

    Regression for a race in envelope/_pipeline.py: with one segment per batch, a tag
    failure in an early segment closed the job stream while the reader was still
    dispatching, and anyio.BrokenResourceError escaped instead of AuthenticationError.
    """
    ct = await _seal(keyring)
    for i in (0, 1, 2):
        a, _ = _seg(ct, i)
        bad = _flip(ct, a)
        for _ in range(10):
            sink = io.BytesIO()
            with pytest.raises(EnvelopeError) as e:
                await decrypt(bad, sink, keyring=keyring, options=_opts(4096))
            assert type(e.value) is AuthenticationError
            assert sink.getvalue() == PT[: i * S]


def test_decrypt_into_checks_in_the_specs_order_like_every_other_face(tmp_path: Path) -> None:
    """format.md §7: a reader stops at the first failing step, in order, and the body length
    comes after the unwrap and the header's MAC. decrypt_into checked the length before the
    KMS call, so one damaged object under a key the reader lacks was TruncatedObjectError or
    AuthenticationError there and NoBackendError on decrypt_bytes (review)."""
    import anyio

    from envelope import api, sync
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    mine, theirs = MemoryKms(), MemoryKms()
    kr, other = Keyring(mine, mine.create_key()), Keyring(theirs, theirs.create_key())
    opts = Options(segment_size=4096)
    ct = bytes(sync.encrypt_bytes(os.urandom(10_000), keyring=kr, options=opts))
    hl = api.parse_object_header(memoryview(ct)).header_len
    cases = ((ct[:hl], TruncatedObjectError), (ct[: hl + 100], AuthenticationError))
    for damaged, with_key in cases:
        for keyring, expected in ((other, NoBackendError), (kr, with_key)):
            faces = {
                "bytes": lambda: sync.decrypt_bytes(damaged, keyring=keyring),  # noqa: B023
                "into": lambda: sync.decrypt_into(damaged, bytearray(20_000), keyring=keyring),  # noqa: B023
                "async into": lambda: anyio.run(
                    partial(api.decrypt_into, damaged, bytearray(20_000), keyring=keyring)  # noqa: B023
                ),
            }
            for name, face in faces.items():
                with pytest.raises(EnvelopeError) as e:
                    face()
                assert type(e.value) is expected, (name, len(damaged), e.value)


def test_decrypt_into_refuses_a_tampered_segment_size_as_tampered() -> None:
    """The header's segment size is not authenticated until the header's MAC. decrypt_into
    sized the caller's buffer by it before the KMS call, so a header claiming larger segments
    (fewer tags, more plaintext) was refused as the caller's too-small buffer
    (ConfigurationError) instead of as tampered (review). A buffer too small for any segment
    size is still refused before the KMS call."""
    import anyio

    from envelope import api, sync
    from envelope.errors import ConfigurationError

    mine = MemoryKms()
    kr = Keyring(mine, mine.create_key())
    data = os.urandom(40_960)
    ct = bytearray(sync.encrypt_bytes(data, keyring=kr, options=Options(segment_size=S)))
    at = 12  # magic (4), version, flags, suite (2), header length (4), then seg_log2
    assert ct[at] == 12 and api.parse_object_header(memoryview(ct)).seg_log2 == 12
    ct[at] = 20
    for name, face in {
        "into": lambda buf: sync.decrypt_into(bytes(ct), buf, keyring=kr),
        "async into": lambda buf: anyio.run(partial(api.decrypt_into, bytes(ct), buf, keyring=kr)),
    }.items():
        with pytest.raises(EnvelopeError) as e:
            face(bytearray(len(data)))
        assert type(e.value) is AuthenticationError, (name, e.value)
        with pytest.raises(ConfigurationError):
            face(bytearray(len(data) // 2))


def test_decrypt_into_opens_through_a_scratch_only_where_another_process_may_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AES-GCM writes a segment's plaintext before it checks the tag. Into a buffer another
    process may map (an mmap, SharedMemory) each segment is opened in a private scratch and
    copied out once authenticated; into process-private memory (a bytearray, an array, views
    of them) it is opened in place and zeroed on failure, as Go's and BoringSSL's AEAD opens
    do (the scratch cost a pass over the plaintext: 0.72 of encrypt's speed). Both zero a
    tampered object's output."""
    import array
    import mmap
    from multiprocessing import shared_memory

    from envelope import objects, sync

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key())
    data = os.urandom(3 * S + 5)
    ct = bytes(sync.encrypt_bytes(data, keyring=kr, options=Options(segment_size=S)))
    seen: list[bool] = []
    real = objects.open_segments

    def spy(*args: object) -> int:
        seen.append(args[-1] is not None)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(objects, "open_segments", spy)
    shm = shared_memory.SharedMemory(create=True, size=len(data))
    try:
        bufs = {
            "bytearray": (bytearray(len(data)), False),
            "bytearray slice": (memoryview(bytearray(len(data) + 9))[9:], False),
            "array": (array.array("B", bytes(len(data))), False),
            "mmap": (mmap.mmap(-1, len(data)), True),
            "SharedMemory": (shm.buf, True),
        }
        for name, (buf, through_scratch) in bufs.items():
            seen.clear()
            assert sync.decrypt_into(ct, buf, keyring=kr) == len(data), name
            assert bytes(memoryview(buf).cast("B")) == data and seen == [through_scratch], name
            bad = bytearray(ct)
            bad[-40] ^= 1  # the last segment
            with pytest.raises(AuthenticationError):
                sync.decrypt_into(bytes(bad), buf, keyring=kr)
            assert not any(memoryview(buf).cast("B")), name
        del bufs, buf
    finally:
        shm.close()
        shm.unlink()
