"""Mutual TLS on `envelope xks serve` (the specification's SHOULD): the client certificate
must chain to the configured CA and carry the configured subject (AWS KMS's
``cks.kms.<Region>.amazonaws.com``); `XksClient` presents one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from envelope.xks.errors import XksTransportError

from .conftest import MD, Proxy, start_proxy
from .tls import Ca, make_ca, make_client_cert

SUBJECT = "cks.kms.us-east-1.amazonaws.com"


@pytest.fixture(scope="module")
def mtls(xks_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, Ca]]:
    folder = tmp_path_factory.mktemp("mtls")
    client_ca = make_ca(folder, "client-ca")
    good = make_client_cert(folder, client_ca, "kms-client", SUBJECT)
    p = start_proxy(
        folder,
        client_cert=good,
        tls=f'client_ca = "{client_ca.cert_file}"\nclient_subject = "{SUBJECT}"',
    )
    try:
        yield p, client_ca
    finally:
        p.stop()


def test_the_right_client_certificate_is_served(mtls: tuple[Proxy, Ca]) -> None:
    proxy, _ = mtls
    with proxy.client() as client:
        ct = client.encrypt("k1", b"data key", b"ctx", MD)
        assert client.decrypt("k1", ct, b"ctx", MD) == b"data key"


def test_no_client_certificate_is_refused(mtls: tuple[Proxy, Ca]) -> None:
    proxy, _ = mtls
    with proxy.client(client_cert=None) as client:
        with pytest.raises(XksTransportError):  # the proxy closes the connection: unreachable
            client.health(MD)


def test_another_subject_is_refused(mtls: tuple[Proxy, Ca]) -> None:
    proxy, client_ca = mtls
    other = make_client_cert(proxy.folder, client_ca, "wrong-cn", "cks.kms.evil.example")
    with proxy.client(client_cert=other) as client:
        with pytest.raises(XksTransportError):  # the proxy closes the connection: unreachable
            client.health(MD)
    assert "refused a TLS client" in proxy.log.read_text()


def test_another_ca_is_refused(mtls: tuple[Proxy, Ca]) -> None:
    proxy, _ = mtls
    rogue_ca = make_ca(proxy.folder, "rogue-client-ca")
    rogue = make_client_cert(proxy.folder, rogue_ca, "rogue-client", SUBJECT)
    with proxy.client(client_cert=rogue) as client:
        with pytest.raises(XksTransportError):  # the proxy closes the connection: unreachable
            client.health(MD)
