"""Cryptography with keys of custom key stores: AES-GCM in an HSM token, and AWS's double
encryption through an XKS proxy, in the KMS blob format (see `_keystores`), with the proxy's
round trip made before the store lock when it can be (prefetching)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import struct
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag

from . import _blob, _keystore_links
from ._core import (
    ServiceCore,
    _Call,
    _Key,
    _names_alias,
)
from ._specs import SYMMETRIC_DEFAULT
from .errors import (
    AccessDeniedException,
    CustomKeyStoreInvalidStateException,
    CustomKeyStoreNotFoundException,
    InvalidCiphertextException,
    KMSInvalidStateException,
    UnsupportedOperationException,
    ValidationException,
)

if TYPE_CHECKING:
    from envelope.xks.client import XksCiphertext, XksClient


from ._keystore_rows import (
    _IV,
    _TAG,
    _ZERO_NONCE,
    CLOUDHSM,
    CONNECTED,
    _connected_store,
    _load_store,
    _outcome,
    _StoreRow,
    _text,
    _timed,
    _token_for,
    _xks_for,
    _xks_metadata,
)

# ------------------------------------------------------------------------------ cryptography

#: The longest additionalAuthenticatedData every XKS proxy must take ("proxies MUST support
#: ... up to 8192 bytes"): the blob header and the encryption context must fit it.
_XKS_AAD_LIMIT = 8192


def _check_xks_aad(aad: bytes) -> None:
    """A key in an external key store seals with AAD = blob header + encryption context, and
    a proxy need take no more than 8192 bytes of it: a longer context (still within the
    KMS's own limit) failed as KMSInvalidStateException from the proxy's refusal. It is a
    ValidationException of the call now, before the proxy is asked."""
    if len(aad) > _XKS_AAD_LIMIT:
        raise ValidationException(
            f"the encryption context is too long for a key in an external key store: with "
            f"the blob header it makes {len(aad)} bytes of additionalAuthenticatedData, and "
            f"an XKS proxy need take only {_XKS_AAD_LIMIT}"
        )


__all__ = (
    "open_custom",
    "prefetch_open",
    "prefetch_seal",
    "prefetched_plaintext",
    "random_bytes",
    "seal_custom",
)


def _header(key_id: str, version: int) -> tuple[bytes, bytes]:
    kid = key_id.encode("ascii")
    salt = secrets.token_bytes(16)
    return bytes((1, len(kid))) + kid + struct.pack(">I", version) + salt, salt


def seal_custom(
    core: ServiceCore,
    conn: sqlite3.Connection,
    call: _Call,
    key: _Key,
    plaintext: bytes,
    ctx: Mapping[str, str],
) -> bytes:
    """Encrypt under a key of a custom key store (the KMS blob format; see the module doc)."""
    row = _connected_store(core, conn, key)
    header, salt = _header(key.id, 1)
    aad = header + _blob.canonical_context(ctx)
    started = time.perf_counter()
    if row.kind == CLOUDHSM:
        try:
            iv, ct, tag = _token_for(core, conn, row).encrypt(
                str(key.meta["x_hsm_label"]),
                plaintext,
                aad,
                key_id=_keystore_links.hsm_key_id(key.meta),
            )
        except Exception as e:
            _timed(call, row, "Encrypt", type(e).__name__, started)
            raise _keystore_links.hsm_error(e, "Encrypt") from None
        _timed(call, row, "Encrypt", "ok", started)
        return header + iv + ct + tag
    _check_xks_aad(aad)
    pre = _taken(call, key, row, _blob.canonical_context(ctx))
    if pre is not None and pre.plaintext == plaintext:
        if pre.error is not None:
            raise _keystore_links.xks_error(pre.error, "Encrypt") from None
        if pre.blob is not None:
            return pre.blob
    mat = core._material(conn, call, key.id, 1)
    inner = _blob._message_key(mat.raw, salt).encrypt(_ZERO_NONCE, plaintext, aad)
    try:
        out = _xks_for(core, row).encrypt(
            str(key.meta["XksKeyConfiguration"]["Id"]),
            inner,
            aad,
            _xks_metadata(core, call, key.arn),
        )
    except Exception as e:
        _timed(call, row, "Encrypt", _outcome(e), started)
        raise _keystore_links.xks_error(e, "Encrypt") from None
    _timed(call, row, "Encrypt", "ok", started)
    blob = _xks_blob(header, out)
    if blob is None:
        raise KMSInvalidStateException(
            "Encrypt failed: the external key store proxy returned a response the XKS API "
            "does not allow."
        )
    return blob


#: In the byte that gives the ciphertext metadata's length: the proxy's IV is 16 bytes, and its
#: last 4 follow this byte (the blob's nonce field holds 12). The XKS API allows 12 or 16; the
#: metadata is at most 20 bytes, so blobs written before 16-byte IVs never have this bit set.
_IV16 = 0x80
#: The XKS API's limit on ciphertextMetadata (spec: "MUST NOT exceed 20 bytes").
_MAX_XKS_METADATA = 20


def _xks_blob(header: bytes, out: XksCiphertext) -> bytes | None:
    """The KMS ciphertext blob of a proxy's Encrypt answer, or None if the answer is not one
    the XKS API allows (an IV of neither 12 nor 16 bytes, a tag not of 16, metadata over 20)."""
    meta = out.ciphertext_metadata or b""
    if len(out.iv) not in (_IV, 16) or len(out.tag) != _TAG or len(meta) > _MAX_XKS_METADATA:
        return None
    flags = len(meta) | (_IV16 if len(out.iv) == 16 else 0)
    return header + out.iv[:_IV] + bytes((flags,)) + out.iv[_IV:] + meta + out.ciphertext + out.tag


def _xks_parts(nonce: bytes, body: bytes) -> XksCiphertext | None:
    """What a proxy's Decrypt needs back from a blob (`_xks_blob`'s inverse), or None for a
    blob no proxy answer could have made (refused here, never sent to the proxy)."""
    from envelope.xks.client import XksCiphertext

    if not body:
        return None
    extra = 16 - _IV if body[0] & _IV16 else 0
    n = body[0] & ~_IV16
    rest = body[1:]
    # (the inner layer under the proxy's key is at least a tag and a byte: 17 bytes)
    if n > _MAX_XKS_METADATA or len(rest) < extra + n + _TAG + 17:
        return None
    sealed = rest[extra + n :]
    return XksCiphertext(
        ciphertext=sealed[:-_TAG],
        iv=nonce + rest[:extra],
        tag=sealed[-_TAG:],
        ciphertext_metadata=rest[extra : extra + n] or None,
    )


def open_custom(
    core: ServiceCore,
    conn: sqlite3.Connection,
    call: _Call,
    key: _Key,
    parsed: _blob.Parsed,
    ctx: Mapping[str, str],
) -> bytes:
    """Decrypt a blob made by `seal_custom` under this key."""
    row = _connected_store(core, conn, key)
    aad = parsed.header + _blob.canonical_context(ctx)
    iv, body = parsed.nonce, parsed.body
    started = time.perf_counter()
    if row.kind == CLOUDHSM:
        if len(body) < _TAG:
            raise InvalidCiphertextException("the ciphertext is truncated")
        try:
            out: bytes = _token_for(core, conn, row).decrypt(
                str(key.meta["x_hsm_label"]),
                iv,
                body[:-_TAG],
                body[-_TAG:],
                aad,
                key_id=_keystore_links.hsm_key_id(key.meta),
            )
        except Exception as e:
            _timed(call, row, "Decrypt", type(e).__name__, started)
            raise _keystore_links.hsm_error(e, "Decrypt") from None
        _timed(call, row, "Decrypt", "ok", started)
        return out
    pre = _taken(call, key, row, _blob.canonical_context(ctx))
    if pre is not None and pre.blob == parsed.header + iv + body:
        if pre.error is not None:
            raise _keystore_links.xks_error(pre.error, "Decrypt") from None
        if pre.plaintext is not None:
            return pre.plaintext
    parts = _xks_parts(iv, body)
    if parts is None:
        raise InvalidCiphertextException(
            "the ciphertext is truncated or damaged: no external key store answer makes it"
        )
    try:
        inner = _xks_for(core, row).decrypt(
            str(key.meta["XksKeyConfiguration"]["Id"]),
            parts,
            aad,
            _xks_metadata(core, call, key.arn),
        )
    except Exception as e:
        _timed(call, row, "Decrypt", _outcome(e), started)
        raise _keystore_links.xks_error(e, "Decrypt") from None
    _timed(call, row, "Decrypt", "ok", started)
    mat = core._material(conn, call, key.id, 1)
    try:
        plain: bytes = _blob._message_key(mat.raw, parsed.salt).decrypt(_ZERO_NONCE, inner, aad)
    except InvalidTag:
        # The proxy authenticated the same AAD (the header and the context) and said yes, so
        # a failing inner layer is the proxy's wrong answer: the XKS spec's "Proxy returns an
        # invalid ciphertext" row, KMSInvalidStateException (review)
        raise KMSInvalidStateException(
            "Decrypt failed: the external key store proxy returned a plaintext that does not "
            "open the inner layer of this ciphertext."
        ) from None
    return plain


# ------------------------------------------------------------------------------ prefetching
#
# An XKS round trip takes a millisecond or more, and every KMS call runs in a store transaction
# under the store lock: made inside it, the round trips of concurrent calls would queue one
# behind the other. So Encrypt, GenerateDataKey* and Decrypt on an external store's key make
# their proxy call first, outside the lock (`ServiceCore._run`'s prefetch), and the call's
# transaction then does every check as usual (resolution, authorization, key state, the store
# still connected with the same settings) and uses the prefetched answer only if it is for the
# same key, store settings, encryption context and input. A prefetch never decides anything:
# anything unexpected and it is simply not used.


class _Prefetched:
    __slots__ = ("blob", "context", "error", "fingerprint", "key_id", "plaintext")

    def __init__(
        self,
        key_id: str,
        fingerprint: bytes,
        context: bytes,
        plaintext: bytes | None,
        blob: bytes | None,
        error: BaseException | None = None,
    ) -> None:
        self.key_id = key_id
        self.fingerprint = fingerprint
        self.context = context
        self.plaintext = plaintext
        self.blob = blob
        self.error = error


def _fingerprint(row: _StoreRow) -> bytes:
    """What the store's settings are (endpoint, path, credential, state): a prefetched answer
    obtained under other settings is not used. A row read from the store is named by its MAC,
    which covers exactly its id, body and sealed secret (no JSON and no hash per call)."""
    if row.mac:
        return row.mac
    text = json.dumps(row.body, sort_keys=True).encode() + (row.secret or b"")
    return hashlib.sha256(text).digest()


def _taken(call: _Call, key: _Key, row: _StoreRow, context: bytes) -> _Prefetched | None:
    pre = call.prefetched
    if not isinstance(pre, _Prefetched):
        return None
    call.prefetched = None  # used at most once
    if pre.key_id != key.id or pre.context != context or pre.fingerprint != _fingerprint(row):
        return None
    return pre


def prefetched_plaintext(call: _Call, n: int) -> bytes | None:
    """The data key a prefetched GenerateDataKey encrypted (its length checked)."""
    pre = call.prefetched
    if isinstance(pre, _Prefetched) and pre.plaintext is not None and len(pre.plaintext) == n:
        return pre.plaintext
    return None


def _external_key(
    core: ServiceCore,
    call: _Call,
    conn: sqlite3.Connection,
    key_id: str,
    ctx: Mapping[str, str],
    action: str,
    values: Mapping[str, Any],
) -> tuple[_Key, _StoreRow, bytes, XksClient] | None:
    """Under the store's read lock: the external-store key a prefetch may use, if the caller
    would be allowed (checked again in the transaction), with its material and client.

    `values` are the request's condition keys the transaction will set (the encryption
    algorithm, the alias the request named): without them, a policy denying on
    kms:RequestAlias let the proxy encrypt for a call the transaction then refused (review)."""
    key = core._load(conn, core.region, key_id)
    if key is None or "XksKeyConfiguration" not in key.meta or key.state != "Enabled":
        return None
    row = _load_store(core, conn, str(key.meta["CustomKeyStoreId"]))
    if row is None or row.state != CONNECTED:
        return None
    scratch = _Call(call.op, call.principal, call.ctx, {})
    scratch.caller = core._access.principal(call.principal)
    if scratch.caller.kind == "assumed-role":  # as the transaction will see it
        try:
            scratch.caller = core.session_role(conn, scratch.caller)
        except AccessDeniedException:
            return None
    scratch.account = scratch.caller.account or core.account
    scratch.enc_context = dict(ctx)
    scratch.values.update(values)
    core._authorize_key(conn, scratch, key, action)  # AccessDenied: no proxy call
    mat = core._material(conn, scratch, key.id, 1)
    return key, row, mat.raw, _xks_for(core, row)


def prefetch_seal(
    core: ServiceCore,
    call: _Call,
    key_ref: str,
    ctx: Mapping[str, str],
    plaintext: bytes | None,
    n: int | None,
) -> None:
    """Encrypt or GenerateDataKey* on an external store's key: the proxy call, before the lock."""
    with core.store.read() as conn:
        account = core._access.principal(call.principal).account or core.account
        key_id, _, named = core._resolve_id(conn, key_ref, managed=False, account=account)
        values: dict[str, Any] = {"kms:encryptionalgorithm": SYMMETRIC_DEFAULT}
        if _names_alias(key_ref):
            values["kms:requestalias"] = key_ref.rsplit(":", 1)[-1]
        found = _external_key(core, call, conn, key_id, ctx, f"kms:{call.op}", values)
    if found is None:
        return
    key, row, material, client = found
    if named != key.account:
        return
    if plaintext is None:
        if n is None:
            return
        plaintext = os.urandom(n)
    header, salt = _header(key.id, 1)
    context = _blob.canonical_context(ctx)
    aad = header + context
    if len(aad) > _XKS_AAD_LIMIT:
        return  # refused by the call itself (`_check_xks_aad`), without asking the proxy
    inner = _blob._message_key(material, salt).encrypt(_ZERO_NONCE, plaintext, aad)
    started = time.perf_counter()
    try:
        out = client.encrypt(
            str(key.meta["XksKeyConfiguration"]["Id"]),
            inner,
            aad,
            _xks_metadata(core, call, key.arn),
        )
    except Exception as e:
        _timed(call, row, "Encrypt", _outcome(e), started)
        call.prefetched = _Prefetched(key.id, _fingerprint(row), context, plaintext, None, e)
        return
    _timed(call, row, "Encrypt", "ok", started)
    blob = _xks_blob(header, out)
    if blob is None:
        # not asked again in the transaction: the same refusal, from this answer
        from envelope.xks.errors import XksInvalidResponse

        error = XksInvalidResponse("its IV, tag or ciphertext metadata has a length it may not")
        call.prefetched = _Prefetched(key.id, _fingerprint(row), context, plaintext, None, error)
        return
    call.prefetched = _Prefetched(key.id, _fingerprint(row), context, plaintext, blob)


