"""Review of /metrics, /healthz, /readyz and the --workers supervisor: each test written against
a bug found in review (the HTTP endpoint's answers against RFC 9110/9112, a scraper that never
reads its answer, merged series across workers)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_v5, send_udp, wait_for

from collector import http


async def _serve(routes: dict[str, Any]) -> http.HttpServer:
    srv = http.HttpServer("127.0.0.1:1", routes)
    srv.port = 0
    await srv.start()
    return srv


async def _exchange(srv: http.HttpServer, request: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    w.write(request)
    await w.drain()
    answer = await asyncio.wait_for(r.read(), 5)
    w.close()
    return answer


def _split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_every_answer_carries_the_body_its_content_length_announces() -> None:
    """RFC 9112 section 6.3: a response with Content-Length has exactly that many body bytes.
    The 431 answer (an overlong header line) and the 405 answer to an empty request line said
    Content-Length: N and sent no body: the body was left out whenever the request line had not
    been split into a method, not only for HEAD, so a client read a truncated response."""
    async def main() -> list[bytes]:
        srv = await _serve({"/healthz": lambda: (200, "text/plain", b"ok\n")})
        try:
            return [await _exchange(srv, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"),
                    await _exchange(srv, b"\r\n\r\n"),
                    await _exchange(srv, b"GET /healthz HTTP/1.1\r\n\r\n")]
        finally:
            await srv.stop()

    answers = asyncio.run(main())
    for answer in answers:
        status, headers, body = _split(answer)
        assert int(headers["content-length"]) == len(body), (status, answer[:200])
    assert [_split(a)[0] for a in answers] == [431, 400, 200]


@pytest.mark.parametrize("request_line,status", [
    (b"GET /healthz HTTP/1.1", 200),
    (b"\r\nGET /healthz HTTP/1.1", 200),      # RFC 9112 2.2: one empty line before it is ignored
    (b"GET /healthz", 200),                    # no version: still taken
    (b"GARBAGE", 400),
    (b"GET /healthz HTTP/1.1 extra", 400),
    (b"GET /a b HTTP/1.1", 400),               # a space inside the target
    (b"GET /healthz XTTP/1.1", 400),
    (b"POST /healthz HTTP/1.1", 405),
])
def test_a_malformed_request_line_is_a_400(request_line: bytes, status: int) -> None:
    """RFC 9112 section 3: "Recipients of an invalid request-line SHOULD respond with either a
    400 (Bad Request) error or a 301 (Moved Permanently) redirect". A line of one word, or of
    four, was answered 405 Method Not Allowed (with an Allow header) or served as if valid; an
    empty line before the request line (which section 2.2 says to ignore) made it a 405."""
    async def main() -> bytes:
        srv = await _serve({"/healthz": lambda: (200, "text/plain", b"ok\n")})
        try:
            return await _exchange(srv, request_line + b"\r\nHost: x\r\n\r\n")
        finally:
            await srv.stop()

    got, headers, body = _split(asyncio.run(main()))
    assert got == status, (request_line, got, body)
    assert int(headers["content-length"]) == len(body)
    if status == 400:
        assert body == b"malformed request line\n" and "allow" not in headers


def test_a_404_for_a_path_served_on_the_other_address_says_where(collector: Any) -> None:
    """With --health-addr set, /healthz and /readyz leave the metrics address: a probe still
    pointed at the metrics port got "not found; try /metrics", not a word about where they went."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        hport = s.getsockname()[1]
    c = collector(["--health-addr", f"127.0.0.1:{hport}"], wait_ready=False)
    wait_for(lambda: c.get("/metrics")[0] == 200, 20)
    for path in ("/healthz", "/readyz"):
        status, body = c.get(path)
        assert status == 404
        assert body.startswith(f"not found: {path} is served on the health address 127.0.0.1:{hport} "
                               "(--health-addr)\n"), body
    status, body = c.get("/nothing")
    assert status == 404 and body == "not found; try /metrics\n", body


def test_head_has_the_length_of_get_and_no_body() -> None:
    async def main() -> tuple[bytes, bytes]:
        srv = await _serve({"/healthz": lambda: (200, "text/plain", b"ok\n")})
        try:
            return (await _exchange(srv, b"HEAD /healthz HTTP/1.1\r\n\r\n"),
                    await _exchange(srv, b"GET /healthz HTTP/1.1\r\n\r\n"))
        finally:
            await srv.stop()

    head, get = asyncio.run(main())
    assert _split(head)[0] == _split(get)[0] == 200
    assert _split(head)[1]["content-length"] == _split(get)[1]["content-length"] == "3"
    assert _split(head)[2] == b"" and _split(get)[2] == b"ok\n"


