"""A TCP proxy that resets connections: the real mechanism behind "connection reset by peer".

Each accepted connection is forwarded to `upstream`; a seeded share of them is cut after a
random number of request bytes with an RST (SO_LINGER 0, then close), exactly what a client
sees when a load balancer or the server drops it. Threads only; stopped by `close()`.
"""

from __future__ import annotations

import random
import socket
import struct
import threading


class ResetProxy:
    def __init__(self, upstream: tuple[str, int], *, rate: float, seed: int) -> None:
        self.upstream = upstream
        self.rate = rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.connections = 0
        self.resets = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                cut = self._rng.randrange(1, 4096) if self._rng.random() < self.rate else None
            threading.Thread(target=self._serve, args=(client, cut), daemon=True).start()

    def _serve(self, client: socket.socket, cut: int | None) -> None:
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
            sent = 0
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if limit is not None and sent + len(data) >= limit:
                        with self._lock:
                            self.resets += 1
                        client.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        break
                    dst.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            finally:
                done.set()

        threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()
        pump(client, upstream, cut)
        done.wait(timeout=30)
        for s in (client, upstream):
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._server.close()
