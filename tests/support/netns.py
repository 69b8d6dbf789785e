"""Network namespaces for tests: isolation from whatever else runs on the machine.

Other processes may listen on or send to 127.0.0.1:2055/4739/6343 in the root namespace, so every
exporter test runs its exporter, capture and collector inside a namespace it creates, with a
unique name per run, and removes it (and every process it started there) in a finalizer even
when the test fails. A test process killed outright runs no finalizer: its namespaces (bind mounts
under /run/netns, which nothing removes) are swept by the next session (sweep_stale, conftest).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from collector.util import popen_child
from tests.support.owners import claim, maker_gone

IP = shutil.which("ip")

# Who made each test namespace: an owner file named after it (tests/support/owners), removed
# with the namespace; sweep_stale removes the namespaces whose maker is gone.
OWNERS = Path("/run/flowscope-tests/netns")


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None and not Path(t).exists()]


def root_skip_reason(*tools: str) -> str | None:
    """Why a namespace test cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    miss = missing_tools("ip", *tools)
    if miss:
        return f"missing tools: {', '.join(miss)} (make test installs them as root)"
    return None


def unique(prefix: str) -> str:
    """A short unique name (interface names are limited to 15 characters)."""
    return f"{prefix}{os.getpid() % 1000:03d}{uuid.uuid4().hex[:5]}"


class NetNS:
    """One network namespace with its loopback up; processes started through it are tracked
    and killed (by pid, process group) on close()."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or unique("fs")
        self.procs: list[subprocess.Popen] = []
        OWNERS.mkdir(parents=True, exist_ok=True)
        claim(OWNERS / self.name)   # first: none is made without
        try:
            subprocess.run([IP, "netns", "add", self.name], check=True, capture_output=True)
        except BaseException:
            (OWNERS / self.name).unlink(missing_ok=True)
            raise
        try:
            self.run(["ip", "link", "set", "lo", "up"])
        except Exception:
            self.close()
            raise

    def prefix(self) -> list[str]:
        return [IP, "netns", "exec", self.name]

    def run(self, cmd: list[str], *, check: bool = True, timeout: float = 30.0,
            **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.prefix() + cmd, capture_output=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(cmd)} -> {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace')}{proc.stdout.decode(errors='replace')}")
        return proc

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        # killed with the test process (`ip netns exec` execs the command, which keeps the ask)
        # when that dies without close(): its own session is out of reach of a kill of pytest's group
        p = popen_child(self.prefix() + cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 10.0) -> None:
        """Signal one process we started (its own process group) and reap it."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)

    def close(self) -> None:
        for p in self.procs:
            try:
                self.stop(p, signal.SIGTERM, timeout=5)
            except Exception:
                pass
        remove(self.name)

    def __enter__(self) -> NetNS:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove(name: str) -> None:
    """Kill what still runs in namespace `name` (`ip netns pids`) and delete it and its owner file."""
    pids = subprocess.run([IP, "netns", "pids", name], capture_output=True, text=True)
    for pid in pids.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run([IP, "netns", "del", name], capture_output=True)
    (OWNERS / name).unlink(missing_ok=True)


def sweep_stale() -> list[str]:
    """Remove the namespaces (and what runs in them) whose maker is no longer running: a test
    process killed before its finalizers (SIGKILL, a CI job's timeout). Those of test processes
    still running (another session on the machine) are left alone. Returns the names removed."""
    removed = []
    for entry in sorted(OWNERS.glob("*")) if OWNERS.is_dir() else []:
        if maker_gone(entry):
            remove(entry.name)
            removed.append(entry.name)
    return removed


CLONE_NEWNET = 0x40000000


def in_netns(ns: NetNS, fn: Callable[[], None]) -> None:
    """Run `fn` on a thread moved into `ns` (setns(2) moves the calling thread only): the sockets
    it opens, the threads and processes it starts (they take the namespace of the thread that
    made them) are there; the test process's other threads stay where they were. Its exception
    is raised here. For a test whose own sockets (a collector's HTTP endpoint, a consumer) must
    be in the namespace with what it starts."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            failed.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if failed:
        raise failed[0]


def veth_between(a: NetNS, b: NetNS) -> tuple[str, str]:
    """A veth pair with one end in each namespace (a cable between two "nodes"), both ends up.
    Returns the end names (in `a`, in `b`); the pair goes away with either namespace."""
    end_a, end_b = unique("ul")[:15], unique("ul")[:15]
    subprocess.run([IP, "link", "add", end_a, "netns", a.name, "type", "veth", "peer", "name", end_b,
                    "netns", b.name], check=True, capture_output=True)
    a.run(["ip", "link", "set", end_a, "up"])
    b.run(["ip", "link", "set", end_b, "up"])
    return end_a, end_b


SINK = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
replies, size = int(sys.argv[3]), int(sys.argv[4])
print("ready", flush=True)
while True:
    peer = s.recvfrom(65535)[1]
    if replies > 0:
        s.sendto(bytes(size), peer)
        replies -= 1
"""


