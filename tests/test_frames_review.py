"""Frames and files the frames review found unread by `flowscope decode` / `replay` while tshark
reads the export in them: link layers between Ethernet and IP (LLC/SNAP, PPPoE, MPLS), IP tunnels
without GRE, and old pcap variants. Each capture is built here with struct (tests/test_pcap.py's
builders around NetFlow v5 datagrams) and checked against tshark's reading of the same file where
tshark is installed: the datagrams flowscope yields are the ones tshark decodes as cflow.
"""

from __future__ import annotations

import struct
from pathlib import Path

from tests.support.tshark import TSHARK
from tests.test_captures_review import tshark_cflow
from tests.test_pcap import decode, export, ip4, ip6, pcap, read, stats_of, udp, write

MACS = b"\x00\x11\x22\x33\x44\x55\x00\x66\x77\x88\x99\xaa"
SNAP_IP4 = b"\xaa\xaa\x03\x00\x00\x00\x08\x00"  # LLC UI, SNAP OUI 0 (RFC 1042), EtherType IPv4


def tag(vid: int, etype: int) -> bytes:
    """The 4 bytes after a VLAN TPID: TCI, then the EtherType (or 802.3 length) it carries."""
    return struct.pack("!HH", vid, etype)


def sll(proto: int, pkt: bytes, *, hatype: int = 1) -> bytes:
    """A Linux cooked (v1) header: incoming, ARPHRD `hatype`, a 6-byte address, protocol."""
    return struct.pack("!HHH8sH", 0, hatype, 6, MACS[:6] + b"\0\0", proto) + pkt


def sll2(proto: int, pkt: bytes, *, hatype: int = 1) -> bytes:
    return struct.pack("!HHIHBB8s", proto, 0, 2, hatype, 0, 6, MACS[:6] + b"\0\0") + pkt


def dot3(llc: bytes, length: int | None = None) -> bytes:
    """An IEEE 802.3 frame: the type field is the length of what follows (<= 1500)."""
    return MACS + struct.pack("!H", len(llc) if length is None else length) + llc


def check_tshark(cap: Path, want: list[tuple[str, bytes]]) -> None:
    if TSHARK:
        assert tshark_cflow(cap) == want


# --- 1. 802.3 frames with LLC/SNAP -----------------------------------------------------------

def test_llc_snap_frames_are_read_as_tshark_reads_them(tmp_path: Path) -> None:
    """An IEEE 802.3 frame (type field <= 1500: a length) carrying IP in LLC/SNAP (RFC 1042: AA AA
    03, OUI 0, then the EtherType; Cisco's OUI 00-00-F8 the same) was skipped as not_ip, bare and
    after 802.1Q tags; and so was `tcpdump -i any`'s copy of it, Linux cooked with protocol 0x0004
    (ETH_P_802_2: the kernel strips the 802.3 header and keeps the LLC one). tshark: eth:llc:ip.
    The length bounds the LLC data (what follows is padding); other SAPs (STP's 42 42) stay
    not_ip."""
    dgs = [export(i, 3) for i in range(7)]
    p = [ip4(udp(d)) for d in dgs]
    frames = [
        dot3(SNAP_IP4 + p[0]),
        dot3(b"\xaa\xaa\x03\x00\x00\x00\x86\xdd" + ip6(17, udp(dgs[1]))),
        dot3(b"\xaa\xaa\x03\x00\x00\xf8\x08\x00" + p[2]),
        MACS + struct.pack("!H", 0x8100) + tag(5, 8 + len(p[3])) + SNAP_IP4 + p[3],
        MACS + struct.pack("!H", 0x88A8) + tag(7, 0x8100) + tag(5, 8 + len(p[4])) + SNAP_IP4 + p[4],
        dot3(SNAP_IP4 + p[5]) + b"\0" * 20,   # padded past the length
        dot3(b"\x42\x42\x03" + b"\0" * 35),   # STP: not IP
        dot3(b"\xaa\xaa\x03\x00\x00\x0c\x20\x00" + b"\0" * 30),   # Cisco OUI (CDP): not IP
    ]
    want = [("10.0.0.1", dgs[0]), ("2001:db8::1", dgs[1])] + [("10.0.0.1", d) for d in dgs[2:6]]
    cap = write(tmp_path, "snap.pcap", pcap(frames))
    got, st = read(cap)
    assert [(d.src, d.payload) for d in got] == want
    assert st.skipped == {"not_ip": 2}
    check_tshark(cap, want)

    cooked = write(tmp_path, "sll.pcap", pcap([sll(4, SNAP_IP4 + p[6])], linktype=113))
    cooked2 = write(tmp_path, "sll2.pcap", pcap([sll2(4, SNAP_IP4 + p[6])], linktype=276))
    for c in (cooked, cooked2):
        got, st = read(c)
        assert [d.payload for d in got] == [dgs[6]] and st.skipped == {}, c
        check_tshark(c, [("10.0.0.1", dgs[6])])
    out = decode(str(cap), "--stats")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 6 * 3
    assert stats_of(out)["capture"]["skipped"] == {"not_ip": 2}


