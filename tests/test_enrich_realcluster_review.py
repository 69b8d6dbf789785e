"""Real-cluster shapes the other enrich tests do not send, through list+watch against the fake API
server: objects as a Kubernetes 1.27-1.31 / OpenShift 4.14+ (OVN-Kubernetes) API server returns
them (managed annotations, hostIPs, PodReadyToStartContainers, PartialObjectMetadata ReplicaSets,
ExternalName and headless Services) and the event orders a real cluster produces (node-subnets
rewritten in its list form, a Node re-addressed and re-registered under its name, a Service
recreated with another ClusterIP, ReplicaSets after their pods, a completed Job pod and an
evicted pod whose addresses are given to new pods, lists answered 503 with Retry-After), each
checked against the enrichment rules (DESIGN.md "Enrichment rules"), not against the code."""

from __future__ import annotations

import json
import time
from typing import Any

import enrich
from tests.support.enricher import running_enricher
from tests.support.fake_kube import FakeKube, wait_for
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture
from tests.test_enrich_index import T0, flow, iso
from tests.test_enrich_informer import kubeconfig as kubeconfig  # noqa: F401 - fixture


def ocp_node(name: str, addresses: list[tuple[str, str]], *, subnets: Any = None, zone: str | None = "us-east-1a",
             created_ms: int = T0 - 86_400_000) -> dict[str, Any]:
    """A Node as OpenShift 4.14+ with OVN-Kubernetes returns it (the annotations it writes)."""
    ann = {"volumes.kubernetes.io/controller-managed-attach-detach": "true",
           "k8s.ovn.org/node-chassis-id": "0c6c2ffa-93c6-4a2d-9c8e-2b7c6f0e1a11",
           "k8s.ovn.org/host-cidrs": json.dumps([f"{a}/24" for t, a in addresses if t == "InternalIP"])}
    if subnets is not None:
        ann["k8s.ovn.org/node-subnets"] = subnets if isinstance(subnets, str) else json.dumps(subnets)
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "node-role.kubernetes.io/worker": ""}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
        labels["topology.kubernetes.io/region"] = "us-east-1"
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "uid": f"uid-node-{name}", "resourceVersion": "1",
                         "creationTimestamp": iso(created_ms), "labels": labels, "annotations": ann},
            "spec": {"providerID": f"aws:///us-east-1a/i-{name}"},
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "lastHeartbeatTime": iso(T0), "lastTransitionTime": iso(created_ms)}],
                       "nodeInfo": {"kubeletVersion": "v1.29.8+f10c92d"}}}


def ocp_pod(name: str, ns: str, ips: list[str], node: str, host_ips: list[str], *,
            owner: tuple[str, str] | None = None, uid: str | None = None, created_ms: int = T0 - 3_600_000,
            phase: str = "Running", host_network: bool = False, pod_ip: bool = True, pod_ips: bool = True,
            containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Pod as the kubelet of 1.29+ reports it (hostIPs, PodReadyToStartContainers)."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid or f"uid-{ns}-{name}", "resourceVersion": "1",
                            "creationTimestamp": iso(created_ms), "labels": {"app": name.split("-")[0]},
                            "annotations": {"openshift.io/scc": "restricted-v2"}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": f"uid-owner-{owner[1]}", "controller": True, "blockOwnerDeletion": True}]
    running = [{"name": "main", "ready": True, "restartCount": 0, "started": True, "image": "quay.io/x:1",
                "imageID": "quay.io/x@sha256:0", "containerID": "cri-o://0",
                "state": {"running": {"startedAt": iso(created_ms + 3000)}}}]
    st: dict[str, Any] = {
        "phase": phase, "qosClass": "Burstable", "startTime": iso(created_ms + 1000),
        "hostIP": host_ips[0], "hostIPs": [{"ip": h} for h in host_ips],
        "conditions": [{"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": None,
                        "lastTransitionTime": iso(created_ms + 2000)},
                       {"type": "Initialized", "status": "True", "lastProbeTime": None,
                        "lastTransitionTime": iso(created_ms + 1000)},
                       {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                        "lastTransitionTime": iso(created_ms)}],
        "containerStatuses": containers if containers is not None else running}
    if ips and pod_ip:
        st["podIP"] = ips[0]
    if ips and pod_ips:
        st["podIPs"] = [{"ip": i} for i in ips]
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "quay.io/x:1"}], "nodeName": node,
                            "restartPolicy": "Always", "schedulerName": "default-scheduler",
                            "serviceAccountName": "default"}
    if host_network:
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": st}


