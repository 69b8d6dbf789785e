"""Write pcap files of known traffic: Ethernet + IPv4/IPv6 + TCP/UDP/ICMP(v6), with correct
checksums, so that real exporters (softflowd, pmacctd) read them and the tests know exactly which
flows, packets and bytes must come out.

`Flow` describes one unidirectional 5-tuple; `build_pcap()` interleaves the flows' packets in
time and returns the pcap bytes; `Flow.l3_bytes` is what NetFlow/IPFIX count as octets (IP
header + payload, no Ethernet header).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
LINKTYPE_ETHERNET = 1


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


@dataclass
class Flow:
    src: str
    dst: str
    proto: int
    sport: int = 0  # ICMP: type
    dport: int = 0  # ICMP: code
    packets: int = 1
    payload: int = 64  # L4 payload bytes per packet
    tcp_flags: int = 0x18  # PSH|ACK; first packet SYN when syn_first
    syn_first: bool = True
    src_mac: str = "02:00:00:00:00:01"
    dst_mac: str = "02:00:00:00:00:02"
    tos: int = 0
    # what carries the IP packet after the Ethernet header: "" (nothing), "mpls" (one label),
    # "mpls2" (a stack of two, RFC 3032) or "pppoe" (a PPPoE session, RFC 2516)
    encap: str = ""

    @property
    def v6(self) -> bool:
        return ipaddress.ip_address(self.src).version == 6

    @property
    def l4_header(self) -> int:
        return {TCP: 20, UDP: 8}.get(self.proto, 8)

    @property
    def l3_len(self) -> int:
        """IP packet length (IPv4 total length; IPv6 40 + payload length)."""
        return (40 if self.v6 else 20) + self.l4_header + self.payload

    @property
    def l2_len(self) -> int:
        """The bytes in front of the IP packet: Ethernet header and encapsulation."""
        return 14 + {"": 0, "mpls": 4, "mpls2": 8, "pppoe": 8}[self.encap]

    @property
    def l3_bytes(self) -> int:
        return self.l3_len * self.packets

    def flags_at(self, i: int) -> int:
        if self.proto != TCP:
            return 0
        return 0x02 if (i == 0 and self.syn_first) else self.tcp_flags

    def all_flags(self) -> int:
        bits = 0
        for i in range(self.packets):
            bits |= self.flags_at(i)
        return bits

    def frame(self, i: int) -> bytes:
        """Ethernet frame of this flow's i-th packet."""
        s = ipaddress.ip_address(self.src).packed
        d = ipaddress.ip_address(self.dst).packed
        body = bytes((i + j) & 0xFF for j in range(self.payload))
        if self.v6:
            pseudo_base = s + d
        else:
            pseudo_base = s + d + struct.pack("!BB", 0, self.proto)
        if self.proto == TCP:
            hdr = struct.pack("!HHIIBBHHH", self.sport, self.dport, 1000 + i * 100, 1, 5 << 4,
                              self.flags_at(i), 65535, 0, 0)
            l4 = hdr + body
        elif self.proto == UDP:
            l4 = struct.pack("!HHHH", self.sport, self.dport, 8 + len(body), 0) + body
        elif self.proto in (ICMP, ICMPV6):
            l4 = struct.pack("!BBHHH", self.sport, self.dport, 0, 0x1234, i) + body
        else:
            raise ValueError(self.proto)
        if self.v6:
            pseudo = pseudo_base + struct.pack("!IxxxB", len(l4), self.proto)
        else:
            pseudo = pseudo_base + struct.pack("!H", len(l4))
        ck_off = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}[self.proto]
        ck = _csum(l4) if self.proto == ICMP else _csum(pseudo + l4)
        if self.proto == UDP and ck == 0:
            ck = 0xFFFF
        l4 = l4[:ck_off] + struct.pack("!H", ck) + l4[ck_off + 2:]
        if self.v6:
            ip = struct.pack("!IHBB", (6 << 28) | (self.tos << 20), len(l4), self.proto, 64) + s + d
            etype = 0x86DD
        else:
            h = struct.pack("!BBHHHBBH4s4s", 0x45, self.tos, 20 + len(l4), i & 0xFFFF, 0x4000, 64,
                            self.proto, 0, s, d)
            ip = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
            etype = 0x0800
        pkt = ip + l4
        if self.encap.startswith("mpls"):
            # label, traffic class 0, bottom-of-stack on the last, TTL 64
            labels = (16001, 16002)[:2 if self.encap == "mpls2" else 1]
            pkt = b"".join(struct.pack("!I", lab << 12 | (k == len(labels) - 1) << 8 | 64)
                           for k, lab in enumerate(labels)) + pkt
            etype = 0x8847
        elif self.encap == "pppoe":
            # version 1, type 1, session data (code 0), session 7; PPP protocol IPv4 0x0021 / IPv6 0x0057
            pkt = struct.pack("!BBHHH", 0x11, 0, 7, len(pkt) + 2, 0x0057 if self.v6 else 0x0021) + pkt
            etype = 0x8864
        return mac_bytes(self.dst_mac) + mac_bytes(self.src_mac) + struct.pack("!H", etype) + pkt


def build_pcap(flows: list[Flow], *, start: float = 1_700_000_000.0, gap: float = 0.01) -> bytes:
    """A classic pcap (microsecond) with the flows' packets interleaved round-robin, `gap`
    seconds apart, starting at Unix time `start`."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)]
    t = start
    rnd = 0
    while True:
        emitted = False
        for f in flows:
            if rnd < f.packets:
                fr = f.frame(rnd)
                sec = int(t)
                usec = int(round((t - sec) * 1e6))
                out.append(struct.pack("<IIII", sec, usec, len(fr), len(fr)) + fr)
                t += gap
                emitted = True
        if not emitted:
            break
        rnd += 1
    return b"".join(out)


def standard_flows() -> list[Flow]:
    """The traffic the exporter tests generate: IPv4 and IPv6, TCP, UDP and ICMP, with distinct
    packet counts and sizes so that a swapped or merged flow is noticed."""
    return [
        Flow("10.1.0.1", "10.2.0.2", TCP, 40001, 80, packets=7, payload=100),
        Flow("10.2.0.2", "10.1.0.1", TCP, 80, 40001, packets=5, payload=1200, syn_first=False,
             tcp_flags=0x10),
        Flow("10.1.0.3", "10.2.0.4", UDP, 53001, 53, packets=3, payload=40),
        Flow("10.1.0.5", "10.2.0.6", ICMP, 8, 0, packets=4, payload=56),
        Flow("fd00:1::1", "fd00:2::2", TCP, 40002, 443, packets=6, payload=300),
        Flow("fd00:1::3", "fd00:2::4", UDP, 5353, 5353, packets=2, payload=500),
        Flow("fd00:1::5", "fd00:2::6", ICMPV6, 128, 0, packets=3, payload=32),
    ]
