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
import shlex
import sys

from ..service import KeyService
from ._common import parse_pairs
from ._output import emit, resolve_format
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
    trust = None
    if args.trust_policy_file is not None:
        with open(args.trust_policy_file, encoding="utf-8") as f:
            trust = f.read()
    resp = svc.create_role(
        role_name=args.name,
        path=args.path,
        description=args.description,
        tags=parse_pairs(args.tag, "--tag") or None,
        assume_role_policy_document=trust,
        max_session_duration=args.max_session_duration,
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
    resp = svc.list_principal_policies(arn=args.arn)
    resp.pop("IsTruncated", None)  # never truncated (all in one answer); the AWS CLI drops it
    emit(args, resp, "ListPrincipalPolicies")


def _accounts(args: argparse.Namespace, svc: KeyService) -> None:
    emit(args, svc.list_accounts(), "ListAccounts")


def _create_access_key(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.create_access_key(user_arn=args.user_arn)
    key_id = resp["AccessKey"]["AccessKeyId"]
    gone = (
        f"the secret access key could not be written, so access key {key_id} was deleted "
        "again; nothing was created"
    )
    try:
        emit(args, resp, "CreateAccessKey", failed_query=gone)
        sys.stdout.flush()
    except BaseException as e:
        # The secret is shown once: if it never reached the output (a full disk, a closed
        # pipe, a --query that fails on it, an interrupt), the key would stay active with a
        # secret no one has. Deleted, and said so.
        svc.delete_access_key(access_key_id=key_id, user_arn=args.user_arn)
        if isinstance(e, OSError):
            e.strerror = f"{e.strerror or e}: {gone}"
        raise
    print(
        "envelope: the secret access key is shown only now; store it safely",
        file=sys.stderr,
    )


def _list_access_keys(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.list_access_keys(user_arn=args.user_arn)
    resp.pop("IsTruncated", None)  # never truncated (all in one answer); the AWS CLI drops it
    emit(args, resp, "ListAccessKeys")


def _update_access_key(args: argparse.Namespace, svc: KeyService) -> None:
    svc.update_access_key(
        access_key_id=args.access_key_id, status=args.status, user_arn=args.user
    )
    _done(f"access key {args.access_key_id} {args.status}")


def _delete_access_key(args: argparse.Namespace, svc: KeyService) -> None:
    svc.delete_access_key(access_key_id=args.access_key_id, user_arn=args.user)
    _done(f"delete access key {args.access_key_id}")


def _assume_role(args: argparse.Namespace, svc: KeyService) -> None:
    """Temporary credentials; in text form, shell exports the AWS CLI and SDKs read."""
    resp = svc.assume_role(
        role_arn=args.role_arn, role_session_name=args.session, duration_seconds=args.duration
    )
    if resolve_format(args) != "text" or getattr(args, "query", None):
        emit(args, resp, "AssumeRole")
        return
    creds = resp["Credentials"]
    for name, value in (
        ("AWS_ACCESS_KEY_ID", creds["AccessKeyId"]),
        ("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"]),
        ("AWS_SESSION_TOKEN", creds["SessionToken"]),
    ):
        print(f"export {name}={shlex.quote(str(value))}")
    print(f"# {resp['AssumedRoleUser']['Arn']} until {creds['Expiration']:.0f} (epoch seconds)")


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
        p.set_defaults(creates_store=True)
        p.add_argument("name", metavar="NAME")
        p.add_argument("--path", default="/", help="IAM path, / or /a/b/ (default /)")
        p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="repeatable")
        if kind == "role":
            p.add_argument("--description", default=None)
            p.add_argument(
                "--max-session-duration", type=int, default=3600, metavar="S",
                help="longest assume-role session, 3600..43200 s (default 3600)",
            )
            p.add_argument(
                "--trust-policy-file", default=None, metavar="FILE",
                help="who may assume it (default: the account, through its IAM policies)",
            )

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

    p = _cmd(
        sub,
        "create-access-key",
        "a new access key for a user (or the account root); the secret is shown once",
        _create_access_key,
        key=False,
    )
    p.add_argument("user_arn", metavar="USER_ARN", nargs="?", help="default: the caller")
    p.set_defaults(creates_store=True)
    p = _cmd(sub, "list-access-keys", "a user's access keys (never secrets)", _list_access_keys,
             key=False)
    p.add_argument("user_arn", metavar="USER_ARN", nargs="?", help="default: the caller")
    p = _cmd(sub, "update-access-key", "make an access key Inactive or Active again",
             _update_access_key, key=False)
    p.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    p.add_argument("--status", required=True, choices=("Active", "Inactive"))
    p.add_argument("--user", metavar="USER_ARN", default=None, help="the key's user")
    p = _cmd(sub, "delete-access-key", "delete an access key", _delete_access_key, key=False)
    p.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    p.add_argument("--user", metavar="USER_ARN", default=None, help="the key's user")
    p = _cmd(
        sub,
        "assume-role",
        "temporary credentials of a role session (STS AssumeRole); text output is shell "
        "exports (eval \"$(envelope iam assume-role ARN --session job1 --output text)\")",
        _assume_role,
        key=False,
    )
    p.add_argument("role_arn", metavar="ROLE_ARN")
    p.add_argument("--session", required=True, metavar="NAME", help="RoleSessionName")
    p.add_argument("--duration", type=int, default=3600, metavar="S",
                   help="seconds, 900 up to the role's MaxSessionDuration (default 3600)")
