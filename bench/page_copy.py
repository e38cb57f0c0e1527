"""How fast the kernel copies a cached file into user memory, by where the buffer sits.

    python bench/page_copy.py [--mib 512] [--batch-kib 4096] [--json]

Reads one file in the page cache in batches with `preadv` into (a) a buffer whose bytes start
16 bytes into a page (where a freshly allocated large bytearray's data starts: glibc serves
it by `mmap`, behind a 16-byte chunk header) and (b) the same buffer placed at the file
offset modulo a page (what `envelope.objects.PageBuffer` does), best of 3 each, in turns.
On the AMD EPYC VMs of docs/performance.md (Linux 6.18), (a) ran at 1.3-1.6 GB/s and (b) at
5.8-6.1 GB/s: the kernel's `rep movsb` is slow when the destination sits a few bytes past the
source modulo a page. Other CPUs may show no difference.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import tempfile
import time

PAGE = 4096


def read_all(fd: int, size: int, view: memoryview) -> float:
    """MB/s of reading the whole file through `view` (best of 3)."""
    best = 0.0
    for _ in range(3):
        t0, off = time.perf_counter(), 0
        while off < size:
            n = os.preadv(fd, [view], off)
            if not n:
                break
            off += n
        best = max(best, size / (time.perf_counter() - t0) / 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=512, help="MiB copied (512)")
    ap.add_argument("--batch-kib", type=int, default=4096, help="KiB per read/write (4096)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = ap.parse_args()
    batch = args.batch_kib << 10
    with tempfile.NamedTemporaryFile(prefix="envelope-bench-page-") as f:
        block = os.urandom(1 << 20)
        for _ in range(args.mib):
            f.write(block)
        f.flush()
        size = args.mib << 20
        fd = f.fileno()
        read_all(fd, size, memoryview(bytearray(batch)))  # warm: the file in the page cache
        buf = memoryview(mmap.mmap(-1, batch + PAGE, flags=mmap.MAP_PRIVATE))
        runs = {  # (every batch starts at a multiple of the batch size in the file: 0 mod PAGE)
            "bytearray_like_mbps": buf[16 : 16 + batch],
            "page_placed_mbps": buf[:batch],
        }
        result = dict.fromkeys(runs, 0.0)
        for _ in range(2):
            for name, view in runs.items():
                result[name] = max(result[name], read_all(fd, size, view))
        out = {k: round(v) for k, v in result.items()}
        out["batch_kib"] = args.batch_kib
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            for k, v in out.items():
                print(f"{k}: {v}")


if __name__ == "__main__":
    main()
