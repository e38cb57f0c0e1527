"""The same file encrypted and decrypted, file to file, by envelope and by every peer found.

Every tool runs as a whole process (start-up included, as a user would run it) under a small
launcher that times it and reads its peak RSS from `os.wait4`: the launcher, not this
process, is the parent, because a child's ru_maxrss starts at its parent's peak (Linux keeps
the high-water mark across fork and exec), so a fat parent would inflate every figure.
`rss_floor_mib` is what the launcher itself reports for `true`: no figure can be below it.

Each tool's round trip is byte-checked before it is timed (a tool that does not give the
input back is reported with `error` and not timed); then rounds interleave every tool (the
order turning each round), every output a new file, and the best and the median are kept.
Before each timed command the page cache's dirty pages are written back (`os.sync`, not
timed): otherwise the kernel's writeback of the earlier tools' outputs lands on whichever
tool runs when it starts (on a 2-core VM that doubled a 0.4 s run's system time), and a
short run such as `cp` or envelope suffers it most.
A peer that is not installed is listed with `skipped` and the command that installs it.
The Python peers (envelope, Tink, the AWS Encryption SDK) are also timed in this process
(`inproc_*_mbps`, same rounds): their library's own work, without interpreter start-up.

Peers: `envelope` (the CLI, `--no-fsync`, like every peer) and `envelope-fsync` (`--fsync`,
durable before the rename), Tink's streaming AEAD (`tink`, AES256_GCM_HKDF_1MB), the AWS
Encryption SDK for Python at its best settings and its defaults (`aws-encryption-sdk-best`,
`aws-encryption-sdk-default`; raw AES wrapping key, no KMS), `age` (X25519 recipient),
`openssl enc -aes-256-ctr` (a reference only: `openssl enc` has no AEAD, so nothing is
authenticated) and `cp`.
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import peer_tools
from .machine import cores, filesystem_type, write_file
from .timing import MIB, Progress, mbps, median, no_progress, ratio

__all__ = ("PEERS", "Peer", "measure", "run_timed", "startup")

#: Times one command and reports its peak RSS; run with `python -I -S` so that its own
#: footprint (the floor of every RSS figure) stays small. The tool's stdout is discarded, its
#: stderr kept for error messages. SIGTERM or SIGINT to the launcher kills the tool first, so
#: an interrupted benchmark leaves nothing running.
LAUNCHER = """
import json, os, signal, sys, time
argv = sys.argv[1:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
def stop(signum, frame):
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os._exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
_, status, ru = os.wait4(pid, 0)
dt = time.perf_counter() - t0
sys.stdout.write(json.dumps({"seconds": dt, "maxrss_kib": ru.ru_maxrss,
                             "status": os.waitstatus_to_exitcode(status)}))
"""

PY = sys.executable


@dataclass
class Peer:
    """One tool: how to tell it is there, make its key, encrypt and decrypt a file."""

    name: str
    setting: str
    install: str
    present: Callable[[], bool]
    keygen: Callable[[str], list[list[str]]]  # key path -> commands that make the key
    encrypt: Callable[[str, str, str], list[str]]  # (key, src, dst) -> command
    decrypt: Callable[[str, str, str], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    #: the `envelope.bench.peer_tools` tool that does the same in this process (Python peers)
    inproc: str | None = None


def _which(*tools: str) -> Callable[[], bool]:
    return lambda: all(shutil.which(t) for t in tools)


def _module(name: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(name) is not None


def _envelope(fsync: bool) -> Peer:
    flag = "--fsync" if fsync else "--no-fsync"
    cli = [PY, "-m", "envelope.cli.main"]
    return Peer(
        name="envelope-fsync" if fsync else "envelope",
        inproc="envelope-fsync" if fsync else "envelope",
        setting=f"envelope encrypt|decrypt {flag} --key-file (1 MiB segments, every core)",
        install="pip install envelope-kms",
        present=lambda: True,
        keygen=lambda key: [[*cli, "keygen", key]],
        encrypt=lambda key, src, dst: [*cli, "encrypt", src, dst, "--key-file", key, flag],
        decrypt=lambda key, src, dst: [*cli, "decrypt", src, dst, "--key-file", key, flag],
    )


def _python_peer(name: str, tool: str, module: str, setting: str, install: str) -> Peer:
    run = [PY, "-m", "envelope.bench.peer_tools", tool]
    return Peer(
        name=name,
        setting=setting,
        install=install,
        present=_module(module),
        inproc=tool,
        keygen=lambda key: [[*run, "keygen", key]],
        encrypt=lambda key, src, dst: [*run, "encrypt", key, src, dst],
        decrypt=lambda key, src, dst: [*run, "decrypt", key, src, dst],
    )


def _age_keygen(key: str) -> list[list[str]]:
    return [["age-keygen", "-o", key]]


def _age_encrypt(key: str, src: str, dst: str) -> list[str]:
    recipient = subprocess.run(
        ["age-keygen", "-y", key], check=True, capture_output=True, text=True
    ).stdout.strip()
    return ["age", "-r", recipient, "-o", dst, src]


def _openssl(decrypt: bool) -> Callable[[str, str, str], list[str]]:
    def command(key: str, src: str, dst: str) -> list[str]:
        with open(key) as f:
            k, iv = f.read().split()
        d = ["-d"] if decrypt else []
        return ["openssl", "enc", *d, "-aes-256-ctr", "-K", k, "-iv", iv, "-in", src, "-out", dst]

    return command


def _openssl_keygen(key: str) -> list[list[str]]:
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.urandom(32).hex()} {os.urandom(16).hex()}\n")
    return []


PEERS: tuple[Peer, ...] = (
    _envelope(fsync=False),
    _envelope(fsync=True),
    _python_peer(
        "tink",
        "tink",
        "tink",
        "streaming AEAD AES256_GCM_HKDF_1MB, 1 MiB reads",
        "pip install tink",
    ),
    _python_peer(
        "aws-encryption-sdk-best",
        "esdk-best",
        "aws_encryption_sdk",
        "AES_256_GCM_HKDF_SHA512_COMMIT_KEY (no signature), 1 MiB frames, raw AES key",
        "pip install aws-encryption-sdk",
    ),
    _python_peer(
        "aws-encryption-sdk-default",
        "esdk-default",
        "aws_encryption_sdk",
        "defaults: ..._COMMIT_KEY_ECDSA_P384 (signed), 4 KiB frames, raw AES key",
        "pip install aws-encryption-sdk",
    ),
    Peer(
        name="age",
        setting="age -r (X25519 recipient), 64 KiB ChaCha20-Poly1305 chunks",
        install="apt-get install age (or: brew install age; go install filippo.io/age/cmd/...)",
        present=_which("age", "age-keygen"),
        keygen=_age_keygen,
        encrypt=_age_encrypt,
        decrypt=lambda key, src, dst: ["age", "-d", "-i", key, "-o", dst, src],
    ),
    Peer(
        name="openssl",
        setting="openssl enc -aes-256-ctr (reference only: no authentication)",
        install="apt-get install openssl",
        present=_which("openssl"),
        keygen=_openssl_keygen,
        encrypt=_openssl(decrypt=False),
        decrypt=_openssl(decrypt=True),
    ),
    Peer(
        name="cp",
        setting="cp (no encryption: the floor of a file-to-file tool)",
        install="apt-get install coreutils",
        present=_which("cp"),
        keygen=lambda key: [],
        encrypt=lambda key, src, dst: ["cp", src, dst],
        decrypt=lambda key, src, dst: ["cp", src, dst],
    ),
)


class PeerError(RuntimeError):
    """A peer's command failed (its stderr is in the message)."""


def run_timed(command: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `command`, as measured by the launcher."""
    proc = subprocess.Popen(
        [PY, "-I", "-S", "-c", LAUNCHER, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:  # interrupted: the launcher kills the tool, then exits
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        raise PeerError(f"launcher failed: {shortened(err.strip())}")
    got = json.loads(out)
    if got["status"] != 0:
        raise PeerError(
            f"{os.path.basename(command[0])} exited {got['status']}: {shortened(err.strip())}"
        )
    return float(got["seconds"]), got["maxrss_kib"] / 1024


def _timed_round(
    peer: Peer,
    d: str,
    src: str,
    env: dict[str, str],
    in_process: bool,
    times: dict[str, list[tuple[float, float]]],
) -> None:
    """One round of `peer`: encrypt and decrypt as processes (and in process), timed."""
    key = os.path.join(d, f"{peer.name}.key")
    out = os.path.join(d, f"{peer.name}.out")
    sealed = os.path.join(d, f"{peer.name}.sealed")
    try:
        for op, command in (
            ("encrypt", peer.encrypt(key, src, out)),
            ("decrypt", peer.decrypt(key, sealed, out)),
        ):
            _unlink(out)  # a new file each time: replacing one costs an ext4 flush
            _settle()
            times.setdefault(f"{peer.name}/{op}", []).append(run_timed(command, env))
        _unlink(out)
        if in_process and peer.inproc is not None:
            for op, source in (("encrypt", src), ("decrypt", sealed)):
                _settle()
                t0 = time.perf_counter()
                peer_tools.run(peer.inproc, op, key, source, out)
                dt = time.perf_counter() - t0
                times.setdefault(f"{peer.name}/inproc_{op}", []).append((dt, 0.0))
                _unlink(out)
    finally:
        _unlink(out)


def _settle() -> None:
    """Write back every dirty page now, off the clock (see the module docstring)."""
    os.sync()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _skipped(peer: Peer, reason: str, error: str | None = None) -> dict[str, Any]:
    return {
        "name": peer.name,
        "skipped": True,
        "reason": reason,
        "install": peer.install if error is None else None,
        "error": error,
        "setting": peer.setting,
        "encrypt_mbps": None,
        "decrypt_mbps": None,
        "encrypt_median_mbps": None,
        "decrypt_median_mbps": None,
        "peak_rss_mib": None,
        "encrypt_rss_mib": None,
        "decrypt_rss_mib": None,
        "inproc_encrypt_mbps": None,
        "inproc_decrypt_mbps": None,
    }


def measure(
    *,
    size: int = 512 * MIB,
    rounds: int = 3,
    directory: str | None = None,
    peers: Sequence[Peer] = PEERS,
    only: Sequence[str] | None = None,
    in_process: bool = True,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Every peer's file-to-file figures (keys: module docstring, docs/bench.md); without
    `in_process` the Python peers are timed as whole processes only (`inproc_*` None)."""
    selected = [p for p in peers if only is None or p.name in only]
    env = {**os.environ}
    # as installed for users: bytecode cached (a sandbox may disable it, which would
    # recompile every module of every Python tool on every start and measure that instead)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="envelope-bench-peers-", dir=directory) as d:
        fs_type = filesystem_type(d)
        env["ENVELOPE_HOME"] = os.path.join(d, "home")
        src = os.path.join(d, "plain.bin")
        write_file(src, size)
        floor = run_timed(["true"], env)[1] if shutil.which("true") else 0.0
        ready: list[Peer] = []
        for peer in selected:
            if not peer.present():
                rows[peer.name] = _skipped(peer, "not installed")
                continue
            key = os.path.join(d, f"{peer.name}.key")
            sealed, back = os.path.join(d, f"{peer.name}.sealed"), os.path.join(d, "check.out")
            try:
                for command in peer.keygen(key):
                    subprocess.run(command, check=True, capture_output=True, env=env)
                run_timed(peer.encrypt(key, src, sealed), env)
                run_timed(peer.decrypt(key, sealed, back), env)
                same = filecmp.cmp(src, back, shallow=False)
                if same and peer.inproc is not None:  # the in-process round trip too
                    _unlink(back)
                    inproc = os.path.join(d, "check.inproc")
                    peer_tools.run(peer.inproc, "encrypt", key, src, inproc)
                    peer_tools.run(peer.inproc, "decrypt", key, inproc, back)
                    _unlink(inproc)
                    same = filecmp.cmp(src, back, shallow=False)
            except Exception as e:  # any failure of a peer is that peer's row, not the run's
                rows[peer.name] = _skipped(peer, "failed", error=_failure(e))
                continue
            finally:
                _unlink(back)
            if not same:
                rows[peer.name] = _skipped(peer, "failed", error="round trip changed the bytes")
                continue
            ready.append(peer)
        times: dict[str, list[tuple[float, float]]] = {}
        for r in range(rounds):
            k = r % len(ready) if ready else 0
            for peer in ready[k:] + ready[:k]:
                if peer.name in rows:  # failed in an earlier round
                    continue
                try:
                    _timed_round(peer, d, src, env, in_process, times)
                except Exception as e:  # a peer failing mid-run is its row, not the run's
                    rows[peer.name] = _skipped(peer, "failed", error=str(e)[:500])
            progress(r + 1, rounds)
    for peer in ready:
        if peer.name in rows:
            continue
        enc, dec = times[f"{peer.name}/encrypt"], times[f"{peer.name}/decrypt"]
        rows[peer.name] = {
            "name": peer.name,
            "skipped": False,
            "reason": None,
            "install": None,
            "error": None,
            "setting": peer.setting,
            "encrypt_mbps": mbps(size, min(t for t, _ in enc)),
            "decrypt_mbps": mbps(size, min(t for t, _ in dec)),
            "encrypt_median_mbps": mbps(size, median([t for t, _ in enc])),
            "decrypt_median_mbps": mbps(size, median([t for t, _ in dec])),
            "peak_rss_mib": max(m for _, m in enc + dec),
            "encrypt_rss_mib": max(m for _, m in enc),
            "decrypt_rss_mib": max(m for _, m in dec),
            "inproc_encrypt_mbps": _best(size, times.get(f"{peer.name}/inproc_encrypt")),
            "inproc_decrypt_mbps": _best(size, times.get(f"{peer.name}/inproc_decrypt")),
        }
    ordered = [rows[p.name] for p in selected]
    return {
        "size_mib": size / MIB,
        "rounds": rounds,
        "cores": cores(),
        "rss_floor_mib": floor,
        # tmpfs: no disk at all; xfs/btrfs: cp clones instead of copying (its figure is not a
        # copy's): the figures are comparable only between runs on the same kind
        "filesystem": fs_type,
        "rows": ordered,
        "targets": _targets(rows),
    }


def startup(rounds: int = 3, directory: str | None = None) -> dict[str, float]:
    """Start-up of `envelope encrypt` as a user runs it: a 1-byte file, whole process, best
    wall seconds and least peak RSS over `rounds` (each output a new file)."""
    env = {**os.environ}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached
    peer = PEERS[0]  # `envelope`, as `bench peers` runs it
    with tempfile.TemporaryDirectory(prefix="envelope-bench-startup-", dir=directory) as d:
        env["ENVELOPE_HOME"] = os.path.join(d, "home")
        key, src, out = (os.path.join(d, n) for n in ("k.key", "tiny.bin", "tiny.env"))
        with open(src, "wb") as f:
            f.write(b"x")
        for command in peer.keygen(key):
            subprocess.run(command, check=True, capture_output=True, env=env)
        runs = []
        for _ in range(rounds):
            _unlink(out)
            _settle()
            runs.append(run_timed(peer.encrypt(key, src, out), env))
    return {"seconds": min(t for t, _ in runs), "peak_rss_mib": min(m for _, m in runs)}


def shortened(text: str, most: int = 600) -> str:
    """`text` within `most` characters, its start and its end kept: a tool's error is its
    last line (the exception), and cutting the end (or starting mid-traceback) lost it
    (review)."""
    if len(text) <= most:
        return text
    head = most // 4
    return f"{text[:head]} ... {text[-(most - head - 5):]}"


def _failure(e: Exception) -> str:
    """What went wrong with a peer: a failed command's own error output included (a failing
    keygen said only "returned non-zero exit status 1"; review)."""
    if isinstance(e, subprocess.CalledProcessError):
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        name = os.path.basename(str(e.cmd[0] if isinstance(e.cmd, list | tuple) else e.cmd))
        return shortened(f"{name} exited {e.returncode}: {(err or '').strip()}")
    return shortened(str(e))


def _best(size: int, runs: list[tuple[float, float]] | None) -> float | None:
    return mbps(size, min(t for t, _ in runs)) if runs else None


def _targets(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """envelope's throughput over Tink's and the AWS Encryption SDK's best (issue 12 asks for
    >= 2x and >= 4x), None where a side was not measured."""

    def over(peer: str, op: str) -> float | None:
        a, b = rows.get("envelope"), rows.get(peer)
        if not a or not b or a["skipped"] or b["skipped"] or b[f"{op}_mbps"] is None:
            return None
        return ratio(a[f"{op}_mbps"], b[f"{op}_mbps"])

    return {
        "encrypt_over_tink": over("tink", "encrypt"),
        "decrypt_over_tink": over("tink", "decrypt"),
        "encrypt_over_aws_encryption_sdk_best": over("aws-encryption-sdk-best", "encrypt"),
        "decrypt_over_aws_encryption_sdk_best": over("aws-encryption-sdk-best", "decrypt"),
        "encrypt_over_cp": over("cp", "encrypt"),
        "decrypt_over_cp": over("cp", "decrypt"),
        "inproc_encrypt_over_tink": over("tink", "inproc_encrypt"),
        "inproc_decrypt_over_tink": over("tink", "inproc_decrypt"),
        "inproc_encrypt_over_aws_encryption_sdk_best": over(
            "aws-encryption-sdk-best", "inproc_encrypt"
        ),
        "inproc_decrypt_over_aws_encryption_sdk_best": over(
            "aws-encryption-sdk-best", "inproc_decrypt"
        ),
    }
