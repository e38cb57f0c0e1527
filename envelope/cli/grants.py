"""`envelope grants create|list|retire|revoke|retirable`: grants on keys of the embedded KMS.

A grant lets one principal (the grantee) call a few operations on one key, optionally only with
an encryption context that equals, or contains, the one given; it takes effect at once and
lasts until it is retired (by its retiring principal, a grantee holding RetireGrant, or the
key's account) or revoked (by whoever the key policy allows RevokeGrant). The responses are
AWS's (CreateGrant: GrantId and GrantToken; ListGrants: the grant entries).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..service import KeyService
from ._common import parse_pairs
from ._output import emit
from .keys import _all_pages, _cmd, add_store_arguments

__all__ = ("register",)


def _operations(text: str) -> list[str]:
    ops = [o.strip() for o in text.split(",") if o.strip()]
    if not ops:
        raise ValueError("--operations needs at least one operation, e.g. Decrypt,Encrypt")
    return ops


def _create(args: argparse.Namespace, svc: KeyService) -> None:
    constraints: dict[str, dict[str, str]] = {}
    if args.context_equals:
        constraints["EncryptionContextEquals"] = parse_pairs(
            args.context_equals, "--context-equals"
        )
    if args.context_subset:
        constraints["EncryptionContextSubset"] = parse_pairs(
            args.context_subset, "--context-subset"
        )
    resp = svc.create_grant(
        key_id=args.key,
        grantee_principal=args.grantee,
        operations=_operations(args.operations),
        retiring_principal=args.retiring,
        constraints=constraints or None,
        name=args.name,
        grant_tokens=args.grant_token or (),
    )
    emit(args, resp, "CreateGrant")


def _paged(call: Callable[[str | None], dict[str, Any]]) -> list[Any]:
    return _all_pages(call, "Grants")


def _list(args: argparse.Namespace, svc: KeyService) -> None:
    grants = _paged(
        lambda m: svc.list_grants(
            key_id=args.key, grant_id=args.grant_id, grantee_principal=args.grantee, marker=m
        )
    )
    emit(args, {"Grants": grants}, "ListGrants")


def _retirable(args: argparse.Namespace, svc: KeyService) -> None:
    grants = _paged(lambda m: svc.list_retirable_grants(retiring_principal=args.arn, marker=m))
    emit(args, {"Grants": grants}, "ListRetirableGrants")


def _retire(args: argparse.Namespace, svc: KeyService) -> None:
    if args.token is not None:
        svc.retire_grant(grant_token=args.token, key_id=args.key, grant_id=args.grant_id)
        what = "by token"
    else:
        if args.key is None or args.grant_id is None:
            raise ValueError("grants retire: give --token T, or KEY GRANT_ID")
        svc.retire_grant(key_id=args.key, grant_id=args.grant_id)
        what = f"{args.grant_id} on {args.key}"
    print(f"envelope: retire grant: done ({what})", file=sys.stderr)


def _revoke(args: argparse.Namespace, svc: KeyService) -> None:
    svc.revoke_grant(key_id=args.key, grant_id=args.grant_id)
    print(f"envelope: revoke grant: done ({args.grant_id} on {args.key})", file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``grants`` command tree to the main parser's subcommands."""
    grants = subparsers.add_parser(
        "grants", help="grants on keys of the embedded KMS", description=__doc__.split("\n\n")[0]
    )
    add_store_arguments(grants)
    sub = grants.add_subparsers(dest="grants_command", metavar="COMMAND", required=True)

    p = _cmd(sub, "create", "CreateGrant: let --grantee call --operations on KEY", _create)
    p.add_argument("--grantee", required=True, metavar="ARN", help="the grantee principal")
    p.add_argument(
        "--operations",
        required=True,
        metavar="OP,OP",
        help="comma-separated: Decrypt, Encrypt, GenerateDataKey, "
        "GenerateDataKeyWithoutPlaintext, ReEncryptFrom, ReEncryptTo, DescribeKey, "
        "CreateGrant, RetireGrant, Sign, Verify, GetPublicKey, GenerateMac, VerifyMac, ...",
    )
    p.add_argument("--retiring", metavar="ARN", default=None, help="the retiring principal")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--context-equals",
        metavar="KEY=VALUE",
        action="append",
        help="only with exactly this encryption context (repeat for each pair)",
    )
    g.add_argument(
        "--context-subset",
        metavar="KEY=VALUE",
        action="append",
        help="only with an encryption context that includes these pairs (repeat)",
    )
    p.add_argument(
        "--name", default=None, help="a name: the same request again returns the same grant"
    )
    p.add_argument(
        "--grant-token",
        metavar="TOKEN",
        action="append",
        help="a grant token that allows this CreateGrant (repeatable)",
    )

    p = _cmd(sub, "list", "ListGrants: the grants on KEY", _list)
    p.add_argument("--grant-id", default=None, help="only this grant")
    p.add_argument("--grantee", metavar="ARN", default=None, help="only this grantee's grants")

    p = _cmd(
        sub,
        "retire",
        "RetireGrant: by --token, or by KEY GRANT_ID",
        _retire,
        key=False,
    )
    p.add_argument("key", metavar="KEY", nargs="?", default=None)
    p.add_argument("grant_id", metavar="GRANT_ID", nargs="?", default=None)
    p.add_argument("--token", metavar="TOKEN", default=None, help="the grant token")

    p = _cmd(sub, "revoke", "RevokeGrant: remove a grant on KEY", _revoke)
    p.add_argument("grant_id", metavar="GRANT_ID")

    p = _cmd(
        sub,
        "retirable",
        "ListRetirableGrants: the grants ARN may retire",
        _retirable,
        key=False,
    )
    p.add_argument("arn", metavar="ARN", help="the retiring principal")
