"""Root keys: the one secret that protects every key at rest in the store.

The store never sees the root key itself, only a `RootKey` that can `seal` and `unseal` small
blobs bound to an AAD (the key id and version of what is sealed), so a later provider can keep
the root key inside an HSM and implement the same two calls there. Two providers ship:

* `FileRootKey`: 32 random bytes in a file, created with ``O_EXCL`` and mode 0600 the first time
  a store is initialised (never re-created for an existing store: a missing file is an error;
  and a new store is never created under an existing file: that file's store was lost).
* `PassphraseRootKey`: a passphrase stretched with scrypt over a random salt kept in the store,
  with N=2**17, r=8, p=1 (OWASP's password storage cheat sheet) for new stores. The parameters
  are kept in the store beside the salt (``root_kdf``); a store written before they were kept
  was made with N=2**15 and is opened with it.
* `Pkcs11RootKey`: an AES-256 key inside a PKCS#11 token (an HSM), named by a ``pkcs11:`` URI
  (``$ENVELOPE_ROOT_KEY``); `seal` and `unseal` run AES-GCM in the token, so the root key is
  never in this process's memory. The sealed blob is the same as the others' (below).

A root-key file readable by group or others is a leak waiting to happen: opening one warns
(`InsecureRootKeyWarning`) and, in strict mode (``strict=True`` or ``$ENVELOPE_STRICT=1``; the
CLI's ``--strict``), is refused with `RootKeyError`.

Sealed blob::

    0x01 || nonce(12) || AES-256-GCM(root, nonce, data, AAD = "envelope/kms/root/v1" || aad)
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..printable import is_utf8
from .errors import RootKeyError

if TYPE_CHECKING:
    from ..pkcs11 import Token
    from ..pkcs11.uri import Pkcs11Uri

__all__ = (
    "AesRootKey",
    "FileRootKey",
    "InsecureRootKeyWarning",
    "PassphraseRootKey",
    "Pkcs11RootKey",
    "RootKey",
    "RootKeyProvider",
    "strict_from_environment",
)

_AAD_PREFIX = b"envelope/kms/root/v1"
_VERSION = b"\x01"
ROOT_KEY_LEN = 32
#: scrypt cost for new passphrase stores: OWASP's recommendation (N=2**17, r=8, p=1).
SCRYPT_N = 1 << 17
#: What every passphrase store was made with before the parameters were kept in the store.
LEGACY_SCRYPT_N = 1 << 15
#: Bounds on stored parameters (a tampered store must not make us allocate without limit).
_MAX_SCRYPT_N = 1 << 20


class InsecureRootKeyWarning(UserWarning):
    """The root-key file is readable or writable by group or others (or the folder holding it
    and the store is writable by them: they could replace either)."""


def strict_from_environment() -> bool:
    """``$ENVELOPE_STRICT`` set to 1/true/yes: refuse what is otherwise only warned about."""
    return os.environ.get("ENVELOPE_STRICT", "").strip().lower() in ("1", "true", "yes", "on")


class RootKey(Protocol):
    """Seal and unseal blobs under the root key; `unseal` raises `RootKeyError` on any mismatch."""

    def seal(self, data: bytes, aad: bytes) -> bytes: ...

    def unseal(self, blob: bytes, aad: bytes) -> bytes: ...


class RootKeyProvider(Protocol):
    """Where the root key comes from.

    `salt` is the store's; `create` is true only while a new store is being initialised.
    """

    @property
    def description(self) -> str: ...

    def open(self, salt: bytes, *, create: bool) -> RootKey: ...


class AesRootKey:
    """A root key held in this process's memory (never in a repr)."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != ROOT_KEY_LEN:
            raise RootKeyError(f"a root key is {ROOT_KEY_LEN} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "AesRootKey(<secret>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("root keys cannot be pickled")

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, data, _AAD_PREFIX + aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 29 or blob[:1] != _VERSION:
            raise RootKeyError("a sealed value in the store is malformed")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], _AAD_PREFIX + aad)
        except InvalidTag:
            raise RootKeyError(
                "the root key does not open this store (wrong root key file or passphrase)"
            ) from None


