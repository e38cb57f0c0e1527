"""Small-object throughput: the object layer against the bare primitive work of one object.

Each run does a fixed number of whole objects of one size (about `call_bytes` of them, as
`reps`), with a cached data key (one KMS call for the run), so its figure is objects/s:

- `floor`: a bare loop doing only one object's primitive work on one thread (HKDF-SHA-512
  key schedule, header HMAC and commitment, AES-256-GCM of the body): the limit;
- `floor_all`: the same loop on every core at once, one process per core (threads of one
  interpreter share its lock and would put the limit below one thread's);
- `sync_encrypt` / `sync_decrypt`: `envelope.sync.encrypt_bytes` / `decrypt_bytes`;
- `async_encrypt_64` / `async_decrypt_64`: `await envelope.api.*_bytes`, 64 in flight;
- `batch_encrypt` / `batch_decrypt`: `envelope.sync.encrypt_many` / `decrypt_many` (every
  core).

`envelope bench encrypt` uses the sync runs for its `objects` rows; `bench/objects.py` prints
every figure. Rounds interleave every figure of a size (`timing.interleaved`).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import anyio

from .. import api, sync
from ..hazmat.format import MESSAGE_ID_LEN
from ..hazmat.keyschedule import ObjectKeys, seal_header
from ..hazmat.segments import Layout, seal_segments
from ..keycache import CachePolicy
from ..keyring import Keyring
from ..kms.memory import MemoryKms
from ..options import Options
from .machine import cores
from .timing import MIB, Progress, best, interleaved, no_progress

__all__ = ("FIGURES", "cached_keyring", "measure", "runs", "sync_runs")

#: The figures of `runs`, in the order they are measured.
FIGURES = (
    "floor",
    "floor_all",
    "sync_encrypt",
    "sync_decrypt",
    "async_encrypt_64",
    "async_decrypt_64",
    "batch_encrypt",
    "batch_decrypt",
)

#: A run: does some objects, returns how many.
Run = Callable[[], int]


def cached_keyring() -> Keyring:
    """A keyring over an in-memory KMS with the data-key cache: the figures are object work."""
    kms = MemoryKms()
    return Keyring(kms, kms.create_key("bench"), cache=CachePolicy())


#: One thread for a whole object, as the floor it is compared with: at the default options an
#: object of 4 MiB and more is spread over the worker pool in batches.
ONE_THREAD = Options(workers=1)


def sync_runs(data: bytes, keyring: Keyring, count: int) -> tuple[Run, Run]:
    """(encrypt, decrypt) of `count` whole objects of `data` on the calling thread alone,
    round trip checked first."""
    sealed = bytes(sync.encrypt_bytes(data, keyring=keyring, options=ONE_THREAD))
    if sync.decrypt_bytes(sealed, keyring=keyring, options=ONE_THREAD) != data:
        raise AssertionError("object round trip failed")

    def enc() -> int:
        for _ in range(count):
            sync.encrypt_bytes(data, keyring=keyring, options=ONE_THREAD)
        return count

    def dec() -> int:
        for _ in range(count):
            sync.decrypt_bytes(sealed, keyring=keyring, options=ONE_THREAD)
        return count

    return enc, dec


def floor_run(size: int, count: int) -> Run:
    """`count` objects' primitive work alone (no object layer, no KMS, no thread hop)."""
    data = os.urandom(size)
    dk = bytearray(os.urandom(32))
    kms = MemoryKms()
    kid = kms.create_key("floor")
    wk = anyio.run(lambda: kms.generate_data_key(kid, context={})).wrapped
    outputs: dict[int, bytearray] = {}

    def run() -> int:
        for _ in range(count):
            mid = os.urandom(MESSAGE_ID_LEN)
            keys = ObjectKeys(dk, mid, seg_log2=20)
            header, hd = seal_header(
                keys, seg_log2=20, message_id=mid, kms_context={}, object_context={},
                wrapped_keys=(wk,),
            )
            layout = Layout(len(header), 20)
            total = layout.ciphertext_length(size)
            out = outputs.get(total)
            if out is None:
                out = outputs[total] = bytearray(total)
            seal_segments(keys, hd, 0, memoryview(data), memoryview(out)[len(header) :], 20, True)
        return count

    return run


def _floor_worker(conn: Any, size: int, count: int) -> None:
    """A `floor_run` in a process of its own: runs it once per message, answers its count."""
    run = floor_run(size, count)
    while conn.recv() is not None:
        conn.send(run())
    conn.close()


