"""`Token` against a real SoftHSM2 token: the keys it makes, AES-GCM inside it, its errors."""

from __future__ import annotations

import os
import pickle
import uuid
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import REGISTRY

from envelope.errors import ClosedError, ConfigurationError
from envelope.pkcs11 import (
    KeyAlreadyInToken,
    KeyNotInToken,
    Token,
    TokenConfig,
    TokenDecryptError,
    TokenError,
)

from ..histograms import bucket_bounds
from .conftest import run_json

#: A client that shares nothing with `envelope.pkcs11`: python-pkcs11 alone, in its own
#: process. It reads the key's attributes as the token reports them, tries every way to get
#: the key out or to widen its uses, and makes a test-only key whose value the test knows.
INDEPENDENT = r"""
import json, sys
import pkcs11
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11.exceptions import PKCS11Error

module, token_label, pin, label, kat_label, kat_value = sys.argv[1:7]
token = pkcs11.lib(module).get_token(token_label=token_label)
names = {
    "class": Attribute.CLASS, "key_type": Attribute.KEY_TYPE, "value_len": Attribute.VALUE_LEN,
    "token": Attribute.TOKEN, "private": Attribute.PRIVATE, "sensitive": Attribute.SENSITIVE,
    "extractable": Attribute.EXTRACTABLE, "never_extractable": Attribute.NEVER_EXTRACTABLE,
    "always_sensitive": Attribute.ALWAYS_SENSITIVE, "modifiable": Attribute.MODIFIABLE,
    "encrypt": Attribute.ENCRYPT, "decrypt": Attribute.DECRYPT, "wrap": Attribute.WRAP,
    "unwrap": Attribute.UNWRAP, "derive": Attribute.DERIVE, "sign": Attribute.SIGN,
    "verify": Attribute.VERIFY,
}


def refused(call):
    try:
        call()
    except PKCS11Error as e:
        return type(e).__name__
    return None


out = {}
with token.open(rw=True, user_pin=pin) as s:
    key = s.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
    out["attributes"] = {n: int(key[a]) for n, a in names.items()}
    out["read_value"] = refused(lambda: key[Attribute.VALUE])
    wrapper = s.generate_key(
        KeyType.AES, 256, store=False,
        capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP | MechanismFlag.ENCRYPT,
    )
    out["wrap"] = refused(lambda: wrapper.wrap_key(key))
    out["set_extractable"] = refused(lambda: key.__setitem__(Attribute.EXTRACTABLE, True))
    out["set_sensitive"] = refused(lambda: key.__setitem__(Attribute.SENSITIVE, False))
    out["set_wrap"] = refused(lambda: key.__setitem__(Attribute.WRAP, True))
    out["set_derive"] = refused(lambda: key.__setitem__(Attribute.DERIVE, True))
    out["after"] = {n: int(key[names[n]]) for n in ("extractable", "sensitive", "wrap", "derive")}
    s.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE: bytes.fromhex(kat_value), Attribute.LABEL: kat_label,
        Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: False,
        Attribute.EXTRACTABLE: True, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
    })
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def independent(config: TokenConfig) -> dict[str, Any]:
    """A key made by `Token`, what the independent client saw of it, and the known key."""
    label = f"protected-{uuid.uuid4().hex[:8]}"
    kat_label, kat_value = f"known-{uuid.uuid4().hex[:8]}", os.urandom(32)
    with Token.open(config) as token:
        made = token.create_aes_key(label)
    seen = run_json(
        INDEPENDENT, config.module, config.token_label, config.pin, label, kat_label,
        kat_value.hex(),
    )  # fmt: skip
    return {"made": made, "seen": seen, "kat_label": kat_label, "kat_value": kat_value}


def test_keys_are_aes256_sensitive_never_extractable_and_encrypt_decrypt_only(
    token: Token, label: str
) -> None:
    made = token.create_aes_key(label)
    a = token.key_attributes(label)
    assert (a["class"], a["key_type"], a["value_len"]) == ("SECRET_KEY", "AES", 32)
    assert a["token"] is True and a["private"] is True
    assert a["sensitive"] is True and a["always_sensitive"] is True
    assert a["extractable"] is False and a["never_extractable"] is True
    assert a["modifiable"] is False and a["local"] is True
    assert a["encrypt"] is True and a["decrypt"] is True
    assert [use for use in ("wrap", "unwrap", "derive", "sign", "verify") if a[use]] == []
    assert (a["label"], a["key_id"], a["handle"]) == (label, made.key_id.hex(), made.handle)
    assert len(made.key_id) == 16


def test_another_client_sees_the_same_protections_and_cannot_get_the_key_out(
    independent: dict[str, Any],
) -> None:
    seen = independent["seen"]
    assert seen["attributes"] == {
        "class": 4,  # CKO_SECRET_KEY
        "key_type": 0x1F,  # CKK_AES
        "value_len": 32,
        "token": 1, "private": 1, "sensitive": 1, "extractable": 0, "never_extractable": 1,
        "always_sensitive": 1, "modifiable": 0, "encrypt": 1, "decrypt": 1, "wrap": 0,
        "unwrap": 0, "derive": 0, "sign": 0, "verify": 0,
    }  # fmt: skip
    # C_GetAttributeValue(CKA_VALUE) is refused: CKR_ATTRIBUTE_SENSITIVE
    assert seen["read_value"] == "AttributeSensitive"
    # nor can it be wrapped out under another key, nor its protections be undone
    assert seen["wrap"] == "KeyUnextractable"
    for change in ("set_extractable", "set_sensitive", "set_wrap", "set_derive"):
        assert seen[change] is not None, change
    assert seen["after"] == {"extractable": 0, "sensitive": 1, "wrap": 0, "derive": 0}


def test_aes_gcm_in_the_token_is_standard_aes_gcm_with_the_aad(
    token: Token, independent: dict[str, Any]
) -> None:
    """Against a test-only key whose value is known: what the token seals, AES-GCM opens, and
    the other way round (so a blob's format does not depend on where the key lives)."""
    aead = AESGCM(independent["kat_value"])
    label = independent["kat_label"]
    plaintext, aad = os.urandom(32), b"envelope/kms/test" + os.urandom(8)
    iv, ciphertext, tag = token.encrypt(label, plaintext, aad)
    assert (len(iv), len(ciphertext), len(tag)) == (12, 32, 16)
    assert aead.decrypt(iv, ciphertext + tag, aad) == plaintext
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, plaintext, aad)
    assert token.decrypt(label, nonce, sealed[:-16], sealed[-16:], aad) == plaintext
    assert token.decrypt(label, *token.encrypt(label, b"", b""), b"") == b""


