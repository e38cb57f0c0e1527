"""Parquet modular encryption (PME) with envelope's KMS backends (see docs/parquet.md).

Parquet encrypts its own footer and columns, and an envelope `KmsBackend` wraps Parquet's
keys, so readers can skip columns they have no key for::

    crypto = ParquetCrypto(kms)                          # a KmsBackend or a KeySpec; reuse it
    crypto.write_table(table, "s3://lake/t.parquet", footer_key="footer-key",
                       column_keys={"pii-key": ["ssn", "email"]})
    crypto.read_table("s3://lake/t.parquet", columns=["ssn"])

Key wrapping. pyarrow calls `EnvelopeKmsClient.wrap_key(key, master_key_id)` with a key
encryption key (KEK; 16 bytes under pyarrow's default double wrapping) or a data key. The key
is zero-padded to 32 bytes (the data-key size every backend handles) and wrapped with the
backend's ``encrypt_data_key(backend_key_id, padded, context=...)`` under the KMS encryption
context (bound as AAD; see `pme_kms_context`)::

    {"purpose": "parquet-pme", "parquet-master-key": <master_key_id>,
     "parquet-key-bits": <bits of the unpadded key>} | <the caller's static kms_context>

so a wrapped key only opens as a Parquet key, for the master key id the file names, at its
length. The string pyarrow stores in the file's key metadata is compact JSON
``{"v": 1, "provider": ..., "key_id": ..., "bits": ..., "ct": <base64 wrapped key>}``: the
WrappedKey, never key material in clear. Unwrapping checks the JSON strictly (bounded size,
exact fields, canonical base64) and only calls a backend that claims the wrapped key.

The KMS client's methods are synchronous and run on Arrow threads; they run the backend's
coroutines on a dedicated event-loop thread (`envelope._bridge`). PME caches KEKs itself for
`cache_lifetime`, so nothing here caches again. The backend sits behind the retry layer once
(`envelope.kms.keyspec.with_retry`; its retry budget is shared with keyrings over the same
backend). Backend errors
(`envelope.errors.KmsError`) surface unchanged through pyarrow, with a note naming the master
key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

from .._bridge import Portal, default_portal
from ..errors import (
    ConfigurationError,
    EnvelopeError,
    InvalidObjectError,
    KmsKeyError,
    NoBackendError,
    UnencryptedParquetError,
)
from ..kms.base import KmsBackend, WrappedKey
from ..kms.keyspec import KeySpec, RetryName, with_retry
from ..kms.retry import RetryPolicy
from ..objects import DATA_KEY_LEN
from ..printable import wrapped_key_name
from .fs import resolve
from .parquet_errors import parquet_read_errors
from .sinks import write_whole

__all__ = (
    "DEFAULT_CACHE_LIFETIME",
    "PME_PURPOSE",
    "EnvelopeKmsClient",
    "ParquetCrypto",
    "check_encrypted",
    "crypto_factory",
    "kms_client_factory",
    "pme_kms_context",
    "read_encrypted_table",
    "write_encrypted_table",
)

#: The "purpose" pair of every PME wrapping context.
PME_PURPOSE = "parquet-pme"
#: How long PME keeps KEKs (and its KMS clients): a writer reuses one KEK per master key for
#: this long (one KMS call per master key, not per file); a reader keeps unwrapped KEKs this
#: long, which is also how long a disabled KMS key keeps working in a running process. Same
#: as envelope's data-key cache TTL (CachePolicy.ttl).
DEFAULT_CACHE_LIFETIME = datetime.timedelta(minutes=5)

_RESERVED = ("purpose", "parquet-master-key", "parquet-key-bits")
_WRAP_VERSION = 1
_MAX_WRAPPED_LEN = 16384  # a JSON wrapped key longer than this is refused before parsing
_KEY_LENGTHS = (16, 24, 32)  # AES-128/192/256: what PME wraps

KeyIds = Mapping[str, str] | Callable[[str], str]

_ENCRYPTED_FOOTER = b"PARE"  # a Parquet file whose footer is encrypted ends with this
_PLAIN_FOOTER = b"PAR1"  # and every other Parquet file with this


class _EncryptedOnly(pafs.FileSystemHandler):  # type: ignore[misc]
    """A read-only view of a filesystem whose files open only if `check_encrypted` passes
    (for datasets: pyarrow opens each file when it scans, so the check is on that handle)."""

    def __init__(self, fs: pafs.FileSystem, plaintext_footer: bool) -> None:
        self.fs = fs
        self.plaintext_footer = plaintext_footer

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _EncryptedOnly)
            and other.fs.equals(self.fs)
            and other.plaintext_footer == self.plaintext_footer
        )

    __hash__ = None  # type: ignore[assignment]

    def equals(self, other: object) -> bool:
        return self == other

    def get_type_name(self) -> str:
        return "envelope-encrypted-only"

    def normalize_path(self, path: str) -> str:
        return str(self.fs.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return list(self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return list(self.fs.get_file_info(selector))

    def open_input_file(self, path: str) -> pa.NativeFile:
        f = self.fs.open_input_file(path)
        try:
            check_encrypted(f, path, plaintext_footer=self.plaintext_footer)
        except BaseException:
            f.close()
            raise
        return f

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.open_input_file(path)

    def _read_only(self, *args: object, **kwargs: object) -> Any:
        raise ConfigurationError("an encrypted-only dataset view is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
    delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only


def check_encrypted(f: pa.NativeFile, path: str, *, plaintext_footer: bool = False) -> None:
    """Refuse a file that is not PME-encrypted, by its trailing magic: ``PARE`` (an encrypted
    footer, what `ParquetCrypto` writes by default) is required. A file written with
    ``plaintext_footer=True`` ends ``PAR1`` like any plain Parquet file; `plaintext_footer`
    accepts that, and then nothing here (nor in pyarrow) can tell it from an unencrypted
    file: keep footers encrypted where files can be replaced."""
    size = f.size()
    if size < 12:
        raise InvalidObjectError(f"{path}: {size} bytes is not a Parquet file")
    f.seek(size - 4)
    magic = f.read(4)
    f.seek(0)
    if magic == _ENCRYPTED_FOOTER:
        return
    if magic == _PLAIN_FOOTER:
        if plaintext_footer:
            return
        raise UnencryptedParquetError(
            f"{path} is not an encrypted Parquet file (its footer is in plaintext): refused, "
            "as a file anyone could have written in place of an encrypted one; for files "
            "written with plaintext_footer=True, read with plaintext_footer=True"
        )
    raise InvalidObjectError(f"{path}: not a Parquet file (no PAR1 or PARE at its end)")


def pme_kms_context(
    master_key_id: str, key_bits: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The KMS encryption context a Parquet key is wrapped under (see the module docstring)."""
    ctx = dict(extra or {})
    ctx.update(
        {
            "purpose": PME_PURPOSE,
            "parquet-master-key": master_key_id,
            "parquet-key-bits": str(key_bits),
        }
    )
    return ctx


