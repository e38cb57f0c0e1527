"""The durable store: one SQLite file, WAL, safe for several processes at once.

Every state change happens inside `Store.write()`, a ``BEGIN IMMEDIATE`` transaction, so a crash
leaves either the old state or the new one, and writers in other processes queue on SQLite's
lock (`busy_timeout`). With ``synchronous=NORMAL`` (the default) a committed transaction is in
the WAL file before `COMMIT` returns, so it survives the process being killed; it may be lost
only if the machine loses power before the next checkpoint. ``synchronous=FULL`` fsyncs on every
commit and survives power loss too, at a few milliseconds per call on most disks.

Key material is stored only sealed under the root key (see `rootkey`), with the key id and
version as AAD, so rows cannot be swapped between keys. At initialisation the store records a
verifier sealed under the root key; opening checks it before anything is written, so a wrong or
missing root key raises `RootKeyError` and leaves the file untouched.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import KMSInternalException, RootKeyError
from .rootkey import RootKey, RootKeyProvider

__all__ = ("SCHEMA_VERSION", "Store")

SCHEMA_VERSION = 1
_VERIFIER = b"envelope/kms/root-key-verifier/v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys(
    region TEXT NOT NULL, key_id TEXT NOT NULL, gen INTEGER NOT NULL, meta TEXT NOT NULL,
    PRIMARY KEY(region, key_id));
CREATE TABLE IF NOT EXISTS material(
    key_id TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL, kind TEXT NOT NULL,
    sealed BLOB NOT NULL, PRIMARY KEY(key_id, version));
CREATE TABLE IF NOT EXISTS aliases(
    region TEXT NOT NULL, name TEXT NOT NULL, key_id TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY(region, name));
CREATE TABLE IF NOT EXISTS import_tokens(
    token TEXT PRIMARY KEY, region TEXT NOT NULL, key_id TEXT NOT NULL, expires REAL NOT NULL,
    algorithm TEXT NOT NULL, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit(
    seq INTEGER PRIMARY KEY, prev BLOB NOT NULL, hash BLOB NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seals(
    seq INTEGER PRIMARY KEY, chain BLOB NOT NULL, at REAL NOT NULL, sig BLOB NOT NULL);
"""

Synchronous = Literal["NORMAL", "FULL"]


def material_aad(key_id: str, version: int) -> bytes:
    return f"material|{key_id}|{version}".encode()


class Store:
    """An open store: the SQLite connection, the root key and the audit signing key.

    One connection per `Store`, guarded by a lock, so a `Store` may be shared by threads. Use
    `Store.open`; several processes may open the same file.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        root: RootKey,
        signer: Ed25519PrivateKey,
    ) -> None:
        self._conn = conn
        self.path = path
        self.root = root
        self.signer = signer
        self.lock = threading.RLock()
        self.closed = False

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        root: RootKeyProvider,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_ms: int = 30_000,
    ) -> Store:
        """Open (creating and initialising if new) the store at `path` with root key `root`."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        existed = p.exists() and p.stat().st_size > 0
        conn = sqlite3.connect(
            p, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if not existed:
                os.chmod(p, 0o600)
                # Small pages: a call rewrites one audit page in the WAL, so 1 KiB pages make a
                # commit about a third cheaper than 4 KiB ones (must precede WAL mode).
                conn.execute("PRAGMA page_size=1024")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            # Fewer, larger checkpoints: each one fsyncs the database file, and rewrites a hot
            # audit page once however often it changed since the last one.
            conn.execute("PRAGMA wal_autocheckpoint=8192")
            meta = _read_meta(conn)
            if "verifier" not in meta:
                meta = _initialise(conn, root)
            rk = root.open(meta["salt"], create=False)
            if rk.unseal(meta["verifier"], b"verifier") != _VERIFIER:
                raise RootKeyError("the root key does not open this store")
            signer = Ed25519PrivateKey.from_private_bytes(
                rk.unseal(meta["audit_sk"], b"audit-signing-key")
            )
            public = signer.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            if public != meta["audit_pk"]:
                raise RootKeyError("the audit public key in the store was replaced")
        except sqlite3.DatabaseError as e:
            conn.close()
            raise KMSInternalException(f"{p} is not a usable KMS store: {e}") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, p, rk, signer)

    @property
    def audit_public_key(self) -> Ed25519PublicKey:
        return self.signer.public_key()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error."""
        with self.lock:
            if self.closed:
                raise KMSInternalException("the store is closed")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise KMSInternalException(f"the store is busy or unreadable: {e}") from None
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise KMSInternalException(f"the store could not commit: {e}") from None

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot (a deferred transaction)."""
        with self.lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("ROLLBACK")

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self._conn.close()


def _read_meta(conn: sqlite3.Connection) -> dict[str, bytes]:
    try:
        rows = conn.execute("SELECT name, value FROM meta").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {str(n): bytes(v) if not isinstance(v, str) else v.encode() for n, v in rows}


def _initialise(conn: sqlite3.Connection, provider: RootKeyProvider) -> dict[str, bytes]:
    """Create the schema and the sealed verifier and audit key, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = _read_meta(conn)
        if "verifier" in meta:  # another process initialised it first
            conn.execute("ROLLBACK")
            return meta
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        salt = os.urandom(16)
        rk = provider.open(salt, create=True)
        sk = Ed25519PrivateKey.generate()
        raw = sk.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        meta = {
            "schema_version": str(SCHEMA_VERSION).encode(),
            "salt": salt,
            "root_provider": provider.description.encode(),
            "verifier": rk.seal(_VERIFIER, b"verifier"),
            "audit_sk": rk.seal(raw, b"audit-signing-key"),
            "audit_pk": sk.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
            "fingerprint_key": rk.seal(os.urandom(32), b"fingerprint-key"),
        }
        conn.executemany("INSERT INTO meta(name, value) VALUES (?, ?)", list(meta.items()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return meta
