"""Randomized differential testing of flowscope's decoders against tshark (Wireshark's cflow and
sflow dissectors). Not a CI test: a tool to re-run when a decoder changes.

    .venv/bin/python -m tests.support.difffuzz [--cases 3000] [--seed 1] [--batch 150]
                                               [--kinds ipfix,v9,sflow] [--show 3] [--keep DIR]

What it does. A seeded generator builds valid-but-varied export sessions (a "case" is a few
datagrams from one exporter address, so templates persist within it and nothing leaks between
cases):
  * IPFIX (RFC 7011) and NetFlow v9 (RFC 3954): templates drawing random IANA elements that the
    decoders map (decoders/netflow.pxi IE_ACTIONS) at their allowed and reduced-size lengths
    (RFC 7011 6.2), in random order, with repeats, enterprise and variable-length fields
    (1- and 3-byte length prefixes), padding, elements unknown to both; options templates with
    sampling elements (RFC 5476/5477: 34, 35, 50, 305, 306, 309, 310, 311) and
    systemInitTimeMilliseconds (160), scoped by the domain, an interface or a selector/sampler
    id; several templates per set and several domains per session; data records with random
    values including edge values (0, all ones, times near the 32-bit wraps).
  * sFlow v5: compact and expanded flow and counter samples with raw packet headers (Ethernet,
    802.1Q / QinQ, IPv4, IPv6, TCP, UDP, ICMP, ICMPv6, sometimes cut short), sampled IPv4/IPv6,
    extended switch / router / gateway, Open vSwitch tunnel records (1023-1030), generic and
    Ethernet interface counters, and records of unknown formats and enterprises.
Every batch of cases is written into one pcap (a distinct exporter address per case), decoded
once by tshark (tests/support/tshark.py run_tshark), and each case is fed to a fresh
flowscope Decoder and compared with the golden comparators of tests/test_golden_corpus.py
(check_cflow_capture / check_sflow_capture: per-record values through the tshark mapping table,
record counts, missing-template sets, stats deltas, counter records).

Known tshark 4.0 faults, which the generator or the comparator (tests/support/tshark.py) keeps
out of the comparison rather than report as flowscope's:
  * sFlow sampled header (0:1): it dissects the XDR padding after a header whose length is not a
    multiple of 4 as header bytes (it rounds header_length up), so a header cut short inside a
    field gets that field from the padding's zeros (an IPv4 destination 172.203.60.0 from a
    header cut 1 byte short of it). The generator cuts short headers at multiples of 4.
  * sFlow sampled_ipv4/ipv6 (0:3, 0:4): it reads tcp_flags and the IPv4 tos from the first
    byte of their 4-byte XDR fields (always 0 for values below 2^24): those are not compared.
  * sFlow records of standard formats it does not know (Open vSwitch's 1025/1026, unknown
    ones): it reads their body as the next record, so the rest of the sample is not the
    sample's (and when the length it then reads runs past the datagram, it lists a BoundError as
    "_ws.unreassembled", which run_tshark takes as a stopped decode like "_ws.malformed"): only
    the sampled header of such a sample is compared, not sampled Ethernet/IPv4/IPv6 records.
  * IPFIX: data for a template whose every field has a variable length is "no template found"
    (its fixed length is 0): the generator gives such a template one fixed-length element.
  * IPFIX: unknown IANA elements are listed as enterprise entries with no enterprise, and a
    variable-length field of length 0 gets no entry at all: the comparator pairs the values
    with the template's fields by their lengths (pair_unknown).
Not a tshark fault but a documented choice of flowscope's where tshark reads otherwise: zeros
that end a set on its 4-byte boundary after records of 3 bytes or less are padding (README):
the generator never makes such a set's last record all zeros.

Output: the number of cases per kind, and the disagreements grouped by kind (the problem text
with numbers blanked), with the seed and case number of up to --show examples each, so a
failing case is rebuilt by `--seed S --only N` (which writes its pcap beside and prints the
decoded flows). Exit status 1 if any case disagreed.
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import random
import re
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from collector.pcap import Datagram  # noqa: E402
from tests.support import tshark as T  # noqa: E402
from tests.support.pcapgen import _csum  # noqa: E402  (the IPv4 header checksum)

EXPORT = 1_700_000_000
IPFIX_PORT, V9_PORT, SFLOW_PORT = 4739, 2055, 6343
VARLEN = 0xFFFF

# --------------------------------------------------------------------------------------------
# value helpers


def edge_int(rng: random.Random, nbytes: int) -> int:
    top = (1 << (8 * nbytes)) - 1
    r = rng.random()
    if r < 0.1:
        return 0
    if r < 0.2:
        return top
    if r < 0.3:
        return rng.randrange(1, min(top, 255) + 1)
    return rng.randrange(0, top + 1)


def rand_v4(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.05:
        return b"\0\0\0\0"
    if r < 0.08:
        return b"\xff\xff\xff\xff"
    return bytes([rng.choice((10, 172, 192, 100, 8)), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])


def rand_v6(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.05:
        return bytes(16)
    if r < 0.1:
        return bytes(15) + b"\x01"
    return b"\xfd\x00" + bytes(rng.randrange(256) for _ in range(14))


def rand_mac(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(6))


# --------------------------------------------------------------------------------------------
# IPFIX / NetFlow v9

# (element id, lengths to draw from, value kind). Kinds: int, v4, v6, mac, str, ntp, proto, ...
# The first length is the element's full size; the others are reduced-size encodings the
# decoder accepts (IE_ACTIONS).
ANY_INT = (8, 4, 2, 1, 3, 5, 6, 7)
ELEMENTS: list[tuple[int, tuple[int, ...], str]] = [
    (1, ANY_INT, "int"), (2, ANY_INT, "int"), (85, (8, 4, 2)), (86, (8, 4, 2)),
    (23, (8, 4)), (24, (8, 4)),
    (4, (1,), "proto"), (5, (1,), "int"), (195, (1,), "dscp"), (6, (2, 1), "int"),
    (7, (2, 1), "int"), (11, (2, 1), "int"),
    (8, (4,), "v4"), (12, (4,), "v4"), (27, (16,), "v6"), (28, (16,), "v6"),
    (9, (1,), "mask4"), (13, (1,), "mask4"), (29, (1,), "mask6"), (30, (1,), "mask6"),
    (10, (4, 2, 1), "int"), (14, (4, 2, 1), "int"), (15, (4,), "v4"), (62, (16,), "v6"),
    (16, (4, 2), "int"), (17, (4, 2), "int"),
    (32, (2,), "int"), (139, (2,), "int"),
    (176, (1,), "int"), (177, (1,), "int"), (178, (1,), "int"), (179, (1,), "int"),
    (56, (6,), "mac"), (80, (6,), "mac"), (58, (2,), "vlan"), (243, (2,), "vlan"),
    (60, (1,), "ipver"), (61, (1,), "dir"), (82, (VARLEN, 8, 16), "str"), (136, (1,), "reason"),
    (89, (1, 4), "int"),
    (150, (4,), "secs"), (151, (4,), "secs"), (152, (8,), "ms"), (153, (8,), "ms"),
    (154, (8,), "ntp"), (155, (8,), "ntp"), (156, (8,), "ntp"), (157, (8,), "ntp"),
    (158, (4,), "delta"), (159, (4,), "delta"), (161, (4,), "int"), (162, (4,), "int"),
    (256, (2,), "etype"),
    (218, (8, 4, 1), "int"), (219, (8, 4, 1), "int"), (220, (8, 4, 1), "int"),
    (221, (8, 4, 1), "int"), (222, (8, 4, 1), "int"), (223, (8, 4, 1), "int"),
    (192, (1,), "int"),  # ipTTL: tshark knows it, flowscope keeps it as an extra
    (48, (1, 2), "int"), (302, (4,), "int"),  # samplerId / selectorId
]
ELEMENTS = [e if len(e) == 3 else (e[0], e[1], "int") for e in ELEMENTS]  # type: ignore[misc]
V9_TIMES = [(21, (4,), "sysup"), (22, (4,), "sysup")]
# Options (sampling) elements: (id, lengths, kind)
SAMPLING = [(34, (4, 2, 1), "rate"), (35, (1,), "algo"), (50, (4,), "rate"), (305, (4, 2), "rate"),
            (306, (4, 2), "rate"), (309, (4,), "rate"), (310, (4,), "rate"), (311, (8,), "prob")]


# Elements of one meaning, of which a template gets at most one: with two, which one gives the
# output field is a documented choice of flowscope's (README), not something tshark shows.
EXCLUSIVE = [{22, 150, 152, 154, 156, 158}, {21, 151, 153, 155, 157, 159}, {161, 162}, {5, 195},
             {58, 243}, {32, 139, 176, 177, 178, 179}, {48, 302}, {9, 29}, {13, 30}]


def fields_ies(fields: list) -> set[int]:
    return {f.ie for f in fields if not f.pen}


@dataclass
class Field:
    ie: int
    pen: int
    length: int
    kind: str


@dataclass
class Tmpl:
    tid: int
    fields: list[Field]
    scope: int = 0  # options: number of scope fields


class Session:
    """One exporter's state while generating: its templates per domain, its clock."""

    def __init__(self, rng: random.Random, version: int) -> None:
        self.rng = rng
        self.version = version
        self.templates: dict[tuple[int, int], Tmpl] = {}
        self.export = EXPORT + rng.randrange(-1000, 1000)
        self.uptime = rng.choice((rng.randrange(10_000, 1 << 32), rng.randrange(1000, 100_000),
                                  (1 << 32) - rng.randrange(1, 100_000)))

    def _value(self, f: Field) -> bytes:
        rng, n = self.rng, f.length
        k = f.kind
        if k == "v4":
            return rand_v4(rng)
        if k == "v6":
            return rand_v6(rng)
        if k == "mac":
            return rand_mac(rng)
        if k == "str":
            s = rng.choice((b"", b"eth0", b"veth1234abcd", b"br-int", b"ovn-k8s-mp0", b"x" * rng.randrange(1, 300)))
            if n == VARLEN:
                if rng.random() < 0.15 or len(s) >= 255:
                    return b"\xff" + struct.pack("!H", len(s)) + s
                return bytes([len(s)]) + s
            return s[:n].ljust(n, b"\0")
        if k == "proto":
            v = rng.choice((6, 6, 17, 17, 1, 58, 132, 47, 0, 255))
        elif k == "dscp":
            v = rng.randrange(64)
        elif k == "mask4":
            v = rng.randrange(33)
        elif k == "mask6":
            v = rng.randrange(129)
        elif k == "vlan":
            v = rng.choice((0, 1, rng.randrange(4096), 4095))
        elif k == "ipver":
            v = rng.choice((4, 6))
        elif k == "dir":
            v = rng.choice((0, 1))
        elif k == "reason":
            v = rng.randrange(6)
        elif k == "etype":
            v = rng.choice((0x0800, 0x86DD, 0x0806, 0))
        elif k == "secs":
            v = rng.choice((self.export - rng.randrange(0, 100_000), 0, (1 << 32) - 1, self.export))
        elif k == "ms":
            v = rng.choice((self.export * 1000 - rng.randrange(0, 10_000_000), 0, self.export * 1000 + rng.randrange(1000)))
        elif k == "ntp":
            secs = rng.choice((self.export + 2_208_988_800 - rng.randrange(100_000), 2_208_988_800, 0,
                               (1 << 32) - 1))
            frac = edge_int(rng, 4)
            return struct.pack("!II", secs, frac)
        elif k == "delta":
            v = rng.choice((0, rng.randrange(0, 100_000_000), (1 << 32) - 1))
        elif k == "sysup":
            v = rng.choice((self.uptime - rng.randrange(0, min(self.uptime, 10_000_000) + 1),
                            self.uptime, (self.uptime + rng.randrange(1, 100_000)) % (1 << 32),
                            0, (1 << 32) - 1, rng.randrange(1 << 32)))
        elif k == "rate":
            v = rng.choice((0, 1, 100, 400, 1000, 4096, edge_int(rng, n)))
        elif k == "algo":
            v = rng.choice((1, 2, 0, 3))
        elif k == "prob":
            p = rng.choice((0.0, 1.0, 0.5, 0.001, 1 / 3, 2.0, rng.random()))
            return struct.pack("!d", p) if n == 8 else struct.pack("!f", p)
        elif k == "sysinit":
            v = self.export * 1000 - self.uptime
        elif k == "bytes":
            return bytes(rng.randrange(256) for _ in range(n if n != VARLEN else 0))
        else:
            v = edge_int(rng, n)
        return (v % (1 << (8 * n))).to_bytes(n, "big")

    def _varbytes(self) -> bytes:
        rng = self.rng
        body = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 3, 7, 20, 260))))
        if len(body) < 255 and rng.random() < 0.8:
            return bytes([len(body)]) + body
        return b"\xff" + struct.pack("!H", len(body)) + body

    def record(self, t: Tmpl) -> bytes:
        out = b""
        for f in t.fields:
            if f.kind == "bytes" and f.length == VARLEN:
                out += self._varbytes()
            else:
                out += self._value(f)
        return out

    def data_template(self, tid: int) -> Tmpl:
        rng = self.rng
        pool = list(ELEMENTS) + (V9_TIMES if self.version == 9 else [(21, (4,), "sysup"), (22, (4,), "sysup")])
        fields: list[Field] = []
        for _ in range(rng.randrange(1, 25)):
            r = rng.random()
            if r < 0.08 and fields:
                again = [f for f in fields if f.ie == 82 or f.pen or f.kind in ("bytes", "zero")]
                if again:
                    fields.append(rng.choice(again))  # the same element again
                continue
            if r < 0.14:
                # an element neither side knows
                ie = rng.choice((rng.randrange(600, 4000), rng.randrange(33000, 34000) if self.version == 9 else 999))
                ln = rng.choice((1, 2, 4, 8, 3) + ((VARLEN,) if self.version == 10 else ()))
                fields.append(Field(ie, 0, ln, "bytes"))
                continue
            if r < 0.2 and self.version == 10:
                pen = rng.choice((12345, 54321, 40000))
                ie = rng.randrange(1, 1000)
                ln = rng.choice((1, 2, 4, 8, VARLEN))
                fields.append(Field(ie, pen, ln, "bytes"))
                continue
            if r < 0.22:
                fields.append(Field(210, 0, rng.choice((1, 2, 3, 4)), "pad"))  # paddingOctets
                continue
            ie, lengths, kind = rng.choice(pool)
            group = next((g for g in EXCLUSIVE if ie in g), None)
            if group is not None and any(f.ie in group and not f.pen for f in fields):
                continue  # one element of each group (which one wins is documented policy)
            if ie in fields_ies(fields) and ie != 82:
                continue
            ln = lengths[0] if rng.random() < 0.6 else rng.choice(lengths)
            if ln == VARLEN and self.version == 9:
                ln = lengths[1]
            fields.append(Field(ie, 0, ln, kind))
        for f in fields:
            if f.kind == "pad":
                f.kind = "zero"
        if all(f.length == VARLEN for f in fields):
            # tshark 4.0 decodes no data for a template of variable-length fields only (see the
            # header of this file): one fixed-length element known to neither side beside them
            fields.append(Field(rng.randrange(600, 4000), 0, 4, "bytes"))
        return Tmpl(tid, fields)

    def options_template(self, tid: int) -> Tmpl:
        rng = self.rng
        if self.version == 10:
            scope = rng.choice([Field(149, 0, 4, "int"), Field(302, 0, 4, "int"), Field(10, 0, 4, "int"),
                                Field(143, 0, 4, "int"), Field(144, 0, 4, "int")])
            scopes = [scope]
        else:
            # v9 scope types (RFC 3954 6.1): 1 System, 2 Interface, 3 Line Card, 4 Cache, 5 Template
            st = rng.choice((1, 2, 3, 4, 5))
            scopes = [Field(st, 0, rng.choice((4, 2)), "int")]
        picked = rng.sample(SAMPLING, rng.randrange(1, 5))
        intervals = [e for e in picked if e[0] in (34, 50, 305)]
        # 34, 50 and 305 are one rate (samplingInterval, samplerRandomInterval,
        # samplingPacketInterval): a record with two is an exporter's contradiction
        picked = [e for e in picked if e[0] not in (34, 50, 305)] + intervals[:1]
        fields = [Field(ie, 0, rng.choice(ls), k) for ie, ls, k in picked]
        if self.version == 10 and rng.random() < 0.4:
            fields.append(Field(160, 0, 8, "sysinit"))
        if rng.random() < 0.3:
            fields.append(Field(rng.choice((48, 302)), 0, rng.choice((1, 2, 4)), "int"))
        rng.shuffle(fields)
        return Tmpl(tid, scopes + fields, scope=len(scopes))

    def template_set(self, ts: list[Tmpl], options: bool) -> bytes:
        body = b""
        for t in ts:
            if options and self.version == 10:
                body += struct.pack("!HHH", t.tid, len(t.fields), t.scope)
            elif options:
                body += struct.pack("!HHH", t.tid, 4 * t.scope, 4 * (len(t.fields) - t.scope))
            else:
                body += struct.pack("!HH", t.tid, len(t.fields))
            for f in t.fields:
                if f.pen:
                    body += struct.pack("!HHI", f.ie | 0x8000, f.length, f.pen)
                else:
                    body += struct.pack("!HH", f.ie, f.length)
        if self.version == 9 and options:
            body += b"\0" * (-len(body) % 4)
        sid = (3 if options else 2) if self.version == 10 else (1 if options else 0)
        return struct.pack("!HH", sid, len(body) + 4) + body

    def data_set(self, t: Tmpl, n: int) -> bytes:
        recs = [self.record(t) for _ in range(n)]
        if len(recs[-1]) < 4 and not any(recs[-1]):
            # zeros that end a set on its 4-byte boundary are padding to flowscope even after
            # records of 3 bytes or less (README: RFC 3954 5.3 lets a v9 exporter pad so; an
            # all-zero record is lost), where tshark reads a record: not a case to compare
            recs[-1] = recs[-1][:-1] + b"\x01"
        body = b"".join(recs)
        # RFC 7011 3.3.1: padding "MUST be shorter than any allowable record in this Set"
        # (a variable-length field can be as short as its 1-byte length)
        shortest = sum(1 if f.length == VARLEN else f.length for f in t.fields)
        if self.rng.random() < 0.7 and (-len(body) % 4) < shortest:
            body += b"\0" * (-len(body) % 4)
        return struct.pack("!HH", t.tid, len(body) + 4) + body

    def message(self, domain: int) -> bytes:
        """One datagram: maybe new (options) templates, then data for known templates."""
        rng = self.rng
        sets: list[bytes] = []
        count = 0
        new: list[Tmpl] = []
        mine = [t for (d, _), t in self.templates.items() if d == domain]
        if not mine or rng.random() < 0.3:
            # fresh ids only: tshark 4.0 keeps the first definition of a template id (data after a
            # redefinition is decoded with the old one), where RFC 7011 8.1 replaces it
            free = [i for i in range(256, 300) if (domain, i) not in self.templates]
            for tid in rng.sample(free, rng.randrange(1, 4)):
                new.append(self.options_template(tid) if rng.random() < 0.3 else self.data_template(tid))
        if new:
            # options and data templates go into their own sets
            plain = [t for t in new if not t.scope]
            opts = [t for t in new if t.scope]
            if opts:
                sets.append(self.template_set(opts, True))
            if plain:
                sets.append(self.template_set(plain, False))
            count += len(new)
            for t in new:
                self.templates[(domain, t.tid)] = t
        known = [t for (d, _), t in self.templates.items() if d == domain]
        rng.shuffle(known)
        # options data first (its sampling applies to the data after it)
        known.sort(key=lambda t: not t.scope)
        for t in known[: rng.randrange(1, 4)]:
            n = rng.randrange(1, 4)
            sets.append(self.data_set(t, n))
            count += n
        body = b"".join(sets)
        self.export += rng.randrange(0, 5)
        self.uptime = (self.uptime + rng.randrange(0, 5000)) % (1 << 32)
        if self.version == 10:
            return struct.pack("!HHIII", 10, 16 + len(body), self.export, rng.randrange(1 << 32), domain) + body
        return struct.pack("!HHIIII", 9, count, self.uptime, self.export, rng.randrange(1 << 32), domain) + body


