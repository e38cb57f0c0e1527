"""The embedded KMS as a `KmsBackend` (`local:` key URIs; provider id ``local``).

A key URI is ``local:`` followed by a key id, a key ARN or an alias (``local:alias/demo``); the
bare forms are accepted too. Headers record provider id ``local`` and the key's ARN. The wrapped
key is the service's own ciphertext blob, which names its key and backing-key version, so
decryption needs nothing but the blob (and the encryption context, bound as AAD), and keeps
working after the key is rotated or its alias moved.

Calls run directly on the event loop's thread: one is a small SQLite transaction (about 0.2 ms,
see bench/kms.py), cheaper than a hop to a worker thread. Pass ``offload=True`` when several
processes write to the same store heavily, so that waiting for SQLite's write lock never stalls
the loop.

Service refusals map onto `envelope.errors`: an unknown, disabled, pending-deletion or wrong key,
or a ciphertext/context mismatch, is `KmsKeyError` (its message names the AWS error code);
throttling is `ThrottlingError` and internal failures `KmsTransientError` (both retryable). A
store that cannot be used as it is (missing, truncated, corrupt; wrong root key) is
`ConfigurationError`, and a key whose stored row fails authentication is `KmsKeyError`: no
retry can fix either.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import anyio.to_thread

from .._names import KMS_ARN
from ..errors import (
    ClosedError,
    ConfigurationError,
    KmsAccessDeniedError,
    KmsKeyError,
    KmsTransientError,
    NoStoreError,
    ThrottlingError,
)
from ..service import (
    ROOT_KEY_NAME,
    KeyService,
    KmsServiceError,
    RequestContext,
    home_paths,
    open_service,
    store_path,
    via_service,
)
from ..service.errors import StoreError, TamperedStoreError
from .base import DataKey, WrappedKey

__all__ = (
    "PROVIDER_ID",
    "ROOT_KEY_NAME",
    "LocalKms",
    "home_paths",
    "key_id_from_uri",
    "open_local",
    "store_path",
)

PROVIDER_ID = "local"
_PREFIX = "local:"
_UNAVAILABLE = frozenset(
    {"ThrottlingException", "KMSInternalException", "DependencyTimeoutException"}
)
T = TypeVar("T")


def key_id_from_uri(uri_or_key: str) -> str:
    """``local:alias/demo`` -> ``alias/demo``; a bare key id, ARN or alias is returned as is."""
    key = uri_or_key[len(_PREFIX) :] if uri_or_key.startswith(_PREFIX) else uri_or_key
    key = key.removeprefix("//")
    if not key:
        raise ConfigurationError("a local: key URI needs a key id, ARN or alias")
    return key


def _key_part(key: str) -> str:
    """The key id of a key ARN (``arn:...:key/ID`` -> ``ID``), else the text: a multi-Region
    key has one id in every Region."""
    return key.rsplit(":key/", 1)[-1]


def _translate(e: KmsServiceError) -> Exception:
    """Service errors as the engine's: throttling and transient faults are retryable kinds."""
    if isinstance(e, TamperedStoreError):
        return KmsKeyError(f"embedded KMS refused: {e.message}")
    if isinstance(e, StoreError):
        return ConfigurationError(f"embedded KMS store unusable: {e.message}")
    if e.code == "AccessDeniedException":
        return KmsAccessDeniedError(f"embedded KMS denied access: {e.message}")
    if e.code == "ThrottlingException":
        return ThrottlingError(f"embedded KMS throttled: {e.message}")
    if e.code in _UNAVAILABLE:
        return KmsTransientError(f"embedded KMS unavailable ({e.code}): {e.message}")
    return KmsKeyError(f"embedded KMS refused ({e.code}): {e.message}")


