"""Throttling tests can rely on: the request-rate quota, MemoryKms(quota=...), FaultyKms."""

from __future__ import annotations

import threading

import anyio
import pytest

from envelope.errors import (
    ConfigurationError,
    KmsTimeoutError,
    KmsTransientError,
    KmsUnavailableError,
    ThrottlingError,
)
from envelope.kms.faults import FaultyKms
from envelope.kms.memory import MemoryKms
from envelope.kms.quota import CRYPTOGRAPHIC, RateQuota, TokenBucket, family_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_families_follow_aws_kms() -> None:
    for op in ("GenerateDataKey", "Encrypt", "Decrypt", "ReEncrypt", "GenerateRandom"):
        assert family_of(op) == CRYPTOGRAPHIC
    assert family_of("CreateKey") == "CreateKey"
    assert family_of(CRYPTOGRAPHIC) == CRYPTOGRAPHIC


def test_quota_rate_and_burst_with_injected_clock() -> None:
    clock = FakeClock()
    quota = RateQuota({CRYPTOGRAPHIC: 10.0}, clock=clock)
    for _ in range(10):  # a burst of one second's worth
        quota.check("GenerateDataKey")
    with pytest.raises(ThrottlingError) as info:
        quota.check("Decrypt")  # same family: shares the bucket
    assert info.value.retry_after == pytest.approx(0.1)
    assert info.value.operation == "Decrypt"
    assert isinstance(info.value, KmsUnavailableError)
    quota.check("CreateKey")  # another family, not limited here
    clock.now += 0.1
    quota.check("Encrypt")  # one token back
    with pytest.raises(ThrottlingError):
        quota.check("Encrypt")
    clock.now += 10.0  # refills to the burst size, not beyond
    for _ in range(10):
        quota.check(CRYPTOGRAPHIC)
    with pytest.raises(ThrottlingError):
        quota.check(CRYPTOGRAPHIC)
    assert quota.throttled == {CRYPTOGRAPHIC: 3}


def test_quota_default_rate_and_burst() -> None:
    clock = FakeClock()
    quota = RateQuota(default=2.0, burst=4.0, clock=clock)
    for _ in range(4):
        quota.check("CreateKey")
    with pytest.raises(ThrottlingError):
        quota.check("CreateKey")
    quota.check("DescribeKey")  # its own bucket


def test_quota_is_thread_safe() -> None:
    quota = RateQuota({CRYPTOGRAPHIC: 1.0}, burst=500.0, clock=lambda: 0.0)
    admitted = 0
    lock = threading.Lock()

    def hammer() -> None:
        nonlocal admitted
        for _ in range(1000):
            try:
                quota.check("Decrypt")
            except ThrottlingError:
                continue
            with lock:
                admitted += 1

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted == 500


@pytest.mark.parametrize("bad", [{"rates": {"x": 0.0}}, {"default": -1.0}])
def test_quota_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RateQuota(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TokenBucket(1.0, 0.5, clock=lambda: 0.0)


@pytest.mark.anyio
async def test_memory_kms_answers_throttling_past_its_quota() -> None:
    clock = FakeClock()
    kms = MemoryKms(quota=RateQuota({CRYPTOGRAPHIC: 3.0}, clock=clock))
    key_id = kms.create_key()
    for _ in range(3):
        await kms.generate_data_key(key_id, context={})
    with pytest.raises(ThrottlingError):
        await kms.generate_data_key(key_id, context={})
    assert kms.calls["GenerateDataKey"] == 4 and kms.throttled["GenerateDataKey"] == 1
    clock.now += 1.0
    dk = await kms.generate_data_key(key_id, context={})
    assert await kms.decrypt_data_key(dk.wrapped, context={}) == dk.plaintext


@pytest.mark.anyio
async def test_faulty_kms_injects_at_set_rates_reproducibly() -> None:
    async def run(seed: int) -> tuple[dict[str, int], list[str]]:
        kms = MemoryKms()
        key_id = kms.create_key()
        flaky = FaultyKms(kms, throttle=0.2, transient=0.1, timeout=0.05, seed=seed)
        seen: list[str] = []
        for _ in range(4000):
            try:
                await flaky.generate_data_key(key_id, context={})
                seen.append("ok")
            except ThrottlingError:
                seen.append("throttle")
            except KmsTransientError:
                seen.append("transient")
            except KmsTimeoutError:
                seen.append("timeout")
        assert kms.calls["GenerateDataKey"] == seen.count("ok")  # faults never reach the KMS
        return dict(flaky.injected), seen

    injected, seen = await run(1)
    assert injected == {k: seen.count(k) for k in ("throttle", "transient", "timeout")}
    assert 700 < injected["throttle"] < 900  # 20% of 4000
    assert 300 < injected["transient"] < 500
    assert 120 < injected["timeout"] < 280
    assert (await run(1))[1] == seen  # the same seed replays the same faults


@pytest.mark.anyio
async def test_faulty_kms_script_operations_and_latency() -> None:
    kms = MemoryKms()
    key_id = kms.create_key()
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        await anyio.lowlevel.checkpoint()

    flaky = FaultyKms(
        kms, throttle=1.0, operations={"Decrypt"}, latency=0.005, script=[None], sleep=sleep
    )
    dk = await flaky.generate_data_key(key_id, context={})  # not a faulted operation
    await flaky.decrypt_data_key(dk.wrapped, context={})  # scripted clean call
    with pytest.raises(ThrottlingError):
        await flaky.decrypt_data_key(dk.wrapped, context={})
    flaky.push("transient")
    with pytest.raises(KmsTransientError):
        await flaky.decrypt_data_key(dk.wrapped, context={})
    assert slept == [0.005] * 4
    assert flaky.provider_id == "memory" and flaky.can_unwrap(dk.wrapped)


def test_faulty_kms_rates_are_validated() -> None:
    with pytest.raises(ConfigurationError):
        FaultyKms(MemoryKms(), throttle=0.7, transient=0.5)
    with pytest.raises(ConfigurationError):
        FaultyKms(MemoryKms(), latency=-1.0)
