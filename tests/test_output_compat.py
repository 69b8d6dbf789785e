"""Output compatibility with what NetObserv's consumers expect (flowlogs-pipeline fed from Kafka,
the console's Loki schema): field presence rules that NetObserv's own enrichment follows, and
published records that every JSON parser reads the same way."""

from __future__ import annotations

import ipaddress
import json

import orjson

from benchmarks.datagrams import VARLEN, IpfixTemplate, data_set, ipfix_message, template_set
from decoders import Decoder
from enrich import Enricher

EXPORT = 1_700_000_000
AGENT = ipaddress.ip_address("10.0.0.1").packed
OTHER = ipaddress.ip_address("10.0.0.9").packed
NODE_NO_ADDRESSES = {"metadata": {"name": "n1", "annotations": {
    "k8s.ovn.org/node-subnets": '{"default":"10.128.0.0/23"}'}}, "status": {}}
POD_NO_HOST_IP = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": {"nodeName": "n1"},
                  "status": {"podIP": "10.128.0.5", "podIPs": [{"ip": "10.128.0.5"}], "phase": "Running"}}


def _identity(enricher: Enricher, addr: str) -> dict:
    frag = enricher.enrich(ipaddress.ip_address(addr).packed, OTHER, AGENT, 0, 0)
    return orjson.loads(b"{" + frag[1:] + b"}")


def test_host_name_is_published_only_with_the_host_ip() -> None:
    """flowlogs-pipeline's Kubernetes enrichment (pkg/pipeline/transform/kubernetes/enrich.go)
    writes <side>_HostName only inside `if kubeInfo.HostIP != ""`: a consumer may take
    HostName's presence to mean HostIP is there too. A Node known only by its OVN management
    port (no status.addresses yet) and a pod whose status has no hostIP have no HostIP, so
    no HostName either."""
    for compiled in (False, None):
        e = Enricher.from_objects(nodes=[NODE_NO_ADDRESSES], pods=[POD_NO_HOST_IP], compiled=compiled)
        node = _identity(e, "10.128.0.2")
        assert node["SrcK8S_Type"] == "Node" and "SrcK8S_HostIP" not in node
        assert "SrcK8S_HostName" not in node
        pod = _identity(e, "10.128.0.5")
        assert pod["SrcK8S_Type"] == "Pod" and "SrcK8S_HostIP" not in pod
        assert "SrcK8S_HostName" not in pod


def test_interface_names_from_the_wire_are_json_every_parser_reads_alike() -> None:
    """interfaceName (82) is exporter bytes: quotes, backslashes, control characters, NULs
    inside the name and invalid UTF-8 must come out as one JSON string that orjson and the
    standard library parse to the same value; 64-bit counters stay exact."""
    t = IpfixTemplate(300, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("in", 82, 0, VARLEN), ("out", 82, 0, VARLEN),
                            ("bytes", 1, 0, 8), ("pk", 2, 0, 8)))
    names = [b'a"b', b"a\\b", b"\x01\x1f", b"\xff\xfe", b"ok\x00mid", b"\xe2\x82", b"\x7f", b"\xed\xa0\x80",
             b"\xf4\x90\x80\x80", b"\xc0\x80"]
    recs = [{"src": "10.0.0.1", "dst": "10.0.0.2", "in": n, "out": b"x", "bytes": 2**64 - 1, "pk": 2**63}
            for n in names]
    b = Decoder().decode(ipfix_message([template_set([t]), data_set(t, recs)], seq=0, export_time=EXPORT),
                         "10.0.0.1", 0, EXPORT)
    out = b.to_json()
    assert len(out) == len(names)
    for raw, name in zip(out, names, strict=True):
        f = orjson.loads(raw)
        assert f == json.loads(raw)
        assert f["Interfaces"] == [name.decode("utf-8", "replace"), "x"]
        assert (f["Bytes"], f["Packets"]) == (2**64 - 1, 2**63)
