"""`flowscope decode FILE` end to end, as an operator runs it: a capture written by the test, the
real CLI in a subprocess, and (with --kubeconfig) the informers against the fake API server."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks.datagrams import (
    OVS_EGRESS,
    OVS_INGRESS,
    IpfixTemplate,
    data_set,
    ipfix_message,
    ovs_flows,
    template_set,
)
from collector.util import popen_child
from tests.support.fake_kube import FakeKube, node, pod, replicaset, service
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent
EXPORT = 1_700_000_000


def write_pcap(path: Path, datagrams: list[tuple[float, str, int, bytes]], dport: int = 4739) -> None:
    """A pcapng-free classic pcap, raw-IP link type, one UDP/IPv4 datagram per record."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]
    for ts, src, sport, payload in datagrams:
        udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address("192.0.2.1").packed) + udp
        sec = int(ts)
        out.append(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(ip), len(ip)) + ip)
    path.write_bytes(b"".join(out))


def run_decode(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "collector.cli", "decode", *args], cwd=ROOT,
                          capture_output=True, timeout=120)


def test_decode_stats_sampling_and_json_lines(tmp_path: Path) -> None:
    recs = ovs_flows(25, random.Random(1))
    cap = tmp_path / "ovs.pcap"
    write_pcap(cap, [
        (EXPORT, "10.0.0.1", 50000, ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=EXPORT)),
        (EXPORT + 1, "10.0.0.1", 50000, ipfix_message([data_set(OVS_INGRESS, recs)], seq=0, export_time=EXPORT)),
        (EXPORT + 2, "10.0.0.1", 50000, b"\x00\x0a\x00\x10garbage-garbage"),
        (EXPORT + 3, "10.9.9.9", 50000, ipfix_message([data_set(OVS_INGRESS, recs)], seq=0, export_time=EXPORT)),
    ])
    p = run_decode(str(cap), "--stats", "--sampling", "10.0.0.0/24=50")
    assert p.returncode == 0, p.stderr.decode()
    flows = [orjson.loads(x) for x in p.stdout.splitlines()]
    assert [f["SrcAddr"] for f in flows] == [r["src"] for r in recs]
    assert {f["Sampling"] for f in flows} == {50}
    assert {f["TimeReceived"] for f in flows} == {EXPORT + 1}  # the capture time is the receive time
    stats = orjson.loads(p.stderr[p.stderr.index(b"{"):])
    assert stats["capture"]["udp_datagrams"] == 4
    assert stats["exporters"]["10.0.0.1"] == {
        "datagrams": 3, "flows": 25, "errors": {"bad_length": 1}, "dropped": {}, "missing_template_sets": 0,
        "templates": 1, "templates_evicted": 0, "sampling": 50, "protocol": "ipfix",
        "protocols": {"ipfix": {"datagrams": 3, "flows": 25, "errors": {"bad_length": 1},
                                "missing_template_sets": 0, "sequence_lost": 0, "sequence_resets": 0,
                                "templates_evicted": 0, "sample_drops": 0, "counter_samples_ignored": 0,
                                "samples_skipped": 0, "not_sent": {},
                                "templates": 1}}}
    assert stats["exporters"]["10.9.9.9"]["missing_template_sets"] == 1
    # several CIDR=RATE in one flag, as `flowscope run --sampling` takes them (decode refused them)
    p = run_decode(str(cap), "--sampling", "192.0.2.0/24=7,10.0.0.0/24=60 198.51.100.0/24=9")
    assert p.returncode == 0, p.stderr.decode()
    assert {orjson.loads(x)["Sampling"] for x in p.stdout.splitlines()} == {60}
    p = run_decode(str(cap), "--sampling", "10.0.0.300/24=5")
    assert p.returncode == 2 and p.stderr.decode().strip() == ("flowscope decode: --sampling: '10.0.0.300/24' is "
                                                               "not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)"), p.stderr


def test_decode_bad_arguments_are_clear(tmp_path: Path) -> None:
    p = run_decode(str(tmp_path / "missing.pcap"))
    assert p.returncode == 1 and b"missing.pcap" in p.stderr
    (tmp_path / "x.pcap").write_bytes(b"not a capture at all")
    p = run_decode(str(tmp_path / "x.pcap"))
    assert p.returncode == 1 and b"not a pcap" in p.stderr
    p = run_decode(str(tmp_path / "x.pcap"), "--sampling", "10.0.0.0/8")
    assert p.returncode == 2 and b"CIDR=RATE" in p.stderr


