"""--metrics-top-exporters with --workers N: one choice of labelled exporters for all workers.

The kernel spreads an exporter's datagrams over the SO_REUSEPORT workers by source address AND
port, so an exporter sending from several ports (Open vSwitch bridges and collector sets, NetFlow
engines, an exporter restarted on a new port) reaches several workers. Each worker chose its own
labels: the same exporter was labelled in one and `other` in another (its counts split between
the two), and the labels named up to N times the limit. Now the supervisor chooses
(metrics.SharedLabels) and /metrics shows what one worker would: at most the limit, each
exporter's counts under one label, and no counter series going back when a label changes hands.
As with one worker too: a new exporter's label shows with its first counts (they went to `other`,
the label following a stats interval or two later), and flowscope_exporters counts addresses
(the workers' counts were added: an address once per worker its ports reached).
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


@pytest.mark.parametrize("workers", [1, 3])
def test_an_exporter_on_several_workers_counts_once(collector: Any, workers: int) -> None:
    """flowscope_exporters counts addresses: two exporters, each sending from 16 source ports
    (so to every worker), are 2 in the scrape that first counts all their datagrams, the one
    labelled and the one in `other` alike. The workers' counts were added up: each address
    counted once per worker that its ports reached (6 with 3 workers)."""
    first, second = "127.0.0.2", "127.0.0.3"
    c = collector(["--output-file", "/dev/null", "--workers", str(workers), "--metrics-top-exporters", "1"])
    _send(first, c.port, 16, 5)
    _send(second, c.port, 16, 5)

    def counted() -> dict[str, Any] | None:
        parsed = c.metrics()
        return parsed if sum(_exporters(parsed).values()) == 160 else None

    parsed = wait_for(counted, 30, what="both exporters' datagrams counted")
    assert total(parsed, "flowscope_exporters") == 2
    labels = set(_exporters(parsed))   # (either may take the one label: they start together)
    assert len(labels & {first, second}) == 1 and OTHER in labels, labels


@pytest.mark.parametrize("workers", [1, 3])
def test_a_new_exporters_label_shows_with_its_first_counts(collector: Any, workers: int) -> None:
    """With labels free, an exporter's datagrams show under its label from the first scrape that
    counts any of them, with --workers N as with one worker, though its 16 source ports reach
    every worker: `other` never counts it. Its first counts showed in `other` (and stayed there),
    its label coming a stats interval or two later, once the supervisor chose (once an
    interval) and the workers applied that."""
    exporter = "127.0.0.2"
    c = collector(["--output-file", "/dev/null", "--workers", str(workers), "--metrics-top-exporters", "5",
                   "--stats-interval", "2"])
    scrapes: list[dict[str, float]] = []

    def counted() -> bool:
        scrapes.append(_exporters(c.metrics()))
        return sum(scrapes[-1].values()) == 160

    _send(exporter, c.port, 16, 10)
    wait_for(counted, 30, what="the exporter's datagrams counted")
    for seen in scrapes:
        assert not seen or (exporter in seen and not seen.get(OTHER)), scrapes
    assert scrapes[-1] == {exporter: 160}


class _Supervised:
    """`workers` workers' real decoders, their ExporterLabels following the supervisor's
    SharedLabels, and the supervisor's Aggregator: what app._supervise and its workers exchange,
    without the processes, the snapshots taken in the order a test gives. Each snapshot() checks
    /metrics as a scrape would see it then: no counter series goes back, at most `limit`
    exporters labelled, and (`exact`: no label given up, whose series ends) the datagrams
    shown are those the workers' decoders had counted at their latest snapshots."""

    def __init__(self, workers: int, limit: int, clock: Any = None, max_exporters: int = 16384,
                 exact: bool = True) -> None:
        from benchmarks.datagrams import v5_records
        from collector.metrics import Aggregator, ExporterLabels, SharedLabels
        from decoders import Decoder, DecoderConfig

        self.limit, self.exact = limit, exact
        self.shared = SharedLabels(limit, workers, **({"clock": clock} if clock else {}))
        self.agg = Aggregator(workers, self.shared)
        self.decs = [Decoder(DecoderConfig(max_exporters=max_exporters)) for _ in range(workers)]
        self.labs = [ExporterLabels(limit) for _ in range(workers)]
        for lab in self.labs:
            lab.follow(0, ())
        self.rec = v5_records(3, random.Random(5), uptime_ms=100_000)
        self.seq = 0
        self.seen: dict[tuple[str, tuple[str, ...]], float] = {}
        self.counted = [0] * workers     # datagrams each worker's latest snapshot counted
        self.unread: list[tuple[int, Any]] = []   # frames sent, not yet read

    def send(self, w: int, exporter: str, n: int) -> None:
        from benchmarks.datagrams import v5_datagram

        for _ in range(n):
            self.seq += 1
            self.decs[w].decode(v5_datagram(self.rec, seq=self.seq, unix_secs=1_700_000_000, uptime_ms=100_000),
                                exporter, 0, 1000.0)

    def read(self) -> None:
        """The workers read the frames sent (LabelFeed)."""
        for w, frame in self.unread:
            self.labs[w].follow(*frame)
        self.unread = []

    def snapshot(self, w: int, read: bool = True) -> dict[str, float]:
        """Worker w's snapshot as Worker.snapshot makes it, into the supervisor, which answers
        (read: the workers read the answer before their next snapshots); /metrics then:
        datagrams per exporter label."""
        from collector.metrics import LABELS, ExporterLabels, decoder_series

        stats = self.decs[w].series_stats()
        snap = decoder_series(stats, self.labs[w])
        snap[LABELS] = {(): self.labs[w].feed(*self.decs[w].exporters_changed())}
        snap["flowscope_exporters"] = {(): self.decs[w].exporter_count()}
        self.agg.update(w, snap)
        self.counted[w] = sum(int(st[0]) for st in stats.values())
        self.unread += self.shared.frames().items()   # as the supervisor's reader does
        if read:
            self.read()
        merged = self.agg.merged()
        for name in ExporterLabels.COUNTERS:
            for k, v in merged.get(name, {}).items():
                assert v >= self.seen.get((name, k), 0), (name, k, v, self.seen.get((name, k)))
        for name, k in list(self.seen):
            if k not in merged.get(name, {}):
                del self.seen[(name, k)]   # an ended series (one that starts again later is a new one)
        for name in ExporterLabels.COUNTERS:
            for k, v in merged.get(name, {}).items():
                self.seen[(name, k)] = v
        dg = {k[0]: v for k, v in merged["flowscope_datagrams"].items()}
        assert len(set(dg) - {OTHER}) <= self.limit, dg
        if self.exact:
            assert sum(dg.values()) == sum(self.counted), (dg, self.counted)
        return dg

    def tick(self) -> None:
        """The supervisor's choice of every stats interval."""
        if self.shared.tick() is not None:
            self.shared.changed = True
            self.unread += self.shared.frames().items()
            self.read()

    def exporters(self) -> float:
        return self.agg.value("flowscope_exporters")


