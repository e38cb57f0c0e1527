"""A worker pool forked while another thread is inside the library: the children must work.

ETL frameworks fork (multiprocessing pools, Spark and Dask workers) while the parent's other
threads call the library. Three things a child inherited in a held state hung it for ever:
the portal's start-up lock, the worker pools' lock, and SQLite's lock bookkeeping of the
embedded KMS store (a child forked mid-transaction waited on a connection that does not exist
in it). Each scenario runs in a fresh interpreter, so a hang is a timeout, not a stuck suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, threading, multiprocessing as mp
import envelope.sync as es
from envelope import Keyring, open_backend

HOME = sys.argv[1]

def child(_):
    b, k = open_backend("local:alias/aws/envelope", home=HOME)
    kr = Keyring(b, k)
    out = bytes(es.decrypt_bytes(es.encrypt_bytes(b"row", keyring=kr), keyring=kr))
    kr.close()
    return out

if __name__ == "__main__":
    b, k = open_backend("local:alias/aws/envelope", home=HOME)
    kr = Keyring(b, k)
    # another thread's first call (the portal starting, a KMS write) while the pool forks
    threading.Thread(target=lambda: es.encrypt_bytes(b"x", keyring=kr), daemon=True).start()
    with mp.get_context("fork").Pool(2) as pool:
        try:
            print("OK", len(pool.map_async(child, range(2)).get(timeout=20)))
        except mp.TimeoutError:
            print("HUNG")
            pool.terminate()
            sys.exit(1)
"""


def test_children_forked_while_a_thread_calls_the_library_do_not_hang(tmp_path: Path) -> None:
    script = tmp_path / "fork_race.py"
    script.write_text(SCRIPT)
    for attempt in range(3):  # a fresh interpreter each time: the race is at first use
        r = subprocess.run(
            [sys.executable, str(script), str(tmp_path / f"home{attempt}")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0 and r.stdout.strip() == "OK 2", (r.stdout, r.stderr[-2000:])
