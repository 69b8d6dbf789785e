"""Direct produce: the fast Kafka path's record batches go to the partition leaders on
connections of flowscope's own, framed in place, without a copy in Python.

Why: aiokafka encodes a Produce request by nesting byte-string concatenations (the records
field, the partition, the partition array, the topic, the topic array, the request, header +
request, size + message), so each megabyte batch was copied about eight times on its way to the
socket: the largest single cost of the collector at a few hundred thousand flows per second,
and one that grows with every byte enrichment adds. Here `decoders.RecordBatchWriter.request()`
writes the request framing into headroom in front of the batch and the transport is handed a
memoryview of the writer itself.

Scope: Produce v3 (Kafka 0.11 and later; still served by Kafka 4), or v7 for a zstd batch
(Kafka 2.1 and later: KIP-110, a broker refuses zstd in a request below v7), one topic and
partition per request, batches compressed in place or not, plaintext connections. aiokafka keeps everything
else: metadata and partition leaders (read from its cluster view), topic creation, records
queued one by one (sFlow counter records), and every configuration this path does not cover
(TLS, SASL), which keep going through it. Batches of the keyed modes keep their partition's
connection (`sticky`), so that a key's batches are answered in the order they were sent.

Responses come back in request order on a connection; each request's future resolves with the
partition's error code checked. A connection that fails or lets a request pass its timeout is
closed and every request in flight on it fails, so the sink re-queues those batches.

One broker that stops answering must not hold back the others: the sink has one sender, so it
asks `ready()` before it sends (a connection with room, or none needed yet) and sends nothing
that would wait, connections are opened without the sender waiting for them, and `on_room` says
when a connection has room again (as Java's producer drains only the nodes that are ready and
leaves the others' batches in its accumulator).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from .util import RateLimitedLog

log = logging.getLogger("flowscope.sink")

API_PRODUCE = 0
API_VERSIONS = 18
PRODUCE_VERSION = 3
# KIP-110: Kafka's ProduceRequest.validateRecords answers a zstd batch in a Produce request below
# version 7 with UNSUPPORTED_COMPRESSION_TYPE (76), on the broker too. Versions 3 to 8 frame the
# same request body; the v5+ response adds log_start_offset to each partition.
PRODUCE_VERSION_ZSTD = 7
CODEC_ZSTD = 4
# bytes a connection may hold written and not yet taken by the kernel (Connection.has_room)
WRITE_LIMIT = 8 * 1024 * 1024

# TCP keepalive on every broker connection (KafkaConfig.keepalive_s, keepalive()): probes this
# many times, keepalive_s / KEEPALIVE_COUNT apart, after keepalive_s idle, before the kernel gives
# the connection up (ETIMEDOUT)
KEEPALIVE_COUNT = 3


def keepalive(sock: Any, idle_s: int) -> None:
    """TCP keepalive on a broker connection's socket (None, or idle_s 0: nothing done).

    Why: a NAT, a conntrack table or a firewall between here and a broker forgets a connection
    left idle past its own timeout (AWS's NAT gateway after 350 s, Azure's load balancer after 4
    minutes, where Kafka's producers keep an idle connection 9 minutes) and then drops its
    packets without a word: the connection looks open, and the next batch written to it waits
    for its request timeout before it is sent again on a new one. A probe every `idle_s` of
    idleness keeps such a middlebox's entry alive, and where it is gone all the same the probes
    go unanswered and the kernel closes the connection (ETIMEDOUT, dropped_silently()) within
    about twice `idle_s`, while nothing is waiting on it. Java's producer turns SO_KEEPALIVE on
    with the system's timers (two hours before the first probe: longer than any of those)."""
    if sock is None or idle_s <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):   # (Linux; elsewhere the system's timers)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle_s // KEEPALIVE_COUNT))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


def dropped_silently(exc: BaseException | None) -> bool:
    """Whether an open connection failed for its peer's silence: the kernel gave it up after its
    keepalive probes (or a write's retransmissions) went unanswered (ETIMEDOUT). Not a timeout of
    flowscope's own (TimeoutError without an errno), a reset or a close."""
    return isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT


