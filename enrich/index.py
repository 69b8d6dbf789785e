"""The IP -> Kubernetes identity index, and the per-flow `enrich()` that reads it.

Why it is shaped like this:
- The hot path (`Index.enrich`) runs once per flow inside the collector's synchronous decode
  loop, so it does two or three dict lookups keyed by the raw address bytes the decoder already
  has, and concatenates JSON fragments that were encoded once per object (orjson escaping) when
  the object changed, never per flow. It takes no lock and never awaits.
- Writers (the informer threads) hold one writer-only lock among themselves; readers never take
  it. A reader sees either the old or the new value of a key because each key's value is an
  immutable tuple replaced in one dict store, and a relist swaps in a whole new dict.
- IP reuse is resolved by time: each pod IP maps to a chain of holders (newest first), each with
  the holder's start (creationTimestamp) and end (deletion seen / terminal phase). A flow goes to
  the holder that had the IP when the flow started; deleted pods stay as tombstones for
  `tombstone_seconds` so late-exported flows of a deleted pod still resolve to it.
- Only the fields the index needs are kept (a `PodRec`/`NodeRec`/`SvcRec` per object), so that
  100k pods fit well under 200 MB.

Precedence follows NetObserv: Pod, then Node, then Service for the same address; an IP equal to a
pod's hostIP is not a pod IP (host-network pods resolve to their Node). A pod's addresses on other
networks (OVN-Kubernetes user-defined networks, Multus attachments: POD_NETWORK_ANNOTATIONS) join
its podIPs in the same chains, behind status.podIPs, and not at all while two live pods claim
one: those networks may overlap, and a flow does not say which it was on (Index._claims).
"""

from __future__ import annotations

import collections
import functools
import heapq
import ipaddress
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import Any

import orjson

from .config import FLOW_LAYER_RULES

log = logging.getLogger("flowscope.enrich")

PODS, NODES, SERVICES, REPLICASETS = "pods", "nodes", "services", "replicasets"
KINDS = (PODS, NODES, SERVICES, REPLICASETS)

# "Never ended" / "always started" bounds for holder intervals, in Unix ms.
ALIVE = 1 << 62
ALWAYS = -(1 << 62)

# The OVN-Kubernetes node annotation listing the node's pod subnets; the management port
# (ovn-k8s-mp0) takes the subnet base + 2, and traffic from it is the node's own.
OVN_NODE_SUBNETS = "k8s.ovn.org/node-subnets"
# The node's gateway router port on the join switch (100.64.0.0/16, fd98::/64 by default):
# traffic from the node to a ClusterIP Service leaves the gateway router source-NATed to this
# address (OVN-Kubernetes sets lb_force_snat_ip=router_ip on gateway routers), so an exporter on
# the node reaching a collector through its Service arrives from it. Older releases write
# {"ipv4": CIDR, "ipv6": CIDR}; newer ones the plural, per network: {"default": {...}}.
OVN_GR_LRP_IFADDR = "k8s.ovn.org/node-gateway-router-lrp-ifaddr"
OVN_GR_LRP_IFADDRS = "k8s.ovn.org/node-gateway-router-lrp-ifaddrs"
# A pod's addresses beyond status.podIPs, which the kubelet fills from the default network only.
# OVN-Kubernetes: every network the pod is on, a JSON object keyed by network name ("default",
# "NAMESPACE/NAME" of a (Cluster)UserDefinedNetwork or NetworkAttachmentDefinition), each with
# "ip_addresses" (CIDRs; older releases a single "ip_address"), "mac_address", "role" (a pod of a
# namespace with a primary UDN keeps its default-network address, status.podIPs, as
# "infrastructure-locked" and sends its traffic from the UDN's, role "primary"), gateways, routes.
OVN_POD_NETWORKS = "k8s.ovn.org/pod-networks"
# Multus (the Network Plumbing WG's multi-net spec): a JSON list of {"name", "interface", "ips"
# (addresses, no prefix), "mac", "default": bool, "dns", ...}, one per attachment.
MULTUS_NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
# The same list under its key before the rename (network-attachment-definition-client's
# OldNetworkStatusAnnot): Multus releases from before it write only this one, later ones wrote
# both with the same value for a while. Read when network-status is absent, never beside it.
MULTUS_NETWORKS_STATUS_OLD = "k8s.v1.cni.cncf.io/networks-status"
ZONE_LABEL = "topology.kubernetes.io/zone"
# Objects NetObserv's operator names as infrastructure whatever their namespace (its
# K8sInfraRule infraRefs): the API server's Services in `default` (flow_layer_rule netobserv).
INFRA_REFS = frozenset((("default", "kubernetes"), ("default", "openshift")))
# The Node address types that must hold an IP (one that does not is counted, bad_address). Every
# address of status.addresses that is an IP is the Node's, whatever its type, as NetObserv indexes
# them: a Hostname (kubelet --hostname-override=IP) or *DNS entry can hold another NIC's address.
NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
TERMINAL_PHASES = ("Succeeded", "Failed")

# Entry tuple layout, read by the hot path by position (tuples are the cheapest immutable record).
# E_INFRA, the layer bit: 1 selects tails[1] when either side has it (see Index._layer_bit).
E_SRC, E_DST, E_NODE, E_INFRA, E_START, E_END, E_PREV = range(7)


def ip_bytes(text: Any) -> bytes | None:
    """Raw 4/16-byte form of an address string, None when it is not an IP.

    An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address: flows and exporters carry
    it so (the decoders map a mapped exporter address to IPv4), and the index keys on bytes.
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    if a.version == 6:
        if a.scope_id is not None:
            return None  # a zone (fe80::1%eth0) is no API address: Kubernetes validation refuses it
        if a.ipv4_mapped is not None:
            return a.ipv4_mapped.packed
    return a.packed


def host_address(text: Any) -> tuple[str, bytes] | None:
    """(canonical text, raw bytes) of a host address, None when it is not an IP.

    HostIP is published in this text (ipaddress's compressed form, a mapped address as IPv4), so
    that it compares equal to the SrcAddr/AgentIP flowscope writes, whatever spelling (upper case,
    zero padding) the API object used.
    """
    return _host_address(text) if isinstance(text, str) and text else None


@functools.lru_cache(maxsize=16384)
def _host_address(text: str) -> tuple[str, bytes] | None:
    # Memoised: a few host addresses per node, read for every pod (parsing costs microseconds),
    # and the pods of one node then share one text object. Bounded: a memo, not an index.
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    if a.version == 6 and a.scope_id is not None:
        return None  # (as ip_bytes)
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    canonical = str(a)
    return text if canonical == text else canonical, a.packed


@functools.lru_cache(maxsize=4096)
def _host_set(raws: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """One shared tuple per distinct set of a pod's host addresses (the pods of one node give
    the same): 100k pods keep a few hundred tuples, not one each. Bounded: a memo, not an index."""
    return raws


@functools.lru_cache(maxsize=4096)
def _lag(ms: int) -> int:
    """One shared int per distinct PodRec.created_lag (whole seconds, mostly a few: the time a
    pod takes from its creation to its start): 100k pods keep a few hundred ints, not one each.
    Bounded: a memo, not an index."""
    return ms


def parse_time_ms(text: Any) -> int | None:
    """Kubernetes RFC 3339 timestamp -> Unix ms, None when absent or unparsable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _network_ready_ms(conditions: list[Any]) -> int | None:
    """lastTransitionTime of a true PodReadyToStartContainers (PodHasNetwork) condition."""
    for c in conditions:
        if (isinstance(c, dict) and c.get("type") in ("PodReadyToStartContainers", "PodHasNetwork")
                and c.get("status") == "True"):
            return parse_time_ms(c.get("lastTransitionTime"))
    return None


# Where a pod's status reports its containers. Native sidecars (init containers with
# restartPolicy Always, Kubernetes 1.29+) are in initContainerStatuses and are stopped only after
# the main containers exit: the pod keeps its address (and the sidecar sends) until then.
CONTAINER_STATUSES = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")


def _termination(c: Any) -> dict[str, Any] | None:
    """A container status' `state.terminated`, when it has one."""
    state = c.get("state") if isinstance(c, dict) else None
    term = state.get("terminated") if isinstance(state, dict) else None
    return term if isinstance(term, dict) else None


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


FINISH_GRACE_MS = 999


def _grace(end: int) -> int:
    """The lookup grace of a hold that ended at a container's finishedAt (whole seconds)."""
    return FINISH_GRACE_MS if end % 1000 == 0 else 0


def _finished_ms(statuses: Iterable[Any]) -> int | None:
    """When the last container of a finished pod terminated (None when not recorded).

    A terminated container without a finishedAt makes it unknown: the kubelet reports a container
    the runtime lost (a node or containerd restart) as terminated, reason ContainerStatusUnknown,
    with no times (Go's zero time: null), and it may have run until the end; the latest time the
    others give (an init container's, from the pod's start) is no end of the pod."""
    out: int | None = None
    for c in statuses:
        term = _termination(c)
        if term is None:
            continue
        t = parse_time_ms(term.get("finishedAt"))
        if t is None:
            return None
        if out is None or t > out:
            out = t
    return out


def management_port_ips(annotation: Any) -> list[bytes]:
    """Base + 2 of each default-network subnet in `k8s.ovn.org/node-subnets` (JSON: network ->
    CIDR or CIDRs).

    Raises ValueError when the annotation is not the documented shape, so the caller can count it.
    """
    data = orjson.loads(annotation)
    if not isinstance(data, dict):
        raise ValueError("node-subnets annotation is not a JSON object")
    out: list[bytes] = []
    # One key per OVN network; user-defined networks are isolated (and may overlap), their
    # management ports are not the node's address: only the cluster default network's is.
    subnets = data.get("default")
    if subnets is not None:
        if isinstance(subnets, str):
            subnets = [subnets]
        if not isinstance(subnets, list):
            raise ValueError("node-subnets value is neither a CIDR nor a list of CIDRs")
        for cidr in subnets:
            if not isinstance(cidr, str):
                raise ValueError(f"node-subnets entry {cidr!r} is not a CIDR string")
            net = ipaddress.ip_network(cidr, strict=False)
            if net.num_addresses > 2:
                out.append((net.network_address + 2).packed)
    return out


def gateway_router_ips(annotation: Any, plural: bool) -> list[bytes]:
    """The addresses (CIDRs' host parts) of the node's gateway router port on the join switch,
    from OVN_GR_LRP_IFADDR (plural False: {"ipv4": CIDR, "ipv6": CIDR}) or OVN_GR_LRP_IFADDRS
    (plural True: the same per network, or a CIDR or CIDRs; only "default" is the node's: user-
    defined networks' join subnets may overlap between networks).

    Raises ValueError when the annotation is not one of those shapes, so the caller can count it.
    """
    data = orjson.loads(annotation)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if plural:
        data = data.get("default")
        if data is None:
            return []
    if isinstance(data, dict):
        cidrs = [v for k, v in data.items() if k in ("ipv4", "ipv6")]
    elif isinstance(data, str):
        cidrs = [data]
    elif isinstance(data, list):
        cidrs = data
    else:
        raise ValueError("neither addresses by family nor CIDRs")
    out: list[bytes] = []
    for cidr in cidrs:
        if not isinstance(cidr, str):
            raise ValueError(f"entry {cidr!r} is not a CIDR string")
        out.append(ipaddress.ip_interface(cidr).ip.packed)
    return out


def _network_address(text: Any) -> bytes:
    """Raw bytes of an annotation's address, written with or without a prefix length."""
    if not isinstance(text, str):
        raise ValueError(f"address {text!r:.60} is not a string")
    raw = ip_bytes(ipaddress.ip_interface(text).ip.compressed)
    if raw is None:
        raise ValueError(f"address {text!r:.60} is not a routable IP")  # (a zone: fe80::1%eth0)
    return raw


def ovn_pod_network_ips(annotation: Any) -> list[bytes]:
    """Every network's addresses in OVN_POD_NETWORKS (the default network's included: the
    caller drops those status.podIPs has).

    Raises ValueError (or TypeError) when the annotation is not the documented shape, so the
    caller can count it: one bad entry makes the whole annotation unknown, not partly read."""
    data = orjson.loads(annotation)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object keyed by network")
    out: list[bytes] = []
    for net, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"network {net!r}: not a JSON object")
        cidrs = entry.get("ip_addresses")
        if cidrs is None:
            # (null or absent: OVN-Kubernetes before the plural, or a network with no IPAM)
            single = entry.get("ip_address")
            cidrs = [] if single is None or single == "" else [single]
        if not isinstance(cidrs, list):
            raise ValueError(f"network {net!r}: ip_addresses is not a list")
        out.extend(_network_address(c) for c in cidrs)
    return out


def multus_network_ips(annotation: Any) -> list[bytes]:
    """Every attachment's addresses in MULTUS_NETWORK_STATUS or MULTUS_NETWORKS_STATUS_OLD (the
    cluster default network's included: the caller drops those status.podIPs has).

    Raises ValueError (or TypeError) when the annotation is not the documented shape."""
    data = orjson.loads(annotation)
    if not isinstance(data, list):
        raise ValueError("not a JSON list of attachments")
    out: list[bytes] = []
    for entry in data:
        if not isinstance(entry, dict):
            raise ValueError(f"attachment {entry!r:.60} is not a JSON object")
        ips = entry.get("ips")
        if ips is None:
            continue  # no IPAM (an SR-IOV or DPDK interface): a MAC only
        if not isinstance(ips, list):
            raise ValueError(f"attachment {entry.get('name')!r:.60}: ips is not a list")
        out.extend(_network_address(t) for t in ips)
    return out


