"""Policy documents: parse once, refuse anything malformed, compile for fast evaluation.

Key policies (``resource_policy=True``) and IAM identity policies (``resource_policy=False``)
share AWS's grammar; they differ in that a key policy must name a principal and may grant only
``kms:`` actions, and an identity policy must not name one. Parsing is strict and every refusal
is a `MalformedPolicyDocumentException` whose message says which statement and member is wrong,
because a policy the evaluator half-understands is a policy that grants something nobody wrote.

Choices where AWS is silent or looser than useful: duplicate JSON members are refused (Python's
``json`` would silently keep the last, so the evaluated policy would differ from the stored
text); an empty Statement list is refused; ``Version`` may be omitted (AWS then assumes
2008-10-17); principal ARNs are compared exactly (no wildcards, as AWS); Sid may be any string
(KMS's own default policy uses spaces in it).

`Policy.text` keeps the exact text given: GetKeyPolicy must return what PutKeyPolicy received.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from envelope.service.access.conditions import (
    Condition,
    Value,
    parse_condition_block,
    segments_source,
    wildcard_regex,
)
from envelope.service.access.principals import (
    IAM_ARN,
    SERVICE_PRINCIPAL,
    SESSION_ARN,
    Principal,
    is_account_id,
)
from envelope.service.access.variables import Template, parse_template
from envelope.service.errors import MalformedPolicyDocumentException

__all__ = (
    "ACCOUNT",
    "MAX_POLICY_BYTES",
    "NONE",
    "SELF",
    "NameMatcher",
    "Policy",
    "PrincipalMatcher",
    "Statement",
    "check_new_identity_policy",
    "check_new_key_policy",
    "parse_policy",
)

MAX_POLICY_BYTES = 32768
VERSIONS = frozenset({"2012-10-17", "2008-10-17"})
#: The policy language version that has policy variables (``${aws:username}``).
VARIABLES_VERSION = "2012-10-17"
INVALID_PRINCIPALS = "Policy contains a statement with one or more invalid principals."

_TOP_MEMBERS = frozenset({"Version", "Id", "Statement"})
_STATEMENT_MEMBERS = frozenset(
    {
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
)
_ACTION = re.compile(r"(?P<service>[A-Za-z0-9-]+):[A-Za-z0-9*?]+\Z")

# How a principal element names the caller (PrincipalMatcher.classify).
NONE, ACCOUNT, SELF = 0, 1, 2


@dataclass(frozen=True, slots=True)
class PrincipalMatcher:
    """A compiled Principal or NotPrincipal element.

    `arns` holds user, role and assumed-role session ARNs; `accounts` holds the accounts named
    by a 12-digit id or their ``:root`` ARN (the two spellings mean the same in AWS).
    """

    any: bool
    arns: frozenset[str]
    accounts: frozenset[str]
    services: frozenset[str]

    def classify(self, caller: Principal) -> int:
        """SELF when the element names the caller itself (its ARN; for a session its role ARN
        or exact session ARN; "*"; for a root caller its account), ACCOUNT when it names only
        the caller's account (a delegation to that account's IAM), NONE otherwise."""
        if self.any:
            return SELF
        if caller.account is None:
            return SELF if caller.arn in self.services else NONE
        arns = self.arns
        if caller.arn in arns or (caller.kind == "assumed-role" and caller.identity_arn in arns):
            return SELF
        if caller.account in self.accounts:
            return SELF if caller.kind == "root" else ACCOUNT
        return NONE

    def exempts(self, caller: Principal) -> bool:
        """As a NotPrincipal: does the element name every principal AWS validates for this
        caller? AWS checks the account first, then the role, then the assumed-role session,
        and a Deny applies if any of them is not named ("you must also specify the account ARN
        of the not-denied principal. Otherwise, the policy might deny access to the entire
        account"). So a user is exempt only with its account, a session only with its
        account, its role and its session ARN; naming an account exempts its root alone."""
        if self.any:
            return True
        if caller.account is None:
            return caller.arn in self.services
        if caller.account not in self.accounts:
            return False
        if caller.kind == "root":
            return True
        if caller.kind == "assumed-role":
            return caller.identity_arn in self.arns and caller.arn in self.arns
        return caller.arn in self.arns


@dataclass(frozen=True, slots=True)
class NameMatcher:
    """A compiled Action/NotAction or Resource/NotResource list: literal names in a set, the
    wildcard patterns in one regex. Actions are stored lower-cased (AWS matches them
    case-insensitively); resources keep their case (ARN matching is case-sensitive).
    `templates`: resource patterns with policy variables, matched per request
    (`matches_late`); `matches` sees only the others."""

    any: bool
    exact: frozenset[str]
    pattern: re.Pattern[str] | None
    templates: tuple[Template, ...] = ()

    def matches(self, name: str) -> bool:
        """Whether `name` (lower-cased for actions) is in the list."""
        if self.any or name in self.exact:
            return True
        return self.pattern is not None and self.pattern.match(name) is not None

    def matches_late(self, name: str, values: Mapping[str, Value]) -> bool | None:
        """Whether a pattern with policy variables, resolved against the request's `values`,
        matches `name`: True if one does; False if none does and all resolved; None if none
        does and one has no value."""
        unresolved = False
        for t in self.templates:
            segments = t.resolve(values)
            if segments is None:
                unresolved = True
            elif _template_regex(segments).match(name) is not None:
                return True
        return None if unresolved else False


@dataclass(frozen=True, slots=True)
class Statement:
    """One compiled statement. Exactly one of principal/not_principal is set in a key policy
    and neither in an IAM policy; exactly one of action/not_action and of
    resource/not_resource. `label` is the statement's name in decisions: its Sid, or ``#index``
    (0-based position) when it has none."""

    sid: str | None
    index: int
    effect: str
    principal: PrincipalMatcher | None
    not_principal: PrincipalMatcher | None
    action: NameMatcher | None
    not_action: NameMatcher | None
    resource: NameMatcher | None
    not_resource: NameMatcher | None
    conditions: tuple[Condition, ...]
    allow: bool
    label: str
    #: Resource/NotResource holds policy variables: `covers_resource` only sees its other
    #: patterns and lets the statement through; `resource_holds` decides per request.
    late_resource: bool = False

    def names(self, caller: Principal) -> int:
        """How the Principal (or NotPrincipal) element names `caller` (NONE/ACCOUNT/SELF).

        A Deny's NotPrincipal applies to every caller it does not exempt
        (`PrincipalMatcher.exempts`: the caller's account and the caller itself must both be
        named, as AWS validates the account first); a caller it applies to counts as named
        itself (SELF)."""
        if self.principal is not None:
            return self.principal.classify(caller)
        if self.not_principal is not None:
            if self.allow:  # (AWS no longer supports it; kept to its old meaning: anyone
                # whom the element does not name, by itself or by its account)
                return NONE if self.not_principal.classify(caller) else SELF
            return NONE if self.not_principal.exempts(caller) else SELF
        return SELF

    def covers_action(self, action_lower: str) -> bool:
        """Whether the statement's Action/NotAction covers the lower-cased action."""
        if self.action is not None:
            return self.action.matches(action_lower)
        assert self.not_action is not None
        return not self.not_action.matches(action_lower)

    def covers_resource(self, resource: str) -> bool:
        """Whether the statement's Resource/NotResource covers the resource ARN, or (with
        `late_resource`) may cover it once its policy variables are known."""
        if self.resource is not None:
            return self.resource.matches(resource) or bool(self.resource.templates)
        assert self.not_resource is not None
        return not self.not_resource.matches(resource)

    def resource_holds(self, resource: str, values: Mapping[str, Value]) -> bool:
        """With `late_resource`: whether Resource/NotResource covers the resource once its
        policy variables are resolved against the request (a pattern whose variable has no
        value matches no resource, so a NotResource with one leaves nothing out by it)."""
        if self.resource is not None:
            return self.resource.matches(resource) or (
                self.resource.matches_late(resource, values) is True
            )
        assert self.not_resource is not None
        return not self.not_resource.matches(resource) and (
            self.not_resource.matches_late(resource, values) is not True
        )


_ACTION_CACHE_LIMIT = 256
_REQUEST_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy: the exact text and its compiled statements, in document order.

    `statements_for` memoizes, per lower-cased action, the statements whose Action/NotAction
    covers it, so `authorize` skips the others without matching them again. The memo is a
    pure function of the statements (it changes no answer, only its cost) and is bounded, so
    arbitrary action names cannot grow it without limit.
    """

    text: str
    statements: tuple[Statement, ...]
    _by_action: dict[str, tuple[Statement, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _by_request: dict[tuple[str, str, str], tuple[tuple[Statement, int], ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _by_resource: dict[tuple[str, str], tuple[Statement, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def statements_for(self, action_lower: str) -> tuple[Statement, ...]:
        """The statements whose Action/NotAction covers `action_lower`, in document order."""
        hit = self._by_action.get(action_lower)
        if hit is None:
            hit = tuple(s for s in self.statements if s.covers_action(action_lower))
            if len(self._by_action) < _ACTION_CACHE_LIMIT:
                self._by_action[action_lower] = hit
        return hit

    def statements_covering(self, action_lower: str, resource: str) -> tuple[Statement, ...]:
        """The statements covering both the action and the resource, in document order
        (an identity policy's: it names no principal). Memoized per (action, resource) like
        `statements_naming`, so resource patterns are matched once, not on every call."""
        memo_key = (action_lower, resource)
        hit = self._by_resource.get(memo_key)
        if hit is None:
            hit = tuple(
                st for st in self.statements_for(action_lower) if st.covers_resource(resource)
            )
            if len(self._by_resource) >= _REQUEST_CACHE_LIMIT:
                self._by_resource.clear()
            self._by_resource[memo_key] = hit
        return hit

    def statements_naming(
        self, action_lower: str, caller: Principal, resource: str
    ) -> tuple[tuple[Statement, int], ...]:
        """The statements covering the action and the resource whose principal element names
        `caller`, each with how it names it (ACCOUNT or SELF), in document order.

        Memoized per (action, caller ARN, resource): all three depend only on the statement
        and those strings, never on condition values, so only the conditions are left to
        evaluate per call (a 20-statement key policy usually leaves one or two). Bounded like
        `statements_for`; when full, the memo is emptied and refilled."""
        memo_key = (action_lower, caller.arn, resource)
        hit = self._by_request.get(memo_key)
        if hit is None:
            out = []
            for st in self.statements_for(action_lower):
                named = st.names(caller)
                if named != NONE and st.covers_resource(resource):
                    out.append((st, named))
            hit = tuple(out)
            if len(self._by_request) >= _REQUEST_CACHE_LIMIT:
                self._by_request.clear()
            self._by_request[memo_key] = hit
        return hit


def _fail(message: str) -> MalformedPolicyDocumentException:
    return MalformedPolicyDocumentException(message)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _fail(f"duplicate member {key!r} in a JSON object")
        out[key] = value
    return out


def _no_constants(name: str) -> object:
    raise _fail(f"{name} is not valid JSON")


def _strings(raw: object, where: str) -> list[str]:
    """A member that takes one string or a non-empty list of strings."""
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _fail(f"{where}: the list is empty")
    for item in items:
        if not isinstance(item, str) or not item:
            raise _fail(f"{where}: {item!r} must be a non-empty string")
    return items  # type: ignore[return-value]


def _compile_names(
    items: Iterable[str], *, lower: bool, templates: tuple[Template, ...] = ()
) -> NameMatcher:
    names = [i.lower() for i in items] if lower else list(items)
    if "*" in names:
        return NameMatcher(True, frozenset(), None)
    exact = frozenset(n for n in names if "*" not in n and "?" not in n)
    wild = [n for n in names if n not in exact]
    return NameMatcher(False, exact, wildcard_regex(wild) if wild else None, templates)


_NO_NAMES = NameMatcher(False, frozenset(), None)
_TEMPLATE_REGEX_LIMIT = 1024
_template_regexes: dict[tuple[tuple[bool, str], ...], re.Pattern[str]] = {}


def _template_regex(segments: tuple[tuple[bool, str], ...]) -> re.Pattern[str]:
    """A resolved resource pattern as a regex: the policy's own ``*``/``?`` are wildcards,
    substituted text is literal. Memoized (bounded): one compile per user, not per call."""
    rx = _template_regexes.get(segments)
    if rx is None:
        rx = re.compile(segments_source(segments) + r"\Z", re.DOTALL)
        if len(_template_regexes) >= _TEMPLATE_REGEX_LIMIT:
            _template_regexes.clear()
        _template_regexes[segments] = rx
    return rx


def _parse_actions(
    raw: object, where: str, *, resource_policy: bool, service: str = "kms"
) -> NameMatcher:
    items = _strings(raw, where)
    for item in items:
        if item == "*":
            continue
        m = _ACTION.match(item)
        if m is None:
            raise _fail(f"{where}: {item!r} is not an action (service:Action, or *)")
        if resource_policy and m.group("service").lower() != service:
            what = "key" if service == "kms" else "trust"
            raise _fail(f"{where}: {item!r}: a {what} policy may name only {service}: actions")
    return _compile_names(items, lower=True)


def _parse_resources(raw: object, where: str, *, variables: bool = False) -> NameMatcher:
    items = _strings(raw, where)
    for item in items:
        if item != "*" and not item.startswith("arn:"):
            raise _fail(f"{where}: {item!r} is not a resource (an ARN or *)")
    templates: list[Template] = []
    if variables:
        plain = []
        for item in items:
            t = parse_template(item)
            if t is None:
                plain.append(item)
            else:
                templates.append(t)
        items = plain
    return _compile_names(items, lower=False, templates=tuple(templates))


#: A user's or role's unique id (AIDA... / AROA...), as a policy shows a deleted principal.
UNIQUE_ID = re.compile(r"(AIDA|AROA)[A-Z0-9]{16,32}\Z")


def _parse_principal(
    raw: object, where: str, principal_exists: Callable[[str], bool] | None
) -> PrincipalMatcher:
    if raw == "*":
        return PrincipalMatcher(True, frozenset(), frozenset(), frozenset())
    if not isinstance(raw, dict) or not raw:
        raise _fail(f'{where}: must be "*" or an object with AWS and/or Service')
    arns: set[str] = set()
    accounts: set[str] = set()
    services: set[str] = set()
    anyone = False
    for kind, value in raw.items():
        here = f"{where}.{kind}"
        if kind == "AWS":
            for entry in _strings(value, here):
                if entry == "*":
                    anyone = True
                elif is_account_id(entry):
                    accounts.add(entry)
                elif (m := IAM_ARN.match(entry)) is not None:
                    if m.group("root"):
                        accounts.add(m.group("account"))
                        continue
                    if principal_exists is not None and not principal_exists(entry):
                        raise _fail(f"{INVALID_PRINCIPALS} {here}: {entry} does not exist")
                    arns.add(entry)
                elif SESSION_ARN.match(entry) is not None:
                    arns.add(entry)
                elif UNIQUE_ID.match(entry) is not None:
                    # what AWS writes in place of a deleted user's or role's ARN: the unique
                    # id of a principal that no longer exists, which names no caller
                    continue
                else:
                    raise _fail(
                        f"{here}: {entry!r} is not a valid principal (an account id, or an "
                        "arn:aws:iam::<account>:root|user/..|role/.. or "
                        "arn:aws:sts::<account>:assumed-role/.. ARN)"
                    )
        elif kind == "Service":
            for entry in _strings(value, here):
                if SERVICE_PRINCIPAL.match(entry) is None:
                    raise _fail(f"{here}: {entry!r} is not a service principal")
                services.add(entry)
        else:
            raise _fail(f"{where}: unsupported principal type {kind!r} (only AWS and Service)")
    return PrincipalMatcher(anyone, frozenset(arns), frozenset(accounts), frozenset(services))


def _parse_statement(
    raw: object,
    index: int,
    *,
    resource_policy: bool,
    principal_exists: Callable[[str], bool] | None,
    service: str = "kms",
    variables: bool = False,
) -> Statement:
    where = f"Statement[{index}]"
    if not isinstance(raw, dict):
        raise _fail(f"{where}: a statement must be a JSON object")
    unknown = sorted(set(raw) - _STATEMENT_MEMBERS)
    if unknown:
        raise _fail(f"{where}: unknown member {unknown[0]!r}")
    sid = raw.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise _fail(f"{where}.Sid: must be a string")
    if sid is not None:
        where = f"Statement[{index}] (Sid {sid!r})"
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        if effect is None:
            raise _fail(f"{where}: Effect is missing")
        raise _fail(f"{where}.Effect: {effect!r} is not Allow or Deny")

    has_p, has_np = "Principal" in raw, "NotPrincipal" in raw
    principal = not_principal = None
    if resource_policy:
        if has_p == has_np:
            raise _fail(
                f"{where}: a key policy statement needs exactly one of Principal or NotPrincipal"
            )
        if has_p:
            principal = _parse_principal(raw["Principal"], f"{where}.Principal", principal_exists)
        else:
            not_principal = _parse_principal(
                raw["NotPrincipal"], f"{where}.NotPrincipal", principal_exists
            )
    elif has_p or has_np:
        member = "Principal" if has_p else "NotPrincipal"
        raise _fail(f"{where}: {member} is not allowed in an identity-based (IAM) policy")

    if ("Action" in raw) == ("NotAction" in raw):
        raise _fail(f"{where}: needs exactly one of Action or NotAction")
    action = not_action = None
    if "Action" in raw:
        action = _parse_actions(
            raw["Action"], f"{where}.Action", resource_policy=resource_policy, service=service
        )
    else:
        not_action = _parse_actions(
            raw["NotAction"], f"{where}.NotAction", resource_policy=resource_policy, service=service
        )

    if ("Resource" in raw) == ("NotResource" in raw):
        raise _fail(f"{where}: needs exactly one of Resource or NotResource")
    resource = not_resource = None
    if "Resource" in raw:
        resource = _parse_resources(raw["Resource"], f"{where}.Resource", variables=variables)
    else:
        not_resource = _parse_resources(
            raw["NotResource"], f"{where}.NotResource", variables=variables
        )

    conditions: tuple[Condition, ...] = ()
    if "Condition" in raw:
        conditions = parse_condition_block(
            raw["Condition"], f"{where}.Condition", variables=variables
        )

    return Statement(
        sid=sid,
        index=index,
        effect=effect,
        principal=principal,
        not_principal=not_principal,
        action=action,
        not_action=not_action,
        resource=resource,
        not_resource=not_resource,
        conditions=conditions,
        allow=effect == "Allow",
        label=sid if sid else f"#{index}",
        late_resource=bool((resource or not_resource or _NO_NAMES).templates),
    )


def parse_policy(
    text: str,
    *,
    resource_policy: bool,
    principal_exists: Callable[[str], bool] | None = None,
    service: str = "kms",
) -> Policy:
    """Parse and compile a key policy (`resource_policy` True) or an IAM identity policy.

    `service`: the one service whose actions a resource policy may name (``kms`` for a key
    policy, ``sts`` for a role's trust policy).

    `principal_exists`, when given, is asked about every IAM user and role ARN a key policy
    names; False refuses the policy as AWS does ("invalid principals"), so a typo in a role
    name cannot silently grant nothing (or, in a NotPrincipal, everything).
    """
    if not isinstance(text, str):
        raise _fail(f"the policy must be a JSON string, not {type(text).__name__}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_POLICY_BYTES:
        raise _fail(f"the policy is {size} bytes; the limit is {MAX_POLICY_BYTES} bytes")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise _fail(
            f"the policy is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise _fail("the policy is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise _fail("the policy must be a JSON object")
    unknown = sorted(set(doc) - _TOP_MEMBERS)
    if unknown:
        raise _fail(f"unknown top-level member {unknown[0]!r} (allowed: Version, Id, Statement)")
    if "Version" in doc and doc["Version"] not in VERSIONS:
        raise _fail(f"Version {doc['Version']!r} is not 2012-10-17 or 2008-10-17")
    if "Id" in doc and not isinstance(doc["Id"], str):
        raise _fail("Id must be a string")
    if "Statement" not in doc:
        raise _fail("Statement is missing")
    raw = doc["Statement"]
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _fail("Statement is an empty list")
    statements = tuple(
        _parse_statement(
            item,
            i,
            resource_policy=resource_policy,
            principal_exists=principal_exists,
            service=service,
            variables=doc.get("Version") == VARIABLES_VERSION,
        )
        for i, item in enumerate(items)
    )
    return Policy(text, statements)


# -- rules checked when a policy is written (not when a stored one is read: a policy stored
# -- before a rule existed keeps working) ------------------------------------------------------

#: What a key policy may hold (AWS KMS, "Key policy format"): tab, line feed, carriage return,
#: printable ASCII and the printable Latin-1 Supplement.
_KEY_POLICY_TEXT = re.compile(r"[\t\n\r\x20-\x7e\xa0-\xff]*\Z")
_IAM_SID = re.compile(r"[A-Za-z0-9]*\Z")


def check_new_key_policy(policy: Policy) -> None:
    """The rules KMS applies when a key policy is set (CreateKey, PutKeyPolicy, ReplicateKey):
    its character set, and no statement whose ForAllValues tests a kms:EncryptionContext: or
    an aws:RequestTag/ key (the guide's warning, "Using set operators with condition keys":
    such a condition holds for a request without that context pair or tag, and KMS refuses
    a policy that "includes" one, Allow or Deny)."""
    bad = _KEY_POLICY_TEXT.match(policy.text)
    if bad is None:
        at = next(i for i, c in enumerate(policy.text) if not _KEY_POLICY_TEXT.match(c))
        raise _fail(
            f"the policy holds U+{ord(policy.text[at]):04X} at character {at}: a key policy may "
            "hold only printable ASCII and Latin-1 characters, tab, line feed and carriage return"
        )
    for st in policy.statements:
        for c in st.conditions:
            if c.set_op != 2:
                continue
            if c.key.startswith("kms:encryptioncontext:"):
                what = "encryption context"
            elif c.key.startswith("aws:requesttag/"):
                what = "tag"
            else:
                continue
            raise _fail(  # AWS's words
                "OverlyPermissiveCondition: Using the ForAllValues set operator with a "
                f"single-valued condition key matches requests without the specified {what} "
                f"or with an unspecified {what}. To fix, remove ForAllValues."
            )


def check_new_identity_policy(policy: Policy) -> None:
    """IAM's rules for an identity policy's statement ids: letters and digits only, unique
    within the policy."""
    seen: set[str] = set()
    for st in policy.statements:
        if st.sid is None:
            continue
        if not _IAM_SID.match(st.sid):
            raise _fail(
                f"Statement {st.label}: an IAM policy's Sid may hold only letters and digits"
            )
        if st.sid in seen:
            raise _fail(f"Statement {st.label}: the Sid {st.sid!r} is used twice in the policy")
        seen.add(st.sid)
