"""Schema upgrades of the store, applied once by the first opener that holds the root key.

Schema 1 (before issue 8) stored key rows without a MAC. Schema 2 adds the key-row MAC
(`_rows`): the upgrade creates the row key, authenticates every existing row as it stands, and
appends an ``UpgradeStore`` record to the audit log, all in one transaction. Rows are trusted as
they are at that moment (nothing older can vouch for them); run ``envelope audit verify`` before
upgrading a store you doubt. A store that claims an older schema than its contents show (a
rolled-back ``schema_version`` to get tampered rows re-authenticated) is refused, and a second
upgrade to the same schema in the audit log is reported by the store check.

Schema 3 adds the seal counter (sealed under the root key), a random store id, and the digest
columns of ``seals`` (`digests`); seals made before it stay verifiable by the chain as before,
and the first seal after it is digest 1.

Schema 4 adds access control (issue 10): principals, their identity (IAM) policies, grants,
and the access generation counter; aliases gain the owning account (a store now holds several
accounts, and every account has its own alias names). Existing aliases belong to the default
account, the only one earlier versions had. Key rows need no change: a key without an owning
account or a key policy belongs to the service's account and has the default key policy.

Schema 5 adds custom key stores (issue 13): the stores themselves, the HSM clusters (PKCS#11
tokens) registered with this KMS, and the token objects still to destroy after their KMS keys
were deleted. Rows are MAC'd like the access-control rows; secrets (the token PIN, the XKS
proxy's secret access key) are sealed under the root key.

Schema 6 puts the names of a principal's identity policies in its authenticated row
(``PolicyNames``), so that a policy row deleted with an SQLite tool (a Deny gone: wider access)
is refused like an edited one; before, each policy row was authenticated alone and the set was
not. The upgrade records the names as they are.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import _authz, _rows, audit
from .errors import RootKeyError, StoreError, TamperedStoreError
from .rootkey import RootKey

__all__ = (
    "KEYSTORE_SCHEMA",
    "SCHEMA_VERSION",
    "SEALS_INDEX",
    "UPGRADE_OPERATION",
    "VERIFIER",
    "open_verifier",
    "read_meta",
    "upgrade",
    "verifier_aad",
)

SCHEMA_VERSION = 6
#: The default account of every store written before schema 4.
LEGACY_ACCOUNT = "000000000000"

#: Access-control tables (schema 4). Every row carries a MAC under the row key (`_rows`), bound
#: to its table and primary key, so a principal, policy, grant or access key edited in the file
#: is refused. ``access_keys`` holds users' access keys and roles' sessions (`_credentials`),
#: their secrets sealed under the root key.
ACCESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS principals(
    arn TEXT PRIMARY KEY, account TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
    mac BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS principals_account ON principals(account);
CREATE TABLE IF NOT EXISTS identity_policies(
    principal TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, mac BLOB NOT NULL,
    PRIMARY KEY(principal, name));
CREATE TABLE IF NOT EXISTS grants(
    grant_id TEXT PRIMARY KEY, region TEXT NOT NULL, key_id TEXT NOT NULL,
    grantee TEXT NOT NULL, retiring TEXT, name TEXT, body TEXT NOT NULL, mac BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS grants_key ON grants(region, key_id, grantee);
CREATE INDEX IF NOT EXISTS grants_retiring ON grants(retiring);
CREATE TABLE IF NOT EXISTS grant_tokens(
    token_hash BLOB PRIMARY KEY, grant_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS grant_tokens_grant ON grant_tokens(grant_id);
CREATE TABLE IF NOT EXISTS access_keys(
    access_key_id TEXT PRIMARY KEY, principal TEXT NOT NULL, account TEXT NOT NULL,
    kind TEXT NOT NULL, expires REAL, body TEXT NOT NULL, mac BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS access_keys_principal ON access_keys(principal);
CREATE INDEX IF NOT EXISTS access_keys_expires ON access_keys(kind, expires);
"""

