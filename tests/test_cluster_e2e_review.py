"""End to end on a two-node "cluster": Open vSwitch's IPFIX, enriched by `flowscope run --kubeconfig`.

No other test joins a real exporter to enrichment. Here two OVN-Kubernetes "nodes" (network
namespaces, each with a private ovs-vswitchd on the userspace datapath, tests/support/ovs.py) are
joined by a Geneve tunnel between their underlay addresses on br-ex, as OVN-Kubernetes joins
nodes. Each node's br-int holds its pods (network namespaces on veth ports, OVN-style MACs, the
node's pod subnet), the Geneve port and the management port ovn-k8s-mp0 (an internal port holding
the subnet's base + 2, as OVN-Kubernetes gives it), and exports IPFIX as OVN-Kubernetes configures
it (bridge IPFIX, input and output sampling and tunnel sampling left at OVS's defaults) to the
collector, so each datagram leaves from the node's own address. OpenFlow on br-int routes as OVN's
logical routers do (a pod's packet to another node's subnet or node address goes into the
tunnel; one for a local pod, or the node's own address from the tunnel, goes to that port).

The collector runs in node-a's namespace, with the fake API server (tests/support/fake_kube.py)
there too, which describes what the test built: the two Nodes (InternalIP = the address the
node's exporter sends from, `k8s.ovn.org/node-subnets`, zone labels), the pods (podIPs, hostIP,
ownerReferences: ReplicaSets of Deployments, a StatefulSet, a host-network DaemonSet pod) and a
Service. Every published flow is then checked against DESIGN.md's enrichment rules and that
topology: each side's identity, FlowDirection (AgentIP against the hosts: different nodes 1 at
the source node's exporter and 0 at the destination's, same node 2), K8S_FlowLayer, Interfaces,
and the input/output sampling twins of one packet (one of them marked Duplicate, or dropped with
--dedup), with no flow lost or published twice: with OVS's flow cache and without it (a record
per sampled packet), for a ClusterIP translated by OVN's load balancer on the client's node
(by OpenFlow address rewrites, and through conntrack as ovn-controller programs it:
ct(commit,nat(dst=backend:port)), the reply's ct(nat), a pod reaching its own Service with its
source NATed to the hairpin masquerade address), and for a pod IP reused by a new pod. A capture of what reached the collector's address tells
the exporters' own gaps (the userspace datapath sometimes leaves a conversation out) from the
collector's: the traffic is made again when the exporters did not send a record.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import wait_for

from tests.support import netns as N
from tests.support import ovs as O
from tests.support.fake_kube import FakeKube, node, pod, replicaset, running_fake_kube, service
from tests.support.owners import run_dir

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOLS = ("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool", "ethtool", "tcpdump", "sysctl")
ROOT = Path(__file__).resolve().parents[1]
ROUTER_MAC = "0a:58:a9:fe:00:01"  # the OVN cluster router's port MAC every pod's gateway resolves to
MP0 = "ovn-k8s-mp0"
COLLECTOR_PORT = 2055
WARMUP_PORT = 5998


@dataclass
class K8sPod:
    name: str
    namespace: str
    ip: str
    owner: tuple[str, str]            # ownerReferences[0] (kind, name)
    shown_owner: tuple[str, str]      # what OwnerType/OwnerName must say (a ReplicaSet's Deployment)
    node: str
    netns: N.NetNS | None = None
    host_if: str = ""


@dataclass
class Node:
    name: str
    addr: str                      # underlay address on br-ex: InternalIP, and the IPFIX source
    subnet: str                    # pod subnet (k8s.ovn.org/node-subnets)
    zone: str
    mac: str
    ns: N.NetNS | None = None
    ovs: O.OVS | None = None
    pods: list[K8sPod] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.subnet.rsplit(".", 1)[0]

    @property
    def mgmt(self) -> str:
        return f"{self.prefix}.2"

    @property
    def mgmt_mac(self) -> str:
        return O.ovn_mac(self.mgmt)


NODES = (Node("node-a", "172.18.0.11", "10.244.0.0/24", "zone-a", "02:00:ac:12:00:0b"),
         Node("node-b", "172.18.0.12", "10.244.1.0/24", "zone-b", "02:00:ac:12:00:0c"))
NODE_A, NODE_B = NODES
PODS = (
    K8sPod("web-7d9f8c6b5-x2x4q", "shop", "10.244.0.10", ("ReplicaSet", "web-7d9f8c6b5"),
           ("Deployment", "web"), "node-a"),
    K8sPod("prometheus-k8s-0", "openshift-monitoring", "10.244.0.11", ("StatefulSet", "prometheus-k8s"),
           ("StatefulSet", "prometheus-k8s"), "node-a"),
    K8sPod("api-5c6d7f8b9-qq7lm", "shop", "10.244.1.10", ("ReplicaSet", "api-5c6d7f8b9"),
           ("Deployment", "api"), "node-b"),
)
WEB, PROM, API = PODS
# A host-network DaemonSet pod on node-b: its podIP is the node's address (DESIGN.md: it resolves to its Node).
HOSTNET = ("node-exporter-8kq2p", "monitoring", NODE_B)
SERVICE = ("web", "shop", "172.30.0.10")
SERVICE_PORT = 6010   # the port the Service's client sends to on its node (web's), and its reply's source


def node_identity(n: Node) -> dict:
    return {"Name": n.name, "Type": "Node", "OwnerName": n.name, "OwnerType": "Node", "HostIP": n.addr,
            "HostName": n.name, "Zone": n.zone}


def pod_identity(p: K8sPod) -> dict:
    n = next(x for x in NODES if x.name == p.node)
    return {"Name": p.name, "Namespace": p.namespace, "Type": "Pod", "OwnerName": p.shown_owner[1],
            "OwnerType": p.shown_owner[0], "HostIP": n.addr, "HostName": n.name, "Zone": n.zone}


# address -> (identity, node name), from the topology (DESIGN.md: pod IPs, node addresses and
# management ports, lookup order Pod, Node, Service).
IDENTITY = {p.ip: (pod_identity(p), p.node) for p in PODS}
for _n in NODES:
    IDENTITY[_n.addr] = (node_identity(_n), _n.name)
    IDENTITY[_n.mgmt] = (node_identity(_n), _n.name)
IDENTITY[SERVICE[2]] = ({"Name": SERVICE[0], "Namespace": SERVICE[1], "Type": "Service",
                         "OwnerName": SERVICE[0], "OwnerType": "Service"}, None)
K8S_KEYS = ("Name", "Namespace", "Type", "OwnerName", "OwnerType", "HostIP", "HostName", "Zone")
INFRA_PREFIXES = ("openshift", "kube-")


def api_objects() -> list[tuple[str, dict]]:
    objs: list[tuple[str, dict]] = []
    for n in NODES:
        subnets = {"default": n.subnet} if n is NODE_A else {"default": [n.subnet]}
        objs.append(("nodes", node(n.name, internal=[n.addr], zone=n.zone, subnets=subnets)))
    for p in PODS:
        if p.owner[0] == "ReplicaSet":
            objs.append(("replicasets", replicaset(p.owner[1], p.namespace, owner=p.shown_owner)))
        n = next(x for x in NODES if x.name == p.node)
        objs.append(("pods", pod(p.name, p.namespace, ips=[p.ip], node=p.node, host_ip=n.addr, owner=p.owner)))
    name, ns, n = HOSTNET
    objs.append(("pods", pod(name, ns, ips=[n.addr], node=n.name, host_ip=n.addr, host_network=True,
                             owner=("DaemonSet", "node-exporter"))))
    objs.append(("services", service(SERVICE[0], SERVICE[1], ips=[SERVICE[2]])))
    return objs


# ---- the fake API server inside node-a's namespace ------------------------------------------
def start_fake_kube_in(ns: N.NetNS, stack: ExitStack) -> FakeKube:
    """running_fake_kube, entered on `stack` (whose close stops it, and fails if a request
    handler raised), with its listening socket made in `ns` (a socket stays in the namespace it
    was created in): started on a thread in the namespace (netns.in_netns)."""
    out: dict = {}

    def start() -> None:
        out["fake"] = stack.enter_context(running_fake_kube())

    N.in_netns(ns, start)
    return out["fake"]


# ---- building the nodes ----------------------------------------------------------------------
def ns_sysctl(ns: N.NetNS, *settings: str) -> None:
    for s in settings:
        ns.run(["sysctl", "-qw", s])


def add_pod(n: Node, p: K8sPod, ofport: int) -> None:
    """A pod namespace on n's br-int, its eth0 with p.ip in the node subnet (on-link: static
    neighbours for the node's other pods and its management port, as OVN answers ARP itself) and
    a default route through the OVN router's address, subnet base + 1."""
    assert n.ovs is not None and n.ns is not None
    pns = N.NetNS(N.unique("fsc"))
    ns_sysctl(pns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    host_if = N.unique("vc")[:15]
    n.ns.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pns.name])
    pns.run(["ip", "link", "set", "eth0", "address", O.ovn_mac(p.ip)])
    pns.run(["ip", "addr", "add", f"{p.ip}/24", "dev", "eth0"])
    pns.run(["ip", "link", "set", "eth0", "mtu", "1400"])
    pns.run(["ip", "link", "set", "eth0", "up"])
    pns.run(["ip", "route", "add", "default", "via", f"{n.prefix}.1"])
    for ip, mac in [(f"{n.prefix}.1", ROUTER_MAC), (n.mgmt, n.mgmt_mac),
                    *((q.ip, O.ovn_mac(q.ip)) for q in PODS if q.node == n.name and q is not p)]:
        pns.run(["ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent"])
    n.ns.run(["ip", "link", "set", host_if, "up"])
    n.ns.run(["ip", "neigh", "replace", p.ip, "lladdr", O.ovn_mac(p.ip), "dev", MP0, "nud", "permanent"])
    pns.run(["ethtool", "-K", "eth0", "tx", "off"])
    n.ns.run(["ethtool", "-K", host_if, "tx", "off"])
    n.ovs.vsctl("add-port", "br-int", host_if, "--", "set", "interface", host_if, f"ofport_request={ofport}")
    p.netns, p.host_if = pns, host_if
    n.ovs.pods.append(O.Pod(pns.name, pns, host_if, ofport, p.ip, "", O.ovn_mac(p.ip)))  # closed by ovs.stop()


