"""The folder mode of `envelope encrypt|decrypt` takes the lake's safety flags and --fsync."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "ENVELOPE_HOME": "/nonexistent-envelope-home-for-tests"}


def envelope(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args], capture_output=True, env=ENV,
        timeout=120,
    )


def outputs(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()
                  and not p.name.startswith("."))


def test_folder_mode_links_follow_only_when_asked(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    assert envelope("keygen", str(key)).returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a" * 1000)
    (src / "link.txt").symlink_to(src / "a.txt")
    r = envelope("encrypt", str(src), str(tmp_path / "plain-run"), "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    assert outputs(tmp_path / "plain-run") == ["a.txt"]
    assert b"link.txt" in r.stdout + r.stderr  # the skipped link is named
    r = envelope("encrypt", str(src), str(tmp_path / "follow"), "--key-file", str(key),
                 "--follow-symlinks", "--fsync")
    assert r.returncode == 0, r.stderr
    assert outputs(tmp_path / "follow") == ["a.txt", "link.txt"]
    r = envelope("decrypt", str(tmp_path / "follow"), str(tmp_path / "back"), "--key-file",
                 str(key), "--no-fsync")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back" / "link.txt").read_bytes() == b"a" * 1000
