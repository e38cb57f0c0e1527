"""`rewrap`: a header re-wrapped under another key, the body reused byte for byte."""

from __future__ import annotations

import io
from functools import partial


def test_a_wrapped_cache_shared_by_threads_each_with_its_own_loop() -> None:
    """`rewrap`'s single-flight kept an anyio.Event per slot in a process-wide dict: rewraps
    from a thread pool (each thread its own event loop) sharing one `wrapped_cache` raised
    "bound to a different event loop" or hung for ever (review). One wrap serves them all."""
    import asyncio
    import threading

    import anyio

    from envelope import api, sync
    from envelope.keycache import CachePolicy
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    old, new = MemoryKms(), MemoryKms(latency=0.05)
    source = Keyring(old, old.create_key(), cache=CachePolicy())
    target = Keyring(new, new.create_key())
    objects = [bytes(sync.encrypt_bytes(b"row %d" % i, keyring=source)) for i in range(8)]
    assert old.calls["GenerateDataKey"] == 1  # one data key shared by all eight
    shared: dict[bytes, object] = {}

    def one(i: int) -> bytes:
        ct, out = objects[i], io.BytesIO()
        job = partial(
            api.rewrap, io.BytesIO(ct), out, keyring=source, to=target, wrapped_cache=shared
        )
        if i % 2:
            asyncio.run(job())
        else:
            anyio.run(job, backend="trio")
        return out.getvalue()

    results: dict[int, bytes | BaseException] = {}

    def run(i: int) -> None:
        try:
            results[i] = one(i)
        except BaseException as e:  # (reported below)
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)  # (daemon threads: a hang fails the test, it does not hang the run)
    assert sorted(results) == list(range(8)), "a rewrap hung"
    done = [results[i] for i in range(8)]
    assert all(isinstance(d, bytes) for d in done), done
    assert new.calls["Encrypt"] == 1
    for ct, plain in zip(done, (b"row %d" % i for i in range(8)), strict=True):
        assert isinstance(ct, bytes)
        assert bytes(sync.decrypt_bytes(ct, keyring=target)) == plain
