"""Audit digests outside the store catch cuts, rewritten chains and rollbacks (issue 8, finding 2).

Before the fix each of these stores verified, because the only anchor was inside the file an
attacker could rewrite: every test first shows that the store-only check is still fooled, then
that the digests are not.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from envelope.service import KeyService, digests
from envelope.service.audit import chain_hash
from envelope.service.digests import DigestLocation, parse, verify_chain

from ..lake.conftest import S3, s3_server  # noqa: F401  (the moto server fixture)
from .conftest import FakeClock, new_key, open_store
from .test_cli import run

SESSIONS = 5
CALLS = 12


def session(home: Path, clock: FakeClock, calls: int = CALLS) -> None:
    """One process's worth of calls, then close: one seal, one digest."""
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    for _ in range(calls - 1):
        clock.advance(1)
        svc.generate_data_key(key_id=kid, key_spec="AES_256")
    svc.close()


@pytest.fixture
def logged(home: Path, clock: FakeClock) -> Path:
    for _ in range(SESSIONS):
        session(home, clock)
    return home


def digests_of(home: Path) -> Path:
    return home.parent / f"{home.name}.audit-digests"


def db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "kms.sqlite3", isolation_level=None)


def check(home: Path, clock: FakeClock) -> tuple[bool, list[str]]:
    """(store-only audit verdict, problems found against the digests)."""
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    try:
        alone = svc.verify_audit_log().ok and not svc.check_store()
        chain, against, _ = svc.check_digests()
    finally:
        svc.store.close()  # no new seal: look at the store as it was left
    return alone, chain.problems + against


def digest_records(home: Path, counter: int) -> int:
    return parse((digests_of(home) / f"digest-{counter:012d}.json").read_bytes()).records


def test_every_close_publishes_a_chained_signed_digest(logged: Path, clock: FakeClock) -> None:
    chain = verify_chain(DigestLocation(digests_of(logged)))
    assert chain.problems == []
    assert [d.counter for d in chain.digests] == list(range(1, SESSIONS + 1))
    assert chain.digests[0].previous is None
    for before, after in zip(chain.digests, chain.digests[1:], strict=False):
        assert after.previous == (before.name, before.sha256)
    conn = db(logged)
    last = conn.execute("SELECT MAX(seq), COUNT(*) FROM audit").fetchone()
    assert chain.digests[-1].records == last[0] == last[1]
    conn.close()
    assert check(logged, clock) == (True, [])
    assert not any(p.name.endswith(".tmp") for p in digests_of(logged).iterdir())


def test_cut_with_the_seals_above_it_is_detected(logged: Path, clock: FakeClock) -> None:
    keep = digest_records(logged, 3)
    conn = db(logged)
    conn.execute("DELETE FROM audit WHERE seq > ?", (keep,))
    conn.execute("DELETE FROM seals WHERE seq > ?", (keep,))
    conn.close()
    alone, problems = check(logged, clock)
    assert alone  # the store alone cannot tell
    assert any("shorter than digest-000000000004.json" in p for p in problems), problems
    assert any("seal counter is 5 but its last seal is 3" in p for p in problems)


def test_a_cut_hidden_by_renumbering_a_seal_row_is_detected(
    logged: Path, clock: FakeClock
) -> None:
    """The counter and published columns of a seal row are not signed: a cut above seal 3,
    its row renumbered to the counter the store expects (5) and marked not yet published,
    the digests deleted, passed every check (review). The row's own signed digest says which
    seal it is."""
    keep = digest_records(logged, 3)
    conn = db(logged)
    conn.execute("DELETE FROM audit WHERE seq > ?", (keep,))
    conn.execute("DELETE FROM seals WHERE seq > ?", (keep,))
    conn.execute("UPDATE seals SET counter=?, published=0 WHERE seq=?", (SESSIONS, keep))
    conn.close()
    shutil.rmtree(digests_of(logged))
    _, problems = check(logged, clock)
    assert any(
        f"seal at record {keep} says it is seal {SESSIONS}, but its signed digest is seal 3"
        in p
        for p in problems
    ), problems


