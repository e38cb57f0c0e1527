"""A benchmark result as a terminal table, JSON or a Markdown report.

Every result is JSON-shaped: scalars and small dicts of scalars (shown as one table of
figures, nested keys joined with a dot) and lists of rows (each list its own table). The
same walk makes the rich table and the Markdown, so the two always show the same figures.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import IO, Any

__all__ = ("cell", "cleaned", "figures", "print_table", "sections", "to_markdown")


def cell(value: Any) -> str:
    """A value as a table shows it: figures to 3 significant places or thousands."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def figures(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, scalar) for every scalar of `data`, nested dicts included."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from figures(value, f"{prefix}{key}.")
        elif not isinstance(value, list):
            yield f"{prefix}{key}", value


#: Text longer than this goes under a table as a note, not into a column.
NOTE_CHARS = 24


def sections(data: dict[str, Any]) -> Iterator[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each table: the figures, then each list of rows (its empty
    columns left out, its long texts as a `notes` table after it)."""
    scalars = [[k, cell(v)] for k, v in figures(data)]
    if scalars:
        yield "figures", ["figure", "value"], scalars
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            header = [
                k
                for k in dict.fromkeys(k for row in value for k in row)
                if any(row.get(k) not in (None, "") for row in value)
            ]
            # a row's name always stays in the table, first: it is what the row is about
            long = [
                k
                for k in header
                if k != "name"
                and any(isinstance(row.get(k), str) and len(row[k]) > NOTE_CHARS for row in value)
            ]
            short = sorted((k for k in header if k not in long), key=lambda k: k != "name")
            yield key, short, [[cell(row.get(k)) for k in short] for row in value]
            notes = [
                [cell(row.get(short[0])), k, str(row[k])]
                for row in value
                for k in long
                if row.get(k) not in (None, "")
            ]
            if notes:
                yield f"{key}: notes", [short[0], "field", "text"], notes


def cleaned(x: Any) -> Any:
    """The figures as data: keys in the order measured (documented in docs/bench.md), floats
    to 6 significant digits (small costs stay visible), non-finite ones (a division by a zero
    time) None rather than invalid JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: cleaned(v) for k, v in x.items()}
    if isinstance(x, list):
        return [cleaned(v) for v in x]
    return x


def to_markdown(title: str, data: dict[str, Any], *, plot: str | None = None) -> str:
    """A report to paste into an issue: a heading, each table, the plot if one was drawn."""
    lines = [f"## {title}", ""]
    for name, header, rows in sections(data):
        lines += [f"**{name}**", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    if plot:
        lines += [f"![{title}]({plot})", ""]
    return "\n".join(lines)


def print_table(title: str, data: dict[str, Any], file: IO[str] | None = None) -> None:
    """The result as rich tables on a terminal; elsewhere (a pipe, a file) plain
    tab-separated rows under each section's title, never wrapped or cut (rich drew an
    80-column table into a pipe, folding numbers across lines; review)."""
    out = file if file is not None else sys.stdout
    if not out.isatty():
        for name, header, rows in sections(data):
            print(f"{title}: {name}", file=out)
            print("\t".join(header), file=out)
            for row in rows:
                print("\t".join(row), file=out)
            print(file=out)
        return
    from rich.console import Console
    from rich.table import Table

    # As wide as its widest cells, whatever the terminal's width (the terminal wraps a long
    # line): rich fitted the table to 80 columns by folding cells, `16.58` over two lines
    # and `nam/e` in a header (review; docs/cli.md: nothing is ever cut or folded).
    console = Console(file=file, width=1 << 14)
    for name, header, rows in sections(data):
        table = Table(title=f"{title}: {name}", title_justify="left")
        for i, h in enumerate(header):
            table.add_column(
                h.replace("_", " "), justify="left" if i == 0 else "right", no_wrap=True
            )
        for row in rows:
            table.add_row(*row)
        console.print(table)
