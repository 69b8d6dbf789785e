"""`flowscope replay FILE --to HOST:PORT`: send the UDP payloads of a capture, loop after loop.

Why rewrite headers: collectors (flowscope included, and every peer) treat a repeated sequence
number or export time from one exporter as a duplicate or a reset, and a forward jump as loss.
Each loop k therefore shifts, per exporter stream (source address and port, version, engine /
source id / observation domain / sFlow agent and sub-agent), the header's
  NetFlow v5  flow_sequence and unix_secs
  NetFlow v9  package sequence and unix_secs
  IPFIX       sequence number and export time, of every message of the datagram (RFC 7011
              10.3.3 allows several; each is in the stream of its own observation domain)
  sFlow v5    datagram sequence and uptime (in ms), and the cumulative drops counter of each
              flow sample and discarded-packet sample, per data source
so that loop k+1 continues each stream's sequence exactly where loop k ended: the shift is the
stream's progress over the whole capture modulo 2^32, from its first sequence number to the one a
receiver expects after the last message (last sequence + its advance, unless the capture ends with
messages the decoder's check takes for late ones; for a stream numbered by each message's own
records too, Open vSwitch's v5 and softflowd's IPFIX, the last number + the first message's
advance), so it stays right when the sequence wraps or the exporter restarted inside the capture. The advance of a message is what the protocol counts:
flows (v5), packets (v9; for a stream numbered by the flow records before each packet, Juniper's,
the last packet's flow records, options records left out), datagrams (sFlow), data records (IPFIX,
counted from the templates and options templates seen earlier in the capture, walking variable-length fields; a data set whose
template is unknown counts its upper bound, one record per byte, for that message only; a message
without data records advances by 0). The clocks move by one period per loop: at least the
capture's duration and each stream's header-clock span (export time / unix_secs, sFlow uptime),
plus one second, so header clocks never go backwards at a loop boundary (flow times relative to
them, sysUptime-based v5/v9 and sFlow, move with them; a flow that started before the capture's
first export can still start before the previous loop's last one ended). Loop 0 is sent unchanged;
data records are never changed, so absolute flow times inside records (IPFIX/v9 flowStart/flowEnd
Seconds/Milliseconds/Microseconds/NanoSeconds, IEs 150-157) repeat every loop.

Each distinct capture source (address, port) gets its own UDP socket, so exporters whose
templates and sequences would collide stay apart on the receiver (they all come from this host's
address, but from different ports), and keeps it, and so its source port, across loops. Sockets
are bounded (MAX_SOCKETS, least recently used closed first, and fewer if the process runs out of
file descriptors): a capture with more sources than that sends the ones beyond the bound from a
fresh socket each time they come back, so their source port rotates and the receiver sees a new
exporting process (v9/IPFIX data before the next template refresh then lacks its template).
Sharing one port between sources instead would mix their templates and sequences.

Memory: the capture is read as a stream. The first pass sends loop 0 and plans the shifts; later
loops come from memory when the payloads fit in CACHE_BYTES, else from reading the file again.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import stat
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from decoders import _core

from .config import local_host, split_hostport

M32 = 0xFFFFFFFF
VARLEN = 0xFFFF  # RFC 7011 7: a field length of 65535 means variable length
# the decoder's own limits: templates with more fields are refused; a sequence jump beyond
# SEQ_MAX_GAP either way is a restart, as is one back with an uptime SEQ_RESTART_UPTIME_MS back
MAX_TEMPLATE_FIELDS = _core.TEMPLATE_MAX_FIELDS
SEQ_MAX_GAP = _core.SEQUENCE_MAX_GAP
SEQ_RESTART_UPTIME_MS = _core.SEQUENCE_RESTART_UPTIME_MS
MAX_SOCKETS = 256
CACHE_BYTES = 32 << 20  # payloads (plus per-datagram overhead) kept for loops >= 1

Source = tuple[str, int]


@dataclass
class Packet:
    src: Source
    payload: bytes
    ts: float


@dataclass(frozen=True, slots=True)
class Unit:
    """One sequence-carrying header inside a datagram (several for IPFIX)."""

    key: tuple[object, ...]
    seq_off: int
    clock_off: int
    clock_ms: bool  # sFlow uptime (ms) rather than seconds
    start: int  # the message's bytes: p[start:end]
    end: int


def _sflow_agent_end(p: bytes) -> int:
    """Offset just past an sFlow v5 datagram's agent address (type 0 unknown: no address)."""
    atype = struct.unpack_from("!I", p, 4)[0]
    return 8 + {0: 0, 1: 4}.get(atype, 16)


