"""The tamper-evident audit log: a hash chain over every call, sealed by signed digests.

Record ``n`` is stored as ``(seq=n, prev, hash, body)`` where ``body`` is canonical JSON (sorted
keys, no spaces) and::

    hash(n) = SHA-256("envelope/kms/audit/v1" || u64(n) || hash(n-1) || body(n)),  hash(0) = 32 x 00

so editing a body, deleting, inserting or reordering records breaks the chain at the first
altered record. An attacker who can write the file could recompute the whole chain, so every
`SEAL_EVERY`-th record (and the last record when the service closes, or on demand) is sealed::

    seal(n) = Ed25519(audit key, "envelope/kms/audit-seal/v1" || u64(n) || hash(n) || f64(time))

The signing key is kept sealed under the root key, so seals cannot be forged without it, and
verification checks that the stored public key belongs to that signing key. A tail cut at or
below the last seal is detected (the seal names a record that is gone, or a mandatory seal at a
multiple of `SEAL_EVERY` is missing) unless the seals above the cut are deleted too; that, a
rewritten chain with the later seals deleted, and a store rolled back to an older copy are
visible only against an anchor outside the file: every seal is also a signed digest file
(`digests`, written by `Sealer`) with a monotonic seal counter. A cut above the last seal (and
the latest digest) is not detectable: see docs/security.md.

Records never carry plaintext, key material or ciphertext: `append` refuses a body with a
field it does not know (`FIELDS`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import digests
from ._columns import blob_or_none, stored_blob, unsealed
from .errors import TamperedStoreError
from .rootkey import RootKey

__all__ = (
    "FIELDS",
    "SEAL_EVERY",
    "AuditProblem",
    "Sealer",
    "VerifyReport",
    "append",
    "seal_now",
    "verify",
)

SEAL_EVERY = 256
SEAL_COUNTER_AAD = b"seal-counter"
GENESIS = bytes(32)
_DOMAIN = b"envelope/kms/audit/v1"
_SEAL_DOMAIN = b"envelope/kms/audit-seal/v1"
FIELDS = frozenset(
    {
        "time",
        "principal",
        "operation",
        "key_id",
        "request_id",
        "source_ip",
        "user_agent",
        "region",
        "outcome",
        "error_code",
        "alarm",
        "params",
        # access control (issue 10): the calling account, "allowed" / "denied" (None when
        # the call failed before a decision), what allowed it (a key-policy or identity-policy
        # statement, a grant id, "root"), and why a denial was made
        "account",
        "decision",
        "matched",
        "reason",
        # custom key stores (issue 13): each HSM or XKS call made for the KMS call
        "keystore_calls",
        # the KeyMaterialIds the call used or changed (as CloudTrail's keyMaterialId): which
        # backing key encrypted or decrypted, which material was imported, deleted or rotated
        "key_material_ids",
    }
)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(body: Mapping[str, object]) -> str:
    return _ENCODER.encode(body)


def chain_hash(seq: int, prev: bytes, body: str) -> bytes:
    return hashlib.sha256(_DOMAIN + struct.pack(">Q", seq) + prev + body.encode("utf-8")).digest()


def _seal_message(seq: int, chain: bytes, at: float) -> bytes:
    return _SEAL_DOMAIN + struct.pack(">Q", seq) + chain + struct.pack(">d", at)


Head = tuple[int, bytes]


def head(conn: sqlite3.Connection) -> Head:
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return (0, GENESIS)
    return (int(row[0]), stored_blob(row[1], f"the hash of audit record {row[0]}"))


class Sealer:
    """Makes seals inside the caller's write transaction.

    A seal is the signed row in ``seals`` (above) and, from schema 3, the next value of the
    store's seal counter (sealed under the root key in ``meta``) and a signed digest of the seal
    (`digests`) kept in the row until it is published outside the store. `dirty` tells the
    service that a seal was made, so it publishes after the commit.
    """

    def __init__(self, signer: Ed25519PrivateKey, root: RootKey, store_id: str) -> None:
        self.signer = signer
        self.root = root
        self.store_id = store_id
        self.dirty = False

    def __repr__(self) -> str:
        return f"Sealer(store_id={self.store_id!r})"

    def counter(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE name='seal_counter'").fetchone()
        if row is None:
            raise TamperedStoreError("the store's seal counter is missing")
        raw = unsealed(self.root, row[0], SEAL_COUNTER_AAD, "the store's seal counter")
        if len(raw) != 8:
            raise TamperedStoreError("the store's seal counter is malformed")
        return int(struct.unpack(">Q", raw)[0])

    def seal(self, conn: sqlite3.Connection, seq: int, h: bytes, now: float) -> None:
        counter = self.counter(conn) + 1
        previous = None
        if counter > 1:
            row = conn.execute(
                "SELECT digest FROM seals WHERE counter=?", (counter - 1,)
            ).fetchone()
            if row is None or row[0] is None:
                raise TamperedStoreError(f"the store's seal {counter - 1} is missing")
            text = row[0] if isinstance(row[0], bytes) else str(row[0]).encode()
            previous = (digests.name_of(counter - 1), hashlib.sha256(text).hexdigest())
        digest = digests.make(
            self.signer,
            store_id=self.store_id,
            counter=counter,
            records=seq,
            chain_head=h,
            time=now,
            previous=previous,
        )
        sig = self.signer.sign(_seal_message(seq, h, now))
        conn.execute(
            "INSERT OR REPLACE INTO seals(seq, chain, at, sig, counter, digest, published) "
            "VALUES (?,?,?,?,?,?,0)",
            (seq, h, now, sig, counter, digest),
        )
        conn.execute(
            "UPDATE meta SET value=? WHERE name='seal_counter'",
            (self.root.seal(struct.pack(">Q", counter), SEAL_COUNTER_AAD),),
        )
        self.dirty = True


def append(
    conn: sqlite3.Connection,
    body: Mapping[str, object],
    signer: Ed25519PrivateKey | Sealer,
    now: float,
    known_head: Head | None = None,
) -> Head:
    """Append one record inside the caller's write transaction; seal every SEAL_EVERY-th.

    `known_head` is the head this process last committed: if another process appended since,
    the slot after it is taken (sequence numbers are contiguous), the insert fails, and the
    real head is read. That saves a query per call when one process does most of the work.
    """
    unknown = set(body) - FIELDS
    if unknown:
        raise ValueError(f"audit records cannot carry {sorted(unknown)}")
    text = canonical(body)
    last, prev = known_head if known_head is not None else head(conn)
    for _ in range(2):
        seq = last + 1
        h = chain_hash(seq, prev, text)
        try:
            conn.execute(
                "INSERT INTO audit(seq, prev, hash, body) VALUES (?,?,?,?)", (seq, prev, h, text)
            )
            break
        except sqlite3.IntegrityError:
            last, prev = head(conn)
    else:  # pragma: no cover - the head was just read inside this write transaction
        raise sqlite3.IntegrityError("cannot append to the audit log")
    if seq % SEAL_EVERY == 0:
        _seal(conn, seq, h, signer, now)
    return seq, h


def _seal(
    conn: sqlite3.Connection, seq: int, h: bytes, signer: Ed25519PrivateKey | Sealer, now: float
) -> None:
    if isinstance(signer, Sealer):
        signer.seal(conn, seq, h, now)
        return
    # A schema-2 store being upgraded: a seal row without counter or digest.
    sig = signer.sign(_seal_message(seq, h, now))
    conn.execute(
        "INSERT OR REPLACE INTO seals(seq, chain, at, sig) VALUES (?,?,?,?)", (seq, h, now, sig)
    )


def seal_now(
    conn: sqlite3.Connection, signer: Ed25519PrivateKey | Sealer, now: float
) -> int | None:
    """Seal the last record if it is not sealed yet; returns the sealed seq (None: empty log)."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return None
    seq, h = int(row[0]), stored_blob(row[1], f"the hash of audit record {row[0]}")
    if conn.execute("SELECT 1 FROM seals WHERE seq=?", (seq,)).fetchone() is None:
        _seal(conn, seq, h, signer, now)
    return seq


