"""A fault-injection wrapper: any backend, with throttles, transient errors, timeouts and latency.

    flaky = FaultyKms(MemoryKms(), throttle=0.3, seed=7)    # 30% of calls throttled
    kms = RetryingKms(flaky, RetryPolicy.bulk())            # ... and the retry layer absorbs them

Faults are drawn per call from a seeded `random.Random`, so a test replays the same sequence.
An injected fault is raised *before* the wrapped backend is called (the request never reached
the service), exactly as a throttled or failed request looks to a client. `script` forces the
next faults in order ("throttle", "transient", "timeout", or None for a clean call), ahead of
the random draws. Counters (`calls`, `injected`) let tests assert on what happened.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Literal

import anyio

from ..errors import ConfigurationError, KmsTimeoutError, KmsTransientError, ThrottlingError
from .base import DataKey, KmsBackend, WrappedKey

__all__ = ("Fault", "FaultyKms")

Fault = Literal["throttle", "transient", "timeout"]


class FaultyKms:
    """Wraps `inner`; each call is throttled, fails or is delayed at the given rates.

    throttle / transient / timeout: probabilities in [0, 1] (their sum at most 1) of raising
        `ThrottlingError`, `KmsTransientError` or `KmsTimeoutError` instead of calling `inner`.
    latency: seconds added to every call (also to faulted ones); jitter adds U(0, jitter).
    operations: only these operation names are faulted (default: all).
    """

    def __init__(
        self,
        inner: KmsBackend,
        *,
        throttle: float = 0.0,
        transient: float = 0.0,
        timeout: float = 0.0,
        latency: float = 0.0,
        jitter: float = 0.0,
        seed: int | None = None,
        operations: Iterable[str] | None = None,
        script: Iterable[Fault | None] = (),
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        for name, p in (("throttle", throttle), ("transient", transient), ("timeout", timeout)):
            if not 0.0 <= p <= 1.0:
                raise ConfigurationError(f"{name} rate must be in [0, 1]")
        if throttle + transient + timeout > 1.0:
            raise ConfigurationError("fault rates must add up to at most 1")
        if latency < 0 or jitter < 0:
            raise ConfigurationError("latency and jitter must be >= 0")
        self.inner = inner
        self.throttle = throttle
        self.transient = transient
        self.timeout = timeout
        self.latency = latency
        self.jitter = jitter
        self.operations = frozenset(operations) if operations is not None else None
        self.sleep = sleep
        self._rng = random.Random(seed)
        self._script: deque[Fault | None] = deque(script)
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"FaultyKms({self.inner!r}, throttle={self.throttle}, transient={self.transient}, "
            f"timeout={self.timeout}, latency={self.latency})"
        )

    @property
    def provider_id(self) -> str:
        return self.inner.provider_id

    def push(self, *faults: Fault | None) -> None:
        """Force the next calls' outcomes, in order (None = a clean call)."""
        with self._lock:
            self._script.extend(faults)

    def _draw(self, operation: str) -> tuple[Fault | None, float]:
        with self._lock:
            self.calls[operation] += 1
            delay = self.latency + (self._rng.uniform(0.0, self.jitter) if self.jitter else 0.0)
            if self.operations is not None and operation not in self.operations:
                return None, delay
            if self._script:
                fault = self._script.popleft()
            else:
                r = self._rng.random()
                fault = (
                    "throttle"
                    if r < self.throttle
                    else "transient"
                    if r < self.throttle + self.transient
                    else "timeout"
                    if r < self.throttle + self.transient + self.timeout
                    else None
                )
            if fault is not None:
                self.injected[fault] += 1
            return fault, delay

    async def _enter(self, operation: str) -> None:
        fault, delay = self._draw(operation)
        if delay:
            await self.sleep(delay)
        if fault == "throttle":
            raise ThrottlingError(f"injected throttle on {operation}", operation=operation)
        if fault == "transient":
            raise KmsTransientError(f"injected transient failure on {operation}")
        if fault == "timeout":
            raise KmsTimeoutError(f"injected timeout on {operation}")

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        await self._enter("GenerateDataKey")
        return await self.inner.generate_data_key(key_id, context=context)

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        await self._enter("Encrypt")
        return await self.inner.encrypt_data_key(key_id, plaintext, context=context)

    async def decrypt_data_key(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        await self._enter("Decrypt")
        return await self.inner.decrypt_data_key(wrapped, context=context)

    def can_unwrap(self, wrapped: WrappedKey) -> bool:
        return self.inner.can_unwrap(wrapped)

    async def aclose(self) -> None:
        await self.inner.aclose()