def units(src: Source, p: bytes) -> list[Unit]:
    """The sequence-carrying headers of a datagram: none for payloads that are not flow exports."""
    if len(p) >= 28 and p[:4] == b"\x00\x00\x00\x05":
        # sFlow v5: agent address type decides where sub-agent id, sequence and uptime sit
        off = _sflow_agent_end(p)
        if len(p) < off + 12:
            return []
        key = (src, "sflow", p[8:off], struct.unpack_from("!I", p, off)[0])
        return [Unit(key, off + 4, off + 8, True, 0, len(p))]
    if len(p) < 4:
        return []
    ver = struct.unpack_from("!H", p, 0)[0]
    if ver in (5, 7) and len(p) >= 24:
        return [Unit((src, ver, p[20], p[21]), 16, 8, False, 0, len(p))]  # engine type / id (v7: 0)
    if ver == 9 and len(p) >= 20:
        return [Unit((src, 9, struct.unpack_from("!I", p, 16)[0]), 12, 8, False, 0, len(p))]
    if ver != 10:
        return []
    out = []
    off = 0
    while len(p) - off >= 16:
        mver, mlen = struct.unpack_from("!HH", p, off)
        if mver != 10 or mlen < 16 or off + mlen > len(p):
            break
        domain = struct.unpack_from("!I", p, off + 12)[0]
        out.append(Unit((src, 10, domain), off + 8, off + 4, False, off, off + mlen))
        off += mlen
    return out


def sflow_drops(p: bytes) -> list[tuple[int, int, int]]:
    """(offset, kind, source) of the cumulative drops counters of an sFlow v5 datagram's flow
    samples (compact and expanded) and discarded-packet samples (sflow_drops.txt), keyed as the
    decoder keys them (ExporterState.sample_drops: the source type, | 0x100 for discards)."""
    unpack = struct.unpack_from
    off = _sflow_agent_end(p)
    if len(p) < off + 16:
        return []
    out = []
    pos = off + 16
    for _ in range(unpack("!I", p, off + 12)[0]):
        if len(p) - pos < 8:
            break
        fmt, slen = unpack("!II", p, pos)
        body = pos + 8
        if slen > len(p) - body:
            break
        if fmt == 1 and slen >= 32:     # sequence, source id (type << 24 | index), rate, pool, drops
            sid = unpack("!I", p, body + 4)[0]
            out.append((body + 16, sid >> 24, sid & 0xFFFFFF))
        elif fmt == 3 and slen >= 44:   # sequence, source type, source index, rate, pool, drops
            out.append((body + 20, *unpack("!II", p, body + 4)))
        elif fmt == 5 and slen >= 32:   # sequence, source type, source index, drops
            kind, source = unpack("!II", p, body + 4)
            out.append((body + 12, 0x100 | kind, source))
        pos = body + slen + (-slen & 3)
    return out


def _shift(p: bytes, heads: Iterable[tuple[int, int, int, int]], loop: int, secs: int) -> bytes:
    """The datagram with each header (sequence offset, clock offset, clock units per second,
    sequence span) advanced by `loop` spans and its clock by `secs` seconds; a head without a
    clock (offset -1) is an sFlow drops counter, advanced unless 0 (no counter)."""
    unpack, pack = struct.unpack_from, struct.pack_into
    b = bytearray(p)
    for seq_off, clock_off, mult, span in heads:
        v = unpack("!I", p, seq_off)[0]
        if clock_off < 0:
            if v:
                pack("!I", b, seq_off, (v + loop * span) & M32)
            continue
        pack("!I", b, seq_off, (v + loop * span) & M32)
        pack("!I", b, clock_off, (unpack("!I", p, clock_off)[0] + secs * mult) & M32)
    return bytes(b)


