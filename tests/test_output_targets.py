"""What `envelope` does to the path it is told to write (issue 8, findings 1, 5 and 11).

Regular and new files are replaced atomically; devices and FIFOs are written through, never
replaced; a symlink's target is written, never the link; SIGTERM and SIGHUP clean up like
SIGINT; a later run removes what a killed one left. Every test runs the real CLI in a process.
Device tests use a private `mknod` copy of /dev/null in a temporary folder, never /dev itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from envelope.atomic import TMP_SUFFIX, OutputFile, remove_stale_temporaries

ENV = {**os.environ, "ENVELOPE_HOME": "/nonexistent-envelope-home-for-tests"}


def envelope(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args],
        capture_output=True,
        env=ENV,
        timeout=120,
    )


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "envelope.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(TMP_SUFFIX))


@pytest.fixture
def key(tmp_path: Path) -> Path:
    k = tmp_path / "k.key"
    assert envelope("keygen", str(k)).returncode == 0
    return k


@pytest.fixture
def plain(tmp_path: Path) -> bytes:
    data = os.urandom((2 << 20) + 77)
    (tmp_path / "in.bin").write_bytes(data)
    return data


@pytest.fixture
def sealed(tmp_path: Path, key: Path, plain: bytes) -> Path:
    out = tmp_path / "in.env"
    r = envelope("encrypt", str(tmp_path / "in.bin"), str(out), "--key-file", str(key),
                 "--segment-size", "65536")
    assert r.returncode == 0, r.stderr
    return out


def private_null(d: Path) -> Path:
    """A private character device with /dev/null's numbers (we run as root in CI)."""
    node = d / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root (CI runs as root)")
    os.chmod(node, 0o666)
    return node


