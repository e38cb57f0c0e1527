"""Writers of one store queue on a `flock` of the store file (`store._WriterQueue`).

With SQLite's lock alone, a writer of another process that found the lock taken slept 1, 2, 5,
10 ... ms between attempts (p99 37-40 ms with two server workers); queued on a `flock`, it
starts as soon as the holder commits. These tests pin the mechanism, not a timing: the queue
is held for exactly a write transaction, a call of this process waits in it while another
process holds it (and completes once released), a forked child queues on a descriptor of its
own, and closing the store releases the descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

from envelope.service import open_service
from envelope.service.store import _WriterQueue

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()  # until the parent says so
"""


def _free(path: Path) -> bool:
    """Whether the store's writer queue is free (asked on a descriptor of our own)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        assert e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        return False
    finally:
        os.close(fd)


def test_a_write_transaction_holds_the_queue_and_only_while_it_runs(tmp_path: Path) -> None:
    svc = open_service(tmp_path / "home")
    try:
        svc.create_key()
        path = svc.store.path
        assert _free(path)
        with svc.store.write() as conn:
            conn.execute("SELECT 1")
            assert not _free(path)
        assert _free(path)
        with svc.store.read():  # readers never queue
            assert _free(path)
    finally:
        svc.close()


def test_a_call_waits_while_another_process_holds_the_queue(tmp_path: Path) -> None:
    svc = open_service(tmp_path / "home")
    holder = None
    try:
        kid = svc.create_key()["KeyMetadata"]["KeyId"]
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(svc.store.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        done: list[object] = []
        call = threading.Thread(
            target=lambda: done.append(svc.generate_data_key(key_id=kid, key_spec="AES_256"))
        )
        call.start()
        call.join(0.5)
        # SQLite's own lock is free, so only the queue can hold the call back
        assert call.is_alive() and not done, "the call did not wait for the queue"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        call.join(30)
        assert not call.is_alive() and len(done) == 1
    finally:
        if holder is not None:
            holder.kill()
            holder.communicate()  # reaps it and closes its pipes
        svc.close()


def test_a_forked_child_queues_on_a_descriptor_of_its_own(tmp_path: Path) -> None:
    """A `flock` belongs to the open file description: a child using its parent's descriptor
    would hold the parent's lock instead of waiting for it."""
    path = tmp_path / "file"
    path.write_bytes(b"x")
    queue = _WriterQueue(path)
    with queue:  # the parent holds the queue
        pid = os.fork()
        if pid == 0:  # the child: its descriptor must be another one, and find the queue held
            code = 3
            try:
                fd = queue._descriptor()
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    code = 1  # got it while the parent holds it: shared with the parent
                except OSError:
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    queue.close()
    assert os.waitstatus_to_exitcode(status) == 0


def test_closing_the_store_releases_its_descriptor(tmp_path: Path) -> None:
    def open_on_store(path: Path) -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                    n += 1
            except OSError:
                pass
        return n

    svc = open_service(tmp_path / "home")
    path = svc.store.path.resolve()
    svc.create_key()
    during = open_on_store(path)
    svc.close()
    assert during >= 1
    assert open_on_store(path) == 0
