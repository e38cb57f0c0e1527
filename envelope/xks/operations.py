"""The four XKS operations over a PKCS#11 token: what `envelope xks serve` does once a request
is routed, authenticated and parsed (`envelope.xks.app`).

Each operation takes the key store's settings, the key id and the request's JSON object, and
returns the answer's JSON object or raises `XksProxyError` with the specification's error: see
the table in docs/xks.md. Token calls run inline on the event loop (a SoftHSM2 AES-GCM call is
about 100 us, less than a hop to a worker thread and back), or on a worker thread abandoned
past ``dependency_timeout_ms`` (`DependencyTimeoutException`).
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.to_thread

from .. import __version__
from ..pkcs11.errors import KeyNotInToken, TokenDecryptError, TokenError
from .config import KeyStoreSettings, XksSettings
from .errors import XksProxyError
from .spec import (
    AES_GCM,
    CDIV_SHA_256,
    IV_LENGTHS,
    KEY_SPEC_AES_256,
    MAX_CIPHERTEXT_METADATA,
    TAG_LENGTH,
    SpecViolation,
    b64decode,
    b64encode,
    cdiv,
    check_key_id,
    proxy_aad,
)

__all__ = ("KEY_CACHE_SECONDS", "Operations", "TokenLike")

_T = TypeVar("_T")

#: How long a key's attributes are trusted before the token is asked again (seconds).
KEY_CACHE_SECONDS: Final = 10.0


class TokenLike(Protocol):
    """What the proxy uses of `envelope.pkcs11.Token`."""

    def check(self) -> None: ...
    def key_attributes(self, label: str) -> dict[str, object]: ...
    def encrypt(self, label: str, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes, bytes]: ...
    def decrypt(
        self, label: str, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes
    ) -> bytes: ...
    def random(self, n: int) -> bytes: ...


def _invalid(member: str, message: str) -> XksProxyError:
    return XksProxyError("ValidationException", f"{member} {message}")


def _string(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise _invalid(name, "is required (a non-empty string)")
    return value


def _bytes(doc: Mapping[str, Any], name: str, *, required: bool) -> bytes | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise _invalid(name, "is required")
        return None
    try:
        return b64decode(value, name)
    except SpecViolation as e:
        raise _invalid(name, e.message) from None


def _listed_elsewhere(settings: XksSettings) -> dict[str, frozenset[str]]:
    """For each key store, the keys other key stores list. A store without a `keys` list may
    use every key of the token but these (and the health check's key): the path prefix
    "provides a mechanism to support multiple isolated customers on the same XKS proxy" (the
    specification), and a store that listed its keys was open to any store that did not
    (review)."""
    return {
        ks.path_prefix: frozenset().union(
            *(other.keys or () for other in settings.keystores if other is not ks)
        )
        for ks in settings.keystores
    }


class Operations:
    """GetHealthStatus, GetKeyMetadata, Encrypt and Decrypt on `token` (one per process)."""

    def __init__(self, settings: XksSettings, token: TokenLike, log: Any) -> None:
        self.settings = settings
        self.token = token
        self._errlog = log
        self._keys: dict[str, tuple[float, dict[str, object]]] = {}
        self._others = _listed_elsewhere(settings)
        self._timeout = settings.dependency_timeout_ms / 1000.0
        self.model = f"envelope XKS proxy {__version__}"

    def use_keystores(self, settings: XksSettings) -> None:
        """The key stores reloaded from the config file (`settings`: the running settings
        with them): which keys each store may use follows."""
        self.settings = settings
        self._others = _listed_elsewhere(settings)

    async def _token(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Call the token, mapping its errors: inline, or on a worker thread abandoned past
        dependency_timeout_ms (see the module docstring)."""
        try:
            if self._timeout <= 0:
                return fn(*args)
            with anyio.fail_after(self._timeout):
                return await anyio.to_thread.run_sync(lambda: fn(*args), abandon_on_cancel=True)
        except TimeoutError:
            raise XksProxyError(
                "DependencyTimeoutException", "the token did not answer in time"
            ) from None
        except KeyNotInToken as e:
            self._keys.pop(e.label, None)
            raise XksProxyError("KeyNotFoundException", "no such key in the token") from None
        except TokenDecryptError:
            raise XksProxyError(
                "InvalidCiphertextException",
                "the ciphertext, IV, tag, AAD or ciphertext metadata do not verify",
            ) from None
        except TokenError as e:
            self._errlog.error("token call failed: %s", e)
            raise XksProxyError(
                "InternalException", "the key manager (PKCS#11 token) failed"
            ) from None

    async def _key(self, store: KeyStoreSettings, key_id: str) -> dict[str, object]:
        """The attributes of an allowed key (cached KEY_CACHE_SECONDS), or KeyNotFound."""
        try:
            check_key_id(key_id)
        except SpecViolation:
            raise XksProxyError("KeyNotFoundException", "not a valid external key id") from None
        allowed = store.keys
        if (
            (allowed is not None and key_id not in allowed)
            or key_id == self.settings.health_key
            or (allowed is None and key_id in self._others.get(store.path_prefix, ()))
        ):
            raise XksProxyError("KeyNotFoundException", "no such key in this key store")
        now = time.monotonic()
        hit = self._keys.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        attrs = await self._token(self.token.key_attributes, key_id)
        if len(self._keys) >= 4096:
            self._keys.clear()
        self._keys[key_id] = (now + KEY_CACHE_SECONDS, attrs)
        return attrs

    @staticmethod
    def _spec_of(attrs: Mapping[str, object]) -> str:
        kind = str(attrs.get("key_type", "UNKNOWN"))
        length = attrs.get("value_len")
        return f"{kind}_{int(length) * 8}" if isinstance(length, int) else kind

    async def _usable(self, store: KeyStoreSettings, key_id: str, usage: str) -> None:
        attrs = await self._key(store, key_id)
        if key_id in store.disabled_keys:
            raise XksProxyError("InvalidStateException", "the external key is disabled")
        if self._spec_of(attrs) != KEY_SPEC_AES_256 or attrs.get(usage) is not True:
            raise XksProxyError(
                "InvalidKeyUsageException",
                f"the external key is not an AES-256 key allowed to {usage}",
            )

    async def health(self) -> dict[str, Any]:
        """A deep check: the token answers, makes random bytes and (with a health key)
        encrypts and decrypts; slower than degraded_ms is DEGRADED."""
        started = time.perf_counter()
        status = "ACTIVE"
        try:
            await self._token(self.token.check)
            await self._token(self.token.random, 16)
            key = self.settings.health_key
            if key is not None:
                probe = b"envelope-xks-health-check"
                aad = proxy_aad(b"health", None)
                iv, ct, tag = await self._token(self.token.encrypt, key, probe, aad)
                back = await self._token(self.token.decrypt, key, iv, ct, tag, aad)
                if not hmac.compare_digest(back, probe):
                    status = "DEGRADED"
        except XksProxyError as e:
            # a token that is unreachable is UNAVAILABLE; a broken health key or a slow
            # dependency still serving the other calls is DEGRADED
            status = (
                "DEGRADED"
                if e.error_name
                in (
                    "KeyNotFoundException",
                    "InvalidCiphertextException",
                    "DependencyTimeoutException",
                )
                else "UNAVAILABLE"
            )
        except Exception as e:  # a closed token, anything unforeseen: it cannot serve
            self._errlog.error("health check failed: %s: %s", type(e).__name__, e)
            status = "UNAVAILABLE"
        if (
            status == "ACTIVE"
            and (time.perf_counter() - started) * 1000 > self.settings.degraded_ms
        ):
            status = "DEGRADED"
        s = self.settings
        return {
            "xksProxyFleetSize": 1,
            "xksProxyVendor": "envelope",
            "xksProxyModel": self.model,
            "ekmVendor": s.ekm_vendor,
            "ekmFleetDetails": [
                {
                    "id": s.token_label,
                    "model": s.ekm_model or os.path.basename(s.module),
                    "healthStatus": status,
                }
            ],
        }

    async def metadata(self, store: KeyStoreSettings, key_id: str) -> dict[str, Any]:
        attrs = await self._key(store, key_id)
        usage = [
            name.upper()
            for name in ("encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "derive")
            if attrs.get(name) is True
        ]
        return {
            "keySpec": self._spec_of(attrs),
            "keyUsage": usage,
            "keyStatus": "DISABLED" if key_id in store.disabled_keys else "ENABLED",
        }

    def _algorithm(self, doc: Mapping[str, Any]) -> None:
        if _string(doc, "encryptionAlgorithm") != AES_GCM:
            raise XksProxyError(
                "UnsupportedOperationException", "encryptionAlgorithm must be AES_GCM"
            )

    def _aad(self, doc: Mapping[str, Any]) -> bytes | None:
        aad = _bytes(doc, "additionalAuthenticatedData", required=False)
        if aad is not None and len(aad) > self.settings.max_aad_bytes:
            raise XksProxyError(
                "UnsupportedOperationException",
                f"additionalAuthenticatedData is longer than {self.settings.max_aad_bytes} bytes",
            )
        return aad

    def _data(self, doc: Mapping[str, Any], name: str) -> bytes:
        data = _bytes(doc, name, required=True)
        assert data is not None
        if not data:
            raise _invalid(name, "must not be empty")
        if len(data) > self.settings.max_plaintext_bytes:
            raise XksProxyError(
                "UnsupportedOperationException",
                f"{name} is longer than {self.settings.max_plaintext_bytes} bytes",
            )
        return data

    async def encrypt(
        self, store: KeyStoreSettings, key_id: str, doc: Mapping[str, Any]
    ) -> dict[str, Any]:
        plaintext = self._data(doc, "plaintext")
        self._algorithm(doc)
        aad = self._aad(doc)
        integrity = doc.get("ciphertextDataIntegrityValueAlgorithm")
        if integrity is not None:
            if not isinstance(integrity, str):
                raise _invalid("ciphertextDataIntegrityValueAlgorithm", "must be a string")
            if integrity != CDIV_SHA_256:
                raise XksProxyError(
                    "UnsupportedOperationException",
                    "ciphertextDataIntegrityValueAlgorithm must be SHA_256",
                )
        await self._usable(store, key_id, "encrypt")
        if integrity is not None:
            # the check below decrypts: a key that may only encrypt cannot give a CDIV (AWS's
            # test client expects InvalidKeyUsageException here; it was a 500 from the token)
            await self._usable(store, key_id, "decrypt")
        meta = store.ciphertext_metadata
        full_aad = proxy_aad(aad, meta)
        value = b""
        if integrity is None:
            iv, ciphertext, tag = await self._token(
                self.token.encrypt, key_id, plaintext, full_aad
            )
        else:  # both token calls in one hop to the worker thread: one hop costs as much as one
            iv, ciphertext, tag, value, back = await self._token(
                self._encrypt_and_decrypt, key_id, plaintext, aad, meta
            )
            if not hmac.compare_digest(back, plaintext):
                raise XksProxyError("InternalException", "the token's ciphertext did not verify")
        answer: dict[str, Any] = {
            "ciphertext": b64encode(ciphertext),
            "initializationVector": b64encode(iv),
            "authenticationTag": b64encode(tag),
        }
        if meta is not None:
            answer["ciphertextMetadata"] = b64encode(meta)
        if integrity is not None:
            answer["ciphertextDataIntegrityValue"] = b64encode(value)
        return answer

    def _encrypt_and_decrypt(
        self, key_id: str, plaintext: bytes, aad: bytes | None, meta: bytes | None
    ) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """Encrypt in the token, compute the CDIV, then decrypt what the CDIV covers
        (Appendix C's order: the value computed before the check, so a corruption of the
        returned fields after the check cannot go unnoticed), on the one worker thread
        `_token` runs it on. An encryption that outlasted dependency_timeout_ms was abandoned
        by the request (a DependencyTimeoutException): its check is not made, to ask no more
        of a slow token. Returns the IV, ciphertext, tag, CDIV and the decrypted plaintext."""
        full_aad = proxy_aad(aad, meta)
        started = time.monotonic()
        iv, ciphertext, tag = self.token.encrypt(key_id, plaintext, full_aad)
        if 0 < self._timeout <= time.monotonic() - started:
            raise TimeoutError  # (the request's own deadline, counted from the hop: no later)
        iv, ciphertext, tag = bytes(iv), bytes(ciphertext), bytes(tag)
        value = cdiv(aad, meta, iv, ciphertext, tag)
        try:
            back = self.token.decrypt(key_id, iv, ciphertext, tag, full_aad)
        except TokenDecryptError:  # the token's own ciphertext does not open: its fault, and
            back = b""  # refused by the caller as InternalException, not InvalidCiphertext
        return iv, ciphertext, tag, value, back

    async def decrypt(
        self, store: KeyStoreSettings, key_id: str, doc: Mapping[str, Any]
    ) -> dict[str, Any]:
        ciphertext = self._data(doc, "ciphertext")
        self._algorithm(doc)
        iv = _bytes(doc, "initializationVector", required=True)
        tag = _bytes(doc, "authenticationTag", required=True)
        assert iv is not None and tag is not None
        meta = _bytes(doc, "ciphertextMetadata", required=False)
        aad = self._aad(doc)
        if meta is not None and len(meta) > MAX_CIPHERTEXT_METADATA:
            raise _invalid("ciphertextMetadata", f"is longer than {MAX_CIPHERTEXT_METADATA} bytes")
        # the key first (unknown, disabled, wrong usage), then the ciphertext's shape, as
        # docs/xks.md orders the checks
        await self._usable(store, key_id, "decrypt")
        if len(iv) not in IV_LENGTHS or len(tag) != TAG_LENGTH:
            raise XksProxyError(
                "InvalidCiphertextException",
                "the initializationVector must be 12 or 16 bytes and the authenticationTag 16",
            )
        plaintext = await self._token(
            self.token.decrypt, key_id, iv, ciphertext, tag, proxy_aad(aad, meta)
        )
        return {"plaintext": b64encode(plaintext)}
