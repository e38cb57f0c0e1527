"""Every Python example in docs/library.md runs, as written.

The guide's fenced ``python`` blocks are extracted from the Markdown. The first one (its
first line is ``# setup``) makes a key file and a keyring; every other block runs after it in
a fresh namespace and an empty temporary folder, so each example stands on the set-up alone
and a reader can paste it after that block. A block whose first line is ``# not run`` (pandas,
which is not installed here) is only compiled. The examples assert their own results, so a
block that runs but computes the wrong thing fails here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from envelope import Keyring

DOC = Path(__file__).resolve().parent.parent / "docs" / "library.md"
_FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def _blocks() -> list[tuple[int, str]]:
    """(line number, source) of every fenced python block of the guide."""
    text = DOC.read_text("utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _FENCE.finditer(text)]


BLOCKS = _blocks()
SETUP = [src for _, src in BLOCKS if src.startswith("# setup")]
NOT_RUN = [(line, src) for line, src in BLOCKS if src.startswith("# not run")]
RUN = [
    (line, src)
    for line, src in BLOCKS
    if not src.startswith("# setup") and not src.startswith("# not run")
]


def test_the_guide_has_its_examples() -> None:
    # Guards the extraction itself: a broken fence regex would otherwise pass with 0 tests.
    assert len(SETUP) == 1
    assert len(RUN) >= 15
    for line, src in NOT_RUN:  # a skipped example says why, on its first line
        assert len(src.splitlines()[0]) > len("# not run: "), f"line {line}"


def _run(src: str, name: str, namespace: dict[str, object] | None = None) -> dict[str, object]:
    """Execute one example (the docs' own code) in `namespace` (default: a fresh one)."""
    namespace = {"__name__": "docs_example"} if namespace is None else namespace
    exec(compile(src, name, "exec"), namespace)
    return namespace


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    # the embedded KMS example passes home= explicitly; keep any other use in the temp dir
    monkeypatch.setenv("ENVELOPE_HOME", str(tmp_path / "envelope-home"))
    return tmp_path


@pytest.mark.parametrize(("line", "src"), RUN, ids=[f"line{line}" for line, _ in RUN])
def test_example_runs(line: int, src: str, in_tmp: Path) -> None:
    namespace = _run(SETUP[0], f"{DOC.name}:setup")
    assert (in_tmp / "my.key").exists()
    try:
        _run(src, f"{DOC.name}:{line}", namespace)
    finally:
        for kr in {id(v): v for v in namespace.values() if isinstance(v, Keyring)}.values():
            kr.close()


@pytest.mark.parametrize(("line", "src"), NOT_RUN, ids=[f"line{line}" for line, _ in NOT_RUN])
def test_unrun_example_compiles(line: int, src: str) -> None:
    compile(src, f"{DOC.name}:{line}", "exec")


def test_setup_block_alone(in_tmp: Path) -> None:
    namespace = _run(SETUP[0], f"{DOC.name}:setup")
    assert os.stat(in_tmp / "my.key").st_mode & 0o777 == 0o600
    assert "keyring" in namespace


def test_readme_example_runs(in_tmp: Path) -> None:
    text = (DOC.parent.parent / "README.md").read_text("utf-8")
    (src,) = [m.group(1) for m in _FENCE.finditer(text)]
    _run(SETUP[0], f"{DOC.name}:setup")  # makes my.key
    (in_tmp / "big.bin").write_bytes(os.urandom(100_000))
    namespace = _run(src, "README.md")
    assert (in_tmp / "big.env").stat().st_size > 100_000
    keyring = namespace["keyring"]
    assert isinstance(keyring, Keyring)
    keyring.close()
