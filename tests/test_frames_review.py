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
from tests.test_captures_review import INNER_SRC, outer4, tshark_cflow
from tests.test_pcap import T0, decode, eth, export, ip4, ip6, pcap, read, stats_of, udp, write
from tests.test_sflow import gre

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


# --- 3. MPLS ---------------------------------------------------------------------------------

def mpls(*labels: int, body: bytes) -> bytes:
    """A label stack entry per label (RFC 3032 2.1: label, TC 0, S on the last, TTL 64)."""
    return b"".join(struct.pack("!I", (label << 12) | (0x100 if n == len(labels) - 1 else 0) | 64)
                    for n, label in enumerate(labels)) + body


def test_mpls_label_stacks_are_read_as_tshark_reads_them(tmp_path: Path) -> None:
    """A capture on a provider's core or a PE's uplink has the exporter's packets under MPLS
    labels (EtherType 0x8847, 0x8848 multicast): skipped as not_ip. tshark walks the stack to the
    bottom-of-stack entry and guesses the payload by its first nibble (RFC 4928): 4 IPv4, 6 IPv6,
    0 an Ethernet pseudowire (RFC 4448), with the control word (RFC 4385) before the frame or not;
    behind VLAN tags, in Linux cooked captures, inside GRE (0x8847, RFC 4023: this was counted
    unsupported_tunnel) and MPLS-in-UDP (port 6635, RFC 7510), and in PPP (0x0281). A G-ACh under
    the GAL (label 13) and other nibbles stay not_ip, as tshark shows them as data."""
    dgs = [export(i, 2) for i in range(14)]
    p = [ip4(udp(d), src=INNER_SRC) for d in dgs]
    vendor = b"\x00\x1b\x21\x01\x02\x03\x00\x0c\x29\x04\x05\x06"   # Intel, VMware: known to tshark
    frames = [
        MACS + b"\x88\x47" + mpls(100, body=p[0]),
        MACS + b"\x88\x47" + mpls(100, 7, 12345, 200, body=p[1]),   # entropy label (RFC 6790)
        MACS + b"\x88\x47" + mpls(2, body=ip6(17, udp(dgs[2]))),
        MACS + b"\x88\x48" + mpls(100, body=p[3]),
        MACS + b"\x81\x00" + tag(5, 0x8847) + mpls(16, body=p[4]),
        MACS + b"\x91\x00" + tag(5, 0x8847) + mpls(16, 17, body=p[5]),
        # an Ethernet pseudowire with the control word, the frame inside tagged
        MACS + b"\x88\x47" + mpls(100, 200, body=b"\0\0\0\1" + MACS + b"\x81\x00" + tag(9, 0x0800) + p[6]),
        # and without it
        MACS + b"\x88\x47" + mpls(100, 200, body=vendor + b"\x08\x00" + p[7]),
        MACS + b"\x88\x64" + pppoe(b"\x02\x81", mpls(100, body=p[8])),
        eth(outer4(47, gre(0x8847, mpls(0, body=p[9])))),
        eth(outer4(17, udp(mpls(100, body=p[10]), sport=49152, dport=6635))),
        MACS + b"\x88\x47" + mpls(13, body=b"\x10\x00\x00\x07" + p[11]),   # GAL + G-ACh
        MACS + b"\x88\x47" + mpls(100, body=b"\x5a" + p[11]),              # a nibble tshark does not guess
        MACS + b"\x88\x47" + struct.pack("!I", 100 << 12),                 # no bottom of stack
    ]
    want = [("10.0.0.9", dgs[0]), ("10.0.0.9", dgs[1]), ("2001:db8::1", dgs[2])] + [
        ("10.0.0.9", d) for d in dgs[3:11]]
    cap = write(tmp_path, "mpls.pcap", pcap(frames))
    got, st = read(cap)
    assert [(d.src, d.payload) for d in got] == want
    assert [(d.dst, d.sport, d.dport) for d in got][-1] == ("192.0.2.1", 50000, 2055)
    assert st.skipped == {"not_ip": 3}
    check_tshark(cap, want)
    cooked = write(tmp_path, "sll.pcap", pcap([sll(0x8847, mpls(100, body=p[12]))], linktype=113))
    got, st = read(cooked)
    assert [d.payload for d in got] == [dgs[12]] and st.skipped == {}
    check_tshark(cooked, [("10.0.0.9", dgs[12])])
    out = decode(str(cap), "--stats")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == len(want) * 2


# --- 4. IP in IP -----------------------------------------------------------------------------