def test_decode_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    """`--port 99999` or `--port -1` matched no datagram: no output and exit 0, as if the
    capture held no flows."""
    cap = tmp_path / "t.pcap"
    write_pcap(cap, [(EXPORT, "10.0.0.1", 50000, ipfix_message([template_set([OVS_INGRESS])], seq=0,
                                                                 export_time=EXPORT))])
    for port in ("99999", "-1", "0", "http"):
        p = run_decode(str(cap), "--port", port)
        assert p.returncode == 2, (port, p.stderr.decode())
        assert p.stderr.decode().splitlines()[-1].startswith("flowscope decode: error: argument --port: ")
        assert b"expected a UDP port 1-65535" in p.stderr and b"Traceback" not in p.stderr and p.stdout == b""
    assert run_decode(str(cap), "--port", "4739").returncode == 0


def test_decode_with_an_unusable_kubeconfig_is_one_line_exit_2(tmp_path: Path) -> None:
    cap = tmp_path / "t.pcap"
    write_pcap(cap, [(EXPORT, "10.0.0.1", 50000, ipfix_message([template_set([OVS_INGRESS])], seq=0,
                                                                 export_time=EXPORT))])
    empty = tmp_path / "empty.kubeconfig"  # parses, but names no current-context
    empty.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    # files that are not kubeconfigs: said in the file's terms, not the client's Python errors
    shapes = {"text": ("just some text\n", b"expected a kubeconfig (a mapping with clusters, contexts and users), "
                                          b"got a str"),
              "list": ("- a\n- b\n", b"got a list"),
              "num": ("clusters: 5\n", b"clusters: expected a list of {name, cluster}, got 5"),
              "server": ("clusters: [{name: c, cluster: {server: 5}}]\ncurrent-context: x\n",
                         b"clusters[0] (c): server: expected a URL, got 5")}
    cases = [(tmp_path / "nonexistent", b"no such file"), (empty, b"current-context")]
    for name, (text, why) in shapes.items():
        (tmp_path / name).write_text(text)
        cases.append((tmp_path / name, why))
    for kc, why in cases:
        p = run_decode(str(cap), "--kubeconfig", str(kc))
        assert p.returncode == 2, p.stderr.decode()
        assert p.stderr.startswith(f"flowscope decode: --kubeconfig {kc}: ".encode()), p.stderr.decode()
        assert why in p.stderr and p.stderr.count(b"\n") == 1 and b"Traceback" not in p.stderr
        assert p.stdout == b""


