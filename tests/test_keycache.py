"""The data-key cache: every limit at its exact bound, single-flight, LRU, partitions, hygiene."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from envelope import api
from envelope.errors import ConfigurationError, KmsKeyError, ThrottlingError
from envelope.keycache import CachePolicy, DataKeyCache
from envelope.keyring import Keyring
from envelope.kms.base import WrappedKey
from envelope.kms.faults import FaultyKms
from envelope.kms.memory import MemoryKms
from envelope.objects import parse_object_header
from envelope.streams import BufferSink

SMALL = api.Options(segment_size=4096, workers=1)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _cache(clock: FakeClock | None = None, **limits: object) -> DataKeyCache:
    limits.setdefault("ttl_jitter", 0.0)
    policy = CachePolicy(**limits)  # type: ignore[arg-type]
    return DataKeyCache(policy, clock=clock) if clock else DataKeyCache(policy)


def _wrapped_of(objects: Sequence[bytes | bytearray]) -> list[bytes]:
    """The wrapped data key written in each object's header."""
    return [parse_object_header(memoryview(ct)).wrapped_keys[0].ciphertext for ct in objects]


def _runs(keys: list[bytes]) -> list[int]:
    """Lengths of the runs of equal consecutive keys; also checks no key comes back later."""
    runs: list[int] = []
    seen: set[bytes] = set()
    prev: bytes | None = None
    for k in keys:
        if k == prev:
            runs[-1] += 1
            continue
        assert k not in seen, "a retired data key was used again"
        seen.add(k)
        runs.append(1)
        prev = k
    return runs


# -- policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"ttl": 0.5},
        {"ttl": 86401.0},
        {"decrypt_ttl": 0.0},
        {"max_objects": 0},
        {"max_objects": (1 << 32) + 1},
        {"max_bytes": 0},
        {"max_bytes": (1 << 62) + 1},
        {"capacity": 0},
        {"refresh_ahead": -1.0},
        {"ttl_jitter": 0.6},
        {"wait_timeout": 0.0},
    ],
)
def test_policy_limits_are_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        CachePolicy(**bad)  # type: ignore[arg-type]


def test_defaults_are_the_documented_ones() -> None:
    p = CachePolicy()
    assert (p.ttl, p.decrypt_ttl, p.max_objects, p.max_bytes, p.capacity) == (
        300.0,
        300.0,
        1 << 20,
        1 << 40,
        1000,
    )
    assert not CachePolicy(enabled=False).enabled


# -- each limit retires an entry at exactly its bound, checked on the written headers ----------


@pytest.mark.anyio
async def test_max_objects_bound_on_written_headers() -> None:
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy(max_objects=10))
    cts = [await api.encrypt_bytes(b"x" * 100, keyring=kr, options=SMALL) for _ in range(35)]
    assert _runs(_wrapped_of(cts)) == [10, 10, 10, 5]
    assert kms.calls["GenerateDataKey"] == 4
    for ct in cts:
        assert await api.decrypt_bytes(ct, keyring=kr) == b"x" * 100
    assert kms.calls["Decrypt"] == 4  # one per distinct data key, not per object


@pytest.mark.anyio
async def test_max_bytes_bound_charged_after_the_fact() -> None:
    """Streams of unknown length: the engine charges each sealed batch (Keyring.charge)."""
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy(max_bytes=10 * 1024))
    cts = []
    for _ in range(25):
        sink = BufferSink()
        await api.encrypt(bytes(1024), sink, keyring=kr, options=SMALL)
        cts.append(bytes(sink.buffer))
    assert _runs(_wrapped_of(cts)) == [10, 10, 5]


@pytest.mark.anyio
async def test_max_bytes_bound_with_expected_bytes() -> None:
    """Reserved up front: a key never takes an object that would cross its byte limit."""
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy(max_bytes=1000, ttl_jitter=0))
    sizes = [300, 300, 300, 300, 100, 1000, 1, 2000, 5]
    keys = []
    for n in sizes:
        dk = await kr.encryption_key({}, expected_bytes=n)
        keys.append(dk.wrapped.ciphertext)
        dk.wipe()
    # 300+300+300 = 900 (+300 would cross) | 300+100 = 400 (+1000 would cross) | 1000 exactly:
    # retired at its bound | 1 | 2000 is over the limit alone: a one-use key, never cached | 5
    # joins the key that holds 1 byte.
    assert _runs(keys[:8]) == [3, 2, 1, 1, 1]
    assert keys[8] == keys[6]
    assert kms.calls["GenerateDataKey"] == 5


