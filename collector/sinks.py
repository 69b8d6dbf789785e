"""Sinks: the bounded queue between the UDP path and the output, and the stdout, file and Kafka writers.

Why a queue in bytes: the UDP callback must never wait, and an output that stalls (a slow pipe,
a broker that is down) must cost bounded memory, not the process. The callback appends one
chunk (the encoded records of one datagram) with `offer()`; a writer task drains chunks. Bytes
count until the sink has accepted them (for Kafka: until the batch is acknowledged), so the
bound covers what is in flight too. When the bound is hit the policy decides: `newest` drops the
arriving chunk, `oldest` evicts queued chunks. Either way every dropped record is counted by
reason, so delivered + dropped always adds up to what was decoded.

Kafka: flows are queued as whole record batches written in C (Prebuilt: key none, any
partition; the keyed modes, a batch per partition, decoders.KeyedBatches); they go to the
partition leaders on flowscope's own connections (collector/kafka_direct.py) or, where that path
does not apply, through aiokafka's `send_batch()`. Records queued one by one (sFlow counter
records; keyed flows that arrive before the topic's partition count is known) enter aiokafka
through `producer.create_batch()` / `BatchBuilder.append()` / `send_batch()` (about ten times
cheaper per record than `send()`), one builder per partition. A batch that could not be
delivered within the request timeout goes back to the front of the queue, so an outage is
ridden out up to the bound and the producer reconnects by itself; in the keyed modes a failed
batch is set aside with its partition's later ones (KafkaSink._hold), so that one partition in
trouble does not hold back the others.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import os
import random
import ssl
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

from .config import Config, KafkaConfig, split_hostport
from .metrics import new_histogram, observe
from .reach import Bootstrap, Reached, Resolver, Unreached, canonical_host, unreached_said
from .util import RateLimitedLog

log = logging.getLogger("flowscope.sink")

FLOWS = 0
COUNTERS = 1


class Chunk:
    """The records of one datagram (or a re-queued batch) and what routing needs."""

    __slots__ = ("kind", "records", "nbytes", "exporter", "seq", "sent", "ts")

    def __init__(self, kind: int, records: list[bytes], nbytes: int, exporter: str, seq: int = 0,
                 sent: bool = False, ts: int = 0) -> None:
        self.kind = kind
        self.records = records
        self.nbytes = nbytes
        self.exporter = exporter
        self.seq = seq  # keyed Kafka modes: the order of its first send (0: not sent yet), see _Held
        # Kafka: re-queued after a Produce request holding its records was written (or handed to
        # aiokafka) and failed without an answer: the broker may have written them. Dropped at
        # the shutdown deadline they are `unconfirmed`, not `shutdown` (never sent)
        self.sent = sent
        # records: when their datagram arrived (ms since the epoch), their Kafka CreateTime, as
        # a Prebuilt batch's is its first datagram's (0: none, the time they are batched)
        self.ts = ts


class Prebuilt:
    """Flows already laid out as one Kafka record batch by decoders.RecordBatchWriter (the
    fast path), or as JSON lines by decoders.LineWriter (the stdout and file sinks): the queue
    holds the batch, not a bytes object per flow. A keyed batch
    (decoders.KeyedBatches) belongs to partition slot `slot` (its partition's index in the
    topic's partition list when it was keyed); -1: any partition (key none)."""

    __slots__ = ("writer", "data", "slot")

    def __init__(self, writer: Any, slot: int = -1) -> None:
        self.writer = writer
        self.data: bytes | None = None  # built (and compressed) once, kept for a re-queue
        self.slot = slot

    def __len__(self) -> int:
        return int(self.writer.records)


class PrebuiltBuilder:
    """Duck-typed aiokafka BatchBuilder around a finished record batch, for send_batch()."""

    def __init__(self, data: bytes, records: int) -> None:
        self._data = data
        self._records = records

    def append(self, **_kw: Any) -> None:
        return None  # closed: nothing can be added through producer.send()

    def close(self) -> None:
        pass

    def closed(self) -> bool:
        return True

    def size(self) -> int:
        return len(self._data)

    def record_count(self) -> int:
        return self._records

    def _build(self) -> bytes:
        return self._data

    def _set_producer_state(self, *_a: Any) -> None:
        raise RuntimeError("flowscope's prebuilt batches do not support idempotent producers")


class BoundedQueue:
    """FIFO of chunks bounded in bytes (queued + in flight); `offer` is the only hot-path call."""

    def __init__(self, limit: int, policy: str) -> None:
        self.limit = limit
        self.policy = policy
        self.chunks: collections.deque[Chunk] = collections.deque()
        self.queued_bytes = 0
        self.queued = [0, 0]    # records queued by kind (FLOWS, COUNTERS)
        self.inflight_bytes = 0
        self.inflight = [0, 0]  # records in flight by kind (FLOWS, COUNTERS)
        # drops by (kind, reason): kept as plain ints for the metrics snapshot
        self.dropped: dict[tuple[int, str], int] = collections.defaultdict(int)
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    @property
    def total_bytes(self) -> int:
        return self.queued_bytes + self.inflight_bytes

    @property
    def inflight_records(self) -> int:
        return self.inflight[FLOWS] + self.inflight[COUNTERS]

    @property
    def queued_records(self) -> int:
        return self.queued[FLOWS] + self.queued[COUNTERS]

    @property
    def total_records(self) -> int:
        return self.queued_records + self.inflight_records

    def records_of(self, kind: int) -> int:
        """Records of one kind queued or in flight."""
        return self.queued[kind] + self.inflight[kind]

    def offer(self, kind: int, records: Any, exporter: str, nbytes: int = -1, ts: int = 0) -> bool:
        """Hot path: append or drop-and-count. Never raises, never waits. `records` is a list of
        encoded records (`ts`: their datagram's arrival, ms since the epoch), or a Prebuilt batch
        with its size in `nbytes`. True when queued."""
        n = len(records)
        if nbytes < 0:
            nbytes = sum(map(len, records)) + n
        if self.closed:
            self.dropped[(kind, "shutdown")] += n
            return False
        if self.queued_bytes + self.inflight_bytes + nbytes > self.limit:
            if self.policy == "newest" or nbytes > self.limit:
                self.dropped[(kind, "queue_full")] += n
                return False
            while self.chunks and self.queued_bytes + self.inflight_bytes + nbytes > self.limit:
                old = self.chunks.popleft()
                self.queued_bytes -= old.nbytes
                self.queued[old.kind] -= len(old.records)
                # (a chunk queued again after a request that failed without an answer may be in
                # the topic: given up, it is unconfirmed, as at the shutdown deadline)
                if old.sent:
                    self.dropped[(old.kind, "unconfirmed")] += len(old.records)
                else:
                    self.dropped[(old.kind, "evicted")] += len(old.records)
            if self.queued_bytes + self.inflight_bytes + nbytes > self.limit:
                # everything left is in flight: the arriving chunk cannot fit
                self.dropped[(kind, "queue_full")] += n
                return False
        self.chunks.append(Chunk(kind, records, nbytes, exporter, 0, False, ts))
        self.queued_bytes += nbytes
        self.queued[kind] += n
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        return True

    async def wait(self, timeout: float | None = None) -> None:
        """Until something is queued (or the timeout passes). The waiter is awaited as it is,
        with a timer, not through asyncio.wait_for: before Python 3.12, wait_for returns the
        result of an awaitable completed in the same loop turn as its task is cancelled instead
        of raising, and at the shutdown deadline the sink's last _unhold_all() wakes this wait
        just as drain() cancels the sender: the cancellation was lost and the sender went on
        past --shutdown-timeout until the process was killed."""
        if self.chunks:
            return
        loop = asyncio.get_running_loop()
        w = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _set_done, w) if timeout is not None else None
        try:
            await w
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None

    def take(self, max_bytes: int) -> list[Chunk]:
        """Move chunks (at least one when any) up to max_bytes from queued to in flight."""
        out: list[Chunk] = []
        size = 0
        while self.chunks and (not out or size + self.chunks[0].nbytes <= max_bytes):
            c = self.chunks.popleft()
            size += c.nbytes
            out.append(c)
            self.queued_bytes -= c.nbytes
            self.queued[c.kind] -= len(c.records)
            self.inflight_bytes += c.nbytes
            self.inflight[c.kind] += len(c.records)
        return out

    def done(self, kind: int, nbytes: int, nrecords: int) -> None:
        """In-flight data of one kind accepted (or dropped and counted) by the sink."""
        self.inflight_bytes -= nbytes
        self.inflight[kind] -= nrecords

    def requeue(self, chunk: Chunk) -> None:
        """In-flight data the sink failed to deliver goes back to the front (already accounted)."""
        self.done(chunk.kind, chunk.nbytes, len(chunk.records))
        self.chunks.appendleft(chunk)
        self.queued_bytes += chunk.nbytes
        self.queued[chunk.kind] += len(chunk.records)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def wake(self) -> None:
        """Ends a wait() (something set aside may go now)."""
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def push_front(self, chunk: Chunk) -> None:
        """A chunk counted as queued but kept aside (KafkaSink._held) goes back to the front."""
        self.chunks.appendleft(chunk)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def drop_all(self, reason: str, sent_reason: str | None = None) -> tuple[int, int]:
        """Count everything still queued as dropped (shutdown deadline passed): as `reason`, or
        as `sent_reason` when given for the chunks a Produce request may have written already
        (Chunk.sent). Returns the records counted under each."""
        n = m = 0
        while self.chunks:
            c = self.chunks.popleft()
            if c.sent and sent_reason is not None:
                self.dropped[(c.kind, sent_reason)] += len(c.records)
                m += len(c.records)
            else:
                self.dropped[(c.kind, reason)] += len(c.records)
                n += len(c.records)
        self.queued_bytes = 0
        self.queued = [0, 0]
        return n, m


#: Seconds a metadata request to one broker is waited for alone before the next broker is asked
#: as well (KafkaSink._update_metadata): a broker that answers at all answers that in milliseconds.
METADATA_HEDGE_S = 1.0

#: Seconds between the Kafka sink's checks of its broker (a metadata request, its connections)
#: while it has nothing to send.
IDLE_CHECK_S = 5.0

#: Drop reasons that mean the sink could not deliver at all (a write that failed, a batch the
#: broker refused for good), as opposed to overload (queue_full) or one oversized record.
FAILED_REASONS = ("sink_error", "rejected")


class Sink:
    """Common part: a queue, a writer task, counters. Subclasses implement `_run`."""

    name = "sink"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.queue = BoundedQueue(cfg.queue_bytes, cfg.drop_policy)
        self.delivered = [0, 0]  # by kind: flows, counters
        self.connected = False
        # why the sink is not connected, for /readyz (the latest failure said in the log; "" when
        # none was, and cleared once connected)
        self.problem = ""
        self.errors: dict[str, int] = collections.defaultdict(int)
        self.latency = new_histogram()
        self.batches = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._deadline = 0.0  # loop time the shutdown drain ends (drain)
        self._rl = RateLimitedLog(log)
        self._progress_seen = 0      # delivered records at the last stalled_for() call
        self._progress_at = time.monotonic()
        self._fail_done = 0          # failing_for(): delivered records at its last call,
        self._fail_seen = 0          # ... records the sink failed (FAILED_REASONS) then,
        self._fail_since = -1.0      # ... when failures began with nothing delivered since (-1: not failing)
        self._fail_last = 0.0        # ... and when the latest failure was seen
        self.gone = ""               # why the destination is gone for good (stdout's reader closed it)
        self.gone_event = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def unconfirmed(self, kind: int) -> int:
        """Records of `kind` in flight that went out to their destination without a confirmation
        (Kafka: written in a Produce request, not answered): at the shutdown deadline they are
        `unconfirmed`, the rest of what is in flight `shutdown`."""
        return 0

    def stalled_for(self) -> float:
        """Seconds that records have been waiting with nothing delivered: 0 while records are
        delivered or none wait that could go (waiting()). Sampled (readiness probes, metrics
        snapshots): a change seen at one call restarts the clock, so the value is accurate to
        the calls' interval."""
        now = time.monotonic()
        done = self.delivered[0] + self.delivered[1]
        if self.waiting() == 0 or done != self._progress_seen:
            self._progress_seen = done
            self._progress_at = now
            return 0.0
        return now - self._progress_at

    def waiting(self) -> int:
        """Records queued or in flight that the sink could deliver now (stalled_for): all of them
        here; the Kafka sink leaves out those held for partitions whose leader is known out of
        reach."""
        return self.queue.total_records

    def unreachable(self) -> str:
        """Why no record can reach its destination although the sink counts as connected (the
        Kafka sink: no leader of the flows topic's partitions can be reached), for /readyz; ""
        when that is not known."""
        return ""

    def failing_for(self, window: float) -> float:
        """Seconds that the sink has failed every flow it was given (written nowhere: sink_error,
        rejected) with no flow delivered, as long as failures were seen within the last `window`
        seconds: a sink that drops at once never has records waiting, so stalled_for() cannot
        see it. 0 once something is delivered, or after `window` without a failure (no
        traffic: it cannot be known to be failing still, and an unready collector behind a
        Service would get no traffic to tell). Sampled like stalled_for()."""
        now = time.monotonic()
        # flows only: counter records reaching their own topic say nothing of the flows' topic
        done = self.delivered[FLOWS]
        failed = sum(n for (kind, reason), n in self.queue.dropped.items() if kind == FLOWS and reason in FAILED_REASONS)
        if done != self._fail_done:
            self._fail_done, self._fail_seen, self._fail_since = done, failed, -1.0
            return 0.0
        if failed != self._fail_seen:
            self._fail_seen, self._fail_last = failed, now
            if self._fail_since < 0:
                self._fail_since = now
        if self._fail_since < 0:
            return 0.0
        if now - self._fail_last > window:
            self._fail_since = -1.0
            return 0.0
        return now - self._fail_since

    async def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def drain(self, deadline: float) -> None:
        """Stop accepting, deliver what is queued until `deadline` (loop time), then count the rest."""
        self.queue.closed = True
        self._deadline = deadline
        self._stopping = True
        loop = asyncio.get_running_loop()
        while (self.queue.total_records > 0) and loop.time() < deadline:
            if self._task is not None and self._task.done():
                break
            await asyncio.sleep(0.02)
        await self._close(max(0.0, deadline - loop.time()))
        task = self._task
        if task is not None and not task.done():
            # cancelled again until it ends (a second at most): a cancellation can still be lost
            # in a library's asyncio.wait_for (before Python 3.12, see BoundedQueue.wait), and a
            # sender going on meanwhile held the process past --shutdown-timeout
            for _ in range(10):
                task.cancel()
                await asyncio.wait((task,), timeout=0.1)
                if task.done():
                    break
            if task.done():
                if not task.cancelled():
                    task.exception()   # (retrieved: it ends now either way)
            else:
                log.warning("%s: the sender did not stop when cancelled; counting what is left anyway", self.name)
        # (queued again after a request that may have been written: unconfirmed, as in flight)
        left, sent = self.queue.drop_all("shutdown", "unconfirmed")
        q = self.queue
        for kind, n in enumerate(q.inflight):
            if n:
                u = min(n, self.unconfirmed(kind))
                sent += u
                if u:
                    q.dropped[(kind, "unconfirmed")] += u
                if n - u:
                    q.dropped[(kind, "shutdown")] += n - u
                left += n - u
                q.done(kind, 0, n)
        q.inflight_bytes = 0
        if left:
            log.error("shutdown: %d records could not be delivered within --shutdown-timeout=%.1fs "
                      "(counted in flowscope_flows_dropped_total and flowscope_counter_records_dropped_total, "
                      "reason=\"shutdown\")", left, self.cfg.shutdown_timeout)
        if sent:
            log.error("shutdown: %d records sent to Kafka were not acknowledged within --shutdown-timeout=%.1fs: "
                      "they may or may not be in the topic (counted in flowscope_flows_dropped_total and "
                      "flowscope_counter_records_dropped_total, reason=\"unconfirmed\")", sent,
                      self.cfg.shutdown_timeout)
        if not left and not sent:
            log.info("shutdown: queue drained, nothing left to send")

    async def _close(self, timeout: float) -> None:
        pass


class _WriteJob:
    """One buffer of JSON lines for the writer thread; `written` grows as its pieces land."""

    __slots__ = ("data", "written", "error", "abort")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.written = 0
        self.error: BaseException | None = None
        self.abort = False


def _lines_of(c: Chunk) -> bytes:
    """A chunk as JSON lines: its records each followed by a newline, or a LineWriter's lines
    (Prebuilt, the Receiver's C path)."""
    if isinstance(c.records, Prebuilt):
        return c.records.writer.lines()  # type: ignore[no-any-return]
    return b"\n".join(c.records) + b"\n"


def _complete_records(pieces: list[bytes], nbytes: int) -> list[int]:
    """Per piece (a chunk's lines, _lines_of), how many of its lines lie whole in the first
    `nbytes` bytes of the pieces joined (JSON lines hold no newline of their own: a record's
    end is its newline)."""
    out = []
    for piece in pieces:
        if nbytes >= len(piece):
            out.append(piece.count(b"\n"))
            nbytes -= len(piece)
        else:
            out.append(piece.count(b"\n", 0, max(0, nbytes)))
            nbytes = 0
    return out


class StreamSink(Sink):
    """JSON lines to stdout or a file, written by a thread of its own so a slow reader never
    stalls UDP. Writes are plain os.write calls, so what landed is known to the byte: a short
    write (disk full) or an error counts exactly the records that did not land as sink_error,
    and a file is cut back to its last whole line. Into a pipe, pieces of whole lines up to
    PIPE_BUF (atomic: a blocked piece has written nothing) let a shutdown deadline stop a write
    to a stalled reader and count what it never got as shutdown; at most the piece blocked at
    the deadline may still reach the reader afterwards. The thread is a daemon: the process
    never outlives --shutdown-timeout waiting for a reader."""

    PIPE_PIECE = 4096  # PIPE_BUF on Linux

    def __init__(self, cfg: Config, path: str | None) -> None:
        super().__init__(cfg)
        self.path = path
        self.name = "file" if path else "stdout"
        self._fd = -1
        self._piece = 1 << 30
        self._regular = False
        self._partial = False   # a line was cut short on a stream that cannot be truncated
        self._inflight: tuple[_WriteJob, list[Chunk], list[bytes], int] | None = None   # the write going on
        self._jobs: Any = None

    async def start(self) -> None:
        import queue
        import stat
        import threading

        if self.path:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        else:
            sys.stdout.flush()
            self._fd = sys.stdout.fileno()
        mode = os.fstat(self._fd).st_mode
        self._regular = stat.S_ISREG(mode)
        if not self._regular:
            self._piece = self.PIPE_PIECE
        self._jobs = queue.SimpleQueue()
        threading.Thread(target=self._writer, name=f"flowscope-{self.name}", daemon=True).start()
        self.connected = True
        await super().start()

    def _writer(self) -> None:
        """The writer thread: one job at a time, in pieces, until done, failed or aborted."""
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, loop, fut = item
            data = memoryview(job.data)
            n = len(data)
            try:
                while job.written < n and not job.abort:
                    end = min(n, job.written + self._piece)
                    if end < n and self._piece < n:
                        cut = job.data.rfind(b"\n", job.written, end)
                        if cut >= job.written:
                            end = cut + 1   # whole lines; a longer line goes alone
                    w = os.write(self._fd, data[job.written:end])
                    if w <= 0:
                        raise OSError("write wrote nothing")
                    job.written += w
            except OSError as exc:
                job.error = exc
            try:
                loop.call_soon_threadsafe(_set_done, fut)
            except RuntimeError:    # the loop is closed: nobody waits any more
                return

    def _cut_partial(self, job: _WriteJob) -> None:
        """After a failed write, remove the partial last line (a file) or end it on the next
        write (a stream), so readers see only whole JSON lines."""
        whole = job.data.rfind(b"\n", 0, job.written) + 1
        if whole == job.written:
            return
        if self._regular:
            try:
                ours = os.lseek(self._fd, 0, os.SEEK_CUR)     # where the partial line ended
                if os.fstat(self._fd).st_size != ours:
                    raise OSError("another writer appended after it")   # --workers N on one file
                end = ours - (job.written - whole)
                os.ftruncate(self._fd, end)
                # without O_APPEND (stdout redirected with `>`) the offset stays past the new end,
                # and the next write would leave a hole of NULs
                os.lseek(self._fd, end, os.SEEK_SET)
                return
            except OSError:
                pass
        self._partial = True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        q = self.queue
        while True:
            await q.wait(0.5)
            chunks = q.take(4 * 1024 * 1024)
            if not chunks:
                continue
            pieces = [_lines_of(c) for c in chunks]
            for c in chunks:
                if isinstance(c.records, Prebuilt):
                    c.records.writer.release()   # (its lines are in pieces: the buffer goes back to the pool)
            data = b"".join(pieces)
            if self._partial:
                data = b"\n" + data
            skip = 1 if self._partial else 0
            job = _WriteJob(data)
            fut = loop.create_future()
            self._inflight = (job, chunks, pieces, skip)
            self._jobs.put((job, loop, fut))
            await fut
            self._inflight = None
            if job.written > 0:
                self._partial = False
            if job.error is None:
                for c in chunks:
                    self.delivered[c.kind] += len(c.records)
                    q.done(c.kind, c.nbytes, len(c.records))
                continue
            # stdout closed (consumer gone) or disk full: what did not land is counted as lost
            gone = isinstance(job.error, (BrokenPipeError, ConnectionResetError)) and self.path is None
            self._cut_partial(job)
            whole = _complete_records(pieces, max(0, job.written - skip))
            self.errors["write"] += 1
            for c, k in zip(chunks, whole, strict=True):
                self.delivered[c.kind] += k
                if len(c.records) > k:
                    q.dropped[(c.kind, "sink_error")] += len(c.records) - k
                q.done(c.kind, c.nbytes, len(c.records))
            if gone:
                # A pipe whose reader closed it never takes data again (`flowscope run | head`):
                # the collector stops, as a pipeline's writer does, instead of running on with
                # everything counted as sink_error. What is still queued fails at once, counted.
                if not self.gone:
                    why = getattr(job.error, "strerror", None) or type(job.error).__name__
                    self.gone = f"stdout was closed by its reader ({why})"
                    log.error("%s: stopping; flows from here on are counted as dropped (reason=\"sink_error\")",
                              self.gone)
                    self.gone_event.set()
                continue
            self._rl.error("write", "%s sink write failed: %s", self.name, job.error)
            await asyncio.sleep(0.5)

    async def _close(self, timeout: float) -> None:
        """At the deadline: a write still going stops after its piece; the records that landed
        whole are delivered, the rest stay in flight for drain() to count as shutdown."""
        if self._inflight is not None:
            job, chunks, pieces, skip = self._inflight
            self._inflight = None
            job.abort = True
            for c, k in zip(chunks, _complete_records(pieces, max(0, job.written - skip)), strict=True):
                if k:
                    self.delivered[c.kind] += k
                    self.queue.done(c.kind, 0, k)
        if self._regular and self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError:
                pass


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# ------------------------------------------------------------------------------------------------
# Kafka


