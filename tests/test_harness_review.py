"""The benchmark harness as an operator sizing a deployment uses it: every collector measured
under the same conditions, and a table that does not overstate what a run showed."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, consume, free_udp_port

from benchmarks import harness


def _granted_rcvbuf(port: int) -> set[int]:
    """SO_RCVBUF of the sockets bound to UDP ``port``, as the kernel reports them (ss -m: rb)."""
    out = subprocess.run(["ss", "-uamnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {int(rb) for rb in re.findall(r"\brb(\d+)", out)}


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed")
@pytest.mark.skipif(shutil.which("nfcapd") is None, reason="nfdump not installed")
def test_every_collector_gets_the_same_receive_buffer(broker: Any, tmp_path: Path) -> None:
    """flowscope (root: SO_RCVBUFFORCE) was given 32 MiB while pmacct and nfcapd, which ask
    with a plain SO_RCVBUF, were capped at net.core.rmem_max (4 MiB here): an 8x deeper queue
    for flowscope alone, in a comparison of loss at a rate."""
    specs = harness.collector_specs([1])
    names = ["flowscope", "nfcapd"] + (["pmacct"] if shutil.which("nfacctd") else [])
    got: dict[str, set[int]] = {}
    for name in names:
        spec = specs[name][0]
        port = free_udp_port()
        env = harness.Env(proto="ipfix", port=port, bootstrap=broker.bootstrap, topic="bench-rcvbuf-review",
                          cpus=None, workers=1, log_dir=str(tmp_path))
        peer = spec.start(env)
        try:
            got[name] = _granted_rcvbuf(port)
        finally:
            peer.stop()
            if peer.workdir != str(tmp_path):
                peer.cleanup()
    assert all(len(v) == 1 for v in got.values()), got
    assert len({next(iter(v)) for v in got.values()}) == 1, f"receive buffers differ: {got}"


def _meta() -> dict:
    return {"date": "2026-12-03 10:00 UTC", "machine": harness.machine_info(),
            "cpus": {"generator": "0", "broker": "0", "collector": "1", "collector_multi": "0-1"},
            "command": "python -m benchmarks.harness --quick", "duration_s": 2.0, "max_loss": 0.001,
            "loadgen_extra": ["--exporters", "4"], "flowscope_args": [], "partitions": 1, "rcvbuf": 4194304}


def _trial(rate: float, loss: float) -> dict:
    t = harness.Trial(collector="pmacct", proto="ipfix", workers=1, target_flows_s=rate, duration_s=2.0,
                      offered_flows_s=rate, delivered_flows_s=rate * (1 - loss), loss=loss)
    return harness.asdict(t)


def test_a_sweep_that_never_lost_reports_a_lower_bound(tmp_path: Path) -> None:
    """--quick's three trials (50k, 100k, 200k flows/s) all lossless: the table said "max lossless
    flows/s 200,082", which an operator sizing a deployment reads as the collector's ceiling,
    when it is only where the sweep stopped."""
    best = [
        {"collector": "pmacct", "proto": "ipfix", "best": _trial(200000, 0.0), "first_lossy": None, "trials": 3},
        {"collector": "nfcapd", "proto": "ipfix", "best": _trial(100000, 0.0),
         "first_lossy": _trial(200000, 0.02), "trials": 3},
    ]
    path = tmp_path / "results.md"
    harness.write_markdown(path, _meta(), best)
    rows = {ln.split("|")[1].strip(): ln for ln in path.read_text().splitlines() if ln.startswith("| ")}
    assert "lower bound" in rows["pmacct"], rows["pmacct"]
    assert "lower bound" not in rows["nfcapd"]  # its ceiling lies between 100k and 200k: a real maximum


def test_a_missing_pmacct_is_said_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pmacct the trial failed with a bare FileNotFoundError (--no-pin), and the sweep went
    on to three more trials at lower rates; pinned, taskset's complaint came after a 10 s wait for
    the port. nfcapd's start said which package to install; pmacct's now does too."""
    from benchmarks import peers

    monkeypatch.setenv("PATH", "/nonexistent")  # a machine without pmacct (nor anything else)
    with pytest.raises(RuntimeError, match=r"nfacctd not installed \(Debian package pmacct\)"):
        peers.start_pmacct("ipfix", port=free_udp_port(), bootstrap="127.0.0.1:9", topic="t")
    with pytest.raises(RuntimeError, match=r"sfacctd not installed \(Debian package pmacct\)"):
        peers.start_pmacct("sflow", port=free_udp_port(), bootstrap="127.0.0.1:9", topic="t")


