"""Read UDP datagrams out of pcap and pcapng captures.

`flowscope decode`, `flowscope replay`, the golden tests and the benchmarks all start from
captures; this module turns a capture into the (timestamp, source, destination, payload) tuples
the collector would have received from its socket. It understands the link types flow captures
come in (Ethernet with 802.1Q/QinQ tags, Linux cooked v1/v2, raw IP, BSD loopback), IPv4 and IPv6
(with extension headers) and reassembles IP fragments, because exporters often send datagrams
larger than the path MTU. Anything else is skipped and counted in `PcapStats`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100)

# IPv6 extension headers that may precede UDP (RFC 8200 section 4).
IPV6_EXT = {0, 43, 60, 135, 139, 140}
IPV6_FRAG = 44
UDP = 17


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
    """What the reader saw and skipped, so nothing is dropped silently."""

    frames: int = 0
    datagrams: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _addr(raw: bytes) -> str:
    return addr_text(raw)  # the decoders' spelling of an address


class _Reassembler:
    """Minimal IP fragment reassembly keyed by (src, dst, id); bounded in size."""

    MAX_PENDING = 1024

    def __init__(self) -> None:
        self._pending: dict[tuple, dict[int, tuple[bytes, bool]]] = {}

    def add(self, key: tuple, offset: int, more: bool, data: bytes) -> bytes | None:
        parts = self._pending.get(key)
        if parts is None:
            if len(self._pending) >= self.MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            parts = self._pending[key] = {}
        parts[offset] = (data, more)
        # Complete when the offsets chain from 0 to a fragment without "more fragments".
        pos = 0
        out = []
        while pos in parts:
            chunk, chunk_more = parts[pos]
            out.append(chunk)
            if not chunk_more:
                del self._pending[key]
                return b"".join(out)
            pos += len(chunk)
        return None


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
    stats.datagrams += 1
    return Datagram(ts, _addr(src), sport, _addr(dst), dport, payload)


def _ipv4(pkt: bytes, ts: float, stats: PcapStats, frags: _Reassembler) -> Datagram | None:
    if len(pkt) < 20:
        stats.skip("truncated_ip")
        return None
    ihl = (pkt[0] & 0x0F) * 4
    total = struct.unpack_from("!H", pkt, 2)[0]
    ident, flags_off = struct.unpack_from("!HH", pkt, 4)
    proto = pkt[9]
    src, dst = pkt[12:16], pkt[16:20]
    body = pkt[ihl:total] if ihl <= total <= len(pkt) else pkt[ihl:]
    if proto != UDP:
        stats.skip("not_udp")
        return None
    more = bool(flags_off & 0x2000)
    offset = (flags_off & 0x1FFF) * 8
    if more or offset:
        whole = frags.add((4, src, dst, ident), offset, more, body)
        if whole is None:
            return None
        body = whole
    return _udp(src, dst, body, ts, stats)


def _ipv6(pkt: bytes, ts: float, stats: PcapStats, frags: _Reassembler) -> Datagram | None:
    if len(pkt) < 40:
        stats.skip("truncated_ip")
        return None
    plen = struct.unpack_from("!H", pkt, 4)[0]
    nxt = pkt[6]
    src, dst = pkt[8:24], pkt[24:40]
    body = pkt[40 : 40 + plen] if plen and 40 + plen <= len(pkt) else pkt[40:]
    frag: tuple[int, bool, int] | None = None
    while nxt in IPV6_EXT or nxt == IPV6_FRAG:
        if len(body) < 8:
            stats.skip("truncated_ip")
            return None
        if nxt == IPV6_FRAG:
            off_m, ident = struct.unpack_from("!HI", body, 2)
            frag = ((off_m >> 3) * 8, bool(off_m & 1), ident)
            nxt, body = body[0], body[8:]
        else:
            nxt, hlen = body[0], (body[1] + 1) * 8
            body = body[hlen:]
    if nxt != UDP:
        stats.skip("not_udp")
        return None
    if frag is not None and (frag[0] or frag[1]):
        whole = frags.add((6, src, dst, frag[2]), frag[0], frag[1], body)
        if whole is None:
            return None
        body = whole
    return _udp(src, dst, body, ts, stats)


def _network(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """Strip the link layer: return (ethertype, network packet) or None."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        etype = struct.unpack_from("!H", frame, 12)[0]
        pos = 14
        while etype in ETH_VLAN and len(frame) >= pos + 4:
            etype = struct.unpack_from("!H", frame, pos + 2)[0]
            pos += 4
        return etype, frame[pos:]
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        return struct.unpack_from("!H", frame, 14)[0], frame[16:]
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None
        return struct.unpack_from("!H", frame, 0)[0], frame[20:]
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not frame:
            return None
        return (ETH_IPV6 if frame[0] >> 4 == 6 else ETH_IPV4), frame
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(frame) < 4:
            return None
        return (ETH_IPV6 if frame[4] >> 4 == 6 else ETH_IPV4) if len(frame) > 4 else ETH_IPV4, frame[4:]
    return None


