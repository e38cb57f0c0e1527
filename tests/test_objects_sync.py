"""The synchronous object layer and its faces (issue 9).

- sync and async faces give identical bytes (same data key, the message-id seam fixed);
- a warm cache serves the sync face with no event loop at all;
- one cache shared by 16 threads and 64 tasks at once never hands a key out past its limits
  (checked on the written headers) and makes one KMS call per cold key (single-flight across
  threads and tasks);
- the batch API keeps order, shares failures as documented and wipes plaintext on failure.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope import _portal, api, objects, sync
from envelope.errors import AuthenticationError, ContextMismatchError, EnvelopeError, KmsKeyError
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms


class CountingKms(MemoryKms):
    """The in-package fake KMS; its own call counters see both faces (async and blocking)."""

    @property
    def generated(self) -> int:
        return self.calls["GenerateDataKey"]

    @property
    def unwrapped(self) -> int:
        return self.calls["Decrypt"]


def keyring(policy: CachePolicy | None = None, **kw: Any) -> tuple[Keyring, CountingKms]:
    kms = CountingKms(**kw)
    return Keyring(kms, kms.create_key("k"), cache=policy or CachePolicy()), kms


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=20_000),
    seg_log2=st.sampled_from([12, 13, 20]),
    ctx=st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=3),
    mid=st.binary(min_size=32, max_size=32),
)
def test_sync_and_async_faces_give_identical_bytes(
    data: bytes, seg_log2: int, ctx: dict[str, str], mid: bytes
) -> None:
    kr, _ = keyring()
    opts = api.Options(segment_size=1 << seg_log2, batch_bytes=8192, workers=2)
    saved = objects.message_id_source
    objects.message_id_source = lambda n: mid
    try:
        a = sync.encrypt_bytes(data, keyring=kr, object_context=ctx, options=opts)
        b = anyio.run(lambda: api.encrypt_bytes(data, keyring=kr, object_context=ctx, options=opts))
        out = bytearray(len(a))
        n = sync.encrypt_into(data, out, keyring=kr, object_context=ctx, options=opts)
    finally:
        objects.message_id_source = saved
    assert a == b == out[:n]
    assert sync.decrypt_bytes(a, keyring=kr, expected_context=ctx, options=opts) == data
    assert anyio.run(lambda: api.decrypt_bytes(b, keyring=kr, options=opts)) == data
    bad = bytearray(a)
    bad[-1] ^= 1
    with pytest.raises(EnvelopeError):
        sync.decrypt_bytes(bad, keyring=kr)
    with pytest.raises(EnvelopeError):
        anyio.run(lambda: api.decrypt_bytes(bad, keyring=kr))


def test_a_warm_cache_needs_no_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    kr, kms = keyring()
    ct = sync.encrypt_bytes(b"warm", keyring=kr)
    sync.decrypt_bytes(ct, keyring=kr)

    def no_loop(*_: object, **__: object) -> None:
        raise AssertionError("an event loop was started")

    monkeypatch.setattr(anyio, "run", no_loop)
    monkeypatch.setattr(_portal, "call", no_loop)
    for _ in range(50):
        assert sync.decrypt_bytes(sync.encrypt_bytes(b"x" * 999, keyring=kr), keyring=kr) == (
            b"x" * 999
        )
    assert kms.generated == 1 and kms.unwrapped == 1


def test_one_cache_across_16_threads_and_64_tasks_keeps_its_limits() -> None:
    limit = 7
    kr, kms = keyring(CachePolicy(max_objects=limit), latency=0.002)
    headers: list[bytes] = []
    lock = threading.Lock()
    start = threading.Barrier(17)

    def thread_work() -> None:
        start.wait()
        for _ in range(20):
            ct = sync.encrypt_bytes(b"t" * 100, keyring=kr)
            with lock:
                headers.append(bytes(ct))

    async def tasks() -> None:
        async def one() -> None:
            for _ in range(5):
                ct = await api.encrypt_bytes(b"a" * 100, keyring=kr)
                with lock:
                    headers.append(bytes(ct))

        start.wait()
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(one)

    threads = [threading.Thread(target=thread_work) for _ in range(16)]
    for t in threads:
        t.start()
    anyio.run(tasks)
    for t in threads:
        t.join()
    assert len(headers) == 16 * 20 + 64 * 5
    per_key = Counter(
        objects.parse_object_header(memoryview(h)).wrapped_keys[0].ciphertext for h in headers
    )
    assert max(per_key.values()) <= limit  # never past the limit, whoever asked
    assert sum(per_key.values()) == len(headers)
    assert kms.generated == len(per_key)  # every KMS call's key was used: none wasted
    assert len(per_key) >= -(-len(headers) // limit)


def test_single_flight_holds_across_threads_and_tasks() -> None:
    kr, kms = keyring(latency=0.2)  # slow enough that every caller arrives during the call
    start = threading.Barrier(17)
    results: list[bytes] = []

    def thread_work() -> None:
        start.wait()
        results.append(bytes(sync.encrypt_bytes(b"s", keyring=kr)))

    async def tasks() -> None:
        async def one() -> None:
            results.append(bytes(await api.encrypt_bytes(b"s", keyring=kr)))

        start.wait()
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(one)

    threads = [threading.Thread(target=thread_work) for _ in range(16)]
    for t in threads:
        t.start()
    anyio.run(tasks)
    for t in threads:
        t.join()
    assert len(results) == 80
    assert kms.generated == 1


def test_many_keeps_order_and_contexts() -> None:
    kr, kms = keyring()
    items = [bytes([i]) * (i * 37) for i in range(200)]
    ctxs = [{"i": str(i)} for i in range(200)]
    sealed = sync.encrypt_many(items, keyring=kr, object_contexts=ctxs)
    assert [bytes(p) for p in sync.decrypt_many(sealed, keyring=kr, expected_contexts=ctxs)] == (
        items
    )
    assert kms.generated == 1  # one data key for the whole batch
    with pytest.raises(ContextMismatchError):
        sync.decrypt_many(sealed, keyring=kr, expected_contexts=list(reversed(ctxs)))


def test_many_failures_raise_or_stay_in_place() -> None:
    kr, _ = keyring()
    items = [b"a" * 5000, b"b" * 5000, b"c" * 5000]
    sealed = sync.encrypt_many(items, keyring=kr)
    bad = bytearray(sealed[1])
    bad[-3] ^= 0x40
    mixed = [sealed[0], bad, sealed[2]]
    got = sync.decrypt_many(mixed, keyring=kr, return_exceptions=True)
    assert got[0] == items[0] and got[2] == items[2]
    assert isinstance(got[1], AuthenticationError)
    with pytest.raises(AuthenticationError):
        sync.decrypt_many(mixed, keyring=kr)


def test_backends_blocking_by_nature_are_called_without_any_loop(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file (or the memory fake) offers the blocking face: even a miss needs no loop."""
    from envelope.kms.base import BlockingKms
    from envelope.kms.filekey import FileKeyBackend, generate_key_file

    generate_key_file(str(tmp_path / "k.key"))
    backend = FileKeyBackend(str(tmp_path / "k.key"))
    assert isinstance(backend, BlockingKms) and isinstance(MemoryKms(), BlockingKms)

    def no_loop(*_: object, **__: object) -> None:
        raise AssertionError("an event loop was used")

    monkeypatch.setattr(_portal, "call", no_loop)
    monkeypatch.setattr(anyio, "run", no_loop)
    kr = Keyring(backend, backend.key_id)  # no cache: every object is a miss
    for _ in range(3):
        assert sync.decrypt_bytes(sync.encrypt_bytes(b"k", keyring=kr), keyring=kr) == b"k"


