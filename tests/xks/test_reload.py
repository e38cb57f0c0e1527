"""Credential rotation without a restart (the specification's SHOULD): a changed config file's
key stores take effect within about a second; a file that does not load changes nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envelope.xks.errors import XksProxyError

from .conftest import KEY_A2, MD, SECRET_A2, Proxy, start_proxy

NEW_KEY = "NEWROTATEDKEY234567ABCDEF"
NEW_SECRET = "n3wS3cr3tn3wS3cr3tn3wS3cr3tn3wS3cr3tn3wS3cr="


@pytest.fixture(scope="module")
def proxy(xks_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    p = start_proxy(tmp_path_factory.mktemp("reload"))
    try:
        yield p
    finally:
        p.stop()


def rewrite(path: Path, change: Callable[[str], str]) -> None:
    text = change(path.read_text())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def works(proxy: Proxy, key: str, secret: str) -> bool:
    with proxy.client(key=key, secret=secret) as client:
        try:
            client.key_metadata("k1", MD)
            return True
        except XksProxyError as e:
            assert e.error_name == "AuthenticationFailedException"
            return False


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_a_credential_is_replaced_without_a_restart(proxy: Proxy) -> None:
    config = proxy.folder / "xks-proxy.toml"
    assert works(proxy, KEY_A2, SECRET_A2) and not works(proxy, NEW_KEY, NEW_SECRET)
    pid = proxy.proc.pid
    rewrite(config, lambda t: t.replace(KEY_A2, NEW_KEY).replace(SECRET_A2, NEW_SECRET))
    assert eventually(lambda: works(proxy, NEW_KEY, NEW_SECRET))
    assert not works(proxy, KEY_A2, SECRET_A2)  # the old one is gone
    assert proxy.proc.pid == pid and proxy.proc.poll() is None
    assert "key stores reloaded from" in proxy.log.read_text()

    # a file that does not load changes nothing
    rewrite(config, lambda t: t.replace("[[keystore]]", "[[keystore]]\nnonsense = 1", 1))
    # (the file is looked at when requests come: each check makes one)
    assert eventually(
        lambda: works(proxy, NEW_KEY, NEW_SECRET) and "does not load" in proxy.log.read_text()
    )
    assert works(proxy, NEW_KEY, NEW_SECRET) and not works(proxy, KEY_A2, SECRET_A2)
