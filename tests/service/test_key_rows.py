"""Key metadata is authenticated under the root key (issue 8, finding 3).

Before the fix, setting a Disabled key's KeyState to Enabled with an SQLite tool made the key
usable again, and `envelope audit verify` stayed green.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from envelope.errors import KmsKeyError
from envelope.kms.local import LocalKms
from envelope.service import KeyService, open_service
from envelope.service._migrate import VERIFIER
from envelope.service.errors import DisabledException, RootKeyError, TamperedStoreError
from envelope.service.store import Store

from .conftest import FakeClock, new_key, open_store
from .test_cli import run

SCHEMA1 = Path(__file__).parent / "data" / "schema1"


def db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "kms.sqlite3", isolation_level=None)


def edit_meta(home: Path, key_id: str, **changes: object) -> None:
    conn = db(home)
    (text,) = conn.execute("SELECT meta FROM keys WHERE key_id=?", (key_id,)).fetchone()
    meta = json.loads(text)
    meta.update(changes)
    conn.execute(
        "UPDATE keys SET meta=?, gen=gen+1 WHERE key_id=?",
        (json.dumps(meta, sort_keys=True, separators=(",", ":")), key_id),
    )
    conn.close()


def last_record(svc: KeyService) -> dict[str, object]:
    return svc.audit_tail(1)[0]


@pytest.fixture
def disabled(home: Path, clock: FakeClock) -> str:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    svc.disable_key(key_id=kid)
    svc.close()
    return kid


def test_disabled_to_enabled_edit_is_refused_and_is_an_alarm(
    home: Path, clock: FakeClock, disabled: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    with pytest.raises(DisabledException):
        svc.encrypt(key_id=disabled, plaintext=b"x")
    svc.close()
    edit_meta(home, disabled, KeyState="Enabled")
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    with pytest.raises(TamperedStoreError, match=f"key/{disabled}.*fails authentication"):
        svc.encrypt(key_id=disabled, plaintext=b"x")
    record = last_record(svc)
    assert record["operation"] == "Encrypt" and record["alarm"] == 1
    assert record["error_code"] == "KMSInternalException"
    assert any(disabled in p for p in svc.check_store())
    svc.close()
    # the CLI: the key is refused (exit 3, ALARM), and audit verify fails naming the key
    monkeypatch.setenv("ENVELOPE_HOME", str(home))
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    assert run(["keys", "describe", disabled]) == 3
    assert run(["audit", "verify"]) == 1


def test_the_local_backend_refuses_a_tampered_key_without_retrying(
    home: Path, disabled: str
) -> None:
    import asyncio

    edit_meta(home, disabled, KeyState="Enabled")
    kms = LocalKms(open_service(home))
    with pytest.raises(KmsKeyError, match="fails authentication"):
        asyncio.run(kms.generate_data_key(disabled, context={}))
    kms.service.close()


@pytest.mark.parametrize(
    "change",
    [
        {"Description": "edited by mallory"},
        {"DeletionDate": 1.0},
        {"x_rot_period": 90, "x_rot_next": 1.0},
        {"Origin": "EXTERNAL"},
        {"x_tags": {"owner": "mallory"}},
    ],
)
def test_every_metadata_field_is_covered(
    home: Path, clock: FakeClock, change: dict[str, object]
) -> None:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    svc.close()
    edit_meta(home, kid, **change)
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    with pytest.raises(TamperedStoreError):
        svc.describe_key(key_id=kid)
    svc.close()


def test_a_row_copied_onto_another_key_or_region_is_refused(home: Path, clock: FakeClock) -> None:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    enabled = new_key(svc, multi_region=True)
    other = new_key(svc, multi_region=True)
    svc.disable_key(key_id=other)
    svc.replicate_key(key_id=enabled, replica_region="eu-west-1")
    svc.close()
    conn = db(home)
    # other's row takes enabled's (valid) meta and MAC: wrong key id for that MAC
    (meta, mac) = conn.execute(
        "SELECT meta, mac FROM keys WHERE key_id=? AND region='us-east-1'", (enabled,)
    ).fetchone()
    conn.execute(
        "UPDATE keys SET meta=?, mac=?, gen=gen+1 WHERE key_id=?",
        (meta.replace(enabled, other), mac, other),
    )
    # the replica's row takes the primary's meta and MAC: wrong Region for that MAC
    conn.execute(
        "UPDATE keys SET meta=?, mac=?, gen=gen+1 WHERE key_id=? AND region='eu-west-1'",
        (meta, mac, enabled),
    )
    conn.close()
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    with pytest.raises(TamperedStoreError):
        svc.encrypt(key_id=other, plaintext=b"x")
    with pytest.raises(TamperedStoreError):
        svc.for_region("eu-west-1").describe_key(key_id=enabled)
    assert svc.describe_key(key_id=enabled)["KeyMetadata"]["KeyState"] == "Enabled"
    assert len(svc.check_store()) == 2
    svc.close()


def test_edited_key_material_is_reported_by_the_store_check(home: Path, clock: FakeClock) -> None:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    a, b = new_key(svc), new_key(svc)
    svc.close()
    conn = db(home)
    sealed = conn.execute("SELECT sealed FROM material WHERE key_id=?", (a,)).fetchone()[0]
    conn.execute("UPDATE material SET sealed=? WHERE key_id=?", (sealed, b))
    conn.close()
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    problems = svc.check_store()
    assert len(problems) == 1 and b in problems[0] and "material" in problems[0]
    svc.close()


@pytest.mark.parametrize("edit", ["copied", "deleted"])
def test_tampered_key_material_is_refused_as_tampering_with_an_alarm(
    home: Path, clock: FakeClock, edit: str
) -> None:
    """A material row copied from another key was reported at run time as a wrong root key
    (exit 2 from the CLI, no alarm), and a deleted one made every call, even GenerateDataKey,
    an InvalidCiphertextException: the root key opened the verifier, so both are tampering."""
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    a, b = new_key(svc), new_key(svc)
    svc.close()
    conn = db(home)
    if edit == "copied":
        sealed = conn.execute("SELECT sealed FROM material WHERE key_id=?", (a,)).fetchone()[0]
        conn.execute("UPDATE material SET sealed=? WHERE key_id=?", (sealed, b))
    else:
        conn.execute("DELETE FROM material WHERE key_id=?", (b,))
    conn.close()
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    with pytest.raises(TamperedStoreError, match="material"):
        svc.generate_data_key(key_id=b, key_spec="AES_256")
    record = last_record(svc)
    assert record["error_code"] == "KMSInternalException" and record["alarm"] == 1
    problems = svc.check_store()
    assert len(problems) == 1 and b in problems[0] and "material" in problems[0]
    svc.close()


def copy_schema1(kind: str, dest: Path) -> dict[str, str]:
    shutil.copytree(SCHEMA1 / kind, dest)
    if (dest / "root.key").exists():
        (dest / "root.key").chmod(0o600)
    return json.loads((dest / "expect.json").read_text())  # type: ignore[no-any-return]


def test_a_schema1_store_is_upgraded_once_and_recorded(home: Path, clock: FakeClock) -> None:
    expect = copy_schema1("file", home)
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    out = svc.decrypt(
        ciphertext_blob=bytes.fromhex(expect["blob"]),
        encryption_context=expect["context"],  # type: ignore[arg-type]
    )
    assert out["Plaintext"] == bytes.fromhex(expect["plaintext"])
    with pytest.raises(DisabledException):
        svc.encrypt(key_id=expect["disabled"], plaintext=b"x")
    assert svc.describe_key(key_id="alias/v1")["KeyMetadata"]["KeyId"] == expect["enabled"]
    upgrades = [r for r in svc.audit_tail(50) if r["operation"] == "UpgradeStore"]
    assert [u["params"] for u in upgrades] == [
        {"FromSchema": 1, "ToSchema": 2, "KeyRows": 2},
        {"FromSchema": 2, "ToSchema": 3},
        {"FromSchema": 3, "ToSchema": 4},
        {"FromSchema": 4, "ToSchema": 5},
        {"FromSchema": 5, "ToSchema": 6, "Principals": 0},
    ]
    assert svc.verify_audit_log().ok and svc.check_store() == []
    svc.close()
    # opened again: no second upgrade; and the upgraded rows are now protected
    edit_meta(home, expect["disabled"], KeyState="Enabled")
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    assert [r for r in svc.audit_tail(50) if r["operation"] == "UpgradeStore"] == upgrades
    with pytest.raises(TamperedStoreError):
        svc.encrypt(key_id=expect["disabled"], plaintext=b"x")
    svc.close()


def test_a_rolled_back_schema_version_is_refused(home: Path, clock: FakeClock) -> None:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    new_key(svc)
    svc.close()
    conn = db(home)
    conn.execute("UPDATE meta SET value=? WHERE name='schema_version'", (b"1",))
    conn.close()
    with pytest.raises(TamperedStoreError, match="rolled back"):
        open_store(home)


def strip_to_schema1(home: Path) -> None:
    """What an editor of the file does to pass a store off as schema 1 (before row MACs):
    drop every part later schemas added and set schema_version back."""
    conn = db(home)
    conn.execute("ALTER TABLE keys DROP COLUMN mac")
    conn.execute("DROP INDEX seals_counter")
    for column in ("counter", "digest", "published"):
        conn.execute(f"ALTER TABLE seals DROP COLUMN {column}")
    conn.execute("DELETE FROM meta WHERE name IN ('key_row_mac_key', 'seal_counter', 'store_id')")
    conn.execute("UPDATE meta SET value=? WHERE name='schema_version'", (b"1",))
    conn.close()


def schema_version(home: Path) -> int:
    conn = db(home)
    (value,) = conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
    conn.close()
    return int(value)


def as_sealed_before_floors(store: Store) -> None:
    """Seal the store's verifier as versions before schema floors did, and close it."""
    with store.write() as conn:
        conn.execute(
            "UPDATE meta SET value=? WHERE name='verifier'",
            (store.root.seal(VERIFIER, b"verifier"),),
        )
    store.close()


