"""The collector process without Kafka: state file across restarts, allowlist, metrics, limits.

These use the file sink (the same queue and writer path as stdout) so they run without a broker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ROOT,
    corpus_file,
    free_tcp_port,
    free_udp_port,
    make_v5,
    send_udp,
    udp_payloads,
    wait_for,
)

from collector.util import popen_child
from tests.support.fake_kube import FakeKube, node
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture


def lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("capture,count", [
    ("ipfix/openbsd-pflow_ipfix.pcap", 26),            # template datagram, then 26 data records
    ("netflow9/cisco-asr9k_netflow9_tpl260.pcap", 21),  # v9 template 260, then 21 records
])
def test_state_file_restores_templates(collector: Any, tmp_path: Path, loop_name: str, capture: str,
                                       count: int) -> None:
    payloads = [p for _, _, p in udp_payloads(corpus_file(capture))]
    assert len(payloads) == 2
    state = tmp_path / "state.json"
    out = tmp_path / "flows.jsonl"
    args = ["--loop", loop_name, "--output-file", str(out), "--state-file", str(state), "--state-interval", "60"]
    # One exporter socket for both sends: the exporter (and its source port, which scopes its
    # templates) outlives the collector's restart, as Open vSwitch does.
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    exporter.bind(("127.0.0.1", 0))
    c1 = collector(args)
    send_udp(payloads[:1], c1.port, sock=exporter)  # templates only
    c1.wait_value("flowscope_datagrams_total", 1)
    assert c1.value("flowscope_templates") >= 1
    assert c1.stop() == 0  # saves at shutdown (the interval is longer than the test)
    assert state.exists() and lines(out) == 0
    c2 = collector(args)
    assert c2.value("flowscope_state_loads_total", result="ok") == 1
    send_udp(payloads[1:], c2.port, sock=exporter)  # data whose template was only seen before the restart
    wait_for(lambda: lines(out) == count, 10, what=f"{count} flows in the file")
    assert c2.value("flowscope_missing_template_sets_total") == 0
    c2.wait_value("flowscope_flows_delivered_total", count, sink="file")
    assert c2.stop() == 0
    exporter.close()


def test_a_restart_with_the_state_file_goes_on_with_the_exporters_sequences(collector: Any, tmp_path: Path) -> None:
    """The final save at shutdown keeps the exporters' sequence state, and the next start on
    the same host goes on with it: the 60 flows a NetFlow v5 exporter sent while the collector
    was down (numbered 60 to 119) are counted lost, as any other gap; without it the stream
    started over and they were not told."""
    state = tmp_path / "state.json"
    args = ["--output-file", str(tmp_path / "flows.jsonl"), "--state-file", str(state), "--state-interval", "60"]
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    exporter.bind(("127.0.0.1", 0))
    c1 = collector(args)
    send_udp([make_v5(0, 30, 0), make_v5(30, 30, 30)], c1.port, sock=exporter)
    c1.wait_value("flowscope_datagrams_total", 2)
    assert c1.stop() == 0
    assert json.loads(state.read_text())["sequences"]["exporters"]["127.0.0.1"]["streams"]
    c2 = collector(args)
    send_udp([make_v5(120, 30, 120)], c2.port, sock=exporter)
    c2.wait_value("flowscope_sequence_lost_total", 60)
    assert c2.value("flowscope_sequence_resets_total") == 0
    assert c2.stop() == 0
    exporter.close()


def test_replicas_sharing_the_state_file_take_over_an_exporter(collector: Any, tmp_path: Path) -> None:
    """Two replicas share one state file (deploy/README.md: a ReadWriteMany volume). The exporter
    sends its templates to A, which goes away (a rollout); its data then reaches B, already
    running, which never saw them: B meets data without a template, loads the templates A saved
    from the shared file, and decodes the exporter's next data. B's own saves keep A's templates
    of an exporter both know (review helper-84: B counted every set as missing until the
    exporter's next template refresh, 10 minutes for OVS, and its save dropped A's templates)."""
    payloads = [p for _, _, p in udp_payloads(corpus_file("ipfix/openbsd-pflow_ipfix.pcap"))]
    state = tmp_path / "state.json"
    args = ["--state-file", str(state), "--state-interval", "0.2"]
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    exporter.bind(("127.0.0.1", 0))
    a = collector(["--output-file", str(tmp_path / "a.jsonl"), *args])
    b = collector(["--output-file", str(tmp_path / "b.jsonl"), *args])
    send_udp([make_v5(0, 30, 0)], b.port)      # B writes the file too, with an exporter of its own
    b.wait_value("flowscope_flows_delivered_total", 30, sink="file")
    send_udp(payloads[:1], a.port, sock=exporter)  # the templates reach A only
    a.wait_value("flowscope_datagrams_total", 1)
    assert a.stop() == 0                       # saved at shutdown
    send_udp(payloads[1:], b.port, sock=exporter)  # failed over: data whose templates B never saw
    b.wait_value("flowscope_missing_template_sets_total", 1)
    wait_for(lambda: b.value("flowscope_state_loads_total", result="refresh") >= 1, 10, what="B reads A's save")
    send_udp(payloads[1:], b.port, sock=exporter)  # the exporter's next data
    wait_for(lambda: lines(tmp_path / "b.jsonl") == 30 + 26, 10, what="the failed-over exporter's flows")
    assert "templates of 1 exporter(s) that sent data without them loaded" in b.log()
    time.sleep(0.6)                            # B's saves since: A's templates are in the file
    saved = json.loads(state.read_text())["exporters"]
    assert {t["id"] for t in saved["127.0.0.1"]["templates"]} and b.stop() == 0
    c = collector(["--output-file", str(tmp_path / "c.jsonl"), *args])   # a replica started now has them
    send_udp(payloads[1:], c.port, sock=exporter)
    wait_for(lambda: lines(tmp_path / "c.jsonl") == 26, 10, what="flows decoded by a new replica")
    exporter.close()

def test_without_state_data_is_missing_template(collector: Any, tmp_path: Path) -> None:
    """The control for the test above: without the state file the same data cannot decode."""
    payloads = [p for _, _, p in udp_payloads(corpus_file("ipfix/openbsd-pflow_ipfix.pcap"))]
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out)])
    send_udp(payloads[1:], c.port)
    c.wait_value("flowscope_missing_template_sets_total", 1)
    assert c.value("flowscope_flows_delivered_total") == 0


def test_unwritable_state_file_keeps_running(collector: Any, tmp_path: Path) -> None:
    """A state file that cannot be written any more once running (here its directory removed; a
    full disk, a volume gone) is logged and counted, and the collector goes on. (A path that can
    never be written is refused at start: test_operator_review.)"""
    import shutil

    out = tmp_path / "flows.jsonl"
    d = tmp_path / "gone-dir"
    d.mkdir()
    c = collector(["--output-file", str(out), "--state-file", str(d / "state.json"), "--state-interval", "0.2"])
    shutil.rmtree(d)
    send_udp([make_v5(1, 30, 0)], c.port)
    wait_for(lambda: c.value("flowscope_state_saves_total", result="error") >= 2, 10, what="state save errors")
    send_udp([make_v5(2, 30, 30)], c.port)
    wait_for(lambda: lines(out) == 60, 10, what="60 flows despite the state errors")
    assert c.get("/healthz")[0] == 200
    assert "cannot write" in c.log()
    assert c.stop() == 0


def test_allowlist_drops_and_counts(collector: Any, tmp_path: Path) -> None:
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out), "--allow-exporters", "10.0.0.0/8,192.0.2.1"])
    send_udp([make_v5(i, 30, i * 30) for i in range(7)], c.port)
    c.wait_value("flowscope_datagrams_dropped_total", 7, reason="not_allowed")
    assert c.value("flowscope_datagrams_total") == 0
    assert lines(out) == 0
    # said in the log, once for the burst (review helper-84: a wrong allowlist looked like silence)
    assert c.log().count("which --allow-exporters does not list") == 1, c.log()
    c2 = collector(["--output-file", str(tmp_path / "f2.jsonl"), "--allow-exporters", "127.0.0.0/8"])
    send_udp([make_v5(i, 30, i * 30) for i in range(7)], c2.port)
    c2.wait_value("flowscope_flows_delivered_total", 210)
    assert c2.value("flowscope_datagrams_dropped_total") == 0


def test_exporter_rate_limit_refuses_and_counts(collector: Any, tmp_path: Path) -> None:
    """--max-exporter-rate 2: of 12 datagrams sent at once, the bucket's two pass (a few more
    if a slow machine spreads the sends over seconds); the rest are counted per exporter as
    rate_limited, and the exporter's sequence numbers report no loss for them."""
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out), "--max-exporter-rate", "2"])
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(12)], c.port)
    c.wait_value("flowscope_datagrams_total", 12, exporter="127.0.0.1", protocol="netflow5")
    limited = c.value("flowscope_decode_errors_total", exporter="127.0.0.1", protocol="netflow5",
                      reason="rate_limited")
    assert 6 <= limited <= 10
    c.wait_value("flowscope_flows_delivered_total", (12 - limited) * 30, sink="file")
    assert lines(out) == (12 - limited) * 30
    assert c.value("flowscope_sequence_lost_total") == 0
    assert "max-exporter-rate" in c.log()


