"""End-to-end with Open vSwitch, the exporter OVN-Kubernetes runs on every node.

A private ovs-vswitchd (userspace datapath) runs in a network namespace with two "pods" (network
namespaces on veth ports, OVN-style MACs). IPFIX, sFlow and NetFlow are configured with the
ovs-vsctl commands OVN-Kubernetes uses; TCP, UDP and ICMP traffic over IPv4 and IPv6 flows between
the pods; the exports are captured on the namespace's loopback. flowscope's decode must equal
tshark's decode of the same capture and match the traffic that was made (addresses, ports,
protocols, packets and bytes where sampling=1 makes them exact), plus the OVS specifics: TCP flags
from the tcp*TotalCount elements, interface names, ingress/egress records, OpenFlow port numbers
in NetFlow v5, and the Sampling field with the OVN-Kubernetes default of 400.

Then two "nodes" (a private ovs-vswitchd each, in its own namespace) carry pod-to-pod traffic
through Geneve and VXLAN tunnels between their underlay addresses, as OVN-Kubernetes does between
nodes: the tunnel elements of OVS's IPFIX (PEN 6876), its sFlow tunnel records (1023-1026,
1029/1030) and the encapsulated packets sampled by sFlow on the underlay bridge must decode to
the tunnels that were built, around the inner flows that were sent.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import netns as N
from tests.support import ovs as O
from tests.support import tshark as T
from tests.support.exporters import ipfix_set_ids
from tests.support.owners import run_dir
from tests.test_golden_corpus import (
    check_cflow_capture,
    check_sflow_capture,
    check_stats_delta,
    compare_counters,
    match_unordered,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool", "ethtool", "tcpdump", "tshark")



@dataclass
class Env:
    ovs: O.OVS
    ns: N.NetNS
    bridge: str
    a: O.Pod
    b: O.Pod
    dir: Path


@contextlib.contextmanager
def ovs_env(vswitchd_env: Callable[[Path], dict[str, str]] | None = None) -> Iterator[Env]:
    """OVS in a namespace of its own with br-int and two pods; skipped with the reason without
    root or the tools. `vswitchd_env`: more environment for ovs-vswitchd, from the run directory."""
    reason = N.root_skip_reason(*TOOLS)
    if reason:
        pytest.skip(reason)
    with run_dir("fs-ovs-") as d:
        ns = N.NetNS()
        ovs = O.OVS(ns, d)
        try:
            ovs.start(vswitchd_env=vswitchd_env(d) if vswitchd_env else None)
            br = ovs.add_bridge("br-int")
            a = ovs.add_pod(br, 1)
            b = ovs.add_pod(br, 2)
            yield Env(ovs, ns, br, a, b, d)
        finally:
            ovs.stop()
            ns.close()


@pytest.fixture(scope="module")
def env():
    with ovs_env() as e:
        yield e


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
    return pod_traffic(e.a, e.b)


def pod_traffic(a: O.Pod, b: O.Pod) -> list[Sent]:
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
        if ipfix_sampling == 1:  # at 1:N a warm-up datagram is sampled only now and then
            for problem in O.ipfix_live([(e.ovs, e.bridge)],
                                      lambda: O.traffic(e.a, "udp-send", e.b.ipv4, 5998, 1, 8, 41998, 0)):
                print(problem)
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
    with fresh traffic and a fresh capture, up to five times (also when one of a conversation's
    two records, input or output sample, is missing, or an IPv4 conversation from its NetFlow
    v5 export: seen once in about 15 runs, a TCP connection's flows not yet expired when the
    capture ended). A decoder that loses a conversation fails all five; the comparisons below
    stay exact on the capture that is kept."""
    for attempt in range(5):
        cap, ports, sent = run_exports(env, ipfix_sampling=1, sflow_sampling=1, traffic=make_traffic,
                                       wait=10.0 + 2.0 * attempt)
        datagrams, _ = split_capture(cap, ports["ipfix"], "cflow")
        # both of OVS's records of each conversation: its input (0) and its output (1) sample
        seen = {(_key(f), f.get("FlowDirection")) for f in decode_all(decoders_mod, datagrams, default_sampling=0)}
        nf, _ = split_capture(cap, ports["netflow"], "cflow")
        v5 = {_key(f) for f in decode_all(decoders_mod, nf, default_sampling=0)}
        if (all((_sent_key(s), d) in seen for s in sent for d in (0, 1))
                and all(_sent_key(s) in v5 for s in sent if ":" not in s.src)):
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


def test_ovs_ipfix_virtual_obs_id_is_its_bytes_in_hex(env, decoders_mod) -> None:
    """Open vSwitch's other_config:virtual_obs_id (ovs-vswitchd.conf.db(5): a string of at most
    254 bytes sent with every IPFIX flow record as virtualObsID, VMware enterprise 6876 element
    898, variable length) comes out as every element without an output field of its own does,
    OVS's interfaceDescription (83) among them: `ie6876_898`, the hex of the bytes OVS sent,
    here the configured UTF-8 string whole (a multi-byte character, a slash), in every record."""
    port = random.randint(20000, 29999)
    N.udp_sink(env.ns, "127.0.0.1", port)
    cap_path = env.dir / f"vobs-{time.monotonic_ns()}.pcap"
    cap = N.Capture(env.ns, cap_path, bpf="udp and dst host 127.0.0.1")
    vobs = "vnet-\u00e9/7"
    try:
        env.ovs.set_ipfix(env.bridge, f"127.0.0.1:{port}", sampling=1, cache_active_timeout=2, obs_domain_id=0,
                          other_config={"virtual_obs_id": f'"{vobs}"'})
        env.ovs.appctl("revalidator/purge")
        time.sleep(1.0)
        for problem in O.ipfix_live([(env.ovs, env.bridge)],
                                    lambda: O.traffic(env.a, "udp-send", env.b.ipv4, 5998, 1, 8, 41998, 0)):
            print(problem)
        O.traffic(env.a, "udp-send", env.b.ipv4, 5301, 3, 100, 40101)
        time.sleep(5.0)  # cache_active_timeout 2 s
    finally:
        try:
            env.ovs.clear_exports(env.bridge)
        finally:
            cap.stop()
    datagrams, _ = split_capture(cap_path, port, "cflow")
    flows = decode_all(decoders_mod, datagrams, default_sampling=0)
    assert flows, "OVS sent no IPFIX flow record"
    got = collections.Counter(f.get("ie6876_898") for f in flows)
    assert got == {vobs.encode().hex(): len(flows)}, got


def test_ovs_ipfix_refresh_reordered_is_no_loss(env, sampled_all, decoders_mod) -> None:
    """OVS numbers its template-only messages (templates, then its exporter statistics' options
    template) like the data message it sends next, its statistics record (ofproto-dpif-ipfix.c:
    template messages take exporter->seq_number, data messages exporter->seq_number++). The
    capture's own numbering, as tshark decodes it (RFC 7011 3.1: a message's number is the
    previous one's plus its data records), says how many records were missing on the way;
    the refresh reordered on its way to flowscope must count no more lost and no restart: the
    statistics record before its options template (one set without its template), before all
    the templates, or the first flow message before the whole refresh (one more such set)."""
    cap, ports, _ = sampled_all
    datagrams, packets = split_capture(cap, ports["ipfix"], "cflow")
    pkts = list(T.CflowReader().packets(packets))
    assert len(pkts) == len(datagrams) and [p.frame for p in pkts] == sorted(p.frame for p in pkts)
    seqs = [int(p.raw["cflow.sequence"]) for p in pkts]
    records = [sum(len(st.records) for st in p.sets if st.kind in ("data", "options_data")) for p in pkts]
    missing = sum(max(0, seqs[i] - seqs[i - 1] - records[i - 1]) for i in range(1, len(pkts)))
    no_template = sum(p.no_template_sets for p in pkts)
    kinds = [{st.kind for st in p.sets} for p in pkts]
    stats = next(i for i, k in enumerate(kinds) if "options_data" in k)
    opt_tpl = next(i for i, k in enumerate(kinds) if "options_template" in k)
    first_tpl = next(i for i, k in enumerate(kinds) if "template" in k)
    flow = next(i for i, k in enumerate(kinds) if i > stats and "data" in k)
    assert first_tpl < opt_tpl < stats < flow and seqs[first_tpl] == seqs[opt_tpl] == seqs[stats] == seqs[flow] - 1

    def moved(i: int, before: int) -> list:
        order = list(range(len(datagrams)))
        order.remove(i)
        order.insert(before, i)
        return [datagrams[j] for j in order]

    for label, grams, extra in (("statistics before its options template", moved(stats, opt_tpl), 1),
                                ("statistics before the templates", moved(stats, first_tpl), 1),
                                ("flow before the refresh", moved(flow, first_tpl), 1)):
        dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
        for d in grams:
            dec.decode(d.payload, d.src, d.sport, d.ts)
        st = dec.stats(datagrams[-1].ts + 3600)[datagrams[0].src]["protocols"]["ipfix"]
        got = (st["sequence_lost"], st["sequence_resets"], st["missing_template_sets"])
        assert got == (missing, 0, no_template + extra), (label, got)


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