def test_ip_in_ip_tunnels_are_read_as_tshark_reads_them(tmp_path: Path) -> None:
    """An export routed over an ipip, sit (6in4), ip6tnl or MPLS-in-IP tunnel, captured on the
    underlay, is IP protocol 4 (IPv4), 41 (IPv6) or 137 (MPLS, RFC 4023) inside the outer IPv4 or
    IPv6 packet: skipped as not_udp, where tshark reads ip:ip:udp:cflow. `tcpdump -i any` on such a
    node records the export twice, on the tunnel device (Linux cooked, ARPHRD_TUNNEL 768,
    ARPHRD_SIT 776, ARPHRD_IPGRE 778, ARPHRD_IP6GRE 823: the protocol field is the inner EtherType,
    which was already read) and on the underlay: now read once, the copy a duplicate_datagrams."""
    dgs = [export(i, 3) for i in range(6)]
    p = [ip4(udp(d), src=INNER_SRC) for d in dgs]
    frames = [
        eth(outer4(4, p[0])),
        eth(outer4(41, ip6(17, udp(dgs[1])))),
        eth(ip6(4, p[2])),
        eth(ip6(41, ip6(17, udp(dgs[3])))),
        eth(outer4(137, mpls(100, body=p[4]))),
    ]
    want = [("10.0.0.9", dgs[0]), ("2001:db8::1", dgs[1]), ("10.0.0.9", dgs[2]), ("2001:db8::1", dgs[3]),
            ("10.0.0.9", dgs[4])]
    cap = write(tmp_path, "ipip.pcap", pcap(frames))
    got, st = read(cap)
    assert [(d.src, d.payload) for d in got] == want and st.skipped == {}
    check_tshark(cap, want)

    cooked = [
        sll(0x0800, p[5], hatype=768),      # on the ipip device
        sll(0x0800, outer4(4, p[5])),        # the same packet on the underlay, 10 us later
        sll(0x0800, p[0], hatype=778),
        sll(0x86DD, ip6(17, udp(dgs[1])), hatype=776),
        sll(0x0800, p[2], hatype=823),
    ]
    any_cap = write(tmp_path, "any.pcap", pcap(cooked, linktype=113, ts=[T0, T0 + 1e-5, T0 + 5, T0 + 6, T0 + 7]))
    got, st = read(any_cap)
    assert [(d.src, d.payload) for d in got] == [("10.0.0.9", dgs[5]), ("10.0.0.9", dgs[0]),
                                                 ("2001:db8::1", dgs[1]), ("10.0.0.9", dgs[2])]
    assert st.skipped == {"duplicate_datagrams": 1}
    if TSHARK:  # tshark shows both copies
        assert tshark_cflow(any_cap) == [("10.0.0.9", dgs[5])] * 2 + [
            ("10.0.0.9", dgs[0]), ("2001:db8::1", dgs[1]), ("10.0.0.9", dgs[2])]
    out = decode(str(cap), "--stats")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == len(want) * 3


# --- 5. old pcap variants --------------------------------------------------------------------

def old_pcap(frames: list[bytes], *, magic: int = 0xA1B2C3D4, endian: str = "<", minor: int = 4,
             extra: bytes = b"", swapped: bool = False, cut: int = 0) -> bytes:
    """A pcap file: `extra` follows each 16-byte record header; `swapped` writes the original
    length before the captured one; `cut` bytes of each frame are not captured."""
    out = [struct.pack(endian + "IHHiIII", magic, 2, minor, 0, 0, 65535, 1)]
    for n, f in enumerate(frames):
        kept = f[: len(f) - cut]
        lens = (len(f), len(kept)) if swapped else (len(kept), len(f))
        out.append(struct.pack(endian + "IIII", T0 + n, 250_000, *lens) + extra + kept)
    return b"".join(out)


def test_kuznetsov_modified_pcap_is_read_as_libpcap_and_tshark_read_it(tmp_path: Path) -> None:
    """Magic 0xa1b2cd34 (libpcap's KUZNETZOV_TCPDUMP_MAGIC: the patched tcpdump of Red Hat 6.x
    era Linux) has 24-byte record headers: the usual 16 bytes, then the interface index, the
    protocol, the packet type and a pad byte. libpcap's sf-pcap.c and tshark read it, in either
    byte order; flowscope refused it as not a pcap file."""
    dgs = [export(i, 3) for i in range(3)]
    frames = [eth(ip4(udp(d))) for d in dgs]
    for endian in "<>":
        cap = write(tmp_path, f"kuz{endian == '<'}.pcap",
                    old_pcap(frames, magic=0xA1B2CD34, endian=endian,
                             extra=struct.pack(endian + "IHBB", 2, 0x0800, 0, 0)))
        got, st = read(cap)
        assert [(d.payload, d.ts) for d in got] == [(d, T0 + n + 0.25) for n, d in enumerate(dgs)], endian
        assert st.skipped == {} and not st.truncated
        check_tshark(cap, [("10.0.0.1", d) for d in dgs])
        out = decode(str(cap))
        assert out.returncode == 0 and len(out.stdout.splitlines()) == 9, out.stderr.decode()


def test_pcap_versions_before_2_4_with_swapped_lengths_are_read_as_tshark_reads_them(tmp_path: Path) -> None:
    """pcap files of versions 2.0 to 2.2 have the captured and original lengths in the other order
    (libpcap sf-pcap.c and tshark's wiretap swap them back); 2.3 files were written both ways, and
    a captured length above the original says they are swapped. flowscope read the original
    length as the captured one: a snaplen-cut capture was 'corrupt' after its first record. 2.4
    files are never swapped."""
    dgs = [export(i, 3) for i in range(3)]
    frames = [eth(ip4(udp(d))) for d in dgs]
    cases = [(0, True), (1, True), (2, True), (3, True), (3, False), (4, False)]
    for minor, swapped in cases:
        # the snaplen cut 2 bytes of Ethernet padding, so the lengths differ and the datagrams stay whole
        cap = write(tmp_path, f"v2{minor}{swapped}.pcap",
                    old_pcap([f + b"\0\0" for f in frames], minor=minor, swapped=swapped, cut=2))
        got, st = read(cap)
        assert [d.payload for d in got] == dgs, (minor, swapped)
        assert st.skipped == {} and not st.truncated, (minor, swapped)
        check_tshark(cap, [("10.0.0.1", d) for d in dgs])
