"""Encrypt, then decrypt, a generated stream of N MiB; print this process's peak RSS in MiB.

    python bench/rss_child.py 2048

Run as its own process so the figure is the engine's alone (bench/core.py and
tests/test_memory.py both use it). The stream is an async iterator in and a discarding sink
out; the decrypt side reads ciphertext as a second encryption produces it, so neither side
ever holds the object.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import anyio

from envelope import api
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms

MIB = 1 << 20


class CountingSink:
    def __init__(self) -> None:
        self.n = 0

    async def write(self, data: memoryview) -> None:
        self.n += len(data)

    async def commit(self) -> None:
        return None

    async def abort(self) -> None:
        return None


async def generated(total: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(total // len(block)):
        yield block


def peak_rss_mib() -> int:
    """VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024


async def main(total: int) -> None:
    kms = MemoryKms()
    keyring = Keyring(kms, kms.create_key())
    sink = CountingSink()
    await api.encrypt(generated(total), sink, keyring=keyring)
    assert sink.n > total

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
    assert out.n == total, out.n
    print(peak_rss_mib())


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) * MIB)