class IpfixRecords:
    """Counts the data records of IPFIX messages as a collector does (RFC 7011 3.1: the sequence
    number counts data records), from the templates and options templates seen so far, per
    (source, observation domain, template id)."""

    def __init__(self) -> None:
        # (source, domain, template id) -> (options template?, field lengths)
        self._t: dict[tuple[object, int, int], tuple[bool, tuple[int, ...]]] = {}

    def count(self, src: Source, p: bytes, start: int, end: int) -> tuple[int, bool]:
        """Learn the message p[start:end]'s templates and return (its data records, whether all
        were counted); a data set whose records cannot be counted (unknown template, a record
        running past the set) counts its upper bound, one record per byte."""
        domain = struct.unpack_from("!I", p, start + 12)[0]
        n = 0
        exact = True
        off = start + 16
        while end - off >= 4:
            sid, slen = struct.unpack_from("!HH", p, off)
            if slen < 4 or off + slen > end:
                break  # the decoder stops the message here too
            body = p[off + 4 : off + slen]
            if sid in (2, 3):
                self._templates(src, domain, body, sid == 3)
            elif sid >= 256:
                got = self._records(self._t.get((src, domain, sid)), body)
                n += len(body) if got is None else got
                exact = exact and got is not None
            off += slen
        return n, exact

    def _templates(self, src: Source, domain: int, body: bytes, options: bool) -> None:
        pos = 0
        while len(body) - pos >= 4:
            tid, count = struct.unpack_from("!HH", body, pos)
            if tid == 0 and not any(body[pos:]):
                return  # padding
            pos += 4
            if count == 0:  # RFC 7011 8.1: withdrawal; id 2 / 3 withdraws all of that kind
                if tid in (2, 3):
                    for k in [k for k, v in self._t.items() if k[:2] == (src, domain) and v[0] == options]:
                        del self._t[k]
                else:
                    self._t.pop((src, domain, tid), None)
                continue
            scope = 0
            if options:
                if len(body) - pos < 2:
                    return
                scope = struct.unpack_from("!H", body, pos)[0]
                pos += 2
            lengths = []
            for _ in range(count):
                if len(body) - pos < 4:
                    self._t.pop((src, domain, tid), None)
                    return
                ie, ln = struct.unpack_from("!HH", body, pos)
                pos += 8 if ie & 0x8000 else 4  # an enterprise number follows
                lengths.append(ln)
            if pos > len(body):
                self._t.pop((src, domain, tid), None)
                return
            ok = (tid >= 256 and count <= MAX_TEMPLATE_FIELDS and (not options or 0 < scope <= count)
                  and sum(1 if ln == VARLEN else ln for ln in lengths) > 0)
            if ok:
                self._t[(src, domain, tid)] = (options, tuple(lengths))
            else:
                self._t.pop((src, domain, tid), None)  # refused, as the decoder does

    @staticmethod
    def _records(tmpl: tuple[bool, tuple[int, ...]] | None, body: bytes) -> int | None:
        if tmpl is None:
            return None
        lengths = tmpl[1]
        min_len = sum(1 if ln == VARLEN else ln for ln in lengths)
        if VARLEN not in lengths:
            return len(body) // min_len  # what is left is padding
        n = pos = 0
        while len(body) - pos >= min_len:
            for ln in lengths:
                if ln == VARLEN:  # RFC 7011 7: one length byte, or 255 and two more
                    if pos >= len(body):
                        return None
                    ln = body[pos]
                    pos += 1
                    if ln == 255:
                        if len(body) - pos < 2:
                            return None
                        ln = struct.unpack_from("!H", body, pos)[0]
                        pos += 2
                pos += ln
                if pos > len(body):
                    return None  # the decoder refuses the message; the bound is harmless
            n += 1
        return n


