"""The store's root key in an HSM: `Pkcs11RootKey` and ``$ENVELOPE_ROOT_KEY=pkcs11:...``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from envelope.pkcs11 import Token, TokenConfig
from envelope.service._home import open_service
from envelope.service.errors import RootKeyError
from envelope.service.rootkey import AesRootKey, Pkcs11RootKey, _TokenRootKey
from tests.softhsm import make_token

from .conftest import make_known_key


@pytest.fixture(scope="module")
def root_config(hsm_dir: Path) -> TokenConfig:
    return make_token(hsm_dir, "rootkey", pin="root-pin-77")


@pytest.fixture
def pin_env(root_config: TokenConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVELOPE_HSM_PIN", root_config.pin)


def _uri(config: TokenConfig, obj: str, extra: str = "") -> str:
    return f"pkcs11:token={config.token_label};object={obj}?module-path={config.module}{extra}"


def test_sealing_runs_in_the_token_and_keeps_the_blob_format(
    root_config: TokenConfig, pin_env: None
) -> None:
    """The same blob as a root key in memory: a known key in the token seals what AesRootKey
    opens, and the other way round."""
    label, value = f"known-{uuid.uuid4().hex[:8]}", os.urandom(32)
    make_known_key(root_config, label, value)
    with Token.open(root_config) as token:
        in_token, in_memory = _TokenRootKey(token, label), AesRootKey(value)
        blob = in_token.seal(b"key material", b"key/1")
        assert blob[0] == 1 and len(blob) == 1 + 12 + len(b"key material") + 16
        assert in_memory.unseal(blob, b"key/1") == b"key material"
        assert in_token.unseal(in_memory.seal(b"other", b"key/2"), b"key/2") == b"other"
    # a key that could leave the token is no root key
    with pytest.raises(RootKeyError, match="cannot be a root key"):
        Pkcs11RootKey(_uri(root_config, label)).open(b"salt", create=True)


def test_an_imported_key_is_no_root_key(root_config: TokenConfig, pin_env: None) -> None:
    """Sensitive and not extractable, but imported with a value someone knew: what it seals
    opens with that copy. It was accepted (review); only a key generated in the token is."""
    label = f"imported-{uuid.uuid4().hex[:8]}"
    make_known_key(root_config, label, os.urandom(32), protected=True)
    with Token.open(root_config) as token:
        attributes = token.key_attributes(label)
    assert attributes["sensitive"] is True and attributes["extractable"] is False
    with pytest.raises(RootKeyError, match="not generated in the token"):
        Pkcs11RootKey(_uri(root_config, label)).open(b"salt", create=True)


def test_a_new_store_makes_the_key_and_an_old_one_needs_it(
    root_config: TokenConfig, pin_env: None
) -> None:
    label = f"root-{uuid.uuid4().hex[:8]}"
    provider = Pkcs11RootKey(_uri(root_config, label))
    with pytest.raises(RootKeyError, match="not in token"):
        provider.open(b"salt", create=False)
    root = provider.open(b"salt", create=True)
    blob = root.seal(b"data key", b"aad")
    with Token.open(root_config) as token:
        attributes = token.key_attributes(label)
    assert attributes["sensitive"] is True and attributes["extractable"] is False
    again = provider.open(b"salt", create=False)
    assert again.unseal(blob, b"aad") == b"data key"
    with pytest.raises(RootKeyError, match="does not open"):
        again.unseal(blob, b"other aad")
    with pytest.raises(RootKeyError, match="does not open"):
        again.unseal(blob[:20] + bytes([blob[20] ^ 1]) + blob[21:], b"aad")
    with pytest.raises(RootKeyError, match="malformed"):
        again.unseal(blob[:20], b"aad")
    assert label in provider.description and "PIN" not in repr(provider)


def test_a_wrong_pin_or_a_bad_uri_is_a_root_key_error(
    root_config: TokenConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("not-the-pin-42\n")
    provider = Pkcs11RootKey(_uri(root_config, "r", f"&pin-source=file:{pin_file}"))
    with pytest.raises(RootKeyError, match="INVALID_CREDENTIALS") as caught:
        provider.open(b"salt", create=True)
    assert "not-the-pin-42" not in str(caught.value)
    for bad in ("pkcs11:token=t", f"pkcs11:token=t?module-path={root_config.module}"):
        with pytest.raises(RootKeyError):
            Pkcs11RootKey(bad)


def test_envelope_root_key_puts_a_whole_kms_under_the_hsm(
    root_config: TokenConfig, pin_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    label = f"kms-root-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ENVELOPE_ROOT_KEY", _uri(root_config, label))
    monkeypatch.delenv("ENVELOPE_KMS_PASSPHRASE", raising=False)
    home = tmp_path / "home"
    service = open_service(home)
    try:
        key_id = service.create_key()["KeyMetadata"]["KeyId"]
        blob = service.encrypt(key_id=key_id, plaintext=b"hello")["CiphertextBlob"]
    finally:
        service.close()
    assert not (home / "root.key").exists()  # no root key on disk
    with Token.open(root_config) as token:
        assert token.has_key(label)
    service = open_service(home)  # opened again: the store's secrets unseal in the token
    try:
        assert service.decrypt(ciphertext_blob=blob)["Plaintext"] == b"hello"
    finally:
        service.close()
    monkeypatch.setenv("ENVELOPE_ROOT_KEY", _uri(root_config, label + "-gone"))
    with pytest.raises(RootKeyError, match="not in token"):
        open_service(home)
    monkeypatch.setenv("ENVELOPE_ROOT_KEY", "file:/etc/root.key")
    with pytest.raises(RootKeyError, match="pkcs11:"):
        open_service(tmp_path / "other")
