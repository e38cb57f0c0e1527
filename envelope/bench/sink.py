"""A sink that keeps nothing: what a benchmark writes to when only the work before the
output is to be timed (the streaming pipeline alone, a lake sample to nowhere)."""

from __future__ import annotations

__all__ = ("CountingSink",)


class CountingSink:
    """Satisfies `envelope.streams.Sink`; keeps nothing and counts the bytes it was given."""

    def __init__(self) -> None:
        self.bytes = 0

    async def write(self, data: memoryview) -> None:
        self.bytes += len(data)

    async def commit(self) -> None:
        return None

    async def abort(self) -> None:
        return None