@pytest.mark.anyio
async def test_ttl_from_creation_with_injected_clock() -> None:
    clock = FakeClock()
    kms = MemoryKms()
    kr = Keyring(
        kms, kms.create_key(), cache=_cache(clock, ttl=10.0, refresh_ahead=0.0, decrypt_ttl=10.0)
    )
    first = (await kr.encryption_key({})).wrapped
    clock.now += 9.999
    assert (await kr.encryption_key({})).wrapped == first
    clock.now += 0.001  # exactly created + ttl: expired
    second = (await kr.encryption_key({})).wrapped
    assert second != first
    assert kms.calls["GenerateDataKey"] == 2
    # decrypt entries too
    await kr.decryption_key([second], {})
    clock.now += 9.999
    await kr.decryption_key([second], {})
    assert kms.calls["Decrypt"] == 1
    clock.now += 0.001
    await kr.decryption_key([second], {})
    assert kms.calls["Decrypt"] == 2


@pytest.mark.anyio
async def test_ttl_jitter_only_shortens() -> None:
    clock = FakeClock()
    cache = DataKeyCache(CachePolicy(ttl=100.0, ttl_jitter=0.5), clock=clock)
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=cache)
    for _ in range(50):
        await kr.encryption_key({"i": str(clock.now)})
        clock.now += 0.5
    for entry in cache._all_entries():
        assert 50.0 <= entry.expires - entry.created <= 100.0


@pytest.mark.anyio
async def test_refresh_ahead_does_not_stretch_the_ttl() -> None:
    clock = FakeClock()
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=_cache(clock, ttl=10.0, refresh_ahead=2.0))
    old = (await kr.encryption_key({})).wrapped
    clock.now += 8.0  # inside the refresh window: this caller refreshes, still gets the old key
    assert (await kr.encryption_key({})).wrapped == old
    assert kms.calls["GenerateDataKey"] == 2
    new = (await kr.encryption_key({})).wrapped
    assert new != old
    clock.now += 9.999  # the new entry lives 10 s from *its* creation (t = 8), not longer
    assert (await kr.encryption_key({})).wrapped == new
    clock.now += 0.001
    assert (await kr.encryption_key({})).wrapped not in (old, new)


@pytest.mark.parametrize("face", ["async", "blocking"])
def test_a_refresh_that_outlasts_the_key_does_not_hand_that_key_out(face: str) -> None:
    """The caller that refreshes ahead took the current key before its KMS call: a refresh
    slower than the key's remaining life (a throttled KMS, retries) returned that key after
    its TTL, and an object was sealed with it (review). It gets the refreshed key instead,
    or, when the refresh failed, a fetch of its own; a refresh in time still returns the key
    it took (test_refresh_ahead_does_not_stretch_the_ttl)."""
    clock = FakeClock()
    kms = MemoryKms()
    slow: list[bool] = [False]

    class Slow(MemoryKms):
        async def generate_data_key(self, key_id: str, *, context: Any) -> Any:
            if slow[0]:
                clock.now += 3.0  # the refresh takes past the old entry's expiry
            return await kms.generate_data_key(key_id, context=context)

        def generate_data_key_blocking(self, key_id: str, *, context: Any) -> Any:
            if slow[0]:
                clock.now += 3.0
            return kms.generate_data_key_blocking(key_id, context=context)

    kr = Keyring(Slow(), kms.create_key(), cache=_cache(clock, ttl=10.0, refresh_ahead=2.0))

    def key() -> WrappedKey:
        if face == "async":
            return anyio.run(lambda: kr.encryption_key({})).wrapped
        return kr.encryption_key_blocking({}).wrapped

    old = key()
    clock.now += 8.5  # in the refresh window, 1.5 s before expiry
    slow[0] = True
    got = key()  # refreshes, and the refresh ends at t = 11.5
    slow[0] = False
    assert got != old
    assert key() == got  # the refreshed entry, from the cache
    assert kms.calls["GenerateDataKey"] == 2


