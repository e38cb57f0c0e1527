"""A refused input's secrets do not ride along in the error's chain.

``raise ... from None`` hides the original exception from a traceback but keeps it as
``__context__``, and a decode error keeps the whole input it failed on: a config file with
the token PIN and secret access keys, a PIN file, a request body with a Plaintext. Anything
that walks the chain (an error reporter, a debugger, a crash dump) would get them (review).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from envelope.errors import EnvelopeError

SECRET = b"sARwWk4ciLnN0bZ7+J8wWesEGbZ/f0MZRMsjFn3e4cQ="


def chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    at: BaseException | None = e
    while at is not None and len(out) < 10:
        out.append(at)
        at = at.__cause__ or at.__context__
    return out


def holds_secret(e: BaseException) -> bool:
    return any(
        SECRET in bytes(getattr(x, "object", b"") or b"")
        or SECRET.decode() in str(getattr(x, "doc", ""))
        for x in chain(e)
    )


def test_a_settings_file_that_is_not_utf8(tmp_path: Path) -> None:
    from envelope._toml import read_toml

    p = tmp_path / "x.toml"
    p.write_bytes(b'secret_access_key = "' + SECRET + b'"\n# \xff\n')
    with pytest.raises(EnvelopeError, match="not UTF-8") as e:
        read_toml(p, "XKS proxy config")
    assert chain(e.value) == [e.value] and not holds_secret(e.value)


def test_a_pin_file_that_is_not_utf8(tmp_path: Path) -> None:
    from envelope.pkcs11.config import pin_from_source

    p = tmp_path / "pin"
    p.write_bytes(SECRET + b"\xff\n")
    with pytest.raises(EnvelopeError, match="not UTF-8") as e:
        pin_from_source(f"file:{p}")
    assert chain(e.value) == [e.value] and not holds_secret(e.value)


@pytest.mark.parametrize(
    "body", [b'{"Plaintext": "' + SECRET + b'", ', b'{"P": "' + SECRET + b'\xff"}']
)
def test_a_request_body_that_is_not_json(body: bytes) -> None:
    from envelope.server.wire import WireError, WireModel
    from envelope.service import KeyService

    wire = WireModel(KeyService)
    with pytest.raises(WireError, match="not valid JSON") as e:
        wire.parse(wire.operation("TrentService.Encrypt"), body)
    assert chain(e.value) == [e.value] and not holds_secret(e.value)


@pytest.mark.parametrize(
    "body", [b'{"plaintext": "' + SECRET + b'", ', b'{"plaintext": "' + SECRET + b'\xff"}']
)
def test_an_xks_request_body_that_is_not_json(body: bytes) -> None:
    """The XKS proxy's refusal kept the decode error, and the body with it (diff review)."""
    import anyio

    from envelope.xks.app import XksProxyApp, _Outcome
    from envelope.xks.errors import XksProxyError

    app = object.__new__(XksProxyApp)  # (the parse is the first thing `_serve` does)

    async def serve() -> None:
        await XksProxyApp._serve(app, None, _Outcome(), "application/json", body)  # type: ignore[arg-type]

    with pytest.raises(XksProxyError, match="not valid JSON") as e:
        anyio.run(serve)
    assert chain(e.value) == [e.value] and not holds_secret(e.value)


def anywhere(e: BaseException, secret: str) -> bool:
    """`secret` in any exception of the chain: its message, its repr, any argument."""
    return any(
        secret in str(x) or secret in repr(x) or any(secret in repr(a) for a in x.args)
        for x in chain(e)
    )


def test_a_key_file_with_a_byte_that_is_not_ascii(tmp_path: Path) -> None:
    """The key file's decode error (kept as __context__ under `from None`) held every byte of
    the file, the key among them (review)."""
    from envelope.kms.filekey import FileKeyBackend

    p = tmp_path / "k.key"
    p.write_bytes(b"envelope-file-key-v1:" + SECRET + b"\n\xff")
    with pytest.raises(EnvelopeError, match="not an envelope key file") as e:
        FileKeyBackend(p)
    assert chain(e.value) == [e.value] and not anywhere(e.value, SECRET.decode())


CANARY = "CANARY-4d71-" + SECRET.decode()[:20]


