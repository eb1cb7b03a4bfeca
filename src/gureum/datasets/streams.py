"""A blocking reader over an async byte stream, for work that runs in a worker thread.

Uploads arrive as an async stream on the event loop, but hashing, writing to the store and
parsing archives are blocking work. The handler starts that work with ``anyio.to_thread`` and
gives it this reader; each refill hops back to the loop once for about ``block`` bytes, so a
200 MB body costs a few hundred hops, and memory stays at one block whatever the body size.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterable, AsyncIterator

from anyio import from_thread

BLOCK = 1024 * 1024


class AsyncBodyReader(io.RawIOBase):
    def __init__(self, chunks: AsyncIterable[bytes], block: int = BLOCK) -> None:
        super().__init__()
        self._it: AsyncIterator[bytes] = aiter(chunks)
        self._block = block
        self._pending = memoryview(b"")
        self._eof = False
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    async def _next_block(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while size < self._block:
            try:
                chunk = await anext(self._it)
            except StopAsyncIteration:
                self._eof = True
                break
            if chunk:
                parts.append(chunk)
                size += len(chunk)
        return b"".join(parts)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            if self._eof:
                return 0
            self._pending = memoryview(from_thread.run(self._next_block))
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.bytes_read += n
        return n


def body_reader(chunks: AsyncIterable[bytes], block: int = BLOCK) -> io.BufferedReader:
    """A buffered (so peekable, and typed as a binary file) reader over ``chunks``."""
    return io.BufferedReader(AsyncBodyReader(chunks, block), block)