def add_mgmt_port(n: Node) -> None:
    """ovn-k8s-mp0: an internal port of br-int in the node's own stack, subnet base + 2; routes
    to the cluster's pod subnets through the OVN router (base + 1)."""
    assert n.ovs is not None and n.ns is not None
    n.ovs.vsctl("add-port", "br-int", MP0, "--", "set", "interface", MP0, "type=internal", "ofport_request=2")
    n.ns.run(["ip", "link", "set", MP0, "address", n.mgmt_mac])
    n.ns.run(["ip", "addr", "add", f"{n.mgmt}/24", "dev", MP0])
    n.ns.run(["ip", "link", "set", MP0, "mtu", "1400"])
    n.ns.run(["ip", "link", "set", MP0, "up"])
    n.ns.run(["ip", "neigh", "replace", f"{n.prefix}.1", "lladdr", ROUTER_MAC, "dev", MP0, "nud", "permanent"])
    n.ns.run(["ip", "route", "add", "10.244.0.0/16", "via", f"{n.prefix}.1", "dev", MP0])


def routing_flows(n: Node, peer: Node, ports: dict[str, int], table: int = 0) -> list[str]:
    """OVN's logical switch and router in OpenFlow: local pods and the management port by
    address, the peer's subnet and the peer node's address into the tunnel, the node's own
    address arriving from the tunnel (a remote pod to a host-network pod) to the management port."""
    t = f"table={table}," if table else ""
    local = [f"{t}priority=100,ip,nw_dst={q.ip},actions=mod_dl_dst:{O.ovn_mac(q.ip)},output:{ports[q.name]}"
             for q in PODS if q.node == n.name]
    return [
        *local,
        f"{t}priority=100,ip,nw_dst={n.mgmt},actions=mod_dl_dst:{n.mgmt_mac},output:{ports[MP0]}",
        f"{t}priority=100,ip,nw_dst={n.addr},actions=mod_dl_dst:{n.mgmt_mac},output:{ports[MP0]}",
        f"{t}priority=90,ip,nw_dst={peer.subnet},actions=mod_dl_src:{ROUTER_MAC},output:{ports['geneve']}",
        f"{t}priority=90,ip,nw_dst={peer.addr},actions=mod_dl_src:{ROUTER_MAC},output:{ports['geneve']}",
        f"{t}priority=0,actions=drop",
    ]


def br_int_flows(n: Node, peer: Node, ports: dict[str, int]) -> list[str]:
    """routing_flows, and a ClusterIP translated by OpenFlow address rewrites (mod_nw_dst, and
    mod_nw_src on the reply) in the one table."""
    # OVN's load balancer on the pod's switch: a ClusterIP is translated to a backend before
    # forwarding (here the one backend, on node-a)
    backend = f"mod_nw_dst:{PROM.ip},mod_dl_dst:{O.ovn_mac(PROM.ip)}," + (
        f"output:{ports[PROM.name]}" if n.name == PROM.node else f"mod_dl_src:{ROUTER_MAC},output:{ports['geneve']}")
    # and a reply from the backend gets the ClusterIP back as its source (conntrack's un-DNAT)
    undnat = [f"priority=120,udp,nw_src={PROM.ip},tp_src={SERVICE_PORT},nw_dst={q.ip},"
              f"actions=mod_nw_src:{SERVICE[2]},mod_dl_dst:{O.ovn_mac(q.ip)},output:{ports[q.name]}"
              for q in PODS if q.node == n.name and q is not PROM]
    return [*undnat, f"priority=110,ip,nw_dst={SERVICE[2]},actions={backend}", *routing_flows(n, peer, ports)]