@pytest.mark.anyio
async def test_failed_refresh_never_extends_a_key() -> None:
    clock = FakeClock()
    kms = MemoryKms()
    flaky = FaultyKms(kms)
    kr = Keyring(flaky, kms.create_key(), cache=_cache(clock, ttl=10.0, refresh_ahead=2.0))
    old = (await kr.encryption_key({})).wrapped
    clock.now += 8.5
    flaky.push("throttle", "throttle")
    assert (await kr.encryption_key({})).wrapped == old  # refresh failed, old key still valid
    clock.now += 1.0  # the refresh is re-tried after refresh_retry (1 s) and fails again
    assert (await kr.encryption_key({})).wrapped == old
    assert flaky.injected["throttle"] == 2
    clock.now += 0.5  # t = 10: hard expiry; the KMS still refuses: encryption fails
    flaky.push("throttle")
    with pytest.raises(ThrottlingError):
        await kr.encryption_key({})
    assert (await kr.encryption_key({})).wrapped != old


@pytest.mark.anyio
async def test_one_refresh_while_concurrent_callers_keep_the_current_key() -> None:
    clock = FakeClock()
    kms = MemoryKms(latency=0.01)
    kr = Keyring(kms, kms.create_key(), cache=_cache(clock, ttl=10.0, refresh_ahead=2.0))
    old = (await kr.encryption_key({})).wrapped
    clock.now += 8.5
    got: list[WrappedKey] = []

    async def one() -> None:
        got.append((await kr.encryption_key({})).wrapped)

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(one)
    assert kms.calls["GenerateDataKey"] == 2  # one refresh, no stall for the others
    assert set(got) == {old}
    assert (await kr.encryption_key({})).wrapped != old


@pytest.mark.anyio
async def test_decrypt_entries_refresh_ahead_too() -> None:
    clock = FakeClock()
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=_cache(clock, decrypt_ttl=10.0, refresh_ahead=2.0))
    dk = await kr.encryption_key({})
    assert await kr.decryption_key([dk.wrapped], {}) == dk.plaintext
    clock.now += 8.5
    assert await kr.decryption_key([dk.wrapped], {}) == dk.plaintext  # refreshes
    assert kms.calls["Decrypt"] == 2
    clock.now += 5.0  # past the first entry's expiry, inside the refreshed one's
    assert await kr.decryption_key([dk.wrapped], {}) == dk.plaintext
    assert kms.calls["Decrypt"] == 2


# -- single-flight --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_single_flight_1000_concurrent_misses_one_call() -> None:
    kms = MemoryKms(latency=0.01)
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy())
    got: list[bytes] = []

    async def one() -> None:
        dk = await kr.encryption_key({"tenant": "a"})
        got.append(dk.wrapped.ciphertext)

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(one)
    assert kms.calls["GenerateDataKey"] == 1
    assert len(got) == 1000 and len(set(got)) == 1

    plain: list[bytes] = []

    async def read(wrapped: WrappedKey) -> None:
        plain.append(bytes(await kr.decryption_key([wrapped], {"tenant": "a"})))

    wrapped = (await kr.encryption_key({"tenant": "a"})).wrapped
    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(read, wrapped)
    assert kms.calls["Decrypt"] == 1
    assert len(plain) == 1000 and len(set(plain)) == 1


@pytest.mark.anyio
async def test_single_flight_shares_the_owners_failure() -> None:
    kms = MemoryKms(latency=0.01)
    kr = Keyring(kms, "no-such-key", cache=CachePolicy())
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await kr.encryption_key({})
        except KmsKeyError as e:
            errors.append(e)

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(one)
    assert kms.calls["GenerateDataKey"] == 1
    assert len(errors) == 100


@pytest.mark.anyio
async def test_single_flight_respects_max_objects() -> None:
    kms = MemoryKms(latency=0.001)
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy(max_objects=100))
    got: list[bytes] = []

    async def one() -> None:
        got.append((await kr.encryption_key({})).wrapped.ciphertext)

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(one)
    assert sorted(Counter(got).values()) == [100] * 10
    assert kms.calls["GenerateDataKey"] == 10


# -- LRU capacity, partitions, contexts ---------------------------------------------------------


@pytest.mark.anyio
async def test_lru_capacity() -> None:
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy(capacity=2))
    a = (await kr.encryption_key({"t": "a"})).wrapped
    b = (await kr.encryption_key({"t": "b"})).wrapped
    assert (await kr.encryption_key({"t": "a"})).wrapped == a  # a is now most recent
    await kr.encryption_key({"t": "c"})  # evicts b, the least recently used
    assert kms.calls["GenerateDataKey"] == 3
    assert (await kr.encryption_key({"t": "a"})).wrapped == a
    assert (await kr.encryption_key({"t": "b"})).wrapped != b
    assert kms.calls["GenerateDataKey"] == 4
    assert kr.cache is not None and len(kr.cache) == 2


