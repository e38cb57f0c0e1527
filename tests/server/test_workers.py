"""`envelope serve --workers 2`: two processes on one store, metrics merged across them."""

from __future__ import annotations

import http.client
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import start_server


@pytest.mark.slow
def test_two_workers_share_one_store(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "home", tmp_path / "server.log", "--workers", "2")
    try:
        # keep-alive calls are not held back by Nagle + delayed ACK (about 40 ms each)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        started = time.perf_counter()
        for _ in range(20):
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b'{"status":"ok"}'
        assert time.perf_counter() - started < 0.6
        conn.close()
        admin = srv.client()
        key_id = admin.create_key()["KeyMetadata"]["KeyId"]

        def work(_: int) -> list[tuple[bytes, bytes]]:
            kms = srv.client()
            out = []
            for _ in range(10):
                dk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
                out.append((dk["Plaintext"], dk["CiphertextBlob"]))
            return out

        with ThreadPoolExecutor(8) as pool:
            keys = [k for batch in pool.map(work, range(8)) for k in batch]
        assert len(keys) == 80
        for plain, blob in keys[::10]:
            assert admin.decrypt(CiphertextBlob=blob)["Plaintext"] == plain
        _, _, body = srv.http("GET", "/metrics")
        m = re.search(
            r'^envelope_server_requests_total\{code="OK",operation="GenerateDataKey"\} (\S+)$',
            body.decode(),
            re.M,
        )
        assert m is not None and float(m.group(1)) == 80.0  # both workers' counts
        # Which worker accepts a connection is the kernel's choice, and one worker may take
        # them all for a while: new connections until both have served (bounded)
        pids = {line.get("pid") for line in srv.log_lines() if line.get("operation")}
        for _ in range(60):
            if len(pids) == 2:
                break
            srv.client().describe_key(KeyId=key_id)
            time.sleep(0.02)
            pids = {line.get("pid") for line in srv.log_lines() if line.get("operation")}
        assert len(pids) == 2, pids
        assert srv.stop() == 0
    finally:
        if srv.proc.poll() is None:
            srv.stop()
