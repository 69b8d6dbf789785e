"""sFlow v5 decoder tests: real captures against tshark, and datagrams this file builds itself.

Why two kinds: the captures prove flowscope agrees with an independent decoder (tshark 4.0, the
`.tshark.json` stored beside each pcap) on what real exporters send; the built datagrams cover what
the captures do not (VXLAN/Geneve inner headers, QinQ, MPLS, ICMPv6, IPv6 extension headers, the
Open vSwitch tunnel records 1023/1029 and counter records 1004/1005 that tshark 4.0 cannot parse)
and every truncation. Expected values always come from the bytes this file built or from tshark,
never from the decoder's own output.

Licences: the logstash-codec-sflow captures (generic_sflow_*) are Apache-2.0 and ship in
tests/data/corpus/sflow (NOTICE); the akvorado_* captures are AGPL and are read only from
../shared/corpus (or $FLOWSCOPE_SHARED_CORPUS); those tests are skipped, saying so, when it is absent.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.support import tshark as T

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "tests" / "data" / "corpus" / "sflow"
SHARED = Path(os.environ.get("FLOWSCOPE_SHARED_CORPUS", ROOT.parent / "shared" / "corpus")) / "sflow"
AGPL = ("akvorado_",)
REASONS = {"truncated", "bad_version", "bad_length", "bad_set", "bad_template", "template_limit",
           "options_limit", "too_large", "bad_sample", "unsupported", "template_mismatch"}
KNOWN_FLOW_RECORDS = {1, 2, 3, 4, 1001, 1002, 1003, 1023, 1024, 1025, 1026, 1029, 1030, 2100, 2101}
RECV = 1_700_000_000.25



def decode(decoders_mod, data: bytes, exporter: str = "192.0.2.1"):
    return decoders_mod.Decoder().decode(data, exporter, 6343, RECV)


# --------------------------------------------------------------------------------------------
# Real captures against tshark


def _apache_cases() -> list:
    base = LOCAL if LOCAL.is_dir() and any(LOCAL.glob("generic_sflow_*.pcap")) else SHARED
    return [pytest.param(p, id=p.name) for p in sorted(base.glob("generic_sflow_*.pcap"))] or [
        pytest.param(None, id="apache-corpus-absent")]


def _agpl_cases() -> list:
    if not SHARED.is_dir():
        return [pytest.param(None, id="shared-corpus-absent")]
    return [pytest.param(p, id="shared/" + p.name) for p in sorted(SHARED.glob("*.pcap"))
            if any(p.name.startswith(t) for t in AGPL)]


def inner_from_payload(payload: bytes) -> dict:
    """Flow keys of an Ethernet frame carried in a VXLAN payload tshark left undecoded (tshark 4.0
    does not dissect VXLAN inside an sFlow header): parsed here with struct, independently."""
    exp: dict = {}
    if len(payload) < 14:
        return exp
    exp["DstMac"] = payload[0:6].hex(":")
    exp["SrcMac"] = payload[6:12].hex(":")
    etype, off = struct.unpack_from(">H", payload, 12)[0], 14
    while etype in (0x8100, 0x88A8) and len(payload) >= off + 4:
        etype, off = struct.unpack_from(">H", payload, off + 2)[0], off + 4
    exp["Etype"] = etype
    if etype == 0x0800 and len(payload) >= off + 20:
        ihl = (payload[off] & 15) * 4
        exp.update(SrcAddr=str(ipaddress.IPv4Address(payload[off + 12:off + 16])),
                   DstAddr=str(ipaddress.IPv4Address(payload[off + 16:off + 20])), Proto=payload[off + 9])
        off += ihl
    elif etype == 0x86DD and len(payload) >= off + 40:
        exp.update(SrcAddr=str(ipaddress.IPv6Address(payload[off + 8:off + 24])),
                   DstAddr=str(ipaddress.IPv6Address(payload[off + 24:off + 40])), Proto=payload[off + 6])
        off += 40
    else:
        return exp
    if exp["Proto"] in (1, 58) and len(payload) >= off + 2:
        exp.update(IcmpType=payload[off], IcmpCode=payload[off + 1])
    elif exp["Proto"] in (6, 17) and len(payload) >= off + 4:
        exp.update(zip(("SrcPort", "DstPort"), struct.unpack_from(">HH", payload, off), strict=True))
    return exp


def expected_flow(sp: T.SflowPacket, s: T.SflowSample) -> dict:
    """What flowscope must output for one flow sample: tshark's values; through a VXLAN tunnel the
    inner headers are the flow and the outer IP/UDP (tshark's) go to the Tunnel* fields."""
    exp = T.expected_from_sflow_sample(sp, s)
    for r in s.records:
        if r.enterprise or r.format != 1 or "header_tree" not in r.fields:
            continue
        L = T.header_layers(r.fields["header_tree"])
        udp = L.get("udp", {})
        if T.to_int(udp.get("udp.dstport", "0")) != 4789 or "udp.payload" not in udp:
            break
        payload = bytes.fromhex(udp["udp.payload"].replace(":", ""))
        # tshark.expected_from_header already moved the outer endpoints to Tunnel*.
        exp["TunnelProto"] = 17
        exp["TunnelType"] = "vxlan"
        exp["TunnelId"] = int.from_bytes(payload[4:7], "big")
        for k in ("Etype", "Dscp", "SrcMac", "DstMac"):
            exp.pop(k, None)
        exp.update(inner_from_payload(payload[8:]))
        break
    return exp


def check_capture(decoders_mod, pcap: Path) -> list[str]:
    from collector.pcap import iter_udp

    ref = T.load_tshark_json(pcap.parent / (pcap.stem + ".tshark.json"))
    datagrams = list(iter_udp(pcap))
    problems: list[str] = []
    if len(datagrams) != len(ref["packets"]):
        return [f"{len(datagrams)} datagrams, tshark {len(ref['packets'])}"]
    dec = decoders_mod.Decoder()
    for n, (dg, p) in enumerate(zip(datagrams, ref["packets"], strict=True), 1):
        sp = T.parse_sflow(p)
        where = f"{pcap.name} datagram {n}"
        b = dec.decode(dg.payload, dg.src, dg.sport, dg.ts)
        flows = b.to_dicts()
        flow_s = [s for s in sp.samples if s.is_flow]
        ctr_s = [s for s in sp.samples if not s.is_flow]
        if b.protocol != "sflow5":
            problems.append(f"{where}: protocol {b.protocol!r}")
        if b.sequence != sp.sequence:
            problems.append(f"{where}: sequence {b.sequence}, tshark {sp.sequence}")
        if sp.malformed:
            # tshark gave up part-way (e.g. OVS 1004/1005): what it decoded must still be there.
            if len(flows) < len(flow_s) or len(b.counters) < len(ctr_s):
                problems.append(f"{where}: fewer samples than tshark's partial decode")
            continue
        if b.error is not None:
            problems.append(f"{where}: error {b.error!r} on a datagram tshark decodes")
        # Sample counts and types.
        if len(flows) + len(b.counters) != sp.numsamples or len(flow_s) + len(ctr_s) != sp.numsamples:
            problems.append(f"{where}: {len(flows)} flows + {len(b.counters)} counter samples, header says "
                            f"{sp.numsamples}, tshark {len(flow_s)} + {len(ctr_s)}")
        # Flow record formats: the ones flowscope has no name for come out as ie<format> extras.
        exp_unknown = collections.Counter(
            f"ie{r.format}" if not r.enterprise else f"ie{r.enterprise}_{r.format}"
            for s in flow_s for r in s.records if r.enterprise or r.format not in KNOWN_FLOW_RECORDS)
        got_unknown = collections.Counter(k for f in flows for k in f if k.startswith("ie"))
        if exp_unknown != got_unknown:
            problems.append(f"{where}: unknown flow records {dict(got_unknown)}, tshark {dict(exp_unknown)}")
        # Flow values (tshark groups samples by type, so pair them without relying on order).
        unused = list(range(len(flows)))
        for i, s in enumerate(flow_s, 1):
            exp = expected_flow(sp, s)
            exp["Packets"] = 1
            best = None
            for j in unused:
                probs = T.compare_expected(exp, flows[j], required=set(exp))
                if best is None or len(probs) < len(best[1]):
                    best = (j, probs)
                if not probs:
                    break
            if best is None:
                problems.append(f"{where}: no flow for sample {i}")
                continue
            problems += [f"{where} flow sample {i}: {x}" for x in best[1]]
            unused.remove(best[0])
        # Counter samples: one dict each, record formats and values.
        got_c = sorted((c["SequenceNum"], c["SourceIdIndex"], tuple(c["Records"])) for c in b.counters)
        exp_c = sorted((T.to_int(s.fields["sflow.counters_sample.sequence_number"]),
                        T.to_int(s.fields.get("sflow.counters_sample.source_id_index",
                                              s.fields.get("sflow.counters_sample.expanded_source_id_index", "0"))),
                        tuple(r.format if not r.enterprise else f"{r.enterprise}:{r.format}" for r in s.records))
                       for s in ctr_s)
        if got_c != exp_c:
            problems.append(f"{where}: counter samples {got_c}, tshark {exp_c}")
        for s in ctr_s:
            seq = T.to_int(s.fields["sflow.counters_sample.sequence_number"])
            cands = [c for c in b.counters if c["SequenceNum"] == seq]
            for r in s.records:
                exp = {}
                if (r.enterprise, r.format) == (0, 1):
                    exp = {fk: T.to_int(r.fields[tk]) for tk, fk in T.SFLOW_IF_COUNTERS.items() if tk in r.fields}
                elif (r.enterprise, r.format) == (0, 2):
                    exp = {"D" + k.split(".", 1)[1][1:]: T.to_int(v) for k, v in r.fields.items()
                           if k.startswith("sflow_245.dot3Stats")}
                if exp and not any(not T.compare_expected(exp, c, required=set(exp)) for c in cands):
                    problems.append(f"{where}: counter record {r.format} of sample {seq}: "
                                    f"{T.compare_expected(exp, cands[0] if cands else {}, required=set(exp))}")
    return problems


@pytest.mark.parametrize("pcap", _apache_cases())
def test_corpus_apache(decoders_mod, pcap: Path | None) -> None:
    if pcap is None:
        pytest.skip("no generic_sflow_* captures in tests/data/corpus/sflow nor in the shared corpus")
    problems = check_capture(decoders_mod, pcap)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("pcap", _agpl_cases())
def test_corpus_agpl_shared(decoders_mod, pcap: Path | None) -> None:
    if pcap is None:
        pytest.skip(f"shared corpus not found at {SHARED}: the AGPL akvorado sFlow captures cannot ship "
                    "with flowscope and were NOT tested")
    problems = check_capture(decoders_mod, pcap)
    assert not problems, "\n".join(problems)


def test_corpus_prefixes_and_flips(decoders_mod) -> None:
    """Every prefix and random byte flips of every corpus datagram: typed errors, never a crash,
    and the next datagram still decodes."""
    from collector.pcap import iter_udp

    pcaps = [p.values[0] for p in _apache_cases() + _agpl_cases() if p.values[0] is not None]
    if not pcaps:
        pytest.skip("no sFlow captures found")
    rng = random.Random(5)
    dec = decoders_mod.Decoder()
    good = None
    for pcap in pcaps:
        for dg in iter_udp(pcap):
            data = dg.payload
            good = good or data
            variants = [data[:i] for i in range(len(data))]
            for _ in range(200):
                m = bytearray(data)
                for _ in range(rng.randint(1, 4)):
                    m[rng.randrange(len(m))] = rng.randrange(256)
                variants.append(bytes(m))
            for v in variants:
                b = dec.decode(v, "192.0.2.9", 6343, RECV)
                if b.error is not None:
                    assert b.error[0] in REASONS, b.error
                b.to_json()
    assert dec.decode(good, "192.0.2.9", 6343, RECV).error is None


# --------------------------------------------------------------------------------------------
# Datagram builders (sFlow v5 XDR, sflow.org/sflow_version_5.txt)


def xdr_opaque(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data + b"\0" * (-len(data) % 4)


def rec(fmt: int, data: bytes, ent: int = 0) -> bytes:
    return struct.pack(">I", ent << 12 | fmt) + xdr_opaque(data)


def raw_header(header: bytes, frame_len: int, proto: int = 1, stripped: int = 4) -> bytes:
    return rec(1, struct.pack(">III", proto, frame_len, stripped) + xdr_opaque(header))


def flow_sample(records: list[bytes], *, seq=7, src=(0, 3), rate=400, pool=4000, drops=0,
                inp=(0, 5), out=(0, 6)) -> bytes:
    body = struct.pack(">IIIIIIII", seq, src[0] << 24 | src[1], rate, pool, drops,
                       inp[0] << 30 | inp[1], out[0] << 30 | out[1], len(records)) + b"".join(records)
    return rec(1, body)


def flow_sample_expanded(records: list[bytes], *, seq=8, src=(0, 70000), rate=512, inp=(0, 70001),
                         out=(0, 70002)) -> bytes:
    body = struct.pack(">IIIIIIIIIII", seq, src[0], src[1], rate, 9999, 0, inp[0], inp[1], out[0], out[1],
                       len(records)) + b"".join(records)
    return rec(3, body)


def counter_sample(records: list[bytes], *, seq=11, src=(0, 5), expanded=False) -> bytes:
    if expanded:
        return rec(4, struct.pack(">IIII", seq, src[0], src[1], len(records)) + b"".join(records))
    return rec(2, struct.pack(">III", seq, src[0] << 24 | src[1], len(records)) + b"".join(records))


def datagram(samples: list[bytes], *, agent="198.51.100.7", seq=42, count=None, uptime=123456,
             sub_agent=0) -> bytes:
    a = ipaddress.ip_address(agent)
    head = struct.pack(">II", 5, 1 if a.version == 4 else 2) + a.packed
    head += struct.pack(">IIII", sub_agent, seq, uptime, len(samples) if count is None else count)
    return head + b"".join(samples)


MAC_A = bytes.fromhex("0a580a800005")
MAC_B = bytes.fromhex("0a580a800106")
MAC_C = bytes.fromhex("020000000001")
MAC_D = bytes.fromhex("020000000002")


def eth(payload: bytes, etype: int, dst=MAC_B, src=MAC_A, tags=()) -> bytes:
    out = dst + src
    for tpid, vid in tags:
        out += struct.pack(">HH", tpid, vid)
    return out + struct.pack(">H", etype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, tos=0, frag=0) -> bytes:
    h = struct.pack(">BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), 1, frag, 64, proto, 0,
                    ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return h + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes, tclass=0) -> bytes:
    first = 6 << 28 | tclass << 20
    return struct.pack(">IHBB", first, len(payload), nh, 64) + ipaddress.IPv6Address(src).packed + \
        ipaddress.IPv6Address(dst).packed + payload


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 2, 5 << 4, flags, 1000, 0, 0)


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def vxlan(vni: int, inner: bytes) -> bytes:
    return struct.pack(">II", 0x08000000, vni << 8) + inner


def geneve(vni: int, inner: bytes, ptype=0x6558, opts=b"") -> bytes:
    return struct.pack(">BBHI", len(opts) // 4, 0, ptype, vni << 8) + opts + inner


def mpls(labels: list[int], payload: bytes) -> bytes:
    out = b""
    for i, label in enumerate(labels):
        out += struct.pack(">I", label << 12 | (1 if i == len(labels) - 1 else 0) << 8 | 64)
    return out + payload


def sampled_ip(v6: bool, length: int, proto: int, src: str, dst: str, sport: int, dport: int,
               flags: int, tos: int) -> bytes:
    a = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    return struct.pack(">II", length, proto) + a + struct.pack(">IIII", sport, dport, flags, tos)


def one_flow(decoders_mod, records: list[bytes], **kw) -> dict:
    b = decode(decoders_mod, datagram([flow_sample(records, **kw)]))
    assert b.error is None, b.error
    assert len(b) == 1
    return b.to_dicts()[0]


# --------------------------------------------------------------------------------------------
# Built datagrams: flow samples


def test_compact_flow_sample_tcp_ipv4(decoders_mod) -> None:
    pkt = eth(ipv4("10.128.0.5", "10.128.1.6", 6, tcp(40000, 8080, 0x12), tos=0xB8), 0x0800)
    f = one_flow(decoders_mod, [raw_header(pkt, 1514)], rate=400, inp=(0, 5), out=(0, 6))
    assert f["AgentIP"] == "198.51.100.7"     # the sFlow agent, not the UDP source
    assert f["FlowProtocol"] == "sflow5" and f["SequenceNum"] == 42
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"]) == \
        ("10.128.0.5", "10.128.1.6", 6, 40000, 8080)
    assert f["Etype"] == 0x0800 and f["Dscp"] == 0xB8 >> 2
    assert f["TcpFlagsRaw"] == 0x12 and set(f["Flags"]) == {"SYN", "ACK"}
    assert (f["SrcMac"], f["DstMac"]) == ("0a:58:0a:80:00:05", "0a:58:0a:80:01:06")
    assert (f["Bytes"], f["Packets"], f["Sampling"], f["InIf"], f["OutIf"]) == (1514, 1, 400, 5, 6)
    assert f["TimeFlowStartMs"] == f["TimeFlowEndMs"] == int(RECV * 1000)
    assert "FlowDirection" not in f


def test_interface_formats(decoders_mod) -> None:
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    f = one_flow(decoders_mod, [raw_header(pkt, 60)], inp=(0, 3), out=(1, 258))   # discarded: ACL
    assert f["InIf"] == 3 and "OutIf" not in f
    assert (f["PktDropPackets"], f["PktDropBytes"], f["PktDropLatestDropCause"]) == (1, 60, "acl")
    assert (f["Packets"], f["Bytes"], f["Sampling"]) == (1, 60, 400)   # still the sampled packet
    tpkt = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, 0x14)), 0x0800)      # RST|ACK
    f = one_flow(decoders_mod, [raw_header(tpkt, 60)], inp=(0, 3), out=(1, 257))
    assert (f["PktDropLatestDropCause"], f["PktDropLatestFlags"]) == ("ttl_exceeded", 0x14)
    f = one_flow(decoders_mod, [raw_header(pkt, 60)], inp=(0, 3), out=(1, 0x3FFFFFFF))   # not listed
    assert f["PktDropLatestDropCause"] == str(0x3FFFFFFF)
    # 1 | 256, "unknown": what Open vSwitch sends for every packet sampled before its output is
    # known (all conntrack traffic, forwarded or not): no OutIf and no drop.
    for out in ((1, 256), (0, 6), (2, 7)):
        f = one_flow(decoders_mod, [raw_header(pkt, 60)], inp=(0, 3), out=out)
        assert not any(k.startswith("PktDrop") for k in f), out
    # Expanded samples carry the format in a word of its own.
    b = decode(decoders_mod, datagram([flow_sample_expanded([raw_header(pkt, 60)], out=(1, 258)),
                                       flow_sample_expanded([raw_header(pkt, 60)], out=(1, 256))]))
    acl, unknown = b.to_dicts()
    assert acl["PktDropLatestDropCause"] == "acl" and "OutIf" not in acl
    assert "PktDropPackets" not in unknown and "OutIf" not in unknown
    f = one_flow(decoders_mod, [raw_header(pkt, 60)], inp=(0, 3), out=(2, 7))     # multiple
    assert "OutIf" not in f
    f = one_flow(decoders_mod, [raw_header(pkt, 60)], inp=(0, 3), out=(0, 0x3FFFFFFF))  # internal
    assert "OutIf" not in f and f["OutIfInternal"] is True   # (tests/test_httpsflow_review.py)
    # interface 0: "not known" (sflow_version_5.txt), no interface (review helper-85: InIf 0)
    f = one_flow(decoders_mod, [raw_header(pkt, 60)], inp=(0, 0), out=(0, 0))
    assert "InIf" not in f and "OutIf" not in f
    f = decode(decoders_mod, datagram([flow_sample_expanded([raw_header(pkt, 60)], inp=(0, 0), out=(0, 0))])).to_dicts()[0]
    assert "InIf" not in f and "OutIf" not in f