def test_wrong_protocol_on_sflow_port(collector: Any, tmp_path: Path) -> None:
    """What a listener does not take (NetFlow on an sFlow port, NetFlow v1) is counted and
    logged, rate-limited, naming the source, so the operator can find the exporter."""
    c = collector(["--output-file", str(tmp_path / "f.jsonl")], schemes=("sflow",))
    send_udp([make_v5(1, 30, 0)] * 3, c.port)
    c.wait_value("flowscope_datagrams_dropped_total", 3, reason="wrong_protocol")
    wait_for(lambda: "datagram from 127.0.0.1 starting 0005" in c.log(), 10, what="the wrong_protocol log line")
    assert c.log().count("is not sflow") == 1   # one line per 10 s, not one per datagram
    assert "looks like NetFlow v5 (a netflow:// listener takes it)" in c.log()   # a port mix-up, said so


def test_metrics_match_what_was_sent(collector: Any, tmp_path: Path, loop_name: str) -> None:
    out = tmp_path / "flows.jsonl"
    c = collector(["--loop", loop_name, "--output-file", str(out), "--metrics-top-exporters", "1"])
    v5 = [make_v5(i, 20, i * 20) for i in range(50)]
    send_udp(v5, c.port)
    c.wait_value("flowscope_flows_delivered_total", 1000, sink="file")

    assert c.value("flowscope_datagrams_total", exporter="127.0.0.1", protocol="netflow5") == 50
    assert c.value("flowscope_flows_total", exporter="127.0.0.1", protocol="netflow5") == 1000
    assert c.value("flowscope_received_datagrams_total") == 50
    assert c.value("flowscope_received_bytes_total") == sum(map(len, v5))
    assert c.value("flowscope_decode_errors_total") == 0
    assert c.value("flowscope_kernel_receive_drops_total") == 0
    assert c.value("flowscope_queue_records") == 0
    assert c.value("flowscope_ready") == 1
    assert c.value("flowscope_socket_receive_buffer_bytes") > 0
    import platform

    version = project_version()
    assert c.value("flowscope_build_info", version=version, python=platform.python_version(), loop=loop_name) == 1
    assert f"flowscope {version} (Python" in c.log()
    assert lines(out) == 1000
    assert c.get("/healthz")[0] == 200 and c.get("/readyz") == (200, "ready\n")
    # the fixed-label counters exist at 0 before their first event (alerts on increase() or == 0)
    text = c.get("/metrics")[1]
    for series in ('flowscope_flows_dropped_total{reason="queue_full"} 0.0',
                   'flowscope_datagrams_dropped_total{reason="wrong_protocol"} 0.0'):
        assert series in text, series


def test_queued_flows_and_counter_records_each_add_up(collector: Any) -> None:
    """--counters: decoded = delivered + dropped + queued holds for flows and for sFlow counter
    records separately, also while both wait for a sink (stdout into a pipe nobody reads):
    flowscope_queue_records counts flows only, flowscope_counter_records_queued the counter records."""
    from test_sflow import counter_sample, datagram, eth, flow_sample, generic_if, ipv4, raw_header, tcp

    c = collector(["--sink", "stdout", "--counters", "--stats-interval", "0.2"], schemes=("sflow",),
                  stdout=subprocess.PIPE)   # never read: the pipe fills and the rest waits
    payloads = []
    for i in range(600):
        g, _ = generic_if(100 + i)
        pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000 + i, 80, 0x10)), 0x0800)
        payloads.append(datagram([counter_sample([g], seq=500 + i, src=(0, 100 + i)),
                                  flow_sample([raw_header(pkt, 60)], seq=900 + i)], seq=i + 1))
    send_udp(payloads, c.port)
    c.wait_value("flowscope_counter_records_total", 600)
    c.wait_value("flowscope_flows_total", 600)
    time.sleep(0.5)
    from collector.metrics import total

    snap = c.metrics()
    flows_q, counters_q = total(snap, "flowscope_queue_records"), total(snap, "flowscope_counter_records_queued")
    assert flows_q > 0 and counters_q > 0, (flows_q, counters_q)   # both still wait
    assert (total(snap, "flowscope_flows_total") - total(snap, "flowscope_flows_delivered_total")
            - total(snap, "flowscope_flows_dropped_total")) == flows_q
    assert (total(snap, "flowscope_counter_records_total") - total(snap, "flowscope_counter_records_delivered_total")
            - total(snap, "flowscope_counter_records_dropped_total")) == counters_q
    c.proc.kill()