# Kafka error codes a retry cannot fix: the batch is dropped and counted under this reason.
FATAL = {
    2: "corrupt_message",
    10: "message_too_large",
    17: "invalid_topic",
    18: "record_list_too_large",
    21: "invalid_required_acks",
    29: "topic_authorization_failed",
    31: "cluster_authorization_failed",
    # a timestamp outside the broker's message.timestamp.before/after.max.ms (KIP-937): a
    # prebuilt batch keeps its CreateTime, so sent again it is refused again
    32: "invalid_timestamp",
    43: "unsupported_for_message_format",
    # (Kafka's protocol error table: 74 is FENCED_LEADER_EPOCH and 75 UNKNOWN_LEADER_EPOCH, both
    # retriable on fresh metadata; 76 is the codec the broker does not take)
    76: "unsupported_compression_type",
    87: "invalid_record",
}


class BrokerError(Exception):
    """A Produce response carried a non-zero error code for the partition."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.fatal = code in FATAL
        super().__init__(f"broker error {code}" + (f" ({FATAL[code]})" if self.fatal else ""))


class NoLeaderError(ConnectionError):
    """The brokers' metadata names no leader for the partition (LEADER_NOT_AVAILABLE: an election,
    or its only replica's broker down): nothing was sent, and no connection was lost."""


class ProtocolError(Exception):
    """The broker sent something this client cannot make sense of."""


def parse_api_versions(body: bytes) -> dict[int, tuple[int, int]]:
    """ApiVersions v0 response body (after the correlation id): api key -> (min, max)."""
    (err,) = struct.unpack_from(">h", body, 0)
    if err != 0:
        raise ProtocolError(f"ApiVersions error {err}")
    (n,) = struct.unpack_from(">i", body, 2)
    if n < 0 or 6 + 6 * n > len(body):
        raise ProtocolError("ApiVersions response truncated")
    out = {}
    for i in range(n):
        key, lo, hi = struct.unpack_from(">hhh", body, 6 + 6 * i)
        out[key] = (lo, hi)
    return out


def parse_produce_v3(body: bytes, version: int = PRODUCE_VERSION, partition: int | None = None) -> int:
    """Produce v3 (or, with `version`, up to v7) response body (after the correlation id): the
    error code of `partition` (the one partition a request of this path is for), or, without
    one, the first non-zero partition error code, else 0."""
    return parse_produce(body, version, partition)[0]


def parse_produce(body: bytes, version: int = PRODUCE_VERSION, partition: int | None = None) -> tuple[int, int]:
    """As parse_produce_v3, with the answer's throttle_time_ms: (error code, throttle ms)."""
    # per partition: partition, error_code, base_offset, log_append_time (v2+), and from v5 on
    # log_start_offset; then throttle_time_ms (v1+) (ProduceResponse.json)
    if not 3 <= version <= 7:
        raise ValueError(f"Produce v{version} responses are not read here")
    stride = 4 + 2 + 8 + 8 + (8 if version >= 5 else 0)
    try:
        (ntopics,) = struct.unpack_from(">i", body, 0)
        off = 4
        err = 0
        found = False
        for _ in range(ntopics):
            (tl,) = struct.unpack_from(">h", body, off)
            off += 2 + max(tl, 0)
            (nparts,) = struct.unpack_from(">i", body, off)
            off += 4
            for _ in range(nparts):
                part, code = struct.unpack_from(">ih", body, off)
                off += stride
                if partition is None:
                    if code and not err:
                        err = code
                elif part == partition and not found:
                    found, err = True, code
        if ntopics < 1 or off > len(body):
            raise ProtocolError("Produce response without the partition")
        if partition is not None and not found:
            # Kafka answers for every partition of the request (ProduceResponse.json), and
            # librdkafka, one partition per request too, refuses a response without exactly
            # that one: nothing says the batch was written, so it is no delivery
            raise ProtocolError(f"Produce response without partition {partition}")
        throttle = struct.unpack_from(">i", body, off)[0] if off + 4 <= len(body) else 0
        return err, max(throttle, 0)
    except struct.error as exc:
        raise ProtocolError(f"Produce response truncated: {exc}") from None


