"""SoftHSM2 tokens for tests: a private token directory per test process (no test in here).

    from tests.softhsm import make_token
    config = make_token(tmp_path_factory.mktemp("hsm"), label="lead", pin="1234")
    token = Token.open(config)

SoftHSM2 reads ``$SOFTHSM2_CONF`` when the module is initialised, so one process has one
configuration: the first `make_token` of a process writes ``softhsm2.conf`` (its ``tokendir``
under that call's directory) and points ``$SOFTHSM2_CONF`` at it for this process and its
children; later calls add tokens to the same directory and ignore their own `tmp_path`. A token
made after the module was initialised in this process is found all the same: `Token.open`
starts the module over once when a label is missing (`envelope.pkcs11.library`).

Asking again for a label gives a new, empty token under it (the old one is deleted, and if
this process has the module initialised, the module starts over so that the new token is the
one it finds): a fixture per test module may use one fixed label. `softhsm2-util` must be on PATH
(``scripts/install-test-deps`` installs Debian's ``softhsm2``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from envelope.pkcs11 import TokenConfig

__all__ = (
    "SOFTHSM_MODULE",
    "make_token",
    "make_token_without_user_pin",
    "show_slots",
    "softhsm_conf",
)

#: Debian's (and Ubuntu's) SoftHSM2 module; ``$ENVELOPE_TEST_SOFTHSM_MODULE`` overrides it.
SOFTHSM_MODULE = os.environ.get("ENVELOPE_TEST_SOFTHSM_MODULE", "/usr/lib/softhsm/libsofthsm2.so")

_lock = threading.Lock()
_conf: Path | None = None
_pid = 0
_made: dict[str, tuple[str, str]] = {}


def softhsm_conf(tmp_path: Path) -> Path:
    """This process's SoftHSM2 configuration (made under `tmp_path` on first use)."""
    global _conf, _pid
    with _lock:
        if _conf is None or _pid != os.getpid():
            home = Path(tmp_path) / "softhsm"
            (home / "tokens").mkdir(parents=True, exist_ok=True)
            conf = home / "softhsm2.conf"
            conf.write_text(
                f"directories.tokendir = {home / 'tokens'}\n"
                "objectstore.backend = file\n"
                "log.level = ERROR\n"
                "slots.removable = false\n"
            )
            _conf, _pid = conf, os.getpid()
            _made.clear()
        os.environ["SOFTHSM2_CONF"] = str(_conf)
        return _conf


def _util(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("softhsm2-util")
    if exe is None:
        raise RuntimeError("softhsm2-util is not installed: run scripts/install-test-deps")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, check=False, env=dict(os.environ)
    )


def make_token(
    tmp_path: Path, label: str = "t", pin: str = "1234", so_pin: str = "5678"
) -> TokenConfig:
    """A SoftHSM2 token labelled `label` with user PIN `pin`, and its `TokenConfig`."""
    softhsm_conf(tmp_path)
    with _lock:
        again = _forget(label)
        done = _util("--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin)
        if done.returncode != 0:
            raise RuntimeError(f"softhsm2-util --init-token failed: {done.stderr.strip()}")
        _made[label] = (pin, so_pin)
    if again:
        _start_over()
    return TokenConfig(SOFTHSM_MODULE, label, pin)


def _forget(label: str) -> bool:
    """Delete this process's earlier token of `label`, if any (under `_lock`)."""
    if label not in _made:
        return False
    done = _util("--delete-token", "--token", label)
    if done.returncode != 0:
        raise RuntimeError(f"softhsm2-util --delete-token failed: {done.stderr.strip()}")
    del _made[label]
    return True


def _start_over() -> None:
    """The module, if loaded here, still lists the deleted token: make it list tokens anew."""
    from envelope.pkcs11.library import Library

    library = Library.loaded(SOFTHSM_MODULE)
    if library is not None:
        library.rescan()


def show_slots() -> str:
    """``softhsm2-util --show-slots`` for this process's token directory (raises if it fails:
    a corrupt token directory makes it fail)."""
    done = _util("--show-slots")
    if done.returncode != 0:
        raise RuntimeError(f"softhsm2-util --show-slots failed: {done.stderr.strip()}")
    return done.stdout


#: C_InitToken on SoftHSM2's free slot, alone in a fresh process: a token whose user PIN was
#: never set (softhsm2-util always sets one).
_INIT_SO_ONLY = """
import ctypes, sys
module, label, so_pin = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
lib = ctypes.CDLL(module)
assert lib.C_Initialize(None) == 0
count = ctypes.c_ulong()
assert lib.C_GetSlotList(0, None, ctypes.byref(count)) == 0
slots = (ctypes.c_ulong * count.value)()
assert lib.C_GetSlotList(0, slots, ctypes.byref(count)) == 0
free = slots[count.value - 1]  # SoftHSM2 keeps its one uninitialised token last
rv = lib.C_InitToken(ctypes.c_ulong(free), so_pin, ctypes.c_ulong(len(so_pin)), label.ljust(32))
lib.C_Finalize(None)
sys.exit(rv)
"""


def make_token_without_user_pin(tmp_path: Path, label: str, so_pin: str = "5678") -> None:
    """A SoftHSM2 token with an SO PIN only (a user login: CKR_USER_PIN_NOT_INITIALIZED)."""
    softhsm_conf(tmp_path)
    with _lock:
        again = _forget(label)
        done = subprocess.run(
            [sys.executable, "-c", _INIT_SO_ONLY, SOFTHSM_MODULE, label, so_pin],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"C_InitToken returned {done.returncode}: {done.stderr.strip()}")
        _made[label] = ("", so_pin)
    if again:
        _start_over()
