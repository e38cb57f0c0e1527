"""The bounded, ordered, multi-threaded batch pipeline under every streaming call.

    reader ──batch──▶ worker threads (seal/open, GIL released) ──in order──▶ writer

Two pools of buffers circulate, both created only as needed and both bounded by a `Plan`
worked out from a byte budget: input buffers (filled by the reader, freed as soon as a worker
has sealed or opened them) and output buffers (taken by the reader in batch order, filled by
a worker, freed once the writer has written them). Every byte the pipeline holds is in those
buffers, so its memory is at most `plan.peak_bytes` whatever the object size, the segment size
or the number of cores; at most `plan.workers` batches are on the CPU at once, and I/O
overlaps crypto. When the pipeline ends, the parts of the buffers that held data are zeroed.

To know which batch is the last (it carries the final segment) each read asks for one byte
more than a batch: if it comes, the input goes on and that byte starts the next batch. A look
ahead of one byte, not of one batch, is what lets the smallest plan be one segment in and one
out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream

from ._plan import Plan as Plan
from ._plan import minimum_bytes as minimum_bytes
from ._plan import plan_pipeline as plan_pipeline
from .hazmat.format import TAG_LEN
from .objects import zero
from .streams import Sink, Source, read_full

__all__ = ("BatchFn", "Plan", "first_error", "plan_pipeline", "run_pipeline")

#: process(batch_index, src, dst, final) -> bytes written to dst. Runs on a worker thread.
BatchFn = Callable[[int, memoryview, memoryview, bool], int]


@dataclass(slots=True)
class _Buf:
    data: bytearray
    used: int = 0  # high-water mark, so wiping costs what was used, not the capacity

    def wipe(self) -> None:
        """Zero what held data (plaintext on one side or the other) before it is freed."""
        zero(self.data, self.used)


class _Pool:
    """At most `count` buffers of `size` bytes, created on first need (a small object needs
    one or two, not `count`) and handed back for reuse (no page faults in the steady state)."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size
        self.made: list[_Buf] = []
        self._send, self._recv = anyio.create_memory_object_stream[_Buf](count)

    async def take(self) -> _Buf:
        try:
            return self._recv.receive_nowait()
        except anyio.WouldBlock:
            if len(self.made) < self.count:
                buf = _Buf(bytearray(self.size))
                self.made.append(buf)
                return buf
            return await self._recv.receive()

    def give(self, buf: _Buf) -> None:
        self._send.send_nowait(buf)  # never blocks: the stream holds all `count`

    def close(self) -> None:
        self._send.close()
        self._recv.close()
        for buf in self.made:
            buf.wipe()


class _Slot:
    __slots__ = ("done", "error", "inbuf", "n", "outbuf", "written")

    def __init__(self, inbuf: _Buf, outbuf: _Buf, n: int) -> None:
        self.inbuf = inbuf
        self.outbuf = outbuf
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
    plan: Plan,
    *,
    on_batch: Callable[[int], Awaitable[None] | None] | None = None,
    count_output: bool = False,
) -> int:
    """Run `process` over every `plan.in_batch`-sized batch of `source`; returns bytes written.

    An empty input is one empty final batch. Any error (from the source, a worker or the
    sink) stops the pipeline and is re-raised as itself, not as an exception group; output
    batches after the failed one are never written. `on_batch(n)` is told each batch's input
    size (its output size with `count_output`: the plaintext when opening) once its output
    is written (for progress bars).
    """
    limiter = anyio.CapacityLimiter(plan.workers)
    in_size, out_size = plan.in_batch + 1, plan.out_batch
    remaining = getattr(source, "remaining", None)
    if callable(remaining):  # an input of known length: buffers no larger than it needs (a
        # small object with 64 MiB segments must not zero-fill 64 MiB batch buffers)
        left = int(remaining())
        in_size = min(in_size, left + 1)
        out_size = min(out_size, left + TAG_LEN * plan.segments_per_batch)
    ins = _Pool(plan.inputs, in_size)
    outs = _Pool(plan.outputs, out_size)
    # Every queued slot holds an output buffer, so the queue never holds more than `outputs`.
    job_send, job_recv = anyio.create_memory_object_stream[_Slot](plan.outputs)
    total = 0

    async def work(slot: _Slot, index: int, final: bool) -> None:
        try:
            src = memoryview(slot.inbuf.data)[: slot.n]
            dst = memoryview(slot.outbuf.data)
            slot.written = await anyio.to_thread.run_sync(
                process, index, src, dst, final, limiter=limiter
            )
            # (a failing batch zeroes what it wrote itself: see open_segments)
            slot.outbuf.used = max(slot.outbuf.used, slot.written)
        except BaseException as e:  # handed to the writer, which raises it in order
            slot.error = e
        finally:
            ins.give(slot.inbuf)  # the input is spent: the reader may refill it now
            slot.done.set()

    async def writer(jobs: ObjectReceiveStream[_Slot]) -> None:
        nonlocal total
        async with jobs:
            async for slot in jobs:
                await slot.done.wait()
                if slot.error is not None:
                    raise slot.error
                await sink.write(memoryview(slot.outbuf.data)[: slot.written])
                total += slot.written
                if on_batch is not None:
                    r = on_batch(slot.written if count_output else slot.n)
                    if r is not None:
                        await r
                outs.give(slot.outbuf)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer, job_recv)
            async with job_send:
                carry: int | None = None  # the look-ahead byte: the next batch's first
                index = 0
                while True:
                    inbuf = await ins.take()
                    view = memoryview(inbuf.data)
                    pre = 0
                    if carry is not None:
                        view[0], pre = carry, 1
                    try:
                        n = pre + await read_full(source, view[pre:])
                    except BaseException:
                        # a source that failed mid-read may have filled part of the buffer
                        # (plaintext, when encrypting): the whole of it is wiped (review)
                        inbuf.used = len(inbuf.data)
                        raise
                    inbuf.used = max(inbuf.used, n)
                    final = n <= plan.in_batch
                    if not final:
                        carry, n = view[plan.in_batch], plan.in_batch
                    # Outputs are taken in batch order, and the writer frees them in that
                    # order, so a later batch can never hold the buffer an earlier one needs.
                    slot = _Slot(inbuf, await outs.take(), n)
                    tg.start_soon(work, slot, index, final)
                    index += 1
                    try:
                        await job_send.send(slot)
                    except anyio.BrokenResourceError:
                        # The writer failed and closed its end; the group is being
                        # cancelled and the writer's error is the one to raise.
                        await anyio.sleep_forever()
                    if final:
                        break
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    finally:
        ins.close()
        outs.close()
    return total
