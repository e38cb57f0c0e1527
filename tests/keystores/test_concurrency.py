"""The issue's concurrency floor for HSM key stores, through the KMS: 8 threads and 2 processes
generating data keys through one HSM-store key for 20 seconds.

The parent runs 8 threads on its `KeyService`; two other OS processes each open their own
`KeyService` on the same store file and the same SoftHSM2 token directory (``$SOFTHSM2_CONF``
is inherited) and run 4 threads each, in the same 20-second window. Each thread generates a
data key under its own encryption context, then decrypts that CiphertextBlob and compares it
with the Plaintext (so every data key is checked while the others load the token with both
encryptions and decryptions, and the check fits the window). Afterwards: no call failed; a
sample of each child's data keys also decrypts in the parent (across processes); the audit log
holds one successful GenerateDataKey record, with its HSM call, per data key and verifies; the
token is intact (the key still listed, sensitive and never extractable; ``softhsm2-util
--show-slots`` works; a fresh process opens the token and finds the key).
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from envelope.pkcs11 import Token
from envelope.service import KeyService

from ..service.conftest import open_store
from ..softhsm import show_slots
from .conftest import HsmToken

REPO = Path(__file__).resolve().parents[2]
LOAD_SECONDS = 20.0
PARENT_THREADS = 8
CHILD_THREADS = 4
ANCHOR = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

DataKey = tuple[dict[str, str], bytes, bytes]  # (encryption context, blob, plaintext)


@dataclass
class Load:
    """What one process's threads did."""

    made: list[DataKey] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # first and last call


def load(
    svc: KeyService, key_id: str, name: str, threads: int, start_at: float, end_at: float
) -> Load:
    """`threads` threads, from `start_at` to `end_at` (wall clock): GenerateDataKey under a
    fresh context, then Decrypt of that blob, compared with the plaintext."""
    out = Load()
    lock = threading.Lock()

    def work(t: int) -> None:
        mine: list[DataKey] = []
        first = 0.0
        i = 0
        try:
            while time.time() < end_at:
                ctx = {"worker": f"{name}-{t}", "n": str(i)}
                dk = svc.generate_data_key(
                    key_id=key_id, key_spec="AES_256", encryption_context=ctx
                )
                first = first or time.time()
                blob, plain = dk["CiphertextBlob"], dk["Plaintext"]
                back = svc.decrypt(ciphertext_blob=blob, encryption_context=ctx)
                if back["Plaintext"] != plain or not back["KeyId"].endswith(key_id):
                    with lock:
                        out.wrong.append(f"{ctx}: another plaintext or key")
                mine.append((ctx, blob, plain))
                i += 1
        except Exception as e:
            with lock:
                out.errors.append(f"{name}-{t}: {type(e).__name__}: {e}")
        with lock:
            out.made.extend(mine)
            out.spans.append((first, time.time()))

    time.sleep(max(0.0, start_at - time.time()))
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out


def _child_main() -> None:
    """A load process (``python -c``): its own KeyService on the store; JSON to a file."""
    home, key_id, name, threads, start_at, end_at, path = sys.argv[1:8]
    svc = KeyService(open_store(Path(home)), owns_store=True)
    try:
        done = load(svc, key_id, name, int(threads), float(start_at), float(end_at))
    finally:
        svc.close()
    made = [
        [ctx, base64.b64encode(blob).decode(), base64.b64encode(plain).decode()]
        for ctx, blob, plain in done.made
    ]
    doc = {"made": made, "errors": done.errors, "wrong": done.wrong, "spans": done.spans}
    Path(path).write_text(json.dumps(doc))


_CHILD = "from tests.keystores.test_concurrency import _child_main; _child_main()"

_PROBE = """
import sys
from envelope.pkcs11 import Token, TokenConfig
t = Token.open(TokenConfig(sys.argv[1], sys.argv[2], sys.argv[3]))
print(t.has_key(sys.argv[4]))
t.close()
"""


