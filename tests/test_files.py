"""File to file on the object layer (`envelope.files`, used by `envelope.sync` and the CLI).

The positional, every-core path must write the very bytes the streaming pipeline writes, and
refuse what the pipeline refuses, with nothing left under the target name.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from envelope import api, objects, sync
from envelope.errors import AuthenticationError, InvalidObjectError, TruncatedObjectError
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms


@pytest.fixture
def kr() -> Keyring:
    kms = MemoryKms()
    return Keyring(kms, kms.create_key("f"), cache=CachePolicy())


def leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".envelope-tmp")]


@pytest.mark.parametrize("size", [0, 1, 4096, 4097, 3 * 4096, 200_000, (1 << 20) + 5])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_file_path_writes_the_pipelines_bytes(
    tmp_path: Path, kr: Keyring, size: int, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(size))
    opts = api.Options(segment_size=4096, batch_bytes=3 * 4096, workers=workers)
    mid = os.urandom(32)
    monkeypatch.setattr(objects, "message_id_source", lambda n: mid)
    sync.encrypt(str(src), str(tmp_path / "fast.env"), keyring=kr, options=opts, durable=False)
    anyio.run(lambda: api.encrypt(str(src), str(tmp_path / "slow.env"), keyring=kr, options=opts))
    assert (tmp_path / "fast.env").read_bytes() == (tmp_path / "slow.env").read_bytes()
    info = sync.decrypt(str(tmp_path / "fast.env"), str(tmp_path / "back.bin"), keyring=kr,
                        options=opts)
    assert info.plaintext_len == size
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert leftovers(tmp_path) == []


def _sealed(tmp_path: Path, kr: Keyring, n: int = 10 * 4096) -> tuple[Path, bytes]:
    data = os.urandom(n)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    out = tmp_path / "in.env"
    sync.encrypt(str(src), str(out), keyring=kr, options=api.Options(segment_size=4096))
    return out, data


@pytest.mark.parametrize(
    ("cut", "error"),
    [
        (4096 + 16, TruncatedObjectError),  # a whole last segment removed: no final flag seen
        (1, AuthenticationError),  # a segment cut short
    ],
)
def test_truncated_objects_are_refused_and_nothing_is_left(
    tmp_path: Path, kr: Keyring, cut: int, error: type[Exception]
) -> None:
    sealed, _ = _sealed(tmp_path, kr)
    blob = sealed.read_bytes()
    bad = tmp_path / "bad.env"
    bad.write_bytes(blob[: len(blob) - cut])
    target = tmp_path / "out.bin"
    target.write_bytes(b"keep")
    with pytest.raises(InvalidObjectError) as e:
        sync.decrypt(str(bad), str(target), keyring=kr, options=api.Options(workers=2))
    assert isinstance(e.value, error)
    assert target.read_bytes() == b"keep"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("body", [0, 1, 8, 15, 16, 17])
def test_a_body_cut_short_fails_as_on_every_other_face(
    tmp_path: Path, kr: Keyring, body: int
) -> None:
    """format.md §7.1: an empty body is TruncatedObjectError; 1..15 bytes of a segment is an
    impossible length, the opaque AuthenticationError; 16 and 17 bytes fail their tag. The file
    path answers with the very class the in-memory path does."""
    sealed, _ = _sealed(tmp_path, kr)
    blob = sealed.read_bytes()
    header_len = objects.header_length(blob)
    cut = blob[: header_len + body]
    bad = tmp_path / "bad.env"
    bad.write_bytes(cut)
    with pytest.raises(InvalidObjectError) as in_memory:
        sync.decrypt_bytes(cut, keyring=kr)
    with pytest.raises(InvalidObjectError) as from_file:
        sync.decrypt(str(bad), str(tmp_path / "out.bin"), keyring=kr)
    assert type(from_file.value) is type(in_memory.value)
    expected = TruncatedObjectError if body == 0 else AuthenticationError
    assert type(from_file.value) is expected
    assert not (tmp_path / "out.bin").exists() and leftovers(tmp_path) == []


def test_a_flipped_bit_anywhere_refuses_the_whole_file(tmp_path: Path, kr: Keyring) -> None:
    sealed, _ = _sealed(tmp_path, kr)
    blob = bytearray(sealed.read_bytes())
    for pos in (len(blob) - 1, len(blob) // 2, 200):
        bad_blob = bytearray(blob)
        bad_blob[pos] ^= 0x10
        bad = tmp_path / "bad.env"
        bad.write_bytes(bad_blob)
        with pytest.raises(InvalidObjectError):
            sync.decrypt(str(bad), str(tmp_path / "out.bin"), keyring=kr,
                         options=api.Options(workers=2))
        assert not (tmp_path / "out.bin").exists()
        assert leftovers(tmp_path) == []


# -- blocking streams (pipes, stdin/stdout, file objects) ------------------------------------


def test_blocking_streams_need_no_event_loop_and_match_the_pipeline(
    kr: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    data = os.urandom(3 * 4096 + 123)
    opts = api.Options(segment_size=4096, batch_bytes=2 * 4096)
    mid = os.urandom(32)
    monkeypatch.setattr(objects, "message_id_source", lambda n: mid)
    slow = anyio.run(lambda: api.encrypt_bytes(data, keyring=kr, options=opts))

    def no_loop(*_: object, **__: object) -> None:
        raise AssertionError("an event loop was started")

    monkeypatch.setattr(anyio, "run", no_loop)
    out = io.BytesIO()
    info = sync.encrypt(io.BytesIO(data), out, keyring=kr, options=opts)
    assert out.getvalue() == bytes(slow) and info.plaintext_len == len(data)
    back = io.BytesIO()
    assert sync.decrypt(io.BytesIO(out.getvalue()), back, keyring=kr).plaintext_len == len(data)
    assert back.getvalue() == data


@pytest.mark.parametrize("damage", ["flip", "cut-segment", "cut-short"])
def test_blocking_streams_release_only_authenticated_batches(kr: Keyring, damage: str) -> None:
    import io

    data = os.urandom(8 * 4096)
    opts = api.Options(segment_size=4096, batch_bytes=2 * 4096)
    blob = bytearray(sync.encrypt_bytes(data, keyring=kr, options=opts))
    if damage == "flip":
        blob[len(blob) - 3 * 4112] ^= 1  # inside the 6th segment
    elif damage == "cut-segment":
        del blob[len(blob) - 4112 :]  # a whole final segment gone
    else:
        del blob[-5:]
    back = io.BytesIO()
    with pytest.raises(InvalidObjectError):
        sync.decrypt(io.BytesIO(bytes(blob)), back, keyring=kr, options=opts)
    got = back.getvalue()
    assert got == data[: len(got)]  # a prefix of whole authenticated batches
    assert len(got) % (2 * 4096) == 0 and len(got) < len(data)
