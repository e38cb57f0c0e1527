"""`envelope xks ...`: an AWS KMS External Key Store (XKS) proxy in front of a PKCS#11 token.

    envelope xks serve --config configs/xks-proxy.toml [--host H] [--port P] [--workers N]
                       [--tls-cert PEM --tls-key PEM] [--log-level LEVEL]
    envelope xks create-key LABEL --config FILE      an AES-256 key in the token, for XKS use
    envelope xks keys --config FILE                  the token's secret keys and their use
    envelope xks new-credential [--path-prefix /p]   a SigV4 credential for a key store

The external key id AWS KMS is given (CreateKey's XksKeyId) is the key's label. `serve` runs
until SIGTERM or SIGINT, then finishes the requests in flight. docs/xks.md.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ("register",)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    xks = sub.add_parser(
        "xks",
        help="an AWS KMS external key store (XKS) proxy over a PKCS#11 token",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    cmds = xks.add_subparsers(dest="xks_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("serve", help="serve the XKS proxy API (HTTPS, SigV4)")
    p.add_argument("--config", metavar="TOML", required=True, help="configs/xks-proxy.toml")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8443)")
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument("--tls-cert", metavar="PEM", help="TLS certificate chain (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="TLS private key (with --tls-cert)")
    p.add_argument(
        "--log-level", choices=("critical", "error", "warning", "info", "debug"), default=None
    )
    p.set_defaults(handler=_serve)

    from ._output import add_output_arguments

    p = cmds.add_parser("create-key", help="create an AES-256 key in the token for XKS use")
    p.add_argument("label", metavar="LABEL", help="the key's label: its XKS external key id")
    p.add_argument("--config", metavar="TOML", required=True, help="the proxy's config file")
    add_output_arguments(p)
    p.set_defaults(handler=_create_key)

    p = cmds.add_parser("keys", help="list the token's secret keys")
    p.add_argument("--config", metavar="TOML", required=True, help="the proxy's config file")
    add_output_arguments(p)
    p.set_defaults(handler=_keys)

    p = cmds.add_parser(
        "new-credential",
        help="make a random SigV4 credential (access key id and secret) for a key store",
    )
    p.add_argument(
        "--path-prefix",
        default="",
        metavar="PATH",
        help="the key store's path prefix (printed as XksProxyUriPath, AWS's proxy "
        "configuration file format)",
    )
    add_output_arguments(p)
    p.set_defaults(handler=_new_credential)


def _serve(args: argparse.Namespace) -> int:
    from ..xks.config import load_settings
    from ..xks.run import serve

    overrides = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "log_level": args.log_level,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for name in ("tls_cert", "tls_key"):
        if name in overrides:
            import os

            overrides[name] = os.path.abspath(overrides[name])
    settings = load_settings(args.config).with_overrides(**overrides)
    serve(settings, overrides)
    return 0


def _describe(token: Any, label: str) -> dict[str, Any]:
    attrs = token.key_attributes(label)
    length = attrs.get("value_len")
    usage = [
        name.upper()
        for name in ("encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "derive")
        if attrs.get(name) is True
    ]
    return {
        "KeyId": label,
        "KeySpec": f"{attrs.get('key_type')}_{int(length) * 8}"
        if isinstance(length, int)
        else str(attrs.get("key_type")),
        "KeyUsage": usage,
        "Extractable": bool(attrs.get("extractable")),
        "Sensitive": bool(attrs.get("sensitive")),
    }


def _create_key(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..xks.config import load_settings
    from ..xks.run import open_token
    from ..xks.spec import SpecViolation, check_key_id
    from ._output import emit

    try:
        check_key_id(args.label)
    except SpecViolation as e:
        raise ConfigurationError(f"LABEL {e.message} (it is the key's XKS key id)") from None
    token = open_token(load_settings(args.config))
    token.create_aes_key(args.label)
    emit(args, {"Key": _describe(token, args.label)}, "CreateKey")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from ..xks.config import load_settings
    from ..xks.run import open_token
    from ._output import emit

    token = open_token(load_settings(args.config))
    emit(args, {"Keys": [_describe(token, label) for label in sorted(token.list_keys())]}, "Keys")
    return 0


def _new_credential(args: argparse.Namespace) -> int:
    import base64
    import secrets

    from ..errors import ConfigurationError
    from ..xks.spec import API_PATH, SpecViolation, split_uri_path
    from ._output import emit

    uri_path = args.path_prefix.rstrip("/") + API_PATH
    try:
        split_uri_path(uri_path)
    except SpecViolation as e:
        raise ConfigurationError(f"--path-prefix: {e.message}") from None
    # Appendix A: 20-30 characters of A-Z and 2-7; a secret of 256 random bits in Base64
    key_id = base64.b32encode(secrets.token_bytes(15)).decode("ascii")  # 24 characters
    secret = base64.b64encode(secrets.token_bytes(32)).decode("ascii")  # 44 characters
    emit(
        args,
        {
            "XksProxyUriPath": uri_path,
            "XksProxyAuthenticationCredential": {
                "AccessKeyId": key_id,
                "RawSecretAccessKey": secret,
            },
        },
        "XksProxyConfiguration",
    )
    return 0
