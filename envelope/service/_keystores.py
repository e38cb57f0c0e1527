"""Custom key stores: KMS keys whose material lives in an HSM (PKCS#11) or an external manager.

AWS KMS has two kinds, and so does this KMS:

* ``AWS_CLOUDHSM`` key stores. AWS backs them with a CloudHSM cluster; here the "cluster" is a
  PKCS#11 token registered with the KMS under a cluster id (`register_hsm_cluster`: the module
  path and token label; in AWS the cluster is a resource of another service). The store keeps
  the token user's PIN (AWS's ``kmsuser`` password, ``KeyStorePassword``) sealed under the root
  key. A key made in the store (``Origin=AWS_CLOUDHSM``) is a non-extractable AES-256 object in
  the token, and Encrypt, Decrypt, ReEncrypt and GenerateDataKey* run AES-GCM inside the token.
* ``EXTERNAL_KEY_STORE`` key stores reach an external key manager through a proxy speaking the
  AWS XKS proxy API (SigV4 with the store's proxy credential). A key made in the store
  (``Origin=EXTERNAL_KEY_STORE``, ``XksKeyId``) is encrypted twice, as AWS does: first under
  backing material the KMS holds for the key, then by the external key, so neither side alone
  can decrypt.

Ciphertext blobs keep the KMS's format (`_blob`): the same header (format byte, key id,
version, salt) authenticated as AAD with the encryption context; what follows the header is::

    AWS_CLOUDHSM:        iv(12) || token AES-GCM ciphertext || tag(16)
    EXTERNAL_KEY_STORE:  iv(12) || u8 len(m) || m || proxy ciphertext || tag(16)
                         where the proxy encrypted  inner = AES-GCM(message key, zero nonce,
                         plaintext, AAD) || tag  and  m is the proxy's ciphertextMetadata

(the inner message key is the KMS's per-message key, SHA-256 of the key's backing material and
the blob's random salt, so a zero nonce is never reused under one key.)

Connection states are AWS's: a new store is DISCONNECTED; ConnectCustomKeyStore tries to reach
the token or proxy and leaves the store CONNECTED, or FAILED with a ConnectionErrorCode (AWS
connects in the background and shows CONNECTING meanwhile; here the attempt is synchronous and
short, so CONNECTING is never observed). While a store is not CONNECTED its keys' state reads
``Unavailable`` and every cryptographic use fails with ``KMSInvalidStateException``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from . import _keystore_links, _rows
from ._core import (
    RequestContext,
    Response,
    ServiceCore,
    _Call,
    _page,
    _paging,
)
from ._keystore_rows import (
    _CLUSTER_RE,
    _ENDPOINT_RE,
    _PATH_RE,
    _XKS_ACCESS_KEY_RE,
    _XKS_KEY_ID_RE,
    _XKS_SECRET_RE,
    CLOUDHSM,
    CONNECTED,
    DISCONNECTED,
    DISCONNECTING,
    EXTERNAL,
    FAILED,
    MAX_STORES,
    _cluster_id,
    _entry,
    _load_cluster,
    _load_store,
    _outcome,
    _save_store,
    _secret,
    _secret_aad,
    _store_id,
    _StoreRow,
    _text,
    _timed,
    _token_for,
    _xks_for,
    _xks_metadata,
    in_region,
    reachable_form,
    token_label,
)
from .errors import (
    AccessDeniedException,
    CloudHsmClusterInUseException,
    CloudHsmClusterNotActiveException,
    CloudHsmClusterNotFoundException,
    CloudHsmClusterNotRelatedException,
    CustomKeyStoreHasCMKsException,
    CustomKeyStoreInvalidStateException,
    CustomKeyStoreNameInUseException,
    CustomKeyStoreNotFoundException,
    IncorrectTrustAnchorException,
    KmsServiceError,
    LimitExceededException,
    UnsupportedOperationException,
    ValidationException,
    XksKeyAlreadyInUseException,
    XksKeyInvalidConfigurationException,
    XksKeyNotFoundException,
    XksProxyIncorrectAuthenticationCredentialException,
    XksProxyInvalidConfigurationException,
    XksProxyInvalidResponseException,
    XksProxyUriInUseException,
    XksProxyUriUnreachableException,
)

__all__ = ("KeyStoreOps",)


def _only_for(kind: str, **members: Any) -> None:
    """Refuse members given for the other kind of custom key store (named in the message)."""
    given = [name for name, value in members.items() if value is not None]
    if given:
        raise ValidationException(f"{', '.join(given)} apply only to {kind} key stores")


# ------------------------------------------------------------------------------ operations


class KeyStoreOps(ServiceCore):
    """CreateCustomKeyStore .. DisconnectCustomKeyStore, and the HSM cluster registry."""

    # -- the HSM cluster registry (what AWS's CloudHSM service would hold) ----------------

    def _admin_only(self, call: _Call, what: str) -> None:
        """The HSM cluster registry belongs to the KMS's administrator (its account root): a
        cluster names a shared library this process loads."""
        if call.principal != self.root_principal:
            call.decision = "denied"
            call.reason = f"only the store's administrator account root may {what}"
            raise AccessDeniedException(
                f"User: {call.principal} is not authorized to perform: kms:{call.op} on "
                f"resource: * because only {self.root_principal} administers this KMS's HSM "
                "clusters"
            )
        call.decision = "allowed"
        call.matched = ["root"]

    def register_hsm_cluster(
        self,
        *,
        module: str,
        token_label: str,
        cloud_hsm_cluster_id: str | None = None,
        trust_anchor_certificate: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """Make a PKCS#11 token usable as the "CloudHSM cluster" of AWS_CLOUDHSM key stores.

        Only the KMS's administrator (its account root) registers clusters: the module path is a
        shared library this process will load. The token itself is not opened here (its PIN
        comes with the key store); `trust_anchor_certificate`, when given, is what
        CreateCustomKeyStore's TrustAnchorCertificate must equal.
        """
        cluster_id = cloud_hsm_cluster_id or _cluster_id()
        params = {"CloudHsmClusterId": cluster_id, "TokenLabel": token_label, "Module": module}

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            self._admin_only(call, "register an HSM cluster")
            if not _CLUSTER_RE.match(cluster_id):
                raise ValidationException("CloudHsmClusterId must match cluster-[2-7a-zA-Z]{11,16}")
            _text(module, "Module", 1, 4096)
            _text(token_label, "TokenLabel", 1, 32)
            if trust_anchor_certificate is not None:
                _text(trust_anchor_certificate, "TrustAnchorCertificate", 1, 5000)
            if _load_cluster(self, conn, cluster_id) is not None:
                raise CloudHsmClusterInUseException(f"{cluster_id} is already registered")
            # one token, one cluster: AWS lets a cluster back one key store only, and a token
            # registered twice would let two stores share it
            for (other,) in conn.execute("SELECT cluster_id FROM hsm_clusters"):
                known = _load_cluster(self, conn, str(other))
                if known is not None and _same_token(known, module, token_label):
                    raise CloudHsmClusterInUseException(
                        f"token {token_label!r} of {module} is already registered as {other}"
                    )
            body = {
                "CloudHsmClusterId": cluster_id,
                "Module": module,
                "TokenLabel": token_label,
                "TrustAnchorCertificate": trust_anchor_certificate,
                "CreationDate": now,
            }
            text = json.dumps(body, sort_keys=True, separators=(",", ":"))
            conn.execute(
                "INSERT INTO hsm_clusters(cluster_id, body, mac) VALUES (?,?,?)",
                (
                    cluster_id,
                    text,
                    _rows.record_mac(self.store.row_key, "hsm_clusters", cluster_id, text),
                ),
            )
            return {"CloudHsmClusterId": cluster_id}

        return self._run("RegisterHsmCluster", principal, context, params, op)

    def describe_hsm_clusters(
        self, *, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            self._admin_only(call, "describe HSM clusters")
            out = []
            for (cid,) in conn.execute("SELECT cluster_id FROM hsm_clusters ORDER BY cluster_id"):
                body = _load_cluster(self, conn, str(cid))
                if body is not None:
                    out.append({k: v for k, v in body.items() if v is not None})
            return {"Clusters": out}

        return self._run("DescribeHsmClusters", principal, context, {}, op)

    def deregister_hsm_cluster(
        self,
        *,
        cloud_hsm_cluster_id: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            self._admin_only(call, "deregister an HSM cluster")
            if _load_cluster(self, conn, cloud_hsm_cluster_id) is None:
                raise CloudHsmClusterNotFoundException(
                    f"no HSM cluster {cloud_hsm_cluster_id} is registered"
                )
            for (text,) in conn.execute("SELECT body FROM custom_key_stores"):
                if json.loads(str(text)).get("CloudHsmClusterId") == cloud_hsm_cluster_id:
                    raise CloudHsmClusterInUseException(
                        f"{cloud_hsm_cluster_id} backs a custom key store; delete it first"
                    )
            conn.execute("DELETE FROM hsm_clusters WHERE cluster_id=?", (cloud_hsm_cluster_id,))
            return {}

        return self._run(
            "DeregisterHsmCluster",
            principal,
            context,
            {"CloudHsmClusterId": cloud_hsm_cluster_id},
            op,
        )

    # -- the six AWS operations -----------------------------------------------------------

    def create_custom_key_store(
        self,
        *,
        custom_key_store_name: str,
        cloud_hsm_cluster_id: str | None = None,
        trust_anchor_certificate: str | None = None,
        key_store_password: str | None = None,
        custom_key_store_type: str | None = None,
        xks_proxy_uri_endpoint: str | None = None,
        xks_proxy_uri_path: str | None = None,
        xks_proxy_vpc_endpoint_service_name: str | None = None,
        xks_proxy_vpc_endpoint_service_owner: str | None = None,
        xks_proxy_authentication_credential: Mapping[str, str] | None = None,
        xks_proxy_connectivity: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        kind = custom_key_store_type or CLOUDHSM
        params: dict[str, Any] = {
            "CustomKeyStoreName": custom_key_store_name,
            "CustomKeyStoreType": kind,
        }

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            self._authorize_account(conn, call)
            account = call.account or self.account
            name = _text(custom_key_store_name, "CustomKeyStoreName", 1, 256)
            if kind not in (CLOUDHSM, EXTERNAL):
                raise ValidationException(
                    "CustomKeyStoreType must be AWS_CLOUDHSM or EXTERNAL_KEY_STORE"
                )
            self._unique_name(conn, account, name, None)
            count = sum(
                in_region(json.loads(body), self.region)
                for (body,) in conn.execute(
                    "SELECT body FROM custom_key_stores WHERE account=?", (account,)
                )
            )
            if count >= MAX_STORES:
                raise LimitExceededException(
                    f"an account can have at most {MAX_STORES} custom key stores in a Region"
                )
            store_id = _store_id()
            body: dict[str, Any] = {
                "CustomKeyStoreId": store_id,
                "CustomKeyStoreName": name,
                "CustomKeyStoreType": kind,
                "ConnectionState": DISCONNECTED,
                "CreationDate": now,
                "Region": self.region,  # (never answered: the store belongs to this Region)
            }
            row = _StoreRow(store_id, account, body, None)
            if kind == CLOUDHSM:
                _only_for(
                    "EXTERNAL_KEY_STORE",
                    XksProxyUriEndpoint=xks_proxy_uri_endpoint,
                    XksProxyUriPath=xks_proxy_uri_path,
                    XksProxyConnectivity=xks_proxy_connectivity,
                    XksProxyAuthenticationCredential=xks_proxy_authentication_credential,
                    XksProxyVpcEndpointServiceName=xks_proxy_vpc_endpoint_service_name,
                    XksProxyVpcEndpointServiceOwner=xks_proxy_vpc_endpoint_service_owner,
                )
                cluster_id, password, anchor = self._cluster_args(
                    conn,
                    call,
                    row,
                    cloud_hsm_cluster_id,
                    key_store_password,
                    trust_anchor_certificate,
                    required=True,
                )
                assert cluster_id is not None and password is not None
                self._cluster_free(conn, cluster_id, None)
                params["CloudHsmClusterId"] = cluster_id
                body["CloudHsmClusterId"] = cluster_id
                body["TrustAnchorCertificate"] = anchor
                row.secret = self.store.root.seal(password.encode(), _secret_aad(store_id))
            else:
                _only_for(
                    "AWS_CLOUDHSM",
                    CloudHsmClusterId=cloud_hsm_cluster_id,
                    KeyStorePassword=key_store_password,
                    TrustAnchorCertificate=trust_anchor_certificate,
                )
                proxy, secret_text = self._proxy_args(
                    xks_proxy_uri_endpoint,
                    xks_proxy_uri_path,
                    xks_proxy_connectivity,
                    xks_proxy_authentication_credential,
                    xks_proxy_vpc_endpoint_service_name,
                    required=True,
                )
                assert secret_text is not None
                self._proxy_free(conn, proxy, None, account)
                params.update(
                    XksProxyUriEndpoint=proxy["UriEndpoint"],
                    XksProxyUriPath=proxy["UriPath"],
                    XksProxyConnectivity=proxy["Connectivity"],
                    XksProxyAccessKeyId=proxy["AccessKeyId"],  # never the secret
                )
                body["XksProxyConfiguration"] = proxy
                self._check_proxy(call, row, proxy, secret_text)
                row.secret = self.store.root.seal(secret_text.encode(), _secret_aad(store_id))
            _save_store(self, conn, row, insert=True)
            params["CustomKeyStoreId"] = store_id
            return {"CustomKeyStoreId": store_id}

        try:
            return self._run("CreateCustomKeyStore", principal, context, params, op)
        finally:
            self._store_types = (frozenset(), float("-inf"))  # read again on the next call

    def describe_custom_key_stores(
        self,
        *,
        custom_key_store_id: str | None = None,
        custom_key_store_name: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            self._authorize_account(conn, call)
            account = call.account or self.account
            if custom_key_store_id is not None and custom_key_store_name is not None:
                raise ValidationException("give CustomKeyStoreId or CustomKeyStoreName, not both")
            n, after = _paging(call, limit, marker, 100, 1000)
            if custom_key_store_id is not None:
                row = _load_store(self, conn, custom_key_store_id, account)
                if row is None:
                    raise CustomKeyStoreNotFoundException(
                        f"no custom key store {custom_key_store_id} in account {account}"
                    )
                rows = [row]
            else:
                rows = []
                for sid, nm in conn.execute(
                    "SELECT store_id, name FROM custom_key_stores WHERE account=? "
                    "ORDER BY store_id",
                    (account,),
                ):
                    if custom_key_store_name is not None and nm != custom_key_store_name:
                        continue
                    loaded = _load_store(self, conn, str(sid))
                    if loaded is not None and in_region(loaded.body, self.region):
                        rows.append(loaded)
                if custom_key_store_name is not None and not rows:
                    raise CustomKeyStoreNotFoundException(
                        f"no custom key store named {custom_key_store_name!r} in account {account}"
                    )
            page, extra = _page(call, [r for r in rows if r.id > after], n, lambda r: r.id)
            return {"CustomKeyStores": [_entry(r) for r in page], **extra}

        return self._run("DescribeCustomKeyStores", principal, context, {}, op)

    def update_custom_key_store(
        self,
        *,
        custom_key_store_id: str,
        new_custom_key_store_name: str | None = None,
        key_store_password: str | None = None,
        cloud_hsm_cluster_id: str | None = None,
        xks_proxy_uri_endpoint: str | None = None,
        xks_proxy_uri_path: str | None = None,
        xks_proxy_vpc_endpoint_service_name: str | None = None,
        xks_proxy_vpc_endpoint_service_owner: str | None = None,
        xks_proxy_authentication_credential: Mapping[str, str] | None = None,
        xks_proxy_connectivity: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        params: dict[str, Any] = {"CustomKeyStoreId": custom_key_store_id}

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            row = self._own_store(conn, call, custom_key_store_id)
            changed = []
            if new_custom_key_store_name is not None:
                name = _text(new_custom_key_store_name, "NewCustomKeyStoreName", 1, 256)
                self._unique_name(conn, row.account, name, row.id)
                row.body["CustomKeyStoreName"] = name
                params["NewCustomKeyStoreName"] = name
                changed.append("name")
            if row.kind == CLOUDHSM:
                _only_for(
                    "EXTERNAL_KEY_STORE",
                    XksProxyUriEndpoint=xks_proxy_uri_endpoint,
                    XksProxyUriPath=xks_proxy_uri_path,
                    XksProxyConnectivity=xks_proxy_connectivity,
                    XksProxyAuthenticationCredential=xks_proxy_authentication_credential,
                    XksProxyVpcEndpointServiceName=xks_proxy_vpc_endpoint_service_name,
                    XksProxyVpcEndpointServiceOwner=xks_proxy_vpc_endpoint_service_owner,
                )
                if key_store_password is not None or cloud_hsm_cluster_id is not None:
                    if row.state != DISCONNECTED:
                        raise CustomKeyStoreInvalidStateException(
                            f"{row.id} is {row.state}: disconnect it before changing its "
                            "KeyStorePassword or CloudHsmClusterId"
                        )
                    cluster_id, password, _ = self._cluster_args(
                        conn,
                        call,
                        row,
                        cloud_hsm_cluster_id,
                        key_store_password,
                        None,
                        required=False,
                    )
                    if cluster_id is not None and cluster_id != row.body["CloudHsmClusterId"]:
                        self._cluster_free(conn, cluster_id, row.id)
                        # the new cluster is checked with the new password when one is given
                        self._cluster_related(
                            conn, call, row, cluster_id, password or _secret(self, row)
                        )
                        row.body["CloudHsmClusterId"] = cluster_id
                        params["CloudHsmClusterId"] = cluster_id
                    if password is not None:
                        row.secret = self.store.root.seal(password.encode(), _secret_aad(row.id))
                        changed.append("password")
            else:
                _only_for(
                    "AWS_CLOUDHSM",
                    CloudHsmClusterId=cloud_hsm_cluster_id,
                    KeyStorePassword=key_store_password,
                )
                old = dict(row.body["XksProxyConfiguration"])
                needs_disconnect = (
                    xks_proxy_uri_endpoint is not None
                    or xks_proxy_connectivity is not None
                    or xks_proxy_vpc_endpoint_service_name is not None
                )
                if needs_disconnect and row.state != DISCONNECTED:
                    raise CustomKeyStoreInvalidStateException(
                        f"{row.id} is {row.state}: disconnect it before changing its proxy "
                        "endpoint or connectivity"
                    )
                proxy, secret_text = self._proxy_args(
                    xks_proxy_uri_endpoint or old["UriEndpoint"],
                    xks_proxy_uri_path or old["UriPath"],
                    xks_proxy_connectivity or old["Connectivity"],
                    xks_proxy_authentication_credential,
                    xks_proxy_vpc_endpoint_service_name,
                    required=False,
                )
                if secret_text is None:
                    proxy["AccessKeyId"] = old["AccessKeyId"]
                if proxy != old or secret_text is not None:
                    self._proxy_free(conn, proxy, row.id, row.account)
                    self._check_proxy(call, row, proxy, secret_text or _secret(self, row))
                    row.body["XksProxyConfiguration"] = proxy
                    if secret_text is not None:
                        row.secret = self.store.root.seal(secret_text.encode(), _secret_aad(row.id))
                    params.update(
                        XksProxyUriEndpoint=proxy["UriEndpoint"],
                        XksProxyUriPath=proxy["UriPath"],
                        XksProxyAccessKeyId=proxy["AccessKeyId"],
                    )
            _save_store(self, conn, row)
            return {}

        return self._run("UpdateCustomKeyStore", principal, context, params, op)

    def delete_custom_key_store(
        self,
        *,
        custom_key_store_id: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            row = self._own_store(conn, call, custom_key_store_id)
            if row.state != DISCONNECTED:
                raise CustomKeyStoreInvalidStateException(
                    f"{row.id} is {row.state}: disconnect it before deleting it"
                )
            pattern = f'%"CustomKeyStoreId":"{row.id}"%'
            for region, kid in conn.execute(  # a deletion that is due is done first
                "SELECT region, key_id FROM keys WHERE meta LIKE ?", (pattern,)
            ).fetchall():
                key = self._load(conn, str(region), str(kid))
                if key is not None:
                    self._settle(conn, key, now)
            if self._store_keys(conn, row.id):
                raise CustomKeyStoreHasCMKsException(
                    f"{row.id} still holds KMS keys: schedule their deletion and wait for the "
                    "waiting period to end"
                )
            conn.execute("DELETE FROM custom_key_stores WHERE store_id=?", (row.id,))
            return {}

        try:
            return self._run(
                "DeleteCustomKeyStore",
                principal,
                context,
                {"CustomKeyStoreId": custom_key_store_id},
                op,
            )
        finally:
            self._store_types = (frozenset(), float("-inf"))  # read again on the next call

    def connect_custom_key_store(
        self,
        *,
        custom_key_store_id: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            row = self._own_store(conn, call, custom_key_store_id)
            if row.state in (DISCONNECTING, FAILED):
                raise CustomKeyStoreInvalidStateException(
                    f"{row.id} is {row.state}: disconnect it, correct the error, then connect it"
                )
            if row.state == CONNECTED:
                return {}
            code = self._try_connect(conn, call, row)
            row.body["ConnectionState"] = CONNECTED if code is None else FAILED
            row.body.pop("ConnectionErrorCode", None)
            if code is not None:
                row.body["ConnectionErrorCode"] = code
                call.params["ConnectionErrorCode"] = code
            _save_store(self, conn, row)
            if code is None:
                self._drain_token_deletions(conn, call, row)
            return {}

        return self._run(
            "ConnectCustomKeyStore",
            principal,
            context,
            {"CustomKeyStoreId": custom_key_store_id},
            op,
        )

    def disconnect_custom_key_store(
        self,
        *,
        custom_key_store_id: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            row = self._own_store(conn, call, custom_key_store_id)
            if row.state in (DISCONNECTED, DISCONNECTING):
                raise CustomKeyStoreInvalidStateException(f"{row.id} is already {row.state}")
            row.body["ConnectionState"] = DISCONNECTED
            row.body.pop("ConnectionErrorCode", None)
            _save_store(self, conn, row)
            return {}

        return self._run(
            "DisconnectCustomKeyStore",
            principal,
            context,
            {"CustomKeyStoreId": custom_key_store_id},
            op,
        )

    # -- keys in custom key stores (CreateKey) ---------------------------------------------

    def _custom_key_material(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        now: float,
        *,
        store_id: Any,
        origin: str,
        xks_key_id: Any,
        key_id: str,
        account: str,
    ) -> dict[str, Any]:
        """Check CreateKey's custom-key-store arguments and make the key's material there.

        Returns the key's metadata members (AWS's and internal). Called before the key row is
        written, in the same transaction."""
        if not isinstance(store_id, str) or not 1 <= len(store_id) <= 64:
            raise ValidationException("CustomKeyStoreId must be 1..64 characters")
        row = _load_store(self, conn, store_id, account)
        if row is None:
            raise CustomKeyStoreNotFoundException(
                f"no custom key store {store_id} in account {account}"
            )
        want = CLOUDHSM if row.kind == CLOUDHSM else EXTERNAL
        if origin != want:
            raise UnsupportedOperationException(
                f"a key in {row.kind} custom key store {row.id} must have Origin {want}"
            )
        if row.state != CONNECTED:
            raise CustomKeyStoreInvalidStateException(
                f"{row.id} is {row.state}: connect it before creating keys in it"
            )
        meta: dict[str, Any] = {"CustomKeyStoreId": row.id}
        started = time.perf_counter()
        if row.kind == CLOUDHSM:
            if xks_key_id is not None:
                raise ValidationException("XksKeyId is only for EXTERNAL_KEY_STORE keys")
            label = token_label(key_id)
            try:
                handle = _token_for(self, conn, row).create_aes_key(label)
            except Exception as e:
                _timed(call, row, "CreateKey", type(e).__name__, started)
                from .errors import CloudHsmClusterInvalidConfigurationException

                raise CloudHsmClusterInvalidConfigurationException(
                    f"the key could not be made in the HSM of {row.id}: {type(e).__name__}"
                ) from None
            _timed(call, row, "CreateKey", "ok", started)
            meta.update(
                CloudHsmClusterId=row.body["CloudHsmClusterId"],
                x_hsm_label=handle.label,
                x_hsm_handle=int(handle.handle),
                x_hsm_id=bytes(handle.key_id).hex(),
            )
            return meta
        if not isinstance(xks_key_id, str) or not _XKS_KEY_ID_RE.match(xks_key_id):
            raise ValidationException(
                "XksKeyId is required for EXTERNAL_KEY_STORE keys (1..128 of [a-zA-Z0-9-_.])"
            )
        if xks_key_id.strip(".") == "":
            # the model's pattern admits it, but no proxy can be asked for it: the key id is
            # a path segment of the XKS URIs, and "." or ".." is normalised away
            raise XksKeyNotFoundException(
                f"the external key store proxy can have no key {xks_key_id!r} (an XKS key id "
                "of periods alone names no key in the proxy's URI paths)"
            )
        for other in self._store_keys(conn, row.id):
            if other.get("XksKeyConfiguration", {}).get("Id") == xks_key_id:
                raise XksKeyAlreadyInUseException(
                    f"external key {xks_key_id} already backs KMS key {other.get('KeyId')}"
                )
        from envelope.xks import errors as xerr

        try:
            info = _xks_for(self, row).key_metadata(
                xks_key_id, _xks_metadata(self, call, self.arn(key_id, account=account))
            )
        except xerr.XksProxyError as e:
            _timed(call, row, "GetKeyMetadata", e.error_name, started)
            if e.error_name == "KeyNotFoundException":
                raise XksKeyNotFoundException(
                    f"the external key store proxy has no key {xks_key_id}"
                ) from None
            raise _keystore_links.xks_create_key_error(e) from None
        except Exception as e:
            _timed(call, row, "GetKeyMetadata", _outcome(e), started)
            raise _keystore_links.xks_create_key_error(e) from None
        _timed(call, row, "GetKeyMetadata", "ok", started)
        usage = set(info.key_usage)
        if (
            info.key_spec != "AES_256"
            or not {"ENCRYPT", "DECRYPT"} <= usage
            or info.key_status != "ENABLED"
        ):
            raise XksKeyInvalidConfigurationException(
                f"external key {xks_key_id} is {info.key_spec} {sorted(usage)} "
                f"{info.key_status}: it must be an ENABLED AES_256 key that can ENCRYPT and "
                "DECRYPT"
            )
        meta["XksKeyConfiguration"] = {"Id": xks_key_id}
        return meta

    # -- helpers --------------------------------------------------------------------------

    def _own_store(self, conn: sqlite3.Connection, call: _Call, store_id: Any) -> _StoreRow:
        self._authorize_account(conn, call)
        account = call.account or self.account
        _text(store_id, "CustomKeyStoreId", 1, 64)
        row = _load_store(self, conn, store_id, account)
        if row is None:
            raise CustomKeyStoreNotFoundException(
                f"no custom key store {store_id} in account {account}"
            )
        return row

    def _store_keys(self, conn: sqlite3.Connection, store_id: str) -> list[dict[str, Any]]:
        """The metadata of every KMS key (any Region, any state) in a custom key store."""
        out = []
        for (text,) in conn.execute(
            "SELECT meta FROM keys WHERE meta LIKE ?", (f'%"CustomKeyStoreId":"{store_id}"%',)
        ):
            meta: dict[str, Any] = json.loads(str(text))
            if meta.get("CustomKeyStoreId") == store_id:
                out.append(meta)
        return out

    def _unique_name(
        self, conn: sqlite3.Connection, account: str, name: str, store_id: str | None
    ) -> None:
        row = conn.execute(
            "SELECT store_id FROM custom_key_stores WHERE account=? AND name=?", (account, name)
        ).fetchone()
        if row is not None and str(row[0]) != store_id:
            raise CustomKeyStoreNameInUseException(
                f"the custom key store name {name!r} is in use in account {account}"
            )

    def _cluster_args(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        row: _StoreRow,
        cluster_id: Any,
        password: Any,
        anchor: Any,
        *,
        required: bool,
    ) -> tuple[str | None, str | None, str | None]:
        if required and (cluster_id is None or password is None or anchor is None):
            raise ValidationException(
                "an AWS_CLOUDHSM key store needs CloudHsmClusterId, KeyStorePassword and "
                "TrustAnchorCertificate"
            )
        if password is not None:
            _text(password, "KeyStorePassword", 7, 32)
        if anchor is not None:
            _text(anchor, "TrustAnchorCertificate", 1, 5000)
        if cluster_id is None:
            return None, password, anchor
        if not isinstance(cluster_id, str) or not _CLUSTER_RE.match(cluster_id):
            raise ValidationException("CloudHsmClusterId must match cluster-[2-7a-zA-Z]{11,16}")
        cluster = _load_cluster(self, conn, cluster_id)
        if cluster is None:
            raise CloudHsmClusterNotFoundException(
                f"no HSM cluster {cluster_id} is registered with this KMS "
                "(envelope keystores register-cluster)"
            )
        expected = cluster.get("TrustAnchorCertificate")
        if anchor is not None and expected is not None and anchor.strip() != expected.strip():
            raise IncorrectTrustAnchorException(
                f"the trust anchor certificate is not the one registered for {cluster_id}"
            )
        started = time.perf_counter()
        try:
            from envelope.pkcs11 import probe_token

            probe_token(str(cluster["Module"]), str(cluster["TokenLabel"]))
        except Exception as e:
            _timed(call, row, "Probe", _keystore_links.hsm_connection_code(e), started)
            raise CloudHsmClusterNotActiveException(
                f"the token of {cluster_id} cannot be reached ({type(e).__name__})"
            ) from None
        _timed(call, row, "Probe", "ok", started)
        return cluster_id, password, anchor

    def _cluster_free(
        self, conn: sqlite3.Connection, cluster_id: str, store_id: str | None
    ) -> None:
        for sid, text in conn.execute("SELECT store_id, body FROM custom_key_stores"):
            if (
                str(sid) != store_id
                and json.loads(str(text)).get("CloudHsmClusterId") == cluster_id
            ):
                raise CloudHsmClusterInUseException(
                    f"{cluster_id} already backs custom key store {sid}"
                )

    def _cluster_related(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        row: _StoreRow,
        cluster_id: str,
        password: str,
    ) -> None:
        """A store moves only to a cluster whose token holds every one of its keys (AWS: a
        cluster that shares the original's backup history), opened with `password`."""
        keys = [
            (str(m["x_hsm_label"]), _keystore_links.hsm_key_id(m))
            for m in self._store_keys(conn, row.id)
        ]
        if not keys:
            return
        cluster = _load_cluster(self, conn, cluster_id)
        assert cluster is not None
        started = time.perf_counter()
        try:
            token = _keystore_links.open_token(
                str(cluster["Module"]), str(cluster["TokenLabel"]), password
            )
            # the very keys (label and CKA_ID, still protected), not just keys so labelled
            missing = [label for label, key_id in keys if not token.has_key(label, key_id)]
            _timed(call, row, "FindKeys", "ok", started)
        except Exception as e:
            _timed(call, row, "FindKeys", _keystore_links.hsm_connection_code(e), started)
            raise CloudHsmClusterNotRelatedException(
                f"{cluster_id} cannot be checked for this store's keys ({type(e).__name__})"
            ) from None
        if missing:
            raise CloudHsmClusterNotRelatedException(
                f"{cluster_id} does not hold {len(missing)} of the keys of {row.id}: it is not "
                "a copy of the original token"
            )

    @staticmethod
    def _proxy_args(
        endpoint: Any,
        path: Any,
        connectivity: Any,
        credential: Mapping[str, str] | None,
        vpc_service: Any,
        *,
        required: bool,
    ) -> tuple[dict[str, Any], str | None]:
        if required and connectivity is None:
            # CreateCustomKeyStore: "XksProxyConnectivity ... Required for an external key
            # store" (the API reference), so it has no default
            raise ValidationException(
                "an EXTERNAL_KEY_STORE needs XksProxyConnectivity (PUBLIC_ENDPOINT here)"
            )
        if connectivity not in ("PUBLIC_ENDPOINT", "VPC_ENDPOINT_SERVICE"):
            raise ValidationException(
                "XksProxyConnectivity must be PUBLIC_ENDPOINT or VPC_ENDPOINT_SERVICE"
            )
        # "specify a null or empty string for the XksProxyVpcEndpointServiceName" (the API
        # reference, on changing to PUBLIC_ENDPOINT): an empty name is no VPC endpoint service
        if connectivity == "VPC_ENDPOINT_SERVICE" or vpc_service not in (None, ""):
            raise XksProxyInvalidConfigurationException(
                "VPC endpoint service connectivity needs Amazon VPC; this KMS reaches external "
                "key store proxies at public (HTTPS) endpoints only"
            )
        if required and (endpoint is None or path is None or credential is None):
            raise ValidationException(
                "an EXTERNAL_KEY_STORE needs XksProxyUriEndpoint, XksProxyUriPath and "
                "XksProxyAuthenticationCredential"
            )
        if (
            not isinstance(endpoint, str)
            or not _ENDPOINT_RE.match(endpoint)
            or not (10 <= len(endpoint) <= 128)
            or not reachable_form(endpoint)
        ):
            raise ValidationException(
                "XksProxyUriEndpoint must be https://host (a port may follow here): a host "
                "name of labels of 1-63 characters and a port of 1-65535"
            )
        if not isinstance(path, str) or not _PATH_RE.match(path) or not 10 <= len(path) <= 128:
            raise ValidationException(
                "XksProxyUriPath must be /kms/xks/v<n> or /<prefix>/kms/xks/v<n>"
            )
        if not path.endswith("/kms/xks/v1") or "//" in path:
            # the model's pattern takes any version and empty segments; the developer guide:
            # "must end with /kms/xks/v1" (the only version of the proxy API), and a path with
            # an empty segment names no prefix a proxy serves (it was a 500 here; review)
            raise ValidationException(
                "XksProxyUriPath must end with /kms/xks/v1, the XKS proxy API's only version, "
                "with no empty segment (//)"
            )
        proxy: dict[str, Any] = {
            "Connectivity": connectivity,
            "UriEndpoint": endpoint,
            "UriPath": path,
        }
        secret = None
        if credential is not None:
            if not isinstance(credential, Mapping):
                raise ValidationException("XksProxyAuthenticationCredential must be a structure")
            akid = credential.get("AccessKeyId")
            raw = credential.get("RawSecretAccessKey")
            if not isinstance(akid, str) or not _XKS_ACCESS_KEY_RE.match(akid):
                raise ValidationException(
                    "XksProxyAuthenticationCredential.AccessKeyId must be 20..30 of [A-Z2-7]"
                )
            if not isinstance(raw, str) or not _XKS_SECRET_RE.match(raw):
                raise ValidationException(
                    "XksProxyAuthenticationCredential.RawSecretAccessKey must be 43..64 of "
                    "[a-zA-Z0-9/+=]"
                )
            proxy["AccessKeyId"] = akid
            secret = raw
        return proxy, secret

    def _proxy_free(
        self,
        conn: sqlite3.Connection,
        proxy: Mapping[str, Any],
        store_id: str | None,
        account: str,
    ) -> None:
        """XksProxyUriInUseException if another store of `account` in this Region has this
        proxy ("unique in the AWS account and Region", the API reference): another account's
        store is not looked at (it was, and the refusal named its store id; review)."""
        rows = conn.execute(
            "SELECT store_id, body FROM custom_key_stores WHERE account=?", (account,)
        )
        for sid, text in rows:
            body = json.loads(str(text))
            other = body.get("XksProxyConfiguration")
            if str(sid) == store_id or other is None or not in_region(body, self.region):
                continue
            if (other["UriEndpoint"], other["UriPath"]) == (proxy["UriEndpoint"], proxy["UriPath"]):
                raise XksProxyUriInUseException(
                    f"{proxy['UriEndpoint']}{proxy['UriPath']} is the proxy of custom key store "
                    f"{sid}"
                )

    def _check_proxy(
        self, call: _Call, row: _StoreRow, proxy: Mapping[str, Any], secret: str
    ) -> None:
        """GetHealthStatus through the proxy, as AWS does when a store is created or its proxy
        settings change: the settings must work before they are kept. The round trip is in
        the call's audit record (``keystore_calls``), whatever its outcome."""
        client = _keystore_links.xks_client(
            str(proxy["UriEndpoint"]),
            str(proxy["UriPath"]),
            str(proxy["AccessKeyId"]),
            secret,
            self.region,
        )
        where = f"{proxy['UriEndpoint']}{proxy['UriPath']}"
        started = time.perf_counter()
        try:
            health = client.health(_xks_metadata(self, call, None))
        except Exception as e:
            _timed(call, row, "GetHealthStatus", _keystore_links.xks_connection_code(e), started)
            raise _health_refusal(e, where) from None
        if _all_unavailable(health):  # audited as what it decides, not as "ok"
            _timed(call, row, "GetHealthStatus", "XKS_PROXY_NOT_REACHABLE", started)
            raise XksProxyUriUnreachableException(
                f"the external key store proxy at {where} reports every external key manager "
                "instance UNAVAILABLE"
            )
        _timed(call, row, "GetHealthStatus", "ok", started)

    def _try_connect(self, conn: sqlite3.Connection, call: _Call, row: _StoreRow) -> str | None:
        """Reach the store's token or proxy; None when connected, else a ConnectionErrorCode."""
        started = time.perf_counter()
        if row.kind == CLOUDHSM:
            cluster = _load_cluster(self, conn, str(row.body["CloudHsmClusterId"]))
            if cluster is None:
                return "CLUSTER_NOT_FOUND"
            try:
                token = _keystore_links.open_token(
                    str(cluster["Module"]), str(cluster["TokenLabel"]), _secret(self, row)
                )
                token.check()
            except Exception as e:
                code = _keystore_links.hsm_connection_code(e)
                _timed(call, row, "Connect", code, started)
                return code
            _timed(call, row, "Connect", "ok", started)
            return None
        try:
            health = _xks_for(self, row).health(_xks_metadata(self, call, None))
        except Exception as e:
            code = _keystore_links.xks_connection_code(e)
            _timed(call, row, "GetHealthStatus", code, started)
            return code
        if _all_unavailable(health):  # botocore: the proxy cannot serve: not reachable
            _timed(call, row, "GetHealthStatus", "XKS_PROXY_NOT_REACHABLE", started)
            return "XKS_PROXY_NOT_REACHABLE"
        _timed(call, row, "GetHealthStatus", "ok", started)
        return None

    def _drain_token_deletions(
        self, conn: sqlite3.Connection, call: _Call | None, row: _StoreRow
    ) -> None:
        """Destroy the token objects of KMS keys deleted while this store could not be reached
        (or since the last drain). Best effort: a failure leaves the row for the next time."""
        if row.kind != CLOUDHSM:
            conn.execute("DELETE FROM token_deletions WHERE store_id=?", (row.id,))
            return
        labels = [
            str(r[0])
            for r in conn.execute("SELECT label FROM token_deletions WHERE store_id=?", (row.id,))
        ]
        if not labels:
            return
        try:
            token = _token_for(self, conn, row)
        except Exception:
            return
        from envelope.pkcs11 import KeyNotInToken

        for entry in labels:
            label, key_id = _keystore_links.parse_deletion_entry(entry)
            started = time.perf_counter()
            try:
                token.destroy_key(label, key_id)
                outcome = "ok"
            except KeyNotInToken:
                outcome = "ok"  # already gone
            except Exception as e:
                outcome = type(e).__name__
            if call is not None:
                _timed(call, row, "DestroyKey", outcome, started)
                call.keystore_calls[-1]["Label"] = label
            if outcome == "ok":
                conn.execute(
                    "DELETE FROM token_deletions WHERE store_id=? AND label=?", (row.id, entry)
                )

    def _settle_token_deletions(self) -> None:
        """Destroy the pending token objects of connected stores (after a commit), in an
        audit record of its own (``DestroyHsmKeys``, by ``AWS Internal`` as CloudTrail names
        KMS's background work): each DestroyKey call, its outcome and the labels destroyed."""
        call = _Call(DESTROY_OPERATION, INTERNAL_PRINCIPAL, RequestContext(), {})
        with self.store.write() as conn:
            for (sid,) in conn.execute("SELECT DISTINCT store_id FROM token_deletions").fetchall():
                row = _load_store(self, conn, str(sid))
                if row is None:
                    conn.execute("DELETE FROM token_deletions WHERE store_id=?", (str(sid),))
                elif row.state == CONNECTED:
                    self._drain_token_deletions(conn, call, row)
            if call.keystore_calls:
                self._audit_head = None  # (read the chain's head from the store)
                self._record(conn, call, self.now(), None)
        if call.keystore_calls:
            self._audit_head = call.head
            if self.store.sealer.dirty:
                self.store.publish_digests(strict=False)


#: The audit record of destroying deleted keys' token objects after the commit that purged
#: them, and who it is by: KMS itself, as CloudTrail shows background work.
DESTROY_OPERATION = "DestroyHsmKeys"
INTERNAL_PRINCIPAL = "AWS Internal"


def _same_token(cluster: Mapping[str, Any], module: str, token_label: str) -> bool:
    """Does a registered cluster name this token (the same module file, the same label)?"""
    if cluster.get("TokenLabel") != token_label:
        return False
    return os.path.realpath(str(cluster.get("Module"))) == os.path.realpath(module)


def _health_refusal(e: Exception, where: str) -> KmsServiceError:
    """The KMS error for a failed GetHealthStatus at CreateCustomKeyStore or
    UpdateCustomKeyStore, as botocore's model documents those operations' exceptions."""
    from envelope.xks import errors as xerr

    if isinstance(e, xerr.XksProxyError):
        if e.error_name == "AuthenticationFailedException":
            return XksProxyIncorrectAuthenticationCredentialException(
                "the external key store proxy rejected the authentication credential"
            )
        if e.error_name == "InvalidUriPathException":
            return XksProxyInvalidConfigurationException(
                f"the external key store proxy has no XKS API at {where} (XksProxyUriPath)"
            )
        if e.error_name in ("ThrottlingException", "DependencyTimeoutException"):
            return XksProxyUriUnreachableException(
                f"the external key store proxy at {where} is not available now: it "
                f"answered GetHealthStatus with {e.error_name}"
            )
        return XksProxyInvalidResponseException(
            f"the external key store proxy answered GetHealthStatus with {e.error_name}"
        )
    if isinstance(e, (xerr.XksUnreachable, xerr.XksTimeout, xerr.XksTlsError)):
        return XksProxyUriUnreachableException(
            f"the external key store proxy at {where} did not answer GetHealthStatus: "
            f"{_keystore_links.xks_error(e, 'GetHealthStatus').message}"
        )
    return XksProxyInvalidResponseException(f"GetHealthStatus failed: {type(e).__name__}")


def _all_unavailable(health: object) -> bool:
    """Whether a GetHealthStatus answer says every external key manager is UNAVAILABLE."""
    fleet = health.get("ekmFleetDetails") if isinstance(health, Mapping) else None
    return (
        isinstance(fleet, list)
        and bool(fleet)
        and all(isinstance(f, Mapping) and f.get("healthStatus") == "UNAVAILABLE" for f in fleet)
    )