def test_secrets_that_are_not_utf8_are_refused_without_them() -> None:
    """A passphrase, a PIN or an XKS secret from an environment of another encoding arrives
    with a lone surrogate; encoding it raised a bare UnicodeEncodeError whose arguments held
    the whole secret (review). Each is refused, typed, without it."""
    from envelope.pkcs11.config import TokenConfig
    from envelope.service.errors import RootKeyError
    from envelope.service.rootkey import PassphraseRootKey
    from envelope.xks.client import XksClient

    with pytest.raises(RootKeyError, match="not UTF-8") as r:
        PassphraseRootKey(CANARY + "\udcff")
    with pytest.raises(EnvelopeError, match="not UTF-8") as t:
        TokenConfig("/x.so", "token", CANARY + "\udcff")
    for secret in (CANARY + "\udcff", "x" * 50 + "\udcff", "short"):
        with pytest.raises(EnvelopeError, match="RawSecretAccessKey") as x:
            XksClient("https://127.0.0.1:1", "/kms/xks/v1", "A" * 20, secret)
        assert not anywhere(x.value, secret)
    for e in (r.value, t.value):
        assert not anywhere(e, CANARY)


@pytest.mark.parametrize(
    "uri",
    [
        # a ";" (the path's separator) in the query, or one percent-encoded: the PIN became
        # part of module-path, quoted by "no PKCS#11 module at ..." (review)
        f"pkcs11:token=t?module-path=/x.so;pin-value={CANARY}",
        f"pkcs11:token=t?module-path=/x.so%3Bpin-value={CANARY}",
        # a "&" in the path: the PIN became the key's label, stored in the clear
        f"pkcs11:token=t;object=rk&pin-value={CANARY}?module-path=/x.so",
        f"pkcs11:token=t?module-path=/x.so#pin-value={CANARY}",
    ],
)
def test_a_pin_carried_into_another_pkcs11_attribute_is_refused_unshown(uri: str) -> None:
    from envelope.pkcs11.uri import parse_pkcs11_uri

    with pytest.raises(EnvelopeError, match="pin-value' or 'pin-source") as e:
        parse_pkcs11_uri(uri)
    assert not anywhere(e.value, CANARY)


def test_a_pin_given_as_the_pin_source_path_is_not_shown() -> None:
    from envelope.pkcs11.config import pin_from_source

    with pytest.raises(EnvelopeError, match="absolute path") as e:
        pin_from_source(f"file:{CANARY}")
    assert not anywhere(e.value, CANARY)


def test_a_settings_value_of_the_wrong_type_is_named_by_its_type(tmp_path: Path) -> None:
    """`root_key = ["<passphrase>"]` printed the passphrase in the type error (review)."""
    from envelope.server.config import load_settings

    p = tmp_path / "kms.toml"
    p.write_text(f'[store]\nroot_key = ["{CANARY}"]\n')
    with pytest.raises(EnvelopeError, match="root_key has the wrong type: array where string") as e:
        load_settings(p)
    assert not anywhere(e.value, CANARY)


def test_a_key_reference_that_is_not_one_stays_out_of_the_audit_log(tmp_path: Path) -> None:
    """A key file's contents passed as `--key` went into the hash-chained audit log, which
    cannot be cleaned without breaking its seals (review). The record keeps its length."""
    from envelope.service import KmsServiceError, open_service

    svc = open_service(str(tmp_path / "kms"))
    try:
        with pytest.raises(KmsServiceError, match="Invalid keyId"):
            svc.generate_data_key(key_id=SECRET.decode(), key_spec="AES_256")
        kid = svc.create_key()["KeyMetadata"]["KeyId"]
        svc.generate_data_key(key_id=kid, key_spec="AES_256")
        records = svc.audit_tail(10)
    finally:
        svc.close()
    text = repr(records)
    assert SECRET.decode() not in text
    assert "<not a key reference: 44 characters, not recorded>" in text
    assert kid in text  # a key id as given is kept


def test_a_key_file_s_text_given_as_its_path_is_not_quoted(tmp_path: Path) -> None:
    """`--key-file "$(cat k.key)"` quoted the key back on stderr (review); a real path is."""
    from envelope.kms.filekey import FileKeyBackend

    for text in (f"envelope-file-key-v1:{SECRET.decode()}\n", SECRET.decode()):
        with pytest.raises(EnvelopeError, match="key's text: not shown") as e:
            FileKeyBackend(text)
        assert not anywhere(e.value, SECRET.decode()[:30])
    with pytest.raises(EnvelopeError, match=str(tmp_path / "absent")):
        FileKeyBackend(tmp_path / "absent")
