"""The example of docs/hsm.md runs, as written, against a SoftHSM2 token labelled "envelope"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.softhsm import SOFTHSM_MODULE, make_token

DOC = Path(__file__).resolve().parents[2] / "docs" / "hsm.md"


def test_the_python_example_runs(hsm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1 and SOFTHSM_MODULE in blocks[0]
    config = make_token(hsm_dir, "envelope", pin="doc-pin-1")
    monkeypatch.setenv("ENVELOPE_HSM_PIN", config.pin)
    exec(compile(blocks[0], str(DOC), "exec"), {})