def test_expanded_flow_sample(decoders_mod) -> None:
    pkt = eth(ipv6("2001:db8::1", "2001:db8::2", 17, udp(5353, 53)), 0x86DD)
    b = decode(decoders_mod, datagram([flow_sample_expanded([raw_header(pkt, 90)], rate=512,
                                                            inp=(0, 70001), out=(0, 70002))],
                                      agent="2001:db8::77"))
    assert b.error is None
    f = b.to_dicts()[0]
    assert f["AgentIP"] == "2001:db8::77"
    assert (f["Sampling"], f["InIf"], f["OutIf"], f["Bytes"]) == (512, 70001, 70002, 90)
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"], f["Etype"]) == \
        ("2001:db8::1", "2001:db8::2", 17, 5353, 53, 0x86DD)


def test_vxlan_inner_headers(decoders_mod) -> None:
    inner = eth(ipv4("10.244.1.5", "10.244.2.9", 6, tcp(33000, 443, 0x18), tos=0x20), 0x0800, dst=MAC_D, src=MAC_C)
    outer = eth(ipv4("172.18.0.2", "172.18.0.3", 17, udp(51000, 4789, vxlan(4097, inner))), 0x0800)
    f = one_flow(decoders_mod, [raw_header(outer, 1400)])
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"]) == \
        ("10.244.1.5", "10.244.2.9", 6, 33000, 443)
    assert f["Dscp"] == 0x20 >> 2 and f["TcpFlagsRaw"] == 0x18 and f["Etype"] == 0x0800
    assert (f["SrcMac"], f["DstMac"]) == ("02:00:00:00:00:01", "02:00:00:00:00:02")
    assert (f["TunnelType"], f["TunnelId"]) == ("vxlan", 4097)
    assert (f["TunnelSrcAddr"], f["TunnelDstAddr"], f["TunnelProto"]) == ("172.18.0.2", "172.18.0.3", 17)
    assert (f["TunnelSrcPort"], f["TunnelDstPort"]) == (51000, 4789)
    assert f["Bytes"] == 1400


def test_geneve_inner_headers_ipv6_outer_with_options(decoders_mod) -> None:
    inner = eth(ipv6("fd00:10:244::5", "fd00:10:244::9", 17, udp(1000, 2000), tclass=0x28), 0x86DD,
                dst=MAC_D, src=MAC_C)
    opts = struct.pack(">HBB", 0x0102, 0x80, 1) + b"\x00\x00\x00\x07"   # one 8-byte option (OVN's)
    outer = eth(ipv6("fd00::2", "fd00::3", 17, udp(61000, 6081, geneve(0x123456, inner, opts=opts))), 0x86DD)
    f = one_flow(decoders_mod, [raw_header(outer, 200)])
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"]) == \
        ("fd00:10:244::5", "fd00:10:244::9", 17, 1000, 2000)
    assert f["Dscp"] == 0x28 >> 2 and f["Etype"] == 0x86DD
    assert (f["TunnelType"], f["TunnelId"]) == ("geneve", 0x123456)
    assert (f["TunnelSrcAddr"], f["TunnelDstAddr"], f["TunnelSrcPort"], f["TunnelDstPort"]) == \
        ("fd00::2", "fd00::3", 61000, 6081)


def test_geneve_ip_payload(decoders_mod) -> None:
    inner = ipv4("192.168.0.1", "192.168.0.2", 1, struct.pack(">BBH", 8, 0, 0))
    outer = eth(ipv4("172.18.0.2", "172.18.0.3", 17, udp(1, 6081, geneve(9, inner, ptype=0x0800))), 0x0800)
    f = one_flow(decoders_mod, [raw_header(outer, 100)])
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["IcmpType"], f["IcmpCode"]) == \
        ("192.168.0.1", "192.168.0.2", 1, 8, 0)
    assert f["TunnelId"] == 9


def test_qinq(decoders_mod) -> None:
    pkt = eth(ipv4("10.1.1.1", "10.2.2.2", 6, tcp(1234, 80, 0x02)), 0x0800,
              tags=[(0x88A8, 100), (0x8100, 0x2000 | 200)])
    f = one_flow(decoders_mod, [raw_header(pkt, 80)])
    assert f["Vlan"] == 100 and f["Etype"] == 0x0800
    assert (f["SrcAddr"], f["DstPort"], f["Flags"]) == ("10.1.1.1", 80, ["SYN"])
    pkt = eth(ipv4("10.1.1.1", "10.2.2.2", 17, udp(1, 2)), 0x0800, tags=[(0x9100, 7), (0x8100, 8)])
    assert one_flow(decoders_mod, [raw_header(pkt, 80)])["Vlan"] == 7


def test_mpls(decoders_mod) -> None:
    pkt = eth(mpls([16, 17, 18], ipv4("10.9.9.9", "10.8.8.8", 17, udp(4000, 53))), 0x8847)
    f = one_flow(decoders_mod, [raw_header(pkt, 120)])
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"], f["Etype"]) == \
        ("10.9.9.9", "10.8.8.8", 17, 4000, 53, 0x0800)
    pkt = eth(mpls([24], ipv6("2001:db8::a", "2001:db8::b", 6, tcp(1, 2, 0x01))), 0x8848)
    f = one_flow(decoders_mod, [raw_header(pkt, 120)])
    assert (f["SrcAddr"], f["Etype"], f["TcpFlagsRaw"]) == ("2001:db8::a", 0x86DD, 1)


def test_icmpv6_and_extension_headers(decoders_mod) -> None:
    pkt = eth(ipv6("fe80::1", "ff02::1", 58, struct.pack(">BBH", 135, 0, 0)), 0x86DD)
    f = one_flow(decoders_mod, [raw_header(pkt, 86)])
    assert (f["Proto"], f["IcmpType"], f["IcmpCode"]) == (58, 135, 0)
    hbh = struct.pack(">BB", 60, 0) + b"\x01\x04\0\0\0\0"              # hop-by-hop -> dest opts
    dst = struct.pack(">BB", 6, 1) + b"\x01\x0c" + b"\0" * 12           # dest opts (16 bytes) -> TCP
    pkt = eth(ipv6("2001:db8::1", "2001:db8::2", 0, hbh + dst + tcp(22, 50000, 0x10)), 0x86DD)
    f = one_flow(decoders_mod, [raw_header(pkt, 100)])
    assert (f["Proto"], f["SrcPort"], f["DstPort"]) == (6, 22, 50000)
    # a header cut inside an extension header (OVS sFlow header=60: an MLD report behind a
    # hop-by-hop header) still names the protocol in its first byte, without ports or ICMP type
    mld = eth(ipv6("::", "ff02::16", 0, struct.pack(">BB", 58, 0) + b"\x05\x02\0\0\x01\0"
                   + struct.pack(">BBH", 143, 0, 0) + b"\0" * 24), 0x86DD)
    for cut in (60, 55):
        f = one_flow(decoders_mod, [raw_header(mld[:cut], 90)])
        assert (f["DstAddr"], f["Proto"], "IcmpType" in f, "SrcPort" in f) == ("ff02::16", 58, False, False), cut
    f = one_flow(decoders_mod, [raw_header(mld[:54], 90)])     # nothing after the IPv6 header
    assert f["Proto"] == 0


def test_ipv4_fragments_and_raw_ip_headers(decoders_mod) -> None:
    later = ipv4("10.0.0.1", "10.0.0.2", 17, udp(1111, 2222), frag=185)   # offset != 0: no L4
    f = one_flow(decoders_mod, [raw_header(eth(later, 0x0800), 1500)])
    assert f["Proto"] == 17 and "SrcPort" not in f
    f = one_flow(decoders_mod, [raw_header(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1111, 2222)), 60, proto=11)])
    assert (f["SrcAddr"], f["SrcPort"], f["DstPort"]) == ("10.0.0.1", 1111, 2222)
    f = one_flow(decoders_mod, [raw_header(ipv6("::1", "::2", 17, udp(3, 4)), 60, proto=12)])
    assert (f["DstAddr"], f["DstPort"]) == ("::2", 4)


def test_cut_header_keeps_what_it_has(decoders_mod) -> None:
    full = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, 0x02)), 0x0800)
    f = one_flow(decoders_mod, [raw_header(full[:14 + 20 + 2], 1000)])   # ends inside the TCP ports
    assert f["SrcAddr"] == "10.0.0.1" and f["Proto"] == 6 and "SrcPort" not in f and f["Bytes"] == 1000


