"""One mutation engine for every header and object fuzzer (hypothesis, the seeded loop, atheris).

A mutation is a list of integer triples ``(op, position, argument)``; `apply` interprets them
over a seed input. Keeping the description as plain integers lets hypothesis draw (and shrink)
them, lets `random.Random` generate millions quickly, and makes a failing case printable.
The operations are the ones that break parsers: bit flips, boundary values written over a byte,
a u16 or a u32 (where lengths live), insertions, deletions, truncation, duplication and splices
with another input.
"""

from __future__ import annotations

import random
import struct

#: Values a length or count field is most likely to be mishandled at.
BOUNDARY_U16 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 4096, 8192, 8193, 16384, 16385, 0x7FFF, 0xFFFF)
BOUNDARY_U32 = (0, 1, 128, 129, 0xFFFF, 1 << 20, (1 << 20) + 1, 0x7FFFFFFF, 0xFFFFFFFF)
BOUNDARY_U8 = (0, 1, 8, 9, 11, 12, 26, 27, 64, 65, 0x7F, 0x80, 0xFF)

OPS = 9


def apply(data: bytes, ops: list[tuple[int, int, int]], other: bytes = b"") -> bytes:
    buf = bytearray(data)
    for op, pos, arg in ops:
        n = len(buf)
        at = pos % (n + 1)
        kind = op % OPS
        if kind == 0 and n:  # flip one bit
            buf[at % n] ^= 1 << (arg % 8)
        elif kind == 1 and n:  # a byte at a boundary value
            buf[at % n] = BOUNDARY_U8[arg % len(BOUNDARY_U8)]
        elif kind == 2 and n >= 2:  # a u16 at a boundary value (or near the input's length)
            v = BOUNDARY_U16[arg % len(BOUNDARY_U16)] if arg % 4 else (n + arg // 4 % 5 - 2)
            buf[at % (n - 1) : at % (n - 1) + 2] = struct.pack(">H", v & 0xFFFF)
        elif kind == 3 and n >= 4:  # a u32 at a boundary value (or near the input's length)
            v = BOUNDARY_U32[arg % len(BOUNDARY_U32)] if arg % 4 else (n + arg // 4 % 5 - 2)
            buf[at % (n - 3) : at % (n - 3) + 4] = struct.pack(">I", v & 0xFFFFFFFF)
        elif kind == 4:  # insert a few bytes
            buf[at:at] = (arg.to_bytes(3, "big") * 6)[: arg % 17]
        elif kind == 5:  # delete a run
            del buf[at : at + 1 + arg % 64]
        elif kind == 6:  # truncate
            del buf[at:]
        elif kind == 7 and n:  # duplicate a run in place
            start = arg % n
            buf[at:at] = buf[start : start + 1 + arg % 48]
        elif kind == 8 and other:  # splice a run of another input over this one
            start = arg % len(other)
            piece = other[start : start + 1 + arg % 96]
            buf[at : at + len(piece)] = piece
    return bytes(buf)


def random_ops(r: random.Random, limit: int = 1 << 21) -> list[tuple[int, int, int]]:
    """1-4 stacked mutations, mostly single ones (as AFL's havoc, but small)."""
    k = 1 + min(3, int(r.expovariate(1.2)))
    return [(r.randrange(OPS), r.randrange(limit), r.randrange(1 << 20)) for _ in range(k)]
