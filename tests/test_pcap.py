"""The capture reader (collector/pcap.py) on the containers, link layers and IP corner cases real
captures come in, each built here byte by byte with struct around NetFlow v5 datagrams from
benchmarks.datagrams, and checked against what tshark 4.0 makes of the same bytes (the expected
values below are tshark's). Exit codes and messages go through the real `flowscope decode`.

No test here measures time: the subprocess timeout only turns a reader that never returns (the
zero-length fragment loop) into a failure instead of a hung test run.
"""

from __future__ import annotations

import gzip
import random
import struct
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from benchmarks.datagrams import v5_datagram, v5_records
from collector.pcap import PcapError, PcapStats, _Reassembler, iter_udp

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000
SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 1])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")


# --- builders --------------------------------------------------------------------------------

def export(i: int, n: int = 30) -> bytes:
    """NetFlow v5 datagram number i (30 records: 1464 bytes, more than one fragment)."""
    return v5_datagram(v5_records(n, random.Random(i), uptime_ms=600_000), seq=i * n, unix_secs=T0 + i,
                       uptime_ms=600_000)


def udp(payload: bytes, sport: int = 50000, dport: int = 2055) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ip4(l4: bytes, *, src: bytes = SRC4, ident: int = 1, flags_off: int = 0, total: int | None = None) -> bytes:
    tot = 20 + len(l4) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot, ident, flags_off, 64, 17, 0, src, DST4) + l4


