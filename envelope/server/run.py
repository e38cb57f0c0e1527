"""Starting `envelope serve`: one store, N uvicorn worker processes, SigV4 in front.

`serve(settings)` opens the store once in the parent (creating or migrating it, and failing fast
on a wrong root key) and closes it, then runs uvicorn with the import string
``envelope.server.run:create_app`` as a factory: each worker process calls `create_app`, which
reads the settings from ``$ENVELOPE_SERVER_SETTINGS`` and opens its own `KeyService` on the
shared store (SQLite serialises writers across processes). Request quotas are for the whole
server, so each worker enforces its share (the rate divided by the number of workers).

The server never starts without authentication: `create_app` needs
`envelope.server.auth.Authenticator` (AWS Signature Version 4 against the store's access keys).
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from .._ratelimit import RateQuota
from .._regions import aws_kms_regions
from .._serving import base_options, check_tls, serve_with, set_header_timeout, worker_start
from ..errors import ConfigurationError
from ..service import KeyService, open_service, store_path
from ..service.errors import StoreError
from ..service.rootkey import FileRootKey, PassphraseRootKey, Pkcs11RootKey, RootKeyProvider
from .app import Authenticate, KmsApp
from .config import ENV_SETTINGS, ServerSettings

__all__ = ("authenticator_for", "create_app", "open_store", "serve")

_ACCESS = logging.getLogger("envelope.server")


def _root(settings: ServerSettings) -> RootKeyProvider | None:
    if settings.root_key.startswith("pkcs11:"):
        # the root key in an HSM; its PIN from the URI's pin-source or $ENVELOPE_HSM_PIN
        return Pkcs11RootKey(settings.root_key)
    if settings.root_key == "passphrase":
        passphrase = os.environ.get("ENVELOPE_KMS_PASSPHRASE")
        if not passphrase:
            raise ConfigurationError(
                'root_key = "passphrase" needs the passphrase in $ENVELOPE_KMS_PASSPHRASE'
            )
        return PassphraseRootKey(passphrase)
    if settings.root_key_file is not None:
        return FileRootKey(settings.root_key_file)
    return None  # open_service's default: <home>/root.key (or $ENVELOPE_KMS_PASSPHRASE)


#: The folder of the quota buckets the workers of one server share (set by `serve`).
ENV_QUOTA_DIR = "ENVELOPE_SERVER_QUOTA_DIR"


def open_store(settings: ServerSettings, *, share: int = 1) -> KeyService:
    """This process's service on the configured store, with the quotas: one rate for all the
    workers when they share buckets (`ENV_QUOTA_DIR`), else this process's share of it."""
    shared = (os.environ.get(ENV_QUOTA_DIR) or None) if settings.workers > 1 else None
    if shared is not None and not os.path.isdir(shared):
        shared = None  # its folder is gone (removed by hand): this worker's share, alone
    if shared is not None:
        share = 1
    quota = (
        RateQuota(
            {name: rate / share for name, rate in settings.quotas.items()}, shared_dir=shared
        )
        if settings.quotas
        else None
    )
    path = store_path(settings.home)
    if not path.exists() and (path.parent.is_dir() or not path.parent.exists()):
        # A server on a new, empty store has no access key that could sign a request: a
        # mistyped --home served an empty KMS, and left a store behind (review)
        raise ConfigurationError(
            f"no embedded KMS store at {str(path)!r} (check --home, [store] home or "
            "$ENVELOPE_HOME; `envelope iam create-user` or `envelope keys create` starts one, "
            "docs/server.md)"
        )
    try:
        return open_service(
            settings.home, region=settings.region, root=_root(settings), quota=quota
        )
    except StoreError as e:  # a wrong root key, a home that is a file, a corrupt store
        raise ConfigurationError(str(e)) from None


def authenticator_for(service: KeyService) -> Authenticate:
    """The SigV4 authenticator over `service`'s access keys; refuses to run without one."""
    fn: Authenticate = _authenticator(service).verify
    return fn


def _authenticator(service: KeyService) -> Any:
    """The `envelope.server.auth.Authenticator` over `service`, for every AWS Region."""
    try:
        auth = importlib.import_module("envelope.server.auth")
    except ImportError:
        raise ConfigurationError(
            "envelope serve needs AWS Signature Version 4 authentication "
            "(envelope.server.auth), which this build does not have: refusing to serve "
            "unauthenticated requests"
        ) from None
    # every AWS Region, as AWS's Regional endpoints: a client signs for the Region it is
    # configured for (multi-Region replicas are reached that way)
    # every AWS Region, and every Region the store already holds keys in (a replica an
    # earlier release made in a Region AWS does not have stays reachable); never any name
    return auth.Authenticator(
        service, regions=(aws_kms_regions() or frozenset()) | service.store_regions()
    )


def _configure_logging(level: str) -> None:
    if not _ACCESS.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _ACCESS.addHandler(handler)
        _ACCESS.propagate = False
    _ACCESS.setLevel(level.upper())


def create_app() -> KmsApp:
    """The worker's application (uvicorn factory): settings from the environment."""
    text = os.environ.get(ENV_SETTINGS)
    settings = ServerSettings.from_env(text) if text else ServerSettings()
    _configure_logging(settings.log_level)
    with worker_start("envelope serve"):  # (its store gone since: the server stops)
        service = open_store(settings, share=settings.workers)
    try:
        authenticator = _authenticator(service)
        set_header_timeout(settings.header_timeout_seconds)
        return KmsApp(
            service,
            authenticator.verify,
            max_request_bytes=settings.max_request_bytes,
            body_timeout=settings.body_timeout_seconds,
            check_headers=authenticator.check_headers,
        )
    except BaseException:
        service.close()
        raise


def _loopback(host: str) -> bool:
    """Whether `host` (an address or a name) binds to loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: where it resolves is not known here
        return False


def serve(settings: ServerSettings) -> None:
    """Run the server until SIGTERM/SIGINT, finishing in-flight requests first."""
    # fail before binding: the TLS files load (before a new store and root key are made for
    # a server that cannot start), the store opens (created or migrated once, here) and auth
    # exists
    options = base_options(settings)
    check_tls(options)
    if settings.tls_cert is None and not _loopback(settings.host):
        _configure_logging(settings.log_level)
        _ACCESS.warning(
            "envelope serve: serving plain HTTP on %s, beyond loopback: anyone on the path can "
            "read every response (data keys in plaintext) and replay signed requests; set "
            "[tls] (docs/server.md), or put a TLS-terminating proxy on this host",
            settings.host,
        )
    service = open_store(settings)
    try:
        authenticator_for(service)
    finally:
        service.close()
    os.environ[ENV_SETTINGS] = settings.to_env()
    quota_dir: str | None = None
    if settings.quotas and settings.workers > 1:
        # the workers' buckets in files they share: one rate for the whole server (a client's
        # keep-alive connection stays on one worker, which held it to rate / workers)
        # beside the store (its folder exists, is the server's, and no /tmp cleaner ages it)
        quota_dir = tempfile.mkdtemp(
            prefix=".envelope-quotas-", dir=store_path(settings.home).parent
        )
        os.environ[ENV_QUOTA_DIR] = quota_dir
    try:
        serve_with(
            "envelope.server.run:create_app", options, "envelope serve", "envelope-metrics-"
        )
    finally:
        if quota_dir is not None:
            shutil.rmtree(quota_dir, ignore_errors=True)
            os.environ.pop(ENV_QUOTA_DIR, None)
