"""Engine settings and what a call reports: `Options`, `ObjectInfo` (no event loop needed).

Separate from the async recipes (`envelope.api`, which re-exports both) so that the blocking
object layer, the file path and the CLI's start-up can use them without importing anyio.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._plan import Plan, minimum_bytes, plan_pipeline
from .errors import ConfigurationError
from .hazmat.format import MAX_EDKS, MAX_SEG_LOG2, MIN_SEG_LOG2, TAG_LEN, WrappedKey
from .hazmat.segments import Layout
from .metrics import Direction

__all__ = (
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_OPTIONS",
    "MAX_WORKERS",
    "MIN_MEMORY_BUDGET",
    "ObjectInfo",
    "Options",
    "object_info",
)

#: What one streaming call's buffers may hold unless told otherwise, and the least allowed
#: (it holds the default 1 MiB segment with room to spare, so a budget valid for decrypting
#: is never refused for the default `segment_size`).
DEFAULT_MEMORY_BUDGET = 256 << 20

#: The most worker threads one call may ask for (`Options.workers`): far beyond any core count
#: the work could use, low enough that a typo cannot exhaust the process's threads.
MAX_WORKERS = 1024

#: Cores of this machine, read once (os.cpu_count() costs tens of microseconds a call, which
#: a 16 KiB object cannot afford).
_CPUS = os.cpu_count() or 1


def cores() -> int:
    """This machine's cores, as `Options.workers=None` means them (read once, at import)."""
    return _CPUS

MIN_MEMORY_BUDGET = 4 << 20


def whole_number(value: object, name: str) -> int:
    """`value` as an int if it is integral (an int, a numpy integer: anything with
    `__index__`), not a bool; else ConfigurationError naming `name`."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise ConfigurationError(f"{name} must be a whole number, not {value!r}")


def _size(n: int) -> str:
    """Bytes for people: whole KiB/MiB/GiB when exact, else MiB with one decimal."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n / (1 << 20):.1f} MiB"


