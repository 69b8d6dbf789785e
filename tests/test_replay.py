"""`flowscope replay`: loops continue every exporter stream exactly as the decoder counts it.

The decoder is the ground truth: each test feeds the payloads of several loops, as replay
rewrites them, into `decoders.Decoder` in order and checks that the replay itself adds no
sequence loss or reset, and that header clocks never go back at a loop boundary.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_v5

from collector import cli
from collector import replay as R
from decoders import Decoder

SRC = ("192.0.2.1", 4739)
T0 = 1_700_000_000


# ----------------------------------------------------------------------------------------- builders

def ipfix_msg(domain: int, seq: int, secs: int, sets: list[bytes]) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), secs, seq, domain) + body


def tmpl_set(tid: int, fields: list[tuple[int, int]], *, scope: int = 0) -> bytes:
    if scope:
        rec = struct.pack("!HHH", tid, len(fields), scope)
    else:
        rec = struct.pack("!HH", tid, len(fields))
    rec += b"".join(struct.pack("!HH", ie, ln) for ie, ln in fields)
    return struct.pack("!HH", 3 if scope else 2, 4 + len(rec)) + rec


def data_set(tid: int, records: list[bytes], pad: int = 0) -> bytes:
    body = b"".join(records) + b"\0" * pad
    return struct.pack("!HH", tid, 4 + len(body)) + body


def varlen(s: bytes) -> bytes:
    return (bytes([len(s)]) if len(s) < 255 else b"\xff" + struct.pack("!H", len(s))) + s


def v9(seq: int, secs: int, uptime: int, domain: int = 7) -> bytes:
    return struct.pack("!HHIIII", 9, 0, uptime, secs, seq, domain)


def sflow(seq: int, uptime_ms: int) -> bytes:
    return struct.pack("!II4sIIII", 5, 1, bytes([192, 0, 2, 9]), 0, seq, uptime_ms, 0)


def loops(packets: list[R.Packet], n: int) -> list[tuple[R.Source, bytes]]:
    plan = R.Plan(packets)
    return [d for k in range(n) for d in plan.datagrams(k)]


def decode_all(dgrams: list[tuple[R.Source, bytes]]) -> dict:
    dec = Decoder()
    for i, ((ip, port), p) in enumerate(dgrams):
        dec.decode(p, ip, port, float(T0 + i))
    return dec.stats()


def seq_stats(stats: dict, ip: str, proto: str) -> tuple[int, int]:
    d = stats[ip]["protocols"][proto]
    return d["sequence_lost"], d["sequence_resets"]


def pcap(path: Path, pkts: list[tuple[float, R.Source, int, bytes]], *, cut: int = 0) -> Path:
    """An Ethernet pcap of UDP/IPv4 datagrams (ts, (src, sport), dport, payload); `cut` bytes
    taken off the end."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for ts, (src, sport), dport, payload in pkts:
        udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton("198.51.100.1"))
        fr = b"\0" * 12 + b"\x08\x00" + ip + udp
        out += struct.pack("<IIII", int(ts), int(ts % 1 * 1e6), len(fr), len(fr)) + fr
    path.write_bytes(bytes(out[: len(out) - cut]))
    return path


# ------------------------------------------------------------------------------- 1. IPFIX records

def ipfix_capture() -> list[R.Packet]:
    """Domain 1: a fixed-length template, an options template and a padded data set; domain 2: a
    variable-length template (one value needs the 3-byte length), sent in the same datagrams as
    domain 1 (two messages per datagram); domain 3: templates only (its sequence never moves)."""
    seq = {1: 1000, 2: 5000, 3: 42}
    pk = []
    for i in range(6):
        dg = b""
        sets1 = [tmpl_set(256, [(8, 4), (2, 4)]), tmpl_set(258, [(149, 4), (34, 4)], scope=1)] if i == 0 else []
        n1 = 3 if i % 2 else 2
        sets1.append(data_set(256, [bytes([10, 0, 0, j]) + struct.pack("!I", 100) for j in range(n1)], pad=3))
        if i == 0:
            sets1.append(data_set(258, [struct.pack("!II", 1, 100)]))
            n1 += 1
        dg += ipfix_msg(1, seq[1], T0 + i, sets1)
        seq[1] += n1
        sets2 = [tmpl_set(257, [(8, 4), (82, 0xFFFF)])] if i == 0 else []
        names = [b"eth0", b"x" * 300] if i % 2 else [b"ge-0/0/1"]
        sets2.append(data_set(257, [bytes([10, 0, 1, 1]) + varlen(nm) for nm in names]))
        dg += ipfix_msg(2, seq[2], T0 + i, sets2)
        seq[2] += len(names)
        pk.append(R.Packet(SRC, dg, T0 + i))
    pk.append(R.Packet(SRC, ipfix_msg(3, seq[3], T0, [tmpl_set(300, [(8, 4)])]), T0 + 6))
    pk.append(R.Packet(SRC, ipfix_msg(3, seq[3], T0 + 1, [tmpl_set(300, [(8, 4)])]), T0 + 7))
    return pk


