"""Every token call timed into one Prometheus histogram, ``envelope_hsm_call_seconds``.

Labels: ``op`` (the call: encrypt, decrypt, create_key, find_key, login, ...) and ``outcome``
(ok, decrypt_failed, key_not_found, key_exists, unavailable, error): fixed vocabularies, never a
key label, so cardinality stays bounded. The buckets start at 10 microseconds, since a call to a
software token takes tens of microseconds and one to a network HSM about a millisecond.

The histogram is made on first use in prometheus-client's default registry (so
``serve_metrics`` and ``$PROMETHEUS_MULTIPROC_DIR`` see it); a server with its own registry adds
it with ``registry.register(call_histogram())``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .errors import KeyAlreadyInToken, KeyNotInToken, TokenDecryptError, TokenUnavailable

if TYPE_CHECKING:
    from prometheus_client import Histogram

__all__ = ("call_histogram", "observe", "outcome_of")

_lock = threading.Lock()
_histogram: Histogram | None = None
_children: dict[tuple[str, str], Any] = {}


def call_histogram() -> Histogram:
    """The histogram, registered in the default registry the first time it is asked for."""
    global _histogram
    if _histogram is None:
        with _lock:
            if _histogram is None:
                from prometheus_client import Histogram

                from ..prometheus import LATENCY_BUCKETS

                _histogram = Histogram(
                    "envelope_hsm_call_seconds",
                    "Time of one call into the PKCS#11 token, by call and outcome",
                    ("op", "outcome"),
                    buckets=LATENCY_BUCKETS,
                )
    return _histogram


def observe(op: str, outcome: str, seconds: float) -> None:
    child = _children.get((op, outcome))
    if child is None:
        # labels() costs as much as the observation itself: look each pair up once
        child = _children[(op, outcome)] = call_histogram().labels(op, outcome)
    child.observe(seconds)


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, TokenDecryptError):
        return "decrypt_failed"
    if isinstance(exc, KeyNotInToken):
        return "key_not_found"
    if isinstance(exc, KeyAlreadyInToken):
        return "key_exists"
    if isinstance(exc, TokenUnavailable):
        return "unavailable"
    return "error"
