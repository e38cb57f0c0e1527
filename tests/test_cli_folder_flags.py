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
    # encrypt prints nothing on stdout unless asked (cli.md); what it left alone is named on
    # stderr, and a full summary comes with --json
    assert r.stdout == b"" and b"SKIPPED link.txt" in r.stderr
    r = envelope("encrypt", str(src), str(tmp_path / "asked"), "--key-file", str(key), "--json")
    assert r.returncode == 0 and b'"done": 1' in r.stdout
    r = envelope("encrypt", str(src), str(tmp_path / "follow"), "--key-file", str(key),
                 "--follow-symlinks", "--fsync")
    assert r.returncode == 0, r.stderr
    assert outputs(tmp_path / "follow") == ["a.txt", "link.txt"]
    r = envelope("decrypt", str(tmp_path / "follow"), str(tmp_path / "back"), "--key-file",
                 str(key), "--no-fsync")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back" / "link.txt").read_bytes() == b"a" * 1000


def _segment_size(path: Path) -> int:
    from envelope.objects import read_header

    data = path.read_bytes()
    return read_header(lambda at, n: data[at : at + n]).segment_size


def test_lake_jobs_and_folder_mode_take_the_engine_flags(tmp_path: Path) -> None:
    """`--segment-size` (with a unit) and `--memory-budget` mean the same for one file, a
    folder and a lake job; a budget under the 4 MiB floor is refused before anything is
    written."""
    key = tmp_path / "k.key"
    assert envelope("keygen", str(key)).returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    lake = tmp_path / "lake"
    r = envelope("lake", "encrypt", str(src), str(lake), "--key-file", str(key),
                 "--segment-size", "64K", "--memory-budget", "8M", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert _segment_size(lake / "a.bin") == 64 << 10
    r = envelope("encrypt", str(src), str(tmp_path / "folder"), "--key-file", str(key),
                 "--segment-size", "16384")
    assert r.returncode == 0, r.stderr
    assert _segment_size(tmp_path / "folder" / "a.bin") == 16 << 10
    r = envelope("encrypt", str(src / "a.bin"), str(tmp_path / "one.env"), "--key-file",
                 str(key), "--segment-size", "4KiB")
    assert r.returncode == 0, r.stderr
    assert _segment_size(tmp_path / "one.env") == 4 << 10
    for cmd in (("lake", "decrypt", str(lake), str(tmp_path / "back")),
                ("lake", "encrypt", str(src), str(tmp_path / "never"))):
        r = envelope(*cmd, "--key-file", str(key), "--memory-budget", "1M", "--no-progress")
        assert r.returncode == 2 and b"at least 4 MiB" in r.stderr, r.stderr
    assert not (tmp_path / "back").exists() and not (tmp_path / "never").exists()
    r = envelope("lake", "decrypt", str(lake), str(tmp_path / "back"), "--key-file", str(key),
                 "--memory-budget", "4M", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    r = envelope("encrypt", str(src / "a.bin"), str(tmp_path / "x.env"), "--key-file", str(key),
                 "--segment-size", "0")
    assert r.returncode == 2 and b"is not a size" in r.stderr
