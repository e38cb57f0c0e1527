"""grant_allows and grant_covers: a grant allows only its operations within its constraints,
and a grantee can never create a grant wider than the one it holds."""

from __future__ import annotations

import pytest

from envelope.service.access import grant_allows, grant_covers

from .helpers import ALICE, grant

LAKE = {"purpose": "lake"}
LAKE_TEAM = {"purpose": "lake", "team": "data"}


@pytest.mark.parametrize(
    ("equals", "subset", "operation", "context", "allowed"),
    [
        pytest.param(None, None, "Decrypt", None, True, id="no-constraints"),
        pytest.param(None, None, "kms:Decrypt", None, True, id="kms-prefix-accepted"),
        pytest.param(None, None, "Encrypt", None, False, id="operation-not-granted"),
        pytest.param(LAKE, None, "Decrypt", LAKE, True, id="equals-exact"),
        pytest.param(LAKE, None, "Decrypt", LAKE_TEAM, False, id="equals-extra-pair"),
        pytest.param(LAKE, None, "Decrypt", {}, False, id="equals-empty-context"),
        pytest.param(None, LAKE, "Decrypt", LAKE_TEAM, True, id="subset-extra-pairs-ok"),
        pytest.param(None, LAKE, "Decrypt", {"team": "data"}, False, id="subset-pair-missing"),
        pytest.param(None, LAKE, "Decrypt", None, False, id="subset-no-context"),
        pytest.param(LAKE_TEAM, LAKE, "Decrypt", LAKE_TEAM, True, id="both-constraints-met"),
        pytest.param(LAKE, None, "CreateGrant", None, True, id="create-grant-checked-by-covers"),
    ],
)
def test_grant_allows(
    equals: dict[str, str] | None,
    subset: dict[str, str] | None,
    operation: str,
    context: dict[str, str] | None,
    allowed: bool,
) -> None:
    g = grant("g", ALICE, "Decrypt", "CreateGrant", equals=equals, subset=subset)
    assert grant_allows(g, operation, context) is allowed


@pytest.mark.parametrize(
    ("parent_equals", "parent_subset", "ops", "equals", "subset", "covered"),
    [
        pytest.param(None, None, ["Decrypt"], None, None, True, id="unconstrained-parent"),
        pytest.param(None, None, ["Encrypt"], None, None, False, id="operation-parent-lacks"),
        pytest.param(None, None, ["kms:Decrypt"], LAKE, None, True, id="narrower-by-equals"),
        pytest.param(LAKE, None, ["Decrypt"], LAKE, None, True, id="same-equals"),
        pytest.param(LAKE, None, ["Decrypt"], LAKE_TEAM, None, False, id="other-equals"),
        pytest.param(LAKE, None, ["Decrypt"], None, LAKE, False, id="subset-wider-than-equals"),
        pytest.param(LAKE, None, ["Decrypt"], None, None, False, id="dropping-constraint"),
        pytest.param(None, LAKE, ["Decrypt"], None, LAKE_TEAM, True, id="more-required-pairs"),
        pytest.param(None, LAKE_TEAM, ["Decrypt"], None, LAKE, False, id="fewer-required-pairs"),
        pytest.param(None, LAKE, ["Decrypt"], LAKE_TEAM, None, True, id="equals-within-subset"),
        pytest.param(None, LAKE, ["Decrypt"], {"team": "x"}, None, False, id="equals-outside"),
        pytest.param(None, LAKE, ["Decrypt"], {"a": "b"}, LAKE, True, id="child-accepts-nothing"),
    ],
)
def test_grant_covers(
    parent_equals: dict[str, str] | None,
    parent_subset: dict[str, str] | None,
    ops: list[str],
    equals: dict[str, str] | None,
    subset: dict[str, str] | None,
    covered: bool,
) -> None:
    parent = grant("p", ALICE, "Decrypt", "CreateGrant", equals=parent_equals, subset=parent_subset)
    assert grant_covers(parent, ops, equals, subset) is covered


def test_grant_covers_needs_create_grant() -> None:
    parent = grant("p", ALICE, "Decrypt")
    assert not grant_covers(parent, ["Decrypt"], None, None)


def test_grant_constraint_keys_ignore_case_but_values_do_not() -> None:
    """AWS GrantConstraints: "the key in each key-value pair is not case sensitive, but the
    value is case sensitive"."""
    from envelope.service.access import context_satisfies

    assert context_satisfies({"Purpose": "etl"}, None, {"purpose": "etl"})
    assert context_satisfies(None, {"PURPOSE": "etl"}, {"purpose": "etl", "x": "y"})
    assert not context_satisfies({"Purpose": "etl"}, None, {"purpose": "ETL"})
    assert not context_satisfies(None, {"purpose": "etl"}, {"purpose": "Etl"})


def test_a_source_arn_constraint_allows_only_requests_on_behalf_of_that_resource() -> None:
    """AWS: the SourceArn constraint "allows the permissions in the grant only when the request
    is made on behalf of a specific AWS resource"; it "does not apply to RetireGrant"."""
    bucket = "arn:aws:s3:us-east-1:111122223333:accesspoint/lake"
    g = grant("g", ALICE, "Decrypt", "DescribeKey", "RetireGrant", source_arn=bucket)
    assert grant_allows(g, "Decrypt", None, bucket)
    assert grant_allows(g, "kms:DescribeKey", None, bucket)
    assert not grant_allows(g, "Decrypt", None)
    assert not grant_allows(g, "Decrypt", None, bucket + "-other")
    assert grant_allows(g, "RetireGrant", None)
