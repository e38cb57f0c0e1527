"""Key rows authenticated under the root key, bound to their key id and Region.

A key row's ``meta`` JSON holds everything that decides what the key may do (KeyState, usage,
spec, deletion date, rotation schedule, origin, tags, and any later policy). Anyone who can
write the SQLite file could edit it (``Disabled`` -> ``Enabled``), so each row carries::

    mac = HMAC-SHA256(row key, "envelope/kms/key-row/v1" || u16 len(region) || region
                                || u16 len(key id) || key id || meta)

where the row key is 32 random bytes sealed under the root key in the store's ``meta`` table
(``key_row_mac_key``). Binding the Region and key id means a row cannot be copied onto another
key or Region. What a MAC cannot tell is freshness: a row replaced by an *older authentic row of
the same key* (from a backup of this store) still verifies; the audit digests detect a store
rolled back as a whole, not one row restored on its own (see docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

__all__ = ("KEY_ROW_MAC_AAD", "check", "check_record", "mac", "record_mac")

_DOMAIN = b"envelope/kms/key-row/v1"
#: The AAD the row key is sealed under in the store's meta table.
KEY_ROW_MAC_AAD = b"key-row-mac-key"


def _field(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def mac(key: bytes, region: str, key_id: str, meta: str) -> bytes:
    """The MAC stored beside a key row's ``meta`` text (exactly the stored text)."""
    message = _DOMAIN + _field(region) + _field(key_id) + meta.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).digest()


def check(key: bytes, region: str, key_id: str, meta: str, stored: object) -> bool:
    """True when `stored` is the row's MAC (a missing or non-bytes MAC is not)."""
    if not isinstance(stored, bytes | bytearray | memoryview):
        return False
    return hmac.compare_digest(mac(key, region, key_id, meta), bytes(stored))


def record_mac(key: bytes, table: str, ident: str, body: str) -> bytes:
    """The MAC of an access-control row (a principal, identity policy or grant).

    Same key as key rows, another domain per table, bound to the row's primary key (`ident`),
    so a row can be neither edited nor moved to another principal, policy name or grant.
    """
    message = b"envelope/kms/access-row/v1" + _field(table) + _field(ident) + body.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).digest()


def check_record(key: bytes, table: str, ident: str, body: str, stored: object) -> bool:
    if not isinstance(stored, bytes | bytearray | memoryview):
        return False
    return hmac.compare_digest(record_mac(key, table, ident, body), bytes(stored))
