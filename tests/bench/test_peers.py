"""`envelope bench peers` at a tiny size: documented keys, byte-checked round trips, peers
that are not installed listed as skipped with their install command, broken ones not timed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from envelope.bench import peers

from .conftest import check_keys, finite_positive
from .test_machine_encrypt import nonblank

FIGURES = ("encrypt_mbps", "decrypt_mbps", "encrypt_median_mbps", "decrypt_median_mbps",
           "peak_rss_mib", "encrypt_rss_mib", "decrypt_rss_mib")  # fmt: skip


@pytest.mark.slow
def test_peers_missing_tools_are_skipped(
    bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a PATH with cp and true only: age and openssl are "not installed" whatever this host has
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cp", "true"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    work = tmp_path / "work"
    work.mkdir()
    data = bench(
        "peers", "--size", "1M", "--rounds", "1", "--dir", str(work),
        "--peers", "envelope,tink,aws-encryption-sdk-best,age,openssl,cp",
        "--plot", str(tmp_path / "peers.png"),
    )  # fmt: skip
    nonblank(tmp_path / "peers.png")
    check_keys(data, "peers")
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == ["envelope", "tink", "aws-encryption-sdk-best", "age", "openssl", "cp"]
    for name in ("age", "openssl"):
        assert rows[name]["skipped"] is True and rows[name]["reason"] == "not installed"
        assert rows[name]["install"].startswith("apt-get install")
        assert all(rows[name][f] is None for f in FIGURES)
    for name in ("envelope", "tink", "aws-encryption-sdk-best", "cp"):
        row = rows[name]
        assert row["skipped"] is False and row["error"] is None, row
        finite_positive(row, *FIGURES)
        assert row["peak_rss_mib"] >= data["rss_floor_mib"] * 0.9
        if name == "cp":
            assert row["inproc_encrypt_mbps"] is None
        else:  # the Python libraries are timed in process too
            finite_positive(row, "inproc_encrypt_mbps", "inproc_decrypt_mbps")
    # envelope streams: its peak is nowhere near a whole-file buffer plus interpreter
    assert rows["envelope"]["peak_rss_mib"] < 100
    finite_positive(data["targets"], "encrypt_over_tink", "decrypt_over_aws_encryption_sdk_best")
    assert data["targets"]["encrypt_over_cp"] is not None
    assert list(work.iterdir()) == []


def made_up_peer(name: str, setting: str, encrypt: Any, decrypt: Any, keygen: Any = None) -> Any:
    """A peer of the test's own making, always present, with no key unless `keygen` says."""
    return peers.Peer(
        name=name,
        setting=setting,
        install="-",
        present=lambda: True,
        keygen=keygen or (lambda key: []),
        encrypt=encrypt,
        decrypt=decrypt,
    )


def test_a_peer_that_changes_the_bytes_is_not_timed(tmp_path: Path) -> None:
    broken = made_up_peer(
        "broken",
        "decrypt gives back the key file",
        keygen=lambda key: [["sh", "-c", f"echo not-the-input > {key}"]],
        encrypt=lambda key, src, dst: ["cp", src, dst],
        decrypt=lambda key, src, dst: ["cp", key, dst],
    )
    failing = made_up_peer(
        "failing",
        "exits 3",
        encrypt=lambda key, src, dst: ["sh", "-c", "echo boom >&2; exit 3"],
        decrypt=lambda key, src, dst: ["cp", src, dst],
    )
    absent = peers.Peer(
        name="absent",
        setting="-",
        install="pip install absent-tool",
        present=lambda: False,
        keygen=lambda key: [],
        encrypt=lambda key, src, dst: [],
        decrypt=lambda key, src, dst: [],
    )
    cp = next(p for p in peers.PEERS if p.name == "cp")
    got = peers.measure(size=64 << 10, rounds=1, directory=str(tmp_path),
                        peers=[broken, failing, absent, cp])  # fmt: skip
    rows = {r["name"]: r for r in got["rows"]}
    assert rows["broken"]["skipped"] and rows["broken"]["error"] == "round trip changed the bytes"
    assert rows["failing"]["skipped"] and "exited 3" in rows["failing"]["error"]
    assert "boom" in rows["failing"]["error"]
    assert rows["absent"]["install"] == "pip install absent-tool"
    assert rows["broken"]["encrypt_mbps"] is None and rows["broken"]["install"] is None
    assert rows["cp"]["skipped"] is False and rows["cp"]["encrypt_mbps"] > 0


