"""--metrics-top-exporters with --workers N: one choice of labelled exporters for all workers.

The kernel spreads an exporter's datagrams over the SO_REUSEPORT workers by source address AND
port, so an exporter sending from several ports (Open vSwitch bridges and collector sets, NetFlow
engines, an exporter restarted on a new port) reaches several workers. Each worker chose its own
labels: the same exporter was labelled in one and `other` in another (its counts split between
the two), and the labels named up to N times the limit. Now the supervisor chooses
(metrics.SharedLabels) and /metrics shows what one worker would: at most the limit, each
exporter's counts under one label, and no counter series going back when a label changes hands.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Any

import pytest
from conftest import make_v5, wait_for

from collector.metrics import OTHER, total

DATAGRAMS = "flowscope_datagrams_total"


def _send(source: str, port: int, ports: int, each: int) -> None:
    """`each` one-record NetFlow v5 datagrams from each of `ports` new source ports of `source`
    (a loopback address: an exporter of its own)."""
    socks = []
    for _ in range(ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0))
        socks.append(s)
    try:
        for i in range(each):
            for s in socks:
                s.sendto(make_v5(i, 1, i), ("127.0.0.1", port))
            time.sleep(0.001)
    finally:
        for s in socks:
            s.close()


def _exporters(parsed: dict[str, Any]) -> dict[str, float]:
    """flowscope_datagrams_total per exporter label."""
    out: dict[str, float] = {}
    for lab, v in parsed.get(DATAGRAMS, {}).items():
        e = dict(lab)["exporter"]
        out[e] = out.get(e, 0) + v
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_an_exporter_on_several_workers_has_one_label(collector: Any, workers: int) -> None:
    """--metrics-top-exporters 1: the first exporter to send takes the one label; a second one,
    sending from 16 source ports (so to every worker), is counted whole in `other`; the first,
    sending again from 16 new ports, whole under its label. With each worker choosing its own
    labels, a worker that had not seen the first exporter gave its free label to the second
    (two labels for a limit of one), and counted the first's datagrams in `other`."""
    first, second = "127.0.0.2", "127.0.0.3"
    c = collector(["--output-file", "/dev/null", "--workers", str(workers), "--metrics-top-exporters", "1"])
    scrapes: list[dict[str, Any]] = []

    def scrape() -> dict[str, float]:
        parsed = c.metrics()
        scrapes.append(parsed)
        labels = set(_exporters(parsed)) - {OTHER}
        assert len(labels) <= 1, labels   # at every scrape, not only at the end
        return _exporters(parsed)

    _send(first, c.port, 1, 5)
    wait_for(lambda: first in scrape() and total(scrapes[-1], DATAGRAMS) == 5, 15, what="the first exporter labelled")
    time.sleep(1.0)   # (10 stats intervals: every worker follows the supervisor's set)
    before = scrape()
    _send(second, c.port, 16, 10)
    wait_for(lambda: sum(scrape().values()) == 5 + 160, 15, what="the second exporter's datagrams counted")
    mid = scrape()
    assert set(mid) == {first, OTHER}, mid
    assert mid[OTHER] - before.get(OTHER, 0) == 160 and mid[first] == before[first], (before, mid)
    _send(first, c.port, 16, 10)
    wait_for(lambda: sum(scrape().values()) == 5 + 320, 15, what="the first exporter's new datagrams counted")
    end = scrape()
    assert end[first] - mid[first] == 160 and end[OTHER] == mid[OTHER], (mid, end)
    # no counter series went back from one scrape to the next
    for a, b in zip(scrapes, scrapes[1:], strict=False):
        for name, series in a.items():
            if name.endswith("_total"):
                for lab, v in series.items():
                    assert b.get(name, {}).get(lab, v) >= v, (name, lab, v, b[name][lab])