def _murmur2(data: bytes) -> int:
    """Kafka's default partitioner hash, made positive as Java's Utils.toPositive does (the sign
    bit cleared), so keyed records land where Java clients and librdkafka put them whatever the
    partition count: the one decoders.KeyedBatches hashes with (aiokafka's murmur2 returns the
    unsigned 32-bit value)."""
    from decoders import murmur2_positive

    return int(murmur2_positive(data))


def conversation_key(rec: bytes) -> bytes:
    """The two addresses sorted, taken from the encoded JSON (no parse): both directions of a
    conversation get the same key and so the same partition."""
    i = rec.find(b'"SrcAddr":"')
    j = rec.find(b'"DstAddr":"')
    a = rec[i + 11: rec.find(b'"', i + 11)] if i >= 0 else b""
    b = rec[j + 11: rec.find(b'"', j + 11)] if j >= 0 else b""
    return a + b"|" + b if a <= b else b + b"|" + a


METADATA_MAX_AGE_MS = 30000

#: Seconds the sink's start waits, past the topics' metadata, for their max.message.bytes
#: (DescribeConfigs, KafkaSink._ask_limit): a broker slow to answer, or not answering, holds
#: back no more than that; its answer still applies when it comes, within the request timeout.
TOPIC_LIMIT_WAIT_S = 1.0
# How often the brokers the cluster advertises are checked for reachability when producing
# fails, and how long one connection attempt may take (KafkaSink._advertised_problem).
ADVERTISED_CHECK_S = 30.0
ADVERTISED_CONNECT_S = 2.0
# ... and the least time between two checks made to explain a failure (a metadata request or a
# refresh that failed): the answer it gives is the cause of that failure, not the connect-time one.
ADVERTISED_FAILING_S = 1.0
#: Seconds at least between two log lines saying which partitions' leaders cannot be reached.
LEADERS_LOG_S = 60.0
# Why a partition has no leader, when none is known to have led it (KafkaSink._leaderless)
NO_LEADER_YET = "none is elected yet"


async def tcp_reach(host: str, port: int) -> tuple[str, str]:
    """Why a TCP connection to host:port cannot be made within ADVERTISED_CONNECT_S (refused,
    unresolvable, no answer) and "", or "" and the IP address it reached (it is closed at once)."""
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, port), ADVERTISED_CONNECT_S)
    except (OSError, asyncio.TimeoutError) as exc:
        return (exc.strerror if isinstance(exc, OSError) and exc.strerror else
                "no answer" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__), ""
    peer = w.get_extra_info("peername")
    w.close()
    return "", str(peer[0]) if isinstance(peer, tuple) and peer else host


async def tcp_unreachable(host: str, port: int) -> str:
    """Why a TCP connection to host:port cannot be made (tcp_reach), or "" when it can."""
    return (await tcp_reach(host, port))[0]

#: Seconds at least between two DescribeConfigs requests for one topic (KafkaSink._ask_limit).
LIMIT_ASK_S = 10.0

#: Bytes a Kafka v2 record may add to its key and value (record batches built one by one,
#: KafkaSink._append): its length (varint, at most 5 bytes), attributes (1), timestamp delta
#: (varlong, 10), offset delta (5), key and value lengths (5 each) and header count (1).
RECORD_OVERHEAD_MAX = 32


def topic_max_message_bytes(resp: Any, topic: str) -> tuple[int | None, str, bool]:
    """A DescribeConfigs answer (v0-v2) for `topic` read for its effective max.message.bytes:
    (bytes, "", False), or (None, why, error) where error says whether the broker failed the
    request (its per-resource error code: an ACL denial, an unknown topic) or answered garbage,
    rather than having no value to give (Tansu 0.6 answers every topic with no config at all).
    Kafka answers a topic's effective value under the topic's name for it (its own, or the
    broker's message.max.bytes it inherits): an int of at least 0 (TopicConfig: atLeast(0)),
    0 taken as garbage (no batch would fit)."""
    from aiokafka.errors import for_code

    found = [r for r in (getattr(resp, "resources", None) or ()) if len(r) >= 5 and r[3] == topic]
    if not found:
        return None, "the answer does not name the topic", True
    code, message, _rtype, _name, entries = found[0][:5]
    if code:
        name = getattr(for_code(code), "message", "") or for_code(code).__name__
        return None, f"error {code} {name}" + (f": {message}" if message else ""), True
    values = [e[1] for e in entries or () if len(e) >= 2 and e[0] == "max.message.bytes"]
    if not values:
        return None, "the broker gives no max.message.bytes for it", False
    raw = values[0]
    try:
        n = int(str(raw).strip())
    except ValueError:
        return None, f"max.message.bytes {raw!r} is not a number", True
    if not 0 < n < 2 ** 31:
        return None, f"max.message.bytes {raw!r} is out of range", True
    return n, "", False


def producer_kwargs(k: KafkaConfig) -> dict[str, Any]:
    """aiokafka producer settings from the config (TLS and SASL included)."""
    kw: dict[str, Any] = {
        "bootstrap_servers": k.brokers,
        "client_id": k.client_id,
        "acks": "all" if k.acks == "all" else int(k.acks),
        "compression_type": None if k.compression == "none" else k.compression,
        "linger_ms": k.linger_ms,
        "max_batch_size": k.batch_bytes,
        "max_request_size": k.batch_bytes + 65536,
        "request_timeout_ms": k.request_timeout_ms,
        "retry_backoff_ms": 200,
        "enable_idempotence": False,
        # Partition counts and leaders are re-read at least this often (aiokafka's default, 5
        # minutes, left partitions added to or removed from a topic unseen that long).
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
        # aiokafka closes a connection idle this long with nothing waiting on it, and opens it
        # again at the next request: no broker lost, so such a close is not counted as a lost
        # connection (KafkaSink._connections_lost). None: never (0 is the option's "never").
        "connections_max_idle_ms": k.connections_max_idle_ms or None,
    }
    tls = k.tls or bool(k.tls_ca or k.tls_cert)
    if tls:
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(cafile=k.tls_ca or None, certfile=k.tls_cert or None,
                                               keyfile=k.tls_key or None)
    if k.sasl_mechanism != "none":
        kw["security_protocol"] = "SASL_SSL" if tls else "SASL_PLAINTEXT"
        kw["sasl_mechanism"] = k.sasl_mechanism
        kw["sasl_plain_username"] = k.sasl_user
        kw["sasl_plain_password"] = k.sasl_password
    else:
        kw["security_protocol"] = "SSL" if tls else "PLAINTEXT"
    return kw


def direct_possible(k: KafkaConfig) -> bool:
    """Whether prebuilt batches can take the direct produce path (collector.kafka_direct):
    plaintext, no SASL (compressed or not); otherwise they go through aiokafka."""
    return not (k.tls or k.tls_ca or k.tls_cert) and k.sasl_mechanism == "none"


def connect_error(k: KafkaConfig, exc: BaseException) -> str:
    """Why a producer could not start, for the log: with SASL, which mechanism and user were tried.

    RFC 5802 section 7: server-final-message = (server-error / verifier), server-error being
    "e=" (invalid-proof, unknown-user, ...). aiokafka's SCRAM client reads only the verifier, so a
    broker that rejects the credentials in that message (Tansu does, with error code 0) surfaces as
    KeyError('v'); Kafka itself answers SaslAuthenticate with error 58, which aiokafka raises as
    SaslAuthenticationFailedError with the broker's message."""
    sasl = f"SASL {k.sasl_mechanism} authentication as user {k.sasl_user!r}"
    if k.sasl_mechanism.startswith("SCRAM-") and isinstance(exc, KeyError) and exc.args == ("v",):
        return (f"{sasl} was rejected: the broker ended the SCRAM exchange with an error instead of its "
                f"signature (wrong password, or no {k.sasl_mechanism} credentials for that user)")
    text = str(exc)
    if type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    if (k.tls or k.tls_ca or k.tls_cert) and "bootstrap" in text:
        # aiokafka logs the cause on a line of its own, empty for a handshake that timed out: a TLS
        # client at a plaintext listener waits out the request timeout and nothing said TLS
        text += (" (TLS is on: a port that is the brokers' plaintext listener, or a certificate "
                 "kafka.tls_ca does not trust, fails this way too; aiokafka's line gives the cause when it has one)")
    return text if k.sasl_mechanism == "none" else f"{text} ({sasl})"


def check_tls(k: KafkaConfig, named: Callable[[str], str] = str) -> str | None:
    """An error message when the TLS files cannot be read (the sink would otherwise fail in
    its task, after start-up, where only /readyz would show it). `named` is how the caller names
    a setting (Config.named: `kafka.tls_ca (from FLOWSCOPE_KAFKA_TLS_CA)`)."""
    if not (k.tls or k.tls_ca or k.tls_cert):
        return None
    try:
        producer_kwargs(k)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return f"{_tls_culprit(k, named)}: cannot load: {exc}"
    return None


def _tls_culprit(k: KafkaConfig, named: Callable[[str], str]) -> str:
    """The setting whose file the TLS context could not load, with its value. aiokafka's
    create_ssl_context loads the CA bundle first (ssl.create_default_context(cafile=...)), then
    the client certificate with its key: a CA bundle that loads alone leaves the pair."""
    import ssl

    if k.tls_ca:
        try:
            ssl.create_default_context(cafile=k.tls_ca)
        except (OSError, ValueError):
            return f"{named('kafka.tls_ca')}: {k.tls_ca}"
    if k.tls_cert:
        return f"{named('kafka.tls_cert')}: {k.tls_cert} with {named('kafka.tls_key')}: {k.tls_key}"
    return f"{named('kafka.tls')}: the system CA store"


def check_compression(k: KafkaConfig, named: Callable[[str], str] = str) -> str | None:
    """An error message when the chosen codec's library is missing (aiokafka fails late otherwise);
    `named` as for check_tls."""
    if k.compression == "none":
        if k.compression_thread == "on":
            return (f"{named('kafka.compression_thread')}: on, but {named('kafka.compression')} is none "
                    "(nothing to compress)")
        return None
    from aiokafka import codec

    def has_lz4() -> bool:  # the keyed modes compress through aiokafka, prebuilt batches with lz4
        try:
            import lz4.frame  # noqa: F401
        except ImportError:
            return False
        return codec.has_lz4()

    have: dict[str, Callable[[], bool]] = {"gzip": codec.has_gzip, "snappy": codec.has_snappy,
                                           "lz4": has_lz4, "zstd": codec.has_zstd}
    if not have[k.compression]():
        pkg = {"snappy": "cramjam (or python-snappy)", "lz4": "lz4 and cramjam", "zstd": "cramjam (or zstandard)"}
        return (f"{named('kafka.compression')}: {k.compression} needs the Python package "
                f"{pkg.get(k.compression, k.compression)}; install it or choose another codec")
    if k.compression_thread == "on":
        use, why = compression_thread_plan(k, named)
        if not use:
            return f"{named('kafka.compression_thread')}: on, but {why}"
    return None


class _DirectRecords:
    """The builder of a batch of queued records (JSON) on the direct path, with aiokafka's
    builder's append()/size(): a decoders.RecordBatchWriter, sent on the direct connections as
    the prebuilt batches are. Built by aiokafka's producer, such a batch went on aiokafka's own
    connection while the partition's prebuilt batches went on the direct one: a keyed
    partition's order did not hold between the two (the records queued before the partition
    count was known, sent by one, and the flows after, by the other, at once), and Tansu can
    lose one of two first batches of a partition written at once on two connections
    (tests/conftest.warm_partitions): a test read 4,382 of 6,870 flows all acknowledged."""

    __slots__ = ("writer",)

    def __init__(self, max_bytes: int) -> None:
        from decoders import RecordBatchWriter

        self.writer = RecordBatchWriter(max(1024, max_bytes))

    def append(self, key: bytes | None, value: bytes, timestamp: int | None) -> bool | None:
        return True if self.writer.add_record(key, value, timestamp or 0) else None

    def size(self) -> int:
        return int(self.writer.size)


class _Open:
    """A record batch being filled for one partition, with its records kept for a re-queue."""

    __slots__ = ("kind", "partition", "builder", "records", "nbytes", "exporters", "written", "seq", "sent",
                 "resend", "stamps", "aio")

    def __init__(self, kind: int, partition: int, builder: Any, seq: int = 0) -> None:
        self.kind = kind
        self.partition = partition
        self.builder = builder
        self.seq = seq  # send order (keyed modes: a failed batch is held in this order)
        self.written = False  # its Produce request went out on a connection (direct path)
        self.sent = False     # records of it were in a request written before (Chunk.sent)
        # how many of its records were in a request written before and are in none now: counted in
        # flowscope_kafka_resent_records when it is written (0 from then on), and `unconfirmed`,
        # not `shutdown`, if the shutdown deadline catches it before (KafkaSink.unconfirmed)
        self.resend = 0
        self.records: list[bytes] = []
        self.nbytes = 0
        self.exporters: list[str] | None = None  # key exporter: each record's, for a re-queue
        self.stamps: list[int] = []   # each record's Chunk.ts (its CreateTime), for a re-queue
        # handed to aiokafka: its topic, and the Produce requests written for its partition by then
        # (_aio_produced; None: not counted), so that one never written is told (KafkaSink._may_be_in_topic)
        self.aio: tuple[str, int | None] | None = None

    def add(self, rec: bytes, exporter: str | None = None, ts: int = 0) -> None:
        self.records.append(rec)
        self.stamps.append(ts)
        self.nbytes += len(rec) + 1
        if exporter is not None:
            if self.exporters is None:
                self.exporters = []
            self.exporters.append(exporter)

    def chunks(self) -> list[Chunk]:
        """The records as queue chunks again, in order: a chunk per run of records of one
        exporter (the key of kafka.key exporter) and one arrival time (their CreateTime)."""
        if isinstance(self.records, Prebuilt):
            return [Chunk(self.kind, self.records, self.nbytes, "", self.seq, self.sent)]
        ex, st = self.exporters, self.stamps
        out: list[Chunk] = []
        start = 0
        for i in range(1, len(self.records) + 1):
            if (i == len(self.records) or (ex is not None and ex[i] != ex[start])
                    or (st and st[i] != st[start])):
                recs = self.records[start:i]
                out.append(Chunk(self.kind, recs, sum(len(r) + 1 for r in recs), ex[start] if ex else "", self.seq,
                                 self.sent, st[start] if st else 0))
                start = i
        return out


class _Held:
    """A partition of a keyed mode whose batches fail (kept aside from the queue, see
    KafkaSink._hold): its chunks in send order, when to try again, and the one chunk sent to
    try (the probe). Or (busy) one whose leader's connection has no room (KafkaSink._busy):
    its chunks go back once it has."""

    __slots__ = ("chunks", "until", "wait", "probe", "busy")

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.until = 0.0
        self.wait = 0.0
        self.probe: Chunk | None = None
        self.busy = False


#: --workers N (set by app._child before a worker starts): (an event shared by the workers, whether
#: this is the first worker). The first worker sets it once it has asked for the topics' metadata
#: (and created them with --kafka-create-topic); the others ask after it. Tansu, asked for a topic
#: it does not have by two producers at once, creates it twice and loses what was written into
#: the first one (a two-worker test lost one worker's records so, once in some hundred runs).
topic_turn: tuple[Any, bool] | None = None


