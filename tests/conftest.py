"""Shared fixtures: run async tests under asyncio and trio, and a ready keyring."""

from __future__ import annotations

import pytest

from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def memory_kms() -> MemoryKms:
    return MemoryKms()


@pytest.fixture
def keyring(memory_kms: MemoryKms) -> Keyring:
    return Keyring(memory_kms, memory_kms.create_key("test-key"))
