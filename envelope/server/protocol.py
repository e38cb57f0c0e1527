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
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools is optional: uvicorn's pure-Python h11 parser then
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

__all__ = ("CorkedHTTPProtocol", "CorkedTransport")


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
    """uvicorn's HTTP protocol, writing each response with one system call."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # the corked transport stands in for the real one (it forwards everything else)
        super().connection_made(cast(asyncio.Transport, CorkedTransport(transport, self.loop)))

    def on_response_complete(self) -> None:
        transport = self.transport
        if isinstance(transport, CorkedTransport):
            transport.flush()
        super().on_response_complete()
