"""Read UDP datagrams out of pcap and pcapng captures.

`flowscope decode`, `flowscope replay`, the golden tests and the benchmarks all start from
captures; this module turns a capture into the (timestamp, source, destination, payload) tuples
the collector would have received from its socket. It understands the link types flow captures
come in (Ethernet with 802.1Q/QinQ tags or 802.3 with LLC/SNAP, PPPoE sessions and MPLS label
stacks, Linux cooked v1/v2, raw IP, BSD loopback), IPv4 and IPv6 (with extension headers) and
reassembles IP fragments, because exporters often send datagrams larger than the path MTU. It opens
GRE and ERSPAN (types I, II and III), because a capture made at a remote SPAN destination (a
switch's ERSPAN session, an Open vSwitch erspan/gre mirror port) has the exporter's packets inside
them; IP-in-IP (ipip, sit, ip6tnl) and MPLS-in-IP, for a capture on a tunnel's underlay; and VXLAN,
Geneve and MPLS-in-UDP on their IANA ports, because a capture on a node's underlay (OVN-Kubernetes'
Geneve, an OVS vxlan port) has an export to a collector on another node inside them. Anything else
is skipped and counted in `PcapStats`.

The file is read in chunks, never whole, so a multi-GB capture decodes in bounded memory; a
gzip-compressed capture (`tcpdump -w - | gzip`, found by its magic, not its name) is decompressed
as it is read, as tshark does. A file that ends in the middle of a record keeps the records before
it and says so in `PcapStats.truncated`; a file that is not a capture, or whose structure is
corrupt, raises `PcapError` with one line saying where.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

from decoders import addr_text

__all__ = ["Datagram", "PcapError", "PcapStats", "iter_udp"]

# Link-layer header types (tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# DLT_RAW is 12 on most systems and 14 on OpenBSD; old captures and some writers put the DLT in
# the file instead of LINKTYPE_RAW (101). libpcap and tshark read both as raw IP.
RAW_IP = frozenset((LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6))

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100)
# IEEE 802.3: a type field up to 1500 is the length of an LLC frame; 1536 and up an EtherType.
DOT3_MAX_LEN = 1500
# LLC/SNAP (RFC 1042): DSAP AA, SSAP AA, UI; then an OUI under which the next 2 bytes are an
# EtherType: 0 (RFC 1042) and Cisco's 00-00-F8 (802.1H-style), as tshark's packet-llc.c reads them.
SNAP = b"\xaa\xaa\x03"
SNAP_ETHERTYPE_OUIS = (b"\x00\x00\x00", b"\x00\x00\xf8")
# A Linux cooked header's protocol for an 802.3 frame (ETH_P_802_2): the kernel stripped the MAC
# header and the LLC header comes first.
SLL_LLC = 0x0004
# PPPoE session stage (RFC 2516 4), and the PPP protocol numbers of what is read inside it (IANA
# PPP DLL protocol numbers: RFC 1332 IPv4, RFC 5072 IPv6), as the EtherTypes they stand for.
ETH_PPPOE = 0x8864
ETH_MPLS = (0x8847, 0x8848)  # MPLS unicast and multicast (RFC 5332)
PPP_PROTOCOLS = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6, 0x0281: ETH_MPLS[0], 0x0283: ETH_MPLS[1]}  # RFC 3032 4.3
MPLS_GAL = 13  # RFC 5586: a G-ACh (OAM), not a packet, follows this bottom label

# IPv6 extension headers that may precede UDP (RFC 8200 section 4, RFC 4302 for AH).
IPV6_FRAG = 44
IPV6_AH = 51
IPV6_EXT = frozenset((0, 43, IPV6_FRAG, IPV6_AH, 60, 135, 139, 140))
UDP = 17
GRE = 47
# IP carried straight in IP (ipip and sit/6in4 devices, ip6tnl: RFC 2003, RFC 4213, RFC 2473) and
# MPLS in IP (RFC 4023 3), by IP protocol, as the EtherType of what they carry
IP_IN_IP = {4: ETH_IPV4, 41: ETH_IPV6, 137: 0x8847}  # 0x8847: MPLS unicast
# the IP protocols read further: UDP, and the tunnels for what they carry
CARRIED = frozenset((UDP, GRE, *IP_IN_IP))

# GRE protocol types (IEEE EtherTypes) opened besides IPv4/IPv6.
GRE_TEB = 0x6558  # Transparent Ethernet Bridging: an Ethernet frame (gretap, OVS gre ports)
ERSPAN_12 = 0x88BE  # ERSPAN type I (no GRE sequence number) and type II
ERSPAN_3 = 0x22EB
# UDP tunnels opened by destination port, as tshark does: VXLAN (RFC 7348 5) and Geneve
# (RFC 8926 3.3). A datagram to one of them whose header does not parse is read as it is.
VXLAN_PORT = 4789
GENEVE_PORT = 6081
MPLS_UDP_PORT = 6635  # MPLS-in-UDP (RFC 7510 3)
UDP_TUNNELS = frozenset((VXLAN_PORT, GENEVE_PORT, MPLS_UDP_PORT))
# A tunnel inside a tunnel is opened too, to this depth (a packet that nests deeper is corrupt
# or crafted, and each level costs a copy of the packet).
MAX_TUNNELS = 4

# The pcap magics libpcap's sf-pcap.c reads (in the byte order of the host that wrote the file):
# timestamp fraction units per second and record header length. 0xa1b2cd34 is Alexey Kuznetsov's
# patched format (KUZNETZOV_TCPDUMP_MAGIC): after the usual 16 bytes, the interface index,
# protocol, packet type and a pad byte.
PCAP_MAGICS = {0xA1B2C3D4: (1e6, 16), 0xA1B23C4D: (1e9, 16), 0xA1B2CD34: (1e6, 24)}
PCAPNG_SHB = 0x0A0D0D0A
# A record or block claiming more than this is corruption, not a packet (libpcap's largest
# snaplen is 256 KiB): refusing it keeps a bad length from pulling the rest of the file into memory.
MAX_RECORD = 64 << 20
CHUNK = 1 << 20


class PcapError(ValueError):
    """The file is not a capture this reader understands."""


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP payload as a collector socket would have received it."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass(slots=True)
class PcapStats:
    """What the reader saw and skipped, so nothing is dropped silently. Skip reasons (frames):
    unsupported_link, not_ip, not_udp, truncated_ip, bad_ip_header, truncated_udp,
    truncated_capture (the snaplen cut the datagram), unknown_interface (a pcapng packet of an
    undefined interface), empty_fragment, bad_fragment, incomplete_fragments (of a datagram a piece
    never came for), duplicate_fragments (repeating pieces already had), truncated_record (the
    file ends inside it), unsupported_tunnel (GRE carrying something other than IP, Ethernet or MPLS,
    GRE version 1, source routing, an unknown ERSPAN version, tunnels nested past MAX_TUNNELS),
    truncated_tunnel (a GRE/ERSPAN or inner Ethernet header cut), duplicate_datagrams (a
    datagram the capture holds again within DUPLICATE_WINDOW_S: `tcpdump -i any` records a packet
    crossing a bridge once per interface). A frame is counted once, by
    what happened to the innermost packet; a VXLAN/Geneve datagram opened is not one of
    `datagrams`, the export inside it is."""

    frames: int = 0
    datagrams: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: str = ""  # why the file ended early ("" when it ended where a record ends)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


def _addr(raw: bytes) -> str:
    return addr_text(raw)  # the decoders' spelling of an address


class _Source:
    """The capture's bytes, read in chunks: `buf[pos:]` is what has been read and not consumed."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.buf = b""
        self.pos = 0
        self._base = 0  # file offset of buf[0]
        self.cut = ""  # set when the gzip stream itself ends early

    @property
    def offset(self) -> int:
        """Offset in the (decompressed) capture of buf[pos]."""
        return self._base + self.pos

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def fill(self, n: int) -> bool:
        """Make n bytes available at buf[pos:]; False when the capture ends first."""
        have = len(self.buf) - self.pos
        if have >= n:
            return True
        parts = [self.buf[self.pos:]]
        self._base += self.pos
        self.pos = 0
        while have < n:
            chunk = self._read(max(CHUNK, n - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self.buf = b"".join(parts)
        return have >= n

    def _read(self, n: int) -> bytes:
        try:
            # read1: one read of the file, so what a cut gzip stream decompressed before its end
            # is returned before the EOFError, not dropped with it
            return self._f.read1(n)  # type: ignore[attr-defined]
        except EOFError:  # gzip: "Compressed file ended before the end-of-stream marker"
            self.cut = "the gzip data is cut short"
            return b""
        except (zlib.error, gzip.BadGzipFile) as e:
            raise PcapError(f"bad gzip data: {e}") from None


def _truncated(src: _Source, stats: PcapStats, what: str) -> None:
    stats.skip("truncated_record")
    stats.truncated = (f"the capture is cut short in the middle of a {what} at byte {src.offset} "
                       f"(the file ends {src.left} bytes into it)")


class _Frags:
    """The fragments of one datagram received so far."""

    __slots__ = ("parts", "end")

    def __init__(self) -> None:
        self.parts: list[tuple[int, bytes]] = []  # (offset, data) in arrival order
        self.end = -1  # datagram length, known once the last fragment (no "more") is in


class _Reassembler:
    """IP fragment reassembly keyed by (version, src, dst, id), with tshark's result for overlaps
    and duplicates; bounded in datagrams and bytes, and what never completes is counted."""

    MAX_PENDING = 1024
    MAX_BYTES = 64 << 20

    def __init__(self, stats: PcapStats) -> None:
        self._pending: dict[tuple, _Frags] = {}
        # recently completed datagrams: key -> {(offset, crc32)} of their fragments, oldest first
        self._done: dict[tuple, set[tuple[int, int]]] = {}
        self._bytes = 0
        self._stats = stats

    def add(self, key: tuple, offset: int, more: bool, data: bytes) -> bytes | None:
        """Add a non-empty fragment; the whole datagram once its pieces cover it, else None."""
        # Room first: the oldest pending datagrams go (counted) to stay within both bounds.
        while self._pending and (self._bytes + len(data) > self.MAX_BYTES
                                 or (key not in self._pending and len(self._pending) >= self.MAX_PENDING)):
            old = next(iter(self._pending))
            self._drop(old, self._pending.pop(old))
        ent = self._pending.get(key)
        if ent is None:
            ent = self._pending[key] = _Frags()
        for off, chunk in ent.parts:
            if off == offset and len(chunk) >= len(data):
                # a repeat (`-i any` captures each packet twice): the first copy wins anyway
                self._stats.skip("duplicate_fragments")
                return None
        ent.parts.append((offset, data))
        self._bytes += len(data)
        if not more and ent.end < 0:
            ent.end = offset + len(data)  # a second, different last fragment is ignored, as tshark does
        if ent.end < 0:
            return None
        # Wireshark's reassemble.c: fragments in offset order (arrival order among equal offsets),
        # each contributing only the bytes past what the ones before it covered, so on overlap the
        # lower offset wins, and on a tie the first to arrive. Complete when that leaves no gap.
        parts = sorted(ent.parts, key=itemgetter(0))
        out = bytearray()
        for off, chunk in parts:
            if off > len(out):
                return None  # a gap: a piece is still missing
            if off + len(chunk) > len(out):
                out += chunk[len(out) - off:]
            if len(out) >= ent.end:
                break
        if len(out) < ent.end:
            return None
        del self._pending[key]
        self._bytes -= sum(len(c) for _o, c in ent.parts)
        self._done.pop(key, None)
        self._done[key] = {(off, zlib.crc32(c)) for off, c in ent.parts}
        if len(self._done) > self.MAX_PENDING:
            del self._done[next(iter(self._done))]
        return bytes(out[: ent.end])

    def _drop(self, key: tuple, ent: _Frags) -> None:
        self._bytes -= sum(len(c) for _o, c in ent.parts)
        # A fragment left over that repeats one of a datagram already reassembled (the second copy
        # `-i any` captures) lost nothing; the others belong to a datagram a piece never came for.
        seen = self._done.get(key, set())
        dup = sum((off, zlib.crc32(c)) in seen for off, c in ent.parts)
        if dup:
            self._stats.skip("duplicate_fragments", dup)
        if dup < len(ent.parts):
            self._stats.skip("incomplete_fragments", len(ent.parts) - dup)

    def finish(self) -> None:
        """The capture ended: count the fragments of datagrams that never completed."""
        for key, ent in self._pending.items():
            self._drop(key, ent)
        self._pending.clear()


def _udp(src: bytes, dst: bytes, l4: bytes, ts: float, stats: PcapStats) -> Datagram | None:
    if len(l4) < 8:
        stats.skip("truncated_udp")
        return None
    sport, dport, length = struct.unpack_from("!HHH", l4)
    if length > len(l4):
        # The capture kept fewer bytes than the datagram had (snaplen): replaying or decoding
        # the cut datagram would pass for the real one.
        stats.skip("truncated_capture")
        return None
    # Trust the UDP length when it is consistent; Ethernet padding can follow short datagrams.
    payload = l4[8:length] if 8 <= length <= len(l4) else l4[8:]
    return Datagram(ts, _addr(src), sport, _addr(dst), dport, payload)


def _fragment(key: tuple, offset: int, more: bool, data: bytes, stats: PcapStats,
              frags: _Reassembler) -> bytes | None:
    """Checks common to IPv4 and IPv6 fragments, then reassembly."""
    if not data:
        # A fragment without data moves reassembly nowhere (a header-only fragment, or one the
        # snaplen cut right after its headers).
        stats.skip("empty_fragment")
        return None
    if offset + len(data) > 0xFFFF:
        stats.skip("bad_fragment")  # past the largest datagram the length field can describe
        return None
    return frags.add(key, offset, more, data)


# What an IP packet carries, once reassembled: (protocol, source, destination, payload).
Transport = tuple[int, bytes, bytes, bytes]


def _ipv4(pkt: bytes, stats: PcapStats, frags: _Reassembler) -> Transport | None:
    if len(pkt) < 20:
        stats.skip("truncated_ip")
        return None
    ihl = (pkt[0] & 0x0F) * 4
    total, ident, flags_off = struct.unpack_from("!HHH", pkt, 2)
    proto = pkt[9]
    if proto not in CARRIED:
        stats.skip("not_udp")
        return None
    if ihl < 20:
        stats.skip("bad_ip_header")
        return None
    if ihl > len(pkt):
        stats.skip("truncated_ip")
        return None
    src, dst = pkt[12:16], pkt[16:20]
    if flags_off & 0x3FFF:  # MF or a fragment offset
        if not ihl <= total <= len(pkt):
            stats.skip("truncated_capture")  # a cut fragment would reassemble into wrong bytes
            return None
        # RFC 791 3.2: a datagram is identified by source, destination, protocol and identification
        whole = _fragment((4, src, dst, proto, ident), (flags_off & 0x1FFF) * 8, bool(flags_off & 0x2000),
                          pkt[ihl:total], stats, frags)
        if whole is None:
            return None
        return proto, src, dst, whole
    body = pkt[ihl:total] if ihl <= total <= len(pkt) else pkt[ihl:]
    return proto, src, dst, body


def _ipv6_headers(nxt: int, body: bytes) -> tuple[int, bytes, tuple[int, bool, int] | None] | None:
    """Walk extension headers up to the transport or a Fragment header: (next header, rest,
    (offset, more, id) if a Fragment header ended the walk), or None if a header is cut."""
    while nxt in IPV6_EXT:
        if len(body) < 8:
            return None
        if nxt == IPV6_FRAG:
            off_m, ident = struct.unpack_from("!HI", body, 2)
            return body[0], body[8:], (off_m & 0xFFF8, bool(off_m & 1), ident)
        # RFC 4302 2.2: AH's Payload Len is in 4-byte units minus 2; the others' (RFC 8200 4.3)
        # Hdr Ext Len is in 8-byte units, not counting the first 8 bytes.
        hlen = (body[1] + 2) * 4 if nxt == IPV6_AH else (body[1] + 1) * 8
        if hlen > len(body):
            return None
        nxt, body = body[0], body[hlen:]
    return nxt, body, None


def _ipv6(pkt: bytes, stats: PcapStats, frags: _Reassembler) -> Transport | None:
    if len(pkt) < 40:
        stats.skip("truncated_ip")
        return None
    plen = struct.unpack_from("!H", pkt, 4)[0]
    src, dst = pkt[8:24], pkt[24:40]
    cut = 40 + plen > len(pkt)
    body = pkt[40 : 40 + plen] if plen and not cut else pkt[40:]
    nxt = pkt[6]
    reassembled = False
    while True:
        walked = _ipv6_headers(nxt, body)
        if walked is None:
            stats.skip("truncated_ip")
            return None
        nxt, body, frag = walked
        if frag is None:
            break
        offset, more, ident = frag
        if not (offset or more):
            continue  # an atomic fragment (RFC 6946): what follows is the whole datagram
        if reassembled:
            stats.skip("bad_fragment")  # a Fragment header inside a reassembled datagram
            return None
        if nxt not in CARRIED and nxt not in IPV6_EXT:
            # every fragment's Fragment header names the first header of the fragmentable part
            stats.skip("not_udp")
            return None
        if cut:
            stats.skip("truncated_capture")  # a cut fragment would reassemble into wrong bytes
            return None
        whole = _fragment((6, src, dst, ident), offset, more, body, stats, frags)
        if whole is None:
            return None
        # RFC 8200 4.5: the headers after the Fragment header belong to the fragmentable part,
        # so they are parsed from the reassembled datagram, not from each fragment.
        body, reassembled = whole, True
    if nxt not in CARRIED:
        stats.skip("not_udp")
        return None
    return nxt, src, dst, body


def _gre(body: bytes) -> tuple[int, bytes] | str:
    """Open a GRE packet: (EtherType, packet) of what it carries, an Ethernet frame as
    (0, frame); or the skip reason."""
    if len(body) < 4:
        return "truncated_tunnel"
    flags, ptype = struct.unpack_from("!HH", body)
    # RFC 2784 2.1: C (0x8000) adds checksum and reserved (4 bytes); RFC 2890: K (0x2000) a key,
    # S (0x1000) a sequence number (4 bytes each). RFC 1701's source routing (R, 0x4000) is
    # obsolete, and version 1 is PPTP's enhanced GRE (RFC 2637), which carries PPP.
    if flags & 0x4007:
        return "unsupported_tunnel"
    seq = bool(flags & 0x1000)
    pos = 4 + 4 * (bool(flags & 0x8000) + bool(flags & 0x2000) + seq)
    if ptype in (ETH_IPV4, ETH_IPV6) or ptype in ETH_MPLS:  # MPLS: RFC 4023 4
        return (ptype, body[pos:]) if len(body) > pos else "truncated_tunnel"
    if ptype == ERSPAN_12 and seq:
        # ERSPAN type II (draft-foschiano-erspan-03 4.1): 8 bytes, version 1 in the top 4 bits.
        # Without a GRE sequence number it is type I, no header (Wireshark's packet-erspan.c).
        if len(body) < pos + 8:
            return "truncated_tunnel"
        if body[pos] >> 4 != 1:
            return "unsupported_tunnel"
        pos += 8
    elif ptype == ERSPAN_3:
        # type III (4.2): 12 bytes, version 2; its O bit (the last of them) adds an 8-byte
        # platform-specific subheader. The payload is an Ethernet frame, as Wireshark reads it.
        if len(body) < pos + 12:
            return "truncated_tunnel"
        if body[pos] >> 4 != 2:
            return "unsupported_tunnel"
        pos += 20 if body[pos + 11] & 1 else 12
    elif ptype not in (GRE_TEB, ERSPAN_12):
        return "unsupported_tunnel"
    return 0, body[pos:]


def _udp_tunnel(dport: int, payload: bytes) -> tuple[int, bytes] | None:
    """What a VXLAN or Geneve datagram carries, as _gre() gives it; None when its header is not
    one, so that the datagram is read as it is."""
    if dport == MPLS_UDP_PORT:
        return (ETH_MPLS[0], payload) if _mpls(payload) is not None else None
    if len(payload) < 8:
        return None
    if dport == VXLAN_PORT:
        # RFC 7348 5: 8 bytes, the I flag (0x08) set for a valid VNI, then an Ethernet frame
        return (0, payload[8:]) if payload[0] & 0x08 else None
    # RFC 8926 3.4: version 0 in the top 2 bits, options length in 4-byte words in the low 6,
    # then the EtherType of the payload: 0x6558 for Ethernet (what OVS sends) or IP
    pos = 8 + (payload[0] & 0x3F) * 4
    ptype = struct.unpack_from("!H", payload, 2)[0]
    if payload[0] >> 6 or len(payload) < pos:
        return None
    if ptype == GRE_TEB:
        return 0, payload[pos:]
    return (ptype, payload[pos:]) if ptype in (ETH_IPV4, ETH_IPV6) else None


def _pppoe(pkt: bytes) -> tuple[int, bytes] | None:
    """A PPPoE session frame to (EtherType, packet) of the IP it carries; None for anything else."""
    if len(pkt) < 7:
        return None
    # RFC 2516 4: version/type, code, session id, then the length of the PPP frame, which bounds
    # it (padding may follow). ver/type and code are not checked: tshark reads the PPP in any.
    ppp = pkt[6 : 6 + struct.unpack_from("!H", pkt, 4)[0]]
    if not ppp:
        return None
    # RFC 1661 6.5: a compressed protocol field is 1 byte, recognised by its odd first byte
    if ppp[0] & 1:
        proto, pos = ppp[0], 1
    elif len(ppp) >= 2:
        proto, pos = struct.unpack_from("!H", ppp)[0], 2
    else:
        return None
    etype = PPP_PROTOCOLS.get(proto)
    return (etype, ppp[pos:]) if etype is not None else None


def _mpls(pkt: bytes) -> tuple[int, bytes] | None:
    """An MPLS label stack to (EtherType, packet) of what the bottom label carries, as tshark
    guesses it; None for anything else."""
    pos = 0
    while True:  # RFC 3032 2.1: 4-byte entries, S (0x100) set on the last
        if len(pkt) < pos + 4:
            return None
        entry = struct.unpack_from("!I", pkt, pos)[0]
        pos += 4
        if entry & 0x100:
            break
    body = pkt[pos:]
    if not body or entry >> 12 == MPLS_GAL:
        return None
    # The stack does not say what it carries; tshark's packet-mpls.c guesses by the first nibble
    # (RFC 4928 2): 4 IPv4, 6 IPv6, 0 an Ethernet pseudowire (RFC 4448), anything else data.
    nibble = body[0] >> 4
    if nibble == 4:
        return ETH_IPV4, body
    if nibble == 6:
        return ETH_IPV6, body
    if nibble == 0 and len(body) >= 14:
        # The pseudowire's control word (RFC 4385 3: 4 bytes, first nibble 0) may precede the
        # frame or not. tshark 4.0 decides by whether the first 12 bytes are two MAC addresses of
        # known vendors (its manuf list); without that list, the frame read first with the word
        # (RFC 8469: it SHOULD be used), then without, that carries something read here.
        for frame in (body[4:], body):
            net = _network(LINKTYPE_ETHERNET, frame)
            if net is not None and (net[0] in (ETH_IPV4, ETH_IPV6) or net[0] in _SHIMS):
                return net
    return None


# What sits between the link layer and IP, by EtherType: opened to the (EtherType, packet) inside.
_SHIMS = {ETH_PPPOE: _pppoe, ETH_MPLS[0]: _mpls, ETH_MPLS[1]: _mpls}


def _packet(etype: int, pkt: bytes, ts: float, stats: PcapStats, frags: _Reassembler,
            depth: int = 0) -> Datagram | None:
    """An IP packet (its EtherType) to the UDP datagram it holds, opening tunnels on the way."""
    if etype == ETH_IPV4:
        tp = _ipv4(pkt, stats, frags)
    elif etype == ETH_IPV6:
        tp = _ipv6(pkt, stats, frags)
    else:
        shim = _SHIMS.get(etype)
        within = shim(pkt) if shim is not None else None
        if within is None:
            stats.skip("not_ip")
            return None
        if depth >= MAX_TUNNELS:
            stats.skip("unsupported_tunnel")
            return None
        return _packet(*within, ts, stats, frags, depth + 1)
    if tp is None:
        return None
    proto, src, dst, body = tp
    if proto == UDP:
        dg = _udp(src, dst, body, ts, stats)
        inner = None
        if dg is not None and dg.dport in UDP_TUNNELS and depth < MAX_TUNNELS:
            inner = _udp_tunnel(dg.dport, dg.payload)
        if inner is None:
            stats.datagrams += dg is not None
            return dg
    elif depth >= MAX_TUNNELS:
        stats.skip("unsupported_tunnel")
        return None
    elif proto in IP_IN_IP:
        inner = IP_IN_IP[proto], body
    else:
        opened = _gre(body)
        if isinstance(opened, str):
            stats.skip(opened)
            return None
        inner = opened
    etype, pkt = inner
    if etype == 0:  # an Ethernet frame
        net = _network(LINKTYPE_ETHERNET, pkt)
        if net is None:
            stats.skip("truncated_tunnel")
            return None
        etype, pkt = net
    return _packet(etype, pkt, ts, stats, frags, depth + 1)


def _llc(data: bytes) -> tuple[int, bytes]:
    """An LLC frame to (EtherType, packet) when it is SNAP with an EtherType, as tshark reads it;
    any other LLC (STP's 42 42, CDP's Cisco OUI) is returned under a type that is no EtherType."""
    if len(data) >= 8 and data[:3] == SNAP and data[3:6] in SNAP_ETHERTYPE_OUIS:
        return struct.unpack_from("!H", data, 6)[0], data[8:]
    return SLL_LLC, data


def _vlan(etype: int, frame: bytes, pos: int, *, dot3: bool = True) -> tuple[int, bytes]:
    """Skip 802.1Q/802.1ad tags starting at pos (their TPID was etype). A type field that is an
    802.3 length (dot3: after an Ethernet header, and after any tag) opens the LLC frame it
    measures; past the length is padding, short of it a frame the snaplen cut (tshark reads it)."""
    while etype in ETH_VLAN and len(frame) >= pos + 4:
        etype = struct.unpack_from("!H", frame, pos + 2)[0]
        pos += 4
        dot3 = True
    if dot3 and etype <= DOT3_MAX_LEN:
        return _llc(frame[pos : pos + etype])
    return etype, frame[pos:]


def _network(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """Strip the link layer: return (ethertype, network packet) or None."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        return _vlan(struct.unpack_from("!H", frame, 12)[0], frame, 14)
    # libpcap puts a VLAN tag the kernel took off back into Linux cooked captures (`tcpdump -i any`),
    # right after the header: the protocol field is then the TPID and the tag follows
    # (pcap-linux.c set_vlan_offset); a NIC that left the tag in the packet gives the same bytes.
    # Below 1536 the cooked protocol is a Linux ETH_P_ code, not a length (SLL_LLC: LLC first).
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        proto = struct.unpack_from("!H", frame, 14)[0]
        return _llc(frame[16:]) if proto == SLL_LLC else _vlan(proto, frame, 16, dot3=False)
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None
        proto = struct.unpack_from("!H", frame, 0)[0]
        return _llc(frame[20:]) if proto == SLL_LLC else _vlan(proto, frame, 20, dot3=False)
    if linktype in RAW_IP:
        if not frame:
            return None
        return (ETH_IPV6 if frame[0] >> 4 == 6 else ETH_IPV4), frame
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(frame) < 4:
            return None
        return (ETH_IPV6 if frame[4] >> 4 == 6 else ETH_IPV4) if len(frame) > 4 else ETH_IPV4, frame[4:]
    return None


def _frames_pcap(src: _Source, stats: PcapStats) -> Iterator[tuple[int, float, bytes]]:
    src.fill(24)
    magic = src.buf[:4]
    if int.from_bytes(magic, "little") in PCAP_MAGICS:
        endian, (div, hdr) = "<", PCAP_MAGICS[int.from_bytes(magic, "little")]
    elif int.from_bytes(magic, "big") in PCAP_MAGICS:
        endian, (div, hdr) = ">", PCAP_MAGICS[int.from_bytes(magic, "big")]
    else:
        raise PcapError("not a pcap file")
    if src.left < 24:
        raise PcapError("truncated pcap header")
    major, minor = struct.unpack_from(endian + "HH", src.buf, 4)
    # sf-pcap.c: files of versions 2.0 to 2.2 have the captured and original lengths the other
    # way round, and 2.3 files were written both ways (a captured length above the original one
    # says which); tshark's wiretap/libpcap.c the same.
    swapped = 2 if (major, minor) < (2, 3) else 1 if (major, minor) == (2, 3) else 0
    # Only the low 16 bits are the link type (libpcap LT_LINKTYPE); above them are the FCS length
    # and its "present" bit (LT_FCS_LENGTH_PRESENT), which the IP total length makes moot here.
    linktype = struct.unpack_from(endian + "I", src.buf, 20)[0] & 0xFFFF
    src.pos += 24
    unpack = struct.Struct(endian + "IIII").unpack_from
    while True:
        buf, pos = src.buf, src.pos
        if len(buf) - pos < hdr:
            if not src.fill(hdr):
                if src.left:
                    _truncated(src, stats, "record header")
                return
            buf, pos = src.buf, src.pos
        sec, frac, incl, orig = unpack(buf, pos)
        if swapped and (swapped == 2 or incl > orig):
            incl = orig
        if incl > MAX_RECORD:
            raise PcapError(f"record at byte {src.offset} claims {incl} bytes: the file is corrupt")
        pos += hdr
        end = pos + incl
        if end > len(buf):
            if not src.fill(hdr + incl):
                _truncated(src, stats, "record")
                return
            buf, pos = src.buf, src.pos + hdr
            end = pos + incl
        src.pos = end
        yield linktype, sec + frac / div, buf[pos:end]


def _idb(body: bytes, at: int, endian: str) -> tuple[int, int, float, int]:
    """An Interface Description Block's body: (link type, ticks per second, offset in seconds,
    snaplen). pcapng spec (draft-ietf-opsawg-pcapng) 4.2."""
    if len(body) < 8:
        raise PcapError(f"pcapng interface description block at byte {at} is too short")
    linktype, _res, snaplen = struct.unpack_from(endian + "HHI", body, 0)
    per_sec = 10**6  # if_tsresol absent: microseconds
    offset = 0.0
    opos = 8
    while opos + 4 <= len(body):
        code, olen = struct.unpack_from(endian + "HH", body, opos)
        if code == 0:  # opt_endofopt
            break
        if opos + 4 + olen > len(body):
            raise PcapError(f"pcapng interface description block at byte {at}: option {code} "
                            f"of length {olen} runs past the end of the block")
        if code == 9 and olen >= 1:  # if_tsresol: 10^-v seconds, or 2^-v with the top bit set
            v = body[opos + 4]
            per_sec = 2 ** (v & 0x7F) if v & 0x80 else 10**v
        elif code == 14 and olen == 8:  # if_tsoffset: seconds added to every timestamp
            offset = float(struct.unpack_from(endian + "q", body, opos + 4)[0])
        opos += 4 + ((olen + 3) & ~3)
    return linktype, per_sec, offset, snaplen


def _frames_pcapng(src: _Source, stats: PcapStats) -> Iterator[tuple[int, float, bytes]]:
    endian = "<"
    interfaces: list[tuple[int, int, float, int]] = []  # _idb() per interface id of the section
    first = True
    while True:
        if not src.fill(12):
            if first:
                raise PcapError("truncated pcapng header")
            if src.left:
                _truncated(src, stats, "block header")
            return
        buf, pos = src.buf, src.pos
        btype = struct.unpack_from(endian + "I", buf, pos)[0]
        if btype == PCAPNG_SHB:  # a new section: its own byte order and interfaces
            bom = buf[pos + 8 : pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise PcapError(f"pcapng section header at byte {src.offset} has no byte-order magic")
            interfaces = []
        elif first:
            raise PcapError("not a pcapng file")
        first = False
        blen = struct.unpack_from(endian + "I", buf, pos + 4)[0]
        if blen < 12 or blen % 4 or blen > MAX_RECORD:
            raise PcapError(f"pcapng block at byte {src.offset} has an invalid length {blen}")
        if not src.fill(blen):
            _truncated(src, stats, "block")
            return
        buf, pos = src.buf, src.pos
        at = src.offset
        src.pos = pos + blen
        if btype in (6, 2):  # Enhanced Packet Block; obsolete Packet Block (spec appendix A)
            if blen < 32:
                raise PcapError(f"pcapng packet block at byte {at} is too short")
            if btype == 6:
                ifid, hi, lo, cap = struct.unpack_from(endian + "IIII", buf, pos + 8)
            else:  # Interface ID and Drops Count are 16 bits each where the EPB has a 32-bit id
                ifid, _drops, hi, lo, cap = struct.unpack_from(endian + "HHIII", buf, pos + 8)
            if cap > blen - 32:
                raise PcapError(f"pcapng packet block at byte {at} is too short for its {cap} bytes")
            if ifid >= len(interfaces):
                stats.frames += 1
                stats.skip("unknown_interface")
                continue
            linktype, per_sec, offset, _snap = interfaces[ifid]
            # int / int is rounded once, exactly: a whole second in ns ticks stays whole
            yield linktype, ((hi << 32) | lo) / per_sec + offset, buf[pos + 28 : pos + 28 + cap]
        elif btype == 1:  # Interface Description Block
            interfaces.append(_idb(buf[pos + 8 : pos + blen - 4], at, endian))
        elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
            if blen < 16:
                raise PcapError(f"pcapng simple packet block at byte {at} is too short")
            if not interfaces:
                stats.frames += 1
                stats.skip("unknown_interface")
                continue
            linktype, _per_sec, _offset, snaplen = interfaces[0]
            cap = struct.unpack_from(endian + "I", buf, pos + 8)[0]  # original length
            if snaplen and cap > snaplen:
                cap = snaplen
            if cap > blen - 16:
                raise PcapError(f"pcapng simple packet block at byte {at} is too short for its {cap} bytes")
            # An SPB has no time. tshark shows none and Wireshark's reader (wiretap/pcapng.c,
            # pcapng_read_simple_packet_block) sets it to 0, the epoch: so do we, if_tsoffset
            # not applied, rather than borrow a neighbour's time.
            yield linktype, 0.0, buf[pos + 12 : pos + 12 + cap]
        # other blocks (name resolution, statistics, decryption secrets, custom) carry no packets


# Copies of one datagram in a capture are this close in time: a capture on several interfaces
# (`tcpdump -i any`, a pcapng of two interfaces) records a packet that crosses a bridge or a veth
# once per interface, microseconds apart, where an exporter never sends the same bytes twice (its
# sequence numbers and clocks move). Fragmented ones are already whole once (duplicate_fragments).
DUPLICATE_WINDOW_S = 0.05
DUPLICATE_KEEP = 256   # recent datagrams compared (a window of frames, not of time: bounded)


def iter_udp(path: str | Path, *, stats: PcapStats | None = None) -> Iterator[Datagram]:
    """Yield every UDP datagram of a pcap/pcapng capture (gzip-compressed or not) in file order,
    each once (see DUPLICATE_WINDOW_S)."""
    st = stats if stats is not None else PcapStats()
    recent: dict[tuple[str, int, str, int, bytes], float] = {}
    with open(path, "rb") as f:
        raw: BinaryIO = f
        if f.peek(2)[:2] == b"\x1f\x8b":  # gzip magic (RFC 1952), whatever the file is called
            raw = gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[assignment]
        src = _Source(raw)
        src.fill(4)
        pcapng = src.buf[:4] == b"\x0a\x0d\x0d\x0a"
        frames = _frames_pcapng(src, st) if pcapng else _frames_pcap(src, st)
        frags = _Reassembler(st)
        for linktype, ts, frame in frames:
            st.frames += 1
            net = _network(linktype, frame)
            if net is None:
                st.skip("unsupported_link")
                continue
            dgram = _packet(*net, ts, st, frags)
            if dgram is not None:
                key = (dgram.src, dgram.sport, dgram.dst, dgram.dport, dgram.payload)
                seen = recent.pop(key, None)
                if seen is not None and abs(dgram.ts - seen) <= DUPLICATE_WINDOW_S:
                    recent[key] = seen
                    st.datagrams -= 1   # (counted by _packet)
                    st.skip("duplicate_datagrams")
                    continue
                recent[key] = dgram.ts
                if len(recent) > DUPLICATE_KEEP:
                    del recent[next(iter(recent))]
                yield dgram
        frags.finish()
        if src.cut and not st.truncated:
            st.truncated = src.cut