@dataclass(frozen=True)
class AuditProblem:
    """The first thing wrong with the log: `seq` is the first record that cannot be trusted."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    records: int
    seals: int
    last_sealed: int
    problem: AuditProblem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unsealed(self) -> int:
        """Records above the last seal: the chain alone cannot authenticate them (a process
        stopped before sealing them, or someone who can write the store appended them)."""
        return max(0, self.records - self.last_sealed) if self.ok else 0

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "records": self.records,
            "seals": self.seals,
            "last_sealed": self.last_sealed,
            "unsealed_records": self.unsealed,
            "first_bad_record": self.problem.seq if self.problem else None,
            "problem": str(self.problem) if self.problem else None,
        }


def verify(conn: sqlite3.Connection, public: Ed25519PublicKey) -> VerifyReport:
    """Walk the whole chain and every seal; report the first record that cannot be trusted."""
    seals: dict[int, tuple[bytes, float, bytes]] = {}
    problems: list[AuditProblem] = []
    for s, c, a, g in conn.execute("SELECT seq, chain, at, sig FROM seals ORDER BY seq"):
        chain, sig = blob_or_none(c), blob_or_none(g)
        if chain is None or sig is None or not isinstance(a, int | float):
            problems.append(AuditProblem(int(s), "its seal is malformed (edited)"))
            break
        seals[int(s)] = (chain, float(a), sig)
    prev = GENESIS
    expected = 1
    count = 0
    last_good_seal = 0
    # (the body is read as its bytes and decoded here: text that is not UTF-8, which only an
    # edit can put there, made sqlite3 raise mid-walk, and verify end in a traceback)
    for seq, raw_prev, raw_hash, raw_body, body_type in conn.execute(
        "SELECT seq, prev, hash, CAST(body AS BLOB), typeof(body) FROM audit ORDER BY seq"
    ):
        count += 1
        stored_prev, stored_hash = blob_or_none(raw_prev), blob_or_none(raw_hash)
        if seq != expected:
            problems.append(
                AuditProblem(expected, f"missing (deleted): the log jumps to record {seq}")
            )
            break
        if stored_hash is None or body_type != "text":
            problems.append(AuditProblem(seq, "is malformed (a column has the wrong type)"))
            break
        try:
            body = bytes(raw_body).decode("utf-8")
        except UnicodeDecodeError:
            problems.append(AuditProblem(seq, "was edited: its body is not UTF-8 text"))
            break
        if stored_prev != prev:
            problems.append(
                AuditProblem(
                    seq,
                    "does not follow the previous record (inserted, reordered or "
                    "a record before it was deleted)",
                )
            )
            break
        h = chain_hash(seq, prev, body)
        if h != stored_hash:
            problems.append(AuditProblem(seq, "was edited: its hash does not match its content"))
            break
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            problems.append(AuditProblem(seq, "is not valid JSON"))
            break
        if not isinstance(parsed, dict):  # (the service writes objects only: `append`)
            problems.append(AuditProblem(seq, "is not an audit record (not a JSON object)"))
            break
        if seq in seals:
            chain, at, sig = seals[seq]
            if chain != h:
                problems.append(
                    AuditProblem(
                        last_good_seal + 1,
                        f"the chain was rewritten between records {last_good_seal + 1} and {seq} "
                        f"(the seal at {seq} does not match)",
                    )
                )
                break
            try:
                public.verify(sig, _seal_message(seq, chain, at))
            except InvalidSignature:
                problems.append(AuditProblem(seq, "its seal's signature is invalid"))
                break
            last_good_seal = seq
        elif seq % SEAL_EVERY == 0:
            problems.append(
                AuditProblem(last_good_seal + 1, f"the mandatory seal at record {seq} is missing")
            )
            break
        prev = h
        expected = seq + 1
    if not problems:
        last = expected - 1
        beyond = [s for s in seals if s > last]
        if beyond:
            problems.append(
                AuditProblem(
                    last + 1,
                    f"the log was cut: it ends at record {last} but a seal covers record "
                    f"{max(beyond)}",
                )
            )
    return VerifyReport(count, len(seals), last_good_seal, problems[0] if problems else None)


def tail(conn: sqlite3.Connection, n: int) -> Iterator[dict[str, object]]:
    """The last `n` records, oldest first, each with its `seq`."""
    rows = conn.execute(
        "SELECT seq, CAST(body AS BLOB) FROM audit ORDER BY seq DESC LIMIT ?", (n,)
    ).fetchall()
    for seq, raw in reversed(rows):
        try:
            record = json.loads(bytes(raw).decode("utf-8"))
        except (TypeError, ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
            record = None
        if not isinstance(record, dict):
            # an edited record is shown for what it is, not a traceback that hides the rest
            record = {"malformed": "not a JSON object: edited (`envelope audit verify`)"}
        record["seq"] = seq
        yield record