def test_sampled_ipv4_ipv6_ethernet_records(decoders_mod) -> None:
    r4 = rec(3, sampled_ip(False, 576, 6, "192.0.2.10", "192.0.2.20", 1025, 25, 0x11, 0x48))
    f = one_flow(decoders_mod, [r4])
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"]) == \
        ("192.0.2.10", "192.0.2.20", 6, 1025, 25)
    assert (f["Bytes"], f["TcpFlagsRaw"], f["Dscp"], f["Etype"]) == (576, 0x11, 0x48 >> 2, 0x0800)
    r6 = rec(4, sampled_ip(True, 1280, 17, "2001:db8::5", "2001:db8::6", 7, 8, 0, 0x20))
    f = one_flow(decoders_mod, [r6])
    assert (f["SrcAddr"], f["Bytes"], f["Dscp"], f["Etype"], f["DstPort"]) == \
        ("2001:db8::5", 1280, 8, 0x86DD, 8)
    re = rec(2, struct.pack(">I", 64) + MAC_A + b"\0\0" + MAC_B + b"\0\0" + struct.pack(">I", 0x0806))
    f = one_flow(decoders_mod, [re])
    assert (f["SrcMac"], f["DstMac"], f["Etype"], f["Bytes"]) == ("0a:58:0a:80:00:05", "0a:58:0a:80:01:06", 0x0806, 64)


def test_sampled_ipv4_ipv6_icmp_and_portless_protocols(decoders_mod) -> None:
    """sampled_ipv4/ipv6 carry "src_port, dst_port: TCP/UDP port or equivalent": ports only for
    TCP, UDP and SCTP, as from a raw header; ICMP's type and code from the two fields (or, from
    agents that leave src_port 0, from dst_port alone, NetFlow's type << 8 | code above 255)."""
    def ports_icmp(v6: bool, proto: int, sport: int, dport: int) -> tuple:
        src, dst = ("2001:db8::5", "2001:db8::6") if v6 else ("192.0.2.10", "192.0.2.20")
        f = one_flow(decoders_mod, [rec(4 if v6 else 3, sampled_ip(v6, 84, proto, src, dst, sport, dport, 0, 0))])
        return f["Proto"], f.get("SrcPort"), f.get("DstPort"), f.get("IcmpType"), f.get("IcmpCode")

    assert ports_icmp(False, 1, 8, 0) == (1, None, None, 8, 0)           # echo request
    assert ports_icmp(False, 1, 3, 13) == (1, None, None, 3, 13)         # administratively prohibited
    assert ports_icmp(True, 58, 128, 0) == (58, None, None, 128, 0)
    assert ports_icmp(False, 1, 0, 11) == (1, None, None, 11, 0)         # the type in dst_port
    assert ports_icmp(False, 1, 0, 0x0301) == (1, None, None, 3, 1)      # type << 8 | code
    assert ports_icmp(False, 1, 0, 0) == (1, None, None, 0, 0)           # echo reply
    assert ports_icmp(True, 58, 0, 0) == (58, None, None, None, None)    # ICMPv6 type 0 is reserved
    assert ports_icmp(False, 47, 0, 0) == (47, None, None, None, None)   # GRE: no ports
    assert ports_icmp(False, 132, 36412, 36412) == (132, 36412, 36412, None, None)
    assert ports_icmp(True, 17, 53, 5353) == (17, 53, 5353, None, None)


def test_bytes_beyond_the_declared_counts_are_counted(decoders_mod) -> None:
    """The header's sample count is what the agent declared (as Wireshark reads it): samples
    beyond it are not decoded, and not passed over silently either: counted as bad_count on the
    exporter. Bytes after a sample's declared records are not an error: sflow_version_5.txt
    ("Data Format") lets any structure be extended at its end, and receivers skip by length."""
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    one = flow_sample([raw_header(pkt, 60)])
    switch = rec(1001, struct.pack(">IIII", 300, 0, 301, 0))
    two_records_count_one = rec(1, struct.pack(">IIIIIIII", 7, 3, 400, 4000, 0, 5, 6, 1) + raw_header(pkt, 60) + switch)
    extended = rec(1, struct.pack(">IIIIIIII", 7, 3, 400, 4000, 0, 5, 6, 1) + raw_header(pkt, 60) + b"\0" * 8)
    for data, errors in ((datagram([one, one, one], count=1), {"bad_count": 1}),
                         (datagram([two_records_count_one]), {}), (datagram([extended]), {})):
        dec = decoders_mod.Decoder()
        b = dec.decode(data, "192.0.2.1", 6343, RECV)
        assert b.error is None and len(b) == 1
        assert "Vlan" not in b.to_dicts()[0]        # the record beyond the count is not read
        assert dec.stats()["192.0.2.1"]["errors"] == errors
    dec = decoders_mod.Decoder()
    dec.decode(datagram([one, one], count=2), "192.0.2.1", 6343, RECV)
    assert dec.stats()["192.0.2.1"]["errors"] == {}


def test_sequence_per_agent_behind_one_relay_and_restarts_by_uptime(decoders_mod) -> None:
    """sFlow numbers datagrams per sub-agent within an agent: two agents forwarded by one relay
    (one source address and port) are two streams, told apart by the agent address in the
    datagram. An agent whose uptime went back restarted: its sequence number starting over is
    a reset and the loss after it is counted; a datagram a little late is neither."""
    dec = decoders_mod.Decoder()
    sample = [flow_sample([raw_header(eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800), 60)])]

    def send(agent: str, seq: int, uptime: int, sub_agent: int = 0) -> None:
        b = dec.decode(datagram(sample, agent=agent, seq=seq, uptime=uptime, sub_agent=sub_agent),
                       "10.9.9.9", 50000, RECV)
        assert b.error is None

    def seq_stats() -> tuple[int, int]:
        p = dec.stats()["10.9.9.9"]["protocols"]["sflow5"]
        return p["sequence_lost"], p["sequence_resets"]

    for i in range(1, 200):
        send("192.0.2.1", i, 1000 * i)
        send("192.0.2.2", 5_000_000 + i, 9_000_000 + 1000 * i)
        send("2001:db8::1", 70 + i, 1000 * i)
        send("2001:db8::2", 9_000 + i, 1000 * i)
    assert seq_stats() == (0, 0)
    send("192.0.2.1", 197, 197_000)                 # late (reordered)
    send("192.0.2.1", 200, 200_000)
    assert seq_stats() == (0, 0)
    send("192.0.2.1", 1, 900)                       # rebooted: uptime and sequence start over
    for i in (2, 3, 6):
        send("192.0.2.1", i, 900 + 1000 * i)
    assert seq_stats() == (2, 1)
    send("192.0.2.1", 7, 0xFFFFFFF0)                # uptime far ahead: no restart, nothing lost
    send("192.0.2.1", 9, 100)                       # the 32-bit uptime wrapped (and 8 is late)
    send("192.0.2.1", 8, 0xFFFFFFF8)                # late, from before the wrap: it fills the gap
    send("192.0.2.1", 10, 1100, sub_agent=1)        # another sub-agent: its own stream
    assert seq_stats() == (2, 1)                    # neither a loss nor a restart


def sequence_run(decoders_mod, sends: list[tuple[int, int, float]]) -> tuple[int, int]:
    """One agent's datagrams (sequence, uptime ms, receive time s after RECV), a flow sample each,
    through one decoder from one source port: (sequence_lost, sequence_resets) once every gap
    has had its time to fill."""
    sample = [flow_sample([raw_header(eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800), 60)])]
    dec = decoders_mod.Decoder()
    for seq, up, t in sends:
        b = dec.decode(datagram(sample, agent="192.0.2.1", seq=seq, uptime=up), "10.9.9.9", 50000, RECV + t)
        assert b.error is None
    p = dec.stats(RECV + 900)["10.9.9.9"]["protocols"]["sflow5"]
    return p["sequence_lost"], p["sequence_resets"]


def test_agent_restarted_on_the_same_port_within_a_minute_of_its_start(decoders_mod) -> None:
    """An agent whose uptime counts from its own start (the sFlow agent library's bootTime: Open
    vSwitch, hsflowd, pmacct) restarting within a minute of that start goes back less than the
    minute that tells a restart by its uptime, and its new sequence first looks like late
    datagrams. sflow_version_5.txt numbers a sub-agent's datagrams one by one and reads the uptime
    at the send, so within one run a later number never has an earlier uptime: the new run's
    first datagram is numbered like the old run's first with another uptime, and its datagrams
    keep following each other for a second with none of the old run between them: a restart,
    its losses counted from then (its first second is not checked, as for IPFIX). Open vSwitch
    itself opens a new socket, a new source port, whenever it creates its agent anew (seen with
    3.1 on every sFlow reconfiguration): a relay that forwards agents from one port, or an agent
    with a fixed source port, keeps the stream. Copies of the old run's datagrams (their numbers
    and uptimes as they were) and a late datagram are neither; an agent whose datagrams are
    those of the old run number for number and uptime for uptime cannot be told from copies."""
    def run(sends: list[tuple[int, int, float]]) -> tuple[int, int]:
        return sequence_run(decoders_mod, sends)

    # a datagram every half second; the old run's first at uptime 7 s (its first counter poll)
    old = [(i, 7000 + 500 * (i - 1), 0.5 * (i - 1)) for i in range(1, 41)]        # 20 s
    new = [(j, 3000 + 500 * (j - 1), 22 + 0.5 * (j - 1)) for j in range(1, 21)]   # restarted 2 s later
    assert run(old) == (0, 0)
    assert run(old + new) == (0, 1)
    assert run(old + [x for x in new if x[0] != 12]) == (1, 1)      # the new run's 12 lost
    # the old run followed from its fifth datagram (uptime 9 s): the new run's first four are
    # numbered before it, its fifth after it and sent before it (5 s)
    assert run(old[4:] + new) == (0, 1)
    # an agent whose uptime is the device's (the spec's "since device last booted"): its
    # sequence alone starts over, the uptime goes on: sent after the old run's latest
    device = [(i, 1_000_000 + 500 * i, 0.5 * i) for i in range(1, 41)]
    again = [(j, 1_030_000 + 500 * j, 22 + 0.5 * j) for j in range(1, 21)]
    assert run(device + again) == (0, 1)
    assert run(device + [x for x in again if x[0] != 12]) == (1, 1)
    # the agent goes quiet; copies of its first ten datagrams come 3 s later over a slower path,
    # in sequence for 5 s: old datagrams, no restart
    assert run(old + [(seq, up, t + 22.5) for seq, up, t in old[:10]]) == (0, 0)
    # a reordered datagram, and one arriving after its gap was counted
    assert run(old[:20] + [old[22], old[20], old[21]] + old[23:]) == (0, 0)
    assert run(old[:20] + old[21:30] + [old[20]] + old[30:]) == (1, 0)
    # the new run's datagrams are the old run's, header for header: nothing tells them apart
    same = [(seq, up, t + 22) for seq, up, t in old[:20]]
    assert run(old + same) == (0, 0)


def test_extended_switch_router_gateway(decoders_mod) -> None:
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    sw = rec(1001, struct.pack(">IIII", 300, 0, 301, 0))
    rt = rec(1002, struct.pack(">I", 1) + bytes([10, 0, 0, 254]) + struct.pack(">II", 24, 16))
    path = struct.pack(">II", 2, 3) + struct.pack(">III", 64500, 64501, 64502)
    gw = rec(1003, struct.pack(">I", 2) + ipaddress.IPv6Address("2001:db8::fe").packed +
             struct.pack(">IIII", 65000, 64999, 64998, 1) + path + struct.pack(">II", 1, 0x12345678) +
             struct.pack(">I", 100))
    f = one_flow(decoders_mod, [raw_header(pkt, 60), sw, rt])
    assert (f["Vlan"], f["NextHop"], f["SrcPrefixLen"], f["DstPrefixLen"]) == (300, "10.0.0.254", 24, 16)
    f = one_flow(decoders_mod, [raw_header(pkt, 60), gw])
    assert (f["NextHop"], f["SrcAS"], f["DstAS"]) == ("2001:db8::fe", 64999, 64502)


def test_record_order_does_not_change_vlan_or_next_hop(decoders_mod) -> None:
    # The spec gives a sample's records no order (Open vSwitch sends 1001 before the header).
    # The sampled frame's own tag is its VLAN, over extended switch's src_vlan; a VID 0 tag is
    # 802.1p priority only (IEEE 802.1Q), so extended switch's VLAN stands.
    tagged = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800, tags=[(0x8100, 20)])
    prio = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800, tags=[(0x8100, 5 << 13 | 0)])
    sw = rec(1001, struct.pack(">IIII", 10, 0, 11, 0))
    for records in ([raw_header(tagged, 60), sw], [sw, raw_header(tagged, 60)]):
        assert one_flow(decoders_mod, records)["Vlan"] == 20
    for records in ([raw_header(prio, 60), sw], [sw, raw_header(prio, 60)]):
        assert one_flow(decoders_mod, records)["Vlan"] == 10
    assert "Vlan" not in one_flow(decoders_mod, [raw_header(prio, 60)])
    # A tag inside a VXLAN payload is the tenant frame's: extended switch's VLAN wins over it.
    inner = eth(ipv4("192.168.0.1", "192.168.0.2", 6, tcp(5, 6, 0x02)), 0x0800, tags=[(0x8100, 33)])
    outer = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(50000, 4789, vxlan(7, inner))), 0x0800)
    for records in ([raw_header(outer, 200), sw], [sw, raw_header(outer, 200)]):
        assert one_flow(decoders_mod, records)["Vlan"] == 10
    assert one_flow(decoders_mod, [raw_header(outer, 200)])["Vlan"] == 33
    # extended_router's next hop router over extended_gateway's BGP next hop, in either order;
    # the gateway's fills in when the router record has no address (type 0).
    rt = rec(1002, struct.pack(">I", 1) + bytes([10, 0, 0, 254]) + struct.pack(">II", 24, 16))
    rt0 = rec(1002, struct.pack(">III", 0, 24, 16))
    gw = rec(1003, struct.pack(">I", 1) + bytes([192, 0, 2, 1]) + struct.pack(">IIII", 65000, 64999, 64998, 0) +
             struct.pack(">II", 0, 100))
    for records in ([rt, gw], [gw, rt]):
        assert one_flow(decoders_mod, [raw_header(tagged, 60)] + records)["NextHop"] == "10.0.0.254"
    for records in ([rt0, gw], [gw, rt0]):
        assert one_flow(decoders_mod, [raw_header(tagged, 60)] + records)["NextHop"] == "192.0.2.1"


