"""Observing the pipeline without importing a metrics library.

The engine, the key cache, the retry layer and the backends report events to an `Observer`.
`NULL_OBSERVER` ignores them (the default); `envelope.prometheus.PrometheusObserver` turns
them into Prometheus metrics. Events carry counts, sizes, durations and names only: never key
material, plaintext or ciphertext.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ("NULL_OBSERVER", "NullObserver", "Observer", "Direction")

Direction = Literal["encrypt", "decrypt"]


class Observer(Protocol):
    """Receives pipeline events. Implementations must be cheap and thread-safe."""

    def object_started(self, direction: Direction) -> None:
        """An object began (in-flight work goes up by one)."""

    def object_finished(self, direction: Direction, plaintext_bytes: int, ok: bool) -> None:
        """An object ended: counted once, with its plaintext size if it succeeded."""

    def batch_processed(self, direction: Direction, segments: int, seconds: float) -> None:
        """A worker sealed or opened `segments` segments in `seconds` (one thread hop)."""


class NullObserver:
    """Ignores every event."""

    def object_started(self, direction: Direction) -> None:
        return None

    def object_finished(self, direction: Direction, plaintext_bytes: int, ok: bool) -> None:
        return None

    def batch_processed(self, direction: Direction, segments: int, seconds: float) -> None:
        return None


NULL_OBSERVER: Observer = NullObserver()