def test_ipfix_loops_continue_every_stream_exactly() -> None:
    pk = ipfix_capture()
    base = decode_all(loops(pk, 1))
    assert seq_stats(base, SRC[0], "ipfix") == (0, 0)
    got = decode_all(loops(pk, 3))
    assert seq_stats(got, SRC[0], "ipfix") == (0, 0)
    assert got[SRC[0]]["flows"] == 3 * base[SRC[0]]["flows"]
    plan = R.Plan(pk)
    assert plan.span[(SRC, 10, 1)] == 16 and plan.span[(SRC, 10, 2)] == 9
    assert plan.span[(SRC, 10, 3)] == 0  # no data records: no advance


def test_ipfix_every_message_of_a_datagram_is_rewritten() -> None:
    pk = ipfix_capture()
    plan = R.Plan(pk)
    (_, first), = [d for d in plan.datagrams(2)][:1]
    us = R.units(SRC, first)
    assert [u.key[2] for u in us] == [1, 2]
    for u, (base_seq, span) in zip(us, ((1000, 16), (5000, 9)), strict=True):
        seq, secs = struct.unpack_from("!II", first, u.start + 8)[0], struct.unpack_from("!I", first, u.start + 4)[0]
        assert seq == base_seq + 2 * span
        assert secs == T0 + 2 * plan.period


def test_ipfix_unknown_template_counts_its_upper_bound_for_that_message_only() -> None:
    # data for template 256 before its template (the decoder cannot count it in loop 0, but can
    # in loop 1); the shift only depends on the first sequence and the last message, counted exactly
    pk = [R.Packet(SRC, ipfix_msg(1, 10, T0, [data_set(256, [b"\0" * 8] * 2)]), T0),
          R.Packet(SRC, ipfix_msg(1, 12, T0, [tmpl_set(256, [(8, 4), (2, 4)]), data_set(256, [b"\0" * 8] * 2)]),
                   T0 + 1)]
    assert R.IpfixRecords().count(SRC, pk[0].payload, 0, len(pk[0].payload)) == (16, False)
    plan = R.Plan(pk)
    assert plan.span[(SRC, 10, 1)] == 12 + 2 - 10
    assert seq_stats(decode_all(loops(pk, 3)), SRC[0], "ipfix") == (0, 0)


def test_ipfix_late_messages_in_the_capture_do_not_move_the_next_loop() -> None:
    # as in generic_ipfix.pcap: 7 records at sequence 6, then messages at 7 and 12 that a receiver
    # takes for late ones: it still expects 13 when the next loop starts
    recs = [b"\0" * 8]
    pk = [R.Packet(SRC, ipfix_msg(1, 6, T0, [tmpl_set(256, [(8, 4), (2, 4)]), data_set(256, recs * 7)]), T0),
          R.Packet(SRC, ipfix_msg(1, 7, T0, [data_set(256, recs)]), T0),
          R.Packet(SRC, ipfix_msg(1, 12, T0, [data_set(256, recs * 5)]), T0)]
    assert R.Plan(pk).span[(SRC, 10, 1)] == 7
    assert seq_stats(decode_all(loops(pk, 3)), SRC[0], "ipfix") == (0, 0)


# ----------------------------------------------------------------------- 2. wraps and restarts

def test_sequence_wrapping_inside_the_capture_continues_across_loops() -> None:
    src = ("192.0.2.5", 2055)
    seq = 0xFFFFFFF0
    pk = []
    for i in range(4):
        pk.append(R.Packet(src, make_v5(seq, 10, 10 * i, unix_secs=T0 + 30 * i, uptime=100_000 + 30_000 * i),
                           T0 + 30 * i))
        seq = (seq + 10) & R.M32
    assert R.Plan(pk).span[(src, 5, 0, 0)] == 40
    assert seq_stats(decode_all(loops(pk, 3)), src[0], "netflow5") == (0, 0)


