"""Review of the state file's per-exporting-process "seen" stamps (collector/state.py,
Decoder.export_state/import_state): stamps from the future, an idle standby replica, and
exporting processes nobody has heard from in a long time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from test_state_failover import EXPORTER, KEEP, NEW, OLD, OTHER, PORT, REC, _msg

from benchmarks.datagrams import data_set, template_set
from collector.state import StateFile
from decoders import Decoder, DecoderConfig


def _restarted(path: Path) -> Decoder:
    d = Decoder(DecoderConfig())
    StateFile(str(path), None).load_into(d)
    return d


def _after_a_run_ahead(path: Path, now: float) -> tuple[Decoder, StateFile]:
    """A previous run whose clock ran 10 minutes ahead saved template 256 (OLD) with its data;
    this run, its clock corrected, loaded and saved that file. Returns (decoder, its StateFile)."""
    ahead = now + 600
    run1 = Decoder(DecoderConfig())
    run1.decode(_msg([template_set([OLD]), data_set(OLD, [REC])], ahead), EXPORTER, PORT, ahead)
    assert StateFile(str(path), None).save(run1)
    run2, sf = _restarted(path), StateFile(str(path), None)
    assert sf.save(run2)
    return run2, sf


def _replicas_after_a_saved(path: Path, now: float) -> tuple[Decoder, StateFile, Decoder, StateFile]:
    """Replicas A and B sharing `path`; A received template 256 (OLD) from X and saved.
    Returns (a, its StateFile, b, its StateFile)."""
    a, b = Decoder(DecoderConfig()), Decoder(DecoderConfig())
    sa, sb = StateFile(str(path), None), StateFile(str(path), None)
    a.decode(_msg([template_set([OLD])], now - 1000), EXPORTER, PORT, now - 1000)
    assert sa.save(a)
    return a, sa, b, sb


def _layout(d: Decoder, when: float) -> list[tuple]:
    flows = d.decode(_msg([data_set(NEW, [REC])], when), EXPORTER, PORT, when).to_dicts()
    return [(f["SrcAddr"], f["DstAddr"], f.get("Proto")) for f in flows]


def test_a_stamp_from_the_far_future_in_the_other_writers_file_does_not_outvote_every_save(tmp_path: Path) -> None:
    """import_state refuses a "seen" stamp more than a day ahead (a writer whose clock was
    wrong, or a damaged file); a save's merge took it as it was: the other writer's old copy of
    a template won over this replica's redefinition (RFC 7011 8) at every save, for as long as
    the stamp stays ahead, and a restart read the exporter's data with the old layout."""
    now = time.time()
    path = tmp_path / "state.json"
    b = Decoder(DecoderConfig())
    b.decode(_msg([template_set([OLD])], now - 1000), EXPORTER, PORT, now - 1000)
    state = b.export_state()
    state["exporters"][EXPORTER]["seen"] = [[PORT, now + 30 * 86400.0]]
    path.write_bytes(orjson.dumps(state))           # the other replica's save

    a, sa = Decoder(DecoderConfig()), StateFile(str(path), None)
    a.decode(_msg([template_set([NEW])], now - 100), EXPORTER, PORT, now - 100)
    assert _layout(a, now - 90) == [("10.0.0.1", "10.0.0.2", 6)]
    assert sa.save(a)
    assert _layout(a, now - 80) == [("10.0.0.1", "10.0.0.2", 6)]    # (not the old layout adopted)
    assert _layout(_restarted(path), now) == [("10.0.0.1", "10.0.0.2", 6)]


