"""A collector running for weeks meets churn, not floods: exporting processes that restart on a
new source port, exporters that come and go. What it keeps per exporter must come back to a
bound however many cycles go by, and so must what it writes to the state file."""

from __future__ import annotations

import struct

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set
from decoders import Decoder, DecoderConfig

EXPORTER = "192.0.2.1"
TPL = IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("proto", 4, 0, 1)))
REC = {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": 6}
# RFC 7011 8.1: set id 2, template id 2, field count 0: every template of the process withdrawn
WITHDRAW_ALL = struct.pack("!HHHH", 2, 8, 2, 0)
T0 = 1_700_000_000.0


def _restart_cycles(dec: Decoder, cycles: int, first_port: int = 20000) -> None:
    """An exporting process that defines its template, sends data, withdraws everything as it
    shuts down, and starts again on the next ephemeral source port."""
    for c in range(cycles):
        port, now = first_port + c, T0 + 10.0 * c
        dec.decode(ipfix_message([template_set([TPL]), data_set(TPL, [REC])], seq=0, export_time=int(now)),
                   EXPORTER, port, now)
        dec.decode(ipfix_message([WITHDRAW_ALL], seq=1, export_time=int(now)), EXPORTER, port, now + 1.0)


def test_withdrawals_of_restarted_processes_stay_bounded() -> None:
    """Each process that withdrew its last template was remembered by its source port for the
    life of the exporter (ExporterState.withdrawn, saved in the state file): an exporter that
    withdraws on shutdown and restarts on a new port grew it by one entry a restart, up to the
    whole port space, in memory and in every state file save."""
    dec = Decoder(DecoderConfig())
    _restart_cycles(dec, 2000)
    saved = dec.export_state()["exporters"][EXPORTER]
    assert len(saved["withdrawn"]) <= 256
    # the latest withdrawals are the ones kept (a copy of those templates is the likeliest to
    # come back from another replica's file)
    assert [20000 + 1999, T0 + 10.0 * 1999 + 1.0] in saved["withdrawn"]
    # and a withdrawal still does its job: the process's templates are gone
    late = dec.decode(ipfix_message([data_set(TPL, [REC])], seq=2, export_time=int(T0)), EXPORTER, 21999,
                      T0 + 20000.0)
    assert late.missing_template_sets == 1


def test_withdrawals_loaded_from_a_state_file_stay_bounded() -> None:
    """A state file written before the bound (or by a replica that kept more) does not bring the
    unbounded table back."""
    state = {"format": 3, "exporters": {EXPORTER: {
        "templates": [], "domain_sampling": [], "sampler_rates": [], "interface_rates": [], "sysinit_ms": [],
        "withdrawn": [[10000 + p, T0 + p] for p in range(3000)], "seen": []}}}
    dec = Decoder(DecoderConfig())
    dec.import_state(state)
    withdrawn = dec.export_state()["exporters"][EXPORTER]["withdrawn"]
    assert len(withdrawn) <= 256
    assert [12999, T0 + 2999] in withdrawn


def test_exporters_that_come_and_go_never_lock_new_ones_out_of_the_template_budget() -> None:
    """Nodes of an autoscaling cluster are replaced for weeks: each new node exports from a new
    address, the old one goes silent. The templates of all exporters together are bounded
    (max_template_fields), and only an evicted exporter gave its share back, which happened
    at max_exporters (16,384) or max_state_bytes (which leaves templates out): once the
    silent exporters' templates filled the budget (about 900 OVS nodes at the defaults), every
    new node's templates were refused (template_limit) for the life of the process, and none
    of its flows decoded. The exporters seen least recently give way instead, as they do for
    the exporter table."""
    wide = tuple((f"x{i}", 1000 + i, 0, 4) for i in range(98))
    t1 = IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4)) + wide)
    t2 = IpfixTemplate(257, (("dst", 12, 0, 4), ("src", 8, 0, 4)) + wide)
    rec = {"src": "10.0.0.1", "dst": "10.0.0.2", **{f"x{i}": i for i in range(98)}}
    budget = 6 * (100 + 24)          # three exporters' two templates
    dec = Decoder(DecoderConfig(max_template_fields=budget))
    for c in range(200):
        ip, now = f"10.1.{c >> 8}.{c & 255}", T0 + 60.0 * c
        dec.decode(ipfix_message([template_set([t1, t2])], seq=0, export_time=int(now)), ip, 4739, now)
        b = dec.decode(ipfix_message([data_set(t1, [rec]), data_set(t2, [rec])], seq=0, export_time=int(now)),
                       ip, 4739, now + 1.0)
        assert (len(b), b.missing_template_sets) == (2, 0), f"exporter {c}: {b.error}"
        assert dec.template_fields_counted <= budget
    stats = dec.stats()
    assert sum(s["errors"].get("template_limit", 0) for s in stats.values()) == 0
    # the exporters that gave way are counted, and their counters kept (folded)
    assert dec.evicted_exporters > 0
    assert sum(s["flows"] for s in stats.values()) == 400
