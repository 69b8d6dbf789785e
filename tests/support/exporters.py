"""Real flow exporters driven by the tests: softflowd, pmacct's pmacctd (nfprobe, sfprobe),
fprobe, and nfdump's nfpcapd + nfreplay.

Both read a pcap the test generated (tests/support/pcapgen.py) and export to a UDP port on the
loopback of a namespace the test created (tests/support/netns.py). Facts that matter (see
../shared/EXPORTERS.md): softflowd 1.1.0 `-r` truncates the file name to 16 characters (pass a
short relative name, run in the pcap's directory), `-a` makes export clocks follow the pcap,
`-d` keeps it in the foreground; it needs its own control socket and pid file (`-c`, `-p`) so two
runs never share /var/run. pmacctd reads a pcap with `pcap_savefile` (here a FIFO, written once
its plugin waits for data: run_pmacctd) and, with `pcap_savefile_wait: true`, stays up
afterwards; nfprobe flushes its cache on SIGINT.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import netns as N
from tests.support.netns import NetNS, wait_capturing
from tests.support.pmacct import all_stats, plugin_count, wait_plugins_polling


def ipfix_set_ids(payload: bytes) -> set[int]:
    """The set ids of an IPFIX message (2 templates, 3 options templates, >= 256 data)."""
    ids, pos, end = set(), 16, min(len(payload), struct.unpack_from("!H", payload, 2)[0])
    while pos + 4 <= end:
        sid, length = struct.unpack_from("!HH", payload, pos)
        ids.add(sid)
        if length < 4:
            break
        pos += length
    return ids


PCAP_NAME = "in.pcap"  # short and relative: softflowd keeps only 16 characters of -r
PMACCTD_FIFO = "in.fifo"   # what pmacctd reads PCAP_NAME from (run_pmacctd)


def run_softflowd(ns: NetNS, workdir: Path, version: str, port: int, *, timeout: float = 30.0,
                  extra: tuple[str, ...] = ()) -> str:
    """softflowd -r on workdir/in.pcap, exporting NetFlow `version` (5, 9, 10) to 127.0.0.1:port,
    with `extra` options (-b: RFC 5103 biflows). Returns softflowd's output (its statistics)."""
    cmd = ["softflowd", "-r", PCAP_NAME, "-n", f"127.0.0.1:{port}", "-v", str(version), "-a", "-d",
           "-6", "-c", "./sf.ctl", "-p", "./sf.pid", *extra]
    p = ns.popen(cmd, cwd=workdir)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ns.stop(p, signal.SIGKILL)
        raise RuntimeError(f"softflowd -v {version} did not finish in {timeout}s (file name too long?)") from None
    text = (out + err).decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"softflowd -v {version} exited {p.returncode}: {text}")
    return text


# softflowd -i: the node (softflowd, the traffic's receiver) and the peer at the other end of a veth
LIVE_NODE = ("10.77.0.1", "fd77::1")
LIVE_PEER = ("10.77.0.2", "fd77::2")
FLUSH_PORT = 5999   # the peer's filler traffic, to this port on the node (see run_softflowd_live)


@dataclass(frozen=True)
class Exchange:
    """Traffic the peer starts with the node: `count` UDP datagrams (proto 17) of `size` zero
    bytes from the peer's `peer_port` to the node's `node_port`, answered by the node with
    `replies` datagrams of `reply_size` bytes; or (proto 1, IPv4) `count` ICMP echo requests
    with `size` bytes of data (identifier `peer_port`), which the node's kernel answers."""

    proto: int
    v6: bool
    peer_port: int
    node_port: int
    count: int
    size: int
    replies: int = 0
    reply_size: int = 0

    @property
    def peer(self) -> str:
        return LIVE_PEER[self.v6]

    @property
    def node(self) -> str:
        return LIVE_NODE[self.v6]

    @property
    def packets(self) -> int:
        """Packets on the wire, both ways."""
        return self.count + (self.count if self.proto == 1 else self.replies)


