"""A simulated cluster for enriched harness runs: the tests' fake Kubernetes API server
(tests/support/fake_kube.py, the real list/watch wire protocol) serving a Pod for every address
the load generator uses, on 512 Nodes laid out as OVN-Kubernetes does (/23 pod subnets in
10.128.0.0/14), with their ReplicaSets and some Services. flowscope's informers list and
watch it like a real API server, so `--enrich` runs pay the real per-flow enrichment cost.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import enrich_bench as E
from collector.util import run_child

BASE = int(ipaddress.IPv4Address("10.128.0.0"))
NODES = 512          # loadgen spreads its pods over 512 /23 node subnets
REPLICASETS = 600
SERVICES = 1000


def loadgen_pods(loadgen: Path, extra: list[str]) -> list[str]:
    """The pod addresses a loadgen run with these options uses (its --pods/--seed matter)."""
    keep: list[str] = []
    it = iter(extra)
    for a in it:  # only the options that shape the pod set
        if a in ("--pods", "--seed"):
            keep += [a, next(it)]
    out = run_child([str(loadgen), "--print-pods", *keep], check=True, capture_output=True, text=True).stdout
    return sorted(set(out.split()), key=lambda s: int(ipaddress.IPv4Address(s)))


def objects(pod_ips: list[str], *, pods: int = 0, nodes: int = NODES, services: int = SERVICES,
            agents: Sequence[str] = (), unmatched: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The cluster's objects: a Pod for each of `pod_ips` (on the node whose /23 holds it), then
    pods flows never name, spread over the nodes, until there are `pods` (issue 4's sizing: 100k
    pods, 5k nodes, 10k services), so that the index is the size of a large cluster's. Node i
    also has address agents[i] (the load generator's exporters sending from them are nodes).
    unmatched: no Pod holds any of `pod_ips` (the same count of pods, elsewhere in the nodes'
    subnets): every flow's lookups miss, and its records grow only by the fields enrichment adds
    whatever the addresses (what enrichment's lookups cost, apart from the bytes of identities)."""
    nodes = max(nodes, NODES)
    out = []
    used = set()
    for i, ip in enumerate(pod_ips):
        off = int(ipaddress.IPv4Address(ip)) - BASE
        if not 0 <= off < NODES * 512:
            raise ValueError(f"{ip} is outside the simulated cluster network")
        used.add(off)
        if not unmatched:
            out.append(E.pod(i, off // 512, ip, REPLICASETS))
    pods = max(pods, len(pod_ips))   # (unmatched: as many pods as when they hold pod_ips)
    slot = 0
    while len(out) < pods:
        for nd in range(nodes):
            off = nd * 512 + 3 + slot
            if off not in used and len(out) < pods:
                out.append(E.pod(len(out), nd, str(ipaddress.IPv4Address(BASE + off)), REPLICASETS))
        slot += 1
        if slot > 500:
            raise ValueError(f"{pods} pods do not fit {nodes} nodes' /23 subnets")
    node_objs = list(E.nodes(nodes))
    if len(agents) > len(node_objs):
        raise ValueError(f"{len(agents)} exporters, {len(node_objs)} nodes")
    for nd, agent in zip(node_objs, agents, strict=False):
        nd["status"]["addresses"].insert(0, {"type": "InternalIP", "address": agent})
    return {"nodes": node_objs, "replicasets": list(E.replicasets(REPLICASETS)),
            "services": list(E.services(services)), "pods": out}


class Cluster:
    """The fake API server with the objects loaded, and a kubeconfig pointing at it."""

    def __init__(self, pod_ips: list[str], workdir: str, **size: Any) -> None:
        from tests.support.fake_kube import FakeKube

        self.kube = FakeKube().start()
        self.counts = {}
        for kind, objs in objects(pod_ips, **size).items():
            for o in objs:
                self.kube.add(kind, o)
            self.counts[kind] = len(objs)
        self.kubeconfig = self.kube.write_kubeconfig(Path(workdir) / "kubeconfig.json")

    def flowscope_args(self) -> list[str]:
        return ["--enrich", "true", "--kubeconfig", str(self.kubeconfig)]

    def stop(self) -> None:
        self.kube.stop()
