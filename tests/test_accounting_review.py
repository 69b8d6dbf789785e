"""Review: nothing lost silently. Every flow decoded is delivered or counted as dropped with its
reason, in /metrics and in what the collector says when it stops (docs/collector.md, "Output
and the queue": flowscope_flows_total = delivered + dropped + queued)."""

from __future__ import annotations

import asyncio
import re
import signal
import struct
from pathlib import Path
from typing import Any

from conftest import send_udp

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set
from tests.support.kafka_front import KafkaFront, tansu_behind

EXPORT = 1_700_000_000


def _arp_twins() -> bytes:
    """One IPFIX message as Open vSwitch sends it for two ARP broadcasts it flooded to three
    ports: each packet once at ingress (flowDirection 0) and once per output port (1), all within
    250 ms (README, "Open vSwitch specifics"). Of each packet's four records the first is the
    flow, the three egress copies its duplicates."""
    t = IpfixTemplate(371, (("smac", 56, 0, 6), ("dmac", 80, 0, 6), ("etype", 256, 0, 2), ("p", 2, 0, 8),
                            ("l2", 352, 0, 8), ("dir", 61, 0, 1), ("end", 153, 0, 8)), 0)
    arp = {"smac": "0a:58:0a:80:00:05", "dmac": "ff:ff:ff:ff:ff:ff", "etype": 0x0806, "p": 1, "l2": 42}
    end = EXPORT * 1000 - 3000
    recs = [dict(arp, dir=d, end=e) for e in (end, end + 1000) for d in (0, 1, 1, 1)]
    return ipfix_message([template_set([t]), data_set(t, recs)], seq=0, export_time=EXPORT)


def test_the_stop_summary_counts_the_duplicates_dedup_dropped(collector: Any) -> None:
    """With --dedup, the duplicates are dropped (flowscope_flows_dropped_total{reason="duplicate"})
    but the line the collector logs when it stops ("stopped: N flows delivered to S, M dropped")
    counted only the queue's and the sink's drops: 2 delivered, 0 dropped, of 8 flows decoded.
    Its delivered + dropped must be what was decoded, as the metrics' are."""
    c = collector(["--dedup", "--sink", "stdout"])
    send_udp([_arp_twins()], c.port)
    c.wait_value("flowscope_flows_total", 8)
    c.wait_value("flowscope_flows_delivered_total", 2)
    assert c.value("flowscope_flows_dropped_total", reason="duplicate") == 6
    assert c.stop(signal.SIGTERM) == 0
    m = re.search(r"stopped: (\d+) flows delivered to stdout, (\d+) dropped", c.log())
    assert m, c.log()
    assert (int(m.group(1)), int(m.group(2))) == (2, 6), m.group(0)
    assert len(c.output()) == 2


def test_compression_bytes_help_says_the_keyed_modes_batches_count_too(broker: Any, collector: Any) -> None:
    """flowscope_kafka_compression_bytes_total said it counted "prebuilt record batches (key
    none)", but the keyed modes' batches, written in C per partition since the partition count is
    known, are compressed and counted the same way: an operator with --kafka-key exporter read a
    ratio the help said was not theirs. The help (and docs/collector.md's table, generated from
    it) says which batches count."""
    import uuid

    from conftest import make_v5

    c = collector(["--kafka-brokers", broker.bootstrap, "--kafka-topic", "t-" + uuid.uuid4().hex[:10],
                   "--kafka-key", "exporter", "--kafka-compression", "lz4"])
    send_udp([make_v5(i, 30, i * 30) for i in range(20)], c.port)
    c.wait_value("flowscope_flows_delivered_total", 600)
    raw, packed = (c.value("flowscope_kafka_compression_bytes_total", side=s) for s in ("in", "out"))
    assert raw > packed > 0      # the keyed batches were compressed and counted
    status, text = c.get("/metrics")
    assert status == 200
    m = re.search(r"^# HELP flowscope_kafka_compression_bytes_total (.*)$", text, re.M)
    assert m and "key none)" not in m.group(1) and "keyed modes" in m.group(1), m and m.group(1)
    assert c.stop() == 0


