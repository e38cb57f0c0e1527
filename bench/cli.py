"""The command line as a user runs it: whole process, a file in the page cache, against `cp`.

    python bench/cli.py [--json] [--size-mib 512] [--rounds 3]

- cli_encrypt_mbps / cli_decrypt_mbps: `envelope encrypt|decrypt IN OUT --key-file K` (no
  fsync, the default), whole process, plaintext MB per second;
- cp_mbps: `cp` of the same file, same folder, same page cache;
- startup_s / startup_rss_mib: `envelope encrypt` of a 1-byte file, wall time and peak RSS.

A thin wrapper over `envelope bench peers` (`envelope.bench.peers`, only `envelope` and `cp`,
whole process, timed by its launcher with the child's peak RSS from wait4) and its `startup`.
Rounds are interleaved (cp and envelope take turns, in an order that turns from round to
round) and the best of each figure is kept, so a slow spell of this shared machine hits every
figure alike; the start-up rounds follow. Every command writes a new file, its previous output
removed just before it runs: replacing a file costs a flush on ext4 (auto_da_alloc). Ratios
to `cp_mbps` are printed too: the targets are encrypt and decrypt >= 1.0 of cp.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envelope.bench import peers
from envelope.bench.machine import cores

MIB = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    ap.add_argument("--size-mib", type=int, default=512, help="file size in MiB (512)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds; the best of each figure is kept (3)",
    )
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    if args.size_mib < 1 or args.rounds < 1:
        ap.error("--size-mib and --rounds must be positive")
    if args.dir is not None:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    got = peers.measure(
        size=args.size_mib * MIB,
        rounds=args.rounds,
        directory=args.dir,
        only=("envelope", "cp"),
        in_process=False,
    )
    rows = {row["name"]: row for row in got["rows"]}
    for row in rows.values():
        if row["skipped"]:
            raise SystemExit(f"{row['name']}: {row['reason']} {row['error'] or ''}")
    start = peers.startup(args.rounds, args.dir)
    best = {
        "cp_mbps": rows["cp"]["encrypt_mbps"],
        # cp's run in the decrypt slot of each round (the same page cache state as envelope's
        # decrypt), the like-for-like figure for decrypt_to_cp
        "cp_decrypt_slot_mbps": rows["cp"]["decrypt_mbps"],
        "cli_encrypt_mbps": rows["envelope"]["encrypt_mbps"],
        "cli_decrypt_mbps": rows["envelope"]["decrypt_mbps"],
    }
    result: dict[str, object] = {k: round(v) for k, v in best.items()}
    result["startup_s"] = round(start["seconds"], 3)
    result["startup_rss_mib"] = round(start["peak_rss_mib"], 1)
    cp = best["cp_mbps"]
    result["ratios"] = {
        "encrypt_to_cp": round(best["cli_encrypt_mbps"] / cp, 3),
        "decrypt_to_cp": round(best["cli_decrypt_mbps"] / best["cp_decrypt_slot_mbps"], 3),
    }
    result["size_mib"] = args.size_mib
    result["cores"] = cores()
    result["filesystem"] = got.get("filesystem")  # (tmpfs, or a cp that clones: not a copy)
    if result["filesystem"] in ("tmpfs", "xfs", "btrfs", "zfs", "bcachefs"):
        print(
            f"bench/cli.py: note: the work folder is on {result['filesystem']}: cp_mbps is "
            "not a disk copy there (give --dir on an ext4 disk to compare with the docs)",
            file=sys.stderr,
        )
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