@pytest.mark.anyio
async def test_partitions_keep_keyrings_apart_unless_shared() -> None:
    kms = MemoryKms()
    key = kms.create_key()
    cache = DataKeyCache(CachePolicy())
    alice = Keyring(kms, key, cache=cache)
    bob = Keyring(kms, key, cache=cache)
    assert (await alice.encryption_key({})).wrapped != (await bob.encryption_key({})).wrapped
    team1 = Keyring(kms, key, cache=cache, partition="team")
    team2 = Keyring(kms, key, cache=cache, partition="team")
    assert (await team1.encryption_key({})).wrapped == (await team2.encryption_key({})).wrapped


@pytest.mark.anyio
async def test_entries_are_bound_to_the_backend_instance() -> None:
    """Two in-memory KMSs with a key of the same name hold different master keys."""
    cache = DataKeyCache(CachePolicy())
    k1, k2 = MemoryKms(), MemoryKms()
    k1.create_key("same"), k2.create_key("same")
    r1 = Keyring(k1, "same", cache=cache, partition="p")
    r2 = Keyring(k2, "same", cache=cache, partition="p")
    dk = await r2.encryption_key({})
    assert (await r1.encryption_key({})).wrapped != dk.wrapped
    assert await r2.decryption_key([dk.wrapped], {}) == dk.plaintext
    with pytest.raises(KmsKeyError):  # r1 cannot open r2's key, cached or not
        await r1.decryption_key([dk.wrapped], {})


@pytest.mark.anyio
async def test_kms_context_separates_entries_object_context_does_not() -> None:
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy())
    cts = [
        await api.encrypt_bytes(
            b"data",
            keyring=kr,
            kms_context={"dataset": ds},
            object_context={"path": f"{ds}/{i}"},
            options=SMALL,
        )
        for ds in ("sales", "hr")
        for i in range(5)
    ]
    assert _runs(_wrapped_of(cts)) == [5, 5]  # one key per KMS context, shared across paths
    for ct in cts:
        h = parse_object_header(memoryview(ct))
        assert set(h.object_context) == {"path"}  # the per-object context stays in the header
        assert await api.decrypt_bytes(ct, keyring=kr) == b"data"


@pytest.mark.anyio
async def test_no_cache_is_one_setting() -> None:
    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=None)
    assert kr.cache is None
    for _ in range(5):
        await kr.encryption_key({})
    assert kms.calls["GenerateDataKey"] == 5


@pytest.mark.anyio
async def test_decrypt_cache_serves_a_whole_bucket_with_one_call() -> None:
    kms = MemoryKms()
    writer = Keyring(kms, kms.create_key(), cache=CachePolicy())
    cts = [
        await api.encrypt_bytes(bytes([i]) * 50, keyring=writer, options=SMALL) for i in range(100)
    ]
    reader = Keyring(decrypt_with=[kms], cache=CachePolicy())
    for i, ct in enumerate(cts):
        assert await api.decrypt_bytes(ct, keyring=reader) == bytes([i]) * 50
    assert kms.calls["GenerateDataKey"] == 1 and kms.calls["Decrypt"] == 1


# -- hygiene --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_evicted_keys_are_zeroed_and_callers_get_copies() -> None:
    kms = MemoryKms()
    cache = DataKeyCache(CachePolicy(max_objects=2))
    kr = Keyring(kms, kms.create_key(), cache=cache)
    dk = await kr.encryption_key({})
    (entry,) = cache._all_entries()
    assert entry.dk == dk.plaintext and entry.dk is not dk.plaintext
    dk.wipe()  # the engine wipes its copy: the cached key is unaffected
    assert any(entry.dk)
    mine = await kr.encryption_key({})  # second object: the entry retires at its bound
    assert entry.dead and not any(entry.dk)
    assert any(mine.plaintext)
    cache.clear()
    assert len(cache) == 0


@pytest.mark.anyio
async def test_nothing_secret_in_reprs_and_no_pickling() -> None:
    kms = MemoryKms()
    cache = DataKeyCache(CachePolicy())
    kr = Keyring(kms, kms.create_key(), cache=cache)
    dk = await kr.encryption_key({"a": "b"})
    await kr.decryption_key([dk.wrapped], {"a": "b"})
    secret = bytes(dk.plaintext)
    for text in (repr(cache), repr(kr), *(repr(e) for e in cache._all_entries())):
        assert secret.hex() not in text and repr(secret) not in text
    for obj in (cache, dk, *cache._all_entries()):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_cache_is_not_carried_across_fork() -> None:
    kms = MemoryKms()
    cache = DataKeyCache(CachePolicy())
    kr = Keyring(kms, kms.create_key(), cache=cache)
    anyio.run(kr.encryption_key, {})
    assert len(cache) == 1
    pid = os.fork()
    if pid == 0:  # child: the cache must be empty and the inherited key zeroed
        ok = len(cache) == 0 and all(not any(e.dk) for e in cache._all_entries())
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(cache) == 1  # the parent keeps its entry