class FifoReader:
    """Reads everything written to a FIFO on a thread (the writer blocks until it opens)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.data = b""
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        with open(self.path, "rb") as f:
            self.data = f.read()

    def join(self) -> bytes:
        self._t.join(30)
        return self.data


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_a_device_is_written_through_not_replaced(
    tmp_path: Path, key: Path, sealed: Path, command: str
) -> None:
    node = private_null(tmp_path)
    src = tmp_path / ("in.bin" if command == "encrypt" else "in.env")
    r = envelope(command, str(src), str(node), "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    st = os.lstat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert st.st_mode & 0o777 == 0o666
    assert leftovers(tmp_path) == []


def test_decrypt_streams_into_a_fifo(tmp_path: Path, key: Path, sealed: Path, plain: bytes) -> None:
    reader = FifoReader(tmp_path / "pipe")
    r = envelope("decrypt", str(sealed), str(reader.path), "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    assert reader.join() == plain
    assert stat.S_ISFIFO(os.lstat(reader.path).st_mode)
    assert leftovers(tmp_path) == []


def test_a_fifo_gets_only_authenticated_segments_and_a_failure_exit(
    tmp_path: Path, key: Path, sealed: Path, plain: bytes
) -> None:
    blob = bytearray(sealed.read_bytes())
    blob[len(blob) // 2] ^= 1  # a segment in the middle
    bad = tmp_path / "bad.env"
    bad.write_bytes(blob)
    reader = FifoReader(tmp_path / "pipe")
    r = envelope("decrypt", str(bad), str(reader.path), "--key-file", str(key),
                 "--workers", "1")
    got = reader.join()
    assert r.returncode == 1, r.stderr
    assert len(got) < len(plain) // 2 + 65536
    assert got == plain[: len(got)]  # only authenticated segments came out
    assert stat.S_ISFIFO(os.lstat(reader.path).st_mode)
    # and the message says so: the failure alone hid that a prefix went out (review)
    assert b"authenticated but incomplete prefix" in r.stderr, r.stderr
    with open(bad, "rb") as source:
        r = subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", "decrypt", "-", "-", "--key-file",
             str(key)],
            stdin=source, capture_output=True, env=ENV, timeout=120,
        )  # fmt: skip
    assert r.returncode == 1 and b"written to standard output" in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_a_symlink_target_is_replaced_never_the_link(
    tmp_path: Path, key: Path, sealed: Path, plain: bytes, command: str
) -> None:
    (tmp_path / "sub").mkdir()
    target = tmp_path / "sub" / "real.out"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.out"
    link.symlink_to(target)
    src = tmp_path / ("in.bin" if command == "encrypt" else "in.env")
    r = envelope(command, str(src), str(link), "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.stat().st_mode & 0o777 == 0o640
    if command == "decrypt":
        assert target.read_bytes() == plain
    else:
        assert target.read_bytes()[:4] != b"old" and target.stat().st_size > len(plain)
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "sub") == []


def test_a_dangling_symlink_creates_its_target(
    tmp_path: Path, key: Path, sealed: Path, plain: bytes
) -> None:
    link = tmp_path / "link.out"
    link.symlink_to(tmp_path / "made.out")
    r = envelope("decrypt", str(sealed), str(link), "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and (tmp_path / "made.out").read_bytes() == plain


def test_a_folder_target_for_a_file_is_refused(tmp_path: Path, key: Path, sealed: Path) -> None:
    out = tmp_path / "folder"
    out.mkdir()
    r = envelope("decrypt", str(sealed), str(out), "--key-file", str(key))
    assert r.returncode == 2, r.stderr
    assert b"folder" in r.stderr
    assert list(out.iterdir()) == []


def test_the_input_itself_is_never_the_output(
    tmp_path: Path, key: Path, sealed: Path, plain: bytes
) -> None:
    """`encrypt f f` replaced the plaintext with its ciphertext (and `decrypt f f` the
    reverse); through a hard link the other name kept the plaintext. Refused by any name, as
    `cp` and the folder mode refuse it, with nothing touched (review)."""
    src = tmp_path / "in.csv"
    src.write_bytes(plain)
    twin = tmp_path / "twin.csv"
    os.link(src, twin)
    for out in (src, tmp_path / "." / "in.csv", twin):
        r = envelope("encrypt", str(src), str(out), "--key-file", str(key))
        assert r.returncode == 2 and b"is the input itself" in r.stderr, r.stderr
    before = sealed.read_bytes()
    r = envelope("decrypt", str(sealed), str(sealed), "--key-file", str(key))
    assert r.returncode == 2 and b"is the input itself" in r.stderr
    assert src.read_bytes() == plain and sealed.read_bytes() == before
    assert leftovers(tmp_path) == []



def test_standard_output_that_is_the_input_is_refused(
    tmp_path: Path, key: Path, plain: bytes
) -> None:
    """`envelope encrypt f - >> f` appended the ciphertext to its own plaintext (review)."""
    src = tmp_path / "in.bin"
    with open(src, "ab") as out:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "envelope.cli.main",
                "encrypt",
                str(src),
                "-",
                "--key-file",
                str(key),
            ],
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert r.returncode == 2 and b"standard output is" in r.stderr, r.stderr
    assert src.read_bytes() == plain


def _decrypt_appending_to(
    log: Path, sealed: Path, key: Path, name: str
) -> subprocess.CompletedProcess[bytes]:
    """`envelope decrypt SEALED NAME >> log` with `log` holding "precious" first."""
    log.write_bytes(b"precious\n")
    with open(log, "ab") as out:
        return subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", "decrypt", str(sealed), name,
             "--key-file", str(key)],
            stdout=out, stderr=subprocess.PIPE, env=ENV, timeout=120,
        )  # fmt: skip


def test_dev_stdout_is_standard_output_not_a_file_to_replace(
    tmp_path: Path, key: Path, plain: bytes, sealed: Path
) -> None:
    """`envelope encrypt f /dev/stdout >> log` resolved /dev/stdout to log and replaced it
    atomically: what log held was gone (review). /dev/stdout, /dev/fd/1 and
    /proc/self/fd/1 are standard output, as `-`; /dev/stdin is standard input; another
    descriptor's name is refused, never replaced."""
    log = tmp_path / "log.txt"
    for name in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        r = _decrypt_appending_to(log, sealed, key, name)
        assert r.returncode == 0, r.stderr
        assert log.read_bytes() == b"precious\n" + plain, name
    with open(sealed, "rb") as source:
        r = subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", "decrypt", "/dev/stdin", "-",
             "--key-file", str(key)],
            stdin=source, capture_output=True, env=ENV, timeout=120,
        )  # fmt: skip
    assert r.returncode == 0 and r.stdout == plain, r.stderr
    r = envelope("decrypt", str(sealed), "/dev/stderr", "--key-file", str(key))
    assert r.returncode == 2 and b"names open descriptor 2" in r.stderr
    # another process's standard output is not ours: refused, its target left alone
    other_out = tmp_path / "other.txt"
    with open(other_out, "wb") as f:
        other = subprocess.Popen(["sleep", "30"], stdout=f)
    try:
        r = envelope("decrypt", str(sealed), f"/proc/{other.pid}/fd/1", "--key-file", str(key))
        assert r.returncode == 2 and b"names open descriptor 1" in r.stderr, r.stderr
        assert other_out.read_bytes() == b""
    finally:
        other.kill()
        other.wait()


