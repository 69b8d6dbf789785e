"""What an operator meets running `flowscope run` from deploy/ that the other tests did not show:
the stop's bound against the pods' terminationGracePeriodSeconds (and the shipped config stopping
within it with Kafka not answering), a receive buffer the node's net.core.rmem_max caps in a pod
without CAP_NET_ADMIN (the manifests drop every capability), and an IPv6 link-local exporter
(its zone: "fe80::1%eth0") through the exporter label of a strictly valid /metrics and the
flows' AgentIP.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from collector.util import popen_child
from tests.conftest import ROOT, make_v5, send_udp, wait_for
from tests.support.netns import NetNS, root_skip_reason
from tests.test_deploy import OVERLAYS, shipped_config, workload

# ------------------------------------------------------------------------------------------------
# The Prometheus text format (0.0.4), checked strictly: prometheus_client's parser takes lines
# a scraper refuses (a sample before its TYPE, a TYPE given twice, a bad escape in a label value).

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?,?\}})? (\S+)(?: -?\d+)?$")
# (in 0.0.4 a counter's TYPE line names its samples, _total included)
SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "untyped": ("",)}


def strict_exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, labels): value}, asserting every line is valid text format 0.0.4: each
    family's HELP and TYPE once, before its samples; each sample named after its family's type;
    label values escaped; no series twice; every histogram with its +Inf bucket."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    inf_buckets: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, kind, name, *rest = line.split(" ", 3)
            assert re.fullmatch(NAME, name), line
            if kind == "HELP":
                assert name not in helps, f"HELP twice: {line}"
                assert not re.search(r"\\[^\\n]", rest[0] if rest else ""), f"bad escape: {line}"
                helps.add(name)
            else:
                assert name not in types, f"TYPE twice: {line}"
                assert rest and rest[0] in SUFFIXES, line
                assert not any(n[len(name):] in SUFFIXES[rest[0]] for n, _ in out if n.startswith(name)), \
                    f"TYPE after its samples: {line}"
                types[name] = rest[0]
            continue
        assert line and not line.startswith("#"), f"unexpected line {line!r}"
        m = SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name, labels_text, value = m.groups()
        family = next((f for f, t in types.items() for suf in SUFFIXES[t] if name == f + suf), None)
        assert family is not None, f"sample without a TYPE before it: {line!r}"
        assert family in helps, f"no HELP for {family}"
        labels = tuple(sorted((k, bytes(v, "utf-8").decode("unicode_escape"))
                              for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"',
                                                     labels_text or "")))
        assert len({k for k, _ in labels}) == len(labels), f"a label twice: {line!r}"
        key = (name, labels)
        assert key not in out, f"series twice: {line!r}"
        v = float(value)    # (+Inf, -Inf and NaN are floats' words too)
        if types[family] == "counter":
            assert v >= 0 or math.isnan(v), line
        if name.endswith("_bucket") and dict(labels).get("le") == "+Inf":
            inf_buckets.add((family, tuple(kv for kv in labels if kv[0] != "le")))
        out[key] = v
    for name, labels in out:
        fam = name[: -len("_count")] if name.endswith("_count") else None
        if fam in types and types[fam] == "histogram":
            assert (fam, labels) in inf_buckets, f"{fam}{dict(labels)} has no +Inf bucket"
    return out


def test_the_strict_check_refuses_what_a_scraper_refuses() -> None:
    """strict_exposition is not vacuous."""
    ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{exporter=\"fe80::1%eth0\"} 1.0\n"
    assert strict_exposition(ok) == {("a_total", (("exporter", "fe80::1%eth0"),)): 1.0}
    for bad in (ok.replace("# TYPE a_total counter\n", ""),                          # no TYPE
                ok.replace("# HELP a_total A.\n", ""),                               # no HELP
                ok + 'a_total{exporter="fe80::1%eth0"} 2.0\n',                       # a series twice
                ok.replace('"fe80::1%eth0"', '"a"b"'),                               # unescaped quote
                ok.replace('"fe80::1%eth0"', '"a\\qb"'),                             # bad escape
                ok + "# TYPE a_total counter\n",                                     # TYPE twice
                ok.replace("} 1.0", "} one"),                                        # not a number
                "# HELP h A.\n# TYPE h histogram\nh_bucket{le=\"1.0\"} 1.0\nh_count 1.0\nh_sum 1.0\n"):  # no +Inf
        with pytest.raises((AssertionError, ValueError)):
            strict_exposition(bad)


# ------------------------------------------------------------------------------------------------
# An IPv6 link-local exporter: zone in the label, address as AgentIP


def test_a_link_local_exporters_flows_carry_its_address_as_agent_ip() -> None:
    """The receiver names a scoped IPv6 source as getnameinfo writes it, "fe80::1%eth0"; the
    exporter's AgentIP was read from that name with inet_pton, which refuses a zone, so every
    NetFlow/IPFIX flow from a link-local exporter went out without AgentIP (and FlowDirection,
    AgentIP against the hosts, could not be told). The zone names a link of the collector's host,
    not the exporter: AgentIP is the address."""
    from decoders import Decoder, DecoderConfig

    dec = Decoder(DecoderConfig())
    for name, agent in (("fe80::1%eth0", "fe80::1"), ("fe80::2%7", "fe80::2"), ("fd00::1", "fd00::1"),
                        ("10.0.0.1", "10.0.0.1")):
        b = dec.decode(make_v5(0, 2, 0), name, 2055, 1_700_000_000.0)
        assert b.error is None and len(b) == 2
        assert [f.get("AgentIP") for f in b.to_dicts()] == [agent, agent], name
        assert [orjson.loads(line)["AgentIP"] for line in b.to_json()] == [agent, agent], name
    # two links' fe80::1 are two exporters (their templates and sequence numbers apart)
    assert dec.decode(make_v5(0, 1, 0), "fe80::1%eth1", 2055, 1_700_000_000.0).error is None
    assert dec.exporter("fe80::1%eth0") is not dec.exporter("fe80::1%eth1")
    assert dec.exporter("fe80::1%eth0").ip == "fe80::1%eth0" and dec.exporter_count() == 5


def _http_in(ns: NetNS, url: str) -> tuple[int, str]:
    script = ("import sys, urllib.request, urllib.error\n"
              "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode(), end='')\n"
              "except urllib.error.HTTPError as e: print(e.code); print(e.read().decode(), end='')\n"
              "except OSError: print(0)\n")
    p = ns.run([sys.executable, "-c", script, url], check=False)
    status, _, body = p.stdout.decode().partition("\n")
    return int(status or 0), body


def test_a_link_local_exporter_in_metrics_and_flows(tmp_path: Path) -> None:
    """A NetFlow exporter on an IPv6 link-local address sends to a collector listening on [::]
    (in a namespace of its own, over a veth): /metrics names it with its zone, still valid text
    format to a strict reading and to prometheus_client's, and its flows carry AgentIP."""
    reason = root_skip_reason()
    if reason:
        pytest.skip(reason)
    from collector.metrics import parse_exposition

    with NetNS() as ns:
        ns.run(["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        for dev in ("v0", "v1"):
            ns.run(["ip", "link", "set", dev, "up"])
        ns.run(["ip", "-6", "addr", "add", "fe80::1/64", "dev", "v0", "nodad"])
        out = tmp_path / "flows.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
        env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), KUBECONFIG=str(tmp_path / "none"))
        with open(tmp_path / "collector.log", "wb") as log:
            p = ns.popen([sys.executable, "-m", "collector.cli", "run", "--listen", "netflow://[::]:2055",
                          "--metrics-addr", "127.0.0.1:9400", "--no-enrich", "--output-file", str(out),
                          "--stats-interval", "0.1"], cwd=ROOT, env=env, stdout=log, stderr=log)
        wait_for(lambda: _http_in(ns, "http://127.0.0.1:9400/readyz")[0] == 200 or p.poll() is not None, 20,
                 what="the collector ready")
        send = ("import socket, sys\n"
                "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
                "s.sendto(bytes.fromhex(sys.argv[1]), ('fe80::1%v0', 2055))\n")
        ns.run([sys.executable, "-c", send, make_v5(0, 3, 0).hex()])

        def exporter_series() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            status, text = _http_in(ns, "http://127.0.0.1:9400/metrics")
            assert status == 200
            return {k: v for k, v in strict_exposition(text).items() if ("exporter", "fe80::1%v0") in k[1]}

        wait_for(lambda: exporter_series().get(("flowscope_flows_total", (("exporter", "fe80::1%v0"),
                                                                          ("protocol", "netflow5")))) == 3.0,
                 10, what="the link-local exporter's flows counted")
        text = _http_in(ns, "http://127.0.0.1:9400/metrics")[1]
        loose = parse_exposition(text)
        assert loose["flowscope_flows_total"][(("exporter", "fe80::1%v0"), ("protocol", "netflow5"))] == 3.0
        ns.stop(p, signal.SIGTERM, timeout=20)
        assert p.returncode == 0, (tmp_path / "collector.log").read_text()
    flows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [f.get("AgentIP") for f in flows] == ["fe80::1"] * 3, flows


