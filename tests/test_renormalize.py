"""--renormalize: Bytes and Packets scaled by the sampling rate the exporter sent.

DESIGN.md: "Bytes and Packets are as exported; `Sampling` carries the rate (a flag scales them
instead)". pmacct users know it as `nfacctd_renormalize` / `sfacctd_renormalize`. Which counts
are counts of sampled packets is a property of the wire format, so the rule is:
- the exporter sent the rate (NetFlow v5 header interval, an IPFIX/v9 record's sampling elements,
  options data, an sFlow sample's sampling_rate): scaled;
- the rate came from flowscope's flags (--sampling, --default-sampling): not scaled; the exporter
  those are for, Open vSwitch's bridge IPFIX, already counts each sampled packet as `rate`
  packets (tests/test_ovs.py::test_ovs_default_sampling_400 checks that live, with this flag).

The sFlow expectations come from Wireshark's decode of the corpus captures; the IPFIX/v9 ones
from datagrams built here from RFC 7011 / RFC 3954 layouts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.datagrams import (
    IpfixTemplate,
    SflowSample,
    data_set,
    ipfix_message,
    sflow_datagram,
    template_set,
    v5_datagram,
    v9_datagram,
)
from decoders import Decoder, DecoderConfig
from tests.support import tshark as T
from tests.test_golden_corpus import match_unordered
from tests.test_sampling_scopes import _ipfix_options_set

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "corpus"
EXPORT = 1_700_000_000
U64 = 2**64 - 1

FLOW = (("src", 8, 0, 4), ("dst", 12, 0, 4), ("sport", 7, 0, 2), ("dport", 11, 0, 2), ("proto", 4, 0, 1),
        ("bytes", 1, 0, 8), ("packets", 2, 0, 8))
REC = {"src": "10.1.0.1", "dst": "10.2.0.2", "sport": 40000, "dport": 443, "proto": 6,
       "bytes": 1500, "packets": 3}


def _decode(datagrams: list[bytes], exporter: str = "10.0.0.1", **cfg: object) -> list[dict]:
    dec = Decoder(DecoderConfig(**cfg))  # type: ignore[arg-type]
    out: list[dict] = []
    for d in datagrams:
        b = dec.decode(d, exporter, 4739, EXPORT + 0.5)
        assert b.error is None, b.error
        out += b.to_dicts()
    return out


def _counts(flows: list[dict]) -> list[tuple[object, object, object]]:
    return [(f.get("Bytes"), f.get("Packets"), f.get("Sampling")) for f in flows]


# ------------------------------------------------------------------ rates the exporter sent


def test_ipfix_record_sampling_interval_scales() -> None:
    """samplingInterval (34) in the record: 1 packet in 100 was counted."""
    t = IpfixTemplate(300, FLOW + (("interval", 34, 0, 4),))
    msg = ipfix_message([template_set([t]), data_set(t, [{**REC, "interval": 100}])], seq=0, export_time=EXPORT)
    assert _counts(_decode([msg], renormalize=True)) == [(150_000, 300, 100)]
    assert _counts(_decode([msg])) == [(1500, 3, 100)]          # off: as exported


def test_ipfix_options_data_rate_scales() -> None:
    """A rate taught by options data (samplingInterval scoped by the exporting process) applies to
    the data records of that process, and they are scaled by it."""
    opt = IpfixTemplate(400, (("domain", 149, 0, 4), ("interval", 34, 0, 4)), 1)
    t = IpfixTemplate(300, FLOW)
    msgs = [ipfix_message([_ipfix_options_set([opt]), data_set(opt, [{"domain": 0, "interval": 64}])],
                          seq=0, export_time=EXPORT),
            ipfix_message([template_set([t]), data_set(t, [REC])], seq=0, export_time=EXPORT)]
    assert _counts(_decode(msgs, renormalize=True)) == [(1500 * 64, 3 * 64, 64)]


def test_netflow_v5_header_interval_scales() -> None:
    """The v5 header's sampling_interval (low 14 bits; the top two are the mode)."""
    rec = {"src": 0x0A000001, "dst": 0x0A000002, "nexthop": 0, "input": 1, "output": 2, "packets": 7,
           "bytes": 700, "first": 1000, "last": 2000, "sport": 1, "dport": 2, "flags": 0, "proto": 17,
           "tos": 0, "src_as": 0, "dst_as": 0, "src_mask": 0, "dst_mask": 0}
    dg = v5_datagram([rec], seq=0, unix_secs=EXPORT, uptime_ms=5000, sampling_interval=(1 << 14) | 10)
    assert _counts(_decode([dg], renormalize=True)) == [(7000, 70, 10)]
    # interval 0: unsampled (OVS's NetFlow); a --sampling rate for it is the operator's, not scaled
    dg0 = v5_datagram([rec], seq=0, unix_secs=EXPORT, uptime_ms=5000)
    assert _counts(_decode([dg0], renormalize=True, sampling={"10.0.0.0/8": 50})) == [(700, 7, 50)]


def test_v9_sampler_options_scale_per_sampler() -> None:
    """NetFlow v9 options data naming a sampler's rate (FLOW_SAMPLER_ID 48,
    FLOW_SAMPLER_RANDOM_INTERVAL 50), data records naming the sampler: scaled by that sampler's
    rate, records of another (unknown) sampler id left as they are."""
    body = b"".join(v.to_bytes(2, "big") for v in (500, 4, 8, 1, 4, 48, 1, 50, 4))  # scope: system
    opt_tpl = (1).to_bytes(2, "big") + (4 + len(body)).to_bytes(2, "big") + body
    opt_data = (500).to_bytes(2, "big") + (16).to_bytes(2, "big") + (0).to_bytes(4, "big") + bytes([7]) \
        + (1000).to_bytes(4, "big") + b"\0\0\0"
    t = IpfixTemplate(300, FLOW + (("sampler", 48, 0, 1),))
    dg = v9_datagram([opt_tpl, opt_data, template_set([t], version=9),
                      data_set(t, [{**REC, "sampler": 7}, {**REC, "sampler": 9}])],
                     seq=0, unix_secs=EXPORT, uptime_ms=5000)
    got = _counts(_decode([dg], renormalize=True, default_sampling=0))
    assert got == [(1_500_000, 3000, 1000), (1500, 3, None)]