def test_an_idle_standby_replica_takes_the_newer_knowledge_before_a_second_failover(tmp_path: Path) -> None:
    """Active/standby replicas: B receives exporter X only while A is away. After the failback
    X redefines template 256 at A (RFC 7011 8) and A saves. B receives nothing meanwhile, so its
    periodic save found its state unchanged and returned before merging: it never took A's newer
    knowledge into its decoder (that happened only at a save that writes), and at the second
    failover B had a template for X's data (no miss, no look in the file) and read the new
    layout with the old one until X's next template refresh, up to 10 minutes."""
    now = time.time()
    path = tmp_path / "state.json"
    a, sa, b, sb = _replicas_after_a_saved(path, now)
    # failover: B takes X's template from A's save, reads X's data, saves
    data = _msg([data_set(OLD, [REC])], now - 900)
    assert b.decode(data, EXPORTER, PORT, now - 900).missing_template_sets == 1
    assert asyncio.run(sb.refresh_into(b)) == 1
    assert len(b.decode(data, EXPORTER, PORT, now - 899)) == 1
    assert asyncio.run(sb.save_async(b))
    # failback: A redefines 256 and saves; B, idle, goes on with its periodic saves
    a.decode(_msg([template_set([NEW]), data_set(NEW, [REC])], now - 400), EXPORTER, PORT, now - 400)
    assert sa.save(a)
    written = path.read_bytes()
    assert asyncio.run(sb.save_async(b))
    assert asyncio.run(sb.save_async(b))
    assert path.read_bytes() == written     # (what B took is what the file says: nothing to write)
    # second failover
    assert _layout(b, now) == [("10.0.0.1", "10.0.0.2", 6)]


def test_an_idle_replica_does_not_rewrite_the_file(tmp_path: Path) -> None:
    """Data alone changes the file at most once a minute, and an idle collector not at all: its
    periodic saves leave the file alone, also when another writer changed it since."""
    now = time.time()
    path = tmp_path / "state.json"
    a, b = Decoder(DecoderConfig()), Decoder(DecoderConfig())
    sa, sb = StateFile(str(path), None), StateFile(str(path), None)
    b.decode(_msg([template_set([KEEP])], now - 1000), OTHER, PORT, now - 1000)
    assert asyncio.run(sb.save_async(b))
    a.decode(_msg([template_set([OLD])], now - 500), EXPORTER, PORT, now - 500)
    for when in range(int(now - 480), int(now - 470)):     # data within one minute
        a.decode(_msg([data_set(OLD, [REC])], when), EXPORTER, PORT, when)
        assert asyncio.run(sa.save_async(a))
    assert sa.saves["ok"] <= 2
    before = path.stat().st_mtime_ns, path.stat().st_ino
    for _ in range(3):
        assert asyncio.run(sb.save_async(b))
        assert asyncio.run(sa.save_async(a))
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before


def test_an_exporting_process_not_heard_from_for_a_week_is_no_longer_saved(tmp_path: Path) -> None:
    """Exporters loaded at start and never heard from again were saved again at every save, and
    so loaded again at every start, forever (bounded only by --max-exporters). An exporting
    process whose newest stamp (its templates' refresh, the data read with them, its withdrawal)
    is older than STATE_MAX_AGE is left out of the file once the collector has run for
    EXPIRY_GRACE_S (a collector stopped for longer keeps its file until its exporters are heard
    again); the one this exporter still sends from, and other exporters, stay."""
    from collector.state import EXPIRY_GRACE_S, STATE_MAX_AGE

    now = time.time()
    old = now - STATE_MAX_AGE - 600
    path = tmp_path / "state.json"
    d = Decoder(DecoderConfig())
    d.decode(_msg([template_set([OLD])], old), EXPORTER, PORT, old)             # gone since
    d.decode(_msg([template_set([KEEP])], old), EXPORTER, PORT + 1, old)
    d.decode(_msg([data_set(KEEP, [REC])], now - 60), EXPORTER, PORT + 1, now - 60)  # still sending
    d.decode(_msg([template_set([OLD])], old), OTHER, PORT, old)                # gone since
    sf = StateFile(str(path), None)
    assert sf.save(d)                       # just started: everything kept
    saved = orjson.loads(path.read_bytes())["exporters"]
    assert sorted(saved) == [EXPORTER, OTHER]

    restarted = _restarted(path)
    sf = StateFile(str(path), None)
    sf._started -= EXPIRY_GRACE_S           # (this collector has run for the grace period)
    assert sf.save(restarted)
    saved = orjson.loads(path.read_bytes())["exporters"]
    assert list(saved) == [EXPORTER]
    assert [(t["port"], t["id"]) for t in saved[EXPORTER]["templates"]] == [(PORT + 1, 257)]
    assert [p for p, _ in saved[EXPORTER]["seen"]] == [PORT + 1]
    # the decoder itself still has them (only the file forgets)
    assert restarted.decode(_msg([data_set(OLD, [REC])], now), OTHER, PORT, now).to_dicts()


