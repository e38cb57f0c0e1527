"""One PKCS#11 module per process: loaded and initialised once, logged in once per token.

The rules this module keeps (PKCS#11 v2.40, section 5.1 and 6.6-6.7):

* **Initialised with CKF_OS_LOCKING_OK.** A module told nothing (``C_Initialize(NULL)``) may
  assume one thread; SoftHSM2 then runs without mutexes and corrupts its state under
  concurrent calls. `Cryptoki.initialize` passes the flag, before python-pkcs11 attaches to the
  same module (its own ``C_Initialize(NULL)`` is skipped). If other code in this process
  initialised the module first, we cannot know how, so the module is refused.
* **Re-initialised after fork.** A child inherits the parent's module state, whose sessions and
  login are not the child's (the spec: "the child must call C_Initialize"). The child's first
  use calls ``C_Initialize`` again; a module that answers CKR_CRYPTOKI_ALREADY_INITIALIZED
  (SoftHSM2 unless ``library.reset_on_fork``) is finalised and initialised anew.
* **One login per process and token.** Login state belongs to the application, not to a
  session: every session of the process is logged in once one is, and a logout (or closing
  the last session) logs all out. So each token gets one anchor session, opened without a PIN,
  on which ``C_Login(CKU_USER)`` is made once and which stays open while any `Token` of this
  process uses the token; pooled sessions are opened without a PIN and never log out.
  CKR_USER_ALREADY_LOGGED_IN (other code logged in) is accepted.
* **Tokens added later are found by starting over.** A module lists its tokens when it is
  initialised (SoftHSM2 never looks again), so a label that is not found makes `rescan` run:
  new calls wait, the calls in flight finish, the module is finalised and initialised again
  and `epoch` goes up, which makes every `Token` of the process connect again (new sessions,
  new login, new handle cache) before its next call.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from . import metrics
from .cryptoki import Cryptoki, ModuleLoadError, rv, rv_name
from .errors import TokenError, TokenListingError, TokenUnavailable
from .failures import from_exception, from_rv, rv_of

if TYPE_CHECKING:
    import pkcs11

__all__ = ("Library", "fork_generation")

_OK = 0
_ALREADY_INITIALIZED = rv("CKR_CRYPTOKI_ALREADY_INITIALIZED")
_ALREADY_LOGGED_IN = rv("CKR_USER_ALREADY_LOGGED_IN")
_CANT_LOCK = rv("CKR_CANT_LOCK")
_SESSION_GONE = frozenset({rv("CKR_SESSION_HANDLE_INVALID"), rv("CKR_SESSION_CLOSED")})
#: SoftHSM2 keeps a token's label and flags in a file that every login rewrites; reading it
#: while another process writes it fails with CKR_GENERAL_ERROR. Listing tokens and logging in
#: (rare calls) are tried again after these pauses (seconds).
_TRANSIENT = frozenset({rv("CKR_GENERAL_ERROR"), rv("CKR_FUNCTION_FAILED")})
_TRANSIENT_PAUSES = (0.005, 0.02, 0.05, 0.1)

_generation = 0  # bumped in every forked child: state made before it belongs to the parent
_registry_lock = threading.Lock()
_libraries: dict[str, Library] = {}
_PIN_KEY = os.urandom(32)  # keys the PIN digests kept to compare logins (never the PIN)


def fork_generation() -> int:
    """How many forks separate this process from the one that first imported this module."""
    return _generation


def _after_fork_in_child() -> None:
    global _generation, _registry_lock
    _generation += 1
    _registry_lock = threading.Lock()  # another thread may have held it at the fork
    for library in _libraries.values():
        library._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class _Login:
    anchor: Any  # the python-pkcs11 Session that carries the process's login
    pin_digest: bytes
    users: int


class Library:
    """A loaded PKCS#11 module (one per module path and process; `load` finds or makes it)."""

    def __init__(self, module: str, cryptoki: Cryptoki, attached: Any) -> None:
        self.module = module
        self.cryptoki = cryptoki
        self._pkcs11 = attached  # python-pkcs11's lib, attached to our initialisation
        self._lock = threading.Lock()
        self._generation = _generation
        self._logins: dict[int, _Login] = {}
        #: bumped whenever the module starts over (rescan, or first use in a forked child)
        self.epoch = 0
        self._gate_lock = threading.Lock()  # taken bare on the hot path (no Python frame)
        self._gate = threading.Condition(self._gate_lock)
        self._active = 0  # calls in flight (`enter` .. `leave`)
        self._rescanning = False

    def __repr__(self) -> str:
        return f"Library({self.module!r})"

    @classmethod
    def loaded(cls, module: str) -> Library | None:
        """The module's `Library` if this process has loaded it (nothing is loaded here)."""
        with _registry_lock:
            return _libraries.get(_module_key(module))

    @classmethod
    def load(cls, module: str) -> Library:
        key = _module_key(module)
        with _registry_lock:
            library = _libraries.get(key)
            if library is None:
                library = _libraries[key] = cls._initialise(module)
        library.ensure_initialised()
        return library

    @classmethod
    def _initialise(cls, module: str) -> Library:
        if os.sep in module and not os.path.exists(module):
            raise TokenUnavailable("CLUSTER_NOT_FOUND", f"no PKCS#11 module at {module}")
        started = perf_counter()
        outcome = "unavailable"
        try:
            try:
                cryptoki = Cryptoki(module)
            except ModuleLoadError as e:
                raise TokenUnavailable(
                    "CLUSTER_NOT_FOUND", f"{module} is not a loadable PKCS#11 module ({e})"
                ) from None
            value = cryptoki.initialize()
            if value == _ALREADY_INITIALIZED:
                raise TokenUnavailable(
                    "INTERNAL_ERROR",
                    f"the PKCS#11 module {module} was already initialised by other code in "
                    "this process, perhaps without CKF_OS_LOCKING_OK (python-pkcs11's "
                    "pkcs11.lib() does that); open tokens only through envelope.pkcs11",
                )
            if value == _CANT_LOCK:
                raise TokenUnavailable(
                    "INTERNAL_ERROR",
                    f"the PKCS#11 module {module} cannot lock for concurrent callers "
                    "(C_Initialize with CKF_OS_LOCKING_OK returned CKR_CANT_LOCK)",
                )
            if value != _OK:
                raise from_rv(value, f"C_Initialize of {module}")
            library = cls(module, cryptoki, _attach(module))
            outcome = "ok"
            return library
        finally:
            metrics.observe("initialize", outcome, perf_counter() - started)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._logins = {}  # the parent's; nothing to close here (its sessions are not ours)
        self._gate_lock = threading.Lock()
        self._gate = threading.Condition(self._gate_lock)
        self._active = 0
        self._rescanning = False

    def enter(self) -> None:
        """A call into the module starts (it waits while the module starts over)."""
        with self._gate_lock:
            while self._rescanning:
                self._gate.wait()
            self._active += 1

    def leave(self) -> None:
        with self._gate_lock:
            self._active -= 1
            if self._rescanning and self._active == 0:
                self._gate.notify_all()

    def rescan(self) -> None:
        """Finalise and initialise the module again, once no call is in flight, so that it
        lists its tokens afresh; every `Token` then connects again (`epoch`). Must not be
        called between `enter` and `leave`."""
        with self._gate:
            if self._rescanning:  # another thread is at it: its result is ours
                while self._rescanning:
                    self._gate.wait()
                return
            self._rescanning = True
            while self._active:
                self._gate.wait()
        try:
            with self._lock:
                self._logins = {}  # finalising ends every session and login of the process
                self.cryptoki.finalize()
                value = self.cryptoki.initialize()
                self.epoch += 1
                if value != _OK:
                    raise from_rv(value, f"C_Initialize of {self.module} (rescan)")
        finally:
            with self._gate:
                self._rescanning = False
                self._gate.notify_all()

    def ensure_initialised(self) -> None:
        """In a forked child, start the module over before its first use there."""
        if self._generation == _generation:
            return
        with self._lock:
            if self._generation == _generation:
                return
            value = self.cryptoki.initialize()
            if value == _ALREADY_INITIALIZED:
                self.cryptoki.finalize()
                value = self.cryptoki.initialize()
            if value != _OK:
                raise from_rv(value, f"C_Initialize of {self.module} after fork")
            self._generation = _generation
            self.epoch += 1

    def find_token(self, label: str) -> pkcs11.Token:
        """The one token carrying `label` (CLUSTER_NOT_FOUND if none does, or several do)."""
        for pause in (*_TRANSIENT_PAUSES, None):
            try:
                tokens = list(self._pkcs11.get_tokens(token_label=label))
                break
            except Exception as e:  # python-pkcs11's errors for C_GetSlotList and friends
                if pause is None or rv_of(e) not in _TRANSIENT:
                    error = from_exception(e, f"listing the tokens of {self.module}")
                    if type(error) is TokenError:
                        error = TokenListingError(str(error))
                    raise error from None
                time.sleep(pause)
        if not tokens:
            raise TokenUnavailable(
                "CLUSTER_NOT_FOUND", f"no token labelled {label!r} in {self.module}"
            )
        if len(tokens) > 1:
            raise TokenUnavailable(
                "CLUSTER_NOT_FOUND",
                f"{len(tokens)} tokens are labelled {label!r} in {self.module}",
            )
        token: pkcs11.Token = tokens[0]
        return token

    def open_session(self, token: pkcs11.Token) -> Any:
        """A read/write session opened without a PIN (it shares the process's login)."""
        started = perf_counter()
        try:
            session = token.open(rw=True)
        except Exception as e:
            error = from_exception(e, f"opening a session on token {token.label!r}")
            metrics.observe("open_session", metrics.outcome_of(error), perf_counter() - started)
            raise error from None
        metrics.observe("open_session", "ok", perf_counter() - started)
        return session

    def login(self, slot_id: int, token: pkcs11.Token, pin: str) -> None:
        """Log this process in to the token unless it is already (then the PIN must match)."""
        digest = hmac.new(_PIN_KEY, pin.encode("utf-8"), hashlib.sha256).digest()
        with self._lock:
            entry = self._logins.get(slot_id)
            if entry is not None:
                if not hmac.compare_digest(entry.pin_digest, digest):
                    self._change_pin(entry, token, pin, digest)
                entry.users += 1
                return
            anchor = self.open_session(token)
            try:
                self._login(anchor, token, pin)
            except _AnchorGone as e:
                _close_quietly(anchor)
                raise from_rv(e.args[0], f"login to token {token.label!r}") from None
            except BaseException:
                _close_quietly(anchor)
                raise
            self._logins[slot_id] = _Login(anchor, digest, 1)

    def _change_pin(self, entry: _Login, token: pkcs11.Token, pin: str, digest: bytes) -> None:
        """Another PIN than the one this process logged in with: the token user's PIN was
        changed (an operator following a rotation: disconnect, update the store's password,
        connect), or this one is wrong. Only the token can tell, and a login is per process:
        log out and in again with it. Refused with "logged in with another PIN", the store
        could not connect until the process restarted (review). A wrong PIN leaves the
        process logged out: its other users log in again on their next call (`relogin`)."""
        self.cryptoki.logout(_handle(entry.anchor))
        self._login_anchored(entry, token, pin)
        entry.pin_digest = digest

    def _login_anchored(self, entry: _Login, token: pkcs11.Token, pin: str) -> None:
        """Log in on the entry's anchor session; if that session itself is gone, a new one
        carries the login from now on."""
        try:
            self._login(entry.anchor, token, pin)
        except _AnchorGone:
            _close_quietly(entry.anchor)
            entry.anchor = self.open_session(token)
            self._login(entry.anchor, token, pin)

    def relogin(self, slot_id: int, token: pkcs11.Token, pin: str) -> None:
        """Log in again after the token forgot the login (CKR_USER_NOT_LOGGED_IN)."""
        with self._lock:
            entry = self._logins.get(slot_id)
            if entry is None:
                return
            self._login_anchored(entry, token, pin)

    def logout(self, slot_id: int) -> None:
        """One user of the login is done; the last one logs out and closes the anchor."""
        with self._lock:
            entry = self._logins.get(slot_id)
            if entry is None:
                return
            entry.users -= 1
            if entry.users > 0:
                return
            del self._logins[slot_id]
            self.cryptoki.logout(_handle(entry.anchor))
            _close_quietly(entry.anchor)

    def is_logged_in(self, slot_id: int) -> bool:
        return slot_id in self._logins

    def _login(self, anchor: Any, token: pkcs11.Token, pin: str) -> None:
        started = perf_counter()
        for pause in (*_TRANSIENT_PAUSES, None):
            value = self.cryptoki.login(_handle(anchor), pin)
            if pause is None or value not in _TRANSIENT:
                break
            time.sleep(pause)
        if value in (_OK, _ALREADY_LOGGED_IN):
            metrics.observe("login", "ok", perf_counter() - started)
            return
        error = from_rv(value, f"login to token {token.label!r}")
        metrics.observe("login", metrics.outcome_of(error), perf_counter() - started)
        if value in _SESSION_GONE:
            raise _AnchorGone(value)
        if not isinstance(error, TokenUnavailable):
            raise TokenUnavailable(
                "INTERNAL_ERROR", f"login to token {token.label!r}: {rv_name(value)}"
            )
        raise error


class _AnchorGone(Exception):
    """The session carrying the login is no longer there (internal to `Library`)."""


def _module_key(module: str) -> str:
    """One `Library` per file, however its path is spelled."""
    return os.path.realpath(module) if os.path.exists(module) else module


def _handle(session: Any) -> int:
    """python-pkcs11's session handle (its stubs do not declare it)."""
    return int(session.handle)


def _close_quietly(session: Any) -> None:
    try:
        session.close()
    except Exception:  # closing is best effort: the session is gone for us anyway
        pass


def _attach(module: str) -> Any:
    """python-pkcs11's `lib` for `module`, skipping its own ``C_Initialize(NULL)``."""
    try:
        from pkcs11 import _pkcs11
    except ImportError:
        raise ConfigurationError(
            "PKCS#11 tokens need python-pkcs11: pip install 'envelope-kms[hsm]'"
        ) from None

    class Attached(_pkcs11.lib):
        def initialize(self) -> None:
            """Done already, with CKF_OS_LOCKING_OK (`Cryptoki.initialize`)."""

    try:
        return Attached(module)
    except Exception as e:
        raise from_exception(e, f"attaching python-pkcs11 to {module}") from None
