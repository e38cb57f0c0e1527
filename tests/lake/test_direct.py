"""File-to-file sealing and opening on one thread (large local objects in lake jobs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from envelope import api, objects, sync
from envelope.errors import (
    AuthenticationError,
    ConfigurationError,
    SourceChangedError,
    TruncatedObjectError,
)
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.lake import direct

S = 4096
OPTS = api.Options(segment_size=S)
_kms = MemoryKms()
KR = Keyring(_kms, _kms.create_key())


def leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".envelope-tmp")]


@pytest.mark.parametrize("n", [0, 1, S - 1, S, S + 1, 3 * S, 3 * S + 5])
def test_round_trip_matches_the_engine(tmp_path: Path, n: int) -> None:
    data = os.urandom(n)
    (tmp_path / "src").write_bytes(data)
    prepared = sync.run(api.prepare_object, KR, options=OPTS, expected_bytes=n)
    written = direct.seal_file(
        prepared, str(tmp_path / "src"), str(tmp_path / "enc"), expected_size=n, durable=True
    )
    assert written == n
    ct = (tmp_path / "enc").read_bytes()
    assert sync.decrypt_bytes(ct, keyring=KR) == data  # the engine reads it
    header = objects.parse_object_header(memoryview(ct))
    keys = sync.run(api.open_object, header, keyring=KR)
    assert (
        direct.open_file(header, keys, str(tmp_path / "enc"), str(tmp_path / "back"), durable=False)
        == n
    )
    assert (tmp_path / "back").read_bytes() == data
    assert leftovers(tmp_path) == []


def test_damage_and_truncation_leave_no_output(tmp_path: Path) -> None:
    data = os.urandom(5 * S + 3)
    ct = bytes(sync.encrypt_bytes(data, keyring=KR, options=OPTS))
    header = objects.parse_object_header(memoryview(ct))
    keys = sync.run(api.open_object, header, keyring=KR)
    cases = {
        "flip": (bytes(ct[:-3]) + bytes([ct[-3] ^ 1]) + ct[-2:], AuthenticationError),
        "cut": (ct[: header.header_len + 2 * (S + 16)], TruncatedObjectError),
        "inside": (ct[: header.header_len + 2 * (S + 16) + 100], AuthenticationError),
    }
    for name, (blob, error) in cases.items():
        (tmp_path / name).write_bytes(blob)
        target = tmp_path / f"{name}.out"
        with pytest.raises(error):
            direct.open_file(header, keys, str(tmp_path / name), str(target), durable=False)
        assert not target.exists()
    assert leftovers(tmp_path) == []


def test_source_that_changed_size_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(os.urandom(2 * S))
    prepared = sync.run(api.prepare_object, KR, options=OPTS, expected_bytes=S)
    with pytest.raises(SourceChangedError, match="changed size"):
        direct.seal_file(
            prepared,
            str(tmp_path / "src"),
            str(tmp_path / "enc"),
            expected_size=S,
            durable=False,
        )
    assert not (tmp_path / "enc").exists() and leftovers(tmp_path) == []


def test_a_source_swapped_for_a_link_after_listing_is_refused(tmp_path: Path) -> None:
    """The lake lists without following links; a link swapped in afterwards is not opened."""
    from envelope.errors import UnsafePathError

    (tmp_path / "secret").write_bytes(b"outside the tree")
    (tmp_path / "src").symlink_to(tmp_path / "secret")
    prepared = sync.run(api.prepare_object, KR, options=OPTS, expected_bytes=16)
    with pytest.raises(UnsafePathError, match="link"):
        direct.seal_file(
            prepared, str(tmp_path / "src"), str(tmp_path / "enc"), expected_size=16, durable=False
        )
    assert not (tmp_path / "enc").exists() and leftovers(tmp_path) == []
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePathError, match="regular"):
        direct.seal_file(
            prepared, str(tmp_path / "fifo"), str(tmp_path / "enc"), expected_size=16, durable=False
        )


def test_large_objects_share_the_jobs_memory_budget() -> None:
    """A job's large objects together stay within engine.memory_budget (issue 8, #10)."""
    from envelope.lake.jobs import LakeOptions

    default = LakeOptions()
    assert default.large_slots == default.large_concurrency == 4
    assert default.large_engine.memory_budget == default.engine.memory_budget // 4
    huge = LakeOptions(engine=api.Options(segment_size=64 << 20, workers=2))
    assert huge.large_slots == 1  # two 64 MiB segments per object: one object at a time
    assert huge.large_engine.memory_budget == 256 << 20
    mid = LakeOptions(engine=api.Options(segment_size=32 << 20, workers=2))
    assert mid.large_slots == 3


def test_direct_refuses_a_segment_its_share_cannot_hold(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(os.urandom(3 * S))
    prepared = sync.run(api.prepare_object, KR, options=OPTS, expected_bytes=3 * S)
    with pytest.raises(ConfigurationError, match="budget"):
        direct.seal_file(
            prepared, str(tmp_path / "src"), str(tmp_path / "enc"), expected_size=3 * S,
            durable=False, memory_budget=S,
        )
    assert not (tmp_path / "enc").exists() and leftovers(tmp_path) == []


def test_a_multipart_upload_stays_within_s3s_10000_parts() -> None:
    """8 MiB parts throughout made any output over 78 GiB fail after uploading 10,000 parts
    (S3's limit; review). The part size doubles every 1,000 parts. Shown on 16-byte parts
    against a client that records what it is sent (S3 itself would refuse parts this small)."""
    import itertools

    import anyio

    from envelope.lake.s3 import MAX_PARTS, MultipartSink

    class Recorder:
        def __init__(self) -> None:
            self.parts: list[tuple[int, int]] = []
            self.completed: list[dict[str, object]] = []

        def create_multipart_upload(self, **kw: object) -> dict[str, str]:
            return {"UploadId": "u1"}

        def upload_part(self, *, PartNumber: int, Body: bytes, **kw: object) -> dict[str, str]:
            self.parts.append((PartNumber, len(Body)))
            return {"ETag": f"e{PartNumber}"}

        def complete_multipart_upload(self, **kw: object) -> None:
            self.completed.append(kw)

    client = Recorder()
    sink = MultipartSink(client, "bucket/key", part_size=16)
    total = 16 * MAX_PARTS * 20  # 200 times what 10,000 parts of the base size hold

    async def fill() -> None:
        chunk = memoryview(b"x" * 4096)
        for _ in range(total // 4096):
            await sink.write(chunk)
        await sink.write(chunk[: total % 4096])
        await sink.commit()

    anyio.run(fill)
    numbers = [n for n, _ in client.parts]
    sizes = [size for _, size in client.parts]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) <= MAX_PARTS
    assert sum(sizes) == total and sizes[:1000] == [16] * 1000 and sizes[1000] == 32
    body = sizes[:-1]  # (the last part may be any size)
    assert all(a <= b for a, b in itertools.pairwise(body))
    assert len(client.completed) == 1
