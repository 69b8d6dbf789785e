"""End-to-end: real exporters in configurations tests/test_exporters.py does not use.

softflowd's absolute IPFIX times (-A sec|milli|micro|nano), VLAN and Ethernet tracking (-T vlan,
-T ether) over 802.1Q-tagged traffic, and its periodic sampling (-s); pmacctd's nfprobe as
NetFlow v5 and with a sampling rate; nfdump's nfpcapd + nfreplay (NetFlow v5 and v9); Open
vSwitch's IPFIX and sFlow to an IPv6 collector with an IPv6 sFlow agent. Same
method as tests/test_exporters.py: the exporter reads a pcap the test wrote, inside a fresh
namespace; its export is captured and flowscope's decode is compared with
tshark's and with the traffic that was generated.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.support import exporters as E
from tests.support import pcapgen as G
from tests.test_exporters import START, _skip_unless, capture_export, check_against_traffic, decode_capture

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.mark.parametrize("unit", ["sec", "milli", "micro", "nano"])
def test_softflowd_ipfix_absolute_times(unit: str, workdir: Path, decoders_mod) -> None:
    """softflowd -A: flowStart/EndSeconds (150/151), Milliseconds (152/153), Microseconds
    (154/155) or Nanoseconds (156/157) instead of sysUpTime offsets; the flow times must be the
    pcap's (RFC 7011 section 6.1.9/6.1.10: micro/nanoseconds in the NTP format)."""
    _skip_unless("softflowd")
    generated = G.standard_flows()
    (workdir / E.PCAP_NAME).write_bytes(G.build_pcap(generated, start=START))
    cap, port = capture_export(workdir, lambda ns, port: E.run_softflowd(ns, workdir, "10", port,
                                                                         extra=("-A", unit)))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    # whole seconds: the start may round down by up to a second
    problems += check_against_traffic(flows, generated, time_slack_ms=1500)
    assert flows and all("TimeFlowStartMs" in f for f in flows), flows[:2]
    assert not problems, "\n".join(problems)


