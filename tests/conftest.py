"""Shared fixtures: run async tests under asyncio and trio, and a ready keyring."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def unwritable(folder: Path) -> Iterator[str]:
    """`folder` made unwritable to this process, the way a user meets it: "mode" (mode 0555)
    for a user other than root; as root, whom no mode stops, "mount" (a read-only bind mount
    of the folder onto itself). Restored afterwards."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "mode"
        finally:
            folder.chmod(0o755)
        return
    mounted = shutil.which("mount") is not None and (
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=False).returncode == 0
    )
    if not mounted:
        pytest.skip(
            "running as root, only a read-only mount makes a folder unwritable, and this "
            "machine refuses mount --bind (a container without CAP_SYS_ADMIN)"
        )
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield "mount"
    finally:
        subprocess.run(["umount", str(folder)], check=False)