def test_a_hung_api_server_does_not_hold_the_workers_past_the_shutdown_deadline(collector: Any,
                                                                                tmp_path: Any) -> None:
    """Enrichment on, and the Kubernetes API server takes connections and answers nothing (an
    API server not ready, behind a load balancer that accepts). On SIGTERM the workers drained,
    counted and reported, then stopped the enricher: each of its four informers, stuck in a list
    request, was waited for 5 s in turn, 20 s past --shutdown-timeout. The supervisor gives its
    workers --shutdown-timeout + 10 s, so it killed them, logged that what they received after
    their last report was unknown (nothing was: they had drained and reported), and exited 1 on a
    clean stop. The informers are stopped together, within what is left of the deadline."""
    import socket
    import threading
    import time

    from conftest import free_tcp_port, make_v5, wait_for

    port = free_tcp_port()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)      # taken, never answered

    threading.Thread(target=accept, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters:
- {{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}
contexts:
- {{name: x, context: {{cluster: c, user: u}}}}
current-context: x
users:
- {{name: u, user: {{token: t}}}}
""")
    try:
        c = collector(["--workers", "2", "--sink", "stdout", "--enrich", "true", "--kubeconfig", str(kubeconfig),
                       "--shutdown-timeout", "2"], wait_ready=False)
        wait_for(lambda: c.log().count("listener netflow://") == 2, 30, what="both workers' listeners bound")
        wait_for(lambda: len(held) >= 8, 30, what="the informers' requests to the API server")
        send_udp([make_v5(i, 30, i * 30) for i in range(10)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 300)
        t0 = time.monotonic()
        assert c.stop(signal.SIGTERM, timeout=60) == 0, c.log()
        took = time.monotonic() - t0
        log = c.log()
        assert "did not stop in time" not in log and "killing it" not in log, log
        assert took < 2 + 5, took
        assert sum(int(n) for n in re.findall(r"stopped: (\d+) flows delivered", log)) == 300
    finally:
        srv.close()
        for s in held:
            s.close()



# ------------------------------------------------------------------------------------------------
# Kafka: a batch sent, timed out, and caught on its way out again at the shutdown deadline


class StallFront(KafkaFront):
    """A TCP front for a real broker (which advertises it) that, once `stalled` is set, swallows
    every Produce request (read, neither forwarded nor answered: a broker that took the request
    and went silent) and takes each new connection without ever reading from it (a listener that
    accepts for a process that does nothing more); connections opened before keep passing their
    other requests (metadata) to the broker. `held_records`: records in the swallowed requests;
    `hung`: connections taken since the stall."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.stalled = False
        self.held_records = 0
        self.hung = 0

    def _take(self) -> bool:
        if self.stalled:
            self.hung += 1
        return not self.stalled

    async def _request(self, conn: int, frame: bytes) -> None:
        if self.stalled and struct.unpack_from(">h", frame, 0)[0] == 0:
            self.held_records += _batch_records(frame)
            await asyncio.Event().wait()


def _batch_records(frame: bytes) -> int:
    """Records in the one record batch of a Produce request (v3+: header, transactional id,
    acks, timeout, one topic, one partition, records size, then the batch, whose record count is
    its bytes 57-60)."""
    (clen,) = struct.unpack_from(">h", frame, 8)
    off = 10 + max(clen, 0)
    (tx,) = struct.unpack_from(">h", frame, off)
    off += 2 + max(tx, 0) + 2 + 4 + 4
    (tlen,) = struct.unpack_from(">h", frame, off)
    off += 2 + tlen + 4 + 4 + 4
    return int(struct.unpack_from(">i", frame, off + 57)[0])


def test_a_batch_sent_again_and_caught_at_the_shutdown_deadline_is_unconfirmed_and_not_resent(
        collector: Any, tmp_path: Path) -> None:
    """A Produce request written and never answered times out (--kafka-request-timeout-ms + 5 s
    on the direct path): its 30 flows are queued again, and sent again once fresh metadata is
    in. The new connection they wait for is taken by the broker and never answered, and SIGTERM
    comes meanwhile. At the deadline those flows, taken from the queue and not written again,
    were counted `shutdown` (never sent), though the broker holds them in the request it took:
    they are `unconfirmed` (maybe in the topic), as they were while queued again. And
    flowscope_kafka_resent_records_total ("records sent again") counted them when they were
    queued again, not when sent: a batch given up before it went out again was counted as a
    possible duplicate that never was."""
    import time
    import uuid

    from conftest import free_tcp_port, make_v5, wait_for

    port = free_tcp_port()
    front = StallFront(port)
    with tansu_behind(tmp_path, front):
        c = collector(["--kafka-brokers", f"127.0.0.1:{front.port}", "--kafka-topic", "t-" + uuid.uuid4().hex[:10],
                       "--kafka-connections", "1", "--kafka-request-timeout-ms", "1000", "--shutdown-timeout", "1"])
        send_udp([make_v5(0, 30, 0)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 30)
        front.stalled = True
        send_udp([make_v5(30, 30, 30)], c.port)
        wait_for(lambda: front.held_records == 30, 10, what="the second datagram's flows in a swallowed request")
        wait_for(lambda: c.value("flowscope_kafka_errors_total", kind="produce") >= 1, 20,
                 what="the request timed out")
        wait_for(lambda: front.hung >= 1, 20, what="the flows waiting for a new connection to send them again")
        time.sleep(0.5)
        assert front.held_records == 30                       # (not written again)
        resent = c.value("flowscope_kafka_resent_records_total", records="flows")
        assert c.stop(signal.SIGTERM) == 0
        log = c.log()
        assert "stopped: 30 flows delivered to kafka, 30 dropped" in log, log
        assert "shutdown: 30 records sent to Kafka were not acknowledged" in log, log
        assert "could not be delivered" not in log, log
        assert resent == 0
