"""Key specs and the cryptography behind each one (AWS names throughout).

One table per family says which KeyUsage a spec allows and which algorithms it offers, so
`CreateKey` validation, `DescribeKey` output and the per-operation checks agree by construction.
Nothing here touches the store: functions take raw material and return bytes.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from .errors import (
    IncorrectKeyMaterialException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    UnsupportedOperationException,
    ValidationException,
)

SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
SIGN_VERIFY = "SIGN_VERIFY"
GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"
KEY_AGREEMENT = "KEY_AGREEMENT"
ENCAPSULATE_DECAPSULATE = "ENCAPSULATE_DECAPSULATE"
KEY_USAGES = (
    ENCRYPT_DECRYPT,
    SIGN_VERIFY,
    GENERATE_VERIFY_MAC,
    KEY_AGREEMENT,
    ENCAPSULATE_DECAPSULATE,
)

RSA_SPECS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
ECC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ECC_NIST_P256": ec.SECP256R1,
    "ECC_NIST_P384": ec.SECP384R1,
    "ECC_NIST_P521": ec.SECP521R1,
    "ECC_SECG_P256K1": ec.SECP256K1,
}
#: AWS offers KEY_AGREEMENT (ECDH) on the NIST curves only: secp256k1 keys are SIGN_VERIFY only
#: (CreateKey's KeyUsage documentation), and SM2 exists only in the China Regions.
KEY_AGREEMENT_SPECS = ("ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521")
ECDH = "ECDH"
KEY_AGREEMENT_ALGORITHMS = (ECDH,)
MAX_PUBLIC_KEY = 8192  # bytes of a peer's DER SubjectPublicKeyInfo (the model's bound)
#: Ed25519 keys (AWS since 2025): signing and verification only, with two algorithms:
#: ED25519_SHA_512 (pure Ed25519 of a RAW message, by `cryptography`) and ED25519_PH_SHA_512
#: (HashEdDSA, "Ed25519ph", RFC 8032, of a 64-byte DIGEST, which AWS hashes once more as the
#: algorithm's own prehash: the signature is Ed25519ph's over the digest's bytes).
#: `cryptography` has no Ed25519ph; libsodium's (PyNaCl) is constant-time, as a signing key
#: needs.
EDWARDS25519 = "ECC_NIST_EDWARDS25519"
ED25519_SHA_512 = "ED25519_SHA_512"
ED25519_PH_SHA_512 = "ED25519_PH_SHA_512"
#: ML-DSA keys (FIPS 204; AWS since 2025), signing and verification with ML_DSA_SHAKE_256:
#: pure ML-DSA (empty context) of a RAW message, or of a 64-byte EXTERNAL_MU. Served where the
#: installed `cryptography` has ML-DSA (its class of each parameter set, by name).
ML_DSA_SHAKE_256 = "ML_DSA_SHAKE_256"
ML_DSA_SPECS = {"ML_DSA_44": "MLDSA44", "ML_DSA_65": "MLDSA65", "ML_DSA_87": "MLDSA87"}
MU_LENGTH = 64
#: ML-KEM keys (FIPS 203; AWS since 2025): Encapsulate and Decapsulate with ML_KEM. Served
#: where the installed `cryptography` has the parameter set (ML-KEM-768 and 1024 today; it
#: has no ML-KEM-512, which is then refused). The ciphertext length of each parameter set.
ML_KEM = "ML_KEM"
ML_KEM_SPECS = {"ML_KEM_512": "MLKEM512", "ML_KEM_768": "MLKEM768", "ML_KEM_1024": "MLKEM1024"}
ML_KEM_CIPHERTEXT = {"ML_KEM_512": 768, "ML_KEM_768": 1088, "ML_KEM_1024": 1568}
HMAC_SPECS = {"HMAC_224": 28, "HMAC_256": 32, "HMAC_384": 48, "HMAC_512": 64}
KEY_SPECS = (
    SYMMETRIC_DEFAULT,
    *RSA_SPECS,
    *ECC_CURVES,
    EDWARDS25519,
    *ML_DSA_SPECS,
    *ML_KEM_SPECS,
    *HMAC_SPECS,
)
#: GenerateDataKeyPair's KeyPairSpec values served (the model's, less SM2)
KEY_PAIR_SPECS = (*RSA_SPECS, *ECC_CURVES, EDWARDS25519, *ML_KEM_SPECS)

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA_1": hashes.SHA1,
    "SHA_224": hashes.SHA224,
    "SHA_256": hashes.SHA256,
    "SHA_384": hashes.SHA384,
    "SHA_512": hashes.SHA512,
}
_RSA_SIGNING = tuple(
    f"RSASSA_{p}_SHA_{n}" for p in ("PSS", "PKCS1_V1_5") for n in ("256", "384", "512")
)
_ECC_SIGNING = {
    "ECC_NIST_P256": ("ECDSA_SHA_256",),
    "ECC_NIST_P384": ("ECDSA_SHA_384",),
    "ECC_NIST_P521": ("ECDSA_SHA_512",),
    "ECC_SECG_P256K1": ("ECDSA_SHA_256",),
}
RSA_ENCRYPTION = ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
MAC_ALGORITHMS = {
    "HMAC_224": "HMAC_SHA_224",
    "HMAC_256": "HMAC_SHA_256",
    "HMAC_384": "HMAC_SHA_384",
    "HMAC_512": "HMAC_SHA_512",
}
MAX_MESSAGE = 4096


@dataclass(frozen=True)
class Algorithms:
    """What a key of `spec` (and its usage) takes, by operation family."""

    spec: str
    encryption: tuple[str, ...] = ()
    signing: tuple[str, ...] = ()
    mac: tuple[str, ...] = ()
    key_agreement: tuple[str, ...] = ()
    encapsulation: tuple[str, ...] = ()


def validate_spec(spec: str, usage: str) -> Algorithms:
    """The algorithms of (`spec`, `usage`), or ValidationException if AWS refuses the pair."""
    if spec == "SM2":
        raise ValidationException("KeySpec SM2 is offered only in the AWS China Regions")
    if spec not in KEY_SPECS:
        raise ValidationException(f"KeySpec must be one of {', '.join(KEY_SPECS)}")
    if usage not in KEY_USAGES:
        raise ValidationException(f"KeyUsage must be one of {', '.join(KEY_USAGES)}")
    if spec == SYMMETRIC_DEFAULT and usage == ENCRYPT_DECRYPT:
        return Algorithms(spec, encryption=(SYMMETRIC_DEFAULT,))
    if spec in RSA_SPECS and usage == ENCRYPT_DECRYPT:
        return Algorithms(spec, encryption=RSA_ENCRYPTION)
    if spec in RSA_SPECS and usage == SIGN_VERIFY:
        return Algorithms(spec, signing=_RSA_SIGNING)
    if spec in ECC_CURVES and usage == SIGN_VERIFY:
        return Algorithms(spec, signing=_ECC_SIGNING[spec])
    if spec == EDWARDS25519 and usage == SIGN_VERIFY:
        return Algorithms(spec, signing=(ED25519_SHA_512, ED25519_PH_SHA_512))
    if spec in ML_DSA_SPECS and usage == SIGN_VERIFY:
        _pq_class(spec)  # refused here if this build has no ML-DSA
        return Algorithms(spec, signing=(ML_DSA_SHAKE_256,))
    if spec in ML_KEM_SPECS and usage == ENCAPSULATE_DECAPSULATE:
        _pq_class(spec)
        return Algorithms(spec, encapsulation=(ML_KEM,))
    if spec in HMAC_SPECS and usage == GENERATE_VERIFY_MAC:
        return Algorithms(spec, mac=(MAC_ALGORITHMS[spec],))
    if spec in KEY_AGREEMENT_SPECS and usage == KEY_AGREEMENT:
        return Algorithms(spec, key_agreement=KEY_AGREEMENT_ALGORITHMS)
    raise ValidationException(f"KeyUsage {usage} is not compatible with KeySpec {spec}")


def is_asymmetric(spec: str) -> bool:
    return (
        spec in RSA_SPECS
        or spec in ECC_CURVES
        or spec == EDWARDS25519
        or spec in ML_DSA_SPECS
        or spec in ML_KEM_SPECS
    )


def key_type(spec: str) -> str:
    """A key's type as UpdateAlias compares them: symmetric, asymmetric or HMAC."""
    if spec in HMAC_SPECS:
        return "HMAC"
    return "asymmetric" if is_asymmetric(spec) else "symmetric"