def test_split_biflow_reverse_direction_scales_too() -> None:
    """RFC 5103 reverse counters (PEN 29305) of a sampled biflow are sampled counts as well."""
    t = IpfixTemplate(300, FLOW + (("rbytes", 1, 29305, 8), ("rpackets", 2, 29305, 8), ("interval", 34, 0, 4)))
    msg = ipfix_message([template_set([t]), data_set(t, [{**REC, "rbytes": 400, "rpackets": 2, "interval": 10}])],
                        seq=0, export_time=EXPORT)
    got = _decode([msg], renormalize=True, split_biflows=True)
    assert sorted(_counts(got), key=str) == sorted([(15_000, 30, 10), (4000, 20, 10)], key=str)


def test_overflow_saturates() -> None:
    """A product past 2^64-1 is 2^64-1 (never wrapped to a small number)."""
    t = IpfixTemplate(300, FLOW + (("interval", 34, 0, 4),))
    rec = {**REC, "bytes": 2**62, "packets": 2**40, "interval": 8}
    msg = ipfix_message([template_set([t]), data_set(t, [rec])], seq=0, export_time=EXPORT)
    assert _counts(_decode([msg], renormalize=True)) == [(U64, 2**43, 8)]


# ------------------------------------------------------------------ rates from flowscope's flags


@pytest.mark.parametrize("cfg", [{}, {"default_sampling": 400}, {"sampling": {"10.0.0.0/8": 100}}])
def test_ipfix_without_a_rate_of_its_own_is_not_scaled(cfg: dict) -> None:
    """Open vSwitch's IPFIX: no rate on the wire; --default-sampling / --sampling give Sampling,
    and the counts stay as exported (OVS already counted each sampled packet as rate packets)."""
    t = IpfixTemplate(300, FLOW)
    msg = ipfix_message([template_set([t]), data_set(t, [REC])], seq=0, export_time=EXPORT)
    assert _counts(_decode([msg], renormalize=True, **cfg)) == _counts(_decode([msg], **cfg))
    assert _decode([msg], renormalize=True, **cfg)[0]["Bytes"] == 1500


# ------------------------------------------------------------------ real captures


@pytest.mark.parametrize("pcap", sorted(CORPUS.glob("sflow/*.pcap")), ids=lambda p: p.name)
def test_sflow_captures_scaled_by_wiresharks_rate(pcap: Path) -> None:
    """Every flow sample of the corpus's sFlow captures: Bytes and Packets are tshark's frame
    length and 1, times tshark's sampling_rate of that sample."""
    from collector.pcap import iter_udp

    pkts = T.load_tshark_json(pcap.with_suffix(".tshark.json"))["packets"]
    datagrams = list(iter_udp(pcap))
    assert len(pkts) == len(datagrams), f"{pcap.name}: reference does not match"
    dec = Decoder(DecoderConfig(default_sampling=0, renormalize=True))
    problems: list[str] = []
    scaled = 0
    for n, (dg, p) in enumerate(zip(datagrams, pkts, strict=True), 1):
        sp = T.parse_sflow(p)
        flows = dec.decode(dg.payload, dg.src, dg.sport, dg.ts).to_dicts()
        want = []
        for s in sp.samples:
            if not s.is_flow:
                continue
            e = T.expected_from_sflow_sample(sp, s)
            rate = e.get("Sampling", 0)
            for k in ("Bytes", "Packets", "PktDropBytes", "PktDropPackets"):
                if k in e and rate > 1:
                    e[k] *= rate
                    scaled += k == "Packets"
            want.append(e)
        problems += match_unordered(want, flows, f"{pcap.name} datagram {n}", required={"Bytes", "Packets"})
    assert not problems, "\n".join(problems[:20])
    flow_samples = sum(s.is_flow for p in pkts for s in T.parse_sflow(p).samples)
    assert scaled == flow_samples, f"{pcap.name}: {flow_samples} flow samples, {scaled} with a rate above 1"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_run_renormalizes_when_asked(collector, how: str) -> None:
    """`flowscope run --renormalize` (or FLOWSCOPE_RENORMALIZE) reaches the decoder: an sFlow
    sample at 1:256 is published as 256 packets of its frame length; without it, as 1."""
    import socket

    from tests.conftest import wait_for

    samples = [SflowSample("10.1.0.1", "10.2.0.2", 40000, 443, 6, 1514, 0x10, 256, 3, 4)]
    dg = sflow_datagram(samples, seq=1)
    plain = collector([], schemes=("sflow",))
    scaled = (collector(["--renormalize"], schemes=("sflow",)) if how == "flag" else
              collector([], schemes=("sflow",), env={"FLOWSCOPE_RENORMALIZE": "true"}))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for c in (plain, scaled):
            s.sendto(dg, ("127.0.0.1", c.port))
    wait_for(lambda: plain.output() and scaled.output(), 20, what="a flow from each collector")
    assert _counts(plain.output()) == [(1514, 1, 256)]
    assert _counts(scaled.output()) == [(1514 * 256, 256, 256)]
