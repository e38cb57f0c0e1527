"""Signals: SIGINT, SIGTERM and SIGHUP at random points of encrypt, decrypt and lake jobs.

Each job runs as a subprocess on tens of MiB so there is time to hit the middle: the signal is
sent a seeded random delay after the job's first output temporary appears, drawn from 0-60% of
the write window measured by one undisturbed run of the same command, so it lands while bytes
are being written. Expected, for every signal that found the job running: a
non-zero exit with the signal's code (130 SIGINT, 143 SIGTERM, 129 SIGHUP), nothing left behind
in the output folder (no ``*.envelope-tmp``, no lock), no traceback, and the target untouched
(the same bytes as before, or still absent; for a lake job, every object already there whole
and correct). Counted apart: a signal that arrives after the
job's last rename (the output must then be whole and correct, whatever the exit), and an exit
by the signal's default action (-N: the signal came after the CLI restored the handlers; a
shell shows it as 128+N). A job still running 30 s after its signal is a hang, reported with
its threads. Each case sends signals until two (CI; ten at full size) have interrupted a
running job, giving up after three times as many.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from envelope import sync
from envelope.keyring import Keyring
from envelope.kms.filekey import FileKeyBackend
from envelope.lake import jobs

from .support import (
    child_env,
    count,
    envelope_cmd,
    files_under,
    leftovers,
    make_tree,
    rng,
    run_envelope,
    size,
    where,
)

SUITE = "signals"
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


HANG_SECONDS = 30


def send_at(
    cmd: list[str], env: dict[str, str], sig: signal.Signals, delay: float, watch: Path
) -> tuple[int, str, bool]:
    """Run `cmd`; `delay` s after a temporary shows up under `watch`, send `sig`.
    Returns (exit status, stderr, whether the signal was sent to a running job).

    A job still running `HANG_SECONDS` after its signal is a hang: it gets SIGABRT, and the
    thread dump its fault handler prints (PYTHONFAULTHANDLER) goes into the failure."""
    proc = subprocess.Popen(
        cmd,
        env={**env, "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    sent = False
    try:
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 60:
            if leftovers(watch):
                break
            time.sleep(0.001)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, sig)  # by the pid we started
            sent = True
        try:
            _, err = proc.communicate(timeout=HANG_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            raise AssertionError(
                f"still running {HANG_SECONDS} s after {sig.name} {where()}; its threads:\n"
                + err[-8000:]
            ) from None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err, sent


def write_window(cmd: list[str], env: dict[str, str], watch: Path, *, one_file: bool) -> float:
    """Seconds from the first temporary under `watch` to the end of the writing in an
    undisturbed run: the window the signal delays are drawn from (the job gets faster, the
    window follows). For one file the writing ends when its temporary is renamed: a fast
    file path writes 32 MiB in tens of milliseconds, about what the interpreter's exit takes
    afterwards, so a window running to the process's end sent most signals after the rename
    and a case could end with none that hit the job. A lake job renames per object, so its
    window runs to the end of the process."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    seen = gone = None
    while proc.poll() is None and time.monotonic() - t0 < 120:
        if seen is None and leftovers(watch):
            seen = time.monotonic()
        elif seen is not None and one_file and gone is None and not leftovers(watch):
            gone = time.monotonic()
        time.sleep(0.0005)
    end = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return (gone or end) - (seen or end)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One key file, one big plaintext, its encryption and a lake tree, shared by the cases."""
    base = tmp_path_factory.mktemp("signals")
    r = rng("signals-setup")
    key = base / "k.key"
    assert run_envelope("keygen", str(key), home=base / "home").returncode == 0
    plain = base / "plain.bin"
    plain.write_bytes(r.randbytes(size(32, 64) << 20))
    enc = base / "plain.env"
    proc = run_envelope("encrypt", str(plain), str(enc), "--key-file", str(key), home=base / "home")
    assert proc.returncode == 0, proc.stderr
    tree = make_tree(base / "tree", [r.randrange(0, 300_000) for _ in range(60)] + [24 << 20], r)
    backend = FileKeyBackend(str(key))
    return {
        "base": base,
        "key": str(key),
        "plain": plain,
        "enc": enc,
        "tree": tree,
        "keyring": Keyring(backend, backend.key_id),
    }


def _untouched(op: str, target: Path, before: bytes | None, setup: dict[str, object]) -> bool:
    """Nothing half-done: a file target as it was; in a lake destination, every object that
    is there is whole and correct (an interrupted job keeps the objects it finished)."""
    if op == "lake":
        return _lake_objects_ok(target, setup, complete=False)
    return (target.read_bytes() if target.exists() else None) == before


def _lake_objects_ok(target: Path, setup: dict[str, object], *, complete: bool) -> bool:
    keyring, tree = setup["keyring"], setup["tree"]
    assert isinstance(keyring, Keyring) and isinstance(tree, dict)
    outputs = files_under(target) if target.exists() else {}
    if not set(outputs) <= set(tree) or (complete and set(outputs) != set(tree)):
        return False
    for rel, p in outputs.items():
        ctx = {jobs.PATH_CONTEXT_KEY: rel}
        got = sync.decrypt_bytes(p.read_bytes(), keyring=keyring, expected_context=ctx)
        if bytes(got) != tree[rel]:
            return False
    return True


def _complete(op: str, target: Path, setup: dict[str, object]) -> bool:
    """The job's whole, correct result is in place."""
    keyring = setup["keyring"]
    assert isinstance(keyring, Keyring)
    plain = setup["plain"]
    assert isinstance(plain, Path)
    if op == "decrypt":
        return target.read_bytes() == plain.read_bytes()
    if op == "encrypt":
        return bytes(sync.decrypt_bytes(target.read_bytes(), keyring=keyring)) == plain.read_bytes()
    return _lake_objects_ok(target, setup, complete=True)