def test_flows_lost_before_the_collector_are_counted_from_sequence_numbers(collector: Any, tmp_path: Path) -> None:
    """NetFlow v5's flow_sequence counts the flows an engine exported: a jump is what never
    reached flowscope (loss on the network, not in its socket: kernel drops stay 0)."""
    c = collector(["--output-file", str(tmp_path / "f.jsonl")])
    send_udp([make_v5(0, 20, 0), make_v5(20, 20, 20), make_v5(100, 20, 100)], c.port)
    c.wait_value("flowscope_flows_total", 60, exporter="127.0.0.1", protocol="netflow5")
    c.wait_value("flowscope_sequence_lost_total", 60, exporter="127.0.0.1", protocol="netflow5")
    assert c.value("flowscope_sequence_resets_total") == 0
    assert c.value("flowscope_kernel_receive_drops_total") == 0


def test_queue_bound_counts_drops_with_file_sink(collector: Any, tmp_path: Path) -> None:
    """A sink that cannot write (a FIFO nobody reads) fills the queue; the excess is counted."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the collector open it, never read
    try:
        c = collector(["--output-file", str(fifo), "--queue-bytes", "64KB", "--shutdown-timeout", "1"])
        send_udp([make_v5(i, 30, i * 30) for i in range(400)], c.port)
        c.wait_value("flowscope_flows_total", 12000)
        wait_for(lambda: c.value("flowscope_flows_delivered_total") + c.value("flowscope_flows_dropped_total")
                 + c.value("flowscope_queue_records") == 12000, 10, what="every flow accounted for")
        assert c.value("flowscope_flows_dropped_total", reason="queue_full") > 0
        assert c.value("flowscope_queue_bytes") <= 64000
    finally:
        os.close(reader_fd)


@pytest.mark.parametrize("sink", ["file", "stdout"])
def test_short_write_counts_exactly_what_landed(collector: Any, tmp_path: Path, sink: str) -> None:
    """A disk that fills mid-write (here RLIMIT_FSIZE: the kernel accepts part of a write, then
    refuses with EFBIG, as a full disk does with ENOSPC): delivered is exactly the whole lines in
    the file, the file holds no partial line, and the rest is counted as sink_error. With space
    again, writing goes on after the last whole line: for the file sink (O_APPEND) and for stdout
    redirected to a file without O_APPEND (a shell's `>`), where a cut-back file must not leave
    a hole of NULs."""
    import json
    import resource

    limit = 150_000

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    if sink == "file":
        out = tmp_path / "flows.jsonl"
        c = collector(["--output-file", str(out)], preexec=small_files)
    else:
        c = collector(["--sink", "stdout"], preexec=small_files)
        out = c.out_path   # opened "wb" by the test: O_TRUNC, no O_APPEND
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(40)], c.port)
    c.wait_value("flowscope_flows_total", 1200)
    wait_for(lambda: c.value("flowscope_flows_delivered_total") + c.value("flowscope_flows_dropped_total") == 1200,
             10, what="every flow delivered or dropped")
    data = out.read_bytes()
    assert 0 < len(data) <= limit and data.endswith(b"\n")
    got = [json.loads(line) for line in data.splitlines()]
    assert len(got) == c.value("flowscope_flows_delivered_total", sink=sink)
    lost = c.value("flowscope_flows_dropped_total", reason="sink_error")
    assert lost == 1200 - len(got) > 0
    resource.prlimit(c.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    time.sleep(0.7)    # the sink pauses 0.5 s after a failed write
    send_udp([make_v5(1200 + i * 30, 30, 1200 + i * 30) for i in range(5)], c.port)
    wait_for(lambda: c.value("flowscope_flows_delivered_total") + c.value("flowscope_flows_dropped_total") == 1350,
             10, what="the later flows delivered")
    data = out.read_bytes()
    assert b"\0" not in data
    got = [json.loads(line) for line in data.splitlines()]
    assert len(got) == c.value("flowscope_flows_delivered_total", sink=sink) == 1350 - lost


def test_stdout_stalled_reader_shutdown_deadline_and_count(collector: Any) -> None:
    """SIGTERM while writing into a slow pipe: the process ends without waiting for the reader,
    and what the reader got is what was counted delivered, give or take the one PIPE_BUF piece
    (4096 bytes of whole lines) blocked at the deadline."""
    import signal
    import threading

    c = collector(["--sink", "stdout", "--shutdown-timeout", "1"], stdout=subprocess.PIPE)
    proc = c.proc
    assert proc.stdout is not None
    got = [0]

    def slow_reader() -> None:  # about 160 KB/s: the 5 MB sent would take it half a minute
        while True:
            b = proc.stdout.read1(16384)  # type: ignore[union-attr]
            if not b:
                return
            got[0] += b.count(b"\n")
            time.sleep(0.1)

    t = threading.Thread(target=slow_reader)
    t.start()
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(400)], c.port)   # 12,000 flows, ~5 MB
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    # the reader would need half a minute for the rest: a collector waiting for it (the write it
    # could not stop) would not have ended within the 20 s allowed here
    assert proc.wait(20) == 0
    t.join(30)
    m = re.search(r"stopped: (\d+) flows delivered to stdout, (\d+) dropped", c.log())
    assert m, c.log()
    delivered, dropped = int(m.group(1)), int(m.group(2))
    assert delivered + dropped == 12000 and dropped > 0
    assert delivered <= got[0] <= delivered + 4096 // 300, (delivered, got[0])


@pytest.mark.parametrize("workers", [1, 2])
def test_stdout_closed_by_its_reader_stops_the_collector(collector: Any, workers: int) -> None:
    """`flowscope run | head`: once the reader has closed the pipe nothing written to it can
    ever be read, so the collector stops as a pipeline's writer does (exit 1, saying why)
    instead of running on, unready, with every flow dropped. What it had counted delivered is
    what the reader took at most, and every flow sent is delivered or counted dropped."""
    c = collector(["--sink", "stdout", "--workers", str(workers)], stdout=subprocess.PIPE)
    proc = c.proc
    assert proc.stdout is not None
    send_udp([make_v5(0, 30, 0)], c.port)
    assert proc.stdout.readline().startswith(b"{")
    proc.stdout.close()   # the reader goes, like `head -1`
    # one burst, in the listener's receive buffer before the collector has written any of it
    # (the collector paused while it arrives: on a loaded machine the stop could otherwise
    # close the socket before the last datagrams are sent): what the stop finds there is still
    # decoded, so every flow sent is counted one way or the other
    pids = [proc.pid] + [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        send_udp([make_v5(30 * i, 30, 30 * i) for i in range(1, 21)], c.port)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert proc.wait(20) == 1, c.log()
    log = c.log()
    assert "stdout was closed by its reader" in log, log
    stopped = re.findall(r"stopped: (\d+) flows delivered to stdout, (\d+) dropped", log)
    assert len(stopped) == workers, log
    delivered = sum(int(d) for d, _ in stopped)
    dropped = sum(int(x) for _, x in stopped)
    assert 1 <= delivered <= 30 and delivered + dropped == 21 * 30, (delivered, dropped)
    # a worker that stopped (its listeners closed) and sent its final report before exiting lost
    # nothing the supervisor does not know of: it must not say otherwise, nor count it dropped
    assert "not known" not in log and "worker_died" not in log, log


def test_sigterm_decodes_what_the_socket_buffer_holds(collector: Any, tmp_path: Path) -> None:
    """Datagrams already in the listener's receive buffer when SIGTERM arrives are decoded and
    delivered, not discarded with the socket (the collector is paused while they arrive, so
    all of them wait in the kernel's buffer at the signal)."""
    import signal

    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out), "--shutdown-timeout", "10"])
    n = 1000   # an event loop reads a few dozen datagrams per turn before the stop runs
    if c.value("flowscope_socket_receive_buffer_bytes") < n * 4096:
        pytest.skip("the kernel granted less than 4 MB of SO_RCVBUF (not root and net.core.rmem_max small): "
                    f"{n} datagrams cannot wait in it")
    c.proc.send_signal(signal.SIGSTOP)
    try:
        send_udp([make_v5(i * 30, 30, i * 30) for i in range(n)], c.port)
        c.proc.send_signal(signal.SIGTERM)
    finally:
        c.proc.send_signal(signal.SIGCONT)
    assert c.proc.wait(30) == 0
    assert lines(out) == 30 * n
    assert f"{30 * n} flows delivered to file, 0 dropped" in c.log()


