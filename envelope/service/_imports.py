"""Imported key material: GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial."""

from __future__ import annotations

import hmac
import re
import secrets
import sqlite3
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import _materials, _specs
from ._columns import unsealed
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
    wrong_origin,
)
from ._core import (
    key_material_id as key_material_id_of,
)
from ._states import (
    DELETE_MATERIAL,
    MANAGE,
)
from .errors import (
    ExpiredImportTokenException,
    IncorrectKeyMaterialException,
    InvalidImportTokenException,
    KMSInvalidStateException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)

_DESCRIPTION = re.compile(r"[a-zA-Z0-9:/_\s.-]{1,256}")
MAX_VALID_TO = 365 * 86400  # seconds after the request that ValidTo may be



def _check_wrapping(algorithm: str, wrapping_spec: str, key_spec: str) -> None:
    """The pairs GetParametersForImport's reference excludes for the key's material (its
    WrappingAlgorithm entry): RSAES_OAEP_* "Supported for all types of key material, except
    RSA key material (private key)", and "You cannot use the RSAES_OAEP_SHA_256 wrapping
    algorithm with the RSA_2048 wrapping key spec to wrap ECC_NIST_P521 key material" (it
    does not fit). Refused here, before a token is made for an import that cannot work."""
    if algorithm.startswith("RSAES_") and key_spec.startswith("RSA_"):
        raise ValidationException(
            f"To import an RSA private key, you must use an RSA_AES wrapping algorithm, not "
            f"{algorithm}"
        )
    if (algorithm, wrapping_spec, key_spec) == ("RSAES_OAEP_SHA_256", "RSA_2048", "ECC_NIST_P521"):
        raise ValidationException(
            "You cannot use the RSAES_OAEP_SHA_256 wrapping algorithm with the RSA_2048 wrapping "
            "key spec to wrap ECC_NIST_P521 key material"
        )

