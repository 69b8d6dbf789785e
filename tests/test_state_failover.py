"""The shared state file across a failover and back: two StateFiles on one path are two replicas,
each with its own real Decoder. The file must end up with the newest knowledge of each exporting
process (exporter address and UDP source port), whichever replica saves last: a replica that held
an exporter during a failover, and no longer receives it, must not outvote the one that does."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import orjson

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set
from collector.state import StateFile
from decoders import Decoder, DecoderConfig

EXPORTER, PORT = "10.1.0.1", 4739
OTHER = "10.1.0.9"      # an exporter replica B keeps receiving (its saves keep happening)
OLD = IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("b", 1, 0, 4)))
NEW = IpfixTemplate(256, (("dst", 12, 0, 4), ("src", 8, 0, 4), ("proto", 4, 0, 1), ("b", 1, 0, 4)))
KEEP = IpfixTemplate(257, (("src", 8, 0, 4), ("b", 1, 0, 4)))
REC = {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": 6, "b": 100}


def _msg(sets: list[bytes], when: float) -> bytes:
    return ipfix_message(sets, seq=0, export_time=int(when))


def _failover_and_back(tmp_path: Path, now: float, templates: list[IpfixTemplate]) -> tuple[
        Decoder, StateFile, Decoder, StateFile, Path]:
    """X sends to replica A, fails over to B (which takes X's templates from the file A saved,
    then receives X's periodic template refresh), then comes back to A. Returns (a, sa, b, sb)."""
    path = tmp_path / "state.json"
    a, b = Decoder(DecoderConfig()), Decoder(DecoderConfig())
    sa, sb = StateFile(str(path), None), StateFile(str(path), None)
    a.decode(_msg([template_set(templates)], now - 1000), EXPORTER, PORT, now - 1000)
    assert sa.save(a)
    # failover: X's data reaches B, which has no template: it loads them from A's save
    data = _msg([data_set(OLD, [REC])], now - 900)
    assert b.decode(data, EXPORTER, PORT, now - 900).missing_template_sets == 1
    assert asyncio.run(sb.refresh_into(b)) == len(templates)
    assert len(b.decode(data, EXPORTER, PORT, now - 899)) == 1
    b.decode(_msg([template_set(templates)], now - 800), EXPORTER, PORT, now - 800)   # OVS refresh
    b.decode(_msg([template_set([KEEP])], now - 800), OTHER, PORT, now - 800)
    assert sb.save(b)
    # failback: X's data reaches A again, which still holds its templates
    assert len(a.decode(_msg([data_set(OLD, [REC])], now - 500), EXPORTER, PORT, now - 500)) == 1
    return a, sa, b, sb, path


def _b_saves_again(b: Decoder, sb: StateFile, now: float) -> None:
    """B goes on receiving another exporter (a template refresh changes its state) and saves."""
    b.decode(_msg([template_set([KEEP])], now - 100), OTHER, PORT, now - 100)
    assert sb.save(b)


def _restarted(path: Path) -> Decoder:
    d = Decoder(DecoderConfig())
    StateFile(str(path), None).load_into(d)
    return d


def test_a_redefinition_at_the_replica_receiving_the_exporter_survives_the_others_save(tmp_path: Path) -> None:
    """RFC 7011 8 ("a Template ... re-defined ... the Collecting Process MUST ... use the new
    Template"): after the failback X redefines template 256 with a new layout at A; A saves. B
    still holds the old layout (from the failover) and wrote it as its own at its next save, so
    a restart of A loaded the old layout and read X's data in the new one with it (addresses
    swapped, protocol lost) until X's next template refresh, up to 10 minutes later."""
    now = time.time()
    a, sa, b, sb, path = _failover_and_back(tmp_path, now, [OLD])
    a.decode(_msg([template_set([NEW])], now - 400), EXPORTER, PORT, now - 400)
    assert sa.save(a)
    _b_saves_again(b, sb, now)

    restarted = _restarted(path)
    flows = restarted.decode(_msg([data_set(NEW, [REC])], now), EXPORTER, PORT, now).to_dicts()
    assert [(f["SrcAddr"], f["DstAddr"], f.get("Proto")) for f in flows] == [("10.0.0.1", "10.0.0.2", 6)]
    # and B's other exporter is still in the file
    assert OTHER in orjson.loads(path.read_bytes())["exporters"]


def test_a_withdrawal_at_the_replica_receiving_the_exporter_survives_the_others_save(tmp_path: Path) -> None:
    """RFC 7011 8.1: after the failback X withdraws all its templates at A (set 2, template id 2,
    field count 0); A saves (the file records the withdrawal). B still holds the templates from
    the failover and wrote them as its own at its next save, dropping A's withdrawal: a restart
    of A brought the withdrawn templates back."""
    now = time.time()
    a, sa, b, sb, path = _failover_and_back(tmp_path, now, [OLD])
    withdraw_all = struct.pack("!HHHH", 2, 8, 2, 0)
    a.decode(_msg([withdraw_all], now - 400), EXPORTER, PORT, now - 400)
    assert a.export_state()["exporters"][EXPORTER]["templates"] == []
    assert sa.save(a)
    _b_saves_again(b, sb, now)

    saved = orjson.loads(path.read_bytes())["exporters"][EXPORTER]
    assert [t["id"] for t in saved["templates"] if t["port"] == PORT] == []
    restarted = _restarted(path)
    assert restarted.decode(_msg([data_set(OLD, [REC])], now), EXPORTER, PORT, now).missing_template_sets == 1


def test_one_template_withdrawn_at_the_replica_receiving_the_exporter_stays_withdrawn(tmp_path: Path) -> None:
    """RFC 7011 8.1: X withdraws template 256 only (257 stays) at A after the failback, and A
    saves; B's later save must not bring 256 back from the copy it took during the failover."""
    now = time.time()
    a, sa, b, sb, path = _failover_and_back(tmp_path, now, [OLD, KEEP])
    withdraw = struct.pack("!HHHH", 2, 8, 256, 0)
    a.decode(_msg([withdraw, data_set(KEEP, [REC])], now - 400), EXPORTER, PORT, now - 400)
    assert [t["id"] for t in a.export_state()["exporters"][EXPORTER]["templates"]] == [257]
    assert sa.save(a)
    _b_saves_again(b, sb, now)

    saved = orjson.loads(path.read_bytes())["exporters"][EXPORTER]
    assert sorted(t["id"] for t in saved["templates"] if t["port"] == PORT) == [257]


def test_a_restart_keeps_the_stamps_it_loaded(tmp_path: Path) -> None:
    """What a state file loaded at start said of how recent its knowledge of each exporting
    process is ("seen") is said again by the restarted collector's saves: a restart must not make
    the replica receiving an exporter look staler than one that held it during a failover."""
    now = time.time()
    a, sa, _b, _sb, path = _failover_and_back(tmp_path, now, [OLD])
    assert sa.save(a)
    before = a.export_state()["exporters"][EXPORTER]["seen"]
    assert before == [[PORT, (now - 500) // 60 * 60]]     # the data after the failback, to the minute
    assert _restarted(path).export_state()["exporters"][EXPORTER]["seen"] == before


# ------------------------------------------------------------------------------------------------
# --workers N: each worker writes its own file, every worker loads them all at start


# options template 400 (set 3): scope observationDomainId (149), samplingPacketInterval (305)
_OPT_BODY = struct.pack("!HHH", 400, 2, 1) + struct.pack("!HHHH", 149, 4, 305, 4)
OPTIONS_SET = struct.pack("!HH", 3, 4 + len(_OPT_BODY)) + _OPT_BODY


def _opt_data(rate: int) -> bytes:
    return struct.pack("!HHII", 400, 12, 0, rate)


def _moved_to_worker_1(tmp_path: Path, now: float) -> tuple[Decoder, StateFile, Decoder, StateFile]:
    """Worker 0 received X first; the kernel then hashes X's socket to worker 1 (a worker
    respawned, or the worker count changed), which takes X's templates from worker 0's file."""
    base = str(tmp_path / "state.json")
    w0, w1 = Decoder(DecoderConfig(default_sampling=0)), Decoder(DecoderConfig(default_sampling=0))
    s0, s1 = StateFile(base, 0), StateFile(base, 1)
    w0.decode(_msg([template_set([OLD, KEEP]), OPTIONS_SET, _opt_data(100)], now - 1000), EXPORTER, PORT, now - 1000)
    assert s0.save(w0)
    data = _msg([data_set(OLD, [REC])], now - 600)
    assert w1.decode(data, EXPORTER, PORT, now - 600).missing_template_sets == 1
    assert asyncio.run(s1.refresh_into(w1)) == 3
    assert w1.decode(data, EXPORTER, PORT, now - 599).to_dicts()[0]["Sampling"] == 100
    return w0, s0, w1, s1


def _worker_0_saves_last(w0: Decoder, s0: StateFile, now: float) -> None:
    """Worker 0, which still holds X's state from before, saves after worker 1 (another exporter
    changed its state): its file is the newest one, its state of X the older."""
    import os

    w0.decode(_msg([template_set([KEEP])], now - 100), OTHER, PORT, now - 100)
    assert s0.save(w0)
    newer = os.stat(s0.path).st_mtime + 10     # (a later write, whatever the file system's clock grain)
    os.utime(s0.path, (newer, newer))


def test_one_template_withdrawn_at_the_worker_receiving_the_exporter_stays_withdrawn(tmp_path: Path) -> None:
    """RFC 7011 8.1: X withdraws template 256 (257 stays) at worker 1; worker 0 still holds the
    copy it had before the move and saves later. A restart loaded every file, the union of their
    templates per exporting process, so 256 came back."""
    now = time.time()
    w0, s0, w1, s1 = _moved_to_worker_1(tmp_path, now)
    w1.decode(_msg([struct.pack("!HHHH", 2, 8, 256, 0), data_set(KEEP, [REC])], now - 400), EXPORTER, PORT,
              now - 400)
    assert s1.save(w1)
    _worker_0_saves_last(w0, s0, now)

    restarted = _restarted(tmp_path / "state.json")
    assert restarted.decode(_msg([data_set(OLD, [REC])], now), EXPORTER, PORT, now).missing_template_sets == 1
    assert len(restarted.decode(_msg([data_set(KEEP, [REC])], now), EXPORTER, PORT, now)) == 1
    assert OTHER in restarted.export_state()["exporters"]


def test_a_sampling_rate_learned_at_the_worker_receiving_the_exporter_survives_a_restart(tmp_path: Path) -> None:
    """X's options data at worker 1 changes its sampling rate (RFC 7011 options data, IE 305);
    worker 0's file, saved later, holds the rate from before the move, and being loaded last
    (the newest file) its old rate replaced the new one after a restart: Bytes and Packets
    scaled by the wrong rate until X's next options record."""
    now = time.time()
    w0, s0, w1, s1 = _moved_to_worker_1(tmp_path, now)
    w1.decode(_msg([_opt_data(400)], now - 400), EXPORTER, PORT, now - 400)
    assert w1.decode(_msg([data_set(OLD, [REC])], now - 399), EXPORTER, PORT, now - 399).to_dicts()[0][
        "Sampling"] == 400
    assert s1.save(w1)
    _worker_0_saves_last(w0, s0, now)

    restarted = _restarted(tmp_path / "state.json")
    assert restarted.decode(_msg([data_set(OLD, [REC])], now), EXPORTER, PORT, now).to_dicts()[0]["Sampling"] == 400


def test_a_restarted_replica_does_not_outvote_the_one_receiving_an_exporter_it_only_loaded(tmp_path: Path) -> None:
    """No failover needed: a replica that restarts loads the whole shared file, the exporters
    the other replica receives too, and held them in memory as its own: after the other
    redefined a template of one of them (RFC 7011 8) and saved, the restarted replica's next
    save put the copy it loaded at start back, and the next restart of either read the
    exporter's data with the old layout."""
    now = time.time()
    path = tmp_path / "state.json"
    b, sb = Decoder(DecoderConfig()), StateFile(str(path), None)
    b.decode(_msg([template_set([OLD]), data_set(OLD, [REC])], now - 1000), EXPORTER, PORT, now - 1000)
    assert sb.save(b)
    a, sa = _restarted(path), StateFile(str(path), None)       # replica A restarts: it loads X too
    a.decode(_msg([template_set([KEEP])], now - 900), OTHER, PORT, now - 900)
    assert sa.save(a)
    b.decode(_msg([template_set([NEW])], now - 400), EXPORTER, PORT, now - 400)
    assert sb.save(b)
    a.decode(_msg([template_set([KEEP])], now - 100), OTHER, PORT, now - 100)
    assert sa.save(a)

    flows = _restarted(path).decode(_msg([data_set(NEW, [REC])], now), EXPORTER, PORT, now).to_dicts()
    assert [(f["SrcAddr"], f["DstAddr"], f.get("Proto")) for f in flows] == [("10.0.0.1", "10.0.0.2", 6)]


def test_a_refresh_takes_the_newest_definition_whatever_the_order_of_the_files(tmp_path: Path) -> None:
    """refresh_into reads every file another process changed, oldest first, and takes only what
    the running collector lacks: the first file naming a template won. Two replicas with
    --workers 2 share the volume: replica A's worker 1 once took X's template from worker 0's
    file (X's socket briefly hashed to it) and keeps saving that copy; X then redefines the
    template at worker 0 (RFC 7011 8), whose file is saved last. When X fails over to replica B,
    B took the old layout from worker 1's file (the older one) and read X's data with it."""
    import os

    now = time.time()
    base = str(tmp_path / "state.json")
    a0, a1 = Decoder(DecoderConfig()), Decoder(DecoderConfig())
    s0, s1 = StateFile(base, 0), StateFile(base, 1)
    a0.decode(_msg([template_set([OLD])], now - 1000), EXPORTER, PORT, now - 1000)
    assert s0.save(a0)
    data = _msg([data_set(OLD, [REC])], now - 900)
    assert a1.decode(data, EXPORTER, PORT, now - 900).missing_template_sets == 1
    assert asyncio.run(s1.refresh_into(a1)) == 1
    assert len(a1.decode(data, EXPORTER, PORT, now - 899)) == 1
    assert s1.save(a1)
    a0.decode(_msg([template_set([NEW])], now - 400), EXPORTER, PORT, now - 400)
    assert s0.save(a0)
    mtime = os.stat(s0.path).st_mtime
    os.utime(s1.path, (mtime - 10, mtime - 10))     # (worker 1's save came first)

    b = Decoder(DecoderConfig())                    # replica B, which X fails over to
    sb = StateFile(base, 0)
    new_data = _msg([data_set(NEW, [REC])], now)
    assert b.decode(new_data, EXPORTER, PORT, now).missing_template_sets == 1
    assert asyncio.run(sb.refresh_into(b)) == 1
    flows = b.decode(new_data, EXPORTER, PORT, now).to_dicts()
    assert [(f["SrcAddr"], f["DstAddr"], f.get("Proto")) for f in flows] == [("10.0.0.1", "10.0.0.2", 6)]


def test_an_exporter_the_other_replica_still_receives_is_kept_though_its_templates_are_old(tmp_path: Path) -> None:
    """Another writer's exporters are kept while known within FOREIGN_MAX_AGE. An exporter whose
    templates come seldom (NetFlow v9 exporters resend by packet count, RFC 3954 section 9 leaves
    the refresh to the exporter; a quiet one goes for more than an hour between templates)
    while its data keeps being read with them at the other replica is alive: it was dropped
    from the file at this replica's next save, and a restart of the other one lost it."""
    from collector.state import FOREIGN_MAX_AGE

    now = time.time()
    path = tmp_path / "state.json"
    b, sb = Decoder(DecoderConfig()), StateFile(str(path), None)
    b.decode(_msg([template_set([OLD])], now - FOREIGN_MAX_AGE - 600), EXPORTER, PORT, now - FOREIGN_MAX_AGE - 600)
    assert len(b.decode(_msg([data_set(OLD, [REC])], now - 60), EXPORTER, PORT, now - 60)) == 1
    b.decode(_msg([template_set([OLD])], now - FOREIGN_MAX_AGE - 600), EXPORTER, 5000, now - FOREIGN_MAX_AGE - 600)
    assert sb.save(b)
    a, sa = Decoder(DecoderConfig()), StateFile(str(path), None)
    a.decode(_msg([template_set([KEEP])], now - 30), OTHER, PORT, now - 30)
    assert sa.save(a)
    saved = orjson.loads(path.read_bytes())["exporters"]
    assert (PORT, 256) in [(t["port"], t["id"]) for t in saved[EXPORTER]["templates"]]
    assert _restarted(path).decode(_msg([data_set(OLD, [REC])], now), EXPORTER, PORT, now).to_dicts()
    # an exporter both know: the other's process that is still read is kept, one that sends
    # nothing for longer (port 5000) is let go
    a.decode(_msg([template_set([KEEP])], now - 20), EXPORTER, 6000, now - 20)
    assert sa.save(a)
    saved = orjson.loads(path.read_bytes())["exporters"]
    assert sorted((t["port"], t["id"]) for t in saved[EXPORTER]["templates"]) == [(PORT, 256), (6000, 257)]


def test_a_replica_saving_twice_keeps_the_other_replicas_exporters(tmp_path: Path) -> None:
    """A save keeps another writer's exporters when it finds the file written by another process
    since its own last write; the next save of the same replica found the file to be its own
    last write and wrote its state alone: the other replica's exporters were gone from the file
    at the second save of either (any template refresh, every few seconds with many exporters).
    That is what a failover needs: the replica that went away saves no more, and when its
    exporters reached this one their templates were no longer in the file to take."""
    now = time.time()
    path = tmp_path / "state.json"
    b, sb = Decoder(DecoderConfig()), StateFile(str(path), None)
    b.decode(_msg([template_set([OLD])], now - 100), EXPORTER, PORT, now - 100)
    assert sb.save(b)                                   # replica B saves, then goes away
    a, sa = Decoder(DecoderConfig()), StateFile(str(path), None)
    a.decode(_msg([template_set([KEEP])], now - 50), OTHER, PORT, now - 50)
    assert sa.save(a)
    assert EXPORTER in orjson.loads(path.read_bytes())["exporters"]
    a.decode(_msg([template_set([KEEP])], now - 40), OTHER, PORT + 1, now - 40)
    assert sa.save(a)
    assert EXPORTER in orjson.loads(path.read_bytes())["exporters"]
    # B's exporter fails over to A: its templates are found in the file
    data = _msg([data_set(OLD, [REC])], now)
    assert a.decode(data, EXPORTER, PORT, now).missing_template_sets == 1
    assert asyncio.run(sa.refresh_into(a)) == 1
    assert len(a.decode(data, EXPORTER, PORT, now)) == 1


def test_a_second_failover_reads_the_exporters_data_with_its_newest_template(tmp_path: Path) -> None:
    """RFC 7011 8: X redefines template 256 at A after the failback, and A saves. B still held
    the old layout in memory from the first failover: when X failed over to B again, B had a
    template for the data (no miss, so no look in the file) and read the new layout with the old
    one until X's next template refresh, up to 10 minutes. A save of B that finds the file's
    knowledge of a process newer than its own takes it into B's decoder too."""
    now = time.time()
    a, sa, b, sb, path = _failover_and_back(tmp_path, now, [OLD])
    a.decode(_msg([template_set([NEW])], now - 400), EXPORTER, PORT, now - 400)
    assert sa.save(a)
    _b_saves_again(b, sb, now)
    flows = b.decode(_msg([data_set(NEW, [REC])], now), EXPORTER, PORT, now).to_dicts()
    assert [(f["SrcAddr"], f["DstAddr"], f.get("Proto")) for f in flows] == [("10.0.0.1", "10.0.0.2", 6)]


def test_a_periodic_save_takes_the_newer_knowledge_into_the_decoder_too(tmp_path: Path) -> None:
    """The same through save_async (the collector's periodic save, written in a thread): what
    the file knows more recently is taken into the decoder on the event loop after the write."""
    now = time.time()
    a, sa, b, sb, path = _failover_and_back(tmp_path, now, [OLD, KEEP])
    a.decode(_msg([struct.pack("!HHHH", 2, 8, 256, 0), data_set(KEEP, [REC])], now - 400), EXPORTER, PORT,
             now - 400)
    assert sa.save(a)
    b.decode(_msg([template_set([KEEP])], now - 100), OTHER, PORT, now - 100)
    assert asyncio.run(sb.save_async(b))
    assert b.decode(_msg([data_set(OLD, [REC])], now), EXPORTER, PORT, now).missing_template_sets == 1
    assert len(b.decode(_msg([data_set(KEEP, [REC])], now), EXPORTER, PORT, now)) == 1
