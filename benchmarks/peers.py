"""Peer collectors the benchmark compares flowscope with, started and stopped from Python.

- pmacct ``nfacctd`` (NetFlow v5/v9, IPFIX) and ``sfacctd`` (sFlow v5) with the Kafka plugin
  publishing JSON, one message per input flow: the C program that does flowscope's job.
- nfdump ``nfcapd`` writing its binary files: a decode-only C reference (no JSON, no Kafka).

Facts this module depends on (../shared/EXPORTERS.md):
- Debian's pmacct links librdkafka 2.0.2, whose ApiVersions handshake with Tansu never
  completes. A newer, ABI-compatible librdkafka ships in the confluent-kafka wheel
  (``confluent_kafka.libs/librdkafka-<hash>.so.1``); we expose it as ``librdkafka.so.1`` in a
  private directory and put that on LD_LIBRARY_PATH.
- pmacct aggregates: to get one record per flow the ``aggregate`` key must contain what makes
  each flow unique (5-tuple, interfaces, timestamps and the export sequence number).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from collector.util import popen_child, run_child
from tests.support.pmacct import all_stats, plugin_count, process_tree, wait_plugins_polling

# The aggregate key per protocol: everything that tells two flows of one datagram apart, plus
# the export sequence number that tells two datagrams apart (the generator reuses a pool of
# datagram bodies, so without it repeated bodies would merge).
NFACCTD_AGGREGATE = {
    "ipfix": "src_host, dst_host, src_port, dst_port, proto, tos, in_iface, out_iface, "
    "timestamp_start, timestamp_end, export_proto_seqno",
    "v9": "src_host, dst_host, src_port, dst_port, proto, tos, in_iface, out_iface, "
    "timestamp_start, timestamp_end, export_proto_seqno",
    "v5": "src_host, dst_host, src_port, dst_port, proto, tos, in_iface, out_iface, "
    "timestamp_start, timestamp_end, export_proto_seqno",
    # sFlow samples carry no flow times; within one datagram the sampled headers differ
    "sflow": "src_host, dst_host, src_port, dst_port, proto, tos, in_iface, out_iface, "
    "src_mac, dst_mac, export_proto_seqno",
}


def librdkafka_dir() -> str:
    """A directory holding ``librdkafka.so.1`` from the confluent-kafka wheel (created once)."""
    import confluent_kafka  # type: ignore[import-not-found]

    site = os.path.dirname(os.path.dirname(confluent_kafka.__file__))
    libs = glob.glob(os.path.join(site, "confluent_kafka.libs", "librdkafka*.so*"))
    if not libs:
        raise RuntimeError("confluent-kafka wheel has no bundled librdkafka (pip install confluent-kafka)")
    d = os.path.join(tempfile.gettempdir(), "flowscope-bench-rdkafka")
    os.makedirs(d, exist_ok=True)
    link = os.path.join(d, "librdkafka.so.1")
    if os.path.realpath(link) != os.path.realpath(libs[0]):
        tmp = link + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(libs[0], tmp)
        os.replace(tmp, link)
    return d


def _read_stat(pid: int) -> tuple[int, int]:
    """(utime + stime in clock ticks, start ticks) of one process."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12]), int(rest[19])


