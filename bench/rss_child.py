"""Peak RSS of the engine alone, measured in a process of its own.

    python bench/rss_child.py 2048
        encrypt, then decrypt, a generated stream of 2048 MiB; print the peak RSS in MiB
    python bench/rss_child.py write OBJ --mib 320 --segment-size 67108864
        encrypt a generated 320 MiB stream into the object file OBJ (key file beside it)
    python bench/rss_child.py read OBJ [--memory-budget BYTES] [--workers N] [--out PATH]
        decrypt OBJ into a discarding sink (or, with --out, file to file as the CLI does);
        print {"peak_mib", "baseline_mib", ...} as JSON

Run as its own process so the figure is the engine's alone (bench/core.py, tests/test_memory.py
and tests/test_memory_budget.py use it). The stream is an async iterator in and a discarding
sink out; in the first form the decrypt side reads ciphertext as a second encryption produces
it, so neither side ever holds the object. `read` measures one decrypting pipeline reading a
file: `baseline_mib` is the RSS just before it starts (interpreter, imports, key), so
`peak_mib - baseline_mib` is what the pipeline itself added.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from envelope import api, sync
from envelope.keyring import Keyring
from envelope.kms.filekey import FileKeyBackend, generate_key_file
from envelope.kms.memory import MemoryKms
from envelope.streams import CountingSink

MIB = 1 << 20


async def generated(total: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(total // len(block)):
        yield block


def _status_mib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) // 1024


def peak_rss_mib() -> int:
    """VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak."""
    return _status_mib("VmHWM")


async def round_trip(total: int) -> None:
    kms = MemoryKms()
    keyring = Keyring(kms, kms.create_key())
    sink = CountingSink()
    await api.encrypt(generated(total), sink, keyring=keyring)
    assert sink.bytes > total

    send, recv = anyio.create_memory_object_stream[bytes](4)

    class Pipe(CountingSink):
        async def write(self, data: memoryview) -> None:
            await send.send(bytes(data))

        async def commit(self) -> None:
            await send.aclose()

    async def ciphertext() -> AsyncIterator[bytes]:
        async with recv:
            async for chunk in recv:
                yield chunk

    async def produce() -> None:
        await api.encrypt(generated(total), Pipe(), keyring=keyring)

    out = CountingSink()
    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await api.decrypt(ciphertext(), out, keyring=keyring)
    assert out.bytes == total, out.bytes
    print(peak_rss_mib())


def _keyring(obj: Path) -> Keyring:
    key = obj.with_name(obj.name + ".key")
    if not key.exists():
        generate_key_file(str(key))
    backend = FileKeyBackend(key)
    return Keyring(backend, backend.key_id)


def _options(args: argparse.Namespace, **extra: int) -> api.Options:
    kw = dict(extra)
    if args.workers is not None:
        kw["workers"] = args.workers
    if args.memory_budget is not None:  # absent: whatever the engine under test defaults to
        kw["memory_budget"] = args.memory_budget
    return api.Options(**kw)


async def write_object(args: argparse.Namespace) -> None:
    obj = Path(args.object)
    info = await api.encrypt(
        generated(args.mib * MIB),
        str(obj),
        keyring=_keyring(obj),
        options=_options(args, segment_size=args.segment_size),
    )
    print(json.dumps({"plaintext_len": info.plaintext_len, "segment_size": info.segment_size}))


def _report(baseline: int, info: api.ObjectInfo) -> None:
    print(
        json.dumps(
            {
                "peak_mib": peak_rss_mib(),
                "baseline_mib": baseline,
                "plaintext_len": info.plaintext_len,
                "segment_size": info.segment_size,
            }
        )
    )


async def read_object(args: argparse.Namespace) -> None:
    """The async pipeline: file in, discarding sink out."""
    obj = Path(args.object)
    keyring = _keyring(obj)
    options = _options(args)
    baseline = _status_mib("VmRSS")
    out = CountingSink()
    info = await api.decrypt(str(obj), out, keyring=keyring, options=options)
    assert out.bytes == info.plaintext_len, (out.bytes, info.plaintext_len)
    _report(baseline, info)


def read_object_to_file(args: argparse.Namespace) -> None:
    """The blocking call file to file (what the CLI runs for a regular file); the output,
    not fsynced, is removed afterwards."""
    obj = Path(args.object)
    keyring = _keyring(obj)
    options = _options(args)
    baseline = _status_mib("VmRSS")
    info = sync.decrypt(str(obj), args.out, keyring=keyring, options=options, durable=False)
    assert os.path.getsize(args.out) == info.plaintext_len
    os.unlink(args.out)
    _report(baseline, info)


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1].isdigit():
        anyio.run(round_trip, int(sys.argv[1]) * MIB)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "mode",
        choices=("write", "read"),
        help="write: encrypt a stream to OUT; read: decrypt OUT to nowhere",
    )
    ap.add_argument("object", help="object file (its key file is OBJECT.key)")
    ap.add_argument("--mib", type=int, default=320, help="write: plaintext MiB")
    ap.add_argument("--segment-size", type=int, default=1 << 20, help="write: segment size")
    ap.add_argument("--memory-budget", type=int, default=None, help="pipeline budget, bytes")
    ap.add_argument(
        "--workers", type=int, default=None, help="engine workers (default: every core)"
    )
    ap.add_argument("--out", help="read: decrypt file to file into OUT (then removed)")
    args = ap.parse_args()
    if args.mode == "read" and args.out:
        read_object_to_file(args)
        return
    anyio.run(write_object if args.mode == "write" else read_object, args)


if __name__ == "__main__":
    main()