class ImportOps(ServiceCore):
    """GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial."""

    # -- imported key material ------------------------------------------------------------

    @staticmethod
    def _external(key: _Key, opname: str) -> None:
        if key.meta["Origin"] != "EXTERNAL":
            raise wrong_origin(key)

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
            call.values["kms:wrappingalgorithm"] = wrapping_algorithm
            call.values["kms:wrappingkeyspec"] = wrapping_key_spec
            key = self._key(conn, call, key_id, MANAGE, now)
            self._external(key, "GetParametersForImport")
            _check_wrapping(wrapping_algorithm, wrapping_key_spec, key.spec)
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
        key_material_description: str | None = None,
        key_material_id: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """ImportKeyMaterial, as AWS: a key's first material (ImportType NEW_KEY_MATERIAL, the
        default before any), the same material again (EXISTING_KEY_MATERIAL, the default
        after: to restore deleted or expired material or change its expiry, in any Region of
        a multi-Region key), or, for a symmetric encryption key, new material for a later
        RotateKeyOnDemand (NEW_KEY_MATERIAL on a key that has some; in the primary Region)."""
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
            if model == "KEY_MATERIAL_EXPIRES" and vt is not None and vt > now + MAX_VALID_TO:
                raise ValidationException(  # ValidTo: "The maximum value is 365 days from the
                    "ValidTo must be at most 365 days from the request date"  # request date"
                )
            if model == "KEY_MATERIAL_DOES_NOT_EXPIRE" and vt is not None:
                raise ValidationException(
                    "ValidTo is not allowed with KEY_MATERIAL_DOES_NOT_EXPIRE"
                )
            if import_type not in (None, "NEW_KEY_MATERIAL", "EXISTING_KEY_MATERIAL"):
                raise ValidationException(
                    "ImportType must be NEW_KEY_MATERIAL or EXISTING_KEY_MATERIAL"
                )
            if key_material_description is not None and not _DESCRIPTION.fullmatch(
                key_material_description
            ):
                raise ValidationException(  # the model's length and pattern
                    "KeyMaterialDescription must be 1 to 256 letters, digits, spaces and :/_.-"
                )
            call.values["kms:expirationmodel"] = model
            if vt is not None:
                call.values["kms:validto"] = float(vt)  # epoch seconds, as AWS gives it
            key = self._key(conn, call, key_id, MANAGE, now)
            self._external(key, "ImportKeyMaterial")
            symmetric = key.spec == _specs.SYMMETRIC_DEFAULT
            if not symmetric and (
                key_material_id is not None or key_material_description is not None
            ):
                raise ValidationException(
                    "KeyMaterialId and KeyMaterialDescription are only usable with symmetric "
                    "encryption keys"
                )
            # A multi-Region key's materials are the same in all its Regions; this Region's
            # entries win over the others' (its own import state and expiry).
            others = self._other_regions(conn, key)
            family: dict[str, dict[str, Any]] = {}
            for k in (*others, key):
                family.update(_materials.entries(k.meta))
            kind = import_type or ("EXISTING_KEY_MATERIAL" if family else "NEW_KEY_MATERIAL")
            if kind == "NEW_KEY_MATERIAL" and key_material_id is not None:
                raise ValidationException(
                    "KeyMaterialId cannot be specified with ImportType NEW_KEY_MATERIAL"
                )
            if kind == "EXISTING_KEY_MATERIAL" and not family:
                raise ValidationException(
                    f"{key.arn} has no key material yet: import it with ImportType NEW_KEY_MATERIAL"
                )
            if kind == "NEW_KEY_MATERIAL" and family:
                if not symmetric:  # AWS: asymmetric and HMAC keys keep their first material
                    raise UnsupportedOperationException(
                        f"{key.arn} already has key material; the key material of a {key.spec} "
                        "key cannot be changed after the initial import"
                    )
                if key.meta.get("x_mr_type") == "REPLICA":
                    raise UnsupportedOperationException(
                        f"New key material cannot be imported into the replica key {key.arn}: "
                        "import it into the primary Region key, then into each replica with "
                        "ImportType EXISTING_KEY_MATERIAL"
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
                unsealed(
                    self.store.root, row[4], f"import-token|{token.hex()}".encode(),
                    "the import token's private key",
                ),
                password=None,
            )
            assert isinstance(private, rsa.RSAPrivateKey)
            raw = _specs.unwrap_import(private, str(row[3]), wrapped)
            _specs.check_imported_material(key.spec, raw)
            fp = self._fingerprint(conn, key.id, raw)
            match = next(
                (int(v) for v, e in family.items() if hmac.compare_digest(str(e["fp"]), fp)), None
            )
            _materials.adopt(key.meta, family)
            mats = _materials.entries(key.meta)
            if kind == "NEW_KEY_MATERIAL":
                # never a version used before, even by material since dissociated: its id
                # names one material for good
                used = [int(v) for v in family] + [k.meta.get("x_mat_hi", 0) for k in others]
                version = 1 + max(0, key.meta.get("x_mat_hi", 0), *used)
                if match is not None:
                    raise IncorrectKeyMaterialException(
                        f"The key material is already associated with KMS key {key.id} (id: "
                        f"{key_material_id_of(key.id, match)}); import it with ImportType "
                        "EXISTING_KEY_MATERIAL"
                    )
                pending = _materials.pending(key.meta)
                if pending is not None:  # AWS's words
                    raise KMSInvalidStateException(
                        f"New key material (id: {key_material_id_of(key.id, version)}) cannot be "
                        f"imported into KMS key {key.id}, because another key material (id: "
                        f"{key_material_id_of(key.id, pending[0])}) is pending rotation."
                    )
                state = _materials.PENDING if family else _materials.CURRENT
                entry: dict[str, Any] = {"fp": fp, "state": state}
            else:
                if match is None:
                    raise IncorrectKeyMaterialException(
                        "this key was created with different key material; only material "
                        "associated with it can be imported again"
                    )
                version = match
                if key_material_id is not None and key_material_id != (
                    key_material_id_of(key.id, match)
                ):
                    raise IncorrectKeyMaterialException(
                        f"The key material does not match the key material id {key_material_id}"
                    )
                entry = mats.get(str(match)) or _materials.unimported(family[str(match)])
            entry["imported"] = True
            entry["model"] = model
            entry["valid_to"] = vt if model == "KEY_MATERIAL_EXPIRES" else None
            if key_material_description is not None:
                entry["desc"] = key_material_description
            mats[str(version)] = entry
            key.meta["x_mat_hi"] = max(version, key.meta.get("x_mat_hi", 0))
            self._put_material(conn, call, key.id, version, raw, now, "IMPORT")
            # The same material under the same (id, version): a cached copy stays valid.
            _materials.refresh(key.meta)  # Enabled once it holds every associated material
            self._save(conn, key)
            call.material_ids.append(key_material_id_of(key.id, version))
            return {"KeyId": key.arn, "KeyMaterialId": call.material_ids[-1]}

        params = {"ExpirationModel": model, "ImportType": import_type}
        return self._run("ImportKeyMaterial", principal, context, params, op)

    def delete_imported_key_material(
        self,
        *,
        key_id: str,
        key_material_id: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        """DeleteImportedKeyMaterial: the current material (by default) or the one named, in
        this Region. Deleting a material permanently associated with the key, current or
        earlier, makes the key PendingImport until it is imported again; deleting material
        pending rotation (in the primary Region) dissociates it from the key."""

        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            key = self._key(conn, call, key_id, DELETE_MATERIAL, now)
            self._external(key, "DeleteImportedKeyMaterial")
            mats = _materials.entries(key.meta)
            if key_material_id is None:
                cur = _materials.current(key.meta)
                if cur is None:  # nothing was ever imported: nothing to delete
                    return {"KeyId": key.arn}
                version = cur[0]
            else:
                found = [
                    int(v) for v in mats if key_material_id_of(key.id, int(v)) == key_material_id
                ]
                if not found:
                    raise NotFoundException(
                        f"Key material {key_material_id} is not associated with {key.arn}"
                    )
                version = found[0]
            self._drop_imported(conn, key, [version], delete=True)
            call.material_ids.append(key_material_id_of(key.id, version))
            return {"KeyId": key.arn, "KeyMaterialId": call.material_ids[-1]}

        return self._run(
            "DeleteImportedKeyMaterial", principal, context, {"KeyMaterialId": key_material_id}, op
        )
