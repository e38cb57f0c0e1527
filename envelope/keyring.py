"""Which key seals new objects, and which backends may open existing ones.

A `Keyring` is the one concept the engine asks for keys: `encryption_key` for a writer and
`decryption_key` for a reader. The data-key cache and the retry layer plug in here, so the
engine never talks to a backend directly::

    kr = Keyring(kms, key_id, cache=CachePolicy(), retry=RetryPolicy.bulk(), observer=obs)

- `cache`: a `CachePolicy` (a private `DataKeyCache` is built), a shared `DataKeyCache`, or
  None, the one way to turn it off (every object makes its own KMS call).
- `partition`: cache entries are shared only between keyrings that name the same partition
  (and the same backend instance, key id, KMS context and suite). Default: a random partition
  per keyring, so separate users never share a data key by accident.
- `retry`: a `RetryPolicy`; every backend is then wrapped in a `RetryingKms` (one retry budget
  per backend). None: no retries, unless a backend passed in already is a `RetryingKms`.
- `observer`: KMS calls (per attempt), retries and cache events are reported to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from . import _portal
from .errors import ClosedError, ConfigurationError, KmsKeyError, NoBackendError
from .hazmat.format import DATA_KEY_LEN, MAX_EDKS, SUITE_AES256GCM_HKDF_SHA512_COMMIT
from .keycache import (
    CacheKey,
    CachePolicy,
    DataKeyCache,
    backend_identity,
    decryption_cache_key,
    encryption_cache_key,
)
from .kms.base import BlockingKms, DataKey, KmsBackend, WrappedKey, state_paths_of
from .kms.retry import RetryingKms, RetryPolicy, shared_budget
from .metrics import NULL_OBSERVER, Observer
from .printable import wrapped_key_name

__all__ = ("Keyring",)

#: A decrypt route: the (wrapped key, backend index) pairs worth trying, in order.
Route = tuple[tuple[WrappedKey, int], ...]


def _data_key_only(key: bytearray, wrapped: WrappedKey) -> bytearray:
    """Refuse anything but a 32-byte data key (wiping it) before it is used or cached: a KMS
    will happily decrypt a 16-byte secret someone wrapped to look like one."""
    if len(key) != DATA_KEY_LEN:
        n = len(key)
        key[:] = bytes(n)
        raise KmsKeyError(f"{wrapped_key_name(wrapped)} unwrapped to {n} bytes, not a data key")
    return key


async def _checked_unwrap(
    backend: KmsBackend, wrapped: WrappedKey, kms_context: Mapping[str, str]
) -> bytearray:
    """Unwrap with the backend's async face; a data key only (`_data_key_only`)."""
    return _data_key_only(await backend.decrypt_data_key(wrapped, context=kms_context), wrapped)


def _checked_unwrap_blocking(
    backend: BlockingKms, wrapped: WrappedKey, kms_context: Mapping[str, str]
) -> bytearray:
    """`_checked_unwrap` for a backend's blocking face."""
    return _data_key_only(backend.decrypt_data_key_blocking(wrapped, context=kms_context), wrapped)


