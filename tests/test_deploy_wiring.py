"""How an operator wires OVN-Kubernetes' flow export to flowscope (deploy/README.md), checked
against what the real components do and accept.

tests/test_deploy.py validates the manifests offline; what it cannot see is the part outside
them: the ovnkube-node flags and variables and the OpenShift Cluster Network Operator fields the
README tells operators to set, the ports in those commands, and what Open vSwitch does with the
values ovnkube-node writes. The facts below come from the projects themselves:

- ovn-kubernetes `dist/images/ovnkube.sh` (OVN_* variable -> ovnkube flag), `go-controller/pkg/
  config/config.go` (MonitoringConfig `[monitoring]`: netflow-targets, sflow-targets,
  ipfix-targets; IPFIXConfig `[ipfix]`: sampling, cache-active-timeout, cache-max-flows),
  `go-controller/pkg/node/node.go` setOVSFlowTargets (IPFIX row: targets and
  cache_active_timeout always, cache_max_flows and sampling only when not 0; sFlow row: agent
  and targets only; NetFlow row: targets and active_timeout=60), the Helm chart's
  `global.*Targets` / `global.ipfix*` values, docs/observability flow export page ("If 0,
  caching is disabled" for --ipfix-cache-max-flows, default 0).
- openshift/api operator/v1 types_network.go: ExportNetworkFlows {netFlow, sFlow, ipfix}, each
  `collectors []IPPort`, IPPort an IPv4 address and port (the CRD's pattern, below).
- Open vSwitch ofproto-dpif-ipfix.c ipfix_cache_update: a new cache entry beyond
  cache_max_flows expires the whole cache at once, so with cache_max_flows 0 (ovnkube's default)
  every sampled packet is exported as its own record, whatever cache_active_timeout says;
  dpif_ipfix_bridge_sample counts each sampled packet as UINT32_MAX / probability packets, so
  OVS's IPFIX Bytes/Packets are already scaled to the rate (tests/test_ovs.py checks that too).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import random
import re
import sys
import time
import types
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.test_deploy import KUSTOMIZE, SCHEMES_PORTS, container, one

README = ROOT / "deploy" / "README.md"

# ovnkube.sh: the variable each flag is read from (the ovnkube-node container's environment).
OVNKUBE_FLAG_ENV = {
    "--ipfix-targets": "OVN_IPFIX_TARGETS",
    "--sflow-targets": "OVN_SFLOW_TARGETS",
    "--netflow-targets": "OVN_NETFLOW_TARGETS",
    "--ipfix-sampling": "OVN_IPFIX_SAMPLING",
    "--ipfix-cache-max-flows": "OVN_IPFIX_CACHE_MAX_FLOWS",
    "--ipfix-cache-active-timeout": "OVN_IPFIX_CACHE_ACTIVE_TIMEOUT",
}
# config.go: the ovnkube config file's sections and keys (gcfg tags) for flow export.
OVNKUBE_CONFIG_KEYS = {
    "monitoring": {"netflow-targets", "sflow-targets", "ipfix-targets"},
    "ipfix": {"sampling", "cache-active-timeout", "cache-max-flows"},
}
# The ovn-kubernetes Helm chart's values for the same settings.
OVNKUBE_HELM_KEYS = {"global.netFlowTargets", "global.sflowTargets", "global.ipfixTargets",
                     "global.ipfixSampling", "global.ipfixCacheMaxFlows", "global.ipfixCacheActiveTimeout"}
# Which protocol each target variable / CNO field sends, as flowscope's listener schemes.
TARGET_SCHEME = {"OVN_IPFIX_TARGETS": "ipfix", "OVN_SFLOW_TARGETS": "sflow", "OVN_NETFLOW_TARGETS": "netflow"}
CNO_SCHEME = {"ipfix": "ipfix", "sFlow": "sflow", "netFlow": "netflow"}
# openshift/api operator/v1 IPPort (kubebuilder pattern): IPv4 only, port 1-65535.
CNO_IPPORT = re.compile(
    r"^(([0-9]|[0-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])\.){3}([0-9]|[0-9][0-9]|1[0-9][0-9]|2[0-4][0-9]"
    r"|25[0-5]):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$")
SERVICE_IP = "172.30.41.7"  # what `get service flowscope -o jsonpath='{.spec.clusterIP}'` prints


def readme() -> str:
    return README.read_text()


def section(title: str) -> str:
    text = readme()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def service_ports() -> dict[str, int]:
    """Listener scheme -> the UDP port exporters must target (Service port = container port)."""
    svc = one("base", "Service", "flowscope")
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    host = {p["name"]: p["hostPort"] for p in container("overlays/daemonset")["ports"] if "hostPort" in p}
    assert {k: host[k] for k in ports} == ports == SCHEMES_PORTS
    return ports


# ------------------------------------------------------------------------------------------------
# Upstream OVN-Kubernetes: flags, variables, config file, Helm values


def test_readme_ovnkube_flags_are_upstreams() -> None:
    """The flag/variable table is ovnkube.sh's mapping, and says what 0 means for the cache size
    (ovn-kubernetes: "If 0, caching is disabled"; OVS: every sampled packet its own record)."""
    rows = re.findall(r"^\| `(--[a-z-]+)` \| `([A-Z_]+)` \| (.*) \|$", section("Wiring OVN-Kubernetes (upstream)"),
                      flags=re.M)
    assert {f: e for f, e, _ in rows} == OVNKUBE_FLAG_ENV
    meaning = {f: m for f, _, m in rows}
    assert "unlimited" not in meaning["--ipfix-cache-max-flows"]
    assert "disabled" in meaning["--ipfix-cache-max-flows"]


def test_readme_ovnkube_config_file_sections() -> None:
    """The config-file example puts each key in the section ovnkube reads it from: the targets
    in [monitoring], sampling and the cache settings in [ipfix] (under [monitoring] they are
    unknown keys)."""
    blocks = code_blocks(section("Wiring OVN-Kubernetes (upstream)"), "ini")
    assert blocks, "no ovnkube config file example"
    seen: dict[str, set[str]] = {}
    for block in blocks:
        current = None
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if m := re.fullmatch(r"\[([a-z-]+)\]", line):
                current = m.group(1)
                continue
            key = line.split("=", 1)[0].strip()
            assert current in OVNKUBE_CONFIG_KEYS, f"{line!r} outside a flow-export section"
            assert key in OVNKUBE_CONFIG_KEYS[current], f"{key} is not a key of [{current}]"
            seen.setdefault(current, set()).add(key)
    assert "ipfix-targets" in seen.get("monitoring", set()) and "sampling" in seen.get("ipfix", set())


def test_readme_helm_values_are_the_charts() -> None:
    named = set(re.findall(r"`(global\.[A-Za-z]+)", section("Wiring OVN-Kubernetes (upstream)")))
    assert named, "the README names no Helm value"
    assert named <= OVNKUBE_HELM_KEYS, named - OVNKUBE_HELM_KEYS


def test_readme_targets_use_the_service_ports() -> None:
    """Every OVN_*_TARGETS=... in the README sends its protocol to that protocol's port."""
    ports = service_ports()
    found = re.findall(r"\b(OVN_(?:IPFIX|SFLOW|NETFLOW)_TARGETS)=[^\s:]*:(\d+)", readme())
    assert {v for v, _ in found} == set(TARGET_SCHEME)
    for var, port in found:
        assert int(port) == ports[TARGET_SCHEME[var]], f"{var}=...:{port}"


