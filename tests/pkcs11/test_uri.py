"""``pkcs11:`` URIs (RFC 7512) and where the PIN comes from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from envelope.errors import ConfigurationError
from envelope.pkcs11 import pin_from_source
from envelope.pkcs11.uri import Pkcs11Uri, parse_pkcs11_uri

SO = "/usr/lib/softhsm/libsofthsm2.so"


def test_the_rfc_spelling() -> None:
    uri = parse_pkcs11_uri(
        f"pkcs11:token=envelope;object=envelope-root;type=secret-key?module-path={SO}"
        "&pin-source=file:/etc/envelope/pin"
    )
    assert uri == Pkcs11Uri(SO, "envelope", "envelope-root", "file:/etc/envelope/pin")


def test_the_short_module_spelling_and_percent_decoding() -> None:
    uri = parse_pkcs11_uri(f"pkcs11:module={SO};token=my%20token;object=root%3Bkey")
    assert (uri.module, uri.token, uri.object, uri.pin_source) == (
        SO, "my token", "root;key", None,
    )  # fmt: skip
    assert parse_pkcs11_uri(str(uri)) == uri  # str() writes the RFC spelling back


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("pkcs12:token=a?module-path=/x.so", "starts with"),
        ("pkcs11:object=a?module-path=/x.so", "token"),
        ("pkcs11:token=a;object=b", "module"),
        ("pkcs11:token=a?module-path=/x.so&pin-value=1234", "pin-value"),
        ("pkcs11:token=a?module-name=softhsm2", "module-path"),
        ("pkcs11:token=a;serial=42?module-path=/x.so", "not supported"),
        ("pkcs11:token=a;tokn=b?module-path=/x.so", "not supported"),
        ("pkcs11:token=a;token=b?module-path=/x.so", "twice"),
        ("pkcs11:module=/x.so;token=a?module-path=/y.so", "twice"),
        ("pkcs11:token=a;type=private?module-path=/x.so", "secret"),
        ("pkcs11:token=a;object=?module-path=/x.so", "empty"),
        ("pkcs11:token=a;1234?module-path=/x.so", "name=value"),
        ("pkcs11:token=%ff?module-path=/x.so", "UTF-8"),
    ],
)
def test_what_is_refused(uri: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as caught:
        parse_pkcs11_uri(uri)
    assert "1234" not in str(caught.value)


def test_the_pin_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("s3cret\n")
    assert pin_from_source(f"file:{pin_file}") == "s3cret"
    assert pin_from_source(f"file://{pin_file}") == "s3cret"
    monkeypatch.setenv("ENVELOPE_HSM_PIN", "from-env")
    assert pin_from_source(None) == "from-env"
    uri = parse_pkcs11_uri(f"pkcs11:token=t?module-path={SO}")
    assert uri.config(pool_size=3).pin == "from-env" and uri.config().pool_size == 8
    uri = parse_pkcs11_uri(f"pkcs11:token=t?module-path={SO}&pin-source=file:{pin_file}")
    assert uri.config().pin == "s3cret"  # the URI's source wins over the environment


def test_a_missing_pin_says_where_to_put_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVELOPE_HSM_PIN", raising=False)
    with pytest.raises(ConfigurationError, match="ENVELOPE_HSM_PIN"):
        pin_from_source(None)
    (tmp_path / "empty").write_text("")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    cases = {
        f"file:{tmp_path / 'absent'}": "cannot read",
        f"file:{tmp_path / 'empty'}": "empty",
        f"file:{tmp_path / 'binary'}": "UTF-8",
        "file:relative/pin": "absolute",
        "|/usr/bin/pinentry": "file:",
    }
    for source, says in cases.items():
        with pytest.raises(ConfigurationError, match=says):
            pin_from_source(source)
    assert os.environ.get("ENVELOPE_HSM_PIN") is None