def cflow_case(rng: random.Random, version: int) -> list[bytes]:
    s = Session(rng, version)
    domains = [0] if rng.random() < 0.5 else [0, rng.randrange(1, 1 << 32)]
    return [s.message(rng.choice(domains)) for _ in range(rng.randrange(1, 5))]


# --------------------------------------------------------------------------------------------
# sFlow v5


def _xdr(body: bytes) -> bytes:
    return body + b"\0" * (-len(body) % 4)


def _rec(ent: int, fmt: int, body: bytes) -> bytes:
    body = _xdr(body)
    return struct.pack("!II", (ent << 12) | fmt, len(body)) + body


def sampled_packet(rng: random.Random) -> tuple[int, bytes]:
    """(header protocol, bytes): an Ethernet frame (maybe tagged) or a bare IP packet."""
    v6 = rng.random() < 0.35
    proto = rng.choice((6, 6, 17, 17, 1 if not v6 else 58, 47))
    payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", rng.randrange(65536), rng.randrange(65536), rng.randrange(1 << 32),
                         rng.randrange(1 << 32), 0x50, rng.randrange(256), rng.randrange(65536), 0, 0) + payload
    elif proto == 17:
        l4 = struct.pack("!HHHH", rng.randrange(65536), rng.choice((53, 443, rng.randrange(65536))),
                         8 + len(payload), 0) + payload
    elif proto in (1, 58):
        l4 = struct.pack("!BBHI", rng.choice((0, 3, 8, 11, 128, 129, 135)), rng.randrange(16), 0,
                         rng.randrange(1 << 32)) + payload
    else:
        l4 = payload
    src, dst = (rand_v6(rng), rand_v6(rng)) if v6 else (rand_v4(rng), rand_v4(rng))
    tos = rng.randrange(256)
    if v6:
        ip = struct.pack("!IHBB", (6 << 28) | (tos << 20) | rng.randrange(1 << 20), len(l4), proto, 64) + src + dst
    else:
        h = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(l4), rng.randrange(65536), 0x4000, 64, proto, 0, src, dst)
        ip = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    ip += l4
    r = rng.random()
    if r < 0.15:
        return (12 if v6 else 11), ip
    etype = 0x86DD if v6 else 0x0800
    tags = b""
    if r < 0.45:
        tags = struct.pack("!HH", 0x8100, (rng.randrange(8) << 13) | rng.randrange(4096))
        if r < 0.3:
            tags = struct.pack("!HH", 0x88A8, rng.randrange(4096)) + tags
    return 1, rand_mac(rng) + rand_mac(rng) + tags + struct.pack("!H", etype) + ip