def test_restart_inside_the_capture_adds_nothing_per_loop() -> None:
    # v9 source id 7 restarts (sequence and uptime start over) in the middle of the capture: the
    # decoder counts that one reset per loop, and the loop boundary adds neither loss nor reset
    src = ("192.0.2.6", 2055)
    pk = [R.Packet(src, v9(500_000 + i, T0 + i, 900_000_000 + 1000 * i), T0 + i) for i in range(4)]
    pk += [R.Packet(src, v9(1 + i, T0 + 4 + i, 1000 * i), T0 + 4 + i) for i in range(4)]
    assert seq_stats(decode_all(loops(pk, 1)), src[0], "netflow9") == (0, 1)
    assert seq_stats(decode_all(loops(pk, 3)), src[0], "netflow9") == (0, 3)


def test_streams_numbered_by_their_own_records_too_continue_across_loops() -> None:
    # Open vSwitch's v5 numbers a datagram by its last record (ofproto/netflow.c: flow_seq =
    # netflow_cnt++ per record), softflowd's IPFIX by the records sent including the message's
    # own: the next loop goes on with the first message's count after the last number, not
    # the last message's. Before, the difference between the two counts was a gap at each loop
    # boundary (10 records lost over 3 loops here), and for v5, whose header uptime goes back
    # at the boundary (100 s here), a restart per loop.
    v5src, ipsrc = ("192.0.2.10", 2055), ("192.0.2.11", 4739)
    counts = [2, 3, 5, 4, 6, 7]
    pk = []
    seq = 0
    for i, n in enumerate(counts):
        seq += n
        pk.append(R.Packet(v5src, make_v5(seq - 1, n, seq - n, unix_secs=T0 + 20 * i, uptime=100_000 + 20_000 * i),
                           T0 + 20 * i))
        sets = [tmpl_set(256, [(8, 4), (2, 4)])] if i == 0 else []
        sets.append(data_set(256, [bytes([10, 0, 0, j]) + struct.pack("!I", 100) for j in range(n)]))
        pk.append(R.Packet(ipsrc, ipfix_msg(1, seq, T0 + 20 * i, sets), T0 + 20 * i))
    assert seq_stats(decode_all(loops(pk, 1)), v5src[0], "netflow5") == (0, 0)
    got = decode_all(loops(pk, 3))
    assert seq_stats(got, v5src[0], "netflow5") == (0, 0)
    assert seq_stats(got, ipsrc[0], "ipfix") == (0, 0)
    plan = R.Plan(pk)
    assert plan.span[(v5src, 5, 0, 0)] == plan.span[(ipsrc, 10, 1)] == sum(counts)


def v9_by_records(src: R.Source, counts: list[int]) -> list[R.Packet]:
    """NetFlow v9 packets of `counts` flow records each (a template in every one), numbered as
    Juniper numbers them: the flow records sent before the packet (RFC 3954 5.1 counts packets),
    10 s apart in the header clocks (unix_secs, sysUptime) and the capture."""
    tmpl = struct.pack("!HH", 256, 2) + struct.pack("!HHHH", 8, 4, 2, 4)   # IPV4_SRC_ADDR, IN_PKTS
    pk, seq = [], 1000
    for i, n in enumerate(counts):
        data = b"".join(bytes([10, 0, 0, j + 1]) + struct.pack("!I", 10) for j in range(n))
        body = struct.pack("!HH", 0, 4 + len(tmpl)) + tmpl + struct.pack("!HH", 256, 4 + len(data)) + data
        head = struct.pack("!HHIIII", 9, 1 + n, 500_000 + 10_000 * i, T0 + 10 * i, seq, 7)
        pk.append(R.Packet(src, head + body, T0 + 10 * i))
        seq += n
    return pk


def test_v9_numbered_by_records_continues_by_the_last_packets_records() -> None:
    # The next loop of a v9 stream numbered by flow records goes on with the last packet's
    # records after its number, not one packet: the step of 1 at the boundary was a vote for
    # numbering by packets. A capture of two packets (one step, one vote for records) was so
    # never decided: the 2 numbers the packets reading puts between 1000 + 1 and 1003 were
    # counted lost at every loop. A decided one turned to packets at the boundary, and the
    # next loop's first packet lost was taken for in order (its 3 records not counted).
    src = ("192.0.2.20", 2055)
    two = v9_by_records(src, [3, 5])
    assert R.Plan(two).span[(src, 9, 7)] == 3 + 5
    assert seq_stats(decode_all(loops(two, 3)), src[0], "netflow9") == (0, 0)
    counts = [3, 5, 2, 6]
    pk = v9_by_records(src, counts)
    assert R.Plan(pk).span[(src, 9, 7)] == sum(counts)
    sent = loops(pk, 3)
    assert seq_stats(decode_all(sent), src[0], "netflow9") == (0, 0)
    for i in range(len(counts)):    # each packet of the second loop lost in turn: its records
        k = len(counts) + i
        assert seq_stats(decode_all(sent[:k] + sent[k + 1:]), src[0], "netflow9") == (counts[i], 0), i


