"""What a process uses follows the authenticated rows, whoever edits the file.

A running process's caches follow the rows they were read from, not a counter beside them.

Found by an adversarial review: the caches of parsed key rows, of identities (a principal's
tags and policies) and of access-key lookups were valid while a random "generation" number
stayed the same, and that number sits outside every MAC. After an administrator disabled a key,
deleted a policy or deleted an access key from another process, an
editor of the store file who put the old number back made a long-running process (a server
worker) keep using what it had cached: data keys under a Disabled key, a deleted policy still
in force, a deleted access key still accepted. The caches are now keyed on the rows' own text
and MACs.

And the set of a principal's identity policies is authenticated, not only each policy row.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from envelope.service import KeyService
from envelope.service.errors import (
    AccessDeniedException,
    DisabledException,
    TamperedStoreError,
)

from .access_helpers import ROOT_A, attach, stmt, user
from .conftest import FakeClock, new_key, open_store
from .test_cli import run


def db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "kms.sqlite3", isolation_level=None)


def read(home: Path, sql: str, *args: object) -> object:
    conn = db(home)
    try:
        return conn.execute(sql, args).fetchone()[0]
    finally:
        conn.close()


def put_back(home: Path, sql: str, *args: object) -> None:
    conn = db(home)
    conn.execute(sql, args)
    conn.close()


@pytest.fixture
def two(home: Path, clock: FakeClock) -> tuple[KeyService, KeyService]:
    """A long-running process (`server`) and an administrator's, on one store."""
    server = KeyService(open_store(home), clock=clock, owns_store=True)
    admin = KeyService(open_store(home), clock=clock, owns_store=True)
    yield server, admin
    server.close()
    admin.close()


def test_a_disabled_key_stays_disabled_when_its_old_generation_is_put_back(
    home: Path, two: tuple[KeyService, KeyService]
) -> None:
    server, admin = two
    kid = new_key(admin)
    server.generate_data_key(key_id=kid, key_spec="AES_256")  # parsed and cached
    old = read(home, "SELECT gen FROM keys WHERE key_id=?", kid)
    admin.disable_key(key_id=kid)
    put_back(home, "UPDATE keys SET gen=? WHERE key_id=?", old, kid)
    with pytest.raises(DisabledException):
        server.generate_data_key(key_id=kid, key_spec="AES_256")
    assert server.check_store() == []  # the row itself is the administrator's, intact


def test_a_deleted_policy_stays_deleted_when_the_old_access_generation_is_put_back(
    home: Path, two: tuple[KeyService, KeyService]
) -> None:
    server, admin = two
    kid = new_key(admin)
    etl = user(admin, "etl")
    attach(admin, etl, stmt(Action="kms:*", Resource="*"), name="allow-kms")
    server.generate_data_key(key_id=kid, key_spec="AES_256", principal=etl)  # identity cached
    old = read(home, "SELECT value FROM meta WHERE name='access_gen'")
    admin.delete_principal_policy(arn=etl, policy_name="allow-kms", principal=ROOT_A)
    put_back(home, "UPDATE meta SET value=? WHERE name='access_gen'", old)
    with pytest.raises(AccessDeniedException):
        server.generate_data_key(key_id=kid, key_spec="AES_256", principal=etl)


def test_a_deleted_access_key_stays_deleted_when_the_old_access_generation_is_put_back(
    home: Path, two: tuple[KeyService, KeyService], clock: FakeClock
) -> None:
    server, admin = two
    etl = user(admin, "etl")
    key = admin.create_access_key(user_arn=etl, principal=ROOT_A)["AccessKey"]
    kid = str(key["AccessKeyId"])
    assert server.resolve_credentials(kid, clock()) is not None  # cached
    old = read(home, "SELECT value FROM meta WHERE name='access_gen'")
    admin.delete_access_key(access_key_id=kid, user_arn=etl, principal=ROOT_A)
    put_back(home, "UPDATE meta SET value=? WHERE name='access_gen'", old)
    assert server.resolve_credentials(kid, clock()) is None


def etl_with_deny(home: Path, clock: FakeClock) -> tuple[str, str]:
    """A key and a user `etl` allowed everything but denied by its `deny-all` policy, in a
    closed store: (key id, user ARN)."""
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    etl = user(svc, "etl")
    attach(svc, etl, stmt(Action="kms:*", Resource="*"), name="allow-kms")
    attach(svc, etl, stmt("Deny", Action="kms:*", Resource="*"), name="deny-all")
    attach(svc, etl, stmt(Action="kms:DescribeKey", Resource="*"), name="other")
    with pytest.raises(AccessDeniedException):
        svc.generate_data_key(key_id=kid, key_spec="AES_256", principal=etl)
    other = user(svc, "other")
    attach(svc, other, stmt(Action="kms:*", Resource="*"), name="extra")
    svc.close()
    return kid, etl


