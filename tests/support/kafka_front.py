"""A plain TCP front for a real Kafka broker, for tests that must see or change what passes.

The broker is started advertising the front's port, so clients reach it only through the
front; each client connection gets a connection of its own to the broker. Subclasses say what
happens to each connection's requests and answers (`_handle`). The front runs on an event loop
of its own in a thread, so a test's collector (another process) and its assertions go on while
it serves.
"""

from __future__ import annotations

import asyncio
import threading

from conftest import free_tcp_port


class KafkaFront:
    """start() / stop() around an asyncio server on 127.0.0.1:`port` whose connections go to
    `_handle`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_tcp_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _upstream(self, writer: asyncio.StreamWriter) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection of the client's own to the broker; None (the client's closed) when the
        broker cannot be reached."""
        try:
            return await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