def test_every_encryption_has_a_fresh_iv(token: Token, label: str) -> None:
    token.create_aes_key(label)
    sealed = [token.encrypt(label, b"same plaintext", b"same aad") for _ in range(64)]
    assert len({iv for iv, _, _ in sealed}) == 64
    assert len({ct + tag for _, ct, tag in sealed}) == 64


@pytest.mark.parametrize("part", ["iv", "ciphertext", "tag", "aad", "short tag", "short iv"])
def test_an_altered_ciphertext_does_not_decrypt(token: Token, label: str, part: str) -> None:
    token.create_aes_key(label)
    iv, ct, tag = token.encrypt(label, b"a data key of 32 bytes..........", b"context")
    aad = b"context"

    def flip(b: bytes) -> bytes:
        return bytes([b[0] ^ 1]) + b[1:]

    if part == "iv":
        iv = flip(iv)
    elif part == "ciphertext":
        ct = flip(ct)
    elif part == "tag":
        tag = flip(tag)
    elif part == "aad":
        aad = b"contexu"
    elif part == "short tag":
        tag = tag[:12]  # a truncated tag must not be checked as a 96-bit tag
    else:
        iv = iv[:8]
    with pytest.raises(TokenDecryptError):
        token.decrypt(label, iv, ct, tag, aad)
    # the session that saw the failure is fine for the next call
    assert token.decrypt(label, *token.encrypt(label, b"x", b"y"), b"y") == b"x"


