"""The durable store: one SQLite file, WAL, safe for several processes at once.

Every state change happens inside `Store.write()`, a ``BEGIN IMMEDIATE`` transaction, so a crash
leaves either the old state or the new one, and writers in other processes queue for it (a
`flock` on the store file, then SQLite's own lock with its `busy_timeout`). With
``synchronous=NORMAL`` (the default) a committed transaction is in the WAL file before `COMMIT`
returns, so it survives the process being killed; a transaction that changed more than the
audit log (a key made, rotated, disabled, a grant revoked: `Store.write`) is also fsynced
before it is acknowledged, so it survives a power cut too. A call that only used a key and
appended its audit record may be lost to a power cut before the next checkpoint.
``synchronous=FULL`` fsyncs on every commit and survives power loss too, at a few
milliseconds per call on most disks.

Key material is stored only sealed under the root key (see `rootkey`), with the key id and
version as AAD, so rows cannot be swapped between keys; key rows (state, usage, spec, dates,
rotation, origin, tags) carry a MAC under a key sealed under the root key, bound to the key id
and Region (`_rows`), so an edited row is refused (`TamperedStoreError`).

At initialisation the store records a verifier sealed under the root key; opening checks it
before anything is written, so a wrong or missing root key raises `RootKeyError` and leaves the
file untouched. A store written by an earlier version is upgraded once (`_migrate`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import _rows, audit
from ._columns import translated
from ._migrate import (
    ACCESS_SCHEMA,
    KEYSTORE_SCHEMA,
    SCHEMA_VERSION,
    VERIFIER,
    check_floor,
    open_verifier,
    read_meta,
    schema_of,
    upgrade,
    verifier_aad,
)
from .digests import DigestLocation, default_location, name_of
from .errors import KMSInternalException, RootKeyError, StoreError, TamperedStoreError
from .rootkey import PassphraseRootKey, RootKey, RootKeyProvider

__all__ = ("SCHEMA_VERSION", "Store")

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys(
    region TEXT NOT NULL, key_id TEXT NOT NULL, gen INTEGER NOT NULL, meta TEXT NOT NULL,
    mac BLOB, PRIMARY KEY(region, key_id));
CREATE TABLE IF NOT EXISTS material(
    key_id TEXT NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL, kind TEXT NOT NULL,
    sealed BLOB NOT NULL, PRIMARY KEY(key_id, version));
CREATE TABLE IF NOT EXISTS aliases(
    region TEXT NOT NULL, account TEXT NOT NULL, name TEXT NOT NULL, key_id TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY(region, account, name));
CREATE INDEX IF NOT EXISTS aliases_key ON aliases(key_id);
CREATE TABLE IF NOT EXISTS import_tokens(
    token TEXT PRIMARY KEY, region TEXT NOT NULL, key_id TEXT NOT NULL, expires REAL NOT NULL,
    algorithm TEXT NOT NULL, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit(
    seq INTEGER PRIMARY KEY, prev BLOB NOT NULL, hash BLOB NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seals(
    seq INTEGER PRIMARY KEY, chain BLOB NOT NULL, at REAL NOT NULL, sig BLOB NOT NULL,
    counter INTEGER, digest BLOB, published INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS seals_counter ON seals(counter);
"""
    + ACCESS_SCHEMA
    + KEYSTORE_SCHEMA
)

Synchronous = Literal["NORMAL", "FULL"]
_log = logging.getLogger("envelope.service.audit")


def material_aad(key_id: str, version: int) -> bytes:
    return f"material|{key_id}|{version}".encode()


#: Every store open in this process, for the fork guard below.
_open_stores: weakref.WeakSet[Store] = weakref.WeakSet()
_held_for_fork: list[Store] = []


def _before_fork() -> None:
    """Wait until no thread is inside a store's transaction, and keep it so until the fork is
    done: SQLite's lock bookkeeping is process memory, so a child forked while another thread
    held a write (or read) transaction inherits "held by another connection of this process"
    for a connection that does not exist there, and waits for ever on its first write."""
    for store in sorted(_open_stores, key=id):
        store.lock.acquire()
        _held_for_fork.append(store)