class V9Records:
    """Counts the flow records of NetFlow v9 packets as the decoder does for a stream numbered
    by records (v9_convention: data records of flow templates, options records left out), from
    the templates and options templates seen so far, per (source, source id, template id)."""

    def __init__(self) -> None:
        # (source, source id, template id) -> (options template?, record length)
        self._t: dict[tuple[object, int, int], tuple[bool, int]] = {}

    def count(self, src: Source, p: bytes) -> int | None:
        """Learn the packet's templates and return its flow records (None: not all countable, a
        data flowset of an unknown template or the packet cut inside a flowset)."""
        domain = struct.unpack_from("!I", p, 16)[0]
        n = 0
        off = 20
        while len(p) - off >= 4:
            fid, flen = struct.unpack_from("!HH", p, off)
            if flen < 4 or off + flen > len(p):
                return None
            body = p[off + 4 : off + flen]
            if fid == 0:
                pos = 0
                while len(body) - pos >= 4:
                    tid, count = struct.unpack_from("!HH", body, pos)
                    pos += 4
                    if len(body) - pos < 4 * count:
                        break
                    reclen = sum(struct.unpack_from("!H", body, pos + 4 * i + 2)[0] for i in range(count))
                    pos += 4 * count
                    self._learn(src, domain, tid, False, reclen if count <= MAX_TEMPLATE_FIELDS else 0)
            elif fid == 1:
                pos = 0
                while len(body) - pos >= 6:
                    tid, scope_len, opt_len = struct.unpack_from("!HHH", body, pos)
                    pos += 6
                    if tid < 256 or len(body) - pos < scope_len + opt_len:
                        break  # the rest is padding
                    reclen = sum(struct.unpack_from("!H", body, pos + i + 2)[0]
                                 for i in range(0, scope_len + opt_len - 3, 4))
                    pos += scope_len + opt_len
                    self._learn(src, domain, tid, True, reclen)
            elif fid >= 256:
                t = self._t.get((src, domain, fid))
                if t is None:
                    return None
                if not t[0]:
                    n += len(body) // t[1]  # what is left is padding
            off += flen
        return n

    def _learn(self, src: Source, domain: int, tid: int, options: bool, reclen: int) -> None:
        if tid >= 256 and reclen > 0:
            self._t[(src, domain, tid)] = (options, reclen)
        else:
            self._t.pop((src, domain, tid), None)