def test_another_key_does_not_decrypt(token: Token, label: str) -> None:
    token.create_aes_key(label)
    token.create_aes_key(label + "-other")
    iv, ct, tag = token.encrypt(label, b"secret", b"")
    with pytest.raises(TokenDecryptError):
        token.decrypt(label + "-other", iv, ct, tag, b"")


def test_missing_and_duplicate_labels(token: Token, label: str) -> None:
    assert not token.has_key(label)
    for call in (
        lambda: token.encrypt(label, b"x", b""),
        lambda: token.decrypt(label, bytes(12), b"x", bytes(16), b""),
        lambda: token.destroy_key(label),
        lambda: token.key_attributes(label),
    ):
        with pytest.raises(KeyNotInToken) as caught:
            call()
        assert caught.value.label == label
    token.create_aes_key(label)
    assert token.has_key(label) and label in token.list_keys()
    with pytest.raises(KeyAlreadyInToken):
        token.create_aes_key(label)
    assert token.list_keys().count(label) == 1


def test_a_destroyed_key_is_gone_with_its_cached_handle(token: Token, label: str) -> None:
    token.create_aes_key(label)
    sealed = token.encrypt(label, b"x", b"")  # the handle is cached now
    token.destroy_key(label)
    assert not token.has_key(label) and label not in token.list_keys()
    with pytest.raises(KeyNotInToken):
        token.decrypt(label, *sealed, b"")
    # the label is free again, for a new key that does not open the old ciphertext
    token.create_aes_key(label)
    with pytest.raises(TokenDecryptError):
        token.decrypt(label, *sealed, b"")


def test_random_comes_from_the_token(token: Token) -> None:
    values = {token.random(32) for _ in range(16)}
    assert len(values) == 16 and all(len(v) == 32 for v in values)
    for bad in (0, -1, (1 << 20) + 1):
        with pytest.raises(ConfigurationError):
            token.random(bad)


def test_check_is_cheap_and_passes(token: Token) -> None:
    token.check()


def test_one_token_per_config_and_process_counted_by_its_users(config: TokenConfig) -> None:
    first = Token.open(config)
    second = Token.open(config)
    assert first is second
    first.close()
    second.check()  # still open: one user left
    second.close()
    with pytest.raises(ClosedError):
        second.check()
    third = Token.open(config)
    assert third is not first
    third.close()


def test_the_pin_stays_out_of_reprs_and_pickles(config: TokenConfig) -> None:
    assert config.pin not in repr(config) and "<secret>" in repr(config)
    with pytest.raises(TypeError):
        pickle.dumps(config)
    with Token.open(config) as token:
        assert config.pin not in repr(token)
        with pytest.raises(TypeError):
            pickle.dumps(token)


