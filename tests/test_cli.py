"""The command line, run as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "ENVELOPE_HOME": "/nonexistent-envelope-home-for-tests"}


def envelope(
    *args: str, input: bytes | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = dict(ENV)
    if home is not None:
        env["ENVELOPE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "envelope.cli.main", *args],
        input=input,
        capture_output=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def key(tmp_path: Path) -> Path:
    k = tmp_path / "k.key"
    r = envelope("keygen", str(k))
    assert r.returncode == 0, r.stderr
    assert (k.stat().st_mode & 0o777) == 0o600
    return k


def test_file_round_trip_with_json_summary(tmp_path: Path, key: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 << 20) + b"tail")
    enc, back = tmp_path / "out.env", tmp_path / "back.bin"
    r = envelope(
        "encrypt",
        str(src),
        str(enc),
        "--key-file",
        str(key),
        "--json",
        "--context",
        "path=in.bin",
        "--segment-size",
        "65536",
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["plaintext_len"] == src.stat().st_size
    assert info["ciphertext_len"] == enc.stat().st_size
    assert info["object_context"] == {"path": "in.bin"}
    assert info["wrapped_keys"][0]["provider_id"] == "file"
    assert "plaintext" not in r.stdout.decode().lower().replace("plaintext_len", "")
    r = envelope(
        "decrypt", str(enc), str(back), "--key-file", str(key), "--expect-context", "path=in.bin"
    )
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()


def test_stdin_to_stdout(key: Path) -> None:
    data = os.urandom(100_000)
    enc = envelope("encrypt", "-", "-", "--key-file", str(key), input=data)
    assert enc.returncode == 0, enc.stderr
    dec = envelope("decrypt", "-", "-", "--key-file", str(key), input=enc.stdout)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == data


def test_errors_have_exit_codes_and_leave_no_output(tmp_path: Path, key: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"secret data " * 1000)
    enc = tmp_path / "out.env"
    assert envelope("encrypt", str(src), str(enc), "--key-file", str(key)).returncode == 0

    other = tmp_path / "other.key"
    assert envelope("keygen", str(other)).returncode == 0
    back = tmp_path / "back.bin"
    r = envelope("decrypt", str(enc), str(back), "--key-file", str(other))
    assert r.returncode == 3 and b"NoBackendError" in r.stderr and not back.exists()

    r = envelope(
        "decrypt", str(enc), str(back), "--key-file", str(key), "--expect-context", "path=elsewhere"
    )
    assert r.returncode == 4 and not back.exists()

    damaged = bytearray(enc.read_bytes())
    damaged[-20] ^= 1
    enc.write_bytes(bytes(damaged))
    r = envelope("decrypt", str(enc), str(back), "--key-file", str(key))
    assert r.returncode == 1 and b"AuthenticationError" in r.stderr and not back.exists()
    assert b"secret" not in r.stderr

    r = envelope("encrypt", str(src), str(enc), "--key-file", str(key), "--segment-size", "1000")
    assert r.returncode == 2
    r = envelope("keygen", str(key))
    assert r.returncode == 2 and b"refusing to overwrite" in r.stderr
    r = envelope("encrypt", str(tmp_path / "missing"), str(enc), "--key-file", str(key))
    assert r.returncode == 2


def test_demo_runs_end_to_end() -> None:
    r = envelope("demo", "--size-mib", "8", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert envelope("demo", "--size-mib", "1", "--query", "verified", "--output", "text").stdout \
        == b"True\n"
    assert out["round_trip_identical"] and out["verified"] and out["tamper_detected"]
    assert out["column_ok"] and out["column_bytes_read_pct"] < 60
    assert out["kms_calls"] <= 3 < out["objects"] and out["kms_audit_log_verified"]


def test_the_demo_keeps_its_hands_off_what_is_not_its_own(tmp_path: Path) -> None:
    """`demo --keep DIR` removed DIR's lake/, encrypted/, restored/ and tampered/ folders
    whoever made them, and `demo --home H` re-pointed H's own alias/demo at its throwaway key
    (review). A folder the demo did not make is refused, and the alias is left alone."""
    work = tmp_path / "project"
    (work / "lake").mkdir(parents=True)
    (work / "lake" / "important.txt").write_text("precious")
    r = envelope("demo", "--keep", str(work), "--size-mib", "1")
    assert r.returncode == 2 and b"not made by envelope demo" in r.stderr, r.stderr
    assert (work / "lake" / "important.txt").read_text() == "precious"
    fresh = tmp_path / "fresh"
    for _ in range(2):  # its own folder it may replace
        assert envelope("demo", "--keep", str(fresh), "--size-mib", "1").returncode == 0
    home = tmp_path / "home"
    mine = json.loads(envelope("keys", "create", "--json", home=home).stdout)["KeyMetadata"]
    r = envelope("keys", "alias", "create", "alias/demo", mine["KeyId"], home=home)
    assert r.returncode == 0, r.stderr
    r = envelope("demo", "--home", str(home), "--size-mib", "1", "--json")
    assert r.returncode == 0, r.stderr
    r = envelope("keys", "describe", "alias/demo", "--json", home=home)
    assert json.loads(r.stdout)["KeyMetadata"]["KeyId"] == mine["KeyId"]


def test_counts_must_be_positive(tmp_path: Path) -> None:
    """`demo --size-mib 0` made no sample, failed on an internal path and left its store's
    digest folder behind in the temporary folder; `audit tail -n -1` printed every record."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    for cmd in (("demo", "--size-mib", "0"), ("demo", "--size-mib", "-5"),
                ("audit", "tail", "-n", "-1"), ("audit", "tail", "-n", "0")):
        r = subprocess.run([sys.executable, "-m", "envelope.cli.main", *cmd],
                           capture_output=True, env={**ENV, "TMPDIR": str(tmp),
                           "ENVELOPE_HOME": str(tmp_path / "home")}, timeout=120)
        assert r.returncode == 2 and b"is not a positive whole number" in r.stderr, r.stderr
    assert list(tmp.iterdir()) == [] and not (tmp_path / "home").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_port_serves_prometheus_text_while_running(key: Path) -> None:
    """Feed stdin slowly, scrape mid-job: bytes and segment counters are already moving."""
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "envelope.cli.main",
            "encrypt",
            "-",
            "-",
            "--key-file",
            str(key),
            "--segment-size",
            "4096",
            "--metrics-port",
            str(port),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(os.urandom(64 << 20))  # 16 batches of 4 MiB go through meanwhile
        proc.stdin.flush()
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
                if "envelope_segments_total" in body and 'direction="encrypt"' in body:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        assert "# TYPE envelope_" in body, body[:500]
        assert 'envelope_objects_in_flight{direction="encrypt"} 1.0' in body
    finally:
        _, err = proc.communicate(timeout=60)  # closes stdin: end of input
    assert proc.returncode == 0, err


