"""Key encapsulation: Encapsulate and Decapsulate with ML-KEM keys (FIPS 203).

An ENCAPSULATE_DECAPSULATE key is an ML-KEM key pair whose private key never leaves the KMS.
Encapsulate makes a fresh 32-byte shared secret and its ciphertext under the key's public key
(anyone with GetPublicKey's answer can do the same offline); Decapsulate recovers the secret
from the ciphertext with the private key. As FIPS 203 (and AWS) specify, Decapsulate does not
say whether a ciphertext is genuine: any ciphertext of the right length gives 32 bytes
(implicit rejection), so the parties confirm they hold the same secret before using it. The
secret is the response only: never stored, cached or audited (the record holds the algorithm).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from . import _specs
from ._core import (
    RequestContext,
    Response,
    ServiceCore,
    _bytes,
    _Call,
    _grant_tokens,
    _Key,
    _Material,
    wrong_usage,
)
from ._states import CRYPTO
from .errors import ValidationException


def _algorithm(name: str) -> str:
    if name not in (_specs.ML_KEM,):
        raise ValidationException(f"EncapsulationAlgorithm must be {_specs.ML_KEM}")
    return name


class KemOps(ServiceCore):
    """Encapsulate and Decapsulate (EncapsulationAlgorithms are in the key's metadata through
    `_Key.algorithm_members`)."""

    def _kem_key(
        self, conn: sqlite3.Connection, call: _Call, key_id: str, now: float
    ) -> tuple[_Key, _Material]:
        """The ML-KEM key named (usable, its usage checked) and its current material."""
        key = self._key(conn, call, key_id, CRYPTO, now)
        if key.usage != _specs.ENCAPSULATE_DECAPSULATE:
            raise wrong_usage(key, call.op)
        return key, self._current(conn, call, key)[1]

    def encapsulate(
        self,
        *,
        key_id: str,
        encapsulation_algorithm: str,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            algorithm = _algorithm(encapsulation_algorithm)
            key, mat = self._kem_key(conn, call, key_id, now)
            secret, ciphertext = _specs.encapsulate(
                mat.private().public_key(), key.algorithms(), algorithm
            )
            return {
                "KeyId": key.arn,
                "SharedSecret": secret,
                "SharedSecretCiphertextBlob": ciphertext,
                "EncapsulationAlgorithm": algorithm,
            }

        return self._run(
            "Encapsulate",
            principal,
            context,
            {"EncapsulationAlgorithm": encapsulation_algorithm},
            op,
            dry_run=dry_run,
        )

    def decapsulate(
        self,
        *,
        key_id: str,
        shared_secret_ciphertext_blob: bytes,
        encapsulation_algorithm: str,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            algorithm = _algorithm(encapsulation_algorithm)
            blob = _bytes(shared_secret_ciphertext_blob, "SharedSecretCiphertextBlob", 1, 6144)
            key, mat = self._kem_key(conn, call, key_id, now)
            secret = _specs.decapsulate(
                mat.private(), key.algorithms(), algorithm, blob
            )
            return {"KeyId": key.arn, "SharedSecret": secret, "EncapsulationAlgorithm": algorithm}

        return self._run(
            "Decapsulate",
            principal,
            context,
            {"EncapsulationAlgorithm": encapsulation_algorithm},
            op,
            dry_run=dry_run,
        )
