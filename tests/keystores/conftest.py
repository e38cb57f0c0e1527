"""A private SoftHSM2 token for the custom-key-store tests (one per test module)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from envelope.pkcs11 import Token, TokenConfig

from ..service.conftest import FakeClock
from ..softhsm import make_token

__all__ = ("HsmToken",)


@dataclass(frozen=True)
class HsmToken:
    config: TokenConfig

    @property
    def module(self) -> str:
        return self.config.module

    @property
    def label(self) -> str:
        return self.config.token_label

    @property
    def pin(self) -> str:
        return self.config.pin

    def token(self) -> Token:
        return Token.open(self.config)


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsmToken]:
    label = "kms-" + secrets.token_hex(4)
    config = make_token(tmp_path_factory.mktemp("softhsm"), label=label, pin="12345678")
    yield HsmToken(config)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def home_of(tmp_path: Path) -> Path:
    return tmp_path / "home"
