"""The recipes: encrypt and decrypt bytes, paths, files and streams (async; see `envelope.sync`).

    ciphertext = await encrypt_bytes(data, keyring=kr, object_context={"path": "a/b"})
    plaintext  = await decrypt_bytes(ciphertext, keyring=kr, expected_context={"path": "a/b"})
    info       = await encrypt("in.parquet", "out.env", keyring=kr)     # atomic, bounded memory

A writer asks its keyring for a data key, derives the object's keys from it and a fresh
message id, writes the header and seals the body through the bounded pipeline. A reader parses
the header defensively, unwraps the data key, checks commitment and header MAC, checks the
caller's expected context, and only then opens segments.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal, overload

import anyio
import anyio.to_thread
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from ._pipeline import run_pipeline
from .errors import ConfigurationError, EnvelopeError, HeaderFormatError, KmsKeyError
from .hazmat.format import (
    DATA_KEY_LEN,
    FIXED_PREFIX_LEN,
    MAX_EDKS,
    TAG_LEN,
    Header,
    WrappedKey,
    encode_context,
)
from .hazmat.keyschedule import ObjectKeys, open_header, seal_header
from .hazmat.segments import open_segments, seal_segments
from .keyring import Keyring
from .metrics import NULL_OBSERVER, Direction, Observer
from .objects import (
    KeptPaths,
    PreparedObject,
    Tracked,
    byte_view,
    check_before_unwrap,
    check_contexts,
    check_expected_contexts,
    check_keyring,
    check_output_path,
    checked_contexts,
    header_length,
    open_into,
    open_object_keys,
    parse_object_header,
    prepare_with_key,
    required_output,
    seal_into,
)
from .options import DEFAULT_MEMORY_BUDGET as DEFAULT_MEMORY_BUDGET
from .options import DEFAULT_OPTIONS as DEFAULT_OPTIONS
from .options import MIN_MEMORY_BUDGET as MIN_MEMORY_BUDGET
from .options import ObjectInfo as ObjectInfo
from .options import Options as Options
from .options import check_options
from .options import object_info as object_info
from .streams import Sink, SinkLike, Source, SourceLike, open_sink, open_source, read_full

__all__ = (
    "ObjectInfo",
    "Options",
    "decrypt",
    "decrypt_bytes",
    "decrypt_into",
    "decrypt_many",
    "encrypt",
    "encrypt_bytes",
    "encrypt_into",
    "encrypt_many",
    "rewrap",
)

Progress = Callable[[int], Awaitable[None] | None]

@asynccontextmanager
async def _source_scope(source: SourceLike) -> AsyncIterator[Source]:
    src = open_source(source)
    try:
        yield src
    finally:
        with anyio.CancelScope(shield=True):
            await src.aclose()


@asynccontextmanager
async def _sink_scope(sink: SinkLike) -> AsyncIterator[Sink]:
    """Opened before anything can fail, committed only if everything succeeded, aborted
    (for a path: the temporary file removed, the target untouched) on any error."""
    out = open_sink(sink)
    try:
        yield out
        await out.commit()
    except BaseException as e:
        await abort_keeping(out, e)
        raise


async def abort_keeping(sink: Sink, error: BaseException) -> None:
    """Abort `sink` after `error`, shielded from cancellation. An abort that fails too (an
    object store refusing AbortMultipartUpload after an UploadPart failed) is added to
    `error` as a note instead of replacing it: the report named only the abort's failure,
    and the cause was lost."""
    with anyio.CancelScope(shield=True):
        try:
            await sink.abort()
        except Exception as abort_error:
            error.add_note(
                f"discarding the unfinished output failed too: {type(abort_error).__name__}: "
                f"{abort_error}"
            )


class _Tracked:
    """Reports one object's start, end and per-batch crypto time to an observer."""

    __slots__ = ("direction", "observer", "plaintext_len")

    def __init__(self, observer: Observer, direction: Direction) -> None:
        self.observer = observer
        self.direction = direction
        self.plaintext_len = 0

    def __enter__(self) -> _Tracked:
        self.observer.object_started(self.direction)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.observer.object_finished(self.direction, self.plaintext_len, exc_type is None)

    def timed(
        self, fn: Callable[[int, memoryview, memoryview, bool], int], seg_log2: int
    ) -> Callable[[int, memoryview, memoryview, bool], int]:
        """Wrap a batch function so each call reports its segment count and duration."""
        observer, direction = self.observer, self.direction
        if observer is NULL_OBSERVER:
            return fn

        def run(index: int, src: memoryview, dst: memoryview, final: bool) -> int:
            t0 = time.perf_counter()
            n = fn(index, src, dst, final)
            seg = 1 << seg_log2
            count = max(1, -(-len(src) // (seg if direction == "encrypt" else seg + TAG_LEN)))
            observer.batch_processed(direction, count, time.perf_counter() - t0)
            return n

        return run


# -- writing --------------------------------------------------------------------------------


async def _new_object(
    keyring: Keyring,
    kms_context: Mapping[str, str] | None,
    object_context: Mapping[str, str] | None,
    seg_log2: int,
    expected_bytes: int | None = None,
) -> PreparedObject:
    """A new object's header and keys; the only await is the data key (a KMS call on a miss)."""
    check_keyring(keyring)
    kms, obj = checked_contexts(kms_context, object_context)  # refused before any KMS call
    data_key = await keyring.encryption_key(kms, expected_bytes=expected_bytes)
    return prepare_with_key(data_key, kms, obj, seg_log2)


async def prepare_object(
    keyring: Keyring,
    *,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    expected_bytes: int | None = None,
) -> PreparedObject:
    """`envelope.objects.new_object` for async callers (the data key is awaited)."""
    return await _new_object(keyring, kms_context, object_context, options.seg_log2, expected_bytes)


def seal_prepared(prepared: PreparedObject, plaintext: bytes | bytearray | memoryview) -> bytearray:
    """Seal a whole plaintext under a prepared header, on the calling thread."""
    out, _ = seal_into(prepared, byte_view(plaintext), None)
    assert isinstance(out, bytearray)
    return out


def open_whole(
    header: Header, keys: ObjectKeys, ciphertext: bytes | bytearray | memoryview
) -> bytearray:
    """Open a whole in-memory object whose header `open_object` already authenticated."""
    out, _ = open_into(header, keys, byte_view(ciphertext), None)
    assert isinstance(out, bytearray)
    return out


def _rewrap_slot(data_key: bytearray, kms_context: Mapping[str, str]) -> bytes:
    mac = crypto_hmac.HMAC(bytes(data_key), hashes.SHA256())
    mac.update(b"envelope/rewrap-cache" + encode_context(kms_context))
    return mac.finalize()


#: Wraps in flight, by (the cache's id, slot): single-flight for `rewrap_header`'s cache,
#: across threads and event loops alike (a cache shared by a thread pool's rewraps: an
#: anyio.Event belongs to one loop, and was refused or hung in another; review).
_wrapping: dict[tuple[int, bytes], threading.Event] = {}
_wrapping_lock = threading.Lock()


async def _wrapped_once(
    cache: dict[bytes, WrappedKey], slot: bytes, wrap: Callable[[], Awaitable[WrappedKey]]
) -> WrappedKey:
    """`cache[slot]`, made by `wrap` once: a task that finds the same slot being wrapped waits
    for that answer instead of asking the KMS again (and, if that wrap failed, tries itself).
    The wait polls a `threading.Event`, as the data-key cache's single-flight does."""
    key = (id(cache), slot)
    while True:
        with _wrapping_lock:
            hit = cache.get(slot)
            if hit is not None:
                return hit
            pending = _wrapping.get(key)
            if pending is None:
                done = _wrapping[key] = threading.Event()
                break
        delay = 0.0005
        while not pending.is_set():
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.01)
    try:
        new = await wrap()
        with _wrapping_lock:
            cache[slot] = new
        return new
    finally:
        with _wrapping_lock:
            del _wrapping[key]
        done.set()


async def rewrap_header(
    header: Header,
    *,
    keyring: Keyring,
    to: Keyring,
    wrapped_cache: dict[bytes, WrappedKey] | None = None,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
) -> bytes:
    """A new header for the same body, its data key wrapped under `to`'s key instead.

    The data key is unwrapped with `keyring` and the old header authenticated (commitment and
    MAC), and its contexts checked against the expected pairs (ContextMismatchError), before
    anything is wrapped or written; the new header keeps every bound field, so HD and hence
    every segment stay valid: the body is reused byte for byte, never decrypted. Objects
    written under one cached data key share their data key: `wrapped_cache` (a MAC of the
    data key -> its new wrapped key) makes a whole prefix cost one KMS wrap per data key,
    also when many objects sharing one are re-wrapped at once (the first wraps it, the
    others wait for its answer), so the prefix keeps one wrapped key per data key.
    """
    check_keyring(keyring)
    check_expected_contexts(expected_context, expected_kms_context)
    data_key = await keyring.decryption_key(header.wrapped_keys, header.kms_context)
    try:
        if len(data_key) != DATA_KEY_LEN:
            raise KmsKeyError(f"backend returned a {len(data_key)}-byte data key; 32 expected")
        keys = open_header(header, data_key)
        check_contexts(header, expected_context, expected_kms_context)
        # Keyed by the data key itself (through a MAC, never stored), not by the header's
        # wrapped bytes: a hostile header could list another object's wrapped key next to
        # its own and poison a cache keyed by what it claims.
        if wrapped_cache is None:
            new = await to.wrap_key(data_key, header.kms_context)
        else:
            slot = _rewrap_slot(data_key, header.kms_context)
            new = await _wrapped_once(
                wrapped_cache, slot, partial(to.wrap_key, data_key, header.kms_context)
            )
    finally:
        data_key[:] = bytes(len(data_key))
    raw, hd = seal_header(
        keys,
        seg_log2=header.seg_log2,
        message_id=header.message_id,
        kms_context=header.kms_context,
        object_context=header.object_context,
        wrapped_keys=(new,),
    )
    if hd != header.bound_digest:  # cannot happen unless the codec changed: refuse loudly
        raise HeaderFormatError("re-wrapped header does not bind the same body")
    return raw


async def encrypt(
    source: SourceLike,
    sink: SinkLike,
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    on_progress: Progress | None = None,
    observer: Observer = NULL_OBSERVER,
) -> ObjectInfo:
    """Encrypt `source` into `sink` with bounded memory.

    `kms_context` goes to the KMS with the data-key request (and is what a cache shares);
    `object_context` stays in the header, bound by its MAC and every segment. A path sink is
    written atomically: on any error the target is left as it was.
    """
    check_options(options)
    check_output_path(sink, keyring, source)
    kctx, octx = checked_contexts(kms_context, object_context)
    seg_log2 = options.seg_log2
    s = 1 << seg_log2
    plan = options.plan("encrypt", seg_log2)
    k = plan.segments_per_batch
    with _Tracked(observer, "encrypt") as track:
        async with _source_scope(source) as src, _sink_scope(sink) as out:
            prepared = await _new_object(keyring, kctx, octx, seg_log2)
            header, hd, keys = prepared.header, prepared.bound_digest, prepared.keys
            wrapped = prepared.wrapped_keys
            await out.write(memoryview(header))

            async def on_batch(n: int) -> None:
                # Charge the data key as plaintext is sealed, so a cache's byte limit
                # holds for streams of unknown length.
                keyring.charge(wrapped[0], n)
                if on_progress is not None:
                    r = on_progress(n)
                    if r is not None:
                        await r

            def process(index: int, src_mv: memoryview, dst: memoryview, final: bool) -> int:
                return seal_segments(keys, hd, index * k, src_mv, dst, seg_log2, final)

            body = await run_pipeline(
                src,
                out,
                track.timed(process, seg_log2),
                plan,
                on_batch=on_batch,
            )
        track.plaintext_len = body - max(1, -(-body // (s + TAG_LEN))) * TAG_LEN
    return object_info(
        len(header), header[16:48], seg_log2, track.plaintext_len, kctx, octx, wrapped
    )


async def _seal_in_memory(
    data: bytes | bytearray | memoryview,
    out: bytearray | memoryview | None,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None,
    object_context: Mapping[str, str] | None,
    options: Options,
    observer: Observer,
) -> tuple[bytearray | memoryview, int]:
    """Seal a whole in-memory object into `out` (or a new exact-size buffer) on the object
    layer: inline when it is one batch (a thread hop costs more than the work), else on a
    worker thread that spreads the segments over the pool."""
    check_options(options)
    src = byte_view(data)
    args = (src, out, keyring, kms_context, object_context, options)
    if observer is NULL_OBSERVER:  # nothing to report: no tracking on every small object
        return await _sealed_in_memory(*args, None)
    with Tracked(observer, "encrypt") as track:
        result = await _sealed_in_memory(*args, track)
        track.plaintext_len = len(src)
    return result


async def _sealed_in_memory(
    src: memoryview,
    out: bytearray | memoryview | None,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None,
    object_context: Mapping[str, str] | None,
    options: Options,
    track: Tracked | None,
) -> tuple[bytearray | memoryview, int]:
    seg_log2 = options.seg_log2
    prepared = await _new_object(keyring, kms_context, object_context, seg_log2, len(src))
    seal = partial(
        seal_into,
        prepared,
        src,
        out,
        per_batch=max(1, options.batch_bytes >> seg_log2),
        workers=options.worker_count,
        track=track,
    )
    if len(src) <= options.batch_bytes:
        return seal()
    return await anyio.to_thread.run_sync(seal)


async def encrypt_into(
    data: bytes | bytearray | memoryview,
    out: bytearray | memoryview,
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
) -> int:
    """Encrypt an in-memory object into the caller's buffer; returns the bytes written.

    For hot loops that reuse one output buffer (no allocation, no page faults). `out` must
    hold the header plus the plaintext plus 16 bytes per segment; a short buffer raises
    ConfigurationError naming the size needed, before any segment is sealed.
    """
    required_output(out, data, sealing=options)
    _, total = await _seal_in_memory(
        data, out, keyring, kms_context, object_context, options, observer
    )
    return total


async def encrypt_bytes(
    data: bytes | bytearray | memoryview,
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
) -> bytearray:
    """Encrypt an in-memory object into a new, exactly sized buffer.

    Returns a bytearray (no final copy of a large result; the caller may reuse or wipe it).
    """
    buf, _ = await _seal_in_memory(
        data, None, keyring, kms_context, object_context, options, observer
    )
    assert isinstance(buf, bytearray)
    return buf


# -- reading --------------------------------------------------------------------------------


async def read_header(source: Source, *, max_wrapped_keys: int = MAX_EDKS) -> Header:
    """Read and parse exactly one header from `source` (not authenticated yet)."""
    prefix = bytearray(FIXED_PREFIX_LEN)
    got = await read_full(source, memoryview(prefix))
    raw = bytearray(header_length(memoryview(prefix)[:got]))
    raw[:FIXED_PREFIX_LEN] = prefix
    got += await read_full(source, memoryview(raw)[FIXED_PREFIX_LEN:])
    return parse_object_header(memoryview(raw)[:got], max_wrapped_keys=max_wrapped_keys)


async def open_object(
    header: Header,
    *,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
) -> ObjectKeys:
    """Unwrap the data key, check commitment, MAC and expected contexts; return the keys.
    Expected contexts that are not mappings of strings are refused before the KMS is asked."""
    check_keyring(keyring)
    check_expected_contexts(expected_context, expected_kms_context)
    data_key = await keyring.decryption_key(header.wrapped_keys, header.kms_context)
    return open_object_keys(
        header,
        data_key,
        expected_context=expected_context,
        expected_kms_context=expected_kms_context,
    )


async def decrypt(
    source: SourceLike,
    sink: SinkLike,
    *,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    on_progress: Progress | None = None,
    observer: Observer = NULL_OBSERVER,
) -> ObjectInfo:
    """Decrypt `source` into `sink`, releasing each segment only once its tag verified.

    The object is valid only if the call returns: on any error a path sink is removed and
    the target left as it was; a stream sink may have received the authenticated segments
    that preceded the failure and must be rolled back by the caller.
    """
    check_options(options)
    check_output_path(sink, keyring, source)
    with _Tracked(observer, "decrypt") as track:
        async with _source_scope(source) as src, _sink_scope(sink) as out:
            header = await read_header(src, max_wrapped_keys=options.max_wrapped_keys)
            seg_log2 = header.seg_log2
            keys = await open_object(
                header,
                keyring=keyring,
                expected_context=expected_context,
                expected_kms_context=expected_kms_context,
            )
            # after the header authenticated (a forged segment size is AuthenticationError,
            # not advice to raise the budget), before any output
            plan = options.plan("decrypt", seg_log2)
            k = plan.segments_per_batch
            hd = header.bound_digest

            def process(index: int, src_mv: memoryview, dst: memoryview, final: bool) -> int:
                return open_segments(keys, hd, index * k, src_mv, dst, seg_log2, final)

            track.plaintext_len = await run_pipeline(
                src,
                out,
                track.timed(process, seg_log2),
                plan,
                on_batch=on_progress,
                count_output=True,  # plaintext bytes, as every other path reports
            )
    return object_info(
        header.header_len,
        header.message_id,
        header.seg_log2,
        track.plaintext_len,
        header.kms_context,
        header.object_context,
        header.wrapped_keys,
    )


async def _open_in_memory(
    data: bytes | bytearray | memoryview,
    out: bytearray | memoryview | None,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None,
    expected_kms_context: Mapping[str, str] | None,
    options: Options,
    observer: Observer,
) -> tuple[bytearray | memoryview, int]:
    check_options(options)
    view = byte_view(data)
    args = (view, out, keyring, expected_context, expected_kms_context, options)
    if observer is NULL_OBSERVER:  # as in _seal_in_memory
        return await _opened_in_memory(*args, None)
    with Tracked(observer, "decrypt") as track:
        result = await _opened_in_memory(*args, track)
        track.plaintext_len = result[1]
    return result


async def _opened_in_memory(
    view: memoryview,
    out: bytearray | memoryview | None,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None,
    expected_kms_context: Mapping[str, str] | None,
    options: Options,
    track: Tracked | None,
) -> tuple[bytearray | memoryview, int]:
    header = parse_object_header(view, max_wrapped_keys=options.max_wrapped_keys)
    check_keyring(keyring)
    check_before_unwrap(header, len(view), out, expected_context, expected_kms_context)
    keys = open_object_keys(  # (open_object, less the checks just made)
        header,
        await keyring.decryption_key(header.wrapped_keys, header.kms_context),
        expected_context=expected_context,
        expected_kms_context=expected_kms_context,
    )
    open_ = partial(
        open_into,
        header,
        keys,
        view,
        out,
        per_batch=max(1, options.batch_bytes >> header.seg_log2),
        workers=options.worker_count,
        track=track,
    )
    if len(view) - header.header_len <= options.batch_bytes:  # (>= the plaintext)
        return open_()
    return await anyio.to_thread.run_sync(open_)


async def decrypt_into(
    data: bytes | bytearray | memoryview,
    out: bytearray | memoryview,
    *,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
) -> int:
    """Decrypt an in-memory object into the caller's buffer; returns the plaintext length.

    On failure the first plaintext-length bytes of `out` are zeroed.
    """
    required_output(out, data)
    _, n = await _open_in_memory(
        data, out, keyring, expected_context, expected_kms_context, options, observer
    )
    return n


async def decrypt_bytes(
    data: bytes | bytearray | memoryview,
    *,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
) -> bytearray:
    """Decrypt an in-memory object into a new buffer.

    Returns a bytearray, so the caller can wipe the plaintext when done with it.
    """
    buf, _ = await _open_in_memory(
        data, None, keyring, expected_context, expected_kms_context, options, observer
    )
    assert isinstance(buf, bytearray)
    return buf


@overload
async def encrypt_many(
    items: Sequence[bytes | bytearray | memoryview],
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = ...,
    object_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: Literal[False] = ...,
) -> list[bytearray]: ...
@overload
async def encrypt_many(
    items: Sequence[bytes | bytearray | memoryview],
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = ...,
    object_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: bool,
) -> list[bytearray | EnvelopeError]: ...
async def encrypt_many(
    items: Sequence[bytes | bytearray | memoryview],
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = None,
    object_contexts: Sequence[Mapping[str, str] | None] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
    return_exceptions: bool = False,
) -> list[bytearray] | list[bytearray | EnvelopeError]:
    """Encrypt many small objects on every core without blocking the event loop: the batch
    is cut into a few chunks per worker, each sealed on a worker thread by the object layer
    (one thread hop per chunk, not per object). Same results as `envelope.sync.encrypt_many`.
    """
    from . import sync

    return await _cancellable_batch(
        partial(
            sync.encrypt_many,
            items,
            keyring=keyring,
            kms_context=kms_context,
            object_contexts=object_contexts,
            options=options,
            observer=observer,
            return_exceptions=return_exceptions,
        )
    )


async def _cancellable_batch(batch: Callable[[], list[Any]]) -> list[Any]:
    """`batch` on a worker thread; when the caller is cancelled (a deadline, a client gone),
    the batch is told to stop and the caller waits only for the item under way, then gets its
    cancellation. It ignored cancellation and ran to its end, KMS retries and all (review);
    and it must not be left running, using the caller's keyring and buffers after the caller
    has gone on to close them (diff review)."""
    from . import sync

    stop = threading.Event()
    outcome: list[Any] = []
    token = sync.BATCH_STOP.set(stop)
    try:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                with anyio.CancelScope(shield=True):  # (the thread is waited for, always)
                    try:
                        outcome.append(await anyio.to_thread.run_sync(batch))
                    except Exception as e:  # raised below, outside the task group
                        outcome.append(e)
                tg.cancel_scope.cancel()  # done: the watcher goes

            async def watch() -> None:
                try:
                    await anyio.sleep_forever()
                finally:
                    stop.set()  # cancelled: the batch starts no more items

            tg.start_soon(watch)
            tg.start_soon(run)
    finally:
        sync.BATCH_STOP.reset(token)
    result = outcome[0]
    if isinstance(result, Exception):
        raise result
    return result  # type: ignore[no-any-return]


@overload
async def decrypt_many(
    items: Sequence[bytes | bytearray | memoryview],
    *,
    keyring: Keyring,
    expected_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    expected_kms_context: Mapping[str, str] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: Literal[False] = ...,
) -> list[bytearray]: ...
@overload
async def decrypt_many(
    items: Sequence[bytes | bytearray | memoryview],
    *,
    keyring: Keyring,
    expected_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    expected_kms_context: Mapping[str, str] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: bool,
) -> list[bytearray | EnvelopeError]: ...
async def decrypt_many(
    items: Sequence[bytes | bytearray | memoryview],
    *,
    keyring: Keyring,
    expected_contexts: Sequence[Mapping[str, str] | None] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
    return_exceptions: bool = False,
) -> list[bytearray] | list[bytearray | EnvelopeError]:
    """Decrypt many small objects on every core without blocking the event loop (see
    `encrypt_many`); a failure raises unless `return_exceptions`."""
    from . import sync

    return await _cancellable_batch(
        partial(
            sync.decrypt_many,
            items,
            keyring=keyring,
            expected_contexts=expected_contexts,
            expected_kms_context=expected_kms_context,
            options=options,
            observer=observer,
            return_exceptions=return_exceptions,
        )
    )


async def rewrap(
    source: SourceLike,
    sink: SinkLike,
    *,
    keyring: Keyring,
    to: Keyring,
    options: Options = DEFAULT_OPTIONS,
    wrapped_cache: dict[bytes, WrappedKey] | None = None,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
) -> Header:
    """Copy an object with its data key re-wrapped under `to`: new header, identical body.

    The header is authenticated first, and its contexts checked against the expected pairs;
    the body is copied without being decrypted (run `decrypt` or the lake `verify` to
    authenticate it). A path sink is written atomically. Returns the old header.
    """
    check_options(options)
    if wrapped_cache is not None and not isinstance(wrapped_cache, dict):
        raise ConfigurationError(
            f"wrapped_cache must be a dict (or None), not {type(wrapped_cache).__name__}"
        )
    if isinstance(sink, str | os.PathLike):
        KeptPaths([keyring, to]).check(sink)  # neither keyring's keys are written over
    async with _source_scope(source) as src, _sink_scope(sink) as out:
        header = await read_header(src, max_wrapped_keys=options.max_wrapped_keys)
        new_header = await rewrap_header(
            header,
            keyring=keyring,
            to=to,
            wrapped_cache=wrapped_cache,
            expected_context=expected_context,
            expected_kms_context=expected_kms_context,
        )
        await out.write(memoryview(new_header))
        # (batch_bytes has no upper bound of its own: 1 << 50 was a MemoryError here)
        buf = bytearray(max(1, min(options.batch_bytes, options.memory_budget)))
        view = memoryview(buf)
        while n := await read_full(src, view):
            await out.write(view[:n])
            if n < len(buf):
                break
    return header
