"""One printer for every command that prints data, in the AWS CLI's manner.

KMS users already know `aws --output json|text|table --query EXPR`, so `envelope` copies it:

- The data is built once, as JSON-shaped values (bytes become base64), whatever the format.
- `--query` (JMESPath, the `jmespath` library, imported only when a query is given) applies to
  that data first; the format only decides how the result is drawn.
- `json`: indented JSON (4 spaces, non-ASCII kept), nothing printed for an empty object `{}`,
  as the AWS CLI does.
- `text`: the AWS CLI's tab-separated lines (`awscli/text.py`): a dict is one line of its
  scalar values in sorted-key order, then its lists and dicts, each under its key in upper
  case; a list of dicts is one line per dict, with the columns every dict's scalar keys
  sorted; a list of scalars is one tab-separated line.
- `table`: boxes drawn as the AWS CLI's table formatter does (a title, sections for nested
  members, sorted column headers, a one-row section turned into key/value rows when it
  would be wider than the terminal). Tables are drawn only when stdout is a terminal;
  asked for on a pipe or a file, the output is `text` (the same rows, without boxes).

Nothing is ever truncated or elided, in any format: a table is as wide as its widest cell
(a terminal narrower than that wraps the lines), because a script or a person that reads a
key id or an ARN must get all of it.

The format comes from `--output` (or `--json`, an alias of `--output json`), else
$ENVELOPE_OUTPUT, else the profile's `output` (see `envelope.config`), else `table` on a
terminal and `json` otherwise: a person at a terminal gets boxes, a pipe gets what the AWS
CLI gives by default, and never a table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from ..errors import ConfigurationError
from ..printable import printable
from ._stdio import require_open

__all__ = (
    "FORMATS",
    "add_output_arguments",
    "emit",
    "format_data",
    "jsonable",
    "output_requested",
    "prepare_output",
    "resolve_format",
)

#: The output formats, as the AWS CLI names them.
FORMATS = ("json", "text", "table")

# json, base64 and unicodedata are imported where they are used: `envelope encrypt` imports
# this module and usually prints nothing (start-up is most of the cost of a small file).


def add_output_arguments(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """`--output`, `--query`, `--json` and `--profile` on a command that prints data.

    `nested`: the options are also defined on a parent parser (`envelope keys --json list`),
    so none may have a default that would overwrite the parent's value."""
    g = p.add_argument_group("output")
    g.add_argument(
        "--output",
        dest="output_format",
        choices=FORMATS,
        default=argparse.SUPPRESS,
        help="json, text (tab-separated) or table (on a terminal only; text otherwise); "
        "default $ENVELOPE_OUTPUT, the profile's output, else table on a terminal and json "
        "otherwise",
    )
    g.add_argument(
        "--query",
        metavar="JMESPATH",
        default=argparse.SUPPRESS,
        help="a JMESPath expression applied to the data before it is formatted, "
        "e.g. 'Keys[].KeyId'",
    )
    g.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help="same as --output json",
    )
    g.add_argument(
        "--profile",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="settings profile (default $ENVELOPE_PROFILE, else [profile.default] if the "
        "config file has one); see docs/cli.md",
    )


def output_requested(args: argparse.Namespace) -> bool:
    """Whether this command line asked for data output (`--output`, `--json` or `--query`).

    Commands whose job is not printing (encrypt, decrypt, the lake jobs) print their summary
    as data only when asked on their command line; a profile's `output` then picks the
    format only."""
    requested = getattr(args, "output_requested", None)
    if requested is not None:
        return bool(requested)
    return bool(
        getattr(args, "json", False)
        or getattr(args, "output_format", None) is not None
        or getattr(args, "query", None) is not None
    )


def prepare_output(args: argparse.Namespace) -> None:
    """Check the output options before the command does anything (a bad query must not
    come after a key was created): `--json` with another `--output`, a summary asked for on
    a stdout that carries the data (`OUT` is `-`), and the JMESPath expression, compiled
    here (a syntax error is a usage error, exit 2). Run before settings are filled in."""
    args.output_requested = output_requested(args)
    if getattr(args, "json", False):
        given = getattr(args, "output_format", None)
        if given not in (None, "json"):
            raise ConfigurationError(f"--json is --output json; it cannot go with --output {given}")
        args.output_format = "json"
    if getattr(args, "summary_on_stdout", False) and args.output_requested:
        if getattr(args, "output", None) == "-":
            raise ConfigurationError(
                "OUT is - (stdout carries the data): a summary (--json, --output, --query) "
                "cannot share it; write OUT to a file"
            )
    _compiled_query(args)


