"""How many buffers a streaming pipeline may hold within a byte budget (pure arithmetic).

Kept apart from the pipeline itself (`envelope._pipeline`, which needs anyio) so that
`envelope.options` can validate a memory budget without loading an event-loop library: the
blocking file path and the CLI's start-up never import anyio.
"""

from __future__ import annotations

__all__ = ("Plan", "minimum_bytes", "plan_pipeline", "segments_within")


class Plan:
    """How many buffers of each kind one pipeline may hold, and how large they are.

    A plain class, not a dataclass: defining a frozen dataclass costs about 2 ms of the
    command line's start-up."""

    __slots__ = ("in_batch", "inputs", "out_batch", "outputs", "segments_per_batch", "workers")

    def __init__(
        self,
        *,
        segments_per_batch: int,
        in_batch: int,  # input bytes per batch (a read asks for one byte more: the look-ahead)
        out_batch: int,
        inputs: int,
        outputs: int,
        workers: int,
    ) -> None:
        self.segments_per_batch = segments_per_batch
        self.in_batch = in_batch
        self.out_batch = out_batch
        self.inputs = inputs
        self.outputs = outputs
        self.workers = workers

    def _fields(self) -> tuple[int, ...]:
        return (
            self.segments_per_batch,
            self.in_batch,
            self.out_batch,
            self.inputs,
            self.outputs,
            self.workers,
        )

    def __repr__(self) -> str:
        return (
            f"Plan(segments_per_batch={self.segments_per_batch}, in_batch={self.in_batch}, "
            f"out_batch={self.out_batch}, inputs={self.inputs}, outputs={self.outputs}, "
            f"workers={self.workers})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    @property
    def peak_bytes(self) -> int:
        """Every buffer byte the pipeline can hold at once."""
        return self.inputs * (self.in_batch + 1) + self.outputs * self.out_batch


def minimum_bytes(segment_in: int, segment_out: int) -> int:
    """The least a pipeline can run in: one one-segment batch in (plus the look-ahead byte)
    and one out. Below this no plan exists for the segment size."""
    return segment_in + 1 + segment_out


def segments_within(
    budget: int | None, segment_in: int, segment_out: int, max_segments: int
) -> int:
    """Segments per batch for a one-thread loop holding one batch in (plus the look-ahead
    byte) and one out: the most, up to `max_segments`, that fit in `budget` (None: no limit).
    Never below one: a budget too small for one segment is refused before (`minimum_bytes`,
    `Options.plan`)."""
    k = max(1, max_segments)
    if budget is not None:
        while k > 1 and k * (segment_in + segment_out) + 1 > budget:
            k //= 2
    return k


def plan_pipeline(
    *,
    budget: int,
    segment_in: int,
    segment_out: int,
    max_segments_per_batch: int,
    workers: int,
    depth: int,
) -> Plan | None:
    """The fullest plan whose buffers fit in `budget` bytes, or None if even the smallest
    (one segment in, one out, one worker) does not fit.

    Preference, most valued first: every worker busy with one batch being read and one being
    written (`workers + 1` buffers each side), then batches of `max_segments_per_batch`
    segments (fewer thread hand-offs), then up to `depth` buffers each side (slack for uneven
    I/O). Fewer segments per batch is tried before fewer workers; when even one-segment
    batches cannot feed every worker, fewer workers run.
    """
    workers, depth = max(1, workers), max(2, depth)

    def pair(k: int) -> int:
        return k * (segment_in + segment_out) + 1

    if budget < pair(1):
        return None
    k = max(1, max_segments_per_batch)
    while k > 1 and (workers + 1) * pair(k) > budget:
        k = max(1, k // 2)
    pairs = min(depth, budget // pair(k))
    inputs = pairs
    if pairs < depth and budget - pairs * pair(k) >= k * segment_in + 1:
        inputs += 1  # one more batch read ahead is the most useful spare buffer
    return Plan(
        segments_per_batch=k,
        in_batch=k * segment_in,
        out_batch=k * segment_out,
        inputs=inputs,
        outputs=pairs,
        workers=min(workers, pairs),
    )