def vlan_pcap(flows: list[G.Flow], vlans: list[int], *, start: float = START, gap: float = 0.01) -> bytes:
    """build_pcap() with flow i's frames 802.1Q-tagged with VLAN vlans[i] (priority 0)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, G.LINKTYPE_ETHERNET)]
    t, rnd = start, 0
    while any(rnd < f.packets for f in flows):
        for f, vid in zip(flows, vlans, strict=True):
            if rnd < f.packets:
                fr = f.frame(rnd)
                fr = fr[:12] + struct.pack("!HH", 0x8100, vid) + fr[12:]
                sec = int(t)
                out.append(struct.pack("<IIII", sec, int(round((t - sec) * 1e6)), len(fr), len(fr)) + fr)
                t += gap
        rnd += 1
    return b"".join(out)


def _macs_vlans(flows: list[dict]) -> dict[tuple, set]:
    from tests.test_exporters import _flow_key

    out: dict[tuple, set] = {}
    for f in flows:
        out.setdefault(_flow_key(f), set()).add((f.get("Vlan"), f.get("SrcMac"), f.get("DstMac")))
    return out


@pytest.mark.parametrize("version,track", [("9", "vlan"), ("10", "vlan"), ("9", "ether"), ("10", "ether")])
def test_softflowd_vlan_tracking(version: str, track: str, workdir: Path, decoders_mod) -> None:
    """softflowd -T vlan (and ether: vlan plus the MACs) over 802.1Q-tagged frames: every flow
    carries its VLAN (and with ether its MACs); counts as in the untagged case (IP lengths)."""
    from tests.test_exporters import _generated_key

    _skip_unless("softflowd")
    generated = G.standard_flows()
    vlans = [100 + i for i in range(len(generated))]
    (workdir / E.PCAP_NAME).write_bytes(vlan_pcap(generated, vlans))
    cap, port = capture_export(workdir, lambda ns, port: E.run_softflowd(ns, workdir, version, port,
                                                                         extra=("-T", track)))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    problems += check_against_traffic(flows, generated)
    seen = _macs_vlans(flows)
    for g, vid in zip(generated, vlans, strict=True):
        want = (vid, g.src_mac, g.dst_mac) if track == "ether" else (vid, None, None)
        got = seen.get(_generated_key(g), set())
        if got != {want}:
            problems.append(f"{_generated_key(g)}: (Vlan, SrcMac, DstMac) {got}, sent {want}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# Open vSwitch sFlow with a short sampled header, over fragmented IPv4 and IPv6 traffic

# (test_ovs's OVS with a bridge and two pods; skipped with its reason without root or the tools)
from test_ovs import env  # noqa: E402, F401  (a fixture)


def test_ovs_sflow_short_header_ipv6_fragments(env, decoders_mod) -> None:  # noqa: F811 (the fixture)
    """OVS sFlow with header=60 (14 Ethernet + 40 IPv6 + 6 of the 8-byte fragment header) over
    UDP datagrams larger than the pods' MTU: each is sent as three fragments. The cut fragment
    header still names the upper-layer protocol in its first byte (RFC 8200 4.5: Next Header),
    as a cut hop-by-hop header does for MLD: every IPv6 sample is a UDP (17) packet without
    ports, as the IPv4 fragments' samples are and as the same IPv6 fragments are with a longer
    header; never the fragment header's number (44). The same samples decode as tshark reads
    them (a cut extension header: the protocol its Next Header names, where tshark read it)."""
    import collections
    import random
    import time

    from tests.support import netns as N
    from tests.support import ovs as O
    from tests.test_golden_corpus import check_sflow_capture
    from tests.test_ovs import decode_all, split_capture

    ovs, ns, br, a, b, d = env.ovs, env.ns, env.bridge, env.a, env.b, env.dir
    port = random.randint(20000, 60000)
    N.udp_sink(ns, "127.0.0.1", port)
    cap_path = d / f"sflow-{time.monotonic_ns()}.pcap"
    cap = N.Capture(ns, cap_path, bpf=f"udp and dst port {port}")
    try:
        ovs.set_sflow(br, f"127.0.0.1:{port}", agent="lo", sampling=1, polling=30, header=60)
        ovs.appctl("revalidator/purge")
        time.sleep(1.0)
        for dst, sport in ((b.ipv4, 40301), (b.ipv6, 40302)):
            O.traffic(a, "udp-send", dst, 5400, 2, 3000, sport)   # 3008 bytes of UDP: 3 fragments
        time.sleep(3.0)
    finally:
        try:
            ovs.clear_exports(br)
        finally:
            cap.stop()
    datagrams, packets = split_capture(cap_path, port, "sflow")
    assert datagrams, "OVS sent no sFlow"
    problems = check_sflow_capture(decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0)),
                                   datagrams, packets, "ovs-sflow-header-60")
    assert not problems, "\n".join(problems)
    # (ICMPv6 neighbour discovery between the pods may be sampled too: not the datagrams sent)
    flows = [f for f in decode_all(decoders_mod, datagrams, default_sampling=0)
             if (f.get("SrcAddr"), f.get("DstAddr")) in ((a.ipv4, b.ipv4), (a.ipv6, b.ipv6))
             and f.get("Proto") not in (1, 58)]
    got = collections.Counter((f["SrcAddr"], f.get("Proto"), "SrcPort" in f) for f in flows)
    # IPv4: 42 bytes reach the UDP ports of the first fragments (RFC 791: later ones have none)
    assert got == {(a.ipv4, 17, True): 2, (a.ipv4, 17, False): 4, (a.ipv6, 17, False): 6}, got


def test_ovs_ipfix_and_sflow_to_an_ipv6_collector(env, decoders_mod) -> None:  # noqa: F811 (the fixture)
    """An IPv6-only cluster's export: OVS IPFIX and sFlow sent to a collector at [::1], the
    sFlow agent an IPv6 address other than the datagrams' source (agent="fd00:99::7"). Both
    decode as tshark reads them, datagram by datagram (tshark's IPv6 sFlow agent read as the
    AgentIP); IPFIX flows carry the exporter's address ::1 as AgentIP, sFlow flows the agent's;
    every conversation sent is there in both, at IPFIX ingress and egress."""
    import random
    import time

    from tests.support import netns as N
    from tests.test_golden_corpus import check_cflow_capture, check_sflow_capture
    from tests.test_ovs import _key, _sent_key, decode_all, pod_traffic, split_capture

    ovs, ns, br, a, b, d = env.ovs, env.ns, env.bridge, env.a, env.b, env.dir
    ports = {"cflow": random.randint(20000, 39999), "sflow": random.randint(40000, 60000)}
    for port in ports.values():
        N.udp_sink(ns, "::1", port)
    problems: list[str] = []
    for attempt in range(3):  # the userspace datapath may leave a short conversation out (test_ovs)
        cap_path = d / f"ipv6-collector-{attempt}.pcap"
        cap = N.Capture(ns, cap_path, bpf="udp and dst host ::1")
        try:
            ovs.set_ipfix(br, f"[::1]:{ports['cflow']}", sampling=1, cache_active_timeout=2, cache_max_flows=100)
            ovs.set_sflow(br, f"[::1]:{ports['sflow']}", agent='"fd00:99::7"', sampling=1, polling=30, header=128)
            ovs.appctl("revalidator/purge")
            time.sleep(1.0)
            sent = pod_traffic(a, b)
            time.sleep(6.0)
        finally:
            try:
                ovs.clear_exports(br)
            finally:
                cap.stop()
        problems = []
        seen: dict[str, set] = {}
        for layer, port in ports.items():
            datagrams, packets = split_capture(cap_path, port, layer)
            if not datagrams:
                problems.append(f"OVS sent no {layer} to [::1]")
                continue
            check = check_sflow_capture if layer == "sflow" else check_cflow_capture
            problems += check(decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0)), datagrams,
                              packets, f"ovs-{layer}-ipv6-collector")
            flows = decode_all(decoders_mod, datagrams, default_sampling=0)
            want_agent = "fd00:99::7" if layer == "sflow" else "::1"
            problems += [f"{layer} {_key(f)}: AgentIP {f.get('AgentIP')!r}, want {want_agent}" for f in flows
                         if f.get("AgentIP") != want_agent][:5]
            seen[layer] = {(_key(f), f.get("FlowDirection")) for f in flows}
        missing = [(layer, _sent_key(s), fd) for s in sent for layer, dirs in (("cflow", (0, 1)), ("sflow", (None,)))
                   for fd in dirs if (_sent_key(s), fd) not in seen.get(layer, set())]
        if missing and not problems and attempt < 2:
            continue
        problems += [f"{layer}: no flow for {k} (FlowDirection {fd})" for layer, k, fd in missing]
        break
    assert not problems, "\n".join(problems)


def test_sflow_cut_ipv6_fragment_header_names_the_protocol(decoders_mod) -> None:
    """The same without an exporter: a sampled header that ends inside an IPv6 fragment header
    (first or later fragment) gives its Next Header as the protocol, without ports; with the
    whole fragment header the first fragment has its ports and a later one only the protocol."""
    from tests.test_sflow import eth, ipv6, one_flow, raw_header, udp

    for offset in (0, 185):
        frag = struct.pack(">BBHI", 17, 0, offset << 3 | (1 if offset == 0 else 0), 0x1234)
        pkt = eth(ipv6("2001:db8::1", "2001:db8::2", 44, frag + udp(1111, 2222, b"x" * 64)), 0x86DD)
        for cut in (55, 58, 60):
            f = one_flow(decoders_mod, [raw_header(pkt[:cut], 1500)])
            assert (f["DstAddr"], f["Proto"], "SrcPort" in f) == ("2001:db8::2", 17, False), (offset, cut)
        f = one_flow(decoders_mod, [raw_header(pkt[:90], 1500)])
        assert (f["Proto"], f.get("SrcPort")) == (17, 1111 if offset == 0 else None), offset
    f = one_flow(decoders_mod, [raw_header(pkt[:54], 1500)])   # nothing after the IPv6 header
    assert f["Proto"] == 44


# --------------------------------------------------------------------------------------------
# pmacctd nfprobe with microsecond timestamps

def packet_times(flows: list[G.Flow], *, start: float = START, gap: float = 0.01) -> list[tuple[int, int]]:
    """(first, last) packet time in ms of each flow, as build_pcap() lays them out."""
    times: list[list[int]] = [[] for _ in flows]
    t, rnd = start, 0
    while any(rnd < f.packets for f in flows):
        for i, f in enumerate(flows):
            if rnd < f.packets:
                sec = int(t)
                times[i].append(sec * 1000 + int(round((t - sec) * 1e6)) // 1000)
                t += gap
        rnd += 1
    return [(x[0], x[-1]) for x in times]


@pytest.mark.parametrize("version", [9, 10])
def test_pmacctd_nfprobe_usec_timestamps(version: int, workdir: Path, decoders_mod, monkeypatch) -> None:
    """pmacctd nfprobe_tstamp_usec: flowStart/EndMicroseconds (154/155) with pmacct's length of
    16 bytes, a struct timeval (64-bit Unix seconds, 64-bit microseconds; RFC 7011's
    dateTimeMicroseconds is an 8-byte NTP time). Every flow's times are its conversation's first
    and last packets' in the pcap, to the millisecond, and not left as raw ie154/ie155."""
    from tests.test_exporters import _flow_key, _generated_key

    _skip_unless("pmacctd")
    generated = G.standard_flows()
    (workdir / E.PCAP_NAME).write_bytes(G.build_pcap(generated, start=START))
    orig = E.pmacctd_config
    monkeypatch.setattr(E, "pmacctd_config", lambda *a, **kw: orig(*a, **kw) + "nfprobe_tstamp_usec[p]: true\n")
    cap, port = capture_export(workdir, lambda ns, port: E.run_pmacctd(ns, workdir, "nfprobe", port,
                                                                       version=version))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    # tshark 4.0 reads the 16-byte elements' first 8 bytes as an NTP time (January 1970, 0.39 s):
    # the times are checked against the pcap below instead.
    problems = [p for p in problems if not ("datagram" in p and ("TimeFlowStartMs: expected" in p
                                                                  or "TimeFlowEndMs: expected" in p))]
    problems += check_against_traffic(flows, generated, time_slack_ms=0)
    by_key: dict[tuple, list[dict]] = {}
    for f in flows:
        by_key.setdefault(_flow_key(f), []).append(f)
    # pmacct (like softflowd) keeps both directions of a conversation in one cache entry with
    # one pair of times: a flow's times are its conversation's
    conv: dict[frozenset, tuple[int, int]] = {}
    for g, (first, last) in zip(generated, packet_times(generated), strict=True):
        k = frozenset(((g.src, g.sport), (g.dst, g.dport), g.proto))
        lo, hi = conv.get(k, (first, last))
        conv[k] = (min(lo, first), max(hi, last))
    for g in generated:
        first, last = conv[frozenset(((g.src, g.sport), (g.dst, g.dport), g.proto))]
        for f in by_key.get(_generated_key(g), []):
            got = (f.get("TimeFlowStartMs"), f.get("TimeFlowEndMs"))
            if got != (first, last):
                problems.append(f"{_generated_key(g)}: times {got}, packets at {(first, last)}")
            if "ie154" in f or "ie155" in f:
                problems.append(f"{_generated_key(g)}: times left as raw elements {f.get('ie154')} {f.get('ie155')}")
    assert not problems, "\n".join(problems)


