"""An in-process KMS for tests, docs and benchmarks (`memory:` key URIs).

Master keys live in a dict; data keys are wrapped with AES-256-GCM under them (see `_aeswrap`).
It behaves like a real backend in every way the engine can observe: unknown keys and wrong
contexts are refused with `KmsKeyError`, and each call is counted, so tests can assert on KMS
traffic. `latency` adds a fixed delay per call to model a network KMS. `quota` (a `RateQuota`)
makes it answer `ThrottlingError` (AWS's ThrottlingException) past a request rate per operation
family; throttled calls are counted in `calls` (they reached the service) and in `throttled`.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from collections.abc import Mapping

import anyio

from .._ratelimit import RateQuota
from ..errors import KmsKeyError, ThrottlingError
from . import _aeswrap
from .base import DataKey, WrappedKey

__all__ = ("MemoryKms",)


class MemoryKms:
    """In-memory backend. `create_key()` makes a master key and returns its id."""

    provider_id = "memory"

    def __init__(self, *, latency: float = 0.0, quota: RateQuota | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        self.latency = latency
        self.quota = quota
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()

    def __reduce__(self) -> str | tuple[object, ...]:
        """Refused: the pickle would carry key material (ship a `KeySpec` to workers instead,
        and build the keyring there)."""
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled")

    def __repr__(self) -> str:
        return f"MemoryKms(keys={len(self._keys)}, calls={sum(self.calls.values())})"

    def create_key(self, key_id: str | None = None) -> str:
        key_id = key_id or f"mem-{secrets.token_hex(8)}"
        self._keys[key_id] = os.urandom(32)
        return key_id

    def _master(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise KmsKeyError(f"memory KMS has no key {key_id!r}") from None

    def _admit(self, op: str) -> ThrottlingError | None:
        self.calls[op] += 1
        if self.quota is not None:
            try:
                self.quota.check(op)  # admitted or refused on arrival, as a service would
            except ThrottlingError as e:
                self.throttled[op] += 1
                return e
        return None

    async def _call(self, op: str) -> None:
        refused = self._admit(op)
        if self.latency:
            await anyio.sleep(self.latency)
        if refused is not None:
            raise refused

    def _call_blocking(self, op: str) -> None:
        refused = self._admit(op)
        if self.latency:
            time.sleep(self.latency)
        if refused is not None:
            raise refused

    def _generate(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        cipher = self._master(key_id)
        plaintext = bytearray(os.urandom(32))
        wrapped = WrappedKey(
            self.provider_id, key_id, _aeswrap.wrap(cipher, key_id, plaintext, context)
        )
        return DataKey(plaintext, wrapped)

    def generate_data_key_blocking(
        self, key_id: str, *, context: Mapping[str, str]
    ) -> DataKey:
        """The blocking face (`BlockingKms`): latency and quota behave as in the async one."""
        self._call_blocking("GenerateDataKey")
        return self._generate(key_id, context)

    def decrypt_data_key_blocking(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        self._call_blocking("Decrypt")
        return _aeswrap.unwrap(
            self._master(wrapped.key_id), wrapped.key_id, wrapped.ciphertext, context
        )

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        await self._call("GenerateDataKey")
        return self._generate(key_id, context)

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        await self._call("Encrypt")
        cipher = self._master(key_id)
        return WrappedKey(
            self.provider_id, key_id, _aeswrap.wrap(cipher, key_id, plaintext, context)
        )

    async def decrypt_data_key(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        await self._call("Decrypt")
        return _aeswrap.unwrap(
            self._master(wrapped.key_id), wrapped.key_id, wrapped.ciphertext, context
        )

    def can_unwrap(self, wrapped: WrappedKey) -> bool:
        return wrapped.provider_id == self.provider_id and wrapped.key_id in self._keys

    def close_blocking(self) -> None:
        return None  # nothing held open

    async def aclose(self) -> None:
        return None
