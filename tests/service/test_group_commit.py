"""Group commit: calls from many threads share commits, and each is still its own call.

Every call is acknowledged only after the commit that holds it, a refused call inside a shared
commit is rolled back to its savepoint and recorded as refused, and the audit chain has exactly
one record per call, in a valid chain.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import statistics
import threading
import time
from pathlib import Path

import pytest

from envelope.service import KeyService
from envelope.service._core import _LOCAL, _Call, _Slot
from envelope.service.errors import KmsServiceError, NotFoundException

from .conftest import FakeClock, new_key, open_store

THREADS = 8
CALLS = 60


def _storm(svc: KeyService, kid: str) -> tuple[list[bytes], list[str], list[BaseException]]:
    blobs: list[bytes] = []
    refusals: list[str] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def worker(n: int) -> None:
        start.wait()
        for i in range(CALLS):
            try:
                if i % 10 == 3:  # a refused call in the middle of everyone's commits
                    svc.encrypt(key_id=f"alias/missing-{n}", plaintext=b"x")
                    continue
                out = svc.generate_data_key(
                    key_id=kid, key_spec="AES_256", encryption_context={"t": str(n)}
                )
                with lock:
                    blobs.append(out["CiphertextBlob"])
            except NotFoundException as e:
                with lock:
                    refusals.append(e.code)
            except BaseException as e:  # any other outcome is reported by the test
                with lock:
                    unexpected.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return blobs, refusals, unexpected


def test_threads_share_commits_and_every_call_stands_alone(home: Path, clock: FakeClock) -> None:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    before = len(svc.audit_tail(10**6))
    blobs, refusals, unexpected = _storm(svc, kid)
    assert unexpected == []
    assert len(refusals) == THREADS * (CALLS // 10)
    assert len(blobs) == THREADS * CALLS - len(refusals)
    # every acknowledged data key is durable and opens with its own context
    svc.close()
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    for blob in blobs[:: max(1, len(blobs) // 40)]:
        ctx = None
        for n in range(THREADS):
            try:
                svc.decrypt(ciphertext_blob=blob, encryption_context={"t": str(n)})
                ctx = n
                break
            except KmsServiceError:
                continue
        assert ctx is not None
    records = svc.audit_tail(10**6)
    calls = records[before:]
    storm = [r for r in calls if r["operation"] in ("GenerateDataKey", "Encrypt")]
    assert len(storm) == THREADS * CALLS
    refused = [r for r in storm if r["outcome"] == "error"]
    assert len(refused) == len(refusals)
    assert all(r["operation"] == "Encrypt" for r in refused)
    assert svc.verify_audit_log().ok
    svc.close()


def test_group_commit_can_be_turned_off(home: Path, clock: FakeClock) -> None:
    svc = KeyService(open_store(home), clock=clock, owns_store=True, group_commit=False)
    kid = new_key(svc)
    blobs, refusals, unexpected = _storm(svc, kid)
    assert unexpected == [] and len(blobs) + len(refusals) == THREADS * CALLS
    assert svc.verify_audit_log().ok
    svc.close()


class _SlowCommits(KeyService):
    """Every commit takes 5 ms with the GIL released, as an fsync does; records how many
    calls were waiting when each commit began."""

    waiting: list[int]

    def _commit_pending(self) -> bool:
        time.sleep(0.005)
        self.waiting.append(len(self._pending))
        return super()._commit_pending()


def test_a_slow_commit_is_shared_by_every_thread_waiting_for_it(
    home: Path, clock: FakeClock
) -> None:
    # A thread whose call was committed must learn it at once, not queue behind the next
    # leader's whole commit: then the next commit holds nearly every thread's next call.
    svc = _SlowCommits(open_store(home), clock=clock, owns_store=True)
    svc.waiting = []
    kid = new_key(svc)
    start = threading.Barrier(THREADS)

    def worker() -> None:
        start.wait()
        for _ in range(25):
            svc.generate_data_key(key_id=kid, key_spec="AES_256")

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    groups = svc.waiting[1:]  # (the first may start before the others arrive)
    assert statistics.median(groups) >= THREADS - 2, groups
    assert sum(1 for r in svc.audit_tail(10**6) if r["operation"] == "GenerateDataKey") == (
        THREADS * 25
    )
    svc.close()


def test_an_interrupted_waiting_call_is_not_run_later(home: Path, clock: FakeClock) -> None:
    # The caller saw KeyboardInterrupt while its call waited for another thread's commit: it
    # must not be run afterwards behind its back, and the calls after it must not hang.
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    entered, release = threading.Event(), threading.Event()
    real = svc._commit_pending

    def held() -> bool:
        entered.set()
        release.wait(30)
        return real()

    svc._commit_pending = held  # type: ignore[method-assign]
    leader = threading.Thread(
        target=svc.generate_data_key, kwargs={"key_id": kid, "key_spec": "AES_256"}
    )
    leader.start()
    assert entered.wait(30)
    svc._commit_pending = real  # type: ignore[method-assign]
    interrupter = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        svc.encrypt(key_id=kid, plaintext=b"abandoned", encryption_context={"who": "main"})
    release.set()
    leader.join(30)
    assert not leader.is_alive()
    done = threading.Thread(target=svc.encrypt, kwargs={"key_id": kid, "plaintext": b"later"})
    done.start()
    done.join(30)
    assert not done.is_alive()
    ops = [r["operation"] for r in svc.audit_tail(10**6)]
    assert ops.count("GenerateDataKey") == 1
    assert ops.count("Encrypt") == 1  # the later one only
    assert svc.verify_audit_log().ok
    svc.close()


def test_the_lead_passes_to_the_oldest_waiting_call(home: Path, clock: FakeClock) -> None:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    call = svc.describe_key  # (any fn: these slots are never run)
    a, b, c = (_Slot(_Call("Encrypt", "p", _LOCAL, {}), lambda *x: call(key_id=kid)) for _ in "abc")
    svc._pending[:] = [b, c]
    svc._leading = True
    a.lead = True
    a.succeed({})
    svc._pass_lead(a)
    assert b.lead and not b.wake.locked() and c.wake.locked() and svc._leading
    # b was handed the lead but its thread was interrupted before its call ran: it leaves the
    # queue and hands the lead on
    svc._pass_lead(b)
    assert svc._pending == [c] and c.lead and not c.wake.locked()
    c.succeed({})
    svc._pending.clear()
    svc._pass_lead(c)
    assert not svc._leading
    svc.close()


def test_a_forked_child_never_runs_the_parents_waiting_calls(home: Path, clock: FakeClock) -> None:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    ran = home / "orphan-ran"

    def orphan(conn: object, call: object, now: float) -> dict[str, object]:
        ran.write_text("ran")
        return {}

    # another thread's call, queued behind a leader, when this thread forks
    svc._pending.append(_Slot(_Call("Encrypt", svc.root_principal, _LOCAL, {}), orphan))
    svc._leading = True
    pid = os.fork()
    if pid == 0:  # the child: a call of its own works, and runs only itself
        code = 1
        try:
            svc.generate_data_key(key_id=kid, key_spec="AES_256")
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child's call hung behind the parent's queue")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not ran.exists()
    svc._pending.clear()
    svc._leading = False
    svc.close()


def test_a_lost_lead_is_taken_over(home: Path, clock: FakeClock) -> None:
    """A leader interrupted in its hand-over (a KeyboardInterrupt between two bytecodes of
    its clean-up) left the lead taken by nobody: every later call waited for ever. A waiting
    call that hears nothing for a while leads itself when nobody holds the store lock."""
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    svc._leading = True  # as such a leader leaves it
    done = threading.Thread(
        target=svc.generate_data_key, kwargs={"key_id": kid, "key_spec": "AES_256"}
    )
    done.start()
    done.join(30)
    assert not done.is_alive()
    assert svc._leading is False and svc._pending == []
    svc.close()


def test_a_call_already_handed_the_lead_is_not_handed_it_again(
    home: Path, clock: FakeClock
) -> None:
    """After a takeover (`_lead_lost`) two threads may lead for a while; the second to hand
    over must not hand the same waiting call the lead again (its lock, already released,
    raised RuntimeError in that leader's clean-up)."""
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    a, b, f = (_Slot(_Call("Encrypt", "p", _LOCAL, {}), lambda *x: {}) for _ in "abf")
    svc._pending[:] = [f]
    svc._leading = True
    f.lead = True
    f.wake.release()  # handed the lead by the first leader; its thread not yet awake
    for leader in (a, b):
        leader.lead = True
        leader.succeed({})
        svc._pass_lead(leader)
    assert svc._leading and svc._pending == [f] and not f.wake.locked()
    svc._pending.clear()
    svc.close()


class _CommitFailsOnce:
    """The store's connection, whose next COMMIT fails once (a full disk, an I/O error)."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self._real = real
        self.armed = False
        self.failed = 0

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if self.armed and sql == "COMMIT":
            self.armed = False
            self.failed += 1
            raise sqlite3.OperationalError("database or disk is full (injected)")
        return self._real.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def test_a_failed_group_commit_is_run_again_from_scratch(home: Path, clock: FakeClock) -> None:
    """A batch whose commit fails runs again call by call, and each call kept what its
    rolled-back attempt found: the material of an automatic rotation that was never
    committed served every later data key of the process (no other process could decrypt
    them), and its audit record listed its statements and material ids twice (review)."""
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    svc.enable_key_rotation(key_id=kid, rotation_period_in_days=90)
    clock.now += 91 * 86400  # the next call rotates: new material, written in its transaction
    failing = _CommitFailsOnce(svc.store._conn)
    svc.store._conn = failing  # type: ignore[assignment]
    results: dict[int, tuple[bytes, bytes]] = {}

    def call(i: int) -> None:
        out = svc.generate_data_key(key_id=kid, key_spec="AES_256")
        results[i] = (out["CiphertextBlob"], out["Plaintext"])

    svc.custom_key_store_types()  # (read once, outside the lock held below)
    with svc.store.lock:  # no commit starts: every call queues for one batch
        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(svc._pending) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        failing.armed = True
    for t in threads:
        t.join()
    svc.store._conn = failing._real  # type: ignore[assignment]
    assert failing.failed == 1 and len(results) == 4
    svc.close()
    fresh = KeyService(open_store(home), clock=clock, owns_store=True)  # another process's view
    try:
        for blob, plaintext in results.values():
            assert fresh.decrypt(ciphertext_blob=blob)["Plaintext"] == plaintext
        records = [r for r in fresh.audit_tail(100) if r["operation"] == "GenerateDataKey"]
        assert len(records) == 4
        for r in records:
            assert r["matched"] == "key-policy:Enable IAM User Permissions", r
            assert len(r["key_material_ids"]) == 1, r  # type: ignore[arg-type]
    finally:
        fresh.close()