def _pq_class(spec: str) -> Any:
    """`cryptography`'s private-key class of an ML-DSA or ML-KEM parameter set, or
    UnsupportedOperationException where this installation lacks it."""
    if spec in ML_DSA_SPECS:
        module, name, needed = "mldsa", ML_DSA_SPECS[spec], "sign_mu"
    else:
        module, name, needed = "mlkem", ML_KEM_SPECS[spec], "decapsulate"
    try:
        import importlib

        found = importlib.import_module(f"cryptography.hazmat.primitives.asymmetric.{module}")
        cls = getattr(found, name + "PrivateKey")
        if not hasattr(cls, needed):
            raise AttributeError(needed)
    except (ImportError, AttributeError):
        raise UnsupportedOperationException(
            f"KeySpec {spec} is not available: the installed cryptography package has no "
            f"{name[:2]}-{name[2:5]}-{name[5:]}"
        ) from None
    return cls


def encapsulate(public: Any, algs: Algorithms, algorithm: str) -> tuple[bytes, bytes]:
    """(shared secret, its ciphertext) for ML-KEM public key `public` (FIPS 203 Encaps)."""
    check_algorithm(algorithm, algs.encapsulation, algs.spec)
    secret, ciphertext = public.encapsulate()
    return bytes(secret), bytes(ciphertext)


