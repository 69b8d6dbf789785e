"""The metrics snapshot's decoder series kept up to date by changes (Decoder.series_changed and
DecoderSeries; the sequence gaps settled of the exporters that had some, the exporters that sent
counted as they come and go) against the walk over every exporter (Decoder.series_stats, whose
settle_gaps walks them all, and decoder_series):
two real decoders fed the same random datagrams (NetFlow v5 with sequence gaps and sampling
rates, IPFIX with and without templates, sFlow with and without counter samples, which are
counted, not kept, garbage), state files loaded, exporters evicted
(--max-exporters), labels changing hands (one worker) or imposed by a supervisor (--workers N);
after every snapshot both give the same series, the same label state and the same report to
the supervisor."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from benchmarks import datagrams as dg

T0 = 1_700_000_000.0


class _World:
    """One decoder and its labels, snapshotted one way or the other."""

    def __init__(self, incremental: bool, limit: int, max_exporters: int, clock: list[float]) -> None:
        from collector.metrics import DecoderSeries, ExporterLabels
        from decoders import Decoder, DecoderConfig

        self.dec = Decoder(DecoderConfig(max_exporters=max_exporters, keep_counters=False))
        self.labels = ExporterLabels(limit, idle_after=5.0, clock=lambda: clock[0])
        self.series = DecoderSeries(self.dec, self.labels) if incremental else None

    def snapshot(self, now: float) -> dict[str, Any]:
        from collector.metrics import decoder_series

        if self.series is None:
            self.stats = self.dec.series_stats(now)
            return decoder_series(self.stats, self.labels)
        return self.series.update(*self.dec.series_changed(now))


def _ipfix(rng: random.Random, seq: int, now: float, template: bool) -> bytes:
    sets = [dg.template_set([dg.OVS_INGRESS])] if template else []
    sets.append(dg.data_set(dg.OVS_INGRESS, dg.ovs_flows(rng.randrange(1, 4), rng)))
    return dg.ipfix_message(sets, seq=seq, export_time=int(now))


def _sflow(rng: random.Random, seq: int) -> bytes:
    rate = rng.choice((256, 1024))
    data = dg.sflow_datagram([dg.SflowSample("10.128.0.1", "10.128.0.2", 1234, 80, 6, 1000, 0x10, rate, 3, 4)],
                             seq=seq, uptime_ms=seq * 1000)
    counters = rng.choice((0, 0, 1, 2))
    if not counters:
        return data
    # counter samples (sFlow v5 sample format 2) after the flow sample, each holding one generic
    # interface counters record (format 1, 88 bytes), as hsflowd sends at its polling interval
    record = struct.pack("!II", 1, 88) + struct.pack("!IIQIIQIIIIIIQIIIIII", 3, 6, 10**9, 1, 3, *range(1, 15))
    sample = struct.pack("!III", seq, 3, 1) + record
    header, n = data[:24], struct.unpack("!I", data[24:28])[0]
    return (header + struct.pack("!I", n + counters) + data[28:]
            + (struct.pack("!II", 2, len(sample)) + sample) * counters)


def _run(seed: int, following: bool, steps: int = 400) -> None:
    from collector.metrics import EVICTED, OTHER

    rng = random.Random(seed)
    clock = [0.0]
    worlds = [_World(False, 3, 8, clock), _World(True, 3, 8, clock)]
    pool = [f"10.0.0.{k}" for k in range(14)]
    seqs: dict[tuple[str, str], int] = {}
    v5 = dg.v5_records(2, random.Random(seed), uptime_ms=100_000)
    generation = 0
    ever_named: set[str] = set()
    lost_seen = ignored_seen = False
    for lab in (w.labels for w in worlds):
        if following:
            lab.follow(0, ())
    for step in range(steps):
        clock[0] += rng.choice((0.1, 0.5, 2.0))
        now = T0 + clock[0]
        kind = rng.randrange(10)
        e = rng.choice(pool[:6] if rng.random() < 0.6 else pool)
        port = rng.choice((2055, 2056))
        if kind == 0:
            # a state file's templates, for an exporter in the table or not
            spec = [list(f) for f in dg.OVS_INGRESS.spec()]
            state = {"format": 3, "exporters": {e: {"templates": [
                {"version": 10, "domain": 0, "id": 256, "port": port, "fields": spec, "refreshed": now - 1}]}}}
            for w in worlds:
                w.dec.import_state(state)
        elif kind == 1 and following:
            # the supervisor's set, and sometimes its answer to the held exporters
            generation += 1
            named = rng.sample(pool, rng.randrange(0, 4))
            lab0 = worlds[0].labels
            ask = lab0.ask if rng.random() < 0.7 else 0
            held_named = [x for x in sorted(lab0.held) if rng.random() < 0.5]
            for w in worlds:
                w.labels.follow(generation, named, ask, held_named)
        elif kind in (2, 3):
            snaps = [w.snapshot(now) for w in worlds]
            assert snaps[1] == snaps[0], (seed, step)
            a, b = worlds[0].labels, worlds[1].labels
            assert (b.named, b.held, b.sent, b.generation) == (a.named, a.held, a.sent, a.generation), (seed, step)
            assert b.report() == a.report(), (seed, step)
            ever_named |= a.named
            lost_seen = lost_seen or bool(snaps[0]["flowscope_sequence_lost"])
            ignored_seen = ignored_seen or bool(snaps[0]["flowscope_counter_samples_ignored"])
            # every exporter's part kept (the evicted ones' gone), and what the next snapshot's
            # senders are told from: every exporter's datagrams now
            parts = worlds[1].series._parts
            assert {e: p[1:] for e, p in parts.items()} == {e: _plain(s) for e, s in worlds[0].stats.items()}, (seed, step)
            assert all(p[0] == (OTHER if e == EVICTED else b.label(e)) for e, p in parts.items()), (seed, step)
            activity = {x: int(st[0]) for x, st in worlds[0].stats.items() if x != EVICTED}
            assert a._prev == activity and b._prev == activity, (seed, step)
            # flowscope_exporters: those of the table that sent (counted as they come and go)
            assert worlds[1].dec.exporter_count() == sum(1 for n in activity.values() if n), (seed, step)
        else:
            what = rng.randrange(6)
            key = (e, "v5" if what < 2 else "ipfix" if what < 4 else "sflow")
            seq = seqs.get(key, 1)
            if what < 2:
                data = dg.v5_datagram(v5, seq=seq, unix_secs=int(now), uptime_ms=int(clock[0] * 1000) + 100_000,
                                   sampling_interval=rng.choice((0, 0x4000 | 100, 0x4000 | 512)))
                # now and then a gap, counted as lost once a second old
                seqs[key] = seq + 2 + (rng.choice((0, 0, 0, 5)))
            elif what < 4:
                data = _ipfix(rng, seq, now, rng.random() < 0.3)
                seqs[key] = seq + 3
            elif what == 4:
                data = _sflow(rng, seq)
                seqs[key] = seq + 1
            else:
                data = rng.choice((b"\x00\x05", b"\x00\x63\x00\x01" + bytes(20)))   # truncated, bad version
            # a burst now and then: an exporter evicted and back sends more than it had
            for _ in range(rng.choice((1, 1, 1, 6))):
                for w in worlds:
                    w.dec.decode(data, e, port, now)
    assert worlds[0].dec.evicted_exporters, "no exporter was evicted"
    assert EVICTED in worlds[0].stats and ever_named and lost_seen and ignored_seen


@pytest.mark.parametrize("seed", range(6))
def test_the_series_kept_by_changes_are_the_walks_one_worker(seed: int) -> None:
    _run(seed, following=False)


@pytest.mark.parametrize("seed", range(6))
def test_the_series_kept_by_changes_are_the_walks_following(seed: int) -> None:
    _run(seed, following=True)


def _plain(st: tuple[Any, ...]) -> tuple[Any, ...]:
    """A series_stats() entry as series_changed() gives it: datagrams, rate, protocol, then per
    protocol its name, datagrams, flows, missing template sets, templates, sequence lost and
    resets, templates evicted, sample drops, counter samples ignored, samples skipped, errors and not
    sent."""
    datagrams, rate, protocol, protocols, templates = st
    out: list[Any] = [datagrams, rate, protocol or "unknown"]
    for name, p in protocols.items():
        out += [name, p["datagrams"], p["flows"], p["missing_template_sets"], (templates or {}).get(name, 0),
                p["sequence_lost"], p["sequence_resets"], p["templates_evicted"], p["sample_drops"],
                p["counter_samples_ignored"], p["samples_skipped"], tuple(p["errors"].items()), tuple(p["not_sent"].items())]
    return tuple(out)


def test_series_changed_gives_what_changed_since_it_was_last_asked() -> None:
    """Decoder.series_changed(): the first call gives every entry (series_stats()'s, as plain
    values); then only the exporters that sent, had templates loaded or a sequence gap settled,
    and those evicted since (gone), with EVICTED when exporters were evicted."""
    from collector.metrics import EVICTED
    from decoders import Decoder, DecoderConfig

    dec = Decoder(DecoderConfig(max_exporters=4))
    rec = dg.v5_records(1, random.Random(1), uptime_ms=100_000)

    def send(ip: str, seq: int, at: float) -> None:
        dec.decode(dg.v5_datagram(rec, seq=seq, unix_secs=int(T0 + at), uptime_ms=100_000), ip, 2055, T0 + at)

    send("10.0.0.1", 1, 1)
    send("10.0.0.2", 1, 2)
    entries, gone = dec.series_changed(T0 + 2)
    assert set(entries) == {"10.0.0.1", "10.0.0.2"} and gone == []
    assert dec.series_changed(T0 + 2) == ({}, [])
    send("10.0.0.2", 10, 3)               # 8 flows lost, once a second old
    entries, _ = dec.series_changed(T0 + 3)
    assert set(entries) == {"10.0.0.2"} and entries["10.0.0.2"][3:4] + entries["10.0.0.2"][8:9] == ("netflow5", 0)
    entries, _ = dec.series_changed(T0 + 5)
    assert set(entries) == {"10.0.0.2"} and entries["10.0.0.2"][3:4] + entries["10.0.0.2"][8:9] == ("netflow5", 8)
    for k in range(3, 6):                 # 10.0.0.5 evicts 10.0.0.1, the least recently seen
        send(f"10.0.0.{k}", 1, 3 + k)
    entries, gone = dec.series_changed(T0 + 9)
    assert set(entries) == {"10.0.0.3", "10.0.0.4", "10.0.0.5", EVICTED} and gone == ["10.0.0.1"]
    assert entries == {e: _plain(s) for e, s in dec.series_stats(T0 + 9).items() if e in entries}
    dec.import_state({"format": 3, "exporters": {"10.0.0.2": {"templates": [
        {"version": 10, "domain": 0, "id": 256, "port": 1, "fields": [list(f) for f in dg.OVS_INGRESS.spec()],
         "refreshed": T0}]}}})
    entries, gone = dec.series_changed(T0 + 9)
    assert set(entries) == {"10.0.0.2"} and gone == []
