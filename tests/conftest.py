"""Shared fixtures: run async tests under asyncio and trio, and a ready keyring."""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's KMS server (a real HTTP server speaking the AWS KMS protocol) on loopback, one
    per test module; it checks no signature and keeps its keys in memory."""
    from moto import server as moto_server

    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        srv.stop()
