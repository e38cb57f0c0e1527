"""`envelope bench machine` and `envelope bench encrypt` at tiny sizes: every documented key,
finite positive figures, a plot that opens and shows something, a Markdown report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from envelope.bench import machine
from envelope.cli.main import main

from .conftest import check_keys, finite_positive


def nonblank(png: Path) -> None:
    """The PNG opens, has a sensible size and more than a few colours on it."""
    with Image.open(png) as im:
        assert im.size[0] >= 400 and im.size[1] >= 200
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 10
        white = max(count for count, _ in colours)
        assert white < im.size[0] * im.size[1] * 0.99  # not a blank canvas


def test_machine(bench: Any, tmp_path: Path) -> None:
    png = tmp_path / "m.png"
    data = bench("machine", "--size", "1M", "--rounds", "1", "--dir", str(tmp_path),
                 "--plot", str(png))  # fmt: skip
    leaves = check_keys(data, "machine")
    finite_positive(
        leaves, "aes_gcm_1t_mbps", "aes_gcm_all_mbps", "memcpy_mbps", "file_copy_mbps",
        "file_copy_fsync_mbps", "cores",
    )  # fmt: skip
    assert set(data["aes_gcm_mbps_by_threads"]) >= {"1", str(data["cores"])}
    assert isinstance(data["cpu"]["flags"]["aes"], bool)
    nonblank(png)
    assert list(tmp_path.iterdir()) == [png]  # the scratch files are gone


def test_cpu_info_reads_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Test CPU 9000\nflags\t\t: fpu aes avx2 vaes\n")
    got = machine.cpu_info(str(info))
    assert got["model"] == "Test CPU 9000"
    assert got["flags"]["aes"] and got["flags"]["vaes"] and not got["flags"]["avx512f"]


def test_encrypt(bench: Any, tmp_path: Path) -> None:
    png, md = tmp_path / "e.png", tmp_path / "e.md"
    data = bench(
        "encrypt", "--size", "1M", "--max-object", "16K", "--rounds", "1",
        "--dir", str(tmp_path), "--plot", str(png), "--markdown", str(md),
    )  # fmt: skip
    leaves = check_keys(data, "encrypt")
    finite_positive(leaves, *[k for k, v in leaves.items() if "mbps" in k or "per_s" in k])
    finite_positive(leaves, "peak_rss_mib", "memory.ratio_encrypt_1w", "file.ratio_decrypt")
    assert [r["object_size"] for r in data["objects"]] == [1024, 16384]
    # small objects are also compared with the per-object floor, not only bulk AES-GCM
    assert all(r["floor_per_s"] > 0 and r["ratio_encrypt_to_floor"] > 0 for r in data["objects"])
    assert [r["segment_size"] for r in data["segments"]] == [64 << 10, 256 << 10, 1 << 20]
    assert data["workers"][0]["workers"] == 1
    nonblank(png)
    text = md.read_text()
    assert "| segment_size |" in text and "![envelope bench encrypt](e.png)" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.md", "e.png"]


def test_bad_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "machine", "--size", "lots"])
    assert e.value.code == 2
    assert "is not a size" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["machine", "--size", "512K"],
        ["encrypt", "--size", "1"],
        ["encrypt", "--file-size", "64K"],
        ["peers", "--size", "1023K"],
    ],
)
def test_a_size_too_small_to_time_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Below 1M a run lasts microseconds: `--size 1` printed ratios of 0.005 and 26 as
    figures. Refused before anything is measured."""
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv, "--json"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "too small to time: at least 1M" in err


def test_other_commands_do_not_import_bench() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from envelope.cli.main import build_parser; "
        "build_parser(['encrypt', 'a', 'b']); "
        "print([m for m in sys.modules if m.startswith(('envelope.bench', 'envelope.cli.bench'))])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "flags",
    [
        ["--plot", "figure.txt"],
        ["--plot", "/nonexistent-folder/x.png"],
        ["--markdown", "/nonexistent-folder/x.md"],
        ["--dir", "/nonexistent-folder"],
    ],
)
def test_outputs_that_cannot_be_written_are_refused_before_measuring(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A --plot matplotlib cannot write, or a --markdown or --dir in no folder, failed only
    once every figure was measured (minutes at the defaults), and the figures were lost
    (review)."""
    from envelope.cli.main import main

    assert main(["bench", "machine", "--size", "1M", *flags, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "envelope:" in captured.err


def test_a_report_over_the_kms_root_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`envelope bench ... --markdown $ENVELOPE_HOME/root.key` replaced the root-key file
    with a Markdown report: every key of the KMS lost (review of the output guard)."""
    from envelope.cli.main import main
    from envelope.kms.local import open_local

    home = tmp_path / "home"
    open_local(home).service.close()
    monkeypatch.setenv("ENVELOPE_HOME", str(home))
    before = (home / "root.key").read_bytes()
    (tmp_path / "report.png").symlink_to(home / "root.key")  # a link of another name
    for flag in ("--markdown", "--plot"):
        target = home / "root.key" if flag == "--markdown" else tmp_path / "report.png"
        assert main(["bench", "machine", "--size", "1M", flag, str(target), "--json"]) == 2
        assert "refusing to write" in capsys.readouterr().err
    assert (home / "root.key").read_bytes() == before


def test_a_result_printed_into_a_pipe_is_plain_rows_never_wrapped() -> None:
    """`envelope bench ... | tail` got an 80-column rich table with numbers folded across
    lines (1,0 over 24); docs/cli.md promises tables only on a terminal (review)."""
    import io

    from envelope.bench.report import print_table

    data = {"long_name_" * 6: 1024, "ratio": 0.123456, "note": "x" * 200}
    out = io.StringIO()
    print_table("bench", data, file=out)
    text = out.getvalue()
    assert "│" not in text and "─" not in text
    assert "x" * 200 in text and "1024" in text.replace(",", "")
    assert all(len(line) < 400 for line in text.splitlines())


def test_a_table_on_a_narrow_terminal_folds_no_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an 80-column terminal rich fitted the tables to the width by folding cells: `16.58`
    over two lines, `nam/e` in a header (review). docs/cli.md: a table is as wide as its
    widest cell, and the terminal wraps."""
    import io

    from envelope.bench.report import print_table

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "40")
    data = {"a_rather_long_figure_name_" * 2: 16.58, "not_installed_peer": "not installed"}
    out = Terminal()
    print_table("bench", data, file=out)
    lines = out.getvalue().splitlines()
    assert any("a_rather_long_figure_name_" * 2 in line for line in lines)
    assert any("16.58" in line for line in lines) and any("not installed" in line for line in lines)
    assert max(len(line) for line in lines) > 40


def test_bench_follows_the_command_line_s_output_rules(tmp_path: Path) -> None:
    """`envelope bench` refused `--output` and `--query`, printed figures rounded with
    thousands commas into a pipe, and indented its JSON by 2 (docs/cli.md: every command that
    prints data takes the AWS CLI's options, the data the same in every format; review)."""
    import subprocess
    import sys

    def bench(*extra: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "envelope.cli.main", "bench", "machine", "--size", "1M",
             "--rounds", "1", "--dir", str(tmp_path), *extra],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "ENVELOPE_CONFIG": "", "ENVELOPE_OUTPUT": ""},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    piped = bench()  # no option, not a terminal: the data as JSON, 4 spaces
    data = json.loads(piped)
    assert piped.startswith('{\n    "') and "aes_gcm_1t_mbps" in data
    value = bench("--query", "aes_gcm_1t_mbps", "--output", "text").strip()
    assert "," not in value and float(value) > 0
    assert json.loads(bench("--json")).keys() == data.keys()