def test_the_exporters_count_follows_the_workers_tables() -> None:
    """flowscope_exporters with --workers N is the union of the workers' decoder tables (each
    bounded by --max-exporters: the least recently seen are evicted, and the supervisor is told
    so with the next snapshot), whatever the labels. Two workers of 8 exporters at most, 12
    exporters a round sending, some to both."""
    from collector.metrics import EVICTED

    sup = _Supervised(2, 2, max_exporters=8)

    def union() -> int:
        return len({e for d in sup.decs for e, s in d.series_stats().items() if e != EVICTED and s[0]})

    for round_ in range(3):
        for k in range(12):
            for w in ((0, 1) if k % 3 == 0 else (k % 2,)):
                sup.send(w, f"10.1.{round_}.{k}", 1)
            if k % 4 == 3:
                sup.snapshot(0)
                sup.snapshot(1)
                assert sup.exporters() == union()
    assert sup.decs[0].evicted_exporters and sup.decs[1].evicted_exporters
    assert all(len(t) <= 8 for t in sup.shared._tables.values())


def test_the_decoder_tells_the_exporters_gained_and_forgotten_since_it_was_last_asked() -> None:
    """Decoder.exporters_changed(), what a worker's snapshot tells the supervisor of its table
    (a walk over 16,384 exporters cost the snapshot about 1 ms): --max-exporters 4, each datagram
    a second later than the one before, so the one seen least recently is the one evicted. The
    first call names every exporter that sent; then only changes: one gained and forgotten
    between two calls, or forgotten and back, is in neither list, and one loaded from a state
    file counts from its first datagram."""
    from decoders import Decoder, DecoderConfig

    dec = Decoder(DecoderConfig(max_exporters=4))
    clock = [0.0]

    def send(*last_octets: int) -> None:
        for k in last_octets:
            clock[0] += 1
            dec.decode(make_v5(int(clock[0]), 1, k), f"10.0.0.{k}", 2055, 1_700_000_000 + clock[0])

    send(1, 2)
    assert dec.exporters_changed() == (["10.0.0.1", "10.0.0.2"], [])
    assert dec.exporters_changed() == ([], [])
    send(3, 4, 5)                      # 5 evicts 1
    assert dec.exporters_changed() == (["10.0.0.3", "10.0.0.4", "10.0.0.5"], ["10.0.0.1"])
    send(6, 2)                         # 6 evicts 2, back at once: it evicts 3
    assert dec.exporters_changed() == (["10.0.0.6"], ["10.0.0.3"])
    send(7, 8, 9, 10, 11)              # 7 evicted again by 11
    assert dec.exporters_changed() == (["10.0.0.10", "10.0.0.11", "10.0.0.8", "10.0.0.9"],
                                       ["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"])
    dec.import_state({"format": 3, "exporters": {"10.0.0.12": {}}})
    assert dec.exporters_changed() == ([], [])
    send(12)                           # (loaded beyond the bound: nothing evicted)
    assert dec.exporters_changed() == (["10.0.0.12"], [])
    assert dec.evicted_exporters == 8


