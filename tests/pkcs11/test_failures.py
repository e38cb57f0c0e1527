"""A token that cannot be used says why, with AWS's ConnectionErrorCode for CloudHSM stores."""

from __future__ import annotations

import _ctypes
import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from envelope.pkcs11 import Token, TokenConfig, TokenError, TokenUnavailable, probe_token
from envelope.pkcs11.cryptoki import rv
from envelope.pkcs11.failures import from_rv
from envelope.pkcs11.library import Library
from tests.softhsm import make_token, make_token_without_user_pin

from .conftest import run_python


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_wrong_pin_is_invalid_credentials_and_never_shown(hsm_dir: Path) -> None:
    config = make_token(hsm_dir, _unique("pin"), pin="right-pin-1")
    with pytest.raises(TokenUnavailable) as caught:
        Token.open(replace(config, pin="wrong-pin-2"))
    assert caught.value.code == "INVALID_CREDENTIALS"
    assert "wrong-pin-2" not in str(caught.value) and "right-pin-1" not in str(caught.value)
    with Token.open(config) as token:  # nothing was left behind by the failure
        token.check()


def test_another_pin_for_a_token_this_process_is_logged_in_to(config: TokenConfig) -> None:
    with Token.open(config):
        with pytest.raises(TokenUnavailable) as caught:
            Token.open(replace(config, pin="not-the-pin", pool_size=2))
        assert caught.value.code == "INVALID_CREDENTIALS"


def test_a_user_pin_never_set_is_user_not_found(hsm_dir: Path) -> None:
    label = _unique("nouser")
    make_token_without_user_pin(hsm_dir, label)
    config = TokenConfig(make_token(hsm_dir, _unique("any")).module, label, "1234")
    with pytest.raises(TokenUnavailable) as caught:
        Token.open(config)
    assert caught.value.code == "USER_NOT_FOUND"


def test_a_missing_token_label_is_cluster_not_found(config: TokenConfig) -> None:
    missing = replace(config, token_label=_unique("absent"))
    with pytest.raises(TokenUnavailable) as caught:
        Token.open(missing)
    assert caught.value.code == "CLUSTER_NOT_FOUND"
    assert missing.token_label in str(caught.value)
    with pytest.raises(TokenUnavailable) as probed:
        probe_token(config.module, missing.token_label)
    assert probed.value.code == "CLUSTER_NOT_FOUND"
    probe_token(config.module, config.token_label)  # needs no PIN


@pytest.mark.parametrize("kind", ["absent", "not a library", "not a PKCS#11 module"])
def test_a_missing_or_wrong_module_is_cluster_not_found(
    config: TokenConfig, tmp_path: Path, kind: str
) -> None:
    if kind == "absent":
        module = str(tmp_path / "libabsent.so")
    elif kind == "not a library":
        module = str(tmp_path / "libtext.so")
        Path(module).write_text("not an ELF file")
    else:
        module = _ctypes.__file__  # a shared library without C_GetFunctionList
    with pytest.raises(TokenUnavailable) as caught:
        Token.open(replace(config, module=module))
    assert caught.value.code == "CLUSTER_NOT_FOUND"
    assert config.pin not in str(caught.value)


def test_return_values_map_onto_connection_error_codes() -> None:
    """The table as a whole; SoftHSM2 never locks a PIN, so CKR_PIN_LOCKED is checked here."""
    expected = {
        "CKR_PIN_INCORRECT": "INVALID_CREDENTIALS",
        "CKR_PIN_EXPIRED": "INVALID_CREDENTIALS",
        "CKR_PIN_LOCKED": "USER_LOCKED_OUT",
        "CKR_USER_PIN_NOT_INITIALIZED": "USER_NOT_FOUND",
        "CKR_DEVICE_REMOVED": "NETWORK_ERRORS",
        "CKR_TOKEN_NOT_PRESENT": "NETWORK_ERRORS",
        "CKR_DEVICE_ERROR": "NETWORK_ERRORS",
        "CKR_CRYPTOKI_NOT_INITIALIZED": "INTERNAL_ERROR",
    }
    for name, code in expected.items():
        error = from_rv(rv(name), "login")
        assert isinstance(error, TokenUnavailable) and error.code == code, name
        assert name in str(error)
    plain = from_rv(rv("CKR_KEY_TYPE_INCONSISTENT"), "C_EncryptInit")
    assert type(plain) is TokenError and "CKR_KEY_TYPE_INCONSISTENT" in str(plain)


