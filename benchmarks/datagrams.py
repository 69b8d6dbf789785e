"""Realistic export datagrams built in Python, for the decode benchmark and the unit tests.

The shapes follow what the exporters really send (see ../shared/EXPORTERS.md): Open vSwitch IPFIX
(observation domain 0, 158/159 deltas, tcp*TotalCount instead of tcpControlBits, flowDirection,
interfaceName twice in egress templates, PEN 6876 tunnel fields), NetFlow v5 with 30 records,
NetFlow v9 and sFlow v5 with raw Ethernet/IPv4/TCP headers. Values are drawn from a seeded RNG so
every run builds the same bytes; the builders return the values they encoded so tests can check
decoded output against them rather than against the decoder.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, field

__all__ = [
    "IpfixTemplate",
    "OVS_EGRESS",
    "OVS_INGRESS",
    "OVS_TUNNEL",
    "data_set",
    "ipfix_message",
    "ovs_flows",
    "sflow_datagram",
    "template_set",
    "v5_records",
    "V9_TEMPLATE",
    "v5_datagram",
    "v9_datagram",
]

PEN_VMWARE = 6876
VARLEN = 0xFFFF


@dataclass(frozen=True)
class IpfixTemplate:
    """An IPFIX/v9 template: id and (element id, enterprise number, length) triples."""

    template_id: int
    fields: tuple[tuple[str, int, int, int], ...]  # (name, ie, pen, length)
    options_scope: int = 0

    def spec(self) -> list[tuple[int, int, int]]:
        return [(ie, pen, ln) for _n, ie, pen, ln in self.fields]


_COMMON = (
    ("obs_point", 138, 0, 4),        # observationPointId
    ("direction", 61, 0, 1),         # flowDirection
    ("src_mac", 56, 0, 6),
    ("dst_mac", 80, 0, 6),
    ("etype", 256, 0, 2),
    ("src", 8, 0, 4),
    ("dst", 12, 0, 4),
    ("proto", 4, 0, 1),
    ("tos", 5, 0, 1),
    ("ttl", 192, 0, 1),              # ipTTL: no output name, kept as ie192
    ("sport", 7, 0, 2),
    ("dport", 11, 0, 2),
    ("start_delta", 158, 0, 4),
    ("end_delta", 159, 0, 4),
    ("packets", 2, 0, 8),
    ("bytes", 1, 0, 8),
    ("syn", 218, 0, 8),  # tcpSynTotalCount
    ("fin", 219, 0, 8),  # tcpFinTotalCount
    ("rst", 220, 0, 8),
    ("psh", 221, 0, 8),
    ("ack", 222, 0, 8),
    ("urg", 223, 0, 8),
    ("end_reason", 136, 0, 1),
)
OVS_INGRESS = IpfixTemplate(256, (("in_name", 82, 0, VARLEN),) + _COMMON)
OVS_EGRESS = IpfixTemplate(257, (("in_name", 82, 0, VARLEN), ("out_name", 82, 0, VARLEN)) + _COMMON)
OVS_TUNNEL = IpfixTemplate(
    258,
    (("in_name", 82, 0, VARLEN),)
    + _COMMON
    + (
        ("tun_type", 891, PEN_VMWARE, 1),
        ("tun_key", 892, PEN_VMWARE, VARLEN),
        ("tun_src", 893, PEN_VMWARE, 4),
        ("tun_dst", 894, PEN_VMWARE, 4),
        ("tun_proto", 895, PEN_VMWARE, 1),
        ("tun_sport", 896, PEN_VMWARE, 2),
        ("tun_dport", 897, PEN_VMWARE, 2),
    ),
)


def _encode_value(value: object, length: int) -> bytes:
    if isinstance(value, bytes):
        if length == VARLEN:
            return (bytes([len(value)]) if len(value) < 255 else b"\xff" + struct.pack("!H", len(value))) + value
        return value.ljust(length, b"\0")[:length]
    if isinstance(value, str):
        if ":" in value and len(value) == 17 and value.count(":") == 5:  # MAC
            return bytes.fromhex(value.replace(":", ""))
        return ipaddress.ip_address(value).packed
    return int(value).to_bytes(length, "big")  # type: ignore[call-overload]


def template_set(templates: list[IpfixTemplate], *, version: int = 10) -> bytes:
    """A template set (IPFIX set id 2 / v9 flowset 0) holding the given templates."""
    body = b""
    for t in templates:
        body += struct.pack("!HH", t.template_id, len(t.fields))
        for _n, ie, pen, ln in t.fields:
            if pen and version == 10:
                body += struct.pack("!HHI", ie | 0x8000, ln, pen)
            else:
                body += struct.pack("!HH", ie, ln)
    set_id = 2 if version == 10 else 0
    return struct.pack("!HH", set_id, len(body) + 4) + body


def data_set(t: IpfixTemplate, records: list[dict[str, object]]) -> bytes:
    body = b"".join(b"".join(_encode_value(r[n], ln) for n, _ie, _pen, ln in t.fields) for r in records)
    pad = (-len(body)) % 4
    body += b"\0" * pad
    return struct.pack("!HH", t.template_id, len(body) + 4) + body


def ipfix_message(sets: list[bytes], *, seq: int, export_time: int, domain: int = 0) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_time, seq, domain) + body


def ovs_flows(n: int, rng: random.Random, *, pods: int = 4000, direction: int = 0,
              tunnel: bool = False) -> list[dict[str, object]]:
    """n OVS-like flow records between pods in 10.128.0.0/14."""
    out = []
    for _ in range(n):
        s = 0x0A800000 + rng.randrange(pods)
        d = 0x0A800000 + rng.randrange(pods)
        proto = rng.choice((6, 6, 6, 17, 1))
        syn = rng.randrange(2) if proto == 6 else 0
        ack = rng.randrange(1, 20) if proto == 6 else 0
        rec: dict[str, object] = {
            "in_name": f"{s & 0xFFFF:x}-veth{rng.randrange(100)}".encode(),
            "out_name": b"br-int" if rng.randrange(2) else f"ovn-k8s-mp{rng.randrange(4)}".encode(),
            "obs_point": 0,
            "direction": direction,
            "src_mac": "0a:58:" + ":".join(f"{b:02x}" for b in s.to_bytes(4, "big")),
            "dst_mac": "0a:58:" + ":".join(f"{b:02x}" for b in d.to_bytes(4, "big")),
            "etype": 0x0800,
            "src": str(ipaddress.IPv4Address(s)),
            "dst": str(ipaddress.IPv4Address(d)),
            "proto": proto,
            "tos": rng.choice((0, 0, 0, 0x28, 0xB8)),
            "ttl": 63,
            "sport": rng.randrange(1024, 65535) if proto != 1 else 0,
            "dport": rng.choice((80, 443, 8080, 53, 5432, 6379)) if proto != 1 else 0,
            "start_delta": rng.randrange(1000, 60_000_000),
            "end_delta": rng.randrange(0, 1000),
            "packets": rng.randrange(1, 50),
            "bytes": rng.randrange(60, 60000),
            "fin": rng.randrange(2) if proto == 6 else 0,
            "syn": syn,
            "rst": 0,
            "psh": rng.randrange(3) if proto == 6 else 0,
            "ack": ack,
            "urg": 0,
            "end_reason": 1,
            "tun_type": 7,
            "tun_key": rng.randrange(1, 1 << 24).to_bytes(3, "big"),
            "tun_src": f"192.168.{rng.randrange(4)}.{rng.randrange(1, 250)}",
            "tun_dst": f"192.168.{rng.randrange(4)}.{rng.randrange(1, 250)}",
            "tun_proto": 17,
            "tun_sport": rng.randrange(1024, 65535),
            "tun_dport": 6081,
        }
        out.append(rec)
    return out


V5_FIELDS = ("src", "dst", "nexthop", "input", "output", "packets", "bytes", "first", "last",
             "sport", "dport", "flags", "proto", "tos", "src_as", "dst_as", "src_mask", "dst_mask")


def v5_datagram(records: list[dict[str, int]], *, seq: int, unix_secs: int, uptime_ms: int,
                sampling_interval: int = 0) -> bytes:
    """A NetFlow v5 datagram (RFC-less Cisco format: 24-byte header, 48-byte records)."""
    hdr = struct.pack("!HHIIIIBBH", 5, len(records), uptime_ms, unix_secs, 0, seq, 0, 0, sampling_interval)
    body = b""
    for r in records:
        body += struct.pack(
            "!IIIHHIIIIHHxBBBHHBBxx",
            r["src"], r["dst"], r["nexthop"], r["input"], r["output"], r["packets"], r["bytes"],
            r["first"], r["last"], r["sport"], r["dport"], r["flags"], r["proto"], r["tos"],
            r["src_as"], r["dst_as"], r["src_mask"], r["dst_mask"],
        )
    return hdr + body


def v5_records(n: int, rng: random.Random, *, uptime_ms: int) -> list[dict[str, int]]:
    return [
        {
            "src": 0x0A800000 + rng.randrange(4000), "dst": 0x0A800000 + rng.randrange(4000), "nexthop": 0,
            "input": rng.randrange(1, 40), "output": rng.randrange(1, 40), "packets": rng.randrange(1, 100),
            "bytes": rng.randrange(60, 100000), "first": uptime_ms - rng.randrange(1000, 60000),
            "last": uptime_ms - rng.randrange(0, 1000), "sport": rng.randrange(1024, 65535),
            "dport": rng.choice((80, 443, 53)), "flags": rng.choice((0x02, 0x12, 0x18, 0x11)),
            "proto": 6, "tos": 0, "src_as": 0, "dst_as": 0, "src_mask": 14, "dst_mask": 14,
        }
        for _ in range(n)
    ]


V9_TEMPLATE = IpfixTemplate(
    300,
    (
        ("src", 8, 0, 4), ("dst", 12, 0, 4), ("sport", 7, 0, 2), ("dport", 11, 0, 2), ("proto", 4, 0, 1),
        ("tos", 5, 0, 1), ("flags", 6, 0, 1), ("bytes", 1, 0, 4), ("packets", 2, 0, 4),
        ("first", 22, 0, 4), ("last", 21, 0, 4), ("input", 10, 0, 2), ("output", 14, 0, 2),
    ),
)


def v9_datagram(sets: list[bytes], *, seq: int, unix_secs: int, uptime_ms: int, source_id: int = 0,
                count: int = 0) -> bytes:
    return struct.pack("!HHIIII", 9, count, uptime_ms, unix_secs, seq, source_id) + b"".join(sets)


def v9_data_set(t: IpfixTemplate, records: list[dict[str, object]]) -> bytes:
    return data_set(t, records)


@dataclass
class SflowSample:
    """What one sFlow flow sample carried (for checking decoded output)."""

    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    frame_length: int
    flags: int
    rate: int
    input: int
    output: int
    extra: dict[str, int] = field(default_factory=dict)


def _xdr_record(fmt: int, body: bytes) -> bytes:
    pad = (-len(body)) % 4
    return struct.pack("!II", fmt, len(body)) + body + b"\0" * pad


def sflow_datagram(samples: list[SflowSample], *, seq: int, agent: str = "192.0.2.10",
                   uptime_ms: int = 1000) -> bytes:
    """sFlow v5 with compact flow samples each holding an Ethernet/IPv4/TCP raw header record."""
    out = []
    for i, s in enumerate(samples):
        ip_total = s.frame_length - 14
        l4 = struct.pack("!HHIIBBHHH", s.sport, s.dport, 1, 0, 0x50, s.flags, 8192, 0, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_total, 0, 0x4000, 64, s.proto, 0,
                         ipaddress.IPv4Address(s.src).packed, ipaddress.IPv4Address(s.dst).packed)
        eth = bytes.fromhex("0a580a800001") + bytes.fromhex("0a580a800002") + b"\x08\x00"
        header = (eth + ip + l4)[:128]
        # sampled_header's header<> is XDR opaque: padded to 4 inside the record, whose length
        # counts the padding (what agents send)
        raw = struct.pack("!IIII", 1, s.frame_length, 4, len(header)) + header + b"\0" * (-len(header) % 4)
        records = _xdr_record(1, raw)
        body = struct.pack("!IIIIIIII", seq * 16 + i, (0 << 24) | s.input, s.rate, seq * 8 * s.rate, 0,
                           s.input, s.output, 1) + records
        out.append(struct.pack("!II", 1, len(body)) + body)
    hdr = struct.pack("!II4sIII", 5, 1, ipaddress.IPv4Address(agent).packed, 0, seq, uptime_ms)
    return hdr + struct.pack("!I", len(samples)) + b"".join(out)
