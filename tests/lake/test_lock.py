"""One job per destination: the lock, its stale cases, and clean-up only under it.

Before the lock, a second job on one destination deleted the first one's temporary files at
its start, and the first job reported FileNotFoundError failures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pyarrow.fs as pafs
import pytest

from envelope import api
from envelope.errors import ConfigurationError, LockHeldError, StaleLockError
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.lake import jobs
from envelope.lake.fs import resolve
from envelope.lake.lock import LOCK_NAME, acquire
from envelope.lake.sinks import is_temporary

from .conftest import S3, make_tree, read_tree

pytestmark = pytest.mark.anyio

ENGINE = api.Options(segment_size=64 << 10, workers=2, depth=3)


def opts(**kw: object) -> jobs.LakeOptions:
    return jobs.LakeOptions(engine=ENGINE, **kw)  # type: ignore[arg-type]


@pytest.fixture
def k1() -> Keyring:
    kms = MemoryKms()
    return Keyring(kms, kms.create_key("k1"), cache=CachePolicy())


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def holder_json(host: str, pid: int, renewed: float, job_id: str = "feedface") -> bytes:
    return json.dumps(
        {
            "job_id": job_id,
            "operation": "encrypt",
            "host": host,
            "pid": pid,
            "started": renewed - 5,
            "renewed": renewed,
        }
    ).encode()


CHILD = r"""
import json, sys, anyio
from envelope import api
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.lake import jobs
src, dst = sys.argv[1:3]
kms = MemoryKms()
kr = Keyring(kms, kms.create_key("k"), cache=CachePolicy())
opts = jobs.LakeOptions(concurrency=2, large_concurrency=1, engine=api.Options(segment_size=65536))
report = anyio.run(lambda: jobs.encrypt_prefix(src, dst, keyring=kr, options=opts))
print(json.dumps(report.to_dict()))
"""


def outputs(dst: Path) -> list[Path]:
    return [p for p in dst.rglob("*") if p.is_file() and not is_temporary(p.name)]


def test_second_job_fails_clearly_and_the_first_completes(tmp_path: Path) -> None:
    """Two processes on one destination: the second is refused, naming the first; the first
    finishes every object with no failures (its temporaries were left alone)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    tree = make_tree(src, [300_000] * 120 + [(16 << 20) + 1] * 2)
    first = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(src), str(dst)], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            if (dst / LOCK_NAME).exists() and len(outputs(dst)) >= 10:
                break
            time.sleep(0.005)
        assert first.poll() is None, "the first job ended before the second could start"
        kms = MemoryKms()
        kr = Keyring(kms, kms.create_key("k2"), cache=CachePolicy())
        with pytest.raises(ConfigurationError, match=f"pid {first.pid} on host") as e:
            anyio.run(lambda: jobs.encrypt_prefix(str(src), str(dst), keyring=kr, options=opts()))
        assert isinstance(e.value, LockHeldError) and "running" in str(e.value)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    report = json.loads(out)
    assert first.returncode == 0 and report["failures"] == []
    assert report["done"] == len(tree) and report["failed"] == 0
    assert not (dst / LOCK_NAME).exists()  # released on success
    assert sorted(str(p.relative_to(dst)) for p in outputs(dst)) == sorted(tree)
    # the lock is gone: a later job runs (under another key than the first's: it encrypts
    # every object again, and a re-run under its own key then finds everything done)
    again = anyio.run(lambda: jobs.encrypt_prefix(str(src), str(dst), keyring=kr, options=opts()))
    assert again.ok and again.done == len(tree)
    last = anyio.run(lambda: jobs.encrypt_prefix(str(src), str(dst), keyring=kr, options=opts()))
    assert last.ok and last.skipped == len(tree)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_two_jobs_in_one_process(anyio_backend: str, tmp_path: Path, k1: Keyring) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    tree = make_tree(src, [200_000] * 40)
    results: dict[str, object] = {}
    started = anyio.Event()

    class Signal:
        def start(self, operation: str, objects: int, total_bytes: int) -> None:
            started.set()

        def advance(self, result: jobs.ObjectResult) -> None:
            return None

    async def first() -> None:
        results["first"] = await jobs.encrypt_prefix(
            str(src), str(dst), keyring=k1, options=opts(concurrency=2), progress=Signal()
        )

    async def second() -> None:
        await started.wait()
        try:
            await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts())
        except LockHeldError as e:
            results["second"] = e

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        tg.start_soon(second)
    r = results["first"]
    assert isinstance(r, jobs.JobReport) and r.ok and r.done == len(tree)
    err = results.get("second")
    assert isinstance(err, LockHeldError) and err.holder is not None
    assert err.holder.pid == os.getpid() and f"pid {os.getpid()}" in str(err)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_dead_holder_on_this_host_is_taken_over_with_a_note(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    tree = make_tree(src, [1000] * 5)
    dst.mkdir()
    (dst / LOCK_NAME).write_bytes(holder_json(socket.gethostname(), dead_pid(), time.time()))
    stale_tmp = dst / ".top-0000.bin.0123456789ab.envelope-tmp"
    stale_tmp.write_bytes(b"left by the killed job")
    r = await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts())
    assert r.ok and r.done == len(tree)
    assert any("took over" in n and "feedface" in n for n in r.notes), r.notes
    assert r.removed_temporaries == 1 and not stale_tmp.exists()
    assert not (dst / LOCK_NAME).exists()
    # the lock is never an object: not listed as a source, not among the outputs
    assert set(read_tree(dst)) == set(tree)
    (dst / LOCK_NAME).write_bytes(holder_json("elsewhere", 1, time.time()))
    d = await jobs.decrypt_prefix(str(dst), str(tmp_path / "back"), keyring=k1, options=opts())
    assert d.ok and d.done == len(tree)
    assert [(s.path, s.reason) for s in d.skipped_paths] == [(LOCK_NAME, "a lake job's lock file")]
    assert read_tree(tmp_path / "back") == tree


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_lock_from_another_host_needs_break_lock(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, [10] * 3)
    dst.mkdir()
    lock = dst / LOCK_NAME
    lock.write_bytes(holder_json("other-host", 4242, time.time()))
    with pytest.raises(LockHeldError, match=r"pid 4242 on host other-host.*--break-lock"):
        await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts())
    lock.write_bytes(holder_json("other-host", 4242, time.time() - 120))
    with pytest.raises(StaleLockError, match=r"stale lock.*other-host.*--break-lock"):
        await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts(lock_ttl=60))
    assert set(read_tree(dst)) == {LOCK_NAME}  # nothing written; the lock left as it was
    r = await jobs.encrypt_prefix(
        str(src), str(dst), keyring=k1, options=opts(lock_ttl=60, break_lock=True)
    )
    assert r.ok and r.done == 3 and any("other-host" in n for n in r.notes)
    assert not lock.exists()
    # an unreadable lock whose flock no one holds: no live job wrote it; removed with a note
    lock.write_bytes(b"garbage")
    r = await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts())
    assert r.ok and any("unreadable lock" in n for n in r.notes) and not lock.exists()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_live_holder_is_never_broken(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, [10] * 3)
    held = acquire(resolve(str(dst)), operation="encrypt")
    try:
        with pytest.raises(LockHeldError, match="running"):
            await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts(break_lock=True))
        assert read_tree(dst) == {LOCK_NAME: (dst / LOCK_NAME).read_bytes()}
    finally:
        held.release()
    assert not (dst / LOCK_NAME).exists()
    # temporaries are removed only under a held lock
    with pytest.raises(ConfigurationError, match="only while holding the lock"):
        jobs.remove_temporaries(resolve(str(dst)), held)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_lock_released_on_failure_and_on_cancellation(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, [300_000] * 60)

    class Boom:
        def start(self, operation: str, objects: int, total_bytes: int) -> None:
            assert (dst / LOCK_NAME).exists()
            raise RuntimeError("progress display failed")

        def advance(self, result: jobs.ObjectResult) -> None:
            return None

    with pytest.raises(RuntimeError, match="progress display failed"):
        await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts(), progress=Boom())
    assert not (dst / LOCK_NAME).exists()

    seen = anyio.Event()

    class Seen:
        def start(self, operation: str, objects: int, total_bytes: int) -> None:
            return None

        def advance(self, result: jobs.ObjectResult) -> None:
            seen.set()

    with anyio.move_on_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: jobs.encrypt_prefix(
                    str(src), str(dst), keyring=k1, options=opts(concurrency=2), progress=Seen()
                )
            )
            await seen.wait()
            assert (dst / LOCK_NAME).exists()
            tg.cancel_scope.cancel()
    assert not (dst / LOCK_NAME).exists()


