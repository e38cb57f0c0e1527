"""The proxy's ASGI app in this process, on the real SoftHSM2 token, for what a running proxy
cannot easily be made to show: a token that stops serving (UNAVAILABLE, InternalException), a
slow health check (DEGRADED), a missing health key, and the dependency timeout (503)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from envelope.errors import ConfigurationError
from envelope.pkcs11 import Token, TokenConfig
from envelope.pkcs11.errors import TokenDecryptError
from envelope.xks._sigv4 import Signer
from envelope.xks.app import XksProxyApp
from envelope.xks.config import Credential, KeyStoreSettings, XksSettings
from envelope.xks.spec import ERROR_STATUS
from tests.softhsm import SOFTHSM_MODULE

from .conftest import KEY_A1, KEY_B, MD, PIN, SECRET_A1, SECRET_B, TOKEN_LABEL

HOST = "xks.test:443"


def settings(**changes: Any) -> XksSettings:
    store = KeyStoreSettings("/s", (Credential(KEY_A1, SECRET_A1),))
    base = XksSettings(keystores=(store,), module=SOFTHSM_MODULE, token_label=TOKEN_LABEL, pin=PIN)
    return replace(base, **changes)


def call(
    app: XksProxyApp,
    path: str,
    doc: dict[str, Any],
    *,
    raw_path: bool = True,
    raw: bytes | None = None,
    key: str = KEY_A1,
    secret: str = SECRET_A1,
    region: str = "us-east-1",
) -> tuple[int, dict[str, Any]]:
    body = json.dumps(doc).encode() if raw is None else raw
    headers = Signer(key, secret, region).sign(HOST, path, body)
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-type", b"application/json"))
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": raw,
        "client": ("127.0.0.1", 1),
    }
    if not raw_path:  # optional in ASGI: the path is then what was signed
        del scope["raw_path"]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await app(scope, receive, send)
        await asyncio.sleep(0.01)  # let the batched access log flush

    asyncio.run(run())
    return sent[0]["status"], json.loads(sent[1]["body"])


def health(app: XksProxyApp) -> str:
    status, doc = call(
        app, "/s/kms/xks/v1/health", {"requestMetadata": MD.to_wire("GetHealthStatus")}
    )
    assert status == 200
    (entry,) = doc["ekmFleetDetails"]
    return str(entry["healthStatus"])


def encrypt(app: XksProxyApp, *, integrity: bool = False) -> tuple[int, dict[str, Any]]:
    doc = {
        "requestMetadata": MD.to_wire("Encrypt"),
        "plaintext": "AAAAAAAAAAAAAAAAAAAAAA==",
        "encryptionAlgorithm": "AES_GCM",
    }
    if integrity:  # a CDIV asked for: Appendix C's check decryption follows the encryption
        doc["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
    return call(app, "/s/kms/xks/v1/keys/k1/encrypt", doc)


@pytest.fixture
def token(xks_folder: Path) -> Token:
    return Token.open(TokenConfig(SOFTHSM_MODULE, TOKEN_LABEL, PIN))


def test_healthy(token: Token) -> None:
    app = XksProxyApp(settings(health_key="health"), token)
    assert health(app) == "ACTIVE"
    assert encrypt(app)[0] == 200
    status, doc = call(
        app,
        "/s/kms/xks/v1/keys/k1/metadata",
        {"requestMetadata": MD.to_wire("GetKeyMetadata")},
        raw_path=False,
    )
    assert (status, doc["keySpec"]) == (200, "AES_256")


def test_slower_than_degraded_ms_is_degraded(token: Token) -> None:
    assert health(XksProxyApp(settings(health_key="health", degraded_ms=0.001), token)) == (
        "DEGRADED"
    )


def test_a_missing_health_key_is_degraded(token: Token) -> None:
    app = XksProxyApp(settings(health_key="no-such-health-key"), token)
    assert health(app) == "DEGRADED"
    assert encrypt(app)[0] == 200  # the other keys still serve


def test_a_closed_token_is_unavailable_and_internal(xks_folder: Path) -> None:
    # a Token of its own (another pool size: another Token object), then closed
    own = Token.open(TokenConfig(SOFTHSM_MODULE, TOKEN_LABEL, PIN, pool_size=3))
    own.close()
    app = XksProxyApp(settings(), own)
    assert health(app) == "UNAVAILABLE"
    status, doc = encrypt(app)
    assert (status, doc["errorName"]) == (500, "InternalException")
    assert PIN not in json.dumps(doc)


def test_a_token_slower_than_the_dependency_timeout(token: Token) -> None:
    app = XksProxyApp(settings(dependency_timeout_ms=0.001), token)
    status, doc = encrypt(app)
    assert (status, doc["errorName"]) == (503, "DependencyTimeoutException")
    # the same app with time enough works through the worker thread
    app = XksProxyApp(settings(dependency_timeout_ms=10_000), token)
    assert encrypt(app)[0] == 200


def test_a_body_nested_past_the_parsers_stack_is_a_validation_error(token: Token) -> None:
    app = XksProxyApp(settings(), token)
    for raw in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000):
        status, doc = call(app, "/s/kms/xks/v1/keys/k1/encrypt", {}, raw=raw)
        assert (status, doc["errorName"]) == (400, "ValidationException")


def _junk(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [None, True, -1, 2**64, 1.5, "", "\ud800", "A" * 5000, "====", "AES_GCM"]
    if depth < 3:
        choices += [[_junk(rng, depth + 1)], {"k": _junk(rng, depth + 1)}]
    return rng.choice(choices)


def _mutated(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    for _ in range(rng.randrange(1, 4)):
        target = out
        if "requestMetadata" in out and rng.random() < 0.5:
            target = out["requestMetadata"] if isinstance(out["requestMetadata"], dict) else out
        name = rng.choice([*target, "extra"]) if target else "extra"
        if rng.random() < 0.2:
            target.pop(name, None)
        else:
            target[name] = _junk(rng)
    return out


@pytest.mark.parametrize("operation", ["health", "metadata", "encrypt", "decrypt"])
def test_malformed_requests_get_xks_errors(token: Token, operation: str) -> None:
    """Every proxy operation, sent its own request with members removed or replaced by values
    of the wrong type, size or encoding (signed, so they reach the operation): each answer is
    a success or an XKS error with the status the specification gives it, never an
    InternalException (fixed seed)."""
    app = XksProxyApp(settings(), token)
    base = {"requestMetadata": MD.to_wire("Encrypt")}
    paths = {
        "health": ("/s/kms/xks/v1/health", {"requestMetadata": MD.to_wire("GetHealthStatus")}),
        "metadata": ("/s/kms/xks/v1/keys/k1/metadata", {"requestMetadata": MD.to_wire("Encrypt")}),
        "encrypt": (
            "/s/kms/xks/v1/keys/k1/encrypt",
            base | {"plaintext": "AAAAAAAAAAAAAAAAAAAAAA==", "encryptionAlgorithm": "AES_GCM"},
        ),
    }
    status, sealed = call(app, *paths["encrypt"])
    assert status == 200
    paths["decrypt"] = (
        "/s/kms/xks/v1/keys/k1/decrypt",
        {"requestMetadata": MD.to_wire("Decrypt"), "encryptionAlgorithm": "AES_GCM"} | sealed,
    )
    path, doc = paths[operation]
    rng = random.Random(operation)
    for _ in range(25):
        status, answer = call(app, path, _mutated(rng, doc))
        if status != 200:
            name = answer.get("errorName")
            assert name != "InternalException" and ERROR_STATUS.get(name) == status, answer


@pytest.mark.parametrize("fault", ["does not open", "opens to other bytes"])
def test_a_token_whose_ciphertext_does_not_verify_is_internal(token: Token, fault: str) -> None:
    """Appendix C: with a CDIV asked for, the proxy decrypts what the token returned before
    answering. A token whose ciphertext does not give the plaintext back is the key manager's
    failure (500 InternalException), never a ciphertext returned, nor the caller's error."""

    class Faulty:
        def __getattr__(self, name: str) -> Any:
            return getattr(token, name)

        def decrypt(self, *args: Any, **kw: Any) -> bytes:
            if fault == "does not open":
                raise TokenDecryptError()
            return b"\x01" * 16

    app = XksProxyApp(settings(), Faulty())  # type: ignore[arg-type]
    status, answer = encrypt(app, integrity=True)
    assert (status, answer["errorName"]) == (500, "InternalException")
    assert "ciphertext" not in answer


