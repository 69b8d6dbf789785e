"""Cluster operations the informers meet in the clusters operators run, against the fake API
server (tests/support/fake_kube.py) speaking the real list/watch protocol.

What is checked comes from the API server's and client-go's own behaviour, not from
enrich/informer.py: a watch from a resourceVersion the server has not reached is answered
504 Timeout "Too large resource version" with the cause ResourceVersionTooLarge and a
Retry-After of 1 s (k8s.io/apiserver storage.NewTooLargeResourceVersionError, after the watch
cache waited 3 s for it), and client-go's reflector answers any such watch error (anything but
429 or a refused connection) by ending its ListAndWatch and listing again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import enrich
from tests.support.enricher import running_enricher
from tests.support.fake_kube import FakeKube, pod, wait_for
from tests.support.fake_kube import fake_kube as fake_kube  # noqa: F401 - fixture
from tests.test_enrich_informer import FUTURE, NOBODY, flow, seed
from tests.test_enrich_informer import kubeconfig as kubeconfig  # noqa: F401 - fixture


@pytest.fixture
def enricher(fake_kube: FakeKube, kubeconfig: str) -> Iterator[enrich.Enricher]:  # noqa: F811
    seed(fake_kube)
    with running_enricher(kubeconfig) as e:
        assert e.wait_ready(10)
        yield e


def _watching(fake: FakeKube, e: enrich.Enricher, kind: str) -> None:
    """Wait until `kind`'s informer watches from the server's latest resourceVersion."""
    wait_for(lambda: e.stats()["kinds"][kind]["state"] == "watching"
             and e.stats()["kinds"][kind]["resource_version"] == str(fake.rv), what=f"the {kind} watch")


def test_a_watch_from_before_an_etcd_restore_relists(fake_kube: FakeKube, enricher: enrich.Enricher) -> None:  # noqa: F811
    """etcd restored from a backup (etcdutl snapshot restore without --bump-revision, the
    procedure before etcd 3.5.10): the resourceVersion goes back, and what is written after is
    another history. The informers' watches resume from a resourceVersion the API server has not
    reached: each is answered 504 "Too large resource version", Retry-After 1 s. They were
    taken for throttling and resumed from that resourceVersion forever: the cache stayed the
    one from before the restore (pods that no longer exist kept their addresses, pods created
    since were never seen), and once the new history passed that resourceVersion the watch went
    on from there, skipping what came before it. As client-go's reflector does, the informer
    lists again, and so serves the cluster as it is."""
    e, fake = enricher, fake_kube
    backup = fake.backup()
    # written after the backup: lost by the restore
    fake.add("pods", pod("lost", "shop", ips=["10.244.0.20"], node="node-a", host_ip="10.0.0.1"))
    fake.add("pods", pod("lost-2", "shop", ips=["10.244.0.21"], node="node-a", host_ip="10.0.0.1"))
    wait_for(lambda: e.lookup("10.244.0.21") is not None, what="the pods written after the backup")
    _watching(fake, e, "pods")
    fake.restore(backup)
    # the restored cluster goes on: a pod is created (its resourceVersion is below the one the
    # informer had reached)
    fake.add("pods", pod("after-restore", "shop", ips=["10.244.0.30"], node="node-a", host_ip="10.0.0.1"))
    wait_for(lambda: e.lookup("10.244.0.30") is not None, timeout=10, what="the pod created after the restore")
    assert flow(e, "10.244.0.30", "")["SrcK8S_Name"] == "after-restore"
    # the pods the restore undid are gone (their tombstones answer only for flows before)
    assert flow(e, "10.244.0.20", "", t_ms=FUTURE) == NOBODY
    # what was there before the backup is still there
    assert flow(e, "10.244.0.5", "")["SrcK8S_Name"] == "web-6d4cf56db6-x1"
    st = e.stats()["kinds"]["pods"]
    assert st["errors"].get("rv_too_large", 0) >= 1
    assert st["relists"] >= 1
    # and it watches again: a change after the relist arrives by the watch
    _watching(fake, e, "pods")
    fake.add("pods", pod("later", "shop", ips=["10.244.0.31"], node="node-a", host_ip="10.0.0.1"))
    wait_for(lambda: e.lookup("10.244.0.31") is not None, what="a pod added after the relist")


def test_too_large_resource_version_in_the_stream_relists(fake_kube: FakeKube, enricher: enrich.Enricher) -> None:  # noqa: F811
    """The same Status arriving as an ERROR event of the stream is a relist as well (not a
    server error to resume after its retryAfterSeconds)."""
    e, fake = enricher, fake_kube
    _watching(fake, e, "pods")
    lists = fake.count(kind="pods", verb="list")
    fake.fail("pods", "watch", "too_large_event", times=1)
    fake.drop_watches("pods")   # the next watch request meets the fault
    wait_for(lambda: fake.count(kind="pods", verb="list") > lists, what="a relist of pods")
    fake.add("pods", pod("next", "shop", ips=["10.244.0.40"], node="node-a", host_ip="10.0.0.1"))
    wait_for(lambda: e.lookup("10.244.0.40") is not None, what="the pod added after the relist")
    st = e.stats()["kinds"]["pods"]
    assert st["errors"].get("rv_too_large") == 1
    assert "server_error" not in st["errors"]


def test_a_server_that_keeps_refusing_the_resource_version_is_relisted_with_growing_pauses(
        fake_kube: FakeKube, enricher: enrich.Enricher) -> None:  # noqa: F811
    """An API server whose cache lags behind for long (every watch after a list is refused):
    the relists back off, as watches expiring right after their list do, instead of listing
    every few seconds."""
    e, fake = enricher, fake_kube
    _watching(fake, e, "pods")
    lists = fake.count(kind="pods", verb="list")
    fake.fail("pods", "watch", "too_large_event")
    fake.drop_watches("pods")
    start = time.monotonic()
    wait_for(lambda: fake.count(kind="pods", verb="list") >= lists + 4, what="four relists")
    # fast_config backs off from 0.02 s doubling to 0.2 s: relisting at once each time would be
    # four lists in a few milliseconds
    assert time.monotonic() - start >= 0.02 + 0.04 + 0.08
    fake.clear("pods", "watch")
    fake.add("pods", pod("next", "shop", ips=["10.244.0.41"], node="node-a", host_ip="10.0.0.1"))
    wait_for(lambda: e.lookup("10.244.0.41") is not None, what="the pod added once watches work")