def test_peak_rss_is_the_tools_own(tmp_path: Path) -> None:
    """A fat parent does not inflate a child's figure (ru_maxrss survives fork and exec)."""
    ballast = b"\x01" * (200 << 20)  # this process: over 200 MiB resident
    seconds, rss = peers.run_timed(["true"], dict(os.environ))
    assert seconds > 0 and 0 < rss < 60, rss
    del ballast


def test_unknown_peer_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from envelope.cli.main import main

    assert main(["bench", "peers", "--peers", "envelope,nosuch"]) == 2
    assert "unknown peer nosuch" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupt_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGINT in the middle of a run: exit 130, the scratch folder gone, no tool left running."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "envelope.cli.main", "bench", "peers", "--size", "64M",
         "--rounds", "50", "--peers", "envelope,cp", "--dir", str(tmp_path), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the timed rounds have started
        work = list(tmp_path.iterdir())
        if work and any(p.name.endswith(".sealed") for p in work[0].iterdir()):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert list(tmp_path.iterdir()) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps


def test_a_peer_that_fails_during_the_timed_rounds_is_its_row(tmp_path: Path) -> None:
    """A peer that passed its round-trip check and then failed in a timed round ended the
    whole run with a traceback, every other peer's figures lost (review)."""
    counter = tmp_path / "runs"
    counter.write_text("")
    flaky = made_up_peer(
        "flaky",
        "fails after its check",
        # the check encrypts once; the timed round's encrypt is the second call: it fails
        encrypt=lambda key, src, dst: [
            "sh",
            "-c",
            f'echo x >> {counter}; [ "$(wc -l < {counter})" -le 1 ] || exit 4; cp {src} {dst}',
        ],
        decrypt=lambda key, src, dst: ["cp", src, dst],
    )
    cp = next(p for p in peers.PEERS if p.name == "cp")
    got = peers.measure(size=64 << 10, rounds=2, directory=str(tmp_path), peers=[flaky, cp])
    rows = {r["name"]: r for r in got["rows"]}
    assert rows["flaky"]["skipped"] and rows["flaky"]["reason"] == "failed"
    assert "exited 4" in rows["flaky"]["error"]
    assert rows["cp"]["skipped"] is False and rows["cp"]["encrypt_mbps"] > 0


def test_a_failing_peer_s_row_keeps_the_end_of_its_error(tmp_path: Path) -> None:
    """A long traceback was cut at 500 characters from its start (after a tail that began
    mid-traceback), losing the exception's own line; a failing keygen said only "returned
    non-zero exit status 1", without its error output (review)."""
    noisy = made_up_peer(
        "noisy",
        "a long traceback, then its error",
        encrypt=lambda key, src, dst: [
            "sh",
            "-c",
            "for i in $(seq 80); do echo '  File \"x.py\", line 1, in main' >&2; "
            "done; echo 'ImportError: the real reason' >&2; exit 1",
        ],
        decrypt=lambda key, src, dst: ["cp", src, dst],
    )
    keyless = made_up_peer(
        "keyless",
        "its keygen fails",
        keygen=lambda key: [["sh", "-c", "echo 'no key for you' >&2; exit 1"]],
        encrypt=lambda key, src, dst: ["cp", src, dst],
        decrypt=lambda key, src, dst: ["cp", src, dst],
    )
    got = peers.measure(size=64 << 10, rounds=1, directory=str(tmp_path), peers=[noisy, keyless])
    rows = {r["name"]: r for r in got["rows"]}
    error = rows["noisy"]["error"]
    assert error.startswith("sh exited 1: ") and error.endswith("ImportError: the real reason")
    assert len(error) <= 600
    assert rows["keyless"]["error"] == "sh exited 1: no key for you"
