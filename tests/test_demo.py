"""`make demo` as an end-to-end test: OVS exporting like OVN-Kubernetes -> flowscope -> Kafka.

deploy/demo/demo.py builds a node (private ovs-vswitchd, userspace datapath, pods as network
namespaces), the fake API server, the Tansu broker and `flowscope run`, makes TCP, UDP and ICMP
conversations between the pods and reads the topic back. Every leg of every conversation must
arrive from each of IPFIX, sFlow and NetFlow v5 with the pods' names, namespaces, owners
(Deployments through ReplicaSets, a StatefulSet), nodes, zones and the FlowDirection node-a's
exporter reports (inner on one node, egress/ingress with the pod the API places on node-b).
Runs as root in CI (about 25 s); skipped elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.metrics import parse_exposition, total

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo():
    from deploy.demo import demo as D

    reason = D.skip_reason()
    if reason:
        pytest.skip(reason)
    return D


@pytest.fixture(scope="module")
def result(demo, tmp_path_factory: pytest.TempPathFactory):
    d: Path = tmp_path_factory.mktemp("demo")
    return demo.run_demo(workdir=d, log=lambda m: None)


def test_every_conversation_arrives_with_identities(demo, result) -> None:
    assert result.legs, "no conversations were made"
    assert not result.problems, result.summary()
    # Every kind of leg is covered: same node, and both directions across nodes.
    dirs = {demo.expected_direction(s.src, s.dst) for s in result.legs}
    assert dirs == {0, 1, 2}
    assert {s.conversation.proto for s in result.legs} == {1, 6, 17}
    owners = {s.src.owner_kind for s in result.legs} | {s.dst.owner_kind for s in result.legs}
    assert owners == {"Deployment", "StatefulSet"}


def test_sampling_and_exporters(demo, result) -> None:
    for s in result.legs:
        for proto, recs in s.flows.items():
            for r in recs:
                # IPFIX from OVS carries no rate: --sampling NODE_IP/32=1 supplied it.
                assert r.get("Sampling") == 1, (proto, r)
                # IPFIX and NetFlow come from the node IP, sFlow names the management port.
                want_agent = demo.NODE_A.mgmt_ip if proto == "sflow5" else demo.NODE_A.ip
                assert r["AgentIP"] == want_agent, (proto, r["AgentIP"])


def test_collector_metrics(demo, result) -> None:
    m = parse_exposition(result.metrics)
    # Per exporter (the node IP); the protocol label is not checked: the decoder's statistics
    # are kept per exporter address, and this exporter speaks three protocols.
    assert total(m, "flowscope_flows_total", exporter=demo.NODE_A.ip) > 0
    assert total(m, "flowscope_informers_synced") == 1
    assert total(m, "flowscope_flows_dropped_total") == 0
    assert total(m, "flowscope_flows_delivered_total") >= result.records > 0


def test_summary_is_readable(result) -> None:
    text = result.summary()
    assert "every conversation arrived with the right identities" in text
    assert "shop/redis-0 (sts redis, node-a)" in text
