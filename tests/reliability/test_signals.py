"""Signals: SIGINT, SIGTERM and SIGHUP at random points of encrypt, decrypt and lake jobs.

Each job runs as a subprocess on tens of MiB so there is time to hit the middle: the signal is
sent a seeded random delay after the job's first output temporary appears (so it lands while
bytes are being written), or from the start for some cases. Expected, for every signal that
found the job running: a non-zero exit with the signal's code (130 SIGINT, 143 SIGTERM,
129 SIGHUP), nothing left behind in the output folder (no ``*.envelope-tmp``, no lock), and the
target untouched (the same bytes as before, or still absent). A job that finished before its
signal must have finished correctly; it is counted apart, and most signals must hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from envelope.keyring import Keyring
from envelope.kms.filekey import FileKeyBackend

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


def send_at(
    cmd: list[str], env: dict[str, str], sig: signal.Signals, delay: float, watch: Path
) -> tuple[int, str, bool]:
    """Run `cmd`; `delay` s after a temporary shows up under `watch`, send `sig`.
    Returns (exit status, stderr, whether the signal was sent to a running job)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
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
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err, sent


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
    hits = finished = 0
    for k in range(size(1, 10)):
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
        code, err, sent = send_at(cmd, env, sig, r.uniform(0, 0.15), out)
        count(SUITE, f"{sig.name} sent")
        assert "Traceback" not in err, err
        assert not leftovers(out), f"left behind after {sig.name}: {leftovers(out)} {where()}"
        if sent and code != 0:
            hits += 1
            assert code == EXIT[sig], f"exit {code} after {sig.name}, not {EXIT[sig]}: {err}"
            if op == "lake":
                assert not target.exists() or all(
                    p.name != ".envelope-lock" for p in files_under(target).values()
                ), "lock left behind"
            else:
                now = target.read_bytes() if target.exists() else None
                assert now == before, f"target changed by an interrupted {op} {where()}"
        else:  # finished first: then it must have finished well
            finished += 1
            assert code == 0, err
    count(SUITE, "signals that hit a running job", hits)
    count(SUITE, "jobs that finished before their signal", finished)
    assert hits >= 1, f"no {sig.name} hit a running {op}: the case tested nothing {where()}"