# --- 2. PPPoE sessions -----------------------------------------------------------------------

def pppoe(proto: bytes, pkt: bytes) -> bytes:
    """PPPoE session header (RFC 2516 4: ver/type 0x11, code 0, session 0x1234, the length of
    the PPP data), then the PPP protocol field (2 bytes, or 1 when compressed)."""
    return struct.pack("!BBHH", 0x11, 0, 0x1234, len(proto) + len(pkt)) + proto + pkt


def test_pppoe_session_frames_are_read_as_tshark_reads_them(tmp_path: Path) -> None:
    """A capture on a BNG's or a home gateway's access side has the exporter's packets in PPPoE
    sessions (EtherType 0x8864, PPP protocol 0x0021 IPv4, 0x0057 IPv6): skipped as not_ip, where
    tshark reads eth:pppoes:ppp:ip:udp:cflow; bare, under QinQ tags (a BNG's S-tag and C-tag), with
    a compressed protocol field (RFC 1661 6.5, which tshark reads too) and in a Linux cooked
    capture. The PPPoE length bounds the packet; PPP that is not IP (LCP) and PPPoE discovery
    (0x8863) stay not_ip."""
    dgs = [export(i, 3) for i in range(5)]
    p = [ip4(udp(d)) for d in dgs]
    frames = [
        MACS + b"\x88\x64" + pppoe(b"\x00\x21", p[0]),
        MACS + b"\x88\x64" + pppoe(b"\x00\x57", ip6(17, udp(dgs[1]))),
        MACS + b"\x88\xa8" + tag(100, 0x8100) + tag(7, 0x8864) + pppoe(b"\x00\x21", p[2]),
        MACS + b"\x88\x64" + pppoe(b"\x21", p[3]) + b"\0" * 12,   # compressed protocol, padded frame
        MACS + b"\x88\x64" + pppoe(b"\xc0\x21", b"\x01\x01\x00\x04"),   # LCP
        MACS + b"\x88\x63" + struct.pack("!BBHH", 0x11, 0x09, 0, 4) + b"\x01\x01\x00\x00",   # PADI
    ]
    want = [("10.0.0.1", dgs[0]), ("2001:db8::1", dgs[1]), ("10.0.0.1", dgs[2]), ("10.0.0.1", dgs[3])]
    cap = write(tmp_path, "pppoe.pcap", pcap(frames))
    got, st = read(cap)
    assert [(d.src, d.payload) for d in got] == want
    assert st.skipped == {"not_ip": 2}
    check_tshark(cap, want)
    cooked = write(tmp_path, "sll.pcap", pcap([sll(0x8864, pppoe(b"\x00\x21", p[4]))], linktype=113))
    got, st = read(cooked)
    assert [d.payload for d in got] == [dgs[4]] and st.skipped == {}
    check_tshark(cooked, [("10.0.0.1", dgs[4])])
    out = decode(str(cap), "--stats")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 4 * 3
