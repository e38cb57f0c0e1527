"""Helpers for the `envelope bench` tests: run the CLI, and compare JSON keys with docs/bench.md."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from envelope.cli.main import main

from ..server.conftest import server  # noqa: F401  (`envelope serve` for a module, as in tests/server)

DOC = Path(__file__).resolve().parents[2] / "docs" / "bench.md"


def documented_keys(section: str) -> set[str]:
    """The keys docs/bench.md lists for `section`: the first column of the table that follows
    its `<!-- keys:SECTION -->` marker, as dotted paths (`rows[].name`)."""
    text = DOC.read_text()
    start = text.index(f"<!-- keys:{section} -->")
    keys: set[str] = set()
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if keys:
                break
            continue
        m = re.match(r"\|\s*`([^`]+)`", line)
        if m:
            keys.add(m.group(1))
    return keys


def paths(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a JSON value by dotted path, list items as `name[]` (all items merged);
    the keys of a dict documented as `name.*` are not expanded (free-form maps)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(paths(v, f"{prefix}{k}."))
    elif isinstance(value, list):
        for item in value:
            for k, v in paths(item, prefix[:-1] + "[].").items():
                out.setdefault(k, v)
    else:
        out[prefix[:-1]] = value
    return out


def check_keys(data: dict[str, Any], section: str) -> dict[str, Any]:
    """Every documented key is present and no undocumented one; returns the leaves."""
    leaves = paths(data)
    documented = documented_keys(section)
    got = set()
    for path in leaves:
        star = next((d for d in documented if d.endswith(".*") and path.startswith(d[:-1])), None)
        got.add(star or path)
    assert documented - got == set(), f"documented but missing: {sorted(documented - got)}"
    assert got - documented == set(), f"printed but undocumented: {sorted(got - documented)}"
    return leaves


def finite_positive(leaves: dict[str, Any], *names: str) -> None:
    for name in names:
        value = leaves[name]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), name
        assert math.isfinite(value) and value > 0, (name, value)


@pytest.fixture
def bench(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `envelope bench ARGS --json`; the parsed JSON."""

    def run(*args: str) -> dict[str, Any]:
        code = main(["bench", *args, "--json"])
        out = capsys.readouterr().out
        assert code == 0, out
        data: dict[str, Any] = json.loads(out)
        return data

    return run
