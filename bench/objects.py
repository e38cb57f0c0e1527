"""Small-object throughput: the object layer against the bare primitive work, in one run.

    python bench/objects.py [--json] [--seconds S] [--rounds R]

For 1 KiB, 16 KiB and 256 KiB objects with a cached data key (one KMS call for the run):

- floor_per_s: a bare loop doing only one object's primitive work on one thread (HKDF-SHA-512
  key schedule, header HMAC and commitment, AES-256-GCM of the body): the limit;
- floor_all_per_s: the same loop on every core at once;
- sync_encrypt_per_s / sync_decrypt_per_s: `envelope.sync.encrypt_bytes` / `decrypt_bytes`;
- async_encrypt_per_s_64 / async_decrypt_per_s_64: `await envelope.api.*_bytes`, 64 in flight;
- batch_encrypt_per_s / batch_decrypt_per_s: `envelope.sync.encrypt_many` / `decrypt_many`
  (every core).

Rounds are interleaved (every figure measured once per round, best of the rounds kept), so a
slow spell of this shared machine hits every figure alike. The top-level keys are the 16 KiB
figures, with their ratios to the floors; `by_size` holds all three sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envelope import api, sync
from envelope.hazmat.format import MESSAGE_ID_LEN
from envelope.hazmat.keyschedule import ObjectKeys, seal_header
from envelope.hazmat.segments import Layout, seal_segments
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms

SIZES = {"1k": 1 << 10, "16k": 16 << 10, "256k": 256 << 10}
CORES = os.cpu_count() or 1


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Objects per second of `fn` (which does some objects and returns how many)."""
    fn()  # warm
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n / (time.perf_counter() - t0)


def floor_loop(size: int, reps: int) -> Callable[[], int]:
    data = os.urandom(size)
    dk = bytearray(os.urandom(32))
    kms = MemoryKms()
    kid = kms.create_key("floor")
    wk = anyio.run(lambda: kms.generate_data_key(kid, context={})).wrapped
    layout_cache: dict[int, bytearray] = {}

    def run() -> int:
        for _ in range(reps):
            mid = os.urandom(MESSAGE_ID_LEN)
            keys = ObjectKeys(dk, mid, seg_log2=20)
            header, hd = seal_header(
                keys, seg_log2=20, message_id=mid, kms_context={}, object_context={},
                wrapped_keys=(wk,),
            )
            layout = Layout(len(header), 20)
            total = layout.ciphertext_length(size)
            out = layout_cache.get(total)
            if out is None:
                out = layout_cache[total] = bytearray(total)
            seal_segments(keys, hd, 0, memoryview(data), memoryview(out)[len(header) :], 20, True)
        return reps

    return run


def on_all_cores(make: Callable[[], Callable[[], int]], seconds: float) -> float:
    fns = [make() for _ in range(CORES)]
    counts = [0] * CORES
    start = threading.Barrier(CORES + 1)

    def worker(i: int) -> None:
        fns[i]()
        start.wait()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            counts[i] += fns[i]()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CORES)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def measure(size: int, seconds: float, keyring: Keyring) -> dict[str, float]:
    data = os.urandom(size)
    reps = max(1, (1 << 20) // size)
    sealed = sync.encrypt_bytes(data, keyring=keyring)
    batch = [data] * (reps * 4)
    sealed_batch = sync.encrypt_many(batch, keyring=keyring)

    def sync_enc() -> int:
        for _ in range(reps):
            sync.encrypt_bytes(data, keyring=keyring)
        return reps

    def sync_dec() -> int:
        for _ in range(reps):
            sync.decrypt_bytes(sealed, keyring=keyring)
        return reps

    def in_flight(fn: Callable[[], object]) -> Callable[[], int]:
        async def many() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(64):
                    tg.start_soon(fn)

        rounds = max(1, reps // 8)

        def run() -> int:
            anyio.run(_loop, many, rounds)
            return rounds * 64

        return run

    async def enc() -> None:
        await api.encrypt_bytes(data, keyring=keyring)

    async def dec() -> None:
        await api.decrypt_bytes(sealed, keyring=keyring)

    def batch_enc() -> int:
        sync.encrypt_many(batch, keyring=keyring)
        return len(batch)

    def batch_dec() -> int:
        sync.decrypt_many(sealed_batch, keyring=keyring)
        return len(batch)

    return {
        "floor_per_s": rate(floor_loop(size, reps), seconds),
        "floor_all_per_s": on_all_cores(lambda: floor_loop(size, reps), seconds),
        "sync_encrypt_per_s": rate(sync_enc, seconds),
        "sync_decrypt_per_s": rate(sync_dec, seconds),
        "async_encrypt_per_s_64": rate(in_flight(enc), seconds),
        "async_decrypt_per_s_64": rate(in_flight(dec), seconds),
        "batch_encrypt_per_s": rate(batch_enc, seconds),
        "batch_decrypt_per_s": rate(batch_dec, seconds),
    }


async def _loop(many: Callable[[], Awaitable[None]], rounds: int) -> None:
    for _ in range(rounds):
        await many()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=0.5, help="per figure per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    kms = MemoryKms()
    keyring = Keyring(kms, kms.create_key("bench"), cache=CachePolicy())
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, size in SIZES.items():
            got = measure(size, args.seconds, keyring)
            cur = best.setdefault(name, {})
            for k, v in got.items():
                cur[k] = max(cur.get(k, 0.0), v)
    result: dict[str, object] = {k: round(v) for k, v in best["16k"].items()}
    f, fa = best["16k"]["floor_per_s"], best["16k"]["floor_all_per_s"]
    result["ratios"] = {
        "sync_encrypt": round(best["16k"]["sync_encrypt_per_s"] / f, 3),
        "sync_decrypt": round(best["16k"]["sync_decrypt_per_s"] / f, 3),
        "async_encrypt_64_all": round(best["16k"]["async_encrypt_per_s_64"] / fa, 3),
        "async_decrypt_64_all": round(best["16k"]["async_decrypt_per_s_64"] / fa, 3),
        "batch_encrypt_all": round(best["16k"]["batch_encrypt_per_s"] / fa, 3),
        "batch_decrypt_all": round(best["16k"]["batch_decrypt_per_s"] / fa, 3),
    }
    result["by_size"] = {n: {k: round(v) for k, v in d.items()} for n, d in best.items()}
    result["cores"] = CORES
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