# ------------------------------------------------------------------------------------------------
# OpenShift: the Cluster Network Operator's exportNetworkFlows


def _cno_patches() -> list[dict[str, Any]]:
    """The JSON of every `oc patch network.operator cluster --type=merge -p "..."` in the README,
    with $IP as the Service's ClusterIP, plus the overlay's patch file after the README's sed."""
    text = section("OpenShift")
    out = []
    for raw in re.findall(r'oc patch network\.operator cluster --type=merge[\s\\]+-p "(.*?)"\s*$', text, flags=re.M):
        out.append(json.loads(raw.replace('\\"', '"').replace("$IP", SERVICE_IP)))
    import yaml

    sed = re.search(r'sed "s/(\w+)/\$IP/" (\S+) >', text)
    assert sed, "the README's sed for the overlay's patch file"
    assert (ROOT / sed.group(2)) == KUSTOMIZE / "overlays/openshift/network-operator-patch.yaml"
    out.append(yaml.safe_load((ROOT / sed.group(2)).read_text().replace(sed.group(1), SERVICE_IP)))
    return out


def test_openshift_patches_are_valid_for_the_network_operator() -> None:
    ports = service_ports()
    patches = _cno_patches()
    assert len(patches) >= 4
    kinds = set()
    for p in patches:
        assert list(p) == ["spec"] and list(p["spec"]) == ["exportNetworkFlows"], p
        for field, cfg in p["spec"]["exportNetworkFlows"].items():
            assert field in CNO_SCHEME, f"exportNetworkFlows.{field} is not a CNO field"
            assert list(cfg) == ["collectors"] and 1 <= len(cfg["collectors"]) <= 10
            for c in cfg["collectors"]:
                assert CNO_IPPORT.match(c), f"{c!r} is refused by the CRD (IPv4:port only)"
                assert int(c.rsplit(":", 1)[1]) == ports[CNO_SCHEME[field]], f"{field} -> {c}"
            kinds.add(field)
    assert kinds == set(CNO_SCHEME)