def frag4(l4: bytes, pieces: list[tuple[int, int]], ident: int = 7) -> list[bytes]:
    """IPv4 fragments of l4 holding the byte ranges `pieces` (starts multiple of 8)."""
    return [ip4(l4[a:b], ident=ident, flags_off=(0x2000 if b < len(l4) else 0) | a // 8) for a, b in pieces]


def ip6(nxt: int, body: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), nxt, 64, SRC6, DST6) + body


def frag6(part: bytes, nxt: int, pieces: list[tuple[int, int]], ident: int = 0x1234) -> list[bytes]:
    """IPv6 fragments of the fragmentable part `part`, whose first header is nxt."""
    return [ip6(44, struct.pack("!BBHI", nxt, 0, a | (1 if b < len(part) else 0), ident) + part[a:b])
            for a, b in pieces]


def eth(pkt: bytes, etype: int | None = None) -> bytes:
    if etype is None:
        etype = 0x86DD if pkt[0] >> 4 == 6 else 0x0800
    return b"\x00\x11\x22\x33\x44\x55\x00\x66\x77\x88\x99\xaa" + struct.pack("!H", etype) + pkt


def pcap(frames: list[bytes], *, linktype: int = 1, ts: list[float] | None = None) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for n, f in enumerate(frames):
        t = ts[n] if ts else T0 + n
        out.append(struct.pack("<IIII", int(t), round((t - int(t)) * 1e6), len(f), len(f)) + f)
    return b"".join(out)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def block(btype: int, body: bytes) -> bytes:
    body = _pad(body)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def shb() -> bytes:
    return block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(linktype: int = 1, options: bytes = b"", snaplen: int = 0) -> bytes:
    return block(1, struct.pack("<HHI", linktype, 0, snaplen) + options)


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def epb(frame: bytes, ticks: int, ifid: int = 0) -> bytes:
    return block(6, struct.pack("<IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def read(path: Path) -> tuple[list, PcapStats]:
    st = PcapStats()
    return list(iter_udp(path, stats=st)), st


def decode(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "collector.cli", "decode", *args, "--no-enrich"], cwd=ROOT,
                          capture_output=True, timeout=60)


def stats_of(p: subprocess.CompletedProcess[bytes]) -> dict:
    return orjson.loads(p.stderr[p.stderr.index(b"{"):])


# --- 1. zero-length fragments ----------------------------------------------------------------

def test_zero_length_fragments_are_skipped_and_counted_never_a_hang(tmp_path: Path) -> None:
    """The reassembler walked `pos += len(chunk)` and looped forever on an empty fragment. Now
    such a fragment is skipped and counted, and the datagrams after it still decode (tshark
    decodes frame 2 of each capture)."""
    whole = udp(export(1))
    cut = eth(ip4(udp(export(2))[:800], ident=9, flags_off=0x2000))
    cases = {
        # header-only IPv4 fragment (total length 20, MF, offset 0)
        "v4_empty": (eth(ip4(b"", ident=7, flags_off=0x2000)), "empty_fragment"),
        # first fragment cut by the snaplen right after the IP header (its total length says 820)
        "v4_snap34": (cut[:34], "truncated_capture"),
        # an IPv6 Fragment header (offset 0, M) with no data after it
        "v6_empty": (eth(ip6(44, struct.pack("!BBHI", 17, 0, 1, 5))), "empty_fragment"),
        # an empty fragment (MF) at the offset the chain of fragments before it reaches
        "v4_empty_next": (eth(ip4(b"", ident=7, flags_off=0x2000 | 64)), "empty_fragment"),
    }
    for name, (frame, reason) in cases.items():
        frames = [frame, eth(ip4(whole, ident=8))]
        if name == "v4_empty_next":
            frames.insert(0, eth(frag4(udp(export(3)), [(0, 512)], ident=7)[0]))
        cap = write(tmp_path, f"{name}.pcap", pcap(frames))
        p = decode(str(cap), "--stats")
        assert p.returncode == 0, (name, p.stderr.decode())
        assert {orjson.loads(x)["TimeReceived"] for x in p.stdout.splitlines()} == {T0 + len(frames) - 1}, name
        skipped = stats_of(p)["capture"]["skipped"]
        assert skipped.pop(reason) == 1, (name, skipped)
        assert skipped == ({"incomplete_fragments": 1} if name == "v4_empty_next" else {}), name


# --- 2. VLAN tags in Linux cooked captures ---------------------------------------------------

def test_vlan_tags_after_linux_cooked_headers_are_walked(tmp_path: Path) -> None:
    """`tcpdump -i any` of tagged traffic: libpcap puts the tag back after the SLL header, so the
    protocol field is 0x8100 and the tag (TCI, real EtherType) follows. tshark: sll:vlan:ip:udp."""
    dgs = [export(i) for i in range(3)]
    tag = struct.pack("!HH", 5, 0x0800)
    sll = [struct.pack("!HHH8sH", 0, 1, 6, b"\x00\x11\x22\x33\x44\x55\0\0", 0x8100) + tag + ip4(udp(d))
           for d in dgs]
    sll2 = [struct.pack("!HHIHBB8s", 0x8100, 0, 2, 1, 0, 6, b"\x00\x11\x22\x33\x44\x55\0\0") + tag + ip4(udp(d))
            for d in dgs]
    # QinQ inside SLL: 802.1ad outer tag, then 802.1Q, then IPv4
    qinq = [struct.pack("!HHH8sH", 0, 1, 6, b"\0" * 8, 0x88A8) + struct.pack("!HH", 7, 0x8100) + tag + ip4(udp(d))
            for d in dgs]
    for name, frames, lt in (("sll", sll, 113), ("sll2", sll2, 276), ("sll_qinq", qinq, 113)):
        got, st = read(write(tmp_path, f"{name}.pcap", pcap(frames, linktype=lt)))
        assert [d.payload for d in got] == dgs, name
        assert st.skipped == {}, name


# --- 3. pcapng Packet Block (type 2) and Simple Packet Block ---------------------------------

def test_pcapng_obsolete_packet_block_and_simple_packet_block(tmp_path: Path) -> None:
    """The obsolete Packet Block (pcapng spec appendix A) is an EPB whose 32-bit interface id is a
    16-bit id and a 16-bit drops count; tshark reads it with its time. A Simple Packet Block has no
    time: tshark shows none, and Wireshark's reader gives it 0 (the epoch), so do we; its data is
    the original length (or the interface snaplen) long, not the padded block body."""
    dgs = [export(i) for i in range(3)]
    opbs = [block(2, struct.pack("<HHIIII", 0, 3, t >> 32, t & 0xFFFFFFFF, len(f), len(f)) + f)
            for t, f in ((T0 * 10**6 + 250_000 + n * 10**6, eth(ip4(udp(d)))) for n, d in enumerate(dgs))]
    got, st = read(write(tmp_path, "opb.pcapng", shb() + idb() + b"".join(opbs)))
    assert [(d.payload, d.ts) for d in got] == [(d, T0 + n + 0.25) for n, d in enumerate(dgs)]
    assert st.frames == 3 and st.skipped == {}

    frames = [eth(ip4(udp(d))) for d in dgs]
    spbs = [block(3, struct.pack("<I", len(f)) + f) for f in frames]
    got, st = read(write(tmp_path, "spb.pcapng", shb() + idb() + b"".join(spbs)))
    assert [(d.payload, d.ts) for d in got] == [(d, 0.0) for d in dgs]
    # with an interface snaplen of 100 the frames are cut (and counted), not read past
    got, st = read(write(tmp_path, "spb100.pcapng", shb() + idb(snaplen=100) + b"".join(spbs)))
    assert got == [] and st.skipped == {"truncated_capture": 3}


# --- 4. if_tsoffset ---------------------------------------------------------------------------

def test_pcapng_if_tsoffset_is_added_to_every_timestamp(tmp_path: Path) -> None:
    """IDB option 14: seconds added to each timestamp of the interface (tshark: +1000 s); here with
    a nanosecond if_tsresol too, whole seconds staying whole, and a negative offset."""
    d = export(1)
    f = eth(ip4(udp(d)))
    for opts, ticks, want in (
        (option(14, struct.pack("<q", 1000)), T0 * 10**6 + 500_000, T0 + 1000.5),
        (option(9, b"\x09") + option(14, struct.pack("<q", -T0)), (T0 + 7) * 10**9, 7.0),
        (option(14, struct.pack("<q", 0)) + option(9, b"\x83"), (T0 * 8 + 3), T0 + 0.375),  # 2^-3 s ticks
    ):
        got, _st = read(write(tmp_path, "off.pcapng", shb() + idb(options=opts + option(0, b"")) + epb(f, ticks)))
        assert [(x.payload, x.ts) for x in got] == [(d, want)]


# --- 5. and 6. link types --------------------------------------------------------------------

def test_raw_ip_link_types_12_and_14_and_the_pcap_linktype_flag_bits(tmp_path: Path) -> None:
    """DLT_RAW is 12 or 14 depending on the OS and some files carry it as is; tshark reads both as
    raw IP. In the pcap header only the low 16 bits are the link type: 0x24000001 is Ethernet with
    a 2-word FCS length (libpcap LT_FCS_DATALINK_EXT), read by tshark as Ethernet."""
    dgs = [export(i) for i in range(2)]
    for lt in (12, 14):
        got, st = read(write(tmp_path, f"raw{lt}.pcap", pcap([ip4(udp(d)) for d in dgs], linktype=lt)))
        assert [d.payload for d in got] == dgs and st.skipped == {}, lt
    frames = [eth(ip4(udp(d))) + b"\xde\xad\xbe\xef" for d in dgs]  # with the 4-byte FCS
    got, st = read(write(tmp_path, "fcs.pcap", pcap(frames, linktype=0x24000001)))
    assert [d.payload for d in got] == dgs and st.skipped == {}


# --- 7. truncated captures -------------------------------------------------------------------

def test_a_truncated_capture_decodes_what_is_whole_then_says_so_and_exits_1(tmp_path: Path) -> None:
    """tshark: 'appears to have been cut short in the middle of a packet', exit 2. flowscope decode
    prints the flows of the whole records, then one line on stderr, shows it in --stats
    (skipped truncated_record, capture.truncated) and exits 1: the capture is damaged (exit 1, as
    for a file that is not a capture), where 2 stays a usage error."""
    dgs = [export(i) for i in range(3)]
    whole_pcap = pcap([eth(ip4(udp(d))) for d in dgs])
    whole_ng = shb() + idb() + b"".join(epb(eth(ip4(udp(d))), (T0 + n) * 10**6) for n, d in enumerate(dgs))
    cases = {
        "mid_record.pcap": (whole_pcap[:-100], "in the middle of a record at byte"),
        "mid_header.pcap": (whole_pcap + b"\0" * 7, "in the middle of a record header at byte"),
        "mid_block.pcapng": (whole_ng[:-50], "in the middle of a block at byte"),
        "gzip_cut.pcap": (gzip.compress(whole_pcap)[:-30], ""),  # the gzip stream, not a record, ends
    }
    for name, (data, says) in cases.items():
        cap = write(tmp_path, name, data)
        want = 3 if name == "mid_header.pcap" else 2
        got, st = read(cap)
        assert [d.payload for d in got] == dgs[:want], name
        assert st.truncated and says in st.truncated, (name, st.truncated)
        p = decode(str(cap), "--stats")
        assert p.returncode == 1, (name, p.stderr.decode())
        assert {orjson.loads(x)["TimeReceived"] for x in p.stdout.splitlines()} == {T0 + n for n in range(want)}
        first, _rest = p.stderr.split(b"\n", 1)
        assert first == f"flowscope decode: {cap}: {st.truncated}".encode() and b"Traceback" not in p.stderr
        assert stats_of(p)["capture"]["truncated"] == st.truncated
        assert stats_of(p)["capture"]["skipped"] == st.skipped
    # a whole capture says nothing and exits 0
    p = decode(str(write(tmp_path, "whole.pcap", whole_pcap)), "--stats")
    assert p.returncode == 0 and "truncated" not in stats_of(p)["capture"]


# --- 8. malformed interface options ----------------------------------------------------------

def test_a_malformed_interface_option_is_one_line_error_never_a_traceback(tmp_path: Path) -> None:
    """if_tsresol's header ends the IDB and its value byte is missing (tshark: 'Not enough data to
    handle option of length 1'): the normal one-line error, exit 1."""
    bad_idb = block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 9, 1))
    cap = write(tmp_path, "bad_idb.pcapng", shb() + bad_idb + epb(eth(ip4(udp(export(1)))), T0 * 10**6))
    with pytest.raises(PcapError, match="option 9 of length 1 runs past the end"):
        read(cap)
    p = decode(str(cap))
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.startswith(f"flowscope decode: {cap}: pcapng interface description block".encode())
    assert p.stderr.count(b"\n") == 1 and b"Traceback" not in p.stderr