# Run in the peer's namespace: argv[1] the exchanges as JSON lists of (proto, peer address, peer
# port, node address, node port, count, size, replies), argv[2] the gap between sends (s). Every
# exchange waits for its answers before the next starts, so all of them have crossed the veth
# when it prints "done".
PEER_SEND = """
import json, socket, struct, sys, time

def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b[:len(b) // 2 * 2])) + (b[-1] << 8 if len(b) % 2 else 0)
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF

gap = float(sys.argv[2])
for proto, src, sport, dst, dport, count, size, replies in json.loads(sys.argv[1]):
    if proto == 17:
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(10)
        s.bind((src, sport))
        for _ in range(count):
            s.sendto(bytes(size), (dst, dport))
            time.sleep(gap)
        for _ in range(replies):
            s.recvfrom(65535)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.settimeout(10)
        for seq in range(count):
            msg = struct.pack("!BBHHH", 8, 0, 0, sport, seq) + bytes(size)
            s.sendto(msg[:2] + struct.pack("!H", csum(msg)) + msg[4:], (dst, 0))
            time.sleep(gap)
        got = 0
        while got < count:
            pkt = s.recv(65535)
            icmp = pkt[(pkt[0] & 15) * 4:]
            got += icmp[0] == 0 and struct.unpack_from("!H", icmp, 4)[0] == sport
    s.close()
print("done", flush=True)
"""


def _softflowctl(ns: NetNS, workdir: Path, command: str) -> str:
    p = ns.run(["softflowctl", "-c", "./sf.ctl", command], cwd=workdir, check=False)
    return (p.stdout + p.stderr).decode(errors="replace")


def _processed(stats: str) -> int:
    m = re.search(r"Packets processed: (\d+)", stats)
    return int(m.group(1)) if m else -1


def run_softflowd_live(ns: NetNS, workdir: Path, version: str, port: int, exchanges: list[Exchange], *,
                       extra: tuple[str, ...] = (), flush_batches: int = 40) -> str:
    """softflowd -i capturing live on the node end of a veth (in `ns`, the node) whose other end
    is in a namespace of its own (the peer), exporting NetFlow `version` to 127.0.0.1:port while
    the peer runs `exchanges` with the node; then softflowd is shut down (softflowctl shutdown:
    it exports every flow it holds and exits). Returns its statistics and output.

    softflowd 1.1.0 opens its capture with a timeout of 0 ms, which libpcap (1.10, TPACKET_V3)
    makes a ring block retire timeout of UINT_MAX ms: the kernel hands a block of the ring (256
    KiB) to softflowd only once it is full, and softflowd, polling with no timeout while it
    holds no flow, never sees a few test packets ("Packets received by libpcap: 10", "Packets
    processed: 0"). So after the exchanges the peer sends filler datagrams (from and to
    FLUSH_PORT: leave that flow out) until softflowd has processed more packets than the
    exchanges put on the wire: the block holding the last of them is full, and everything
    before the filler was counted. Its BPF filter (udp or icmp) keeps the namespaces' own
    ICMPv6 (neighbour discovery, MLD) and ARP out of the ring and the flows."""
    peer = NetNS()
    try:
        end_node, end_peer = N.veth_between(ns, peer)
        for side, end, (v4, v6) in ((ns, end_node, LIVE_NODE), (peer, end_peer, LIVE_PEER)):
            side.run(["ip", "addr", "add", f"{v4}/24", "dev", end])
            side.run(["ip", "-6", "addr", "add", f"{v6}/64", "dev", end, "nodad"])
        for x in exchanges:
            if x.proto == 17:
                N.udp_sink(ns, x.node, x.node_port, replies=x.replies, reply_size=x.reply_size)
        N.udp_sink(ns, LIVE_NODE[0], FLUSH_PORT)
        p = ns.popen(["softflowd", "-i", end_node, "-n", f"127.0.0.1:{port}", "-v", str(version), "-d", "-6",
                      "-c", "./sf.ctl", "-p", "./sf.pid", *extra, "udp or icmp"], cwd=workdir)
        deadline = time.monotonic() + 10
        while _processed(_softflowctl(ns, workdir, "statistics")) < 0:
            if p.poll() is not None or time.monotonic() > deadline:
                ns.stop(p, signal.SIGKILL)
                raise RuntimeError(f"softflowd -i did not start: {p.communicate()}")
            time.sleep(0.1)
        spec = [[x.proto, x.peer, x.peer_port, x.node, x.node_port, x.count, x.size, x.replies] for x in exchanges]
        peer.run([sys.executable, "-c", PEER_SEND, json.dumps(spec), "0.002"])
        wire = sum(x.packets for x in exchanges)
        flush = json.dumps([[17, LIVE_PEER[0], FLUSH_PORT, LIVE_NODE[0], FLUSH_PORT, 500, 1400, 0]])
        for _ in range(flush_batches):
            if _processed(stats := _softflowctl(ns, workdir, "statistics")) > wire:
                break
            peer.run([sys.executable, "-c", PEER_SEND, flush, "0"])
            time.sleep(0.2)
        else:
            raise RuntimeError(f"softflowd -i processed no more than the {wire} exchanged packets after "
                               f"{flush_batches} x 500 filler datagrams:\n{stats}")
        _softflowctl(ns, workdir, "shutdown")
        try:
            out, err = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            ns.stop(p, signal.SIGKILL)
            raise RuntimeError("softflowd -i did not shut down") from None
        return stats + (out + err).decode(errors="replace")
    finally:
        peer.close()