def test_ovs_sflow_drops(env, decoders_mod) -> None:
    """What OVS's sFlow says of a packet's fate. Its sample's output is the port the packet went to
    when the translation that made the sample ends: a packet its flow table drops (what an OVN
    ACL does) gets "discarded, reason 256 (unknown)", and so does a packet sent through conntrack
    (ct() recirculates, the output comes later) that is then delivered, as every OVN packet is.
    flowscope publishes neither as a drop (no PktDrop* fields) and neither with an OutIf, as
    tshark reads the output interface; a datagram forwarded without ct() has its OutIf."""
    drop = f"udp,nw_dst={env.b.ipv4},tp_dst=5997"
    ct = f"udp,nw_dst={env.b.ipv4},tp_dst=5995"
    env.ovs.ofctl("add-flow", env.bridge, f"priority=100,{drop},actions=drop")
    env.ovs.ofctl("add-flow", env.bridge, f"priority=100,{ct},actions=ct(table=1)")
    env.ovs.ofctl("add-flow", env.bridge, f"table=1,priority=100,{ct},actions=NORMAL")
    delivered: list[str] = []

    def traffic(e: Env) -> list[Sent]:
        O.traffic(e.a, "udp-send", e.b.ipv4, 5997, 5, 100, 40997)
        rx = O.traffic(e.b, "udp-recv", e.b.ipv4, 5995, 5, 3.0, background=True)
        O.traffic(e.a, "udp-send", e.b.ipv4, 5995, 5, 100, 40995)
        delivered.append(rx.communicate(timeout=20)[0].decode().split()[-1])
        O.traffic(e.a, "udp-send", e.b.ipv4, 5996, 5, 100, 40996)
        return [Sent(e.a.ipv4, e.b.ipv4, 17, sport, dport, 5, 128)
                for sport, dport in ((40997, 5997), (40995, 5995), (40996, 5996))]

    try:
        cap, ports, (dropped, through_ct, forwarded) = run_exports(env, ipfix_sampling=1, sflow_sampling=1,
                                                                   traffic=traffic, wait=4.0)
    finally:
        env.ovs.ofctl("del-flows", env.bridge, drop)
        env.ovs.ofctl("del-flows", env.bridge, ct)
        env.ovs.ofctl("del-flows", env.bridge, f"table=1,{ct}")
    assert delivered == ["5"], f"the datagrams sent through ct() reached the pod {delivered} times of 5"
    datagrams, packets = split_capture(cap, ports["sflow"], "sflow")
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    problems = check_sflow_capture(dec, datagrams, packets, "ovs-sflow-drops")
    flows = decode_all(decoders_mod, datagrams, default_sampling=0)
    for name, sent, out_if in (("dropped", dropped, None), ("through ct()", through_ct, None),
                               ("forwarded", forwarded, env.b.ifindex)):
        got = [f for f in flows if _key(f) == _sent_key(sent)]
        if len(got) != sent.packets:
            problems.append(f"{name}: {len(got)} samples, sent {sent.packets}")
        for f in got:
            if f.get("OutIf") != out_if or f.get("Bytes") != 128 + 18 or f.get("InIf") != env.a.ifindex:
                problems.append(f"{name}: OutIf {f.get('OutIf')} (want {out_if}), Bytes {f.get('Bytes')}, "
                                f"InIf {f.get('InIf')} (the pod port is {env.a.ifindex})")
            if any(k.startswith("PktDrop") for k in f):
                problems.append(f"{name}: drop fields from OVS's reason 256: {f}")
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
    # --renormalize: the sFlow samples (rate on the wire, one sampled packet each) become estimates,
    # 400 packets of the frame's length each; the IPFIX records (no rate on the wire, already
    # estimates) stay as exported, and so does NetFlow v5 (header interval 0: unsampled).
    sflow_r = [f for f in decode_all(decoders_mod, sflow_dg, default_sampling=0, renormalize=True)
               if _key(f) == _sent_key(sent[0])]
    want = [(400 * f.get("Packets", 0), 400 * f.get("Bytes", 0)) for f in sflow]
    got = [(f.get("Packets"), f.get("Bytes")) for f in sflow_r]
    if got != want or any(f.get("Packets") != 1 or f.get("Bytes", 0) <= sent[0].l3_len for f in sflow):
        problems.append(f"renormalized sFlow (packets, bytes) {got}, expected 400 times each sample's 1 packet "
                        f"and frame length {want}")
    ipfix_r = [f for f in decode_all(decoders_mod, ipfix_dg, default_sampling=400, renormalize=True)
               if f.get("Proto") == 17]
    if [(f.get("Bytes"), f.get("Packets")) for f in ipfix_r] != [(f.get("Bytes"), f.get("Packets")) for f in ipfix]:
        problems.append("renormalized IPFIX differs from IPFIX: OVS's counts are already estimates")
    nf_dg, _ = split_capture(cap, ports["netflow"], "cflow")
    v5 = decode_all(decoders_mod, nf_dg, default_sampling=400)
    v5_r = decode_all(decoders_mod, nf_dg, default_sampling=400, renormalize=True)
    if [(f.get("Bytes"), f.get("Packets")) for f in v5_r] != [(f.get("Bytes"), f.get("Packets")) for f in v5]:
        problems.append("renormalized NetFlow v5 differs: OVS's v5 is unsampled (header interval 0)")
    assert not problems, "\n".join(problems)



def test_ovs_sampled_input_and_output_estimates_are_counted_once(env, decoders_mod) -> None:
    """Sampled 1:N with input and output sampling on (OVS's defaults, OVN-Kubernetes' 400), OVS
    draws a packet's input sample and its output sample independently and counts each sampled
    packet as N: the ingress records estimate all the traffic, and so do the egress records.
    Each egress record is Duplicate (dropped with --dedup) once the exporter has shown that it
    samples input on the port the packets came in by, so what is published estimates the traffic
    once. (They were paired as one packet's two samples only when their bytes matched: with the
    flow cache hardly ever, and the published totals were twice the traffic.) A warm-up stream
    on the same port first, exported before: the egress records OVS may send before the first
    ingress record from their port are not known to be estimated twice, and count."""
    rate, count, size = 10, 2000, 200

    def traffic(e: Env) -> list[Sent]:
        O.traffic(e.a, "udp-send", e.b.ipv4, 5996, 300, size, 40996, 0.0005, timeout=90)
        time.sleep(3.0)    # cache_active_timeout 2 s: the warm-up exported
        O.traffic(e.a, "udp-send", e.b.ipv4, 5997, count, size, 40997, 0.0005, timeout=90)
        return [Sent(e.a.ipv4, e.b.ipv4, 17, 40997, 5997, count, 20 + 8 + size)]

    cap, ports, sent = run_exports(env, ipfix_sampling=rate, sflow_sampling=400, traffic=traffic)
    datagrams, _ = split_capture(cap, ports["ipfix"], "cflow")
    for dedup in (False, True):
        flows = [f for f in decode_all(decoders_mod, datagrams, default_sampling=rate, dedup=dedup)
                 if _key(f) == _sent_key(sent[0])]
        by_dir = {d: [f for f in flows if f.get("FlowDirection") == d] for d in (0, 1)}
        total = {d: sum(f["Packets"] for f in by_dir[d]) for d in (0, 1)}
        once = sum(f["Packets"] for f in flows if not f.get("Duplicate"))
        assert by_dir[0] and all(not f.get("Duplicate") for f in by_dir[0]), by_dir[0]
        if dedup:
            assert not by_dir[1], f"--dedup published egress records {by_dir[1]}"
        else:
            assert by_dir[1] and all(f.get("Duplicate") for f in by_dir[1]), by_dir[1]
            # each direction alone estimates the whole traffic (about 200 samples of 2000 packets:
            # a standard deviation of ~7%; the bounds are over four of them)
            assert 0.7 * count < total[1] < 1.3 * count, f"egress records estimate {total[1]} of {count} packets"
        assert 0.7 * count < total[0] < 1.3 * count, f"ingress records estimate {total[0]} of {count} packets"
        assert once == total[0], f"published {once} packets, the ingress estimate {total[0]}"


