"""A key file alone is enough: the CLI never opens the embedded KMS for it (issue 8, #11)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envelope.errors import ConfigurationError


def envelope(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args],
        capture_output=True,
        env={**os.environ, "ENVELOPE_HOME": str(home)},
        timeout=120,
    )


def snapshot(home: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(home)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(home.rglob("*"))
        if p.is_file()
    }


def test_key_file_commands_leave_the_embedded_kms_untouched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(100_000))
    r = envelope(home, "encrypt", str(src), str(tmp_path / "managed.env"))  # makes a real store
    assert r.returncode == 0, r.stderr
    before = snapshot(home)
    assert any(name.endswith("sqlite3") for name in before)
    key = tmp_path / "k.key"
    assert envelope(home, "keygen", str(key)).returncode == 0
    enc, back = tmp_path / "f.env", tmp_path / "back.bin"
    r = envelope(home, "encrypt", str(src), str(enc), "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    r = envelope(home, "decrypt", str(enc), str(back), "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()
    # an object sealed by the embedded KMS is not opened behind the user's back
    r = envelope(home, "decrypt", str(tmp_path / "managed.env"), "-", "--key-file", str(key))
    assert r.returncode != 0 and r.stdout == b""
    assert b"local" in r.stderr  # it says which key the object needs
    assert snapshot(home) == before


def test_key_file_decrypt_works_beside_a_broken_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "kms.sqlite3").write_bytes(b"not a database")
    key = tmp_path / "k.key"
    assert envelope(home, "keygen", str(key)).returncode == 0
    src = tmp_path / "in.bin"
    src.write_bytes(b"hello")
    enc = tmp_path / "f.env"
    assert envelope(home, "encrypt", str(src), str(enc), "--key-file", str(key)).returncode == 0
    r = envelope(home, "decrypt", str(enc), "-", "--key-file", str(key))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello"


def test_a_key_file_path_the_os_refuses_is_a_configuration_error(tmp_path: Path) -> None:
    """(A NUL in the path, as a config file can write it: it was open()'s ValueError.)"""
    import pytest

    from envelope.errors import ConfigurationError
    from envelope.kms.filekey import FileKeyBackend

    for path in (str(tmp_path / "k\x00.key"), str(tmp_path / "missing.key")):
        with pytest.raises(ConfigurationError, match="cannot read key file"):
            FileKeyBackend(path)
    with pytest.raises(ConfigurationError, match="not a regular file"):  # a folder
        FileKeyBackend(str(tmp_path))


def test_decrypting_without_the_key_file_says_to_pass_it(tmp_path: Path) -> None:
    """The header names a key file's key id: without `--key-file` the refusal says so, both
    when there is no embedded KMS at all and when there is one that cannot help."""
    key = tmp_path / "k.key"
    assert envelope(tmp_path / "home", "keygen", str(key)).returncode == 0
    (tmp_path / "p").write_bytes(b"x" * 10)
    enc = tmp_path / "p.env"
    assert envelope(tmp_path / "home", "encrypt", str(tmp_path / "p"), str(enc), "--key-file",
                    str(key)).returncode == 0
    r = envelope(tmp_path / "none", "decrypt", str(enc), str(tmp_path / "o"))
    assert r.returncode == 2 and b"--key-file PATH" in r.stderr, r.stderr
    assert envelope(tmp_path / "kms", "keys", "create").returncode == 0
    r = envelope(tmp_path / "kms", "decrypt", str(enc), str(tmp_path / "o"))
    assert r.returncode == 3 and b"NoBackendError" in r.stderr, r.stderr
    assert b"a file: key is a key file: pass it (--key-file PATH" in r.stderr
    assert not (tmp_path / "o").exists()
    # another key file: told it is the wrong one, not to pass a key file (review)
    other = tmp_path / "other.key"
    assert envelope(tmp_path / "home", "keygen", str(other)).returncode == 0
    r = envelope(tmp_path / "none", "decrypt", str(enc), str(tmp_path / "o"), "--key-file",
                 str(other))
    assert r.returncode == 3 and b"is not the key this object was sealed with" in r.stderr
    assert b"pass it" not in r.stderr and not (tmp_path / "o").exists()


def test_a_keyring_naming_a_key_the_file_does_not_hold_says_so(tmp_path: Path) -> None:
    """Encrypting under a key id the key file does not hold names the file's own key; it
    used to say a data key "was wrapped under" the wrong id, though nothing was wrapped."""
    from envelope import sync
    from envelope.errors import KmsKeyError
    from envelope.keyring import Keyring
    from envelope.kms.filekey import FileKeyBackend, generate_key_file

    key = tmp_path / "k.key"
    generate_key_file(str(key))
    backend = FileKeyBackend(str(key))
    with pytest.raises(KmsKeyError, match=r"holds key .* not 'alias/etl'.*backend\.key_id"):
        sync.encrypt_bytes(b"x", keyring=Keyring(backend, "alias/etl"))


def test_a_key_file_others_may_read_is_warned_about_and_binary_is_not_a_key_file(
    tmp_path: Path,
) -> None:
    """The embedded KMS's root-key file is warned about when group or others may read it; a
    key file was not, though it unwraps everything sealed under it. A binary file given as
    a key file said 'UnicodeDecodeError' (review)."""
    import warnings

    from envelope.kms.filekey import FileKeyBackend, InsecureKeyFileWarning, generate_key_file

    key = tmp_path / "k.key"
    generate_key_file(key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FileKeyBackend(key)  # 0600: no warning
    key.chmod(0o644)
    with pytest.warns(InsecureKeyFileWarning, match="chmod 600"):
        FileKeyBackend(key)
    binary = tmp_path / "b.key"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigurationError, match="is not an envelope key file"):
        FileKeyBackend(binary)


def test_a_key_file_that_is_no_regular_file_or_too_long_is_refused_at_once(
    tmp_path: Path,
) -> None:
    """A FIFO given as the key file hung the command; a device such as /dev/zero (here a
    private copy) or a huge file was read until memory ran out (review). The key file is
    opened without blocking, must be a regular file, and is read up to a bound."""
    from envelope.kms.filekey import FileKeyBackend

    fifo, zero, huge = tmp_path / "fifo", tmp_path / "zero", tmp_path / "huge.key"
    os.mkfifo(fifo)
    huge.write_bytes(b"x")
    os.truncate(huge, 1 << 30)  # sparse: no disk
    cases: list[tuple[Path, str]] = [(fifo, "not a regular file"), (huge, "not an envelope key")]
    if os.geteuid() == 0:
        os.mknod(zero, 0o600 | 0o020000, os.makedev(1, 5))  # a character device, as /dev/zero
        cases.append((zero, "not a regular file"))
    # first in a process of its own, with a timeout: the FIFO made the old code block
    plain = tmp_path / "p"
    plain.write_bytes(b"rows")
    r = envelope(tmp_path / "home", "encrypt", str(plain), str(tmp_path / "o"),
                 "--key-file", str(fifo))  # fmt: skip
    assert r.returncode == 2 and b"not a regular file" in r.stderr, r.stderr
    for path, said in cases:
        with pytest.raises(ConfigurationError, match=said):
            FileKeyBackend(path)
