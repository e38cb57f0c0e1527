"""Timing helpers shared by the benchmarks: interleaved rounds, best and median, rates.

The machines these run on are often shared and noisy, so every benchmark measures its
references in the same run, takes turns between figures (a slow spell then hits all alike)
and keeps the best round as the figure, with the median beside it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping

MIB = 1 << 20
KIB = 1 << 10

#: Called between rounds with (done, total): a progress bar, or nothing.
Progress = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    """The default progress callback: says nothing."""
    return None


def interleaved(
    rounds: int,
    runs: Mapping[str, Callable[[], object]],
    *,
    warm: bool = True,
    before: Callable[[str], object] | None = None,
    progress: Progress = no_progress,
) -> dict[str, list[float]]:
    """Wall seconds of each run in each of `rounds` rounds that take turns (the order turns
    from round to round too, so no run always follows the same one). `before(name)` runs
    untimed before each timed run (removing an output, os.sync)."""
    names = list(runs)
    if warm:
        for name in names:
            if before is not None:
                before(name)
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if before is not None:
                before(name)
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
        progress(r + 1, rounds)
    return times


def best(times: list[float]) -> float:
    """The shortest time (the figure least disturbed by other tenants)."""
    return min(times)


def median(times: list[float]) -> float:
    return statistics.median(times)


def mbps(nbytes: int, seconds: float) -> float:
    """Decimal megabytes per second (the unit of every throughput figure here)."""
    return nbytes / seconds / 1e6 if seconds > 0 else math.inf


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def rounded(value: float, digits: int = 3) -> float:
    return round(value, digits)


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear between ranks."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