def decapsulate(private: Any, algs: Algorithms, algorithm: str, ciphertext: bytes) -> bytes:
    """The shared secret of `ciphertext` (FIPS 203 Decaps, with its implicit rejection: a
    ciphertext of the right length always gives 32 bytes, the right ones only if it is the
    one Encapsulate made). A wrong length is InvalidCiphertextException, as AWS answers."""
    check_algorithm(algorithm, algs.encapsulation, algs.spec)
    spec = algs.spec
    if len(ciphertext) != ML_KEM_CIPHERTEXT[spec]:
        raise InvalidCiphertextException(
            f"SharedSecretCiphertextBlob of a {spec} key is {ML_KEM_CIPHERTEXT[spec]} bytes"
        )
    try:
        return bytes(private.decapsulate(ciphertext))
    except ValueError:
        raise InvalidCiphertextException("SharedSecretCiphertextBlob is not valid") from None


def _ml_dsa_key(key: object) -> bool:
    """`key` is an ML-DSA private or public key (of any parameter set)."""
    return type(key).__name__.startswith("MLDSA")


def generate_material(spec: str) -> bytes:
    """Fresh key material: raw bytes for symmetric and HMAC keys, PKCS#8 DER otherwise."""
    if spec == SYMMETRIC_DEFAULT:
        return os.urandom(32)
    if spec in HMAC_SPECS:
        return os.urandom(HMAC_SPECS[spec])
    key: PrivateKeyTypes
    if spec in RSA_SPECS:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_SPECS[spec])
    elif spec == EDWARDS25519:
        key = ed25519.Ed25519PrivateKey.generate()
    elif spec in ML_DSA_SPECS or spec in ML_KEM_SPECS:
        key = _pq_class(spec).generate()
    else:
        key = ec.generate_private_key(ECC_CURVES[spec]())
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def check_imported_material(spec: str, material: bytes) -> None:
    """Imported material must fit the key spec (AES-256, HMAC length, PKCS#8 of the right kind)."""
    if spec == SYMMETRIC_DEFAULT:
        if len(material) != 32:
            raise IncorrectKeyMaterialException("SYMMETRIC_DEFAULT material must be 256 bits")
        return
    if spec in HMAC_SPECS:
        # AWS: from the digest length up to the hash's block size (64 or 128 bytes)
        hi = 64 if HMAC_SPECS[spec] <= 32 else 128
        if not HMAC_SPECS[spec] <= len(material) <= hi:
            raise IncorrectKeyMaterialException(f"{spec} material has the wrong length")
        return
    try:
        key = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError):
        raise IncorrectKeyMaterialException("material is not a PKCS#8 private key") from None
    if spec in RSA_SPECS:
        ok = isinstance(key, rsa.RSAPrivateKey) and key.key_size == RSA_SPECS[spec]
    elif spec == EDWARDS25519:
        ok = isinstance(key, ed25519.Ed25519PrivateKey)
    elif spec in ML_DSA_SPECS or spec in ML_KEM_SPECS:
        ok = isinstance(key, _pq_class(spec))
    else:
        ok = isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ECC_CURVES[spec])
    if not ok:
        raise IncorrectKeyMaterialException(f"material does not match KeySpec {spec}")