# ------------------------------------------------------------------------------------------------
# A receive buffer net.core.rmem_max caps, in a pod without CAP_NET_ADMIN


def _without_net_admin() -> None:
    """preexec: the collector runs as in the pod, where `capabilities: drop: [ALL]` leaves no
    CAP_NET_ADMIN (SO_RCVBUFFORCE refused): dropped from the bounding set, it is gone from the
    root process after the exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 12, 0, 0, 0) != 0:       # PR_CAPBSET_DROP, CAP_NET_ADMIN
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_NET_ADMIN)")


def test_a_receive_buffer_rmem_max_caps_is_said_with_the_sysctl_to_raise(collector: Any) -> None:
    """The shipped config asks for 32 MiB; a node's net.core.rmem_max is 208 KiB by default and
    the pod may not force past it. The kernel grants the cap silently: the log names what was
    asked, what was granted and the sysctl, and flowscope_socket_receive_buffer_bytes is the
    grant."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to take CAP_NET_ADMIN away from the collector as the pod has none)")
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    asked = 2 * rmem_max
    if asked > 1073741823:
        pytest.skip(f"net.core.rmem_max {rmem_max} is too high to ask for more")
    c = collector(["--rcvbuf", str(asked), "--sink", "stdout"], preexec=_without_net_admin)
    line = next((ln for ln in c.log().splitlines() if "SO_RCVBUF" in ln), "")
    assert f"listener netflow://127.0.0.1:{c.port}: SO_RCVBUF {asked} requested, kernel granted {rmem_max}; " \
           f"raise it with `sysctl -w net.core.rmem_max={asked}`" in line, c.log()
    assert line.split()[2] == "WARNING", line
    assert c.value("flowscope_socket_receive_buffer_bytes") == rmem_max
    assert c.stop() == 0


