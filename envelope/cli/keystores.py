"""`envelope keystores ...`: custom key stores of the embedded KMS (an HSM, or an XKS proxy).

A CloudHSM-style key store keeps its keys in a PKCS#11 token: register the token once as an
HSM cluster (``register-cluster``), create the store with the token user's PIN, connect it, then
``envelope keys create --custom-key-store ID``. An external key store reaches an external key
manager through an XKS proxy (``envelope xks serve`` is one): create it with the proxy's
endpoint, path and SigV4 credential, connect it, then ``envelope keys create --custom-key-store
ID --xks-key-id EXTERNAL_KEY``. Secrets (the PIN, the proxy's secret access key) are read from
a file or the environment, never from the command line, and never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..service import KeyService
from ._common import EXIT_KMS
from ._output import emit
from .keys import _all_pages, _cmd, add_store_arguments

__all__ = ("register",)

#: Where the token user's PIN (AWS's KeyStorePassword) comes from when no file is given.
PASSWORD_ENV = "ENVELOPE_KEY_STORE_PASSWORD"
#: Where an XKS proxy's secret access key comes from when no file is given.
XKS_SECRET_ENV = "ENVELOPE_XKS_SECRET_ACCESS_KEY"


def _secret(path: str | None, env: str, what: str, *, required: bool) -> str | None:
    if path is not None:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        value = text.strip()
    else:
        value = os.environ.get(env, "").strip()
    if not value:
        if required:
            raise ValueError(f"{what}: give a file (or - for stdin), or set ${env}")
        return None
    return value


def _anchor(path: str | None) -> str | None:
    return None if path is None else Path(path).read_text(encoding="utf-8")


def _register_cluster(args: argparse.Namespace, svc: KeyService) -> None:
    resp = svc.register_hsm_cluster(
        module=args.module,
        token_label=args.token,
        cloud_hsm_cluster_id=args.cluster_id,
        trust_anchor_certificate=_anchor(args.trust_anchor),
    )
    emit(args, resp, "RegisterHsmCluster")


def _clusters(args: argparse.Namespace, svc: KeyService) -> None:
    emit(args, svc.describe_hsm_clusters(), "DescribeHsmClusters")


def _deregister_cluster(args: argparse.Namespace, svc: KeyService) -> None:
    svc.deregister_hsm_cluster(cloud_hsm_cluster_id=args.cluster_id)
    print(f"envelope: deregistered HSM cluster {args.cluster_id}", file=sys.stderr)


def _credential(args: argparse.Namespace, *, required: bool) -> dict[str, str] | None:
    secret = _secret(args.proxy_secret_file, XKS_SECRET_ENV, "the proxy secret", required=False)
    if args.proxy_access_key_id is None and secret is None:
        if required:
            raise ValueError("an external key store needs --proxy-access-key-id and its secret")
        return None
    if args.proxy_access_key_id is None or secret is None:
        raise ValueError(
            f"give both --proxy-access-key-id and the secret (--proxy-secret-file or "
            f"${XKS_SECRET_ENV})"
        )
    return {"AccessKeyId": args.proxy_access_key_id, "RawSecretAccessKey": secret}


def _create(args: argparse.Namespace, svc: KeyService) -> None:
    if args.type == "EXTERNAL_KEY_STORE":
        resp = svc.create_custom_key_store(
            custom_key_store_name=args.name,
            custom_key_store_type="EXTERNAL_KEY_STORE",
            xks_proxy_uri_endpoint=args.proxy_endpoint,
            xks_proxy_uri_path=args.proxy_path,
            xks_proxy_connectivity="PUBLIC_ENDPOINT",
            xks_proxy_authentication_credential=_credential(args, required=True),
        )
    else:
        resp = svc.create_custom_key_store(
            custom_key_store_name=args.name,
            custom_key_store_type="AWS_CLOUDHSM",
            cloud_hsm_cluster_id=args.cluster_id,
            key_store_password=_secret(
                args.password_file, PASSWORD_ENV, "the token user's PIN", required=True
            ),
            trust_anchor_certificate=_anchor(args.trust_anchor),
        )
    emit(args, resp, "CreateCustomKeyStore")


def _describe(args: argparse.Namespace, svc: KeyService) -> None:
    stores = _all_pages(
        lambda m: svc.describe_custom_key_stores(
            custom_key_store_id=args.store, custom_key_store_name=args.name, marker=m
        ),
        "CustomKeyStores",
    )
    emit(args, {"CustomKeyStores": stores}, "DescribeCustomKeyStores")


def _update(args: argparse.Namespace, svc: KeyService) -> None:
    svc.update_custom_key_store(
        custom_key_store_id=args.store,
        new_custom_key_store_name=args.name,
        # a --password-file given must hold a PIN (an empty one was dropped: "updated", and
        # the old PIN kept; review)
        key_store_password=_secret(
            args.password_file, PASSWORD_ENV, "the token user's PIN", required=True
        )
        if args.password_file is not None
        else None,
        cloud_hsm_cluster_id=args.cluster_id,
        xks_proxy_uri_endpoint=args.proxy_endpoint,
        xks_proxy_uri_path=args.proxy_path,
        # a secret file alone (rotating the secret) is not ignored: it needs its key id too
        xks_proxy_authentication_credential=_credential(args, required=False)
        if args.proxy_access_key_id is not None or args.proxy_secret_file is not None
        else None,
    )
    print(f"envelope: updated custom key store {args.store}", file=sys.stderr)


def _simple(opname: str, method: str, verb: str) -> object:
    def handler(args: argparse.Namespace, svc: KeyService) -> int:
        getattr(svc, method)(custom_key_store_id=args.store)
        if method != "connect_custom_key_store":
            print(f"envelope: {verb} custom key store {args.store}", file=sys.stderr)
            return 0
        # ConnectCustomKeyStore answers at once, as in AWS; the state says how it went
        (entry,) = svc.describe_custom_key_stores(custom_key_store_id=args.store)[
            "CustomKeyStores"
        ]
        emit(args, entry, opname)
        state = entry.get("ConnectionState")
        if state == "FAILED":
            print(
                f"envelope: custom key store {args.store} FAILED to connect: "
                f"{entry.get('ConnectionErrorCode', 'unknown error')}",
                file=sys.stderr,
            )
            return EXIT_KMS
        print(f"envelope: custom key store {args.store} is {state}", file=sys.stderr)
        return 0

    return handler


def _proxy_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("external key store (XKS proxy)")
    g.add_argument("--proxy-endpoint", metavar="URL", help="https://host[:port] of the proxy")
    g.add_argument("--proxy-path", metavar="PATH", help="the proxy's base path, e.g. /kms/xks/v1")
    g.add_argument("--proxy-access-key-id", metavar="ID", help="the SigV4 access key id")
    g.add_argument(
        "--proxy-secret-file",
        metavar="FILE",
        help=f"the SigV4 secret access key (- for stdin; default ${XKS_SECRET_ENV})",
    )


def _hsm_arguments(p: argparse.ArgumentParser, *, create: bool) -> None:
    g = p.add_argument_group("HSM key store (PKCS#11)")
    g.add_argument("--cluster-id", metavar="ID", help="the registered HSM cluster")
    g.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"the token user's PIN (- for stdin; default ${PASSWORD_ENV})",
    )
    if create:
        g.add_argument(
            "--trust-anchor",
            metavar="PEM",
            help="the cluster's trust anchor certificate (required by AWS; checked against "
            "the one registered with the cluster, if any)",
        )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``keystores`` command tree to the main parser's subcommands."""
    ks = subparsers.add_parser(
        "keystores",
        help="custom key stores: keys in an HSM (PKCS#11) or behind an XKS proxy",
        description=__doc__.split("\n\n")[0],
    )
    add_store_arguments(ks)
    sub = ks.add_subparsers(dest="keystores_command", metavar="COMMAND", required=True)

    p = _cmd(
        sub,
        "register-cluster",
        "register a PKCS#11 token as an HSM cluster (administrator only)",
        _register_cluster,
        key=False,
    )
    p.set_defaults(creates_store=True)
    p.add_argument("--module", required=True, metavar="PATH", help="the PKCS#11 module (.so)")
    p.add_argument("--token", required=True, metavar="LABEL", help="the token's label")
    p.add_argument("--cluster-id", default=None, help="cluster-... (default: a new id)")
    p.add_argument("--trust-anchor", metavar="PEM", default=None)

    _cmd(sub, "clusters", "the registered HSM clusters", _clusters, key=False)
    p = _cmd(
        sub, "deregister-cluster", "forget an unused HSM cluster", _deregister_cluster, key=False
    )
    p.add_argument("cluster_id", metavar="CLUSTER_ID")

    p = _cmd(sub, "create", "CreateCustomKeyStore", _create, key=False)
    p.set_defaults(creates_store=True)  # an external key store needs no cluster registered
    p.add_argument("name", metavar="NAME")
    p.add_argument("--type", default="AWS_CLOUDHSM", choices=["AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"])
    _hsm_arguments(p, create=True)
    _proxy_arguments(p)

    p = _cmd(sub, "describe", "DescribeCustomKeyStores", _describe, key=False)
    p.add_argument("store", metavar="ID", nargs="?", default=None)
    p.add_argument("--name", default=None, help="only the store with this name")

    p = _cmd(sub, "update", "UpdateCustomKeyStore", _update, key=False)
    p.add_argument("store", metavar="ID")
    p.add_argument("--name", default=None, help="a new name")
    _hsm_arguments(p, create=False)
    _proxy_arguments(p)

    for name, op, method, verb in (
        ("connect", "ConnectCustomKeyStore", "connect_custom_key_store", "connected"),
        ("disconnect", "DisconnectCustomKeyStore", "disconnect_custom_key_store", "disconnected"),
        ("delete", "DeleteCustomKeyStore", "delete_custom_key_store", "deleted"),
    ):
        p = _cmd(sub, name, op, _simple(op, method, verb), key=False)  # type: ignore[arg-type]
        p.add_argument("store", metavar="ID")
