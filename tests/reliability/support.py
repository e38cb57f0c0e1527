"""Shared machinery of the reliability suites: size, seed, counters, the CLI, leftovers.

Sizes come from ``ENVELOPE_RELIABILITY_SCALE`` (``ci``, the default, or ``full``); the seed of
every random choice from ``ENVELOPE_RELIABILITY_SEED`` (default: a fresh one per run, printed in
the terminal summary and in every failure message, so any failure replays with
``ENVELOPE_RELIABILITY_SEED=<seed>``). Counters are what each suite tried (inputs, faults,
kill points, signals); the conftest prints them at the end of the run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).with_name("corpus") / "header"

SCALE = os.environ.get("ENVELOPE_RELIABILITY_SCALE", "ci")
if SCALE not in ("ci", "full"):
    raise RuntimeError(f"ENVELOPE_RELIABILITY_SCALE must be ci or full, not {SCALE!r}")

_seed_env = os.environ.get("ENVELOPE_RELIABILITY_SEED")
SEED = int(_seed_env) if _seed_env else random.SystemRandom().randrange(1 << 32)

#: suite -> what -> how many. Printed by tests/reliability/conftest.py.
COUNTS: defaultdict[str, Counter[str]] = defaultdict(Counter)


def size(ci: int, full: int) -> int:
    """The run's size for one knob: `ci` in CI, `full` under scripts/reliability."""
    return full if SCALE == "full" else ci


def count(suite: str, what: str, n: int = 1) -> None:
    COUNTS[suite][what] += n


def rng(name: str) -> random.Random:
    """A generator for one test, derived from the run's seed and the test's name."""
    return random.Random(f"{SEED}/{name}")


def where() -> str:
    """What to put in a failure message so it can be replayed."""
    return f"(ENVELOPE_RELIABILITY_SEED={SEED} ENVELOPE_RELIABILITY_SCALE={SCALE})"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout first on the path, no terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVELOPE_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


_ENTRY = "from envelope.cli.entry import run; run()"  # the console script's own code


def envelope_cmd(*args: str) -> list[str]:
    """The `envelope` command line as a user runs it (the installed entry point's code)."""
    return [sys.executable, "-c", _ENTRY, *args]


def run_envelope(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        envelope_cmd(*args),
        env=child_env(ENVELOPE_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def leftovers(folder: Path) -> list[Path]:
    """Temporaries anywhere under `folder`: what an interrupted run must never leave."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.name.endswith((".envelope-tmp", ".tmp")) or ".envelope-tmp" in p.name
    )


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size_bytes: int) -> Iterator[Path]:
    """A small tmpfs mounted at `mountpoint` (we run as root), that really fills.

    Skips the test, with the reason, where mounting is not permitted; unmounted on the way
    out, whatever happened (lazily if something still holds it open)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def resize_tmpfs(mountpoint: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(mountpoint)], check=True)


def fill(folder: Path) -> Path:
    """Fill the filesystem holding `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        try:
            while True:
                f.write(b"\0")
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return filler


def make_tree(root: Path, sizes: list[int], r: random.Random) -> dict[str, bytes]:
    """Files of the given sizes in nested folders; returns {relative path: content}."""
    out = {}
    for i, n in enumerate(sizes):
        rel = f"part={i % 3}/obj-{i:04d}.bin" if i % 4 else f"top-{i:04d}.bin"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = r.randbytes(n)
        p.write_bytes(data)
        out[rel] = data
    return out


def files_under(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}
