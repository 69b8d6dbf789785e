"""A paged list whose continue token expires, against the fake API server speaking the real protocol.

What the API server does comes from k8s.io/apiserver (storage/etcd3 interpretListError and
handleCompactedErrorForPaging), not from enrich/informer.py: when etcd compacted the revision a
paged list reads (a list slower than --etcd-compaction-interval, 5 min by default), the next
continue request is answered 410, reason Expired, with a Status whose metadata.continue would read
on from the latest revision ("an inconsistent list"). What the informer must do instead of
client-go pager's one unpaged list (~0.6 GiB of JSON decoded whole for 100k OpenShift pods, in a
collector sized for ~200 MB):
- list again from the first page (no resourceVersion, no continue: a fresh consistent snapshot),
  paged, and never with the token that 410 offers;
- objects changed between the expired list and the restart are listed as they are now, and the
  watch starts from the restart's resourceVersion;
- when the restarts keep expiring, give the list up (counted, logged once with the setting to
  change), keep the last good cache serving, and retry with backoff.
The requests the fake server saw are the evidence: every list request must carry `limit`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

import enrich
from tests.support.enricher import fast_config, running_enricher
from tests.support.fake_kube import FakeKube, pod, run_enrich_config, wait_for
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture
from tests.test_enrich_informer import FUTURE, NOBODY, flow
from tests.test_enrich_informer import kubeconfig as kubeconfig  # noqa: F401 - fixture


def _pod(i: int, ip: str | None = None) -> dict[str, Any]:
    return pod(f"p{i}", "shop", ips=[ip or f"10.244.0.{10 + i}"])


def _setup(fake: FakeKube, pods: int) -> None:
    for i in range(pods):
        fake.add("pods", _pod(i))
    for k in ("nodes", "services", "replicasets"):
        fake.bookmark(k)


def _pod_lists(fake: FakeKube) -> list[dict[str, str]]:
    """The query of every pods list request the server saw, in order."""
    with fake.cond:
        return [dict(r["query"]) for r in fake.requests if r["kind"] == "pods" and r["verb"] == "list"]


def _shape(queries: list[dict[str, str]]) -> list[tuple[str | None, bool]]:
    return [(q.get("limit"), "continue" in q) for q in queries]


def _no_inconsistent_continue(fake: FakeKube) -> None:
    with fake.cond:
        offered = set(fake.inconsistent_continues)
    assert offered, "the fake server never answered a continue request 410 Expired"
    assert not [q for q in _pod_lists(fake) if q.get("continue") in offered]


def test_a_continue_token_that_expires_once_restarts_the_paged_list(
        fake_kube: FakeKube, kubeconfig: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    _setup(fake_kube, 10)
    # pages of 3: the first is read, the second is served with a token etcd then compacts away,
    # so the third page's request is answered 410 Expired
    fake_kube.fail("pods", "list", "expired_continue", times=1, after=1)
    with caplog.at_level(logging.INFO, logger="flowscope.enrich"):
        with running_enricher(kubeconfig, list_chunk_size=3) as e:
            assert e.wait_ready(10)
            # 3 + 3, then 410; again from the first page in pages twice as large: 6 + 4
            assert _shape(_pod_lists(fake_kube)) == [("3", False), ("3", True), ("3", True),
                                                     ("6", False), ("6", True)]
            _no_inconsistent_continue(fake_kube)
            st = e.stats()
            assert st["index"]["pods"] == 10
            assert [flow(e, f"10.244.0.{10 + i}", "")["SrcK8S_Name"] for i in range(10)] == [f"p{i}" for i in range(10)]
            k = st["kinds"]["pods"]
            assert (k["errors"], k["lists"], k["relists"], k["last_error"]) == ({"continue_expired": 1}, 1, 0, "")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pods list's continue token expired" in warnings[0], warnings
    assert "6 objects (pages of 3)" in warnings[0] and "6 objects a page" in warnings[0], warnings[0]


def test_objects_changed_before_the_restart_are_listed_as_they_are_then(
        fake_kube: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    """The first page (p0-p2) is read, then, before its continue token is answered 410, p1 (on
    that page) is deleted, p4 moves to another address, p7 is deleted and p9 is created. The
    restarted list must hold exactly what is there now; the inconsistent token the 410 offers
    would have kept p1 (read on the first page) for good, as the watch starts after its delete."""
    _setup(fake_kube, 9)
    fake_kube.fail("pods", "list", "expired_continue", times=1)
    changed = threading.Event()
    after_changes: list[int] = []

    def on_request(r: dict[str, Any]) -> None:
        if r["kind"] == "pods" and r["verb"] == "list" and "continue" in r["query"] and not changed.is_set():
            changed.set()
            fake_kube.delete("pods", "p1", "shop")
            fake_kube.modify("pods", _pod(4, "10.244.1.4"))
            fake_kube.delete("pods", "p7", "shop")
            fake_kube.add("pods", _pod(9))
            after_changes.append(fake_kube.rv)

    fake_kube.on_request = on_request
    with running_enricher(kubeconfig, list_chunk_size=3) as e:
        assert e.wait_ready(10)
        assert changed.is_set()
        # 3, then 410; again from the first page, 6 a page: 8 pods now, 6 + 2
        assert _shape(_pod_lists(fake_kube)) == [("3", False), ("3", True), ("6", False), ("6", True)]
        _no_inconsistent_continue(fake_kube)
        assert e.stats()["index"]["pods"] == 8
        for i in (0, 2, 3, 5, 6, 8, 9):
            assert flow(e, f"10.244.0.{10 + i}", "")["SrcK8S_Name"] == f"p{i}", i
        assert flow(e, "10.244.1.4", "")["SrcK8S_Name"] == "p4"
        for gone in ("10.244.0.11", "10.244.0.14", "10.244.0.17"):   # p1, p4's old address, p7
            assert flow(e, gone, "", t_ms=FUTURE) == NOBODY, gone
        # the watch resumes from the restarted list's snapshot, taken after the changes
        wait_for(lambda: fake_kube.count(kind="pods", verb="watch") >= 1, what="the pods watch")
        with fake_kube.cond:
            w = [r for r in fake_kube.requests if r["kind"] == "pods" and r["verb"] == "watch"]
        assert int(w[0]["query"]["resourceVersion"]) == after_changes[0]
        fake_kube.delete("pods", "p0", "shop")
        wait_for(lambda: flow(e, "10.244.0.10", "", t_ms=FUTURE) == NOBODY, what="p0's delete by the watch")
        assert e.stats()["kinds"]["pods"]["errors"] == {"continue_expired": 1}


def test_a_list_whose_token_keeps_expiring_is_given_up_and_retried_keeping_the_last_cache(
        fake_kube: FakeKube, kubeconfig: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    _setup(fake_kube, 9)   # more than 4 pages of 2 (the largest page a restart of this list reads)
    with caplog.at_level(logging.INFO, logger="flowscope.enrich"):
        with running_enricher(kubeconfig, list_chunk_size=2) as e:
            assert e.wait_ready(10)
            wait_for(lambda: fake_kube.watchers["pods"] >= 1, what="the pods watch")
            synced = len(_pod_lists(fake_kube))
            assert synced == 5   # 9 pods, 2 a page
            # from now on every page's token is compacted before the next page is asked for
            fake_kube.fail("pods", "list", "expired_continue")
            fake_kube.hold("pods")   # changes only a list would see
            fake_kube.delete("pods", "p0", "shop")
            fake_kube.add("pods", _pod(9))
            fake_kube.expire("pods")   # the watch ends with 410: relist
            wait_for(lambda: e.stats()["kinds"]["pods"]["errors"].get("list_expired", 0) >= 2, timeout=15,
                     what="two lists given up")
            st = e.stats()
            k = st["kinds"]["pods"]
            # the last good cache keeps serving, and the collector stays ready
            assert st["ready"] is True and k["synced"] is True
            assert flow(e, "10.244.0.10", "", t_ms=FUTURE)["SrcK8S_Name"] == "p0"
            assert flow(e, "10.244.0.19", "") == NOBODY
            assert "--enrich-list-chunk-size" in k["last_error"] and "now 2" in k["last_error"], k["last_error"]
            relist = _pod_lists(fake_kube)[synced:]
            # every try: a first page, then a continue answered 410. Pages of 2, 4, 8 (4 times
            # the setting, the most), given up; the next tries read 8 a page from the start.
            assert _shape(relist[:8]) == [("2", False), ("2", True), ("4", False), ("4", True),
                                          ("8", False), ("8", True), ("8", False), ("8", True)]
            assert all(q.get("limit") for q in relist), _shape(relist)
            _no_inconsistent_continue(fake_kube)
            assert k["errors"]["continue_expired"] >= 3 * k["errors"]["list_expired"]
            assert set(k["errors"]) == {"continue_expired", "list_expired"}, k["errors"]

            # the API server keeps up again
            fake_kube.clear("pods", "list")
            wait_for(lambda: e.stats()["kinds"]["pods"]["last_error"] == "", timeout=10, what="a list completes")
            wait_for(lambda: flow(e, "10.244.0.19", "").get("SrcK8S_Name") == "p9", what="p9 listed")
            assert flow(e, "10.244.0.10", "", t_ms=FUTURE) == NOBODY
            assert e.stats()["kinds"]["pods"]["relists"] == 1
            # a list that completed starts the pages over at the setting
            n = len(_pod_lists(fake_kube))
            wait_for(lambda: fake_kube.watchers["pods"] >= 1, what="the pods watch again")
            fake_kube.expire("pods")
            wait_for(lambda: len(_pod_lists(fake_kube)) > n, what="the next relist")
            assert _pod_lists(fake_kube)[n].get("limit") == "2"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # once each, however many lists expired: repeats are counted, not logged
    assert len([m for m in warnings if "continue token expired (410 Expired)" in m]) == 1, warnings
    assert len([m for m in warnings if "times in a row" in m]) == 1, warnings
    gave_up = next(m for m in warnings if "times in a row" in m)
    assert "enrich.list_chunk_size" in gave_up and "--etcd-compaction-interval" in gave_up, gave_up
    assert any("pods informer recovered" in r.getMessage() for r in caplog.records)


def test_a_first_list_that_keeps_expiring_never_lists_unpaged(fake_kube: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    """No last good cache to keep: the collector stays unready (readiness names the cause)
    rather than decode every pod at once."""
    _setup(fake_kube, 9)
    fake_kube.fail("pods", "list", "expired_continue")
    with running_enricher(kubeconfig, list_chunk_size=2) as e:
        wait_for(lambda: e.stats()["kinds"]["pods"]["errors"].get("list_expired", 0) >= 1, timeout=10,
                 what="a list given up")
        assert not e.ready
        assert "list_expired" not in e.stats()["kinds"]["nodes"]["errors"]
        assert all(q.get("limit") for q in _pod_lists(fake_kube)), _shape(_pod_lists(fake_kube))


def test_a_410_to_a_lists_first_page_is_counted_apart_from_an_expired_continue_token(
        fake_kube: FakeKube, kubeconfig: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """Two different things, which an operator must tell apart on /metrics: a continue token
    that expired mid-list (etcd compaction outran a slow list: raise --enrich-list-chunk-size) and
    a 410 to a list's first request, which names neither a resourceVersion nor a continue token
    (nothing for compaction to expire: the API server or a proxy misbehaving, which larger pages
    do not help). Here the first list's first page is answered 410; its retry's first page is
    served with a token etcd then compacts away, so that list restarts once. Each is counted
    under its own cause, and each is logged: one does not silence the other's warning."""
    from collector.server import enrich_series

    _setup(fake_kube, 7)
    fake_kube.fail("pods", "list", "gone_http", times=1)

    def on_request(r: dict[str, Any]) -> None:
        # the retry's first page (the hook runs before the server takes its fault)
        if r["kind"] == "pods" and r["verb"] == "list" and len(_pod_lists(fake_kube)) == 2:
            fake_kube.fail("pods", "list", "expired_continue", times=1)

    fake_kube.on_request = on_request
    with caplog.at_level(logging.INFO, logger="flowscope.enrich"):
        with running_enricher(kubeconfig, list_chunk_size=3) as e:
            assert e.wait_ready(10)
            # 410 at once; then 3 and a continue answered 410 Expired; again in pages of 6: 6 + 1
            assert _shape(_pod_lists(fake_kube)) == [("3", False), ("3", False), ("3", True), ("6", False),
                                                     ("6", True)]
            assert e.stats()["index"]["pods"] == 7
            k = e.stats()["kinds"]["pods"]
            assert k["errors"] == {"list_gone": 1, "continue_expired": 1}, k["errors"]
            stat = enrich_series(e)["flowscope_enrich_stat"]
            assert stat[("kinds_pods_errors_list_gone",)] == 1
            assert stat[("kinds_pods_errors_continue_expired",)] == 1
            assert not [key for (key,) in stat if key.startswith("kinds_pods_errors_") and key not in (
                "kinds_pods_errors_list_gone", "kinds_pods_errors_continue_expired")], stat
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "410 Gone to a list's first request" in warnings[0], warnings
    assert "pods list's continue token expired" in warnings[1], warnings


