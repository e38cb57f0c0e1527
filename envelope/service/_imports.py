"""Imported key material: GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial."""

from __future__ import annotations

import hmac
import secrets
import sqlite3
from datetime import datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import _specs
from ._core import (
    _WRAPPING_ALGORITHMS,
    _WRAPPING_KEY_SPECS,
    IMPORT_TOKEN_TTL,
    RequestContext,
    Response,
    ServiceCore,
    _bytes,
    _Call,
    _Key,
    key_material_id,
)
from ._states import (
    ENABLED,
    MANAGE,
    PENDING_IMPORT,
)
from .errors import (
    ExpiredImportTokenException,
    IncorrectKeyMaterialException,
    InvalidImportTokenException,
    UnsupportedOperationException,
    ValidationException,
)


class ImportOps(ServiceCore):
    """GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial."""

    # -- imported key material ------------------------------------------------------------

    @staticmethod
    def _external(key: _Key, opname: str) -> None:
        if key.meta["Origin"] != "EXTERNAL":
            raise UnsupportedOperationException(  # AWS's words
                f"{key.arn} origin is {key.meta['Origin']} which is not valid for this operation."
            )

    def get_parameters_for_import(
        self,
        *,
        key_id: str,
        wrapping_algorithm: str,
        wrapping_key_spec: str,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            if wrapping_algorithm not in _WRAPPING_ALGORITHMS:
                raise ValidationException(
                    f"WrappingAlgorithm must be one of {', '.join(_WRAPPING_ALGORITHMS)}"
                )
            if wrapping_key_spec not in _WRAPPING_KEY_SPECS:
                raise ValidationException("WrappingKeySpec must be RSA_2048, RSA_3072 or RSA_4096")
            key = self._key(conn, call, key_id, MANAGE, now)
            self._external(key, "GetParametersForImport")
            private = rsa.generate_private_key(
                public_exponent=65537, key_size=_WRAPPING_KEY_SPECS[wrapping_key_spec]
            )
            der = private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            token = secrets.token_bytes(32)
            tid = token.hex()
            expires = now + IMPORT_TOKEN_TTL
            conn.execute(
                "INSERT INTO import_tokens(token, region, key_id, expires, algorithm, sealed) "
                "VALUES (?,?,?,?,?,?)",
                (
                    tid,
                    self.region,
                    key.id,
                    expires,
                    wrapping_algorithm,
                    self.store.root.seal(der, f"import-token|{tid}".encode()),
                ),
            )
            return {
                "KeyId": key.arn,
                "ImportToken": token,
                "PublicKey": _specs.public_der(private),
                "ParametersValidTo": expires,
            }

        return self._run(
            "GetParametersForImport",
            principal,
            context,
            {"WrappingAlgorithm": wrapping_algorithm, "WrappingKeySpec": wrapping_key_spec},
            op,
        )

    def import_key_material(
        self,
        *,
        key_id: str,
        import_token: bytes,
        encrypted_key_material: bytes,
        valid_to: float | datetime | None = None,
        expiration_model: str | None = None,
        import_type: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """ImportKeyMaterial. `import_type` as AWS: NEW_KEY_MATERIAL for a key's first material,
        EXISTING_KEY_MATERIAL to import it again (after DeleteImportedKeyMaterial or expiry);
        new material for a key that already has some (rotation of imported material) is not
        supported: a key here holds one imported material."""
        model = expiration_model or "KEY_MATERIAL_EXPIRES"  # AWS's default

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            token = _bytes(import_token, "ImportToken", 1, 6144)
            wrapped = _bytes(encrypted_key_material, "EncryptedKeyMaterial", 1, 6144)
            if model not in ("KEY_MATERIAL_EXPIRES", "KEY_MATERIAL_DOES_NOT_EXPIRE"):
                raise ValidationException(
                    "ExpirationModel must be KEY_MATERIAL_EXPIRES or KEY_MATERIAL_DOES_NOT_EXPIRE"
                )
            vt = valid_to.timestamp() if isinstance(valid_to, datetime) else valid_to
            if model == "KEY_MATERIAL_EXPIRES" and vt is None:  # AWS's words
                raise ValidationException(
                    "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES"
                )
            if model == "KEY_MATERIAL_EXPIRES" and vt is not None and vt <= now:
                raise ValidationException("ValidTo must be a future time with KEY_MATERIAL_EXPIRES")
            if model == "KEY_MATERIAL_DOES_NOT_EXPIRE" and vt is not None:
                raise ValidationException(
                    "ValidTo is not allowed with KEY_MATERIAL_DOES_NOT_EXPIRE"
                )
            key = self._key(conn, call, key_id, MANAGE, now)
            self._external(key, "ImportKeyMaterial")
            # a multi-Region key's material is one for all its Regions
            known = [k.meta.get("x_fp") for k in (key, *self._other_regions(conn, key))]
            had_material = any(x is not None for x in known)
            if import_type not in (None, "NEW_KEY_MATERIAL", "EXISTING_KEY_MATERIAL"):
                raise ValidationException(
                    "ImportType must be NEW_KEY_MATERIAL or EXISTING_KEY_MATERIAL"
                )
            if import_type == "NEW_KEY_MATERIAL" and had_material:
                raise UnsupportedOperationException(
                    f"{key.arn} already has key material: importing new key material to rotate "
                    "to is not supported here (a key holds one imported key material)"
                )
            if import_type == "EXISTING_KEY_MATERIAL" and not had_material:
                raise ValidationException(
                    f"{key.arn} has no key material yet: import it with ImportType "
                    "NEW_KEY_MATERIAL"
                )
            row = conn.execute(
                "SELECT region, key_id, expires, algorithm, sealed FROM import_tokens "
                "WHERE token=?",
                (token.hex(),),
            ).fetchone()
            if row is None or row[0] != self.region or row[1] != key.id:
                raise InvalidImportTokenException("the import token is not valid for this key")
            if float(row[2]) <= now:
                raise ExpiredImportTokenException("the import token has expired")
            private = serialization.load_der_private_key(
                self.store.root.unseal(bytes(row[4]), f"import-token|{token.hex()}".encode()),
                password=None,
            )
            assert isinstance(private, rsa.RSAPrivateKey)
            raw = _specs.unwrap_import(private, str(row[3]), wrapped)
            _specs.check_imported_material(key.spec, raw)
            fp = self._fingerprint(conn, key.id, raw)
            # A multi-Region key's replicas must all hold the same material: whichever Region
            # imported first fixes it for all of them.
            if any(x is not None and not hmac.compare_digest(x, fp) for x in known):
                raise IncorrectKeyMaterialException(
                    "this key was created with different key material; only that material can "
                    "be imported again"
                )
            self._put_material(conn, call, key.id, 1, raw, now, "IMPORT")
            # The same material under the same (id, version): a cached copy stays valid.
            m = key.meta
            m["x_fp"] = fp
            m["x_version"] = 1
            if m["KeyState"] == PENDING_IMPORT:
                m["KeyState"] = ENABLED
            m["ExpirationModel"] = model
            m["ValidTo"] = vt
            self._save(conn, key)
            return {"KeyId": key.arn, "KeyMaterialId": key_material_id(key.id, 1)}

        return self._run("ImportKeyMaterial", principal, context, {"ExpirationModel": model}, op)

    def delete_imported_key_material(
        self, *, key_id: str, principal: str | None = None, context: RequestContext | None = None
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            key = self._key(conn, call, key_id, MANAGE, now)
            self._external(key, "DeleteImportedKeyMaterial")
            self._drop_imported(conn, key)
            return {}

        return self._run("DeleteImportedKeyMaterial", principal, context, {}, op)
