"""`envelope iam ...`: the accounts, IAM users and roles of the embedded KMS, and their identity
policies.

A key policy that allows the account root (the default one does) delegates to IAM: a user or
role of that account may then use the key as far as its identity policies allow. Roles act
through sessions: run a command ``--as arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION``. IAM
calls are authorized as IAM authorizes them: the account root may do everything in its
account, anyone else needs an identity policy allowing the ``iam:`` action (``iam:CreateUser``,
``iam:PutRolePolicy``, ...) on the principal's ARN. Users and roles are created in the
caller's account (``--as arn:aws:iam::111122223333:root`` to work in another one).
"""

from __future__ import annotations

import argparse
import sys

from ..service import KeyService
from ._common import parse_pairs
from ._output import emit
from .keys import _all_pages, _cmd, add_store_arguments
from .policy import add_document_arguments, read_document

__all__ = ("register",)


def _done(what: str) -> None:
    """Nothing to print (as the AWS CLI); a person still sees it was done."""
    print(f"envelope: {what}: done", file=sys.stderr)


def _create_user(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.create_user(
        user_name=args.name, path=args.path, tags=parse_pairs(args.tag, "--tag") or None
    )
    emit(args, resp, "CreateUser")


def _create_role(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.create_role(
        role_name=args.name,
        path=args.path,
        description=args.description,
        tags=parse_pairs(args.tag, "--tag") or None,
    )
    emit(args, resp, "CreateRole")


def _delete(args: argparse.Namespace, svc: KeyService) -> None:
    svc.delete_principal(arn=args.arn)
    _done(f"delete {args.arn}")


def _list(args: argparse.Namespace, svc: KeyService) -> None:
    kind = "user" if args.users else "role" if args.roles else None
    principals = _all_pages(lambda m: svc.list_principals(kind=kind, marker=m), "Principals")
    emit(args, {"Principals": principals}, "ListPrincipals")


def _get(args: argparse.Namespace, svc: KeyService) -> None:
    emit(args, svc.get_principal(arn=args.arn), "GetPrincipal")


def _tag(args: argparse.Namespace, svc: KeyService) -> None:
    svc.tag_principal(arn=args.arn, tags=parse_pairs(args.tags, "tags"))
    emit(args, svc.get_principal(arn=args.arn), "GetPrincipal")


def _put_policy(args: argparse.Namespace, svc: KeyService) -> None:
    svc.put_principal_policy(
        arn=args.arn, policy_name=args.policy_name, policy_document=read_document(args)
    )
    _done(f"put policy {args.policy_name} on {args.arn}")


def _get_policy(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.get_principal_policy(arn=args.arn, policy_name=args.policy_name)
    emit(args, resp, "GetPrincipalPolicy")


def _delete_policy(args: argparse.Namespace, svc: KeyService) -> None:
    svc.delete_principal_policy(arn=args.arn, policy_name=args.policy_name)
    _done(f"delete policy {args.policy_name} of {args.arn}")


def _list_policies(args: argparse.Namespace, svc: KeyService) -> None:
    emit(args, svc.list_principal_policies(arn=args.arn), "ListPrincipalPolicies")


def _accounts(args: argparse.Namespace, svc: KeyService) -> None:
    emit(args, svc.list_accounts(), "ListAccounts")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``iam`` command tree to the main parser's subcommands."""
    iam = subparsers.add_parser(
        "iam",
        help="accounts, IAM users and roles, identity policies",
        description=__doc__.split("\n\n")[0],
    )
    add_store_arguments(iam)
    sub = iam.add_subparsers(dest="iam_command", metavar="COMMAND", required=True)

    for kind, fn in (("user", _create_user), ("role", _create_role)):
        p = _cmd(
            sub, f"create-{kind}", f"create an IAM {kind} in the caller's account", fn, key=False
        )
        p.add_argument("name", metavar="NAME")
        p.add_argument("--path", default="/", help="IAM path, / or /a/b/ (default /)")
        p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="repeatable")
        if kind == "role":
            p.add_argument("--description", default=None)

    p = _cmd(sub, "delete", "delete a user or role and its identity policies", _delete, key=False)
    p.add_argument("arn", metavar="ARN")
    p = _cmd(sub, "list", "the users and roles of the caller's account", _list, key=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--users", action="store_true", help="only users")
    g.add_argument("--roles", action="store_true", help="only roles")
    p = _cmd(sub, "get", "show a user or role", _get, key=False)
    p.add_argument("arn", metavar="ARN")
    p = _cmd(
        sub, "tag", "add or replace tags of a user or role (aws:PrincipalTag/K)", _tag, key=False
    )
    p.add_argument("arn", metavar="ARN")
    p.add_argument("tags", nargs="+", metavar="KEY=VALUE")

    p = _cmd(
        sub, "put-policy", "attach or replace an inline identity policy", _put_policy, key=False
    )
    p.add_argument("arn", metavar="ARN")
    p.add_argument("policy_name", metavar="NAME")
    add_document_arguments(p)
    p = _cmd(sub, "get-policy", "an identity policy's document", _get_policy, key=False)
    p.add_argument("arn", metavar="ARN")
    p.add_argument("policy_name", metavar="NAME")
    p = _cmd(sub, "delete-policy", "remove an identity policy", _delete_policy, key=False)
    p.add_argument("arn", metavar="ARN")
    p.add_argument("policy_name", metavar="NAME")
    p = _cmd(
        sub,
        "list-policies",
        "the names of a principal's identity policies",
        _list_policies,
        key=False,
    )
    p.add_argument("arn", metavar="ARN")

    _cmd(sub, "accounts", "every account the store knows", _accounts, key=False)
