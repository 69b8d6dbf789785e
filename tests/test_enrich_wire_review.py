"""Answers of a real API server the informers had not met, against the fake API server
(tests/support/fake_kube.py) speaking the real list/watch protocol.

What is checked comes from k8s.io/apiserver and client-go, not from enrich/informer.py:
- the watch cache sends a BOOKMARK 2 s before a watch's timeoutSeconds (cacheWatcher
  nextBookmarkTime) at its current, cluster-wide resourceVersion, as an empty object of the
  watched type (metadata.creationTimestamp null), then ends the stream cleanly at the timeout: a
  quiet kind resumes from that newer resourceVersion; without bookmarks the stream just ends;
  neither is a failure nor a reason to list again;
- an error after the watch opened (etcd timing out) comes as an ERROR event whose Status is a
  500 InternalError (transformErrorToEvent): client-go's reflector retries such a watch from the
  same resourceVersion, and lists again only when it keeps failing;
- a resourceVersion refused before the stream opens comes as HTTP 410 Expired (not an ERROR
  event): as the in-stream 410, a relist at once, not an error retried from the same version.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import enrich
from tests.support.fake_kube import FakeKube, node, pod, wait_for
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture
from tests.test_enrich_informer import fast_config, flow, seed
from tests.test_enrich_informer import kubeconfig as kubeconfig  # noqa: F401 - fixture


def _watch_rvs(fake: FakeKube, kind: str) -> list[int]:
    with fake.cond:
        return [int(r["query"]["resourceVersion"]) for r in fake.requests if r["kind"] == kind and r["verb"] == "watch"]


@pytest.fixture
def seeded(fake_kube: FakeKube) -> Iterator[FakeKube]:  # noqa: F811
    yield seed(fake_kube)


@pytest.mark.parametrize("before", [2.0, None], ids=["pre-timeout-bookmark", "no-bookmark"])
def test_a_quiet_watch_ended_by_its_timeout_resumes_without_failure_or_list(
        seeded: FakeKube, kubeconfig: str, before: float | None) -> None:  # noqa: F811
    seeded.bookmark_before_timeout = before
    e = enrich.Enricher(fast_config(kubeconfig, watch_timeout_seconds=3))
    e.start()
    try:
        assert e.wait_ready(10)
        wait_for(lambda: len(_watch_rvs(seeded, "pods")) >= 1, what="the first pods watch")
        listed = _watch_rvs(seeded, "pods")[0]
        # another kind moves the cluster's resourceVersion on; the pods stay as they are
        seeded.add("nodes", node("node-c", internal=["10.0.0.3"]))
        wait_for(lambda: len(_watch_rvs(seeded, "pods")) >= 3, timeout=15, what="two pods watches ended by timeout")
        st = e.stats()["kinds"]["pods"]
        assert st["errors"] == {} and st["relists"] == 0, st
        assert seeded.count(kind="pods", verb="list") == 1
        rvs = _watch_rvs(seeded, "pods")
        if before is None:
            assert rvs[:3] == [listed] * 3
            assert st["events"]["BOOKMARK"] == 0
        else:
            # resumed from the bookmark's resourceVersion, past the node added after the list
            assert st["events"]["BOOKMARK"] >= 2
            assert rvs[1] > listed and rvs[2] >= rvs[1], rvs
        # the bookmark (an empty Pod) indexed nothing, and the watch still delivers
        assert e.stats()["index"]["pods"] == 1
        seeded.add("pods", pod("late", "shop", ips=["10.244.0.40"]))
        wait_for(lambda: flow(e, "10.244.0.40", "").get("SrcK8S_Name") == "late", what="an event after the timeouts")
    finally:
        e.stop()


def test_an_error_500_event_first_resumes_from_the_same_resource_version(seeded: FakeKube,
                                                                          kubeconfig: str) -> None:  # noqa: F811
    seeded.fail("pods", "watch", "error500_event", times=2)
    e = enrich.Enricher(fast_config(kubeconfig))
    e.start()
    try:
        assert e.wait_ready(10)
        wait_for(lambda: len(_watch_rvs(seeded, "pods")) >= 3, what="the watch retried past two ERROR 500 events")
        rvs = _watch_rvs(seeded, "pods")
        assert rvs[:3] == [rvs[0]] * 3, rvs    # retried from the list's resourceVersion
        st = e.stats()["kinds"]["pods"]
        assert st["errors"] == {"server_error": 2} and st["relists"] == 0, st
        assert seeded.count(kind="pods", verb="list") == 1
        seeded.add("pods", pod("after", "shop", ips=["10.244.0.41"]))
        wait_for(lambda: flow(e, "10.244.0.41", "").get("SrcK8S_Name") == "after", what="the watch working again")
        assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"
    finally:
        e.stop()


def test_http_410_before_the_stream_relists_at_once(seeded: FakeKube, kubeconfig: str) -> None:  # noqa: F811
    seeded.fail("pods", "watch", "gone_http", times=1)
    e = enrich.Enricher(fast_config(kubeconfig, backoff_initial_seconds=5.0, backoff_max_seconds=5.0))
    e.start()
    try:
        assert e.wait_ready(10)
        # at once: a relist is not a failure to back off from (5 s here)
        wait_for(lambda: e.stats()["kinds"]["pods"]["relists"] == 1, timeout=3, what="the relist after HTTP 410")
        st = e.stats()["kinds"]["pods"]
        assert st["errors"] == {}, st
        seeded.add("pods", pod("after", "shop", ips=["10.244.0.42"]))
        wait_for(lambda: flow(e, "10.244.0.42", "").get("SrcK8S_Name") == "after", timeout=3,
                 what="the watch from the relist")
    finally:
        e.stop()


def test_a_throttled_watch_waits_out_retry_after_and_resumes_without_a_list(
        seeded: FakeKube, kubeconfig: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """API Priority and Fairness refuses a watch with 429 and Retry-After: client-go's reflector
    backs off and watches again (IsTooManyRequests: no relist), however often it comes: a list of
    every pod would only add to the load that got the watch refused."""
    from enrich.informer import WATCH_FAILURES_BEFORE_RELIST
    from tests.test_enrich_informer import _record_sleeps

    asked = _record_sleeps(monkeypatch, "pods")
    seeded.fail("pods", "watch", "throttle", times=WATCH_FAILURES_BEFORE_RELIST)
    e = enrich.Enricher(fast_config(kubeconfig))
    e.start()
    try:
        assert e.wait_ready(10)
        wait_for(lambda: len(_watch_rvs(seeded, "pods")) > WATCH_FAILURES_BEFORE_RELIST, timeout=20,
                 what="the watch past the 429s")
        st = e.stats()["kinds"]["pods"]
        assert st["errors"] == {"http_429": WATCH_FAILURES_BEFORE_RELIST} and st["relists"] == 0, st
        assert seeded.count(kind="pods", verb="list") == 1
        assert asked[:WATCH_FAILURES_BEFORE_RELIST] == [2.0] * WATCH_FAILURES_BEFORE_RELIST   # Retry-After: 2
        rvs = _watch_rvs(seeded, "pods")
        assert rvs == [rvs[0]] * len(rvs), rvs
    finally:
        e.stop()