@pytest.mark.skipif(shutil.which("nfacctd") is None, reason="pmacct not installed")
def test_no_pmacct_process_outlives_its_stop() -> None:
    """nfacctd's core forks its Kafka plugin, which leaves on its own some seconds after the core
    is gone (0.5-3 s here): Peer.stop returned when the core had, and the plugin ran on past the
    trial, an orphan. Now stop returns when no process of pmacct's is left (here after SIGKILL,
    where the harness's SIGTERM ends when pmacct has not left 15 s later)."""
    pytest.importorskip("confluent_kafka")
    from benchmarks import peers
    from collector.util import start_time

    peer = peers.start_pmacct("ipfix", port=free_udp_port(), bootstrap="127.0.0.1:9", topic="t")
    try:
        tree = {pid: start_time(pid) for pid in peers.process_tree(peer.pid)}
        assert len(tree) > 1 and None not in tree.values(), f"core and plugin: {tree}"
        peer.stop(sig=signal.SIGKILL)
        left = [pid for pid, started in tree.items() if start_time(pid) == started]
        assert left == [] and peers.group_members(peer.pid) == [], f"{left} of {sorted(tree)} outlived stop"
    finally:
        peer.stop()
        peer.cleanup()


def test_a_collector_not_installed_ends_its_series_after_one_trial(tmp_path: Path) -> None:
    """A collector that is not installed failed four trials (50k, 12.5k, 3.1k flows/s, ...) before
    the sweep gave up, each saying the same thing."""
    def start(env: harness.Env) -> Any:
        raise RuntimeError("sfcapd not installed (Debian package nfdump-sflow)")

    spec = harness.CollectorSpec("nfcapd", start, "files")
    good, trials = harness.sweep(spec, "sflow", start=50000, max_trials=8, max_loss=0.001, precision=0.15,
                                 log=lambda _m: None, duration=1.0, broker=None, loadgen=Path("/nonexistent"),
                                 cpus={"generator": None, "collector": None}, log_dir=str(tmp_path),
                                 max_drain=1.0, loadgen_extra=[])
    assert good is None and len(trials) == 1 and "not installed" in (trials[0].error or "")