def test_cache_modules_do_not_log() -> None:
    import envelope.keycache
    import envelope.kms.retry

    for mod in (envelope.keycache, envelope.kms.retry):
        with open(mod.__file__ or "", encoding="utf-8") as f:
            source = f.read()
        assert "logging" not in source and "print(" not in source


def test_waiters_of_a_failed_request_each_get_their_own_exception() -> None:
    """Every waiter re-raised the owner's one exception object: each raise added that
    thread's frames to it, so any caller's traceback held every other caller's locals (their
    plaintext rows) for an error reporter to send off."""
    import threading
    import traceback

    from envelope import sync
    from envelope.errors import KmsError

    mem = MemoryKms()
    kid = mem.create_key()
    bad = FaultyKms(mem, latency=0.2)
    bad.push("transient")
    kr = Keyring(bad, kid, cache=CachePolicy())
    caught: list[BaseException] = []

    def worker(i: int) -> None:
        secret_row = b"ssn=123-45-%04d" % i
        try:
            sync.encrypt_bytes(secret_row, keyring=kr)
        except KmsError as e:
            caught.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(caught) == 8 and len({id(e) for e in caught}) == 8
    for e in caught:
        frames = traceback.extract_tb(e.__traceback__)
        assert sum(1 for f in frames if f.name == "worker") == 1
        rows = set()
        tb = e.__traceback__
        while tb is not None:
            row = tb.tb_frame.f_locals.get("secret_row")
            if row is not None:
                rows.add(row)
            tb = tb.tb_next
        assert len(rows) == 1  # its own row only
    kr.close()


def test_a_sync_call_inside_the_loop_of_the_owning_task_does_not_freeze_it() -> None:
    """An async task owns a data-key request on a loop; a sync call on that same loop waited
    for it with a blocking wait, so the loop (and the owner) froze for wait_timeout and the
    sync call failed. It now fetches on its own."""
    import time

    from envelope import sync

    mem = MemoryKms()
    kid = mem.create_key()
    kr = Keyring(FaultyKms(mem, latency=0.2), kid, cache=CachePolicy(wait_timeout=5))
    done: dict[str, float] = {}

    async def main() -> None:
        t0 = time.monotonic()

        async def owner() -> None:
            await api.encrypt_bytes(b"a", keyring=kr)
            done["owner"] = time.monotonic() - t0

        async def blocking_caller() -> None:
            await anyio.sleep(0.05)  # the owner's request is in flight
            sync.encrypt_bytes(b"b", keyring=kr)
            done["sync"] = time.monotonic() - t0

        async with anyio.create_task_group() as tg:
            tg.start_soon(owner)
            tg.start_soon(blocking_caller)

    anyio.run(main)
    assert done["sync"] < 2 and done["owner"] < 2, done
    kr.close()


def test_waiters_wait_as_long_as_the_request_they_wait_on() -> None:
    """Found by a reliability review: waiters gave up after a fixed 20 s while the request
    they waited on went on within its own retry deadline (30 s, bulk 120 s) and succeeded: 15
    of 16 callers failed. The default now outlasts any request of the retry profiles; None
    waits as long as the request takes; a short wait_timeout still caps it."""
    import threading
    import time

    from envelope import sync

    assert CachePolicy().wait_timeout == 300.0  # past the bulk profile's 120 s deadline
    mem = MemoryKms()
    kid = mem.create_key()
    slow = FaultyKms(mem, latency=1.0)
    policies = (CachePolicy(), CachePolicy(wait_timeout=None), CachePolicy(wait_timeout=0.3))
    for policy, ok in zip(policies, (8, 8, 1), strict=True):
        slow.calls.clear()
        kr = Keyring(slow, kid, cache=policy)
        outcomes: list[str] = []

        def worker(kr: Keyring = kr, out: list[str] = outcomes) -> None:
            try:
                sync.encrypt_bytes(b"x", keyring=kr)
                out.append("ok")
            except Exception as e:
                out.append(type(e).__name__)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("ok") == ok, outcomes
        assert slow.calls["GenerateDataKey"] == 1  # single flight either way
        assert time.monotonic() - started < 5
        kr.close()