class _Stream:
    """One exporter stream over the capture: its first sequence number, the next one a receiver
    expects after the messages so far, and its header-clock range."""

    __slots__ = ("first", "expected", "uptime", "end", "clock_min", "clock_max", "clock_ms", "last_src",
                 "last_msg", "first_adv", "expected_adv", "last", "inc_votes", "rfc_votes", "records",
                 "expected_records")

    def __init__(self, seq: int, clock: int, clock_ms: bool) -> None:
        self.first = seq
        self.expected: int | None = None
        self.uptime = -1
        # The numbering (v5 and IPFIX, ExporterState.ipfix_convention): steps between two
        # messages counted whole whose counts differ vote for the RFC's (the previous message's
        # count: the number counts what was sent before) or for the message's own count (Open
        # vSwitch's v5, softflowd's IPFIX: the number counts the message's records too)
        self.first_adv: int | None = -1  # (-1: no message yet; None: the first not counted whole)
        self.expected_adv = 0
        self.last: tuple[int, int] | None = None
        self.inc_votes = self.rfc_votes = 0
        # NetFlow v9 (v9_convention): the previous packet's number and flow records (None: not
        # counted), and those of the packet that set what is expected
        self.records: tuple[int, int] | None = None
        self.expected_records: int | None = None
        self.end = seq  # last sequence + its advance (upper bound)
        self.clock_min = self.clock_max = clock
        self.clock_ms = clock_ms
        self.last_src: Source | None = None
        self.last_msg = b""  # an IPFIX stream's last message, recounted with the final templates

    def step(self, seq: int, adv: int, uptime: int, exact: bool, records: int | None = None) -> None:
        """Follow the message as the decoder's sequence check does (ExporterState.sequence in
        decoders/netflow.pxi): a message a little behind is late and leaves what is expected
        unchanged, unless the uptime went back more than a minute (a restart); a message whose
        records could not all be counted makes the receiver start over. (The decoder's open gaps
        decide only what is counted as lost, not what is expected next.) `records`: a v9 packet's
        flow records (None: not counted), for v9_convention's votes: after a packet of more
        than one, a step of its count votes for numbering by records, a step of 1 for packets."""
        self.end = (seq + adv) & M32
        if self.records is not None and records is not None and self.records[1] > 1:
            step = (seq - self.records[0]) & M32
            self.inc_votes += step == self.records[1]
            self.rfc_votes += step == 1
        self.records = None if records is None else (seq, records)
        if self.first_adv == -1:
            self.first_adv = adv if exact else None
        if self.last is not None and exact and adv != self.last[1]:
            step = (seq - self.last[0]) & M32
            self.inc_votes += step == adv
            self.rfc_votes += step == self.last[1]
        self.last = (seq, adv) if exact else None
        if not exact:
            self.expected = None
            return
        exp = self.expected
        if exp is not None:
            ahead, behind = (seq - exp) & M32, (exp - seq) & M32
            if not (ahead and ahead <= SEQ_MAX_GAP) and behind and behind <= SEQ_MAX_GAP:
                back = (self.uptime - uptime) & M32 if uptime >= 0 and self.uptime >= 0 else 0
                if back <= SEQ_RESTART_UPTIME_MS or back >= 0x80000000:
                    return  # late
        self.expected = (seq + adv) & M32
        self.expected_adv = adv
        self.expected_records = records
        self.uptime = uptime

    def progress(self) -> int | None:
        """What the stream's numbers moved by over the capture, up to the number its next message
        would carry (None: the receiver starts over after the last message). A stream numbered
        by what each message carries too (its votes lead by two, as the decoder decides)
        continues with the first message's count after the last in-order number, not its own:
        read as a gap otherwise at each loop boundary, or as a restart where the v5 header uptime
        went back more than a minute with it."""
        if self.expected is None:
            return None
        end = self.expected
        if self.expected_records is not None and self.inc_votes > self.rfc_votes:
            # A v9 stream numbered by the flow records before each packet (Juniper's), as the
            # decoder reads it once that reading leads (it holds what the other would call lost
            # on a lead of one): the next loop goes on with the last packet's records after its
            # number. Going on by one packet, the loop boundary was a vote for numbering by
            # packets: a capture with one vote for records was never decided, what the packets
            # reading called lost counted at every loop, and a decided one was read by packets
            # at each boundary until the next loop's steps turned it back.
            return (end - 1 + self.expected_records - self.first) & M32
        if self.first_adv is not None and self.first_adv >= 0 and self.inc_votes > self.rfc_votes + 1:
            end = end - self.expected_adv + self.first_adv
        return (end - self.first) & M32


