"""Translation between the AWS KMS JSON protocol and `KeyService`, driven by botocore's model.

botocore ships the KMS service model (`botocore.session.get_session().get_service_model("kms")`):
every operation with its input and output shapes and every member's constraints. `WireModel`
compiles it once into small plans and then, per request:

- `parse`: the JSON body becomes the service method's keyword arguments. Top-level member
  ``KeyId`` becomes ``key_id`` (`botocore.xform_name`); nested members keep their AWS names, as
  the service takes them; blobs are base64-decoded; timestamps are epoch numbers. Every member is
  checked against the model's constraints (required, types, length and list-size bounds,
  patterns, enums, integer ranges) and all failures are reported together as one
  ``ValidationException`` in AWS's words ("1 validation error detected: Value '' at 'keyId'
  failed to satisfy constraint: Member must have length greater than or equal to 1"). A value of
  the wrong JSON type is a ``SerializationException``, as AWS's JSON front end answers it.
  Unknown members are ignored, as AWS does.
- `render`: the service's dict becomes the JSON body, keeping only the members of the output
  shape (so internal fields can never leak), blobs base64-encoded, timestamps as epoch seconds.

Operations and members the model has but the service does not take are decided here, in one
place (`UNSERVED_MEMBERS`, `Operation.method` None), and listed in docs/server.md: a member that
is absent or has its neutral value is accepted; otherwise the call is refused before the service
sees it, never silently half-done. When the service grows a method or a keyword (DryRun,
DeriveSharedSecret, ...), introspection picks it up without a change here.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import botocore
import botocore.session

from .errors import WireError

__all__ = (
    "TARGET_PREFIX",
    "UNSERVED_MEMBERS",
    "Operation",
    "WireModel",
    "load_model",
)

TARGET_PREFIX = "TrentService."


def load_model() -> Any:
    """botocore's KMS service model (a `botocore.model.ServiceModel`)."""
    return botocore.session.get_session().get_service_model("kms")


@dataclass(frozen=True)
class Unserved:
    """What happens to a model member the service method does not take.

    `neutral` values are accepted and dropped (they ask for nothing the service would not do
    anyway); any other value is refused with `code` and `why`."""

    neutral: tuple[object, ...]
    code: str
    why: str


_DRY_RUN = Unserved(
    (False,),
    "UnsupportedOperationException",
    "DryRun is not supported for this operation by this server",
)

#: Model members the service may not take, and how each is answered. A member absent from this
#: table and from the service method's signature is refused as unsupported.
UNSERVED_MEMBERS: Mapping[str, Unserved] = {
    "DryRun": _DRY_RUN,
    # grant tokens make a new grant usable before it is eventually consistent; grants here are
    # effective at once, so a token adds nothing (it is still validated against the model)
    "GrantTokens": Unserved((None,), "", ""),
    "Recipient": Unserved(
        (),
        "UnsupportedOperationException",
        "Recipient (a Nitro Enclaves attestation document) is not supported by this server",
    ),
}

#: The one deliberate widening of a model pattern: AWS reaches an XKS proxy on port 443 only, so
#: its endpoint pattern has no port; here a port may follow the host, so a proxy can run on
#: loopback or on an unprivileged port (docs/keystores.md).
PATTERN_OVERRIDES: Mapping[str, str] = {
    "XksProxyUriEndpointType": r"^https://[a-zA-Z0-9.-]+(:[0-9]{1,5})?$",
}

# ---------------------------------------------------------------------------- compiled shapes


@dataclass(eq=False)
class _Node:
    """One shape, compiled: its kind, constraints and children."""

    kind: str  # structure | list | map | string | blob | integer | long | boolean | timestamp ...
    name: str
    sensitive: bool = False
    min: int | None = None
    max: int | None = None
    pattern: re.Pattern[str] | None = None
    pattern_text: str = ""
    enum: tuple[str, ...] = ()
    # structure: json name -> (node, required)
    members: dict[str, _Node] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    member: _Node | None = None  # list element
    key: _Node | None = None  # map key
    value: _Node | None = None  # map value


def _compile(shape: Any, cache: dict[str, _Node]) -> _Node:
    hit = cache.get(shape.name)
    if hit is not None:
        return hit
    meta = shape.metadata
    node = _Node(kind=shape.type_name, name=shape.name, sensitive=bool(meta.get("sensitive")))
    cache[shape.name] = node
    if "min" in meta:
        node.min = int(meta["min"])
    if "max" in meta:
        node.max = int(meta["max"])
    if "pattern" in meta:
        node.pattern_text = PATTERN_OVERRIDES.get(shape.name, meta["pattern"])
        # Java's Pattern.matches: the whole value; \w and \s are ASCII in Java
        node.pattern = re.compile(node.pattern_text, re.ASCII)
    enum = getattr(shape, "enum", None)
    if enum:
        node.enum = tuple(enum)
    if node.kind == "structure":
        node.members = {k: _compile(v, cache) for k, v in shape.members.items()}
        node.required = frozenset(shape.required_members)
    elif node.kind == "list":
        node.member = _compile(shape.member, cache)
    elif node.kind == "map":
        node.key = _compile(shape.key, cache)
        node.value = _compile(shape.value, cache)
    return node