#: The pod annotations read for addresses beyond status.podIPs, and how: per source, its keys
#: (the first one a pod has is read, the others ignored: a renamed key's older spelling last)
#: and their parser. One PodRec.ann_ips entry per source, so a pod whose annotation moves from
#: the old key to the new one keeps the same addresses, and a malformed one the last good ones
#: whichever key gave them.
POD_NETWORK_ANNOTATIONS: tuple[tuple[tuple[str, ...], Callable[[Any], list[bytes]]], ...] = (
    ((OVN_POD_NETWORKS,), ovn_pod_network_ips),
    ((MULTUS_NETWORK_STATUS, MULTUS_NETWORKS_STATUS_OLD), multus_network_ips),
)
# PodRec.ann_ips of a pod without them (shared: most pods have none)
NO_ANN_IPS: tuple[tuple[bytes, ...] | None, ...] = ((),) * len(POD_NETWORK_ANNOTATIONS)


#: Pod owners Kubernetes itself creates (a ReplicaSet is resolved to its Deployment; Node: static
#: pods' mirrors). Others (operators' custom resources: Argo Rollouts, KubeVirt VMIs, ...) are
#: published as they are; the distinct kinds seen are counted (Index.other_owner_kind).
POD_OWNER_KINDS = frozenset(("ReplicaSet", "StatefulSet", "DaemonSet", "Job", "ReplicationController", "Node", "Pod"))
OTHER_OWNER_KINDS_MAX = 256


class BadObject(ValueError):
    """An API object the index cannot read whole: a field it cannot do without is missing, or
    one it reads has the wrong JSON type (counted under `cause`; its last good version keeps
    serving, see Unreadable)."""

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause


class Unreadable:
    """What Index.parse returns for an object it could not read whole (counted) but can name:
    an update with it changes nothing (the object's last good version keeps serving, through a
    relist too), a DELETED event with it still deletes."""

    __slots__ = ("uid", "ns", "name", "created")

    def __init__(self, *, uid: str = "", ns: str = "", name: str, created: int | None = None) -> None:
        self.uid = uid
        self.ns = ns
        self.name = name
        # a pod's creationTimestamp (ms), when readable: what tells a DELETED without a uid of
        # the cached pod of its name from one of an older pod of that name (Index._pod_by_name)
        self.created = created


class PodRec:
    """What the index keeps of a Pod."""

    __slots__ = ("uid", "ns", "name", "node", "host_ip", "host_ips", "ips", "owner_kind", "owner_name", "owner_uid",
                 "start_ms", "end_ms", "frag_s", "frag_d", "infra", "keep_ips", "keep_owner", "status_start",
                 "finished_ms", "floored", "end_grace", "ann_ips", "net_ips", "created_lag")

    def __init__(self, *, uid: str, ns: str, name: str, node: str | None, host_ip: str,
                 ips: tuple[bytes, ...], owner_kind: str, owner_name: str, start_ms: int,
                 end_ms: int, keep_ips: bool = False, keep_owner: bool = False,
                 finished_ms: int | None = None, host_ips: tuple[bytes, ...] = (),
                 ann_ips: tuple[tuple[bytes, ...] | None, ...] = NO_ANN_IPS, owner_uid: str = "",
                 created_lag: int | None = None) -> None:
        self.uid = uid
        self.ns = ns
        self.name = name
        self.node = node
        self.host_ip = host_ip  # published (HostIP): status.hostIP, the first of status.hostIPs
        # every address of status.hostIP and status.hostIPs (both families on a dual-stack
        # node), raw: each names the pod's node as an exporter (_host_ref); one shared tuple
        # per distinct set (_host_set), so the pods of a node add a pointer each
        self.host_ips = host_ips
        self.ips = ips
        # the addresses each of POD_NETWORK_ANNOTATIONS lists (None: it was malformed, counted
        # at parse; the writer puts the pod's last good ones in), only the addresses: never the
        # annotation's text
        self.ann_ips = ann_ips
        # what the index holds of them (PodRec.networks: not status.podIPs, nor a host address)
        self.net_ips: tuple[bytes, ...] = ()
        # status.podIPs was malformed (counted at parse): the pod's last good addresses stand,
        # filled in by the writer, which has them (parsing runs outside the writer lock)
        self.keep_ips = keep_ips
        # ownerReferences were malformed (counted): the owner the pod had stands; a pod not
        # seen before owns itself
        self.keep_owner = keep_owner
        self.owner_kind = owner_kind
        self.owner_name = owner_name
        # the uid its ownerReferences give its ReplicaSet ("" for other owners, or none given):
        # another ReplicaSet under that name (one deleted and created again) is not its owner
        self.owner_uid = owner_uid
        self.start_ms = start_ms
        # the start its status gives (start_ms can be later: see Index._set_pod)
        self.status_start = start_ms
        # how long after its creationTimestamp status_start is, in ms (None: none given): the
        # creation kept so costs 100k pods a few hundred shared ints (_lag), the time itself
        # an int object each (created() gives it back)
        self.created_lag = created_lag
        self.end_ms = end_ms
        # a pod not finished by its phase whose every container has terminated: when the last
        # did (a pod deleted while Running, kubelets before 1.27 and a DELETED event's final
        # status): its hold ends then, not when the collector heard of the delete
        self.finished_ms = finished_ms
        self.floored = False  # start_ms was raised by Index._floor (_refloor may lower it again)
        # end_ms is a finishedAt, which the API writes in whole seconds: the pod held its
        # addresses up to FINISH_GRACE_MS longer (lookups only: a pod given them later starts
        # from end_ms, and the newer holder wins where both could have been)
        self.end_grace = 0
        self.frag_s = b""
        self.frag_d = b""
        self.infra = False

    def same(self, other: PodRec) -> bool:
        """True when `other` would render and index identically (MODIFIED noise is skipped)."""
        # finished_ms renders nothing, but it is no noise: _floor reads it (a terminating pod's
        # containers all stopped while its object stays, phase Running, until the delete)
        return (self.uid == other.uid and self.ips == other.ips and self.net_ips == other.net_ips
                and self.node == other.node
                and self.host_ip == other.host_ip and self.host_ips == other.host_ips
                and self.owner_kind == other.owner_kind
                and self.owner_name == other.owner_name and self.owner_uid == other.owner_uid
                and self.start_ms == other.start_ms
                and (self.end_ms == ALIVE) == (other.end_ms == ALIVE)
                and self.finished_ms == other.finished_ms)


    def created(self) -> int | None:
        """Its creationTimestamp in ms (None when the object had none)."""
        return None if self.created_lag is None else self.status_start - self.created_lag

    def networks(self, old: PodRec | None) -> None:
        """Fill in ann_ips' malformed entries from `old` (the last good ones) and net_ips from
        them: the addresses the pod's annotations list that status.podIPs does not."""
        if None in self.ann_ips:
            prev = old.ann_ips if old is not None else NO_ANN_IPS
            self.ann_ips = tuple(p if a is None else a for a, p in zip(self.ann_ips, prev, strict=True))
        if self.ann_ips is NO_ANN_IPS:
            self.net_ips = ()
            return
        net = dict.fromkeys(ip for ips in self.ann_ips for ip in ips or ())
        self.net_ips = tuple(ip for ip in net if ip not in self.ips and ip not in self.host_ips)


class NodeRec:
    """What the index keeps of a Node."""

    __slots__ = ("name", "uid", "addrs", "node_ips", "mgmt_parts", "host_ip", "zone", "keep_node_ips", "created_ms",
                 "since", "unread")

    def __init__(self, *, name: str, node_ips: tuple[bytes, ...], mgmt_parts: tuple[tuple[bytes, ...] | None, ...],
                 host_ip: str, zone: str, keep_node_ips: bool = False, created_ms: int = ALWAYS,
                 uid: str = "") -> None:
        self.name = name
        # metadata.uid ("" when absent): another one under the name is another Node (_recreated)
        self.uid = uid
        # creationTimestamp: of Nodes a list gives with one address, the one created last began
        # listing it last (Index.replace applies them in this order)
        self.created_ms = created_ms
        # The addresses it began listing in an update (Index._set_node), from when: nothing in a
        # Node says when an address came (status.addresses and the OVN annotations carry no
        # time), so from the update that showed it, or the end of the Node that held it before
        # (Index._node_gained). The others it has listed since its creation as far as anyone can
        # tell. (Never changed in place: a new dict per record.)
        self.since: dict[bytes, int] = _NO_SINCE
        self.node_ips = node_ips  # status.addresses that are IPs (InternalIP, ExternalIP, any other type)
        # OVN's addresses, one entry per annotation read (management ports from node-subnets,
        # gateway router join addresses), None for one that came malformed: that one alone keeps
        # its last good addresses (last_good), the others' are read as they come
        self.mgmt_parts = mgmt_parts
        self.host_ip = host_ip    # from status.addresses
        self.zone = zone
        # A field that came malformed (counted at parse) keeps the node's last good value:
        # see last_good(), applied by the writer
        self.keep_node_ips = keep_node_ips
        # The address fields never read since the Node was first seen (malformed every time), a
        # bit each (UNREAD_NODE_IPS, then 2 << i for mgmt_parts[i]): the addresses one gives when
        # it is read at last are the ones it was first seen with, unknown until then, not news
        self.unread = 0
        self._derive()

    def _derive(self) -> None:
        self.addrs = tuple(dict.fromkeys(self.node_ips + tuple(ip for part in self.mgmt_parts for ip in part or ())))

    def last_good(self, old: NodeRec | None) -> None:
        """Take `old`'s values for the fields that came malformed ("the last good cache keeps
        serving": a bad MODIFIED must not drop the node's addresses or management port; a node
        first seen with one annotation malformed has nothing from it, the others' addresses
        all the same)."""
        bad_parts = None in self.mgmt_parts
        if not (self.keep_node_ips or bad_parts):
            return
        unread = old.unread if old is not None else ~0
        if self.keep_node_ips:
            self.node_ips, self.host_ip = (old.node_ips, old.host_ip) if old is not None else ((), "")
            self.unread |= unread & UNREAD_NODE_IPS
        if bad_parts:
            prev = old.mgmt_parts if old is not None else ((),) * len(self.mgmt_parts)
            self.unread |= sum(unread & (2 << i) for i, part in enumerate(self.mgmt_parts) if part is None)
            self.mgmt_parts = tuple(prev[i] if part is None else part for i, part in enumerate(self.mgmt_parts))
        self.keep_node_ips = False
        self._derive()

    def read_since(self, old: NodeRec) -> tuple[bytes, ...]:
        """Its addresses from the fields `old` (its record before) had never read (NodeRec.unread)."""
        out = self.node_ips if old.unread & UNREAD_NODE_IPS else ()
        return out + tuple(ip for i, part in enumerate(self.mgmt_parts) if old.unread & (2 << i) for ip in part or ())

    def key(self) -> tuple[Any, ...]:
        return (self.name, self.node_ips, self.mgmt_parts, self.host_ip, self.zone, self.unread)

    def start(self, ip: bytes) -> int:
        """When it began listing `ip` (one of its addresses), as far as the collector can tell."""
        return self.since.get(ip, self.created_ms)


UNREAD_NODE_IPS = 1   # NodeRec.unread: status.addresses


def _gained_since(since: dict[bytes, int], had: Collection[bytes], has: Collection[bytes],
                  start: Callable[[bytes], int]) -> dict[bytes, int]:
    """NodeRec.since / SvcRec.since after an update from addresses `had` to `has`: the starts it
    kept for addresses it still lists, and start(ip) for those it did not list before (the
    shared empty dict when there are none)."""
    out = {ip: since[ip] for ip in has if ip in since}
    out.update((ip, start(ip)) for ip in has if ip not in had)
    return out or _NO_SINCE


class SvcRec:
    """What the index keeps of a Service."""

    __slots__ = ("ns", "name", "uid", "ips", "created_ms", "since")

    def __init__(self, *, ns: str, name: str, ips: tuple[bytes, ...], created_ms: int = ALWAYS, uid: str = "") -> None:
        self.ns = ns
        self.name = name
        self.uid = uid  # (as NodeRec.uid)
        self.ips = ips
        # creationTimestamp: from when it holds its ClusterIPs when a deleted Service held one before
        self.created_ms = created_ms
        # The ClusterIPs it was given in an update (a single-stack Service made dual-stack, an
        # ExternalName one made ClusterIP), from when: from that update, as NodeRec.since.
        self.since: dict[bytes, int] = _NO_SINCE

    def start(self, ip: bytes) -> int:
        """When it began holding ClusterIP `ip` (one of its addresses), as far as the collector can tell."""
        return self.since.get(ip, self.created_ms)


class RsRec:
    """What the index keeps of a ReplicaSet: who owns it (to name the Deployment), and its uid."""

    __slots__ = ("ns", "name", "owner", "uid")

    def __init__(self, *, ns: str, name: str, owner: tuple[str, str] | None, uid: str = "") -> None:
        self.ns = ns
        self.name = name
        self.owner = owner
        # (as NodeRec.uid; pods name it in their ownerReferences: PodRec.owner_uid)
        self.uid = uid


