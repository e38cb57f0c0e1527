"""`envelope audit verify|tail|seal`: check and read the embedded KMS's audit log.

``verify`` walks the hash chain and every signed seal and exits 0 when the log is intact, 1
naming the first record that cannot be trusted (edited, deleted, inserted, reordered, or a
tail cut below the last seal); it also checks the store's rows (every key row's MAC, every
sealed key material), and the store against the signed digest chain outside it (``--digests``:
a store shorter than, diverging from, or older than the latest digest; digests edited or
deleted), and exits 1 with an ALARM line for each problem. With no store under ``--home`` it
verifies a copy of the digests alone.
It needs the root key: it checks that the seals' public key is the one whose private half is
sealed under it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

from ..service import KeyService, default_home
from ..service._home import ROOT_KEY_NAME, STORE_NAME
from ..service.digests import DigestLocation, verify_chain
from ..service.errors import StoreError
from ._common import EXIT_USAGE, positive_int
from ._output import emit
from .keys import _run, add_store_arguments

__all__ = ("register",)

EXIT_TAMPERED = 1


def _verify(args: argparse.Namespace, svc: KeyService) -> int:
    svc.seal_on_close = False  # a verifier writes nothing, least of all a seal over what it read
    report = svc.verify_audit_log()
    store_problems = svc.check_store()
    location = DigestLocation(args.digests) if getattr(args, "digests", None) else None
    chain, against, unpublished = svc.check_digests(location, expected_fingerprint=args.fingerprint)
    out = report.as_dict()
    out["store_problems"] = store_problems
    out["digests"] = {
        **chain.as_dict(),
        "store_problems": against,
        "unpublished_seals": unpublished,
    }
    failed = _say_problems(chain.problems + against, "digest check")
    if not report.ok:
        print(f"envelope: audit log verification FAILED at {report.problem}", file=sys.stderr)
        failed = True
    failed = _say_problems(store_problems, "store check") or failed
    if report.unsealed:
        first = report.last_sealed + 1
        print(
            f"envelope: WARNING: records {first}..{report.records} are above the last seal: "
            "the hash chain alone cannot authenticate them (a KMS process stopped before "
            "sealing them, or someone who can write the store appended them); check them "
            "(`envelope audit tail`), then `envelope audit seal` vouches for them",
            file=sys.stderr,
        )
    if unpublished:
        print(
            f"envelope: note: seals {unpublished[0]}..{unpublished[-1]} are not yet published "
            f"to {chain.location} (run `envelope audit seal` to publish them)",
            file=sys.stderr,
        )
    out["ok"] = not failed
    emit(args, out, "AuditVerify")
    return EXIT_TAMPERED if failed else 0


def _say_problems(problems: list[str], what: str) -> bool:
    for problem in problems:
        print(f"envelope: ALARM: {what} FAILED: {problem}", file=sys.stderr)
    return bool(problems)


def _verify_command(args: argparse.Namespace) -> int:
    """With a store under the home: everything. Without one: the digests alone (--digests)."""
    home = default_home(getattr(args, "home", None))
    if (home / STORE_NAME).exists():
        # a tampered store (a sealed row replaced) fails verification: exit 1, not a usage error
        return _run(_verify, tampered=EXIT_TAMPERED, tampered_what="store check FAILED: ")(args)
    # A store's companions without it: the store was deleted (its root key left behind), which
    # a check of the digests alone must not pass (it exited 0, and a cron job saw no alarm).
    companions = (ROOT_KEY_NAME, f"{STORE_NAME}-wal", f"{STORE_NAME}-shm")
    left = [name for name in companions if os.path.lexists(home / name)]
    if left:
        print(
            f"envelope: ALARM: store check FAILED: no store at {home / STORE_NAME}, but its "
            f"{', '.join(left)} remain there: the store was deleted; restore it from a backup",
            file=sys.stderr,
        )
    if not getattr(args, "digests", None):
        if left:
            return EXIT_TAMPERED
        print(
            f"envelope: no KMS store at {home / STORE_NAME}; give --home, or --digests PATH to "
            "verify a copy of the digests alone",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        chain = verify_chain(DigestLocation(args.digests), expected_fingerprint=args.fingerprint)
    except StoreError as e:
        print(f"envelope: {e}", file=sys.stderr)
        return EXIT_USAGE
    failed = _say_problems(chain.problems, "digest check") or bool(left)
    out: dict[str, object] = {"ok": not failed, "store": None, "digests": chain.as_dict()}
    if chain.latest is None and not failed:
        print(f"envelope: note: no digests in {chain.location}", file=sys.stderr)
    print(
        f"envelope: note: no store at {home / STORE_NAME}: only the digest chain was verified",
        file=sys.stderr,
    )
    emit(args, out, "AuditVerify")
    return EXIT_TAMPERED if failed else 0


def _tail(args: argparse.Namespace, svc: KeyService) -> int:
    svc.seal_on_close = False  # reading the log writes nothing to it
    records = _denied(svc, args.n) if args.denied else svc.audit_tail(args.n)
    emit(args, {"Records": records}, "AuditTail")
    return 0


#: The columns `audit tail --denied` shows: who, from which account, what, on which key, and
#: why it was refused (the full records stay one `audit tail` away).
DENIED_COLUMNS = (
    "seq",
    "time",
    "principal",
    "account",
    "operation",
    "key_id",
    "decision",
    "matched",
    "error_code",
    "reason",
)


def _denied(svc: KeyService, n: int) -> list[dict[str, object]]:
    """The last `n` denied records, oldest first: read back through the log in growing
    windows until `n` are found or the log's start is reached."""
    window = max(n, 1) * 8
    while True:
        records = svc.audit_tail(window)
        denied = [r for r in records if r.get("decision") == "denied"]
        if len(denied) >= n or len(records) < window:
            return [{c: r.get(c) for c in DENIED_COLUMNS} for r in denied[-n:] if n > 0]
        window *= 8


