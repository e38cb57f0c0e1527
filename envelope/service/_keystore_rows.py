"""Custom key stores' rows and connections: what the KMS keeps about each store, and how it
reaches the store's token or proxy for a call (`_keystores` has the operations, the format and
the states; `_keystore_crypto` the cryptography)."""

from __future__ import annotations

import base64
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import _keystore_links, _rows
from ._columns import stored_blob
from ._core import (
    Response,
    ServiceCore,
    _Call,
    _Key,
)
from .errors import (
    KMSInvalidStateException,
    ValidationException,
)

if TYPE_CHECKING:
    from envelope.pkcs11 import Token
    from envelope.xks.client import XksClient


__all__ = ("CLOUDHSM", "CUSTOM_ORIGINS", "EXTERNAL", "effective_state", "in_region", "token_label")

CLOUDHSM = "AWS_CLOUDHSM"
EXTERNAL = "EXTERNAL_KEY_STORE"
#: Key origins whose material is in a custom key store.
CUSTOM_ORIGINS = frozenset({CLOUDHSM, EXTERNAL})

CONNECTED = "CONNECTED"
CONNECTING = "CONNECTING"
DISCONNECTED = "DISCONNECTED"
DISCONNECTING = "DISCONNECTING"
FAILED = "FAILED"

#: AWS's quota: custom key stores per account and Region.
MAX_STORES = 10
_CLUSTER_RE = re.compile(r"cluster-[2-7a-zA-Z]{11,16}\Z")
# AWS allows no port (443 always); a port is accepted here so a proxy can run on loopback
_ENDPOINT_RE = re.compile(r"https://[a-zA-Z0-9.-]+(:[0-9]{1,5})?\Z")


def reachable_form(endpoint: str) -> bool:
    """Whether an endpoint `_ENDPOINT_RE` admits names a host and port that can be dialled:
    the pattern takes any five digits and any run of dots (a port of 99999 made the connection
    check fail inside the socket library, answered as an internal error; review)."""
    host, _, port = endpoint[len("https://") :].partition(":")
    if port and not 1 <= int(port) <= 65535:
        return False
    return all(0 < len(x) <= 63 and x[0] != "-" and x[-1] != "-" for x in host.split("."))
_PATH_RE = re.compile(r"(/[a-zA-Z0-9/_-]+/kms/xks/v\d{1,2})\Z|(/kms/xks/v\d{1,2})\Z")
_XKS_ACCESS_KEY_RE = re.compile(r"[A-Z2-7]{20,30}\Z")
_XKS_SECRET_RE = re.compile(r"[a-zA-Z0-9/+=]{43,64}\Z")
_XKS_KEY_ID_RE = re.compile(r"[a-zA-Z0-9-_.]{1,128}\Z")
_SECRET_AAD = b"envelope/kms/custom-key-store-secret/v1|"
_ZERO_NONCE = bytes(12)
_IV = 12
_TAG = 16


def _text(value: Any, name: str, lo: int, hi: int) -> str:
    if not isinstance(value, str) or not lo <= len(value) <= hi:
        raise ValidationException(f"{name} must be a string of {lo}..{hi} characters")
    return value


def _secret_aad(store_id: str) -> bytes:
    return _SECRET_AAD + store_id.encode()


def _store_id() -> str:
    return "cks-" + secrets.token_hex(8)


def _cluster_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "cluster-" + "".join(secrets.choice(alphabet) for _ in range(11))


def token_label(key_id: str) -> str:
    """The label of a KMS key's object in its token: one object per KMS key."""
    return f"kms-{key_id}"


# ------------------------------------------------------------------------------ store rows


class _StoreRow:
    __slots__ = ("account", "body", "id", "mac", "secret")

    def __init__(
        self,
        store_id: str,
        account: str,
        body: dict[str, Any],
        secret: bytes | None,
        mac: bytes = b"",
    ):
        self.id = store_id
        self.account = account
        self.body = body
        self.secret = secret
        #: The row's MAC as read (empty for a row not yet written): what the per-process
        #: caches of this row's parsed body, secret and connection are keyed by.
        self.mac = mac

    @property
    def kind(self) -> str:
        return str(self.body["CustomKeyStoreType"])

    @property
    def state(self) -> str:
        return str(self.body["ConnectionState"])


