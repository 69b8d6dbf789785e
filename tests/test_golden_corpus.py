"""Golden tests: real NetFlow v5/v9, IPFIX and sFlow v5 captures, decoded by flowscope and by tshark.

Every pcap of the corpus is fed datagram by datagram, in file order, with its source address
and capture time, to one Decoder per pcap. tshark's decode stored beside each pcap
(`<name>.tshark.json`, tshark 4.0.17) is the reference: every data record tshark decodes must come
out as a flow with equal values (mapping table in tests/support/tshark.py), record counts per
datagram must be equal, data sets tshark could not decode for want of a template must be counted
as missing-template sets, and the decoder's per-exporter stats must move by exactly as much.

The Apache-2.0 fixtures live in tests/data/corpus (origin in tests/data/NOTICE). The AGPL, GPL and
MPL captures of the shared corpus cannot be copied here; they are read from ../shared/corpus (or
$FLOWSCOPE_SHARED_CORPUS) when present, and skipped with a reason otherwise.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from tests.support import tshark as T

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "corpus"
SHARED = Path(os.environ.get("FLOWSCOPE_SHARED_CORPUS", ROOT.parent / "shared" / "corpus"))
NON_PERMISSIVE = ("akvorado_", "juniper_akvorado-", "_pmacct-", "pktvisor_")

PROTOCOL_BY_VERSION = {1: "netflow1", 5: "netflow5", 7: "netflow7", 9: "netflow9", 10: "ipfix"}


def _local_cases() -> list:
    return [pytest.param(p, id=str(p.relative_to(CORPUS))) for p in sorted(CORPUS.glob("*/*.pcap"))]


def _shared_cases() -> list:
    if not SHARED.is_dir():
        return [pytest.param(None, id="shared-corpus-absent")]
    out = []
    for p in sorted(SHARED.glob("*/*.pcap")):
        if any(tag in p.name for tag in NON_PERMISSIVE):
            out.append(pytest.param(p, id="shared/" + str(p.relative_to(SHARED))))
    return out



def _datagrams(pcap: Path) -> list:
    from collector.pcap import iter_udp

    return list(iter_udp(pcap))


def _new_decoder(decoders_mod):
    # default_sampling=0: the corpus exporters' own sampling (or none) is what is compared.
    return decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))


def biflow_records(records: list[tuple]) -> list[tuple]:
    """(set, record, reverse values or None) per flow flowscope should publish for tshark's
    records with --split-biflows: an RFC 5103 biflow record with reverse traffic is its forward
    flow then its reverse one, or the reverse one alone when its forward counters are 0."""
    out = []
    for s, rec in records:
        rev = T.reverse_values(s, rec)
        if rev and (rev.get(1) or rev.get(2)):
            if any(T.to_int(rec[k]) for k in ("cflow.octets", "cflow.packets", "cflow.permanent_octets",
                                              "cflow.permanent_packets") if k in rec):
                out.append((s, rec, None))
            out.append((s, rec, rev))
        else:
            out.append((s, rec, None))
    return out


def check_cflow_capture(decoder, datagrams: list, packets: list[dict], label: str) -> list[str]:
    """Feed `datagrams` to `decoder` and compare with tshark's cflow `packets` (same order).
    Returns a list of human-readable problems (empty = equal). Shared with the exporter tests."""
    problems: list[str] = []
    if len(datagrams) != len(packets):
        return [f"{label}: {len(datagrams)} UDP datagrams but tshark decoded {len(packets)} cflow packets"]
    reader = T.CflowReader()
    want = collections.defaultdict(lambda: collections.Counter())  # exporter -> stat -> n
    templates: dict[str, set] = collections.defaultdict(set)
    partial: set[str] = set()
    before = decoder.stats()
    for n, (dg, p) in enumerate(zip(datagrams, packets, strict=False), 1):
        tp = reader.packet(p)
        where = f"{label} datagram {n} (frame {tp.frame}, v{tp.version})"
        batch = decoder.decode(dg.payload, dg.src, dg.sport, dg.ts)
        want[dg.src]["datagrams"] += 1
        templates[dg.src] |= {(dg.sport, d, t) for d, t in tp.template_keys()}
        if tp.stopped_early(dg.payload):
            partial.add(dg.src)  # tshark did not read the flowsets past the header count
        if batch.protocol != PROTOCOL_BY_VERSION.get(tp.version):
            problems.append(f"{where}: protocol {batch.protocol!r}")
        if batch.missing_template_sets != tp.no_template_sets:
            problems.append(f"{where}: missing_template_sets {batch.missing_template_sets}, "
                            f"tshark found {tp.no_template_sets} set(s) without template")
        want[dg.src]["missing_template_sets"] += tp.no_template_sets
        flows = batch.to_dicts()
        want[dg.src]["flows"] += len(flows)
        exporter = decoder.exporter(dg.src)  # the rate it was configured with, for flows without one
        configured = exporter.configured_sampling if exporter is not None else 0
        cidr = exporter.cidr_sampling if exporter is not None else 0
        expected = (biflow_records(tp.flow_records) if decoder.split_biflows else
                    [(s, r, None) for s, r in tp.flow_records])
        if tp.malformed_data:
            # tshark could not decode part of this packet: compare what precedes the broken set.
            ok = []
            for s, r, rev in expected:
                if s.malformed:
                    break
                ok.append((s, r, rev))
            expected = ok
            if len(flows) < len(expected):
                problems.append(f"{where}: {len(flows)} flows, tshark decoded {len(expected)} before "
                                "the malformed set")
        elif tp.stopped_early(dg.payload):
            if len(flows) < len(expected):
                problems.append(f"{where}: {len(flows)} flows, tshark decoded {len(expected)} records "
                                "(and stopped at the header count)")
        else:
            if batch.error is not None:
                problems.append(f"{where}: decode error {batch.error!r} on a packet tshark decodes")
            if len(flows) != len(expected):
                problems.append(f"{where}: {len(flows)} flows, tshark decoded {len(expected)} records")
        for i, ((s, rec, rev), flow) in enumerate(zip(expected, flows, strict=False), 1):
            probs = (T.compare_reverse_record(s, rec, rev, flow) if rev is not None else
                     T.compare_flow_record(tp, s, rec, flow, configured_sampling=configured,
                                           cidr_sampling=cidr))
            for prob in probs:
                problems.append(f"{where} set id {s.flowset_id} flow {i}: {prob}")
            if flow.get("FlowProtocol") not in (None, PROTOCOL_BY_VERSION.get(tp.version)):
                problems.append(f"{where} record {i}: FlowProtocol {flow.get('FlowProtocol')!r}")
            if flow.get("AgentIP") not in (None, dg.src):
                problems.append(f"{where} record {i}: AgentIP {flow.get('AgentIP')!r}, sent from {dg.src}")
    problems += check_stats_delta(before, decoder.stats(), want, label)
    for exporter, keys in templates.items():
        got = decoder.stats().get(exporter, {}).get("templates")
        if got is not None and (got < len(keys) if exporter in partial else got != len(keys)):
            problems.append(f"{label}: stats[{exporter}]['templates'] = {got}, tshark saw {len(keys)} "
                            f"distinct (port, domain, template id): {sorted(keys)}")
    return problems


def check_stats_delta(before: dict, after: dict, want: dict, label: str) -> list[str]:
    """Metric-like counters of dec.stats() must have moved by exactly what was fed/decoded."""
    problems = []
    for exporter, counts in want.items():
        a = after.get(exporter)
        if a is None:
            problems.append(f"{label}: stats() has no entry for exporter {exporter}")
            continue
        b = before.get(exporter, {})
        for key, n in counts.items():
            delta = a.get(key, 0) - b.get(key, 0)
            if delta != n:
                problems.append(f"{label}: stats[{exporter}][{key!r}] moved by {delta}, expected {n}")
    return problems


def check_sflow_capture(decoder, datagrams: list, packets: list[dict], label: str) -> list[str]:
    """sFlow: per datagram, flow samples -> flows (values from the sampled header tshark parsed),
    counter records -> batch.counters, and stats deltas."""
    problems: list[str] = []
    if len(datagrams) != len(packets):
        return [f"{label}: {len(datagrams)} UDP datagrams but tshark decoded {len(packets)} sflow packets"]
    want = collections.defaultdict(lambda: collections.Counter())
    before = decoder.stats()
    for n, (dg, p) in enumerate(zip(datagrams, packets, strict=False), 1):
        sp = T.parse_sflow(p)
        where = f"{label} datagram {n} (frame {sp.frame})"
        batch = decoder.decode(dg.payload, dg.src, dg.sport, dg.ts)
        want[dg.src]["datagrams"] += 1
        if batch.protocol != "sflow5":
            problems.append(f"{where}: protocol {batch.protocol!r}")
        flows = batch.to_dicts()
        want[dg.src]["flows"] += len(flows)
        if not sp.malformed:
            if batch.error is not None:
                problems.append(f"{where}: decode error {batch.error!r} on a datagram tshark decodes")
            pass
        exp_flows = [T.expected_from_sflow_sample(sp, s) for s in sp.samples if s.is_flow]
        if len(flows) != len(exp_flows) and not sp.malformed:
            problems.append(f"{where}: {len(flows)} flows, tshark has {len(exp_flows)} flow samples")
        problems += match_unordered(exp_flows, flows, where, required={"SrcAddr", "DstAddr", "Bytes", "InIf", "OutIf",
                                                                       "InIfInternal", "OutIfInternal"})
        problems += compare_counters(sp, batch.counters, where)
    problems += check_stats_delta(before, decoder.stats(), want, label)
    return problems


def match_unordered(expected: list[dict], flows: list[dict], where: str, *, required=()) -> list[str]:
    """Pair each expected flow with an equal decoded flow (tshark groups sFlow samples by type, so
    datagram order is not a reference); report the closest candidate when none is equal."""
    problems = []
    unused = list(range(len(flows)))
    for i, exp in enumerate(expected, 1):
        req = set(required) & set(exp)
        best = None
        for j in unused:
            probs = T.compare_expected(exp, flows[j], required=req)
            if not probs:
                best = (j, [])
                break
            if best is None or len(probs) < len(best[1]):
                best = (j, probs)
        if best is None:
            continue
        if best[1]:
            problems += [f"{where} flow sample {i}: {x}" for x in best[1]]
        unused.remove(best[0])
    return problems


TSHARK_LOSES_ALIGNMENT = {1004, 1005, 2203, 2207}


def compare_counters(sp: T.SflowPacket, counters: list[dict], where: str) -> list[str]:
    """Counter records: same formats per datagram, and generic interface counter values."""
    problems = []
    exp_records = [r for s in sp.samples if not s.is_flow for r in s.records]
    if sp.malformed or len(sp.samples) != sp.numsamples:
        # tshark lost alignment (e.g. OVS counter records 1004/1005, which tshark 4.0 cannot
        # parse): its counter records are not a reference for this datagram.
        return problems
    if any(f in TSHARK_LOSES_ALIGNMENT for c in counters for f in c.get("Records", [])):
        # Open vSwitch's counter records (OpenFlow port 1004, port name 1005, and the 2203/2207
        # host records of the bridge): tshark 4.0 misreads them without always marking the
        # datagram malformed, so its record list is not a reference here (see test_sflow.py for
        # these records checked against datagrams built by the test).
        return problems
    # flowscope publishes one counter message per counters sample, listing its record formats
    # in "Records" and the generic interface counters (format 1) as If* keys.
    exp_samples = [s for s in sp.samples if not s.is_flow]
    # (enterprise records, listed as "enterprise:format" strings, are not in tshark 4.0's
    # decode: it shows no record for them)
    got_formats = collections.Counter(tuple(sorted(f for f in c.get("Records", []) if isinstance(f, int)))
                                      for c in counters)
    exp_formats = collections.Counter(tuple(sorted(r.format for r in s.records)) for s in exp_samples)
    if got_formats != exp_formats:
        problems.append(f"{where}: counter samples' record formats {dict(got_formats)}, tshark {dict(exp_formats)}")
    for r in (r for r in exp_records if (r.enterprise, r.format) == (0, 1)):
        idx = T.to_int(r.fields["sflow_245.ifindex"])
        cand = [c for c in counters if c.get("IfIndex") == idx]
        if not cand:
            problems.append(f"{where}: no generic interface counters for ifIndex {idx}")
            continue
        exp = {fk: T.to_int(r.fields[tk]) for tk, fk in T.SFLOW_IF_COUNTERS.items() if tk in r.fields}
        if "sflow_245.ifadmin_status" in r.fields:  # ifStatus: bit 0 admin up, bit 1 oper up
            exp["IfStatus"] = T.to_int(r.fields["sflow_245.ifadmin_status"]) | (
                T.to_int(r.fields["sflow_245.ifoper_status"]) << 1)
        if not any(not T.compare_expected(exp, c, required=set(exp)) for c in cand):
            problems += [f"{where} ifIndex {idx}: {x}"
                         for x in T.compare_expected(exp, cand[0], required=set(exp))]
    return problems


def _record_format(c: dict) -> tuple[int, int]:
    """(enterprise, format) of a flowscope counter record. RecordType is documented as present;
    it may be a number (format), "enterprise:format", or a name."""
    rt = c.get("RecordType")
    names = {"generic_interface": 1, "ethernet_interface": 2, "tokenring": 3, "vg": 4, "vlan": 5,
             "ieee80211": 6, "lag": 7, "processor": 1001, "openflow_port": 1004, "port_name": 1005}
    if isinstance(rt, int):
        return (int(c.get("Enterprise", 0)), rt)
    if isinstance(rt, str) and ":" in rt:
        e, f = rt.split(":", 1)
        return (int(e), int(f))
    if isinstance(rt, str) and rt.isdigit():
        return (int(c.get("Enterprise", 0)), int(rt))
    if isinstance(rt, str) and rt.lower() in names:
        return (int(c.get("Enterprise", 0)), names[rt.lower()])
    return (-1, -1)


def _run_golden(pcap: Path, decoders_mod) -> None:
    ref = T.load_tshark_json(pcap.parent / (pcap.stem + ".tshark.json"))
    datagrams = _datagrams(pcap)
    dec = _new_decoder(decoders_mod)
    label = pcap.name
    if pcap.parent.name == "sflow":
        problems = check_sflow_capture(dec, datagrams, ref["packets"], label)
    else:
        problems = check_cflow_capture(dec, datagrams, ref["packets"], label)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("pcap", _local_cases())
def test_golden_local(pcap: Path, decoders_mod) -> None:
    _run_golden(pcap, decoders_mod)


@pytest.mark.parametrize("pcap", _shared_cases())
def test_golden_shared_non_permissive(pcap: Path | None, decoders_mod) -> None:
    if pcap is None:
        pytest.skip(f"shared corpus not found at {SHARED} (set FLOWSCOPE_SHARED_CORPUS): the AGPL/GPL/MPL "
                    "captures (akvorado, pmacct, pktvisor) cannot ship with flowscope and were NOT tested")
    _run_golden(pcap, decoders_mod)


def test_corpus_copied_with_notice() -> None:
    """Every shipped fixture is Apache-2.0 and named in the NOTICE; no non-permissive file is here."""
    notice = (ROOT / "tests" / "data" / "NOTICE").read_text()
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    assert files, "tests/data/corpus is empty"
    for p in files:
        assert not any(tag in p.name for tag in NON_PERMISSIVE), f"non-permissive file shipped: {p}"
        if p.suffix in (".pcap", ".dat"):
            assert str(p.relative_to(CORPUS)) in notice, f"{p} not named in tests/data/NOTICE"
    for p in CORPUS.glob("*/*.pcap"):
        assert (p.parent / (p.stem + ".tshark.json")).is_file(), f"{p} has no .tshark.json"


def test_tshark_reference_is_consistent() -> None:
    """The stored tshark decodes parse into the counts the corpus manifest states (guards the
    parser in tests/support/tshark.py, which every golden comparison relies on)."""
    totals = collections.Counter()
    for jf in sorted(CORPUS.glob("*/*.tshark.json")):
        d = T.load_tshark_json(jf)
        if jf.parent.name == "sflow":
            sp = [T.parse_sflow(p) for p in d["packets"]]
            totals["sflow_samples"] += sum(len(p.samples) for p in sp)
            continue
        reader = T.CflowReader()
        for p in reader.packets(d["packets"]):
            totals["records"] += sum(len(s.records) for s in p.sets)
            totals["no_template"] += p.no_template_sets
    # From MANIFEST.md (Apache-2.0 rows): counts tshark reported when the corpus was made.
    assert totals["no_template"] == 12
    assert totals["records"] == 586
    assert totals["sflow_samples"] == 22


@pytest.mark.parametrize("name", ["ipfix/vmware-vds_ipfix.pcap", "ipfix/cert-yaf_ipfix_applabel.pcap",
                                  "netflow9/fortigate-fortios521_netflow9.pcap",
                                  "netflow9/generic_fluent_netflow9_as2_template_redefined.pcap",
                                  "netflow9/generic_fluent_netflow9_data_before_template.pcap"])
def test_a_capture_whose_template_datagrams_are_refused_still_decodes_its_data(name: str, decoders_mod) -> None:
    """A real exporter's capture replayed with --max-datagram just under its smallest datagram
    that holds templates (tshark's reading says which): every one of those is refused as
    too_large, and still teaches its templates (refuse_ipfix / refuse_v9), so each datagram of
    data alone decodes the flows it decodes when nothing is refused (which test_golden_local
    holds to tshark's decode), its missing-template sets the same. Before, the data after a
    refused template datagram was all missing templates."""
    pcap = CORPUS / name
    datagrams = _datagrams(pcap)
    reader = T.CflowReader()
    packets = T.load_tshark_json(pcap.parent / (pcap.stem + ".tshark.json"))["packets"]
    with_tpl = [bool(reader.packet(p).template_keys()) for p in packets]
    assert any(with_tpl) and not all(with_tpl)
    most = min(len(dg.payload) for dg, t in zip(datagrams, with_tpl, strict=True) if t) - 1
    assert all(len(dg.payload) <= most for dg, t in zip(datagrams, with_tpl, strict=True) if not t)
    whole = _new_decoder(decoders_mod)
    refusing = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0, max_datagram=most))
    decoded = 0
    for dg, t in zip(datagrams, with_tpl, strict=True):
        want = whole.decode(dg.payload, dg.src, dg.sport, dg.ts)
        got = refusing.decode(dg.payload, dg.src, dg.sport, dg.ts)
        if t:
            assert got.error[0] == "too_large" and len(got) == 0
        else:
            assert got.to_dicts() == want.to_dicts() and got.missing_template_sets == want.missing_template_sets
            decoded += len(got)
    assert decoded > 0