def _address(rng: random.Random) -> bytes:
    if rng.random() < 0.7:
        return struct.pack("!I", 1) + rand_v4(rng)
    return struct.pack("!I", 2) + rand_v6(rng)


def flow_records(rng: random.Random) -> list[bytes]:
    recs = []
    if rng.random() < 0.9:
        hp, pkt = sampled_packet(rng)
        # a header cut short: at a multiple of 4 bytes (tshark 4.0 dissects the XDR padding after
        # a header of another length as header bytes; see the header of this file)
        cut = len(pkt) if rng.random() < 0.7 else rng.randrange(16, len(pkt) + 1) & ~3
        hdr = pkt[: min(cut, 128)]
        frame_len = len(pkt) + (4 if hp == 1 else 0) + rng.choice((0, 0, rng.randrange(1500)))
        recs.append(_rec(0, 1, struct.pack("!IIII", hp, frame_len, 4 if hp == 1 else 0, len(hdr)) + hdr))
    for _ in range(rng.randrange(0, 4)):
        k = rng.choice(("eth", "ip4", "ip6", "switch", "router", "gateway", "tun4", "tun6", "vni", "unknown"))
        if k == "eth":
            recs.append(_rec(0, 2, struct.pack("!I", rng.randrange(64, 1600)) + rand_mac(rng) + b"\0\0"
                             + rand_mac(rng) + b"\0\0" + struct.pack("!I", rng.choice((0x0800, 0x86DD, 0x0806)))))
        elif k == "ip4":
            recs.append(_rec(0, 3, struct.pack("!II4s4sIIII", rng.randrange(20, 1500), rng.choice((6, 17, 1)),
                                               rand_v4(rng), rand_v4(rng), rng.randrange(65536), rng.randrange(65536),
                                               rng.randrange(256), rng.randrange(256))))
        elif k == "ip6":
            recs.append(_rec(0, 4, struct.pack("!II16s16sIIII", rng.randrange(40, 1500), rng.choice((6, 17, 58)),
                                               rand_v6(rng), rand_v6(rng), rng.randrange(65536), rng.randrange(65536),
                                               rng.randrange(256), rng.randrange(256))))
        elif k == "switch":
            recs.append(_rec(0, 1001, struct.pack("!IIII", rng.choice((0, 1, rng.randrange(4096), 4095, 5000)),
                                                  rng.randrange(8), rng.randrange(4096), rng.randrange(8))))
        elif k == "router":
            recs.append(_rec(0, 1002, _address(rng) + struct.pack("!II", rng.randrange(33), rng.randrange(33))))
        elif k == "gateway":
            segs = b""
            nseg = rng.randrange(0, 3)
            for _ in range(nseg):
                n = rng.randrange(0, 4)
                segs += struct.pack("!II", rng.choice((1, 2)), n) + b"".join(
                    struct.pack("!I", rng.randrange(1, 1 << 32)) for _ in range(n))
            ncomm = rng.randrange(0, 3)
            recs.append(_rec(0, 1003, _address(rng) + struct.pack("!IIII", edge_int(rng, 4), edge_int(rng, 4),
                                                                  edge_int(rng, 4), nseg) + segs
                             + struct.pack("!I", ncomm) + b"".join(struct.pack("!I", rng.randrange(1 << 32))
                                                                   for _ in range(ncomm))
                             + struct.pack("!I", rng.randrange(1000))))
        elif k == "tun4":
            recs.append(_rec(0, rng.choice((1023, 1024)), struct.pack(
                "!II4s4sIIII", rng.randrange(20, 1500), 17, rand_v4(rng), rand_v4(rng), rng.randrange(65536),
                rng.choice((4789, 6081, 0xB512, 0xC117, 1234)), 0, 0)))
        elif k == "tun6":
            recs.append(_rec(0, rng.choice((1025, 1026)), struct.pack(
                "!II16s16sIIII", rng.randrange(40, 1500), 17, rand_v6(rng), rand_v6(rng), rng.randrange(65536),
                rng.choice((4789, 6081)), 0, 0)))
        elif k == "vni":
            recs.append(_rec(0, rng.choice((1029, 1030)), struct.pack("!I", rng.randrange(1 << 24))))
        else:
            ent = rng.choice((0, 0, 4413, 12345))
            fmt = rng.choice((999, 2000, 4095)) if ent == 0 else rng.randrange(1, 4096)
            recs.append(_rec(ent, fmt, bytes(rng.randrange(256) for _ in range(rng.choice((0, 4, 13, 40))))))
    rng.shuffle(recs)
    return recs