def test_a_deleted_deny_is_refused_as_tampering(home: Path, clock: FakeClock) -> None:
    """Each policy row was authenticated alone, not the set: deleting a user's Deny with an
    SQLite tool widened its access and `envelope audit verify` stayed green. The principal's
    authenticated row now names its policies."""
    kid, etl = etl_with_deny(home, clock)
    put_back(home, "DELETE FROM identity_policies WHERE name='deny-all'")
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    with pytest.raises(TamperedStoreError, match="not the ones its authenticated row names"):
        svc.generate_data_key(key_id=kid, key_spec="AES_256", principal=etl)
    assert svc.audit_tail(1)[0]["alarm"] == 1
    assert run(["audit", "verify", "--home", str(home)]) == 1
    svc.close()


def test_a_policy_row_moved_over_from_another_principal_is_refused(
    home: Path, clock: FakeClock
) -> None:
    kid, etl = etl_with_deny(home, clock)
    put_back(home, "DELETE FROM identity_policies WHERE name='deny-all'")
    put_back(home, "UPDATE identity_policies SET principal=? WHERE name='extra'", etl)
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    with pytest.raises(TamperedStoreError):
        svc.generate_data_key(key_id=kid, key_spec="AES_256", principal=etl)
    assert any("etl" in p for p in svc.check_store())
    svc.close()


def test_a_schema5_store_gets_its_policy_names_once(home: Path, clock: FakeClock) -> None:
    """The upgrade to schema 6 records each principal's policy names as they are; a principal
    row that fails its MAC is left as it is (still refused, and named by the store check) and
    does not stop the rest of the store from upgrading."""
    from envelope.service import _rows
    from envelope.service._migrate import VERIFIER, verifier_aad

    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    etl = user(svc, "etl")
    other = user(svc, "other")
    attach(svc, etl, stmt(Action="kms:*", Resource="*"), name="allow-kms")
    store = svc.store
    with store.write() as conn:  # as schema 5 wrote it: no names, MAC'd, verifier floor 5
        for arn in (etl, other):
            (text,) = conn.execute("SELECT body FROM principals WHERE arn=?", (arn,)).fetchone()
            body = json.loads(text)
            del body["PolicyNames"]
            text = json.dumps(body, sort_keys=True, separators=(",", ":"))
            mac = _rows.record_mac(store.row_key, "principals", arn, text)
            conn.execute("UPDATE principals SET body=?, mac=? WHERE arn=?", (text, mac, arn))
        conn.execute("UPDATE meta SET value=? WHERE name='schema_version'", (b"5",))
        conn.execute(
            "UPDATE meta SET value=? WHERE name='verifier'",
            (store.root.seal(VERIFIER, verifier_aad(5)),),
        )
    svc.close()
    tags = 'replace(body, \'"Tags":{}\', \'"Tags":{"a":"b"}\')'
    put_back(home, f"UPDATE principals SET body={tags} WHERE arn=?", other)
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    svc.generate_data_key(key_id=kid, key_spec="AES_256", principal=etl)
    upgrades = [r["params"] for r in svc.audit_tail(20) if r["operation"] == "UpgradeStore"]
    assert upgrades == [{"FromSchema": 5, "ToSchema": 6, "Principals": 1, "TamperedPrincipals": 1}]
    problems = svc.check_store()
    assert len(problems) == 1 and "user/other" in problems[0], problems
    svc.close()


@pytest.mark.parametrize("change", ["put", "delete"])
def test_a_policy_change_does_not_make_a_tampered_set_authentic(
    home: Path, clock: FakeClock, change: str
) -> None:
    """Found by a review of the fix above: the next PutUserPolicy or DeleteUserPolicy on the
    user (for another policy) rewrote the names from the rows as they stood, making a deleted
    Deny's absence authentic. A change now checks the set first and is refused."""
    kid, etl = etl_with_deny(home, clock)
    put_back(home, "DELETE FROM identity_policies WHERE name='deny-all'")
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    with pytest.raises(TamperedStoreError):
        if change == "put":
            attach(svc, etl, stmt(Action="kms:Encrypt", Resource="*"), name="new")
        else:
            svc.delete_principal_policy(arn=etl, policy_name="other", principal=ROOT_A)
    with pytest.raises(TamperedStoreError):
        svc.generate_data_key(key_id=kid, key_spec="AES_256", principal=etl)
    assert any("etl" in p for p in svc.check_store())
    svc.close()
