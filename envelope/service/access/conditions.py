"""The Condition element: operators compiled once, evaluated against a request context.

Semantics follow the IAM documentation ("IAM JSON policy elements: Condition operators" and
"Single-valued vs. multivalued context keys"):

- a key missing from the request makes a positive operator false and a negated one
  (``StringNotEquals``, ``NotIpAddress``, ``ArnNotLike``, ...) true;
- ``...IfExists`` makes a missing key true (and behaves like the plain operator otherwise);
- ``Null`` tests presence: ``"true"`` holds when the key is missing, ``"false"`` when present;
- several values for one key OR, several keys in one operator AND, several operators AND
  (the last two are the statement's job: it holds a flat tuple of `Condition` and ANDs them);
- ``ForAllValues:`` holds when every request value matches (so an empty or missing key is
  true), ``ForAnyValue:`` when at least one does (so an empty or missing key is false); with a
  negated operator each request value must (or one must) match none of the policy values.

Choices where the documentation is silent, made so a policy can never be read more widely than
written:

- "Missing" means absent from the mapping or ``None``. An empty sequence is present but empty:
  ``Null`` says it exists, ``ForAllValues`` holds, ``ForAnyValue`` does not.
- A multivalued request value with no set operator behaves like ``ForAnyValue`` for a positive
  operator and as "no value matches" for a negated one (AWS asks for a set operator there and
  does not define the result).
- A request value of the wrong type for the operator (a word for ``NumericEquals``, a number
  for ``IpAddress``) matches nothing, so positive operators are false and negated ones true.
- Operator names are case-sensitive as AWS spells them; ``Null`` has no ``IfExists`` form and
  takes no set operator. Policy variables (``${aws:username}``) in the values of the string
  and ARN operators are expanded per request (`envelope.service.access.variables`, which
  says what an unresolved one does). ``ArnEquals`` and ``ArnLike`` are the same operator, as in AWS:
  each of the six colon-separated ARN components is matched with ``*``/``?`` wildcards.
- Condition key names are case-insensitive: they are lower-cased here, and the service
  supplies lower-case names in `Request.values`.

Everything that can be done at parse time (regexes, parsed numbers, dates, networks, base64)
is, so evaluation only compares.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from envelope.service.access.variables import Segments, Template, parse_template
from envelope.service.access.variables import as_text as _as_str
from envelope.service.errors import MalformedPolicyDocumentException

__all__ = (
    "BASE_OPERATORS",
    "Condition",
    "Value",
    "parse_condition_block",
    "segments_source",
    "wildcard_regex",
)

Value = str | bool | int | float | datetime | Sequence[str] | None
#: A condition's values with policy variables, resolved against one request: the positive test
#: of a request value, and whether a variable had no value.
Templated = Callable[[Mapping[str, Value]], tuple[Callable[[object], bool], bool]]

_NONE, _ANY, _ALL = 0, 1, 2
_MULTI = (list, tuple, set, frozenset)

# base operator -> (family, negated)
BASE_OPERATORS: Mapping[str, tuple[str, bool]] = {
    "StringEquals": ("str", False),
    "StringNotEquals": ("str", True),
    "StringEqualsIgnoreCase": ("stri", False),
    "StringNotEqualsIgnoreCase": ("stri", True),
    "StringLike": ("like", False),
    "StringNotLike": ("like", True),
    "NumericEquals": ("num==", False),
    "NumericNotEquals": ("num==", True),
    "NumericLessThan": ("num<", False),
    "NumericLessThanEquals": ("num<=", False),
    "NumericGreaterThan": ("num>", False),
    "NumericGreaterThanEquals": ("num>=", False),
    "DateEquals": ("date==", False),
    "DateNotEquals": ("date==", True),
    "DateLessThan": ("date<", False),
    "DateLessThanEquals": ("date<=", False),
    "DateGreaterThan": ("date>", False),
    "DateGreaterThanEquals": ("date>=", False),
    "Bool": ("bool", False),
    "BinaryEquals": ("bin", False),
    "IpAddress": ("ip", False),
    "NotIpAddress": ("ip", True),
    "ArnEquals": ("arn", False),
    "ArnNotEquals": ("arn", True),
    "ArnLike": ("arn", False),
    "ArnNotLike": ("arn", True),
    "Null": ("null", False),
}

_KEY_NAME = re.compile(r"[A-Za-z0-9-]+:\S+\Z")


def wildcard_regex(patterns: Sequence[str], *, star: str = ".*", flags: int = 0) -> re.Pattern[str]:
    """One compiled regex that fully matches any of `patterns`, where ``*`` is `star` and ``?``
    is one character: AWS's wildcard grammar for actions, resources and StringLike."""
    source = "|".join(_wildcard_source(p, star) for p in patterns)
    return re.compile("(?:" + source + r")\Z", flags | re.DOTALL)


