"""Where a NetFlow v9 / IPFIX data set ends, and which scope a sampling rate applies to.

- Set padding after records of 3 bytes or less (RFC 3954 5.3, RFC 7011 3.3.1): zeros that bring
  the set to a 4-byte boundary are padding, never a record.
- Options data scoped by interface (v9 scope type 2 "Interface", IPFIX scope ingressInterface
  (10)): its rate applies to the data records of that ingress interface, not to the whole
  exporting process and domain.
- samplingProbability (IE 311, float64 or reduced-size float32): the rate is 1 / p.
- Interface tables (options data naming an ifIndex with interfaceName / interfaceDescription):
  the Interfaces of data records that carry no interfaceName of their own.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set, v9_datagram
from decoders import Decoder, DecoderConfig

EXPORT = 1_700_000_000
EXPORTER = "10.0.0.1"
PORT = 4739


def _tpl(tid: int, *fields: tuple[str, int, int, int], scope: int = 0) -> IpfixTemplate:
    return IpfixTemplate(tid, tuple(fields), scope)


def _ipfix_options_set(templates: list[IpfixTemplate]) -> bytes:
    body = b""
    for t in templates:
        body += struct.pack("!HHH", t.template_id, len(t.fields), t.options_scope)
        body += b"".join(struct.pack("!HH", ie, ln) for _n, ie, _pen, ln in t.fields)
    return struct.pack("!HH", 3, 4 + len(body)) + body


def _v9_options_set(tid: int, scopes: list[tuple[int, int]], fields: list[tuple[int, int]]) -> bytes:
    """RFC 3954 6.1: template id, option scope length, option length (bytes), then the scope
    (type, length) pairs and the option (type, length) pairs; padded to 4 bytes."""
    body = struct.pack("!HHH", tid, 4 * len(scopes), 4 * len(fields))
    body += b"".join(struct.pack("!HH", ty, ln) for ty, ln in scopes + fields)
    body += b"\0" * ((-len(body)) % 4)
    return struct.pack("!HH", 1, 4 + len(body)) + body


def _raw_set(set_id: int, body: bytes, *, pad: bool = True) -> bytes:
    if pad:
        body += b"\0" * ((-len(body)) % 4)
    return struct.pack("!HH", set_id, 4 + len(body)) + body


# ------------------------------------------------------------------ padding after tiny records

TINY = {
    3: _tpl(300, ("proto", 4, 0, 1), ("dport", 11, 0, 2)),
    2: _tpl(300, ("dport", 11, 0, 2)),
    1: _tpl(300, ("proto", 4, 0, 1)),
}
TINY_REC: dict[str, object] = {"proto": 17, "dport": 53}


@pytest.mark.parametrize("version", [9, 10])
@pytest.mark.parametrize(("size", "n"), [(3, 1), (3, 2), (3, 3), (2, 1), (1, 1), (1, 2), (1, 3)])
def test_zero_padding_after_tiny_records_is_not_a_record(version: int, size: int, n: int) -> None:
    """RFC 3954 5.3: "The Exporter SHOULD insert some padding bytes so that the subsequent
    FlowSet starts at a 4-byte aligned boundary"; RFC 7011 3.3.1 likewise. With records of 3 bytes
    or less the padding may be as long as a record: zeros that end the set on its 4-byte boundary
    are padding, and are neither flows nor records of the message's sequence count."""
    t = TINY[size]
    dec = Decoder(DecoderConfig(default_sampling=0))
    recs = [TINY_REC] * n
    if version == 9:
        dgrams = [v9_datagram([template_set([t], version=9), data_set(t, recs)], seq=seq, unix_secs=EXPORT,
                              uptime_ms=1000) for seq in (0, 1)]
    else:
        dgrams = [ipfix_message([template_set([t]), data_set(t, recs)], seq=seq, export_time=EXPORT)
                  for seq in (0, n)]
    for d in dgrams:
        b = dec.decode(d, EXPORTER, PORT, EXPORT)
        assert b.error is None
        flows = b.to_dicts()
        assert len(flows) == n
        assert all(f.get("Proto", 17) == 17 and f.get("DstPort", 53) == 53 for f in flows)
    st = dec.stats()[EXPORTER]
    assert st["flows"] == 2 * n
    proto = st["protocols"]["ipfix" if version == 10 else "netflow9"]
    assert proto["sequence_lost"] == 0 and proto["sequence_resets"] == 0


@pytest.mark.parametrize("version", [9, 10])
def test_zero_records_that_are_not_padding_stay_records(version: int) -> None:
    """Only zeros that end the set on its 4-byte boundary can be padding: an exporter that does
    not pad (a set of 4 + 3 * 3 bytes) sent three records, the last one all zeros."""
    t = TINY[3]
    dec = Decoder(DecoderConfig(default_sampling=0))
    body = b"".join(struct.pack("!BH", 17, 53) for _ in range(2)) + b"\0\0\0"     # 9 bytes, no padding
    unpadded = _raw_set(300, body, pad=False)
    if version == 9:
        d = v9_datagram([template_set([t], version=9), unpadded], seq=0, unix_secs=EXPORT, uptime_ms=1000)
    else:
        d = ipfix_message([template_set([t]), unpadded], seq=0, export_time=EXPORT)
    b = dec.decode(d, EXPORTER, PORT, EXPORT)
    assert b.error is None and len(b) == 3


# ------------------------------------------------------------------ interface-scoped sampling

FLOW_IF = _tpl(256, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("in_if", 10, 0, 4), ("bytes", 1, 0, 4))


def _flows(*ifaces: int) -> list[dict[str, object]]:
    return [{"src": "10.1.1.1", "dst": "10.2.2.2", "in_if": i, "bytes": 100 + i} for i in ifaces]