def test_lake_report_follows_the_same_rule(tmp_path: Path, key: Path) -> None:
    src = tmp_path / "lake"
    src.mkdir()
    (src / "a.csv").write_bytes(b"x,y\n1,2\n")
    real = tmp_path / "real-report.json"
    real.write_text("{}")
    link = tmp_path / "report.json"
    link.symlink_to(real)
    r = envelope("lake", "encrypt", str(src), str(tmp_path / "enc"), "--key-file", str(key),
                 "--report", str(link))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink()
    assert json.loads(real.read_text())["done"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    node = private_null(tmp_path)
    r = envelope("lake", "verify", str(tmp_path / "enc"), "--key-file", str(key),
                 "--report", str(node))
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_lake_report_says_unfinished_while_its_run_has_not_finished(
    tmp_path: Path, key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed outright (SIGKILL, the OOM killer) writes no report at its end, and the
    last run's `"ok": true` was left there, read as this one's (review): while the job
    runs, the report says it has not finished."""
    from envelope.cli.main import main
    from envelope.lake import jobs

    src = tmp_path / "lake"
    src.mkdir()
    (src / "a.csv").write_bytes(b"x,y\n1,2\n")
    report = tmp_path / "report.json"
    args = ["lake", "encrypt", str(src), str(tmp_path / "enc"), "--key-file", str(key),
            "--report", str(report), "--no-progress"]  # fmt: skip
    assert main(args) == 0 and json.loads(report.read_text())["ok"] is True
    seen: list[dict[str, Any]] = []
    real = jobs.run_job

    async def watched(*a: Any, **kw: Any) -> Any:
        seen.append(json.loads(report.read_text()))  # what a kill here would leave
        return await real(*a, **kw)

    monkeypatch.setattr(jobs, "run_job", watched)
    assert main(args) == 0
    assert seen[0]["ok"] is False and "has not finished" in seen[0]["error"]
    assert json.loads(report.read_text())["ok"] is True  # and the run's own, once done


@pytest.fixture
def big(tmp_path: Path, key: Path) -> tuple[Path, Path]:
    """A plaintext and its sealed object, large enough to signal a run in its middle."""
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(96):
            f.write(os.urandom(1 << 20))
    enc = tmp_path / "big.env"
    r = envelope("encrypt", str(src), str(enc), "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    return src, enc


@pytest.mark.parametrize(
    ("command", "sig", "code"),
    [
        ("decrypt", signal.SIGTERM, 143),
        ("decrypt", signal.SIGHUP, 129),
        ("encrypt", signal.SIGTERM, 143),
        ("encrypt", signal.SIGINT, 130),
    ],
)
def test_a_stop_signal_leaves_nothing_behind(
    tmp_path: Path, key: Path, big: tuple[Path, Path], command: str, sig: int, code: int
) -> None:
    src = big[1] if command == "decrypt" else big[0]
    target = tmp_path / "target.out"
    target.write_bytes(b"precious")
    proc = start(command, str(src), str(target), "--key-file", str(key), "--workers", "1")
    deadline = time.monotonic() + 30
    while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.fail("the run finished before the signal: make the input larger")
    assert proc.returncode == code, stderr
    assert leftovers(tmp_path) == []
    assert target.read_bytes() == b"precious"


def test_a_later_run_removes_what_a_killed_run_left(
    tmp_path: Path, key: Path, big: tuple[Path, Path]
) -> None:
    target = tmp_path / "target.out"
    proc = start("decrypt", str(big[1]), str(target), "--key-file", str(key), "--workers", "1")
    deadline = time.monotonic() + 30
    while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    stale = leftovers(tmp_path)
    assert len(stale) == 1
    r = envelope("decrypt", str(big[1]), str(target), "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    assert leftovers(tmp_path) == []
    assert target.read_bytes() == big[0].read_bytes()


def test_a_live_writers_temporary_is_never_removed(tmp_path: Path) -> None:
    target = tmp_path / "t.out"
    live = OutputFile(target, durable=False)  # holds its flock, as another process would
    try:
        assert live.tmp_path is not None
        fd = os.open(live.tmp_path, os.O_RDONLY)
        try:  # the lock is held: nobody else can take it
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        child = subprocess.run(
            [sys.executable, "-c",
             "import sys; from envelope.atomic import remove_stale_temporaries as r;"
             " print(r(sys.argv[1]))", str(target)],
            capture_output=True, text=True, check=True,
        )
        assert child.stdout.strip() == "0"
        assert os.path.exists(live.tmp_path)
        live.write(b"data")
        live.commit()
    finally:
        live.discard()
    assert target.read_bytes() == b"data"
    assert remove_stale_temporaries(str(target)) == 0


@pytest.mark.parametrize("where", ["commit", "discard"])
def test_an_interrupt_right_after_close_is_not_turned_into_ebadf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """SIGINT's KeyboardInterrupt may land just after `os.close` returns (the handler runs at the
    next bytecode). The cleanup must not close the same number again: in CI that turned a clean
    interrupt into 'I/O error: Bad file descriptor' (exit 5) and could close another thread's
    freshly opened descriptor."""
    import envelope.atomic as atomic

    target = tmp_path / "t"
    out = OutputFile(target)
    out.write(b"x" * 10)
    real_close, calls = os.close, []

    def close_then_interrupt(fd: int) -> None:
        calls.append(fd)
        real_close(fd)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        out.commit() if where == "commit" else out.discard()
    monkeypatch.undo()
    assert len(calls) == 1, calls  # closed once; the second close would have raised EBADF
    assert out.fd == -1
    if where == "discard":
        assert not list(tmp_path.iterdir())
    else:  # the interrupt came after the rename: the output is whole and nothing else is left
        assert target.read_bytes() == b"x" * 10
        assert [p.name for p in tmp_path.iterdir()] == ["t"]


# -- an output over the keys the command uses ------------------------------------------------


def _kms_env(home: Path) -> dict[str, str]:
    return {**os.environ, "ENVELOPE_HOME": str(home)}


@pytest.mark.parametrize("op", ["encrypt", "decrypt"])
def test_an_output_over_the_key_file_is_refused(tmp_path: Path, key: Path, op: str) -> None:
    """`envelope encrypt p k.key --key-file k.key` replaced the only copy of the key with
    data sealed under it: both were lost. Refused before anything is written, as is a hard
    link to the key file and a decrypt onto it."""
    src = tmp_path / "p"
    src.write_bytes(b"hello")
    if op == "decrypt":
        sealed = tmp_path / "p.env"
        assert envelope("encrypt", str(src), str(sealed), "--key-file", str(key)).returncode == 0
        src = sealed
    link = tmp_path / "link.key"
    os.link(key, link)
    before = key.read_bytes()
    for target in (key, link):
        r = envelope(op, str(src), str(target), "--key-file", str(key))
        assert r.returncode == 2, r.stderr
        assert b"refusing to write" in r.stderr and b"keys of this keyring" in r.stderr
        assert key.read_bytes() == before
        assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["root.key", "kms.sqlite3", "kms.sqlite3-wal"])
def test_an_output_over_the_embedded_kms_files_is_refused(tmp_path: Path, name: str) -> None:
    """Encrypting onto the home's root-key file (or its store) left a KMS that could not be
    opened: every key in it lost. The digest folder is refused the same way."""
    home = tmp_path / "home"
    env = _kms_env(home)
    src = tmp_path / "p"
    src.write_bytes(b"hello")
    ok = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "encrypt", str(src), str(tmp_path / "o")],
        capture_output=True, env=env, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    for target in (home / name, tmp_path / "home.audit-digests" / "x"):
        before = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
        r = subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", "encrypt", str(src), str(target)],
            capture_output=True, env=env, timeout=120,
        )
        assert r.returncode == 2, r.stderr
        assert b"refusing to write" in r.stderr
        assert (home / "root.key").read_bytes() == before["root.key"]
        assert not (tmp_path / "home.audit-digests" / "x").exists()
    listed = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "keys", "list"],
        capture_output=True, env=env, timeout=120,
    )
    assert listed.returncode == 0, listed.stderr


def test_the_library_refuses_it_too(tmp_path: Path) -> None:
    """The guard is in the object layer: `envelope.sync` and the async API refuse a path
    output over a key file of the keyring, before any KMS call or temporary file."""
    import anyio

    from envelope import api, sync
    from envelope.errors import ConfigurationError
    from envelope.kms.filekey import FileKeyBackend, generate_key_file

    path = tmp_path / "k.key"
    generate_key_file(path)
    before = path.read_bytes()
    backend = FileKeyBackend(path)
    from envelope.keyring import Keyring

    kr = Keyring(backend, backend.key_id)
    src = tmp_path / "p"
    src.write_bytes(b"x" * 100)
    with pytest.raises(ConfigurationError, match="refusing to write"):
        sync.encrypt(str(src), str(path), keyring=kr)
    with pytest.raises(ConfigurationError, match="refusing to write"):
        anyio.run(lambda: api.encrypt(str(src), path, keyring=kr))
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_folder_mode_lake_jobs_reports_and_rewrap_do_not_write_over_the_keys(
    tmp_path: Path,
) -> None:
    """The guard covered one file only: a folder encrypted into the KMS home with a file
    named root.key replaced the root-key file (every key lost); one with a file named like
    the key file, into its folder, sealed the key under itself; `lake --report` could be
    the root-key file; `api.rewrap` could write onto the key file (review of the fix)."""
    import anyio

    from envelope import api, sync
    from envelope.errors import ConfigurationError
    from envelope.keyring import Keyring
    from envelope.kms.filekey import FileKeyBackend, generate_key_file

    home = tmp_path / "home"
    env = _kms_env(home)

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", *args],
            capture_output=True, env=env, timeout=120,
        )

    (tmp_path / "p").write_bytes(b"hello")
    assert run("encrypt", str(tmp_path / "p"), str(tmp_path / "p.env")).returncode == 0
    root_key = (home / "root.key").read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    (src / "root.key").write_bytes(b"evil")
    (src / "kms.sqlite3").write_bytes(b"evil")
    r = run("encrypt", str(src), str(home), "--no-progress")
    assert r.returncode == 1 and b"refusing to write" in r.stderr, r.stderr
    assert (home / "root.key").read_bytes() == root_key
    r = run("lake", "encrypt", str(src), str(tmp_path / "d"), "--report", str(home / "root.key"))
    assert r.returncode == 2 and b"refusing to write" in r.stderr, r.stderr
    assert (home / "root.key").read_bytes() == root_key
    assert run("decrypt", str(tmp_path / "p.env"), "-").returncode == 0  # the KMS still opens

    keys = tmp_path / "keys"
    keys.mkdir()
    key = keys / "the.key"
    generate_key_file(key)
    before = key.read_bytes()
    other = tmp_path / "src2"
    other.mkdir()
    (other / "the.key").write_bytes(b"x")
    r = run("encrypt", str(other), str(keys), "--key-file", str(key), "--no-progress")
    assert r.returncode == 1 and b"refusing to write" in r.stderr, r.stderr
    assert key.read_bytes() == before

    backend = FileKeyBackend(key)
    kr = Keyring(backend, backend.key_id)
    obj = tmp_path / "obj.env"
    obj.write_bytes(bytes(sync.encrypt_bytes(b"secret", keyring=kr)))
    with pytest.raises(ConfigurationError, match="refusing to write"):
        anyio.run(lambda: api.rewrap(str(obj), str(key), keyring=kr, to=kr))
    assert key.read_bytes() == before


def test_a_link_of_another_name_to_a_kept_file_is_refused_in_a_folder_job(tmp_path: Path) -> None:
    """The folder and lake jobs check each target by name first; a symbolic link of another
    name to the key file (a `current.key` rotation link) or to the root-key file was written
    through, since the writer follows links: the key was sealed under itself, or the KMS
    lost every key (review of the fix)."""
    from envelope.kms.filekey import generate_key_file

    keys = tmp_path / "keys"
    keys.mkdir()
    generate_key_file(keys / "key-2024.key")
    before = (keys / "key-2024.key").read_bytes()
    (keys / "current.key").symlink_to("key-2024.key")
    (keys / "other-name").symlink_to("key-2024.key")
    src = tmp_path / "src"
    src.mkdir()
    (src / "other-name").write_bytes(b"evil")
    r = envelope("encrypt", str(src), str(keys), "--key-file", str(keys / "current.key"))
    assert r.returncode == 1 and b"refusing to write" in r.stderr, r.stderr
    assert (keys / "key-2024.key").read_bytes() == before


def test_a_signal_as_the_output_is_renamed_says_the_output_stands(
    tmp_path: Path,
    key: Path,
    plain: bytes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signal whose KeyboardInterrupt came as the rename over the target returned (a rename
    of 2 GB takes about a second) exited 143 with "no partial file was left", the target
    already replaced (review). The writer sees that the rename was done; the command says
    the output stands and exits 0."""
    import envelope.atomic as atomic
    from envelope.cli.main import main

    out = tmp_path / "out.env"
    out.write_bytes(b"OLD")
    real = os.replace

    def replace_then_interrupted(a: str, b: str) -> None:
        real(a, b)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", replace_then_interrupted)
    code = main(["encrypt", str(tmp_path / "in.bin"), str(out), "--key-file", str(key)])
    monkeypatch.setattr(atomic.os, "replace", real)
    assert code == 0
    assert "was written completely (it stands)" in capsys.readouterr().err
    assert out.read_bytes()[:4] == b"\x89ENV" and leftovers(tmp_path) == []
    back = envelope("decrypt", str(out), "-", "--key-file", str(key))
    assert back.returncode == 0 and back.stdout == plain
    # the next command of the same process, interrupted before it wrote anything, is not
    # taken for done because an earlier one renamed the same output (review)
    import envelope.sync as sync_module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sync_module, "encrypt", interrupted)
    before = out.read_bytes()
    code = main(["encrypt", str(tmp_path / "in.bin"), str(out), "--key-file", str(key)])
    assert code == 130 and out.read_bytes() == before
    assert "no partial file was left" in capsys.readouterr().err