def _ipfix_domain(payload: bytes) -> int:
    """An IPFIX message's observation domain (RFC 7011 3.1)."""
    return struct.unpack_from("!I", payload, 12)[0]


def _sample_to(e: Any, port: int, set_id: int, rules: list[str]) -> None:
    """A Flow_Sample_Collector_Set `set_id` exporting IPFIX to 127.0.0.1:port, and the OpenFlow
    rules whose sample() actions feed it (installed, the datapath's flows purged to take them)."""
    e.ovs.vsctl("--", "--id=@br", "get", "bridge", e.bridge, "--", "--id=@i", "create", "ipfix",
                f'targets="127.0.0.1:{port}"', "--", "create", "Flow_Sample_Collector_Set", f"id={set_id}",
                "bridge=@br", "ipfix=@i")
    for rule in rules:
        e.ovs.ofctl("add-flow", e.bridge, rule)
    e.ovs.appctl("revalidator/purge")
    time.sleep(1.0)


def test_ovs_flow_sample_collector_set(env, decoders_mod) -> None:
    """Per-flow sampling, the other way OVS exports IPFIX (OVN's ACL sampling; a Flow_Sample_
    Collector_Set with an IPFIX target, packets sampled by an OpenFlow sample() action): each
    action's obs_domain_id is the messages' observation domain (IPv4 and IPv6 rules give two
    here), obs_point_id arrives as observationPointId (138, kept as ie138); at probability 65535
    every packet is reported. flowscope's decode must equal tshark's and count the traffic sent."""
    e = env
    port = random.randint(20000, 29999)
    N.udp_sink(e.ns, "127.0.0.1", port)
    rules = [f"priority=100,{m},actions=sample(probability=65535,collector_set_id=5,obs_domain_id={dom},"
             f"obs_point_id={pt}),NORMAL" for m, dom, pt in (("ip", 7, 9), ("ipv6", 8, 10))]
    problems: list[str] = []
    for attempt in range(3):  # the userspace datapath may leave a short conversation out (sampled_all)
        cap_path = e.dir / f"fss-{attempt}.pcap"
        cap = N.Capture(e.ns, cap_path, bpf=f"udp and dst port {port}")
        try:
            _sample_to(e, port, 5, rules)
            sent = pod_traffic(e.a, e.b)
            time.sleep(5.0)
        finally:
            try:
                for m in ("ip", "ipv6"):
                    e.ovs.ofctl("--strict", "del-flows", e.bridge, f"priority=100,{m}")
                e.ovs.vsctl("--all", "destroy", "Flow_Sample_Collector_Set")
                e.ovs.appctl("revalidator/purge")
            finally:
                cap.stop()
        datagrams, packets = split_capture(cap_path, port, "cflow")
        assert datagrams, "OVS sent no IPFIX for its collector set"
        # OVS sends its templates in one domain only (the one whose sample was due at the
        # refresh); the other domain's data has none of its own, which tshark leaves undecoded
        # (RFC 7011 scopes templates by domain) and flowscope reads with the same exporting
        # process's template (README, "IPFIX across observation domains"). tshark checks the
        # messages of the domains that sent templates; the traffic sent checks all of them.
        with_templates = {_ipfix_domain(d.payload) for d in datagrams if ipfix_set_ids(d.payload) & {2, 3}}
        told = [i for i, d in enumerate(datagrams) if _ipfix_domain(d.payload) in with_templates]
        dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
        problems = check_cflow_capture(dec, [datagrams[i] for i in told], [packets[i] for i in told],
                                       "ovs-flow-sample-ipfix")
        dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
        flows = [f for d in datagrams for f in dec.decode(d.payload, d.src, d.sport, d.ts).to_dicts()]
        if dec.stats()[datagrams[0].src]["missing_template_sets"]:
            problems.append(f"{dec.stats()[datagrams[0].src]['missing_template_sets']} sets without a template "
                            f"(templates sent in domain(s) {sorted(with_templates)} only)")
        got: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
        for f in flows:
            k = _key(f)
            got[k]["Packets"] += f.get("Packets", 0)
            got[k]["Bytes"] += f.get("Bytes", 0)
            want_dom, want_pt = (8, "0000000a") if ":" in f.get("SrcAddr", "") else (7, "00000009")
            if (f.get("ObservationDomain"), f.get("ie138")) != (want_dom, want_pt):
                problems.append(f"{k}: ObservationDomain {f.get('ObservationDomain')} ie138 {f.get('ie138')}, "
                                f"the rule's obs_domain_id {want_dom} and obs_point_id {int(want_pt, 16)}")
        missing = [_sent_key(s) for s in sent if _sent_key(s) not in got]
        if missing and attempt < 2:
            continue
        problems += [f"no flow for {k}" for k in missing]
        for s in sent:
            c = got.get(_sent_key(s))
            # one sample() action per packet (the rule matches once, at the bridge's input)
            if c is not None and s.packets is not None and (c["Packets"], c["Bytes"]) != (s.packets, s.packets * s.l3_len):
                problems.append(f"{_sent_key(s)}: Packets {c['Packets']} Bytes {c['Bytes']}, sent "
                                f"{s.packets} x {s.l3_len}")
        break
    assert not problems, "\n".join(problems)