@pytest.mark.parametrize("made", ["new", "upgraded"])
def test_a_store_stripped_to_look_like_schema1_is_refused_not_reauthenticated(
    home: Path, clock: FakeClock, made: str
) -> None:
    """Found by an adversarial review: strip the row MACs, the seal counter and the store id,
    set schema_version to 1, and the next open "upgraded" the store, MACing edited rows as it
    found them (a Disabled key enabled, a key policy opened to everyone), while `envelope audit
    verify` stayed green. The verifier is now sealed with the schema the store was made or last
    upgraded at, so the stripped store is refused and nothing is written to it."""
    if made == "new":
        svc = KeyService(open_store(home), clock=clock, owns_store=True)
        kid = new_key(svc)
        svc.disable_key(key_id=kid)
        svc.close()
    else:
        kid = copy_schema1("file", home)["disabled"]
        open_store(home).close()  # the real upgrade
    strip_to_schema1(home)
    edit_meta(home, kid, KeyState="Enabled")
    with pytest.raises(TamperedStoreError, match="rolled back and its newer parts stripped"):
        open_store(home)
    assert schema_version(home) == 1  # nothing upgraded, nothing re-authenticated
    assert run(["audit", "verify", "--home", str(home)]) == 1


def test_a_store_sealed_before_floors_gets_its_floor_at_the_next_open(
    home: Path, clock: FakeClock
) -> None:
    """A store written by an earlier version has a verifier without a floor: the first open
    by this version seals it with the current schema, after which stripping is refused. (A
    store stripped before that first open is upgraded, and the store check reports the second
    upgrade: `test_a_faked_schema1_store_opened_before_its_floor_is_an_alarm`.)"""
    store = open_store(home)
    as_sealed_before_floors(store)
    open_store(home).close()  # raises the floor
    strip_to_schema1(home)
    with pytest.raises(TamperedStoreError, match="rolled back"):
        open_store(home)


