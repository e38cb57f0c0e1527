"""Many threads and processes on one token: no errors, every ciphertext opens, the token is
intact; one login per process, a bounded pool, fork and a module that starts over."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import threading
import uuid
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from envelope.pkcs11 import Token, TokenConfig, TokenUnavailable
from envelope.pkcs11.pool import SessionPool
from tests.softhsm import make_token, show_slots

from ._workers import hammer
from .conftest import run_json, run_python

SECONDS = 3.0


def _count(op: str, outcome: str = "ok") -> float:
    value = REGISTRY.get_sample_value(
        "envelope_hsm_call_seconds_count", {"op": op, "outcome": outcome}
    )
    return value or 0.0


@pytest.mark.slow
def test_eight_threads_and_two_processes_share_one_token(hsm_dir: Path) -> None:
    config = make_token(hsm_dir, "stress")
    with Token.open(config) as token:
        shared = [f"shared-{i}" for i in range(4)]
        for label in shared:
            token.create_aes_key(label)
    args = (config.module, config.token_label, config.pin, SECONDS)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        children = [pool.apply_async(hammer, (*args, 4, shared, f"proc{p}")) for p in range(2)]
        here = hammer(*args, 8, shared, "main")
        there = [c.get(timeout=120) for c in children]

    results = [here, *there]
    assert [r["errors"] for r in results] == [[], [], []]
    # all ran at once and none starved: every thread of every process made calls
    assert all(n >= 10 for r in results for n in r["per_thread"]), [
        r["per_thread"] for r in results
    ]
    assert len(here["per_thread"]) == 8

    # every ciphertext, from every process, opens in this one afterwards; the token is intact
    with Token.open(config) as token:
        created = [label for r in results for label in r["created"]]
        assert len(created) >= 3 * 4
        listed = token.list_keys()
        assert set(shared + created) <= set(listed) and len(listed) == len(set(listed))
        samples = [s for r in results for s in r["samples"]]
        assert len(samples) >= 30
        for label, *parts in samples:
            iv, ct, tag, aad, plaintext = (bytes.fromhex(p) for p in parts)
            assert token.decrypt(label, iv, ct, tag, aad) == plaintext
        # each created key is one key here too (SoftHSM2 may list a key made while another
        # process changes the token twice in this process: same label, same CKA_ID)
        for label in created:
            attributes = token.key_attributes(label)
            assert attributes["sensitive"] is True and attributes["extractable"] is False
    assert "Label:            stress" in show_slots()
    # a fresh process (the module initialised anew) reads the same keys
    fresh = run_json(LIST_KEYS, config.module, config.token_label, config.pin)
    assert set(shared + created) <= set(fresh)


LIST_KEYS = r"""
import json, sys
from envelope.pkcs11 import Token, TokenConfig
with Token.open(TokenConfig(*sys.argv[1:4])) as token:
    print(json.dumps(token.list_keys()))