class FileRootKey:
    """A 32-byte root key in a file (mode 0600); created on first use of a new store only."""

    def __init__(self, path: str | os.PathLike[str], *, strict: bool | None = None) -> None:
        self.path = Path(path)
        #: Refuse (instead of warn about) a file readable by group or others; None: from
        #: ``$ENVELOPE_STRICT``.
        self.strict = strict_from_environment() if strict is None else strict

    def __repr__(self) -> str:
        return f"FileRootKey({str(self.path)!r})"

    @property
    def description(self) -> str:
        return f"root-key file {self.path}"

    def open(self, salt: bytes, *, create: bool) -> RootKey:
        if create:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                # Store creation is serialised per folder, so this root key belongs to a store
                # that is gone: a new store under it would hide the loss (issue 8, finding 4).
                raise RootKeyError(
                    f"root-key file {self.path} exists but its store does not: the store was "
                    "deleted or moved. A new store is not created under an old root key; "
                    "restore the store from a backup, or move the root-key file away to start "
                    "a new, empty KMS."
                ) from None
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(os.urandom(ROOT_KEY_LEN))
                    f.flush()
                    os.fsync(f.fileno())
        try:
            self._check_mode()
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise RootKeyError(
                f"root-key file {self.path} is missing; the store cannot be opened without it"
            ) from None
        except OSError as e:
            raise RootKeyError(f"cannot read root-key file {self.path}: {e.strerror}") from None
        if len(data) != ROOT_KEY_LEN:
            raise RootKeyError(f"root-key file {self.path} is not {ROOT_KEY_LEN} bytes")
        return AesRootKey(data)

    def _check_mode(self) -> None:
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        if not mode & 0o077:
            return
        message = (
            f"root-key file {self.path} is accessible by group or others (mode {mode:04o}); "
            f"anyone who can read it can open every key in the store: chmod 600 {self.path}"
        )
        if self.strict:
            raise RootKeyError(message + " (refused in strict mode)")
        warnings.warn(message, InsecureRootKeyWarning, stacklevel=4)


class PassphraseRootKey:
    """A root key stretched from a passphrase with scrypt over the store's salt.

    `n` is the scrypt cost for a new store, and for an old store that kept no parameters
    (default: `LEGACY_SCRYPT_N`, what those stores were made with). A store that kept its
    parameters is always opened with them.
    """

    def __init__(self, passphrase: str | bytes, *, n: int | None = None) -> None:
        if not passphrase:
            raise RootKeyError("an empty passphrase cannot be a root key")
        if isinstance(passphrase, str) and not is_utf8(passphrase):
            raise RootKeyError(
                "the passphrase is not UTF-8 text (its environment variable holds bytes of "
                "another encoding)"
            )
        self._passphrase = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        self._n = n

    def __repr__(self) -> str:
        return "PassphraseRootKey(<secret>)"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a passphrase root key cannot be pickled")

    @property
    def description(self) -> str:
        return "scrypt passphrase"

    def parameters(self) -> bytes:
        """The KDF parameters a new store keeps beside its salt (``root_kdf``)."""
        n = self._n if self._n is not None else SCRYPT_N
        return json.dumps({"kdf": "scrypt", "n": n, "r": 8, "p": 1}, sort_keys=True).encode()

    def open(self, salt: bytes, *, create: bool, parameters: bytes | None = None) -> RootKey:
        """`parameters`: the store's ``root_kdf`` (None: a store from before they were kept)."""
        if parameters is None:
            n, r, p = (self._n if self._n is not None else LEGACY_SCRYPT_N), 8, 1
        else:
            n, r, p = _scrypt_parameters(parameters)
        kdf = Scrypt(salt=salt, length=ROOT_KEY_LEN, n=n, r=r, p=p)
        return AesRootKey(kdf.derive(self._passphrase))