def test_a_digest_published_during_the_check_is_no_alarm(
    logged: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check lists the digests, then reads the store: a server that seals and publishes
    in between made the store's newest published seal look deleted from the digests ("the
    latest digests were deleted", exit 1, against a busy server; review). It is looked for by
    name first; one really deleted is still reported (see the test of deleted digests)."""
    real = digests.verify_chain

    def listing_then_a_seal(*args: object, **kwargs: object) -> digests.ChainReport:
        chain = real(*args, **kwargs)  # type: ignore[arg-type]
        session(logged, clock, calls=2)  # another process seals and publishes meanwhile
        return chain

    monkeypatch.setattr(digests, "verify_chain", listing_then_a_seal)
    _, problems = check(logged, clock)
    assert problems == []
    monkeypatch.undo()
    (digests_of(logged) / f"digest-{SESSIONS + 1:012d}.json").unlink()
    _, problems = check(logged, clock)
    assert any("the latest digests were deleted" in p for p in problems), problems


def test_rewritten_chain_with_later_seals_deleted_is_detected(
    logged: Path, clock: FakeClock
) -> None:
    first = digest_records(logged, 2) + 3
    conn = db(logged)
    conn.execute("DELETE FROM seals WHERE seq >= ?", (first,))
    prev = conn.execute("SELECT hash FROM audit WHERE seq=?", (first - 1,)).fetchone()[0]
    for seq, body in conn.execute(
        "SELECT seq, body FROM audit WHERE seq >= ? ORDER BY seq", (first,)
    ).fetchall():
        if seq == first:
            body = body.replace('"outcome":"ok"', '"outcome":"error"')
        h = chain_hash(seq, prev, body)
        conn.execute("UPDATE audit SET prev=?, hash=?, body=? WHERE seq=?", (prev, h, body, seq))
        prev = h
    conn.close()
    alone, problems = check(logged, clock)
    assert alone
    assert any("diverges from digest-000000000003.json" in p for p in problems), problems


def test_store_rolled_back_to_an_older_copy_is_detected(
    home: Path, clock: FakeClock, tmp_path: Path
) -> None:
    for _ in range(2):
        session(home, clock)
    backup = tmp_path / "backup"
    shutil.copytree(home, backup)
    for _ in range(2):
        session(home, clock)
    shutil.rmtree(home)
    shutil.copytree(backup, home)
    alone, problems = check(home, clock)
    assert alone
    assert any("rolled back: its seal counter is 2 but the digests reach 4" in p for p in problems)
    # used again, the rolled-back store cannot overwrite the digests it contradicts
    before = sorted(p.read_bytes() for p in digests_of(home).iterdir())
    session(home, clock)
    assert sorted(p.read_bytes() for p in digests_of(home).iterdir()) == before
    assert check(home, clock)[1]


def test_deleted_or_edited_digest_files_are_detected(logged: Path, clock: FakeClock) -> None:
    folder = digests_of(logged)
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    # the last digest deleted: the chain alone is intact, the store says it was published
    (folder / "digest-000000000005.json").unlink()
    assert verify_chain(DigestLocation(folder)).problems == []
    assert any("digest-000000000005.json was published" in p for p in check(logged, clock)[1])
    # a digest in the middle deleted: the chain breaks
    (folder / "digest-000000000005.json").write_bytes(saved["digest-000000000005.json"])
    (folder / "digest-000000000003.json").unlink()
    problems = verify_chain(DigestLocation(folder)).problems
    assert problems and "digests 3..3 are missing" in problems[0]
    (folder / "digest-000000000003.json").write_bytes(saved["digest-000000000003.json"])
    # a digest edited: its signature fails
    body = json.loads(saved["digest-000000000002.json"])
    body["records"] += 1
    (folder / "digest-000000000002.json").write_text(json.dumps(body))
    problems = verify_chain(DigestLocation(folder)).problems
    assert problems and "signature is invalid" in problems[0]
    # the first digests deleted
    (folder / "digest-000000000002.json").write_bytes(saved["digest-000000000002.json"])
    (folder / "digest-000000000001.json").unlink()
    problems = verify_chain(DigestLocation(folder)).problems
    assert problems and "digests 1..1 are missing" in problems[0]
    (folder / "digest-000000000001.json").write_bytes(saved["digest-000000000001.json"])
    assert check(logged, clock) == (True, [])


def test_a_pinned_fingerprint_refuses_digests_of_another_key(
    logged: Path, clock: FakeClock, tmp_path: Path
) -> None:
    chain = verify_chain(DigestLocation(digests_of(logged)))
    fp = chain.digests[0].fingerprint
    assert verify_chain(DigestLocation(digests_of(logged)), expected_fingerprint=fp).problems == []
    other = tmp_path / "other"
    session(other, clock)
    problems = verify_chain(DigestLocation(digests_of(other)), expected_fingerprint=fp).problems
    assert problems and "not the expected" in problems[0]


def test_cli_verify_against_digests_and_from_a_copy_alone(
    logged: Path,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ENVELOPE_HOME", str(logged))
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENVELOPE_AUDIT_DIGESTS", raising=False)
    assert run(["audit", "verify"]) == 0
    copy = tmp_path / "digest-copy"
    shutil.copytree(digests_of(logged), copy)
    empty = tmp_path / "no-store"
    empty.mkdir()
    capsys.readouterr()
    assert run(["audit", "verify", "--home", str(empty), "--digests", str(copy), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["store"] is None and out["digests"]["digests"] >= SESSIONS
    assert not (empty / "kms.sqlite3").exists()  # verify never creates a store
    # the store checked against the copy: a cut store fails
    conn = db(logged)
    conn.execute("DELETE FROM audit WHERE seq > ?", (digest_records(logged, 2),))
    conn.execute("DELETE FROM seals WHERE seq > ?", (digest_records(logged, 2),))
    conn.close()
    capsys.readouterr()
    assert run(["audit", "verify", "--digests", str(copy)]) == 1
    assert "ALARM" in capsys.readouterr().err
    # an edited copy fails on its own
    victim = sorted(copy.iterdir())[1]
    victim.write_bytes(victim.read_bytes().replace(b'"records":', b'"records":1'))
    assert run(["audit", "verify", "--home", str(empty), "--digests", str(copy)]) == 1
    assert run(["audit", "verify", "--home", str(empty)]) == 2


def test_digests_on_s3(
    home: Path,
    clock: FakeClock,
    s3_server: S3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3_server.reset()
    s3_server.fs(allow_bucket_creation=True).create_dir("audit")
    uri = s3_server.uri("audit/kms-digests")
    monkeypatch.setenv("ENVELOPE_HOME", str(home))
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    for _ in range(3):
        assert run(["keys", "create", "--digests", uri, "--json"]) == 0
    fs = s3_server.fs()
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector("audit/kms-digests")))
    assert names == [f"digest-{n:012d}.json" for n in range(1, 4)]
    assert not (digests_of(home)).exists()
    assert run(["audit", "verify", "--digests", uri]) == 0
    fs.delete_file("audit/kms-digests/digest-000000000002.json")
    assert run(["audit", "verify", "--digests", uri]) == 1


def test_verify_writes_nothing_and_seal_refuses_a_tampered_log(
    logged: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`audit verify` is read-only: it used to seal the log when it closed the store, so a
    record appended outside the KMS (its chain hash is public) was signed and published by
    the administrator's own check, and a cut log was sealed as it stood. Now verify names the
    unsealed records and writes nothing; `audit seal` refuses a log that fails verification."""
    monkeypatch.setenv("ENVELOPE_HOME", str(logged))
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENVELOPE_AUDIT_DIGESTS", raising=False)
    published = sorted(p.name for p in digests_of(logged).iterdir())
    conn = db(logged)
    seq, h = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    body = json.dumps({"operation": "Decrypt", "principal": "arn:aws:iam::000000000000:user/x",
                       "decision": "allowed"}, sort_keys=True, separators=(",", ":"))  # fmt: skip
    conn.execute(
        "INSERT INTO audit(seq, prev, hash, body) VALUES (?,?,?,?)",
        (seq + 1, h, chain_hash(seq + 1, h, body), body),
    )
    conn.close()
    capsys.readouterr()
    for _ in range(2):
        assert run(["audit", "verify", "--json"]) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["unsealed_records"] == 1
        assert f"records {seq + 1}..{seq + 1} are above the last seal" in out.err
    assert sorted(p.name for p in digests_of(logged).iterdir()) == published
    assert run(["audit", "tail", "-n", "1"]) == 0
    assert sorted(p.name for p in digests_of(logged).iterdir()) == published
    # a log found tampered with is never sealed, by `audit seal` either
    conn = db(logged)
    conn.execute("UPDATE audit SET body = replace(body, 'allowed', 'denied') WHERE seq = 3")
    conn.close()
    assert run(["audit", "seal"]) == 1
    assert "refusing to seal" in capsys.readouterr().err
    assert sorted(p.name for p in digests_of(logged).iterdir()) == published


def test_a_digest_location_never_shows_its_credentials(
    home: Path,
    s3_server: S3,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``--digests s3://KEY:SECRET@bucket/...`` put the secret in the location's str and repr,
    the warning and the error when publishing failed, and ``audit verify --json`` (the query
    was stripped, the userinfo was not: review)."""
    s3_server.reset()
    secret = "S3DIGESTSECRETvalue"
    uri = s3_server.uri("nosuchbucket/dig").replace("test:test@", f"AKDIG:{secret}@")
    where = DigestLocation(uri)
    assert secret not in str(where) and secret not in repr(where) and "AKDIG:***@" in str(where)
    monkeypatch.setenv("ENVELOPE_HOME", str(home))
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    caplog.set_level("DEBUG")
    run(["keys", "create", "--digests", uri, "--json"])  # the bucket is missing: not published
    run(["audit", "verify", "--digests", uri, "--json"])
    out, err = capsys.readouterr()
    shown = out + err + caplog.text
    assert "nosuchbucket" in shown  # it did report the location
    assert secret not in shown


def test_a_home_reached_through_a_link_keeps_one_digest_folder(
    home: Path, clock: FakeClock
) -> None:
    """Used through a link and through its target, a home's digests went to two folders
    (``link.audit-digests`` and ``home.audit-digests``), each "missing" the other's: both
    spellings failed `audit verify` on an untampered store (review)."""
    home.mkdir()
    link = home.parent / "link"
    link.symlink_to(home, target_is_directory=True)
    for spelling in (home, link, home, link):
        session(spelling, clock)
    assert not digests_of(link).exists()
    assert len(list(digests_of(home).iterdir())) == 4
    for spelling in (home, link):
        assert check(spelling, clock) == (True, [])


def test_a_digest_folder_beside_a_link_made_earlier_is_kept(home: Path, clock: FakeClock) -> None:
    """A home used only through its link by an earlier release has its digests beside the
    link: their chain goes on there, not in a new folder beside the target."""
    home.mkdir()
    link = home.parent / "link"
    link.symlink_to(home, target_is_directory=True)
    session(link, clock)
    digests_of(home).rename(digests_of(link))  # where an earlier release put them
    session(link, clock)
    assert not digests_of(home).exists()
    assert len(list(digests_of(link).iterdir())) == 2
    assert check(link, clock) == (True, [])
