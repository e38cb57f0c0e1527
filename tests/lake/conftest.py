"""Fixtures for lake tests: generated trees and a real S3-protocol server (moto) on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tree(root: Path, sizes: list[int], seed: int = 0) -> dict[str, bytes]:
    """Files of the given sizes in nested folders; returns {relative path: content}.

    Each file is dated a minute back, as a lake's data is older than the job that encrypts
    it: an output on S3 (whole-second times) written in the same second as its source is
    redone by a resumed job, which tests of resume on S3 would otherwise meet at random. A
    local file's age counts its status-change time too (`cp -p` is a change), which cannot be
    set back: the tree is made, then the next second awaited."""
    out = {}
    past = time.time() - 60
    for i, size in enumerate(sizes):
        rel = f"part={i % 3}/sub{i % 2}/obj-{i:04d}.bin" if i % 4 else f"top-{i:04d}.bin"
        data = os.urandom(size)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (past, past))
        out[rel] = data
    time.sleep(1.01 - time.time() % 1)
    return out


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


class S3:
    """A moto S3 server on a free loopback port, and how to reach it from pyarrow."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"

    def fs(self, **kw: object) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key="test",
            secret_key="test",
            endpoint_override=self.endpoint,
            scheme="http",
            region="us-east-1",
            **kw,
        )

    def uri(self, path: str) -> str:
        return (
            f"s3://test:test@{path}?endpoint_override=127.0.0.1%3A{self.port}"
            "&scheme=http&region=us-east-1"
        )

    def client(self) -> Any:
        """A botocore S3 client for this server (to look at what pyarrow cannot: uploads)."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url=f"http://{self.endpoint}",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def reset(self) -> None:
        req = urllib.request.Request(f"http://{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3]:
    """moto's S3 server in its own process (not a thread of ours: no GIL shared with the
    code under test), on a free loopback port; stopped by the pid we started."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield S3(port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server: S3) -> Iterator[S3]:
    s3_server.reset()
    s3_server.fs(allow_bucket_creation=True).create_dir("lake")
    yield s3_server
    s3_server.reset()
