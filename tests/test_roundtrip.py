"""Round trips through every source and sink kind, sync and async, asyncio and trio.

Sizes cluster around segment and batch boundaries, where off-by-one errors live.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiofiles
import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope import api, sync
from envelope.errors import ConfigurationError
from envelope.keycache import CachePolicy
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms
from envelope.streams import BufferSink

S = 4096
OPTS = [
    api.Options(segment_size=S, batch_bytes=S, workers=1),
    api.Options(segment_size=S, batch_bytes=3 * S, workers=2, depth=3),
]
EDGES = [0, 1, S - 1, S, S + 1, 2 * S, 3 * S - 1, 3 * S, 3 * S + 5, 6 * S, 6 * S + 1, 9 * S]
SIZES = st.sampled_from(EDGES) | st.integers(0, 10 * S)
SOURCES = [
    "bytes",
    "bytearray",
    "memoryview",
    "path",
    "sync_file",
    "anyio_file",
    "aiofiles",
    "aiter",
]
SINKS = ["path", "sync_file", "anyio_file", "aiofiles", "buffer"]

_kms = MemoryKms()
KEYRING = Keyring(_kms, _kms.create_key("roundtrip"))


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


async def _chunks(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        step = max(1, sizes[i % len(sizes)])
        yield data[pos : pos + step]
        pos += step
        i += 1


class _Opened:
    """Opens a source or sink of one kind, and says how to read back what a sink got."""

    def __init__(self, tmp: Path, backend: str) -> None:
        self.tmp = tmp
        self.backend = backend
        self.closers: list[Any] = []

    async def source(self, kind: str, data: bytes, chunking: list[int]) -> Any:
        if kind == "bytes":
            return bytes(data)
        if kind == "bytearray":
            return bytearray(data)
        if kind == "memoryview":
            return memoryview(data)
        path = self.tmp / f"src-{os.urandom(4).hex()}"
        path.write_bytes(data)
        if kind == "path":
            return str(path)
        if kind == "sync_file":
            f = open(path, "rb")  # noqa: ASYNC230 - a sync file source is the point
            self.closers.append(f.close)
            return f
        if kind == "anyio_file":
            af = await anyio.open_file(path, "rb")
            self.closers.append(af.aclose)
            return af
        if kind == "aiofiles":
            af2 = await aiofiles.open(path, "rb")
            self.closers.append(af2.close)
            return af2
        assert kind == "aiter"
        return _chunks(data, chunking)

    async def sink(self, kind: str) -> tuple[Any, Any]:
        path = self.tmp / f"dst-{os.urandom(4).hex()}"
        if kind == "path":
            return str(path), path.read_bytes
        if kind == "buffer":
            b = BufferSink()
            return b, lambda: bytes(b.buffer)
        if kind == "sync_file":
            bio = io.BytesIO()
            return bio, bio.getvalue
        if kind == "anyio_file":
            af = await anyio.open_file(path, "wb")
            self.closers.append(af.aclose)
            return af, path.read_bytes
        assert kind == "aiofiles"
        af2 = await aiofiles.open(path, "wb")
        self.closers.append(af2.close)
        return af2, path.read_bytes

    async def close(self) -> None:
        for c in reversed(self.closers):
            r = c()
            if r is not None and hasattr(r, "__await__"):
                await r


@pytest.mark.anyio
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=SIZES,
    src_kind=st.sampled_from(SOURCES),
    sink_kind=st.sampled_from(SINKS),
    opts=st.sampled_from(OPTS),
    chunking=st.lists(st.integers(1, 3 * S), min_size=1, max_size=4),
)
async def test_stream_round_trip(
    anyio_backend: str,
    tmp_path: Path,
    n: int,
    src_kind: str,
    sink_kind: str,
    opts: api.Options,
    chunking: list[int],
) -> None:
    if anyio_backend == "trio" and "aiofiles" in (src_kind, sink_kind):
        src_kind = "anyio_file" if src_kind == "aiofiles" else src_kind
        sink_kind = "anyio_file" if sink_kind == "aiofiles" else sink_kind  # asyncio-only lib
    data = pattern(n, seed=n)
    ctx = {"object": f"obj-{n}"}
    o = _Opened(tmp_path, anyio_backend)
    try:
        src = await o.source(src_kind, data, chunking)
        dst, read_back = await o.sink(sink_kind)
        info = await api.encrypt(src, dst, keyring=KEYRING, object_context=ctx, options=opts)
        await o.close()
        ciphertext = read_back()
        assert info.plaintext_len == n
        assert info.ciphertext_len == len(ciphertext)
        # the in-memory path reads what the streaming path wrote, and vice versa
        assert await api.decrypt_bytes(ciphertext, keyring=KEYRING, expected_context=ctx) == data
        o = _Opened(tmp_path, anyio_backend)
        src2 = await o.source(src_kind, ciphertext, chunking)
        dst2, read_back2 = await o.sink(sink_kind)
        info2 = await api.decrypt(src2, dst2, keyring=KEYRING, expected_context=ctx, options=opts)
        await o.close()
        assert read_back2() == data
        assert info2.plaintext_len == n
        again = await api.encrypt_bytes(data, keyring=KEYRING, object_context=ctx, options=opts)
        assert len(again) == len(ciphertext)  # the length is a function of the inputs
    finally:
        await o.close()


@settings(max_examples=25, deadline=None)
@given(n=SIZES, opts=st.sampled_from(OPTS))
def test_sync_facade_round_trip(n: int, opts: api.Options) -> None:
    data = pattern(n)
    ct = sync.encrypt_bytes(data, keyring=KEYRING, options=opts)
    assert sync.decrypt_bytes(ct, keyring=KEYRING, options=opts) == data
    out = io.BytesIO()
    sync.decrypt(io.BytesIO(bytes(ct)), out, keyring=KEYRING, options=opts)
    assert out.getvalue() == data
    buf = bytearray(len(ct) + 7)
    written = sync.encrypt_into(data, buf, keyring=KEYRING, options=opts)
    assert written == len(ct)
    plain = bytearray(n)
    assert sync.decrypt_into(memoryview(buf)[:written], plain, keyring=KEYRING) == n
    assert plain == data


def test_into_rejects_short_buffers_before_touching_data() -> None:
    data = pattern(3 * S)
    ct = sync.encrypt_bytes(data, keyring=KEYRING, options=OPTS[0])
    with pytest.raises(ConfigurationError, match="needed"):
        sync.encrypt_into(data, bytearray(len(ct) - 1), keyring=KEYRING, options=OPTS[0])
    out = bytearray(b"\xaa" * (3 * S - 1))
    with pytest.raises(ConfigurationError, match="needed"):
        sync.decrypt_into(ct, out, keyring=KEYRING)
    assert out == b"\xaa" * (3 * S - 1)


@pytest.mark.parametrize("face", ["sync", "async"])
@pytest.mark.parametrize("opts", OPTS, ids=["one batch", "ranges on workers"])
@pytest.mark.parametrize("bad", ["first", "last"])
def test_into_never_shows_a_failing_segment_s_plaintext_in_the_caller_s_buffer(
    face: str, opts: api.Options, bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AES-GCM writes a segment's plaintext before it checks the tag: opened straight into the
    caller's buffer, that plaintext sat there, for a shared mapping's other process to read,
    until the failure zeroed it (review). Checked at the instant each tag fails, in a shared
    mapping (process-private memory is opened in place: test_tampering's scratch test)."""
    import mmap

    from cryptography.exceptions import InvalidTag

    from envelope.errors import AuthenticationError
    from envelope.hazmat.keyschedule import ObjectKeys

    marker = b"UNAUTHENTICATED!"
    data = marker * (3 * S // len(marker))
    ct = bytearray(sync.encrypt_bytes(data, keyring=KEYRING, options=opts))
    ct[-1 if bad == "last" else len(ct) - 2 * (S + 16) - 1] ^= 1  # a tag of the last or first
    out = mmap.mmap(-1, len(data))
    seen: list[bool] = []
    real = ObjectKeys.segment_cipher

    class Watched:
        def __init__(self, cipher: Any) -> None:
            self.cipher = cipher

        def decrypt_into(self, nonce: bytes, *args: Any) -> None:
            try:
                self.cipher.decrypt_into(nonce, *args)
            except InvalidTag:  # (earlier segments authenticated: their plaintext may show)
                i = int.from_bytes(nonce[:8], "big")
                seen.append(marker in out[i * S : (i + 1) * S])
                raise

    monkeypatch.setattr(ObjectKeys, "segment_cipher", lambda k, i: Watched(real(k, i)))
    with pytest.raises(AuthenticationError):
        if face == "sync":
            sync.decrypt_into(bytes(ct), out, keyring=KEYRING, options=opts)
        else:
            anyio.run(lambda: api.decrypt_into(bytes(ct), out, keyring=KEYRING, options=opts))
    assert seen and not any(seen)
    assert not any(out[:])
    # and an intact object still opens into the caller's buffer
    ct[-1 if bad == "last" else len(ct) - 2 * (S + 16) - 1] ^= 1
    assert sync.decrypt_into(bytes(ct), out, keyring=KEYRING, options=opts) == len(data)
    assert out[:] == data


def test_sync_streams_refuse_to_run_inside_an_event_loop() -> None:
    async def inner() -> None:
        sync.encrypt(b"x", BufferSink(), keyring=KEYRING)

    with pytest.raises(ConfigurationError, match="event loop"):
        anyio.run(inner)


def test_sync_in_memory_calls_work_inside_an_event_loop() -> None:
    """The object layer starts no loop, so a notebook or an async handler may call it (a
    cache miss goes to the process-wide portal thread, never to the caller's loop)."""
    fresh = Keyring(KEYRING.backend, KEYRING.key_id, cache=CachePolicy())

    async def inner() -> bytes:
        ct = sync.encrypt_bytes(b"x" * 100, keyring=fresh)
        return bytes(sync.decrypt_bytes(ct, keyring=fresh))

    assert anyio.run(inner) == b"x" * 100


@pytest.mark.anyio
async def test_objects_are_independent(anyio_backend: str) -> None:
    """Two encryptions of the same data differ (fresh data key and message id)."""
    a = await api.encrypt_bytes(b"same", keyring=KEYRING)
    b = await api.encrypt_bytes(b"same", keyring=KEYRING)
    assert a != b and a[16:48] != b[16:48]


def test_options_are_validated() -> None:
    for bad in (0, 1000, 2048, 1 << 27, 3 * 4096):
        with pytest.raises(ConfigurationError):
            api.Options(segment_size=bad)
    with pytest.raises(ConfigurationError):
        api.Options(workers=0)
    with pytest.raises(ConfigurationError):
        api.Options(depth=1)
    with pytest.raises(ConfigurationError):
        api.Options(max_wrapped_keys=9)
    assert api.Options(segment_size=1 << 26).seg_log2 == 26
    assert api.Options(segment_size=4096).seg_log2 == 12


def test_options_travel_as_their_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options rebuild from `dataclasses.asdict` (its settings and nothing derived), and one
    pickled to another process (a Dask worker) counts that machine's cores, not the sender's."""
    import dataclasses
    import pickle

    from envelope import options as options_module

    opts = api.Options(segment_size=1 << 16, batch_bytes=1 << 20)
    assert api.Options(**dataclasses.asdict(opts)) == opts
    assert set(dataclasses.asdict(opts)) == {
        "segment_size", "workers", "batch_bytes", "depth", "max_wrapped_keys", "memory_budget"
    }
    shipped = pickle.dumps(opts)
    monkeypatch.setattr(options_module, "_CPUS", 999)
    assert pickle.loads(shipped).worker_count == 999
