"""Key agreement: DeriveSharedSecret with KEY_AGREEMENT keys (ECDH on the NIST curves).

A KEY_AGREEMENT key is an elliptic-curve key pair whose private key never leaves the KMS: the
caller sends a peer's public key and gets back the raw ECDH shared secret, which the peer derives
on its own from its private key and this key's public key (GetPublicKey). The secret is the
response only: it is never stored, cached or audited (the audit record holds the algorithm).

`Recipient` (a Nitro Enclaves attestation document) is not taken: there are no enclaves here to
attest, so the wire layer refuses a request that carries one (`UNSERVED_MEMBERS` in
`envelope/server/wire.py`) rather than return the secret in plaintext.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from . import _specs
from ._core import RequestContext, Response, ServiceCore, _bytes, _Call, _grant_tokens, wrong_usage
from ._states import CRYPTO
from .errors import ValidationException


class KeyAgreementOps(ServiceCore):
    """DeriveSharedSecret (KeyAgreementAlgorithms are in every key's metadata through
    `_Key.algorithm_members`)."""

    def derive_shared_secret(
        self,
        *,
        key_id: str,
        key_agreement_algorithm: str,
        public_key: bytes,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            if key_agreement_algorithm not in _specs.KEY_AGREEMENT_ALGORITHMS:
                raise ValidationException(
                    "KeyAgreementAlgorithm must be one of "
                    + ", ".join(_specs.KEY_AGREEMENT_ALGORITHMS)
                )
            der = _bytes(public_key, "PublicKey", 1, _specs.MAX_PUBLIC_KEY)
            peer = _specs.load_peer_public_key(der)
            call.values["kms:keyagreementalgorithm"] = key_agreement_algorithm
            key = self._key(conn, call, key_id, CRYPTO, now)
            if key.usage != _specs.KEY_AGREEMENT:
                raise wrong_usage(key, "DeriveSharedSecret")
            _, mat = self._current(conn, call, key)
            secret = _specs.derive_shared_secret(
                mat.private(), key.algorithms(), key_agreement_algorithm, peer
            )
            return {
                "KeyId": key.arn,
                "SharedSecret": secret,
                "KeyAgreementAlgorithm": key_agreement_algorithm,
                "KeyOrigin": key.meta["Origin"],
            }

        return self._run(
            "DeriveSharedSecret",
            principal,
            context,
            {"KeyAgreementAlgorithm": key_agreement_algorithm},
            op,
            dry_run=dry_run,
        )
