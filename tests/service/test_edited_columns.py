"""A store edited outside the KMS in ways its MACs never see: wrong column types, text that is
not UTF-8, a corrupt page, odd digest files.

SQLite keeps any value in any column, so someone who can write the file can put text where the
service wrote a BLOB, or bytes that are not UTF-8 in a text column. Found by an adversarial
review: such edits made calls fail with a raw ``TypeError`` (unaudited) or a retryable "store
failed", and `envelope audit verify` and `audit tail` end in tracebacks instead of naming the
problem; a corrupt page was a traceback (exit 1, the "tampered" code) instead of "corrupt"
(exit 2); a digest with a huge time crashed verify; a FIFO under a digest's name hung every
command; a deleted store passed `audit verify --digests`; an appended record that is valid JSON
but not an object passed verify. Each is now a typed refusal, audited where a call was made.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from envelope.service import KeyService
from envelope.service.audit import chain_hash
from envelope.service.errors import TamperedStoreError

from .conftest import FakeClock, new_key, open_store
from .test_cli import run


@pytest.fixture(autouse=True)
def env_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENVELOPE_HOME", str(home))
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    return home


def edit(home: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(home / "kms.sqlite3", isolation_level=None)
    try:
        conn.execute(sql, args)
    finally:
        conn.close()


def last_record(home: Path) -> tuple[str, str | None, int]:
    """(operation, error code, alarm) of the newest audit record."""
    conn = sqlite3.connect(home / "kms.sqlite3")
    try:
        (body,) = conn.execute("SELECT body FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    record = json.loads(body)
    return record["operation"], record.get("error_code"), int(record.get("alarm", 0))


@pytest.fixture
def key(home: Path, clock: FakeClock) -> str:
    with KeyService(open_store(home), clock=clock, owns_store=True) as svc:
        kid = new_key(svc)
        svc.generate_data_key(key_id=kid, key_spec="AES_256")
    return kid


def refused_as_tampering(home: Path, clock: FakeClock, kid: str) -> str:
    """A GenerateDataKey on `kid` is refused as tampering, and audited as an alarm."""
    with KeyService(open_store(home), clock=clock, owns_store=True) as svc:
        with pytest.raises(TamperedStoreError) as e:
            svc.generate_data_key(key_id=kid, key_spec="AES_256")
    assert last_record(home) == ("GenerateDataKey", "KMSInternalException", 1)
    return str(e.value)


def test_a_key_row_that_is_not_utf8_is_tampering(
    home: Path, clock: FakeClock, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a retryable "store failed" (the local backend retried it) with no alarm."""
    edit(home, "UPDATE keys SET meta = CAST(CAST(meta AS BLOB) || X'FF' AS TEXT)")
    message = refused_as_tampering(home, clock, key)
    assert "not UTF-8" in message and "'meta'" in message
    capsys.readouterr()
    assert run(["audit", "verify"]) == 1
    assert "ALARM" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["x", 1.5, 7])
def test_key_material_of_another_type_is_tampering(
    home: Path, clock: FakeClock, key: str, value: object
) -> None:
    """Text or a real number in the material column was a raw TypeError, unaudited."""
    edit(home, "UPDATE material SET sealed=?", value)
    assert "not stored as bytes" in refused_as_tampering(home, clock, key)


