"""Bulk lake jobs on local disks and on a real S3-protocol server (moto), through pyarrow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from envelope import api, objects
from envelope.errors import ConfigurationError, KmsKeyError
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.base import WrappedKey
from envelope.kms.local import open_local
from envelope.kms.memory import MemoryKms
from envelope.lake import jobs
from envelope.lake.lock import LOCK_NAME
from envelope.lake.sinks import is_temporary

from .conftest import S3, make_tree, read_tree

pytestmark = pytest.mark.anyio

S = 64 << 10
ENGINE = api.Options(segment_size=S, workers=2, depth=3)
MIXED = [0, 1, 17, 4095, 65536, 65537, 200_000] * 3 + [(9 << 20) + 3]  # one streamed


def opts(**kw: object) -> jobs.LakeOptions:
    return jobs.LakeOptions(engine=ENGINE, **kw)  # type: ignore[arg-type]


@pytest.fixture
def kms() -> MemoryKms:
    return MemoryKms()


@pytest.fixture
def k1(kms: MemoryKms) -> Keyring:
    return Keyring(kms, kms.create_key("k1"), cache=CachePolicy())


@pytest.fixture
def k2(kms: MemoryKms) -> Keyring:
    return Keyring(kms, kms.create_key("k2"), cache=CachePolicy())


async def test_local_round_trip_resume_and_kms_calls(
    anyio_backend: str, tmp_path: Path, kms: MemoryKms, k1: Keyring
) -> None:
    src = tmp_path / "src"
    tree = make_tree(src, MIXED)
    r = await jobs.encrypt_prefix(str(src), str(tmp_path / "enc"), keyring=k1, options=opts())
    assert (r.objects, r.done, r.failed) == (len(tree), len(tree), 0)
    assert kms.calls["GenerateDataKey"] == 1  # one data key for the whole lake
    enc = read_tree(tmp_path / "enc")
    assert set(enc) == set(tree)
    for rel, ct in enc.items():
        h = objects.parse_object_header(memoryview(ct))
        assert h.object_context[jobs.PATH_CONTEXT_KEY] == rel

    again = await jobs.encrypt_prefix(str(src), str(tmp_path / "enc"), keyring=k1, options=opts())
    assert (again.skipped, again.done) == (len(tree), 0)
    assert read_tree(tmp_path / "enc") == enc  # nothing rewritten

    dry = await jobs.decrypt_prefix(
        str(tmp_path / "enc"), str(tmp_path / "back"), keyring=k1, options=opts(dry_run=True)
    )
    assert dry.planned == len(tree) and not (tmp_path / "back").exists()
    back = await jobs.decrypt_prefix(
        str(tmp_path / "enc"), str(tmp_path / "back"), keyring=k1, options=opts()
    )
    assert back.ok and back.done == len(tree)
    assert read_tree(tmp_path / "back") == tree
    assert kms.calls["Decrypt"] == 1  # the decrypt cache: one unwrap for every object


async def test_a_dry_run_plans_only_what_a_real_run_would_do(
    anyio_backend: str, tmp_path: Path, kms: MemoryKms, k1: Keyring, k2: Keyring
) -> None:
    """A dry run applies the same resume check as the run (objects already done count as
    skipped, not planned), lists the planned paths sorted, makes no data-key call and writes
    nothing; `resume=False` plans everything."""
    src = tmp_path / "src"
    tree = make_tree(src, [10, 20, 30])
    enc, back = tmp_path / "enc", tmp_path / "back"
    first = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())
    assert first.done == 3
    (src / "new").mkdir()
    (src / "new" / "z.bin").write_bytes(b"z" * 5)
    (src / "a.bin").write_bytes(b"a" * 5)
    calls = dict(kms.calls)
    before = read_tree(enc)
    dry = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts(dry_run=True))
    assert (dry.planned, dry.skipped, dry.done) == (2, 3, 0)
    assert dry.planned_paths == ["a.bin", "new/z.bin"]
    assert read_tree(enc) == before and dict(kms.calls) == calls
    everything = await jobs.encrypt_prefix(
        str(src), str(enc), keyring=k1, options=opts(dry_run=True, resume=False)
    )
    assert everything.planned == 5 and everything.skipped == 0
    assert everything.to_dict()["planned_paths"] == sorted([*tree, "a.bin", "new/z.bin"])

    second = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())
    assert (second.done, second.skipped) == (2, 3)
    dry = await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts(dry_run=True))
    assert dry.planned == 5 and not back.exists()
    await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts())
    (back / "a.bin").unlink()
    dry = await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts(dry_run=True))
    assert (dry.planned_paths, dry.skipped) == (["a.bin"], 4)

    moved = ["a.bin", "new/z.bin"]  # these two move to k2 first
    listed = jobs.list_objects(jobs.resolve(str(enc)))
    sub = await jobs.rewrap_prefix(
        str(enc), keyring=k1, to=k2, options=opts(), entries=[e for e in listed if e.rel in moved]
    )
    assert sub.done == 2
    before = read_tree(enc)
    dry = await jobs.rewrap_prefix(str(enc), keyring=k1, to=k2, options=opts(dry_run=True))
    assert dry.skipped == 2 and dry.planned_paths == sorted(set(tree))
    assert read_tree(enc) == before


async def test_a_context_pair_the_job_would_replace_is_refused(
    anyio_backend: str, tmp_path: Path, kms: MemoryKms, k1: Keyring
) -> None:
    """`envelope:path` is the job's own pair under path binding: a caller's value for it was
    silently replaced by each object's path. Now refused before anything is written; without
    path binding it is the caller's pair like any other."""
    src = tmp_path / "src"
    make_tree(src, [10, 20])
    evil = {jobs.PATH_CONTEXT_KEY: "elsewhere", "team": "a"}
    with pytest.raises(ConfigurationError, match="envelope:path is set by the job"):
        await jobs.encrypt_prefix(str(src), str(tmp_path / "enc"), keyring=k1,
                                  object_context=evil, options=opts())
    assert not (tmp_path / "enc").exists() and kms.calls["GenerateDataKey"] == 0
    r = await jobs.encrypt_prefix(str(src), str(tmp_path / "enc"), keyring=k1,
                                  object_context=evil, options=opts(bind_path=False))
    assert r.done == 2
    for ct in read_tree(tmp_path / "enc").values():
        assert objects.parse_object_header(memoryview(ct)).object_context == evil
    for job in (jobs.decrypt_prefix(str(tmp_path / "enc"), str(tmp_path / "back"), keyring=k1,
                                    object_context=evil, options=opts()),
                jobs.verify_prefix(str(tmp_path / "enc"), keyring=k1, object_context=evil,
                                   options=opts())):
        with pytest.raises(ConfigurationError, match="envelope:path is set by the job"):
            await job
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # backend-independent: run once
async def test_s3_encrypt_verify_rewrap_decrypt(
    anyio_backend: str, tmp_path: Path, s3: S3, kms: MemoryKms, k1: Keyring, k2: Keyring
) -> None:
    """A few hundred objects of mixed sizes, one above the multipart threshold, on S3."""
    src = tmp_path / "src"
    sizes = [0, 1, 100, 5000, 70_000, 150_000] * 40 + [(12 << 20) + 7]
    tree = make_tree(src, sizes)
    fs = s3.fs()
    enc_uri = s3.uri("lake/enc")
    r = await jobs.encrypt_prefix(str(src), enc_uri, keyring=k1, options=opts(concurrency=32))
    assert r.ok and r.done == len(tree), r.failures[:3]
    assert r.destination == enc_uri.replace("test:test@", "test:***@")  # no secret in reports
    listed = fs.get_file_info(pafs.FileSelector("lake/enc", recursive=True))
    names = [i.path for i in listed if i.type == pafs.FileType.File]
    assert len(names) == len(tree) and not any(is_temporary(n) for n in names)
    big = fs.get_file_info("lake/enc/" + list(tree)[-1])
    assert big.size > 12 << 20

    v = await jobs.verify_prefix(enc_uri, keyring=k1, options=opts(concurrency=32))
    assert v.ok and v.done == len(tree)

    def bodies() -> dict[str, bytes]:
        out = {}
        for rel in tree:
            with fs.open_input_stream(f"lake/enc/{rel}") as f:
                ct = f.read()
            out[rel] = ct[objects.parse_object_header(memoryview(ct)).header_len :]
        return out

    before = bodies()
    # attributes a bucket's policies and lifecycle key on, on one small and the large object:
    # a rewrap wrote new objects without them (review)
    client = s3.client()
    marked = ["lake/enc/" + list(tree)[1], "lake/enc/" + list(tree)[-1]]
    for key in marked:
        bucket, name = key.split("/", 1)
        client.copy_object(
            Bucket=bucket, Key=name, CopySource={"Bucket": bucket, "Key": name},
            MetadataDirective="REPLACE", ContentType="application/x-envelope",
            Metadata={"owner": "team-x"}, TaggingDirective="REPLACE", Tagging="pii=yes",
        )  # fmt: skip
    rw = await jobs.rewrap_prefix(enc_uri, keyring=k1, to=k2, options=opts(concurrency=32))
    assert rw.ok and rw.done == len(tree)
    assert bodies() == before  # bodies byte-identical: only headers changed
    for key in marked:
        bucket, name = key.split("/", 1)
        head = client.head_object(Bucket=bucket, Key=name)
        assert head["ContentType"] == "application/x-envelope", key
        assert head["Metadata"] == {"owner": "team-x"}
        tags = client.get_object_tagging(Bucket=bucket, Key=name)["TagSet"]
        assert tags == [{"Key": "pii", "Value": "yes"}]
    assert kms.calls["Encrypt"] == 1  # one wrap (32 at once): every object shares a data key

    # every object now opens under k2 alone (a keyring that cannot reach k1)
    only_k2 = MemoryKms()
    only_k2._keys["k2"] = kms._keys["k2"]
    kr_new = Keyring(only_k2, "k2", cache=CachePolicy())
    d = await jobs.decrypt_prefix(
        enc_uri, str(tmp_path / "back"), keyring=kr_new, options=opts(concurrency=32)
    )
    assert d.ok and d.done == len(tree), d.failures[:3]
    assert read_tree(tmp_path / "back") == tree


