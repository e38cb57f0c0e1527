"""Bounded memory: a 2 GiB stream encrypts and decrypts in well under 200 MiB of RSS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).resolve().parent.parent / "bench" / "rss_child.py"


@pytest.mark.slow
def test_two_gib_stream_stays_under_200_mib() -> None:
    r = subprocess.run(
        [sys.executable, str(CHILD), "2048"], check=True, capture_output=True, text=True
    )
    peak = int(r.stdout.strip().splitlines()[-1])
    assert 0 < peak < 200, f"peak RSS {peak} MiB"