def test_datagrams_arriving_during_shutdown_are_counted(collector: Any) -> None:
    """Exporters keep sending after SIGTERM while the collector drains its sink: what arrives
    once the receive queues are empty is read and counted as datagrams_dropped{reason=
    "shutdown"} until the sockets close, not left unread in a socket about to be closed (the
    sink here cannot deliver, so the shutdown lasts until its deadline)."""
    import signal

    c = collector(["--sink", "stdout", "--shutdown-timeout", "3"], stdout=subprocess.PIPE)
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(20)], c.port)     # 600 flows: more than the pipe holds
    c.wait_value("flowscope_flows_total", 600)
    c.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping: decoding what the listeners hold" in c.log(), 10, what="the stop to begin")
    # from the stop on, /readyz says so (a probe must not keep sending here) and the listener is down
    wait_for(lambda: c.get("/readyz")[0] == 503, 10, what="/readyz 503 while stopping")
    assert "shutting down" in c.get("/readyz")[1]
    assert c.value("flowscope_listener_up") == 0
    n = 200
    send_udp([make_v5((20 + i) * 30, 30, (20 + i) * 30) for i in range(n)], c.port)
    assert c.proc.wait(30) == 0
    log_text = c.log()
    delivered, dropped, refused = _stop_counts(log_text)
    assert delivered + dropped + 30 * refused == 30 * (20 + n), log_text
    assert refused > 0


def _stop_counts(log_text: str) -> tuple[int, int, int]:
    """A stdout collector's stop log: flows delivered, flows dropped, datagrams read at shutdown
    and not decoded (0 when it logged none)."""
    m = re.search(r"stopped: (\d+) flows delivered to stdout, (\d+) dropped", log_text)
    assert m, log_text
    m2 = re.search(r"(\d+) datagrams were read and not decoded", log_text)
    return int(m.group(1)), int(m.group(2)), int(m2.group(1)) if m2 else 0


def _stalled_stop(collector: Any, args: list[str], exporter: socket.socket) -> Any:
    """A collector given 20 NetFlow v5 datagrams of 30 flows from `exporter` (more than its
    stdout pipe, which nobody reads, holds: the sink stalls, the drain waits), then SIGTERM: it
    has stopped decoding, and is draining."""
    c1 = collector(args, stdout=subprocess.PIPE)
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(20)], c1.port, sock=exporter)
    c1.wait_value("flowscope_flows_total", 600)
    c1.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: c1.value("flowscope_listener_up") == 0, 10, what="the listener to stop decoding")
    return c1


def _next_run_loss(collector: Any, tmp_path: Path, state: Path, exporter: socket.socket,
                   first: int) -> tuple[Any, float]:
    """A next run on `state` given the exporter's NetFlow v5 datagram of sequence `first` * 30
    (30 flows): the run and the flows it counts lost before it, as one gap from where the saved
    stream left off (counted whole once it has waited a second for late datagrams)."""
    c2 = collector(["--output-file", str(tmp_path / "flows.jsonl"), "--state-file", str(state),
                    "--state-interval", "60"])
    send_udp([make_v5(first * 30, 30, first * 30)], c2.port, sock=exporter)
    c2.wait_value("flowscope_flows_delivered_total", 30, sink="file")
    wait_for(lambda: c2.value("flowscope_sequence_lost_total", exporter="127.0.0.1", protocol="netflow5") > 0,
             10, what="the loss while down counted")
    return c2, c2.value("flowscope_sequence_lost_total", exporter="127.0.0.1", protocol="netflow5")


def test_datagrams_dropped_at_shutdown_are_not_counted_lost_by_the_next_run(collector: Any, tmp_path: Path) -> None:
    """A NetFlow v5 exporter keeps sending while the collector stops (the sink cannot deliver,
    so the stop lasts until its deadline), and after: every flow it numbered is counted once
    over the two runs, as delivered, dropped (its datagram read at shutdown, or the flow
    queued at the deadline) or lost (sent while the collector was down). The final save came
    before the last reads at shutdown: the next run, going on from it, counted the datagrams
    dropped then as lost too (the 300 sent while down, plus 30 for each of those)."""
    state = tmp_path / "state.json"
    args = ["--sink", "stdout", "--shutdown-timeout", "3", "--state-file", str(state), "--state-interval", "60"]
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    exporter.bind(("127.0.0.1", 0))
    c1 = collector(args, stdout=subprocess.PIPE)
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(20)], c1.port, sock=exporter)  # more than the pipe holds
    c1.wait_value("flowscope_flows_total", 600)
    c1.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: c1.value("flowscope_listener_up") == 0, 10, what="the listener to stop decoding")
    n = 200
    send_udp([make_v5((20 + i) * 30, 30, (20 + i) * 30) for i in range(n)], c1.port, sock=exporter)
    assert c1.proc.wait(30) == 0
    log_text = c1.log()
    delivered, dropped, refused = _stop_counts(log_text)
    assert refused > 0, log_text
    # 10 datagrams (300 flows) sent while no collector runs, then one the next run decodes
    first = 20 + n + 10
    c2, lost = _next_run_loss(collector, tmp_path, state, exporter, first)
    assert c2.value("flowscope_sequence_resets_total") == 0
    assert delivered + dropped + 30 * refused + 30 + lost == 30 * (first + 1), (lost, refused)
    assert c2.stop() == 0
    exporter.close()


