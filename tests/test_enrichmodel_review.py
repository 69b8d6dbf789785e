"""A model-based test of the enrichment index: random watch events, relists and clock moves
applied both to the real `enrich.index.Index` and to a deliberately simple reference model, and
every flow answer compared field by field, on both readers (pure Python and compiled).

Why: the index's IP-reuse rules (who held an address at a flow's start, tombstones, finished
pods, addresses that move between pods, nodes and services sharing addresses, deleted
ReplicaSets and Nodes) interact in ways hand-written cases miss. The model is written from the
documented rules (/work/shared/DESIGN.md "Enrichment rules", README.md, docs/collector.md), not
from index.py: it keeps a plain list of lifetimes (which pod held which address from when to
when) and answers a flow by scanning it. The state space is kept small (six addresses shared by
pods, nodes, management ports and services; three node names) so that reuse and collisions are
the rule, not the exception.

Where the model follows a choice the index documents in its code rather than in the docs, the
model's docstrings say so.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import itertools
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from enrich.index import Index
from tests.support.fake_kube import node, pod, replicaset, service

T0 = 1_700_000_000_000          # ms, a whole second
TTL_S = 20                      # --pod-tombstone-seconds of the index under test
POOL = tuple(f"10.0.0.{i}" for i in range(1, 7))   # every address any object can have
OUTSIDE = "192.0.2.9"           # nobody's
POD_NAMES = ("p0", "p1", "p2", "p3")
NAMESPACES = ("shop", "kube-system")                # app and infra (--infra-namespace-prefix kube-)
NODE_NAMES = ("node-a", "node-b", "node-c")
ZONES = (None, "zone-1", "zone-2")
# node-subnets default network -> its management port (base + 2), inside POOL
SUBNETS = {"10.0.0.0/30": "10.0.0.2", "10.0.0.4/30": "10.0.0.6"}
RS_KEYS = (("shop", "rs-a"), ("shop", "rs-b"), ("kube-system", "rs-a"))
OWNERS = (None, ("ReplicaSet", "rs-a"), ("ReplicaSet", "rs-b"), ("DaemonSet", "ds"))
FINISH_GRACE = 999  # finishedAt is whole seconds: the pod may have run up to 999 ms longer
INFRA_PREFIXES = ("openshift", "kube-")
OWN_NS = "netobserv"


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def raw(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed if ip else b""


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def _compiled_built() -> bool:
    try:
        from enrich import _fast  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- the model


@dataclasses.dataclass
class MPod:
    uid: str
    name: str
    ns: str
    node: str
    host_ip: str
    ips: tuple[str, ...]        # status.podIPs as sent
    host_network: bool
    created: int                # creationTimestamp (the status' start: no startTime/conditions)
    owner: tuple[str, str] | None
    phase: str = "Running"
    fin: int | None = None      # containers' last finishedAt (terminal phase, or all terminated)
    owner_uid: str = ""         # its ReplicaSet's uid in ownerReferences (a ReplicaSet owner's only)

    def indexed(self) -> tuple[str, ...]:
        """The addresses that are the pod's own: none for a host-network pod, and never its hostIP."""
        return () if self.host_network else tuple(ip for ip in self.ips if ip != self.host_ip)

    def obj(self) -> dict[str, Any]:
        o = pod(self.name, self.ns, ips=list(self.ips) or None, node=self.node, host_ip=self.host_ip,
                owner=self.owner, owner_uid=self.owner_uid or None, uid=self.uid, created=iso(self.created),
                phase=self.phase,
                host_network=self.host_network)
        if self.fin is not None:
            o["status"]["containerStatuses"] = [
                {"name": "c", "state": {"terminated": {"exitCode": 0, "finishedAt": iso(self.fin)}}}]
        return o


@dataclasses.dataclass
class Life:
    """One pod's hold of one address: [start, end + grace); end None while it holds it."""
    pod: MPod
    ip: str
    start: int
    end: int | None = None
    grace: int = 0
    frozen: tuple[Any, ...] | None = None  # the identity a tombstone keeps (None: the pod's current)
    floored: bool = False                  # start is "when seen" (another pod still held it)
    split: bool = False                    # a running pod's hold its Node's re-registration (set_node) or an address change ended

    def until(self) -> float:
        return float("inf") if self.end is None else self.end + self.grace


NEVER_BEFORE = float("-inf")   # a hold's start: since always
ALIVE_T = float("inf")         # a hold's end: not ended


@dataclasses.dataclass
class MNode:
    name: str
    internal: tuple[str, ...]
    external: tuple[str, ...]
    subnet: str | None
    zone: str | None
    uid: str = ""               # metadata.uid: another one under the name is another Node
    created: int | None = None  # creationTimestamp (None: absent, the Node held its first addresses since always)

    def addrs(self) -> list[str]:
        out = list(dict.fromkeys(self.internal + self.external))
        if self.subnet and SUBNETS[self.subnet] not in out:
            out.append(SUBNETS[self.subnet])
        return out


