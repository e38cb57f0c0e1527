"""The decision: may this caller perform this action on this resource?

One pure function, `authorize`, in AWS KMS's order (see the package docstring of
``envelope.service.access`` and issue 10):

1. The applicable statements are the key-policy statements that name the caller and every
   statement of the caller's IAM policies, each whose action, resource and conditions match.
2. Any applicable Deny denies, whatever allows (grants included).
3. An account-level request (no key) is allowed by an IAM Allow, or for the account root.
4. A key request is allowed when the key policy allows the caller itself (a); or when it
   allows the caller's account (b, delegation to IAM) and the caller's IAM allows, or the
   caller is that account's root (c). Same account: a or (b and c). Another account:
   (a or b) and c. A service principal: a. An AWS managed key is never usable from another
   account, and another account may perform only the cryptographic operations and a few read
   and grant operations on a key (`CROSS_ACCOUNT_ACTIONS`). Otherwise a grant of the caller
   for the operation, with its constraints met, allows.

Choices the documentation leaves open, and why:

- A grant names its grantee by identity ARN; a grant also matches when it names an
  assumed-role session's exact ARN (AWS accepts session ARNs as grantees).
- When both sides are needed (cross-account), `Decision.matched` names the key-policy
  statement, the root of trust; the explanation lists the IAM statement too.
- For CreateGrant through a grant, the grant's constraints bind the grant being created,
  which this function cannot see: it checks grantee and operation, and the service must then
  find a grant of the caller for which `grant_covers` holds.
- A key policy with an account-level request (``resource_account`` None) is a caller bug and
  raises ValueError rather than being silently ignored.

The function reads nothing but its arguments and writes nothing, so it can be called
anywhere (dry runs, ``policy explain``, property tests) with the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envelope.service.access.conditions import Value
from envelope.service.access.document import ACCOUNT, NONE, SELF, Policy, Statement
from envelope.service.access.grants import UNCONSTRAINED, GrantView, context_satisfies
from envelope.service.access.principals import Principal

__all__ = ("Decision", "Request", "Value", "authorize")

_RESOURCE_DENY = "explicit deny in a resource-based policy"
_IDENTITY_DENY = "explicit deny in an identity-based policy"
_MANAGED = "AWS managed keys cannot be used from another account"
_NOT_CROSS_ACCOUNT = "this operation cannot be performed on a key of another account"
#: The only actions AWS lets another account's principals perform on a key, whatever the key
#: policy says (the developer guide, "Allowing users in other accounts to use a KMS key":
#: permissions for any other operation "have no effect"): the cryptographic operations and
#: a few read and grant operations. Managing the key stays with its own account.
CROSS_ACCOUNT_ACTIONS = frozenset(
    "kms:" + a.lower()
    for a in (
        "CreateGrant",
        "Decrypt",
        "DescribeKey",
        "Encrypt",
        "GenerateDataKey",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateMac",
        "GetKeyRotationStatus",
        "GetPublicKey",
        "ListGrants",
        "ReEncryptFrom",
        "ReEncryptTo",
        "RetireGrant",
        "RevokeGrant",
        "Sign",
        "Verify",
        "VerifyMac",
        "DeriveSharedSecret",
        "Encapsulate",
        "Decapsulate",
    )
)


def _foreign(request: Request) -> bool:
    """A principal of another account asks for a KMS action AWS never allows across accounts
    (other services' actions, such as sts:AssumeRole on a role, have their own rules)."""
    account = request.caller.account
    action = request.action.lower()
    return (
        account is not None
        and request.resource_account is not None
        and account != request.resource_account
        and action.startswith("kms:")
        and action not in CROSS_ACCOUNT_ACTIONS
    )


@dataclass(slots=True)  # not frozen: built on every call, and a frozen __init__ costs ~3 us
class Request:
    """One call to authorize. `values` is the condition context with lower-case key names;
    an absent name (or None) is a missing key. `resource_account` None marks an
    account-level operation (ListKeys, CreateKey, ...), whose `resource` is "*"."""

    action: str
    caller: Principal
    resource: str
    resource_account: str | None
    values: Mapping[str, Value]
    encryption_context: Mapping[str, str] | None = None
    aws_managed: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer. `matched` names what allowed ("key-policy:<label>",
    "iam:<policy>:<label>", "grant:<id>", "root") or the Deny that denied, else None.
    `explanation` has one line per statement and grant considered (empty unless asked)."""

    allowed: bool
    matched: str | None
    reason: str
    explanation: tuple[str, ...] = ()

    def message(self, request: Request) -> str:
        """The AccessDeniedException message, in AWS's shape: "... with an explicit deny in
        a <type> policy" for a Deny, "... because no <type> policy allows the <action>
        action" otherwise (IAM User Guide, "Troubleshoot access denied error messages")."""
        why = (
            f"with an {self.reason}"
            if self.reason in (_RESOURCE_DENY, _IDENTITY_DENY)
            else f"because {self.reason}"
        )
        return (
            f"User: {request.caller.arn} is not authorized to perform: {request.action} "
            f"on resource: {request.resource} {why}"
        )


def _first_failed(st: Statement, values: Mapping[str, Value]) -> int:
    """Index of the first condition that does not hold, or -1 when all hold."""
    for i, cond in enumerate(st.conditions):
        if not cond.holds(values):
            return i
    return -1


def _why_not(
    st: Statement, request: Request, action_lower: str, named: int, explain_principal: bool
) -> str | None:
    """None when the statement applies (principal aside from `named`), else why not."""
    if explain_principal and named == NONE:
        what = "NotPrincipal names" if st.not_principal is not None else "Principal does not name"
        return f"{what} the caller"
    if not st.covers_action(action_lower):
        member = "Action" if st.action is not None else "NotAction"
        verb = "is not in" if st.action is not None else "is in"
        return f"{request.action} {verb} {member}"
    if not st.covers_resource(request.resource) or (
        st.late_resource and not st.resource_holds(request.resource, request.values)
    ):
        member = "Resource" if st.resource is not None else "NotResource"
        verb = "is not in" if st.resource is not None else "is in"
        matcher = st.resource if st.resource is not None else st.not_resource
        assert matcher is not None
        if (
            st.resource is not None
            and st.late_resource
            and not matcher.matches(request.resource)
            and matcher.matches_late(request.resource, request.values) is None
        ):
            return f"a policy variable in {member} has no value in the request"
        return f"resource {request.resource} {verb} {member}"
    failed = _first_failed(st, request.values)
    if failed >= 0:
        return "condition " + st.conditions[failed].why_not(request.values)
    return None


def authorize(
    request: Request,
    *,
    key_policy: Policy | None,
    iam_policies: Sequence[tuple[str, Policy]],
    grants: Sequence[GrantView] = (),
    explain: bool = False,
) -> Decision:
    """Decide `request` against the key's policy, the caller's IAM policies and the key's
    grants (the service may pass only the caller's grants; others are skipped cheaply)."""
    if explain:
        return _authorize_explained(request, key_policy, iam_policies, grants)
    caller = request.caller
    account_level = request.resource_account is None
    if account_level and key_policy is not None:
        raise ValueError("an account-level request (resource_account None) has no key policy")
    if request.aws_managed and caller.account != request.resource_account:
        return Decision(False, None, _MANAGED)
    if _foreign(request):
        return Decision(False, None, _NOT_CROSS_ACCOUNT)
    action_lower = request.action.lower()
    resource = request.resource
    values = request.values

    kp_self: str | None = None
    kp_account: str | None = None
    if key_policy is not None:
        for st, named in key_policy.statements_naming(action_lower, caller, resource):
            if st.late_resource and not st.resource_holds(resource, values):
                continue
            if st.conditions and _first_failed(st, values) >= 0:
                continue
            if not st.allow:
                return Decision(False, "key-policy:" + st.label, _RESOURCE_DENY)
            if named == SELF:
                if kp_self is None:
                    kp_self = st.label
            elif kp_account is None:
                kp_account = st.label

    iam_allow: str | None = None
    for name, policy in iam_policies:
        for st in policy.statements_covering(action_lower, resource):
            if st.late_resource and not st.resource_holds(resource, values):
                continue
            if st.conditions and _first_failed(st, values) >= 0:
                continue
            if not st.allow:
                return Decision(False, f"iam:{name}:{st.label}", _IDENTITY_DENY)
            if iam_allow is None:
                iam_allow = f"iam:{name}:{st.label}"

    return _combine(request, account_level, kp_self, kp_account, iam_allow, grants, None)


def _combine(
    request: Request,
    account_level: bool,
    kp_self: str | None,
    kp_account: str | None,
    iam_allow: str | None,
    grants: Sequence[GrantView],
    lines: list[str] | None,
) -> Decision:
    """Steps 3 and 4 once no Deny applied: combine the allows, then try grants."""
    caller = request.caller
    action = request.action
    explanation = tuple(lines) if lines is not None else ()
    identity_ok = iam_allow if iam_allow is not None else "root" if caller.kind == "root" else None
    if account_level:
        if identity_ok is not None:
            return Decision(
                True,
                identity_ok,
                "allowed by an identity-based policy"
                if iam_allow
                else "the account root may perform account-level operations",
                explanation,
            )
        return Decision(
            False, None, f"no identity-based policy allows the {action} action", explanation
        )
    matched: str | None = None
    how = ""
    missing_identity = False
    if caller.account is None:  # a service principal: only the key policy can allow it
        if kp_self is not None:
            matched, how = "key-policy:" + kp_self, "allowed by the key policy"
    elif caller.account == request.resource_account:
        if kp_self is not None:
            matched, how = "key-policy:" + kp_self, "allowed by the key policy"
        elif kp_account is not None and identity_ok is not None:
            matched = identity_ok
            how = "allowed by the caller's account, to which the key policy delegates"
        missing_identity = kp_account is not None
    else:
        resource_ok = kp_self if kp_self is not None else kp_account
        if resource_ok is not None and identity_ok is not None:
            # both sides were needed: both are named (access.md's `matched`)
            matched = f"key-policy:{resource_ok},{identity_ok}"
            how = "allowed by the key policy and the caller's own account"
        missing_identity = resource_ok is not None
    if matched is not None:
        return Decision(True, matched, how, explanation)

    grant = _find_grant(request, grants, lines)
    if lines is not None:
        explanation = tuple(lines)
    if grant is not None:
        return Decision(True, "grant:" + grant, "allowed by a grant", explanation)
    if missing_identity:
        return Decision(
            False, None, f"no identity-based policy allows the {action} action", explanation
        )
    return Decision(
        False, None, f"no resource-based policy allows the {action} action", explanation
    )


def _find_grant(
    request: Request, grants: Sequence[GrantView], lines: list[str] | None
) -> str | None:
    """The id of the first grant that allows the request, or None. With `lines`, every grant
    is examined and explained."""
    caller = request.caller
    arn = caller.arn
    identity = caller.identity_arn
    action = request.action
    op = action[4:] if action[:4].lower() == "kms:" else action
    found: str | None = None
    for g in grants:
        grantee = g.grantee
        if grantee != identity and grantee != arn:
            if lines is not None:
                lines.append(
                    f"grant:{g.grant_id}: does not apply: its grantee {grantee} is not the caller"
                )
            continue
        if op not in g.operations:
            if lines is not None:
                lines.append(f"grant:{g.grant_id}: does not apply: it does not grant {op}")
            continue
        if (
            g.source_arn is not None
            and op != "RetireGrant"
            and request.values.get("aws:sourcearn") != g.source_arn
        ):
            if lines is not None:
                lines.append(
                    f"grant:{g.grant_id}: does not apply: the request is not made on behalf of "
                    f"its SourceArn {g.source_arn}"
                )
            continue
        if op not in UNCONSTRAINED and not context_satisfies(
            g.context_equals, g.context_subset, request.encryption_context
        ):
            if lines is not None:
                which = (
                    "EncryptionContextEquals"
                    if g.context_equals is not None
                    and not context_satisfies(g.context_equals, None, request.encryption_context)
                    else "EncryptionContextSubset"
                )
                lines.append(
                    f"grant:{g.grant_id}: does not apply: the encryption context "
                    f"does not satisfy its {which} constraint"
                )
            continue
        if lines is None:
            return g.grant_id
        lines.append(
            f"grant:{g.grant_id}: applies: grants {op} to the caller"
            + ("" if found is None else " (an earlier grant already allowed)")
        )
        if found is None:
            found = g.grant_id
    return found


def _authorize_explained(
    request: Request,
    key_policy: Policy | None,
    iam_policies: Sequence[tuple[str, Policy]],
    grants: Sequence[GrantView],
) -> Decision:
    """The same decision as the fast path, examining and explaining every statement."""
    caller = request.caller
    account_level = request.resource_account is None
    if account_level and key_policy is not None:
        raise ValueError("an account-level request (resource_account None) has no key policy")
    action_lower = request.action.lower()
    lines: list[str] = []
    kp_self = kp_account = iam_allow = None
    deny: Decision | None = None
    if key_policy is not None:
        for st in key_policy.statements:
            label = f"key-policy:{st.label} ({st.effect})"
            named = st.names(caller)
            why = _why_not(st, request, action_lower, named, True)
            if why is not None:
                lines.append(f"{label}: does not apply: {why}")
                continue
            if not st.allow:
                lines.append(f"{label}: applies: denies the caller")
                if deny is None:
                    deny = Decision(False, "key-policy:" + st.label, _RESOURCE_DENY)
            elif named == SELF:
                lines.append(f"{label}: applies: allows the caller itself")
                kp_self = kp_self or st.label
            else:
                assert named == ACCOUNT
                lines.append(
                    f"{label}: applies: allows the caller's account (delegates to its IAM policies)"
                )
                kp_account = kp_account or st.label
    elif not account_level:
        lines.append("key-policy: none given")
    for name, policy in iam_policies:
        for st in policy.statements:
            label = f"iam:{name}:{st.label} ({st.effect})"
            why = _why_not(st, request, action_lower, SELF, False)
            if why is not None:
                lines.append(f"{label}: does not apply: {why}")
            elif not st.allow:
                lines.append(f"{label}: applies: denies the caller")
                if deny is None:
                    deny = Decision(False, f"iam:{name}:{st.label}", _IDENTITY_DENY)
            else:
                lines.append(f"{label}: applies: allows the caller")
                iam_allow = iam_allow or f"iam:{name}:{st.label}"
    if not iam_policies:
        lines.append(
            "iam: the caller has no identity-based policies"
            + (" (the account root needs none)" if caller.kind == "root" else "")
        )
    if request.aws_managed and caller.account != request.resource_account:
        lines.append("the key is AWS managed and the caller is from another account")
        return Decision(False, None, _MANAGED, tuple(lines))
    if _foreign(request):
        lines.append(
            f"{request.action} is not one of the operations another account may perform on a "
            "key, whatever its policy says"
        )
        return Decision(False, None, _NOT_CROSS_ACCOUNT, tuple(lines))
    if deny is not None:
        if not account_level:
            _find_grant(request, grants, lines)
        return Decision(False, deny.matched, deny.reason, tuple(lines))
    return _combine(
        request,
        account_level,
        kp_self,
        kp_account,
        iam_allow,
        () if account_level else grants,
        lines,
    )