def _wildcard_source(pattern: str, star: str) -> str:
    one = "." if star == ".*" else "[^:]"
    return "".join(star if c == "*" else one if c == "?" else re.escape(c) for c in pattern)


# --- request-side coercions: None means "this value cannot be compared" (matches nothing) ----


def _as_num(v: object) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
        return None if math.isnan(f) else f
    return None


def _as_time(v: object) -> float | None:
    if isinstance(v, datetime):
        return (v if v.tzinfo is not None else v.replace(tzinfo=UTC)).timestamp()
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        return _parse_time(v)
    return None


def _parse_time(text: str) -> float | None:
    """ISO 8601 (date, or date and time; no zone means UTC) or epoch seconds, as AWS accepts."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()


def _as_bool(v: object) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        low = v.lower()
        if low == "true":
            return True
        if low == "false":
            return False
    return None


def _as_bytes(v: object) -> bytes | None:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network


def _as_ip(v: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if isinstance(v, str):
        try:
            return ipaddress.ip_address(v)
        except ValueError:
            return None
    return None


# --- the compiled condition ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """One (operator, key) pair of a Condition block with its policy values compiled into
    `match`, the positive test of one request value. `holds` applies the missing-key,
    IfExists, negation and set-operator rules around it."""

    operator: str  # as written: "ForAnyValue:StringLikeIfExists"
    key: str  # lower-cased context key name
    set_op: int  # 0 none, 1 ForAnyValue, 2 ForAllValues
    if_exists: bool
    negated: bool
    match: Callable[[object], bool]
    null_expect: frozenset[bool]  # for Null only: the accepted "is missing" answers
    written: str = ""  # the key as the policy spells it (for explanations)
    templated: Templated | None = None  # set when a value holds a policy variable

    def holds(self, values: Mapping[str, Value]) -> bool:
        """Whether this condition is satisfied by the request context `values`."""
        v = values.get(self.key)
        if self.null_expect:
            return (v is None) in self.null_expect
        if v is None:
            if self.if_exists or self.set_op == _ALL:
                return True
            if self.set_op == _ANY:
                return False
            return self.negated
        match = self.match
        if self.templated is not None:  # (a value whose variable has no value matches nothing)
            match = self.templated(values)[0]
        if isinstance(v, _MULTI):
            if self.set_op == _ALL:
                return all(match(x) != self.negated for x in v)
            if self.set_op == _ANY:
                return any(match(x) != self.negated for x in v)
            return any(match(x) for x in v) != self.negated
        return match(v) != self.negated

    def why_not(self, values: Mapping[str, Value]) -> str:
        """Why `holds` is false, for an explanation: names the operator and key, never the
        request's values (an encryption context may be sensitive to some readers)."""
        v = values.get(self.key)
        key = self.written or self.key
        if self.null_expect:
            return f"{self.operator} {key}: the key is {'missing' if v is None else 'present'}"
        if v is None:
            return f"{self.operator} {key}: the key is missing from the request"
        if isinstance(v, _MULTI) and not v:
            return f"{self.operator} {key}: the request has no values for the key"
        if self.templated is not None and self.templated(values)[1]:
            return f"{self.operator} {key}: a policy variable in its values has no value"
        if self.set_op == _ALL:
            return f"{self.operator} {key}: not every request value matches"
        if self.negated:
            return f"{self.operator} {key}: a request value matches a listed value"
        return f"{self.operator} {key}: no request value matches"


def _fail(where: str, what: str) -> MalformedPolicyDocumentException:
    return MalformedPolicyDocumentException(f"{where}: {what}")


def _parse_operator(name: str, where: str) -> tuple[int, str, bool]:
    set_op = _NONE
    base = name
    if base.startswith("ForAnyValue:"):
        set_op, base = _ANY, base[len("ForAnyValue:") :]
    elif base.startswith("ForAllValues:"):
        set_op, base = _ALL, base[len("ForAllValues:") :]
    if_exists = False
    if base.endswith("IfExists") and base != "IfExists":
        if_exists, base = True, base[: -len("IfExists")]
    if base not in BASE_OPERATORS:
        raise _fail(where, f"unknown condition operator {name!r}")
    if base == "Null" and (if_exists or set_op != _NONE):
        raise _fail(where, f"condition operator {name!r}: Null takes no IfExists or set operator")
    return set_op, base, if_exists