class Pkcs11RootKey:
    """The root key is an AES-256 key in a PKCS#11 token, named by a ``pkcs11:`` URI::

        pkcs11:token=envelope;object=envelope-root?module-path=/usr/lib/softhsm/libsofthsm2.so

    The PIN comes from the URI's ``pin-source=file:/path`` or ``$ENVELOPE_HSM_PIN``. A new store
    uses the key if the token has it (an HSM administrator may have made it) and makes it
    otherwise (sensitive, not extractable, encrypt/decrypt only); an existing store needs it.
    A key that can leave the token (extractable, or not sensitive) is refused either way.
    """

    def __init__(self, uri: str) -> None:
        from ..errors import ConfigurationError
        from ..pkcs11.uri import parse_pkcs11_uri

        try:
            self.uri: Pkcs11Uri = parse_pkcs11_uri(uri)
        except ConfigurationError as e:
            raise RootKeyError(f"bad pkcs11: root-key URI: {e}") from None
        if self.uri.object is None:
            raise RootKeyError("a pkcs11: root-key URI names its key (object=label)")
        self.label: str = self.uri.object

    def __repr__(self) -> str:
        return f"Pkcs11RootKey({str(self.uri)!r})"

    @property
    def description(self) -> str:
        return f"PKCS#11 key {self.label!r} in token {self.uri.token!r} ({self.uri.module})"

    def open(self, salt: bytes, *, create: bool) -> RootKey:
        from ..errors import ConfigurationError
        from ..pkcs11 import Token, TokenError

        try:
            token = Token.open(self.uri.config())
        except (ConfigurationError, TokenError) as e:
            raise RootKeyError(f"the root key's token cannot be opened: {e}") from None
        try:
            if not token.has_key(self.label):
                if not create:
                    raise RootKeyError(
                        f"the root key {self.label!r} is not in token {self.uri.token!r}: the "
                        "store cannot be opened without it"
                    )
                token.create_aes_key(self.label)
            attributes = token.key_attributes(self.label)
        except TokenError as e:
            raise RootKeyError(f"the root key's token failed: {e}") from None
        if (
            attributes.get("key_type") != "AES"
            or attributes.get("value_len") != ROOT_KEY_LEN
            or attributes.get("extractable") is not False
            or attributes.get("sensitive") is not True
            or not (attributes.get("encrypt") and attributes.get("decrypt"))
        ):
            raise RootKeyError(
                f"the token key {self.label!r} cannot be a root key: it must be AES-256, "
                "sensitive, not extractable, and allowed to encrypt and decrypt"
            )
        if not (
            attributes.get("local") is True
            and attributes.get("always_sensitive") is True
            and attributes.get("never_extractable") is True
        ):
            # a key imported into the token has a value someone outside it knew: what it
            # seals opens with that copy (it was taken; review), as the store keys refuse
            raise RootKeyError(
                f"the token key {self.label!r} cannot be a root key: it was not generated in "
                "the token (CKA_LOCAL, CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE must all "
                "be true): a key imported with a known value could open what it seals"
            )
        return _TokenRootKey(token, self.label)


class _TokenRootKey:
    """`seal`/`unseal` by the token: the same blob as `AesRootKey`'s, made inside the HSM."""

    __slots__ = ("_label", "_token")

    def __init__(self, token: Token, label: str) -> None:
        self._token = token
        self._label = label

    def __repr__(self) -> str:
        return f"_TokenRootKey({self._label!r})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("root keys cannot be pickled")

    def seal(self, data: bytes, aad: bytes) -> bytes:
        from ..pkcs11 import TokenError

        try:
            iv, ciphertext, tag = self._token.encrypt(self._label, data, _AAD_PREFIX + aad)
        except TokenError as e:
            raise RootKeyError(f"the root key's token failed to seal: {e}") from None
        return _VERSION + iv + ciphertext + tag

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        from ..pkcs11 import TokenDecryptError, TokenError

        if len(blob) < 29 or blob[:1] != _VERSION:
            raise RootKeyError("a sealed value in the store is malformed")
        try:
            return self._token.decrypt(
                self._label, blob[1:13], blob[13:-16], blob[-16:], _AAD_PREFIX + aad
            )
        except TokenDecryptError:
            raise RootKeyError("the root key does not open this store (wrong token key)") from None
        except TokenError as e:
            raise RootKeyError(f"the root key's token failed to unseal: {e}") from None


def _scrypt_parameters(raw: bytes) -> tuple[int, int, int]:
    try:
        d = json.loads(raw)
    except ValueError:
        d = None
    if not isinstance(d, Mapping) or d.get("kdf") != "scrypt":
        raise RootKeyError("the store's root-key KDF parameters are malformed")
    n, r, p = d.get("n"), d.get("r"), d.get("p")
    if not (
        isinstance(n, int)
        and isinstance(r, int)
        and isinstance(p, int)
        and 2 <= n <= _MAX_SCRYPT_N
        and n & (n - 1) == 0
        and 1 <= r <= 32
        and 1 <= p <= 16
        and n * r * p <= _MAX_SCRYPT_N * 8
    ):
        raise RootKeyError("the store's root-key KDF parameters are out of bounds")
    return n, r, p