def test_a_closed_keyring_zeroes_its_cache_and_refuses_use() -> None:
    """close() (and aclose()) drops and zeroes the data keys the keyring cached, and every
    later use raises ClosedError: not a KMS error that the retry layer and the docs call
    transient. A DataKeyCache passed in, which other keyrings may share, is left alone."""
    from envelope.errors import ClosedError

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key(), cache=CachePolicy())
    ct = bytes(sync.encrypt_bytes(b"x", keyring=kr))
    sync.decrypt_bytes(ct, keyring=kr)
    assert kr.cache is not None and len(kr.cache) == 2
    kr.close()
    assert len(kr.cache) == 0
    with pytest.raises(ClosedError):
        sync.encrypt_bytes(b"y", keyring=kr)
    with pytest.raises(ClosedError):
        sync.decrypt_bytes(ct, keyring=kr)
    with pytest.raises(ClosedError):
        anyio.run(lambda: api.encrypt_bytes(b"y", keyring=kr))
    shared = Keyring(kms, kms.create_key(), cache=CachePolicy())
    assert shared.cache is not None
    other = Keyring(kms, shared.key_id, cache=shared.cache)
    sync.encrypt_bytes(b"z", keyring=other)
    other.close()
    assert len(shared.cache) == 1  # not this keyring's cache to clear


