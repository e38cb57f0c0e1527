"""The retry layer: classification, full-jitter backoff, budget, deadline, cancellation."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from envelope import api
from envelope.errors import (
    ConfigurationError,
    KmsKeyError,
    KmsTimeoutError,
    KmsTransientError,
    KmsUnavailableError,
    NoBackendError,
    RetryBudgetExhaustedError,
    RetryDeadlineExceededError,
    RetryExhaustedError,
    ThrottlingError,
)
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.base import DataKey, WrappedKey
from envelope.kms.faults import FaultyKms
from envelope.kms.memory import MemoryKms
from envelope.kms.quota import RateQuota
from envelope.kms.retry import (
    ErrorKind,
    RetryBudget,
    RetryingKms,
    RetryPolicy,
    classify_error,
)
from envelope.metrics import GiveUpReason, KmsOutcome, NullObserver, RetryReason

SMALL = api.Options(segment_size=4096, workers=1)


class Recorder(NullObserver):
    """Records retries and attempt outcomes."""

    def __init__(self) -> None:
        self.retries: list[tuple[RetryReason, int, float]] = []
        self.outcomes: list[str] = []
        self.gave_up: list[str] = []
        self.retried = anyio.Event()

    def kms_retry(
        self, backend: str, operation: str, reason: RetryReason, attempt: int, delay: float
    ) -> None:
        self.retries.append((reason, attempt, delay))
        self.retried.set()

    def kms_call_finished(
        self, backend: str, operation: str, outcome: KmsOutcome, seconds: float
    ) -> None:
        self.outcomes.append(outcome)

    def kms_gave_up(self, backend: str, operation: str, reason: GiveUpReason) -> None:
        self.gave_up.append(reason)


class FakeTime:
    """An injectable clock and sleep: sleeping advances the clock and is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await self.record(seconds)

    async def record(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await anyio.lowlevel.checkpoint()


class Highest:
    """An rng that always draws the top of the range (the worst-case backoff)."""

    def uniform(self, a: float, b: float) -> float:
        return b


class ClientError(Exception):
    """Shaped like botocore's ClientError."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


class Coded(KmsUnavailableError):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ThrottlingError(), ErrorKind.THROTTLED),
        (KmsTransientError("x"), ErrorKind.TRANSIENT),
        (KmsUnavailableError("x"), ErrorKind.TRANSIENT),
        (KmsTimeoutError("x"), ErrorKind.TIMEOUT),
        (TimeoutError(), ErrorKind.TIMEOUT),
        (ConnectionResetError(), ErrorKind.TRANSIENT),
        (KmsKeyError("x"), ErrorKind.FATAL),
        (NoBackendError("x"), ErrorKind.FATAL),
        (ValueError("x"), ErrorKind.FATAL),
        (ClientError("ThrottlingException", 400), ErrorKind.THROTTLED),
        (Coded("ThrottlingException"), ErrorKind.THROTTLED),  # a backend's own error + code
        (ClientError("TooManyRequestsException", 429), ErrorKind.THROTTLED),
        (ClientError("KMSInternalException", 500), ErrorKind.TRANSIENT),
        (ClientError("Whatever", 503), ErrorKind.TRANSIENT),
        (ClientError("AccessDeniedException", 400), ErrorKind.FATAL),
        (ClientError("InvalidCiphertextException", 400), ErrorKind.FATAL),
        (ClientError("DisabledException", 400), ErrorKind.FATAL),
        (
            RetryExhaustedError(
                "x", backend="b", operation="o", attempts=3, kind=ErrorKind.THROTTLED
            ),
            ErrorKind.FATAL,  # an inner layer already retried: never multiply retries
        ),
    ],
)
def test_classification(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_error(exc) is kind


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"deadline": 0.0},
        {"throttle_base": 0.0},
        {"cap": -1.0},
        {"attempt_timeout": 100.0},
        {"budget_capacity": 0},
        {"throttle_cost": -1},
    ],
)
def test_policy_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


def test_profiles() -> None:
    d, b, n = RetryPolicy.default(), RetryPolicy.bulk(), RetryPolicy.none()
    assert (d.max_attempts, d.deadline, d.throttle_base, d.transient_base, d.cap) == (
        3,
        30.0,
        1.0,
        0.05,
        20.0,
    )
    assert (b.max_attempts, b.deadline) == (8, 120.0)
    assert n.max_attempts == 1
    assert d.backoff_bound(ErrorKind.THROTTLED, 1) == 1.0
    assert d.backoff_bound(ErrorKind.THROTTLED, 3) == 4.0
    assert d.backoff_bound(ErrorKind.TRANSIENT, 2) == 0.1
    assert d.backoff_bound(ErrorKind.THROTTLED, 10) == 20.0  # capped


@pytest.mark.anyio
async def test_job_of_5000_objects_survives_30_percent_throttling() -> None:
    """Every object decrypts; every sleep is within the full-jitter bound of its retry."""
    kms = MemoryKms()
    key_id = kms.create_key()
    flaky = FaultyKms(kms, throttle=0.3, seed=4)
    fake = FakeTime()
    rec = Recorder()
    # The bulk profile, with more attempts: 10,000 calls at 30% would exhaust 8 attempts
    # about once in 1.5 runs (10,000 * 0.3**8); 12 makes it about once in 200 runs.
    policy = RetryPolicy(max_attempts=12, deadline=120.0)
    # Sleeps are recorded, not slept. The clock stays real: one fake clock shared by 64
    # concurrent tasks would add up all their sleeps and hit the deadline.
    retrying = RetryingKms(flaky, policy, sleep=fake.record, rng=random.Random(5), observer=rec)
    kr = Keyring(retrying, key_id)  # no cache: every object makes its own KMS calls
    objects = [f"object {i}".encode() * 10 for i in range(5000)]
    results: list[bool] = [False] * len(objects)
    limit = anyio.CapacityLimiter(64)

    async def one(i: int) -> None:
        async with limit:
            ct = await api.encrypt_bytes(
                objects[i], keyring=kr, object_context={"i": str(i)}, options=SMALL
            )
            pt = await api.decrypt_bytes(
                ct, keyring=kr, expected_context={"i": str(i)}, options=SMALL
            )
            results[i] = pt == objects[i]

    async with anyio.create_task_group() as tg:
        for i in range(len(objects)):
            tg.start_soon(one, i)

    assert all(results)
    assert kms.calls["GenerateDataKey"] == 5000 and kms.calls["Decrypt"] == 5000
    throttles = flaky.injected["throttle"]
    assert 2000 < throttles < 6000  # ~ 10,000 * 0.3 / 0.7
    assert len(rec.retries) == throttles == len(fake.sleeps)  # every throttle retried once
    assert rec.outcomes.count("throttled") == throttles
    assert rec.outcomes.count("ok") == 10_000
    # (a retry is reported once its sleep is over, so across tasks the two orders differ)
    assert sorted(d for _, _, d in rec.retries) == sorted(fake.sleeps)
    for reason, attempt, delay in rec.retries:
        assert reason == "throttled"
        assert 0.0 <= delay <= policy.backoff_bound(ErrorKind.THROTTLED, attempt)
    assert max(a for _, a, _ in rec.retries) >= 4  # later retries happened, with larger bounds
    assert retrying.retrier.budget is not None
    assert retrying.retrier.budget.available == policy.budget_capacity  # fully refilled


@pytest.mark.anyio
async def test_backoff_doubles_up_to_the_cap_with_separate_bases() -> None:
    kms = MemoryKms()
    key_id = kms.create_key()
    faults = ["transient", "timeout", "throttle", "throttle", "throttle", "throttle", "throttle"]
    flaky = FaultyKms(kms, script=faults)  # type: ignore[arg-type]
    fake = FakeTime()
    policy = RetryPolicy(max_attempts=8, deadline=3600.0, cap=5.0)
    retrying = RetryingKms(flaky, policy, sleep=fake.sleep, clock=fake, rng=Highest())
    await retrying.generate_data_key(key_id, context={})
    # retry k sleeps min(cap, base * 2**(k-1)): 50 ms base for transient/timeout, 1 s throttled
    assert fake.sleeps == [0.05, 0.1, 4.0, 5.0, 5.0, 5.0, 5.0]


@pytest.mark.anyio
async def test_fatal_errors_are_raised_at_once() -> None:
    kms = MemoryKms()
    flaky = FaultyKms(kms)
    fake = FakeTime()
    rec = Recorder()
    retrying = RetryingKms(flaky, RetryPolicy.bulk(), sleep=fake.sleep, clock=fake, observer=rec)
    with pytest.raises(KmsKeyError):
        await retrying.generate_data_key("no-such-key", context={})
    assert flaky.calls["GenerateDataKey"] == 1
    assert fake.sleeps == [] and rec.outcomes == ["error"]


@pytest.mark.anyio
async def test_attempts_exhausted_is_a_clear_unavailable_error() -> None:
    kms = MemoryKms()
    flaky = FaultyKms(kms, throttle=1.0)
    fake = FakeTime()
    retrying = RetryingKms(flaky, RetryPolicy(), sleep=fake.sleep, clock=fake)
    with pytest.raises(RetryExhaustedError) as info:
        await retrying.generate_data_key(kms.create_key(), context={})
    assert isinstance(info.value, KmsUnavailableError)
    assert isinstance(info.value.__cause__, ThrottlingError)
    assert info.value.attempts == 3 and "GenerateDataKey" in str(info.value)
    assert flaky.calls["GenerateDataKey"] == 3 and len(fake.sleeps) == 2
    # the message names the last backend error, so a wrong endpoint does not read like an
    # outage in a log line or a lake report (which show the message, not __cause__)
    cause = info.value.__cause__
    assert f"({type(cause).__name__}: {str(cause).splitlines()[0]}" in str(info.value)


@pytest.mark.anyio
async def test_exhausted_budget_fails_fast() -> None:
    kms = MemoryKms()
    key_id = kms.create_key()
    flaky = FaultyKms(kms, throttle=1.0)
    fake = FakeTime()
    rec = Recorder()
    budget = RetryBudget(capacity=10)  # two throttled retries (cost 5 each)
    retrying = RetryingKms(
        flaky, RetryPolicy.bulk(), budget=budget, sleep=fake.sleep, clock=fake, observer=rec
    )
    with pytest.raises(RetryBudgetExhaustedError, match="retry budget exhausted"):
        await retrying.generate_data_key(key_id, context={})
    assert flaky.calls["GenerateDataKey"] == 3 and budget.available == 0
    with pytest.raises(RetryBudgetExhaustedError):  # the next call: one attempt, no sleep
        await retrying.generate_data_key(key_id, context={})
    assert flaky.calls["GenerateDataKey"] == 4 and len(fake.sleeps) == 2
    assert rec.gave_up == ["budget", "budget"]
    # successes refill the budget
    flaky.throttle = 0.0
    for _ in range(5):
        await retrying.generate_data_key(key_id, context={})
    assert budget.available == 5


@pytest.mark.anyio
async def test_deadline_stops_before_a_backoff_would_cross_it() -> None:
    kms = MemoryKms()
    flaky = FaultyKms(kms, throttle=1.0)
    fake = FakeTime()
    policy = RetryPolicy(max_attempts=50, deadline=10.0)
    retrying = RetryingKms(flaky, policy, sleep=fake.sleep, clock=fake, rng=Highest())
    with pytest.raises(RetryDeadlineExceededError):
        await retrying.generate_data_key(kms.create_key(), context={})
    assert fake.sleeps == [1.0, 2.0, 4.0]  # 7 s slept; the next 8 s would end past 10 s
    assert fake.now <= policy.deadline


@pytest.mark.anyio
async def test_deadline_cuts_a_hanging_attempt() -> None:
    class Hanging(MemoryKms):
        async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
            await anyio.sleep_forever()
            raise AssertionError

    retrying = RetryingKms(Hanging(), RetryPolicy(deadline=0.05))
    with anyio.fail_after(10), pytest.raises(RetryDeadlineExceededError):
        await retrying.generate_data_key("k", context={})


@pytest.mark.anyio
async def test_attempt_timeout_is_a_retried_timeout() -> None:
    class SlowOnce(MemoryKms):
        hung = False

        async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
            if not self.hung:
                self.hung = True
                await anyio.sleep_forever()
            return await super().generate_data_key(key_id, context=context)

    kms = SlowOnce()
    rec = Recorder()
    fake = FakeTime()
    policy = RetryPolicy(attempt_timeout=0.05)
    retrying = RetryingKms(kms, policy, observer=rec, sleep=fake.sleep)
    with anyio.fail_after(10):
        await retrying.generate_data_key(kms.create_key(), context={})
    assert rec.outcomes == ["timeout", "ok"]
    assert rec.retries[0][0] == "timeout"


@pytest.mark.anyio
async def test_cancellation_interrupts_a_backoff_sleep() -> None:
    """A call cancelled in its backoff ends at once; the retry it was waiting for is never
    sent, so its budget tokens go back and it is not counted as a retry (they were kept, and
    a burst of cancelled calls drained the budget for everyone; review)."""
    kms = MemoryKms()
    flaky = FaultyKms(kms, throttle=1.0)
    rec = Recorder()
    policy = RetryPolicy(throttle_base=600.0, cap=600.0, deadline=3600.0)
    budget = RetryBudget(capacity=100)
    in_backoff = anyio.Event()

    async def sleep(seconds: float) -> None:  # a real sleep, that says when it starts
        in_backoff.set()
        await anyio.sleep(seconds)

    retrying = RetryingKms(flaky, policy, observer=rec, rng=Highest(), budget=budget, sleep=sleep)
    finished = False

    async def job() -> None:
        nonlocal finished
        await retrying.generate_data_key(kms.create_key(), context={})
        finished = True

    with anyio.fail_after(10):  # a safety net only: cancellation must end the sleep at once
        async with anyio.create_task_group() as tg:
            tg.start_soon(job)
            await in_backoff.wait()  # the job has paid for a retry: now in a 600 s backoff
            tg.cancel_scope.cancel()
    assert not finished
    assert flaky.calls["GenerateDataKey"] == 1 and rec.outcomes == ["throttled"]
    assert rec.retries == [] and budget.available == 100


@pytest.mark.anyio
async def test_retry_after_hint_is_honoured_and_clamped() -> None:
    kms = MemoryKms()
    key_id = kms.create_key()
    fake = FakeTime()

    class Hinting(MemoryKms):
        def __init__(self, hint: float) -> None:
            super().__init__()
            self._keys = kms._keys
            self.hint = hint
            self.left = 1

        async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
            if self.left:
                self.left -= 1
                raise ThrottlingError(retry_after=self.hint)
            return await super().generate_data_key(key_id, context=context)

    class Lowest:
        def uniform(self, a: float, b: float) -> float:
            return a

    for hint, expected in ((0.5, 0.5), (60.0, 5.0)):  # d = 0, so at most d + 5 s
        r = RetryingKms(Hinting(hint), RetryPolicy(), sleep=fake.sleep, clock=fake, rng=Lowest())
        await r.generate_data_key(key_id, context={})
        assert fake.sleeps[-1] == expected


@pytest.mark.anyio
async def test_memory_kms_quota_throttles_and_retry_absorbs_it() -> None:
    clock = FakeTime()
    quota = RateQuota({"cryptographic": 5.0}, clock=clock)
    kms = MemoryKms(quota=quota)
    key_id = kms.create_key()

    async def sleep(seconds: float) -> None:  # backing off lets the quota refill
        await clock.sleep(seconds)

    retrying = RetryingKms(kms, RetryPolicy.bulk(), sleep=sleep, clock=clock)
    kr = Keyring(retrying, key_id)
    for _ in range(20):
        ct = await api.encrypt_bytes(b"abc", keyring=kr, options=SMALL)
        assert await api.decrypt_bytes(ct, keyring=kr) == b"abc"
    assert sum(kms.throttled.values()) > 0
    assert kms.calls["GenerateDataKey"] - kms.throttled["GenerateDataKey"] == 20


def test_retries_never_multiply() -> None:
    kms = MemoryKms()
    inner = RetryingKms(kms)
    with pytest.raises(ConfigurationError):
        RetryingKms(inner)
    with pytest.raises(ConfigurationError):
        Keyring(inner, "k", retry=RetryPolicy())

    class SdkBackend(MemoryKms):
        sdk_attempts = 3

        def disable_sdk_retries(self) -> None:
            self.sdk_attempts = 1

    sdk = SdkBackend()
    Keyring(sdk, sdk.create_key(), retry=RetryPolicy())
    assert sdk.sdk_attempts == 1


@pytest.mark.anyio
async def test_keyring_retry_and_cache_together() -> None:
    """Only the single-flight owner retries; the cache then serves everyone."""
    kms = MemoryKms(latency=0.001)
    flaky = FaultyKms(kms, script=["throttle", "throttle"])
    fake = FakeTime()
    retrying = RetryingKms(flaky, RetryPolicy(), sleep=fake.sleep, clock=fake)
    kr = Keyring(retrying, kms.create_key(), cache=CachePolicy())
    got: list[WrappedKey] = []

    async def one() -> None:
        got.append((await kr.encryption_key({})).wrapped)

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(one)
    assert flaky.calls["GenerateDataKey"] == 3 and len(fake.sleeps) == 2
    assert len(set(got)) == 1 and len(got) == 200


class ThrottledBlocking(MemoryKms):
    """A blocking backend whose first `throttles` blocking calls are throttled."""

    def __init__(self, throttles: int) -> None:
        super().__init__()
        self.left = throttles
        self.blocking_calls = 0

    def generate_data_key_blocking(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        self.blocking_calls += 1
        if self.left > 0:
            self.left -= 1
            raise ThrottlingError("throttled (scripted)", operation="GenerateDataKey")
        return super().generate_data_key_blocking(key_id, context=context)


def test_the_retry_layer_over_a_blocking_backend_retries_on_the_calling_thread() -> None:
    """Over a backend with a blocking face the retry layer has one too: the same policy,
    budget and reports, sleeping on the calling thread; a blocking caller's miss went
    through the process-wide portal's event loop instead (the CLI paid its start-up)."""
    from envelope.kms.base import BlockingKms

    kms = ThrottledBlocking(throttles=2)
    key_id = kms.create_key()
    slept: list[float] = []
    rec = Recorder()
    budget = RetryBudget(capacity=100)
    retrying = RetryingKms(kms, RetryPolicy.default(), observer=rec, budget=budget, rng=Highest())
    retrying.retrier.sleep_blocking = slept.append
    assert isinstance(retrying, BlockingKms)
    assert not isinstance(RetryingKms(FaultyKms(kms)), BlockingKms)  # async-only stays so
    dk = retrying.generate_data_key_blocking(key_id, context={})
    assert kms.blocking_calls == 3 and kms.calls["GenerateDataKey"] == 1
    assert rec.outcomes == ["throttled", "throttled", "ok"] and len(slept) == 2
    assert [r[:2] for r in rec.retries] == [("throttled", 1), ("throttled", 2)]
    assert budget.available == 100  # a success after retries puts back what it spent
    assert retrying.decrypt_data_key_blocking(dk.wrapped, context={}) == dk.plaintext
    kms.left = 10
    with pytest.raises(RetryExhaustedError):
        retrying.generate_data_key_blocking(key_id, context={})
    kms.left = 10

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    retrying.retrier.sleep_blocking = interrupted
    before = budget.available
    with pytest.raises(KeyboardInterrupt):
        retrying.generate_data_key_blocking(key_id, context={})
    assert budget.available == before  # the retry never sent gave its tokens back


def in_a_fresh_interpreter(code: str) -> str:
    """What `code` prints, run in a new interpreter (nothing imported or started yet)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_sync_object_with_retries_starts_no_event_loop(tmp_path: Path) -> None:
    """`envelope.sync` with a retrying keyring over a key file seals without anyio (no
    portal loop, no import): the blocking face is used end to end."""
    code = (
        "import sys, threading\n"
        "from envelope import sync\n"
        "from envelope.keyring import Keyring\n"
        "from envelope.kms.filekey import FileKeyBackend, generate_key_file\n"
        "from envelope.kms.retry import RetryPolicy\n"
        f"generate_key_file({str(tmp_path / 'k.key')!r})\n"
        f"b = FileKeyBackend({str(tmp_path / 'k.key')!r})\n"
        "kr = Keyring(b, b.key_id, retry=RetryPolicy.default())\n"
        "ct = sync.encrypt_bytes(b'rows', keyring=kr)\n"
        "assert bytes(sync.decrypt_bytes(ct, keyring=kr)) == b'rows'\n"
        "print('anyio' in sys.modules, [t.name for t in threading.enumerate()])\n"
    )
    assert in_a_fresh_interpreter(code).strip() == "False ['MainThread']"


def test_a_retrying_backend_copies_as_any_object() -> None:
    """`RetryingKms.__new__` chooses the blocking class from its first argument; it required
    one, so copy (and unpickling) failed with a TypeError (review)."""
    import copy

    from envelope.kms.base import BlockingKms

    retrying = RetryingKms(MemoryKms(), RetryPolicy.default())
    twin = copy.copy(retrying)
    assert isinstance(twin, BlockingKms) and twin.inner is retrying.inner
    assert not isinstance(copy.copy(RetryingKms(FaultyKms(MemoryKms()))), BlockingKms)


def test_the_embedded_kms_is_called_on_the_calling_thread(tmp_path: Path) -> None:
    """`LocalKms` is blocking by nature (issue 9: "memory, key file and the embedded KMS are
    blocking by nature and expose that") and now exposes its blocking face: `envelope.sync`
    over it, with retries, starts no portal loop (review: it went through the portal)."""
    code = (
        "import threading\n"
        "from envelope import sync\n"
        "from envelope.keyring import Keyring\n"
        "from envelope.kms.base import BlockingKms\n"
        "from envelope.kms.local import open_local\n"
        "from envelope.kms.retry import RetryPolicy\n"
        f"b = open_local({str(tmp_path / 'home')!r})\n"
        "kid = b.service.create_key()['KeyMetadata']['KeyId']\n"
        "assert isinstance(b, BlockingKms)\n"
        "kr = Keyring(b, kid, retry=RetryPolicy.default())\n"
        "ct = sync.encrypt_bytes(b'rows', keyring=kr)\n"
        "assert bytes(sync.decrypt_bytes(ct, keyring=Keyring(b, kid))) == b'rows'\n"
        "kr.close()\n"
        "print(sorted(t.name for t in threading.enumerate()))\n"
    )
    threads = in_a_fresh_interpreter(code)
    assert "envelope-portal" not in threads and "MainThread" in threads, threads