class Connection:
    """One TCP connection to a broker with up to `max_in_flight` Produce requests outstanding."""

    def __init__(self, host: str, port: int, client_id: bytes, *, max_in_flight: int, timeout: float,
                 on_throttle: Callable[[int], None] | None = None, keepalive_s: int = 0,
                 max_idle: float = 0.0) -> None:
        self.host = host
        self.keepalive_s = keepalive_s
        # the connection, open, failed for the broker's silence (dropped_silently): a middlebox
        # dropped it, or the broker's host is gone
        self.dropped = False
        self.on_close: Callable[[Connection], None] | None = None   # called once, when it closes
        self.port = port
        self.client_id = client_id
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        # (correlation id, future, deadline, Produce version, partition): answers are read per
        # version, and must be for the request's partition
        self.inflight: collections.deque[tuple[int, asyncio.Future[None], float, int, int]] = collections.deque()
        self.produce_max = PRODUCE_VERSION  # the highest Produce version the broker serves
        self._corr = 0
        self._room: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False
        self.error: BaseException | None = None
        # acks 0: Kafka sends no Produce response; a broker that does (Tansu) has its answers
        # read and ignored instead of being taken for a protocol error
        self.unanswered = False
        # A produce quota (KIP-13): each answer's throttle_time_ms goes to on_throttle, and after a
        # Produce v6+ answer nothing more is sent here until then (KIP-219: the broker answered at
        # once instead of holding the answer back, expects the client to wait, and mutes the
        # connection meanwhile; Java's NetworkClient and librdkafka hold the connection back)
        self.on_throttle = on_throttle
        self.throttled_until = 0.0
        # called when a request's answer frees a slot, the connection opens, or it closes
        self.on_room: Callable[[], None] | None = None
        self.opening: asyncio.Future[None] | None = None  # connect() under way (DirectProducer._conn)
        # answers whose futures' callbacks have not run yet: their slots are not free until then
        self._settling = 0
        self.answered_at = 0.0   # when the broker last answered a Produce request here
        # Closed by the watchdog after max_idle seconds (0: never) with no request written, no
        # answer read and nothing in flight, as Kafka's producers do (connections.max.idle.ms),
        # before the broker closes it for its own idle limit (600 s by default), which the
        # producer cannot tell from a broker lost. idle_closed: so closed (DirectProducer._closed).
        self.max_idle = max_idle
        self.used_at = 0.0
        self.idle_closed = False
        # since when more than WRITE_LIMIT bytes wait to be written (0: not so), and the task
        # that waits for them to go (_drain)
        self._full_since = 0.0
        self._full_size = 0
        self._drainer: asyncio.Task[None] | None = None

    def has_room(self) -> bool:
        """Whether produce() would write at once (or fail at once: closed), without waiting for
        an answer, the connection to open, or a throttle to end."""
        if self.closed:
            return True
        if self.opening is not None and not self.opening.done():
            return False
        return (len(self.inflight) + self._settling < self.max_in_flight
                and self.throttled_until <= time.monotonic() and not self._full_since)

    def oldest(self, now: float) -> float:
        """Seconds the oldest unanswered request has waited (0 with none)."""
        return now - (self.inflight[0][2] - self.timeout) if self.inflight else 0.0

    def _next_corr(self) -> int:
        self._corr = (self._corr + 1) & 0x7FFFFFFF
        return self._corr

    async def connect(self) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        self.reader, self.writer = reader, writer
        keepalive(writer.transport.get_extra_info("socket"), self.keepalive_s)
        # ApiVersions v0: the broker must serve Produce v3.
        corr = self._next_corr()
        hdr = struct.pack(">hhih", API_VERSIONS, 0, corr, len(self.client_id)) + self.client_id
        writer.write(struct.pack(">i", len(hdr)) + hdr)
        size = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), self.timeout))[0]
        body = await asyncio.wait_for(reader.readexactly(size), self.timeout)
        if struct.unpack_from(">i", body, 0)[0] != corr:
            raise ProtocolError("ApiVersions: correlation id mismatch")
        versions = parse_api_versions(body[4:])
        lo, hi = versions.get(API_PRODUCE, (1, 0))
        if not lo <= PRODUCE_VERSION <= hi:
            raise ProtocolError(f"broker serves Produce v{lo}-v{hi}, not v{PRODUCE_VERSION}")
        self.produce_max = hi
        loop = asyncio.get_running_loop()
        self.used_at = time.monotonic()
        self._tasks = [loop.create_task(self._read_loop()), loop.create_task(self._watchdog())]

    async def produce(self, batch: Any, topic: bytes, partition: int, acks: int, timeout_ms: int) -> asyncio.Future[None]:
        """Send one batch (a sealed-or-sealable decoders.RecordBatchWriter); the returned future
        resolves when the broker acknowledged it (at once with acks 0)."""
        while len(self.inflight) >= self.max_in_flight and not self.closed:
            self._room = asyncio.get_running_loop().create_future()
            await self._room
        wait = self.throttled_until - time.monotonic()
        if wait > 0 and not self.closed:
            await asyncio.sleep(wait)
        if self.closed or self.writer is None:
            raise ConnectionError(f"connection to {self.host}:{self.port} closed: {self.error!r}")
        version = PRODUCE_VERSION
        if batch.codec == CODEC_ZSTD:
            if self.produce_max < PRODUCE_VERSION_ZSTD:
                # a broker before Kafka 2.1 cannot take zstd at all: what it would answer
                raise BrokerError(76)
            version = PRODUCE_VERSION_ZSTD
        corr = self._next_corr()
        data = batch.request(corr, self.client_id, acks, timeout_ms, topic, partition, version)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if acks == 0:
            self.unanswered = True
            fut.set_result(None)
        else:
            self.inflight.append((corr, fut, time.monotonic() + self.timeout, version, partition))
        self.used_at = time.monotonic()
        self.writer.write(data)
        del data
        if self.writer.transport.get_write_buffer_size() > WRITE_LIMIT and not self._full_since:
            # Not awaited here: a broker that takes the connection and reads nothing (frozen: its
            # TCP window full) never lets a drain() end, and with acks 0 no answer is awaited
            # that could time out: the sink's single sender waited there for good, every
            # partition with it. The connection has no room until its bytes go (has_room), and
            # the watchdog closes it if they do not within the timeout.
            self._full_since = time.monotonic()
            self._full_size = self.writer.transport.get_write_buffer_size()
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.append(self._drainer)
        return fut

    async def _drain(self) -> None:
        assert self.writer is not None
        try:
            await self.writer.drain()
        except (OSError, RuntimeError) as exc:   # (the connection lost meanwhile)
            self.close(exc)
            return
        self._full_since = 0.0
        self._tasks.remove(asyncio.current_task())  # type: ignore[arg-type]
        self._wake()

    async def _read_loop(self) -> None:
        assert self.reader is not None
        try:
            while True:
                size = struct.unpack(">i", await self.reader.readexactly(4))[0]
                if size < 4 or size > 64 * 1024 * 1024:
                    raise ProtocolError(f"response size {size}")
                body = await self.reader.readexactly(size)
                (corr,) = struct.unpack_from(">i", body, 0)
                if not self.inflight or self.inflight[0][0] != corr:
                    if self.unanswered:
                        continue   # the answer to an acks-0 request, which needs none
                    raise ProtocolError(f"unexpected correlation id {corr}")
                # parsed before it leaves inflight: a response that cannot be parsed closes the
                # connection and fails this batch with the others (re-queued), never orphans it
                try:
                    err, throttle = parse_produce(body[4:], self.inflight[0][3], self.inflight[0][4])
                except ProtocolError:
                    raise
                except Exception as exc:
                    raise ProtocolError(f"malformed Produce response: {exc!r}") from None
                if throttle:
                    if self.inflight[0][3] >= 6:
                        self.throttled_until = max(self.throttled_until, time.monotonic() + throttle / 1000)
                    if self.on_throttle is not None:
                        self.on_throttle(throttle)
                fut = self.inflight.popleft()[1]
                self.answered_at = self.used_at = time.monotonic()
                if not fut.done():
                    if err:
                        fut.set_exception(BrokerError(err))
                    else:
                        fut.set_result(None)
                # room once the future's callbacks have run (scheduled just before this): the
                # sink's sender, already due to run, saw the slot free before it knew the batch had
                # failed, sent the partition's next batches, and one delivered while the failed
                # one was sent again broke the partition's order
                self._settling += 1
                asyncio.get_running_loop().call_soon(self._settled)
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, OSError, ProtocolError) as exc:
            self.dropped = dropped_silently(exc)
            self.close(exc)

    async def _watchdog(self) -> None:
        while not self.closed:
            await asyncio.sleep(min(0.5, self.timeout / 4))
            if self.inflight and self.inflight[0][2] < time.monotonic():
                self.close(TimeoutError(f"no Produce response from {self.host}:{self.port} in {self.timeout:.1f} s"))
            elif self._full_since and self.writer is not None:
                # a broker reading slowly is waited for as long as the buffer shrinks
                size = self.writer.transport.get_write_buffer_size()
                if size < self._full_size:
                    self._full_since, self._full_size = time.monotonic(), size
                elif time.monotonic() - self._full_since > self.timeout:
                    self.close(TimeoutError(f"{self.host}:{self.port} read none of the {size} bytes waiting to be "
                                            f"written to it in {self.timeout:.1f} s"))
            elif self.idle(time.monotonic()):
                self.idle_closed = True
                self.close()

    def idle(self, now: float) -> bool:
        """Whether the connection is open and has been unused for max_idle: nothing in flight or
        settling, nothing waiting to be written, no throttle pending, no request or answer."""
        return (self.max_idle > 0 and not self.closed and self.writer is not None and not self.inflight
                and not self._settling and not self._full_since and self.throttled_until <= now
                and now - self.used_at >= self.max_idle)

    def _settled(self) -> None:
        self._settling -= 1
        self._wake()

    def _wake(self) -> None:
        r = self._room
        if r is not None and not r.done():
            r.set_result(None)
        if self.on_room is not None:
            self.on_room()

    def close(self, exc: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = exc
        if self.on_close is not None:
            self.on_close(self)
        err = exc if exc is not None else ConnectionError("connection closed")
        while self.inflight:
            fut = self.inflight.popleft()[1]
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.host}:{self.port}: {err!r}"))
                fut.exception()  # retrieved here too: the sink's callback handles it
        self._wake()
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        if self.opening is not None and self.opening is not current:
            self.opening.cancel()
        if self.writer is not None:
            if exc is not None:
                # (a close waits for what is buffered to be written first: from a broker that
                # reads nothing, never, and the socket stayed open)
                self.writer.transport.abort()
            else:
                self.writer.close()


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class DirectProducer:
    """Connections per leader broker (`connections` each, used in turn), leaders from aiokafka's
    cluster metadata."""

    def __init__(self, client: Any, *, client_id: str, acks: int, request_timeout_ms: int, connections: int,
                 max_in_flight: int = 2, keepalive_s: int = 0, max_idle_ms: int = 0) -> None:
        self.client = client
        self.client_id = client_id.encode()
        self.acks = acks
        self.timeout_ms = request_timeout_ms
        self.per_broker = connections
        self.max_in_flight = max_in_flight
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle_ms / 1000
        self.dropped = 0   # connections dropped silently (flowscope_kafka_connections_dropped_total)
        self.conns: dict[int, list[Connection | None]] = {}
        self._rr = 0
        self._topics: dict[str, bytes] = {}
        self.throttle_ms = 0   # throttle_time_ms of every answer (flowscope_kafka_throttle_seconds)
        self._rl = RateLimitedLog(log)
        self.on_room: Callable[[], None] | None = None  # a connection has room again (Connection.on_room)
        self._room: asyncio.Future[None] | None = None   # wait_room()'s
        self.closed = False   # close(): at the shutdown deadline, no connection is opened again
        # node -> when a connection to it last failed (closed by an error or a timeout): the
        # sink asks the brokers that have not failed for metadata first (KafkaSink._update_metadata)
        self.failed_at: dict[int, float] = {}
        # (topic, partition)s this producer has had a batch acknowledged for since the last
        # metadata refresh that replaced a lost connection: until then a partition's batches
        # all go on its own connection (as sticky), whatever the key mode. Tansu, the bundled
        # broker, can lose one of two first batches of a partition it holds nothing of yet
        # written at once on two connections, acknowledging both (tests/conftest.warm_partitions);
        # spread over the connections from the first batch on, a new topic's first writes were
        # exposed to it. The cost is one round trip per partition.
        self._proven: set[tuple[str, int]] = set()

    def _throttled(self, ms: int) -> None:
        self.throttle_ms += ms
        self._rl.warning("throttled", "kafka: a broker throttled a produce request for %d ms (a produce quota: "
                         "counted in flowscope_kafka_throttle_seconds_total)", ms)

    def _closed(self, c: Connection) -> None:
        if c.idle_closed:
            # Closed for idleness: no broker lost. Its slot is cleared at once, so that neither
            # send() nor the sink (_direct_lost: a metadata refresh, the broker checked early and
            # ranked lower) take it for one; the next batch opens a new connection.
            for slots in self.conns.values():
                for i, s in enumerate(slots):
                    if s is c:
                        slots[i] = None
            log.debug("kafka: the connection to %s:%d closed, idle for %.0f s", c.host, c.port, c.max_idle)
            return
        if not c.dropped:
            return
        # (closed like any lost connection: the sink refreshes metadata and then opens a new one
        # at the next batch; nothing was waiting on it unless a batch was written in the probes'
        # last seconds, which is re-queued)
        self.dropped += 1
        self._rl.warning("dropped", "kafka: the connection to %s:%d was dropped silently (%r: no answer to TCP "
                         "keepalive probes after %d s idle, or to a write: a NAT, conntrack or firewall between here "
                         "and the broker forgot it, or the broker's host is gone); closed, a new one is opened "
                         "(counted in flowscope_kafka_connections_dropped_total)", c.host, c.port, c.error,
                         self.keepalive_s)

    def _roomy(self) -> None:
        r = self._room
        if r is not None and not r.done():
            r.set_result(None)
        if self.on_room is not None:
            self.on_room()

    async def wait_room(self, timeout: float) -> None:
        """Until a connection has room again (an answer, a connection opened or closed), or
        `timeout` seconds. (A future and a timer, not asyncio.wait_for: before Python 3.12 that
        loses a cancellation that comes in the loop turn the wait ends, and the sink's sender,
        cancelled at the shutdown deadline, went on.)"""
        loop = asyncio.get_running_loop()
        r = self._room = loop.create_future()
        timer = loop.call_later(timeout, _set_done, r)
        try:
            await r
        finally:
            timer.cancel()
            self._room = None

    def _slot(self, node: int, pin: int) -> int:
        """The connection slot a send to `node` uses: the pinned one (sticky), else the next in
        turn that is open with room, else one not opened yet (the next in turn when none is)."""
        slots = self.conns.setdefault(node, [None] * self.per_broker)
        if pin >= 0:
            return pin % self.per_broker
        n = self.per_broker
        for want_open in (True, False):
            for k in range(1, n + 1):
                i = (self._rr + k) % n
                c = slots[i]
                if (c is not None and c.has_room()) if want_open else c is None:
                    self._rr = i
                    return i
        self._rr = (self._rr + 1) % n
        return self._rr

    def _open(self, node: int, i: int) -> Connection:
        """The connection in slot `i` of `node`, opening it (in a task of its own: a broker that
        takes the TCP connection and never answers must not hold the sender) if there is none."""
        if self.closed:
            raise ConnectionError("direct produce closed (shutdown deadline)")
        slots = self.conns.setdefault(node, [None] * self.per_broker)
        c = slots[i]
        if c is None:
            meta = self.client.cluster.broker_metadata(node)
            if meta is None:
                raise ConnectionError(f"no address for broker {node}")
            c = Connection(meta.host, meta.port, self.client_id, max_in_flight=self.max_in_flight,
                           timeout=self.timeout_ms / 1000 + 5, on_throttle=self._throttled,
                           keepalive_s=self.keepalive_s, max_idle=self.max_idle)
            c.on_close = self._closed
            slots[i] = c
            conn = c

            def room() -> None:
                if conn.closed and conn.error is not None and not self.closed:
                    self.failed_at[node] = time.monotonic()
                self._roomy()

            c.on_room = room

            async def connect() -> None:
                try:
                    await conn.connect()
                except BaseException as exc:
                    conn.close(exc)
                    raise
                finally:
                    self._roomy()

            c.opening = asyncio.ensure_future(connect())
            # retrieved here: a connection nobody waited for fails its next send instead (closed)
            c.opening.add_done_callback(lambda f: f.cancelled() or f.exception())
        return c

    async def _conn(self, node: int, pin: int = -1) -> Connection:
        c = self._open(node, self._slot(node, pin))
        if c.opening is not None and not c.opening.done():
            await asyncio.shield(c.opening)
        return c

    def ready(self, topic: str, partition: int, sticky: bool = False) -> bool:
        """Whether send() would write the batch at once, or fail at once (no leader known, a
        connection lost): False when the partition leader's connection(s) it would use are all
        full, throttled or still opening, and then one is opened if a slot has none yet. Why:
        the sink's single sender must not wait on a broker that has stopped answering while
        the others could take batches."""
        from aiokafka.structs import TopicPartition

        node = self.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        if node is None or node < 0 or self.closed or self._lost(node):
            return True
        slots = self.conns.setdefault(node, [None] * self.per_broker)
        sticky = sticky or (topic, partition) not in self._proven
        pins = [partition % self.per_broker] if sticky else range(self.per_broker)
        for i in pins:
            c = slots[i]
            if c is not None and c.has_room():
                return True
        for i in pins:
            if slots[i] is None:
                try:
                    self._open(node, i)
                except ConnectionError:
                    return True   # (no address for the broker: send() says so at once)
                return False
        return False

    async def send(self, batch: Any, topic: str, partition: int, sticky: bool = False) -> asyncio.Future[None]:
        """Write a finished batch's Produce request; the future resolves with the answer.
        sticky: the partition's own connection to its leader (one of `connections`) rather than
        the next in turn, so that its batches are answered in the order they were sent."""
        from aiokafka.structs import TopicPartition

        node = self.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        if node is None or node < 0:
            raise NoLeaderError(f"no leader known for {topic}/{partition}")
        tb = self._topics.get(topic)
        if tb is None:
            tb = self._topics[topic] = topic.encode()
        for old in self.conns.get(node, ()):
            if old is not None and old.closed:
                # A connection to this leader was lost since the last metadata refresh (the
                # broker went away, perhaps came back empty): fail this send so the sink
                # refreshes metadata, re-creating the topic with kafka.create_topic, before
                # anything is produced on new connections (forget_closed()). A broker that lost
                # the topic may still accept writes to it that no consumer will ever see. The
                # other brokers' connections are still open, to brokers that did not go away:
                # their batches go on (failing them too, one broker timing out failed a batch of
                # every healthy one, counted as produce errors and re-sent)
                raise ConnectionError(f"connection to {old.host}:{old.port} was lost ({old.error!r}): "
                                      "refreshing metadata first")
        key = (topic, partition)
        proven = key in self._proven
        c = await self._conn(node, partition if sticky or not proven else -1)
        fut = await c.produce(batch, tb, partition, self.acks, self.timeout_ms)
        if not proven:
            def answered(f: asyncio.Future[None]) -> None:
                if not f.cancelled() and f.exception() is None:
                    self._proven.add(key)

            fut.add_done_callback(answered)
        return fut

    def _lost(self, node: int) -> bool:
        return any(c is not None and c.closed for c in self.conns.get(node, ()))

    def lost(self, topic: str, partition: int) -> bool:
        """Whether a connection to the partition's leader was lost since the last metadata
        refresh: a send there fails at once (see send())."""
        from aiokafka.structs import TopicPartition

        node = self.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        return node is not None and node >= 0 and self._lost(node)

    def answering(self) -> bool:
        """Whether some broker answered a Produce request on a connection still open within
        the request timeout: the sink is still connected when another broker's connection
        fails."""
        now = time.monotonic()
        return any(c is not None and not c.closed and now - c.answered_at < c.timeout
                   for slots in self.conns.values() for c in slots)

    def load(self, node: int, now: float) -> float:
        """Seconds the oldest request on the node's connections has gone unanswered (0: none
        waits): a broker that stopped answering is asked for metadata last."""
        return max((c.oldest(now) for c in self.conns.get(node, ()) if c is not None and not c.closed),
                   default=0.0)

    def forget_closed(self) -> None:
        """After a metadata refresh: closed connections may be replaced by new ones."""
        for slots in self.conns.values():
            for i, c in enumerate(slots):
                if c is not None and c.closed:
                    slots[i] = None
                    # (a broker that went away may come back holding nothing: first batches again)
                    self._proven.clear()

    def close(self) -> None:
        """At the shutdown deadline: every connection closed (what is in flight fails), and none
        opened again: ready() then says yes and send() fails at once. (ready() opened a new
        connection for each partition the sender asked about after this.)"""
        self.closed = True
        for slots in self.conns.values():
            for c in slots:
                if c is not None:
                    c.close()
        self.conns.clear()
