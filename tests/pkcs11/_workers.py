"""Load for the concurrency tests, importable by spawned processes (no test in here)."""

from __future__ import annotations

import os
import random
import threading
from time import monotonic
from typing import Any

from envelope.pkcs11 import Token, TokenConfig


def hammer(
    module: str, token_label: str, pin: str, seconds: float, threads: int, shared: list[str],
    tag: str,
) -> dict[str, Any]:  # fmt: skip
    """`threads` threads on one `Token` for `seconds`: encrypt + decrypt (checked) under the
    shared keys and under keys they create; every 50th call a second `Token` for the same
    token is opened and closed (sessions opened and closed while others run). Returns the call
    count, every error, a sample of ciphertexts and the labels created."""
    token = Token.open(TokenConfig(module, token_label, pin))
    lock = threading.Lock()
    out: dict[str, Any] = {"ops": 0, "errors": [], "samples": [], "created": [], "per_thread": []}

    def work(i: int) -> None:
        rnd = random.Random(f"{tag}-{i}")
        created: list[str] = []
        samples: list[list[str]] = []
        errors: list[str] = []
        n = 0
        end = monotonic() + seconds
        while monotonic() < end:
            try:
                if n % 40 == 0:
                    label = f"{tag}-{i}-{n}"
                    token.create_aes_key(label)
                    created.append(label)
                label = rnd.choice(shared + created)
                plaintext, aad = os.urandom(32), os.urandom(rnd.randrange(0, 64))
                iv, ciphertext, mac = token.encrypt(label, plaintext, aad)
                if token.decrypt(label, iv, ciphertext, mac, aad) != plaintext:
                    errors.append(f"{label}: decrypted to something else")
                if n % 10 == 0:
                    samples.append(
                        [label, *(b.hex() for b in (iv, ciphertext, mac, aad, plaintext))]
                    )
                if n % 50 == 25:
                    with Token.open(TokenConfig(module, token_label, pin, pool_size=1 + i)) as t:
                        t.check()
                n += 1
            except Exception as e:
                errors.append(repr(e))
        with lock:
            out["ops"] += n
            out["errors"] += errors
            out["samples"] += samples
            out["created"] += created
            out["per_thread"].append(n)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    token.close()
    return out