#: Custom key stores (schema 5). ``body`` is the store's JSON (type, name, connection state,
#: cluster or proxy settings); ``secret`` is sealed under the root key (`_keystores`).
KEYSTORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS custom_key_stores(
    store_id TEXT PRIMARY KEY, account TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
    secret BLOB, mac BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS custom_key_stores_name ON custom_key_stores(account, name);
CREATE TABLE IF NOT EXISTS hsm_clusters(
    cluster_id TEXT PRIMARY KEY, body TEXT NOT NULL, mac BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS token_deletions(
    store_id TEXT NOT NULL, label TEXT NOT NULL, due REAL NOT NULL,
    PRIMARY KEY(store_id, label));
"""
UPGRADE_OPERATION = "UpgradeStore"

#: What the root-key verifier seals: opening it proves the root key is the store's.
VERIFIER = b"envelope/kms/root-key-verifier/v1"
#: The verifier's AAD before schema floors: a store written by an earlier version.
_LEGACY_VERIFIER_AAD = b"verifier"


def verifier_aad(schema: int) -> bytes:
    """The verifier's AAD names the lowest schema the store may claim (its "floor": the schema
    it was made or last upgraded to). Everything else that marks a schema (the row-MAC key, the
    seal counter, the columns) is data an editor of the file can strip; the floor is sealed
    under the root key, so a store edited to look older than it is cannot be re-authenticated
    by an upgrade (`upgrade` re-MACs rows as it finds them)."""
    return b"verifier/schema/%d" % schema


def open_verifier(rk: RootKey, sealed: bytes) -> int:
    """The schema floor the store's verifier was sealed with (1 for one sealed before floors),
    or RootKeyError when the root key does not open it (a wrong key)."""
    for schema in range(SCHEMA_VERSION, 1, -1):
        try:
            value = rk.unseal(sealed, verifier_aad(schema))
        except RootKeyError:
            continue
        if value != VERIFIER:
            raise RootKeyError("the root key does not open this store")
        return schema
    if rk.unseal(sealed, _LEGACY_VERIFIER_AAD) != VERIFIER:
        raise RootKeyError("the root key does not open this store")
    return 1


def check_floor(version: int, floor: int) -> None:
    """A store whose schema_version is below the floor its verifier was sealed with was edited
    to look older (its newer parts stripped), so that an upgrade would re-authenticate rows."""
    if version < floor:
        raise TamperedStoreError(
            f"the store says schema {version}, but its verifier, sealed under the root key, was "
            f"written at schema {floor}: its schema_version was rolled back and its newer parts "
            "stripped, so that an upgrade would re-authenticate edited rows. Nothing was "
            "changed; restore the store from a backup"
        )


def read_meta(conn: sqlite3.Connection) -> dict[str, bytes]:
    try:
        rows = conn.execute("SELECT name, value FROM meta").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {str(n): bytes(v) if not isinstance(v, str) else v.encode() for n, v in rows}


def schema_of(meta: dict[str, bytes]) -> int:
    raw = meta.get("schema_version", b"")
    try:
        version = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise TamperedStoreError(
            f"the store's schema_version {raw[:20]!r} is not a number"
        ) from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store has schema {version}; this version of envelope reads up to "
            f"{SCHEMA_VERSION}: upgrade envelope"
        )
    if version < 1:
        raise TamperedStoreError(f"the store's schema_version {version} does not exist")
    if version >= 2 and "key_row_mac_key" not in meta:
        raise TamperedStoreError(
            f"the store says schema {version} but has no key-row key: it was edited"
        )
    if version < 2 and "key_row_mac_key" in meta:
        raise TamperedStoreError(
            "the store says schema 1 but its key rows are authenticated (schema 2): its "
            "schema_version was rolled back, so that edited rows would be re-authenticated"
        )
    if version >= 3 and ("seal_counter" not in meta or "store_id" not in meta):
        raise TamperedStoreError(
            f"the store says schema {version} but has no seal counter or store id: it was edited"
        )
    if version < 3 and "seal_counter" in meta:
        raise TamperedStoreError(
            f"the store says schema {version} but has a seal counter (schema 3): its "
            "schema_version was rolled back"
        )
    return version


def upgrade(
    conn: sqlite3.Connection, rk: RootKey, signer: Ed25519PrivateKey, version: int, floor: int
) -> None:
    """Bring the store to `SCHEMA_VERSION` and its verifier's floor with it, in one
    transaction (nothing to do if both are there). `version` and `floor` are what the caller
    read and checked at open; inside the transaction they are read again (another process
    may have upgraded the store meanwhile)."""
    if version == SCHEMA_VERSION and floor == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = read_meta(conn)  # another process may have upgraded it
        version = schema_of(meta)
        check_floor(version, open_verifier(rk, meta["verifier"]))
        if version == 1:
            _to_2(conn, rk, signer)
        if version <= 2:
            _to_3(conn, rk, signer)
        if version <= 3:
            _to_4(conn, rk, signer)
        if version <= 4:
            _to_5(conn, rk, signer)
        if version <= 5:
            _to_6(conn, rk, signer)
        conn.execute(
            "UPDATE meta SET value=? WHERE name='verifier'",
            (rk.seal(VERIFIER, verifier_aad(SCHEMA_VERSION)),),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _to_2(conn: sqlite3.Connection, rk: RootKey, signer: Ed25519PrivateKey) -> None:
    row_key = os.urandom(32)
    conn.execute("ALTER TABLE keys ADD COLUMN mac BLOB")
    rows = conn.execute("SELECT region, key_id, meta FROM keys").fetchall()
    for region, key_id, meta in rows:
        conn.execute(
            "UPDATE keys SET mac=? WHERE region=? AND key_id=?",
            (_rows.mac(row_key, str(region), str(key_id), str(meta)), region, key_id),
        )
    conn.execute(
        "INSERT INTO meta(name, value) VALUES ('key_row_mac_key', ?)",
        (rk.seal(row_key, _rows.KEY_ROW_MAC_AAD),),
    )
    conn.execute("UPDATE meta SET value=? WHERE name='schema_version'", (b"2",))
    _record(conn, signer, 1, 2, {"KeyRows": len(rows)})


def _to_3(conn: sqlite3.Connection, rk: RootKey, signer: Ed25519PrivateKey) -> None:
    """Seal counter, store id and digests: every later seal is also a digest file."""
    for column in ("counter INTEGER", "digest BLOB", "published INTEGER NOT NULL DEFAULT 0"):
        conn.execute(f"ALTER TABLE seals ADD COLUMN {column}")
    conn.execute(SEALS_INDEX)
    store_id = os.urandom(16).hex()
    conn.executemany(
        "INSERT INTO meta(name, value) VALUES (?, ?)",
        [
            ("store_id", store_id.encode()),
            ("seal_counter", rk.seal(bytes(8), audit.SEAL_COUNTER_AAD)),
        ],
    )
    conn.execute("UPDATE meta SET value=? WHERE name='schema_version'", (b"3",))
    _record(conn, audit.Sealer(signer, rk, store_id), 2, 3, {})


def _to_4(conn: sqlite3.Connection, rk: RootKey, signer: Ed25519PrivateKey) -> None:
    """Access control: the principal, policy and grant tables; aliases gain their account."""
    conn.execute("ALTER TABLE aliases RENAME TO aliases_v3")
    conn.execute(
        "CREATE TABLE aliases(region TEXT NOT NULL, account TEXT NOT NULL, name TEXT NOT NULL, "
        "key_id TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, "
        "PRIMARY KEY(region, account, name))"
    )
    conn.execute(
        "INSERT INTO aliases SELECT region, ?, name, key_id, created, updated FROM aliases_v3",
        (LEGACY_ACCOUNT,),
    )
    conn.execute("DROP TABLE aliases_v3")
    conn.execute("CREATE INDEX IF NOT EXISTS aliases_key ON aliases(key_id)")
    for statement in ACCESS_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("UPDATE meta SET value=? WHERE name='schema_version'", (b"4",))
    store_id = read_meta(conn)["store_id"].decode("ascii", "replace")
    _record(conn, audit.Sealer(signer, rk, store_id), 3, 4, {})


def _to_5(conn: sqlite3.Connection, rk: RootKey, signer: Ed25519PrivateKey) -> None:
    """Custom key stores: their table, the registered HSM clusters, pending token deletions."""
    for statement in KEYSTORE_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("UPDATE meta SET value=? WHERE name='schema_version'", (b"5",))
    store_id = read_meta(conn)["store_id"].decode("ascii", "replace")
    _record(conn, audit.Sealer(signer, rk, store_id), 4, 5, {})


def _to_6(conn: sqlite3.Connection, rk: RootKey, signer: Ed25519PrivateKey) -> None:
    """Each principal's row names its identity policies (``PolicyNames``), under its MAC."""
    row_key = rk.unseal(read_meta(conn)["key_row_mac_key"], _rows.KEY_ROW_MAC_AAD)
    rows = conn.execute("SELECT arn, body, mac FROM principals").fetchall()
    tampered = 0
    for arn, text, mac in rows:
        if not _rows.check_record(row_key, "principals", str(arn), str(text), mac):
            # left as it is: still refused on use and named by the store check (an upgrade
            # never re-authenticates a row that fails), while the rest of the store upgrades
            tampered += 1
            continue
        body = json.loads(text)
        body["PolicyNames"] = _authz.policy_names(conn, str(arn))
        new = json.dumps(body, sort_keys=True, separators=(",", ":"))
        conn.execute(
            "UPDATE principals SET body=?, mac=? WHERE arn=?",
            (new, _rows.record_mac(row_key, "principals", str(arn), new), arn),
        )
    conn.execute("UPDATE meta SET value=? WHERE name='schema_version'", (b"6",))
    store_id = read_meta(conn)["store_id"].decode("ascii", "replace")
    extra: dict[str, object] = {"Principals": len(rows) - tampered}
    if tampered:
        extra["TamperedPrincipals"] = tampered
    _record(conn, audit.Sealer(signer, rk, store_id), 5, 6, extra)


SEALS_INDEX = "CREATE INDEX IF NOT EXISTS seals_counter ON seals(counter)"


def _record(
    conn: sqlite3.Connection,
    signer: Ed25519PrivateKey | audit.Sealer,
    old: int,
    new: int,
    extra: dict[str, object],
) -> None:
    now = time.time()
    audit.append(
        conn,
        {
            "time": now,
            "principal": "envelope",
            "operation": UPGRADE_OPERATION,
            "key_id": None,
            "request_id": os.urandom(16).hex(),
            "source_ip": "127.0.0.1",
            "user_agent": "envelope",
            "region": None,
            "outcome": "ok",
            "error_code": None,
            "alarm": 0,
            "params": {"FromSchema": old, "ToSchema": new, **extra},
        },
        signer,
        now,
    )
