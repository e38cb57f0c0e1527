"""A running process's caches follow the rows they were read from, not a counter beside them.

Found by an adversarial review: the caches of parsed key rows, of identities (a principal's
tags and policies) and of access-key lookups were valid while a random "generation" number
stayed the same, and that number sits outside every MAC. After an administrator disabled a key,
deleted a policy or deleted an access key from another process, an
editor of the store file who put the old number back made a long-running process (a server
worker) keep using what it had cached: data keys under a Disabled key, a deleted policy still
in force, a deleted access key still accepted. The caches are now keyed on the rows' own text
and MACs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from envelope.service import KeyService
from envelope.service.errors import AccessDeniedException, DisabledException

from .access_helpers import ROOT_A, attach, stmt, user
from .conftest import FakeClock, new_key, open_store


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