# ---------------------------------------------------------------------------- validation text

_TYPE_NAMES = {
    "string": "String",
    "blob": "Blob",
    "integer": "Integer",
    "long": "Long",
    "boolean": "Boolean",
    "timestamp": "Date",
    "double": "Double",
    "float": "Float",
}


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "TRUE_VALUE" if value else "FALSE_VALUE"
    if isinstance(value, str):
        return "STRING_VALUE"
    if isinstance(value, int | float):
        return "NUMBER_VALUE"
    return "VALUE"


def _serialization(node: _Node, value: object) -> WireError:
    """AWS's JSON front end: a value of the wrong JSON type is not a validation error."""
    if isinstance(value, dict):
        msg = "Start of structure or map found where not expected."
    elif isinstance(value, list):
        msg = "Start of list found where not expected"
    elif node.kind in ("structure", "map"):
        msg = f"{_json_kind(value)} can not be converted to a structure or map"
    elif node.kind == "list":
        msg = f"{_json_kind(value)} can not be converted to a list"
    else:
        msg = f"{_json_kind(value)} can not be converted to a {_TYPE_NAMES.get(node.kind, 'value')}"
    return WireError("SerializationException", msg)


def _java_len(s: str) -> int:
    """String length as Java (and so AWS) counts it: UTF-16 code units."""
    if s.isascii():
        return len(s)
    return len(s.encode("utf-16-le")) // 2


def _scalar_constraints(node: _Node, value: object) -> list[str]:
    """The constraint phrases `value` (already of the right type) fails, in AWS's words."""
    out: list[str] = []
    if node.kind in ("string", "blob", "list", "map"):
        if isinstance(value, str):
            n = _java_len(value)
        else:
            n = len(value)  # type: ignore[arg-type]
        if node.max is not None and n > node.max:
            out.append(f"Member must have length less than or equal to {node.max}")
        if node.min is not None and n < node.min:
            out.append(f"Member must have length greater than or equal to {node.min}")
    elif node.kind in ("integer", "long") and isinstance(value, int):
        if node.max is not None and value > node.max:
            out.append(f"Member must have value less than or equal to {node.max}")
        if node.min is not None and value < node.min:
            out.append(f"Member must have value greater than or equal to {node.min}")
    if isinstance(value, str):
        if node.pattern is not None and node.pattern.fullmatch(value) is None:
            out.append(f"Member must satisfy regular expression pattern: {node.pattern_text}")
        if node.enum and value not in node.enum:
            out.append(f"Member must satisfy enum value set: [{', '.join(node.enum)}]")
    return out


def _shown(node: _Node, value: object) -> str:
    """``Value 'x' `` as AWS prints it; sensitive members and blobs are never shown."""
    if node.sensitive or node.kind == "blob":
        return "Value"
    if isinstance(value, bool):
        return f"Value '{'true' if value else 'false'}'"
    if isinstance(value, str | int | float):
        return f"Value '{value}'"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if node.member is not None and (node.member.sensitive or node.member.kind == "blob"):
            return "Value"
        return f"Value '[{', '.join(value)}]'"
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return "Value '{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}'"
    return "Value"


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