# ------------------------------------------------------------------------------------------------
# The stop against the pods' grace period


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_outlasts_the_longest_stop(overlay: str) -> None:
    """The kubelet kills the container terminationGracePeriodSeconds after its SIGTERM: the
    longest stop flowscope takes (--shutdown-timeout to drain and flush, and with --workers N
    the supervisor's KILL_AFTER more before it kills a worker that has not finished) must fit,
    or flows drained in time are lost unsaid with the SIGKILL. A shutdown_timeout raised in the
    ConfigMap needs the grace period raised with it."""
    from collector.app import KILL_AFTER

    cfg = shipped_config(overlay)
    grace = workload(overlay)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert float(cfg["shutdown_timeout"]) + KILL_AFTER < grace, (overlay, cfg["shutdown_timeout"], grace)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_shipped_config_stops_within_the_grace_period_with_kafka_not_answering(tmp_path: Path,
                                                                                   workers: int) -> None:
    """The shipped config (its Kafka settings, shutdown_timeout, queue) with the brokers taking
    connections and never answering (a frozen broker, a dead backend behind a load balancer):
    SIGTERM with flows queued ends the collector, exit 0, before the kubelet's SIGKILL, and the
    log counts every flow as dropped at shutdown."""
    grace = workload("base")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    cfg = shipped_config()
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(64)      # connections complete in the backlog; nothing ever answers them
        udp, http = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket()
        udp.bind(("127.0.0.1", 0))
        http.bind(("127.0.0.1", 0))
        port, hport = udp.getsockname()[1], http.getsockname()[1]
        udp.close()
        http.close()
        cfg.update(listen=[f"netflow://127.0.0.1:{port}"], metrics_addr=f"127.0.0.1:{hport}", workers=workers,
                   state_file=str(tmp_path / "state.json"), log_format="text")
        cfg["kafka"]["brokers"] = [f"127.0.0.1:{frozen.getsockname()[1]}"]
        cfg["enrich"]["enabled"] = "false"   # (no cluster here)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
        env.update(FLOWSCOPE_CONFIG=str(tmp_path / "config.yaml"), PYTHONPATH=str(ROOT), HOME=str(tmp_path))
        with open(tmp_path / "collector.log", "wb") as log:
            p = popen_child([sys.executable, "-m", "collector.cli", "run"], cwd=ROOT, env=env,
                            stdout=log, stderr=log)
        try:
            wait_for(lambda: "flowscope_listener_up{" in _metrics(hport), 30, what="the collector serving /metrics")
            send_udp([make_v5(i * 30, 30, i * 30) for i in range(20)], port)
            wait_for(lambda: _total(_metrics(hport), "flowscope_flows_total") == 600, 15, what="600 flows decoded")
            p.send_signal(signal.SIGTERM)
            code = p.wait(grace)    # the kubelet's SIGKILL comes then
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = (tmp_path / "collector.log").read_text()
    assert code == 0, text
    assert "shutdown: 600 records could not be delivered" in text, text
    assert re.search(r"stopped: 0 flows delivered to kafka, 600 dropped", text), text