def test_quick_is_one_short_series_per_collector() -> None:
    """--quick was documented as "~2 min" but ran 8 series (flowscope with 1 and 2 workers, pmacct,
    nfcapd; IPFIX and v5) of three trials: about 5 minutes here (flowscope's IPFIX series 28 s,
    pmacct's and nfcapd's together 97 s). One IPFIX series per collector, two trials each."""
    a = harness.parse_args(["--quick"])
    series = len(harness.collector_specs([int(w) for w in a.workers.split(",")])["flowscope"]) + 2
    assert (a.protos, series, a.max_trials, a.duration) == ("ipfix", 3, 2, 2.0)
    # what is asked for explicitly stays as asked
    a = harness.parse_args(["--quick", "--protos", "v5,sflow", "--workers", "2", "--max-trials", "5"])
    assert (a.protos, a.workers, a.max_trials) == ("v5,sflow", "2", 5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nfacctd") is None, reason="pmacct not installed")
def test_the_peers_commands_and_config_are_in_the_results(broker: Any, tmp_path: Path) -> None:
    """results.md named the harness's command, loadgen's and flowscope's arguments, but not how
    the peers ran: pmacct's config (its aggregate key decides whether a message is a flow) was
    written to a private directory that the trial then removed, and nfcapd's command was nowhere."""
    from benchmarks.build import build

    loadgen = build()
    specs = harness.collector_specs([1])
    kw: dict[str, Any] = {"duration": 1.0, "broker": broker, "loadgen": loadgen,
                          "cpus": {"generator": None, "collector": None}, "log_dir": str(tmp_path),
                          "max_drain": 10.0, "loadgen_extra": ["--exporters", "2"]}
    best = []
    for name in ("pmacct", "nfcapd"):
        tr = harness.run_trial(specs[name][0], "v5", 20000, **kw)
        assert tr.error is None and tr.loss == 0.0, tr
        best.append({"collector": name, "proto": "v5", "best": harness.asdict(tr), "first_lossy": None, "trials": 1})
    path = tmp_path / "results.md"
    harness.write_markdown(path, _meta(), best)
    text = path.read_text()
    assert re.search(r"`(taskset -c \S+ )?nfcapd -w \S+ -b 127\.0\.0\.1 -p \d+ -B \d+", text), text
    m = re.search(r"`(?:taskset -c \S+ )?nfacctd -f (\S+)`", text)
    assert m, text
    conf = Path(m.group(1)).read_text()  # kept beside the logs, where the command says
    assert "aggregate[k]: src_host, dst_host" in conf and "export_proto_seqno" in conf


@pytest.mark.skipif(shutil.which("nfcapd") is None, reason="nfdump not installed")
def test_records_per_datagram_can_be_what_ovs_sends(tmp_path: Path) -> None:
    """Open vSwitch sends one IPFIX data record per message (../shared/EXPORTERS.md); loadgen packs
    25, and the harness had no way to ask for fewer, so a deployment sized from it assumed 25 times
    fewer datagrams than OVS sends for the same flows."""
    from benchmarks.build import build

    args = harness.parse_args(["--collectors", "nfcapd", "--protos", "ipfix", "--records", "1"])
    tr = harness.run_trial(harness.collector_specs([1])["nfcapd"][0], "ipfix", 2000, duration=1.0, broker=None,
                           loadgen=build(), cpus={"generator": None, "collector": None}, log_dir=str(tmp_path),
                           max_drain=5.0, loadgen_extra=harness.loadgen_args(args))
    assert tr.error is None and tr.loss == 0.0, tr
    assert tr.loadgen["records_per_datagram"] == 1
    assert tr.sent_flows == tr.loadgen["data_datagrams"] > 0


@pytest.mark.skipif(shutil.which("nfcapd") is None, reason="nfdump not installed")
def test_a_broker_that_does_not_start_fails_its_series_not_the_run(tmp_path: Path) -> None:
    """When Tansu could not start (here: pinned to a CPU the machine does not have), the harness
    died with a traceback: no results.md, no plot, and the series that need no broker (nfcapd)
    never ran. Now the Kafka series say why in the table and the others run."""
    from benchmarks.build import build

    args = harness.parse_args(["--collectors", "pmacct,nfcapd", "--protos", "v5", "--duration", "1",
                               "--max-trials", "1", "--start-rate", "20000", "--out", str(tmp_path)])
    registry = harness.collector_specs([1])
    specs = registry["pmacct"] + registry["nfcapd"]
    cpus = {"generator": None, "broker": "4095", "collector": None, "collector_multi": None}
    meta = {**_meta(), "cpus": cpus, "loadgen_extra": harness.loadgen_args(args)}
    (tmp_path / "logs").mkdir()
    assert harness._run_all(args, meta, specs, ["v5"], cpus, build(), tmp_path, str(tmp_path / "logs"),
                            lambda _m: None) == 0
    rows = {ln.split("|")[1].strip(): ln for ln in (tmp_path / "results.md").read_text().splitlines()
            if ln.startswith("| ")}
    assert "broker" in rows["pmacct"] and "did not start" in rows["pmacct"], rows["pmacct"]
    # nfcapd's series ran and lost nothing of the ~20k flows/s offered
    assert re.match(r"\| nfcapd \| v5 \| [1-9][\d,]* .*\| 0\.000% \|", rows["nfcapd"]), rows["nfcapd"]


def test_more_flows_read_back_than_sent_is_not_lossless() -> None:
    """A --quick pmacct trial read back 277,400 messages for 200,100 flows sent (stopped while a
    purge was under way, it purged the same cache twice); the loss, max(0, 1 - read/sent), came out
    0.000% and the table showed "max lossless 138,651" flows/s for 100,044 offered. Duplicates hide
    losses of the same size, so such a count says nothing about loss."""
    loss, error = harness.loss_of(sent=200100, delivered=277400)
    assert error is not None and "77300" in error and "duplicate" in error
    assert harness.loss_of(sent=200100, delivered=200100) == (0.0, None)
    loss, error = harness.loss_of(sent=200000, delivered=199000)
    assert error is None and abs(loss - 0.005) < 1e-12


def test_a_cluster_of_unmatched_pods_holds_none_of_the_flows_addresses() -> None:
    """benchmarks.stream_ab --unmatched measures enrichment's lookups apart from the bytes of the
    identities they find: its simulated cluster is the same size, and none of its pods holds an
    address the load generator's flows use."""
    from benchmarks import cluster

    ips = ["10.128.0.5", "10.128.2.9", "10.128.4.200", "10.129.0.3"]
    held = {ip["ip"] for p in cluster.objects(ips, pods=40)["pods"] for ip in p["status"]["podIPs"]}
    assert set(ips) <= held
    pods = cluster.objects(ips, pods=40, unmatched=True)["pods"]
    assert len(pods) == 40
    assert not {ip["ip"] for p in pods for ip in p["status"]["podIPs"]} & set(ips)
    # fewer pods asked for than addresses: as many pods as when they hold them
    assert len(cluster.objects(ips, pods=2, unmatched=True)["pods"]) == len(ips)


def test_the_unmatched_pipeline_loop_sends_the_same_flows_that_no_lookup_finds() -> None:
    """benchmarks.pipeline_bench --unmatched: the same flows (ports, counters, exporters) between
    addresses in no range the index holds, so every lookup misses."""
    import enrich
    from benchmarks import enrich_bench as E
    from benchmarks import pipeline_bench as pb

    e = enrich.Enricher.from_objects(pods=E.pods(4000, 200, 800), nodes=E.nodes(200), services=E.services(500),
                                     replicasets=E.replicasets(800))
    hit, agents = pb.flows(4000, 200, 500, 400, records=25)
    miss, agents_m = pb.flows(4000, 200, 500, 400, records=25, miss=True)
    assert agents == agents_m and len(hit) == len(miss)
    h = pb.decoder(agents).decode(*hit[3], 0, pb.EXPORT).to_dicts(e)
    m = pb.decoder(agents).decode(*miss[3], 0, pb.EXPORT).to_dicts(e)
    assert len(h) == len(m) == 25
    assert all("SrcK8S_Name" in f for f in h)
    assert not any(k.startswith(("SrcK8S_", "DstK8S_")) for f in m for k in f)
    for a, b in zip(h, m, strict=True):
        assert (a.get("SrcPort"), a.get("DstPort"), a["Bytes"]) == (b.get("SrcPort"), b.get("DstPort"), b["Bytes"])
        assert a["SrcAddr"] != b["SrcAddr"] and a["DstAddr"] != b["DstAddr"]


@pytest.mark.parametrize(("argv", "refused"), [
    (["--passes", "3"], "--passes: only with --thread-time"),
    (["--thread-time", "--passes", "0"], "--passes: at least 1"),
    (["--thread-time", "--only", "plain"], "--thread-time: not with --only"),
    (["--thread-time", "--callgrind"], "--thread-time: not with --callgrind"),
    (["--rounds", "0"], "--rounds: at least 1"),
])
def test_the_pipeline_loop_by_thread_time_refuses_what_it_does_not_do(
        argv: list[str], refused: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks.pipeline_bench --thread-time times both loops itself: the other modes and a
    slice of no pass are usage errors, as --passes is without it."""
    from benchmarks import pipeline_bench as pb

    monkeypatch.setattr(pb, "build", lambda *_: pytest.fail("a refused command line built an index"))
    monkeypatch.setattr(sys, "argv", ["pipeline_bench", *argv])
    with pytest.raises(SystemExit) as ex:
        pb.main()
    assert ex.value.code == 2
    assert f"error: {refused}\n" in capsys.readouterr().err


def test_the_pipeline_loop_by_thread_time_reports_both_loops(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks.pipeline_bench --thread-time: the best slice of each loop a flow and their
    difference; 40 passes a slice unless --passes says otherwise."""
    from benchmarks import pipeline_bench as pb

    small = ["--pods", "400", "--nodes", "20", "--services", "50", "--busy", "100", "--records", "5"]
    monkeypatch.setattr(sys, "argv", ["pipeline_bench", "--thread-time", *small, "--rounds", "2", "--passes", "1"])
    pb.main()
    out = capsys.readouterr().out
    m = re.fullmatch(r"thread CPU time, best of 2 slices of 1 passes \(320 datagrams of 5 records\): "
                     r"plain ([\d.]+) ns, enriched ([\d.]+) ns a flow; enrichment adds (-?[\d.]+) ns "
                     r"\([+-][\d.]+%\)\n", out)
    assert m, out
    plain, enriched, adds = float(m[1]), float(m[2]), float(m[3])
    assert plain > 0 and enriched > 0 and abs(enriched - plain - adds) < 0.11
    monkeypatch.setattr(sys, "argv", ["pipeline_bench", "--thread-time", *small, "--rounds", "2", "--passes", "1",
                                      "--unmatched"])
    pb.main()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("thread CPU time, best of 2 slices"), out
    m = re.fullmatch(r"unmatched \(lookups only\) ([\d.]+) ns a flow; its lookups add (-?[\d.]+) ns "
                     r"\([+-][\d.]+%\)", out[1])
    assert m, out
    plain = float(re.search(r"plain ([\d.]+) ns", out[0])[1])  # type: ignore[index]
    assert float(m[1]) > 0 and abs(float(m[1]) - plain - float(m[2])) < 0.11
    seen: list[int] = []
    monkeypatch.setattr(pb, "thread_time", lambda a: seen.append(a.passes))
    monkeypatch.setattr(sys, "argv", ["pipeline_bench", "--thread-time"])
    pb.main()
    assert seen == [40]


@pytest.mark.parametrize("mode", [["--thread-time", "--passes", "1"], ["--seconds", "0.01"]])
def test_the_unmatched_pipeline_loop_has_an_index_of_its_own(mode: list[str], monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks.pipeline_bench --unmatched: the lookups-only loop runs with an enricher of its own,
    never the enriched loop's, whose per-address cache the two loops' addresses would otherwise
    share (more conflicts and misses than a collector's own flows make)."""
    from benchmarks import pipeline_bench as pb

    used: dict[bytes, set[int]] = {}
    one_pass = pb.one_pass

    def spy(dec: Any, payloads: list[tuple[bytes, str]], enricher: Any, w: Any) -> Any:
        if enricher is not None:
            used.setdefault(payloads[0][0], set()).add(id(enricher))
        return one_pass(dec, payloads, enricher, w)

    monkeypatch.setattr(pb, "one_pass", spy)
    small = ["--pods", "400", "--nodes", "20", "--services", "50", "--busy", "100", "--records", "5", "--rounds", "1"]
    monkeypatch.setattr(sys, "argv", ["pipeline_bench", *mode, *small, "--unmatched"])
    pb.main()
    capsys.readouterr()
    assert len(used) == 2, used          # the matched datagrams and the unmatched ones
    (a, b) = used.values()
    assert len(a) == len(b) == 1 and a != b


def test_stream_ab_measures_through_a_broker_already_running(broker: Any, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks.stream_ab --kafka --bootstrap HOST:PORT sends the rounds to a broker already
    running (another machine's, or one in another network namespace, whose TCP receive then does
    not run on the collector's core as loopback's does) and starts no Tansu of its own; the flows
    it counts delivered are in that broker's topic."""
    from benchmarks import broker as bench_broker
    from benchmarks import stream_ab
    from benchmarks.build import build

    build()

    def no_broker(**_: Any) -> None:
        raise AssertionError("stream_ab started a broker of its own")

    kept: list[tuple[str, str]] = []   # the round's topic, kept to be read instead of deleted
    monkeypatch.setattr(bench_broker, "start_broker", no_broker)
    monkeypatch.setattr(bench_broker, "delete_topic", lambda bootstrap, name: kept.append((bootstrap, name)) or True)
    monkeypatch.setattr(sys, "argv", ["stream_ab", "--tree", f"t={ROOT}", "--kafka", "--bootstrap", broker.bootstrap,
                                      "--partitions", "1", "--rate", "4000", "--seconds", "1", "--rounds", "1"])
    stream_ab.main()
    out = capsys.readouterr().out
    m = re.search(r"round 0 t: .*? (\d+) delivered of (\d+) flows sent", out)
    assert m, out
    assert [b for b, _ in kept] == [broker.bootstrap]
    records = consume(broker.bootstrap, kept[0][1], int(m[1]))
    # (a datagram lost on a loaded machine would be counted on both sides: not this test's point)
    assert len(records) == int(m[1]) > 0.9 * int(m[2])
    assert all(r["FlowProtocol"] == "ipfix" for r in records)
    # without --kafka the rounds would go to a file, the broker given unused: a usage error
    monkeypatch.setattr(sys, "argv", ["stream_ab", "--tree", f"t={ROOT}", "--bootstrap", broker.bootstrap])
    with pytest.raises(SystemExit) as exc:
        stream_ab.main()
    assert exc.value.code == 2 and "--bootstrap" in capsys.readouterr().err


def test_lo_gso_sets_loopbacks_segment_size_in_a_namespace_only() -> None:
    """benchmarks.lo_gso (the RESULTS section on loopback's segments): sets a namespace's
    loopback's gso_ipv4_max_size and gro_ipv4_max_size over rtnetlink (Debian 12's iproute2
    cannot), reads them back from the kernel, says when the kernel refuses a size, and leaves the
    host's loopback as it was."""
    from benchmarks import lo_gso
    from tests.support import netns as N

    if (why := N.root_skip_reason()) is not None:
        pytest.skip(why)
    try:
        host = lo_gso.ipv4_max_sizes("lo")
    except OSError as exc:
        pytest.skip(f"the kernel has no BIG TCP settings for IPv4 (Linux 6.3+): {exc}")

    def tool(ns: N.NetNS, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return ns.run([sys.executable, "-m", "benchmarks.lo_gso", *args], cwd=ROOT, check=check)

    def sizes(ns: N.NetNS) -> str:
        return ns.run([sys.executable, "-c", "from benchmarks.lo_gso import ipv4_max_sizes as s; print(*s('lo'))"],
                      cwd=ROOT).stdout.decode().strip()

    with N.NetNS() as ns:
        assert sizes(ns) == "65536 65536"   # loopback as a new namespace has it
        out = tool(ns, "131072").stdout.decode()
        assert "gso_ipv4_max_size 131072, gro_ipv4_max_size 131072" in out
        assert sizes(ns) == "131072 131072"
        refused = tool(ns, str(1 << 30), check=False)
        assert refused.returncode == 1 and "refused" in refused.stderr.decode()
        assert sizes(ns) == "131072 131072"
    assert lo_gso.ipv4_max_sizes("lo") == host


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_tcp_send_probe_builds_and_sends_every_way(tmp_path: Path) -> None:
    """benchmarks/tcp_send_probe.c (the RESULTS figures for send(), MSG_ZEROCOPY and
    vmsplice()+splice() over loopback) compiles warning-free and sends what it is told each way,
    paced and not; a mode it does not know is a usage error."""
    exe = tmp_path / "tcp_send_probe"
    build = subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(ROOT / "benchmarks" / "tcp_send_probe.c")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    for mode in ("copy", "zerocopy", "splice"):
        for pace in ([], ["50e6"]):
            out = subprocess.run([str(exe), mode, "65536", "2097152", *pace], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            m = re.search(rf"^{mode} +writes of +65536 bytes(?P<paced> \(paced\))?: writer [\d.]+ ns a byte.*?"
                          r"zerocopy sends (?P<sends>\d+), completed (?P<done>\d+)$", out.stdout, re.M)
            assert m and bool(m["paced"]) == bool(pace), out.stdout
            # every zerocopy send (32 writes at least) covered by the kernel's completions; none other
            assert (int(m["sends"]) >= 32) == (mode == "zerocopy") and m["done"] == m["sends"], out.stdout
            assert "reader:" in out.stderr
    assert subprocess.run([str(exe), "sendfile", "65536", "1"], capture_output=True).returncode == 2


def test_without_matplotlib_the_harness_says_there_is_no_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/README.md: `--quick` writes "the table and plot as for a full run". After `make
    deps build` (the test extra, no matplotlib) the run ended with "wrote results.json,
    results.md" and no word of the plot it had not drawn; the harness now says why there is none."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)    # an import of it raises ImportError
    trial = {"error": None, "proto": "ipfix", "collector": "flowscope-w1", "offered_flows_s": 50_000.0,
             "delivered_flows_s": 50_000.0}
    png = tmp_path / "delivered_vs_offered.png"
    said = harness.write_plot(png, [trial])
    assert isinstance(said, str) and said.startswith("no plot: matplotlib is not installed") and "make bench" in said
    assert not png.exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nfacctd") is None, reason="pmacct not installed")
def test_pmacct_reads_a_burst_sent_as_soon_as_it_has_started(broker: Any) -> None:
    """pmacct's core tells its Kafka plugin of new data only while the plugin waits in its main
    loop: a burst that arrived before (the plugin still clearing its cache) stayed unread, every
    purge wrote 0 entries (8 of 31 pmacct_stop trials read back 0 flows). start_pmacct waited 1 s
    after the core bound its port; now it returns once the plugin waits in that loop. A plugin
    with a cache of 393,215 entries (1.6 GB to clear: about 2 s here) makes the old wait short:
    the 1,500 flows sent at once must all be read back."""
    from benchmarks import broker as brk
    from benchmarks import peers
    from benchmarks.build import build

    topic = brk.create_topic(broker.bootstrap)
    port = free_udp_port()
    peer = peers.start_pmacct("v5", port=port, bootstrap=broker.bootstrap, topic=topic, refresh_s=1,
                              cache_entries=393215)
    try:
        subprocess.run([str(build()), "--proto", "v5", "--to", f"127.0.0.1:{port}", "--count", "50", "--rate",
                        "30000"], capture_output=True, text=True, check=True, timeout=30)
        peer.stop()
        purges = [ln for ln in peer.log_tail(200).splitlines() if "QN: " in ln]
    finally:
        peer.stop()
        peer.cleanup()
    got = brk.count_messages(broker.bootstrap, topic, expected=1500, idle=3).messages
    assert got == 1500, (got, purges)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nfacctd") is None, reason="pmacct not installed")
def test_pmacct_stops_once_its_cache_is_delivered_not_at_its_timeout(broker: Any) -> None:
    """pmacct's core keeps SIGTERM blocked but while it handles a datagram, so Peer.stop's
    SIGTERM stayed pending after the load: every pmacct stop waited its whole timeout (15 s) and
    SIGKILLed it. SIGINT, its graceful stop, can purge one cache twice (benchmarks/peers.py
    PmacctPeer). The stop now waits for a purge begun after it to find the cache empty, then
    kills pmacct: not by the timeout, every flow sent delivered, none twice, nothing left running."""
    from benchmarks import broker as brk
    from benchmarks import peers
    from benchmarks.build import build

    topic = brk.create_topic(broker.bootstrap)
    port = free_udp_port()
    peer = peers.start_pmacct("v5", port=port, bootstrap=broker.bootstrap, topic=topic, refresh_s=2)
    try:
        out = subprocess.run([str(build()), "--proto", "v5", "--to", f"127.0.0.1:{port}", "--count", "50",
                              "--rate", "30000"], capture_output=True, text=True, check=True, timeout=30)
        assert '"flows":1500' in out.stdout
        peer.stop()   # at once: the flows are still in the plugin's cache, or on their way to it
        stopped_by_timeout, left = peer.timed_out, peers.group_members(peer.pid)
        purges = [ln for ln in peer.log_tail(200).splitlines() if "QN: " in ln and "QN: 0/0" not in ln]
    finally:
        peer.stop()
        peer.cleanup()
    assert not stopped_by_timeout, "stop() waited its timeout and SIGKILLed pmacct"
    assert left == []
    got = brk.count_messages(broker.bootstrap, topic, expected=1500, idle=3).messages
    assert got == 1500, (got, purges)
