"""Cluster-life scenarios for the informers and the index that the other enrich tests do not
cover: what a real API server and kubelet send at the end of a pod's life (graceful deletion
and its container statuses, native sidecars, containers the runtime lost, a relist after 410
Gone in between), checked against the documented enrichment rules
(docs/collector.md "Addresses are attributed by the flow's start time", DESIGN.md "Enrichment
rules"). Index scenarios run on both readers (pure Python and compiled); informer scenarios run
against the fake API server (tests/support/fake_kube.py).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import enrich
from tests.support.enricher import running_enricher
from tests.support.fake_kube import FakeKube, node, pod, replicaset, service, wait_for
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture
from tests.test_enrich_index import NOBODY, NODES, RS, T0, Clock, build, flow, iso
from tests.test_enrich_index import implementation as implementation  # noqa: F401 - autouse fixture
from tests.test_enrich_informer import kubeconfig as kubeconfig  # noqa: F401 - fixture
from tests.test_enrich_informer import seed

IP = "10.244.0.70"


def _terminating(*, finished: int | None) -> dict[str, Any]:
    """A Deployment's pod being deleted gracefully: phase still Running (kubelets before 1.27
    leave it so; a finalizer can keep the object for long), its container running, or
    terminated at `finished`."""
    p = pod("old", "shop", ips=[IP], uid="u-old", created=iso(T0 - 3_600_000))
    p["metadata"]["deletionTimestamp"] = iso(T0 - 55_000)
    p["metadata"]["deletionGracePeriodSeconds"] = 30
    state: dict[str, Any] = {"running": {"startedAt": iso(T0 - 3_600_000)}}
    if finished is not None:
        state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": iso(T0 - 3_600_000),
                                "finishedAt": iso(finished)}}
    p["status"]["containerStatuses"] = [{"name": "c", "ready": False, "restartCount": 0, "state": state}]
    return p


def _new(ips: list[str] | None) -> dict[str, Any]:
    """The pod the address is given to next: Pending without an address, then Running with it."""
    p = pod("n", "shop", ips=ips, uid="u-n", created=iso(T0 - 60_000), phase="Running" if ips else "Pending")
    p["status"]["startTime"] = iso(T0 - 55_000)
    return p


def _apply(e: enrich.Enricher, obj: dict[str, Any]) -> None:
    e.index.upsert("pods", e.index.parse("pods", obj))


def test_a_terminating_pods_containers_finishing_is_not_taken_for_noise() -> None:
    """A MODIFIED event whose only change is that every container terminated (graceful
    deletion: the pod object stays, phase Running, until the kubelet's final status and the
    delete) records when the pod finished: a pod given its address next holds it from then
    (Index._floor: "its containers all finished (a delete held back)"), exactly as when the
    terminated status is the first one seen. It was dropped as MODIFIED noise (PodRec.same),
    so the old pod kept the new pod's flows until the delete came."""
    for first_seen_terminated in (True, False):
        clock = Clock(T0 - 100_000)
        e = build([_terminating(finished=T0 - 50_000 if first_seen_terminated else None), _new(None)], clock=clock)
        if not first_seen_terminated:
            clock.ms = T0 - 45_000
            _apply(e, _terminating(finished=T0 - 50_000))
        clock.ms = T0
        _apply(e, _new([IP]))
        assert flow(e, IP, "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "old"
        assert flow(e, IP, "", t_ms=T0 - 20_000)["SrcK8S_Name"] == "n", first_seen_terminated
        assert flow(e, IP, "", t_ms=0)["SrcK8S_Name"] == "n"


def test_a_pod_given_an_address_moves_back_when_its_holders_containers_turn_out_finished() -> None:
    """The other order: the new pod is seen with the address while the old one still looks
    alive (it holds the address from when that was seen); the old pod's status then says every
    container finished earlier: the new pod holds the address from then, as it does when the old
    pod's phase turns Succeeded/Failed or its delete says so (docs/collector.md: "moved back once
    that pod's delete shows it finished earlier")."""
    clock = Clock(T0 - 100_000)
    e = build([_terminating(finished=None), _new(None)], clock=clock)
    clock.ms = T0
    _apply(e, _new([IP]))
    assert flow(e, IP, "", t_ms=T0 - 20_000)["SrcK8S_Name"] == "old"     # nothing says otherwise yet
    clock.ms = T0 + 1_000
    _apply(e, _terminating(finished=T0 - 50_000))
    assert flow(e, IP, "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "old"
    assert flow(e, IP, "", t_ms=T0 - 20_000)["SrcK8S_Name"] == "n"
    assert flow(e, IP, "", t_ms=T0 + 2_000)["SrcK8S_Name"] == "n"


def test_a_relist_that_no_longer_lists_a_finished_pod_ends_it_when_its_containers_finished() -> None:
    """A relist (410 Gone: the watch fell behind while pods churned) no longer lists a pod whose
    containers had all terminated when last seen, and lists the pod its address went to: the
    old pod held the address until its containers finished, as its DELETED event would have
    said (Index._delete_pod's `final`), not until the relist. It was ended at the relist, so
    the new pod's flows from then back to its start were the old pod's."""
    clock = Clock(T0 - 100_000)
    e = build([_terminating(finished=T0 - 50_000), _new(None)], clock=clock)
    clock.ms = T0
    idx = e.index
    idx.replace("pods", [idx.parse("pods", _new([IP]))])
    assert flow(e, IP, "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "old"
    assert flow(e, IP, "", t_ms=T0 - 20_000)["SrcK8S_Name"] == "n"
    assert flow(e, IP, "", t_ms=0)["SrcK8S_Name"] == "n"


@pytest.mark.parametrize("keeps", [[], ["fd00:10:244:1::46"]])
def test_a_terminating_pod_that_drops_an_address_held_it_until_its_containers_finished(keeps: list[str]) -> None:
    """A pod whose containers have all terminated (phase still Running: graceful deletion) then
    drops an address (its sandbox torn down: the status lists none of them, or one family of a
    dual-stack pod's fewer): it held the dropped address until its containers finished, as a
    delete or a relist would end it (Index._delete_pod), not until the change was seen. Its
    tombstone ended at the change: the flows between were its own, and a pod given the address
    next held it only from the change (Index._floor: the end of the latest holder)."""
    clock = Clock(T0 - 100_000)
    e = build([_terminating(finished=T0 - 50_000), _new(None)], clock=clock)
    clock.ms = T0 - 10_000
    dropped = _terminating(finished=T0 - 50_000)
    del dropped["status"]["podIP"]
    dropped["status"]["podIPs"] = [{"ip": ip} for ip in keeps]
    if keeps:
        dropped["status"]["podIP"] = keeps[0]
    _apply(e, dropped)
    assert flow(e, IP, "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "old"
    assert flow(e, IP, "", t_ms=T0 - 50_000 + 500)["SrcK8S_Name"] == "old"   # (finishedAt: whole seconds)
    assert flow(e, IP, "", t_ms=T0 - 30_000) == NOBODY
    clock.ms = T0
    _apply(e, _new([IP]))
    assert flow(e, IP, "", t_ms=T0 - 20_000)["SrcK8S_Name"] == "n"
    assert flow(e, IP, "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "old"
    assert flow(e, IP, "", t_ms=0)["SrcK8S_Name"] == "n"



V6 = "fd00:10:244:1::46"


def _addresses(p: dict[str, Any], ips: list[str]) -> dict[str, Any]:
    p["status"]["podIPs"] = [{"ip": ip} for ip in ips]
    return p


@pytest.mark.parametrize("told", ["before_the_change", "by_its_delete"])
def test_a_terminating_pod_that_gets_an_address_held_the_ones_it_keeps_until_its_containers_finished(
        told: str) -> None:
    """A pod being deleted gracefully (phase Running) whose containers all terminated at T0-50s
    is seen with an address more (one family added, or an annotation network) besides the one
    it keeps, an address another pod gave up at T0-20s: the pod's hold starts from then (one
    start per pod, Index._floor), and the address it keeps is its own before that as a
    tombstone. That tombstone ended at the new start, T0-20s, past the pod's finish: after the
    delete, the pod given the kept address next (its status: started T0-55s; seen with it before
    the DELETED came, a watch behind) held it only from T0-20s, and its flows between the two
    were the finished pod's. The tombstone ends when the containers finished: at once when the
    status said so before the change (the pod given the address holds it from then before the
    delete comes, Index._floor), else at the end the DELETED event's final status gives the
    pod's own hold (Index._end_splits)."""
    clock = Clock(T0 - 100_000)
    fin = T0 - 50_000 if told == "before_the_change" else None
    z = pod("z", "shop", ips=[V6], uid="u-z", created=iso(T0 - 3_600_000))
    e = build([_terminating(finished=fin), _new(None), z], clock=clock)
    idx = e.index
    clock.ms = T0 - 20_000
    idx.delete("pods", idx.parse("pods", z))
    clock.ms = T0 - 10_000
    _apply(e, _addresses(_terminating(finished=fin), [IP, V6]))
    clock.ms = T0 - 8_000
    _apply(e, _new([IP]))
    if fin is not None:
        assert flow(e, IP, "", t_ms=T0 - 30_000)["SrcK8S_Name"] == "n"
    clock.ms = T0 - 5_000
    idx.delete("pods", idx.parse("pods", _addresses(_terminating(finished=T0 - 50_000), [IP, V6])))
    assert flow(e, IP, "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "old"
    assert flow(e, IP, "", t_ms=T0 - 50_000 + 500)["SrcK8S_Name"] == "n"   # (the newer holder, as ever)
    assert flow(e, IP, "", t_ms=T0 - 30_000)["SrcK8S_Name"] == "n"
    assert flow(e, IP, "", t_ms=T0 - 15_000)["SrcK8S_Name"] == "n"
    assert flow(e, V6, "", t_ms=T0 - 30_000)["SrcK8S_Name"] == "z"
    assert flow(e, V6, "", t_ms=T0 - 15_000) == NOBODY      # (after old's finish: nobody's)


def test_a_running_pod_whose_delete_says_it_finished_before_it_dropped_an_address() -> None:
    """A running dual-stack pod's status drops one address at T0-10s (its containers still
    running as far as it says), then its DELETED event's final status says they all finished
    at T0-50s: it held nothing after that, the dropped address included, as its own hold ends
    there (Index._delete_pod). The dropped address's tombstone kept the drop as its end, so a
    pod given it next (started T0-55s) held it only from T0-10s, and its flows of the time
    between were the finished pod's."""
    clock = Clock(T0 - 100_000)
    e = build([_addresses(_terminating(finished=None), [IP, V6]), _new(None)], clock=clock)
    idx = e.index
    clock.ms = T0 - 10_000
    _apply(e, _addresses(_terminating(finished=None), [IP]))
    clock.ms = T0 - 5_000
    idx.delete("pods", idx.parse("pods", _addresses(_terminating(finished=T0 - 50_000), [IP])))
    clock.ms = T0
    _apply(e, _addresses(_new([V6]), [V6]))
    assert flow(e, V6, "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "old"
    assert flow(e, V6, "", t_ms=T0 - 30_000)["SrcK8S_Name"] == "n"
    assert flow(e, IP, "", t_ms=T0 - 30_000) == NOBODY
    assert flow(e, IP, "", t_ms=T0 - 60_000)["SrcK8S_Name"] == "old"

def _with_sidecar(p: dict[str, Any]) -> dict[str, Any]:
    """`p` with a native sidecar (an init container with restartPolicy Always, Kubernetes 1.29+)
    still running: the kubelet stops sidecars only after the main containers exited."""
    p["spec"]["initContainers"] = [{"name": "proxy", "image": "envoy", "restartPolicy": "Always"}]
    p["status"]["initContainerStatuses"] = [{"name": "proxy", "ready": True, "restartCount": 0, "started": True,
                                             "state": {"running": {"startedAt": iso(T0 - 3_600_000)}}}]
    return p


def test_a_pod_whose_sidecar_still_runs_has_not_finished() -> None:
    """Every main container terminated, a native sidecar still running (the pod's sandbox, its
    address and the sidecar's traffic with it, live on): the pod has not finished. Force-deleted
    then (its DELETED event's final status is that one), or no longer listed by a relist, it
    held its address until the delete was seen, and the sidecar's flows meanwhile are its own.
    It was ended when its main containers finished: the sidecar's last flows had no identity."""
    for how in ("deleted", "relisted"):
        clock = Clock(T0 - 100_000)
        e = build([_with_sidecar(_terminating(finished=T0 - 50_000))], clock=clock)
        idx = e.index
        clock.ms = T0
        if how == "deleted":
            idx.delete("pods", idx.parse("pods", _with_sidecar(_terminating(finished=T0 - 50_000))))
        else:
            idx.replace("pods", [])
        assert flow(e, IP, "", t_ms=T0 - 20_000).get("SrcK8S_Name") == "old", how
        assert flow(e, IP, "", t_ms=T0 - 60_000).get("SrcK8S_Name") == "old", how


def test_a_relist_after_410_ends_a_pod_it_no_longer_lists_when_its_containers_finished(
        fake_kube: FakeKube, kubeconfig: str, implementation: str) -> None:  # noqa: F811 - fixtures
    """End to end through the informer: the watch sees a terminating pod's containers all
    finish, falls behind (its events held) while the pod is deleted and its address goes to a
    pending pod, and is told 410 Gone: the relist ends the old pod when its containers finished,
    and the new pod's flows since then are its own."""
    now = int(time.time() * 1000)

    def old(finished: int | None) -> dict[str, Any]:
        p = _terminating(finished=finished)
        p["metadata"]["creationTimestamp"] = iso(now - 3_600_000)
        return p

    def new(ips: list[str] | None) -> dict[str, Any]:
        p = _new(ips)
        p["metadata"]["creationTimestamp"] = iso(now - 60_000)
        p["status"]["startTime"] = iso(now - 55_000)
        return p

    seed(fake_kube)
    fake_kube.add("pods", old(None))
    fake_kube.add("pods", new(None))
    with running_enricher(kubeconfig, compiled=implementation == "compiled") as e:
        assert e.wait_ready(10)
        wait_for(lambda: fake_kube.watchers["pods"] >= 1, what="pod watch open")
        fake_kube.modify("pods", old(now - 50_000))
        wait_for(lambda: e.stats()["kinds"]["pods"]["events"]["MODIFIED"] >= 1, what="the terminated status")
        fake_kube.hold("pods")
        fake_kube.delete("pods", "old", "shop")
        fake_kube.modify("pods", new([IP]))
        fake_kube.expire("pods")
        wait_for(lambda: e.stats()["kinds"]["pods"]["relists"] == 1, what="relist")
        assert flow(e, IP, "", t_ms=now - 60_000)["SrcK8S_Name"] == "old"
        assert flow(e, IP, "", t_ms=now - 20_000)["SrcK8S_Name"] == "n"
        assert e.stats()["index"]["tombstones"] == 1


def _lost_container_pod(*, phase: str) -> dict[str, Any]:
    """A pod with a (completed) init container whose main container the runtime lost (a node
    or containerd restart): the kubelet reports it terminated, reason ContainerStatusUnknown,
    with no startedAt/finishedAt (Go's zero time: null)."""
    p = pod("lost", "shop", ips=[IP], uid="u-lost", created=iso(T0 - 3_600_000), phase=phase)
    p["status"]["startTime"] = iso(T0 - 3_600_000)
    p["status"]["initContainerStatuses"] = [{"name": "init", "ready": True, "restartCount": 0, "state": {
        "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": iso(T0 - 3_598_000),
                       "finishedAt": iso(T0 - 3_597_000)}}}]
    main: dict[str, Any] = {"running": {"startedAt": iso(T0 - 3_596_000)}}
    if phase == "Failed":
        main = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown", "startedAt": None,
                               "finishedAt": None, "message": "The container could not be located when the pod "
                               "was deleted.  The container used to be Running"}}
    p["status"]["containerStatuses"] = [{"name": "c", "ready": False, "restartCount": 0, "state": main}]
    return p


def test_a_container_terminated_without_finished_at_leaves_the_pods_end_unknown() -> None:
    """A finished pod held its address until its containers' last finishedAt, "else until it was
    seen finished" (docs/collector.md): when one container's finishedAt is unknown
    (ContainerStatusUnknown), so is the last one. It was the latest finishedAt known, here the
    init container's, an hour early: every flow of the pod's life lost its identity."""
    for how in ("failed", "deleted"):
        clock = Clock(T0 - 100_000)
        e = build([_lost_container_pod(phase="Running")], clock=clock)
        idx = e.index
        clock.ms = T0
        if how == "failed":
            _apply(e, _lost_container_pod(phase="Failed"))
        else:
            idx.delete("pods", idx.parse("pods", _lost_container_pod(phase="Failed")))
        assert flow(e, IP, "", t_ms=T0 - 60_000).get("SrcK8S_Name") == "lost", how
        assert flow(e, IP, "", t_ms=T0 - 3_000_000).get("SrcK8S_Name") == "lost", how


def _same_second_pair(*, finished_at: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Job's completed pod that kept `IP` in its status, and a Deployment's Running pod given
    `IP` after it: both created in one second (the API's times are whole seconds), the Job's
    with or without a finishedAt (a container the runtime lost has none)."""
    created = iso(T0 - 600_000)
    job = pod("job-7c-q", "shop", ips=[IP], uid="u-job", created=created, phase="Succeeded", owner=("Job", "job-7c"))
    state: dict[str, Any] = {"exitCode": 0, "reason": "Completed"}
    if finished_at:
        state["finishedAt"] = created
    job["status"]["containerStatuses"] = [{"name": "c", "ready": False, "restartCount": 0,
                                           "state": {"terminated": state}}]
    web = pod("api-5d-x", "shop", ips=[IP], uid="u-api", created=created)
    web["status"]["containerStatuses"] = [{"name": "c", "ready": True, "restartCount": 0,
                                           "state": {"running": {"startedAt": created}}}]
    return job, web


def test_a_running_pod_wins_over_a_finished_pod_that_got_the_address_in_the_same_second() -> None:
    """"A Running pod should win" over a completed pod that still lists the address, whatever
    order the two were listed or watched in. Holders that got an address in the same second
    (creationTimestamp is whole seconds; the fake API server stamps objects added within one
    second alike) were ordered by arrival: a Running pod listed first (its name sorts first) or
    whose ADDED came first was hidden by the completed pod for every flow before the completed
    pod was seen (its end, finishedAt unknown), e.g. the whole of a capture decoded later."""
    for finished_at in (False, True):
        for order in ("running first", "finished first"):
            for how in ("list", "watch"):
                job, web = _same_second_pair(finished_at=finished_at)
                objs = [web, job] if order == "running first" else [job, web]
                clock = Clock(T0)
                e = build(objs if how == "list" else [], clock=clock)
                if how == "watch":
                    for o in objs:
                        _apply(e, o)
                case = (finished_at, order, how)
                for t in (T0 - 300_000, T0 - 1_000, T0, 0):
                    assert flow(e, IP, "", t_ms=t)["SrcK8S_Name"] == "api-5d-x", (case, t)


def test_a_running_pod_listed_before_a_completed_pod_with_its_address_wins(
        fake_kube: FakeKube, kubeconfig: str, implementation: str) -> None:  # noqa: F811 - fixtures
    """End to end through the informer's list (the API lists by namespace and name): a Job's
    completed pod that still lists an address (no container status: its finish is unknown)
    and the Running pod given the address, both created in one second, as the fake API server
    stamps objects added together. The Running pod's name sorts first, so it was listed first,
    and the completed pod answered for every flow before the list."""
    now = int(time.time() * 1000)
    created = iso(now - 60_000)
    job = pod("job-7c-q", "shop", ips=[IP], created=created, phase="Succeeded", owner=("Job", "job-7c"))
    web = pod("api-5d-x", "shop", ips=[IP], created=created)
    seed(fake_kube)
    fake_kube.add("pods", job)
    fake_kube.add("pods", web)
    with running_enricher(kubeconfig, compiled=implementation == "compiled") as e:
        assert e.wait_ready(10)
        for t in (now - 30_000, now - 1_000, 0):
            assert flow(e, IP, "", t_ms=t)["SrcK8S_Name"] == "api-5d-x", t


def _created(obj: dict[str, Any], ms: int) -> dict[str, Any]:
    obj["metadata"]["creationTimestamp"] = iso(ms)
    return obj


def test_a_clusterip_given_to_a_new_service_keeps_the_deleted_services_earlier_flows(
        fake_kube: FakeKube, kubeconfig: str, implementation: str) -> None:  # noqa: F811 - fixtures
    """A Service deleted and its ClusterIP given to a new Service (the allocator frees it at
    the delete) while flows of the old one are still exported: those that started before the
    delete are the old Service's, as a deleted pod's are (a tombstone), not nobody's in between,
    nor the new Service's after; flows since the new one was created are its own. Flows to the
    Service that kept its address all along are untouched."""
    now = int(time.time() * 1000)
    vip = "172.30.0.77"
    seed(fake_kube)
    fake_kube.add("services", _created(service("cart", "shop", ips=[vip]), now - 3_600_000))
    with running_enricher(kubeconfig, compiled=implementation == "compiled") as e:
        assert e.wait_ready(10)
        wait_for(lambda: fake_kube.watchers["services"] >= 1, what="service watch open")
        assert flow(e, "", vip, t_ms=now - 60_000)["DstK8S_Name"] == "cart"
        fake_kube.delete("services", "cart", "shop")
        wait_for(lambda: e.stats()["kinds"]["services"]["events"]["DELETED"] == 1, what="the delete")
        assert flow(e, "", vip, t_ms=now - 60_000)["DstK8S_Name"] == "cart"     # a late flow of the old one
        assert "DstK8S_Name" not in flow(e, "", vip, t_ms=now + 600_000)        # nobody's since
        fake_kube.add("services", _created(service("checkout", "pay", ips=[vip]), now + 1_000))
        wait_for(lambda: e.stats()["kinds"]["services"]["events"]["ADDED"] >= 1, what="the new service")
        assert flow(e, "", vip, t_ms=now - 60_000)["DstK8S_Name"] == "cart"
        assert flow(e, "", vip, t_ms=now - 60_000)["DstK8S_Namespace"] == "shop"
        late = flow(e, "", vip, t_ms=now + 2_000)
        assert (late["DstK8S_Name"], late["DstK8S_Namespace"]) == ("checkout", "pay")
        assert flow(e, "", vip)["DstK8S_Name"] == "checkout"     # no start time: who has it now
        assert flow(e, "", "172.30.0.10", t_ms=now - 60_000)["DstK8S_Name"] == "web"
        assert e.stats()["index"]["address_tombstones"] == 1


def test_a_clusterip_an_existing_service_is_given_by_an_update_is_its_own_from_then() -> None:
    """A Service deleted, and its (IPv6) ClusterIP given to an older Service made dual-stack
    later (ipFamilyPolicy SingleStack to PreferDualStack allocates a ClusterIP of the other
    family; an ExternalName Service made ClusterIP gets one too): the flows that started before
    the delete stay the deleted Service's, those since the update are the other's. It answered
    from its own creation, an hour before: the deleted Service's last flows were its."""
    vip6 = "fd00:30::77"
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index
    gone = _created(service("legacy", "shop", ips=["172.30.0.5", vip6]), T0 - 86_400_000)
    idx.upsert("services", idx.parse("services", gone))
    single = _created(service("cart", "pay", ips=["172.30.0.77"]), T0 - 3_600_000)
    idx.upsert("services", idx.parse("services", single))
    idx.delete("services", idx.parse("services", gone))
    clock.ms += 5_000
    dual = _created(service("cart", "pay", ips=["172.30.0.77", vip6]), T0 - 3_600_000)
    idx.upsert("services", idx.parse("services", dual))
    for t in (T0 - 60_000, T0 - 1):
        assert flow(e, "", vip6, t_ms=t)["DstK8S_Name"] == "legacy", t
    assert "DstK8S_Name" not in flow(e, "", vip6, t_ms=T0 + 1_000)     # between the two: nobody's
    for t in (T0 + 5_000, 0):
        assert (flow(e, "", vip6, t_ms=t)["DstK8S_Name"], flow(e, "", vip6, t_ms=t)["DstK8S_Namespace"]) == ("cart", "pay")
    # the address it had all along is its own for every flow time, as before
    assert flow(e, "", "172.30.0.77", t_ms=T0 - 60_000)["DstK8S_Name"] == "cart"


def test_a_node_replaced_by_one_with_its_internal_ip_keeps_the_old_nodes_earlier_flows(
        fake_kube: FakeKube, kubeconfig: str, implementation: str) -> None:  # noqa: F811 - fixtures
    """A Node deleted (its VM gone) and a new one registered with its InternalIP (the cloud gave
    the private address to the new VM): the host traffic of the old node that started before
    the delete stays the old Node's; the new Node's is its own."""
    now = int(time.time() * 1000)
    addr = "10.0.0.9"
    seed(fake_kube)
    fake_kube.add("nodes", _created(node("node-old", internal=[addr], zone="zone-a"), now - 86_400_000))
    with running_enricher(kubeconfig, compiled=implementation == "compiled") as e:
        assert e.wait_ready(10)
        wait_for(lambda: fake_kube.watchers["nodes"] >= 1, what="node watch open")
        fake_kube.delete("nodes", "node-old")
        fake_kube.add("nodes", _created(node("node-new", internal=[addr], zone="zone-c"), now + 1_000))
        wait_for(lambda: e.stats()["kinds"]["nodes"]["events"]["ADDED"] >= 1, what="the new node")
        old = flow(e, addr, "", t_ms=now - 60_000)
        assert (old["SrcK8S_Name"], old["SrcK8S_Zone"]) == ("node-old", "zone-a")
        new = flow(e, addr, "", t_ms=now + 2_000)
        assert (new["SrcK8S_Name"], new["SrcK8S_Zone"]) == ("node-new", "zone-c")
        assert flow(e, "10.0.0.1", "", t_ms=now - 60_000)["SrcK8S_Name"] == "node-a"


@pytest.mark.parametrize("seen_by", ["relist", "added"])
def test_a_node_deleted_and_registered_again_under_its_name_in_a_watch_gap_is_another_node(
        fake_kube: FakeKube, kubeconfig: str, implementation: str, seen_by: str) -> None:  # noqa: F811 - fixtures
    """A Node deleted and registered again under its name (a VM replaced under its hostname:
    another uid, other addresses, another zone) while the watch was down, seen only by the
    relist after 410 Gone (or only as the new one's ADDED, the DELETED lost): the old Node's
    addresses are its own up to the new one's creation, the new one's from then, as after a
    delete seen. It was taken for an update of the old one: the new zone answered for the old
    Node's earlier flows on the address both list, and the old one kept the address only it
    listed until the new one was seen."""
    now = int(time.time() * 1000)
    created = now // 1000 * 1000     # (whole seconds: before the relist)
    seed(fake_kube)
    fake_kube.add("nodes", _created(node("node-x", internal=["10.0.0.9", "10.0.0.10"], zone="zone-a"), now - 86_400_000))

    def seen(e: enrich.Enricher, ip: str, t_ms: int) -> tuple[Any, ...]:
        got = flow(e, ip, "", t_ms=t_ms)
        return got.get("SrcK8S_Name"), got.get("SrcK8S_Zone")

    with running_enricher(kubeconfig, compiled=implementation == "compiled") as e:
        assert e.wait_ready(10)
        wait_for(lambda: fake_kube.watchers["nodes"] >= 1, what="node watch open")
        new = _created(node("node-x", internal=["10.0.0.9", "10.0.0.11"], zone="zone-c"), created)
        if seen_by == "relist":
            fake_kube.hold("nodes")      # the watch goes quiet: only a relist sees what follows
            fake_kube.delete("nodes", "node-x")
            fake_kube.add("nodes", new)
            fake_kube.expire("nodes")
            wait_for(lambda: e.stats()["kinds"]["nodes"]["relists"] == 1, what="relist")
        else:
            fake_kube.add("nodes", new)  # (in the server's place: no DELETED before it)
            wait_for(lambda: e.stats()["kinds"]["nodes"]["events"]["ADDED"] == 1, what="the new node's ADDED")
        after = int(time.time() * 1000) + 1
        assert e.stats()["kinds"]["nodes"]["events"]["DELETED"] == 0   # (never seen)
        assert seen(e, "10.0.0.9", created - 60_000) == ("node-x", "zone-a")
        assert seen(e, "10.0.0.9", after) == ("node-x", "zone-c")
        assert seen(e, "10.0.0.10", created - 60_000) == ("node-x", "zone-a")
        assert seen(e, "10.0.0.10", created + 1) == (None, None)
        assert seen(e, "10.0.0.11", created + 1) == ("node-x", "zone-c")


@pytest.mark.parametrize("how", ["added", "relist", "added unreadable", "relist unreadable", "added bad addresses"])
def test_a_node_added_again_under_its_name_without_its_delete_is_another_node(how: str) -> None:
    """A Node ADDED (or relisted) with another uid under the name of one the cache holds, its
    DELETED not seen: the old one ended at the new one's creation (two Nodes cannot share a
    name), or when the new one was seen when its creation is unreadable; the new one holds its
    addresses from its creation, and takes nothing from the old one: an unreadable new Node, or
    one whose status.addresses are malformed, does not keep the old one's addresses as its last
    good ones (they are another object's)."""
    clock = Clock(T0 + 30_000)
    e = build(clock=clock)
    idx = e.index
    others = idx.counts()["node_ips"]
    old = node("node-x", internal=["10.0.0.9", "10.0.0.10"], zone="zone-a")
    old["metadata"]["uid"] = "u-old"
    idx.upsert("nodes", idx.parse("nodes", _created(old, T0 - 86_400_000)))
    new = _created(node("node-x", internal=["10.0.0.9", "10.0.0.11"], zone="zone-c"), T0 + 10_000)
    new["metadata"]["uid"] = "u-new"
    if "unreadable" in how:
        new["status"] = ["not", "an", "object"]     # (counted: bad_field)
    elif how == "added bad addresses":
        new["status"]["addresses"] = "10.0.0.9"     # (not a list: unknown, not gone)
    clock.ms = T0 + 60_000
    if how.startswith("added"):
        idx.upsert("nodes", idx.parse("nodes", new))
    else:
        idx.replace("nodes", [idx.parse("nodes", n) for n in (*NODES, new)])

    def seen(ip: str, t_ms: int) -> tuple[Any, ...]:
        got = flow(e, ip, "", t_ms=t_ms)
        return got.get("SrcK8S_Name"), got.get("SrcK8S_Zone")

    end = T0 + 60_000 if "unreadable" in how else T0 + 10_000
    for ip in ("10.0.0.9", "10.0.0.10"):
        assert seen(ip, T0 - 60_000) == ("node-x", "zone-a"), (how, ip)
        assert seen(ip, end - 1) == ("node-x", "zone-a"), (how, ip)
    assert seen("10.0.0.10", end) == (None, None), how
    if "unreadable" in how or how == "added bad addresses":
        assert seen("10.0.0.9", end) == (None, None), how
        assert idx.counts()["node_ips"] == others, how   # the other Nodes' only
        assert idx.problems == {"bad_field": 1}, how   # (counted, as ever)
        return
    for t in (T0 + 10_000, 0):
        assert seen("10.0.0.9", t) == ("node-x", "zone-c"), how
        assert seen("10.0.0.11", t) == ("node-x", "zone-c"), how


def test_a_recreated_nodes_creation_before_the_old_ones_hold_began_leaves_it_what_was_seen() -> None:
    """The old Node of a name began listing an address (its management port: node-subnets
    written) by an update seen after the new Node's creationTimestamp (its watch was behind):
    that creation cannot end the old one's hold of it (it would end before it began, and the
    old one's flows of the time it was seen with the address would be the new one's); it ends
    when the new one was seen, as with no creation at all."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index

    def node_x(uid: str, ips: list[str], zone: str, created: int, subnet: str | None = None) -> dict[str, Any]:
        n = _created(node("node-x", internal=ips, zone=zone, subnets={"default": subnet} if subnet else None), created)
        n["metadata"]["uid"] = uid
        return n

    idx.upsert("nodes", idx.parse("nodes", node_x("u-old", ["10.0.0.8"], "zone-a", T0 - 86_400_000)))
    clock.ms = T0 + 30_000
    idx.upsert("nodes", idx.parse("nodes", node_x("u-old", ["10.0.0.8"], "zone-a", T0 - 86_400_000, "10.244.9.0/24")))
    clock.ms = T0 + 60_000
    idx.upsert("nodes", idx.parse("nodes", node_x("u-new", ["10.0.0.7"], "zone-c", T0 + 20_000, "10.244.9.0/24")))
    zone = {t: flow(e, "10.244.9.2", "", t_ms=t).get("SrcK8S_Zone") for t in (T0 + 25_000, T0 + 45_000, T0 + 65_000)}
    assert zone == {T0 + 25_000: "zone-c", T0 + 45_000: "zone-a", T0 + 65_000: "zone-c"}
    # the address only the old one listed ends at the new one's creation, as ever
    assert flow(e, "10.0.0.8", "", t_ms=T0 + 19_000)["SrcK8S_Zone"] == "zone-a"
    assert flow(e, "10.0.0.8", "", t_ms=T0 + 21_000) == NOBODY


@pytest.mark.parametrize("how", ["added", "relist"])
def test_a_service_added_again_under_its_name_without_its_delete_is_another_service(how: str) -> None:
    """A Service deleted and created again under its name (another uid, another ClusterIP)
    while the watch was down: the old one's ClusterIP is its own up to the new one's
    creation, the new one's ClusterIP the new one's from its creation. It was taken for an
    update: the old ClusterIP stayed the Service's until the new one was seen, and the new
    one's ClusterIP (a deleted Service's before) answered only from then."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index

    def web(uid: str, ip: str, created: int) -> dict[str, Any]:
        s = _created(service("web", "shop", ips=[ip]), created)
        s["metadata"]["uid"] = uid
        return s

    idx.upsert("services", idx.parse("services", web("u-old", "172.30.0.10", T0 - 86_400_000)))
    legacy = _created(service("legacy", "shop", ips=["172.30.0.11"]), T0 - 86_400_000)
    idx.upsert("services", idx.parse("services", legacy))
    clock.ms = T0 + 5_000
    idx.delete("services", idx.parse("services", legacy))    # (its ClusterIP freed, given to the new web)
    clock.ms = T0 + 60_000
    new = web("u-new", "172.30.0.11", T0 + 10_000)
    if how == "added":
        idx.upsert("services", idx.parse("services", new))
    else:
        idx.replace("services", [idx.parse("services", new)])
    assert flow(e, "", "172.30.0.10", t_ms=T0 + 9_000)["DstK8S_Name"] == "web"
    assert "DstK8S_Name" not in flow(e, "", "172.30.0.10", t_ms=T0 + 10_000), how
    assert flow(e, "", "172.30.0.11", t_ms=T0 + 4_000)["DstK8S_Name"] == "legacy"
    assert flow(e, "", "172.30.0.11", t_ms=T0 + 12_000)["DstK8S_Name"] == "web", how


@pytest.mark.parametrize("how", ["added", "relist", "delete seen"])
def test_pods_of_a_node_registered_again_keep_the_old_zone_in_flows_before_it(how: str) -> None:
    """A Node deleted and registered again under its name (another uid, another zone) while
    its pods are still there (the pod garbage collector deletes them after the Node, or the new
    kubelet of that name runs them): the pods' flows that started before the new Node's
    creation ran in the old one's zone, those after in the new one's. They were all given the
    new zone (the pods' one rendering), as the Node's own addresses were not (f3614ef). A pod
    that got its address after the new Node's creation is the new one's only (no tombstone)."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index

    def node_x(uid: str, zone: str, created: int) -> dict[str, Any]:
        n = _created(node("node-x", internal=["10.0.0.9"], zone=zone), created)
        n["metadata"]["uid"] = uid
        return n

    def on_x(name: str, ip: str, created: int) -> dict[str, Any]:
        return pod(name, "shop", ips=[ip], node="node-x", host_ip="10.0.0.9", uid=f"u-{name}",
                   owner=("DaemonSet", "agent"), created=iso(created))

    old = node_x("u-old", "zone-a", T0 - 86_400_000)
    idx.upsert("nodes", idx.parse("nodes", old))
    idx.upsert("pods", idx.parse("pods", on_x("agent-a", "10.244.9.5", T0 - 3_600_000)))
    clock.ms = T0 + 8_000
    if how == "delete seen":
        idx.delete("nodes", idx.parse("nodes", old))
    clock.ms = T0 + 60_000
    idx.upsert("pods", idx.parse("pods", on_x("agent-b", "10.244.9.6", T0 + 20_000)))
    tombs = idx.counts()["tombstones"]
    new = node_x("u-new", "zone-c", T0 + 10_000)
    if how == "relist":
        idx.replace("nodes", [idx.parse("nodes", n) for n in (*NODES, new)])
    else:
        idx.upsert("nodes", idx.parse("nodes", new))

    def zone(ip: str, t_ms: int) -> Any:
        got = flow(e, ip, "", t_ms=t_ms)
        assert got["SrcK8S_Name"] in ("agent-a", "agent-b"), got
        return got.get("SrcK8S_Zone")

    assert zone("10.244.9.5", T0 - 60_000) == "zone-a", how
    assert zone("10.244.9.5", T0 + 9_000) == "zone-a", how
    assert zone("10.244.9.5", T0 + 10_000) == "zone-c", how
    assert zone("10.244.9.5", T0 + 61_000) == "zone-c", how
    assert zone("10.244.9.5", 0) == "zone-c", how
    assert zone("10.244.9.6", T0 + 30_000) == "zone-c", how
    assert idx.counts()["tombstones"] == tombs + 1, how    # (agent-a's, before the new Node)
    # the new Node's own address, as f3614ef
    assert flow(e, "10.0.0.9", "", t_ms=T0 + 5_000).get("SrcK8S_Zone") == "zone-a", how


def _finished(p: dict[str, Any], fin: int, phase: str = "Succeeded") -> dict[str, Any]:
    """`p` with every container terminated at `fin` (finishedAt), in `phase`."""
    p["status"]["phase"] = phase
    p["status"]["containerStatuses"] = [{"name": "c", "ready": False, "restartCount": 0, "state": {"terminated": {
        "exitCode": 0, "reason": "Completed", "startedAt": p["metadata"]["creationTimestamp"], "finishedAt": iso(fin)}}}]
    return p


@pytest.mark.parametrize("how", ["succeeded before", "succeeded after", "deleted after", "terminated before, deleted"])
def test_a_pod_that_finished_before_its_nodes_re_registration_holds_nothing_after_it_finished(
        fake_kube: FakeKube, kubeconfig: str, implementation: str, how: str) -> None:  # noqa: F811 - fixtures
    """A pod whose containers finished before its Node was registered again under its name
    (another uid, another zone): its flows ran in the old Node's zone, and it held its address
    until it finished, not until the new Node's creation. Seen finished after the new Node
    (its Succeeded status, or its DELETED with the final status, came later: "after"; or every
    container terminated, phase Running, before it: "terminated before"), the tombstone the
    re-registration split off ended at the new Node's creation, so the flows between the
    finish and that creation were still the pod's; seen Succeeded before the new Node, it took
    the new Node's zone for all its flows, though it never ran there."""
    now = int(time.time() * 1000)
    created = now // 1000 * 1000 - 20_000       # the new Node's creation (whole seconds)
    fin = created - 30_000                      # when the pod's containers finished
    ip = "10.244.9.5"
    seed(fake_kube)
    fake_kube.add("nodes", _created(node("node-x", internal=["10.0.0.9"], zone="zone-a"), now - 86_400_000))

    def agent() -> dict[str, Any]:
        return pod("agent-a", "shop", ips=[ip], node="node-x", host_ip="10.0.0.9", owner=("DaemonSet", "agent"),
                   created=iso(now - 3_600_000))

    fake_kube.add("pods", agent() if how in ("succeeded after", "deleted after") else
                  _finished(agent(), fin, "Running" if how.startswith("terminated") else "Succeeded"))
    with running_enricher(kubeconfig, compiled=implementation == "compiled") as e:
        assert e.wait_ready(10)
        wait_for(lambda: fake_kube.watchers["nodes"] >= 1 and fake_kube.watchers["pods"] >= 1, what="watches open")
        fake_kube.delete("nodes", "node-x")
        fake_kube.add("nodes", _created(node("node-x", internal=["10.0.0.9"], zone="zone-c"), created))
        wait_for(lambda: e.stats()["kinds"]["nodes"]["events"]["ADDED"] >= 1, what="the new node")
        if how == "succeeded after":
            fake_kube.modify("pods", _finished(agent(), fin))
            wait_for(lambda: e.stats()["kinds"]["pods"]["events"]["MODIFIED"] >= 1, what="the pod's final status")
        elif how == "deleted after":
            fake_kube.modify("pods", _finished(agent(), fin, "Running"))  # (the final status its DELETED carries)
        if how.startswith(("deleted", "terminated")):
            fake_kube.delete("pods", "agent-a", "shop")
            wait_for(lambda: e.stats()["kinds"]["pods"]["events"]["DELETED"] >= 1, what="the pod's delete")

        def seen(t_ms: int) -> tuple[Any, ...]:
            got = flow(e, ip, "", t_ms=t_ms)
            return got.get("SrcK8S_Name"), got.get("SrcK8S_Zone")

        assert seen(fin - 60_000) == ("agent-a", "zone-a"), how
        assert seen(fin - 1_000) == ("agent-a", "zone-a"), how
        assert seen(fin + 1_000) == (None, None), how        # (finished, the new Node not there yet)
        assert seen(created - 1_000) == (None, None), how
        assert seen(created + 1_000) == (None, None), how


@pytest.mark.parametrize("kind", ["nodes", "services"])
@pytest.mark.parametrize("how", ["added", "relist"])
def test_an_older_objects_delete_after_the_newer_ones_add_deletes_nothing(kind: str, how: str) -> None:
    """A Node (Service) deleted and created again under its name, the new one seen first (its
    ADDED, or the relist after 410 Gone), then the old one's DELETED (a watch resumed on
    another API server across a reconnect). Deletes go by name: the old one's DELETED deleted
    the new one, whose address was nobody's from then on. A DELETED of another uid than the
    one cached is stale: ignored and counted; the cached one's own DELETED still deletes it."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index

    def obj(uid: str, ip: str, created: int) -> dict[str, Any]:
        o = (node("node-x", internal=[ip], zone="zone-a" if uid == "u-old" else "zone-c") if kind == "nodes"
             else service("web", "shop", ips=[ip]))
        o["metadata"]["uid"] = uid
        return _created(o, created)

    old, new = obj("u-old", "10.0.0.9", T0 - 86_400_000), obj("u-new", "10.0.0.11", T0 + 10_000)
    idx.upsert(kind, idx.parse(kind, old))
    clock.ms = T0 + 60_000
    if how == "added":
        idx.upsert(kind, idx.parse(kind, new))
    else:
        idx.replace(kind, [idx.parse(kind, o) for o in ((*NODES, new) if kind == "nodes" else (new,))])
    clock.ms = T0 + 70_000
    idx.delete(kind, idx.parse(kind, old))
    side = "SrcK8S_Name"
    assert flow(e, "10.0.0.11", "", t_ms=T0 + 80_000).get(side) == ("node-x" if kind == "nodes" else "web")
    assert flow(e, "10.0.0.11", "", t_ms=0).get(side) == ("node-x" if kind == "nodes" else "web")
    assert flow(e, "10.0.0.9", "", t_ms=T0 + 9_000).get(side) == ("node-x" if kind == "nodes" else "web")
    assert idx.problems == {"stale_delete": 1}
    assert idx.kind_count(kind) == (len(NODES) + 1 if kind == "nodes" else 1)
    clock.ms = T0 + 90_000
    idx.delete(kind, idx.parse(kind, new))     # (its own DELETED)
    assert flow(e, "10.0.0.11", "", t_ms=T0 + 95_000) == NOBODY
    assert flow(e, "10.0.0.11", "", t_ms=T0 + 85_000).get(side) == ("node-x" if kind == "nodes" else "web")
    assert idx.problems == {"stale_delete": 1}


def test_an_older_pods_delete_after_the_newer_ones_add_deletes_nothing() -> None:
    """Pods are keyed by uid, not by name: a StatefulSet pod deleted and created again under
    its name, the new one seen first, then the old one's DELETED: the new one stays (nothing
    counted: the old one's record, if any, is what that DELETED is about)."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index

    def web0(uid: str, ip: str, created: int) -> dict[str, Any]:
        return pod("web-0", "shop", ips=[ip], node="node-b", host_ip="10.0.0.2", uid=uid,
                   owner=("StatefulSet", "web"), created=iso(created))

    old, new = web0("u-old", "10.244.1.5", T0 - 86_400_000), web0("u-new", "10.244.1.6", T0 + 10_000)
    idx.upsert("pods", idx.parse("pods", old))
    clock.ms = T0 + 60_000
    idx.upsert("pods", idx.parse("pods", new))
    clock.ms = T0 + 70_000
    idx.delete("pods", idx.parse("pods", old))
    assert flow(e, "10.244.1.6", "", t_ms=T0 + 80_000)["SrcK8S_Name"] == "web-0"
    assert flow(e, "10.244.1.5", "", t_ms=T0 + 30_000)["SrcK8S_Name"] == "web-0"   # (its tombstone)
    assert flow(e, "10.244.1.5", "", t_ms=T0 + 75_000) == NOBODY
    assert idx.kind_count("pods") == 1
    assert idx.problems == {}


@pytest.mark.parametrize("names_its_node", [True, False])
def test_a_pod_delete_without_a_uid_deletes_the_cached_pod_of_its_name(
        fake_kube: FakeKube, kubeconfig: str, implementation: str, names_its_node: bool) -> None:  # noqa: F811 - fixtures
    """A pod's DELETED event whose object has no metadata.uid (the API server always sends one:
    a broken server or proxy). Pods are keyed by their uid, so it matched no cached pod and
    passed unseen: the pod stayed in the cache, live, its address its own in flows that started
    after its delete (until a relist), and nothing was counted. It deletes the cached pod of
    its namespace and name, counted (problems_pod_delete_without_uid)."""
    now = int(time.time() * 1000)
    ip = "10.244.0.77"
    seed(fake_kube)
    fake_kube.add("pods", pod("batch-x", "jobs", ips=[ip], owner=("Job", "batch"), created=iso(now - 600_000)))

    def without_uid(obj: dict[str, Any]) -> dict[str, Any]:
        del obj["metadata"]["uid"]
        if not names_its_node:
            del obj["spec"]["nodeName"]
        return obj

    with running_enricher(kubeconfig, compiled=implementation == "compiled") as e:
        assert e.wait_ready(10)
        wait_for(lambda: fake_kube.watchers["pods"] >= 1, what="pod watch open")
        pods = e.stats()["index"]["pods"]
        assert e.stats()["problems"] == {}
        fake_kube.delete("pods", "batch-x", "jobs", sent=without_uid)
        wait_for(lambda: e.stats()["kinds"]["pods"]["events"]["DELETED"] >= 1, what="the pod's delete")
        after = int(time.time() * 1000) + 1
        assert e.stats()["index"]["pods"] == pods - 1
        assert flow(e, ip, "", t_ms=after) == NOBODY
        assert flow(e, ip, "", t_ms=now - 60_000)["SrcK8S_Name"] == "batch-x"    # (its tombstone)
        assert e.stats()["problems"] == {"pod_delete_without_uid": 1}


def test_a_pod_delete_without_a_uid_that_names_no_one_cached_pod_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A uid-less pod DELETED (as above) whose namespace and name no cached pod has, or two
    do (a StatefulSet pod created again under its name, the old one's delete not applied yet)
    and their starts do not tell which: nothing is deleted, and it is counted
    (problems_pod_delete_unmatched) and logged once; the starts, when they tell, pick the one."""
    clock = Clock(T0 + 60_000)
    e = build(clock=clock)
    idx = e.index

    def web0(uid: str | None, ip: str, created: int) -> dict[str, Any]:
        return pod("web-0", "shop", ips=[ip], node="node-b", host_ip="10.0.0.2", uid=uid,
                   owner=("StatefulSet", "web"), created=iso(created))

    idx.upsert("pods", idx.parse("pods", web0("u-old", "10.244.1.5", T0 - 86_400_000)))
    idx.upsert("pods", idx.parse("pods", web0("u-new", "10.244.1.6", T0 + 10_000)))
    pods = idx.kind_count("pods")
    with caplog.at_level("WARNING", logger="flowscope.enrich"):
        idx.delete("pods", idx.parse("pods", web0(None, "10.244.1.5", T0)))          # (neither start)
        idx.delete("pods", idx.parse("pods", pod("web-9", "shop", ips=["10.244.1.9"], created=iso(T0))))
        assert idx.kind_count("pods") == pods
        assert idx.problems == {"pod_delete_unmatched": 2}
        assert [r.getMessage().split(":")[1] for r in caplog.records] == [" pod_delete_unmatched"]
        assert flow(e, "10.244.1.5", "", t_ms=T0 + 61_000)["SrcK8S_Name"] == "web-0"
        # the old one's start tells it from the new one
        idx.delete("pods", idx.parse("pods", web0(None, "10.244.1.5", T0 - 86_400_000)))
    assert idx.kind_count("pods") == pods - 1
    assert flow(e, "10.244.1.5", "", t_ms=T0 + 61_000) == NOBODY
    assert flow(e, "10.244.1.6", "", t_ms=T0 + 61_000)["SrcK8S_Name"] == "web-0"
    assert idx.problems == {"pod_delete_unmatched": 2, "pod_delete_without_uid": 1}


@pytest.mark.parametrize("final", ["as_cached", "no_pod_ips", "unreadable"])
def test_a_late_pod_delete_without_a_uid_leaves_a_newer_pod_of_its_name(
        caplog: pytest.LogCaptureFixture, final: str) -> None:
    """A StatefulSet pod deleted (its DELETED applied) and created again under its name, then a
    late or repeated DELETED of the old one without a uid (bad input, as above): it was applied
    to the cached pod of that name, the new one, which left the cache (its address nobody's)
    until its next event. Its creationTimestamp (and node and addresses, where both give them)
    is the old one's: nothing is deleted, counted (problems_pod_delete_unmatched) and logged
    once. Its final status may list no address (a finished pod's sandbox removed), or be
    unreadable (its metadata read): the creation alone tells. The new pod's own uid-less
    DELETED still deletes it."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index

    def web0(uid: str | None, ip: str, created: int) -> dict[str, Any]:
        return pod("web-0", "shop", ips=[ip], node="node-b", host_ip="10.0.0.2", uid=uid,
                   owner=("StatefulSet", "web"), created=iso(created))

    old = web0("u-old", "10.244.1.5", T0 - 86_400_000)
    idx.upsert("pods", idx.parse("pods", old))
    clock.ms = T0 + 5_000
    idx.delete("pods", idx.parse("pods", old))
    clock.ms = T0 + 60_000
    idx.upsert("pods", idx.parse("pods", web0("u-new", "10.244.1.6", T0 + 10_000)))

    def sent(obj: dict[str, Any]) -> dict[str, Any]:
        if final == "no_pod_ips":
            obj["status"] = {"phase": "Succeeded", "hostIP": "10.0.0.2"}
        elif final == "unreadable":
            obj["status"] = "gone"
        return obj

    late = sent(web0(None, "10.244.1.5", T0 - 86_400_000))
    clock.ms = T0 + 70_000
    with caplog.at_level("WARNING", logger="flowscope.enrich"):
        idx.delete("pods", idx.parse("pods", late))
        idx.delete("pods", idx.parse("pods", late))
    assert idx.kind_count("pods") == 1
    assert flow(e, "10.244.1.6", "", t_ms=T0 + 80_000)["SrcK8S_Name"] == "web-0"
    assert flow(e, "10.244.1.5", "", t_ms=T0 + 80_000) == NOBODY
    assert idx.problems == {"pod_delete_unmatched": 2, **({"bad_field": 2} if final == "unreadable" else {})}
    assert [r.getMessage().split(":")[1] for r in caplog.records if "pod_delete" in r.getMessage()] == [
        " pod_delete_unmatched"]
    clock.ms = T0 + 90_000
    idx.delete("pods", idx.parse("pods", sent(web0(None, "10.244.1.6", T0 + 10_000))))
    assert idx.kind_count("pods") == 0
    assert flow(e, "10.244.1.6", "", t_ms=T0 + 95_000) == NOBODY
    assert flow(e, "10.244.1.6", "", t_ms=T0 + 80_000)["SrcK8S_Name"] == "web-0"     # (its tombstone)
    assert idx.problems["pod_delete_without_uid"] == 1


@pytest.mark.parametrize("final", ["no_pod_ips", "its_address_given_again"])
def test_a_late_pod_delete_without_a_uid_or_creation_leaves_a_newer_pod_on_its_node(
        caplog: pytest.LogCaptureFixture, final: str) -> None:
    """As above, the late uid-less DELETED of the old pod now without a creationTimestamp too
    (a proxy that drops the uid may drop more), on the node where the new pod of its name runs
    (a StatefulSet pod with a local volume comes back to its node): its final status lists no
    address (a finished pod's sandbox removed), or the address the new pod was given again
    (an IPAM that keeps a StatefulSet pod's address by its namespace and name does: Kube-OVN's).
    The same nodeName, or an address in common, was taken for the pod's
    identity: the new pod was deleted, its address nobody's. Neither tells two pods of one name
    apart; the creationTimestamp does: without it nothing is deleted, counted
    (problems_pod_delete_unmatched) and logged once, the new pod's own uid-less DELETED
    without one included; with it, that one deletes the new pod."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index
    new_ip = "10.244.1.5" if final == "its_address_given_again" else "10.244.1.6"

    def web0(uid: str | None, ip: str, created: int | None) -> dict[str, Any]:
        return pod("web-0", "shop", ips=[ip], node="node-b", host_ip="10.0.0.2", uid=uid,
                   owner=("StatefulSet", "web"), created=None if created is None else iso(created))

    old = web0("u-old", "10.244.1.5", T0 - 86_400_000)
    idx.upsert("pods", idx.parse("pods", old))
    clock.ms = T0 + 5_000
    idx.delete("pods", idx.parse("pods", old))
    clock.ms = T0 + 60_000
    idx.upsert("pods", idx.parse("pods", web0("u-new", new_ip, T0 + 10_000)))
    late = web0(None, "10.244.1.5", None)
    if final == "no_pod_ips":
        late["status"] = {"phase": "Succeeded", "hostIP": "10.0.0.2"}
    clock.ms = T0 + 70_000
    with caplog.at_level("WARNING", logger="flowscope.enrich"):
        idx.delete("pods", idx.parse("pods", late))
        idx.delete("pods", idx.parse("pods", web0(None, new_ip, None)))    # (the new pod's: nothing tells)
    assert idx.kind_count("pods") == 1
    assert flow(e, new_ip, "", t_ms=T0 + 80_000)["SrcK8S_Name"] == "web-0"
    assert idx.problems == {"pod_delete_unmatched": 2}
    assert [r.getMessage().split(":")[1] for r in caplog.records if "pod_delete" in r.getMessage()] == [
        " pod_delete_unmatched"]
    clock.ms = T0 + 90_000
    idx.delete("pods", idx.parse("pods", web0(None, new_ip, T0 + 10_000)))
    assert idx.kind_count("pods") == 0
    assert flow(e, new_ip, "", t_ms=T0 + 95_000) == NOBODY
    assert idx.problems == {"pod_delete_unmatched": 2, "pod_delete_without_uid": 1}

def test_a_pod_delete_without_a_uid_finds_its_pod_cached_on_no_node() -> None:
    """A uid-less pod DELETED (as above) names the node its pod was bound to, while the cache
    holds that pod as it was Pending, on no node (the update that bound it could not be read:
    counted, the last good version kept), and an older pod of its name still on that node (its
    own uid-less DELETED, without a creationTimestamp, matched nothing). The search looked at
    the pods of the node the event names only, and went no further once one of the name was
    there: the cached pod of the event's creationTimestamp was not found, nothing was deleted.
    The node's pods come first (the event names it), then every pod of the name."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index

    def web0(uid: str | None, ip: str | None, created: int | None, node: str | None = "node-b") -> dict[str, Any]:
        return pod("web-0", "shop", ips=[ip] if ip else None, node=node, host_ip="10.0.0.2" if node else None,
                   uid=uid, owner=("StatefulSet", "web"), created=None if created is None else iso(created),
                   phase="Running" if ip else "Pending")

    idx.upsert("pods", idx.parse("pods", web0("u-old", "10.244.1.5", T0 - 86_400_000)))
    clock.ms = T0 + 5_000
    idx.delete("pods", idx.parse("pods", web0(None, "10.244.1.5", None)))      # (unmatched: it stays)
    clock.ms = T0 + 10_000
    idx.upsert("pods", idx.parse("pods", web0("u-new", None, T0 + 10_000, node=None)))
    bound = web0("u-new", "10.244.1.6", T0 + 10_000)
    bound["status"] = "unreadable"
    clock.ms = T0 + 20_000
    idx.upsert("pods", idx.parse("pods", bound))
    assert idx.kind_count("pods") == 2
    clock.ms = T0 + 30_000
    idx.delete("pods", idx.parse("pods", web0(None, None, T0 + 10_000)))
    assert idx.kind_count("pods") == 1
    assert flow(e, "10.244.1.5", "", t_ms=T0 + 40_000)["SrcK8S_Name"] == "web-0"      # (the older one stays)
    assert idx.problems == {"pod_delete_unmatched": 1, "bad_field": 1, "pod_delete_without_uid": 1}

@pytest.mark.parametrize("owner", [("Deployment", "api"), None])
@pytest.mark.parametrize("how", ["added", "relist"])
def test_a_replicaset_created_again_under_its_name_owns_only_its_own_pods(how: str, owner: Any) -> None:
    """A ReplicaSet deleted and created again under its name in a watch gap (its DELETED not
    seen: the new one's ADDED, or the relist after 410 Gone) with another owner, another
    Deployment or none, while a pod of the old one is still there (the garbage collector
    deletes pods after their ReplicaSet): that pod names the old one's uid in its
    ownerReferences and keeps the old one's Deployment; the new one's pods get the new one's
    owner. Keyed by namespace/name alone, the new one was taken for an update of the old one,
    and its owner given to the old one's pod. A pod naming a uid no ReplicaSet cached has
    (not seen yet) is published with its ReplicaSet, unresolved; the old one's DELETED
    arriving after the new one was seen deletes nothing (stale_delete)."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index

    def rs(uid: str, dep: tuple[str, str] | None) -> dict[str, Any]:
        return replicaset("web-6d4", "shop", owner=dep, uid=uid)

    def web(name: str, ip: str, uid: str) -> dict[str, Any]:
        return pod(name, "shop", ips=[ip], node="node-b", host_ip="10.0.0.2", uid=f"u-{name}",
                   owner=("ReplicaSet", "web-6d4"), owner_uid=uid, created=iso(T0))

    def owner_of(ip: str) -> tuple[Any, ...]:
        got = flow(e, ip, "", t_ms=0)
        return got.get("SrcK8S_OwnerType"), got.get("SrcK8S_OwnerName")

    old = rs("u-rs-old", ("Deployment", "web"))
    idx.upsert("replicasets", idx.parse("replicasets", old))
    idx.upsert("pods", idx.parse("pods", web("web-a", "10.244.1.5", "u-rs-old")))
    assert owner_of("10.244.1.5") == ("Deployment", "web")
    clock.ms = T0 + 60_000
    new = rs("u-rs-new", owner)
    if how == "added":
        idx.upsert("replicasets", idx.parse("replicasets", new))
    else:
        idx.replace("replicasets", [idx.parse("replicasets", r) for r in (*RS, new)])
    idx.upsert("pods", idx.parse("pods", web("web-b", "10.244.1.6", "u-rs-new")))
    idx.upsert("pods", idx.parse("pods", web("web-c", "10.244.1.7", "u-rs-unseen")))
    mine = owner if owner is not None else ("ReplicaSet", "web-6d4")
    assert owner_of("10.244.1.5") == ("Deployment", "web"), how
    assert owner_of("10.244.1.6") == mine, how
    assert owner_of("10.244.1.7") == ("ReplicaSet", "web-6d4"), how
    idx.delete("replicasets", idx.parse("replicasets", old))
    assert idx.problems == {"stale_delete": 1}
    assert owner_of("10.244.1.6") == mine, how
    # the old one's pod goes: what it left goes with it; the new one's pods keep theirs
    idx.delete("pods", idx.parse("pods", web("web-a", "10.244.1.5", "u-rs-old")))
    assert owner_of("10.244.1.6") == mine, how
    assert flow(e, "10.244.1.5", "", t_ms=T0 + 30_000)["SrcK8S_OwnerName"] == "web"   # (its tombstone)
    idx.upsert("pods", idx.parse("pods", web("web-b", "10.244.1.8", "u-rs-new")))   # (re-rendered)
    assert owner_of("10.244.1.8") == mine, how


@pytest.mark.parametrize("how", ["added", "relist"])
def test_a_deleted_replicaset_is_forgotten_with_the_last_pod_that_names_it(how: str) -> None:
    """A Deployment deleted and applied again, over and over (its pod template, so its
    ReplicaSet's name, the same each time; the new ReplicaSet seen by its ADDED, or by the
    relist after 410 Gone, before the old one's DELETED or instead of it), each new pod created
    before the last old one went. A deleted ReplicaSet's record (its Deployment, for the pods
    that name it) was kept while any pod linked its name, so with pods of the next one always
    there, every one was kept for good: one more a cycle. It goes with the last pod naming it
    (index stat deleted_replicasets), and the pods that name one keep its Deployment until then."""
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index

    def web(n: int) -> dict[str, Any]:
        return pod(f"web-{n}", "shop", ips=[f"10.244.1.{10 + n % 2}"], node="node-b", host_ip="10.0.0.2",
                   uid=f"u-web-{n}", owner=("ReplicaSet", "web-6d4"), owner_uid=f"u-rs-{n}", created=iso(clock.ms))

    def rs(n: int) -> dict[str, Any]:
        return replicaset("web-6d4", "shop", owner=("Deployment", f"web-v{n}"), uid=f"u-rs-{n}")

    def owner(n: int) -> Any:
        return flow(e, f"10.244.1.{10 + n % 2}", "", t_ms=0).get("SrcK8S_OwnerName")

    idx.upsert("replicasets", idx.parse("replicasets", rs(0)))
    idx.upsert("pods", idx.parse("pods", web(0)))
    for n in range(1, 6):
        clock.ms += 10_000
        # the new ReplicaSet and its pod, the old pod still there
        if how == "added":
            idx.upsert("replicasets", idx.parse("replicasets", rs(n)))
        else:
            idx.replace("replicasets", [idx.parse("replicasets", r) for r in (*RS, rs(n))])
        idx.upsert("pods", idx.parse("pods", web(n)))
        assert idx.counts()["deleted_replicasets"] == 1, (how, n)
        assert (owner(n - 1), owner(n)) == (f"web-v{n - 1}", f"web-v{n}"), (how, n)
        clock.ms += 1_000
        idx.delete("pods", idx.parse("pods", web(n - 1)))
        assert idx.counts()["deleted_replicasets"] == 0, (how, n)
        assert owner(n) == f"web-v{n}", (how, n)
    # its pod's flows before its delete keep its Deployment (its tombstone)
    assert flow(e, "10.244.1.10", "", t_ms=clock.ms - 2_000)["SrcK8S_OwnerName"] == "web-v4"
    # and the new one's pods seen first (all an old one's gone): none kept for nobody
    clock.ms += 10_000
    idx.delete("pods", idx.parse("pods", web(5)))
    idx.upsert("pods", idx.parse("pods", web(6)))
    idx.upsert("replicasets", idx.parse("replicasets", rs(6)))
    assert idx.counts()["deleted_replicasets"] == 0
    assert owner(6) == "web-v6"
    assert idx.problems == {}


@pytest.mark.parametrize("how", ["status.addresses", "node-subnets"])
def test_a_node_first_seen_with_unreadable_addresses_holds_them_from_its_creation_once_read(how: str) -> None:
    """A Node first seen with its status.addresses (or node-subnets annotation) malformed
    (counted; nothing to keep: it has no last good ones) and fixed by an update: the addresses
    then read are the ones it was first seen with, unknown until then, not ones it gained by
    the update: it holds them from its creation. They were taken as gained, its own only from
    the update: a flow between its creation and the update, after the Node that had the address
    before was deleted, was nobody's."""
    addr = "10.0.0.9" if how == "status.addresses" else "10.244.7.2"   # (10.244.7.0/24's base + 2)
    clock = Clock(T0)
    e = build(clock=clock)
    idx = e.index
    gone = _created(node("node-p", internal=["10.0.0.9"], zone="zone-p", subnets={"default": "10.244.7.0/24"}),
                    T0 - 86_400_000)
    idx.upsert("nodes", idx.parse("nodes", gone))
    clock.ms = T0 + 10_000
    idx.delete("nodes", idx.parse("nodes", gone))

    def node_q(readable: bool) -> dict[str, Any]:
        n = _created(node("node-q", internal=["10.0.0.12", "10.0.0.9"] if how == "status.addresses" else ["10.0.0.12"],
                          zone="zone-q", subnets={"default": "10.244.7.0/24"}), T0 + 20_000)
        if not readable and how == "status.addresses":
            n["status"]["addresses"] = {"type": "InternalIP", "address": "10.0.0.9"}   # (not a list)
        elif not readable:
            n["metadata"]["annotations"]["k8s.ovn.org/node-subnets"] = "{not json"
        return n

    clock.ms = T0 + 25_000
    idx.upsert("nodes", idx.parse("nodes", node_q(readable=False)))
    assert idx.problems == {"bad_field" if how == "status.addresses" else "bad_annotation": 1}
    assert flow(e, addr, "", t_ms=T0 + 30_000) == NOBODY
    clock.ms = T0 + 60_000
    idx.upsert("nodes", idx.parse("nodes", node_q(readable=True)))
    assert flow(e, addr, "", t_ms=T0 + 5_000)["SrcK8S_Name"] == "node-p"
    assert flow(e, addr, "", t_ms=T0 + 15_000) == NOBODY          # (before node-q was created)
    for t in (T0 + 20_000, T0 + 30_000, 0):
        got = flow(e, addr, "", t_ms=t)
        assert (got.get("SrcK8S_Name"), got.get("SrcK8S_Zone")) == ("node-q", "zone-q"), t


def test_an_address_in_the_gap_between_two_holders_updates_goes_to_the_next_holder_as_pods_do() -> None:
    """One holder's update drops an address, the next one's update (seconds later) lists it: a
    flow that started between the two. A running pod whose podIPs gain it (no later start in
    its status) holds it from the end of the pod that had it (docs/collector.md: nobody else
    can have had it since); a Node whose status.addresses gain it is reported after the fact
    the same way, and was nobody's in the gap: it now holds it from there too. A ClusterIP is
    allocated by the update that gives it: the Service holds it from that update."""
    def pod_update(idx: Any, name: str, ips: list[str]) -> None:
        idx.upsert("pods", idx.parse("pods", pod(name, "shop", ips=ips, uid=f"u-{name}", created=iso(T0 - 3_600_000))))

    def node_update(idx: Any, name: str, ips: list[str]) -> None:
        idx.upsert("nodes", idx.parse("nodes", _created(node(name, internal=ips), T0 - 3_600_000)))

    def svc_update(idx: Any, name: str, ips: list[str]) -> None:
        idx.upsert("services", idx.parse("services", _created(service(name, "shop", ips=ips), T0 - 3_600_000)))

    got = {}
    for kind, update, (a, b, addr) in (("pod", pod_update, ("10.244.0.71", "10.244.0.72", "10.244.0.79")),
                                       ("node", node_update, ("10.0.0.71", "10.0.0.72", "10.0.0.79")),
                                       ("service", svc_update, ("172.30.0.71", "172.30.0.72", "172.30.0.79"))):
        clock = Clock(T0)
        e = build(clock=clock)
        update(e.index, "old", [a, addr])
        update(e.index, "new", [b])
        clock.ms = T0 + 10_000
        update(e.index, "old", [a])
        clock.ms = T0 + 20_000
        update(e.index, "new", [b, addr])
        got[kind] = [flow(e, addr, "", t_ms=t).get("SrcK8S_Name") for t in (T0 + 5_000, T0 + 15_000, T0 + 25_000)]
    assert got == {"pod": ["old", "new", "new"], "node": ["old", "new", "new"], "service": ["old", None, "new"]}


def test_node_and_service_tombstones_expire_with_the_pods() -> None:
    """Node and Service tombstones last --pod-tombstone-seconds, as pods' do: after that the
    address answers as it did before tombstones (the live holder for every flow time)."""
    clock = Clock(T0)
    e = build(services=[_created(service("cart", "shop", ips=["172.30.0.77"]), T0 - 3_600_000)],
              clock=clock, tombstone_seconds=60)
    idx = e.index
    idx.delete("services", idx.parse("services", _created(service("cart", "shop", ips=["172.30.0.77"]),
                                                          T0 - 3_600_000)))
    idx.upsert("services", idx.parse("services", _created(service("checkout", "pay", ips=["172.30.0.77"]), T0 + 1_000)))
    assert flow(e, "", "172.30.0.77", t_ms=T0 - 1_000)["DstK8S_Name"] == "cart"
    assert idx.counts()["address_tombstones"] == 1
    clock.ms += 61_000
    assert idx.sweep() == 1
    assert idx.counts()["address_tombstones"] == 0
    assert flow(e, "", "172.30.0.77", t_ms=T0 - 1_000)["DstK8S_Name"] == "checkout"
    assert flow(e, "", "172.30.0.77", t_ms=T0 + 5_000)["DstK8S_Name"] == "checkout"


def test_a_node_registered_with_the_address_of_one_that_lingers_leaves_it_the_earlier_flows() -> None:
    """A VM replaced and its InternalIP given to the new one, whose Node registers while the old
    Node lingers (NotReady until the node lifecycle controller deletes it): the new Node answers
    for the address from its creation, and the flows that started before stay the old Node's,
    by their side and by the exporter's node, as when the old Node was deleted first. They were
    the new Node's: it answered for every flow time, as if it had always held the address."""
    addr = "10.0.0.9"
    old = _created(node("node-old", internal=[addr], zone="zone-a"), T0 - 86_400_000)
    new = _created(node("node-new", internal=[addr], zone="zone-c"), T0 + 1_000)

    def seen(e: enrich.Enricher, t_ms: int) -> tuple[Any, ...]:
        got = flow(e, addr, "8.8.8.8", agent=addr, t_ms=t_ms)
        return got.get("SrcK8S_Name"), got.get("SrcK8S_Zone"), got.get("FlowDirection")

    for order in ("old deleted first", "new registered first"):
        clock = Clock(T0 + 2_000)
        e = build(clock=clock)
        idx = e.index
        idx.upsert("nodes", idx.parse("nodes", old))
        steps = [("delete", old), ("upsert", new)]
        for verb, obj in steps if order == "old deleted first" else steps[::-1]:
            getattr(idx, verb)("nodes", idx.parse("nodes", obj))
            clock.ms += 5_000
            if verb == "upsert":
                assert seen(e, T0 - 60_000) == ("node-old", "zone-a", 1), order
        assert seen(e, T0 - 60_000) == ("node-old", "zone-a", 1), order
        assert seen(e, T0 + 10_000) == ("node-new", "zone-c", 1), order
        assert idx.counts()["address_tombstones"] == 1, order
        # the tombstone goes with the pods': then the live Node answers for every flow time
        clock.ms += 400_000
        assert idx.sweep() == 1
        assert seen(e, T0 - 60_000) == ("node-new", "zone-c", 1), order


@pytest.mark.parametrize("how", ["status.addresses", "node-subnets"])
def test_an_address_an_existing_node_gains_by_an_update_is_its_own_from_then(how: str) -> None:
    """An address moves from one Node to another existing one by updates (a secondary private
    IP moved between VMs; a node-subnets annotation rewritten, its management port address
    with it), whichever update comes first: the flows that started before the Node that had it
    let it go stay its own, by their side and by the exporter's node. The gaining Node answered
    from its own creation: the flows of the hour before the move were its. It answers from its
    update when the other one still lists it; else, for status.addresses (reported after the
    fact, as a pod's podIPs: nobody else can have had the address since), from when the other
    one let it go, as a running pod given the address does; for an annotation (the allocation
    itself, as a ClusterIP), from its update."""
    subnet_a, subnet_b = "10.244.7.0/24", "10.244.8.0/24"
    addr = "10.0.0.9" if how == "status.addresses" else "10.244.7.2"   # (subnet_a's base + 2)

    def a_node(name: str, internal: str, subnet: str, moved: bool) -> dict[str, Any]:
        created = T0 - 86_400_000 if name == "node-p" else T0 - 3_600_000
        ips, zone = [internal], "zone-p" if name == "node-p" else "zone-q"
        if how == "status.addresses" and moved == (name == "node-q"):
            ips.append(addr)
        if how == "node-subnets" and moved:
            subnet = subnet_b if name == "node-p" else subnet_a
        return _created(node(name, internal=ips, zone=zone, subnets={"default": subnet}), created)

    def seen(e: enrich.Enricher, t_ms: int) -> tuple[Any, ...]:
        got = flow(e, addr, "8.8.8.8", agent=addr, t_ms=t_ms)
        return got.get("SrcK8S_Name"), got.get("SrcK8S_Zone"), got.get("FlowDirection")

    for b_first in (False, True):
        clock = Clock(T0)
        e = build(clock=clock)
        idx = e.index
        for name, internal, subnet in (("node-p", "10.0.0.11", subnet_a), ("node-q", "10.0.0.12", subnet_b)):
            idx.upsert("nodes", idx.parse("nodes", a_node(name, internal, subnet, moved=False)))
        assert seen(e, T0 - 60_000) == ("node-p", "zone-p", 1)
        steps = [("node-p", "10.0.0.11", subnet_a), ("node-q", "10.0.0.12", subnet_b)]
        at = {}
        for name, internal, subnet in steps[::-1] if b_first else steps:
            clock.ms += 5_000
            at[name] = clock.ms
            idx.upsert("nodes", idx.parse("nodes", a_node(name, internal, subnet, moved=True)))
        # the hour node-q lived before the move, and the moment before it: node-p's
        for t in (T0 - 60_000, T0 - 3_000_000, min(at.values()) - 1):
            assert seen(e, t) == ("node-p", "zone-p", 1), (b_first, t)
        if not b_first:   # between node-p letting it go and node-q listing it
            assert seen(e, at["node-p"] + 1) == (("node-q", "zone-q", 1) if how == "status.addresses"
                                                 else (None, None, None)), how
        assert seen(e, at["node-q"]) == ("node-q", "zone-q", 1), b_first
        assert seen(e, 0) == ("node-q", "zone-q", 1), b_first   # no start time: who has it now
        clock.ms += 400_000
        assert idx.sweep() >= 1   # the tombstone goes with the pods': then node-q answers for every time
        assert seen(e, T0 - 60_000) == ("node-q", "zone-q", 1), b_first


def test_two_nodes_listing_one_address_deleted_in_one_millisecond_keep_its_earlier_flows_where_they_were() -> None:
    """Two Nodes created in one second list one address; the one that began listing it last
    answers for it from then. Both deleted, the one answering first, then the other (which
    answered from then on) one millisecond later, or in the same millisecond, as a relist
    deletes them: the flows that started while the first answered are its own again, by their
    side and by the exporter's node, as of tombstones the one that stopped answering first. In
    one millisecond both tombstones had the same start and end, and the one deleted last took
    them."""
    addr = "10.0.0.9"
    created = T0 - 86_400_000

    def seen(e: enrich.Enricher) -> tuple[Any, ...]:
        got = flow(e, addr, "8.8.8.8", agent=addr, t_ms=T0 + 500)   # (node-y's, from T0)
        return got.get("SrcK8S_Name"), got.get("SrcK8S_Zone"), got.get("FlowDirection")

    for gap_ms in (1, 0):
        clock = Clock(T0)
        e = build(clock=clock)
        idx = e.index
        for name, zone in (("node-x", "zone-x"), ("node-y", "zone-y")):
            idx.upsert("nodes", idx.parse("nodes", _created(node(name, internal=[addr], zone=zone), created)))
        assert seen(e) == ("node-y", "zone-y", 1)
        clock.ms += 1_000
        idx.delete("nodes", idx.parse("nodes", _created(node("node-y", internal=[addr], zone="zone-y"), created)))
        # (node-x lists it: it answers for every flow since its creation, node-y's second)
        assert seen(e) == ("node-x", "zone-x", 1), gap_ms
        clock.ms += gap_ms
        idx.delete("nodes", idx.parse("nodes", _created(node("node-x", internal=[addr], zone="zone-x"), created)))
        assert seen(e) == ("node-y", "zone-y", 1), gap_ms
        # node-x's before node-y began listing the address, node-y's, node-x's
        assert idx.counts()["address_tombstones"] == 3


def test_flow_direction_of_a_replaced_nodes_earlier_flows_is_by_the_node_that_exported_them(
        fake_kube: FakeKube, kubeconfig: str, implementation: str) -> None:  # noqa: F811 - fixtures
    """FlowDirection compares the exporter (AgentIP) with the hosts of what the flow's sides are
    attributed to (DESIGN.md "Enrichment rules"). A Node replaced by one given its InternalIP:
    the flows that started before the change are the old Node's (its tombstone), and so was the
    exporter at that address then, so they are egress from it and ingress to it, as the new
    Node's own flows are after the change; a pod of the old node (deleted with it) likewise. The
    exporter was taken for the Node holding the address now: the old Node's flows got no
    FlowDirection (the exporter's own when it gave one), as if another node had exported them."""
    now = int(time.time() * 1000)
    addr, pod_ip, before, after = "10.0.0.9", "10.244.5.7", now - 60_000, now + 2_000
    seed(fake_kube)
    fake_kube.add("nodes", _created(node("node-old", internal=[addr], zone="zone-a"), now - 86_400_000))
    fake_kube.add("pods", pod("agent-x", "netobserv", ips=[pod_ip], node="node-old", host_ip=addr,
                              created=iso(now - 3_600_000)))
    with running_enricher(kubeconfig, compiled=implementation == "compiled") as e:
        assert e.wait_ready(10)
        wait_for(lambda: fake_kube.watchers["nodes"] >= 1 and fake_kube.watchers["pods"] >= 1, what="watches open")
        assert flow(e, addr, "8.8.8.8", agent=addr, t_ms=before)["FlowDirection"] == 1
        fake_kube.delete("pods", "agent-x", "netobserv")
        fake_kube.delete("nodes", "node-old")
        fake_kube.add("nodes", _created(node("node-new", internal=[addr], zone="zone-c"), now + 1_000))
        wait_for(lambda: e.stats()["kinds"]["nodes"]["events"]["ADDED"] >= 1
                 and e.stats()["kinds"]["pods"]["events"]["DELETED"] >= 1, what="the changes")

        def seen(src: str, dst: str, t_ms: int, agent: str = addr) -> tuple[Any, ...]:
            got = flow(e, src, dst, agent=agent, t_ms=t_ms)
            return got.get("SrcK8S_Name"), got.get("DstK8S_Name"), got.get("FlowDirection")

        # the old Node's flows, exported from its address (by it, then)
        assert seen(addr, "8.8.8.8", before) == ("node-old", None, 1)
        assert seen("8.8.8.8", addr, before) == (None, "node-old", 0)
        assert seen(pod_ip, "10.244.0.5", before) == ("agent-x", "web-6d4cf56db6-x1", 1)
        assert seen("10.244.0.5", pod_ip, before) == ("web-6d4cf56db6-x1", "agent-x", 0)
        assert seen(pod_ip, addr, before) == ("agent-x", "node-old", 2)   # the same node
        # exported by another node: that one's side decides, as before
        assert seen(addr, "10.244.0.5", before, agent="10.0.0.1") == ("node-old", "web-6d4cf56db6-x1", 0)
        # the new Node's flows, by time and without one (who has it now)
        assert seen(addr, "8.8.8.8", after) == ("node-new", None, 1)
        assert seen("8.8.8.8", addr, after) == (None, "node-new", 0)
        assert seen(addr, "8.8.8.8", 0) == ("node-new", None, 1)