def test_a_damaged_capture_never_raises_anything_but_pcaperror(tmp_path: Path) -> None:
    """Every prefix of a pcapng and of a pcap, and bytes overwritten at random: the reader yields
    what it can and ends, or raises PcapError; an IndexError or struct.error would be a traceback."""
    d = export(1, 3)
    ng = (shb() + idb(options=option(9, b"\x06") + option(14, struct.pack("<q", 5)) + option(0, b""))
          + epb(eth(ip4(udp(d))), T0 * 10**6) + block(3, struct.pack("<I", 60) + bytes(60))
          + block(2, struct.pack("<HHIIII", 0, 0, 0, 0, 4, 4) + b"abcd")
          + b"".join(epb(eth(f), T0 * 10**6) for f in frag4(udp(d), [(0, 64), (64, 160), (160, len(udp(d)))]))
          + epb(eth(ip6(44, struct.pack("!BBHI", 60, 0, 1, 9) + b"\x11\x00" + bytes(6) + udp(d))), 5))
    pc = pcap([eth(x) for x in frag4(udp(d), [(0, 64), (64, len(udp(d)))])] + [eth(ip4(udp(d)))])
    rng = random.Random(7)
    samples = [data[:n] for data in (ng, pc) for n in range(len(data) + 1)]
    # the IDB's options cut at every byte, the block length kept consistent with the cut
    opts = option(2, b"eth0") + option(9, b"\x09") + option(14, struct.pack("<q", 5)) + option(0, b"")
    samples += [shb() + block(1, struct.pack("<HHI", 1, 0, 0) + opts[:n]) + epb(eth(ip4(udp(d))), 1)
                for n in range(len(opts))]
    for data in (ng, pc):
        for _ in range(400):
            b = bytearray(data)
            for _k in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            samples.append(bytes(b))
    path = tmp_path / "x"
    for data in samples:
        path.write_bytes(data)
        try:
            read(path)
        except PcapError:
            pass