def test_new_exporters_not_named_are_shown_in_other_from_the_start() -> None:
    """One label, and two new exporters at once: a on worker 0, b on worker 1, each labelled
    with its address (held) in its worker's snapshot. The supervisor names a as it takes worker
    0's in; b, decided on as worker 1's comes in, is shown in `other` at once, and stays there:
    worker 1 snapshotting again before it read the answer (b still held, asked again), b
    evicted from its decoder meanwhile (its counts folded into the evicted exporters'), then
    the answer read. At every snapshot no series goes back, and the datagrams shown are all
    those counted."""
    a, b = "10.0.0.1", "10.0.0.2"
    sup = _Supervised(2, 1, max_exporters=8)
    sup.send(0, a, 3)
    sup.send(1, b, 2)
    assert sup.snapshot(0, read=False) == {a: 3}
    assert sup.snapshot(1, read=False) == {a: 3, OTHER: 2}
    assert sup.labs[1].held == {b}
    sup.send(1, b, 1)
    assert sup.snapshot(1, read=False) == {a: 3, OTHER: 3}   # asked again: the same answer
    for k in range(8):   # 8 more exporters on worker 1 (no label free: not held): b evicted
        sup.send(1, f"10.0.1.{k}", 1)
    assert sup.snapshot(1, read=False) == {a: 3, OTHER: 11}
    assert sup.decs[1].evicted_exporters == 1 and sup.labs[1].held == {b}
    sup.read()
    assert sup.snapshot(1) == {a: 3, OTHER: 11}
    assert not sup.labs[1].held
    sup.send(1, b, 2)
    sup.send(0, a, 1)
    assert sup.snapshot(1) == {a: 3, OTHER: 13}
    assert sup.snapshot(0) == {a: 4, OTHER: 13}
    assert sup.exporters() == 9   # a; b back, and 7 of the others on worker 1 (one evicted for b)


