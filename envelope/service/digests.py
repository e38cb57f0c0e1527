"""Signed audit digests kept outside the store: the anchor that makes a cut or a rollback visible.

The hash chain and the seals live in the store they protect, so whoever can write the store can
cut its tail together with the seals above the cut, or roll the whole file back to an older
copy, and the store alone still verifies. As CloudTrail delivers its digest files outside the
trail, every seal is also written as a digest file to a separate location (a folder, or an
``s3://`` prefix): ``digest-<counter>.json``, canonical JSON::

    {"format": "envelope-kms-audit-digest/1", "store_id": ..., "counter": n,
     "records": seq of the last sealed record, "chain_head": hex hash(records), "time": t,
     "previous": {"name": "digest-<n-1>.json", "sha256": hex of that file} (null for n = 1),
     "public_key": base64 Ed25519 key, "public_key_fingerprint": "sha256:...",
     "signature": base64 Ed25519 over "envelope/kms/audit-digest/v1\\n" || canonical(the rest)}

`counter` is the store's seal counter, kept sealed under the root key in the store and raised by
one at every seal, so a store rolled back to an older copy has an older counter than the latest
digest. Each digest names the previous one by name and hash, so deleting or editing a digest
breaks the chain from the digests alone. `verify_chain` checks the digests; `check_store`
compares a store with them. What this does and does not detect: docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..uri_secrets import redact_uri, without_secrets
from ._columns import blob_or_none
from .errors import DigestError

__all__ = (
    "FORMAT",
    "ChainReport",
    "Digest",
    "DigestLocation",
    "check_store",
    "default_location",
    "fingerprint",
    "make",
    "name_of",
    "parse",
    "verify_chain",
)

FORMAT = "envelope-kms-audit-digest/1"
_SIGN_DOMAIN = b"envelope/kms/audit-digest/v1\n"
_NAME_RE = re.compile(r"^digest-(\d{12})\.json$")
MAX_DIGEST_BYTES = 4096
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def name_of(counter: int) -> str:
    return f"digest-{counter:012d}.json"


def fingerprint(public_key: bytes) -> str:
    return "sha256:" + hashlib.sha256(public_key).hexdigest()


def _raw_public(signer: Ed25519PrivateKey) -> bytes:
    return signer.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


@dataclass(frozen=True)
class Digest:
    """One parsed digest whose signature verified under its own `public_key`."""

    store_id: str
    counter: int
    records: int
    chain_head: bytes
    time: float
    previous: tuple[str, str] | None  # (name, sha256 hex)
    public_key: bytes
    text: bytes = field(repr=False)

    @property
    def name(self) -> str:
        return name_of(self.counter)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text).hexdigest()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


def make(
    signer: Ed25519PrivateKey,
    *,
    store_id: str,
    counter: int,
    records: int,
    chain_head: bytes,
    time: float,
    previous: tuple[str, str] | None,
) -> bytes:
    """The bytes of a signed digest file (deterministic: Ed25519 signatures are)."""
    public = _raw_public(signer)
    body: dict[str, Any] = {
        "format": FORMAT,
        "store_id": store_id,
        "counter": counter,
        "records": records,
        "chain_head": chain_head.hex(),
        "time": time,
        "previous": None if previous is None else {"name": previous[0], "sha256": previous[1]},
        "public_key": base64.b64encode(public).decode("ascii"),
        "public_key_fingerprint": fingerprint(public),
    }
    body["signature"] = base64.b64encode(
        signer.sign(_SIGN_DOMAIN + _ENCODER.encode(body).encode("ascii"))
    ).decode("ascii")
    return (_ENCODER.encode(body) + "\n").encode("ascii")


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DigestError(f"its {name!r} is missing or malformed")
    return value


def _b64(text: str, name: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise DigestError(f"its {name!r} is not base64") from None
    if len(raw) != size:
        raise DigestError(f"its {name!r} is not {size} bytes")
    return raw


def parse(data: bytes) -> Digest:
    """Parse a digest file and verify its signature; anything wrong is `DigestError`."""
    if len(data) > MAX_DIGEST_BYTES:
        raise DigestError(f"it is larger than {MAX_DIGEST_BYTES} bytes")
    try:
        body = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DigestError("it is not ASCII JSON") from None
    if not isinstance(body, dict):
        raise DigestError("it is not a JSON object")
    if body.get("format") != FORMAT:
        raise DigestError(f"its format is not {FORMAT}")
    counter = _field(body, "counter", int)
    records = _field(body, "records", int)
    if counter < 1 or records < 0:
        raise DigestError("its counter or record count is out of range")
    head_hex = _field(body, "chain_head", str)
    try:
        head = bytes.fromhex(head_hex)
    except ValueError:
        raise DigestError("its 'chain_head' is not hex") from None
    if len(head) != 32:
        raise DigestError("its 'chain_head' is not 32 bytes")
    try:
        time = float(_field(body, "time", (int, float)))
    except OverflowError:  # (an integer past a float's range: only an edit writes one)
        raise DigestError("its 'time' is out of range") from None
    if not math.isfinite(time):
        raise DigestError("its 'time' is out of range")
    store_id = _field(body, "store_id", str)
    prev = body.get("previous")
    previous: tuple[str, str] | None = None
    if prev is not None:
        if not isinstance(prev, dict):
            raise DigestError("its 'previous' is malformed")
        previous = (_field(prev, "name", str), _field(prev, "sha256", str))
    public = _b64(_field(body, "public_key", str), "public_key", 32)
    if body.get("public_key_fingerprint") != fingerprint(public):
        raise DigestError("its public_key_fingerprint does not match its public key")
    signature = _b64(_field(body, "signature", str), "signature", 64)
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            signature, _SIGN_DOMAIN + _ENCODER.encode(unsigned).encode("ascii")
        )
    except InvalidSignature:
        raise DigestError("its signature is invalid (the digest was edited)") from None
    return Digest(store_id, counter, records, head, time, previous, public, bytes(data))


def default_location(store_path: str | os.PathLike[str]) -> Path:
    """Beside the store's folder, never inside it: ``~/.envelope`` -> ``~/.envelope.audit-digests``.

    A separate path, so that deleting or restoring the home does not take the digests with it;
    on the same disk, though: point ``--digests`` / ``$ENVELOPE_AUDIT_DIGESTS`` elsewhere (another
    disk, an ``s3://`` prefix the KMS host may write but not delete) for a stronger anchor.
    """
    folder = Path(store_path).absolute().parent
    spelled = folder.parent / f"{folder.name}.audit-digests"
    real = folder.resolve()
    canonical = real.parent / f"{real.name}.audit-digests"
    # A home reached through a link and through its target is one store: one folder of
    # digests, the link's target's, so that the chain is not split between two (each then
    # "missing" the other's digests). A folder made beside the link by an earlier release is
    # kept while the target's does not exist, so that its chain goes on where it is.
    if spelled != canonical and os.path.lexists(spelled) and not os.path.lexists(canonical):
        return spelled
    return canonical


class DigestLocation:
    """A folder or an ``s3://`` prefix (through pyarrow.fs) that holds digest files."""

    def __init__(self, where: str | os.PathLike[str]) -> None:
        self.where = os.fspath(where)
        self._fs: Any = None
        self._base = ""
        if self.where.startswith("s3://"):
            import pyarrow.fs as pafs

            try:
                self._fs, base = pafs.FileSystem.from_uri(self.where)
            except (ValueError, OSError) as e:
                raise DigestError(
                    f"cannot use the digest location {self._shown()}: {self.scrub(str(e))}"
                ) from None
            self._base = base.rstrip("/")

    def _shown(self) -> str:
        # no query (endpoint settings are noise) and no secret: s3://KEY:SECRET@ is masked
        return redact_uri(self.where.split("?", 1)[0])

    def scrub(self, text: str) -> str:
        """`text` (an error from this location's filesystem) with the location's secrets
        masked, for a message or a log line."""
        return without_secrets(text, self.where)

    @property
    def is_local(self) -> bool:
        """A folder on this machine (not an ``s3://`` prefix)."""
        return self._fs is None

    def __str__(self) -> str:
        return self._shown()

    def __repr__(self) -> str:
        return f"DigestLocation({self._shown()!r})"

    def names(self) -> list[str]:
        """The digest files present, oldest first."""
        if self._fs is None:
            try:
                found = os.listdir(self.where)
            except FileNotFoundError:
                return []
        else:
            import pyarrow.fs as pafs

            infos = self._fs.get_file_info(pafs.FileSelector(self._base, allow_not_found=True))
            found = [i.base_name for i in infos if i.type == pafs.FileType.File]
        return sorted(n for n in found if _NAME_RE.match(n))

    def read(self, name: str) -> bytes:
        if self._fs is None:
            # Opened without blocking and refused unless a regular file: a FIFO under a
            # digest's name made every open of the store (which publishes) wait for ever.
            fd = os.open(os.path.join(self.where, name), os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise DigestError(f"{name} in {self} is not a regular file")
                return f.read(MAX_DIGEST_BYTES + 1)
        with self._fs.open_input_stream(f"{self._base}/{name}") as f:
            return bytes(f.read(MAX_DIGEST_BYTES + 1))

    def _exists(self, name: str) -> bool:
        if self._fs is None:
            return os.path.lexists(os.path.join(self.where, name))
        import pyarrow.fs as pafs

        info = self._fs.get_file_info(f"{self._base}/{name}")
        return bool(info.type != pafs.FileType.NotFound)

    def publish(self, name: str, data: bytes) -> None:
        """Write a new digest; never replace one (an existing different one is `DigestError`)."""
        if self._exists(name):
            if self.read(name) == data:
                return  # published already (by this store, in another process)
            raise DigestError(
                f"{name} already exists in {self} with other content: this store's seal counter "
                "went back (the store was rolled back or restored) or another store writes here"
            )
        if self._fs is not None:
            with self._fs.open_output_stream(f"{self._base}/{name}") as f:
                f.write(data)
            return
        os.makedirs(self.where, mode=0o700, exist_ok=True)
        tmp = os.path.join(self.where, f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, os.path.join(self.where, name))  # never replaces
            except FileExistsError:
                if self.read(name) != data:
                    raise DigestError(
                        f"{name} already exists in {self} with other content"
                    ) from None
            dfd = os.open(self.where, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            os.unlink(tmp)


@dataclass
class ChainReport:
    """What the digests say on their own: the verified digests and every problem found."""

    location: str
    digests: list[Digest]
    problems: list[str]

    @property
    def latest(self) -> Digest | None:
        return self.digests[-1] if self.digests else None

    def as_dict(self) -> dict[str, object]:
        latest = self.latest
        return {
            "location": self.location,
            "digests": len(self.digests),
            "latest": latest.name if latest else None,
            "latest_counter": latest.counter if latest else None,
            "latest_records": latest.records if latest else None,
            "public_key_fingerprint": latest.fingerprint if latest else None,
            "problems": list(self.problems),
        }


def verify_chain(
    location: DigestLocation, *, expected_fingerprint: str | None = None
) -> ChainReport:
    """Check every digest file: signatures, one key and store, counters 1..n, each naming the
    previous by name and hash. `expected_fingerprint` pins the key (otherwise the first
    digest's key is trusted, and printed for you to compare with the one you recorded)."""
    report = ChainReport(str(location), [], [])
    try:
        names = location.names()
    except OSError as e:
        report.problems.append(f"cannot list the digests in {location}: {e}")
        return report
    previous: Digest | None = None
    for name in names:
        try:
            d = parse(location.read(name))
        except DigestError as e:
            report.problems.append(f"{name} is not a valid signed digest: {e}")
            break
        except OSError as e:
            report.problems.append(f"cannot read {name}: {e}")
            break
        problem = _link_problem(name, d, previous, expected_fingerprint)
        if problem:
            report.problems.append(problem)
            break
        report.digests.append(d)
        previous = d
    return report


def _link_problem(
    name: str, d: Digest, previous: Digest | None, expected_fingerprint: str | None
) -> str | None:
    if d.name != name:
        return f"{name} holds digest {d.counter}: it was renamed"
    if expected_fingerprint is not None and d.fingerprint != expected_fingerprint:
        return f"{name} is signed by {d.fingerprint}, not the expected {expected_fingerprint}"
    if previous is None:
        if d.counter != 1 or d.previous is not None:
            return f"the digests start at {name}: digests 1..{d.counter - 1} are missing (deleted)"
        return None
    if d.counter != previous.counter + 1:
        return (
            f"digests {previous.counter + 1}..{d.counter - 1} are missing (deleted): "
            f"{previous.name} is followed by {name}"
        )
    if d.store_id != previous.store_id or d.public_key != previous.public_key:
        return f"{name} belongs to another store or key than {previous.name}"
    if d.previous != (previous.name, previous.sha256):
        return f"{name} does not name {previous.name} as it is: one of them was edited or replaced"
    if d.records < previous.records:
        return f"{name} covers fewer records than {previous.name}: the store was rolled back"
    return None


def _store_seals(
    conn: sqlite3.Connection, store_id: str, public_key: bytes, problems: list[str]
) -> Iterator[tuple[int, bytes, int]]:
    """Each seal row's (counter, digest text, published), once its digest text, signed by the
    store's key, vouches for the row's columns: the counter and published columns are not
    signed themselves, and a row renumbered to the counter the store expects, marked not yet
    published, hid a cut of every record and seal above it (the digests beside it deleted)."""
    for seq, chain, counter, text, published in conn.execute(
        "SELECT seq, chain, counter, digest, published FROM seals WHERE counter IS NOT NULL "
        "ORDER BY counter"
    ):
        if not isinstance(counter, int):
            continue  # an edited row: the counter check below reports the gap
        data = bytes(text) if isinstance(text, bytes | bytearray | memoryview) else b""
        try:
            d = parse(data)
        except DigestError as e:
            problems.append(f"the store's seal at record {seq} holds no valid digest: {e}")
            continue
        if (d.counter, d.records, d.store_id, d.public_key) != (
            counter,
            seq,
            store_id,
            public_key,
        ) or d.chain_head != blob_or_none(chain):
            problems.append(
                f"the store's seal at record {seq} says it is seal {counter}, but its signed "
                f"digest is seal {d.counter} of record {d.records}: the seal row was edited"
            )
            continue
        yield counter, data, 1 if published else 0


def _published_since(location: DigestLocation | None, counter: int, text: bytes) -> bool:
    """Whether digest `counter` is at `location` now, exactly as the store's seal holds it
    (digests are written once and never replaced)."""
    if location is None:
        return False
    try:
        return location.read(name_of(counter)) == text
    except OSError:
        return False


def check_store(
    conn: sqlite3.Connection,
    chain: ChainReport,
    *,
    store_id: str,
    public_key: bytes,
    seal_counter: int,
    location: DigestLocation | None = None,
) -> tuple[list[str], list[int]]:
    """Compare a store with its digests: (problems, counters of seals not yet published).

    Finds a store shorter than, or diverging from, any digest (records cut or rewritten), a
    store whose seal counter is older than the latest digest (rolled back), seal rows deleted,
    and digests deleted from the end of the chain (a published seal whose file is gone).

    `location` is where `chain` was listed: a seal the store says is published but that the
    listing lacks is looked for there by name before it is called deleted (a server running
    beside the check may have published it between the listing and the store's read).
    """
    problems: list[str] = []
    latest = chain.latest
    seals = {c: (t, p) for c, t, p in _store_seals(conn, store_id, public_key, problems)}
    top = max(seals, default=0)
    if top != seal_counter:
        problems.append(
            f"the store's seal counter is {seal_counter} but its last seal is {top}: seal rows "
            "were deleted or the counter was replaced"
        )
    if latest is not None:
        if latest.store_id != store_id or latest.public_key != public_key:
            problems.append(f"the digests in {chain.location} belong to another store")
            return problems, []
        if seal_counter < latest.counter:
            problems.append(
                f"the store was rolled back: its seal counter is {seal_counter} but the digests "
                f"reach {latest.counter} ({latest.name}, record {latest.records})"
            )
        last_seq = conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0] or 0
        for d in chain.digests:
            row = conn.execute("SELECT hash FROM audit WHERE seq=?", (d.records,)).fetchone()
            if row is None and d.records > 0:
                problems.append(
                    f"the store is shorter than {d.name}: it ends at record {last_seq} but the "
                    f"digest covers record {d.records} (records were cut)"
                )
                break
            if row is not None and blob_or_none(row[0]) != d.chain_head:
                problems.append(
                    f"the store diverges from {d.name}: its chain at record {d.records} differs "
                    "(records at or before it were rewritten)"
                )
                break
            stored = seals.get(d.counter)
            if stored is None:
                problems.append(f"the store has no seal {d.counter}, which {d.name} records")
                break
            if stored[0] != d.text:
                problems.append(f"the store's seal {d.counter} differs from {d.name}")
                break
    done = latest.counter if latest is not None else 0
    unpublished: list[int] = []
    for counter in sorted(c for c in seals if c > done):
        if seals[counter][1]:
            if not chain.problems and _published_since(location, counter, seals[counter][0]):
                continue
            if chain.problems:  # the chain check stopped early: it says nothing of deletion
                problems.append(
                    f"{name_of(counter)} was published but the digests were verified only up to "
                    f"{latest.name if latest is not None else 'none of them'} (see the digest "
                    "problems above)"
                )
            else:
                problems.append(
                    f"{name_of(counter)} was published but is not in {chain.location} (the "
                    "latest digests were deleted)"
                )
            break
        unpublished.append(counter)
    return problems, unpublished
