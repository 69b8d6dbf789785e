"""Pod addresses beyond status.podIPs: OVN-Kubernetes user-defined networks
(`k8s.ovn.org/pod-networks`) and Multus secondary networks (`k8s.v1.cni.cncf.io/network-status`,
or `k8s.v1.cni.cncf.io/networks-status` as Multus releases before the rename write it).

A pod of a namespace with a primary UDN keeps its default-network address (status.podIPs, role
"infrastructure-locked") for the kubelet's probes only and sends its traffic from its UDN
address, which only the annotation names: without it those flows have no identity. The rules
checked here are docs/collector.md's ("A pod's addresses beyond status.podIPs"): the same
identity and the same time-based reuse as podIPs, status.podIPs first, an address two live pods
claim by annotation is nobody's (counted), malformed annotations counted and the last good
addresses kept. Index tests run on both readers; the end-to-end ones go through the fake API
server (tests/support/fake_kube.py), the informers and `flowscope decode --kubeconfig`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

import enrich
from enrich.index import NO_ANN_IPS, multus_network_ips, ovn_pod_network_ips
from tests.support.enricher import running_enricher
from tests.support.fake_kube import FakeKube, node, pod, run_enrich_config
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture
from tests.test_enrich_index import NOBODY, T0, Clock, build, flow, iso, raw
from tests.test_enrich_index import implementation as implementation  # noqa: F401 - autouse fixture
from tests.test_enrich_informer import kubeconfig as kubeconfig  # noqa: F401 - fixture

PN, NS = "k8s.ovn.org/pod-networks", "k8s.v1.cni.cncf.io/network-status"
OLD_NS = "k8s.v1.cni.cncf.io/networks-status"   # Multus before the rename (older OpenShift)
UDN4, UDN6 = "10.100.0.5", "fd99::5"


def ovn(networks: dict[str, list[str]], *, primary: str | None = None) -> dict[str, str]:
    """A pod-networks annotation as OVN-Kubernetes writes it: network -> CIDRs, the default
    network infrastructure-locked when `primary` names the pod's primary UDN."""
    out: dict[str, Any] = {}
    for i, (net, cidrs) in enumerate(networks.items()):
        role = ("primary" if net == primary else "infrastructure-locked" if net == "default" and primary
                else "primary" if net == "default" else "secondary")
        out[net] = {"ip_addresses": cidrs, "mac_address": f"0a:58:0a:64:00:{i:02x}", "routes": [], "role": role}
        if cidrs:
            out[net]["ip_address"] = cidrs[0]
    return {PN: json.dumps(out)}


def multus(*attachments: tuple[str, str, list[str] | None, bool], key: str = NS) -> dict[str, str]:
    """A network-status annotation: (name, interface, ips or None for no IPAM, default); `key`
    OLD_NS for the older key."""
    out = []
    for name, iface, ips, default in attachments:
        a: dict[str, Any] = {"name": name, "interface": iface, "mac": "02:00:00:00:00:01", "dns": {}}
        if ips is not None:
            a["ips"] = ips
        if default:
            a["default"] = True
        out.append(a)
    return {key: json.dumps(out)}


def udn_pod(name: str = "web-1", ns: str = "blue", *, ip: str = "10.244.0.9", udn: list[str] | None = None,
            **kw: Any) -> dict[str, Any]:
    """A pod of namespace `ns` whose primary UDN is `ns`/udn: podIPs the default network's."""
    cidrs = [f"{a}/16" if ":" not in a else f"{a}/64" for a in (udn if udn is not None else [UDN4, UDN6])]
    return pod(name, ns, ips=[ip], annotations=ovn({"default": [f"{ip}/24"], f"{ns}/udn": cidrs},
                                                   primary=f"{ns}/udn"), **kw)


def name_at(e: enrich.Enricher, addr: str, t_ms: int = 0) -> str | None:
    return flow(e, addr, "", t_ms=t_ms).get("SrcK8S_Name")


def apply(e: enrich.Enricher, obj: dict[str, Any]) -> None:
    e.index.upsert("pods", e.index.parse("pods", obj))


# ---------------------------------------------------------------- the annotations' formats