def test_v9_numbered_by_records_a_packet_lost_before_the_numbering_is_decided_is_its_records() -> None:
    # Replayed once, a capture numbered by flow records whose second packet (4 records) was lost
    # has no step that tells its numbering: the packets reading's 9 were counted, not the 4 it
    # held. Over loops, the first loop's packets lost before the steps decide were counted by
    # packets too (of 3, 5, 2, 6 records: 7, 6, 6).
    src = ("192.0.2.21", 2055)
    pk = loops(v9_by_records(src, [6, 4, 5]), 1)
    assert seq_stats(decode_all(pk[:1] + pk[2:]), src[0], "netflow9") == (4, 0)
    counts = [3, 5, 2, 6]
    sent = loops(v9_by_records(src, counts), 3)
    for i in range(1, len(counts)):
        assert seq_stats(decode_all(sent[:i] + sent[i + 1:]), src[0], "netflow9") == (counts[i], 0), i


# ---------------------------------------------------------------------------- 3. clock period

def test_period_covers_each_streams_header_clock_span() -> None:
    v5src, sfsrc = ("192.0.2.7", 2055), ("192.0.2.8", 6343)
    # the capture lasts 2 s, but the v5 header clock spans 61 s and the sFlow uptime 90.5 s
    pk = [R.Packet(v5src, make_v5(1, 1, 0, unix_secs=T0), T0), R.Packet(v5src, make_v5(2, 1, 1, unix_secs=T0 + 61), T0 + 1),
          R.Packet(sfsrc, sflow(1, 10_000), T0 + 1.5), R.Packet(sfsrc, sflow(2, 100_500), T0 + 2)]
    plan = R.Plan(pk)
    assert plan.period == 92
    out = [p for k in range(3) for _, p in plan.datagrams(k)]
    v5secs = [struct.unpack_from("!I", p, 8)[0] for p in out if p[:2] == b"\0\5"]
    sfup = [struct.unpack_from("!I", p, 20)[0] for p in out if p[:4] == b"\0\0\0\5"]
    assert v5secs == sorted(v5secs) and len(set(v5secs)) == len(v5secs)
    assert sfup == sorted(sfup) and len(set(sfup)) == len(sfup)


# ------------------------------------------------------------------------------ 5. sockets

def test_sockets_are_bounded_and_stable_within_the_bound() -> None:
    socks = R.Sockets(socket.AF_INET, limit=4)
    try:
        first = {i: socks.get(("10.0.0.1", i)) for i in range(4)}
        assert all(socks.get(("10.0.0.1", i)) is s for i, s in first.items())  # kept: same port
        for i in range(4, 10):
            socks.get(("10.0.0.1", i))
        assert len(socks._socks) == 4 and socks.rotated == 6
        assert all(s.fileno() == -1 for s in first.values())  # the least recently used were closed
    finally:
        socks.close()


def test_more_sources_than_file_descriptors_is_no_crash(tmp_path: Path) -> None:
    cap = pcap(tmp_path / "many.pcap",
               [(T0 + i / 100, ("10.1.0.1", 20000 + i), 2055, make_v5(i, 1, i)) for i in range(400)])
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
            "from collector.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "replay", str(cap), "--to", f"127.0.0.1:{rx.getsockname()[1]}"],
                       capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    rx.close()
    assert r.returncode == 0, r.stderr
    assert "sent 400 datagrams" in r.stderr and "ports changed" in r.stderr


# ------------------------------------------------------------------------------ 6. Ctrl-C

def test_ctrl_c_while_reading_is_one_line_and_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    from collector import pcap as P

    def interrupted(*_a: object, **_k: object):  # type: ignore[no-untyped-def]
        yield P.Datagram(1.0, "10.0.0.1", 2055, "10.0.0.2", 2055, make_v5(1, 1, 0))
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "iter_udp", interrupted)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # a receiver: nothing to warn of there
    rx.bind(("127.0.0.1", 0))
    try:
        assert cli.main(["replay", str(tmp_path / "x.pcap"), "--to", f"127.0.0.1:{rx.getsockname()[1]}"]) == 130
    finally:
        rx.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "sent 1 datagrams" in err