async def test_tampering_is_reported_per_object(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src = tmp_path / "src"
    tree = make_tree(src, [3000] * 12 + [300_000])
    enc = tmp_path / "enc"
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())).ok
    rels = sorted(tree)
    a, b, cut, bad = rels[1], rels[2], rels[3], rels[-1]
    pa, pb = (enc / a).read_bytes(), (enc / b).read_bytes()
    (enc / a).write_bytes(pb)  # swapped pair
    (enc / b).write_bytes(pa)
    (enc / cut).write_bytes((enc / cut).read_bytes()[:-100])  # truncated
    damaged = bytearray((enc / bad).read_bytes())
    damaged[len(damaged) // 2] ^= 0x20  # corrupted
    (enc / bad).write_bytes(damaged)

    report = await jobs.verify_prefix(str(enc), keyring=k1, options=opts())
    failed = {f.path: f.error_type for f in report.failures}
    assert failed == {
        a: "ContextMismatchError",
        b: "ContextMismatchError",
        cut: "AuthenticationError",
        bad: "AuthenticationError",
    }
    assert report.done == len(tree) - 4 and not report.ok
    # the same objects fail to decrypt, and nothing is written for them
    d = await jobs.decrypt_prefix(str(enc), str(tmp_path / "back"), keyring=k1, options=opts())
    assert {f.path for f in d.failures} == set(failed)
    assert all(not (tmp_path / "back" / rel).exists() for rel in failed)
    # the caller may waive the path binding: the swapped pair then decrypts
    loose = await jobs.verify_prefix(str(enc), keyring=k1, options=opts(bind_path=False))
    assert {f.path for f in loose.failures} == {cut, bad}


async def test_decrypt_verify_and_rewrap_require_the_expected_contexts(
    anyio_backend: str, tmp_path: Path, k1: Keyring, k2: Keyring
) -> None:
    """`kms_context` and `object_context` given to decrypt, verify and rewrap are pairs each
    object must hold (the CLI's --kms-context and --expect-context): an object without them
    fails, is not written, not counted as verified and not re-wrapped."""
    src, enc = tmp_path / "src", tmp_path / "enc"
    tree = make_tree(src, [10, 3000, 300_000])  # small, and streamed
    r = await jobs.encrypt_prefix(
        str(src), str(enc), keyring=k1, kms_context={"dataset": "sales"},
        object_context={"team": "a"}, options=opts(),
    )
    assert r.ok
    sealed = read_tree(enc)
    wrong = [({"dataset": "other"}, None), (None, {"team": "b"})]
    for kctx, octx in wrong:
        d = await jobs.decrypt_prefix(
            str(enc), str(tmp_path / "back"), keyring=k1, kms_context=kctx,
            object_context=octx, options=opts(),
        )
        assert d.done == 0 and {f.error_type for f in d.failures} == {"ContextMismatchError"}
        assert not any((tmp_path / "back" / rel).exists() for rel in tree)
        v = await jobs.verify_prefix(
            str(enc), keyring=k1, kms_context=kctx, object_context=octx, options=opts()
        )
        assert v.done == 0 and len(v.failures) == len(tree)
        w = await jobs.rewrap_prefix(
            str(enc), keyring=k1, to=k2, kms_context=kctx, object_context=octx, options=opts()
        )
        assert w.done == 0 and len(w.failures) == len(tree)
        assert read_tree(enc) == sealed  # nothing re-wrapped
    right = {"kms_context": {"dataset": "sales"}, "object_context": {"team": "a"}}
    assert (await jobs.verify_prefix(str(enc), keyring=k1, options=opts(), **right)).ok
    assert (await jobs.rewrap_prefix(str(enc), keyring=k1, to=k2, options=opts(), **right)).ok
    # objects already under the new key are left as they are, but only if they hold the pairs:
    # a re-run with the wrong ones reports them as failed, not as done
    moved = read_tree(enc)
    for kctx, octx in wrong:
        w = await jobs.rewrap_prefix(
            str(enc), keyring=k1, to=k2, kms_context=kctx, object_context=octx, options=opts()
        )
        assert (w.done, w.skipped) == (0, 0)
        assert {f.error_type for f in w.failures} == {"ContextMismatchError"}
        assert len(w.failures) == len(tree)
        planned = await jobs.rewrap_prefix(
            str(enc), keyring=k1, to=k2, kms_context=kctx, object_context=octx,
            options=opts(dry_run=True),
        )
        assert planned.skipped == 0 and len(planned.failures) == len(tree)
    again = await jobs.rewrap_prefix(str(enc), keyring=k1, to=k2, options=opts(), **right)
    assert again.ok and again.skipped == len(tree)
    assert read_tree(enc) == moved
    d = await jobs.decrypt_prefix(
        str(enc), str(tmp_path / "back"), keyring=k2, options=opts(), **right
    )
    assert d.ok and read_tree(tmp_path / "back") == tree


async def test_a_rerun_with_other_contexts_encrypts_again(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """Resume skips an output only if its header holds the contexts this run would write: a
    re-run with another --context or --kms-context encrypts again (it skipped everything and
    reported success, leaving the objects under the old pairs)."""
    src, enc = tmp_path / "src", tmp_path / "enc"
    tree = make_tree(src, [10, 3000])
    first = {"kms_context": {"dataset": "sales"}, "object_context": {"team": "a"}}
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts(), **first)).ok
    same = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts(), **first)
    assert same.skipped == len(tree)
    for other in (
        {"kms_context": {"dataset": "sales"}, "object_context": {"team": "b"}},
        {"kms_context": {"dataset": "hr"}, "object_context": {"team": "b"}},
        {"kms_context": {"dataset": "hr"}, "object_context": {"team": "b", "x": "1"}},
    ):
        r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts(), **other)
        assert (r.done, r.skipped) == (len(tree), 0), other
        v = await jobs.verify_prefix(str(enc), keyring=k1, options=opts(), **other)
        assert v.ok and v.done == len(tree)


