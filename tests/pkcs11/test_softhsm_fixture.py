"""`tests.softhsm`: the token maker the tests of three areas share."""

from __future__ import annotations

import uuid
from pathlib import Path

from envelope.pkcs11 import Token
from tests.softhsm import make_token, show_slots


def test_asking_again_for_a_label_gives_a_new_empty_token(hsm_dir: Path) -> None:
    """A fixture per test module may use one fixed label: each gets a fresh token, and a Token
    still open from before finds the new one."""
    label = f"again-{uuid.uuid4().hex[:8]}"
    first = make_token(hsm_dir, label)
    kept = Token.open(first)
    try:
        kept.create_aes_key("k")
        assert kept.list_keys() == ["k"]
        second = make_token(hsm_dir, label)
        assert second == first
        assert kept.list_keys() == []  # the same config now reaches the new, empty token
        with Token.open(second) as token:
            token.create_aes_key("k")
            assert token.decrypt("k", *token.encrypt("k", b"x", b""), b"") == b"x"
    finally:
        kept.close()
    assert show_slots().count(f"Label:            {label}") == 1
