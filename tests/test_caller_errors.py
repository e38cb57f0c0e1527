"""A bad argument is a ConfigurationError that says what to pass (docs/library.md, "Errors"),
never a TypeError or an io.UnsupportedOperation from deep inside the call."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import envelope
from envelope import sync
from envelope.errors import ConfigurationError, EnvelopeError
from envelope.keyring import Keyring
from envelope.kms.memory import MemoryKms


@pytest.fixture(scope="module")
def kr() -> Keyring:
    kms = MemoryKms()
    return Keyring(kms, kms.create_key())


@pytest.fixture
def pipe() -> Iterator[io.BufferedReader]:
    r, w = os.pipe()
    os.close(w)
    with os.fdopen(r, "rb") as f:
        yield f


def cases(kr: Keyring, ct: bytes, pipe: io.BufferedReader) -> dict[str, Callable[[], Any]]:
    return {
        "random access to a pipe": lambda: envelope.open_decrypted(pipe, keyring=kr),
        "random access to a text stream": lambda: envelope.open_decrypted(
            io.StringIO("x" * 300), keyring=kr
        ),
        "a text source": lambda: sync.decrypt(io.StringIO("x" * 300), io.BytesIO(), keyring=kr),
        "a text sink": lambda: sync.decrypt(io.BytesIO(ct), io.StringIO(), keyring=kr),
        "a text sink for encrypt": lambda: sync.encrypt(
            io.BytesIO(b"rows"), io.StringIO(), keyring=kr
        ),
        "a read-only output buffer": lambda: sync.decrypt_into(ct, bytes(len(ct)), keyring=kr),
        "a read-only output buffer for encrypt": lambda: sync.encrypt_into(
            b"rows", bytes(4096), keyring=kr
        ),
        "an output that is no buffer": lambda: sync.decrypt_into(ct, [0] * 100, keyring=kr),
        "expected context of ints": lambda: sync.decrypt_bytes(
            ct, keyring=kr, expected_context={1: 2}
        ),
        "decrypt_many(None)": lambda: sync.decrypt_many(None, keyring=kr),  # type: ignore
        "decrypt_many(one object)": lambda: sync.decrypt_many(ct, keyring=kr),  # type: ignore
        "encrypt_many(None)": lambda: sync.encrypt_many(None, keyring=kr),  # type: ignore
        # a library user's review (these were AttributeError, KeyError or ValueError, several
        # only at first use, and an *_into with out=None reported a length and dropped it)
        "encrypt_into(out=None)": lambda: sync.encrypt_into(b"rows", None, keyring=kr),  # type: ignore
        "decrypt_into(out=None)": lambda: sync.decrypt_into(ct, None, keyring=kr),  # type: ignore
        "async encrypt_into(out=None)": lambda: _run(
            envelope.encrypt_into(b"rows", None, keyring=kr)  # type: ignore[arg-type]
        ),
        "async decrypt_into(out=None)": lambda: _run(
            envelope.decrypt_into(ct, None, keyring=kr)  # type: ignore[arg-type]
        ),
        "Keyring(cache=True)": lambda: Keyring(MemoryKms(), "k", cache=True),  # type: ignore
        "Keyring(retry=3)": lambda: Keyring(MemoryKms(), "k", retry=3),  # type: ignore
        "Keyring(decrypt_with=one backend)": lambda: Keyring(decrypt_with=MemoryKms()),  # type: ignore
        "Keyring(a key URI)": lambda: Keyring("local:alias/x", "k"),  # type: ignore
        "keyring=None": lambda: sync.encrypt_bytes(b"rows", keyring=None),  # type: ignore
        "keyring=a backend": lambda: sync.decrypt_bytes(ct, keyring=MemoryKms()),  # type: ignore
        "kms_context a string": lambda: sync.encrypt_bytes(
            b"rows",
            keyring=kr,
            kms_context="tenant",  # type: ignore[arg-type]
        ),
        "object_contexts one mapping": lambda: sync.encrypt_many(
            [b"a"],
            keyring=kr,
            object_contexts={"path": "a"},
            return_exceptions=True,  # type: ignore
        ),
        "expected_contexts one mapping": lambda: sync.decrypt_many(
            [ct],
            keyring=kr,
            expected_contexts={"path": "a"},
            return_exceptions=True,  # type: ignore
        ),
        "a closed source": lambda: sync.encrypt(_closed(), io.BytesIO(), keyring=kr),
        "random access to a closed file": lambda: envelope.open_decrypted(_closed(), keyring=kr),
        "options a dict": lambda: sync.encrypt_bytes(
            b"rows",
            keyring=kr,
            options={"segment_size": 4096},  # type: ignore[arg-type]
        ),
        "options a dict, async": lambda: _run(
            envelope.decrypt_bytes(ct, keyring=kr, options={"segment_size": 4096})  # type: ignore[arg-type]
        ),
        "options a dict, streams": lambda: sync.encrypt(
            io.BytesIO(b"rows"),
            io.BytesIO(),
            keyring=kr,
            options={},  # type: ignore[arg-type]
        ),
        "options a dict, random access": lambda: envelope.open_decrypted(
            io.BytesIO(ct),
            keyring=kr,
            options={},  # type: ignore[arg-type]
        ),
    }


def _run(coro: Any) -> Any:
    import anyio

    async def main() -> Any:
        return await coro

    return anyio.run(main)


def _closed() -> io.BytesIO:
    f = io.BytesIO(b"rows")
    f.close()
    return f


CASES = list(cases(None, b"", None))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", CASES)
def test_a_bad_argument_is_a_configuration_error(
    kr: Keyring, pipe: io.BufferedReader, name: str
) -> None:
    ct = sync.encrypt_bytes(b"rows" * 100, keyring=kr)
    with pytest.raises(ConfigurationError) as e:
        cases(kr, ct, pipe)[name]()
    assert str(e.value)


def test_the_async_stream_face_checks_contexts_like_every_other_face() -> None:
    """`await envelope.encrypt(..., kms_context="tenant")` raised a bare ValueError from
    `dict()`, and a list of pairs as the object context was taken silently; the other faces
    refuse both with ConfigurationError (review)."""
    from functools import partial

    import anyio

    from envelope import api
    from envelope.errors import ConfigurationError
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key("k"))
    for bad in ({"kms_context": "tenant"}, {"object_context": [("path", "a")]}):
        call = partial(api.encrypt, b"data", bytearray(), keyring=kr, **bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="must be a mapping"):
            anyio.run(call)


@pytest.mark.parametrize("face", ["sync", "async"])
def test_into_calls_refuse_an_output_that_shares_the_input_s_memory(face: str) -> None:
    """`encrypt_into(view_of_buf, buf)` sealed what the header had already overwritten (an
    object that opened without error, to the wrong bytes), and `decrypt_into(buf, buf)`
    failed at random after zeroing the caller's ciphertext. Refused before any KMS call,
    whether the two are views of one object or different objects over one memory (review)."""
    import ctypes
    import os
    from functools import partial

    import anyio

    from envelope import api, sync
    from envelope.errors import ConfigurationError
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key("k"))
    sealed = bytes(sync.encrypt_bytes(os.urandom(3000), keyring=kr))
    calls_before = dict(kms.calls)

    def call(fn: str, data: object, out: object) -> None:
        if face == "sync":
            getattr(sync, fn)(data, out, keyring=kr)
        else:
            anyio.run(partial(getattr(api, fn), data, out, keyring=kr))

    buf = bytearray(os.urandom(6000))
    other_object_same_memory = (ctypes.c_char * 1000).from_buffer(buf, 2000)
    for data in (
        memoryview(buf)[:1000],
        buf,
        memoryview(other_object_same_memory),
        memoryview(other_object_same_memory).toreadonly(),  # read-only, yet the same memory
    ):
        with pytest.raises(ConfigurationError, match="overlap"):
            call("encrypt_into", data, buf)
    inplace = bytearray(sealed)
    with pytest.raises(ConfigurationError, match="overlap"):
        call("decrypt_into", inplace, inplace)
    assert bytes(inplace) == sealed  # the ciphertext is left as it was
    assert dict(kms.calls) == calls_before
    out = bytearray(8000)  # apart: fine
    assert call("encrypt_into", memoryview(buf)[:1000], out) is None
    arena = bytearray(8000)  # disjoint regions of one buffer: fine too
    arena[:1000] = os.urandom(1000)
    assert call("encrypt_into", memoryview(arena)[:1000], memoryview(arena)[2000:]) is None


@pytest.mark.parametrize("face", ["sync", "async"])
def test_what_the_header_refuses_is_refused_before_the_kms_is_asked(face: str) -> None:
    """An expected context of the wrong type, or one the object lacks, and a decrypt_into
    buffer too short for the plaintext (known from the header) were refused only after the
    data key was unwrapped: a KMS request (and an audit record) for a call that could not
    succeed (review)."""
    import os
    from functools import partial

    import anyio

    from envelope import api, sync
    from envelope.errors import AuthenticationError, ConfigurationError, ContextMismatchError
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    kms = MemoryKms()
    writer = Keyring(kms, kms.create_key("k"))
    sealed = bytes(sync.encrypt_bytes(os.urandom(3000), keyring=writer, object_context={"a": "1"}))
    reader = Keyring(decrypt_with=[kms])  # no cache: every open asks the KMS
    before = dict(kms.calls)

    def call(fn: str, *args: object, **kw: object) -> None:
        if face == "sync":
            getattr(sync, fn)(*args, keyring=reader, **kw)
        else:
            anyio.run(partial(getattr(api, fn), *args, keyring=reader, **kw))

    with pytest.raises(ConfigurationError, match="mapping"):
        call("decrypt_bytes", sealed, expected_context="a=1")
    with pytest.raises(ConfigurationError, match="3000 needed"):
        call("decrypt_into", sealed, bytearray(100))
    assert dict(kms.calls) == before
    # a context the header lacks is refused once the header is authenticated: a tampered
    # header must be AuthenticationError, not another object's mismatch (review of the fix)
    with pytest.raises(ContextMismatchError):
        call("decrypt_bytes", sealed, expected_context={"a": "2"})
    tagged = bytes(
        sync.encrypt_bytes(b"x", keyring=writer, object_context={"tenant": "alpha-ctx"})
    )
    at = tagged.index(b"alpha-ctx")
    tampered = tagged[:at] + b"alphb-ctx" + tagged[at + 9 :]
    with pytest.raises(AuthenticationError):
        call("decrypt_bytes", tampered, expected_context={"tenant": "alpha-ctx"})


def test_a_failed_abort_does_not_hide_the_failure_that_caused_it() -> None:
    """An UploadPart failed and the AbortMultipartUpload after it failed too: the error
    raised (and the lake report) named only the abort, and the cause was lost (review).
    The cause is raised, with the abort's failure as a note."""
    import anyio

    from envelope import api
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    class FailingSink:
        async def write(self, data: memoryview) -> None:
            raise OSError(5, "UploadPart failed (injected)")

        async def commit(self) -> None:
            raise AssertionError("not reached")

        async def abort(self) -> None:
            raise RuntimeError("AbortMultipartUpload failed (injected)")

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key("k"))
    with pytest.raises(OSError, match="UploadPart failed") as e:
        anyio.run(lambda: api.encrypt(b"x" * 100_000, FailingSink(), keyring=kr))
    assert any("AbortMultipartUpload failed" in n for n in e.value.__notes__)