def _encode_wrapped(wrapped: WrappedKey, bits: int) -> str:
    return json.dumps(
        {
            "v": _WRAP_VERSION,
            "provider": wrapped.provider_id,
            "key_id": wrapped.key_id,
            "bits": bits,
            "ct": base64.b64encode(wrapped.ciphertext).decode("ascii"),
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def _decode_wrapped(text: str, master_key_id: str) -> tuple[WrappedKey, int]:
    bad = InvalidObjectError(f"malformed Parquet PME wrapped key for master key {master_key_id!r}")
    if not isinstance(text, str) or len(text) > _MAX_WRAPPED_LEN:
        raise bad
    try:
        doc = json.loads(text)
    except ValueError:
        raise bad from None
    if not isinstance(doc, dict) or set(doc) != {"v", "provider", "key_id", "bits", "ct"}:
        raise bad
    if doc["v"] != _WRAP_VERSION or type(doc["bits"]) is not int:
        raise bad
    bits, provider, key_id, ct = doc["bits"], doc["provider"], doc["key_id"], doc["ct"]
    if bits // 8 not in _KEY_LENGTHS or bits % 8 or not isinstance(ct, str):
        raise bad
    if not isinstance(provider, str) or not isinstance(key_id, str):
        raise bad
    try:
        raw = base64.b64decode(ct.encode("ascii"), validate=True)
        if base64.b64encode(raw).decode("ascii") != ct:
            raise bad
        return WrappedKey(provider, key_id, raw), bits
    except (binascii.Error, UnicodeEncodeError, EnvelopeError):
        raise bad from None


def _resolve_key_id(key_ids: KeyIds | None, master_key_id: str) -> str:
    if key_ids is None:
        return master_key_id
    if callable(key_ids):
        return key_ids(master_key_id)
    try:
        return key_ids[master_key_id]
    except KeyError:
        raise ConfigurationError(
            f"no backend key is mapped to Parquet master key {master_key_id!r}"
        ) from None


def _check_pinned(key_ids: KeyIds | None, master_key_id: str, wrapped: WrappedKey) -> None:
    """With `key_ids`, a reader holds each master key to the backend key it maps to: a file
    whose master key id says ``pii-key`` but whose key was wrapped under another key the
    backend can unwrap was read (a writer holding only its own key forged a victim's file;
    review). KmsKeyError, before the KMS is asked. An alias is not held: the key it names
    changes (rotation by re-pointing the alias), and files written before must still read."""
    if key_ids is None:
        return
    expected = _resolve_key_id(key_ids, master_key_id)
    for scheme in ("local:", "aws-kms:"):  # the key URI forms name the same key
        expected = expected.removeprefix(scheme).removeprefix("//")
    if expected.startswith("alias/") or ":alias/" in expected:
        return
    got = wrapped.key_id
    if got == expected or (":key/" in got and got.endswith("/" + expected)):
        return  # (a bare key id names the key of the ARN the file records)
    raise KmsKeyError(
        f"the Parquet key of master key {master_key_id!r} was wrapped under "
        f"{wrapped_key_name(wrapped)}, not under {expected!r}, the key key_ids maps it to"
    )


class EnvelopeKmsClient(pe.KmsClient):  # type: ignore[misc]
    """A pyarrow PME `KmsClient` over an envelope `KmsBackend`.

    `key_ids` maps PME master key identifiers to backend key ids (a mapping or a function;
    default: the identifier is the backend key id). A reader given `key_ids` unwraps a
    master key's Parquet keys only if they were wrapped under the key it maps to (unless it
    maps to an alias: `_check_pinned`). `kms_context` adds static pairs to every
    wrapping context (the same pairs are needed to unwrap). Build it through
    `kms_client_factory` / `ParquetCrypto` rather than directly.
    """

    def __init__(
        self,
        backend: KmsBackend,
        *,
        key_ids: KeyIds | None = None,
        kms_context: Mapping[str, str] | None = None,
        portal: Portal | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.key_ids = key_ids
        self.kms_context = dict(kms_context or {})
        self.portal = portal

    def __repr__(self) -> str:
        return f"EnvelopeKmsClient({self.backend!r})"

    def _portal(self) -> Portal:
        return self.portal if self.portal is not None else default_portal()

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        n = len(key_bytes)
        if n not in _KEY_LENGTHS:
            raise ConfigurationError(f"Parquet keys are 16, 24 or 32 bytes, not {n}")
        key_id = _resolve_key_id(self.key_ids, master_key_identifier)
        ctx = pme_kms_context(master_key_identifier, n * 8, self.kms_context)
        padded = bytearray(DATA_KEY_LEN)
        padded[:n] = key_bytes
        try:
            wrapped = self._portal().call(
                partial(self.backend.encrypt_data_key, key_id, padded, context=ctx)
            )
        except EnvelopeError as e:
            e.add_note(f"while wrapping the Parquet key of master key {master_key_identifier!r}")
            raise
        finally:
            padded[:] = bytes(DATA_KEY_LEN)
        return _encode_wrapped(wrapped, n * 8)

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        wrapped, bits = _decode_wrapped(wrapped_key, master_key_identifier)
        _check_pinned(self.key_ids, master_key_identifier, wrapped)
        if not self.backend.can_unwrap(wrapped):
            raise NoBackendError(
                f"the Parquet key of master key {master_key_identifier!r} was wrapped by "
                f"{wrapped_key_name(wrapped)}, which this backend cannot unwrap"
            )
        ctx = pme_kms_context(master_key_identifier, bits, self.kms_context)
        try:
            plain = self._portal().call(
                partial(self.backend.decrypt_data_key, wrapped, context=ctx)
            )
        except EnvelopeError as e:
            e.add_note(f"while unwrapping the Parquet key of master key {master_key_identifier!r}")
            raise
        try:
            n = bits // 8
            if len(plain) != DATA_KEY_LEN or any(plain[n:]):
                raise InvalidObjectError(
                    f"Parquet key of master key {master_key_identifier!r} has a bad length"
                )
            return bytes(plain[:n])
        finally:
            if isinstance(plain, bytearray):
                plain[:] = bytes(len(plain))


Retry = RetryPolicy | RetryName | None


def _spec_backend(spec: KeySpec) -> KmsBackend:
    """The one backend PME wraps through, opened from a KeySpec."""
    backends, _ = spec.backends()
    if len(backends) != 1:
        names = ", ".join(b.provider_id for b in backends)
        raise ConfigurationError(
            f"PME wraps Parquet keys through one backend; this KeySpec opens {len(backends)} "
            f"({names})"
        )
    return backends[0]


def kms_client_factory(
    backend: KmsBackend,
    *,
    key_ids: KeyIds | None = None,
    kms_context: Mapping[str, str] | None = None,
    retry: Retry = None,
    portal: Portal | None = None,
) -> Callable[[pe.KmsConnectionConfig], EnvelopeKmsClient]:
    """The `kms_client_factory` closure pyarrow's `CryptoFactory` takes.

    Every client it builds shares one backend, wrapped once in the retry layer: `retry` (a
    `RetryPolicy` or a profile name; default `RetryPolicy.default()`; `"none"` for none),
    unless `backend` is a `RetryingKms` already. Calls go through `portal` (default: the
    process-wide one).
    """
    extra = dict(kms_context or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ConfigurationError(f"kms_context must not set reserved PME keys {clash}")
    wrapped = with_retry(backend, retry, default=RetryPolicy.default())

    def factory(config: pe.KmsConnectionConfig) -> EnvelopeKmsClient:
        return EnvelopeKmsClient(wrapped, key_ids=key_ids, kms_context=extra, portal=portal)

    return factory


def crypto_factory(
    backend: KmsBackend,
    *,
    key_ids: KeyIds | None = None,
    kms_context: Mapping[str, str] | None = None,
    retry: Retry = None,
    portal: Portal | None = None,
) -> tuple[pe.CryptoFactory, pe.KmsConnectionConfig]:
    """A pyarrow `CryptoFactory` over `backend`, and the `KmsConnectionConfig` to pass it.

    The factory owns PME's caches (KMS clients, KEKs): build one per backend and reuse it.
    """
    factory = kms_client_factory(
        backend, key_ids=key_ids, kms_context=kms_context, retry=retry, portal=portal
    )
    return pe.CryptoFactory(factory), pe.KmsConnectionConfig(kms_instance_id=backend.provider_id)


def _partition_columns(partitioning: Sequence[str] | ds.Partitioning | None) -> list[str]:
    """The column names a ``write_dataset(partitioning=)`` argument partitions by."""
    if partitioning is None:
        return []
    if isinstance(partitioning, str):
        return [partitioning]
    schema = getattr(partitioning, "schema", None)
    if isinstance(schema, pa.Schema):  # a Partitioning (a factory has no schema yet)
        return list(schema.names)
    if isinstance(partitioning, ds.PartitioningFactory):
        raise ConfigurationError(
            "give partitioning= as column names or a Partitioning with its schema (a "
            "discovering factory names no columns before it reads data)"
        )
    return [str(c) for c in partitioning]


class ParquetCrypto:
    """PME over one envelope backend: properties per file, table helpers, dataset options.

    Keep one per backend for the life of the process: its CryptoFactory holds PME's KEK cache
    (entries live `cache_lifetime`). Encryption properties are created fresh for every file.

    `backend` is a `KmsBackend`, or a `KeySpec` naming one backend (a key file, or a key URI
    such as ``local:alias/x``; on a Dask worker the same spec the driver uses). A backend
    opened from a spec is this object's: `close()` it (or use ``with``); its retry profile is
    the spec's (`retry=` may not be given too).
    """

    def __init__(
        self,
        backend: KmsBackend | KeySpec,
        *,
        key_ids: KeyIds | None = None,
        kms_context: Mapping[str, str] | None = None,
        retry: Retry = None,
        cache_lifetime: datetime.timedelta = DEFAULT_CACHE_LIFETIME,
        portal: Portal | None = None,
    ) -> None:
        if cache_lifetime <= datetime.timedelta(0):
            raise ConfigurationError("cache_lifetime must be positive")
        self._owned: KmsBackend | None = None
        if isinstance(backend, KeySpec):
            if retry is not None and backend.retry is not None:
                raise ConfigurationError(
                    "give the retry profile in the KeySpec or retry=, not both"
                )
            retry = retry if retry is not None else backend.retry
            backend = self._owned = _spec_backend(backend)
        self.backend: KmsBackend = backend
        self.cache_lifetime = cache_lifetime
        self.portal = portal
        self._read_cache_lock = threading.Lock()
        self._read_cache_born = time.monotonic()
        try:
            self.factory, self.connection = crypto_factory(
                backend, key_ids=key_ids, kms_context=kms_context, retry=retry, portal=portal
            )
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"ParquetCrypto({self.backend!r}, cache_lifetime={self.cache_lifetime})"

    def close(self) -> None:
        """Close the backend this object opened from a KeySpec (a backend passed in stays
        open: it is the caller's). The embedded KMS seals its audit log on close."""
        owned, self._owned = self._owned, None
        if owned is not None:
            portal = self.portal if self.portal is not None else default_portal()
            portal.call(owned.aclose)

    def __enter__(self) -> ParquetCrypto:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encryption_configuration(
        self,
        *,
        footer_key: str,
        column_keys: Mapping[str, Sequence[str]] | None,
        plaintext_footer: bool = False,
        double_wrapping: bool = True,
        data_key_length_bits: int = 256,
        algorithm: str = "AES_GCM_V1",
    ) -> pe.EncryptionConfiguration:
        """PME settings: `column_keys` maps a master key id to the columns it protects.

        Columns not named are written in clear (neither hidden nor authenticated). None
        encrypts every column under the footer key (Parquet's "uniform encryption": every page
        authenticated; pyarrow 21 or later). Data keys are AES-256 by default (pyarrow's
        default is 128); with `double_wrapping` (pyarrow's default) the KMS wraps one 128-bit
        KEK per master key per `cache_lifetime` and the KEKs wrap the data keys locally.
        """
        if data_key_length_bits not in (128, 192, 256):
            raise ConfigurationError("data_key_length_bits must be 128, 192 or 256")
        if column_keys is None:
            try:
                return pe.EncryptionConfiguration(
                    footer_key=footer_key,
                    uniform_encryption=True,
                    encryption_algorithm=algorithm,
                    plaintext_footer=plaintext_footer,
                    double_wrapping=double_wrapping,
                    cache_lifetime=self.cache_lifetime,
                    data_key_length_bits=data_key_length_bits,
                )
            except TypeError:  # pyarrow before 21 has no uniform_encryption
                raise ConfigurationError(
                    f"column_keys=None (every column under the footer key) needs pyarrow 21 or "
                    f"later; this is pyarrow {pa.__version__}: name the columns instead"
                ) from None
        if not column_keys:
            raise ConfigurationError("column_keys must name at least one master key")
        seen: set[str] = set()
        for key, cols in column_keys.items():
            if isinstance(cols, str) or not cols:
                raise ConfigurationError(f"column_keys[{key!r}] must be a non-empty list")
            if seen & set(cols):
                raise ConfigurationError(f"columns {sorted(seen & set(cols))} have two keys")
            seen |= set(cols)
        return pe.EncryptionConfiguration(
            footer_key=footer_key,
            column_keys={k: list(v) for k, v in column_keys.items()},
            encryption_algorithm=algorithm,
            plaintext_footer=plaintext_footer,
            double_wrapping=double_wrapping,
            cache_lifetime=self.cache_lifetime,
            data_key_length_bits=data_key_length_bits,
        )

    def encryption_properties(
        self,
        *,
        footer_key: str,
        column_keys: Mapping[str, Sequence[str]] | None,
        plaintext_footer: bool = False,
        double_wrapping: bool = True,
        data_key_length_bits: int = 256,
    ) -> Any:
        """Fresh `FileEncryptionProperties` for ONE file (new data keys; never share them)."""
        config = self.encryption_configuration(
            footer_key=footer_key,
            column_keys=column_keys,
            plaintext_footer=plaintext_footer,
            double_wrapping=double_wrapping,
            data_key_length_bits=data_key_length_bits,
        )
        return self.factory.file_encryption_properties(self.connection, config)

    def _expire_read_cache(self) -> None:
        """Empty PME's caches once `cache_lifetime` has passed since they were last emptied.
        pyarrow (26) keeps a reader's unwrapped keys past the lifetime its configuration
        names: a key disabled in the KMS kept decrypting in a running reader for ever, where
        docs/parquet.md says for `cache_lifetime` (review). Checked on every read this object
        sets up; the writers' caches go too (one more wrap each)."""
        with self._read_cache_lock:
            now = time.monotonic()
            if now - self._read_cache_born >= self.cache_lifetime.total_seconds():
                self.factory.remove_cache_entries_for_all_tokens()
                self._read_cache_born = now

    def decryption_properties(self) -> Any:
        """`FileDecryptionProperties` for reading (the keys come from each file's metadata)."""
        self._expire_read_cache()
        config = pe.DecryptionConfiguration(cache_lifetime=self.cache_lifetime)
        return self.factory.file_decryption_properties(self.connection, config)

    def dataset_format(self) -> ds.ParquetFileFormat:
        """A `ParquetFileFormat` that decrypts, for ``pyarrow.dataset.dataset(..., format=)``.

        pyarrow reads an unencrypted file with it as readily as an encrypted one, so a file
        swapped for a plain one is read without a word: `dataset` checks every file first."""
        self._expire_read_cache()
        config = ds.ParquetDecryptionConfig(
            self.factory,
            self.connection,
            pe.DecryptionConfiguration(cache_lifetime=self.cache_lifetime),
        )
        options = ds.ParquetFragmentScanOptions(decryption_config=config)
        return ds.ParquetFileFormat(default_fragment_scan_options=options)

    def dataset(
        self,
        source: str | os.PathLike[str] | Sequence[str],
        *,
        filesystem: pafs.FileSystem | None = None,
        plaintext_footer: bool = False,
        **kwargs: Any,
    ) -> ds.Dataset:
        """``pyarrow.dataset.dataset(source, format=self.dataset_format(), ...)`` whose every
        file read is checked to be encrypted (`check_encrypted`) through the very handle the
        read uses: a plain file swapped in, before the scan or while it runs, is refused
        (`UnencryptedParquetError`), never read. Every file is also checked once here."""
        if filesystem is None and isinstance(source, str | os.PathLike):
            loc = resolve(os.fspath(source))
            filesystem, source = loc.fs, loc.path
        checked = pafs.PyFileSystem(
            _EncryptedOnly(filesystem or pafs.LocalFileSystem(), plaintext_footer)
        )
        found = ds.dataset(source, format=self.dataset_format(), filesystem=checked, **kwargs)
        for path in found.files:
            checked.open_input_file(path).close()
        return found

    def dataset_write_options(
        self,
        *,
        footer_key: str,
        column_keys: Mapping[str, Sequence[str]] | None,
        plaintext_footer: bool = False,
        double_wrapping: bool = True,
        data_key_length_bits: int = 256,
        schema: pa.Schema | None = None,
        partitioning: Sequence[str] | ds.Partitioning | None = None,
    ) -> ds.FileWriteOptions:
        """`file_options` for ``pyarrow.dataset.write_dataset``: pyarrow derives encryption
        properties (fresh data keys) for every file it writes from this configuration.

        ``write_dataset`` is not atomic: a column of `column_keys` its data lacks fails it
        after it has created an empty file under the final name. Give the data's `schema`
        and such a column is a `ConfigurationError` here, before anything is written.

        `partitioning`: the columns the dataset is partitioned by (what
        ``write_dataset(partitioning=)`` takes: names, or a `pyarrow.dataset.Partitioning`).
        Their values become folder names, in the clear, and leave the files: one of them in
        `column_keys` (any, when `column_keys` is None: every column is encrypted) is a
        `ConfigurationError`
        (``write_dataset`` failed on it after making empty files in folders named by the
        secret values; review)."""
        parts = _partition_columns(partitioning)
        if column_keys is None:  # every column under the footer key (uniform encryption)
            leaked = sorted(parts)
        else:
            protected = {c for cols in column_keys.values() for c in cols}
            leaked = sorted(protected.intersection(parts))
        if leaked:
            raise ConfigurationError(
                f"the dataset is partitioned by {', '.join(map(repr, leaked))}, which "
                "column_keys encrypts: partition values are written into folder names in "
                "the clear. Partition by other columns, or leave this one unencrypted"
            )
        if schema is not None and parts:
            schema = pa.schema([f for f in schema if f.name not in parts])
        settings = self.encryption_configuration(
            footer_key=footer_key,
            column_keys=column_keys,
            plaintext_footer=plaintext_footer,
            double_wrapping=double_wrapping,
            data_key_length_bits=data_key_length_bits,
        )
        if schema is not None:
            # pyarrow checks the columns against the schema as it writes (in memory)
            props = self.factory.file_encryption_properties(self.connection, settings)
            _encoded(schema.empty_table(), props)
        config = ds.ParquetEncryptionConfig(self.factory, self.connection, settings)
        return ds.ParquetFileFormat().make_write_options(encryption_config=config)

    def write_table(
        self,
        table: pa.Table,
        where: str | os.PathLike[str],
        *,
        footer_key: str,
        column_keys: Mapping[str, Sequence[str]] | None,
        filesystem: pafs.FileSystem | None = None,
        plaintext_footer: bool = False,
        double_wrapping: bool = True,
        data_key_length_bits: int = 256,
        row_group_size: int | None = None,
        compression: str = "snappy",
    ) -> None:
        """Write `table` as one PME-encrypted Parquet file (local path or filesystem URI).

        The file is encoded in memory (the table is in memory already) and published whole by
        the lake's one atomic writer: a failure leaves nothing under the final name, and a
        column of `column_keys` the table lacks is a `ConfigurationError` before any write."""
        props = self.encryption_properties(
            footer_key=footer_key,
            column_keys=column_keys,
            plaintext_footer=plaintext_footer,
            double_wrapping=double_wrapping,
            data_key_length_bits=data_key_length_bits,
        )
        loc = resolve(os.fspath(where), filesystem=filesystem)
        data = _encoded(table, props, row_group_size=row_group_size, compression=compression)
        write_whole(loc.fs, loc.path, data, durable=False)

    def read_table(
        self,
        where: str | os.PathLike[str],
        *,
        columns: Sequence[str] | None = None,
        filesystem: pafs.FileSystem | None = None,
        plaintext_footer: bool = False,
    ) -> pa.Table:
        """Read a PME-encrypted file; only the keys of the footer and `columns` are unwrapped.
        The file must be encrypted (`check_encrypted`; `plaintext_footer` for a file written
        with one)."""
        loc = resolve(os.fspath(where), filesystem=filesystem)
        with loc.fs.open_input_file(loc.path) as f:  # checked and read through one handle
            check_encrypted(f, loc.path, plaintext_footer=plaintext_footer)
            with parquet_read_errors(loc.path):
                with pq.ParquetFile(f, decryption_properties=self.decryption_properties()) as pf:
                    if columns is not None:
                        _check_columns(pf, columns, loc.path)
                    return pf.read(columns=list(columns) if columns is not None else None)


def _check_columns(pf: pq.ParquetFile, columns: Sequence[str], path: str) -> None:
    """Every name in `columns` is a column of the file (a top-level name, or a dotted path to
    or into a nested field, as `ParquetFile.read` takes them). `ParquetFile.read` passes over
    a name the file does not have, so a typo (`amout`) read a table without that column and
    without a word, where `pq.read_table` and a dataset refuse it (review)."""
    known = set(pf.schema_arrow.names)
    for i in range(len(pf.schema)):
        parts = pf.schema.column(i).path.split(".")
        known.update(".".join(parts[: n + 1]) for n in range(len(parts)))
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ConfigurationError(
            f"{path} has no column {', '.join(map(repr, unknown))} (its columns: "
            f"{', '.join(pf.schema_arrow.names)})"
        )


def _encoded(table: pa.Table, props: Any, **options: Any) -> bytes:
    """`table` as an encrypted Parquet file, in memory. pyarrow's OSError here can only be
    the table and the keys disagreeing (a column of `column_keys` the table lacks): a
    `ConfigurationError`, before anything is written anywhere."""
    out = pa.BufferOutputStream()
    try:
        pq.write_table(table, out, encryption_properties=props, **options)
    except OSError as e:
        raise ConfigurationError(f"cannot encrypt the table as asked: {e}") from None
    return bytes(out.getvalue().to_pybytes())


@contextlib.contextmanager
def _crypto(
    backend: KmsBackend | KeySpec | ParquetCrypto, cache_lifetime: datetime.timedelta
) -> Iterator[ParquetCrypto]:
    """The caller's ParquetCrypto, or one for this call (closed after it: a backend opened
    from a KeySpec is closed, a backend passed in stays open)."""
    if isinstance(backend, ParquetCrypto):
        yield backend
        return
    with ParquetCrypto(backend, cache_lifetime=cache_lifetime) as crypto:
        yield crypto


def write_encrypted_table(
    table: pa.Table,
    where: str | os.PathLike[str],
    *,
    backend: KmsBackend | KeySpec | ParquetCrypto,
    footer_key: str,
    column_keys: Mapping[str, Sequence[str]] | None,
    filesystem: pafs.FileSystem | None = None,
    plaintext_footer: bool = False,
    row_group_size: int | None = None,
    cache_lifetime: datetime.timedelta = DEFAULT_CACHE_LIFETIME,
) -> None:
    """Write `table` with Parquet modular encryption, keys wrapped by an envelope backend.

        write_encrypted_table(table, "t.parquet", backend=kms, footer_key="footer",
                              column_keys={"pii": ["ssn"], "finance": ["amount"]})

    `footer_key` and the keys of `column_keys` are master key ids (backend key ids, unless a
    `ParquetCrypto` with `key_ids` is passed). Passing a backend or a `KeySpec` builds a new
    PME cache per call: pass a long-lived `ParquetCrypto` when writing many files.
    """
    with _crypto(backend, cache_lifetime) as crypto:
        crypto.write_table(
            table,
            where,
            footer_key=footer_key,
            column_keys=column_keys,
            filesystem=filesystem,
            plaintext_footer=plaintext_footer,
            row_group_size=row_group_size,
        )


def read_encrypted_table(
    where: str | os.PathLike[str],
    *,
    backend: KmsBackend | KeySpec | ParquetCrypto,
    columns: Sequence[str] | None = None,
    filesystem: pafs.FileSystem | None = None,
    cache_lifetime: datetime.timedelta = DEFAULT_CACHE_LIFETIME,
    plaintext_footer: bool = False,
) -> pa.Table:
    """Read a PME-encrypted Parquet file written by `write_encrypted_table` (or any PME
    writer using an `EnvelopeKmsClient`). A column whose key the backend refuses raises that
    backend's `KmsError`; leave it out of `columns` to read the rest."""
    with _crypto(backend, cache_lifetime) as crypto:
        return crypto.read_table(
            where, columns=columns, filesystem=filesystem, plaintext_footer=plaintext_footer
        )
