"""Grants: narrow, revocable permissions, and the rule that a grant never widens itself.

A grant allows its grantee a set of operations on one key, optionally only for encryption
contexts that equal (EncryptionContextEquals) or include (EncryptionContextSubset) given pairs.
Both constraints may be set; the context must then satisfy both. Context keys are compared
without regard to case and values exactly, as AWS's GrantConstraints documents. The constraints
do not apply to DescribeKey and RetireGrant, which take no encryption context (AWS: "the
constraint doesn't apply to these operations"). A SourceArn constraint allows the grant only
for requests made on behalf of that resource (the request's ``aws:SourceArn``), for every
operation but RetireGrant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = (
    "UNCONSTRAINED",
    "GrantView",
    "context_satisfies",
    "grant_allows",
    "grant_covers",
)

_EMPTY: Mapping[str, str] = {}
#: Operations a grant's context constraints do not bind: CreateGrant (they bind the grant it
#: creates: `grant_covers`), DescribeKey and RetireGrant (no encryption context).
UNCONSTRAINED = frozenset({"CreateGrant", "DescribeKey", "RetireGrant"})


@dataclass(frozen=True, slots=True)
class GrantView:
    """What the evaluator needs of a stored grant. `grantee` is the principal ARN as stored;
    `operations` are KMS operation names without the ``kms:`` prefix ("Decrypt")."""

    grant_id: str
    grantee: str
    operations: frozenset[str]
    context_equals: Mapping[str, str] | None
    context_subset: Mapping[str, str] | None
    source_arn: str | None = None


def context_satisfies(
    equals: Mapping[str, str] | None,
    subset: Mapping[str, str] | None,
    context: Mapping[str, str] | None,
) -> bool:
    """Whether an encryption context meets the constraints; a missing context is the empty
    one (so it meets an EncryptionContextSubset only when that is empty too).

    As AWS documents for GrantConstraints, the key of each pair is compared without regard to
    case and the value exactly (a policy's kms:EncryptionContext conditions are the way to
    require a fully case-sensitive context). Pairs are compared as pairs, not folded into one
    mapping: a context with two keys that differ only in case (``stage=A``, ``STAGE=B``) kept
    whichever the caller listed last, so it met an EncryptionContextEquals ``{stage: A}``
    with an extra pair, depending on the order (review)."""
    ctx = _pairs(_EMPTY if context is None else context)
    if equals is not None and sorted(ctx) != sorted(_pairs(equals)):
        return False
    if subset is not None and not set(_pairs(subset)) <= set(ctx):
        return False
    return True


def _pairs(context: Mapping[str, str]) -> list[tuple[str, str]]:
    """A context's pairs, each key lower-cased (the grant constraints' comparison)."""
    return [(k.lower(), v) for k, v in context.items()]


def grant_allows(
    grant: GrantView,
    operation: str,
    context: Mapping[str, str] | None,
    source_arn: str | None = None,
) -> bool:
    """Whether `grant` allows `operation` ("Decrypt" or "kms:Decrypt") with this encryption
    context, for a request made on behalf of `source_arn` (None: of no resource). The grantee
    is not checked here: that is `authorize`'s job.

    For CreateGrant the constraints bind the grant being created, not a context of the call;
    check those with `grant_covers`.
    """
    op = operation[4:] if operation.startswith("kms:") else operation
    if op not in grant.operations:
        return False
    if grant.source_arn is not None and op != "RetireGrant" and source_arn != grant.source_arn:
        return False
    if op in UNCONSTRAINED:
        return True
    return context_satisfies(grant.context_equals, grant.context_subset, context)


def grant_covers(
    parent: GrantView,
    operations: Iterable[str],
    equals: Mapping[str, str] | None,
    subset: Mapping[str, str] | None,
) -> bool:
    """Whether a grantee holding `parent` may create a grant for `operations` with these
    constraints: `parent` holds CreateGrant and every requested operation, and every context
    the new grant would accept is one `parent` accepts (so it is at least as narrow).

    The set a grant accepts is {ctx : ctx == equals (if set), ctx includes subset (if set)}.
    With `equals` set the new grant accepts at most that one context, which must be accepted by
    the parent. Without it the new grant accepts infinitely many contexts, so the parent may
    not have an `equals` constraint, and the parent's subset pairs must all be in the new
    grant's subset (more required pairs is narrower).
    """
    ops = {o[4:] if o.startswith("kms:") else o for o in operations}
    if "CreateGrant" not in parent.operations or not ops <= parent.operations:
        return False
    if equals is not None:
        if subset is not None and not context_satisfies(None, subset, equals):
            return True  # the new grant accepts no context at all: narrower than anything
        return context_satisfies(parent.context_equals, parent.context_subset, equals)
    if parent.context_equals is not None:
        return False
    if parent.context_subset is None:
        return True
    return context_satisfies(None, parent.context_subset, subset)