def test_a_metrics_port_that_cannot_be_used_is_a_usage_error(tmp_path: Path, key: Path) -> None:
    """Out of range, or taken by another listener: exit 2 with a message naming the flag,
    before anything is written (it was a traceback and exit 1, or 'I/O error: Address already
    in use' with no word of which address)."""
    import socket

    (tmp_path / "tree").mkdir()
    src = tmp_path / "tree" / "in.txt"
    src.write_bytes(b"x" * 100)
    for port in ("99999", "0", "-1", "http"):
        r = envelope("encrypt", str(src), str(tmp_path / "o.env"), "--key-file", str(key),
                     "--metrics-port", port)
        assert r.returncode == 2 and b"Traceback" not in r.stderr, r.stderr
        assert b"is not a port number" in r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for cmd in (("encrypt", str(src), str(tmp_path / "o.env")),
                    ("lake", "encrypt", str(tmp_path / "tree"), str(tmp_path / "lake"))):
            r = envelope(*cmd, "--key-file", str(key), "--metrics-port", port)
            assert r.returncode == 2, r.stderr
            assert f"--metrics-port {port}: cannot listen".encode() in r.stderr, r.stderr
    assert not (tmp_path / "o.env").exists() and not (tmp_path / "lake").exists()


def test_dash_is_stdout_never_a_folder_or_a_key_file(tmp_path: Path, key: Path) -> None:
    """`-` means stdout everywhere; where stdout cannot be the target (a folder's many
    objects, a key file) it is refused, not taken as a file or folder called `-`."""
    src = tmp_path / "tree"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 10)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for cmd in (
        ("encrypt", str(src), "-", "--key-file", str(key)),
        ("lake", "encrypt", str(src), "-", "--key-file", str(key), "--no-progress"),
        ("keygen", "-"),
    ):
        r = subprocess.run([sys.executable, "-m", "envelope.cli.main", *cmd], cwd=cwd,
                           capture_output=True, env=ENV, timeout=120)
        assert r.returncode == 2 and b"stdout" in r.stderr, (cmd, r.stderr)
    assert list(cwd.iterdir()) == []


