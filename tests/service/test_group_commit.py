"""Group commit: calls from many threads share commits, and each is still its own call.

Every call is acknowledged only after the commit that holds it, a refused call inside a shared
commit is rolled back to its savepoint and recorded as refused, and the audit chain has exactly
one record per call, in a valid chain.
"""

from __future__ import annotations

import threading
from pathlib import Path

from envelope.service import KeyService
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