def test_decode_with_kubeconfig_enriches(fake_kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    fake_kube.add("nodes", node("node-a", internal=["10.0.0.1"], zone="zone-a",
                                subnets={"default": ["10.128.0.0/23"]}))
    fake_kube.add("nodes", node("node-b", internal=["10.0.0.2"], zone="zone-b"))
    fake_kube.add("replicasets", replicaset("web-5d9", "shop", owner=("Deployment", "web")))
    fake_kube.add("pods", pod("web-5d9-a", "shop", ips=["10.128.0.5"], node="node-a", host_ip="10.0.0.1",
                              owner=("ReplicaSet", "web-5d9")))
    fake_kube.add("pods", pod("db-0", "shop", ips=["10.129.0.7"], node="node-b", host_ip="10.0.0.2",
                              owner=("StatefulSet", "db")))
    fake_kube.add("services", service("db", "shop", ips=["172.30.0.10"]))
    kubeconfig = fake_kube.write_kubeconfig(tmp_path / "kubeconfig")
    base: dict[str, Any] = ovs_flows(1, random.Random(2), direction=1)[0]
    recs = [dict(base, src="10.128.0.5", dst="10.129.0.7"),    # pod -> pod on another node, egress
            dict(base, src="10.128.0.5", dst="172.30.0.10"),   # pod -> service
            dict(base, src="10.128.0.2", dst="10.128.0.5")]    # mgmt port (node-a) -> pod, same node
    cap = tmp_path / "k8s.pcap"
    write_pcap(cap, [
        (EXPORT, "10.0.0.1", 50000, ipfix_message([template_set([OVS_EGRESS])], seq=0, export_time=EXPORT)),
        (EXPORT + 1, "10.0.0.1", 50000, ipfix_message([data_set(OVS_EGRESS, recs)], seq=0, export_time=EXPORT)),
    ])
    p = run_decode(str(cap), "--kubeconfig", str(kubeconfig), "--cluster-name", "prod")
    assert p.returncode == 0, p.stderr.decode()
    f1, f2, f3 = (orjson.loads(x) for x in p.stdout.splitlines())
    assert (f1["SrcK8S_Name"], f1["SrcK8S_OwnerName"], f1["SrcK8S_OwnerType"]) == ("web-5d9-a", "web", "Deployment")
    assert (f1["DstK8S_Name"], f1["DstK8S_OwnerType"], f1["DstK8S_HostName"]) == ("db-0", "StatefulSet", "node-b")
    assert f1["SrcK8S_Zone"] == "zone-a" and f1["DstK8S_Zone"] == "zone-b"
    assert f1["FlowDirection"] == 1 and f1["K8S_ClusterName"] == "prod" and f1["K8S_FlowLayer"] == "app"
    assert (f2["DstK8S_Name"], f2["DstK8S_Type"]) == ("db", "Service")
    assert (f3["SrcK8S_Name"], f3["SrcK8S_Type"]) == ("node-a", "Node") and f3["FlowDirection"] == 2
    # --enrich without --kubeconfig: the client's default access ($KUBECONFIG here); without
    # either, a capture is not enriched from whatever cluster $KUBECONFIG points at
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    # (a bare --enrich before the capture does not take the capture's name as its value)
    for args, enriched in (([str(cap), "--enrich"], True), ([str(cap)], False),
                           ([str(cap), "--enrich", "--no-enrich"], False), (["--enrich", str(cap)], True),
                           (["--enrich", "false", str(cap)], False), (["--enrich", "yes", str(cap)], True)):
        p = subprocess.run([sys.executable, "-m", "collector.cli", "decode", *args], cwd=ROOT,
                           capture_output=True, timeout=120, env=env)
        assert p.returncode == 0, p.stderr.decode()
        assert [("SrcK8S_Name" in orjson.loads(x)) for x in p.stdout.splitlines()] == [enriched] * 3, args


def test_decode_enriches_from_the_kube_context_given(fake_kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    """`flowscope decode --kube-context` picks a context of the kubeconfig, as `run` does (the
    current-context here names a cluster nothing listens on); a context the file does not have
    is one line, exit 2, naming the ones it has."""
    fake_kube.add("pods", pod("web-0", "shop", ips=["10.128.0.5"], node="node-a", host_ip="10.0.0.1"))
    cfg = json.loads(fake_kube.write_kubeconfig(tmp_path / "one").read_text())
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))     # a port of ours nothing accepts on
    cfg["clusters"].append({"name": "gone", "cluster": {"server": f"http://127.0.0.1:{dead.getsockname()[1]}"}})
    cfg["contexts"].append({"name": "gone", "context": {"cluster": "gone", "user": "fake"}})
    cfg["current-context"] = "gone"
    kc = tmp_path / "two"
    kc.write_text(json.dumps(cfg))
    rec = dict(ovs_flows(1, random.Random(2), direction=1)[0], src="10.128.0.5", dst="10.128.0.9")
    cap = tmp_path / "one.pcap"
    write_pcap(cap, [
        (EXPORT, "10.0.0.1", 50000, ipfix_message([template_set([OVS_EGRESS])], seq=0, export_time=EXPORT)),
        (EXPORT + 1, "10.0.0.1", 50000, ipfix_message([data_set(OVS_EGRESS, [rec])], seq=0, export_time=EXPORT)),
    ])
    try:
        p = run_decode(str(cap), "--kubeconfig", str(kc), "--kube-context", "fake")
        assert p.returncode == 0, p.stderr.decode()
        assert [orjson.loads(x).get("SrcK8S_Name") for x in p.stdout.splitlines()] == ["web-0"]
        p = run_decode(str(cap), "--kubeconfig", str(kc), "--kube-context", "staging")
        assert p.returncode == 2 and not p.stdout
        assert p.stderr.decode().strip() == (f"flowscope decode: --kube-context 'staging' is not a context of {kc} "
                                             "(its contexts: fake, gone)")
    finally:
        dead.close()


