"""Review: nothing lost silently. Every flow decoded is delivered or counted as dropped with its
reason, in /metrics and in what the collector says when it stops (docs/collector.md, "Output
and the queue": flowscope_flows_total = delivered + dropped + queued)."""

from __future__ import annotations

import re
import signal
from typing import Any

from conftest import send_udp

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set

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