def load_private(material: bytes) -> PrivateKeyTypes:
    return serialization.load_der_private_key(material, password=None)


def public_der(private: PrivateKeyTypes) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hash_of(algorithm: str) -> hashes.HashAlgorithm:
    return _HASHES["SHA_" + algorithm.rsplit("_", 1)[1]]()


def _message(
    message: bytes, message_type: str, h: hashes.HashAlgorithm, algorithm: str
) -> tuple[bytes, bool]:
    if message_type == "RAW":
        if not 1 <= len(message) <= MAX_MESSAGE:
            raise ValidationException(f"Message must be 1..{MAX_MESSAGE} bytes")
        return message, False
    if message_type == "DIGEST":
        if len(message) != h.digest_size:
            raise ValidationException(f"Digest is invalid length for algorithm {algorithm}.")
        return message, True
    raise ValidationException(f"MessageType {message_type} is not valid for {algorithm}")


def check_algorithm(algorithm: str, allowed: tuple[str, ...], spec: str) -> None:
    """`algorithm` is one the key takes, else InvalidKeyUsageException in AWS's recorded words
    (an Encrypt with an RSA key and the default algorithm: "Algorithm SYMMETRIC_DEFAULT is
    incompatible with key spec RSA_4096.")."""
    if algorithm not in allowed:
        raise InvalidKeyUsageException(
            f"Algorithm {algorithm} is incompatible with key spec {spec}."
        )


def _signing_input(
    algorithm: str, message: bytes, mtype: str, spec: str
) -> tuple[hashes.HashAlgorithm, bytes, hashes.HashAlgorithm | utils.Prehashed]:
    """Check the message: (hash, data to sign, hash or Prehashed for `data`)."""
    if mtype not in ("RAW", "DIGEST"):  # EXTERNAL_MU is ML-DSA's
        raise _message_type(mtype, spec)
    h = _hash_of(algorithm)
    data, prehashed = _message(message, mtype, h, algorithm)
    return h, data, utils.Prehashed(h) if prehashed else h


def _ed25519_message(algorithm: str, message: bytes, mtype: str) -> bytes:
    """What Ed25519 signs: for ED25519_SHA_512 a RAW message (pure Ed25519 hashes it itself);
    for ED25519_PH_SHA_512 a DIGEST of SHA-512's length, which Ed25519ph hashes again (AWS:
    "the input is hashed twice: once by you and once by KMS")."""
    if algorithm == ED25519_PH_SHA_512:
        if mtype != "DIGEST":
            raise ValidationException(
                f"The {algorithm} signing algorithm requires MessageType DIGEST, not {mtype}"
            )
        return _message(message, mtype, hashes.SHA512(), algorithm)[0]
    if mtype != "RAW":
        raise ValidationException(
            f"The {algorithm} signing algorithm requires MessageType RAW, not {mtype}"
        )
    return _message(message, mtype, hashes.SHA512(), algorithm)[0]