def test_a_kill_during_the_shutdown_drain_leaves_the_sequence_state_and_counts_each_loss_once(
        collector: Any, tmp_path: Path) -> None:
    """SIGKILL while the stop drains a sink that cannot deliver (a Kubernetes grace period
    shorter than the drain): the save made as the decoding ended is on disk with the exporters'
    sequence state, so the next run goes on with the stream and counts the flows sent while no
    collector decoded them lost: those the killed run read and refused during its drain (it never
    counted them: held for its final save, which the kill prevented) and those sent while it was
    down. Before, the only save with the sequence state came at the end of the stop: the kill
    left none, and the next run started the stream over and counted nothing."""
    state = tmp_path / "state.json"
    # (the periodic saves, every 60 s, keep no sequence state and come after the test anyway)
    args = ["--sink", "stdout", "--shutdown-timeout", "60", "--state-file", str(state), "--state-interval", "60"]
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    exporter.bind(("127.0.0.1", 0))
    c1 = _stalled_stop(collector, args, exporter)
    wait_for(lambda: state.exists() and "127.0.0.1" in json.loads(state.read_text()).get("sequences", {})
             .get("exporters", {}), 10, what="the save as the stop began")
    n = 50
    send_udp([make_v5((20 + i) * 30, 30, (20 + i) * 30) for i in range(n)], c1.port, sock=exporter)
    c1.wait_value("flowscope_received_datagrams_total", 20 + n)
    # read and refused, held for the final save: this run has not counted them (it is not to,
    # once killed: the next run does)
    assert c1.value("flowscope_datagrams_dropped_total", reason="shutdown") == 0
    assert c1.proc.poll() is None, "the drain ended before the kill"
    c1.proc.kill()
    c1.proc.wait(10)
    assert "stopped:" not in c1.log()
    # 10 datagrams (300 flows) sent while no collector runs, then one the next run decodes
    first = 20 + n + 10
    c2, lost = _next_run_loss(collector, tmp_path, state, exporter, first)
    assert lost == 30 * (n + 10)
    assert c2.value("flowscope_sequence_resets_total") == 0
    assert c2.stop() == 0
    exporter.close()


def test_refusals_at_shutdown_are_counted_at_once_when_the_save_as_the_stop_began_failed(
        collector: Any, tmp_path: Path) -> None:
    """The datagrams refused during the drain are held for the final save only while the save
    made as the decoding ended is on disk (the next run would count them lost from it). One that
    failed (here the state file's directory removed; a full disk) carries none of them: they are
    counted as shutdown drops at once, as without a state file, and a kill then still leaves
    them counted by the run that saw them (if scraped) rather than by no run at all."""
    import shutil

    d = tmp_path / "state-dir"
    d.mkdir()
    args = ["--sink", "stdout", "--shutdown-timeout", "60", "--state-file", str(d / "state.json"),
            "--state-interval", "60"]
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    exporter.bind(("127.0.0.1", 0))
    c = collector(args, stdout=subprocess.PIPE)     # nobody reads: the sink stalls, the drain waits
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(20)], c.port, sock=exporter)
    c.wait_value("flowscope_flows_total", 600)
    shutil.rmtree(d)
    c.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: c.value("flowscope_listener_up") == 0, 10, what="the listener to stop decoding")
    wait_for(lambda: c.value("flowscope_state_saves_total", result="error") >= 1, 10, what="the first save to fail")
    n = 20
    send_udp([make_v5((20 + i) * 30, 30, (20 + i) * 30) for i in range(n)], c.port, sock=exporter)
    c.wait_value("flowscope_datagrams_dropped_total", n, reason="shutdown")
    assert c.proc.poll() is None, "the drain ended before the refusals were counted"
    exporter.close()


def test_sequence_counts_after_the_save_as_the_stop_began_are_left_to_the_next_run_after_a_kill(
        collector: Any, tmp_path: Path) -> None:
    """An IPFIX exporter numbering as RFC 7011 3.1 does: a template-only first message (number 0),
    then 10 records numbered 10 (the 10 before them were never sent: lost, by construction),
    a loss held while the numbering is undecided. The stop's first save carries the held loss;
    a message read and refused after it (5 records numbered 20) votes for the RFC's reading,
    which decides the held 10. The process is then killed (the sink cannot deliver, so the drain
    waits): the next run goes on from that save, and counts the held 10 at its own votes and the
    refused message's 5 as lost (the killed run never counted it). So the killed run's metrics
    must not count the 10 as well: from that save on they are held as they were then (until a
    final save is written). Over the two runs: 15, what was never sent or never counted. Before,
    the killed run's metrics counted the 10 at the refused message's vote: 25."""
    import random

    from benchmarks.datagrams import OVS_INGRESS, data_set, ipfix_message, ovs_flows, template_set

    rng = random.Random(60)

    def data(seq: int, n: int) -> bytes:
        return ipfix_message([data_set(OVS_INGRESS, ovs_flows(n, rng))], seq=seq, export_time=int(time.time()))

    state = tmp_path / "state.json"
    args = ["--sink", "stdout", "--shutdown-timeout", "60", "--state-file", str(state), "--state-interval", "60"]
    v5 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v5.bind(("127.0.0.1", 0))
    exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    exporter.bind(("127.0.0.1", 0))
    c1 = collector(args, stdout=subprocess.PIPE)    # nobody reads: the sink stalls, the drain waits
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(20)], c1.port, sock=v5)    # more than the pipe holds
    send_udp([ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=int(time.time())), data(10, 10)],
             c1.port, sock=exporter)
    c1.wait_value("flowscope_flows_total", 610)
    assert c1.value("flowscope_sequence_lost_total", protocol="ipfix") == 0    # held
    c1.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: c1.value("flowscope_listener_up") == 0, 10, what="the listener to stop decoding")
    wait_for(lambda: state.exists() and "127.0.0.1" in json.loads(state.read_text()).get("sequences", {})
             .get("exporters", {}), 10, what="the save as the stop began")
    send_udp([data(20, 5)], c1.port, sock=exporter)
    c1.wait_value("flowscope_received_datagrams_total", 23)
    # (the snapshot that counts the refused message received is one taken after it was refused;
    # summed over the exporter labels: the next run showed part of this exporter's counts under
    # "other")
    lost1 = c1.value("flowscope_sequence_lost_total", protocol="ipfix")
    assert c1.proc.poll() is None, "the drain ended before the kill"
    c1.proc.kill()
    c1.proc.wait(10)
    c2 = collector(["--output-file", str(tmp_path / "flows.jsonl"), "--state-file", str(state),
                    "--state-interval", "60"])
    send_udp([data(25, 8), data(33, 4)], c2.port, sock=exporter)
    c2.wait_value("flowscope_flows_delivered_total", 12, sink="file")
    wait_for(lambda: lost1 + c2.value("flowscope_sequence_lost_total", protocol="ipfix")
             >= 15, 10, what="the held loss and the refused message counted")
    assert (lost1, c2.value("flowscope_sequence_lost_total", protocol="ipfix")) == (0, 15)
    assert c2.stop() == 0
    v5.close()
    exporter.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs (a disk the test fills)")
