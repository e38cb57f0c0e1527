"""Request-rate quotas per operation family, as AWS KMS enforces them, for fakes and the KMS.

AWS KMS does not rate-limit each API on its own: most cryptographic operations (GenerateDataKey,
Encrypt, Decrypt, ReEncrypt, ...) share one "cryptographic operations" request rate per account
and region, while control-plane calls (CreateKey, DescribeKey, ...) have quotas of their own.
Past the rate, the service answers ``ThrottlingException`` at once. `RateQuota` models exactly
that with one token bucket per family::

    quota = RateQuota({"cryptographic": 100.0})      # 100 requests/s, bursts of 100
    quota.check("GenerateDataKey")                   # raises ThrottlingError past the rate

`check` is synchronous, thread-safe and never sleeps, so the in-memory backend, a fault wrapper
and the embedded KMS service (sync or async) can all call it. The clock is injectable.

A leaf module (it imports only `envelope.errors`): the KMS clients (`envelope.kms`) and the KMS
service (`envelope.service`) both use it without importing each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from .errors import ConfigurationError, ThrottlingError

__all__ = (
    "AWS_DEFAULT_RATES",
    "CRYPTOGRAPHIC",
    "OPERATION_FAMILIES",
    "RateQuota",
    "TokenBucket",
    "family_of",
)

Clock = Callable[[], float]

#: The family shared by the symmetric cryptographic operations.
CRYPTOGRAPHIC = "cryptographic"

#: Operation name -> quota family. Operations not listed form a family of their own name.
OPERATION_FAMILIES: Mapping[str, str] = {
    "Decrypt": CRYPTOGRAPHIC,
    "Encrypt": CRYPTOGRAPHIC,
    "GenerateDataKey": CRYPTOGRAPHIC,
    "GenerateDataKeyWithoutPlaintext": CRYPTOGRAPHIC,
    "GenerateMac": CRYPTOGRAPHIC,
    "GenerateRandom": CRYPTOGRAPHIC,
    "ReEncrypt": CRYPTOGRAPHIC,
    "VerifyMac": CRYPTOGRAPHIC,
}

#: AWS KMS's smallest regional default rates (requests per second), for realistic fakes.
AWS_DEFAULT_RATES: Mapping[str, float] = {
    CRYPTOGRAPHIC: 5500.0,
    "CreateKey": 5.0,
    "CreateAlias": 5.0,
    "DescribeKey": 2000.0,
    "ListKeys": 100.0,
    "ListAliases": 100.0,
    "ScheduleKeyDeletion": 5.0,
    "EnableKey": 5.0,
    "DisableKey": 5.0,
}


def family_of(operation: str) -> str:
    """The quota family of an operation name (a family name maps to itself)."""
    return OPERATION_FAMILIES.get(operation, operation)


class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second; thread-safe."""

    __slots__ = ("_lock", "_stamp", "_tokens", "capacity", "clock", "rate")

    def __init__(self, rate: float, capacity: float | None = None, *, clock: Clock) -> None:
        if not rate > 0:
            raise ConfigurationError("a token bucket needs a rate > 0")
        # default: one second of rate, and never less than one request (a rate below 1/s,
        # such as one worker's share of a small quota, still admits a request now and then)
        capacity = max(1.0, rate) if capacity is None else capacity
        if not capacity >= 1:
            raise ConfigurationError("a token bucket needs a capacity >= 1")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.clock = clock
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> float:
        """Take `n` tokens: 0.0 if taken, else the seconds until they would be available."""
        with self._lock:
            now = self.clock()
            elapsed = now - self._stamp
            if elapsed > 0:
                self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._stamp = max(self._stamp, now)
            if self._tokens >= n - 1e-9:  # tolerate float rounding of elapsed * rate
                self._tokens = max(0.0, self._tokens - n)
                return 0.0
            return (n - self._tokens) / self.rate

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, capacity={self.capacity})"


class RateQuota:
    """A request-rate quota per operation family; `check` raises `ThrottlingError` past it.

    `rates` maps families (or operation names, see `family_of`) to requests per second.
    `default`, if set, applies to every family not listed; otherwise unlisted families are
    unlimited. `burst` is the bucket capacity in requests (default: one second of rate).
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        default: float | None = None,
        burst: float | Mapping[str, float] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.rates = {family_of(k): float(v) for k, v in (rates or {}).items()}
        for family, rate in self.rates.items():
            if not rate > 0:
                raise ConfigurationError(f"quota rate for {family!r} must be > 0")
        if default is not None and not default > 0:
            raise ConfigurationError("default quota rate must be > 0")
        self.default = default
        self._burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()
        self.throttled: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"RateQuota(rates={self.rates!r}, default={self.default!r})"

    def _bucket(self, family: str) -> TokenBucket | None:
        bucket = self._buckets.get(family)
        if bucket is not None:
            return bucket
        rate = self.rates.get(family, self.default)
        if rate is None:
            return None
        burst = self._burst.get(family) if isinstance(self._burst, Mapping) else self._burst
        with self._lock:
            bucket = self._buckets.get(family)
            if bucket is None:
                bucket = self._buckets[family] = TokenBucket(rate, burst, clock=self.clock)
        return bucket

    def check(self, operation_family: str) -> None:
        """Admit one request of `operation_family` (or of an operation name), or throttle it."""
        family = family_of(operation_family)
        bucket = self._bucket(family)
        if bucket is None:
            return
        wait = bucket.take()
        if wait:
            with self._lock:
                self.throttled[family] = self.throttled.get(family, 0) + 1
            raise ThrottlingError(
                f"rate exceeded for {family} operations ({bucket.rate:g}/s)",
                operation=operation_family,
                retry_after=wait,
            )