def test_ipv4_mapped_addresses_are_enriched_and_written_as_their_ipv4_addresses() -> None:
    """A record carrying IPv4-mapped IPv6 addresses (::ffff:a.b.c.d in IE 27/28) is the IPv4
    flow to the index, as NetObserv reads such addresses (review helper-82: such flows had no
    identity), and its addresses are written as NetObserv writes them, dotted quads (Go's
    net.IP.String(): flowlogs-pipeline's SrcAddr/DstAddr), like the K8S_HostIP beside them: a
    consumer filtering SrcAddr 10.128.0.6 finds the flow (helper 8's format audit)."""
    import enrich
    from decoders import Decoder

    e = enrich.Enricher.from_objects(
        pods=[pod("web", "shop", ips=["10.128.0.6"], node="node-a", host_ip="10.0.0.1", created="2024-01-01T00:00:00Z")],
        nodes=[node("node-a", internal=["10.0.0.1"])], services=[service("db", "shop", ips=["172.30.0.10"])])
    t = IpfixTemplate(300, (("src", 27, 0, 16), ("dst", 28, 0, 16), ("proto", 4, 0, 1), ("b", 1, 0, 4)))
    recs = [{"src": "::ffff:10.128.0.6", "dst": "::ffff:172.30.0.10", "proto": 6, "b": 100},
            {"src": "::ffff:10.128.0.6", "dst": "2001:db8::1", "proto": 6, "b": 100}]
    b = Decoder().decode(ipfix_message([template_set([t]), data_set(t, recs)], seq=0, export_time=EXPORT), "10.0.0.1")
    both, one = (orjson.loads(x) for x in b.to_json(e))
    assert (both["SrcAddr"], both["DstAddr"], both["SrcK8S_Name"], both["SrcK8S_HostIP"], both["DstK8S_Name"],
            both["DstK8S_Type"]) == ("10.128.0.6", "172.30.0.10", "web", "10.0.0.1", "db", "Service")
    assert (one["SrcAddr"], one["DstAddr"], one["SrcK8S_Name"], "DstK8S_Name" in one) == (
        "10.128.0.6", "2001:db8::1", "web", False)


def test_encoder_c_path_equals_python_enricher_and_follows_index_changes() -> None:
    """The encoder calls the compiled index through its C API with a per-address cache; its
    output must equal the Python contract's, also after the index changes (IP reuse)."""
    import enrich
    from decoders import Decoder, RecordBatchWriter

    pods = [pod(f"p{i}", "ns1", ips=[f"10.128.0.{i}"], node="node-a", host_ip="10.0.0.1",
                owner=("StatefulSet", "s"), created="2024-01-01T00:00:00Z") for i in range(2, 40)]
    e = enrich.Enricher.from_objects(pods=pods, nodes=[node("node-a", internal=["10.0.0.1"])],
                                     services=[service("svc", "ns1", ips=["172.30.0.10"])])
    if not hasattr(e, "c_api"):
        import pytest

        pytest.skip("enrich._fast not built: the C path does not exist in this build")

    class PythonOnly:  # the same index through the Python-level contract only
        def enrich(self, *a: Any) -> bytes:
            return e.enrich(*a)

    rng = random.Random(5)
    t0 = 1_780_000_000
    recs = []
    for _ in range(25):
        r = ovs_flows(1, rng)[0]
        r["src"] = f"10.128.0.{rng.randrange(2, 45)}"
        r["dst"] = rng.choice([f"10.128.0.{rng.randrange(2, 45)}", "172.30.0.10", "8.8.8.8"])
        recs.append(r)
    recs[0]["src"] = recs[1]["dst"] = "10.128.0.5"  # the address that gets reused below
    dec = Decoder()
    dec.decode(ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=t0), "10.0.0.1")
    msg = ipfix_message([data_set(OVS_INGRESS, recs)], seq=0, export_time=t0)

    def both() -> tuple[list[bytes], list[bytes]]:
        b = dec.decode(msg, "10.0.0.1", 0, t0)
        w = RecordBatchWriter(1 << 20)
        w.append(b, e)
        return b.to_json(e), b.to_json(PythonOnly())

    fast, slow = both()
    assert fast == slow and any(b"SrcK8S_Name" in x for x in fast)

    class COnly:  # the same index through the C API only: a fallback to enrich() fails
        c_api = e.c_api

        def enrich(self, *a: Any) -> bytes:
            raise AssertionError("the encoder did not take the C path (capsule not recognised?)")

    b = dec.decode(msg, "10.0.0.1", 0, t0)
    w = RecordBatchWriter(1 << 20)
    w.append(b, COnly())
    assert b.to_json(COnly()) == fast
    # Pod p5 is deleted and its IP reused by a new pod: cached answers must not survive.
    idx = e.index
    idx.delete("pods", idx.parse("pods", pods[3]))
    idx.upsert("pods", idx.parse("pods", pod("new", "ns2", ips=["10.128.0.5"], node="node-a", host_ip="10.0.0.1",
                                             created="2026-01-01T00:00:00Z")))
    fast2, slow2 = both()
    assert fast2 == slow2 and fast2[0] != fast[0]