@pytest.mark.parametrize(
    "change",
    [{"module": ""}, {"token_label": ""}, {"token_label": "x" * 33}, {"pin": ""},
     {"pool_size": 0}, {"pool_size": 10_000}],
)  # fmt: skip
def test_a_bad_config_is_refused(config: TokenConfig, change: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        replace(config, **change)


def test_bad_labels_are_refused(token: Token) -> None:
    for bad in ("", "x" * 129):
        with pytest.raises(ConfigurationError):
            token.create_aes_key(bad)


def _count(op: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "envelope_hsm_call_seconds_count", {"op": op, "outcome": outcome}
    )
    return value or 0.0


def test_every_token_call_is_timed_in_sub_millisecond_buckets(token: Token, label: str) -> None:
    token.create_aes_key(label)
    before = {k: _count(*k) for k in [("encrypt", "ok"), ("decrypt", "decrypt_failed"),
                                       ("encrypt", "key_not_found"), ("random", "ok")]}  # fmt: skip
    iv, ct, tag = token.encrypt(label, b"x", b"")
    token.encrypt(label, b"x", b"")
    with pytest.raises(TokenDecryptError):
        token.decrypt(label, iv, ct, tag, b"other aad")
    with pytest.raises(KeyNotInToken):
        token.encrypt(label + "-missing", b"x", b"")
    token.random(8)
    assert _count("encrypt", "ok") - before[("encrypt", "ok")] == 2
    assert _count("decrypt", "decrypt_failed") - before[("decrypt", "decrypt_failed")] == 1
    assert _count("encrypt", "key_not_found") - before[("encrypt", "key_not_found")] == 1
    assert _count("random", "ok") - before[("random", "ok")] == 1
    bounds = bucket_bounds("envelope_hsm_call_seconds", op="encrypt")
    assert min(bounds) <= 0.00005 and len([b for b in bounds if b < 0.001]) >= 5


def test_token_errors_are_envelope_errors() -> None:
    from envelope.errors import EnvelopeError

    assert issubclass(TokenError, EnvelopeError)


def test_a_create_that_fails_after_making_the_key_is_retried_and_leaves_one_key(
    config: TokenConfig, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SoftHSM2 can answer CKR_TEMPLATE_INCONSISTENT to a consistent C_GenerateKey when another
    process changes the token at that moment, leaving a half-made object behind. Here the
    first attempt makes the key and then fails that way: the call is retried, the leftover of
    its own first attempt removed, and one key remains."""
    from pkcs11.exceptions import TemplateInconsistent

    import envelope.pkcs11.token as token_module

    failures: list[str] = []

    class Flaky:
        def __init__(self, p11: Any) -> None:
            self._p11 = p11

        def __getattr__(self, name: str) -> Any:
            return getattr(self._p11, name)

        def generate_key(self, *args: Any, **kwargs: Any) -> Any:
            key = self._p11.generate_key(*args, **kwargs)
            if not failures:
                failures.append(kwargs["label"])
                raise TemplateInconsistent()
            return key

    class FlakySession(token_module._Session):
        def __init__(self, p11: Any) -> None:
            super().__init__(p11)
            self.p11 = Flaky(p11)

    monkeypatch.setattr(token_module, "_Session", FlakySession)
    with Token.open(replace(config, pool_size=1)) as token:  # a new pool: flaky sessions
        made = token.create_aes_key(label)
        assert failures == [label]
        assert token.list_keys().count(label) == 1
        assert token.key_attributes(label)["key_id"] == made.key_id.hex()
        assert token.decrypt(label, *token.encrypt(label, b"x", b""), b"") == b"x"


def test_a_passing_general_error_is_not_taken_for_a_bad_tag(
    token: Token, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SoftHSM2 answers a bad tag with CKR_GENERAL_ERROR, which it also gives for passing
    faults: a good ciphertext that meets one must still decrypt (one more try), and a bad one
    is still TokenDecryptError."""
    from envelope.pkcs11.cryptoki import CallFailed, rv

    token.create_aes_key(label)
    iv, ct, tag = token.encrypt(label, b"plaintext", b"aad")
    cryptoki = token._library.cryptoki
    real = cryptoki.decrypt_gcm
    calls: list[int] = []

    def flaky(*args: Any) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise CallFailed("C_Decrypt", rv("CKR_GENERAL_ERROR"))
        return real(*args)

    monkeypatch.setattr(cryptoki, "decrypt_gcm", flaky)
    assert token.decrypt(label, iv, ct, tag, b"aad") == b"plaintext"
    assert len(calls) == 2
    monkeypatch.setattr(cryptoki, "decrypt_gcm", real)
    with pytest.raises(TokenDecryptError):
        token.decrypt(label, iv, ct, tag, b"other aad")
