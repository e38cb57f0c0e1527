"""Root-key hardening (issue 8, finding 11): a root.key readable by others is warned about and
refused in strict mode; new passphrase stores use OWASP's scrypt cost and keep it, and old
stores still open with theirs."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from envelope.service import KeyService, PassphraseRootKey, RootKeyError, Store, open_service
from envelope.service.rootkey import InsecureRootKeyWarning

from .conftest import FakeClock, new_key
from .test_cli import run

SCHEMA1 = Path(__file__).parent / "data" / "schema1"


@pytest.fixture
def exposed(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("ENVELOPE_STRICT", raising=False)
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    open_service(home).close()
    (home / "root.key").chmod(0o644)
    return home


def test_a_root_key_readable_by_others_is_warned_about(exposed: Path) -> None:
    with pytest.warns(InsecureRootKeyWarning, match=r"mode 0644.*chmod 600"):
        svc = open_service(exposed)
    svc.close()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_strict_mode_refuses_it(exposed: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "environment":
        monkeypatch.setenv("ENVELOPE_STRICT", "1")
    with pytest.raises(RootKeyError, match="refused in strict mode"):
        open_service(exposed, strict=True if how == "argument" else None)


@pytest.mark.filterwarnings("always::envelope.service.rootkey.InsecureRootKeyWarning")
def test_the_cli_warns_on_stderr_and_refuses_with_strict(
    exposed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENVELOPE_HOME", str(exposed))
    capsys.readouterr()
    assert run(["keys", "list", "--json"]) == 0
    err = capsys.readouterr().err
    assert "warning: root-key file" in err and "group or others" in err
    assert run(["keys", "list", "--strict"]) == 2
    assert "strict mode" in capsys.readouterr().err
    (exposed / "root.key").chmod(0o600)
    assert run(["keys", "list", "--strict", "--json"]) == 0
    assert capsys.readouterr().err == ""


def kdf_of(path: Path) -> dict[str, object] | None:
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT value FROM meta WHERE name='root_kdf'").fetchone()
    conn.close()
    return None if row is None else json.loads(row[0])  # type: ignore[no-any-return]


def test_new_passphrase_stores_use_owasp_scrypt_and_keep_it(tmp_path: Path) -> None:
    path = tmp_path / "kms.sqlite3"
    Store.open(path, PassphraseRootKey("correct horse")).close()
    assert kdf_of(path) == {"kdf": "scrypt", "n": 1 << 17, "r": 8, "p": 1}
    Store.open(path, PassphraseRootKey("correct horse")).close()
    with pytest.raises(RootKeyError):
        Store.open(path, PassphraseRootKey("wrong horse"))


def test_kept_parameters_win_over_the_callers(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "kms.sqlite3"
    svc = KeyService(Store.open(path, PassphraseRootKey("pw", n=1 << 12)), clock=clock)
    kid = new_key(svc)
    svc.close()
    svc.store.close()
    assert kdf_of(path) == {"kdf": "scrypt", "n": 1 << 12, "r": 8, "p": 1}
    again = Store.open(path, PassphraseRootKey("pw", n=1 << 14))
    svc = KeyService(again, clock=clock, owns_store=True)
    assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "Enabled"
    svc.close()


def test_a_store_from_before_kept_parameters_opens_with_n_2_15(
    tmp_path: Path, clock: FakeClock
) -> None:
    home = tmp_path / "old"
    shutil.copytree(SCHEMA1 / "passphrase", home)
    expect = json.loads((home / "expect.json").read_text())
    assert kdf_of(home / "kms.sqlite3") is None
    svc = KeyService(
        Store.open(home / "kms.sqlite3", PassphraseRootKey("schema one passphrase")),
        clock=clock,
        owns_store=True,
    )
    out = svc.decrypt(
        ciphertext_blob=bytes.fromhex(expect["blob"]), encryption_context=expect["context"]
    )
    assert out["Plaintext"] == bytes.fromhex(expect["plaintext"])
    svc.close()
    assert kdf_of(home / "kms.sqlite3") is None  # it keeps opening with its own cost


@pytest.mark.parametrize(
    "kdf",
    [
        b'{"kdf":"scrypt","n":1073741824,"r":8,"p":1}',
        b'{"kdf":"scrypt","n":1000,"r":8,"p":1}',
        b'{"kdf":"argon2"}',
        b"not json",
    ],
)
def test_tampered_kdf_parameters_are_refused_before_any_work(tmp_path: Path, kdf: bytes) -> None:
    path = tmp_path / "kms.sqlite3"
    Store.open(path, PassphraseRootKey("pw", n=1 << 12)).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value=? WHERE name='root_kdf'", (kdf,))
    conn.commit()
    conn.close()
    with pytest.raises(RootKeyError, match="KDF parameters"):
        Store.open(path, PassphraseRootKey("pw"))


def test_encrypt_and_decrypt_warn_in_the_command_lines_words(exposed: Path, tmp_path: Path) -> None:
    """Every command shows the warning as `envelope: warning: ...`; encrypt and decrypt
    printed Python's raw form (file, line number and source line) before."""
    from ..reliability.support import run_envelope

    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"hello")
    for args in (
        ("encrypt", str(plain), str(tmp_path / "sealed")),
        ("decrypt", str(tmp_path / "sealed"), str(tmp_path / "back")),
    ):
        r = run_envelope(*args, home=exposed)
        assert r.returncode == 0, r.stderr
        assert "envelope: warning: root-key file" in r.stderr, r.stderr
        assert "Warning:" not in r.stderr and ".py:" not in r.stderr, r.stderr
    assert (tmp_path / "back").read_bytes() == b"hello"
