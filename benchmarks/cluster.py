"""A simulated cluster for enriched harness runs: the tests' fake Kubernetes API server
(tests/support/fake_kube.py, the real list/watch wire protocol) serving a Pod for every address
the load generator uses, on 512 Nodes laid out as OVN-Kubernetes does (/23 pod subnets in
10.128.0.0/14), with their ReplicaSets and some Services. flowscope's informers list and
watch it like a real API server, so `--enrich` runs pay the real per-flow enrichment cost.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

from benchmarks import enrich_bench as E

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
    out = subprocess.run([str(loadgen), "--print-pods", *keep], check=True, capture_output=True, text=True).stdout
    return sorted(set(out.split()), key=lambda s: int(ipaddress.IPv4Address(s)))


def objects(pod_ips: list[str]) -> dict[str, list[dict[str, Any]]]:
    pods = []
    for i, ip in enumerate(pod_ips):
        off = int(ipaddress.IPv4Address(ip)) - BASE
        if not 0 <= off < NODES * 512:
            raise ValueError(f"{ip} is outside the simulated cluster network")
        pods.append(E.pod(i, off // 512, ip, REPLICASETS))
    return {"nodes": list(E.nodes(NODES)), "replicasets": list(E.replicasets(REPLICASETS)),
            "services": list(E.services(SERVICES)), "pods": pods}


class Cluster:
    """The fake API server with the objects loaded, and a kubeconfig pointing at it."""

    def __init__(self, pod_ips: list[str], workdir: str) -> None:
        from tests.support.fake_kube import FakeKube

        self.kube = FakeKube().start()
        self.counts = {}
        for kind, objs in objects(pod_ips).items():
            for o in objs:
                self.kube.add(kind, o)
            self.counts[kind] = len(objs)
        self.kubeconfig = self.kube.write_kubeconfig(Path(workdir) / "kubeconfig.json")

    def flowscope_args(self) -> list[str]:
        return ["--enrich", "true", "--kubeconfig", str(self.kubeconfig)]

    def stop(self) -> None:
        self.kube.stop()