CASES = [(op, sig) for op in ("encrypt", "decrypt", "lake") for sig in EXIT]


@pytest.mark.slow
@pytest.mark.parametrize(("op", "sig"), CASES, ids=[f"{o}-{s.name}" for o, s in CASES])
def test_signal_leaves_nothing(
    op: str, sig: signal.Signals, setup: dict[str, object], tmp_path: Path
) -> None:
    r = rng(f"signal-{op}-{sig.name}")
    key, keyring = str(setup["key"]), setup["keyring"]
    assert isinstance(keyring, Keyring)
    out = tmp_path / "out"
    out.mkdir()
    env = child_env(ENVELOPE_HOME=str(tmp_path / "home"))
    hits = finished = late = 0
    window = 0.0
    wanted = size(2, 10)  # signals that interrupt a running job; late ones are retried
    for k in range(3 * wanted):
        if hits >= wanted:
            break
        if op == "lake":
            target = out / f"enc{k}"
            cmd = envelope_cmd(
                "lake",
                "encrypt",
                str(setup["base"] / "tree"),
                str(target),  # type: ignore[operator]
                "--key-file",
                key,
                "--no-progress",
            )
            before = None
        else:
            source = setup["plain"] if op == "encrypt" else setup["enc"]
            target = out / f"target{k}"
            before = r.randbytes(64) if r.random() < 0.5 else None
            if before is not None:
                target.write_bytes(before)
            cmd = envelope_cmd(op, str(source), str(target), "--key-file", key, "--no-progress")
        if k == 0:
            window = write_window(cmd, env, out, one_file=op != "lake")
            shutil.rmtree(target) if target.is_dir() else target.unlink()
            if before is not None:
                target.write_bytes(before)
            count(SUITE, "calibration runs")
        code, err, sent = send_at(cmd, env, sig, r.uniform(0, 0.6 * window), out)
        count(SUITE, f"{sig.name} sent")
        assert "Traceback" not in err, err
        assert not leftovers(out), f"left behind after {sig.name}: {leftovers(out)} {where()}"
        if op == "lake":
            assert not (target / ".envelope-lock").exists(), f"lock left behind {where()}"
        untouched = _untouched(op, target, before, setup)
        if sent and code in (EXIT[sig], -sig) and untouched:
            hits += 1  # interrupted: nothing written, nothing left
            if code == -sig:  # ended by the signal's default action, not the handler
                count(SUITE, "exits by the default action (no handler)")
        elif sent and code in (EXIT[sig], -sig, 0):
            # the signal came after the job's last rename: then every output must be whole
            assert _complete(op, target, setup), (
                f"exit {code} after {sig.name} with a changed, incomplete target {where()}"
            )
            late += 1
        else:
            assert not sent and code == 0, f"exit {code} after {sig.name}: {err} {where()}"
            assert _complete(op, target, setup)
            finished += 1
    count(SUITE, "signals after the job's last rename", late)
    count(SUITE, "signals that hit a running job", hits)
    count(SUITE, "jobs that finished before their signal", finished)
    assert hits >= 1, f"no {sig.name} hit a running {op}: the case tested nothing {where()}"
