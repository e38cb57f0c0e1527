"""HTTP/1.1 over TLS to one XKS proxy, on kept-alive connections shared by threads.

`Transport.post(path, headers, body)` sends one request and returns ``(status, body)``, or
raises `XksTimeout`, `XksUnreachable`, `XksTlsError` or `XksInvalidResponse`.

Why a small HTTP/1.1 client of its own, not urllib3 or http.client: an XKS call is a few hundred
bytes each way, and the general clients cost more than everything else the KMS does for it.
Measured here (Encrypt of a 32-byte data key, loopback, 1 thread): urllib3 2.x spent 610 us of
client CPU a call, http.client 500 us; both write the headers and the body with two `send`
calls (two TLS records, two wake-ups of the proxy) and parse the answer's headers with the
`email` package. This one writes each request with one `sendall` and reads what an XKS answer
needs: the status, ``Content-Length`` (or a chunked body), ``Connection``.

Connections: a list of idle ones under a lock; a thread takes one (or opens one) and gives it
back after a complete answer. An idle connection the proxy closed is noticed before use
(readable: EOF or stray bytes) and dropped; one that dies under a request is replaced once, if
time is left (the request may never have arrived; an XKS call can be repeated).

Timeouts: `timeout` bounds the whole call: the TCP connection, the TLS handshake, the write
and the answer (each blocking step gets what is left).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from typing import Final

from .errors import XksInvalidResponse, XksTimeout, XksTlsError, XksUnreachable

__all__ = ("MAX_RESPONSE_BYTES", "Transport")

#: An XKS answer is a few hundred bytes; more than this is not an answer.
MAX_RESPONSE_BYTES: Final = 65536
_MAX_HEAD: Final = 16384


class _Dropped(Exception):
    """The connection closed before a complete answer."""


class _Conn:
    __slots__ = ("armed", "buffer", "sock")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""
        #: the socket's timeout was just set for this call (each `settimeout` is a system
        #: call; a small answer arrives in one read, which needs no second one)
        self.armed = False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv(self, deadline: float) -> bytes:
        if self.armed:
            self.armed = False
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            raise _Dropped
        return data

    def read_answer(self, deadline: float) -> tuple[int, bytes, bool]:
        """(status, body, keep-alive) of the next answer on this connection."""
        buf = self.buffer
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > _MAX_HEAD:
                    raise XksInvalidResponse("the XKS proxy's answer headers are too long")
                buf += self._recv(deadline)
                end = buf.find(b"\r\n\r\n")
            head = buf[:end].split(b"\r\n")
            buf = buf[end + 4 :]
            version, _, rest = head[0].partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/1.") or not code.isdigit():
                raise XksInvalidResponse("the XKS proxy did not answer HTTP/1.1")
            status = int(code)
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue): the real one follows
            break
        length: int | None = None
        chunked = False
        keep_alive = version == b"HTTP/1.1"
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                v = value.strip()
                if not v.isdigit():
                    raise XksInvalidResponse("the XKS proxy sent a bad Content-Length")
                length = int(v)
            elif name == b"transfer-encoding":
                chunked = value.strip().lower() == b"chunked"
            elif name == b"connection":
                token = value.strip().lower()
                keep_alive = token == b"keep-alive" or (keep_alive and token != b"close")
        if chunked:
            body, buf = self._chunked(buf, deadline)
        elif length is not None:
            if length > MAX_RESPONSE_BYTES:
                raise XksInvalidResponse(
                    f"the XKS proxy's answer is longer than {MAX_RESPONSE_BYTES} bytes"
                )
            while len(buf) < length:
                buf += self._recv(deadline)
            body, buf = buf[:length], buf[length:]
        else:  # the body runs to the end of the connection
            keep_alive = False
            try:
                while len(buf) <= MAX_RESPONSE_BYTES:
                    buf += self._recv(deadline)
            except _Dropped:
                pass
            if len(buf) > MAX_RESPONSE_BYTES:
                raise XksInvalidResponse(
                    f"the XKS proxy's answer is longer than {MAX_RESPONSE_BYTES} bytes"
                )
            body, buf = buf, b""
        self.buffer = buf
        return status, body, keep_alive and not buf

    def _chunked(self, buf: bytes, deadline: float) -> tuple[bytes, bytes]:
        """A chunked body. The lines between chunks (a size, the final CRLF) are bounded like
        the headers: a proxy sending a size line or trailers without end made this client
        buffer all it sent until the deadline (review)."""
        body = b""
        while True:
            end = buf.find(b"\r\n")
            while end < 0:
                if len(buf) > _MAX_HEAD:
                    raise XksInvalidResponse("the XKS proxy sent a chunk size line too long")
                buf += self._recv(deadline)
                end = buf.find(b"\r\n")
            try:
                size = int(buf[:end].split(b";", 1)[0], 16)
            except ValueError:
                raise XksInvalidResponse("the XKS proxy sent a bad chunk size") from None
            buf = buf[end + 2 :]
            if size == 0:
                while b"\r\n" not in buf:  # no trailers expected: the final CRLF
                    if len(buf) > _MAX_HEAD:
                        raise XksInvalidResponse("the XKS proxy's chunked answer does not end")
                    buf += self._recv(deadline)
                return body, buf[buf.find(b"\r\n") + 2 :]
            if len(body) + size > MAX_RESPONSE_BYTES:
                raise XksInvalidResponse(
                    f"the XKS proxy's answer is longer than {MAX_RESPONSE_BYTES} bytes"
                )
            while len(buf) < size + 2:
                buf += self._recv(deadline)
            body += buf[:size]
            buf = buf[size + 2 :]


class Transport:
    """Kept-alive HTTPS connections to ``name:port`` (`name` is what the TLS certificate must
    name and what is dialled), at most `max_idle` kept between requests."""

    def __init__(
        self, name: str, port: int, context: ssl.SSLContext, timeout: float, max_idle: int
    ) -> None:
        self.name = name
        self.port = port
        self.endpoint = f"https://{name if ':' not in name else f'[{name}]'}:{port}"
        self._context = context
        self.timeout = timeout
        self._max_idle = max_idle
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __del__(self) -> None:
        # a client dropped without close(): its idle sockets are closed, not left to the GC
        for conn in getattr(self, "_idle", ()):
            conn.close()

    def _take(self) -> _Conn | None:
        """An idle connection the proxy has not closed, if there is one."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            try:
                readable, _, _ = select.select([conn.sock], [], [], 0)
            except (OSError, ValueError):
                readable = [conn.sock]
            if not readable:
                return conn
            conn.close()  # EOF (the proxy closed it) or bytes no request asked for

    def _give_back(self, conn: _Conn) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _timeout_error(self) -> XksTimeout:
        return XksTimeout(f"the XKS proxy {self.endpoint} did not answer within {self.timeout:g} s")

    def _connect(self, deadline: float) -> _Conn:
        try:
            raw = socket.create_connection(
                (self.name, self.port), timeout=max(deadline - time.monotonic(), 1e-3)
            )
        except TimeoutError:
            raise self._timeout_error() from None
        except OSError as e:
            raise XksUnreachable(
                f"cannot reach the XKS proxy {self.endpoint}: {e.strerror or e}"
            ) from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(max(deadline - time.monotonic(), 1e-3))
            return _Conn(self._context.wrap_socket(raw, server_hostname=self.name))
        except ssl.SSLError as e:
            raw.close()
            raise XksTlsError(f"TLS with the XKS proxy {self.endpoint} failed: {e}") from None
        except TimeoutError:
            raw.close()
            raise self._timeout_error() from None
        except OSError as e:
            raw.close()
            raise XksUnreachable(
                f"the XKS proxy {self.endpoint} closed the connection during the TLS "
                f"handshake: {e.strerror or e}"
            ) from None

    def post(self, path: str, head: bytes, body: bytes) -> tuple[int, bytes]:
        """(status, body) of ``POST path`` with the header lines `head` (each ending in
        CRLF; Content-Length is added) and `body`."""
        request = b"".join(
            (
                b"POST ",
                path.encode("ascii"),
                b" HTTP/1.1\r\n",
                head,
                b"Content-Length: ",
                str(len(body)).encode("ascii"),
                b"\r\n\r\n",
                body,
            )
        )
        deadline = time.monotonic() + self.timeout
        retried = False
        while True:
            conn = self._take()
            reused = conn is not None
            if conn is None:
                conn = self._connect(deadline)
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                conn.sock.settimeout(remaining)
                conn.armed = True
                conn.sock.sendall(request)
                status, answer, keep_alive = conn.read_answer(deadline)
            except TimeoutError:
                conn.close()
                raise self._timeout_error() from None
            except ssl.SSLError as e:
                conn.close()
                raise XksTlsError(f"TLS with the XKS proxy {self.endpoint} failed: {e}") from None
            except (_Dropped, ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                conn.close()
                if reused and not retried and time.monotonic() < deadline:
                    retried = True  # the proxy closed a kept-alive connection: a fresh one
                    continue
                raise XksUnreachable(
                    f"the XKS proxy {self.endpoint} closed the connection before answering"
                ) from None
            except XksInvalidResponse:
                conn.close()
                raise
            except OSError as e:
                conn.close()
                raise XksUnreachable(
                    f"the XKS proxy {self.endpoint} failed: {e.strerror or e}"
                ) from None
            if keep_alive:
                self._give_back(conn)
            else:
                conn.close()
            return status, answer