# The conntrack variant (OVN's ct_lb_mark): the Service's port and its backend's targetPort.
CT_SERVICE_PORT = 6080
CT_TARGET_PORT = SERVICE_PORT
CT_ZONE = 9


def set_tables(n: Node, flows: list[str]) -> None:
    """br-int's flows replaced by `flows`, in several tables (ovs-ofctl replace-flows refuses
    table ids over OpenFlow 1.0 here; OpenFlow 1.3 takes them)."""
    assert n.ovs is not None
    path = n.ovs.dir / "br-int.flows"
    path.write_text("\n".join(flows) + "\n")
    n.ovs.ofctl("-O", "OpenFlow13", "replace-flows", "br-int", str(path))


def node_ports(n: Node) -> dict[str, int]:
    """OpenFlow port numbers on n's br-int (the fixture's ofport_request)."""
    return {MP0: 2, "geneve": 100, **{p.name: 10 + i for i, p in enumerate(n.pods)}}


HAIRPIN_MASQ = "169.254.169.5"   # OVN-Kubernetes' hairpin masquerade address (its LBs' hairpin_snat_ip)
CT_SNAT_ZONE = 10


def ct_br_int_flows(n: Node, peer: Node) -> list[str]:
    """OVN's load balancer as ovn-controller programs it, through conntrack: every IP packet
    goes through ct(nat) first (OVN's pre-LB stage: a reply of a translated connection gets the
    ClusterIP and port back, un-DNAT), a new connection to the ClusterIP's port is committed
    with its destination translated to the backend (ct_lb_mark: ct(commit,nat(dst=IP:PORT))),
    and the packet, recirculated with its new addresses, is routed by routing_flows. Bridge
    IPFIX samples a packet on input in the first pass and on output in the last.

    A backend reaching its own Service (hairpin) is source-NATed too, to HAIRPIN_MASQ in a zone
    of its own (OVN's hairpin_snat_ip, which OVN-Kubernetes sets on every load balancer), and
    sent back out of the port it came in by (OpenFlow's in_port); that zone is looked up first,
    so that the reply gets its destination back, then its source (a request's later packets get
    their destination from the first lookup's zone, then their source)."""
    ports = node_ports(n)
    z, sz = f"zone={CT_ZONE}", f"zone={CT_SNAT_ZONE}"
    hairpin = [f"table=2,priority=110,in_port={ports[q.name]},ip,nw_dst={q.ip},"
               f"actions=mod_dl_dst:{O.ovn_mac(q.ip)},in_port" for q in PODS if q.node == n.name]
    return [
        f"table=0,priority=100,ip,actions=ct(table=4,{sz},nat)",
        "table=0,priority=0,actions=drop",
        f"table=4,priority=100,ip,actions=ct(table=1,{z},nat)",
        f"table=1,priority=125,ct_state=+new+trk,udp,nw_src={PROM.ip},nw_dst={SERVICE[2]},"
        f"tp_dst={CT_SERVICE_PORT},actions=ct(commit,table=3,{z},nat(dst={PROM.ip}:{CT_TARGET_PORT}))",
        f"table=1,priority=120,ct_state=+new+trk,udp,nw_dst={SERVICE[2]},tp_dst={CT_SERVICE_PORT},"
        f"actions=ct(commit,table=2,{z},nat(dst={PROM.ip}:{CT_TARGET_PORT}))",
        # the hairpin's later packets, DNATed by the lookup above: their SNAT in its zone
        f"table=1,priority=124,ct_state=+trk,udp,nw_src={PROM.ip},nw_dst={PROM.ip},tp_dst={CT_TARGET_PORT},"
        f"actions=ct(table=2,{sz},nat)",
        "table=1,priority=100,ip,actions=resubmit(,2)",
        f"table=3,priority=100,ip,actions=ct(commit,table=2,{sz},nat(src={HAIRPIN_MASQ}))",
        *hairpin,
        *routing_flows(n, peer, ports, table=2),
    ]


@dataclass
class Cluster:
    nodes: tuple[Node, Node]
    dir: Path
    fake: FakeKube
    kubeconfig: Path


@pytest.fixture(scope="module")
def cluster():
    reason = N.root_skip_reason(*TOOLS)
    if reason:
        pytest.skip(reason)
    with run_dir("fs-cluster-") as d:
        started: list[Node] = []
        kube = ExitStack()   # the fake API server's: closed first, failing the module if a handler raised
        try:
            for n in NODES:
                n.pods = [p for p in PODS if p.node == n.name]
                n.ns = N.NetNS()
                # arp_ignore 1: the node's address is answered for on br-ex only, not by the kernel's
                # side of the uplink veth too (its MAC, once OVS snoops that reply, replaces the static
                # tunnel neighbour, and the peer's Geneve packets then reach the kernel, not tnl_pop)
                ns_sysctl(n.ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                          "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.default.arp_ignore=1")
                (d / n.name).mkdir()
                n.ovs = O.OVS(n.ns, d / n.name)
                started.append(n)
                n.ovs.start()
            uplinks = N.veth_between(NODE_A.ns, NODE_B.ns)  # type: ignore[arg-type]
            for n, uplink in zip(NODES, uplinks, strict=True):
                assert n.ovs is not None
                n.ovs.add_underlay("br-ex", uplink, [f"{n.addr}/24"], hwaddr=n.mac)
                n.ovs.add_bridge("br-int")
                add_mgmt_port(n)
                for i, p in enumerate(n.pods):
                    add_pod(n, p, 10 + i)
            for n, peer in ((NODE_A, NODE_B), (NODE_B, NODE_A)):
                assert n.ovs is not None
                n.ovs.add_tunnel("br-int", "ovn-" + peer.name, "geneve", remote_ip=peer.addr, key=5001, ofport=100)
                n.ovs.tnl_neigh_set("br-ex", peer.addr, peer.mac)
                n.ovs.set_flows("br-int", br_int_flows(n, peer, node_ports(n)))
            fake = start_fake_kube_in(NODE_A.ns, kube)  # type: ignore[arg-type]
            for kind, obj in api_objects():
                fake.add(kind, obj)
            kc = fake.write_kubeconfig(d / "kubeconfig")
            c = Cluster(NODES, d, fake, kc)
            check_paths(c)
            yield c
        finally:
            try:
                kube.close()
            finally:
                for n in started:
                    if n.ovs is not None:
                        n.ovs.stop()
                    if n.ns is not None:
                        n.ns.close()


