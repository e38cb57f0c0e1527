"""The `envelope` console script: `envelope.cli.main.run`, behind an import guard.

Most of a small command's start-up is importing its modules, before `main` has put its signal
handlers in place: Ctrl-C in that first tenth of a second printed a Python traceback (review).
Here it is what it is anywhere else, a quiet exit 130.
"""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from .main import run as main_run
    except KeyboardInterrupt:
        sys.stderr.write("envelope: interrupted\n")
        raise SystemExit(130) from None
    main_run()
