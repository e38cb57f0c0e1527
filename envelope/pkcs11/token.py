"""`Token`: AES-256 keys that live in a PKCS#11 token, and AES-GCM that runs inside it.

    token = Token.open(TokenConfig("/usr/lib/softhsm/libsofthsm2.so", "envelope", pin))
    token.create_aes_key("k1")                      # sensitive, never extractable
    iv, ciphertext, tag = token.encrypt("k1", plaintext, aad)
    assert token.decrypt("k1", iv, ciphertext, tag, aad) == plaintext

**Sharing.** `Token.open` returns the same object for the same configuration in one process
(counted: the last `close` closes it). Any number of threads may call it at once: each call
borrows one session from a pool (`pool.SessionPool`, `TokenConfig.pool_size` sessions), and the
module itself was initialised with CKF_OS_LOCKING_OK and logged in once for the process (see
`library`). Any number of processes may use the same token: each has its own initialisation,
login and pool. A `Token` used in a forked child notices (the fork generation changed) and
connects again there before its first call: new initialisation, login, pool and handle cache.

**Key handles.** Keys are named by their label (CKA_LABEL). The object handle a label resolves
to is cached per process, so a call costs ``C_EncryptInit`` + ``C_Encrypt`` and no search. A
handle is only valid in the process that found it; when the key was destroyed meanwhile (by
another process), the token answers CKR_KEY_HANDLE_INVALID or CKR_OBJECT_HANDLE_INVALID and
the label is looked up once more.

**Retries.** A call is tried again, on a fresh session or after logging in again, when the
token says the session is gone (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED), an operation
was left active, the handle is stale, or the login was lost (CKR_USER_NOT_LOGGED_IN).

Every call is timed into ``envelope_hsm_call_seconds{op,outcome}`` (`metrics`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Final, TypeVar

from ..errors import ClosedError, ConfigurationError
from . import metrics
from .config import TokenConfig
from .cryptoki import GCM_IV_LEN, GCM_TAG_LEN, CallFailed, Cryptoki, rv
from .errors import (
    KeyAlreadyInToken,
    KeyNotInToken,
    KeyNotProtected,
    TokenDecryptError,
    TokenError,
    TokenListingError,
    TokenUnavailable,
)
from .failures import from_exception, from_rv, rv_of
from .library import Library, fork_generation
from .pool import SessionPool

__all__ = ("KeyHandle", "Token", "probe_token")

T = TypeVar("T")

_KEY_BYTES: Final = 32
_MAX_LABEL_BYTES: Final = 128
_MAX_RANDOM: Final = 1 << 20
_MAX_PLAINTEXT: Final = 1 << 26  # one C_Encrypt; AWS caps Encrypt at 4 KiB anyway

#: One call may meet a stale handle, then a lost login (the stale handle was the first sign of
#: it), then succeed: three attempts at most.
_ATTEMPTS: Final = 3
_USER_NOT_LOGGED_IN: Final = rv("CKR_USER_NOT_LOGGED_IN")
_STALE_HANDLE: Final = frozenset({rv("CKR_KEY_HANDLE_INVALID"), rv("CKR_OBJECT_HANDLE_INVALID")})
#: After these the session is closed rather than lent again.
_BROKEN_SESSION: Final = frozenset(
    {
        rv("CKR_SESSION_HANDLE_INVALID"),
        rv("CKR_SESSION_CLOSED"),
        rv("CKR_OPERATION_ACTIVE"),
        rv("CKR_DEVICE_REMOVED"),
        rv("CKR_DEVICE_ERROR"),
        rv("CKR_TOKEN_NOT_PRESENT"),
    }
)
_RETRY_ONCE: Final = frozenset(
    {
        rv("CKR_SESSION_HANDLE_INVALID"),
        rv("CKR_SESSION_CLOSED"),
        rv("CKR_OPERATION_ACTIVE"),
        _USER_NOT_LOGGED_IN,
        *_STALE_HANDLE,
    }
)
#: C_GenerateKey failures that a second attempt cures: SoftHSM2 can lose a new object's
#: attributes when another process changes the token at that moment (and answers
#: CKR_TEMPLATE_INCONSISTENT for a template that is consistent).
_CREATE_RETRY: Final = frozenset(
    {rv("CKR_TEMPLATE_INCONSISTENT"), rv("CKR_GENERAL_ERROR"), rv("CKR_FUNCTION_FAILED")}
)
_GENERAL_ERROR: Final = rv("CKR_GENERAL_ERROR")
_GENERAL: Final = frozenset({_GENERAL_ERROR})
#: What C_Decrypt answers when the GCM tag does not verify: SoftHSM2 says CKR_GENERAL_ERROR.
_BAD_TAG: Final = frozenset(
    {
        rv("CKR_ENCRYPTED_DATA_INVALID"),
        rv("CKR_ENCRYPTED_DATA_LEN_RANGE"),
        rv("CKR_GENERAL_ERROR"),
    }
)


@dataclass(frozen=True)
class KeyHandle:
    """A key made in the token. `handle` is valid in this process only; `label` names the key
    everywhere, and `key_id` (CKA_ID, 16 random bytes) tells two keys of one label apart."""

    label: str
    handle: int
    key_id: bytes


class _Retry(Exception):
    """The attempt failed in a way a second attempt may not (internal to `Token._run`)."""


class _Session:
    """A pooled python-pkcs11 session and its raw handle (for the ctypes calls)."""

    __slots__ = ("handle", "p11")

    def __init__(self, p11: Any) -> None:
        self.p11 = p11
        self.handle = int(p11.handle)


_tokens_lock = threading.Lock()
_tokens: dict[TokenConfig, Token] = {}


def _after_fork_in_child() -> None:
    global _tokens_lock
    _tokens_lock = threading.Lock()
    for token in _tokens.values():
        token._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Token:
    """A PKCS#11 token holding AES-256 keys (see the module docstring). Make with `open`."""

    def __init__(self, config: TokenConfig, library: Library) -> None:
        self.config = config
        self._library = library
        self._lock = threading.RLock()
        self._create_lock = threading.Lock()
        self._users = 0
        self._closed = False
        # what the connection was made under: a fork or a rescan of the module voids it
        self._generation = -1
        self._epoch = -1
        self._p11token: Any = None
        self._slot_id = -1
        self._pool: SessionPool[_Session] | None = None
        self._handles: dict[str, int] = {}
        self._handles_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Token(module={self.config.module!r}, label={self.config.token_label!r})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a token holds a logged-in PIN and cannot be pickled")

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    def open(cls, config: TokenConfig) -> Token:
        """The process's `Token` for `config`, connected: the module loaded and initialised,
        the token found by its label, the process logged in. `TokenUnavailable` otherwise.

        A label the module does not list makes the module start over once (`Library.rescan`:
        it may be a token made since the module was initialised) before CLUSTER_NOT_FOUND."""
        with _tokens_lock:
            token = _tokens.get(config)
            if token is None:
                library = Library.load(config.module)
                token = cls(config, library)
                token._timed("connect", token._first_connect)
                _tokens[config] = token
            token._users += 1
        return token

    def _first_connect(self) -> None:
        try:
            self._in_module(self._ensure)
        except _OtherPinRefused:
            # the process was logged in with another PIN, and the token refused this one: a
            # module may hold a PIN changed since it was initialised (SoftHSM2 reads it once),
            # so it starts over once before the PIN is called wrong (after a PIN rotation
            # the store could not connect until the process restarted; review)
            self._library.rescan()
            self._in_module(self._ensure)
        except TokenUnavailable as e:
            if e.code != "CLUSTER_NOT_FOUND":
                raise
            self._library.rescan()
            self._in_module(self._ensure)
        except TokenListingError:
            # the module could not even list its tokens: SoftHSM2 answers CKR_GENERAL_ERROR
            # for ever once a token's files were deleted under it, until it starts over (a
            # connect failed with INTERNAL_ERROR until the process restarted, even after the
            # token was made again); only then, as a rescan ends every session of the module
            self._library.rescan()
            self._in_module(self._ensure)

    def close(self) -> None:
        """Let go of this `Token`; the last user closes its sessions and logs the process out
        (if no other `Token` of the process still uses that login)."""
        with _tokens_lock:
            if self._users > 0:
                self._users -= 1
            if self._users > 0:
                return
            if _tokens.get(self.config) is self:
                del _tokens[self.config]
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is None:
            return

        def shut() -> None:
            # in this process and this initialisation of the module only: after a fork or a
            # rescan the sessions and the login are not there to close
            if self._current():
                pool.close()
                self._library.logout(self._slot_id)

        self._in_module(shut)

    def _after_fork(self) -> None:
        # nothing of the parent's is closed or logged out here: its sessions are not ours
        self._lock = threading.RLock()
        self._create_lock = threading.Lock()
        self._pool = None
        self._handles = {}
        self._handles_lock = threading.Lock()

    def _current(self) -> bool:
        return self._generation == fork_generation() and self._epoch == self._library.epoch

    def _in_module(self, call: Callable[[], T]) -> T:
        """`call` counted as a call in flight, so that a rescan waits for it."""
        library = self._library
        library.enter()
        try:
            return call()
        finally:
            library.leave()

    def _ensure(self) -> SessionPool[_Session]:
        """The session pool, connecting first when there is none for this process and this
        initialisation of the module. Called between `enter` and `leave`."""
        pool = self._pool
        if pool is not None and self._current():
            return pool
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self!r} was closed")
            if self._pool is None or not self._current():
                self._connect()
            assert self._pool is not None
            return self._pool

    def _connect(self) -> None:
        library = self._library
        library.ensure_initialised()
        epoch = library.epoch
        p11token = library.find_token(self.config.token_label)
        _check_mechanisms(p11token, self.config.token_label)
        slot_id = int(p11token.slot.slot_id)
        had_login = library.is_logged_in(slot_id)
        try:
            library.login(slot_id, p11token, self.config.pin)
        except TokenUnavailable as e:
            if had_login and e.code == "INVALID_CREDENTIALS":
                raise _OtherPinRefused(e.code, e.message) from None
            raise
        self._p11token, self._slot_id = p11token, slot_id
        self._handles = {}
        self._pool = SessionPool(
            lambda: _Session(library.open_session(p11token)),
            lambda s: s.p11.close(),
            self.config.pool_size,
        )
        self._generation, self._epoch = fork_generation(), epoch

    @property
    def _cryptoki(self) -> Cryptoki:
        return self._library.cryptoki

    # -- calls -----------------------------------------------------------------------------

    def check(self) -> None:
        """A cheap liveness call (``C_GetSessionInfo``): the token answers and this process is
        logged in (logging in again if the token forgot). `TokenUnavailable` otherwise."""

        def run(session: _Session) -> None:
            state = self._cryptoki.session_state(session.handle)
            if not Cryptoki.is_user_state(state):
                raise CallFailed("C_GetSessionInfo", _USER_NOT_LOGGED_IN)

        self._timed("check", lambda: self._run(run))

    def create_aes_key(self, label: str) -> KeyHandle:
        """A new AES-256 key in the token: CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not
        extractable, not modifiable, ENCRYPT and DECRYPT only (no WRAP, UNWRAP, DERIVE, SIGN,
        VERIFY). `KeyAlreadyInToken` if the label is taken (labels are checked in this process;
        two processes creating one label at once can both succeed, so give labels that are
        unique by construction, such as key ids)."""
        _check_label(label)
        key_id = os.urandom(16)

        def run(session: _Session) -> KeyHandle:
            from pkcs11 import Attribute, KeyType, MechanismFlag

            existing = self._objects(session, label)
            mine = [o for o in existing if bytes(o[Attribute.ID]) == key_id]
            if len(mine) < len(existing):
                raise KeyAlreadyInToken(label)
            for leftover in mine:  # what a failed attempt of this very call left behind
                leftover.destroy()

            key = session.p11.generate_key(
                KeyType.AES,
                _KEY_BYTES * 8,
                id=key_id,
                label=label,
                store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template=_key_template(),
            )
            handle = int(key.handle)
            self._remember(label, handle)
            return KeyHandle(label, handle, key_id)

        with self._create_lock:
            return self._timed("create_key", lambda: self._run(run, retry=_CREATE_RETRY))

    def has_key(self, label: str, key_id: bytes | None = None) -> bool:
        """Whether the token holds the key `label` (with `key_id`: that very key, made by
        `create_aes_key` and still as protected as it made it; see `_one_object`)."""
        _check_label(label)

        def run(session: _Session) -> bool:
            if key_id is None:
                return bool(self._objects(session, label))
            try:
                self._one_object(session, label, key_id)
            except KeyNotInToken:
                return False
            return True

        return self._timed("find_key", lambda: self._run(run))

    def destroy_key(self, label: str, key_id: bytes | None = None) -> None:
        """Destroy the key in the token (`KeyNotInToken` if there is none; with `key_id`, only
        that key: another one given the label is left alone)."""
        _check_label(label)

        def run(session: _Session) -> None:
            obj = self._one_object(session, label, key_id, protected=False)
            self._forget(label)
            obj.destroy()

        self._timed("destroy_key", lambda: self._run(run))

    def list_keys(self) -> list[str]:
        """The labels of the secret keys in the token, sorted."""

        def run(session: _Session) -> list[str]:
            from pkcs11 import Attribute, ObjectClass

            objects = session.p11.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
            keys = {(str(o[Attribute.LABEL]), bytes(o[Attribute.ID]) or o.handle) for o in objects}
            return sorted(label for label, _ in keys)

        return self._timed("list_keys", lambda: self._run(run))

    def key_attributes(self, label: str) -> dict[str, object]:
        """What the token says of the key: the protections (sensitive, extractable, ...), what
        it may be used for, its type and length, its CKA_ID (hex) and its handle."""
        _check_label(label)

        def run(session: _Session) -> dict[str, object]:
            from pkcs11 import Attribute

            obj = self._one_object(session, label)
            names = {
                Attribute.TOKEN: "token",
                Attribute.PRIVATE: "private",
                Attribute.SENSITIVE: "sensitive",
                Attribute.EXTRACTABLE: "extractable",
                Attribute.ALWAYS_SENSITIVE: "always_sensitive",
                Attribute.NEVER_EXTRACTABLE: "never_extractable",
                Attribute.MODIFIABLE: "modifiable",
                Attribute.LOCAL: "local",
                Attribute.ENCRYPT: "encrypt",
                Attribute.DECRYPT: "decrypt",
                Attribute.WRAP: "wrap",
                Attribute.UNWRAP: "unwrap",
                Attribute.DERIVE: "derive",
                Attribute.SIGN: "sign",
                Attribute.VERIFY: "verify",
                Attribute.VALUE_LEN: "value_len",
                Attribute.KEY_TYPE: "key_type",
                Attribute.CLASS: "class",
                Attribute.ID: "key_id",
                Attribute.LABEL: "label",
            }
            values = obj.get_attributes(list(names))
            out: dict[str, object] = {}
            for attribute, name in names.items():
                if attribute not in values:
                    continue
                value = values[attribute]
                if name == "key_id":
                    value = bytes(value).hex()
                elif name in ("key_type", "class"):
                    value = getattr(value, "name", value)
                elif name == "value_len":
                    value = int(value)
                elif name != "label":
                    value = bool(value)
                out[name] = value
            out["handle"] = int(obj.handle)
            return out

        return self._timed("key_attributes", lambda: self._run(run))

    def encrypt(
        self, label: str, plaintext: bytes, aad: bytes, *, key_id: bytes | None = None
    ) -> tuple[bytes, bytes, bytes]:
        """AES-256-GCM inside the token under the key `label`: (iv, ciphertext, tag), with a
        random 12-byte IV and a 16-byte tag. With `key_id` (the CKA_ID `create_aes_key` gave),
        only that key, as protected as it was made, is used (`_one_object`)."""
        if len(plaintext) > _MAX_PLAINTEXT:
            raise ConfigurationError(f"one token encryption takes at most {_MAX_PLAINTEXT} bytes")

        def run(session: _Session) -> tuple[bytes, bytes, bytes]:
            key = self._handle(session, label, key_id)
            return self._cryptoki.encrypt_gcm(
                session.handle, key, os.urandom(GCM_IV_LEN), bytes(plaintext), bytes(aad)
            )

        return self._timed("encrypt", lambda: self._run(run, label))

    def decrypt(
        self,
        label: str,
        iv: bytes,
        ciphertext: bytes,
        tag: bytes,
        aad: bytes,
        *,
        key_id: bytes | None = None,
    ) -> bytes:
        """The plaintext, or `TokenDecryptError` when the tag does not verify (whatever was
        altered: IV, ciphertext, tag, AAD, or another key). `key_id` as for `encrypt`."""

        general_errors = 0

        def run(session: _Session) -> bytes:
            nonlocal general_errors
            if len(iv) != GCM_IV_LEN or len(tag) != GCM_TAG_LEN:
                raise TokenDecryptError(
                    f"an AES-GCM ciphertext here has a {GCM_IV_LEN}-byte IV and a "
                    f"{GCM_TAG_LEN}-byte tag"
                )
            key = self._handle(session, label, key_id)
            try:
                return self._cryptoki.decrypt_gcm(
                    session.handle, key, bytes(iv), bytes(ciphertext), bytes(tag), bytes(aad)
                )
            except CallFailed as e:
                if e.function == "C_Decrypt" and e.rv in _BAD_TAG:
                    if e.rv == _GENERAL_ERROR and not general_errors:
                        # SoftHSM2's answer to a bad tag, but also to a passing fault: one more
                        # try tells them apart (a bad tag fails again)
                        general_errors += 1
                        raise
                    raise TokenDecryptError() from None
                raise

        return self._timed("decrypt", lambda: self._run(run, label, retry=_GENERAL))

    def random(self, n: int) -> bytes:
        """`n` bytes from the token's random number generator."""
        if not isinstance(n, int) or not 0 < n <= _MAX_RANDOM:
            raise ConfigurationError(f"random takes a byte count from 1 to {_MAX_RANDOM}")

        def run(session: _Session) -> bytes:
            return bytes(session.p11.generate_random(n * 8))

        return self._timed("random", lambda: self._run(run))

    # -- machinery -------------------------------------------------------------------------

    def _timed(self, op: str, call: Callable[[], T]) -> T:
        started = perf_counter()
        outcome = "error"
        try:
            result = call()
            outcome = "ok"
            return result
        except BaseException as e:
            outcome = metrics.outcome_of(e)
            raise
        finally:
            metrics.observe(op, outcome, perf_counter() - started)

    def _run(
        self,
        call: Callable[[_Session], T],
        label: str | None = None,
        *,
        retry: frozenset[int] = frozenset(),
    ) -> T:
        """`call` on a borrowed session, tried again on a fresh session, with a fresh handle or
        after a new login when the failure says so (`_ATTEMPTS` in all); every other failure
        becomes a `TokenError`."""
        library = self._library
        for attempt in range(1, _ATTEMPTS + 1):
            library.enter()
            try:
                return self._attempt(call, label, retry, last=attempt == _ATTEMPTS)
            except _Retry:
                continue
            finally:
                library.leave()
        raise AssertionError("unreachable")

    def _attempt(
        self,
        call: Callable[[_Session], T],
        label: str | None,
        retry: frozenset[int],
        *,
        last: bool,
    ) -> T:
        pool = self._ensure()
        session = pool.borrow()
        failure: BaseException
        try:
            result = call(session)
        except TokenError:
            pool.give_back(session)
            raise
        except CallFailed as e:
            value: int | None = e.rv
            failure = e
        except Exception as e:
            if not _is_pkcs11_error(e):
                pool.discard(session)
                raise
            value, failure = rv_of(e), e
        except BaseException:
            pool.discard(session)  # interrupted mid-call: the session's state is unknown
            raise
        else:
            pool.give_back(session)
            return result
        if value in _BROKEN_SESSION:
            pool.discard(session)
        else:
            pool.give_back(session)
        if value in _STALE_HANDLE and label is not None:
            self._forget(label)
        if not last and (value in _RETRY_ONCE or value in retry):
            if value == _USER_NOT_LOGGED_IN:
                self._relogin()
            raise _Retry
        raise self._failure(value, failure) from None

    def _failure(self, value: int | None, failure: BaseException) -> TokenError:
        where = f"token {self.config.token_label!r}"
        if isinstance(failure, CallFailed):
            return from_rv(failure.rv, f"{failure.function} on {where}")
        if value is not None:
            return from_rv(value, f"a call on {where}")
        return from_exception(failure, f"a call on {where}")

    def _relogin(self) -> None:
        with self._lock:
            self._library.relogin(self._slot_id, self._p11token, self.config.pin)

    def _objects(self, session: _Session, label: str) -> list[Any]:
        from pkcs11 import Attribute, ObjectClass

        query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
        objects = list(session.p11.get_objects(query))
        if not objects and not Cryptoki.is_user_state(self._cryptoki.session_state(session.handle)):
            # private keys are invisible to a session that is not logged in: "no such key"
            # would be a lie (the login was lost: log in again and look once more)
            raise CallFailed("C_FindObjects", _USER_NOT_LOGGED_IN)
        if len(objects) > 1:
            # One key can be listed twice: SoftHSM2 may index a key file a second time when
            # this process creates it while another process changes the token (the file, and
            # a fresh process, hold one key). The same label and CKA_ID is the same key (keys
            # without an id stay apart).
            by_id = {bytes(o[Attribute.ID]) or o.handle: o for o in objects}
            objects = list(by_id.values())
        return objects

    def _one_object(
        self, session: _Session, label: str, key_id: bytes | None = None, *, protected: bool = True
    ) -> Any:
        """The one secret key labelled `label`. With `key_id`: the one whose CKA_ID it is
        (another key given the label by someone with the PIN is not it: `KeyNotInToken`),
        and, when `protected`, generated in the token and still sensitive and never
        extractable since (`_protections`; `KeyNotProtected` otherwise). A label is not an
        identity: without these checks a key swapped in under the label (a known value,
        extractable) would be used as the KMS's."""
        from pkcs11 import Attribute

        objects = self._objects(session, label)
        if key_id is not None:
            objects = [o for o in objects if bytes(o[Attribute.ID]) == key_id]
        if not objects:
            raise KeyNotInToken(label)
        if len(objects) > 1:
            raise TokenError(f"{len(objects)} secret keys in the token are labelled {label!r}")
        obj = objects[0]
        if key_id is not None and protected:
            protections = _protections()
            flags = _attributes(obj, list(protections))
            wrong = [name for a, (name, want) in protections.items() if flags.get(a) != want]
            if wrong:
                raise KeyNotProtected(label, wrong)
        return obj

    def _handle(self, session: _Session, label: str, key_id: bytes | None = None) -> int:
        handle = self._handles.get(label)
        if handle is None:
            handle = int(self._one_object(session, label, key_id).handle)
            self._remember(label, handle)
        return handle

    def _remember(self, label: str, handle: int) -> None:
        # a module may hand a destroyed key's handle value to another object later: a handle
        # names one label at a time. Writers take the lock (readers need none: a dict lookup
        # is atomic), so no thread walks the dict while another changes it.
        with self._handles_lock:
            for other in [k for k, v in self._handles.items() if v == handle and k != label]:
                self._handles.pop(other, None)
            self._handles[label] = handle

    def _forget(self, label: str) -> None:
        with self._handles_lock:
            self._handles.pop(label, None)