def prefetch_open(
    core: ServiceCore,
    call: _Call,
    blob: bytes,
    ctx: Mapping[str, str],
    key_ref: str | None = None,
) -> None:
    """Decrypt of an external store's ciphertext: the proxy call, before the lock. Not made
    when the request's KeyId names another key (the call is IncorrectKeyException)."""
    parsed = _blob.parse(blob)
    with core.store.read() as conn:
        if key_ref is not None:
            account = core._access.principal(call.principal).account or core.account
            named, _, _ = core._resolve_id(conn, key_ref, managed=False, account=account)
            if named != parsed.key_id:
                return
        values = {"kms:encryptionalgorithm": SYMMETRIC_DEFAULT}
        found = _external_key(core, call, conn, parsed.key_id, ctx, "kms:Decrypt", values)
    if found is None:
        return
    key, row, material, client = found
    context = _blob.canonical_context(ctx)
    parts = _xks_parts(parsed.nonce, parsed.body)
    if parts is None:
        return
    aad = parsed.header + context
    started = time.perf_counter()
    try:
        inner = client.decrypt(
            str(key.meta["XksKeyConfiguration"]["Id"]),
            parts,
            aad,
            _xks_metadata(core, call, key.arn),
        )
    except Exception as e:
        _timed(call, row, "Decrypt", _outcome(e), started)
        call.prefetched = _Prefetched(key.id, _fingerprint(row), context, None, blob, e)
        return
    _timed(call, row, "Decrypt", "ok", started)
    try:
        plain = _blob._message_key(material, parsed.salt).decrypt(_ZERO_NONCE, inner, aad)
    except InvalidTag:
        return
    call.prefetched = _Prefetched(key.id, _fingerprint(row), context, plain, blob)


def random_bytes(
    core: ServiceCore, conn: sqlite3.Connection, call: _Call, store_id: Any, n: int
) -> bytes:
    """GenerateRandom from a CloudHSM key store's HSM (AWS: the store must be connected)."""
    _text(store_id, "CustomKeyStoreId", 1, 64)
    account = call.account or core.account
    row = _load_store(core, conn, store_id, account)
    if row is None:
        raise CustomKeyStoreNotFoundException(
            f"no custom key store {store_id} in account {account}"
        )
    if row.kind != CLOUDHSM:
        raise UnsupportedOperationException(
            "GenerateRandom takes a CustomKeyStoreId only for AWS_CLOUDHSM key stores"
        )
    if row.state != CONNECTED:
        raise CustomKeyStoreInvalidStateException(f"{row.id} is {row.state}, not CONNECTED")
    started = time.perf_counter()
    try:
        out: bytes = _token_for(core, conn, row).random(n)
    except Exception as e:
        _timed(call, row, "GenerateRandom", type(e).__name__, started)
        raise _keystore_links.hsm_error(e, "GenerateRandom") from None
    _timed(call, row, "GenerateRandom", "ok", started)
    return out