def test_an_output_the_storage_refuses_is_an_io_error(tmp_path: Path, key: Path) -> None:
    """A read-only file system (or a permission refusal) under the output exited 2, "usage
    or configuration"; docs/cli.md says 5, an I/O error (review)."""
    from .conftest import unwritable

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "p").write_bytes(b"rows")
    with unwritable(out) as how:
        r = envelope("encrypt", str(tmp_path / "p"), str(out / "p.env"), "--key-file", str(key))
    said = b"Read-only file system" if how == "mount" else b"Permission denied"
    assert r.returncode == 5 and said in r.stderr, r.stderr
    assert b"cannot write to" in r.stderr and b"Traceback" not in r.stderr
    assert list(out.iterdir()) == []


def test_standard_output_spelled_otherwise_is_still_standard_output(
    tmp_path: Path, key: Path, plain: bytes, sealed: Path
) -> None:
    """`//dev/stdout` (POSIX keeps a leading //) and a link to /dev/stdout were taken for
    files, resolved to the shell's redirect target and replaced: a log opened with `>>` lost
    what it held; `//dev/stderr` too (review). They are standard output, and standard error is
    refused, whatever the spelling."""
    link = tmp_path / "so"
    link.symlink_to("/dev/stdout")
    chain = tmp_path / "chain"
    chain.symlink_to(link)
    log = tmp_path / "log.txt"
    devlink, proclink = tmp_path / "devlink", tmp_path / "procl"
    devlink.symlink_to("/dev")
    proclink.symlink_to("/proc/self")
    # ... and through a linked folder (diff review): /dev/fd and /proc/self/fd by other names
    for name in ("//dev/stdout", "/dev//stdout", str(link), str(chain), "///proc/self/fd/1",
                 f"{devlink}/fd/1", f"{proclink}/fd/1", f"{devlink}/stdout"):  # fmt: skip
        r = _decrypt_appending_to(log, sealed, key, name)
        assert r.returncode == 0, (name, r.stderr)
        assert log.read_bytes() == b"precious\n" + plain, name
    err_link = tmp_path / "se"
    err_link.symlink_to("/dev/stderr")
    for name in ("//dev/stderr", str(err_link), f"{devlink}/fd/2"):
        log.write_bytes(b"precious\n")
        with open(log, "ab") as errors:
            r = subprocess.run(
                [sys.executable, "-m", "envelope.cli.main", "decrypt", str(sealed), name,
                 "--key-file", str(key)],
                stdout=subprocess.PIPE, stderr=errors, env=ENV, timeout=120,
            )  # fmt: skip
        assert r.returncode == 2 and not r.stdout, name
        text = log.read_bytes()
        assert text.startswith(b"precious\n") and b"names open descriptor 2" in text, text