def ocp_service(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-svc-{ns}-{name}", "resourceVersion": "1",
                         "creationTimestamp": iso(T0 - 86_400_000)},
            "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 8080}],
                     "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", **spec},
            "status": {"loadBalancer": {}}}


def rs_meta(name: str, ns: str, owner: tuple[str, str, str] | None) -> dict[str, Any]:
    """A ReplicaSet as PartialObjectMetadata (what the metadata-only informer receives)."""
    # (its uid the one ocp_pod names a ReplicaSet owner by, as a pod of it names it)
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-owner-{name}", "resourceVersion": "1",
                            "creationTimestamp": iso(T0 - 86_400_000)}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": owner[0], "kind": owner[1], "name": owner[2],
                                    "uid": f"uid-{owner[2]}", "controller": True, "blockOwnerDeletion": True}]
    return {"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": meta,
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}}}


# A flow start after every change these tests make (2100-01-01), to wait for a change to be
# applied: a Node or Service that stopped holding an address keeps it for the flows that
# started before (a tombstone), as pods do, until the change, which the tests then check.
LATER = 4_102_444_800_000


def _ms() -> int:
    """Now in Unix ms, the informers' index clock."""
    return int(time.time() * 1000)


def _ident(e: enrich.Enricher, ip: str, t_ms: int = 0) -> tuple[str, str] | None:
    got = flow(e, ip, "", t_ms=t_ms)
    return (got["SrcK8S_Name"], got["SrcK8S_Type"]) if "SrcK8S_Name" in got else None