def udp_sink(ns: NetNS, addr: str, port: int, *, replies: int = 0, reply_size: int = 0) -> subprocess.Popen:
    """A UDP socket that drains `addr:port` in `ns`: without a listener the exporter's connected
    socket gets ICMP port-unreachable and its next send fails with ECONNREFUSED. It answers the
    first `replies` datagrams, each with `reply_size` zero bytes to its sender."""
    import sys

    p = ns.popen([sys.executable, "-c", SINK, addr, str(port), str(replies), str(reply_size)])
    assert p.stdout is not None
    line = p.stdout.readline()
    if b"ready" not in line:
        raise RuntimeError(f"udp sink did not start: {p.stderr.read() if p.stderr else b''!r}")
    return p


def wait_capturing(ns: NetNS, p: subprocess.Popen, ifname: str, timeout: float = 10.0) -> None:
    """Wait until process `p` captures on `ifname` in `ns`: one of its packet sockets is bound to
    that interface and running (/proc/PID/net/packet: Iface, R; libpcap opens the socket with no
    protocol, so that it gets nothing, and binds it to the interface once its ring is set up).
    Packets before that are not captured; packets after it wait in the ring until read."""
    # libpcap's "any" binds its socket to no interface: index 0
    ifindex = "0" if ifname == "any" else ns.run(["cat", f"/sys/class/net/{ifname}/ifindex"]).stdout.decode().strip()
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        try:
            fds = {os.readlink(f"/proc/{p.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{p.pid}/fd")}
            with open(f"/proc/{p.pid}/net/packet") as f:   # sk RefCnt Type Proto Iface R Rmem User Inode
                rows = [line.split() for line in f.read().splitlines()[1:]]
        except OSError:
            rows = []   # gone: see p.poll()
        if any(r[4] == ifindex and r[5] == "1" and f"socket:[{r[8]}]" in fds for r in rows):
            return
        time.sleep(0.01)
    raise RuntimeError(f"pid {p.pid} did not capture on {ifname} within {timeout}s (exit {p.poll()})")


class Capture:
    """tcpdump on one interface of a namespace, written to a pcap; started before the exporter
    and stopped after it (SIGINT flushes the file)."""

    def __init__(self, ns: NetNS, path: Path, *, iface: str = "lo", bpf: str = "udp") -> None:
        self.ns = ns
        self.path = path
        self.iface = iface
        # --immediate-mode: without it, TPACKET_V3 blocks are only handed over when full or
        # on a timeout, and a short capture stopped by SIGINT comes out empty.
        # -Z root: keep writing to the test's private (0700) directory.
        # -B 65536 (KiB): the default 2 MiB ring dropped 55 IPFIX datagrams of an OVS node on a
        # loaded machine (review helper-86), which a test would read as a decoder's loss.
        self.proc = ns.popen(["tcpdump", "--immediate-mode", "-Z", "root", "-i", iface, "-n", "-U",
                              "-B", "65536", "-s", "0", "-w", str(path), bpf])
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        # tcpdump says "listening on ..." on stderr once the socket is bound.
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), False)
        buf = b""
        while time.monotonic() < deadline:
            chunk = self.proc.stderr.read() or b""
            buf += chunk
            if b"listening on" in buf:
                # Its packet socket runs on the interface from here on (already when it says so,
                # 2 of 2 starts looked at); it waited a fixed 0.3 s, for a loss of the first
                # datagrams of an exporter that sends at once (softflowd -v psamp: 1 run of 6) seen
                # before tcpdump had its 64 MiB ring (-B), which stop() now reports as drops
                wait_capturing(self.ns, self.proc, self.iface, timeout=max(0.1, deadline - time.monotonic()))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump exited: {buf.decode(errors='replace')}")
            time.sleep(0.05)
        raise RuntimeError(f"tcpdump not ready after {timeout}s: {buf.decode(errors='replace')}")

    def stop(self, settle: float = 0.5) -> Path:
        """Stop tcpdump; raises if its kernel ring dropped packets (what it says as it exits): the
        capture misses datagrams that were sent, which a test would read as the exporter's or the
        decoder's loss."""
        time.sleep(settle)
        self.ns.stop(self.proc, signal.SIGINT)
        assert self.proc.stderr is not None
        said = (self.proc.stderr.read() or b"").decode(errors="replace")
        m = re.search(r"(\d+) packets? dropped by kernel", said)
        if m and int(m.group(1)):
            raise RuntimeError(f"tcpdump dropped {m.group(1)} packets of {self.path.name}: {said}")
        return self.path