def test_a_name_ending_in_a_slash_is_a_folder_s(tmp_path: Path, key: Path, plain: bytes) -> None:
    """`encrypt f newdir/` wrote a file named newdir, and `encrypt f existing/` replaced the
    file: the slash was dropped (review). Refused, as `cp` refuses it."""
    src = tmp_path / "p.bin"
    src.write_bytes(plain)
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep")
    for name in (tmp_path / "newdir", existing):
        r = envelope("encrypt", str(src), f"{name}/", "--key-file", str(key))
        assert r.returncode == 2 and b"not a folder" in r.stderr, r.stderr
    assert not (tmp_path / "newdir").exists() and existing.read_bytes() == b"keep"
    assert leftovers(tmp_path) == []


def test_a_read_only_output_is_not_replaced(tmp_path: Path, key: Path, plain: bytes) -> None:
    """A 0444 file was replaced without a word (a rename needs only the folder's permission);
    `cp` and a shell's `>` refuse it. Exit 5, the file as it was. (Root may write any file,
    so the command runs without the capability that lets it: as any other user.)"""
    import shutil

    src = tmp_path / "p.bin"
    src.write_bytes(plain)
    ro = tmp_path / "ro.out"
    ro.write_bytes(b"read only")
    ro.chmod(0o444)
    cmd = [sys.executable, "-m", "envelope.cli.main", "encrypt", str(src), str(ro),
           "--key-file", str(key)]  # fmt: skip
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
        cmd = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-fowner", "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, env=ENV, timeout=120)
    assert r.returncode == 5 and b"read-only" in r.stderr, r.stderr
    assert ro.read_bytes() == b"read only" and stat.S_IMODE(ro.stat().st_mode) == 0o444
    assert leftovers(tmp_path) == []


