"""Embedded KMS throughput: GenerateDataKey and Decrypt calls per second, audit record durable.

    python bench/kms.py [--seconds 3] [--synchronous NORMAL|FULL] [--json]

Every call is a committed SQLite transaction with its audit record (WAL; ``synchronous=NORMAL``
survives a killed process, ``FULL`` also a power cut). Figures: one process; two processes on
the same store at once (the sum of both); and the `LocalKms` adapter's GenerateDataKey called
directly on the event loop versus through a worker thread (``offload=True``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envelope.service import KeyService, open_service


def _setup(home: str, sync: str) -> tuple[KeyService, str, bytes]:
    svc = open_service(home, synchronous=sync)  # type: ignore[arg-type]
    keys = svc.list_keys()["Keys"]
    kid = keys[0]["KeyId"] if keys else svc.create_key(description="bench")["KeyMetadata"]["KeyId"]
    blob = svc.generate_data_key(key_id=kid, key_spec="AES_256", encryption_context={"b": "1"})
    return svc, kid, blob["CiphertextBlob"]


def _loop(svc: KeyService, kid: str, blob: bytes, op: str, seconds: float) -> tuple[int, float]:
    ctx = {"b": "1"}
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            if op == "gdk":
                svc.generate_data_key(key_id=kid, key_spec="AES_256", encryption_context=ctx)
            else:
                svc.decrypt(ciphertext_blob=blob, encryption_context=ctx)
        n += 100
        now = time.perf_counter()
        if now >= deadline:
            return n, now - start


def _worker(home: str, sync: str, op: str, seconds: float, barrier: Any, out: Any) -> None:
    svc, kid, blob = _setup(home, sync)
    _loop(svc, kid, blob, op, 0.2)  # warm the caches
    barrier.wait()
    n, dt = _loop(svc, kid, blob, op, seconds)
    out.put((n, dt))
    svc.close()


def _two_processes(home: str, sync: str, op: str, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    out: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(home, sync, op, seconds, barrier, out)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(n / dt for n, dt in results)


def _adapter(home: str, seconds: float) -> dict[str, float]:
    import anyio

    from envelope.kms.local import open_local

    async def run(offload: bool) -> float:
        kms = open_local(home, offload=offload)
        kid = kms.service.list_keys()["Keys"][0]["KeyId"]
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(100):
                await kms.generate_data_key(kid, context={"b": "1"})
            n += 100
        rate = n / (time.perf_counter() - start)
        await kms.aclose()
        return rate

    return {
        "adapter_direct_generate_data_key_per_s": anyio.run(run, False),
        "adapter_offload_generate_data_key_per_s": anyio.run(run, True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--synchronous", choices=["NORMAL", "FULL"], default="NORMAL")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--home", default=None, help="store directory (default: a fresh temp dir)")
    args = ap.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="envelope-bench-kms-")

    svc, kid, blob = _setup(home, args.synchronous)
    _loop(svc, kid, blob, "gdk", 0.3)
    results: dict[str, Any] = {"synchronous": args.synchronous, "cpus": os.cpu_count()}
    for op, name in (("gdk", "generate_data_key_per_s"), ("dec", "decrypt_per_s")):
        n, dt = _loop(svc, kid, blob, op, args.seconds)
        results[name] = round(n / dt, 1)
    svc.close()
    for op, name in (("gdk", "generate_data_key"), ("dec", "decrypt")):
        rate = _two_processes(home, args.synchronous, op, args.seconds)
        results[f"two_process_{name}_per_s"] = round(rate, 1)
    results.update({k: round(v, 1) for k, v in _adapter(home, min(args.seconds, 2.0)).items()})
    check = open_service(home)
    report = check.verify_audit_log()
    results["audit_records"] = report.records
    results["audit_chain_ok"] = report.ok
    check.close()

    if args.json:
        print(json.dumps(results))
    else:
        for k, v in results.items():
            print(f"{k:45s} {v}")


if __name__ == "__main__":
    main()