class Model:
    """The rules, as plainly as they can be written. A holder is (fields, node name, infra)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pods: dict[str, MPod] = {}              # live pods by name
        self.lives: list[Life] = []                  # every remembered hold
        self.nodes: dict[str, MNode] = {}
        self.claims: dict[str, list[str]] = {}       # address -> nodes listing it, by when they began to
        self.services: dict[tuple[str, str], tuple[str, ...]] = {}
        # Nodes and Services that answered for an address and stopped (deleted, no longer listing
        # it, or a Node another one began listing it after): (address, "node" or "service", the identity it had, when it stopped), kept
        # for tombstone_seconds (docs/collector.md: "Nodes and Services keep theirs the same way"),
        # and when it began to (last: NEVER_BEFORE for since always).
        # An object held the addresses it was first seen with from its creationTimestamp (since
        # always without one, as most here); a Node listing an address it did not list before
        # holds it from then.
        self.ended: list[tuple[str, str, tuple[Any, ...], int, float]] = []
        self.since: dict[tuple[str, str], float] = {}   # (node, address) -> when it began listing it
        self.svc_since: dict[tuple[tuple[str, str], str], float] = {}   # the same of Services' ClusterIPs
        self.svc_meta: dict[tuple[str, str], tuple[str, int | None]] = {}   # a Service's uid and creation
        self.rs: dict[tuple[str, str], str | None] = {}   # -> its Deployment
        self.rs_uid: dict[tuple[str, str], str] = {}       # -> its uid (pods name it: another is not their owner)
        # What a deleted ReplicaSet / Node gave the pods still linked to it (docs/collector.md:
        # "keeps the Deployment owner and the zone they gave it ... until they go too").
        # (uid, Deployment) of each: one deleted and created again under its name while the old
        # one's pods are still there leaves two
        self.rs_gone: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.zones_gone: dict[str, str] = {}

    @property
    def now(self) -> int:
        return self.clock.ms

    # identities

    def pod_holder(self, p: MPod) -> tuple[Any, ...]:
        okind, oname = p.owner if p.owner else ("Pod", p.name)
        if okind == "ReplicaSet":
            key = (p.ns, oname)
            # the ReplicaSet of the uid the pod names, cached or deleted (docs/collector.md)
            dep = (self.rs[key] if key in self.rs and self.rs_uid[key] == p.owner_uid
                   else next((d for u, d in reversed(self.rs_gone.get(key, [])) if u == p.owner_uid), None))
            if dep:
                okind, oname = "Deployment", dep
        n = self.nodes.get(p.node)
        zone = (n.zone or "") if n is not None else self.zones_gone.get(p.node, "")
        fields = {"Name": p.name, "Namespace": p.ns, "Type": "Pod", "OwnerName": oname, "OwnerType": okind,
                  "HostIP": p.host_ip, "HostName": p.node if p.host_ip else "", "Zone": zone}
        return ({k: v for k, v in fields.items() if v}, p.node, self._infra(p.ns))

    def node_holder(self, name: str, n: MNode | None = None) -> tuple[Any, ...]:
        n = self.nodes[name] if n is None else n
        host = n.internal[0] if n.internal else (n.external[0] if n.external else "")
        fields = {"Name": name, "Type": "Node", "OwnerName": name, "OwnerType": "Node", "HostIP": host,
                  "HostName": name if host else "", "Zone": n.zone or ""}
        return ({k: v for k, v in fields.items() if v}, name, False)

    def svc_holder(self, key: tuple[str, str]) -> tuple[Any, ...]:
        ns, name = key
        return ({"Name": name, "Namespace": ns, "Type": "Service", "OwnerName": name, "OwnerType": "Service"},
                None, self._infra(ns))

    @staticmethod
    def _infra(ns: str) -> bool:
        return ns.startswith(INFRA_PREFIXES) or ns == OWN_NS

    def holder(self, life: Life) -> tuple[Any, ...]:
        return life.frozen if life.frozen is not None else self.pod_holder(life.pod)

    # lookups

    def holders_at(self, ip: str, t: int) -> list[tuple[Any, ...]]:
        """Who held `ip` at flow start t (a list: several when the rules leave a tie), [] nobody.

        Pods first (the one that held it then; of several, the one that got it last), then the
        Node listing it (the last to begin listing it), then the Service. Documented in the code
        and tests, not the docs (index._holder_at, "the oldest answers earlier flows"): with no
        Node or Service there, the pod that held the address first answers for flows before it
        got it too (creationTimestamp is truncated to the second; exporters' clocks drift).
        """
        ls = [lf for lf in self.lives if lf.ip == ip]
        inside = [lf for lf in ls if lf.start <= t < lf.until()]
        if inside:
            latest = max(lf.start for lf in inside)
            return [self.holder(lf) for lf in inside if lf.start == latest]
        # the Node that held it then, then the Service that held it then
        svc = next((k for k, ips in self.services.items() if ip in ips), None)   # (ClusterIPs are unique)
        nodes = self._node_at(ip, t, before=svc is None and not any(e[0] == ip and e[1] == "service" for e in self.ended))
        if nodes:
            return nodes
        svcs = self._held_at(ip, "service", t, None if svc is None else (self.svc_since[(svc, ip)], self.svc_holder(svc)),
                             before=True)
        if svcs or any(e[0] == ip for e in self.ended) or self.claims.get(ip) or svc is not None:
            return svcs
        if ls:
            first = min(lf.start for lf in ls)
            return [self.holder(lf) for lf in ls if lf.start == first and t < first and t < lf.until()]
        return []

    def _node_at(self, ip: str, t: int, before: bool) -> list[tuple[Any, ...]]:
        """The Node that held `ip` at t (_held_at): the one listing it now is the last to begin to."""
        live = self.claims.get(ip)
        return self._held_at(ip, "node", t, (self.since[(live[-1], ip)], self.node_holder(live[-1])) if live else None,
                             before)

    def _held_at(self, ip: str, kind: str, t: int, live: tuple[float, tuple[Any, ...]] | None,
                 before: bool) -> list[tuple[Any, ...]]:
        """The Node (Service) that held `ip` at t: of those that held it then (`live`, the one
        answering for it now: (when it began to, its identity); and those that stopped), the one
        that began last; of several that began at once, the one answering now, else the one that
        stopped first (the others had it after). Before any of them began to, the first (of
        several, the one that stopped last), when nothing else has it (`before`: for a Node, no
        Service). While none stopped, the live one holds it for every t (when it began to is
        told by the tombstones alone, in the index as here)."""
        ended = [(e[4], e[3], e[2]) for e in self.ended if e[0] == ip and e[1] == kind]
        if not ended:
            return [live[1]] if live else []
        holds = ended + ([(live[0], ALIVE_T, live[1])] if live else [])
        inside = [h for h in holds if h[0] <= t < h[1]]
        if inside:
            latest = max(h[0] for h in inside)
            inside = [h for h in inside if h[0] == latest]
            if inside[-1][1] == ALIVE_T:
                return [inside[-1][2]]
            first_end = min(h[1] for h in inside)
            return [h[2] for h in inside if h[1] == first_end]
        first = min(h[0] for h in holds)
        if not before or t >= first:
            return []
        holds = [h for h in holds if h[0] == first]
        last_end = max((h[1] for h in holds if h[1] != ALIVE_T), default=ALIVE_T)
        return [h[2] for h in holds if h[1] == last_end]

    def agent_nodes(self, agent: str, t: int) -> list[str | None]:
        """The exporter's node: the Node listing the address (the last to begin to), else the
        Node that held it at flow start t (as holders_at: DESIGN.md compares the exporter with the
        hosts of what the flow's sides are attributed to), else the node of the pods (tombstones
        included) whose hostIP it is; [None] when unknown."""
        held = self._node_at(agent, t, before=True)   # (its exporter: the Nodes alone)
        if held:
            return [h[1] for h in held]
        if self.claims.get(agent):
            return [self.claims[agent][-1]]
        names = sorted({lf.pod.node for lf in self.lives if lf.pod.host_ip == agent})
        return names or [None]

    def flows(self, src: str, dst: str, agent: str, t: int, direction: int) -> list[dict[str, Any]]:
        """Every output the rules allow (one unless a tie)."""
        outs = []
        for s in (self.holders_at(src, t) if src else []) or [None]:
            for d in (self.holders_at(dst, t) if dst else []) or [None]:
                for an in self.agent_nodes(agent, t) if agent else [None]:
                    out: dict[str, Any] = {}
                    for prefix, h in (("Src", s), ("Dst", d)):
                        if h is not None:
                            out.update({f"{prefix}K8S_{k}": v for k, v in h[0].items()})
                    infra = (s is not None and s[2]) or (d is not None and d[2])
                    out["K8S_FlowLayer"] = "infra" if infra else "app"
                    sn = s[1] if s is not None else None
                    dn = d[1] if d is not None else None
                    if sn is not None and sn == dn:
                        fd = 2
                    elif an is not None and an == sn:
                        fd = 1
                    elif an is not None and an == dn:
                        fd = 0
                    else:
                        fd = direction
                    if fd >= 0:
                        out["FlowDirection"] = fd
                    if out not in outs:
                        outs.append(out)
        return outs

    # writers

    def sweep(self) -> None:
        """Tombstones go tombstone_seconds after the hold ended (a listed pod's never do)."""
        cutoff = self.now - TTL_S * 1000
        self.lives = [lf for lf in self.lives if not (lf.frozen is not None and lf.end is not None
                                                       and lf.end <= cutoff)]
        self.ended = [e for e in self.ended if e[3] > cutoff]

    def _start_for(self, p: MPod, ip: str) -> tuple[int, bool]:
        """When a known running pod began to hold an address that appeared on it: from the end of
        the previous pod that held it, or from now while another pod still holds it (the end its
        containers' finishedAt gives, when they all finished); never before the status' start."""
        floor = p.created
        for lf in self.lives:
            if lf.ip != ip or lf.pod is p:
                continue
            if lf.end is None:
                floor = max(floor, lf.pod.fin if lf.pod.fin is not None else self.now)
            else:
                floor = max(floor, lf.end)
        floor = min(floor, self.now)
        return floor, floor > p.created

    def _refloor(self, ips: set[str]) -> None:
        """A holder ended: pods that got its addresses while it still held them held them from
        its end, if that is earlier than when they were seen with them."""
        pods = {id(lf.pod): lf.pod for lf in self.lives if lf.ip in ips and lf.end is None and lf.floored}
        for p in pods.values():
            mine = [lf for lf in self.lives if lf.pod is p and lf.end is None]
            # one sandbox, one start: the latest any of its addresses allows
            start = max(self._start_for(p, lf.ip)[0] for lf in mine)
            for lf in mine:
                if lf.floored and start < lf.start:
                    lf.start, lf.floored = start, start > p.created

    def _end_of(self, p: MPod, fin: int | None) -> tuple[int, int]:
        """(end, grace) of a pod's holds that end now, or at its containers' finishedAt (whole
        seconds: up to 999 ms later, but never after now, when the end was seen)."""
        if fin is not None and p.created < fin <= self.now:
            return fin, min(FINISH_GRACE, self.now - fin)
        return self.now, 0

    def add_pod(self, p: MPod) -> None:
        self.pods[p.name] = p
        end, grace = (None, 0)
        if p.phase != "Running":
            end, grace = self._end_of(p, p.fin)
        for ip in p.indexed():
            self.lives.append(Life(p, ip, p.created, end, grace))

    def set_pod_ips(self, p: MPod, ips: tuple[str, ...]) -> None:
        old = set(p.indexed())
        p.ips = ips
        new = p.indexed()
        ident = self.pod_holder(p)
        # a running pod whose containers had all finished held what it drops until then (the
        # end its delete would give it), not until the change
        end, grace = self._end_of(p, p.fin)
        for lf in self.lives:
            if lf.pod is p and lf.ip in old - set(new) and lf.frozen is None:
                if lf.end is None:
                    # (and a running pod's end, when it comes earlier, ends it too: _cut_splits)
                    lf.end, lf.grace, lf.split = end, grace, True
                lf.frozen = ident
        added = [ip for ip in new if ip not in old]
        if p.phase == "Running" and added:
            # Addresses that appear together come from one sandbox: they share one start, the
            # latest any of them allows, and never before the pod's hold of those it keeps.
            floors = [self._start_for(p, ip) for ip in added]
            start = max(f for f, _ in floors)
            floored = any(fl for f, fl in floors if f == start)
            kept = [lf for lf in self.lives if lf.pod is p and lf.ip in new and lf.end is None]
            if kept and start <= max(lf.start for lf in kept):
                start = max(lf.start for lf in kept)
                floored = any(lf.floored for lf in kept)
            elif kept:
                # The index's choice (reported, not fixed): one start per pod, so the addresses
                # it keeps end as a tombstone and are held again from the new start (a pod that
                # got one of them later while this one held it is no longer the newer holder).
                # Never past the pod's end: its containers' finish, now (a graceful deletion) or
                # when its end comes (_cut_splits), as the addresses it drops.
                ident = self.pod_holder(p)
                kend, kgrace = (p.fin, min(FINISH_GRACE, self.now - p.fin)) if (
                    p.fin is not None and p.created < p.fin < start) else (start, 0)
                for lf in kept:
                    lf.end, lf.grace, lf.frozen, lf.split = kend, kgrace, ident, True
                    added.append(lf.ip)
            for ip in added:
                self.lives.append(Life(p, ip, start, floored=floored))
        self._refloor(old - set(new))

    def finish_pod(self, p: MPod, phase: str, fin: int | None) -> None:
        p.phase, p.fin = phase, fin
        end, grace = self._end_of(p, fin)
        for lf in self.lives:
            if lf.pod is p and lf.end is None:
                lf.end, lf.grace = end, grace
        self._cut_splits(p, end, grace)
        self._refloor(set(p.indexed()))

    def _cut_splits(self, p: MPod, end: int, grace: int) -> None:
        """A running pod's end came: it held nothing after it, the holds its Node's
        re-registration ended at the new Node's creation included, and those a change of its
        addresses ended (the ones it dropped, and kept while it got others)."""
        for lf in self.lives:
            if lf.pod is p and lf.split and lf.end is not None and lf.end > end:
                lf.end, lf.grace = end, grace

    def containers_done(self, p: MPod, fin: int) -> None:
        p.fin = fin
        self._refloor(set(p.indexed()))

    def delete_pod(self, p: MPod) -> None:
        """A deleted pod held its addresses until its final status says its containers all
        finished, else until the delete was seen; they stay its own as a tombstone."""
        del self.pods[p.name]
        ident = self.pod_holder(p)
        end, grace = self._end_of(p, p.fin)
        for lf in self.lives:
            if lf.pod is p and lf.frozen is None:
                if lf.end is None:
                    lf.end, lf.grace = end, grace
                lf.frozen = ident
        if p.phase == "Running":
            self._cut_splits(p, end, grace)
        if not any(q.node == p.node for q in self.pods.values()):
            self.zones_gone.pop(p.node, None)
        if p.owner and p.owner[0] == "ReplicaSet":
            # a deleted ReplicaSet is kept while a pod names it (its uid), not its name only
            key = (p.ns, p.owner[1])
            gone = [g for g in self.rs_gone.get(key, []) if self._named(key, g[0])]
            if gone:
                self.rs_gone[key] = gone
            else:
                self.rs_gone.pop(key, None)
        self._refloor(set(p.indexed()))

    def set_node(self, n: MNode) -> None:
        old = self.nodes.get(n.name)
        split = None
        if old is None and n.name in self.zones_gone:
            # Another Node registered under the name while the old one's pods are there: a
            # running pod's flows that started before the new one's creation (before it was
            # seen, when it has none) keep the old one's zone (docs/collector.md), as if the pod
            # had held its addresses until then and again since
            split = n.created if n.created is not None and n.created < self.now else self.now
            before = {id(p): self.pod_holder(p) for p in self.pods.values() if p.node == n.name}
        if old is None:
            self.zones_gone.pop(n.name, None)
        self.nodes[n.name] = n
        if split is not None:
            for p in [q for q in self.pods.values() if q.node == n.name]:
                if self.pod_holder(p) == before[id(p)]:
                    continue
                for lf in [lf for lf in self.lives if lf.pod is p and lf.frozen is None]:
                    if lf.start >= split:
                        continue
                    # a finished pod's holds end when it finished, before the new Node or after;
                    # a running pod's at the new one's creation, earlier should it turn out to
                    # have finished before (_cut_splits)
                    self.lives.append(Life(p, lf.ip, split, lf.end, lf.grace))
                    if lf.end is None:
                        lf.end, lf.split = split, True
                    elif split < lf.end:
                        lf.end, lf.grace = split, 0
                    lf.frozen = before[id(p)]
        for ip in old.addrs() if old else []:
            if ip not in n.addrs():
                self._unclaim(ip, old)
        for ip in n.addrs():
            if n.name not in self.claims.setdefault(ip, []):
                # a Node that begins listing an address answers for it: the one that did stops
                # (it still lists it) and keeps its earlier flows, as if it had let it go
                if self.claims[ip]:
                    was = self.claims[ip][-1]
                    self.ended.append((ip, "node", self.node_holder(was), self.now, self.since[(was, ip)]))
                self.claims[ip].append(n.name)
                # a Node seen for the first time has listed it since its creation; a known one
                # since _node_gained
                self.since[(n.name, ip)] = _created(n.created) if old is None else self._node_gained(n, ip)

    def _node_gained(self, n: MNode, ip: str) -> float:
        """When a known Node began listing an address it did not list before: from now when its
        OVN annotation alone gives it (the allocation itself); one its status.addresses list
        (reported after the fact, as pods' podIPs) from the end of the last Node hold of it
        (nobody else can have had it since; now, when another Node listed it until now), never
        before its creation."""
        if ip not in n.internal + n.external:
            return self.now
        return min(max([_created(n.created), *(e[3] for e in self.ended if e[0] == ip and e[1] == "node")]),
                   self.now)

    def recreate_node(self, n: MNode) -> None:
        """Another Node (uid) under the name of one the cache holds, its DELETED not seen: the
        old one was deleted by the new one's creation (a name is one object's at a time)."""
        self.delete_node(n.name, end=n.created)
        self.set_node(n)

    def delete_node(self, name: str, end: int | None = None) -> None:
        n = self.nodes.pop(name)
        for ip in n.addrs():
            self._unclaim(ip, n, end)
        if any(q.node == name for q in self.pods.values()):
            self.zones_gone[name] = n.zone or ""

    def _unclaim(self, ip: str, n: MNode, end: int | None = None) -> None:
        """Node `n` (as it was) no longer lists `ip` (from `end`, else now): when it was the one
        answering, it keeps it."""
        if self.claims[ip][-1] == n.name:
            self.ended.append((ip, "node", self.node_holder(n.name, n), self.now if end is None else end,
                               self.since[(n.name, ip)]))
        self.claims[ip].remove(n.name)
        del self.since[(n.name, ip)]

    def set_service(self, key: tuple[str, str], ips: tuple[str, ...], uid: str = "") -> None:
        old = self.services.get(key)
        if old is None:
            self.svc_meta.setdefault(key, (uid, None))
        for ip in old or ():
            if ip not in ips:
                self.ended.append((ip, "service", self.svc_holder(key), self.now, self.svc_since.pop((key, ip))))
        for ip in ips:
            if ip not in (old or ()):
                # (as a Node's: since its creation when first seen, else from this update)
                self.svc_since[(key, ip)] = _created(self.svc_meta[key][1]) if old is None else self.now
        self.services[key] = ips

    def recreate_service(self, key: tuple[str, str], ips: tuple[str, ...], uid: str, created: int) -> None:
        """(as recreate_node)"""
        self.delete_service(key, end=created)
        self.svc_meta[key] = (uid, created)
        self.set_service(key, ips)

    def delete_service(self, key: tuple[str, str], end: int | None = None) -> tuple[str, ...]:
        ips = self.services.pop(key)
        self.svc_meta.pop(key, None)
        for ip in ips:
            self.ended.append((ip, "service", self.svc_holder(key), self.now if end is None else end,
                               self.svc_since.pop((key, ip))))
        return ips

    def set_rs(self, key: tuple[str, str], dep: str | None, uid: str) -> None:
        """(another uid than the cached one's under the name: recreate_rs)"""
        gone = [g for g in self.rs_gone.get(key, []) if g[0] != uid]   # (seen again: not gone)
        if gone:
            self.rs_gone[key] = gone
        else:
            self.rs_gone.pop(key, None)
        self.rs[key], self.rs_uid[key] = dep, uid

    def recreate_rs(self, key: tuple[str, str], dep: str | None, uid: str) -> None:
        """Another ReplicaSet (uid) under the name of one the cache holds, its DELETED not seen."""
        self.delete_rs(key)
        self.set_rs(key, dep, uid)

    def delete_rs(self, key: tuple[str, str]) -> None:
        dep, uid = self.rs.pop(key), self.rs_uid.pop(key)
        if dep and self._named(key, uid):
            self.rs_gone.setdefault(key, []).append((uid, dep))

    def _named(self, key: tuple[str, str], uid: str) -> bool:
        """A live pod names the ReplicaSet `key` of `uid` as its owner."""
        return any(q.ns == key[0] and q.owner == ("ReplicaSet", key[1]) and q.owner_uid == uid
                   for q in self.pods.values())


def _created(ms: int | None) -> float:
    return NEVER_BEFORE if ms is None else ms


# ---------------------------------------------------------------- the machine


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(T0)
        self.model = Model(self.clock)
        self.idx = Index(clock=self.clock, tombstone_seconds=TTL_S, own_namespace=OWN_NS,
                         infra_namespace_prefixes=INFRA_PREFIXES, compiled=_compiled_built())
        self.uids = itertools.count(1)
        self.seen: dict[Any, int] = {}   # a Node's name, a Service's key -> when its last event came
        # (kind, a Node's name or a Service's key) -> the last object of one deleted and created
        # again under it (recreate_node/recreate_service): its DELETED may still come (stale_delete)
        self.replaced: dict[tuple[str, Any], dict[str, Any]] = {}
        self.rs_next: dict[tuple[str, str], str] = {}   # the uid of the next ReplicaSet created under a name

    # helpers

    def tick(self) -> None:
        """Every event comes a second after the one before (API times are whole seconds: no two
        events share a timestamp, so the rules never have to break a tie)."""
        self.clock.ms += 1000

    def upsert(self, kind: str, obj: dict[str, Any]) -> None:
        self.idx.upsert(kind, self.idx.parse(kind, obj))

    def delete(self, kind: str, obj: dict[str, Any]) -> None:
        self.idx.delete(kind, self.idx.parse(kind, obj))

    def sweep(self) -> None:
        self.model.sweep()

    def rs_uid(self, key: tuple[str, str]) -> str:
        """The uid of the ReplicaSet cached under `key`, else of the next one created under it."""
        if key in self.model.rs_uid:
            return self.model.rs_uid[key]
        return self.rs_next.setdefault(key, f"r{next(self.uids)}")

    def rs_obj(self, key: tuple[str, str]) -> dict[str, Any]:
        dep = self.model.rs[key]
        return replicaset(key[1], key[0], owner=("Deployment", dep) if dep else None, uid=self.model.rs_uid[key])

    def fin_time(self, data: st.DataObject, p: MPod) -> int:
        """A containers' finishedAt: after the pod was created, not after now (whole seconds)."""
        return data.draw(st.integers(p.created // 1000 + 1, self.clock.ms // 1000), label="finishedAt s") * 1000

    def running(self) -> list[str]:
        return sorted(n for n, p in self.model.pods.items() if p.phase == "Running")

    # pods

    @precondition(lambda self: len(self.model.pods) < len(POD_NAMES))
    @rule(data=st.data())
    def add_pod(self, data: st.DataObject) -> None:
        self.tick()
        m = self.model
        name = data.draw(st.sampled_from([n for n in POD_NAMES if n not in m.pods]), label="pod")
        nname = data.draw(st.sampled_from(NODE_NAMES), label="node")
        n = m.nodes.get(nname)
        host_ip = n.internal[0] if n is not None else {"node-a": "10.0.0.1", "node-b": "10.0.0.4",
                                                         "node-c": "10.0.0.5"}[nname]
        host_network = data.draw(st.booleans(), label="hostNetwork") if data.draw(st.integers(0, 4)) == 0 else False
        ips = (host_ip,) if host_network else tuple(data.draw(
            st.lists(st.sampled_from(POOL), max_size=2, unique=True), label="ips"))
        # Created up to 3 s ago (the watch is behind), never before the end of an earlier holder
        # of its addresses (a pod cannot have got an address before it was given back).
        created = self.clock.ms - 1000 * data.draw(st.integers(0, 3), label="created ago")
        for lf in m.lives:
            if lf.ip in ips and not host_network:
                created = max(created, (lf.end if lf.end is not None else lf.start + 1000))
        created = min(created, self.clock.ms)
        p = MPod(uid=f"u{next(self.uids)}", name=name, ns=data.draw(st.sampled_from(NAMESPACES), label="ns"),
                 node=nname, host_ip=host_ip, ips=ips, host_network=host_network, created=created,
                 owner=data.draw(st.sampled_from(OWNERS), label="owner"))
        if p.owner is not None and p.owner[0] == "ReplicaSet":
            # the ReplicaSet cached under the name, else the next one created under it (not seen yet)
            p.owner_uid = self.rs_uid((p.ns, p.owner[1]))
        if data.draw(st.integers(0, 5), label="born finished") == 0 and created < self.clock.ms:
            p.phase = data.draw(st.sampled_from(("Succeeded", "Failed")))
            p.fin = data.draw(st.one_of(st.none(), st.just(0)), label="finishedAt?")
            if p.fin is not None:
                p.fin = self.fin_time(data, p)
        self.upsert("pods", p.obj())
        m.add_pod(p)
        self.sweep()

    @precondition(lambda self: any(p.phase == "Running" for p in self.model.pods.values()))
    @rule(data=st.data())
    def pod_ips_change(self, data: st.DataObject) -> None:
        """A running pod's podIPs change (out of Pending, a recreated sandbox)."""
        self.tick()
        p = self.model.pods[data.draw(st.sampled_from(self.running()), label="pod")]
        ips = tuple(data.draw(st.lists(st.sampled_from(POOL), max_size=2, unique=True), label="ips"))
        if p.host_network:
            ips = (p.host_ip,)
        self.model.set_pod_ips(p, ips)
        self.upsert("pods", p.obj())
        self.sweep()

    @precondition(lambda self: any(p.phase == "Running" for p in self.model.pods.values()))
    @rule(data=st.data())
    def pod_finishes(self, data: st.DataObject) -> None:
        """Phase Succeeded/Failed, with its containers' finishedAt or (a lost container) without."""
        self.tick()
        p = self.model.pods[data.draw(st.sampled_from(self.running()), label="pod")]
        fin = self.fin_time(data, p) if data.draw(st.booleans(), label="with finishedAt") else None
        if fin is None and p.fin is not None and data.draw(st.booleans()):
            fin = p.fin   # the containers had all terminated already
        self.model.finish_pod(p, data.draw(st.sampled_from(("Succeeded", "Failed")), label="phase"), fin)
        self.upsert("pods", p.obj())
        self.sweep()

    @precondition(lambda self: any(p.phase == "Running" and p.fin is None for p in self.model.pods.values()))
    @rule(data=st.data())
    def pod_containers_terminate(self, data: st.DataObject) -> None:
        """Phase still Running, every container terminated (graceful deletion under way)."""
        self.tick()
        names = sorted(n for n, p in self.model.pods.items() if p.phase == "Running" and p.fin is None)
        p = self.model.pods[data.draw(st.sampled_from(names), label="pod")]
        self.model.containers_done(p, self.fin_time(data, p))
        self.upsert("pods", p.obj())
        self.sweep()

    @precondition(lambda self: any(p.phase != "Running" and p.indexed() for p in self.model.pods.values()))
    @rule(data=st.data())
    def finished_pod_drops_ips(self, data: st.DataObject) -> None:
        """A finished pod's sandbox is removed: its status lists no address any more."""
        self.tick()
        names = sorted(n for n, p in self.model.pods.items() if p.phase != "Running" and p.indexed())
        p = self.model.pods[data.draw(st.sampled_from(names), label="pod")]
        self.model.set_pod_ips(p, ())
        self.upsert("pods", p.obj())
        self.sweep()

    @precondition(lambda self: bool(self.model.pods))
    @rule(data=st.data())
    def delete_pod(self, data: st.DataObject) -> None:
        """DELETED, its final status saying (or not) when its containers all finished."""
        self.tick()
        p = self.model.pods[data.draw(st.sampled_from(sorted(self.model.pods)), label="pod")]
        if p.phase == "Running" and p.fin is None and data.draw(st.booleans(), label="final status finished"):
            p.fin = self.fin_time(data, p)
        self.model.delete_pod(p)
        self.delete("pods", p.obj())
        self.sweep()

    # nodes, services, replicasets

    @rule(name=st.sampled_from(NODE_NAMES),
          internal=st.lists(st.sampled_from(POOL), min_size=1, max_size=2, unique=True),
          external=st.lists(st.sampled_from(POOL), max_size=1),
          subnet=st.sampled_from((None, *SUBNETS)), zone=st.sampled_from(ZONES))
    def set_node(self, name: str, internal: list[str], external: list[str], subnet: str | None,
                 zone: str | None) -> None:
        self.tick()
        old = self.model.nodes.get(name)   # (an update keeps its uid and creation)
        n = MNode(name, tuple(internal), tuple(external), subnet, zone,
                  *((old.uid, old.created) if old else (f"n{next(self.uids)}",)))
        self.model.set_node(n)
        self.seen[name] = self.clock.ms
        self.upsert("nodes", self.node_obj(n))
        self.sweep()

    def recreated_at(self, data: st.DataObject, what: Any) -> int:
        """The creation of an object deleted and created again under its name, its DELETED not
        seen: up to 3 s ago (the watch was behind), after the old one's last event."""
        return max(self.clock.ms - 1000 * data.draw(st.integers(0, 3), label="created ago"), self.seen[what] + 1000)

    @precondition(lambda self: bool(self.model.nodes))
    @rule(data=st.data(), internal=st.lists(st.sampled_from(POOL), min_size=1, max_size=2, unique=True),
          external=st.lists(st.sampled_from(POOL), max_size=1),
          subnet=st.sampled_from((None, *SUBNETS)), zone=st.sampled_from(ZONES), relist=st.booleans())
    def recreate_node(self, data: st.DataObject, internal: list[str], external: list[str], subnet: str | None,
                      zone: str | None, relist: bool) -> None:
        """A Node deleted and registered again under its name (another uid) while the watch was
        down: the new one's ADDED, or a relist, is all the index sees."""
        self.tick()
        name = data.draw(st.sampled_from(sorted(self.model.nodes)), label="node")
        self.replaced[("nodes", name)] = self.node_obj(self.model.nodes[name])
        n = MNode(name, tuple(internal), tuple(external), subnet, zone, f"n{next(self.uids)}",
                  self.recreated_at(data, name))
        self.model.recreate_node(n)
        self.seen[name] = self.clock.ms
        if relist:
            self.idx.replace("nodes", [self.idx.parse("nodes", self.node_obj(x)) for x in self.model.nodes.values()])
        else:
            self.upsert("nodes", self.node_obj(n))
        self.sweep()

    @staticmethod
    def node_obj(n: MNode) -> dict[str, Any]:
        o = node(n.name, internal=list(n.internal), external=list(n.external), zone=n.zone,
                 subnets={"default": n.subnet} if n.subnet else None)
        if n.uid:
            o["metadata"]["uid"] = n.uid
        if n.created is not None:
            o["metadata"]["creationTimestamp"] = iso(n.created)
        return o

    def svc_obj(self, key: tuple[str, str], ips: tuple[str, ...]) -> dict[str, Any]:
        o = service(key[1], key[0], ips=list(ips))
        o["metadata"]["uid"], created = self.model.svc_meta[key]
        if created is not None:
            o["metadata"]["creationTimestamp"] = iso(created)
        return o

    @precondition(lambda self: bool(self.model.nodes))
    @rule(data=st.data())
    def delete_node(self, data: st.DataObject) -> None:
        self.tick()
        n = self.model.nodes[data.draw(st.sampled_from(sorted(self.model.nodes)), label="node")]
        self.model.delete_node(n.name)
        self.delete("nodes", self.node_obj(n))
        self.sweep()

    @rule(data=st.data(), key=st.sampled_from((("shop", "s0"), ("shop", "s1"), ("kube-system", "s0"))))
    def set_service(self, data: st.DataObject, key: tuple[str, str]) -> None:
        """ClusterIPs are unique among live Services (the API server's allocator)."""
        self.tick()
        taken = {ip for k, ips in self.model.services.items() if k != key for ip in ips}
        free = [ip for ip in POOL if ip not in taken]
        if not free:
            return
        ips = tuple(data.draw(st.lists(st.sampled_from(free), min_size=1, max_size=2, unique=True), label="ips"))
        self.model.set_service(key, ips, f"s{next(self.uids)}")
        self.seen[key] = self.clock.ms
        self.upsert("services", self.svc_obj(key, ips))
        self.sweep()

    @precondition(lambda self: bool(self.model.services))
    @rule(data=st.data(), relist=st.booleans())
    def recreate_service(self, data: st.DataObject, relist: bool) -> None:
        """A Service deleted and created again under its name (another uid; its old ClusterIPs
        free again) while the watch was down (as recreate_node)."""
        self.tick()
        key = data.draw(st.sampled_from(sorted(self.model.services)), label="service")
        taken = {ip for k, ips in self.model.services.items() if k != key for ip in ips}
        ips = tuple(data.draw(st.lists(st.sampled_from([ip for ip in POOL if ip not in taken]), min_size=1,
                                       max_size=2, unique=True), label="ips"))
        self.replaced[("services", key)] = self.svc_obj(key, self.model.services[key])
        self.model.recreate_service(key, ips, f"s{next(self.uids)}", self.recreated_at(data, key))
        self.seen[key] = self.clock.ms
        if relist:
            self.idx.replace("services", [self.idx.parse("services", self.svc_obj(k, v))
                                          for k, v in self.model.services.items()])
        else:
            self.upsert("services", self.svc_obj(key, ips))
        self.sweep()

    def stale(self) -> list[tuple[str, Any]]:
        """The replaced objects whose name a newer object holds now (their DELETED is stale)."""
        cached: dict[str, Any] = {"nodes": self.model.nodes, "services": self.model.services,
                                  "replicasets": self.model.rs}
        return sorted((k for k in self.replaced if k[1] in cached[k[0]]), key=repr)

    @precondition(lambda self: bool(self.stale()))
    @rule(data=st.data())
    def stale_delete(self, data: st.DataObject) -> None:
        """The DELETED of a Node (Service, ReplicaSet) deleted and created again under its name
        comes after the new one was seen (a watch resumed across a reconnect): deletes go by
        name, but this one is another object's (its uid): nothing changes (docs/collector.md)."""
        self.tick()
        kind, _ = what = data.draw(st.sampled_from(self.stale()), label="stale")
        self.delete(kind, self.replaced.pop(what))
        self.sweep()

    @precondition(lambda self: bool(self.model.services))
    @rule(data=st.data())
    def delete_service(self, data: st.DataObject) -> None:
        self.tick()
        key = data.draw(st.sampled_from(sorted(self.model.services)), label="service")
        obj = self.svc_obj(key, self.model.services[key])
        self.model.delete_service(key)
        self.delete("services", obj)
        self.sweep()

    @rule(key=st.sampled_from(RS_KEYS), dep=st.sampled_from((None, "web", "api")))
    def set_rs(self, key: tuple[str, str], dep: str | None) -> None:
        self.tick()
        uid = self.rs_uid(key)
        self.rs_next.pop(key, None)
        self.model.set_rs(key, dep, uid)
        self.upsert("replicasets", self.rs_obj(key))
        self.sweep()

    @precondition(lambda self: bool(self.model.rs))
    @rule(data=st.data(), relist=st.booleans())
    def recreate_rs(self, data: st.DataObject, relist: bool) -> None:
        """A ReplicaSet deleted and created again under its name (another uid, another owner:
        another Deployment or none) while the watch was down, its old pods still there: the
        new one's ADDED, or a relist, is all the index sees; new pods name the new one."""
        self.tick()
        key = data.draw(st.sampled_from(sorted(self.model.rs)), label="replicaset")
        dep = data.draw(st.sampled_from([d for d in (None, "web", "api") if d != self.model.rs[key]]), label="owner")
        self.replaced[("replicasets", key)] = self.rs_obj(key)
        self.rs_next.pop(key, None)
        self.model.recreate_rs(key, dep, f"r{next(self.uids)}")
        if relist:
            self.idx.replace("replicasets", [self.idx.parse("replicasets", self.rs_obj(k)) for k in sorted(self.model.rs)])
        else:
            self.upsert("replicasets", self.rs_obj(key))
        self.sweep()

    @precondition(lambda self: bool(self.model.rs))
    @rule(data=st.data())
    def delete_rs(self, data: st.DataObject) -> None:
        self.tick()
        key = data.draw(st.sampled_from(sorted(self.model.rs)), label="replicaset")
        obj = self.rs_obj(key)
        self.model.delete_rs(key)
        self.delete("replicasets", obj)
        self.sweep()

    # relist, clock

    @rule(data=st.data(), kind=st.sampled_from(("pods", "nodes", "services", "replicasets")))
    def relist(self, data: st.DataObject, kind: str) -> None:
        """A watch ended with 410 Gone: the relist lists a subset of what the index has (the
        others were deleted while the watch was down), unchanged."""
        self.tick()
        m = self.model
        keep: Any
        if kind == "pods":
            keep = data.draw(st.sets(st.sampled_from(sorted(m.pods))), label="kept") if m.pods else set()
            for name in sorted(set(m.pods) - keep):
                m.delete_pod(m.pods[name])
            objs = [m.pods[n].obj() for n in sorted(keep)]
        elif kind == "nodes":
            keep = data.draw(st.sets(st.sampled_from(sorted(m.nodes))), label="kept") if m.nodes else set()
            for name in [n for n in m.nodes if n not in keep]:   # (in the index's order: its cache's)
                m.delete_node(name)
            objs = [self.node_obj(m.nodes[n]) for n in sorted(keep)]
        elif kind == "services":
            keep = data.draw(st.sets(st.sampled_from(sorted(m.services))), label="kept") if m.services else set()
            for key in [k for k in m.services if k not in keep]:
                m.delete_service(key)
            objs = [self.svc_obj(k, v) for k, v in sorted(m.services.items())]
        else:
            keep = data.draw(st.sets(st.sampled_from(sorted(m.rs))), label="kept") if m.rs else set()
            for key in sorted(set(m.rs) - keep):
                m.delete_rs(key)
            objs = [self.rs_obj(k) for k in sorted(m.rs)]
        self.idx.replace(kind, [self.idx.parse(kind, o) for o in objs])
        self.sweep()

    @rule(seconds=st.integers(1, TTL_S + 5))
    def advance(self, seconds: int) -> None:
        """Time passes; the periodic sweep forgets tombstones older than tombstone_seconds."""
        self.clock.ms += seconds * 1000
        self.idx.sweep()
        self.sweep()

    # queries

    def check(self, src: str, dst: str, agent: str, t: int, direction: int) -> None:
        want = self.model.flows(src, dst, agent, t, direction)
        readers = [("python", self.idx.enrich)]
        if self.idx.compiled:
            readers.append(("compiled", self.idx.enrich_fn))
        for what, fn in readers:
            frag = fn(raw(src), raw(dst), raw(agent), t, direction)
            got = orjson.loads(b"{" + frag[1:] + b"}") if frag else {}
            assert got in want, (f"{what} reader: flow {src or '-'} -> {dst or '-'} agent {agent or '-'} "
                                 f"at now{(t - self.clock.ms) / 1000:+.3f}s dir {direction}:\n"
                                 f"  index {got}\n  model {want}")

    @rule(src=st.sampled_from((*POOL, OUTSIDE, "")), dst=st.sampled_from((*POOL, OUTSIDE, "")),
          agent=st.sampled_from((*POOL, OUTSIDE, "")), ago_ms=st.integers(0, TTL_S * 1000),
          direction=st.sampled_from((-1, 0, 1)))
    def query(self, src: str, dst: str, agent: str, ago_ms: int, direction: int) -> None:
        self.check(src, dst, agent, self.clock.ms - ago_ms, direction)

    @invariant()
    def every_address_agrees(self) -> None:
        """Each address, alone, now and at a few past times within the tombstone window."""
        now = self.clock.ms
        for ip in POOL:
            for t in (now, now - 500, now - 1500, now - 4000, now - TTL_S * 500, now - TTL_S * 1000):
                self.check(ip, "", "", t, -1)


IndexMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_index_against_model = IndexMachine.TestCase


@pytest.mark.skipif(not _compiled_built(), reason="enrich._fast not built")
def test_both_readers_are_compared() -> None:
    """The machine compares the compiled reader too when it is built (not only Python's)."""
    assert IndexMachine().idx.compiled


# ---------------------------------------------------------------- regressions (minimal examples)


def _index(clock: Clock) -> Index:
    return Index(clock=clock, tombstone_seconds=TTL_S, own_namespace=OWN_NS, compiled=_compiled_built())


def _src(idx: Index, ip: str, t: int) -> list[tuple[str, str]]:
    """(Name, Type) of the source on each reader."""
    out = []
    for fn in (idx.enrich, idx.enrich_fn):
        frag = fn(raw(ip), b"", b"", t, -1)
        got = orjson.loads(b"{" + frag[1:] + b"}")
        out.append((got.get("SrcK8S_Name", ""), got.get("SrcK8S_Type", "")))
    return out


def test_a_sole_live_pod_does_not_hide_the_service_or_node_before_it_got_the_address() -> None:
    """Lookup order per flow time: for the flow times no pod held an address, the Node or
    Service that has it answers. A pod that got the address with no earlier holder answered
    for every flow time, also before it existed (it was the only link of its chain, and that
    link skipped the time check), while the same pod after a tombstone gave those flows to the
    Service; found by the model test (a pod created at T, a Service on its address, a flow at
    T - 1.5 s)."""
    for kind in ("services", "nodes"):
        clock = Clock(T0)
        idx = _index(clock)
        obj = (service("s0", "shop", ips=["10.0.0.1"]) if kind == "services"
               else node("node-x", internal=["10.0.0.1"]))
        idx.upsert(kind, idx.parse(kind, obj))
        clock.ms = T0 + 10_000
        idx.upsert("pods", idx.parse("pods", pod("p2", "shop", ips=["10.0.0.1"], node="node-b", host_ip="10.0.0.4",
                                                  uid="u-p2", created=iso(T0 + 10_000))))
        want = ("s0", "Service") if kind == "services" else ("node-x", "Node")
        assert _src(idx, "10.0.0.1", T0 + 8_500) == [want, want], kind
        assert _src(idx, "10.0.0.1", T0 + 10_000) == [("p2", "Pod")] * 2, kind
        assert _src(idx, "10.0.0.1", T0 + 60_000) == [("p2", "Pod")] * 2, kind
        # the same once the index is rebuilt whole (a relist)
        idx.replace("pods", [idx.parse("pods", pod("p2", "shop", ips=["10.0.0.1"], node="node-b",
                                                    host_ip="10.0.0.4", uid="u-p2", created=iso(T0 + 10_000)))])
        assert _src(idx, "10.0.0.1", T0 + 8_500) == [want, want], kind
        assert _src(idx, "10.0.0.1", T0 + 10_500) == [("p2", "Pod")] * 2, kind


def test_a_deleted_pod_holds_no_address_after_its_containers_finished_whatever_its_start() -> None:
    """A pod's hold ends when its final status says its containers all finished, whether it is
    seen Succeeded first or only in its DELETED event. A pod given an address while another
    still held it holds it from when that was seen (later than its status' start); deleted
    with a final status whose finishedAt fell before that, it was taken to hold the address
    until the delete was seen, and so took the flows of the pod still holding it (the same
    pod seen Succeeded first did not: that path compared finishedAt with the status' start).
    Found by the model test."""
    for how in ("deleted", "succeeded then deleted"):
        clock = Clock(T0)
        idx = _index(clock)

        def p0(**kw: Any) -> dict[str, Any]:
            o = pod("p0", "shop", node="node-a", host_ip="10.0.0.1", uid="u-p0", created=iso(T0 + 3_000), **kw)
            if kw.get("ips"):
                o["status"]["containerStatuses"] = [
                    {"name": "c", "state": {"terminated": {"exitCode": 0, "finishedAt": iso(T0 + 4_000)}}}]
            return o

        clock.ms = T0 + 3_000
        idx.upsert("pods", idx.parse("pods", p0()))          # Pending, no address yet
        clock.ms = T0 + 6_000
        idx.upsert("pods", idx.parse("pods", pod("p3", "shop", ips=["10.0.0.2"], node="node-a", host_ip="10.0.0.1",
                                                  uid="u-p3", created=iso(T0 + 6_000))))
        clock.ms = T0 + 7_000
        idx.upsert("pods", idx.parse("pods", pod("p0", "shop", ips=["10.0.0.2"], node="node-a", host_ip="10.0.0.1",
                                                  uid="u-p0", created=iso(T0 + 3_000))))
        clock.ms = T0 + 8_000
        if how != "deleted":
            idx.upsert("pods", idx.parse("pods", p0(ips=["10.0.0.2"], phase="Succeeded")))
        idx.delete("pods", idx.parse("pods", p0(ips=["10.0.0.2"], phase="Succeeded" if how != "deleted" else "Running")))
        assert _src(idx, "10.0.0.2", T0 + 7_500) == [("p3", "Pod")] * 2, how


def _finishing_p0(ips: list[str], phase: str) -> dict[str, Any]:
    """Pod p0 with addresses `ips`, Running, or Succeeded with its container's finishedAt T0 + 9 s."""
    o = pod("p0", "shop", ips=ips, node="node-a", host_ip="10.0.0.1", uid="u-p0", created=iso(T0 + 1_000),
            phase=phase)
    if phase == "Succeeded":
        o["status"]["containerStatuses"] = [
            {"name": "c", "state": {"terminated": {"exitCode": 0, "finishedAt": iso(T0 + 9_000)}}}]
    return o


def test_a_finished_pod_that_drops_its_address_keeps_the_grace_of_its_finish_time() -> None:
    """finishedAt is written in whole seconds, so a finished pod answers for flows up to 999 ms
    after it (its lookup grace), listed or deleted. When its status then dropped the address
    (its sandbox removed) the tombstone kept the end but not the grace: a flow in that second
    went to nobody. Found by the model test."""
    clock = Clock(T0 + 10_000)
    idx = _index(clock)
    idx.upsert("pods", idx.parse("pods", _finishing_p0(["10.0.0.2"], "Running")))
    clock.ms = T0 + 12_000
    idx.upsert("pods", idx.parse("pods", _finishing_p0(["10.0.0.2"], "Succeeded")))
    assert _src(idx, "10.0.0.2", T0 + 9_500) == [("p0", "Pod")] * 2
    clock.ms = T0 + 13_000
    idx.upsert("pods", idx.parse("pods", _finishing_p0([], "Succeeded")))
    assert _src(idx, "10.0.0.2", T0 + 9_500) == [("p0", "Pod")] * 2
    assert _src(idx, "10.0.0.2", T0 + 10_000) == [("", "")] * 2


def test_a_pod_seen_finished_by_the_update_that_drops_its_address_keeps_the_grace_of_its_finish_time() -> None:
    """As above, the two in one update: a Running pod's next status seen is Succeeded with no
    address any more (its sandbox removed before the event was read: a watch behind, a relist).
    The tombstone ended at its finishedAt without that second's grace, so a flow in it went to
    nobody, which the pod kept for it when the address stayed listed."""
    for listed in (["10.0.0.2"], []):
        clock = Clock(T0 + 10_000)
        idx = _index(clock)
        idx.upsert("pods", idx.parse("pods", _finishing_p0(["10.0.0.2"], "Running")))
        clock.ms = T0 + 12_000
        idx.upsert("pods", idx.parse("pods", _finishing_p0(listed, "Succeeded")))
        assert _src(idx, "10.0.0.2", T0 + 8_500) == [("p0", "Pod")] * 2, listed
        assert _src(idx, "10.0.0.2", T0 + 9_500) == [("p0", "Pod")] * 2, listed
        assert _src(idx, "10.0.0.2", T0 + 10_000) == [("", "")] * 2, listed
