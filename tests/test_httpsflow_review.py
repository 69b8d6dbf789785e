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


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stop_closes_the_connections_still_held(monkeypatch: pytest.MonkeyPatch, loop: str) -> None:
    """stop() closed the listening socket only: a connection that had sent nothing yet, one
    still sending its request head and one whose client was taking its answer slowly (a scraper,
    a kubelet probe) stayed open until their timeouts, and on Python 3.12+ wait_closed() waits
    for them, so the collector's shutdown hung as long. Each client now sees its connection
    closed once stop() returns, an answer in progress cut short. The timeouts are made an hour here, so none of them closes it."""
    from collector.app import loop_factory

    for name in ("REQUEST_TIMEOUT_S", "REQUEST_LINE_TIMEOUT_S", "RESPONSE_TIMEOUT_S"):
        monkeypatch.setattr(http, name, 3600.0)
    body = b"x" * (32 << 20)   # more than the socket buffers hold: the answer waits for its reader

    async def closed(r: asyncio.StreamReader) -> int:
        """The bytes read until the server ended the connection (the end of the stream, after
        what the kernel still held, or a reset), -1 when it did not within 20 s."""
        got = 0
        try:
            while data := await asyncio.wait_for(r.read(1 << 16), 20):
                got += len(data)
        except ConnectionError:
            pass
        except asyncio.TimeoutError:
            return -1
        return got

    async def main() -> tuple[list[int], dict[str, int], int]:
        srv = await _serve({"/metrics": lambda: (200, "text/plain", body)})
        clients = [await asyncio.open_connection("127.0.0.1", srv.port, limit=1 << 10) for _ in range(3)]
        try:
            clients[1][1].write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")          # head not ended
            clients[2][1].write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")    # answer not read
            for _, w in clients[1:]:
                await w.drain()
            for _ in range(200):   # all three held, the third being answered
                if srv.open == 3 and len(srv.waiting) == 2 and len(srv.silent) == 1:
                    break
                await asyncio.sleep(0.05)
            assert (srv.open, len(srv.waiting), len(srv.silent)) == (3, 2, 1)
            await asyncio.wait_for(srv.stop(), 20)
            ends = list(await asyncio.gather(*(closed(r) for r, _ in clients)))
            return ends, dict(srv.closed), srv.open
        finally:
            for _, w in clients:
                w.transport.abort()

    ev = loop_factory(loop)()
    try:
        ends, counts, held = ev.run_until_complete(main())
    finally:
        ev.close()
    # the two that sent no whole request got nothing; the answer being taken was cut short
    # (its client would otherwise have read it all, the server waiting for it)
    assert ends[:2] == [0, 0] and 0 <= ends[2] < len(body), ends
    assert held == 0
    # a shutdown is none of the reasons a connection is closed without its answer
    assert counts == dict.fromkeys(http.CLOSE_REASONS, 0), counts


# ------------------------------------------------------------------------------------------------
# sFlow: the input/output interface "internal" (the agent itself)

INTERNAL = 0x3FFFFFFF    # sflow_version_5.txt, interface format 0: "the maximum value, 0x3FFFFFFF"


def _sflow_flows(samples: list[bytes]) -> list[dict[str, Any]]:
    from test_sflow import RECV, datagram

    from decoders import Decoder

    b = Decoder().decode(datagram(samples), "192.0.2.1", 6343, RECV)
    assert b.error is None, b.error
    return list(b.to_dicts())


def test_sflow_internal_interface_is_no_interface_number() -> None:
    """sflow_version_5.txt: an interface of format 0 whose value is 0x3FFFFFFF "indicates that
    there is no input or output interface": the packet came from or went to the agent itself
    (hsflowd's host traffic, a switch's control plane). It was published as InIf/OutIf
    1073741823, an ifIndex no device has, which joins no interface table and counts as one more
    port in every per-interface view. It is no interface (as Akvorado reads it), and
    `InIfInternal`/`OutIfInternal` say the packet's end was the agent; in an expanded sample the
    spec's erratum names 0xFFFFFFFF for it, and 0x3FFFFFFF (the compact value, which agents
    copy) is taken as well."""
    from test_sflow import eth, flow_sample, flow_sample_expanded, ipv4, raw_header, udp

    pkt = raw_header(eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800), 60)
    flows = _sflow_flows([
        flow_sample([pkt], inp=(0, INTERNAL), out=(0, 6)),               # sent by the agent
        flow_sample([pkt], inp=(0, 3), out=(0, INTERNAL)),               # received by it
        flow_sample_expanded([pkt], inp=(0, 0xFFFFFFFF), out=(0, 70002)),
        flow_sample_expanded([pkt], inp=(0, 70001), out=(0, INTERNAL)),
        flow_sample([pkt], inp=(0, 3), out=(0, INTERNAL - 1)),           # a real (large) ifIndex
        flow_sample([pkt], inp=(0, 3), out=(2, INTERNAL)),               # format 2: not internal
    ])
    got = [(f.get("InIf"), f.get("OutIf"), f.get("InIfInternal"), f.get("OutIfInternal")) for f in flows]
    assert got == [(None, 6, True, None), (3, None, None, True), (None, 70002, True, None),
                   (70001, None, None, True), (3, INTERNAL - 1, None, None), (3, None, None, None)], got


def test_sflow_internal_interface_in_real_captures() -> None:
    """The same in captures of real agents: the corpus's local-interface sample (output = the
    agent) and its ICMP sample (both ends the agent)."""
    from decoders import Decoder
    from tests.conftest import udp_payloads
    from tests.test_golden_corpus import SHARED

    shared = SHARED / "sflow"
    cases = {"akvorado_data-local-interface.pcap": (27, None, None, True),
             "akvorado_data-icmpv4.pcap": (None, None, True, True)}
    if not all((shared / n).is_file() for n in cases):
        pytest.skip(f"shared corpus not found at {shared} (set FLOWSCOPE_SHARED_CORPUS): these akvorado "
                    "captures are AGPL and cannot ship with flowscope; the spec-built datagrams above test the rule")
    for name, want in cases.items():
        dec = Decoder()
        flows = [f for src, port, p in udp_payloads(shared / name)
                 for f in dec.decode(p, src, port, 1.7e9).to_dicts()]
        assert [(f.get("InIf"), f.get("OutIf"), f.get("InIfInternal"), f.get("OutIfInternal"))
                for f in flows] == [want], (name, flows)