def test_a_replaced_seal_counter_is_tampering_not_a_wrong_root_key(
    home: Path, clock: FakeClock, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another sealed value put in its place read as "wrong root key or passphrase"."""
    edit(
        home,
        "UPDATE meta SET value=(SELECT value FROM meta WHERE name='fingerprint_key') "
        "WHERE name='seal_counter'",
    )
    capsys.readouterr()
    assert run(["keys", "list"]) == 3
    err = capsys.readouterr().err
    assert "ALARM" in err and "seal counter" in err and "wrong root key" not in err


def test_a_seal_counter_of_another_type_is_tampering(
    home: Path, clock: FakeClock, key: str
) -> None:
    edit(home, "UPDATE meta SET value='x' WHERE name='seal_counter'")
    with KeyService(open_store(home), clock=clock, owns_store=True) as svc:
        svc.seal_on_close = False
        svc.describe_key(key_id=key)  # (a record above the last seal: sealing reads the counter)
        with pytest.raises(TamperedStoreError, match="seal counter"):
            svc.seal_audit_log()


def test_a_deleted_fingerprint_key_is_tampering(home: Path, clock: FakeClock) -> None:
    """ImportKeyMaterial was a raw TypeError ('NoneType' is not subscriptable), unaudited."""
    with KeyService(open_store(home), clock=clock, owns_store=True) as svc:
        kid = new_key(svc, origin="EXTERNAL")
        params = svc.get_parameters_for_import(
            key_id=kid, wrapping_algorithm="RSAES_OAEP_SHA_256", wrapping_key_spec="RSA_2048"
        )
    edit(home, "DELETE FROM meta WHERE name='fingerprint_key'")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    public = serialization.load_der_public_key(params["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey)
    wrapped = public.encrypt(
        os.urandom(32),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    with KeyService(open_store(home), clock=clock, owns_store=True) as svc:
        with pytest.raises(TamperedStoreError, match="fingerprint key"):
            svc.import_key_material(
                key_id=kid,
                import_token=params["ImportToken"],
                encrypted_key_material=wrapped,
                expiration_model="KEY_MATERIAL_DOES_NOT_EXPIRE",
            )
    assert last_record(home) == ("ImportKeyMaterial", "KMSInternalException", 1)


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("UPDATE audit SET body = CAST(X'7B22FF227D' AS TEXT) WHERE seq=2", "record 2"),
        ("UPDATE audit SET hash = 'x' WHERE seq = (SELECT MAX(seq) FROM audit)", "record"),
        ("UPDATE seals SET chain = 'x'", "seal"),
    ],
)
def test_audit_verify_names_an_edited_column_instead_of_a_traceback(
    home: Path, key: str, capsys: pytest.CaptureFixture[str], sql: str, named: str
) -> None:
    assert run(["audit", "seal"]) == 0
    edit(home, sql)
    capsys.readouterr()
    assert run(["audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and named in err


def test_an_appended_record_that_is_not_an_object_fails_verify_and_tail_shows_it(
    home: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid-JSON non-object with a correct hash, above the last seal, passed verify (only
    "check them") and made `audit tail` crash."""
    conn = sqlite3.connect(home / "kms.sqlite3")
    seq, h = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    body = '["not a record"]'
    conn.execute(
        "INSERT INTO audit(seq, prev, hash, body) VALUES (?,?,?,?)",
        (seq + 1, h, chain_hash(seq + 1, bytes(h), body), body),
    )
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert run(["audit", "verify"]) == 1
    assert f"record {seq + 1}: is not an audit record" in capsys.readouterr().err
    assert run(["audit", "tail", "-n", "2", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)["Records"]
    assert records[-1]["seq"] == seq + 1 and "malformed" in records[-1]


def test_a_corrupt_page_is_a_corrupt_store_exit_2(
    home: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was `sqlite3.DatabaseError` in a traceback, exit 1 (the code for "tampered")."""
    with KeyService(open_store(home), clock=clock, owns_store=True) as svc:
        kid = new_key(svc)
        for _ in range(600):
            svc.generate_data_key(key_id=kid, key_spec="AES_256")
    conn = sqlite3.connect(home / "kms.sqlite3")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='audit'").fetchone()
    conn.close()
    with open(home / "kms.sqlite3", "r+b") as f:  # the audit table's root page header
        f.seek((root - 1) * page)
        f.write(b"\xff" * 16)
    for argv in (["audit", "verify"], ["audit", "tail"], ["audit", "seal"]):
        capsys.readouterr()
        assert run(argv) == 2, argv
        assert "is corrupt" in capsys.readouterr().err


def test_an_edited_digest_time_is_reported_not_a_crash(
    home: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`float(10**400)` raised OverflowError before the signature was checked."""
    assert run(["audit", "seal"]) == 0
    folder = home.parent / f"{home.name}.audit-digests"
    path = sorted(folder.iterdir())[-1]
    digest = json.loads(path.read_text())
    digest["time"] = 10**400
    path.write_text(json.dumps(digest))
    capsys.readouterr()
    assert run(["audit", "verify"]) == 1
    assert "'time' is out of range" in capsys.readouterr().err


def envelope(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=120,  # (a regression hangs for ever: this turns it into a failure)
        env={**os.environ, "ENVELOPE_HOME": str(home)},
    )


def test_a_fifo_among_the_digests_hangs_nothing(home: Path, key: str) -> None:
    """Every open of the store publishes digests, and reading a FIFO under a digest's name
    waited for a writer: every command hung (a denial of service by one `mkfifo`)."""
    folder = home.parent / f"{home.name}.audit-digests"
    names = sorted(p.name for p in folder.iterdir())
    number = int(names[-1].split("-")[1].split(".")[0]) + 1
    os.mkfifo(folder / f"digest-{number:012d}.json")
    listed = envelope(home, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    verified = envelope(home, "audit", "verify")
    assert verified.returncode == 1 and "not a regular file" in verified.stderr


def test_a_deleted_store_with_its_root_key_left_fails_verify(
    home: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit verify --digests D` exited 0 with only a note when the store was deleted."""
    assert run(["audit", "seal"]) == 0
    digests = home.parent / f"{home.name}.audit-digests"
    (home / "kms.sqlite3").unlink()
    capsys.readouterr()
    assert run(["audit", "verify", "--digests", str(digests)]) == 1
    assert "the store was deleted" in capsys.readouterr().err
    assert run(["audit", "verify"]) == 1
    # a folder that never held a store: the digests alone, as before
    elsewhere = home.parent / "never"
    elsewhere.mkdir()
    assert run(["audit", "verify", "--home", str(elsewhere), "--digests", str(digests)]) == 0