def test_sigint_and_sigterm_release_the_lock(tmp_path: Path) -> None:
    """Ctrl-C in a library caller, SIGTERM to the CLI: the lock goes with the job."""
    src = tmp_path / "src"
    make_tree(src, [300_000] * 150)
    env = {**os.environ, "ENVELOPE_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "envelope.cli.main", "lake", "encrypt", "--concurrency", "2"]
    runs = {
        "sigint": ([sys.executable, "-c", CHILD, str(src), str(tmp_path / "a")], signal.SIGINT),
        "sigterm": ([*cli, str(src), str(tmp_path / "b")], signal.SIGTERM),
    }
    for name, (argv, sig) in runs.items():
        dst = tmp_path / ("a" if name == "sigint" else "b")
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (dst / LOCK_NAME).exists() and len(outputs(dst)) >= 5:
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"{name}: the job ended before the signal"
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert proc.returncode != 0, name
        assert not (dst / LOCK_NAME).exists(), name
        assert 0 < len(outputs(dst)) < 150, name


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cleanup_leaves_a_nested_destination_alone(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, [10] * 2)
    (dst / "nested").mkdir(parents=True)
    ours = dst / ".old.bin.0123456789ab.envelope-tmp"
    ours.write_bytes(b"x")
    theirs = dst / "nested" / ".y.bin.0123456789ab.envelope-tmp"
    theirs.write_bytes(b"y")
    nested_lock = acquire(resolve(str(dst / "nested")), operation="encrypt")
    try:
        r = await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts())
        assert r.ok and r.removed_temporaries == 1
        assert not ours.exists() and theirs.exists()
    finally:
        nested_lock.release()