def test_annotation_parsers_read_the_documented_shapes() -> None:
    pn = ('{"default":{"ip_addresses":["10.128.2.20/23"],"mac_address":"0a:58:0a:80:02:14","ip_address":'
          '"10.128.2.20/23","role":"infrastructure-locked"},"mesh/primary-udn":{"ip_addresses":["10.200.200.12/24",'
          '"fd99::c/64"],"mac_address":"0a:58:0a:c8:c8:0c","gateway_ips":["10.200.200.1"],"tunnel_id":16,'
          '"role":"primary"},"old/single":{"ip_address":"192.168.9.9/24","mac_address":"0a:58:c0:a8:09:09"},'
          '"l2/no-ipam":{"ip_addresses":null,"mac_address":"0a:58:00:00:00:01"}}')
    assert ovn_pod_network_ips(pn) == [raw("10.128.2.20"), raw("10.200.200.12"), raw("fd99::c"), raw("192.168.9.9")]
    ns = ('[{"name":"ovn-kubernetes","interface":"eth0","ips":["10.130.0.127"],"mac":"0a:58:0a:82:00:7f","dns":{}},'
          '{"name":"ovn-kubernetes","interface":"ovn-udn1","ips":["66.66.0.6"],"default":true,"dns":{}},'
          '{"name":"island/s1-l2","interface":"net1","ips":["66.66.1.3","fd00::3"],"mac":"0a:58:42:42:01:03"},'
          '{"name":"sriov/vf","interface":"net2","mac":"aa:bb:cc:dd:ee:ff","dns":{}}]')
    assert multus_network_ips(ns) == [raw("10.130.0.127"), raw("66.66.0.6"), raw("66.66.1.3"), raw("fd00::3")]


# ---------------------------------------------------------------- identities

def test_a_primary_udn_pods_traffic_from_its_udn_addresses_is_the_pods_in_both_families() -> None:
    e = build([udn_pod(owner=None)])
    for addr in (UDN4, UDN6, "10.244.0.9"):       # UDN IPv4, UDN IPv6, the default network's (podIPs)
        f = flow(e, addr, "10.0.0.2", agent="10.0.0.1")
        assert (f["SrcK8S_Name"], f["SrcK8S_Namespace"], f["SrcK8S_Type"], f["SrcK8S_HostName"]) == (
            "web-1", "blue", "Pod", "node-a"), addr
        assert (f["SrcK8S_Zone"], f["DstK8S_Name"], f["FlowDirection"]) == ("zone-a", "node-b", 1)
    assert flow(e, "10.0.0.1", UDN4)["FlowDirection"] == 2          # node-a to its own pod: inner
    counts = e.stats()["index"]
    # the default network's address is in status.podIPs already: only the UDN's two are extra
    assert (counts["pod_ips"], counts["pod_network_ips"]) == (3, 2)


def test_multus_secondary_network_addresses_are_the_pods() -> None:
    ann = multus(("ovn-kubernetes", "eth0", ["10.244.0.12"], True),
                 ("shop/storage", "net1", ["192.168.50.12", "fd50::12"], False),
                 ("shop/sriov", "net2", None, False))              # no IPAM: a MAC only
    e = build([pod("db-0", "shop", ips=["10.244.0.12"], owner=("StatefulSet", "db"), annotations=ann)])
    for addr in ("192.168.50.12", "fd50::12", "10.244.0.12"):
        assert (flow(e, "", addr)["DstK8S_Name"], flow(e, "", addr)["DstK8S_OwnerName"]) == ("db-0", "db"), addr
    assert e.stats()["problems"] == {}


def test_multus_status_under_its_key_before_the_rename_is_read_alike() -> None:
    """Multus releases before network-status (clusters still running them: older OpenShift)
    write the same list under networks-status only."""
    ann = multus(("ovn-kubernetes", "eth0", ["10.244.0.12"], True),
                 ("shop/storage", "net1", ["192.168.50.12", "fd50::12"], False), key=OLD_NS)
    e = build([pod("db-0", "shop", ips=["10.244.0.12"], owner=("StatefulSet", "db"), annotations=ann)])
    for addr in ("192.168.50.12", "fd50::12", "10.244.0.12"):
        assert (flow(e, "", addr)["DstK8S_Name"], flow(e, "", addr)["DstK8S_OwnerName"]) == ("db-0", "db"), addr
    assert e.stats()["problems"] == {} and e.stats()["index"]["pod_network_ips"] == 2
    rec = e.index.parse("pods", pod("db-0", "shop", ips=["10.244.0.12"], annotations=ann))
    assert rec.ann_ips == ((), (raw("192.168.50.12"), raw("fd50::12")))   # only the addresses are kept


