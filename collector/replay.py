"""`flowscope replay FILE --to HOST:PORT`: send the UDP payloads of a capture, loop after loop.

Why rewrite headers: collectors (flowscope included, and every peer) treat a repeated sequence
number or export time from one exporter as a duplicate or a reset. Each loop k therefore shifts,
per exporter stream (source address and port, version, observation domain / source id):
  NetFlow v5  flow_sequence (+k * flows in the stream) and unix_secs (+k * loop period)
  NetFlow v9  package sequence (+k * packets in the stream) and unix_secs
  IPFIX       sequence number (+k * an upper bound of the stream's data records) and export time
  sFlow v5    datagram sequence (+k * datagrams in the stream) and uptime (+k * period, in ms)
so that the sequence continues where the previous loop ended (a gap is harmless; going
backwards is not) and clocks move forward. Loop 0 is sent unchanged.

Each distinct capture source (address, port) gets its own UDP socket, so exporters whose
templates would collide stay apart on the receiver (they all come from this host's address, but
from different ports).
"""

from __future__ import annotations

import math
import socket
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .config import split_hostport


@dataclass
class Packet:
    src: tuple[str, int]
    payload: bytes
    ts: float


def _sflow_agent_end(p: bytes) -> int:
    """Offset just past an sFlow v5 datagram's agent address (type 0 unknown: no address)."""
    atype = struct.unpack_from("!I", p, 4)[0]
    return 8 + {0: 0, 1: 4}.get(atype, 16)


def stream_key(src: tuple[str, int], p: bytes) -> tuple[object, ...] | None:
    """Which sequence space the datagram belongs to, or None for unknown payloads."""
    if len(p) >= 4 and p[:4] == b"\x00\x00\x00\x05" and len(p) >= 28:
        # sFlow v5: agent address type decides where sub-agent id sits
        off = _sflow_agent_end(p)
        if len(p) < off + 12:
            return None
        return (src, "sflow", p[8:off], struct.unpack_from("!I", p, off)[0])
    if len(p) < 4:
        return None
    ver = struct.unpack_from("!H", p, 0)[0]
    if ver == 5 and len(p) >= 24:
        return (src, 5, p[20], p[21])  # engine type / id
    if ver == 9 and len(p) >= 20:
        return (src, 9, struct.unpack_from("!I", p, 16)[0])
    if ver == 10 and len(p) >= 16:
        return (src, 10, struct.unpack_from("!I", p, 12)[0])
    return None


def _ipfix_record_bound(p: bytes) -> int:
    """Upper bound of data records in an IPFIX message: a record is at least one byte."""
    n, off = 0, 16
    while off + 4 <= len(p):
        sid, slen = struct.unpack_from("!HH", p, off)
        if slen < 4:
            break
        if sid >= 256:
            n += slen - 4
        off += slen
    return n


def increment(p: bytes) -> int:
    """How far this datagram advances its stream's sequence number."""
    if p[:4] == b"\x00\x00\x00\x05":
        return 1
    ver = struct.unpack_from("!H", p, 0)[0]
    if ver == 5:
        return struct.unpack_from("!H", p, 2)[0]
    if ver == 9:
        return 1
    if ver == 10:
        return _ipfix_record_bound(p)
    return 0


def sequence(p: bytes) -> int | None:
    if p[:4] == b"\x00\x00\x00\x05":
        off = _sflow_agent_end(p)
        if len(p) < off + 8:
            return None
        return int(struct.unpack_from("!I", p, off + 4)[0])
    ver = struct.unpack_from("!H", p, 0)[0]
    if ver == 5:
        return int(struct.unpack_from("!I", p, 16)[0])
    if ver == 9:
        return int(struct.unpack_from("!I", p, 12)[0])
    if ver == 10:
        return int(struct.unpack_from("!I", p, 8)[0])
    return None


