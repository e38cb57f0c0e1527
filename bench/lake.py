"""Lake jobs against a plain copy of the same tree with the same parallelism, in one run.

    python bench/lake.py [--json] [--small 10000] [--large 8] [--large-mib 256]

On generated data on the local filesystem: N small objects of 16 KiB and M large objects,
encrypted and decrypted by `envelope.lake.jobs` over the embedded KMS (with the data-key
cache, as the CLI runs it), against a plain copy of the same tree through the same runner
(same concurrency, same one-hop read-and-write of small objects, streamed large objects).
Every timed run starts after os.sync() so that one run's writeback does not throttle the next,
and the three jobs take turns over several rounds (best of each).
Targets: small objects >= 0.5 of the copy's objects/s, large >= 0.8 of its MB/s, KMS calls
<= 1% of objects.

A thin wrapper over `envelope.bench.lake` (`generate_tree`, `compare_jobs`, `copy_prefix`),
printing the keys other tools read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envelope.api import Options
from envelope.bench.lake import compare_jobs, generate_tree
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.local import open_local
from envelope.lake import jobs

MIB = 1 << 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    ap.add_argument(
        "--small", type=int, default=10_000, help="small objects (16 KiB) in the tree (10000)"
    )
    ap.add_argument("--large", type=int, default=8, help="large objects in the tree (8)")
    ap.add_argument(
        "--large-mib",
        type=int,
        default=256,
        help="MiB per large object (256); the tree goes under $BENCH_DIR or the system temp",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best of)")
    args = ap.parse_args()
    if args.small < 1 or args.large < 1 or args.large_mib < 1 or args.rounds < 1:
        ap.error("--small, --large, --large-mib and --rounds must be positive")

    with tempfile.TemporaryDirectory(
        prefix="envelope-lake-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        root = Path(tmp)
        generate_tree(root / "src", args.small, args.large, args.large_mib * MIB)
        backend = open_local(root / "home")
        kid = backend.service.create_key()["KeyMetadata"]["KeyId"]
        keyring = Keyring(backend, kid, cache=CachePolicy())
        options = jobs.LakeOptions(engine=Options(workers=2, depth=4))
        audit_before = len(backend.service.audit_tail(10_000_000))
        parts = {
            part: compare_jobs(root / "src" / part, root / "out" / part, keyring, options,
                               args.rounds)
            for part in ("small", "large")
        }  # fmt: skip
        kms_calls = len(backend.service.audit_tail(10_000_000)) - audit_before
        anyio.run(keyring.aclose)

    small, large = parts["small"], parts["large"]
    small_n, large_b = small["objects"], large["bytes"]
    out: dict[str, float | int] = {
        "objects": int(small["objects"] + large["objects"]),
        "small_objects": int(small_n),
        "small_objects_per_s": small_n / small["encrypt_s"],
        "small_decrypt_objects_per_s": small_n / small["decrypt_s"],
        "small_copy_objects_per_s": small_n / small["copy_s"],
        "large_objects": int(large["objects"]),
        "large_mbps": large_b / large["encrypt_s"] / 1e6,
        "large_decrypt_mbps": large_b / large["decrypt_s"] / 1e6,
        "large_copy_mbps": large_b / large["copy_s"] / 1e6,
        "kms_calls": kms_calls,
    }
    out["ratio_small_encrypt_to_copy"] = (
        out["small_objects_per_s"] / out["small_copy_objects_per_s"]
    )
    out["ratio_small_decrypt_to_copy"] = (
        out["small_decrypt_objects_per_s"] / out["small_copy_objects_per_s"]
    )
    out["ratio_large_encrypt_to_copy"] = out["large_mbps"] / out["large_copy_mbps"]
    out["ratio_large_decrypt_to_copy"] = out["large_decrypt_mbps"] / out["large_copy_mbps"]
    out["kms_calls_per_object"] = kms_calls / out["objects"]
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
