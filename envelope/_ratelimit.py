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

import struct
import threading
import time
from collections.abc import Callable, Mapping

from .errors import ConfigurationError, ThrottlingError

__all__ = (
    "AWS_DEFAULT_RATES",
    "CRYPTOGRAPHIC",
    "OPERATION_FAMILIES",
    "RateQuota",
    "SharedTokenBucket",
    "TokenBucket",
    "family_of",
)

Clock = Callable[[], float]

#: A shared bucket's file: (tokens, stamp) as two little-endian doubles.
_SHARED = struct.Struct("<dd")

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


class SharedTokenBucket:
    """A `TokenBucket` whose state (tokens, stamp) lives in a 16-byte file that several
    processes share, updated under an exclusive `flock`: the worker processes of one server
    then enforce one rate together, and a client whose keep-alive connection lands on one
    worker is held to the server's rate, not to that worker's share of it. The clock must be
    the same in every process (`time.monotonic` is, on one machine)."""

    __slots__ = ("_fd", "_lock", "_map", "capacity", "clock", "rate")

    def __init__(
        self, path: str, rate: float, capacity: float | None = None, *, clock: Clock
    ) -> None:
        import mmap
        import os

        if not rate > 0:
            raise ConfigurationError("a token bucket needs a rate > 0")
        capacity = max(1.0, rate) if capacity is None else capacity
        if not capacity >= 1:
            raise ConfigurationError("a token bucket needs a capacity >= 1")
        self.rate, self.capacity, self.clock = float(rate), float(capacity), clock
        # `flock` excludes other open files, not other threads over this one: both are needed
        # (threads of one worker shared the lock, lost updates and let requests in free)
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        with self._locked():
            if os.fstat(self._fd).st_size < _SHARED.size:  # the first process to open it
                os.ftruncate(self._fd, _SHARED.size)
                os.pwrite(self._fd, _SHARED.pack(self.capacity, clock()), 0)
        self._map = mmap.mmap(self._fd, _SHARED.size)

    def _locked(self) -> _Flock:
        return _Flock(self._fd, self._lock)

    def take(self, n: float = 1.0) -> float:
        """Take `n` tokens: 0.0 if taken, else the seconds until they would be available."""
        with self._locked():
            tokens, stamp = _SHARED.unpack_from(self._map, 0)
            now = self.clock()
            elapsed = now - stamp
            if elapsed > 0:
                tokens = min(self.capacity, tokens + elapsed * self.rate)
            stamp = max(stamp, now)
            wait = 0.0
            if tokens >= n - 1e-9:
                tokens = max(0.0, tokens - n)
            else:
                wait = (n - tokens) / self.rate
            _SHARED.pack_into(self._map, 0, tokens, stamp)
            return wait

    def __repr__(self) -> str:
        return f"SharedTokenBucket(rate={self.rate}, capacity={self.capacity})"


class _Flock:
    """This process's lock, then an exclusive `flock` on the file, as a context manager."""

    __slots__ = ("_fd", "_lock")

    def __init__(self, fd: int, lock: threading.Lock) -> None:
        self._fd, self._lock = fd, lock

    def __enter__(self) -> None:
        import fcntl

        self._lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()


class RateQuota:
    """A request-rate quota per operation family; `check` raises `ThrottlingError` past it.

    `rates` maps families (or operation names, see `family_of`) to requests per second.
    `default`, if set, applies to every family not listed; otherwise unlisted families are
    unlimited. `burst` is the bucket capacity in requests (default: one second of rate).
    `shared_dir`: the buckets live in files there (`SharedTokenBucket`), one rate for every
    process that opens a quota over the same folder.
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        default: float | None = None,
        burst: float | Mapping[str, float] | None = None,
        clock: Clock = time.monotonic,
        shared_dir: str | None = None,
    ) -> None:
        self.rates = {family_of(k): float(v) for k, v in (rates or {}).items()}
        self.shared_dir = shared_dir
        for family, rate in self.rates.items():
            if not rate > 0:
                raise ConfigurationError(f"quota rate for {family!r} must be > 0")
        if default is not None and not default > 0:
            raise ConfigurationError("default quota rate must be > 0")
        self.default = default
        self._burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket | SharedTokenBucket] = {}
        self._lock = threading.Lock()
        self.throttled: dict[str, int] = {}
        for family in self.rates:  # shared ones: opened (made) now, not on a first request
            self._bucket(family)

    def __repr__(self) -> str:
        return f"RateQuota(rates={self.rates!r}, default={self.default!r})"

    def _bucket(self, family: str) -> TokenBucket | SharedTokenBucket | None:
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
                if self.shared_dir is not None:
                    import os

                    path = os.path.join(self.shared_dir, f"quota-{family}")
                    bucket = SharedTokenBucket(path, rate, burst, clock=self.clock)
                else:
                    bucket = TokenBucket(rate, burst, clock=self.clock)
                self._buckets[family] = bucket
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