def probe_token(module: str, token_label: str) -> None:
    """Is there a token labelled `token_label` in `module`, offering AES-GCM? Needs no PIN (it
    does not log in). `TokenUnavailable` (CLUSTER_NOT_FOUND, ...) if not. A label the module
    does not list makes it start over once, as `Token.open` does."""
    started = perf_counter()
    outcome = "unavailable"
    try:
        library = Library.load(module)
        for attempt in (1, 2):
            library.enter()
            try:
                library.ensure_initialised()
                _check_mechanisms(library.find_token(token_label), token_label)
                outcome = "ok"
                return
            except TokenUnavailable as e:
                if attempt == 2 or e.code != "CLUSTER_NOT_FOUND":
                    raise
            finally:
                library.leave()
            library.rescan()
    except BaseException as e:
        outcome = metrics.outcome_of(e)
        raise
    finally:
        metrics.observe("probe", outcome, perf_counter() - started)


class _OtherPinRefused(TokenUnavailable):
    """The token refused a PIN while the process was logged in with another (internal)."""


def _check_label(label: str) -> None:
    if not isinstance(label, str) or not label:
        raise ConfigurationError("a key label is a non-empty string")
    if len(label.encode("utf-8")) > _MAX_LABEL_BYTES:
        raise ConfigurationError(f"a key label is at most {_MAX_LABEL_BYTES} bytes")


