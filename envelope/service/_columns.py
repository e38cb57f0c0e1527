"""Values read back from the store's columns: as the service wrote them, or refused as edited.

SQLite keeps any value in any column, whatever its declared type: someone who edits the file
can put text where the service wrote a BLOB, a number where it wrote text, or bytes that are
not UTF-8 in a text column. Such a value was never written by the service, so reading it is
tampering (`TamperedStoreError`, an alarm), never a `TypeError` deep in a call (which left the
call unaudited) or a "store failed" that a client retries.
"""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING

from .errors import RootKeyError, StoreError, TamperedStoreError

if TYPE_CHECKING:
    from .rootkey import RootKey

__all__ = ("blob_or_none", "stored_blob", "translated", "unsealed")

_NOT_UTF8 = re.compile(r"Could not decode to UTF-8 column '([^']*)'")


def blob_or_none(value: object) -> bytes | None:
    """A BLOB column's value as bytes; None for any other type (an edited row)."""
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None


def stored_blob(value: object, what: str) -> bytes:
    """A BLOB column's value, or `TamperedStoreError` naming `what` (``"the key material of
    key K"``) when the column holds anything else."""
    blob = blob_or_none(value)
    if blob is None:
        raise TamperedStoreError(
            f"{what} is not stored as bytes ({type(value).__name__}): the store was edited "
            "outside the KMS; restore it from a backup"
        )
    return blob


def unsealed(root: RootKey, value: object, aad: bytes, what: str) -> bytes:
    """A column sealed under the root key, opened. The root key opened the store's verifier
    when the store was opened, so a value it does not open was replaced or edited: tampering,
    not "wrong root key" (which sent an operator after the wrong file)."""
    try:
        return root.unseal(stored_blob(value, what), aad)
    except RootKeyError:
        raise TamperedStoreError(
            f"{what} fails authentication under the root key: it was replaced (perhaps by a "
            "row copied from elsewhere) or edited outside the KMS; restore the store from a "
            "backup"
        ) from None


def translated(e: sqlite3.Error, path: object) -> StoreError | None:
    """What a SQLite error inside a read or write of the store means, or None for a failure
    that may pass (busy, full or failing disk): a malformed file is `StoreError` (corrupt,
    not retryable), and text that is not UTF-8 is `TamperedStoreError` (the service writes
    only str to text columns). sqlite3's own message quotes the text; this names the column
    alone."""
    if type(e) is sqlite3.DatabaseError:  # "database disk image is malformed", "not a database"
        return StoreError(f"the KMS store {path} is corrupt ({e}); restore it from a backup")
    found = _NOT_UTF8.search(str(e)) if isinstance(e, sqlite3.OperationalError) else None
    if found is not None:
        return TamperedStoreError(
            f"the KMS store {path} holds text that is not UTF-8 in a {found.group(1)!r} column: "
            "it was edited outside the KMS; restore it from a backup"
        )
    return None