class Plan:
    """Per-stream sequence shifts and the loop period, from one pass over the capture (`add`
    each datagram, then `finish`); keeps the payloads for later loops while they fit."""

    def __init__(self, packets: Iterable[Packet] = (), *, cache_bytes: int | None = None) -> None:
        self._streams: dict[tuple[object, ...], _Stream] = {}
        self._ipfix = IpfixRecords()
        self._v9 = V9Records()
        self._ts_min = math.inf
        self._ts_max = -math.inf
        self._cache_left = CACHE_BYTES if cache_bytes is None else cache_bytes   # (read now: tests lower it)
        self.cache: list[tuple[Source, bytes]] | None = []
        self._prepared: list[tuple[Source, bytes, tuple[tuple[int, int, int, int], ...]]] | None = None
        self.count = 0
        self.sources: set[Source] = set()
        self.span: dict[tuple[object, ...], int] = {}
        # sFlow drops counters: (stream key, kind, source) -> [first, last] non-zero value, then
        # their progress over the capture (drops_span)
        self._drops: dict[tuple[object, ...], list[int]] = {}
        self.drops_span: dict[tuple[object, ...], int] = {}
        self.period = 1
        for pk in packets:
            self.add(pk.src, pk.payload, pk.ts)
        if self.count:
            self.finish()

    def add(self, src: Source, p: bytes, ts: float) -> None:
        self.count += 1
        self.sources.add(src)
        if self.cache is not None:
            self._cache_left -= len(p) + 100
            if self._cache_left >= 0:
                self.cache.append((src, p))
            else:
                self.cache = None
        if ts > 0:  # a pcapng Simple Packet Block has no time (0): not part of the duration
            self._ts_min = min(self._ts_min, ts)
            self._ts_max = max(self._ts_max, ts)
        for u in units(src, p):
            seq, clock = (struct.unpack_from("!I", p, o)[0] for o in (u.seq_off, u.clock_off))
            st = self._streams.get(u.key)
            if st is None:
                st = self._streams[u.key] = _Stream(seq, clock, u.clock_ms)
            else:
                st.clock_min = min(st.clock_min, clock)
                st.clock_max = max(st.clock_max, clock)
            exact = True
            records = None
            if u.key[1] == 10:
                adv, exact = self._ipfix.count(src, p, u.start, u.end)
                st.last_src, st.last_msg = src, p[u.start : u.end]
                uptime = -1  # IPFIX has none
            elif u.key[1] in (5, 7):
                adv = struct.unpack_from("!H", p, 2)[0]  # flows in the datagram
                uptime = struct.unpack_from("!I", p, 4)[0]
            else:
                adv = 1  # v9 packets, sFlow datagrams
                uptime = clock if u.clock_ms else struct.unpack_from("!I", p, 4)[0]
                if u.key[1] == 9:
                    records = self._v9.count(src, p)
                if u.clock_ms:
                    for off, kind, source in sflow_drops(p):
                        v = struct.unpack_from("!I", p, off)[0]
                        if v:
                            d = self._drops.setdefault((u.key, kind, source), [v, v])
                            d[1] = v
            st.step(seq, adv, uptime, exact, records)

    def finish(self) -> None:
        """Compute the shifts: each stream's progress over the capture, mod 2^32, and the period."""
        period = math.ceil(self._ts_max - self._ts_min) + 1 if self._ts_max >= self._ts_min else 1
        for key, st in self._streams.items():
            span = st.progress()
            if span is None:
                # the receiver starts over after the last message (not all its records could be
                # counted): any continuation is right; recount it with the templates a receiver
                # has by the next loop (those defined after it, too)
                end = st.end
                if st.last_msg and st.last_src is not None:
                    seq = struct.unpack_from("!I", st.last_msg, 8)[0]
                    end = seq + self._ipfix.count(st.last_src, st.last_msg, 0, len(st.last_msg))[0]
                span = (end - st.first) & M32
            self.span[key] = span
            clock_span = st.clock_max - st.clock_min
            secs = math.ceil(clock_span / 1000) if st.clock_ms else clock_span
            period = max(period, secs + 1)
        self.period = max(1, period)
        # A drops counter is cumulative: each loop goes on from where the last ended, or the
        # receiver takes the first value, back below the last, for an agent restart and counts
        # all of it as new drops (flowscope_exporter_sample_drops_total) every loop. (One that
        # went back inside the capture, a restart there, repeats as it is.)
        self.drops_span = {k: last - first for k, (first, last) in self._drops.items() if last > first}

    def _heads(self, src: Source, p: bytes) -> tuple[tuple[int, int, int, int], ...]:
        """Where the datagram's headers (and sFlow drops counters) are and how far each moves
        per loop (for _shift)."""
        heads = [(u.seq_off, u.clock_off, 1000 if u.clock_ms else 1, self.span[u.key])
                 for u in units(src, p) if u.key in self.span]
        if self.drops_span and heads and p[:4] == b"\x00\x00\x00\x05":
            key = units(src, p)[0].key
            heads += [(off, -1, 0, self.drops_span[(key, kind, source)]) for off, kind, source in sflow_drops(p)
                      if (key, kind, source) in self.drops_span]
        return tuple(heads)

    def shifted(self, src: Source, p: bytes, loop: int) -> bytes:
        """The datagram as loop `loop` sends it."""
        heads = self._heads(src, p) if loop else ()
        return _shift(p, heads, loop, loop * self.period) if heads else p

    def datagrams(self, loop: int, packets: Iterable[tuple[Source, bytes]] | None = None,
                  ) -> Iterator[tuple[Source, bytes]]:
        """Loop `loop`'s datagrams, from `packets` or else the kept payloads."""
        if packets is not None:
            for src, p in packets:
                yield src, self.shifted(src, p, loop)
            return
        if loop == 0:
            yield from self.cache or []
            return
        if self._prepared is None:   # where each kept datagram's headers are, parsed once for all loops
            self._prepared = [(src, p, self._heads(src, p)) for src, p in self.cache or []]
        secs = loop * self.period
        for src, p, heads in self._prepared:
            yield src, (_shift(p, heads, loop, secs) if heads else p)


