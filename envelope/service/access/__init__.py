"""Access control for the embedded KMS: principals, policy documents, conditions, grants and
the one pure decision function, `authorize` (issue 10).

The package imports only the standard library and `envelope.service.errors`: it reads no store
and no clock, so the service, ``envelope policy explain`` and the tests all get the same
answer for the same inputs. Policies are parsed and compiled once (`parse_policy`); the service
keeps the compiled `Policy` and calls `authorize` on every operation.
"""

from __future__ import annotations

from envelope.service.access.conditions import Condition, Value
from envelope.service.access.document import MAX_POLICY_BYTES, Policy, Statement, parse_policy
from envelope.service.access.evaluate import Decision, Request, authorize
from envelope.service.access.grants import GrantView, context_satisfies, grant_allows, grant_covers
from envelope.service.access.principals import Principal, parse_principal, root_of

__all__ = (
    "MAX_POLICY_BYTES",
    "Condition",
    "Decision",
    "GrantView",
    "Policy",
    "Principal",
    "Request",
    "Statement",
    "Value",
    "authorize",
    "context_satisfies",
    "grant_allows",
    "grant_covers",
    "parse_policy",
    "parse_principal",
    "root_of",
)
