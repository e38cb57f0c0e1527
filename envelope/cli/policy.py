"""`envelope policy explain` and `envelope keys policy get|put|list`: key policies, and why a
principal may or may not do something.

``explain`` asks the embedded KMS the question every policy change raises (would this
principal be allowed this action on this key, with this encryption context, through this
service?) without making the call: it prints the decision, the statement or grant that decides,
the reason, and one line for each statement or grant that does not apply and why. It reads the
store only (nothing is audited), and exits 0 when the action would be allowed, 3 when it
would be denied (2 when the question is malformed: an unknown key, a bad principal or
action), so a script can test a policy before it ships.

Policy documents are given inline (``--document JSON``) or from a file (``--file PATH``, ``-``
for stdin), passed to the KMS unchanged: it validates them (`MalformedPolicyDocumentException`
with the reason) and stores them as given, so ``get`` prints back exactly what ``put`` took.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..service import KeyService, KmsServiceError
from ..service.errors import StoreError
from ._common import EXIT_KMS, EXIT_OK, parse_pairs
from ._output import emit
from .keys import _all_pages, _cmd, _run, add_store_arguments

__all__ = ("add_document_arguments", "add_key_policy_commands", "read_document", "register")

#: How much of a policy file is read: the KMS refuses over 32 KB (key policies) anyway, and
#: this stops a mistaken `--file /dev/zero` long before memory does.
_MAX_DOCUMENT = 1 << 20


def add_document_arguments(p: argparse.ArgumentParser) -> None:
    """``--document JSON`` or ``--file PATH`` (one of them, required)."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--document", metavar="JSON", help="the policy document, inline")
    g.add_argument("--file", metavar="PATH", help="read the policy document from PATH (- stdin)")


def read_document(args: argparse.Namespace) -> str:
    """The policy text as given: never re-serialized, so what the KMS stores is what the user
    wrote. A file that is not UTF-8 or too large is a usage error (ValueError: exit 2)."""
    if args.document is not None:
        text: str = args.document
        return text
    if args.file == "-":
        data = sys.stdin.buffer.read(_MAX_DOCUMENT + 1)
    else:
        with Path(args.file).open("rb") as f:
            data = f.read(_MAX_DOCUMENT + 1)
    if len(data) > _MAX_DOCUMENT:
        raise ValueError(f"--file {args.file}: over 1 MiB; not a policy document")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"--file {args.file}: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None


# -- keys policy get|put|list -----------------------------------------------------------------


def _get(args: argparse.Namespace, svc: KeyService) -> None:
    emit(args, svc.get_key_policy(key_id=args.key, policy_name=args.policy_name), "GetKeyPolicy")


def _put(args: argparse.Namespace, svc: KeyService) -> None:
    svc.put_key_policy(
        key_id=args.key,
        policy=read_document(args),
        policy_name=args.policy_name,
        bypass_policy_lockout_safety_check=args.bypass_policy_lockout_safety_check,
    )
    print(f"envelope: put key policy: done ({args.key})", file=sys.stderr)


def _list(args: argparse.Namespace, svc: KeyService) -> None:
    # every page (a key has one policy): the pagination flag goes, as the AWS CLI drops it
    # (it printed a bare False line in text output; review)
    names = _all_pages(lambda m: svc.list_key_policies(key_id=args.key, marker=m), "PolicyNames")
    emit(args, {"PolicyNames": names}, "ListKeyPolicies")


def add_key_policy_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``keys policy get|put|list KEY`` under the ``keys`` command tree."""
    pol = sub.add_parser(
        "policy",
        help="the key policy: get, put, list",
        description="A key's policy, the root of trust of who may use it (GetKeyPolicy, "
        "PutKeyPolicy, ListKeyPolicies). See docs/access.md.",
    )
    psub = pol.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    p = _cmd(psub, "get", "GetKeyPolicy: the policy document, as stored", _get)
    p.add_argument("--policy-name", default="default", help="always default (the only one)")
    p = _cmd(psub, "put", "PutKeyPolicy: replace the key policy", _put)
    add_document_arguments(p)
    p.add_argument("--policy-name", default="default", help="always default (the only one)")
    p.add_argument(
        "--bypass-policy-lockout-safety-check",
        action="store_true",
        help="store a policy that would stop the caller from changing it again (the KMS "
        "refuses such a policy without this flag)",
    )
    _cmd(psub, "list", "ListKeyPolicies: the names of the key's policies", _list)


# -- policy explain ---------------------------------------------------------------------------


def _explain(args: argparse.Namespace, svc: KeyService) -> int:
    principal = getattr(args, "principal", None) or svc.default_principal
    values: dict[str, Any] = {k.lower(): v for k, v in parse_pairs(args.value, "--value").items()}
    try:
        result = svc.explain_access(
            principal=principal,
            action=args.action,
            key_id=args.key,
            encryption_context=parse_pairs(args.context, "--context") or None,
            via_service=args.via_service,
            source_ip=args.source_ip,
            values=values or None,
        )
    except StoreError:
        raise
    except KmsServiceError as e:
        # A question that cannot be asked (a malformed principal or action, an unknown key)
        # is a usage error (exit 2), never the 3 a script reads as "denied".
        raise ValueError(f"{e.code}: {e.message}") from None
    emit(args, result, "PolicyExplain")
    if result["Allowed"]:
        return EXIT_OK
    print(f"envelope: denied: AccessDeniedException: {result['Message']}", file=sys.stderr)
    return EXIT_KMS


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``policy`` command tree to the main parser's subcommands."""
    pol = subparsers.add_parser(
        "policy",
        help="explain access decisions of the embedded KMS",
        description=__doc__.split("\n\n")[0],
    )
    add_store_arguments(pol)
    sub = pol.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "explain",
        help="would --as be allowed --action on KEY? which statement or grant decides, and why "
        "(exit 0 allowed, 3 denied)",
        description=__doc__.split("\n\n")[1],
    )
    add_store_arguments(p)
    p.add_argument(
        "key",
        metavar="KEY",
        nargs="?",
        default=None,
        help="key id, key ARN, alias name or alias ARN (omit for account-level actions such "
        "as kms:ListKeys or kms:CreateKey)",
    )
    p.add_argument(
        "--action", required=True, metavar="SERVICE:ACTION", help="e.g. kms:Decrypt, kms:CreateKey"
    )
    p.add_argument(
        "--context",
        metavar="KEY=VALUE",
        action="append",
        help="an encryption context pair of the request (repeat for more)",
    )
    p.add_argument(
        "--via-service",
        metavar="SERVICE",
        default=None,
        help="the request comes through this service (kms:ViaService), e.g. "
        "envelope.us-east-1.amazonaws.com, as the encryptor's calls do",
    )
    p.add_argument(
        "--source-ip", metavar="IP", default="127.0.0.1", help="aws:SourceIp (127.0.0.1)"
    )
    p.add_argument(
        "--value",
        metavar="CONDITION_KEY=VALUE",
        action="append",
        help="set any other condition key of the request "
        "(e.g. aws:CurrentTime=2030-01-01T00:00:00Z)",
    )
    p.set_defaults(handler=_run(_explain, takes_alias=True))  # kms:RequestAlias
