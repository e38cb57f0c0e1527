"""Blocking recipes, for code without an event loop: ETL functions, UDFs, workers, handlers.

In-memory work (`encrypt_bytes`, `decrypt_bytes`, `*_into`, `*_many`) runs on the calling
thread through the synchronous object layer (`envelope.objects`): no event loop per call, no
thread hop; a data-key cache hit is a locked lookup. A large object's segments, and a batch of
large objects, are spread over a process-wide thread pool (AES-GCM releases the GIL).

`encrypt` / `decrypt` take regular files file to file on every core (`envelope.files`) and
blocking streams (pipes, stdin/stdout, FIFOs, devices, binary file objects) on one thread
(`envelope.blocking_streams`), with no event loop. Only async sources and sinks (async files,
async iterators, engine sinks) go through the async pipeline on a fresh event loop (`run`),
which cannot be called from inside a running loop: await `envelope.api` there.
"""

from __future__ import annotations

import contextvars
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from . import blocking_streams, files
from .atomic import OutputFile, resolve_output
from .errors import ClosedError, ConfigurationError, EnvelopeError
from .keyring import Keyring
from .metrics import NULL_OBSERVER, Observer
from .objects import (
    Header,
    Tracked,
    buffer_sequence,
    byte_view,
    check_before_unwrap,
    check_expected_contexts,
    check_keyring,
    check_output_path,
    checked_contexts,
    new_object,
    open_into,
    open_object_keys,
    parse_object_header,
    pick_path,
    read_header,
    required_output,
    run_ranges,
    seal_into,
)
from .options import DEFAULT_OPTIONS, ObjectInfo, Options, check_options, object_info

__all__ = (
    "decrypt",
    "decrypt_bytes",
    "decrypt_into",
    "decrypt_many",
    "encrypt",
    "encrypt_bytes",
    "encrypt_into",
    "encrypt_many",
    "run",
)

if TYPE_CHECKING:
    from .streams import SinkLike, SourceLike

T = TypeVar("T")
Buffer = bytes | bytearray | memoryview


def _api() -> ModuleType:
    """The async recipes, imported on first use: the blocking paths never load anyio."""
    from . import api

    return api


def _atomic_sink(path: str | os.PathLike[str]) -> Any:
    from .streams import AtomicFileSink

    return AtomicFileSink(path, durable=False)


class _Run:
    """A coroutine `run` is running: its loop and task, and whether `interrupt` cancelled it."""

    __slots__ = ("interrupted", "loop", "task")

    def __init__(self) -> None:
        self.loop: Any = None
        self.task: Any = None
        self.interrupted = False


#: `run` calls in progress on the main thread, innermost last (for `interrupt`)
_runs: list[_Run] = []