def test_pmacct_16_byte_microsecond_times_decode(decoders_mod) -> None:
    """The same without an exporter: IPFIX and v9 records with pmacct's 16-byte 155/154 (end
    first, as pmacct orders them) give the times; 8-byte ones stay NTP (RFC 7011 6.1.9)."""
    from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set

    t16 = IpfixTemplate(1024, (("end", 155, 0, 16), ("start", 154, 0, 16), ("src", 8, 0, 4), ("dst", 12, 0, 4)))
    t8 = IpfixTemplate(1025, (("end", 155, 0, 8), ("start", 154, 0, 8), ("src", 8, 0, 4), ("dst", 12, 0, 4)))

    def tv(sec: int, usec: int) -> bytes:
        return struct.pack("!QQ", sec, usec)

    def ntp(sec: int, usec: int) -> bytes:
        return struct.pack("!II", sec + 2208988800, (usec << 32) // 1_000_000 + 1)

    rec16 = {"end": tv(1_700_000_000, 290_000), "start": tv(1_700_000_000, 999), "src": "10.0.0.1",
             "dst": "10.0.0.2"}
    rec8 = {"end": ntp(1_700_000_001, 500_000), "start": ntp(1_700_000_001, 0), "src": "10.0.0.3",
            "dst": "10.0.0.4"}
    msg = ipfix_message([template_set([t16, t8]), data_set(t16, [rec16]), data_set(t8, [rec8])], seq=0,
                        export_time=1_700_000_002)
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    flows = dec.decode(msg, "192.0.2.1").to_dicts()
    assert [(f["TimeFlowStartMs"], f["TimeFlowEndMs"], "ie154" in f) for f in flows] == [
        (1_700_000_000_000, 1_700_000_000_290, False), (1_700_000_001_000, 1_700_000_001_500, False)]
    # NetFlow v9 (pmacct's nfprobe_version 9 sends the same 16-byte elements)
    body = template_set([t16], version=9) + data_set(t16, [rec16])
    v9 = struct.pack("!HHIIII", 9, 2, 5000, 1_700_000_002, 0, 0) + body
    f = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0)).decode(v9, "192.0.2.2").to_dicts()[0]
    assert (f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (1_700_000_000_000, 1_700_000_000_290)


@pytest.mark.parametrize("version", [5, 9])
def test_nfdump_nfreplay(version: int, workdir: Path, decoders_mod) -> None:
    """nfdump's exporter (nfpcapd builds the flows from the pcap, nfreplay sends them as NetFlow
    v5 or v9: its own template layout, engine type/id elements, sequence numbering): flowscope's
    decode against tshark's and against the traffic; enough flows for several datagrams, so the
    sequence numbers are read across them and nothing may count as lost on the loopback."""
    from collector.pcap import iter_udp

    _skip_unless("nfpcapd", "nfreplay")
    generated = G.standard_flows() + [
        G.Flow(f"10.1.{i // 200}.{i % 200 + 1}", "10.2.0.2", G.UDP if i % 3 else G.TCP, 41000 + i, 80,
               packets=1 + i % 3, payload=100) for i in range(400)]
    generated += [G.Flow(f"fd00:1::{i + 1:x}", "fd00:2::2", G.UDP, 30000 + i, 53, packets=2, payload=60)
                  for i in range(60)]
    (workdir / E.PCAP_NAME).write_bytes(G.build_pcap(generated, start=START, gap=0.001))
    cap, port = capture_export(workdir, lambda ns, port: E.run_nfreplay(ns, workdir, version, port))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    if version == 5:  # NetFlow v5 carries IPv4 only
        generated = [g for g in generated if not g.v6]
    # nfpcapd's clock is the pcap's: the flows lie inside its [START, START + 10 s]
    problems += check_against_traffic(flows, generated)
    assert not problems, "\n".join(problems[:20])
    datagrams = list(iter_udp(cap))
    assert len(datagrams) >= 10, f"{len(datagrams)} datagrams: too few to read the numbering"
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    for d in datagrams:
        dec.decode(d.payload, d.src, d.sport, d.ts)
    st = dec.stats()[datagrams[0].src]["protocols"][f"netflow{version}"]
    assert (st["sequence_lost"], st["sequence_resets"], st["missing_template_sets"]) == (0, 0, 0), st


def sampled_traffic(workdir: Path) -> list[G.Flow]:
    """30 UDP flows of 40 packets each (1200 packets, 0.5 ms apart) written as the exporter's pcap."""
    generated = [G.Flow(f"10.1.0.{i + 1}", "10.2.0.2", G.UDP, 41000 + i, 80, packets=40, payload=100)
                 for i in range(30)]
    (workdir / E.PCAP_NAME).write_bytes(G.build_pcap(generated, start=START, gap=0.0005))
    return generated


def sampled_problems(flows: list[dict], generated: list[G.Flow], rate: int) -> tuple[list[str], int]:
    """What is wrong with flows exported at 1:`rate` from `generated`: a flow without Sampling
    `rate`, or with packets that are not part of its flow's. Also returns the sampled packets."""
    from tests.test_exporters import _flow_key, _generated_key

    problems = [f"{_flow_key(f)}: Sampling {f.get('Sampling')!r}, configured {rate}" for f in flows
                if f.get("Sampling") != rate]
    sent = {_generated_key(g): g for g in generated}
    packets: dict[tuple, int] = {}
    for f in flows:
        packets[_flow_key(f)] = packets.get(_flow_key(f), 0) + f.get("Packets", 0)
    problems += [f"{k}: {n} sampled packets, not part of what was sent" for k, n in packets.items()
                 if k not in sent or not 0 < n <= sent[k].packets]
    return problems, sum(packets.values())


@pytest.mark.parametrize("version", [5, 9, 10])
def test_pmacctd_nfprobe_sampling_rate(version: int, workdir: Path, decoders_mod, monkeypatch) -> None:
    """pmacctd with sampling_rate 4: NetFlow v5 says it in the header's sampling interval; v9
    and IPFIX in a sampler options record (System scope: FLOW_SAMPLER_ID 48, MODE 49, RANDOM_INTERVAL 50)
    whose id every flow record carries in element 48. Every flow must carry Sampling 4, with
    tshark agreeing record by record; the sampled packets are a part of what was sent."""
    _skip_unless("pmacctd")
    generated = sampled_traffic(workdir)
    orig = E.pmacctd_config
    monkeypatch.setattr(E, "pmacctd_config", lambda *a, **kw: orig(*a, **kw) + "sampling_rate: 4\n")
    cap, port = capture_export(workdir, lambda ns, port: E.run_pmacctd(ns, workdir, "nfprobe", port,
                                                                       version=version))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    assert flows, "pmacctd exported nothing at 1:4"
    more, total = sampled_problems(flows, generated, 4)
    problems += more
    # 1200 packets at 1:4: about 300 sampled; far from it means the rate was not the one applied
    if not 150 <= total <= 450:
        problems.append(f"{total} packets sampled of 1200 at 1:4")
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("version", ["5", "9", "10"])
def test_softflowd_periodic_sampling(version: str, workdir: Path, decoders_mod) -> None:
    """softflowd -s 4: one packet in 4 is counted, and the rate goes out in the NetFlow v5
    header's sampling interval, or in v9/IPFIX options data (samplingInterval 34 and
    samplingAlgorithm 35, scoped by the exporting process). Every flow carries Sampling 4, with
    tshark agreeing record by record, and the sampled packets are a quarter of what was sent,
    each flow's no more than it sent. (The module's docstring listed -s; no test ran it.)"""
    _skip_unless("softflowd")
    generated = sampled_traffic(workdir)
    cap, port = capture_export(workdir, lambda ns, port: E.run_softflowd(ns, workdir, version, port,
                                                                         extra=("-s", "4")))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    assert flows, f"softflowd -v {version} -s 4 exported nothing"
    more, total = sampled_problems(flows, generated, 4)
    problems += more
    # periodic: every 4th packet of the capture, 300 of 1200 whatever their flows
    if total != 1200 // 4:
        problems.append(f"{total} packets sampled of 1200 at 1:4 (periodic: 300)")
    assert not problems, "\n".join(problems[:20])