def _hsm_key(svc: KeyService, hsm: HsmToken) -> str:
    cluster = svc.register_hsm_cluster(module=hsm.module, token_label=hsm.label)
    store = svc.create_custom_key_store(
        custom_key_store_name="concurrency",
        cloud_hsm_cluster_id=cluster["CloudHsmClusterId"],
        key_store_password=hsm.pin,
        trust_anchor_certificate=ANCHOR,
    )["CustomKeyStoreId"]
    svc.connect_custom_key_store(custom_key_store_id=store)
    meta = svc.create_key(origin="AWS_CLOUDHSM", custom_key_store_id=store)["KeyMetadata"]
    return str(meta["KeyId"])


@pytest.mark.slow
def test_eight_threads_and_two_processes_generate_data_keys_for_20_seconds(
    tmp_path: Path, hsm: HsmToken
) -> None:
    home = tmp_path / "home"
    svc = KeyService(open_store(home), owns_store=True)
    key_id = _hsm_key(svc, hsm)
    label = f"kms-{key_id}"
    assert "SOFTHSM2_CONF" in os.environ  # the children find the same token directory

    start_at = time.time() + 4.0  # room for the children to import and open the store
    end_at = start_at + LOAD_SECONDS
    children = []
    for name in ("p1", "p2"):
        out = tmp_path / f"{name}.json"
        args = [str(home), key_id, name, str(CHILD_THREADS), repr(start_at), repr(end_at)]
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *args, str(out)],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        children.append((name, proc, out))

    loads = {"parent": load(svc, key_id, "parent", PARENT_THREADS, start_at, end_at)}
    for name, proc, out in children:
        log, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log.decode(errors="replace")
        doc: dict[str, Any] = json.loads(out.read_text())
        loads[name] = Load(
            made=[(c, base64.b64decode(b), base64.b64decode(p)) for c, b, p in doc["made"]],
            errors=doc["errors"],
            wrong=doc["wrong"],
            spans=[(float(a), float(b)) for a, b in doc["spans"]],
        )

    assert [e for done in loads.values() for e in done.errors] == []
    assert [w for done in loads.values() for w in done.wrong] == []
    # every thread of every process worked through (nearly) the whole window, at once
    for name, done in loads.items():
        threads = PARENT_THREADS if name == "parent" else CHILD_THREADS
        assert len(done.spans) == threads, name
        for first, last in done.spans:
            assert start_at - 0.1 <= first < start_at + 5.0 and last >= end_at, (name, first)
        assert len(done.made) >= 50, (name, len(done.made))  # really generated under load
    made = [dk for done in loads.values() for dk in done.made]
    # all distinct, 32 bytes each, the ciphertexts distinct too
    assert len({p for _, _, p in made}) == len(made)
    assert len({b for _, b, _ in made}) == len(made)
    assert {len(p) for _, _, p in made} == {32}

    # the children's data keys decrypt here too (a sample: each was checked in its process)
    sample = [dk for n in ("p1", "p2") for dk in random.sample(loads[n].made, 200)]

    def check(item: DataKey) -> bool:
        ctx, blob, plain = item
        back = svc.decrypt(ciphertext_blob=blob, encryption_context=ctx)
        return bool(back["Plaintext"] == plain and back["KeyId"].endswith(key_id))

    with ThreadPoolExecutor(PARENT_THREADS) as pool:
        assert all(pool.map(check, sample))

    # one successful, audited GenerateDataKey with its HSM call per data key; log intact
    limit = 3 * len(made) + 1000
    records = svc.audit_tail(limit)
    assert len(records) < limit  # the whole log, setup included
    generated = [r for r in records if r["operation"] == "GenerateDataKey"]
    assert len(generated) == len(made)
    assert all(r["outcome"] == "ok" for r in records)
    calls = [r["keystore_calls"] for r in generated]
    assert all(c[0]["Call"] == "Encrypt" and c[0]["Outcome"] == "ok" for c in calls)  # type: ignore[index]
    report = svc.verify_audit_log()
    assert report.ok, report
    svc.close()

    # the token is intact: the key listed and still sensitive, never extractable
    token = Token.open(hsm.config)
    try:
        assert label in token.list_keys()
        attrs = token.key_attributes(label)
        assert attrs["sensitive"] is True and attrs["extractable"] is False
        assert attrs["never_extractable"] is True and attrs["value_len"] == 32
    finally:
        token.close()
    assert hsm.label in show_slots()
    # a fresh process opens the token and finds the key
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, hsm.module, hsm.label, hsm.pin, label],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "True", probe.stderr
