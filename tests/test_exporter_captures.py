"""Real exporters' captures in configurations the end-to-end exporter tests do not run, kept as
small fixtures (tests/data/exporters: the exporter's datagrams as tcpdump captured them, and
tshark 4.0.17's decode of each beside it, as tests/support/tshark.py run_tshark() returns it).

- softflowd-psamp-qinq: softflowd 1.1.0 `-v psamp` over QinQ frames (an 802.1ad S-tag, TPID
  0x88a8, VID 200 + i, around an 802.1Q C-tag, VID 300 + i, flow i of
  tests/support/pcapgen.py standard_flows()).
- ovs-sflow-qinq / ovs-sflow-priority-tag: Open vSwitch 3.1 sFlow (header 128, sampling 1) of
  the same QinQ frames, and of 802.1Q frames with priority 5 and VID 100 + i, replayed into a
  port of a userspace-datapath bridge.
- ovs-sflow-ipv6-agent: Open vSwitch sFlow with `agent="fd00:99::7"`, sent from ::1 to [::1].
- pmacct-sfprobe-ipv6-agent: pmacct 1.7.7 sfprobe with `sfprobe_agentip: fd00::99`.

What the reference checker (tests/support/tshark.py) missed: tshark dissects an 802.1ad tag as
its own layer (ieee8021ad.id), apart from 802.1Q's (vlan.id), and the checker read only vlan.id,
so a QinQ frame's reference Vlan was its inner C-tag; an sFlow sampled header's tags were not
compared at all; and an IPv6 sFlow agent address (sflow_245.agent.v6) was not read, so AgentIP
went unchecked for IPv6 agents.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import tshark as T
from tests.test_golden_corpus import check_cflow_capture, check_sflow_capture

DATA = Path(__file__).resolve().parent / "data" / "exporters"


def _load(name: str) -> tuple[list, list[dict]]:
    from collector.pcap import iter_udp

    return list(iter_udp(DATA / f"{name}.pcap")), T.load_tshark_json(DATA / f"{name}.tshark.json")["packets"]


def _decoder(decoders_mod):
    return decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))


@pytest.mark.parametrize("name,outer", [("ovs-sflow-qinq", 200), ("ovs-sflow-priority-tag", 100)])
def test_sflow_sampled_headers_vlan_is_the_outer_tag_as_tshark_reads_it(name: str, outer: int, decoders_mod) -> None:
    """Every flow sample's reference Vlan is the sampled frame's outer tag (an S-tag too; the
    priority bits no part of it), and flowscope's decode equals tshark's sample by sample."""
    datagrams, packets = _load(name)
    expected = [T.expected_from_sflow_sample(sp, s) for sp in map(T.parse_sflow, packets)
                for s in sp.samples if s.is_flow]
    assert expected and {e.get("Vlan") for e in expected} <= set(range(outer, outer + 7)), \
        [e.get("Vlan") for e in expected]
    problems = check_sflow_capture(_decoder(decoders_mod), datagrams, packets, name)
    assert not problems, "\n".join(problems)


def test_psamp_frame_section_vlan_is_the_qinq_s_tag(decoders_mod) -> None:
    """softflowd's PSAMP reports of QinQ frames: the reference Vlan is the S-tag (IANA 243
    dot1qVlanId: the outer tag of a multi-tagged frame), as flowscope reads it, not the C-tag."""
    datagrams, packets = _load("softflowd-psamp-qinq")
    reader = T.CflowReader()
    vlans = [T.section_expected(rec).get("Vlan") for p in reader.packets(packets) for _, rec in p.flow_records]
    assert vlans and set(vlans) <= set(range(200, 207)), vlans
    problems = check_cflow_capture(_decoder(decoders_mod), datagrams, packets, "softflowd-psamp-qinq")
    assert not problems, "\n".join(problems)


def test_sflow_ipv6_agent_address_is_the_agent_ip(decoders_mod) -> None:
    """An IPv6 agent address other than the datagram's source: the reference AgentIP of every
    flow sample is the agent's, and flowscope's decode equals tshark's."""
    datagrams, packets = _load("ovs-sflow-ipv6-agent")
    assert {d.src for d in datagrams} == {"::1"}
    expected = [T.expected_from_sflow_sample(sp, s) for sp in map(T.parse_sflow, packets)
                for s in sp.samples if s.is_flow]
    assert expected and {e.get("AgentIP") for e in expected} == {"fd00:99::7"}, expected
    problems = check_sflow_capture(_decoder(decoders_mod), datagrams, packets, "ovs-sflow-ipv6-agent")
    assert not problems, "\n".join(problems)


def test_pmacct_sfprobe_ipv6_agent_datagram_is_counted_bad(decoders_mod) -> None:
    """pmacct 1.7.7 sfprobe with an IPv6 agent address says address type 2 (IPv6) and then
    writes 4 address bytes: everything after is 12 bytes early. tshark reads on without a
    complaint (agent fd00::1:0:0, a flow sample of 1 byte); flowscope counts the datagram as a
    bad sample of that exporter and publishes nothing from it."""
    datagrams, packets = _load("pmacct-sfprobe-ipv6-agent")
    assert all(T.parse_sflow(p).agent.startswith("fd00::") and T.parse_sflow(p).agent != "fd00::99" for p in packets)
    dec = _decoder(decoders_mod)
    for d in datagrams:
        batch = dec.decode(d.payload, d.src, d.sport, d.ts)
        assert batch.error is not None and batch.error[0] == "bad_sample", batch.error
        assert batch.to_dicts() == []
    assert dec.exporter(datagrams[0].src).errors == {"bad_sample": len(datagrams)}
