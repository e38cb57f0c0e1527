"""A single local wrapping key kept in a file (`file:PATH` key URIs), for offline use and tests.

The key file holds one line, ``envelope-file-key-v1:<base64 of 32 random bytes>``, and is
created with mode 0600 by `envelope keygen`. The key id recorded in headers is a fingerprint,
``fp-`` + the first 16 bytes of HMAC-SHA-256(K_id, "envelope/file-key-id") in hex, where
K_id and the wrapping key K_wrap are separate HKDF subkeys of the file's key: it names the
key without revealing anything about it, so decrypting with the wrong key file fails with a
message that says so.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._forksafe import renew_after_fork
from ..errors import ClosedError, ConfigurationError, KmsKeyError
from . import _aeswrap
from .base import DataKey, WrappedKey

__all__ = ("FileKeyBackend", "InsecureKeyFileWarning", "generate_key_file")

_PREFIX = "envelope-file-key-v1:"
#: What a reader ignores around the line: exactly these (format.md A.2); `str.strip()` also
#: took 0x1C-0x1F, which a reader of the spec refused (spec review).
_WHITESPACE = " \t\n\v\f\r"


def generate_key_file(path: str | os.PathLike[str]) -> str:
    """Write a new random key to `path` (mode 0600, refusing to overwrite); returns its key id.

    A write that fails (disk full, quota) removes the file it created, so no short key file is
    left under the name."""
    key = os.urandom(32)
    data = (_PREFIX + base64.b64encode(key).decode("ascii") + "\n").encode("ascii")
    name = os.fspath(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        what = "is a folder" if os.path.isdir(path) else "exists; refusing to overwrite a key"
        raise ConfigurationError(f"{name!r} {what}") from None
    except FileNotFoundError:
        folder = os.path.dirname(name) or "."
        raise ConfigurationError(f"no folder {folder!r} for the key file {name!r}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(path)  # created by us just above (O_EXCL)
        raise
    return _fingerprint(key)


def _subkey(key: bytes, purpose: bytes) -> bytes:
    """One key, two purposes kept apart: wrapping data keys, and naming the key."""
    return HKDF(hashes.SHA256(), 32, None, b"envelope/file-key/" + purpose).derive(key)


def _fingerprint(key: bytes) -> str:
    mac = crypto_hmac.HMAC(_subkey(key, b"id"), hashes.SHA256())
    mac.update(b"envelope/file-key-id")
    return "fp-" + mac.finalize().hex()[:32]


class InsecureKeyFileWarning(UserWarning):
    """A key file group or others may read or write (`envelope keygen` makes them 0600): who
    can read it can unwrap every data key sealed under it."""


#: A key file holds one line of about 60 characters: anything much longer is not one.
_MAX_KEY_FILE = 4096


#: A key's text, the way it would be pasted where its path goes (a whole line, or the base64
#: of 32 bytes alone)
_KEY_TEXT = re.compile(r"(?:.*envelope-file-key-v1:.*|\s*[A-Za-z0-9+/]{43}=\s*)", re.DOTALL)


def _shown_path(path: str | os.PathLike[str]) -> str:
    """The key file's path for a message, unless it is a key's text: a key file's contents
    passed where its path goes (`--key-file "$(cat k.key)"`) were quoted back on stderr, into
    CI logs (review)."""
    text = os.fspath(path)
    if isinstance(text, str) and _KEY_TEXT.fullmatch(text):
        return "<a key file path that is a key's text: not shown>"
    return repr(text)


class FileKeyBackend:
    """Wraps data keys under the one key read from a key file."""

    provider_id = "file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        shown = _shown_path(path)
        reason: str | None = None
        try:
            # non-blocking, and a regular file only, read up to a bound: a FIFO given as the
            # key file hung the command, and /dev/zero (or a huge file) read until memory ran
            # out (review)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise ConfigurationError(
                        f"{shown} is not a regular file: a key file is one"
                    )
                mode = st.st_mode
                raw = os.read(fd, _MAX_KEY_FILE + 1)
            finally:
                os.close(fd)
            if len(raw) > _MAX_KEY_FILE:
                raise ConfigurationError(f"{shown} is not an envelope key file")
            text = raw.decode("ascii", errors="replace").strip(_WHITESPACE)
        except ConfigurationError:
            raise
        except (OSError, ValueError) as e:  # (ValueError: a NUL in the path)
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        if reason is not None:  # raised outside: the OSError's filename is the path as given
            raise ConfigurationError(f"cannot read key file {shown}: {reason}")
        # binary (a byte that is not ASCII, decoded as U+FFFD): not a key file, as text of
        # another kind is not. Not a decode error caught and re-raised: its __context__ (kept
        # under `from None`) held every byte of the file, the key among them (review).
        if not text.startswith(_PREFIX) or "\ufffd" in text:
            raise ConfigurationError(f"{shown} is not an envelope key file")
        encoded = text[len(_PREFIX) :]
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError:
            key = b""
        # the canonical encoding only (format.md A.2): unused low bits set in the last
        # character decoded to the same key, so two texts named one key, and a strict reader
        # (Go's, Rust's) refused what this one took (spec review)
        if len(key) != 32 or base64.b64encode(key).decode("ascii") != encoded:
            raise ConfigurationError(f"{shown} does not hold a 256-bit key")
        self.key_id = _fingerprint(key)
        self._wrap_key = bytearray(_subkey(key, b"wrap"))
        self._closed = False
        self._lock = threading.Lock()
        renew_after_fork(self)  # (see `envelope._forksafe`)
        self.path = os.fspath(path)
        if mode & 0o077:
            warnings.warn(
                InsecureKeyFileWarning(
                    f"key file {os.fspath(path)} may be read or written by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {os.fspath(path)}"
                ),
                stacklevel=2,
            )

    def __reduce__(self) -> str | tuple[object, ...]:
        """Refused: the pickle would carry key material (ship a `KeySpec` to workers instead,
        and build the keyring there)."""
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled")

    def __repr__(self) -> str:
        return f"FileKeyBackend(path={self.path!r}, key_id={self.key_id!r})"

    def state_paths(self) -> tuple[str, ...]:
        """The key file (see `Keyring.state_paths`)."""
        return (self.path,)

    @contextlib.contextmanager
    def _wrapping_key(self, key_id: str, wrapping: bool = False) -> Iterator[bytearray]:
        """A private copy of the wrapping subkey for one call (wiped after it), taken under
        the lock `close_blocking` wipes the subkey under: a call racing the close either has
        the real subkey or raises ClosedError. Using the shared bytes, a wrap that had passed
        the check before the close wrapped data keys under an all-zero subkey (diff review)."""
        self._check(key_id, wrapping)
        with self._lock:
            if self._closed:
                raise ClosedError(f"key file backend {self.path!r} is closed")
            key = bytearray(self._wrap_key)
        try:
            yield key
        finally:
            key[:] = bytes(len(key))

    def _check(self, key_id: str, wrapping: bool = False) -> None:
        if key_id != self.key_id:
            if wrapping:  # asked to wrap under a key it does not hold
                raise KmsKeyError(
                    f"key file {self.path!r} holds key {self.key_id!r}, not {key_id!r}: "
                    "build the keyring with the file's own key id (backend.key_id)"
                )
            raise KmsKeyError(
                f"data key was wrapped under {key_id!r}; "
                f"key file {self.path!r} holds {self.key_id!r}"
            )

    def generate_data_key_blocking(
        self, key_id: str, *, context: Mapping[str, str]
    ) -> DataKey:
        """The blocking face (`BlockingKms`): a key file never waits on anything."""
        with self._wrapping_key(key_id, wrapping=True) as subkey:
            plaintext = bytearray(os.urandom(32))
            wrapped = _aeswrap.wrap(subkey, key_id, plaintext, context)
        return DataKey(plaintext, WrappedKey(self.provider_id, key_id, wrapped))

    def decrypt_data_key_blocking(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        with self._wrapping_key(wrapped.key_id) as subkey:
            return _aeswrap.unwrap(subkey, wrapped.key_id, wrapped.ciphertext, context)

    async def generate_data_key(self, key_id: str, *, context: Mapping[str, str]) -> DataKey:
        return self.generate_data_key_blocking(key_id, context=context)

    async def encrypt_data_key(
        self, key_id: str, plaintext: bytes | bytearray, *, context: Mapping[str, str]
    ) -> WrappedKey:
        with self._wrapping_key(key_id, wrapping=True) as subkey:
            return WrappedKey(
                self.provider_id, key_id, _aeswrap.wrap(subkey, key_id, plaintext, context)
            )

    async def decrypt_data_key(
        self, wrapped: WrappedKey, *, context: Mapping[str, str]
    ) -> bytearray:
        return self.decrypt_data_key_blocking(wrapped, context=context)

    def can_unwrap(self, wrapped: WrappedKey) -> bool:
        return wrapped.provider_id == self.provider_id and wrapped.key_id == self.key_id

    def close_blocking(self) -> None:
        """Wipe the wrapping subkey: a backend used after close raises ClosedError, as every
        other does (docs/library.md; it went on wrapping and unwrapping; review)."""
        with self._lock:
            self._closed = True
            self._wrap_key[:] = bytes(len(self._wrap_key))

    async def aclose(self) -> None:
        self.close_blocking()
