"""A role's trust policy: who may assume it (``sts:AssumeRole``), as IAM's
``AssumeRolePolicyDocument`` says.

A trust policy is a resource-based policy on the role, so it is evaluated by the same
`access.authorize` as a key policy, with the role in the key's place: naming a user or role
(or ``*``) trusts it outright; naming an account (its id or ``:root`` ARN) delegates to that
account's IAM, whose identity policies must then allow ``sts:AssumeRole`` on the role. A
caller from another account always needs both sides, as in AWS.

IAM's own rules for the document, which differ from a key policy's: actions are ``sts:``
actions, a statement has no ``Resource`` (the role is the resource; IAM refuses the member as
"prohibited"), and the document is at most 2,048 characters (IAM's default ``ACLSizePerRole``
quota). Internally each statement gets ``"Resource": "*"`` so the shared parser compiles it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .access import Policy, parse_policy
from .errors import LimitExceededException, MalformedPolicyDocumentException

__all__ = ("MAX_TRUST_POLICY", "default_trust_policy", "parse_trust_policy")

#: IAM's default ACLSizePerRole quota (characters of a trust policy).
MAX_TRUST_POLICY = 2048


def default_trust_policy(account: str) -> str:
    """The trust policy of a role created without one: its own account, i.e. the account
    root and every identity of the account whose IAM policies allow ``sts:AssumeRole``."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "sts:AssumeRole",
                }
            ],
        },
        indent=2,
    )


def parse_trust_policy(
    text: object, principal_exists: Callable[[str], bool] | None = None
) -> Policy:
    """Validate and compile a trust policy (MalformedPolicyDocumentException if it is not
    one; LimitExceededException over 2,048 characters)."""
    if not isinstance(text, str):
        raise MalformedPolicyDocumentException("the trust policy must be a JSON string")
    if len(text) > MAX_TRUST_POLICY:
        raise LimitExceededException(f"Cannot exceed quota for ACLSizePerRole: {MAX_TRUST_POLICY}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # (RecursionError: nested deeper than the parser goes)
        doc = None  # the shared parser names the JSON error precisely
    if isinstance(doc, dict):
        raw = doc.get("Statement")
        items = raw if isinstance(raw, list) else [raw]
        for i, st in enumerate(items):
            if not isinstance(st, dict):
                continue
            for member in ("Resource", "NotResource"):
                if member in st:
                    raise MalformedPolicyDocumentException(
                        f"Statement[{i}]: Has prohibited field {member} (a trust policy's "
                        "resource is its role)"
                    )
            st["Resource"] = "*"
        doc["Statement"] = items if isinstance(raw, list) else items[0]
        normalised = json.dumps(doc)
    else:
        normalised = text
    return parse_policy(
        normalised, resource_policy=True, principal_exists=principal_exists, service="sts"
    )
