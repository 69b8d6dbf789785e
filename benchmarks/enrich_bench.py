"""Index memory and per-flow enrich() cost at cluster scale (issue 4's benchmark).

Why: the enrichment cache must stay under 200 MB for 100k pods, and enrich() must be a small
fraction of the ~1 us per-flow budget (DESIGN.md "Data flow and the hot path"). This builds the
index from synthetic API objects shaped like a real cluster's (100k pods, 5k nodes, 10k services,
20k ReplicaSets; OVN node-subnets annotations; a share of dual-stack pods), generated lazily so
only the index stays alive, and reports the RSS it added and ns per enrich() call.

    python -m benchmarks.enrich_bench [--pods N] [--nodes N] [--services N] [--calls N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import enrich


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def node_ip(i: int) -> str:
    return f"10.{i // 250}.{i % 250}.10"


def pod_ip(node: int, slot: int) -> str:
    # 10.128.0.0/9 cluster network, one /23 per node (OVN-Kubernetes default host subnet size).
    base = int(ipaddress.IPv4Address("10.128.0.0")) + node * 512
    return str(ipaddress.IPv4Address(base + 3 + slot))


def nodes(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        base = int(ipaddress.IPv4Address("10.128.0.0")) + i * 512
        subnets = {"default": [f"{ipaddress.IPv4Address(base)}/23", f"fd00:10:128:{i:x}::/64"]}
        yield {"metadata": {"name": f"worker-{i:05d}.eu-west-1.compute.internal",
                            "labels": {"topology.kubernetes.io/zone": f"eu-west-1{'abc'[i % 3]}",
                                       "kubernetes.io/hostname": f"worker-{i:05d}"},
                            "annotations": {"k8s.ovn.org/node-subnets": json.dumps(subnets)}},
               "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i)},
                                        {"type": "InternalIP", "address": f"fd00:1::{i:x}"},
                                        {"type": "Hostname", "address": f"worker-{i:05d}"}]}}


def replicasets(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"metadata": {"name": f"deploy-{i:05d}-5d8f7c9b4d", "namespace": f"team-{i % 500:03d}",
                            "uid": rs_uid(i),
                            "ownerReferences": [{"kind": "Deployment", "name": f"deploy-{i:05d}"}]}}


def rs_uid(r: int) -> str:
    """ReplicaSet r's metadata.uid (a UUID's length), which its pods' ownerReferences name."""
    return f"{r:08x}-5d8f-4c9b-8f90-0123456789ab"