def test_openshift_collectors_are_ipv4_only() -> None:
    """The CRD takes no IPv6 collector: the README must not send IPv6-primary OpenShift clusters
    down a path the API server refuses without saying so."""
    assert not CNO_IPPORT.match("[fd02::1234]:4739") and not CNO_IPPORT.match("fd02::1234:4739")
    assert "IPv4" in section("OpenShift")


# ------------------------------------------------------------------------------------------------
# What a consumer does with Bytes and Sampling


def _run_consumer(records: list[dict[str, Any]]) -> list[str]:
    """Run the README's Python consumer on `records` (aiokafka replaced by a stub)."""
    code = next(b for b in code_blocks(section("Consuming the topic"), "python") if "AIOKafkaConsumer" in b)

    class Msg:
        def __init__(self, value: bytes) -> None:
            self.value = value

    class Consumer:
        def __init__(self, *topics: str, **kw: Any) -> None:
            pass

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

        def __aiter__(self):
            async def gen():
                for r in records:
                    yield Msg(json.dumps(r).encode())
            return gen()

    stub = types.ModuleType("aiokafka")
    stub.AIOKafkaConsumer = Consumer  # type: ignore[attr-defined]
    out = io.StringIO()
    saved = sys.modules.get("aiokafka")
    sys.modules["aiokafka"] = stub
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "deploy/README.md", "exec"), {"__name__": "readme", "__builtins__": builtins})
    finally:
        if saved is None:
            sys.modules.pop("aiokafka", None)
        else:
            sys.modules["aiokafka"] = saved
    return out.getvalue().splitlines()


def test_readme_consumer_estimates_volume_per_protocol() -> None:
    """One sampled 100-byte packet at 1:400: OVS's IPFIX record already says 40000 bytes (OVS
    counts a sampled packet as 400), an sFlow sample says 100 bytes with Sampling 400. Both are
    an estimated 40000 bytes; multiplying the IPFIX one by Sampling claims 16 MB."""
    base = {"SrcAddr": "10.128.0.10", "DstAddr": "10.128.0.11", "Proto": 17, "Sampling": 400,
            "SrcK8S_Namespace": "shop", "SrcK8S_Name": "a", "DstK8S_Namespace": "shop", "DstK8S_Name": "b"}
    lines = _run_consumer([{**base, "FlowProtocol": "ipfix", "Bytes": 40000, "Packets": 400},
                           {**base, "FlowProtocol": "sflow5", "Bytes": 100, "Packets": 1}])
    assert [ln.split()[-1] for ln in lines] == ["40000", "40000"], lines


# ------------------------------------------------------------------------------------------------
# What OVS does with ovnkube-node's default IPFIX settings (sizing)


