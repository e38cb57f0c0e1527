"""Mutual TLS for `envelope xks serve`: client certificates from one CA, with one subject.

The specification: "If the XKS proxy supports mTLS, it MUST allow the customer to configure both
the subject name and the root certificate authority (CA) for the client certificate. The XKS
proxy MUST terminate the TLS handshake if the client presents a certificate containing a
different subject name or chained to a different certificate authority." AWS KMS presents a
certificate whose common name is ``cks.kms.<Region>.amazonaws.com``.

The CA is OpenSSL's check (uvicorn's ``ssl_ca_certs`` with ``CERT_REQUIRED``): a certificate
from another CA, or none, fails the handshake itself. Python's `ssl` has no hook into the
handshake for the subject, so `MutualTlsHTTPProtocol` checks the common name as soon as the
handshake completes, before a byte of HTTP is read, and aborts the connection when it differs.
The subject comes from ``$ENVELOPE_XKS_CLIENT_SUBJECT`` (set by `envelope.xks.run.serve` for
its workers; empty: any subject from the CA).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Final

from ..server.protocol import CorkedHTTPProtocol

__all__ = ("ENV_CLIENT_SUBJECT", "MutualTlsHTTPProtocol", "common_names")

ENV_CLIENT_SUBJECT: Final = "ENVELOPE_XKS_CLIENT_SUBJECT"

_log = logging.getLogger("envelope.xks")


def common_names(cert: dict[str, Any] | None) -> list[str]:
    """The subject common names of a certificate as `SSLSocket.getpeercert` gives it."""
    names: list[str] = []
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(str(value))
    return names


class MutualTlsHTTPProtocol(CorkedHTTPProtocol):
    """`CorkedHTTPProtocol` that first checks the client certificate's subject."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # (so that connection_lost finds its state)
        wanted = os.environ.get(ENV_CLIENT_SUBJECT, "")
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        names = common_names(cert)
        if cert is None or (wanted and names != [wanted]):
            peer = transport.get_extra_info("peername")
            _log.warning(
                "refused a TLS client %s: its certificate's subject CN %s is not %r",
                peer[0] if peer else "?",
                names or "(none)",
                wanted,
            )
            transport.abort()
