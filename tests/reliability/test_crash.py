"""Crash: SIGKILL at seeded random points, then restart; nothing acknowledged is lost.

Three workloads, each killed many times (CI: about 50 kills in all; full: hundreds):

- ``envelope encrypt`` on one file, with the embedded KMS (a key, a data key and an audit
  record per run): after each kill the target is either untouched (its old bytes, or absent)
  or the whole, correct object; a final run completes and removes every temporary the killed
  runs left.
- ``envelope lake encrypt`` over a tree: after each kill every object under a final name is
  whole and correct; a final run (same command) completes and leaves no temporary and no lock.
- key lifecycle operations (`lifecycle_child.py`): after the kills every acknowledged key,
  key state and data key is there, and every acknowledged call has its audit record.

Then ``envelope audit verify`` passes on each home. Kill points are delays drawn from the
run's seed: half measured from the start (imports, the KMS and the store are in play), half
from the moment the first output temporary appears (mid-write).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from envelope import sync
from envelope.keyring import Keyring
from envelope.kms.local import open_local
from envelope.lake import jobs
from envelope.service import open_service

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

SUITE = "crash"
CHILD = Path(__file__).with_name("lifecycle_child.py")


def kill_at(cmd: list[str], env: dict[str, str], delay: float, watch: Path | None) -> int:
    """Start `cmd`, SIGKILL it `delay` seconds after it starts (or after a temporary appears
    under `watch`); returns its exit status (negative: killed)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        if watch is not None:
            while proc.poll() is None and time.monotonic() - t0 < 30:
                if watch.exists() and (leftovers(watch) or any(watch.iterdir())):
                    break
                time.sleep(0.002)
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # by the pid we started
        proc.wait()
    return proc.returncode


def _decrypting(home: Path) -> Keyring:
    return Keyring(decrypt_with=[open_local(home)])


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - t0


def _audit_verifies(home: Path) -> None:
    proc = run_envelope("audit", "verify", "--json", home=home)
    assert proc.returncode == 0, f"audit verify failed {where()}: {proc.stdout}{proc.stderr}"


def test_sigkill_file_encryption(tmp_path: Path) -> None:
    r = rng("crash-file")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    src = tmp_path / "plain.bin"
    src.write_bytes(r.randbytes(16 << 20))
    target = work / "plain.env"
    env = child_env(ENVELOPE_HOME=str(home))
    cmd = envelope_cmd("encrypt", str(src), str(target), "--no-progress")
    budget = _timed(cmd, env)  # one whole run: the window the kill points are drawn from
    keyring = _decrypting(home)
    try:
        whole = 0
        for k in range(size(18, 100)):
            old = r.randbytes(100) if k % 2 else None
            if old is None:
                target.unlink(missing_ok=True)
            else:
                target.write_bytes(old)
            mid_write = k % 4 >= 2
            delay = r.uniform(0, budget * (0.4 if mid_write else 0.9))
            code = kill_at(cmd, env, delay, work if mid_write else None)
            count(SUITE, "kill points (file encrypt)")
            now = target.read_bytes() if target.exists() else None
            if now != old:  # committed before the kill (maybe not yet exited): whole and correct
                assert now is not None, f"a killed run removed the target {where()}"
                assert bytes(sync.decrypt_bytes(now, keyring=keyring)) == src.read_bytes(), (
                    f"target half-written by a killed run (exit {code}) {where()}"
                )
                whole += 1
        count(SUITE, "runs finished before their kill (file encrypt)", whole)

        proc = run_envelope("encrypt", str(src), str(target), "--no-progress", home=home)
        assert proc.returncode == 0, proc.stderr
        assert bytes(sync.decrypt_bytes(target.read_bytes(), keyring=keyring)) == src.read_bytes()
        assert not leftovers(work), f"stale temporaries not removed: {leftovers(work)} {where()}"
    finally:
        sync.run(keyring.aclose)
    _audit_verifies(home)