# --- 9. IPv4 fragments: overlaps, losses, bounds ---------------------------------------------

def test_overlapping_fragments_reassemble_as_tshark_does(tmp_path: Path) -> None:
    """Fragments [0,520) [512,1024) [1024,end): tshark reassembles them (never did we: the chain
    needed each piece to start where the last ended). Where bytes overlap and differ, tshark keeps
    the fragment with the lower offset, whatever the arrival order, and on equal offsets the one
    that came first."""
    l4 = udp(export(1))
    other = bytearray(l4)
    other[100:108] = other[512:520] = b"\xee" * 8
    alt = bytes(other)

    def piece(data: bytes, a: int, b: int) -> bytes:
        return ip4(data[a:b], ident=7, flags_off=(0x2000 if b < len(l4) else 0) | a // 8)

    end = len(l4)
    for name, frags in {
        "overlap": [piece(l4, 0, 520), piece(alt, 512, 1024), piece(l4, 1024, end)],
        "overlap_higher_first": [piece(alt, 512, 1024), piece(l4, 0, 520), piece(l4, 1024, end)],
        "same_offset_twice": [piece(l4, 0, 512), piece(alt, 0, 512), piece(l4, 512, end)],
        "reversed": [piece(l4, 1024, end), piece(l4, 512, 1024), piece(l4, 0, 512)],
    }.items():
        got, st = read(write(tmp_path, f"{name}.pcap", pcap([eth(f) for f in frags])))
        assert [d.payload for d in got] == [l4[8:]], name
        # the second piece at offset 0 adds nothing and is counted as such
        assert st.skipped == ({"duplicate_fragments": 1} if name == "same_offset_twice" else {}), name


def test_fragments_that_never_complete_are_counted_and_the_state_stays_bounded(tmp_path: Path) -> None:
    """A datagram a fragment never came for used to vanish from --stats; now its fragments are
    counted as incomplete_fragments when the capture ends. Fragments `tcpdump -i any` captured twice
    (tshark decodes that datagram once) are duplicate_fragments: the two repeats seen while the
    datagram was pending and the last one, left over after it completed."""
    l4 = udp(export(1))
    p3 = [(0, 512), (512, 1024), (1024, len(l4))]
    missing = frag4(l4, [p3[0], p3[2]])
    twice = [x for f in frag4(l4, p3, ident=8) for x in (f, f)]  # A A B B C C
    cap = write(tmp_path, "lost.pcap", pcap([eth(f) for f in missing + twice]))
    p = decode(str(cap), "--stats")
    assert p.returncode == 0, p.stderr.decode()
    assert len(p.stdout.splitlines()) == 30
    assert stats_of(p)["capture"] == {"frames": 8, "udp_datagrams": 1,
                                      "skipped": {"incomplete_fragments": 2, "duplicate_fragments": 3}}

    # Bounded: a flood of first fragments that never complete keeps at most MAX_PENDING datagrams
    # pending; the ones pushed out are counted when they go, the rest at the end.
    st = PcapStats()
    r = _Reassembler(st)
    n = _Reassembler.MAX_PENDING + 100
    for ident in range(n):
        assert r.add((4, SRC4, DST4, ident), 0, True, b"x" * 64) is None
        assert len(r._pending) <= _Reassembler.MAX_PENDING
    assert st.skipped == {"incomplete_fragments": 100}
    r.finish()
    assert st.skipped == {"incomplete_fragments": n} and r._bytes == 0
    # ... and in bytes: one datagram's growing pieces cannot hold more than MAX_BYTES either
    st = PcapStats()
    r = _Reassembler(st)
    r.MAX_BYTES = 4096
    for k in range(1, 200):
        r.add((4, SRC4, DST4, 1), 8 * (k % 5), True, b"z" * (8 * k))
        assert r._bytes <= 4096
    # a fragment reaching past 65535 bytes is refused, not kept
    big = ip4(b"y" * 16, ident=3, flags_off=0x2000 | 8190)
    got, st = read(write(tmp_path, "past.pcap", pcap([eth(big)])))
    assert got == [] and st.skipped == {"bad_fragment": 1}


# --- 10. IPv6 extension headers --------------------------------------------------------------

def test_ipv6_authentication_header_and_headers_after_the_fragment_header(tmp_path: Path) -> None:
    """AH (51): length in 4-byte units minus 2 (RFC 4302 2.2). A Destination Options header after
    the Fragment header belongs to the fragmentable part (RFC 8200 4.5): each fragment's Fragment
    header names it as next header, and it is parsed from the reassembled datagram. tshark: 1 PDU
    each."""
    d = export(1)
    l4 = udp(d)
    ah = struct.pack("!BBHII", 17, 4, 0, 0x100, 1) + b"\0" * 12  # 24 bytes: (4 + 2) * 4
    dstopt = struct.pack("!BB", 17, 0) + b"\x01\x04" + b"\0" * 4  # 8 bytes, PadN
    frames = [ip6(51, ah + l4),
              *frag6(dstopt + l4, 60, [(0, 512), (512, 1024), (1024, len(l4) + 8)]),
              *frag6(ah + l4, 51, [(0, 512), (512, len(l4) + 24)], ident=0x99)[::-1]]
    got, st = read(write(tmp_path, "v6.pcap", pcap([eth(f) for f in frames])))
    assert [x.payload for x in got] == [d, d, d] and st.skipped == {}
    assert {x.src for x in got} == {"2001:db8::1"}


# --- 11. gzip ---------------------------------------------------------------------------------

def test_gzip_compressed_captures_are_read_by_their_magic(tmp_path: Path) -> None:
    """tshark reads pcap.gz and pcapng.gz; so does decode, found by the 1f 8b magic whatever the
    name, decompressed as it is read."""
    dgs = [export(i) for i in range(3)]
    plain = pcap([eth(ip4(udp(d))) for d in dgs])
    ng = shb() + idb() + b"".join(epb(eth(ip4(udp(d))), (T0 + n) * 10**6) for n, d in enumerate(dgs))
    for name, data in (("a.pcap.gz", plain), ("b.cap", plain), ("c.pcapng.gz", ng)):
        cap = write(tmp_path, name, gzip.compress(data))
        got, st = read(cap)
        assert [(x.payload, x.ts) for x in got] == [(d, T0 + n) for n, d in enumerate(dgs)], name
        assert not st.truncated, name
        p = decode(str(cap))
        assert p.returncode == 0 and len(p.stdout.splitlines()) == 90, (name, p.stderr.decode())
    # two gzip members one after the other (cat a.gz b.gz) are one stream, as gzip -d reads them
    cap = write(tmp_path, "two.gz", gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]))
    assert [x.payload for x in read(cap)[0]] == dgs
    p = decode(str(write(tmp_path, "bad.gz", b"\x1f\x8b" + b"x" * 30)))
    assert p.returncode == 1 and p.stderr.startswith(b"flowscope decode: ") and p.stderr.count(b"\n") == 1