def _scalars(raw: object, where: str) -> list[str | int | float | bool]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _fail(where, "the list of condition values is empty")
    out: list[str | int | float | bool] = []
    for item in items:
        if not isinstance(item, str | int | float | bool):
            raise _fail(where, f"condition value {item!r} must be a string, number or boolean")
        out.append(item)
    return out


def _compile_match(
    family: str, vals: list[str | int | float | bool], where: str, variables: bool = False
) -> tuple[Callable[[object], bool], Templated | None]:
    """The positive test of one request value for these policy values, and, when some of
    them hold policy variables (`variables`: the policy's Version has them), the per-request
    test that resolves them."""
    templates: list[Template] = []
    if variables and family in ("str", "stri", "like", "arn"):
        kept: list[str | int | float | bool] = []
        for x in vals:
            t = parse_template(x) if isinstance(x, str) else None
            if t is None:
                kept.append(x)
            else:
                templates.append(t)
        vals = kept
    static = _compile_static(family, vals, where) if vals else _nothing
    if not templates:
        return static, None
    return static, _compile_templated(family, static if vals else None, templates)


def _nothing(v: object) -> bool:
    return False


_TEMPLATE_CACHE_LIMIT = 256


def _compile_templated(
    family: str, static: Callable[[object], bool] | None, templates: list[Template]
) -> Templated:
    """Resolve `templates` per request; the test they compile to is memoized per resolved
    text (bounded), so a policy with ``${aws:username}`` compiles once per user."""
    memo: dict[tuple[Segments, ...], Callable[[object], bool]] = {}

    def templated(values: Mapping[str, Value]) -> tuple[Callable[[object], bool], bool]:
        resolved = []
        unresolved = False
        for t in templates:
            segments = t.resolve(values)
            if segments is None:
                unresolved = True
            else:
                resolved.append(segments)
        key = tuple(resolved)
        match = memo.get(key)
        if match is None:
            match = _compile_segments(family, key, static)
            if len(memo) >= _TEMPLATE_CACHE_LIMIT:
                memo.clear()
            memo[key] = match
        return match, unresolved

    return templated


def _compile_segments(
    family: str, resolved: tuple[Segments, ...], static: Callable[[object], bool] | None
) -> Callable[[object], bool]:
    """The positive test for resolved template values (their substituted text is literal),
    ORed with the condition's other values."""
    test: Callable[[object], bool]
    if not resolved:
        test = _nothing
    elif family == "str":
        exact = frozenset("".join(t for _, t in segs) for segs in resolved)
        test = lambda v: _as_str(v) in exact  # noqa: E731
    elif family == "stri":
        lowered = frozenset("".join(t for _, t in segs).lower() for segs in resolved)

        def test(v: object) -> bool:
            s = _as_str(v)
            return s is not None and s.lower() in lowered

    else:
        make = segments_source if family == "like" else _arn_source
        sources = [src for src in map(make, resolved) if src is not None]
        rx = re.compile("(?:" + "|".join(sources) + r")\Z", re.DOTALL) if sources else None
        arn = family == "arn"

        def test(v: object) -> bool:
            if rx is None:
                return False
            if arn:
                return isinstance(v, str) and v.count(":") >= 5 and rx.match(v) is not None
            s = _as_str(v)
            return s is not None and rx.match(s) is not None

    if static is None:
        return test
    return lambda v: static(v) or test(v)


def segments_source(segments: Segments) -> str:
    """The regex source of resolved template text: the policy's own ``*``/``?`` are wildcards
    (``*`` any run of characters), substituted text is literal."""
    return "".join(_wildcard_source(t, ".*") if wild else re.escape(t) for wild, t in segments)