def _compiled_query(args: argparse.Namespace) -> Any:
    expression = getattr(args, "query", None)
    if expression is None:
        return None
    compiled = getattr(args, "query_compiled", None)
    if compiled is not None:
        return compiled
    import importlib

    jmespath = importlib.import_module("jmespath")  # no type stubs: Any on purpose
    try:
        compiled = jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as e:
        msg, at = getattr(e, "msg", None), getattr(e, "lex_position", None)
        detail = f"{msg} at character {at}" if msg and at is not None else str(e).splitlines()[0]
        raise ConfigurationError(
            f"--query: invalid JMESPath expression {expression!r}: {detail}"
        ) from None
    problem = _function_problem(jmespath, compiled.parsed)
    if problem is not None:
        raise ConfigurationError(f"--query {expression!r}: {problem}")
    args.query_compiled = compiled
    return compiled


def _function_problem(jmespath: Any, node: Any) -> str | None:
    """An unknown function or a wrong argument count anywhere in a parsed expression, said
    before the command acts. Running the expression on ``{}`` missed those under a
    projection, a pipe or a multi-select (never reached on empty input): the key was made,
    then the usage error came (review). Argument types depend on the data: checked then."""
    if not isinstance(node, dict):
        return None
    if node.get("type") == "function_expression":
        name, given = node.get("value"), len(node.get("children") or ())
        entry = jmespath.functions.Functions().FUNCTION_TABLE.get(name)
        if entry is None:
            return f"Unknown function: {name}()"
        signature = entry["signature"]
        if signature and signature[-1].get("variadic"):
            if given < len(signature):
                return str(jmespath.exceptions.VariadictArityError(len(signature), given, name))
        elif given != len(signature):
            return str(jmespath.exceptions.ArityError(len(signature), given, name))
    for child in node.get("children") or ():
        problem = _function_problem(jmespath, child)
        if problem is not None:
            return problem
    return None


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def resolve_format(args: argparse.Namespace, stream: IO[str] | None = None) -> str:
    """The format to draw in: the option (settings filled in by `envelope.config`), else
    table on a terminal and json otherwise; table becomes text when `stream` is not a
    terminal."""
    stream = stream if stream is not None else sys.stdout
    fmt = "json" if getattr(args, "json", False) else getattr(args, "output_format", None)
    tty = _isatty(stream)
    if fmt is None:
        fmt = "table" if tty else "json"
    if fmt not in FORMATS:
        raise ConfigurationError(f"output must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "table" and not tty:
        fmt = "text"
    return fmt


def jsonable(obj: Any) -> Any:
    """The data as JSON values: bytes as base64, tuples as lists, keys as text, and anything
    else that JSON has no type for as its text."""
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        import base64

        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return str(obj)


#: What a `--query` that fails on the data says of the command (`emit`'s `failed_query`).
CARRIED_OUT = "the command itself was carried out; only its output could not be drawn"


def _query_problem(e: Exception) -> str:
    """What went wrong in a query run on the data, without the data: jmespath's type error
    quotes the value it was given, which may be the secret the command just made (a
    `--query 'abs(AccessKey.SecretAccessKey)'` printed it on stderr; review)."""
    problem = getattr(e, "function_name", None)
    if problem is not None:  # jmespath.exceptions.JMESPathTypeError
        expected = ", ".join(map(str, getattr(e, "expected_types", ()) or ()))
        actual = getattr(e, "actual_type", "?")
        return f"in function {problem}(), a value of type {actual}, where {expected} is expected"
    if isinstance(e, TypeError):  # a comparison of a number with a string: types, not values
        return str(e)
    return f"the expression cannot be evaluated on this output ({type(e).__name__})"


def emit(
    args: argparse.Namespace,
    data: Any,
    title: str = "",
    *,
    stream: IO[str] | None = None,
    failed_query: str = CARRIED_OUT,
) -> None:
    """Print `data` (JSON-shaped) as the command line asked: query, then format.
    `failed_query` says what became of the command if the query fails on `data`."""
    if stream is None:
        require_open(1, "this command prints its data there")
    out = stream if stream is not None else sys.stdout
    fmt = resolve_format(args, out)
    value = jsonable(data)
    query = _compiled_query(args)
    if query is not None:
        try:
            value = query.search(value)
        except (ValueError, TypeError) as e:
            # jmespath's errors on this data: a function given the wrong types (ValueError),
            # a comparison of a number with a string (a TypeError it lets through: a
            # traceback, exit 1; review)
            raise ConfigurationError(
                f"--query {args.query!r}: {_query_problem(e)} ({failed_query})"
            ) from None
    width = _terminal_width(out) if fmt == "table" else None
    out.write(format_data(value, fmt, title=title, terminal_width=width))
    out.flush()


def format_data(
    value: Any, fmt: str, *, title: str = "", terminal_width: int | None = None
) -> str:
    """`value` (JSON values) drawn in `fmt`, as the AWS CLI draws it."""
    if fmt == "json":
        import json

        if isinstance(value, dict) and not value:
            return ""
        text = json.dumps(value, indent=4, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate (a local file name whose bytes are not UTF-8): written as is, it
            # would make the output invalid UTF-8, so invalid JSON; escaped, it is valid JSON
            text = json.dumps(value, indent=4, ensure_ascii=True)
        return text + "\n"
    if fmt == "text":
        if isinstance(value, str):
            # one value alone (`--query Policy --output text`): no fields or rows to forge, so
            # its line feeds and tabs are printed as they are, as the AWS CLI does (a policy
            # then round-trips through a file); other control characters stay escaped
            return _lone(value) + "\n"
        lines: list[str] = []
        _text(value, lines)
        return "".join(line + "\n" for line in lines)
    if fmt == "table":
        return _Table.draw(value, title, terminal_width)
    raise ConfigurationError(f"output must be one of {', '.join(FORMATS)}, not {fmt!r}")


# -- text: awscli/text.py's rules ------------------------------------------------------------


def _scalar(v: Any) -> bool:
    return not isinstance(v, (dict, list))


def _str(v: Any) -> str:
    """A scalar as the AWS CLI prints it (None, True and False as Python spells them), its
    unprintable characters escaped: a value may come from an object's header (a key id, a
    context value), and a raw tab, newline or ESC would forge fields, lines or terminal
    commands (format.md §4)."""
    return printable(str(v))


def _lone(text: str) -> str:
    """A value printed alone: `printable`, but for its line feeds and tabs."""
    if "\n" not in text and "\t" not in text:
        return printable(text)
    return "\n".join("\t".join(printable(p) for p in ln.split("\t")) for ln in text.split("\n"))


def _text(
    item: Any, lines: list[str], ident: str | None = None, keys: list[str] | None = None
) -> None:
    if isinstance(item, dict):
        _text_dict(item, lines, ident, keys)
    elif isinstance(item, list):
        _text_list(item, lines, ident)
    else:
        lines.append(_str(item))


def _text_list(items: list[Any], lines: list[str], ident: str | None) -> None:
    if not items:
        return
    if any(isinstance(el, dict) for el in items):
        columns = sorted({k for el in items if isinstance(el, dict) for k, v in el.items()
                          if _scalar(v)})
        for el in items:
            _text(el, lines, ident, columns)
    elif any(isinstance(el, list) for el in items):
        scalars = [el for el in items if _scalar(el)]
        if scalars:
            _text_scalars(scalars, lines, ident)
        for el in items:
            if not _scalar(el):
                _text(el, lines, ident)
    else:
        _text_scalars(items, lines, ident)


def _text_scalars(items: list[Any], lines: list[str], ident: str | None) -> None:
    if ident is not None:
        lines.extend(f"{_str(ident.upper())}\t{_str(v)}" for v in items)
    else:
        lines.append("\t".join(_str(v) for v in items))


def _text_dict(
    item: dict[str, Any], lines: list[str], ident: str | None, keys: list[str] | None
) -> None:
    if keys is None:
        ordered = sorted(item.items())
        scalars = [_str(v) for _, v in ordered if _scalar(v)]
        rest = [(k, v) for k, v in ordered if not _scalar(v)]
    else:
        scalars = [_str(item.get(k, "")) for k in keys]
        rest = [(k, item[k]) for k in sorted(set(item) - set(keys))]
    if scalars:
        lines.append("\t".join(([_str(ident.upper())] if ident is not None else []) + scalars))
    for k, v in rest:
        _text(v, lines, k)


# -- table: awscli/formatter.py's TableFormatter and awscli/table.py's layout ------------------


def _width(text: str) -> int:
    """Columns `text` takes on a terminal (wide and ambiguous East Asian characters: 2)."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WFA" else 1 for c in text)


def _cell(v: Any) -> str:
    """A value as one table line: unprintable characters shown escaped (`_str`: a newline in
    a description must not break the box), nothing cut."""
    return _str(v)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _center(text: str, width: int) -> str:
    room = width - _width(text)
    left = room // 2
    return " " * left + text + " " * (room - left)


class _Section:
    def __init__(self, title: str, indent: int) -> None:
        self.title = _str(title)  # a member name may be a context key from a header
        self.indent = indent
        self.headers: list[str] = []
        self.rows: list[list[str]] = []

    def columns(self) -> list[int]:
        widths: list[int] = []
        for row in ([self.headers] if self.headers else []) + self.rows:
            for i, cell in enumerate(row):
                if i == len(widths):
                    widths.append(0)
                widths[i] = max(widths[i], _width(cell))
        return widths

    def natural_width(self) -> int:
        """Width with every cell whole: '|' then '  cell ' and '|' per column, plus the
        indentation bars on both sides; at least the title's."""
        cols = self.columns()
        body = 1 + sum(w + 4 for w in cols) if cols else 0
        return max(body, _width(self.title) + 4) + 2 * self.indent


class _Table:
    """The AWS CLI's table: a title, then a section per nested member."""

    def __init__(self) -> None:
        self.sections: list[_Section] = []

    @classmethod
    def draw(cls, value: Any, title: str, terminal_width: int | None) -> str:
        table = cls()
        if not table._build(title or None, value, 0):
            return ""
        return table._render(terminal_width)

    def _new(self, title: str | None, indent: int) -> _Section:
        section = _Section(title or "", indent)
        self.sections.append(section)
        return section

    def _current(self) -> _Section:
        return self.sections[-1] if self.sections else self._new(None, 0)

    def _build(self, title: str | None, value: Any, indent: int) -> bool:
        if value is None or value == {} or value == [] or value == "":
            return False
        if title is not None:
            self._new(title, indent)
        if isinstance(value, list):
            if isinstance(value[0], dict):
                self._from_list(value, indent, title)
            else:
                for item in value:
                    if _scalar(item):
                        self._current().rows.append([_cell(item)])
                    elif isinstance(item, list) and all(_scalar(el) for el in item):
                        self._current().rows.append([_cell(el) for el in item])
                    else:
                        self._build(None, item, indent)
        elif isinstance(value, dict):
            self._from_dict(value, indent)
        else:
            self._current().rows.append([_cell(value)])
        return True

    @staticmethod
    def _split(d: dict[str, Any]) -> tuple[list[str], list[str]]:
        return sorted(k for k, v in d.items() if _scalar(v)), sorted(
            k for k, v in d.items() if not _scalar(v)
        )

    def _from_dict(self, d: dict[str, Any], indent: int) -> None:
        headers, more = self._split(d)
        section = self._current()
        if len(headers) == 1:
            section.rows.append([_cell(headers[0]), _cell(d[headers[0]])])
        elif headers:
            section.headers = [_cell(h) for h in headers]
            section.rows.append([_cell(d[k]) for k in headers])
        for k in more:
            self._build(k, d[k], indent + 1)

    def _from_list(self, items: list[Any], indent: int, title: str | None) -> None:
        headers: set[str] = set()
        more: set[str] = set()
        for el in items:
            if isinstance(el, dict):
                h, m = self._split(el)
                headers.update(h)
                more.update(m)
        cols, nested = sorted(headers), sorted(more)
        shown = [_cell(c) for c in cols]
        self._current().headers = shown
        first = True
        for el in items:
            if not isinstance(el, dict):
                self._build(None, el, indent)
                continue
            if not first and nested:
                self._new(title, indent).headers = shown
            first = False
            self._current().rows.append([_cell(el.get(c, "")) for c in cols])
            for k in nested:
                if k in el:
                    self._build(k, el[k], indent + 1)

    def _render(self, terminal_width: int | None) -> str:
        width = max(s.natural_width() for s in self.sections)
        if terminal_width is not None and width > terminal_width:
            # Too wide for the terminal: one-row sections become key/value rows (never cut).
            for s in self.sections:
                if len(s.rows) == 1 and s.headers:
                    s.rows = [[h, v] for h, v in zip(s.headers, s.rows[0], strict=True)]
                    s.headers = []
            width = max(s.natural_width() for s in self.sections)
        out = ["-" * width]
        for s in self.sections:
            out.extend(self._render_section(s, width))
        return "".join(line + "\n" for line in out)

    @staticmethod
    def _render_section(s: _Section, width: int) -> list[str]:
        inner = width - 2 * s.indent
        bars = "|" * s.indent
        lines: list[str] = []
        if s.title:
            lines.append("|" + _center(s.title, inner - 2) + "|")
            if not s.headers and not s.rows:
                lines.append("+" + "-" * (inner - 2) + "+")
        cols = s.columns()
        if cols:
            # Stretch the columns to the section's width; never below a cell's width.
            extra = inner - (1 + sum(w + 4 for w in cols))
            cols = [
                w + extra // len(cols) + (1 if i < extra % len(cols) else 0)
                for i, w in enumerate(cols)
            ]
            rule = "+" + "+".join("-" * (w + 3) for w in cols) + "+"
            if s.headers:
                lines.append(rule)
                lines.append(
                    "|" + "|".join(_center(h, w + 3) for h, w in zip(s.headers, cols, strict=True))
                    + "|"
                )
            if s.rows:
                lines.append(rule)
                for row in s.rows:
                    cells = [_pad(c, w) for c, w in zip(row, cols, strict=False)]
                    cells += [" " * w for w in cols[len(row) :]]
                    lines.append("|" + "|".join(f"  {c} " for c in cells) + "|")
                lines.append(rule)
        return [bars + line + bars for line in lines]


def _terminal_width(stream: IO[str]) -> int | None:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return None
