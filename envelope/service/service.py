"""`KeyService`: the embedded KMS, one method per AWS KMS operation.

Methods are the AWS operation names in snake_case, take the AWS request members as keyword
arguments (``KeyId`` becomes ``key_id``) and return dicts shaped like the AWS responses (binary
members as `bytes`, timestamps as epoch seconds), so an HTTP layer is a thin translation.

Every call is one store transaction: read the key, apply what is due (the end of a deletion
window, an automatic rotation, expired imported material), do the operation, append the audit
record, commit. A refused call rolls back and appends its audit record in a second transaction,
so every call, accepted or refused, leaves exactly one record, and an acknowledged call's record
is committed before the method returns.

Hot path: the key's row is one primary-key read; its parsed metadata is cached under a random
generation number that changes on every write, and unsealed backing keys are cached per
(key id, version), which never changes meaning (ids are random and versions are append-only), so
a GenerateDataKey is one small write transaction plus an AES-GCM call.
"""

from __future__ import annotations

from ._agreement import KeyAgreementOps
from ._aliases import AliasTagOps
from ._core import DEFAULT_ACCOUNT, DEFAULT_REGION, RequestContext
from ._credentials import CredentialOps
from ._crypto import CryptoOps
from ._grants import GrantOps
from ._iam import IamOps
from ._imports import ImportOps
from ._kem import KemOps
from ._lifecycle import LifecycleOps
from ._multiregion import MultiRegionOps
from ._policies import KeyPolicyOps
from ._usage import KeyUsageOps

__all__ = ("DEFAULT_ACCOUNT", "DEFAULT_REGION", "KeyService", "RequestContext")


class KeyService(
    LifecycleOps,
    AliasTagOps,
    CryptoOps,
    KeyAgreementOps,
    KemOps,
    KeyUsageOps,
    ImportOps,
    MultiRegionOps,
    KeyPolicyOps,
    GrantOps,
    CredentialOps,
    IamOps,
):
    """The embedded KMS for one Region of a store (other Regions are other namespaces).

    Thread-safe: calls serialise on the store's lock (and across processes on SQLite's).
    `clock` returns the current time (epoch seconds or an aware datetime) so tests can move it.

    Operations are grouped in mixins by area (`_lifecycle`, `_aliases`, `_crypto`, `_imports`,
    `_multiregion`, `_policies`, `_grants`, `_iam`) over the shared machinery of
    `_core.ServiceCore`. Every operation is authorized (`_core.ServiceCore._authorize_key` /
    `_authorize_account`, deciding with `access.authorize`) before it changes anything.
    """

    def state_paths(self) -> tuple[str, ...]:
        """The files the store keeps its state in (`Store.state_paths`)."""
        return self.store.state_paths()

    def store_regions(self) -> frozenset[str]:
        """This service's Region and every Region the store holds keys in (a server answers
        for these besides AWS's own)."""
        with self.store.read() as conn:
            rows = conn.execute("SELECT DISTINCT region FROM keys").fetchall()
        return frozenset({self.region, *(str(r) for (r,) in rows)})

    def for_region(self, region: str) -> KeyService:
        """A service for another Region of the same store (same clock and account).

        It shares this service's store, so it is usable while this service is open.
        """
        return KeyService(
            self.store,
            clock=self._clock,
            region=region,
            account=self.account,
            quota=self.quota,
            principal=self.default_principal,
        )