def test_sigkill_lake_job(tmp_path: Path) -> None:
    r = rng("crash-lake")
    home, src, dst = tmp_path / "home", tmp_path / "src", tmp_path / "dst"
    sizes = [r.randrange(0, 200_000) for _ in range(size(40, 200))] + [12 << 20, 20 << 20]
    tree = make_tree(src, sizes, r)
    env = child_env(ENVELOPE_HOME=str(home))
    cmd = envelope_cmd("lake", "encrypt", str(src), str(dst), "--no-progress", "--json")
    budget = _timed([*cmd, "--dry-run"], env) + 1.0
    keyring = _decrypting(home)
    try:
        for k in range(size(14, 60)):
            mid_write = k % 2 == 1
            kill_at(
                cmd,
                env,
                r.uniform(0, budget * (0.5 if mid_write else 1.2)),
                dst if mid_write else None,
            )
            count(SUITE, "kill points (lake encrypt)")
            for rel, p in files_under(dst).items() if dst.exists() else ():
                if p.name == ".envelope-lock" or p in leftovers(dst):
                    continue
                ctx = {jobs.PATH_CONTEXT_KEY: rel}
                got = sync.decrypt_bytes(p.read_bytes(), keyring=keyring, expected_context=ctx)
                assert bytes(got) == tree[rel], f"{rel} half-written under its name {where()}"
        proc = run_envelope("lake", "encrypt", str(src), str(dst), "--json", home=home)
        assert proc.returncode == 0, f"re-run failed {where()}: {proc.stdout}{proc.stderr}"
        outputs = files_under(dst)
        assert set(outputs) == set(tree), f"left behind: {set(outputs) - set(tree)} {where()}"
        for rel, p in outputs.items():
            ctx = {jobs.PATH_CONTEXT_KEY: rel}
            assert (
                bytes(sync.decrypt_bytes(p.read_bytes(), keyring=keyring, expected_context=ctx))
                == tree[rel]
            )
    finally:
        sync.run(keyring.aclose)
    _audit_verifies(home)


_STATE_AFTER = {
    "CreateKey": "Enabled",
    "ScheduleKeyDeletion": "PendingDeletion",
    "CancelKeyDeletion": "Disabled",
    "DisableKey": "Disabled",
    "EnableKey": "Enabled",
}


def _lifecycle_round(home: Path, tag: str, seed: int, delay: float) -> list[list[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(home), tag, str(seed)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"child ended on its own: {err[-3000:]}"
    return [line.split() for line in out.splitlines(keepends=True) if line.endswith("\n")]


def test_sigkill_key_lifecycle(tmp_path: Path) -> None:
    r = rng("crash-lifecycle")
    home = tmp_path / "home"
    open_service(home).close()  # the store and root key exist before the first kill
    lines: list[list[str]] = []
    rounds = size(18, 100)
    for k in range(rounds):
        got = _lifecycle_round(home, f"r{k}", r.randrange(1 << 30), r.uniform(0.3, 1.0))
        lines += got
        count(SUITE, "kill points (key lifecycle)")
        count(SUITE, "acknowledged KMS calls", sum(1 for f in got if f[0] == "A"))

    # the model: each key's state after its last acknowledged change; the one call a kill
    # interrupted (an intent with no acknowledgement) may or may not have committed
    state: dict[str, str] = {}
    maybe: dict[str, str] = {}
    data: list[tuple[str, str, str, str]] = []
    rids: list[str] = []
    last_intent: dict[str, list[str]] = {}
    for f in lines:
        tag = f[-1].split("-")[0]
        if f[0] == "I":
            last_intent[tag] = f
            continue
        last_intent.pop(tag, None)
        op, kid, rid = f[1], f[2], f[-1]
        rids.append(rid)
        if op == "GenerateDataKey":
            data.append((kid, f[3], f[4], tag))
        elif op == "CreateKey" or f[3] == "ok":
            state[kid] = _STATE_AFTER[op]
    for f in last_intent.values():
        if f[1] in _STATE_AFTER and f[2] in state:
            maybe[f[2]] = _STATE_AFTER[f[1]]
    assert state and data and rids

    svc = open_service(home)
    try:
        for kid, want in state.items():
            got = svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"]
            assert got in (want, maybe.get(kid)), f"{kid}: {got}, acknowledged {want} {where()}"
        for kid, blob, plaintext, tag in data:
            out = svc.decrypt(ciphertext_blob=bytes.fromhex(blob), encryption_context={"tag": tag})
            assert out["Plaintext"].hex() == plaintext and str(out["KeyId"]).endswith(kid)
        logged = {rec.get("request_id") for rec in svc.audit_tail(10**9)}
        missing = [rid for rid in rids if rid not in logged]
        assert not missing, f"acknowledged calls without an audit record: {missing[:5]} {where()}"
        count(SUITE, "acknowledged keys checked", len(state))
        count(SUITE, "acknowledged data keys checked", len(data))
        count(SUITE, "audit records checked", len(rids))
    finally:
        svc.close()
    _audit_verifies(home)
