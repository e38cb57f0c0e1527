"""Properties of `authorize` over generated policies, requests and grants.

The three monotonicity rules are what make a policy safe to edit: adding a Deny, removing an
Allow, or allowing someone else can never give this caller more. The last property holds the
function to being pure: same inputs, same answer, nothing changed, with or without explain.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope.service.access import GrantView, Policy, Request, authorize, parse_policy

from .helpers import (
    ALICE,
    BOB,
    CAROL_B,
    KEY,
    OTHER_KEY,
    READER,
    READER_S1,
    READER_S2,
    ROOT_A,
    ROOT_B,
    SERVICE,
    A,
    B,
    caller,
    grant,
)

CALLERS = [ROOT_A, ALICE, BOB, READER_S1, READER_S2, ROOT_B, CAROL_B, SERVICE]
NAMED = [ROOT_A, ALICE, BOB, READER, READER_S1, ROOT_B, CAROL_B, A, B, "*"]
ACTIONS = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:ScheduleKeyDeletion"]
PATTERNS = ["kms:*", "*", "kms:Decrypt", "kms:Generate*", "kms:?ncrypt", "KMS:encrypt"]
CONDITIONS: list[dict[str, Any] | None] = [
    None,
    {"StringEquals": {"kms:EncryptionContext:purpose": "lake"}},
    {"StringNotEquals": {"kms:EncryptionContext:purpose": "lake"}},
    {"StringEqualsIfExists": {"kms:EncryptionContext:purpose": "web"}},
    {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["purpose"]}},
    {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": ["p*"]}},
    {"Null": {"kms:EncryptionContext:purpose": "true"}},
    {"Bool": {"kms:GrantIsForAWSResource": "true"}},
]
CONTEXTS: list[dict[str, str] | None] = [
    None,
    {},
    {"purpose": "lake"},
    {"purpose": "web", "x": "1"},
]


def principal_member() -> st.SearchStrategy[tuple[str, Any]]:
    aws = st.lists(st.sampled_from(NAMED), min_size=1, max_size=3, unique=True).map(
        lambda xs: {"AWS": xs}
    )
    service = st.just({"Service": SERVICE})
    value = st.one_of(aws, service, st.just("*"))
    return st.tuples(st.sampled_from(["Principal", "Principal", "NotPrincipal"]), value)


@st.composite
def statement(draw: st.DrawFn, *, key_policy: bool, effect: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"Effect": effect or draw(st.sampled_from(["Allow", "Deny"]))}
    if key_policy:
        member, value = draw(principal_member())
        out[member] = value
    actions = draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2))
    out[draw(st.sampled_from(["Action", "Action", "NotAction"]))] = actions
    out[draw(st.sampled_from(["Resource", "Resource", "NotResource"]))] = draw(
        st.sampled_from(["*", KEY, OTHER_KEY, f"arn:aws:kms:*:{A}:key/*"])
    )
    condition = draw(st.sampled_from(CONDITIONS))
    if condition is not None:
        out["Condition"] = condition
    return out


def policy(statements: list[dict[str, Any]], *, key_policy: bool) -> Policy:
    return parse_policy(json.dumps({"Statement": statements}), resource_policy=key_policy)


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    who = caller(draw(st.sampled_from(CALLERS)))
    context = draw(st.sampled_from(CONTEXTS))
    values: dict[str, Any] = {"kms:grantisforawsresource": draw(st.booleans())}
    if context is not None:
        values["kms:encryptioncontextkeys"] = sorted(context)
        for k, v in context.items():
            values[f"kms:encryptioncontext:{k}"] = v
    grants = draw(
        st.lists(
            st.builds(
                grant,
                st.sampled_from(["g1", "g2", "g3"]),
                st.sampled_from([ALICE, READER, CAROL_B, BOB]),
                st.sampled_from(["Decrypt", "Encrypt", "GenerateDataKey"]),
                equals=st.sampled_from([None, {"purpose": "lake"}]),
                subset=st.sampled_from([None, {"purpose": "web"}]),
            ),
            max_size=3,
        )
    )
    return {
        "request": Request(
            action=draw(st.sampled_from(ACTIONS)),
            caller=who,
            resource=KEY,
            resource_account=A,
            values=values,
            encryption_context=context,
            aws_managed=draw(st.booleans()),
        ),
        "key": draw(st.lists(statement(key_policy=True), min_size=1, max_size=4)),
        "iam": draw(
            st.lists(st.lists(statement(key_policy=False), min_size=1, max_size=3), max_size=2)
        ),
        "grants": tuple(grants),
    }


def decide(s: dict[str, Any], key: list[dict[str, Any]], iam: list[list[dict[str, Any]]]) -> bool:
    d = authorize(
        s["request"],
        key_policy=policy(key, key_policy=True),
        iam_policies=[(f"p{i}", policy(p, key_policy=False)) for i, p in enumerate(iam)],
        grants=s["grants"],
    )
    return d.allowed


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scenario(), st.data())
def test_adding_a_deny_never_widens(s: dict[str, Any], data: st.DataObject) -> None:
    deny = data.draw(statement(key_policy=True, effect="Deny"))
    before = decide(s, s["key"], s["iam"])
    widened_key = decide(s, [*s["key"], deny], s["iam"])
    assert not widened_key or before
    if s["iam"]:
        iam_deny = data.draw(statement(key_policy=False, effect="Deny"))
        i = data.draw(st.integers(0, len(s["iam"]) - 1))
        iam = [list(p) for p in s["iam"]]
        iam[i].append(iam_deny)
        assert not decide(s, s["key"], iam) or before


@SETTINGS
@given(scenario(), st.data())
def test_removing_an_allow_never_widens(s: dict[str, Any], data: st.DataObject) -> None:
    before = decide(s, s["key"], s["iam"])
    allows = [i for i, x in enumerate(s["key"]) if x["Effect"] == "Allow"]
    if allows and len(s["key"]) > 1:
        i = data.draw(st.sampled_from(allows))
        assert not decide(s, s["key"][:i] + s["key"][i + 1 :], s["iam"]) or before
    for p, stmts in enumerate(s["iam"]):
        for i, x in enumerate(stmts):
            if x["Effect"] != "Allow":
                continue
            rest = stmts[:i] + stmts[i + 1 :]
            iam = s["iam"][:p] + ([rest] if rest else []) + s["iam"][p + 1 :]
            assert not decide(s, s["key"], iam) or before


@SETTINGS
@given(scenario(), st.data())
def test_allowing_another_principal_never_widens(s: dict[str, Any], data: st.DataObject) -> None:
    me = s["request"].caller
    others = [
        arn
        for arn in (ALICE, BOB, READER, READER_S1, READER_S2, CAROL_B)
        if arn not in (me.arn, me.identity_arn)
    ]
    extra = data.draw(statement(key_policy=True, effect="Allow"))
    extra.pop("NotPrincipal", None)
    extra["Principal"] = {"AWS": data.draw(st.lists(st.sampled_from(others), min_size=1))}
    before = decide(s, s["key"], s["iam"])
    assert not decide(s, [*s["key"], extra], s["iam"]) or before


@SETTINGS
@given(scenario())
def test_authorize_is_deterministic_and_side_effect_free(s: dict[str, Any]) -> None:
    request: Request = s["request"]
    key = policy(s["key"], key_policy=True)
    iam = [(f"p{i}", policy(p, key_policy=False)) for i, p in enumerate(s["iam"])]
    grants: tuple[GrantView, ...] = s["grants"]
    snapshot = copy.deepcopy((request, key.text, [p.text for _, p in iam], grants))
    first = authorize(request, key_policy=key, iam_policies=iam, grants=grants)
    second = authorize(request, key_policy=key, iam_policies=iam, grants=grants)
    explained = authorize(request, key_policy=key, iam_policies=iam, grants=grants, explain=True)
    assert first == second
    assert (explained.allowed, explained.matched, explained.reason) == (
        first.allowed,
        first.matched,
        first.reason,
    )
    assert explained == authorize(
        request, key_policy=key, iam_policies=iam, grants=grants, explain=True
    )
    assert snapshot == (request, key.text, [p.text for _, p in iam], grants)