class _Index:
    """An integral type that is not int (as numpy's integers are): it has __index__."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n

    def __float__(self) -> float:
        return float(self.n)


def test_bad_inputs_are_configuration_errors_at_the_call() -> None:
    """Every error is an EnvelopeError (README): a non-buffer, a bad setting, a bad expected
    context. A non-contiguous view (a documented input type) works; a bad item of a batch
    fails only its own slot."""
    from envelope.errors import ConfigurationError
    from envelope.options import Options

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key())
    for bad in ("text", None, 3):
        with pytest.raises(ConfigurationError, match="bytes-like"):
            sync.encrypt_bytes(bad, keyring=kr)  # type: ignore[arg-type]
    stepped = memoryview(b"abcdef")[::2]
    assert bytes(sync.decrypt_bytes(sync.encrypt_bytes(stepped, keyring=kr), keyring=kr)) == (
        b"ace"
    )
    out = sync.encrypt_many([b"a", None, b"c"], keyring=kr, return_exceptions=True)  # type: ignore[list-item]
    assert isinstance(out[1], ConfigurationError) and isinstance(out[0], bytearray)
    assert bytes(sync.decrypt_bytes(out[2], keyring=kr)) == b"c"  # type: ignore[arg-type]
    # integral values of other types (numpy's) are whole numbers; floats and bools are not
    assert Options(workers=_Index(2), segment_size=_Index(4096)).workers == 2
    assert CachePolicy(max_objects=_Index(10), ttl=_Index(60)).ttl == 60.0
    for kw in ({"workers": 1.5}, {"segment_size": 4096.0}, {"batch_bytes": True}):
        with pytest.raises(ConfigurationError, match="whole number"):
            Options(**kw)  # type: ignore[arg-type]
    for kw in ({"max_objects": 1.5}, {"ttl": True}, {"capacity": "9"}):
        with pytest.raises(ConfigurationError, match="cache"):
            CachePolicy(**kw)  # type: ignore[arg-type]
    ct = sync.encrypt_bytes(b"x", keyring=kr, object_context={"a": "1"})
    with pytest.raises(ConfigurationError, match="mapping"):
        sync.decrypt_bytes(ct, keyring=kr, expected_context="a")  # type: ignore[arg-type]


def test_progress_counts_plaintext_bytes_in_both_faces() -> None:
    """on_progress reports plaintext bytes, encrypt and decrypt, sync and async alike."""
    import io

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key())
    data = bytes(5_000_000)
    ct = bytes(sync.encrypt_bytes(data, keyring=kr, options=api.Options(segment_size=1 << 16)))
    seen: dict[str, int] = Counter()

    def counter(name: str) -> Any:
        def add(n: int) -> None:
            seen[name] += n

        return add

    sync.decrypt(io.BytesIO(ct), io.BytesIO(), keyring=kr, on_progress=counter("sync"))

    class Sink:
        async def write(self, data: memoryview) -> None:
            return None

        async def commit(self) -> None:
            return None

        async def abort(self) -> None:
            return None

    anyio.run(lambda: api.decrypt(ct, Sink(), keyring=kr, on_progress=counter("async")))
    assert seen == {"sync": len(data), "async": len(data)}


@pytest.mark.parametrize("size", [64, 256 << 10])  # inline, and on the worker threads
def test_a_batch_stops_at_its_first_failure(size: int) -> None:
    """Found by a reliability review: with the KMS throttling, `encrypt_many` went on through
    every item, each asking the KMS again after its own retries (300 items, 304 requests, 79 s)
    before raising the first failure. Without return_exceptions it now stops starting items at
    the first failure; with it, every item still gets its own answer."""
    from envelope.errors import ThrottlingError
    from envelope.kms.faults import FaultyKms
    from envelope.kms.retry import RetryPolicy

    mem = MemoryKms()
    kid = mem.create_key()
    refusing = FaultyKms(mem, throttle=1.0)
    kr = Keyring(refusing, kid, retry=RetryPolicy.none())
    items = [bytes(size)] * 40
    with pytest.raises(ThrottlingError):
        sync.encrypt_many(items, keyring=kr)
    assert refusing.calls["GenerateDataKey"] <= 4, refusing.calls  # the chunks already running
    refusing.calls.clear()
    out = sync.encrypt_many(items, keyring=kr, return_exceptions=True)
    assert all(isinstance(r, ThrottlingError) for r in out)
    kr.close()


def test_a_batch_zeroes_its_plaintexts_whatever_the_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second review: a failure that is not an EnvelopeError (here a keyring's own
    RuntimeError on the third item) left the plaintexts already opened in clear, reachable
    from the exception's traceback."""
    mem = MemoryKms()
    kid = mem.create_key()
    kr = Keyring(mem, kid, cache=CachePolicy(enabled=False))
    sealed = [bytes(sync.encrypt_bytes(b"SECRET-%d" % i, keyring=kr)) for i in range(3)]
    produced: list[bytearray] = []
    real = sync._open

    def opening(*args: Any, **kwargs: Any) -> Any:
        if len(produced) == 2:
            raise RuntimeError("a keyring's own failure")
        buf, n = real(*args, **kwargs)
        produced.append(buf)
        return buf, n

    monkeypatch.setattr(sync, "_open", opening)
    with pytest.raises(RuntimeError):
        sync.decrypt_many(sealed, keyring=kr)
    assert len(produced) == 2 and all(p == bytes(len(p)) for p in produced)
    kr.close()


