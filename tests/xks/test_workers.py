"""`envelope xks serve` with two worker processes: each logs in to the token itself (the parent
closes its session before forking), both serve, and /metrics merges their counts; the health
check's test key is made at start when the token lacks it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import MD, Proxy, start_proxy


@pytest.fixture(scope="module")
def two(xks_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    p = start_proxy(
        tmp_path_factory.mktemp("workers"), server="workers = 2", health_key="made-at-start"
    )
    try:
        yield p
    finally:
        p.stop()


def test_the_health_key_is_made_at_start(two: Proxy) -> None:
    # the token had no "made-at-start" key: serve made it, so the deep check passes
    with two.client() as client:
        (entry,) = client.health(MD)["ekmFleetDetails"]
    assert entry["healthStatus"] == "ACTIVE"
    assert "made the health check's key 'made-at-start'" in two.log.read_text()


def test_both_workers_serve_and_metrics_merge(two: Proxy) -> None:
    marker = f"workers-{time.time()}"
    md = MD.__class__(MD.aws_principal_arn, MD.kms_key_arn, "Encrypt", marker)
    pids: set[int] = set()
    calls = 0
    deadline = time.monotonic() + 20
    while len(pids) < 2 and time.monotonic() < deadline:
        with two.client() as client:  # a new connection each time: the kernel picks a worker
            ct = client.encrypt("k1", b"k" * 32, b"ctx", md)
            assert client.decrypt("k1", ct, b"ctx", md) == b"k" * 32
            calls += 2
        time.sleep(0.05)
        pids = {x["pid"] for x in two.log_lines() if x.get("kmsRequestId") == marker}
    assert len(pids) == 2, f"one worker served all {calls} calls"
    _, _, text = two.raw("GET", "/metrics", sign=False)
    text = text.decode() if isinstance(text, bytes) else str(text)
    counted = sum(
        float(m.group(1))
        for m in re.finditer(
            r'envelope_xks_proxy_requests_total\{operation="(?:Encrypt|Decrypt)",'
            r'outcome="OK"\} ([0-9.e+]+)',
            text,
        )
    )
    assert counted >= calls  # both processes' counts (multiprocess mode)