def test_keyrings_close_in_a_with_block_and_odd_arguments_are_refused() -> None:
    """Sync callers had no `with` for a keyring (only `async with`); 2.5 attempts was a retry
    policy; an empty list or string as an expected context was taken as "no check" (review)."""
    import pytest

    from envelope import sync
    from envelope.errors import ClosedError, ConfigurationError
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms
    from envelope.kms.retry import RetryPolicy

    kms = MemoryKms()
    with Keyring(kms, kms.create_key()) as kr:
        ct = bytes(sync.encrypt_bytes(b"x", keyring=kr, object_context={"a": "b"}))
        for odd in ([], "", ()):
            with pytest.raises(ConfigurationError, match="mapping"):
                sync.decrypt_bytes(ct, keyring=kr, expected_context=odd)  # type: ignore[arg-type]
        assert bytes(sync.decrypt_bytes(ct, keyring=kr, expected_context={})) == b"x"
    with pytest.raises(ClosedError):
        sync.encrypt_bytes(b"x", keyring=kr)
    for bad in (2.5, True, "3", 0):
        with pytest.raises(ConfigurationError, match="max_attempts"):
            RetryPolicy(max_attempts=bad)  # type: ignore[arg-type]


def test_the_async_batch_calls_give_up_when_their_caller_is_cancelled() -> None:
    """`await encrypt_many` / `decrypt_many` ran to their end whatever the caller's deadline
    (a 0.2 s deadline waited 5 s here; review): the caller gets its cancellation at once, and
    the batch stops starting items."""
    import time

    import anyio

    from envelope import api, sync
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    class Finishing(MemoryKms):
        """Counts the KMS calls that returned (a call still running after the caller had
        gone on is one that ends after the count was read)."""

        finished = 0

        def generate_data_key_blocking(self, *a: Any, **kw: Any) -> Any:
            out = super().generate_data_key_blocking(*a, **kw)
            self.finished += 1
            return out

        def decrypt_data_key_blocking(self, *a: Any, **kw: Any) -> Any:
            out = super().decrypt_data_key_blocking(*a, **kw)
            self.finished += 1
            return out

    kms = Finishing()
    kr = Keyring(kms, kms.create_key())  # no cache: one KMS call per item
    items = [b"row %d" % i for i in range(100)]
    sealed = sync.encrypt_many(items, keyring=kr)
    kms.latency = 0.05  # 50 ms a call from here
    for many, batch in ((api.encrypt_many, items), (api.decrypt_many, sealed)):
        kms.calls.clear()

        async def call(many=many, batch=batch) -> float:  # type: ignore[no-untyped-def]
            started = time.monotonic()
            with anyio.fail_after(0.2):
                await many(batch, keyring=kr)
            return started

        t0 = time.monotonic()
        try:
            anyio.run(call)
        except TimeoutError:
            pass
        else:
            raise AssertionError("the batch finished within its deadline")
        assert time.monotonic() - t0 < 1.0
        # the caller got its cancellation once the item under way had ended: nothing of the
        # batch runs after that, on its keyring or its buffers (diff review)
        calls, finished = sum(kms.calls.values()), kms.finished
        time.sleep(0.3)
        assert (sum(kms.calls.values()), kms.finished) == (calls, finished) and calls < 40