def test_network_status_wins_over_the_older_key_which_is_then_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """Multus releases that wrote both keys wrote the same list; when they disagree (an old
    annotation left behind by a Multus since upgraded) the current key is the truth, and the old
    one is not even checked: malformed, it is not counted; good, it does not stand in for a
    malformed network-status."""
    new, old = multus(("blue/lan", "net1", ["172.20.0.5"], False)), multus(("blue/lan", "net1", ["172.20.0.9"], False),
                                                                          key=OLD_NS)
    e = build([pod("a", "blue", ips=["10.244.0.9"], annotations={**new, **old}),
               pod("b", "blue", ips=["10.244.0.10"], annotations={**multus(("blue/lan", "net1", ["172.20.0.6"], False)),
                                                                   OLD_NS: "{broken"})])
    assert (name_at(e, "172.20.0.5"), name_at(e, "172.20.0.6")) == ("a", "b")
    assert flow(e, "172.20.0.9", "") == NOBODY
    assert e.stats()["problems"] == {} and e.stats()["index"]["pod_network_ips"] == 2
    with caplog.at_level(logging.WARNING, "flowscope.enrich"):
        e = build([pod("c", "blue", ips=["10.244.0.11"], annotations={NS: "[{broken", **old})])
    assert flow(e, "172.20.0.9", "") == NOBODY and name_at(e, "10.244.0.11") == "c"
    assert e.stats()["problems"] == {"bad_pod_networks": 1}
    assert NS + "=" in caplog.text and OLD_NS not in caplog.text       # the key that was read is named


def test_a_pod_on_a_udn_and_a_multus_network_has_both() -> None:
    ann = {**ovn({"default": ["10.244.0.9/24"], "blue/udn": ["10.100.0.5/16"]}, primary="blue/udn"),
           **multus(("ovn-kubernetes", "ovn-udn1", ["10.100.0.5"], True), ("blue/lan", "net1", ["172.20.0.5"], False))}
    e = build([pod("web-1", "blue", ips=["10.244.0.9"], annotations=ann)])
    assert [name_at(e, a) for a in ("10.100.0.5", "172.20.0.5", "10.244.0.9")] == ["web-1"] * 3
    assert e.stats()["index"]["pod_network_ips"] == 2


def test_host_network_pods_index_no_annotation_address() -> None:
    ann = multus(("host", "eth0", ["10.0.0.1", "192.168.77.1"], True))
    e = build([pod("agent", "kube-system", ips=["10.0.0.1"], host_network=True, annotations=ann)])
    assert flow(e, "10.0.0.1", "")["SrcK8S_Type"] == "Node"
    assert flow(e, "192.168.77.1", "") == NOBODY


def test_turned_off_annotations_are_not_read() -> None:
    e = build([udn_pod()], pod_networks=False)
    assert flow(e, UDN4, "") == NOBODY and name_at(e, "10.244.0.9") == "web-1"
    assert e.stats()["index"]["pod_network_ips"] == 0


def test_only_addresses_are_kept_and_a_pod_whose_annotations_repeat_its_pod_ips_keeps_nothing_more() -> None:
    """Every pod of an OVN-Kubernetes cluster has pod-networks, most with only the default
    network (its podIPs): those must cost nothing (100k pods), and no annotation text is kept."""
    idx = build().index
    plain = idx.parse("pods", pod("p", "shop", ips=["10.244.0.20"],
                                  annotations=ovn({"default": ["10.244.0.20/24"]})))
    assert plain.ann_ips is NO_ANN_IPS
    rec = idx.parse("pods", udn_pod())
    assert rec.ann_ips == ((raw(UDN4), raw(UDN6)), ())
    assert not any(isinstance(v, str) and "ip_addresses" in v for v in (getattr(rec, s) for s in rec.__slots__))


# ---------------------------------------------------------------- conflicts