def test_ovs_sample_actions_at_two_points_carry_a_direction_and_are_not_paired(env, decoders_mod) -> None:
    """OVN's per-flow sampling (ACL sampling, OVN-Kubernetes' observability) puts sample()
    actions without `ingress`/`egress` in several stages of its pipeline, each with its own
    obs_point_id: a packet allowed by two stages is sampled twice. Open vSwitch 3.1 still gives
    each record a flowDirection (every template has one; without a sampling_port it infers an
    input sample, 0): the two records of a packet differ only in observationPointId (138). Two
    records of one direction are not a duplicate pair (only an input and an output sample are):
    at 1:N each sample() action draws on its own, so two points' records are different packets,
    each estimating the traffic through its point (which traffic passes which point is the
    pipeline's, not in the records), and at 1:1 a connection's next packet can pass another
    point than its first (OVN samples new and established connections at different points), so
    records of one key at two points are not one packet for sure. Both are published."""
    e = env
    port = random.randint(20000, 29999)
    N.udp_sink(e.ns, "127.0.0.1", port)
    rules = ["table=0,priority=100,ip,actions=sample(probability=65535,collector_set_id=6,obs_domain_id=7,"
             "obs_point_id=1),resubmit(,1)",
             "table=1,priority=100,ip,actions=sample(probability=65535,collector_set_id=6,obs_domain_id=7,"
             "obs_point_id=2),NORMAL"]
    want = Sent(e.a.ipv4, e.b.ipv4, 17, 40120, 5320, 10, 20 + 8 + 100)
    for attempt in range(3):  # the userspace datapath may leave a short conversation out (sampled_all)
        cap_path = e.dir / f"two-points-{attempt}.pcap"
        cap = N.Capture(e.ns, cap_path, bpf=f"udp and dst port {port}")
        try:
            _sample_to(e, port, 6, rules)
            O.traffic(e.a, "udp-send", e.b.ipv4, want.dport, want.packets, 100, want.sport, 0.01)
            time.sleep(5.0)
        finally:
            try:
                e.ovs.ofctl("--strict", "del-flows", e.bridge, "table=0,priority=100,ip")
                e.ovs.ofctl("del-flows", e.bridge, "table=1")
                e.ovs.vsctl("--all", "destroy", "Flow_Sample_Collector_Set")
                e.ovs.appctl("revalidator/purge")
            finally:
                cap.stop()
        datagrams, _ = split_capture(cap_path, port, "cflow")
        flows = [f for f in decode_all(decoders_mod, datagrams, default_sampling=1, mark_duplicates=True)
                 if _key(f) == _sent_key(want)]
        by_point = {p: sum(f.get("Packets", 0) for f in flows if f.get("ie138") == p) for p in ("00000001", "00000002")}
        if by_point != {"00000001": want.packets, "00000002": want.packets} and attempt < 2:
            continue
        assert by_point == {"00000001": want.packets, "00000002": want.packets}, by_point
        assert {(f.get("FlowDirection"), f.get("ObservationDomain"), f.get("Bytes") / f.get("Packets"))
                for f in flows} == {(0, 7, want.l3_len)}
        assert not any(f.get("Duplicate") for f in flows)
        kept = [f for f in decode_all(decoders_mod, datagrams, default_sampling=1, dedup=True) if _key(f) == _sent_key(want)]
        assert sum(f.get("Packets", 0) for f in kept) == 2 * want.packets
        break


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def _not_sent_reports(packets: list[dict]) -> list[int]:
    """notSentPacketTotalCount of every options record tshark decoded, in capture order."""
    out: list[int] = []

    def walk(v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "cflow.notsent_packets":
                    out.extend(int(y) for y in (x if isinstance(x, list) else [x]))
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for p in packets:
        walk(p["cflow"])
    return out


@dataclass
class Refreshes:
    """An OVS IPFIX export with four template refreshes (its wall clock moved 700 s ahead three
    times), part of its sends failing: the capture split as split_capture does, and OVS's own
    count of failed sends at the end (`tx errs`)."""
    datagrams: list
    packets: list[dict]
    tx_errors: int


@pytest.fixture(scope="module")
def ipfix_refreshes():
    """Open vSwitch reports its failed IPFIX sends in its Exporting Process Reliability Statistics
    options record (RFC 7011 4.3; ofproto-dpif-ipfix.c fills notSentPacketTotalCount with its
    exporter's tx_errors). Its second target here is a loopback port where nothing listens: each
    datagram to it draws an ICMP port unreachable, and the next send on that connected socket fails
    with ECONNREFUSED, which OVS counts. OVS 3.1 sends the record with its templates, when it
    starts exporting and then every 600 s of its wall clock (IPFIX_TEMPLATE_INTERVAL, not
    configurable before 3.3): ovs-vswitchd runs under libfaketime, whose clock is moved 700 s ahead
    (monotonic time untouched) after each round of failures, so the next record comes within
    seconds."""
    if not Path(LIBFAKETIME).exists():
        pytest.skip("libfaketime is not installed (make deps)")

    def faked(d: Path) -> dict[str, str]:
        # FAKETIME_NO_CACHE: the offset file is read again at every clock reading
        (d / "faketime").write_text("+0\n")
        return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(d / "faketime"), "FAKETIME_NO_CACHE": "1",
                "DONT_FAKE_MONOTONIC": "1"}

    with ovs_env(faked) as e:
        ovs, ns, br, a, b, d = e.ovs, e.ns, e.bridge, e.a, e.b, e.dir
        clock = d / "faketime"
        port, dead = random.randint(20000, 29999), random.randint(30000, 39999)
        N.udp_sink(ns, "127.0.0.1", port)   # (the namespace is the test's own: nothing listens on `dead`)
        cap_path = d / "notsent.pcap"
        cap = N.Capture(ns, cap_path, bpf=f"udp and dst port {port}")
        try:
            ovs.vsctl("--", "--id=@ipfix", "create", "ipfix", f'targets="127.0.0.1:{port}","127.0.0.1:{dead}"',
                      "sampling=1", "cache_active_timeout=2", "cache_max_flows=100", "obs_domain_id=0",
                      "--", "set", "bridge", br, "ipfix=@ipfix")
            ovs.appctl("revalidator/purge")
            time.sleep(1.0)
            for jump in ("+0", "+700", "+1400", "+2100"):
                clock.write_text(jump + "\n")
                for i in range(4):  # flows expire every 2 s (cache_active_timeout): sends, some failing
                    O.traffic(a, "udp-send", b.ipv4, 5300 + i, 3, 100, 40300 + i)
                    time.sleep(1.0)
                time.sleep(3.0)
            tx_errors = O.ipfix_stats(ovs, br).get("tx errs", 0)
        finally:
            try:
                ovs.clear_exports(br)
            finally:
                cap.stop()
        datagrams, packets = split_capture(cap_path, port, "cflow")
        yield Refreshes(datagrams, packets, tx_errors)


def test_ovs_ipfix_failed_sends_are_counted(ipfix_refreshes, decoders_mod) -> None:
    """flowscope's flowscope_exporter_not_sent_total{unit="packets"} must rise by what OVS
    reported beyond its first record (the baseline), and its decode equal tshark's."""
    datagrams, packets, tx_errors = ipfix_refreshes.datagrams, ipfix_refreshes.packets, ipfix_refreshes.tx_errors
    reports = _not_sent_reports(packets)
    assert len(reports) >= 2 and reports[-1] > reports[0], \
        f"OVS's notSentPacketTotalCount records: {reports} (tx errs {tx_errors})"
    assert reports[-1] <= tx_errors
    assert len({dg.sport for dg in datagrams}) == 1
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    problems = check_cflow_capture(dec, datagrams, packets, "ovs-ipfix-not-sent")
    exporter = datagrams[0].src
    got = dec.stats()[exporter]["protocols"]["ipfix"]["not_sent"]
    if got != {"packets": reports[-1] - reports[0]}:
        problems.append(f"not_sent {got}, OVS reported {reports}: {reports[-1] - reports[0]} beyond the first")
    from collector.metrics import ExporterLabels, decoder_series

    series = decoder_series(dec.series_stats(), ExporterLabels(4))["flowscope_exporter_not_sent"]
    if series != {(exporter, "ipfix", "packets"): reports[-1] - reports[0]}:
        problems.append(f"flowscope_exporter_not_sent series {series}")
    assert not problems, "\n".join(problems)


def test_ovs_ipfix_refreshes_and_reports_reordered(ipfix_refreshes, decoders_mod) -> None:
    """The same export, its datagrams reordered on the way to flowscope as a path may: no more
    records lost than the capture's own numbering misses (tshark: RFC 7011 3.1, a message's
    number is the previous one's plus its data records) and no restart, when at a later refresh
    (templates known) the first flow overtakes the refresh, or the statistics record its
    template-only messages (both numbered like it); and the failed sends counted as OVS reported
    them (last minus first) when a statistics record arrives after the next one (an older value,
    not a counter restart)."""
    datagrams, packets = ipfix_refreshes.datagrams, ipfix_refreshes.packets
    pkts = list(T.CflowReader().packets(packets))
    assert len(pkts) == len(datagrams) and [p.frame for p in pkts] == sorted(p.frame for p in pkts)
    seqs = [int(p.raw["cflow.sequence"]) for p in pkts]
    records = [sum(len(st.records) for st in p.sets if st.kind in ("data", "options_data")) for p in pkts]
    missing = sum(max(0, seqs[i] - seqs[i - 1] - records[i - 1]) for i in range(1, len(pkts)))
    kinds = [{st.kind for st in p.sets} for p in pkts]
    stats = [i for i, k in enumerate(kinds) if "options_data" in k]
    reports = _not_sent_reports(packets)
    assert len(stats) == len(reports) >= 4 and len(set(reports[1:])) == len(reports) - 1, \
        f"OVS's statistics records {reports}: four refreshes, rising after the first"
    refresh = []    # each refresh's first template-only message (numbered like its statistics record)
    for i in stats:
        j = i
        while j > 0 and seqs[j - 1] == seqs[i] and not kinds[j - 1] & {"data", "options_data"}:
            j -= 1
        refresh.append(j)
    flows = [next(j for j in range(i + 1, len(pkts)) if "data" in kinds[j]) for i in stats[:-1]]

    def run(order: list[int]) -> dict:
        assert sorted(order) == list(range(len(datagrams)))
        dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
        for j in order:
            d = datagrams[j]
            assert dec.decode(d.payload, d.src, d.sport, d.ts).error is None
        return dec.stats(datagrams[-1].ts + 3600)[datagrams[0].src]["protocols"]["ipfix"]

    def moved(order: list[int], i: int, before: int) -> list[int]:
        order = [j for j in order if j != i]
        order.insert(order.index(before), i)
        return order

    base = list(range(len(datagrams)))
    # A record that comes more than a second after its gap opened is counted lost (the reorder
    # window, docs/collector.md flowscope_sequence_lost_total): the second statistics record,
    # moved after the third, comes a refresh (seconds of capture) late.
    assert datagrams[flows[2]].ts - datagrams[stats[1] + 1].ts > 1.0
    orders = {"in order": (base, 0),
              "first flow before the second refresh": (moved(base, flows[1], refresh[1]), 0),
              "statistics before their template-only messages": (moved(
                  moved(moved(base, stats[1], refresh[1]), stats[2], refresh[2]), stats[3], refresh[3]), 0),
              "second statistics record after the third": (moved(base, stats[1], flows[2]), records[stats[1]])}
    for label, (order, late) in orders.items():
        st = run(order)
        got = (st["sequence_lost"], st["sequence_resets"], st["not_sent"])
        assert got == (missing + late, 0, {"packets": reports[-1] - reports[0]}), (label, got, reports)

    # A collector started after the first refresh, none of OVS's templates known: the data
    # messages up to the second refresh are sets without their template, not counted, and the
    # last of them is lost on the way. At the second refresh the templates tell how many
    # records the message before it held: the lost one's are counted (tshark's numbers: the
    # refresh's number less that message's and its records), with what the capture itself
    # misses after that, and none of the uncounted messages' own.
    uncounted = [j for j in range(stats[0] + 1, refresh[1]) if "data" in kinds[j]]
    assert len(uncounted) >= 2, kinds
    u, lost = uncounted[-2], uncounted[-1]
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    for j in range(uncounted[0], len(datagrams)):
        if j != lost:
            assert dec.decode(datagrams[j].payload, datagrams[j].src, datagrams[j].sport, datagrams[j].ts).error is None
    st = dec.stats(datagrams[-1].ts + 3600)[datagrams[0].src]["protocols"]["ipfix"]
    want = (seqs[refresh[1]] - seqs[u] - records[u]
            + sum(max(0, seqs[i] - seqs[i - 1] - records[i - 1]) for i in range(refresh[1] + 1, len(pkts))))
    assert records[lost] and want >= records[lost]
    got = (st["sequence_lost"], st["sequence_resets"], st["missing_template_sets"])
    assert got == (want, 0, len(uncounted) - 1), got


