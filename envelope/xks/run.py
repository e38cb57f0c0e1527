"""Starting `envelope xks serve`: the XKS proxy on uvicorn, N worker processes, TLS.

`serve(settings)` checks everything that can be checked before binding (the key stores, the
TLS files, the token: module, label and PIN, by opening it once; it makes the health check's
test key if the token lacks it), then runs uvicorn with the
factory ``envelope.xks.run:create_app``: each worker process reads the same config file again
(its path travels in ``$ENVELOPE_XKS_SETTINGS``, the secrets never do), opens the token
(`envelope.pkcs11.Token`: one login per process) and serves. A key store's request quota is for
the whole proxy, so each worker enforces its share.

HTTP is uvicorn's httptools parser behind `envelope.server.protocol.CorkedHTTPProtocol` (one
socket write per answer), as `envelope serve` runs. TLS: 1.2 or later with the cipher suites
the specification lists (`TLS12_CIPHERS`; TLS 1.3's suites are OpenSSL's defaults, which
include TLS_AES_256_GCM_SHA384 and TLS_CHACHA20_POLY1305_SHA256).
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
from collections.abc import Mapping
from typing import Any, Final

from .._serving import base_options, serve_with, set_header_timeout, worker_start
from .app import XksProxyApp
from .config import ENV_CONFIG, XksSettings, load_settings
from .protocol import ENV_CLIENT_SUBJECT

__all__ = ("TLS12_CIPHERS", "create_app", "open_token", "serve")

#: The TLS 1.2 suites the specification names (AES-256-GCM with ECDHE), and ChaCha20's.
TLS12_CIPHERS: Final = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

_LOG = logging.getLogger("envelope.xks")


def open_token(settings: XksSettings) -> Any:
    """This process's `envelope.pkcs11.Token` for the configured module, label and PIN."""
    from ..pkcs11 import Token, TokenConfig

    settings.check_token()
    return Token.open(
        TokenConfig(
            module=settings.module,
            token_label=settings.token_label,
            pin=settings.pin,
            pool_size=settings.pool_size,
        )
    )


def _configure_logging(level: str) -> None:
    for name in ("envelope.xks", "envelope.xks.access"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
        logger.setLevel(level.upper())


def create_app() -> XksProxyApp:
    """The worker's application (uvicorn factory): settings from the config file named in
    the environment."""
    text = os.environ.get(ENV_CONFIG)
    settings = XksSettings.from_env(text) if text else load_settings(None)
    _configure_logging(settings.log_level)
    set_header_timeout(settings.header_timeout_seconds)
    with worker_start("envelope xks serve"):  # (its token gone since: the proxy stops)
        token = open_token(settings)
    return XksProxyApp(settings, token, share=settings.workers, close=token.close)


def serve(settings: XksSettings, overrides: Mapping[str, Any] | None = None) -> None:
    """Run the proxy until SIGTERM/SIGINT, finishing in-flight requests first. `overrides`:
    the command line's changes to the config file (workers apply them too)."""
    settings.check_serving()
    _configure_logging(settings.log_level)
    token = open_token(settings)  # a wrong module, label or PIN fails here, before binding
    token.check()
    if settings.health_key is not None and not token.has_key(settings.health_key):
        # "The XKS Proxy SHOULD create test keys in the external key manager" for its deep
        # health check: a key of its own, never one a KMS key uses
        token.create_aes_key(settings.health_key)
        _LOG.warning("envelope xks serve: made the health check's key %r", settings.health_key)
    if settings.tls_cert is None:
        _LOG.warning(
            "envelope xks serve: no [tls]: serving plain HTTP (AWS KMS only calls HTTPS; use "
            "this behind a TLS-terminating load balancer only)"
        )
    os.environ[ENV_CONFIG] = settings.to_env(overrides or {})
    if settings.workers > 1:
        token.close()  # each worker opens its own (one login per process)
    options = base_options(settings)
    options["date_header"] = False
    if settings.tls_cert is not None:
        options["ssl_ciphers"] = TLS12_CIPHERS
    if settings.tls_client_ca is not None:
        options["ssl_ca_certs"] = settings.tls_client_ca
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        options["http"] = "envelope.xks.protocol:MutualTlsHTTPProtocol"
        os.environ[ENV_CLIENT_SUBJECT] = settings.tls_client_subject or ""
    serve_with(
        "envelope.xks.run:create_app", options, "envelope xks serve", "envelope-xks-metrics-"
    )
