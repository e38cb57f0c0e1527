"""Reading envelope's TOML settings files: one reader and one table checker.

Three files are read (the CLI's profiles, `envelope serve`'s and `envelope xks serve`'s
configs), and each must refuse the same things the same way: a file it cannot read or parse
(naming the file and, for a parse error, the line), an unknown table or key (listing the known
ones, so a typo is obvious), a value of the wrong type (never echoing a secret), and relative
paths taken from the file's own folder rather than from wherever the command was started.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

__all__ = ("KeySpecs", "read_toml", "table_values")

#: A table's keys: TOML key -> (settings attribute, accepted Python type(s)).
KeySpecs = Mapping[str, tuple[str, type | tuple[type, ...]]]


def read_toml(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The parsed document at `path`; `what` names the file in errors ("server config")."""
    import tomllib  # only where a settings file is read (a command's start-up may not)

    # The errors are raised after their except blocks: ``from None`` hides the original
    # exception but keeps it (``__context__``), and a UnicodeDecodeError holds the whole file,
    # a PIN and secret access keys included, for anything that walks the chain (review).
    problem = ""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        problem = f"cannot read {what} {path}: {e.strerror or e}"
    except tomllib.TOMLDecodeError as e:  # its message ends "(at line N, column M)"
        problem = f"{what} {path} is not valid TOML: {e}"
    except UnicodeDecodeError as e:  # TOML is UTF-8
        problem = f"{what} {path} is not valid TOML: not UTF-8 text (byte {e.start})"
    raise ConfigurationError(problem)


#: TOML's names for the Python types `tomllib` gives.
_TOML_TYPES = {
    str: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "table",
}


def table_values(
    path: Path,
    table: str,
    body: Mapping[str, Any],
    keys: KeySpecs,
    *,
    paths: Collection[str] = (),
) -> Iterator[tuple[str, Any]]:
    """(attribute, value) for every key of `[table]`, checked against `keys`. Attributes in
    `paths` are resolved against the file's folder (``~`` expanded). A value of the wrong type
    is named by its type, never shown: any key may hold a secret put in the wrong place (a
    passphrase as `root_key = [...]` was printed; review)."""
    for key, value in body.items():
        spec = keys.get(key)
        if spec is None:
            raise ConfigurationError(
                f"{path}: unknown key {key!r} in [{table}] (known: {', '.join(keys)})"
            )
        attr, kind = spec  # (a TOML boolean is an int to isinstance: refused unless asked for)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = " or ".join(_TOML_TYPES.get(k, k.__name__) for k in kinds)
            raise ConfigurationError(
                f"{path}: [{table}] {key} has the wrong type: "
                f"{_TOML_TYPES.get(type(value), 'a value')} where {wanted} is expected (the "
                "value is not shown: it may be a secret)"
            )
        if isinstance(value, str) and "\x00" in value:  # no path, host or name holds one
            raise ConfigurationError(f"{path}: [{table}] {key} holds a NUL character")
        if attr in paths:
            value = str((path.parent / Path(str(value)).expanduser()).resolve())
        yield attr, value