@pytest.mark.parametrize("op", ["encrypt_many", "decrypt_many"])
def test_a_sync_batch_inside_a_running_loop_does_not_wait_on_its_own_loop(op: str) -> None:
    """A blocking batch of large objects called from async code, while a task of the same
    loop was fetching the data key: the batch's pool threads waited for that fetch, which
    could not land while the loop waited for the pool; the loop froze for the cache's whole
    wait_timeout, then the batch failed (review). Its items now run on the calling thread."""
    import asyncio

    from envelope import api, sync
    from envelope.keycache import CachePolicy
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    kms = MemoryKms(latency=0.2)
    kr = Keyring(kms, kms.create_key("k"), cache=CachePolicy(wait_timeout=5))
    items = [bytes(2 << 20)] * 3  # large enough for the pool
    if op == "decrypt_many":
        # one data key for all (another keyring's cache): kr must unwrap it to open them
        warm = Keyring(kms, kr.key_id, cache=CachePolicy())
        items = [bytes(b) for b in sync.encrypt_many(items, keyring=warm)]
        sealed = bytes(sync.encrypt_bytes(b"x", keyring=warm))

    async def owner() -> None:
        if op == "encrypt_many":
            await api.encrypt_bytes(b"x", keyring=kr)
        else:
            await api.decrypt_bytes(sealed, keyring=kr)

    async def main() -> int:
        task = asyncio.create_task(owner())
        await asyncio.sleep(0.05)  # the owner is now waiting on the KMS
        out = getattr(sync, op)(items, keyring=kr)
        await task
        return len(out)

    assert asyncio.run(main()) == 3


def test_the_remembered_decrypt_route_follows_its_inputs() -> None:
    """The keyring remembers its last decrypt route (objects under one cached data key share
    one wrapped-key tuple); another context or a list changed in place takes a new route."""
    kms_a, kms_b = CountingKms(), CountingKms()
    kr = Keyring(kms_a, kms_a.create_key("a"), decrypt_with=[kms_b], cache=CachePolicy())
    only_b = Keyring(kms_b, kms_b.create_key("b"), cache=None)
    da = kr.encryption_key_blocking({"t": "1"})
    db = only_b.encryption_key_blocking({"t": "1"})
    wrapped = (da.wrapped,)
    assert kr.decryption_key_blocking(wrapped, {"t": "1"}) == da.plaintext
    with pytest.raises(KmsKeyError):  # the same tuple under another context: not the last route
        kr.decryption_key_blocking(wrapped, {"t": "2"})
    listed = [da.wrapped]
    assert kr.decryption_key_blocking(listed, {"t": "1"}) == da.plaintext
    listed[0] = db.wrapped  # the same list, now naming a key only the second backend holds
    assert kr.decryption_key_blocking(listed, {"t": "1"}) == db.plaintext


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_remembered_route_is_made_again_when_a_backend_gains_the_key(face: str) -> None:
    """The remembered route of a header found no backend that holds its key; a backend that
    gains that key afterwards (a key imported, a replica arrived) opens the next object with
    the very same wrapped-key tuple, and a route that still fails asks no backend twice."""
    writer_kms = CountingKms()
    writer = Keyring(writer_kms, writer_kms.create_key("ka"), cache=None)
    sealed = bytes(sync.encrypt_bytes(b"payload", keyring=writer))
    later = CountingKms()
    reader = Keyring(decrypt_with=[later], cache=CachePolicy())

    def decrypt() -> bytes:
        if face == "sync":
            return bytes(sync.decrypt_bytes(sealed, keyring=reader))
        return bytes(anyio.run(lambda: api.decrypt_bytes(sealed, keyring=reader)))

    with pytest.raises(EnvelopeError):
        decrypt()
    later._keys["ka"] = writer_kms._keys["ka"]  # the key arrives in the reader's backend
    assert decrypt() == b"payload"
    wrong = Keyring(decrypt_with=[CountingKms()], cache=CachePolicy())
    stranger = wrong.backends[0]
    assert isinstance(stranger, CountingKms)
    stranger._keys["ka"] = os.urandom(32)  # holds a key of that name, not the one that wrapped
    for _ in range(2):
        with pytest.raises(EnvelopeError):
            sync.decrypt_bytes(sealed, keyring=wrong)
    assert stranger.unwrapped == 2  # once per call: the same route is not tried twice


