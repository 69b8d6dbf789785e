"""The informers against a fake API server speaking the real list/watch protocol.

Each test drives FakeKube (tests/support/fake_kube.py) like a controller would and waits for the
enricher to reflect it: events, relists on 410, reconnects after dropped watches, RBAC errors,
garbage from the server, readiness gating, and the in-cluster ServiceAccount path a pod takes
(HTTPS verified against ca.crt, a rotating token). Waits are condition polls, never fixed sleeps.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import enrich
from tests.support.enricher import fast_config, running_enricher
from tests.support.fake_kube import (
    FakeKube,
    node,
    pod,
    replicaset,
    running_fake_kube,
    service,
    wait_for,
)
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture
from tests.support.tls import make_pki

A = ipaddress.ip_address
FUTURE = 4_102_444_800_000  # 2100-01-01 in Unix ms: after any deletion these tests make
# What an address of nobody gives: no identity, and the layer "app" (no side is infrastructure).
NOBODY = {"K8S_FlowLayer": "app"}


def raw(ip: str) -> bytes:
    return A(ip).packed if ip else b""


def flow(e: enrich.Enricher, src: str, dst: str, agent: str = "", t_ms: int = 0, direction: int = -1) -> dict[str, Any]:
    frag = e.enrich(raw(src), raw(dst), raw(agent), t_ms, direction)
    return orjson.loads(b"{" + frag[1:] + b"}") if frag else {}


@pytest.fixture
def kubeconfig(fake_kube: FakeKube, tmp_path: Any) -> str:  # noqa: F811 - fixture parameter
    return str(fake_kube.write_kubeconfig(tmp_path / "kubeconfig"))


def seed(fake: FakeKube) -> FakeKube:
    """Two nodes, a Deployment's ReplicaSet and pod, a Service: what most tests start from."""
    fake.add("nodes", node("node-a", internal=["10.0.0.1"], zone="zone-a",
                           subnets={"default": ["10.244.0.0/24", "fd00:10:244:1::/64"]}))
    fake.add("nodes", node("node-b", internal=["10.0.0.2"], zone="zone-b", subnets={"default": "10.244.1.0/24"}))
    fake.add("replicasets", replicaset("web-6d4cf56db6", "shop", owner=("Deployment", "web")))
    fake.add("services", service("web", "shop", ips=["172.30.0.10"]))
    fake.add("pods", pod("web-6d4cf56db6-x1", "shop", ips=["10.244.0.5"], node="node-a", host_ip="10.0.0.1",
                         owner=("ReplicaSet", "web-6d4cf56db6")))
    return fake


@pytest.fixture
def seeded(fake_kube: FakeKube) -> FakeKube:  # noqa: F811
    return seed(fake_kube)


@pytest.fixture
def enricher(seeded: FakeKube, kubeconfig: str) -> Iterator[enrich.Enricher]:
    with running_enricher(kubeconfig) as e:
        yield e


