"""A tiny asyncio HTTP endpoint for /metrics, /healthz and /readyz.

Why not prometheus_client's server: it runs in a thread per process and knows nothing about
readiness; this one runs on the event loop that owns the aggregated metrics (the only process
with `--workers 1`, the supervisor otherwise), answers three GET paths and nothing else.

It holds at most `max_connections` connections at once (`--http-max-connections`): each one is a
descriptor of the process that also needs them for its UDP sockets, Kafka connections and state
saves, and a port scan or a stuck scraper opening connections and sending nothing took them all.
At the cap the oldest connection that has sent nothing yet is closed for the new one (else the
oldest still sending its request head), so a probe, which sends its request as it connects, is
answered through a flood of idle connections; with none waiting (every one is being answered),
the new one is closed at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import termios
from collections.abc import Callable, Coroutine
from typing import Any

from .config import split_hostport

log = logging.getLogger("flowscope.http")

Handler = Callable[[], tuple[int, str, bytes]]
Transport = asyncio.WriteTransport

# The whole request head (request line and headers) must arrive within this: a deadline per
# line let a client that sends a header now and then hold a connection, and a descriptor, for
# ever (slowloris).
REQUEST_TIMEOUT_S = 10.0
# The request line must start within this: a scraper or probe sends it as it connects, while a
# connection that sends nothing (a port scan, a stuck client) would otherwise hold its descriptor
# for the whole REQUEST_TIMEOUT_S.
REQUEST_LINE_TIMEOUT_S = 3.0
# Connections held at once per address, the default of --http-max-connections: a few scrapers and
# the kubelet's probes need a handful; each connection is a descriptor and its buffers.
MAX_CONNECTIONS = 64
# Why connections were closed without an answer (flowscope_http_connections_closed_total{reason})
CLOSE_REASONS = ("limit", "evicted", "timeout")
# Header lines read at most (a scraper sends a handful).
MAX_HEADERS = 100
# The answer must be taken by the client within this: a client that never reads (a receive
# window that stays shut) otherwise held the handler in drain(), and its connection, descriptor
# and rendered /metrics, for ever once the answer outgrew the socket buffers. Prometheus gives up
# on a scrape after its scrape_timeout (10 s by default) anyway.
RESPONSE_TIMEOUT_S = 30.0


class HttpServer:
    def __init__(self, addr: str, routes: dict[str, Handler], *, max_connections: int = MAX_CONNECTIONS,
                 elsewhere: dict[str, str] | None = None) -> None:
        self.host, self.port = split_hostport(addr)
        self.routes = routes
        # paths served by another of the process's addresses: a 404 for one says where it is
        # (the kubelet probing /healthz on the metrics port once --health-addr moved it)
        self.elsewhere = elsewhere or {}
        self.max_connections = max_connections
        self.server: asyncio.base_events.Server | None = None
        # connections held, those of them still waiting for their request head and those that
        # have sent nothing at all, oldest first (dicts keep insertion order; values unused)
        self.connections: dict[Transport, None] = {}
        self.waiting: dict[Transport, None] = {}
        self.silent: dict[Transport, None] = {}
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)
        self.stopping = False

    @property
    def open(self) -> int:
        return len(self.connections)

    @property
    def addr(self) -> str:
        """HOST:PORT as the logs name it, an IPv6 host in brackets ("::1:9400" is an address alone)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # asyncio.start_server's own two lines, with a protocol that says when bytes arrive
        self.server = await loop.create_server(lambda: _Protocol(self, asyncio.StreamReader(loop=loop), loop),
                                               self.host, self.port)
        sock = self.server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("http: serving %s on %s", ", ".join(sorted(self.routes)), self.addr)

    async def stop(self) -> None:
        """Stops listening and closes the connections still held: close() alone leaves them open
        (a scraper's or a probe's, still sending its request or taking its answer) until their
        timeouts, and from Python 3.12 on wait_closed() waits for them, so shutdown hung that
        long. Each is forgotten before it is aborted, so its handler's own close finds it gone;
        a connection accepted before close() but not yet made is refused by _connected."""
        if self.server is None:
            return
        self.stopping = True
        self.server.close()
        for t in list(self.connections):
            self._forget(t)
            t.abort()
        await self.server.wait_closed()

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> bytes | None:
        """The request line, its headers read and dropped (so the client is not reset); None
        when a line is longer than the stream's limit (64 KiB) or there are too many. Raises
        TimeoutError when not a byte came within REQUEST_LINE_TIMEOUT_S."""
        try:
            # a client that sent nothing and closed its end (b"") is answered 405 as before
            first = await asyncio.wait_for(reader.read(1), REQUEST_LINE_TIMEOUT_S)
            line = first + (await reader.readline() if first not in (b"", b"\n") else b"")
            if line in (b"\r\n", b"\n"):
                # RFC 9112 2.2: an empty line before the request line is ignored (robustness);
                # a second one is the request line, empty, answered 400 without headers to wait for
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    return line
            for _ in range(MAX_HEADERS):
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    return line
        except ValueError:  # asyncio.LimitOverrunError's: a line past the limit
            pass
        return None

    def _connected(self, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> Coroutine[Any, Any, None] | None:
        """Called as the connection is made, before its handler's task starts: the cap is kept
        here, synchronously, or the connections accepted while the tasks wait for their first
        step (a burst of hundreds in a flood) would all hold their descriptors. At the cap the
        oldest connection that has sent nothing is closed for the new one, else the oldest still
        sending its request head (a flood of idle or slow connections cannot keep a probe out,
        nor close one whose request has come), else the new one is refused; all counted.
        abort() closes at once, with a reset, holding nothing."""
        new = writer.transport
        if self.stopping:
            new.abort()
            return None
        if len(self.connections) >= self.max_connections:
            if not self.waiting:
                self.closed["limit"] += 1
                new.abort()
                return None
            old = self._idlest()
            self._forget(old)
            self.closed["evicted"] += 1
            # its handler sees the end of the stream, then the closed transport, and answers nothing
            old.abort()
        self.connections[new] = self.waiting[new] = self.silent[new] = None
        return self._handle(reader, writer)

    def _idlest(self) -> Transport:
        """The oldest connection that has sent nothing, else the oldest still waiting for its
        request head. A connection accepted in the same burst as a flood may have its request
        in the kernel's buffer before the loop has read it (data_received comes a turn or two
        after connection_made, and asyncio accepts up to 100 connections a turn): it is told
        from an idle one by the bytes waiting on its socket, and is not taken."""
        for t in list(self.silent):
            if not _bytes_waiting(t):
                return t
            del self.silent[t]
        return next(iter(self.waiting))

    def _forget(self, transport: Transport) -> None:
        self.connections.pop(transport, None)
        self.waiting.pop(transport, None)
        self.silent.pop(transport, None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(self._head(reader), REQUEST_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.closed["timeout"] += 1
                raise
            if writer.transport not in self.waiting:   # evicted while waiting
                return
            self.waiting.pop(writer.transport, None)
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
            elif len(parts) < 2 or len(parts) > 3 or (len(parts) == 3 and not parts[2].startswith("HTTP/")):
                # RFC 9112 3: method SP request-target SP HTTP-version; an invalid request line
                # is a 400 (a line without the version, "GET /healthz", is still taken)
                status, ctype, body = 400, "text/plain", b"malformed request line\n"
            elif parts[0] not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET and HEAD\n"
            elif handler is None:
                body = b"not found; try " + ", ".join(self.routes).encode() + b"\n"
                if path in self.elsewhere:
                    body = f"not found: {path} is served on {self.elsewhere[path]}\n".encode() + body
                status, ctype = 404, "text/plain"
            else:
                status, ctype, body = handler()
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
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
            self._forget(writer.transport)
            writer.close()


def _bytes_waiting(transport: Transport) -> bool:
    """Whether the kernel holds bytes received on the connection's socket (FIONREAD)."""
    try:
        fd = transport.get_extra_info("socket").fileno()
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0] > 0  # type: ignore[no-any-return]
    except (AttributeError, OSError, ValueError):
        return False


class _Protocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, telling the server when a connection's first bytes arrive:
    data_received runs as they are read from the socket, before the handler's task can see
    them, so a probe whose request has come is not taken for an idle connection."""

    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, server._connected, loop=loop)
        self._server = server
        self._transport_: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport_ = transport
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._server.silent.pop(self._transport_, None)
        super().data_received(data)