def _meta(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BadObject("object is not a JSON object")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise BadObject("object has no metadata.name")
    return meta


def _dict(v: Any, what: str) -> dict[str, Any]:
    """A field that must be a JSON object: {} when absent, BadObject when it is something else."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise BadObject(f"{what} is not a JSON object: {v!r:.80}", "bad_field")
    return v


def _name(obj: Any) -> str:
    """ns/name (or name) of an API object for messages, "?" when it has none."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    name, ns = meta.get("name"), meta.get("namespace")
    name = name if isinstance(name, str) and name else "?"
    return f"{ns}/{name}" if isinstance(ns, str) and ns else name


def _identity(kind: str, obj: Any) -> Unreadable | None:
    """The key an object is indexed under (Unreadable), None when even that is missing."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        return None
    uid = _uid(meta)  # type: ignore[arg-type]
    if kind == NODES:
        return Unreadable(uid=uid, name=name)
    ns = meta.get("namespace")  # type: ignore[union-attr]
    if not isinstance(ns, str) or not ns:
        return None
    # (a pod is keyed by its uid, ns/name without one; Nodes and Services by name, the uid kept)
    if kind != PODS:
        return Unreadable(uid=uid, ns=ns, name=name)
    return Unreadable(uid=uid or f"{ns}/{name}", ns=ns, name=name,
                      created=parse_time_ms(meta.get("creationTimestamp")))  # type: ignore[union-attr]


def _uid(meta: dict[str, Any]) -> str:
    uid = meta.get("uid")
    return uid if isinstance(uid, str) else ""


def _recreated(old_uid: str, new_uid: str) -> bool:
    """Another uid under a name a Node or Service is keyed by: the object was deleted and created
    again, its DELETED event not seen (a watch gap: the new one's ADDED, or the relist after 410
    Gone, is all that came). Objects without one (built by hand) are taken for the same object.

    Never the other way round (an older object's ADDED/MODIFIED after the newer one's): the
    informers cannot be shown one, as their lists are consistent reads and their watches resume
    from the last resourceVersion applied (events after it, in etcd's order); and no rule could
    tell it safely: creationTimestamps come from the API servers' clocks in whole seconds,
    resourceVersions are comparable by contract only from Kubernetes 1.35 (KEP-5504) and go
    back after an etcd restore without --bump-revision (a rule on them would refuse the newer
    object), and keeping one per pod would cost the 100k-pod index megabytes."""
    return bool(old_uid) and bool(new_uid) and old_uid != new_uid


def _gone_end(created_ms: int) -> int | None:
    """When a Node (Service) deleted and created again under its name (_recreated) stopped
    holding its addresses, at the latest: the new one's creation (two objects cannot share the
    name at once), else (unreadable) None: when it was seen."""
    return None if created_ms == ALWAYS else created_ms


def _first_owner(meta: dict[str, Any]) -> tuple[str, str] | None:
    ref = _first_owner_ref(meta)
    return None if ref is None else ref[:2]


def _first_owner_ref(meta: dict[str, Any]) -> tuple[str, str, str] | None:
    """(kind, name, uid) of ownerReferences[0]; uid "" when absent (its kind and name must be there)."""
    refs = meta.get("ownerReferences")
    if not refs:
        return None
    if not isinstance(refs, list) or not isinstance(refs[0], dict):
        raise BadObject("malformed ownerReferences", "bad_owner")
    kind, name = refs[0].get("kind"), refs[0].get("name")
    if not isinstance(kind, str) or not isinstance(name, str) or not kind or not name:
        raise BadObject("ownerReferences[0] lacks kind or name", "bad_owner")
    uid = refs[0].get("uid")
    return kind, name, uid if isinstance(uid, str) else ""


# How long an agent answer that left the index stays alive (Index._retire_agent), in ms: the
# compiled readers may still hold it borrowed for the flow they are encoding (microseconds; a
# thread descheduled on a loaded machine, seconds at worst). Not longer: it keeps the node names
# in it interned (the table forgets a name only once nothing holds it).
AGENT_GRACE_MS = 5_000

# FLOW_DIRECTIONS[direction + 1]: the FlowDirection part of an output (-1 unknown: none).
FLOW_DIRECTIONS = (b"", b',"FlowDirection":0', b',"FlowDirection":1', b',"FlowDirection":2')


class Index:
    """IP -> identity index. Writers: `replace`/`upsert`/`delete`/`sweep`. Reader: `enrich`."""

    def __init__(self, *, cluster_name: str = "", infra_namespace_prefixes: Iterable[str] = ("openshift", "kube-"),
                 own_namespace: str = "", tombstone_seconds: float = 300.0, flow_layer_rule: str = "any-infra",
                 clock: Callable[[], float] = time.time, compiled: bool | None = None,
                 pod_networks: bool = True) -> None:
        self._prefixes = tuple(infra_namespace_prefixes)
        # Index the addresses pods' network annotations list beyond status.podIPs
        # (POD_NETWORK_ANNOTATIONS: OVN-Kubernetes user-defined networks, Multus attachments)
        self._pod_networks = pod_networks
        self._own_ns = own_namespace
        if flow_layer_rule not in FLOW_LAYER_RULES:
            raise ValueError(f"flow_layer_rule {flow_layer_rule!r}: one of {', '.join(FLOW_LAYER_RULES)}")
        self._netobserv = flow_layer_rule == "netobserv"
        self._ttl_ms = int(tombstone_seconds * 1000)
        self._clock = clock
        self._wlock = threading.Lock()

        # Reader-visible state: replaced key by key, or swapped whole on a relist.
        self._ips: dict[bytes, tuple[Any, ...]] = {}
        # Exporter address -> node name: Node addresses, then pods' hostIPs; for an address a
        # Node stopped holding, the Node that held it by flow time (see _agent).
        self._agents: dict[bytes, str | tuple[Any, ...]] = {}

        # Writer-only state.
        self._pods: dict[str, PodRec] = {}
        self._tombstones: dict[str, PodRec] = {}
        # Numbers the records of addresses a running pod left (their keys in _tombstones): two
        # changes within one clock tick must not share a key, or the first record is never swept.
        self._seq = itertools.count()
        # (expiry base: end_ms, seq, record) per tombstone, a heap, so that a sweep (run on every
        # event) costs O(expired) rather than a walk over every tombstone. Entries whose record
        # left _tombstones another way (a pod seen again) are skipped when they come up.
        self._expiry: list[tuple[int, int, PodRec]] = []
        # One-to-many maps hold a bare value for one member and a list beyond (see _multi_add):
        # most IPs have one holder and most nodes/ReplicaSets few pods, so this saves ~200 B/pod.
        self._holders: dict[bytes, Any] = {}
        # Address -> the pod records whose network annotations list it (PodRec.net_ips; live
        # ones and tombstones, as _holders): they answer for it only where no pod lists it in
        # status.podIPs and no other live pod claims it too (see _claims)
        self._net_holders: dict[bytes, Any] = {}
        self._pods_by_node: dict[str, Any] = {}
        self._pods_by_rs: dict[tuple[str, str], Any] = {}
        # What a deleted ReplicaSet (its Deployment) or Node (its zone) gave the live pods still
        # linked to it, until the last of them goes (_forget_gone): deleting a Deployment (or a
        # namespace) deletes the ReplicaSet before the garbage collector deletes its pods, and
        # a Node goes before the pod garbage collector deletes its DaemonSet pods; they still
        # belong to that Deployment and ran in that zone (their last flows, their tombstones).
        self._rs_gone: dict[tuple[str, str], Any] = {}   # (a _multi_add value of RsRec)
        # For each name in _rs_gone: how many live pods linked to it name each ReplicaSet uid in
        # their ownerReferences ("" for none), so that a deleted one is forgotten once no pod
        # names it any more (_forget_gone), even while pods of another one under the name
        # (created again: the same Deployment re-applied gives the same name) keep it linked
        self._rs_gone_refs: dict[tuple[str, str], dict[str, int]] = {}
        # Running pod uid -> the tombstones split off its hold (_split_off: a re-registration of
        # its Node, a change of its addresses; a _multi_add value of PodRec), until the pod's end
        # is known (_end_splits)
        self._splits: dict[str, Any] = {}
        self._zones_gone: dict[str, str] = {}
        self._nodes: dict[str, NodeRec] = {}
        self._services: dict[tuple[str, str], SvcRec] = {}
        self._rs: dict[tuple[str, str], RsRec] = {}
        self._pod_layer: dict[bytes, tuple[Any, ...]] = {}
        self._node_layer: dict[bytes, tuple[Any, ...]] = {}
        self._svc_layer: dict[bytes, tuple[Any, ...]] = {}
        # Address -> the Node(s) listing it (a _multi_add value, newest claimant last: it answers).
        # Two Node objects can list one address (a replaced VM's private IP given to the new VM
        # while the old Node object lingers): when one stops listing it, the other answers.
        self._node_addr: dict[bytes, Any] = {}
        # Pod hostIP -> {node name: pod records holding addresses (tombstones included)}: the
        # exporter's node for FlowDirection while that Node is not in the cache (deleted while
        # its pods are being garbage-collected, re-registered, or the nodes informer behind).
        self._hosts: dict[bytes, dict[str, int]] = {}
        # ClusterIP -> the Service(s) listing it (_multi_add: two only while one replaces the
        # other out of order, or across a relist), the newest answering
        self._svc_addr: dict[bytes, Any] = {}
        self._svc_entry: dict[tuple[str, str], tuple[Any, ...]] = {}
        # Address -> the Nodes (Services) that answered for it and stopped (deleted, or no longer
        # listing it), each as (start, end, entry), kept tombstone_seconds as pods' tombstones are:
        # a Node replaced by one with its InternalIP, or a ClusterIP given to a new Service, is
        # not taken for the new one in the flows that started before (_layer_set). Most addresses
        # have none, and their layer entry stays the one-link (ALWAYS, ALIVE) entry it was.
        self._node_tombs: dict[bytes, list[tuple[int, int, tuple[Any, ...]]]] = {}
        self._svc_tombs: dict[bytes, list[tuple[int, int, tuple[Any, ...]]]] = {}
        # (end, seq, is a Node's, address, tombstone) per Node/Service tombstone, a heap (as _expiry)
        self._addr_expiry: list[tuple[int, int, bool, bytes, tuple[int, int, tuple[Any, ...]]]] = []
        # (when, answer) per agent answer that was a tuple and left _agents (_retire_agent)
        self._agents_retired: collections.deque[tuple[int, tuple[Any, ...]]] = collections.deque()
        self._batch = False

        # Counters for stats(): problems by cause; logged once per cause.
        self.problems: dict[str, int] = {}
        self.other_owner_kinds: set[str] = set()  # owner kinds outside POD_OWNER_KINDS seen (bounded)
        self._logged: set[str] = set()

        self._tails = self._build_tails(cluster_name, netobserv=self._netobserv)
        # The compiled reader (enrich/_fast.pyx) when built and wanted; same algorithm, same data.
        self._reader: Any = None
        if compiled is not False:
            try:
                from . import _fast  # type: ignore[attr-defined]
            except ImportError:
                if compiled:
                    raise
            else:
                self._reader = _fast.Reader(self._tails)
                self._reader.publish(self._ips, self._agents)
        #: The fastest enrich() available: bind this one in the hot path.
        self.enrich_fn: Callable[[bytes, bytes, bytes, int, int], bytes] = (
            self._reader.enrich if self._reader is not None else self.enrich)

    # ------------------------------------------------------------------ hot path

    @staticmethod
    def _build_tails(cluster_name: str, *, netobserv: bool = False) -> tuple[tuple[bytes, ...], ...]:
        """tails[bit][direction + 1]: the constant end of every output, by the OR of the two sides'
        layer bits (_layer_bit): any-infra, 0 app and 1 infra; netobserv, 0 infra and 1 app (the
        rule is the same OR, its answers swapped: both readers and the encoder stay rule-free)."""
        cluster = b',"K8S_ClusterName":' + orjson.dumps(cluster_name) if cluster_name else b""
        layers = (b',"K8S_FlowLayer":"app"', b',"K8S_FlowLayer":"infra"')
        if netobserv:
            layers = layers[::-1]
        return tuple(tuple(cluster + lay + d for d in FLOW_DIRECTIONS) for lay in layers)

    def enrich(self, src: bytes, dst: bytes, agent: bytes, t_ms: int, direction: int) -> bytes:
        """JSON fragment (starting with "," or empty) with the K8S fields and FlowDirection.

        Contract: docs/INTERNALS.md "The Enricher contract". O(1), no lock, no I/O.
        """
        ips = self._ips
        s = ips.get(src)
        if s is not None and (t_ms < s[4] or t_ms >= s[5]):
            s = _holder_at(s, t_ms)
        d = ips.get(dst)
        if d is not None and (t_ms < d[4] or t_ms >= d[5]):
            d = _holder_at(d, t_ms)
        if direction < -1 or direction > 2:
            direction = -1
        if s is None:
            if d is None:
                return self._tails[0][direction + 1]  # no side's bit: app (any-infra), infra (netobserv)
            sn = None
            dn = d[2]
            layer = 1 if d[3] else 0
        else:
            sn = s[2]
            if d is None:
                dn = None
                layer = 1 if s[3] else 0
            else:
                dn = d[2]
                layer = 1 if (s[3] or d[3]) else 0
        # NetObserv's reinterpretDirection: same node -> inner; otherwise egress when the
        # exporter is the source's node, ingress when it is the destination's.
        if sn is not None and sn == dn:
            fd = 2
        else:
            an = self._agents.get(agent)
            if type(an) is tuple:
                an = _agent_at(an, t_ms)   # an address a Node held before: the one that had it then
            if an is None:
                fd = direction
            elif an == sn:
                fd = 1
            elif an == dn:
                fd = 0
            else:
                fd = direction
        tail = self._tails[layer][fd + 1]
        if s is None:
            return d[1] + tail  # type: ignore[index]
        if d is None:
            return s[0] + tail
        return s[0] + d[1] + tail

    @property
    def compiled(self) -> bool:
        """True when enrich_fn is the compiled reader."""
        return self._reader is not None

    def lookup(self, addr: str, t_ms: int = 0) -> dict[str, Any] | None:
        """Debug/test helper: the Src-side identity of an address string as a dict."""
        raw = ip_bytes(addr)
        e = self._ips.get(raw) if raw else None
        if e is not None:
            e = _holder_at(e, t_ms)
        if e is None:
            return None
        return orjson.loads(b"{" + e[0][1:] + b"}")

    # ------------------------------------------------------------------ counters

    def problem(self, cause: str, detail: str) -> None:
        """Count a bad-input cause and log it the first time only."""
        self.problems[cause] = self.problems.get(cause, 0) + 1
        if cause not in self._logged:
            self._logged.add(cause)
            log.warning("enrich: %s: %s (further occurrences are counted, not logged)", cause, detail)

    def other_owner_kind(self, kind: str, what: str, ns: str, name: str, owner: str) -> None:
        """An owner kind Kubernetes itself does not create (an operator's custom resource: a
        StrimziPodSet, an Argo Rollout, a KubeVirt VMI, an OpenShift Build): not bad input, and
        published as it is, as NetObserv does; each kind is logged once (info) and counted among
        the distinct kinds seen (bounded). The object (`what` ns/name) owned by `owner` is the
        example logged; nothing is formatted for a kind already seen."""
        if kind in self.other_owner_kinds or len(self.other_owner_kinds) >= OTHER_OWNER_KINDS_MAX:
            return
        self.other_owner_kinds.add(kind)
        log.info("enrich: owner kind %s (e.g. %s %s/%s is owned by %s %s) is published as the owner as it is, "
                 "as NetObserv does", kind, what, ns, name, kind, owner)

    def kind_count(self, kind: str) -> int:
        """Objects of one kind in the cache (live ones: tombstones are not counted)."""
        if kind == PODS:
            return len(self._pods)
        if kind == NODES:
            return len(self._nodes)
        return len(self._services) if kind == SERVICES else len(self._rs) if kind == REPLICASETS else 0

    def counts(self) -> dict[str, int]:
        return {
            "pods": len(self._pods), "nodes": len(self._nodes), "services": len(self._services),
            "replicasets": len(self._rs), "tombstones": len(self._tombstones),
            # deleted ReplicaSets kept for the live pods that name them (_rs_gone)
            "deleted_replicasets": sum(len(_multi_list(v)) for v in self._rs_gone.values()),
            "address_tombstones": len(self._addr_expiry),
            "addresses": len(self._ips), "pod_ips": len(self._pod_layer),
            "pod_network_ips": len(self._net_holders),
            "node_ips": len(self._node_addr), "service_ips": len(self._svc_addr),
            "other_owner_kinds": len(self.other_owner_kinds),
        }

    # ------------------------------------------------------------------ parsing

    def parse(self, kind: str, obj: Any) -> Any:
        """Keep only what the index needs of an API object; None (counted) when unusable."""
        try:
            if kind == PODS:
                return self._parse_pod(obj)
            if kind == NODES:
                return self._parse_node(obj)
            if kind == SERVICES:
                return self._parse_service(obj)
            if kind == REPLICASETS:
                return self._parse_rs(obj)
        except BadObject as e:
            self.problem(e.cause or f"bad_{kind[:-1]}", str(e) if not e.cause else f"{kind[:-1]} {_name(obj)}: {e}")
            return _identity(kind, obj)
        except (TypeError, ValueError, AttributeError, KeyError) as e:
            # a field of an unexpected type the checks below did not foresee: counted like any
            # other bad object, its last good version keeps serving, the informer goes on
            self.problem(f"bad_{kind[:-1]}", f"{kind[:-1]} {_name(obj)}: unexpected shape: {e!r}")
            return _identity(kind, obj)
        raise ValueError(f"unknown kind {kind!r}")

    def _list(self, v: Any, what: str) -> list[Any]:
        """A field that must be a JSON array: [] when absent; counted and [] when it is not one."""
        if v is None:
            return []
        if isinstance(v, list):
            return v
        self.problem("bad_field", f"{what} is not a list: {v!r:.80}")
        return []

    def _parse_pod(self, obj: Any) -> PodRec:
        meta = _meta(obj)
        spec, status = _dict(obj.get("spec"), "spec"), _dict(obj.get("status"), "status")
        ns = meta.get("namespace")
        if not isinstance(ns, str) or not ns:
            raise BadObject("pod has no metadata.namespace")
        name = meta["name"]
        uid_v, host_v = meta.get("uid"), status.get("hostIP")
        uid: str = uid_v if isinstance(uid_v, str) and uid_v else f"{ns}/{name}"
        host = host_address(host_v)
        if host is None and isinstance(host_v, str) and host_v:
            self.problem("bad_address", f"pod {ns}/{name} has a non-IP hostIP {host_v!r}")
        host_ip = host[0] if host is not None else ""
        host_ips = [host[1]] if host is not None else []
        for h in self._list(status.get("hostIPs"), f"pod {ns}/{name} status.hostIPs"):
            hh = host_address(h.get("ip")) if isinstance(h, dict) else None
            if hh is not None and hh[1] not in host_ips:
                host_ips.append(hh[1])
        texts: list[str] = []
        keep_ips = False
        # Every address of a host-network pod is its Node's (before Kubernetes 1.28 a dual-stack
        # node lists both families in podIPs but only one as hostIP): none is indexed.
        if spec.get("hostNetwork") is not True:
            pod_ips = status.get("podIPs")
            listed = self._list(pod_ips, f"pod {ns}/{name} status.podIPs")
            for p in listed:
                if isinstance(p, dict) and isinstance(p.get("ip"), str):
                    texts.append(p["ip"])
                else:
                    self.problem("bad_field", f"pod {ns}/{name} status.podIPs has a malformed entry {p!r:.80}")
            if not texts and isinstance(status.get("podIP"), str) and status["podIP"]:
                texts.append(status["podIP"])
            # podIPs of the wrong type, or only malformed entries, and no podIP to fall back on:
            # the addresses are unknown, not gone, so the pod's last good ones keep serving (the
            # writer fills them in)
            keep_ips = not texts and pod_ips is not None and (not isinstance(pod_ips, list) or bool(listed))
        ips: list[bytes] = []
        for t in texts:
            raw = ip_bytes(t)
            if raw is None:
                self.problem("bad_address", f"pod {ns}/{name} has a non-IP podIP {t!r}")
            elif raw in host_ips:
                continue  # host-network pod: the address is the Node's
            elif raw not in ips:
                ips.append(raw)
        if texts and not ips and not any(ip_bytes(t) in host_ips for t in texts):
            keep_ips = True     # none of them an address: unknown, not gone
        ann_ips = NO_ANN_IPS
        if self._pod_networks and spec.get("hostNetwork") is not True:
            ann_ips = self._network_ips(_dict(meta.get("annotations"), "metadata.annotations"), ips, host_ips,
                                        f"pod {ns}/{name}")
        keep_owner = False
        try:
            owner = _first_owner_ref(meta)
        except BadObject as e:
            self.problem("bad_owner", f"pod {ns}/{name}: {e}")
            owner, keep_owner = None, True
        kind, oname, ouid = owner if owner else ("Pod", name, "")
        if kind not in POD_OWNER_KINDS:
            self.other_owner_kind(kind, "pod", ns, name, oname)
        # When the pod got its addresses: the latest of creation, kubelet start and the pod
        # network's readiness (condition PodReadyToStartContainers, PodHasNetwork before 1.29:
        # its sandbox, and so its IP, came up then; a recreated sandbox moves it). The start
        # alone is early: a pod admitted while the CNI had no free address waits without one.
        created = parse_time_ms(meta.get("creationTimestamp"))
        times = [t for t in (created, parse_time_ms(status.get("startTime")),
                             _network_ready_ms(self._list(status.get("conditions"), f"pod {ns}/{name} status.conditions")))
                 if t is not None]
        start = max(times) if times else None
        node = spec.get("nodeName") if isinstance(spec.get("nodeName"), str) and spec.get("nodeName") else None
        end = ALIVE
        finished_all: int | None = None
        if status.get("phase") not in TERMINAL_PHASES:
            regular = status.get("containerStatuses")
            # every container, not only the main ones: native sidecars are stopped after the main
            # containers exit (and a debug container may run on), and the pod holds its address
            # while one of them runs
            if (isinstance(regular, list) and regular
                    and all(_termination(c) is not None for f in CONTAINER_STATUSES for c in _as_list(status.get(f)))):
                finished_all = _finished_ms(c for f in CONTAINER_STATUSES for c in _as_list(status.get(f)))
                if finished_all is not None and start is not None and finished_all <= start:
                    finished_all = None
        else:
            # A finished pod's IP goes back to the pool while the object lingers: it held it
            # until its containers finished (when the status says so), else until now.
            now = self._now_ms()
            finished = _finished_ms(c for f in CONTAINER_STATUSES
                                    for c in self._list(status.get(f), f"pod {ns}/{name} status.{f}"))
            end = min(now, finished) if finished is not None and (start is None or finished > start) else now
        rec = PodRec(uid=uid, ns=_intern(ns), name=name, node=_intern(node) if node else None,
                     host_ip=host_ip, ips=tuple(ips), owner_kind=_intern(kind),
                     # A ReplicaSet's name and uid are its pods' and its own (_parse_rs): one copy
                     # each, which pays for the uid (benchmarks/RESULTS.md, helper 3)
                     owner_name=_intern(oname) if kind == "ReplicaSet" else oname,
                     owner_uid=_intern(ouid) if ouid and kind == "ReplicaSet" else "",
                     start_ms=ALWAYS if start is None else start, end_ms=end, keep_ips=keep_ips,
                     keep_owner=keep_owner, finished_ms=finished_all, host_ips=_host_set(tuple(host_ips)),
                     ann_ips=ann_ips, created_lag=None if created is None or start is None else _lag(start - created))
        if end != ALIVE and end != now:
            rec.end_grace = _grace(end)
        return rec

    def _network_ips(self, anns: dict[str, Any], ips: list[bytes], host_ips: list[bytes],
                     what: str) -> tuple[tuple[bytes, ...] | None, ...]:
        """PodRec.ann_ips: per POD_NETWORK_ANNOTATIONS, the addresses it lists beyond the pod's
        podIPs and host addresses (most pods': none, so nothing is kept), None when malformed
        (counted, logged once; the pod's last good ones stand, and its podIPs index as ever)."""
        out: list[tuple[bytes, ...] | None] = []
        for keys, parse in POD_NETWORK_ANNOTATIONS:
            key = next((k for k in keys if anns.get(k) is not None), keys[0])
            ann = anns.get(key)
            if ann is None:
                out.append(())
                continue
            try:
                listed = parse(ann)
            except (ValueError, TypeError) as e:
                self.problem("bad_pod_networks", f"{what}: {key}={ann!r:.200}: {e}")
                out.append(None)
                continue
            out.append(tuple(dict.fromkeys(ip for ip in listed if ip not in ips and ip not in host_ips)))
        return NO_ANN_IPS if all(a == () for a in out) else tuple(out)

    def _parse_node(self, obj: Any) -> NodeRec:
        meta = _meta(obj)
        name = meta["name"]
        status = _dict(obj.get("status"), "status")
        addrs: list[bytes] = []
        host_ip = ""
        first_any = ""
        addresses = status.get("addresses")
        bad = False
        typed_ok = False  # an InternalIP or ExternalIP read (a Hostname's IP alone does not vouch for the list)
        for a in self._list(addresses, f"node {name} status.addresses"):
            if not isinstance(a, dict):
                self.problem("bad_field", f"node {name} status.addresses has a malformed entry {a!r:.80}")
                bad = True
                continue
            typed = a.get("type") in NODE_ADDRESS_TYPES
            text_v = a.get("address")
            # (another type usually holds a name: parsed without the memo, which would keep it)
            host = host_address(text_v) if typed else (
                _host_address.__wrapped__(text_v) if isinstance(text_v, str) and text_v else None)
            if host is None:
                if typed:
                    self.problem("bad_address", f"node {name} has a non-IP address {a.get('address')!r}")
                    bad = True
                continue  # (Hostname, InternalDNS, ExternalDNS: names, as they usually are)
            text, raw = host
            typed_ok = typed_ok or typed
            if raw not in addrs:
                addrs.append(raw)
            first_any = first_any or text
            if not host_ip and a.get("type") == "InternalIP":
                host_ip = text
        parts: list[tuple[bytes, ...] | None] = []
        anns = _dict(meta.get("annotations"), "metadata.annotations")
        for key, parse in ((OVN_NODE_SUBNETS, management_port_ips),
                           (OVN_GR_LRP_IFADDRS, lambda a: gateway_router_ips(a, True)),
                           (OVN_GR_LRP_IFADDR, lambda a: gateway_router_ips(a, False))):
            ann = anns.get(key)
            try:
                parts.append(() if ann is None else tuple(parse(ann)))
            except (ValueError, TypeError) as e:
                # counted, and the addresses this annotation last gave stay (NodeRec.last_good)
                self.problem("bad_annotation", f"node {name}: {key}={ann!r}: {e}")
                parts.append(None)
        zone = _dict(meta.get("labels"), "metadata.labels").get(ZONE_LABEL)
        return NodeRec(name=_intern(name), node_ips=tuple(addrs), mgmt_parts=tuple(parts),
                       host_ip=host_ip or first_any, zone=zone if isinstance(zone, str) else "",
                       # addresses unknown (not a list, or none of them readable), not gone: the
                       # last good ones keep serving
                       keep_node_ips=(addresses is not None and not isinstance(addresses, list)) or (bad and not typed_ok),
                       created_ms=_or_always(parse_time_ms(meta.get("creationTimestamp"))), uid=_uid(meta))

    def _parse_service(self, obj: Any) -> SvcRec:
        meta = _meta(obj)
        ns = meta.get("namespace")
        if not isinstance(ns, str) or not ns:
            raise BadObject("service has no metadata.namespace")
        spec = _dict(obj.get("spec"), "spec")
        what = f"service {ns}/{meta['name']}"
        texts = self._list(spec.get("clusterIPs"), f"{what} spec.clusterIPs") or (
            [spec["clusterIP"]] if spec.get("clusterIP") else [])
        ips: list[bytes] = []
        bad = []
        for t in texts:
            if t in ("None", ""):
                continue  # headless Service: no virtual IP
            raw = ip_bytes(t)
            if raw is None:
                bad.append(t)
            elif raw not in ips:
                ips.append(raw)
        if bad and not ips:
            # unknown, not gone: the last good addresses keep serving (Unreadable)
            raise BadObject(f"no clusterIP is an IP: {bad!r:.80}", "bad_address")
        for t in bad:
            self.problem("bad_address", f"{what} has a non-IP clusterIP {t!r}")
        return SvcRec(ns=_intern(ns), name=meta["name"], ips=tuple(ips),
                      created_ms=_or_always(parse_time_ms(meta.get("creationTimestamp"))), uid=_uid(meta))

    def _parse_rs(self, obj: Any) -> RsRec:
        meta = _meta(obj)
        ns = meta.get("namespace")
        if not isinstance(ns, str) or not ns:
            raise BadObject("replicaset has no metadata.namespace")
        owner = _first_owner(meta)
        if owner is not None and owner[0] != "Deployment":
            self.other_owner_kind(owner[0], "replicaset", ns, meta["name"], owner[1])
        uid = _uid(meta)
        return RsRec(ns=_intern(ns), name=_intern(meta["name"]), owner=owner, uid=_intern(uid) if uid else "")

    # ------------------------------------------------------------------ writers

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def replace(self, kind: str, recs: Iterable[Any]) -> None:
        """Replace one kind's cache with a full list, visible to readers all at once."""
        with self._wlock:
            self._batch = True
            try:
                if kind == PODS:
                    new = {r.uid: r for r in recs}
                    for uid in [u for u in self._pods if u not in new]:
                        self._delete_pod(uid)
                    for r in new.values():
                        if not isinstance(r, Unreadable):
                            self._set_pod(r)
                elif kind == NODES:
                    new_n = {r.name: r for r in recs}
                    for name in [n for n in self._nodes if n not in new_n or self._unreadable_other(NODES, new_n[n])]:
                        self._delete_node(name)
                    # Oldest first: an address two Nodes list goes to the one that began listing it
                    # last (_set_node), which a list does not tell but creation does (a replaced
                    # VM's address while the old Node lingers), not the names' order. (Nodes that
                    # listed it already keep their order: the events that showed it say more.)
                    for r in sorted((r for r in new_n.values() if not isinstance(r, Unreadable)),
                                    key=_created_key):
                        self._set_node(r)
                elif kind == SERVICES:
                    new_s = {(r.ns, r.name): r for r in recs}
                    for key in [k for k in self._services if k not in new_s or self._unreadable_other(SERVICES, new_s[k])]:
                        self._delete_service(key)
                    for r in new_s.values():
                        if not isinstance(r, Unreadable):
                            self._set_service(r)
                elif kind == REPLICASETS:
                    new_r = {(r.ns, r.name): r for r in recs}
                    for key in [k for k in self._rs if k not in new_r]:
                        self._delete_rs(key)
                    for r in new_r.values():
                        if not isinstance(r, Unreadable):
                            self._set_rs(r)
                else:
                    raise ValueError(f"unknown kind {kind!r}")
                self._sweep_locked()
            finally:
                self._batch = False
            # One swap: readers see the old index or the new one, never a mix.
            ips = {**self._svc_layer, **self._node_layer}
            for ip in self._svc_layer.keys() & self._node_layer.keys():
                ips[ip] = self._other(ip)  # type: ignore[assignment]
            for ip, chain in self._pod_layer.items():
                ips[ip] = self._entry(ip, chain, ips.get(ip)) or chain
            self._ips = ips
            old_agents = self._agents
            self._agents = {ip: a for ip in self._hosts.keys() | self._node_addr.keys() | self._node_tombs.keys()
                            if (a := self._agent(ip)) is not None}
            for a in old_agents.values():
                self._retire_agent(a)
            if self._reader is not None:
                self._reader.publish(self._ips, self._agents)

    def upsert(self, kind: str, rec: Any) -> None:
        """Apply an ADDED/MODIFIED watch event."""
        if isinstance(rec, Unreadable):
            if kind in (NODES, SERVICES):
                with self._wlock:
                    if kind == NODES and self._unreadable_other(kind, rec):
                        self._delete_node(rec.name)
                    elif kind == SERVICES and self._unreadable_other(kind, rec):
                        self._delete_service((rec.ns, rec.name))
                    self._sweep_locked()
            return
        with self._wlock:
            if kind == PODS:
                self._set_pod(rec)
            elif kind == NODES:
                self._set_node(rec)
            elif kind == SERVICES:
                self._set_service(rec)
            elif kind == REPLICASETS:
                self._set_rs(rec)
            self._sweep_locked()

    def _unreadable_other(self, kind: str, rec: Any) -> bool:
        """`rec` is an Unreadable of another object than the Node (Service) cached under its name
        (_recreated): the cached one is gone, and its last good values are no other object's."""
        if not isinstance(rec, Unreadable):
            return False
        cur = self._nodes.get(rec.name) if kind == NODES else self._services.get((rec.ns, rec.name))
        return cur is not None and _recreated(cur.uid, rec.uid)

    def delete(self, kind: str, rec: Any) -> None:
        """Apply a DELETED watch event."""
        with self._wlock:
            if kind == PODS:
                cur = self._pods.get(rec.uid)
                if cur is None and rec.uid == f"{rec.ns}/{rec.name}":
                    cur = self._pod_by_name(rec)
                if cur is not None:
                    self._delete_pod(cur.uid, rec if isinstance(rec, PodRec) else None)
            elif kind == NODES:
                if not self._stale_delete(kind, self._nodes.get(rec.name), rec):
                    self._delete_node(rec.name)
            elif kind == SERVICES:
                if not self._stale_delete(kind, self._services.get((rec.ns, rec.name)), rec):
                    self._delete_service((rec.ns, rec.name))
            elif kind == REPLICASETS:
                if not self._stale_delete(kind, self._rs.get((rec.ns, rec.name)), rec):
                    self._delete_rs((rec.ns, rec.name))
            self._sweep_locked()

    def _pod_by_name(self, rec: PodRec | Unreadable) -> PodRec | None:
        """The cached pod a DELETED event without a metadata.uid (keyed by ns/name: _parse_pod)
        is about: one of its namespace and name of the event's creationTimestamp (_same_pod);
        None when the event has none, no cached pod does, or several do and their status' start
        does not tell which. A late or repeated DELETED of an older pod of the name (a StatefulSet
        pod created again under it) must not delete the newer one, which the name alone would.
        The API server always sends the uid, so either way it is counted
        (pod_delete_without_uid: deleted; pod_delete_unmatched: nothing deleted, a pod deleted
        stays until a relist drops it)."""
        def named(uids: Iterable[str]) -> list[PodRec]:
            return [r for r in (self._pods.get(u) for u in uids) if r is not None and r.name == rec.name and r.ns == rec.ns]

        what = f"pod {rec.ns}/{rec.name}: DELETED event without metadata.uid"
        if (rec.created() if isinstance(rec, PodRec) else rec.created) is None:
            # (no walk: _same_pod matches no pod without it)
            self.problem("pod_delete_unmatched", f"{what} nor creationTimestamp: nothing tells which pod of that "
                         "name it is, nothing deleted (a relist drops a pod the API server no longer lists)")
            return None
        node = rec.node if isinstance(rec, PodRec) else None
        # The pods of the node it names first (a few hundred at most), then, when none of them is
        # the one, every pod: the cache may hold it on no node (Pending, the update that bound it
        # unreadable) beside a pod of its name on that node (an older one whose delete matched
        # nothing). Only such an event pays for that walk.
        found = named(_multi_list(self._pods_by_node.get(node))) if node else []
        match = [r for r in found if _same_pod(r, rec)]
        if not match:
            found = named(list(self._pods))
            match = [r for r in found if _same_pod(r, rec)]
        if len(match) > 1 and isinstance(rec, PodRec):
            match = [r for r in match if r.status_start == rec.status_start]
        if len(match) == 1:
            self.problem("pod_delete_without_uid", f"{what}: the cached pod of that name (uid {match[0].uid}) deleted")
            return match[0]
        self.problem("pod_delete_unmatched", f"{what}: {len(found) or 'no'} cached pods of that name, "
                     f"{len(match) or 'none'} of its creationTimestamp (nodeName and podIPs agreeing): nothing "
                     "deleted (a relist drops a pod the API server no longer lists)")
        return None

    def _stale_delete(self, kind: str, cur: Any, rec: Any) -> bool:
        """A DELETED event of another object (uid) than the Node, Service or ReplicaSet cached
        under its name: an older
        one's, arriving after the newer one's ADDED (a watch resumed across a reconnect, or the
        relist after 410 Gone, showed the new one first). Deletes go by name, so applying it would
        delete the newer object: it is ignored, counted (stale_delete) and logged once. Pods are
        keyed by their uid: an older pod's DELETED never reaches a newer one of its name."""
        if cur is None or not _recreated(cur.uid, rec.uid):
            return False
        ns = getattr(rec, "ns", "")   # (a NodeRec has none)
        self.problem("stale_delete", f"{kind[:-1]} {ns + '/' if ns else ''}{rec.name}: DELETED of uid "
                     f"{rec.uid} ignored: the cache holds uid {cur.uid} under that name")
        return True

    def sweep(self) -> int:
        """Forget tombstones older than tombstone_seconds; returns how many went. (The periodic
        sweep, on watch bookmarks: it also forgets the interned names nothing uses any more.)"""
        with self._wlock:
            n = self._sweep_locked()
        prune_interned()
        return n

    def _sweep_locked(self) -> int:
        retired = self._agents_retired
        if retired and retired[0][0] <= self._now_ms() - AGENT_GRACE_MS:
            cut = self._now_ms() - AGENT_GRACE_MS
            while retired and retired[0][0] <= cut:
                retired.popleft()
        exp = self._expiry
        if not exp and not self._addr_expiry:
            return 0
        cutoff = self._now_ms() - self._ttl_ms
        n = self._sweep_addresses(cutoff) if self._addr_expiry else 0
        while exp and exp[0][0] <= cutoff:
            r = heapq.heappop(exp)[2]
            if self._tombstones.get(r.uid) is not r:
                continue  # seen alive again (or its key reused) since it was entombed
            del self._tombstones[r.uid]
            self._unhold(r)
            for ip in r.ips + r.net_ips:
                self._rechain(ip)
            n += 1
        return n

    def _sweep_addresses(self, cutoff: int) -> int:
        """Forget the Node and Service tombstones that ended by `cutoff`; returns how many went."""
        exp = self._addr_expiry
        n = 0
        while exp and exp[0][0] <= cutoff:
            _, _, is_node, ip, tomb = heapq.heappop(exp)
            layer, tombs = (self._node_layer, self._node_tombs) if is_node else (self._svc_layer, self._svc_tombs)
            held = tombs.get(ip)
            if held is None or tomb not in held:
                continue
            held.remove(tomb)
            if not held:
                del tombs[ip]
            # the live holder stays as it is (the one link of the chain that has not ended)
            cur = layer.get(ip)
            while cur is not None and cur[E_END] != ALIVE:
                cur = cur[E_PREV]
            self._layer_set(layer, tombs, ip, None if cur is None else cur[:E_START] + (ALWAYS, ALIVE, None),
                            ALWAYS if cur is None else cur[E_START])
            if is_node:
                self._set_agent(ip)
            self._merge(ip)
            n += 1
        return n

    def _addr_entomb(self, is_node: bool, ip: bytes, entry: tuple[Any, ...], start: int, end: int | None = None) -> None:
        """The Node (Service) `entry` that answered for `ip` since `start` stopped now (or at
        `end`: _gone_end): it keeps answering for the flows that started before, for
        tombstone_seconds. An `end` not after `start` (creation times against a start the
        collector saw: clocks, a watch behind) says nothing usable: when it was seen stands."""
        now = self._now_ms()
        tomb = (start, end if end is not None and start < end < now else now, entry)
        (self._node_tombs if is_node else self._svc_tombs).setdefault(ip, []).append(tomb)
        heapq.heappush(self._addr_expiry, (tomb[1], next(self._seq), is_node, ip, tomb))

    @staticmethod
    def _layer_set(layer: dict[bytes, tuple[Any, ...]], tombs: dict[bytes, list[tuple[int, int, tuple[Any, ...]]]],
                   ip: bytes, live: tuple[Any, ...] | None, start: int) -> None:
        """layer[ip]: the Node (Service) entry `live` that answers for `ip` now, holding it from
        `start` (its creation), and the ones that did before (tombs[ip]), newest first, as pods'
        chains (_claim_key's order). Without those it is the one-link entry that answers for every
        flow time, as ever: the hot path compares its start and end and walks nothing."""
        ended = tombs.get(ip)
        if not ended:
            if live is None:
                layer.pop(ip, None)
            else:
                layer[ip] = live
            return
        # each with its place in tombs[ip], the order they stopped answering in (_held_key)
        held = list(enumerate(ended))
        if live is not None:
            held.append((len(ended), (start, ALIVE, live)))
        held.sort(key=_held_key)
        prev: tuple[Any, ...] | None = None
        for _, (s, end, entry) in held:
            prev = entry[:E_START] + (s, end, prev)
        layer[ip] = prev  # type: ignore[assignment]

    def _entomb(self, rec: PodRec) -> None:
        """Keep an ended record (end_ms set, never changed after) for tombstone_seconds."""
        self._tombstones[rec.uid] = rec
        heapq.heappush(self._expiry, (rec.end_ms, next(self._seq), rec))

    def _merge(self, ip: bytes) -> None:
        if self._batch:
            return
        e = self._entry(ip, self._pod_layer.get(ip), self._other(ip))
        if e is None:
            self._ips.pop(ip, None)
        else:
            self._ips[ip] = e
        if self._reader is not None:
            # after the store: a lookup between the two caches the new entry under the old
            # generation, which this bump then invalidates (never the old entry under the new one)
            self._reader.generation += 1

    def _other(self, ip: bytes) -> tuple[Any, ...] | None:
        """The Node, then the Service, that has the address (lookup order): a live Node with no
        tombstone before it answers for every flow time; otherwise the Nodes answer for their
        times, and the Service for the others."""
        return _with_fallback(self._node_layer.get(ip), self._svc_layer.get(ip))

    def _entry(self, ip: bytes, chain: tuple[Any, ...] | None, other: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        """The reader's entry of an address: its pods' chain, then the Node or Service (see
        _with_fallback). A sole live pod's chain answers for every flow time (_rechain), as the
        oldest holder does for flows before it got the address, but only while nobody else has
        the address: with a Node or Service there too, the pod answers from when it got it and
        they before, as when a tombstone precedes it (docs/collector.md: "For the flow times no
        pod held an address, a Node or Service that has it answers")."""
        if (chain is not None and other is not None and chain[E_PREV] is None and chain[E_START] == ALWAYS
                and chain[E_END] == ALIVE):
            start = self._claims(ip)[0][0]   # (its sole holder's)
            if start != ALWAYS:
                chain = chain[:E_START] + (start, ALIVE, None)
        return _with_fallback(chain, other)

    def _layer_bit(self, ns: str, name: str) -> bool:
        """A pod's or Service's E_INFRA bit (a Node's is 0 under both rules). any-infra: its
        namespace is an infrastructure one (a prefix, or the collector's own); netobserv: it is an
        application's (NetObserv's EnrichLayer: a namespace that is neither, and not one of
        INFRA_REFS)."""
        infra = bool(ns) and (ns.startswith(self._prefixes) or ns == self._own_ns)
        if self._netobserv:
            return bool(ns) and not infra and (ns, name) not in INFRA_REFS
        return infra

    # pods

    def _set_pod(self, rec: PodRec) -> None:
        old = self._pods.get(rec.uid)
        if old is None and rec.uid in self._tombstones:
            # Seen again after a delete (relist race): it is alive after all.
            old = self._tombstones.pop(rec.uid)
            self._unhold(old)
        if rec.keep_ips:
            rec.ips = old.ips if old is not None else ()
            rec.keep_ips = False
        rec.networks(old)
        if rec.keep_owner:
            if old is not None:
                rec.owner_kind, rec.owner_name, rec.owner_uid = old.owner_kind, old.owner_name, old.owner_uid
            rec.keep_owner = False
        if old is not None and old.end_ms != ALIVE and rec.end_ms != ALIVE:
            rec.end_ms, rec.end_grace = old.end_ms, old.end_grace  # keep the first time we saw it finished
        if (old is not None and old.end_ms == ALIVE and rec.end_ms == ALIVE and rec.start_ms <= old.start_ms
                and any(ip not in old.ips for ip in rec.ips)):
            # A running pod got addresses it did not have (out of Pending, or a recreated
            # sandbox) and the status gives no later start: it holds them from when nobody else
            # did (_floor: from now while another pod still holds one, so that pod's flows stay
            # its own; _refloor moves it back when that pod turns out to have finished earlier). (A pod
            # first seen with addresses already finished keeps the status' times: a short Job's
            # whole life can fall between two events.)
            floor = self._floor(rec, [ip for ip in rec.ips if ip not in old.ips])
            floored = True
            if floor <= old.start_ms and any(ip in old.ips for ip in rec.ips):
                # the addresses it keeps: their hold never goes back (one of them may have been
                # given to it while another pod still held it)
                floor, floored = old.start_ms, old.floored
            if floor > rec.start_ms:
                rec.start_ms = floor
                rec.floored = floored
        elif old is not None and (rec.start_ms < old.start_ms or (
                old.end_ms == ALIVE and rec.end_ms == ALIVE and old.ips and all(ip in old.ips for ip in rec.ips))):
            # Its start never goes back; and a running pod that keeps its addresses held them
            # all along, even when its pod network's readiness moved on (OVN-Kubernetes keeps
            # a pod's address through a recreated sandbox: a node reboot).
            rec.start_ms = old.start_ms
            rec.floored = old.floored
        if old is not None and old.same(rec) and old.end_ms == rec.end_ms and rec.uid in self._pods:
            return
        if old is not None:
            self._unlink_pod(old)
        self._pods[rec.uid] = rec
        self._link_pod(rec)
        if old is not None:
            self._forget_gone(old)
        self._render_pod(rec)
        self._count_conflicts(rec, old)
        touched = set(rec.ips)
        touched.update(rec.net_ips)
        if old is not None:
            self._unhold(old)
            touched.update(old.ips)
            touched.update(old.net_ips)
            gone = [ip for ip in old.ips if ip not in rec.ips]
            fin = rec.finished_ms if rec.finished_ms is not None else old.finished_ms
            # (an address its status.podIPs now list is still its own: OVN-Kubernetes writes
            # pod-networks before the kubelet reports podIPs, so most pods' first address
            # moves so, and must not leave a tombstone behind each time)
            gone_net = [ip for ip in old.net_ips if ip not in rec.net_ips and ip not in rec.ips]
            if gone or gone_net:
                # The pod lost addresses: a running pod's sandbox was recreated with new ones (it
                # held them until now), or a finished pod's status no longer lists them (it held
                # them until it finished: the end its record already has, kubernetes#125370), or
                # it left a network (its annotation no longer lists the address).
                # They stay its own for the flows that started while it held them, as a tombstone.
                end = min(old.end_ms, rec.end_ms, self._now_ms())
                # (a pod seen finished by this update: the grace of its finishedAt, as its
                # record's; one finished before keeps its own, _held_before)
                grace = rec.end_grace if end == rec.end_ms != old.end_ms else 0
                # A running pod whose containers had all terminated (graceful deletion: its
                # sandbox torn down after them) held them until they did, as _delete_pod ends
                # it: a pod given them since may hold them from then (_floor reads this end)
                if old.end_ms == ALIVE and fin is not None and old.status_start < fin < end:
                    end, grace = fin, _grace(fin)
                dropped = self._held_before(old, gone, end, gone_net, grace)
                if old.end_ms == ALIVE:
                    self._split_off(rec.uid, dropped)
            kept = [ip for ip in old.ips if ip in rec.ips]
            kept_net = [ip for ip in old.net_ips if ip in rec.net_ips]
            if (kept or kept_net) and old.end_ms == ALIVE and rec.start_ms > old.start_ms:
                # It got new addresses too, so its hold starts later: the ones it keeps were its
                # own before that as well (a tombstone for the time between), but not past its
                # end: a pod whose containers had all terminated held nothing after they did
                # (the flows of the time between are a pod's given the address next, _floor
                # reads this end), and one whose end comes later (its phase, its delete's
                # final status) ends the tombstone there too, as its own hold (_end_splits).
                end, grace = rec.start_ms, 0
                if fin is not None and old.status_start < fin < end:
                    end, grace = fin, _grace(fin)
                self._split_off(rec.uid, self._held_before(old, kept, end, kept_net, grace))
        self._hold(rec)
        for ip in touched:
            self._rechain(ip)
        if old is not None and old.end_ms == ALIVE and rec.end_ms != ALIVE:
            self._end_splits(rec)
        if old is not None and old.end_ms == ALIVE and old.ips:
            # it finished (by its phase, or every container terminated: graceful deletion on
            # kubelets before 1.27, a finalizer holding the object), or gave addresses up: pods
            # given them meanwhile may start earlier
            finished = rec.end_ms != ALIVE or (rec.finished_ms is not None and rec.finished_ms != old.finished_ms)
            self._refloor(old.ips if finished else [ip for ip in old.ips if ip not in rec.ips])

    def _count_conflicts(self, rec: PodRec, old: PodRec | None) -> None:
        """Count the addresses `rec` newly claims that another live pod claims too (see
        _claims): by annotation while another pod has it in status.podIPs, or the other way
        round (pod_network_shadowed: the podIPs holder answers), or by annotation both
        (pod_network_ambiguous: neither answers). Overlapping isolated networks do that; a
        delete not seen yet does too, until it is. Counted once per claim, not per event."""
        if rec.end_ms != ALIVE:
            return
        for ip in rec.net_ips:
            if old is not None and ip in old.net_ips:
                continue
            for cause, holders in (("pod_network_shadowed", self._holders), ("pod_network_ambiguous", self._net_holders)):
                other = next((h for h in _multi_list(holders.get(ip)) if h.end_ms == ALIVE and h.uid != rec.uid), None)
                if other is not None:
                    self.problem(cause, f"pod {rec.ns}/{rec.name} claims {ipaddress.ip_address(ip)} by a network "
                                 f"annotation, pod {other.ns}/{other.name} by {'status.podIPs' if holders is self._holders else 'one too'}")
        if self._net_holders:
            for ip in rec.ips:
                if old is not None and ip in old.ips:
                    continue
                other = next((h for h in _multi_list(self._net_holders.get(ip)) if h.end_ms == ALIVE and h.uid != rec.uid),
                             None)
                if other is not None:
                    self.problem("pod_network_shadowed", f"pod {rec.ns}/{rec.name} has {ipaddress.ip_address(ip)} in "
                                 f"status.podIPs, pod {other.ns}/{other.name} by a network annotation")

    def _held_before(self, old: PodRec, ips: Iterable[bytes], end: int, net_ips: Iterable[bytes] = (),
                     grace: int = 0) -> PodRec:
        """A tombstone of `old` for `ips` (and the network annotations' `net_ips`): they were its
        own from its start until `end` (`grace`: the lookup grace of an end that is a finishedAt)."""
        dep = PodRec(uid=f"{old.uid}\x00{next(self._seq)}", ns=old.ns, name=old.name, node=old.node,
                     host_ip=old.host_ip, host_ips=old.host_ips, ips=tuple(ips), owner_kind=old.owner_kind,
                     owner_name=old.owner_name, start_ms=old.start_ms, end_ms=end)
        dep.net_ips = tuple(net_ips)
        dep.frag_s, dep.frag_d, dep.infra = old.frag_s, old.frag_d, old.infra
        # a finished pod's end (a finishedAt, whole seconds) keeps its lookup grace
        dep.end_grace = old.end_grace if end == old.end_ms else grace
        self._entomb(dep)
        self._hold(dep)
        return dep

    def _split_off(self, uid: str, tomb: PodRec) -> None:
        """`tomb` was split off the hold of running pod `uid` (its Node re-registered, its
        addresses changed): its end is not known yet, and when it is, it ends the tombstone too
        where the tombstone reaches past it (_end_splits). Swept ones are let go here."""
        held = [t for t in _multi_list(self._splits.get(uid)) if self._tombstones.get(t.uid) is t]
        self._splits[uid] = held + [tomb] if held else tomb

    def _end_splits(self, rec: PodRec) -> None:
        """`rec`'s hold ended (end_ms set: its phase, or its delete): the tombstones split off
        while it ran (_split_off: its Node's re-registration, _rerender; addresses it dropped or
        kept while it got others, _set_pod) end there too when they reach past it. A pod whose
        containers finished before the new Node's creation (or the change of its addresses),
        seen finished only after it (its status or its DELETED came later), held nothing between
        the two: the tombstone, made to that time, took the flows of the time between, another
        pod's given the address among them."""
        splits: list[PodRec] = _multi_list(self._splits.pop(rec.uid, None))
        for t in splits:
            if self._tombstones.get(t.uid) is not t or t.end_ms <= rec.end_ms:
                continue   # (swept, or the pod ran past the time it was split at)
            del self._tombstones[t.uid]
            self._unhold(t)
            cut = self._held_before(t, t.ips, rec.end_ms, t.net_ips, rec.end_grace)
            for ip in cut.ips + cut.net_ips:
                self._rechain(ip)

    def _delete_pod(self, uid: str, final: PodRec | None = None) -> None:
        """Forget a pod (its addresses stay its own, as a tombstone, for the flows that started
        while it held them). `final`: the DELETED event's object, whose status may say when the
        pod finished: its hold ends then, not when the event arrived (a watch behind, a relist),
        so a pod given the address since is not taken for it. Without it (a relist no longer
        lists the pod), the last status seen says so, as it did for _floor while the pod was
        listed: a relist must not move the end of a pod whose containers had all finished."""
        rec = self._pods.pop(uid)
        self._unlink_pod(rec)
        self._forget_gone(rec)
        if rec.end_ms == ALIVE:
            end = self._now_ms()
            last = final if final is not None else rec
            fin = last.end_ms if last.end_ms != ALIVE else last.finished_ms
            if fin is not None and fin > rec.status_start and fin < end:
                end = fin
                rec.end_grace = last.end_grace if last.end_ms == fin else _grace(fin)
            rec.end_ms = end
        self._end_splits(rec)
        if rec.ips or rec.net_ips:
            self._entomb(rec)
            for ip in rec.ips + rec.net_ips:
                self._rechain(ip)
            self._refloor(rec.ips)

    def _floor(self, rec: PodRec, ips: list[bytes]) -> int:
        """The earliest a running pod can have held addresses it was newly given (its status'
        start is when it was created, started, or its network came up, all of it truncated to
        the second): while another pod still holds one of them (its delete not seen yet, a
        watch behind) from now, so that pod's flows stay its own; else from the end of the
        latest other pod that held one (a Completed pod that lingers ended long ago: the new
        pod's first flows are its own)."""
        floor = rec.status_start
        now = self._now_ms()
        for ip in ips:
            for h in _multi_list(self._holders.get(ip)):
                if h.uid == rec.uid or h.uid.startswith(rec.uid + "\x00"):
                    continue
                if h.end_ms == ALIVE:
                    if h.finished_ms is None:
                        return max(floor, now)
                    floor = max(floor, h.finished_ms)   # its containers all finished (a delete held back)
                    continue
                floor = max(floor, h.end_ms)
        return min(floor, now) if floor > rec.status_start else floor

    def _refloor(self, ips: Iterable[bytes]) -> None:
        """A pod ended or gave addresses up: the running pods given them while it still held
        them (their hold started when they were seen, see _floor) start again where their status
        and the other holders allow, never later than they did."""
        for ip in ips:
            holders: list[PodRec] = _multi_list(self._holders.get(ip))
            for h in holders:
                if h.end_ms != ALIVE or not h.floored or self._pods.get(h.uid) is not h:
                    continue
                f = self._floor(h, list(h.ips))
                if f < h.start_ms:
                    h.start_ms = f
                    h.floored = f > h.status_start
                    for hip in h.ips:
                        self._rechain(hip)

    def _hold(self, rec: PodRec) -> None:
        for ip in rec.ips:
            _multi_add(self._holders, ip, rec)
        for ip in rec.net_ips:
            _multi_add(self._net_holders, ip, rec)
        if (rec.ips or rec.net_ips) and rec.node:
            self._host_ref(rec, 1)

    def _unhold(self, rec: PodRec) -> None:
        held = False
        for ip in rec.ips:
            held = _multi_remove(self._holders, ip, rec) or held
        for ip in rec.net_ips:
            held = _multi_remove(self._net_holders, ip, rec) or held
        if held and rec.node:
            self._host_ref(rec, -1)

    def _host_ref(self, rec: PodRec, delta: int) -> None:
        # FlowDirection compares the exporter's address with the pods' host IPs (NetObserv's
        # reinterpretDirection): through Node objects when the address is a known node's, else
        # through this map, so that the readers still compare node names only (no per-flow cost).
        # Every host address counts: a dual-stack node's exporter may write either family.
        node = rec.node or ""
        for host in rec.host_ips:
            names = self._hosts.get(host)
            if names is None:
                if delta < 0:
                    continue
                names = self._hosts[host] = {}
            n = names.get(node, 0) + delta
            if n > 0:
                names[node] = n  # a name seen last goes last: a host IP's newest node name answers
            else:
                names.pop(node, None)
                if not names:
                    del self._hosts[host]
            self._set_agent(host)

    def _agent(self, ip: bytes) -> str | tuple[Any, ...] | None:
        """The node an exporter address names: a Node's address first, else the node of the pods
        whose hostIP it is. An address a Node stopped holding (tombstones: a Node replaced by one
        given its InternalIP) names, for each flow, the Node that held it when the flow started,
        as the flow's sides are resolved: (the address's Node chain, that name for the times no
        Node held it), which _agent_at reads."""
        names = self._hosts.get(ip)
        name = _last(self._node_addr.get(ip)) or (next(reversed(names)) if names else None)
        if ip in self._node_tombs:
            return (self._node_layer[ip], name)
        return name

    def _set_agent(self, ip: bytes) -> None:
        """Publish the node an exporter address names (_agent)."""
        if self._batch:
            return  # replace() publishes the whole map
        name = self._agent(ip)
        old = self._agents.get(ip)
        if old is name or (type(old) is tuple and type(name) is tuple and old[0] is name[0] and old[1] is name[1]):
            return
        if name is None:
            del self._agents[ip]
        else:
            self._agents[ip] = name
        self._retire_agent(old)
        if self._reader is not None:
            self._reader.generation += 1

    def _retire_agent(self, a: Any) -> None:
        """Keep an agent answer that was a tuple (_agent) alive AGENT_GRACE_MS after it left
        _agents: the compiled readers hold it borrowed (enrich/view.pxd EnrichAgent, the encoder's
        memo) until they see the generation move, and a flow may be between its check and its
        use (a cache miss lets this thread in). Names need not: the node records hold them."""
        if type(a) is tuple:
            self._agents_retired.append((self._now_ms(), a))

    def _link_pod(self, rec: PodRec) -> None:
        if rec.node:
            _multi_add(self._pods_by_node, rec.node, rec.uid)
        if rec.owner_kind == "ReplicaSet":
            key = (rec.ns, rec.owner_name)
            _multi_add(self._pods_by_rs, key, rec.uid)
            refs = self._rs_gone_refs.get(key)
            if refs is not None:
                refs[rec.owner_uid] = refs.get(rec.owner_uid, 0) + 1

    def _unlink_pod(self, rec: PodRec) -> None:
        if rec.node:
            _multi_remove(self._pods_by_node, rec.node, rec.uid)
        if rec.owner_kind == "ReplicaSet":
            key = (rec.ns, rec.owner_name)
            if _multi_remove(self._pods_by_rs, key, rec.uid):
                refs = self._rs_gone_refs.get(key)
                if refs is not None:
                    n = refs.get(rec.owner_uid, 0) - 1
                    if n > 0:
                        refs[rec.owner_uid] = n
                    else:
                        refs.pop(rec.owner_uid, None)

    def _forget_gone(self, rec: PodRec) -> None:
        """`rec` was unlinked: drop what its deleted ReplicaSet or Node left for pods no pod
        links to (a ReplicaSet: names, _owner_rs) any more."""
        if rec.node and rec.node not in self._pods_by_node:
            self._zones_gone.pop(rec.node, None)
        if rec.owner_kind == "ReplicaSet":
            key = (rec.ns, rec.owner_name)
            gone = self._rs_gone.get(key)
            if gone is not None:
                refs = self._rs_gone_refs.get(key, {})
                self._set_rs_gone(key, [g for g in _multi_list(gone) if _rs_named(refs, g.uid)])

    def _set_rs_gone(self, key: tuple[str, str], gone: list[RsRec]) -> None:
        """_rs_gone[key] = `gone` (deleted ReplicaSets of that name that pods still name); its
        pods' uid counts go with the last."""
        if gone:
            self._rs_gone[key] = gone[0] if len(gone) == 1 else gone
        else:
            self._rs_gone.pop(key, None)
            self._rs_gone_refs.pop(key, None)

    def _render_pod(self, rec: PodRec) -> None:
        kind, oname = rec.owner_kind, rec.owner_name
        if kind == "ReplicaSet":
            rs = self._owner_rs(rec)
            if rs is not None and rs.owner is not None:
                kind, oname = rs.owner
        zone = ""
        if rec.node:
            node = self._nodes.get(rec.node)
            zone = node.zone if node is not None else self._zones_gone.get(rec.node, "")
        fields = ((b"Name", rec.name), (b"Namespace", rec.ns), (b"Type", "Pod"),
                  (b"OwnerName", oname), (b"OwnerType", kind), (b"HostIP", rec.host_ip),
                  (b"HostName", _host_name(rec.host_ip, rec.node or "")), (b"Zone", zone))
        rec.frag_s = _fragment(b"Src", fields)
        rec.frag_d = _fragment(b"Dst", fields)
        rec.infra = self._layer_bit(rec.ns, rec.name)

    def _owner_rs(self, rec: PodRec) -> RsRec | None:
        """The ReplicaSet a pod names in its ownerReferences: the one cached under the name, else
        a deleted one its pods still link to (_rs_gone), of the uid the pod names (when both
        have one): another ReplicaSet under the name (deleted and created again in a watch gap,
        with another Deployment or none) owns the pods created after, not this one."""
        key = (rec.ns, rec.owner_name)
        rs = self._rs.get(key)
        if rs is not None and not _recreated(rs.uid, rec.owner_uid):
            return rs
        for gone in reversed(_multi_list(self._rs_gone.get(key))):
            if not _recreated(gone.uid, rec.owner_uid):
                return gone  # type: ignore[no-any-return]
        return None

    def _rerender(self, uids: Any, split: int | None = None) -> None:
        """Render pods again (their ReplicaSet or Node changed). `split`: the Node they are on
        is another one from then (_set_node): a pod that held its addresses before and renders
        otherwise now keeps its old identity for the flows that started before (a tombstone of
        it up to `split`, or up to its end when it finished before, as for addresses it gave
        up), and holds them from then:
        done here, once per pod, so that a flow's lookup stays what it is (the tombstone's
        link is walked only by flows that started before `split`)."""
        touched: set[bytes] = set()
        for uid in _multi_list(uids):
            rec = self._pods.get(uid)
            if rec is None:
                continue
            was = (rec.frag_s, rec.frag_d)
            self._render_pod(rec)
            if (split is not None and rec.start_ms < split and (rec.ips or rec.net_ips)
                    and (rec.frag_s, rec.frag_d) != was):
                now = (rec.frag_s, rec.frag_d)
                rec.frag_s, rec.frag_d = was
                # (a finished pod's hold ends at its end, which its tombstone keeps: one that
                # ended before the new Node's creation ran in the old one's zone all along)
                tomb = self._held_before(rec, rec.ips, min(split, rec.end_ms), rec.net_ips)
                rec.frag_s, rec.frag_d = now
                rec.start_ms, rec.floored = split, False
                if rec.end_ms == ALIVE:
                    self._split_off(uid, tomb)
            touched.update(rec.ips)
            touched.update(rec.net_ips)
        for ip in touched:
            self._rechain(ip)

    def _claims(self, ip: bytes) -> list[tuple[int, PodRec]]:
        """The pods that answer for an address, each with the start of its hold: the ones whose
        status.podIPs list it (from their starts, as ever), then the ones whose network
        annotations do (isolated networks may overlap, so two live pods can both be right):
        only for flow times after every podIPs holder had ended (status.podIPs keeps priority:
        none while one is alive), and a live one only while no other live pod claims it by
        annotation (ambiguous: neither is guessed, the address is nobody's; counted when claimed,
        see _count_conflicts). Their tombstones answer for their times, as podIPs' do."""
        hs = [(r.start_ms, r) for r in _multi_list(self._holders.get(ip))]
        net = self._net_holders.get(ip)
        if net is None:
            return hs
        after = ALWAYS
        for _, h in hs:
            after = max(after, h.end_ms + h.end_grace if h.end_ms != ALIVE else ALIVE)
        if after == ALIVE:
            return hs
        claims = _multi_list(net)
        alive = sum(1 for r in claims if r.end_ms == ALIVE)
        for r in claims:
            if r.end_ms == ALIVE and alive > 1:
                continue
            start = max(r.start_ms, after)
            if r.end_ms == ALIVE or start < r.end_ms + r.end_grace:
                hs.append((start, r))
        return hs

    def _rechain(self, ip: bytes) -> None:
        hs = self._claims(ip)
        if not hs:
            self._pod_layer.pop(ip, None)
        else:
            if len(hs) > 1:
                hs.sort(key=_claim_key)
            prev: tuple[Any, ...] | None = None
            for start, r in hs:
                prev = (r.frag_s, r.frag_d, r.node, r.infra, start,
                        r.end_ms + r.end_grace if r.end_ms != ALIVE else ALIVE, prev)
            if prev is not None and prev[6] is None and prev[5] == ALIVE:
                # Sole live holder: any flow time matches, so the hot path skips the time walk.
                prev = prev[:4] + (ALWAYS, ALIVE, None)
            self._pod_layer[ip] = prev  # type: ignore[assignment]
        self._merge(ip)

    # nodes

    def _node_entry(self, rec: NodeRec) -> tuple[Any, ...]:
        fields = ((b"Name", rec.name), (b"Type", "Node"), (b"OwnerName", rec.name),
                  (b"OwnerType", "Node"), (b"HostIP", rec.host_ip), (b"HostName", _host_name(rec.host_ip, rec.name)),
                  (b"Zone", rec.zone))
        return (_fragment(b"Src", fields), _fragment(b"Dst", fields), rec.name, False, ALWAYS, ALIVE, None)

    def _set_node(self, rec: NodeRec) -> None:
        old = self._nodes.get(rec.name)
        if old is not None and _recreated(old.uid, rec.uid):
            # Another Node under the name (deleted and registered again, its DELETED not seen):
            # the old one's addresses are its own up to the new one's creation, the new one's
            # from then, as after a delete; none of its values stand for the new one's.
            self._delete_node(rec.name, _gone_end(rec.created_ms))
            old = None
        rec.last_good(old)
        if old is not None and old.key() == rec.key():
            return
        if old is not None:
            # An address an existing Node lists now and did not before is its own from the update
            # (or the end of its last holder: _node_gained), not from the Node's creation: one
            # moved from an older Node to this one is that Node's in the flows of before (its
            # tombstone), however long ago this one was created.
            # (an address from a field it had never read is one it was first seen with: from its
            # creation, as ever)
            had = old.addrs + rec.read_since(old) if old.unread else old.addrs
            rec.since = _gained_since(old.since, had, rec.addrs, functools.partial(self._node_gained, rec, self._now_ms()))
        self._nodes[rec.name] = rec
        entry = self._node_entry(rec)
        if old is not None:
            for ip in old.addrs:
                if ip not in rec.addrs:
                    self._drop_node_ip(ip, old)
        for ip in rec.addrs:
            # A node newly listing an address answers for it; one that listed it already keeps
            # its place (an update of the other node sharing it does not take it back).
            was = _last(self._node_addr.get(ip))
            _multi_add(self._node_addr, ip, rec.name)
            if _last(self._node_addr[ip]) == rec.name:
                prev = self._nodes.get(was) if was is not None and was != rec.name else None
                if prev is not None:
                    # It takes the address from a Node that still lists it (a replaced VM's
                    # address while the old Node lingers, NotReady, until it is deleted): that one
                    # answered up to now and keeps the flows that started before this one came,
                    # as if it had been deleted first.
                    self._addr_entomb(True, ip, self._node_entry(prev), prev.start(ip))
                self._layer_set(self._node_layer, self._node_tombs, ip, entry, rec.start(ip))
                self._set_agent(ip)
                self._merge(ip)
        split = None
        if old is None and rec.name in self._zones_gone:
            # Registered again (another Node: its delete seen, or not, _recreated) while the old
            # one's pods are still there: they ran in the old one's zone until this one was
            # created (its creation, else when it was seen, as the old one's addresses), in
            # this one's since (a kubelet of that name runs the pods bound to it)
            del self._zones_gone[rec.name]
            now = self._now_ms()
            split = rec.created_ms if ALWAYS < rec.created_ms < now else now
        if old is None or old.zone != rec.zone:
            self._rerender(self._pods_by_node.get(rec.name), split)

    def _node_gained(self, rec: NodeRec, now: int, ip: bytes) -> int:
        """When a known Node began listing `ip`, which it did not list before. An address its
        status.addresses lists is reported after the fact (the kubelet, or the cloud controller
        manager, reports what the machine has), as a pod's podIPs are: from the end of the Node
        that held it last (nobody else can have had it since), from now while another Node lists
        it, never before its creation (Index._floor, for pods). One only its OVN annotations
        give is allocated by that very update (ovnkube-cluster-manager writes the subnet and
        join address before the node uses them), as a ClusterIP is: from the update."""
        if ip not in rec.node_ips or self._node_addr.get(ip) is not None:
            return now
        return min(max([rec.created_ms, *(end for _, end, _ in self._node_tombs.get(ip, ()))]), now)

    def _drop_node_ip(self, ip: bytes, old: NodeRec, end: int | None = None) -> None:
        """The Node `old` (as it was) no longer lists `ip` (since `end`, else now): another Node
        that lists it answers for it, else nothing does; when `old` answered, it stays for the
        flows that started before (a tombstone)."""
        name = old.name
        was = _last(self._node_addr.get(ip))
        if not _multi_remove(self._node_addr, ip, name):
            return
        now = _last(self._node_addr.get(ip))
        if now == was:
            return  # another node answers for it, as before
        self._addr_entomb(True, ip, self._node_entry(old), old.start(ip), end)
        # another Node still lists it (both were in a list, or it listed it first), or none
        cur = self._nodes.get(now) if now is not None else None
        self._layer_set(self._node_layer, self._node_tombs, ip, None if cur is None else self._node_entry(cur),
                        ALWAYS if cur is None else cur.start(ip))
        self._set_agent(ip)
        self._merge(ip)

    def _delete_node(self, name: str, end: int | None = None) -> None:
        old = self._nodes.pop(name, None)
        if old is None:
            return
        for ip in old.addrs:
            self._drop_node_ip(ip, old, end)
        # Its pods keep the zone they were rendered with (the only field a Node gives them)
        # until they go too: the pod garbage collector deletes them after the Node.
        # ("" too: that the Node of their name went, _set_node)
        if name in self._pods_by_node:
            self._zones_gone[name] = old.zone

    # services

    def _set_service(self, rec: SvcRec) -> None:
        key = (rec.ns, rec.name)
        old = self._services.get(key)
        if old is not None and _recreated(old.uid, rec.uid):
            # (as _set_node: deleted and created again under its name, the DELETED not seen)
            self._delete_service(key, _gone_end(rec.created_ms))
            old = None
        if old is not None and old.ips == rec.ips:
            return
        if old is not None:
            # (as _set_node: an address it was given in an update is its own from then, not from
            # its creation; the Service that had it before keeps the flows of before)
            now = self._now_ms()
            rec.since = _gained_since(old.since, old.ips, rec.ips, lambda _: now)
        self._services[key] = rec
        fields = ((b"Name", rec.name), (b"Namespace", rec.ns), (b"Type", "Service"),
                  (b"OwnerName", rec.name), (b"OwnerType", "Service"))
        entry = (_fragment(b"Src", fields), _fragment(b"Dst", fields), None, self._layer_bit(rec.ns, rec.name),
                 ALWAYS, ALIVE, None)
        self._svc_entry[key] = entry
        if old is not None:
            for ip in old.ips:
                if ip not in rec.ips:
                    self._drop_svc_ip(ip, key, old)
        for ip in rec.ips:
            # (kept last: the newest Service to list the address answers for it)
            _multi_remove(self._svc_addr, ip, key)
            _multi_add(self._svc_addr, ip, key)
            self._layer_set(self._svc_layer, self._svc_tombs, ip, entry, rec.start(ip))
            self._merge(ip)

    def _drop_svc_ip(self, ip: bytes, key: tuple[str, str], old: SvcRec, end: int | None = None) -> None:
        """The Service `key` (`old`, as it was) no longer lists ClusterIP `ip`: another Service
        that lists it (one deleted and one created with its address, their events out of order;
        or a relist that saw both) answers for it again, else nothing does; when it answered, it
        stays for the flows that started before (a tombstone: the ClusterIP given to a new
        Service is not the new one's in them)."""
        was = _last(self._svc_addr.get(ip))
        if not _multi_remove(self._svc_addr, ip, key):
            return
        now = _last(self._svc_addr.get(ip))
        if now == was:
            return
        self._addr_entomb(False, ip, self._svc_entry[key], old.start(ip), end)
        self._layer_set(self._svc_layer, self._svc_tombs, ip, None if now is None else self._svc_entry[now],
                        ALWAYS if now is None else self._services[now].start(ip))
        self._merge(ip)

    def _delete_service(self, key: tuple[str, str], end: int | None = None) -> None:
        old = self._services.pop(key, None)
        if old is None:
            return
        for ip in old.ips:
            self._drop_svc_ip(ip, key, old, end)
        self._svc_entry.pop(key, None)

    # replicasets

    def _set_rs(self, rec: RsRec) -> None:
        key = (rec.ns, rec.name)
        old = self._rs.get(key)
        if old is not None and _recreated(old.uid, rec.uid):
            # (as _set_node: deleted and created again under its name, the DELETED not seen;
            # the old one's pods keep its Deployment, the new one's get the new one's)
            self._delete_rs(key)
            old = None
        # seen again after its delete (a relist race): it was not gone after all
        gone = [g for g in _multi_list(self._rs_gone.get(key)) if not _recreated(g.uid, rec.uid)]
        if gone:
            self._set_rs_gone(key, [g for g in _multi_list(self._rs_gone.get(key)) if g not in gone])
        self._rs[key] = rec
        prev = old if old is not None else gone[-1] if gone else None
        if prev is None or prev.owner != rec.owner or prev.uid != rec.uid:
            self._rerender(self._pods_by_rs.get(key))

    def _delete_rs(self, key: tuple[str, str]) -> None:
        # Its pods keep the Deployment they were rendered with until they go too (deleting a
        # Deployment deletes the ReplicaSet first); orphaned ones (--cascade=orphan) lose their
        # ownerReferences in an update of their own. (Several under one name: one deleted and
        # created again while the old one's pods are still there.)
        old = self._rs.pop(key, None)
        if old is not None and old.owner is not None and key in self._pods_by_rs:
            refs = self._rs_gone_refs.get(key)
            if refs is None:
                refs = {}
                for uid in _multi_list(self._pods_by_rs[key]):
                    owner_uid = self._pods[uid].owner_uid
                    refs[owner_uid] = refs.get(owner_uid, 0) + 1
            # (only when a pod names it: the pods linked to the name may all be another
            # ReplicaSet's of that name, created again in a watch gap and seen first)
            if _rs_named(refs, old.uid):
                self._rs_gone_refs[key] = refs
                _multi_add(self._rs_gone, key, old)


def _same_pod(cur: PodRec, rec: PodRec | Unreadable) -> bool:
    """A DELETED event without a uid (`rec`) can be about the cached pod `cur` of its name: both
    give the same creationTimestamp, the one field that tells two pods of one name apart (it
    never changes, and the new pod is created after the old one is gone). nodeName and podIPs
    only refuse, when both give them and they disagree (another node; no address in common: a
    finished pod's final status may list fewer), never vouch: a pod created again under its
    name comes back to its node (a StatefulSet pod with a local volume), and may come back to
    the address its predecessor had (an IPAM that keeps a StatefulSet pod's address by its
    name: Kube-OVN's), while the old pod's final status names that node and may list that
    address.
    So an event without a creationTimestamp matches no pod (a proxy that drops the uid may drop
    more: nothing is deleted, counted)."""
    created = rec.created() if isinstance(rec, PodRec) else rec.created
    if created is None or created != cur.created():
        return False
    if isinstance(rec, PodRec):
        if rec.node and cur.node and rec.node != cur.node:
            return False
        if rec.ips and cur.ips and not any(ip in cur.ips for ip in rec.ips):
            return False
    return True


def _rs_named(refs: dict[str, int], uid: str) -> bool:
    """A live pod names the ReplicaSet of `uid` (_owner_rs: a pod naming no uid, or a
    ReplicaSet without one, matches any), by its name's pod counts (Index._rs_gone_refs)."""
    return bool(refs) and (not uid or bool(refs.get(uid)) or bool(refs.get("")))


def _with_fallback(chain: tuple[Any, ...] | None, other: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """An address's entry: its pods' chain (lookup order Pod, Node, Service), ending in the
    Node or Service that also has the address, for the flow times no pod held it then (a
    finished Job pod or a deleted pod's tombstone must not hide the node that has it now); the
    same for a Node's chain and the Service's (Index._other)."""
    if chain is None or other is None:
        return chain if chain is not None else other
    if chain[E_PREV] is None and chain[E_START] == ALWAYS and chain[E_END] == ALIVE:
        return chain  # a sole live pod without a start time answers for every time
    links = []
    cur: tuple[Any, ...] | None = chain
    while cur is not None:
        links.append(cur)
        cur = cur[E_PREV]
    out = other   # (with the Node's or Service's own tombstones, when it has any: Index._layer_set)
    for link in reversed(links):
        out = link[:E_PREV] + (out,)
    return out


def _holder_at(e: tuple[Any, ...] | None, t_ms: int) -> tuple[Any, ...] | None:
    """The holder of an IP at flow start t_ms (newest-first chain), None if nobody held it.

    A flow with no start time (t_ms <= 0) goes to the live holder, else to the newest one (a
    tombstone). Otherwise the newest holder whose [start, end) contains t_ms; a holder that had
    ended by t_ms does not hide an older one still holding it then (a running pod that was given
    the IP after it); the oldest holder also answers for flows before its start.
    """
    if e is None:
        return e
    if t_ms <= 0:
        cur: tuple[Any, ...] | None = e
        while cur is not None:
            if cur[5] == ALIVE:
                return cur
            cur = cur[6]
        return e
    while True:
        if t_ms >= e[4] or e[6] is None:
            if t_ms < e[5]:
                return e
            if e[6] is None:
                return None
        e = e[6]


def _agent_at(a: tuple[Any, ...], t_ms: int) -> str | None:
    """The node an exporter address named at flow start t_ms (Index._agent): the Node of its
    chain that held it then (_holder_at, as the flow's sides), else the node it names now."""
    h = _holder_at(a[0], t_ms)
    return a[1] if h is None else h[2]  # type: ignore[no-any-return]


def _multi_add(d: dict[Any, Any], key: Any, val: Any) -> None:
    cur = d.get(key)
    if cur is None:
        d[key] = val
    elif type(cur) is list:
        if val not in cur:
            cur.append(val)
    elif cur is not val and cur != val:
        d[key] = [cur, val]


def _multi_remove(d: dict[Any, Any], key: Any, val: Any) -> bool:
    """Remove one member; True when it was there."""
    cur = d.get(key)
    if cur is None:
        return False
    if type(cur) is list:
        if val not in cur:
            return False
        cur.remove(val)
        if len(cur) == 1:
            d[key] = cur[0]
        elif not cur:
            del d[key]
        return True
    if cur is val or cur == val:
        del d[key]
        return True
    return False


def _last(v: Any) -> Any:
    """The newest member of a _multi_add value (None for none)."""
    return v[-1] if type(v) is list else v


def _multi_list(v: Any) -> list[Any]:
    """Members of a _multi_add value as a new list (safe to iterate while the map changes)."""
    if v is None:
        return []
    if type(v) is list:
        return list(v)
    return [v]


_NO_SINCE: dict[bytes, int] = {}   # (NodeRec.since of most records: never written to)


def _or_always(t: int | None) -> int:
    return ALWAYS if t is None else t


def _created_key(r: NodeRec) -> int:
    return r.created_ms


def _held_key(h: tuple[int, tuple[int, int, tuple[Any, ...]]]) -> tuple[int, bool, int, int]:
    """A Node's or Service's place in its address' chain, oldest first (Index._layer_set): by
    its start, and of ones with the same start, as _claim_key orders pods; of ended ones that
    also ended in the same millisecond (two Nodes listing one address, deleted in one relist),
    the one that stopped answering first is the newer, as if a millisecond had been between:
    the other answered only after it (for no time at all), and the flows it answered for stay
    its own. h: (its place in the order they stopped answering in, (start, end, entry))."""
    i, (start, end, _) = h
    return (start, end == ALIVE, -end, -i)


def _claim_key(c: tuple[int, PodRec]) -> tuple[int, bool, int]:
    """A holder's place in its address' chain, oldest first (the last answers first), by the
    start it answers from (Index._claims). Holders
    with one start (times are whole seconds; no time at all is ALWAYS) held the address one
    after the other in an order their starts do not tell, so the order their records arrived in
    (a list's name order, watch events) must not decide either: a pod still holding it is the
    newer (a finished pod lists its address until deleted, kubelets free it at once; its end may
    be only when it was seen finished), and of ended ones, the one that ended first (the other
    had it after)."""
    r = c[1]
    return (c[0], r.end_ms == ALIVE, -r.end_ms)


# Namespaces, node names, owner kinds and ReplicaSets' names and uids repeat across 100k pods
# (and their ReplicaSets): one copy each. The compiled
# reader compares node names by pointer, so while a name is in use every holder of it must have
# this one object; a name only the table refers to (its objects deleted, their tombstones swept)
# is forgotten, or namespace-per-test-run and node-autoscaler churn would grow the table for
# good. Forgetting it is safe: nothing else has that object, the next use interns a new one.
# The lock makes the refcount check and the removal one step against _intern (the informer
# threads parse outside the index's writer lock).
_interned: dict[str, str] = {}
_intern_lock = threading.Lock()
_intern_limit = 1024  # a table this big is pruned when it grows (then twice what survives)


def _table_only_refs() -> int:
    """sys.getrefcount of a table key, seen as the prune below sees it, when only the table
    (key and value) refers to it."""
    probe: dict[str, str] = {}
    k = "-".join(("flowscope", "intern", "probe"))  # made at run time: a fresh object
    probe[k] = k
    del k
    return [sys.getrefcount(x) for x in probe][0]


_TABLE_ONLY = _table_only_refs()


def _intern(s: str) -> str:
    with _intern_lock:
        if len(_interned) >= _intern_limit:
            _prune_interned_locked()
        return _interned.setdefault(s, s)


def prune_interned() -> int:
    """Forget the interned names nothing but the table refers to; returns how many went."""
    with _intern_lock:
        return _prune_interned_locked()


def _prune_interned_locked() -> int:
    global _intern_limit
    dead = [x for x in _interned if sys.getrefcount(x) <= _TABLE_ONLY]
    for x in dead:
        del _interned[x]
    _intern_limit = max(1024, 2 * len(_interned))
    return len(dead)


def _host_name(host_ip: str, name: str) -> str:
    """HostName as NetObserv publishes it: only beside a HostIP (flowlogs-pipeline's Kubernetes
    enrichment writes _HostName inside `if kubeInfo.HostIP != ""`), so a consumer that finds the
    one finds the other. A Node known only by its management port address, or a pod whose status
    has no hostIP yet, has neither."""
    return name if host_ip else ""


def _fragment(side: bytes, fields: Iterable[tuple[bytes, str]]) -> bytes:
    """`,"SrcK8S_Name":"...",...` for the non-empty fields, strings escaped by orjson."""
    out = bytearray()
    for key, val in fields:
        if val:
            out += b',"' + side + b"K8S_" + key + b'":' + orjson.dumps(val)
    return bytes(out)
