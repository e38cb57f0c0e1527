"""`envelope xks serve` settings: the example file loads, every bad value is a clear
`ConfigurationError`, and no secret is ever in a message or a repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from envelope.errors import ConfigurationError
from envelope.xks.config import XksSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
SECRET = "sARwWk4ciLnN0bZ7+J8wWesEGbZ/f0MZRMsjFn3e4cQ="

BASE = """
[token]
label = "t"
pin = "PIN-9876"
[[keystore]]
path_prefix = "/p"
[[keystore.credential]]
access_key_id = "HMLG7DAFPC72QCMBHX4HWTQ4"
secret_access_key = "{secret}"
"""


def load(tmp_path: Path, text: str) -> XksSettings:
    p = tmp_path / "x.toml"
    p.write_text(text)
    return load_settings(p)


def test_the_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVELOPE_XKS_SECRET_DEMO", SECRET)
    monkeypatch.setenv("ENVELOPE_HSM_PIN", "1234")
    s = load_settings(REPO / "configs" / "xks-proxy.toml")
    s.check_serving()
    s.check_token()
    (store,) = s.keystores
    assert store.uri_path == "/keystores/demo/kms/xks/v1"
    assert store.keys == frozenset({"orders", "payments"})
    assert store.credentials[0].secret_access_key == SECRET
    assert s.health_key == "xks-health" and s.pin == "1234" and s.workers == 2
    assert SECRET not in repr(s) and SECRET not in repr(store) and "1234" not in repr(s)


def test_a_minimal_config(tmp_path: Path) -> None:
    s = load(tmp_path, BASE.format(secret=SECRET))
    assert s.keystores[0].path_prefix == "/p"
    assert s.region == "us-east-1" and s.port == 8443


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE.format(secret=SECRET) + "[server]\nnope = 1\n", "unknown key 'nope'"),
        (BASE.format(secret=SECRET) + "[nope]\n", "unknown table [nope]"),
        (BASE.format(secret="short"), "43-64 characters"),
        (BASE.format(secret=SECRET).replace("HMLG7DAFPC72QCMBHX4HWTQ4", "lower"), "20-30"),
        (BASE.format(secret=SECRET).replace('"/p"', '"/p/"'), "path_prefix"),
        (BASE.format(secret=SECRET).replace('"/p"', '"/a.b"'), "path_prefix"),
        (
            BASE.format(secret=SECRET).replace(
                f'secret_access_key = "{SECRET}"', 'secret_access_key_env = "XKS_UNSET_VAR"'
            ),
            "$XKS_UNSET_VAR is not set",
        ),
        (
            BASE.format(secret=SECRET)
            + '[[keystore]]\npath_prefix = "/p"\n[[keystore.credential]]\n'
            + f'access_key_id = "ABCDEFGHIJKLMNOPQRST"\nsecret_access_key = "{SECRET}"\n',
            "same path_prefix",
        ),
        (
            BASE.format(secret=SECRET)
            + '[[keystore]]\npath_prefix = "/q"\n[[keystore.credential]]\n'
            + f'access_key_id = "HMLG7DAFPC72QCMBHX4HWTQ4"\nsecret_access_key = "{SECRET}"\n',
            "appears twice",
        ),
        (BASE.format(secret=SECRET) + '[token]\npin_env = "X"\n', "not valid TOML"),
        (
            BASE.format(secret=SECRET).replace('pin = "PIN-9876"', 'pin = "1"\npin_env = "X"'),
            "one of pin",
        ),
        (BASE.format(secret=SECRET) + "[limits]\nmax_aad_bytes = 100\n", "max_aad_bytes"),
        (BASE.format(secret=SECRET) + "[limits]\nmax_plaintext_bytes = 4000\n", "4300"),
        (BASE.format(secret=SECRET) + '[tls]\ncert = "a.pem"\n', "both a certificate"),
        (
            BASE.format(secret=SECRET).replace(
                'path_prefix = "/p"', 'path_prefix = "/p"\nallowed_principals = "arn:*"'
            ),
            "list of principal ARN patterns",
        ),
        (
            BASE.format(secret=SECRET).replace(
                'path_prefix = "/p"', 'path_prefix = "/p"\nkey_principals = { "a/b" = ["x"] }'
            ),
            "key 'a/b'",
        ),
        (BASE.format(secret=SECRET) + '[tls]\nclient_ca = "ca.pem"\n', "needs the proxy's cert"),
        (
            BASE.format(secret=SECRET) + '[tls]\ncert = "a"\nkey = "b"\nclient_subject = "x"\n',
            "client_subject needs client_ca",
        ),
        (
            BASE.format(secret=SECRET).replace(
                'path_prefix = "/p"', 'path_prefix = "/p"\nkeys = ["a/b"]'
            ),
            "key 'a/b'",
        ),
        (
            BASE.format(secret=SECRET).replace(
                'path_prefix = "/p"', 'path_prefix = "/p"\nciphertext_metadata = "' + "m" * 21 + '"'
            ),
            "ciphertext_metadata",
        ),
    ],
)
def test_bad_configs(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        load(tmp_path, text)
    assert expected in str(e.value)
    assert SECRET not in str(e.value) and "PIN-9876" not in str(e.value)


def test_serving_needs_a_keystore_and_a_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVELOPE_HSM_PIN", raising=False)
    s = load(tmp_path, '[token]\nlabel = "t"\n')
    with pytest.raises(ConfigurationError, match="no \\[\\[keystore\\]\\]"):
        s.check_serving()
    with pytest.raises(ConfigurationError, match="no PIN"):
        s.check_token()
    pin_file = tmp_path / "pin"
    pin_file.write_text("5555\n")
    s = load(tmp_path, f'[token]\nlabel = "t"\npin_source = "file:{pin_file}"\n')
    assert s.pin == "5555"


def test_a_credential_with_its_id_and_secret_swapped_shows_neither(tmp_path: Path) -> None:
    """The secret sat where the id goes, and the refusal quoted 40 characters of that "id"
    (logged by the proxy's hot reload too): now it names only its length (review)."""
    swapped = BASE.format(secret="HMLG7DAFPC72QCMBHX4HWTQ4").replace(
        'access_key_id = "HMLG7DAFPC72QCMBHX4HWTQ4"', f'access_key_id = "{SECRET}"'
    )
    for text in (swapped, swapped.replace("secret_access_key =", "secret_access_key_env =")):
        with pytest.raises(ConfigurationError) as e:
            load(tmp_path, text)
        assert SECRET[:8] not in str(e.value) and "44 characters, not shown" in str(e.value)