def pmacctd_config(plugin: str, port: int, *, version: int = 10, sampling: int = 1) -> str:
    """pmacctd configuration for one nfprobe or sfprobe plugin reading workdir/in.pcap (through
    a FIFO: run_pmacctd)."""
    lines = [
        "daemonize: false",
        f"pcap_savefile: {PMACCTD_FIFO}",
        "pcap_savefile_wait: true",
        "pidfile: ./pmacctd.pid",
        "logfile: ./pmacctd.log",
        f"plugins: {plugin}[p]",
    ]
    if plugin == "nfprobe":
        lines += [
            f"nfprobe_receiver[p]: 127.0.0.1:{port}",
            f"nfprobe_version[p]: {version}",
            # One record per 5-tuple, as generated (see EXPORTERS.md on aggregation keys).
            "aggregate[p]: src_host, dst_host, src_port, dst_port, proto, tos",
            "nfprobe_timeouts[p]: tcp=2:tcp.rst=2:tcp.fin=2:udp=2:icmp=2:general=2:maxlife=30:expint=1",
        ]
    elif plugin == "sfprobe":
        lines += [
            f"sfprobe_receiver[p]: 127.0.0.1:{port}",
            "sfprobe_agentip[p]: 127.0.0.1",
            f"sampling_rate[p]: {sampling}",
        ]
    else:
        raise ValueError(plugin)
    return "\n".join(lines) + "\n"


def run_pmacctd(ns: NetNS, workdir: Path, plugin: str, port: int, *, version: int = 10,
                timeout: float = 30.0) -> str:
    """Run pmacctd with one plugin over workdir/in.pcap, let it export, then stop it (_stop_pmacctd:
    SIGINT to the plugin, which nfprobe answers by exporting its cache). Returns its log.

    pmacctd's core hands its plugin what it reads only while the plugin waits in its main loop
    (tests/support/pmacct.wait_plugins_polling): what it read before that was never exported. The
    core reads the file after a fixed 2 s sleep, not once its plugin waits; so it reads the
    pcap from a FIFO whose packets are written only once the plugin waits."""
    conf = workdir / "pmacctd.conf"
    conf.write_text(pmacctd_config(plugin, port, version=version))
    plugins = plugin_count(conf.read_text())
    fifo = workdir / PMACCTD_FIFO
    os.mkfifo(fifo)
    pcap = (workdir / PCAP_NAME).read_bytes()
    # Read and write: the open returns at once, where write-only would wait for pmacctd to open
    # it. The core opens the file and reads its header (24 bytes) before it forks its plugin.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, pcap[:24])
        p = ns.popen(["pmacctd", "-f", "pmacctd.conf"], cwd=workdir)
        try:
            wait_plugins_polling(p.pid, plugins=plugins, timeout=timeout)
        except (TimeoutError, ChildProcessError) as e:
            ns.stop(p, signal.SIGKILL)
            out, err = p.communicate()
            raise RuntimeError(f"pmacctd did not start ({e}): {out!r} {err!r} {_pmacctd_log(workdir)}") from None
        if plugin == "sfprobe":
            # sfprobe sends a datagram once it is full, the rest of its samples only at a wake-up
            # (data from the core, or its poll's 60 s timeout) in a later second of the wall
            # clock than its last tick, the first at its start; SIGINT ends it without sending
            # them. A plugin that started within the second the core read the pcap in lost its
            # last 6 samples of 30 (3 of 3 runs; all 30 came 60 s later). The core reads the pcap
            # 2 s after it started, so this wait costs something only when the plugin was late.
            time.sleep(max(0.0, math.floor(time.time()) + 1.01 - time.time()))
        rest = memoryview(pcap)[24:]
        deadline = time.monotonic() + timeout
        while rest:
            try:
                rest = rest[os.write(fd, rest):]
            except BlockingIOError:   # the FIFO is full until the core reads (after its 2 s sleep)
                if p.poll() is not None or time.monotonic() > deadline:
                    ns.stop(p, signal.SIGKILL)
                    raise RuntimeError(f"pmacctd stopped reading after {len(pcap) - len(rest)} of the pcap's "
                                       f"{len(pcap)} bytes (exit {p.returncode}): {_pmacctd_log(workdir)}") from None
                select.select([], [fd], [], 0.1)
    finally:
        os.close(fd)   # the core's end of file
    logfile = workdir / "pmacctd.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None and not (
            logfile.exists() and "finished reading PCAP capture file" in logfile.read_text(errors="replace")):
        time.sleep(0.1)
    # The core has handed the plugin the last of it; SIGINT before the plugin took it lost it
    # (sfprobe exits at once, its samples unsent). Waiting in poll() again, it has.
    try:
        wait_plugins_polling(p.pid, plugins=plugins, timeout=timeout)
    except (TimeoutError, ChildProcessError):
        pass   # the log says why
    _stop_pmacctd(ns, p, timeout)
    return _pmacctd_log(workdir)


