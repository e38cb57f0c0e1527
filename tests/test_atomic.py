"""Crash safety: a failure in the middle of a file operation leaves the target as it was."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from envelope import api, objects, sync
from envelope.errors import AuthenticationError
from envelope.keyring import Keyring

S = 4096
OPTS = api.Options(segment_size=S, batch_bytes=2 * S, workers=2)


class FailingReader(io.RawIOBase):
    """A source whose disk dies after `fail_after` bytes."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        self._data = data
        self._pos = 0
        self._fail_after = fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._fail_after:
            raise OSError(5, "Input/output error (injected)")
        n = min(len(b), len(self._data) - self._pos, self._fail_after - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".envelope-tmp"))


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("fail_after", [0, 1, S, 5 * S + 7])
def test_failed_encryption_leaves_target_untouched(
    tmp_path: Path, keyring: Keyring, existing: bool, fail_after: int
) -> None:
    target = tmp_path / "out.env"
    if existing:
        target.write_bytes(b"previous content")
    data = os.urandom(10 * S)
    with pytest.raises(OSError, match="injected"):
        sync.encrypt(FailingReader(data, fail_after), target, keyring=keyring, options=OPTS)
    assert leftovers(tmp_path) == []
    if existing:
        assert target.read_bytes() == b"previous content"
    else:
        assert not target.exists()


@pytest.mark.parametrize("damaged_segment", [0, 3, 9])
def test_failed_decryption_releases_nothing_under_the_final_name(
    tmp_path: Path, keyring: Keyring, damaged_segment: int
) -> None:
    data = os.urandom(10 * S)
    ct = bytearray(sync.encrypt_bytes(data, keyring=keyring, options=OPTS))
    header_len = objects.parse_object_header(memoryview(ct)).header_len
    ct[header_len + damaged_segment * (S + 16) + 5] ^= 0x40
    src = tmp_path / "in.env"
    src.write_bytes(ct)
    target = tmp_path / "plain.bin"
    target.write_bytes(b"old plaintext")
    with pytest.raises(AuthenticationError):
        sync.decrypt(src, target, keyring=keyring, options=OPTS)
    assert target.read_bytes() == b"old plaintext"
    assert leftovers(tmp_path) == []


@pytest.mark.anyio
async def test_cancellation_mid_write_leaves_nothing(
    anyio_backend: str, tmp_path: Path, keyring: Keyring
) -> None:
    async def slow_source():  # type: ignore[no-untyped-def]
        for _ in range(1000):
            yield os.urandom(S)
            await anyio.sleep(0.001)

    target = tmp_path / "out.env"
    with anyio.move_on_after(0.05) as scope:
        await api.encrypt(slow_source(), target, keyring=keyring, options=OPTS)
    assert scope.cancelled_caught
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_sigkill_never_exposes_a_partial_target(tmp_path: Path) -> None:
    """A process killed mid-write leaves at most a temp file, never the final name."""
    key = tmp_path / "k.key"
    subprocess.run([sys.executable, "-m", "envelope.cli.main", "keygen", str(key)], check=True)
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    target = tmp_path / "big.env"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "envelope.cli.main",
            "encrypt",
            str(src),
            str(target),
            "--key-file",
            str(key),
            "--workers",
            "1",
        ],
    )
    deadline = time.monotonic() + 30
    while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == -signal.SIGKILL:
        assert not target.exists()
    else:  # it finished before the kill landed: then the output must be whole
        assert target.stat().st_size > 64 << 20


@pytest.mark.parametrize("name", ["n" * 240, "é" * 127, "x" * 255])
def test_a_long_legal_name_is_written(tmp_path: Path, name: str) -> None:
    """A target name of 229-255 bytes is legal, but its temporary (27 bytes longer) was not:
    the write failed with "File name too long" naming the folder (review). The temporary's
    stem is cut to fit; a killed run's temporaries of such a target are still found."""
    from envelope.atomic import OutputFile, is_temporary, remove_stale_temporaries, temporary_name

    target = tmp_path / name
    out = OutputFile(str(target), durable=False)
    try:
        out.write(memoryview(b"data"))
        out.commit()
    finally:
        out.discard()
    assert target.read_bytes() == b"data"
    assert leftovers(tmp_path) == []
    stale = Path(temporary_name(str(target)))
    assert len(stale.name.encode()) <= 255 and is_temporary(stale.name)
    stale.write_bytes(b"left by a killed run")
    assert remove_stale_temporaries(str(target)) == 1
    assert leftovers(tmp_path) == []


def test_regular_only_refuses_a_fifo_and_writes_nothing_through_it(tmp_path: Path) -> None:
    """The lake jobs' writer: a FIFO (socket, device) where an object goes is refused before
    anything is opened (the check before it can be raced by someone planting one)."""
    from envelope.atomic import OutputFile, write_bytes
    from envelope.errors import UnsafePathError

    fifo = tmp_path / "obj"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(UnsafePathError, match="not a regular file"):
            OutputFile(fifo, regular_only=True)
        with pytest.raises(UnsafePathError, match="not a regular file"):
            write_bytes(fifo, b"plaintext", durable=False, regular_only=True)
        assert os.read(reader, 100) == b""
    finally:
        os.close(reader)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obj"]  # no temporary left


def test_an_empty_output_path_is_named_as_such() -> None:
    """`encrypt in.csv ""` said "cannot write '': it is a folder" (review)."""
    from envelope.atomic import resolve_output
    from envelope.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="the output path is empty"):
        resolve_output("")


def test_a_replaced_file_keeps_its_owner_where_allowed(tmp_path: Path) -> None:
    """A lake rewrap run as root gave every object it replaced to root, so the group that
    read it could no longer (review): a replaced file keeps its owner and group where this
    process may set them, and is this process's where it may not (no error either way)."""
    from envelope.atomic import write_bytes

    target = tmp_path / "obj"
    target.write_bytes(b"old")
    target.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(target, 65534, 65534)
        owner = (65534, 65534)
    else:  # not root: the owner cannot be given away; the file is ours, as before
        owner = (os.geteuid(), os.getegid())
    write_bytes(str(target), b"new", durable=False)
    st = target.stat()
    assert target.read_bytes() == b"new" and (st.st_uid, st.st_gid) == owner
    assert st.st_mode & 0o777 == 0o640