def test_unspecified_next_hop_is_no_next_hop(decoders_mod) -> None:
    """extended_router / extended_gateway with next hop 0.0.0.0 or :: (a local or dropped
    packet): no NextHop, as NetFlow v5 and v9/IPFIX omit it (DESIGN.md: fields with no value
    are omitted); a zero router next hop leaves the place to the gateway's."""
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    rt_zero = rec(1002, struct.pack(">I", 1) + bytes(4) + struct.pack(">II", 24, 16))
    rt6_zero = rec(1002, struct.pack(">I", 2) + bytes(16) + struct.pack(">II", 64, 64))
    gw_zero = rec(1003, struct.pack(">I", 1) + bytes(4) + struct.pack(">IIII", 65000, 64999, 64998, 0) +
                  struct.pack(">II", 0, 100))
    gw = rec(1003, struct.pack(">I", 1) + bytes([192, 0, 2, 1]) + struct.pack(">IIII", 65000, 64999, 64998, 0) +
             struct.pack(">II", 0, 100))
    for records in ([rt_zero], [rt6_zero], [gw_zero], [rt_zero, gw_zero]):
        f = one_flow(decoders_mod, [raw_header(pkt, 60)] + records)
        assert "NextHop" not in f, records
    f = one_flow(decoders_mod, [raw_header(pkt, 60), rt_zero])
    assert (f["SrcPrefixLen"], f["DstPrefixLen"]) == (24, 16)
    for records in ([rt_zero, gw], [gw, rt_zero]):
        assert one_flow(decoders_mod, [raw_header(pkt, 60)] + records)["NextHop"] == "192.0.2.1"


def llc_snap(etype: int, payload: bytes) -> bytes:
    return bytes([0xAA, 0xAA, 0x03, 0, 0, 0]) + struct.pack(">H", etype) + payload


def ieee8023(payload: bytes) -> bytes:
    return MAC_B + MAC_A + struct.pack(">H", len(payload)) + payload


def test_8023_length_frames(decoders_mod) -> None:
    # IEEE 802.3: a type/length value below 0x0600 is a length. STP (LLC 42-42-03) has no
    # EtherType; RFC 1042 SNAP carries one, and the IP packet after it is parsed.
    stp = ieee8023(bytes([0x42, 0x42, 0x03]) + b"\0" * 35)
    f = one_flow(decoders_mod, [raw_header(stp, 64)])
    assert "Etype" not in f and "SrcAddr" not in f and f["SrcMac"] == "0a:58:0a:80:00:05"
    snap = ieee8023(llc_snap(0x0800, ipv4("10.0.0.1", "10.0.0.2", 17, udp(7, 8))))
    f = one_flow(decoders_mod, [raw_header(snap, 64)])
    assert (f["Etype"], f["SrcAddr"], f["DstAddr"], f["SrcPort"], f["DstPort"]) == (0x0800, "10.0.0.1", "10.0.0.2", 7, 8)
    # sampled_ethernet (record 2) reporting an 802.3 frame's length in its type field
    re = rec(2, struct.pack(">I", 64) + MAC_A + b"\0\0" + MAC_B + b"\0\0" + struct.pack(">I", 38))
    assert "Etype" not in one_flow(decoders_mod, [re])


def wlan_data(ds: int, a1: bytes, a2: bytes, a3: bytes, a4: bytes = b"", qos: bool = False,
              protected: bool = False) -> bytes:
    """An IEEE 802.11 data frame header (802.11-2020 9.3.2.1) followed by LLC/SNAP."""
    fc0 = 2 << 2 | (0x80 if qos else 0)                 # type data, subtype 0 or 8 (QoS data)
    fc1 = ds | (0x40 if protected else 0)
    h = bytes([fc0, fc1]) + b"\0\0" + a1 + a2 + a3 + b"\0\0" + a4
    return h + (b"\x05\x00" if qos else b"")


@pytest.mark.parametrize("ds", [0, 1, 2, 3])
def test_header_protocol_80211(decoders_mod, ds: int) -> None:
    sa, da, bssid, ra = MAC_A, MAC_B, MAC_C, MAC_D
    addrs = {0: (da, sa, bssid, b""), 1: (bssid, sa, da, b""), 2: (da, bssid, sa, b""),
             3: (ra, bssid, da, sa)}[ds]
    body = llc_snap(0x0800, ipv4("10.3.0.1", "10.3.0.2", 17, udp(67, 68)))
    for qos in (False, True):
        f = one_flow(decoders_mod, [raw_header(wlan_data(ds, *addrs, qos=qos) + body, 300, proto=15)])
        assert (f["SrcMac"], f["DstMac"]) == (sa.hex(":"), da.hex(":"))
        assert (f["Etype"], f["SrcAddr"], f["DstAddr"], f["SrcPort"], f["DstPort"]) == \
            (0x0800, "10.3.0.1", "10.3.0.2", 67, 68)
    f = one_flow(decoders_mod, [raw_header(wlan_data(ds, *addrs, protected=True) + body, 300, proto=15)])
    assert "SrcAddr" not in f       # an encrypted payload is not parsed


def test_header_protocols_ppp_and_mpls(decoders_mod) -> None:
    ip = ipv4("10.1.0.1", "10.1.0.2", 6, tcp(1111, 80, 0x18))
    for ppp in (b"\xff\x03\x00\x21", b"\x00\x21", b"\x21"):   # RFC 1662 framing, none, PFC
        f = one_flow(decoders_mod, [raw_header(ppp + ip, 100, proto=7)])
        assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"]) == \
            ("10.1.0.1", "10.1.0.2", 6, 1111, 80)
    f = one_flow(decoders_mod, [raw_header(b"\xff\x03\x00\x57" + ipv6("2001:db8::1", "2001:db8::2", 17, udp(1, 2)),
                                           100, proto=7)])
    assert (f["SrcAddr"], f["Etype"]) == ("2001:db8::1", 0x86DD)
    f = one_flow(decoders_mod, [raw_header(mpls([100, 200], ipv4("10.2.0.1", "10.2.0.2", 17, udp(53, 5353))),
                                           100, proto=13)])
    assert (f["SrcAddr"], f["DstAddr"], f["SrcPort"], f["DstPort"], f["Etype"]) == \
        ("10.2.0.1", "10.2.0.2", 53, 5353, 0x0800)


def gre(ptype: int, payload: bytes, key: int | None = None, csum: bool = False, seq: int | None = None,
        flags: int = 0) -> bytes:
    """A GRE header (RFC 2784; key and sequence number from RFC 2890) in front of payload; `flags`
    adds other bits (the version field: 1 is PPTP's enhanced GRE)."""
    flags |= (0x8000 if csum else 0) | (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0)
    out = struct.pack(">HH", flags, ptype)
    if csum:
        out += b"\0" * 4
    if key is not None:
        out += struct.pack(">I", key)
    if seq is not None:
        out += struct.pack(">I", seq)
    return out + payload


def test_tunnels_gre_ipip_and_linux_vxlan(decoders_mod) -> None:
    """The inner packet is the flow, the outer header the tunnel's: VXLAN on the Linux kernel's
    port 8472 (Flannel, Cilium) as on 4789; GRE (RFC 2784/2890, with checksum, key and sequence
    words; NVGRE's Ethernet payload, RFC 7637), its key the TunnelId; IP in IP (RFC 2003, Calico)
    and IPv6 in IPv4 (RFC 4213). A GRE payload that is not IP or Ethernet (ERSPAN) leaves the
    outer header the flow's."""
    inner = ipv4("10.244.1.5", "10.244.2.9", 6, tcp(33000, 443, 0x18))
    inner_eth = eth(inner, 0x0800, dst=MAC_D, src=MAC_C)
    inner6 = ipv6("fd00:10:244::5", "fd00:10:244::9", 17, udp(1000, 2000))

    def keys(f: dict) -> tuple:
        return (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("SrcPort"), f.get("DstPort"))

    f = one_flow(decoders_mod, [raw_header(eth(ipv4("172.18.0.2", "172.18.0.3", 17,
                                                     udp(40000, 8472, vxlan(1, inner_eth))), 0x0800), 200)])
    assert keys(f) == ("10.244.1.5", "10.244.2.9", 6, 33000, 443)
    assert (f["TunnelType"], f["TunnelId"], f["TunnelDstPort"], f["SrcMac"]) == ("vxlan", 1, 8472, "02:00:00:00:00:01")
    for payload, ptype, key in ((inner, 0x0800, None), (inner_eth, 0x6558, 0x00123401), (inner6, 0x86DD, 7)):
        outer = eth(ipv4("172.18.0.2", "172.18.0.3", 47, gre(ptype, payload, key=key, csum=True, seq=5)), 0x0800)
        f = one_flow(decoders_mod, [raw_header(outer, 300)])
        assert keys(f) == (("fd00:10:244::5", "fd00:10:244::9", 17, 1000, 2000) if ptype == 0x86DD else
                           ("10.244.1.5", "10.244.2.9", 6, 33000, 443)), ptype
        assert (f["TunnelType"], f.get("TunnelId"), f["TunnelSrcAddr"], f["TunnelDstAddr"], f["TunnelProto"]) == \
            ("gre", key, "172.18.0.2", "172.18.0.3", 47)
        assert "TunnelSrcPort" not in f and "TunnelDstPort" not in f
        assert f["SrcMac"] == ("02:00:00:00:00:01" if ptype == 0x6558 else "0a:58:0a:80:00:05")
    arp = eth(b"\0\x01\x08\x00\x06\x04\0\x01" + b"\0" * 20, 0x0806, dst=b"\xff" * 6, src=MAC_C)
    f = one_flow(decoders_mod, [raw_header(eth(ipv4("172.18.0.2", "172.18.0.3", 47, gre(0x6558, arp, key=0x500)),
                                               0x0800), 300)])
    assert (f["TunnelType"], f["TunnelId"], f["Etype"], f["SrcMac"], "SrcAddr" in f) == (
        "gre", 0x500, 0x0806, "02:00:00:00:00:01", False)   # any Ethernet frame in NVGRE is the flow
    erspan = eth(ipv4("172.18.0.2", "172.18.0.3", 47, gre(0x88BE, b"\0" * 8 + inner_eth, seq=1)), 0x0800)
    f = one_flow(decoders_mod, [raw_header(erspan, 300)])
    assert (f["SrcAddr"], f["Proto"], "TunnelType" in f) == ("172.18.0.2", 47, False)
    for outer, want in ((ipv4("192.168.1.10", "192.168.1.11", 4, inner), ("10.244.1.5", "10.244.2.9", 6, 33000, 443)),
                        (ipv4("192.168.1.10", "192.168.1.11", 41, inner6),
                         ("fd00:10:244::5", "fd00:10:244::9", 17, 1000, 2000))):
        f = one_flow(decoders_mod, [raw_header(eth(outer, 0x0800), 300)])
        assert keys(f) == want
        assert (f["TunnelType"], f["TunnelSrcAddr"], f["TunnelDstAddr"], f["TunnelProto"]) == \
            ("ipip", "192.168.1.10", "192.168.1.11", outer[9])
        assert "TunnelId" not in f and "TunnelDstPort" not in f
    # a header cut right after the tunnel's: the outer packet stays the flow
    for outer in (ipv4("192.168.1.10", "192.168.1.11", 4, inner[:12]),
                  ipv4("192.168.1.10", "192.168.1.11", 47, gre(0x0800, inner[:12]))):
        f = one_flow(decoders_mod, [raw_header(eth(outer, 0x0800), 300)])
        assert (f["SrcAddr"], f["DstAddr"], f["Proto"], "TunnelType" in f) == ("192.168.1.10", "192.168.1.11",
                                                                              outer[9], False)


def test_pppoe_pseudowire_and_pos(decoders_mod) -> None:
    """PPPoE session frames (RFC 2516: EtherType 0x8864, then PPP), an Ethernet pseudowire over
    MPLS with its control word (RFC 4385/4448: the customer's frame is the flow) and Packet over
    SONET (header_protocol 14, RFC 1662 framing as PPP) give the IP packet they carry."""
    ip = ipv4("100.64.0.9", "198.51.100.1", 6, tcp(50000, 443, 0x02))
    pppoe = struct.pack(">BBHH", 0x11, 0, 0x1234, 2 + len(ip)) + b"\x00\x21" + ip
    f = one_flow(decoders_mod, [raw_header(eth(pppoe, 0x8864), 100)])
    assert (f["SrcAddr"], f["DstAddr"], f["DstPort"], f["Etype"], f["SrcMac"]) == \
        ("100.64.0.9", "198.51.100.1", 443, 0x0800, "0a:58:0a:80:00:05")
    ip6 = ipv6("2001:db8::1", "2001:db8::2", 17, udp(1, 2))
    pppoe6 = struct.pack(">BBHH", 0x11, 0, 1, 2 + len(ip6)) + b"\x00\x57" + ip6
    assert one_flow(decoders_mod, [raw_header(eth(pppoe6, 0x8864), 100)])["SrcAddr"] == "2001:db8::1"
    discovery = struct.pack(">BBHH", 0x11, 0x09, 0, 0)    # PADI: no session, nothing to read
    assert "SrcAddr" not in one_flow(decoders_mod, [raw_header(eth(discovery, 0x8863), 60)])
    pw = eth(mpls([300, 16001], b"\0\0\0\0" + eth(ip, 0x0800, dst=MAC_D, src=MAC_C)), 0x8847)
    f = one_flow(decoders_mod, [raw_header(pw, 120)])
    assert (f["SrcAddr"], f["DstPort"], f["SrcMac"], f["DstMac"]) == \
        ("100.64.0.9", 443, "02:00:00:00:00:01", "02:00:00:00:00:02")
    cust = eth(ip, 0x0800, dst=bytes.fromhex("0050560000aa"), src=bytes.fromhex("001b21000011"))
    f = one_flow(decoders_mod, [raw_header(eth(mpls([300], cust), 0x8847), 120)])   # no control word
    assert (f["SrcAddr"], f["SrcMac"], f["DstMac"]) == ("100.64.0.9", "00:1b:21:00:00:11", "00:50:56:00:00:aa")
    arp = eth(b"\0\x01\x08\x00\x06\x04\0\x01" + b"\0" * 20, 0x0806, dst=b"\xff" * 6, src=MAC_C)
    f = one_flow(decoders_mod, [raw_header(eth(mpls([300], b"\0\0\0\0" + arp), 0x8847), 120)])  # CW + ARP
    assert (f["Etype"], f["SrcMac"], f["DstMac"]) == (0x0806, "02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff")
    f = one_flow(decoders_mod, [raw_header(eth(mpls([300], b"\0" * 10), 0x8847), 60)])  # nothing to tell
    assert (f["SrcMac"], f["Etype"], "SrcAddr" in f) == ("0a:58:0a:80:00:05", 0x8847, False)
    f = one_flow(decoders_mod, [raw_header(b"\xff\x03\x00\x21" + ip, 100, proto=14)])
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"]) == ("100.64.0.9", "198.51.100.1", 6)