def _after_fork() -> None:
    while _held_for_fork:
        _held_for_fork.pop().lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork
    )


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, or None when nothing is there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _raise_translated(e: sqlite3.Error, path: Path) -> None:
    """Raise what `e`, raised inside a transaction, means for the store (`translated`), if
    it means more than a failure that may pass."""
    meant = translated(e, path)
    if meant is not None:
        raise meant from None


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
        row_key: bytes,
        store_id: str,
        digests: DigestLocation,
    ) -> None:
        self._conn = conn
        self.path = path
        self.root = root
        self.signer = signer
        #: The key-row MAC key (`_rows`), unsealed from the store's meta table.
        self.row_key = row_key
        self.store_id = store_id
        #: Where every seal is published as a signed digest file (outside the store).
        self.digests = digests
        self.sealer = audit.Sealer(signer, root, store_id)
        self.lock = threading.RLock()
        self._writers = _WriterQueue(path)
        self.closed = False
        #: The root-key file the store was opened with (None: a passphrase, an HSM key).
        self.root_file: Path | None = None
        self._file = _file_identity(path)
        #: FULL: SQLite fsyncs every commit; NORMAL: `write` fsyncs those that change state.
        self.synchronous: Synchronous = "NORMAL"
        self._audit_changes = 0  # rows of the open transaction that are the audit log's
        self._wal_dir_synced = False
        _open_stores.add(self)

    def check_file(self) -> None:
        """`StoreError` unless the store's path still names the file this process opened.

        SQLite goes on writing to an open file after it was deleted or replaced (a restore
        copied over it, a `mv`): a server acknowledged CreateKey calls into a deleted store,
        and lost them all when it restarted on the path (review). Checked at the start of
        every write transaction (a `stat`, about a microsecond) and by the health check."""
        if self._file is None:
            return
        if _file_identity(self.path) != self._file:
            raise StoreError(
                f"the KMS store {self.path} was deleted or replaced while this process had it "
                "open: nothing more is written to the file it opened (those writes would be "
                "lost); restart on the store at that path, or put it back"
            )

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def state_paths(self) -> tuple[str, ...]:
        """Where this store keeps its state: the SQLite file and its companions, the root-key
        file, and the digest folder when it is local. No output of a command using the store
        may be written over one of them (or into the folder)."""
        paths = list(store_files(self.path))
        if self.root_file is not None:
            paths.append(str(self.root_file))
        if self.digests.is_local:
            paths.append(self.digests.where)
        return tuple(paths)

    @property
    def audit_public_bytes(self) -> bytes:
        return self.signer.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        root: RootKeyProvider,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_ms: int = 30_000,
        digests: str | os.PathLike[str] | DigestLocation | None = None,
        read_only: bool = False,
    ) -> Store:
        """Open the store at `path` with root key `root`, creating it if nothing is there.

        `read_only` (``envelope audit verify``) neither upgrades the store's schema nor
        publishes pending digests at open: a store that needs an upgrade is refused.

        An existing file that is not a store (empty, corrupt, uninitialised) raises
        `StoreError` and is left as it is; so do the remains of a store (``-wal`` files, a
        root-key file) without the store: a lost store is never replaced by an empty one.

        `digests` is where seals are published as digest files (a folder or an ``s3://``
        prefix; default `digests.default_location`, beside the store's folder).
        """
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        # absolute: the service checks the file is still there when it closes (`_core`), and a
        # relative path would name another file once the process changes directory
        p = Path(os.path.abspath(path))
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not read_only:
            _check_writable(p)
        if not p.exists():
            _create(p, root)
        _check_file(p)
        conn = sqlite3.connect(
            # read-only: not even a checkpoint of a WAL left by a killed process (its content
            # may be evidence), nor its removal when the connection closes
            read_only_uri(p) if read_only else p,
            uri=read_only,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_ms / 1000,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal" and not read_only:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            # Fewer, larger checkpoints: each one fsyncs the database file, and rewrites a hot
            # audit page once however often it changed since the last one.
            conn.execute("PRAGMA wal_autocheckpoint=8192")
            meta = read_meta(conn)
            missing = [n for n in _REQUIRED_META if n not in meta]
            if missing:
                raise StoreError(
                    f"{p} is not an initialised KMS store (no {', '.join(missing)} in it): it was "
                    "truncated or replaced. Nothing was changed; restore it from a backup."
                )
            made_with = meta.get("root_provider", b"").decode("utf-8", "replace")
            try:
                rk = _open_root(root, meta, create=False)
            except RootKeyError as e:  # no key at all (strict mode, a missing file): name the
                # store's provider only if it is of another kind (a passphrase, not a file); a
                # file at another path is a moved home, and its old path would mislead
                if made_with and _kind(made_with) != _kind(root.description):
                    raise RootKeyError(
                        f"{e.message}; this store was made with the {made_with}"
                    ) from None
                raise
            version = schema_of(meta)  # a store of a newer envelope says so, not "wrong key"
            try:
                floor = open_verifier(rk, meta["verifier"])
            except RootKeyError as e:  # a wrong key: say which one the store was made with
                if made_with and made_with != root.description:
                    raise RootKeyError(
                        f"{e.message}; this store was made with the {made_with}, and was "
                        f"opened with the {root.description}"
                    ) from None
                raise
            # The root key is proven right (the verifier opened): a sealed row that does not
            # open under it now was replaced or edited, which is tampering, not a wrong key.
            signer = Ed25519PrivateKey.from_private_bytes(
                _sealed_row(rk, meta, "audit_sk", b"audit-signing-key", "audit signing key")
            )
            public = signer.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            if public != meta["audit_pk"]:
                raise TamperedStoreError(
                    f"the audit public key in {p} was replaced: it is not the one whose private "
                    "half is sealed under the root key. Nothing was changed; restore the store "
                    "from a backup"
                )
            check_floor(version, floor)
            if read_only:
                if version != SCHEMA_VERSION:
                    raise StoreError(
                        f"{p} has schema {version}; this version of envelope reads it only "
                        f"after upgrading it to schema {SCHEMA_VERSION}, which writes to it. "
                        "To check it unchanged, use the version of envelope that wrote it"
                    )
            else:
                upgrade(conn, rk, signer, version, floor)
            meta = read_meta(conn)
            row_key = _sealed_row(
                rk, meta, "key_row_mac_key", _rows.KEY_ROW_MAC_AAD, "key-row MAC key"
            )
            store_id = meta["store_id"].decode("ascii", "replace")
            location = (
                digests
                if isinstance(digests, DigestLocation)
                else DigestLocation(digests if digests is not None else default_location(p))
            )
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(
                f"{p} is not a usable KMS store ({e}): it is corrupt or not a store. Nothing "
                "was changed; restore it from a backup."
            ) from None
        except BaseException:
            conn.close()
            raise
        store = cls(conn, p, rk, signer, row_key, store_id, location)
        store.synchronous = synchronous
        store.root_file = getattr(root, "path", None)  # a root-key file's (FileRootKey)
        if not read_only:
            store.publish_digests(strict=False)  # any left by a process killed before publishing
        return store

    @property
    def audit_public_key(self) -> Ed25519PublicKey:
        return self.signer.public_key()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error.

        Writers of other processes queue on `_WriterQueue` first, so the next one starts as soon
        as this one commits instead of polling SQLite's lock.

        With ``synchronous=NORMAL``, a transaction that changed any row beyond its audit
        records (`audit_rows`) is fsynced before this returns: a CreateKey acknowledged and then
        lost to a power cut leaves every object sealed under its data keys unreadable, and a
        revoked grant that comes back is a grant no one meant to give. Calls that only use a
        key append an audit record and stay at NORMAL's speed (SQLite cannot switch
        `synchronous` inside a transaction, and which rows a call changes is known only once
        it ran)."""
        with self.lock:
            if self.closed:
                raise KMSInternalException("the store is closed")
            with self._writers:
                self.check_file()
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as e:
                    raise KMSInternalException(f"the store is busy or unreadable: {e}") from None
                changes, self._audit_changes = self._conn.total_changes, 0
                try:
                    yield self._conn
                except BaseException as e:
                    self._conn.execute("ROLLBACK")
                    if isinstance(e, sqlite3.Error):
                        _raise_translated(e, self.path)
                    raise
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.OperationalError as e:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise KMSInternalException(f"the store could not commit: {e}") from None
                changed = self._conn.total_changes - changes > self._audit_changes
                if changed and self.synchronous != "FULL":
                    self._sync_wal()

    def audit_rows(self, rows: int) -> None:
        """`rows` of the open write transaction's changes were audit bookkeeping (a record, a
        seal): alone, they do not make its commit wait for an fsync (`write`)."""
        self._audit_changes += rows

    def _sync_wal(self) -> None:
        """What ``synchronous=FULL`` does at a commit: fsync the WAL file that holds it (and,
        once, the folder that holds the WAL file's name). A WAL file already checkpointed and
        removed left the commit in the database file, which the checkpoint synced."""
        wal = f"{self.path}-wal"
        try:
            fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
            if not self._wal_dir_synced:
                _fsync_dir(self.path.parent)
                self._wal_dir_synced = True
        except OSError as e:
            raise KMSInternalException(
                f"the store committed, but could not sync {wal} to disk ({e.strerror}): the "
                "change may not survive a power cut"
            ) from None
        finally:
            os.close(fd)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot (a deferred transaction)."""
        with self.lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            except sqlite3.Error as e:
                _raise_translated(e, self.path)
                raise
            finally:
                self._conn.execute("ROLLBACK")

    @contextmanager
    def side_reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of its own, in autocommit (each statement its own snapshot),
        for a long scan: its reads take neither the write lock nor this store's connection,
        so every other call, of this process or another, goes on meanwhile."""
        conn = sqlite3.connect(
            read_only_uri(self.path),
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=30,
        )
        try:
            yield conn
        finally:
            conn.close()

    def publish_digests(self, *, strict: bool = True) -> int:
        """Write every seal not yet published as a digest file; returns how many were written.

        Called after the commit that made a seal. With `strict` false (after an ordinary call)
        a failure is logged, not raised: the call is committed and the seal stays pending until
        the next publish; ``envelope audit verify`` reports pending seals.
        """
        with self.lock:
            self.sealer.dirty = False
            with self.read() as conn:
                pending = conn.execute(
                    "SELECT counter, digest FROM seals WHERE published=0 AND counter IS NOT NULL "
                    "ORDER BY counter"
                ).fetchall()
            done: list[int] = []
            try:
                for counter, text in pending:
                    data = text if isinstance(text, bytes) else str(text).encode()
                    self.digests.publish(name_of(int(counter)), data)
                    done.append(int(counter))
            except (OSError, StoreError) as e:
                why = self.digests.scrub(str(e))
                if strict:
                    raise StoreError(
                        f"cannot publish audit digests to {self.digests}: {why}"
                    ) from None
                _log.warning("audit digests not published to %s: %s", self.digests, why)
            finally:
                if done:
                    with self.write() as conn:
                        changes = conn.total_changes
                        conn.executemany(
                            "UPDATE seals SET published=1 WHERE counter=?", [(c,) for c in done]
                        )
                        self.audit_rows(conn.total_changes - changes)
            return len(done)

    def seal_counter(self, conn: sqlite3.Connection) -> int:
        return self.sealer.counter(conn)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self._conn.close()
                self._writers.close()


class _WriterQueue:
    """The processes writing one store, queued in the kernel: an exclusive `flock` on the
    store file, held for each write transaction (`Store.write`).

    SQLite alone makes a writer that finds its lock taken *sleep* and retry (its busy handler
    sleeps 1, 2, 5, 10, ... ms), so with two server workers a call often waited tens of
    milliseconds for a lock that had been free for most of them: `envelope serve --workers 2`
    answered fewer calls than one worker, with a p99 of 37-40 ms against 10-11 ms. A blocked
    `flock` returns the moment the holder commits (measured: p99 10-12.5 ms, and two workers
    ahead of one). It does not replace SQLite's lock, which still decides (a POSIX byte-range
    lock, independent of `flock` on Linux): a writer that does not queue here (the sqlite3
    shell, the schema upgrade at open) is serialised by SQLite as before. Where the file system
    has no `flock` (some network file systems) the queue is skipped.

    A writer first polls the queue for up to `_SPIN_SECONDS` (about one transaction) before it
    sleeps in it: on this VM waking a sleeping process costs ~150 us, and two processes that
    do nothing but write handed the lock over at 2,400 calls/s sleeping, 3,080/s polling first
    (3,700/s with SQLite's sleeps, which let one process run many transactions in a row while
    the other waits milliseconds: throughput bought with the tail latency above).

    The descriptor is this process's own: a forked child opens its own, since a `flock` is
    shared by every process holding the same open file description.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pid = -1
        self._fd = -1
        self._unsupported = False

    def _descriptor(self) -> int:
        if self._pid != os.getpid() and not self._unsupported:
            self._pid = os.getpid()  # (a parent's descriptor in a child is left to the parent)
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._fd = -1
        return self._fd

    def __enter__(self) -> None:
        fd = self._descriptor()
        if fd >= 0:
            try:
                deadline = time.perf_counter() + _SPIN_SECONDS
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.perf_counter() > deadline:
                            fcntl.flock(fd, fcntl.LOCK_EX)
                            break
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    raise
                self._unsupported = True  # SQLite's lock only, from now on
                self.close()

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._pid == os.getpid():
            os.close(fd)