def test_exporters_with_nothing_to_restore_are_not_saved_forever(tmp_path: Path) -> None:
    """A NetFlow v5 (or sFlow) exporter has no templates, rates or clocks: its entry in the file
    is empty, yet it was loaded at every start (an exporter with state, beyond --max-exporters
    if need be) and saved again, for ever. Once the collector has run for EXPIRY_GRACE_S it is
    left out."""
    import random

    from benchmarks.datagrams import v5_datagram, v5_records
    from collector.state import EXPIRY_GRACE_S

    now = time.time()
    path = tmp_path / "state.json"
    d = Decoder(DecoderConfig())
    d.decode(v5_datagram(v5_records(2, random.Random(1), uptime_ms=100000), seq=0, unix_secs=int(now),
                         uptime_ms=100000), "10.9.9.9", 2055, now)
    d.decode(_msg([template_set([KEEP])], now), OTHER, PORT, now)
    sf = StateFile(str(path), None)
    sf._started -= EXPIRY_GRACE_S
    assert sf.save(d)
    assert list(orjson.loads(path.read_bytes())["exporters"]) == [OTHER]


def test_what_the_decoder_learns_while_an_idle_save_reads_the_file_is_still_written(tmp_path: Path) -> None:
    """The idle replica's periodic save reads the other writer's file in a thread while the
    event loop goes on decoding: what the decoder learned meanwhile is written at the next save,
    not taken as already in the file."""
    now = time.time()
    path = tmp_path / "state.json"
    a, sa, b, sb = _replicas_after_a_saved(path, now)
    b.decode(_msg([template_set([OLD]), data_set(OLD, [REC])], now - 900), EXPORTER, PORT, now - 900)
    assert asyncio.run(sb.save_async(b))
    a.decode(_msg([template_set([NEW]), data_set(NEW, [REC])], now - 400), EXPORTER, PORT, now - 400)
    assert sa.save(a)

    merge_only = sb._merge_only

    def meanwhile(data: bytes) -> None:     # (a template arrives at B while the file is read)
        merge_only(data)
        b.decode(_msg([template_set([KEEP])], now - 300), OTHER, PORT, now - 300)

    sb._merge_only = meanwhile  # type: ignore[method-assign]
    assert asyncio.run(sb.save_async(b))
    sb._merge_only = merge_only  # type: ignore[method-assign]
    assert asyncio.run(sb.save_async(b))
    assert OTHER in orjson.loads(path.read_bytes())["exporters"]


def test_an_expired_process_still_takes_the_newer_knowledge_into_the_decoder(tmp_path: Path) -> None:
    """A process left out of this replica's saves for its age is still in its decoder: when the
    other replica knows it more recently (the exporter redefined a template there, RFC 7011 8),
    the save must still take that into the decoder, or a failover to this replica reads the
    exporter's data with the old layout (it has a template: no miss, no look in the file)."""
    from collector.state import EXPIRY_GRACE_S, STATE_MAX_AGE

    now = time.time()
    old = now - STATE_MAX_AGE - 600
    path = tmp_path / "state.json"
    a, b = Decoder(DecoderConfig()), Decoder(DecoderConfig())
    sa, sb = StateFile(str(path), None), StateFile(str(path), None)
    sb._started -= EXPIRY_GRACE_S
    b.decode(_msg([template_set([OLD]), data_set(OLD, [REC])], old), EXPORTER, PORT, old)   # a failover, long ago
    a.decode(_msg([template_set([NEW]), data_set(NEW, [REC])], now - 400), EXPORTER, PORT, now - 400)
    assert sa.save(a)
    b.decode(_msg([template_set([KEEP])], now - 100), OTHER, PORT, now - 100)
    assert sb.save(b)
    assert _layout(b, now) == [("10.0.0.1", "10.0.0.2", 6)]
    assert _layout(_restarted(path), now) == [("10.0.0.1", "10.0.0.2", 6)]


