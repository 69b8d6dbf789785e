"""decoders.LineWriter: the stdout and file sinks' JSON lines, written in C by the Receiver as
the Kafka record batches are, and the stream sink's accounting of what landed.

The lines are compared with FlowBatch.to_json() (the encoder's other way out, one bytes object
per flow): real datagrams from benchmarks.datagrams (OVS-like IPFIX), make_v5 and the sFlow test
builders, with and without enrichment (a real index built from Kubernetes objects)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from conftest import make_v5

from benchmarks.datagrams import OVS_INGRESS, data_set, ipfix_message, ovs_flows, template_set
from collector.sinks import FLOWS, Chunk, Prebuilt, _complete_records, _lines_of
from decoders import Decoder, LineWriter

T0 = 1_780_000_000


def _batches() -> list[Any]:
    """IPFIX (25 records a datagram, pods 10.128.0.x), NetFlow v5 and sFlow datagrams decoded."""
    from test_sflow import datagram, eth, flow_sample, ipv4, raw_header, tcp

    rng = random.Random(7)
    dec = Decoder()
    dec.decode(ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=T0), "10.0.0.1", 4739, T0)
    out = []
    for s in range(6):
        recs = ovs_flows(25, rng)
        for k, r in enumerate(recs):
            r["src"] = f"10.128.0.{rng.randrange(2, 20)}"
            if k % 2:
                r["dst"] = f"10.128.0.{rng.randrange(2, 20)}"   # pod to pod: the longest lines
        out.append(dec.decode(ipfix_message([data_set(OVS_INGRESS, recs)], seq=s * 25, export_time=T0),
                              "10.0.0.1", 4739, T0 + s))
    out.append(dec.decode(make_v5(0, 30, 0), "10.0.0.2", 2055, T0 + 7))
    pkt = eth(ipv4("10.128.0.3", "10.0.0.9", 6, tcp(1000, 80, 0x10)), 0x0800)
    out.append(dec.decode(datagram([flow_sample([raw_header(pkt, 60)], seq=9)], seq=1), "10.0.0.3", 6343, T0 + 8))
    assert all(len(b) for b in out)
    return out


def _enricher() -> Any:
    import enrich
    from tests.support.fake_kube import pod

    # (long names, as real ones often are: a pod-to-pod line then passes 1 KiB)
    return enrich.Enricher.from_objects(pods=[pod(f"checkout-service-deployment-7d9f8b6c5d-x{i:02d}-instance-name",
                                                  "production-payments-eu-west-1", ips=[f"10.128.0.{i}"])
                                              for i in range(2, 20)])


@pytest.mark.parametrize("enriched", [False, True], ids=["plain", "enriched"])
def test_lines_are_the_flows_json_each_ending_a_line(enriched: bool) -> None:
    """The lines equal to_json()'s objects each followed by a newline, for every protocol, with
    the enrichment's identity fields when an enricher is given."""
    e = _enricher() if enriched else None
    batches = _batches()
    w = LineWriter(1 << 20)
    for b in batches:
        assert w.append(b, e) == len(b)
    want = b"".join(j + b"\n" for b in batches for j in b.to_json(e))
    assert w.lines() == want and w.size == len(want)
    assert w.records == sum(len(b) for b in batches) == want.count(b"\n")
    if enriched:
        assert b'"SrcK8S_Name":"checkout-' in want
    for line in want.splitlines():
        orjson.loads(line)


def test_a_full_writer_stops_at_a_whole_line_and_the_rest_goes_in_the_next() -> None:
    """max_bytes bounds the lines: append() says which flow did not fit (nothing of it
    written), the next writer takes it from there, and together they hold every line once; a
    line longer than max_bytes goes alone into an empty writer."""
    batches = _batches()
    want = b"".join(j + b"\n" for b in batches for j in b.to_json())
    writers = [LineWriter(4096)]
    for b in batches:
        i = writers[-1].append(b)
        while i < len(b):
            writers.append(LineWriter(4096))
            i = writers[-1].append(b, None, i)
    assert len(writers) > 3
    assert all(0 < w.size <= 4096 and w.lines().endswith(b"\n") for w in writers)
    assert b"".join(w.lines() for w in writers) == want
    assert sum(w.records for w in writers) == want.count(b"\n")
    # a flow whose line is longer than the writer (pod to pod, enriched): alone, whole
    e = _enricher()
    lines = [j + b"\n" for j in batches[0].to_json(e)]
    k = max(range(len(lines)), key=lambda i: len(lines[i]))
    assert len(lines[k]) > 1024
    small = LineWriter(1024)
    assert small.append(batches[0], e, k) == k + 1
    assert small.lines() == lines[k] and small.records == 1


def test_enrichment_counts_a_flow_once_when_it_did_not_fit() -> None:
    """A flow encoded, found not to fit and encoded again into the next writer is counted once
    in the enricher's flows (flowscope_enrich_flows_total)."""
    e = _enricher()
    r = e.index._reader
    if r is None:
        pytest.skip("enrich._fast not built: the pure-Python index counts no flows")
    batches = _batches()[:6]
    n = 0
    w = LineWriter(2048)
    for b in batches:
        i = w.append(b, e)
        while i < len(b):
            n += 1
            w = LineWriter(2048)
            i = w.append(b, e, i)
    assert n > 5
    assert r.flows_identified + r.flows_unidentified == sum(len(b) for b in batches)


def test_trim_and_release_keep_the_lines_accounted() -> None:
    """trim() keeps the lines (a smaller allocation while queued); release() gives the memory
    back once they were taken, the record count staying for the sink's accounting."""
    b = _batches()[0]
    w = LineWriter(1 << 20)
    w.append(b)
    lines = w.lines()
    w.trim()
    assert w.lines() == lines and w.records == len(b)
    w.release()
    assert w.records == len(b) and w.lines() == b""
    with pytest.raises(ValueError):
        LineWriter(100)


def test_what_landed_is_counted_by_whole_lines_across_both_kinds_of_chunk() -> None:
    """The stream sink counts the records a short write landed whole: chunks of records (sFlow
    counter records, lists) and of a LineWriter's lines, in one write."""
    batches = _batches()
    w = LineWriter(1 << 20)
    w.append(batches[0])
    recs = [orjson.dumps({"n": i}) for i in range(5)]
    chunks = [Chunk(FLOWS, recs, 0, "10.0.0.1"), Chunk(FLOWS, Prebuilt(w), w.size, ""),
              Chunk(FLOWS, recs[:2], 0, "10.0.0.1")]
    pieces = [_lines_of(c) for c in chunks]
    total = sum(map(len, pieces))
    assert _complete_records(pieces, total) == [5, len(batches[0]), 2]
    assert _complete_records(pieces, 0) == [0, 0, 0]
    first = len(pieces[0])
    assert _complete_records(pieces, first - 1) == [4, 0, 0]
    lines = pieces[1].splitlines(keepends=True)
    assert _complete_records(pieces, first + len(lines[0]) + len(lines[1]) + 3) == [5, 2, 0]
    assert _complete_records(pieces, total - 1) == [5, len(batches[0]), 1]