def counter_records(rng: random.Random) -> list[bytes]:
    recs = []
    # one record of each format per sample (flowscope publishes one counter message per sample)
    for k in rng.sample(("generic", "ethernet", "unknown"), rng.randrange(1, 3)):
        if k == "generic":
            recs.append(_rec(0, 1, struct.pack(
                "!IIQIIQIIIIIIQIIIIII", rng.randrange(1, 1 << 16), rng.choice((6, 53, 1)), edge_int(rng, 8),
                rng.randrange(4), rng.randrange(4), edge_int(rng, 8), *[edge_int(rng, 4) for _ in range(6)],
                edge_int(rng, 8), *[edge_int(rng, 4) for _ in range(5)], rng.randrange(2))))
        elif k == "ethernet":
            recs.append(_rec(0, 2, b"".join(struct.pack("!I", edge_int(rng, 4)) for _ in range(13))))
        else:
            recs.append(_rec(4413, rng.choice((1001, 2000, 7)),
                             bytes(rng.randrange(256) for _ in range(rng.choice((0, 8, 20))))))
    return recs


def _iface(rng: random.Random) -> tuple[int, int]:
    """(format, value): an ifIndex, 0 "unknown", 0x3FFFFFFF "internal", or format 2 (multiple)."""
    r = rng.random()
    if r < 0.1:
        return 0, 0
    if r < 0.2:
        return 0, 0x3FFFFFFF
    if r < 0.25:
        return 2, rng.randrange(1, 20)
    return 0, rng.randrange(1, 1 << 16)