def _seal(args: argparse.Namespace, svc: KeyService) -> int:
    report = svc.verify_audit_log()
    if not report.ok:  # never sign over a log found tampered with
        svc.seal_on_close = False
        print(
            f"envelope: refusing to seal: audit log verification FAILED at {report.problem} "
            "(`envelope audit verify` says more)",
            file=sys.stderr,
        )
        return EXIT_TAMPERED
    seq = svc.seal_audit_log()
    emit(args, {"SealedThrough": seq}, "AuditSeal")
    return 0


def _administrator(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """The audit commands read and seal the log with the store's root key, as its
    administrator: no principal's policies apply, so an explicit ``--as`` is refused rather
    than silently ignored ($ENVELOPE_PRINCIPAL, a shell-wide default, is not an error)."""

    def run(args: argparse.Namespace) -> int:
        if getattr(args, "setting_sources", {}).get("principal") == "flag":
            print(
                "envelope: --as does not apply to audit commands: they read the log with the "
                "store's root key, as its administrator, whatever principal is named",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return handler(args)

    return run


def _fingerprint(text: str) -> str:
    """A key fingerprint as `envelope audit verify` prints it: ``sha256:`` and 64 hex digits
    (case-insensitive). Anything else is a usage error, not a key that every digest fails."""
    if not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a key fingerprint (sha256: and 64 hex digits, as `envelope audit "
            "verify` prints it)"
        )
    return text.lower()


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``audit`` command tree to the main parser's subcommands."""
    audit = subparsers.add_parser(
        "audit", help="verify and read the KMS audit log", description=__doc__.split("\n\n")[0]
    )
    add_store_arguments(audit, principal=False)
    sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "verify",
        help="check the hash chain, seals, store rows and digests (exit 1 if tampered)",
        description="Check the audit hash chain and seals, every key row, and the store against "
        "the signed digest chain (--digests, default beside the home). Without a store under "
        "--home, only the digests given with --digests are verified.",
    )
    add_store_arguments(p, principal=False)
    p.add_argument(
        "--fingerprint",
        metavar="sha256:HEX",
        type=_fingerprint,
        default=None,
        help="the audit key fingerprint every digest must carry (default: trust the first "
        "digest's key and print it)",
    )
    # read-only: a verifier neither upgrades the store (which would re-authenticate its rows
    # as they are) nor publishes its pending digests
    p.set_defaults(handler=_administrator(_verify_command), read_only=True)
    p = sub.add_parser("tail", help="show the last records")
    add_store_arguments(p, principal=False)
    p.add_argument("-n", type=positive_int, default=20, help="how many records (20)")
    p.add_argument(
        "--denied",
        action="store_true",
        help="only the calls the access policies refused, with the account, decision, "
        "matched statement and reason (the last N of them)",
    )
    # read-only where the store cannot be written (a read-only copy, a mount): reading the
    # log writes nothing; a writable store of an older schema is upgraded first, as before
    p.set_defaults(handler=_administrator(_run(_tail)), read_only="if-unwritable")
    p = sub.add_parser(
        "seal", help="seal the log up to its last record now and publish pending digests"
    )
    add_store_arguments(p, principal=False)
    p.set_defaults(handler=_administrator(_run(_seal)))
