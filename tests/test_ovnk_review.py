"""K8S_FlowLayer's two rules on one table of flows (review against NetObserv and OVN-Kubernetes).

The issue's rule, the default (`--flow-layer-rule any-infra`): a flow is "infra" when either
side's namespace is an infrastructure one (the prefixes, `openshift` and `kube-` by default, or
the collector's own namespace), else "app" (nodes, services and unresolved addresses included).

NetObserv's rule (`--flow-layer-rule netobserv`; flowlogs-pipeline's EnrichLayer in
pkg/pipeline/transform/kubernetes/enrich.go, and its TestEnrichLayer table): "app" when at least
one side is an application's object, one with a namespace that is neither an infrastructure
namespace nor an infrastructure reference (the `kubernetes` and `openshift` Services of
`default`, which NetObserv's operator configures), else "infra": node-to-node, node-to-external
and unresolved flows are infra, and an application talking to DNS or the API server is app.
"""

from __future__ import annotations

import pytest

import enrich
from tests.support.fake_kube import pod, service
from tests.test_enrich_index import NODES, build, flow, implementation  # noqa: F401 (implementation: autouse fixture)

PODS = [pod("web-1", "shop", ips=["10.244.0.5"]),
        pod("coredns-1", "kube-system", ips=["10.244.0.6"]),
        pod("prometheus-0", "openshift-monitoring", ips=["10.244.1.7"], node="node-b", host_ip="10.0.0.2"),
        pod("flowscope-1", "netobserv", ips=["10.244.1.8"], node="node-b", host_ip="10.0.0.2")]
SERVICES = [service("kubernetes", "default", ips=["172.30.0.1"]),
            service("openshift", "default", ips=["172.30.0.2"]),
            service("web", "shop", ips=["172.30.0.10"]),
            service("other", "default", ips=["172.30.0.11"])]

WEB, DNS, PROM, SELF = "10.244.0.5", "10.244.0.6", "10.244.1.7", "10.244.1.8"
NODE_A, NODE_B, MGMT_A = "10.0.0.1", "10.0.0.2", "10.244.0.2"
API, OS_API, WEB_SVC, DEFAULT_SVC, EXTERNAL, EXTERNAL2 = (
    "172.30.0.1", "172.30.0.2", "172.30.0.10", "172.30.0.11", "8.8.8.8", "1.1.1.1")

# (src, dst, any-infra, netobserv): NetObserv's TestEnrichLayer cases, then the same on
# flowscope's defaults (the "kube-" prefix) and OVN-Kubernetes' own addresses (a management port).
LAYERS = [
    (PROM, SELF, "infra", "infra"),          # infra to infra
    (PROM, NODE_B, "infra", "infra"),        # infra to node
    (NODE_A, API, "app", "infra"),           # node to the kubernetes Service (an infrastructure reference)
    (NODE_A, OS_API, "app", "infra"),        # node to the openshift Service of default
    (NODE_A, EXTERNAL, "app", "infra"),      # node to external
    (WEB, WEB_SVC, "app", "app"),            # app to app
    (NODE_A, WEB_SVC, "app", "app"),         # node to app
    (WEB, API, "app", "app"),                # app to the API server
    (WEB, EXTERNAL, "app", "app"),           # app to external
    (WEB, DNS, "infra", "app"),              # an application's DNS query (kube-system is infra)
    (DNS, WEB, "infra", "app"),
    (EXTERNAL, DNS, "infra", "infra"),       # external to infra
    (EXTERNAL, EXTERNAL2, "app", "infra"),   # nobody
    (NODE_A, NODE_B, "app", "infra"),        # node to node (Geneve between nodes, kubelet to kubelet)
    (MGMT_A, PROM, "infra", "infra"),        # OVN's management port (the node) to an infra pod
    (NODE_A, DEFAULT_SVC, "app", "app"),     # any other Service of default is an application's
    (SELF, EXTERNAL, "infra", "infra"),      # the collector's own namespace
]
RULES = {"any-infra": 2, "netobserv": 3}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", LAYERS, ids=lambda c: f"{c[0]}-{c[1]}")
def test_flow_layer_rules(rule: str, case: tuple[str, str, str, str]) -> None:
    e = build(PODS, SERVICES, **({} if rule == "any-infra" else {"flow_layer_rule": rule}))
    src, dst, want = case[0], case[1], case[RULES[rule]]
    assert flow(e, src, dst)["K8S_FlowLayer"] == want
    assert flow(e, dst, src)["K8S_FlowLayer"] == want  # both rules are symmetric


def _ipfix(pairs: list[tuple[str, str]]) -> bytes:
    from benchmarks import datagrams as D

    t = D.IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4)))
    return D.ipfix_message([D.template_set([t]), D.data_set(t, [{"src": s, "dst": d} for s, d in pairs])],
                           seq=0, export_time=1_700_000_000)


@pytest.mark.parametrize("rule", RULES)
def test_flow_layer_in_the_encoder_follows_the_rule(rule: str) -> None:
    """The encoder reads the compiled reader's answer cache in place (enrich/view.pxd): each
    flow of a datagram gets the layer enrich() gives, cached or not (each pair twice)."""
    from decoders import Decoder

    e = build(PODS, SERVICES, flow_layer_rule=rule)
    pairs = [(c[0], c[1]) for c in LAYERS]
    got = [f["K8S_FlowLayer"] for f in Decoder().decode(_ipfix(pairs + pairs), NODE_A, 4739,
                                                         1_700_000_000.0).to_dicts(e)]
    assert got == [c[RULES[rule]] for c in LAYERS] * 2


def test_netobserv_rule_with_own_namespace_and_custom_prefixes() -> None:
    e = enrich.Enricher.from_objects(
        pods=[pod("a", "platform-x", ips=["10.244.0.60"]), pod("b", "flows", ips=["10.244.0.61"]),
              pod("c", "kube-system", ips=["10.244.0.62"])],
        nodes=NODES, config=enrich.EnrichConfig(infra_namespace_prefixes=["platform-"], own_namespace="flows",
                                                flow_layer_rule="netobserv"))
    assert flow(e, "10.244.0.60", EXTERNAL)["K8S_FlowLayer"] == "infra"
    assert flow(e, "10.244.0.61", EXTERNAL)["K8S_FlowLayer"] == "infra"
    assert flow(e, "10.244.0.62", EXTERNAL)["K8S_FlowLayer"] == "app"      # not a prefix here
    assert flow(e, "10.244.0.60", "10.244.0.62")["K8S_FlowLayer"] == "app"


def test_flow_layer_rule_is_validated() -> None:
    with pytest.raises(enrich.EnrichConfigError, match="flow_layer_rule"):
        enrich.EnrichConfig(flow_layer_rule="app-first")