def test_bytes_and_headers_do_not_depend_on_record_order(decoders_mod) -> None:
    """Bytes is the frame's length: a sampled header's frame_length, else sampled_ethernet's,
    else the IP length of sampled_ipv4/ipv6, whatever the records' order. A second sampled
    header in one sample is kept as it came, not mixed into the first."""
    e = rec(2, struct.pack(">I", 1518) + MAC_A + b"\0\0" + MAC_B + b"\0\0" + struct.pack(">I", 0x0800))
    ip = rec(3, sampled_ip(False, 1500, 6, "10.0.0.1", "10.0.0.2", 1, 2, 0x10, 0))
    hdr = raw_header(eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, 0x10)), 0x0800), 1522)
    for records, want in (([e, ip], 1518), ([ip, e], 1518), ([ip], 1500), ([ip, e, hdr], 1522), ([hdr, ip, e], 1522)):
        assert one_flow(decoders_mod, records)["Bytes"] == want, records
    arp = raw_header(eth(b"\0" * 28, 0x0806), 60)
    f = one_flow(decoders_mod, [hdr, arp])
    assert (f["Etype"], f["SrcPort"], f["Bytes"]) == (0x0800, 1, 1522)
    assert "ie1" in f


def test_ovs_tunnel_records(decoders_mod) -> None:
    """Open vSwitch: 1023 extended_ipv4_tunnel_egress + 1029 extended_vni_egress (sflow_tunnels.txt)."""
    pkt = eth(ipv4("10.244.0.5", "10.244.1.7", 6, tcp(45000, 80, 0x10)), 0x0800)
    t4 = rec(1023, sampled_ip(False, 0, 17, "172.18.0.2", "172.18.0.4", 55555, 6081, 0, 0))
    vni = rec(1029, struct.pack(">I", 7))
    f = one_flow(decoders_mod, [raw_header(pkt, 66), t4, vni])
    assert (f["SrcAddr"], f["DstAddr"], f["DstPort"]) == ("10.244.0.5", "10.244.1.7", 80)
    assert (f["TunnelSrcAddr"], f["TunnelDstAddr"], f["TunnelProto"]) == ("172.18.0.2", "172.18.0.4", 17)
    assert (f["TunnelSrcPort"], f["TunnelDstPort"], f["TunnelType"], f["TunnelId"]) == (55555, 6081, "geneve", 7)
    t6 = rec(1026, sampled_ip(True, 0, 17, "fd00::2", "fd00::4", 1, 4789, 0, 0))
    f = one_flow(decoders_mod, [raw_header(pkt, 66), t6, rec(1030, struct.pack(">I", 99))])
    assert (f["TunnelSrcAddr"], f["TunnelDstAddr"], f["TunnelType"], f["TunnelId"]) == \
        ("fd00::2", "fd00::4", "vxlan", 99)


def test_ovs_byte_swapped_tunnel_ports_are_read_back(decoders_mod) -> None:
    """Open vSwitch 3.1 (ofproto-dpif-sflow.c dpif_sflow_tunnel_v4) puts the network-order ports
    in the host-order fields, so little-endian nodes send Geneve's 6081 as 0xC117 and VXLAN's 4789
    as 0xB512 (seen on the wire in tests/test_ovs.py); ports that are tunnel ports as they stand
    are kept, and so are others that are not tunnel ports either way."""
    def swap(v: int) -> int:
        return ((v & 0xFF) << 8) | (v >> 8)

    pkt = eth(ipv4("10.244.0.5", "10.244.1.7", 1, struct.pack(">BBH", 0, 0, 0)), 0x0800)
    for dport, kind in ((6081, "geneve"), (4789, "vxlan")):
        t4 = rec(1024, sampled_ip(False, 0, 17, "172.18.0.2", "172.18.0.4", swap(57538), swap(dport), 0, 0))
        f = one_flow(decoders_mod, [raw_header(pkt, 66), t4])
        assert (f["TunnelSrcPort"], f["TunnelDstPort"], f["TunnelType"]) == (57538, dport, kind)
    t4 = rec(1024, sampled_ip(False, 0, 17, "172.18.0.2", "172.18.0.4", swap(6081), 6081, 0, 0))
    f = one_flow(decoders_mod, [raw_header(pkt, 66), t4])                # a correct exporter
    assert (f["TunnelSrcPort"], f["TunnelDstPort"], f["TunnelType"]) == (swap(6081), 6081, "geneve")
    t4 = rec(1024, sampled_ip(False, 0, 17, "172.18.0.2", "172.18.0.4", 1234, 4352, 0, 0))
    f = one_flow(decoders_mod, [raw_header(pkt, 66), t4])                # no tunnel port either way
    assert (f["TunnelSrcPort"], f["TunnelDstPort"]) == (1234, 4352) and "TunnelType" not in f


@pytest.mark.parametrize("fmt,v6", [(1023, False), (1024, False), (1025, True), (1026, True)])
def test_every_tunnel_record_has_its_address_family(decoders_mod, fmt: int, v6: bool) -> None:
    """sflow_tunnels.txt numbers them 1023 ipv4 egress, 1024 ipv4 ingress, 1025 ipv6 egress,
    1026 ipv6 ingress (OVS adds 1024 to every sample of a packet that arrived in a tunnel). A
    second, ordinary sample in the same datagram must survive too."""
    pkt = eth(ipv4("10.244.0.5", "10.244.1.7", 6, tcp(45000, 80, 0x10)), 0x0800)
    src, dst = ("fd00::2", "fd00::4") if v6 else ("172.18.0.2", "172.18.0.4")
    t = rec(fmt, sampled_ip(v6, 0, 17, src, dst, 55555, 6081, 0, 0))
    b = decode(decoders_mod, datagram([flow_sample([raw_header(pkt, 66), t]), flow_sample([raw_header(pkt, 66)])]))
    assert b.error is None and len(b) == 2
    f = b.to_dicts()[0]
    assert (f["TunnelSrcAddr"], f["TunnelDstAddr"], f["TunnelSrcPort"], f["TunnelDstPort"]) == (src, dst, 55555, 6081)


def test_a_zero_tunnel_endpoint_is_omitted(decoders_mod) -> None:
    """OVS fills a tunnel record's endpoints from the datapath's tunnel metadata, where 0 is "not
    set" (an egress tunnel without local_ip: the kernel picks the source after sampling): the
    unspecified address is never a tunnel's endpoint, so it is omitted, not published as 0.0.0.0
    or ::."""
    pkt = eth(ipv4("10.244.0.5", "10.244.1.7", 6, tcp(45000, 80, 0x10)), 0x0800)
    f = one_flow(decoders_mod, [raw_header(pkt, 66), rec(1023, sampled_ip(False, 0, 17, "0.0.0.0", "172.18.0.4",
                                                                            0, 6081, 0, 0))])
    assert "TunnelSrcAddr" not in f and (f["TunnelDstAddr"], f["TunnelType"]) == ("172.18.0.4", "geneve")
    f = one_flow(decoders_mod, [raw_header(pkt, 66), rec(1026, sampled_ip(True, 0, 17, "fd00::2", "::",
                                                                            1, 4789, 0, 0))])
    assert f["TunnelSrcAddr"] == "fd00::2" and "TunnelDstAddr" not in f


def test_unknown_records_and_samples_are_kept_or_skipped(decoders_mod) -> None:
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    odd = rec(2999, b"\x01\x02\x03\x04\x05")              # 5 bytes: XDR pads it to 8
    vendor = rec(7, b"\xaa\xbb\xcc\xdd", ent=4413)
    f = one_flow(decoders_mod, [odd, raw_header(pkt, 60), vendor])
    assert f["ie2999"] == "0102030405" and f["ie4413_7"] == "aabbccdd"
    assert f["SrcAddr"] == "10.0.0.1"
    # An enterprise sample type is skipped by its length.
    b = decode(decoders_mod, datagram([rec(1, b"\0" * 12, ent=9), flow_sample([raw_header(pkt, 60)])]))
    assert b.error is None and len(b) == 1




def discarded_packet(records: list[bytes], *, seq=3, src=(0, 9), drops=0, inp=5, out=0, reason=258) -> bytes:
    """sflow_drops.txt discarded_packet (enterprise 0, format 5): sequence, expanded source id,
    drops, input, output, reason, then flow records."""
    body = struct.pack(">IIIIIIII", seq, src[0], src[1], drops, inp, out, reason, len(records))
    return rec(5, body + b"".join(records))


def test_discarded_packet_samples(decoders_mod) -> None:
    pkt = eth(ipv4("10.128.0.5", "10.128.1.6", 6, tcp(40000, 8080, 0x02)), 0x0800)
    fwd = flow_sample([raw_header(eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800), 60)])
    b = decode(decoders_mod, datagram([discarded_packet([raw_header(pkt, 74)], inp=5, out=0, reason=258), fwd,
                                       discarded_packet([rec(3, sampled_ip(False, 60, 17, "10.1.1.1", "10.2.2.2", 53, 53, 0, 0))],
                                                        inp=0, out=7, reason=259)]))
    assert b.error is None
    d1, f, d2 = b.to_dicts()
    assert (d1["SrcAddr"], d1["DstAddr"], d1["Proto"], d1["SrcPort"], d1["DstPort"]) == \
        ("10.128.0.5", "10.128.1.6", 6, 40000, 8080)
    assert (d1["PktDropPackets"], d1["PktDropBytes"], d1["PktDropLatestFlags"]) == (1, 74, 0x02)
    assert d1["PktDropLatestDropCause"] == "acl" and d1["InIf"] == 5 and "OutIf" not in d1
    # A reported drop, not a sampled packet: no Sampling, and not counted as traffic.
    assert not {"Sampling", "Bytes", "Packets"} & set(d1)
    assert d1["AgentIP"] == "198.51.100.7" and d1["TimeFlowStartMs"] == int(RECV * 1000)
    assert not any(k.startswith("PktDrop") for k in f) and f["Sampling"] == 400
    assert (d2["SrcAddr"], d2["PktDropBytes"], d2["PktDropLatestDropCause"], d2["OutIf"]) == \
        ("10.1.1.1", 60, "no_buffer_space", 7)
    assert "InIf" not in d2   # 0: unknown


@pytest.mark.parametrize("code", [*T.SFLOW_DROP_REASONS, 16, 34, 255, 373, 0x3FFFFFFF, 0xFFFFFFFF])
def test_drop_reason_names(decoders_mod, code: int) -> None:
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    b = decode(decoders_mod, datagram([discarded_packet([raw_header(pkt, 60)], reason=code)]))
    assert b.to_dicts()[0]["PktDropLatestDropCause"] == T.SFLOW_DROP_REASONS.get(code, str(code))


def test_linux_drop_reason_record(decoders_mod) -> None:
    """hsflowd's dropmon adds record 1042, the kernel's reason name: published in NetObserv's
    vocabulary, SKB_DROP_REASON_<name>, ahead of the sFlow reason code. A name that is not one
    (lower case, too long, empty) stays an unknown record."""
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    fn = rec(1038, xdr_opaque(b"kfree_skb_reason"))
    b = decode(decoders_mod, datagram([discarded_packet([raw_header(pkt, 60), fn, rec(1042, xdr_opaque(b"NETFILTER_DROP"))],
                                                        reason=258)]))
    f = b.to_dicts()[0]
    assert f["PktDropLatestDropCause"] == "SKB_DROP_REASON_NETFILTER_DROP"
    assert f["ie1038"] == xdr_opaque(b"kfree_skb_reason").hex()
    for odd in (b"netfilter_drop", b"", b"A" * 65, b'NO"QUOTE'):
        b = decode(decoders_mod, datagram([discarded_packet([raw_header(pkt, 60), rec(1042, xdr_opaque(odd))],
                                                            reason=258)]))
        f = b.to_dicts()[0]
        assert f["PktDropLatestDropCause"] == "acl" and f["ie1042"] == xdr_opaque(odd).hex(), odd
    # A string longer than its record is malformed.
    bad = rec(1042, struct.pack(">I", 40) + b"NETFILTER_DROP\0\0")
    b = decode(decoders_mod, datagram([discarded_packet([raw_header(pkt, 60), bad])]))
    assert b.error is not None and b.error[0] == "bad_length" and len(b) == 0


def test_agent_sample_drops_counted_per_source(decoders_mod) -> None:
    """The drops counter of flow samples (packets the agent could not sample) and of discarded-packet
    samples (drop events its rate limit suppressed) is cumulative per data source: each source's
    increases are counted, its first value is the baseline, a value that went back is an agent
    restart (all of it new), and sources, kinds and agents behind one relay are apart."""
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    dec = decoders_mod.Decoder()

    def send(samples, seq, agent="198.51.100.7"):
        b = dec.decode(datagram(samples, seq=seq, agent=agent), "192.0.2.1", 6343, RECV)
        assert b.error is None, b.error
        return dec.stats()["192.0.2.1"]["protocols"]["sflow5"]["sample_drops"]

    fs = lambda src, drops: flow_sample([raw_header(pkt, 60)], src=src, drops=drops)   # noqa: E731
    assert send([fs((0, 3), 100), fs((0, 4), 7)], 1) == 0                  # baselines
    assert send([fs((0, 3), 105), fs((0, 4), 7)], 2) == 5
    assert send([discarded_packet([raw_header(pkt, 60)], src=(0, 3), drops=40)], 3) == 5   # its own baseline
    assert send([discarded_packet([raw_header(pkt, 60)], src=(0, 3), drops=42)], 4) == 7
    exp = flow_sample_expanded([raw_header(pkt, 60)], src=(0, 3))         # drops 0: nothing to count
    assert send([exp, fs((0, 4), 10)], 5) == 10
    assert send([fs((0, 3), 2)], 6) == 12                                  # went back: restarted, 2 new
    assert send([fs((0, 3), 500)], 7, agent="198.51.100.8") == 12          # another agent: a baseline
    assert send([fs((0, 3), 501)], 8, agent="198.51.100.8") == 13


def test_truncated_discarded_packet_sample(decoders_mod) -> None:
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    fwd = flow_sample([raw_header(pkt, 60)])
    short = rec(5, struct.pack(">IIIIIII", 1, 0, 9, 0, 5, 0, 258))            # no record count
    b = decode(decoders_mod, datagram([fwd, short]))
    assert b.error is not None and b.error[0] == "bad_sample" and len(b) == 1   # the sample before stays
    # 3 records counted, 1 sent: the one it holds is kept, the shortfall counted bad_count (as a
    # datagram short of its sample count)
    lying = rec(5, struct.pack(">IIIIIIII", 1, 0, 9, 0, 5, 0, 258, 3) + raw_header(pkt, 60))
    dec = decoders_mod.Decoder()
    b = dec.decode(datagram([fwd, lying]), "192.0.2.1", 6343, RECV)
    assert b.error is None and len(b) == 2 and b.to_dicts()[1]["PktDropBytes"] == 60
    assert dec.stats()["192.0.2.1"]["errors"] == {"bad_count": 1}