def test_405_says_which_methods_are_allowed() -> None:
    """RFC 9110 section 15.5.6: "The origin server MUST generate an Allow header field in a 405
    (Method Not Allowed) response containing a list of the target resource's currently
    supported methods." The endpoint answered a POST (or PUT, DELETE...) 405 without one."""
    async def main() -> bytes:
        srv = await _serve({"/metrics": lambda: (200, "text/plain", b"x 1\n")})
        try:
            return await _exchange(srv, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        finally:
            await srv.stop()

    status, headers, body = _split(asyncio.run(main()))
    assert status == 405
    assert {m.strip() for m in headers.get("allow", "").split(",")} == {"GET", "HEAD"}
    assert body == b"only GET and HEAD\n"   # the body says what the header does


def test_a_client_that_never_reads_its_answer_does_not_hold_the_connection_for_ever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The request head had a deadline (slowloris), the answer none: a client that sends its
    request and then never reads (a receive window that stays shut) left the handler waiting in
    drain() for ever once the answer (a /metrics of many series) was more than the kernel's
    buffers and the transport's high-water mark hold, keeping the connection, its descriptor and
    the rendered answer; and a transport closed with data still buffered waits to send it. The
    answer now has a deadline too, after which the connection is aborted."""
    monkeypatch.setattr(http, "REQUEST_TIMEOUT_S", 0.5)
    monkeypatch.setattr(http, "RESPONSE_TIMEOUT_S", 0.5, raising=False)
    body = b"x" * (8 << 20)   # more than the socket buffers and the transport's high-water mark
    handlers: list[float] = []

    async def main() -> tuple[int, int]:
        srv = await _serve({"/metrics": lambda: (handlers.append(time.monotonic()), (200, "text/plain", body))[1]})
        loop = asyncio.get_running_loop()
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.setblocking(False)
        try:
            await loop.sock_connect(c, ("127.0.0.1", srv.port))
            await loop.sock_sendall(c, b"GET /metrics HTTP/1.1\r\n\r\n")
            await asyncio.sleep(3.0)  # the client reads nothing meanwhile
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            got = 0
            try:
                while True:
                    chunk = await asyncio.wait_for(loop.sock_recv(c, 1 << 20), 2)
                    if not chunk:
                        break
                    got += len(chunk)
            except (ConnectionError, asyncio.TimeoutError):
                pass
            return len(tasks), got
        finally:
            c.close()
            await srv.stop()

    pending, got = asyncio.run(main())
    assert handlers, "the request was not handled"
    # aborted: the handler is gone, and the client never gets the whole answer
    assert pending == 0 and got < len(body), (pending, got)


def test_a_hung_workers_kernel_drops_are_counted(collector: Any, tmp_path: Path) -> None:
    """With --workers N the kernel keeps handing a hung worker (its event loop stopped) its share
    of the exporters: once its socket's buffer is full, the kernel drops them. Those drops were
    read only by the worker itself, so they stayed at its last report: datagrams lost without a
    trace in /metrics until the pod was restarted (and then never). The supervisor reads the
    workers' sockets' drop counters itself (the same /proc/net/udp)."""
    c = collector(["--output-file", str(tmp_path / "flows.jsonl"), "--workers", "2", "--stats-interval", "0.1",
                   "--rcvbuf", "65536"])
    children = [int(p) for p in Path(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children").read_text().split()]
    assert len(children) == 2
    assert c.value("flowscope_kernel_receive_drops_total") == 0
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    try:
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
        sent = 3000
        d = make_v5(1, 2, 0)
        for i in range(sent):
            socks[i % 8].sendto(d, ("127.0.0.1", c.port))
        for s in socks:
            s.close()
        received = c.value("flowscope_received_datagrams_total")
        # what the stopped workers' sockets could not hold (64 KiB each) was dropped
        drops = c.value("flowscope_kernel_receive_drops_total")
        assert drops > sent / 2, (received, drops)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: c.value("flowscope_received_datagrams_total") + c.value("flowscope_kernel_receive_drops_total")
             == sent, 10, what="every datagram received or counted as dropped by the kernel")
    before = c.value("flowscope_kernel_receive_drops_total")
    time.sleep(0.5)
    assert c.value("flowscope_kernel_receive_drops_total") == before   # never back, never twice


def test_informers_synced_is_0_while_a_worker_has_not_reported_it() -> None:
    """flowscope_informers_synced: "1 when enrichment is enabled and every informer has
    completed its first list (with --workers, in every worker)". It was the minimum over the
    workers that sent the series, so a worker still starting (its "starting" snapshot comes
    before its informers start, and loading --state-file can take minutes) or not yet reported
    was left out, and one synced worker made it 1."""
    from collector.metrics import Aggregator, starting_snapshot

    agg = Aggregator(2)
    agg.update(0, {"flowscope_informers_synced": {(): 1}, "_ready": {(): (True, [])}})
    assert agg.merged()["flowscope_informers_synced"][()] == 0      # worker 1 never reported
    agg.update(1, starting_snapshot("state files"))
    assert agg.merged()["flowscope_informers_synced"][()] == 0      # worker 1 is starting
    agg.update(1, {"flowscope_informers_synced": {(): 1}, "_ready": {(): (True, [])}})
    assert agg.merged()["flowscope_informers_synced"][()] == 1
    # without enrichment no worker reports it: no series, not a 0
    agg = Aggregator(2)
    agg.update(0, {"_ready": {(): (True, [])}})
    agg.update(1, starting_snapshot("state files"))
    assert "flowscope_informers_synced" not in agg.merged()


def test_a_worker_killed_at_the_shutdown_deadline_says_what_it_held(collector: Any) -> None:
    """A worker that does not stop within --shutdown-timeout (+10 s) of the supervisor's SIGTERM
    (hung) is killed; the flows its last report held went with it, and only "did not stop in
    time; killing it" was logged: not how many were lost, unlike a worker that dies while
    running (worker_died). Nothing is lost silently: the log says what its last report held."""
    c = collector(["--sink", "stdout", "--workers", "2", "--stats-interval", "0.2", "--shutdown-timeout", "1"],
                  stdout=subprocess.PIPE)
    children = [int(p) for p in Path(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children").read_text().split()]
    assert len(children) == 2
    # nobody reads stdout: the pipe fills and the flows wait in the worker that got them
    send_udp([make_v5(30 * i, 30, 30 * i) for i in range(40)], c.port)
    wait_for(lambda: c.value("flowscope_queue_records") > 0, 10, what="flows queued")
    queued = -1.0
    while queued != c.value("flowscope_queue_records"):   # settled: the pipe is full
        queued = c.value("flowscope_queue_records")
        time.sleep(1.0)
    for pid in children:
        os.kill(pid, signal.SIGSTOP)    # hung: they will not stop when told
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(40) != 0
    log = c.log()
    assert log.count("did not stop in time; killing it") == 2, log
    held = [int(n) for n in re.findall(r"died holding (\d+) flow records", log)]
    assert sum(held) == queued > 0, log


def test_a_dead_workers_listeners_and_sink_are_not_reported_up() -> None:
    """A worker that died (killed, crashed) holds no socket and no sink: its last snapshot said
    flowscope_listener_up 1, flowscope_sink_connected 1 and ready, and the supervisor kept
    serving that (summed with the live workers') while it stopped the others, so /readyz
    answered 200 and the gauges counted a worker that was gone."""
    from collector import app as A
    from collector.metrics import Aggregator

    agg = Aggregator(2)
    for w in (0, 1):
        agg.update(w, {"flowscope_listener_up": {("netflow://0.0.0.0:2055",): 1},
                       "flowscope_sink_connected": {(): 1}, "flowscope_queue_records": {(): 0},
                       "_ready": {(): (True, [])}})
    assert A.readiness(agg, 2) == (True, [])
    A.died(agg, 1, -9)
    merged = agg.merged()
    assert merged["flowscope_listener_up"][("netflow://0.0.0.0:2055",)] == 1
    assert merged["flowscope_sink_connected"][()] == 1
    ok, why = A.readiness(agg, 2)
    assert not ok and any("worker 1" in w for w in why), why


def test_absolute_form_request_target_is_accepted() -> None:
    """RFC 9112 section 3.2.2: "a server MUST accept the absolute-form in requests" (what a
    client configured with a proxy sends, `GET http://host:9400/metrics HTTP/1.1`); it was
    answered 404."""
    async def main() -> list[bytes]:
        srv = await _serve({"/metrics": lambda: (200, "text/plain", b"x 1\n")})
        try:
            return [await _exchange(srv, f"GET http://127.0.0.1:{srv.port}/metrics HTTP/1.1\r\n\r\n".encode()),
                    await _exchange(srv, f"GET HTTP://127.0.0.1:{srv.port}/metrics?x=1 HTTP/1.1\r\n\r\n".encode()),
                    await _exchange(srv, b"GET http://127.0.0.1/other HTTP/1.1\r\n\r\n")]
        finally:
            await srv.stop()

    assert [_split(a)[0] for a in asyncio.run(main())] == [200, 200, 404]


@pytest.mark.parametrize("counters", [False, True])
def test_sflow_counter_samples_without_counters_are_counted_per_exporter(collector: Any, counters: bool) -> None:
    """An agent's counter samples, received without --counters, moved nothing but
    flowscope_datagrams_total: they are counted in flowscope_counter_samples_ignored_total,
    per exporter (a real capture; the count from its tshark decode). With --counters they are
    published as counter records and none is ignored."""
    from conftest import corpus_file, udp_payloads

    from tests.support import tshark as T

    pcap = corpus_file("sflow/generic_sflow_counters_sample.pcap")
    ref = T.load_tshark_json(pcap.parent / (pcap.stem + ".tshark.json"))
    samples = sum(1 for p in ref["packets"] for s in T.parse_sflow(p).samples if not s.is_flow)
    assert samples > 0
    c = collector(["--counters"] if counters else [], schemes=("sflow",))
    send_udp([p for _src, _port, p in udp_payloads(pcap)], c.ports["sflow"])
    c.wait_value("flowscope_datagrams_total", len(ref["packets"]))
    ignored = dict(exporter="127.0.0.1", protocol="sflow5")
    if counters:
        c.wait_value("flowscope_counter_records_total", samples)
        assert c.value("flowscope_counter_samples_ignored_total", **ignored) == 0
    else:
        c.wait_value("flowscope_counter_samples_ignored_total", samples, **ignored)
        assert c.value("flowscope_counter_records_total") == 0
