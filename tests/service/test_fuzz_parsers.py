"""Fuzz targets for what the KMS parses from outside: ciphertext blobs, the store's key rows,
audit records and digest files. Only typed errors may come out (`KmsServiceError` and its
subclasses), never a crash or another exception. Each target prints how many inputs it tried.

CI size here; for a long run: ``HYPOTHESIS_PROFILE=long`` (see the profile below).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope.service import KeyService, _blob, audit, digests
from envelope.service._core import _authentic_meta
from envelope.service.errors import (
    DigestError,
    InvalidCiphertextException,
    KmsServiceError,
    TamperedStoreError,
)

from .conftest import FakeClock, new_key, open_store

settings.register_profile(
    "service-ci", max_examples=300, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "long", max_examples=200_000, deadline=None, suppress_health_check=list(HealthCheck)
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "service-ci")
TRIED: dict[str, int] = {}


def _fewer(n: int) -> settings:
    """Targets that run a store transaction per input: `n` in CI, the profile's size when long."""
    base = settings.get_profile(PROFILE)
    return settings(base, max_examples=min(n, base.max_examples) if PROFILE != "long" else 20_000)


def tried(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    for name, n in sorted(TRIED.items()):
        print(f"fuzz {name}: {n} inputs, only typed errors")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyService, str, bytes]]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    svc = KeyService(open_store(home), clock=FakeClock(), owns_store=True)
    kid = new_key(svc)
    blob = svc.encrypt(key_id=kid, plaintext=b"seed", encryption_context={"a": "b"})
    yield svc, kid, bytes(blob["CiphertextBlob"])
    svc.close()


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, and the seed with bytes flipped, cut or extended."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        b = bytearray(seed)
        for _ in range(draw(st.integers(0, 4))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(b)))
        return bytes(b[:cut]) + draw(st.binary(max_size=16))

    return st.one_of(st.binary(max_size=200), mutate())


@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_blob_parser(world: tuple[KeyService, str, bytes], data: st.DataObject) -> None:
    _, _, seed = world
    raw = data.draw(mutations(seed))
    tried("ciphertext blob (parse + open)")
    try:
        parsed = _blob.parse(raw)
        _blob.open_(parsed, os.urandom(32), {"a": "b"})
    except InvalidCiphertextException:
        pass


@settings(_fewer(100))
@given(data=st.data())
def test_decrypt_of_any_blob(world: tuple[KeyService, str, bytes], data: st.DataObject) -> None:
    svc, _, seed = world
    raw = data.draw(mutations(seed))
    tried("Decrypt(any blob)")
    try:
        out = svc.decrypt(ciphertext_blob=raw, encryption_context={"a": "b"})
        assert raw == seed and out["Plaintext"] == b"seed"
    except KmsServiceError:
        pass


SQL_VALUES = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=80),
    st.binary(max_size=80),
)


@settings(settings.get_profile(PROFILE))
@given(text=SQL_VALUES, mac=SQL_VALUES, region=st.text(max_size=20), key_id=st.text(max_size=40))
def test_key_row_parser(
    world: tuple[KeyService, str, bytes], text: object, mac: object, region: str, key_id: str
) -> None:
    svc, _, _ = world
    tried("key row (meta, mac)")
    parsed = _authentic_meta(svc.store, region, key_id, text, mac)
    assert parsed is None  # nothing forged without the row key verifies


@settings(_fewer(60))
@given(column=st.sampled_from(["meta", "mac", "gen"]), value=SQL_VALUES)
def test_key_rows_in_the_store(
    world: tuple[KeyService, str, bytes], column: str, value: object
) -> None:
    """A key row with any value in any column: the key is refused with a typed error."""
    svc, _, _ = world
    tried("stored key row")
    kid = new_key(svc)
    path = svc.store.path
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    before = conn.execute(f"SELECT {column} FROM keys WHERE key_id=?", (kid,)).fetchone()[0]
    try:
        conn.execute(f"UPDATE keys SET {column}=? WHERE key_id=?", (value, kid))
        changed = value != before
    except sqlite3.IntegrityError:
        changed = False  # NOT NULL: SQLite itself refuses it; the row stays as it was
    conn.execute("UPDATE keys SET gen=gen+1 WHERE key_id=? AND typeof(gen)='integer'", (kid,))
    conn.close()
    if changed and column in ("meta", "mac"):  # what the row MAC covers: always refused
        with pytest.raises(TamperedStoreError):
            svc.describe_key(key_id=kid)
        assert any(kid in problem for problem in svc.check_store())
    else:
        try:
            svc.describe_key(key_id=kid)  # gen is not authenticated: only typed errors
        except TamperedStoreError:
            pass
        assert not any(kid in problem for problem in svc.check_store())
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("DELETE FROM keys WHERE key_id=?", (kid,))
    conn.close()


@settings(_fewer(80))
@given(
    column=st.sampled_from(["prev", "hash", "body", "seq"]),
    value=SQL_VALUES,
    which=st.integers(1, 5),
)
def test_audit_record_parser(
    tmp_path_factory: pytest.TempPathFactory, column: str, value: object, which: int
) -> None:
    """Any value in any column of an audit record: verify reports, never raises."""
    tried("audit record")
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE audit(seq INTEGER PRIMARY KEY, prev BLOB, hash BLOB, body TEXT)")
    conn.execute("CREATE TABLE seals(seq INTEGER PRIMARY KEY, chain BLOB, at REAL, sig BLOB)")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    sk = Ed25519PrivateKey.generate()
    for i in range(5):
        audit.append(conn, {"operation": "X", "params": {"i": i}}, sk, 1.0)
    audit.seal_now(conn, sk, 2.0)
    try:
        conn.execute(f"UPDATE audit SET {column}=? WHERE seq=?", (value, which))
    except sqlite3.IntegrityError:
        return  # a duplicate or non-integer primary key: SQLite itself refuses it
    report = audit.verify(conn, sk.public_key())
    assert report.ok == (report.problem is None)
    list(audit.tail(conn, 3)) if report.ok else None


JSON_VALUES = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=40))


@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_digest_parser(data: st.DataObject) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = digests.make(
        Ed25519PrivateKey.generate(),
        store_id="s",
        counter=2,
        records=9,
        chain_head=bytes(32),
        time=1.0,
        previous=("digest-000000000001.json", "00" * 32),
    )
    raw = data.draw(
        st.one_of(
            mutations(seed),
            st.builds(
                lambda d: json.dumps(d).encode(),
                st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=12),
            ),
        )
    )
    tried("digest file")
    try:
        d = digests.parse(raw)
        # only the genuine digest parses (a missing final newline changes nothing signed)
        assert raw.rstrip(b"\n") == seed.rstrip(b"\n") and d.counter == 2
    except DigestError:
        pass


def test_counts_were_reported(tmp_path: Path) -> None:
    assert TRIED, "the fuzz targets above ran"