# ---- Two nodes joined by tunnels: OVN-Kubernetes' node-to-node pod traffic -------------------
#
# Each node is a namespace with its own ovs-vswitchd: br-int holds the node's pod and the tunnel
# ports, br-ex the uplink (one end of a veth pair, the other node holds the other end) and the
# node's underlay addresses on its LOCAL port. OpenFlow on br-int sends what the pod sends into a
# tunnel and what comes out of a tunnel to the pod, as OVN's flows do (NORMAL would flood between
# the tunnels); br-ex stays NORMAL. IPFIX and sFlow are configured on br-int as OVN-Kubernetes
# does, plus sFlow on br-ex, which samples the encapsulated packets themselves.


@dataclass(frozen=True)
class Tunnel:
    """One tunnel port (the same on both nodes) and what OVS 3.1 reports about it."""
    port: str  # interface name on br-int
    kind: str  # ovs-vsctl type, and flowscope's TunnelType
    vni: int  # options:key
    dport: int  # the UDP port it uses on the underlay (IANA's)
    family: int  # underlay address family
    ofport: int
    steer: int | None  # inner IPv4 UDP destination port sent through it; None: all other traffic
    # tunnelProtocolIdentifier (PEN 6876, 895) as OVS 3.1 sends it: its tunnel_protocol[] table
    # (ofproto-dpif-ipfix.c) stops at index 6 while DPIF_IPFIX_TUNNEL_GENEVE is 7, so Geneve gets 0.
    # None: OVS reports no such tunnel, its IPFIX and sFlow tunnel code reads IPv4 endpoints only.
    ipfix_proto: int | None


TUNNELS = (
    Tunnel("gnv0", "geneve", 5001, 6081, 4, 100, None, 0),
    Tunnel("vx0", "vxlan", 6001, 4789, 4, 101, 5501, 17),
    Tunnel("gnv6", "geneve", 7001, 6081, 6, 102, 5601, None),
)
VMWARE_PEN = 6876
# ofproto-dpif-ipfix.c enum dpif_ipfix_tunnel_type, as flowscope names it.
OVS_TUNNEL_TYPES = ["unknown", "vxlan", "gre", "lisp", "stt", "ipsec_gre", "unknown", "geneve"]
VMWARE_TUNNEL_KEYS = {891: "TunnelType", 892: "TunnelId", 893: "TunnelSrcAddr", 894: "TunnelDstAddr",
                      895: "TunnelProto", 896: "TunnelSrcPort", 897: "TunnelDstPort",
                      899: "TunnelSrcAddr", 900: "TunnelDstAddr"}
# sflow_tunnels.txt: tunnel egress/ingress structures (sampled_ipv4 / sampled_ipv6), VNI egress/ingress.
OVS_SFLOW_RECORDS = {1023, 1024, 1025, 1026, 1029, 1030}
TUNNEL_KEYS = ("TunnelType", "TunnelId", "TunnelSrcAddr", "TunnelDstAddr", "TunnelProto", "TunnelSrcPort",
               "TunnelDstPort")


def tunnel_for(s: Sent) -> Tunnel:
    steered = {t.steer: t for t in TUNNELS if t.steer}
    if s.proto == 17 and ":" not in s.src and s.dport in steered:
        return steered[s.dport]
    return next(t for t in TUNNELS if t.steer is None)


def same_datapath_port(t: Tunnel) -> set[str]:
    """Tunnel ports OVS cannot tell apart in IPFIX interfaceName: one datapath port (genev_sys_6081,
    vxlan_sys_4789) serves every tunnel of a type and UDP port, and the name comes from it."""
    return {u.port for u in TUNNELS if (u.kind, u.dport) == (t.kind, t.dport)}


