"""The data-key cache, in the bucket-key style: one KMS call serves many objects, within limits.

    kr = Keyring(kms, key_id, cache=CachePolicy())            # 300 s, 2**20 objects, 1 TiB
    kr = Keyring(kms, key_id, cache=None)                     # the one way to turn it off

Why it is safe to share a data key: a data key never encrypts data. Each object derives its own
keys from the data key and a fresh 256-bit message id (docs/format.md), so the AEAD limits hold
per object whatever the cache does. The cache limits bound *exposure* instead: how long a
plaintext data key lives in memory and how long a revoked KMS grant can go unnoticed (TTL), and
how much data one leaked data key opens (objects, bytes). See docs/cache.md.

Structure (../shared/design/format-and-cache.md, section 6):

- two maps sharing one LRU capacity: the *encrypt* map (key -> a data key and its wrapped form,
  with usage counters) and the *decrypt* map (wrapped key -> its plaintext), so objects written
  under one cached data key cost one KMS Decrypt on read;
- each entry retires at exactly its first bound: TTL counted from creation (each entry's TTL is
  shortened by up to `ttl_jitter`, never lengthened), `max_objects`, `max_bytes`;
- cache keys are exact tuples of the partition, the suite, the backend *instance*, the key id
  (or the wrapped key) and the sorted KMS encryption context (in process, exact equality beats
  a digest: no collision argument is needed, and it is cheaper). A partition is random per
  keyring unless the caller names one, so keyrings share entries only when they opt in;
- single-flight: concurrent misses for one key make one backend call and share its outcome;
- refresh ahead: within `refresh_ahead` seconds of expiry, one caller fetches a replacement
  while the others keep using the entry; the replacement gets its own TTL, and a failed refresh
  leaves the old entry to die at its own expiry (no stale-if-error); the refreshing caller
  gets the key it took before its call only if that key is still within its TTL after it;
- hygiene: plaintext keys sit in `bytearray`s, zeroed when an entry leaves; callers get copies
  (the engine wipes them); nothing here is picklable, no repr shows a key, nothing is logged,
  and a forked child starts with an empty cache.

Byte accounting: objects are counted when the key is handed out. Bytes are counted either up
front (`expected_bytes`, exact) or after the fact (`DataKeyCache.charge` / `Keyring.charge`,
which may overshoot by the objects already in flight; that is safe for the reason above).
"""

from __future__ import annotations

import math
import operator
import os
import random
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from ._forksafe import renew_global_after_fork
from .errors import ConfigurationError, KmsUnavailableError
from .hazmat.format import DATA_KEY_LEN, SUITE_AES256GCM_HKDF_SHA512_COMMIT
from .kms.base import DataKey, KmsBackend, WrappedKey
from .metrics import NULL_OBSERVER, CacheName, EvictionReason, Observer

__all__ = (
    "CacheKey",
    "CacheTtlWarning",
    "CachePolicy",
    "DataKeyCache",
    "backend_identity",
    "decryption_cache_key",
    "encryption_cache_key",
)

Clock = Callable[[], float]


class CacheTtlWarning(UserWarning):
    """A data key arrived after its TTL had run out (the TTL counts from the request): it
    was not cached, so single-flight could not serve the callers waiting for it."""