class LocalKms:
    """`KmsBackend` over a `KeyService` (in this process, over the store under $ENVELOPE_HOME)."""

    provider_id = PROVIDER_ID

    def __init__(
        self,
        service: KeyService,
        *,
        offload: bool = False,
        owns: bool = True,
        principal: str | None = None,
    ) -> None:
        self.service = service
        self.offload = offload
        self._owns = owns
        #: The one key this backend decrypts with (a reader's ``--key``): sent as Decrypt's
        #: KeyId, so the KMS refuses a data key wrapped under any other (IncorrectKeyException)
        #: or names a key it does not have (NotFoundException). None: the key the blob names.
        self.required_key: str | None = None
        #: Services of the same store for other Regions (a required key's ARN names one).
        self._regions: dict[str, KeyService] = {}
        #: Who the encryptor calls as (None: the service's default principal, $ENVELOPE_PRINCIPAL
        #: or the account root); its policies and grants decide what it may do.
        self.principal = principal
        # The encryptor is the "envelope" service to the KMS (kms:ViaService), so the AWS
        # managed key alias/aws/envelope is usable through it, and only through it.
        self._ctx = RequestContext(
            user_agent="envelope-encryptor", via_service=via_service("envelope", service.region)
        )

    def __repr__(self) -> str:
        return f"LocalKms(region={self.service.region!r}, store={str(self.service.store.path)!r})"

    def __reduce__(self) -> str | tuple[object, ...]:
        """Refused: the pickle would carry the store's open root key (ship a `KeySpec` to
        workers instead, and build the keyring there). It failed on sqlite3 by accident."""
        raise TypeError("LocalKms holds the store's root key and cannot be pickled; ship a KeySpec")

    def state_paths(self) -> tuple[str, ...]:
        """The store's files, its root-key file and digest folder (see `Keyring.state_paths`)."""
        return self.service.state_paths()

    def _blocking(self, fn: Callable[[], T]) -> T:
        """`fn` (a call of the service) on this thread, its errors as the engine's."""
        try:
            return fn()
        except KmsServiceError as e:
            if self.service.store.closed:  # not a fault to retry: closed for good
                raise ClosedError(
                    "the embedded KMS backend is closed (a keyring over it was closed: "
                    "keyrings sharing one backend close it together)"
                ) from None
            raise _translate(e) from None

    async def _call(self, fn: Callable[[], T]) -> T:
        if self.offload:
            return await anyio.to_thread.run_sync(self._blocking, fn)
        return self._blocking(fn)

    # The blocking face (`BlockingKms`): the service is blocking by nature (a committed
    # SQLite transaction per call, thread-safe, shared commits across threads), so
    # `envelope.sync` calls it on the calling thread instead of through the portal loop.

    def generate_data_key_blocking(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        return self._blocking(lambda: self._generate(key_id, context))

    def decrypt_data_key_blocking(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        return self._blocking(lambda: self._decrypt(wrapped, context))

    def close_blocking(self) -> None:
        if self._owns:
            self.service.close()

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        return await self._call(lambda: self._generate(key_id, context))

    def _generate(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        resp = self.service.generate_data_key(
            key_id=key_id_from_uri(key_id),
            key_spec="AES_256",
            encryption_context=dict(context),
            principal=self.principal,
            context=self._ctx,
        )
        plaintext = bytearray(resp["Plaintext"])
        try:
            return DataKey(
                plaintext, WrappedKey(PROVIDER_ID, resp["KeyId"], resp["CiphertextBlob"])
            )
        finally:
            plaintext[:] = bytes(len(plaintext))

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        kid = key_id_from_uri(key_id)
        resp = await self._call(
            lambda: self.service.encrypt(
                key_id=kid,
                plaintext=bytes(plaintext),
                encryption_context=dict(context),
                principal=self.principal,
                context=self._ctx,
            )
        )
        return WrappedKey(PROVIDER_ID, resp["KeyId"], resp["CiphertextBlob"])

    async def decrypt_data_key(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        return await self._call(lambda: self._decrypt(wrapped, context))

    def _decrypt(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytearray:
        if wrapped.provider_id != PROVIDER_ID:
            raise KmsKeyError(f"not a local KMS wrapped key (provider {wrapped.provider_id!r})")
        required = self.required_key
        # (the Region's service is made inside `_blocking`: its errors typed)
        resp = self._service_for(required).decrypt(
            ciphertext_blob=wrapped.ciphertext,
            encryption_context=dict(context),
            key_id=None if required is None else key_id_from_uri(required),
            principal=self.principal,
            context=self._ctx,
        )
        key = bytearray(resp["Plaintext"])
        if len(key) != 32:
            key[:] = bytes(len(key))
            raise KmsKeyError("the wrapped key is not a 32-byte data key")
        if _key_part(str(resp["KeyId"])) != _key_part(wrapped.key_id):
            # the blob names the key that opens it; the wrapped key's own label is what the
            # writer recorded: a writer holding only its own key labelled its blob with
            # another key's ARN, and a reader pinned to that key read it (review)
            key[:] = bytes(len(key))
            raise KmsKeyError(
                f"the wrapped key says it is under {wrapped.key_id}, but {resp['KeyId']} "
                "opened it"
            )
        return key

    def can_unwrap(self, wrapped: WrappedKey) -> bool:
        return wrapped.provider_id == PROVIDER_ID

    def _service_for(self, key: str | None) -> KeyService:
        """The service of the Region a key ARN names (a multi-Region replica, a key of
        another Region of the same store), else this backend's own: a KeyId is resolved in
        the Region it is sent to, as in AWS KMS."""
        if key is None:
            return self.service
        m = KMS_ARN.fullmatch(key_id_from_uri(key))
        region = m.group(2) if m is not None else ""
        if not region or region == self.service.region:
            return self.service
        service = self._regions.get(region)
        if service is None:
            service = self._regions[region] = self.service.for_region(region)
        return service

    async def aclose(self) -> None:
        if self._owns:
            self.service.close()


def open_local(
    home: str | os.PathLike[str] | None = None,
    *,
    region: str | None = None,
    offload: bool = False,
    must_exist: bool = False,
    principal: str | None = None,
) -> LocalKms:
    """Open the embedded KMS under `home` (default ``$ENVELOPE_HOME`` or ``~/.envelope``).

    The store and its root-key file are created on first use, unless `must_exist` (a reader
    has nothing to find in an empty KMS): then a home without a store raises
    `ConfigurationError`. A wrong or missing root key (or ``$ENVELOPE_KMS_PASSPHRASE``)
    raises `ConfigurationError` and changes nothing. `principal` is who calls (default
    ``$ENVELOPE_PRINCIPAL``, else the account root).
    """
    if must_exist:
        path = store_path(home)
        if not path.exists():
            raise NoStoreError(f"no embedded KMS store at {str(path)!r}")
    try:
        return LocalKms(open_service(home, region=region, principal=principal), offload=offload)
    except StoreError as e:
        raise ConfigurationError(str(e)) from None
    except KmsServiceError as e:
        raise _translate(e) from None