def _load_store(
    core: ServiceCore, conn: sqlite3.Connection, store_id: str, account: str | None = None
) -> _StoreRow | None:
    """A store's row, authenticated. The parsed row is cached per process under its MAC (a
    row written since has another MAC, so is read and checked again); every call still reads
    the row, so a store disconnected by another process is seen at once.

    With `account` (a caller naming a store), only a store of that account and of the
    service's Region: a custom key store belongs to one account and Region, as in AWS."""
    loaded = _load_any_store(core, conn, store_id, account)
    if loaded is not None and account is not None and not in_region(loaded.body, core.region):
        return None
    return loaded


def in_region(body: Mapping[str, Any], region: str) -> bool:
    """Whether a store's body says it belongs to `region`. Stores made before they recorded
    their Region (no ``Region``) are seen from every Region, as they were then."""
    return bool(body.get("Region", region) == region)


def _load_any_store(
    core: ServiceCore, conn: sqlite3.Connection, store_id: str, account: str | None
) -> _StoreRow | None:
    row = conn.execute(
        "SELECT account, body, secret, mac FROM custom_key_stores WHERE store_id=?", (store_id,)
    ).fetchone()
    if row is None or (account is not None and str(row[0]) != account):
        return None
    mac = stored_blob(row[3], f"the MAC of custom key store {store_id}")
    cache = core._keystore_cache
    cached = cache.get(("row", store_id))
    if cached is not None and cached[0] == mac:
        body: dict[str, Any] = dict(cached[1])
        return _StoreRow(store_id, str(row[0]), body, cached[2], mac)
    body_text = str(row[1])
    secret = None
    if row[2] is not None:
        secret = stored_blob(row[2], f"the secret of custom key store {store_id}")
    if not _rows.check_record(
        core.store.row_key, "custom_key_stores", store_id, _mac_text(body_text, secret), mac
    ):
        from .errors import TamperedStoreError

        raise TamperedStoreError(
            f"the custom key store {store_id} fails authentication under the root key: it was "
            "changed outside the KMS; restore the store from a backup"
        )
    body = json.loads(body_text)
    cache[("row", store_id)] = (mac, dict(body), secret)
    return _StoreRow(store_id, str(row[0]), body, secret, mac)


def _mac_text(body_text: str, secret: bytes | None) -> str:
    # the sealed secret is bound too, so a secret cannot be swapped between stores
    tail = "" if secret is None else base64.b64encode(secret).decode("ascii")
    return body_text + "|" + tail


def _save_store(
    core: ServiceCore, conn: sqlite3.Connection, row: _StoreRow, *, insert: bool = False
) -> None:
    text = json.dumps(row.body, sort_keys=True, separators=(",", ":"))
    mac = _rows.record_mac(
        core.store.row_key, "custom_key_stores", row.id, _mac_text(text, row.secret)
    )
    if insert:
        conn.execute(
            "INSERT INTO custom_key_stores(store_id, account, name, body, secret, mac) "
            "VALUES (?,?,?,?,?,?)",
            (row.id, row.account, row.body["CustomKeyStoreName"], text, row.secret, mac),
        )
    else:
        conn.execute(
            "UPDATE custom_key_stores SET name=?, body=?, secret=?, mac=? WHERE store_id=?",
            (row.body["CustomKeyStoreName"], text, row.secret, mac, row.id),
        )


def _load_cluster(
    core: ServiceCore, conn: sqlite3.Connection, cluster_id: str
) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT body, mac FROM hsm_clusters WHERE cluster_id=?", (cluster_id,)
    ).fetchone()
    if row is None:
        return None
    if not _rows.check_record(core.store.row_key, "hsm_clusters", cluster_id, str(row[0]), row[1]):
        from .errors import TamperedStoreError

        raise TamperedStoreError(
            f"the HSM cluster {cluster_id} fails authentication under the root key: it was "
            "changed outside the KMS"
        )
    body: dict[str, Any] = json.loads(str(row[0]))
    return body


def _secret(core: ServiceCore, row: _StoreRow) -> str:
    if row.secret is None:
        raise KMSInvalidStateException(f"the custom key store {row.id} has no credential")
    return core.store.root.unseal(row.secret, _secret_aad(row.id)).decode("utf-8")