# ---- traffic ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sent:
    src: str
    dst: str
    sport: int
    dport: int
    count: int
    size: int                   # UDP payload bytes
    backend: str | None = None  # a ClusterIP's backend, where OVN's load balancer sends it
    shown_src: str | None = None  # a reply's source as it leaves: the ClusterIP (un-DNAT)
    backend_port: int | None = None  # the backend's port when the load balancer changes it (targetPort)
    shown_sport: int | None = None   # a reply's source port as it leaves: the Service's port (un-DNAT)

    @property
    def ip_len(self) -> int:
        return 20 + 8 + self.size

    @property
    def to(self) -> str:
        return self.backend or self.dst

    @property
    def to_port(self) -> int:
        return self.backend_port or self.dport

    @property
    def out_sport(self) -> int:
        return self.shown_sport or self.sport


def receiver_ns(dst: str) -> N.NetNS:
    for p in PODS:
        if p.ip == dst:
            assert p.netns is not None
            return p.netns
    n = next(n for n in NODES if dst in (n.addr, n.mgmt))
    assert n.ns is not None
    return n.ns


def sender_ns(src: K8sPod | Node) -> N.NetNS:
    ns = src.netns if isinstance(src, K8sPod) else src.ns
    assert ns is not None
    return ns


def source_addr(src: K8sPod | Node) -> str:
    """A pod's address; a node's own stack reaches pods through ovn-k8s-mp0, from its address."""
    return src.ip if isinstance(src, K8sPod) else src.mgmt


def udp(src: K8sPod | Node, dst: str, dport: int, count: int, size: int, sport: int,
        delivered_to: str | None = None, delivered_port: int | None = None) -> int:
    """`count` datagrams from `src` to dst:dport; returns how many a socket on `delivered_to`
    (a Service's backend; else dst), port `delivered_port` (its targetPort; else dport), received."""
    to = delivered_to or dst
    rx = receiver_ns(to).popen([sys.executable, "-c", O.TRAFFIC, "udp-recv", to, str(delivered_port or dport),
                                str(count), "1.0"])
    assert rx.stdout is not None
    assert b"ready" in rx.stdout.readline()
    sender_ns(src).run([sys.executable, "-c", O.TRAFFIC, "udp-send", dst, str(dport), str(count), str(size),
                        str(sport)])
    out, _ = rx.communicate(timeout=15)
    return int(out.split()[-1])


def check_paths(c: Cluster) -> None:
    """Each path the test uses carries a datagram (the userspace datapath learns routes from the
    kernel asynchronously: retried for a few seconds)."""
    for dst in (PROM.ip, API.ip, NODE_B.addr, NODE_A.mgmt):
        for _ in range(20):
            if udp(WEB, dst, 5999, 1, 8, 41999) == 1:
                break
        else:
            raise RuntimeError(f"nothing from {WEB.ip} reached {dst} "
                               f"({NODE_A.ovs.appctl('ovs/route/show') if NODE_A.ovs else ''})")


TRAFFIC = [  # (source pod or node, destination address, what it is)
    (WEB, PROM.ip, "pod to pod, one node"),
    (WEB, API.ip, "pod to pod, across nodes"),
    (PROM, API.ip, "StatefulSet pod to pod, across nodes"),
    (API, WEB.ip, "pod to pod, across nodes the other way"),
    (WEB, NODE_B.addr, "pod to a host-network pod on the other node"),
    (WEB, NODE_A.mgmt, "pod to its node's management port"),
    (API, NODE_B.mgmt, "pod to its node's management port, node-b"),
    (NODE_B, WEB.ip, "a node's own stack (kubelet probing) to a pod on the other node"),
    (NODE_A, PROM.ip, "a node's own stack to a pod on it"),
    (WEB, NODE_A.addr, "pod to its own node's address"),
]


SERVICE_TRAFFIC = [(WEB, "a pod to a ClusterIP whose backend is on its node"),
                   (API, "a pod to a ClusterIP whose backend is on the other node")]


def make_traffic(base: int, *, services: bool, ct: bool = False) -> list[Sent]:
    """TRAFFIC, and with `services` SERVICE_TRAFFIC and the backend's reply to web; with `ct`
    the ClusterIP is ct_br_int_flows' (its port CT_SERVICE_PORT, translated to the backend's
    CT_TARGET_PORT) and the backend answers both clients."""
    sent = []
    for i, (src, dst, what) in enumerate(TRAFFIC):
        s = Sent(source_addr(src), dst, base + i, 6000 + i, 5, 100 + 10 * i)
        got = udp(src, dst, s.dport, s.count, s.size, s.sport)
        assert got == s.count, f"{what}: {got}/{s.count} datagrams arrived"
        sent.append(s)
    for i, (src, what) in enumerate(SERVICE_TRAFFIC if services else (), len(TRAFFIC)):
        if ct:
            s = Sent(source_addr(src), SERVICE[2], base + i, CT_SERVICE_PORT, 5, 100 + 10 * i, backend=PROM.ip,
                     backend_port=CT_TARGET_PORT)
        else:
            s = Sent(source_addr(src), SERVICE[2], base + i, 6000 + i, 5, 100 + 10 * i, backend=PROM.ip)
        got = udp(src, s.dst, s.dport, s.count, s.size, s.sport, delivered_to=s.backend, delivered_port=s.to_port)
        assert got == s.count, f"{what}: {got}/{s.count} datagrams arrived"
        sent.append(s)
    # the backend answers: its source is the ClusterIP (and the Service's port) again as it
    # reaches the client
    for req in [x for x in sent if x.backend and (ct or x.src == WEB.ip)]:
        assert req.to_port == SERVICE_PORT
        s = Sent(PROM.ip, req.src, SERVICE_PORT, req.sport, 5, 300 + 10 * len(sent), shown_src=SERVICE[2],
                 shown_sport=req.dport if ct else None)
        got = udp(PROM, s.dst, s.dport, s.count, s.size, s.sport)
        assert got == s.count, f"the backend's reply to {req.src}: {got}/{s.count} datagrams arrived"
        sent.append(s)
    return sent


# ---- the collector ---------------------------------------------------------------------------
READY = "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)"
GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def collector_stat(stat: str) -> float:
    """A flowscope_enrich_stat of the collector start_collector runs (it listens in node-a's
    namespace); 0 while the stat is not there yet."""
    from collector.metrics import parse_exposition, total

    assert NODE_A.ns is not None
    r = NODE_A.ns.run([sys.executable, "-c", GET, "http://127.0.0.1:9400/metrics"])
    return total(parse_exposition(r.stdout.decode()), "flowscope_enrich_stat", stat=stat)


def flows_so_far(path: Path) -> list[dict]:
    """read_flows while the collector writes: a line not finished yet, or no file yet, is left out."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n") and line.strip()]


def wait_until(cond, timeout: float) -> None:
    """Poll `cond` until it holds or `timeout` seconds passed, without failing: the assertions
    after it say what is missing."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.2)


