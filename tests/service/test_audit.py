"""The audit log: every call is one record, and each kind of tampering is caught where it starts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from envelope.service import KeyService, KmsServiceError
from envelope.service.audit import SEAL_EVERY, chain_hash

from .conftest import FakeClock, new_key, open_store

N_RECORDS = SEAL_EVERY * 2 + 40  # two periodic seals and an unsealed tail, before close


@pytest.fixture
def logged(home: Path, clock: FakeClock) -> Iterator[Path]:
    """A store with N_RECORDS audit records, closed without a final seal."""
    svc = KeyService(open_store(home), clock=clock, owns_store=False)
    kid = new_key(svc)
    for i in range(N_RECORDS - 2):
        if i % 50 == 0:
            with pytest.raises(KmsServiceError):
                svc.describe_key(key_id="alias/missing")
        else:
            svc.generate_data_key(key_id=kid, key_spec="AES_256")
    svc.rotate_key_on_demand(key_id=kid)
    svc.store.close()  # no seal on close: the last 40 records are covered by the chain only
    yield home


def verify(home: Path, clock: FakeClock) -> tuple[bool, int | None, str]:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    try:
        report = svc.verify_audit_log()
    finally:
        svc.store.close()
    d = report.as_dict()
    return report.ok, d["first_bad_record"], str(d["problem"])  # type: ignore[return-value]


def db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "kms.sqlite3", isolation_level=None)


def test_every_call_is_one_record(logged: Path, clock: FakeClock) -> None:
    ok, bad, _ = verify(logged, clock)
    assert ok and bad is None
    conn = db(logged)
    rows = [json.loads(b) for (b,) in conn.execute("SELECT body FROM audit ORDER BY seq")]
    seals = [s for (s,) in conn.execute("SELECT seq FROM seals ORDER BY seq")]
    conn.close()
    assert len(rows) == N_RECORDS
    assert seals == [SEAL_EVERY, 2 * SEAL_EVERY]
    refused = [r for r in rows if r["outcome"] == "error"]
    assert refused and all(r["error_code"] == "NotFoundException" for r in refused)
    assert {r["operation"] for r in rows} == {
        "CreateKey",
        "GenerateDataKey",
        "DescribeKey",
        "RotateKeyOnDemand",
    }


def test_edited_record(logged: Path, clock: FakeClock) -> None:
    conn = db(logged)
    body = conn.execute("SELECT body FROM audit WHERE seq=100").fetchone()[0]
    conn.execute(
        "UPDATE audit SET body=? WHERE seq=100", (body.replace("GenerateDataKey", "Encrypt"),)
    )
    conn.close()
    ok, bad, problem = verify(logged, clock)
    assert not ok and bad == 100 and "edited" in problem


def test_edited_record_with_rewritten_chain_is_caught_by_the_seal(
    logged: Path, clock: FakeClock
) -> None:
    conn = db(logged)
    rows = conn.execute("SELECT seq, body FROM audit ORDER BY seq").fetchall()
    prev = conn.execute("SELECT hash FROM audit WHERE seq=299").fetchone()[0]
    for seq, body in rows[299:]:
        if seq == 300:
            body = body.replace('"alarm":0', '"alarm":1')
        h = chain_hash(seq, prev, body)
        conn.execute("UPDATE audit SET prev=?, hash=?, body=? WHERE seq=?", (prev, h, body, seq))
        prev = h
    conn.close()
    ok, bad, problem = verify(logged, clock)
    assert not ok and bad == SEAL_EVERY + 1 and "rewritten" in problem


def test_deleted_record(logged: Path, clock: FakeClock) -> None:
    conn = db(logged)
    conn.execute("DELETE FROM audit WHERE seq=77")
    conn.close()
    ok, bad, problem = verify(logged, clock)
    assert not ok and bad == 77 and "missing" in problem


def test_inserted_record(logged: Path, clock: FakeClock) -> None:
    """Shift records 150.. up by one and insert a well-formed forged record at 150."""
    conn = db(logged)
    conn.execute("UPDATE audit SET seq = -seq - 1 WHERE seq >= 150")
    conn.execute("UPDATE audit SET seq = -seq WHERE seq < 0")
    prev = conn.execute("SELECT hash FROM audit WHERE seq=149").fetchone()[0]
    body = conn.execute("SELECT body FROM audit WHERE seq=151").fetchone()[0]
    conn.execute(
        "INSERT INTO audit(seq, prev, hash, body) VALUES (150, ?, ?, ?)",
        (prev, chain_hash(150, prev, body), body),
    )
    conn.close()
    ok, bad, problem = verify(logged, clock)
    assert not ok and bad == 151 and "does not follow" in problem


def test_reordered_records(logged: Path, clock: FakeClock) -> None:
    conn = db(logged)
    a = conn.execute("SELECT prev, hash, body FROM audit WHERE seq=200").fetchone()
    b = conn.execute("SELECT prev, hash, body FROM audit WHERE seq=201").fetchone()
    conn.execute("UPDATE audit SET prev=?, hash=?, body=? WHERE seq=200", b)
    conn.execute("UPDATE audit SET prev=?, hash=?, body=? WHERE seq=201", a)
    conn.close()
    ok, bad, problem = verify(logged, clock)
    assert not ok and bad == 200 and "does not follow" in problem


def test_tail_cut_below_the_last_seal(logged: Path, clock: FakeClock) -> None:
    conn = db(logged)
    conn.execute("DELETE FROM audit WHERE seq > ?", (2 * SEAL_EVERY - 10,))
    conn.close()
    ok, bad, problem = verify(logged, clock)
    assert not ok and bad == 2 * SEAL_EVERY - 9 and "cut" in problem


def test_tail_cut_with_its_seal_removed_is_caught_by_the_mandatory_seal(
    logged: Path, clock: FakeClock
) -> None:
    conn = db(logged)
    conn.execute("DELETE FROM seals WHERE seq = ?", (SEAL_EVERY,))
    conn.close()
    ok, bad, problem = verify(logged, clock)
    assert not ok and bad == 1 and "seal" in problem


def test_forged_seal_signature(logged: Path, clock: FakeClock) -> None:
    conn = db(logged)
    sig = conn.execute("SELECT sig FROM seals WHERE seq=?", (SEAL_EVERY,)).fetchone()[0]
    conn.execute("UPDATE seals SET sig=? WHERE seq=?", (bytes([sig[0] ^ 1]) + sig[1:], SEAL_EVERY))
    conn.close()
    ok, bad, problem = verify(logged, clock)
    assert not ok and bad == SEAL_EVERY and "signature" in problem


def test_replaced_public_key_is_refused_at_open(logged: Path, clock: FakeClock) -> None:
    """The root key is the right one (it opens the verifier): a replaced public key is
    tampering with the store, not a wrong root key."""
    from envelope.service.errors import TamperedStoreError

    conn = db(logged)
    conn.execute("UPDATE meta SET value=? WHERE name='audit_pk'", (bytes(32),))
    conn.close()
    with pytest.raises(TamperedStoreError, match="audit public key"):
        open_store(logged)


def test_tail_cut_above_the_last_seal_is_bounded_by_sealing_on_close(
    logged: Path, clock: FakeClock
) -> None:
    # above the last seal a cut is invisible from the file alone (docs/kms.md) ...
    conn = db(logged)
    conn.execute("DELETE FROM audit WHERE seq > ?", (N_RECORDS - 5,))
    conn.close()
    assert verify(logged, clock)[0]
    # ... which is why close() seals the last record: after it, a cut is detected
    svc = KeyService(open_store(logged), clock=clock, owns_store=True)
    svc.generate_random(number_of_bytes=8)
    svc.close()
    conn = db(logged)
    conn.execute("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
    conn.close()
    ok, bad, problem = verify(logged, clock)
    assert not ok and bad is not None and "cut" in problem


@pytest.mark.parametrize("how", ["close", "finalizer"])
def test_a_removed_store_is_not_sealed_and_its_folder_not_recreated(
    tmp_path: Path, clock: FakeClock, how: str
) -> None:
    """A temporary store removed before its service is closed (a benchmark's or a test's
    scratch folder): sealing it would publish digests beside it and recreate the removed
    folder; there is nothing left to seal."""
    import gc
    import shutil

    from envelope.service import KeyService

    folder = tmp_path / "scratch"
    svc = KeyService(open_store(folder / "home"), clock=clock, owns_store=True)
    svc.create_key()
    shutil.rmtree(folder)
    if how == "close":
        svc.close()
    else:
        del svc
        gc.collect()
    assert not folder.exists()


def test_a_store_opened_by_a_relative_path_is_sealed_after_a_chdir(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store keeps its absolute path: a process that changes directory after opening it by
    a relative path still seals its audit log on close (the file is there)."""
    import sqlite3

    from envelope.service import KeyService

    monkeypatch.chdir(tmp_path)
    svc = KeyService(open_store(Path("home")), clock=clock, owns_store=True)
    svc.create_key()
    monkeypatch.chdir("/")
    svc.close()
    conn = sqlite3.connect(tmp_path / "home" / "kms.sqlite3")
    last = conn.execute("SELECT max(seq) FROM audit").fetchone()[0]
    assert conn.execute("SELECT 1 FROM seals WHERE seq=?", (last,)).fetchone() is not None
    conn.close()