def test_an_encryption_past_the_dependency_timeout_is_not_checked(token: Token) -> None:
    """The request gives up on a token slower than dependency_timeout_ms; the encryption it
    abandoned on the worker thread is not followed by Appendix C's check decryption (one more
    call on a token already too slow)."""
    import threading
    import time

    decrypted = threading.Event()
    finished = threading.Event()

    class Slow:
        def __getattr__(self, name: str) -> Any:
            return getattr(token, name)

        def encrypt(self, *args: Any, **kw: Any) -> tuple[bytes, bytes, bytes]:
            time.sleep(0.3)
            try:
                return token.encrypt(*args, **kw)
            finally:
                finished.set()

        def decrypt(self, *args: Any, **kw: Any) -> bytes:
            decrypted.set()
            return token.decrypt(*args, **kw)

    app = XksProxyApp(settings(dependency_timeout_ms=100), Slow())  # type: ignore[arg-type]
    status, answer = encrypt(app, integrity=True)
    assert (status, answer["errorName"]) == (503, "DependencyTimeoutException")
    assert finished.wait(5)
    time.sleep(0.2)  # time for a check decryption, had one followed
    assert not decrypted.is_set()


def _metadata(app: XksProxyApp, prefix: str, key_id: str, key: str, secret: str) -> tuple[int, str]:
    status, doc = call(
        app,
        f"{prefix}/kms/xks/v1/keys/{key_id}/metadata",
        {"requestMetadata": MD.to_wire("GetKeyMetadata")},
        key=key,
        secret=secret,
    )
    return status, str(doc.get("errorName", doc.get("keySpec")))