def start_collector(c: Cluster, out: Path, *extra: str):
    assert NODE_A.ns is not None
    log = open(c.dir / f"collector-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - closed by stop
    p = NODE_A.ns.popen([sys.executable, "-m", "collector.cli", "run", "--kubeconfig", str(c.kubeconfig),
                         "--listen", f"netflow://0.0.0.0:{COLLECTOR_PORT}", "--output-file", str(out),
                         "--metrics-addr", "127.0.0.1:9400", "--sampling", "172.18.0.0/24=1",
                         "--stats-interval", "0.2", *extra], cwd=ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"collector exited {p.returncode}: {Path(log.name).read_text()}")
        r = NODE_A.ns.run([sys.executable, "-c", READY, "http://127.0.0.1:9400/readyz"], check=False)
        if r.returncode == 0:
            return p, log
        time.sleep(0.3)
    raise RuntimeError(f"collector not ready: {Path(log.name).read_text()}")


def stop_collector(c: Cluster, proc, log) -> None:
    """The end of a start_collector run: the nodes stop exporting, the collector gets SIGTERM,
    its log is closed."""
    for n in c.nodes:
        if n.ovs is not None:
            n.ovs.clear_exports("br-int")
    assert NODE_A.ns is not None
    NODE_A.ns.stop(proc, signal.SIGTERM, timeout=15)
    log.close()


def configure_ipfix(c: Cluster, *, cache: bool = True) -> None:
    """What OVN-Kubernetes sets on br-int (ovs-vsctl create ipfix targets=... sampling=...
    cache_active_timeout=... cache_max_flows=...): the collector's address, from each node's own
    address. Sampling 1 (OVN-Kubernetes' default is 400) so every datagram is reported. Without
    `cache`, the IPFIX row has no cache settings, as ovnkube-node writes it when none is given
    (OpenShift's exportNetworkFlows has none): OVS exports a record per sampled packet."""
    for n in c.nodes:
        assert n.ovs is not None
        if cache:
            n.ovs.set_ipfix("br-int", f"{NODE_A.addr}:{COLLECTOR_PORT}", sampling=1, cache_active_timeout=2,
                            cache_max_flows=100)
        else:
            n.ovs.vsctl("--", "--id=@ipfix", "create", "ipfix", f'targets="{NODE_A.addr}:{COLLECTOR_PORT}"',
                        "sampling=1", "--", "set", "bridge", "br-int", "ipfix=@ipfix")
        n.ovs.appctl("revalidator/purge")
    time.sleep(1.0)
    for problem in O.ipfix_live([(n.ovs, "br-int") for n in c.nodes if n.ovs is not None],
                                lambda: udp(WEB, API.ip, WARMUP_PORT, 1, 8, 41998)):
        print(problem)


def read_flows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def node_of(addr: str) -> str | None:
    return IDENTITY.get(addr, ({}, None))[1]


def expected_direction(agent: str, src: str, dst: str) -> int | None:
    """DESIGN.md: AgentIP against the Src/Dst host IPs."""
    agent_node = next(n.name for n in NODES if n.addr == agent)
    s, d = node_of(src), node_of(dst)
    if s is not None and d is not None and s == d:
        return 2 if agent_node == s else None
    if agent_node == s:
        return 1
    if agent_node == d:
        return 0
    return None


def expected_layer(src: str, dst: str) -> str:
    """Default rule (any-infra): infra when either side's namespace is an infrastructure one."""
    for a in (src, dst):
        ns = IDENTITY.get(a, ({}, None))[0].get("Namespace", "")
        if ns.startswith(INFRA_PREFIXES):
            return "infra"
    return "app"


def identity_problems(f: dict) -> list[str]:
    problems = []
    where = f"{f.get('AgentIP')} {f.get('SrcAddr')}->{f.get('DstAddr')} {f.get('DstPort')} dir {f.get('IfDirections')}"
    for side, addr in (("Src", f.get("SrcAddr")), ("Dst", f.get("DstAddr"))):
        want = IDENTITY.get(addr, ({}, None))[0]
        got = {k: f[f"{side}K8S_{k}"] for k in K8S_KEYS if f"{side}K8S_{k}" in f}
        if got != want:
            problems.append(f"{where}: {side}K8S_* {got}, expected {want}")
    want_dir = expected_direction(f["AgentIP"], f.get("SrcAddr"), f.get("DstAddr"))
    if f.get("FlowDirection") != want_dir:
        problems.append(f"{where}: FlowDirection {f.get('FlowDirection')}, expected {want_dir}")
    if f.get("K8S_FlowLayer") != expected_layer(f.get("SrcAddr"), f.get("DstAddr")):
        problems.append(f"{where}: K8S_FlowLayer {f.get('K8S_FlowLayer')}, "
                        f"expected {expected_layer(f.get('SrcAddr'), f.get('DstAddr'))}")
    return problems


def tunnel_port(n: Node) -> str:
    """n's Geneve port to its peer (IPFIX interfaceName is the OVS port's name)."""
    return "ovn-" + next(x for x in NODES if x is not n).name


def port_of(n: Node, addr: str) -> str:
    p = next((q for q in n.pods if q.ip == addr), None)
    if p is not None:
        return p.host_if
    if addr in (n.mgmt, n.addr):
        return MP0
    return tunnel_port(n)


def expected_records(s: Sent) -> list[tuple[str, tuple[str, ...], str, int, str, int]]:
    """(exporter, Interfaces, SrcAddr, SrcPort, DstAddr, DstPort) of each record OVS's bridge
    IPFIX makes for the datagrams of s: the source node samples them at the sender's port on
    input (the userspace datapath has no output sample before its native tnl_push,
    tests/test_ovs.py) and, when the port they go to is on the same node, on output; the other
    node samples them on input from the tunnel and on output to their port. An output sample
    shows the packet as it leaves: to a ClusterIP's backend (and its targetPort), or from the
    ClusterIP and its port (a reply, un-DNATed on the client's node)."""
    src_node = next(n for n in NODES if n.name == node_of(s.src))
    dst_node = next(n for n in NODES if n.name == node_of(s.to))
    in_if = port_of(src_node, s.src)
    out_src = s.shown_src or s.src
    if src_node is dst_node:
        return [(src_node.addr, (in_if,), s.src, s.sport, s.dst, s.dport),
                (src_node.addr, (in_if, port_of(src_node, s.to)), out_src, s.out_sport, s.to, s.to_port)]
    tun = tunnel_port(dst_node)
    return [(src_node.addr, (in_if,), s.src, s.sport, s.dst, s.dport),
            (dst_node.addr, (tun,), s.src, s.sport, s.to, s.to_port),
            (dst_node.addr, (tun, port_of(dst_node, s.to)), out_src, s.out_sport, s.to, s.to_port)]


def records_of(s: Sent, flows: list[dict]) -> list[dict]:
    return [f for f in flows if f.get("Proto") == 17 and f.get("SrcPort") in (s.sport, s.out_sport)
            and f.get("DstPort") in (s.dport, s.to_port)
            and f.get("SrcAddr") in (s.src, s.shown_src) and f.get("DstAddr") in (s.dst, s.to)]


def record_key(f: dict) -> tuple[str, tuple[str, ...], str, int, str, int]:
    return (f["AgentIP"], tuple(f.get("Interfaces") or ()), f.get("SrcAddr", ""), f.get("SrcPort", 0),
            f.get("DstAddr", ""), f.get("DstPort", 0))


def capture_flows(cap: Path, dec) -> list[dict]:
    """What the exporters sent, as `dec` reads the capture (no enrichment; it keeps the templates
    of the captures before: without a flow cache OVS sends them when configured only)."""
    from collector.pcap import iter_udp

    return [f for d in iter_udp(cap) if d.dport == COLLECTOR_PORT
            for f in dec.decode(d.payload, d.src, d.sport, d.ts).to_dicts()]


def sampled_flows(flows: list[str]) -> list[str]:
    """OVN's per-flow sampling (a Flow_Sample_Collector_Set and OpenFlow sample() actions, as its
    ACL sampling programs them) in place of bridge IPFIX: every IP packet sampled as it enters
    br-int, before conntrack (`ingress`), and as it is output after it (`egress`)."""
    act = "sample(probability=65535,collector_set_id=7,obs_domain_id=3,obs_point_id={},{})"
    out = []
    for f in flows:
        if f.startswith("table=0,priority=100,ip,"):
            f = f.replace("actions=", "actions=" + act.format(1, "ingress") + ",")
        elif f.startswith("table=2,") and ("output:" in f or f.endswith("in_port")):
            f = f.replace("actions=", "actions=" + act.format(2, "egress") + ",")
        out.append(f)
    return out


def configure_flow_sampling(c: Cluster) -> None:
    """The collector set sample() actions name, with an IPFIX target (cache timeout 2 s, as the
    bridge test's) on each node; a datagram crossing both nodes before the traffic."""
    for n in c.nodes:
        assert n.ovs is not None
        n.ovs.vsctl("--", "--id=@br", "get", "bridge", "br-int", "--", "--id=@i", "create", "ipfix",
                    f'targets="{NODE_A.addr}:{COLLECTOR_PORT}"', "cache_active_timeout=2", "cache_max_flows=100",
                    "--", "create", "Flow_Sample_Collector_Set", "id=7", "bridge=@br", "ipfix=@i")
        n.ovs.appctl("revalidator/purge")
    time.sleep(1.0)
    udp(WEB, API.ip, WARMUP_PORT, 1, 8, 41998)


def expected_flow_sample_records(s: Sent) -> list[tuple[str, tuple[str, ...], str, int, str, int]]:
    """expected_records with sampled_flows' sample() actions: every node the packet crosses
    samples it on input and, after conntrack, on output (the tunnel port's output too, unlike
    bridge IPFIX); an egress record names no output port (the action has no sampling_port)."""
    src_node = next(n for n in NODES if n.name == node_of(s.src))
    dst_node = next(n for n in NODES if n.name == node_of(s.to))
    in_if = port_of(src_node, s.src)
    out_src = s.shown_src or s.src
    if src_node is dst_node:
        return [(src_node.addr, (in_if,), s.src, s.sport, s.dst, s.dport),
                (src_node.addr, (in_if, ""), out_src, s.out_sport, s.to, s.to_port)]
    tun = tunnel_port(dst_node)
    return [(src_node.addr, (in_if,), s.src, s.sport, s.dst, s.dport),
            (src_node.addr, (in_if, ""), s.src, s.sport, s.to, s.to_port),
            (dst_node.addr, (tun,), s.src, s.sport, s.to, s.to_port),
            (dst_node.addr, (tun, ""), out_src, s.out_sport, s.to, s.to_port)]


def run_cluster(c: Cluster, *, services: bool, extra: tuple[str, ...] = (),
                cache: bool = True, ct: bool = False, flow_sample: bool = False) -> tuple[list[dict], list[Sent]]:
    """The collector in node-a's namespace, IPFIX configured on both nodes, the traffic made;
    made again (fresh ports, up to three times) when the exporters themselves left one of its
    records out (the userspace datapath sometimes does on a loaded machine, tests/test_ovs.py),
    as a capture of what reached the collector's address shows. With `ct` br-int has
    ct_br_int_flows (the fixture's are put back after), with `flow_sample` too, and the
    sample() actions of sampled_flows in place of bridge IPFIX. Returns the published flows and
    the traffic of the attempt kept."""
    out = c.dir / f"flows-{time.monotonic_ns()}.jsonl"
    if ct:
        for n, peer in ((NODE_A, NODE_B), (NODE_B, NODE_A)):
            assert n.ovs is not None
            n.ovs.appctl("dpctl/flush-conntrack")
            set_tables(n, sampled_flows(ct_br_int_flows(n, peer)) if flow_sample else ct_br_int_flows(n, peer))
    expected = expected_flow_sample_records if flow_sample else expected_records
    proc, log = start_collector(c, out, *extra)
    try:
        from decoders import Decoder, DecoderConfig

        dec = Decoder(DecoderConfig(default_sampling=0))
        assert NODE_A.ns is not None
        for attempt in range(3):
            cap = N.Capture(NODE_A.ns, c.dir / f"export-{time.monotonic_ns()}.pcap", iface="any",
                            bpf=f"udp dst port {COLLECTOR_PORT}")
            try:
                if attempt == 0:
                    if flow_sample:
                        configure_flow_sampling(c)
                    else:
                        configure_ipfix(c, cache=cache)
                sent = make_traffic(42000 + 100 * attempt, services=services, ct=ct)
                # cache_active_timeout 2 s (OVS exports within a second of it); without
                # a cache each sampled packet is sent at once
                time.sleep(3.5 if cache else 1.5)
            finally:
                cap.stop()
            exported = capture_flows(cap.path, dec)
            missing = [(s.sport, r) for s in sent for r in expected(s)
                       if r not in {record_key(f) for f in records_of(s, exported)}]
            if not missing:
                break
            print(f"attempt {attempt + 1}: the exporters did not send {missing}")
    finally:
        stop_collector(c, proc, log)
        if ct:
            for n, peer in ((NODE_A, NODE_B), (NODE_B, NODE_A)):
                assert n.ovs is not None
                if flow_sample:
                    n.ovs.vsctl("--all", "destroy", "Flow_Sample_Collector_Set")
                set_tables(n, br_int_flows(n, peer, node_ports(n)))
    flows = read_flows(out)
    assert flows, f"no flow published: {Path(log.name).read_text()}"
    return flows, sent


def check_flows(flows: list[dict], sent: list[Sent], *, per_packet: bool = False, dedup: bool = False,
                expected=expected_records) -> list[str]:
    """`per_packet`: OVS without a flow cache, a record for each sampled packet at each place.
    `dedup`: the collector drops the Duplicate records, so at each node the first of a packet's
    records (its input sample, which OVS exports first) is all that is published."""
    problems: list[str] = []
    # every flow (the warm-up's and path checks' too) enriched by the rules
    for f in flows:
        if "SrcAddr" not in f:
            problems.append(f"a flow without addresses: {f}")
            continue
        problems += identity_problems(f)
    # each conversation: its records at each exporter, once each, the counts exact at sampling
    # 1, and of the input and output samples of its packets at one exporter one not Duplicate
    for s in sent:
        mine = records_of(s, flows)
        per_record = (1, s.ip_len) if per_packet else (s.count, s.count * s.ip_len)
        records = expected(s)
        if dedup:
            records = [r for i, r in enumerate(records) if r[0] not in {q[0] for q in records[:i]}]
        want = Counter({r: s.count if per_packet else 1 for r in records})
        got = Counter(record_key(f) for f in mine)
        if got != want:
            problems.append(f"{s}: records (AgentIP, Interfaces, SrcAddr, SrcPort, DstAddr, DstPort) {sorted(got.items())}, "
                            f"expected {sorted(want.items())}")
        for f in mine:
            if (f.get("Packets"), f.get("Bytes")) != per_record:
                problems.append(f"{s} at {f['AgentIP']} {f.get('Interfaces')}: Packets {f.get('Packets')} "
                                f"Bytes {f.get('Bytes')}, expected {per_record} (sent {s.count} x {s.ip_len})")
        for agent in {f["AgentIP"] for f in mine}:
            at = [f for f in mine if f["AgentIP"] == agent]
            unmarked = [record_key(f) for f in at if not f.get("Duplicate")]
            if dedup and len(unmarked) != len(at):
                problems.append(f"{s} at {agent}: Duplicate records published with --dedup")
            if len(unmarked) != (s.count if per_packet else 1):
                problems.append(f"{s} at {agent}: {len(unmarked)} of its {len(at)} records not marked "
                                f"Duplicate: {unmarked}")
    return problems


def test_two_node_cluster_ipfix_enriched(cluster: Cluster) -> None:
    """Pod to pod on one node and across nodes (both ways, a StatefulSet's pod too), a pod to a
    host-network pod on the other node, to its node's management port and address, a node's own
    stack to pods: every published flow's identities, FlowDirection and K8S_FlowLayer follow
    DESIGN.md, and each packet's records are all there, once, one of each node's not Duplicate."""
    flows, sent = run_cluster(cluster, services=False)
    problems = check_flows(flows, sent)
    assert not problems, "\n".join(problems)


def test_a_clusterip_packets_input_and_output_samples_are_twins(cluster: Cluster) -> None:
    """OVN's load balancer translates a ClusterIP to a backend on the client's node, between the
    two samples OVS takes of each packet: the input sample shows the packet sent to the Service,
    the output sample the same packet leaving for the backend pod (and the backend's reply
    leaving with the ClusterIP as its source again). They are one packet's two reports
    (DESIGN.md: deduplicated or marked), published once unmarked per node, as for any other
    packet; the backend on the other node gets its own node's pair."""
    flows, sent = run_cluster(cluster, services=True)
    problems = check_flows(flows, sent)
    assert not problems, "\n".join(problems)


def test_a_pod_ip_reused_goes_to_the_pod_that_held_it_when_the_flow_started(cluster: Cluster) -> None:
    """DESIGN.md: a pod IP reused by a new pod is not attributed to the old one for flows that
    started after the old pod was deleted, and (tombstones) a flow of the old pod exported after
    its deletion is still the old pod's. web's pod is deleted just after it sent a datagram
    burst (OVS exports it at its active timeout, 2 s later: after the deletion); a new pod of
    the Deployment gets its address in a later second (creationTimestamp has whole seconds) and
    sends again."""
    c = cluster
    new = K8sPod("web-7d9f8c6b5-n3w9z", WEB.namespace, WEB.ip, WEB.owner, WEB.shown_owner, WEB.node)
    old_obj = pod(WEB.name, WEB.namespace, ips=[WEB.ip], node=WEB.node, host_ip=NODE_A.addr, owner=WEB.owner)
    new_obj = pod(new.name, new.namespace, ips=[new.ip], node=new.node, host_ip=NODE_A.addr, owner=new.owner)
    out = c.dir / f"flows-{time.monotonic_ns()}.jsonl"
    proc, log = start_collector(c, out)
    try:
        configure_ipfix(c)
        before = Sent(WEB.ip, API.ip, 43000, 6100, 5, 100)
        assert udp(WEB, API.ip, before.dport, before.count, before.size, before.sport) == before.count
        sent_at = time.time()
        c.fake.delete("pods", WEB.name, WEB.namespace)
        time.sleep(int(sent_at) + 1.2 - time.time())   # the new pod's creationTimestamp: a later second
        added = collector_stat("kinds_pods_events_ADDED")
        c.fake.add("pods", new_obj)
        # the watch brings it to the collector (the count goes up once the index has it)
        wait_for(lambda: collector_stat("kinds_pods_events_ADDED") > added, 30, what="the new pod's ADDED event applied")
        after = Sent(WEB.ip, API.ip, 43001, 6101, 5, 100)
        assert udp(WEB, API.ip, after.dport, after.count, after.size, after.sport) == after.count
        # OVS exports at its active timeout (2 s), then the collector writes them
        wait_until(lambda: all(Counter(record_key(f) for f in records_of(s, flows_so_far(out))) == Counter(
            expected_records(s)) for s in (before, after)), 30)
    finally:
        stop_collector(c, proc, log)
        if any(o["metadata"]["name"] == new.name for o in c.fake.objects["pods"].values()):
            c.fake.delete("pods", new.name, new.namespace)
        if not any(o["metadata"]["name"] == WEB.name for o in c.fake.objects["pods"].values()):
            c.fake.add("pods", old_obj)
    flows = read_flows(out)
    problems: list[str] = []
    for s, who in ((before, WEB), (after, new)):
        mine = records_of(s, flows)
        if Counter(record_key(f) for f in mine) != Counter(expected_records(s)):
            problems.append(f"{s}: records {sorted(record_key(f) for f in mine)}, expected {expected_records(s)}")
        for f in mine:
            got = {k: f[f"SrcK8S_{k}"] for k in K8S_KEYS if f"SrcK8S_{k}" in f}
            if got != pod_identity(who):
                problems.append(f"{s} at {f['AgentIP']} (start {f.get('TimeFlowStartMs')}): SrcK8S_* {got}, "
                                f"expected {pod_identity(who)}")
            problems += [p for p in identity_problems(f) if "SrcK8S_" not in p]
    assert not problems, "\n".join(problems)


def test_without_a_flow_cache_each_sampled_packet_counts_once(cluster: Cluster) -> None:
    """OVS's IPFIX without cache settings (ovnkube-node's row when none is given, OpenShift's
    exportNetworkFlows) sends a record for each sampled packet, its input and output samples
    apart: a burst's packets come 2 ms apart, all of one size, one 5-tuple. Each packet is
    counted once at each node (one of its records not Duplicate): none of the next packets is
    taken for a flooded copy of the first."""
    flows, sent = run_cluster(cluster, services=True, cache=False)
    problems = check_flows(flows, sent, per_packet=True)
    assert not problems, "\n".join(problems)


def test_dedup_publishes_each_packet_once_per_node(cluster: Cluster) -> None:
    """--dedup drops the Duplicate records (docs/collector.md): each packet (a ClusterIP's and its
    reply included) is published once by each node that saw it, as its input sample."""
    flows, sent = run_cluster(cluster, services=True, extra=("--dedup",))
    problems = check_flows(flows, sent, dedup=True)
    assert not problems, "\n".join(problems)


def test_a_clusterip_through_conntrack_nat(cluster: Cluster) -> None:
    """OVN's load balancer as ovn-controller programs it: conntrack (ct_br_int_flows), the
    ClusterIP's port translated to the backend's targetPort as well, the packet recirculated
    between OVS's input sample (the ClusterIP) and its output sample (the backend), and the
    backend's replies un-DNATed by ct(nat) (on the client's node: from the pod's port on
    node-a, from the tunnel on node-b). Each packet is counted once per node: its records
    there, one of them not Duplicate, with the Service on the pre-NAT side and the pod on the
    post-NAT side, and the exact counts of what was sent."""
    flows, sent = run_cluster(cluster, services=True, ct=True)
    problems = check_flows(flows, sent)
    assert not problems, "\n".join(problems)


def test_a_clusterip_through_conntrack_nat_without_a_flow_cache(cluster: Cluster) -> None:
    """The same through conntrack with OVS sending a record per sampled packet: each packet's
    input and output samples at a node, with different 5-tuples, are one packet (one record of
    the two not Duplicate), and none is taken for another packet's."""
    flows, sent = run_cluster(cluster, services=True, ct=True, cache=False)
    problems = check_flows(flows, sent, per_packet=True)
    assert not problems, "\n".join(problems)


def test_a_clusterip_through_conntrack_nat_with_dedup(cluster: Cluster) -> None:
    """--dedup with the conntrack load balancer: each packet published once per node, as its
    input sample (the Service's address before DNAT, the backend's before un-DNAT)."""
    flows, sent = run_cluster(cluster, services=True, ct=True, extra=("--dedup",))
    problems = check_flows(flows, sent, dedup=True)
    assert not problems, "\n".join(problems)


def test_a_backend_reaching_its_own_clusterip_hairpin(cluster: Cluster) -> None:
    """A pod whose Service sends it its own packet back (hairpin): OVN translates both ends
    between the two samples, the destination to the pod (DNAT) and the source to OVN-
    Kubernetes' hairpin masquerade address (SNAT), and the reply's both ends back; the packet
    leaves by the port it came in by. OVS's input record shows the pod to the ClusterIP (the
    reply: the pod to the masquerade address), its output record the masquerade address to the
    pod (the reply: the ClusterIP to the pod), 5-tuples with no end in common but the pod's
    source port. Each packet is counted once (one record of the two not Duplicate), with the
    counts sent, and every record enriched by the rules."""
    c = cluster
    out = c.dir / f"flows-{time.monotonic_ns()}.jsonl"
    for n, peer in ((NODE_A, NODE_B), (NODE_B, NODE_A)):
        assert n.ovs is not None
        n.ovs.appctl("dpctl/flush-conntrack")
        set_tables(n, ct_br_int_flows(n, peer))
    proc, log = start_collector(c, out)
    try:
        configure_ipfix(c)
        req = Sent(PROM.ip, SERVICE[2], 44500, CT_SERVICE_PORT, 5, 150, backend=PROM.ip, backend_port=CT_TARGET_PORT)
        got = udp(PROM, req.dst, req.dport, req.count, req.size, req.sport, delivered_to=PROM.ip,
                  delivered_port=CT_TARGET_PORT)
        assert got == req.count, f"the hairpin request: {got}/{req.count} datagrams arrived"
        rep = Sent(PROM.ip, HAIRPIN_MASQ, CT_TARGET_PORT, req.sport, 5, 250)
        got = udp(PROM, rep.dst, rep.dport, rep.count, rep.size, rep.sport, delivered_to=PROM.ip)
        assert got == rep.count, f"the hairpin reply: {got}/{rep.count} datagrams arrived"
        time.sleep(3.5)
    finally:
        stop_collector(c, proc, log)
        for n, peer in ((NODE_A, NODE_B), (NODE_B, NODE_A)):
            set_tables(n, br_int_flows(n, peer, node_ports(n)))
    flows = read_flows(out)
    pif = port_of(NODE_A, PROM.ip)
    p, svc = PROM.ip, SERVICE[2]
    want = {  # record -> (Packets, Bytes), at node-a: input and output sample of each packet
        (NODE_A.addr, (pif,), p, req.sport, svc, CT_SERVICE_PORT): (5, 5 * req.ip_len),
        (NODE_A.addr, (pif, pif), HAIRPIN_MASQ, req.sport, p, CT_TARGET_PORT): (5, 5 * req.ip_len),
        (NODE_A.addr, (pif,), p, CT_TARGET_PORT, HAIRPIN_MASQ, req.sport): (5, 5 * rep.ip_len),
        (NODE_A.addr, (pif, pif), svc, CT_SERVICE_PORT, p, req.sport): (5, 5 * rep.ip_len),
    }
    mine = [f for f in flows if f.get("Proto") == 17 and req.sport in (f.get("SrcPort"), f.get("DstPort"))]
    problems = [q for f in mine for q in identity_problems(f)]
    got_records = Counter(record_key(f) for f in mine)
    if got_records != Counter(want.keys()):
        problems.append(f"records {sorted(got_records.items())}, expected {sorted(want)}")
    for f in mine:
        if record_key(f) in want and (f.get("Packets"), f.get("Bytes")) != want[record_key(f)]:
            problems.append(f"{record_key(f)}: Packets {f.get('Packets')} Bytes {f.get('Bytes')}, "
                            f"expected {want[record_key(f)]}")
    for size in (req.ip_len, rep.ip_len):
        pair = [f for f in mine if f.get("Bytes") == 5 * size]
        unmarked = [record_key(f) for f in pair if not f.get("Duplicate")]
        if len(unmarked) != 1:
            problems.append(f"the {'request' if size == req.ip_len else 'reply'}'s {len(pair)} records, "
                            f"{len(unmarked)} not Duplicate: {unmarked}")
    assert not problems, "\n".join(problems)


def test_a_clusterip_through_conntrack_nat_with_flow_sampling(cluster: Cluster) -> None:
    """The conntrack load balancer with OVN's per-flow sampling instead of bridge IPFIX
    (sample() actions on input and on output, a Flow_Sample_Collector_Set): each node's input
    and output records of a packet, translated or not, are one packet, one of them not
    Duplicate, with the counts sent and the identities of what each record shows."""
    flows, sent = run_cluster(cluster, services=True, ct=True, flow_sample=True)
    problems = check_flows(flows, sent, expected=expected_flow_sample_records)
    assert not problems, "\n".join(problems)
