"""A lost, truncated or corrupt store is refused, never silently replaced (issue 8, finding 4).

Before the fix a zero-byte ``kms.sqlite3`` beside its ``root.key`` was re-initialised as a new,
empty store under the old root key (exit 0, every key gone), and a corrupt store was the
retryable `KmsTransientError`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from envelope.cli.main import main as cli_main
from envelope.errors import ConfigurationError, KmsTransientError
from envelope.kms.local import open_local
from envelope.service import RootKeyError, open_service
from envelope.service.errors import StoreError

from .conftest import new_key


def populated(home: Path) -> str:
    svc = open_service(home)
    kid = new_key(svc)
    svc.close()
    return kid


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ENVELOPE_HOME", str(home))
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    monkeypatch.delenv("ENVELOPE_REGION", raising=False)
    return home


def test_zero_byte_store_beside_its_root_key_is_refused(home: Path) -> None:
    populated(home)
    key_before = digest(home / "root.key")
    (home / "kms.sqlite3").write_bytes(b"")
    for p in home.glob("kms.sqlite3-*"):
        p.unlink()
    with pytest.raises(StoreError, match=r"empty \(0 bytes\).*restore it from a backup"):
        open_service(home)
    assert (home / "kms.sqlite3").stat().st_size == 0  # not re-initialised
    assert digest(home / "root.key") == key_before


def test_zero_byte_store_via_the_cli_exits_2_and_says_how_to_recover(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    populated(env)
    (env / "kms.sqlite3").write_bytes(b"")
    capsys.readouterr()
    assert cli_main(["keys", "list"]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "backup" in err and "kms.sqlite3" in err
    assert (env / "kms.sqlite3").stat().st_size == 0


@pytest.mark.parametrize("damage", ["garbage", "half"])
def test_corrupt_store_is_a_configuration_error_not_a_transient_one(
    home: Path, damage: str, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    populated(home)
    store = home / "kms.sqlite3"
    data = store.read_bytes()
    store.write_bytes(os.urandom(len(data)) if damage == "garbage" else data[: len(data) // 2])
    before = digest(store)
    with pytest.raises(StoreError, match="backup"):
        svc = open_service(home)
        try:  # a cut that leaves the first pages readable fails on the first call instead
            svc.list_keys()
            svc.verify_audit_log()
        finally:
            svc.close()
    with pytest.raises(ConfigurationError) as info:
        kms = open_local(home)
        try:
            kms.service.list_keys()
        except StoreError as e:
            from envelope.kms.local import _translate

            raise _translate(e) from None
        finally:
            kms.service.store.close()
    assert not isinstance(info.value, KmsTransientError)
    capsys.readouterr()
    assert cli_main(["keys", "list"]) == 2
    assert "backup" in capsys.readouterr().err
    assert digest(store) == before


def test_deleted_store_with_its_root_key_left_is_not_recreated(home: Path) -> None:
    populated(home)
    for p in home.glob("kms.sqlite3*"):
        p.unlink()
    with pytest.raises(RootKeyError, match="exists but its store does not"):
        open_service(home)
    assert not (home / "kms.sqlite3").exists()
    assert [p.name for p in home.iterdir()] == ["root.key"]


def test_store_remains_without_the_store_are_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVELOPE_KMS_PASSPHRASE", "pass")
    home.mkdir()
    (home / "kms.sqlite3-wal").write_bytes(b"x" * 100)
    with pytest.raises(StoreError, match=r"missing but kms.sqlite3-wal is still"):
        open_service(home)
    assert not (home / "kms.sqlite3").exists()


def test_passphrase_store_is_not_created_beside_a_root_key_file(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    populated(home)
    for p in home.glob("kms.sqlite3*"):
        p.unlink()
    monkeypatch.setenv("ENVELOPE_KMS_PASSPHRASE", "pass")
    with pytest.raises(RootKeyError, match="restore the store from a backup"):
        open_service(home)
    assert not (home / "kms.sqlite3").exists()


def test_concurrent_first_use_creates_one_store(home: Path) -> None:
    """Creation is serialised: every opener of a fresh home gets the same, complete store."""
    barrier = threading.Barrier(8)
    keys: list[str] = []
    errors: list[BaseException] = []

    def first_use() -> None:
        barrier.wait()
        try:
            svc = open_service(home)
            keys.append(new_key(svc))
            svc.close()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    svc = open_service(home)
    listed = {k["KeyId"] for k in svc.list_keys()["Keys"]}
    assert listed == set(keys) and len(keys) == 8
    assert svc.verify_audit_log().ok
    svc.close()
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith("kms.sqlite3-")) == [
        "kms.sqlite3",
        "root.key",
    ]
