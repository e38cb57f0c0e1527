"""One SoftHSM2 token for the tests of `envelope.pkcs11`, keys named uniquely per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from envelope.pkcs11 import Token, TokenConfig
from tests.softhsm import make_token

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def hsm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pkcs11")


@pytest.fixture(scope="session")
def config(hsm_dir: Path) -> TokenConfig:
    return make_token(hsm_dir, label="pkcs11-tests", pin="4321", so_pin="8765")


@pytest.fixture
def token(config: TokenConfig) -> Iterator[Token]:
    t = Token.open(config)
    yield t
    t.close()


@pytest.fixture
def label() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (with this process's $SOFTHSM2_CONF), argv = args."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def run_json(code: str, *args: str, timeout: float = 60) -> Any:
    done = run_python(code, *args, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


KNOWN_KEY = r"""
import sys
import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
module, token_label, pin, label, value, protected = sys.argv[1:7]
protected = protected == "1"
token = pkcs11.lib(module).get_token(token_label=token_label)
with token.open(rw=True, user_pin=pin) as s:
    s.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE: bytes.fromhex(value), Attribute.LABEL: label, Attribute.TOKEN: True,
        Attribute.PRIVATE: True, Attribute.SENSITIVE: protected,
        Attribute.EXTRACTABLE: not protected,
        Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
    })
print("{}")
"""


def make_known_key(
    config: TokenConfig, label: str, value: bytes, *, protected: bool = False
) -> None:
    """A test-only AES key whose value the test knows (extractable, not sensitive; or, with
    `protected`, imported as sensitive and not extractable), made by python-pkcs11 alone in
    another process."""
    run_json(
        KNOWN_KEY,
        config.module,
        config.token_label,
        config.pin,
        label,
        value.hex(),
        "1" if protected else "0",
    )
