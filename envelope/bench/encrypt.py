"""envelope's own throughput, each figure a ratio to this machine's limit measured in the run.

- `memory`: in-memory `encrypt_into`/`decrypt_into` with one worker and with every core,
  against AES-256-GCM on as many threads (`envelope.bench.machine`);
- `segments`: the same by segment size (64 KiB to 16 MiB, at most the data size), every core;
- `workers`: by number of workers (1, 2, 4, ... every core), each against AES-GCM on as many
  threads;
- `objects`: whole small objects (`encrypt_bytes`/`decrypt_bytes`, cached data key) by object
  size (1 KiB up to `max_object`), objects/s and MB/s against one thread of AES-GCM;
- `file`: file to file (`envelope.sync.encrypt|decrypt`, no fsync and with fsync) against a
  user-space copy of the same file (page cache; fsync'd);
- `peak_rss_mib`: a child process encrypting and decrypting the file, file to file.

Rounds interleave every figure of a group; each figure is the best round.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from .. import sync
from ..keyring import Keyring
from ..options import Options
from ..streams import CountingSink
from . import machine
from .objects import cached_keyring, floor_run, sync_runs
from .timing import KIB, MIB, Progress, best, interleaved, mbps, no_progress, ratio

__all__ = ("SEGMENT_SIZES", "file_to_file", "measure", "memory_runs", "object_sizes", "stream_runs")

SEGMENT_SIZES = (64 * KIB, 256 * KIB, MIB, 4 * MIB, 16 * MIB)


def object_sizes(largest: int) -> list[int]:
    """1 KiB, 16 KiB, 256 KiB, 4 MiB, 64 MiB, 1 GiB: those up to `largest`."""
    return [s for s in (KIB, 16 * KIB, 256 * KIB, 4 * MIB, 64 * MIB, 1 << 30) if s <= largest]


def memory_runs(
    data: memoryview, keyring: Keyring, options: Options
) -> tuple[Callable[[], object], Callable[[], object]]:
    """(encrypt, decrypt) of `data` in memory into reused buffers, round trip checked."""
    sealed = bytes(sync.encrypt_bytes(data, keyring=keyring, options=options))
    ct = bytearray(len(sealed))
    pt = bytearray(len(data))
    sync.decrypt_into(sealed, pt, keyring=keyring, options=options)
    if pt != data:
        raise AssertionError("in-memory round trip failed")
    return (
        lambda: sync.encrypt_into(data, ct, keyring=keyring, options=options),
        lambda: sync.decrypt_into(sealed, pt, keyring=keyring, options=options),
    )


def stream_runs(
    data: memoryview, keyring: Keyring
) -> tuple[Callable[[], object], Callable[[], object]]:
    """(encrypt, decrypt) of `data` by the streaming pipeline at the default options (bytes
    in, a `CountingSink` out): the pipeline alone, no output to write."""
    sealed = bytes(sync.encrypt_bytes(data, keyring=keyring))
    if sync.decrypt_bytes(sealed, keyring=keyring) != data:
        raise AssertionError("stream round trip failed")
    return (
        lambda: sync.encrypt(data, CountingSink(), keyring=keyring),
        lambda: sync.decrypt(sealed, CountingSink(), keyring=keyring),
    )


def in_memory(
    size: int, rounds: int, cores: int, progress: Progress = no_progress
) -> dict[str, Any]:
    """Memory, segment and worker figures, with the AES-GCM limits they are ratios to."""
    keyring = cached_keyring()
    data = memoryview(os.urandom(size))
    threads = machine.thread_counts(cores)
    runs: dict[str, Callable[[], object]] = {}
    for k in threads:
        runs[f"aes_{k}"] = machine.aes_gcm_runner(data, k)
        runs[f"enc_w{k}"], runs[f"dec_w{k}"] = memory_runs(data, keyring, Options(workers=k))
    segments = [s for s in SEGMENT_SIZES if s <= max(size, SEGMENT_SIZES[0])]
    for s in segments:
        opts = Options(workers=cores, segment_size=s)
        runs[f"enc_s{s}"], runs[f"dec_s{s}"] = memory_runs(data, keyring, opts)
    t = {k: mbps(size, best(v)) for k, v in interleaved(rounds, runs, progress=progress).items()}
    limit = {k: t[f"aes_{k}"] for k in threads}
    workers = [
        {
            "workers": k,
            "encrypt_mbps": t[f"enc_w{k}"],
            "decrypt_mbps": t[f"dec_w{k}"],
            "limit_mbps": limit[k],
            "ratio_encrypt": ratio(t[f"enc_w{k}"], limit[k]),
            "ratio_decrypt": ratio(t[f"dec_w{k}"], limit[k]),
        }
        for k in threads
    ]
    seg_rows = [
        {
            "segment_size": s,
            "encrypt_mbps": t[f"enc_s{s}"],
            "decrypt_mbps": t[f"dec_s{s}"],
            "limit_mbps": limit[cores],
            "ratio_encrypt": ratio(t[f"enc_s{s}"], limit[cores]),
            "ratio_decrypt": ratio(t[f"dec_s{s}"], limit[cores]),
        }
        for s in segments
    ]
    one, every = workers[0], workers[-1]
    return {
        "machine": {"aes_gcm_1t_mbps": limit[1], "aes_gcm_all_mbps": limit[cores]},
        "memory": {
            "encrypt_1w_mbps": one["encrypt_mbps"],
            "decrypt_1w_mbps": one["decrypt_mbps"],
            "encrypt_all_mbps": every["encrypt_mbps"],
            "decrypt_all_mbps": every["decrypt_mbps"],
            "ratio_encrypt_1w": one["ratio_encrypt"],
            "ratio_decrypt_1w": one["ratio_decrypt"],
            "ratio_encrypt_all": every["ratio_encrypt"],
            "ratio_decrypt_all": every["ratio_decrypt"],
        },
        "segments": seg_rows,
        "workers": workers,
    }


def small_objects(
    largest: int, rounds: int, progress: Progress = no_progress
) -> list[dict[str, Any]]:
    """Objects/s of whole-object encrypt and decrypt by object size (cached data key: the
    figure is the object work, not the KMS), each run moving about 4 MiB or one object.

    `limit_mbps` is bulk AES-GCM on one thread over 4 MiB, measured in these same rounds (a
    limit from the earlier memory runs swung with the machine's load between the two, and
    gave ratios above 1); a small object also pays its key schedule
    and header, which no implementation avoids, so objects up to 4 MiB are also compared with
    `floor_per_s`, a bare loop of that primitive work for one object (`objects.floor_run`,
    as `bench/objects.py` measures): `ratio_*_to_floor` is the fair figure for them."""
    keyring = cached_keyring()
    runs: dict[str, Callable[[], object]] = {}
    counts: dict[int, int] = {}
    sizes = object_sizes(largest)
    for size in sizes:
        count = counts[size] = max(1, (4 * MIB) // size)
        runs[f"enc_{size}"], runs[f"dec_{size}"] = sync_runs(os.urandom(size), keyring, count)
        if size <= _FLOORED:
            runs[f"floor_{size}"] = floor_run(size, count)
    aes_bytes = 4 * MIB
    runs["aes_1"] = machine.aes_gcm_runner(memoryview(os.urandom(aes_bytes)), 1)
    t = interleaved(rounds, runs, progress=progress)
    limit_mbps = mbps(aes_bytes, best(t["aes_1"]))
    rows = []
    for size in sizes:
        te, td, n = best(t[f"enc_{size}"]), best(t[f"dec_{size}"]), counts[size]
        row: dict[str, Any] = {
            "object_size": size,
            "encrypt_per_s": n / te,
            "decrypt_per_s": n / td,
            "encrypt_mbps": mbps(n * size, te),
            "decrypt_mbps": mbps(n * size, td),
            "limit_mbps": limit_mbps,
            "ratio_encrypt": ratio(mbps(n * size, te), limit_mbps),
            "ratio_decrypt": ratio(mbps(n * size, td), limit_mbps),
            "floor_per_s": None,
            "ratio_encrypt_to_floor": None,
            "ratio_decrypt_to_floor": None,
        }
        if size <= _FLOORED:
            floor = n / best(t[f"floor_{size}"])
            row["floor_per_s"] = floor
            row["ratio_encrypt_to_floor"] = ratio(n / te, floor)
            row["ratio_decrypt_to_floor"] = ratio(n / td, floor)
        rows.append(row)
    return rows


#: Objects up to this size are also compared with the per-object floor (larger ones are bulk
#: AES-GCM work, which `limit_mbps` measures).
_FLOORED = 4 * MIB


def file_to_file(
    directory: str, size: int, rounds: int, progress: Progress = no_progress
) -> dict[str, float]:
    """Path to path, interleaved with the copies it is compared to; each run after os.sync()
    and into a new file."""
    keyring = cached_keyring()
    src = os.path.join(directory, "plain.bin")
    machine.write_file(src, size)
    out = {
        n: os.path.join(directory, f"{n}.out")
        for n in ("copy", "copy_fsync", "enc", "dec", "enc_fsync", "dec_fsync")
    }
    sealed = os.path.join(directory, "sealed.env")
    sync.encrypt(src, sealed, keyring=keyring, durable=False)
    runs: dict[str, Callable[[], object]] = {
        "copy": lambda: machine.file_copy(src, out["copy"], fsync=False),
        "copy_fsync": lambda: machine.file_copy(src, out["copy_fsync"], fsync=True),
        "enc": lambda: sync.encrypt(src, out["enc"], keyring=keyring, durable=False),
        "dec": lambda: sync.decrypt(sealed, out["dec"], keyring=keyring, durable=False),
        "enc_fsync": lambda: sync.encrypt(src, out["enc_fsync"], keyring=keyring, durable=True),
        "dec_fsync": lambda: sync.decrypt(sealed, out["dec_fsync"], keyring=keyring, durable=True),
    }

    def before(name: str) -> None:
        if os.path.exists(out[name]):
            os.unlink(out[name])
        os.sync()

    t = {
        k: mbps(size, best(v))
        for k, v in interleaved(rounds, runs, before=before, progress=progress).items()
    }
    if not filecmp.cmp(src, out["dec"], shallow=False):  # (in pieces: no file in memory)
        raise AssertionError("file round trip failed")
    return {
        "encrypt_mbps": t["enc"],
        "decrypt_mbps": t["dec"],
        "copy_mbps": t["copy"],
        "encrypt_fsync_mbps": t["enc_fsync"],
        "decrypt_fsync_mbps": t["dec_fsync"],
        "copy_fsync_mbps": t["copy_fsync"],
        "ratio_encrypt": ratio(t["enc"], t["copy"]),
        "ratio_decrypt": ratio(t["dec"], t["copy"]),
        "ratio_encrypt_fsync": ratio(t["enc_fsync"], t["copy_fsync"]),
        "ratio_decrypt_fsync": ratio(t["dec_fsync"], t["copy_fsync"]),
    }


def child_peak_rss(src: str, directory: str) -> dict[str, float]:
    """Peak RSS of a fresh process encrypting and decrypting `src` file to file."""
    r = subprocess.run(
        [sys.executable, "-m", "envelope.bench.child", "rss", src, directory],
        check=True,
        capture_output=True,
        text=True,
    )
    got: dict[str, float] = json.loads(r.stdout.strip().splitlines()[-1])
    return got


def measure(
    *,
    size: int = 256 * MIB,
    file_size: int | None = None,
    max_object: int = 4 * MIB,
    rounds: int = 3,
    directory: str | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Every figure of this module (keys: module docstring, docs/bench.md)."""
    cores = machine.cores()
    file_size = file_size or size
    result: dict[str, Any] = {
        "cores": cores,
        "size_mib": size / MIB,
        "file_size_mib": file_size / MIB,
        "rounds": rounds,
    }
    result.update(in_memory(size, rounds, cores, progress))
    result["objects"] = small_objects(max_object, rounds, progress)
    with tempfile.TemporaryDirectory(prefix="envelope-bench-", dir=directory) as d:
        result["file"] = file_to_file(d, file_size, rounds, progress)
        rss = child_peak_rss(os.path.join(d, "plain.bin"), d)
    result["machine"]["file_copy_mbps"] = result["file"]["copy_mbps"]
    result["peak_rss_mib"] = rss["peak_mib"]
    result["peak_rss_added_mib"] = rss["peak_mib"] - rss["baseline_mib"]
    return result