def test_several_samples_in_order(decoders_mod) -> None:
    samples = []
    for i in range(8):
        pkt = eth(ipv4(f"10.0.0.{i}", "10.1.0.1", 17, udp(1000 + i, 53)), 0x0800)
        samples.append(flow_sample([raw_header(pkt, 100 + i)], seq=i))
    b = decode(decoders_mod, datagram(samples))
    flows = b.to_dicts()
    assert b.error is None and len(flows) == 8
    assert [f["SrcPort"] for f in flows] == [1000 + i for i in range(8)]
    assert [f["Bytes"] for f in flows] == [100 + i for i in range(8)]


# --------------------------------------------------------------------------------------------
# Built datagrams: Host sFlow socket and application records (sflow.org/sflow_host.txt,
# sflow_http.txt, sflow_application.txt)
#
# Host sFlow agents (hsflowd and the applications that feed it) sample application transactions:
# flow samples with no packet header, only extended_socket_ipv4/ipv6 and application records.
# No Debian package decodes these (hsflowd and sflowtool are not packaged; nfdump 1.7's sfcapd
# and pmacct 1.7's sfacctd drop the socket's addresses, tshark 4.0 calls 2100 "Unknown"), so
# the expected values are the protocol facts the builders below put in.


def socket_rec(v6: bool, proto: int, local: str, remote: str, lport: int, rport: int) -> bytes:
    """extended_socket_ipv4 (enterprise 0, format 2100) / extended_socket_ipv6 (2101): unsigned
    int protocol, ip_v4/ip_v6 local_ip and remote_ip (bare 4 or 16 bytes, no address type), unsigned
    int local_port and remote_port."""
    body = struct.pack(">I", proto) + ipaddress.ip_address(local).packed + ipaddress.ip_address(remote).packed
    return rec(2101 if v6 else 2100, body + struct.pack(">II", lport, rport))


# The same record laid out by hand from the XDR, to hold the builder to the spec.
SOCKET4_WIRE = bytes.fromhex(
    "00000834" "00000014"       # data_format: enterprise 0, format 2100; length 20
    "00000006"                  # protocol: TCP
    "0a010203" "0a090807"       # local_ip 10.1.2.3, remote_ip 10.9.8.7
    "000001bb" "0000c822")      # local_port 443, remote_port 51234
SOCKET6_WIRE = bytes.fromhex(
    "00000835" "0000002c"       # format 2101; length 44
    "00000011"                  # protocol: UDP
    "fd000000000000000000000000000001"      # local_ip fd00::1
    "fd00000000000000000000000000abcd"      # remote_ip fd00::abcd
    "00000035" "00009c40")      # local_port 53, remote_port 40000


def app_context(app: bytes, op: bytes, attrs: bytes) -> bytes:
    """sflow_application.txt `context`: application<32>, operation<32>, attributes<255> (utf8 strings)."""
    return xdr_opaque(app) + xdr_opaque(op) + xdr_opaque(attrs)


def app_operation(app: bytes, op: bytes, attrs: bytes, descr: bytes, req: int, resp: int, us: int,
                  status: int) -> bytes:
    """sflow_application.txt app_operation (enterprise 0, format 2202): context, status_descr<64>,
    unsigned hyper req_bytes, unsigned hyper resp_bytes, unsigned int uS, status (enum, 4 bytes)."""
    return rec(2202, app_context(app, op, attrs) + xdr_opaque(descr) + struct.pack(">QQII", req, resp, us, status))


# app_operation laid out by hand from the XDR (strings: length, bytes, zero padding to 4).
APP_OPERATION_WIRE = bytes.fromhex(
    "0000089a" "00000040"       # data_format: enterprise 0, format 2202; length 64
    "00000003" "77656200"       # context.application "web" + 1 byte of padding
    "00000008" "6765742e75736572"           # context.operation "get.user"
    "00000000"                  # context.attributes ""
    "00000009" "6e6f7420666f756e64000000"   # status_descr "not found" + 3 bytes of padding
    "000000000000012c"          # req_bytes 300
    "0000000100000010"          # resp_bytes 2^32 + 16 (a hyper: above 32 bits)
    "002625a0"                  # uS 2,500,000 (2.5 s)
    "00000008")                 # status 8, NOT_FOUND
APP_OPERATION_BYTES = 300 + 2**32 + 16
APP_OPERATION_MS = 2500

# extended_proxy_socket_ipv6 (sflow_http.txt, format 2103): an extended_socket_ipv6, the
# connection a proxy opened upstream.
PROXY6_WIRE = bytes.fromhex(
    "00000837" "0000002c"       # format 2103; length 44
    "00000006"                  # protocol: TCP
    "fd000000000000000000000000000005"      # local_ip fd00::5 (the proxy)
    "20010db800000000000000000000000a"      # remote_ip 2001:db8::a (the upstream server)
    "0000a411" "00001f90")      # local_port 42001, remote_port 8080


def proxy_rec(v6: bool, proto: int, local: str, remote: str, lport: int, rport: int) -> bytes:
    """extended_proxy_socket_ipv4 (2102) / ipv6 (2103): the extended_socket_ipv4/ipv6 layout."""
    return rec(2103 if v6 else 2102, socket_rec(v6, proto, local, remote, lport, rport)[8:])


def hsflowd_app_records() -> list[bytes]:
    """The application records a Host sFlow transaction sample carries beside its socket, each
    as its spec lays it out: app_operation 2202 (context, status_descr<64>, req_bytes and
    resp_bytes hyper, uS, status), app_parent_context 2203, app_initiator 2204 and app_target 2205
    (actor<64>), extended_proxy_socket_ipv4 2102 (the socket4 layout: a proxy's back-end
    connection), memcache_operation 2200 (sflow_memcache.txt: protocol, cmd, key<255>, nkeys,
    value_bytes, uS, status) and the first http_request, 2201 (sflow_http.txt: method, protocol,
    uri, host, referrer, useragent, authuser, mime_type, bytes hyper, uS, status)."""
    parent = app_context(b"mail.smtp", b"send", b"")
    proxy = struct.pack(">I4s4sII", 6, bytes([10, 1, 2, 3]), bytes([10, 7, 7, 7]), 40001, 8080)
    memcache = struct.pack(">II", 2, 1) + xdr_opaque(b"session:42") + struct.pack(">IIII", 1, 512, 80, 1)
    http = struct.pack(">II", 2, 1001) + xdr_opaque(b"/index.html") + xdr_opaque(b"example.com") + \
        xdr_opaque(b"") + xdr_opaque(b"curl/7.88") + xdr_opaque(b"") + xdr_opaque(b"text/html") + \
        struct.pack(">QIi", 5120, 2300, 200)
    op = app_operation(b"payment", b"get.customer.name", b"cc=visa&loc=mobile", b"OK", 120, 4096, 1500, 0)
    return [op, rec(2203, parent), rec(2204, xdr_opaque(b"client-7")),
            rec(2205, xdr_opaque(b"db-3")), rec(2102, proxy), rec(2200, memcache), rec(2201, http)]


def _prefixes_and_flips_decode_or_fail_typed(dec: Any, data: bytes, seed: int) -> None:
    """Every prefix of a datagram fails with a typed reason, or, cut where a sample would start,
    is counted bad_count (its header counts more samples than it holds); and 1,000 random byte
    flips decode or fail typed (never crash, never an untyped error), each result still
    encodable."""
    rng = random.Random(seed)
    for n in range(len(data)):
        before = dec.stats()["192.0.2.1"]["errors"].get("bad_count", 0) if n else 0
        b = dec.decode(data[:n], "192.0.2.1", 6343, RECV)
        assert (b.error is not None and b.error[0] in REASONS
                or dec.stats()["192.0.2.1"]["errors"].get("bad_count", 0) == before + 1), n
        b.to_json()
    for _ in range(1000):
        m = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            m[rng.randrange(len(m))] = rng.randrange(256)
        b = dec.decode(bytes(m), "192.0.2.1", 6343, RECV)
        assert b.error is None or b.error[0] in REASONS, b.error
        b.to_json()


@pytest.mark.parametrize("v6", [False, True], ids=["socket4", "socket6"])
@pytest.mark.parametrize("expanded", [False, True], ids=["compact", "expanded"])
def test_socket_records_give_the_flow_keys(decoders_mod, v6: bool, expanded: bool) -> None:
    """A Host sFlow transaction sample (no packet header): the socket record gives the flow's
    addresses, ports and protocol, local as Src and remote as Dst (sflowtool's reading), and the
    EtherType of its family; app_operation its Bytes (request + response bodies) and duration.
    The application records beside it, app_operation and the proxy socket included, are kept as
    ie<format> extras (their bytes as sent), none of them counted as an error."""
    # The builder the other socket tests use lays out the same bytes as the hand-made records.
    assert socket_rec(False, 6, "10.1.2.3", "10.9.8.7", 443, 51234) == SOCKET4_WIRE
    assert socket_rec(True, 17, "fd00::1", "fd00::abcd", 53, 40000) == SOCKET6_WIRE
    sock = SOCKET6_WIRE if v6 else SOCKET4_WIRE
    apps = hsflowd_app_records()
    records = [apps[0], sock, *apps[1:]]
    sample = flow_sample_expanded(records) if expanded else flow_sample(records)
    dec = decoders_mod.Decoder()
    b = dec.decode(datagram([sample], agent="2001:db8::7" if v6 else "198.51.100.7"), "192.0.2.1", 6343, RECV)
    assert b.error is None, b.error
    (f,) = b.to_dicts()
    if v6:
        exp = ("fd00::1", "fd00::abcd", 53, 40000, 17, 0x86DD)
    else:
        exp = ("10.1.2.3", "10.9.8.7", 443, 51234, 6, 0x0800)
    assert (f["SrcAddr"], f["DstAddr"], f["SrcPort"], f["DstPort"], f["Proto"], f["Etype"]) == exp
    assert f["Packets"] == 1 and f["Sampling"] == (512 if expanded else 400)
    # app_operation (the first of hsflowd_app_records): req_bytes 120 + resp_bytes 4096, not
    # scaled by the rate; uS 1500 is 1 whole ms before the receive time.
    assert f["Bytes"] == 120 + 4096
    assert (f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (int(RECV * 1000) - 1, int(RECV * 1000))
    # Nothing the records do not carry: no DSCP, TCP flags, MACs.
    assert not {"Dscp", "Flags", "TcpFlagsRaw", "SrcMac", "DstMac", "IcmpType"} & set(f)
    unknown = {k: v for k, v in f.items() if k.startswith("ie")}
    assert unknown == {f"ie{struct.unpack_from('>I', r)[0]}": r[8:8 + struct.unpack_from('>I', r, 4)[0]].hex()
                       for r in apps}
    assert dec.stats()["192.0.2.1"]["errors"] == {}


@pytest.mark.parametrize("v6", [False, True], ids=["socket4", "socket6"])
def test_a_header_or_sampled_ip_record_wins_over_the_socket(decoders_mod, v6: bool) -> None:
    """A sampled header or a sampled IPv4/IPv6 record describes the packet: its keys stay whatever
    the records' order, and the socket record adds nothing (nor stays as an unknown record)."""
    sock = SOCKET6_WIRE if v6 else SOCKET4_WIRE
    hdr = raw_header(eth(ipv4("10.128.0.5", "10.128.1.6", 6, tcp(40000, 8080, 0x12)), 0x0800), 1514)
    hdr_keys = ("10.128.0.5", "10.128.1.6", 40000, 8080, 6, 0x0800)
    ip6 = rec(4, sampled_ip(True, 1200, 17, "2001:db8::1", "2001:db8::2", 5353, 53, 0, 0))
    ip6_keys = ("2001:db8::1", "2001:db8::2", 5353, 53, 17, 0x86DD)
    for records, exp in (([hdr, sock], hdr_keys), ([sock, hdr], hdr_keys),
                         ([ip6, sock], ip6_keys), ([sock, ip6], ip6_keys)):
        f = one_flow(decoders_mod, records)
        assert (f["SrcAddr"], f["DstAddr"], f["SrcPort"], f["DstPort"], f["Proto"], f["Etype"]) == exp
        assert not any(k.startswith("ie") for k in f), f
    # A header whose frame is not IP (ARP) is still the packet: no socket addresses grafted on it.
    arp = raw_header(eth(b"\0" * 28, 0x0806), 60)
    f = one_flow(decoders_mod, [sock, arp])
    assert f["Etype"] == 0x0806 and f["SrcMac"] == MAC_A.hex(":")
    assert not {"SrcAddr", "DstAddr", "SrcPort", "DstPort", "Proto"} & set(f)
    assert "ie2100" not in f and "ie2101" not in f


def test_socket_record_values_that_are_not_keys(decoders_mod) -> None:
    """A 0.0.0.0 / :: end (a wildcard-bound or unconnected socket) is no address; ports only for
    TCP, UDP and SCTP; a protocol above 255 or a port above 65535 is no value; of two socket
    records the first is the flow's."""
    f = one_flow(decoders_mod, [socket_rec(False, 17, "0.0.0.0", "10.9.8.7", 53, 33000)])
    assert "SrcAddr" not in f and (f["DstAddr"], f["SrcPort"], f["DstPort"], f["Etype"]) == ("10.9.8.7", 53, 33000, 0x0800)
    f = one_flow(decoders_mod, [socket_rec(True, 6, "fd00::1", "::", 443, 0)])
    assert "DstAddr" not in f and (f["SrcAddr"], f["SrcPort"], f["DstPort"]) == ("fd00::1", 443, 0)
    f = one_flow(decoders_mod, [socket_rec(False, 132, "10.0.0.1", "10.0.0.2", 2905, 2905)])
    assert (f["Proto"], f["SrcPort"], f["DstPort"]) == (132, 2905, 2905)
    f = one_flow(decoders_mod, [socket_rec(False, 1, "10.0.0.1", "10.0.0.2", 8, 0)])   # an ICMP (ping) socket
    assert f["Proto"] == 1 and not {"SrcPort", "DstPort", "IcmpType", "IcmpCode"} & set(f)
    f = one_flow(decoders_mod, [socket_rec(False, 300, "10.0.0.1", "10.0.0.2", 1, 2)])
    assert (f["SrcAddr"], f["DstAddr"], f["Etype"]) == ("10.0.0.1", "10.0.0.2", 0x0800)
    assert not {"Proto", "SrcPort", "DstPort"} & set(f)
    f = one_flow(decoders_mod, [socket_rec(False, 6, "10.0.0.1", "10.0.0.2", 70000, 80)])
    assert f["Proto"] == 6 and not {"SrcPort", "DstPort"} & set(f)
    f = one_flow(decoders_mod, [SOCKET6_WIRE, SOCKET4_WIRE])
    assert (f["SrcAddr"], f["DstAddr"], f["Etype"]) == ("fd00::1", "fd00::abcd", 0x86DD)
    assert "ie2100" not in f


def test_a_dual_stack_socket_carrying_ipv4_is_an_ipv4_flow(decoders_mod) -> None:
    """An extended_socket_ipv6 of a dual-stack socket talking IPv4 (hsflowd on an application
    listening on [::]: both ends IPv4-mapped, ::ffff:a.b.c.d) describes IPv4 traffic: the
    addresses are written as NetObserv writes them, dotted quads, and Etype is IPv4's, as
    NetObserv's agent gives for the packets; one mapped end beside a real IPv6 one stays IPv6."""
    f = one_flow(decoders_mod, [socket_rec(True, 6, "::ffff:10.0.0.1", "::ffff:192.0.2.7", 8080, 40000)])
    assert (f["SrcAddr"], f["DstAddr"], f["Etype"], f["SrcPort"]) == ("10.0.0.1", "192.0.2.7", 0x0800, 8080)
    f = one_flow(decoders_mod, [socket_rec(True, 6, "::ffff:10.0.0.1", "fd00::7", 8080, 40000)])
    assert (f["SrcAddr"], f["DstAddr"], f["Etype"]) == ("10.0.0.1", "fd00::7", 0x86DD)


@pytest.mark.parametrize("compiled", [True, False])
def test_socket_flows_are_enriched_from_the_agents_end(decoders_mod, compiled: bool) -> None:
    """The local end is Src: a transaction sampled by the node's agent has the node's pod as its
    source, and leaves the node (FlowDirection 1); a wildcard local end leaves Src unresolved."""
    import enrich
    from tests.support.fake_kube import node, pod

    e = enrich.Enricher.from_objects(
        pods=[pod("web", "shop", ips=["10.244.1.6"], node="n1", host_ip="10.0.0.7"),
              pod("db", "shop", ips=["10.244.2.9"], node="n2", host_ip="10.0.0.8")],
        nodes=[node("n1", internal=["10.0.0.7"], subnets={"default": "10.244.1.0/24"}),
               node("n2", internal=["10.0.0.8"], subnets={"default": "10.244.2.0/24"})],
        config=enrich.EnrichConfig(own_namespace=""), compiled=compiled)
    b = decode(decoders_mod, datagram([flow_sample([socket_rec(False, 6, "10.244.1.6", "10.244.2.9", 43000, 5432)])],
                                      agent="10.0.0.7"))
    f = b.to_dicts(e)[0]
    assert (f["SrcK8S_Name"], f["DstK8S_Name"], f["SrcPort"], f["FlowDirection"]) == ("web", "db", 43000, 1)
    b = decode(decoders_mod, datagram([flow_sample([socket_rec(False, 17, "0.0.0.0", "10.244.2.9", 53, 40000)])],
                                      agent="10.0.0.7"))
    f = b.to_dicts(e)[0]
    assert "SrcAddr" not in f and "SrcK8S_Name" not in f and f["DstK8S_Name"] == "db"


def test_truncated_socket_records_are_counted(decoders_mod) -> None:
    """A socket record shorter than its structure is bad_length, as a short sampled IPv4/IPv6
    record is (a header beside it changes nothing): that sample is not a flow, the samples before
    it stay, and every prefix and byte flip of a socket datagram decodes or fails typed."""
    good = flow_sample([SOCKET4_WIRE])
    dec = decoders_mod.Decoder()
    for short in (rec(2100, SOCKET4_WIRE[8:8 + 16]), rec(2101, SOCKET6_WIRE[8:8 + 40]), rec(2100, b""),
                  rec(2101, SOCKET4_WIRE[8:])):
        for records in ([short], [short, *hsflowd_app_records()],
                        [raw_header(eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800), 60), short]):
            b = dec.decode(datagram([good, flow_sample(records)]), "192.0.2.1", 6343, RECV)
            assert b.error is not None and b.error[0] == "bad_length", (short, b.error)
            assert [f["SrcAddr"] for f in b.to_dicts()] == ["10.1.2.3"]
    assert dec.stats()["192.0.2.1"]["errors"] == {"bad_length": 12}
    data = datagram([flow_sample([SOCKET4_WIRE, *hsflowd_app_records()]), flow_sample_expanded([SOCKET6_WIRE])])
    _prefixes_and_flips_decode_or_fail_typed(dec, data, 7)
    assert [f["SrcAddr"] for f in dec.decode(data, "192.0.2.1", 6343, RECV).to_dicts()] == ["10.1.2.3", "fd00::1"]