def sflow_datagram(rng: random.Random, seq: int) -> bytes:
    samples = []
    for i in range(rng.randrange(1, 6)):
        kind = rng.choice((1, 1, 3, 2, 4))
        if kind in (1, 3):
            recs = flow_records(rng)
            rate = rng.choice((1, 400, 1000, edge_int(rng, 4) or 1))
            (inf, inv), (outf, outv) = _iface(rng), _iface(rng)
            if kind == 1:
                body = struct.pack("!IIIIIIII", seq * 8 + i, (rng.randrange(3) << 24) | rng.randrange(1 << 24), rate,
                                   rng.randrange(1 << 32), rng.randrange(100), (inf << 30) | (inv & 0x3FFFFFFF),
                                   (outf << 30) | (outv & 0x3FFFFFFF), len(recs))
            else:
                body = struct.pack("!IIIIIIIIIII", seq * 8 + i, rng.randrange(3), rng.randrange(1 << 24), rate,
                                   rng.randrange(1 << 32), rng.randrange(100), inf, inv, outf, outv, len(recs))
        else:
            recs = counter_records(rng)
            if kind == 2:
                body = struct.pack("!III", seq * 8 + i, rng.randrange(1 << 24), len(recs))
            else:
                body = struct.pack("!IIII", seq * 8 + i, 0, rng.randrange(1 << 24), len(recs))
        body += b"".join(recs)
        samples.append(struct.pack("!II", kind, len(body)) + body)
    agent = struct.pack("!I", 1) + bytes([192, 0, 2, rng.randrange(1, 255)]) if rng.random() < 0.8 else \
        struct.pack("!I", 2) + rand_v6(rng)
    return struct.pack("!I", 5) + agent + struct.pack("!IIII", rng.randrange(4), seq, rng.randrange(1 << 32),
                                                       len(samples)) + b"".join(samples)