#: How long a writer polls the queue before it sleeps in it (see `_WriterQueue`).
_SPIN_SECONDS = 0.0002
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


_SIDE_FILES = ("-wal", "-shm", "-journal")


def store_files(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The store file at `path` and the side files SQLite keeps beside it."""
    return tuple(os.fspath(path) + suffix for suffix in ("", *_SIDE_FILES))
_REQUIRED_META = ("salt", "verifier", "audit_sk", "audit_pk")


def _check_file(p: Path) -> None:
    """Refuse an existing store file that cannot be a store (never re-initialise it)."""
    try:
        size = p.stat().st_size
    except OSError as e:
        raise StoreError(f"cannot read the KMS store {p}: {e.strerror}") from None
    if not p.is_file():
        raise StoreError(f"{p} is not a regular file, so it cannot be a KMS store")
    if size == 0:
        raise StoreError(
            f"{p} is empty (0 bytes): the KMS store was truncated. It is not re-created, "
            "because a new store would lose every key; restore it from a backup."
        )


@contextmanager
def _directory_lock(folder: Path) -> Iterator[None]:
    """An exclusive `flock` on the folder: one process at a time decides to create a store."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_only_uri(p: Path) -> str:
    """The SQLite URI that opens the store at `p` read-only (its path percent-encoded: a "?" or
    "#" in it is not the URI's own), for every read-only opener."""
    return p.absolute().as_uri() + _read_only_query(p)


def _read_only_query(p: Path) -> str:
    """The URI query that opens `p` read-only. On a read-only file system, a store closed
    cleanly (no WAL beside it) is opened ``immutable``: SQLite otherwise needs to create the
    WAL index (``-shm``) there, and failed with "unable to open database file". A WAL left
    beside it is never skipped that way: the open then fails and says so."""
    try:
        read_only_fs = bool(os.statvfs(p.parent).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_fs = False
    wal = p.with_name(p.name + "-wal")
    if read_only_fs and not wal.exists():
        return "?mode=ro&immutable=1"
    return "?mode=ro"


def unwritable(p: Path) -> str | None:
    """Why the store at `p` cannot be written (its file system is read-only, or it or its
    folder is not writable by this user), or None."""
    folder = p.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    except OSError:
        return None  # an unreadable folder: opening it says why
    for target in (folder, p):
        if target.exists() and not os.access(target, os.W_OK):
            return f"{target} is not writable by this user"
    return None


def _check_writable(p: Path) -> None:
    """A store opened to write (every call appends its audit record) must be writable, with
    its folder (SQLite's journal and WAL files live there): a read-only mount opened, then
    failed every call with an internal error, or was called corrupt."""
    why = unwritable(p)
    if why is not None:
        raise StoreError(
            f"the KMS store {p} cannot be written ({why}): the KMS writes an audit record "
            "for every call (`envelope audit verify` and `envelope audit tail` read a store "
            "there)"
        )


def _create(p: Path, provider: RootKeyProvider) -> None:
    """Create a new store at `p`, atomically: built under a temporary name, then linked.

    Only where nothing of a store exists: leftover ``-wal``/``-shm``/``-journal`` files mean a
    store was there and is gone, and the root-key provider refuses to create a root key where
    one exists (`FileRootKey`), so a lost store is never silently replaced by an empty one. The
    folder lock makes the check and the creation one step across processes, and the link (which
    never replaces) means the store's name only ever holds a complete, initialised store.
    """
    with _directory_lock(p.parent):
        if p.exists():  # another process created it while we waited
            return
        if os.path.islink(p):  # dangling: a store is never made through a link
            raise StoreError(
                f"the KMS store {p} is a symbolic link to {os.readlink(p)!r}, which leads to "
                "no existing file: a new store is not created through it. Remove the link, or "
                "point it at the store"
            )
        leftovers = [p.name + s for s in _SIDE_FILES if p.with_name(p.name + s).exists()]
        if leftovers:
            raise StoreError(
                f"the KMS store {p} is missing but {', '.join(leftovers)} "
                f"{'is' if len(leftovers) == 1 else 'are'} still in {p.parent}: the store was "
                "deleted or moved. A new store is not created over its remains; restore "
                f"{p.name} from a backup (with its root key)."
            )
        tmp = p.with_name(f".{p.name}.new-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                os.chmod(tmp, 0o600)
                # Small pages: a call rewrites one audit page in the WAL, so 1 KiB pages make a
                # commit about a third cheaper than 4 KiB ones (must precede WAL mode).
                conn.execute("PRAGMA page_size=1024")
                conn.execute("PRAGMA journal_mode=WAL")
                _initialise(conn, provider)
            finally:
                conn.close()  # the last connection: checkpoints and removes the -wal
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, p)
            _fsync_dir(p.parent)
        finally:
            for suffix in ("", *_SIDE_FILES):
                with suppress(FileNotFoundError):
                    os.unlink(f"{tmp}{suffix}")


def _sealed_row(rk: RootKey, meta: dict[str, bytes], name: str, aad: bytes, what: str) -> bytes:
    """A value of the meta table sealed under the root key, once the root key is known to be
    the store's: a failure to open it is TamperedStoreError, not RootKeyError."""
    try:
        return rk.unseal(meta[name], aad)
    except RootKeyError:
        raise TamperedStoreError(
            f"the store's {what} ({name}) does not open under its root key, which opens the "
            "store's verifier: the row was replaced or edited. Nothing was changed; restore "
            "the store from a backup"
        ) from None


def _open_root(provider: RootKeyProvider, meta: dict[str, bytes], *, create: bool) -> RootKey:
    """The root key, derived with the store's own KDF parameters when it kept them."""
    if isinstance(provider, PassphraseRootKey):
        return provider.open(meta["salt"], create=create, parameters=meta.get("root_kdf"))
    return provider.open(meta["salt"], create=create)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _initialise(conn: sqlite3.Connection, provider: RootKeyProvider) -> dict[str, bytes]:
    """Create the schema and the sealed verifier and audit key, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        salt = os.urandom(16)
        kdf: dict[str, bytes] = {}
        if isinstance(provider, PassphraseRootKey):
            kdf["root_kdf"] = provider.parameters()
        rk = _open_root(provider, {"salt": salt, **kdf}, create=True)
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
            "verifier": rk.seal(VERIFIER, verifier_aad(SCHEMA_VERSION)),
            "audit_sk": rk.seal(raw, b"audit-signing-key"),
            "audit_pk": sk.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
            "fingerprint_key": rk.seal(os.urandom(32), b"fingerprint-key"),
            "key_row_mac_key": rk.seal(os.urandom(32), _rows.KEY_ROW_MAC_AAD),
            "store_id": os.urandom(16).hex().encode(),
            "seal_counter": rk.seal(bytes(8), audit.SEAL_COUNTER_AAD),
            **kdf,
        }
        conn.executemany("INSERT INTO meta(name, value) VALUES (?, ?)", list(meta.items()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return meta


def _kind(description: str) -> str:
    """A root-key provider's kind from its description: a file, a passphrase or a PKCS#11 key."""
    for prefix in ("root-key file ", "PKCS#11 key "):
        if description.startswith(prefix):
            return prefix
    return description
