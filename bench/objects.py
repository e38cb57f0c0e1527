"""Small-object throughput: the object layer against the bare primitive work, in one run.

    python bench/objects.py [--json] [--seconds S] [--rounds R] [--call-kib 1024]

For 1 KiB, 16 KiB and 256 KiB objects with a cached data key (one KMS call for the run):

- floor_per_s: a bare loop doing only one object's primitive work on one thread (HKDF-SHA-512
  key schedule, header HMAC and commitment, AES-256-GCM of the body): the limit;
- floor_all_per_s: the same loop on every core at once, one process per core (threads of one
  interpreter would share its lock and understate the limit);
- sync_encrypt_per_s / sync_decrypt_per_s: `envelope.sync.encrypt_bytes` / `decrypt_bytes`;
- async_encrypt_per_s_64 / async_decrypt_per_s_64: `await envelope.api.*_bytes`, 64 in flight;
- batch_encrypt_per_s / batch_decrypt_per_s: `envelope.sync.encrypt_many` / `decrypt_many`
  (every core).

Rounds are interleaved (every figure measured once per round, best of the rounds kept), so a
slow spell of this shared machine hits every figure alike. The top-level keys are the 16 KiB
figures, with their ratios to the floors; `by_size` holds all three sizes.

A thin wrapper: the runs are `envelope.bench.objects` (which `envelope bench encrypt` uses for
its object rows too); this prints them under the keys other tools read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envelope.bench import objects
from envelope.bench.machine import cores

SIZES = {"1k": 1 << 10, "16k": 16 << 10, "256k": 256 << 10}

#: envelope.bench.objects' figure -> this script's key (the keys other tools read).
KEYS = {
    "floor": "floor_per_s",
    "floor_all": "floor_all_per_s",
    "sync_encrypt": "sync_encrypt_per_s",
    "sync_decrypt": "sync_decrypt_per_s",
    "async_encrypt_64": "async_encrypt_per_s_64",
    "async_decrypt_64": "async_decrypt_per_s_64",
    "batch_encrypt": "batch_encrypt_per_s",
    "batch_decrypt": "batch_decrypt_per_s",
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    ap.add_argument("--seconds", type=float, default=0.5, help="per figure per round")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds; the best of each figure is kept (3)",
    )
    ap.add_argument(
        "--call-kib", type=int, default=1024, help="object bytes one timed call does (at least one)"
    )
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds < 0 or args.call_kib < 1:
        ap.error("--rounds and --call-kib must be positive, --seconds not negative")
    got = objects.measure(
        SIZES.values(), rounds=args.rounds, seconds=args.seconds, call_bytes=args.call_kib << 10
    )
    best = {name: {KEYS[k]: v for k, v in got[size].items()} for name, size in SIZES.items()}
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
    result["cores"] = cores()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