def test_two_live_pods_of_different_networks_on_one_address_are_nobodys_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    """Isolated networks may overlap: the address is both pods'; a flow does not say which
    network it was on, so neither is guessed."""
    clock = Clock(T0)
    a = pod("a", "red", ips=["10.244.0.31"], uid="u-a", created=iso(T0 - 60_000),
            annotations=ovn({"default": ["10.244.0.31/24"], "red/udn": ["10.100.0.7/16"]}, primary="red/udn"))
    b = pod("b", "green", ips=["10.244.0.32"], uid="u-b", created=iso(T0 - 30_000),
            annotations=ovn({"default": ["10.244.0.32/24"], "green/udn": ["10.100.0.7/16"]}, primary="green/udn"))
    for order in ((a, b), (b, a)):
        e = build(clock=clock)
        with caplog.at_level(logging.WARNING, "flowscope.enrich"):
            for p in order:
                apply(e, p)
        assert flow(e, "10.100.0.7", "", t_ms=T0) == NOBODY
        assert flow(e, "10.100.0.7", "", t_ms=0) == NOBODY
        assert (name_at(e, "10.244.0.31"), name_at(e, "10.244.0.32")) == ("a", "b")   # their podIPs unaffected
        assert e.stats()["problems"] == {"pod_network_ambiguous": 1}
        apply(e, order[1])                                  # an update of the same claim: not counted again
        assert e.stats()["problems"] == {"pod_network_ambiguous": 1}
    assert "pod_network_ambiguous" in caplog.text and "10.100.0.7" in caplog.text
    # One of them goes: the other is the only holder left, from when it got the address.
    clock.ms = T0 + 10_000
    e.index.delete("pods", e.index.parse("pods", a))
    assert name_at(e, "10.100.0.7", T0 + 20_000) == "b"
    assert name_at(e, "10.100.0.7", T0 - 45_000) == "a"   # before b had it


@pytest.mark.parametrize("pod_ip_first", [True, False])
@pytest.mark.parametrize("other_started", [T0 - 120_000, T0 - 30_000])
def test_a_pod_ip_keeps_priority_over_another_pods_annotation_address(pod_ip_first: bool, other_started: int) -> None:
    """Whichever started first: a secondary network overlapping the cluster network, or a pod
    whose annotation is stale (its own status moved on)."""
    clock = Clock(T0)
    holder = pod("holder", "shop", ips=["192.168.50.40"], uid="u-h", created=iso(T0 - 60_000))
    other = pod("other", "shop", ips=["10.244.0.41"], uid="u-o", created=iso(other_started),
                annotations=multus(("shop/storage", "net1", ["192.168.50.40"], False)))
    e = build(clock=clock)
    for p in ((holder, other) if pod_ip_first else (other, holder)):
        apply(e, p)
    assert name_at(e, "192.168.50.40", T0) == "holder"
    assert name_at(e, "192.168.50.40", T0 - 90_000) == "holder"   # not even before holder started
    assert name_at(e, "192.168.50.40") == "holder"
    assert e.stats()["problems"] == {"pod_network_shadowed": 1}
    # The podIPs holder deleted: the annotation's holder answers for flows after it ended only.
    clock.ms = T0 + 10_000
    e.index.delete("pods", e.index.parse("pods", holder))
    assert name_at(e, "192.168.50.40", T0 + 5_000) == "holder"
    assert name_at(e, "192.168.50.40", T0 + 15_000) == "other"
    assert name_at(e, "192.168.50.40") == "other"
    clock.ms = T0 + 10_000 + 300_001                                # the tombstone goes
    e.index.sweep()
    assert name_at(e, "192.168.50.40", T0 - 90_000) == "other"


# ---------------------------------------------------------------- bad input

