"""Fixtures for the embedded KMS: a real SQLite store in tmp_path and a clock tests can move."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from envelope.service import FileRootKey, KeyService, Store

START = 1_800_000_000.0
DAY = 86400.0


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 0.0, *, days: float = 0.0) -> None:
        self.now += seconds + days * DAY


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def open_store(home: Path) -> Store:
    home.mkdir(parents=True, exist_ok=True)
    return Store.open(home / "kms.sqlite3", FileRootKey(home / "root.key"))


@pytest.fixture
def svc(home: Path, clock: FakeClock) -> Iterator[KeyService]:
    service = KeyService(open_store(home), clock=clock, owns_store=True)
    yield service
    service.close()


def new_key(svc: KeyService, **kwargs: object) -> str:
    return str(svc.create_key(**kwargs)["KeyMetadata"]["KeyId"])  # type: ignore[arg-type]