def test_encoder_c_path_follows_the_exporters_node_between_batches() -> None:
    """FlowDirection depends on the exporter's node (egress at the source's node, ingress at the
    destination's). The encoder looks that node up once per batch: when the index moves (the
    exporter's address given to another node) the next batch must see it, through the C view
    as through the Python contract."""
    import enrich
    from decoders import Decoder, RecordBatchWriter

    pods = [pod(f"a{i}", "ns1", ips=[f"10.128.0.{i}"], node="node-a", host_ip="10.0.0.1") for i in range(2, 6)]
    pods += [pod(f"b{i}", "ns1", ips=[f"10.128.1.{i}"], node="node-b", host_ip="10.0.0.2") for i in range(2, 6)]
    t0 = 1_780_000_000
    # (the index's clock a minute before the flows: the exporter's address, moved between the
    # nodes by updates, is the new holder's in flows that start after its update, while the old
    # holder's tombstone keeps the flows of before, afa842f)
    e = enrich.Enricher.from_objects(pods=pods, nodes=[node("node-a", internal=["10.0.0.1"]),
                                                       node("node-b", internal=["10.0.0.2"])],
                                     clock=lambda: t0 - 60)
    if not hasattr(e, "c_api"):
        import pytest

        pytest.skip("enrich._fast not built: the C path does not exist in this build")

    class PythonOnly:
        def enrich(self, *a: Any) -> bytes:
            return e.enrich(*a)

    class COnly:
        c_api = e.c_api

        def enrich(self, *a: Any) -> bytes:
            raise AssertionError("the encoder did not take the C path")

    rng = random.Random(9)
    recs = ovs_flows(10, rng)
    for k, r in enumerate(recs):
        r["src"], r["dst"] = f"10.128.0.{2 + k % 4}", f"10.128.1.{2 + k % 4}"
        r["direction"] = 7   # not a flowDirection (RFC 5102: 0 or 1): unknown
    dec = Decoder()
    exporter = "10.0.0.9"
    dec.decode(ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=t0), exporter)
    msg = ipfix_message([data_set(OVS_INGRESS, recs)], seq=0, export_time=t0)
    w = RecordBatchWriter(1 << 20)   # one writer across the batches, as a sink's open batch

    def directions() -> set[int | None]:
        b = dec.decode(msg, exporter, 0, t0)
        w.append(b, COnly())
        fast, slow = b.to_json(COnly()), b.to_json(PythonOnly())
        assert fast == slow
        return {orjson.loads(x).get("FlowDirection") for x in fast}

    # the exporter is nobody's node and the records give no direction: none
    assert directions() == {None}
    idx = e.index
    idx.upsert("nodes", idx.parse("nodes", node("node-a", internal=["10.0.0.1", exporter])))
    assert directions() == {1}   # the source's node exported them: egress
    idx.upsert("nodes", idx.parse("nodes", node("node-a", internal=["10.0.0.1"])))
    idx.upsert("nodes", idx.parse("nodes", node("node-b", internal=["10.0.0.2", exporter])))
    assert directions() == {0}   # the destination's node: ingress
    assert w.records == 30