def test_initial_sync_and_readiness(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    assert enricher.wait_ready(10)
    assert flow(enricher, "10.244.0.5", "172.30.0.10", agent="10.0.0.1") == {
        "SrcK8S_Name": "web-6d4cf56db6-x1", "SrcK8S_Namespace": "shop", "SrcK8S_Type": "Pod",
        "SrcK8S_OwnerName": "web", "SrcK8S_OwnerType": "Deployment", "SrcK8S_HostIP": "10.0.0.1",
        "SrcK8S_HostName": "node-a", "SrcK8S_Zone": "zone-a",
        "DstK8S_Name": "web", "DstK8S_Namespace": "shop", "DstK8S_Type": "Service",
        "DstK8S_OwnerName": "web", "DstK8S_OwnerType": "Service",
        "K8S_FlowLayer": "app", "FlowDirection": 1,
    }
    st = enricher.stats()
    assert st["ready"] is True
    assert {k: v["synced"] for k, v in st["kinds"].items()} == dict.fromkeys(
        ["pods", "nodes", "services", "replicasets"], True)
    assert st["kinds"]["pods"]["objects"] == 1
    assert st["index"]["nodes"] == 2
    # Lists then watches from the list's resourceVersion, with bookmarks. The watch request
    # follows the list in the informer thread: wait for it rather than racing it.
    seeded.wait_for(lambda: any(r["kind"] == "pods" and r["verb"] == "watch" for r in seeded.requests),
                    10, "the pods watch request")
    w = [r for r in seeded.requests if r["kind"] == "pods" and r["verb"] == "watch"]
    assert w and w[0]["query"]["allowWatchBookmarks"] == "true"
    assert int(w[0]["query"]["resourceVersion"]) >= 105


def test_a_watching_informer_keeps_no_listed_records_alive(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    """While it watches, an informer must not hold its last list: every listed record would stay
    alive beside its replacement as pods churn (about 1 kB a pod: 100 MB at 100k pods, until the
    next relist)."""
    import sys

    assert enricher.wait_ready(10)
    seeded.wait_for(lambda: enricher.stats()["kinds"]["pods"]["state"] == "watching", 10, "the pods watch")
    inf = enricher._informers["pods"]
    assert inf._thread is not None and inf._thread.ident is not None
    frame = sys._current_frames()[inf._thread.ident]
    held = []
    while frame is not None:
        held += [v for v in frame.f_locals.values() if isinstance(v, list) and v and type(v[0]).__name__ == "PodRec"]
        frame = frame.f_back
    assert held == []


def test_replicasets_are_fetched_as_metadata_only(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    assert enricher.wait_ready(10)
    wait_for(lambda: seeded.count(kind="replicasets", verb="watch") >= 1, what="rs watch")
    rs = [r for r in seeded.requests if r["kind"] == "replicasets"]
    assert "as=PartialObjectMetadataList" in rs[0]["accept"]
    assert any("as=PartialObjectMetadata;" in r["accept"] for r in rs if r["verb"] == "watch")


def test_readiness_waits_for_every_kind(seeded: FakeKube, kubeconfig: str) -> None:
    seeded.fail("services", "list", "forbidden")
    with running_enricher(kubeconfig) as e:
        wait_for(lambda: e.stats()["kinds"]["pods"]["synced"] and e.stats()["kinds"]["nodes"]["synced"]
                 and e.stats()["kinds"]["replicasets"]["synced"], what="three kinds synced")
        wait_for(lambda: e.stats()["kinds"]["services"]["errors"].get("forbidden", 0) >= 2, what="403 retried")
        assert e.ready is False
        assert e.wait_ready(0.05) is False
        # /readyz says which kind is missing and why (the verb the RBAC lacks)
        why = e.unsynced()
        assert len(why) == 1 and why[0].startswith("services not synced (forbidden") and "'list'" in why[0], why
        # Pods are served already; /readyz is what gates traffic.
        assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"
        seeded.clear("services", "list")
        assert e.wait_ready(10)
        assert e.unsynced() == []
        assert flow(e, "", "172.30.0.10")["DstK8S_Type"] == "Service"


def test_pod_added_updated_deleted(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    assert enricher.wait_ready(10)
    seeded.add("pods", pod("db-0", "shop", ips=["10.244.1.7"], node="node-b", host_ip="10.0.0.2",
                           owner=("StatefulSet", "db")))
    wait_for(lambda: flow(enricher, "10.244.1.7", "").get("SrcK8S_Name") == "db-0", what="pod added")
    got = flow(enricher, "10.244.1.7", "")
    assert (got["SrcK8S_OwnerName"], got["SrcK8S_OwnerType"], got["SrcK8S_Zone"]) == ("db", "StatefulSet", "zone-b")

    # MODIFIED: the IP changes (e.g. a pod sandbox recreated); the old IP stops resolving to it
    # for flows that start after the change, and stays its own for earlier ones (a tombstone).
    seeded.modify("pods", pod("db-0", "shop", ips=["10.244.1.8"], node="node-b", host_ip="10.0.0.2",
                              owner=("StatefulSet", "db")))
    wait_for(lambda: flow(enricher, "10.244.1.8", "").get("SrcK8S_Name") == "db-0", what="pod modified")
    assert flow(enricher, "10.244.1.7", "", t_ms=FUTURE) == NOBODY
    assert flow(enricher, "10.244.1.7", "", t_ms=1)["SrcK8S_Name"] == "db-0"

    seeded.delete("pods", "db-0", "shop")
    wait_for(lambda: enricher.stats()["kinds"]["pods"]["events"]["DELETED"] == 1, what="delete seen")
    # A deleted pod is a tombstone: flows that started before the deletion still resolve to it...
    assert flow(enricher, "10.244.1.8", "", t_ms=1)["SrcK8S_Name"] == "db-0"
    # ...flows that started after it do not.
    assert flow(enricher, "10.244.1.8", "", t_ms=FUTURE) == NOBODY
    assert enricher.stats()["index"]["tombstones"] == 2  # its two addresses, each until it let go


def test_bookmarks_advance_resource_version(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    assert enricher.wait_ready(10)
    wait_for(lambda: seeded.watchers["nodes"] >= 1, what="node watch open")
    seeded.bookmark("nodes")
    wait_for(lambda: enricher.stats()["kinds"]["nodes"]["events"]["BOOKMARK"] == 1, what="bookmark")
    assert enricher.stats()["kinds"]["nodes"]["resource_version"] == str(seeded.rv)
    # The next watch resumes from the bookmark's version, not the list's.
    seeded.drop_watches("nodes")
    wait_for(lambda: seeded.count(kind="nodes", verb="watch") >= 2, what="re-watch")
    last = [r for r in seeded.requests if r["kind"] == "nodes" and r["verb"] == "watch"][-1]
    assert last["query"]["resourceVersion"] == enricher.stats()["kinds"]["nodes"]["resource_version"]


def test_dropped_watch_resumes_without_relist(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    assert enricher.wait_ready(10)
    wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
    lists_before = seeded.count(kind="pods", verb="list")
    seeded.drop_watches("pods")
    wait_for(lambda: enricher.stats()["kinds"]["pods"]["errors"].get("connection", 0) == 1, what="drop counted")
    seeded.add("pods", pod("api-1", "shop", ips=["10.244.0.9"], owner=("DaemonSet", "agent")))
    wait_for(lambda: flow(enricher, "10.244.0.9", "").get("SrcK8S_OwnerType") == "DaemonSet", what="event after drop")
    assert seeded.count(kind="pods", verb="list") == lists_before
    assert enricher.stats()["kinds"]["pods"]["relists"] == 0


def test_watches_dropped_after_running_a_while_resume_without_relists(seeded: FakeKube,
                                                                      enricher: enrich.Enricher) -> None:
    """A load balancer's idle timeout or an API-server restart cuts watches that were working:
    each resumes from its resourceVersion, however many times it happens; none is a reason to
    list again (lists of every pod per collector pod would follow every cut)."""
    from enrich.informer import WATCH_FAILURES_BEFORE_RELIST

    assert enricher.wait_ready(10)
    lists_before = seeded.count(kind="pods", verb="list")
    for i in range(WATCH_FAILURES_BEFORE_RELIST + 1):
        wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
        time.sleep(1.1)                          # the watch works a while, then is cut
        seeded.drop_watches("pods")
        wait_for(lambda i=i: enricher.stats()["kinds"]["pods"]["errors"].get("connection", 0) == i + 1,
                 what=f"drop {i + 1} counted")
    seeded.add("pods", pod("api-2", "shop", ips=["10.244.0.19"]))
    wait_for(lambda: flow(enricher, "10.244.0.19", "").get("SrcK8S_Name") == "api-2", what="event after the drops")
    assert seeded.count(kind="pods", verb="list") == lists_before
    assert enricher.stats()["kinds"]["pods"]["relists"] == 0


def test_a_watch_cut_after_running_resumes_without_growing_waits(seeded: FakeKube, kubeconfig: str) -> None:
    """A quiet watch cut by a balancer's idle timeout, again and again: each had worked, so the
    backoff starts over and the watch resumes at once, instead of waiting longer after each cut
    (0.3 s doubling: the sixth cut would have waited about 10 s)."""
    with running_enricher(kubeconfig, backoff_initial_seconds=0.3, backoff_max_seconds=30.0) as e:
        assert e.wait_ready(10)
        for i in range(6):
            wait_for(lambda: seeded.watchers["pods"] >= 1, timeout=5, what=f"pod watch open ({i})")
            time.sleep(1.1)
            seeded.drop_watches("pods")
            wait_for(lambda i=i: e.stats()["kinds"]["pods"]["errors"].get("connection", 0) == i + 1,
                     what=f"drop {i + 1} counted")
        t0 = time.monotonic()
        seeded.add("pods", pod("api-3", "shop", ips=["10.244.0.29"]))
        wait_for(lambda: flow(e, "10.244.0.29", "").get("SrcK8S_Name") == "api-3", timeout=20, what="resumed")
        assert time.monotonic() - t0 < 3.0


def test_410_forces_relist_with_changes_in_between(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    assert enricher.wait_ready(10)
    wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
    seeded.hold("pods")  # the watch goes quiet: these changes are only visible to a relist
    seeded.delete("pods", "web-6d4cf56db6-x1", "shop")
    seeded.add("pods", pod("job-abc", "batch", ips=["10.244.0.20"], owner=("Job", "nightly")))
    assert flow(enricher, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"
    seeded.expire("pods")
    wait_for(lambda: enricher.stats()["kinds"]["pods"]["relists"] == 1, what="relist")
    assert flow(enricher, "10.244.0.20", "")["SrcK8S_OwnerName"] == "nightly"
    assert flow(enricher, "10.244.0.20", "")["SrcK8S_OwnerType"] == "Job"
    # Gone from the relist: a tombstone (late flows still resolve), not a live pod.
    st = enricher.stats()
    assert st["index"]["pods"] == 1 and st["index"]["tombstones"] == 1
    assert flow(enricher, "10.244.0.5", "", t_ms=FUTURE) == NOBODY
    assert st["kinds"]["pods"]["errors"] == {}
    # And the watch continues from the relist's version.
    seeded.add("pods", pod("late", "batch", ips=["10.244.0.21"]))
    wait_for(lambda: flow(enricher, "10.244.0.21", "").get("SrcK8S_OwnerType") == "Pod", what="post-relist event")
    # one relist: its watch, from the resourceVersion the list returned, was taken
    assert enricher.stats()["kinds"]["pods"]["relists"] == 1


def test_watch_from_compacted_version_relists(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    assert enricher.wait_ready(10)
    wait_for(lambda: seeded.watchers["services"] >= 1, what="svc watch open")
    # The connection dies, then history is compacted before the client reconnects.
    seeded.hold("services")
    seeded.add("services", service("db", "shop", ips=["172.30.0.11", "fd00:172:30::11"]))
    seeded.fail("services", "watch", "drop", times=1)
    with seeded.cond:
        seeded.compacted["services"] = seeded.rv   # (the client's resourceVersion is older: "db" held)
    seeded.drop_watches("services")
    wait_for(lambda: enricher.stats()["kinds"]["services"]["relists"] == 1, what="relist after 410 on reconnect")
    assert flow(enricher, "", "fd00:172:30::11")["DstK8S_Name"] == "db"
    assert flow(enricher, "", "172.30.0.11")["DstK8S_Name"] == "db"


def test_paged_list(fake_kube: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    for i in range(7):
        fake_kube.add("pods", pod(f"p{i}", "shop", ips=[f"10.244.0.{10 + i}"]))
    for k in ("nodes", "services", "replicasets"):
        fake_kube.bookmark(k)
    with running_enricher(kubeconfig, list_chunk_size=3) as e:
        assert e.wait_ready(10)
        lists = [r for r in fake_kube.requests if r["kind"] == "pods" and r["verb"] == "list"]
        assert [r["query"].get("limit") for r in lists] == ["3", "3", "3"]
        assert "continue" not in lists[0]["query"] and "continue" in lists[2]["query"]
        assert e.stats()["index"]["pods"] == 7
        assert [flow(e, f"10.244.0.{10 + i}", "")["SrcK8S_Name"] for i in range(7)] == [f"p{i}" for i in range(7)]


def test_expired_continue_token_restarts_the_paged_list_in_larger_pages(fake_kube: FakeKube,  # noqa: F811
                                                                        kubeconfig: str) -> None:
    """The API server answers 410 Expired to a continue token etcd compacted away (a long paged
    list): the informer lists again from the first page, paged, in pages twice as large each
    time, never in one unpaged page as client-go's pager does (GiBs for 100k pods);
    tests/test_enrich_listexpiry_review.py has the rest."""
    for i in range(7):
        fake_kube.add("pods", pod(f"p{i}", "shop", ips=[f"10.244.0.{10 + i}"]))
    for k in ("nodes", "services", "replicasets"):
        fake_kube.bookmark(k)
    fake_kube.fail("pods", "list", "expired_continue")   # every page's token is already gone
    with running_enricher(kubeconfig, list_chunk_size=3) as e:
        assert e.wait_ready(10)
        lists = [r["query"] for r in fake_kube.requests if r["kind"] == "pods" and r["verb"] == "list"]
        # 3, then 410; 6, then 410; 12: all seven on the first page
        assert [(q.get("limit"), "continue" in q) for q in lists] == [("3", False), ("3", True), ("6", False),
                                                                     ("6", True), ("12", False)]
        assert e.stats()["index"]["pods"] == 7
        assert e.stats()["kinds"]["pods"]["errors"] == {"continue_expired": 2}


def _record_sleeps(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[float]:
    """The pauses the `kind` informer asks for, in order (its own waits, interruptible by stop())."""
    from enrich.informer import Informer

    asked: list[float] = []
    real = Informer._sleep

    def sleep(self: Informer, seconds: float) -> None:
        if self.kind == kind:
            asked.append(seconds)
        real(self, seconds)

    monkeypatch.setattr(Informer, "_sleep", sleep)
    return asked


def test_watch_expiring_after_every_list_backs_off(seeded: FakeKube, kubeconfig: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch that answers 410 right after each list (a lagging API server behind a balancer)
    is relisted at once the first time, then with growing pauses: not a loop of full lists."""
    asked = _record_sleeps(monkeypatch, "pods")
    with running_enricher(kubeconfig, backoff_initial_seconds=0.2, backoff_max_seconds=1.0) as e:
        assert e.wait_ready(10)
        seeded.fail("pods", "watch", "gone")
        seeded.expire("pods")   # the open watch ends with 410 too
        wait_for(lambda: len(asked) >= 5, what="five pauses between relists")
        assert asked[:5] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])   # no jitter in fast_config
        assert e.stats()["kinds"]["pods"]["relists"] >= 5               # the first at once, then one per pause
        assert e.stats()["kinds"]["pods"]["errors"] == {}


def test_throttled_list_honours_retry_after_and_stops_at_once(seeded: FakeKube, kubeconfig: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """429 with Retry-After: counted, shown in readiness, waited out by the informer (not
    inside urllib3, where it was invisible and stop() could not interrupt it)."""
    asked = _record_sleeps(monkeypatch, "pods")
    seeded.fail("pods", "list", "throttle")
    with running_enricher(kubeconfig) as e:
        wait_for(lambda: asked, what="the pause after the 429")
        assert asked[0] == 2.0           # Retry-After: 2 s, not the 0.02 s backoff
        assert e.stats()["kinds"]["pods"]["errors"]["http_429"] == 1
        assert any("HTTP 429" in why and "Retry-After 2" in why for why in e.unsynced())
    # stop() interrupted the 2 s wait: the pods informer asked for nothing more and made no request
    assert len(asked) == 1 and e.stats()["kinds"]["pods"]["errors"]["http_429"] == 1


def test_watch_error_event_retry_after_is_waited_out(seeded: FakeKube, kubeconfig: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch ERROR event whose Status carries details.retryAfterSeconds (a 429 or 5xx sent
    inside the stream) is waited out like a Retry-After header, without a relist."""
    asked = _record_sleeps(monkeypatch, "pods")
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        seeded.fail("pods", "watch", "throttle_event", times=1)
        seeded.expire("pods")   # the open watch ends; the next one gets the ERROR event
        wait_for(lambda: asked, what="the pause after the ERROR event")
        assert asked[0] == 3.0
        assert e.stats()["kinds"]["pods"]["errors"]["http_429"] == 1


@pytest.mark.parametrize("obj,cause", [
    # a Status without its code (an aggregated API server's, a proxy's) counts as its reason's code
    ({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable",
      "message": "the server is currently unable to handle the request"}, "server_error"),
    ({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest",
      "message": "bad resourceVersion"}, "http_400"),
    # neither a code nor a reason it stands for, or no Status at all: named so, not "http_None"
    ({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "upstream connect error"},
     "error_no_code"),
    ({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Teapot"}, "error_no_code"),
    ("stream reset by the proxy", "error_no_code"),
])
def test_watch_error_event_without_a_code_is_counted_by_its_reason(seeded: FakeKube, kubeconfig: str, obj: Any,
                                                                   cause: str) -> None:
    """An ERROR event whose object has no `code` was counted under the label "http_None"."""
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        seeded.event_status = obj
        seeded.fail("pods", "watch", "status_event", times=1)
        seeded.expire("pods")   # the open watch ends; the next one gets the ERROR event
        wait_for(lambda: e.stats()["kinds"]["pods"]["errors"], what="the ERROR event counted")
        assert e.stats()["kinds"]["pods"]["errors"] == {cause: 1}


def test_forbidden_names_verb_and_resource(seeded: FakeKube, kubeconfig: str, caplog: pytest.LogCaptureFixture) -> None:
    seeded.fail("pods", "watch", "forbidden")
    with caplog.at_level(logging.INFO, logger="flowscope.enrich"):
        with running_enricher(kubeconfig) as e:
            assert e.wait_ready(10)  # list was allowed
            wait_for(lambda: e.stats()["kinds"]["pods"]["errors"].get("forbidden", 0) >= 3, what="403s")
            errs = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errs) == 1, [r.getMessage() for r in errs]
            assert "forbidden: needs 'watch' on 'pods'" in errs[0].getMessage()
            # The cache from the list keeps serving.
            assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"
            seeded.clear("pods", "watch")
            seeded.add("pods", pod("after", "shop", ips=["10.244.0.30"]))
            wait_for(lambda: flow(e, "10.244.0.30", "").get("SrcK8S_Name") == "after", what="recovered watch")


@pytest.mark.parametrize("fault,cause,logged", [
    ("forbidden", "forbidden", "forbidden: needs 'watch' on 'pods'"),
    ("slow_forbidden", "forbidden", "forbidden: needs 'watch' on 'pods'"),   # a slow authorizer
    ("empty", "empty_watch", "the stream ended at once without an event"),   # a proxy
    ("bad_request", "http_400", "HTTP 400: resourceVersion: Invalid value"),  # any other 4xx: retried for ever
])
def test_a_watch_that_keeps_failing_falls_back_to_lists(seeded: FakeKube, kubeconfig: str, fault: str, cause: str,
                                                       logged: str, caplog: pytest.LogCaptureFixture) -> None:
    """RBAC granting list but not watch (however slowly the 403 comes), or a proxy that ends
    every stream at once without an event: after WATCH_FAILURES_BEFORE_RELIST such watches in a
    row the informer lists again, as client-go's reflector does, so pods created meanwhile are
    enriched instead of the cache freezing at the first list; the failure is logged once, the
    fallback once, and no recovery is announced while watches fail."""
    from enrich.informer import WATCH_FAILURES_BEFORE_RELIST

    seeded.fail("pods", "watch", fault)   # until cleared
    with caplog.at_level(logging.INFO, logger="flowscope.enrich"):
        with running_enricher(kubeconfig) as e:
            assert e.wait_ready(10)
            seeded.add("pods", pod("new", "shop", ips=["10.244.0.31"]))
            wait_for(lambda: flow(e, "10.244.0.31", "").get("SrcK8S_Name") == "new", timeout=25,
                     what="the new pod, from a list")
            st = e.stats()["kinds"]["pods"]
            assert st["relists"] >= 1 and st["errors"][cause] >= WATCH_FAILURES_BEFORE_RELIST, st
            assert e.ready
            wait_for(lambda: e.stats()["kinds"]["pods"]["relists"] >= 2, timeout=30, what="lists go on")
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(logged in m for m in msgs) == 1, msgs
    assert sum("watches in a row failed" in m for m in msgs) == 1, msgs
    assert not any("pods informer recovered" in m for m in msgs), msgs


def test_forbidden_list_of_replicasets_names_api_group(seeded: FakeKube, kubeconfig: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    seeded.fail("replicasets", "list", "forbidden", times=2)
    with caplog.at_level(logging.ERROR, logger="flowscope.enrich"):
        with running_enricher(kubeconfig) as e:
            assert e.wait_ready(10)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(msgs) == 1 and "forbidden: needs 'list' on 'replicasets.apps'" in msgs[0]
    assert e.stats()["kinds"]["replicasets"]["errors"] == {"forbidden": 2}


def test_wrong_token_is_unauthorized(seeded: FakeKube, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    kc = seeded.write_kubeconfig(tmp_path / "bad", token="expired")
    with caplog.at_level(logging.ERROR, logger="flowscope.enrich"):
        with running_enricher(str(kc)) as e:
            wait_for(lambda: e.stats()["kinds"]["nodes"]["errors"].get("unauthorized", 0) >= 2, what="401s")
            assert not e.ready
    assert any("unauthorized" in r.getMessage() for r in caplog.records)


def test_garbage_and_server_errors_keep_last_good_cache(seeded: FakeKube, enricher: enrich.Enricher,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    assert enricher.wait_ready(10)
    wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
    with caplog.at_level(logging.WARNING, logger="flowscope.enrich"):
        seeded.fail("pods", "watch", "garbage", times=3)
        seeded.fail("pods", "list", "garbage", times=2)
        seeded.expire("pods")  # force the relist path too: it gets garbage twice, then works
        wait_for(lambda: enricher.stats()["kinds"]["pods"]["relists"] == 1, timeout=15, what="relist after garbage")
        st = enricher.stats()["kinds"]["pods"]
        assert st["errors"]["bad_response"] >= 2
        # Once per cause and outage: the list outage (2 garbage bodies) logs once, and after the
        # relist recovered, the watch outage (3 garbage streams) logs once more.
        wait_for(lambda: enricher.stats()["kinds"]["pods"]["errors"]["bad_response"] == 5, what="watch garbage")
        msgs = [r.getMessage() for r in caplog.records]
        assert sum("non-JSON" in m for m in msgs) == 1
        assert sum("malformed event" in m for m in msgs) == 1
        assert flow(enricher, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"


@pytest.mark.parametrize("chunk_bytes", [1, 7, 1 << 20])
def test_watch_events_cut_anywhere_into_chunks(seeded: FakeKube, enricher: enrich.Enricher,
                                               chunk_bytes: int) -> None:
    """Events are lines of JSON however the stream is cut into HTTP chunks: each event over
    hundreds of one-byte chunks, 7-byte chunks with events ending and starting inside one, or
    several events (and a bookmark) in one chunk."""
    assert enricher.wait_ready(10)
    wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
    seeded.watch_chunk_bytes = chunk_bytes
    seeded.hold("pods")   # what follows is sent at once, cut into chunk_bytes
    for i in range(3):
        seeded.add("pods", pod(f"cut-{i}", "shop", ips=[f"10.244.0.{60 + i}"], owner=("DaemonSet", "agent")))
    seeded.delete("pods", "web-6d4cf56db6-x1", "shop")
    seeded.bookmark("pods")
    seeded.release("pods")
    wait_for(lambda: enricher.stats()["kinds"]["pods"]["events"]["BOOKMARK"] == 1, what="the events")
    st = enricher.stats()["kinds"]["pods"]
    assert (st["events"], st["errors"], st["resource_version"]) == (
        {"ADDED": 3, "MODIFIED": 0, "DELETED": 1, "BOOKMARK": 1}, {}, str(seeded.rv))
    assert [flow(enricher, f"10.244.0.{60 + i}", "").get("SrcK8S_Name") for i in range(3)] == [
        "cut-0", "cut-1", "cut-2"]
    assert flow(enricher, "10.244.0.5", "", t_ms=FUTURE) == NOBODY


def test_an_oversize_watch_event_is_counted_and_the_watch_resumes(seeded: FakeKube, kubeconfig: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """An event line longer than WATCH_EVENT_MAX_BYTES (16 MiB; etcd stores objects up to
    1.5 MiB) is neither buffered to its end nor applied: it is counted (oversize_event, in
    flowscope_enrich_stat), logged once, the connection is dropped, and the watch resumes from
    the last event applied; the cache keeps serving meanwhile and later events apply."""
    from collector.server import enrich_series
    from enrich.informer import WATCH_EVENT_MAX_BYTES

    assert seeded.oversize_bytes > WATCH_EVENT_MAX_BYTES
    seeded.fail("pods", "watch", "oversize", times=1)   # the first pods watch: the web pod, 17 MiB
    with caplog.at_level(logging.WARNING, logger="flowscope.enrich"):
        with running_enricher(kubeconfig, watch_timeout_seconds=120) as e:   # no re-watch but the one
            assert e.wait_ready(10)
            wait_for(lambda: e.stats()["kinds"]["pods"]["errors"].get("oversize_event", 0) == 1,
                     what="the oversize event counted")
            assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"   # not applied
            assert flow(e, "10.244.0.99", "", t_ms=FUTURE) == NOBODY
            seeded.add("pods", pod("after-big", "shop", ips=["10.244.0.70"]))
            wait_for(lambda: flow(e, "10.244.0.70", "").get("SrcK8S_Name") == "after-big", what="a later event")
            st = e.stats()["kinds"]["pods"]
            assert (st["errors"], st["relists"], st["events"]["MODIFIED"]) == ({"oversize_event": 1}, 0, 0)
            assert seeded.count(kind="pods", verb="watch") == 2
            stat = enrich_series(e)["flowscope_enrich_stat"]
            assert stat[("kinds_pods_errors_oversize_event",)] == 1
    msgs = [r.getMessage() for r in caplog.records if "over 16777216 bytes" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith("enrich: pods informer: watch pods sent an event line"), msgs


def _failing(e: enrich.Enricher, kind: str) -> float:
    """flowscope_enrich_stat{stat="kinds_<kind>_failing"}, as /metrics shows it."""
    from collector.server import enrich_series

    return enrich_series(e)["flowscope_enrich_stat"][(f"kinds_{kind}_failing",)]


def test_an_informer_failing_to_reach_the_api_server_shows_in_a_gauge(seeded: FakeKube, kubeconfig: str) -> None:
    """While an informer's lists and watches fail it serves its last cache and stays synced (and
    /readyz ready): flowscope_enrich_stat{stat="kinds_<kind>_failing"} is 1 then, and 0 again once
    a watch works; before, only a rising errors count told the API server was gone."""
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)

        wait_for(lambda: _failing(e, "pods") == 0, what="pods watching, not failing")
        seeded.fail("pods", "watch", "error500")
        seeded.fail("pods", "list", "error500")
        seeded.drop_watches("pods")
        wait_for(lambda: _failing(e, "pods") == 1, what="the pods informer failing")
        assert e.stats()["kinds"]["pods"]["synced"] and _failing(e, "pods") == 1
        assert _failing(e, "nodes") == 0
        seeded.clear("pods", "watch")
        seeded.clear("pods", "list")
        wait_for(lambda: _failing(e, "pods") == 0, what="the pods informer recovered")


def test_a_reconnected_watch_is_not_failing_before_its_first_event(seeded: FakeKube, kubeconfig: str) -> None:
    """A quiet kind's watch (Nodes: on a real API server maybe nothing but a BOOKMARK a minute)
    is cut after working a while, and the reconnect's stream opens and stays quiet: the API
    server answered it (200, the stream open), so kinds_nodes_failing is 0 again at once, not
    after the stream's first event, a minute later (an alert on it kept firing that long)."""
    # a watch that neither times out nor sends a bookmark while the test runs; a backoff long
    # enough for the failing state to be seen before the reconnect
    with running_enricher(kubeconfig, watch_timeout_seconds=600, backoff_initial_seconds=2.0,
                          backoff_max_seconds=2.0) as e:
        assert e.wait_ready(10)

        wait_for(lambda: seeded.watchers["nodes"] >= 1, what="nodes watch open")
        assert _failing(e, "nodes") == 0
        time.sleep(1.5)   # the watch works a while (over 1 s from when the informer saw it open), then is cut
        watches = seeded.count(kind="nodes", verb="watch")
        events = dict(e.stats()["kinds"]["nodes"]["events"])
        seeded.drop_watches("nodes")
        wait_for(lambda: _failing(e, "nodes") == 1, what="the cut nodes watch failing")
        wait_for(lambda: seeded.count(kind="nodes", verb="watch") > watches and seeded.watchers["nodes"] >= 1,
                 timeout=15, what="the nodes watch reconnected")
        wait_for(lambda: _failing(e, "nodes") == 0, timeout=15, what="the reconnected (quiet) watch not failing")
        st = e.stats()["kinds"]["nodes"]
        # nothing came on the new stream: its opening alone cleared the failing state
        assert st["events"] == events and seeded.watchers["nodes"] >= 1, st
        assert st["errors"] == {"connection": 1} and st["last_error"] == "" and st["relists"] == 0, st


def test_a_relist_that_works_after_failures_is_not_failing(seeded: FakeKube, kubeconfig: str) -> None:
    """The other way back: a relist refused (500) then answered clears the failing state by
    itself, before the watch after it is even answered (held here in the server)."""
    import threading

    e = enrich.Enricher(fast_config(kubeconfig))
    gate = threading.Event()
    held = []

    def on_request(r: dict[str, Any]) -> None:
        if r["kind"] == "nodes" and r["verb"] == "watch":
            held.append(r)
            gate.wait(30)

    e.start()
    try:
        assert e.wait_ready(10)
        wait_for(lambda: seeded.watchers["nodes"] >= 1, what="nodes watch open")
        seeded.fail("nodes", "list", "error500", times=2)
        seeded.on_request = on_request
        seeded.expire("nodes")       # the watch ends with 410 Gone: relist
        wait_for(lambda: e.stats()["kinds"]["nodes"]["relists"] == 1, timeout=15, what="the relist, after two 500s")
        st = e.stats()["kinds"]["nodes"]
        assert st["errors"] == {"server_error": 2}, st
        wait_for(lambda: len(held) == 1, what="the watch after the relist, held unanswered")
        assert _failing(e, "nodes") == 0
        assert e.stats()["kinds"]["nodes"]["last_error"] == "" and len(held) == 1
    finally:
        gate.set()
        seeded.on_request = None
        e.stop()


def test_a_watch_whose_events_fail_stays_failing_while_the_next_one_opens(seeded: FakeKube, kubeconfig: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch that opens and then sends what cannot be taken (here an event over the cap, after
    1.2 s) fails again on the next stream: that stream's opening is no recovery, so the kind
    stays failing while it is open (no 0 between two failures for an alert to reset on)."""
    import enrich.informer as informer

    monkeypatch.setattr(informer, "WATCH_EVENT_MAX_BYTES", 64 << 10)
    seeded.oversize_bytes = 100 << 10
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)

        def oversize() -> int:
            return e.stats()["kinds"]["pods"]["errors"].get("oversize_event", 0)

        wait_for(lambda: seeded.watchers["pods"] >= 1, what="pods watch open")
        seeded.fail("pods", "watch", "slow_oversize", times=2)
        seeded.drop_watches("pods")
        wait_for(lambda: oversize() == 1, timeout=15, what="the first oversize event")
        seen = set()
        deadline = time.monotonic() + 15
        while oversize() < 2:             # the next stream: open 1.2 s, then the same event
            assert time.monotonic() < deadline, "timed out waiting for the second oversize event"
            seen.add(_failing(e, "pods"))
            time.sleep(0.005)
        assert seen == {1}, seen


def test_an_oversize_event_on_every_watch_falls_back_to_lists(seeded: FakeKube, kubeconfig: str,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The same too-large event comes again on each watch resumed before it, and may take a while
    to arrive (here 1.2 s: a slow link): each such watch counts towards a relist, as a refused
    watch does, so the cache does not freeze behind it; once watches work, events apply."""
    import enrich.informer as informer
    from enrich.informer import WATCH_FAILURES_BEFORE_RELIST

    monkeypatch.setattr(informer, "WATCH_EVENT_MAX_BYTES", 64 << 10)   # a small cap: a cheap test
    seeded.oversize_bytes = 100 << 10
    seeded.fail("pods", "watch", "slow_oversize")   # until cleared
    with caplog.at_level(logging.INFO, logger="flowscope.enrich"):
        with running_enricher(kubeconfig) as e:
            assert e.wait_ready(10)
            wait_for(lambda: e.stats()["kinds"]["pods"]["relists"] >= 1, timeout=30, what="a relist")
            st = e.stats()["kinds"]["pods"]
            assert st["errors"] == {"oversize_event": WATCH_FAILURES_BEFORE_RELIST}, st
            assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"
            seeded.clear("pods", "watch")
            seeded.add("pods", pod("after-big", "shop", ips=["10.244.0.71"]))
            wait_for(lambda: flow(e, "10.244.0.71", "").get("SrcK8S_Name") == "after-big", timeout=15,
                     what="a later event")
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("sent an event line over 65536 bytes" in m for m in msgs) == 1, msgs
    assert sum("watches in a row failed (oversize_event)" in m for m in msgs) == 1, msgs


def test_a_list_without_items_is_refused_not_taken_for_empty(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    """A list reply with a resourceVersion but no "items" is not an empty list: it is counted
    as bad_response and retried, and the cache keeps its pods meanwhile."""
    assert enricher.wait_ready(10)
    wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
    seeded.fail("pods", "list", "noitems", times=2)
    seeded.expire("pods")
    wait_for(lambda: enricher.stats()["kinds"]["pods"]["relists"] == 1, timeout=15, what="relist after noitems")
    assert enricher.stats()["kinds"]["pods"]["errors"]["bad_response"] >= 2
    assert flow(enricher, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"


def test_each_watch_outage_after_a_recovery_is_logged_again(seeded: FakeKube, enricher: enrich.Enricher,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Logged once per cause and outage: a watch that resumes (no relist) after an outage is a
    recovery, so the next outage of the same cause is logged again, not only counted."""
    assert enricher.wait_ready(10)
    with caplog.at_level(logging.INFO, logger="flowscope.enrich"):
        for i in range(2):
            wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
            seeded.fail("pods", "watch", "error500", times=2)
            seeded.drop_watches("pods")
            ip, name = f"10.244.0.{90 + i}", f"again-{i}"
            seeded.add("pods", pod(name, "shop", ips=[ip]))
            wait_for(lambda ip=ip, name=name: flow(enricher, ip, "").get("SrcK8S_Name") == name,
                     timeout=15, what=f"recovery {i}")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("HTTP 500" in m for m in warned) == 2
    assert sum("pods informer recovered" in r.getMessage() for r in caplog.records) == 2
    assert enricher.stats()["kinds"]["pods"]["relists"] == 0


def test_server_goes_away_and_comes_back(seeded: FakeKube, kubeconfig: str) -> None:
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        seeded.fail("pods", "watch", "error500", times=2)
        seeded.fail("pods", "list", "drop", times=1)
        seeded.drop_watches("pods")
        wait_for(lambda: e.stats()["kinds"]["pods"]["errors"].get("server_error", 0) == 2, what="500s counted")
        assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"
        seeded.add("pods", pod("back", "shop", ips=["10.244.0.40"]))
        wait_for(lambda: flow(e, "10.244.0.40", "").get("SrcK8S_Name") == "back", what="resumed")
    assert all(s["state"] == "stopped" for s in e.stats()["kinds"].values())


def test_node_and_replicaset_events_rerender_pods(seeded: FakeKube, enricher: enrich.Enricher) -> None:
    assert enricher.wait_ready(10)
    # Zone relabel on the node shows on its pods.
    seeded.modify("nodes", node("node-a", internal=["10.0.0.1"], zone="zone-c",
                                subnets={"default": ["10.244.0.0/24", "fd00:10:244:1::/64"]}))
    wait_for(lambda: flow(enricher, "10.244.0.5", "").get("SrcK8S_Zone") == "zone-c", what="zone change")
    # A pod whose ReplicaSet arrives later: first ReplicaSet, then the Deployment.
    seeded.add("pods", pod("api-7f-a", "shop", ips=["10.244.0.50"], owner=("ReplicaSet", "api-7f")))
    wait_for(lambda: flow(enricher, "10.244.0.50", "").get("SrcK8S_OwnerType") == "ReplicaSet", what="rs owner")
    seeded.add("replicasets", replicaset("api-7f", "shop", owner=("Deployment", "api")))
    wait_for(lambda: flow(enricher, "10.244.0.50", "").get("SrcK8S_OwnerType") == "Deployment", what="deployment")
    assert flow(enricher, "10.244.0.50", "")["SrcK8S_OwnerName"] == "api"
    # The management port IP of node-b (10.244.1.2) and the node's own address are the node.
    assert flow(enricher, "10.244.1.2", "10.0.0.2", agent="10.0.0.2") == {
        "SrcK8S_Name": "node-b", "SrcK8S_Type": "Node", "SrcK8S_OwnerName": "node-b", "SrcK8S_OwnerType": "Node",
        "SrcK8S_HostIP": "10.0.0.2", "SrcK8S_HostName": "node-b", "SrcK8S_Zone": "zone-b",
        "DstK8S_Name": "node-b", "DstK8S_Type": "Node", "DstK8S_OwnerName": "node-b", "DstK8S_OwnerType": "Node",
        "DstK8S_HostIP": "10.0.0.2", "DstK8S_HostName": "node-b", "DstK8S_Zone": "zone-b",
        "K8S_FlowLayer": "app", "FlowDirection": 2,
    }
    held = int(time.time() * 1000) - 1
    seeded.delete("nodes", "node-b")
    wait_for(lambda: flow(enricher, "10.244.1.2", "", t_ms=FUTURE) == NOBODY, what="node deleted")
    # nobody's for the flows since the delete; node-b's for those of before (its tombstone)
    assert flow(enricher, "10.244.1.2", "", t_ms=int(time.time() * 1000) + 1) == NOBODY
    assert flow(enricher, "10.244.1.2", "", t_ms=held)["SrcK8S_Name"] == "node-b"


def test_every_host_ip_of_a_dual_stack_pod_names_its_node_as_exporter(seeded: FakeKube,
                                                                     enricher: enrich.Enricher) -> None:
    """A pod on a dual-stack node whose Node object the cache does not have (yet): its
    status.hostIPs (both families) each name the exporter's node for FlowDirection, not only
    status.hostIP (the first)."""
    assert enricher.wait_ready(10)
    seeded.add("pods", pod("dual", "shop", ips=["10.244.2.5", "fd00:10:244:3::5"], node="node-c",
                           host_ip="10.0.0.3", host_ips=["10.0.0.3", "fd00::3"]))
    wait_for(lambda: flow(enricher, "10.244.2.5", "").get("SrcK8S_Name") == "dual", what="dual-stack pod")
    for agent in ("10.0.0.3", "fd00::3"):
        assert flow(enricher, "fd00:10:244:3::5", "2001:db8::1", agent=agent).get("FlowDirection") == 1, agent
        assert flow(enricher, "10.244.0.5", "10.244.2.5", agent=agent).get("FlowDirection") == 0, agent


def test_stop_is_prompt(seeded: FakeKube, kubeconfig: str) -> None:
    import time

    e = enrich.Enricher(fast_config(kubeconfig, watch_timeout_seconds=300))
    e.start()
    assert e.wait_ready(10)
    wait_for(lambda: all(seeded.watchers[k] >= 1 for k in seeded.watchers), what="all watches open")
    t0 = time.monotonic()
    e.stop()
    assert time.monotonic() - t0 < 3


def test_disabled_enricher_does_nothing(fake_kube: FakeKube) -> None:  # noqa: F811
    e = enrich.Enricher(enrich.EnrichConfig(enabled=False, kubeconfig="/nonexistent"))
    e.start()
    assert e.ready
    assert fake_kube.requests == []
    assert e.enrich(raw("10.0.0.1"), raw("10.0.0.2"), b"", 0, 1) == b',"FlowDirection":1'
    e.stop()


def test_api_server_gone_keeps_last_good_cache(seeded: FakeKube, kubeconfig: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        with caplog.at_level(logging.WARNING, logger="flowscope.enrich"):
            seeded.stop()  # streams end, then every reconnect is refused
            wait_for(lambda: e.stats()["kinds"]["pods"]["errors"].get("connection", 0) >= 3, what="refusals")
        pod_logs = [r for r in caplog.records if r.getMessage().startswith("enrich: pods informer")]
        assert len(pod_logs) == 1
        assert flow(e, "10.244.0.5", "172.30.0.10")["SrcK8S_Name"] == "web-6d4cf56db6-x1"
        assert e.ready  # readiness is about the first sync; staleness shows in the counters


# The in-cluster ServiceAccount path: what the collector runs on in a pod (no --kubeconfig).

def in_cluster(monkeypatch: pytest.MonkeyPatch, sa_dir: Path, *, port: int, ca_cert: Path, token: str,
               namespace: str) -> Path:
    """Make this process look like a pod: the ServiceAccount files the kubelet mounts (token,
    ca.crt, namespace), here in `sa_dir`, and the KUBERNETES_SERVICE_* variables pointing at
    127.0.0.1:`port`; nothing else (no $KUBECONFIG, no POD_NAMESPACE). Returns the token file."""
    from kubernetes.config import incluster_config

    sa_dir.mkdir()
    (sa_dir / "token").write_text(token)   # no newline: the kubelet writes the bare JWT
    (sa_dir / "ca.crt").write_bytes(ca_cert.read_bytes())
    (sa_dir / "namespace").write_text(namespace)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa_dir / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa_dir / "ca.crt"))
    # detect_own_namespace took SERVICEACCOUNT_NAMESPACE_FILE as its default when defined.
    kwdefaults = enrich.config.detect_own_namespace.__kwdefaults__
    assert kwdefaults is not None
    monkeypatch.setitem(kwdefaults, "namespace_file", str(sa_dir / "namespace"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
    for var in ("KUBECONFIG", "POD_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)
    return sa_dir / "token"


def test_in_cluster_service_account_over_tls_with_token_rotation(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod the client talks HTTPS to $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT,
    verifies the server against ca.crt, sends the ServiceAccount token, and re-reads the token
    file (bound tokens rotate: the kubelet rewrites it well before the old one expires); the
    collector's own namespace comes from the namespace file."""
    from kubernetes.config import incluster_config

    class EagerLoader(incluster_config.InClusterConfigLoader):  # type: ignore[misc]
        # The loader re-reads the token file when a request is made a minute after the last
        # read (Configuration.refresh_api_key_hook): here before every request, not after a minute.
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._token_refresh_period = datetime.timedelta(0)

    monkeypatch.setattr(incluster_config, "InClusterConfigLoader", EagerLoader)
    with running_fake_kube(tls_dir=tmp_path / "apiserver") as kube:
        seed(kube)
        kube.add("pods", pod("flowscope-7x", "flows", ips=["10.244.1.9"], node="node-b", host_ip="10.0.0.2"))
        assert kube.ca_cert is not None and kube.url.startswith("https://")
        kube.token = "sa-token-1"
        token_file = in_cluster(monkeypatch, tmp_path / "serviceaccount", port=kube.port, ca_cert=kube.ca_cert,
                                token="sa-token-1", namespace="flows")
        with running_enricher(None, own_namespace=None) as e:   # as the collector builds it
            assert e.wait_ready(10), e.unsynced()
            got = flow(e, "10.244.0.5", "172.30.0.10", agent="10.0.0.1")
            assert (got["SrcK8S_Name"], got["SrcK8S_OwnerName"], got["DstK8S_Type"]) == (
                "web-6d4cf56db6-x1", "web", "Service")
            assert got["K8S_FlowLayer"] == "app"
            # "flows" is no infra prefix: infra only as the namespace the ServiceAccount file names
            assert flow(e, "10.244.1.9", "")["K8S_FlowLayer"] == "infra"
            assert kube.tls_rejected == 0
            assert {r["token"] for r in kube.requests} == {"sa-token-1"}
            assert {k for k, v in e.stats()["kinds"].items() if v["errors"]} == set()

            # Rotation: the kubelet writes a new token and (here) the old one stops working at
            # once. Open watches were authenticated when they started; cut the pods watch so the
            # next event needs a new request, which only the new token gets through.
            wait_for(lambda: kube.watchers["pods"] >= 1, what="pod watch open")
            token_file.write_text("sa-token-2")
            kube.token = "sa-token-2"
            before = len(kube.requests)
            kube.drop_watches("pods")
            kube.add("pods", pod("after-rotation", "shop", ips=["10.244.0.77"]))
            wait_for(lambda: flow(e, "10.244.0.77", "").get("SrcK8S_Name") == "after-rotation",
                     what="a pod event through a watch opened with the rotated token")
            assert any(r["kind"] == "pods" and r["verb"] == "watch" and r["token"] == "sa-token-2"
                       for r in kube.requests[before:])


def test_in_cluster_token_refused_before_the_minute_re_read_is_read_again_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's in-cluster loader reads the ServiceAccount token again only once its copy is
    a minute old; a token refused before that (revoked, or a rotated one whose old copy the API
    server no longer takes) answers 401, and the token file must be read again then (the next
    request presents the file's token), not a minute of 401s later."""
    with running_fake_kube(tls_dir=tmp_path / "apiserver") as kube:
        seed(kube)
        assert kube.ca_cert is not None
        kube.token = "sa-token-1"
        token_file = in_cluster(monkeypatch, tmp_path / "serviceaccount", port=kube.port, ca_cert=kube.ca_cert,
                                token="sa-token-1", namespace="flows")
        with running_enricher(None, own_namespace=None) as e:
            assert e.wait_ready(10), e.unsynced()
            wait_for(lambda: kube.watchers["pods"] >= 1, what="pod watch open")
            token_file.write_text("sa-token-2")
            kube.token = "sa-token-2"          # the old one refused at once
            kube.drop_watches("pods")
            kube.add("pods", pod("after-401", "shop", ips=["10.244.0.78"]))
            wait_for(lambda: flow(e, "10.244.0.78", "").get("SrcK8S_Name") == "after-401", timeout=15,
                     what="a pod event through a watch opened with the token read again after the 401")
            assert e.stats()["kinds"]["pods"]["errors"].get("unauthorized", 0) >= 1


def test_in_cluster_refuses_a_server_its_ca_did_not_sign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ca.crt is checked, not just present: a server whose certificate the cluster CA did not
    sign (same 127.0.0.1 SAN, other key) never syncs, /readyz says why, and it never sees the token."""
    cluster_ca = make_pki(tmp_path / "cluster-ca", "cluster CA").ca
    with running_fake_kube(tls_dir=tmp_path / "impostor") as impostor:
        seed(impostor)
        in_cluster(monkeypatch, tmp_path / "serviceaccount", port=impostor.port, ca_cert=cluster_ca,
                   token=impostor.token, namespace="flows")
        with running_enricher(None, own_namespace=None) as e:
            wait_for(lambda: all(v["errors"].get("tls", 0) >= 2 for v in e.stats()["kinds"].values()),
                     what="every informer refused the certificate twice (counted as tls)")
            assert not e.ready
            why = e.unsynced()
            assert len(why) == 4 and all("CERTIFICATE_VERIFY_FAILED" in w and "\n" not in w for w in why), why
        # The client hung up in the handshake (the server counts that in its own thread, maybe
        # after the client counted its error), so no request, and no token, ever reached it.
        wait_for(lambda: impostor.tls_rejected >= 8, what="the server saw the handshakes refused")
        assert impostor.requests == []


def test_informer_bench_runs_every_phase_and_the_watch_keeps_up() -> None:
    """benchmarks.informer_bench at a tiny scale (its numbers are for RESULTS.md, not checked
    here): every phase runs, and the pods informer took every update the churn sent."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "benchmarks.informer_bench", "--pods", "300", "--nodes", "10",
                          "--services", "10", "--replicasets", "30", "--churn", "100", "--churn-seconds", "1"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for phase in ("| sync: first list of 300 pods", "| idle, watches open", "| relist: pods watch 410 Gone",
                  "| churn: 100 pod updates/s for 1 s"):
        assert phase in out.stdout, out.stdout
    m = re.search(r"churn: .* \((\d+) events\)", out.stdout)
    assert m and int(m.group(1)) == 100, out.stdout


@pytest.mark.parametrize("gzip", [True, False])
def test_lists_ask_for_gzip_and_decode_the_compressed_pages(seeded: FakeKube, kubeconfig: str, gzip: bool) -> None:
    """Lists ask for gzip (Accept-Encoding, as client-go does; --enrich-list-gzip false does
    not): the API server compresses pages of 128 KiB or more, and the informer decodes them
    (all pods listed); watches never ask (their streams are not compressed)."""
    for i in range(600):
        seeded.add("pods", pod(f"many-{i}", "shop", ips=[f"10.245.{i // 200}.{i % 200 + 1}"]))
    with running_enricher(kubeconfig, list_gzip=gzip) as e:
        assert e.wait_ready(10)
        assert e.stats()["kinds"]["pods"]["objects"] == 601
        assert flow(e, "10.245.2.200", "")["SrcK8S_Name"] == "many-599"
        assert flow(e, "10.245.0.1", "")["SrcK8S_Name"] == "many-0"
        wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
    with seeded.cond:
        requests = list(seeded.requests)
    lists = [r for r in requests if r["verb"] == "list"]
    assert {r["kind"] for r in lists} == {"pods", "nodes", "services", "replicasets"}
    # (without it, http.client says "identity")
    assert all((r["accept_encoding"] == "gzip") == gzip for r in lists), lists
    assert not any("gzip" in r["accept_encoding"] for r in requests if r["verb"] == "watch")
    # the first page of pods (500, ~250 KB of JSON) came compressed
    assert (seeded.gzipped >= 1) == gzip


def _relisted_once_the_list_fault_clears(seeded: FakeKube, e: enrich.Enricher, name: str, ip: str) -> None:
    """The pods list fault cleared, a pod `name` added meanwhile: the next relist takes it in, the
    seeded pod still there, and the informer no longer failing."""
    seeded.add("pods", pod(name, "shop", ips=[ip]))
    seeded.clear("pods", "list")
    wait_for(lambda: e.stats()["kinds"]["pods"]["relists"] == 1, timeout=15, what="the relist")
    assert flow(e, ip, "")["SrcK8S_Name"] == name
    assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"
    assert e.stats()["kinds"]["pods"]["last_error"] == ""


@pytest.mark.parametrize(("fault", "chunk", "cap"), [("bomb", 500, "LIST_PAGE_MAX_BYTES"),
                                                     ("bomb", 0, "LIST_UNPAGED_MAX_BYTES"),
                                                     ("endless", 500, "LIST_PAGE_MAX_BYTES")])
def test_a_list_answer_over_its_bound_is_not_read_on(seeded: FakeKube, kubeconfig: str, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture, fault: str, chunk: int,
                                                      cap: str) -> None:
    """A list page that decompresses past its bound (a gzip bomb: 64 MiB of blanks in ~64 KiB;
    or an uncompressed answer as long), paged or unpaged, is not read on: counted as
    oversize_page (in flowscope_enrich_stat), logged once, the connection dropped; the last good
    cache keeps serving (read whole, the bomb is a valid empty list that would wipe it), and the
    list is retried with backoff until the server behaves again."""
    from collector.server import enrich_series
    from enrich import informer

    monkeypatch.setattr(informer, cap, 1 << 20)   # a small bound: a cheap test (the bombs are 64 times it)
    monkeypatch.setattr(informer, "LIST_OBJECT_MAX_BYTES", 1 << 10)   # (500 objects: under the bound)
    seeded.bomb_bytes = 64 << 20
    with caplog.at_level(logging.WARNING, logger="flowscope.enrich"):
        with running_enricher(kubeconfig, list_chunk_size=chunk, backoff_initial_seconds=0.2,
                              backoff_max_seconds=0.5) as e:
            assert e.wait_ready(10)
            wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
            seeded.fail("pods", "list", fault)   # until cleared
            seeded.expire("pods")                # the relist meets it
            wait_for(lambda: e.stats()["kinds"]["pods"]["errors"].get("oversize_page", 0) >= 2, timeout=20,
                     what="two oversize pages counted")
            assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"   # the last good cache
            st = e.stats()["kinds"]["pods"]
            assert (st["relists"], set(st["errors"]), st["objects"]) == (0, {"oversize_page"}, 1), st
            assert enrich_series(e)["flowscope_enrich_stat"][("kinds_pods_errors_oversize_page",)] >= 2
            if fault == "endless":
                # the client hung up: the rest of the answer was never sent
                wait_for(lambda: seeded.bomb_sent < seeded.bomb_bytes, what="the answer cut")  # type: ignore[operator]
            _relisted_once_the_list_fault_clears(seeded, e, "after-bomb", "10.244.0.71")
    msgs = [r.getMessage() for r in caplog.records if "oversize" in r.getMessage() or "over 1048576" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith("enrich: pods informer: list pods: the answer took over 1048576 "
                                                 "bytes"), msgs


def test_a_list_answer_that_trickles_in_is_cut_at_the_page_timeout(seeded: FakeKube, kubeconfig: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A list page that comes one byte every half second (each read well within the read
    timeout, 5 s here) is cut once it is not all there list_page_timeout_seconds after its
    request: counted as list_timeout (in flowscope_enrich_stat), logged once, the connection
    dropped; the last good cache keeps serving, and the list is retried with backoff until the
    server answers whole again. Without the bound the relist never ended (a ~600-byte page:
    ~5 min)."""
    from collector.server import enrich_series

    with caplog.at_level(logging.WARNING, logger="flowscope.enrich"):
        with running_enricher(kubeconfig, list_page_timeout_seconds=1.0, backoff_initial_seconds=0.2,
                              backoff_max_seconds=0.5) as e:
            assert e.wait_ready(10)
            wait_for(lambda: seeded.watchers["pods"] >= 1, what="pod watch open")
            seeded.fail("pods", "list", "trickle")   # until cleared
            seeded.expire("pods")                    # the relist meets it
            wait_for(lambda: e.stats()["kinds"]["pods"]["errors"].get("list_timeout", 0) >= 2, timeout=20,
                     what="two trickling pages cut")
            # cut part-way: a few bytes of the page had come (the client hung up on the rest)
            assert 0 < seeded.trickle_sent < len(orjson.dumps(list(seeded.objects["pods"].values())))
            assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"   # the last good cache
            st = e.stats()["kinds"]["pods"]
            assert (st["relists"], set(st["errors"]), st["objects"]) == (0, {"list_timeout"}, 1), st
            assert enrich_series(e)["flowscope_enrich_stat"][("kinds_pods_errors_list_timeout",)] >= 2
            _relisted_once_the_list_fault_clears(seeded, e, "after-trickle", "10.244.0.72")
    msgs = [r.getMessage() for r in caplog.records if "list_timeout" in r.getMessage() or "not all there" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith("enrich: pods informer: list pods: the answer was not all there "
                                                 "1 s after the request"), msgs


def test_a_watch_the_server_keeps_open_past_its_timeout_is_cut_and_resumed(seeded: FakeKube, kubeconfig: str,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A watch stream that a proxy keeps alive past its timeoutSeconds with a byte now and then
    (here the bytes of one BOOKMARK, 20 ms apart: each read well within the read timeout), passing
    no event, is cut timeoutSeconds + read_timeout_slack_seconds after its request and resumed
    from the last resourceVersion applied: the pod added meanwhile comes on the resumed watch,
    without a relist, no error counted (kinds_<kind>_watches_overdue counts it), logged once.
    Without the cut the stream was held for ever, and the pod never came."""
    from collector.server import enrich_series

    seeded.trickle_interval = 0.02
    seeded.fail("pods", "watch", "trickle", times=1)   # the first pods watch
    with caplog.at_level(logging.WARNING, logger="flowscope.enrich"):
        with running_enricher(kubeconfig, watch_timeout_seconds=2, read_timeout_slack_seconds=1) as e:
            assert e.wait_ready(10)
            listed_rv = e.stats()["kinds"]["pods"]["resource_version"]
            wait_for(lambda: seeded.watchers["pods"] == 1 and seeded.trickle_sent > 0, what="the trickling watch")
            seeded.add("pods", pod("while-trickling", "shop", ips=["10.244.0.73"]))
            wait_for(lambda: flow(e, "10.244.0.73", "").get("SrcK8S_Name") == "while-trickling", timeout=15,
                     what="the pod, on the resumed watch")
            st = e.stats()["kinds"]["pods"]
            assert (st["watches_overdue"], st["errors"], st["lists"], st["last_error"]) == (1, {}, 1, ""), st
            assert enrich_series(e)["flowscope_enrich_stat"][("kinds_pods_watches_overdue",)] == 1
            watches = [r for r in seeded.requests if r["kind"] == "pods" and r["verb"] == "watch"]
            # the resumed watch asked from the list's resourceVersion (the bookmarks said no newer)
            assert watches[1]["query"]["resourceVersion"] == listed_rv, watches[:2]
            assert 0 < seeded.trickle_sent
            assert e.stats()["kinds"]["nodes"]["watches_overdue"] == 0   # (watches ended by the server)
    msgs = [r.getMessage() for r in caplog.records if "not ended by the API server" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith("enrich: pods watch not ended by the API server "), msgs


def test_a_watch_the_api_server_takes_up_late_is_not_cut_before_the_server_ends_it(seeded: FakeKube,
                                                                                  kubeconfig: str) -> None:
    """The API server's timeoutSeconds runs from when it takes the watch request up, after API
    Priority and Fairness queued it or an authentication webhook answered: here 4 s after the
    client sent it, more than the slack (2 s). The informer's cut of a stream the server has not
    ended counts from the answer's start (the server's clock runs by then), so this stream, which
    the server ends at its timeoutSeconds, is neither cut nor counted in watches_overdue. Counted
    from the request, the cut came 2 s before the server's end: watches_overdue 1, and a
    warning about a proxy keeping open a stream nothing kept open."""
    import threading

    queued = threading.Event()

    def queue(r: dict[str, Any]) -> None:
        if r["kind"] == "pods" and r["verb"] == "watch" and not queued.is_set():
            queued.set()
            time.sleep(4.0)

    seeded.on_request = queue
    try:
        with running_enricher(kubeconfig, watch_timeout_seconds=2, read_timeout_slack_seconds=2) as e:
            assert e.wait_ready(10)
            wait_for(lambda: seeded.count(kind="pods", verb="watch") >= 2, timeout=20,
                     what="the watch after the one taken up late")
            st = e.stats()["kinds"]["pods"]
            assert (st["watches_overdue"], st["errors"], st["lists"], st["last_error"]) == (0, {}, 1, ""), st
    finally:
        seeded.on_request = None


def test_page_bounds() -> None:
    """Pages of the default size, and grown 4 times, get 256 MiB; larger pages 64 KiB an object,
    up to the unpaged bound (4 GiB), which an unpaged list gets."""
    from enrich.informer import page_max_bytes

    assert [page_max_bytes(n) for n in (500, 2000, 4096)] == [256 << 20] * 3
    assert page_max_bytes(10_000) == 10_000 * 65536
    assert page_max_bytes(0) == page_max_bytes(1_000_000) == 4 << 30