async def test_a_rerun_under_another_key_encrypts_again(
    anyio_backend: str, tmp_path: Path, kms: MemoryKms, k1: Keyring, k2: Keyring
) -> None:
    """Resume skips an output only if it is under this run's key: a re-run under another key
    encrypted nothing and reported every object as done, leaving the destination under the
    old key (retiring which would then break it); a re-run under the same key skips all."""
    src, enc = tmp_path / "src", tmp_path / "enc"
    tree = make_tree(src, [10, 3000, 70_000])
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())).ok
    r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k2, options=opts())
    assert (r.done, r.skipped) == (len(tree), 0)
    for ct in read_tree(enc).values():
        (w,) = objects.parse_object_header(memoryview(ct)).wrapped_keys
        assert w.key_id == k2.key_id
    dry = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts(dry_run=True))
    assert (dry.planned, dry.skipped) == (len(tree), 0)
    again = await jobs.encrypt_prefix(str(src), str(enc), keyring=k2, options=opts())
    assert (again.done, again.skipped) == (0, len(tree))
    back = await jobs.decrypt_prefix(str(enc), str(tmp_path / "back"), keyring=k2, options=opts())
    assert back.ok and read_tree(tmp_path / "back") == tree


async def test_resume_learns_the_key_an_alias_names(anyio_backend: str, tmp_path: Path) -> None:
    """An alias names its key only through the KMS: a re-run through the key's own id skips
    the outputs written through the alias, and one after the alias moved to another key
    encrypts again."""
    b = open_local(tmp_path / "home")
    try:
        first = b.service.create_key()["KeyMetadata"]["KeyId"]
        b.service.create_alias(alias_name="alias/lake", target_key_id=first)
        src, enc = tmp_path / "src", tmp_path / "enc"
        tree = make_tree(src, [10, 3000])

        async def run(key_id: str) -> jobs.JobReport:
            # (not closed: keyrings over one backend close it together; closed below)
            kr = Keyring(b, key_id, cache=CachePolicy())
            return await jobs.encrypt_prefix(str(src), str(enc), keyring=kr, options=opts())

        assert (await run("alias/lake")).done == len(tree)
        by_id = await run(first)
        assert (by_id.done, by_id.skipped) == (0, len(tree))
        second = b.service.create_key()["KeyMetadata"]["KeyId"]
        b.service.update_alias(alias_name="alias/lake", target_key_id=second)
        moved = await run("alias/lake")
        assert (moved.done, moved.skipped) == (len(tree), 0)
        for ct in read_tree(enc).values():
            (w,) = objects.parse_object_header(memoryview(ct)).wrapped_keys
            assert second in w.key_id
    finally:
        b.service.close()