"""

#: The same shape of load (8 threads; AES-GCM while sessions are opened and closed), driven
#: through python-pkcs11 alone, which initialises the module with C_Initialize(NULL).
UNLOCKED = r"""
import json, os, sys, threading, time
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams
module, label, pin, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
token = pkcs11.lib(module).get_token(token_label=label)
anchor = token.open(rw=True, user_pin=pin)
anchor.generate_key(KeyType.AES, 256, label="k", store=False)
errors, ops = [], [0]
def work():
    session = token.open(rw=True)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        try:
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, label="k")
            iv = os.urandom(12)
            params = GCMParams(iv, b"aad", 128)
            ct = key.encrypt(b"x" * 32, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            assert key.decrypt(ct, mechanism=Mechanism.AES_GCM, mechanism_param=params) == b"x" * 32
            if n % 20 == 0:
                token.open(rw=True).close()
            n += 1
        except Exception as e:
            errors.append(repr(e))
    ops[0] += n
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"ops": ops[0], "errors": errors[:5], "error_count": len(errors)}))
"""


@pytest.mark.slow
def test_the_same_load_without_the_locking_flag_breaks_softhsm(hsm_dir: Path) -> None:
    """The control for the test above: SoftHSM2 told nothing about threads (python-pkcs11's
    C_Initialize(NULL)) crashes, hangs or fails under this load, so passing it means
    something."""
    config = make_token(hsm_dir, "unlocked")
    try:
        done = run_python(UNLOCKED, config.module, config.token_label, config.pin, "3", timeout=15)
    except subprocess.TimeoutExpired:
        return  # it hung (a corrupted lock-free structure can loop for ever): broken too
    crashed = done.returncode != 0  # usually SIGSEGV, or glibc's "double free" abort
    failed = not crashed and json.loads(done.stdout)["error_count"] > 0
    assert crashed or failed, done.stdout


def test_one_login_per_process_however_many_tokens_and_threads(config: TokenConfig) -> None:
    logins = _count("login")
    first = Token.open(replace(config, pool_size=3))
    second = Token.open(replace(config, pool_size=5))
    first.create_aes_key(label := f"k-{uuid.uuid4().hex[:8]}")
    errors: list[BaseException] = []

    def work(token: Token) -> None:
        try:
            for _ in range(20):
                token.decrypt(label, *token.encrypt(label, b"x", b""), b"")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in [first, second] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _count("login") - logins == 1
    first.close()
    second.check()  # the login outlives the first token: the second still uses it
    second.close()
    with Token.open(config) as again:  # the last close logged out: a new login is needed
        again.check()
    assert _count("login") - logins == 2


def test_the_pool_lends_each_session_to_one_thread_at_a_time(config: TokenConfig) -> None:
    opened = _count("open_session")
    token = Token.open(replace(config, pool_size=2))
    try:
        token.create_aes_key(label := f"k-{uuid.uuid4().hex[:8]}")
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(25):
                    token.decrypt(label, *token.encrypt(label, b"x", b"a"), b"a")
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        # 8 threads, 400 calls: two pooled sessions (and the login's anchor session)
        assert _count("open_session") - opened <= 3
    finally:
        token.close()


def test_a_session_pool_bounds_waits_and_recovers() -> None:
    made: list[int] = []
    closed: list[int] = []
    pool: SessionPool[int] = SessionPool(
        lambda: made.append(len(made)) or made[-1], closed.append, 2, timeout=0.2
    )
    a, b = pool.borrow(), pool.borrow()
    with pytest.raises(TokenUnavailable) as caught:
        pool.borrow()  # both lent: waits, then gives up
    assert caught.value.code == "NETWORK_ERRORS"
    pool.give_back(a)
    assert pool.borrow() == a  # reused, not reopened
    pool.discard(b)  # a broken session is closed, and its place freed
    assert closed == [b]
    c = pool.borrow()
    assert c not in (a, b) and len(made) == 3
    pool.close()
    pool.give_back(c)  # returned after close: closed
    pool.give_back(a)
    assert sorted(closed) == sorted([b, c, a])


def test_a_token_used_after_fork_connects_again_in_the_child(token: Token, label: str) -> None:
    token.create_aes_key(label)
    sealed = token.encrypt(label, b"before fork", b"aad")
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: the inherited Token must initialise the module again
        try:
            opened = token.decrypt(label, *sealed, b"aad")
            iv, ct, tag = token.encrypt(label, b"from the child", b"aad")
            message = {"opened": opened.decode(), "sealed": [iv.hex(), ct.hex(), tag.hex()]}
        except BaseException as e:
            message = {"error": repr(e)}
        os.write(write, json.dumps(message).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        message = json.loads(f.read())
    _, status = os.waitpid(pid, 0)
    assert status == 0 and "error" not in message, message
    assert message["opened"] == "before fork"
    iv, ct, tag = (bytes.fromhex(p) for p in message["sealed"])
    # the parent's sessions and login were not touched by the child's new start
    assert token.decrypt(label, iv, ct, tag, b"aad") == b"from the child"
    assert token.decrypt(label, *sealed, b"aad") == b"before fork"


def test_a_token_made_later_is_found_while_other_tokens_keep_working(
    token: Token, label: str, hsm_dir: Path
) -> None:
    """SoftHSM2 lists its tokens when initialised: opening a new one starts the module over
    (new calls wait, calls in flight finish), and the tokens already open connect again."""
    token.create_aes_key(label)
    sealed = token.encrypt(label, b"before", b"")
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = [0]

    def busy() -> None:
        while not stop.is_set():
            try:
                assert token.decrypt(label, *token.encrypt(label, b"x", b""), b"") == b"x"
                calls[0] += 1
            except BaseException as e:
                errors.append(e)

    threads = [threading.Thread(target=busy) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            later = make_token(hsm_dir, f"later-{uuid.uuid4().hex[:8]}")
            with Token.open(later) as new:
                new.create_aes_key("k")
                assert new.list_keys() == ["k"]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == [] and calls[0] > 0
    assert token.decrypt(label, *sealed, b"") == b"before"


def test_the_handle_cache_is_safe_to_fill_from_many_threads(token: Token) -> None:
    """Regression: a thread walking the cache while another added to it raised "dictionary
    changed size during iteration" (a failed call under load)."""
    errors: list[BaseException] = []

    def fill(i: int) -> None:
        try:
            for n in range(400):
                token._remember(f"t{i}-{n}", i * 100_000 + n)
                if n % 7 == 0:
                    token._forget(f"t{i}-{n - 3}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=fill, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_lost_login_whose_session_is_gone_too_is_made_on_a_new_session(
    config: TokenConfig, label: str
) -> None:
    with Token.open(config) as token:
        token.create_aes_key(label)
        sealed = token.encrypt(label, b"x", b"")
        library = token._library
        anchor = library._logins[token._slot_id].anchor
        assert library.cryptoki.logout(int(anchor.handle)) == 0  # every session: logged out
        anchor.close()  # and the session that carried the login is gone as well
        assert token.decrypt(label, *sealed, b"") == b"x"
        token.check()