def group_members(pgid: int) -> list[int]:
    """The processes of process group `pgid` that have not exited (a zombie is left out: nobody
    may reap an orphan's)."""
    return [p for p, fields in all_stats() if fields[0] not in ("Z", "X") and int(fields[2]) == pgid]


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            total += _read_stat(p)[0]
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used by ``root`` and its live descendants, including reaped children.

    utime+stime+cutime+cstime per live process: a child's time moves into its parent's
    cutime/cstime when reaped, so the sum stays monotonic while pmacct forks and reaps its
    short-lived purge processes.
    """
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        except (OSError, IndexError, ValueError):
            pass
    return total / hz


def tree_pss_kib(pids: list[int]) -> int:
    """Sum of PSS over the processes, KiB: forked children (pmacct's purges) share their
    parent's pages, so summing RSS or VmHWM would count the same memory many times."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


class CpuTracker:
    """CPU seconds of a process tree, robust to short-lived children.

    pmacct forks a writer per purge and does not necessarily reap it into its own
    cutime, so summing the live tree undercounts. This keeps the last seen utime+stime of
    every (pid, start time) ever observed; call ``update()`` often (every 0.25-0.5 s): time a
    child spends after its last sample is missed.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.hz = os.sysconf("SC_CLK_TCK")
        self.seen: dict[tuple[int, int], int] = {}

    def update(self) -> float:
        for p in process_tree(self.root):
            try:
                ticks, start = _read_stat(p)
            except (OSError, IndexError, ValueError):
                continue
            self.seen[(p, start)] = max(ticks, self.seen.get((p, start), 0))
        return self.total()

    def total(self) -> float:
        return sum(self.seen.values()) / self.hz


def vm_hwm_kib(pids: list[int]) -> int:
    """Sum of VmHWM (peak RSS) over the processes, KiB."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


@dataclass
class Peer:
    """A running collector process (peer or flowscope) with what the harness needs to know."""

    name: str
    proc: subprocess.Popen
    workdir: str
    log_path: str
    ports: dict[str, int]
    cpus: str | None = None
    topic: str | None = None
    nfcapd_dir: str | None = None
    extra: dict = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)  # the command line it runs with (taskset included)
    config: str | None = None  # its configuration file, in workdir (the harness keeps a copy)
    # set by stop() when the process did not end by its stop signal within the timeout and was
    # SIGKILLed (what pmacct's stops all came to when they sent SIGTERM)
    timed_out: bool = field(default=False, init=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc.poll() is None else []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process and wait, SIGKILL after `timeout` (timed_out). Then wait for the rest
        of its process group (it runs in a session of its own: pmacct's Kafka plugin and purge
        writers, flowscope's workers), SIGKILLed if still there `timeout` later: pmacct's plugin
        leaves on its own, after its core, and a stop that returned when the core had left it
        running past the trial, an orphan (publishing while the broker counted and the next
        trial ran, its directory removed under it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.timed_out = True
                self.proc.kill()
                self.proc.wait()
        if not _group_gone(self.proc.pid, timeout):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if not _group_gone(self.proc.pid, 5.0):
                raise RuntimeError(f"{self.name}: processes {group_members(self.proc.pid)} outlive SIGKILL")
        return self.proc.returncode

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


# pmacct's log lines for a cache purge by the writer it forks (PID), the END one with the number
# of entries written and the cache's entries ("QN: 6000/6000")
_PURGE = re.compile(rb"Purging cache - (START|END) \(PID: (\d+)(?:, QN: (\d+)/(\d+))?")


@dataclass
class PmacctPeer(Peer):
    """nfacctd/sfacctd. Neither signal it documents stops it both fast and exactly:
    - SIGTERM: the core catches it but keeps it blocked except while it handles a datagram, so
      once the load is over it stays pending (/proc/PID/status ShdPnd) and every stop waited
      its whole timeout and SIGKILLed pmacct.
    - SIGINT (docs/SIGNALS, FAQ Q16; tried in 7a1d477, reverted in 80f1aa5): the core hands it
      to the Kafka plugin 2 s later, whose handler purges the cache it holds. A periodic purge
      forks its writer with the cache and only then marks the cache flushed: a SIGINT landing
      in between purges the same entries twice. A --quick trial stopped that way read back
      277,400 messages for 200,100 flows (03f4bca, the commit after the revert).
    So stop() waits until a periodic purge (every `refresh_s`) that starts after it is called
    finds the cache empty, and every writer has finished, then SIGKILLs pmacct: everything the
    plugin had received was written by then, nothing twice, within about two refresh intervals
    (the harness stops it once it is idle: one). Still lost, as by every stop before: records
    the core keeps in a plugin buffer not yet full (only with BENCH_PMACCT_BUFFER set)."""

    def stop(self, timeout: float = 15.0, sig: int | None = None) -> int | None:
        """Once the cache is delivered (wait_purged), SIGKILL the core and the plugin at once
        (the plugin left by itself only 0.5-3 s after the core); `sig` stops it that way instead."""
        if sig is None and self.proc.poll() is None:
            if not self.wait_purged(timeout):
                self.timed_out = True
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return super().stop(timeout, signal.SIGKILL if sig is None else sig)

    def wait_purged(self, timeout: float) -> bool:
        """Whether, within `timeout`, a purge that started after this call found nothing left
        to write and no writer is still purging (by pmacct's log: each writer's START, then its
        END)."""
        try:
            start = os.path.getsize(self.log_path)
        except OSError:
            return False
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            try:
                with open(self.log_path, "rb") as f:
                    text = f.read()
            except OSError:
                return False
            started: set[bytes] = set()
            ended: set[bytes] = set()
            empty: set[bytes] = set()   # writers started after the call that found the cache empty
            fresh: set[bytes] = set()
            for m in _PURGE.finditer(text):
                what, pid = m.group(1), m.group(2)
                if what == b"START":
                    started.add(pid)
                    if m.start() >= start:
                        fresh.add(pid)
                else:
                    ended.add(pid)
                    if m.group(4) == b"0":
                        empty.add(pid)
            if fresh & empty and started <= ended:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return False


def _group_gone(pgid: int, timeout: float) -> bool:
    """Whether process group `pgid` has no process left within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _taskset(cmd: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus is not None else cmd


def _wait_udp_bound(pid: int, port: int, timeout: float = 10.0) -> None:
    """Wait until some socket is bound to UDP ``port`` (pmacct binds after reading its config)."""
    hexport = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                with open(table) as f:
                    next(f)
                    for line in f:
                        if line.split()[1].endswith(hexport):
                            return
            except OSError:
                pass
        time.sleep(0.1)
    raise TimeoutError(f"pid {pid} did not bind UDP port {port} within {timeout}s")


def start_pmacct(
    proto: str,
    *,
    port: int,
    bootstrap: str,
    topic: str,
    cpus: str | None = None,
    host: str = "127.0.0.1",
    refresh_s: int = 5,
    rcvbuf: int = 32 * 1024 * 1024,
    buffer_size: int | None = int(os.environ.get("BENCH_PMACCT_BUFFER", "0")) or None,
    debug: bool = False,
    cache_entries: int = 131071,
) -> Peer:
    """Start ``nfacctd`` (proto ipfix/v5/v9) or ``sfacctd`` (sflow) publishing JSON to Kafka.

    One message per flow (``kafka_multi_values`` 0); the cache is purged every ``refresh_s``
    seconds; ``peer.stop()`` returns once a purge has delivered what the plugin held (PmacctPeer:
    neither SIGTERM nor SIGINT does that). The plugin pipe is made large enough that the core
    process does not drop between purges; its buffer is kept small so little data waits in a
    half-filled buffer when a run ends. It returns once the plugin waits for data (what the core
    receives before is never read: wait_plugins_polling). ``cache_entries``: the Kafka plugin's
    cache (about 4 KB each, all cleared as it starts: 0.6-0.9 s for the default's 530 MB here).
    """
    sflow = proto == "sflow"
    daemon = "sfacctd" if sflow else "nfacctd"
    if shutil.which(daemon) is None:
        raise RuntimeError(f"{daemon} not installed (Debian package pmacct)")
    prefix = daemon
    bhost, bport = bootstrap.rsplit(":", 1)
    workdir = tempfile.mkdtemp(prefix=f"bench-{daemon}-")
    conf = os.path.join(workdir, f"{daemon}.conf")
    lines = [
        "daemonize: false",
        f"{prefix}_ip: {host}",
        f"{prefix}_port: {port}",
        f"{prefix}_pipe_size: {rcvbuf}",
        "plugins: kafka[k]",
        f"aggregate[k]: {NFACCTD_AGGREGATE[proto]}",
        "kafka_output[k]: json",
        f"kafka_broker_host[k]: {bhost}",
        f"kafka_broker_port[k]: {bport}",
        f"kafka_topic[k]: {topic}",
        f"kafka_refresh_time[k]: {refresh_s}",
        # ~10 entries per bucket: room for ~1.3M flows between purges. Purges are forked
        # writers; at most kafka_max_writers (10) run at once and data beyond is lost, so
        # purging every second at high rates loses flows ("Maximum number of writer
        # processes reached"): fewer, larger purges every 5 s do better.
        f"kafka_cache_entries[k]: {cache_entries}",
        "plugin_pipe_size[k]: 204800000",
        "kafka_multi_values[k]: 0",
    ]
    if buffer_size:
        # batching core -> plugin transfers is cheaper, but the last partly filled buffer
        # waits for more traffic and is lost when the run ends
        lines.append(f"plugin_buffer_size[k]: {buffer_size}")
    if debug:
        lines.append("debug: true")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = librdkafka_dir() + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    log_path = os.path.join(workdir, f"{daemon}.log")
    cmd = _taskset([daemon, "-f", conf], cpus)
    with open(log_path, "wb") as log:
        proc = popen_child(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    peer = PmacctPeer(name=f"pmacct-{daemon}", proc=proc, workdir=workdir, log_path=log_path,
                      ports={proto: port}, cpus=cpus, topic=topic, cmd=cmd, config=conf)
    try:
        _wait_udp_bound(proc.pid, port)
        # what comes before is never read (see there)
        wait_plugins_polling(proc.pid, plugins=plugin_count("\n".join(lines)))
    except (TimeoutError, ChildProcessError) as e:
        peer.stop(sig=signal.SIGKILL)   # nothing to deliver
        raise RuntimeError(f"{daemon} did not start ({e}):\n{peer.log_tail()}") from None
    return peer


def start_nfcapd(
    proto: str,
    *,
    port: int,
    cpus: str | None = None,
    host: str = "127.0.0.1",
    rcvbuf: int = 32 * 1024 * 1024,
) -> Peer:
    """Start ``nfcapd`` writing binary nfdump files into a fresh directory.

    nfcapd decodes NetFlow v5/v9 and IPFIX; sFlow goes to ``sfcapd`` (Debian package
    ``nfdump-sflow``), which writes the same files. The files rotate every 60 s; the current
    one is finalised on SIGTERM, after which ``count_nfcapd_flows`` reads them with ``nfdump``.
    """
    daemon = "sfcapd" if proto == "sflow" else "nfcapd"
    if shutil.which(daemon) is None:
        raise RuntimeError(f"{daemon} not installed (Debian package {'nfdump-sflow' if daemon == 'sfcapd' else 'nfdump'})")
    workdir = tempfile.mkdtemp(prefix="bench-nfcapd-")
    data = os.path.join(workdir, "data")
    os.makedirs(data)
    log_path = os.path.join(workdir, f"{daemon}.log")
    cmd = _taskset([daemon, "-w", data, "-b", host, "-p", str(port), "-B", str(rcvbuf), "-t", "60"], cpus)
    with open(log_path, "wb") as log:
        proc = popen_child(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    peer = Peer(name=daemon, proc=proc, workdir=workdir, log_path=log_path, ports={proto: port},
                cpus=cpus, nfcapd_dir=data, cmd=cmd)
    try:
        _wait_udp_bound(proc.pid, port)
    except TimeoutError:
        peer.stop()
        raise RuntimeError(f"{daemon} did not start:\n{peer.log_tail()}") from None
    return peer


def count_nfcapd_flows(directory: str) -> int:
    """Total flows in all nfcapd files under ``directory`` (after nfcapd stopped).

    ``nfdump -R dir -I`` prints the files' summary statistics; "Flows:" is the total.
    """
    files = sorted(glob.glob(os.path.join(directory, "**", "nfcapd.*"), recursive=True))
    files = [f for f in files if not os.path.basename(f).startswith("nfcapd.current")]
    total = 0
    for path in files:
        out = run_child(["nfdump", "-r", path, "-I"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Flows:"):
                total += int(line.split(":", 1)[1])
                break
    return total


def udp_drops(port: int) -> int:
    """Kernel receive drops of the socket(s) bound to UDP ``port`` (/proc/net/udp 'drops')."""
    hexport = f":{port:04X}"
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[1].endswith(hexport):
                        total += int(cols[-1])
        except OSError:
            pass
    return total


def snmp_udp_counters() -> dict[str, int]:
    """System-wide UDP counters from /proc/net/snmp (RcvbufErrors, InErrors, ...)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=False)}