def test_a_held_exporter_named_then_evicted_keeps_its_series() -> None:
    """A new exporter labelled with its address (held) and named by the supervisor, then
    evicted from its worker's decoder (--max-exporters 8: eight more exporters) before the
    worker read the answer: its series stays at what it showed (carried, as for any labelled
    exporter evicted), not gone from under the label, and goes on from there when it is back."""
    a = "10.0.0.1"
    sup = _Supervised(1, 1, max_exporters=8)
    sup.send(0, a, 3)
    assert sup.snapshot(0, read=False) == {a: 3}
    for k in range(8):
        sup.send(0, f"10.0.1.{k}", 1)
    assert sup.snapshot(0, read=False) == {a: 3, OTHER: 8}
    assert sup.decs[0].evicted_exporters == 1 and sup.labs[0].held == {a}
    sup.read()
    assert sup.snapshot(0) == {a: 3, OTHER: 8} and not sup.labs[0].held
    sup.send(0, a, 2)
    assert sup.snapshot(0) == {a: 5, OTHER: 8}


def test_a_label_changing_hands_across_workers_never_goes_back() -> None:
    """Two workers (_Supervised) with one label, the workers' snapshots interleaved. Exporter a
    (both workers) takes the label with its first datagrams; silent for the idle time while b
    (both workers) sends, it gives it up: its series ends at once in the merged view although
    one worker still labels it, and b gets the label only once both workers gave a's up. At no
    point does a counter series go back or more than one exporter have a label, and afterwards
    b's new datagrams are all under its label and `other` moves no more."""
    from collector.metrics import LABEL_IDLE_S

    clock = [0.0]
    sup = _Supervised(2, 1, clock=lambda: clock[0], exact=False)
    labs, shared, send, snapshot, tick = sup.labs, sup.shared, sup.send, sup.snapshot, sup.tick
    a, b = "10.0.0.1", "10.0.0.2"

    send(0, a, 3)
    send(1, a, 2)
    # a's first datagrams, a label free: worker 0 labels them a (held), and the supervisor names
    # a as it takes that snapshot in, so that they show under its label, not in `other`
    assert snapshot(0) == {a: 3}
    assert labs[0].held == {a} and shared.published == {a}
    assert snapshot(1) == {a: 5}
    assert snapshot(0) == {a: 5} and not labs[0].held   # (the answer applied)
    send(0, a, 1)
    send(1, a, 1)
    assert snapshot(0) == {a: 6}
    assert snapshot(1) == {a: 7}
    # a silent; b sends to both workers (from two source ports): no label free, nothing held
    tick()
    for t, other in ((100.0, 2), (LABEL_IDLE_S - 1, 4), (LABEL_IDLE_S + 1, 6)):
        clock[0] = t
        send(0, b, 1)
        send(1, b, 1)
        snapshot(0)
        assert snapshot(1) == {a: 7, OTHER: other}
        assert not labs[0].held and not labs[1].held
        tick()
        assert shared.published == ({a} if t < LABEL_IDLE_S else frozenset())
    # a gave its label up (silent since its last datagram, at 0); b does not have it yet
    for lab in labs:
        assert lab.generation == 1         # (applied at the workers' next snapshots)
    send(0, b, 1)
    send(1, b, 1)
    # worker 0 applies it: a's series ends in the merged view at once (worker 1's part alone
    # would be a counter going back, 7 to 3)
    assert snapshot(0) == {OTHER: 7}
    tick()
    assert snapshot(0) == {OTHER: 7}       # worker 1 still labels a: no label for b yet
    assert snapshot(1) == {OTHER: 8}
    tick()
    send(0, b, 4)
    send(1, b, 3)
    assert snapshot(0) == {b: 0, OTHER: 12}
    assert snapshot(1) == {b: 0, OTHER: 15}
    send(0, b, 1)
    send(1, b, 2)
    assert snapshot(0) == {b: 1, OTHER: 15}
    assert snapshot(1) == {b: 3, OTHER: 15}
