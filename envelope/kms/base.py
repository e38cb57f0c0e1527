"""The one plug point for key management: the `KmsBackend` Protocol and the `DataKey` it returns.

Every backend (in-memory, key file, the embedded KMS, AWS KMS, PKCS#11) implements this small
async surface. The engine asks for a fresh data key when it writes and for the unwrapping of a
recorded wrapped key when it reads; re-wrapping needs `encrypt_data_key`. Retries, caching and
metrics wrap a backend from the outside, so a backend stays a thin translation of its service.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from ..hazmat.format import DATA_KEY_LEN, WrappedKey

__all__ = ("BlockingKms", "DataKey", "KmsBackend", "WrappedKey", "state_paths_of")


class DataKey:
    """A plaintext data key and its wrapped form.

    The plaintext lives in a `bytearray` so that it can be zeroed (`wipe`) when no longer used.
    It never appears in a repr, and the object refuses to be pickled.
    """

    __slots__ = ("plaintext", "wrapped")

    def __init__(self, plaintext: bytes | bytearray, wrapped: WrappedKey) -> None:
        if len(plaintext) != DATA_KEY_LEN:
            raise ValueError(f"data keys are {DATA_KEY_LEN} bytes")
        #: A plain attribute, not a property: it is read once per object on the hot path.
        self.plaintext = bytearray(plaintext)
        self.wrapped = wrapped

    def wipe(self) -> None:
        """Overwrite the plaintext with zeros (best effort: Python may hold other copies)."""
        self.plaintext[:] = bytes(len(self.plaintext))

    def __repr__(self) -> str:
        return f"DataKey(plaintext=<secret>, wrapped={self.wrapped!r})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("data keys cannot be pickled")


@runtime_checkable
class KmsBackend(Protocol):
    """What the encryptor needs from a key-management service.

    `provider_id` is written into every header the backend wraps a key for, so a reader can
    find the right backend from the header alone. `context` is the KMS-level encryption
    context: the backend MUST bind it to the wrapped key (AAD), so unwrapping with another
    context fails.
    """

    @property
    def provider_id(self) -> str: ...

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        """A fresh random 32-byte data key, and the same key wrapped under `key_id`."""
        ...

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        """Wrap an existing data key under `key_id` (used to re-wrap objects)."""
        ...

    async def decrypt_data_key(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        """Unwrap; raises KmsKeyError when the key or the context does not match."""
        ...

    def can_unwrap(self, wrapped: WrappedKey) -> bool:
        """Cheap, offline filter: could this backend unwrap `wrapped` at all?"""
        ...

    async def aclose(self) -> None: ...


def state_paths_of(backend: object) -> tuple[str, ...]:
    """The local files `backend` keeps keys or key state in, by its optional
    ``state_paths()`` (a key file; the embedded KMS's store, root-key file and digest folder);
    () for a backend without local state (AWS KMS, an HSM, the in-memory fake). What no output
    written with the backend's keys may replace (`Keyring.state_paths`)."""
    paths = getattr(backend, "state_paths", None)
    return tuple(paths()) if callable(paths) else ()


@runtime_checkable
class BlockingKms(Protocol):
    """The optional blocking face of a backend that is blocking by nature.

    Every backend offers the async `KmsBackend` face. A backend that is blocking by nature
    (a key file, the in-memory fake, the embedded KMS, boto3) may also offer this one; the
    keyring's blocking face (`Keyring.encryption_key_blocking`, used by `envelope.sync` and
    the object layer) then calls it directly on a cache miss, on the calling thread. Any
    other backend is reached through the one process-wide portal loop (`envelope._portal`):
    correct everywhere, one thread hop per miss.
    """

    def generate_data_key_blocking(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        ...

    def decrypt_data_key_blocking(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray: ...

    def close_blocking(self) -> None:
        """`aclose` on the calling thread."""
        ...
