"""The limits of this machine, measured in one run: what envelope's figures are ratios to.

- `aes_gcm_1t_mbps`: AES-256-GCM (`cryptography`'s AESGCM.encrypt_into) over 1 MiB slices on
  one thread, each output at its place in one full-size buffer (what any in-memory encryption
  of a whole object must write);
- `aes_gcm_all_mbps`: the same split over one thread per core (`aes_gcm_mbps_by_threads`
  holds every thread count from 1 to the cores);
- `memcpy_mbps`: one bytearray copied into another;
- `file_copy_mbps`: a file in the page cache copied through a 4 MiB user buffer into a new
  file (no fsync): what any tool that brings bytes to user space can do at most;
- `file_copy_fsync_mbps`: the same with the output fsync'd, each run after os.sync();
- `cpu`: the CPU model and the flags that decide AES speed (aes, vaes, vpclmulqdq, avx512f,
  avx2), read from /proc/cpuinfo (empty off Linux).
"""

from __future__ import annotations

import os
import platform
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .timing import MIB, Progress, best, interleaved, mbps, median, no_progress

__all__ = ("aes_gcm_runner", "cpu_info", "file_copy", "measure", "write_file")

#: The /proc/cpuinfo flags reported (whether AES runs in hardware, and how wide).
FLAGS = ("aes", "vaes", "vpclmulqdq", "avx512f", "avx2", "sha_ni")


def cores() -> int:
    """Cores this process may run on (the affinity mask, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def filesystem_type(path: str, mounts: str = "/proc/mounts") -> str | None:
    """The type of the file system `path` is on (``ext4``, ``tmpfs``, ...), from the longest
    mount point above it; None where /proc/mounts cannot say. File figures mean another
    thing on ``tmpfs`` (no disk, fsync free) or on a file system where ``cp`` clones
    (``xfs``, ``btrfs``): a bench prints it beside them."""
    real = os.path.realpath(path)
    best_point, best_type = "", None
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best_point):
                    best_point, best_type = point, fields[2]
    except OSError:
        return None
    return best_type


def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model and AES-related flags; empty values where the system does not say."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": {flag: flag in flags for flag in FLAGS}}


def aes_gcm_runner(
    data: memoryview, threads: int, *, in_cache: bool = False
) -> Callable[[], None]:
    """A run that encrypts `data` in 1 MiB slices with AES-256-GCM on `threads` threads, each
    output written at its place in one full-size buffer; `in_cache`: on one thread, every
    output into one reused 1 MiB buffer (always in cache: AES alone, no memory writes)."""
    aead = AESGCM(os.urandom(32))
    nonce, aad = bytes(12), bytes(32)
    n = len(data)
    if in_cache:
        small = memoryview(bytearray(MIB + 16))

        def reused() -> None:
            for i in range(0, n, MIB):
                aead.encrypt_into(nonce, data[i : i + MIB], aad, small[: min(MIB, n - i) + 16])

        return reused
    out = memoryview(bytearray(n + (n // MIB + 1) * 16))

    def span(lo: int, hi: int) -> None:
        for i in range(lo, hi, MIB):
            o = i + 16 * (i // MIB)
            end = min(i + MIB, hi)
            aead.encrypt_into(nonce, data[i:end], aad, out[o : o + end - i + 16])

    if threads <= 1:
        return lambda: span(0, n)
    step = max(MIB, -(-n // threads // MIB) * MIB)
    spans = [(lo, min(n, lo + step)) for lo in range(0, n, step)]

    def run() -> None:
        workers = [threading.Thread(target=span, args=s) for s in spans]
        for t in workers:
            t.start()
        for t in workers:
            t.join()

    return run


def write_file(path: str, size: int) -> None:
    """`size` random-looking bytes at `path`: a 1 MiB random block repeated."""
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, MIB)
            f.write(block[:n])
            left -= n


def file_copy(src: str, dst: str, *, fsync: bool) -> None:
    """Copy through a 4 MiB user-space buffer (not copy_file_range: envelope cannot avoid
    bringing the bytes to user space, so this is its reference)."""
    buf = bytearray(4 * MIB)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        while n := fi.readinto(buf):
            fo.write(view[:n])
        if fsync:
            os.fsync(fo.fileno())


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def memory_limits(
    size: int, rounds: int, threads: list[int], progress: Progress = no_progress
) -> dict[str, Any]:
    """AES-GCM at each thread count and memory copy, interleaved over the same data."""
    data = memoryview(os.urandom(size))
    # through a memoryview: `bytearray[:] = ...` goes through a temporary copy (about a
    # tenth of the speed measured here), a memoryview's slice assignment is one memcpy
    dst = memoryview(bytearray(size))
    runs: dict[str, Callable[[], object]] = {f"aes_{k}": aes_gcm_runner(data, k) for k in threads}

    def memcpy() -> None:
        dst[:] = data

    runs["memcpy"] = memcpy
    t = interleaved(rounds, runs, progress=progress)
    by_threads = {str(k): mbps(size, best(t[f"aes_{k}"])) for k in threads}
    return {
        "aes_gcm_1t_mbps": by_threads[str(threads[0])],
        "aes_gcm_all_mbps": by_threads[str(threads[-1])],
        "aes_gcm_mbps_by_threads": by_threads,
        "aes_gcm_1t_median_mbps": mbps(size, median(t[f"aes_{threads[0]}"])),
        "memcpy_mbps": mbps(size, best(t["memcpy"])),
    }


def file_limits(
    directory: str, size: int, rounds: int, progress: Progress = no_progress
) -> dict[str, float]:
    """Page-cache and fsync'd file copies of one file, interleaved, each after os.sync()."""
    src = os.path.join(directory, "machine-src.bin")
    write_file(src, size)
    outs = {"copy": os.path.join(directory, "copy.bin"), "fsync": os.path.join(directory, "f.bin")}
    runs: dict[str, Callable[[], object]] = {
        "copy": lambda: file_copy(src, outs["copy"], fsync=False),
        "fsync": lambda: file_copy(src, outs["fsync"], fsync=True),
    }

    def before(name: str) -> None:
        _remove(outs[name])  # a new file each time: replacing one costs an ext4 flush
        os.sync()

    try:
        t = interleaved(rounds, runs, before=before, progress=progress)
    finally:
        for path in (src, *outs.values()):
            _remove(path)
    return {
        "file_copy_mbps": mbps(size, best(t["copy"])),
        "file_copy_fsync_mbps": mbps(size, best(t["fsync"])),
    }


def thread_counts(n: int) -> list[int]:
    """1, 2, 4, ... up to `n`, and `n` itself."""
    out, k = [], 1
    while k < n:
        out.append(k)
        k *= 2
    out.append(n)
    return out


def measure(
    *,
    size: int = 256 * MIB,
    file_size: int | None = None,
    rounds: int = 3,
    directory: str | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Every limit of this machine (keys: module docstring, docs/bench.md)."""
    n = cores()
    result: dict[str, Any] = {
        "cores": n,
        "cpu": cpu_info(),
        "size_mib": size / MIB,
        "rounds": rounds,
    }
    result.update(memory_limits(size, rounds, thread_counts(n), progress))
    with tempfile.TemporaryDirectory(prefix="envelope-bench-", dir=directory) as d:
        result.update(file_limits(d, file_size or size, rounds, progress))
    return result