BAD = {
    "not JSON": {PN: "{not json"},
    "not an object": {PN: '["default"]'},
    "network not an object": {PN: '{"blue/udn": "10.100.0.5/16"}'},
    "ip_addresses not a list": {PN: '{"blue/udn": {"ip_addresses": "10.100.0.5/16"}}'},
    "bad CIDR": {PN: '{"blue/udn": {"ip_addresses": ["10.100.0.300/16"]}}'},
    "bad prefix": {PN: '{"blue/udn": {"ip_addresses": ["10.100.0.5/99"]}}'},
    "address not a string": {PN: '{"blue/udn": {"ip_addresses": [167772165]}}'},
    "status not a list": {NS: '{"name": "blue/lan", "ips": ["172.20.0.5"]}'},
    "status entry not an object": {NS: '["172.20.0.5"]'},
    "status ips not a list": {NS: '[{"name": "blue/lan", "ips": "172.20.0.5"}]'},
    "status address not an IP": {NS: '[{"name": "blue/lan", "ips": ["net1"]}]'},
    "old status not JSON": {OLD_NS: '[{"name": "blue/lan", "ips": ['},
    "old status not a list": {OLD_NS: '{"name": "blue/lan", "ips": ["172.20.0.5"]}'},
    "old status address not an IP": {OLD_NS: '[{"name": "blue/lan", "ips": ["172.20.0.500"]}]'},
    "annotation not a string": {PN: {"blue/udn": {"ip_addresses": ["10.100.0.5/16"]}}},  # type: ignore[dict-item]
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_malformed_annotation_is_counted_and_the_pod_ips_still_index(case: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    p = pod("web-1", "blue", ips=["10.244.0.9"], annotations={**BAD[case], "other": "x"})
    with caplog.at_level(logging.WARNING, "flowscope.enrich"):
        e = build([p, pod("web-2", "blue", ips=["10.244.0.10"], annotations=BAD[case])])
    assert name_at(e, "10.244.0.9") == "web-1" and name_at(e, "10.244.0.10") == "web-2"
    assert e.stats()["problems"] == {"bad_pod_networks": 2}
    assert e.stats()["index"]["pod_network_ips"] == 0
    assert caplog.text.count("bad_pod_networks") == 1               # logged once per cause


def test_a_malformed_annotation_in_an_update_keeps_the_last_good_addresses() -> None:
    ann = {**ovn({"default": ["10.244.0.9/24"], "blue/udn": ["10.100.0.5/16"]}, primary="blue/udn"),
           **multus(("blue/lan", "net1", ["172.20.0.5"], False))}
    clock = Clock(T0)
    e = build([pod("web-1", "blue", ips=["10.244.0.9"], uid="u1", created=iso(T0 - 60_000), annotations=ann)],
              clock=clock)
    # the OVN annotation breaks: its address stays, the Multus one follows its own (good) update
    clock.ms = T0 + 10_000
    apply(e, pod("web-1", "blue", ips=["10.244.0.9"], uid="u1", created=iso(T0 - 60_000),
                 annotations={PN: "{broken", **multus(("blue/lan", "net1", ["172.20.0.6"], False))}))
    assert [name_at(e, a, T0 + 20_000) for a in ("10.100.0.5", "172.20.0.6", "10.244.0.9")] == ["web-1"] * 3
    assert flow(e, "172.20.0.5", "", t_ms=T0 + 20_000) == NOBODY      # left: its earlier flows only
    assert name_at(e, "172.20.0.5", T0) == "web-1"
    assert e.stats()["problems"] == {"bad_pod_networks": 1}
    # and a relist with it still broken changes nothing either
    e.index.replace("pods", [e.index.parse("pods", pod("web-1", "blue", ips=["10.244.0.9"], uid="u1",
                                                       created=iso(T0 - 60_000), annotations={PN: "[]"}))])
    assert name_at(e, "10.100.0.5", T0 + 20_000) == "web-1"
    assert e.stats()["problems"] == {"bad_pod_networks": 2}


def test_the_older_multus_key_malformed_keeps_the_last_good_addresses_whichever_key_gave_them() -> None:
    """One source, two keys: what the pod had under the old key stands through a malformed
    update, and a move to the new key (a Multus upgrade) keeps its addresses without a
    tombstone, as an update of one annotation would."""
    clock = Clock(T0)
    lan = ("blue/lan", "net1", ["172.20.0.5"], False)
    p = {"uid": "u1", "created": iso(T0 - 60_000), "ips": ["10.244.0.9"]}
    e = build([pod("web-1", "blue", annotations=multus(lan, key=OLD_NS), **p)], clock=clock)
    clock.ms = T0 + 10_000
    apply(e, pod("web-1", "blue", annotations={OLD_NS: '[{"name": "blue/lan", "ips": "172.20.0.5"}]'}, **p))
    assert name_at(e, "172.20.0.5", T0 + 20_000) == "web-1"
    assert e.stats()["problems"] == {"bad_pod_networks": 1}
    # (the old key, bad as before, beside the new one is ignored, not counted again)
    apply(e, pod("web-1", "blue", annotations={**multus(lan, ("blue/san", "net2", ["172.21.0.5"], False)),
                                               OLD_NS: '[{"name": "blue/lan", "ips": "172.20.0.5"}]'}, **p))
    assert [name_at(e, a, T0 + 20_000) for a in ("172.20.0.5", "172.21.0.5")] == ["web-1"] * 2
    assert name_at(e, "172.20.0.5", T0 - 30_000) == "web-1"      # held all along
    assert e.stats()["index"]["tombstones"] == 0 and e.stats()["index"]["pod_network_ips"] == 2
    assert e.stats()["problems"] == {"bad_pod_networks": 1}
    # the new key malformed in turn: the last good addresses (the new key's) stand
    apply(e, pod("web-1", "blue", annotations={NS: "nope", **multus(lan, key=OLD_NS)}, **p))
    assert [name_at(e, a, T0 + 20_000) for a in ("172.20.0.5", "172.21.0.5")] == ["web-1"] * 2
    assert e.stats()["problems"] == {"bad_pod_networks": 2}


def test_an_update_whose_pod_ips_are_kept_does_not_count_them_as_network_addresses() -> None:
    """status.podIPs unreadable (the last good ones stand, filled in by the writer) while the
    annotation lists them too: they stay podIPs, not also annotation addresses."""
    e = build([udn_pod(uid="u1", udn=[UDN4])])
    broken = udn_pod(uid="u1", udn=[UDN4])
    broken["status"]["podIPs"], broken["status"]["podIP"] = [{"ip": "x"}], "x"
    apply(e, broken)
    assert name_at(e, "10.244.0.9") == "web-1" and name_at(e, UDN4) == "web-1"
    assert e.stats()["index"]["pod_network_ips"] == 1


# ---------------------------------------------------------------- changes over time

def test_a_pod_that_leaves_a_network_keeps_that_address_for_its_earlier_flows() -> None:
    clock = Clock(T0)
    ann = multus(("shop/storage", "net1", ["192.168.50.12"], False))
    p = pod("db-0", "shop", ips=["10.244.0.12"], uid="u-db", created=iso(T0 - 60_000), annotations=ann)
    e = build([p], clock=clock, tombstone_seconds=300)
    clock.ms = T0 + 10_000
    apply(e, pod("db-0", "shop", ips=["10.244.0.12"], uid="u-db", created=iso(T0 - 60_000)))
    assert name_at(e, "192.168.50.12", T0 + 5_000) == "db-0"      # while it was on that network
    assert flow(e, "192.168.50.12", "", t_ms=T0 + 15_000) == NOBODY
    assert name_at(e, "10.244.0.12") == "db-0"
    assert e.stats()["index"]["tombstones"] == 1
    clock.ms = T0 + 10_000 + 300_001
    assert e.index.sweep() == 1
    assert flow(e, "192.168.50.12", "", t_ms=T0 + 5_000) == NOBODY
    assert e.stats()["index"]["pod_network_ips"] == 0


def test_a_udn_address_reused_by_a_new_pod_is_resolved_by_flow_start_time() -> None:
    clock = Clock(T0)
    old = udn_pod("old", uid="u-old", created=iso(T0 - 3_600_000), udn=[UDN4])
    e = build([old], clock=clock, tombstone_seconds=300)
    clock.ms = T0 + 10_000
    e.index.delete("pods", e.index.parse("pods", old))
    clock.ms = T0 + 20_000
    apply(e, udn_pod("new", ip="10.244.0.50", uid="u-new", created=iso(T0 + 20_000), udn=[UDN4]))
    assert name_at(e, UDN4, T0 + 5_000) == "old"
    assert flow(e, UDN4, "", t_ms=T0 + 15_000) == NOBODY
    assert name_at(e, UDN4, T0 + 20_000) == "new"
    assert name_at(e, UDN4) == "new"
    assert e.stats()["problems"] == {}                 # a reuse after a delete is no conflict
    clock.ms = T0 + 10_000 + 300_001
    assert e.index.sweep() == 1
    assert name_at(e, UDN4, T0 + 5_000) == "new"


def test_an_annotation_written_after_the_pod_was_first_seen_gives_it_the_address() -> None:
    """OVN-Kubernetes writes pod-networks after the pod is created (its ADDED event has none)."""
    bare = pod("web-1", "blue", uid="u1", phase="Pending")
    e = build([bare])
    apply(e, udn_pod(uid="u1"))
    assert name_at(e, UDN4) == "web-1" and name_at(e, UDN6) == "web-1"


def test_the_default_address_annotated_before_pod_ips_are_reported_stays_the_pods_without_a_tombstone() -> None:
    """OVN-Kubernetes writes pod-networks when it allocates the address, before the CNI runs
    and the kubelet reports podIPs: the pod is known by it meanwhile, and when status.podIPs
    take it over nothing changes hands (no tombstone per pod start, 100k pods churning)."""
    clock = Clock(T0)
    pending = pod("web-1", "shop", uid="u1", created=iso(T0 - 5_000), phase="Pending",
                  annotations=ovn({"default": ["10.244.0.60/24"]}))
    e = build([pending], clock=clock)
    assert name_at(e, "10.244.0.60") == "web-1"
    clock.ms = T0
    apply(e, pod("web-1", "shop", ips=["10.244.0.60"], uid="u1", created=iso(T0 - 5_000),
                 annotations=ovn({"default": ["10.244.0.60/24"]})))
    assert name_at(e, "10.244.0.60", T0 - 2_000) == "web-1" and name_at(e, "10.244.0.60") == "web-1"
    assert e.stats()["index"]["tombstones"] == 0 and e.stats()["index"]["pod_network_ips"] == 0


# ---------------------------------------------------------------- configuration

def test_the_switch_from_flags_and_its_validation() -> None:
    p = argparse.ArgumentParser()
    enrich.add_cli_arguments(p)
    assert enrich.config_from_args(p.parse_args([])).pod_networks is True
    assert enrich.config_from_args(p.parse_args(["--enrich-pod-networks", "false"])).pod_networks is False
    with pytest.raises(enrich.EnrichConfigError, match="pod_networks"):
        enrich.EnrichConfig(pod_networks="no")  # type: ignore[arg-type]


def test_run_passes_the_switch_to_the_enricher(tmp_path: Path) -> None:
    for argv, want in (([], True), (["--enrich-pod-networks", "false"], False)):
        assert run_enrich_config(tmp_path, argv).pod_networks is want, argv


# ---------------------------------------------------------------- end to end, through the API server

def test_a_udn_pods_annotation_arriving_by_watch_enriches_its_flows(fake_kube: FakeKube,  # noqa: F811
                                                                  kubeconfig: str) -> None:  # noqa: F811
    fake_kube.add("nodes", node("node-a", internal=["10.0.0.1"], zone="zone-a"))
    added = fake_kube.add("pods", pod("web-1", "blue", ips=["10.244.0.9"]))   # no annotation yet
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        assert flow(e, UDN4, "") == {"K8S_FlowLayer": "app"}
        fake_kube.modify("pods", udn_pod())     # (the same object: the fake keeps its uid)
        assert fake_kube.objects["pods"]["blue/web-1"]["metadata"]["uid"] == added["metadata"]["uid"]
        fake_kube.wait_for(lambda: "SrcK8S_Name" in flow(e, UDN4, ""), what="the UDN address indexed")
        assert flow(e, UDN6, "10.0.0.1", agent="10.0.0.1") == {
            "SrcK8S_Name": "web-1", "SrcK8S_Namespace": "blue", "SrcK8S_Type": "Pod", "SrcK8S_OwnerName": "web-1",
            "SrcK8S_OwnerType": "Pod", "SrcK8S_HostIP": "10.0.0.1", "SrcK8S_HostName": "node-a",
            "SrcK8S_Zone": "zone-a", "DstK8S_Name": "node-a", "DstK8S_Type": "Node", "DstK8S_OwnerName": "node-a",
            "DstK8S_OwnerType": "Node", "DstK8S_HostIP": "10.0.0.1", "DstK8S_HostName": "node-a",
            "DstK8S_Zone": "zone-a", "FlowDirection": 2, "K8S_FlowLayer": "app"}
        fake_kube.delete("pods", "web-1", "blue")
        fake_kube.wait_for(lambda: e.stats()["index"]["pods"] == 0, what="the delete")
        assert flow(e, UDN4, "")["SrcK8S_Name"] == "web-1"            # its tombstone


def test_the_older_multus_key_through_list_watch_and_relist(fake_kube: FakeKube,  # noqa: F811
                                                             kubeconfig: str) -> None:  # noqa: F811
    """Pods as a cluster upgrading Multus has them: one annotated under the old key only (moved
    to the new key by watch), one with both keys disagreeing, one with only the old key, malformed
    (counted once per list or event, its last good addresses kept, then fixed)."""
    def lan(*ips: str, key: str = NS) -> dict[str, str]:
        return multus(("blue/lan", "net1", list(ips), False), key=key)

    fake_kube.add("nodes", node("node-a", internal=["10.0.0.1"], zone="zone-a"))
    fake_kube.add("pods", pod("mover", "blue", ips=["10.244.0.11"], annotations=lan("172.20.0.11", key=OLD_NS)))
    fake_kube.add("pods", pod("both", "blue", ips=["10.244.0.12"],
                              annotations={**lan("172.20.0.12"), **lan("172.20.0.99", key=OLD_NS)}))
    fake_kube.add("pods", pod("broken", "blue", ips=["10.244.0.13"], annotations={OLD_NS: '{"ips": "x"}'}))
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        assert [name_at(e, a) for a in ("172.20.0.11", "172.20.0.12", "10.244.0.13")] == ["mover", "both", "broken"]
        assert flow(e, "172.20.0.99", "") == NOBODY
        assert e.stats()["problems"] == {"bad_pod_networks": 1}
        # by watch: the mover's Multus now writes the new key (and one more network)
        fake_kube.modify("pods", pod("mover", "blue", ips=["10.244.0.11"],
                                     annotations=multus(("blue/lan", "net1", ["172.20.0.11"], False),
                                                        ("blue/san", "net2", ["172.21.0.11"], False))))
        fake_kube.wait_for(lambda: name_at(e, "172.21.0.11") == "mover", what="the new key's address")
        assert name_at(e, "172.20.0.11") == "mover" and e.stats()["index"]["tombstones"] == 0
        # the old key alone, malformed again, then right
        fake_kube.modify("pods", pod("broken", "blue", ips=["10.244.0.13"], annotations={OLD_NS: "[1]"}))
        fake_kube.wait_for(lambda: e.stats()["problems"] == {"bad_pod_networks": 2}, what="the bad update counted")
        fake_kube.modify("pods", pod("broken", "blue", ips=["10.244.0.13"], annotations=lan("172.20.0.13", key=OLD_NS)))
        fake_kube.wait_for(lambda: name_at(e, "172.20.0.13") == "broken", what="the fixed old key read")
        # a relist reads them all the same (the old key beside the new one still ignored)
        relists = e.stats()["kinds"]["pods"]["relists"]
        fake_kube.expire("pods")
        fake_kube.wait_for(lambda: e.stats()["kinds"]["pods"]["relists"] > relists, what="the relist")
        assert [name_at(e, a) for a in ("172.20.0.11", "172.21.0.11", "172.20.0.12", "172.20.0.13")] == [
            "mover", "mover", "both", "broken"]
        assert flow(e, "172.20.0.99", "") == NOBODY
        assert e.stats()["problems"] == {"bad_pod_networks": 2}
        assert e.stats()["index"]["pod_network_ips"] == 4


def test_decode_with_kubeconfig_gives_a_udn_address_its_pods_identity(fake_kube: FakeKube,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    from benchmarks.datagrams import OVS_EGRESS, data_set, ipfix_message, ovs_flows, template_set
    from tests.test_decode_cli import EXPORT, run_decode, write_pcap

    fake_kube.add("nodes", node("node-a", internal=["10.0.0.1"], zone="zone-a"))
    fake_kube.add("nodes", node("node-b", internal=["10.0.0.2"], zone="zone-b"))
    fake_kube.add("pods", udn_pod("web-1", udn=[UDN4]))
    fake_kube.add("pods", udn_pod("db-0", ip="10.244.1.7", udn=["10.100.1.8"], node="node-b", host_ip="10.0.0.2",
                                  owner=("StatefulSet", "db")))
    kc = fake_kube.write_kubeconfig(tmp_path / "kubeconfig")
    base: dict[str, Any] = ovs_flows(1, random.Random(2), direction=1)[0]
    cap = tmp_path / "udn.pcap"
    write_pcap(cap, [
        (EXPORT, "10.0.0.1", 50000, ipfix_message([template_set([OVS_EGRESS])], seq=0, export_time=EXPORT)),
        (EXPORT + 1, "10.0.0.1", 50000, ipfix_message([data_set(OVS_EGRESS, [dict(base, src=UDN4, dst="10.100.1.8")])],
                                                      seq=0, export_time=EXPORT)),
    ])
    p = run_decode(str(cap), "--kubeconfig", str(kc))
    assert p.returncode == 0, p.stderr.decode()
    (f,) = (orjson.loads(x) for x in p.stdout.splitlines())
    assert (f["SrcAddr"], f["SrcK8S_Name"], f["SrcK8S_Namespace"], f["SrcK8S_HostName"]) == (UDN4, "web-1", "blue",
                                                                                            "node-a")
    assert (f["DstK8S_Name"], f["DstK8S_OwnerName"], f["DstK8S_Zone"], f["FlowDirection"]) == ("db-0", "db",
                                                                                              "zone-b", 1)
    # turned off, those addresses are nobody's again
    p = run_decode(str(cap), "--kubeconfig", str(kc), "--enrich-pod-networks", "false")
    assert p.returncode == 0, p.stderr.decode()
    (f,) = (orjson.loads(x) for x in p.stdout.splitlines())
    assert "SrcK8S_Name" not in f and "DstK8S_Name" not in f