def test_watch_node_subnets_forms_internal_ip_change_and_node_recreated(fake_kube: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    fake_kube.add("nodes", ocp_node("w1", [("InternalIP", "10.0.1.10"), ("Hostname", "w1")],
                                    subnets='{"default":"10.128.2.0/23"}'))
    for k in ("pods", "services", "replicasets"):
        fake_kube.bookmark(k)
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        assert _ident(e, "10.128.2.2") == ("w1", "Node")
        # OVN-Kubernetes rewrites the annotation in its list form, dual-stack, with a UDN
        n = ocp_node("w1", [("InternalIP", "10.0.1.10"), ("InternalIP", "fd00::10"), ("Hostname", "w1")],
                     subnets={"default": ["10.128.2.0/23", "fd01:0:0:2::/64"], "ns1_udn": ["10.200.2.0/24"]})
        fake_kube.modify("nodes", n)
        wait_for(lambda: _ident(e, "fd01:0:0:2::2") == ("w1", "Node"), what="IPv6 management port")
        assert _ident(e, "10.128.2.2") == ("w1", "Node")
        assert _ident(e, "fd00::10") == ("w1", "Node")
        assert _ident(e, "10.200.2.2") is None
        # InternalIP changes (a VM re-addressed): the old addresses are nobody's for the flows
        # since (a start 1 ms after the change was seen), still w1's for those of before
        held = _ms() - 1
        n = ocp_node("w1", [("InternalIP", "10.0.1.20"), ("Hostname", "w1")], subnets={"default": ["10.128.2.0/23"]})
        fake_kube.modify("nodes", n)
        wait_for(lambda: _ident(e, "10.0.1.20") == ("w1", "Node"), what="new InternalIP")
        gone = ("10.0.1.10", "fd00::10", "fd01:0:0:2::2")
        since = _ms() + 1
        assert [_ident(e, ip, since) for ip in gone] == [None] * 3
        assert [_ident(e, ip, held) for ip in gone] == [("w1", "Node")] * 3
        assert flow(e, "10.128.2.2", "")["SrcK8S_HostIP"] == "10.0.1.20"
        # deleted, and re-registered under the same name with another address and zone
        held = _ms() - 1
        fake_kube.delete("nodes", "w1")
        wait_for(lambda: _ident(e, "10.0.1.20", LATER) is None, what="node deleted")
        since = _ms() + 1
        assert _ident(e, "10.0.1.20", since) is None and _ident(e, "10.128.2.2", since) is None
        assert _ident(e, "10.0.1.20", held) == _ident(e, "10.128.2.2", held) == ("w1", "Node")
        fake_kube.add("nodes", ocp_node("w1", [("InternalIP", "10.0.1.30"), ("Hostname", "w1")],
                                        subnets={"default": ["10.128.6.0/23"]}, zone="us-east-1c"))
        wait_for(lambda: _ident(e, "10.0.1.30") == ("w1", "Node"), what="node re-added")
        assert _ident(e, "10.128.6.2") == ("w1", "Node") and _ident(e, "10.128.2.2", _ms() + 1) is None
        assert flow(e, "10.0.1.30", "")["SrcK8S_Zone"] == "us-east-1c"
        assert e.stats()["problems"] == {}


def test_watch_services_recreated_headless_externalname_dual_stack(fake_kube: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    fake_kube.add("services", ocp_service("db", "shop", {"type": "ClusterIP", "clusterIP": "172.30.0.10",
                                                         "clusterIPs": ["172.30.0.10"]}))
    for k in ("pods", "nodes", "replicasets"):
        fake_kube.bookmark(k)
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        assert _ident(e, "172.30.0.10") == ("db", "Service")
        fake_kube.delete("services", "db", "shop")
        fake_kube.add("services", ocp_service("db", "shop", {"type": "ClusterIP", "clusterIP": "172.30.0.77",
                                                             "clusterIPs": ["172.30.0.77", "fd02::77"],
                                                             "ipFamilies": ["IPv4", "IPv6"],
                                                             "ipFamilyPolicy": "RequireDualStack"}))
        fake_kube.add("services", ocp_service("db-hl", "shop", {"type": "ClusterIP", "clusterIP": "None",
                                                                "clusterIPs": ["None"]}))
        fake_kube.add("services", ocp_service("ext", "shop", {"type": "ExternalName", "externalName": "db.example.com"}))
        fake_kube.add("services", ocp_service("other", "shop", {"type": "ClusterIP", "clusterIP": "172.30.0.10",
                                                                "clusterIPs": ["172.30.0.10"]}))
        wait_for(lambda: _ident(e, "172.30.0.10") == ("other", "Service"), what="services")
        assert _ident(e, "172.30.0.77") == ("db", "Service") and _ident(e, "fd02::77") == ("db", "Service")
        assert e.stats()["problems"] == {} and e.stats()["index"]["services"] == 4


def test_watch_replicaset_after_its_pods_and_a_rollout(fake_kube: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    fake_kube.add("nodes", ocp_node("w1", [("InternalIP", "10.0.1.10")], subnets={"default": ["10.128.2.0/23"]}))
    fake_kube.add("pods", ocp_pod("web-5d9-a", "shop", ["10.128.2.5"], "w1", ["10.0.1.10"], owner=("ReplicaSet", "web-5d9")))
    fake_kube.add("pods", ocp_pod("ro-7f-a", "shop", ["10.128.2.6"], "w1", ["10.0.1.10"], owner=("ReplicaSet", "ro-7f")))
    for k in ("services", "replicasets"):
        fake_kube.bookmark(k)
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        got = flow(e, "10.128.2.5", "")
        assert (got["SrcK8S_OwnerName"], got["SrcK8S_OwnerType"]) == ("web-5d9", "ReplicaSet")
        fake_kube.add("replicasets", rs_meta("web-5d9", "shop", ("apps/v1", "Deployment", "web")))
        fake_kube.add("replicasets", rs_meta("ro-7f", "shop", ("argoproj.io/v1alpha1", "Rollout", "ro")))
        wait_for(lambda: flow(e, "10.128.2.6", "").get("SrcK8S_OwnerType") == "Rollout", what="rs")
        got = flow(e, "10.128.2.5", "")
        assert (got["SrcK8S_OwnerName"], got["SrcK8S_OwnerType"]) == ("web", "Deployment")
        assert flow(e, "10.128.2.6", "")["SrcK8S_OwnerName"] == "ro"


def test_lists_answered_503_with_retry_after_then_sync(fake_kube: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    fake_kube.add("nodes", ocp_node("w1", [("InternalIP", "10.0.1.10")], subnets={"default": ["10.128.2.0/23"]}))
    fake_kube.add("pods", ocp_pod("web-0", "shop", ["10.128.2.5"], "w1", ["10.0.1.10"], owner=("StatefulSet", "web")))
    for k in ("services", "replicasets"):
        fake_kube.bookmark(k)
    fake_kube.fail("pods", "list", "unavailable", times=2)
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(15)
        assert _ident(e, "10.128.2.5") == ("web-0", "Pod")
        st = e.stats()["kinds"]["pods"]
        assert st["errors"] == {"server_error": 2} and st["last_error"] == ""
        lists = [r for r in fake_kube.requests if r["kind"] == "pods" and r["verb"] == "list"]
        assert len(lists) == 3


def test_watch_completed_and_evicted_pods_keep_their_ip_while_new_pods_get_it(fake_kube: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    import time as _time
    now = int(_time.time() * 1000)
    fake_kube.add("nodes", ocp_node("w1", [("InternalIP", "10.0.1.10")], subnets={"default": ["10.128.2.0/23"]}))
    job = ocp_pod("backup-28800-x", "shop", ["10.128.2.9"], "w1", ["10.0.1.10"], owner=("Job", "backup-28800"),
                  created_ms=now - 600_000)
    web = ocp_pod("web-5d-a", "shop", ["10.128.2.10"], "w1", ["10.0.1.10"], owner=("ReplicaSet", "web-5d"),
                  created_ms=now - 600_000)
    fake_kube.add("pods", job)
    fake_kube.add("pods", web)
    for k in ("services", "replicasets"):
        fake_kube.bookmark(k)
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        # the Job's pod completes 60 s ago; the Deployment's pod is evicted 50 s ago (memory pressure)
        job["status"]["phase"] = "Succeeded"
        job["status"]["containerStatuses"][0].update(ready=False, started=False, state={"terminated": {
            "exitCode": 0, "reason": "Completed", "startedAt": iso(now - 590_000), "finishedAt": iso(now - 60_000),
            "containerID": "cri-o://0"}})
        fake_kube.modify("pods", job)
        web["status"].update(phase="Failed", reason="Evicted", message="The node was low on resource: memory.")
        web["status"]["containerStatuses"][0].update(ready=False, started=False, state={"terminated": {
            "exitCode": 137, "reason": "ContainerStatusUnknown", "message": "The container could not be located "
            "when the pod was terminated", "startedAt": None, "finishedAt": None}})
        web["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                                            "lastTransitionTime": iso(now - 50_000)})
        fake_kube.modify("pods", web)
        wait_for(lambda: e.stats()["kinds"]["pods"]["events"]["MODIFIED"] >= 2, what="terminal phases")
        # new pods get the two addresses (Pending without one, then Running with it)
        for name, ip, owner in (("backup-28801-y", "10.128.2.9", ("Job", "backup-28801")),
                                ("web-5d-b", "10.128.2.10", ("ReplicaSet", "web-5d"))):
            p = ocp_pod(name, "shop", [], "w1", ["10.0.1.10"], owner=owner, created_ms=now - 2_000, phase="Pending")
            p["status"]["conditions"] = p["status"]["conditions"][1:]
            fake_kube.add("pods", p)
            p = ocp_pod(name, "shop", [ip], "w1", ["10.0.1.10"], owner=owner, created_ms=now - 2_000)
            fake_kube.modify("pods", p)
        wait_for(lambda: _ident(e, "10.128.2.10", now + 5_000) == ("web-5d-b", "Pod"), what="new pods")
        t_now = int(_time.time() * 1000)
        assert _ident(e, "10.128.2.9", t_now) == ("backup-28801-y", "Pod")
        assert _ident(e, "10.128.2.9", now - 120_000) == ("backup-28800-x", "Pod")
        assert _ident(e, "10.128.2.10", now - 120_000) == ("web-5d-a", "Pod")
        # relisted (410): the same answers
        fake_kube.expire("pods")
        wait_for(lambda: e.stats()["kinds"]["pods"]["relists"] >= 1, what="relist")
        assert _ident(e, "10.128.2.9", t_now) == ("backup-28801-y", "Pod")
        assert _ident(e, "10.128.2.10", t_now) == ("web-5d-b", "Pod")
        assert _ident(e, "10.128.2.9", now - 120_000) == ("backup-28800-x", "Pod")
        assert _ident(e, "10.128.2.10", now - 120_000) == ("web-5d-a", "Pod")
        assert e.stats()["problems"] == {}