def test_a_label_changing_hands_across_workers_never_goes_back() -> None:
    """Two workers' real decoders, their ExporterLabels following the supervisor's SharedLabels,
    /metrics from the supervisor's Aggregator after each worker snapshot, the workers' snapshots
    interleaved. Exporter a (both workers) takes the one label; silent for the idle time while b
    (both workers) sends, it gives it up: its series ends at once in the merged view although
    one worker still labels it, and b gets the label only once both workers gave a's up. At no
    point does a counter series go back or more than one exporter have a label, and afterwards
    b's new datagrams are all under its label and `other` moves no more."""
    from benchmarks.datagrams import v5_datagram, v5_records
    from collector.metrics import (
        LABEL_IDLE_S,
        LABELS,
        Aggregator,
        ExporterLabels,
        SharedLabels,
        decoder_series,
    )
    from decoders import Decoder, DecoderConfig

    clock = [0.0]
    shared = SharedLabels(1, 2, clock=lambda: clock[0])
    agg = Aggregator(2, shared)
    decs = [Decoder(DecoderConfig()), Decoder(DecoderConfig())]
    labs = [ExporterLabels(1), ExporterLabels(1)]
    for lab in labs:
        lab.follow(0, ())
    rec = v5_records(3, random.Random(5), uptime_ms=100_000)
    seq = [0]
    seen: dict[tuple[str, tuple[str, ...]], float] = {}
    a, b = "10.0.0.1", "10.0.0.2"

    def send(w: int, exporter: str, n: int) -> None:
        for _ in range(n):
            seq[0] += 1
            decs[w].decode(v5_datagram(rec, seq=seq[0], unix_secs=1_700_000_000, uptime_ms=100_000), exporter, 0,
                           1000.0)

    def snapshot(w: int) -> dict[str, float]:
        """Worker w's snapshot as Worker.snapshot makes it, into the supervisor; /metrics then."""
        snap = decoder_series(decs[w].series_stats(), labs[w])
        snap[LABELS] = {(): (labs[w].generation, labs[w].report())}
        agg.update(w, snap)
        merged = agg.merged()
        for name in ExporterLabels.COUNTERS:
            for k, v in merged.get(name, {}).items():
                assert v >= seen.get((name, k), 0), (name, k, v, seen.get((name, k)))
        for name, k in list(seen):
            if k not in merged.get(name, {}):
                del seen[(name, k)]   # an ended series (one that starts again later is a new one)
        for name in ExporterLabels.COUNTERS:
            for k, v in merged.get(name, {}).items():
                seen[(name, k)] = v
        dg = {k[0]: v for k, v in merged["flowscope_datagrams"].items()}
        assert len(set(dg) - {OTHER}) <= 1, dg
        return dg

    def tick() -> None:
        chosen = shared.tick()
        if chosen is not None:
            for lab in labs:
                lab.follow(*chosen)

    send(0, a, 3)
    send(1, a, 2)
    assert snapshot(0) == {OTHER: 3}
    assert snapshot(1) == {OTHER: 5}
    tick()
    assert shared.published == {a}
    send(0, a, 1)
    send(1, a, 1)
    # each worker names a at its next snapshot: what it counted of a so far stays in `other`
    assert snapshot(0) == {a: 0, OTHER: 6}
    assert snapshot(1) == {a: 0, OTHER: 7}
    send(0, a, 2)
    send(1, a, 1)
    assert snapshot(0) == {a: 2, OTHER: 7}
    assert snapshot(1) == {a: 3, OTHER: 7}
    # a silent; b sends to both workers (from two source ports)
    tick()
    for t, other in ((100.0, 9), (LABEL_IDLE_S - 1, 11), (LABEL_IDLE_S + 1, 13)):
        clock[0] = t
        send(0, b, 1)
        send(1, b, 1)
        snapshot(0)
        assert snapshot(1) == {a: 3, OTHER: other}
        tick()
        assert shared.published == ({a} if t < LABEL_IDLE_S else frozenset())
    # a gave its label up (silent since its last datagram, at 0); b does not have it yet
    for lab in labs:
        assert lab.generation == 1         # (applied at the workers' next snapshots)
    send(0, b, 1)
    send(1, b, 1)
    # worker 0 applies it: a's series ends in the merged view at once (worker 1's part alone
    # would be a counter going back, 3 to 1)
    assert snapshot(0) == {OTHER: 14}
    tick()
    assert snapshot(0) == {OTHER: 14}       # worker 1 still labels a: no label for b yet
    assert snapshot(1) == {OTHER: 15}
    tick()
    send(0, b, 4)
    send(1, b, 3)
    assert snapshot(0) == {b: 0, OTHER: 19}
    assert snapshot(1) == {b: 0, OTHER: 22}
    send(0, b, 1)
    send(1, b, 2)
    assert snapshot(0) == {b: 1, OTHER: 22}
    assert snapshot(1) == {b: 3, OTHER: 22}
