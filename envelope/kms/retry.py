"""The one retry layer for every KMS backend: classify, back off with full jitter, stop in time.

    kms = RetryingKms(backend, RetryPolicy.bulk())        # or Keyring(..., retry=RetryPolicy())

Rules (see docs/cache.md, "Retries"):

- Errors are classified as THROTTLED, TRANSIENT, TIMEOUT or FATAL (`classify_error`). FATAL
  errors (unknown key, wrong context, access denied, ...) are raised at once, never retried.
- Retry k (k = 1, 2, ...) sleeps ``U(0, min(cap, base * 2**(k-1)))`` ("full jitter"), with a
  larger base for throttling (1 s) than for transient errors and timeouts (50 ms). A server's
  retry-after hint is honoured, clamped to ``[d, d + retry_after_max_extra]``.
- A call stops after `max_attempts` attempts or when the next sleep would cross its overall
  `deadline`; each attempt is also cut at the deadline (and at `attempt_timeout`, if set).
- A retry budget (token bucket, one per backend) pays for each retry and is refilled by
  successes; when it is empty, calls fail fast instead of feeding a retry storm.
- Sleeping is cancellable: cancelling the caller interrupts a backoff at once.
- Retries live in this layer only. Wrapping a `RetryingKms` in another is refused, and a wrapped
  backend that offers ``disable_sdk_retries()`` has its SDK's own retries turned off (boto-based
  backends: pass `BOTOCORE_NO_RETRIES` as ``botocore.config.Config(retries=...)``).

Every attempt is reported to the observer (`kms_call_started` / `kms_call_finished`), so the
KMS call metrics count what was really sent, retries included.
"""

from __future__ import annotations

import enum
import random
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .._forksafe import renew_after_fork, renew_global_after_fork
from ..errors import (
    ConfigurationError,
    KmsError,
    KmsTimeoutError,
    KmsTransientError,
    KmsUnavailableError,
    RetryBudgetExhaustedError,
    RetryDeadlineExceededError,
    RetryExhaustedError,
    ThrottlingError,
)
from ..metrics import NULL_OBSERVER, KmsOutcome, Observer, RetryReason
from .base import BlockingKms, DataKey, KmsBackend, WrappedKey, state_paths_of

__all__ = (
    "BOTOCORE_NO_RETRIES",
    "ErrorKind",
    "RetryBudget",
    "RetryPolicy",
    "Retrier",
    "RetryingKms",
    "classify_error",
    "shared_budget",
)

T = TypeVar("T")


async def _anyio_sleep(seconds: float) -> None:
    import anyio  # loaded by the first retry that waits, not by importing this module

    await anyio.sleep(seconds)


Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

#: botocore ``Config(retries=BOTOCORE_NO_RETRIES)``: one attempt, so only this layer retries.
BOTOCORE_NO_RETRIES: Mapping[str, object] = {"total_max_attempts": 1, "mode": "standard"}


class ErrorKind(enum.Enum):
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    FATAL = "fatal"


# -- classification -------------------------------------------------------------------------

#: Error codes meaning "slow down" (botocore's list, plus KMS's own).
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "EC2ThrottledException",
    }
)
#: Error codes meaning "try again" (botocore's transient codes plus KMS's internal errors).
TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "KMSInternalException",
        "KMSInternal",
        "DependencyTimeoutException",
    }
)
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