def pods(n: int, n_nodes: int, n_rs: int) -> Iterator[dict[str, Any]]:
    per_node = -(-n // n_nodes)
    for i in range(n):
        nd, slot = i % n_nodes, i // n_nodes
        assert slot < per_node
        yield pod(i, nd, pod_ip(nd, slot), n_rs, ipv6=f"fd00:10:128:{nd:x}::{slot + 3:x}" if i % 4 == 0 else None)


def pod(i: int, nd: int, ip: str, n_rs: int, *, ipv6: str | None = None) -> dict[str, Any]:
    """Pod number i on node nd with address ip: nine in ten belong to a Deployment (through a
    ReplicaSet) in a team namespace, one in ten to an infra DaemonSet."""
    r = i % n_rs
    ips = [{"ip": ip}] + ([{"ip": ipv6}] if ipv6 else [])
    ns = f"team-{r % 500:03d}" if i % 10 else f"openshift-monitoring-{i % 7}"
    owner = [{"kind": "ReplicaSet", "name": f"deploy-{r:05d}-5d8f7c9b4d", "uid": rs_uid(r)}] if i % 10 else \
        [{"kind": "DaemonSet", "name": f"ds-{i % 7}"}]
    return {"metadata": {"name": f"deploy-{r:05d}-5d8f7c9b4d-{i:06x}", "namespace": ns,
                         "uid": f"7f3c{i:08x}-1b2c-4d5e-8f90-0123456789ab",
                         "creationTimestamp": "2024-05-01T10:00:00Z", "ownerReferences": owner},
            "spec": {"nodeName": f"worker-{nd:05d}.eu-west-1.compute.internal"},
            "status": {"phase": "Running", "hostIP": node_ip(nd), "podIP": ip, "podIPs": ips,
                       "startTime": "2024-05-01T10:00:02Z"}}


def services(n: int) -> Iterator[dict[str, Any]]:
    base = int(ipaddress.IPv4Address("172.30.0.0"))
    for i in range(n):
        yield {"metadata": {"name": f"svc-{i:05d}", "namespace": f"team-{i % 500:03d}"},
               "spec": {"clusterIP": str(ipaddress.IPv4Address(base + 10 + i)),
                        "clusterIPs": [str(ipaddress.IPv4Address(base + 10 + i))]}}


def time_calls(fn: Any, args: list[tuple[bytes, bytes, bytes, int, int]], repeat: int = 5) -> float:
    """Best-of-`repeat` ns per call over the argument list (loop overhead included)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for s, d, a, t, di in args:
            fn(s, d, a, t, di)
        best = min(best, (time.perf_counter_ns() - t0) / len(args))
    return best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=5_000)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--replicasets", type=int, default=20_000)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    a = ap.parse_args(argv)

    gc.collect()
    before = rss_kb()
    t0 = time.perf_counter()
    e = enrich.Enricher.from_objects(pods=pods(a.pods, a.nodes, a.replicasets), nodes=nodes(a.nodes),
                                     services=services(a.services), replicasets=replicasets(a.replicasets),
                                     config=enrich.EnrichConfig(cluster_name="bench", own_namespace=""))
    build_s = time.perf_counter() - t0
    gc.collect()
    added_mb = (rss_kb() - before) / 1024
    counts = e.stats()["index"]

    rnd = random.Random(4)
    p4 = lambda: ipaddress.IPv4Address(pod_ip(*divmod(rnd.randrange(a.pods), a.nodes)[::-1])).packed  # noqa: E731
    agent = ipaddress.IPv4Address(node_ip(1)).packed
    svc = lambda: ipaddress.IPv4Address(int(ipaddress.IPv4Address("172.30.0.10")) + rnd.randrange(a.services)).packed  # noqa: E731
    miss = lambda: ipaddress.IPv4Address(int(ipaddress.IPv4Address("192.168.0.0")) + rnd.randrange(60000)).packed  # noqa: E731
    t_ms = 1_714_560_000_000
    # The compiled reader's per-address cache filled by lookups of random pods (its slots and
    # their text blocks become memory as they are used), before anything else is allocated.
    for _ in range(100_000):
        e.enrich(p4(), p4(), agent, t_ms, 1)
    gc.collect()
    full_mb = round((rss_kb() - before) / 1024, 1)
    n = a.calls
    cases = {
        "hit_pod_pod": [(p4(), p4(), agent, t_ms, 1) for _ in range(n)],
        "hit_pod_service": [(p4(), svc(), agent, t_ms, 1) for _ in range(n)],
        "hit_pod_external": [(p4(), miss(), agent, t_ms, 1) for _ in range(n)],
        "miss_both": [(miss(), miss(), agent, t_ms, 1) for _ in range(n)],
    }
    # Real traffic has locality (a few thousand busy pods per collector): the same lookups over a
    # 1000-pod working set show the CPU cost without the DRAM misses of uniform random access.
    hot = [(p4(), p4(), agent, t_ms, 1) for _ in range(1000)]
    cases["hit_pod_pod_hot1k"] = [hot[i % 1000] for i in range(n)]
    assert e.enrich(*cases["hit_pod_pod"][0]).count(b"K8S_Name\"") == 2
    assert e.enrich(*cases["miss_both"][0]).count(b"K8S_Name\"") == 0
    empty = [(b"", b"", b"", 0, 0)] * n

    def noop(s: bytes, d: bytes, ag: bytes, t: int, di: int) -> bytes:
        return b""

    loop_ns = time_calls(noop, empty)
    res: dict[str, Any] = {
        "objects": {"pods": a.pods, "nodes": a.nodes, "services": a.services, "replicasets": a.replicasets},
        "index": counts,
        "build_seconds": round(build_s, 2),
        "rss_added_mb": round(added_mb, 1),
        "python_call_loop_ns": round(loop_ns, 1),
        "compiled": e.index.compiled,
        "enrich_ns": {k: round(time_calls(e.enrich, v), 1) for k, v in cases.items()},
        "rss_added_cache_full_mb": full_mb,
        "enrich_ns_python_reference": {k: round(time_calls(e.index.enrich, v), 1) for k, v in cases.items()},
        "python": sys.version.split()[0],
    }
    if a.json:
        print(json.dumps(res))
    else:
        print(f"index of {a.pods} pods, {a.nodes} nodes, {a.services} services, {a.replicasets} replicasets "
              f"built in {res['build_seconds']} s: {counts['addresses']} addresses")
        print(f"RSS added: {res['rss_added_mb']} MB; with the per-address cache full: {full_mb} MB")
        print(f"enrich() ns/call, loop included (a no-op Python call in the same loop: "
              f"{res['python_call_loop_ns']} ns); compiled reader built: {res['compiled']}")
        print(f"  {'case':18s} {'enrich()':>9s} {'python ref':>11s}")
        for k, v in res["enrich_ns"].items():
            print(f"  {k:18s} {v:9.1f} {res['enrich_ns_python_reference'][k]:11.1f}")
    return res


if __name__ == "__main__":
    main()