def swap16(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


@dataclass
class Node:
    name: str
    ns: N.NetNS
    ovs: O.OVS
    pod: O.Pod
    uplink: str  # the veth end on br-ex
    uplink_ifindex: int
    underlay: dict[int, str]  # address family -> the node's address on br-ex
    mac: str  # br-ex LOCAL port MAC


@dataclass
class TunnelEnv:
    nodes: tuple[Node, Node]
    dir: Path

    @property
    def a(self) -> O.Pod:
        return self.nodes[0].pod

    @property
    def b(self) -> O.Pod:
        return self.nodes[1].pod

    def node_of(self, pod_addr: str) -> Node:
        return next(n for n in self.nodes if pod_addr in (n.pod.ipv4, n.pod.ipv6))

    def peer(self, node: Node) -> Node:
        return self.nodes[1] if node is self.nodes[0] else self.nodes[0]


def check_tunnels_cross(te: TunnelEnv) -> None:
    """One datagram through every tunnel, received by a socket in the peer's pod (routes reach the
    userspace datapath asynchronously from the kernel: retried for a few seconds)."""
    a, b = te.a, te.b
    for t in TUNNELS:
        dport = t.steer or 5999
        for _ in range(10):
            rx = O.traffic(b, "udp-recv", b.ipv4, dport, 1, 0.5, background=True)
            O.traffic(a, "udp-send", b.ipv4, dport, 1, 8, 41999, 0)
            out, _ = rx.communicate(timeout=10)
            if out.split()[-1:] == [b"1"]:
                break
        else:
            raise RuntimeError(f"nothing crossed tunnel {t.port} ({te.nodes[0].ovs.appctl('ovs/route/show')})")


@pytest.fixture(scope="module")
def tunnel_env():
    reason = N.root_skip_reason(*TOOLS)
    if reason:
        pytest.skip(reason)
    with run_dir("fs-ovs-tun-") as d:
        started: list[tuple[N.NetNS, O.OVS]] = []
        try:
            for i in (1, 2):
                (d / f"node{i}").mkdir()
                ns = N.NetNS()
                ovs = O.OVS(ns, d / f"node{i}")
                started.append((ns, ovs))
                ovs.start()
            uplinks = N.veth_between(started[0][0], started[1][0])
            nodes = []
            for i, ((ns, ovs), uplink) in enumerate(zip(started, uplinks, strict=True), 1):
                underlay = {4: f"172.18.0.{10 + i}", 6: f"fd00:172:18::{10 + i:x}"}
                mac = f"02:00:ac:12:00:{10 + i:02x}"
                ovs.add_underlay("br-ex", uplink, [f"{underlay[4]}/24", f"{underlay[6]}/64"], hwaddr=mac)
                ovs.add_bridge("br-int")
                pod = ovs.add_pod("br-int", i, mtu=1400)  # Geneve/VXLAN over IPv4 add 50 bytes, IPv6 70
                ifindex = int(ns.run(["cat", f"/sys/class/net/{uplink}/ifindex"]).stdout)
                nodes.append(Node(f"node{i}", ns, ovs, pod, uplink, ifindex, underlay, mac))
            for node, peer in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
                for t in TUNNELS:
                    node.ovs.add_tunnel("br-int", t.port, t.kind, remote_ip=peer.underlay[t.family], key=t.vni,
                                        ofport=t.ofport)
                for family in (4, 6):
                    node.ovs.tnl_neigh_set("br-ex", peer.underlay[family], peer.mac)
                p = node.pod.ofport
                node.ovs.set_flows("br-int", [
                    *(f"priority=10,in_port={t.ofport},actions=output:{p}" for t in TUNNELS),
                    *(f"priority=20,in_port={p},udp,tp_dst={t.steer},actions=output:{t.ofport}" if t.steer
                      else f"priority=10,in_port={p},actions=output:{t.ofport}" for t in TUNNELS),
                ])
            te = TunnelEnv((nodes[0], nodes[1]), d)
            check_tunnels_cross(te)
            yield te
        finally:
            for ns, ovs in started:
                ovs.stop()
                ns.close()


def tunnel_traffic(te: TunnelEnv) -> list[Sent]:
    """pod_traffic() through Geneve, then 5 UDP datagrams through each steered tunnel."""
    sent = pod_traffic(te.a, te.b)
    a, b = te.a, te.b
    for t in TUNNELS:
        if t.steer:
            sport = 41000 + t.ofport
            O.traffic(a, "udp-send", b.ipv4, t.steer, 5, 100, sport)
            sent.append(Sent(a.ipv4, b.ipv4, 17, sport, t.steer, 5, 20 + 8 + 100))
    return sent


@dataclass
class NodeExport:
    cap: Path
    ports: dict[str, int]  # "ipfix" and "sflow" (br-int), "sflow-ex" (br-ex) -> collector port


def run_tunnel_exports(te: TunnelEnv, *, wait: float) -> tuple[list[NodeExport], list[Sent]]:
    exports: list[NodeExport] = []
    caps: list[N.Capture] = []
    try:
        for node in te.nodes:
            ports = {"ipfix": random.randint(20000, 29999), "sflow": random.randint(30000, 39999),
                     "sflow-ex": random.randint(40000, 49999)}
            for port in ports.values():
                N.udp_sink(node.ns, "127.0.0.1", port)
            path = te.dir / f"{node.name}-{time.monotonic_ns()}.pcap"
            caps.append(N.Capture(node.ns, path, bpf="udp and dst host 127.0.0.1"))
            exports.append(NodeExport(path, ports))
            # What OVN-Kubernetes configures on br-int, with tunnel sampling asked for explicitly.
            node.ovs.set_ipfix("br-int", f"127.0.0.1:{ports['ipfix']}", sampling=1, cache_active_timeout=2,
                               cache_max_flows=100, other_config={"enable-tunnel-sampling": "true"})
            node.ovs.set_sflow("br-int", f"127.0.0.1:{ports['sflow']}", agent="br-ex", sampling=1,
                               polling=1, header=128)
            node.ovs.set_sflow("br-ex", f"127.0.0.1:{ports['sflow-ex']}", agent="br-ex", sampling=1,
                               polling=1, header=128)
            node.ovs.appctl("revalidator/purge")
        time.sleep(1.0)
        for problem in O.ipfix_live([(n.ovs, "br-int") for n in te.nodes],
                                  lambda: O.traffic(te.a, "udp-send", te.b.ipv4, 5998, 1, 8, 41998, 0)):
            print(problem)
        sent = tunnel_traffic(te)
        time.sleep(wait)
        for node in te.nodes:  # shown with a failing test's setup output
            print(f"{node.name} br-int IPFIX after the traffic: {O.ipfix_stats(node.ovs, 'br-int')}")
    finally:
        try:
            for node in te.nodes:
                node.ovs.clear_exports("br-int")
                node.ovs.clear_exports("br-ex")
        finally:
            for c in caps:
                c.stop()
    return exports, sent


def split_frames(cap: Path, port: int, layer: str):
    """split_capture() pairing datagrams with tshark's packets by frame number. run_tshark takes the
    last UDP layer as the transport, and an sFlow datagram whose sampled headers hold VXLAN/Geneve
    has several (tshark lifts the encapsulated frames to top-level layers), so filtering tshark's
    packets by destination port drops them. The capture is unfragmented UDP on loopback only:
    datagram n is frame n."""
    from collector.pcap import PcapStats, iter_udp

    st = PcapStats()
    every = list(iter_udp(cap, stats=st))
    assert len(every) == st.frames, f"{cap}: {st.frames} frames, {len(every)} UDP datagrams"
    frames = {n for n, d in enumerate(every, 1) if d.dport == port}
    packets = [p for p in T.run_tshark(cap, decode_as=[f"udp.port=={port},{layer}"]) if p["frame"] in frames]
    return [d for d in every if d.dport == port], packets


def no_errors(dec, label: str) -> list[str]:
    return [f"{label}: decode errors {v['errors']} from {exp}" for exp, v in dec.stats().items() if v.get("errors")]


def ipfix_tunnels_vs_tshark(decoders_mod, datagrams, packets, label: str) -> list[str]:
    """tshark 4.0 does not name OVS's tunnel elements (PEN 6876): it lists their bytes, in template
    order, as enterprise_private_entry; flowscope's Tunnel* fields must equal them."""
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    reader = T.CflowReader()
    problems: list[str] = []
    n_tunnel = 0
    for n, (dg, p) in enumerate(zip(datagrams, packets, strict=True), 1):
        tp = reader.packet(p)
        flows = dec.decode(dg.payload, dg.src, dg.sport, dg.ts).to_dicts()
        for (s, rec), f in zip(tp.flow_records, flows, strict=False):
            pen = [x for x in s.template.fields if x.pen] if s.template else []
            if not pen:
                continue
            vals = rec.get("cflow.enterprise_private_entry")
            vals = vals if isinstance(vals, list) else [vals]
            where = f"{label} datagram {n} set {s.flowset_id}"
            if len(vals) != len(pen):
                problems.append(f"{where}: tshark shows {len(vals)} values for {len(pen)} PEN elements")
                continue
            exp: dict = {}
            for x, v in zip(pen, vals, strict=True):
                key = VMWARE_TUNNEL_KEYS.get(x.type) if x.pen == VMWARE_PEN else None
                if key is None:
                    continue
                raw = bytes.fromhex(T.hexbytes(v))
                if x.type == 891:
                    exp[key] = OVS_TUNNEL_TYPES[raw[0]] if raw[0] < len(OVS_TUNNEL_TYPES) else str(raw[0])
                elif x.type in (893, 894, 899, 900):
                    if any(raw):   # a zero endpoint is OVS's "not set": omitted
                        exp[key] = str(ipaddress.ip_address(raw))
                else:
                    exp[key] = int.from_bytes(raw, "big")
            n_tunnel += 1
            problems += [f"{where}: {x}" for x in T.compare_expected(exp, f, required=set(exp))]
    if not n_tunnel:
        problems.append(f"{label}: no data record of a tunnel template")
    return problems


def sflow_flow_records(payload: bytes) -> list[list[tuple[int, bytes]]]:
    """The (format, data) flow records of each flow sample of an sFlow v5 datagram, in order: an
    independent walk, the reference for OVS's tunnel records, which tshark 4.0 cannot parse."""
    off = 8 + (4 if struct.unpack_from("!I", payload, 4)[0] == 1 else 16)  # version, agent
    n = struct.unpack_from("!I", payload, off + 12)[0]  # after sub-agent id, sequence, uptime
    off += 16
    out = []
    for _ in range(n):
        kind, length = struct.unpack_from("!II", payload, off)
        body = payload[off + 8:off + 8 + length]
        off += 8 + length
        if kind not in (1, 3):  # flow sample, expanded flow sample
            continue
        o = 28 if kind == 1 else 40  # the record count follows the sample's fixed fields
        count = struct.unpack_from("!I", body, o)[0]
        o += 4
        records = []
        for _ in range(count):
            fmt, rlen = struct.unpack_from("!II", body, o)
            records.append((fmt, body[o + 8:o + 8 + rlen]))
            o += 8 + rlen
        out.append(records)
    return out


def tunnel_from_records(records: list[tuple[int, bytes]]) -> dict:
    """flowscope's Tunnel* fields as OVS's records carry them: values as on the wire, except the
    ports OVS 3.1 writes byte-swapped (a destination port that is a VXLAN/Geneve/STT port only
    when swapped), which are read back."""
    exp: dict = {}
    for fmt, d in records:
        if fmt in (1029, 1030):
            exp["TunnelId"] = struct.unpack_from("!I", d)[0]
            continue
        if fmt in (1023, 1024):  # sampled_ipv4: length, protocol, src, dst, src_port, dst_port, ...
            proto, src, dst, sport, dport = struct.unpack_from("!4xI4s4sII", d)
        elif fmt in (1025, 1026):  # sampled_ipv6
            proto, src, dst, sport, dport = struct.unpack_from("!4xI16s16sII", d)
        else:
            continue
        tunnel_ports = {4789, 6081, 7471}
        if dport not in tunnel_ports and swap16(dport) in tunnel_ports:
            sport, dport = swap16(sport), swap16(dport)
        exp.update(TunnelProto=proto, TunnelSrcPort=sport, TunnelDstPort=dport)
        for key, addr in (("TunnelSrcAddr", src), ("TunnelDstAddr", dst)):
            if any(addr):   # a zero endpoint is OVS's "not set": omitted
                exp[key] = str(ipaddress.ip_address(addr))
    return exp


def check_ovs_sflow(dec, datagrams, packets, label: str) -> tuple[list[str], list[tuple[dict, list[int]]]]:
    """check_sflow_capture() for datagrams with OVS's tunnel records: tshark 4.0 does not skip a
    flow record it does not know, loses alignment at the first one and shows only the samples up
    to the one that broke it (without a malformed mark in the fields run_tshark keeps). Those
    samples (their raw header precedes OVS's records) must equal flowscope's flows; the tunnel
    records are compared with sflow_flow_records() instead. Returns the problems and, per flow, the
    record formats of its sample."""
    if len(datagrams) != len(packets):
        return [f"{label}: {len(datagrams)} UDP datagrams but tshark decoded {len(packets)} sflow packets"], []
    problems: list[str] = []
    pairs: list[tuple[dict, list[int]]] = []
    want: dict = collections.defaultdict(collections.Counter)
    before = dec.stats()
    for n, (dg, p) in enumerate(zip(datagrams, packets, strict=True), 1):
        sp = T.parse_sflow(p)
        where = f"{label} datagram {n} (frame {sp.frame})"
        batch = dec.decode(dg.payload, dg.src, dg.sport, dg.ts)
        if batch.error is not None:
            problems.append(f"{where}: decode error {batch.error!r}")
        flows = batch.to_dicts()
        samples = sflow_flow_records(dg.payload)
        want[dg.src]["datagrams"] += 1
        want[dg.src]["flows"] += len(samples)
        if len(flows) != len(samples):
            problems.append(f"{where}: {len(flows)} flows for {len(samples)} flow samples")
        ovs_records = any(fmt in OVS_SFLOW_RECORDS for recs in samples for fmt, _ in recs)
        expected = [T.expected_from_sflow_sample(sp, s) for s in sp.samples if s.is_flow]
        if len(expected) > len(flows) or (not ovs_records and len(expected) != len(flows)):
            problems.append(f"{where}: {len(flows)} flows, tshark has {len(expected)} flow samples")
        problems += match_unordered(expected, flows, where, required={"SrcAddr", "DstAddr", "Bytes"})
        problems += compare_counters(sp, batch.counters, where)
        for i, (recs, f) in enumerate(zip(samples, flows, strict=False), 1):
            exp = tunnel_from_records(recs)
            problems += [f"{where} flow sample {i}: {x}" for x in T.compare_expected(exp, f, required=set(exp))]
            pairs.append((f, [fmt for fmt, _ in recs]))
    problems += check_stats_delta(before, dec.stats(), want, label)
    problems += no_errors(dec, label)
    return problems, pairs


def tunnel_problems(f: dict, t: Tunnel, src: Node, dst: Node, where: str) -> list[str]:
    """The tunnel fields every report of a packet from src's pod to dst's pod through t shares."""
    exp = {"TunnelId": t.vni, "TunnelSrcAddr": src.underlay[t.family], "TunnelDstAddr": dst.underlay[t.family]}
    return [f"{where}: {x}" for x in T.compare_expected(exp, f, required=set(exp))]


def outer_source_ports(te: TunnelEnv, exports: list[NodeExport], decoders_mod) -> dict[str, dict[tuple, set]]:
    """node -> inner flow key -> UDP source ports of the encapsulated packets that node received,
    from br-ex's sFlow raw headers (compared with tshark in test_ovs_tunnel_underlay_sflow)."""
    out: dict[str, dict[tuple, set]] = {}
    for node, ex in zip(te.nodes, exports, strict=True):
        datagrams, _ = split_frames(ex.cap, ex.ports["sflow-ex"], "sflow")
        by_key: dict[tuple, set] = collections.defaultdict(set)
        for f in decode_all(decoders_mod, datagrams, default_sampling=0):
            if "TunnelSrcPort" in f:
                by_key[_key(f)].add(f["TunnelSrcPort"])
        out[node.name] = by_key
    return out


@pytest.fixture(scope="module")
def tunnel_run(tunnel_env, decoders_mod):
    """Exports of both nodes at sampling 1, made again (fresh traffic and captures, up to three
    times) when a conversation is missing from a node's IPFIX, for the reason sampled_all gives."""
    te = tunnel_env
    for attempt in range(3):
        exports, sent = run_tunnel_exports(te, wait=8.0 + 2.0 * attempt)
        seen = {}
        for node, ex in zip(te.nodes, exports, strict=True):
            datagrams, _ = split_frames(ex.cap, ex.ports["ipfix"], "cflow")
            seen[node.name] = {(_key(f), f.get("FlowDirection"))
                               for f in decode_all(decoders_mod, datagrams, default_sampling=0)}
        want = [(te.node_of(s.src).name, (_sent_key(s), 0)) for s in sent]
        want += [(te.node_of(s.dst).name, (_sent_key(s), d)) for s in sent for d in (0, 1)]
        missing = [(name, key) for name, key in want if key not in seen[name]]
        if not missing:
            break
        print(f"attempt {attempt + 1}: missing from the IPFIX capture: {missing}")
    return exports, sent


def node_exports(te: TunnelEnv, exports: list[NodeExport], port: str, dissector: str, decoders_mod):
    """Per node: its capture's datagrams on the `port` export and tshark's packets of them, and a
    fresh decoder (no default sampling); a node that sent nothing on it fails."""
    for node, ex in zip(te.nodes, exports, strict=True):
        datagrams, packets = split_frames(ex.cap, ex.ports[port], dissector)
        assert datagrams, f"{node.name}: OVS sent nothing on its {port} export"
        yield node, datagrams, packets, decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))


