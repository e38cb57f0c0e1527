"""The reliability suites' summary: what each suite tried, printed at the end of every run.

A suite that finds a loss fails its test; the counts show it was not passing trivially (a
fault suite that injected no fault, a crash suite that killed nothing, would be visible here).
"""

from __future__ import annotations

import pytest

from .support import COUNTS, SCALE, SEED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    tr = terminalreporter
    tr.section("envelope reliability")
    tr.write_line(f"scale={SCALE} seed={SEED} (replay: ENVELOPE_RELIABILITY_SEED={SEED})")
    for suite in sorted(COUNTS):
        parts = ", ".join(f"{what}={n}" for what, n in sorted(COUNTS[suite].items()))
        tr.write_line(f"{suite}: {parts}")
