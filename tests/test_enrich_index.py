"""The IP -> identity index and `enrich()` output, built from plain API objects (no server).

Covers the NetObserv parity rules (owners, host network, management port, services, dual stack,
FlowDirection, K8S_FlowLayer), IP reuse resolved by flow start time, bad input, and the config
and CLI entry points the collector wires in.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import sys
import time
from typing import Any

import orjson
import pytest

import enrich
from enrich.index import ZONE_LABEL, PodRec, gateway_router_ips, management_port_ips
from tests.support.fake_kube import node, pod, replicaset, service

T0 = 1_700_000_000_000  # ms; objects below are created around here


def clock_ms(e: enrich.Enricher) -> int:
    """Now on the index's clock, in ms: a flow start before the changes the test makes next."""
    return int(e.index._clock() * 1000)


def just_after(e: enrich.Enricher) -> int:
    """A flow start 1 ms after every change the index applied so far, on its clock: a Node or
    Service that stopped holding an address is no holder of it for such a flow, while it stays
    one for the flows that started before (a tombstone), as pods do. (A start in 2100, as these
    tests had, could not tell a tombstone that ended at the change from one that never ends
    before its expiry.)"""
    return clock_ms(e) + 1
# What an address of nobody gives: no identity, and the layer "app" (no side is infrastructure).
NOBODY = {"K8S_FlowLayer": "app"}


