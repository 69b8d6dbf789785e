"""A private Open vSwitch (userspace datapath) with pods, configured like OVN-Kubernetes exports.

What OVN-Kubernetes runs on every node is ovs-vswitchd exporting IPFIX, sFlow and/or NetFlow
from br-int. Here: ovsdb-server and ovs-vswitchd run inside the test's network namespace with a
private run/log/db/sysconf directory (OVS_RUNDIR & co, nothing system-wide is touched), the
bridge uses `datapath_type=netdev` (no kernel module here), and each "pod" is a network
namespace attached through a veth pair whose host end is a bridge port with a fixed OpenFlow
port number. Facts from ../shared/EXPORTERS.md: TX checksum offload must be off on both veth
ends (the userspace datapath forwards partial checksums otherwise); `other_config:max-idle=3000`
makes datapath flows (and so NetFlow records) expire after 3 s.

Two such instances, each in its own namespace, make two OVN-Kubernetes "nodes": a veth pair is
the cable between them, each node's br-ex holds its end and the node's underlay addresses on
its LOCAL port, and tunnel ports (Geneve, VXLAN) on br-int point at the peer's address. The
userspace datapath tunnels natively (tnl_push/tnl_pop): it routes the outer packet with the
routes it learns from the namespace's kernel (ovs/route/show) and resolves the next hop from its
own neighbour table, set here with tnl/neigh/set so that no packet waits for ARP or ND.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import NetNS, unique

SCHEMA_CANDIDATES = ["/usr/share/openvswitch/vswitch.ovsschema"]


@dataclass
class Pod:
    name: str  # pod network namespace
    ns: NetNS
    host_if: str  # veth end on the bridge (in the OVS namespace)
    ofport: int
    ipv4: str
    ipv6: str
    mac: str
    ifindex: int = 0  # Linux ifindex of host_if in the OVS namespace


def _accepts(path: Path) -> bool:
    """Whether a unix socket at `path` accepts a connection."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def ovn_mac(ipv4: str) -> str:
    """OVN-Kubernetes pod MAC: 0a:58 followed by the IPv4 address bytes."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(ipv4).packed)


class OVS:
    """ovsdb-server + ovs-vswitchd in `ns`, state under `rundir`."""

    def __init__(self, ns: NetNS, rundir: Path) -> None:
        self.ns = ns
        self.dir = rundir
        self.env = dict(os.environ, OVS_RUNDIR=str(rundir), OVS_LOGDIR=str(rundir),
                        OVS_DBDIR=str(rundir), OVS_SYSCONFDIR=str(rundir))
        self.db_sock = f"unix:{rundir}/db.sock"
        self.pods: list[Pod] = []
        self.daemons: list[subprocess.Popen] = []
        self.started = False

    def start(self, *, vswitchd_env: dict[str, str] | None = None) -> None:
        """Start both daemons; `vswitchd_env`: more environment for ovs-vswitchd alone (a
        libfaketime clock, see test_ovs_ipfix_failed_sends_are_counted).

        They run in the foreground, started through NetNS.popen so that they are SIGKILLed with
        the test process however that dies: --detach's fork (and --monitor's) drops the
        parent-death request, and a killed pytest left both daemons running. What --detach's
        parent waited for is waited for here: ovsdb-server's socket accepting, ovs-vswitchd's
        first configuration committed (its datapath types in the database, written in the
        transaction whose completion ends --detach's wait)."""
        schema = next((s for s in SCHEMA_CANDIDATES if Path(s).exists()), None)
        if schema is None:
            raise RuntimeError("vswitch.ovsschema not found")
        self.ns.run(["ovsdb-tool", "create", f"{self.dir}/conf.db", schema], env=self.env)
        db = self._daemon(["ovsdb-server", f"{self.dir}/conf.db", f"--remote=p{self.db_sock}"], self.env)
        self._wait(db, lambda: _accepts(self.dir / "db.sock"), 30)
        self.started = True
        self.vsctl("--no-wait", "init")
        vswitchd = self._daemon(["ovs-vswitchd", self.db_sock], dict(self.env, **(vswitchd_env or {})))
        self._wait(vswitchd, lambda: "netdev" in self.vsctl("--if-exists", "get", "Open_vSwitch", ".",
                                                            "datapath_types"), 60)

    def _daemon(self, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        """One OVS daemon in the foreground, its console output in DAEMON.console beside its log."""
        with open(self.dir / f"{cmd[0]}.console", "wb") as console:
            p = self.ns.popen([*cmd, "--pidfile", "--log-file", "--no-chdir"], env=env, stdout=console,
                              stderr=subprocess.STDOUT)
        self.daemons.append(p)
        return p

    def _wait(self, p: subprocess.Popen, ready: Callable[[], bool], timeout: float) -> None:
        """Until `ready()`; raises with the daemon's console output when it exits first or is not
        ready within `timeout` seconds."""
        name = Path(p.args[len(self.ns.prefix())]).name  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while p.poll() is None:
            if ready():
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        console = (self.dir / f"{name}.console").read_text(errors="replace")[-3000:]
        state = f"exited with {p.returncode}" if p.returncode is not None else f"not ready after {timeout:.0f} s"
        raise RuntimeError(f"[{self.ns.name}] {name} {state}: {console}")

    def vsctl(self, *args: str, timeout: float = 30.0) -> str:
        p = self.ns.run(["ovs-vsctl", f"--db={self.db_sock}", "--timeout=20", *args], env=self.env,
                        timeout=timeout)
        return p.stdout.decode().strip()

    def ofctl(self, *args: str) -> str:
        return self.ns.run(["ovs-ofctl", *args], env=self.env).stdout.decode()

    def appctl(self, *args: str) -> str:
        return self.ns.run(["ovs-appctl", *args], env=self.env, check=False).stdout.decode()

    def add_bridge(self, name: str = "br-int", *, hwaddr: str | None = None) -> str:
        """A netdev bridge; `hwaddr` fixes the MAC of its LOCAL port (else OVS derives it from
        the ports and it changes as they are added)."""
        extra = [f"other_config:hwaddr={hwaddr}"] if hwaddr else []
        self.vsctl("add-br", name, "--", "set", "bridge", name, "datapath_type=netdev",
                   "other_config:max-idle=3000", *extra)
        self.ns.run(["ip", "link", "set", name, "up"], check=False)
        return name

    def add_underlay(self, bridge: str, uplink: str, addrs: list[str], *, hwaddr: str) -> None:
        """The node's underlay bridge (OVN-Kubernetes' br-ex): `uplink` as its port and the node's
        addresses (CIDR) on its LOCAL port, where userspace tunnelling routes the outer packets."""
        self.add_bridge(bridge, hwaddr=hwaddr)
        self.ns.run(["ethtool", "-K", uplink, "tx", "off"])
        self.vsctl("add-port", bridge, uplink)
        for a in addrs:
            self.ns.run(["ip", "addr", "add", a, "dev", bridge, *(["nodad"] if ":" in a else [])])

    def add_tunnel(self, bridge: str, name: str, kind: str, *, remote_ip: str, key: int,
                   ofport: int) -> None:
        """A tunnel port (`kind` geneve or vxlan, on the IANA UDP port) to `remote_ip`, VNI `key`."""
        self.vsctl("add-port", bridge, name, "--", "set", "interface", name, f"type={kind}",
                   f"options:remote_ip={remote_ip}", f"options:key={key}", f"ofport_request={ofport}")

    def tnl_neigh_set(self, bridge: str, ip: str, mac: str) -> None:
        """A static entry in the userspace tunnel neighbour table (no ARP/ND for the next hop)."""
        self.ns.run(["ovs-appctl", "tnl/neigh/set", bridge, ip, mac], env=self.env)

    def set_flows(self, bridge: str, flows: list[str]) -> None:
        """Replace the bridge's OpenFlow table (and its default NORMAL flow) with `flows`."""
        path = self.dir / f"{bridge}.flows"
        path.write_text("\n".join(flows) + "\n")
        self.ofctl("replace-flows", bridge, str(path))

    def add_pod(self, bridge: str, index: int, *, mtu: int | None = None) -> Pod:
        """A namespace with eth0 (10.128.0.<10+i>/24, fd00:10:128::<10+i>/64) on `bridge`; `mtu`
        leaves room for a tunnel header (OVN-Kubernetes gives pods the node MTU minus 100)."""
        v4 = f"10.128.0.{10 + index}"
        v6 = f"fd00:10:128::{10 + index:x}"
        mac = ovn_mac(v4)
        pod_ns = NetNS(unique("fsp"))
        host_if = unique("vh")[:15]
        self.ns.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                     "netns", pod_ns.name])
        pod_ns.run(["ip", "link", "set", "eth0", "address", mac])
        pod_ns.run(["ip", "addr", "add", f"{v4}/24", "dev", "eth0"])
        pod_ns.run(["ip", "-6", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad"])
        if mtu is not None:
            pod_ns.run(["ip", "link", "set", "eth0", "mtu", str(mtu)])
        pod_ns.run(["ip", "link", "set", "eth0", "up"])
        self.ns.run(["ip", "link", "set", host_if, "up"])
        # The userspace datapath does not complete partial checksums: offload off on both ends.
        pod_ns.run(["ethtool", "-K", "eth0", "tx", "off"])
        self.ns.run(["ethtool", "-K", host_if, "tx", "off"])
        ofport = 10 + index
        self.vsctl("add-port", bridge, host_if, "--", "set", "interface", host_if,
                   f"ofport_request={ofport}")
        idx = int(self.ns.run(["cat", f"/sys/class/net/{host_if}/ifindex"]).stdout)
        pod = Pod(pod_ns.name, pod_ns, host_if, ofport, v4, v6, mac, idx)
        self.pods.append(pod)
        return pod

    # ---- export configuration: the ovs-vsctl commands OVN-Kubernetes issues ----------------

    def set_ipfix(self, bridge: str, target: str, *, sampling: int, cache_active_timeout: int = 60,
                  cache_max_flows: int = 100, obs_domain_id: int | None = None,
                  other_config: dict[str, str] | None = None) -> None:
        args = ["--", "--id=@ipfix", "create", "ipfix", f'targets="{target}"', f"sampling={sampling}",
                f"cache_active_timeout={cache_active_timeout}", f"cache_max_flows={cache_max_flows}"]
        if obs_domain_id is not None:
            args.append(f"obs_domain_id={obs_domain_id}")
        args += [f"other_config:{k}={v}" for k, v in (other_config or {}).items()]
        self.vsctl(*args, "--", "set", "bridge", bridge, "ipfix=@ipfix")

    def set_sflow(self, bridge: str, target: str, *, agent: str, sampling: int, polling: int = 10,
                  header: int = 128) -> None:
        self.vsctl("--", "--id=@sflow", "create", "sflow", f"agent={agent}", f'targets="{target}"',
                   f"header={header}", f"sampling={sampling}", f"polling={polling}",
                   "--", "set", "bridge", bridge, "sflow=@sflow")

    def set_netflow(self, bridge: str, target: str, *, active_timeout: int = 60, engine_type: int = 0,
                    engine_id: int = 0) -> None:
        self.vsctl("--", "--id=@netflow", "create", "netflow", f'targets="{target}"',
                   f"active_timeout={active_timeout}", f"engine_type={engine_type}",
                   f"engine_id={engine_id}", "--", "set", "bridge", bridge, "netflow=@netflow")

    def clear_exports(self, bridge: str) -> None:
        self.vsctl("clear", "bridge", bridge, "ipfix", "sflow", "netflow")

    def stop(self) -> None:
        """Stop both daemons (SIGTERM, then SIGKILL) and remove the pods (safe to call twice)."""
        for pod in self.pods:
            pod.ns.close()
        self.pods = []
        for p in reversed(self.daemons):   # ovs-vswitchd first
            self.ns.stop(p, signal.SIGTERM, timeout=5)


# ---- IPFIX exporter state ------------------------------------------------------------------
def ipfix_stats(ovs: OVS, bridge: str) -> dict[str, int]:
    """`ovs-ofctl dump-ipfix-bridge`: "bridge ipfix: flows=N, current flows=N, sampled pkts=N,
    ipv4 ok=N, ..., tx errs=N" as {"sampled pkts": N, ...} ({} before the exporter exists)."""
    out: dict[str, int] = {}
    for part in ovs.ofctl("dump-ipfix-bridge", bridge).replace("\n", ",").split(","):
        name, eq, value = part.rpartition("=")
        if eq and value.strip().isdigit():
            out[name.split(":")[-1].strip()] = int(value)
    return out


def ipfix_live(bridges: list[tuple[OVS, str]], send, *, timeout: float = 10.0) -> list[str]:
    """Wait until every bridge's freshly configured IPFIX exporter samples IPv4: `send()` makes
    an IPv4 conversation of its own (not one the test checks) that crosses each bridge at least
    twice, sent again each second until every bridge's "ipv4 ok" count rose by 2. Conversations
    made before that can go unsampled (the userspace datapath keeps translating with the old
    exporter for a moment after ovs-vsctl returns). Returns what was seen when it never did,
    for the fixture's retry to report."""
    deadline = time.monotonic() + timeout
    base = [ipfix_stats(ovs, br).get("ipv4 ok", 0) for ovs, br in bridges]
    now: list[int] = base
    while time.monotonic() < deadline:
        send()
        until = min(deadline, time.monotonic() + 1.0)
        while time.monotonic() < until:
            now = [ipfix_stats(ovs, br).get("ipv4 ok", 0) for ovs, br in bridges]
            if all(n - b >= 2 for n, b in zip(now, base, strict=True)):
                return []
            time.sleep(0.1)
    return [f"IPFIX on {br} ({ovs.dir}) not sampling IPv4 {timeout:.0f} s after configuration: "
            f"ipv4 ok {b} -> {n}" for (ovs, br), b, n in zip(bridges, base, now, strict=True) if n - b < 2]


# ---- traffic between pods: python sockets run in the pod namespaces ------------------------
# (no ping binary is assumed: ICMP echo goes through a raw socket; the peer kernel replies)
TRAFFIC = r"""
import socket, struct, sys, time
mode = sys.argv[1]
def fam(a):
    return socket.AF_INET6 if ":" in a else socket.AF_INET
if mode == "tcp-server":
    addr, port, reply = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(fam(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    want = int(c.recv(16).decode().strip() or 0)
    got = 0
    while got < want:
        b = c.recv(65536)
        if not b:
            break
        got += len(b)
    c.sendall(b"r" * reply)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    c.close()
    print(got, flush=True)
elif mode == "tcp-client":
    addr, port, size, sport = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    s = socket.socket(fam(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the same ports again on a retry
    s.bind(("::" if ":" in addr else "0.0.0.0", sport))
    s.connect((addr, port))
    s.sendall(str(size).ljust(16).encode() + b"x" * size)
    got = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += len(b)
    s.close()
    print(got, flush=True)
elif mode == "udp-send":
    addr, port, count, size, sport = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    pause = float(sys.argv[7]) if len(sys.argv) > 7 else 0.002
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.bind(("::" if ":" in addr else "0.0.0.0", sport))
    for i in range(count):
        s.sendto(b"u" * size, (addr, port))
        if pause:
            time.sleep(pause)
    print("sent", flush=True)
elif mode == "udp-recv":
    addr, port, count, wait = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(wait)
    print("ready", flush=True)
    got = 0
    try:
        while got < count:
            s.recv(65536)
            got += 1
    except socket.timeout:
        pass
    print(got, flush=True)
elif mode == "ping":
    addr, count, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    v6 = ":" in addr
    s = socket.socket(fam(addr), socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.settimeout(2)
    ok = 0
    for seq in range(count):
        body = bytes(size)
        hdr = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0x4242, seq)
        if not v6:
            d = hdr + body
            t = sum(struct.unpack("!%dH" % (len(d) // 2), d))
            while t >> 16:
                t = (t & 0xFFFF) + (t >> 16)
            hdr = hdr[:2] + struct.pack("!H", ~t & 0xFFFF) + hdr[4:]
        s.sendto(hdr + body, (addr, 0))
        try:
            while True:
                r = s.recv(65536)
                off = 0 if v6 else (r[0] & 0xF) * 4
                if r[off] in (0, 129):
                    ok += 1
                    break
        except socket.timeout:
            pass
        time.sleep(0.1)
    print(ok, flush=True)
"""


def traffic(pod: Pod, *args: str, background: bool = False, timeout: float = 30.0):
    """Run one TRAFFIC mode in the pod's namespace (returns its stdout, or the Popen)."""
    import sys

    cmd = [sys.executable, "-c", TRAFFIC, *[str(a) for a in args]]
    if background:
        p = pod.ns.popen(cmd)
        assert p.stdout is not None
        line = p.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"{args[0]} did not start: {line!r} {p.stderr.read() if p.stderr else b''!r}")
        return p
    return pod.ns.run(cmd, timeout=timeout).stdout.decode()