def test_ctrl_c_before_replay_starts_is_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(*_a: object, **_k: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "replay", boom)
    assert cli.main(["replay", "x.pcap", "--to", "127.0.0.1:9"]) == 130
    assert capsys.readouterr().err.strip() == "flowscope replay: interrupted"


# --------------------------------------------------------------------- 7. memory: streamed loops

def test_loops_reread_the_file_when_payloads_do_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(R, "CACHE_BYTES", 0)
    src = ("10.1.0.1", 2055)
    cap = pcap(tmp_path / "v5.pcap", [(T0 + i, src, 2055, make_v5(1 + 5 * i, 5, 5 * i, unix_secs=T0 + i))
                                      for i in range(5)])
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    try:
        assert R.replay(str(cap), f"127.0.0.1:{rx.getsockname()[1]}", loops=3, quiet=True) == 0
        got = [rx.recv(65535) for _ in range(15)]
    finally:
        rx.close()
    assert [struct.unpack_from("!I", p, 16)[0] for p in got] == list(range(1, 76, 5))


# ------------------------------------------------------------------------------ 8. truncation

def test_truncated_capture_is_sent_then_reported_with_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = ("10.1.0.1", 2055)
    cap = pcap(tmp_path / "cut.pcap", [(T0 + i, src, 2055, make_v5(1 + i, 1, i)) for i in range(4)], cut=10)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    try:
        rc = cli.main(["replay", str(cap), "--to", f"127.0.0.1:{rx.getsockname()[1]}", "--loop", "2"])
        got = [rx.recv(65535) for _ in range(6)]
    finally:
        rx.close()
    assert rc == 1 and len(got) == 6
    err = capsys.readouterr().err
    assert "sent 6 datagrams" in err and "cut short in the middle of a record" in err


# -------------------------------------------------------------------------------- 9. --to

