"""Reading a Parquet file that envelope encrypted whole (see docs/parquet.md).

A Parquet file sealed as one envelope object (``envelope.sync.encrypt``, `envelope lake
encrypt`) is read in place: pyarrow sees the plaintext through the verifying
`DecryptingReader`, so only the segments that hold the wanted columns (and the footer) are
fetched, each as one ranged read, and each is authenticated before pyarrow sees it::

    with open_encrypted_parquet("s3://lake/t.parquet.env", keyring=kr) as pf:
        pf.read(columns=["amount"])

The keys come from a `Keyring`, or from a `KeySpec` (the keyring is then built for the open
and closed once the data key is unwrapped: pass a long-lived keyring to open many files).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import anyio.to_thread
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..api import DEFAULT_OPTIONS, Options
from ..errors import ContextMismatchError
from ..keyring import Keyring
from ..kms.keyspec import KeySpec
from ..reader import DecryptingReader, aopen_decrypted
from ..sync import run
from .fs import ArrowRangeFile, resolve
from .jobs import PATH_CONTEXT_KEY
from .parquet_errors import parquet_read_errors

__all__ = ("EncryptedParquetFile", "aopen_encrypted_parquet", "open_encrypted_parquet")


class EncryptedParquetFile(pq.ParquetFile):  # type: ignore[misc]
    """A `pyarrow.parquet.ParquetFile` over the plaintext of an envelope object.

    Every read goes through the verifying `DecryptingReader` (`decrypting_reader`): only the
    segments that hold the requested bytes are fetched, each as one ranged read of
    `range_file`, and each is authenticated before pyarrow sees it. Closing it closes them.
    """

    def __init__(
        self,
        reader: DecryptingReader,
        range_file: ArrowRangeFile,
        *,
        pre_buffer: bool = True,
    ) -> None:
        self.decrypting_reader = reader
        self.range_file = range_file
        self.arrow_file = pa.PythonFile(reader, mode="r")
        try:
            with parquet_read_errors(range_file.path):
                super().__init__(self.arrow_file, pre_buffer=pre_buffer)
        except BaseException:
            self.arrow_file.close()
            reader.close()
            raise

    # Reads name the file in this package's errors (`parquet_read_errors`): a segment that
    # fails its tag is found by whichever read fetches it, after the open.

    def read(self, *args: Any, **kwargs: Any) -> pa.Table:
        with parquet_read_errors(self.range_file.path):
            return super().read(*args, **kwargs)

    def read_row_group(self, *args: Any, **kwargs: Any) -> pa.Table:
        with parquet_read_errors(self.range_file.path):
            return super().read_row_group(*args, **kwargs)

    def read_row_groups(self, *args: Any, **kwargs: Any) -> pa.Table:
        with parquet_read_errors(self.range_file.path):
            return super().read_row_groups(*args, **kwargs)

    def scan_contents(self, *args: Any, **kwargs: Any) -> int:
        with parquet_read_errors(self.range_file.path):
            return int(super().scan_contents(*args, **kwargs))

    def iter_batches(self, *args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        with parquet_read_errors(self.range_file.path):
            yield from super().iter_batches(*args, **kwargs)

    def close(self, force: bool = False) -> None:
        super().close(force=True)
        self.arrow_file.close()
        self.decrypting_reader.close()


def _root_path(root: str | os.PathLike[str], filesystem: Any) -> str:
    """The lake job's destination as the path its objects' paths are joined to (a URI
    resolved as the object's own is)."""
    return resolve(os.fspath(root), filesystem=filesystem).path


def _open_range(uri_or_path: str | os.PathLike[str], filesystem: Any) -> ArrowRangeFile:
    loc = resolve(os.fspath(uri_or_path), filesystem=filesystem)
    return ArrowRangeFile(loc.fs, loc.path)


def _check_bound_path(reader: DecryptingReader, path: str, root: str | None) -> None:
    """An object a lake job wrote names its path below the job's root in its authenticated
    context (`envelope:path`), which lake decrypt and verify check: a file copied over
    another (mallory's rows at alice's path) is refused there. With `root` (the job's
    destination), the path given must be exactly root/bound. Without it, the path given must
    end with the bound one, which refuses a copy from another folder of the same depth or
    deeper, but not a shallower object of the same name (``part-0.parquet`` at the top copied
    over ``tenant=alice/part-0.parquet``): pass `root` for that. `ContextMismatchError`, as
    the lake jobs raise."""
    bound = reader.header.object_context.get(PATH_CONTEXT_KEY)
    if bound is None:
        return
    given = path.replace(os.sep, "/")
    if root is not None:
        # both sides normalised: a root at the top of a filesystem= ("", "/", ".") joins to
        # "/t=a/..." where the path given is "t=a/..." (review)
        top = posixpath.normpath(root.replace(os.sep, "/") or ".").lstrip("/")
        whole = bound if top in ("", ".") else top + "/" + bound
        ok = given.lstrip("/") == posixpath.normpath(whole).lstrip("/")
    else:
        ok = given == bound or given.endswith("/" + bound)
    if not ok:
        raise ContextMismatchError(
            f"{path!r} holds the object a lake job wrote at {bound!r} (its {PATH_CONTEXT_KEY} "
            + ("context) " if root is None else f"context) below {root!r}")
            + ": a file copied or moved over another is not read as that file; pass "
            f"expected_context={{{PATH_CONTEXT_KEY!r}: ...}} to say which path it must be"
        )


def open_encrypted_parquet(
    uri_or_path: str | os.PathLike[str],
    *,
    keyring: Keyring | KeySpec,
    filesystem: pafs.FileSystem | None = None,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    pre_buffer: bool = True,
    root: str | os.PathLike[str] | None = None,
) -> EncryptedParquetFile:
    """Open a Parquet file that envelope encrypted whole, without decrypting it first.

        with open_encrypted_parquet("s3://lake/t.parquet.env", keyring=kr) as pf:
            amounts = pf.read(columns=["amount"])

    Checks the header, unwraps the data key (one KMS call, through the keyring's cache) and
    reads the Parquet footer; column reads then fetch only their segments. Tampering raises
    `AuthenticationError` from whichever read meets it. Blocking; in async code use
    `aopen_encrypted_parquet`.

    `root`, the lake job's destination the file was written under, makes the path check
    exact (see `_check_bound_path`): give it whenever a lake has the same file name at
    several depths (partitioned tables).
    """
    return run(
        aopen_encrypted_parquet,
        uri_or_path,
        keyring=keyring,
        filesystem=filesystem,
        expected_context=expected_context,
        expected_kms_context=expected_kms_context,
        options=options,
        pre_buffer=pre_buffer,
        root=root,
    )


async def aopen_encrypted_parquet(
    uri_or_path: str | os.PathLike[str],
    *,
    keyring: Keyring | KeySpec,
    filesystem: pafs.FileSystem | None = None,
    expected_context: Mapping[str, str] | None = None,
    expected_kms_context: Mapping[str, str] | None = None,
    options: Options = DEFAULT_OPTIONS,
    pre_buffer: bool = True,
    root: str | os.PathLike[str] | None = None,
) -> EncryptedParquetFile:
    """Async `open_encrypted_parquet`; the blocking reads run on worker threads.

    `keyring` is a `Keyring`, or a `KeySpec` whose decrypt keyring is built for this open
    and closed once the data key is unwrapped.

    The returned file is synchronous: run its reads with ``anyio.to_thread.run_sync``.
    """
    owned: Keyring | None = None
    if isinstance(keyring, KeySpec):  # opening a backend may block (the embedded KMS's store)
        keyring = owned = await anyio.to_thread.run_sync(keyring.for_purpose("decrypt").keyring)
    try:
        rf = await anyio.to_thread.run_sync(_open_range, uri_or_path, filesystem)
        with parquet_read_errors(rf.path):  # (a header that is not one names the file)
            reader = await aopen_decrypted(
                rf,
                keyring=keyring,
                expected_context=expected_context,
                expected_kms_context=expected_kms_context,
                options=options,
            )
    finally:
        if owned is not None:  # the data key is unwrapped: the keyring is done
            await owned.aclose()
    try:
        if expected_context is None or PATH_CONTEXT_KEY not in expected_context:
            _check_bound_path(
                reader, rf.path, None if root is None else _root_path(root, filesystem)
            )
    except BaseException:
        reader.close()
        raise
    return await anyio.to_thread.run_sync(
        partial(EncryptedParquetFile, reader, rf, pre_buffer=pre_buffer)
    )