def test_a_bad_context_is_named() -> None:
    """"context is 9007 bytes; the limit is 8192" did not say which context (review)."""
    import pytest

    from envelope import sync
    from envelope.errors import ConfigurationError
    from envelope.keyring import Keyring
    from envelope.kms.memory import MemoryKms

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key())
    with pytest.raises(ConfigurationError, match=r"^object_context: context is"):
        sync.encrypt_bytes(b"x", keyring=kr, object_context={"k": "v" * 17_000})
    with pytest.raises(ConfigurationError, match=r"^kms_context: context keys"):
        sync.encrypt_bytes(b"x", keyring=kr, kms_context={"k": 1})  # type: ignore[dict-item]


# -- buffers, options and arguments the review found escaping as raw errors --------------------


def _odd_buffers() -> dict[str, Any]:
    import mmap

    import numpy as np

    closed = mmap.mmap(-1, 4096)
    closed.close()
    released = memoryview(b"abc")
    released.release()
    return {"empty 2-D array": np.zeros((0, 3)), "closed mmap": closed, "released view": released}


def test_odd_buffers_are_configuration_errors_and_stay_in_their_batch_slot(kr: Keyring) -> None:
    """A zero-size 2-D array, a closed mmap or a released memoryview escaped as a raw
    TypeError or ValueError, and in a `*_many(return_exceptions=True)` batch sank the whole
    batch (review). An empty array of any shape is empty data."""
    odd = _odd_buffers()
    assert (
        bytes(
            sync.decrypt_bytes(
                sync.encrypt_bytes(odd.pop("empty 2-D array"), keyring=kr), keyring=kr
            )
        )
        == b""
    )
    for name, buf in odd.items():
        with pytest.raises(ConfigurationError):
            sync.encrypt_bytes(buf, keyring=kr)
        out = sync.encrypt_many([b"a", buf, b"c"], keyring=kr, return_exceptions=True)
        assert isinstance(out[1], ConfigurationError), name
        assert [bytes(sync.decrypt_bytes(out[i], keyring=kr)) for i in (0, 2)] == [b"a", b"c"]


