"""Faults: a plan of failures, each applied through the most real mechanism available.

| fault                      | mechanism                                                          |
|----------------------------|--------------------------------------------------------------------|
| throttle, transient error, | `FaultyKms` around the memory KMS and around the embedded KMS (the |
| timeout/connection reset,  | backend call fails before it reaches the service, as a dropped     |
| latency                    | request looks to a client), behind the real retry layer            |
| ENOSPC                     | a real 8 MiB tmpfs, filled to the last byte (we are root)          |
| EFBIG                      | RLIMIT_FSIZE in the child, SIGXFSZ ignored (runs everywhere)       |
| EIO on write, fsync fails  | simulated at the OS boundary: `os.write` and `os.fsync` of the job |
|                            | raise EIO for the destination's files (no FUSE or dm-error here)   |
| ENOSPC under the KMS store | the store's home on a full tmpfs                                   |
| process kill               | test_crash.py (SIGKILL at seeded points)                           |

For every fault: the job either completes with every object correct, or fails with a clear,
typed error (an `envelope.errors` type, or an OSError naming the errno for the disk) and leaves
no partial output under a final name and no temporaries; then a re-run, with the fault gone,
completes and every object is correct.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from envelope import sync
from envelope.errors import EnvelopeError
from envelope.keyring import Keyring
from envelope.kms.base import KmsBackend
from envelope.kms.faults import FaultyKms
from envelope.kms.filekey import FileKeyBackend
from envelope.kms.local import LocalKms
from envelope.kms.memory import MemoryKms
from envelope.kms.retry import RetryPolicy
from envelope.lake import jobs
from envelope.service import KmsServiceError, open_service

from .support import (
    child_env,
    count,
    envelope_cmd,
    files_under,
    fill,
    leftovers,
    make_tree,
    resize_tmpfs,
    rng,
    run_envelope,
    size,
    tmpfs,
    where,
)

SUITE = "faults"
PATH_KEY = jobs.PATH_CONTEXT_KEY
FAST_RETRY = RetryPolicy(
    max_attempts=3,
    deadline=10.0,
    throttle_base=0.001,
    transient_base=0.001,
    cap=0.01,
    budget_capacity=None,
)


def _subclasses(cls: type) -> set[type]:
    out = set(cls.__subclasses__())
    for c in list(out):
        out |= _subclasses(c)
    return out


def typed_names() -> set[str]:
    import envelope.kms.retry  # noqa: F401  (RetryExhaustedError and friends)

    return {c.__name__ for c in _subclasses(EnvelopeError)} | {"EnvelopeError"}


def check_tree(tree: dict[str, bytes], dst: Path, keyring: Keyring, *, complete: bool) -> int:
    """Every output under a final name decrypts to its source; nothing else is there."""
    assert not leftovers(dst), f"temporaries left behind: {leftovers(dst)} {where()}"
    outputs = files_under(dst) if dst.exists() else {}
    stray = set(outputs) - set(tree)
    assert not stray, f"outputs with no source: {sorted(stray)}"
    for rel, p in outputs.items():
        got = sync.decrypt_bytes(p.read_bytes(), keyring=keyring, expected_context={PATH_KEY: rel})
        assert bytes(got) == tree[rel], f"{rel}: wrong plaintext {where()}"
    if complete:
        assert set(outputs) == set(tree), f"missing after re-run: {set(tree) - set(outputs)}"
    return len(outputs)


# -- KMS faults -----------------------------------------------------------------------------

KMS_PLAN: dict[str, dict[str, float]] = {
    "throttle": {"throttle": 0.35},
    "transient": {"transient": 0.35},
    "timeout": {"timeout": 0.35},  # a connection reset or read timeout, to the client
    "latency": {"latency": 0.002, "jitter": 0.006},
    "storm": {"throttle": 0.3, "transient": 0.3, "timeout": 0.3},  # some retries run out
}


@pytest.fixture(params=["memory", "embedded"])
def kms(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[KmsBackend, str]]:
    if request.param == "memory":
        mem = MemoryKms()
        yield mem, mem.create_key("faults")
        return
    svc = open_service(tmp_path / "home")
    kid = str(svc.create_key(description="faults")["KeyMetadata"]["Arn"])
    local = LocalKms(svc)
    yield local, kid
    report = svc.verify_audit_log()
    sync.run(local.aclose)
    assert report.ok, report.problem


@pytest.mark.parametrize("fault", list(KMS_PLAN))
def test_kms_faults_in_a_lake_job(fault: str, kms: tuple[KmsBackend, str], tmp_path: Path) -> None:
    inner, kid = kms
    r = rng(f"kms-{fault}-{inner.provider_id}")
    src, dst = tmp_path / "src", tmp_path / "dst"
    tree = make_tree(src, [r.randrange(0, 20_000) for _ in range(size(24, 200))], r)
    flaky = FaultyKms(inner, seed=r.randrange(1 << 30), **KMS_PLAN[fault])
    faulty = Keyring(flaky, kid, retry=FAST_RETRY)  # no cache: every object asks the KMS
    opts = jobs.LakeOptions(concurrency=8)
    report = sync.run(jobs.encrypt_prefix, str(src), str(dst), keyring=faulty, options=opts)
    count(SUITE, "KMS faults injected", sum(flaky.injected.values()))
    count(SUITE, "KMS calls under faults", sum(flaky.calls.values()))
    if fault != "latency":
        assert flaky.injected, "the plan injected nothing: the test would pass trivially"
    names = typed_names()
    for f in report.failures:
        assert f.error_type in names, f"untyped failure {f.error_type}: {f.error} {where()}"
    clean = Keyring(inner, kid)
    assert check_tree(tree, dst, clean, complete=False) == report.done
    assert report.done + report.failed == len(tree)
    count(SUITE, "objects failed cleanly", report.failed)

    again = sync.run(jobs.encrypt_prefix, str(src), str(dst), keyring=clean, options=opts)
    assert again.ok and again.done == report.failed, again.failures
    check_tree(tree, dst, clean, complete=True)
    count(SUITE, "jobs re-run to completion")


# -- the disk: ENOSPC on a real tmpfs, EFBIG through RLIMIT_FSIZE ---------------------------


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[str, Keyring]:
    path = tmp_path / "k.key"
    proc = run_envelope("keygen", str(path), home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    backend = FileKeyBackend(str(path))
    return str(path), Keyring(backend, backend.key_id)


def _lake(home: Path, *args: str, preexec: Callable[[], None] | None = None) -> tuple[int, Any]:
    proc = subprocess.run(
        envelope_cmd("lake", *args, "--json", "--no-progress"),
        env=child_env(ENVELOPE_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        preexec_fn=preexec,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"exit {proc.returncode}: {proc.stdout}\n{proc.stderr}") from None


def _assert_disk_failures(report: Any, *needles: str) -> None:
    for f in report["failures"]:
        text = f"{f['error_type']}: {f['error']}"
        assert any(n in text for n in needles), f"unclear failure: {text}"


@pytest.mark.slow
def test_lake_job_on_a_full_tmpfs(tmp_path: Path, key_file: tuple[str, Keyring]) -> None:
    kpath, keyring = key_file
    r = rng("enospc-lake")
    src = tmp_path / "src"
    sizes = [r.randrange(300_000, 900_000) for _ in range(14)] + [9 << 20]  # > the disk
    tree = make_tree(src, sizes, r)
    with tmpfs(tmp_path / "disk", 8 << 20) as disk:
        dst = disk / "enc"
        code, report = _lake(tmp_path / "home", "encrypt", str(src), str(dst), "--key-file", kpath)
        assert code == 1 and report["failed"] >= 1, report
        _assert_disk_failures(report, "No space left on device", "ENOSPC")
        assert check_tree(tree, dst, keyring, complete=False) == report["done"]
        count(SUITE, "ENOSPC (tmpfs) objects failed cleanly", report["failed"])

        resize_tmpfs(disk, 64 << 20)
        code, report = _lake(tmp_path / "home", "encrypt", str(src), str(dst), "--key-file", kpath)
        assert code == 0 and report["ok"], report
        check_tree(tree, dst, keyring, complete=True)
        count(SUITE, "jobs re-run to completion")


@pytest.mark.slow
@pytest.mark.parametrize("op", ["encrypt", "decrypt"])
def test_file_job_on_a_full_tmpfs(op: str, tmp_path: Path, key_file: tuple[str, Keyring]) -> None:
    kpath, keyring = key_file
    r = rng(f"enospc-{op}")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(r.randbytes(3 << 20))
    enc = tmp_path / "plain.env"
    assert run_envelope("encrypt", str(plain), str(enc), "--key-file", kpath, home=tmp_path / "h")
    source = plain if op == "encrypt" else enc
    with tmpfs(tmp_path / "disk", 2 << 20) as disk:
        target = disk / "out"
        target.write_bytes(b"the old target, which must survive")
        filler = fill(disk)
        proc = run_envelope(op, str(source), str(target), "--key-file", kpath, home=tmp_path / "h")
        assert proc.returncode == 5, (proc.returncode, proc.stderr)
        assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
        assert target.read_bytes() == b"the old target, which must survive"
        assert not leftovers(disk), leftovers(disk)
        count(SUITE, "ENOSPC (tmpfs) file jobs failed cleanly")

        filler.unlink()
        resize_tmpfs(disk, 16 << 20)
        proc = run_envelope(op, str(source), str(target), "--key-file", kpath, home=tmp_path / "h")
        assert proc.returncode == 0, proc.stderr
        got = target.read_bytes()
        if op == "encrypt":
            got = bytes(sync.decrypt_bytes(got, keyring=keyring))
        assert got == plain.read_bytes()
        count(SUITE, "jobs re-run to completion")


def _fsize_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit is EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow
def test_file_limit_efbig(tmp_path: Path, key_file: tuple[str, Keyring]) -> None:
    """The disk-full fallback that needs no mount: RLIMIT_FSIZE makes big writes fail."""
    kpath, keyring = key_file
    r = rng("efbig")
    src, dst = tmp_path / "src", tmp_path / "dst"
    tree = make_tree(src, [r.randrange(10_000, 500_000) for _ in range(8)] + [3 << 20], r)
    code, report = _lake(
        tmp_path / "home",
        "encrypt",
        str(src),
        str(dst),
        "--key-file",
        kpath,
        preexec=_fsize_limit(1 << 20),
    )
    assert code == 1 and report["failed"] == 1, report
    _assert_disk_failures(report, "File too large", "EFBIG")
    assert check_tree(tree, dst, keyring, complete=False) == report["done"]
    count(SUITE, "EFBIG (RLIMIT_FSIZE) objects failed cleanly", report["failed"])

    big = src / max(tree, key=lambda k: len(tree[k]))
    target = tmp_path / "big.env"
    target.write_bytes(b"old")
    proc = subprocess.run(
        envelope_cmd("encrypt", str(big), str(target), "--key-file", kpath),
        env=child_env(ENVELOPE_HOME=str(tmp_path / "home")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_fsize_limit(1 << 20),
    )
    assert proc.returncode == 5 and "File too large" in proc.stderr, proc.stderr
    assert target.read_bytes() == b"old" and not leftovers(tmp_path)
    count(SUITE, "EFBIG (RLIMIT_FSIZE) file jobs failed cleanly")

    code, report = _lake(tmp_path / "home", "encrypt", str(src), str(dst), "--key-file", kpath)
    assert code == 0 and report["ok"], report
    check_tree(tree, dst, keyring, complete=True)
    count(SUITE, "jobs re-run to completion")


# -- EIO and fsync failures, simulated at the OS boundary -----------------------------------


@pytest.mark.parametrize("fault", ["write-eio", "fsync-eio"])
def test_eio_and_fsync_failure(fault: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No FUSE or device-mapper here: `os.write`/`os.fsync` raise EIO for the destination's
    files on a seeded schedule (both the small-object path and the direct file path use them).
    """
    r = rng(f"eio-{fault}")
    src, dst = tmp_path / "src", tmp_path / "dst"
    sizes = [r.randrange(0, 40_000) for _ in range(size(20, 150))] + [3 << 20, 5 << 20]
    tree = make_tree(src, sizes, r)
    kms = MemoryKms()
    keyring = Keyring(kms, kms.create_key("eio"))
    prefix = str(dst) + os.sep
    injected = 0
    dir_fsyncs_failed = 0
    real_write, real_fsync = os.write, os.fsync
    # the job writes and fsyncs from several threads: `+=` on a shared int can lose counts
    # (it did: one folder fsync failure went uncounted and the bound below failed)
    counting = threading.Lock()

    def ours(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(prefix)
        except OSError:
            return False

    def eio() -> OSError:
        nonlocal injected
        with counting:
            injected += 1
        return OSError(errno.EIO, os.strerror(errno.EIO))

    # The first write (fsync) of the destination always fails, then a seeded share: with
    # only chance, a run of 20 small objects (one write each) escaped injection ~4% of the time.
    def write(fd: int, data: Any) -> int:
        if fault == "write-eio" and ours(fd) and (not injected or r.random() < 0.15):
            raise eio()
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        nonlocal dir_fsyncs_failed
        if fault == "fsync-eio" and ours(fd) and (not injected or r.random() < 0.3):
            with counting:
                dir_fsyncs_failed += stat.S_ISDIR(os.fstat(fd).st_mode)
            raise eio()
        real_fsync(fd)

    opts = jobs.LakeOptions(concurrency=4, durable=True, small_object_bytes=1 << 20)
    with monkeypatch.context() as m:
        m.setattr(os, "write", write)
        m.setattr(os, "fsync", fsync)
        try:
            report: jobs.JobReport | None = sync.run(
                jobs.encrypt_prefix, str(src), str(dst), keyring=keyring, options=opts
            )
        except OSError as e:  # the job's own files (its lock) failed: the whole job stops
            assert e.errno == errno.EIO, e
            report = None
    assert injected, "nothing injected"
    count(SUITE, f"{fault} injected", injected)
    done = report.done if report else 0
    for f in report.failures if report else ():
        assert "Input/output error" in (f.error or ""), f"unclear failure {f}"
    # A failed fsync of the folder comes after the rename: that object is whole and correct
    # under its name (check_tree decrypted it) but reported failed, as its durability is not
    # known. Every other failure must have left nothing.
    whole = check_tree(tree, dst, keyring, complete=False)
    assert done <= whole <= done + dir_fsyncs_failed
    count(SUITE, "EIO objects failed cleanly", report.failed if report else len(tree))

    again = sync.run(jobs.encrypt_prefix, str(src), str(dst), keyring=keyring, options=opts)
    assert again.ok, again.failures
    check_tree(tree, dst, keyring, complete=True)
    count(SUITE, "jobs re-run to completion")


# -- the KMS store on a full disk -----------------------------------------------------------


@pytest.mark.slow
def test_store_on_a_full_disk(tmp_path: Path) -> None:
    """Key operations on a store whose disk is full: each call is acknowledged or refused
    with a service error; nothing acknowledged is lost, the audit log verifies, and once space
    is back the store works."""
    r = rng("store-enospc")
    with tmpfs(tmp_path / "disk", 4 << 20) as disk:
        home = disk / "home"
        svc = open_service(home)
        keys = [str(svc.create_key()["KeyMetadata"]["KeyId"])]
        acked: list[tuple[str, bytes, bytes]] = []
        refused = 0
        for cycle in range(size(3, 12)):  # full, then free, then full again: both transitions
            filler = fill(disk) if cycle % 2 == 0 else None
            for i in range(size(25, 100)):
                try:
                    if i % 5 == 0:
                        keys.append(str(svc.create_key()["KeyMetadata"]["KeyId"]))
                    else:
                        kid = keys[r.randrange(len(keys))]
                        out = svc.generate_data_key(key_id=kid, key_spec="AES_256")
                        acked.append((kid, out["CiphertextBlob"], out["Plaintext"]))
                except KmsServiceError:
                    refused += 1
                except Exception as e:  # the finding: untyped out of the service
                    raise AssertionError(f"untyped {type(e).__name__} on a full disk: {e}") from e
            if filler is not None:
                filler.unlink()
        assert refused and acked, (refused, len(acked))
        count(SUITE, "ENOSPC store calls refused", refused)
        count(SUITE, "ENOSPC store calls acknowledged", len(acked))
        svc.close()

        svc = open_service(home)
        try:
            for kid in keys:
                assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "Enabled"
            for _kid, blob, plaintext in acked:
                assert svc.decrypt(ciphertext_blob=blob)["Plaintext"] == plaintext
            svc.generate_data_key(key_id=keys[0], key_spec="AES_256")
            report = svc.verify_audit_log()
            assert report.ok, report.problem
        finally:
            svc.close()
        count(SUITE, "jobs re-run to completion")


# -- connection resets on the way to S3 (moto) ----------------------------------------------


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    """moto's S3 server in its own process on a free loopback port; stopped by its pid."""
    import socket
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto server did not start")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _s3_uri(port: int, path: str) -> str:
    return (
        f"s3://test:test@{path}?endpoint_override=127.0.0.1%3A{port}&scheme=http&region=us-east-1"
    )


@pytest.mark.slow
def test_connection_resets_to_s3(moto_port: int, tmp_path: Path) -> None:
    """A lake job to S3 through a proxy that resets a share of its connections: every object
    in the bucket is whole and correct, none is a temporary, failures are reported, and a
    re-run straight to the server completes."""
    import pyarrow.fs as pafs

    from envelope.lake.sinks import is_temporary

    from .resetproxy import ResetProxy

    r = rng("s3-reset")
    src = tmp_path / "src"
    sizes = [r.randrange(0, 60_000) for _ in range(size(20, 120))] + [10 << 20]
    tree = make_tree(src, sizes, r)
    direct = pafs.S3FileSystem(
        access_key="test",
        secret_key="test",
        endpoint_override=f"127.0.0.1:{moto_port}",
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    direct.create_dir("lake")
    kms = MemoryKms()
    keyring = Keyring(kms, kms.create_key("s3"))
    proxy = ResetProxy(("127.0.0.1", moto_port), rate=0.5, seed=r.randrange(1 << 30))
    try:
        try:
            report: jobs.JobReport | None = sync.run(
                jobs.encrypt_prefix, str(src), _s3_uri(proxy.port, "lake/enc"), keyring=keyring
            )
        except (OSError, EnvelopeError) as e:  # the job's own calls (listing, lock) failed
            report = None
            assert str(e), "an error without a message"
    finally:
        proxy.close()
    assert proxy.resets, "no connection was reset: the test would pass trivially"
    count(SUITE, "connection resets injected", proxy.resets)
    count(SUITE, "connections through the reset proxy", proxy.connections)

    def check(complete: bool) -> int:
        infos = direct.get_file_info(pafs.FileSelector("lake/enc", recursive=True))
        names = {i.path[len("lake/enc/") :] for i in infos if i.type == pafs.FileType.File}
        assert not [n for n in names if is_temporary(n)], f"temporary keys left: {names}"
        objects = {n for n in names if not n.endswith(".envelope-lock")}
        assert objects <= set(tree)
        for rel in objects:
            with direct.open_input_stream(f"lake/enc/{rel}") as f:
                data = f.read()
            got = sync.decrypt_bytes(data, keyring=keyring, expected_context={PATH_KEY: rel})
            assert bytes(got) == tree[rel], f"{rel}: wrong bytes under its key {where()}"
        if complete:
            assert objects == set(tree) and len(names) == len(objects), names
        return len(objects)

    whole = check(complete=False)
    if report is not None:
        assert whole == report.done
        for f in report.failures:
            assert f.error, f"failure without a reason: {f}"
        count(SUITE, "objects failed cleanly (resets)", report.failed)
    again = sync.run(jobs.encrypt_prefix, str(src), _s3_uri(moto_port, "lake/enc"), keyring=keyring)
    assert again.ok, again.failures
    check(complete=True)
    count(SUITE, "jobs re-run to completion")
