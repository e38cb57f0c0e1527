"""`envelope` command line: the only place that prints or exits.

    envelope keygen KEYFILE
    envelope encrypt IN OUT --key-file KEYFILE      (IN/OUT may be '-' for stdin/stdout)
    envelope decrypt IN OUT --key-file KEYFILE
    envelope demo

Exit codes: 0 success, 1 the object is invalid (authentication, truncation, bad header) or a
lake job had failed objects, 2 usage or configuration error, 3 KMS failure, 4 context
mismatch, 5 an I/O error (disk full, broken pipe, ...), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import (
    ConfigurationError,
    ContextMismatchError,
    EnvelopeError,
    InvalidObjectError,
    KmsError,
)
from ._common import EXIT_CONTEXT, EXIT_INVALID, EXIT_IO, EXIT_KMS, EXIT_USAGE, err
from .crypt import add_crypt_commands
from .demo import add_demo_command

__all__ = ("build_parser", "main")

#: Optional command groups contributed by other parts of the package (imported lazily so a
#: missing optional part never breaks the core commands).
_PLUGGABLE = ("envelope.cli.keys", "envelope.cli.audit", "envelope.cli.lake")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="envelope",
        description="High-throughput envelope encryption of data at rest.",
    )
    parser.add_argument("--version", action="version", version=f"envelope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_crypt_commands(sub)
    add_demo_command(sub)
    for name in _PLUGGABLE:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        err("interrupted; no partial file was left under a target name")
        return 130
    except ContextMismatchError as e:
        err(str(e))
        return EXIT_CONTEXT
    except InvalidObjectError as e:
        err(f"{type(e).__name__}: {e}")
        return EXIT_INVALID
    except KmsError as e:
        err(f"{type(e).__name__}: {e}")
        return EXIT_KMS
    except (ConfigurationError, EnvelopeError) as e:
        err(str(e))
        return EXIT_USAGE
    except OSError as e:  # disk full, broken pipe, permission: a message, not a traceback
        err(f"I/O error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
        return EXIT_IO


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
