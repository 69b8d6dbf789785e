"""A plain TCP front for a real Kafka broker, for tests that must see or change what passes.

The broker is started advertising the front's port, so clients reach it only through the
front; each client connection gets a connection of its own to the broker. Subclasses say what
happens to each connection's requests and answers: `_answer` and `_rewrite` for requests taken
one at a time (the default `_handle`), or a `_handle` of their own (`_pipe` copies both ways). The front runs on an event loop
of its own in a thread, so a test's collector (another process) and its assertions go on while
it serves. `tansu_behind` starts a Tansu broker behind fronts (these, or any other with the
same start/stop and ports, as tests/support/tls.TlsFront), and stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from conftest import free_tcp_port


class Front(Protocol):
    """What tansu_behind needs of a front: the broker's port it forwards to, its own port (which
    the broker advertises), start() and stop()."""

    upstream_port: int
    port: int

    def start(self) -> object: ...

    def stop(self) -> None: ...


class KafkaFront:
    """start() / stop() around an asyncio server on `host`:`port` (127.0.0.1 unless set before
    start()) whose connections go to `_handle`; stop() again, or on a front never started, does
    nothing more."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.host = "127.0.0.1"
        self.port = free_tcp_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._conns = 0     # connections taken so far (the next one's number)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    def stop(self) -> None:
        if self._loop.is_closed():       # stopped already (a test that stopped it itself)
            return
        if self._thread.ident is None:   # never started (a test that failed before it did)
            self._loop.close()
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            # (until none is left: a connection accepted just before the close gets its handler
            # task after the first round, which the loop's close then reported as destroyed
            # while pending)
            while others := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                for t in others:
                    t.cancel()
                await asyncio.gather(*others, return_exceptions=True)
                await asyncio.sleep(0)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _upstream(self, writer: asyncio.StreamWriter) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection of the client's own to the broker; None (the client's closed) when the
        broker cannot be reached."""
        try:
            return await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return None

    def _answer(self, frame: bytes) -> bytes | None:
        """An answer to the request `frame` made here (size word included) instead of the
        broker's; None: the broker answers it."""
        return None

    def _outgoing(self, conn: int, frame: bytes) -> bytes:
        """The request `frame` (after its size word) of connection `conn` as the broker gets it;
        `_rewrite` is still given the client's."""
        return frame

    def _rewrite(self, frame: bytes, answer: bytes) -> bytes | None:
        """The broker's answer to `frame` (after its size word) as the client gets it; None:
        the client's connection is closed instead (the broker did the request, the client never
        learns it)."""
        return answer

    async def _request(self, conn: int, frame: bytes) -> None:
        """Called with each request `frame` of connection number `conn` (0, 1, ... in the
        order they were taken) before it goes on: may wait (hold it back, or for ever)."""

    def _answered(self, conn: int, frame: bytes) -> None:
        """Called once the broker answered `frame` of connection `conn`, before the client gets it."""

    def _take(self) -> bool:
        """Whether a new connection is served; False: it is taken and never read from (until
        stop())."""
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Requests one at a time: each answered by _answer, or sent to the broker, whose answer
        goes back through _rewrite (a Produce request with acks 0 gets none: Kafka sends none)."""
        conn = self._conns
        self._conns += 1
        if not self._take():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()   # (until stop())
            writer.close()
            return
        up = await self._upstream(writer)
        if up is None:
            return
        up_r, up_w = up
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                await self._request(conn, frame)
                answer = self._answer(frame)
                if answer is None:
                    out = self._outgoing(conn, frame)
                    up_w.write(struct.pack(">i", len(out)) + out)
                    await up_w.drain()
                    if acks_zero(frame):
                        continue
                    n = struct.unpack(">i", await up_r.readexactly(4))[0]
                    raw = await up_r.readexactly(n)
                    self._answered(conn, frame)
                    body = self._rewrite(frame, raw)
                    if body is None:
                        return
                    answer = struct.pack(">i", len(body)) + body
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            up_w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    on_request: Callable[[bytes], Awaitable[None]]) -> None:
        """Both directions copied as they come (requests in flight together), each request frame
        first given to `on_request` (which may hold it back)."""
        up = await self._upstream(writer)
        if up is None:
            return
        up_r, up_w = up

        async def requests() -> None:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                await on_request(frame)
                up_w.write(struct.pack(">i", size) + frame)
                await up_w.drain()

        async def answers() -> None:
            while data := await up_r.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(requests()), asyncio.ensure_future(answers())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            up_w.close()


@contextlib.contextmanager
def tansu_behind(tmp_path: Path, *fronts: Front, started: int | None = None,
                 authentication: bool = False) -> Iterator[Any]:
    """A Tansu broker (collector.broker.Broker, logging to tmp_path/tansu.log; with
    `authentication`, Tansu's --authentication) on the fronts' upstream port, advertising the
    first front's, which clients bootstrap from: started, then the first `started` fronts (all by
    default: the test starts the others when it wants them), and at the end the fronts stopped
    (a front the test stopped itself, or never started, included), then the broker. Yields the
    broker."""
    from collector.broker import Broker

    broker = Broker(port=fronts[0].upstream_port, log_path=str(tmp_path / "tansu.log"),
                    advertised_port=fronts[0].port, authentication=authentication)
    try:
        broker.start()
        for f in fronts[:started]:
            f.start()
        yield broker
    finally:
        for f in fronts:
            f.stop()
        broker.stop()


def produce_sections(frame: bytes) -> tuple[bytes, list[tuple[bytes, list[tuple[int, bytes]]]]] | None:
    """A Produce request (v3-v8) cut into what comes before its topics array (header,
    transactional id, acks, timeout) and, per topic, its (partition, records) entries; None for
    any other request."""
    api, version, _corr, clen = struct.unpack_from(">hhih", frame, 0)
    if api != 0 or not 3 <= version <= 8:
        return None
    off = 10 + max(clen, 0)
    (tx,) = struct.unpack_from(">h", frame, off)
    off += 2 + max(tx, 0) + 2 + 4                 # transactional id, acks, timeout
    prefix = frame[:off]
    (ntopics,) = struct.unpack_from(">i", frame, off)
    off += 4
    topics: list[tuple[bytes, list[tuple[int, bytes]]]] = []
    for _ in range(ntopics):
        (tlen,) = struct.unpack_from(">h", frame, off)
        topic = frame[off + 2:off + 2 + tlen]
        off += 2 + tlen
        (nparts,) = struct.unpack_from(">i", frame, off)
        off += 4
        parts = []
        for _ in range(nparts):
            p, rlen = struct.unpack_from(">ii", frame, off)
            parts.append((p, frame[off + 8:off + 8 + max(rlen, 0)]))
            off += 8 + max(rlen, 0)
        topics.append((topic, parts))
    return prefix, topics


def produce_request(frame: bytes) -> tuple[int, int, int, list[tuple[bytes, list[int]]]] | None:
    """A Produce request (v3-v8) as (version, correlation id, acks, [(topic, [partitions])]);
    None for any other request."""
    cut = produce_sections(frame)
    if cut is None:
        return None
    prefix, topics = cut
    _api, version, corr, _clen = struct.unpack_from(">hhih", prefix, 0)
    acks = struct.unpack_from(">h", prefix, len(prefix) - 6)[0]
    return version, corr, acks, [(t, [p for p, _ in ps]) for t, ps in topics]


def acks_zero(frame: bytes) -> bool:
    """Whether a request is a Produce request with acks 0 (which gets no answer)."""
    api, _version, _corr, clen = struct.unpack_from(">hhih", frame, 0)
    if api != 0:
        return False
    off = 10 + max(clen, 0)
    (tx,) = struct.unpack_from(">h", frame, off)
    return bool(struct.unpack_from(">h", frame, off + 2 + max(tx, 0))[0] == 0)


class PartitionErrorFront(KafkaFront):
    """A TCP front for a broker that advertises it: requests piped to the broker one at a time
    per connection, and each Produce request's partitions that `code_for(topic, partition)`
    gives an error code for are answered with it, not passed on; the request's other partitions
    go to the broker and keep its answers (Kafka answers per partition: a request for several is
    written for those it can take). `refused` counts the partitions answered so. Subclasses
    that look at the records too override `_code`."""

    def __init__(self, upstream_port: int, code_for: Any = None) -> None:
        super().__init__(upstream_port)
        self.code_for = code_for
        self.refused = 0
        # (connection, correlation id) -> refused entries. Each client connection numbers its own
        # requests from 0: keyed by correlation id alone, a request of one connection (aiokafka's
        # producers, --kafka-connections 4) took another's refused entries into its answer, and
        # that other's answer lacked its refused partition, whose batch aiokafka then waited on
        # for ever (30 flows never delivered, the sink connected, about one run in ten under load)
        self._cut: dict[tuple[int, int], list[tuple[bytes, int, int | None]]] = {}
        self._cut_now: list[tuple[bytes, int, int | None]] | None = None   # (_answered, for _rewrite)

    def _code(self, topic: bytes, partition: int, records: bytes) -> int | None:
        """The error code the partition's entry (its record batch `records`) is answered with;
        None: the broker takes it."""
        return self.code_for(topic.decode(), partition)  # type: ignore[no-any-return]

    def _answer(self, frame: bytes) -> bytes | None:
        req = produce_request(frame)
        if req is None or req[2] == 0:
            return None
        version, corr, _acks, _topics = req
        cut = produce_sections(frame)
        assert cut is not None
        codes = [(t, p, self._code(t, p, recs)) for t, ps in cut[1] for p, recs in ps]
        if any(code is None for _t, _p, code in codes):
            return None   # (some go to the broker: _outgoing)
        return self._whole(version, corr, codes)

    def _whole(self, version: int, corr: int, codes: list[tuple[bytes, int, int | None]]) -> bytes:
        import aiokafka.protocol.produce as pr

        self.refused += len(codes)
        resp = getattr(pr, f"ProduceResponse_v{version}")(topics=[], throttle_time_ms=0)
        self._add(resp, version, codes)
        body = struct.pack(">i", corr) + bytes(resp.encode())
        return struct.pack(">i", len(body)) + body

    @staticmethod
    def _add(resp: Any, version: int, codes: list[tuple[bytes, int, int | None]]) -> None:
        extra: tuple[Any, ...] = (-1, -1) + ((-1,) if version >= 5 else ()) + (([], None) if version >= 8 else ())
        topics = {t: list(ps) for t, ps in resp.topics}
        for t, p, code in codes:
            topics.setdefault(t.decode(), []).append((p, code, *extra))
        resp.topics = list(topics.items())

    def _outgoing(self, conn: int, frame: bytes) -> bytes:
        req = produce_request(frame)
        if req is None or req[2] == 0:
            return frame
        cut_up = produce_sections(frame)
        assert cut_up is not None
        prefix, topics = cut_up
        keep, cut = [], []
        for t, ps in topics:
            kept = []
            for p, recs in ps:
                code = self._code(t, p, recs)
                if code is None:
                    kept.append((p, recs))
                else:
                    cut.append((t, p, code))
            if kept:
                keep.append((t, kept))
        if not cut:
            return frame
        self.refused += len(cut)
        self._cut[(conn, req[1])] = cut
        out = prefix + struct.pack(">i", len(keep))
        for t, ps in keep:
            out += struct.pack(">h", len(t)) + t + struct.pack(">i", len(ps))
            for p, recs in ps:
                out += struct.pack(">ii", p, len(recs)) + recs
        return out

    def _answered(self, conn: int, frame: bytes) -> None:
        # (_handle calls _rewrite next, for the same request, with no await between)
        req = produce_request(frame)
        self._cut_now = self._cut.pop((conn, req[1]), None) if req is not None else None

    def _rewrite(self, frame: bytes, answer: bytes) -> bytes:
        import aiokafka.protocol.produce as pr

        req = produce_request(frame)
        cut, self._cut_now = self._cut_now, None
        if req is not None and cut is not None:
            resp = getattr(pr, f"ProduceResponse_v{req[0]}").decode(answer[4:])
            self._add(resp, req[0], cut)
            return answer[:4] + bytes(resp.encode())
        return answer


class MaxBytesFront(PartitionErrorFront):
    """A front (PartitionErrorFront) whose broker takes record batches of at most `limit`
    bytes: each partition's batch over it is answered MESSAGE_TOO_LARGE (10), as a Kafka broker
    answers a batch over its message.max.bytes (or the topic's max.message.bytes: Kafka compares
    the batch as sent, compressed or not, with the limit), and the rest go to the broker;
    `refused` counts the batches answered so.

    `describe` says what DescribeConfigs (api 32) for a topic gets, `described` counts them:
    None, the broker's answer (Tansu 0.6: no config at all); "limit", an answer as Kafka's, the
    topic's max.message.bytes `limit` among its other configs; "error", the topic's entry with
    TOPIC_AUTHORIZATION_FAILED (29), as a broker whose ACLs deny DescribeConfigs on it;
    "garbage", a max.message.bytes that is no number; "closed", the connection closed on the
    request (as Tansu does with one naming configs); "silent", never an answer; "unserved", none
    asked: ApiVersions v0 answers (aiokafka's) leave api 32 out, as a broker older than Kafka
    0.11 that does not serve it."""

    DESCRIBE = (None, "limit", "error", "garbage", "closed", "silent", "unserved")

    def __init__(self, upstream_port: int, limit: int, describe: str | None = None) -> None:
        super().__init__(upstream_port)
        assert describe in self.DESCRIBE, describe
        self.limit = limit
        self.describe = describe
        self.described = 0

    def _code(self, topic: bytes, partition: int, records: bytes) -> int | None:
        return 10 if len(records) > self.limit else None

    async def _request(self, conn: int, frame: bytes) -> None:
        if struct.unpack_from(">h", frame, 0)[0] != 32:
            return
        self.described += 1
        if self.describe == "silent":
            await asyncio.Event().wait()   # (until stop())
        if self.describe == "closed":
            raise ConnectionResetError("DescribeConfigs: connection closed")

    def _rewrite(self, frame: bytes, answer: bytes) -> bytes:
        api, version = struct.unpack_from(">hh", frame, 0)
        if api != 18 or version != 0 or self.describe != "unserved":
            return super()._rewrite(frame, answer)
        import aiokafka.protocol.admin as ad

        resp = ad.ApiVersionResponse_v0.decode(answer[4:])
        resp.api_versions = [v for v in resp.api_versions if v[0] != 32]
        return answer[:4] + bytes(resp.encode())

    def _answer(self, frame: bytes) -> bytes | None:
        api, version, corr, clen = struct.unpack_from(">hhih", frame, 0)
        if api != 32 or self.describe not in ("limit", "error", "garbage"):
            return super()._answer(frame)
        import aiokafka.protocol.admin as ad

        assert version <= 2, version   # (what aiokafka asks with; v4 is a flexible version)
        req = getattr(ad, f"DescribeConfigsRequest_v{version}").decode(frame[10 + max(clen, 0):])
        value = str(self.limit) if self.describe == "limit" else "lots"
        resources = []
        for _rtype, name, _names in req.resources:
            configs = [("cleanup.policy", "delete"), ("max.message.bytes", value), ("segment.bytes", "1073741824")]
            if version == 0:   # (name, value, read only, is default, is sensitive)
                entries = [(k, v, False, False, False) for k, v in configs]
            else:              # (name, value, read only, source (1: the topic's own), is sensitive, synonyms)
                entries = [(k, v, False, 1, False, []) for k, v in configs]
            if self.describe == "error":
                resources.append((29, "Authorization failed.", 2, name, []))
            else:
                resources.append((0, None, 2, name, entries))
        resp = getattr(ad, f"DescribeConfigsResponse_v{version}")(throttle_time_ms=0, resources=resources)
        body = struct.pack(">i", corr) + bytes(resp.encode())
        return struct.pack(">i", len(body)) + body