# -- S3 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_s3_lock(anyio_backend: str, tmp_path: Path, s3: S3, k1: Keyring) -> None:
    src = tmp_path / "src"
    tree = make_tree(src, [100, 5000] * 3)
    fs = s3.fs()
    uri = s3.uri("lake/enc")
    lock_path = f"lake/enc/{LOCK_NAME}"

    # a conditional create: of two racing acquirers exactly one wins
    barrier = threading.Barrier(2)
    won: list[object] = []

    def race() -> None:
        barrier.wait()
        try:
            won.append(acquire(resolve(uri), operation="encrypt"))
        except LockHeldError as e:
            won.append(e)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    locks = [w for w in won if not isinstance(w, Exception)]
    assert len(locks) == 1 and len(won) == 2
    held = locks[0]
    assert fs.get_file_info(lock_path).type == pafs.FileType.File
    try:
        with pytest.raises(LockHeldError, match=f"pid {os.getpid()}"):
            await jobs.encrypt_prefix(str(src), uri, keyring=k1, options=opts())
    finally:
        held.release()  # type: ignore[attr-defined]
    assert fs.get_file_info(lock_path).type == pafs.FileType.NotFound

    r = await jobs.encrypt_prefix(str(src), uri, keyring=k1, options=opts())
    assert r.ok and r.done == len(tree)
    assert fs.get_file_info(lock_path).type == pafs.FileType.NotFound  # released, not output
    listed = fs.get_file_info(pafs.FileSelector("lake/enc", recursive=True))
    names = {i.path for i in listed if i.type == pafs.FileType.File}
    assert names == {f"lake/enc/{rel}" for rel in tree}

    # stale (another host, not renewed within the TTL): refused, then broken on request
    with fs.open_output_stream(lock_path) as f:
        f.write(holder_json("other-host", 7, time.time() - 100))
    with pytest.raises(StaleLockError, match=r"other-host.*--break-lock"):
        await jobs.encrypt_prefix(str(src), uri, keyring=k1, options=opts(lock_ttl=30))
    r = await jobs.encrypt_prefix(
        str(src), uri, keyring=k1, options=opts(lock_ttl=30, break_lock=True)
    )
    assert r.ok and r.skipped == len(tree) and any("other-host" in n for n in r.notes)
    assert fs.get_file_info(lock_path).type == pafs.FileType.NotFound
    # unreadable, with no flock to prove its writer dead: stale until broken
    with fs.open_output_stream(lock_path) as f:
        f.write(b"garbage")
    with pytest.raises(StaleLockError, match="unreadable lock"):
        await jobs.encrypt_prefix(str(src), uri, keyring=k1, options=opts())
    r = await jobs.encrypt_prefix(str(src), uri, keyring=k1, options=opts(break_lock=True))
    assert r.ok and any("unreadable lock" in n for n in r.notes)


