"""SIGKILL at random moments: no acknowledged call is lost, and the audit chain still verifies.

Two children work on the same store at once (so this is also the several-processes test); the
parent reads their acknowledgements and kills both with SIGKILL at a random point, several
times. Afterwards every acknowledged key exists and works, every acknowledged data key decrypts
to what the child was given, and every acknowledged call's request id is in the audit log.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from envelope.service import open_service

CHILD = Path(__file__).with_name("kms_child.py")
ROOT = Path(__file__).resolve().parents[2]


def run_round(home: Path, tag: str, stop_after: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(home), f"{tag}{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(2)
    ]
    acked: list[str] = []
    try:
        for n, p in enumerate(procs):
            assert p.stdout is not None
            want = stop_after if n == 0 else stop_after // 2
            for _ in range(want):
                line = p.stdout.readline()
                if not line:
                    raise AssertionError(p.stderr.read() if p.stderr else "child died")
                acked.append(line)
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)  # by the pid we started, nothing else
        for p in procs:
            p.wait()
            # lines already written to the pipe were acknowledged too
            if p.stdout is not None:
                acked += [
                    line
                    for line in p.stdout.read().splitlines(keepends=True)
                    if line.endswith("\n")
                ]
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
    return acked


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_call(tmp_path: Path) -> None:
    home = tmp_path / "home"
    open_service(home).close()  # create the store and root key before the children race
    rng = random.Random(1234)
    acked: list[str] = []
    for r in range(3):
        acked += run_round(home, f"r{r}", rng.randint(30, 250))

    keys = {line.split()[1] for line in acked if line.startswith("K ")}
    data = [line.split() for line in acked if line.startswith("D ")]
    assert keys and data

    svc = open_service(home)
    try:
        listed = set()
        marker = None
        while True:
            page = svc.list_keys(marker=marker, limit=1000)
            listed |= {k["KeyId"] for k in page["Keys"]}
            if not page["Truncated"]:
                break
            marker = page["NextMarker"]
        assert keys <= listed
        for kid in keys:
            assert svc.describe_key(key_id=kid)["KeyMetadata"]["KeyState"] == "Enabled"
        for _, kid, blob, plaintext, rid in data:
            tag = rid.split("-", 1)[0]
            out = svc.decrypt(
                ciphertext_blob=bytes.fromhex(blob), encryption_context={"child": tag}
            )
            assert out["Plaintext"].hex() == plaintext
            assert out["KeyId"].endswith(kid)
        report = svc.verify_audit_log()
        assert report.ok, report.problem
    finally:
        svc.close()

    conn = sqlite3.connect(home / "kms.sqlite3")
    rids = {json.loads(b)["request_id"] for (b,) in conn.execute("SELECT body FROM audit")}
    conn.close()
    missing = [rid for *_, rid in data if rid not in rids]
    assert not missing


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_a_state_change_is_on_disk_before_it_is_acknowledged(
    tmp_path: Path, synchronous: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With synchronous=NORMAL a commit sits in the WAL file in the page cache: a power cut
    may take it. A CreateKey so lost leaves every object sealed under its data keys
    unreadable, a revoked grant comes back: a call that changed more than the audit log
    fsyncs the WAL before it is acknowledged. Calls that only use a key (their audit record
    alone) keep NORMAL's speed; with FULL, SQLite syncs every commit itself."""
    svc = open_service(tmp_path / "home", synchronous=synchronous)  # type: ignore[arg-type]
    wal = f"{svc.store.path}-wal"
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)

    def wal_syncs(call: Callable[[], object]) -> int:
        synced.clear()
        assert call() is not None
        return synced.count(wal)

    try:
        kid = svc.create_key()["KeyMetadata"]["KeyId"]
        key = {"key_id": kid}
        grantee = "arn:aws:iam::111122223333:role/etl"
        changes = {
            "CreateKey": lambda: svc.create_key(),
            "TagResource": lambda: svc.tag_resource(**key, tags=[{"TagKey": "a", "TagValue": "b"}]),
            "CreateAlias": lambda: svc.create_alias(alias_name="alias/etl", target_key_id=kid),
            "CreateGrant": lambda: svc.create_grant(
                **key, grantee_principal=grantee, operations=["Decrypt"]
            ),
            "DisableKey": lambda: svc.disable_key(**key),
            "EnableKey": lambda: svc.enable_key(**key),
            "RotateKeyOnDemand": lambda: svc.rotate_key_on_demand(**key),
        }
        uses = {
            "GenerateDataKey": lambda: svc.generate_data_key(**key, key_spec="AES_256"),
            "Encrypt": lambda: svc.encrypt(**key, plaintext=b"x"),
            "DescribeKey": lambda: svc.describe_key(**key),
            "ListGrants": lambda: svc.list_grants(**key),
        }
        expected = 1 if synchronous == "NORMAL" else 0
        for name, change in changes.items():
            assert wal_syncs(change) == expected, name
        for name, use in uses.items():
            assert wal_syncs(use) == 0, name
        blob = svc.encrypt(**key, plaintext=b"x")["CiphertextBlob"]
        assert wal_syncs(lambda: svc.decrypt(ciphertext_blob=blob)) == 0
    finally:
        svc.close()