def test_ovs_tunnel_ipfix(tunnel_env, tunnel_run, decoders_mod) -> None:
    """Sender: the pod port's ingress record, without tunnel (the userspace datapath puts no egress
    sample before a native tnl_push). Receiver: the tunnel port's ingress record with the tunnel
    elements, and the egress record to the pod (no tunnel: OVS fills them for input tunnels only)."""
    te = tunnel_env
    exports, sent = tunnel_run
    problems: list[str] = []
    flows: dict[str, list[dict]] = {}
    for node, datagrams, packets, dec in node_exports(te, exports, "ipfix", "cflow", decoders_mod):
        problems += check_cflow_capture(dec, datagrams, packets, f"{node.name}-ipfix")
        problems += no_errors(dec, f"{node.name}-ipfix")
        problems += ipfix_tunnels_vs_tshark(decoders_mod, datagrams, packets, f"{node.name}-ipfix")
        flows[node.name] = decode_all(decoders_mod, datagrams, default_sampling=0)
    by_vni = {t.vni: t for t in TUNNELS}
    for node in te.nodes:  # every tunnel record (ARP and ND included) comes from the peer's tunnel
        for f in flows[node.name]:
            if any(k in f for k in TUNNEL_KEYS):
                t = by_vni.get(f.get("TunnelId"))
                if t is None or t.ipfix_proto is None:
                    problems.append(f"{node.name} IPFIX: tunnel fields of no IPv4 tunnel built: {f}")
                    continue
                problems += tunnel_problems(f, t, te.peer(node), node, f"{node.name} IPFIX {_key(f)}")
    outer = outer_source_ports(te, exports, decoders_mod)
    for s in sent:
        src, dst, t, k = te.node_of(s.src), te.node_of(s.dst), tunnel_for(s), _sent_key(s)
        at_src = [f for f in flows[src.name] if _key(f) == k]
        at_dst = [f for f in flows[dst.name] if _key(f) == k]
        sent_in = [f for f in at_src if f.get("FlowDirection") == 0]
        recv_in = [f for f in at_dst if f.get("FlowDirection") == 0]
        recv_out = [f for f in at_dst if f.get("FlowDirection") == 1]
        for name, got in ((f"{src.name} ingress", sent_in), (f"{dst.name} ingress", recv_in),
                          (f"{dst.name} egress", recv_out)):
            if not got:
                problems.append(f"IPFIX {k} via {t.port}: no {name} record")
            elif s.packets is not None:
                pk, by = sum(f.get("Packets", 0) for f in got), sum(f.get("Bytes", 0) for f in got)
                if (pk, by) != (s.packets, s.packets * s.l3_len):
                    problems.append(f"IPFIX {k} {name}: Packets {pk} Bytes {by}, sent {s.packets}x{s.l3_len}")
        for f in sent_in:
            if f.get("Interfaces") != [src.pod.host_if] or f.get("InIf") != src.pod.ifindex:
                problems.append(f"IPFIX {k} {src.name}: Interfaces {f.get('Interfaces')} InIf {f.get('InIf')}, "
                                f"the pod port is {src.pod.host_if} ({src.pod.ifindex})")
            if any(x in f for x in TUNNEL_KEYS):
                problems.append(f"IPFIX {k} {src.name}: tunnel fields on the pod port's record: {f}")
        names = same_datapath_port(t)
        for f in recv_out:
            got = f.get("Interfaces") or []
            if len(got) != 2 or got[0] not in names or got[1] != dst.pod.host_if or f.get("OutIf") != dst.pod.ifindex:
                problems.append(f"IPFIX {k} {dst.name} egress: Interfaces {got} OutIf {f.get('OutIf')}, "
                                f"expected [{'|'.join(sorted(names))}, {dst.pod.host_if}] and {dst.pod.ifindex}")
        for f in recv_in:
            where = f"IPFIX {k} {dst.name} ingress via {t.port}"
            if (f.get("Interfaces") or [None])[0] not in names:
                problems.append(f"{where}: Interfaces {f.get('Interfaces')}, expected one of {sorted(names)}")
            if t.ipfix_proto is None:
                continue
            exp = {"TunnelType": t.kind, "TunnelId": t.vni, "TunnelSrcAddr": src.underlay[4],
                   "TunnelDstAddr": dst.underlay[4], "TunnelProto": t.ipfix_proto, "TunnelDstPort": t.dport}
            problems += [f"{where}: {x}" for x in T.compare_expected(exp, f, required=set(exp))]
            # The source port of the real encapsulated packets (OVS hashes the inner flow).
            if f.get("TunnelSrcPort") not in outer[dst.name].get(k, set()):
                problems.append(f"{where}: TunnelSrcPort {f.get('TunnelSrcPort')}, the packets br-ex "
                                f"received came from {sorted(outer[dst.name].get(k, set()))}")
    assert not problems, "\n".join(problems)