def test_run_passes_the_page_size_to_the_informers(tmp_path: Path) -> None:
    from collector import config as C

    for argv, env, want in (([], {}, 500), (["--enrich-list-chunk-size", "2000"], {}, 2000),
                            ([], {"FLOWSCOPE_ENRICH_LIST_CHUNK_SIZE": "0"}, 0)):
        assert run_enrich_config(tmp_path, argv, env).list_chunk_size == want, (argv, env)
    p = argparse.ArgumentParser()
    C.add_arguments(p)
    with pytest.raises(C.ConfigError, match="enrich.list_chunk_size"):
        C.load(p.parse_args(["--enrich-list-chunk-size", "-1"]), environ={})


# ---------------------------------------------------------------- a list that fails partway

HELD_NS = "held-pages"   # the namespace of the pods these tests look for among live objects


def _live_pod_recs() -> int:
    """Parsed pod records of HELD_NS alive in this process, whoever holds them (gc.collect()
    first: only what is still reachable counts; the Enricher freezes what its lists left, which
    gc.get_objects() would not show)."""
    from enrich.index import PodRec

    gc.unfreeze()
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is PodRec and o.ns == HELD_NS)


def _live_list_failures() -> int:
    from enrich.informer import ApiProblem

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, ApiProblem))


@pytest.mark.parametrize("fault", ["garbage", "drop", "error500", "unavailable"])
def test_a_relist_that_fails_partway_holds_none_of_its_pages_during_the_backoff(
        fake_kube: FakeKube, kubeconfig: str, fault: str) -> None:  # noqa: F811
    """Page 4 of a relist (a body that is not JSON, a cut connection, a 500, a 503 with
    Retry-After) fails after 15 pods were read: during the backoff before the retry (up to 30 s,
    120 s with Retry-After) the collector holds the serving cache and nothing of the failed
    attempt: no parsed record, not the failure with its traceback (which holds the list's frames
    and, through them, every page read). With 100k pods that attempt is hundreds of MB."""
    pods = 40
    for i in range(pods):
        fake_kube.add("pods", pod(f"p{i}", HELD_NS, ips=[f"10.244.{i // 200}.{10 + i % 200}"]))
    for k in ("nodes", "services", "replicasets"):
        fake_kube.bookmark(k)
    # a backoff long enough to look inside, cut short by stop()
    with running_enricher(kubeconfig, list_chunk_size=5, backoff_initial_seconds=60.0,
                          backoff_max_seconds=60.0) as e:
        assert e.wait_ready(10)
        # what the serving cache holds, counted the way the leftovers are
        assert _live_pod_recs() == pods
        wait_for(lambda: fake_kube.watchers["pods"] >= 1, what="the pods watch")
        before = len(_pod_lists(fake_kube))
        fake_kube.fail("pods", "list", fault, after=3)
        for i in range(pods):   # a new version of every pod: the relist parses new records
            fake_kube.modify("pods", pod(f"p{i}", HELD_NS, ips=[f"10.244.{i // 200}.{10 + i % 200}"]))
        fake_kube.expire("pods")   # the watch ends with 410 Gone: relisted at once
        wait_for(lambda: e.stats()["kinds"]["pods"]["state"] == "backoff", what="the failed relist's backoff")
        # 3 pages of 5 read, the 4th failed
        assert _shape(_pod_lists(fake_kube)[before:]) == [("5", False), ("5", True), ("5", True), ("5", True)]
        k = e.stats()["kinds"]["pods"]
        assert sum(k["errors"].values()) == 1 and k["last_error"], k
        # released before the wait begins, not when it ends (a minute from now)
        wait_for(lambda: _live_pod_recs() == pods and _live_list_failures() == 0, timeout=5,
                 what=f"the failed list's records released ({_live_pod_recs() - pods} of them, "
                      f"{_live_list_failures()} failures still alive)")
        assert e.stats()["kinds"]["pods"]["state"] == "backoff"
        assert e.stats()["index"]["pods"] == pods   # the last good cache still serves


