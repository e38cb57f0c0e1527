"""A bad argument is a ConfigurationError that says what to pass (docs/library.md, "Errors"),
never a TypeError or an io.UnsupportedOperation from deep inside the call."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import envelope
from envelope import sync
from envelope.errors import ConfigurationError
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms


@pytest.fixture(scope="module")
def kr() -> Keyring:
    kms = MemoryKms()
    return Keyring(kms, kms.create_key())


@pytest.fixture
def pipe() -> Iterator[io.BufferedReader]:
    r, w = os.pipe()
    os.close(w)
    with os.fdopen(r, "rb") as f:
        yield f


def cases(kr: Keyring, ct: bytes, pipe: io.BufferedReader) -> dict[str, Callable[[], Any]]:
    return {
        "random access to a pipe": lambda: envelope.open_decrypted(pipe, keyring=kr),
        "random access to a text stream": lambda: envelope.open_decrypted(
            io.StringIO("x" * 300), keyring=kr
        ),
        "a text source": lambda: sync.decrypt(io.StringIO("x" * 300), io.BytesIO(), keyring=kr),
        "a text sink": lambda: sync.decrypt(io.BytesIO(ct), io.StringIO(), keyring=kr),
        "a text sink for encrypt": lambda: sync.encrypt(
            io.BytesIO(b"rows"), io.StringIO(), keyring=kr
        ),
        "a read-only output buffer": lambda: sync.decrypt_into(ct, bytes(len(ct)), keyring=kr),
        "a read-only output buffer for encrypt": lambda: sync.encrypt_into(
            b"rows", bytes(4096), keyring=kr
        ),
        "an output that is no buffer": lambda: sync.decrypt_into(ct, [0] * 100, keyring=kr),
        "expected context of ints": lambda: sync.decrypt_bytes(
            ct, keyring=kr, expected_context={1: 2}
        ),
        "decrypt_many(None)": lambda: sync.decrypt_many(None, keyring=kr),  # type: ignore
        "decrypt_many(one object)": lambda: sync.decrypt_many(ct, keyring=kr),  # type: ignore
        "encrypt_many(None)": lambda: sync.encrypt_many(None, keyring=kr),  # type: ignore
    }


CASES = list(cases(None, b"", None))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", CASES)
def test_a_bad_argument_is_a_configuration_error(
    kr: Keyring, pipe: io.BufferedReader, name: str
) -> None:
    ct = sync.encrypt_bytes(b"rows" * 100, keyring=kr)
    with pytest.raises(ConfigurationError) as e:
        cases(kr, ct, pipe)[name]()
    assert str(e.value)
