"""Captures the capture review found unread: exports inside GRE and ERSPAN (a switch's remote SPAN
of the exporter's traffic), ... Each capture is checked against tshark's reading of the same file
where tshark is installed: the datagrams flowscope yields are the ones tshark decodes as cflow.

The builders are tests/test_pcap.py's (bytes assembled with struct around NetFlow v5 datagrams).
"""

from __future__ import annotations

import struct
from pathlib import Path

from tests.support.tshark import TSHARK
from tests.test_pcap import decode, eth, export, ip4, ip6, pcap, read, stats_of, udp, write

OUTER4 = (bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]))
INNER_SRC = bytes([10, 0, 0, 9])


def outer4(proto: int, body: bytes, *, ident: int = 1, flags_off: int = 0) -> bytes:
    """An IPv4 packet of protocol `proto` between the two ends of a tunnel."""
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, flags_off, 64, proto, 0,
                       *OUTER4) + body


def gre(ptype: int, body: bytes, *, csum: bool = False, key: int | None = None, seq: int | None = None,
        flags: int = 0) -> bytes:
    """A GRE header (RFC 2784, key and sequence number from RFC 2890) in front of body."""
    flags |= (0x8000 if csum else 0) | (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0)
    h = struct.pack("!HH", flags, ptype)
    if csum:
        h += b"\0" * 4
    if key is not None:
        h += struct.pack("!I", key)
    if seq is not None:
        h += struct.pack("!I", seq)
    return h + body


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
        eth(outer4(47, gre(0x8847, b"\0\0\x01\xff" + inner[0]))),              # MPLS
        eth(outer4(47, gre(0x88BE, erspan2(eth(inner[0]), version=3), seq=1))),  # unknown ERSPAN version
        eth(outer4(47, b"\x30\x00\x88\xbe\0\0")),                                # key+seq announced, cut
        eth(outer4(47, gre(0x6558, b"\0" * 10))),                                # Ethernet header cut
    ]
    got, st = read(write(tmp_path, "others.pcap", pcap(others)))
    assert got == [] and st.skipped == {"unsupported_tunnel": 3, "truncated_tunnel": 2}
    p = decode(str(write(tmp_path, "mixed.pcap", pcap(others + frames))), "--stats")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 8 * 3 + 30
    assert stats_of(p)["capture"]["skipped"] == {"unsupported_tunnel": 3, "truncated_tunnel": 2}