def test_a_held_lock_is_renewed(tmp_path: Path) -> None:
    held = acquire(resolve(str(tmp_path / "d")), operation="encrypt", ttl=0.3)
    try:
        first = json.loads((tmp_path / "d" / LOCK_NAME).read_bytes())["renewed"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                now = json.loads((tmp_path / "d" / LOCK_NAME).read_bytes())["renewed"]
            except ValueError:
                continue  # caught mid-rewrite
            if now > first:
                break
            time.sleep(0.02)
        assert now > first
    finally:
        held.release()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_dead_holder_whose_pid_is_now_ours_is_taken_over(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """A restarted container runs its job as PID 1 again: the killed job's lock names this
    host and this very pid, and nobody holds its flock. It is an earlier process's, provably
    dead, and taken over without --break-lock (a lock this process does hold is not)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    tree = make_tree(src, [100] * 3)
    dst.mkdir()
    (dst / LOCK_NAME).write_bytes(holder_json(socket.gethostname(), os.getpid(), time.time()))
    r = await jobs.encrypt_prefix(str(src), str(dst), keyring=k1, options=opts())
    assert r.ok and r.done == len(tree) and any("took over" in n for n in r.notes), r.notes
    assert not (dst / LOCK_NAME).exists()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_rewrap_does_not_report_the_lock_it_takes_over_as_a_skipped_path(
    anyio_backend: str, tmp_path: Path
) -> None:
    """rewrap writes where it reads: a killed rewrap's lock is the next one's to take over
    (noted as such), not an object of the prefix left alone."""
    kms = MemoryKms()
    k1 = Keyring(kms, kms.create_key("k1"), cache=CachePolicy())
    k2 = Keyring(kms, kms.create_key("k2"), cache=CachePolicy())
    src, enc = tmp_path / "src", tmp_path / "enc"
    make_tree(src, [100] * 3)
    assert (await jobs.encrypt_prefix(str(src), str(enc), keyring=k1, options=opts())).ok
    (enc / LOCK_NAME).write_bytes(holder_json(socket.gethostname(), dead_pid(), time.time()))
    # ... nor the temporaries it left, which it removes (and says so)
    (enc / ".a.bin.0123456789ab.envelope-tmp").write_bytes(b"partial")
    r = await jobs.rewrap_prefix(str(enc), keyring=k1, to=k2, options=opts())
    assert r.ok and r.done == 3 and any("took over" in n for n in r.notes)
    assert r.skipped_paths == [] and r.removed_temporaries == 1


def test_our_own_pid_on_an_object_store_is_neither_alive_nor_dead() -> None:
    """Without a flock (an object store), a lock naming this host and this pid but none of
    this process's jobs may be an earlier process (a restarted container) or a twin host of
    the same name that runs now: never taken over by itself, but --break-lock breaks it."""
    from envelope.lake import lock as lk

    holder = lk.Holder("feedface", "encrypt", socket.gethostname(), os.getpid(), time.time(),
                       time.time())  # fmt: skip
    with pytest.raises(LockHeldError, match="--break-lock"):
        lk._verdict("s3://lake/x", holder, 900.0, False, None)
    assert lk._verdict("s3://lake/x", holder, 900.0, True, None) is True
    assert lk._verdict("/local/x", holder, 900.0, False, True) is True  # a free flock proves it


def test_a_job_cancelled_while_it_starts_leaves_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM makes asyncio's runner cancel the task natively, which the shielded scope
    around the start does not hold off: the wait for the starting thread ended while the
    thread went on and took the lock, and nobody released it (a CI run left one behind)."""
    import asyncio

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a")
    dst = tmp_path / "dst"
    real = jobs.begin_job
    taken = threading.Event()

    def slow_begin(*args: object, **kwargs: object) -> jobs.JobStart:
        time.sleep(0.3)  # the cancel lands meanwhile
        started = real(*args, **kwargs)  # type: ignore[arg-type]
        taken.set()
        return started

    monkeypatch.setattr(jobs, "begin_job", slow_begin)

    async def start_and_hold() -> None:
        async with jobs._started(
            "encrypt", resolve(str(src)), resolve(str(dst)), jobs.LakeOptions(), None
        ):
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.ensure_future(start_and_hold())
        await asyncio.sleep(0.05)
        task.cancel()  # what asyncio's runner does on SIGINT (our SIGTERM path)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert taken.wait(5)
    deadline = time.monotonic() + 5
    while (dst / ".envelope-lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (dst / ".envelope-lock").exists()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_destination_nested_in_a_running_jobs_is_refused_both_ways(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """A second job on a folder inside a running job's destination (or around one it would
    write into) wrote the same files, each binding its own relative paths, and every one of
    them failed verification afterwards (review). Neither writes anything now."""
    src = tmp_path / "src"
    make_tree(src / "d1", [10] * 3)
    make_tree(src / "d2", [10] * 2, seed=1)
    out = tmp_path / "out"
    outer = acquire(resolve(str(out)), operation="encrypt")  # a running job on out/
    try:
        with pytest.raises(LockHeldError, match="inside"):
            await jobs.encrypt_prefix(str(src / "d1"), str(out / "d1"), keyring=k1)
    finally:
        outer.release()
    assert not (out / "d1").exists() or outputs(out / "d1") == []
    inner = acquire(resolve(str(out / "d1")), operation="encrypt")  # a running job on out/d1
    try:
        with pytest.raises(LockHeldError, match="would write there"):
            await jobs.encrypt_prefix(str(src), str(out), keyring=k1)
        assert [p.name for p in outputs(out)] == [LOCK_NAME]  # (the nested job's own)
        # a job that writes nothing into the nested destination goes ahead
        r = await jobs.encrypt_prefix(str(src / "d2"), str(out / "d2"), keyring=k1)
        assert r.ok and r.done == 2
    finally:
        inner.release()
    assert (await jobs.encrypt_prefix(str(src), str(out), keyring=k1)).ok


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_source_folder_named_like_the_lock_is_skipped_and_said(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    """Its copy stood where the destination's lock goes (FileExistsError at the top; nested,
    it made its folder look like another job's destination, whose temporaries were then
    never cleaned; review)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for folder in (src / LOCK_NAME, src / "sub" / LOCK_NAME):
        folder.mkdir(parents=True)
        (folder / "x.txt").write_bytes(b"x")
    (src / "sub" / "y.txt").write_bytes(b"y")
    r = await jobs.encrypt_prefix(str(src), str(dst), keyring=k1)
    assert r.ok and r.done == 1
    assert sorted(s.path for s in r.skipped_paths) == [LOCK_NAME, f"sub/{LOCK_NAME}"]
    stale = dst / "sub" / ".y.txt.0123456789ab.envelope-tmp"
    stale.write_bytes(b"left by a killed run")
    r = await jobs.encrypt_prefix(str(src), str(dst), keyring=k1)
    assert r.removed_temporaries == 1 and not stale.exists()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_destination_nested_through_a_link_is_refused_too(
    anyio_backend: str, tmp_path: Path, k1: Keyring
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_tree(src, [10] * 2)
    out.mkdir()
    (tmp_path / "alias").symlink_to(out)
    outer = acquire(resolve(str(out)), operation="encrypt")
    try:
        with pytest.raises(LockHeldError, match="inside"):
            await jobs.encrypt_prefix(str(src), str(tmp_path / "alias" / "d1"), keyring=k1)
    finally:
        outer.release()


def test_a_report_says_the_job_did_not_run(tmp_path: Path) -> None:
    """--report was written only when the job returned: refused for a lock held elsewhere
    (exit 2), the previous run's report stayed in place, ok and all (review)."""
    src, dst, key, rep = tmp_path / "src", tmp_path / "dst", tmp_path / "k.key", tmp_path / "r.json"
    make_tree(src, [10] * 3)
    env = {**os.environ, "ENVELOPE_HOME": str(tmp_path / "home")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", *args],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip

    assert cli("keygen", str(key)).returncode == 0
    job = ("lake", "encrypt", str(src), str(dst), "--key-file", str(key), "--report", str(rep))
    assert cli(*job).returncode == 0 and json.loads(rep.read_text())["ok"] is True
    (dst / LOCK_NAME).write_bytes(holder_json("etl-2", 4242, time.time()))
    r = cli(*job)
    assert r.returncode == 2, r.stderr
    report = json.loads(rep.read_text())
    assert report["ok"] is False and "LockHeldError" in report["error"], report
    # a setting refused before the job began: the earlier report was left there too (review)
    (dst / LOCK_NAME).unlink()
    assert cli(*job).returncode == 0 and json.loads(rep.read_text())["ok"] is True
    for bad in (["--context", "novalue"], ["--kms-context", "a"], ["--memory-budget", "1K"]):
        r = cli(*job, *bad)
        assert r.returncode == 2, (bad, r.stderr)
        report = json.loads(rep.read_text())
        assert report["ok"] is False and report["error"], (bad, report)
        rep.write_text(json.dumps({"operation": "encrypt", "ok": True}))
    # ... but a file that is not a report is never replaced by one (it may be a key)
    key_bytes = key.read_bytes()
    r = cli("lake", "encrypt", str(src), str(dst), "--key-file", str(key), "--report", str(key),
            "--context", "novalue")  # fmt: skip
    assert r.returncode == 2 and key.read_bytes() == key_bytes


def test_s3_nested_destinations_count_as_locally(s3: S3) -> None:
    """A job in a prefix inside a running job's destination took its own lock, wrote there
    and aborted the outer job's open uploads as a dead job's (review). Refused, as locally;
    an outer lock not renewed within the TTL (its job gone) does not hold the inner one."""
    s3.reset()
    fs = s3.fs(allow_bucket_creation=True)
    fs.create_dir("nest")
    outer = acquire(resolve(s3.uri("nest/outer")), operation="encrypt")
    try:
        with pytest.raises(LockHeldError, match=r"inside .*nest/outer"):
            acquire(resolve(s3.uri("nest/outer/big")), operation="encrypt")
        assert fs.get_file_info(f"nest/outer/big/{LOCK_NAME}").type == pafs.FileType.NotFound
    finally:
        outer.release()
    with fs.open_output_stream(f"nest/outer/{LOCK_NAME}") as f:
        f.write(holder_json("gone-host", 1, time.time() - 3600))
    inner = acquire(resolve(s3.uri("nest/outer/big")), operation="encrypt", ttl=60)
    inner.release()


def test_s3_ancestors_a_job_may_not_read_are_not_its_business(s3: S3) -> None:
    """Credentials scoped to one prefix (GetObject under it only) cannot read an ancestor's
    lock: the nested-destination check refused such jobs, and left its own lock held, its
    renewer running (diff review). Access refused there is skipped; any other failure
    releases the lock before it is raised. (moto does not enforce IAM: the client's
    GetObject answers as S3 does for a key outside the credentials' prefix.)"""
    from botocore.exceptions import ClientError

    from envelope.lake import lock as lockmod
    from envelope.lake.s3 import client_for

    s3.reset()
    fs = s3.fs(allow_bucket_creation=True)
    fs.create_dir("nest")
    loc = resolve(s3.uri("nest/team/a/enc"))
    client = client_for(loc.fs)
    real = client.get_object

    def refusing(code: str, status: int) -> Any:
        def get_object(*, Bucket: str, Key: str, **kw: Any) -> Any:
            if not Key.startswith("team/a/"):
                raise ClientError(
                    {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                    "GetObject",
                )
            return real(Bucket=Bucket, Key=Key, **kw)

        return get_object

    held_before = len(lockmod._HELD)
    try:
        client.get_object = refusing("AccessDenied", 403)
        acquire(loc, operation="encrypt").release()
        client.get_object = refusing("InternalError", 500)
        with pytest.raises(ClientError):
            acquire(loc, operation="encrypt")
    finally:
        client.get_object = real
    assert fs.get_file_info(f"nest/team/a/enc/{LOCK_NAME}").type == pafs.FileType.NotFound
    assert len(lockmod._HELD) == held_before
    assert not [t for t in threading.enumerate() if t.name == "envelope-lock" and t.is_alive()]