def test_standard_input_that_is_the_output_is_refused(
    tmp_path: Path, key: Path, plain: bytes
) -> None:
    """`encrypt - f < f` replaced f with itself sealed, where `encrypt f f` is refused."""
    f = tmp_path / "f.bin"
    f.write_bytes(plain)
    with open(f, "rb") as stdin:
        r = subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", "encrypt", "-", str(f),
             "--key-file", str(key)],
            stdin=stdin, capture_output=True, env=ENV, timeout=120,
        )  # fmt: skip
    assert r.returncode == 2 and b"itself" in r.stderr, r.stderr
    assert f.read_bytes() == plain


def _closed(fd: int) -> Any:
    """A preexec_fn closing standard descriptor `fd` in the child (`2>&-`, `>&-`, `<&-`)."""
    return lambda: os.close(fd)


def test_a_closed_standard_descriptor_never_takes_the_data(
    tmp_path: Path, key: Path, plain: bytes, sealed: Path
) -> None:
    """Started with standard error closed, the first file the command opened took its number:
    a notice went into the ciphertext (exit 0, an object that no longer decrypted), and an
    error into the plaintext; with standard output or input closed, `-` and `--output json`
    crashed with a traceback (exit 1, "invalid object") (review). Closed descriptors are held
    by /dev/null now: files get their own numbers, and `-` on a closed one is a usage error."""
    home = tmp_path / "home"
    env = {**ENV, "ENVELOPE_HOME": str(home)}
    src = tmp_path / "p.bin"
    src.write_bytes(plain)
    out = tmp_path / "fresh.env"
    with open(out, "wb") as stdout:  # a new embedded KMS: its notice must not enter the data
        r = subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", "encrypt", str(src), "-", "--no-progress"],
            stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=120,
            preexec_fn=_closed(2),
        )  # fmt: skip
    assert r.returncode == 0
    back = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "decrypt", str(out), "-"],
        capture_output=True, env=env, timeout=120,
    )  # fmt: skip
    assert back.returncode == 0 and back.stdout == plain, back.stderr
    # a valid object decrypts to a file with standard error closed (the progress check)
    target = tmp_path / "x.out"
    r = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "decrypt", str(sealed), str(target),
         "--key-file", str(key)],
        capture_output=True, env=ENV, timeout=120, preexec_fn=_closed(2),
    )  # fmt: skip
    assert r.returncode == 0 and target.read_bytes() == plain
    for args, fd, what in (
        (["decrypt", str(sealed), "-"], 1, b"standard output is closed"),
        (["encrypt", "-", str(tmp_path / "y.env")], 0, b"standard input is closed"),
        (["encrypt", str(src), str(tmp_path / "z.env"), "--output", "json"], 1,
         b"standard output is closed"),
    ):  # fmt: skip
        r = subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", *args, "--key-file", str(key)],
            stdout=None if fd == 1 else subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
            timeout=120, preexec_fn=_closed(fd),
        )  # fmt: skip
        assert r.returncode == 2 and what in r.stderr, (args, r.returncode, r.stderr)
    assert not (tmp_path / "y.env").exists() and not (tmp_path / "z.env").exists()
    # a command that always prints data is refused before it acts: `keys create >&-` made
    # the key, then said nothing was done (diff review)
    r = subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", "keys", "create"],
        stdout=None, stderr=subprocess.PIPE, env={**ENV, "ENVELOPE_HOME": str(home / "keys")},
        timeout=120, preexec_fn=_closed(1),
    )  # fmt: skip
    assert r.returncode == 2 and b"standard output is closed" in r.stderr, r.stderr
    assert not (home / "keys").exists()


def test_a_new_output_s_mode_follows_the_umask_without_setting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new output's mode is 0666 less the umask. Asking for the umask meant setting it to 0
    for a moment, when a file any other thread created got mode 0666 (review): it is read
    where Linux shows it, and never set."""
    from envelope.atomic import write_bytes

    old = os.umask(0o027)
    try:
        calls: list[int] = []
        real = os.umask
        monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or real(m))
        write_bytes(tmp_path / "a", b"x", durable=False)
        monkeypatch.undo()
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640
        assert calls == []
    finally:
        os.umask(old)
