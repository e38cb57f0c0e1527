"""Test-only launcher: `envelope serve` with an authenticator that trusts the caller's claim.

Used by tests/server only while SigV4 verification (`envelope.server.auth`) is not in the
build; the product has no such mode (`envelope serve` refuses to start without it). The claim is
the access key id of a SigV4 Authorization header: an IAM ARN (``arn:aws:iam::...:user/alice``)
is that principal; anything else, or no header, is the store's account root.

    python -m tests.server._trusting serve --home DIR --port N
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from envelope.server import run

ROOT = "arn:aws:iam::000000000000:root"


def claimed_principal(
    *,
    method: str,
    host: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
) -> str:
    for name, value in headers:
        if name.lower() == "authorization" and "Credential=" in value:
            credential = value.split("Credential=", 1)[1].split(",", 1)[0]
            access_key = credential.rsplit("/", 4)[0]
            if access_key.startswith("arn:"):
                return access_key
    return ROOT


def _trusting(service: object) -> run.Authenticate:
    return claimed_principal


if __name__ == "__main__":
    run.authenticator_for = _trusting  # type: ignore[assignment]
    from envelope.cli.main import main

    sys.exit(main(sys.argv[1:]))
