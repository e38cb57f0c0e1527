"""uvicorn's HTTP/1.1 protocol with each response written to the socket once.

uvicorn writes a response's status line and headers when the application sends
``http.response.start`` and its body on ``http.response.body``: two ``send`` system calls
(three with h11's end of message), and on loopback each one also runs the receiving side's TCP
processing in the sender's time slice. A KMS response is a few hundred bytes, so those extra
calls cost more than the bytes. `CorkedHTTPProtocol` hands the protocol a transport that
collects the writes and sends them together when the response is complete (uvicorn's
``on_response_complete``), when the connection closes, or at the latest when the event loop
next runs its callbacks (writes outside a request cycle: uvicorn's own 400 answers, or a
``100 Continue``).

The parser is uvicorn's: httptools when it is installed (a C parser, about half the CPU of a
request here), h11 otherwise.

uvicorn bounds neither how long a request's headers may take nor how large they may be, so one
unauthenticated client could hold sockets open by trickling bytes (slowloris) or grow a worker
by hundreds of MiB with one header. Here a request's headers must arrive within
`envelope._serving.header_timeout_seconds` of the connection opening or of the previous
response (else 408 and the connection is closed) and hold at most `MAX_HEADER_BYTES` there
(else 431, closed). The body's deadline is `envelope._serving.read_body`'s.

An application may answer before it has read a request's whole body (a body over the size
limit). uvicorn's parser then drops the rest of that body as it arrives, and the connection
serves the next request after it; here the rest must arrive within the header deadline and
hold at most `envelope._serving.MAX_DRAIN_BYTES`, else the connection is closed (a client
must not hold a socket by sending an endless refused body). Its bytes are never counted as
the next request's headers (they were: a pipelined call after a 413 got an unsolicited 431).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from .. import _serving

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools is optional: uvicorn's pure-Python h11 parser then
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

__all__ = ("CorkedHTTPProtocol", "CorkedTransport")

_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n"
    b"content-length: 0\r\n\r\n"
)


class CorkedTransport:
    """An `asyncio.Transport` whose writes wait for `flush` (or the loop's next turn)."""

    __slots__ = ("_buffer", "_loop", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._buffer.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send everything written so far, in one write."""
        self._scheduled = False
        buffer = self._buffer
        if not buffer:
            return
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # everything else (is_closing, pause_reading, get_extra_info, abort, ...) as is
        return getattr(self._transport, name)


class CorkedHTTPProtocol(_Base):
    """uvicorn's HTTP protocol, writing each response with one system call, with a deadline
    and a size limit on each request's headers."""

    _header_bytes = 0
    _header_timer: asyncio.TimerHandle | None = None
    #: The last response went out before its request's body was whole: the rest is dropped
    #: (`_drained` bytes so far) before the next request's headers begin.
    _draining = False
    _drained = 0
    #: Of the data being parsed: how many bytes were that body's, and whether it ended there
    #: (uvicorn's parser tells, through `on_body` and `on_message_complete`; its cycle does
    #: not: an answered cycle keeps ``more_body``).
    _drain_body = 0
    _drain_ended = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # the corked transport stands in for the real one (it forwards everything else)
        super().connection_made(cast(asyncio.Transport, CorkedTransport(transport, self.loop)))
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        draining = self._draining
        self._drain_body, self._drain_ended = 0, False
        super().data_received(data)
        if self.transport.is_closing():
            return
        n = len(data)
        if draining:
            if not self._drain_ended:  # all of it was the answered request's body
                self._drained += n
                if self._drained > _serving.MAX_DRAIN_BYTES:
                    self._stop_header_timer()
                    self.transport.close()
                return
            # that body ended in this data: what followed it is the next request's, with its
            # own header deadline from now (a body's chunk framing counts here: a few bytes)
            self._draining = False
            self._await_headers()
            n = max(0, n - self._drain_body)
        if self._awaiting_headers():  # all of it belongs to headers not yet complete
            self._header_bytes += n
            if self._header_bytes > _serving.MAX_HEADER_BYTES:
                self._refuse(_TOO_LARGE)
        else:
            self._header_bytes = 0
            self._stop_header_timer()

    def on_body(self, body: bytes) -> None:  # (httptools' callback; h11 has none: see below)
        if self._draining:
            self._drain_body += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        # Without these callbacks (uvicorn's h11 parser) a drain never sees its body end: it
        # lasts until the header deadline or the byte limit, and the connection is closed.
        if self._draining:
            self._drain_ended = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        transport = self.transport
        if isinstance(transport, CorkedTransport):
            transport.flush()
        draining = self._body_arriving()
        super().on_response_complete()
        if not transport.is_closing():
            self._await_headers()  # the next request on this connection has its own deadline
            self._draining, self._drained = draining, 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is None or bool(cycle.response_complete)

    def _body_arriving(self) -> bool:
        """The current request's body is not whole yet (uvicorn's cycles: `more_body`)."""
        cycle = getattr(self, "cycle", None)
        return cycle is not None and bool(getattr(cycle, "more_body", False))

    def _await_headers(self) -> None:
        self._stop_header_timer()
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(
            _serving.header_timeout_seconds, self._headers_late
        )

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._draining and not self.transport.is_closing():
            self.transport.close()  # (the refused body did not end in time: already answered)
            return
        if self._awaiting_headers() and not self.transport.is_closing():
            if self._header_bytes:
                self._refuse(_TIMEOUT)
            else:  # nothing of a request came: an idle connection is closed without a word
                self._stop_header_timer()
                self.transport.close()

    def _refuse(self, response: bytes) -> None:
        self._stop_header_timer()
        self.transport.write(response)
        self.transport.close()