def _compile_static(
    family: str, vals: list[str | int | float | bool], where: str
) -> Callable[[object], bool]:
    if family in ("str", "stri", "like", "arn"):
        strs = []
        for x in vals:
            s = _as_str(x)
            if s is None or (family == "arn" and not isinstance(x, str)):
                raise _fail(where, f"condition value {x!r} must be a string")
            strs.append(s)
        if family == "str":
            exact = frozenset(strs)
            return lambda v: _as_str(v) in exact
        if family == "stri":
            lowered = frozenset(s.lower() for s in strs)

            def ieq(v: object) -> bool:
                s = _as_str(v)
                return s is not None and s.lower() in lowered

            return ieq
        if family == "like":
            literal = frozenset(s for s in strs if "*" not in s and "?" not in s)
            wild = [s for s in strs if s not in literal]
            rx = wildcard_regex(wild) if wild else None

            def like(v: object) -> bool:
                s = _as_str(v)
                if s is None:
                    return False
                return s in literal or (rx is not None and rx.match(s) is not None)

            return like
        return _compile_arn(strs, where)
    if family.startswith(("num", "date")):
        is_date = family.startswith("date")
        nums: list[float] = []
        for x in vals:
            n = (_parse_time(x) if isinstance(x, str) else _as_time(x)) if is_date else _as_num(x)
            if n is None:
                kind = "a date (ISO 8601 or epoch seconds)" if is_date else "a number"
                raise _fail(where, f"condition value {x!r} must be {kind}")
            nums.append(n)
        coerce = _as_time if is_date else _as_num
        op = family[4:] if is_date else family[3:]
        cmp: Callable[[float, float], bool] = {
            "==": lambda a, b: a == b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }[op]

        def compare(v: object) -> bool:
            n = coerce(v)
            return n is not None and any(cmp(n, p) for p in nums)

        return compare
    if family in ("bool", "null"):
        bools = set()
        for x in vals:
            b = _as_bool(x)
            if b is None:
                raise _fail(where, f"condition value {x!r} must be true or false")
            bools.add(b)
        frozen = frozenset(bools)
        return lambda v: _as_bool(v) in frozen
    if family == "bin":
        blobs = set()
        for x in vals:
            blob = _as_bytes(x) if isinstance(x, str) else None
            if blob is None:
                raise _fail(where, f"condition value {x!r} must be base64 text")
            blobs.add(blob)
        frozen_blobs = frozenset(blobs)
        return lambda v: _as_bytes(v) in frozen_blobs
    # ip
    nets: list[IpNet] = []
    for x in vals:
        try:
            if not isinstance(x, str):
                raise ValueError
            nets.append(ipaddress.ip_network(x, strict=False))
        except ValueError:
            raise _fail(where, f"condition value {x!r} must be an IP address or CIDR") from None

    def in_net(v: object) -> bool:
        addr = _as_ip(v)
        return addr is not None and any(addr.version == n.version and addr in n for n in nets)

    return in_net


def _arn_source(segments: Segments) -> str | None:
    """An ARN pattern's regex, component by component: ``*`` never crosses a colon in the first
    five components; the sixth (the resource) is the rest of the ARN, colons included. None
    when the text has fewer than six components (not an ARN)."""
    if segments == ((True, "*"),):
        return ".*"
    out: list[str] = []
    colons = 0
    for wild, text in segments:
        for c in text:
            if c == ":":
                colons += 1
                out.append(":")
            elif wild and c == "*":
                out.append("[^:]*" if colons < 5 else ".*")
            elif wild and c == "?":
                out.append("[^:]" if colons < 5 else ".")
            else:
                out.append(re.escape(c))
    return f"(?:{''.join(out)})" if colons >= 5 else None


def _compile_arn(patterns: list[str], where: str) -> Callable[[object], bool]:
    """ARN patterns (see `_arn_source`) in one regex."""
    regexes = []
    for p in patterns:
        source = _arn_source(((True, p),))
        if source is None:
            raise _fail(where, f"condition value {p!r} is not an ARN (six ':'-separated parts)")
        regexes.append(source)
    rx = re.compile("(?:" + "|".join(regexes) + r")\Z", re.DOTALL)

    def arn(v: object) -> bool:
        return isinstance(v, str) and v.count(":") >= 5 and rx.match(v) is not None

    return arn


def parse_condition_block(
    raw: object, where: str, *, variables: bool = False
) -> tuple[Condition, ...]:
    """Compile a statement's ``Condition`` member, or raise `MalformedPolicyDocumentException`
    naming the operator, key and value that is wrong. `variables`: the policy's Version
    (2012-10-17) gives ``${...}`` in string and ARN values its meaning."""
    if not isinstance(raw, dict):
        raise _fail(where, "Condition must be an object of operators")
    out: list[Condition] = []
    for name, block in raw.items():
        here = f"{where}.{name}"
        set_op, base, if_exists = _parse_operator(name, here)
        family, negated = BASE_OPERATORS[base]
        if not isinstance(block, dict) or not block:
            raise _fail(here, "an operator must map to a non-empty object of condition keys")
        for key, raw_values in block.items():
            if not _KEY_NAME.match(key):
                raise _fail(here, f"{key!r} is not a condition key (prefix:name)")
            at = f"{here}.{key}"
            vals = _scalars(raw_values, at)
            match, templated = _compile_match(family, vals, at, variables)
            null_expect: frozenset[bool] = frozenset()
            if family == "null":
                null_expect = frozenset(_as_bool(x) is True for x in vals)
            out.append(
                Condition(
                    name,
                    key.lower(),
                    set_op,
                    if_exists,
                    negated,
                    match,
                    null_expect,
                    key,
                    templated,
                )
            )
    return tuple(out)