def test_app_operation_gives_a_transaction_samples_bytes_and_duration(decoders_mod) -> None:
    """app_operation (sflow_application.txt, 2202) in a transaction sample (no sampled header,
    Ethernet or IPv4/IPv6 record): Bytes is req_bytes + resp_bytes as sent (Sampling carries the
    rate, nothing is scaled), Packets 1, and the flow starts uS (whole ms) before its end, the
    receive time. The record stays as its ie2202 extra. Beside a sampled header or sampled IP
    record it changes neither Bytes nor the times."""
    assert app_operation(b"web", b"get.user", b"", b"not found", 300, 2**32 + 16, 2_500_000, 8) == APP_OPERATION_WIRE
    end = int(RECV * 1000)
    app_hex = APP_OPERATION_WIRE[8:].hex()
    for records in ([SOCKET4_WIRE, APP_OPERATION_WIRE], [APP_OPERATION_WIRE, SOCKET4_WIRE]):
        f = one_flow(decoders_mod, records, rate=1000)
        assert (f["SrcAddr"], f["DstAddr"], f["SrcPort"], f["DstPort"]) == ("10.1.2.3", "10.9.8.7", 443, 51234)
        assert (f["Bytes"], f["Packets"], f["Sampling"]) == (APP_OPERATION_BYTES, 1, 1000)
        assert (f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (end - APP_OPERATION_MS, end)
        assert f["ie2202"] == app_hex
    # Without a socket record the transaction still has its bytes (no addresses to give).
    f = one_flow(decoders_mod, [APP_OPERATION_WIRE])
    assert f["Bytes"] == APP_OPERATION_BYTES and not {"SrcAddr", "DstAddr", "Proto"} & set(f)
    # Of two app_operation records the first counts; both stay as extras.
    second = app_operation(b"db", b"q", b"x=1", b"", 1, 2, 5_000, 0)
    f = one_flow(decoders_mod, [SOCKET6_WIRE, APP_OPERATION_WIRE, second])
    assert f["Bytes"] == APP_OPERATION_BYTES and f["TimeFlowStartMs"] == end - APP_OPERATION_MS
    assert f["ie2202"] == [app_hex, second[8:].hex()]
    # Under a millisecond is no duration; 0 bytes is a value; a sum beyond 64 bits saturates.
    f = one_flow(decoders_mod, [SOCKET4_WIRE, app_operation(b"a", b"b", b"", b"", 0, 0, 999, 0)])
    assert (f["Bytes"], f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (0, end, end)
    f = one_flow(decoders_mod, [SOCKET4_WIRE, app_operation(b"a", b"b", b"", b"", 2**64 - 1, 5, 0, 0)])
    assert f["Bytes"] == 2**64 - 1
    # A sampled header, Ethernet or IPv4/IPv6 record describes a packet: its Bytes and the receive
    # time stay, whatever the records' order, and the app_operation record is only an extra.
    hdr = raw_header(eth(ipv4("10.128.0.5", "10.128.1.6", 6, tcp(40000, 8080, 0x12)), 0x0800), 1514)
    ip4 = rec(3, sampled_ip(False, 1200, 17, "10.0.0.1", "10.0.0.2", 5353, 53, 0, 0))
    ethr = rec(2, struct.pack(">I", 900) + MAC_A + b"\0\0" + MAC_B + b"\0\0" + struct.pack(">I", 0x0800))
    for pkt, length in ((hdr, 1514), (ip4, 1200), (ethr, 900)):
        for records in ([pkt, SOCKET4_WIRE, APP_OPERATION_WIRE], [APP_OPERATION_WIRE, SOCKET4_WIRE, pkt]):
            f = one_flow(decoders_mod, records)
            assert (f["Bytes"], f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (length, end, end), records
            assert f["ie2202"] == app_hex
    # A discarded-packet sample is a drop event, not a transaction: no bytes from it.
    b = decode(decoders_mod, datagram([discarded_packet([SOCKET4_WIRE, APP_OPERATION_WIRE])]))
    (d,) = b.to_dicts()
    assert d["PktDropPackets"] == 1 and "PktDropBytes" not in d and "Bytes" not in d
    assert d["TimeFlowStartMs"] == end


def test_malformed_app_operation_records_are_counted(decoders_mod) -> None:
    """An app_operation record shorter than its structure, or with a string longer than what is
    left of it, is bad_length (as a short socket record is): that sample is not a flow, the
    samples before it stay; no length, however large, reads past the record."""
    body = APP_OPERATION_WIRE[8:]
    good = flow_sample([SOCKET4_WIRE])
    bad = [rec(2202, body[:n]) for n in range(len(body))]      # every prefix, padding included
    # a string's length beyond the record: 0xFFFFFFFF (and its padding past 2^32), 0xFFFFFFFD,
    # 2^31-1, and status_descr one byte longer than all that follows its length (36 bytes); one
    # that takes all of it leaves no room for the numbers
    for at, length in ((0, 0xFFFFFFFF), (0, 0xFFFFFFFD), (8, 0x7FFFFFFF), (24, 37), (24, 36)):
        bad.append(rec(2202, body[:at] + struct.pack(">I", length) + body[at + 4:]))
    dec = decoders_mod.Decoder()
    for r in bad:
        for records in ([SOCKET4_WIRE, r], [r, SOCKET4_WIRE], [raw_header(eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800), 60), r]):
            b = dec.decode(datagram([good, flow_sample(records)]), "192.0.2.1", 6343, RECV)
            assert b.error is not None and b.error[0] == "bad_length", (r.hex(), b.error)
            assert [f["SrcAddr"] for f in b.to_dicts()] == ["10.1.2.3"]
    assert dec.stats()["192.0.2.1"]["errors"] == {"bad_length": 3 * len(bad)}
    # Bytes after the structure are its extension (sflow_version_5.txt), not an error.
    f = one_flow(decoders_mod, [SOCKET4_WIRE, rec(2202, body + b"\0\0\0\7")])
    assert f["Bytes"] == APP_OPERATION_BYTES
    # Every prefix and byte flip of a transaction datagram decodes or fails typed.
    data = datagram([flow_sample([SOCKET4_WIRE, APP_OPERATION_WIRE, PROXY6_WIRE]),
                     flow_sample_expanded([APP_OPERATION_WIRE, proxy_rec(False, 6, "10.0.0.5", "10.0.9.9", 40000, 80)])])
    _prefixes_and_flips_decode_or_fail_typed(dec, data, 11)
    assert [(f["SrcAddr"], f["Bytes"]) for f in dec.decode(data, "192.0.2.1", 6343, RECV).to_dicts()] == \
        [("10.1.2.3", APP_OPERATION_BYTES), ("10.0.0.5", APP_OPERATION_BYTES)]


@pytest.mark.parametrize("v6", [False, True], ids=["proxy4", "proxy6"])
def test_proxy_socket_records(decoders_mod, v6: bool) -> None:
    """extended_proxy_socket_ipv4/ipv6 (2102/2103, sflow_http.txt) describe the connection a proxy
    opened upstream. They never replace the keys a sampled header, sampled IP record or
    extended_socket gave, whatever the order; in a sample with none of those they are the flow's
    keys (local as Src, as for 2100/2101). They are kept as their ie2102/ie2103 extra in every case."""
    proxy = PROXY6_WIRE if v6 else proxy_rec(False, 6, "10.0.0.5", "10.0.9.9", 40000, 80)
    fmt = 2103 if v6 else 2102
    proxy_keys = ("fd00::5", "2001:db8::a", 42001, 8080, 6, 0x86DD) if v6 else \
        ("10.0.0.5", "10.0.9.9", 40000, 80, 6, 0x0800)
    assert proxy_rec(True, 6, "fd00::5", "2001:db8::a", 42001, 8080) == PROXY6_WIRE

    def keys(f: dict) -> tuple:
        return tuple(f.get(k) for k in ("SrcAddr", "DstAddr", "SrcPort", "DstPort", "Proto", "Etype"))

    # alone, or with the application records: the flow's keys
    for records in ([proxy], [APP_OPERATION_WIRE, proxy]):
        f = one_flow(decoders_mod, records)
        assert keys(f) == proxy_keys and f[f"ie{fmt}"] == proxy[8:].hex()
    f = one_flow(decoders_mod, [APP_OPERATION_WIRE, proxy])
    assert f["Bytes"] == APP_OPERATION_BYTES
    # an extended_socket (either family) or a packet record wins, in any order
    hdr = raw_header(eth(ipv4("10.128.0.5", "10.128.1.6", 6, tcp(40000, 8080, 0x12)), 0x0800), 1514)
    hdr_keys = ("10.128.0.5", "10.128.1.6", 40000, 8080, 6, 0x0800)
    sock4 = ("10.1.2.3", "10.9.8.7", 443, 51234, 6, 0x0800)
    sock6 = ("fd00::1", "fd00::abcd", 53, 40000, 17, 0x86DD)
    for records, exp in (([proxy, SOCKET4_WIRE], sock4), ([SOCKET4_WIRE, proxy], sock4),
                         ([proxy, SOCKET6_WIRE], sock6), ([proxy, hdr], hdr_keys), ([hdr, proxy], hdr_keys),
                         ([proxy, SOCKET4_WIRE, hdr], hdr_keys)):
        f = one_flow(decoders_mod, records)
        assert keys(f) == exp and f[f"ie{fmt}"] == proxy[8:].hex(), records
    # of two proxy sockets the first gives the keys; both stay
    other = proxy_rec(v6, 17, "fd00::7" if v6 else "10.0.0.7", "fd00::8" if v6 else "10.0.0.8", 1, 2)
    f = one_flow(decoders_mod, [proxy, other])
    assert keys(f) == proxy_keys and f[f"ie{fmt}"] == [proxy[8:].hex(), other[8:].hex()]
    # a proxy socket shorter than its structure is bad_length, the samples before it stay
    dec = decoders_mod.Decoder()
    good = flow_sample([SOCKET4_WIRE])
    for n in (0, 4, 19 if not v6 else 43):
        for records in ([rec(fmt, proxy[8:8 + n])], [SOCKET4_WIRE, rec(fmt, proxy[8:8 + n])], [hdr, rec(fmt, proxy[8:8 + n])]):
            b = dec.decode(datagram([good, flow_sample(records)]), "192.0.2.1", 6343, RECV)
            assert b.error is not None and b.error[0] == "bad_length", (n, b.error)
            assert [f["SrcAddr"] for f in b.to_dicts()] == ["10.1.2.3"]
    assert dec.stats()["192.0.2.1"]["errors"] == {"bad_length": 9}


# --------------------------------------------------------------------------------------------
# Built datagrams: counter samples


def generic_if(ifindex: int) -> tuple[bytes, dict]:
    vals = dict(IfIndex=ifindex, IfType=6, IfSpeed=10_000_000_000, IfDirection=1, IfStatus=3,
                IfInOctets=2**40 + 5, IfInUcastPkts=11, IfInMulticastPkts=12, IfInBroadcastPkts=13,
                IfInDiscards=14, IfInErrors=15, IfInUnknownProtos=16, IfOutOctets=2**35 + 7,
                IfOutUcastPkts=21, IfOutMulticastPkts=22, IfOutBroadcastPkts=23, IfOutDiscards=24,
                IfOutErrors=25, IfPromiscuousMode=2)
    data = struct.pack(">IIQIIQIIIIIIQIIIIII", *vals.values())
    return rec(1, data), vals


@pytest.mark.parametrize("agent,text", [("::ffff:192.0.2.1", "::ffff:192.0.2.1"), ("2001:db8::7", "2001:db8::7")])
def test_counter_and_flow_agent_addresses_read_alike(decoders_mod, agent: str, text: str) -> None:
    # RFC 5952 5: an IPv4-mapped address is written ::ffff:a.b.c.d (Python's ipaddress would
    # write ::ffff:c000:201): flows and counter records of one datagram name the agent alike.
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    b = decode(decoders_mod, datagram([flow_sample([raw_header(pkt, 60)]), counter_sample([generic_if(3)[0]])],
                                      agent=agent))
    assert b.error is None
    assert b.to_dicts()[0]["AgentIP"] == text
    assert [c["AgentIP"] for c in b.counters] == [text]


@pytest.mark.parametrize("compiled", [True, False])
def test_an_ipv4_mapped_agent_address_finds_its_node(decoders_mod, compiled: bool) -> None:
    """An agent that writes its IPv4 address as IPv4-mapped IPv6 (::ffff:a.b.c.d) is that node's
    exporter: FlowDirection is read against the IPv4 address, as for flow addresses, while
    AgentIP stays as exported (review helper-86: no FlowDirection at all)."""
    import enrich
    from tests.support.fake_kube import node, pod

    e = enrich.Enricher.from_objects(
        pods=[pod("web", "shop", ips=["10.244.1.6"], node="n1", host_ip="10.0.0.7")],
        nodes=[node("n1", internal=["10.0.0.7"], subnets={"default": "10.244.1.0/24"})],
        config=enrich.EnrichConfig(own_namespace=""), compiled=compiled)
    pkt = eth(ipv4("10.244.1.6", "8.8.8.8", 17, udp(5353, 53)), 0x0800)
    for agent in ("10.0.0.7", "::ffff:10.0.0.7"):
        b = decode(decoders_mod, datagram([flow_sample([raw_header(pkt, 60)])], agent=agent))
        f = b.to_dicts(e)[0]
        assert (f["AgentIP"], f["SrcK8S_Name"], f.get("FlowDirection")) == (agent, "web", 1)

def test_counter_samples_generic_ethernet_ovs(decoders_mod) -> None:
    g, gvals = generic_if(4)
    ether = rec(2, struct.pack(">13I", *range(100, 113)))
    ofport = rec(1004, struct.pack(">QI", 0x0000AABBCCDDEEFF, 3))
    name = rec(1005, xdr_opaque(b"veth-pod1"))
    unknown = rec(2001, b"\x00\x01\x02\x03")
    b = decode(decoders_mod, datagram([counter_sample([g, ether, ofport, name, unknown], seq=77, src=(0, 4)),
                                       counter_sample([g], seq=78, src=(0, 4), expanded=True)]))
    assert b.error is None and len(b) == 0 and len(b.counters) == 2
    c = b.counters[0]
    assert c["RecordType"] == "counters" and c["AgentIP"] == "198.51.100.7"
    assert (c["SequenceNum"], c["SourceIdType"], c["SourceIdIndex"]) == (77, 0, 4)
    assert c["TimeReceived"] == int(RECV)
    assert c["Records"] == [1, 2, 1004, 1005, 2001]
    for k, v in gvals.items():
        assert c[k] == v, k
    assert c["Dot3StatsAlignmentErrors"] == 100 and c["Dot3StatsSymbolErrors"] == 112
    assert (c["OfDatapathId"], c["OfPort"], c["PortName"]) == (0xAABBCCDDEEFF, 3, "veth-pod1")
    assert c["Unknown"] == [{"Format": 2001, "Hex": "00010203"}]
    assert b.counters[1]["SequenceNum"] == 78 and b.counters[1]["Records"] == [1]


# --------------------------------------------------------------------------------------------
# Bad input


def mixed_datagram() -> tuple[bytes, list[tuple[int, bool]], int]:
    """A datagram of flow, counter and discarded-packet samples, (end offset, is_flow) of each sample, header length."""
    pk1 = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, 0x02)), 0x0800)
    pk2 = eth(ipv4("172.18.0.2", "172.18.0.3", 17, udp(9, 4789, vxlan(5, eth(ipv6("::1", "::2", 58, b"\x80\0\0\0"), 0x86DD)))), 0x0800)
    samples = [
        flow_sample([raw_header(pk1, 60), rec(1001, struct.pack(">IIII", 5, 0, 5, 0))]),
        counter_sample([generic_if(3)[0], rec(1005, xdr_opaque(b"br-int"))]),
        flow_sample_expanded([raw_header(pk2, 150), rec(1029, struct.pack(">I", 5))]),
        flow_sample([rec(3, sampled_ip(False, 99, 17, "1.1.1.1", "2.2.2.2", 3, 4, 0, 0))]),
        discarded_packet([raw_header(pk1, 60)]),
    ]
    data = datagram(samples)
    ends, pos = [], len(data) - sum(map(len, samples))
    header_len = pos
    for s in samples:
        pos += len(s)
        ends.append((pos, struct.unpack(">I", s[:4])[0] in (1, 3, 5)))
    return data, ends, header_len