def test_a_login_made_by_other_code_is_accepted_and_a_lost_login_is_made_again(
    hsm_dir: Path,
) -> None:
    config = make_token(hsm_dir, _unique("prelogged"))
    library = Library.load(config.module)
    with Token.open(config):
        pass  # let the module list the new token
    p11token = library.find_token(config.token_label)
    other = p11token.open(rw=True, user_pin=config.pin)  # C_Login: CKU_USER, by "other code"
    try:
        token = Token.open(config)  # its C_Login says CKR_USER_ALREADY_LOGGED_IN
        token.create_aes_key("k")
        sealed = token.encrypt("k", b"data", b"aad")
    finally:
        other.close()  # python-pkcs11 logs out as it closes: every session loses the login
    try:
        assert token.decrypt("k", *sealed, b"aad") == b"data"  # logged in again
        token.check()
    finally:
        token.close()


DEFAULT_INIT = r"""
import json, sys
import pkcs11
from envelope.pkcs11 import Token, TokenConfig, TokenUnavailable
module, label, pin = sys.argv[1:4]
pkcs11.lib(module)  # C_Initialize(NULL): the module now believes it has one thread
try:
    Token.open(TokenConfig(module, label, pin))
except TokenUnavailable as e:
    print(json.dumps([e.code, str(e)]))
"""


def test_a_module_initialised_without_the_locking_flag_is_refused(config: TokenConfig) -> None:
    done = run_python(DEFAULT_INIT, config.module, config.token_label, config.pin)
    assert done.returncode == 0, done.stderr
    code, message = json.loads(done.stdout)
    assert code == "INTERNAL_ERROR" and "already initialised" in message


def test_our_initialisation_comes_first_and_python_pkcs11s_own_is_skipped(
    token: Token,
) -> None:
    import pkcs11
    from pkcs11.exceptions import PKCS11Error

    # python-pkcs11 on its own would C_Initialize(NULL): the module answers that it already
    # was initialised (by us, with CKF_OS_LOCKING_OK)
    with pytest.raises(PKCS11Error) as caught:
        pkcs11.lib(token.config.module)
    assert "already initialized" in str(caught.value)  # CKR_CRYPTOKI_ALREADY_INITIALIZED
    token.check()


def test_a_token_file_being_rewritten_elsewhere_is_read_again(
    hsm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SoftHSM2 rewrites a token's file at every login; another process reading it then gets
    CKR_GENERAL_ERROR from C_GetTokenInfo or C_Login (seen in the multi-process stress test).
    Listing tokens and logging in try again after a short pause."""
    from pkcs11.exceptions import GeneralError

    config = make_token(hsm_dir, _unique("rewritten"))
    library = Library.load(config.module)
    real_tokens, real_login = library._pkcs11.get_tokens, library.cryptoki.login
    failures = {"tokens": 2, "login": 2}

    def get_tokens(**kwargs: object) -> object:
        if failures["tokens"]:
            failures["tokens"] -= 1
            raise GeneralError()
        return real_tokens(**kwargs)

    def login(session: int, pin: str) -> int:
        if failures["login"]:
            failures["login"] -= 1
            return rv("CKR_GENERAL_ERROR")
        return real_login(session, pin)

    monkeypatch.setattr(library._pkcs11, "get_tokens", get_tokens)
    monkeypatch.setattr(library.cryptoki, "login", login)
    with Token.open(config) as token:
        token.check()
    assert failures == {"tokens": 0, "login": 0}


def test_a_return_value_python_pkcs11_has_no_class_for_is_still_named() -> None:
    from pkcs11.exceptions import PKCS11Error

    from envelope.pkcs11.failures import from_exception

    error = from_exception(PKCS11Error("Unmapped error code 0x1b"), "C_DestroyObject")
    assert "CKR_ACTION_PROHIBITED" in str(error)
    assert "PKCS11Error" in str(from_exception(PKCS11Error("something else"), "C_X"))