class KafkaSink(Sink):
    """aiokafka producer fed by record-batch appends; see the module docstring."""

    name = "kafka"
    # problem (a property here): as set, or the head and fallback of a failure _explain set
    _problem = ""
    _why: tuple[str, str | None] | None = None

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.k = cfg.kafka
        self.producer: Any = None  # the first connection: metadata and topic creation
        self.producers: list[Any] = []  # every connection (kafka.connections), see _submit
        self._conn_rr = 0
        # key none through aiokafka: (topic, partition) -> [producer index, batches outstanding]
        # (_steer_aio keeps a partition on one producer while it has batches unanswered)
        self._aio_owner: dict[tuple[str, int], list[int]] = {}
        # producer index -> {(topic, partition): its key none batches unanswered}
        self._aio_parts: dict[int, dict[tuple[str, int], int]] = {}
        # (topic, partition)s with a key none batch acknowledged through aiokafka and none failed
        # since: only those may be helped by a second producer (_steer_aio; Tansu's first writes)
        self._aio_proven: set[tuple[str, int]] = set()
        self.direct: Any = None  # collector.kafka_direct.DirectProducer for prebuilt batches (kafka.direct)
        self.partitions: dict[str, list[int]] = {}
        self._rr = 0
        self._pending: set[asyncio.Future[Any]] = set()
        self._partitions_at: dict[str, float] = {}
        self._retry_wait = 0.0  # seconds before the next attempt after a failed one
        self._need_metadata = False
        self._written = [0, 0]     # records by kind in Produce requests written and not answered
        # the batches of _written handed to aiokafka (which may not have written them: unconfirmed())
        self._aio_handed: set[_Open] = set()
        # flows topic partition -> since when the batches handed to aiokafka for it have had no
        # answer (an acknowledgement or an error code), for _probe_leaders: aiokafka gives no age
        # of its requests, as the direct path's connections do (DirectProducer.load)
        self._aio_waiting: dict[int, float] = {}
        self._closing = False      # _close() is failing what is still in flight: no re-queue
        self._aio_dropped_at = _AIO_DROPPED[0]   # (aiokafka's dropped connections: counted per process)
        # producer connections last seen (_connections_lost): their (producer, id) keys, and the objects
        self._conn_prev: dict[tuple[int, Any], Any] = {}
        self._conns_closed: weakref.WeakSet[Any] = weakref.WeakSet()   # closed ones already reported
        self._codec_id, self._encode = _codec(self.k.compression, self.k.compression_level)
        self.compressed_bytes = [0, 0]  # prebuilt batches: bytes before and after compression
        # kafka.compression_thread: decoders' Packer (a POSIX thread) compressing prebuilt batches
        self._packer: Any = None
        self._packing: dict[Any, tuple[asyncio.Future[None], int]] = {}  # writer -> (done, raw size)
        self.packer_failed = 0
        self.resent = [0, 0]    # records by kind written again after a request that may have been written
        # What the sender holds in flight and has not written (for unconfirmed(): at the shutdown
        # deadline, records of it that a request held before are `unconfirmed`, not `shutdown`):
        # the chunks of the take it is routing, then the batches made of them.
        self._taken: list[Chunk] = []
        self._opens: list[_Open] = []
        # Keyed modes: (kind, partition) -> its failed batches and those queued after them, kept
        # aside while the partition fails (see _hold); _seq numbers batches in send order.
        self._held: dict[tuple[int, int], _Held] = {}
        self._seq = 0
        self._denied: dict[str, float] = {}  # topic -> until when its ACL denial is taken as still so
        self._md_failed: dict[int, float] = {}  # broker -> when it last left a metadata request unanswered
        self._drain_hooked: weakref.WeakSet[Any] = weakref.WeakSet()  # aiokafka batches _on_room waits for (_aio_free)
        # Bytes a record batch of each kind (flows, sFlow counter records) may hold: kafka.batch_bytes,
        # lowered when a broker refuses a batch as too large (_shrink). The worker makes its flows'
        # batches this size (collector.server.Worker), _append its one-by-one batches, and a queued
        # batch made larger before is cut to it before it goes (_cut_to_limit)
        self.batch_limit = [self.k.batch_bytes, self.k.batch_bytes]
        self._told = [True, True]   # whether the limit learnt since the last refusal was logged (_took)
        # The topics' max.message.bytes read from the cluster (DescribeConfigs, _ask_limit), which
        # sets batch_limit before any batch is refused: topic -> bytes (absent: not known, batch
        # sizes are learnt from refusals); the requests in flight; the topics asked about since
        # their metadata was (re)learnt; and what was last logged per topic (each outcome once).
        self.topic_limit: dict[str, int] = {}
        self._limit_tasks: dict[str, asyncio.Task[None]] = {}
        self._limit_asked: set[str] = set()
        self._limit_at: dict[str, float] = {}   # topic -> when it was last asked about
        self._limit_said: dict[str, str] = {}
        self._limit_away: dict[str, str] = {}   # topic -> the unreachable broker last said (_limit_unasked)
        # Brokers the cluster's metadata advertises that this host cannot reach (_advertised_problem):
        # the finding, when it was made, the node ids found unreachable and the records delivered
        # then (one delivered since shows a leader reached: unreachable())
        self._adv_problem = ""
        self._adv_checked_at = -ADVERTISED_CHECK_S
        self._adv_checked_done = 0   # records delivered at the last check (idle since: _check_advertised)
        self._adv_bad: set[int] = set()
        self._adv_why: dict[int, str] = {}
        self._adv_done = 0
        self._adv_checking = asyncio.Lock()   # (one check at a time: _check_advertised)
        # advertised addresses a check found reachable, while they are advertised: one refused
        # there later is a broker down, not an address this host could never use; and the names
        # of advertised and bootstrap addresses, resolved to compare them (collector/reach.py)
        self._adv_reached = Reached()
        self._names = Resolver()
        # Leaders that accept connections and answer no request (_probe_leaders): node id -> the
        # finding; the records delivered when a finding last changed (unreachable()); when they were
        # last asked; the produce errors at the last advertised check (_watch: errors since check
        # again soon); the delivered count and since when it has not moved with records waiting
        self._hung: dict[int, str] = {}
        self._hung_done = 0
        self._hung_asked = -IDLE_CHECK_S
        self._watch_errors = 0
        self._watch_done = 0
        self._watch_since = time.monotonic()
        self._watch_task: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None   # _check_now's
        self._leaders_rl = RateLimitedLog(log, LEADERS_LOG_S)
        # the flows topic's partitions -> the leader they had at an address (_note_leaders), to name it
        # once the metadata names none (_leaderless)
        self._led_by: dict[int, tuple[int, str]] = {}
        # a connection lost since the advertised brokers' last check (_lost_connection: _watch
        # checks them soon), and whether the last refresh failed ("producing again")
        self._check_soon = False
        self._refresh_failed = False
        self._said_exists: set[str] = set()   # topics --kafka-create-topic found existing, said so once
        self._probe_kw: dict[str, Any] | None = None   # producer_kwargs for _answers' connections

    async def _advertised_problem(self, failing: bool = False, soon: bool = False) -> str:
        """The brokers a reachable bootstrap broker advertises in its metadata (its
        advertised.listeners) that this host cannot connect to, as a sentence (_unreached_said:
        a misadvertised address, a broker down, or either), or "". This is
        where records are produced, so such a cluster takes nothing while the bootstrap address
        answers: aiokafka then only says that node N could not be reached, and the metadata
        errors that follow read like a missing topic. Checked with a TCP connection each, at most
        every ADVERTISED_CHECK_S, or every IDLE_CHECK_S while the sink has nothing to send or no
        partition leader could be reached (unreachable(): readiness turns back as soon as one
        can). `failing`: asked to
        explain a failure that just happened (the problem /readyz and the log give), so checked
        again unless the latest check is under ADVERTISED_FAILING_S old: a cluster whose
        advertised broker went away after the connect-time check (which found it reachable) was
        reported with that older answer ("no broker answered") for up to ADVERTISED_CHECK_S.
        `soon`: every IDLE_CHECK_S (a produce failed since the last check: _watch)."""
        async with self._adv_checking:
            return await self._check_advertised(failing, soon)

    async def _check_advertised(self, failing: bool, soon: bool) -> str:
        """_advertised_problem, one at a time: a caller that came while a check was under way
        (_watch's, and a failure to explain) gets that check's finding, not the one before it
        (which said a broker killed meanwhile reachable, for the failure's whole retry interval)."""
        now = time.monotonic()
        # Idle (nothing delivered since the last check, nothing queued nor in flight): no produce
        # fails, and a broker gone to which no connection was open to be lost (never produced
        # to, or closed for idleness) was found by the periodic check alone, up to
        # ADVERTISED_CHECK_S later (in flowscope_kafka_unreachable_partitions; in /readyz when
        # it led every partition). Every IDLE_CHECK_S then, as the idle metadata request (_run):
        # one TCP connection per advertised broker, opened and closed, off the records' way.
        done = self.delivered[0] + self.delivered[1]
        idle = done == self._adv_checked_done and self.queue.total_records == 0
        every = (ADVERTISED_FAILING_S if failing else IDLE_CHECK_S if soon or idle or self._adv_bad or self.unreachable()
                 else ADVERTISED_CHECK_S)
        if now - self._adv_checked_at < every or self.producer is None:
            return self._adv_problem
        self._adv_checked_at, self._adv_checked_done = now, done
        log.debug("kafka: checking the advertised brokers (%s)",
                  "failing" if failing else "soon" if soon else "periodic" if every == ADVERTISED_CHECK_S else
                  "idle" if idle else "unreachable")
        # (by node id: aiokafka gives a set, whose order changes from one process to the next,
        # and the sentence names them in this order)
        brokers = sorted(self.producer.client.cluster.brokers(), key=lambda b: b.nodeId)

        reach = await asyncio.gather(*(tcp_reach(b.host, b.port) for b in brokers))
        why = [w for w, _ip in reach]
        if {b.nodeId for b, w in zip(brokers, why, strict=True) if w} != self._adv_bad:
            self._adv_done = done
        self._adv_reached.update((b.host, b.port, ip) for b, (_w, ip) in zip(brokers, reach, strict=True))
        self._adv_why = {b.nodeId: f"{'[' + b.host + ']' if ':' in b.host else b.host}:{b.port} (node {b.nodeId}: {w})"
                         for b, w in zip(brokers, why, strict=True) if w}
        self._adv_bad = set(self._adv_why)
        self._adv_problem = await self._unreached_said([b for b, w in zip(brokers, why, strict=True) if w], len(brokers))
        return self._adv_problem

    async def _unreached_said(self, bad: list[Any], known: int) -> str:
        """The sentence for the advertised brokers `bad` (of `known`) found unreachable (_adv_why),
        or "" (collector.reach.unreached_said: down, misadvertised, or either where the checks
        cannot tell), with each --kafka-brokers address checked again (where it answers: a name
        of several addresses answers at one of them), and the names of both resolved to compare
        them."""
        if not bad:
            return ""
        boot = [split_hostport(a) for a in self.k.brokers]
        found, boot_forms, bad_forms = await asyncio.gather(
            asyncio.gather(*(tcp_reach(h, p) for h, p in boot)),
            asyncio.gather(*(self._names.forms(h, p) for h, p in boot)),
            asyncio.gather(*(self._names.forms(b.host, b.port) for b in bad)))
        return unreached_said(
            [Unreached(self._adv_why[b.nodeId], forms, gone) for b, (forms, gone) in zip(bad, bad_forms, strict=True)],
            known, self._adv_reached.addresses(),
            [Bootstrap(a, forms, None if w else (canonical_host(ip), p))
             for a, (_h, p), (forms, _), (w, ip) in zip(self.k.brokers, boot, boot_forms, found, strict=True)])

    def _leaders(self) -> dict[int, int]:
        """The flows topic's partitions -> their leader's node id, as the client's metadata has
        them (partitions without a known leader left out). A pure read: _note_leaders keeps who
        led what."""
        from aiokafka.structs import TopicPartition

        if self.producer is None:
            return {}
        cluster = self.producer.client.cluster
        topic = self.k.topic
        led = {p: cluster.leader_for_partition(TopicPartition(topic, p)) for p in cluster.partitions_for_topic(topic) or ()}
        return {p: n for p, n in led.items() if n is not None and n >= 0}

    def _leader_of(self, topic: str, partition: int) -> int | None:
        """The leader's node id of one partition of `topic` in the client's metadata (None: not
        known, or no producer)."""
        from aiokafka.structs import TopicPartition

        if self.producer is None:
            return None
        return self.producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))

    def _listed_leaders(self, lost: dict[int, str]) -> set[int]:
        """The nodes leading a flows topic partition that `lost` (_leaderless) leaves out."""
        return {n for p, n in self._leaders().items() if p not in lost}

    def _note_leaders(self) -> None:
        """Keep each flows topic partition's leader at an address the client's metadata gives
        (_led_by), to name it once the metadata gives none (_leaderless); a partition the topic
        no longer has is forgotten."""
        from aiokafka.structs import TopicPartition

        if self.producer is None:
            return
        cluster = self.producer.client.cluster
        led = self._leaders()
        for p, n in led.items():
            b = cluster.broker_metadata(n)
            if b is not None:
                self._led_by[p] = (n, f"{'[' + b.host + ']' if ':' in b.host else b.host}:{b.port}")
        topic = self.k.topic
        for p in [p for p in self._led_by if p not in led and cluster.leader_for_partition(TopicPartition(topic, p)) is None]:
            del self._led_by[p]     # (no longer a partition of the topic: kept for its partitions only)

    def _leaderless(self) -> dict[int, str]:
        """The flows topic's partitions that the client's metadata gives no leader with an
        address -> why, naming the broker that led them (_led_by): Kafka drops a broker from the
        metadata once its session times out (KRaft's broker.session.timeout.ms, 9 s by default;
        zookeeper.session.timeout.ms, 18 s), and its partitions are then led by another in-sync
        replica, or, with none, by no one (leader -1, LEADER_NOT_AVAILABLE, as during an election). Until then the broker is listed and said
        out of reach by the TCP check (_advertised_problem); after, this says it: no produce can
        go to these partitions either way."""
        from aiokafka.structs import TopicPartition

        if self.producer is None:
            return {}
        cluster = self.producer.client.cluster
        topic = self.k.topic
        listed = {b.nodeId for b in cluster.brokers()}
        out = {}
        for p in cluster.partitions_for_topic(topic) or ():
            n = cluster.leader_for_partition(TopicPartition(topic, p))
            if n is not None and n >= 0 and n in listed:
                continue
            m, at = self._led_by.get(p, (-1, ""))
            if n is not None and n >= 0:
                out[p] = f"it names node {n} as the leader but not among its brokers (a broker gone)"
            elif m >= 0 and m not in listed:
                out[p] = (f"node {m} at {at}, the leader before, has left it (a broker down past its session timeout) "
                          "and no other in-sync replica took over")
            elif m >= 0:
                out[p] = f"none is elected yet (the leader before: node {m} at {at})"
            else:
                out[p] = NO_LEADER_YET
        return out

    def _partitions_known(self) -> int:
        """How many partitions the client's metadata gives the flows topic."""
        return len(self.producer.client.cluster.partitions_for_topic(self.k.topic) or ()) if self.producer else 0

    def _cut_off(self) -> set[int]:
        """Node ids that cannot be reached: refused, unresolvable or silent to a TCP connection
        (_advertised_problem), or hung (_probe_leaders)."""
        return self._adv_bad | set(self._hung)

    def unreachable_partitions(self, leaders: dict[int, int] | None = None) -> list[int]:
        """The flows topic's partitions whose leader cannot be reached (_cut_off), for the metric
        and the log: their flows wait in the queue (keyed modes: counted as queue_full or shutdown
        if they never go) or go to the other partitions (key none). `leaders`: _leaders(), where
        the caller has it already."""
        cut = self._cut_off()
        lost = self._leaderless()
        if not cut:
            return sorted(lost)
        return sorted({p for p, n in (self._leaders() if leaders is None else leaders).items() if n in cut} | set(lost))

    def waiting(self) -> int:
        """Records that could go: those queued or in flight less the ones held (_held, with their
        probe) for a partition whose leader is known out of reach (unreachable_partitions; for
        the counters topic, a leader in _cut_off). Those wait for the leader, not for the sink:
        counted as a stall, an idle keyed collector with some leaders out of reach went unready
        at the stall limit, though the other partitions would take any flow that came, and
        behind a Service it then got none until the leader was back. Sampled, not per record."""
        n = self.queue.total_records
        if not self._held or self.producer is None:
            return n
        cut = self._cut_off()
        out = set(self.unreachable_partitions())
        if not (cut or out):
            return n
        for (kind, p), h in self._held.items():
            if p < 0 or not (p in out if kind == FLOWS else self._leader_of(self.k.counters_topic, p) in cut):
                continue
            n -= sum(len(c.records) for c in h.chunks)
            if h.probe is not None and not any(c is h.probe for c in h.chunks):
                n -= len(h.probe.records)
        return max(n, 0)

    def unreachable(self) -> str:
        """Why no leader of the flows topic's partitions can be reached, as the latest checks
        found (_advertised_problem: refused, unresolvable, no answer within ADVERTISED_CONNECT_S;
        _probe_leaders: connections taken, no request answered within IDLE_CHECK_S), or "": no
        Produce request can go anywhere then, whatever the bootstrap brokers answer, so /readyz
        says so at once rather than after the stall limit. Only those checks set it, never a
        produce's latency, so a slow produce cannot make readiness flap; a record delivered since
        the finding, or a check that reaches a leader (every IDLE_CHECK_S meanwhile: _watch),
        clears it. With the topic's metadata not known yet, every advertised broker must be
        unreachable."""
        cut = self._cut_off()
        lost = self._leaderless()
        if not (cut or lost) or self.producer is None:
            return ""
        if cut and self.delivered[0] + self.delivered[1] != max(self._adv_done, self._hung_done):
            return ""
        cluster = self.producer.client.cluster
        topic = self.k.topic
        why = "; ".join(w for w in (self._adv_problem if self._adv_bad else "",
                                     *(self._hung[n] for n in sorted(self._hung)),
                                     *(f"partition{'s' if len(ps) > 1 else ''} {', '.join(map(str, ps))} "
                                       f"{'have' if len(ps) > 1 else 'has'} no leader in the cluster's metadata: {w}"
                                       for w, ps in _grouped(lost))) if w)
        leaders = self._listed_leaders(lost)
        if leaders or lost:
            if not leaders <= cut:
                return ""
            return f"no leader of topic {topic}'s partitions can be reached: {why}"
        if not {b.nodeId for b in cluster.brokers()} <= cut:
            return ""
        return f"no broker the cluster advertises can be reached: {why}"

    async def _watch(self) -> None:
        """Background, once a second while the sink runs, so that the sender never waits on it:
        which partition leaders cannot be reached. The advertised brokers' TCP check
        (_advertised_problem) every ADVERTISED_CHECK_S, every IDLE_CHECK_S while the sink is idle
        or one is found unreachable, or after a produce failed, a metadata refresh was asked (a lost connection:
        with --kafka-key none a broker killed may fail no produce, its partitions skipped) or a
        direct connection closed since the last check; and _probe_leaders. What is
        found is logged (rate-limited, naming the brokers) and counted
        (flowscope_kafka_unreachable_partitions): some partitions' leaders out of reach leave
        /readyz ready (the others take flows), all of them make it unready (unreachable())."""
        while not self._closing:
            await asyncio.sleep(1.0)
            if self.producer is None or self._closing:
                continue
            try:
                errors = self.errors["produce"]
                self._note_leaders()   # (_led_by names it once the metadata names no one)
                checked = self._adv_checked_at
                if self._direct_lost():   # (a direct produce connection closed, not replaced yet)
                    self._lost_connection()
                await self._advertised_problem(soon=errors != self._watch_errors or self._check_soon)
                if self._adv_checked_at != checked:
                    self._check_soon = False
                self._watch_errors = errors
                await self._probe_leaders()
                self._say_unreachable()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a check that failed is tried again next turn
                log.debug("kafka: leader check failed: %r", exc)

    def _check_now(self) -> None:
        """The advertised brokers checked now, in the background (a failure's: _failed cannot
        wait), one such check at a time; _advertised_problem says why it may answer at once."""
        if self._checking is not None and not self._checking.done():
            return

        async def check() -> None:
            try:
                await self._advertised_problem(failing=True)
            except Exception as exc:  # noqa: BLE001 - _watch checks again within seconds
                log.debug("kafka: advertised brokers' check failed: %r", exc)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return   # (called outside the event loop, as a unit test does: _watch checks within seconds)
        self._checking = loop.create_task(check())

    def _lost_connection(self) -> None:
        """A connection was lost (an aiokafka one, which sends the sink through a metadata
        refresh, or a direct produce one), or a refresh follows a failure: the advertised brokers
        are checked soon (_watch, within a second). The one way there for a lost connection: a
        broker killed fails no produce with --kafka-key none (its partitions are skipped)."""
        self._check_soon = True

    async def _probe_leaders(self) -> None:
        """A hung broker (it accepts connections and answers no request: wedged, stopped, or
        its disk stuck) passes the TCP check, and records for it waited for the produce
        timeouts or the stall limit (max(10 s, twice the request timeout)) before /readyz said
        anything. With records waiting and nothing delivered for IDLE_CHECK_S, or a direct
        connection's oldest request waiting that long, each leader of the flows topic (those
        only, with the direct path) is asked on a new connection (_answers), as the idle check
        asks for metadata after IDLE_CHECK_S: one that answers is slow, not hung (a Produce
        request waiting for its replicas), and readiness stays; one that does not is hung until
        a later probe (every IDLE_CHECK_S while it is) is answered. Through aiokafka, which
        gives no age of its requests, a leader whose partitions' batches handed to it have had
        no answer for IDLE_CHECK_S (_aio_waiting) is asked so: one hung broker among working ones
        never stops the deliveries."""
        now = time.monotonic()
        done = self.delivered[0] + self.delivered[1]
        if done != self._watch_done or self.queue.total_records == 0:
            self._watch_done, self._watch_since = done, now
        if now - self._hung_asked < IDLE_CHECK_S:
            return
        d = self.direct
        leaders = self._leaders()
        ask = set(leaders.values()) if now - self._watch_since >= IDLE_CHECK_S else (
            {n for n in d.conns if d.load(n, now) >= IDLE_CHECK_S} if d is not None else set())
        ask |= {leaders[p] for p, since in self._aio_waiting.items() if now - since >= IDLE_CHECK_S and p in leaders}
        ask = (ask | set(self._hung)) - self._adv_bad
        for n in self._adv_bad:   # (refused now: the TCP check says so)
            self._hung.pop(n, None)
        if not ask:
            return
        self._hung_asked = now
        nodes = sorted(ask)
        found = await asyncio.gather(*(self._answers(n) for n in nodes))
        before = set(self._hung)
        for n, why in zip(nodes, found, strict=True):
            if why:
                self._hung[n] = why
            else:
                self._hung.pop(n, None)
        if set(self._hung) != before:
            self._hung_done = done
        if self._aio_waiting:
            # a leader that answers: its partitions that have nothing in aiokafka's hands now are
            # waiting for nothing (their batches failed without an answer, then went elsewhere or
            # were set aside); those with a batch there are slow, and asked about again later
            answered = {n for n, why in zip(nodes, found, strict=True) if not why}
            handed = {o.partition for o in self._aio_handed if o.kind == FLOWS}
            for p in [p for p in self._aio_waiting if leaders.get(p, -1) in answered and p not in handed]:
                del self._aio_waiting[p]

    def _say_unreachable(self) -> None:
        """The log lines for unreachable_partitions() (each at most every LEADERS_LOG_S): those
        whose leader cannot be reached, and those the metadata gives no leader (_leaderless: a
        broker killed is the one, then the other, once its session timed out), each with the
        partitions' fate."""
        lost = self._leaderless()
        if not self._cut_off() and not lost:
            return
        leaders = self._leaders()
        parts = self.unreachable_partitions(leaders)
        if not parts:
            return
        total = self._partitions_known()

        def fate(until: str) -> str:
            return ("nothing can be produced (/readyz is unready)" if len(parts) == total else
                    "their flows go to the other partitions meanwhile (--kafka-key none)" if self.k.key == "none" else
                    f"their flows wait in the queue until {until} (dropped as queue_full when the queue is full, "
                    "as shutdown at the end)")
        cut = [p for p in parts if p not in lost]
        if cut:
            nodes = sorted({leaders[p] for p in cut})
            why = "; ".join(self._adv_why.get(n) or self._hung.get(n) or f"node {n}" for n in nodes)
            self._leaders_rl.warning(
                "leaders", "kafka: %d of topic %s's %d partitions (%s) have a leader this host cannot reach: %s; %s",
                len(cut), self.k.topic, total, ", ".join(map(str, cut)), why, fate("it can"))
        # (not a partition that never had a leader here: a topic just created has none for a moment)
        said = {p: w for p, w in lost.items() if p in self._led_by or w != NO_LEADER_YET}
        if said:
            groups = _grouped(said)
            why = "; ".join(w if len(groups) == 1 else f"{w} (partition{'s' if len(ps) > 1 else ''} "
                            f"{', '.join(map(str, ps))})" for w, ps in groups)
            self._leaders_rl.warning(
                "leaderless", "kafka: %d of topic %s's %d partitions (%s) have no leader in the cluster's metadata: "
                "%s; %s", len(said), self.k.topic, total, ", ".join(map(str, sorted(said))), why,
                fate("the metadata gives them one"))

    async def _answers(self, node: int) -> str:
        """Whether the broker `node` answers a request on a new connection of its own (its
        ApiVersions, SASL if configured, then a Metadata request for no topic) within
        IDLE_CHECK_S: "" when it does, else why not. A connection of its own: Kafka answers a
        connection's requests in order, so one behind a slow Produce request would wait for it."""
        from aiokafka.conn import create_conn
        from aiokafka.errors import KafkaError
        from aiokafka.protocol.metadata import MetadataRequest

        assert self.producer is not None
        b = self.producer.client.cluster.broker_metadata(node)
        if b is None:
            return ""
        if self._probe_kw is None:   # (once: a TLS context reads its files)
            self._probe_kw = producer_kwargs(self.k)
        kw = self._probe_kw
        conn: Any = None

        async def ask() -> None:
            nonlocal conn
            conn = await create_conn(
                b.host, b.port, client_id=kw["client_id"], request_timeout_ms=int(IDLE_CHECK_S * 1000),
                ssl_context=kw.get("ssl_context"), security_protocol=kw["security_protocol"],
                sasl_mechanism=kw.get("sasl_mechanism"), sasl_plain_username=kw.get("sasl_plain_username"),
                sasl_plain_password=kw.get("sasl_plain_password"))
            await conn.send(MetadataRequest([]))

        host = f"[{b.host}]" if ":" in b.host else b.host
        try:
            await asyncio.wait_for(ask(), IDLE_CHECK_S)
        except asyncio.TimeoutError:
            return (f"{host}:{b.port} (node {node}) answered no request within {IDLE_CHECK_S:.0f} s on a new "
                    "connection: a hung broker (it accepts connections, it answers nothing)")
        except (OSError, KafkaError) as exc:   # refused, reset, a failed handshake: no answer either
            return f"{host}:{b.port} (node {node}) answered no request on a new connection: {exc!r}"
        finally:
            if conn is not None:
                conn.close()
        return ""

    async def _bootstrap_problem(self) -> str:
        """Why the bootstrap brokers could not be used, where aiokafka's exception does not say
        ("Unable to bootstrap from [...]"; its cause is on a line of its own, or on none): for
        each, a TCP connection tells nothing listening (refused, unresolvable, no answer) from
        something that listens and still did not complete Kafka's first requests, which a
        plaintext client without SASL meets at a listener that wants SASL or TLS, or at a port
        that is not Kafka's. "" with TLS or SASL on (connect_error speaks of those)."""
        k = self.k
        if k.tls or k.tls_ca or k.tls_cert or k.sasl_mechanism != "none":
            return ""

        async def reach(addr: str) -> str:
            why = await tcp_unreachable(*split_hostport(addr))
            if why:
                return f"{addr}: {why}"
            return (f"{addr} accepts connections but did not answer Kafka's first requests: a listener that wants "
                    "SASL (--kafka-sasl-mechanism) or TLS (--kafka-tls), or a port that is not a Kafka broker's")

        found = await asyncio.gather(*(reach(b) for b in k.brokers))
        return "; ".join(found)

    def _hint(self, problem: str) -> str:
        return f"; {problem}" if problem else ""

    @property
    def problem(self) -> str:
        """Why the sink is not connected (Sink.problem): as set, or, for a failure _explain set,
        with what the latest check of the advertised brokers found."""
        if self._why is None:
            return self._problem
        head, otherwise = self._why
        found = self._adv_problem
        return head + (self._hint(found) if otherwise is None else found or otherwise)

    @problem.setter
    def problem(self, value: str) -> None:
        self._problem, self._why = value, None

    async def _explain(self, head: str, otherwise: str | None = None) -> str:
        """Set problem to `head` explained by the advertised brokers' check (_advertised_problem,
        made again now unless under ADVERTISED_FAILING_S old): "head; finding" (just "head" with
        nothing found), or with `otherwise`, "head" + the finding, `otherwise` if none; the new
        problem. The finding is the latest check's each time problem is read: while the sink
        stays unconnected, _watch checks every IDLE_CHECK_S, and the finding taken at the failure
        was what /readyz gave until the next failure, 5-10 s behind the latest check. Set before
        the check too: the caller has set connected False, and /readyz read meanwhile gave "not
        connected" with the reason before it (often none) for as long as the check took."""
        self._problem, self._why = "", (head, otherwise)
        await self._advertised_problem(failing=True)
        self._problem, self._why = "", (head, otherwise)
        return self.problem

    async def start(self) -> None:
        for b in self.k.brokers:
            split_hostport(b)
        _aiokafka_final_errors()
        _aiokafka_closed_writes()
        _aiokafka_produce_writes()
        _aiokafka_idle_closes()
        _aiokafka_keepalive(self.k.keepalive_s)
        self._start_packer()
        await super().start()

    async def _connect(self) -> None:
        from aiokafka import AIOKafkaProducer

        backoff = 0.2
        loop = asyncio.get_running_loop()
        # a broker not reached yet is still tried during the shutdown drain, up to its deadline:
        # it may come back within --shutdown-timeout and take what is queued
        while not self._stopping or loop.time() < self._deadline:
            # aiokafka keeps one produce request in flight per broker and connection: several
            # producers give several requests in flight (kafka.connections).
            producers = [AIOKafkaProducer(**producer_kwargs(self.k)) for _ in range(self.k.connections)]
            try:
                for producer in producers:
                    await producer.start()
            except asyncio.CancelledError:
                # Stopped (SIGTERM) before the brokers answered: each producer left unstopped was
                # reported on exit as "Unclosed AIOKafkaProducer" at ERROR, after a clean stop.
                # stop() marks it closed before its first await, so a second cancel cannot undo it.
                for producer in producers:
                    try:
                        await producer.stop()
                    except BaseException:  # noqa: BLE001 - cancelled again, or a connection half made
                        pass
                raise
            except (OSError, ssl.SSLError, Exception) as exc:  # aiokafka raises several types
                self.errors["connect"] += 1
                for producer in producers:
                    try:
                        await producer.stop()
                    except Exception:
                        pass
                # (after the producers are stopped: a stop that cancels the check leaves none unclosed)
                self.problem = (f"cannot connect to {','.join(self.k.brokers)}: {connect_error(self.k, exc)}"
                                f"{self._hint(await self._bootstrap_problem())}")
                self._rl.error("connect", "kafka: %s (retrying; records are queued up to --queue-bytes)", self.problem)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.producers = producers
            self.producer = producers[0]
            if self.k.direct and direct_possible(self.k):
                from .kafka_direct import DirectProducer

                self.direct = DirectProducer(self.producer.client, client_id=self.k.client_id,
                                             acks=-1 if self.k.acks == "all" else int(self.k.acks),
                                             request_timeout_ms=self.k.request_timeout_ms,
                                             connections=self.k.connections, keepalive_s=self.k.keepalive_s,
                                             max_idle_ms=self.k.connections_max_idle_ms)
                self.direct.on_room = self._on_room
            log.info("kafka: connected to %s (%d connection%s%s)", ",".join(self.k.brokers), len(producers),
                     "s" if len(producers) > 1 else "",
                     ", direct produce for the fast path" if self.direct is not None else "")
            self.problem = ""   # (an earlier attempt's: the brokers answered now)
            problem = await self._advertised_problem()
            if problem:
                self._rl.error("advertised", "kafka: %s", problem)
            await self._wait_turn()
            try:
                if self.k.create_topic:
                    await self._create_topics()
                await self._learn_partitions()
            finally:
                if topic_turn is not None and topic_turn[1]:
                    topic_turn[0].set()
            self.connected = True
            self.problem = ""
            return

    async def _wait_turn(self) -> None:
        """--workers N: every worker but the first waits (at most --kafka-request-timeout-ms)
        until the first has asked for the topics (see topic_turn), so that a topic the brokers
        create when asked for is asked for by one producer first."""
        if topic_turn is None or topic_turn[1]:
            return
        deadline = time.monotonic() + self.k.request_timeout_ms / 1000
        while not topic_turn[0].is_set() and time.monotonic() < deadline and not self._stopping:
            await asyncio.sleep(0.05)

    async def _learn_partitions(self) -> None:
        """Ask for the topics' metadata once connected, before the sink counts as connected
        (and so before /readyz says ready). The keyed modes' C path needs the flows topic's
        partition count (Worker.write_keyed). And a broker that creates topics when they are
        first asked for does it now, before any record is produced: Tansu, asked by two workers
        at once, creates such a topic twice and loses what was written into the first one
        (seen with two producers: about one time in twenty). A topic not there yet is logged and
        the sink goes on (its first send asks again)."""
        topics = [self.k.topic] + ([self.k.counters_topic] if self.cfg.counters else [])
        for t in topics:
            try:
                parts = await asyncio.wait_for(self._partitions(t), self.k.request_timeout_ms / 1000)
            except Exception as exc:
                if _not_authorized(exc):
                    self._rl.error("denied", "kafka: %s", _acl_problem(t))
                    continue
                # (a topic the brokers do not have, where they do not create topics when asked
                # for, looks like this: aiokafka waits for its metadata until the timeout)
                problem = await self._advertised_problem(failing=True)
                self._rl.warning("metadata", "kafka: no metadata for topic %s yet: %s (asked again before "
                                 "producing)%s", t, exc or type(exc).__name__,
                                 self._hint(problem) if problem else
                                 "" if self.k.create_topic else "; if the topic does not exist and the "
                                 "brokers do not create topics automatically, create it or run with "
                                 "--kafka-create-topic")
                continue
            log.info("kafka: topic %s has %d partition%s", t, len(parts), "" if len(parts) == 1 else "s")
        # Their max.message.bytes (asked by _partitions as each topic's metadata came): waited
        # for a moment, so that the first batches are made under it; a broker that does not
        # answer holds the start back no longer than TOPIC_LIMIT_WAIT_S, its answer applies
        # when it comes (and until then a batch refused as too large is cut, as without it).
        asking = [task for t in topics if (task := self._limit_tasks.get(t)) is not None and not task.done()]
        if asking:
            await asyncio.wait(asking, timeout=min(TOPIC_LIMIT_WAIT_S, self.k.request_timeout_ms / 1000))

    async def _create_topics(self) -> None:
        """--kafka-create-topic: ask for every topic and read the answer per topic.

        CreateTopics reports per topic in `topic_errors` (topic, error_code[, error_message])
        instead of raising (aiokafka returns the response as is): 0 is created, 36
        TOPIC_ALREADY_EXISTS is fine (created earlier, or just now by another worker or replica:
        asking without listing first has no such race), anything else is logged and counted as
        flowscope_kafka_errors_total{kind="admin"}."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import for_code

        admin = AIOKafkaAdminClient(**self._admin_kwargs())
        topics = [self.k.topic] + ([self.k.counters_topic] if self.cfg.counters else [])
        try:
            await admin.start()
            resp = await admin.create_topics([NewTopic(t, self.k.partitions, self.k.replication_factor)
                                              for t in topics])
            failed: dict[str, str] = {}
            for err in resp.topic_errors:
                topic, code = err[0], err[1]
                detail = err[2] if len(err) > 2 else None
                if code == 0:
                    log.info("kafka: created topic %s with %d partitions (replication factor %d)", topic,
                             self.k.partitions, self.k.replication_factor)
                elif code == 36:  # TOPIC_ALREADY_EXISTS
                    # (once: asked again at every metadata refresh after a failure, which said it
                    # every second or so while a broker was down)
                    log.log(logging.DEBUG if topic in self._said_exists else logging.INFO, "kafka: topic %s exists", topic)
                    self._said_exists.add(topic)
                else:
                    failed[topic] = f"error {code} {for_code(code).__name__}" + (f": {detail}" if detail else "")
            if failed:
                existing = set(await admin.list_topics())
                for topic, why in failed.items():
                    self.errors["admin"] += 1
                    log.error("kafka: could not create topic %s: %s (%s)", topic, why,
                              "it exists: producing to it anyway" if topic in existing
                              else "producing to it fails until it exists")
        except Exception as exc:
            self.errors["admin"] += 1
            log.error("kafka: could not create topics %s: %s", ",".join(topics), exc)
        finally:
            try:
                await admin.close()
            except Exception:
                pass

    def _admin_kwargs(self) -> dict[str, Any]:
        """The producer's settings an admin client takes (brokers, TLS, SASL, timeout)."""
        return {k: v for k, v in producer_kwargs(self.k).items()
                if k in ("bootstrap_servers", "client_id", "security_protocol", "ssl_context", "sasl_mechanism",
                         "sasl_plain_username", "sasl_plain_password", "request_timeout_ms")}

    def _ask_limit(self, topic: str) -> asyncio.Task[None] | None:
        """Ask the cluster for the topic's max.message.bytes in the background, once since its
        metadata was last (re)learnt (_refresh_metadata forgets it: a broker that came back empty,
        or a topic re-created, may have another), and at most every LIMIT_ASK_S (a refresh follows
        each failed batch: a broker failing them for minutes is not asked each time); the request
        in flight, if any."""
        task = self._limit_tasks.get(topic)
        if task is not None and not task.done():
            return task
        now = time.monotonic()
        last = self._limit_at.get(topic)
        if topic in self._limit_asked or self._closing or (last is not None and now - last < LIMIT_ASK_S):
            return None
        self._limit_asked.add(topic)
        self._limit_at[topic] = now
        task = self._limit_tasks[topic] = asyncio.get_running_loop().create_task(self._read_limit(topic))
        return task

    def _config_rank(self, node: int) -> tuple[bool, bool, int]:
        """A broker's place among those a DescribeConfigs request may go to (any broker serves a
        topic's configs): those the checks do not find out of reach (_cut_off) first, then those
        with no metadata request unanswered in the last minute (as _update_metadata), then by
        node id, so that the same broker is asked while nothing changes."""
        return node in self._cut_off(), self._md_failed.get(node, 0.0) > time.monotonic() - 60.0, node

    async def _read_limit(self, topic: str) -> None:
        """DescribeConfigs (api 32) for the topic, on an admin client's own connection: a broker
        that closes the connection on it, or holds it unanswered, must not touch the producers'.
        All the topic's configs are asked for, not max.message.bytes by name: Tansu 0.6 cannot
        parse a request naming configs and closes the connection on it (it answers the other
        form with no config at all). Asked of the first broker of _config_rank's order, not of
        one aiokafka's admin client draws at random (describe_configs), which drew a broker the
        checks had found down (NodeNotReadyError: the limit not read that time) as often as any.
        Every failure leaves the batch sizes to be learnt from refusals, as without the request
        (_fall_back)."""
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
        from aiokafka.errors import IncompatibleBrokerVersion, NodeNotReadyError
        from aiokafka.protocol.admin import DescribeConfigsRequest

        kw = self._admin_kwargs()
        try:
            # From the brokers the producers' metadata names, in _config_rank's order: a
            # --kafka-brokers address that is down, or takes connections and never answers, held
            # the admin client's bootstrap for the whole request timeout, and the request failed
            # with every broker answering.
            known = sorted(self.producer.client.cluster.brokers(), key=lambda b: self._config_rank(b.nodeId))
            if known:
                kw["bootstrap_servers"] = [f"[{b.host}]:{b.port}" if ":" in b.host else f"{b.host}:{b.port}"
                                           for b in known]
        except Exception:  # noqa: BLE001 - (no metadata yet: the configured addresses)
            pass
        admin = AIOKafkaAdminClient(**kw)
        try:
            async def ask() -> Any:
                await admin.start()
                # (as describe_configs, with the broker chosen here)
                _, resources = admin._convert_config_resources([ConfigResource(ConfigResourceType.TOPIC, topic)])
                nodes = sorted((b.nodeId for b in admin._client.cluster.brokers()), key=self._config_rank)
                return [await admin._send_request(DescribeConfigsRequest(resources), nodes[0] if nodes else None)]

            resps = await asyncio.wait_for(ask(), self.k.request_timeout_ms / 1000)
            value, why, error = topic_max_message_bytes(resps[0] if resps else None, topic)
        except IncompatibleBrokerVersion:
            value, why, error = None, "the brokers do not serve DescribeConfigs", False
        except NodeNotReadyError as exc:
            # the broker asked cannot be connected to (gone since a check last found it
            # reachable, or every broker out of reach): a broker down, which the leader check
            # names (_say_unreachable), not a DescribeConfigs failure; said as such
            # (_limit_unasked), asked again later. (Not a connection closed on the request,
            # KafkaConnectionError: a broker refusing it so)
            self._limit_unasked(topic, _exception_said(exc))
            return
        except asyncio.TimeoutError:
            value, why, error = None, f"no answer within {self.k.request_timeout_ms} ms", True
        except Exception as exc:  # noqa: BLE001 - a connection refused or closed, an ACL denial, a bad answer
            value, why, error = None, _exception_said(exc), True
        finally:
            try:
                await admin.close()
            except Exception:  # noqa: BLE001 - (never started, or its connection already gone)
                pass
        if value is None:
            self._fall_back(topic, why, error)
        else:
            self._set_limit(topic, value)

    def _kinds(self, topic: str) -> list[int]:
        """The record kinds (FLOWS, COUNTERS) produced to `topic`."""
        return [k for k, t in enumerate((self.k.topic, self.k.counters_topic))
                if t == topic and (k == FLOWS or self.cfg.counters)]

    def _set_limit(self, topic: str, value: int) -> None:
        """The topic's max.message.bytes is `value`: its record batches are made no larger. Kafka
        compares each record batch as sent (header included: its batch.sizeInBytes(), compressed
        if it is) with it, which is what batch_limit bounds (a prebuilt batch's size counts its
        61-byte header; one built record by record, _append, its records' framing too), so the
        limit is taken as it is, under --kafka-batch-bytes, and no lower than the 1 KiB a batch
        may be made (decoders.RecordBatchWriter: one smaller is refused and cut as before). A new
        value replaces what refusals taught (a topic re-created with another one); the same
        value again keeps it."""
        had = self.topic_limit.get(topic)
        self.topic_limit[topic] = value
        size = max(1024, min(self.k.batch_bytes, value))
        if had != value:
            for kind in self._kinds(topic):
                self.batch_limit[kind] = size
                self._told[kind] = True
        said = f"limit {value}"
        if self._limit_said.get(topic) != said:
            self._limit_said[topic] = said
            log.info("kafka: topic %s takes record batches of at most %d bytes (max.message.bytes): %s", topic,
                     value, f"batches of it are made of at most {size} bytes (--kafka-batch-bytes {self.k.batch_bytes}"
                     + (", the smallest batch made: a larger one refused is cut as before)" if value < 1024 else ")"))

    def _fall_back(self, topic: str, why: str, error: bool) -> None:
        """The topic's max.message.bytes could not be read: its batch sizes are learnt from
        refusals (_split, _shrink), as without the request. A failure (an ACL denial, an error
        answer, no answer, a garbage value) is counted as flowscope_kafka_errors_total{kind="admin"}
        and logged at warning; a broker that has no value to give (Tansu; one that does not serve
        DescribeConfigs) at info. Each outcome is logged once per topic."""
        if error:
            self.errors["admin"] += 1
        said = f"none: {why}"
        if self._limit_said.get(topic) == said:
            return
        self._limit_said[topic] = said
        read = self.topic_limit.get(topic)
        log.log(logging.WARNING if error else logging.INFO, "kafka: could not read topic %s's max.message.bytes "
                "(DescribeConfigs): %s; %s, and one refused as too large is cut and new ones made smaller", topic, why,
                f"batches go as the limit read before ({read}) made them" if read is not None
                else f"batches of up to --kafka-batch-bytes {self.k.batch_bytes} go")

    def _limit_unasked(self, topic: str, why: str) -> None:
        """The topic's max.message.bytes request went to a broker that cannot be reached (one down
        while the metadata still lists it): at info, once per topic while so, and not counted as an
        admin error: the warning at a broker's kill named it as if DescribeConfigs had failed
        (NodeNotReadyError ... node id N), beside the warning that says that broker is out of
        reach. The batch sizes stay as they are (a limit read before is kept); the topic is asked
        about again with its next metadata (_partitions, at most every LIMIT_ASK_S). Said apart
        from _limit_said's outcomes, which it would otherwise alternate with (and repeat) while
        the request goes now to the broker down, now to one that answers."""
        self._limit_asked.discard(topic)
        if self._limit_away.get(topic) == why:
            return
        self._limit_away[topic] = why
        log.info("kafka: topic %s's max.message.bytes not read this time (DescribeConfigs): the broker asked cannot "
                 "be reached (%s), a broker down or cut off (said on its own); asked again later, batch sizes "
                 "unchanged meanwhile", topic, why)

    async def _partitions(self, topic: str) -> list[int]:
        now = time.monotonic()
        parts = self.partitions.get(topic)
        if parts is not None and self.producer is not None:
            # Partitions added since: taken as soon as the client's metadata (refreshed every
            # METADATA_MAX_AGE_MS) has them. Re-read from it only when this copy aged, a count
            # the client had learnt just after the last read waited another 30 s: the keyed
            # modes began to use partitions added 58 s after they were.
            known = self.producer.client.cluster.partitions_for_topic(topic)
            if known and len(known) != len(parts):
                parts = None
        if parts is None or now - self._partitions_at.get(topic, 0.0) > METADATA_MAX_AGE_MS / 1000:
            if now < self._denied.get(topic, 0.0):
                # denied a moment ago: not asked again for each take (one metadata request per
                # second at most, as Java's producer backs off before asking again)
                from aiokafka.errors import TopicAuthorizationFailedError

                raise TopicAuthorizationFailedError(topic)
            try:
                got = await self.producer.partitions_for(topic)
            except Exception as exc:
                if _not_authorized(exc):
                    self._denied[topic] = now + 1.0
                raise
            self._denied.pop(topic, None)
            parts = sorted(got) if got else [0]
            self.partitions[topic] = parts
            self._partitions_at[topic] = now  # per topic: the counters topic refreshes too
            if topic == self.k.topic:
                self._note_leaders()   # (who leads what, as soon as known)
            # the topic exists now (Kafka answers DescribeConfigs for a topic it does not have
            # with UNKNOWN_TOPIC_OR_PARTITION): its batch size limit, once since its metadata
            # was (re)learnt
            self._ask_limit(topic)
        return parts

    async def _run(self) -> None:
        await self._connect()
        if self.producer is None:
            return
        if not self._stopping:   # (connected during the shutdown drain: nothing left to watch for)
            self._watch_task = asyncio.get_running_loop().create_task(self._watch())
        q = self.queue
        topics = (self.k.topic, self.k.counters_topic)
        idle_check = time.monotonic()
        # (until _close() is past the shutdown deadline: what is left is drain()'s to count, and a
        # sender still taking, sending and setting batches aside meanwhile is not wanted there)
        while not self._closing:
            await q.wait(0.5)
            if self._closing:
                return
            if q.chunks and self._connections_lost():
                self._need_metadata = True
            elif not q.chunks and not q.inflight_records and time.monotonic() - idle_check >= IDLE_CHECK_S:
                # Idle: nothing produces, so nothing would notice a broker that went away (gone,
                # frozen, partitioned off, or never reached by a collector that has not produced
                # yet): a metadata request every IDLE_CHECK_S finds out, so that
                # flowscope_sink_connected and /readyz tell the truth before the next flows
                # arrive. A lost connection (a broker restarted, perhaps empty) or one not
                # answering goes through _refresh_metadata, as after a failed produce.
                idle_check = time.monotonic()
                lost = not self.connected or self._connections_lost() or self._direct_lost()
                if self._need_metadata or lost:
                    # (metadata wanted after a partition's error answer, its batches held aside
                    # and nothing else queued, is no lost connection: the refresh says whether
                    # the brokers answer; marking it lost first made /readyz flap every check.
                    # Nor is one broker's lost connection while another's stays open: one broker
                    # of several killed made /readyz say "kafka sink not connected", and
                    # flowscope_sink_connected 0, for the refresh's length, the others answering
                    # it; as a batch failed on it leaves the sink connected, _failed)
                    if lost and self.connected and not self._answering(idle=True):
                        self.connected = False
                        self.problem = (f"idle, and every connection to the brokers lost: asking "
                                        f"{','.join(self.k.brokers)} for metadata")
                    self._need_metadata = True
                    await self._refresh_metadata()
                elif not await self._probe():
                    self.connected = False
                    self._need_metadata = True
                continue
            if self._held:
                # (before the metadata check: a partition whose leader moved is tried again on
                # fresh metadata, also when its batches are all that waits)
                self._probe_held()
            if self._need_metadata and q.chunks:
                await asyncio.sleep(self._retry_wait)
                if not await self._refresh_metadata():
                    await asyncio.sleep(0.5)
                    continue
            chunks = q.take(self.k.batch_bytes * 4)
            if chunks:
                self._taken = chunks
                await self._send(chunks, topics)
                self._taken, self._opens = [], []
                # the connections this send made are the ones to watch (a first send opens them)
                if self._connections_lost():
                    self._need_metadata = True

    async def _probe(self) -> bool:
        """Whether a broker answers a metadata request within IDLE_CHECK_S (or the request
        timeout, if shorter); counted and logged (rate-limited) when none does."""
        try:
            ok = await self._update_metadata(self.producers[0], min(IDLE_CHECK_S, self.k.request_timeout_ms / 1000))
        except Exception as exc:  # noqa: BLE001 - a timeout or any failure is "no answer"
            ok, why = False, repr(exc)
        else:
            why = "no broker answered"
        if ok:
            return True
        self.errors["metadata"] += 1
        self._rl.error("metadata", "kafka: %s (not connected)",
                       await self._explain(f"idle, and no metadata from {','.join(self.k.brokers)}: {why}"))
        return False

    def _direct_lost(self) -> bool:
        """Whether a direct produce connection closed (a broker gone or restarted, or its idle
        timeout): replaced after the metadata refresh, before the next batch needs it."""
        d = self.direct
        return d is not None and any(c is not None and c.closed for slots in d.conns.values() for c in slots)

    def _connections_lost(self) -> bool:
        """Whether a producer connection closed or was replaced since the last look. aiokafka
        reconnects by itself without failing a send: a broker that came back empty (Tansu with
        memory storage) would then acknowledge records for a topic it no longer has, which no
        consumer ever sees. A lost connection sends the sink through _refresh_metadata (which
        re-creates the topic) before producing again, as the direct path does."""
        lost = False
        before, now = self._conn_prev, {}
        for i, producer in enumerate(self.producers):
            conns = getattr(producer.client, "_conns", None)
            if not isinstance(conns, dict):
                continue
            for cid, conn in list(conns.items()):
                key = (i, cid)
                now[key] = conn
                prev = before.get(key)
                if prev is not None and prev is not conn:
                    # replaced (by identity: the one before is held until the next look, so its
                    # id cannot be reused meanwhile)
                    lost = lost or not _idle_closed(prev)
                elif not conn.connected() and conn not in self._conns_closed:
                    # closed (the broker went): reported once, not at every look while it stays
                    # in the client's table. Not aiokafka's close of a connection idle for
                    # --kafka-connections-max-idle-ms (nothing was waiting on it; it opens again at the
                    # next request): with nothing produced yet those were every connection, and
                    # the idle check set the sink not connected for a broker that answers
                    lost = lost or not _idle_closed(conn)
                    self._conns_closed.add(conn)
        lost = lost or any(not _idle_closed(c) for k, c in before.items() if k not in now)
        self._conn_prev = now
        return lost

    async def _update_metadata(self, producer: Any, timeout: float) -> bool:
        """Fresh metadata for one producer's client within `timeout` seconds, asked of the
        broker least likely to keep the sender waiting. aiokafka asks a broker drawn at random
        and waits for it up to the request timeout: with one broker of several wedged (it takes
        connections and requests and answers none), a refresh that drew it held the sender, so
        every partition, for the whole timeout, and then failed (flowscope_sink_connected 0,
        a metadata error) while the other brokers answered. As Java's producer asks its least
        loaded node: brokers with no failure in the last minute first (a direct connection
        closed by an error or a timeout, a metadata request unanswered here), then those the
        client has a connection to, then the one whose oldest produce request has waited least.
        A broker asked on an open connection that has not answered within METADATA_HEDGE_S (at
        most a share of the timeout that has every broker asked within its first half) keeps
        its request and the next is asked as well, the first answer taken: each broker was
        given half of the time left before the next was asked, so a wedged broker asked first
        left a quarter of the timeout to a working one asked second, and a refresh failed while
        it answered (a busy one, or any on a loaded machine). One still connecting is given
        half of the time left and then given up: its connection attempt holds the client's
        connection lock, which the next one may need."""
        from aiokafka.client import ConnectionGroup
        from aiokafka.protocol.metadata import MetadataRequest

        client = producer.client
        nodes = [b.nodeId for b in client.cluster.brokers()]
        if len(nodes) < 2:   # (bootstrapping, or one broker: nothing to choose)
            return bool(await asyncio.wait_for(client.force_metadata_update(), timeout))
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        now = time.monotonic()
        d = self.direct
        horizon = now - 60.0 - self.k.request_timeout_ms / 1000

        def connected(n: int) -> bool:
            conn = client._conns.get((n, ConnectionGroup.DEFAULT))
            return conn is not None and bool(conn.connected())

        def rank(n: int) -> tuple[bool, bool, float, int, float]:
            failed = max(self._md_failed.get(n, 0.0), d.failed_at.get(n, 0.0) if d is not None else 0.0)
            conn = client._conns.get((n, ConnectionGroup.DEFAULT))
            waiting = len(getattr(conn, "_requests", ())) if conn is not None else 0
            return (failed > horizon, not connected(n), d.load(n, now) if d is not None else 0.0, waiting,
                    random.random())

        nodes.sort(key=rank)
        topics = list(client._topics)
        hedge = min(METADATA_HEDGE_S, timeout / (2 * len(nodes)))
        waiting: dict[asyncio.Future[Any], tuple[int, float]] = {}   # request -> (broker, when asked)
        next_at = loop.time()
        try:
            while (nodes or waiting) and (left := end - loop.time()) > 0:
                if nodes and (not waiting or loop.time() >= next_at):
                    for f, (n, _at) in list(waiting.items()):
                        if not connected(n):   # (still connecting: see the docstring)
                            f.cancel()
                            del waiting[f]
                            self._md_failed[n] = time.monotonic()
                    n = nodes.pop(0)
                    alone = min(hedge, left / 2) if connected(n) else left / 2
                    waiting[asyncio.ensure_future(client.send(n, MetadataRequest(topics or None)))] = (n, loop.time())
                    next_at = loop.time() + alone
                done, _ = await asyncio.wait(waiting, timeout=min(left, next_at - loop.time()) if nodes else left,
                                             return_when=asyncio.FIRST_COMPLETED)
                for f in sorted(done, key=lambda f: not _failed(f)):   # (failures first)
                    n, _at = waiting.pop(f)
                    if _failed(f):   # a connection refused or lost: the next one now
                        self._md_failed[n] = time.monotonic()
                        next_at = loop.time()
                        continue
                    self._md_failed.pop(n, None)
                    md = f.result()
                    if not md.brokers:   # (as aiokafka: a topic being created may answer no brokers yet)
                        return False
                    client.cluster.update_metadata(md)
                    return True
            return False
        finally:
            for f, (n, at) in waiting.items():
                if f.done():
                    if not f.cancelled():
                        f.exception()   # (retrieved: an answer that came with the one taken)
                    continue
                f.cancel()
                if loop.time() - at >= hedge:   # (not one asked a moment before another answered)
                    self._md_failed[n] = time.monotonic()

    async def _refresh_metadata(self) -> bool:
        """After a failure, ask for fresh metadata before producing again. A broker that came back
        empty (Tansu with memory storage, or a recreated topic) creates the topic on a metadata
        request; producing with stale metadata would write records consumers can never see.
        "producing again" is said (rate-limited) where production resumes after a failure that
        stopped it: after a refresh that failed, or a failure said that left the sink not
        connected (no broker answering), or with a partition given a reachable leader by it
        (unreachable_partitions). Not after a partition's error answer that stopped nothing
        (NOT_ENOUGH_REPLICAS: said every 10 s while it lasted), nor after a connection lost while
        the sink stayed connected (a broker of several killed, the others answering: it was said
        at the first refresh after), nor at each refresh while the same partitions stay without
        a reachable leader. A refresh follows a lost connection too (a broker killed, with
        --kafka-key none taking no produce error): the advertised brokers are checked soon then
        (_watch)."""
        self._note_leaders()   # (who led what before it is replaced, to name a leader gone from it)
        self._lost_connection()
        stuck = frozenset(self.unreachable_partitions())
        stopped = self._refresh_failed or (not self.connected and bool(self.problem))
        self._refresh_failed = True
        try:
            # each connection has its own metadata, asked for all at once: one after the other,
            # the sink stayed not connected for --kafka-connections times a broker's answer time
            # (a broker back from a restart, busy: 4 s of /readyz unready at 1 s an answer)
            found = await asyncio.gather(*(self._update_metadata(producer, self.k.request_timeout_ms / 1000)
                                           for producer in self.producers), return_exceptions=True)
            for ok in found:   # (the first connection's outcome said, as when asked in turn)
                if isinstance(ok, BaseException):
                    raise ok
                if not ok:
                    self.connected = False
                    self.errors["metadata"] += 1
                    self._rl.error("metadata", "kafka: %s", await self._explain(
                        "metadata refresh failed: ", f"no broker of {','.join(self.k.brokers)} answered"))
                    return False
        except (asyncio.TimeoutError, Exception) as exc:
            self.connected = False
            self.errors["metadata"] += 1
            # (one broker: aiokafka's refresh waited for it until the timeout; explained as the
            # branch above is, or a broker silent was "metadata refresh failed: TimeoutError()")
            self._rl.error("metadata", "kafka: %s", await self._explain(f"metadata refresh failed: {exc!r}"))
            return False
        if self.k.create_topic:
            await self._create_topics()
        self.partitions.clear()
        # (a broker that came back empty, a topic re-created: its max.message.bytes asked for again
        # with its partitions, in the background: _partitions)
        self._limit_asked.clear()
        # The flows topic only: a counters topic without metadata (never created, on brokers that
        # do not create topics when asked for) held the flows back for good when it was waited
        # for here. Its records are routed, or set aside, by _counters_routable; the metadata
        # requests above name it too (aiokafka asks for every topic it was asked about), so a
        # broker that creates topics when asked for re-creates it all the same.
        topics = [self.k.topic]
        try:
            for producer in self.producers:
                for t in topics:
                    try:
                        await asyncio.wait_for(producer.client._wait_on_metadata(t), self.k.request_timeout_ms / 1000)
                    except Exception as exc:
                        if not _not_authorized(exc):
                            raise
                        # the brokers answered: the ACLs deny the topic, and waiting for its
                        # metadata would wait for ever with the flows queued (then dropped as
                        # queue_full); _send drops them as rejected, asking again meanwhile
                        self._rl.error("denied", "kafka: %s", _acl_problem(t))
        except (asyncio.TimeoutError, Exception) as exc:
            self.connected = False
            self.errors["metadata"] += 1
            self._rl.error("metadata", "kafka: %s", await self._explain(f"no metadata for {','.join(topics)} yet: {exc!r}"))
            return False
        self._need_metadata = False
        if self.direct is not None:
            self.direct.forget_closed()
        if self._adv_bad:
            # the brokers answered: what the last check found out of reach is checked again now,
            # not up to IDLE_CHECK_S later with /readyz unready on a cluster that is back
            await self._advertised_problem(failing=True)
        self.connected = True
        self.problem = ""
        # the flows topic is there again (re-created, if the broker came back empty): its
        # max.message.bytes asked for now, not when the next batch may already be under way
        self._ask_limit(self.k.topic)
        self._refresh_failed = False
        left = frozenset(self.unreachable_partitions())
        if stopped or stuck - left:
            # (one line per 10 s: a broker that comes and goes)
            self._rl.log(logging.INFO, "reconnected", "kafka: metadata refreshed from %s, producing again%s",
                         ",".join(self.k.brokers),
                         f" (not to partition{'s' if len(left) > 1 else ''} {', '.join(map(str, sorted(left)))}: "
                         "no leader, or one out of reach)" if left else "")
        else:
            log.debug("kafka: metadata refreshed, production had not stopped%s",
                      f"; partitions {', '.join(map(str, sorted(left)))} still without a reachable leader" if left else "")
        return True

    async def _send(self, chunks: list[Chunk], topics: tuple[str, str]) -> None:
        """Append the chunks' records to one builder per (kind, partition) and submit them."""
        q = self.queue
        if any(c.kind == COUNTERS for c in chunks):
            chunks = self._taken = await self._counters_routable(chunks, topics[COUNTERS])
            if not chunks:
                return
        try:
            parts_by_kind = [await self._partitions(topics[k]) if any(c.kind == k for c in chunks) else [0]
                             for k in (FLOWS, COUNTERS)]
        except Exception as exc:
            self._taken = []   # (queued again or dropped below)
            if _not_authorized(exc):
                # (the counters topic's partitions were just known: _counters_routable)
                for c in reversed([c for c in chunks if c.kind == COUNTERS]):
                    q.requeue(c)
                self._refuse([c for c in chunks if c.kind == FLOWS], topics[FLOWS])
                return
            self.errors["metadata"] += 1
            self.connected = False
            self._need_metadata = True
            # (the topics of the records taken: the counters topic only with sFlow counter records)
            asked = [topics[k] for k in (FLOWS, COUNTERS) if any(c.kind == k for c in chunks)]
            self._rl.error("metadata", "kafka: %s", await self._explain(f"no metadata for {','.join(asked)}: {exc}"))
            for c in reversed(chunks):
                q.requeue(c)
            await asyncio.sleep(0.5)
            return
        keymode = self.k.key
        if self._held:
            # a partition that fails keeps its order: what was queued after its failed batches
            # waits behind them, aside, and the other partitions' batches go on (_hold)
            keep = []
            for c in chunks:
                p = self._fixed_partition(c, parts_by_kind)
                h = self._held.get((c.kind, p)) if p >= 0 else None
                if h is None or c is h.probe:
                    keep.append(c)
                    continue
                if not c.seq:
                    self._seq += 1
                    c.seq = self._seq
                self._hold((c.kind, p), [c])
            chunks = self._taken = keep
        if any(isinstance(c.records, Prebuilt) and c.nbytes > self.batch_limit[c.kind] and len(c.records) > 1
               for c in chunks):
            chunks = self._taken = await self._cut_to_limit(chunks, parts_by_kind)
        builders: dict[tuple[int, int], _Open] = {}
        full: list[_Open] = []
        if self._packer is not None:
            # the take's batches not given to the compression thread when queued (its queue of
            # 64 was full then) go now, all at once: it compresses the next while one is sent
            for c in chunks:
                if isinstance(c.records, Prebuilt) and c.records.data is None:
                    self._pack_submit(c.records.writer)
        for c in chunks:
            if isinstance(c.records, Prebuilt):
                slot = c.records.slot
                if slot >= 0:
                    # keyed by the encoder for the partition count of the time: partitions are
                    # only ever added, so that partition is still there (as a Java producer's
                    # batches keep the partition they were made for)
                    parts = parts_by_kind[c.kind]
                    slot = parts[slot % len(parts)]
                o = self._new_open(c.kind, slot, direct=self.direct is not None)
                if c.seq:
                    o.seq = c.seq   # sent again: its place in the partition's order is the first send's
                o.sent = c.sent
                o.resend = len(c.records) if c.sent else 0
                if self.direct is None:
                    if self._encode is not None and c.records.data is None:
                        await self._pack(c.records.writer)
                    o.builder = self._prebuilt(c.records)
                o.records = c.records  # type: ignore[assignment]
                o.nbytes = c.nbytes
                full.append(o)
                continue
            parts = parts_by_kind[c.kind]
            n = len(parts)
            if keymode == "exporter" or (keymode == "conversation" and c.kind == COUNTERS):
                # (an sFlow counter record has no conversation: keyed by its exporter)
                key = c.exporter.encode()
                p = parts[_murmur2(key) % n]
                self._append(builders, full, c.kind, p, c.records, key, c.exporter, c.sent, c.ts)
                if c.seq:   # sent again: the batch keeps the partition's order of the first send
                    builders[(c.kind, p)].seq = min(builders[(c.kind, p)].seq, c.seq)
            elif keymode == "conversation":
                for rec in c.records:
                    kk = conversation_key(rec)
                    self._append(builders, full, c.kind, parts[_murmur2(kk) % n], (rec,), kk, None, c.sent, c.ts)
            else:
                self._append(builders, full, c.kind, -1, c.records, None, None, c.sent, c.ts)
        full.extend(builders.values())
        self._taken, self._opens = [], full
        # in flight was accounted per chunk; re-account per batch (differs only by too_large drops)
        for c in chunks:
            q.done(c.kind, c.nbytes, len(c.records))
        for o in full:
            q.inflight_bytes += o.nbytes
            q.inflight[o.kind] += len(o.records)
        for o in full:
            await self._submit(o, topics[o.kind])

    async def _counters_routable(self, chunks: list[Chunk], topic: str) -> list[Chunk]:
        """The chunks that can go now: sFlow counter records only while their topic has metadata.
        A counters topic without any (not created, on brokers that do not create topics when asked
        for) re-queued the whole take, flows included, and sent the sink through a metadata refresh
        that waited for it: no flow was delivered again. Its records are set aside instead (held
        under (COUNTERS, -1), counted as queued: `shutdown` drops if still there at the end); after
        a wait that doubles up to 30 s the first of them asks again, from the client's metadata
        (which names the topic from the first ask on: no further wait here), and once the topic is
        there they all go. The flows topic is not treated so: without it nothing can be produced."""
        key = (COUNTERS, -1)
        h = self._held.get(key)
        counters = [c for c in chunks if c.kind == COUNTERS]
        if h is None:
            try:
                await self._partitions(topic)
                return chunks
            except Exception as exc:
                if _not_authorized(exc):
                    self._refuse(counters, topic)
                    return [c for c in chunks if c.kind != COUNTERS]
                why = repr(exc)
        else:
            if not any(c is h.probe for c in counters):
                why = ""   # waiting for the topic: not asked again until the probe
            else:
                got = self.producer.client.cluster.partitions_for_topic(topic)
                if got:
                    self.partitions[topic] = sorted(got)
                    self._partitions_at[topic] = time.monotonic()
                    h.probe = None
                    self._release(key)   # (back at the front of the queue: the next take's)
                    log.info("kafka: topic %s has metadata again: sFlow counter records produced again", topic)
                    return chunks
                self.producer.client.force_metadata_update()
                why = "not in the brokers' metadata"
        for c in counters:
            if not c.seq:
                self._seq += 1
                c.seq = self._seq
        self._hold(key, counters)
        h = self._held[key]
        if why:
            h.probe = None
            h.wait = min(max(1.0, h.wait * 2), 30.0)
            h.until = time.monotonic() + h.wait
            self.errors["metadata"] += 1
            self._rl.error("counters-topic", "kafka: no metadata for the counters topic %s: %s; %d sFlow counter "
                           "records set aside (counted as queued; flows go on), asking again in %.0f s", topic,
                           why, sum(len(c.records) for c in h.chunks), h.wait)
        return [c for c in chunks if c.kind != COUNTERS]

    def _refuse(self, chunks: list[Chunk], topic: str) -> None:
        """Chunks for a topic the cluster's ACLs deny (TOPIC_AUTHORIZATION_FAILED in its
        metadata): dropped and counted as `rejected`, as Java's producer fails such records and a
        Produce answer of 29 drops its batch, not left in the queue until it is full (counted as
        queue_full, which says overload). The topic is asked for again at most once a second:
        once the ACLs allow it, records go again."""
        q = self.queue
        n = 0
        for c in chunks:
            q.done(c.kind, c.nbytes, len(c.records))
            q.dropped[(c.kind, "rejected")] += len(c.records)
            n += len(c.records)
        if not n:
            return
        self.errors["rejected"] += 1
        self._rl.error("denied-drop", "kafka: %d records dropped (counted as rejected): %s", n, _acl_problem(topic))

    def _prebuilt(self, p: Prebuilt) -> PrebuiltBuilder:
        """Finish a Prebuilt batch: compress its records section with the configured codec (as
        aiokafka would, keeping it uncompressed when that does not help) and checksum it."""
        if p.data is None:
            w = p.writer
            if self._encode is not None:
                self._compress(w)
            p.data = w.build()
            w.release()
        return PrebuiltBuilder(p.data, len(p))

    def _start_packer(self) -> None:
        use, why = compression_thread_plan(self.k)
        if not use:
            if self.k.compression != "none":
                log.info("kafka: %s batches compressed on the event loop (%s)", self.k.compression, why)
            return
        from decoders._core import Packer

        try:
            self._packer = Packer(3 if self.k.compression == "lz4" else 4,
                                  _resolved_level(self.k.compression, self.k.compression_level),
                                  _lz4_frame_header() if self.k.compression == "lz4" else None)
        except OSError as exc:
            if self.k.compression_thread == "on":
                raise
            log.warning("kafka: no compression thread (%s): batches compressed on the event loop", exc)
            return
        asyncio.get_running_loop().add_reader(self._packer.fileno(), self._packed)
        log.info("kafka: %s batches compressed on a thread of their own (%s)", self.k.compression, why)

    def packer_seconds(self) -> float | None:
        """Seconds the compression thread has spent compressing; None without one."""
        return None if self._packer is None else self._packer.busy_seconds

    def _stop_packer(self) -> None:
        p = self._packer
        if p is None:
            return
        try:
            if p.fileno() >= 0:
                asyncio.get_running_loop().remove_reader(p.fileno())
        except (RuntimeError, ValueError):
            pass
        # Only the batch under way is finished: _close() runs once the queue is empty or at the
        # shutdown deadline, when the batches still queued are dropped, and compressing up to
        # 64 of them first (pthread_join, the loop blocked) could take far longer than
        # --shutdown-timeout (zstd 19: 0.4 s per MiB). One still sent is compressed by _pack().
        p.close(finish=False)
        self._packed()

    def _packed(self) -> None:
        """The Packer's eventfd is readable: its finished batches' waiters go on."""
        p = self._packer
        for w in p.collect():
            fut, raw = self._packing.pop(w)
            if w.packed:  # (not when the thread stopped before it: _pack() compresses it then)
                self.compressed_bytes[0] += raw
                self.compressed_bytes[1] += w.size  # raw again when compressing did not help
            if not fut.done():
                fut.set_result(None)
        if p.failed > self.packer_failed:
            self.errors["compress"] += p.failed - self.packer_failed
            self._rl.error("compress", "kafka: %d batch(es) could not be compressed on the compression thread "
                           "(no memory?): sent uncompressed", p.failed - self.packer_failed)
            self.packer_failed = p.failed

    def queued_batch(self, w: Any) -> None:
        """A prebuilt batch went into the queue: with a compression thread it starts compressing
        now, while it waits, so that the sender seldom waits for it (as _pack_submit)."""
        if self._packer is not None:
            self._pack_submit(w)

    def _pack_submit(self, w: Any) -> None:
        """Give a prebuilt batch to the compression thread (when there is one, and it is not
        compressed or there already): _pack() then waits for it, and meanwhile the event loop
        goes on receiving and decoding."""
        if self._packer is None or w.packed or w.busy:
            return
        raw = w.size
        if self._packer.submit(w):
            self._packing[w] = (asyncio.get_running_loop().create_future(), raw)

    async def _pack(self, w: Any) -> None:
        """Compress a prebuilt batch once: on the thread when there is one (waiting for it), else
        here (_compress)."""
        if w.packed:
            return
        self._pack_submit(w)
        entry = self._packing.get(w)
        if entry is None:
            self._compress(w)   # no thread, or its queue full
            return
        self._packed()  # done, but its eventfd not read yet: no wait for the loop to get to it
        if not entry[0].done():
            await asyncio.shield(entry[0])
        if not w.packed:
            self._compress(w)   # handed back undone (the thread stopped at shutdown)

    def _compress(self, w: Any) -> None:
        """Compress a prebuilt batch in place, once: a re-queued batch is sent (and counted) as
        it already is."""
        if w.packed:
            return
        raw = w.size
        w.compress(self._codec_id, self._encode)
        self.compressed_bytes[0] += raw
        self.compressed_bytes[1] += w.size  # raw again when compressing did not help

    def _new_open(self, kind: int, partition: int, direct: bool = False) -> _Open:
        if partition < 0:
            # key none: rotate partitions per batch, so batches stay large and load spreads
            parts = self._led_partitions((self.k.topic, self.k.counters_topic)[kind])
            self._rr = (self._rr + 1) % len(parts)
            partition = parts[self._rr]
        self._seq += 1
        if direct:
            return _Open(kind, partition, None, self._seq)   # (a prebuilt batch's writer)
        if self.direct is not None:
            return _Open(kind, partition, _DirectRecords(self.k.batch_bytes), self._seq)
        return _Open(kind, partition, self.producer.create_batch(), self._seq)

    def _fixed_partition(self, c: Chunk, parts_by_kind: list[list[int]]) -> int:
        """The partition a queued chunk goes to whatever happens (keyed modes), else -1: a
        keyed batch's, or an exporter-keyed run of records'. (Records keyed by conversation,
        queued one by one before the partition count was known, go to several.)"""
        if isinstance(c.records, Prebuilt):
            if c.records.slot < 0:
                return -1
            parts = parts_by_kind[c.kind]
            return parts[c.records.slot % len(parts)]
        if self.k.key == "exporter" or (self.k.key == "conversation" and c.kind == COUNTERS):
            parts = parts_by_kind[c.kind]
            return parts[_murmur2(c.exporter.encode()) % len(parts)]
        return -1

    def _hold(self, key: tuple[int, int], chunks: list[Chunk], first: bool = False) -> None:
        """Keep chunks of a failing partition aside, in send order (a batch re-queued at the
        front of the queue came first in every take: once a partition's failed batches filled
        one, only they were sent, failing again, and the healthy partitions waited until the
        queue was full). They stay counted as queued. first: they are the partition's probe
        (or what it was cut into), the first of all in line: pieces of one batch share its
        send order, and a probe's pieces put after its siblings set aside went out of order."""
        q = self.queue
        h = self._held.get(key)
        if h is None:
            h = self._held[key] = _Held()
        for c in chunks:
            q.done(c.kind, c.nbytes, len(c.records))
            q.queued_bytes += c.nbytes
            q.queued[c.kind] += len(c.records)
        if first:
            h.chunks[0:0] = chunks
            return
        for c in chunks:
            bisect.insort(h.chunks, c, key=lambda x: x.seq)

    def _probe_held(self) -> None:
        """A held partition whose wait is over sends its first chunk again, alone (as a Java
        producer retries a partition's batch after retry.backoff.ms): the others follow once
        one is delivered (_release). A busy one's chunks all go back once its leader's
        connection has room."""
        now = time.monotonic()
        for key, h in list(self._held.items()):
            parts = self.partitions.get((self.k.topic, self.k.counters_topic)[key[0]])
            if key[1] >= 0 and parts and key[1] not in parts:
                # The topic no longer has the partition (deleted and created again with fewer):
                # its batches go back now, to the partition their key gives for the count of now
                # (_send). Probed, the probe went there and was delivered, which released
                # nothing here, and each other batch waited for the probe to be given up for
                # lost (--kafka-request-timeout-ms + 10 s).
                self._release(key)
                continue
            if h.busy:
                if self._ready((self.k.topic, self.k.counters_topic)[key[0]], key[1]):
                    self._release(key)
                continue
            if h.probe is None and now >= h.until:
                if not h.chunks:
                    del self._held[key]
                    continue
                if not self._ready((self.k.topic, self.k.counters_topic)[key[0]], key[1]):
                    continue   # (no room for the probe yet: _on_room wakes the sender when there is)
                h.probe = h.chunks.pop(0)
                self.queue.push_front(h.probe)
            elif (h.probe is not None and now >= h.until + self.k.request_timeout_ms / 1000 + 10.0
                  and not any(c is h.probe for c in self.queue.chunks)):
                # neither answered nor waiting to be sent: evicted from the queue (--drop-policy
                # oldest), it will not come back
                h.probe = None

    def _release(self, key: tuple[int, int]) -> None:
        """A batch of a held partition was delivered: its held chunks go back to the front of
        the queue, in order."""
        h = self._held.pop(key, None)
        if h is None:
            return
        for c in reversed(h.chunks):
            self.queue.push_front(c)

    def _unhold_all(self) -> None:
        for key in list(self._held):
            self._release(key)

    def _led_partitions(self, topic: str) -> list[int]:
        """The topic's partitions a key none batch may go to: those with a leader in the client's
        latest metadata, a broker the metadata gives an address for (as Java's producer picks
        among available partitions for unkeyed records: its Cluster gives a leader id missing
        from the brokers list no Node, and such a partition none), all of them when none has
        one or nothing is known. Why: with a broker down and a partition without a replica
        elsewhere, rotating over every partition sent one batch in N to a partition that can
        take none (a failed send, a pause and a metadata refresh, and /readyz flapping each
        time) while the others could take them all. aiokafka counts a leader id as available
        even when the brokers list leaves that broker out: the direct path then failed every
        batch of its partitions at once ("no address for broker"), each failure a pause and a
        metadata refresh, and delivered a tenth of the flows. Keyed flows keep every partition
        (the key decides; Kafka's clients do the same)."""
        from aiokafka.structs import TopicPartition

        parts = self.partitions.get(topic) or [0]
        try:
            cluster = self.producer.client.cluster
            led = {p for p in cluster.available_partitions_for_topic(topic)
                   if cluster.broker_metadata(cluster.leader_for_partition(TopicPartition(topic, p))) is not None}
        except Exception:   # (no producer yet, or a topic the metadata has not seen)
            return parts
        if not led or len(led) >= len(parts):
            return parts
        live = [p for p in parts if p in led]
        return live or parts

    def _append(self, builders: dict[tuple[int, int], _Open], full: list[_Open], kind: int, slot_p: int,
                records: Any, key: bytes | None, exporter: str | None = None, sent: bool = False,
                ts: int = 0) -> None:
        slot = (kind, slot_p)
        o = builders.get(slot)
        if o is None:
            o = builders[slot] = self._new_open(kind, slot_p)
        # CreateTime: the datagram's arrival, as the Prebuilt batches' (aiokafka's default is now:
        # records queued through an outage were stamped when they were sent, minutes late)
        stamp = ts or None
        limit = self.batch_limit[kind]
        # Under kafka.batch_bytes (a topic's max.message.bytes, or what a broker was seen to refuse:
        # _shrink) the batch as it will be sent is measured, header and record framing included
        # (aiokafka's builder size, exact, plus at most RECORD_OVERHEAD_MAX for the next record);
        # at kafka.batch_bytes aiokafka's builder is full first.
        framed = limit < self.k.batch_bytes
        extra = RECORD_OVERHEAD_MAX + (len(key) if key else 0)
        for rec in records:
            if o.records and (o.builder.size() + len(rec) + extra if framed else o.nbytes + len(rec) + 1) > limit:
                # (the batch goes as it is)
                full.append(o)
                o = builders[slot] = self._new_open(kind, slot_p)
            if o.builder.append(key=key, value=rec, timestamp=stamp) is None:
                if o.records:
                    full.append(o)
                    o = builders[slot] = self._new_open(kind, slot_p)
                    if o.builder.append(key=key, value=rec, timestamp=stamp) is not None:
                        o.add(rec, exporter, ts)
                        o.sent = o.sent or sent
                        o.resend += sent
                        continue
                # one record larger than a whole batch can never be sent
                self.queue.dropped[(kind, "too_large")] += 1
                continue
            o.add(rec, exporter, ts)
            o.sent = o.sent or sent
            o.resend += sent

    def _ready(self, topic: str, partition: int) -> bool:
        """Keyed modes: whether a batch for the partition would be handed over at once (direct:
        DirectProducer.ready(); aiokafka: its producer has no batch for it still waiting)."""
        if self.direct is not None:
            return bool(self.direct.ready(topic, partition, sticky=True))
        ps = self.producers
        return not ps or self._aio_free(ps[partition % len(ps)], topic, partition)

    def _aio_free(self, producer: Any, topic: str, partition: int) -> bool:
        """Whether aiokafka's send_batch() would take a batch for the partition at once: its
        accumulator holds one batch per partition not yet taken into a Produce request, and
        aiokafka keeps one request in flight per broker and producer, so a second batch for a
        partition whose leader has not answered waits in send_batch() (for up to the request
        timeout: a broker that stopped answering), and the sink's single sender with it, every
        partition stopped. When not free, _on_room is called once the waiting batch is taken."""
        from aiokafka.structs import TopicPartition

        pending = producer._message_accumulator._batches.get(TopicPartition(topic, partition))
        if not pending:
            return True
        waiter = pending[-1]._drain_waiter
        if waiter not in self._drain_hooked:
            self._drain_hooked.add(waiter)
            waiter.add_done_callback(lambda _f: self._on_room())
        return False

    async def _steer_aio(self, o: _Open, topic: str) -> Any:
        """Key none through aiokafka: the producer (of kafka.connections) and partition the batch
        goes to, one that takes it at once (its partition first, then the others with a leader),
        or, when none does, the first that does after a wait (as _steer for direct produce).
        A partition with batches unanswered stays on the producer that sent them, unless another
        producer carries no other partition's batches: two producers are two connections, and with two
        Produce requests for one partition in flight on two connections the later batch can be
        written first (Kafka keeps order per connection only). Tansu (the bundled broker) can lose
        one of two batches written at once to a partition it holds nothing of yet, acknowledging
        both (CI: 5962 of 6000 flows read, 6000 acknowledged; tests/conftest.warm_partitions). A producer that carries
        nothing else still takes a busy partition's batch (fewer partitions than connections: one
        partition kept on one producer delivered 124-160k IPFIX flows/s offered 300k in the
        harness, where spread it delivered 234-293k), once the partition has had a batch
        acknowledged (_aio_proven: its first writes are never on two connections at once);
        direct produce spreads one partition over its connections for the same reason, after
        the same proof (DirectProducer._proven)."""
        from aiokafka.structs import TopicPartition

        ps = self.producers
        while True:
            parts = [o.partition] + [p for p in self._led_partitions(topic) if p != o.partition]
            turn = [(self._conn_rr + k) % len(ps) for k in range(1, len(ps) + 1)]
            # first a partition on its own producer (or one with nothing unanswered on any),
            # then a busy partition on a producer that carries no other partition
            for helping in (False, True):
                for p in parts:
                    owner = self._aio_owner.get((topic, p))
                    if not helping:
                        order = [owner[0]] if owner else turn
                    elif owner and (topic, p) in self._aio_proven:
                        order = [i for i in turn if i != owner[0] and
                                 all(k == (topic, p) for k in self._aio_parts.get(i, ()))]
                    else:
                        continue
                    for i in order:
                        if self._aio_free(ps[i], topic, p):
                            if owner is None or helping:
                                self._conn_rr = i
                            o.partition = p
                            return ps[i]
            waiters = [b[-1]._drain_waiter for pr in ps for tp, b in pr._message_accumulator._batches.items()
                       if b and isinstance(tp, TopicPartition) and tp.topic == topic]
            if not waiters:
                owner = self._aio_owner.get((topic, o.partition))
                return ps[owner[0] if owner else self._conn_rr]
            await asyncio.wait(waiters, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)

    def _aio_sent(self, topic: str, partition: int, producer: Any) -> Callable[..., None]:
        """Count a key none batch handed to an aiokafka producer for its partition (_steer_aio);
        the function returned uncounts it once answered (or failed), given the batch's future
        when there is one: an acknowledged batch proves the partition (a second producer may
        then help with it), a failed one unproves it."""
        key = (topic, partition)
        i = self.producers.index(producer)
        owner = self._aio_owner.get(key)
        if owner is None:
            owner = self._aio_owner[key] = [i, 0]
        owner[1] += 1
        carried = self._aio_parts.setdefault(i, {})
        carried[key] = carried.get(key, 0) + 1

        def done(fut: Any = None) -> None:
            if fut is not None and not fut.cancelled() and fut.exception() is None:
                self._aio_proven.add(key)
            else:
                self._aio_proven.discard(key)
            owner[1] -= 1
            if owner[1] <= 0 and self._aio_owner.get(key) is owner:
                del self._aio_owner[key]
            carried[key] -= 1
            if not carried[key]:
                del carried[key]

        return done

    def _on_room(self) -> None:
        """A direct connection has room again: the sender looks at the busy partitions."""
        if self._held:
            self.queue.wake()

    async def _steer(self, o: _Open, topic: str) -> None:
        """Key none, direct path: a batch whose partition's leader cannot take it now (its
        connections full: a broker that stopped answering, or one slower than the others) goes
        to a partition whose leader can, as Kafka's producers steer unkeyed records away from
        brokers that do not keep up (KIP-794); when none can, it waits for room on any. Sending
        it where it was headed waited for that one broker, and every partition waited with it."""
        d = self.direct
        # (a leader whose connection was lost since the last metadata refresh would fail the
        # batch at once: another partition's is taken too, if one can take it now)
        while not d.ready(topic, o.partition) or d.lost(topic, o.partition):
            free = [p for p in self._led_partitions(topic) if d.ready(topic, p) and not d.lost(topic, p)]
            if free:
                self._rr = (self._rr + 1) % len(free)
                o.partition = free[self._rr]
                return
            if d.ready(topic, o.partition):
                return   # (fails at once: the sink refreshes metadata)
            await d.wait_room(0.5)

    def _busy(self, o: _Open, topic: str) -> bool:
        """Keyed modes: whether the batch must wait, set aside with its partition's
        (KafkaSink._hold), because its leader's connection has no room now (or the partition's
        earlier batches are set aside: they go first). Waiting for room in send() held back every
        other partition with it, for as long as a broker did not answer."""
        key = (o.kind, o.partition)
        h = self._held.get(key)
        probe = h is not None and h.probe is not None and h.probe.seq == o.seq
        if (h is None or probe) and self._ready(topic, o.partition):
            return False
        o.resend = 0
        self._hold(key, o.chunks(), probe)   # (from in flight to queued, as after a failure)
        if h is not None and probe:
            # a failing partition's probe: tried again alone as soon as there is room. Marked
            # busy, every batch set aside went back at once with it, and when the probe failed
            # again while a later batch was delivered, the partition's order was broken
            h.probe = None
            h.until = time.monotonic()
        elif h is None:
            h = self._held[key]
            # set aside for want of room alone: back when the connection has some (_probe_held)
            h.busy = True
        return True

    async def _submit(self, o: _Open, topic: str) -> None:
        q = self.queue
        t0 = time.monotonic()
        aio_batch: Any = None   # aiokafka's MessageBatch around o.builder (retry_count: its own re-sends)
        try:
            if o.builder is None or isinstance(o.builder, _DirectRecords):  # the direct path
                w = o.records.writer if o.builder is None else o.builder.writer  # type: ignore[attr-defined]
                if self._encode is not None:
                    await self._pack(w)
                if self.k.key == "none":
                    await self._steer(o, topic)
                elif self._busy(o, topic):
                    return
                # keyed: a partition always on the same connection (order per key kept)
                fut = await self.direct.send(w, topic, o.partition,  # type: ignore[union-attr]
                                             sticky=self.k.key != "none")
                self._now_written(o)
            else:
                ps = self.producers
                untrack: Callable[[], None] | None = None
                if self.k.key == "none":
                    producer = await self._steer_aio(o, topic)
                    untrack = self._aio_sent(topic, o.partition, producer)
                elif self._busy(o, topic):
                    return
                else:
                    producer = ps[o.partition % len(ps)]
                # (before it is handed over: a Produce request for the partition written from now
                # on may hold it)
                o.aio = (topic, _aio_produced(topic, o.partition))
                try:
                    fut = await producer.send_batch(o.builder, topic, partition=o.partition)
                except BaseException:
                    o.aio = None
                    if untrack is not None:
                        untrack()
                    raise
                if untrack is not None:
                    fut.add_done_callback(untrack)
                aio_batch = _aio_batch(producer, topic, o.partition, o.builder)
                # in aiokafka's hands now: it may write the request at any moment, so at the
                # shutdown deadline these records are unconfirmed (maybe in the topic), not
                # undelivered, once a Produce request for their partition has been written
                # (unconfirmed())
                self._now_written(o)
                self._aio_handed.add(o)
                if o.kind == FLOWS:
                    self._aio_waiting.setdefault(o.partition, time.monotonic())
        except Exception as exc:
            self._failed(o, exc)
            await asyncio.sleep(0.2)
            return

        def done(f: asyncio.Future[Any]) -> None:
            self._pending.discard(f)
            exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if aio_batch is not None:
                # aiokafka sends a batch again by itself after a lost connection, a timeout or a
                # retriable error, within its delivery timeout: each time after the first, the
                # broker may hold the records twice, as after the direct path's own re-send. Its
                # retry_count counts the times it was taken for a request, also those whose
                # leader could not be connected to, which wrote nothing: no more copies than the
                # Produce requests for its partition written since (_aiokafka_produce_writes)
                self.resent[o.kind] += len(o.records) * max(0, min(aio_batch.retry_count, self._aio_writes(o)) - 1)
            if exc is None and o.written:
                self._written[o.kind] -= len(o.records)
            if exc is None:
                if o.aio is not None:
                    self._aio_handed.discard(o)
                    if o.kind == FLOWS:
                        self._aio_waiting.pop(o.partition, None)   # (its leader answers)
                self.connected = True
                self.problem = ""
                self._retry_wait = 0.0
                self.delivered[o.kind] += len(o.records)
                if not self._told[o.kind]:
                    self._took(o.kind, o.nbytes)
                self.batches += 1
                if self._held:
                    self._release((o.kind, o.partition))
                observe(self.latency, time.monotonic() - t0)
                q.done(o.kind, o.nbytes, len(o.records))
            else:
                self._failed(o, exc)

        self._pending.add(fut)
        fut.add_done_callback(done)

    def _now_written(self, o: _Open) -> None:
        """The batch's Produce request was written (or the batch handed to aiokafka)."""
        o.written = True
        self._written[o.kind] += len(o.records)
        # records a request held before, out again: what flowscope_kafka_resent_records counts
        # (not when they were queued again: given up before this, they never went out twice)
        self.resent[o.kind] += o.resend
        o.resend = 0

    def unconfirmed(self, kind: int) -> int:
        # written and unanswered, and what a request held before that the sender still holds
        # unwritten again (taken from the queue, or its batch waiting for room or a connection);
        # not a batch in aiokafka's hands that no Produce request can have held (_may_be_in_topic:
        # its leader never reached), unless a request held its records before
        never = sum(len(o.records) for o in self._aio_handed
                    if o.kind == kind and not o.sent and not self._may_be_in_topic(o))
        return (self._written[kind] - never + sum(len(c.records) for c in self._taken if c.sent and c.kind == kind)
                + sum(o.resend for o in self._opens if o.kind == kind))

    def _may_be_in_topic(self, o: _Open) -> bool:
        """Whether a written batch (its Produce request went out, or it was handed to aiokafka)
        may have reached the broker: for one handed to aiokafka, whether a Produce request for its
        partition was written since (_aiokafka_produce_writes)."""
        return o.aio is None or self._aio_writes(o) > 0

    @staticmethod
    def _aio_writes(o: _Open) -> int:
        """Produce requests written for the partition of a batch handed to aiokafka since it was
        (the most that can have held it); a great many when they are not counted."""
        assert o.aio is not None
        topic, before = o.aio
        now = _aio_produced(topic, o.partition)
        return sys.maxsize if before is None or now is None else now - before

    def _answering(self, idle: bool = False) -> bool:
        """Whether some broker answered within the request timeout on a connection still open:
        the direct path's Produce connections (DirectProducer.answering()), or, on the aiokafka
        path, the producers' connections (each notes when it last read an answer, any request's:
        its idle timer). A batch failed by another broker's lost connection or timeout then leaves
        the sink connected, its partitions said out of reach (_watch), on either path alike. Read
        at a failure only: nothing is added to each batch's way. `idle`: nothing was produced
        lately, so no answer dates a connection: whether any (direct or the producers') is still
        open at all, the metadata refresh that follows saying whether its broker answers."""
        d = self.direct
        if d is not None and not idle:
            return bool(d.answering())
        if d is not None and any(c is not None and not c.closed for slots in d.conns.values() for c in slots):
            return True
        since = float("-inf") if idle else time.monotonic() - self.k.request_timeout_ms / 1000
        for p in self.producers:
            conns = getattr(p.client, "_conns", None)
            for conn in (conns.values() if isinstance(conns, dict) else ()):
                at = getattr(conn, "_last_action", None)
                if isinstance(at, float) and at > since and conn.connected():
                    return True
        return False

    def connections_dropped(self) -> int:
        """Connections to the brokers dropped silently (kafka_direct.dropped_silently): the direct
        path's, and aiokafka's in this process since the sink started."""
        return (0 if self.direct is None else self.direct.dropped) + _AIO_DROPPED[0] - self._aio_dropped_at

    def throttle_seconds(self) -> float:
        """Time the brokers said they throttled the direct path's Produce requests."""
        return 0.0 if self.direct is None else self.direct.throttle_ms / 1000

    def _failed(self, o: _Open, exc: BaseException) -> None:
        if self._closing:
            # The shutdown deadline passed and the connections are being closed: the batch stays
            # in flight for drain() to count, unconfirmed if its request was written (or one before).
            return
        o.resend = 0   # (out of flight: queued again, set aside or dropped below)
        sent_before = o.sent   # (refused, the request wrote nothing: _split's halves keep what was so before)
        if o.aio is not None and o.kind == FLOWS and _broker_answer(exc) and not _no_answer(exc):
            self._aio_waiting.pop(o.partition, None)   # (its leader answers, with an error)
        if o.written:
            # the broker may have written them without its answer reaching us (a timeout, a lost
            # connection): sent again, they can be in the topic twice (at least once, as any Kafka
            # producer without idempotence), counted in flowscope_kafka_resent_records when they
            # are (_now_written). Not a batch aiokafka never wrote (its leader never reached:
            # NodeNotReadyError once its request timeout passed)
            o.written = False
            if not _not_appended(exc) and self._may_be_in_topic(o):
                o.sent = True   # (its chunks, re-queued, remember it: Chunk.sent)
            self._written[o.kind] -= len(o.records)
            self._aio_handed.discard(o)
        if getattr(exc, "fatal", False) or _fatal_aiokafka(exc):
            if _too_large(exc) and len(o.records) > 1 and self._split(o, exc, sent_before):
                return
            # the broker refused the batch for good (direct path: a record too large, corrupt,
            # not authorized...): retrying cannot help, so it is dropped and counted
            self.errors["rejected"] += 1
            why = ""
            if _not_authorized(exc):
                why = "; " + _acl_problem((self.k.topic, self.k.counters_topic)[o.kind])
            elif _too_large(exc) and len(o.records) > 1:
                # (_split could not cut it: only the log can say what to change)
                why = (f"; the batch (about {o.nbytes} bytes) is over the brokers' message.max.bytes or the topic's "
                       "max.message.bytes, though its records may each fit: set --kafka-batch-bytes under that limit")
            elif _too_large(exc):
                why = (f"; this one record (about {o.nbytes} bytes) is over the brokers' message.max.bytes or the "
                       "topic's max.message.bytes on its own")
            self._rl.error("rejected", "kafka: batch of %d records rejected by the broker: %s (dropped)%s",
                           len(o.records), exc, why)
            self.queue.done(o.kind, o.nbytes, len(o.records))
            self.queue.dropped[(o.kind, "rejected")] += len(o.records)
            h = self._held.get((o.kind, o.partition)) if self.k.key != "none" else None
            if h is not None and h.probe is not None and h.probe.seq == o.seq:
                # a held partition's probe, answered: its next batch is tried at once (left marked
                # as the probe in flight, the partition waited until it was given up for lost,
                # --kafka-request-timeout-ms + 10 s later)
                h.probe = None
                h.until = time.monotonic()
            return
        self.errors["produce"] += 1
        if not _broker_answer(exc) and not self._answering() and not self._other_leaders(o):
            # (a partition's error in a broker's answer is no lost connection: with one partition
            # refused and the others delivered, flowscope_sink_connected and /readyz flapped at
            # every retry; a broker refusing everything shows as flowscope_sink_stalled_seconds.
            # Nor is one broker's lost connection while another still answers on its own: one
            # broker of several timing out dropped flowscope_sink_connected with the others
            # delivering; through aiokafka too, where a broker killed failed its batches with
            # NodeNotReadyError while the others acknowledged theirs)
            self.connected = False
            # /readyz's reason (it said "kafka sink not connected" alone until a refresh failed),
            # with what the advertised brokers' latest check found, read each time (as _explain's):
            # set as a plain string, it lacked the finding until the refresh after had failed,
            # for up to the request timeout (a broker silent, its metadata request waited for).
            # A check is made at once, unless the latest is under ADVERTISED_FAILING_S old
            self._problem, self._why = "", (f"a batch of {len(o.records)} records not delivered: {exc!r}", None)
            self._check_now()
        self._need_metadata = True
        # the next attempt waits, doubling up to 2 s (a broker answering NOT_ENOUGH_REPLICAS
        # at once must not be hammered with requests and metadata refreshes); reset on delivery
        self._retry_wait = min(max(0.1, self._retry_wait * 2), 2.0)
        # with what the latest check of the advertised brokers found (the sentence /readyz gives:
        # which are out of reach, and why), as it stands: no check is made here (_watch makes one
        # within a second of a produce error), so the first line of an outage may come before it
        self._rl.error("produce", "kafka: batch of %d records not delivered: %r (re-queued)%s", len(o.records), exc,
                       self._hint(self._adv_problem))
        if self.queue.closed and self._stopping and self.producer is None:
            return
        if self.k.key != "none" and o.partition >= 0:
            # keyed: the partition's batches wait (in order) and are tried again after a
            # backoff of their own, while the other partitions' go on
            key = (o.kind, o.partition)
            h = self._held.get(key)
            probe = h is not None and h.probe is not None and h.probe.seq == o.seq
            self._hold(key, o.chunks(), probe)
            h = self._held[key]
            h.busy = False   # failing now: tried again after a backoff, by a probe
            if probe:
                h.probe = None
            h.wait = min(max(0.1, h.wait * 2), 2.0)
            h.until = time.monotonic() + h.wait
            return
        for c in reversed(o.chunks()):  # requeue() puts each at the front: keep the order
            self.queue.requeue(c)

    def _other_leaders(self, o: _Open) -> bool:
        """Whether the failed batch `o` went to a leader the checks already found out of reach
        (_cut_off) while some leader of the flows topic is not: its failure says nothing new of
        the cluster, and no disconnection. Why: an idle keyed collector's held partition is
        probed every few seconds (_probe_held); with nothing else sent, no connection had an
        answer within the request timeout (_answering), so each probe refused by the dead
        leader marked the sink not connected, and /readyz unready, until the next metadata
        refresh, though the other leaders would take any flow (the idle metadata check, every
        IDLE_CHECK_S, shows the cluster answers; a cluster gone fails that too)."""
        if o.partition < 0 or self.producer is None:
            return False
        cut = self._cut_off()
        if not cut or self._leader_of((self.k.topic, self.k.counters_topic)[o.kind], o.partition) not in cut:
            return False
        return bool(self._listed_leaders(self._leaderless()) - cut)

    def _split(self, o: _Open, exc: BaseException, sent: bool) -> bool:
        """A batch of several records the broker refused for its size (MESSAGE_TOO_LARGE, 10:
        over its message.max.bytes or the topic's max.message.bytes; RECORD_LIST_TOO_LARGE, 18):
        its records may each fit, so it is cut in two and both halves go again (as Kafka's
        producers do, KIP-126), halved again if refused again; a single record refused so is
        dropped as `rejected` (_failed). Nothing of it was written: each record is in the topic
        once the half holding it is acknowledged. New batches of its kind are kept under what was
        refused (_shrink). In the keyed modes the halves are set aside with the partition's later
        batches, in order, and the first goes alone at once (the others once it is delivered:
        never a half in flight while the one before it may be refused). False when it cannot be
        cut (its records do not read back): dropped as before. sent: whether a request that may
        have been written held its records before this one (Chunk.sent), which was refused:
        that one wrote nothing."""
        q = self.queue
        if isinstance(o.records, Prebuilt):
            p = o.records
            try:
                from decoders import split_batch

                data = p.data if p.data is not None else p.writer.build()
                pieces = split_batch(data, 2, _decompress)
            except Exception as e:  # noqa: BLE001 - a codec missing or failing, a batch that does not parse
                self._rl.error("split", "kafka: a batch refused as too large could not be cut in two: %r", e)
                return False
            size = len(data)
            chunks = [Chunk(o.kind, Prebuilt(w, p.slot), w.size, "", o.seq, sent) for w in pieces]
        else:
            size = o.builder.size() if o.builder is not None else o.nbytes
            o.sent = sent
            chunks = o.chunks()   # (batched again by _append, under the limit _shrink lowers)
        self.errors["too_large"] += 1
        self._shrink(o.kind, o.nbytes, size, len(o.records), exc)
        # out of flight as the batch, in flight as its halves (the bytes differ by their headers)
        q.done(o.kind, o.nbytes, len(o.records))
        for c in chunks:
            q.inflight_bytes += c.nbytes
            q.inflight[c.kind] += len(c.records)
        if self.k.key != "none" and o.partition >= 0:
            key = (o.kind, o.partition)
            h = self._held.get(key)
            probe = h is not None and h.probe is not None and h.probe.seq == o.seq
            self._hold(key, chunks, probe)
            h = self._held[key]
            if probe:
                h.probe = None   # (this batch was the partition's probe: its first half is the next)
            h.busy = False   # (probed: released all at once, the halves would be in flight together)
            h.until = time.monotonic()   # no backoff: the broker is fine, the batch was too large
            q.wake()
            return True
        for c in reversed(chunks):  # requeue() puts each at the front: keep the order
            q.requeue(c)
        return True

    def _shrink(self, kind: int, size: int, sent: int, records: int, exc: BaseException) -> None:
        """A batch of `size` bytes of records (`sent` bytes as sent, compressed or not) was
        refused as too large: new batches of its kind hold at most half of that, so that later
        ones go without being refused and cut first (a round trip each); refused again, half
        again. Halving gets under any limit in a few steps and is what _split cuts into anyway;
        the same size refused again changes nothing, so the batches in flight refused together
        lower it once. The limit learnt is logged (at warning) once a half is taken (_took)."""
        new = max(1024, size // 2)
        if new >= self.batch_limit[kind]:
            return
        self.batch_limit[kind] = new
        self._told[kind] = False
        log.info("kafka: the broker refused a record batch of %d bytes (%d records, %d bytes sent) as too large "
                 "(%s): cut in two and sent again; new batches hold at most %d bytes", size, records, sent, exc, new)

    def _took(self, kind: int, size: int) -> None:
        """A batch of `size` bytes of records was acknowledged since a refusal lowered the limit
        (_shrink): the first one at least half the limit caps it (a batch that large fits:
        without compression a fact, where halving only guessed), and the limit is logged, with
        the flag to set, once. Why cap: in the keyed modes the batches set aside behind a
        refused one go together once its first half is delivered, cut to the limit
        (_cut_to_limit); one of them refused while the next is in flight would let that one land
        first, out of the partition's order. (A smaller batch says too little: a half of two
        uneven records, the end of a batch cut to the limit.)"""
        if size * 2 < self.batch_limit[kind]:
            return
        self._told[kind] = True
        self.batch_limit[kind] = n = min(self.batch_limit[kind], max(1024, size))
        what = "record batches" if kind == FLOWS else "sFlow counter record batches"
        log.warning("kafka: the broker refused %s as too large (over its message.max.bytes or the topic's "
                    "max.message.bytes) and took one of %d bytes: refused ones are cut in two and sent again, and "
                    "new ones now hold at most %d bytes; set --kafka-batch-bytes %d (or lower) to start there",
                    what, size, n, n)

    async def _cut_to_limit(self, chunks: list[Chunk], parts_by_kind: list[list[int]]) -> list[Chunk]:
        """The take's chunks with each prebuilt batch larger than its kind's batch_limit (made,
        or queued, before a broker refused one as large: _shrink) cut into batches under it, in
        order, before it goes: it would be refused and cut anyway, a round trip each. In the
        keyed modes, while no batch has shown the limit fits (_took), only the first piece goes
        now and the others are set aside behind it (_hold: they follow once it is delivered):
        the first refused while the second is in flight, the second would land first."""
        from decoders import split_batch

        q = self.queue
        out: list[Chunk] = []
        for c in chunks:
            limit = self.batch_limit[c.kind]
            if not (isinstance(c.records, Prebuilt) and c.nbytes > limit and len(c.records) > 1):
                out.append(c)
                continue
            p = c.records
            try:
                if p.data is None and p.writer.busy:
                    await self._pack(p.writer)   # (on the compression thread now: built once it is done)
                data = p.data if p.data is not None else p.writer.build()
                pieces = split_batch(data, 1, _decompress, limit)
            except Exception as e:  # noqa: BLE001 - sent as it is: refused, it is cut then (_split)
                self._rl.error("split", "kafka: a batch over the size a broker takes could not be cut: %r", e)
                out.append(c)
                continue
            q.done(c.kind, c.nbytes, len(c.records))
            cut = [Chunk(c.kind, Prebuilt(w, p.slot), w.size, "", c.seq, c.sent) for w in pieces]
            for piece in cut:
                q.inflight_bytes += piece.nbytes
                q.inflight[c.kind] += len(piece.records)
            part = self._fixed_partition(c, parts_by_kind) if self.k.key != "none" else -1
            if part < 0 or self._told[c.kind] or len(cut) < 2:
                out.extend(cut)
                continue
            # (the chunk is the probe of a partition set aside, or its partition has none: see
            # _send; a probe is the first of its partition's chunks set aside, so the pieces
            # after it go first in line)
            key = (c.kind, part)
            self._hold(key, cut[1:], True)
            h = self._held[key]
            h.probe = cut[0]
            h.busy = False
            h.until = time.monotonic()
            out.append(cut[0])
        return out

    async def _close(self, timeout: float) -> None:
        self._stop_packer()
        for task in (self._watch_task, self._checking):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._unhold_all()  # (back in the queue: drain() counts what is left there)
        asking = [t for t in self._limit_tasks.values() if not t.done()]   # (an admin client's: nothing waits on it)
        for task in asking:
            task.cancel()
        await asyncio.gather(*asking, return_exceptions=True)
        if self.producer is None:
            return
        deadline = time.monotonic() + timeout
        pending = list(self._pending)
        if pending:
            await asyncio.wait(pending, timeout=max(timeout, 0.01))
        self._closing = True
        if self.direct is not None:
            self.direct.close()

        async def stop(producer: Any) -> None:
            try:
                await asyncio.wait_for(producer.stop(), max(deadline - time.monotonic(), 0.5))
            except (asyncio.TimeoutError, Exception) as exc:
                log.warning("kafka: producer did not stop cleanly: %r", exc)

        # all at once, within what is left of the deadline (at least half a second to close
        # cleanly): one after the other, four connections ran two seconds past the deadline
        await asyncio.gather(*(stop(p) for p in self.producers))
        # A keyed batch whose answer (a retriable error, its connection lost) came while waiting
        # above was set aside again, out of the queue: drain()'s drop_all() would reset the
        # queued count without counting it, and its records would be nowhere.
        self._unhold_all()


# Compression levels when kafka.compression_level is not set (python -m benchmarks.compress_bench,
# benchmarks/RESULTS.md): lz4 0 is flowscope's field-anchored encoder (decoders/packer.pxi),
# about twice the speed of lz4's fast mode (levels 1-2) on enriched flow JSON at the same ratio;
# lz4's fast mode compresses flow JSON 4.5-6x at 1.3-1.7 GB/s, where
# Kafka's default lz4 level 9 runs at 100 MB/s (11 us per enriched record, ten times the rest
# of the collector's work for it); zstd 3 (Kafka's default) is as fast here as zstd 1 (0.9 GB/s)
# and compresses 12x; gzip 1.
DEFAULT_LEVEL = {"lz4": 0, "zstd": 3, "gzip": 1}


# aiokafka errors a retry cannot fix (the direct path's kafka_direct.FATAL): the batch is
# dropped and counted as rejected instead of being re-sent for ever.
_AIOKAFKA_FATAL = ("MessageSizeTooLargeError", "RecordListTooLargeError", "TopicAuthorizationFailedError",
                   "ClusterAuthorizationFailedError", "InvalidTopicError", "CorruptRecordException",
                   "UnsupportedForMessageFormatError", "InvalidRequiredAcksError", "InvalidTimestampError")


def _aio_batch(producer: Any, topic: str, partition: int, builder: Any) -> Any:
    """aiokafka's MessageBatch around `builder`, just handed to producer.send_batch() (still in
    its accumulator: its sender task has not run since), or None. Its retry_count is how many
    Produce requests have carried it (aiokafka counts each drain)."""
    from aiokafka.structs import TopicPartition

    for mb in reversed(producer._message_accumulator._batches.get(TopicPartition(topic, partition), ())):
        if getattr(mb, "_builder", None) is builder:
            return mb
    return None


def _fatal_aiokafka(exc: BaseException) -> bool:
    import aiokafka.errors as ae

    from .kafka_direct import FATAL

    if isinstance(exc, ae.BrokerResponseError) and getattr(exc, "errno", None) in FATAL:
        return True  # (those aiokafka has no class for: _aiokafka_final_errors)
    return isinstance(exc, tuple(getattr(ae, n) for n in _AIOKAFKA_FATAL if hasattr(ae, n)))


def _aiokafka_final_errors() -> None:
    """Give aiokafka a class for each final error code (kafka_direct.FATAL) it has none for.
    aiokafka 0.14 knows Kafka's codes up to 72: INVALID_RECORD (87, a record without a key on a
    compacted topic) and UNSUPPORTED_COMPRESSION_TYPE (76) come out of its sender as UnknownError,
    which says nothing of the code, and a batch refused for good was re-queued for ever (TLS, SASL,
    --no-kafka-direct and sFlow counter records go through aiokafka), the queue stuck behind it.
    Not retriable, as in Kafka's error table: aiokafka fails the batch and _fatal_aiokafka drops
    it as rejected. A code aiokafka learns later keeps aiokafka's own class."""
    import aiokafka.errors as ae

    from .kafka_direct import FATAL

    for code, reason in FATAL.items():
        if code not in ae.kafka_errors:
            name = "".join(w.title() for w in reason.split("_")) + "Error"
            ae.kafka_errors[code] = type(name, (ae.BrokerResponseError,), {
                "errno": code, "message": reason.upper(), "retriable": False,
                "description": f"Kafka error {code} {reason.upper()} (flowscope: not retriable)"})


def _aiokafka_closed_writes() -> None:
    """Make a write on an aiokafka connection whose transport is already closed fail as a lost
    connection (KafkaConnectionError, retriable), as aiokafka does for an OSError. uvloop, which
    the collector runs on, raises RuntimeError ("unable to perform operation on <TCPTransport
    closed=True ...>; the handler is closed") where asyncio's own transports drop the write, and
    AIOKafkaConnection.send catches OSError only. A broker that resets a connection (a restart with
    requests unread: RST) leaves its reader holding ECONNRESET, not EOF, so connected() is still
    true until the connection's read task runs; a request sent in that window raised the
    RuntimeError. In the client's metadata task (_md_synchronizer) it ended that task for good,
    unseen (its exception is never retrieved): every later metadata update was awaited for ever,
    so aiokafka's sender, which waits for one after a Produce request failed retriably, kept that
    broker marked in flight, and the producer's batches for the partitions it leads stayed in its
    accumulator, unsent and unanswered, with the sink connected and the other producers
    delivering (CI, after broker bounces on the aiokafka path: 60, then 76 flows undelivered;
    reproduced here with many short bounces). In the sender's own Produce request it ended the
    sender task, failing every batch of the producer from then on."""
    import functools

    import aiokafka.errors as ae
    from aiokafka.conn import AIOKafkaConnection, CloseReason

    if getattr(AIOKafkaConnection, "_flowscope_closed_writes", False):
        return

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def write(self: Any, *args: Any, **kw: Any) -> Any:
            try:
                return fn(self, *args, **kw)
            except RuntimeError as err:
                w = self._writer
                if w is None or not w.transport.is_closing():
                    raise   # (not a write to a closed transport)
                self.close(reason=CloseReason.CONNECTION_BROKEN, exc=err)
                raise ae.KafkaConnectionError(f"Connection at {self._host}:{self._port} broken: {err}") from err
        return write

    AIOKafkaConnection.send = guard(AIOKafkaConnection.send)  # type: ignore[method-assign]
    AIOKafkaConnection._send_sasl_token = guard(AIOKafkaConnection._send_sasl_token)  # type: ignore[method-assign]
    AIOKafkaConnection._flowscope_closed_writes = True  # type: ignore[attr-defined]


def _aiokafka_idle_closes() -> None:
    """Mark each aiokafka connection closed for idleness (CloseReason.IDLE_DROP: idle for
    connections_max_idle_ms with no request waiting) while it was open, for _idle_closed: aiokafka
    gives the reason to its client's callback only, and a closed connection looks the same
    whether its broker went or aiokafka let it go. And count and log each one the kernel gave up
    for its peer's silence (kafka_direct.dropped_silently; keepalive: _aiokafka_keepalive). Only
    marked and counted, nothing of aiokafka's behaviour changed (it opens a new connection at the
    next request, as after any lost one)."""
    import functools

    from aiokafka.conn import AIOKafkaConnection, CloseReason

    from .kafka_direct import dropped_silently

    if getattr(AIOKafkaConnection, "_flowscope_idle_closes", False):
        return
    fn = AIOKafkaConnection.close

    @functools.wraps(fn)
    def close(self: Any, reason: Any = None, exc: Any = None) -> Any:
        if reason == CloseReason.IDLE_DROP and self.connected():
            self._flowscope_idle_closed = True
        elif dropped_silently(exc) and self.connected():
            _AIO_DROPPED[0] += 1
            _aio_rl.warning("dropped", "kafka: aiokafka's connection to %s:%s was dropped silently (%r: no answer to "
                            "TCP keepalive probes after %d s idle, or to a write: a NAT, conntrack or firewall between "
                            "here and the broker forgot it, or the broker's host is gone); aiokafka opens a new one "
                            "(counted in flowscope_kafka_connections_dropped_total)", self.host, self.port, exc,
                            _AIO_KEEPALIVE[0])
        return fn(self, reason, exc)

    AIOKafkaConnection.close = close  # type: ignore[method-assign]
    AIOKafkaConnection._flowscope_idle_closes = True  # type: ignore[attr-defined]


#: aiokafka's connections: keepalive seconds set on each as it opens (_aiokafka_keepalive), and the
#: number of them dropped silently in this process
_AIO_KEEPALIVE = [0]
_AIO_DROPPED = [0]
_aio_rl = RateLimitedLog(log)


def _aiokafka_keepalive(idle_s: int) -> None:
    """TCP keepalive (kafka_direct.keepalive) on each aiokafka connection as it opens: aiokafka
    itself turns no keepalive on, and closes a connection only after connections_max_idle_ms of
    idleness, longer than some NATs keep one. A connection the kernel gives up is counted where
    aiokafka closes it (_aiokafka_idle_closes). Only the socket option: nothing of aiokafka's
    behaviour changed."""
    import functools

    from aiokafka.conn import AIOKafkaConnection

    from .kafka_direct import keepalive

    _AIO_KEEPALIVE[0] = idle_s
    if getattr(AIOKafkaConnection, "_flowscope_keepalive", False):
        return
    connect = AIOKafkaConnection.connect

    @functools.wraps(connect)
    async def connect_kept(self: Any) -> Any:
        out = await connect(self)
        writer = getattr(self, "_writer", None)
        if writer is not None:
            keepalive(writer.transport.get_extra_info("socket"), _AIO_KEEPALIVE[0])
        return out

    AIOKafkaConnection.connect = connect_kept  # type: ignore[method-assign]
    AIOKafkaConnection._flowscope_keepalive = True  # type: ignore[attr-defined]


def _idle_closed(conn: Any) -> bool:
    """Whether aiokafka closed the connection for idleness (_aiokafka_idle_closes)."""
    return getattr(conn, "_flowscope_idle_closed", False) is True


#: Produce requests aiokafka's connections were asked to write, by (topic, partition) they held
#: (_aiokafka_produce_writes); under None those whose partitions could not be read (any may be in them).
_AIO_PRODUCED: collections.Counter[tuple[str, int] | None] = collections.Counter()
_aio_counting = False   # whether _aiokafka_produce_writes is in place


def _aio_produced(topic: str, partition: int) -> int | None:
    """Produce requests written so far that may hold a batch for the partition (a number that
    only grows), or None when they are not counted (then any batch may have been written)."""
    if not _aio_counting:
        return None
    return _AIO_PRODUCED[(topic, partition)] + _AIO_PRODUCED[None]


def _aiokafka_produce_writes() -> None:
    """Count the Produce requests aiokafka writes, by the partitions they hold (_AIO_PRODUCED).
    A batch handed to aiokafka waits in its accumulator until its sender drains it for the
    partition's leader and connects to that broker; a leader that cannot be connected to (its
    address refused, unresolvable) fails the attempt before anything is written, and the batch
    goes back to wait. aiokafka tells none of that (a batch's retry_count counts the drains), so
    a batch for a leader never reached was taken as maybe written: `unconfirmed` at the shutdown
    deadline, and sent again as a copy the topic might hold twice. No Produce request for its
    partition written since it was handed over means it is in the topic nowhere. Counted when
    the request is given to the connection, before the write: one whose write then fails counts
    all the same (taken as maybe written, the side that loses nothing from the count). Only
    counted, nothing of aiokafka's behaviour changed."""
    global _aio_counting
    import functools

    from aiokafka.conn import AIOKafkaConnection

    if getattr(AIOKafkaConnection, "_flowscope_produce_writes", False):
        _aio_counting = True
        return
    fn = AIOKafkaConnection.send

    @functools.wraps(fn)
    def send(self: Any, request: Any, *args: Any, **kw: Any) -> Any:
        if getattr(request, "API_KEY", None) == 0:
            # aiokafka 0.12+: the request (its topics in _topics); before: the versioned struct (topics)
            topics: Any = getattr(request, "_topics", None)
            if topics is None:
                topics = getattr(request, "topics", None)
            try:
                for topic, parts in topics:
                    for part in parts:
                        _AIO_PRODUCED[(topic, part[0])] += 1
            except (TypeError, ValueError, IndexError):   # (a shape not known here: any batch may be in it)
                _AIO_PRODUCED[None] += 1
        return fn(self, request, *args, **kw)

    AIOKafkaConnection.send = send  # type: ignore[method-assign]
    AIOKafkaConnection._flowscope_produce_writes = True  # type: ignore[attr-defined]
    _aio_counting = True


def _not_authorized(exc: BaseException) -> bool:
    """Whether a failure is the cluster's ACLs refusing this client (TOPIC_AUTHORIZATION_FAILED,
    29, or CLUSTER_AUTHORIZATION_FAILED, 31: in a Metadata or a Produce answer)."""
    import aiokafka.errors as ae

    from .kafka_direct import BrokerError

    if isinstance(exc, BrokerError):
        return exc.code in (29, 31)
    return isinstance(exc, (ae.TopicAuthorizationFailedError, ae.ClusterAuthorizationFailedError))


def _too_large(exc: BaseException) -> bool:
    """Whether a failure is the broker refusing a batch for its size (MESSAGE_TOO_LARGE, 10, or
    RECORD_LIST_TOO_LARGE, 18)."""
    import aiokafka.errors as ae

    from .kafka_direct import BrokerError

    if isinstance(exc, BrokerError):
        return exc.code in (10, 18)
    return isinstance(exc, (ae.MessageSizeTooLargeError, ae.RecordListTooLargeError))


def _acl_problem(topic: str) -> str:
    """What an operator is told when the ACLs deny a topic."""
    return (f"not authorized for topic {topic} (TOPIC_AUTHORIZATION_FAILED: the cluster's ACLs do not "
            "let this client's principal describe or write it; grant it DESCRIBE and WRITE on the topic)")


# Kafka error codes a partition leader answers before it appends anything (Kafka's protocol
# error table and its Produce handling: the leader is elsewhere or unknown, the topic or
# partition is not there, too few in-sync replicas to accept the write): a batch answered so
# was not written, and sending it again cannot put its records in the topic twice.
# (NOT_ENOUGH_REPLICAS_AFTER_APPEND, 20, and REQUEST_TIMED_OUT, 7, come after the append.)
NOT_APPENDED = {3: "unknown_topic_or_partition", 5: "leader_not_available", 6: "not_leader_or_follower",
                19: "not_enough_replicas", 74: "fenced_leader_epoch", 75: "unknown_leader_epoch"}


def _not_appended(exc: BaseException) -> bool:
    """Whether the direct path's broker answer says the batch was not written (NOT_APPENDED).
    aiokafka's failures are not told apart: it may have sent the batch more than once before."""
    from .kafka_direct import BrokerError

    return isinstance(exc, BrokerError) and exc.code in NOT_APPENDED


def _no_answer(exc: BaseException) -> bool:
    """Whether an aiokafka failure may be its own wait for an answer timing out: its
    RequestTimedOutError is also the class of the broker's REQUEST_TIMED_OUT (7), which
    _broker_answer takes for an answer."""
    import aiokafka.errors as ae

    return isinstance(exc, ae.RequestTimedOutError)


def _exception_said(exc: BaseException) -> str:
    """An exception as a log line gives it: its text, led by its class's name where the text
    does not already name it."""
    what = str(exc)
    return what if type(exc).__name__ in what else f"{type(exc).__name__}: {what}"


def _failed(f: asyncio.Future[Any]) -> bool:
    """Whether a finished request failed (raised, or was cancelled from elsewhere)."""
    return f.cancelled() or f.exception() is not None


def _grouped(why: dict[int, str]) -> list[tuple[str, list[int]]]:
    """Partitions -> why, as (why, its partitions in order), in the order of their first partition."""
    out: dict[str, list[int]] = {}
    for p in sorted(why):
        out.setdefault(why[p], []).append(p)
    return list(out.items())


def _broker_answer(exc: BaseException) -> bool:
    """Whether a failed produce is an error code a broker answered for the partition (the
    direct path's BrokerError, aiokafka's BrokerResponseError), or the metadata's word that the
    partition has no leader (the direct path's NoLeaderError: keyed batches wait for theirs; as
    aiokafka's LeaderNotAvailableError), not a connection lost or timed out."""
    import aiokafka.errors as ae

    from .kafka_direct import BrokerError, NoLeaderError

    return isinstance(exc, (BrokerError, NoLeaderError, ae.BrokerResponseError))


def _resolved_level(name: str, level: int) -> int:
    """The level a codec runs at: kafka.compression_level, or flowscope's default when 0."""
    return DEFAULT_LEVEL.get(name, 0) if not level else level


def _lz4_frame_header() -> bytes:
    """The 7 bytes opening the LZ4 frames _codec writes (flowscope's encoder and the Packer's
    thread write the same frames; python-lz4 computes the header checksum): the frame of
    nothing, less its end mark."""
    import lz4.frame as lz4f

    return bytes(lz4f.compress(b"", block_size=lz4f.BLOCKSIZE_MAX64KB, block_linked=False,
                               content_checksum=False, store_size=False))[:7]


def compression_thread_plan(k: KafkaConfig, named: Callable[[str], str] = str) -> tuple[bool, str]:
    """Whether kafka.compression_thread puts the fast path's compression on a thread of its own,
    and why (or why not); `named` as for check_tls (the reason becomes check_compression's error
    with `on`, which names every setting it involves with its source, as docs/collector.md says)."""
    if k.compression_thread == "off":
        return False, "kafka.compression_thread is off"
    if k.compression not in ("lz4", "zstd"):
        return False, f"{named('kafka.compression')} is {k.compression}: only lz4 and zstd compress on a thread"
    if k.compression == "lz4" and _resolved_level(k.compression, k.compression_level) > 2:
        return False, (f"{named('kafka.compression_level')} is {k.compression_level}: above 2 is lz4's HC mode, "
                       "which compresses on the event loop")
    from decoders._core import packer_available

    # (lz4 at level 0 is flowscope's own encoder: no library to load)
    missing = None if k.compression == "lz4" and not _resolved_level("lz4", k.compression_level) \
        else packer_available(3 if k.compression == "lz4" else 4)
    if missing:
        return False, missing
    if k.compression_thread == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        if cpus < 2:
            return False, "kafka.compression_thread auto: the process may run on one CPU only"
        quota = cgroup_cpu_quota()
        if quota is not None and quota < 2:
            return False, f"kafka.compression_thread auto: the cgroup's CPU limit is {quota:g} CPUs"
        return True, f"kafka.compression_thread auto: {cpus} CPUs"
    return True, "kafka.compression_thread on"


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> float | None:
    """CPUs the process's cgroup may use (a pod's CPU limit: the smallest quota from its cgroup
    up to the root), or None when unlimited or unknown. cgroup v2: cpu.max holds "QUOTA PERIOD"
    in microseconds, or "max PERIOD"; v1 (the cpu controller's hierarchy): cpu.cfs_quota_us
    (-1 unlimited) over cpu.cfs_period_us."""
    v2, v1 = "/", None   # the process's cgroup (v2), and its v1 cpu controller's (dir, path)
    try:
        with open(proc) as f:
            for ln in f:
                _, controllers, path = ln.rstrip("\n").split(":", 2)
                if controllers == "":
                    v2 = path
                elif "cpu" in controllers.split(","):
                    v1 = (controllers, path)
    except (OSError, ValueError):
        pass
    best: float | None = None

    def walk(base: str, rel: str, read: Callable[[str], float | None]) -> None:
        nonlocal best
        parts = [p for p in rel.split("/") if p]
        for depth in range(len(parts), -1, -1):
            try:
                cpus = read(os.path.join(base, *parts[:depth]))
            except (OSError, ValueError, ZeroDivisionError):
                continue
            if cpus is not None:
                best = cpus if best is None else min(best, cpus)

    def read_v2(d: str) -> float | None:
        with open(os.path.join(d, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period)

    def read_v1(d: str) -> float | None:
        with open(os.path.join(d, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(d, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota < 0 else quota / period

    if v1 is not None:
        walk(os.path.join(root, v1[0]), v1[1], read_v1)
    else:
        walk(root, v2, read_v2)
    return best


def _codec(name: str, level: int = 0) -> tuple[int, Callable[[Any], bytes] | None]:
    """Kafka attributes codec id and a compressor of a records section (bytes-like -> bytes):
    the codec's standard frame, as Kafka's consumers read it (LZ4 frames with independent
    blocks and no content checksum, KIP-57; snappy in the xerial framing Kafka's Java client
    writes)."""
    if name in ("none", "", None):
        return 0, None
    from aiokafka import codec as c

    lvl = _resolved_level(name, level)
    if name == "lz4":
        import lz4.frame as lz4f

        if lvl == 0:
            # flowscope's field-anchored encoder (decoders/packer.pxi fs_fa_block): the frame
            # python-lz4 would write, blocks found at JSON field boundaries; b"" (kept
            # uncompressed) when it does not shrink the records
            from decoders._core import lz4_frame_of

            hdr = _lz4_frame_header()
            return 3, lambda b: lz4_frame_of(b, hdr) or b""
        return 3, lambda b: lz4f.compress(b, compression_level=lvl, block_size=lz4f.BLOCKSIZE_MAX64KB,
                                          block_linked=False, content_checksum=False, store_size=False)
    if name == "zstd":
        return 4, lambda b: c.zstd_encode(b, level=lvl)
    if name == "gzip":
        return 1, lambda b: c.gzip_encode(bytes(b), compresslevel=lvl)
    return 2, lambda b: c.snappy_encode(bytes(b))


def _decompress(codec: int, data: bytes) -> bytes:
    """A compressed records section back as the records (decoders.split_batch's decompress): what
    a consumer reads, so any frame _codec or the compression thread writes."""
    from aiokafka import codec as c

    decode = {1: c.gzip_decode, 2: c.snappy_decode, 3: c.lz4_decode, 4: c.zstd_decode}.get(codec)
    if decode is None:
        raise ValueError(f"codec {codec}: not one of Kafka's")
    return decode(data)


def make_sink(cfg: Config) -> Sink:
    kind = cfg.sink_kind()
    if kind == "kafka":
        return KafkaSink(cfg)
    if kind == "file":
        return StreamSink(cfg, cfg.output_file)
    return StreamSink(cfg, None)