def test_truncation_at_every_prefix(decoders_mod) -> None:
    """A datagram cut anywhere: inside its header or inside a sample, `truncated`; exactly where a
    sample would start, the header counts more samples than there are, `bad_count` (as NetFlow
    v5's count that disagrees with the length), not a failed datagram. Either way the samples
    that ended before the cut are kept, in order, and none after it."""
    data, ends, header_len = mixed_datagram()
    boundaries = {header_len} | {end for end, _ in ends if end < len(data)}
    dec = decoders_mod.Decoder()
    full = dec.decode(data, "192.0.2.1", 6343, RECV)
    assert full.error is None and len(full) == 4 and len(full.counters) == 1
    full_flows = full.to_dicts()
    for n in range(len(data)):
        b = dec.decode(data[:n], "192.0.2.1", 6343, RECV)
        if n in boundaries:
            assert b.error is None, (n, b.error)
        else:
            assert b.error is not None and b.error[0] in REASONS, (n, b.error)
            assert b.error[0] == "truncated", (n, b.error)
        done = [is_flow for end, is_flow in ends if end <= n]
        assert len(b) == sum(done), n
        assert len(b.counters) == len(done) - sum(done), n
        assert b.to_dicts() == full_flows[:len(b)], n
        # And the next datagram decodes.
    assert dec.decode(data, "192.0.2.1", 6343, RECV).error is None
    st = dec.stats()["192.0.2.1"]
    assert st["errors"] == {"truncated": len(data) - len(boundaries), "bad_count": len(boundaries)}
    assert st["datagrams"] == len(data) + 2


def test_sample_count_larger_than_datagram(decoders_mod) -> None:
    data, _, header_len = mixed_datagram()
    dec = decoders_mod.Decoder()
    b = dec.decode(datagram([], count=0xFFFFFFFF) + data[header_len:], "192.0.2.1", 6343, RECV)
    assert b.error is None and len(b) == 4 and len(b.counters) == 1
    assert dec.stats()["192.0.2.1"]["errors"] == {"bad_count": 1}


def test_sample_count_shortfall_is_bad_count_as_in_netflow_v5(decoders_mod, caplog: pytest.LogCaptureFixture) -> None:
    """A header that counts more samples (sFlow) or records (NetFlow v5) than its datagram holds
    is one disagreement with one name in both decoders: `bad_count` on the exporter, logged with
    the reason, the samples or records that are there decoded and the datagram not failed."""
    from conftest import make_v5

    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    one = flow_sample([raw_header(pkt, 60)])
    v5 = bytearray(make_v5(seq=1, n=2, first=0))
    struct.pack_into(">H", v5, 2, 3)                      # count 3, two records sent
    caplog.set_level(logging.INFO, logger="flowscope.decoders")
    for data, exporter in ((datagram([one, one], count=3), "192.0.2.1"), (bytes(v5), "192.0.2.2")):
        dec = decoders_mod.Decoder()
        b = dec.decode(data, exporter, 6343, RECV)
        assert b.error is None and len(b) == 2, (exporter, b.error)
        assert dec.stats()[exporter]["errors"] == {"bad_count": 1}, exporter
        logged = [r for r in caplog.records if getattr(r, "exporter", None) == exporter]
        assert [getattr(r, "reason", None) for r in logged] == ["bad_count"], exporter


def test_malformed_sample_keeps_earlier_samples(decoders_mod) -> None:
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    good = flow_sample([raw_header(pkt, 60)])
    # A record whose length runs past its sample.
    body = bytearray(flow_sample([raw_header(pkt, 60)]))
    struct.pack_into(">I", body, 8 + 32 + 4, 4000)
    b = decode(decoders_mod, datagram([good, bytes(body), good]))
    assert b.error[0] == "bad_length" and len(b) == 1
    # A record count that cannot fit: the records are read while the sample holds them (no more
    # than its length allows, nothing allocated per claimed record), the shortfall is bad_count.
    huge = bytearray(good)
    struct.pack_into(">I", huge, 8 + 28, 0x7FFFFFFF)
    dec = decoders_mod.Decoder()
    b = dec.decode(datagram([good, bytes(huge)]), "192.0.2.1", 6343, RECV)
    assert b.error is None and len(b) == 2 and dec.stats()["192.0.2.1"]["errors"] == {"bad_count": 1}
    # A counter sample claiming 2^32-1 records and holding none: its header's fields, no records.
    b = dec.decode(datagram([good, rec(2, struct.pack(">III", 1, 1, 0xFFFFFFFF))]), "192.0.2.1", 6343, RECV)
    assert b.error is None and len(b) == 1 and [c["Records"] for c in b.counters] == [[]]
    assert dec.stats()["192.0.2.1"]["errors"] == {"bad_count": 2}
    # A flow sample too short for its fixed part.
    b = decode(decoders_mod, datagram([good, rec(1, b"\0" * 20)]))
    assert b.error[0] == "bad_sample" and len(b) == 1
    # An unknown agent address type.
    bad = bytearray(datagram([good]))
    struct.pack_into(">I", bad, 4, 9)
    b = decode(decoders_mod, bytes(bad))
    assert b.error[0] == "bad_sample" and len(b) == 0


def test_random_flips_of_built_datagrams(decoders_mod) -> None:
    data, _, _ = mixed_datagram()
    rng = random.Random(1)
    dec = decoders_mod.Decoder()
    for _ in range(3000):
        m = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            m[rng.randrange(len(m))] = rng.randrange(256)
        b = dec.decode(bytes(m), "192.0.2.1", 6343, RECV)
        if b.error is not None:
            assert b.error[0] in REASONS, b.error
        b.to_json()
    assert dec.decode(data, "192.0.2.1", 6343, RECV).error is None


# --------------------------------------------------------------------------------------------
# Counter samples without --counters: not decoded, counted per exporter


def _counter_captures() -> list:
    base = LOCAL if LOCAL.is_dir() and any(LOCAL.glob("generic_sflow_*.pcap")) else SHARED
    return [pytest.param(p, id=p.name) for p in sorted(base.glob("generic_sflow_*counters*.pcap"))] or [
        pytest.param(None, id="apache-corpus-absent")]


@pytest.mark.parametrize("pcap", _counter_captures())
def test_counter_samples_not_kept_are_counted_per_exporter(decoders_mod, pcap: Path | None) -> None:
    """Without --counters the collector ignored counter samples without a trace (only
    flowscope_datagrams_total moved): they are counted per exporter now (counter_samples_ignored,
    the collector's flowscope_counter_samples_ignored_total), as many as tshark finds, and the
    flow samples beside them decode as with them kept."""
    from collector.pcap import iter_udp

    if pcap is None:
        pytest.skip("no generic_sflow_*counters* capture in tests/data/corpus/sflow nor in the shared corpus")
    ref = T.load_tshark_json(pcap.parent / (pcap.stem + ".tshark.json"))
    want: collections.Counter[str] = collections.Counter()
    for dg, p in zip(iter_udp(pcap), ref["packets"], strict=True):
        want[dg.src] += sum(1 for s in T.parse_sflow(p).samples if not s.is_flow)
    assert sum(want.values()) > 0
    kept = decoders_mod.Decoder(decoders_mod.DecoderConfig(keep_counters=True))
    ignoring = decoders_mod.Decoder(decoders_mod.DecoderConfig(keep_counters=False))
    for dg in iter_udp(pcap):
        a = kept.decode(dg.payload, dg.src, dg.sport, dg.ts)
        b = ignoring.decode(dg.payload, dg.src, dg.sport, dg.ts)
        assert b.counters == [] and b.error is None
        assert b.to_dicts() == a.to_dicts()
    for exporter, n in want.items():
        assert ignoring.stats()[exporter]["protocols"]["sflow5"]["counter_samples_ignored"] == n
        assert kept.stats()[exporter]["protocols"]["sflow5"]["counter_samples_ignored"] == 0