async def test_resume_with_the_kms_down(
    anyio_backend: str, tmp_path: Path, kms: MemoryKms, k1: Keyring
) -> None:
    """A finished job is checked again without the KMS when the key argument names the key
    its headers name (a key file, a key ARN); when it must be learned (an alias) and the KMS
    is down, the learning is tried once, not once per object with its retries (review: a
    re-run failed every object, each after a full retry cycle, one at a time)."""
    from envelope.kms.faults import FaultyKms
    from envelope.kms.retry import RetryPolicy

    src, enc = tmp_path / "src", tmp_path / "enc"
    tree = make_tree(src, [10, 3000, 5000, 70])
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())).ok
    down = FaultyKms(kms, transient=1.0)
    assert k1.key_id is not None
    same = Keyring(down, k1.key_id, cache=CachePolicy())
    again = await jobs.encrypt_prefix(str(src), str(enc), keyring=same, options=opts())
    assert (again.skipped, again.failed) == (len(tree), 0) and sum(down.calls.values()) == 0

    b = open_local(tmp_path / "home")
    try:
        kid = b.service.create_key()["KeyMetadata"]["KeyId"]
        b.service.create_alias(alias_name="alias/lake", target_key_id=kid)
        by_alias = Keyring(b, "alias/lake", cache=CachePolicy())
        enc2 = tmp_path / "enc2"
        assert (await jobs.encrypt_prefix(str(src), str(enc2), keyring=by_alias, options=opts())).ok
        unreachable = FaultyKms(b, transient=1.0)
        policy = RetryPolicy(max_attempts=3, transient_base=0.001, throttle_base=0.001)
        retrying = Keyring(unreachable, "alias/lake", cache=CachePolicy(), retry=policy)
        r = await jobs.encrypt_prefix(
            str(src), str(enc2), keyring=retrying, options=opts(concurrency=1)
        )
        assert r.failed == len(tree) and r.skipped == 0
        assert unreachable.calls["GenerateDataKey"] == 3  # one learning, with its retries
    finally:
        b.service.close()


async def test_fail_fast_stops_early(anyio_backend: str, tmp_path: Path, k1: Keyring) -> None:
    src = tmp_path / "src"
    make_tree(src, [1000] * 30)
    enc = tmp_path / "enc"
    await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())
    for p in enc.rglob("*.bin"):
        p.write_bytes(b"junk")
    r = await jobs.verify_prefix(str(enc), keyring=k1, options=opts(fail_fast=True, concurrency=1))
    assert r.failed >= 1 and r.objects < 30


CHILD = r"""
import sys, anyio
from envelope import api
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.local import open_local
from envelope.lake import jobs
home, src, dst = sys.argv[1:4]
b = open_local(home)
kr = Keyring(b, "alias/lake", cache=CachePolicy())
opts = jobs.LakeOptions(concurrency=2, large_concurrency=1, engine=api.Options(segment_size=65536))
import functools
job = functools.partial(jobs.encrypt_prefix, src, dst, keyring=kr, options=opts)
print(anyio.run(job).done)
"""


def test_resume_after_sigkill(tmp_path: Path) -> None:
    """Kill the job with SIGKILL halfway; the re-run finishes with every object present once
    and correct, and no temporary or partial object left."""
    import signal
    import time

    home = tmp_path / "home"
    b = open_local(home)
    kid = b.service.create_key()["KeyMetadata"]["KeyId"]
    b.service.create_alias(alias_name="alias/lake", target_key_id=kid)
    b.service.close()
    src, dst = tmp_path / "src", tmp_path / "dst"
    tree = make_tree(src, [300_000] * 120 + [(24 << 20) + 1] * 2)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(home), str(src), str(dst)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in dst.rglob("*") if p.is_file() and not is_temporary(p.name)]
        if len(done) >= 40:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    # The killed job's lock stays behind (its holder is provably dead: the re-run takes it
    # over); it is not an output.
    assert (dst / LOCK_NAME).is_file()
    first = [
        p
        for p in dst.rglob("*")
        if p.is_file() and not is_temporary(p.name) and p != dst / LOCK_NAME
    ]
    assert 0 < len(first) < len(tree)

    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(home), str(src), str(dst)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(r.stdout.strip()) == len(tree) - len(first)  # only the rest was done
    files = [p for p in dst.rglob("*") if p.is_file()]
    assert not [p for p in files if is_temporary(p.name)]
    assert len(files) == len(tree)

    import anyio

    b = open_local(home)
    kr = Keyring(decrypt_with=[b], cache=CachePolicy())
    back = anyio.run(
        lambda: jobs.decrypt_prefix(str(dst), str(tmp_path / "back"), keyring=kr, options=opts())
    )
    assert back.ok and read_tree(tmp_path / "back") == tree
    b.service.close()


