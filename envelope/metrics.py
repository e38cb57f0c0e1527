"""Observing the pipeline without importing a metrics library.

The engine, the key cache, the retry layer and the backends report events to an `Observer`.
`NULL_OBSERVER` ignores them (the default); `envelope.prometheus.PrometheusObserver` turns
them into Prometheus metrics. Events carry counts, sizes, durations and names only: never key
material, plaintext, ciphertext or encryption-context values.

Who reports what:

- the engine (`envelope.api`): `object_started`, `object_finished`, `batch_processed`;
- the retry layer (`envelope.kms.retry`), once per backend *attempt*: `kms_call_started`,
  `kms_call_finished`; per backoff: `kms_retry`; when it stops trying: `kms_gave_up`;
- the data-key cache (`envelope.keycache`): `cache_lookup`, `cache_eviction`, `cache_refresh`,
  `cache_entries` (and `cache_entries_changed`, when the observer has it).

Subclass `NullObserver` to implement only the events you care about.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = (
    "NULL_OBSERVER",
    "CacheName",
    "Direction",
    "EvictionReason",
    "GiveUpReason",
    "KmsOutcome",
    "NullObserver",
    "Observer",
    "RetryReason",
)

Direction = Literal["encrypt", "decrypt"]
#: How one backend attempt ended: "ok", the retry layer's class of the error, or "cancelled".
KmsOutcome = Literal["ok", "throttled", "transient", "timeout", "error", "cancelled"]
#: Why the retry layer backs off before another attempt.
RetryReason = Literal["throttled", "transient", "timeout"]
#: Why the retry layer stopped retrying and raised.
GiveUpReason = Literal["attempts", "budget", "deadline"]
#: The two maps of the data-key cache.
CacheName = Literal["encrypt", "decrypt"]
#: Why a cache entry left the cache (its plaintext key is zeroed at that moment).
EvictionReason = Literal["expired", "objects", "bytes", "capacity", "replaced", "cleared"]


class Observer(Protocol):
    """Receives pipeline events. Implementations must be cheap, thread-safe and never raise."""

    # -- engine -----------------------------------------------------------------------------

    def object_started(self, direction: Direction) -> None:
        """An object began (in-flight work goes up by one)."""

    def object_finished(self, direction: Direction, plaintext_bytes: int, ok: bool) -> None:
        """An object ended: counted once, with its plaintext size if it succeeded."""

    def batch_processed(self, direction: Direction, segments: int, seconds: float) -> None:
        """A worker sealed or opened `segments` segments in `seconds` (one thread hop)."""

    # -- KMS calls and the retry layer -------------------------------------------------------

    def kms_call_started(self, backend: str, operation: str) -> None:
        """One attempt of a backend call began (in-flight KMS calls go up by one)."""

    def kms_call_finished(
        self, backend: str, operation: str, outcome: KmsOutcome, seconds: float
    ) -> None:
        """One attempt ended after `seconds`, with `outcome`."""

    def kms_retry(
        self, backend: str, operation: str, reason: RetryReason, attempt: int, delay: float
    ) -> None:
        """Attempt number `attempt` failed with `reason`; the layer slept `delay` s and retries
        now (a call cancelled in its backoff is not counted: that retry is never sent)."""

    def kms_gave_up(self, backend: str, operation: str, reason: GiveUpReason) -> None:
        """The retry layer stopped: attempts, retry budget or deadline exhausted."""

    # -- data-key cache ----------------------------------------------------------------------

    def cache_lookup(self, cache: CacheName, hit: bool) -> None:
        """A request was served from the cache (hit) or needed a backend call (miss)."""

    def cache_eviction(self, cache: CacheName, reason: EvictionReason) -> None:
        """An entry left the cache and its key was zeroed."""

    def cache_refresh(self, cache: CacheName, ok: bool) -> None:
        """A refresh ahead of expiry finished (ok) or failed (the entry still dies on time)."""

    def cache_entries(self, cache: CacheName, count: int) -> None:
        """The number of live entries in `cache` is now `count`."""


class NullObserver:
    """Ignores every event. Subclass it to implement only some events."""

    def object_started(self, direction: Direction) -> None:
        return None

    def object_finished(self, direction: Direction, plaintext_bytes: int, ok: bool) -> None:
        return None

    def batch_processed(self, direction: Direction, segments: int, seconds: float) -> None:
        return None

    def kms_call_started(self, backend: str, operation: str) -> None:
        return None

    def kms_call_finished(
        self, backend: str, operation: str, outcome: KmsOutcome, seconds: float
    ) -> None:
        return None

    def kms_retry(
        self, backend: str, operation: str, reason: RetryReason, attempt: int, delay: float
    ) -> None:
        return None

    def kms_gave_up(self, backend: str, operation: str, reason: GiveUpReason) -> None:
        return None

    def cache_lookup(self, cache: CacheName, hit: bool) -> None:
        return None

    def cache_eviction(self, cache: CacheName, reason: EvictionReason) -> None:
        return None

    def cache_refresh(self, cache: CacheName, ok: bool) -> None:
        return None

    def cache_entries(self, cache: CacheName, count: int) -> None:
        return None

    def cache_entries_changed(self, cache: CacheName, delta: int) -> None:
        """Optional (not in `Observer`; called when an observer has it): one cache's live
        entries in `cache` changed by `delta`. An observer shared by several caches sums
        these; `cache_entries` gives one cache's count, which another's would overwrite."""
        return None


NULL_OBSERVER: Observer = NullObserver()