def _compiled_built() -> bool:
    try:
        from enrich import _fast  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(autouse=True, params=["python", "compiled"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test on the pure-Python reader and on the compiled one (enrich/_fast.pyx)."""
    if request.param == "compiled" and not _compiled_built():
        pytest.skip("enrich._fast not built (python setup.py build_ext --inplace)")
    compiled = request.param == "compiled"
    # Enricher passes its own `compiled` (None: the compiled reader when built) to the Index:
    # its defaults too, or every enricher built here gets the compiled reader
    for fn in (enrich.index.Index.__init__, enrich.Enricher.__init__, enrich.Enricher.from_objects.__func__):
        kw = dict(fn.__kwdefaults__)
        kw["compiled"] = compiled
        monkeypatch.setattr(fn, "__kwdefaults__", kw)
    return request.param


def test_each_parametrization_builds_its_own_reader(implementation: str) -> None:
    """The fixture's reader is the one the enrichers below get (Enricher.from_objects passes its
    own `compiled` to the Index: patching the Index's default alone gave "python" the compiled one)."""
    assert (build([]).index._reader is not None) == (implementation == "compiled")


def raw(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed if ip else b""


def iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def flow(e: enrich.Enricher, src: str, dst: str, agent: str = "", t_ms: int = 0, direction: int = -1) -> dict[str, Any]:
    frag = e.enrich(raw(src), raw(dst), raw(agent), t_ms, direction)
    if frag:
        assert frag.startswith(b",")
    return orjson.loads(b"{" + frag[1:] + b"}") if frag else {}


def side(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


NODES = [
    node("node-a", internal=["10.0.0.1", "fd00::1"], external=["203.0.113.1"], zone="zone-a",
         subnets={"default": ["10.244.0.0/24", "fd00:10:244:1::/64"]}),
    node("node-b", internal=["10.0.0.2"], zone="zone-b", subnets={"default": "10.244.1.0/24"}),
]
RS = [replicaset("web-6d4cf56db6", "shop", owner=("Deployment", "web")),
      replicaset("orphan-rs", "shop", owner=None)]


def build(pods: list[dict[str, Any]] = (), services: list[dict[str, Any]] = (), **cfg: Any) -> enrich.Enricher:  # type: ignore[assignment]
    clock = cfg.pop("clock", None)
    cfg.setdefault("own_namespace", "netobserv")
    return enrich.Enricher.from_objects(pods=pods, nodes=NODES, services=services, replicasets=RS,
                                        config=enrich.EnrichConfig(**cfg), clock=clock)


# ---------------------------------------------------------------- identities

def test_pod_identity_with_deployment_owner() -> None:
    e = build([pod("web-6d4cf56db6-x1", "shop", ips=["10.244.0.5"], owner=("ReplicaSet", "web-6d4cf56db6"))],
              cluster_name="prod-eu")
    assert flow(e, "10.244.0.5", "") == {
        "SrcK8S_Name": "web-6d4cf56db6-x1", "SrcK8S_Namespace": "shop", "SrcK8S_Type": "Pod",
        "SrcK8S_OwnerName": "web", "SrcK8S_OwnerType": "Deployment", "SrcK8S_HostIP": "10.0.0.1",
        "SrcK8S_HostName": "node-a", "SrcK8S_Zone": "zone-a", "K8S_ClusterName": "prod-eu", "K8S_FlowLayer": "app",
    }
    # The fragment's key order is fixed (Src block, Dst block, cluster, layer, direction).
    frag = e.enrich(b"", raw("10.244.0.5"), b"", 0, 0)
    assert frag == (b',"DstK8S_Name":"web-6d4cf56db6-x1","DstK8S_Namespace":"shop","DstK8S_Type":"Pod",'
                    b'"DstK8S_OwnerName":"web","DstK8S_OwnerType":"Deployment","DstK8S_HostIP":"10.0.0.1",'
                    b'"DstK8S_HostName":"node-a","DstK8S_Zone":"zone-a","K8S_ClusterName":"prod-eu",'
                    b'"K8S_FlowLayer":"app","FlowDirection":0')


@pytest.mark.parametrize("owner,expected", [
    (("StatefulSet", "db"), ("db", "StatefulSet")),
    (("DaemonSet", "agent"), ("agent", "DaemonSet")),
    (("Job", "nightly-28374"), ("nightly-28374", "Job")),
    (None, ("solo", "Pod")),
    (("ReplicaSet", "orphan-rs"), ("orphan-rs", "ReplicaSet")),     # RS without owner stays
    (("ReplicaSet", "unknown-rs"), ("unknown-rs", "ReplicaSet")),   # RS not (yet) in cache
    (("VirtualMachineInstance", "vm1"), ("vm1", "VirtualMachineInstance")),  # unknown kinds pass through
])
def test_owner_kinds(owner: tuple[str, str] | None, expected: tuple[str, str]) -> None:
    e = build([pod("solo", "shop", ips=["10.244.0.6"], owner=owner)])
    got = flow(e, "10.244.0.6", "")
    assert (got["SrcK8S_OwnerName"], got["SrcK8S_OwnerType"]) == expected
    # an owner kind Kubernetes itself does not make is published as it is, and counted, not as
    # bad input
    other = owner is not None and owner[0] == "VirtualMachineInstance"
    assert e.stats()["index"]["other_owner_kinds"] == (1 if other else 0)
    assert e.stats()["problems"] == {}


def test_replicaset_owned_by_something_else_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A ReplicaSet owned by other than a Deployment (an Argo Rollout) names its owner, as
    NetObserv does; flowscope counts the distinct such kinds and logs each once, at info level
    (operators' pods are normal, not bad input)."""
    with caplog.at_level(logging.INFO, logger="flowscope.enrich"):
        e = enrich.Enricher.from_objects(
            pods=[pod("r-1", "shop", ips=["10.244.0.7"], owner=("ReplicaSet", "ro-7f")),
                  pod("r-2", "shop", ips=["10.244.0.8"], owner=("ReplicaSet", "ro-7f"))],
            nodes=NODES, services=[], replicasets=[*RS, replicaset("ro-7f", "shop", owner=("Rollout", "ro"))],
            config=enrich.EnrichConfig(own_namespace="netobserv"))
    got = flow(e, "10.244.0.7", "")
    assert (got["SrcK8S_OwnerName"], got["SrcK8S_OwnerType"]) == ("ro", "Rollout")
    assert e.stats()["problems"] == {} and e.stats()["index"]["other_owner_kinds"] == 1
    assert sum("owner kind Rollout" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records) == 1


def test_a_deleted_replicaset_or_node_keeps_naming_the_deployment_and_zone_of_its_remaining_pods() -> None:
    """Deleting a Deployment (kubectl delete, a namespace torn down) deletes its ReplicaSet
    before the garbage collector deletes the pods, which then take their grace period to stop;
    a Node is deleted while its DaemonSet pods wait for the pod garbage collector. Those pods
    still belong to the Deployment and still run in that zone: their last flows, and the late
    flows their tombstones answer, keep the Deployment and the zone (not the ReplicaSet's name
    and no zone), until the ReplicaSet or Node comes back, or the pods are gone."""
    clock = Clock(T0)
    web = pod("web-6d4cf56db6-x1", "shop", ips=["10.244.0.5"], owner=("ReplicaSet", "web-6d4cf56db6"), uid="u-w",
              created=iso(T0 - 60_000))
    b1 = pod("b1", "shop", ips=["10.244.1.5"], node="node-b", host_ip="10.0.0.2", owner=("DaemonSet", "agent"),
             uid="u-b", created=iso(T0 - 60_000))

    def owner_zone(addr: str, t_ms: int = 0) -> tuple[str, str, str]:
        got = side(flow(e, addr, "", t_ms=t_ms), "SrcK8S_")
        return got.get("OwnerName", ""), got.get("OwnerType", ""), got.get("Zone", "")

    for how in ("watch", "relist"):
        e = build([web, b1], clock=clock)
        idx = e.index
        clock.ms = T0
        if how == "watch":
            idx.delete("replicasets", idx.parse("replicasets", RS[0]))
            idx.delete("nodes", idx.parse("nodes", NODES[1]))
        else:
            idx.replace("replicasets", [idx.parse("replicasets", RS[1])])
            idx.replace("nodes", [idx.parse("nodes", NODES[0])])
        assert owner_zone("10.244.0.5") == ("web", "Deployment", "zone-a"), how
        assert owner_zone("10.244.1.5") == ("agent", "DaemonSet", "zone-b"), how
        assert idx.kind_count("replicasets") == 1 and idx.kind_count("nodes") == 1, how
        # The pods change (their status lists a second host address) and web's node changes
        # zone: they are rendered again, with what their ReplicaSet and Node last said.
        web_t = pod("web-6d4cf56db6-x1", "shop", ips=["10.244.0.5"], owner=("ReplicaSet", "web-6d4cf56db6"),
                    uid="u-w", created=iso(T0 - 60_000), host_ips=["10.0.0.1", "fd00::1"])
        b1_t = pod("b1", "shop", ips=["10.244.1.5"], node="node-b", host_ip="10.0.0.2", owner=("DaemonSet", "agent"),
                   uid="u-b", created=iso(T0 - 60_000), host_ips=["10.0.0.2", "fd00::2"])
        for p in (web_t, b1_t):
            idx.upsert("pods", idx.parse("pods", p))
        idx.upsert("nodes", idx.parse("nodes", node("node-a", internal=["10.0.0.1"], zone="zone-c")))
        assert owner_zone("10.244.0.5") == ("web", "Deployment", "zone-c"), how
        assert owner_zone("10.244.1.5") == ("agent", "DaemonSet", "zone-b"), how
        # Deleted: their tombstones answer with the same.
        clock.ms = T0 + 30_000
        idx.delete("pods", idx.parse("pods", web_t))
        idx.delete("pods", idx.parse("pods", b1_t))
        assert owner_zone("10.244.0.5", T0 + 10_000) == ("web", "Deployment", "zone-c"), how
        assert owner_zone("10.244.1.5", T0 + 10_000) == ("agent", "DaemonSet", "zone-b"), how
        # Nothing is kept for them any more: a pod of the same names later gets what the cache has.
        idx.upsert("pods", idx.parse("pods", pod("web-6d4cf56db6-x2", "shop", ips=["10.244.0.6"],
                                                 owner=("ReplicaSet", "web-6d4cf56db6"), uid="u-w2")))
        idx.upsert("pods", idx.parse("pods", pod("b2", "shop", ips=["10.244.1.6"], node="node-b",
                                                 host_ip="10.0.0.2", uid="u-b2")))
        assert owner_zone("10.244.0.6") == ("web-6d4cf56db6", "ReplicaSet", "zone-c"), how
        assert owner_zone("10.244.1.6") == ("b2", "Pod", ""), how
        # The Node re-registers in another zone, the ReplicaSet comes back: theirs.
        idx.upsert("nodes", idx.parse("nodes", node("node-b", internal=["10.0.0.2"], zone="zone-d")))
        idx.upsert("replicasets", idx.parse("replicasets", RS[0]))
        assert owner_zone("10.244.0.6") == ("web", "Deployment", "zone-c"), how
        assert owner_zone("10.244.1.6") == ("b2", "Pod", "zone-d"), how


def test_pods_orphaned_from_a_deleted_replicaset_own_themselves() -> None:
    """`kubectl delete rs --cascade=orphan`: the garbage collector removes the pods'
    ownerReferences after the ReplicaSet is gone; the pods are their own owners from then on."""
    web = pod("web-6d4cf56db6-x1", "shop", ips=["10.244.0.5"], owner=("ReplicaSet", "web-6d4cf56db6"), uid="u-w")
    e = build([web])
    idx = e.index
    idx.delete("replicasets", idx.parse("replicasets", RS[0]))
    assert side(flow(e, "10.244.0.5", ""), "SrcK8S_")["OwnerType"] == "Deployment"
    idx.upsert("pods", idx.parse("pods", pod("web-6d4cf56db6-x1", "shop", ips=["10.244.0.5"], uid="u-w")))
    got = side(flow(e, "10.244.0.5", ""), "SrcK8S_")
    assert (got["OwnerName"], got["OwnerType"]) == ("web-6d4cf56db6-x1", "Pod")


def test_host_network_pod_resolves_to_node() -> None:
    e = build([pod("ovnkube-node-x", "openshift-ovn-kubernetes", ips=["10.0.0.2"], node="node-b",
                   host_ip="10.0.0.2", owner=("DaemonSet", "ovnkube-node"), host_network=True)])
    assert side(flow(e, "10.0.0.2", ""), "SrcK8S_") == {
        "Name": "node-b", "Type": "Node", "OwnerName": "node-b", "OwnerType": "Node",
        "HostIP": "10.0.0.2", "HostName": "node-b", "Zone": "zone-b"}
    assert e.stats()["index"]["pod_ips"] == 0


def test_dual_stack_host_network_pod_without_host_ips_resolves_to_node() -> None:
    """Before Kubernetes 1.28 (OpenShift 4.15) a dual-stack node's host-network pods list both
    node addresses in podIPs, but status.hostIP names only the IPv4 one and hostIPs is absent:
    spec.hostNetwork, not the hostIP comparison, says the addresses are the Node's."""
    p = pod("node-exporter-y", "monitoring", ips=["10.0.0.1", "fd00::1"], node="node-a", host_ip="10.0.0.1",
            owner=("DaemonSet", "node-exporter"), host_network=True)
    del p["status"]["hostIPs"]
    e = build([p])
    for addr in ("10.0.0.1", "fd00::1"):
        got = side(flow(e, addr, ""), "SrcK8S_")
        assert (got["Name"], got["Type"]) == ("node-a", "Node"), addr
    assert e.stats()["index"]["pod_ips"] == 0


def test_node_addresses_and_management_port() -> None:
    e = build()
    for addr in ("10.0.0.1", "fd00::1", "203.0.113.1", "10.244.0.2", "fd00:10:244:1::2"):
        got = flow(e, addr, "")
        assert (got["SrcK8S_Name"], got["SrcK8S_Type"], got["SrcK8S_HostIP"]) == ("node-a", "Node", "10.0.0.1"), addr
        assert "SrcK8S_Namespace" not in got
    assert flow(e, "10.244.1.2", "")["SrcK8S_Name"] == "node-b"
    assert flow(e, "10.244.1.3", "") == NOBODY
    assert flow(e, "10.244.0.1", "") == NOBODY


def test_a_node_registered_before_its_addresses_is_indexed_when_they_come() -> None:
    """With an external cloud provider the kubelet registers its Node before the cloud
    controller manager fills status.addresses (a Hostname only, or none) and the zone label:
    nothing is indexed for it and nothing counted as bad, its pods resolve meanwhile with their
    own hostIP, and the update that brings the addresses and the zone indexes the node and
    renders its pods with the zone."""
    bare = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ip-10-0-0-5.ec2.internal"},
            "status": {"addresses": [{"type": "Hostname", "address": "ip-10-0-0-5.ec2.internal"}]}}
    e = enrich.Enricher.from_objects(
        pods=[pod("a", "shop", ips=["10.244.5.5"], node="ip-10-0-0-5.ec2.internal", host_ip="10.0.0.5")],
        nodes=[bare], config=enrich.EnrichConfig(own_namespace="netobserv"))
    assert e.stats()["problems"] == {} and e.stats()["index"]["node_ips"] == 0
    assert flow(e, "10.0.0.5", "") == NOBODY
    got = side(flow(e, "10.244.5.5", ""), "SrcK8S_")
    assert (got["Name"], got["HostIP"], got["HostName"], "Zone" in got) == ("a", "10.0.0.5", "ip-10-0-0-5.ec2.internal",
                                                                             False)
    idx = e.index
    idx.upsert("nodes", idx.parse("nodes", node("ip-10-0-0-5.ec2.internal", internal=["10.0.0.5"], zone="us-east-1a")))
    assert side(flow(e, "10.0.0.5", ""), "SrcK8S_")["Type"] == "Node"
    assert side(flow(e, "10.244.5.5", ""), "SrcK8S_")["Zone"] == "us-east-1a"
    assert flow(e, "10.244.5.5", "10.244.9.9", agent="10.0.0.5")["FlowDirection"] == 1   # its node exported it


def test_management_port_annotation_shapes() -> None:
    assert management_port_ips('{"default":"10.244.0.0/24"}') == [raw("10.244.0.2")]
    # Only the cluster default network's subnets: user-defined networks (one key each) are
    # isolated, may overlap between nodes, and their management ports are not the node's.
    assert management_port_ips('{"default":["10.244.0.0/24","fd00:10:244:1::/64"],"ns1.blue":"10.1.0.0/16"}') == [
        raw("10.244.0.2"), raw("fd00:10:244:1::2")]
    assert management_port_ips('{"ns1.blue":"10.1.0.0/24"}') == []
    for bad in ("not json", '["10.0.0.0/24"]', '{"default": 5}', '{"default": ["300.1.1.0/24"]}'):
        with pytest.raises((ValueError, TypeError)):
            management_port_ips(bad)


def test_gateway_router_join_addresses_are_the_nodes() -> None:
    """An exporter on a node reaching the collector through its ClusterIP Service arrives from
    the node's gateway router join address (OVN-Kubernetes SNATs load-balanced traffic leaving
    the gateway router to its port address, 100.64.0.x / fd98::x): that address is the node's,
    for FlowDirection (the exporter's node) and for flows from it. Both annotation forms (the
    older per family, the newer per network: only the default network's)."""
    older = node("n1", internal=["10.0.0.1"], subnets={"default": "10.244.1.0/24"})
    older["metadata"]["annotations"]["k8s.ovn.org/node-gateway-router-lrp-ifaddr"] = (
        '{"ipv4":"100.64.0.2/16","ipv6":"fd98::2/64"}')
    newer = node("n2", internal=["10.0.0.2"], subnets={"default": "10.244.2.0/24"})
    newer["metadata"]["annotations"]["k8s.ovn.org/node-gateway-router-lrp-ifaddrs"] = (
        '{"default":{"ipv4":"100.64.0.3/16"},"ns1.blue":{"ipv4":"100.65.0.3/16"}}')
    pods = [pod("a", "shop", ips=["10.244.1.5"], node="n1", host_ip="10.0.0.1"),
            pod("b", "shop", ips=["10.244.2.6"], node="n2", host_ip="10.0.0.2")]
    e = enrich.Enricher.from_objects(pods=pods, nodes=[older, newer], services=[],
                                     config=enrich.EnrichConfig(own_namespace=""))
    for addr, name in (("100.64.0.2", "n1"), ("fd98::2", "n1"), ("100.64.0.3", "n2")):
        got = side(flow(e, addr, ""), "SrcK8S_")
        assert (got["Name"], got["Type"], got["HostIP"]) == (name, "Node", "10.0.0.1" if name == "n1" else "10.0.0.2")
    assert flow(e, "100.65.0.3", "") == NOBODY          # a user-defined network's join address
    # the exporter seen through the Service: n1's join address; a -> b leaves n1 (egress), and
    # seen by n2's exporter it enters n2 (ingress)
    assert flow(e, "10.244.1.5", "10.244.2.6", agent="100.64.0.2")["FlowDirection"] == 1
    assert flow(e, "10.244.1.5", "10.244.2.6", agent="100.64.0.3")["FlowDirection"] == 0
    # an annotation that does not parse: counted, the join address it last gave stays
    cut = node("n1", internal=["10.0.0.1"], subnets={"default": "10.244.1.0/24"})
    cut["metadata"]["annotations"]["k8s.ovn.org/node-gateway-router-lrp-ifaddr"] = '{"ipv4":"100.64.'
    e.index.upsert("nodes", e.index.parse("nodes", cut))
    assert side(flow(e, "100.64.0.2", ""), "SrcK8S_")["Name"] == "n1"
    assert e.stats()["problems"] == {"bad_annotation": 1}


def test_one_malformed_ovn_annotation_keeps_only_its_own_last_good_addresses() -> None:
    """A node's OVN annotations are read one by one: one that does not parse is counted and keeps
    the addresses it last gave, and the others' addresses are read as they come. (All three shared
    one last-good value: a node first seen with a malformed gateway-router annotation had no
    management port, however good its node-subnets, until the annotation was mended.)"""
    gr = "k8s.ovn.org/node-gateway-router-lrp-ifaddr"

    def n1(subnets: Any, join: str) -> dict[str, Any]:
        o = node("n1", internal=["10.0.0.1"], subnets=subnets)
        o["metadata"]["annotations"][gr] = join
        return o

    # first seen with a malformed gateway-router annotation: the management port is the node's
    for bad in ('{"ipv4":"not-an-ip"}', "", "[1]"):
        e = enrich.Enricher.from_objects(nodes=[n1({"default": "10.244.1.0/24"}, bad)],
                                         config=enrich.EnrichConfig(own_namespace=""))
        assert side(flow(e, "10.244.1.2", ""), "SrcK8S_")["Name"] == "n1", bad
        assert e.stats()["problems"] == {"bad_annotation": 1}
    # first seen with a malformed node-subnets: the join address is the node's, no management port
    e = enrich.Enricher.from_objects(nodes=[n1('{"default":', '{"ipv4":"100.64.0.2/16"}')],
                                     config=enrich.EnrichConfig(own_namespace=""))
    assert side(flow(e, "100.64.0.2", ""), "SrcK8S_")["Name"] == "n1"
    assert flow(e, "10.244.1.2", "") == NOBODY
    # node-subnets turns malformed as the join address moves: the management port it gave stays,
    # the join address moves
    e = enrich.Enricher.from_objects(nodes=[n1({"default": "10.244.1.0/24"}, '{"ipv4":"100.64.0.2/16"}')],
                                     config=enrich.EnrichConfig(own_namespace=""))
    held = clock_ms(e) - 1
    e.index.upsert("nodes", e.index.parse("nodes", n1('{"default":', '{"ipv4":"100.64.0.9/16"}')))
    assert side(flow(e, "10.244.1.2", ""), "SrcK8S_")["Name"] == "n1"
    assert side(flow(e, "100.64.0.9", ""), "SrcK8S_")["Name"] == "n1"
    assert flow(e, "100.64.0.2", "", t_ms=just_after(e)) == NOBODY
    assert side(flow(e, "100.64.0.2", "", t_ms=held), "SrcK8S_")["Name"] == "n1"   # its flows of before
    # and mended: its own addresses again
    held = clock_ms(e) - 1
    e.index.upsert("nodes", e.index.parse("nodes", n1({"default": "10.244.7.0/24"}, '{"ipv4":"100.64.0.9/16"}')))
    assert side(flow(e, "10.244.7.2", ""), "SrcK8S_")["Name"] == "n1"
    assert flow(e, "10.244.1.2", "", t_ms=just_after(e)) == NOBODY
    assert side(flow(e, "10.244.1.2", "", t_ms=held), "SrcK8S_")["Name"] == "n1"


def test_gateway_router_annotation_shapes() -> None:
    assert gateway_router_ips('{"ipv4":"100.64.0.5/16"}', False) == [raw("100.64.0.5")]
    assert gateway_router_ips('{"ipv4":"100.64.0.5/16","ipv6":"fd98::5/64"}', False) == [
        raw("100.64.0.5"), raw("fd98::5")]
    assert gateway_router_ips('{"default":{"ipv4":"100.64.0.4/16"},"red":{"ipv4":"100.65.0.4/16"}}', True) == [
        raw("100.64.0.4")]
    assert gateway_router_ips('{"default":"100.64.0.3/16"}', True) == [raw("100.64.0.3")]
    assert gateway_router_ips('{"red":{"ipv4":"100.65.0.4/16"}}', True) == []
    for bad, plural in (("not json", False), ('["100.64.0.2/16"]', False), ('{"ipv4": 5}', False),
                        ('{"ipv4":"100.64.0.300/16"}', False), ('{"default": 7}', True)):
        with pytest.raises((ValueError, TypeError)):
            gateway_router_ips(bad, plural)


def test_service_cluster_ips_dual_stack_and_headless() -> None:
    svc = service("api", "shop", ips=["172.30.0.10", "fd00:172:30::10"])
    headless = {"metadata": {"name": "hl", "namespace": "shop"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}}
    e = build(services=[svc, headless])
    for addr in ("172.30.0.10", "fd00:172:30::10"):
        assert side(flow(e, "", addr), "DstK8S_") == {
            "Name": "api", "Namespace": "shop", "Type": "Service", "OwnerName": "api", "OwnerType": "Service"}
    assert e.stats()["index"]["service_ips"] == 2


def test_only_cluster_ips_are_a_services_addresses() -> None:
    """DESIGN.md indexes Service ClusterIPs (as NetObserv does): a LoadBalancer's ingress
    addresses (a cloud balancer's, outside the cluster; MetalLB shares one between Services) and
    spec.externalIPs (an address some node answers for) name no Service, and an ExternalName
    Service (a DNS name, no clusterIP) has no address at all."""
    lb = service("front", "shop", ips=["172.30.0.20"])
    lb["spec"].update(type="LoadBalancer", externalIPs=["192.0.2.10"], loadBalancerIP="192.0.2.30")
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.20", "ipMode": "VIP"}, {"hostname": "lb.example.com"}]}}
    ext = {"metadata": {"name": "db", "namespace": "shop"},
           "spec": {"type": "ExternalName", "externalName": "db.example.com"}}
    e = build(services=[lb, ext])
    assert side(flow(e, "", "172.30.0.20"), "DstK8S_")["Name"] == "front"
    for addr in ("192.0.2.10", "192.0.2.20", "192.0.2.30"):
        assert flow(e, "", addr) == NOBODY, addr
    assert e.stats()["index"]["service_ips"] == 1
    assert e.stats()["problems"] == {}


def test_the_first_owner_reference_is_the_owner_even_when_a_later_one_is_the_controller() -> None:
    """DESIGN.md: the owner is ownerReferences[0] (NetObserv's rule), not the one marked
    controller: a pod an operator also made owned by another object keeps the first one."""
    p = pod("w-1", "shop", ips=["10.244.0.61"])
    p["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "uid": "u-cm"},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d4cf56db6", "uid": "u-rs", "controller": True}]
    got = flow(build([p]), "10.244.0.61", "")
    assert (got["SrcK8S_OwnerName"], got["SrcK8S_OwnerType"]) == ("settings", "ConfigMap")


def test_a_deleted_event_for_an_object_never_seen_changes_nothing() -> None:
    """A DELETED for an object the cache does not hold (no conforming API server sends one: a
    watch resumes from the resourceVersion of the list or event applied last; a proxy replaying
    a stream, or a pod already deleted and swept, may) is a no-op for every kind: no tombstone,
    no count, nobody named; a MODIFIED for one is its ADDED (as client-go's informers take it)."""
    e = build([pod("web-1", "shop", ips=["10.244.0.5"], uid="u-web")], services=[service("api", "shop", ips=["172.30.0.10"])])
    idx = e.index
    before = e.stats()["index"]
    for kind, obj in (("pods", pod("ghost", "shop", ips=["10.244.0.9"], uid="u-ghost")),
                      ("nodes", node("node-z", internal=["10.0.0.9"])),
                      ("services", service("gone", "shop", ips=["172.30.0.99"])),
                      ("replicasets", replicaset("gone-7f", "shop", owner=("Deployment", "gone")))):
        idx.delete(kind, idx.parse(kind, obj))
    assert e.stats()["index"] == before and e.stats()["problems"] == {}
    for addr in ("10.244.0.9", "10.0.0.9", "172.30.0.99"):
        assert flow(e, addr, "") == NOBODY, addr
    assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-1"
    idx.upsert("pods", idx.parse("pods", pod("late", "shop", ips=["10.244.0.8"], uid="u-late")))
    assert flow(e, "10.244.0.8", "")["SrcK8S_Name"] == "late" and idx.kind_count("pods") == 2


def test_two_services_on_one_cluster_ip_the_one_left_answers() -> None:
    """ClusterIPs are unique among live Services, but the cache can hold two on one address for a
    while: a Service deleted and another created with its address whose events come out of order
    (two watch streams after a relist, or a relist that saw both). Deleting either must leave the
    other answering; the index forgot the address when the one it named last went, though the
    other still listed it."""
    def who(e: enrich.Enricher) -> str:
        return str(flow(e, "", "172.30.0.10", t_ms=just_after(e)).get("DstK8S_Name", ""))

    old = service("old", "shop", ips=["172.30.0.10"])
    new = service("new", "shop", ips=["172.30.0.10", "fd00:172:30::10"])
    for first_gone in ("old", "new"):
        e = build(services=[old])
        idx = e.index
        idx.upsert("services", idx.parse("services", new))
        assert who(e) == "new", first_gone          # the newest to list it answers
        gone, left = (old, "new") if first_gone == "old" else (new, "old")
        idx.delete("services", idx.parse("services", gone))
        assert who(e) == left, first_gone
        assert e.stats()["index"]["service_ips"] == (2 if left == "new" else 1), first_gone
        # A flow start after the first deletion (and so after `left` began to list the address)
        # and before the second: all of it can fall in one millisecond, where "1 ms before now"
        # was before `left` listed the address too, and the gone one's tombstone answered.
        gone_ms = clock_ms(e)
        while clock_ms(e) <= gone_ms + 1:
            time.sleep(0.001)
        held = clock_ms(e) - 1
        idx.delete("services", idx.parse("services", old if left == "old" else new))
        assert who(e) == "" and e.stats()["index"]["service_ips"] == 0, first_gone
        assert flow(e, "", "172.30.0.10", t_ms=held)["DstK8S_Name"] == left, first_gone   # its flows of before
    # An update that drops the address from one: the other answers; a relist without either.
    e = build(services=[old, new])
    idx = e.index
    idx.upsert("services", idx.parse("services", service("new", "shop", ips=["172.30.0.11"])))
    assert who(e) == "old"
    assert str(flow(e, "", "172.30.0.11").get("DstK8S_Name")) == "new"
    idx.replace("services", [idx.parse("services", service("new", "shop", ips=["172.30.0.11"]))])
    assert who(e) == ""


def test_dual_stack_pod() -> None:
    e = build([pod("dual", "shop", ips=["10.244.0.7", "fd00:10:244:1::7"], host_ip="10.0.0.1")])
    assert flow(e, "fd00:10:244:1::7", "")["SrcK8S_Name"] == "dual"
    assert flow(e, "10.244.0.7", "")["SrcK8S_Name"] == "dual"
    assert flow(e, "fd00:10:244:1::7", "fd00::1", agent="fd00::1") == {
        **{k: v for k, v in flow(e, "10.244.0.7", "").items()},
        **{"Dst" + k[3:]: v for k, v in flow(e, "10.0.0.1", "").items() if k.startswith("Src")},
        "FlowDirection": 2,
    }


def test_lookup_order_pod_then_node_then_service() -> None:
    # A pod IP also (mis)listed as a node address and a service IP: the pod wins, then the node.
    weird_node = node("node-c", internal=["10.244.0.9", "172.30.0.99"])
    svc = service("clash", "shop", ips=["172.30.0.99", "10.244.0.9"])
    e = enrich.Enricher.from_objects(pods=[pod("p", "shop", ips=["10.244.0.9"])], nodes=[*NODES, weird_node],
                                     services=[svc], config=enrich.EnrichConfig(own_namespace=""))
    assert flow(e, "10.244.0.9", "")["SrcK8S_Type"] == "Pod"
    assert flow(e, "172.30.0.99", "")["SrcK8S_Type"] == "Node"


def test_ipv4_mapped_and_non_canonical_address_text() -> None:
    """Addresses written by non-Go tooling: an IPv4-mapped IPv6 address (::ffff:a.b.c.d) of a
    node, pod or service is the IPv4 address, as flows and exporters carry it (the decoder maps
    a mapped exporter to IPv4 too); HostIP is published in canonical text (ipaddress's
    compressed form, lower case), as SrcAddr and AgentIP are."""
    n = node("n1", internal=["::ffff:10.0.0.7", "FD00:0000:0000::0007"], subnets={"default": "10.244.7.0/24"})
    pods = [pod("p", "shop", ips=["::ffff:10.244.7.5", "FD00:10:244:7:0:0:0:5"], node="n1",
                host_ip="FD00:0000:0000::0007"),
            pod("q", "shop", ips=["10.244.7.6"], node="n1", host_ip="::ffff:10.0.0.7"),
            pod("r", "shop", ips=["10.0.0.7"], node="n1", host_ip="::ffff:10.0.0.7")]  # host network
    svc = service("s", "shop", ips=["::ffff:172.30.7.1"])
    e = enrich.Enricher.from_objects(pods=pods, nodes=[n], services=[svc], config=enrich.EnrichConfig(own_namespace=""))
    got = side(flow(e, "10.0.0.7", ""), "SrcK8S_")
    assert (got["Name"], got["Type"], got["HostIP"]) == ("n1", "Node", "10.0.0.7")
    assert flow(e, "fd00::7", "")["SrcK8S_Name"] == "n1"
    assert flow(e, "10.244.7.5", "")["SrcK8S_HostIP"] == "fd00::7"
    assert flow(e, "fd00:10:244:7::5", "")["SrcK8S_Name"] == "p"
    assert flow(e, "10.244.7.6", "")["SrcK8S_HostIP"] == "10.0.0.7"
    assert flow(e, "", "172.30.7.1")["DstK8S_Name"] == "s"
    assert flow(e, "10.244.7.6", "8.8.8.8", agent="10.0.0.7").get("FlowDirection") == 1
    # nothing under a 16-byte mapped key: n1's 3 (with its management port), p's 2, q's, s's
    assert e.stats()["index"]["addresses"] == 7
    # a zone (fe80::1%eth0) is no API address (Kubernetes validation refuses one): counted,
    # never published in HostIP nor indexed without it (review helper-86)
    zoned = [pod("z", "shop", ips=["fd00:10:244:7::9%eth0"], node="n1", host_ip="FD00::7"),
             pod("y", "shop", ips=["10.244.7.10"], node="n1", host_ip="fd00::7%eth0")]
    e = enrich.Enricher.from_objects(pods=zoned, nodes=[n], config=enrich.EnrichConfig(own_namespace=""))
    assert "SrcK8S_Name" not in flow(e, "fd00:10:244:7::9", "")
    assert "SrcK8S_HostIP" not in flow(e, "10.244.7.10", "")
    assert e.stats()["problems"] == {"bad_address": 2}


# ---------------------------------------------------------------- IP reuse

def test_ip_reuse_is_resolved_by_flow_start_time() -> None:
    clock = Clock(T0)
    old = pod("old", "shop", ips=["10.244.0.30"], uid="u-old", created=iso(T0 - 3_600_000))
    e = build([old], clock=clock, tombstone_seconds=300)
    idx = e.index
    # The old pod is deleted at T0 + 10 s; the IP is given to a new pod created at T0 + 20 s.
    clock.ms = T0 + 10_000
    idx.delete("pods", idx.parse("pods", old))
    clock.ms = T0 + 20_000
    new = pod("new", "other", ips=["10.244.0.30"], uid="u-new", created=iso(T0 + 20_000))
    idx.upsert("pods", idx.parse("pods", new))

    assert flow(e, "10.244.0.30", "", t_ms=T0 + 5_000)["SrcK8S_Name"] == "old"      # before deletion
    assert flow(e, "", "10.244.0.30", t_ms=T0 + 9_999)["DstK8S_Name"] == "old"
    assert flow(e, "10.244.0.30", "", t_ms=T0 + 15_000) == NOBODY                         # nobody held it
    assert flow(e, "10.244.0.30", "", t_ms=T0 + 20_000)["SrcK8S_Name"] == "new"     # after reuse
    assert flow(e, "10.244.0.30", "", t_ms=T0 + 99_000)["SrcK8S_Namespace"] == "other"
    assert flow(e, "10.244.0.30", "", t_ms=0)["SrcK8S_Name"] == "new"               # unknown start: current
    # Both sides at once, each resolved at the same flow start.
    both = flow(e, "10.244.0.30", "10.244.0.30", t_ms=T0 + 1_000)
    assert (both["SrcK8S_Name"], both["DstK8S_Name"]) == ("old", "old")

    # After tombstone_seconds the old pod is forgotten.
    clock.ms = T0 + 10_000 + 300_001
    assert idx.sweep() == 1
    assert flow(e, "10.244.0.30", "", t_ms=T0 + 5_000)["SrcK8S_Name"] == "new"
    assert e.stats()["index"]["tombstones"] == 0


def test_ip_reuse_while_old_pod_object_lingers_finished() -> None:
    # A completed Job pod keeps its IP in status while a new pod already has the same IP.
    clock = Clock(T0)
    done = pod("job-x", "batch", ips=["10.244.0.31"], uid="u-job", owner=("Job", "x"),
               created=iso(T0 - 60_000), phase="Succeeded")
    e = build([done], clock=clock)
    clock.ms = T0 + 5_000
    e.index.upsert("pods", e.index.parse("pods", pod("web", "shop", ips=["10.244.0.31"], uid="u-web",
                                                      created=iso(T0 + 5_000))))
    assert flow(e, "10.244.0.31", "", t_ms=T0 - 1_000)["SrcK8S_Name"] == "job-x"
    assert flow(e, "10.244.0.31", "", t_ms=T0 + 1_000) == NOBODY  # finished at T0 (first seen so)
    assert flow(e, "10.244.0.31", "", t_ms=T0 + 6_000)["SrcK8S_Name"] == "web"


def test_pod_holds_an_address_from_when_it_got_it() -> None:
    """A pod admitted while its CNI had no free address (startTime set, no IP) gets the address
    a deleted pod freed: flows from before that belong to the old pod; from the old pod's end
    (nobody else can have held the address then), or from when the status says the new pod's
    network came up (condition PodReadyToStartContainers), to the new one."""
    for with_condition in (False, True):
        clock = Clock(T0)
        old = pod("old", "shop", ips=["10.244.0.30"], uid="u-old", created=iso(T0 - 3_600_000))
        waiting = pod("new", "other", uid="u-new", created=iso(T0 - 60_000), phase="Pending")
        waiting["status"]["startTime"] = iso(T0 - 59_000)
        e = build([old, waiting], clock=clock)
        idx = e.index
        clock.ms = T0 + 10_000
        idx.delete("pods", idx.parse("pods", old))
        clock.ms = T0 + 14_000          # the MODIFIED event arrives
        got = pod("new", "other", ips=["10.244.0.30"], uid="u-new", created=iso(T0 - 60_000))
        got["status"]["startTime"] = iso(T0 - 59_000)
        if with_condition:
            got["status"]["conditions"] = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": iso(T0 - 60_000)},
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": iso(T0 + 11_000)}]
        idx.upsert("pods", idx.parse("pods", got))
        assert flow(e, "10.244.0.30", "", t_ms=T0 + 5_000)["SrcK8S_Name"] == "old"
        assert flow(e, "10.244.0.30", "", t_ms=T0 + 9_900)["SrcK8S_Name"] == "old"
        # (with the condition: between the two, nobody held it)
        assert flow(e, "10.244.0.30", "", t_ms=T0 + 10_500).get("SrcK8S_Name") == (None if with_condition else "new")
        assert flow(e, "10.244.0.30", "", t_ms=T0 + 12_000).get("SrcK8S_Name") == "new"
        assert flow(e, "10.244.0.30", "", t_ms=T0 + 15_000)["SrcK8S_Name"] == "new"
        assert flow(e, "10.244.0.30", "", t_ms=0)["SrcK8S_Name"] == "new"
        # later MODIFIED noise (the status' older times) does not move the hold back
        idx.upsert("pods", idx.parse("pods", got))
        assert flow(e, "10.244.0.30", "", t_ms=T0 + 5_000)["SrcK8S_Name"] == "old"


def test_a_pod_given_a_held_address_starts_again_when_its_holder_turns_out_finished() -> None:
    """A pod given an address while another pod still lists it holds it from when that was
    seen; once the other pod's status says it finished earlier (Succeeded, all containers
    terminated: a Job pod that lingers and may never be deleted), the new pod holds it from
    then. A later address that nobody held does not move the start of one it already had back
    past another pod that is still alive."""
    def job(phase: str) -> dict[str, Any]:
        p = pod("j", "batch", ips=["10.244.0.70"], uid="u-j", owner=("Job", "j"), created=iso(T0 - 3_600_000),
                phase=phase)
        if phase == "Succeeded":
            p["status"]["containerStatuses"] = [{"name": "c", "state": {"terminated": {
                "exitCode": 0, "finishedAt": iso(T0 - 50_000)}}}]
        return p

    def new(ips: list[str] | None, phase: str = "Running") -> dict[str, Any]:
        p = pod("n", "shop", ips=ips, uid="u-n", created=iso(T0 - 60_000), phase=phase)
        p["status"]["startTime"] = iso(T0 - 55_000)
        return p

    clock = Clock(T0 - 100_000)
    e = build([job("Running"), new(None, "Pending")], clock=clock)
    idx = e.index
    clock.ms = T0
    idx.upsert("pods", idx.parse("pods", new(["10.244.0.70"])))   # j still looks alive
    assert flow(e, "10.244.0.70", "", t_ms=T0 - 20_000)["SrcK8S_Name"] == "j"
    idx.upsert("pods", idx.parse("pods", job("Succeeded")))       # ... it finished at T0-50s
    assert flow(e, "10.244.0.70", "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "j"
    assert flow(e, "10.244.0.70", "", t_ms=T0 - 20_000)["SrcK8S_Name"] == "n"

    # x alive with the address n is given; n then gets an IPv6 address nobody held
    clock = Clock(T0 - 100_000)
    x = pod("x", "shop", ips=["10.244.0.71"], uid="u-x", created=iso(T0 - 3_600_000))
    e = build([x, new(None, "Pending")], clock=clock)
    idx = e.index
    clock.ms = T0
    idx.upsert("pods", idx.parse("pods", new(["10.244.0.71"])))
    clock.ms = T0 + 1_000
    idx.upsert("pods", idx.parse("pods", new(["10.244.0.71", "fd00::71"])))
    assert flow(e, "10.244.0.71", "", t_ms=T0 - 30_000)["SrcK8S_Name"] == "x"
    assert flow(e, "10.244.0.71", "", t_ms=T0 + 500)["SrcK8S_Name"] == "n"


def test_recreated_sandbox_with_the_same_address_keeps_the_pods_earlier_flows() -> None:
    """OVN-Kubernetes keeps a pod's address through a recreated sandbox (a node reboot): the
    network-ready condition moves on, the address does not, so the pod held it all along. Its
    flows from before the restart stay its own although a finished Job pod held the address
    before it; a pod's new address is held from when the pod got it."""
    clock = Clock(T0)

    def web(ready_ms: int, ips: list[str]) -> dict[str, Any]:
        p = pod("web-0", "shop", ips=ips, owner=("StatefulSet", "web"), uid="u-web0", created=iso(T0 - 800_000))
        p["status"]["startTime"] = iso(T0 - 800_000)
        p["status"]["conditions"] = [{"type": "PodReadyToStartContainers", "status": "True",
                                      "lastTransitionTime": iso(ready_ms)}]
        return p

    job = pod("job-x", "batch", ips=["10.244.0.9"], owner=("Job", "j"), uid="u-jobx", created=iso(T0 - 1_000_000),
              phase="Succeeded")
    job["status"]["containerStatuses"] = [{"name": "c", "state": {"terminated": {
        "exitCode": 0, "startedAt": iso(T0 - 1_000_000), "finishedAt": iso(T0 - 900_000)}}}]
    e = build([job, web(T0 - 800_000, ["10.244.0.9"])], clock=clock)
    idx = e.index
    assert flow(e, "10.244.0.9", "", t_ms=T0 - 100_000)["SrcK8S_Name"] == "web-0"
    clock.ms = T0 + 10_000
    idx.upsert("pods", idx.parse("pods", web(T0, ["10.244.0.9"])))      # sandbox recreated at T0
    assert flow(e, "10.244.0.9", "", t_ms=T0 - 100_000)["SrcK8S_Name"] == "web-0"
    assert flow(e, "10.244.0.9", "", t_ms=T0 - 950_000)["SrcK8S_Name"] == "job-x"
    assert flow(e, "10.244.0.9", "", t_ms=T0 - 850_000) == NOBODY
    # an address it did not have is its own from the new network-ready time on
    clock.ms = T0 + 70_000
    idx.upsert("pods", idx.parse("pods", web(T0 + 60_000, ["10.244.0.9", "fd00:10:244::9"])))
    assert flow(e, "fd00:10:244::9", "", t_ms=T0 + 61_000)["SrcK8S_Name"] == "web-0"
    assert flow(e, "10.244.0.9", "", t_ms=T0 - 100_000)["SrcK8S_Name"] == "web-0"


def test_short_job_seen_pending_then_finished_keeps_its_flows() -> None:
    # The watch often sees a short Job go from Pending without an address straight to
    # Succeeded with one: its hold comes from its status (start .. containers' finishedAt),
    # not from when the event was seen (after it finished: an empty hold).
    clock = Clock(T0)
    old = pod("old", "shop", ips=["10.244.0.33"], uid="u-o", created=iso(T0 - 3_600_000))
    e = build([old], clock=clock)
    idx = e.index
    clock.ms = T0 + 10_000
    idx.delete("pods", idx.parse("pods", old))
    clock.ms = T0 + 60_000
    job = pod("job-1", "batch", uid="u-job", owner=("Job", "j"), created=iso(T0 + 59_000), phase="Pending")
    job["status"]["startTime"] = iso(T0 + 60_000)
    idx.upsert("pods", idx.parse("pods", job))
    clock.ms = T0 + 66_000
    done = pod("job-1", "batch", ips=["10.244.0.33"], uid="u-job", owner=("Job", "j"), created=iso(T0 + 59_000),
               phase="Succeeded")
    done["status"]["startTime"] = iso(T0 + 60_000)
    done["status"]["containerStatuses"] = [{"name": "c", "state": {"terminated": {
        "exitCode": 0, "startedAt": iso(T0 + 61_000), "finishedAt": iso(T0 + 63_000)}}}]
    idx.upsert("pods", idx.parse("pods", done))
    assert flow(e, "10.244.0.33", "", t_ms=T0 + 5_000)["SrcK8S_Name"] == "old"
    assert flow(e, "10.244.0.33", "", t_ms=T0 + 62_000)["SrcK8S_Name"] == "job-1"
    assert flow(e, "10.244.0.33", "", t_ms=T0 + 64_000) == NOBODY


def test_recreated_sandbox_takes_an_older_pods_address() -> None:
    # x is younger than a; x's sandbox is recreated with the address a held until 10 s before:
    # from a's end nobody else can have held it, so its flows from then are x's.
    clock = Clock(T0)
    a = pod("a", "shop", ips=["10.244.0.51"], uid="u-a", created=iso(T0 - 3_600_000))
    x = pod("x", "shop", ips=["10.244.0.50"], uid="u-x", created=iso(T0 - 1_800_000))
    e = build([x, a], clock=clock)
    idx = e.index
    clock.ms = T0 - 10_000
    idx.delete("pods", idx.parse("pods", a))
    clock.ms = T0
    idx.upsert("pods", idx.parse("pods", pod("x", "shop", ips=["10.244.0.51"], uid="u-x", created=iso(T0 - 1_800_000))))
    assert flow(e, "10.244.0.51", "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "a"
    assert flow(e, "10.244.0.51", "", t_ms=T0 - 10_500)["SrcK8S_Name"] == "a"
    assert flow(e, "10.244.0.51", "", t_ms=T0 - 5_000)["SrcK8S_Name"] == "x"
    assert flow(e, "10.244.0.51", "", t_ms=T0 + 1_000)["SrcK8S_Name"] == "x"
    assert flow(e, "10.244.0.50", "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "x"


def test_finished_pod_listed_later_held_its_address_until_it_finished() -> None:
    # The collector starts (lists) after a Job pod finished: the status' finishedAt, not the
    # list time, ends its hold, so the pod given the address since keeps its flows.
    clock = Clock(T0)
    done = pod("job-y", "batch", ips=["10.244.0.32"], uid="u-joby", owner=("Job", "y"), created=iso(T0 - 600_000),
               phase="Succeeded")
    done["status"]["containerStatuses"] = [
        {"name": "c", "state": {"terminated": {"exitCode": 0, "startedAt": iso(T0 - 590_000), "finishedAt": iso(T0 - 40_000)}}},
        {"name": "d", "state": {"terminated": {"exitCode": 0, "startedAt": iso(T0 - 590_000), "finishedAt": iso(T0 - 30_000)}}}]
    web = pod("web", "shop", ips=["10.244.0.32"], uid="u-web2", created=iso(T0 - 20_000))
    e = build([done, web], clock=clock)
    assert flow(e, "10.244.0.32", "", t_ms=T0 - 35_000)["SrcK8S_Name"] == "job-y"
    assert flow(e, "10.244.0.32", "", t_ms=T0 - 25_000) == NOBODY
    assert flow(e, "10.244.0.32", "", t_ms=T0 - 10_000)["SrcK8S_Name"] == "web"


@pytest.mark.parametrize("reuse_at", [None, 12_000, 10_950])
def test_a_finished_at_in_whole_seconds_covers_the_pods_last_second(reuse_at: int | None) -> None:
    """finishedAt is written in whole seconds: a container that stopped at 10.9 s reads 10 s.
    Flows that started in that last second are still the pod's (review helper-81: they had no
    identity); a pod given the address later in the same second holds it from its own start,
    the newer holder winning where both could have been."""
    import copy

    clock = Clock(T0)
    old = pod("cart", "shop", ips=["10.244.0.30"], uid="u-cart", created=iso(T0 - 3_600_000))
    e = build([old], clock=clock)
    idx = e.index
    final = copy.deepcopy(old)
    final["status"]["containerStatuses"] = [{"name": "c", "state": {"terminated": {
        "exitCode": 0, "startedAt": iso(T0 - 3_590_000), "finishedAt": iso(T0 + 10_900)}}}]
    from enrich.index import parse_time_ms

    assert parse_time_ms(final["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]) == T0 + 10_000
    clock.ms = T0 + 11_400
    idx.delete("pods", idx.parse("pods", final))
    if reuse_at is not None:
        clock.ms = T0 + reuse_at + 300
        idx.upsert("pods", idx.parse("pods", pod("web", "shop", ips=["10.244.0.30"], uid="u-web",
                                                  created=iso(T0 + reuse_at))))
    at = {t: flow(e, "10.244.0.30", "", t_ms=T0 + t).get("SrcK8S_Name") for t in (9_000, 10_100, 10_850, 11_100, 12_500)}
    if reuse_at is None:
        assert at == {9_000: "cart", 10_100: "cart", 10_850: "cart", 11_100: None, 12_500: None}
    elif reuse_at == 12_000:
        assert at == {9_000: "cart", 10_100: "cart", 10_850: "cart", 11_100: None, 12_500: "web"}
    else:   # "web" created at 10.95 s, which reads 10 s too: it holds the address from there
        assert at == {9_000: "cart", 10_100: "web", 10_850: "web", 11_100: "web", 12_500: "web"}


@pytest.mark.parametrize("field", ["initContainerStatuses", "ephemeralContainerStatuses"])
def test_finished_pod_held_its_address_until_its_sidecar_finished(field: str) -> None:
    """A native sidecar (an init container with restartPolicy Always, Kubernetes 1.29+) is
    reported in initContainerStatuses and stopped after the main containers: its last flows
    (a final flush) are the pod's. So are an ephemeral (debug) container's."""
    clock = Clock(T0 + 60_000)
    job = pod("job-1", "batch", ips=["10.244.0.60"], uid="u-j", owner=("Job", "j"), created=iso(T0 - 60_000),
              phase="Succeeded")
    job["spec"]["initContainers"] = [{"name": "log-shipper", "image": "x", "restartPolicy": "Always"}]
    job["status"]["containerStatuses"] = [{"name": "c", "state": {"terminated": {
        "exitCode": 0, "startedAt": iso(T0 - 55_000), "finishedAt": iso(T0)}}}]
    job["status"][field] = [{"name": "log-shipper", "state": {"terminated": {
        "exitCode": 0, "startedAt": iso(T0 - 58_000), "finishedAt": iso(T0 + 6_000)}}}]
    e = build([job], clock=clock)
    assert flow(e, "10.244.0.60", "", t_ms=T0 - 10_000)["SrcK8S_Name"] == "job-1"
    assert flow(e, "10.244.0.60", "", t_ms=T0 + 3_000)["SrcK8S_Name"] == "job-1"
    assert flow(e, "10.244.0.60", "", t_ms=T0 + 7_000) == NOBODY


def test_ended_pod_does_not_hide_the_node_holding_its_address() -> None:
    """EKS (VPC CNI) and AKS (Azure CNI) give pods and nodes addresses from one subnet: a node
    whose address a finished Job pod or a deleted pod held answers for flows outside their
    lives (lookup order Pod, Node, Service holds per flow time)."""
    clock = Clock(T0)
    job = pod("backup-1", "ops", ips=["192.168.5.20"], uid="u-b", owner=("Job", "backup"),
              created=iso(T0 - 600_000), phase="Succeeded")
    web = pod("web-1", "shop", ips=["192.168.5.21"], uid="u-w", created=iso(T0 - 600_000))
    e = build([job, web], clock=clock)
    idx = e.index
    clock.ms = T0 + 10_000
    idx.delete("pods", idx.parse("pods", web))
    clock.ms = T0 + 20_000
    idx.upsert("nodes", idx.parse("nodes", node("ip-192-168-5-20", internal=["192.168.5.20"],
                                                external=["192.168.5.21"], zone="z")))
    for addr in ("192.168.5.20", "192.168.5.21"):
        for t in (T0 + 120_000, 0):
            got = flow(e, addr, "", t_ms=t)
            assert (got["SrcK8S_Name"], got["SrcK8S_Type"]) == ("ip-192-168-5-20", "Node"), (addr, t)
    assert flow(e, "192.168.5.20", "", t_ms=T0 - 1_000)["SrcK8S_Name"] == "backup-1"
    assert flow(e, "192.168.5.21", "", t_ms=T0 + 5_000)["SrcK8S_Name"] == "web-1"
    # a live pod on a service's address still comes first
    e2 = build([pod("p", "shop", ips=["172.30.0.7"], uid="u-p", created=iso(T0 - 1_000))],
               services=[service("s", "shop", ips=["172.30.0.7"])], clock=Clock(T0))
    assert flow(e2, "172.30.0.7", "", t_ms=T0 + 1_000)["SrcK8S_Type"] == "Pod"


def test_running_pod_whose_ip_changes_keeps_both_by_time() -> None:
    """A running pod's sandbox is recreated with another address (MODIFIED, same uid), one that
    a deleted pod held until 10 s before: flows are attributed by start time on both addresses,
    and the pod's old address stays its own for earlier flows until tombstone_seconds."""
    clock = Clock(T0)
    x = pod("x", "shop", ips=["10.244.0.50"], uid="u-x", created=iso(T0 - 3_600_000))
    a = pod("a", "shop", ips=["10.244.0.51"], uid="u-a", created=iso(T0 - 1_800_000))
    e = build([x, a], clock=clock, tombstone_seconds=300)
    idx = e.index
    clock.ms = T0 - 10_000
    idx.delete("pods", idx.parse("pods", a))
    clock.ms = T0
    idx.upsert("pods", idx.parse("pods", pod("x", "shop", ips=["10.244.0.51"], uid="u-x",
                                              created=iso(T0 - 3_600_000))))
    assert flow(e, "10.244.0.51", "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "a"   # a held it then
    assert flow(e, "10.244.0.51", "", t_ms=T0 + 5_000)["SrcK8S_Name"] == "x"    # x holds it now
    assert flow(e, "10.244.0.51", "", t_ms=0)["SrcK8S_Name"] == "x"             # no start: the live one
    assert flow(e, "10.244.0.50", "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "x"   # x's old address, before
    assert flow(e, "10.244.0.50", "", t_ms=T0 + 5_000) == NOBODY                    # nobody's after the change
    clock.ms = T0 + 300_001
    assert idx.sweep() == 2  # a's tombstone and x's old address
    assert flow(e, "10.244.0.50", "", t_ms=T0 - 60_000) == NOBODY
    assert flow(e, "10.244.0.51", "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "x"  # the oldest answers earlier flows


def test_two_address_changes_in_one_millisecond_both_expire() -> None:
    """Two MODIFIED events moving a running pod's address, applied within one millisecond (a
    resumed watch delivers them together): each address the pod left is a record of its own,
    and both go after tombstone_seconds (the first one used to stay in the chain for good)."""
    clock = Clock(T0)
    created = iso(T0 - 3_600_000)
    e = build([pod("x", "shop", ips=["10.244.0.50"], uid="u-x", created=created)], clock=clock,
              tombstone_seconds=300)
    idx = e.index
    for ip in ("10.244.0.51", "10.244.0.52"):
        idx.upsert("pods", idx.parse("pods", pod("x", "shop", ips=[ip], uid="u-x", created=created)))
    assert idx.counts()["tombstones"] == 2
    assert flow(e, "10.244.0.50", "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "x"
    clock.ms = T0 + 300_001
    assert idx.sweep() == 2
    assert flow(e, "10.244.0.50", "", t_ms=T0 - 60_000) == NOBODY
    assert flow(e, "10.244.0.51", "", t_ms=T0 - 60_000) == NOBODY
    assert flow(e, "10.244.0.52", "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "x"
    assert idx.counts()["pod_ips"] == 1 and idx.counts()["tombstones"] == 0


def test_tombstones_expire_in_end_order_whatever_the_order_they_came_in() -> None:
    """A finished pod deleted last may have ended first; a tombstone seen alive again is not
    swept by its old expiry."""
    clock = Clock(T0)
    job = pod("job", "batch", ips=["10.244.0.61"], uid="u-j", created=iso(T0 - 600_000), phase="Succeeded")
    job["status"]["containerStatuses"] = [{"name": "c", "state": {"terminated": {"finishedAt": iso(T0 - 200_000)}}}]
    web = pod("web", "shop", ips=["10.244.0.62"], uid="u-w", created=iso(T0 - 600_000))
    back = pod("back", "shop", ips=["10.244.0.63"], uid="u-b", created=iso(T0 - 600_000))
    e = build([job, web, back], clock=clock, tombstone_seconds=300)
    idx = e.index
    for p in (web, back, job):
        idx.delete("pods", idx.parse("pods", p))
    clock.ms = T0 + 10_000
    idx.upsert("pods", idx.parse("pods", back))  # a relist race: it was alive after all
    assert idx.counts()["tombstones"] == 2
    clock.ms = T0 + 100_001
    assert idx.sweep() == 1  # the job's hold ended at T0 - 200 s
    assert flow(e, "10.244.0.61", "", t_ms=T0 - 300_000) == NOBODY
    clock.ms = T0 + 300_001
    assert idx.sweep() == 1
    assert flow(e, "10.244.0.62", "", t_ms=T0 - 1_000) == NOBODY
    assert flow(e, "10.244.0.63", "", t_ms=T0 + 300_000)["SrcK8S_Name"] == "back"
    assert idx.counts()["tombstones"] == 0


def test_an_event_does_not_walk_every_tombstone() -> None:
    """Every event sweeps: with thousands of tombstones none of which is due, an event must not
    look at them (the sweep used to scan them all, in the informer thread that shares the GIL
    with the hot path). The tombstone table counts every walk and read; an event past the
    deadline of some reads only those."""

    class Watched(dict):  # type: ignore[type-arg]
        reads = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Watched.reads += len(self)
            return super().__iter__()

        def items(self):  # type: ignore[no-untyped-def]
            Watched.reads += len(self)
            return super().items()

        def values(self):  # type: ignore[no-untyped-def]
            Watched.reads += len(self)
            return super().values()

        def get(self, k, default=None):  # type: ignore[no-untyped-def]
            Watched.reads += 1
            return super().get(k, default)

    clock = Clock(T0)
    e = build([pod(f"p{i}", "shop", ips=[str(ipaddress.ip_address("10.128.0.0") + i)], uid=f"u{i}",
                   created=iso(T0 - 1_000)) for i in range(5000)], clock=clock, tombstone_seconds=300)
    idx = e.index
    for i in range(5000):   # deleted one millisecond apart
        clock.ms = T0 + 1_000 + i
        idx.delete("pods", idx.parse("pods", pod(f"p{i}", "shop", ips=[str(ipaddress.ip_address("10.128.0.0") + i)],
                                                   uid=f"u{i}", created=iso(T0 - 1_000))))
    assert idx.counts()["tombstones"] == 5000
    idx._tombstones = Watched(idx._tombstones)
    svc = [idx.parse("services", service("s", "shop", ips=[f"172.30.0.{i % 200 + 1}"])) for i in range(2000)]
    for r in svc:
        idx.upsert("services", r)
    assert Watched.reads == 0
    clock.ms = T0 + 1_000 + 300_000 + 99   # the first 100 are due
    idx.upsert("services", svc[0])
    assert idx.counts()["tombstones"] == 4900
    assert Watched.reads <= 100


def test_interned_names_of_deleted_objects_are_forgotten() -> None:
    """Namespace-per-test-run and node-autoscaler churn: the names the index interns (so that the
    compiled reader compares node names by pointer) are forgotten once nothing uses them, and
    the names still in use keep their one object."""
    from enrich.index import AGENT_GRACE_MS, _interned

    clock = Clock(T0)
    e = build([pod("b1", "shop", ips=["10.244.1.5"], node="node-b", host_ip="10.0.0.2")], clock=clock,
              tombstone_seconds=1)
    idx = e.index
    node_b = idx._nodes["node-b"].name
    for i in range(3000):
        clock.ms += 10
        nd = idx.parse("nodes", node(f"churn-node-{i}", internal=[f"10.1.{i // 250}.{i % 250}"]))
        idx.upsert("nodes", nd)
        p = idx.parse("pods", pod("p", f"churn-ns-{i}", ips=["10.244.0.9"], uid=f"churn-{i}", node=nd.name,
                                  created=iso(clock.ms)))
        idx.upsert("pods", p)
        idx.delete("pods", p)
        idx.delete("nodes", nd)
    del nd, p
    # pruned as the table grows, not only by the periodic sweep
    assert sum(k.startswith("churn-") for k in _interned) < 2 * 1024
    clock.ms += 10_000
    idx.sweep()
    # (the exporter answers of the Nodes' addresses, tombstones, that the sweep let go are kept
    # AGENT_GRACE_MS more: a compiled reader may hold one; they hold names)
    clock.ms += AGENT_GRACE_MS
    idx.sweep()
    assert [k for k in _interned if k.startswith("churn-")] == []
    assert _interned["node-b"] is node_b
    # a pod parsed now gets the node's object: the compiled reader's pointer compares still match
    idx.upsert("pods", idx.parse("pods", pod("b2", "shop", ips=["10.244.1.6"], node="node-b", host_ip="10.0.0.2")))
    assert idx._pods["shop/b2"].node is node_b
    assert flow(e, "10.244.1.6", "8.8.8.8", agent="10.0.0.2").get("FlowDirection") == 1
    assert flow(e, "10.244.1.6", "10.244.1.5", agent="10.0.0.1").get("FlowDirection") == 2


def test_finished_pod_whose_address_leaves_its_status_later_keeps_its_flows() -> None:
    """A Job pod goes Succeeded with its address still in its status, then a later MODIFIED (or
    a relist) has no podIP/podIPs (its sandbox removed; kubelets change podIP around the terminal
    transition, kubernetes#125370): flows that started while it held the address stay its own,
    as a tombstone ending when its containers finished, also after the object is deleted, until
    tombstone_seconds. The same when both come in one MODIFIED."""
    created = iso(T0 - 600_000)
    running = pod("job-1", "batch", ips=["10.244.0.40"], uid="u-j", owner=("Job", "j"), created=created)
    done = pod("job-1", "batch", ips=["10.244.0.40"], uid="u-j", owner=("Job", "j"), created=created,
               phase="Succeeded")
    done["status"]["containerStatuses"] = [{"name": "c", "state": {"terminated": {
        "exitCode": 0, "startedAt": iso(T0 - 590_000), "finishedAt": iso(T0 + 4_000)}}}]
    gone = orjson.loads(orjson.dumps(done))
    del gone["status"]["podIP"], gone["status"]["podIPs"]
    for how in ("watch", "relist", "one event"):
        clock = Clock(T0)
        e = build([running], clock=clock, tombstone_seconds=300)
        idx = e.index
        clock.ms = T0 + 5_000
        if how != "one event":
            idx.upsert("pods", idx.parse("pods", done))
        clock.ms = T0 + 10_000
        if how == "relist":
            idx.replace("pods", [idx.parse("pods", gone)])
        else:
            idx.upsert("pods", idx.parse("pods", gone))
        assert flow(e, "10.244.0.40", "", t_ms=T0 - 1_000)["SrcK8S_Name"] == "job-1", how
        assert flow(e, "10.244.0.40", "", t_ms=T0 + 6_000) == NOBODY, how  # its containers finished at T0 + 4 s
        clock.ms = T0 + 20_000
        idx.delete("pods", idx.parse("pods", gone))
        assert flow(e, "10.244.0.40", "", t_ms=T0 - 1_000)["SrcK8S_Name"] == "job-1", how
        assert idx.counts()["tombstones"] == 1, how
        clock.ms = T0 + 4_000 + 300_001
        assert idx.sweep() == 1, how
        assert flow(e, "10.244.0.40", "", t_ms=T0 - 1_000) == NOBODY, how
        assert idx.counts()["pod_ips"] == 0 and not idx._holders, how


def test_pod_recreated_with_same_name_new_uid() -> None:
    clock = Clock(T0)
    e = build([pod("db-0", "shop", ips=["10.244.0.40"], uid="u1", created=iso(T0 - 1000))], clock=clock)
    clock.ms = T0 + 1_000
    # A relist shows the StatefulSet pod recreated (new uid, new IP).
    e.index.replace("pods", [e.index.parse("pods", pod("db-0", "shop", ips=["10.244.0.41"], uid="u2",
                                                       created=iso(T0 + 1_000)))])
    assert flow(e, "10.244.0.41", "")["SrcK8S_Name"] == "db-0"
    assert flow(e, "10.244.0.40", "", t_ms=T0)["SrcK8S_Name"] == "db-0"  # tombstone
    assert flow(e, "10.244.0.40", "", t_ms=T0 + 2_000) == NOBODY
    assert e.stats()["index"]["pods"] == 1


# ---------------------------------------------------------------- direction and layer

@pytest.mark.parametrize("src,dst,agent,given,expected", [
    ("10.244.0.5", "10.244.1.5", "10.0.0.1", -1, 1),     # exporter is the source's node: egress
    ("10.244.0.5", "10.244.1.5", "10.0.0.2", -1, 0),     # exporter is the destination's node: ingress
    ("10.244.0.5", "10.244.0.6", "10.0.0.1", 0, 2),      # same node: inner
    ("10.244.0.5", "10.244.0.6", "10.0.0.2", 1, 2),      # same node even if another node exports it
    ("10.244.0.5", "10.244.1.5", "fd00::1", -1, 1),      # any address of the node identifies it
    ("10.244.0.5", "10.244.1.5", "10.244.0.2", -1, 1),   # so does its management port
    ("10.244.0.5", "8.8.8.8", "10.0.0.1", 0, 1),         # external destination
    ("8.8.8.8", "10.244.1.5", "10.0.0.2", 1, 0),         # external source
    ("10.244.0.5", "10.244.1.5", "192.0.2.99", 1, 1),    # unknown exporter: keep what it said
    ("10.244.0.5", "10.244.1.5", "", 0, 0),
    ("10.244.0.5", "10.244.1.5", "", -1, None),          # nothing known: no FlowDirection
    ("8.8.8.8", "1.1.1.1", "10.0.0.1", 1, 1),            # nothing resolved: given direction only
    ("10.244.0.5", "172.30.0.10", "10.0.0.1", -1, 1),    # service has no node
    ("10.244.0.5", "10.244.1.5", "10.0.0.1", 7, 1),      # out-of-range given value is ignored
    ("8.8.8.8", "1.1.1.1", "", 7, None),
])
def test_flow_direction(src: str, dst: str, agent: str, given: int, expected: int | None) -> None:
    e = build([pod("a1", "shop", ips=["10.244.0.5"]), pod("a2", "shop", ips=["10.244.0.6"]),
               pod("b1", "shop", ips=["10.244.1.5"], node="node-b", host_ip="10.0.0.2")],
              services=[service("web", "shop", ips=["172.30.0.10"])])
    assert flow(e, src, dst, agent=agent, direction=given).get("FlowDirection") == expected


def test_flow_direction_from_pods_host_ips_while_their_node_is_not_cached() -> None:
    """The rule compares AgentIP with the Src/Dst host IPs: while a pod's Node is not in the
    cache (deleted while its pods are garbage-collected, re-registered, or the nodes informer
    behind), the pods' own hostIP still names the exporter's node."""
    clock = Clock(T0)
    b1 = pod("b1", "shop", ips=["10.244.1.5"], node="node-b", host_ip="10.0.0.2", uid="u-b1", created=iso(T0 - 1_000))
    e = enrich.Enricher.from_objects(pods=[b1, pod("a1", "shop", ips=["10.244.0.5"], uid="u-a1")], nodes=NODES[:1],
                                     config=enrich.EnrichConfig(own_namespace=""), clock=clock)
    idx = e.index

    def direction(src: str, dst: str, given: int = -1) -> int | None:
        return flow(e, src, dst, agent="10.0.0.2", t_ms=T0, direction=given).get("FlowDirection")

    assert direction("8.8.8.8", "10.244.1.5", 1) == 0    # into the exporter's pod: ingress
    assert direction("10.244.1.5", "8.8.8.8") == 1       # out of it: egress
    assert direction("10.244.0.5", "10.244.1.5") == 0    # from a pod on a cached node
    assert direction("10.244.1.5", "10.244.0.5") == 1
    # The node comes back, and goes again: its own addresses, then its pods' host IPs again.
    idx.upsert("nodes", idx.parse("nodes", NODES[1]))
    assert direction("10.244.1.5", "8.8.8.8") == 1
    idx.delete("nodes", idx.parse("nodes", NODES[1]))
    assert direction("8.8.8.8", "10.244.1.5", 1) == 0
    # A deleted pod's late flows still have its host (a tombstone), until it is swept.
    clock.ms = T0 + 1_000
    idx.delete("pods", idx.parse("pods", b1))
    assert direction("10.244.1.5", "8.8.8.8") == 1
    clock.ms = T0 + 301_000
    assert idx.sweep() == 3   # the pod's, and the deleted Node's address and management port's
    assert flow(e, "8.8.8.8", "10.244.0.5", agent="10.0.0.2", direction=1).get("FlowDirection") == 1
    assert idx.counts()["pod_ips"] == 1 and not idx._hosts.get(raw("10.0.0.2"))
    assert raw("10.0.0.2") not in idx._agents


def test_flow_direction_from_every_host_ip_of_a_dual_stack_pod_while_its_node_is_not_cached() -> None:
    """status.hostIPs lists both families on a dual-stack node (Kubernetes 1.28+), hostIP only
    the first: an exporter writing its IPv6 address (IPFIX over IPv6, sFlow agent address) is
    the same node, whichever family comes first, while that Node is not in the cache."""
    clock = Clock(T0)
    for first, second in (("10.0.0.2", "fd00::2"), ("fd00::2", "10.0.0.2")):
        clock.ms = T0
        b1 = pod("b1", "shop", ips=["10.244.1.5", "fd00:10:244:2::5"], node="node-b", host_ip=first,
                 uid="u-b1", created=iso(T0 - 1_000))
        b1["status"]["hostIPs"] = [{"ip": first}, {"ip": second}]
        e = enrich.Enricher.from_objects(pods=[b1, pod("a1", "shop", ips=["10.244.0.5"], uid="u-a1")],
                                         nodes=NODES[:1], config=enrich.EnrichConfig(own_namespace=""), clock=clock)
        idx = e.index
        for agent in (first, second):
            for src, dst in (("10.244.1.5", "8.8.8.8"), ("fd00:10:244:2::5", "2001:db8::8")):
                assert flow(e, src, dst, agent=agent, t_ms=T0).get("FlowDirection") == 1, (agent, src)
                assert flow(e, dst, src, agent=agent, t_ms=T0, direction=1).get("FlowDirection") == 0, (agent, src)
            assert flow(e, "10.244.0.5", "10.244.1.5", agent=agent, t_ms=T0).get("FlowDirection") == 0, agent
        # Deleted and swept: no host address is left naming the node.
        idx.delete("pods", idx.parse("pods", b1))
        clock.ms = T0 + 301_000
        assert idx.sweep() == 1
        assert all(raw(h) not in idx._hosts and raw(h) not in idx._agents for h in (first, second))
        # A pod whose status gives hostIPs only in an update (a kubelet before 1.28, then
        # upgraded): its second address names its node from then on.
        c1 = pod("c1", "shop", ips=["10.244.1.6"], node="node-b", host_ip=first, uid="u-c1", created=iso(T0))
        idx.upsert("pods", idx.parse("pods", c1))
        assert raw(first) in idx._agents and raw(second) not in idx._agents
        c1["status"]["hostIPs"] = [{"ip": first}, {"ip": second}]
        idx.upsert("pods", idx.parse("pods", c1))
        assert flow(e, "10.244.1.6", "8.8.8.8", agent=second, t_ms=T0 + 301_000).get("FlowDirection") == 1
        idx.delete("pods", idx.parse("pods", c1))
        clock.ms = T0 + 602_000
        assert idx.sweep() == 1
        assert all(raw(h) not in idx._hosts and raw(h) not in idx._agents for h in (first, second))
        assert flow(e, "8.8.8.8", "10.244.0.5", agent=second, direction=1).get("FlowDirection") == 1


def test_an_exporter_address_a_replaced_node_held_names_the_node_that_held_it_when_the_flow_started() -> None:
    """FlowDirection compares the exporter's node with the sides' (DESIGN.md "Enrichment rules").
    A Node deleted and another given its address: a flow that started before is the old Node's
    (its tombstone), and so was the exporter at that address then (Index._agent): egress from
    it, as the new Node's flows are; the exporter named the Node that has the address now, and
    those flows got the exporter's own direction. Once the tombstone expires the address names
    the new Node as a plain name again, and the answers that left are let go AGENT_GRACE_MS later."""
    from enrich.index import AGENT_GRACE_MS

    clock = Clock(T0)
    e = enrich.Enricher.from_objects(nodes=[node("n-old", internal=["10.0.0.9"])], clock=clock,
                                     config=enrich.EnrichConfig(own_namespace="", tombstone_seconds=60))
    idx = e.index
    clock.ms = T0 + 1_000
    idx.delete("nodes", idx.parse("nodes", node("n-old", internal=["10.0.0.9"])))
    new = node("n-new", internal=["10.0.0.9"])
    new["metadata"]["creationTimestamp"] = iso(T0 + 2_000)
    clock.ms = T0 + 3_000
    idx.upsert("nodes", idx.parse("nodes", new))

    def seen(t_ms: int, direction: int = -1) -> tuple[Any, Any]:
        got = flow(e, "10.0.0.9", "8.8.8.8", agent="10.0.0.9", t_ms=t_ms, direction=direction)
        return got.get("SrcK8S_Name"), got.get("FlowDirection")

    assert [seen(t) for t in (T0 - 5_000, T0 + 5_000, 0)] == [("n-old", 1), ("n-new", 1), ("n-new", 1)]
    assert seen(T0 - 5_000, direction=0) == ("n-old", 1)   # its own computation, not the exporter's
    assert seen(T0 + 1_500) == (None, None)   # between the two: nobody's, the exporter's direction
    assert type(idx._agents[raw("10.0.0.9")]) is tuple
    clock.ms = T0 + 61_000
    assert idx.sweep() == 1
    assert idx._agents[raw("10.0.0.9")] == "n-new"
    assert [seen(t) for t in (T0 - 5_000, T0 + 5_000)] == [("n-new", 1), ("n-new", 1)]
    assert idx._agents_retired   # the tuple answers, kept while a compiled reader may hold one
    clock.ms = T0 + 61_000 + AGENT_GRACE_MS
    idx.sweep()
    assert not idx._agents_retired


def test_an_address_two_nodes_list_stays_with_the_node_still_listing_it() -> None:
    """A replaced VM's private address given to the new VM while the old (NotReady) Node object
    still lists it: when the Node answering for the address is deleted or stops listing it, the
    address goes to the other Node that lists it (identity and exporter alike) at once, not at
    the next relist."""
    old = node("gke-pool-zz-old", internal=["10.0.0.7"], zone="za")
    new = node("gke-pool-aa-new", internal=["10.0.0.7"], zone="zb")
    for listed in ((new, old), (old, new)):  # a relist with both: the one applied last answers
        e = enrich.Enricher.from_objects(nodes=list(listed), config=enrich.EnrichConfig(own_namespace=""))
        idx = e.index
        first, last = (n["metadata"]["name"] for n in listed)
        assert flow(e, "10.0.0.7", "")["SrcK8S_Name"] == last
        idx.delete("nodes", idx.parse("nodes", listed[1]))
        got = side(flow(e, "10.0.0.7", "8.8.8.8", agent="10.0.0.7"), "SrcK8S_")
        assert (got["Name"], got["Zone"]) == (first, listed[0]["metadata"]["labels"][ZONE_LABEL]), listed
        assert flow(e, "10.0.0.7", "8.8.8.8", agent="10.0.0.7")["FlowDirection"] == 1  # the exporter's node
        held = clock_ms(e) - 1
        idx.delete("nodes", idx.parse("nodes", listed[0]))
        assert flow(e, "10.0.0.7", "", t_ms=just_after(e)) == NOBODY
        assert flow(e, "10.0.0.7", "", t_ms=held)["SrcK8S_Name"] in (first, last)   # its flows of before
        # (the exporter at the address stays the Node that had it, for the flows of before: tombstones)
        assert not idx._node_addr and list(idx._agents) == [raw("10.0.0.7")]
    # Watch events: the newest Node listing the address answers; when it stops listing it (or
    # is deleted), the other one does.
    e = enrich.Enricher.from_objects(nodes=[node("n-new", internal=["10.0.0.7"])],
                                     config=enrich.EnrichConfig(own_namespace=""))
    idx = e.index
    idx.upsert("nodes", idx.parse("nodes", node("n-old", internal=["10.0.0.7"], external=["203.0.113.9"])))
    assert flow(e, "10.0.0.7", "")["SrcK8S_Name"] == "n-old"
    idx.upsert("nodes", idx.parse("nodes", node("n-old", internal=["10.0.0.8"], external=["203.0.113.9"])))
    assert flow(e, "10.0.0.7", "")["SrcK8S_Name"] == "n-new"
    assert flow(e, "10.0.0.8", "")["SrcK8S_Name"] == "n-old"
    idx.upsert("nodes", idx.parse("nodes", node("n-old", internal=["10.0.0.7"])))
    idx.delete("nodes", idx.parse("nodes", node("n-old", internal=["10.0.0.7"])))
    assert flow(e, "10.0.0.7", "")["SrcK8S_Name"] == "n-new"
    assert flow(e, "10.0.0.7", "8.8.8.8", agent="10.0.0.7")["FlowDirection"] == 1
    assert flow(e, "10.0.0.8", "", t_ms=just_after(e)) == NOBODY and flow(e, "203.0.113.9", "", t_ms=just_after(e)) == NOBODY


def test_a_node_address_of_any_type_that_is_an_ip_is_the_nodes() -> None:
    """Every address in a Node's status.addresses that is an IP is the Node's, whatever its type,
    as NetObserv indexes them (flowlogs-pipeline's node informer keeps each address net.ParseIP
    accepts): a Hostname (kubelet --hostname-override=IP) or InternalDNS entry holding an IP
    different from the InternalIP (another NIC of the node; OVS may export from it) named
    nobody, and an exporter there was no node. Names (the usual Hostname) are no problem."""
    def a_node(hostname: str) -> dict[str, Any]:
        n = node("node-h", internal=["10.0.0.1"], zone="zh")
        n["status"]["addresses"] = [{"type": "InternalIP", "address": "10.0.0.1"},
                                    {"type": "Hostname", "address": hostname},
                                    {"type": "InternalDNS", "address": "node-h.cluster.internal"}]
        return n

    e = enrich.Enricher.from_objects(nodes=[a_node("192.168.50.7")], config=enrich.EnrichConfig(own_namespace=""))
    idx = e.index
    got = side(flow(e, "192.168.50.7", ""), "SrcK8S_")
    # HostIP stays the InternalIP (the address pods name as their hostIP)
    assert (got["Name"], got["Type"], got["HostIP"], got["Zone"]) == ("node-h", "Node", "10.0.0.1", "zh"), got
    assert flow(e, "192.168.50.7", "8.8.8.8", agent="192.168.50.7")["FlowDirection"] == 1
    # the address changes: the old one is nobody's (but for the flows of before), the new one the node's
    held = clock_ms(e) - 1
    idx.upsert("nodes", idx.parse("nodes", a_node("192.168.50.8")))
    assert flow(e, "192.168.50.7", "", t_ms=just_after(e)) == NOBODY
    assert flow(e, "192.168.50.7", "", t_ms=held)["SrcK8S_Name"] == "node-h"
    assert flow(e, "192.168.50.8", "")["SrcK8S_Name"] == "node-h"
    # a name as Hostname: nothing indexed for it, and no problem counted
    idx.upsert("nodes", idx.parse("nodes", a_node("node-h")))
    assert flow(e, "192.168.50.8", "", t_ms=just_after(e)) == NOBODY
    assert flow(e, "10.0.0.1", "")["SrcK8S_Name"] == "node-h"
    assert idx.problems == {}
    # an update whose InternalIP cannot be read keeps the last good addresses (a Hostname IP
    # beside it does not make the list whole)
    broken = a_node("192.168.50.9")
    broken["status"]["addresses"][0]["address"] = "not-an-ip"
    idx.upsert("nodes", idx.parse("nodes", broken))
    assert flow(e, "10.0.0.1", "")["SrcK8S_Name"] == "node-h"
    assert idx.problems == {"bad_address": 1}


def test_an_address_two_nodes_list_goes_to_the_newer_node_whatever_the_list_order() -> None:
    """The Node that began listing an address last answers for it; a list says nothing of who
    began first, but the Node created later did (a replaced VM's address while the old Node
    object lingers). A collector started (or relisting) with both answered with whichever the
    list gave last, the names' order: the old, NotReady Node here, while a collector that
    watched the new Node register answered with the new one."""
    old = node("gke-pool-zz-old", internal=["10.0.0.7"], zone="za")
    old["metadata"]["creationTimestamp"] = iso(T0 - 86_400_000)
    new = node("gke-pool-aa-new", internal=["10.0.0.7"], zone="zb")
    new["metadata"]["creationTimestamp"] = iso(T0)
    for listed in ((new, old), (old, new)):
        e = enrich.Enricher.from_objects(nodes=list(listed), config=enrich.EnrichConfig(own_namespace=""))
        got = side(flow(e, "10.0.0.7", ""), "SrcK8S_")
        assert (got["Name"], got["Zone"]) == ("gke-pool-aa-new", "zb"), [n["metadata"]["name"] for n in listed]
        e.index.delete("nodes", e.index.parse("nodes", new))
        assert flow(e, "10.0.0.7", "")["SrcK8S_Name"] == "gke-pool-zz-old"


@pytest.mark.parametrize("src_ns,dst_ns,expected", [
    ("shop", "shop", "app"),
    ("kube-system", "shop", "infra"),
    ("shop", "openshift-dns", "infra"),
    ("netobserv", "shop", "infra"),           # the collector's own namespace
    ("kubeshop", "shop", "app"),              # prefix is "kube-", not "kube"
    ("shop", None, "app"),                    # one side unresolved
    (None, "kube-system", "infra"),
    (None, None, "app"),                      # nothing resolved: no side is infrastructure
    ("shop", "node", "app"),                  # nodes have no namespace
])
def test_flow_layer(src_ns: str | None, dst_ns: str | None, expected: str) -> None:
    pods = []
    addr = {None: "8.8.8.8", "node": "10.0.0.2"}
    for i, ns in enumerate((src_ns, dst_ns)):
        if ns not in addr:
            pods.append(pod(f"p{i}", ns, ips=[f"10.244.0.{50 + i}"]))
    src = addr.get(src_ns, "10.244.0.50")
    dst = addr.get(dst_ns, "10.244.0.51")
    e = build(pods)
    assert flow(e, src, dst)["K8S_FlowLayer"] == expected


def test_flow_layer_custom_prefixes_and_own_namespace_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "flows")
    e = enrich.Enricher.from_objects(
        pods=[pod("a", "platform-x", ips=["10.244.0.60"]), pod("b", "flows", ips=["10.244.0.61"]),
              pod("c", "kube-system", ips=["10.244.0.62"])],
        nodes=NODES, config=enrich.EnrichConfig(infra_namespace_prefixes=["platform-"]))
    assert flow(e, "10.244.0.60", "")["K8S_FlowLayer"] == "infra"
    assert flow(e, "10.244.0.61", "")["K8S_FlowLayer"] == "infra"
    assert flow(e, "10.244.0.62", "")["K8S_FlowLayer"] == "app"


# ---------------------------------------------------------------- bad input

def test_bad_objects_are_counted_logged_once_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    good = pod("ok", "shop", ips=["10.244.0.70"])
    bad_pods = [
        "not an object",
        {"metadata": {"namespace": "shop"}},                                   # no name
        {"metadata": {"name": "x"}},                                           # no namespace
        {"metadata": {"name": "x2", "namespace": "shop"}, "status": "weird"},  # status not a dict: no IPs
        pod("badip", "shop", ips=["10.244.0.999"]),
        {**pod("badowner", "shop", ips=["10.244.0.71"]),
         "metadata": {"name": "badowner", "namespace": "shop", "ownerReferences": [{"kind": "Job"}]}},
        {**pod("badowner2", "shop", ips=["10.244.0.72"]),
         "metadata": {"name": "badowner2", "namespace": "shop", "ownerReferences": "nope"}},
    ]
    bad_nodes = [node("n-bad", internal=["10.0.1.1", "nonsense"], subnets="{not json"),
                 node("n-bad2", internal=["10.0.1.2"], subnets={"default": 42}),
                 {"status": {}}]
    with caplog.at_level(logging.WARNING, logger="flowscope.enrich"):
        e = enrich.Enricher.from_objects(pods=[good, *bad_pods], nodes=[*NODES, *bad_nodes],
                                         config=enrich.EnrichConfig(own_namespace=""))
    assert e.stats()["problems"] == {"bad_pod": 3, "bad_address": 2, "bad_owner": 2,
                                     "bad_annotation": 2, "bad_node": 1, "bad_field": 1}
    assert len(caplog.records) == 6  # one per cause
    assert flow(e, "10.244.0.70", "")["SrcK8S_Name"] == "ok"
    got = flow(e, "10.244.0.71", "")
    assert (got["SrcK8S_OwnerName"], got["SrcK8S_OwnerType"]) == ("badowner", "Pod")
    assert flow(e, "10.0.1.1", "")["SrcK8S_Name"] == "n-bad"  # still indexed, without the mgmt port
    assert flow(e, "10.0.1.2", "")["SrcK8S_Name"] == "n-bad2"


def test_an_update_that_cannot_be_read_whole_keeps_the_last_good_version() -> None:
    """Issue 4, bad input: an object whose fields arrive with the wrong JSON type (a broken
    proxy; an API server validates them) is counted, and its last good version keeps serving,
    whether the update comes by watch or in a relist; a DELETED one is still deleted."""
    import copy

    web = pod("web-0", "shop", ips=["10.244.0.60"], owner=("StatefulSet", "web"), uid="u-w0")
    svc = service("api", "shop", ips=["172.30.0.60"])
    e = build([web], [svc])
    idx = e.index

    def spoilt(obj: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        cur = out
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
        return out

    def web_seen() -> tuple[str, str, str]:
        got = flow(e, "10.244.0.60", "")
        return got.get("SrcK8S_Name", ""), got.get("SrcK8S_OwnerType", ""), got.get("SrcK8S_Zone", "")

    good = web_seen()
    assert good == ("web-0", "StatefulSet", "zone-a")
    for path, value in ((["status"], "garbage"), (["spec"], []), (["status", "podIPs"], [{"ip": 5}]),
                        (["status", "podIPs"], [None]), (["metadata", "ownerReferences"], {"kind": "Job"})):
        bad = spoilt(web, path, value)
        if path[-1] == "podIPs":
            bad["status"].pop("podIP")
        idx.upsert("pods", idx.parse("pods", bad))
        assert web_seen() == good, path
    for path, value in ((["metadata", "annotations"], ["x"]), (["metadata", "labels"], "zone"),
                        (["status", "addresses"], [{"type": "InternalIP", "address": 5}]), (["status"], 7)):
        idx.upsert("nodes", idx.parse("nodes", spoilt(NODES[0], path, value)))
        assert flow(e, "10.244.0.2", "")["SrcK8S_Name"] == "node-a", path       # management port
        assert flow(e, "10.0.0.1", "")["SrcK8S_Zone"] == "zone-a", path
        assert web_seen() == good, path
    for path, value in ((["spec"], "garbage"), (["spec", "clusterIPs"], [5])):
        idx.upsert("services", idx.parse("services", spoilt(svc, path, value)))
        assert flow(e, "172.30.0.60", "")["SrcK8S_Name"] == "api", path
    problems = e.stats()["problems"]
    assert (problems["bad_field"], problems["bad_owner"], problems["bad_address"]) == (8, 1, 2)
    # a relist carrying an unreadable version keeps the good one; one without the pod removes it
    idx.replace("pods", [idx.parse("pods", spoilt(web, ["spec"], "x"))])
    assert web_seen() == good
    # DELETED with an unreadable body still deletes (the tombstone answers for earlier flows)
    idx.delete("pods", idx.parse("pods", spoilt(web, ["status"], "gone")))
    assert flow(e, "10.244.0.60", "", t_ms=int(time.time() * 1000) + 60_000) == NOBODY


def test_fields_of_the_wrong_json_type_are_counted_not_fatal() -> None:
    """Arrays that arrive as scalars (podIPs, hostIPs, node addresses, clusterIPs) and a number
    inside node-subnets: each object is kept with what is usable, the problem counted; nothing
    raises out of the index (an exception there used to stop the informer's updates)."""
    p = pod("p", "shop", ips=["10.244.0.80"])
    p["status"]["podIPs"] = 5  # podIP alone still gives the address
    p2 = pod("p2", "shop", ips=["10.244.0.81"])
    p2["status"]["hostIPs"] = "10.0.0.1"
    n = node("n-odd", internal=["10.0.1.3"], subnets={"default": [5]})
    n2 = node("n-odd2", internal=["10.0.1.4"])
    n2["status"]["addresses"] = 7
    svc = service("s", "shop", ips=["172.30.0.9"])
    svc["spec"]["clusterIPs"] = "172.30.0.9"  # clusterIP alone still gives the address
    e = enrich.Enricher.from_objects(pods=[p, p2], nodes=[*NODES, n, n2], services=[svc],
                                     config=enrich.EnrichConfig(own_namespace=""))
    assert e.stats()["problems"] == {"bad_field": 4, "bad_annotation": 1}
    assert flow(e, "10.244.0.80", "")["SrcK8S_Name"] == "p"
    assert flow(e, "10.244.0.81", "")["SrcK8S_Name"] == "p2"
    assert flow(e, "10.0.1.3", "")["SrcK8S_Name"] == "n-odd"
    assert flow(e, "172.30.0.9", "")["SrcK8S_Name"] == "s"


def test_a_malformed_field_in_an_update_keeps_that_fields_last_good_value(caplog: pytest.LogCaptureFixture) -> None:
    """Bad input is counted and logged once per cause, and the last good cache keeps serving: a
    MODIFIED whose node-subnets annotation does not parse keeps the node's management-port
    address, one whose status.addresses is not a list keeps the node's addresses (and HostIP),
    one whose status.podIPs is mistyped (and no podIP) keeps the pod's addresses. The object's
    other fields still apply, and the next good value replaces the kept one."""
    clock = Clock(T0)
    good = node("node-x", internal=["10.0.9.1"], zone="z1", subnets={"default": ["10.244.9.0/24"]})
    p = pod("web-1", "shop", ips=["10.244.9.5"], node="node-x", host_ip="10.0.9.1", uid="u1",
            created=iso(T0 - 60_000))
    with caplog.at_level(logging.WARNING, logger="flowscope.enrich"):
        e = enrich.Enricher.from_objects(pods=[p], nodes=[good], config=enrich.EnrichConfig(own_namespace=""),
                                         clock=clock)
        idx = e.index
        idx.upsert("nodes", idx.parse("nodes", node("node-x", internal=["10.0.9.1"], zone="z2",
                                                    subnets='{"default":["10.244.9.0/24",')))  # cut short
        got = side(flow(e, "10.244.9.2", ""), "SrcK8S_")
        assert (got["Name"], got["Zone"]) == ("node-x", "z2")
        bad = node("node-x", internal=["10.0.9.1"], zone="z2", subnets={"default": ["10.244.9.0/24"]})
        bad["status"]["addresses"] = {"type": "InternalIP", "address": "10.0.9.1"}
        idx.upsert("nodes", idx.parse("nodes", bad))
        for addr in ("10.0.9.1", "10.244.9.2"):
            got = side(flow(e, addr, ""), "SrcK8S_")
            assert (got["Name"], got["HostIP"]) == ("node-x", "10.0.9.1"), addr
        clock.ms = T0 + 10_000
        q = orjson.loads(orjson.dumps(p))
        q["status"]["podIPs"] = {"ip": "10.244.9.5"}
        del q["status"]["podIP"]
        idx.upsert("pods", idx.parse("pods", q))
        assert flow(e, "10.244.9.5", "", t_ms=T0 + 20_000)["SrcK8S_Name"] == "web-1"
        assert flow(e, "10.244.9.5", "", t_ms=T0 - 1_000)["SrcK8S_Name"] == "web-1"
        # the same again: counted, not logged
        idx.upsert("pods", idx.parse("pods", q))
        idx.upsert("nodes", idx.parse("nodes", bad))
    assert e.stats()["problems"] == {"bad_annotation": 1, "bad_field": 4}
    assert len(caplog.records) == 2
    # Good values replace the kept ones: no annotation (no management port), another address.
    idx.upsert("nodes", idx.parse("nodes", node("node-x", internal=["10.0.9.3"], zone="z2")))
    assert flow(e, "10.244.9.2", "", t_ms=just_after(e)) == NOBODY and flow(e, "10.0.9.1", "", t_ms=just_after(e)) == NOBODY
    assert flow(e, "10.0.9.1", "", t_ms=clock.ms - 1)["SrcK8S_Name"] == "node-x"   # its flows of before
    assert flow(e, "10.0.9.3", "")["SrcK8S_Name"] == "node-x"
    idx.upsert("pods", idx.parse("pods", pod("web-1", "shop", ips=["10.244.9.6"], node="node-x", host_ip="10.0.9.3",
                                              uid="u1", created=iso(T0 - 60_000))))
    assert flow(e, "10.244.9.6", "", t_ms=T0 + 20_000)["SrcK8S_Name"] == "web-1"
    assert flow(e, "10.244.9.5", "", t_ms=T0 + 20_000) == NOBODY


def test_names_are_json_escaped() -> None:
    e = enrich.Enricher.from_objects(pods=[pod('we"ird\\näme', "shop", ips=["10.244.0.80"])],
                                     config=enrich.EnrichConfig(cluster_name='c"1', own_namespace=""))
    got = flow(e, "10.244.0.80", "")
    assert got["SrcK8S_Name"] == 'we"ird\\näme' and got["K8S_ClusterName"] == 'c"1'


def test_unresolved_flow_output() -> None:
    e = build(cluster_name="c1")
    assert e.enrich(raw("8.8.8.8"), raw("1.1.1.1"), b"", 0, -1) == b',"K8S_ClusterName":"c1","K8S_FlowLayer":"app"'
    assert e.enrich(b"", b"", b"", 0, 1) == b',"K8S_ClusterName":"c1","K8S_FlowLayer":"app","FlowDirection":1'
    assert build().enrich(b"", b"", b"", 0, -1) == b',"K8S_FlowLayer":"app"'


# ---------------------------------------------------------------- compiled == reference

@pytest.mark.parametrize("implementation", ["compiled"], indirect=True)  # compares both readers once
def test_compiled_reader_matches_python_reference(implementation: str) -> None:
    import random

    clock = Clock(T0)
    pods = [pod(f"p{i}", "kube-system" if i % 5 == 0 else "shop", ips=[f"10.244.{i % 2}.{10 + i}"],
                node="node-a" if i % 2 == 0 else "node-b", host_ip="10.0.0.1" if i % 2 == 0 else "10.0.0.2",
                uid=f"u{i}", created=iso(T0 - 100_000 + i)) for i in range(40)]
    # two on a node not in the cache: the exporter's node is known from their hostIP only
    pods += [pod(f"c{i}", "shop", ips=[f"10.244.2.{i}"], node="node-c", host_ip="10.0.0.3", uid=f"c{i}",
                 created=iso(T0 - 100_000)) for i in range(2)]
    e = build(pods, services=[service("s", "shop", ips=["172.30.0.1", "fd00:172:30::1"])], clock=clock,
              cluster_name="c")
    idx = e.index
    assert idx.compiled
    # Some reuse chains and tombstones.
    for i in range(0, 40, 3):
        clock.ms = T0 + i * 1000
        idx.delete("pods", idx.parse("pods", pods[i]))
        clock.ms = T0 + i * 1000 + 500
        idx.upsert("pods", idx.parse("pods", pod(f"n{i}", "openshift-x", ips=[f"10.244.{i % 2}.{10 + i}"],
                                                 uid=f"n{i}", created=iso(T0 + i * 1000 + 500))))
    # Chains ending in a node or a service: a finished Job pod on node-b's address, a deleted
    # pod on the service's.
    clock.ms = T0 + 30_000
    idx.upsert("pods", idx.parse("pods", pod("job", "shop", ips=["10.0.0.2"], uid="job", created=iso(T0 - 10_000),
                                              phase="Succeeded")))
    gone = pod("gone", "shop", ips=["172.30.0.1"], uid="gone", created=iso(T0 + 1_000))
    idx.upsert("pods", idx.parse("pods", gone))
    clock.ms = T0 + 40_000
    idx.delete("pods", idx.parse("pods", gone))
    addrs = [raw(f"10.244.{i % 2}.{10 + i}") for i in range(40)] + [
        raw("172.30.0.1"), raw("fd00:172:30::1"), raw("10.0.0.1"), raw("10.0.0.2"), raw("10.244.0.2"),
        raw("8.8.8.8"), b"", b"\x01\x02", raw("10.244.2.0"), raw("10.244.2.1"),
        # no address is 17 or 200 bytes: nobody's (and never copied into a 16-byte cache slot)
        raw("fd00:172:30::1") + b"\0", raw("10.244.0.10") * 50]
    agents = [raw("10.0.0.1"), raw("10.0.0.2"), raw("fd00::1"), raw("1.2.3.4"), raw("10.0.0.3"), b"",
              raw("10.0.0.1") * 50, raw("fd00::1") + raw("10.0.0.1")]
    times = [0, -5, T0 - 200_000, T0 - 50_000, T0, T0 + 700, T0 + 1_000, T0 + 20_000, T0 + 30_000, T0 + 35_000,
             T0 + 40_000, T0 + 45_000, 2**62, 2**62 + 5]
    rnd = random.Random(7)
    for _ in range(5000):
        args = (rnd.choice(addrs), rnd.choice(addrs), rnd.choice(agents), rnd.choice(times), rnd.choice([-1, 0, 1, 2, 3]))
        assert idx.enrich_fn(*args) == idx.enrich(*args), args


@pytest.mark.parametrize("implementation", ["compiled"], indirect=True)
def test_compiled_reader_source_survives_a_destination_miss_in_its_set(implementation: str) -> None:
    """White box: the compiled reader caches answers in a set-associative table (the set and
    the victim way come from a hash of the address, replicated here). When the source and the
    destination fall in one full set, resolving the destination must not refill the slot the
    source's answer was just read from (the source came out with the destination's identity,
    27 flows in a million on a 20k-pod workload). The set is filled so that the way the
    destination's hash picks is the source's."""
    from enrich import _fast

    ways = _fast.WAYS
    sets, mask64 = _fast.SLOTS // ways, (1 << 64) - 1

    def h(b: bytes) -> int:  # enrich/view.pxd fs_view_hash for an IPv4 address
        x = (int.from_bytes(b, "big") * 0x9E3779B97F4A7C15) & mask64
        return x ^ (x >> 32)

    def victim(b: bytes) -> int:
        return (h(b) >> 60) & (ways - 1)

    src = raw("10.244.0.10")
    dst = None
    others: list[bytes] = []
    for i in range(1, 1 << 20):
        a = (ipaddress.ip_address("10.244.0.0") + i).packed
        if a != src and h(a) % sets == h(src) % sets:
            if dst is None and victim(a) == victim(src):
                dst = a
            elif len(others) < ways - 1 and a != dst:
                others.append(a)
        if dst and len(others) == ways - 1:
            break
    assert dst and len(others) == ways - 1
    pods = [pod("pod-s", "shop", ips=["10.244.0.10"]), pod("pod-d", "other", ips=[str(ipaddress.ip_address(dst))])]
    e = build(pods)
    assert e.index.compiled
    # the set's ways filled in order (a miss takes the first empty way): the others, then the
    # source in the way the destination's hash picks
    order = [*others]
    order.insert(victim(src), src)
    for a in order:
        e.enrich(a, b"", b"", 0, -1)
    got = e.enrich(src, dst, b"", 0, -1)
    assert got == e.index.enrich(src, dst, b"", 0, -1)
    f = orjson.loads(b"{" + got[1:] + b"}")
    assert (f["SrcK8S_Name"], f["DstK8S_Name"]) == ("pod-s", "pod-d")
    # The replica above is the reader's hash: the addresses did share one full set, so the
    # destination took the next way instead (a lookup of the address there misses again) and
    # left the source's and the rest.
    r = e.index._reader
    taken = order[(victim(src) + 1) % ways]
    misses = r.misses
    for a in [x for x in order if x != taken]:
        e.enrich(a, b"", b"", 0, -1)
    assert r.misses == misses
    e.enrich(taken, b"", b"", 0, -1)
    assert r.misses == misses + 1


@pytest.mark.parametrize("implementation", ["compiled"], indirect=True)
def test_parts_longer_than_a_slots_text_block_and_back(implementation: str) -> None:
    """The compiled reader copies a holder's two parts into its cache slot's text block (576
    bytes), or into a block of their own when they are longer (names of hundreds of characters,
    escaped). Addresses whose holders' parts are on either side of that length, and one address
    held in turn by long- and short-named pods (IP reuse: three holders for a set's two ways, so
    its slots are refilled from one kind to the other): every answer, through enrich() and
    through the decoders' encoder, source and destination, is the Python reference's."""
    import random

    from benchmarks import datagrams as D
    from decoders import Decoder

    clock = Clock(T0 - 3_600_000)
    long_ns = "n" * 63

    def named(name: str, ip: str, uid: str, node: str = "node-a", ns: str = "shop") -> dict[str, Any]:
        return pod(name, ns, ips=[ip], node=node, host_ip="10.0.0.1", uid=uid, created=iso(clock.ms))

    # 40 addresses, names from 1 to 253 characters (quotes and non-ASCII letters escaped or
    # two bytes): the two parts run from ~330 to ~1,400 bytes
    sized = [named(("q\"é" * 90)[: 1 + i * 6], f"10.244.1.{i}", f"s{i}", node="w" * (1 + i * 6) if i % 2 else "node-a",
                   ns=long_ns if i % 3 == 0 else "shop") for i in range(40)]
    first = named("L" * 253, "10.244.0.30", "u-l1", ns=long_ns)
    e = build([*sized, first], clock=clock, tombstone_seconds=3_600)
    idx = e.index
    assert idx.compiled
    lengths = [len(idx.enrich(raw(f"10.244.1.{i}"), raw(f"10.244.1.{i}"), b"", T0, -1)) for i in range(40)]
    assert min(lengths) < 576 < max(lengths)   # both kinds of block
    clock.ms = T0
    idx.delete("pods", idx.parse("pods", first))
    clock.ms = T0 + 20_000
    short = named("s", "10.244.0.30", "u-s")
    idx.upsert("pods", idx.parse("pods", short))
    clock.ms = T0 + 40_000
    idx.delete("pods", idx.parse("pods", short))
    clock.ms = T0 + 60_000
    idx.upsert("pods", idx.parse("pods", named("M" * 200, "10.244.0.30", "u-l2", node="x" * 200)))
    times = [T0 - 1_000, T0 + 30_000, T0 + 70_000]     # long, short, long again
    addrs = [raw("10.244.0.30")] * 3 + [raw(f"10.244.1.{i}") for i in range(40)] + [raw("8.8.8.8")]
    t = D.IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("s", 152, 0, 8), ("e", 153, 0, 8)))
    dec = Decoder()
    rnd = random.Random(3)
    for k in range(3000):
        src, dst, when = rnd.choice(addrs), rnd.choice(addrs), times[k % 3]
        want = idx.enrich(src, dst, raw("10.0.0.1"), when, -1)
        assert e.enrich(src, dst, raw("10.0.0.1"), when, -1) == want, k
        if k % 10 == 0:
            rec = {"src": str(ipaddress.ip_address(src)), "dst": str(ipaddress.ip_address(dst)), "s": when, "e": when}
            data = D.ipfix_message([D.template_set([t]), D.data_set(t, [rec])], seq=k, export_time=T0 // 1000 + 100)
            got = dec.decode(data, "10.0.0.1", 4739, (T0 + 100_000) / 1000).to_dicts(e)[0]
            expect = orjson.loads(b"{" + want[1:] + b"}")
            assert {key: got.get(key) for key in expect} == expect, k


@pytest.mark.parametrize("implementation", ["compiled"], indirect=True)
def test_compiled_cache_answer_is_not_reused_2_to_the_32_generations_later(implementation: str) -> None:
    """The compiled reader keeps each cached answer with the low 32 bits of the index generation
    it was filled at, and an answer of another generation is looked up again. A slot nobody
    asked for while the index changed 2^32 times (about 50 days at 1,000 pod events a second)
    read as current again: one stale answer (the reader now empties every slot when the high
    bits move). The generation is moved here by exactly 2^32 after the address changed hands:
    the new holder must come out."""
    clock = Clock(T0 - 3_600_000)
    old = pod("old", "shop", ips=["10.244.0.40"], node="node-a", host_ip="10.0.0.1", uid="u-old", created=iso(clock.ms))
    e = build([old], clock=clock)
    idx = e.index
    assert idx.compiled
    r = idx._reader
    addr, t = raw("10.244.0.40"), T0 + 30_000
    assert side(flow(e, "10.244.0.40", "", t_ms=t), "SrcK8S_")["Name"] == "old"
    filled = r.generation
    clock.ms = T0
    idx.delete("pods", idx.parse("pods", old))
    clock.ms = T0 + 20_000
    idx.upsert("pods", idx.parse("pods", pod("new", "shop", ips=["10.244.0.40"], node="node-a", host_ip="10.0.0.1",
                                             uid="u-new", created=iso(clock.ms))))
    assert r.generation > filled
    r.generation = filled + (1 << 32)
    assert e.enrich(addr, b"", b"", t, -1) == idx.enrich(addr, b"", b"", t, -1)
    assert side(flow(e, "10.244.0.40", "", t_ms=t), "SrcK8S_")["Name"] == "new"


@pytest.mark.parametrize("implementation", ["compiled"], indirect=True)
def test_more_busy_addresses_than_text_blocks(implementation: str) -> None:
    """The compiled reader lends its 4,096 text blocks to the cache slots that hold somebody;
    with more addresses in use than that, each refill takes a block back from another slot,
    which forgets its answer, but never from the slot of the source a destination's miss is
    resolved beside (its parts are being read). 6,000 pods in random pairs: every answer is the
    Python reference's."""
    import random

    pods = [pod(f"pod-{i}", f"ns-{i % 7}", ips=[f"10.{128 + i // 250}.{i % 250}.7"], uid=f"u{i}") for i in range(6000)]
    e = build(pods)
    idx = e.index
    assert idx.compiled
    addrs = [raw(f"10.{128 + i // 250}.{i % 250}.7") for i in range(6000)]
    rnd = random.Random(11)
    r = idx._reader
    misses = r.misses
    for k in range(40_000):
        src, dst = rnd.choice(addrs), rnd.choice(addrs)
        assert e.enrich(src, dst, b"", 0, -1) == idx.enrich(src, dst, b"", 0, -1), k
    assert r.misses - misses > 20_000    # the blocks went round: answers forgotten and looked up again


# ---------------------------------------------------------------- config and CLI

def test_cli_arguments() -> None:
    p = argparse.ArgumentParser()
    enrich.add_cli_arguments(p)
    c = enrich.config_from_args(p.parse_args([]), own_namespace="")
    assert (c.enabled, c.kubeconfig, c.cluster_name, c.infra_namespace_prefixes) == (True, None, "", ["openshift", "kube-"])
    c = enrich.config_from_args(p.parse_args(["--enrich=false", "--kubeconfig", "/k", "--cluster-name", "east",
                                              "--infra-namespace-prefix", "sys-", "--infra-namespace-prefix", "ops"]))
    assert (c.enabled, c.kubeconfig, c.cluster_name, c.infra_namespace_prefixes) == (False, "/k", "east", ["sys-", "ops"])
    # a list as `flowscope run` takes it (`flowscope decode --infra-namespace-prefix sys-,ops` was one prefix)
    c = enrich.config_from_args(p.parse_args(["--infra-namespace-prefix", "sys-,ops", "--infra-namespace-prefix",
                                              "infra- tools"]))
    assert c.infra_namespace_prefixes == ["sys-", "ops", "infra-", "tools"]
    assert enrich.config_from_args(p.parse_args(["--no-enrich"])).enabled is False
    assert enrich.config_from_args(p.parse_args(["--enrich"])).enabled is True
    assert enrich.config_from_args(p.parse_args(["--no-enrich", "--enrich=yes"])).enabled is True
    with pytest.raises(SystemExit):
        p.parse_args(["--enrich=maybe"])


@pytest.mark.parametrize("kwargs,field", [
    ({"tombstone_seconds": -1}, "tombstone_seconds"),
    ({"watch_timeout_seconds": 0}, "watch_timeout_seconds"),
    ({"backoff_initial_seconds": 0}, "backoff_initial_seconds"),
    ({"backoff_factor": 0.5}, "backoff_factor"),
    ({"backoff_max_seconds": 0.1, "backoff_initial_seconds": 1}, "backoff_max_seconds"),
    ({"infra_namespace_prefixes": "kube-"}, "infra_namespace_prefixes"),
    ({"infra_namespace_prefixes": [""]}, "infra_namespace_prefixes"),
    ({"list_chunk_size": -5}, "list_chunk_size"),
    ({"enabled": "yes"}, "enabled"),
    ({"read_timeout_slack_seconds": -1}, "read_timeout_slack_seconds"),
    ({"read_timeout_slack_seconds": 0}, "read_timeout_slack_seconds"),
    ({"read_timeout_slack_seconds": 0.5}, "read_timeout_slack_seconds"),
    ({"read_timeout_slack_seconds": float("nan")}, "read_timeout_slack_seconds"),
])
def test_config_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(enrich.EnrichConfigError, match=field):
        enrich.EnrichConfig(**kwargs)


def test_the_watch_slack_has_a_floor_and_says_why() -> None:
    """read_timeout_slack_seconds is how long after its timeoutSeconds the informer cuts a watch
    the API server has not ended; under a second (0 was taken) the cut races the server's own end
    of the stream and counts a stream it ended in watches_overdue. Refused at start, saying so."""
    with pytest.raises(enrich.EnrichConfigError) as info:
        enrich.EnrichConfig(read_timeout_slack_seconds=0)
    assert str(info.value).startswith("read_timeout_slack_seconds must be >= 1, got 0: "), info.value
    assert "watches_overdue" in str(info.value)
    assert enrich.EnrichConfig(read_timeout_slack_seconds=1).read_timeout_slack_seconds == 1


def test_own_namespace_detection(tmp_path: Any) -> None:
    from enrich.config import detect_own_namespace

    f = tmp_path / "namespace"
    f.write_text("netobserv-privileged\n")
    assert detect_own_namespace(environ={}, namespace_file=str(f)) == "netobserv-privileged"
    assert detect_own_namespace(environ={"POD_NAMESPACE": "x"}, namespace_file=str(f)) == "x"
    assert detect_own_namespace(environ={}, namespace_file=str(tmp_path / "missing")) == ""


def test_kubeconfig_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from kubernetes.config import ConfigException

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope"))
    with pytest.raises(ConfigException):
        enrich.Enricher(enrich.EnrichConfig(own_namespace="")).start()
    # In a pod (KUBERNETES_SERVICE_HOST set) the ServiceAccount files are required.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ConfigException):
        enrich.Enricher(enrich.EnrichConfig(own_namespace="")).start()


def test_compiled_reader_cache_keeps_a_working_set_and_counts_lookups() -> None:
    # 3,000 busy pod addresses: after one pass every lookup of a second pass should come from the
    # per-address cache but for the few addresses three to a set (a direct-mapped table of the
    # same size misses 9% of them: 17% of the addresses share a slot), with the
    # same answers as the first pass; the counters feed flowscope_enrich_lookups.
    import random

    from benchmarks import enrich_bench as E

    rng = random.Random(5)
    base = int(ipaddress.IPv4Address("10.128.0.0"))
    offs = rng.sample(range(512 * 512), 3000)  # random pods over 512 node subnets, as loadgen draws them
    e = enrich.Enricher.from_objects(pods=[E.pod(i, o // 512, str(ipaddress.IPv4Address(base + o)), 300)
                                           for i, o in enumerate(offs)],
                                     nodes=E.nodes(512), replicasets=E.replicasets(300))
    if e.index._reader is None:
        pytest.skip("the per-address cache is the compiled reader's: under the pure-Python reader (this "
                    "file's other parametrization) there is none to test")
    addrs = [ipaddress.IPv4Address(base + o).packed for o in offs]
    agent = ipaddress.ip_address(E.node_ip(0)).packed
    first = [e.enrich(a, addrs[-1 - i], agent, 0, 0) for i, a in enumerate(addrs)]
    s1 = e.stats()
    second = [e.enrich(a, addrs[-1 - i], agent, 0, 0) for i, a in enumerate(addrs)]
    s2 = e.stats()
    assert second == first and all(b'"SrcK8S_Name"' in f for f in first)
    looked = (s2["lookups_cached"] + s2["lookups_index"]) - (s1["lookups_cached"] + s1["lookups_index"])
    assert looked == 2 * len(addrs)
    # direct-mapped: 9%; 2 ways a set: 2%; 4 ways: 0.1% (Poisson: sets of more than 4)
    assert s2["lookups_index"] - s1["lookups_index"] < 0.01 * looked


# ---------------------------------------------------------------- exporter clocks

def _reused_ip_index() -> enrich.Enricher:
    """Pod `old` held 10.244.0.30 until it was deleted at T0; pod `new` got it at T0 + 20 s."""
    clock = Clock(T0 - 3_600_000)
    old = pod("old", "shop", ips=["10.244.0.30"], uid="u-old", created=iso(T0 - 3_600_000))
    e = build([old], clock=clock, tombstone_seconds=300)
    clock.ms = T0
    e.index.delete("pods", e.index.parse("pods", old))
    clock.ms = T0 + 20_000
    e.index.upsert("pods", e.index.parse("pods", pod("new", "other", ips=["10.244.0.30"], uid="u-new",
                                                         created=iso(T0 + 20_000))))
    return e


def _export(proto: str, export_ms: int, start_ms: int, *, src: str = "10.244.0.30") -> bytes:
    """One flow from `src` exported at export_ms that started at start_ms, both on the exporter's
    clock, in each protocol's own time base."""
    from benchmarks import datagrams as D

    secs = export_ms // 1000
    uptime = 3_600_000
    boot = secs * 1000 - uptime
    if proto == "netflow5":
        rec = dict(D.v5_records(1, __import__("random").Random(1), uptime_ms=uptime)[0],
                   src=int(ipaddress.IPv4Address(src)), first=start_ms - boot, last=start_ms - boot)
        return D.v5_datagram([rec], seq=0, unix_secs=secs, uptime_ms=uptime)
    if proto == "netflow9":
        t = D.IpfixTemplate(300, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("first", 22, 0, 4), ("last", 21, 0, 4)))
        rec: dict[str, object] = {"src": src, "dst": "8.8.8.8", "first": start_ms - boot, "last": start_ms - boot}
        return D.v9_datagram([D.template_set([t], version=9), D.data_set(t, [rec])], seq=0, unix_secs=secs,
                             uptime_ms=uptime)
    if proto == "ipfix-absolute":   # flowStart/EndMilliseconds (152/153)
        t = D.IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("s", 152, 0, 8), ("e", 153, 0, 8)))
        rec = {"src": src, "dst": "8.8.8.8", "s": start_ms, "e": start_ms}
    else:                           # OVS: flowStart/EndDeltaMicroseconds (158/159) before the export time
        t = D.IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("sd", 158, 0, 4), ("ed", 159, 0, 4)))
        rec = {"src": src, "dst": "8.8.8.8", "sd": (secs * 1000 - start_ms) * 1000, "ed": 0}
    return D.ipfix_message([D.template_set([t]), D.data_set(t, [rec])], seq=0, export_time=secs)


@pytest.mark.parametrize("proto", ["ipfix", "ipfix-absolute", "netflow9", "netflow5"])
def test_an_exporter_clock_minutes_off_does_not_pick_the_holder_of_a_reused_ip(proto: str) -> None:
    """The flow start that picks the holder of a reused address is read on the collector's clock:
    the exporter's offset (receive time - export time) moves it when it is beyond 2 s, and it is
    never after the receive time. The published times stay as exported."""
    from decoders import Decoder

    e = _reused_ip_index()
    # (exporter clock - collector clock, received at, really started at, holder then)
    cases = [(-180_000, T0 + 60_000, T0 + 55_000, "new"),   # 3 min behind: not old's (T0 - 125 s)
             (180_000, T0 + 30_000, T0 - 25_000, "old"),    # 3 min ahead: not new's (T0 + 155 s)
             (0, T0 + 30_000, T0 - 25_000, "old"),          # in sync: as exported
             (0, T0 + 60_000, T0 + 55_000, "new"),
             (0, T0 + 60_000, T0 + 10_000, None),           # nobody held it then
             (1_500, T0 + 60_000, T0 + 19_000, "new")]      # within the tolerance: as exported (T0 + 20.5 s)
    for skew, recv, start, want in cases:
        data = _export(proto, recv + skew, start + skew)
        f = Decoder().decode(data, "10.0.0.1", 4739, recv / 1000).to_dicts(e)[0]
        assert f.get("SrcK8S_Name") == want, (skew, start - T0)
        assert f["TimeFlowStartMs"] == start + skew    # published as exported


def test_a_flow_start_after_its_receive_time_is_looked_up_at_the_receive_time() -> None:
    from decoders import Decoder

    e = _reused_ip_index()
    # 1.5 s ahead (within the tolerance, not moved): a start 1 s after the receive time, when
    # the address was new's, is read at the receive time, when nobody held it.
    f = Decoder().decode(_export("ipfix-absolute", T0 + 19_500, T0 + 20_500), "10.0.0.1", 4739,
                         (T0 + 19_500 - 1_500) / 1000).to_dicts(e)[0]
    assert f["TimeFlowStartMs"] == T0 + 20_500 and "SrcK8S_Name" not in f


def test_a_late_datagram_is_not_taken_for_exporter_clock_skew() -> None:
    """receive - export time is the exporter's clock offset plus the datagram's delay (a socket
    buffer, a collector running behind): once a datagram on time was seen, one read 3 s late
    from the same exporter is not moved, and its flow keeps the pod that held the address."""
    from decoders import Decoder

    e = _reused_ip_index()
    for proto in ("ipfix", "ipfix-absolute", "netflow9", "netflow5"):
        dec = Decoder()
        on_time = dec.decode(_export(proto, T0 - 60_000, T0 - 70_000), "10.0.0.1", 4739, (T0 - 60_000) / 1000)
        assert on_time.to_dicts(e)[0].get("SrcK8S_Name") == "old"
        # started at T0 - 2 s (old's), exported at T0 + 5 s, read at T0 + 8 s
        late = dec.decode(_export(proto, T0 + 5_000, T0 - 2_000), "10.0.0.1", 4739, (T0 + 8_000) / 1000)
        assert late.to_dicts(e)[0].get("SrcK8S_Name") == "old", proto


def test_each_exporter_has_its_own_clock() -> None:
    """One decoder, two exporters: one 3 minutes behind, one in sync; each is read on its own
    offset, and the estimate keeps the smallest offset seen (a delayed datagram of the one
    behind does not move it further)."""
    from decoders import Decoder

    e = _reused_ip_index()
    dec = Decoder()
    recv = T0 + 60_000
    for _ in range(2):
        behind = dec.decode(_export("ipfix", recv - 180_000, T0 + 55_000 - 180_000), "10.0.0.1", 4739, recv / 1000)
        in_sync = dec.decode(_export("ipfix", recv, T0 - 5_000), "10.0.0.2", 4739, recv / 1000)
        assert [f.get("SrcK8S_Name") for f in behind.to_dicts(e) + in_sync.to_dicts(e)] == ["new", "old"]
    late = dec.decode(_export("ipfix", recv - 180_000, T0 + 55_000 - 180_000), "10.0.0.1", 4739,
                      (recv + 4_000) / 1000)
    assert late.to_dicts(e)[0].get("SrcK8S_Name") == "new"


def test_exporters_taking_turns_each_get_their_own_node_and_address() -> None:
    """A collector behind a Service takes datagrams from many nodes in turn (Open vSwitch sends
    one record a message): each flow gets its own exporter's AgentIP and its FlowDirection from
    that exporter's node, with more exporters than the compiled reader keeps answers for (512),
    addresses alike but for one byte (one node per /24, 10.0.i.10: the batch head cache took one
    slot for all of them), IPFIX and NetFlow v9 from the same exporters; after the index moves,
    an exporter address given to another node names the new one."""
    from benchmarks import datagrams as D
    from decoders import Decoder

    n = 600

    def host(i: int) -> str:
        return f"10.{i // 250}.{i % 250}.10"

    def addr(i: int) -> str:
        return f"10.{100 + i // 250}.{i % 250}.5"

    nodes = [node(f"node-{i}", internal=[host(i)], subnets={"default": f"10.{100 + i // 250}.{i % 250}.0/24"})
             for i in range(n)]
    pods = [pod(f"p{i}", "shop", ips=[addr(i)], node=f"node-{i}", host_ip=host(i), uid=f"u{i}") for i in range(n)]
    # (the index moves a minute before the flows start: they are the new node's, not the old one's
    # flows of before, which its tombstone keeps)
    e = enrich.Enricher.from_objects(pods=pods, nodes=nodes, config=enrich.EnrichConfig(own_namespace=""),
                                     clock=Clock(T0 - 60_000))
    t = D.IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4)))
    dec = Decoder()

    def one(i: int, src: str, dst: str, v9: bool) -> dict[str, Any]:
        rec = {"src": src, "dst": dst}
        sets = [D.template_set([t], version=9 if v9 else 10), D.data_set(t, [rec])]
        data = D.v9_datagram(sets, seq=0, unix_secs=T0 // 1000, uptime_ms=1000) if v9 else \
            D.ipfix_message(sets, seq=0, export_time=T0 // 1000)
        flows = dec.decode(data, host(i), 4739, T0 / 1000).to_dicts(e)
        assert len(flows) == 1
        return flows[0]

    for rnd in range(2):
        for i in range(n):
            j = (i + 1 + rnd) % n
            v9 = (i + rnd) % 2 == 1
            out = one(i, addr(i), addr(j), v9)     # from the exporter's pod: egress
            assert (out["AgentIP"], out["FlowDirection"], out["FlowProtocol"]) == \
                (host(i), 1, "netflow9" if v9 else "ipfix"), (rnd, i)
            back = one(i, addr(j), addr(i), not v9)  # to it: ingress
            assert (back["AgentIP"], back["FlowDirection"], back["FlowProtocol"]) == \
                (host(i), 0, "ipfix" if v9 else "netflow9"), (rnd, i)
    # node-0 goes; its address is node-1's second one now: node-0's flows are node-1's egress
    # (its answer was just cached)
    assert one(0, addr(0), addr(1), False)["FlowDirection"] == 1
    idx = e.index
    idx.delete("nodes", idx.parse("nodes", nodes[0]))
    idx.delete("pods", idx.parse("pods", pods[0]))
    idx.upsert("nodes", idx.parse("nodes", node("node-1", internal=[host(1), host(0)],
                                                 subnets={"default": "10.100.1.0/24"})))
    assert one(0, addr(1), addr(2), False)["FlowDirection"] == 1
    assert one(0, addr(2), addr(1), False)["FlowDirection"] == 0


def test_an_exporters_node_follows_every_index_change_between_its_datagrams(implementation: str) -> None:
    """Open vSwitch sends one record a datagram: the encoder keeps each exporter's node between
    its datagrams (in the decoder's exporter state) while the index has not moved. Every change
    of what the exporter's address names shows in its next datagram: its node's address changed
    (given to the other node), the node deleted, added back; another enricher (of the same
    generation) asked in turn; an sFlow exporter whose datagrams name other agents."""
    from benchmarks import datagrams as D
    from decoders import Decoder

    def nodes(a: list[str], b: list[str]) -> list[dict[str, Any]]:
        return [node("node-a", internal=a), node("node-b", internal=b)]

    # no pod hostIP: the exporter's address names a node only through the Node objects
    pods = [pod("a1", "shop", ips=["10.244.0.5"], node="node-a", host_ip=None, uid="u-a1"),
            pod("b1", "shop", ips=["10.244.1.5"], node="node-b", host_ip=None, uid="u-b1")]
    cfg = enrich.EnrichConfig(own_namespace="")
    clock = Clock(T0)
    e = enrich.Enricher.from_objects(pods=pods, nodes=nodes(["10.0.0.1"], ["10.0.0.2"]), config=cfg, clock=clock)
    idx = e.index
    t = D.IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4)))
    dec = Decoder()
    seq = 0

    def direction(enricher: enrich.Enricher = e, at: float | None = None) -> int | None:
        """FlowDirection of a1 -> b1 in a datagram from 10.0.0.1 (none given by the exporter),
        received (its flow's start: the template has none) now on the index's clock, after every
        change so far (a Node that stopped holding an address keeps it for the flows of before),
        or at `at`."""
        nonlocal seq
        now = clock() if at is None else at
        data = D.ipfix_message([D.template_set([t]), D.data_set(t, [{"src": "10.244.0.5", "dst": "10.244.1.5"}])],
                               seq=seq, export_time=int(now))
        seq += 1
        out = dec.decode(data, "10.0.0.1", 4739, now).to_dicts(enricher)
        assert len(out) == 1 and out[0]["SrcK8S_Name"] == "a1" and out[0]["DstK8S_Name"] == "b1"
        return out[0].get("FlowDirection")

    def nodes_now(a: list[str], b: list[str]) -> None:
        clock.ms += 1_000
        for n in nodes(a, b):
            idx.upsert("nodes", idx.parse("nodes", n))

    assert [direction(), direction()] == [1, 1]       # the exporter is the source's node: egress
    nodes_now(["10.0.0.9"], ["10.0.0.2", "10.0.0.1"])  # node-a's address changed, node-b took it
    assert [direction(), direction()] == [0, 0]       # the destination's node: ingress
    clock.ms += 1_000
    idx.delete("nodes", idx.parse("nodes", nodes(["10.0.0.9"], ["10.0.0.2", "10.0.0.1"])[1]))
    assert [direction(), direction()] == [None, None]  # nobody's: the exporter gave none
    # flows of before the changes, exporter by exporter: node-a had the address then (its
    # tombstone), the source's node; between the two, node-b, the destination's
    assert [direction(at=T0 / 1000), direction(at=T0 / 1000 + 1.5)] == [1, 0]
    clock.ms += 1_000
    idx.upsert("nodes", idx.parse("nodes", nodes(["10.0.0.9"], ["10.0.0.1"])[1]))
    assert [direction(), direction()] == [0, 0]       # added back

    # Another enricher, built alike but with 10.0.0.1 node-a's: its answers, in turn with the first's.
    other = enrich.Enricher.from_objects(pods=pods, nodes=nodes(["10.0.0.1"], ["10.0.0.2"]), config=cfg)
    if implementation == "compiled":
        # the same generation: only which view answered tells the two apart
        while other.index._reader.generation < idx._reader.generation:
            other.index._reader.generation += 1
        assert other.index._reader.generation == idx._reader.generation
    assert [direction(), direction(other), direction(), direction(other)] == [0, 1, 0, 1]

    # sFlow: one source, datagrams naming node-a's and node-b's addresses as their agent
    sample = D.SflowSample(src="10.244.0.5", dst="10.244.1.5", sport=1000, dport=80, proto=6, frame_length=100,
                           flags=0x10, rate=1, input=1, output=2)
    got = []
    for i, agent in enumerate(["10.0.0.9", "10.0.0.9", "10.0.0.1", "10.0.0.1", "10.0.0.9"]):
        out = dec.decode(D.sflow_datagram([sample], seq=i + 1, agent=agent), "10.0.0.50", 6343, T0 / 1000).to_dicts(e)
        assert len(out) == 1 and out[0]["AgentIP"] == agent
        got.append(out[0].get("FlowDirection"))
    assert got == [1, 1, 0, 0, 1]


def test_an_identity_longer_than_64_kib_is_published_whole(implementation: str) -> None:
    """No API server accepts a 70,000-character pod name (Kubernetes caps names at 253), but a
    broken or hostile one may send it: the flow still gets the pod's identity, never an error
    (a version of the compiled cache that kept part lengths in 16 bits raised ValueError for
    every flow of such a pod)."""
    name = "p" * 70_000
    e = build([pod(name, "shop", ips=["10.244.0.41"], node="node-a", host_ip="10.0.0.1"),
               pod("peer", "shop", ips=["10.244.0.42"], node="node-a", host_ip="10.0.0.1")])
    for _ in range(2):   # the second time from the compiled reader's cache
        d = flow(e, "10.244.0.41", "10.244.0.42")
        assert side(d, "SrcK8S_")["Name"] == name
        assert side(d, "DstK8S_")["Name"] == "peer"


def test_relists_keep_nothing_of_the_generations_before(implementation: str) -> None:
    """A relist (Index.replace) swaps in new reader dicts and nothing keeps the old ones (the
    compiled reader is re-pointed; its per-address cache holds entries, not dicts); and over
    relists with pods replaced (new names and uids, the same addresses), the pod records alive
    are the index's own, live ones and tombstones, the tombstones swept after tombstone_seconds.
    (The soak's worker RSS steps at relists are the allocators' high-water, not a generation
    kept: benchmarks/RESULTS.md, "Soak".)"""
    clock = Clock(T0)
    e = build(clock=clock, tombstone_seconds=300)
    idx = e.index

    def spec(i: int, tag: str, created: int) -> dict[str, Any]:
        return pod(f"p-{i}-{tag}", "shop", ips=[f"10.244.0.{i + 10}"], uid=f"u-{i}-{tag}", created=iso(created),
                   owner=("ReplicaSet", "web-6d4cf56db6"))

    gc.collect()
    others = [o for o in gc.get_objects() if type(o) is PodRec]   # (other tests': held, not counted)
    live = [spec(i, "0", T0 - 60_000) for i in range(40)]
    idx.replace("pods", [idx.parse("pods", p) for p in live])
    for rnd in range(1, 13):
        clock.ms += 150_000   # the soak's 410s, 150 s apart: a tombstone lives two rounds
        for i in range(rnd % 4, 40, 4):   # a quarter of the pods replaced a round
            live[i] = spec(i, str(rnd), clock.ms - 1000)
        ips, agents = idx._ips, idx._agents
        idx.replace("pods", [idx.parse("pods", p) for p in live])
        assert idx._ips is not ips
        assert (sys.getrefcount(ips), sys.getrefcount(agents)) == (2, 2)   # ours (and the call's) only
        del ips, agents
        for i in range(40):   # the reader holds an answer for each address (its cache, compiled)
            d = flow(e, f"10.244.0.{i + 10}", "10.0.0.1", t_ms=clock.ms)
            assert side(d, "SrcK8S_")["Name"] == live[i]["metadata"]["name"]
        recs = sum(1 for o in gc.get_objects() if type(o) is PodRec) - len(others)
        assert (len(idx._pods), len(idx._tombstones)) == (40, 20 if rnd > 1 else 10)
        assert recs == 40 + len(idx._tombstones)