def _attributes(obj: Any, wanted: list[Any]) -> dict[Any, object]:
    """`wanted` attributes of `obj`; one the token will not give, or gives a value python-pkcs11
    cannot decode (CK_UNAVAILABLE_INFORMATION as the key-generation mechanism of a derived
    key: a ValueError), is left out, so it counts as not what the KMS made."""
    from pkcs11.exceptions import PKCS11Error

    try:
        return dict(obj.get_attributes(wanted))
    except (ValueError, PKCS11Error):
        pass
    got: dict[Any, object] = {}
    for attribute in wanted:
        try:
            got[attribute] = obj[attribute]
        except (ValueError, PKCS11Error):
            continue
    return got


def _protections() -> dict[Any, tuple[str, object]]:
    """What a key `create_aes_key` made still shows, each attribute with the value it must
    have. Sensitive and never extractable are not enough: a key derived inside the token
    from data someone chose (CKM_AES_ECB_ENCRYPT_DATA over a base key) is reported as both,
    and as always sensitive, yet its value is known. Only a key the token generated itself
    (CKA_LOCAL) with CKM_AES_KEY_GEN has a value no one chose."""
    from pkcs11 import Attribute, Mechanism

    return {
        Attribute.SENSITIVE: ("sensitive", True),
        Attribute.EXTRACTABLE: ("extractable", False),
        Attribute.ALWAYS_SENSITIVE: ("always sensitive", True),
        Attribute.NEVER_EXTRACTABLE: ("never extractable", True),
        Attribute.LOCAL: ("generated in the token", True),
        Attribute.KEY_GEN_MECHANISM: ("generated by CKM_AES_KEY_GEN", Mechanism.AES_KEY_GEN),
    }


def _key_template() -> dict[Any, Any]:
    from pkcs11 import Attribute

    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.MODIFIABLE: False,
        Attribute.ENCRYPT: True,
        Attribute.DECRYPT: True,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
    }


def _check_mechanisms(p11token: Any, label: str) -> None:
    from pkcs11 import Mechanism

    try:
        mechanisms = set(p11token.slot.get_mechanisms())
    except Exception as e:
        raise from_exception(e, f"listing the mechanisms of token {label!r}") from None
    for needed in (Mechanism.AES_KEY_GEN, Mechanism.AES_GCM):
        if needed not in mechanisms:
            raise TokenUnavailable(
                "INTERNAL_ERROR", f"token {label!r} does not offer CKM_{needed.name}"
            )


def _is_pkcs11_error(exc: BaseException) -> bool:
    from pkcs11.exceptions import PKCS11Error

    return isinstance(exc, PKCS11Error)
