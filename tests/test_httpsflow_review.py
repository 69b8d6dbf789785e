"""Review of the /metrics, /healthz, /readyz endpoint under a connection flood, and of the sFlow
interface fields: each test written against a bug found in review."""

from __future__ import annotations

import asyncio
import collections
import os
import resource
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from collector import http

# ------------------------------------------------------------------------------------------------
# The HTTP endpoint: connections it holds at once

FD_LIMIT = 512  # the collector's RLIMIT_NOFILE in the flood test: reached at once without a cap
FLOOD = 1000    # idle connections opened at once


def _nofile_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _idle(port: int) -> socket.socket:
    """A connection that never sends a byte (a port scan, a stuck scraper)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    return s


def _probe(port: int, path: str = "/healthz") -> int:
    """What a kubelet probe or `flowscope health` sees: the status, 0 for no answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


@pytest.mark.parametrize("loop,workers", [("uvloop", 1), ("asyncio", 2)])
def test_idle_connections_cannot_exhaust_the_collectors_descriptors(collector: Any, loop: str,
                                                                     workers: int) -> None:
    """Every connection to the metrics address was accepted and held until its request head
    arrived (10 s): a port scan or a misbehaving scraper opening connections and sending nothing
    took one descriptor each, with no bound, from the process that also needs descriptors for
    its UDP sockets, Kafka connections and state saves. At a 512-descriptor limit, 1000 idle
    connections took all of them: /healthz was reset (uvloop) or timed out (asyncio, which then
    logged "socket.accept() out of system resource" at every accept). Now the endpoint holds at
    most --http-max-connections (default 64) connections; at the cap the oldest one still waiting
    for its request is closed for the new one (counted), so probes keep being answered."""
    c = collector(["--loop", loop, "--workers", str(workers)], preexec=_nofile_limit)
    pid = c.proc.pid
    base = len(os.listdir(f"/proc/{pid}/fd"))
    held = collections.deque([_idle(c.http) for _ in range(FLOOD)])
    stop = threading.Event()
    most = [0]

    def flood() -> None:   # keeps opening idle connections (200 a second) while probes are made
        while not stop.is_set():
            for _ in range(20):
                held.append(_idle(c.http))
                if len(held) > 2000:
                    held.popleft().close()
            try:
                most[0] = max(most[0], len(os.listdir(f"/proc/{pid}/fd")))
            except OSError:
                pass
            stop.wait(0.1)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        time.sleep(1.0)   # the first ones accepted (or not) and the flood under way
        probes = [_probe(c.http) for _ in range(5)]
        ready = _probe(c.http, "/readyz")
    finally:
        stop.set()
        t.join()
    try:
        assert probes == [200] * 5 and ready == 200, (probes, ready, c.log()[-2000:])
        # the cap (64), and connections accepted but not yet seen by the endpoint: asyncio accepts
        # up to the listen backlog (100) at each turn of its loop and makes their transports two
        # turns later; room is left for everything else
        assert most[0] < FD_LIMIT - 32, (base, most[0])
        # (not all of them: the kernel's accept queue, the listen backlog of 100, overflows)
        assert c.value("flowscope_http_connections_closed_total", reason="evicted") >= 100
        assert c.value("flowscope_http_connections") <= 64
        assert "out of system resource" not in c.log()
    finally:
        for s in held:
            s.close()


async def _serve(routes: dict[str, Any], **kw: Any) -> http.HttpServer:
    srv = http.HttpServer("127.0.0.1:1", routes, **kw)
    srv.port = 0
    await srv.start()
    return srv


def test_connections_beyond_the_cap_are_closed_at_once_when_none_is_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the cap, with every connection past its request (answers a slow client is taking, each
    bounded by RESPONSE_TIMEOUT_S), a new connection is closed at once, not queued, and counted
    as `limit`; once one of them ends, connections are served again."""
    monkeypatch.setattr(http, "RESPONSE_TIMEOUT_S", 60.0)
    body = b"x" * (32 << 20)   # more than the socket buffers hold: the answer waits for its reader

    async def main() -> tuple[bytes, dict[str, int], bytes]:
        srv = await _serve({"/metrics": lambda: (200, "text/plain", body),
                            "/healthz": lambda: (200, "text/plain", b"ok\n")}, max_connections=2)
        slow = []
        try:
            for _ in range(2):
                r, w = await asyncio.open_connection("127.0.0.1", srv.port, limit=1 << 10)
                w.write(b"GET /metrics HTTP/1.1\r\n\r\n")
                await w.drain()
                slow.append((r, w))
            await asyncio.sleep(0)
            # both are being answered (their heads read) before the third comes
            for _ in range(200):
                if srv.open == 2 and not srv.waiting:
                    break
                await asyncio.sleep(0.05)
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET /healthz HTTP/1.1\r\n\r\n")
            refused = await asyncio.wait_for(r.read(), 10)
            w.close()
            counts = dict(srv.closed)
            slow[0][1].transport.abort()   # one slow client goes: room again
            for _ in range(200):
                if srv.open < 2:
                    break
                await asyncio.sleep(0.05)
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET /healthz HTTP/1.1\r\n\r\n")
            served = await asyncio.wait_for(r.read(), 10)
            w.close()
            return refused, counts, served
        finally:
            for _, w in slow:
                w.transport.abort()
            await srv.stop()

    refused, counts, served = asyncio.run(main())
    assert refused == b"" and counts["limit"] == 1 and counts["evicted"] == 0, (refused[:80], counts)
    assert served.startswith(b"HTTP/1.1 200 "), served[:80]


def test_a_connection_that_sends_nothing_is_closed_after_a_short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that has not sent its request line was held as long as a whole request head
    may take (REQUEST_TIMEOUT_S, 10 s): a port scan's connections each held a descriptor that
    long. Nothing at all within REQUEST_LINE_TIMEOUT_S (3 s; a scraper sends its request as it
    connects) closes it, counted as `timeout`; a request line that did come keeps the longer
    deadline for its headers."""
    monkeypatch.setattr(http, "REQUEST_TIMEOUT_S", 120.0)
    monkeypatch.setattr(http, "REQUEST_LINE_TIMEOUT_S", 0.5, raising=False)

    async def main() -> tuple[float, dict[str, int], bytes]:
        srv = await _serve({"/healthz": lambda: (200, "text/plain", b"ok\n")})
        try:
            t0 = time.monotonic()
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                eof = await asyncio.wait_for(r.read(), 30)
            except asyncio.TimeoutError:
                eof = b"still open"
            took = time.monotonic() - t0
            w.close()
            # a request line sent at once, its headers a second later: answered
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET /healthz HTTP/1.1\r\n")
            await w.drain()
            await asyncio.sleep(1.0)
            w.write(b"Host: x\r\n\r\n")
            answer = await asyncio.wait_for(r.read(), 10)
            w.close()
            return took if eof == b"" else -1.0, dict(srv.closed), answer
        finally:
            await srv.stop()

    took, counts, answer = asyncio.run(main())
    assert took >= 0, "the idle connection was not closed within 30 s"
    assert counts["timeout"] == 1, counts
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]