def test_a_context_key_given_twice_with_different_values_is_refused(
    tmp_path: Path, key: Path
) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"x")
    r = envelope("encrypt", str(src), str(tmp_path / "o.env"), "--key-file", str(key),
                 "--context", "k=v", "--context", "k=w")
    assert r.returncode == 2 and b"gives 'k' twice: 'v' and 'w'" in r.stderr, r.stderr
    assert not (tmp_path / "o.env").exists()
    r = envelope("encrypt", str(src), str(tmp_path / "o.env"), "--key-file", str(key),
                 "--context", "k=v", "--context", "k=v", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["object_context"] == {"k": "v"}


def test_lake_decrypt_and_verify_take_expect_context_as_decrypt_does(
    tmp_path: Path, key: Path
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"a" * 100)
    enc = str(tmp_path / "enc")
    r = envelope("lake", "encrypt", str(tmp_path / "src"), enc, "--key-file", str(key),
                 "--context", "team=x", "--no-progress")
    assert r.returncode == 0, r.stderr
    for flag in ("--expect-context", "--context"):
        r = envelope("lake", "verify", enc, "--key-file", str(key), flag, "team=y",
                     "--no-progress")
        assert r.returncode == 1 and b"ContextMismatchError" in r.stdout, r.stdout + r.stderr
        r = envelope("lake", "decrypt", enc, str(tmp_path / f"out{flag}"), "--key-file",
                     str(key), flag, "team=x", "--no-progress")
        assert r.returncode == 0, r.stderr
    r = envelope("lake", "encrypt", str(tmp_path / "src"), str(tmp_path / "e2"), "--key-file",
                 str(key), "--expect-context", "team=x", "--no-progress")
    assert r.returncode == 2  # a pair to bind is --context; expecting is for reading


def test_an_unknown_option_is_reported_by_its_command() -> None:
    """With the command's own usage, not the top level's `usage: envelope ... COMMAND ...`."""
    for cmd, prog in ((("lake", "verify", "x", "--bogus"), b"envelope lake verify: error"),
                      (("keys", "list", "--bogus"), b"envelope keys list: error"),
                      (("encrypt", "a", "b", "--bogus", "1"), b"envelope encrypt: error")):
        r = envelope(*cmd)
        assert r.returncode == 2, r.stderr
        assert prog + b": unrecognized arguments: " in r.stderr, r.stderr
        assert b"COMMAND ..." not in r.stderr


def test_a_home_that_is_a_file_is_named(tmp_path: Path) -> None:
    """It was `I/O error: File exists` (exit 5), which names no option."""
    (tmp_path / "f").write_bytes(b"x")
    for cmd in (("encrypt", str(tmp_path / "f"), str(tmp_path / "o.env")),
                ("keys", "create")):
        r = envelope(*cmd, "--home", str(tmp_path / "f"))
        assert r.returncode == 2 and b"is not a folder" in r.stderr, r.stderr
    assert not (tmp_path / "o.env").exists()


def test_keygen_names_what_is_wrong_with_the_path(tmp_path: Path) -> None:
    r = envelope("keygen", str(tmp_path / "no" / "k.key"))
    assert r.returncode == 2 and b"no folder" in r.stderr, r.stderr
    r = envelope("keygen", str(tmp_path))
    assert r.returncode == 2 and b"is a folder" in r.stderr, r.stderr
    (tmp_path / "k.key").write_bytes(b"keep")
    r = envelope("keygen", str(tmp_path / "k.key"))
    assert r.returncode == 2 and b"refusing to overwrite" in r.stderr, r.stderr
    assert (tmp_path / "k.key").read_bytes() == b"keep"


def test_a_key_file_that_cannot_be_written_whole_is_removed(tmp_path: Path) -> None:
    """A file-size limit (as a full disk would) stops the write part-way: nothing is left
    under the key file's name."""
    code = (
        "import resource, signal, sys\n"
        "from envelope.kms.filekey import generate_key_file\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))\n"
        "try:\n"
        "    generate_key_file(sys.argv[1])\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    target = tmp_path / "k.key"
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                       text=True, env=ENV, timeout=60)
    assert r.stdout.strip() == "27", r.stdout + r.stderr  # EFBIG
    assert not target.exists()


def test_embedded_kms_main_job(tmp_path: Path) -> None:
    """The issue's flow: a key and an alias in $ENVELOPE_HOME, encrypt under the alias,
    decrypt with no key argument, the default key when none is given, audit verify."""
    home = tmp_path / "home"
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(2_000_000))
    r = envelope("keys", "create", "--description", "demo", "--json", home=home)
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)["KeyMetadata"]
    assert meta["Arn"].endswith(meta["KeyId"])
    assert (
        envelope("keys", "alias", "create", "alias/demo", meta["KeyId"], home=home).returncode == 0
    )
    enc, back = tmp_path / "out.env", tmp_path / "back.bin"
    r = envelope("encrypt", str(src), str(enc), "--key", "alias/demo", "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["wrapped_keys"][0]["key_id"] == meta["Arn"]
    r = envelope("decrypt", str(enc), str(back), home=home)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()
    r = envelope("encrypt", str(src), str(enc), "--json", home=home)  # default managed key
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["wrapped_keys"][0]["provider_id"] == "local"
    assert envelope("decrypt", str(enc), str(back), home=home).returncode == 0
    assert back.read_bytes() == src.read_bytes()
    r = envelope("audit", "verify", home=home)
    assert r.returncode == 0, r.stderr
    # a disabled key refuses (exit 3, the AWS error named) and leaves no output
    assert envelope("keys", "disable", meta["KeyId"], home=home).returncode == 0
    enc2 = tmp_path / "demo.env"
    r = envelope("encrypt", str(src), str(enc2), "--key", "alias/demo", home=home)
    assert r.returncode == 3 and b"DisabledException" in r.stderr and not enc2.exists()


def test_decrypt_with_a_key_uses_only_that_key(tmp_path: Path) -> None:
    """`decrypt --key` names the key to unwrap with, as Decrypt's KeyId does in AWS KMS: a
    data key wrapped under another key is IncorrectKeyException, a key that does not exist is
    NotFoundException (both exit 3, no output). It chose only the backend: any key of the
    embedded KMS decrypted, a key that did not exist went unnoticed (review)."""
    home = tmp_path / "home"
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(5000))
    for alias in ("alias/a", "alias/b"):
        r = envelope("keys", "create", "--json", home=home)
        kid = json.loads(r.stdout)["KeyMetadata"]["KeyId"]
        assert envelope("keys", "alias", "create", alias, kid, home=home).returncode == 0
    enc, back = tmp_path / "a.env", tmp_path / "back.bin"
    assert envelope("encrypt", str(src), str(enc), "--key", "alias/a", home=home).returncode == 0
    for key, code in (("local:alias/b", b"IncorrectKeyException"), ("alias/nope", b"NotFound")):
        r = envelope("decrypt", str(enc), str(back), "--key", key, home=home)
        assert r.returncode == 3 and code in r.stderr, r.stderr
        assert not back.exists()
    r = envelope("decrypt", str(enc), str(back), "--key", "local:alias/a", home=home)
    assert r.returncode == 0 and back.read_bytes() == src.read_bytes(), r.stderr
    back.unlink()
    assert envelope("decrypt", str(enc), str(back), home=home).returncode == 0  # the header's


