"""Cryptographic operations: symmetric, data keys, RSA/ECDSA signing, RSA OAEP, HMAC.

Key agreement (DeriveSharedSecret) is in `_agreement`."""

from __future__ import annotations

import hmac
import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from . import _blob, _keystore_crypto, _specs
from ._core import (
    _DATA_KEY_SPECS,
    MAX_PLAINTEXT,
    RequestContext,
    Response,
    ServiceCore,
    _bytes,
    _Call,
    _context,
    _grant_tokens,
    _int_in,
    _Key,
    _names_alias,
    deprecated_spec,
    key_material_id,
    valid_key_id,
    wrong_usage,
)
from ._keystore_rows import CUSTOM_ORIGINS, EXTERNAL
from ._states import (
    CRYPTO,
)
from .errors import (
    IncorrectKeyException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    KMSInvalidMacException,
    KMSInvalidSignatureException,
    KmsServiceError,
    UnsupportedOperationException,
    ValidationException,
)


class CryptoOps(ServiceCore):
    """Encrypt, Decrypt, data keys, Sign/Verify, GetPublicKey, MACs."""

    # -- symmetric cryptography -----------------------------------------------------------

    def _symmetric_encrypt(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        key: _Key,
        plaintext: bytes,
        ctx: dict[str, str],
    ) -> bytes:
        if key.usage != _specs.ENCRYPT_DECRYPT or key.spec != _specs.SYMMETRIC_DEFAULT:
            raise InvalidKeyUsageException(f"{key.arn} is not a symmetric encryption key")
        if "CustomKeyStoreId" in key.meta:
            return _keystore_crypto.seal_custom(self, conn, call, key, plaintext, ctx)
        version, mat = self._current(conn, call, key)
        call.material_ids.append(key_material_id(key.id, version))
        return _blob.seal(key.id, version, mat.raw, plaintext, ctx)

    def _encrypt_with(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        key: _Key,
        plaintext: bytes,
        ctx: dict[str, str],
        algorithm: str,
    ) -> bytes:
        if key.usage != _specs.ENCRYPT_DECRYPT:
            raise wrong_usage(key, call.op)
        if key.spec == _specs.SYMMETRIC_DEFAULT:
            _specs.check_algorithm(algorithm, key.algorithms().encryption, key.spec)
            return self._symmetric_encrypt(conn, call, key, plaintext, ctx)
        if ctx:
            raise ValidationException("asymmetric keys do not take an EncryptionContext")
        _, mat = self._current(conn, call, key)
        return _specs.rsa_encrypt(mat.private(), key.algorithms(), algorithm, plaintext)

    def _alias_names(
        self, conn: sqlite3.Connection, call: _Call, alias: str, key_id: str
    ) -> bool:
        """Whether `alias` names the key `key_id` (an alias that names no key: False; the
        request is refused as before, once its key was authorized)."""
        try:
            named, _, _ = self._resolve_id(conn, alias, managed=False, account=call.account)
        except KmsServiceError:
            return False
        return named == key_id

    def _decrypt_with(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        blob: bytes,
        ctx: dict[str, str],
        key_ref: str | None,
        algorithm: str,
        now: float,
        action: str = "kms:Decrypt",
    ) -> tuple[_Key, bytes]:
        call.values["kms:encryptionalgorithm"] = algorithm
        if algorithm == _specs.SYMMETRIC_DEFAULT:
            try:
                parsed = _blob.parse(blob)
            except InvalidCiphertextException:
                if key_ref is not None:  # named an asymmetric key without its algorithm?
                    given = self._key(conn, call, key_ref, CRYPTO, now, action=action)
                    _decrypts_with(given, algorithm, call.op)  # (AWS's words for the key)
                raise
            if not valid_key_id(parsed.key_id):  # damaged or forged: names no key at all
                raise InvalidCiphertextException("the ciphertext is not a KMS ciphertext blob")
            if (
                key_ref is not None
                and _names_alias(key_ref)
                and self._alias_names(conn, call, key_ref, parsed.key_id)
            ):
                # kms:RequestAlias covers Decrypt and ReEncrypt's source as every other
                # cryptographic operation (AWS's condition keys page): the key is the
                # ciphertext's, named in the request by that alias (review)
                call.values["kms:requestalias"] = key_ref.rsplit(":", 1)[-1]
            key = self._key(conn, call, parsed.key_id, CRYPTO, now, action=action, any_account=True)
            if key_ref is not None:
                named, _, _ = self._resolve_id(conn, key_ref, managed=False, account=call.account)
                if named != parsed.key_id:
                    raise IncorrectKeyException(  # AWS's words
                        "The key ID in the request does not identify a CMK that can perform this "
                        "operation."
                    )
            if key.usage != _specs.ENCRYPT_DECRYPT or key.spec != _specs.SYMMETRIC_DEFAULT:
                raise InvalidKeyUsageException(f"{key.arn} is not a symmetric encryption key")
            if parsed.version > self._current_version(conn, key):
                raise InvalidCiphertextException("the ciphertext names an unknown backing key")
            if key.meta["Origin"] == "EXTERNAL":
                self._check_imported(key, parsed.version)
            if "CustomKeyStoreId" in key.meta:
                return key, _keystore_crypto.open_custom(self, conn, call, key, parsed, ctx)
            mat = self._material(conn, call, key.id, parsed.version)
            opened = _blob.open_(parsed, mat.raw, ctx)
            call.material_ids.append(key_material_id(key.id, parsed.version))
            return key, opened
        if key_ref is None:
            raise ValidationException("KeyId is required to decrypt with an asymmetric key")
        key = self._key(conn, call, key_ref, CRYPTO, now, action=action)
        _decrypts_with(key, algorithm, call.op)  # (an RSA encryption key past this)
        if ctx:
            raise ValidationException("asymmetric keys do not take an EncryptionContext")
        _, mat = self._current(conn, call, key)
        return key, _specs.rsa_decrypt(mat.private(), key.algorithms(), algorithm, blob)

    def encrypt(
        self,
        *,
        key_id: str,
        plaintext: bytes,
        encryption_context: Mapping[str, str] | None = None,
        encryption_algorithm: str = _specs.SYMMETRIC_DEFAULT,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            ctx = call.params["EncryptionContext"] = _context(encryption_context)
            call.enc_context = ctx
            pt = _bytes(plaintext, "Plaintext", 1, MAX_PLAINTEXT)
            call.values["kms:encryptionalgorithm"] = encryption_algorithm
            key = self._key(conn, call, key_id, CRYPTO, now, managed=True)
            blob = self._encrypt_with(conn, call, key, pt, ctx, encryption_algorithm)
            return {
                "CiphertextBlob": blob,
                "KeyId": key.arn,
                "EncryptionAlgorithm": encryption_algorithm,
            }

        def prefetch(call: _Call) -> None:
            if (
                encryption_algorithm == _specs.SYMMETRIC_DEFAULT
                and EXTERNAL in self.custom_key_store_types()
            ):
                pt = _bytes(plaintext, "Plaintext", 1, MAX_PLAINTEXT)
                ctx = _context(encryption_context)
                _keystore_crypto.prefetch_seal(self, call, key_id, ctx, pt, None)

        return self._run(
            "Encrypt",
            principal,
            context,
            {"EncryptionAlgorithm": encryption_algorithm},
            op,
            dry_run=dry_run,
            prefetch=prefetch,
        )

    def decrypt(
        self,
        *,
        ciphertext_blob: bytes | None = None,
        encryption_context: Mapping[str, str] | None = None,
        key_id: str | None = None,
        encryption_algorithm: str = _specs.SYMMETRIC_DEFAULT,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        dry_run_modifiers: Sequence[str] | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            ctx = call.params["EncryptionContext"] = _context(encryption_context)
            call.enc_context = ctx
            if _ignores_ciphertext(call, dry_run, dry_run_modifiers):
                # a permission test: the key named, authorized, usable, able to decrypt with
                # this algorithm (what the real call checks before the ciphertext)
                call.values["kms:encryptionalgorithm"] = encryption_algorithm
                key = self._key(
                    conn, call, _named(key_id, "KeyId"), CRYPTO, now, action="kms:Decrypt"
                )
                _decrypts_with(key, encryption_algorithm, call.op)
                return {}
            blob = _bytes(ciphertext_blob, "CiphertextBlob", 1, _blob.MAX_CIPHERTEXT)
            key, pt = self._decrypt_with(conn, call, blob, ctx, key_id, encryption_algorithm, now)
            out: Response = {
                "KeyId": key.arn,
                "Plaintext": pt,
                "EncryptionAlgorithm": encryption_algorithm,
            }
            return _with_material_id(out, call)

        def prefetch(call: _Call) -> None:
            if (
                encryption_algorithm == _specs.SYMMETRIC_DEFAULT
                and EXTERNAL in self.custom_key_store_types()
                and ciphertext_blob is not None
            ):
                blob = _bytes(ciphertext_blob, "CiphertextBlob", 1, _blob.MAX_CIPHERTEXT)
                _keystore_crypto.prefetch_open(
                    self, call, blob, _context(encryption_context), key_id
                )

        return self._run(
            "Decrypt",
            principal,
            context,
            {"EncryptionAlgorithm": encryption_algorithm},
            op,
            dry_run=dry_run,
            prefetch=prefetch,
        )

    def re_encrypt(
        self,
        *,
        destination_key_id: str,
        ciphertext_blob: bytes | None = None,
        source_encryption_context: Mapping[str, str] | None = None,
        source_key_id: str | None = None,
        destination_encryption_context: Mapping[str, str] | None = None,
        source_encryption_algorithm: str = _specs.SYMMETRIC_DEFAULT,
        destination_encryption_algorithm: str = _specs.SYMMETRIC_DEFAULT,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        dry_run_modifiers: Sequence[str] | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            sctx = _context(source_encryption_context)
            dctx = _context(destination_encryption_context)
            _grant_tokens(grant_tokens)
            if _ignores_ciphertext(call, dry_run, dry_run_modifiers):
                # a permission test: both keys named, authorized, usable, able to do their
                # part with these algorithms; kms:ReEncryptOnSameKey as the real call sets it
                source = _named(source_key_id, "SourceKeyId")
                named, _, _ = self._resolve_id(conn, source, managed=False, account=call.account)
                dest, _, _ = self._resolve_id(
                    conn, destination_key_id, managed=True, account=call.account
                )
                call.values["kms:reencryptonsamekey"] = named == dest
                call.enc_context = sctx
                call.values["kms:encryptionalgorithm"] = source_encryption_algorithm
                src = self._key(conn, call, source, CRYPTO, now, action="kms:ReEncryptFrom")
                _decrypts_with(src, source_encryption_algorithm, call.op)
                call.enc_context = dctx
                call.values.pop("kms:requestalias", None)
                call.values["kms:encryptionalgorithm"] = destination_encryption_algorithm
                dst = self._key(
                    conn, call, destination_key_id, CRYPTO, now, managed=True,
                    action="kms:ReEncryptTo",
                )  # fmt: skip
                _decrypts_with(dst, destination_encryption_algorithm, call.op)
                call.key_id = src.arn
                return {}
            blob = _bytes(ciphertext_blob, "CiphertextBlob", 1, _blob.MAX_CIPHERTEXT)
            call.enc_context = sctx
            same = self._same_key(conn, call, blob, source_key_id, destination_key_id)
            if same is not None:
                call.values["kms:reencryptonsamekey"] = same
            src, pt = self._decrypt_with(
                conn,
                call,
                blob,
                sctx,
                source_key_id,
                source_encryption_algorithm,
                now,
                "kms:ReEncryptFrom",
            )
            call.enc_context = dctx
            call.values.pop("kms:requestalias", None)
            call.values["kms:encryptionalgorithm"] = destination_encryption_algorithm
            dst = self._key(
                conn, call, destination_key_id, CRYPTO, now, managed=True, action="kms:ReEncryptTo"
            )
            call.params["DestinationKeyId"] = dst.arn
            call.key_id = src.arn  # the record's key_id is the source key (AWS's CloudTrail)
            source_ids = list(call.material_ids)
            out = self._encrypt_with(conn, call, dst, pt, dctx, destination_encryption_algorithm)
            result: Response = {
                "CiphertextBlob": out,
                "SourceKeyId": src.arn,
                "KeyId": dst.arn,
                "SourceEncryptionAlgorithm": source_encryption_algorithm,
                "DestinationEncryptionAlgorithm": destination_encryption_algorithm,
            }
            if source_ids:
                result["SourceKeyMaterialId"] = source_ids[-1]
            if len(call.material_ids) > len(source_ids):
                result["DestinationKeyMaterialId"] = call.material_ids[-1]
            return result

        return self._run("ReEncrypt", principal, context, {}, op, dry_run=dry_run)

    def _data_key(
        self,
        opname: str,
        key_id: str,
        encryption_context: Mapping[str, str] | None,
        number_of_bytes: int | None,
        key_spec: str | None,
        with_plaintext: bool,
        principal: str | None,
        context: RequestContext | None,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            ctx = call.params["EncryptionContext"] = _context(encryption_context)
            call.enc_context = ctx
            if (number_of_bytes is None) == (key_spec is None):
                # the wording AWS is recorded answering (moto and local-kms use it too)
                raise ValidationException("Please specify either number of bytes or key spec.")
            if key_spec is not None:
                if key_spec not in _DATA_KEY_SPECS:
                    raise ValidationException("KeySpec must be AES_128 or AES_256")
                n = _DATA_KEY_SPECS[key_spec]
            else:
                n = _int_in(number_of_bytes, 1, 1024, "NumberOfBytes")
            # kms:EncryptionAlgorithm: for the operations that make data keys, the algorithm
            # that encrypts the data key (the developer guide), as the XKS prefetch sets it
            call.values["kms:encryptionalgorithm"] = _specs.SYMMETRIC_DEFAULT
            key = self._key(conn, call, key_id, CRYPTO, now, managed=True)
            plaintext = _keystore_crypto.prefetched_plaintext(call, n) or os.urandom(n)
            blob = self._symmetric_encrypt(conn, call, key, plaintext, ctx)
            out: Response = {"CiphertextBlob": blob, "KeyId": key.arn}
            if with_plaintext:
                out["Plaintext"] = plaintext
            return _with_material_id(out, call)

        def prefetch(call: _Call) -> None:
            if EXTERNAL not in self.custom_key_store_types():
                return
            if key_spec is not None and number_of_bytes is None and key_spec in _DATA_KEY_SPECS:
                n = _DATA_KEY_SPECS[key_spec]
            elif key_spec is None and isinstance(number_of_bytes, int):
                n = _int_in(number_of_bytes, 1, 1024, "NumberOfBytes")
            else:
                return
            ctx = _context(encryption_context)
            _keystore_crypto.prefetch_seal(self, call, key_id, ctx, None, n)

        params: dict[str, Any] = {}
        if key_spec is not None:
            params["KeySpec"] = key_spec
        if number_of_bytes is not None:
            params["NumberOfBytes"] = number_of_bytes
        return self._run(opname, principal, context, params, op, dry_run=dry_run, prefetch=prefetch)

    def generate_data_key(
        self,
        *,
        key_id: str,
        encryption_context: Mapping[str, str] | None = None,
        number_of_bytes: int | None = None,
        key_spec: str | None = None,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        return self._data_key(
            "GenerateDataKey",
            key_id,
            encryption_context,
            number_of_bytes,
            key_spec,
            True,
            principal,
            context,
            grant_tokens,
            dry_run=dry_run,
        )

    def generate_data_key_without_plaintext(
        self,
        *,
        key_id: str,
        encryption_context: Mapping[str, str] | None = None,
        number_of_bytes: int | None = None,
        key_spec: str | None = None,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        return self._data_key(
            "GenerateDataKeyWithoutPlaintext",
            key_id,
            encryption_context,
            number_of_bytes,
            key_spec,
            False,
            principal,
            context,
            grant_tokens,
            dry_run=dry_run,
        )

    def _data_key_pair(
        self,
        opname: str,
        key_id: str,
        key_pair_spec: str,
        encryption_context: Mapping[str, str] | None,
        with_plaintext: bool,
        principal: str | None,
        context: RequestContext | None,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            ctx = call.params["EncryptionContext"] = _context(encryption_context)
            call.enc_context = ctx
            if key_pair_spec not in _specs.KEY_PAIR_SPECS:
                raise ValidationException("KeyPairSpec must be an RSA_* or ECC_* key spec")
            call.values["kms:datakeypairspec"] = key_pair_spec
            call.values["kms:encryptionalgorithm"] = _specs.SYMMETRIC_DEFAULT  # (see _data_key)
            key = self._key(conn, call, key_id, CRYPTO, now, managed=True)
            if key.spec != _specs.SYMMETRIC_DEFAULT or key.usage != _specs.ENCRYPT_DECRYPT:
                raise InvalidKeyUsageException(f"{key.arn} is not a symmetric encryption key")
            if key.meta.get("Origin") in CUSTOM_ORIGINS:
                # the API reference: "You cannot use an asymmetric KMS key or a KMS key in a
                # custom key store to generate a data key pair"
                raise UnsupportedOperationException(
                    f"{opname} is not supported with {key.arn}: it is in a custom key store"
                )
            der = _specs.generate_material(key_pair_spec)
            public = _specs.public_der(_specs.load_private(der))
            out: Response = {
                "PrivateKeyCiphertextBlob": self._symmetric_encrypt(conn, call, key, der, ctx),
                "PublicKey": public,
                "KeyId": key.arn,
                "KeyPairSpec": key_pair_spec,
            }
            if with_plaintext:
                out["PrivateKeyPlaintext"] = der
            return _with_material_id(out, call)

        return self._run(
            opname, principal, context, {"KeyPairSpec": key_pair_spec}, op, dry_run=dry_run
        )

    def generate_data_key_pair(
        self,
        *,
        key_id: str,
        key_pair_spec: str,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        return self._data_key_pair(
            "GenerateDataKeyPair",
            key_id,
            key_pair_spec,
            encryption_context,
            True,
            principal,
            context,
            grant_tokens,
            dry_run=dry_run,
        )

    def generate_data_key_pair_without_plaintext(
        self,
        *,
        key_id: str,
        key_pair_spec: str,
        encryption_context: Mapping[str, str] | None = None,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        return self._data_key_pair(
            "GenerateDataKeyPairWithoutPlaintext",
            key_id,
            key_pair_spec,
            encryption_context,
            False,
            principal,
            context,
            grant_tokens,
            dry_run=dry_run,
        )

    def generate_random(
        self,
        *,
        number_of_bytes: int,
        custom_key_store_id: str | None = None,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            self._authorize_account(conn, call)
            n = _int_in(number_of_bytes, 1, 1024, "NumberOfBytes")
            if custom_key_store_id is not None:
                call.params["CustomKeyStoreId"] = custom_key_store_id
                out = _keystore_crypto.random_bytes(self, conn, call, custom_key_store_id, n)
                return {"Plaintext": out}
            return {"Plaintext": os.urandom(n)}

        return self._run(
            "GenerateRandom", principal, context, {"NumberOfBytes": number_of_bytes}, op
        )

    # -- asymmetric and HMAC --------------------------------------------------------------

    def _same_key(
        self,
        conn: sqlite3.Connection,
        call: _Call,
        blob: bytes,
        source_ref: str | None,
        destination_ref: Any,
    ) -> bool | None:
        """``kms:ReEncryptOnSameKey``: do the source (the blob's key, or SourceKeyId) and the
        destination name the same key? Known before either key is authorized, since both
        checks (ReEncryptFrom, ReEncryptTo) may test it; None when a reference does not
        resolve (the call then fails on it, as without the condition key)."""
        try:
            if source_ref is not None:
                source, _, _ = self._resolve_id(
                    conn, source_ref, managed=False, account=call.account
                )
            else:
                source = _blob.parse(blob).key_id
            target, _, _ = self._resolve_id(
                conn, destination_ref, managed=False, account=call.account
            )
        except KmsServiceError:
            return None
        return bool(source == target)

    def _signing_key(self, conn: sqlite3.Connection, call: _Call, key_id: str, now: float) -> _Key:
        key = self._key(conn, call, key_id, CRYPTO, now)
        if key.usage != _specs.SIGN_VERIFY:
            raise wrong_usage(key, call.op)
        return key

    def sign(
        self,
        *,
        key_id: str,
        message: bytes,
        signing_algorithm: str,
        message_type: str = "RAW",
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            msg = _bytes(message, "Message", 1, _specs.MAX_MESSAGE)
            _signing_values(call, signing_algorithm, message_type)
            key = self._signing_key(conn, call, key_id, now)
            _, mat = self._current(conn, call, key)
            sig = _specs.sign(
                mat.private(), key.algorithms(), signing_algorithm, msg, message_type
            )
            return {"KeyId": key.arn, "Signature": sig, "SigningAlgorithm": signing_algorithm}

        return self._run(
            "Sign",
            principal,
            context,
            {"SigningAlgorithm": signing_algorithm, "MessageType": message_type},
            op,
            dry_run=dry_run,
        )

    def verify(
        self,
        *,
        key_id: str,
        message: bytes,
        signature: bytes,
        signing_algorithm: str,
        message_type: str = "RAW",
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            msg = _bytes(message, "Message", 1, _specs.MAX_MESSAGE)
            sig = _bytes(signature, "Signature", 1, 6144)
            _signing_values(call, signing_algorithm, message_type)
            key = self._signing_key(conn, call, key_id, now)
            _, mat = self._current(conn, call, key)
            ok = _specs.verify(
                mat.private().public_key(),
                key.algorithms(),
                signing_algorithm,
                msg,
                message_type,
                sig,
            )
            if not ok:
                raise KMSInvalidSignatureException("the signature is not valid")
            return {"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": signing_algorithm}

        return self._run(
            "Verify",
            principal,
            context,
            {"SigningAlgorithm": signing_algorithm, "MessageType": message_type},
            op,
            dry_run=dry_run,
        )

    def get_public_key(
        self,
        *,
        key_id: str,
        grant_tokens: Sequence[str] = (),
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            key = self._key(conn, call, key_id, CRYPTO, now)
            if not _specs.is_asymmetric(key.spec):
                raise UnsupportedOperationException(f"{key.spec} keys have no public key")
            _, mat = self._current(conn, call, key)
            out: Response = {
                "KeyId": key.arn,
                "PublicKey": _specs.public_der(mat.private()),
                **deprecated_spec(key.spec),
                "KeySpec": key.spec,
                "KeyUsage": key.usage,
            }
            out.update(key.algorithm_members())  # asymmetric keys have no MacAlgorithms
            return out

        return self._run("GetPublicKey", principal, context, {}, op)

    def _mac_key(self, conn: sqlite3.Connection, call: _Call, key_id: str, now: float) -> _Key:
        key = self._key(conn, call, key_id, CRYPTO, now)
        if key.usage != _specs.GENERATE_VERIFY_MAC:
            raise wrong_usage(key, call.op)
        return key

    def generate_mac(
        self,
        *,
        key_id: str,
        message: bytes,
        mac_algorithm: str,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            msg = _bytes(message, "Message", 1, _specs.MAX_MESSAGE)
            if isinstance(mac_algorithm, str):
                call.values["kms:macalgorithm"] = mac_algorithm
            key = self._mac_key(conn, call, key_id, now)
            _, mat = self._current(conn, call, key)
            tag = _specs.mac(mat.raw, key.algorithms(), mac_algorithm, msg)
            return {"Mac": tag, "MacAlgorithm": mac_algorithm, "KeyId": key.arn}

        return self._run(
            "GenerateMac", principal, context, {"MacAlgorithm": mac_algorithm}, op, dry_run=dry_run
        )

    def verify_mac(
        self,
        *,
        key_id: str,
        message: bytes,
        mac_algorithm: str,
        mac: bytes,
        grant_tokens: Sequence[str] = (),
        dry_run: bool = False,
        principal: str | None = None,
        context: RequestContext | None = None,
    ) -> Response:
        def op(conn: sqlite3.Connection, call: _Call, now: float) -> Response:
            _grant_tokens(grant_tokens)
            msg = _bytes(message, "Message", 1, _specs.MAX_MESSAGE)
            tag = _bytes(mac, "Mac", 1, 6144)
            if isinstance(mac_algorithm, str):
                call.values["kms:macalgorithm"] = mac_algorithm
            key = self._mac_key(conn, call, key_id, now)
            _, mat = self._current(conn, call, key)
            expected = _specs.mac(mat.raw, key.algorithms(), mac_algorithm, msg)
            if not hmac.compare_digest(expected, tag):
                raise KMSInvalidMacException("the MAC is not valid")
            return {"KeyId": key.arn, "MacValid": True, "MacAlgorithm": mac_algorithm}

        return self._run(
            "VerifyMac", principal, context, {"MacAlgorithm": mac_algorithm}, op, dry_run=dry_run
        )


def _with_material_id(out: Response, call: _Call) -> Response:
    """`out` with the KeyMaterialId of the symmetric backing key the call used last (AWS
    answers it from Decrypt and the GenerateDataKey family; absent for other keys)."""
    if call.material_ids:
        out["KeyMaterialId"] = call.material_ids[-1]
    return out


def _signing_values(call: _Call, algorithm: Any, message_type: Any) -> None:
    """``kms:SigningAlgorithm`` and ``kms:MessageType`` of Sign and Verify."""
    if isinstance(algorithm, str):
        call.values["kms:signingalgorithm"] = algorithm
    if isinstance(message_type, str):
        call.values["kms:messagetype"] = message_type


#: The values of DryRunModifiers (the model's enum).
_DRY_RUN_MODIFIERS = frozenset({"IGNORE_CIPHERTEXT"})


def _ignores_ciphertext(call: _Call, dry_run: object, modifiers: Sequence[str] | None) -> bool:
    """Whether a Decrypt or ReEncrypt is a permission test only: DryRun with the
    IGNORE_CIPHERTEXT modifier ("KMS performs only authorization validation without
    ciphertext validation", the API reference). The modifiers "only apply when DryRun is set
    to true": without it they are checked and otherwise ignored. Checked in the call (a bad
    value is audited) and kept in its audit record (a permission test is told apart)."""
    if modifiers is None:
        return False
    call.params["DryRunModifiers"] = (
        list(modifiers) if isinstance(modifiers, list | tuple) else str(modifiers)[:40]
    )
    if not isinstance(modifiers, Sequence) or isinstance(modifiers, str | bytes):
        raise ValidationException("DryRunModifiers must be a list")
    for m in modifiers:
        if m not in _DRY_RUN_MODIFIERS:
            raise ValidationException(
                f"DryRunModifiers member {str(m)[:40]!r} is not one of IGNORE_CIPHERTEXT"
            )
    return dry_run is True and "IGNORE_CIPHERTEXT" in modifiers


def _decrypts_with(key: _Key, algorithm: str, op: str) -> None:
    """What Decrypt checks of its key before the ciphertext: ENCRYPT_DECRYPT usage, and an
    algorithm the key takes (InvalidKeyUsageException, as the real call answers)."""
    if key.usage != _specs.ENCRYPT_DECRYPT:
        raise wrong_usage(key, op)
    algs = key.algorithms()
    _specs.check_algorithm(algorithm, algs.encryption, algs.spec)


def _named(key_ref: str | None, member: str) -> str:
    """The key a permission test names: required there (the API reference: "required ... when
    DryRun is true and DryRunModifiers is set to IGNORE_CIPHERTEXT")."""
    if key_ref is None:
        raise ValidationException(
            f"{member} is required when DryRun is true and DryRunModifiers is IGNORE_CIPHERTEXT"
        )
    return key_ref