def test_a_failed_list_keeps_no_record_alive_through_its_exception(fake_kube: FakeKube,  # noqa: F811
                                                                   kubeconfig: str) -> None:
    """Whoever keeps the failure (a log handler holding records, an error reporter, a debugger)
    keeps its traceback and the list's frames with it: the records the list had read must
    not be among what they hold."""
    from enrich.index import PODS, Index
    from enrich.informer import ApiProblem, Informer, make_listers

    for i in range(20):
        fake_kube.add("pods", pod(f"p{i}", HELD_NS, ips=[f"10.244.0.{10 + i}"]))
    fake_kube.fail("pods", "list", "garbage", after=2)
    cfg = fast_config(kubeconfig, list_chunk_size=5)
    api = enrich.load_api_client(cfg)
    listers = make_listers(api)
    try:
        inf = Informer(kind=PODS, lister=listers[PODS], index=Index(compiled=False), config=cfg)
        with pytest.raises(ApiProblem, match="non-JSON") as failure:
            inf._list()
        assert failure.value.__traceback__ is not None   # the frames are still there...
        assert _live_pod_recs() == 0                      # ...and hold none of the 10 records read
        assert _shape(_pod_lists(fake_kube)) == [("5", False), ("5", True), ("5", True)]
    finally:
        listers[PODS].close()   # (the ApiClient the lists ask for gzip through)
        api.close()