def test_a_store_reaches_neither_keys_another_store_lists_nor_the_health_key(token: Token) -> None:
    """The path prefix "provides a mechanism to support multiple isolated customers on the same
    XKS proxy", and the health check uses "a test key ... rather than a key associated with a
    KMS key" (the specification). A store without a keys list reached the keys another store
    listed, and the health key (review)."""
    listed = KeyStoreSettings("/a", (Credential(KEY_A1, SECRET_A1),), keys=frozenset({"k1"}))
    open_ = KeyStoreSettings("/b", (Credential(KEY_B, SECRET_B),))
    app = XksProxyApp(settings(keystores=(listed, open_), health_key="health"), token)
    assert _metadata(app, "/a", "k1", KEY_A1, SECRET_A1) == (200, "AES_256")
    assert _metadata(app, "/b", "k1", KEY_B, SECRET_B) == (404, "KeyNotFoundException")
    assert _metadata(app, "/b", "health", KEY_B, SECRET_B) == (404, "KeyNotFoundException")
    assert _metadata(app, "/b", "k-outside", KEY_B, SECRET_B) == (200, "AES_256")
    status, doc = call(
        app, "/b/kms/xks/v1/health", {}, key=KEY_B, secret=SECRET_B
    )  # the health check itself still uses it
    assert (status, doc["ekmFleetDetails"][0]["healthStatus"]) == (200, "ACTIVE")
    with pytest.raises(ConfigurationError, match="no KMS key's"):
        both = replace(listed, keys=frozenset({"k1", "health"}))
        settings(keystores=(both,), health_key="health")


def test_a_malformed_health_request_is_still_answered(token: Token) -> None:
    """The specification's error table gives ValidationException to "ALL except
    GetHealthStatus": a signed health request with a body that is no JSON, or without its
    requestMetadata, was a ValidationException (review)."""
    app = XksProxyApp(settings(health_key="health"), token)
    for raw in (b"not json", b"{}", b"[]"):
        status, doc = call(app, "/s/kms/xks/v1/health", {}, raw=raw)
        assert status == 200 and doc["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE", doc


def test_a_proxy_takes_the_signatures_of_the_regions_it_is_given(token: Token) -> None:
    """The credential scope names the Region of the KMS calling the proxy (Appendix A): one
    proxy may serve the stores of several Regions ([server] region as a list)."""
    app = XksProxyApp(settings(region=["us-east-1", "eu-west-1"]), token)
    path, doc = "/s/kms/xks/v1/health", {"requestMetadata": MD.to_wire("GetHealthStatus")}
    assert call(app, path, doc, region="eu-west-1")[0] == 200
    assert call(app, path, doc, region="us-east-1")[0] == 200
    status, answer = call(app, path, doc, region="ap-south-1")
    assert (status, answer["errorName"]) == (401, "AuthenticationFailedException")
    for bad in ([], [""], 5):
        with pytest.raises(ConfigurationError, match="region"):
            settings(region=bad)