def sflow_case(rng: random.Random) -> list[bytes]:
    seq = rng.randrange(1 << 20)
    return [sflow_datagram(rng, seq + i) for i in range(rng.randrange(1, 4))]


# --------------------------------------------------------------------------------------------
# running


def _frame(payload: bytes, src: bytes, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, bytes([10, 255, 255, 254]))
    ip = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
    return b"\x00\x11\x22\x33\x44\x55\x00\x66\x77\x88\x99\xaa\x08\x00" + ip + udp


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for t, f in frames:
        out.append(struct.pack("<IIII", int(t), round((t - int(t)) * 1e6), len(f), len(f)) + f)
    path.write_bytes(b"".join(out))


KINDS = {"ipfix": (IPFIX_PORT, "cflow"), "v9": (V9_PORT, "cflow"), "sflow": (SFLOW_PORT, "sflow")}


def build_case(seed: int, n: int, kind: str) -> list[bytes]:
    rng = random.Random(f"{seed}/{kind}/{n}")
    if kind == "ipfix":
        return cflow_case(rng, 10)
    if kind == "v9":
        return cflow_case(rng, 9)
    return sflow_case(rng)


def case_src(n: int) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + 1 + n))


def run_batch(seed: int, kind: str, cases: list[int], workdir: Path, *, verbose: bool = False) -> dict[int, list[str]]:
    """Build, tshark-decode and compare the given cases; {case: problems}."""
    from decoders import Decoder, DecoderConfig
    from tests.test_golden_corpus import check_cflow_capture, check_sflow_capture

    port, layer = KINDS[kind]
    frames: list[tuple[float, bytes]] = []
    dgs: dict[str, list[Datagram]] = {}
    for n in cases:
        src = case_src(n)
        for i, payload in enumerate(build_case(seed, n, kind)):
            ts = EXPORT + n + i * 0.001
            frames.append((ts, _frame(payload, ipaddress.IPv4Address(src).packed, 50000, port)))
            dgs.setdefault(src, []).append(Datagram(ts, src, 50000, "10.255.255.254", port, payload))
    pcap = workdir / f"{kind}-{seed}-{cases[0]}.pcap"
    write_pcap(pcap, frames)
    packets = T.run_tshark(pcap, decode_as=[f"udp.port=={port},{layer}"])
    by_src: dict[str, list[dict]] = collections.defaultdict(list)
    for p in packets:
        by_src[p["src"]].append(p)
    out: dict[int, list[str]] = {}
    for n in cases:
        src = case_src(n)
        dec = Decoder(DecoderConfig(default_sampling=0))
        check = check_sflow_capture if kind == "sflow" else check_cflow_capture
        try:
            probs = check(dec, dgs[src], by_src.get(src, []), f"{kind}#{n}")
        except Exception as e:  # a comparator crash is a finding too
            probs = [f"{kind}#{n}: comparator raised {type(e).__name__}: {e}"]
        if verbose:
            for dg in dgs[src]:
                b = Decoder(DecoderConfig(default_sampling=0)).decode(dg.payload, dg.src, dg.sport, dg.ts)
                print("error:", b.error, "flows:", b.to_dicts(), "counters:", b.counters)
        if probs:
            out[n] = probs
    return out


