"""Captures the capture review found unread: exports inside GRE and ERSPAN (a switch's remote SPAN
of the exporter's traffic), inside VXLAN and Geneve (a node's underlay), ... Each capture is checked against tshark's reading of the same file
where tshark is installed: the datagrams flowscope yields are the ones tshark decodes as cflow.

The builders are tests/test_pcap.py's (bytes assembled with struct around NetFlow v5 datagrams).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from tests.support.tshark import TSHARK
from tests.test_pcap import ROOT, T0, decode, eth, export, ip4, ip6, pcap, read, stats_of, udp, write
from tests.test_sflow import gre

OUTER4 = (bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]))
INNER_SRC = bytes([10, 0, 0, 9])


def outer4(proto: int, body: bytes, *, ident: int = 1, flags_off: int = 0) -> bytes:
    """An IPv4 packet of protocol `proto` between the two ends of a tunnel."""
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, flags_off, 64, proto, 0,
                       *OUTER4) + body


def erspan2(frame: bytes, *, version: int = 1) -> bytes:
    """ERSPAN type II header (draft-foschiano-erspan-03 4.1): version 1, VLAN 7, session 5."""
    return struct.pack("!HHI", (version << 12) | 7, 5, 0) + frame


def erspan3(frame: bytes, *, platform: bool = False) -> bytes:
    """ERSPAN type III header (4.2): version 2, timestamp, SGT, hardware id 3; with the O bit, the
    8-byte platform-specific subheader follows."""
    return (struct.pack("!HHIHH", (2 << 12) | 7, 5, 123456, 0, (3 << 4) | int(platform))
            + (b"\0" * 8 if platform else b"") + frame)


def tshark_cflow(path: Path) -> list[tuple[str, bytes]]:
    """(inner source, UDP payload) of every frame tshark decodes as cflow, in order."""
    import subprocess

    assert TSHARK is not None
    out = subprocess.run([TSHARK, "-r", str(path), "-n", "-Y", "cflow", "-T", "fields", "-E", "separator=|",
                          "-e", "frame.protocols", "-e", "ip.src", "-e", "ipv6.src", "-e", "udp.payload"],
                         capture_output=True, check=True, timeout=120).stdout.decode()
    got = []
    for line in out.splitlines():
        protos, v4, v6, payload = line.split("|")
        # every header of a kind is listed, outer first: the export's are the last IP and UDP
        fam = [p for p in protos.split(":") if p in ("ip", "ipv6")][-1]
        got.append(((v4 if fam == "ip" else v6).split(",")[-1], bytes.fromhex(payload.split(",")[-1])))
    return got


def test_exports_inside_gre_and_erspan_are_read_as_tshark_reads_them(tmp_path: Path) -> None:
    """A SPAN session mirrored to a remote analyser (Cisco ERSPAN, Open vSwitch erspan/gre ports,
    cloud traffic mirroring) or a GRE tunnel puts the exporter's packets inside GRE (IP protocol
    47). They were all skipped as not_udp: `flowscope decode` of such a capture printed nothing.
    Now GRE carrying IPv4/IPv6 and Ethernet (0x6558), ERSPAN type I (0x88BE without a sequence
    number), type II (0x88BE, 8-byte header) and type III (0x22EB, 12-byte header, plus the
    platform subheader when O is set) are opened, over IPv4 and IPv6, as tshark opens them; the
    outer packet fragmented (a mirrored 1500-byte frame plus the GRE/ERSPAN header is over the
    MTU) is reassembled first."""
    dgs = [export(i, 3) for i in range(9)]
    inner = [ip4(udp(d), src=INNER_SRC) for d in dgs]
    big = export(8)  # 30 records: 1464 bytes, the mirrored frame 1506, GRE+ERSPAN II 1526
    mirrored = gre(0x88BE, erspan2(eth(ip4(udp(big), src=INNER_SRC))), seq=10)
    frames = [
        eth(outer4(47, gre(0x0800, inner[0]))),
        eth(outer4(47, gre(0x6558, eth(inner[1]), csum=True, key=9, seq=1))),
        eth(outer4(47, gre(0x88BE, eth(inner[2])))),                               # ERSPAN I
        eth(outer4(47, gre(0x88BE, erspan2(eth(inner[3])), seq=7))),               # ERSPAN II
        eth(ip6(47, gre(0x22EB, erspan3(eth(inner[4])), seq=8))),                  # ERSPAN III, IPv6
        eth(outer4(47, gre(0x22EB, erspan3(eth(inner[5]), platform=True), seq=9))),
        eth(outer4(47, gre(0x86DD, ip6(17, udp(dgs[6]))))),
        # a tagged mirrored frame
        eth(outer4(47, gre(0x88BE, erspan2(eth(struct.pack("!HH", 5, 0x0800) + inner[7], 0x8100)), seq=11))),
        eth(outer4(47, mirrored[:1000], ident=77, flags_off=0x2000)),
        eth(outer4(47, mirrored[1000:], ident=77, flags_off=1000 // 8)),
    ]
    want = [(("10.0.0.9" if n != 6 else "2001:db8::1"), d) for n, d in enumerate(dgs[:8])] + [("10.0.0.9", big)]
    cap = write(tmp_path, "gre.pcap", pcap(frames))
    got, st = read(cap)
    assert [(d.src, d.payload) for d in got] == want
    assert [(d.dst, d.dport) for d in got][-1] == ("192.0.2.1", 2055)
    assert st.skipped == {} and st.datagrams == 9 and st.frames == 10
    if TSHARK:
        assert tshark_cflow(cap) == want

    # GRE that carries something else, or whose header is cut, is counted, never a traceback
    others = [
        eth(outer4(47, gre(0x880B, b"\xff\x03\x00\x21" + inner[0], flags=1))),   # PPTP (GRE version 1)
        eth(outer4(47, gre(0x8137, b"\xff\xff" + inner[0]))),                    # IPX (MPLS is read)
        eth(outer4(47, gre(0x88BE, erspan2(eth(inner[0]), version=3), seq=1))),  # unknown ERSPAN version
        eth(outer4(47, b"\x30\x00\x88\xbe\0\0")),                                # key+seq announced, cut
        eth(outer4(47, gre(0x6558, b"\0" * 10))),                                # Ethernet header cut
    ]
    got, st = read(write(tmp_path, "others.pcap", pcap(others)))
    assert got == [] and st.skipped == {"unsupported_tunnel": 3, "truncated_tunnel": 2}
    p = decode(str(write(tmp_path, "mixed.pcap", pcap(others + frames))), "--stats")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 8 * 3 + 30
    assert stats_of(p)["capture"]["skipped"] == {"unsupported_tunnel": 3, "truncated_tunnel": 2}


def test_exports_inside_vxlan_and_geneve_are_read_as_tshark_reads_them(tmp_path: Path) -> None:
    """A capture on a node's underlay (`tcpdump -i eth0`) has an export to a collector on another
    node inside the overlay: Geneve (UDP 6081) on OVN-Kubernetes, VXLAN (UDP 4789) on an OVS
    vxlan port. flowscope yielded the outer datagrams, to port 4789/6081, as if they were exports
    (decode errors, and nothing with --port 2055); tshark decodes the export inside. Here a real
    Linux VXLAN device carries `flowscope replay`'s datagrams (fragmented inside the tunnel: the
    VXLAN device's MTU is 1450), captured by tcpdump on the veth underneath; and Geneve built
    byte by byte: Ethernet, IPv4 and IPv6 payloads, with options."""
    from tests.support import netns as N

    dgs = [export(i) for i in range(4)]
    src = write(tmp_path, "src.pcap", pcap([eth(ip4(udp(d))) for d in dgs]))
    # Geneve, tshark's reading checked below
    gen = [
        eth(outer4(17, udp(struct.pack("!BBHI", 0, 0, 0x6558, 5 << 8) + eth(ip4(udp(dgs[0]), src=INNER_SRC)),
                       sport=40000, dport=6081))),
        eth(outer4(17, udp(struct.pack("!BBHI", 2, 0, 0x0800, 5 << 8) + struct.pack("!HBBI", 0x0102, 3, 1, 9)
                           + ip4(udp(dgs[1]), src=INNER_SRC), sport=40000, dport=6081))),
        eth(outer4(17, udp(struct.pack("!BBHI", 0, 0, 0x86DD, 5 << 8) + ip6(17, udp(dgs[2])),
                       sport=40000, dport=6081))),
        # not a Geneve header (version 1): the datagram is read as it is
        eth(outer4(17, udp(b"\x40\x00\x65\x58" + bytes(4) + dgs[3], sport=40000, dport=6081))),
    ]
    cap = write(tmp_path, "geneve.pcap", pcap(gen))
    got, st = read(cap)
    want = [("10.0.0.9", 2055, dgs[0]), ("10.0.0.9", 2055, dgs[1]), ("2001:db8::1", 2055, dgs[2]),
            ("198.51.100.1", 6081, b"\x40\x00\x65\x58" + bytes(4) + dgs[3])]
    assert [(d.src, d.dport, d.payload) for d in got] == want
    assert st.datagrams == 4 and st.skipped == {}
    if TSHARK:
        assert tshark_cflow(cap) == [(s, d) for s, _p, d in want[:3]]

    reason = N.root_skip_reason("tcpdump")
    if reason:
        pytest.skip(reason)
    with N.NetNS() as a, N.NetNS() as b:
        end_a, end_b = N.veth_between(a, b)
        a.run(["ip", "addr", "add", "192.168.77.1/24", "dev", end_a])
        a.run(["ip", "link", "add", "vx0", "type", "vxlan", "id", "5", "dstport", "4789", "local", "192.168.77.1",
               "remote", "192.168.77.2"])
        a.run(["ip", "addr", "add", "10.10.0.1/24", "dev", "vx0"])
        a.run(["ip", "link", "set", "vx0", "up"])
        # no receiver is needed on the other side: static neighbours, so nothing waits for ARP
        a.run(["ip", "neigh", "replace", "192.168.77.2", "lladdr", "02:00:00:00:00:02", "dev", end_a])
        a.run(["ip", "neigh", "replace", "10.10.0.2", "lladdr", "02:00:00:00:00:03", "dev", "vx0"])
        capture = N.Capture(b, tmp_path / "vxlan.pcap", iface=end_b)
        a.run([sys.executable, "-m", "collector.cli", "replay", str(src), "--to", "10.10.0.2:2055"], cwd=ROOT)
        vx = capture.stop()
    got, st = read(vx)
    assert [(d.src, d.dport, d.payload) for d in got] == [("10.10.0.1", 2055, d) for d in dgs]
    # two fragments each; the VXLAN device's own IPv6 (router solicitations, MLD) is not UDP inside
    assert st.datagrams == 4 and set(st.skipped) <= {"not_udp"}
    assert st.frames == 8 + st.skipped.get("not_udp", 0)
    if TSHARK:
        assert tshark_cflow(vx) == [("10.10.0.1", d) for d in dgs]
    p = decode(str(vx), "--port", "2055")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 4 * 30


def test_a_datagram_captured_twice_is_read_once(tmp_path: Path) -> None:
    """A capture on several interfaces holds each datagram once per interface it crossed
    (`tcpdump -i any` on a node: the pod's veth and the bridge); flowscope decoded each copy,
    doubling every flow (fragmented datagrams were already whole once, as duplicate_fragments).
    A copy within DUPLICATE_WINDOW_S is skipped and counted as duplicate_datagrams; the same
    bytes later (a resend) and different bytes stay."""
    from collector.pcap import DUPLICATE_WINDOW_S

    d0, d1 = export(0, 5), export(1, 5)
    frames = [eth(ip4(udp(d0))), eth(ip4(udp(d0))), eth(ip4(udp(d1))), eth(ip4(udp(d0)))]
    ts = [T0, T0 + 0.00001, T0 + 0.00002, T0 + 10 * DUPLICATE_WINDOW_S]
    got, st = read(write(tmp_path, "copies.pcap", pcap(frames, ts=ts)))
    assert [d.payload for d in got] == [d0, d1, d0]
    assert st.datagrams == 3 and st.skipped == {"duplicate_datagrams": 1} and st.frames == 4

    from tests.support import netns as N

    reason = N.root_skip_reason("tcpdump")
    if reason:
        pytest.skip(reason)
    dgs = [export(i) for i in range(2, 6)] + [export(i, 5) for i in range(6, 10)]  # fragmented and not
    src = write(tmp_path, "src.pcap", pcap([eth(ip4(udp(d))) for d in dgs]))
    with N.NetNS() as a, N.NetNS() as b:
        end_a, end_b = N.veth_between(a, b)
        b.run(["ip", "link", "add", "br0", "type", "bridge"])
        b.run(["ip", "link", "set", end_b, "master", "br0"])
        b.run(["ip", "link", "set", "br0", "up"])
        a.run(["ip", "link", "set", end_a, "mtu", "1280"])   # the 30-record ones in two fragments
        a.run(["ip", "addr", "add", "10.78.0.1/24", "dev", end_a])
        b.run(["ip", "addr", "add", "10.78.0.2/24", "dev", "br0"])
        N.udp_sink(b, "10.78.0.2", 2055)
        capture = N.Capture(b, tmp_path / "any.pcap", iface="any", bpf="udp port 2055 or (ip[6:2] & 0x1fff != 0)")
        a.run([sys.executable, "-m", "collector.cli", "replay", str(src), "--to", "10.78.0.2:2055"], cwd=ROOT)
        cap = capture.stop()
    got, st = read(cap)
    assert [(d.src, d.payload) for d in got] == [("10.78.0.1", d) for d in dgs]
    # each datagram was seen on the bridge port and on the bridge: the second copy of a fragmented
    # one is two duplicate fragments, of a whole one a duplicate datagram
    assert st.skipped == {"duplicate_datagrams": 4, "duplicate_fragments": 8} and st.frames == 2 * 12, st
    if TSHARK:
        # tshark shows the whole ones' copies (its reassembly takes a fragmented one's once)
        assert len(tshark_cflow(cap)) == len(dgs) + 4
    p = decode(str(cap), "--port", "2055")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 4 * 30 + 4 * 5