def _frames_pcap(data: bytes) -> Iterator[tuple[int, float, bytes]]:
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise PcapError("not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    if len(data) < 24:
        raise PcapError("truncated pcap header")
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    rec = struct.Struct(endian + "IIII")
    pos = 24
    div = 1e9 if nano else 1e6
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, pos)
        pos += 16
        if pos + incl > len(data):
            break  # truncated last record: the capture was cut while writing
        yield linktype, sec + frac / div, data[pos : pos + incl]
        pos += incl


def _frames_pcapng(data: bytes) -> Iterator[tuple[int, float, bytes]]:
    endian = "<"
    interfaces: list[tuple[int, float]] = []  # (linktype, seconds per tick)
    pos = 0
    while pos + 12 <= len(data):
        btype = struct.unpack_from(endian + "I", data, pos)[0]
        if btype == 0x0A0D0D0A:
            bom = data[pos + 8 : pos + 12]
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            interfaces = []
        blen = struct.unpack_from(endian + "I", data, pos + 4)[0]
        if blen < 12 or pos + blen > len(data):
            break
        body = data[pos + 8 : pos + blen - 4]
        if btype == 1 and len(body) >= 8:  # Interface Description Block
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            tick = 1e-6
            opos = 8
            while opos + 4 <= len(body):
                code, olen = struct.unpack_from(endian + "HH", body, opos)
                if code == 0:
                    break
                if code == 9 and olen >= 1:  # if_tsresol
                    v = body[opos + 4]
                    tick = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
                opos += 4 + ((olen + 3) & ~3)
            interfaces.append((linktype, tick))
        elif btype == 6 and len(body) >= 20:  # Enhanced Packet Block
            ifid, hi, lo, cap = struct.unpack_from(endian + "IIII", body, 0)
            if ifid < len(interfaces):
                linktype, tick = interfaces[ifid]
                yield linktype, ((hi << 32) | lo) * tick, body[20 : 20 + cap]
        elif btype == 3 and len(body) >= 4 and interfaces:  # Simple Packet Block
            linktype, _tick = interfaces[0]
            yield linktype, 0.0, body[4:]
        pos += blen


def iter_udp(path: str | Path, *, stats: PcapStats | None = None) -> Iterator[Datagram]:
    """Yield every UDP datagram of a pcap/pcapng capture in file order."""
    data = Path(path).read_bytes()
    st = stats if stats is not None else PcapStats()
    frames = _frames_pcapng(data) if data[:4] == b"\x0a\x0d\x0d\x0a" else _frames_pcap(data)
    frags = _Reassembler()
    for linktype, ts, frame in frames:
        st.frames += 1
        net = _network(linktype, frame)
        if net is None:
            st.skip("unsupported_link")
            continue
        etype, pkt = net
        if etype == ETH_IPV4:
            dgram = _ipv4(pkt, ts, st, frags)
        elif etype == ETH_IPV6:
            dgram = _ipv6(pkt, ts, st, frags)
        else:
            st.skip("not_ip")
            continue
        if dgram is not None:
            yield dgram