def test_a_withdrawal_after_the_clock_stepped_back_is_not_outvoted_by_the_previous_run(tmp_path: Path) -> None:
    """A single collector whose clock ran ahead (10 minutes: corrected by NTP at its restart)
    stamped its exporting processes in the future. After the restart the exporter withdraws its
    templates (RFC 7011 8.1); the save merges the previous run's file (the file it finds, not
    its own last write), whose stamp is later than the withdrawal's receive time: the previous
    run's knowledge won, and the withdrawn template came back in the file and in the decoder.
    A change stamped by the decoder is no older than what it knew of the process before."""
    import struct

    now = time.time()
    path = tmp_path / "state.json"
    run2, sf = _after_a_run_ahead(path, now)
    run2.decode(_msg([struct.pack("!HHHH", 2, 8, 2, 0)], now), EXPORTER, PORT, now)   # withdraw all
    assert sf.save(run2)
    old_data = _msg([data_set(OLD, [REC])], now + 1)
    assert run2.decode(old_data, EXPORTER, PORT, now + 1).missing_template_sets == 1
    assert _restarted(path).decode(old_data, EXPORTER, PORT, now + 1).missing_template_sets == 1


def test_one_template_withdrawn_after_the_clock_stepped_back_stays_withdrawn_across_worker_files(
        tmp_path: Path) -> None:
    """--workers 2 after a restart that corrected a clock running 10 minutes ahead: both workers
    loaded worker 0's file, stamped in the future. The exporter, now at worker 1, withdraws
    template 256 (257 stays, RFC 7011 8.1); worker 0 still holds 256 and saves last. The two
    files' stamps tied, so the next start took the union of their templates: 256 came back."""
    import os
    import struct

    now = time.time()
    base = str(tmp_path / "state.json")
    ahead = now + 600
    run1 = Decoder(DecoderConfig())
    run1.decode(_msg([template_set([OLD, KEEP]), data_set(KEEP, [REC])], ahead), EXPORTER, PORT, ahead)
    assert StateFile(base, 0).save(run1)

    w0, w1 = Decoder(DecoderConfig()), Decoder(DecoderConfig())
    s0, s1 = StateFile(base, 0), StateFile(base, 1)
    s0.load_into(w0)
    s1.load_into(w1)
    w1.decode(_msg([struct.pack("!HHHH", 2, 8, 256, 0), data_set(KEEP, [REC])], now), EXPORTER, PORT, now)
    assert s1.save(w1)
    w0.decode(_msg([template_set([KEEP])], now), OTHER, PORT, now)
    assert s0.save(w0)
    newer = os.stat(s0.path).st_mtime + 10
    os.utime(s0.path, (newer, newer))

    restarted = Decoder(DecoderConfig())
    StateFile(base, 0).load_into(restarted)
    assert restarted.decode(_msg([data_set(OLD, [REC])], now + 1), EXPORTER, PORT, now + 1).missing_template_sets == 1


def test_a_redefinition_after_the_clock_stepped_back_is_not_outvoted_by_the_previous_run(tmp_path: Path) -> None:
    """As for a withdrawal: after a restart that corrected a clock running ahead, the exporter
    redefines template 256 (RFC 7011 8); the previous run's file, stamped later than that
    receive time, won at the save, and the decoder took the old layout back."""
    now = time.time()
    path = tmp_path / "state.json"
    run2, sf = _after_a_run_ahead(path, now)
    run2.decode(_msg([template_set([NEW])], now), EXPORTER, PORT, now)
    assert sf.save(run2)
    assert _layout(run2, now + 1) == [("10.0.0.1", "10.0.0.2", 6)]
    assert _layout(_restarted(path), now + 1) == [("10.0.0.1", "10.0.0.2", 6)]


def test_one_malformed_exporter_in_the_other_writers_file_leaves_out_only_that_one(tmp_path: Path) -> None:
    """A save merges what the other writer's file says of each exporter; one malformed entry (a
    template whose port is a list: unhashable) raised inside that merge, and the whole save fell
    back to this writer's state alone: every exporter only the other replica receives vanished
    from the file."""
    now = time.time()
    path = tmp_path / "state.json"
    b = Decoder(DecoderConfig())
    b.decode(_msg([template_set([OLD])], now - 100), EXPORTER, PORT, now - 100)
    b.decode(_msg([template_set([KEEP])], now - 100), OTHER, PORT, now - 100)
    state = b.export_state()
    state["exporters"][EXPORTER]["templates"][0]["port"] = [PORT]
    path.write_bytes(orjson.dumps(state))           # the other replica's save, one entry damaged

    a, sa = Decoder(DecoderConfig()), StateFile(str(path), None)
    a.decode(_msg([template_set([NEW])], now - 50), EXPORTER, PORT, now - 50)
    assert sa.save(a)
    saved = orjson.loads(path.read_bytes())["exporters"]
    assert [t["id"] for t in saved[OTHER]["templates"]] == [257]      # the other's exporter kept
    assert _layout(_restarted(path), now) == [("10.0.0.1", "10.0.0.2", 6)]   # ours of X as it was