def _token_for(core: ServiceCore, conn: sqlite3.Connection, row: _StoreRow) -> Token:
    """The process's connection to the store's token (cached under the row's MAC: the cluster
    row and the sealed PIN are read and unsealed once per change of the store's row)."""
    key = ("token", row.id)
    cached = core._keystore_cache.get(key)
    if cached is not None and row.mac and cached[0] == row.mac:
        token: Token = cached[1]
        return token
    cluster = _load_cluster(core, conn, str(row.body["CloudHsmClusterId"]))
    if cluster is None:
        raise KMSInvalidStateException(
            f"the HSM cluster {row.body['CloudHsmClusterId']} of custom key store {row.id} is "
            "no longer registered"
        )
    token = _keystore_links.open_token(
        str(cluster["Module"]), str(cluster["TokenLabel"]), _secret(core, row)
    )
    if row.mac:
        core._keystore_cache[key] = (row.mac, token)
    return token


def _xks_for(core: ServiceCore, row: _StoreRow) -> XksClient:
    """The process's client of the store's proxy (cached under the row's MAC)."""
    key = ("xks", row.id)
    cached = core._keystore_cache.get(key)
    if cached is not None and row.mac and cached[0] == row.mac:
        client: XksClient = cached[1]
        return client
    proxy = row.body["XksProxyConfiguration"]
    client = _keystore_links.xks_client(
        str(proxy["UriEndpoint"]),
        str(proxy["UriPath"]),
        str(proxy["AccessKeyId"]),
        _secret(core, row),
        str(row.body.get("Region", core.region)),
    )
    if row.mac:
        core._keystore_cache[key] = (row.mac, client)
    return client


def _xks_metadata(core: ServiceCore, call: _Call, key_arn: str | None) -> Any:
    from envelope.xks.client import RequestMetadata

    return RequestMetadata(
        aws_principal_arn=call.principal,
        kms_key_arn=key_arn,
        kms_operation=call.op,
        kms_request_id=core._call_request_id(call),
        kms_via_service=call.ctx.via_service,
    )


def _timed(call: _Call, row: _StoreRow, what: str, outcome: str, started: float) -> None:
    """One HSM or XKS call in the audit record of the KMS call that made it."""
    call.keystore_calls.append(
        {
            "CustomKeyStoreId": row.id,
            "Type": row.kind,
            "Call": what,
            "Outcome": outcome,
            "Milliseconds": round((time.perf_counter() - started) * 1000, 3),
        }
    )


# ------------------------------------------------------------------------------ key state


def effective_state(core: ServiceCore, conn: sqlite3.Connection, key: _Key) -> str:
    """A key's state as AWS shows it: ``Unavailable`` while its custom key store is not
    connected (an Enabled or Disabled key; pending deletion stays pending)."""
    state = key.state
    store_id = key.meta.get("CustomKeyStoreId")
    if store_id is None or state not in ("Enabled", "Disabled"):
        return state
    row = _load_store(core, conn, str(store_id))
    if row is None or row.state != CONNECTED:
        return "Unavailable"
    return state


def _connected_store(core: ServiceCore, conn: sqlite3.Connection, key: _Key) -> _StoreRow:
    row = _load_store(core, conn, str(key.meta["CustomKeyStoreId"]))
    if row is None or row.state != CONNECTED:
        raise KMSInvalidStateException(
            f"{key.arn} is unavailable: its custom key store "
            f"{key.meta['CustomKeyStoreId']} is not connected"
        )
    return row


def _outcome(error: BaseException) -> str:
    name = getattr(error, "error_name", None)
    return str(name) if name else type(error).__name__


def _entry(row: _StoreRow) -> Response:
    """A CustomKeyStoresListEntry (never the password or the proxy secret)."""
    b = row.body
    out: Response = {
        "CustomKeyStoreId": row.id,
        "CustomKeyStoreName": b["CustomKeyStoreName"],
        "CustomKeyStoreType": b["CustomKeyStoreType"],
        "ConnectionState": b["ConnectionState"],
        "CreationDate": b["CreationDate"],
    }
    if b.get("ConnectionErrorCode"):
        out["ConnectionErrorCode"] = b["ConnectionErrorCode"]
    if row.kind == CLOUDHSM:
        out["CloudHsmClusterId"] = b["CloudHsmClusterId"]
        if b.get("TrustAnchorCertificate"):
            out["TrustAnchorCertificate"] = b["TrustAnchorCertificate"]
    else:
        out["XksProxyConfiguration"] = dict(b["XksProxyConfiguration"])
    return out