def test_a_key_slower_than_the_ttl_is_a_warning() -> None:
    """A reliability review found a TTL shorter than the KMS's response time turns
    single-flight into a queue (each caller fetches in turn: the key arrives expired, so it is
    not cached). That is now said, once per cache."""
    from envelope import sync
    from envelope.keycache import CacheTtlWarning

    mem = MemoryKms()
    kid = mem.create_key()
    clock = [0.0]
    cache = DataKeyCache(CachePolicy(ttl=1, ttl_jitter=0), clock=lambda: clock[0])
    kr = Keyring(mem, kid, cache=cache)
    real = mem.generate_data_key_blocking

    def slow(*args: object, **kwargs: object) -> object:
        clock[0] += 2.0  # the request outlives the TTL
        return real(*args, **kwargs)  # type: ignore[arg-type]

    mem.generate_data_key_blocking = slow  # type: ignore[method-assign]
    with pytest.warns(CacheTtlWarning, match="longer than the cache's TTL"):
        sync.encrypt_bytes(b"x", keyring=kr)
    kr.close()


def test_an_observer_that_raises_leaves_no_flight_behind() -> None:
    """A second review: the flight was registered before the observer heard of the miss, so
    an observer that raised left it registered and never landed: every later caller of the key
    waited for it (for ever, with wait_timeout=None)."""
    from envelope import sync
    from envelope.metrics import NullObserver

    class Raising(NullObserver):
        def cache_lookup(self, kind: str, hit: bool) -> None:
            if not hit:
                raise RuntimeError("observer failed")

    mem = MemoryKms()
    kid = mem.create_key()
    cache = DataKeyCache(CachePolicy(wait_timeout=None), observer=Raising())
    kr = Keyring(mem, kid, cache=cache)
    with pytest.raises(RuntimeError):
        sync.encrypt_bytes(b"x", keyring=kr)
    assert not cache._flights  # nothing left for a later caller to wait on
    kr.close()


def test_a_key_landing_after_its_keyring_closed_is_not_cached() -> None:
    """Closing a keyring zeroes its cached data keys; a request already in flight then
    brought its key back into the closed keyring's cache, where nothing would ever zero it
    (review). The caller still gets its key; the cache keeps nothing."""
    import threading
    import time

    from envelope import sync
    from envelope.keycache import CachePolicy
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    kms = MemoryKms(latency=0.3)
    kr = Keyring(kms, kms.create_key("k"), cache=CachePolicy())
    results: list[object] = []

    def seal() -> None:
        try:
            results.append(len(sync.encrypt_bytes(b"x", keyring=kr)))
        except Exception as e:
            results.append(type(e).__name__)

    t = threading.Thread(target=seal)
    t.start()
    assert kr.cache is not None
    deadline = time.monotonic() + 30
    while not kr.cache._flights:  # until the request is in flight
        assert time.monotonic() < deadline
        time.sleep(0.005)
    kr.close()
    t.join()
    assert len(results) == 1 and isinstance(results[0], int), results
    assert len(kr.cache) == 0


@pytest.mark.parametrize("bad", [float("nan"), 1.5, "10"])
def test_a_byte_count_is_a_whole_number(bad: object) -> None:
    """`charge(wrapped, nan)` (or `expected_bytes=nan`) was taken: the entry's byte count became
    NaN, every later `>= max_bytes` was false, and 51 objects of 100 B shared one data key under
    `max_bytes=1000` (review); text was a bare TypeError."""
    from envelope import sync

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy(max_bytes=1000))
    ct = sync.encrypt_bytes(b"x" * 100, keyring=kr)
    wrapped = parse_object_header(memoryview(bytes(ct))).wrapped_keys[0]
    with pytest.raises(ConfigurationError, match="whole number of bytes"):
        kr.charge(wrapped, bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="whole number of bytes"):
        kr.encryption_key_blocking({}, expected_bytes=bad)  # type: ignore[arg-type]
    keys = set()
    for _ in range(20):  # the limit still holds: 10 objects of 100 B a key at most
        sealed = bytes(sync.encrypt_bytes(b"x" * 100, keyring=kr))
        keys.add(parse_object_header(memoryview(sealed)).wrapped_keys[0])
    assert len(keys) >= 2