def test_datagrams_cut_by_the_capture_snaplen_are_skipped_and_counted(tmp_path: Path) -> None:
    """A capture taken with a small snaplen keeps only the start of each datagram: the reader
    skips such a datagram (counted as truncated_capture) instead of passing the cut bytes off
    as the datagram; the whole ones still come through."""
    from collector.pcap import PcapStats, iter_udp

    whole = ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=EXPORT)
    cap = tmp_path / "snap.pcap"
    write_pcap(cap, [(EXPORT, "10.0.0.1", 50000, whole), (EXPORT + 1, "10.0.0.1", 50000, whole)])
    raw = bytearray(cap.read_bytes())
    # cut the second record to 60 captured bytes (incl_len), as tcpdump -s 60 would
    first_len = struct.unpack_from("<I", raw, 24 + 8)[0]
    rec2 = 24 + 16 + first_len
    orig = struct.unpack_from("<I", raw, rec2 + 12)[0]
    struct.pack_into("<I", raw, rec2 + 8, 60)
    cap.write_bytes(bytes(raw[:rec2 + 16 + 60]))
    assert orig > 60
    stats = PcapStats()
    got = list(iter_udp(cap, stats=stats))
    assert [len(d.payload) for d in got] == [len(whole)]
    assert stats.skipped == {"truncated_capture": 1}