class FloorProcesses:
    """`floor_run` on `n` processes at once, started once (spawned: this process may have
    threads, which fork would copy mid-work) and reused: a call starts every process's loop
    and returns their total, so the timing holds the loops, not process start-up."""

    def __init__(self, size: int, count: int, n: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        for _ in range(n):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_floor_worker, args=(theirs, size, count), daemon=True)
            proc.start()
            theirs.close()
            self._conns.append(mine)
            self._procs.append(proc)

    def __call__(self) -> int:
        for conn in self._conns:
            conn.send(1)
        return sum(int(conn.recv()) for conn in self._conns)

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
                conn.close()
            except OSError:
                pass
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        self._conns, self._procs = [], []


def _in_flight(fn: Callable[[], Coroutine[Any, Any, None]], rounds: int, width: int = 64) -> Run:
    """`rounds` times `width` awaits of `fn` in flight at once, in one event loop.

    The tasks are asyncio's own (`asyncio.TaskGroup`), as an asyncio application holds 64
    calls in flight: an anyio task group's `start_soon` costs about 20 us a task more (one
    run: 96 against 74 us an object at 16 KiB), which is the harness's cost, not the
    library's."""

    async def all_rounds() -> None:
        for _ in range(rounds):
            async with asyncio.TaskGroup() as tg:
                for _ in range(width):
                    tg.create_task(fn())

    def run() -> int:
        asyncio.run(all_rounds())
        return rounds * width

    return run


def runs(size: int, keyring: Keyring, *, call_bytes: int = MIB, n_cores: int = 0) -> dict[str, Run]:
    """Every figure's run for objects of `size` (keys: FIGURES): `reps` = call_bytes / size
    objects a run (sync and floor), 8x that in flight (async), 4x in a batch."""
    n_cores = n_cores or cores()
    data = os.urandom(size)
    reps = max(1, call_bytes // size)
    sync_enc, sync_dec = sync_runs(data, keyring, reps)
    sealed = bytes(sync.encrypt_bytes(data, keyring=keyring))
    batch = [data] * (reps * 4)
    sealed_batch = sync.encrypt_many(batch, keyring=keyring)

    async def enc() -> None:
        await api.encrypt_bytes(data, keyring=keyring)

    async def dec() -> None:
        await api.decrypt_bytes(sealed, keyring=keyring)

    def batch_enc() -> int:
        sync.encrypt_many(batch, keyring=keyring)
        return len(batch)

    def batch_dec() -> int:
        sync.decrypt_many(sealed_batch, keyring=keyring)
        return len(batch)

    flight_rounds = max(1, reps // 8)
    return {
        "floor": floor_run(size, reps),
        "floor_all": FloorProcesses(size, reps, n_cores),
        "sync_encrypt": sync_enc,
        "sync_decrypt": sync_dec,
        "async_encrypt_64": _in_flight(enc, flight_rounds),
        "async_decrypt_64": _in_flight(dec, flight_rounds),
        "batch_encrypt": batch_enc,
        "batch_decrypt": batch_dec,
    }


def _lasting(run: Run, seconds: float) -> tuple[Callable[[], object], Callable[[], int]]:
    """`run` repeated to last about `seconds` (calibrated on an untimed call after a warm-up
    one), and how many objects one timed call did. The first call of a run can cost far more
    than the others (the all-core floor starts its processes then: 0.22 s against 3.5 ms), and
    calibrating on it sized that run at a few milliseconds, the denominator of the all-core
    ratios."""
    run()  # warm-up: processes, pools, imports
    t0 = time.perf_counter()
    run()
    once = time.perf_counter() - t0
    calls = max(1, math.ceil(seconds / once)) if once > 0 else 1
    done = [0]

    def repeated() -> None:
        n = 0
        for _ in range(calls):
            n += run()
        done[0] = n

    return repeated, lambda: done[0]


def measure(
    sizes: Iterable[int],
    *,
    rounds: int = 3,
    seconds: float = 0.0,
    call_bytes: int = MIB,
    keyring: Keyring | None = None,
    progress: Progress = no_progress,
) -> dict[int, dict[str, float]]:
    """Objects/s of every figure (FIGURES) by object size, best of `rounds` interleaved
    rounds; with `seconds`, each figure's run repeats to last about that long."""
    keyring = keyring or cached_keyring()
    out: dict[int, dict[str, float]] = {}
    for size in sizes:
        timed: dict[str, Callable[[], object]] = {}
        counted: dict[str, Callable[[], int]] = {}
        made = runs(size, keyring, call_bytes=call_bytes)
        try:
            for name, run in made.items():
                timed[name], counted[name] = _lasting(run, seconds)
            t = interleaved(rounds, timed, progress=progress)
        finally:
            for run in made.values():
                if isinstance(run, FloorProcesses):
                    run.close()
        out[size] = {name: counted[name]() / best(t[name]) for name in FIGURES}
    return out