def parse_to(to: str) -> tuple[str, int]:
    """--to HOST:PORT (IPv6 as [ADDR]:PORT, with an optional %scope): (host, port); ValueError.

    Written as a listener is (`--listen netflow://:2055`, `[::]:2055`), the wildcard host
    (empty, 0.0.0.0, ::) is this host: sent to 127.0.0.1 (::1 for ::), and printed so."""
    try:
        host, port = split_hostport(to)
    except ValueError:
        hint = ("; an IPv6 address goes in brackets, [ADDR]:PORT" if to.count(":") > 1 and not to.startswith("[")
                else "")
        raise ValueError(f"--to {to!r}: expected HOST:PORT, :PORT for this host, or [ADDR]:PORT for "
                         f"IPv6{hint}") from None
    if port == 0:
        raise ValueError(f"--to {to!r}: port must be 1-65535")
    return local_host(host), port


def resolve_to(to: str) -> tuple[int, tuple[object, ...], str]:
    """Resolve --to once: (address family, socket address, HOST:PORT as printed)."""
    host, port = parse_to(to)
    try:
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise ValueError(f"--to {to!r}: cannot resolve host {host!r}: {reason}") from None
    family, _t, _p, _c, addr = ai[0]
    ip = str(addr[0])
    shown = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
    return family, addr, shown


class Sockets:
    """One UDP socket per capture source, at most `limit` open (least recently used closed first,
    and earlier when the process runs out of file descriptors). With `dest` each socket is
    connected to it, so that the kernel reports an ICMP port unreachable from it (nothing
    listens there: the collector not started, a mistyped port) on the socket: `refused` counts
    the reports (a report stands for one datagram or more; a remote host's may come late, or never)."""

    def __init__(self, family: int, limit: int = MAX_SOCKETS, dest: tuple[object, ...] | None = None) -> None:
        self._family = family
        self._limit = limit
        self._dest = dest
        self._socks: OrderedDict[Source, socket.socket] = OrderedDict()
        self.rotated = 0  # sockets closed to make room
        self.refused = 0  # ICMP port unreachable reported on the connected sockets

    def get(self, src: Source) -> socket.socket:
        s = self._socks.get(src)
        if s is not None:
            self._socks.move_to_end(src)
            return s
        while True:
            if len(self._socks) >= self._limit:
                self._evict()
            try:
                s = socket.socket(self._family, socket.SOCK_DGRAM)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE) and self._socks:
                    self._limit = max(1, len(self._socks) - 1)  # the descriptors there are
                    self._evict()
                    continue
                raise
            break
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        if self._dest is not None:
            try:
                s.connect(self._dest)
            except BaseException:
                s.close()
                raise
        self._socks[src] = s
        return s

    def send(self, s: socket.socket, payload: bytes) -> None:
        """Send one datagram to the destination (given to the constructor) on `s`."""
        while True:
            try:
                s.send(payload)
                return
            except BlockingIOError:
                time.sleep(0.0005)
            except ConnectionRefusedError:
                # an earlier datagram's ICMP port unreachable, reported here (and cleared):
                # this one was not sent yet
                self.refused += 1

    def _pending(self, s: socket.socket) -> None:
        """Count an ICMP port unreachable the socket holds and has not reported yet."""
        try:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED:
                self.refused += 1
        except OSError:
            pass

    def _evict(self) -> None:
        _src, old = self._socks.popitem(last=False)
        self._pending(old)
        old.close()
        self.rotated += 1

    def close(self) -> None:
        for s in self._socks.values():
            self._pending(s)
            s.close()
        self._socks.clear()