def test_cli_lake_commands_and_json(tmp_path: Path) -> None:
    """`envelope lake encrypt/verify/rewrap/decrypt` give BACK identical to SRC; JSON out;
    the old key can be disabled after the rewrap without breaking reads."""
    env = {**os.environ, "ENVELOPE_HOME": str(tmp_path / "home")}

    def envelope(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    k1 = json.loads(envelope("keys", "create", "--json").stdout)["KeyMetadata"]["KeyId"]
    k2 = json.loads(envelope("keys", "create", "--json").stdout)["KeyMetadata"]["KeyId"]
    src, dst, back = tmp_path / "src", tmp_path / "dst", tmp_path / "back"
    tree = make_tree(src, [0, 10, 5000, 100_000] * 5)
    r = envelope(
        "lake",
        "encrypt",
        str(src),
        str(dst),
        "--key",
        k1,
        "--json",
        "--report",
        str(tmp_path / "report.json"),
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["done"] == len(tree) and summary["ok"] is True
    assert json.loads((tmp_path / "report.json").read_text())["done"] == len(tree)
    assert envelope("lake", "verify", str(dst), "--json").returncode == 0
    r = envelope("lake", "rewrap", str(dst), "--to-key", k2, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["done"] == len(tree), r.stderr
    assert envelope("keys", "disable", k1).returncode == 0
    r = envelope("lake", "decrypt", str(dst), str(back), "--json")
    assert r.returncode == 0, r.stderr
    assert subprocess.run(["diff", "-r", str(src), str(back)]).returncode == 0
    # a damaged object: exit 1, named in the summary
    victim = next(dst.rglob("*.bin"))
    victim.write_bytes(victim.read_bytes()[:-1])
    r = envelope("lake", "verify", str(dst), "--json")
    assert r.returncode == 1
    failures = json.loads(r.stdout)["failures"]
    assert [f["path"] for f in failures] == [str(victim.relative_to(dst))]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_s3_resume_redoes_a_source_changed_in_its_outputs_second(
    anyio_backend: str, tmp_path: Path, s3: S3, k1: Keyring
) -> None:
    """S3 keeps whole seconds: a source rewritten (same size) in the same second as its
    output, after it, must be encrypted again, never skipped as done; and decrypting a
    ciphertext replaced in its plaintext output's second likewise."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"version-1")
    uri = s3.uri("lake/same-second")
    assert (await jobs.encrypt_prefix(str(src), uri, keyring=k1, options=opts())).done == 1
    out = s3.fs().get_file_info("lake/same-second/a.bin")
    second = out.mtime_ns - out.mtime_ns % 1_000_000_000
    (src / "a.bin").write_bytes(b"version-2")
    os.utime(src / "a.bin", ns=(second + 900_000_000, second + 900_000_000))
    again = await jobs.encrypt_prefix(str(src), uri, keyring=k1, options=opts())
    assert (again.done, again.skipped) == (1, 0)
    back = await jobs.decrypt_prefix(uri, str(tmp_path / "back"), keyring=k1, options=opts())
    assert back.ok and (tmp_path / "back" / "a.bin").read_bytes() == b"version-2"
    # a plaintext output dated (to the nanosecond) in its ciphertext's second is not trusted
    out = s3.fs().get_file_info("lake/same-second/a.bin")
    second = out.mtime_ns - out.mtime_ns % 1_000_000_000
    os.utime(tmp_path / "back" / "a.bin", ns=(second + 999_000_000, second + 999_000_000))
    redo = await jobs.decrypt_prefix(uri, str(tmp_path / "back"), keyring=k1, options=opts())
    assert (redo.done, redo.skipped) == (1, 0)
    # a second later, it is
    later = second + 1_500_000_000
    os.utime(tmp_path / "back" / "a.bin", ns=(later, later))
    done = await jobs.decrypt_prefix(uri, str(tmp_path / "back"), keyring=k1, options=opts())
    assert (done.done, done.skipped) == (0, 1)


async def test_s3_failed_large_upload_is_aborted_and_leaves_nothing(
    anyio_backend: str, tmp_path: Path, s3: S3, k1: Keyring
) -> None:
    """A stream that fails after several parts were uploaded: the multipart upload is
    aborted, no object (final or temporary) appears, no upload is left open."""
    from envelope.lake.s3 import PART_SIZE, client_for
    from envelope.lake.sinks import atomic_sink

    fs = s3.fs()
    assert client_for(fs) is not None

    async def failing():  # type: ignore[no-untyped-def]
        for _ in range(3):
            yield os.urandom(PART_SIZE)
        raise OSError(5, "source disk failed (injected)")

    with pytest.raises(OSError, match="injected"):
        await api.encrypt(failing(), atomic_sink(fs, "lake/big.env"), keyring=k1, options=ENGINE)
    assert fs.get_file_info(pafs.FileSelector("lake", recursive=True)) == []
    raw = s3.client()
    assert raw.list_multipart_uploads(Bucket="lake").get("Uploads", []) == []

    # and the same sink succeeds whole, straight to the final key
    data = os.urandom(3 * PART_SIZE + 5)
    await api.encrypt(data, atomic_sink(fs, "lake/big.env"), keyring=k1, options=ENGINE)
    with fs.open_input_stream("lake/big.env") as f:
        assert await api.decrypt_bytes(f.read(), keyring=k1) == data


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_filesystem_with_folders_gets_them_made(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """Any pyarrow filesystem works (lake.md): one whose folders must exist before a file is
    written in them (a SubTreeFileSystem over a local disk) gets them made, for the lock and
    for nested outputs alike, and the job resumes and decrypts there."""
    src = tmp_path / "src"
    tree = make_tree(src, [0, 10, 70_000, 300_000] * 3)
    (tmp_path / "sub").mkdir()
    fs = pafs.SubTreeFileSystem(str(tmp_path / "sub"), pafs.LocalFileSystem())
    r = await jobs.encrypt_prefix(
        str(src), "deep/enc", keyring=k1, destination_fs=fs, options=opts()
    )
    assert r.ok and r.done == len(tree), r.failures[:3]
    again = await jobs.encrypt_prefix(
        str(src), "deep/enc", keyring=k1, destination_fs=fs, options=opts()
    )
    assert again.skipped == len(tree)
    back = await jobs.decrypt_prefix(
        "deep/enc", str(tmp_path / "back"), keyring=k1, source_fs=fs, options=opts()
    )
    assert back.ok and read_tree(tmp_path / "back") == tree


async def test_pyarrow_only_fallback_sink_is_atomic(
    anyio_backend: str, s3: S3, k1: Keyring
) -> None:
    """Where botocore cannot stand in for the filesystem: temporary key, then a move."""
    from envelope.lake.sinks import ArrowAtomicSink, is_temporary

    fs = s3.fs()

    async def failing():  # type: ignore[no-untyped-def]
        yield os.urandom(100_000)
        raise OSError(5, "injected")

    with pytest.raises(OSError, match="injected"):
        await api.encrypt(failing(), ArrowAtomicSink(fs, "lake/x.env"), keyring=k1, options=ENGINE)
    assert fs.get_file_info(pafs.FileSelector("lake", recursive=True)) == []
    await api.encrypt(b"whole", ArrowAtomicSink(fs, "lake/x.env"), keyring=k1, options=ENGINE)
    names = [i.path for i in fs.get_file_info(pafs.FileSelector("lake", recursive=True))]
    assert names == ["lake/x.env"] and not any(is_temporary(n) for n in names)


def test_sigterm_with_sigint_ignored_aborts_every_s3_upload_and_releases_the_lock(
    tmp_path: Path, s3: S3
) -> None:
    """A background job of a non-interactive shell has SIGINT ignored, so asyncio's runner
    installs no handler of its own; SIGTERM must still cancel the job cleanly: every
    multipart upload in flight aborted, the lock released, exit 143."""
    import signal
    import time

    from envelope.kms.filekey import generate_key_file

    key = tmp_path / "k.key"
    generate_key_file(str(key))
    src = tmp_path / "src"
    make_tree(src, [40 << 20] * 4)  # several parts each: uploads are in flight
    uri = s3.uri("lake/bg")
    raw = s3.client()
    env = {**os.environ, "ENVELOPE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "envelope.cli.main", "lake", "encrypt", str(src), uri,
         "--key-file", str(key), "--no-progress"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if raw.list_multipart_uploads(Bucket="lake").get("Uploads"):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert raw.list_multipart_uploads(Bucket="lake").get("Uploads", []) == []
    keys = [o["Key"] for o in raw.list_objects_v2(Bucket="lake").get("Contents", [])]
    assert not any(k.endswith(LOCK_NAME) for k in keys), keys


def test_the_progress_display_shows_bytes_per_second_not_objects() -> None:
    """The bar counts objects; its speed column is the bytes of the objects done per second
    (rich's transfer-speed column would have shown objects per second labelled bytes/s)."""
    from envelope.cli.lake import _RichProgress

    p = _RichProgress()
    p.start("encrypt", 3, 30_000_000)
    try:
        for rel in ("a", "b"):
            p.advance(jobs.ObjectResult(rel, "done", 10_000_000))
        p.advance(jobs.ObjectResult("c", "failed", 0, "AuthenticationError", "bad tag"))
        (task,) = p._progress.tasks
        assert task.completed == 3 and task.fields["failed"] == 1
        speed = task.fields["speed"]
        assert speed.endswith(" MB/s") and float(speed.split()[0]) > 1000  # 20 MB at once
    finally:
        p.stop()


async def test_a_rerun_aborts_the_multipart_uploads_a_killed_job_left(
    anyio_backend: str, tmp_path: Path, s3: S3, k1: Keyring
) -> None:
    """A job killed mid-upload (SIGKILL: nothing could abort) leaves multipart uploads that
    no listing shows and S3 bills. The next job on that prefix, holding its lock, aborts
    them, says so in a note, and leaves another job's destination (its own lock) alone."""
    raw = s3.client()
    mine = raw.create_multipart_upload(Bucket="lake", Key="dst/part=1/x.bin")["UploadId"]
    raw.upload_part(Bucket="lake", Key="dst/part=1/x.bin", UploadId=mine, PartNumber=1,
                    Body=b"p" * (5 << 20))  # fmt: skip
    raw.put_object(Bucket="lake", Key="dst/other/.envelope-lock", Body=b"{}")
    theirs = raw.create_multipart_upload(Bucket="lake", Key="dst/other/y.bin")["UploadId"]
    outside = raw.create_multipart_upload(Bucket="lake", Key="elsewhere/z.bin")["UploadId"]
    src = tmp_path / "src"
    make_tree(src, [10, 20])
    r = await jobs.encrypt_prefix(str(src), s3.uri("lake/dst"), keyring=k1, options=opts())
    assert r.ok and any("aborted 1 unfinished multipart upload" in n for n in r.notes), r.notes
    left = {u["UploadId"] for u in raw.list_multipart_uploads(Bucket="lake").get("Uploads", [])}
    assert left == {theirs, outside}


async def test_every_route_of_a_lake_job_reports_its_objects_and_bytes(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """`--metrics-port` (an observer) counts every object and its plaintext bytes, whichever
    route it took: small in memory, file to file, or streamed (only the streamed one did)."""
    from prometheus_client import CollectorRegistry

    from envelope.prometheus import PrometheusObserver

    registry = CollectorRegistry()
    obs = PrometheusObserver(registry)
    src, enc = tmp_path / "src", tmp_path / "enc"
    sizes = [10, 3000, 70_000, 300_000, (9 << 20) + 3]
    tree = make_tree(src, sizes)

    def count(direction: str) -> tuple[float, float]:
        objs = registry.get_sample_value(
            "envelope_objects_total", {"direction": direction, "outcome": "ok"}
        )
        got = registry.get_sample_value("envelope_bytes_total", {"direction": direction})
        return objs or 0.0, got or 0.0

    r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts(), observer=obs)
    assert r.ok and count("encrypt") == (len(tree), sum(sizes))
    d = await jobs.decrypt_prefix(
        str(enc), str(tmp_path / "back"), keyring=k1, options=opts(), observer=obs
    )
    assert d.ok and count("decrypt") == (len(tree), sum(sizes))
    v = await jobs.verify_prefix(str(enc), keyring=k1, options=opts(), observer=obs)
    assert v.ok and count("decrypt") == (2 * len(tree), 2 * sum(sizes))


def test_an_unreachable_object_store_is_an_io_error_not_a_traceback(tmp_path: Path) -> None:
    from envelope.kms.filekey import generate_key_file

    key = tmp_path / "k.key"
    generate_key_file(str(key))
    src = tmp_path / "src"
    make_tree(src, [10])
    uri = "s3://a:b@lake/x?endpoint_override=127.0.0.1%3A1&scheme=http&region=us-east-1"
    r = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "lake", "encrypt", str(src), uri,
         "--key-file", str(key), "--no-progress"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "ENVELOPE_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert r.returncode == 5 and "Traceback" not in r.stderr, r.stderr
    assert "I/O error" in r.stderr and "a:b@" not in r.stderr


class _ContextBound(MemoryKms):
    """A KMS whose key policy requires the pair dataset=sales on every wrap (AWS practice)."""

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        if context.get("dataset") != "sales":
            raise KmsKeyError("AccessDeniedException: the key policy requires dataset=sales")
        return await super().encrypt_data_key(key_id, plaintext, context=context)


async def test_rewrap_to_a_key_that_requires_the_objects_kms_context(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """A rewrap wraps only with each object's own KMS context: no call made with any other
    (a key policy conditioned on the encryption context refused a probe before any object,
    and the whole job), and one wrap per data key however many objects share it at once."""
    src, enc = tmp_path / "src", tmp_path / "enc"
    tree = make_tree(src, [10, 3000, 50, 70, 90, 110, 130, 150])
    ctx = {"dataset": "sales"}
    assert (
        await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, kms_context=ctx, options=opts())
    ).ok
    strict = _ContextBound()
    to = Keyring(strict, strict.create_key("bound"), cache=CachePolicy())
    w = await jobs.rewrap_prefix(
        str(enc), keyring=k1, to=to, kms_context=ctx, options=opts(concurrency=8)
    )
    assert w.ok and w.done == len(tree), w.failures[:2]
    assert strict.calls["Encrypt"] == 1
    # a re-run: everything is under the new key already; one wrap learns that, none is written
    again = await jobs.rewrap_prefix(
        str(enc), keyring=k1, to=to, kms_context=ctx, options=opts(concurrency=8)
    )
    assert again.ok and again.skipped == len(tree) and again.done == 0
    d = await jobs.decrypt_prefix(
        str(enc), str(tmp_path / "back"), keyring=to, kms_context=ctx, options=opts()
    )
    assert d.ok and read_tree(tmp_path / "back") == tree


class _Credentials:
    """One set of credentials on a shared KMS that may use only some of its keys (as AWS KMS:
    a backend claims every wrapped key of its provider; the key policy decides)."""

    def __init__(self, kms: MemoryKms, allowed: set[str]) -> None:
        self.inner, self.allowed, self.provider_id = kms, allowed, kms.provider_id

    def can_unwrap(self, w: WrappedKey) -> bool:
        return w.provider_id == self.provider_id

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> Any:
        return await self.inner.generate_data_key(key_id, context=context)

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        if key_id not in self.allowed:
            raise KmsKeyError(f"AccessDeniedException: kms:Encrypt on {key_id}")
        return await self.inner.encrypt_data_key(key_id, plaintext, context=context)

    async def decrypt_data_key(self, w: WrappedKey, *, context: Mapping[str, str]) -> bytearray:
        if w.key_id not in self.allowed:
            raise KmsKeyError(f"AccessDeniedException: kms:Decrypt on {w.key_id}")
        return await self.inner.decrypt_data_key(w, context=context)

    async def aclose(self) -> None:
        return None


async def test_a_rewrap_rerun_skips_objects_the_source_credentials_cannot_read(
    anyio_backend: str, tmp_path: Path
) -> None:
    """A rotation's usual credentials: the source keyring may decrypt under the old key only.
    A re-run (and a dry re-run) finds every object already under the new key and skips it;
    it learns what the new key is with one throwaway wrap under `to`, never by reading an
    object with credentials that cannot."""
    kms = MemoryKms()
    old, new = kms.create_key("old"), kms.create_key("new")
    source = Keyring(_Credentials(kms, {old}), old, cache=CachePolicy())  # type: ignore[arg-type]
    to = Keyring(_Credentials(kms, {new}), new, cache=CachePolicy())  # type: ignore[arg-type]
    src, enc = tmp_path / "src", tmp_path / "enc"
    tree = make_tree(src, [10, 20, 30, 40, 50])
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=source, options=opts())).ok
    first = await jobs.rewrap_prefix(str(enc), keyring=source, to=to, options=opts(concurrency=4))
    assert first.ok and first.done == len(tree)
    moved = read_tree(enc)
    for dry in (False, True):
        again = await jobs.rewrap_prefix(
            str(enc), keyring=source, to=to, options=opts(concurrency=4, dry_run=dry)
        )
        assert again.ok and again.skipped == len(tree), (dry, again.failures[:2])
    assert read_tree(enc) == moved
    # without resume nothing is learned: every object is re-wrapped with the source keyring,
    # and each one fails alike (it cannot read them), none is rewritten
    forced = await jobs.rewrap_prefix(
        str(enc), keyring=source, to=to, options=opts(concurrency=4, resume=False)
    )
    assert forced.done == 0 and len(forced.failures) == len(tree)
    assert read_tree(enc) == moved


def test_an_s3_endpoint_that_names_its_scheme(s3: S3) -> None:
    """`AWS_ENDPOINT_URL_S3=http://host:port` (or an `endpoint_override` with its scheme),
    which pyarrow takes, became the client URL `https://http://host...`: every lake job on
    such an endpoint failed (review)."""
    from envelope.lake.s3 import client_for, put_whole

    fs = pafs.S3FileSystem(
        access_key="test",
        secret_key="test",
        endpoint_override=f"http://{s3.endpoint}",
        region="us-east-1",
    )
    client = client_for(fs)
    assert client is not None and client.meta.endpoint_url == f"http://{s3.endpoint}"
    put_whole(client, "lake/whole.env", b"sealed bytes")
    with fs.open_input_stream("lake/whole.env") as f:
        assert f.read() == b"sealed bytes"


async def test_files_named_like_temporaries_are_data_unless_named_as_ours(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """Anything starting with '.' and ending in '.envelope-tmp' was taken for a temporary: a
    source file so named was passed over without a word (and lost when the source was
    deleted after "all done"), and a destination object so named was deleted. Only the
    exact form of `temporary_name` is ours now, and a source file of that form is listed
    among the skipped paths (review)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "n").write_bytes(b"n")
    (src / ".q.report.envelope-tmp").write_bytes(b"user data")
    (src / ".f.0123456789ab.envelope-tmp").write_bytes(b"left by a run")
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / ".mine.envelope-tmp").write_bytes(b"a user's object in the destination")
    r = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())
    assert (r.objects, r.done, r.failed) == (2, 2, 0)
    assert [s.path for s in r.skipped_paths] == [".f.0123456789ab.envelope-tmp"]
    assert (enc / ".mine.envelope-tmp").read_bytes() == b"a user's object in the destination"
    assert (enc / ".q.report.envelope-tmp").exists() and r.removed_temporaries == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_resume_redoes_a_source_copied_in_with_an_old_modification_time(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """`cp -p`, `rsync -a`, `tar x` and a file written then renamed in keep an older
    modification time than the output already there: a resumed job compared modification
    times only, called it done, and the lake kept the old version (review). Its status-change
    time is when it changed here."""
    src, enc, back = tmp_path / "src", tmp_path / "enc", tmp_path / "back"
    src.mkdir()
    (src / "a.txt").write_bytes(b"version-1 AAAA")
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())).done == 1
    update = tmp_path / "update.txt"
    update.write_bytes(b"version-2 BBBB")  # same size
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(update, ns=(hour_ago, hour_ago))
    shutil.copy2(update, src / "a.txt")  # cp -p: the new bytes, the old time
    assert (src / "a.txt").stat().st_mtime_ns < (enc / "a.txt").stat().st_mtime_ns
    again = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())
    assert (again.done, again.skipped) == (1, 0)
    assert (await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts())).ok
    assert (back / "a.txt").read_bytes() == b"version-2 BBBB"
    # through a sub-tree filesystem over the same disk too (pyarrow's listing has no ctime;
    # diff review)
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    update.write_bytes(b"version-3 CCCC")
    os.utime(update, ns=(hour_ago, hour_ago))
    shutil.copy2(update, src / "a.txt")
    third = await jobs.encrypt_prefix("src", str(enc), keyring=k1, source_fs=fs, options=opts())
    assert (third.done, third.skipped) == (1, 0)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_resume_redoes_a_source_whose_time_lay_in_the_future(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """A source unpacked with a modification time ahead of the clock (`tar x`, `rsync -a`
    from a host whose clock runs ahead) stamped its output with that future time; an edit
    today has an earlier change time, so the resume, comparing later-or-equal, kept the
    first output for good (review). The output is current only at its source's stamp."""
    src, enc, back = tmp_path / "src", tmp_path / "enc", tmp_path / "back"
    src.mkdir()
    (src / "a.txt").write_bytes(b"balance=100")
    tomorrow = time.time_ns() + 86400 * 10**9
    os.utime(src / "a.txt", ns=(tomorrow, tomorrow))
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())).done == 1
    again = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())
    assert (again.done, again.skipped) == (0, 1)  # unchanged: still done
    (src / "a.txt").write_bytes(b"balance=999")  # same size, today
    third = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())
    assert (third.done, third.skipped) == (1, 0)
    assert (await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts())).ok
    assert (back / "a.txt").read_bytes() == b"balance=999"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_resume_redoes_a_followed_link_pointed_back_at_an_older_file(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """With --follow-symlinks, a ``current`` link rolled back from v2 to v1 (same size) kept
    v2's output: v1's change time is older than the output's (review)."""
    src, enc, back = tmp_path / "src", tmp_path / "enc", tmp_path / "back"
    (src / "versions").mkdir(parents=True)
    (src / "versions" / "v1").write_bytes(b"config=v1")
    (src / "versions" / "v2").write_bytes(b"config=v2")
    (src / "current").symlink_to("versions/v2")
    o = opts(follow_symlinks=True)
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=o)).ok
    (src / "current").unlink()
    (src / "current").symlink_to("versions/v1")
    again = await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=o)
    assert again.done == 1 and again.skipped == 2
    assert (await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts())).ok
    assert (back / "current").read_bytes() == b"config=v1"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_decrypt_resume_checks_what_a_fresh_decrypt_checks(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """Outputs an unchecked decrypt left were "already done" for a later run asking for
    other contexts or with a key that opens nothing, which a fresh run refuses (review): the
    resume checks the contexts asked for and that this run's keyring can try the object's
    wrapped keys (no KMS call)."""
    src, enc, back = tmp_path / "src", tmp_path / "enc", tmp_path / "back"
    src.mkdir()
    (src / "hr.csv").write_bytes(b"salaries")
    assert (await jobs.encrypt_prefix(
        str(src), str(enc), keyring=k1, object_context={"dataset": "hr"}, options=opts()
    )).ok  # fmt: skip
    assert (await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts())).ok
    same = await jobs.decrypt_prefix(
        str(enc), str(back), keyring=k1, object_context={"dataset": "hr"}, options=opts()
    )
    assert (same.done, same.skipped) == (0, 1)  # it meets the check: done
    for kw in ({"object_context": {"dataset": "orders"}}, {"kms_context": {"tenant": "acme"}}):
        r = await jobs.decrypt_prefix(str(enc), str(back), keyring=k1, options=opts(), **kw)
        assert (r.skipped, [f.error_type for f in r.failures]) == (0, ["ContextMismatchError"])
    other = MemoryKms()
    stranger = Keyring(other, other.create_key())
    r = await jobs.decrypt_prefix(str(enc), str(back), keyring=stranger, options=opts())
    assert r.skipped == 0 and [f.error_type for f in r.failures] == ["NoBackendError"]
