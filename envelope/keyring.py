"""Which key seals new objects, and which backends may open existing ones.

A `Keyring` is the one concept the engine asks for keys: `encryption_key` for a writer and
`decryption_key` for a reader. The data-key cache (a later layer) plugs in here, so the engine
never talks to a backend directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import ConfigurationError, KmsKeyError, NoBackendError
from .kms.base import DataKey, KmsBackend, WrappedKey

__all__ = ("Keyring",)


class Keyring:
    """Seal under (`backend`, `key_id`); open with `backend` and any of `decrypt_with`.

    A keyring without `key_id` can only decrypt. Decryption is strict: only wrapped keys whose
    provider a configured backend claims (`can_unwrap`) are tried, so a hostile header cannot
    make this process call arbitrary KMS endpoints.
    """

    def __init__(
        self,
        backend: KmsBackend | None = None,
        key_id: str | None = None,
        *,
        decrypt_with: Sequence[KmsBackend] = (),
    ) -> None:
        if key_id is not None and backend is None:
            raise ConfigurationError("a key id needs the backend that holds it")
        self.backend = backend
        self.key_id = key_id
        self.backends: tuple[KmsBackend, ...] = tuple(
            b for b in ((backend,) if backend is not None else ()) + tuple(decrypt_with)
        )
        if not self.backends:
            raise ConfigurationError("a keyring needs at least one backend")

    def __repr__(self) -> str:
        return f"Keyring(key_id={self.key_id!r}, backends={[b.provider_id for b in self.backends]})"

    async def encryption_key(self, kms_context: Mapping[str, str]) -> DataKey:
        if self.backend is None or self.key_id is None:
            raise ConfigurationError("this keyring has no key to encrypt under")
        return await self.backend.generate_data_key(self.key_id, context=kms_context)

    async def decryption_key(
        self, wrapped_keys: Sequence[WrappedKey], kms_context: Mapping[str, str]
    ) -> bytearray:
        """Unwrap the first wrapped key some backend accepts."""
        last: KmsKeyError | None = None
        for wrapped in wrapped_keys:
            for backend in self.backends:
                if not backend.can_unwrap(wrapped):
                    continue
                try:
                    return await backend.decrypt_data_key(wrapped, context=kms_context)
                except KmsKeyError as e:
                    last = e
        if last is not None:
            raise last
        names = ", ".join(f"{w.provider_id}:{w.key_id}" for w in wrapped_keys)
        raise NoBackendError(f"no configured backend can unwrap this object's data key ({names})")