def test_the_usual_cache_key_follows_a_new_key_id() -> None:
    kms = CountingKms()
    kr = Keyring(kms, kms.create_key("k1"), cache=CachePolicy())
    kms.create_key("k2")
    sync.encrypt_bytes(b"x", keyring=kr)
    kr.key_id = "k2"
    header = objects.parse_object_header(memoryview(sync.encrypt_bytes(b"x", keyring=kr)))
    assert [w.key_id for w in header.wrapped_keys] == ["k2"]


def test_an_object_whose_output_cannot_fit_in_memory_is_a_typed_error(tmp_path: Path) -> None:
    """A mapped file can claim a terabyte of plaintext (a valid header before a sparse hole):
    the in-memory faces answer with the library's own error, which a batch with
    `return_exceptions` keeps in the object's slot, never a bare MemoryError (review)."""
    import mmap

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key())
    opts = api.Options(segment_size=4096)
    good = sync.encrypt_bytes(b"fits", keyring=kr)
    ct = sync.encrypt_bytes(os.urandom(4096), keyring=kr, options=opts)
    header_len = len(ct) - 4096 - 16
    path = tmp_path / "sparse.env"
    with open(path, "wb") as f:
        f.write(ct[:header_len])
        f.truncate(header_len + (1 << 40))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        try:
            sync.decrypt_bytes(m, keyring=kr)
            raise AssertionError("decrypted")
        except EnvelopeError:
            pass
        out = sync.decrypt_many([good, m], keyring=kr, return_exceptions=True)
        assert out[0] == b"fits" and isinstance(out[1], EnvelopeError)
        # the error handed back does not pin the input (its frames held views of it)
        assert out[1].__traceback__ is None


def test_an_interrupted_wait_for_ranges_returns_only_when_the_running_ones_ended() -> None:
    """Interrupted while it waited, `run_ranges` raised at once and a range still running
    went on writing its output after the caller's clean-up had zeroed it (review)."""
    import signal
    import time

    running, ended = threading.Event(), threading.Event()

    def fn(first: int, last: int) -> None:
        # (the calling thread runs batches too: the one to wait for is a helper's)
        if threading.current_thread() is threading.main_thread():
            time.sleep(0.05)
        elif not running.is_set():
            running.set()
            time.sleep(0.4)
            ended.set()

    def interrupt() -> None:
        running.wait(10)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        objects.run_ranges(fn, 8, 1, 2)
    assert ended.is_set()


def test_a_context_mismatch_says_which_keys_differ_and_which_are_absent() -> None:
    """`--expect-context path=...` on a lake object (which binds `envelope:path`) said the
    value of `path` did not match, though the object has no `path` at all (review). Keys
    only: no value of either side is shown."""
    kr, _ = keyring()
    sealed = sync.encrypt_bytes(b"x", keyring=kr, object_context={"envelope:path": "a/b", "t": "1"})
    with pytest.raises(ContextMismatchError) as e:
        sync.decrypt_bytes(sealed, keyring=kr, expected_context={"path": "a/b", "t": "2"})
    text = str(e.value)
    assert "a different value for key(s): t" in text
    assert "no key(s) path (its keys: envelope:path, t)" in text
    assert "a/b" not in text and "2" not in text.replace("envelope", "")


def test_ranges_do_not_wait_for_a_pool_busy_with_other_objects() -> None:
    """Each object's helpers queue on the pool shared by every object of that worker count;
    once the calling thread has taken every batch itself, a helper still queued has nothing
    to do: it is cancelled, not waited for (an object waited for other objects' work)."""
    pool = objects.pool_for(2)
    release = threading.Event()
    blockers = [pool.submit(release.wait, 30) for _ in range(2)]  # the pool's two threads
    done: list[int] = []
    finished = threading.Event()

    def caller() -> None:
        objects.run_ranges(lambda a, b: done.append(a), 6, 1, 2)
        finished.set()

    try:
        threading.Thread(target=caller, daemon=True).start()
        assert finished.wait(10), "waited for the busy pool"
        assert sorted(done) == list(range(6))
    finally:
        release.set()
        for f in blockers:
            f.result(10)
