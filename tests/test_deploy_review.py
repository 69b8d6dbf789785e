"""What the rendered manifests do on a real cluster that their schemas and tests/test_deploy.py do
not show: the environment the kubelet gives the pod beside the manifest's own `env:`, and how the
PodDisruptionBudget treats pods that readiness has taken out of service.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ROOT
from tests.test_deploy import OVERLAYS, container, objs, workload


def kubelet_service_env(services: list[dict[str, Any]], cluster_ip: str = "172.30.41.7") -> dict[str, str]:
    """The variables the kubelet adds for the Services of the pod's namespace when the pod's
    enableServiceLinks is unset or true: kubernetes pkg/kubelet/envvars/envvars.go FromServices
    (NAME_SERVICE_HOST, NAME_SERVICE_PORT, NAME_SERVICE_PORT_<PORTNAME>) and makeLinkVariables
    (the Docker link variables NAME_PORT, NAME_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]); NAME is
    the Service's name upper-cased with '-' as '_'. Headless Services get none."""
    def var(s: str) -> str:
        return s.upper().replace("-", "_")

    env: dict[str, str] = {}
    for svc in services:
        spec = svc["spec"]
        if spec.get("clusterIP") == "None":
            continue
        name, ports = var(svc["metadata"]["name"]), spec["ports"]
        env[f"{name}_SERVICE_HOST"] = cluster_ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[f"{name}_SERVICE_PORT_{var(p['name'])}"] = str(p["port"])
        for i, p in enumerate(ports):
            proto = p.get("protocol", "TCP")
            url = f"{proto.lower()}://{cluster_ip}:{p['port']}"
            if i == 0:
                env[f"{name}_PORT"] = url
            prefix = f"{name}_PORT_{p['port']}_{proto.upper()}"
            env.update({prefix: url, f"{prefix}_PROTO": proto.lower(), f"{prefix}_PORT": str(p["port"]),
                        f"{prefix}_ADDR": cluster_ip})
    return env


def test_kubelet_service_env_is_what_the_kubelet_writes() -> None:
    """The helper above on a known case (the names Kubernetes' own docs show for a Service
    `redis-primary` on TCP 6379)."""
    env = kubelet_service_env([{"metadata": {"name": "redis-primary"},
                                "spec": {"ports": [{"port": 6379, "protocol": "TCP"}]}}], "10.0.0.11")
    assert env == {
        "REDIS_PRIMARY_SERVICE_HOST": "10.0.0.11", "REDIS_PRIMARY_SERVICE_PORT": "6379",
        "REDIS_PRIMARY_PORT": "tcp://10.0.0.11:6379", "REDIS_PRIMARY_PORT_6379_TCP": "tcp://10.0.0.11:6379",
        "REDIS_PRIMARY_PORT_6379_TCP_PROTO": "tcp", "REDIS_PRIMARY_PORT_6379_TCP_PORT": "6379",
        "REDIS_PRIMARY_PORT_6379_TCP_ADDR": "10.0.0.11"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_environment_holds_no_stray_flowscope_variables(overlay: str) -> None:
    """The Services are named `flowscope` and `flowscope-metrics`, so with service links on (the
    default) the kubelet puts FLOWSCOPE_SERVICE_HOST, FLOWSCOPE_PORT, FLOWSCOPE_PORT_4739_UDP_ADDR,
    FLOWSCOPE_METRICS_PORT, ... (about 30) into the collector's environment: the prefix of its own
    options. Every start then logs an "ignoring unknown variable" warning for each (one suggests
    FLOWSCOPE_METRICS_ADDR for FLOWSCOPE_METRICS_PORT), and so does the `flowscope config` that
    deploy/README.md runs in the pod; an option ever named like one of them (`port`,
    `service_host`) would be set by the kubelet behind the ConfigMap's back, contrary to the
    README's "nothing shadows the file". The collector needs no service link (the API server is
    KUBERNETES_SERVICE_HOST, which the kubelet sets either way; Kafka is a DNS name)."""
    from collector.config import unknown_env

    pod = workload(overlay)["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value", "") for e in container(overlay).get("env", [])}
    if pod.get("enableServiceLinks", True):
        env = {**kubelet_service_env(objs(overlay, "Service")), **env}
    assert unknown_env(env) == [], f"{overlay}: the kubelet would set these in the collector's environment"


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "overlays/daemonset"])
def test_pdb_does_not_block_drains_while_the_collectors_are_unready(overlay: str) -> None:
    """Readiness (/readyz) follows Kafka: "when the brokers stall, every replica turns unready
    together" (deploy/README.md "Probes"). With the PodDisruptionBudget's default
    unhealthyPodEvictionPolicy (IfHealthyBudget) an unready pod may be evicted only while the
    budget is met (currentHealthy >= desiredHealthy), so during a Kafka outage minAvailable 1
    with both replicas unready refuses every eviction: `kubectl drain` and node upgrades hang on
    the flowscope pods until Kafka returns, although evicting an unready collector disrupts
    nothing. AlwaysAllow (Kubernetes docs "Unhealthy Pod Eviction Policy", GA in 1.31) lets
    unready pods go and still protects ready ones."""
    probe = container(overlay)["readinessProbe"]["httpGet"]["path"]
    assert probe == "/readyz"
    for pdb in objs(overlay, "PodDisruptionBudget"):
        assert pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", pdb["metadata"]["name"]


def test_the_shipped_memory_bounds_fit_the_pods_memory_limit() -> None:
    """The collector forgets exporters and refuses templates past its bounds, counted; the pod's
    memory limit must be above what those bounds let it hold, or a flood of exporters (the
    shipped config allows any) gets the pod OOM-killed before the bounds act. The default
    max_exporter_state alone is 1 GiB, the base limit. What the bounds allow at typical sizes
    (about 12 bytes a counted template field, docs/collector.md), plus the queue, the batches, an index of 100k
    pods (README.md's figure, enrich_bench's: deploy/README's Sizing said 185 MB, a measurement
    of before the index grew, and this test used it too; both now take the README's) and Python,
    must stay under the limit."""
    import re

    from collector.config import parse_size
    from tests.test_deploy import shipped_config

    mib = 1024 * 1024
    measured = re.search(r"The index with its answer cache full takes \*\*([\d.]+) MB\*\*",
                         (ROOT / "README.md").read_text())
    assert measured, "README.md's Performance section gives the 100k-pod index's memory"
    index_mb = float(measured.group(1))
    assert f"{measured.group(1)} MB for 100k pods" in (ROOT / "deploy" / "README.md").read_text()
    cfg = shipped_config()
    k = cfg["kafka"]
    state = int(cfg.get("max_exporter_state", 1024**3))
    fields = int(cfg.get("max_template_fields", 4_000_000))
    need = (int(cfg["queue_bytes"]) + int(k["batch_bytes"]) * int(k["connections"]) + state + 13 * fields
            + int(index_mb * mib) + 50 * mib)
    for overlay in OVERLAYS:
        limit = parse_size(container(overlay)["resources"]["limits"]["memory"].replace("Gi", "GiB").replace("Mi", "MiB"))
        assert need < limit, (overlay, need / mib, limit / mib)