def _check_arguments(
    backend: object, key_id: object, decrypt_with: object, cache: object, retry: object
) -> None:
    """Refuse, when the keyring is made, the arguments that would otherwise fail on first use
    with an AttributeError from inside (``cache=True``, ``retry=3``, one backend given as
    `decrypt_with`)."""
    if isinstance(backend, str):
        raise ConfigurationError(
            f"backend must be a KMS backend object, not the string {backend[:100]!r}: for a "
            "key URI use envelope.open_backend(uri), which gives the backend and key id"
        )
    if key_id is not None and not isinstance(key_id, str):
        raise ConfigurationError(f"key_id must be a string, not {type(key_id).__name__}")
    if cache is not None and not isinstance(cache, CachePolicy | DataKeyCache):
        raise ConfigurationError(
            f"cache must be a CachePolicy, a DataKeyCache or None, not {type(cache).__name__}"
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
    if isinstance(decrypt_with, str | bytes) or not isinstance(decrypt_with, Sequence):
        raise ConfigurationError(
            "decrypt_with is a sequence of backends (a list or tuple), not "
            f"{type(decrypt_with).__name__}"
        )
    # (an int, bytes or None in their place failed on first use, as an AttributeError; review)
    for what, b in (("backend", backend), *(("decrypt_with", d) for d in decrypt_with)):
        if (what == "decrypt_with" or b is not None) and not isinstance(b, KmsBackend):
            raise ConfigurationError(
                f"{what} must be a KMS backend object (envelope.kms: a key file, the local "
                f"KMS, AWS KMS, ...), not {type(b).__name__}; for a key URI use "
                "envelope.open_backend(uri)"
            )


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
        cache: DataKeyCache | CachePolicy | None = None,
        partition: str | None = None,
        retry: RetryPolicy | None = None,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        if key_id is not None and backend is None:
            raise ConfigurationError("a key id needs the backend that holds it")
        _check_arguments(backend, key_id, decrypt_with, cache, retry)
        self.backend = backend
        self.key_id = key_id
        self.backends: tuple[KmsBackend, ...] = tuple(
            b for b in ((backend,) if backend is not None else ()) + tuple(decrypt_with)
        )
        if not self.backends:
            raise ConfigurationError("a keyring needs at least one backend")
        self.observer = observer
        self.retry = retry
        # What the keyring calls: each backend, behind the retry layer when one is configured.
        self._calls: tuple[KmsBackend, ...] = tuple(self._wrap(b) for b in self.backends)
        # Each call's blocking face if it is blocking by nature (else None), decided once: an
        # isinstance check against a runtime-checkable Protocol costs about 20 us, an eighth
        # of a 16 KiB object's decrypt.
        self._blocking: tuple[BlockingKms | None, ...] = tuple(
            c if isinstance(c, BlockingKms) else None for c in self._calls
        )
        if any(b is None for b in self._blocking):  # a blocking caller's miss needs the portal
            _portal.prepare()
        self._ids: tuple[str, ...] = tuple(backend_identity(b) for b in self.backends)
        self._closed = False
        self._owns_cache = isinstance(cache, CachePolicy)  # (a DataKeyCache may be shared)
        if isinstance(cache, CachePolicy):
            cache = DataKeyCache(cache, observer=observer) if cache.enabled else None
        elif isinstance(cache, DataKeyCache):
            if not cache.enabled:
                cache = None
            elif cache.observer is NULL_OBSERVER:
                cache.observer = observer
        self.cache: DataKeyCache | None = cache
        if partition is not None and not partition:
            raise ConfigurationError("a cache partition name must not be empty")
        self.partition = partition if partition is not None else os.urandom(16).hex()
        #: The encrypt-map key of the usual call (no KMS context, the one suite) as (key id,
        #: partition, key): made again if either attribute is given a new value.
        self._plain_key: tuple[str | None, str, CacheKey] = (None, "", ())
        #: The last decrypt route (`_candidates`): (wrapped keys, KMS context, suite,
        #: partition, the candidates, their cache keys), replaced whole (threads read it).
        self._last_route: tuple[Any, ...] = (None, None, None, None, (), ())

    def _encryption_cache_key(self, kms_context: Mapping[str, str], suite_id: int) -> CacheKey:
        key_id, partition = self.key_id, self.partition
        assert key_id is not None
        if kms_context or suite_id != SUITE_AES256GCM_HKDF_SHA512_COMMIT:
            return encryption_cache_key(partition, self._ids[0], key_id, kms_context, suite_id)
        plain = self._plain_key
        if plain[0] == key_id and plain[1] == partition:
            return plain[2]
        key = encryption_cache_key(partition, self._ids[0], key_id, {})
        self._plain_key = (key_id, partition, key)
        return key

    def _wrap(self, backend: KmsBackend) -> KmsBackend:
        if isinstance(backend, RetryingKms):
            if self.retry is not None:
                raise ConfigurationError(
                    "this backend already retries; passing retry= too would multiply retries"
                )
            if backend.observer is NULL_OBSERVER:
                backend.observer = self.observer
            return backend
        if self.retry is None and self.observer is NULL_OBSERVER:
            return backend  # nothing to add: call the backend directly
        policy = self.retry if self.retry is not None else RetryPolicy.none()
        budget = (
            shared_budget(backend, policy.budget_capacity)
            if policy.budget_capacity is not None
            else None
        )
        return RetryingKms(backend, policy, budget=budget, observer=self.observer)

    def __reduce__(self) -> str | tuple[object, ...]:
        """Refused: the pickle would carry key material (ship a `KeySpec` to workers instead,
        and build the keyring there)."""
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled")

    def __repr__(self) -> str:
        cache = "off" if self.cache is None else repr(self.cache)
        return (
            f"Keyring(key_id={self.key_id!r}, backends={[b.provider_id for b in self.backends]}, "
            f"cache={cache})"
        )

    async def encryption_key(
        self,
        kms_context: Mapping[str, str],
        *,
        expected_bytes: int | None = None,
        suite_id: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT,
    ) -> DataKey:
        """A data key for one new object (the caller owns it and should wipe it).

        `expected_bytes`, when the object's plaintext size is known up front, is counted
        against the cached key's byte limit before the key is handed out; otherwise report the
        size afterwards with `charge`.
        """
        if self._closed or self.backend is None or self.key_id is None:
            self._check_open()
            raise ConfigurationError("this keyring has no key to encrypt under")
        call, key_id = self._calls[0], self.key_id
        fetch = partial(call.generate_data_key, key_id, context=kms_context)
        if self.cache is None:
            return await fetch()
        key = self._encryption_cache_key(kms_context, suite_id)
        return await self.cache.encryption_key(key, fetch, expected_bytes=expected_bytes or 0)

    def charge(self, wrapped: WrappedKey, nbytes: int) -> None:
        """Count `nbytes` of plaintext encrypted under the data key wrapped as `wrapped`.

        The engine calls this as an object's size becomes known, so the cache's byte limit
        holds for streams of unknown length. Without a cache it does nothing.
        """
        if self.cache is not None:
            self.cache.charge(wrapped, nbytes)

    async def wrap_key(
        self, plaintext: bytes | bytearray, kms_context: Mapping[str, str]
    ) -> WrappedKey:
        """Wrap an existing data key under this keyring's key (re-wrapping objects)."""
        self._check_open()
        if self.backend is None or self.key_id is None:
            raise ConfigurationError("this keyring has no key to wrap under")
        return await self._calls[0].encrypt_data_key(self.key_id, plaintext, context=kms_context)

    def _closing(self) -> None:
        """Refuse use from now on, and zero the cached data keys (those of a cache this
        keyring made; a `DataKeyCache` passed in may serve other keyrings and stays)."""
        self._closed = True
        if self.cache is not None and self._owns_cache:
            self.cache.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this keyring is closed")

    async def aclose(self) -> None:
        """Close every backend (the embedded KMS seals its audit log on close) and the
        keyring: its cached data keys are zeroed, and any later use raises ClosedError."""
        self._closing()
        for backend in self.backends:
            await backend.aclose()

    async def __aenter__(self) -> Keyring:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _candidates(
        self,
        wrapped_keys: Sequence[WrappedKey],
        kms_context: Mapping[str, str],
        suite_id: int,
        fresh: bool = False,
    ) -> tuple[Route, tuple[CacheKey, ...], bytearray | None, bool]:
        """The (wrapped key, backend) pairs worth trying, their cache keys, a cached plaintext
        if one of several ways in is already cached, and whether the route was remembered
        (`fresh`: never; a remembered route none of whose ways worked is made afresh by
        `_changed_route`, for a backend may have gained or lost the key since)."""
        if self._closed:
            self._check_open()
        # Objects written under one cached data key carry the very same wrapped-key tuple
        # (the header parser shares it), so a reader of many small objects finds its route
        # here, without building it again for each (a tenth of a 16 KiB object's decrypt).
        last = self._last_route
        remembered = (
            not fresh
            and last[0] is wrapped_keys
            and type(wrapped_keys) is tuple  # (immutable: a list could change between calls)
            and last[1] == kms_context
            and last[2] == suite_id
            and last[3] == self.partition
        )
        if remembered:
            candidates, keys = last[4], last[5]
        else:
            candidates, keys = self._route(wrapped_keys, kms_context, suite_id)
            self._last_route = (
                wrapped_keys,
                dict(kms_context),
                suite_id,
                self.partition,
                candidates,
                keys,
            )
        cache = self.cache
        if cache is not None and len(keys) > 1:
            # several ways in: take a cached one before calling any KMS
            for key in keys:
                hit = cache.peek_decryption_key(key)
                if hit is not None:
                    return candidates, keys, hit, remembered
        return candidates, keys, None, remembered

    def _changed_route(
        self,
        wrapped_keys: Sequence[WrappedKey],
        kms_context: Mapping[str, str],
        suite_id: int,
        tried: Route,
        last: KmsKeyError | None,
    ) -> tuple[Route, tuple[CacheKey, ...], bytearray | None]:
        """After a remembered route failed: the route made afresh, or the failure (`last`) if
        it is the one tried (asking the same backends again would only repeat their
        refusals)."""
        candidates, keys, hit, _ = self._candidates(wrapped_keys, kms_context, suite_id, True)
        if hit is None and candidates == tried:
            raise self._none_unwrapped(wrapped_keys, last)
        return candidates, keys, hit

    def _route(
        self, wrapped_keys: Sequence[WrappedKey], kms_context: Mapping[str, str], suite_id: int
    ) -> tuple[Route, tuple[CacheKey, ...]]:
        backends = self.backends
        candidates: list[tuple[WrappedKey, int]] = []
        seen: set[tuple[str, str, bytes]] = set()
        for wrapped in wrapped_keys:
            ident = (wrapped.provider_id, wrapped.key_id, wrapped.ciphertext)
            if ident in seen:
                continue  # a header listing one wrapped key twice gets one attempt
            seen.add(ident)
            for i, b in enumerate(backends):
                if b.can_unwrap(wrapped):
                    candidates.append((wrapped, i))
        del candidates[MAX_EDKS:]  # never more KMS attempts than a header may carry keys
        keys: tuple[CacheKey, ...] = ()
        if self.cache is not None:
            keys = tuple(
                decryption_cache_key(self.partition, self._ids[i], w, kms_context, suite_id)
                for w, i in candidates
            )
        return tuple(candidates), keys

    def _none_unwrapped(
        self, wrapped_keys: Sequence[WrappedKey], last: KmsKeyError | None
    ) -> Exception:
        """The refusal when no backend could unwrap: naming the keys the object needs and
        the keys given (a wrong key file was told to pass a key file; review)."""
        if last is not None:
            return last
        names = ", ".join(wrapped_key_name(w) for w in wrapped_keys)
        files = [b for b in self.backends if b.provider_id == "file"]
        if files and any(w.provider_id == "file" for w in wrapped_keys):
            given = ", ".join(f"file:{getattr(b, 'key_id', '?')}" for b in files)
            return NoBackendError(
                f"the key file{'s' if len(files) > 1 else ''} given ({given}) "
                f"{'are' if len(files) > 1 else 'is'} not the key this object was sealed with "
                f"({names})"
            )
        hint = ""
        if any(w.provider_id == "file" for w in wrapped_keys):
            hint = "; a file: key is a key file: pass it (--key-file PATH, or FileKeyBackend)"
        return NoBackendError(
            f"no configured backend can unwrap this object's data key ({names}){hint}"
        )

    async def decryption_key(
        self,
        wrapped_keys: Sequence[WrappedKey],
        kms_context: Mapping[str, str],
        *,
        suite_id: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT,
    ) -> bytearray:
        """Unwrap the first wrapped key some backend accepts (a cached one first)."""
        candidates, keys, hit, remembered = self._candidates(wrapped_keys, kms_context, suite_id)
        cache = self.cache
        last: KmsKeyError | None = None
        while hit is None:
            for n, (wrapped, i) in enumerate(candidates):
                fetch = partial(_checked_unwrap, self._calls[i], wrapped, kms_context)
                try:
                    if cache is not None:
                        return await cache.decryption_key(keys[n], fetch)
                    return await fetch()
                except KmsKeyError as e:
                    last = e
            if not remembered:
                raise self._none_unwrapped(wrapped_keys, last)
            candidates, keys, hit = self._changed_route(
                wrapped_keys, kms_context, suite_id, candidates, last
            )
            remembered = False
        return hit

    # -- the blocking face: no event loop on a cache hit ------------------------------------

    def encryption_key_blocking(
        self,
        kms_context: Mapping[str, str],
        *,
        expected_bytes: int | None = None,
        suite_id: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT,
    ) -> DataKey:
        """`encryption_key` for plain threads (ETL code, `envelope.sync`, worker threads).

        A cache hit is one locked lookup on the calling thread. A miss calls a blocking
        backend (and the retry layer over one) on the calling thread, any other through the
        process-wide portal loop (`envelope._portal`), with single-flight shared with every
        other thread and task of the process.
        """
        if self._closed or self.backend is None or self.key_id is None:
            self._check_open()
            raise ConfigurationError("this keyring has no key to encrypt under")
        ctx = dict(kms_context)
        fetch = partial(self._generate_blocking, self.key_id, ctx)  # (a partial: no closure)
        if self.cache is None:
            return fetch()
        key = self._encryption_cache_key(ctx, suite_id)
        return self.cache.encryption_key_blocking(key, fetch, expected_bytes=expected_bytes or 0)

    def _generate_blocking(self, key_id: str, ctx: Mapping[str, str]) -> DataKey:
        blocking = self._blocking[0]
        if blocking is not None:  # blocking by nature and not wrapped: direct
            return blocking.generate_data_key_blocking(key_id, context=ctx)
        return _portal.call(partial(self._calls[0].generate_data_key, key_id, context=ctx))

    def decryption_key_blocking(
        self,
        wrapped_keys: Sequence[WrappedKey],
        kms_context: Mapping[str, str],
        *,
        suite_id: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT,
    ) -> bytearray:
        """`decryption_key` for plain threads: a hit needs no event loop (see above)."""
        candidates, keys, hit, remembered = self._candidates(wrapped_keys, kms_context, suite_id)
        cache = self.cache
        ctx = dict(kms_context)
        last: KmsKeyError | None = None
        while hit is None:
            for n, (wrapped, i) in enumerate(candidates):
                blocking = self._blocking[i]
                if blocking is not None:  # blocking by nature and not wrapped: direct
                    fetch = partial(_checked_unwrap_blocking, blocking, wrapped, ctx)
                else:
                    unwrap = partial(_checked_unwrap, self._calls[i], wrapped, ctx)
                    fetch = partial(_portal.call, unwrap)
                try:
                    if cache is not None:
                        return cache.decryption_key_blocking(keys[n], fetch)
                    return fetch()
                except KmsKeyError as e:
                    last = e
            if not remembered:
                raise self._none_unwrapped(wrapped_keys, last)
            candidates, keys, hit = self._changed_route(
                wrapped_keys, kms_context, suite_id, candidates, last
            )
            remembered = False
        return hit

    def state_paths(self) -> tuple[str, ...]:
        """The local files this keyring's backends keep keys or key state in (a key file; the
        embedded KMS's store, root-key file and digest folder). An output written with these
        keys must not replace one of them: encrypting onto the key file would seal the only
        copy of the key under itself (`envelope.objects.check_output_path`)."""
        return tuple(p for b in self.backends for p in state_paths_of(b))

    def __enter__(self) -> Keyring:
        """``with Keyring(...) as kr:`` closes it on the way out, as ``async with`` does."""
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """`aclose` for plain threads (the embedded KMS seals its audit log on close).
        Backends with a blocking face close on this thread; others on the portal loop."""
        self._closing()
        for backend in self.backends:
            if isinstance(backend, BlockingKms):
                backend.close_blocking()
            else:
                _portal.call(backend.aclose)