@pytest.mark.root
@pytest.mark.slow
def test_ovnkube_default_ipfix_cache_exports_every_sampled_packet() -> None:
    """ovnkube-node writes cache_active_timeout (60) and, with --ipfix-cache-max-flows left at its
    default 0, no cache_max_flows: OVS then exports each sampled packet as a record of its own
    right away, not one record per flow per cache_active_timeout. With a cache size the same
    packets become one record per direction. (The sizing advice in deploy/README.md.)"""
    from tests.support import netns as N
    from tests.support import ovs as O
    from tests.support.owners import run_dir

    decoders = pytest.importorskip("decoders")
    from collector.pcap import iter_udp

    reason = N.root_skip_reason("ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool", "ethtool", "tcpdump")
    if reason:
        pytest.skip(reason)
    with run_dir("fs-wiring-") as d:
        ns = N.NetNS()
        ovs = O.OVS(ns, d)
        counts: dict[str, dict[int, int]] = {}
        try:
            ovs.start()
            br = ovs.add_bridge("br-int")
            a, b = ovs.add_pod(br, 1), ovs.add_pod(br, 2)
            for name, extra in (("ovnkube default", []), ("cache_max_flows=100", ["cache_max_flows=100"])):
                port = random.randint(20000, 29999)
                N.udp_sink(ns, "127.0.0.1", port)
                cap_path = d / f"{len(counts)}.pcap"
                cap = N.Capture(ns, cap_path, bpf=f"udp and dst port {port}")
                try:
                    # setOVSFlowTargets: targets, cache_active_timeout, then sampling when not 0
                    # (1 here, so that the packet count is exact).
                    ovs.vsctl("--", "--id=@ipfix", "create", "ipfix", f'targets="127.0.0.1:{port}"',
                              "cache_active_timeout=60", *extra, "sampling=1",
                              "--", "set", "bridge", br, "ipfix=@ipfix")
                    ovs.appctl("revalidator/purge")
                    time.sleep(1.0)
                    O.ipfix_live([(ovs, br)], lambda: O.traffic(a, "udp-send", b.ipv4, 5998, 1, 8, 41998, 0))
                    sport = 42000 + len(counts)
                    O.traffic(a, "udp-send", b.ipv4, 5300, 10, 100, sport, 0.01)
                    time.sleep(3.0)  # far less than cache_active_timeout
                finally:
                    try:
                        ovs.clear_exports(br)  # destroys the exporter: a cache still held is flushed
                        time.sleep(1.0)
                    finally:
                        cap.stop()
                dec = decoders.Decoder(decoders.DecoderConfig(default_sampling=0))
                per_dir: dict[int, int] = {}
                for dg in iter_udp(cap_path):
                    for f in dec.decode(dg.payload, dg.src, dg.sport, dg.ts).to_dicts():
                        if f.get("SrcPort") == sport and f.get("DstPort") == 5300:
                            per_dir[f.get("FlowDirection", -1)] = per_dir.get(f.get("FlowDirection", -1), 0) + 1
                counts[name] = per_dir
        finally:
            ovs.stop()
            ns.close()
    # Input and output sampling each report the 10 packets.
    assert counts["ovnkube default"] and all(n >= 8 for n in counts["ovnkube default"].values()), counts
    assert counts["cache_max_flows=100"] and all(n <= 2 for n in counts["cache_max_flows=100"].values()), counts


# ------------------------------------------------------------------------------------------------
# API-server and scheduler rules the OpenAPI schemas do not express (kubernetes-validate passes
# objects the API server refuses, or that it accepts but that route exporters wrongly)

OVERLAYS = ("base", "overlays/daemonset", "overlays/openshift", "overlays/prometheus")
IANA_SVC_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # and no "--"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rules_the_schemas_do_not_check(overlay: str) -> None:
    from tests.test_deploy import objs, render, workload

    for o in render(overlay):
        name = o["metadata"]["name"]
        assert len(name) <= 253 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
        for k, v in o["metadata"].get("labels", {}).items():
            assert len(v) <= 63 and re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", v), (k, v)
    # Container port names: IANA_SVC_NAME, unique (probes and Services refer to them by name).
    pod = workload(overlay)["spec"]["template"]["spec"]
    names = [p["name"] for c in pod["containers"] for p in c.get("ports", [])]
    assert len(names) == len(set(names))
    for n in names:
        assert IANA_SVC_NAME.match(n) and "--" not in n, n
    for svc in objs(overlay, "Service"):
        spec = svc["spec"]
        # Service names are DNS-1035 labels.
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", svc["metadata"]["name"])
        # externalTrafficPolicy is refused on a ClusterIP Service; internalTrafficPolicy Local
        # would drop the exports of every node without a collector replica.
        assert spec.get("type", "ClusterIP") == "ClusterIP" and "externalTrafficPolicy" not in spec
        assert spec.get("internalTrafficPolicy", "Cluster") == "Cluster"
        assert not spec.get("publishNotReadyAddresses")
        if any(p["protocol"] == "UDP" for p in spec["ports"]):
            # One exporter on one replica across its source-port changes (deploy/README.md
            # "Scaling out"): its templates live there.
            assert spec.get("sessionAffinity") == "ClientIP"
    for pdb in objs(overlay, "PodDisruptionBudget"):
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    w = workload(overlay)
    if w["kind"] == "DaemonSet" and any("hostPort" in p for c in pod["containers"] for p in c["ports"]):
        # A surge pod cannot bind the node's ports while the old one holds them: the rollout
        # would stall on every node.
        assert w["spec"]["updateStrategy"].get("rollingUpdate", {}).get("maxSurge", 0) in (0, "0", "0%")
        assert pod.get("hostNetwork") is True and pod.get("dnsPolicy") == "ClusterFirstWithHostNet"