def _held_watch_bytes() -> int:
    """Bytes alive in lists of bytes of 1 MiB or more: the pieces of a watch event line held
    (nothing else in these tests makes such a list); frozen ones too, as in _live_pod_recs."""
    gc.unfreeze()
    gc.collect()
    total = 0
    for o in gc.get_objects():
        if type(o) is list and o and type(o[0]) is bytes:
            n = sum(len(x) for x in o if type(x) is bytes)
            if n >= 1 << 20:
                total += n
    return total


def test_a_failed_watch_holds_none_of_its_stream_during_the_backoff(fake_kube: FakeKube,  # noqa: F811
                                                                    kubeconfig: str) -> None:
    """The same for a watch: one cut off after 16 MiB of an event line it will not take
    (oversize_event) held those 16 MiB, buffered in the stream's frame, through the failure's
    traceback for the whole pause before it resumes (up to 30 s; 120 s with Retry-After)."""
    from enrich.informer import WATCH_EVENT_MAX_BYTES

    _setup(fake_kube, 3)
    fake_kube.fail("pods", "watch", "oversize", times=1)
    with running_enricher(kubeconfig, backoff_initial_seconds=60.0, backoff_max_seconds=60.0) as e:
        assert e.wait_ready(10)
        wait_for(lambda: e.stats()["kinds"]["pods"]["errors"].get("oversize_event", 0) == 1, timeout=20,
                 what="the oversize event refused")
        wait_for(lambda: _held_watch_bytes() == 0, timeout=5,
                 what=f"the watch's buffered line released ({_held_watch_bytes()} bytes held; "
                      f"{WATCH_EVENT_MAX_BYTES} read before the connection was dropped)")
        assert e.stats()["kinds"]["pods"]["state"] == "backoff"
