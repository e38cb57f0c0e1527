"""Policy variables (``${aws:username}``, ``${aws:PrincipalTag/team, 'default'}``, ``${*}``),
through `authorize`: the IAM User Guide's "IAM policy elements: Variables and tags".

Each case is checked on the fast path and the explained path, which must agree. Before policy
variables were expanded, every "allowed" case here was denied (a variable matched only its
literal text) and the escape, literal-substitution and unresolved cases had no meaning.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from envelope.service.access import Policy, Request, authorize, parse_policy
from envelope.service.access.variables import Var, parse_template

from .helpers import ALICE, KEY, READER_S1, A, B, caller, default_policy, stmt


def _iam(*statements: dict[str, Any], version: str | None = "2012-10-17") -> Policy:
    doc: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        doc["Version"] = version
    return parse_policy(json.dumps(doc), resource_policy=False)


def _decide(
    iam: Policy, values: dict[str, Any], *, who: str = ALICE, resource: str = KEY
) -> tuple[bool, str]:
    request = Request(
        action="kms:Decrypt",
        caller=caller(who),
        resource=resource,
        resource_account=A,
        values=values,
    )
    fast = authorize(request, key_policy=default_policy(), iam_policies=[("p", iam)])
    explained = authorize(
        request, key_policy=default_policy(), iam_policies=[("p", iam)], explain=True
    )
    assert (fast.allowed, fast.matched, fast.reason) == (
        explained.allowed,
        explained.matched,
        explained.reason,
    )
    return fast.allowed, "\n".join(explained.explanation)


def _allow_if(operator: str, key: str, value: Any, **kw: Any) -> Policy:
    return _iam(stmt(Action="kms:Decrypt", Condition={operator: {key: value}}), **kw)


ALICE_VALUES = {"aws:username": "Alice", "aws:principalaccount": A}


def test_username_in_a_condition_selects_the_callers_own_keys() -> None:
    """AWS's attribute-based pattern: a key tagged with its owner's name."""
    policy = _allow_if("StringEquals", "aws:ResourceTag/owner", "${aws:username}")
    assert _decide(policy, {**ALICE_VALUES, "aws:resourcetag/owner": "Alice"})[0]
    assert not _decide(policy, {**ALICE_VALUES, "aws:resourcetag/owner": "Bob"})[0]


def test_variable_names_are_case_insensitive_and_may_be_spaced() -> None:
    policy = _allow_if("StringEquals", "aws:ResourceTag/owner", "${ AWS:UserName }")
    assert _decide(policy, {**ALICE_VALUES, "aws:resourcetag/owner": "Alice"})[0]


def test_variable_in_a_like_pattern_keeps_the_patterns_wildcards() -> None:
    policy = _allow_if("StringLike", "kms:RequestAlias", "alias/${aws:username}-*")
    assert _decide(policy, {**ALICE_VALUES, "kms:requestalias": "alias/Alice-reports"})[0]
    assert not _decide(policy, {**ALICE_VALUES, "kms:requestalias": "alias/Bob-reports"})[0]


def test_substituted_text_is_literal_never_a_wildcard() -> None:
    """A user (or a tag) named ``*`` must not match everything."""
    values = {"aws:username": "*", "kms:requestalias": "alias/anything"}
    policy = _allow_if("StringLike", "kms:RequestAlias", "alias/${aws:username}")
    assert not _decide(policy, values)[0]
    assert _decide(policy, {**values, "kms:requestalias": "alias/*"})[0]
    tagged = {"aws:principaltag/key": "*"}
    resource = _iam(
        stmt(Action="kms:Decrypt", Resource="arn:aws:kms:*:*:key/${aws:PrincipalTag/key}")
    )
    assert not _decide(resource, tagged)[0]


def test_substituted_text_is_not_expanded_again() -> None:
    policy = _allow_if("StringEquals", "aws:ResourceTag/owner", "${aws:PrincipalTag/owner}")
    values = {"aws:principaltag/owner": "${aws:username}", "aws:username": "Alice"}
    assert not _decide(policy, {**values, "aws:resourcetag/owner": "Alice"})[0]
    assert _decide(policy, {**values, "aws:resourcetag/owner": "${aws:username}"})[0]


def test_variable_in_a_resource() -> None:
    policy = _iam(
        stmt(Action="kms:Decrypt", Resource="arn:aws:kms:*:*:key/${aws:PrincipalTag/key}")
    )
    key_id = KEY.rsplit("/", 1)[1]
    assert _decide(policy, {"aws:principaltag/key": key_id})[0]
    assert not _decide(policy, {"aws:principaltag/key": "0987dcba"})[0]
    allowed, why = _decide(policy, {})
    assert not allowed
    assert "a policy variable in Resource has no value in the request" in why


def test_resource_variable_beside_plain_patterns() -> None:
    other = "arn:aws:kms:us-east-1:111122223333:key/other"
    policy = _iam(
        stmt(
            Action="kms:Decrypt",
            Resource=[other, "arn:aws:kms:us-east-1:${aws:PrincipalAccount}:key/*"],
        )
    )
    assert _decide(policy, {}, resource=other)[0]  # the plain pattern needs no value
    assert _decide(policy, {"aws:principalaccount": A})[0]
    assert not _decide(policy, {"aws:principalaccount": B})[0]


def test_not_resource_with_variables() -> None:
    deny_all_but_own = stmt(
        "Deny", Action="kms:Decrypt", NotResource="arn:aws:kms:*:*:key/${aws:PrincipalTag/key}"
    )
    policy = _iam(stmt(Action="kms:Decrypt"), deny_all_but_own)
    key_id = KEY.rsplit("/", 1)[1]
    assert _decide(policy, {"aws:principaltag/key": key_id})[0]  # excluded from the Deny
    assert not _decide(policy, {"aws:principaltag/key": "other"})[0]  # denied
    # no value: the pattern matches no resource, so it excludes none: the Deny applies
    assert not _decide(policy, {})[0]


def test_default_value_when_the_key_is_missing() -> None:
    policy = _allow_if("StringEquals", "aws:ResourceTag/team", "${aws:PrincipalTag/team, 'shared'}")
    assert _decide(policy, {"aws:resourcetag/team": "shared"})[0]
    assert not _decide(policy, {"aws:resourcetag/team": "web"})[0]
    assert _decide(policy, {"aws:principaltag/team": "web", "aws:resourcetag/team": "web"})[0]


def test_default_value_quotes_are_doubled() -> None:
    policy = _allow_if("StringEquals", "aws:ResourceTag/team", "${aws:PrincipalTag/team, 'it''s'}")
    assert _decide(policy, {"aws:resourcetag/team": "it's"})[0]


def test_escapes_are_literal_characters() -> None:
    policy = _allow_if("StringLike", "aws:ResourceTag/name", "a${*}b${?}c${$}")
    assert _decide(policy, {"aws:resourcetag/name": "a*b?c$"})[0]
    assert not _decide(policy, {"aws:resourcetag/name": "axbyc$"})[0]


def test_version_2008_has_no_variables() -> None:
    for version in ("2008-10-17", None):
        policy = _allow_if(
            "StringEquals", "aws:ResourceTag/owner", "${aws:username}", version=version
        )
        assert not _decide(policy, {**ALICE_VALUES, "aws:resourcetag/owner": "Alice"})[0]
        assert _decide(policy, {**ALICE_VALUES, "aws:resourcetag/owner": "${aws:username}"})[0]


def test_unresolved_positive_value_matches_nothing() -> None:
    policy = _allow_if("StringEquals", "aws:ResourceTag/owner", "${aws:username}")
    allowed, why = _decide(policy, {"aws:resourcetag/owner": ""}, who=READER_S1)
    assert not allowed
    assert "a policy variable in its values has no value" in why
    # another value of the same condition still matches
    both = _allow_if("StringEquals", "aws:ResourceTag/owner", ["${aws:username}", "ops"])
    assert _decide(both, {"aws:resourcetag/owner": "ops"}, who=READER_S1)[0]


@pytest.mark.parametrize("operator", ["StringNotEquals", "StringNotLike", "ArnNotLike"])
def test_unresolved_value_is_equal_to_nothing_so_a_deny_still_denies(operator: str) -> None:
    """A Deny "unless the resource's tag is the caller's": a caller without the tag is still
    denied (the IAM guide: a variable with no value is null, nothing is equal or like it, so
    the negated operator holds). Treating the statement as not applying let such a caller
    through a guard that denied it before variables were expanded."""
    arn = operator.startswith("Arn")
    key = "aws:SourceArn" if arn else "aws:ResourceTag/team"
    value = "arn:aws:s3:::${aws:PrincipalTag/team}" if arn else "${aws:PrincipalTag/team}"
    request_key = "aws:sourcearn" if arn else "aws:resourcetag/team"
    other = "arn:aws:s3:::web" if arn else "web"
    own = "arn:aws:s3:::ops" if arn else "ops"
    deny = stmt("Deny", Action="kms:Decrypt", Condition={operator: {key: value}})
    policy = _iam(stmt(Action="kms:Decrypt"), deny)
    assert not _decide(policy, {"aws:principaltag/team": "ops", request_key: other})[0]
    assert _decide(policy, {"aws:principaltag/team": "ops", request_key: own})[0]
    assert not _decide(policy, {request_key: other})[0]  # no team: still denied
    assert not _decide(policy, {request_key: own})[0]
    # the fixed values beside a variable keep their meaning
    both = stmt("Deny", Action="kms:Decrypt", Condition={operator: {key: [value, own]}})
    assert _decide(_iam(stmt(Action="kms:Decrypt"), both), {request_key: own})[0]
    assert not _decide(_iam(stmt(Action="kms:Decrypt"), both), {request_key: other})[0]


def test_multivalued_key_is_not_a_variable_but_a_default_serves() -> None:
    values = {"aws:tagkeys": ["a", "b"], "aws:resourcetag/owner": "a"}
    policy = _allow_if("StringEquals", "aws:ResourceTag/owner", "${aws:TagKeys}")
    assert not _decide(policy, values)[0]
    with_default = _allow_if("StringEquals", "aws:ResourceTag/owner", "${aws:TagKeys, 'a'}")
    assert _decide(with_default, values)[0]


def test_arn_operator_with_a_variable_holding_colons() -> None:
    policy = _allow_if("ArnLike", "aws:SourceArn", "arn:aws:iam::${aws:PrincipalAccount}:role/*")
    assert _decide(
        policy, {"aws:principalaccount": A, "aws:sourcearn": f"arn:aws:iam::{A}:role/x"}
    )[0]
    assert not _decide(
        policy, {"aws:principalaccount": A, "aws:sourcearn": f"arn:aws:iam::{B}:role/x"}
    )[0]
    whole = _allow_if("ArnEquals", "aws:SourceArn", "${aws:PrincipalArn}")
    assert _decide(whole, {"aws:principalarn": ALICE, "aws:sourcearn": ALICE})[0]
    assert not _decide(whole, {"aws:principalarn": ALICE, "aws:sourcearn": KEY})[0]
    assert not _decide(whole, {"aws:principalarn": "not-an-arn", "aws:sourcearn": "not-an-arn"})[0]


def test_non_string_values_are_text_as_operators_see_them() -> None:
    policy = _allow_if("StringEquals", "aws:ResourceTag/tls", "${aws:SecureTransport}")
    assert _decide(policy, {"aws:securetransport": True, "aws:resourcetag/tls": "true"})[0]
    epoch = _allow_if("StringEquals", "aws:ResourceTag/t", "${aws:EpochTime}")
    assert _decide(epoch, {"aws:epochtime": 1700000000, "aws:resourcetag/t": "1700000000"})[0]


def test_variables_only_in_string_and_arn_operators() -> None:
    """In a numeric value ``${...}`` is not a number: the policy is refused, as before."""
    from envelope.service.errors import MalformedPolicyDocumentException

    with pytest.raises(MalformedPolicyDocumentException, match="must be a number"):
        _allow_if("NumericLessThan", "kms:RotationPeriodInDays", "${aws:EpochTime}")


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("plain", None),
        ("${aws:username", None),  # no closing brace: literal
        ("${username}", None),  # not prefix:name: literal
        ("${aws:a, b}", None),  # an unquoted default: literal
        ("x${aws:a}y", ("x", Var("aws:a", None), "y")),
        ("${aws:A, 'd,}'}", (Var("aws:a", "d,}"),)),
        ("${*}${?}${$}", (("*",), ("?",), ("$",))),
        ("$${aws:a}", ("$", Var("aws:a", None))),
    ],
)
def test_template_grammar(text: str, parts: tuple[Any, ...] | None) -> None:
    t = parse_template(text)
    assert (t.parts if t is not None else None) == parts