def _stop_pmacctd(ns: NetNS, p: subprocess.Popen, timeout: float) -> None:
    """Stop pmacctd once its plugins have taken all it read: SIGINT to the plugins alone (nfprobe
    exports its cache and exits, sfprobe exits), then, once they have exited (zombies or reaped),
    SIGKILL to the core: it exports nothing itself, and what its plugins held is sent.

    SIGINT to the whole group made the core's handler sleep 2 s before it signals its plugins,
    cut short only by a plugin's exit that came after the sleep began (sfprobe, which exits at
    once, mostly came before it). Left to itself after its plugins' exit, the core sleeps the
    same 2 s ("OK, Exiting" 2 s after the plugin's exit). SIGINT to the core alone is no better:
    its handler hands the plugins its last buffer again (fill_pipe_buffer), which nfprobe then
    counted twice (every packet of the pcap, both versions, tried here)."""
    children = [q for q, fields in all_stats() if int(fields[1]) == p.pid]
    for child in children:
        try:
            os.kill(child, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        if all(_exited(q) for q in children):
            break
        time.sleep(0.01)
    ns.stop(p, signal.SIGKILL)


def _exited(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie, or reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _pmacctd_log(workdir: Path) -> str:
    log = workdir / "pmacctd.log"
    return log.read_text(errors="replace") if log.exists() else ""


# Run in the exporter's namespace: argv[1] a UDP port. Once its packet socket on lo is bound it
# prints "ready", then after each NetFlow v1/v5/v7 datagram to that port the records so far (the
# header's count, bytes 2-3 in all three). Only the copy lo receives counts (PACKET_HOST), not the
# one it sends (PACKET_OUTGOING).
NETFLOW_RECORDS = """
import socket, struct, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.bind(("lo", 0x0800))
print("ready", flush=True)
total = 0
while True:
    pkt, addr = s.recvfrom(65535)
    ihl = (pkt[0] & 15) * 4
    if addr[2] != socket.PACKET_HOST or pkt[9] != 17 or len(pkt) < ihl + 12:
        continue
    dport = struct.unpack_from("!H", pkt, ihl + 2)[0]
    version, count = struct.unpack_from("!HH", pkt, ihl + 8)
    if dport == port and version in (1, 5, 7):
        total += count
        print(total, flush=True)
"""


def run_fprobe(ns: NetNS, workdir: Path, port: int, *, flows: int, timeout: float = 30.0, version: int = 5,
               extra: tuple[str, ...] = ()) -> str:
    """fprobe (NetFlow `version`: 1, 5 or 7) capturing live on one end of a veth pair inside `ns` while tcpreplay
    sends workdir/in.pcap into the other end (fprobe has no pcap input), exporting to
    127.0.0.1:port. Its flow times are the live capture's, not the pcap's. `extra`: more fprobe
    options (`-q 10000`: a pending queue that holds more than 100 flows).

    fprobe exports a flow idle for 2 s (-d) at a scan (-s, every 1 s), and sends a datagram that
    is not full some seconds later (7.3 s after tcpreplay, 4 flows); stopped, it exports no flow
    still in its cache (SIGINT kills it, SIGTERM sends only flows already expired). So it is
    stopped once `flows` records were sent to the port (counted on lo: NETFLOW_RECORDS), or after
    `timeout` if they never come (the caller sees which are missing). It waited a fixed 10 s."""
    ns.run(["ip", "link", "add", "fpa", "type", "veth", "peer", "name", "fpb"])
    for end in ("fpa", "fpb"):
        ns.run(["ip", "link", "set", end, "up"])
    counter = ns.popen([sys.executable, "-c", NETFLOW_RECORDS, str(port)])
    assert counter.stdout is not None
    if counter.stdout.readline() != b"ready\n":
        raise RuntimeError(f"the record counter did not start: {counter.communicate()[1].decode(errors='replace')}")
    # -l 2: log to stdout, staying in the foreground; -s scan period, -d idle and -e active timeouts
    p = ns.popen(["fprobe", "-l", "2", "-i", "fpb", "-s", "1", "-d", "2", "-e", "300", "-n", str(version), *extra,
                  f"127.0.0.1:{port}"])
    try:
        wait_capturing(ns, p, "fpb")   # what tcpreplay sends before is never seen
    except RuntimeError:
        ns.stop(p, signal.SIGKILL)
        raise RuntimeError(f"fprobe did not start capturing (exit {p.returncode}): "
                           f"{p.communicate()[1].decode(errors='replace')}") from None
    ns.run(["tcpreplay", "--topspeed", "-i", "fpa", str(workdir / PCAP_NAME)])
    sent, deadline, fd, buf = 0, time.monotonic() + timeout, counter.stdout.fileno(), b""
    while sent < flows and p.poll() is None:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)   # not readline: lines it buffered would go unseen by select
        if not chunk:
            break
        *lines, buf = (buf + chunk).split(b"\n")
        if lines:
            sent = int(lines[-1])
    ns.stop(counter, signal.SIGKILL)
    # SIGTERM: fprobe's own handler ends it (0.03 s once it has sent all). It has none for SIGINT,
    # which a test run started in the background of a shell inherits ignored: each stop then
    # waited out ns.stop's 10 s and SIGKILLed it.
    ns.stop(p, signal.SIGTERM)
    out, err = p.communicate()
    return f"fprobe sent {sent} of {flows} records\n" + (out + err).decode(errors="replace")


def run_nfreplay(ns: NetNS, workdir: Path, version: int, port: int, *, timeout: float = 60.0,
                 nfpcapd_options: tuple[str, ...] = ()) -> str:
    """nfdump's exporter: nfpcapd turns workdir/in.pcap into an nfcapd file (its own flow cache,
    the pcap's clock), then nfreplay sends that file's flows as NetFlow `version` (5 or 9) to
    127.0.0.1:port inside `ns`. nfreplay paces its datagrams itself (-d, 10 us by default;
    1000 here so the namespace's socket never overflows). `nfpcapd_options`: more nfpcapd
    arguments (`-o fat`: the frames' MAC addresses and VLAN too). Returns both tools' output."""
    flowdir = workdir / "nfcapd"
    flowdir.mkdir(exist_ok=True)
    made = subprocess.run(["nfpcapd", *nfpcapd_options, "-r", str(workdir / PCAP_NAME), "-w", str(flowdir)],
                          capture_output=True, timeout=timeout)
    text = (made.stdout + made.stderr).decode(errors="replace")
    files = sorted(f for f in flowdir.iterdir() if f.name.startswith("nfcapd.") and f.stat().st_size)
    if made.returncode != 0 or not files:
        raise RuntimeError(f"nfpcapd exited {made.returncode}, files {files}: {text}")
    for f in files:
        sent = ns.run(["nfreplay", "-r", str(f), "-v", str(version), "-H", "127.0.0.1", "-p", str(port),
                       "-d", "1000"], timeout=timeout)
        text += (sent.stdout + sent.stderr).decode(errors="replace")
    return text