def test_batches_and_rewrap_check_their_options(kr: Keyring) -> None:
    """`options={}` failed as an AttributeError in the batch calls and in rewrap; rewrap
    allocated `batch_bytes` whole (1 << 50: a MemoryError); absurd `workers` were taken and
    left threads behind (review)."""
    import anyio

    sealed = bytes(sync.encrypt_bytes(b"x", keyring=kr))

    def rewrap(**kw: Any) -> Any:
        return anyio.run(
            lambda: envelope.rewrap(io.BytesIO(sealed), io.BytesIO(), keyring=kr, to=kr, **kw)
        )

    for call in (
        lambda: sync.encrypt_many([b"x"], keyring=kr, options={}),  # type: ignore[arg-type]
        lambda: sync.decrypt_many([sealed], keyring=kr, options={}),  # type: ignore[arg-type]
        lambda: rewrap(options={}),
        lambda: rewrap(wrapped_cache=[]),
        lambda: envelope.Options(workers=10**7),
    ):
        with pytest.raises(ConfigurationError):
            call()
    out = io.BytesIO()
    big = envelope.Options(batch_bytes=1 << 50)
    anyio.run(lambda: envelope.rewrap(io.BytesIO(sealed), out, keyring=kr, to=kr, options=big))
    assert bytes(sync.decrypt_bytes(out.getvalue(), keyring=kr)) == b"x"