def _rereadable(path: str) -> bool:
    """A path the later loops can open and read again from its start (a regular file; not a FIFO,
    /dev/stdin or a process substitution)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _skipped_line(path: str, skipped: dict[str, int]) -> str:
    return f"flowscope replay: {path}: skipped {', '.join(f'{n} {r}' for r, n in sorted(skipped.items()))}"


def replay(path: str, to: str, *, rate: float = 0.0, loops: int = 1, port_filter: int | None = None,
           quiet: bool = False) -> int:
    """Send the capture `loops` times (0 = forever) at `rate` datagrams/s (0 = as fast as possible).
    0 when all was sent, 1 when nothing was found or the capture is cut short (the rest is sent
    anyway, as `flowscope decode` decodes it), 130 on Ctrl-C."""
    from .pcap import PcapStats, iter_udp

    family, dest, shown = resolve_to(to)  # ValueError: a usage error, before reading anything
    stats = PcapStats()
    plan = Plan()
    socks = Sockets(family, dest=dest)
    sent = 0
    loop = 0
    interrupted = False
    loops_failed = False
    start = time.perf_counter()

    def send(src: Source, payload: bytes) -> None:
        nonlocal sent
        s = socks.get(src)
        if rate > 0:
            delay = start + sent / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        socks.send(s, payload)
        sent += 1

    def capture() -> Iterator[tuple[Source, bytes, float]]:
        for d in iter_udp(path, stats=stats if loop == 0 else None):
            if port_filter is None or d.dport == port_filter:
                yield (d.src, d.sport), d.payload, d.ts

    try:
        # Pass 1: loop 0 goes out unchanged while the plan is made.
        for src, payload, ts in capture():
            plan.add(src, payload, ts)
            send(src, payload)
        if not plan.count:
            # a file cut inside its first record holds none either: that is the reason to give; a
            # capture with datagrams to other ports says so, as decode does (the --port is wrong,
            # not the capture)
            seen = f"{stats.datagrams} UDP datagrams, none to port {port_filter}" \
                if port_filter is not None and stats.datagrams else "no UDP datagrams found"
            print(f"flowscope replay: {path}: {stats.truncated or seen}", file=sys.stderr)
            if stats.skipped:
                print(_skipped_line(path, stats.skipped), file=sys.stderr)
            return 1
        plan.finish()
        loop = 1
        if (loops == 0 or loops > 1) and plan.cache is None and not _rereadable(path):
            # the payloads did not fit in memory and a pipe cannot be read twice: later loops
            # would send nothing (and --loop 0 would spin for ever doing so)
            print(f"flowscope replay: {path}: the capture is larger than the {CACHE_BYTES >> 20} MiB kept in "
                  "memory for later loops and is not a regular file, so it cannot be read again; "
                  "sent loop 1 only (save it to a file to loop it)", file=sys.stderr)
            loops_failed = True
            loops = 1
        while loops == 0 or loop < loops:
            if plan.cache is not None:
                for src, payload in plan.datagrams(loop):
                    send(src, payload)
            else:
                n = 0
                for src, payload, _ts in capture():
                    if n == plan.count:
                        break  # the file grew since the first pass: what was planned only
                    n += 1
                    send(src, plan.shifted(src, payload, loop))
            loop += 1
    except KeyboardInterrupt:
        interrupted = True
    finally:
        socks.close()
    if not quiet:
        el = time.perf_counter() - start
        whole = f"{loop} loop(s) of {plan.count}" if loop else f"first loop, {plan.count} read so far"
        print(f"flowscope replay: sent {sent} datagrams ({whole}) to {shown} in {el:.2f}s"
              + (" (interrupted)" if interrupted else ""), file=sys.stderr)
        if socks.rotated:
            print(f"flowscope replay: the capture has {len(plan.sources)} sources, more than the {MAX_SOCKETS} sockets "
                  f"kept open: {socks.rotated} were closed and reopened, so those sources' ports changed",
                  file=sys.stderr)
    if socks.refused:
        # said even with --quiet: the datagrams went nowhere
        print(f"flowscope replay: warning: nothing listens at {shown}: the kernel answered datagrams sent there "
              "with ICMP port unreachable, so they were dropped (is the collector running, and listening on "
              "that UDP port: --listen?)", file=sys.stderr)
    if stats.skipped:
        print(_skipped_line(path, stats.skipped), file=sys.stderr)
    if stats.truncated:
        print(f"flowscope replay: {path}: {stats.truncated}", file=sys.stderr)
    if interrupted:
        return 130
    return 1 if stats.truncated or loops_failed else 0
