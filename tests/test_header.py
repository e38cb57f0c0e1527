"""Header codec of format v1 (docs/format.md sections 2-4): round trips, limits, rejections.

`raw_header` below is a second, independent encoder written from the spec's table; the codec
must agree with it on valid input and refuse what it builds out of bounds.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope.errors import HeaderFormatError, UnsupportedSuiteError, UnsupportedVersionError
from envelope.hazmat.format import (
    COMMITMENT_LEN,
    FIXED_PREFIX_LEN,
    HEADER_MAC_LEN,
    MAGIC,
    MAX_EDK_LEN,
    MAX_EDKS,
    MAX_HEADER_LEN,
    MAX_KEY_ID_LEN,
    MAX_KMS_CTX_LEN,
    MAX_OBJ_CTX_LEN,
    MAX_PROVIDER_ID_LEN,
    MAX_SEG_LOG2,
    MESSAGE_ID_LEN,
    MIN_HEADER_LEN,
    MIN_SEG_LOG2,
    SUITE_AES256GCM_HKDF_SHA512_COMMIT,
    VERSION,
    WrappedKey,
    decode_context,
    encode_context,
    encode_header,
    parse_header,
    parse_prefix,
)

MID = bytes(range(32))
COMMIT = bytes(range(32, 64))
MAC = b"\xaa" * HEADER_MAC_LEN
W = WrappedKey("memory", "k", b"\x01" * 61)


def test_constants_match_the_spec() -> None:
    assert MAGIC == b"\x89ENV" and VERSION == 1
    assert SUITE_AES256GCM_HKDF_SHA512_COMMIT == 0x0001
    assert (MESSAGE_ID_LEN, COMMITMENT_LEN, HEADER_MAC_LEN, FIXED_PREFIX_LEN) == (32, 32, 32, 12)
    assert (MIN_SEG_LOG2, MAX_SEG_LOG2) == (12, 26)
    assert (MAX_HEADER_LEN, MIN_HEADER_LEN) == (1 << 20, 129)
    assert (MAX_KMS_CTX_LEN, MAX_OBJ_CTX_LEN, MAX_EDKS) == (8192, 16384, 8)
    assert (MAX_PROVIDER_ID_LEN, MAX_KEY_ID_LEN, MAX_EDK_LEN) == (64, 2048, 4096)


# -- an independent encoder -----------------------------------------------------------------


def raw_context(pairs: Sequence[tuple[bytes, bytes]], count: int | None = None) -> bytes:
    """Pairs as given (no sorting, no checks), with an optional lying count."""
    out = struct.pack(">H", len(pairs) if count is None else count)
    for k, v in pairs:
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def raw_edk(pid: bytes, kid: bytes, edk: bytes) -> bytes:
    return (
        bytes([len(pid)])
        + pid
        + struct.pack(">H", len(kid))
        + kid
        + struct.pack(">H", len(edk))
        + edk
    )


def raw_header(
    *,
    kms: bytes = b"\x00\x00",
    obj: bytes = b"\x00\x00",
    edks: Sequence[bytes] = (raw_edk(b"memory", b"k", b"\x01" * 61),),
    count: int | None = None,
    seg_log2: int = 12,
    version: int = VERSION,
    flags: int = 0,
    suite: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT,
    reserved: bytes = b"\0\0\0",
    header_len: int | None = None,
    kms_len: int | None = None,
    obj_len: int | None = None,
    extra: bytes = b"",
) -> bytes:
    body = (
        struct.pack(">B3s", seg_log2, reserved)
        + MID
        + COMMIT
        + struct.pack(">H", len(kms) if kms_len is None else kms_len)
        + kms
        + struct.pack(">H", len(obj) if obj_len is None else obj_len)
        + obj
        + bytes([len(edks) if count is None else count])
        + b"".join(edks)
        + extra
    )
    n = 12 + len(body) + HEADER_MAC_LEN if header_len is None else header_len
    return MAGIC + struct.pack(">BBHI", version, flags, suite, n) + body + MAC


def sealed(**kw: object) -> bytes:
    """encode_header + a fake MAC, with defaults for what is not given."""
    args: dict[str, object] = {
        "seg_log2": 12,
        "message_id": MID,
        "commitment": COMMIT,
        "kms_context": {},
        "object_context": {},
        "wrapped_keys": [W],
    }
    args.update(kw)
    unmacd, header_len, _ = encode_header(**args)  # type: ignore[arg-type]
    assert header_len == len(unmacd) + HEADER_MAC_LEN
    return unmacd + MAC


def test_encoder_agrees_with_the_independent_encoder() -> None:
    kms = {"bucket": "b", "prefix": "p/"}
    obj = {"path": "a/b", "é": "ü"}
    got = sealed(
        kms_context=kms, object_context=obj, wrapped_keys=[W, WrappedKey("file", "x", b"z")]
    )
    want = raw_header(
        kms=raw_context([(b"bucket", b"b"), (b"prefix", b"p/")]),
        obj=raw_context([(b"path", b"a/b"), ("é".encode(), "ü".encode())]),
        edks=[raw_edk(b"memory", b"k", b"\x01" * 61), raw_edk(b"file", b"x", b"z")],
    )
    assert got == want
    h = parse_header(got)
    edk_start = 80 + 2 + len(raw_context([(b"bucket", b"b"), (b"prefix", b"p/")]))
    edk_start += 2 + len(raw_context([(b"path", b"a/b"), ("é".encode(), "ü".encode())]))
    assert h.bound_digest == hashlib.sha256(got[0:8] + got[12:edk_start]).digest()
    assert h.header_mac == MAC and h.raw == got and h.header_len == len(got)


def test_a_remembered_wrapped_key_encoding_is_never_another_keys() -> None:
    """The encoder remembers the last single wrapped key's encoding (objects under one cached
    data key share it): alternating keys, equal but distinct keys, and a bytearray ciphertext
    changed in place each still encode as the independent encoder does."""
    a, b = W, WrappedKey("file", "x", b"z")
    for w in (a, b, a, a, WrappedKey("memory", "k", b"\x01" * 61), b):
        want = raw_edk(w.provider_id.encode(), w.key_id.encode(), w.ciphertext)
        assert sealed(wrapped_keys=[w]) == raw_header(edks=[want])
    mutable = bytearray(b"\x05" * 9)
    m = WrappedKey("memory", "k", mutable)  # type: ignore[arg-type]
    sealed(wrapped_keys=[m])
    mutable[0] = 6
    assert sealed(wrapped_keys=[m]) == raw_header(edks=[raw_edk(b"memory", b"k", bytes(mutable))])


# -- round trips ----------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_contexts = st.dictionaries(_text.filter(bool), _text, max_size=5)
_wrapped = st.builds(
    WrappedKey,
    provider_id=st.text(st.characters(min_codepoint=0, max_codepoint=127), min_size=1, max_size=8),
    key_id=_text.filter(bool),
    ciphertext=st.binary(min_size=1, max_size=80),
)


@settings(max_examples=150, deadline=None)
@given(
    kms=_contexts,
    obj=_contexts,
    wrapped=st.lists(_wrapped, min_size=1, max_size=MAX_EDKS),
    seg_log2=st.integers(MIN_SEG_LOG2, MAX_SEG_LOG2),
    message_id=st.binary(min_size=32, max_size=32),
    commitment=st.binary(min_size=32, max_size=32),
)
def test_round_trip(
    kms: dict[str, str],
    obj: dict[str, str],
    wrapped: list[WrappedKey],
    seg_log2: int,
    message_id: bytes,
    commitment: bytes,
) -> None:
    unmacd, header_len, hd = encode_header(
        seg_log2=seg_log2,
        message_id=message_id,
        commitment=commitment,
        kms_context=kms,
        object_context=obj,
        wrapped_keys=wrapped,
    )
    raw = unmacd + MAC
    assert parse_prefix(raw[:FIXED_PREFIX_LEN]) == header_len == len(raw)
    h = parse_header(raw)
    assert (h.seg_log2, h.segment_size) == (seg_log2, 1 << seg_log2)
    assert (h.message_id, h.commitment, h.header_mac) == (message_id, commitment, MAC)
    assert dict(h.kms_context) == kms and dict(h.object_context) == obj
    assert list(h.wrapped_keys) == wrapped
    assert h.bound_digest == hd and h.raw == raw
    # HD ignores the wrapped-key list (re-wrapping keeps every segment valid) ...
    _, _, hd2 = encode_header(
        seg_log2=seg_log2,
        message_id=message_id,
        commitment=commitment,
        kms_context=kms,
        object_context=obj,
        wrapped_keys=[W],
    )
    assert hd2 == hd
    # ... and re-encoding the parsed header gives the same bytes.
    again, _, _ = encode_header(
        seg_log2=h.seg_log2,
        message_id=h.message_id,
        commitment=h.commitment,
        kms_context=h.kms_context,
        object_context=h.object_context,
        wrapped_keys=h.wrapped_keys,
    )
    assert again == unmacd


@settings(max_examples=100, deadline=None)
@given(ctx=_contexts, data=st.data())
def test_context_is_canonical(ctx: dict[str, str], data: st.DataObject) -> None:
    order = data.draw(st.permutations(list(ctx.items())))
    block = encode_context(dict(order))
    assert block == encode_context(ctx)
    assert decode_context(block) == ctx
    keys = [k.encode() for k, _ in sorted(ctx.items(), key=lambda kv: kv[0].encode())]
    assert block == raw_context([(k, ctx[k.decode()].encode()) for k in keys])


def _hd(**kw: object) -> bytes:
    args: dict[str, object] = {
        "seg_log2": 12,
        "message_id": MID,
        "commitment": COMMIT,
        "kms_context": {"a": "1"},
        "object_context": {"b": "2"},
        "wrapped_keys": [W],
    }
    args.update(kw)
    return encode_header(**args)[2]  # type: ignore[arg-type]


def test_hd_covers_everything_but_header_len_edks_and_mac() -> None:
    base = _hd()
    assert (
        parse_header(sealed(kms_context={"a": "1"}, object_context={"b": "2"})).bound_digest == base
    )
    # Other wrapped keys (hence another header_len): the same HD.
    assert _hd(wrapped_keys=[W, W]) == base
    assert _hd(wrapped_keys=[WrappedKey("aws-kms", "arn:aws:kms:x", b"\x02" * 170)]) == base
    # Any other field: another HD.
    others = [
        _hd(kms_context={"a": "2"}),
        _hd(object_context={"b": "3"}),
        _hd(kms_context={}, object_context={"a": "1", "b": "2"}),
        _hd(seg_log2=13),
        _hd(message_id=COMMIT),
        _hd(commitment=MID),
        _hd(suite_id=2),
    ]
    assert len({base, *others}) == len(others) + 1


# -- every named limit, at the limit and one past it -----------------------------------------


def _ctx_of_size(size: int) -> dict[str, str]:
    """One pair whose canonical block is exactly `size` bytes (2 + 2 + 1 + 2 + value)."""
    return {"k": "v" * (size - 7)}


@pytest.mark.parametrize(
    ("which", "limit"), [("kms_context", MAX_KMS_CTX_LEN), ("object_context", MAX_OBJ_CTX_LEN)]
)
def test_context_length_limits(which: str, limit: int) -> None:
    ok = _ctx_of_size(limit)
    assert len(encode_context(ok, limit=limit)) == limit
    h = parse_header(sealed(**{which: ok}))
    assert dict(getattr(h, which)) == ok
    with pytest.raises(HeaderFormatError):
        sealed(**{which: _ctx_of_size(limit + 1)})
    block = raw_context([(b"k", b"v" * (limit + 1 - 7))])
    assert len(block) == limit + 1
    with pytest.raises(HeaderFormatError, match="over its limit"):
        parse_header(raw_header(**{which[:3]: block}))  # type: ignore[arg-type]


def test_kms_context_limit_is_not_the_object_context_limit() -> None:
    ctx = _ctx_of_size(MAX_KMS_CTX_LEN + 1)
    h = parse_header(sealed(object_context=ctx))
    assert dict(h.object_context) == ctx


@pytest.mark.parametrize("count", [1, MAX_EDKS])
def test_wrapped_key_count_at_limits(count: int) -> None:
    h = parse_header(sealed(wrapped_keys=[W] * count))
    assert len(h.wrapped_keys) == count
    assert (
        len(parse_header(raw_header(edks=[raw_edk(b"m", b"k", b"e")] * count)).wrapped_keys)
        == count
    )


@pytest.mark.parametrize("count", [0, MAX_EDKS + 1])
def test_wrapped_key_count_out_of_limits(count: int) -> None:
    with pytest.raises(HeaderFormatError):
        sealed(wrapped_keys=[W] * count)
    with pytest.raises(HeaderFormatError, match="wrapped-key count"):
        # Padded so that header_len itself is in range: the count is what is refused.
        parse_header(raw_header(edks=[raw_edk(b"m", b"k", b"e")] * count, extra=bytes(8)))


def test_reader_maximum_of_wrapped_keys() -> None:
    raw = sealed(wrapped_keys=[W] * 3)
    assert len(parse_header(raw, max_wrapped_keys=3).wrapped_keys) == 3
    with pytest.raises(HeaderFormatError, match="this reader allows 2"):
        parse_header(raw, max_wrapped_keys=2)


@pytest.mark.parametrize(
    ("field", "limit"),
    [("provider_id", MAX_PROVIDER_ID_LEN), ("key_id", MAX_KEY_ID_LEN), ("edk", MAX_EDK_LEN)],
)
def test_wrapped_key_field_limits(field: str, limit: int) -> None:
    def entry(n: int) -> tuple[bytes, bytes, bytes]:
        parts = {"provider_id": b"m", "key_id": b"k", "edk": b"e"}
        parts[field] = b"x" * n
        return parts["provider_id"], parts["key_id"], parts["edk"]

    pid, kid, edk = entry(limit)
    w = WrappedKey(pid.decode(), kid.decode(), edk)
    assert parse_header(sealed(wrapped_keys=[w])).wrapped_keys == (w,)
    assert parse_header(raw_header(edks=[raw_edk(*entry(limit))])).wrapped_keys == (w,)
    pid, kid, edk = entry(limit + 1)
    with pytest.raises(HeaderFormatError):
        WrappedKey(pid.decode(), kid.decode(), edk)
    with pytest.raises(HeaderFormatError):
        parse_header(raw_header(edks=[raw_edk(pid, kid, edk)]))
    pid, kid, edk = entry(0)
    with pytest.raises(HeaderFormatError):
        WrappedKey(pid.decode(), kid.decode(), edk)
    with pytest.raises(HeaderFormatError):
        parse_header(raw_header(edks=[raw_edk(pid, kid, edk)]))


def test_wrapped_key_text_rules() -> None:
    with pytest.raises(HeaderFormatError):
        WrappedKey("mémoire", "k", b"e")
    with pytest.raises(HeaderFormatError):
        parse_header(raw_header(edks=[raw_edk("mé".encode(), b"k", b"e")]))
    with pytest.raises(HeaderFormatError, match="UTF-8"):
        parse_header(raw_header(edks=[raw_edk(b"m", b"\xff", b"e")]))
    w = WrappedKey("m", "clé/ключ", b"e")
    assert parse_header(sealed(wrapped_keys=[w])).wrapped_keys == (w,)


@pytest.mark.parametrize("seg_log2", [MIN_SEG_LOG2, MAX_SEG_LOG2])
def test_segment_size_at_limits(seg_log2: int) -> None:
    assert parse_header(sealed(seg_log2=seg_log2)).seg_log2 == seg_log2
    assert parse_header(raw_header(seg_log2=seg_log2)).seg_log2 == seg_log2


@pytest.mark.parametrize("seg_log2", [0, MIN_SEG_LOG2 - 1, MAX_SEG_LOG2 + 1, 255])
def test_segment_size_out_of_limits(seg_log2: int) -> None:
    with pytest.raises(HeaderFormatError):
        sealed(seg_log2=seg_log2)
    with pytest.raises(HeaderFormatError, match="seg_log2"):
        parse_header(raw_header(seg_log2=seg_log2))


def test_smallest_header_is_min_header_len() -> None:
    raw = sealed(wrapped_keys=[WrappedKey("m", "k", b"e")])
    assert len(raw) == MIN_HEADER_LEN
    assert parse_header(raw).header_len == MIN_HEADER_LEN
    assert raw == raw_header(edks=[raw_edk(b"m", b"k", b"e")])


def test_header_len_limits_in_the_prefix() -> None:
    for n in (MIN_HEADER_LEN, MAX_HEADER_LEN):
        assert parse_prefix(raw_header(header_len=n)[:12]) == n
    for n in (0, MIN_HEADER_LEN - 1, MAX_HEADER_LEN + 1, 0xFFFFFFFF):
        with pytest.raises(HeaderFormatError, match="header_len"):
            parse_prefix(raw_header(header_len=n)[:12])


def test_largest_possible_header_is_far_below_max_header_len() -> None:
    big = WrappedKey("p" * MAX_PROVIDER_ID_LEN, "k" * MAX_KEY_ID_LEN, b"e" * MAX_EDK_LEN)
    raw = sealed(
        kms_context=_ctx_of_size(MAX_KMS_CTX_LEN),
        object_context=_ctx_of_size(MAX_OBJ_CTX_LEN),
        wrapped_keys=[big] * MAX_EDKS,
    )
    assert len(raw) == 74397 < MAX_HEADER_LEN  # docs/format.md section 2
    assert parse_header(raw).wrapped_keys == (big,) * MAX_EDKS


# -- canonical contexts ---------------------------------------------------------------------


def test_context_order_independence() -> None:
    a = encode_context({"b": "2", "a": "1", "ä": "x", "B": "0"})
    b = encode_context({"ä": "x", "B": "0", "a": "1", "b": "2"})
    assert a == b
    # Sorted by UTF-8 bytes: "B" (0x42) < "a" < "b" < "ä" (0xc3 0xa4).
    assert a == raw_context([(b"B", b"0"), (b"a", b"1"), (b"b", b"2"), ("ä".encode(), b"x")])
    assert encode_context({}) == b"\x00\x00"


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (raw_context([(b"a", b"1"), (b"a", b"2")]), "sorted and unique"),
        (raw_context([(b"b", b"1"), (b"a", b"2")]), "sorted and unique"),
        (raw_context([(b"ab", b"1"), (b"a", b"2")]), "sorted and unique"),
        (raw_context([(b"a", b"1")]) + b"\x00", "trailing"),
        (raw_context([(b"a", b"1")], count=0), "trailing"),
        (raw_context([(b"a", b"1")], count=2), "runs past"),
        (raw_context([(b"", b"1")]), "empty"),
        (raw_context([(b"\xff", b"1")]), "UTF-8"),
        (raw_context([(b"a", b"\xc3")]), "UTF-8"),
        (b"", "shorter"),
        (b"\x00", "shorter"),
        (b"\x00\x01\x00\x05ab", "runs past"),
    ],
)
def test_context_block_rejections(block: bytes, match: str) -> None:
    with pytest.raises(HeaderFormatError, match=match):
        decode_context(block)
    if len(block) >= 2:
        with pytest.raises(HeaderFormatError):
            parse_header(raw_header(obj=block))
        with pytest.raises(HeaderFormatError):
            parse_header(raw_header(kms=block))


def test_context_encode_rejections() -> None:
    with pytest.raises(HeaderFormatError):
        encode_context({"": "v"})
    with pytest.raises(HeaderFormatError):
        encode_context({"k": "v" * 0x10000}, limit=1 << 20)
    with pytest.raises(HeaderFormatError):
        encode_context({"k": "v" * 10}, limit=16)


# -- parse_prefix and structural rejections -------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "error"),
    [
        (b"", HeaderFormatError),
        (raw_header()[:11], HeaderFormatError),
        (b"\x89ENW" + raw_header()[4:12], HeaderFormatError),
        (b"ENV1" + raw_header()[4:12], HeaderFormatError),
        (raw_header(version=0)[:12], UnsupportedVersionError),
        (raw_header(version=2)[:12], UnsupportedVersionError),
        (raw_header(version=255)[:12], UnsupportedVersionError),
        (raw_header(flags=1)[:12], HeaderFormatError),
        (raw_header(flags=0x80)[:12], HeaderFormatError),
        (raw_header(suite=0)[:12], UnsupportedSuiteError),
        (raw_header(suite=2)[:12], UnsupportedSuiteError),
        (raw_header(suite=0x0100)[:12], UnsupportedSuiteError),
    ],
)
def test_parse_prefix_rejections(prefix: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as e:
        parse_prefix(prefix)
    assert type(e.value) is error


def test_prefix_checks_come_in_order() -> None:
    # Magic before version, version before flags, flags before suite, suite before length.
    bad = MAGIC[:3] + b"X" + struct.pack(">BBHI", 9, 1, 9, 0)
    with pytest.raises(HeaderFormatError, match="magic"):
        parse_prefix(bad)
    with pytest.raises(UnsupportedVersionError):
        parse_prefix(MAGIC + struct.pack(">BBHI", 9, 1, 9, 0))
    with pytest.raises(HeaderFormatError, match="flag"):
        parse_prefix(MAGIC + struct.pack(">BBHI", 1, 1, 9, 0))
    with pytest.raises(UnsupportedSuiteError):
        parse_prefix(MAGIC + struct.pack(">BBHI", 1, 0, 9, 0))
    with pytest.raises(HeaderFormatError, match="header_len"):
        parse_prefix(MAGIC + struct.pack(">BBHI", 1, 0, 1, 0))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (raw_header(reserved=b"\0\0\1"), "reserved"),
        (raw_header(reserved=b"\x80\0\0"), "reserved"),
        (raw_header(extra=b"\x00"), "does not match"),
        (raw_header()[:-1], "header_len says"),
        (raw_header() + b"\x00", "header_len says"),
        (raw_header(header_len=len(raw_header()) - 1), "header_len says"),
        (raw_header(kms_len=0xFFFF), "over its limit"),
        (raw_header(kms_len=300), "runs past"),
        (raw_header(obj_len=MAX_OBJ_CTX_LEN + 1), "over its limit"),
        (raw_header(obj_len=1), "wrapped-key count 0"),  # shifted fields
        (raw_header(edks=[raw_edk(b"m", b"k", b"e" * 9)[:-1]]), "runs past"),
    ],
)
def test_parse_header_rejections(raw: bytes, match: str) -> None:
    with pytest.raises(HeaderFormatError, match=match) as e:
        parse_header(raw)
    assert type(e.value) is HeaderFormatError


def test_header_len_must_cover_exactly_the_fields() -> None:
    raw = raw_header()
    for delta in (-2, -1, 1, 2):
        patched = raw[:8] + struct.pack(">I", len(raw) + delta) + raw[12:]
        body = patched[: len(raw) + delta] if delta < 0 else patched + b"\0" * delta
        with pytest.raises(HeaderFormatError):
            parse_header(body)


def test_a_header_tail_is_parsed_once_and_its_memo_stays_bounded() -> None:
    """Objects sealed under one cached data key and one context share their contexts and
    wrapped-key list: the reader keeps them parsed by their bytes (`format._TAIL_MEMO`). The
    memo must give what a fresh parse gives, never skip a reader's own limit, never let one
    header's context change another's, and stay within its bounds."""
    from envelope.hazmat import format as fmt

    fmt._TAIL_MEMO.clear()
    two = raw_header(edks=[raw_edk(b"m", b"k", b"e"), raw_edk(b"m", b"j", b"f")])
    first = parse_header(two)
    again = parse_header(two)
    assert again.wrapped_keys is first.wrapped_keys  # from the memo
    assert again == first
    assert first.wrapped_keys == (WrappedKey("m", "k", b"e"), WrappedKey("m", "j", b"f"))
    with pytest.raises(HeaderFormatError, match="allows 1"):
        parse_header(two, max_wrapped_keys=1)  # the count is checked on a memo hit too
    fmt._TAIL_MEMO.clear()
    with pytest.raises(HeaderFormatError, match="allows 1"):
        parse_header(two, max_wrapped_keys=1)  # and before the list is parsed
    ctx = encode_context({"tenant": "a"}, limit=fmt.MAX_KMS_CTX_LEN)
    with_ctx = raw_header(kms=ctx, obj=ctx)
    one, other = parse_header(with_ctx), parse_header(with_ctx)
    one.kms_context["tenant"] = "b"
    one.object_context.clear()
    assert other.kms_context == {"tenant": "a"} == parse_header(with_ctx).object_context
    for i in range(600):
        parse_header(raw_header(edks=[raw_edk(b"m", b"k%d" % i, b"e")]))
    assert 0 < len(fmt._TAIL_MEMO) <= fmt._TAIL_MEMO_ENTRIES
    fmt._TAIL_MEMO.clear()
    big = raw_header(edks=[raw_edk(b"m", b"k", b"\x02" * 3000)])
    assert parse_header(big).wrapped_keys[0].ciphertext == b"\x02" * 3000
    assert fmt._TAIL_MEMO == {}  # over the size kept


def test_a_few_bytes_of_something_else_are_not_an_envelope_object() -> None:
    """A 5-byte text file was 'shorter than the fixed header prefix' (review): what is not
    the magic is not an envelope object, whatever its length; a cut object is still short."""
    from envelope import sync
    from envelope.errors import HeaderFormatError
    from envelope.hazmat.format import MAGIC
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key())
    for data, words in ((b"hello", "not an envelope object"), (MAGIC[:3], "shorter")):
        with pytest.raises(HeaderFormatError, match=words):
            sync.decrypt_bytes(data, keyring=kr)
