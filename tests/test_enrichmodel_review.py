"""Regressions found by the model-based test of the enrichment index (IP reuse by flow time).

Each test is the minimal example the model test found, made deterministic.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

import orjson

from enrich.index import Index
from tests.support.fake_kube import node, pod, service

T0 = 1_700_000_000_000          # ms, a whole second
TTL_S = 20                      # --pod-tombstone-seconds of the index under test
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


def test_a_finished_pod_that_drops_its_address_keeps_the_grace_of_its_finish_time() -> None:
    """finishedAt is written in whole seconds, so a finished pod answers for flows up to 999 ms
    after it (its lookup grace), listed or deleted. When its status then dropped the address
    (its sandbox removed) the tombstone kept the end but not the grace: a flow in that second
    went to nobody. Found by the model test."""
    clock = Clock(T0 + 10_000)
    idx = _index(clock)

    def p0(ips: list[str], phase: str) -> dict[str, Any]:
        o = pod("p0", "shop", ips=ips, node="node-a", host_ip="10.0.0.1", uid="u-p0", created=iso(T0 + 1_000),
                phase=phase)
        if phase == "Succeeded":
            o["status"]["containerStatuses"] = [
                {"name": "c", "state": {"terminated": {"exitCode": 0, "finishedAt": iso(T0 + 9_000)}}}]
        return o

    idx.upsert("pods", idx.parse("pods", p0(["10.0.0.2"], "Running")))
    clock.ms = T0 + 12_000
    idx.upsert("pods", idx.parse("pods", p0(["10.0.0.2"], "Succeeded")))
    assert _src(idx, "10.0.0.2", T0 + 9_500) == [("p0", "Pod")] * 2
    clock.ms = T0 + 13_000
    idx.upsert("pods", idx.parse("pods", p0([], "Succeeded")))
    assert _src(idx, "10.0.0.2", T0 + 9_500) == [("p0", "Pod")] * 2
    assert _src(idx, "10.0.0.2", T0 + 10_000) == [("", "")] * 2
