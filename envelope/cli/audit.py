"""`envelope audit verify|tail|seal`: check and read the embedded KMS's audit log.

``verify`` walks the hash chain and every signed seal and exits 0 when the log is intact, 1
naming the first record that cannot be trusted (edited, deleted, inserted, reordered, or a
tail cut below the last seal); it also checks the store's rows (every key row's MAC, every
sealed key material), and exits 1 with an ALARM line for each row edited outside the KMS.
It needs the root key: it checks that the seals' public key is the one whose private half is
sealed under it.
"""

from __future__ import annotations

import argparse
import sys

from ..service import KeyService
from .keys import _kv_table, _rows_table, _run, add_store_arguments, emit

__all__ = ("register",)

EXIT_TAMPERED = 1


def _verify(args: argparse.Namespace, svc: KeyService) -> int:
    report = svc.verify_audit_log()
    store_problems = svc.check_store()
    out = report.as_dict()
    out["store_problems"] = store_problems
    out["ok"] = report.ok and not store_problems
    emit(args, out, _kv_table)
    failed = False
    if not report.ok:
        print(f"envelope: audit log verification FAILED at {report.problem}", file=sys.stderr)
        failed = True
    for problem in store_problems:
        print(f"envelope: ALARM: store check FAILED: {problem}", file=sys.stderr)
        failed = True
    return EXIT_TAMPERED if failed else 0


def _tail(args: argparse.Namespace, svc: KeyService) -> int:
    records = svc.audit_tail(args.n)
    emit(
        args,
        {"Records": records},
        lambda o: _rows_table(
            ["seq", "time", "operation", "key_id", "outcome", "error_code", "alarm", "principal"],
            o["Records"],
            "audit log",
        ),
    )
    return 0


def _seal(args: argparse.Namespace, svc: KeyService) -> int:
    seq = svc.seal_audit_log()
    emit(args, {"SealedThrough": seq}, _kv_table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``audit`` command tree to the main parser's subcommands."""
    audit = subparsers.add_parser(
        "audit", help="verify and read the KMS audit log", description=__doc__.split("\n\n")[0]
    )
    add_store_arguments(audit)
    sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    p = sub.add_parser("verify", help="check the hash chain and seals (exit 1 if tampered)")
    add_store_arguments(p)
    p.set_defaults(handler=_run(_verify))
    p = sub.add_parser("tail", help="show the last records")
    add_store_arguments(p)
    p.add_argument("-n", type=int, default=20, help="how many records (20)")
    p.set_defaults(handler=_run(_tail))
    p = sub.add_parser("seal", help="sign a digest of the log up to its last record now")
    add_store_arguments(p)
    p.set_defaults(handler=_run(_seal))