def test_ovs_tunnel_sflow(tunnel_env, tunnel_run, decoders_mod) -> None:
    """br-int's sFlow: the receiver's samples carry OVS's ingress tunnel records (1024 + VNI 1030,
    from the packet's tunnel metadata), the sender's some egress ones (1023 + VNI 1029): OVS reads
    them from the datapath flow's tnl_push action, which the userspace datapath does not pass up
    with the sample, so OVS looks the flow up by the sampled packet's flow hash and finds it only
    for packets equal to the one that created the megaflow (not for most TCP segments, whose flags
    differ, nor for IPv6 when ND created the flow). OVS 3.1 also writes the tunnel's UDP ports
    without converting them to host order (dpif_sflow_tunnel_v4 casts the network-order
    ovs_be16): on this little-endian machine they arrive byte-swapped, and flowscope must report
    the tunnel's real ports (those of the encapsulated packets br-ex saw) and its type."""
    te = tunnel_env
    exports, sent = tunnel_run
    problems: list[str] = []
    samples: dict[str, list[tuple[dict, list[int]]]] = {}
    for node, datagrams, packets, dec in node_exports(te, exports, "sflow", "sflow", decoders_mod):
        probs, samples[node.name] = check_ovs_sflow(dec, datagrams, packets, f"{node.name}-sflow")
        problems += probs
        problems += [f"{node.name} sFlow: AgentIP {f.get('AgentIP')}, agent=br-ex is {node.underlay[4]}"
                     for f, _ in samples[node.name][:1] if f.get("AgentIP") != node.underlay[4]]
    outer = outer_source_ports(te, exports, decoders_mod)
    egress_records = 0
    for s in sent:
        src, dst, t, k = te.node_of(s.src), te.node_of(s.dst), tunnel_for(s), _sent_key(s)
        for node, role in ((src, "egress"), (dst, "ingress")):
            got = [(f, fmts) for f, fmts in samples[node.name] if _key(f) == k]
            where = f"sFlow {k} {node.name} ({role} via {t.port})"
            if s.packets is not None and len(got) != s.packets:
                problems.append(f"{where}: {len(got)} samples at sampling 1, sent {s.packets} packets")
            if s.packets is None and len(got) < 3:
                problems.append(f"{where}: {len(got)} samples for a TCP connection")
            for f, fmts in got:
                if s.l3_len is not None and f.get("Bytes") != s.l3_len + 18:
                    problems.append(f"{where}: Bytes {f.get('Bytes')}, frame is {s.l3_len} + 14 + FCS 4")
                if role == "egress" and f.get("InIf") != src.pod.ifindex:
                    problems.append(f"{where}: InIf {f.get('InIf')}, the pod port is {src.pod.ifindex}")
                if role == "ingress" and f.get("OutIf") != dst.pod.ifindex:
                    problems.append(f"{where}: OutIf {f.get('OutIf')}, the pod port is {dst.pod.ifindex}")
                if t.ipfix_proto is None:
                    continue  # OVS: no record (ingress) or an IPv6 header read as IPv4 (egress)
                want = {1023, 1029} if role == "egress" else {1024, 1030}
                if role == "egress" and not set(fmts) & want:
                    continue  # no datapath flow found for this packet (see above)
                if not want <= set(fmts):
                    problems.append(f"{where}: records {fmts}, OVS adds {sorted(want)}")
                    continue
                egress_records += role == "egress"
                problems += tunnel_problems(f, t, src, dst, where)
                # Egress: the tnl_push header OVS reads has source port 0 (the datapath picks one
                # per packet afterwards). Ingress: the received packet's source port.
                sports = {0} if role == "egress" else set(outer[dst.name].get(k, set()))
                if f.get("TunnelProto") != 17 or f.get("TunnelDstPort") != t.dport or \
                        f.get("TunnelSrcPort") not in sports:
                    problems.append(f"{where}: TunnelProto {f.get('TunnelProto')} ports {f.get('TunnelSrcPort')} -> "
                                    f"{f.get('TunnelDstPort')}, the tunnel's are 17 and {sorted(sports)} -> {t.dport}")
                if f.get("TunnelType") != t.kind:
                    problems.append(f"{where}: TunnelType {f.get('TunnelType')}, the tunnel is {t.kind}")
    if not egress_records:
        problems.append("sFlow: no sender's sample of the traffic made has OVS's egress tunnel records")
    assert not problems, "\n".join(problems)


def test_ovs_tunnel_underlay_sflow(tunnel_env, tunnel_run, decoders_mod) -> None:
    """br-ex's sFlow samples the encapsulated packets as they arrive from the other node: flowscope
    reports the inner headers as the flow and the outer ones (VXLAN/Geneve over IPv4 and IPv6) as
    Tunnel*, with the VNI from the VXLAN/Geneve header."""
    te = tunnel_env
    exports, sent = tunnel_run
    problems: list[str] = []
    samples: dict[str, list[dict]] = {}
    for node, datagrams, packets, dec in node_exports(te, exports, "sflow-ex", "sflow", decoders_mod):
        probs, pairs = check_ovs_sflow(dec, datagrams, packets, f"{node.name}-sflow-ex")
        problems += probs
        samples[node.name] = [f for f, _ in pairs]
    for s in sent:
        src, dst, t, k = te.node_of(s.src), te.node_of(s.dst), tunnel_for(s), _sent_key(s)
        got = [f for f in samples[dst.name] if _key(f) == k]
        where = f"br-ex sFlow {k} {dst.name} via {t.port}"
        if s.packets is not None and len(got) != s.packets:
            problems.append(f"{where}: {len(got)} samples at sampling 1, sent {s.packets} packets")
        if s.packets is None and len(got) < 3:
            problems.append(f"{where}: {len(got)} samples for a TCP connection")
        outer_len = 14 + (20 if t.family == 4 else 40) + 8 + 8  # Ethernet, IP, UDP, VXLAN/Geneve
        for f in got:
            exp = {"TunnelType": t.kind, "TunnelProto": 17, "TunnelDstPort": t.dport, "InIf": dst.uplink_ifindex,
                   "AgentIP": dst.underlay[4]}
            if s.l3_len is not None:
                exp["Bytes"] = outer_len + 14 + s.l3_len + 4
            problems += [f"{where}: {x}" for x in T.compare_expected(exp, f, required=set(exp))]
            problems += tunnel_problems(f, t, src, dst, where)
    assert not problems, "\n".join(problems)
