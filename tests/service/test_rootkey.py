"""Wrong or missing root keys: a clear typed error, and nothing in the store changes."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from envelope.service import (
    FileRootKey,
    KeyService,
    PassphraseRootKey,
    RootKeyError,
    Store,
    open_service,
)

from .conftest import FakeClock, new_key, open_store


def snapshot(home: Path) -> tuple[dict[str, str], list[str]]:
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.iterdir())
        if p.is_file() and not p.name.endswith(("-shm", "-wal"))
    }
    conn = sqlite3.connect(f"file:{home / 'kms.sqlite3'}?mode=ro", uri=True)
    dump = list(conn.iterdump())
    conn.close()
    return files, dump


@pytest.fixture
def populated(home: Path, clock: FakeClock) -> Path:
    svc = KeyService(open_store(home), clock=clock, owns_store=True)
    kid = new_key(svc)
    svc.encrypt(key_id=kid, plaintext=b"x")
    svc.close()
    return home


def test_root_key_file_created_0600_on_first_use(home: Path) -> None:
    svc = open_service(home)
    svc.close()
    mode = stat.S_IMODE(os.stat(home / "root.key").st_mode)
    assert mode == 0o600 and (home / "root.key").stat().st_size == 32
    assert stat.S_IMODE(os.stat(home / "kms.sqlite3").st_mode) == 0o600


def test_wrong_root_key_file(populated: Path) -> None:
    before = snapshot(populated)
    other = populated / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    with pytest.raises(RootKeyError, match=r"does not open this store.*made with the root-key"):
        Store.open(populated / "kms.sqlite3", FileRootKey(other))
    other.unlink()
    assert snapshot(populated) == before


def test_a_root_key_of_another_kind_names_the_one_the_store_was_made_with(
    populated: Path,
) -> None:
    """A store made with the root-key file, opened with a passphrase: the refusal says which
    kind of root key the store needs, so the operator knows what to set."""
    before = snapshot(populated)
    with pytest.raises(RootKeyError) as refused:
        Store.open(populated / "kms.sqlite3", PassphraseRootKey("not it"))
    said = str(refused.value)
    assert "does not open this store" in said
    assert f"made with the root-key file {populated / 'root.key'}" in said
    assert "opened with the scrypt passphrase" in said
    assert snapshot(populated) == before


def test_missing_root_key_file_is_not_recreated(populated: Path) -> None:
    (populated / "root.key").rename(populated / "root.key.bak")
    before = snapshot(populated)
    with pytest.raises(RootKeyError, match="missing"):
        open_service(populated)
    assert not (populated / "root.key").exists()
    assert snapshot(populated) == before
    (populated / "root.key.bak").rename(populated / "root.key")
    open_service(populated).close()


def test_malformed_root_key_file(populated: Path) -> None:
    (populated / "root.key").write_bytes(b"short")
    with pytest.raises(RootKeyError, match="not 32 bytes"):
        open_service(populated)


def test_passphrase_root_key(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "kms.sqlite3"
    svc = KeyService(
        Store.open(path, PassphraseRootKey("correct horse", n=1 << 12)),
        clock=clock,
        owns_store=True,
    )
    kid = new_key(svc)
    blob = svc.encrypt(key_id=kid, plaintext=b"p")["CiphertextBlob"]
    svc.close()
    home = tmp_path
    (home / "root.key").write_bytes(os.urandom(32))  # so snapshot() has the same layout
    before = snapshot(home)
    with pytest.raises(RootKeyError):
        Store.open(path, PassphraseRootKey("wrong horse", n=1 << 12))
    assert snapshot(home) == before
    again = KeyService(
        Store.open(path, PassphraseRootKey("correct horse", n=1 << 12)),
        clock=clock,
        owns_store=True,
    )
    assert again.decrypt(ciphertext_blob=blob)["Plaintext"] == b"p"
    again.close()


def test_passphrase_from_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVELOPE_KMS_PASSPHRASE", "from-env")
    open_service(home).close()
    assert not (home / "root.key").exists()
    monkeypatch.setenv("ENVELOPE_KMS_PASSPHRASE", "other")
    with pytest.raises(RootKeyError):
        open_service(home)


def test_reprs_hold_no_secrets(home: Path) -> None:
    svc = open_service(home)
    key = (home / "root.key").read_bytes()
    for obj in (svc, svc.store, svc.store.root, PassphraseRootKey("hunter2")):
        text = repr(obj)
        assert key.hex() not in text and "hunter2" not in text
    svc.close()


def test_passphrase_provider_cannot_be_pickled() -> None:
    import pickle

    from envelope.service.rootkey import PassphraseRootKey

    with pytest.raises(TypeError):
        pickle.dumps(PassphraseRootKey("hunter2"))
    assert "hunter2" not in repr(PassphraseRootKey("hunter2"))


def test_a_moved_home_is_not_told_about_its_old_path(populated: Path, tmp_path: Path) -> None:
    """A home copied elsewhere keeps its root-key file beside it. A refusal that is not about
    a wrong key (strict mode here) named the old path as the key the store "was made with",
    which sent the operator after the wrong file."""
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(populated, moved)
    (moved / "root.key").chmod(0o644)
    with pytest.raises(RootKeyError) as refused:
        Store.open(moved / "kms.sqlite3", FileRootKey(moved / "root.key", strict=True))
    assert "strict mode" in str(refused.value)
    assert "made with" not in str(refused.value)
    # a wrong key still names the file the store was made with: that is the one to find
    (moved / "root.key").write_bytes(os.urandom(32))
    (moved / "root.key").chmod(0o600)
    with pytest.raises(RootKeyError, match=r"does not open this store.*made with the root-key"):
        Store.open(moved / "kms.sqlite3", FileRootKey(moved / "root.key"))


def test_a_missing_key_file_names_a_passphrase_store(tmp_path: Path, clock: FakeClock) -> None:
    """A store made with a passphrase, opened with the default key file (none there): the
    refusal says the store needs a passphrase."""
    home = tmp_path / "pp"
    home.mkdir()
    Store.open(home / "kms.sqlite3", PassphraseRootKey("secret words")).close()
    with pytest.raises(RootKeyError, match=r"made with the scrypt passphrase"):
        Store.open(home / "kms.sqlite3", FileRootKey(home / "root.key"))


def test_decrypt_with_a_wrong_root_key_says_only_that(
    populated: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`envelope decrypt` without --key added "no key was given: ... --key-file" to any error
    of the embedded KMS; a wrong root key is not a missing key argument."""
    from envelope.cli.main import main

    monkeypatch.setenv("ENVELOPE_HOME", str(populated))
    monkeypatch.setenv("ENVELOPE_CONFIG", "")
    plain, sealed = tmp_path / "p", tmp_path / "s"
    plain.write_bytes(b"data")
    assert main(["encrypt", str(plain), str(sealed)]) == 0
    (populated / "root.key").write_bytes(os.urandom(32))
    capsys.readouterr()
    assert main(["decrypt", str(sealed), str(tmp_path / "back")]) == 2
    err = capsys.readouterr().err
    assert "does not open this store" in err and "no key was given" not in err
    empty = tmp_path / "empty-home"
    monkeypatch.setenv("ENVELOPE_HOME", str(empty))
    assert main(["decrypt", str(sealed), str(tmp_path / "back")]) == 2
    assert "no key was given" in capsys.readouterr().err  # the hint where it helps
