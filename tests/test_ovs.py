"""End-to-end with Open vSwitch, the exporter OVN-Kubernetes runs on every node.

A private ovs-vswitchd (userspace datapath) runs in a network namespace with two "pods" (network
namespaces on veth ports, OVN-style MACs). IPFIX, sFlow and NetFlow are configured with the
ovs-vsctl commands OVN-Kubernetes uses; TCP, UDP and ICMP traffic over IPv4 and IPv6 flows between
the pods; the exports are captured on the namespace's loopback. flowscope's decode must equal
tshark's decode of the same capture and match the traffic that was made (addresses, ports,
protocols, packets and bytes where sampling=1 makes them exact), plus the OVS specifics: TCP flags
from the tcp*TotalCount elements, interface names, ingress/egress records, OpenFlow port numbers
in NetFlow v5, and the Sampling field with the OVN-Kubernetes default of 400.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import netns as N
from tests.support import ovs as O
from tests.support import tshark as T
from tests.test_golden_corpus import check_cflow_capture, check_sflow_capture

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool", "ethtool", "tcpdump", "tshark")


@pytest.fixture(scope="module")
def decoders_mod():
    mod = pytest.importorskip("decoders", reason="decoders package not importable")
    if not hasattr(mod, "Decoder"):
        pytest.skip("decoders.Decoder missing: build with `python setup.py build_ext --inplace`")
    return mod


@dataclass
class Env:
    ovs: O.OVS
    ns: N.NetNS
    bridge: str
    a: O.Pod
    b: O.Pod
    dir: Path


@pytest.fixture(scope="module")
def env():
    reason = N.root_skip_reason(*TOOLS)
    if reason:
        pytest.skip(reason)
    d = Path(tempfile.mkdtemp(prefix="fs-ovs-"))
    ns = N.NetNS()
    ovs = O.OVS(ns, d)
    try:
        ovs.start()
        br = ovs.add_bridge("br-int")
        a = ovs.add_pod(br, 1)
        b = ovs.add_pod(br, 2)
        yield Env(ovs, ns, br, a, b, d)
    finally:
        ovs.stop()
        ns.close()
        if not os.environ.get("FLOWSCOPE_KEEP_CAPTURES"):  # set it to keep captures and logs
            shutil.rmtree(d, ignore_errors=True)


@dataclass
class Sent:
    """One unidirectional stream the test made, and what an exporter must report for it."""
    src: str
    dst: str
    proto: int
    sport: int  # ICMP: type
    dport: int  # ICMP: code
    packets: int | None  # exact count when known (UDP, ICMP); None for TCP (segmentation)
    l3_len: int | None  # IP length per packet when all equal


def make_traffic(e: Env) -> list[Sent]:
    a, b = e.a, e.b
    sent: list[Sent] = []
    for ver, (sa, da) in ((4, (a.ipv4, b.ipv4)), (6, (a.ipv6, b.ipv6))):
        iph = 20 if ver == 4 else 40
        # ICMP echo: 3 requests of 56 bytes, the peer kernel answers each.
        ok = int(O.traffic(a, "ping", da, 3, 56).strip())
        assert ok == 3, f"ping {da}: {ok}/3 replies (bridge not forwarding?)"
        t_req, t_rep = (8, 0) if ver == 4 else (128, 129)
        proto = 1 if ver == 4 else 58
        sent.append(Sent(sa, da, proto, t_req, 0, 3, iph + 8 + 56))
        sent.append(Sent(da, sa, proto, t_rep, 0, 3, iph + 8 + 56))
        # UDP: 10 datagrams of 100 bytes.
        sport, dport = 40100 + ver, 5300 + ver
        O.traffic(a, "udp-send", da, dport, 10, 100, sport)
        sent.append(Sent(sa, da, 17, sport, dport, 10, iph + 8 + 100))
        # TCP: 10000 bytes one way, 3000 back.
        sport, dport = 40200 + ver, 5400 + ver
        srv = O.traffic(b, "tcp-server", da, dport, 3000, background=True)
        got = int(O.traffic(a, "tcp-client", da, dport, 10000, sport).strip())
        srv.wait(10)
        assert got == 3000
        sent.append(Sent(sa, da, 6, sport, dport, None, None))
        sent.append(Sent(da, sa, 6, dport, sport, None, None))
    return sent


def _key(f: dict) -> tuple:
    if f.get("Proto") in (1, 58):
        return (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("IcmpType"), f.get("IcmpCode"))
    return (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("SrcPort"), f.get("DstPort"))


def _sent_key(s: Sent) -> tuple:
    return (s.src, s.dst, s.proto, s.sport, s.dport)


def split_capture(cap: Path, port: int, layer: str):
    from collector.pcap import iter_udp

    datagrams = [d for d in iter_udp(cap) if d.dport == port]
    packets = [p for p in T.run_tshark(cap, decode_as=[f"udp.port=={port},{layer}"]) if p["dport"] == port]
    return datagrams, packets


def decode_all(decoders_mod, datagrams, **cfg) -> list[dict]:
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(**cfg))
    return [f for d in datagrams for f in dec.decode(d.payload, d.src, d.sport, d.ts).to_dicts()]


def run_exports(e: Env, *, ipfix_sampling: int, sflow_sampling: int, traffic, wait: float = 10.0):
    ports = {"ipfix": random.randint(20000, 29999), "sflow": random.randint(30000, 39999),
             "netflow": random.randint(40000, 49999)}
    for p in ports.values():
        N.udp_sink(e.ns, "127.0.0.1", p)
    cap_path = e.dir / f"export-{ipfix_sampling}-{time.monotonic_ns()}.pcap"  # one per attempt
    cap = N.Capture(e.ns, cap_path, bpf="udp and dst host 127.0.0.1")
    try:
        e.ovs.set_ipfix(e.bridge, f"127.0.0.1:{ports['ipfix']}", sampling=ipfix_sampling,
                        cache_active_timeout=2, cache_max_flows=100, obs_domain_id=0)
        e.ovs.set_sflow(e.bridge, f"127.0.0.1:{ports['sflow']}", agent="lo", sampling=sflow_sampling,
                        polling=1, header=128)
        e.ovs.set_netflow(e.bridge, f"127.0.0.1:{ports['netflow']}", active_timeout=60,
                          engine_type=1, engine_id=2)
        # Datapath flows cached from earlier traffic (megaflows idle out after 10 s) keep the
        # actions they were translated with, possibly without this exporter's sample action
        # until the revalidators catch up: purge them so every conversation is translated anew.
        e.ovs.appctl("revalidator/purge")
        time.sleep(1.0)
        sent = traffic(e)
        time.sleep(wait)  # max-idle 3 s (NetFlow), cache_active_timeout 2 s (IPFIX), polling 1 s
    finally:
        try:
            e.ovs.clear_exports(e.bridge)
        finally:
            cap.stop()
    return cap_path, ports, sent


@pytest.fixture(scope="module")
def sampled_all(env, decoders_mod):
    """Exports with sampling=1 (every packet) for exact comparisons with the traffic.

    The userspace datapath occasionally leaves a short conversation out of its IPFIX export (seen
    in about half the attempts on a loaded 2-core machine: one direction of a TCP or ICMPv6
    conversation, or most conversations made right after the exporter was reconfigured): when one is
    missing from the IPFIX capture, as flowscope decodes it, the whole export is made again,
    with fresh traffic and a fresh capture, up to four times. A decoder that loses a
    conversation fails all four; the comparisons below stay exact on the capture that is kept."""
    for attempt in range(4):
        cap, ports, sent = run_exports(env, ipfix_sampling=1, sflow_sampling=1, traffic=make_traffic,
                                       wait=10.0 + 2.0 * attempt)
        datagrams, _ = split_capture(cap, ports["ipfix"], "cflow")
        seen = {_key(f) for f in decode_all(decoders_mod, datagrams, default_sampling=0)}
        if all(_sent_key(s) in seen for s in sent):
            break
    return cap, ports, sent


def test_ovs_ipfix(env, sampled_all, decoders_mod) -> None:
    cap, ports, sent = sampled_all
    datagrams, packets = split_capture(cap, ports["ipfix"], "cflow")
    assert datagrams, "OVS sent no IPFIX"
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    problems = check_cflow_capture(dec, datagrams, packets, "ovs-ipfix")
    flows = decode_all(decoders_mod, datagrams, default_sampling=0)
    by_dir: dict[tuple, dict[int, collections.Counter]] = collections.defaultdict(
        lambda: collections.defaultdict(collections.Counter))
    flags: dict[tuple, set] = collections.defaultdict(set)
    ifaces: dict[tuple, list] = collections.defaultdict(list)
    for f in flows:
        k = _key(f)
        d = f.get("FlowDirection", -1)
        by_dir[k][d]["Packets"] += f.get("Packets", 0)
        by_dir[k][d]["Bytes"] += f.get("Bytes", 0)
        flags[k] |= set(f.get("Flags", []))
        ifaces[k].append((d, f.get("Interfaces"), f.get("IfDirections"), f.get("InIf"), f.get("OutIf")))
    pod_if = {env.a.ipv4: env.a, env.a.ipv6: env.a, env.b.ipv4: env.b, env.b.ipv6: env.b}
    for s in sent:
        k = _sent_key(s)
        if k not in by_dir:
            problems.append(f"IPFIX: no flow for {k}")
            continue
        # OVS samples each packet at input (FlowDirection 0) and at output (1).
        if set(by_dir[k]) - {0, 1}:
            problems.append(f"IPFIX {k}: FlowDirection values {sorted(by_dir[k])}, OVS sends 0/1")
        ing = by_dir[k].get(0, collections.Counter())
        egr = by_dir[k].get(1, collections.Counter())
        if s.packets is not None:
            for name, c in (("ingress", ing), ("egress", egr)):
                if c["Packets"] != s.packets:
                    problems.append(f"IPFIX {k} {name}: Packets {c['Packets']}, sent {s.packets}")
                if c["Bytes"] != s.packets * s.l3_len:
                    problems.append(f"IPFIX {k} {name}: Bytes {c['Bytes']}, sent {s.packets}x{s.l3_len}")
        if s.proto == 6:
            if ing["Packets"] < 3:
                problems.append(f"IPFIX {k}: TCP ingress Packets {ing['Packets']}")
            # No tcpControlBits in OVS IPFIX: flags come from tcp{Syn,Fin,Ack,...}TotalCount.
            if not {"SYN", "ACK", "FIN"} <= flags[k]:
                problems.append(f"IPFIX {k}: Flags {sorted(flags[k])}, expected SYN, ACK, FIN")
        src_pod, dst_pod = pod_if[s.src], pod_if[s.dst]
        for d, names, dirs, inif, outif in ifaces[k]:
            if inif is not None and inif != src_pod.ifindex:
                problems.append(f"IPFIX {k} dir {d}: InIf {inif}, ingress port ifindex {src_pod.ifindex}")
            if d == 1 and outif is not None and outif != dst_pod.ifindex:
                problems.append(f"IPFIX {k} dir 1: OutIf {outif}, egress port ifindex {dst_pod.ifindex}")
            if names is None:
                problems.append(f"IPFIX {k} dir {d}: no Interfaces (interfaceName is exported)")
            elif names[0] != src_pod.host_if:
                problems.append(f"IPFIX {k} dir {d}: Interfaces {names}, first must be the ingress "
                                f"port {src_pod.host_if}")
            elif d == 1 and (len(names) < 2 or names[1] != dst_pod.host_if):
                problems.append(f"IPFIX {k} dir 1: Interfaces {names}, expected [{src_pod.host_if}, "
                                f"{dst_pod.host_if}]")
            if names is not None and dirs is not None and len(dirs) != len(names):
                problems.append(f"IPFIX {k}: IfDirections {dirs} vs Interfaces {names}")
    assert not problems, "\n".join(problems)


def test_ovs_sflow(env, sampled_all, decoders_mod) -> None:
    cap, ports, sent = sampled_all
    datagrams, packets = split_capture(cap, ports["sflow"], "sflow")
    assert datagrams, "OVS sent no sFlow"
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    problems = check_sflow_capture(dec, datagrams, packets, "ovs-sflow")
    flows = decode_all(decoders_mod, datagrams, default_sampling=0)
    count: collections.Counter = collections.Counter()
    for f in flows:
        if f.get("Sampling") != 1:
            problems.append(f"sFlow: Sampling {f.get('Sampling')!r}, configured 1")
            break
    for f in flows:
        k = _key(f)
        count[k] += 1
        for s in sent:
            if _sent_key(s) == k and s.l3_len is not None and f.get("Bytes") != s.l3_len + 18:
                problems.append(f"sFlow {k}: Bytes {f.get('Bytes')}, frame is {s.l3_len} + 14 + FCS 4")
                break
    for s in sent:
        k = _sent_key(s)
        if s.packets is not None and count[k] != s.packets:
            problems.append(f"sFlow {k}: {count[k]} samples at sampling 1, sent {s.packets} packets")
        if s.packets is None and count[k] < 3:
            problems.append(f"sFlow {k}: {count[k]} samples for a TCP connection")
    assert not problems, "\n".join(problems)


def test_ovs_netflow_v5(env, sampled_all, decoders_mod) -> None:
    cap, ports, sent = sampled_all
    datagrams, packets = split_capture(cap, ports["netflow"], "cflow")
    assert datagrams, "OVS sent no NetFlow"
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    problems = check_cflow_capture(dec, datagrams, packets, "ovs-netflow")
    flows = decode_all(decoders_mod, datagrams, default_sampling=0)
    agg: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    ports_seen: dict[tuple, set] = collections.defaultdict(set)
    for f in flows:
        k = _key(f)
        if f.get("Proto") == 1 and f.get("IcmpType") is None:
            dp = f.get("DstPort", 0)  # v5: ICMP type/code packed in the destination port
            k = (f.get("SrcAddr"), f.get("DstAddr"), 1, dp >> 8, dp & 0xFF)
        agg[k]["Packets"] += f.get("Packets", 0)
        agg[k]["Bytes"] += f.get("Bytes", 0)
        ports_seen[k].add((f.get("InIf"), f.get("OutIf")))
    pods = {env.a.ipv4: env.a, env.b.ipv4: env.b}
    for s in sent:
        if ":" in s.src:
            continue  # NetFlow v5 is IPv4 only
        k = _sent_key(s)
        if k not in agg:
            problems.append(f"NetFlow v5: no flow for {k}")
            continue
        if s.packets is not None:
            if agg[k]["Packets"] != s.packets:
                problems.append(f"NetFlow v5 {k}: Packets {agg[k]['Packets']}, sent {s.packets}")
            # OVS NetFlow counts datapath bytes, which include the 14-byte Ethernet header.
            if agg[k]["Bytes"] != s.packets * (s.l3_len + 14):
                problems.append(f"NetFlow v5 {k}: Bytes {agg[k]['Bytes']}, sent {s.packets}x({s.l3_len}+14)")
        # OVS NetFlow interfaces are OpenFlow port numbers (ofport_request).
        want = (pods[s.src].ofport, pods[s.dst].ofport)
        if ports_seen[k] != {want}:
            problems.append(f"NetFlow v5 {k}: (InIf, OutIf) {ports_seen[k]}, OpenFlow ports {want}")
    assert not problems, "\n".join(problems)


def test_ovs_default_sampling_400(env, decoders_mod) -> None:
    """OVN-Kubernetes' default sampling: IPFIX carries no rate (the configured default must be
    applied), sFlow carries it in every sample."""
    def traffic(e: Env) -> list[Sent]:
        # Paced: a burst of 6000 datagrams overflows the veth queues and the userspace datapath
        # sees only a fraction of them (NetFlow's packet count shows it).
        O.traffic(e.a, "udp-send", e.b.ipv4, 5999, 6000, 60, 40999, 0.0003, timeout=90)
        return [Sent(e.a.ipv4, e.b.ipv4, 17, 40999, 5999, 6000, 20 + 8 + 60)]

    cap, ports, sent = run_exports(env, ipfix_sampling=400, sflow_sampling=400, traffic=traffic)
    problems = []
    ipfix_dg, ipfix_pk = split_capture(cap, ports["ipfix"], "cflow")
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=400))
    problems += check_cflow_capture(dec, ipfix_dg, ipfix_pk, "ovs-ipfix-400")
    ipfix = [f for f in decode_all(decoders_mod, ipfix_dg, default_sampling=400) if f.get("Proto") == 17]
    assert ipfix, "no sampled UDP flow in IPFIX at 1:400 out of 6000 packets"
    problems += [f"IPFIX Sampling {f.get('Sampling')!r}, expected the default 400" for f in ipfix
                 if f.get("Sampling") != 400]
    # OVS bridge IPFIX counts every sampled packet as 1/probability packets: Bytes and Packets
    # arrive already scaled to estimated totals (flowscope passes them through as exported).
    problems += [f"IPFIX Packets {f.get('Packets')}: OVS scales sampled counts by the rate (400)"
                 for f in ipfix if f.get("Packets", 0) % 400]
    sflow_dg, sflow_pk = split_capture(cap, ports["sflow"], "sflow")
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    problems += check_sflow_capture(dec, sflow_dg, sflow_pk, "ovs-sflow-400")
    sflow = [f for f in decode_all(decoders_mod, sflow_dg, default_sampling=0) if _key(f) == _sent_key(sent[0])]
    problems += [f"sFlow Sampling {f.get('Sampling')!r}, configured 400" for f in sflow
                 if f.get("Sampling") != 400]
    # 6000 packets at 1:400: about 15 samples; far outside means the rate was not applied.
    if not 2 <= len(sflow) <= 60:
        problems.append(f"sFlow: {len(sflow)} samples of 6000 packets at 1:400")
    assert not problems, "\n".join(problems)
