"""A tiny asyncio HTTP endpoint for /metrics, /healthz and /readyz.

Why not prometheus_client's server: it runs in a thread per process and knows nothing about
readiness; this one runs on the event loop that owns the aggregated metrics (the only process
with `--workers 1`, the supervisor otherwise), answers three GET paths and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .config import split_hostport

log = logging.getLogger("flowscope.http")

Handler = Callable[[], tuple[int, str, bytes]]

# The whole request head (request line and headers) must arrive within this: a deadline per
# line let a client that sends a header now and then hold a connection, and a descriptor, for
# ever (slowloris).
REQUEST_TIMEOUT_S = 10.0
# Header lines read at most (a scraper sends a handful).
MAX_HEADERS = 100
# The answer must be taken by the client within this: a client that never reads (a receive
# window that stays shut) otherwise held the handler in drain(), and its connection, descriptor
# and rendered /metrics, for ever once the answer outgrew the socket buffers. Prometheus gives up
# on a scrape after its scrape_timeout (10 s by default) anyway.
RESPONSE_TIMEOUT_S = 30.0


class HttpServer:
    def __init__(self, addr: str, routes: dict[str, Handler]) -> None:
        self.host, self.port = split_hostport(addr)
        self.routes = routes
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self.server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("http: serving %s on %s:%d", ", ".join(sorted(self.routes)), self.host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> bytes | None:
        """The request line, its headers read and dropped (so the client is not reset); None
        when a line is longer than the stream's limit (64 KiB) or there are too many."""
        try:
            line = await reader.readline()
            for _ in range(MAX_HEADERS):
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    return line
        except ValueError:  # asyncio.LimitOverrunError's: a line past the limit
            pass
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(self._head(reader), REQUEST_TIMEOUT_S)
            parts = line.decode("latin-1").split() if line is not None else []
            target = parts[1] if len(parts) >= 2 else ""
            if target[:7].lower() == "http://" or target[:8].lower() == "https://":
                # RFC 9112 3.2.2: a server MUST accept the absolute-form (what a client sends
                # through a proxy); its path is what follows the authority
                target = "/" + target.split("//", 1)[1].partition("/")[2]
            path = target.split("?", 1)[0]
            handler = self.routes.get(path)
            if line is None:
                status, ctype, body = 431, "text/plain", b"request header fields too large\n"
            elif len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            elif handler is None:
                status, ctype, body = 404, "text/plain", b"not found; try " + ", ".join(self.routes).encode() + b"\n"
            else:
                status, ctype, body = handler()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
                      503: "Service Unavailable"}.get(status, "")
            # RFC 9110 15.5.6: a 405 MUST list the methods the resource supports
            allow = "Allow: GET, HEAD\r\n" if status == 405 else ""
            head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    f"{allow}Connection: close\r\n\r\n").encode()
            # Only a HEAD request's answer leaves the body out (RFC 9110 9.3.2); any other answer
            # carries the Content-Length bytes it announces, the 431 and 405 ones included
            writer.write(head + (b"" if parts and parts[0] == "HEAD" else body))
            try:
                await asyncio.wait_for(writer.drain(), RESPONSE_TIMEOUT_S)
            except asyncio.TimeoutError:
                # close() would wait for the client to take what is buffered: drop it instead
                writer.transport.abort()
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        except Exception as exc:  # never let a scrape take the collector down
            log.error("http: %r", exc)
        finally:
            writer.close()
