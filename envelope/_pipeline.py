"""The bounded, ordered, multi-threaded batch pipeline under every streaming call.

    reader ──batch──▶ worker threads (seal/open, GIL released) ──in order──▶ writer

A pool of at most `depth` buffer pairs (created as needed) circulates: the reader takes a
free pair, fills its input half, hands it to a worker thread that seals or opens into the
output half, and the writer writes output halves strictly in batch order, then returns the
pair to the pool. So peak memory is `depth * (in_batch + out_batch)` whatever the object
size, at most `workers` batches are on the CPU at once, and I/O overlaps crypto. When the
pipeline ends, the parts of the buffers that held data are zeroed.

To know which batch is the last (it carries the final segment) the reader looks one batch
ahead: a batch is dispatched only once the next read has started or the input has ended.
"""

from __future__ import annotations

import ctypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from .streams import Sink, Source

__all__ = ("BatchFn", "first_error", "run_pipeline")

#: process(batch_index, src, dst, final) -> bytes written to dst. Runs on a worker thread.
BatchFn = Callable[[int, memoryview, memoryview, bool], int]


@dataclass(slots=True)
class _Pair:
    inbuf: bytearray
    outbuf: bytearray
    used_in: int = 0  # high-water marks, so wiping costs what was used, not the capacity
    used_out: int = 0

    def wipe(self) -> None:
        """Zero what held plaintext (one side or the other) before the buffers are freed."""
        if self.used_in:
            ctypes.memset((ctypes.c_char * self.used_in).from_buffer(self.inbuf), 0, self.used_in)
        if self.used_out:
            ctypes.memset(
                (ctypes.c_char * self.used_out).from_buffer(self.outbuf), 0, self.used_out
            )


class _Slot:
    __slots__ = ("done", "error", "n", "pair", "written")

    def __init__(self, pair: _Pair, n: int) -> None:
        self.pair = pair
        self.n = n
        self.done = anyio.Event()
        self.written = 0
        self.error: BaseException | None = None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return first_error(e)
        if not isinstance(e, anyio.get_cancelled_exc_class()):
            return e
    return group.exceptions[0]


async def run_pipeline(
    source: Source,
    sink: Sink,
    process: BatchFn,
    *,
    in_batch: int,
    out_batch: int,
    workers: int,
    depth: int,
    on_batch: Callable[[int], Awaitable[None] | None] | None = None,
) -> int:
    """Run `process` over every `in_batch`-sized batch of `source`; returns bytes written.

    An empty input is one empty final batch. Any error (from the source, a worker or the
    sink) stops the pipeline and is re-raised as itself, not as an exception group; output
    batches after the failed one are never written. `on_batch(n)` is told each batch's input
    size once its output is written (for progress bars).
    """
    depth = max(2, depth)
    limiter = anyio.CapacityLimiter(max(1, workers))
    free_send, free_recv = anyio.create_memory_object_stream[_Pair](depth)
    pairs: list[_Pair] = []  # created on demand: a small object needs one or two, not `depth`
    job_send, job_recv = anyio.create_memory_object_stream[_Slot](depth)
    total = 0

    async def work(slot: _Slot, index: int, n: int, final: bool) -> None:
        try:
            src = memoryview(slot.pair.inbuf)[:n]
            dst = memoryview(slot.pair.outbuf)
            slot.pair.used_in = max(slot.pair.used_in, n)
            slot.written = await anyio.to_thread.run_sync(
                process, index, src, dst, final, limiter=limiter
            )
            # (a failing batch zeroes what it wrote itself: see open_segments)
            slot.pair.used_out = max(slot.pair.used_out, slot.written)
        except BaseException as e:  # handed to the writer, which raises it in order
            slot.error = e
        finally:
            slot.done.set()

    async def writer(jobs: ObjectReceiveStream[_Slot], free: MemoryObjectSendStream[_Pair]) -> None:
        nonlocal total
        async with jobs:
            async for slot in jobs:
                await slot.done.wait()
                if slot.error is not None:
                    raise slot.error
                await sink.write(memoryview(slot.pair.outbuf)[: slot.written])
                total += slot.written
                if on_batch is not None:
                    r = on_batch(slot.n)
                    if r is not None:
                        await r
                free.send_nowait(slot.pair)  # never blocks: the pool holds exactly `depth`

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer, job_recv, free_send)
            async with job_send:
                index = 0
                held: tuple[_Pair, int] | None = None

                async def dispatch(pair: _Pair, n: int, final: bool) -> None:
                    nonlocal index
                    slot = _Slot(pair, n)
                    tg.start_soon(work, slot, index, n, final)
                    index += 1
                    try:
                        await job_send.send(slot)
                    except anyio.BrokenResourceError:
                        # The writer failed and closed its end; the group is being
                        # cancelled and the writer's error is the one to raise.
                        await anyio.sleep_forever()

                while True:
                    try:
                        pair = free_recv.receive_nowait()
                    except anyio.WouldBlock:
                        if len(pairs) < depth:
                            pair = _Pair(bytearray(in_batch), bytearray(out_batch))
                            pairs.append(pair)
                        else:
                            pair = await free_recv.receive()
                    n = await source.readinto(memoryview(pair.inbuf))
                    if n == 0:
                        if held is None:
                            await dispatch(pair, 0, True)
                        else:
                            await dispatch(held[0], held[1], True)
                        break
                    if held is not None:
                        await dispatch(held[0], held[1], False)
                    held = (pair, n)
                    if n < in_batch:
                        await dispatch(pair, n, True)
                        break
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    finally:
        free_send.close()
        free_recv.close()
        for pair in pairs:
            pair.wipe()
    return total