@dataclass(frozen=True, slots=True)
class Options:
    """Engine settings. Defaults suit bulk data; all are validated here, before any I/O.

    segment_size: plaintext bytes per segment, a power of two from 4 KiB to 64 MiB.
    workers: threads sealing/opening at once (default: every core).
    batch_bytes: plaintext per worker hop (default 2 MiB): a few MiB amortize the thread
        hand-off, and a streaming call holds 2 x (workers + 1) batches, so 2 MiB holds a
        pipeline to 12 MiB on two cores (4 MiB measured the same throughput at twice the
        memory: docs/performance.md).
    depth: at most this many input and this many output batches in flight (default
        workers + 1: every worker busy while one more batch is read and one written; deeper
        queues bought no throughput and cost memory), if the budget holds them.
    max_wrapped_keys: a reader refuses headers with more wrapped keys, before any KMS call.
    memory_budget: the most bytes one streaming call's buffers may hold (default 256 MiB,
        at least 4 MiB), whatever the segment size or the number of cores: batches shrink,
        then fewer run at once, then fewer workers run, to stay within it. A segment size
        it cannot hold (two segments and a tag) is refused: here for `segment_size`, and by
        a reader for the segment size in an object's header, before any output. The
        seekable reader's cache of opened segments lives within it too. In-memory calls
        (`*_bytes`, `*_into`) hold the caller's data instead and take no budget.
    """

    segment_size: int = 1 << 20
    workers: int | None = None
    batch_bytes: int = 2 << 20
    depth: int | None = None
    max_wrapped_keys: int = MAX_EDKS
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def __post_init__(self) -> None:
        for name in ("segment_size", "workers", "batch_bytes", "depth", "max_wrapped_keys"):
            value = getattr(self, name)
            if value is not None or name in ("segment_size", "batch_bytes", "max_wrapped_keys"):
                object.__setattr__(self, name, whole_number(value, name))
        s = self.segment_size
        if s <= 0 or s & (s - 1) or not MIN_SEG_LOG2 <= s.bit_length() - 1 <= MAX_SEG_LOG2:
            raise ConfigurationError("segment_size must be a power of two from 4 KiB to 64 MiB")
        if self.workers is not None and not 1 <= self.workers <= MAX_WORKERS:
            # one thread each, kept for the process (a pool per count): ten million was taken
            # and died on "can't start new thread", with hundreds of threads left (review)
            raise ConfigurationError(f"workers must be 1..{MAX_WORKERS}")
        if self.batch_bytes < 1:
            raise ConfigurationError("batch_bytes must be >= 1")
        if self.depth is not None and self.depth < 2:
            raise ConfigurationError("depth must be >= 2")
        if not 1 <= self.max_wrapped_keys <= MAX_EDKS:
            raise ConfigurationError(f"max_wrapped_keys must be 1..{MAX_EDKS}")
        b = self.memory_budget
        if isinstance(b, bool) or not isinstance(b, int) or b < MIN_MEMORY_BUDGET:
            raise ConfigurationError(
                f"memory_budget must be an integer of at least {_size(MIN_MEMORY_BUDGET)} "
                f"({MIN_MEMORY_BUDGET} bytes)"
            )
        self.plan("encrypt", self.seg_log2)  # a segment size the budget cannot hold: say so now

    def plan(self, direction: Direction, seg_log2: int) -> Plan:
        """The pipeline's buffers for `seg_log2`-sized segments within the memory budget, or
        ConfigurationError naming the segment size, the budget and how to change them."""
        s = 1 << seg_log2
        seg_in, seg_out = (s, s + TAG_LEN) if direction == "encrypt" else (s + TAG_LEN, s)
        plan = plan_pipeline(
            budget=self.memory_budget,
            segment_in=seg_in,
            segment_out=seg_out,
            max_segments_per_batch=max(1, self.batch_bytes >> seg_log2),
            workers=self.worker_count,
            depth=self.depth_count,
        )
        if plan is None:
            need = minimum_bytes(seg_in, seg_out)
            what = (
                "segment_size" if direction == "encrypt" else "the object's segment size (header)"
            )
            fix = (
                ", or choose a smaller segment_size (--segment-size)"
                if direction == "encrypt"
                else " (the writer chose the segment size; it is fixed in the object)"
            )
            raise ConfigurationError(
                f"memory budget of {_size(self.memory_budget)} cannot hold {what} of "
                f"{_size(s)}: {direction}ing needs {need} bytes (one segment in, one out); "
                f"raise Options(memory_budget=...) (CLI: --memory-budget) to at least "
                f"{-(-need >> 20)} MiB{fix}"
            )
        return plan

    @property
    def seg_log2(self) -> int:
        return self.segment_size.bit_length() - 1

    @property
    def worker_count(self) -> int:
        return self.workers or _CPUS

    @property
    def segments_per_batch(self) -> int:
        return max(1, self.batch_bytes >> self.seg_log2)

    @property
    def depth_count(self) -> int:
        return self.depth or self.worker_count + 1


DEFAULT_OPTIONS = Options()


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a call learned about the object it wrote or read. Holds no secret."""

    message_id: str
    segment_size: int
    header_len: int
    plaintext_len: int
    ciphertext_len: int
    kms_context: Mapping[str, str] = field(default_factory=dict)
    object_context: Mapping[str, str] = field(default_factory=dict)
    wrapped_keys: tuple[WrappedKey, ...] = ()


def object_info(
    header_len: int,
    message_id: bytes,
    seg_log2: int,
    plaintext_len: int,
    kms_context: Mapping[str, str],
    object_context: Mapping[str, str],
    wrapped_keys: tuple[WrappedKey, ...],
) -> ObjectInfo:
    return ObjectInfo(
        message_id=message_id.hex(),
        segment_size=1 << seg_log2,
        header_len=header_len,
        plaintext_len=plaintext_len,
        ciphertext_len=Layout(header_len, seg_log2).ciphertext_length(plaintext_len),
        kms_context=dict(kms_context),
        object_context=dict(object_context),
        wrapped_keys=wrapped_keys,
    )


def check_options(options: object) -> None:
    """`options` is an Options (ConfigurationError otherwise: a dict of its fields failed
    deep inside with an AttributeError)."""
    if not isinstance(options, Options):
        raise ConfigurationError(
            f"options must be an envelope.Options, not {type(options).__name__} "
            "(Options(segment_size=...), not a dict)"
        )
