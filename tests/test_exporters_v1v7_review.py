"""End-to-end: NetFlow v1 and v7, the fixed-format versions beside v5 that real exporters send
(review).

fprobe exports v1, v5 or v7 (`-n`), softflowd v1 (`-v 1`); both are in the project's Debian
packages. Before, flowscope refused v1 and v7 datagrams as `bad_version` (a netflow:// listener
did not even take them) although tshark decodes them. Same method as tests/test_exporters.py:
the exporter's datagrams are captured and flowscope's decode is compared with tshark's, record
by record, and with the traffic that was sent (addresses, ports, protocol, packets, bytes,
TCP flags, ToS, times).

Cisco's formats (NetFlow Export Datagram Format): v1 has a 16-byte header (version, count,
sysUptime, unix_secs, unix_nsecs) and 48-byte records with the protocol at 38, the ToS at 39
and the TCP flags at 40 (no AS numbers, masks or sequence number); v7 has v5's 24-byte header
(its last 4 bytes reserved) and 52-byte records, v5's layout with router_sc after them.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path

import pytest

from tests.support import exporters as E
from tests.support import pcapgen as G
from tests.test_exporters import (
    START,
    _flow_key,
    _generated_key,
    _skip_unless,
    capture_export,
    check_against_traffic,
    decode_capture,
)


def _traffic() -> list[G.Flow]:
    """The standard IPv4 flows (v1 and v7 carry IPv4 only), each with a ToS of its own."""
    flows = [g for g in G.standard_flows() if not g.v6]
    for i, g in enumerate(flows):
        g.tos = 0x20 + 8 * i
    return flows


def _check_fields(flows: list[dict], generated: list[G.Flow], protocol: str) -> list[str]:
    """Per flow: the protocol name, the ToS's DSCP (one-way flows) and (TCP) the union of the
    flags sent."""
    want = {_generated_key(g): g for g in generated}
    problems = []
    for f in flows:
        g = want.get(_flow_key(f))
        if f.get("FlowProtocol") != protocol:
            problems.append(f"{_flow_key(f)}: FlowProtocol {f.get('FlowProtocol')!r}, not {protocol}")
        if g is None:
            continue
        reverse = (g.dst, g.src, g.proto, g.dport, g.sport) in {(x.src, x.dst, x.proto, x.sport, x.dport)
                                                                  for x in generated}
        # (softflowd keeps a conversation in one entry: its reverse direction goes out with ToS 0)
        if not reverse and f.get("Dscp") != g.tos >> 2:
            problems.append(f"{_flow_key(f)}: Dscp {f.get('Dscp')}, sent ToS {g.tos:#x}")
        if g.proto == G.TCP and f.get("TcpFlagsRaw", 0) & ~g.all_flags():
            problems.append(f"{_flow_key(f)}: TCP flags {f.get('TcpFlagsRaw')}, sent {g.all_flags():#x}")
    tcp = {}
    for f in flows:
        if f.get("Proto") == G.TCP:
            tcp[_flow_key(f)] = tcp.get(_flow_key(f), 0) | f.get("TcpFlagsRaw", 0)
    problems += [f"{k}: TCP flags {v:#x}, sent {want[k].all_flags():#x}" for k, v in tcp.items()
                 if k in want and v != want[k].all_flags()]
    return problems


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 7])
def test_fprobe_netflow_v1_v7(version: int, workdir: Path, decoders_mod) -> None:
    """fprobe -n 1 and -n 7 (live capture of tcpreplay'd traffic on a veth): every record as
    tshark reads it, and the flows as sent; enough flows for several datagrams (fprobe sends
    v1 24 and v7 27 records a datagram), whose v7 flow_sequence counts flows: none lost."""
    from collector.pcap import iter_udp

    _skip_unless("fprobe", "tcpreplay")
    generated = _traffic() + [G.Flow(f"10.1.1.{i + 1}", "10.2.0.2", G.UDP, 41000 + i, 80, packets=1 + i % 3,
                                     payload=100) for i in range(60)]
    (workdir / E.PCAP_NAME).write_bytes(G.build_pcap(generated, start=START, gap=0.001))
    began = time.time()
    cap, port = capture_export(workdir, lambda ns, port: E.run_fprobe(ns, workdir, port, version=version,
                                                                      flows=len(generated), extra=("-q", "10000")))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    # fprobe's header uptime moves in whole seconds (as in test_fprobe)
    problems += check_against_traffic(flows, generated, start=began, time_slack_ms=3000)
    problems += _check_fields(flows, generated, f"netflow{version}")
    datagrams = list(iter_udp(cap))
    assert len(datagrams) >= 3, f"{len(datagrams)} datagrams: too few to read the numbering"
    if version == 7:
        dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
        for d in datagrams:
            dec.decode(d.payload, d.src, d.sport, d.ts)
        st = dec.stats()[datagrams[0].src]["protocols"]["netflow7"]
        assert (st["sequence_lost"], st["sequence_resets"]) == (0, 0), st
    assert not problems, "\n".join(problems[:20])


@pytest.mark.root
@pytest.mark.slow
def test_softflowd_netflow_v1(workdir: Path, decoders_mod) -> None:
    """softflowd -v 1 reading a pcap (-a: the pcap's clock): every record as tshark reads it,
    and the flows as sent, times included."""
    _skip_unless("softflowd")
    generated = _traffic()
    (workdir / E.PCAP_NAME).write_bytes(G.build_pcap(generated, start=START))
    cap, port = capture_export(workdir, lambda ns, port: E.run_softflowd(ns, workdir, "1", port))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    problems += check_against_traffic(flows, generated)
    problems += _check_fields(flows, generated, "netflow1")
    problems += [f"{_flow_key(f)}: SequenceNum {f['SequenceNum']} (v1 has no sequence number)" for f in flows
                 if "SequenceNum" in f]
    assert not problems, "\n".join(problems)


def _v1(records: list[bytes], *, uptime: int = 10_000, secs: int = 1_700_000_010) -> bytes:
    return struct.pack("!HHIII", 1, len(records), uptime, secs, 0) + b"".join(records)


def _v7(records: list[bytes], *, seq: int, uptime: int = 10_000, secs: int = 1_700_000_010) -> bytes:
    return struct.pack("!HHIIIII", 7, len(records), uptime, secs, 0, seq, 0) + b"".join(records)


def _ip(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


def test_v1_and_v7_record_layouts(decoders_mod) -> None:
    """Without an exporter: v1's TCP flags are at offset 40 (36 and 37 are padding), it has no
    AS numbers or masks; v7's 52-byte records have v5's fields and router_sc (the router that
    shortcut the flow) after them; v7's flow_sequence counts flows, so a skipped datagram's
    records are counted as lost; a count beyond what the datagram holds decodes what is there."""
    head = _ip("10.0.0.1") + _ip("10.0.0.2") + _ip("10.0.0.254") + struct.pack("!HHII", 3, 4, 5, 500)
    times = struct.pack("!II", 9_000, 9_500)
    # v1: ports, pad1 (2, set to garbage here), prot, tos, flags, 3 pad bytes, 4 reserved
    v1 = head + times + struct.pack("!HHHBBB3sI", 1234, 80, 0xFFFF, 6, 0xB8, 0x12, b"\xff\xff\xff", 0xFFFFFFFF)
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    (f,) = dec.decode(_v1([v1]), "192.0.2.1", 2055, 1_700_000_010.5).to_dicts()
    assert (f["FlowProtocol"], f["SrcAddr"], f["DstAddr"], f["InIf"], f["OutIf"]) == ("netflow1", "10.0.0.1",
                                                                                       "10.0.0.2", 3, 4)
    assert (f["Packets"], f["Bytes"], f["SrcPort"], f["DstPort"], f["Proto"]) == (5, 500, 1234, 80, 6)
    assert (f["Dscp"], f["TcpFlagsRaw"], f["Flags"]) == (0xB8 >> 2, 0x12, ["SYN", "ACK"])
    assert (f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (1_700_000_009_000, 1_700_000_009_500)
    assert not {"SrcAS", "DstAS", "SrcPrefixLen", "DstPrefixLen", "SequenceNum"} & set(f), f
    # v7: v5's record (flags byte at 36 says which fields are invalid), then router_sc
    v7 = [head + times + struct.pack("!HHBBBBHHBBH", 1000 + i, 53, 0x01, 0x19, 17 if i else 6, 0x28, 65001, 65002,
                                     24, 16, 0) + _ip("192.0.2.9") for i in range(3)]
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
    flows = dec.decode(_v7(v7[:2], seq=100), "192.0.2.1", 2055, 1_700_000_010.5).to_dicts()
    assert [(f["FlowProtocol"], f["SrcPort"], f["Proto"], f.get("TcpFlagsRaw"), f["Dscp"], f["SrcAS"], f["DstAS"],
             f["SrcPrefixLen"], f["DstPrefixLen"], f["SequenceNum"]) for f in flows] == [
        ("netflow7", 1000, 6, 0x19, 10, 65001, 65002, 24, 16, 100),
        ("netflow7", 1001, 17, None, 10, 65001, 65002, 24, 16, 100)]
    # the next datagram (flows 102, 103) is lost; 104 says so: 2 flows
    dec.decode(_v7(v7[2:], seq=104), "192.0.2.1", 2055, 1_700_000_011.0)
    # a header count of 3 with 2 records: the 2 decode, the count is counted as bad
    flows = dec.decode(_v7(v7[:2], seq=105)[:2] + struct.pack("!H", 3) + _v7(v7[:2], seq=105)[4:], "192.0.2.1",
                       2055, 1_700_000_012.0).to_dicts()
    assert len(flows) == 2
    st = dec.stats(now=1_700_000_020.0)["192.0.2.1"]["protocols"]["netflow7"]
    assert (st["datagrams"], st["flows"], st["sequence_lost"], st["errors"]) == (3, 5, 2, {"bad_count": 1}), st