def test_decode_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`flowscope decode big.pcap | head -1`: the reader goes away after one line. That is not
    an error of the capture: exit 0, nothing on stderr."""
    rng = random.Random(3)
    cap = tmp_path / "big.pcap"
    dgs = [(EXPORT, "10.0.0.1", 50000, ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=EXPORT))]
    for i in range(200):  # 5000 flows, about 3 MB of JSON: far more than a pipe buffer holds
        dgs.append((EXPORT + 1, "10.0.0.1", 50000,
                    ipfix_message([data_set(OVS_INGRESS, ovs_flows(25, rng))], seq=i * 25, export_time=EXPORT)))
    write_pcap(cap, dgs)
    p = popen_child([sys.executable, "-m", "collector.cli", "decode", str(cap), "--stats"], cwd=ROOT,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()  # as head -1 does
    err = p.stderr.read()
    assert p.wait(60) == 0, err.decode()
    assert orjson.loads(first)["SrcAddr"] and err == b""


def test_decode_and_replay_help_show_options_as_run_does() -> None:
    """`flowscope decode --help` showed its capture as `file` and --max-templates as
    MAX_TEMPLATES (argparse's names for an option without a metavar), and `replay --help` ended
    every option with argparse's "(default: None)" / "(default: False)": run and config show an
    upper-case metavar for each value (N for a count) and `[default: X]` where there is one."""
    import re

    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "1000"}
    helps = {c: subprocess.run([sys.executable, "-m", "collector.cli", c, "--help"], capture_output=True, text=True,
                               cwd=ROOT, env=env, timeout=60, check=True).stdout for c in ("decode", "replay")}
    for command, text in helps.items():
        usage = text.split("\n\n")[0]
        assert usage.endswith(" FILE"), (command, usage)
        assert "\n  FILE " in text and "\n  file " not in text, command
        assert "(default: " not in text, command
        for flag, metavar in re.findall(r"\[(--[a-z-]+) ([^\]\s]+)\]", usage):
            assert "_" not in metavar, (command, flag, metavar)  # argparse's name from the dest
    assert "[--max-templates N]" in helps["decode"] and "[--default-sampling N]" in helps["decode"]
    assert "templates kept per exporter [default: 1024]" in helps["decode"]
    assert "--loop N        times to send the capture; 0 = forever [default: 1]" in helps["replay"]
    assert "--to HOST:PORT  destination collector (IPv6 as [ADDR]:PORT); an empty or" in helps["replay"]
    assert "127.0.0.1, ::1 for [::]\n" in helps["replay"]


def test_keyed_batches_carry_the_same_enriched_flows_and_count_each_lookup_once() -> None:
    """The keyed modes' C path (decoders.KeyedBatches) enriches through the same C view as the
    key none writer: the same records, and with small batches that fill up mid-datagram (the
    flow that did not fit is encoded again in the next batch) its lookups are counted once, as
    the key none writer with room for everything counts them."""
    import enrich
    from decoders import Decoder, KeyedBatches, RecordBatchWriter

    pods = [pod(f"p{i}", "ns1", ips=[f"10.128.0.{i}"], node="node-a", host_ip="10.0.0.1",
                owner=("StatefulSet", "s")) for i in range(2, 40)]
    e = enrich.Enricher.from_objects(pods=pods, nodes=[node("node-a", internal=["10.0.0.1"])],
                                     services=[service("svc", "ns1", ips=["172.30.0.10"])])
    if not hasattr(e, "c_api"):
        import pytest

        pytest.skip("enrich._fast not built: the C path does not exist in this build")
    from aiokafka.record._crecords.cutil import crc32c_cython
    from aiokafka.record.default_records import DefaultRecordBatch

    rng = random.Random(8)
    t0 = 1_780_000_000
    dec = Decoder()
    dec.decode(ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=t0), "10.0.0.1")
    msgs = []
    for s in range(8):
        recs = ovs_flows(25, rng)
        for r in recs:
            r["src"] = f"10.128.0.{rng.randrange(2, 45)}"
            r["dst"] = rng.choice([f"10.128.0.{rng.randrange(2, 45)}", "172.30.0.10", "8.8.8.8"])
        msgs.append(ipfix_message([data_set(OVS_INGRESS, recs)], seq=s * 25, export_time=t0))

    def lookups() -> int:
        st = e.stats()
        return int(st["lookups_cached"] + st["lookups_index"])

    before = lookups()
    w = RecordBatchWriter(1 << 20)
    want = []
    for m in msgs:
        b = dec.decode(m, "10.0.0.1", 0, t0)
        assert w.append(b, e) == len(b)
        want += b.to_json(e)
    per_pass = lookups() - before
    assert per_pass > 0
    before = lookups()
    kb = KeyedBatches(3, 4096, "conversation")
    got = []
    stops = 0
    for m in msgs:
        b = dec.decode(m, "10.0.0.1", 0, t0)
        i = kb.append(b, e, 0)
        while i < len(b):
            stops += 1
            got += [r.value for r in DefaultRecordBatch(kb.take(kb.full).build(crc32c_cython))]
            i = kb.append(b, e, i)
    for _, wr in kb.take_all():
        got += [r.value for r in DefaultRecordBatch(wr.build(crc32c_cython))]
    assert stops > 0
    assert sorted(got) == sorted(want) and any(b"SrcK8S_Name" in x for x in got)
    # to_json(e) of every datagram above looked up once more per flow than the writer did
    assert lookups() - before == per_pass // 2


def test_decode_names_the_informers_that_did_not_sync(fake_kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    """An API server that answers every kind but one (RBAC without `list services`): decode gives
    up after --sync-timeout, before any flow, and says which kind and why (it said only that
    the informers did not sync, after a fixed 60 s)."""
    fake_kube.add("nodes", node("node-a", internal=["10.0.0.1"]))
    fake_kube.fail("services", "list", "forbidden")
    kubeconfig = fake_kube.write_kubeconfig(tmp_path / "kubeconfig")
    base: dict[str, Any] = ovs_flows(1, random.Random(2), direction=1)[0]
    cap = tmp_path / "k8s.pcap"
    write_pcap(cap, [
        (EXPORT, "10.0.0.1", 50000, ipfix_message([template_set([OVS_EGRESS]), data_set(OVS_EGRESS, [base])],
                                                  seq=0, export_time=EXPORT)),
    ])
    p = run_decode(str(cap), "--kubeconfig", str(kubeconfig), "--sync-timeout", "3")
    err = p.stderr.decode()
    assert p.returncode == 1 and p.stdout == b"", err
    last = err.strip().splitlines()[-1]
    assert last.startswith("flowscope decode: Kubernetes informers did not sync within 3 s: services not synced "
                           "(forbidden"), err
    assert "'list'" in last and "pods" not in last and "nodes not synced" not in last, last
    for bad in ("0", "-1", "soon", "inf"):
        p = run_decode(str(cap), "--kubeconfig", str(kubeconfig), "--sync-timeout", bad)
        assert p.returncode == 2 and b"--sync-timeout" in p.stderr, (bad, p.stderr.decode())


def _decode_parser_options() -> tuple[set[str], set[str]]:
    """The option strings of `flowscope run`'s enrichment group, and every one decode takes."""
    import argparse

    from collector.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    run, decode = sub.choices["run"], sub.choices["decode"]
    group = next(g for g in run._action_groups if g.title == "Kubernetes enrichment options")
    return ({s for a in group._group_actions for s in a.option_strings},
            {s for a in decode._actions for s in a.option_strings})


def test_decode_takes_every_enrichment_option_run_takes() -> None:
    """`flowscope decode --kubeconfig` enriches as `flowscope run` does: an enrichment option
    copied from a run's command line (the page size of its lists above all) is taken, not a
    usage error."""
    run_flags, decode_flags = _decode_parser_options()
    assert "--enrich-list-chunk-size" in run_flags and "--kubeconfig" in run_flags
    assert sorted(run_flags - decode_flags) == []


def _decode_enrich_config(*argv: str) -> Any:
    """The EnrichConfig `flowscope decode ARGV` would enrich with (the CLI's own parsing)."""
    from collector.cli import bare_optional_flags, build_parser
    from collector.decode import enrich_config

    return enrich_config(build_parser().parse_args(bare_optional_flags(["decode", *argv])))


def test_decode_reads_the_enrichment_options_as_run_does(tmp_path: Path) -> None:
    from tests.support.fake_kube import run_enrich_config

    for argv in ([], ["--enrich-list-chunk-size", "2000"], ["--enrich-list-chunk-size", "0"],
                 ["--pod-tombstone-seconds", "10m"], ["--pod-tombstone-seconds", "0"],
                 ["--no-enrich-pod-networks"], ["--enrich-pod-networks", "false"]):
        want = run_enrich_config(tmp_path, argv)
        got = _decode_enrich_config("capture.pcap", "--kubeconfig", "kc", *argv)
        assert (got.list_chunk_size, got.tombstone_seconds, got.pod_networks) == (
            want.list_chunk_size, want.tombstone_seconds, want.pod_networks), argv
    assert _decode_enrich_config("--kubeconfig", "kc", "--pod-tombstone-seconds", "10m",
                                 "capture.pcap").tombstone_seconds == 600
    # a bare switch before the capture's name, as `flowscope run --enrich-pod-networks` is true
    assert _decode_enrich_config("--kubeconfig", "kc", "--no-enrich-pod-networks", "--enrich-pod-networks",
                                 "capture.pcap").pod_networks is True


def test_decode_lists_in_the_pages_it_is_told(fake_kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    """--enrich-list-chunk-size reaches the informers of `flowscope decode`: the API server sees
    pages of that size (500 without it), and the flows are enriched from all of them."""
    fake_kube.add("nodes", node("node-a", internal=["10.0.0.1"]))
    pods = [pod(f"web-{i}", "shop", ips=[f"10.244.0.{10 + i}"]) for i in range(7)]
    for p in pods:
        fake_kube.add("pods", p)
    for k in ("services", "replicasets"):
        fake_kube.bookmark(k)
    kubeconfig = fake_kube.write_kubeconfig(tmp_path / "kubeconfig")
    base: dict[str, Any] = ovs_flows(1, random.Random(2), direction=1)[0]
    recs = [dict(base, src=f"10.244.0.{10 + i}", dst="10.244.0.10") for i in range(7)]
    cap = tmp_path / "k8s.pcap"
    write_pcap(cap, [
        (EXPORT, "10.0.0.1", 50000, ipfix_message([template_set([OVS_EGRESS]), data_set(OVS_EGRESS, recs)],
                                                  seq=0, export_time=EXPORT)),
    ])

    def pod_list_limits() -> list[str | None]:
        with fake_kube.cond:
            return [r["query"].get("limit") for r in fake_kube.requests if r["kind"] == "pods" and r["verb"] == "list"]

    for argv, want in (([], ["500"]), (["--enrich-list-chunk-size", "3"], ["3", "3", "3"]),
                       (["--enrich-list-chunk-size", "0"], [None])):
        with fake_kube.cond:
            fake_kube.requests.clear()
        p = run_decode(str(cap), "--kubeconfig", str(kubeconfig), *argv)
        assert p.returncode == 0, p.stderr.decode()
        assert pod_list_limits() == want, argv
        flows = [orjson.loads(x) for x in p.stdout.splitlines()]
        assert [f.get("SrcK8S_Name") for f in flows] == [f"web-{i}" for i in range(7)], argv
    for flag, bad, says in (("--enrich-list-chunk-size", "-1", "out of range"),
                            ("--enrich-list-chunk-size", "many", "expected an integer"),
                            ("--pod-tombstone-seconds", "soon", "expected seconds")):
        p = run_decode(str(cap), "--kubeconfig", str(kubeconfig), flag, bad)
        err = p.stderr.decode()
        assert p.returncode == 2 and p.stdout == b"", (flag, bad, err)
        assert f"argument {flag}: " in err and says in err, (flag, bad, err)
