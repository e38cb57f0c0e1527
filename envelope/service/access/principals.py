"""Who is calling: the principal ARNs the access evaluator understands.

A caller is one of the five kinds AWS KMS sees: an account root, an IAM user, an IAM role, an
assumed-role session (what a running job usually is) or an AWS service principal. Parsing is
strict because every decision hangs on it: a string that is none of these is refused with
`ValidationException` instead of being treated as "some principal" that matches nothing, which
would turn a typo in ``--as`` into a confusing AccessDenied.

Only the ``aws`` partition is accepted: the embedded service has one partition, and an ARN of
another partition is a mistake, not a caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from envelope._names import IAM_ARN, SERVICE_PRINCIPAL, SESSION_ARN, principal_problem
from envelope.service.errors import ValidationException

__all__ = (
    "IAM_ARN",
    "KINDS",
    "SERVICE_PRINCIPAL",
    "SESSION_ARN",
    "Principal",
    "is_account_id",
    "parse_principal",
    "root_of",
)

KINDS = frozenset({"root", "user", "role", "assumed-role", "service"})

_ACCOUNT = re.compile(r"[0-9]{12}\Z")


def is_account_id(text: str) -> bool:
    """A 12-digit AWS account id (the form a policy uses to name a whole account)."""
    return _ACCOUNT.match(text) is not None


@dataclass(frozen=True, slots=True)
class Principal:
    """One caller, as the service authenticated it.

    `name` is the user or role name (the last path element; for a session, the role's name),
    "" for the root, and the service's first DNS label ("envelope") for a service principal.
    The identity and root ARNs are computed once here because the evaluator reads them on every
    statement it checks.

    `role_arn`, for a session only: the ARN of the role it is a session of, path included,
    as the store holds it. A session ARN names its role without the path
    (``assumed-role/Ops/x1`` for ``role/sandbox/Ops``), so the service resolves it by name
    (role names are unique in an account, as IAM's are) and passes it here; without it the
    identity is the path-less role ARN.
    """

    arn: str
    account: str | None
    kind: str
    name: str
    role_arn: str | None = None
    _identity: str = field(init=False, repr=False, compare=False)
    _root: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValidationException(f"unknown principal kind {self.kind!r}")
        if (self.kind == "service") != (self.account is None):
            raise ValidationException("a service principal has no account; every other has one")
        if self.kind == "assumed-role":
            # A session acts with its role's identity policies and is named by its role ARN in
            # grants and policies, path included (the session ARN has none: see `role_arn`).
            identity = f"arn:aws:iam::{self.account}:role/{self.name}"
            if self.role_arn is not None:
                m = IAM_ARN.match(self.role_arn)
                if (
                    m is None
                    or m.group("kind") != "role"
                    or m.group("account") != self.account
                    or m.group("name") != self.name
                ):
                    raise ValidationException(
                        f"{self.role_arn!r} is not the role of the session {self.arn!r}"
                    )
                identity = self.role_arn
        elif self.role_arn is not None:
            raise ValidationException("only a role session has a role ARN")
        else:
            identity = self.arn
        object.__setattr__(self, "_identity", identity)
        root = None if self.account is None else f"arn:aws:iam::{self.account}:root"
        object.__setattr__(self, "_root", root)

    @property
    def identity_arn(self) -> str:
        """What IAM policies attach to and grants name: the role ARN for a session, else `arn`."""
        return self._identity

    @property
    def root_arn(self) -> str | None:
        """The caller's account root ARN (None for a service principal)."""
        return self._root


def parse_principal(text: str) -> Principal:
    """Parse a caller ARN or service principal; anything else is a `ValidationException`."""
    if not isinstance(text, str):
        raise ValidationException("a principal must be a string")
    m = IAM_ARN.match(text)
    if m is not None:
        if m.group("root"):
            return Principal(text, m.group("account"), "root", "")
        return Principal(text, m.group("account"), m.group("kind"), m.group("name"))
    m = SESSION_ARN.match(text)
    if m is not None:
        return Principal(text, m.group("account"), "assumed-role", m.group("role"))
    m = SERVICE_PRINCIPAL.match(text)
    if m is not None:
        return Principal(text, None, "service", m.group("name"))
    raise ValidationException(principal_problem(text) or f"{text!r} is not a principal")


def root_of(account: str) -> Principal:
    """The root principal of a 12-digit account."""
    if not isinstance(account, str) or not is_account_id(account):
        raise ValidationException(f"{account!r} is not a 12-digit account id")
    return Principal(f"arn:aws:iam::{account}:root", account, "root", "")