def rewrite(p: bytes, seq_add: int, secs_add: int) -> bytes:
    """The datagram with its sequence advanced by seq_add and its clock by secs_add seconds."""
    if seq_add == 0 and secs_add == 0:
        return p
    b = bytearray(p)
    m32 = 0xFFFFFFFF
    if p[:4] == b"\x00\x00\x00\x05":
        off = _sflow_agent_end(p)
        if len(p) < off + 12:
            return p
        seq, up = struct.unpack_from("!II", p, off + 4)
        struct.pack_into("!II", b, off + 4, (seq + seq_add) & m32, (up + secs_add * 1000) & m32)
        return bytes(b)
    ver = struct.unpack_from("!H", p, 0)[0]
    if ver == 5:
        secs = struct.unpack_from("!I", p, 8)[0]
        seq = struct.unpack_from("!I", p, 16)[0]
        struct.pack_into("!I", b, 8, (secs + secs_add) & m32)
        struct.pack_into("!I", b, 16, (seq + seq_add) & m32)
    elif ver == 9:
        secs, seq = struct.unpack_from("!II", p, 8)
        struct.pack_into("!II", b, 8, (secs + secs_add) & m32, (seq + seq_add) & m32)
    elif ver == 10:
        secs, seq = struct.unpack_from("!II", p, 4)
        struct.pack_into("!II", b, 4, (secs + secs_add) & m32, (seq + seq_add) & m32)
    return bytes(b)


class Plan:
    """Per-stream sequence spans and the loop period, computed once from the capture."""

    def __init__(self, packets: list[Packet]) -> None:
        self.packets = packets
        first: dict[object, int] = {}
        end: dict[object, int] = {}
        for pk in packets:
            key = stream_key(pk.src, pk.payload)
            if key is None:
                continue
            seq = sequence(pk.payload)
            if seq is None:
                continue
            first.setdefault(key, seq)
            end[key] = max(end.get(key, seq), seq + increment(pk.payload))
        self.span = {k: max(1, end[k] - first[k]) for k in first}
        ts = [pk.ts for pk in packets]
        # whole seconds (the header clocks are in seconds), at least one
        self.period = max(1, math.ceil(max(ts) - min(ts)) + 1) if ts else 1

    def datagrams(self, loop: int) -> Iterable[tuple[tuple[str, int], bytes]]:
        for pk in self.packets:
            key = stream_key(pk.src, pk.payload)
            if key is None or loop == 0:
                yield pk.src, pk.payload
            else:
                yield pk.src, rewrite(pk.payload, loop * self.span[key], loop * self.period)


def load(path: str, port: int | None = None) -> list[Packet]:
    from .pcap import PcapStats, iter_udp

    out = []
    stats = PcapStats()
    for d in iter_udp(path, stats=stats):
        if port is not None and d.dport != port:
            continue
        out.append(Packet((d.src, d.sport), d.payload, d.ts))
    if stats.skipped:
        # e.g. truncated_capture: datagrams the capture's snaplen cut short are not sent
        print(f"replay: {path}: skipped {', '.join(f'{n} {r}' for r, n in sorted(stats.skipped.items()))}",
              file=sys.stderr)
    return out


def replay(path: str, to: str, *, rate: float = 0.0, loops: int = 1, port_filter: int | None = None,
           quiet: bool = False) -> int:
    """Send the capture `loops` times (0 = forever) at `rate` datagrams/s (0 = as fast as possible)."""
    host, port = split_hostport(to)
    packets = load(path, port_filter)
    if not packets:
        print(f"replay: {path}: no UDP datagrams found", file=sys.stderr)
        return 1
    plan = Plan(packets)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: dict[tuple[str, int], socket.socket] = {}
    sent = 0
    start = time.perf_counter()
    loop = 0
    try:
        while loops == 0 or loop < loops:
            for src, payload in plan.datagrams(loop):
                s = socks.get(src)
                if s is None:
                    s = socks[src] = socket.socket(family, socket.SOCK_DGRAM)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
                if rate > 0:
                    due = start + sent / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                while True:
                    try:
                        s.sendto(payload, (host, port))
                        break
                    except BlockingIOError:
                        time.sleep(0.0005)
                sent += 1
            loop += 1
    except KeyboardInterrupt:
        pass
    finally:
        for s in socks.values():
            s.close()
    if not quiet:
        el = time.perf_counter() - start
        print(f"replay: sent {sent} datagrams ({loop} loop(s) of {len(packets)}) to {host}:{port} "
              f"in {el:.2f}s", file=sys.stderr)
    return 0
