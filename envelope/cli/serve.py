"""`envelope serve`: the embedded KMS over HTTP in the AWS KMS JSON protocol.

    envelope serve [--config configs/kms-server.toml] [--host 127.0.0.1] [--port 8080]
                   [--workers N] [--home DIR] [--tls-cert PEM --tls-key PEM]

Flags override the config file; the config file overrides the defaults (loopback, port 8080,
one worker, ``$ENVELOPE_HOME``). Every request must be signed with AWS Signature Version 4 by an
access key of the store (`envelope iam create-access-key`). Runs until SIGTERM or SIGINT, then
finishes the requests in flight and exits 0. docs/server.md.
"""

from __future__ import annotations

import argparse

__all__ = ("register",)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the embedded KMS over HTTP (AWS KMS JSON protocol, SigV4)",
        description="Serve the embedded KMS to AWS clients (boto3, the AWS CLI, SDKs).",
    )
    p.add_argument("--config", metavar="TOML", help="server config file (configs/kms-server.toml)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8080)")
    p.add_argument("--workers", type=int, help="worker processes sharing the store (default 1)")
    p.add_argument("--home", metavar="DIR", help="embedded KMS home (default $ENVELOPE_HOME)")
    p.add_argument("--region", help="the KMS Region served (default $ENVELOPE_REGION, us-east-1)")
    p.add_argument("--tls-cert", metavar="PEM", help="TLS certificate chain (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="TLS private key (with --tls-cert)")
    p.add_argument(
        "--log-level", choices=("critical", "error", "warning", "info", "debug"), default=None
    )
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server.config import load_settings
    from ..server.run import serve

    settings = load_settings(args.config).with_overrides(
        host=args.host,
        port=args.port,
        workers=args.workers,
        home=args.home,
        region=args.region,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        log_level=args.log_level,
    )
    serve(settings)
    return 0