def test_keyring_and_policies_refuse_what_is_not_theirs() -> None:
    """`Keyring(5)`, `decrypt_with=[None]`, `RetryPolicy(deadline="5")` failed later as raw
    AttributeError/TypeError, and `CachePolicy(enabled="no")` turned the cache on (review)."""
    kms = MemoryKms()
    for call in (
        lambda: Keyring(5, "k"),  # type: ignore[arg-type]
        lambda: Keyring(b"file:x", "k"),  # type: ignore[arg-type]
        lambda: Keyring(kms, kms.create_key(), decrypt_with=[None]),  # type: ignore[list-item]
        lambda: Keyring(decrypt_with=["file:my.key"]),  # type: ignore[list-item]
        lambda: envelope.RetryPolicy(deadline="5"),  # type: ignore[arg-type]
        lambda: envelope.RetryPolicy(budget_capacity=2.5),  # type: ignore[arg-type]
        lambda: envelope.CachePolicy(enabled="no"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigurationError):
            call()


def test_a_short_encrypt_into_buffer_fetches_no_data_key() -> None:
    """encrypt_into fetched (and counted against the cache's limits) a data key before it
    found the buffer too short: without a cache each failed call cost a GenerateDataKey
    (review). A buffer shorter than any header could make is refused first."""
    import anyio

    kms = MemoryKms()
    kr = Keyring(kms, kms.create_key())
    for call in (
        lambda: sync.encrypt_into(b"x" * 1000, bytearray(1000), keyring=kr),
        lambda: anyio.run(lambda: envelope.encrypt_into(b"x" * 1000, bytearray(1000), keyring=kr)),
    ):
        with pytest.raises(ConfigurationError, match="at least"):
            call()
    assert kms.calls["GenerateDataKey"] == 0


def test_a_closed_key_file_backend_is_closed(tmp_path: Any) -> None:
    """Closing a keyring over a key file left its backend wrapping and unwrapping for any
    other keyring (docs/library.md: a backend used after close raises ClosedError, and
    closing one closes it for all; review)."""
    from envelope.errors import ClosedError
    from envelope.kms.filekey import FileKeyBackend, generate_key_file

    path = tmp_path / "k.key"
    key_id = generate_key_file(path)
    backend = FileKeyBackend(path)
    r1, r2 = Keyring(backend, key_id), Keyring(backend, key_id)
    sealed = sync.encrypt_bytes(b"x", keyring=r2)
    r1.close()
    with pytest.raises(ClosedError):
        sync.encrypt_bytes(b"y", keyring=r2)
    with pytest.raises(ClosedError):
        sync.decrypt_bytes(sealed, keyring=r2)


def test_a_key_file_closed_mid_call_never_wraps_under_a_wiped_key(tmp_path: Any) -> None:
    """The close wiped the subkey in place while another thread's wrap, past its check,
    read it: data keys came back wrapped under an all-zero key, readable by anyone (diff
    review; 235 of ~900 in 300 races). Every call either has the real key or is refused."""
    import sys
    import threading

    from envelope.errors import ClosedError
    from envelope.kms import _aeswrap
    from envelope.kms.filekey import FileKeyBackend, generate_key_file

    path = tmp_path / "k.key"
    generate_key_file(path)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    exposed = made = 0
    try:
        for _ in range(100):
            backend = FileKeyBackend(path)
            got: list[Any] = []

            def generate(b: FileKeyBackend = backend, out: list[Any] = got) -> None:
                try:
                    while True:
                        out.append(b.generate_data_key_blocking(b.key_id, context={}))
                except ClosedError:
                    pass

            t = threading.Thread(target=generate)
            t.start()
            while len(got) < 3:
                pass
            backend.close_blocking()
            t.join(10)
            for dk in got:
                made += 1
                try:
                    w = dk.wrapped
                    zero = _aeswrap.unwrap(bytearray(32), w.key_id, w.ciphertext, {})
                except EnvelopeError:
                    continue
                exposed += bytes(zero) == bytes(dk.plaintext)
    finally:
        sys.setswitchinterval(interval)
    assert made >= 300 and exposed == 0
