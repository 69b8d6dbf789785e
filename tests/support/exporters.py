"""Real flow exporters driven by the tests: softflowd, pmacct's pmacctd (nfprobe, sfprobe),
fprobe, and nfdump's nfpcapd + nfreplay.

Both read a pcap the test generated (tests/support/pcapgen.py) and export to a UDP port on the
loopback of a namespace the test created (tests/support/netns.py). Facts that matter (see
../shared/EXPORTERS.md): softflowd 1.1.0 `-r` truncates the file name to 16 characters (pass a
short relative name, run in the pcap's directory), `-a` makes export clocks follow the pcap,
`-d` keeps it in the foreground; it needs its own control socket and pid file (`-c`, `-p`) so two
runs never share /var/run. pmacctd reads a pcap with `pcap_savefile` and, with
`pcap_savefile_wait: true`, stays up afterwards; nfprobe flushes its cache on SIGINT.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import time
from pathlib import Path

from tests.support.netns import NetNS


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


def pmacctd_config(plugin: str, port: int, *, version: int = 10, sampling: int = 1) -> str:
    """pmacctd configuration for one nfprobe or sfprobe plugin reading workdir/in.pcap."""
    lines = [
        "daemonize: false",
        f"pcap_savefile: {PCAP_NAME}",
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
                settle: float = 4.0, timeout: float = 30.0) -> str:
    """Run pmacctd with one plugin over workdir/in.pcap, let it export, then SIGINT it (nfprobe
    flushes its cache on exit). Returns its log."""
    conf = workdir / "pmacctd.conf"
    conf.write_text(pmacctd_config(plugin, port, version=version))
    p = ns.popen(["pmacctd", "-f", "pmacctd.conf"], cwd=workdir)
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)
    if p.poll() is not None:
        out, err = p.communicate()
        log = (workdir / "pmacctd.log").read_text() if (workdir / "pmacctd.log").exists() else ""
        raise RuntimeError(f"pmacctd exited early ({p.returncode}): {out!r} {err!r} {log}")
    # pmacctd sleeps 2 s before it reads the file: on a loaded machine (CI with both CPUs busy)
    # `settle` could end before it had read it, and the SIGINT left nothing to export
    logfile = workdir / "pmacctd.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None and not (
            logfile.exists() and "finished reading PCAP capture file" in logfile.read_text(errors="replace")):
        time.sleep(0.1)
    ns.stop(p, signal.SIGINT, timeout=timeout)
    return (workdir / "pmacctd.log").read_text() if (workdir / "pmacctd.log").exists() else ""


def run_fprobe(ns: NetNS, workdir: Path, port: int, *, settle: float = 10.0, version: int = 5,
               extra: tuple[str, ...] = ()) -> str:
    """fprobe (NetFlow `version`: 1, 5 or 7) capturing live on one end of a veth pair inside `ns` while tcpreplay
    sends workdir/in.pcap into the other end (fprobe has no pcap input), exporting to
    127.0.0.1:port. fprobe exports a flow idle for 2 s at its next 1 s scan; `settle` waits for
    that, then SIGINT stops it. Its flow times are the live capture's, not the pcap's. `extra`:
    more fprobe options (`-q 10000`: a pending queue that holds more than 100 flows)."""
    ns.run(["ip", "link", "add", "fpa", "type", "veth", "peer", "name", "fpb"])
    for end in ("fpa", "fpb"):
        ns.run(["ip", "link", "set", end, "up"])
    # -l 2: log to stdout, staying in the foreground; -s scan period, -d idle and -e active timeouts
    p = ns.popen(["fprobe", "-l", "2", "-i", "fpb", "-s", "1", "-d", "2", "-e", "300", "-n", str(version), *extra,
                  f"127.0.0.1:{port}"])
    time.sleep(1.0)  # capturing before the first packet
    if p.poll() is not None:
        raise RuntimeError(f"fprobe exited {p.returncode}: {p.communicate()[1].decode(errors='replace')}")
    ns.run(["tcpreplay", "--topspeed", "-i", "fpa", str(workdir / PCAP_NAME)])
    time.sleep(settle)
    ns.stop(p, signal.SIGINT)
    out, err = p.communicate()
    return (out + err).decode(errors="replace")


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