def test_encrypt_and_decrypt_a_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "in"
    (src / "a" / "b").mkdir(parents=True)
    files = {"a/b/x.bin": os.urandom(300_000), "y.csv": b"id,v\n1,2\n", "a/empty": b""}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    r = envelope("encrypt", str(src), str(tmp_path / "enc"), "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["done"] == len(files)
    r = envelope("decrypt", str(tmp_path / "enc"), str(tmp_path / "back"), home=home)
    assert r.returncode == 0, r.stderr
    for rel, data in files.items():
        assert (tmp_path / "back" / rel).read_bytes() == data


def test_encrypt_starts_no_kms_in_a_mistyped_home(tmp_path: Path) -> None:
    """`envelope encrypt p o --home TYPO` made the folders, a store and a root key, then
    failed on the named key (leaving them behind), or, with the default key, quietly sealed
    under a new KMS that only the stray home could open. A named key needs a store that
    exists; the default key a --home folder that exists (review)."""
    src = tmp_path / "p"
    src.write_bytes(b"hello")
    out = str(tmp_path / "o")
    typo = tmp_path / "typo"
    r = envelope("encrypt", str(src), out, "--home", str(typo / "deeper"), "--key", "alias/etl")
    assert r.returncode == 2 and b"no embedded KMS store" in r.stderr, r.stderr
    r = envelope("encrypt", str(src), out, "--home", str(typo))
    assert r.returncode == 2 and b"no KMS home folder" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    (tmp_path / "made").mkdir()  # a folder made on purpose starts a KMS
    r = envelope("encrypt", str(src), out, "--home", str(tmp_path / "made"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "made" / "kms.sqlite3").exists()


def test_audit_help_does_not_offer_as_which_it_refuses(tmp_path: Path) -> None:
    """The audit commands read the log as its administrator: their help listed --as, which
    they then refused (review). Not listed; still refused with the reason."""
    for command in ("verify", "tail", "seal"):
        r = envelope("audit", command, "--help")
        assert r.returncode == 0 and b"--as" not in r.stdout, command
    r = envelope("audit", "verify", "--as", "arn:aws:iam::000000000000:root", home=tmp_path)
    assert r.returncode == 2 and b"does not apply to audit" in r.stderr
    assert b"--as ARN" in envelope("keys", "list", "--help").stdout


def test_the_first_encrypt_says_it_started_a_kms_and_where_its_root_key_is(
    tmp_path: Path,
) -> None:
    """It made a root key, the only way to open what it sealed, without a word (review)."""
    home = tmp_path / "home"
    src = tmp_path / "in.csv"
    src.write_bytes(b"rows")
    r = envelope("encrypt", str(src), str(tmp_path / "a.env"), home=home)
    assert r.returncode == 0 and b"started a new embedded KMS" in r.stderr, r.stderr
    assert str(home / "root.key").encode() in r.stderr
    r = envelope("encrypt", str(src), str(tmp_path / "b.env"), home=home)
    assert r.returncode == 0 and b"started a new embedded KMS" not in r.stderr


def test_a_folder_run_over_finished_outputs_says_it_left_them(tmp_path: Path, key: Path) -> None:
    """A second `encrypt DIR OUT` (under another key, say) skipped every object without a
    word (review): it says how many it left, and how to redo them."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.csv").write_bytes(b"a")
    r = envelope("encrypt", str(src), str(out), "--key-file", str(key))
    assert r.returncode == 0 and b"already done" not in r.stderr, r.stderr
    r = envelope("encrypt", str(src), str(out), "--key-file", str(key))
    assert r.returncode == 0 and b"1 object already done" in r.stderr, r.stderr
    assert b"--no-resume" in r.stderr


def test_a_refused_path_starts_no_kms(tmp_path: Path) -> None:
    """A missing input, or an output that is the input, was refused only after the embedded
    KMS had been started (a store and a root key made, and announced; review)."""
    home = tmp_path / "home"
    src = tmp_path / "in.csv"
    src.write_bytes(b"rows")
    for args in (
        ("encrypt", str(tmp_path / "missing.csv"), str(tmp_path / "o.env")),
        ("encrypt", str(src), str(src)),
        ("decrypt", str(src), str(src)),
    ):
        r = envelope(*args, home=home)
        assert r.returncode == 2 and b"started a new embedded KMS" not in r.stderr, r.stderr
        assert not home.exists(), args
    assert src.read_bytes() == b"rows"


def test_a_region_no_key_can_be_in_is_refused_before_a_store_is_made(tmp_path: Path) -> None:
    """A typo (us-eest-1) made keys in a Region no one looks in, and `serve --region bogus`
    printed a traceback and left a new store behind (review). A Region this store already
    holds keys in (an earlier release let them in) still opens."""
    home = tmp_path / "home"
    r = envelope("keys", "create", "--region", "us-eest-1", home=home)
    assert r.returncode == 2 and b"not an AWS Region" in r.stderr and not home.exists()
    r = envelope("serve", "--port", "0", "--region", "bogus", home=home)
    assert r.returncode == 2 and b"Traceback" not in r.stderr and not home.exists(), r.stderr
    assert envelope("keys", "create", "--region", "eu-west-3", home=home).returncode == 0
    from envelope.service import open_service

    with open_service(home) as svc:
        svc.for_region("eu-mars-1").create_key()
    r = envelope("keys", "list", "--region", "eu-mars-1", "--json", home=home)
    assert r.returncode == 0 and len(json.loads(r.stdout)["Keys"]) == 1, r.stderr


def test_the_region_check_reads_a_store_whose_path_has_uri_characters(tmp_path: Path) -> None:
    """The check opens the store read-only through an SQLite URI: a "?" or "#" in its path
    was read as the URI's own, so a stray empty database was made at the cut-off path and
    the Region was let through (diff review)."""
    import pytest

    from envelope.service import open_service
    from envelope.service.errors import StoreError

    home = tmp_path / "we?ird#home"
    with open_service(home) as svc:
        svc.for_region("eu-mars-1").create_key()
    with open_service(home, region="eu-mars-1") as svc:  # a Region it holds keys in
        assert svc.region == "eu-mars-1"
    with pytest.raises(StoreError, match="not an AWS Region"):
        open_service(home, region="eu-venus-1")
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == ["we?ird#home", "we?ird#home.audit-digests"]


def test_the_region_check_loads_botocore_only_for_a_region_it_cannot_place(
    tmp_path: Path,
) -> None:
    """botocore's Region list takes a third of a second to load, and every command of the
    embedded KMS loaded it (diff review): the default Region and one the store holds keys in
    are taken without it."""
    probe = (
        "import sys; from envelope.service import open_service as o; "
        "o(sys.argv[1], region=sys.argv[2]).close(); print('botocore' in sys.modules)"
    )
    home = str(tmp_path / "home")

    def loads_botocore(region: str) -> bool:
        r = subprocess.run(
            [sys.executable, "-c", probe, home, region], capture_output=True, text=True,
            env=ENV, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout.strip() == "True"

    assert not loads_botocore("us-east-1")
    assert loads_botocore("eu-west-3")  # a new Region for this store: checked against AWS's
    from envelope.service import open_service

    with open_service(home, region="eu-west-3") as svc:
        svc.create_key()
    assert not loads_botocore("eu-west-3")  # now it holds keys there


def test_keys_list_brief_leaves_the_details_out(tmp_path: Path) -> None:
    """`keys list --brief` printed every detail as null (None columns in text) where
    docs/cli.md says it leaves them out (review)."""
    home = tmp_path / "home"
    assert envelope("keys", "create", "--description", "d", home=home).returncode == 0
    full = json.loads(envelope("keys", "list", "--json", home=home).stdout)["Keys"][0]
    brief = json.loads(envelope("keys", "list", "--brief", "--json", home=home).stdout)["Keys"][0]
    assert full["Description"] == "d" and "KeyState" in full
    assert set(brief) == {"KeyId", "KeyArn", "Aliases"}, brief