def _metrics(port: int) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def _total(text: str, name: str) -> float:
    from collector.metrics import parse_exposition, total

    return total(parse_exposition(text), name)


# ------------------------------------------------------------------------------------------------
# A configuration error is one line


@pytest.mark.parametrize("text,where", [("a: [\n", "line 2, column 1: expected the node content"),
                                        ("kafka:\n\ttopic: t\n", "line 2, column 1: found character '\\t'"),
                                        ("a: b\n c: d\n", "line 2, column 3: mapping values are not allowed")])
def test_a_config_file_that_is_not_yaml_is_one_line_and_exit_2(tmp_path: Path, text: str, where: str) -> None:
    """A ConfigMap edited into invalid YAML: `flowscope run` exits 2 with one line naming the
    file, the line and column and PyYAML's problem. PyYAML's own text took three lines (its
    context, the problem, the mark naming the file again), three records in a log pipeline of
    which only the first said it was flowscope's configuration error."""
    f = tmp_path / "config.yaml"
    f.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), KUBECONFIG=str(tmp_path / "none"))
    p = subprocess.run([sys.executable, "-m", "collector.cli", "run", "--config", str(f)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith(f"flowscope: configuration error: --config {f}: not valid YAML: {where}"), p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.endswith("\n"), p.stderr


# ------------------------------------------------------------------------------------------------
# Stop signals after the first


@pytest.mark.parametrize("workers", [1, 2])
def test_sigint_once_running_drains_and_delivers_like_sigterm(collector: Any, tmp_path: Path, workers: int) -> None:
    """Ctrl-C on `flowscope run` in a terminal (SIGINT to the supervisor alone here; the SIGHUP
    test in test_collector_service.py signals the whole group): a clean stop, every flow received
    written, exit 0, not a KeyboardInterrupt."""
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out), "--workers", str(workers)])
    send_udp([make_v5(i * 30, 30, i * 30) for i in range(10)], c.port)
    c.wait_value("flowscope_flows_total", 300)
    c.proc.send_signal(signal.SIGINT)
    assert c.proc.wait(30) == 0, c.log()
    assert len(out.read_bytes().splitlines()) == 300
    log = c.log()
    assert "stopping: decoding" in log and "Traceback" not in log and "KeyboardInterrupt" not in log, log


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_signals_during_the_drain_change_nothing(collector: Any, workers: int) -> None:
    """SIGTERM, then SIGTERM and SIGINT again while the drain waits on a broker that never
    answers (an impatient `kubectl delete` and Ctrl-C, a runtime that signals twice, tini -g
    forwarding to the group as well): the drain keeps its deadline, the stop is said once per
    process, no traceback, exit 0, and the queued flows are counted as undelivered."""
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(64)
        c = collector(["--kafka-brokers", f"127.0.0.1:{frozen.getsockname()[1]}", "--shutdown-timeout", "3",
                       "--workers", str(workers)], wait_ready=False)
        # each worker's listener bound (logged with the receive buffer granted)
        wait_for(lambda: len(re.findall(r"listener \S+: (?:bound, )?SO_RCVBUF", c.log())) == workers, 20,
                 what="the listeners bound")
        send_udp([make_v5(i * 30, 30, i * 30) for i in range(10)], c.port)
        c.wait_value("flowscope_flows_total", 300)
        c.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: c.log().count("stopping: decoding") == workers, 10, what="the drain to begin")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            c.proc.send_signal(sig)
        assert c.proc.wait(30) == 0, c.log()
    log = c.log()
    assert log.count("stopping: decoding") == workers, log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    assert sum(int(n) for n in re.findall(r"stopped: 0 flows delivered to kafka, (\d+) dropped", log)) == 300, log