def test_temporary_files_of_interrupted_writes_are_removed_at_start(tmp_path: Path) -> None:
    """A write goes to `.flowscope-state.XXXX` beside the file and is renamed over it; a crash or
    a full disk mid-write left that file behind, and nothing ever removed it. At start, those
    older than an hour go; a fresh one (another replica writing now) and other files stay."""
    import os

    from collector import state as state_mod

    path = tmp_path / "state.json"
    b = Decoder(DecoderConfig())
    b.decode(_msg([template_set([OLD])], time.time()), EXPORTER, PORT, time.time())
    assert StateFile(str(path), None).save(b)
    old, fresh, other = (tmp_path / (state_mod.TEMP_PREFIX + "old1"), tmp_path / (state_mod.TEMP_PREFIX + "new1"),
                         tmp_path / "notes.txt")
    for f in (old, fresh, other):
        f.write_bytes(b"{partial")
    then = time.time() - 2 * 3600
    os.utime(old, (then, then))
    os.utime(other, (then, then))
    _restarted(path)
    assert not old.exists() and fresh.exists() and other.exists() and path.exists()


def _saved_by(path: str, exporter: str, when: float, age_days: float) -> None:
    """A file at `path` holding exporter's template 256, as a run saved it `age_days` ago."""
    import os

    d = Decoder(DecoderConfig())
    d.decode(_msg([template_set([OLD])], when), exporter, PORT, when)
    Path(path).write_bytes(orjson.dumps(d.export_state()))
    then = time.time() - age_days * 86400
    os.utime(path, (then, then))


def _states(d: Path) -> list[str]:
    """The state files in d (not their `.lock` files)."""
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock"))


def test_files_of_an_earlier_larger_worker_count_are_loaded_then_removed(tmp_path: Path) -> None:
    """`--workers 4` wrote state.json.0 to .3; the collector now runs 2 workers, which write .0
    and .1 only. Nothing ever wrote .2 and .3 again, and every start loaded them for ever (as
    `state.json` itself after one worker became several). A file not written for a week while
    others were is loaded one last time (its exporters go on), then removed by the first worker
    after its first write (the other workers have loaded it by then); the files being written
    stay."""
    now = time.time()
    base = str(tmp_path / "state.json")
    _saved_by(base, "10.9.0.1", now - 9 * 86400, 9)           # the single-worker run before that
    _saved_by(base + ".0", "10.9.0.2", now - 60, 0.001)
    _saved_by(base + ".1", "10.9.0.3", now - 60, 0.001)
    _saved_by(base + ".2", "10.9.0.4", now - 8 * 86400, 8)
    _saved_by(base + ".3", "10.9.0.5", now - 8 * 86400, 8)
    every = ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"]
    d0, d1 = Decoder(DecoderConfig()), Decoder(DecoderConfig())
    s0, s1 = StateFile(base, 0), StateFile(base, 1)
    s0.load_into(d0)
    assert len(_states(tmp_path)) == 5     # worker 1 may still be loading
    s1.load_into(d1)
    assert sorted(d0.export_state()["exporters"]) == sorted(d1.export_state()["exporters"]) == every
    assert s1.save(d1)
    assert len(_states(tmp_path)) == 5     # the second worker removes nothing
    assert s0.save(d0)
    assert _states(tmp_path) == ["state.json.0", "state.json.1"]


def test_a_collector_stopped_for_longer_than_a_week_keeps_every_file(tmp_path: Path) -> None:
    """Every file is as old (the collector was stopped): none is abandoned, all stay, as the
    exporters they hold stay until heard again (STATE_MAX_AGE)."""
    now = time.time()
    base = str(tmp_path / "state.json")
    for i, age in enumerate((9, 8, 8)):
        _saved_by(f"{base}.{i}", f"10.9.0.{i + 1}", now - age * 86400, age)
    d, sf = Decoder(DecoderConfig()), StateFile(base, 0)
    sf.load_into(d)
    assert len(d.export_state()["exporters"]) == 3
    assert sf.save(d)
    assert _states(tmp_path) == ["state.json.0", "state.json.1", "state.json.2"]