def test_v9_interface_scoped_sampling_applies_per_ingress_interface() -> None:
    """RFC 3954 6.1: scope field type 2 is "Interface". Cisco IOS with per-interface sampling
    sends one options record per interface (scope Interface = its ifIndex, SAMPLING_INTERVAL
    (34), SAMPLING_ALGORITHM (35)): each interface's rate applies to the flows that came in on it
    (INPUT_SNMP, 10), they do not overwrite each other as one rate of the whole source id."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    opt_tpl = _v9_options_set(260, [(2, 4)], [(34, 4), (35, 1)])
    opt_data = _raw_set(260, struct.pack("!IIB", 1, 100, 2) + struct.pack("!IIB", 2, 1000, 2))
    d = v9_datagram([opt_tpl, opt_data, template_set([FLOW_IF], version=9)], seq=0, unix_secs=EXPORT, uptime_ms=1000)
    assert dec.decode(d, EXPORTER, PORT, EXPORT).error is None
    b = dec.decode(v9_datagram([data_set(FLOW_IF, _flows(1, 2, 3))], seq=1, unix_secs=EXPORT, uptime_ms=2000),
                   EXPORTER, PORT, EXPORT)
    assert b.error is None
    # interface 3 has no rate of its own, and the source id none either
    assert [f.get("Sampling") for f in b.to_dicts()] == [100, 1000, None]
    assert dec.exporter(EXPORTER).domain_sampling == {}


def test_ipfix_ingress_interface_scoped_sampling_and_its_priorities() -> None:
    """IPFIX options scoped by ingressInterface (10), rates as samplingPacketInterval (305): per
    interface. A record's own rate comes first, then the rate of its sampler id, then its ingress
    interface's, then the process and domain's (an options record scoped by the domain)."""
    dec = Decoder(DecoderConfig(default_sampling=7))
    by_if = _tpl(300, ("if", 10, 0, 4), ("interval", 305, 0, 4), scope=1)
    by_sampler = _tpl(301, ("sampler", 302, 0, 4), ("interval", 305, 0, 4), scope=1)
    by_domain = _tpl(302, ("domain", 149, 0, 4), ("interval", 34, 0, 4), scope=1)
    flows = _tpl(256, ("src", 8, 0, 4), ("in_if", 10, 0, 4), ("sampler", 302, 0, 4), ("own", 34, 0, 4))
    dec.decode(ipfix_message([_ipfix_options_set([by_if, by_sampler, by_domain]), template_set([flows]),
                              data_set(by_if, [{"if": 1, "interval": 100}, {"if": 2, "interval": 1000}]),
                              data_set(by_sampler, [{"sampler": 5, "interval": 50}])],
                             seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)

    def sampling(recs: list[tuple[int, int, int]]) -> list[int | None]:
        data = data_set(flows, [{"src": "10.0.0.9", "in_if": i, "sampler": s, "own": o} for i, s, o in recs])
        b = dec.decode(ipfix_message([data], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
        assert b.error is None
        return [f.get("Sampling") for f in b.to_dicts()]

    # own rate; sampler 5's; interface 1's, 2's (sampler 9 has no rate); interface 3: none
    # learned, the configured default
    assert sampling([(1, 5, 3), (1, 5, 0), (1, 9, 0), (2, 9, 0), (3, 9, 0)]) == [3, 50, 100, 1000, 7]
    dec.decode(ipfix_message([data_set(by_domain, [{"domain": 0, "interval": 20}])], seq=0, export_time=EXPORT),
               EXPORTER, PORT, EXPORT)
    # the domain's rate is for the interfaces without one of their own
    assert sampling([(1, 9, 0), (3, 9, 0)]) == [100, 20]


def test_interface_rates_survive_a_restart_and_go_with_their_options_templates() -> None:
    """Interface rates are saved and loaded with the state file as sampler rates are, and
    withdrawing the options templates of the process and domain (RFC 7011 8.1) forgets them."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    by_if = _tpl(300, ("if", 10, 0, 4), ("interval", 305, 0, 4), scope=1)
    dec.decode(ipfix_message([_ipfix_options_set([by_if]), template_set([FLOW_IF]),
                              data_set(by_if, [{"if": 1, "interval": 100}, {"if": 2, "interval": 1000}])],
                             seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    data = ipfix_message([data_set(FLOW_IF, _flows(1, 2))], seq=0, export_time=EXPORT)
    fresh = Decoder(DecoderConfig(default_sampling=0))
    fresh.import_state(dec.export_state())
    for d in (dec, fresh):
        assert [f.get("Sampling") for f in d.decode(data, EXPORTER, PORT, EXPORT).to_dicts()] == [100, 1000]
    dec.decode(ipfix_message([struct.pack("!HHHH", 3, 8, 300, 0)], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert [f.get("Sampling") for f in dec.decode(data, EXPORTER, PORT, EXPORT).to_dicts()] == [None, None]
    assert dec.export_state()["exporters"][EXPORTER]["interface_rates"] == []


def test_interface_rates_are_bounded_per_exporter() -> None:
    """RFC 7011 11.4: a spray of interface-scoped options records cannot grow the state without
    limit: past 1024 interfaces they are refused and counted (options_limit), as sampler ids are."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    by_if = _tpl(300, ("if", 10, 0, 4), ("interval", 305, 0, 4), scope=1)
    dec.decode(ipfix_message([_ipfix_options_set([by_if])], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    for i in range(0, 2000, 100):
        recs: list[dict[str, object]] = [{"if": i + j, "interval": 10} for j in range(100)]
        dec.decode(ipfix_message([data_set(by_if, recs)], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert len(dec.export_state()["exporters"][EXPORTER]["interface_rates"]) == 1024
    assert dec.stats()[EXPORTER]["protocols"]["ipfix"]["errors"] == {"options_limit": 2000 - 1024}


# ------------------------------------------------------------------ samplingProbability (311)

@pytest.mark.parametrize(("fmt", "p", "want"), [
    ("!d", 0.001, 1000), ("!f", 0.001, 1000), ("!d", 1.0, 1), ("!d", 0.3, 3), ("!f", 1 / 64, 64),
    ("!d", 0.35, 3),            # 2.86: to the nearest
    ("!d", 0.0, None), ("!d", -0.5, None), ("!d", 1.5, None), ("!d", math.nan, None), ("!d", math.inf, None),
    ("!d", 1e-300, 0xFFFFFFFF),  # far beyond 32 bits: held at the largest rate, as other elements
])
def test_sampling_probability(fmt: str, p: float, want: int | None) -> None:
    """RFC 5477 8.2.6 samplingProbability (311, float64; RFC 7011 6.2: may be sent as float32):
    the rate is 1 / p, rounded, for 0 < p <= 1. Any other value is no rate. Time-based selection
    (samplingTimeInterval 307 / samplingTimeSpace 308, RFC 5477 8.2.2/8.2.3) gives no packet rate:
    the elements stay as they came."""
    length = struct.calcsize(fmt)
    dec = Decoder(DecoderConfig(default_sampling=0))
    opt = _tpl(300, ("domain", 149, 0, 4), ("prob", 311, 0, length), scope=1)
    flows = _tpl(256, ("src", 8, 0, 4), ("bytes", 1, 0, 4))
    own = _tpl(257, ("src", 8, 0, 4), ("prob", 311, 0, length), ("t_int", 307, 0, 4), ("t_space", 308, 0, 4))
    opt_rec = struct.pack("!I", 0) + struct.pack(fmt, p)
    d = ipfix_message([_ipfix_options_set([opt]), template_set([flows, own]), _raw_set(300, opt_rec),
                       data_set(flows, [{"src": "10.0.0.1", "bytes": 5}]),
                       _raw_set(257, struct.pack("!4s", bytes([10, 0, 0, 2])) + struct.pack(fmt, p)
                                + struct.pack("!II", 1000, 9000))],
                      seq=0, export_time=EXPORT)
    b = dec.decode(d, EXPORTER, PORT, EXPORT)
    assert b.error is None
    got = b.to_dicts()
    assert [f.get("Sampling") for f in got] == [want, want]
    assert got[1]["ie307"] == "000003e8" and got[1]["ie308"] == "00002328"


def test_another_replicas_interface_rates_are_merged_with_its_templates(tmp_path: Path) -> None:
    """A shared state file (collector.state): the interface, egress interface and template rates
    of an exporting process taken from another replica's save come with its templates, as its
    sampler and domain rates do."""
    import json
    import time

    from collector.state import StateFile

    now = time.time()
    tpl = {"version": 10, "domain": 0, "id": 300, "port": 5000, "options": True, "refreshed": now - 5,
           "scope": 1, "fields": [[10, 0, 4], [305, 0, 4]]}
    theirs = {"format": 3, "exporters": {EXPORTER: {
        "templates": [tpl], "domain_sampling": [], "sampler_rates": [], "sysinit_ms": [],
        "interface_rates": [[10, 0, 5000, 1, 100], [10, 0, 5000, 2, 1000]],
        "egress_rates": [[10, 0, 5000, 7, 50]], "template_rates": [[10, 0, 5000, 256, 9]]}}}
    mine = {"format": 3, "exporters": {EXPORTER: {"templates": [], "domain_sampling": [], "sampler_rates": [],
                                                  "interface_rates": [], "sysinit_ms": []}}}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(theirs))
    merged = json.loads(StateFile(str(path), None)._merged(json.dumps(mine).encode()))
    got = merged["exporters"][EXPORTER]
    assert got["interface_rates"] == [[10, 0, 5000, 1, 100], [10, 0, 5000, 2, 1000]]
    assert got["egress_rates"] == [[10, 0, 5000, 7, 50]] and got["template_rates"] == [[10, 0, 5000, 256, 9]]
    dec = Decoder(DecoderConfig(default_sampling=0))
    dec.import_state(merged)
    data = ipfix_message([template_set([FLOW_IF]), data_set(FLOW_IF, _flows(1, 2, 3))], seq=0, export_time=EXPORT)
    # interface 3 has no rate: its template's (FLOW_IF is template 256)
    assert [f.get("Sampling") for f in dec.decode(data, EXPORTER, 5000, EXPORT).to_dicts()] == [100, 1000, 9]


# ------------------------------------------------------------------ several rate elements in one record

@pytest.mark.parametrize(("fields", "values", "want"), [
    # Cisco's v9 sampler options order (akvorado's captures: 48, 50, 49, 84, 34), one of them 0
    ([(50, 4), (49, 1), (34, 4)], [0, 2, 100], 100),
    ([(50, 4), (49, 1), (34, 4)], [100, 2, 0], 100),
    ([(34, 4), (50, 4)], [0, 100], 100),
    ([(34, 4), (50, 4)], [100, 0], 100),
    ([(34, 4), (50, 4)], [100, 10], 100),       # both given: the first one
    ([(34, 4), (50, 4)], [0, 0], None),
    # samplingPacketInterval (305) with its space (306) before samplingInterval (34): 1 of 100
    ([(34, 4), (305, 4), (306, 4)], [100, 1, 99], 100),
    ([(34, 4), (305, 4), (306, 4)], [0, 1, 99], 100),
    ([(305, 4), (34, 4)], [0, 50], 50),
])
def test_the_rate_is_the_first_rate_element_that_is_not_0(fields: list[tuple[int, int]], values: list[int],
                                                          want: int | None) -> None:
    """A v9 options record (scope System) with samplingInterval (34) and samplerRandomInterval
    (50) both: 0 is "not given" for some exporters, so the rate is the first of them that is not
    0, not the first one. samplingPacketInterval (305) with samplingPacketSpace (306) comes before
    them (RFC 5476: 305 packets out of 305 + 306). The same holds for a data record's own
    elements."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    opt_tpl = _v9_options_set(260, [(1, 4)], fields)
    elements = b"".join(v.to_bytes(ln, "big") for (_ie, ln), v in zip(fields, values, strict=True))
    rec = struct.pack("!I", 0) + elements
    flows = _tpl(256, ("src", 8, 0, 4), ("bytes", 1, 0, 4))
    own = _tpl(257, ("src", 8, 0, 4), *((f"e{i}", ie, 0, ln) for i, (ie, ln) in enumerate(fields)))
    own_rec = bytes([10, 0, 0, 2]) + elements
    d = v9_datagram([opt_tpl, _raw_set(260, rec), template_set([flows, own], version=9),
                     data_set(flows, [{"src": "10.0.0.1", "bytes": 5}]), _raw_set(257, own_rec)],
                    seq=0, unix_secs=EXPORT, uptime_ms=1000)
    b = dec.decode(d, EXPORTER, PORT, EXPORT)
    assert b.error is None
    got = b.to_dicts()
    assert [f.get("Sampling") for f in got] == [want, want]
    if [ie for ie, _ln in fields] == [34, 50]:
        # the later one stays as it came, as other repeated elements do
        assert got[1]["ie50"] == f"{values[1]:08x}"


# ------------------------------------------------------------------ egress-interface- and template-scoped rates

FLOW_IO = _tpl(256, ("src", 8, 0, 4), ("in_if", 10, 0, 4), ("out_if", 14, 0, 4), ("bytes", 1, 0, 4))


def _io_sampling(dec: Decoder, pairs: list[tuple[int, int]]) -> list[object]:
    recs: list[dict[str, object]] = [{"src": "10.0.0.9", "in_if": i, "out_if": o, "bytes": 10} for i, o in pairs]
    b = dec.decode(ipfix_message([template_set([FLOW_IO]), data_set(FLOW_IO, recs)], seq=0, export_time=EXPORT),
                   EXPORTER, PORT, EXPORT)
    assert b.error is None
    return [f.get("Sampling") for f in b.to_dicts()]


def _options(dec: Decoder, *tables: tuple[IpfixTemplate, dict[str, object]]) -> None:
    """One IPFIX message: options templates (scope: their first field), one record of each."""
    sets = [_ipfix_options_set([t for t, _rec in tables])] + [data_set(t, [rec]) for t, rec in tables]
    assert dec.decode(ipfix_message(sets, seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT).error is None


def test_ipfix_egress_interface_scoped_sampling_applies_to_that_egress_interface() -> None:
    """IPFIX options scoped by egressInterface (14) give the rate of the traffic sampled as it
    leaves by that interface (output sampling): the records whose egressInterface it is, when
    their ingress interface has no rate of its own (a packet sampled on input is sampled at its
    input's rate). Never the whole exporting process and domain's."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    _options(dec, (_tpl(300, ("if", 14, 0, 4), ("interval", 34, 0, 4), scope=1), {"if": 5, "interval": 100}),
             (_tpl(301, ("if", 10, 0, 4), ("interval", 34, 0, 4), scope=1), {"if": 1, "interval": 1000}))
    # out 5: its rate; out 6: none; in 1 out 5: the input's
    assert _io_sampling(dec, [(2, 5), (2, 6), (1, 5), (1, 6)]) == [100, None, 1000, 1000]
    assert dec.exporter(EXPORTER).domain_sampling == {}


@pytest.mark.parametrize("version", [9, 10])
def test_template_scoped_sampling_applies_to_that_templates_data(version: int) -> None:
    """Options scoped by a template (IPFIX templateId (145), beside observationDomainId as
    akvorado's physicalinterfaces capture has it; v9 scope type 5 "Template"): the rate is that
    template's data records', not those of the process's other templates."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    other = _tpl(257, ("src", 8, 0, 4), ("bytes", 1, 0, 4))
    rec = {"src": "10.0.0.9", "in_if": 1, "out_if": 2, "bytes": 10}
    if version == 10:
        by_tpl = _tpl(300, ("domain", 149, 0, 4), ("tid", 145, 0, 2), ("interval", 305, 0, 4),
                      ("space", 306, 0, 4), scope=2)
        d = ipfix_message([_ipfix_options_set([by_tpl]), template_set([FLOW_IO, other]),
                           data_set(by_tpl, [{"domain": 0, "tid": 256, "interval": 1, "space": 99}]),
                           data_set(FLOW_IO, [rec]), data_set(other, [{"src": "10.0.0.8", "bytes": 1}])],
                          seq=0, export_time=EXPORT)
    else:
        opt = _v9_options_set(300, [(5, 2)], [(34, 4)])
        d = v9_datagram([opt, _raw_set(300, struct.pack("!HI", 256, 100)), template_set([FLOW_IO, other], version=9),
                         data_set(FLOW_IO, [rec]), data_set(other, [{"src": "10.0.0.8", "bytes": 1}])],
                        seq=0, unix_secs=EXPORT, uptime_ms=1000)
    b = dec.decode(d, EXPORTER, PORT, EXPORT)
    assert b.error is None
    assert [f.get("Sampling") for f in b.to_dicts()] == [100, None]
    assert dec.exporter(EXPORTER).domain_sampling == {}


def test_egress_and_template_rates_survive_a_restart_and_go_with_their_options_templates() -> None:
    """Egress-interface and template rates are saved and loaded with the state file as interface
    rates are, and withdrawing the options templates (RFC 7011 8.1) forgets them."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    _options(dec, (_tpl(300, ("if", 14, 0, 4), ("interval", 34, 0, 4), scope=1), {"if": 5, "interval": 100}),
             (_tpl(301, ("tid", 145, 0, 2), ("interval", 34, 0, 4), scope=1), {"tid": 256, "interval": 7}))
    fresh = Decoder(DecoderConfig(default_sampling=0))
    fresh.import_state(dec.export_state())
    for d in (dec, fresh):
        assert _io_sampling(d, [(2, 5), (2, 6)]) == [100, 7]
    withdraw_all_options = struct.pack("!HHHH", 3, 8, 3, 0)     # RFC 7011 8.1: set id 3, template id 3
    dec.decode(ipfix_message([withdraw_all_options], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert _io_sampling(dec, [(2, 5), (2, 6)]) == [None, None]
    st = dec.export_state()["exporters"][EXPORTER]
    assert st["egress_rates"] == [] and st["template_rates"] == []


FLOW_DIR = _tpl(258, ("src", 8, 0, 4), ("in_if", 10, 0, 4), ("out_if", 14, 0, 4), ("dir", 61, 0, 1),
                ("bytes", 1, 0, 4))


def _dir_flows(*recs: tuple[int, int, int]) -> list[dict[str, object]]:
    return [{"src": "10.0.0.9", "in_if": i, "out_if": o, "dir": d, "bytes": 10} for i, o, d in recs]


def test_v9_interface_scope_is_the_output_interface_of_a_record_observed_on_output() -> None:
    """RFC 3954's Interface scope (type 2) names an interface, not a direction: the one its
    sampler is on. A record observed on output (DIRECTION (61) = 1, Cisco's egress monitoring)
    was sampled on its output interface, so it has that interface's rate; one observed on input
    (0), or without DIRECTION, its input's."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    opt_tpl = _v9_options_set(260, [(2, 4)], [(34, 4)])
    opt_data = _raw_set(260, struct.pack("!II", 1, 100) + struct.pack("!II", 2, 1000))
    d = v9_datagram([opt_tpl, opt_data, template_set([FLOW_DIR, FLOW_IO], version=9),
                     data_set(FLOW_DIR, _dir_flows((1, 2, 1), (1, 2, 0), (1, 3, 1))),
                     data_set(FLOW_IO, [{"src": "10.0.0.9", "in_if": 1, "out_if": 2, "bytes": 10}])],
                    seq=0, unix_secs=EXPORT, uptime_ms=1000)
    b = dec.decode(d, EXPORTER, PORT, EXPORT)
    assert b.error is None
    # out 2's; in 1's; out 3 has none; no DIRECTION: in 1's
    assert [f.get("Sampling") for f in b.to_dicts()] == [1000, 100, None, 100]


def test_ipfix_egress_scoped_rates_are_not_for_records_observed_on_input() -> None:
    """IPFIX: a rate scoped by egressInterface is not the rate of a record that says it was
    observed on input (flowDirection 0); ingressInterface-scoped rates stay the ingress
    interface's whatever the direction (the scope says ingress)."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    _options(dec, (_tpl(300, ("if", 14, 0, 4), ("interval", 34, 0, 4), scope=1), {"if": 5, "interval": 100}),
             (_tpl(301, ("if", 10, 0, 4), ("interval", 34, 0, 4), scope=1), {"if": 1, "interval": 1000}))
    b = dec.decode(ipfix_message([template_set([FLOW_DIR]),
                                  data_set(FLOW_DIR, _dir_flows((2, 5, 1), (2, 5, 0), (1, 5, 1)))],
                                 seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert b.error is None
    assert [f.get("Sampling") for f in b.to_dicts()] == [100, None, 1000]


# ------------------------------------------------------------------ interface names from options data

VARLEN = 65535
V9_FLOW = _tpl(256, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("in_if", 10, 0, 2), ("out_if", 14, 0, 2),
               ("bytes", 1, 0, 4))
V9_IF_TABLE = _tpl(260, ("if", 2, 0, 4), ("name", 82, 0, 16), ("desc", 83, 0, 32), scope=1)


def _if_pairs(t: IpfixTemplate, *pairs: tuple[int, int]) -> bytes:
    return data_set(t, [{"src": "10.1.1.1", "dst": "10.2.2.2", "in_if": i, "out_if": o, "bytes": 10}
                        for i, o in pairs])


def _interfaces(b: object) -> list[tuple[object, object]]:
    return [(f.get("Interfaces"), f.get("IfDirections")) for f in b.to_dicts()]  # type: ignore[attr-defined]


def _v9_if_table(dec: Decoder, rows: list[dict[str, object]], *, port: int = PORT) -> None:
    """Cisco IOS "option interface-table" as RFC 3954 6.1 lays it out: an options template
    (flowset 1) with scope Interface (type 2, the ifIndex) and IF_NAME (82) / IF_DESC (83),
    fixed-length strings padded with NULs, then its options data."""
    d = v9_datagram([_v9_options_set(260, [(2, 4)], [(82, 16), (83, 32)]), data_set(V9_IF_TABLE, rows)],
                    seq=0, unix_secs=EXPORT, uptime_ms=1000)
    assert dec.decode(d, EXPORTER, port, EXPORT).error is None


def test_v9_interface_table_names_the_interfaces_of_records_without_names() -> None:
    """A record with no interfaceName of its own gets Interfaces [ingress, egress] from the names
    its exporting process's interface table gave its INPUT_SNMP and OUTPUT_SNMP, IfDirections
    [0, 1]: IF_NAME, else IF_DESC when the name is empty; "" for an interface not named while
    the other is; nothing when neither is."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    _v9_if_table(dec, [{"if": 1, "name": b"Gi0/1", "desc": b"GigabitEthernet0/1"},
                       {"if": 2, "name": b"", "desc": b"GigabitEthernet0/2"},
                       {"if": 3, "name": b"", "desc": b""}])
    d = v9_datagram([template_set([V9_FLOW], version=9), _if_pairs(V9_FLOW, (1, 2), (2, 9), (9, 1), (3, 9), (8, 9))],
                    seq=1, unix_secs=EXPORT, uptime_ms=2000)
    b = dec.decode(d, EXPORTER, PORT, EXPORT)
    assert b.error is None
    assert _interfaces(b) == [(["Gi0/1", "GigabitEthernet0/2"], [0, 1]), (["GigabitEthernet0/2", ""], [0, 1]),
                              (["", "Gi0/1"], [0, 1]), (None, None), (None, None)]
    # another exporting process (source port) or source id has its own table
    assert _interfaces(dec.decode(d, EXPORTER, PORT + 1, EXPORT)) == [(None, None)] * 5
    other_domain = v9_datagram([template_set([V9_FLOW], version=9), _if_pairs(V9_FLOW, (1, 2))], seq=1,
                               unix_secs=EXPORT, uptime_ms=2000, source_id=7)
    assert _interfaces(dec.decode(other_domain, EXPORTER, PORT, EXPORT)) == [(None, None)]


def test_a_records_own_interface_name_wins() -> None:
    """A template with interfaceName (82) of its own (Open vSwitch): its names are the record's,
    whatever the interface table says of its interfaces."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    _v9_if_table(dec, [{"if": 1, "name": b"Gi0/1", "desc": b""}, {"if": 2, "name": b"Gi0/2", "desc": b""}])
    own = _tpl(257, ("src", 8, 0, 4), ("in_if", 10, 0, 2), ("out_if", 14, 0, 2), ("name", 82, 0, 8))
    d = v9_datagram([template_set([own], version=9),
                     data_set(own, [{"src": "10.1.1.1", "in_if": 1, "out_if": 2, "name": b"eth0"}])],
                    seq=1, unix_secs=EXPORT, uptime_ms=2000)
    assert _interfaces(dec.decode(d, EXPORTER, PORT, EXPORT)) == [(["eth0"], [0])]


def _v9_flows(t: IpfixTemplate, rows: list[dict[str, object]]) -> list[tuple[object, object]]:
    """(Interfaces, IfDirections) of v9 data records of template t, decoded by a decoder whose
    exporting process's interface table (RFC 3954 layout) named ifIndex 1 Gi0/1 and 2 Gi0/2."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    _v9_if_table(dec, [{"if": 1, "name": b"Gi0/1", "desc": b""}, {"if": 2, "name": b"Gi0/2", "desc": b""}])
    d = v9_datagram([template_set([t], version=9), data_set(t, [{"src": "10.1.1.1", **r} for r in rows])],
                    seq=1, unix_secs=EXPORT, uptime_ms=2000)
    b = dec.decode(d, EXPORTER, PORT, EXPORT)
    assert b.error is None
    return _interfaces(b)


def test_an_empty_own_interface_name_takes_the_learned_one() -> None:
    """A template with interfaceName (82) elements of its own that a record sends empty (v9
    IF_NAME, fixed length, NUL padding only): the empty slot gets the name the interface table
    gave that interface; a non-empty own name still wins. One own name is the interface the record
    was observed on (IfDirections [direction], ingress without DIRECTION 61); two are its ingress
    and egress ports (Open vSwitch's egress records), each empty one filled from its interface."""
    one = _tpl(257, ("src", 8, 0, 4), ("in_if", 10, 0, 2), ("out_if", 14, 0, 2), ("name", 82, 0, 8))
    assert _v9_flows(one, [{"in_if": 1, "out_if": 2, "name": b""}, {"in_if": 1, "out_if": 2, "name": b"eth0"},
                           {"in_if": 9, "out_if": 2, "name": b""}]) == [
        (["Gi0/1"], [0]), (["eth0"], [0]), (None, None)]
    one_dir = _tpl(258, ("src", 8, 0, 4), ("in_if", 10, 0, 2), ("out_if", 14, 0, 2), ("name", 82, 0, 8),
                   ("dir", 61, 0, 1))
    assert _v9_flows(one_dir, [{"in_if": 1, "out_if": 2, "name": b"", "dir": 1},
                               {"in_if": 1, "out_if": 2, "name": b"", "dir": 0},
                               {"in_if": 1, "out_if": 9, "name": b"", "dir": 1}]) == [
        (["Gi0/2"], [1]), (["Gi0/1"], [0]), (None, None)]
    two = _tpl(259, ("src", 8, 0, 4), ("in_if", 10, 0, 2), ("out_if", 14, 0, 2), ("name", 82, 0, 8),
               ("name2", 82, 0, 8), ("dir", 61, 0, 1))
    assert _v9_flows(two, [{"in_if": 1, "out_if": 2, "name": b"", "name2": b"", "dir": 1},
                           {"in_if": 1, "out_if": 2, "name": b"eth0", "name2": b"", "dir": 1},
                           {"in_if": 1, "out_if": 2, "name": b"", "name2": b"eth1", "dir": 1},
                           {"in_if": 9, "out_if": 2, "name": b"", "name2": b"", "dir": 1},
                           {"in_if": 1, "out_if": 9, "name": b"", "name2": b"", "dir": 1},
                           {"in_if": 9, "out_if": 9, "name": b"", "name2": b"", "dir": 1}]) == [
        (["Gi0/1", "Gi0/2"], [0, 1]), (["eth0", "Gi0/2"], [0, 1]), (["Gi0/1", "eth1"], [0, 1]),
        (["", "Gi0/2"], [0, 1]), (["Gi0/1", ""], [0, 1]), (None, None)]


def test_learned_names_follow_the_records_direction() -> None:
    """NetObserv's Interfaces / IfDirections: the interfaces a flow was observed on and the
    direction there. A record with DIRECTION / flowDirection (61) was observed on one interface,
    its ingress one for 0 (ingress monitoring), its egress one for 1 (egress monitoring): it gets
    that interface's learned name alone, with IfDirections [direction], exactly as a record that
    names that interface in an interfaceName of its own; none when that interface is not named
    (even if the other is). Without a direction, both (test above)."""
    learned = _tpl(256, ("src", 8, 0, 4), ("in_if", 10, 0, 2), ("out_if", 14, 0, 2), ("dir", 61, 0, 1))
    own = _tpl(257, ("src", 8, 0, 4), ("in_if", 10, 0, 2), ("out_if", 14, 0, 2), ("dir", 61, 0, 1),
               ("name", 82, 0, 8))
    rows: list[dict[str, object]] = [{"in_if": 1, "out_if": 2, "dir": 0}, {"in_if": 1, "out_if": 2, "dir": 1},
                                     {"in_if": 1, "out_if": 9, "dir": 1}, {"in_if": 9, "out_if": 2, "dir": 0}]
    got = _v9_flows(learned, rows)
    assert got == [(["Gi0/1"], [0]), (["Gi0/2"], [1]), (None, None), (None, None)]
    # the same records naming the interface they were observed on themselves (empty: unnamed)
    named = [{**r, "name": name} for r, name in zip(rows, (b"Gi0/1", b"Gi0/2", b"", b""), strict=True)]
    assert _v9_flows(own, named) == got
    # IPFIX flowDirection is the same element, read the same way
    dec = Decoder(DecoderConfig(default_sampling=0))
    table = _tpl(300, ("if", 10, 0, 4), ("name", 82, 0, VARLEN), scope=1)
    b = dec.decode(ipfix_message([_ipfix_options_set([table]), template_set([learned]),
                                  data_set(table, [{"if": 1, "name": b"xe-0/0/1"}, {"if": 2, "name": b"xe-0/0/2"}]),
                                  data_set(learned, [{"src": "10.1.1.1", **r} for r in rows])],
                                 seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert _interfaces(b) == [(["xe-0/0/1"], [0]), (["xe-0/0/2"], [1]), (None, None), (None, None)]


def test_learned_names_turn_with_a_biflows_reverse_direction() -> None:
    """--split-biflows: the reverse flow of an RFC 5103 biflow swaps its interfaces. A pair of
    names (a record without a direction: [ingress, egress]) swaps with them. A record with
    flowDirection (61) has one name, the interface it was observed on; its reverse flow's
    packets crossed that same interface the other way, so it keeps that one name with the
    direction reversed ([name], IfDirections [1 - direction]), whether the name is learned or
    the record's own. A single own name without a direction is written as the ingress
    interface's, [name] with [0], as with flowDirection 0: its reverse flow is that record's
    reverse, [name] with [1] (it was ["", name] with [0, 1], an ingress observation of an
    interface with no name), the name its own or, for an empty one, the table's, and for a
    record carrying the reverse direction only (forward counters 0) too."""
    dec = Decoder(DecoderConfig(default_sampling=0, split_biflows=True))
    table = _tpl(300, ("if", 10, 0, 4), ("name", 82, 0, VARLEN), scope=1)
    bi = _tpl(256, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("in_if", 10, 0, 2), ("out_if", 14, 0, 2),
              ("bytes", 1, 0, 4), ("rbytes", 1, 29305, 4))
    bi_dir = _tpl(257, *bi.fields, ("dir", 61, 0, 1))
    own = _tpl(258, *bi_dir.fields, ("name", 82, 0, VARLEN))
    own_no_dir = _tpl(259, *bi.fields, ("name", 82, 0, VARLEN))
    flow = {"src": "10.1.1.1", "dst": "10.2.2.2", "in_if": 1, "bytes": 10, "rbytes": 20}
    b = dec.decode(ipfix_message([_ipfix_options_set([table]), template_set([bi, bi_dir, own, own_no_dir]),
                                  data_set(table, [{"if": 1, "name": b"xe-0/0/1"}, {"if": 2, "name": b"xe-0/0/2"}]),
                                  data_set(bi, [{**flow, "out_if": i} for i in (2, 9)]),
                                  data_set(bi_dir, [{**flow, "out_if": 2, "dir": d} for d in (0, 1)]),
                                  data_set(own, [{**flow, "out_if": 2, "dir": 0, "name": n}
                                                 for n in (b"xe-0/0/1", b"")]),
                                  data_set(own_no_dir, [{**flow, "out_if": 2, "name": n}
                                                        for n in (b"xe-0/0/1", b"")]),
                                  data_set(own_no_dir, [{**flow, "bytes": 0, "out_if": 2, "name": b"xe-0/0/1"}])],
                                 seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert b.error is None
    assert _interfaces(b) == [(["xe-0/0/1", "xe-0/0/2"], [0, 1]), (["xe-0/0/2", "xe-0/0/1"], [0, 1]),
                              (["xe-0/0/1", ""], [0, 1]), (["", "xe-0/0/1"], [0, 1]),
                              (["xe-0/0/1"], [0]), (["xe-0/0/1"], [1]),
                              (["xe-0/0/2"], [1]), (["xe-0/0/2"], [0]),
                              (["xe-0/0/1"], [0]), (["xe-0/0/1"], [1]),
                              (["xe-0/0/1"], [0]), (["xe-0/0/1"], [1]),
                              (["xe-0/0/1"], [0]), (["xe-0/0/1"], [1]),
                              (["xe-0/0/1"], [0]), (["xe-0/0/1"], [1]),
                              (["xe-0/0/1"], [1])]
    # each reverse flow's direction is its forward flow's reversed (FlowDirection, no enricher)
    assert [f.get("FlowDirection") for f in b.to_dicts()][4:12] == [0, 1, 1, 0, 0, 1, 0, 1]


def test_an_interface_table_learned_after_its_data_names_the_next_records() -> None:
    """A data template whose records came before its exporting process and domain sent an
    interface table (another domain of the exporter had one already) names the records that
    come after the table, and no longer once the table's options template is withdrawn
    (RFC 7011 8.1), until a state file brings one; the other domain keeps its own all along."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    table = _tpl(300, ("if", 10, 0, 4), ("name", 82, 0, VARLEN), scope=1)

    def names(domain: int, *sets: bytes) -> list[tuple[object, object]]:
        b = dec.decode(ipfix_message([*sets, _if_pairs(V9_FLOW, (1, 2))], seq=0, export_time=EXPORT, domain=domain),
                       EXPORTER, PORT, EXPORT)
        assert b.error is None
        return _interfaces(b)

    tables = [_ipfix_options_set([table]), template_set([V9_FLOW])]
    assert names(1, *tables, data_set(table, [{"if": 1, "name": b"et-1/0/1"}])) == [(["et-1/0/1", ""], [0, 1])]
    assert names(2, *tables) == [(None, None)]
    assert names(2, data_set(table, [{"if": 2, "name": b"et-2/0/2"}])) == [(["", "et-2/0/2"], [0, 1])]
    assert names(2) == [(["", "et-2/0/2"], [0, 1])]
    assert names(2, struct.pack("!HHHH", 3, 8, 300, 0)) == [(None, None)]
    assert names(1) == [(["et-1/0/1", ""], [0, 1])]
    # a table another replica learned, merged into the running decoder's state (only_missing)
    other = Decoder(DecoderConfig(default_sampling=0))
    other.decode(ipfix_message([_ipfix_options_set([table]), data_set(table, [{"if": 1, "name": b"et-2/0/1"}])],
                               seq=0, export_time=EXPORT, domain=2), EXPORTER, PORT, EXPORT)
    dec.import_state(other.export_state(), only_missing=True)
    assert names(2) == [(["et-2/0/1", ""], [0, 1])]


@pytest.mark.parametrize("layout", ["ios-xr-ipfix", "egress-scope", "ios-xr-v9"])
def test_interface_tables_of_other_layouts(layout: str) -> None:
    """IOS-XR's IPFIX interface table is scoped by ingressInterface (10) and egressInterface (14)
    both (the same ifIndex), with variable-length interfaceDescription (83) then interfaceName
    (82); an IPFIX table may be scoped by egressInterface alone; IOS-XR's v9 table has scope
    System (1) and the ifIndex as an INPUT_SNMP (10) field beside IF_DESC (83)."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    if layout == "ios-xr-ipfix":
        table = _tpl(300, ("if", 10, 0, 4), ("if2", 14, 0, 4), ("desc", 83, 0, VARLEN), ("name", 82, 0, VARLEN),
                     scope=2)
        rows = [{"if": i, "if2": i, "desc": f"TenGigE0/0/0/{i}".encode(), "name": f"TenGigE0_0_0_{i}".encode()}
                for i in (1, 2)]
        want = ["TenGigE0_0_0_1", "TenGigE0_0_0_2"]
    elif layout == "egress-scope":
        table = _tpl(300, ("if", 14, 0, 4), ("name", 82, 0, VARLEN), scope=1)
        rows = [{"if": i, "name": f"xe-0/0/{i}".encode()} for i in (1, 2)]
        want = ["xe-0/0/1", "xe-0/0/2"]
    else:
        rows = [{"system": 0, "if": i, "desc": f"TenGigE0_0_1_{i}".encode()} for i in (1, 2)]
        d = v9_datagram([_v9_options_set(261, [(1, 4)], [(10, 4), (83, 64)]),
                         data_set(_tpl(261, ("system", 1, 0, 4), ("if", 10, 0, 4), ("desc", 83, 0, 64)), rows),
                         template_set([V9_FLOW], version=9), _if_pairs(V9_FLOW, (1, 2))],
                        seq=0, unix_secs=EXPORT, uptime_ms=1000)
        b = dec.decode(d, EXPORTER, PORT, EXPORT)
        assert b.error is None and _interfaces(b) == [(["TenGigE0_0_1_1", "TenGigE0_0_1_2"], [0, 1])]
        return
    b = dec.decode(ipfix_message([_ipfix_options_set([table]), data_set(table, rows), template_set([V9_FLOW]),
                                  _if_pairs(V9_FLOW, (1, 2))], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert b.error is None
    assert _interfaces(b) == [(want, [0, 1])]


def test_interface_names_survive_a_restart_and_go_with_their_options_templates(tmp_path: Path) -> None:
    """Interface names are saved and loaded with the state file as interface rates are (another
    replica's come with its templates when merged), and withdrawing the options templates of
    the process and domain (RFC 7011 8.1) forgets them."""
    import json
    import time

    from collector.state import StateFile

    dec = Decoder(DecoderConfig(default_sampling=0))
    table = _tpl(300, ("if", 10, 0, 4), ("name", 82, 0, VARLEN), scope=1)
    # received now: another replica's templates (and what came with them) are merged while recent
    dec.decode(ipfix_message([_ipfix_options_set([table]), template_set([V9_FLOW]),
                              data_set(table, [{"if": 1, "name": "ge-0/0/1 ü".encode()}])],
                             seq=0, export_time=EXPORT), EXPORTER, PORT, time.time())
    saved = dec.export_state()
    assert saved["exporters"][EXPORTER]["interface_names"] == [[10, 0, PORT, 1, "ge-0/0/1 ü"]]
    data = ipfix_message([_if_pairs(V9_FLOW, (1, 2))], seq=0, export_time=EXPORT)
    fresh = Decoder(DecoderConfig(default_sampling=0))
    fresh.import_state(saved)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(saved))
    mine = {"format": 3, "exporters": {EXPORTER: {"templates": []}}}
    merged = Decoder(DecoderConfig(default_sampling=0))
    merged.import_state(json.loads(StateFile(str(path), None)._merged(json.dumps(mine).encode())))
    for d in (dec, fresh, merged):
        assert _interfaces(d.decode(data, EXPORTER, PORT, EXPORT)) == [(["ge-0/0/1 ü", ""], [0, 1])]
    dec.decode(ipfix_message([struct.pack("!HHHH", 3, 8, 300, 0)], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert _interfaces(dec.decode(data, EXPORTER, PORT, EXPORT)) == [(None, None)]
    assert dec.export_state()["exporters"][EXPORTER]["interface_names"] == []


def test_interface_names_are_bounded() -> None:
    """RFC 7011 11.4: names are bounded as interface rates are, 1024 per exporter (more refused
    and counted as options_limit, known ones still renamed), and a name longer than IF-MIB's
    255 bytes is refused and counted the same way; state files are held to the same bounds."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    table = _tpl(300, ("if", 10, 0, 4), ("name", 82, 0, VARLEN), scope=1)
    dec.decode(ipfix_message([_ipfix_options_set([table])], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    for i in range(0, 1100, 100):
        recs: list[dict[str, object]] = [{"if": i + j, "name": b"if%d" % (i + j)} for j in range(100)]
        dec.decode(ipfix_message([data_set(table, recs)], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    dec.decode(ipfix_message([data_set(table, [{"if": 5, "name": b"x" * 256}, {"if": 6, "name": b"y" * 255},
                                               {"if": 7, "name": b"renamed"}])],
                             seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    names = {row[3]: row[4] for row in dec.export_state()["exporters"][EXPORTER]["interface_names"]}
    assert len(names) == 1024 and names[5] == "if5" and names[6] == "y" * 255 and names[7] == "renamed"
    assert dec.stats()[EXPORTER]["protocols"]["ipfix"]["errors"] == {"options_limit": 1100 - 1024 + 1}
    st = {"format": 3, "exporters": {EXPORTER: {"interface_names": [
        [10, 0, PORT, 1, "ok"], [10, 0, PORT, 2, "z" * 256], [10, 0, PORT, 3, 7], [10, 0, PORT, 4, ""]]}}}
    fresh = Decoder(DecoderConfig(default_sampling=0))
    assert fresh.import_state(st)["skipped"] == 3
    assert fresh.export_state()["exporters"][EXPORTER]["interface_names"] == [[10, 0, PORT, 1, "ok"]]


def test_a_full_interface_table_names_every_interface_and_a_renamed_one_stays_in_earlier_flows() -> None:
    """An interface table as large as its bound (1,024 names), ifIndex values of every size
    (small ones, IOS-XR's 0x0c00xxxx, up to the 8 bytes an options record may give one): each
    record gets its own interfaces' names; an ifIndex past 32 bits is not the record's 32-bit
    ingressInterface of the same low bits; the state file keeps the names in the order learned
    and brings them all back. A batch decoded before an interface was renamed still has the name
    it was decoded with after the exporter's table let go of it."""
    import gc

    dec = Decoder(DecoderConfig(default_sampling=0))
    table = _tpl(300, ("if", 10, 0, 8), ("name", 82, 0, VARLEN), scope=1)
    flow = _tpl(256, ("src", 8, 0, 4), ("in_if", 10, 0, 4), ("out_if", 14, 0, 4))
    ifs = [*range(1, 511), *(0x0C000000 + 64 * i for i in range(512)), (1 << 32) | 600, (1 << 64) - 1]
    assert len(ifs) == 1024
    dec.decode(ipfix_message([_ipfix_options_set([table]), template_set([flow]),
                              data_set(table, [{"if": i, "name": b"if%d" % i} for i in ifs])],
                             seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    small = [i for i in ifs if i < 1 << 32]
    pairs = [*zip(small, small[1:] + small[:1], strict=True), (600, 1)]
    data = ipfix_message([data_set(flow, [{"src": "10.1.1.1", "in_if": a, "out_if": b} for a, b in pairs])],
                         seq=0, export_time=EXPORT)
    want = [([f"if{a}", f"if{b}"], [0, 1]) for a, b in pairs[:-1]] + [(["", "if1"], [0, 1])]
    before = dec.decode(data, EXPORTER, PORT, EXPORT)
    assert before.error is None and _interfaces(before) == want
    saved = dec.export_state()
    assert [row[3] for row in saved["exporters"][EXPORTER]["interface_names"]] == ifs
    fresh = Decoder(DecoderConfig(default_sampling=0))
    fresh.import_state(saved)
    assert _interfaces(fresh.decode(data, EXPORTER, PORT, EXPORT)) == want
    dec.decode(ipfix_message([data_set(table, [{"if": 1, "name": b"renamed"}])], seq=0, export_time=EXPORT),
               EXPORTER, PORT, EXPORT)
    gc.collect()
    litter = [b"x%06d" % i for i in range(10000)]    # (memory the old name had, if it was freed)
    assert _interfaces(before) == want
    assert _interfaces(dec.decode(data, EXPORTER, PORT, EXPORT))[0] == (["renamed", "if2"], [0, 1])
    del litter


def test_options_scoped_by_an_interface_and_a_template_give_that_interfaces_rate() -> None:
    """Options with two scope fields, an interface and a template (ingressInterface and templateId):
    an operator would read it as the rate of that template's records on that interface. flowscope
    keys rates by one scope only, the interface first (README, "Sampling"): the rate is the
    interface's, for the records of every template that came in on it, and no template rate is
    learned from it."""
    dec = Decoder(DecoderConfig(default_sampling=0))
    both = _tpl(300, ("if", 10, 0, 4), ("tid", 145, 0, 2), ("interval", 34, 0, 4), scope=2)
    _options(dec, (both, {"if": 1, "tid": 257, "interval": 100}))
    other = _tpl(257, ("src", 8, 0, 4), ("in_if", 10, 0, 4), ("bytes", 1, 0, 4))
    b = dec.decode(ipfix_message([template_set([FLOW_IF, other]), data_set(FLOW_IF, _flows(1, 2)),
                                  data_set(other, [{"src": "10.0.0.7", "in_if": 2, "bytes": 1}])],
                                 seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert b.error is None
    # template 256 on interface 1: the interface's; interface 2 (template 257's too): none
    assert [f.get("Sampling") for f in b.to_dicts()] == [100, None, None]
    ex = dec.exporter(EXPORTER)
    assert ex.interface_rates == {(10, 0, PORT, 1): 100} and ex.template_rates == {}


def test_learned_interface_names_state_estimate_is_within_a_third_of_what_they_take() -> None:
    """Decoder.state_bytes (bounded by max_state_bytes: past it exporters are forgotten) counts
    learned interface names at about what they cost (tracemalloc), as test_robustness holds the
    other kinds of state to: an estimate three times too large forgets exporters early."""
    import gc
    import tracemalloc

    dec = Decoder(DecoderConfig(default_sampling=0))
    table = _tpl(300, ("if", 10, 0, 4), ("name", 82, 0, VARLEN), scope=1)
    dec.decode(ipfix_message([_ipfix_options_set([table])], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    names = [data_set(table, [{"if": 128 * d + i, "name": b"ovn-k8s-mp%d" % (128 * d + i)} for i in range(128)])
             for d in range(8)]
    msgs = [ipfix_message([n], seq=0, export_time=EXPORT) for n in names]
    gc.collect()
    est = dec.state_bytes
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for m in msgs:
            dec.decode(m, EXPORTER, PORT, EXPORT)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(dec.export_state()["exporters"][EXPORTER]["interface_names"]) == 1024
    assert 0.75 < (dec.state_bytes - est) / held < 1.33, (dec.state_bytes - est, held)
