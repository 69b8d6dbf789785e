"""The deployment artefacts under deploy/ agree with the program and with Kubernetes.

What can drift and is checked here: every kustomize overlay builds (`kubectl kustomize`), every
rendered object is valid for the Kubernetes API schemas (kubernetes-validate, offline; the two
CRD-typed kinds against minimal schemas written below), the ClusterRole grants exactly the
resources the enrichment informers list and watch (enrich.informer.RESOURCES), the ConfigMap's
YAML uses only keys `flowscope config` prints and loads through collector.config, the ports and
probe paths in the manifests are the ones the program listens on and answers (checked against a
running `flowscope run` started with the shipped config), the DaemonSet overlay's pod is the base
Deployment's pod, and the Dockerfile's user, entry point and ports. No Docker engine is needed:
the Dockerfile is checked statically.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ["base", "overlays/daemonset", "overlays/openshift", "overlays/prometheus"]
WORKLOADS = ("Deployment", "DaemonSet")
SCHEMES_PORTS = {"netflow": 2055, "ipfix": 4739, "sflow": 6343}
K8S_VERSION = "1.31.0"  # a version every supported cluster has reached; the schemas ship offline

# CRD-typed kinds have no schema in kubernetes-validate: these minimal schemas check what the
# manifests rely on (field names and types as in the CRDs' OpenAPI schemas).
_STR_LIST = {"type": "array", "items": {"type": "string"}}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "security.openshift.io/v1/SecurityContextConstraints": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "allowHostDirVolumePlugin", "allowHostIPC",
                     "allowHostNetwork", "allowHostPID", "allowHostPorts", "allowPrivilegedContainer",
                     "readOnlyRootFilesystem", "runAsUser", "seLinuxContext", "fsGroup", "supplementalGroups"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "security.openshift.io/v1"}, "kind": {"const": "SecurityContextConstraints"},
            "metadata": {"type": "object", "required": ["name"], "not": {"required": ["namespace"]}},
            **{k: {"type": "boolean"} for k in (
                "allowHostDirVolumePlugin", "allowHostIPC", "allowHostNetwork", "allowHostPID", "allowHostPorts",
                "allowPrivilegeEscalation", "allowPrivilegedContainer", "readOnlyRootFilesystem",
                "defaultAllowPrivilegeEscalation")},
            **{k: _STR_LIST for k in ("allowedCapabilities", "defaultAddCapabilities", "requiredDropCapabilities",
                                       "seccompProfiles", "users", "groups", "allowedUnsafeSysctls",
                                       "forbiddenSysctls")},
            "volumes": {"type": "array", "items": {"enum": [
                "awsElasticBlockStore", "azureDisk", "azureFile", "cephFS", "cinder", "configMap", "csi",
                "downwardAPI", "emptyDir", "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk",
                "gitRepo", "glusterfs", "hostPath", "iscsi", "nfs", "persistentVolumeClaim", "photonPersistentDisk",
                "portworxVolume", "projected", "quobyte", "rbd", "scaleIO", "secret", "storageOS",
                "vsphere", "image", "none", "*"]}},
            "priority": {"type": ["integer", "null"]},
            "runAsUser": {"type": "object", "properties": {"type": {"enum": [
                "MustRunAs", "MustRunAsRange", "MustRunAsNonRoot", "RunAsAny"]}}, "required": ["type"]},
            "seLinuxContext": {"type": "object", "properties": {"type": {"enum": ["MustRunAs", "RunAsAny"]}},
                               "required": ["type"]},
            "fsGroup": {"type": "object", "properties": {"type": {"enum": ["MustRunAs", "RunAsAny"]}}},
            "supplementalGroups": {"type": "object", "properties": {"type": {"enum": ["MustRunAs", "RunAsAny"]}}},
        },
    },
    "monitoring.coreos.com/v1/ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": {"type": "object", "required": ["name", "namespace"]},
            "spec": {
                "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object", "properties": {"matchLabels": {
                        "type": "object", "additionalProperties": {"type": "string"}}}},
                    "namespaceSelector": {"type": "object", "properties": {
                        "matchNames": _STR_LIST, "any": {"type": "boolean"}}, "additionalProperties": False},
                    "jobLabel": {"type": "string"},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"}, "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scheme": {"enum": ["http", "https"]}}}},
                },
            },
        },
    },
}


# ------------------------------------------------------------------------------------------------
# Rendering


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl not installed (Debian package kubectl; `make deps` installs it as root)")
    return path


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize <overlay>` as a list of objects (cached per session)."""
    if overlay not in _RENDERED:
        p = subprocess.run([_kubectl(), "kustomize", str(KUSTOMIZE / overlay)], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, f"kubectl kustomize {overlay} failed:\n{p.stderr}"
        _RENDERED[overlay] = [d for d in yaml.safe_load_all(p.stdout) if d]
    return _RENDERED[overlay]


def objs(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in render(overlay) if o["kind"] == kind]


def one(overlay: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs(overlay, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workload(overlay: str) -> dict[str, Any]:
    found = [o for o in render(overlay) if o["kind"] in WORKLOADS]
    assert len(found) == 1, f"{overlay}: expected one Deployment or DaemonSet, found {len(found)}"
    return found[0]


def container(overlay: str) -> dict[str, Any]:
    cs = workload(overlay)["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1
    return cs[0]


def shipped_config(overlay: str = "base") -> dict[str, Any]:
    cm = [o for o in objs(overlay, "ConfigMap") if o["metadata"]["name"].startswith("flowscope-config")]
    assert len(cm) == 1
    return yaml.safe_load(cm[0]["data"]["config.yaml"])


@pytest.fixture(scope="module")
def effective_default_config() -> dict[str, Any]:
    """What `flowscope config` prints with no options: the key set the manifests may use."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/nonexistent"}
    p = subprocess.run([sys.executable, "-m", "collector.cli", "config"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return yaml.safe_load(p.stdout)


# ------------------------------------------------------------------------------------------------
# Building and schema validation


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds(overlay: str) -> None:
    docs = render(overlay)
    kinds = {o["kind"] for o in docs}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap"} <= kinds
    assert len(kinds & set(WORKLOADS)) == 1
    # Everything namespaced lands in the one namespace.
    ns = one(overlay, "Namespace")["metadata"]["name"]
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "SecurityContextConstraints"}
    for o in docs:
        if o["kind"] not in cluster_scoped:
            assert o["metadata"].get("namespace") == ns, f"{o['kind']}/{o['metadata']['name']} not in {ns}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_kubernetes_schemas(overlay: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extras)")
    import jsonschema

    checked = 0
    for o in render(overlay):
        key = f"{o['apiVersion']}/{o['kind']}"
        if key in CRD_SCHEMAS:
            # A CRD-typed object: no upstream schema offline; the minimal schema above instead.
            jsonschema.validate(o, CRD_SCHEMAS[key])
        else:
            try:
                kv.validate(o, K8S_VERSION, strict=True)
            except kv.ValidationError as e:
                raise AssertionError(f"{overlay}: {key} {o['metadata'].get('name')}: {e.message} "
                                     f"at {'.'.join(map(str, e.path))}") from None
        checked += 1
    assert checked == len(render(overlay))


def test_crd_schemas_catch_mistakes() -> None:
    """The hand-written CRD schemas are not vacuous: a typo'd field is refused."""
    import jsonschema

    scc = copy.deepcopy(one("overlays/openshift", "SecurityContextConstraints"))
    scc["allowHostNetwrok"] = False
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scc, CRD_SCHEMAS["security.openshift.io/v1/SecurityContextConstraints"])
    sm = copy.deepcopy(one("overlays/prometheus", "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["intreval"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sm, CRD_SCHEMAS["monitoring.coreos.com/v1/ServiceMonitor"])


def test_every_overlay_renders_one_image() -> None:
    images = {container(o)["image"] for o in OVERLAYS}
    assert len(images) == 1, images
    assert ":" in images.pop()


# ------------------------------------------------------------------------------------------------
# RBAC == what the informers use


def informer_resources() -> set[tuple[str, str]]:
    """(API group, resource) of every kind the enricher watches, from the enrich code itself."""
    from enrich.index import KINDS
    from enrich.informer import RESOURCES

    return {(RESOURCES[k][1], RESOURCES[k][0]) for k in KINDS}


def test_informers_list_and_watch_cluster_wide() -> None:
    """The verbs the ClusterRole must grant: the listers are the *_for_all_namespaces / cluster
    list calls, used for a list and then with watch=True."""
    import inspect

    from enrich import informer

    src = inspect.getsource(informer)
    assert '"watch": True' in src
    for name in ("list_pod_for_all_namespaces", "list_node", "list_service_for_all_namespaces",
                 "list_replica_set_for_all_namespaces"):
        assert name in src, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cluster_role_is_exactly_what_the_informers_use(overlay: str) -> None:
    role = one(overlay, "ClusterRole", "flowscope")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                granted.setdefault((g, r), set()).update(rule["verbs"])
    assert set(granted) == informer_resources()
    for res, verbs in granted.items():
        # list and watch only: the informers never get one object by name (least privilege)
        assert verbs == {"list", "watch"}, (res, verbs)
    # Bound to the collector's ServiceAccount, which the pod uses.
    binding = one(overlay, "ClusterRoleBinding", "flowscope")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "flowscope"}
    sa = one(overlay, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert workload(overlay)["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    # No other ClusterRole grants anything but `use` of the flowscope SCC.
    for other in objs(overlay, "ClusterRole"):
        if other["metadata"]["name"] != "flowscope":
            assert other["rules"] == [{"apiGroups": ["security.openshift.io"],
                                       "resources": ["securitycontextconstraints"],
                                       "resourceNames": ["flowscope"], "verbs": ["use"]}]


# ------------------------------------------------------------------------------------------------
# Config keys, ports, probes, environment: they exist in the program


def _keys(d: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k == "kafka":
            out |= _keys(v, prefix + k + ".")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_keys_are_flowscope_config_keys(overlay: str, effective_default_config: dict[str, Any],
                                               tmp_path: Path) -> None:
    from collector import config as C

    shipped = shipped_config(overlay)
    unknown = _keys(shipped) - _keys(effective_default_config)
    assert not unknown, f"keys not printed by `flowscope config`: {sorted(unknown)}"
    assert "sasl_password" not in shipped.get("kafka", {}), "the password belongs in the Secret"
    # The file loads and validates through the real schema.
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(shipped))
    cfg = C.load(None, environ={"FLOWSCOPE_CONFIG": str(p)})
    assert cfg.sink_kind() == "kafka"
    assert {lst.scheme: lst.port for lst in cfg.listeners()} == SCHEMES_PORTS
    assert cfg.state_file.startswith("/var/lib/flowscope/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_variables_are_known_options(overlay: str) -> None:
    from collector import config as C

    known = {o.env for o in C.options()} | {"FLOWSCOPE_CONFIG"}
    env = {e["name"]: e for e in container(overlay).get("env", [])}
    for name in env:
        if name.startswith("FLOWSCOPE_"):
            assert name in known, f"{name} is not a flowscope option"
    # The config file variable points at the mounted ConfigMap key.
    mounts = {m["mountPath"]: m for m in container(overlay)["volumeMounts"]}
    assert env["FLOWSCOPE_CONFIG"]["value"] in mounts
    assert mounts[env["FLOWSCOPE_CONFIG"]["value"]]["subPath"] == "config.yaml"
    # The SASL password comes from the (optional) Secret, never from the ConfigMap.
    ref = env["FLOWSCOPE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "flowscope-kafka" and ref["optional"] is True
    # Own namespace for K8S_FlowLayer=infra (enrich.config.detect_own_namespace reads POD_NAMESPACE).
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_probes_match_the_program(overlay: str) -> None:
    from collector.config import parse_listener, split_hostport

    cfg = shipped_config(overlay)
    c = container(overlay)
    ports = {p["name"]: p for p in c["ports"]}
    listen = [parse_listener(s) for s in cfg["listen"]]
    for lst in listen:
        p = ports[lst.scheme]
        assert (p["containerPort"], p["protocol"]) == (lst.port, "UDP"), lst
        assert lst.host in ("0.0.0.0", "::")
    _, mport = split_hostport(cfg["metrics_addr"])
    assert ports["metrics"]["containerPort"] == mport and ports["metrics"]["protocol"] == "TCP"
    assert not cfg.get("health_addr"), "probes use the metrics port: health_addr must stay empty"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # Services point at named container ports with the right protocol.
    for svc in objs(overlay, "Service"):
        for sp in svc["spec"]["ports"]:
            target = ports[sp["targetPort"]]
            assert sp["protocol"] == target["protocol"]
            assert sp["port"] == target["containerPort"]
        sel = svc["spec"]["selector"]
        labels = workload(overlay)["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items()
    if overlay != "overlays/daemonset":
        udp = one(overlay, "Service", "flowscope")
        assert sorted(p["port"] for p in udp["spec"]["ports"]) == sorted(SCHEMES_PORTS.values())
        assert {p["protocol"] for p in udp["spec"]["ports"]} == {"UDP"}
        metrics = one(overlay, "Service", "flowscope-metrics")
        assert [p["port"] for p in metrics["spec"]["ports"]] == [mport]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security(overlay: str) -> None:
    w = workload(overlay)
    pod = w["spec"]["template"]["spec"]
    c = container(overlay)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "limits" in c["resources"] and "requests" in c["resources"]
    # The only writable paths are volumes; the state file is on one of them.
    state_dir = str(Path(shipped_config(overlay)["state_file"]).parent)
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert state_dir in writable
    vols = {v["name"]: v for v in pod["volumes"]}
    for m in c["volumeMounts"]:
        assert m["name"] in vols
    state_vol = vols[next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == state_dir)]
    assert "emptyDir" in state_vol or "persistentVolumeClaim" in state_vol
    if w["kind"] == "Deployment":
        pdb = one(overlay, "PodDisruptionBudget")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod.get("labels", w["spec"]["template"]
                                                                          ["metadata"]["labels"]).items()
        assert pdb["spec"]["minAvailable"] < w["spec"]["replicas"]


def test_daemonset_pod_is_the_deployment_pod() -> None:
    dep = copy.deepcopy(workload("base")["spec"]["template"])
    ds = copy.deepcopy(workload("overlays/daemonset"))
    assert ds["kind"] == "DaemonSet"
    tpl = ds["spec"]["template"]
    spec = tpl["spec"]
    assert spec.pop("hostNetwork") is True
    assert spec.pop("dnsPolicy") == "ClusterFirstWithHostNet"
    spec.pop("priorityClassName")
    spec.pop("tolerations")
    dep["spec"].pop("topologySpreadConstraints")
    for p in spec["containers"][0]["ports"]:
        assert p.pop("hostPort") == p["containerPort"]
    assert tpl == dep
    # hostNetwork is outside the restricted Pod Security level: the overlay relaxes the namespace.
    ns = one("overlays/daemonset", "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert not [s for s in objs("overlays/daemonset", "Service") if s["metadata"]["name"] == "flowscope"]


def test_openshift_scc_admits_the_pod() -> None:
    scc = one("overlays/openshift", "SecurityContextConstraints")
    pod = workload("overlays/openshift")["spec"]["template"]["spec"]
    assert scc["runAsUser"]["type"] == "MustRunAsNonRoot"
    assert scc["readOnlyRootFilesystem"] is True
    assert scc["requiredDropCapabilities"] == ["ALL"]
    assert scc["allowPrivilegeEscalation"] is False and scc["allowHostNetwork"] is False
    used = {k for v in pod["volumes"] for k in v if k != "name"}
    assert used <= set(scc["volumes"]), used - set(scc["volumes"])
    rb = one("overlays/openshift", "RoleBinding", "flowscope-scc")
    assert rb["roleRef"]["name"] == "flowscope-scc"
    assert rb["subjects"][0]["name"] == pod["serviceAccountName"]


def test_openshift_network_operator_patch() -> None:
    doc = yaml.safe_load((KUSTOMIZE / "overlays/openshift/network-operator-patch.yaml").read_text())
    collectors = doc["spec"]["exportNetworkFlows"]["ipfix"]["collectors"]
    assert collectors == [f"COLLECTOR_IP:{SCHEMES_PORTS['ipfix']}"]
    assert set(doc["spec"]["exportNetworkFlows"]) <= {"ipfix", "netFlow", "sFlow"}


def test_service_monitor_scrapes_the_metrics_service() -> None:
    sm = one("overlays/prometheus", "ServiceMonitor")
    svc = one("overlays/prometheus", "Service", "flowscope-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # the ServiceMonitor's own namespace (no selector naming one): a namespace given by an
    # overlay (kustomize does not rewrite matchNames) is still the one scraped
    assert "namespaceSelector" not in sm["spec"] and sm["metadata"]["namespace"] == svc["metadata"]["namespace"]
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    # The udp Service must not match (its port has no /metrics).
    udp = one("overlays/prometheus", "Service", "flowscope")
    assert not sm["spec"]["selector"]["matchLabels"].items() <= udp["metadata"]["labels"].items()
    assert not objs("base", "ServiceMonitor"), "plain clusters have no ServiceMonitor CRD"


# ------------------------------------------------------------------------------------------------
# The shipped config runs, and the probe paths answer


def test_probe_paths_answer_on_a_running_collector(collector: Any, tmp_path: Path) -> None:
    cfg = shipped_config()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # The shipped config, with only what a laptop lacks overridden: no Kafka, no cluster, and
    # the state file in the test's directory.
    c = collector(["--config", str(path), "--sink", "stdout", "--no-enrich",
                   "--state-file", str(tmp_path / "state.json")], schemes=("netflow", "ipfix", "sflow"))
    probe_paths = {container("base")[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    for p in sorted(probe_paths) + ["/metrics"]:
        status, body = c.get(p)
        assert status == 200, f"{p} answered {status}: {body}"
    sm = one("overlays/prometheus", "ServiceMonitor")
    assert c.get(sm["spec"]["endpoints"][0]["path"])[0] == 200
    assert "flowscope_ready 1.0" in c.get("/metrics")[1]


def test_readme_metric_names_exist() -> None:
    from collector.metrics import SERIES

    text = (DEPLOY / "README.md").read_text()
    names = set(re.findall(r"\bflowscope_[a-z_]+", text))
    assert names, "deploy/README.md names no metrics"
    suffixes = ("_total", "_bucket", "_sum", "_count", "_created")
    for n in names:
        base = next((n[: -len(s)] for s in suffixes if n.endswith(s) and n[: -len(s)] in SERIES), n)
        assert base in SERIES, f"deploy/README.md mentions {n}, which collector/metrics.py does not define"


# ------------------------------------------------------------------------------------------------
# Dockerfile (static: no Docker engine in CI)


def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ins, _, rest = line.partition(" ")
            out.append((ins.upper(), rest.strip()))
    return out


def test_dockerfile_static() -> None:
    import json

    import tomllib

    ins = dockerfile()
    froms = [r for i, r in ins if i == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build") and froms[1].endswith(" AS runtime")
    args = dict(r.split("=", 1) for i, r in ins if i == "ARG" and "=" in r)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    # The runtime stage runs as the numeric non-root user the manifests expect.
    runtime = ins[[i for i, (k, _) in enumerate(ins) if k == "FROM"][1]:]
    users = [r for i, r in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    uid = int(users[-1].split(":")[0])
    for o in OVERLAYS:
        assert workload(o)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    entry = json.loads(next(r for i, r in runtime if i == "ENTRYPOINT"))
    assert entry == ["flowscope", "run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["flowscope"] == "collector.cli:main"
    exposed = set(" ".join(r for i, r in runtime if i == "EXPOSE").split())
    assert exposed == {f"{p}/udp" for p in SCHEMES_PORTS.values()} | {"9400/tcp"}
    health = next(r for i, r in runtime if i == "HEALTHCHECK")
    assert health.split("CMD", 1)[1].strip() == '["flowscope", "health"]'  # tests/test_image.py runs it
    vols = [r for i, r in runtime if i == "VOLUME"]
    state_dir = str(Path(shipped_config()["state_file"]).parent)
    assert vols and state_dir in vols[0]
    env = " ".join(r for i, r in runtime if i == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    # A FLOWSCOPE_* variable baked into the image would beat the ConfigMap's config.yaml
    # (precedence flag > variable > file): editing metrics_addr or state_file there would do nothing.
    assert not re.findall(r"\b(FLOWSCOPE_[A-Z_]+)=", env)
    # The build stage compiles from sources (Cython pinned in pyproject), not prebuilt objects.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "**/*.so" in ignore and "decoders/_core.c" in ignore


def test_readme_install_waits_for_the_workload_each_overlay_makes() -> None:
    """deploy/README.md's Install block applies the base or an overlay, then waits with
    `kubectl rollout status`: it named only deploy/flowscope, which the daemonset overlay
    deletes (its workload is a DaemonSet), so after `apply -k overlays/daemonset` the command
    shown fails with "not found". Its rollout commands name the workload of every overlay it
    applies, in that workload's namespace."""
    text = (DEPLOY / "README.md").read_text()
    start = text.index("## Install")
    begin = text.index("```sh\n", start) + 6
    block = text[begin:text.index("\n```", begin)]
    applied = re.findall(r"apply -k deploy/kubernetes/(\S+)", block)
    assert set(applied) == set(OVERLAYS), applied
    short = {"deploy": "Deployment", "deployment": "Deployment", "ds": "DaemonSet", "daemonset": "DaemonSet"}
    waited = {(ns, short[kind], name)
              for ns, kind, name in re.findall(r"kubectl -n (\S+) rollout status (\w+)/(\S+)", block)}
    made = {(w["metadata"]["namespace"], w["kind"], w["metadata"]["name"]) for w in map(workload, applied)}
    assert waited == made, (waited, made)
