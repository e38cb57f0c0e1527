"""Policy variables: ``${aws:username}`` in a Resource or in a string or ARN condition value.

Semantics follow the IAM User Guide ("IAM policy elements: Variables and tags"):

- Only a policy whose ``Version`` is ``2012-10-17`` has variables; in ``2008-10-17`` (also the
  version of a policy that names none) ``${...}`` is literal text, as in AWS.
- They may stand in ``Resource``/``NotResource`` and in the values of the string
  (``StringEquals``, ``StringLike``, ... and their negations) and ARN operators; nowhere else.
- ``${key}`` is replaced by the request's value of the condition key ``key`` (names are
  case-insensitive). ``${key, 'text'}`` gives a default for a request where the key is missing;
  two single quotes in the default are one.
- ``${*}``, ``${?}`` and ``${$}`` are a literal ``*``, ``?`` and ``$``: a way to write a
  wildcard character that matches only itself.
- Replacement happens once, and what it puts in is literal text: a user named ``*`` matches
  only the name ``*``, never everything, and a value holding ``${...}`` is not expanded again.

A variable whose key is missing from the request (or has several values, such as
``aws:TagKeys``) and has no default has no value. The IAM guide treats such a value as null:
nothing is equal or like it. So it matches nothing: a Resource
pattern with it matches no resource (a NotResource pattern with it excludes none), a condition
value with it matches no request value, so a positive operator is false for it and a negated
one (``StringNotEquals``, ``ArnNotLike``, ...) true. A Deny "unless the resource's tag is the
caller's" therefore still denies a caller without the tag.

Choices where the documentation is silent:

- A ``${`` that does not form a variable (no closing brace, a name that is not ``prefix:name``,
  a badly quoted default) is literal text, as it was before variables were understood.
- A request value is turned into text as the condition operators see it: ``true``/``false``,
  decimal numbers, ISO 8601 times.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = ("Segments", "Template", "Var", "as_text", "parse_template")

_ESCAPES = {"${*}": "*", "${?}": "?", "${$}": "$"}
# ${ name } or ${ name , 'default' } (a default's quote is doubled); the name as condition keys
# are written, without spaces, commas or braces
_VARIABLE = re.compile(
    r"\$\{\s*(?P<name>[A-Za-z0-9-]+:[^\s,{}]+)\s*(?:,\s*'(?P<default>(?:[^']|'')*)'\s*)?\}"
)

#: A resolved template: (wild, text) pieces in order; `wild` marks the policy's own text, whose
#: ``*`` and ``?`` are wildcards where the operator has them; the rest is literal.
Segments = tuple[tuple[bool, str], ...]


@dataclass(frozen=True, slots=True)
class Var:
    """One ``${key}`` or ``${key, 'default'}``."""

    key: str  # lower-cased
    default: str | None


@dataclass(frozen=True, slots=True)
class Template:
    """A policy string with at least one variable or escape, split into its pieces: policy
    text (str, wildcards meaningful), literal text (a 1-tuple) and variables."""

    text: str  # as written
    parts: tuple[str | tuple[str] | Var, ...]

    def resolve(self, values: Mapping[str, object]) -> Segments | None:
        """The pieces with every variable replaced by the request's value, or None when one
        has no value and no default. Reads `values` with ``get`` only (the decision memo
        records what an evaluation read)."""
        out: list[tuple[bool, str]] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append((True, part))
            elif isinstance(part, tuple):
                out.append((False, part[0]))
            else:
                text = as_text(values.get(part.key))
                if text is None:
                    if part.default is None:
                        return None
                    text = part.default
                out.append((False, text))
        return tuple(out)


def as_text(v: object) -> str | None:
    """A request value as the string operators (and a policy variable) see it: text as is,
    ``true``/``false``, decimal numbers, ISO 8601 times; None for anything else (a missing
    key, several values, bytes)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, datetime):
        return v.isoformat()
    return None


def parse_template(text: str) -> Template | None:
    """`text` as a template, or None when it holds no variable and no escape (the caller then
    keeps its faster literal path)."""
    if "${" not in text:
        return None
    parts: list[str | tuple[str] | Var] = []
    plain: list[str] = []
    i = 0
    found = False
    while i < len(text):
        start = text.find("${", i)
        if start < 0:
            plain.append(text[i:])
            break
        plain.append(text[i:start])
        escape = _ESCAPES.get(text[start : start + 4])
        if escape is not None:
            _flush(plain, parts)
            parts.append((escape,))
            found = True
            i = start + 4
            continue
        m = _VARIABLE.match(text, start)
        if m is None:  # not a variable: literal text, as AWS leaves it
            plain.append("${")
            i = start + 2
            continue
        _flush(plain, parts)
        default = m.group("default")
        parts.append(
            Var(m.group("name").lower(), None if default is None else default.replace("''", "'"))
        )
        found = True
        i = m.end()
    _flush(plain, parts)
    return Template(text, tuple(parts)) if found else None


def _flush(plain: list[str], parts: list[str | tuple[str] | Var]) -> None:
    if plain:
        joined = "".join(plain)
        if joined:
            parts.append(joined)
        plain.clear()