class _Checker:
    """Converts one request's JSON into Python values, collecting validation errors."""

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, node: _Node, value: object, path: str, what: str) -> None:
        self.errors.append(
            f"{_shown(node, value)} at '{path}' failed to satisfy constraint: {what}"
        )

    def convert(self, node: _Node, value: object, path: str) -> Any:
        kind = node.kind
        if kind == "structure":
            if not isinstance(value, dict):
                raise _serialization(node, value)
            return self.structure(node, value, path, top=False)
        if kind == "list":
            if not isinstance(value, list):
                raise _serialization(node, value)
            assert node.member is not None
            member = node.member
            items: list[Any] = []
            scalar_failures: list[str] = []
            for i, item in enumerate(value, 1):
                if item is None:
                    continue
                if member.kind in ("structure", "list", "map"):
                    items.append(self.convert(member, item, f"{path}.{i}.member"))
                else:
                    conv = self.scalar(member, item)
                    for phrase in _scalar_constraints(member, item):
                        if phrase not in scalar_failures:
                            scalar_failures.append(phrase)
                    items.append(conv)
            if scalar_failures:
                self.fail(
                    node,
                    value,
                    path,
                    f"Member must satisfy constraint: [{', '.join(scalar_failures)}]",
                )
            for phrase in _scalar_constraints(node, value):
                self.fail(node, value, path, phrase)
            return items
        if kind == "map":
            if not isinstance(value, dict):
                raise _serialization(node, value)
            assert node.key is not None and node.value is not None
            out: dict[str, Any] = {}
            key_failures: list[str] = []
            value_failures: list[str] = []
            for k, v in value.items():
                if v is None:
                    continue
                for phrase in _scalar_constraints(node.key, k):
                    if phrase not in key_failures:
                        key_failures.append(phrase)
                if node.value.kind in ("structure", "list", "map"):
                    out[k] = self.convert(node.value, v, f"{path}.{k}")
                else:
                    out[k] = self.scalar(node.value, v)
                    for phrase in _scalar_constraints(node.value, v):
                        if phrase not in value_failures:
                            value_failures.append(phrase)
            if key_failures:
                self.fail(
                    node,
                    value,
                    path,
                    f"Map keys must satisfy constraint: [{', '.join(key_failures)}]",
                )
            if value_failures:
                self.fail(
                    node,
                    value,
                    path,
                    f"Map value must satisfy constraint: [{', '.join(value_failures)}]",
                )
            for phrase in _scalar_constraints(node, value):
                self.fail(node, value, path, phrase)
            return out
        conv = self.scalar(node, value)
        for phrase in _scalar_constraints(node, conv if kind == "blob" else value):
            self.fail(node, value, path, phrase)
        return conv

    def scalar(self, node: _Node, value: object) -> Any:
        kind = node.kind
        if kind == "string":
            if not isinstance(value, str):
                raise _serialization(node, value)
            return value
        if kind == "blob":
            if not isinstance(value, str):
                raise _serialization(node, value)
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise WireError(
                    "SerializationException", "Base64 encoded value is not valid"
                ) from None
        if kind in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    return int(value)
                raise _serialization(node, value)
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                raise _serialization(node, value)
            return value
        if kind == "timestamp":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _serialization(node, value)
            return float(value)
        if kind in ("double", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _serialization(node, value)
            return float(value)
        raise _serialization(node, value)

    def structure(
        self, node: _Node, body: Mapping[str, object], path: str, *, top: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, child in node.members.items():
            value = body.get(name)
            sub = _camel(name) if top else f"{path}.{_camel(name)}"
            if value is None:
                if name in node.required:
                    self.errors.append(
                        f"Value null at '{sub}' failed to satisfy constraint: "
                        "Member must not be null"
                    )
                continue
            out[name] = self.convert(child, value, sub)
        return out


def _validation_message(errors: list[str]) -> str:
    n = len(errors)
    head = f"{n} validation error{'s' if n != 1 else ''} detected: "
    return head + "; ".join(errors)


# ---------------------------------------------------------------------------- output


def _render(node: _Node, value: Any) -> Any:
    kind = node.kind
    if kind == "structure":
        if not isinstance(value, Mapping):
            return None
        out: dict[str, Any] = {}
        for name, child in node.members.items():
            v = value.get(name)
            if v is None:
                continue
            r = _render(child, v)
            if r is not None:
                out[name] = r
        return out
    if kind == "list":
        assert node.member is not None
        member = node.member
        return [_render(member, v) for v in value]
    if kind == "map":
        assert node.value is not None
        vnode = node.value
        return {str(k): _render(vnode, v) for k, v in value.items()}
    if kind == "blob":
        if isinstance(value, str):
            value = value.encode()
        return base64.b64encode(value).decode("ascii")
    if kind == "timestamp":
        if isinstance(value, datetime):
            return value.timestamp()
        return value
    return value


# ---------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Operation:
    """One operation of the model and how the service serves it."""

    name: str
    #: The `KeyService` method (``botocore.xform_name(name)``), or None: not served.
    method: str | None
    input: _Node | None
    output: _Node | None
    #: Input members (AWS names) -> the method's keyword for each member it takes.
    keywords: Mapping[str, str]
    #: Members the model leaves optional that the operation cannot go without (GenerateRandom's
    #: NumberOfBytes): absent, AWS answers ValidationException "<Member> is required.".
    needed: tuple[str, ...] = ()


def _method_keywords(fn: Callable[..., Any]) -> tuple[set[str], set[str]]:
    """The method's keyword-only parameters, and those of them without a default."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    return {p.name for p in params}, {p.name for p in params if p.default is p.empty}


def _neutral(value: object, neutral: tuple[object, ...]) -> bool:
    if value == [] or value == {}:
        return () in neutral
    return value in neutral


def _not_json(constant: str) -> Any:
    """`json.loads`' hook for NaN, Infinity and -Infinity: refused as the malformed JSON they
    are (they reached the operations inside members the model does not know)."""
    raise json.JSONDecodeError(f"{constant} is not JSON", constant, 0)


def _unpaired_surrogate(doc: Any) -> bool:
    """Whether a string (or a member name) of `doc` holds a lone UTF-16 surrogate: JSON's
    ``\\ud800`` escapes decode to one, and it cannot be stored, logged or signed as UTF-8."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class WireModel:
    """The KMS model compiled against a service class (default `KeyService`)."""

    def __init__(self, service_class: type | None = None, model: Any = None) -> None:
        if service_class is None:
            from ..service import KeyService

            service_class = KeyService
        self.model = model if model is not None else load_model()
        cache: dict[str, _Node] = {}
        self.operations: dict[str, Operation] = {}
        for name in self.model.operation_names:
            om = self.model.operation_model(name)
            method = botocore.xform_name(name)
            fn = getattr(service_class, method, None)
            if not callable(fn):
                method_name: str | None = None
                taken: set[str] = set()
                without_default: set[str] = set()
            else:
                method_name = method
                taken, without_default = _method_keywords(fn)
            inp = _compile(om.input_shape, cache) if om.input_shape is not None else None
            out = _compile(om.output_shape, cache) if om.output_shape is not None else None
            keywords = {}
            for member in inp.members if inp is not None else ():
                kw = botocore.xform_name(member)
                if kw in taken:
                    keywords[member] = kw
            needed = tuple(m for m, kw in keywords.items() if kw in without_default)
            self.operations[name] = Operation(name, method_name, inp, out, keywords, needed)

    def operation(self, target: str | None) -> Operation:
        """The operation named by an ``X-Amz-Target`` header, or UnknownOperationException."""
        if target and target.startswith(TARGET_PREFIX):
            op = self.operations.get(target[len(TARGET_PREFIX) :])
            if op is not None:
                return op
        raise WireError("UnknownOperationException", "")

    def parse(self, op: Operation, body: bytes) -> dict[str, Any]:
        """The method's keyword arguments for this request body (validated)."""
        if op.method is None:
            raise WireError(
                "UnsupportedOperationException",
                f"{op.name} is not supported by this server (see docs/server.md)",
            )
        if body.strip():
            try:
                # NaN / Infinity / -Infinity are not JSON (RFC 8259), though Python reads them
                doc = json.loads(body, parse_constant=_not_json)
                parsed = True
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                # (RecursionError: nesting deeper than the parser's stack, e.g. 2,000 "[")
                parsed = False
            if not parsed:
                # raised outside the except block: the decode error holds the whole body (a
                # Plaintext), and ``from None`` would still keep it as __context__ (review)
                raise WireError("SerializationException", "The request body is not valid JSON")
            if b"\\u" in body and _unpaired_surrogate(doc):
                raise WireError(
                    "SerializationException",
                    "The request body is not valid JSON: a string holds an unpaired surrogate "
                    "(\\ud800-\\udfff), which no UTF-8 text can",
                )
        else:
            doc = {}
        if op.input is None:
            return {}
        if not isinstance(doc, dict):
            raise _serialization(op.input, doc)
        checker = _Checker()
        members = checker.structure(op.input, doc, "", top=True)
        if checker.errors:
            raise WireError("ValidationException", _validation_message(checker.errors))
        kwargs: dict[str, Any] = {}
        for member, value in members.items():
            kw = op.keywords.get(member)
            if kw is not None:
                kwargs[kw] = value
                continue
            rule = UNSERVED_MEMBERS.get(member)
            if rule is not None and (None in rule.neutral or _neutral(value, rule.neutral)):
                continue
            if rule is None:
                raise WireError(
                    "UnsupportedOperationException",
                    f"{member} is not supported for {op.name} by this server",
                )
            raise WireError(rule.code, rule.why)
        for member in op.needed:
            if member not in members:
                raise WireError("ValidationException", f"{member} is required.")
        return kwargs

    def render(self, op: Operation, result: Mapping[str, Any] | None) -> bytes:
        """The response body: only the output shape's members, blobs base64, times as numbers;
        none at all for an operation without output (CreateAlias, EnableKey, TagResource...:
        "HTTP 200 response with an empty HTTP body", as the API reference says of each)."""
        if op.output is None:
            return b""
        if not result:
            return b"{}"
        return json.dumps(_render(op.output, result), separators=(",", ":")).encode()