def _ed25519ph_state(data: bytes) -> Any:
    """libsodium's Ed25519ph state over `data` (it computes the SHA-512 prehash itself)."""
    from nacl.bindings import crypto_sign_ed25519ph_state, crypto_sign_ed25519ph_update

    state = crypto_sign_ed25519ph_state()
    crypto_sign_ed25519ph_update(state, data)
    return state


def _ed25519_raw(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _ed25519ph_sign(private: ed25519.Ed25519PrivateKey, data: bytes) -> bytes:
    from nacl.bindings import crypto_sign_ed25519ph_final_create

    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    # libsodium's secret key is the seed and the public key
    return bytes(
        crypto_sign_ed25519ph_final_create(_ed25519ph_state(data), seed + _ed25519_raw(private))
    )


def _ed25519ph_verify(public: ed25519.Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    from nacl.bindings import crypto_sign_ed25519ph_final_verify
    from nacl.exceptions import BadSignatureError

    if len(signature) != 64:
        return False
    try:
        return bool(
            crypto_sign_ed25519ph_final_verify(
                _ed25519ph_state(data), signature, _ed25519_raw(public)
            )
        )
    except BadSignatureError:
        return False


def _message_type(mtype: str, spec: str) -> ValidationException:
    """A MessageType the key's spec does not take, in AWS's recorded words."""
    return ValidationException(f"Message type {mtype} is incompatible with key spec {spec}.")


def _ml_dsa_message(
    algorithm: str, message: bytes, mtype: str, spec: str
) -> tuple[bytes, bool]:
    """(message or mu, is mu): ML_DSA_SHAKE_256 signs a RAW message (pure ML-DSA, empty
    context) or a 64-byte EXTERNAL_MU (FIPS 204 section 6.2's representative); no DIGEST."""
    if mtype == "EXTERNAL_MU":
        if len(message) != MU_LENGTH:
            raise ValidationException(f"An EXTERNAL_MU Message must be {MU_LENGTH} bytes")
        return message, True
    if mtype != "RAW":
        raise _message_type(mtype, spec)
    return _message(message, mtype, hashes.SHA512(), algorithm)[0], False


def sign(
    private: PrivateKeyTypes, algs: Algorithms, algorithm: str, message: bytes, mtype: str
) -> bytes:
    check_algorithm(algorithm, algs.signing, algs.spec)
    if _ml_dsa_key(private):
        data, mu = _ml_dsa_message(algorithm, message, mtype, algs.spec)
        ml: Any = private
        return bytes(ml.sign_mu(data) if mu else ml.sign(data))
    if isinstance(private, ed25519.Ed25519PrivateKey):
        data = _ed25519_message(algorithm, message, mtype)
        if algorithm == ED25519_PH_SHA_512:
            return _ed25519ph_sign(private, data)
        return private.sign(data)
    h, data, alg = _signing_input(algorithm, message, mtype, algs.spec)
    if isinstance(private, rsa.RSAPrivateKey):
        pad = _rsa_sign_padding(algorithm, h)
        return private.sign(data, pad, alg)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return private.sign(data, ec.ECDSA(alg))


def _rsa_sign_padding(algorithm: str, h: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    if algorithm.startswith("RSASSA_PSS"):
        return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
    return padding.PKCS1v15()


def verify(
    public: PublicKeyTypes,
    algs: Algorithms,
    algorithm: str,
    message: bytes,
    mtype: str,
    signature: bytes,
) -> bool:
    check_algorithm(algorithm, algs.signing, algs.spec)
    if _ml_dsa_key(public):
        data, mu = _ml_dsa_message(algorithm, message, mtype, algs.spec)
        ml: Any = public
        try:
            (ml.verify_mu if mu else ml.verify)(signature, data)
        except InvalidSignature:
            return False
        return True
    if isinstance(public, ed25519.Ed25519PublicKey):
        data = _ed25519_message(algorithm, message, mtype)
        if algorithm == ED25519_PH_SHA_512:
            return _ed25519ph_verify(public, data, signature)
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return False
        return True
    h, data, alg = _signing_input(algorithm, message, mtype, algs.spec)
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, _rsa_sign_padding(algorithm, h), alg)
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(signature, data, ec.ECDSA(alg))
    except InvalidSignature:
        return False
    return True


def _oaep(algorithm: str) -> padding.OAEP:
    h = _hash_of(algorithm)
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def rsa_max_plaintext(private: rsa.RSAPrivateKey, algorithm: str) -> int:
    return private.key_size // 8 - 2 * _hash_of(algorithm).digest_size - 2


def rsa_encrypt(
    private: PrivateKeyTypes, algs: Algorithms, algorithm: str, plaintext: bytes
) -> bytes:
    check_algorithm(algorithm, algs.encryption, algs.spec)
    assert isinstance(private, rsa.RSAPrivateKey)
    limit = rsa_max_plaintext(private, algorithm)
    if not 1 <= len(plaintext) <= limit:
        raise ValidationException(  # AWS's words
            f"Algorithm {algorithm} and key spec RSA_{private.key_size} cannot encrypt data "
            f"larger than {limit} bytes."
        )
    return private.public_key().encrypt(plaintext, _oaep(algorithm))


def rsa_decrypt(
    private: PrivateKeyTypes, algs: Algorithms, algorithm: str, ciphertext: bytes
) -> bytes:
    check_algorithm(algorithm, algs.encryption, algs.spec)
    assert isinstance(private, rsa.RSAPrivateKey)
    try:
        return private.decrypt(ciphertext, _oaep(algorithm))
    except ValueError:
        raise InvalidCiphertextException("the ciphertext does not decrypt under this key") from None


def mac(material: bytes, algs: Algorithms, algorithm: str, message: bytes) -> bytes:
    check_algorithm(algorithm, algs.mac, algs.spec)
    if not 1 <= len(message) <= MAX_MESSAGE:
        raise ValidationException(f"Message must be 1..{MAX_MESSAGE} bytes")
    return hmac.digest(material, message, algorithm.rsplit("_", 2)[1].lower() + _bits(algorithm))


def _bits(algorithm: str) -> str:
    return algorithm.rsplit("_", 1)[1]


def unwrap_import(private: rsa.RSAPrivateKey, algorithm: str, blob: bytes) -> bytes:
    """Unwrap imported material (RSAES_OAEP_SHA_1/256 or RSA_AES_KEY_WRAP_SHA_1/256)."""
    from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

    oaep = _oaep(algorithm)
    try:
        if algorithm.startswith("RSAES_OAEP"):
            return private.decrypt(blob, oaep)
        k = private.key_size // 8
        aes_key = private.decrypt(blob[:k], oaep)
        return aes_key_unwrap_with_padding(aes_key, blob[k:])
    except (ValueError, InvalidUnwrap):
        raise InvalidCiphertextException(
            "EncryptedKeyMaterial does not unwrap with this import token's wrapping key"
        ) from None


def derive_shared_secret(
    private: PrivateKeyTypes,
    algs: Algorithms,
    algorithm: str,
    peer: ec.EllipticCurvePublicKey,
) -> bytes:
    """ECDH of the key's private key and a peer's public key (`load_peer_public_key`): the
    x-coordinate of the shared point, as AWS returns it (no KDF applied).

    The NIST curves have cofactor 1, so this is the cofactor Diffie-Hellman primitive AWS names
    (SP 800-56A r3, 5.7.1.2)."""
    check_algorithm(algorithm, algs.key_agreement, algs.spec)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    if peer.curve.name != private.curve.name:
        raise ValidationException(
            f"PublicKey is on {peer.curve.name}, not on {private.curve.name}: "
            "both key pairs must use the same elliptic curve"
        )
    return private.exchange(ec.ECDH(), peer)


def load_peer_public_key(der: bytes) -> ec.EllipticCurvePublicKey:
    """A peer's public key for key agreement: DER SubjectPublicKeyInfo of an elliptic-curve key
    (the point is checked to lie on its curve), else ValidationException."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValidationException(
            "PublicKey must be a DER-encoded X.509 SubjectPublicKeyInfo (a base64 text or a PEM "
            "file is not DER)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValidationException("PublicKey must be an elliptic curve (ECC) public key")
    return key