def run(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run one coroutine function to completion on a new event loop."""
    import anyio

    state = _Run()

    async def main() -> T:
        import asyncio

        state.loop, state.task = asyncio.get_running_loop(), asyncio.current_task()
        return await fn(*args, **kwargs)

    on_main = threading.current_thread() is threading.main_thread()
    if on_main:
        _runs.append(state)
    try:
        if on_main:
            from ._signal_safe_loop import loop_factory

            return anyio.run(main, backend_options={"loop_factory": loop_factory()})
        return anyio.run(main)
    except RuntimeError as e:
        if "already running" in str(e).lower() or "running event loop" in str(e):
            raise ConfigurationError(
                "envelope.sync cannot run inside an event loop; await the envelope.api functions"
            ) from None
        raise
    except BaseException as e:
        if state.interrupted and type(e).__name__ == "CancelledError":
            raise KeyboardInterrupt from None  # as asyncio's runner answers Ctrl-C
        raise
    finally:
        if on_main:
            _runs.remove(state)


def interrupt() -> bool:
    """Stop the coroutine `run` is running on the main thread the way asyncio's runner
    handles Ctrl-C: its task is cancelled (every sink aborts, every lock is released on the
    way out) and `run` then raises KeyboardInterrupt. For a signal handler when SIGINT is
    ignored (a background job of a non-interactive shell), where the runner installs no
    handler of its own. False when there is nothing to cancel, or it was cancelled already
    (a second signal): the caller then raises KeyboardInterrupt itself."""
    if not _runs:
        return False
    state = _runs[-1]
    if state.interrupted or state.task is None or state.loop.is_closed():
        return False
    state.interrupted = True
    state.loop.call_soon_threadsafe(state.task.cancel)
    return True


def _positional_file(x: object) -> str | None:
    """The path of `x` if it names an existing regular local file whose size says where it
    ends, else None. A size of 0 is not trusted: procfs and other pseudo-files report 0 and
    still have content, so they (and truly empty files, at no cost) are read to their end as
    a stream instead of being sealed as empty."""
    if not isinstance(x, str | os.PathLike):
        return None
    path = os.fspath(x)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return path if stat.S_ISREG(st.st_mode) and st.st_size > 0 else None


def _atomic_target(x: object) -> bool:
    """Whether `x` is a path the object layer can write positionally (regular or new file)."""
    if not isinstance(x, str | os.PathLike):
        return False
    try:
        return resolve_output(x)[1] == "atomic"
    except ConfigurationError:
        return False


def _sync_progress(on_progress: Callable[[int], object] | None) -> Callable[[int], None] | None:
    if on_progress is None:
        return None
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:  # worker threads report; the callback sees one call at a time
            on_progress(n)

    return advance


class _Reader:
    """A blocking source: `read_into(buf)` and `close()`; None if `x` is not blocking."""

    def __init__(self, read_into: Callable[[memoryview], int], close: Callable[[], None]):
        self.read_into = read_into
        self.close = close

    @staticmethod
    def of(x: object) -> _Reader | None:
        if isinstance(x, bytes | bytearray | memoryview):
            view = memoryview(x).cast("B")
            pos = [0]

            def from_bytes(buf: memoryview) -> int:
                n = min(len(buf), len(view) - pos[0])
                buf[:n] = view[pos[0] : pos[0] + n]
                pos[0] += n
                return n

            return _Reader(from_bytes, view.release)
        if isinstance(x, str | os.PathLike):
            try:
                f = open(x, "rb", buffering=0)
            except OSError as e:
                raise ConfigurationError(f"cannot open {os.fspath(x)!r}: {e.strerror}") from None
            return _Reader(f.readinto, f.close)
        if _is_coroutine_method(x, "read") or _is_coroutine_method(x, "readinto"):
            return None
        if not callable(getattr(x, "readinto", None)) and hasattr(x, "__aiter__"):
            return None
        read_into = blocking_streams.read_into_of(x)
        return None if read_into is None else _Reader(read_into, lambda: None)


class _Writer:
    """A blocking sink: `write`, then `commit` or `discard`. For a path, `file` is the
    `OutputFile` (positional writes for the file-to-file path)."""

    def __init__(
        self,
        write: Callable[[memoryview], None],
        commit: Callable[[], None],
        discard: Callable[[], None],
        file: OutputFile | None = None,
    ):
        self.write = write
        self.commit = commit
        self.discard = discard
        self.file = file

    @staticmethod
    def of(x: object, durable: bool) -> _Writer:
        if isinstance(x, str | os.PathLike):
            out = OutputFile(x, durable=durable)
            return _Writer(out.write, out.commit, out.discard, out)
        blocking_streams.binary(x, "sink")
        return _Writer(  # (x has a write method: checked by _route)
            partial(blocking_streams.write_all, x),
            partial(blocking_streams.flush_all, x),
            lambda: None,
        )


def _written(sink: object, durable: bool, fill: Callable[[_Writer], int]) -> int:
    """Open `sink` (after the KMS call, so a refused key leaves no temporary), let `fill`
    write it, commit; on any failure discard (a path's temporary is removed)."""
    writer = _Writer.of(sink, durable)
    try:
        n = fill(writer)
        writer.commit()
        return n
    finally:
        writer.discard()


def _is_coroutine_method(x: object, name: str) -> bool:
    fn = getattr(x, name, None)
    if fn is None:
        return False
    import inspect  # only for stream arguments: start-up of a file path never pays for it

    return inspect.iscoroutinefunction(fn)


def _blocking_sink(sink: object) -> bool:
    if isinstance(sink, str | os.PathLike):
        return True
    if _is_coroutine_method(sink, "write") or not callable(getattr(sink, "write", None)):
        return False
    return not all(callable(getattr(sink, m, None)) for m in ("commit", "abort"))  # a Sink


Route = (
    tuple[Literal["direct"], str]
    | tuple[Literal["stream"], _Reader]
    | tuple[Literal["async"], object]
)


def _route(source: object, sink: object, durable: bool) -> Route:
    """How `encrypt`/`decrypt` go (`objects.pick_path` decides between direct and streamed):
    file to file (the source path), a blocking stream (its reader), or the async pipeline
    (the sink to give it)."""
    src = _positional_file(source)
    if src is not None and (
        pick_path(None, local_source=True, local_target=_atomic_target(sink), small_limit=0)
        == "direct"
    ):
        return ("direct", src)
    if _blocking_sink(sink) and not hasattr(source, "__aiter__"):
        reader = _Reader.of(source)
        if reader is not None:
            return ("stream", reader)
    if not durable and isinstance(sink, str | os.PathLike):
        sink = _atomic_sink(sink)
    return ("async", sink)


def encrypt(
    source: SourceLike,
    sink: SinkLike,
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    on_progress: Callable[[int], object] | None = None,
    observer: Observer = NULL_OBSERVER,
    durable: bool = True,
) -> ObjectInfo:
    """Blocking `envelope.api.encrypt`.

    A regular local file to a regular (or new) local file goes file to file on every core
    (`envelope.files`); blocking streams (pipes, devices, binary file objects) on this thread
    (`envelope.blocking_streams`); only async sources and sinks use the async pipeline.
    `durable` fsyncs a path output before it is renamed into place (the CLI's `--fsync`).
    """
    check_options(options)
    check_output_path(sink, keyring, source)
    route = _route(source, sink, durable)
    if route[0] == "async":
        return cast(
            ObjectInfo,
            run(
                _api().encrypt,
                source,
                route[1],
                keyring=keyring,
                kms_context=kms_context,
                object_context=object_context,
                options=options,
                on_progress=on_progress,
                observer=observer,
            ),
        )
    progress = _sync_progress(on_progress)
    try:
        with Tracked(observer, "encrypt") as track:
            prepared = new_object(
                keyring,
                kms_context=kms_context,
                object_context=object_context,
                seg_log2=options.seg_log2,
                expected_bytes=os.stat(route[1]).st_size if route[0] == "direct" else None,
            )
            if route[0] == "direct":
                src = route[1]
                n = _written(
                    sink,
                    durable,
                    lambda w: files.seal_file(
                        prepared,
                        src,
                        cast(OutputFile, w.file),
                        workers=options.worker_count,
                        batch_bytes=options.batch_bytes,
                        memory_budget=options.memory_budget,
                        on_progress=progress,
                        track=track,
                    ),
                )
            else:
                reader, wrapped = route[1], prepared.wrapped_keys[0]

                def advance(n: int) -> None:
                    keyring.charge(wrapped, n)  # the cache's byte limit holds for streams too
                    if progress is not None:
                        progress(n)

                n = _written(
                    sink,
                    durable,
                    lambda w: blocking_streams.seal_stream(
                        prepared,
                        reader.read_into,
                        w.write,
                        batch_bytes=options.batch_bytes,
                        memory_budget=options.memory_budget,
                        on_progress=advance,
                        track=track,
                    ),
                )
            track.plaintext_len = n
    finally:
        if route[0] == "stream":
            route[1].close()
    kctx, octx = checked_contexts(kms_context, object_context)
    return object_info(
        len(prepared.header),
        prepared.message_id,
        prepared.seg_log2,
        n,
        kctx,
        octx,
        prepared.wrapped_keys,
    )


def _read_file_header(path: str, max_wrapped_keys: int) -> Header:
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        return read_header(lambda off, n: os.pread(fd, n, off), max_wrapped_keys=max_wrapped_keys)


def decrypt(
    source: SourceLike,
    sink: SinkLike,
    *,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    on_progress: Callable[[int], object] | None = None,
    observer: Observer = NULL_OBSERVER,
    durable: bool = True,
) -> ObjectInfo:
    """Blocking `envelope.api.decrypt`; routed as `encrypt` is.

    A path output is renamed into place only once every segment authenticated; a stream, pipe
    or device output gets each batch only after its tags verified (see `api.decrypt`).
    """
    check_options(options)
    check_output_path(sink, keyring, source)
    route = _route(source, sink, durable)
    if route[0] == "async":
        return cast(
            ObjectInfo,
            run(
                _api().decrypt,
                source,
                route[1],
                keyring=keyring,
                expected_context=expected_context,
                expected_kms_context=expected_kms_context,
                options=options,
                on_progress=on_progress,
                observer=observer,
            ),
        )
    progress = _sync_progress(on_progress)
    try:
        with Tracked(observer, "decrypt") as track:
            if route[0] == "direct":
                header = _read_file_header(route[1], options.max_wrapped_keys)
            else:
                header = blocking_streams.read_stream_header(
                    route[1].read_into, max_wrapped_keys=options.max_wrapped_keys
                )
            check_keyring(keyring)
            check_expected_contexts(expected_context, expected_kms_context)
            keys = open_object_keys(
                header,
                keyring.decryption_key_blocking(header.wrapped_keys, header.kms_context),
                expected_context=expected_context,
                expected_kms_context=expected_kms_context,
            )
            # once the header authenticated (a forged segment size is AuthenticationError),
            # before any output
            options.plan("decrypt", header.seg_log2)
            if route[0] == "direct":
                src = route[1]
                n = _written(
                    sink,
                    durable,
                    lambda w: files.open_file(
                        header,
                        keys,
                        src,
                        cast(OutputFile, w.file),
                        workers=options.worker_count,
                        batch_bytes=options.batch_bytes,
                        memory_budget=options.memory_budget,
                        on_progress=progress,
                        track=track,
                    ),
                )
            else:
                reader = route[1]
                n = _written(
                    sink,
                    durable,
                    lambda w: blocking_streams.open_stream(
                        header,
                        keys,
                        reader.read_into,
                        w.write,
                        batch_bytes=options.batch_bytes,
                        memory_budget=options.memory_budget,
                        on_progress=progress,
                        track=track,
                    ),
                )
            track.plaintext_len = n
    finally:
        if route[0] == "stream":
            route[1].close()
    return object_info(
        header.header_len,
        header.message_id,
        header.seg_log2,
        n,
        header.kms_context,
        header.object_context,
        header.wrapped_keys,
    )


# -- in memory, on the object layer -------------------------------------------------------------


def _seal(
    data: Buffer,
    out: bytearray | memoryview | None,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None,
    object_context: Mapping[str, str] | None,
    options: Options,
    observer: Observer,
    workers: int | None = None,
) -> tuple[bytearray | memoryview, int]:
    src = byte_view(data)
    check_options(options)
    args = (src, out, keyring, kms_context, object_context, options, workers)
    if observer is NULL_OBSERVER:  # nothing to report: no tracking on every small object
        return _sealed(*args, None)
    with Tracked(observer, "encrypt") as track:
        result = _sealed(*args, track)
        track.plaintext_len = len(src)
    return result


def _sealed(
    src: memoryview,
    out: bytearray | memoryview | None,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None,
    object_context: Mapping[str, str] | None,
    options: Options,
    workers: int | None,
    track: Tracked | None,
) -> tuple[bytearray | memoryview, int]:
    seg_log2 = options.seg_log2
    prepared = new_object(
        keyring,
        kms_context=kms_context,
        object_context=object_context,
        seg_log2=seg_log2,
        expected_bytes=len(src),
    )
    return seal_into(
        prepared,
        src,
        out,
        per_batch=max(1, options.batch_bytes >> seg_log2),
        workers=options.workers if workers is None else workers,  # (None: every core)
        track=track,
    )


def _open(
    data: Buffer,
    out: bytearray | memoryview | None,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None,
    expected_kms_context: Mapping[str, str] | None,
    options: Options,
    observer: Observer,
    workers: int | None = None,
) -> tuple[bytearray | memoryview, int]:
    view = byte_view(data)
    check_options(options)
    args = (view, out, keyring, expected_context, expected_kms_context, options, workers)
    if observer is NULL_OBSERVER:  # as in _seal
        return _opened(*args, None)
    with Tracked(observer, "decrypt") as track:
        result = _opened(*args, track)
        track.plaintext_len = result[1]
    return result


def _opened(
    view: memoryview,
    out: bytearray | memoryview | None,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None,
    expected_kms_context: Mapping[str, str] | None,
    options: Options,
    workers: int | None,
    track: Tracked | None,
) -> tuple[bytearray | memoryview, int]:
    header = parse_object_header(view, max_wrapped_keys=options.max_wrapped_keys)
    check_keyring(keyring)
    check_before_unwrap(header, len(view), out, expected_context, expected_kms_context)
    keys = open_object_keys(
        header,
        keyring.decryption_key_blocking(header.wrapped_keys, header.kms_context),
        expected_context=expected_context,
        expected_kms_context=expected_kms_context,
    )
    return open_into(
        header,
        keys,
        view,
        out,
        per_batch=max(1, options.batch_bytes >> header.seg_log2),
        workers=options.workers if workers is None else workers,  # (None: every core)
        track=track,
    )


def encrypt_bytes(
    data: Buffer,
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
) -> bytearray:
    """Encrypt an in-memory object into a new, exactly sized buffer (see `api.encrypt_bytes`)."""
    buf, _ = _seal(data, None, keyring, kms_context, object_context, options, observer)
    assert isinstance(buf, bytearray)
    return buf


def encrypt_into(
    data: Buffer,
    out: bytearray | memoryview,
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = None,
    object_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
) -> int:
    """Encrypt into the caller's buffer; returns the bytes written (see `api.encrypt_into`)."""
    required_output(out, data, sealing=options)
    return _seal(data, out, keyring, kms_context, object_context, options, observer)[1]


def decrypt_bytes(
    data: Buffer,
    *,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
) -> bytearray:
    """Decrypt an in-memory object into a new buffer (see `api.decrypt_bytes`)."""
    buf, _ = _open(data, None, keyring, expected_context, expected_kms_context, options, observer)
    assert isinstance(buf, bytearray)
    return buf


def decrypt_into(
    data: Buffer,
    out: bytearray | memoryview,
    *,
    keyring: Keyring,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
) -> int:
    """Decrypt into the caller's buffer; returns the plaintext length. On failure the
    plaintext part of `out` is zeroed."""
    required_output(out, data)
    return _open(data, out, keyring, expected_context, expected_kms_context, options, observer)[1]


# -- many small objects -----------------------------------------------------------------------


#: Below this average object size a batch runs on the calling thread: per-object work is then
#: mostly Python (key schedule, header, cache) holding the GIL, and threads only contend for
#: it (measured: two threads gave half the objects/s of one at 16 KiB and 256 KiB). Above it
#: AES-GCM, which releases the GIL, dominates and every core helps. For more cores on small
#: objects use processes (a Dask or multiprocessing pool, each building its keyring from a
#: `KeySpec`).
THREADED_BATCH_MIN_BYTES = 1 << 20


def _per_item(contexts: object, items: Sequence[object], name: str) -> None:
    """`contexts` is one context per item (or None): one mapping given for all of them was
    indexed by position and failed with a KeyError that no `return_exceptions` caught."""
    if contexts is None:
        return
    if isinstance(contexts, Mapping) or not isinstance(contexts, Sequence):
        raise ConfigurationError(
            f"{name} is one context per item (a list), not {type(contexts).__name__}: for the "
            f"same context on every item pass [context] * len(items)"
        )
    if len(contexts) != len(items):
        raise ConfigurationError(f"{name} must have one entry per item")


#: Set by the async batch calls (`envelope.api.encrypt_many`): their cancellation, seen by
#: `_chunked` on its worker thread (anyio hands the context to it).
BATCH_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "envelope_batch_stop", default=None
)


def _chunked(
    count: int,
    work: Callable[[int], bytearray],
    options: Options,
    return_exceptions: bool,
    total_bytes: int = 0,
) -> list[bytearray | EnvelopeError]:
    """Run `work(i)` for every i, in chunks on the pool: one thread hop per chunk, not per
    object (inline when the objects are small: see THREADED_BATCH_MIN_BYTES).

    Without `return_exceptions`, the first failure stops the batch: items not yet started are
    not started (a KMS that throttles or is down got one request per remaining item, each
    after its own retries), the chunks running finish their item, every plaintext already
    produced is zeroed, and the failure is raised."""
    check_options(options)  # (a dict of its fields failed as an AttributeError; review)
    results: list[bytearray | EnvelopeError | None] = [None] * count
    workers = options.worker_count
    if (count and total_bytes // count < THREADED_BATCH_MIN_BYTES) or _on_event_loop_thread():
        workers = 1
    per_chunk = max(1, -(-count // (workers * 4)))  # a few chunks per worker balances load
    failed = threading.Event()
    stop = BATCH_STOP.get()

    def chunk(first: int, last: int) -> None:
        for i in range(first * per_chunk, min(last * per_chunk, count)):
            if failed.is_set() or (stop is not None and stop.is_set()):
                return
            try:
                results[i] = work(i)
            except EnvelopeError as e:
                results[i] = _detached(e) if return_exceptions else e
                if not return_exceptions:
                    failed.set()

    try:
        run_ranges(chunk, -(-count // per_chunk), 1, workers)
    except BaseException:
        # a failure that is not an EnvelopeError (a keyring's own error, an interrupt) leaves
        # the chunks: the plaintexts already produced are zeroed before it goes on
        for r in results:
            if isinstance(r, bytearray):
                r[:] = bytes(len(r))
        raise
    if stop is not None and stop.is_set():  # the awaiting caller was cancelled and left
        for r in results:
            if isinstance(r, bytearray):
                r[:] = bytes(len(r))
        raise ClosedError("the batch was cancelled")
    if failed.is_set():
        first_error = next(r for r in results if isinstance(r, EnvelopeError))
        for r in results:
            if isinstance(r, bytearray):
                r[:] = bytes(len(r))
        raise first_error
    out: list[bytearray | EnvelopeError] = [r for r in results if r is not None]
    assert len(out) == count
    return out


def _detached(error: EnvelopeError) -> EnvelopeError:
    """A per-item error as `return_exceptions` hands it back, without its traceback (and
    without the context it hides): those frames hold the object's derived keys, the output
    buffers and the caller's input, which would live as long as the caller keeps the list
    (and an mmap given as input could not be closed while they pinned it)."""
    error.__traceback__ = None
    if error.__suppress_context__:
        error.__context__ = None
    return error


def _on_event_loop_thread() -> bool:
    """Whether this thread is running an event loop (a blocking batch called from async
    code). Its items then run on this thread: on pool threads, a data key a task of this
    loop was fetching could not land while the loop waited for the pool, and the pool
    waited for the key, so the loop froze for the cache's whole wait_timeout and failed."""
    try:
        import sniffio

        sniffio.current_async_library()
    except Exception:  # AsyncLibraryNotFoundError: no loop here (or no sniffio)
        return False
    return True


def _nbytes(x: object) -> int:
    """`x`'s size in bytes, 0 if it is no buffer (its own slot reports that)."""
    try:
        return memoryview(x).nbytes  # type: ignore[arg-type]
    except (TypeError, ValueError):  # (ValueError: released or closed)
        return 0


@overload
def encrypt_many(
    items: Sequence[Buffer],
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = ...,
    object_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: Literal[False] = ...,
) -> list[bytearray]: ...
@overload
def encrypt_many(
    items: Sequence[Buffer],
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = ...,
    object_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: Literal[True],
) -> list[bytearray | EnvelopeError]: ...
@overload
def encrypt_many(
    items: Sequence[Buffer],
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = ...,
    object_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: bool,
) -> list[bytearray] | list[bytearray | EnvelopeError]: ...
def encrypt_many(
    items: Sequence[Buffer],
    *,
    keyring: Keyring,
    kms_context: Mapping[str, str] | None = None,
    object_contexts: Sequence[Mapping[str, str] | None] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
    return_exceptions: bool = False,
) -> list[bytearray] | list[bytearray | EnvelopeError]:
    """Encrypt many small objects on every core: results in input order.

    `object_contexts[i]` (if given) is bound into object i's header. With `return_exceptions`
    a failed object's slot holds its `EnvelopeError` instead of raising.
    """
    buffer_sequence(items)
    _per_item(object_contexts, items, "object_contexts")

    def work(i: int) -> bytearray:
        ctx = object_contexts[i] if object_contexts is not None else None
        buf, _ = _seal(items[i], None, keyring, kms_context, ctx, options, observer, workers=1)
        assert isinstance(buf, bytearray)
        return buf

    total = sum(_nbytes(x) for x in items)
    return _chunked(len(items), work, options, return_exceptions, total)


@overload
def decrypt_many(
    items: Sequence[Buffer],
    *,
    keyring: Keyring,
    expected_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    expected_kms_context: Mapping[str, str] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: Literal[False] = ...,
) -> list[bytearray]: ...
@overload
def decrypt_many(
    items: Sequence[Buffer],
    *,
    keyring: Keyring,
    expected_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    expected_kms_context: Mapping[str, str] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: Literal[True],
) -> list[bytearray | EnvelopeError]: ...
@overload
def decrypt_many(
    items: Sequence[Buffer],
    *,
    keyring: Keyring,
    expected_contexts: Sequence[Mapping[str, str] | None] | None = ...,
    expected_kms_context: Mapping[str, str] | None = ...,
    options: Options = ...,
    observer: Observer = ...,
    return_exceptions: bool,
) -> list[bytearray] | list[bytearray | EnvelopeError]: ...
def decrypt_many(
    items: Sequence[Buffer],
    *,
    keyring: Keyring,
    expected_contexts: Sequence[Mapping[str, str] | None] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    observer: Observer = NULL_OBSERVER,
    return_exceptions: bool = False,
) -> list[bytearray] | list[bytearray | EnvelopeError]:
    """Decrypt many small objects on every core: plaintexts in input order.

    Without `return_exceptions` any failure raises (after zeroing every plaintext produced);
    with it, a failed object's slot holds its `EnvelopeError`.
    """
    buffer_sequence(items)
    _per_item(expected_contexts, items, "expected_contexts")

    def work(i: int) -> bytearray:
        ctx = expected_contexts[i] if expected_contexts is not None else None
        buf, _ = _open(
            items[i], None, keyring, ctx, expected_kms_context, options, observer, workers=1
        )
        assert isinstance(buf, bytearray)
        return buf

    total = sum(_nbytes(x) for x in items)
    return _chunked(len(items), work, options, return_exceptions, total)
