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