def _code_and_status(exc: BaseException) -> tuple[str | None, int | None]:
    """Duck-typed error code and HTTP status (botocore ``ClientError`` and similar)."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error")
        meta = response.get("ResponseMetadata")
        code = error.get("Code") if isinstance(error, Mapping) else None
        status = meta.get("HTTPStatusCode") if isinstance(meta, Mapping) else None
        return (
            code if isinstance(code, str) else None,
            status if isinstance(status, int) else None,
        )
    code = getattr(exc, "code", None)
    return (code if isinstance(code, str) else None), None


def classify_error(exc: BaseException) -> ErrorKind:
    """THROTTLED, TRANSIENT, TIMEOUT or FATAL. Unknown errors are FATAL (never retried)."""
    if isinstance(exc, ThrottlingError):
        return ErrorKind.THROTTLED
    if isinstance(exc, RetryExhaustedError):
        return ErrorKind.FATAL  # a nested layer already retried: never multiply retries
    if isinstance(exc, KmsTimeoutError | TimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, KmsTransientError):
        return ErrorKind.TRANSIENT
    code, status = _code_and_status(exc)  # an AWS-style error code or HTTP status, if any
    if code in THROTTLING_CODES or status == 429:
        return ErrorKind.THROTTLED
    if isinstance(exc, KmsUnavailableError):  # "unavailable", not further described
        return ErrorKind.TRANSIENT
    if isinstance(exc, KmsError):  # KmsKeyError, NoBackendError: a refusal
        return ErrorKind.FATAL
    if code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
        return ErrorKind.TRANSIENT
    anyio = sys.modules.get("anyio")  # an anyio error can only exist once anyio is loaded
    if isinstance(exc, ConnectionError) or (
        anyio is not None and isinstance(exc, anyio.BrokenResourceError)
    ):
        return ErrorKind.TRANSIENT
    return ErrorKind.FATAL


# -- policy and budget ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to retry one backend call. Profiles: `default()`, `bulk()`, `none()`.

    max_attempts: attempts in all, the first included (1 = never retry).
    deadline: seconds from the first attempt after which the call fails (RetryDeadlineExceeded).
    throttle_base / transient_base: backoff base for THROTTLED, and for TRANSIENT and TIMEOUT.
    cap: the largest single backoff.
    attempt_timeout: cut one attempt after this many seconds (a TIMEOUT, retried); None = only
        the deadline cuts attempts.
    retry_after_max_extra: a server's retry-after hint may lengthen a backoff by at most this.
    budget_capacity: the retry budget's size (None = no budget); the costs are what one retry
        of each kind takes from it; a first-try success puts `success_refund` back.
    """

    max_attempts: int = 3
    deadline: float = 30.0
    throttle_base: float = 1.0
    transient_base: float = 0.05
    cap: float = 20.0
    attempt_timeout: float | None = None
    retry_after_max_extra: float = 5.0
    budget_capacity: int | None = 500
    throttle_cost: int = 5
    transient_cost: int = 14
    timeout_cost: int = 10
    success_refund: int = 1

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or not 1 <= self.max_attempts <= 100
        ):  # (2.5 attempts was taken; review)
            raise ConfigurationError(
                f"max_attempts must be a whole number 1..100, not {self.max_attempts!r}"
            )
        # numbers, not text ("5" failed as a raw TypeError from a comparison; review)
        for name in ("deadline", "throttle_base", "transient_base", "cap", "attempt_timeout",
                     "retry_after_max_extra"):  # fmt: skip
            value = getattr(self, name)
            if value is None and name == "attempt_timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
        for name in ("budget_capacity", "throttle_cost", "transient_cost", "timeout_cost",
                     "success_refund"):  # fmt: skip
            value = getattr(self, name)
            if value is None and name == "budget_capacity":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{name} must be a whole number, not {value!r}")
        if not 0 < self.deadline <= 3600:
            raise ConfigurationError("deadline must be in (0, 3600] seconds")
        for name in ("throttle_base", "transient_base", "cap"):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigurationError(f"{name} must be in (0, 3600] seconds")
        if self.attempt_timeout is not None and not 0 < self.attempt_timeout <= self.deadline:
            raise ConfigurationError("attempt_timeout must be in (0, deadline]")
        if not 0 <= self.retry_after_max_extra <= 3600:
            raise ConfigurationError("retry_after_max_extra must be in [0, 3600] seconds")
        if self.budget_capacity is not None and self.budget_capacity < 1:
            raise ConfigurationError("budget_capacity must be >= 1 (or None for no budget)")
        for name in ("throttle_cost", "transient_cost", "timeout_cost", "success_refund"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must be >= 0")

    @classmethod
    def default(cls) -> RetryPolicy:
        """Interactive work: 3 attempts, 30 s deadline (the AWS SDKs' standard mode)."""
        return cls()

    @classmethod
    def bulk(cls) -> RetryPolicy:
        """Batch/ETL jobs, where finishing matters more than latency: 8 attempts, 120 s."""
        return cls(max_attempts=8, deadline=120.0)

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt: errors surface unchanged (the layer still reports every call).

        The deadline is the largest allowed (1 h), so that merely observing calls does not
        cut slow ones.
        """
        return cls(max_attempts=1, deadline=3600.0, budget_capacity=None)

    def base_for(self, kind: ErrorKind) -> float:
        return self.throttle_base if kind is ErrorKind.THROTTLED else self.transient_base

    def backoff_bound(self, kind: ErrorKind, retry: int) -> float:
        """The upper bound of the sleep before retry number `retry` (1-based)."""
        return min(self.cap, self.base_for(kind) * 2.0 ** min(retry - 1, 64))

    def cost_of(self, kind: ErrorKind) -> int:
        if kind is ErrorKind.THROTTLED:
            return self.throttle_cost
        if kind is ErrorKind.TIMEOUT:
            return self.timeout_cost
        return self.transient_cost


class RetryBudget:
    """A token bucket that pays for retries (botocore's retry quota); thread-safe.

    `acquire(cost)` takes tokens for a retry or refuses; `release(amount)` refills after a
    success, up to `capacity`. Share one budget per backend client.
    """

    __slots__ = ("__weakref__", "_lock", "_tokens", "capacity")

    def __init__(self, capacity: int = 500) -> None:
        if capacity < 1:
            raise ConfigurationError("a retry budget needs a capacity >= 1")
        self.capacity = capacity
        self._tokens = capacity
        self._lock = threading.Lock()
        renew_after_fork(self)  # (every successful call takes it: a child must not wait)

    @property
    def available(self) -> int:
        return self._tokens

    def acquire(self, cost: int) -> bool:
        with self._lock:
            if cost > self._tokens:
                return False
            self._tokens -= cost
            return True

    def release(self, amount: int) -> None:
        if amount <= 0:
            return
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + amount)

    def __repr__(self) -> str:
        return f"RetryBudget({self._tokens}/{self.capacity})"


_budgets: weakref.WeakKeyDictionary[object, RetryBudget] = weakref.WeakKeyDictionary()
_budgets_lock = threading.Lock()
renew_global_after_fork(globals(), "_budgets_lock")


def shared_budget(backend: object, capacity: int) -> RetryBudget:
    """The one retry budget of a backend client, shared by every wrapper built over it.

    Backends that cannot be weakly referenced get a budget of their own per call.
    """
    with _budgets_lock:
        try:
            budget = _budgets.get(backend)
            if budget is None or budget.capacity != capacity:
                budget = _budgets[backend] = RetryBudget(capacity)
            return budget
        except TypeError:
            return RetryBudget(capacity)


class _Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


_OUTCOME: Mapping[ErrorKind, KmsOutcome] = {
    ErrorKind.THROTTLED: "throttled",
    ErrorKind.TRANSIENT: "transient",
    ErrorKind.TIMEOUT: "timeout",
    ErrorKind.FATAL: "error",
}
_REASON: Mapping[ErrorKind, RetryReason] = {
    ErrorKind.THROTTLED: "throttled",
    ErrorKind.TRANSIENT: "transient",
    ErrorKind.TIMEOUT: "timeout",
}


class Retrier:
    """Runs calls under a `RetryPolicy`. `sleep`, `clock` and `rng` are injectable for tests."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        backend: str = "kms",
        budget: RetryBudget | None = None,
        observer: Observer = NULL_OBSERVER,
        sleep: Sleep | None = None,
        clock: Clock = time.monotonic,
        rng: _Uniform | None = None,
        classify: Callable[[BaseException], ErrorKind] = classify_error,
        sleep_blocking: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy if policy is not None else RetryPolicy()
        self.sleep_blocking = sleep_blocking
        self.backend = backend
        if budget is None and self.policy.budget_capacity is not None:
            budget = RetryBudget(self.policy.budget_capacity)
        self.budget = budget
        self.observer = observer
        self.sleep: Sleep = sleep if sleep is not None else _anyio_sleep
        self.clock = clock
        self.rng: _Uniform = rng if rng is not None else random.Random()
        self.classify = classify

    def __repr__(self) -> str:
        return f"Retrier(backend={self.backend!r}, policy={self.policy!r}, budget={self.budget!r})"

    def _give_up(
        self,
        cls: type[RetryExhaustedError],
        operation: str,
        attempts: int,
        kind: ErrorKind,
        detail: str,
        last: BaseException | None = None,
    ) -> RetryExhaustedError:
        """The error to raise: it names the last backend error too (an unreachable endpoint
        must not read like a KMS outage), whose object is also its ``__cause__``."""
        self.observer.kms_gave_up(self.backend, operation, cls.reason)
        why = ""
        if last is not None:
            text = next(iter(str(last).splitlines()), "")
            why = f" ({type(last).__name__}: {text[:300]})" if text else f" ({type(last).__name__})"
        return cls(
            f"{operation} on {self.backend}: {detail} after {attempts} attempt(s); "
            f"last error was {kind.value}{why}",
            backend=self.backend,
            operation=operation,
            attempts=attempts,
            kind=kind,
        )

    async def call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` (one attempt per call) until it succeeds or the policy says stop."""
        policy, observer, backend = self.policy, self.observer, self.backend
        start = self.clock()
        spent = 0
        attempt = 1
        while True:
            remaining = policy.deadline - (self.clock() - start)
            limit = remaining
            if policy.attempt_timeout is not None:
                limit = min(limit, policy.attempt_timeout)
            observer.kms_call_started(backend, operation)
            t0 = time.perf_counter()
            error: Exception | None = None
            try:
                import anyio

                with anyio.move_on_after(limit) as scope:
                    result = await fn()
            except Exception as exc:
                error = exc
            except BaseException:
                observer.kms_call_finished(
                    backend, operation, "cancelled", time.perf_counter() - t0
                )
                raise
            seconds = time.perf_counter() - t0
            if error is None and not scope.cancelled_caught:
                self._succeeded(operation, seconds, spent)
                return result
            if error is None:  # the attempt was cut by the deadline or attempt_timeout
                observer.kms_call_finished(backend, operation, "timeout", seconds)
                if limit >= remaining:
                    raise self._give_up(
                        RetryDeadlineExceededError,
                        operation,
                        attempt,
                        ErrorKind.TIMEOUT,
                        f"deadline of {policy.deadline:g} s passed",
                    )
                kind = ErrorKind.TIMEOUT
                error = KmsTimeoutError(
                    f"{operation} on {backend}: attempt timed out after {limit:g} s"
                )
            else:
                kind = self.classify(error)
                observer.kms_call_finished(backend, operation, _OUTCOME[kind], seconds)
            delay, cost = self._next_retry(operation, attempt, start, kind, error)
            try:
                await self.sleep(delay)
            except BaseException:
                self._not_retried(cost)
                raise
            spent += cost
            observer.kms_retry(backend, operation, _REASON[kind], attempt, delay)
            attempt += 1

    def call_blocking(self, operation: str, fn: Callable[[], T]) -> T:
        """`call` for a blocking `fn`, on the calling thread (no event loop): the same policy,
        budget and reports. A blocking attempt cannot be cut short here, so `attempt_timeout`
        is the backend's own (its connect and read timeouts); the deadline still bounds the
        retries."""
        observer, backend = self.observer, self.backend
        start = self.clock()
        spent = 0
        attempt = 1
        while True:
            observer.kms_call_started(backend, operation)
            t0 = time.perf_counter()
            try:
                result = fn()
            except Exception as exc:
                error: Exception = exc
            except BaseException:
                observer.kms_call_finished(
                    backend, operation, "cancelled", time.perf_counter() - t0
                )
                raise
            else:
                self._succeeded(operation, time.perf_counter() - t0, spent)
                return result
            kind = self.classify(error)
            observer.kms_call_finished(
                backend, operation, _OUTCOME[kind], time.perf_counter() - t0
            )
            delay, cost = self._next_retry(operation, attempt, start, kind, error)
            try:
                self.sleep_blocking(delay)
            except BaseException:  # Ctrl-C in the backoff: the retry is never sent
                self._not_retried(cost)
                raise
            spent += cost
            observer.kms_retry(backend, operation, _REASON[kind], attempt, delay)
            attempt += 1

    def _succeeded(self, operation: str, seconds: float, spent: int) -> None:
        self.observer.kms_call_finished(self.backend, operation, "ok", seconds)
        if self.budget is not None:
            self.budget.release(spent if spent else self.policy.success_refund)

    def _not_retried(self, cost: int) -> None:
        """A call cancelled (or interrupted) in its backoff: the retry it paid for is never
        sent, so its tokens go back and it is not counted (they were kept, and a burst of
        cancelled calls drained the budget for everyone)."""
        if self.budget is not None:
            self.budget.release(cost)

    def _next_retry(
        self, operation: str, attempt: int, start: float, kind: ErrorKind, error: Exception
    ) -> tuple[float, int]:
        """After a failed attempt: (the backoff before the next, the budget it took), or the
        error to raise (a fatal one, attempts, budget or deadline spent)."""
        policy = self.policy
        if kind is ErrorKind.FATAL or policy.max_attempts == 1:
            raise error  # never retried / retries off: the backend's own error
        if attempt >= policy.max_attempts:
            raise self._give_up(
                RetryExhaustedError,
                operation,
                attempt,
                kind,
                "gave up",
                error,
            ) from error
        cost = policy.cost_of(kind)
        if self.budget is not None and not self.budget.acquire(cost):
            raise self._give_up(
                RetryBudgetExhaustedError,
                operation,
                attempt,
                kind,
                "retry budget exhausted (the backend is failing widely)",
                error,
            ) from error
        delay = self.rng.uniform(0.0, policy.backoff_bound(kind, attempt))
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, int | float) and hint > delay:
            delay = min(float(hint), delay + policy.retry_after_max_extra)
        if (self.clock() - start) + delay >= policy.deadline:
            if self.budget is not None:
                self.budget.release(cost)
            raise self._give_up(
                RetryDeadlineExceededError,
                operation,
                attempt,
                kind,
                f"the next backoff would pass the deadline of {policy.deadline:g} s",
                error,
            ) from error
        return delay, cost


class RetryingKms:
    """A `KmsBackend` that runs every call of `inner` through one `Retrier`.

    Over a backend with a blocking face (`BlockingKms`: a key file, the memory fake, the
    embedded KMS, boto3) it has one too (`_BlockingRetryingKms`, chosen by the
    constructor), with the same retries on the calling thread: a blocking caller's cache
    miss then needs no event loop (it went through the process-wide portal, whose start-up
    the CLI paid on every run)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> RetryingKms:
        # (no required argument here: copy and pickle make the object with none)
        inner = args[0] if args else kwargs.get("inner")
        if cls is RetryingKms and isinstance(inner, BlockingKms):
            cls = _BlockingRetryingKms
        return super().__new__(cls)

    def __init__(
        self,
        inner: KmsBackend,
        policy: RetryPolicy | None = None,
        *,
        name: str | None = None,
        budget: RetryBudget | None = None,
        observer: Observer = NULL_OBSERVER,
        sleep: Sleep | None = None,
        clock: Clock = time.monotonic,
        rng: _Uniform | None = None,
        classify: Callable[[BaseException], ErrorKind] = classify_error,
    ) -> None:
        if isinstance(inner, RetryingKms):
            raise ConfigurationError("this backend already retries: retries would multiply")
        disable: Any = getattr(inner, "disable_sdk_retries", None)
        if callable(disable):
            disable()
        self.inner = inner
        self.retrier = Retrier(
            policy,
            backend=name or inner.provider_id,
            budget=budget,
            observer=observer,
            sleep=sleep,
            clock=clock,
            rng=rng,
            classify=classify,
        )

    def __repr__(self) -> str:
        return f"RetryingKms({self.inner!r}, {self.retrier.policy!r})"

    @property
    def provider_id(self) -> str:
        return self.inner.provider_id

    @property
    def observer(self) -> Observer:
        return self.retrier.observer

    @observer.setter
    def observer(self, value: Observer) -> None:
        self.retrier.observer = value

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        return await self.retrier.call(
            "GenerateDataKey", lambda: self.inner.generate_data_key(key_id, context=context)
        )

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        return await self.retrier.call(
            "Encrypt", lambda: self.inner.encrypt_data_key(key_id, plaintext, context=context)
        )

    async def decrypt_data_key(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        return await self.retrier.call(
            "Decrypt", lambda: self.inner.decrypt_data_key(wrapped, context=context)
        )

    def can_unwrap(self, wrapped: WrappedKey) -> bool:
        return self.inner.can_unwrap(wrapped)

    def state_paths(self) -> tuple[str, ...]:
        return state_paths_of(self.inner)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _BlockingRetryingKms(RetryingKms):
    """`RetryingKms` over a `BlockingKms`, with the blocking face too."""

    def generate_data_key_blocking(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        inner: BlockingKms = self.inner  # type: ignore[assignment]  # (__new__ checked it)
        return self.retrier.call_blocking(
            "GenerateDataKey", lambda: inner.generate_data_key_blocking(key_id, context=context)
        )

    def decrypt_data_key_blocking(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        inner: BlockingKms = self.inner  # type: ignore[assignment]  # (__new__ checked it)
        return self.retrier.call_blocking(
            "Decrypt", lambda: inner.decrypt_data_key_blocking(wrapped, context=context)
        )

    def close_blocking(self) -> None:
        inner: BlockingKms = self.inner  # type: ignore[assignment]  # (__new__ checked it)
        inner.close_blocking()