def test_a_faked_schema1_store_opened_before_its_floor_is_an_alarm(
    home: Path, clock: FakeClock
) -> None:
    """The residue: a store upgraded by an earlier version (its verifier has no floor), then
    stripped to pass as schema 1 before this version opens it, is upgraded again, rows as they
    are; the audit log then holds two upgrades, which the store check reports."""
    expect = copy_schema1("file", home)
    store = open_store(home)  # the real upgrade; then its verifier put back as it was sealed
    as_sealed_before_floors(store)
    strip_to_schema1(home)
    edit_meta(home, expect["disabled"], KeyState="Enabled")
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    problems = svc.check_store()
    assert len(problems) == 5 and "upgraded to schema 2 2 times" in problems[0]
    assert "upgraded to schema 3 2 times" in problems[1]
    assert "upgraded to schema 4 2 times" in problems[2]
    assert "upgraded to schema 5 2 times" in problems[3]
    assert "upgraded to schema 6 2 times" in problems[4]
    svc.close()


def test_audit_verify_neither_upgrades_nor_publishes(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`envelope audit verify` is a check: it used to upgrade an old store (authenticating its
    rows as they were) and publish pending digests."""
    copy_schema1("file", home)
    before = (home / "kms.sqlite3").read_bytes()
    assert run(["audit", "verify", "--home", str(home)]) == 2
    assert "has schema 1" in capsys.readouterr().err
    assert schema_version(home) == 1 and (home / "kms.sqlite3").read_bytes() == before


def test_a_wrong_root_key_still_cannot_open_a_schema1_store(home: Path) -> None:
    copy_schema1("file", home)
    (home / "root.key").write_bytes(bytes(32))
    with pytest.raises(RootKeyError):
        open_store(home)
    conn = db(home)
    assert conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()[0] in (
        b"1",
        "1",
    )
    conn.close()


@pytest.mark.parametrize(
    ("table", "edit"),
    [
        (
            "principals",
            'UPDATE principals SET body=replace(body, \'"Tags":{}\', \'"Tags":{"a":"b"}\')',
        ),
        (
            "identity_policies",
            "UPDATE identity_policies SET body=replace(body, 'kms:Encrypt', 'kms:*')",
        ),
        ("grants", "UPDATE grants SET body=replace(body, 'Encrypt', 'Decrypt')"),
        ("access_keys", "UPDATE access_keys SET body=replace(body, 'Active', 'Activ')"),
    ],
)
def test_the_store_check_names_an_edited_access_row(
    home: Path, clock: FakeClock, table: str, edit: str
) -> None:
    """Principals, identity policies and grants are authenticated like key rows: an edit that
    would widen access is named by `audit verify`'s store check."""
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    user = svc.create_user(user_name="u")["User"]["Arn"]
    svc.put_principal_policy(
        arn=user,
        policy_name="p",
        policy_document='{"Statement": {"Effect": "Allow", "Action": "kms:Encrypt", '
        '"Resource": "*"}}',
    )
    svc.create_grant(key_id=new_key(svc), grantee_principal=user, operations=["Encrypt"])
    svc.create_access_key(user_arn=user)
    assert svc.check_store() == []
    svc.close()
    conn = db(home)
    assert conn.execute(edit).rowcount == 1
    conn.close()
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    problems = svc.check_store()
    assert len(problems) == 1 and "fails authentication" in problems[0], problems
    svc.close()


def test_audit_verify_leaves_a_killed_process_s_wal_as_it_is(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Closing verify's connection checkpointed the WAL a killed process left into the store
    and removed it: the store changed, and the WAL's content (evidence, on a store in doubt)
    went. Verify now reads through a read-only connection."""
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from envelope.service import open_service\n"
        "svc = open_service(sys.argv[1])\n"
        "kid = svc.create_key()['KeyMetadata']['KeyId']\n"
        "for _ in range(20):\n"
        "    svc.generate_data_key(key_id=kid, key_spec='AES_256')\n"
        "os._exit(0)\n"  # as if killed: nothing closed, nothing checkpointed
    )
    subprocess.run([sys.executable, "-c", script, str(home)], check=True, timeout=120)
    wal = home / "kms.sqlite3-wal"
    assert wal.exists() and wal.stat().st_size > 0
    before = ((home / "kms.sqlite3").read_bytes(), wal.read_bytes())
    run(["audit", "verify", "--home", str(home)])
    assert ((home / "kms.sqlite3").read_bytes(), wal.read_bytes()) == before


def test_audit_tail_reads_an_older_store_it_can_write(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit tail` opens read-only only where the store cannot be written: opened read-only
    always, it refused a schema-1 store (which it used to upgrade and read) with advice meant
    for `audit verify` (review)."""
    from .test_cli import run

    copy_schema1("file", home)
    monkeypatch.setenv("ENVELOPE_HOME", str(home))
    assert run(["audit", "tail", "-n", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["Records"]) == 2
