"""The Kafka sink under broker answers that real clusters give and Tansu never does: Produce
responses that leave out the partition asked for, error codes checked against Kafka's protocol
error table, and error codes aiokafka has no class for. Each test was written against a bug it
found; the ones that need a broker run a real Tansu behind a TCP front that answers in its place."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest
from test_kafka_direct import _writer_with_flows

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