_NUM = re.compile(r"(?<![A-Za-z_])(0x[0-9a-f]+|\d+(\.\d+)?)")


def signature(problem: str) -> str:
    """A problem's kind: the text after the location, numbers and quoted values blanked."""
    text = re.sub(r"^.*?(datagram \d+ \(frame \d+(, v\d+)?\)( set id \d+)?( flow( sample)? \d+| record \d+)?: )", "", problem)
    text = re.sub(r"^\w+#\d+: ", "", text)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\{[^}]*\}", "{…}", text)
    text = re.sub(r"\[[^\]]*\]", "[…]", text)
    return _NUM.sub("N", text)[:160]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=3000, help="cases per kind")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=150, help="cases per pcap (one tshark run)")
    ap.add_argument("--kinds", default="ipfix,v9,sflow")
    ap.add_argument("--show", type=int, default=3, help="examples printed per kind of disagreement")
    ap.add_argument("--only", type=int, default=None, help="run this one case, verbose")
    ap.add_argument("--keep", type=Path, default=None, help="keep the pcaps in this directory")
    args = ap.parse_args(argv)
    if T.TSHARK is None:
        print("tshark is not installed", file=sys.stderr)
        return 2
    kinds = args.kinds.split(",")
    work = args.keep or Path(tempfile.mkdtemp(prefix="difffuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.only is not None:
        bad = 0
        for kind in kinds:
            res = run_batch(args.seed, kind, [args.only], work, verbose=True)
            for p in res.get(args.only, []):
                print(p)
            bad += bool(res)
        print(f"pcaps in {work}")
        return 1 if bad else 0
    sigs: dict[tuple[str, str], list[tuple[int, str]]] = collections.defaultdict(list)
    failed = collections.Counter()
    for kind in kinds:
        for start in range(0, args.cases, args.batch):
            batch = list(range(start, min(args.cases, start + args.batch)))
            res = run_batch(args.seed, kind, batch, work)
            for n, probs in res.items():
                failed[kind] += 1
                for p in probs:
                    sigs[(kind, signature(p))].append((n, p))
    for kind in kinds:
        print(f"{kind}: {args.cases} cases, {failed[kind]} disagreed")
    for (kind, sig), hits in sorted(sigs.items(), key=lambda kv: -len(kv[1])):
        cases = sorted({n for n, _ in hits})
        print(f"\n[{kind}] {len(hits)}x in {len(cases)} case(s): {sig}")
        for n, p in hits[: args.show]:
            print(f"    --seed {args.seed} --kinds {kind} --only {n}: {p[:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
