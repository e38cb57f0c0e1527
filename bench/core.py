"""Core throughput against the raw AES-GCM limit, all measured in one run on the same data.

    python bench/core.py [--json] [--mib 256] [--file-mib 1024]

Prints plaintext MB/s and each figure's ratio to its reference:
- raw_mbps: AESGCM.encrypt_into over 1 MiB slices in one thread, into one reused buffer
  (the limit; no framing, no key schedule, no thread hand-off, output always in cache);
- raw_full_mbps: the same calls, each output written at its place in one full-size buffer,
  which any in-memory encryption of the whole object must do (memory write traffic included);
- raw_all_mbps: raw_full split over one thread per core: what this machine allows in
  parallel (raw_scaling = raw_all / raw_full);
- encrypt/decrypt_1w_mbps: envelope in memory with one worker (encrypt_into/decrypt_into into
  reused buffers), and *_all_mbps with every core;
- file_encrypt/decrypt_mbps: path to path (atomic temp file, fsync, rename) against copy_mbps,
  a plain buffered copy of the same file with the same fsync, rounds interleaved, each run
  after os.sync() so that writeback of one run does not throttle the next;
- stream_encrypt/decrypt_mbps: the streaming pipeline alone at the defaults (in-memory
  bytes in, a discarding sink out), with every core;
- peak_rss_mib: a child process that encrypts and then decrypts a 2 GiB generated stream
  (async iterator in, discarding sink out) reports its peak RSS;
- decrypt_rss_<seg>_mib: a child decrypting a file object written with 64 MiB or 1 MiB
  segments (`--seg-rss-mib` of plaintext) into a discarding sink, at the default memory
  budget (256 MiB) and at 160 MiB: peak RSS and `_added`, the peak minus the child's RSS
  just before the decrypt (what the pipeline itself held).
The throughput runs are `envelope.bench`'s (machine.aes_gcm_runner, encrypt.memory_runs,
encrypt.stream_runs, encrypt.file_to_file), so these figures and `envelope bench`'s are the
same measurement; the RSS children are bench/rss_child.py.
The machines are shared and noisy: every figure is the best of a few repetitions, and the
targets are ratios within this one run (one worker >= 0.85 raw; all cores >= 1.7x one worker;
file to file >= 0.8 copy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable

from envelope.bench import encrypt, machine, timing
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.options import Options

MIB = 1 << 20


def memory_runs(data: memoryview, keyring: Keyring, cores: int) -> dict[str, Callable[[], object]]:
    """The in-memory runs, on the same data:
    raw: AES-GCM over 1 MiB slices into one reused 1 MiB buffer (output in cache);
    raw_full / raw_all: each output at its place in a full-size buffer, on one thread / on
    every core (`envelope bench machine`'s AES-GCM limits);
    enc/dec_1w and enc/dec_all: envelope's encrypt_into/decrypt_into into reused buffers;
    stream_enc/dec: the streaming pipeline into a sink that keeps nothing."""
    runs: dict[str, Callable[[], object]] = {
        "raw": machine.aes_gcm_runner(data, 1, in_cache=True),
        "raw_full": machine.aes_gcm_runner(data, 1),
        "raw_all": machine.aes_gcm_runner(data, cores),
    }
    runs["enc_1w"], runs["dec_1w"] = encrypt.memory_runs(data, keyring, Options(workers=1))
    runs["enc_all"], runs["dec_all"] = encrypt.memory_runs(data, keyring, Options(workers=cores))
    runs["stream_enc"], runs["stream_dec"] = encrypt.stream_runs(data, keyring)
    return runs


def rss_child(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "rss_child.py"), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return r.stdout.strip().splitlines()[-1]


def peak_rss_mib(total: int) -> int:
    return int(rss_child(str(total)))


def decrypt_rss(directory: str, mib: int) -> dict[str, int]:
    """Peak RSS decrypting objects written with 64 MiB and 1 MiB segments, each in a fresh
    child: at the default budget, and the 64 MiB one also at a 160 MiB budget."""
    out: dict[str, int] = {}
    for name, seg in (("64mib_seg", 64 * MIB), ("1mib_seg", MIB)):
        obj = os.path.join(directory, f"{name}.env")
        rss_child("write", obj, "--mib", str(mib), "--segment-size", str(seg))
        budgets = (("", None), ("_budget160", 160 * MIB)) if seg > MIB else (("", None),)
        for tag, budget in budgets:
            extra = ("--memory-budget", str(budget)) if budget else ()
            r = json.loads(rss_child("read", obj, *extra))
            out[f"decrypt_rss_{name}{tag}_mib"] = r["peak_mib"]
            out[f"decrypt_rss_{name}{tag}_added_mib"] = r["peak_mib"] - r["baseline_mib"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    ap.add_argument("--mib", type=int, default=256, help="in-memory data size")
    ap.add_argument("--file-mib", type=int, default=1024, help="file-to-file size")
    ap.add_argument("--rss-mib", type=int, default=2048, help="stream size for peak RSS")
    ap.add_argument(
        "--seg-rss-mib", type=int, default=256, help="object size for the decrypt RSS figures"
    )
    ap.add_argument("--reps", type=int, default=5, help="in-memory rounds")
    ap.add_argument("--file-reps", type=int, default=3, help="file-to-file rounds")
    args = ap.parse_args()

    kms = MemoryKms()
    keyring = Keyring(kms, kms.create_key())
    data = memoryview(os.urandom(args.mib * MIB))
    size_mb = len(data) / 1e6
    cores = machine.cores()

    t = {
        name: timing.best(times)
        for name, times in timing.interleaved(args.reps, memory_runs(data, keyring, cores)).items()
    }
    t_raw, t_raw_full, t_raw_all = t["raw"], t["raw_full"], t["raw_all"]
    e1, d1, ea, da = t["enc_1w"], t["dec_1w"], t["enc_all"], t["dec_all"]
    with tempfile.TemporaryDirectory(
        prefix="envelope-bench-", dir=os.environ.get("BENCH_DIR")
    ) as d:
        files = encrypt.file_to_file(d, args.file_mib * MIB, args.file_reps)
        seg_rss = decrypt_rss(d, args.seg_rss_mib)
    rss = peak_rss_mib(args.rss_mib)

    r = {
        "cores": cores,
        "raw_mbps": size_mb / t_raw,
        "raw_full_mbps": size_mb / t_raw_full,
        "raw_all_mbps": size_mb / t_raw_all,
        "encrypt_1w_mbps": size_mb / e1,
        "decrypt_1w_mbps": size_mb / d1,
        "encrypt_all_mbps": size_mb / ea,
        "decrypt_all_mbps": size_mb / da,
        "stream_encrypt_mbps": size_mb / t["stream_enc"],
        "stream_decrypt_mbps": size_mb / t["stream_dec"],
        "file_encrypt_mbps": files["encrypt_fsync_mbps"],
        "file_decrypt_mbps": files["decrypt_fsync_mbps"],
        "copy_mbps": files["copy_fsync_mbps"],
        "peak_rss_mib": rss,
        "rss_stream_mib": args.rss_mib,
        **seg_rss,
        "bench_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    r["ratio_encrypt_1w_to_raw"] = r["encrypt_1w_mbps"] / r["raw_mbps"]
    r["ratio_decrypt_1w_to_raw"] = r["decrypt_1w_mbps"] / r["raw_mbps"]
    r["ratio_encrypt_1w_to_raw_full"] = r["encrypt_1w_mbps"] / r["raw_full_mbps"]
    r["ratio_decrypt_1w_to_raw_full"] = r["decrypt_1w_mbps"] / r["raw_full_mbps"]
    r["raw_scaling"] = r["raw_all_mbps"] / r["raw_full_mbps"]  # what the machine allows
    r["ratio_encrypt_all_to_raw_all"] = r["encrypt_all_mbps"] / r["raw_all_mbps"]
    r["ratio_decrypt_all_to_raw_all"] = r["decrypt_all_mbps"] / r["raw_all_mbps"]
    r["ratio_encrypt_all_to_1w"] = r["encrypt_all_mbps"] / r["encrypt_1w_mbps"]
    r["ratio_decrypt_all_to_1w"] = r["decrypt_all_mbps"] / r["decrypt_1w_mbps"]
    r["ratio_file_encrypt_to_copy"] = r["file_encrypt_mbps"] / r["copy_mbps"]
    r["ratio_file_decrypt_to_copy"] = r["file_decrypt_mbps"] / r["copy_mbps"]
    r = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        for k, v in r.items():
            print(f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