def test_refusals_are_left_to_the_next_run_when_the_final_save_fails_after_the_save_as_the_stop_began(
        collector: Any, tmp_path: Path) -> None:
    """The save made as the decoding ended is on disk, then the disk fills (here a 1 MB tmpfs
    the test fills) and the final save fails: the file the next run goes on from is that first
    save, so the datagrams refused after it are counted lost by the next run (it starts within
    the sequence state's 5 minutes), as after a kill, and the stopping run must not count them as
    shutdown drops as well. Every flow the exporter numbered is counted once over the two runs:
    delivered, dropped, refused at shutdown or lost. Before, the stopping run counted the
    refusals as shutdown drops at its end and the next run counted them lost again."""
    d = tmp_path / "state-dir"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        state = d / "state.json"
        args = ["--sink", "stdout", "--shutdown-timeout", "6", "--state-file", str(state), "--state-interval", "60"]
        exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        exporter.bind(("127.0.0.1", 0))
        c1 = _stalled_stop(collector, args, exporter)
        c1.wait_value("flowscope_state_saves_total", 1, result="ok")     # (the periodic saves come after the test)
        assert "127.0.0.1" in json.loads(state.read_text())["sequences"]["exporters"]
        fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)     # the disk fills: the final save cannot be written
        try:
            while os.write(fd, b"\0" * 65536):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        n = 20
        send_udp([make_v5((20 + i) * 30, 30, (20 + i) * 30) for i in range(n)], c1.port, sock=exporter)
        c1.wait_value("flowscope_received_datagrams_total", 20 + n)
        assert c1.proc.wait(30) == 0
        log_text = c1.log()
        assert "state: cannot write" in log_text, log_text
        delivered, dropped, refused = _stop_counts(log_text)
        (d / "filler").unlink()
        # 10 datagrams (300 flows) sent while no collector runs, then one the next run decodes
        first = 20 + n + 10
        c2, lost = _next_run_loss(collector, tmp_path, state, exporter, first)
        assert lost == 30 * (n + 10)
        assert delivered + dropped + 30 * refused + 30 + lost == 30 * (first + 1), (lost, refused)
        assert c2.stop() == 0
        exporter.close()
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_stops_cleanly_like_sigterm(collector: Any, tmp_path: Path, workers: int) -> None:
    """A closed terminal sends SIGHUP to the whole process group: the collector (supervisor and
    workers) drains, delivers and counts as on SIGTERM instead of dying with records in flight."""
    import signal

    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out), "--workers", str(workers)])
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(10)], c.port)
    c.wait_value("flowscope_flows_total", 300)
    children = Path(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children").read_text().split()
    assert len(children) == (workers if workers > 1 else 0)
    for pid in [c.proc.pid, *map(int, children)]:   # as the terminal's process group gets it
        os.kill(pid, signal.SIGHUP)
    assert c.proc.wait(30) == 0
    assert lines(out) == 300
    assert "stopping: decoding what the listeners hold" in c.log()


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its new parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_hung_worker_fails_readiness_then_liveness(collector: Any, tmp_path: Path) -> None:
    """With --workers N the kernel keeps giving a hung worker (event loop stopped) its share of
    the exporters, and the supervisor's probes run elsewhere: a worker silent for more than
    10 s + 3 stats intervals fails /readyz, and for three times that /healthz, so the pod
    leaves the Service and is then restarted."""
    import signal

    c = collector(["--output-file", str(tmp_path / "flows.jsonl"), "--workers", "2", "--stats-interval", "0.2"])
    children = [int(p) for p in Path(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children").read_text().split()]
    assert len(children) == 2 and c.get("/healthz")[0] == 200
    os.kill(children[1], signal.SIGSTOP)
    try:
        time.sleep(5)
        assert c.get("/readyz")[0] == 200      # not yet: a busy loop is not a hung one
        wait_for(lambda: c.get("/readyz")[0] == 503, 15, what="/readyz 503 for a hung worker")
        assert "(hung?)" in c.get("/readyz")[1]
        assert c.get("/healthz")[0] == 200     # liveness waits three times as long
        wait_for(lambda: c.get("/healthz")[0] == 503, 30, what="/healthz 503 for a hung worker")
        assert "no report for" in c.get("/healthz")[1]
    finally:
        os.kill(children[1], signal.SIGCONT)
    wait_for(lambda: c.get("/healthz")[0] == 200 and c.get("/readyz")[0] == 200, 10, what="recovered")


def test_a_killed_workers_flows_are_counted_not_lost_silently(collector: Any) -> None:
    """With --workers N a worker that dies (SIGKILL, the OOM killer) takes the flows it held
    with it: the supervisor counts what its last report held as dropped (worker_died), says so
    in the log, and stops the others (review helper-79: they were neither delivered nor
    counted anywhere)."""
    c = collector(["--sink", "stdout", "--workers", "2", "--stats-interval", "0.2"], stdout=subprocess.PIPE)
    children = [int(p) for p in Path(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children").read_text().split()]
    assert len(children) == 2
    # nobody reads stdout: the pipe fills and the flows wait in the worker that got them
    send_udp([make_v5(30 * i, 30, 30 * i) for i in range(40)], c.port)
    wait_for(lambda: c.value("flowscope_queue_records") > 0, 10, what="flows queued")
    queued = -1.0
    while queued != c.value("flowscope_queue_records"):   # settled: the pipe is full
        queued = c.value("flowscope_queue_records")
        time.sleep(1.0)
    assert c.value("flowscope_flows_dropped_total", reason="worker_died") == 0
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    assert c.proc.wait(30) == 1
    log = c.log()
    held = [int(n) for n in re.findall(r"died holding (\d+) flow records", log)]
    empty = re.findall(r"exited with code -?\d+ holding no flow records", log)   # (the kernel's hash
    assert len(held) + len(empty) == 2 and sum(held) == queued > 0, log          # may give one all)


def test_a_worker_that_fails_to_start_is_not_said_to_lose_flows(collector: Any, tmp_path: Path) -> None:
    """A worker that exits at start-up (an output file it cannot open) held nothing: its own
    error says why, and the supervisor does not add that flows were lost and counted as dropped
    (review helper-84)."""
    c = collector(["--output-file", str(tmp_path / "missing-dir" / "out.jsonl"), "--workers", "2"], wait_ready=False)
    assert c.proc.wait(30) == 2
    log = c.log()
    assert "cannot open" in log and "counted as dropped" not in log, log


def test_a_sink_that_fails_every_record_makes_the_collector_unready(collector: Any) -> None:
    """A sink that drops what it is given (here a full disk: /dev/full) has nothing waiting, so
    "stalled" never shows it: failing every record for max(10 s, ...) makes /readyz fail while
    failures keep coming, with the reason and flowscope_sink_failing_seconds."""
    c = collector(["--output-file", "/dev/full", "--stats-interval", "0.2"])
    assert c.get("/readyz")[0] == 200
    deadline = time.monotonic() + 30
    i = 0
    while time.monotonic() < deadline and c.get("/readyz")[0] == 200:
        send_udp([make_v5(i * 30, 30, i * 30)], c.port)
        i += 1
        time.sleep(0.5)
    code, text = c.get("/readyz")
    assert code == 503 and "sink failed every flow for" in text, text
    assert c.value("flowscope_sink_failing_seconds") >= 10
    assert c.value("flowscope_flows_dropped_total", reason="sink_error") > 0
    assert c.value("flowscope_flows_delivered_total") == 0


def test_a_second_collector_cannot_share_the_workers_port(collector: Any, tmp_path: Path) -> None:
    """--workers N shares each port through SO_REUSEPORT, which a second collector (of the same
    user) could join, silently taking part of the exporters: it must refuse to start instead."""
    c = collector(["--output-file", str(tmp_path / "a.jsonl"), "--workers", "2"])
    r = run_cli(["run", "--workers", "2", "--listen", f"netflow://127.0.0.1:{c.port}", "--output-file",
                 str(tmp_path / "b.jsonl"), "--metrics-addr", f"127.0.0.1:{free_tcp_port()}"], tmp_path, timeout=30)
    assert r.returncode == 2, r.stderr
    assert f"listener netflow://127.0.0.1:{c.port}: cannot bind" in r.stderr and "another collector" in r.stderr
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(4)], c.port)
    c.wait_value("flowscope_flows_total", 120)   # all of it reached the first one


def test_workers_stop_when_the_supervisor_is_killed(collector: Any, tmp_path: Path) -> None:
    """A supervisor killed outright (SIGKILL: the OOM killer, `kill -9`) cannot tell its workers:
    they get SIGTERM from the kernel, deliver what they hold and exit, instead of keeping their
    SO_REUSEPORT sockets and silently taking a share of the next collector's datagrams."""
    import signal

    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out), "--workers", "2"])
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(10)], c.port)
    c.wait_value("flowscope_flows_total", 300)
    children = [int(p) for p in Path(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children").read_text().split()]
    assert len(children) == 2
    os.kill(c.proc.pid, signal.SIGKILL)
    c.proc.wait(10)
    deadline = time.monotonic() + 30
    while any(_running(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(p) for p in children), c.log()
    assert lines(out) == 300
    # nothing holds the port any more: a socket without SO_REUSEPORT can bind it
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", c.port))
    finally:
        s.close()


# ------------------------------------------------------------------------------------------------
# Cluster access for enrichment: decided and checked once, before any worker is forked


def run_cli(args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`flowscope ARGS` to completion, with the environment of a laptop (no pod, no ~/.kube)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWSCOPE_", "KUBE"))}
    full.update({"PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "collector.cli", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)


def project_version() -> str:
    """[project] version in pyproject.toml (read as text: tomllib is not in Python 3.10)."""
    m = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m
    return m.group(1)


def test_version_is_the_packages(tmp_path: Path) -> None:
    r = run_cli(["--version"], tmp_path)
    version = project_version()
    assert r.returncode == 0 and r.stdout.strip() == f"flowscope {version}", (r.stdout, r.stderr)


def no_kube_config(tmp_path: Path) -> Path:
    """A kubeconfig that parses but names no current-context (as `kubectl config` leaves one)."""
    p = tmp_path / "empty.kubeconfig"
    p.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    return p


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("which", ["missing", "no-current-context"])
def test_unusable_kubeconfig_is_a_configuration_error(tmp_path: Path, workers: int, which: str) -> None:
    kc = str(tmp_path / "nonexistent") if which == "missing" else str(no_kube_config(tmp_path))
    r = run_cli(["run", "--kubeconfig", kc, "--workers", str(workers), "--listen",
                 f"netflow://127.0.0.1:{free_udp_port()}", "--metrics-addr", f"127.0.0.1:{free_tcp_port()}"],
                tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "exited unexpectedly" not in r.stderr
    assert r.stderr.startswith(f"flowscope: configuration error: enrich.kubeconfig (from --kubeconfig): {kc}: "), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    want = "no such file" if which == "missing" else "current-context"
    assert want in r.stderr


def test_kubeconfig_path_with_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               fake_kube: FakeKube) -> None:
    """The kubernetes client expands ~ in a kubeconfig path (a YAML config or an unexpanded
    variable has one): the start-up check must find the same file, not refuse it."""
    import enrich
    from collector.app import kube_access_error

    home = tmp_path / "home"
    home.mkdir()
    fake_kube.write_kubeconfig(home / "kc")
    monkeypatch.setenv("HOME", str(home))
    assert kube_access_error(enrich.EnrichConfig(kubeconfig="~/kc")) is None
    assert "no such file" in (kube_access_error(enrich.EnrichConfig(kubeconfig="~/other")) or "")


def test_enrich_true_without_any_cluster_access_is_a_configuration_error(tmp_path: Path) -> None:
    r = run_cli(["run", "--enrich", "true", "--listen", f"netflow://127.0.0.1:{free_udp_port()}"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "enrich.enabled (from --enrich) is true but there is no cluster access" in r.stderr


def test_auto_enrichment_is_off_with_only_home_kube_config(collector: Any, tmp_path: Path,
                                                             fake_kube: FakeKube) -> None:
    """docs/collector.md: auto is on in a pod or with --kubeconfig / $KUBECONFIG; a laptop's
    ~/.kube/config alone must not make `flowscope run` watch the cluster kubectl points at."""
    fake_kube.add("nodes", node("node-a", internal=["10.0.0.1"]))
    (tmp_path / ".kube").mkdir()
    fake_kube.write_kubeconfig(tmp_path / ".kube" / "config")  # the collector's HOME is tmp_path
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out)], env={"KUBECONFIG": None})
    assert "enrichment off: not in a pod and no --kubeconfig / $KUBECONFIG" in c.log()
    assert c.value("flowscope_informers_synced") == 0
    assert not fake_kube.requests, fake_kube.requests
    assert c.stop() == 0
    # --enrich true does use it; and $KUBECONFIG naming the file turns auto on
    c = collector(["--output-file", str(out), "--enrich", "true"], env={"KUBECONFIG": None})
    wait_for(lambda: c.value("flowscope_informers_synced") == 1, 20, what="informers synced")
    assert "enrichment on: the kubeconfig client default (~/.kube/config)" in c.log()
    assert c.stop() == 0
    c = collector(["--output-file", str(out)], env={"KUBECONFIG": str(tmp_path / ".kube" / "config")})
    wait_for(lambda: c.value("flowscope_informers_synced") == 1, 20, what="informers synced")
    assert "enrichment on: $KUBECONFIG" in c.log()
    assert c.stop() == 0


# ------------------------------------------------------------------------------------------------
# Start-up failures: named, and exit code 2 with any number of workers


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_address_in_use_exits_2(tmp_path: Path, workers: int) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        r = run_cli(["run", "--workers", str(workers), "--listen", f"netflow://127.0.0.1:{free_udp_port()}",
                     "--metrics-addr", f"127.0.0.1:{port}", "--output-file", str(tmp_path / "f.jsonl")], tmp_path)
    finally:
        holder.close()
    assert r.returncode == 2, r.stderr
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in r.stderr


def test_an_ipv6_http_address_is_logged_in_brackets(tmp_path: Path) -> None:
    """`--metrics-addr [::1]:PORT` was logged as `::1:PORT`, which reads as the IPv6 address
    ::1:PORT (0:0:0:0:0:0:1:PORT) without a port, in the start-up line and in the error when the
    port is taken."""
    holder = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    holder.bind(("::1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        r = run_cli(["run", "--listen", f"netflow://127.0.0.1:{free_udp_port()}", "--metrics-addr", f"[::1]:{port}",
                     "--output-file", str(tmp_path / "f.jsonl")], tmp_path)
    finally:
        holder.close()
    assert r.returncode == 2, r.stderr
    assert f"cannot serve HTTP on [::1]:{port}: " in r.stderr, r.stderr
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:   # a free port, then used by the collector
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    p = popen_child([sys.executable, "-m", "collector.cli", "run", "--listen", f"netflow://127.0.0.1:{free_udp_port()}",
                     "--metrics-addr", f"[::1]:{port}", "--output-file", str(tmp_path / "f.jsonl"), "--enrich",
                     "false"], cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:   # type: ignore[union-attr]
            if "http: serving" in line:
                assert line.rstrip().endswith(f"on [::1]:{port}"), line
                break
        else:
            raise AssertionError("no 'http: serving' line")
    finally:
        p.terminate()
        p.wait(30)


@pytest.mark.parametrize("workers", [1, 2])
def test_output_file_that_cannot_be_opened_is_named(tmp_path: Path, workers: int) -> None:
    path = tmp_path / "no-such-dir" / "flows.json"
    r = run_cli(["run", "--workers", str(workers), "--listen", f"netflow://127.0.0.1:{free_udp_port()}",
                 "--metrics-addr", f"127.0.0.1:{free_tcp_port()}", "--output-file", str(path)], tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"cannot start: output file {path}: cannot open: No such file or directory" in r.stderr
    assert "listener" not in r.stderr.split("cannot start:")[1].splitlines()[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_listener_that_cannot_be_bound_is_named(tmp_path: Path, workers: int) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # another process's exporter port
    holder.bind(("127.0.0.1", 0))
    taken = holder.getsockname()[1]
    try:
        r = run_cli(["run", "--workers", str(workers), "--listen", f"netflow://127.0.0.1:{free_udp_port()}",
                     "--listen", f"ipfix://127.0.0.1:{taken}", "--metrics-addr", f"127.0.0.1:{free_tcp_port()}",
                     "--output-file", str(tmp_path / "f.jsonl")], tmp_path)
    finally:
        holder.close()
    assert r.returncode == 2, r.stderr
    assert f"cannot start: listener ipfix://127.0.0.1:{taken}: cannot bind: Address already in use" in r.stderr


def test_run_warns_about_a_misspelt_enrich_variable(collector: Any, tmp_path: Path) -> None:
    c = collector(["--output-file", str(tmp_path / "f.jsonl")],
                  env={"FLOWSCOPE_ENRICH_CLUSTER_NAM": "prod", "FLOWSCOPE_ENRICH_ENABLED": "false"})
    assert ("WARNING flowscope: ignoring unknown variable FLOWSCOPE_ENRICH_CLUSTER_NAM "
            "(did you mean FLOWSCOPE_ENRICH_CLUSTER_NAME?)") in c.log()
    # a known variable is not warned about (the start-up line naming what each source set may name it)
    assert not [ln for ln in c.log().splitlines() if "FLOWSCOPE_ENRICH_ENABLED" in ln and "WARNING" in ln]
    assert "unknown variable FLOWSCOPE_ENRICH_ENABLED" not in c.log()
    assert c.stop() == 0


def test_a_receive_buffer_linux_cannot_grant_is_not_blamed_on_rmem_max(collector: Any) -> None:
    """Linux keeps twice the SO_RCVBUF size in a C int, so it grants 1073741823 at most however
    high net.core.rmem_max is and with CAP_NET_ADMIN. --rcvbuf 2GiB-1 (the schema's maximum) or
    1GiB was granted 1073741823 with the advice to raise net.core.rmem_max to the request or run
    with CAP_NET_ADMIN, neither of which can give more."""
    c = collector(["--rcvbuf", "2147483647"])
    if c.value("flowscope_socket_receive_buffer_bytes") != 1073741823:
        pytest.skip("the kernel granted less than 1 GiB - 1 (no CAP_NET_ADMIN, and rmem_max below it)")
    c.stop()
    line = next(ln for ln in c.log().splitlines() if "SO_RCVBUF 2147483647 requested" in ln)
    assert "rmem_max" not in line and "CAP_NET_ADMIN" not in line, line
    assert "kernel granted 1073741823, the most Linux grants" in line, line


def test_sigterm_before_the_informers_synced_with_an_api_server_that_does_not_answer(collector: Any,
                                                                                      tmp_path: Path) -> None:
    """An API server that takes the connection and never answers (hung, or a balancer's dead
    backend): the informers' first lists wait for their read timeout, which a stop cannot cut
    short. The enricher waited 5 s for each of its four informers in turn, so SIGTERM with
    --shutdown-timeout 1 took 21 s, past a pod's grace period once added to a full drain."""
    with socket.socket() as api:
        api.bind(("127.0.0.1", 0))
        api.listen(64)   # connections complete in the backlog; nothing ever reads or answers them
        kc = tmp_path / "kc.json"
        server = f"http://127.0.0.1:{api.getsockname()[1]}"
        kc.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "hung",
            "clusters": [{"name": "hung", "cluster": {"server": server}}],
            "users": [{"name": "hung", "user": {"token": "t"}}],
            "contexts": [{"name": "hung", "context": {"cluster": "hung", "user": "hung"}}]}))
        c = collector(["--kubeconfig", str(kc), "--shutdown-timeout", "1"], wait_ready=False)
        wait_for(lambda: "informers" in c.get("/readyz")[1] or "not synced" in c.get("/readyz")[1], 20,
                 what="the collector up, its informers not synced")
        t0 = time.monotonic()
        code = c.stop(signal.SIGTERM)
        took = time.monotonic() - t0
    assert code == 0, c.log()
    assert took < 1 + 5 + 2, f"SIGTERM took {took:.1f} s with --shutdown-timeout 1"