_DAY: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Limits of the data-key cache. Defaults and their reasons: docs/cache.md.

    enabled: False turns the cache off (every object makes its own KMS call).
    ttl / decrypt_ttl: seconds an encrypt / decrypt entry lives, counted from its creation.
    max_objects: objects one data key may encrypt.
    max_bytes: plaintext bytes one data key may encrypt (enforced as far as they are known).
    capacity: entries in both maps together; the least recently used leaves first.
    refresh_ahead: start a refresh this many seconds before expiry (but never in the first half
        of an entry's life).
    refresh_retry: after a refresh failed or stalled, wait this long before another.
    ttl_jitter: shorten each entry's TTL by a random fraction up to this, so that processes
        started together do not refresh together. Never lengthens a TTL.
    wait_timeout: how long a caller waits for another caller's KMS request for the same key:
        300 s by default, longer than any request of the default and bulk retry profiles
        (30 s and 120 s deadlines, 30 s read timeouts) can take, so that waiters share its
        outcome (a 20 s default made them fail while the request went on and succeeded);
        None waits for as long as the request takes.
    """

    enabled: bool = True
    ttl: float = 300.0
    decrypt_ttl: float = 300.0
    max_objects: int = 1 << 20
    max_bytes: int = 1 << 40
    capacity: int = 1000
    refresh_ahead: float = 10.0
    refresh_retry: float = 1.0
    ttl_jitter: float = 0.1
    wait_timeout: float | None = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):  # ("no" turned the cache on; review)
            raise ConfigurationError(f"cache enabled must be True or False, not {self.enabled!r}")
        for name in ("max_objects", "max_bytes", "capacity"):
            value = getattr(self, name)
            if isinstance(value, bool):
                raise ConfigurationError(f"cache {name} must be a whole number, not {value!r}")
            try:
                object.__setattr__(self, name, operator.index(value))
            except TypeError:
                raise ConfigurationError(
                    f"cache {name} must be a whole number, not {value!r}"
                ) from None
        for name in ("ttl", "decrypt_ttl", "refresh_ahead", "refresh_retry", "ttl_jitter",
                     "wait_timeout"):  # fmt: skip
            value = getattr(self, name)
            if value is None and name == "wait_timeout":
                continue  # wait for the request in flight, however long it takes
            if isinstance(value, bool) or isinstance(value, str | bytes):
                raise ConfigurationError(f"cache {name} must be a number, not {value!r}")
            try:  # an int, a float, a numpy number: anything with __float__
                object.__setattr__(self, name, float(value))
            except (TypeError, ValueError):
                raise ConfigurationError(f"cache {name} must be a number, not {value!r}") from None
        if not 1.0 <= self.ttl <= _DAY:
            raise ConfigurationError("cache ttl must be 1 s .. 24 h")
        if not 1.0 <= self.decrypt_ttl <= _DAY:
            raise ConfigurationError("cache decrypt_ttl must be 1 s .. 24 h")
        if not 1 <= self.max_objects <= 1 << 32:
            raise ConfigurationError("cache max_objects must be 1 .. 2**32")
        if not 1 <= self.max_bytes <= 1 << 62:
            raise ConfigurationError("cache max_bytes must be 1 .. 2**62")
        if not 1 <= self.capacity <= 1_000_000:
            raise ConfigurationError("cache capacity must be 1 .. 1,000,000")
        if not 0.0 <= self.refresh_ahead <= _DAY:
            raise ConfigurationError("cache refresh_ahead must be 0 .. 24 h")
        if not 0.0 <= self.refresh_retry <= 3600.0:
            raise ConfigurationError("cache refresh_retry must be 0 .. 3600 s")
        if not 0.0 <= self.ttl_jitter <= 0.5:
            raise ConfigurationError("cache ttl_jitter must be 0 .. 0.5")
        if self.wait_timeout is not None and not 0.0 < self.wait_timeout <= 3600.0:
            raise ConfigurationError("cache wait_timeout must be None or in (0, 3600] s")


def _byte_count(value: object, what: str) -> int:
    """A count of bytes: an integer (or an int-like, as numpy's) >= 0. A NaN charged or
    expected was taken, and made every later byte-limit comparison false: the entry's
    `max_bytes` was off for good (review); text was a bare TypeError."""
    try:
        count = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigurationError(
            f"{what} must be a whole number of bytes, not {type(value).__name__}"
        ) from None
    if count < 0:
        raise ConfigurationError(f"{what} must be >= 0")
    return count


# -- cache keys -----------------------------------------------------------------------------

_identities: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
_identities_strong: dict[int, tuple[object, str]] = {}
_identities_lock = threading.Lock()
renew_global_after_fork(globals(), "_identities_lock")  # (held at a fork: `_forksafe`)


def backend_identity(backend: KmsBackend) -> str:
    """A name for this backend *instance* in cache keys.

    Two backends of one kind may hold different master keys under the same key id, so entries
    are bound to the instance (a random token per object), unless the backend declares a stable
    `cache_identity` string (e.g. an AWS account and region, where key ids are global).
    """
    declared = getattr(backend, "cache_identity", None)
    if isinstance(declared, str) and declared:
        return f"{backend.provider_id}:{declared}"
    with _identities_lock:
        try:
            ident = _identities.get(backend)
            if ident is None:
                ident = _identities[backend] = f"{backend.provider_id}#{os.urandom(16).hex()}"
            return ident
        except TypeError:  # not weak-referenceable: keep it alive so its id is never reused
            held = _identities_strong.get(id(backend))
            if held is None or held[0] is not backend:
                held = _identities_strong[id(backend)] = (
                    backend,
                    f"{backend.provider_id}#{os.urandom(16).hex()}",
                )
            return held[1]


#: A cache key: an exact tuple of the fields it binds (hashable; compared field by field).
CacheKey = tuple[object, ...]


def _context_key(kms_context: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kms_context.items())) if kms_context else ()


def encryption_cache_key(
    partition: str,
    backend_id: str,
    key_id: str,
    kms_context: Mapping[str, str],
    suite_id: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT,
) -> CacheKey:
    """The encrypt-map key: partition, suite, backend instance, key id, KMS context."""
    return ("enc", partition, suite_id, backend_id, key_id, _context_key(kms_context))


def decryption_cache_key(
    partition: str,
    backend_id: str,
    wrapped: WrappedKey,
    kms_context: Mapping[str, str],
    suite_id: int = SUITE_AES256GCM_HKDF_SHA512_COMMIT,
) -> CacheKey:
    """The decrypt-map key: partition, suite, backend instance, the wrapped key, KMS context."""
    return (
        "dec",
        partition,
        suite_id,
        backend_id,
        wrapped.provider_id,
        wrapped.key_id,
        wrapped.ciphertext,
        _context_key(kms_context),
    )


# -- entries and the store ------------------------------------------------------------------


class _Entry:
    """One cached data key. Its plaintext is zeroed when it leaves the cache."""

    __slots__ = (
        "bytes",
        "created",
        "dead",
        "dk",
        "expires",
        "key",
        "kind",
        "next_refresh",
        "objects",
        "refresh_at",
        "wrapped",
    )

    def __init__(
        self,
        kind: CacheName,
        key: CacheKey,
        dk: bytes | bytearray,
        wrapped: WrappedKey | None,
        created: float,
        ttl: float,
        refresh_ahead: float,
    ) -> None:
        if len(dk) != DATA_KEY_LEN:
            raise ValueError(f"data keys are {DATA_KEY_LEN} bytes")
        self.kind: CacheName = kind
        self.key = key
        self.dk = bytearray(dk)
        self.wrapped = wrapped
        self.created = created
        self.expires = created + ttl
        self.refresh_at = created + max(ttl - refresh_ahead, ttl / 2)
        self.next_refresh = self.refresh_at
        self.objects = 0
        self.bytes = 0
        self.dead = False

    def zero(self) -> None:
        self.dk[:] = bytes(len(self.dk))
        self.dead = True

    def __repr__(self) -> str:
        return (
            f"_Entry({self.kind}, dk=<secret>, objects={self.objects}, bytes={self.bytes}, "
            f"expires={self.expires:.3f})"
        )

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("cache entries cannot be pickled")


class _Store:
    """The entries of both maps, least recently used first, each with its own expiry.

    What cachetools' TLRUCache did here, over one OrderedDict, because a lookup runs once per
    object on the hot path of every small object: a hit is one dictionary lookup and a move to
    the end, with the time the caller already read (TLRU's hit was four Python calls and a
    clock read, about 1.5 us beside the 45 us of a 16 KiB object's cryptography). Every
    entry that leaves is reported to the owner, which zeroes it."""

    __slots__ = ("_entries", "_owner", "capacity")

    def __init__(self, owner: DataKeyCache, capacity: int) -> None:
        self._owner = owner
        self.capacity = capacity
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()

    def live(self, key: CacheKey, now: float) -> _Entry | None:
        """The entry for `key` unless it expired by `now`; marks it the most recently used."""
        entry = self._entries.get(key)
        if entry is None or not now < entry.expires:
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: CacheKey, entry: _Entry, now: float) -> None:
        """Store `entry` (the caller retired any entry it replaces): expired entries leave
        first, then the least recently used while the capacity is exceeded."""
        self.expire(now)
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self.capacity:
            _, old = entries.popitem(last=False)
            self._owner._dropped(old, "capacity")

    def remove(self, entry: _Entry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]

    def expire(self, now: float) -> int:
        """Drop every entry expired by `now`; returns how many left."""
        gone = [(k, e) for k, e in self._entries.items() if not now < e.expires]
        for key, entry in gone:
            del self._entries[key]
            self._owner._dropped(entry, "expired")
        return len(gone)

    def all(self) -> list[_Entry]:
        """Every stored entry, expired ones included."""
        return list(self._entries.values())

    def clear(self) -> None:
        self._entries.clear()


class _Flight:
    """One in-flight backend request that other callers for the same key wait on.

    Shared by threads and tasks alike (a plain `threading.Event`): a blocking caller waits on
    it, an async caller polls it with short sleeps, so one KMS call serves every caller of
    the process whichever face (sync or async) and whichever thread or event loop they use.
    """

    __slots__ = ("done", "error", "expires", "thread")

    def __init__(self, expires: float = math.inf) -> None:
        self.done = threading.Event()
        self.error: Exception | None = None
        #: A refresh-ahead's: when the entry it replaces expires (`DataKeyCache._outlived`).
        self.expires = expires
        #: The owner's thread: a blocking caller on that same thread (a sync call inside the
        #: owner task's event loop) must not wait for it, or the loop could never finish it.
        self.thread = threading.get_ident()


def _for_waiter(error: Exception) -> Exception:
    """The owner's error as one waiter raises it: a copy of it, without the owner's traceback
    or cause. Raising the one shared instance from every waiting thread piled each waiter's
    frames (and the plaintext in their locals) onto an object all of them hold, where an error
    reporter of any of them would find the others' data."""
    copy = type(error).__new__(type(error), *error.args)
    copy.args = error.args
    copy.__dict__.update(error.__dict__)
    copy.__suppress_context__ = True
    return copy


_caches: weakref.WeakSet[DataKeyCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_caches):
        cache._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DataKeyCache:
    """The encrypt and decrypt maps, their limits and single-flight; thread-safe.

    Normally built by `Keyring(cache=CachePolicy(...))`; build one yourself to share a cache
    (and its memory budget) between keyrings, which still share *entries* only when they name
    the same partition. `clock` and `rng` are injectable for tests.
    """

    def __init__(
        self,
        policy: CachePolicy | None = None,
        *,
        observer: Observer = NULL_OBSERVER,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy if policy is not None else CachePolicy()
        self.observer = observer
        #: the optional delta event (`NullObserver.cache_entries_changed`), for observers
        #: shared by several caches: a count of one cache would overwrite another's
        self._entries_changed = getattr(observer, "cache_entries_changed", None)
        self.clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._store = _Store(self, self.policy.capacity)
        self._flights: dict[CacheKey, _Flight] = {}
        self._by_wrapped: dict[WrappedKey, _Entry] = {}
        self._live: dict[CacheName, int] = {"encrypt": 0, "decrypt": 0}
        self._earliest = math.inf  # no entry expires before this
        self._slow_warned = False  # CacheTtlWarning once per cache
        self._closed = False  # `close`: nothing is cached any more
        _caches.add(self)

    def __repr__(self) -> str:
        return (
            f"DataKeyCache(encrypt={self._live['encrypt']}, decrypt={self._live['decrypt']}, "
            f"policy={self.policy!r})"
        )

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a data-key cache cannot be pickled")

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    def __len__(self) -> int:
        return self._live["encrypt"] + self._live["decrypt"]

    def entries(self, cache: CacheName) -> int:
        """Live entries in one map (expired entries leave at the next operation)."""
        return self._live[cache]

    # -- bookkeeping (all under self._lock) -------------------------------------------------

    def _dropped(self, entry: _Entry, reason: EvictionReason) -> None:
        """An entry left the store: zero it and report. Called with the lock held."""
        if entry.dead:
            return
        entry.zero()
        self._live[entry.kind] -= 1
        if entry.wrapped is not None and self._by_wrapped.get(entry.wrapped) is entry:
            del self._by_wrapped[entry.wrapped]
        self.observer.cache_eviction(entry.kind, reason)
        self.observer.cache_entries(entry.kind, self._live[entry.kind])
        if self._entries_changed is not None:
            self._entries_changed(entry.kind, -1)

    def _lookup(self, key: CacheKey, now: float) -> _Entry | None:
        """The live entry for `key`; drops (and zeroes) expired entries first, when due."""
        if now >= self._earliest:
            self._expire(now)
        return self._store.live(key, now)

    def _expire(self, now: float) -> None:
        """Drop (and zero) the entries expired at `now`; note when the next one expires."""
        self._store.expire(now)
        self._earliest = min((e.expires for e in self._all_entries()), default=math.inf)

    def _retire(self, entry: _Entry, reason: EvictionReason) -> None:
        self._store.remove(entry)
        self._dropped(entry, reason)

    def _ttl(self, base: float) -> float:
        jitter = self.policy.ttl_jitter
        return base * (1.0 - self._rng.uniform(0.0, jitter)) if jitter else base

    def _insert(
        self,
        kind: CacheName,
        key: CacheKey,
        dk: bytes | bytearray,
        wrapped: WrappedKey | None,
        created: float,
    ) -> _Entry | None:
        if self._closed:
            return None
        base = self.policy.ttl if kind == "encrypt" else self.policy.decrypt_ttl
        entry = _Entry(kind, key, dk, wrapped, created, self._ttl(base), self.policy.refresh_ahead)
        now = self.clock()
        if not now < entry.expires:  # the request took longer than the TTL: do not cache
            entry.zero()
            if not self._slow_warned:
                self._slow_warned = True
                warnings.warn(
                    f"a {kind} data key took {now - created:.1f} s to arrive, longer than the "
                    f"cache's TTL ({base:g} s): it is not cached, so concurrent callers each "
                    "make their own KMS request in turn. Set the TTL well above the KMS's "
                    "response time",
                    CacheTtlWarning,
                    stacklevel=2,
                )
            return None
        old = self._store.live(key, now)
        if old is not None:
            self._retire(old, "replaced")
        self._store.put(key, entry, now)
        self._earliest = min(self._earliest, entry.expires)
        self._live[kind] += 1
        if wrapped is not None:
            self._by_wrapped[wrapped] = entry
        self.observer.cache_entries(kind, self._live[kind])
        if self._entries_changed is not None:
            self._entries_changed(kind, 1)
        return entry

    def _count(self, entry: _Entry, expected_bytes: int) -> None:
        """One more object on `entry`; it retires on reaching a bound."""
        entry.objects += 1
        entry.bytes += expected_bytes
        if entry.objects >= self.policy.max_objects:
            self._retire(entry, "objects")
        elif entry.bytes >= self.policy.max_bytes:
            self._retire(entry, "bytes")

    def _all_entries(self) -> list[_Entry]:
        """Every stored entry, expired ones included."""
        return self._store.all()

    def _claim_refresh(self, entry: _Entry, now: float, key: CacheKey) -> _Flight | None:
        if entry.dead or now < entry.next_refresh or key in self._flights:
            return None
        entry.next_refresh = now + self.policy.refresh_retry
        flight = self._flights[key] = _Flight(entry.expires)
        return flight

    def _outlived(self, flight: _Flight, got: DataKey | bytearray) -> bool:
        """After a refresh-ahead: whether it outlasted the entry it was to replace (a slow
        KMS, retries). The caller's key, taken from that entry before the refresh, is then
        past its TTL: wiped, and the caller looks again (the refreshed entry, or a fetch)
        instead of sealing with it."""
        if self.clock() < flight.expires:
            return False
        if isinstance(got, DataKey):
            got.wipe()
        else:
            got[:] = bytes(len(got))
        return True

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at fork time
        for entry in self._all_entries():
            entry.zero()
        self._store.clear()
        self._flights.clear()
        self._by_wrapped.clear()
        if self._entries_changed is not None:
            # the child's gauge (copied from the parent) loses what this cache held: it sums
            # deltas, so the child kept the parent's count for ever (diff review)
            for kind, n in self._live.items():
                if n:
                    self._entries_changed(kind, -n)
        self._live = {"encrypt": 0, "decrypt": 0}

    # -- public operations ------------------------------------------------------------------

    def _decide(
        self, kind: CacheName, key: CacheKey, expected_bytes: int
    ) -> tuple[DataKey | bytearray | None, _Flight | None, bool]:
        """One locked look at the cache: (hit, flight, owner).

        - a hit and no flight: done;
        - a hit and a flight: the caller owns a refresh-ahead (fetch a replacement, then
          return the hit);
        - no hit: the caller owns a new flight (`owner`) and fetches, or waits on another's.
        """
        with self._lock:
            now = self.clock()
            entry = self._lookup(key, now)
            got: DataKey | bytearray | None = None
            if entry is not None:
                # A hit is the hot path of every small object: one function, no more calls
                # than it needs (each costs about a microsecond beside the object's crypto).
                if kind == "decrypt":
                    got = bytearray(entry.dk)
                else:
                    p = self.policy
                    if entry.objects >= p.max_objects:
                        self._retire(entry, "objects")
                    elif entry.bytes + expected_bytes > p.max_bytes:
                        self._retire(entry, "bytes")
                    else:
                        assert entry.wrapped is not None
                        got = DataKey(entry.dk, entry.wrapped)
                        self._count(entry, expected_bytes)
            if got is not None:
                assert entry is not None
                if self.observer is not NULL_OBSERVER:
                    self.observer.cache_lookup(kind, True)
                if now < entry.next_refresh:
                    return got, None, True
                return got, self._claim_refresh(entry, now, key), True
            pending = self._flights.get(key)
            if pending is not None:
                return None, pending, False
            # the observer first: a flight registered and then abandoned by an observer that
            # raised would hold every later caller of this key until its wait_timeout
            self.observer.cache_lookup(kind, False)
            flight = self._flights[key] = _Flight()
            return None, flight, True

    def _bypass(self, expected_bytes: int) -> bool:
        p = self.policy
        expected_bytes = _byte_count(expected_bytes, "expected_bytes")
        if not p.enabled or expected_bytes > p.max_bytes:
            if p.enabled:
                self.observer.cache_lookup("encrypt", False)
            return True  # off, or a single object over the byte limit: a one-use key
        return False

    async def encryption_key(
        self,
        key: CacheKey,
        fetch: Callable[[], Awaitable[DataKey]],
        *,
        expected_bytes: int = 0,
    ) -> DataKey:
        """A data key for one new object: cached if within limits, else fetched (single-flight).

        The caller owns the returned `DataKey` (a copy) and should wipe it.
        """
        if self._bypass(expected_bytes):
            return await fetch()
        while True:
            got, flight, owner = self._decide("encrypt", key, expected_bytes)
            if isinstance(got, DataKey):
                if flight is not None:
                    await self._refresh(flight, key, "encrypt", fetch)
                    if self._outlived(flight, got):
                        continue
                return got
            assert flight is not None
            if owner:
                return await self._fill_encrypt(key, fetch, flight, expected_bytes)
            await self._wait(flight)

    def encryption_key_blocking(
        self,
        key: CacheKey,
        fetch: Callable[[], DataKey],
        *,
        expected_bytes: int = 0,
    ) -> DataKey:
        """`encryption_key` for plain threads: a hit is one locked lookup, no event loop."""
        if self._bypass(expected_bytes):
            return fetch()
        while True:
            got, flight, owner = self._decide("encrypt", key, expected_bytes)
            if isinstance(got, DataKey):
                if flight is not None:
                    self._refresh_blocking(flight, key, "encrypt", fetch)
                    if self._outlived(flight, got):
                        continue
                return got
            assert flight is not None
            if owner:
                got = self._fill_blocking(flight, key, "encrypt", fetch, expected_bytes)
                return cast(DataKey, got)
            if not self._wait_blocking(flight):
                return fetch()  # (uncached: the owner's key fills the cache)

    async def decryption_key(
        self, key: CacheKey, fetch: Callable[[], Awaitable[bytearray]]
    ) -> bytearray:
        """The plaintext of one wrapped key: cached, or fetched once (single-flight). A copy."""
        if not self.policy.enabled:
            return await fetch()
        while True:
            got, flight, owner = self._decide("decrypt", key, 0)
            if isinstance(got, bytearray):
                if flight is not None:
                    await self._refresh(flight, key, "decrypt", fetch)
                    if self._outlived(flight, got):
                        continue
                return got
            assert flight is not None
            if owner:
                return await self._fill_decrypt(key, fetch, flight)
            await self._wait(flight)

    def decryption_key_blocking(self, key: CacheKey, fetch: Callable[[], bytearray]) -> bytearray:
        """`decryption_key` for plain threads: a hit is one locked lookup, no event loop."""
        if not self.policy.enabled:
            return fetch()
        while True:
            got, flight, owner = self._decide("decrypt", key, 0)
            if isinstance(got, bytearray):
                if flight is not None:
                    self._refresh_blocking(flight, key, "decrypt", fetch)
                    if self._outlived(flight, got):
                        continue
                return got
            assert flight is not None
            if owner:
                return cast(bytearray, self._fill_blocking(flight, key, "decrypt", fetch, -1))
            if not self._wait_blocking(flight):
                return fetch()

    def peek_decryption_key(self, key: CacheKey) -> bytearray | None:
        """A cached plaintext for `key` (a copy, counted as a hit), or None. Never calls a KMS."""
        if not self.policy.enabled:
            return None
        with self._lock:
            entry = self._lookup(key, self.clock())
            if entry is None:
                return None
            self.observer.cache_lookup("decrypt", True)
            return bytearray(entry.dk)

    def charge(self, wrapped: WrappedKey, nbytes: int) -> None:
        """Count `nbytes` more plaintext on the data key wrapped as `wrapped`.

        The entry retires once its byte limit is reached; objects already holding the key
        finish with it. A key no longer cached (or never cached) is ignored.
        """
        nbytes = _byte_count(nbytes, "the bytes charged")
        with self._lock:
            entry = self._by_wrapped.get(wrapped)
            if entry is None or entry.dead:
                return
            entry.bytes += nbytes
            if entry.bytes >= self.policy.max_bytes:
                self._retire(entry, "bytes")

    def clear(self) -> None:
        """Drop (and zero) every entry."""
        with self._lock:
            for entry in self._all_entries():
                self._dropped(entry, "cleared")
            self._store.clear()

    def close(self) -> None:
        """`clear`, and cache nothing from now on: a key a request still in flight brings
        back (a call that began before its keyring was closed) goes to that caller only.
        It was cached in the closed keyring's cache, where nothing would ever zero it."""
        with self._lock:
            self._closed = True
        self.clear()

    def prune(self) -> int:
        """Drop expired entries now; returns how many left."""
        with self._lock:
            gone = self._store.expire(self.clock())
            self._earliest = min((e.expires for e in self._all_entries()), default=math.inf)
            return gone

    # -- the slow paths ---------------------------------------------------------------------

    def _timed_out(self) -> KmsUnavailableError:
        return KmsUnavailableError(
            f"timed out after {self.policy.wait_timeout or 0:g} s (the cache's wait_timeout) "
            "waiting for a data-key request already in flight"
        )

    async def _wait(self, flight: _Flight) -> None:
        """Wait for another caller's flight (any thread, any loop): short polls, backing off
        to 5 ms; misses are rare, so this costs nothing measurable."""
        import anyio  # async callers only: the blocking face never loads it

        limit = self.policy.wait_timeout
        deadline = math.inf if limit is None else time.monotonic() + limit
        delay = 0.0002
        while not flight.done.is_set():
            if time.monotonic() >= deadline:
                raise self._timed_out()
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.005)
        if flight.error is not None:
            raise _for_waiter(flight.error)  # the single-flight owner's outcome is shared

    def _wait_blocking(self, flight: _Flight) -> bool:
        """Wait for another caller's flight; False (not waited) when its owner is a task of
        this very thread's event loop: blocking here would freeze that loop for the whole
        wait_timeout, and the owner with it. The caller then fetches on its own."""
        if flight.thread == threading.get_ident() and not flight.done.is_set():
            return False
        if not flight.done.wait(self.policy.wait_timeout):
            raise self._timed_out()
        if flight.error is not None:
            raise _for_waiter(flight.error)
        return True

    def _land(self, flight: _Flight, key: CacheKey) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()

    def _store_fetched(
        self, kind: CacheName, key: CacheKey, got: DataKey | bytearray, started: float, count: int
    ) -> None:
        with self._lock:
            if isinstance(got, DataKey):
                entry = self._insert(kind, key, got.plaintext, got.wrapped, started)
                if entry is not None and count >= 0:
                    self._count(entry, count)  # the caller's object: the fetched key
            else:
                self._insert(kind, key, got, None, started)

    async def _fill_encrypt(
        self,
        key: CacheKey,
        fetch: Callable[[], Awaitable[DataKey]],
        flight: _Flight,
        expected_bytes: int,
    ) -> DataKey:
        try:
            started = self.clock()
            data_key = await fetch()
            self._store_fetched("encrypt", key, data_key, started, expected_bytes)
            return data_key
        except Exception as e:
            flight.error = e
            raise
        finally:
            self._land(flight, key)

    async def _fill_decrypt(
        self, key: CacheKey, fetch: Callable[[], Awaitable[bytearray]], flight: _Flight
    ) -> bytearray:
        try:
            started = self.clock()
            plaintext = await fetch()
            self._store_fetched("decrypt", key, plaintext, started, -1)
            return plaintext
        except Exception as e:
            flight.error = e
            raise
        finally:
            self._land(flight, key)

    def _fill_blocking(
        self,
        flight: _Flight,
        key: CacheKey,
        kind: CacheName,
        fetch: Callable[[], Any],
        count: int,
    ) -> Any:
        try:
            started = self.clock()
            got = fetch()
            self._store_fetched(kind, key, got, started, count)
            return got
        except Exception as e:
            flight.error = e
            raise
        finally:
            self._land(flight, key)

    def _refreshed(
        self, kind: CacheName, key: CacheKey, got: DataKey | bytearray, started: float
    ) -> None:
        try:
            self._store_fetched(kind, key, got, started, -1)
        finally:
            if isinstance(got, DataKey):
                got.wipe()
            else:
                got[:] = bytes(len(got))
        self.observer.cache_refresh(kind, True)

    async def _refresh(
        self,
        flight: _Flight,
        key: CacheKey,
        kind: CacheName,
        fetch: Callable[[], Awaitable[Any]],
    ) -> None:
        try:
            started = self.clock()
            self._refreshed(kind, key, await fetch(), started)
        except Exception as e:
            flight.error = e
            self.observer.cache_refresh(kind, False)  # the old entry dies on time
        finally:
            self._land(flight, key)

    def _refresh_blocking(
        self, flight: _Flight, key: CacheKey, kind: CacheName, fetch: Callable[[], Any]
    ) -> None:
        try:
            started = self.clock()
            self._refreshed(kind, key, fetch(), started)
        except Exception as e:
            flight.error = e
            self.observer.cache_refresh(kind, False)
        finally:
            self._land(flight, key)