@pytest.mark.parametrize("to, words", [
    ("127.0.0.1:0", ["--to", "port must be 1-65535"]),
    (":0", ["--to", "port must be 1-65535"]),
    ("2055", ["--to", "HOST:PORT", ":PORT for this host"]),
    (":", ["--to", "HOST:PORT"]),
    ("[]:2055", ["--to", "HOST:PORT"]),
    ("::1:2055", ["--to", "IPv6 address goes in brackets"]),
    ("nosuchhost.invalid:2055", ["--to", "nosuchhost.invalid", "cannot resolve"]),
    ("256.1.1.1:2055", ["--to", "256.1.1.1", "cannot resolve"]),
])
def test_bad_to_is_a_usage_error_naming_it(to: str, words: list[str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # before the capture is read: the file does not even exist
    assert cli.main(["replay", str(tmp_path / "none.pcap"), "--to", to]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("to, family, host", [
    (":{}", socket.AF_INET, "127.0.0.1"), ("0.0.0.0:{}", socket.AF_INET, "127.0.0.1"),
    ("[::]:{}", socket.AF_INET6, "::1"),
])
def test_to_with_a_listeners_wildcard_host_sends_to_this_host(to: str, family: int, host: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`--to :2055` was refused while `run --listen netflow://:2055` takes it: an empty host, as
    a listener's wildcard, is this host for a destination (127.0.0.1; ::1 for [::])."""
    cap = pcap(tmp_path / "one.pcap", [(T0, ("10.1.0.1", 2055), 2055, make_v5(1, 1, 0))])
    rx = socket.socket(family, socket.SOCK_DGRAM)
    rx.bind((host, 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    try:
        assert cli.main(["replay", str(cap), "--to", to.format(port)]) == 0
        assert rx.recv(2048) == make_v5(1, 1, 0)
    finally:
        rx.close()
    shown = f"[{host}]" if ":" in host else host
    assert f"to {shown}:{port}" in capsys.readouterr().err


def test_to_is_resolved_once_and_ipv6_printed_in_brackets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fam, addr, shown = R.resolve_to("localhost:2055")
    assert socket.inet_pton(fam, str(addr[0]))  # a numeric address: sendto resolves nothing
    assert R.resolve_to("[::1]:2055")[2] == "[::1]:2055"
    cap = pcap(tmp_path / "one.pcap", [(T0, ("10.1.0.1", 2055), 2055, make_v5(1, 1, 0))])
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind(("::1", 0))
    try:
        assert cli.main(["replay", str(cap), "--to", f"[::1]:{rx.getsockname()[1]}"]) == 0
    finally:
        rx.close()
    assert "to [::1]:" in capsys.readouterr().err


def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --port 70000` matched no datagram and said only "no UDP datagrams found" (exit 1);
    it is a usage error, as for `decode --port` (review helper-84)."""
    from collector.cli import main

    cap = pcap(tmp_path / "one.pcap", [(T0, ("10.1.0.1", 20000), 2055, make_v5(0, 1, 0))])
    with pytest.raises(SystemExit) as e:
        main(["replay", str(cap), "--to", "127.0.0.1:9", "--port", "70000"])
    assert e.value.code == 2 and "expected a UDP port 1-65535" in capsys.readouterr().err


# ------------------------------------------------------------------- 10. exit status, as decode's

def test_a_file_that_is_not_a_capture_exits_1_as_decode_does(tmp_path: Path) -> None:
    """README: a file that is not a capture is exit 1 for `flowscope decode` (2 is a usage
    error); `replay` of the same file exited 2. Both run as an operator would, on the same file."""
    f = tmp_path / "notes.txt"
    f.write_text("hello, not a capture\n")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    codes = {}
    for args in (["replay", str(f), "--to", "127.0.0.1:9"], ["decode", str(f)]):
        r = subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=60)
        assert r.stderr == f"flowscope {args[0]}: {f}: not a pcap file\n", r.stderr
        codes[args[0]] = r.returncode
    assert codes == {"replay": 1, "decode": 1}
    helped = subprocess.run([sys.executable, "-m", "collector.cli", "replay", "--help"], capture_output=True,
                            text=True, cwd=ROOT, env={**env, "COLUMNS": "1000"}, timeout=60).stdout
    assert "Exit status: 0 when the capture was sent; 1 when FILE cannot be read, is not a pcap/pcapng" in helped


def test_a_capture_cut_inside_its_first_record_is_reported_as_cut(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A file cut inside its first record sent nothing and said "no UDP datagrams found", as for
    a capture of other traffic: the reason is that the file is cut short."""
    cap = pcap(tmp_path / "cut.pcap", [(T0, ("10.1.0.1", 2055), 2055, make_v5(1, 1, 0))], cut=30)
    assert cli.main(["replay", str(cap), "--to", "127.0.0.1:9", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (f"flowscope replay: {cap}: the capture is cut short in the middle of a record at "
                                   "byte 24 (the file ends 100 bytes into it)"), err
    assert "no UDP datagrams" not in err
    # a whole capture of no UDP still says so
    empty = pcap(tmp_path / "empty.pcap", [])
    assert cli.main(["replay", str(empty), "--to", "127.0.0.1:9", "--quiet"]) == 1
    assert capsys.readouterr().err == f"flowscope replay: {empty}: no UDP datagrams found\n"


def test_every_message_of_replay_says_flowscope_replay(tmp_path: Path) -> None:
    """Half of replay's messages began `replay:` (the summary, no UDP, cut short, skipped
    frames), the other half `flowscope replay:` (usage, unreadable file, interrupted), as do
    argparse's errors and every message of `flowscope decode`: one form, the command's name."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    good = pcap(tmp_path / "one.pcap", [(T0, ("10.1.0.1", 2055), 2055, make_v5(1, 1, 0))])
    empty = pcap(tmp_path / "empty.pcap", [])
    cut = pcap(tmp_path / "cut.pcap", [(T0, ("10.1.0.1", 2055), 2055, make_v5(1, 1, 0))] * 2, cut=30)
    seen = []
    for args, code in (([str(good)], 0), ([str(empty)], 1), ([str(cut)], 1), ([str(good), "--loop", "-1"], 2),
                       ([str(tmp_path / "none.pcap")], 1), ([str(good), "--to", "nohost"], 2)):
        to = [] if "--to" in args else ["--to", "127.0.0.1:9"]
        r = subprocess.run([sys.executable, "-m", "collector.cli", "replay", *args, *to], capture_output=True,
                           text=True, cwd=ROOT, env=env, timeout=60)
        assert r.returncode == code and r.stderr, (args, r.returncode, r.stderr)
        seen += r.stderr.splitlines()
    assert [line for line in seen if not line.startswith("flowscope replay: ")] == [], seen
    assert any(" sent 1 datagrams " in line for line in seen) and any("no UDP datagrams" in line for line in seen)
