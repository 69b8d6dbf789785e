"""Bad input never crashes the decoders, never passes silently, and never grows memory unbounded.

Every prefix and random byte flips of every corpus datagram, plus hypothesis-generated
datagrams, go through the decoder: each must return (not raise), any failure must be one of the
typed reasons and counted on the exporter, and a valid datagram right after must still decode.
"""

from __future__ import annotations

import random
import resource
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.datagrams import OVS_INGRESS, IpfixTemplate, data_set, ipfix_message, ovs_flows, template_set
from collector.pcap import iter_udp
from decoders import EVICTED, Decoder, DecoderConfig

REASONS = {"truncated", "bad_version", "bad_length", "bad_set", "bad_template", "template_limit",
           "options_limit", "too_large", "bad_sample", "unsupported", "template_mismatch"}
ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent.parent / "shared" / "corpus"


def corpus_pcaps() -> list[Path]:
    """The bundled Apache-2.0 captures, plus the shared corpus when it is present."""
    files = sorted((ROOT / "data").rglob("*.pcap"))
    if SHARED.is_dir():
        files += sorted(SHARED.rglob("*.pcap"))
    return files


def datagrams() -> list[tuple[str, bytes]]:
    out = []
    for f in corpus_pcaps():
        out += [(d.src, d.payload) for d in iter_udp(f)]
    return out


ALL = datagrams()
EXPORT = 1_700_000_000


def _probe() -> tuple[bytes, bytes]:
    tpl = ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=EXPORT)
    data = ipfix_message([data_set(OVS_INGRESS, ovs_flows(3, random.Random(0)))], seq=0, export_time=EXPORT)
    return tpl, data


def check(dec: Decoder, exporter: str, payload: bytes) -> None:
    ex = dec.exporter(exporter)
    before = dict(ex.errors) if ex is not None else {}
    b = dec.decode(payload, exporter)
    b.to_json()  # encoding must cope with whatever was decoded
    if b.error is not None:
        reason = b.error[0]
        assert reason in REASONS, b.error
        assert isinstance(b.error[1], int) and 0 <= b.error[1] <= len(payload)
        after = dec.exporter(exporter).errors
        # Non-fatal problems (a reserved set id skipped) may be counted too, never fewer.
        assert after.get(reason, 0) >= before.get(reason, 0) + 1


def test_corpus_present() -> None:
    assert len(ALL) > 30, "the bundled corpus under tests/data is missing"


def test_every_prefix_of_every_datagram() -> None:
    dec = Decoder()
    tpl, data = _probe()
    for i, (src, payload) in enumerate(ALL):
        # Feed the whole datagram first so templates exist and prefixes reach the data paths.
        check(dec, src, payload)
        for n in range(len(payload)):
            check(dec, src, payload[:n])
        if i % 50 == 0:  # the decoder still works for everyone after all that
            dec.decode(tpl, "192.0.2.250")
            assert len(dec.decode(data, "192.0.2.250")) == 3


def test_random_byte_flips() -> None:
    rng = random.Random(1234)
    dec = Decoder()
    for src, payload in ALL:
        check(dec, src, payload)
        for _ in range(40):
            buf = bytearray(payload)
            for _ in range(rng.randrange(1, 6)):
                if buf:
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
            check(dec, src, bytes(buf))
    tpl, data = _probe()
    dec.decode(tpl, "192.0.2.250")
    assert len(dec.decode(data, "192.0.2.250")) == 3


@st.composite
def netflowish(draw: st.DrawFn) -> bytes:
    """Datagrams that get past the version check into the set/record walkers."""
    version = draw(st.sampled_from([5, 9, 10, 0]))
    body = draw(st.binary(max_size=600))
    if version == 10:
        return struct.pack("!HHIII", 10, 16 + len(body), EXPORT, 0, 0) + body
    if version == 9:
        return struct.pack("!HHIIII", 9, 1, 1000, EXPORT, 0, 0) + body
    if version == 0:
        return struct.pack("!II", 5, 1) + body  # sFlow v5, agent type and the rest random
    return struct.pack("!HH", 5, draw(st.integers(0, 40))) + body


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(netflowish(), min_size=1, max_size=8))
def test_hypothesis_datagrams(payloads: list[bytes]) -> None:
    dec = Decoder(DecoderConfig(max_templates_per_exporter=16))
    for p in payloads:
        check(dec, "192.0.2.1", p)
    assert dec.stats()["192.0.2.1"]["templates"] <= 16


def test_template_and_exporter_floods_keep_memory_bounded() -> None:
    dec = Decoder(DecoderConfig(max_templates_per_exporter=64, max_exporters=1000))
    rng = random.Random(5)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(20000):
        tid = 256 + rng.randrange(60000)
        fields = b"".join(struct.pack("!HH", rng.randrange(1, 500), rng.choice((1, 2, 4, 8))) for _ in range(40))
        tset = struct.pack("!HH", 2, 8 + len(fields)) + struct.pack("!HH", tid, 40) + fields
        src = f"10.{(i >> 8) & 255}.{i & 255}.1"
        dec.decode(ipfix_message([tset], seq=i, export_time=EXPORT), src)
    stats = dec.stats()
    assert dec.exporter_count() <= 1000 and dec.exporter_count() + dec.evicted_exporters == 20000
    assert all(s["templates"] <= 64 for s in stats.values())
    # nothing is refused and no count is lost: evicted exporters' counters are folded
    assert sum(s["datagrams"] for s in stats.values()) == 20000
    assert stats[EVICTED]["datagrams"] == dec.evicted_exporters and stats[EVICTED]["templates"] == 0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mb < 200, f"decoder state grew by {grown_mb:.0f} MB"


def test_a_new_exporter_is_never_locked_out_by_a_full_table() -> None:
    """A spray from many (spoofed) addresses fills the exporter table; a real exporter arriving
    afterwards is decoded (the least recently seen are forgotten), and one that keeps sending
    keeps its templates through later sprays."""
    dec = Decoder(DecoderConfig(max_exporters=64))
    t = IpfixTemplate(256, (("src", 8, 0, 4), ("bytes", 1, 0, 4)), 0)
    data = ipfix_message([data_set(t, [{"src": "10.0.0.1", "bytes": 5}])], seq=1, export_time=EXPORT)
    tpl = ipfix_message([template_set([t])], seq=0, export_time=EXPORT)
    dec.decode(tpl, "192.0.2.1", 0, 1000.0)
    clock = 1000.0
    for wave in range(3):
        for i in range(200):  # a spray: one datagram from each of 200 addresses
            clock += 0.001
            dec.decode(b"\x00\x05" + b"\x00" * 30, f"10.{wave}.{i >> 8}.{i & 255}", 0, clock)
        clock += 1
        b = dec.decode(data, "192.0.2.1", 0, clock)
        # the real exporter was seen before this wave: with 200 newer ones it was forgotten and
        # lost its template (counted as a missing template), but it is decoded, not refused
        assert b.error is None and b.missing_template_sets == 1
        dec.decode(tpl, "192.0.2.1", 0, clock)
        assert len(dec.decode(data, "192.0.2.1", 0, clock)) == 1
    b = dec.decode(data, "198.51.100.9", 0, clock + 1)  # a brand-new exporter
    assert b.missing_template_sets == 1  # decoded (its template is not known yet), not refused
    assert dec.exporter_count() <= 64 and dec.evicted_exporters > 0
    stats = dec.stats()
    assert sum(s["datagrams"] for s in stats.values()) == 1 + 3 * (200 + 3) + 1


def test_all_exporters_templates_together_are_bounded() -> None:
    """Many addresses each sending their per-exporter maximum of wide templates: the fields of
    all templates together, each template counting 24 more (its own objects), stay under
    max_template_fields. Over it, the exporters seen least recently are forgotten (counted as
    evicted, their counters folded) for the one sending; only what that one cannot fit even
    alone is refused (template_limit). A withdrawal or an evicted exporter gives its share back."""
    fields = tuple((f"f{i}", 1 + i, 0, 4) for i in range(100))
    dec = Decoder(DecoderConfig(max_template_fields=10 * (100 + 24), max_exporters=8))
    for e in range(4):
        for tid in range(256, 260):  # 4 exporters x 4 templates x 100 fields = 1600 wanted
            t = IpfixTemplate(tid, fields, 0)
            dec.decode(ipfix_message([template_set([t])], seq=0, export_time=EXPORT), f"192.0.2.{e}", 0, 1.0 + e)
            assert dec.template_fields_counted <= 10 * (100 + 24)
    stats = dec.stats()
    assert dec.template_fields == sum(s["templates"] for s in stats.values()) * 100
    assert stats["192.0.2.3"]["templates"] == 4 and "192.0.2.0" not in stats and dec.evicted_exporters >= 1
    assert sum(s["errors"].get("template_limit", 0) for s in stats.values()) == 0
    # RFC 7011 8.1: withdrawing all of 192.0.2.3's templates frees 400 fields
    held = dec.template_fields
    dec.decode(ipfix_message([struct.pack("!HHHH", 2, 8, 2, 0)], seq=1, export_time=EXPORT), "192.0.2.3", 0, 9.0)
    assert dec.template_fields == held - 400
    # evicting exporters returns their fields
    for i in range(16):
        dec.decode(b"\x00\x05" + b"\x00" * 30, f"10.9.0.{i}", 0, 20.0 + i)
    assert dec.template_fields == sum(s["templates"] for s in dec.stats().values()) * 100
    # one exporter alone over the bound: what it cannot fit is refused and counted
    alone = Decoder(DecoderConfig(max_template_fields=10 * (100 + 24)))
    ts = [IpfixTemplate(tid, fields, 0) for tid in range(256, 268)]
    alone.decode(ipfix_message([template_set(ts)], seq=0, export_time=EXPORT), "192.0.2.9", 0, 1.0)
    assert alone.template_fields == 1000 and alone.stats()["192.0.2.9"]["errors"]["template_limit"] == 2


def test_one_field_template_flood_is_bounded_by_template_count_too() -> None:
    """A template costs memory of its own beside its fields (~290 bytes against ~12 a field,
    measured by RSS): one-field templates from many addresses were bounded by their fields alone,
    so the default 4M bound let them take ~1.2 GB. Each now counts as 1 + 24 fields."""
    dec = Decoder(DecoderConfig(max_template_fields=25 * 100, max_exporters=64, max_templates_per_exporter=1024))
    for e in range(40):
        ts = [IpfixTemplate(tid, (("f", 8, 0, 4),), 0) for tid in range(256, 266)]
        dec.decode(ipfix_message([template_set(ts)], seq=0, export_time=EXPORT), f"192.0.2.{e}", 0, 1.0 + e)
    stats = dec.stats()
    assert sum(s["templates"] for s in stats.values()) == dec.template_count == dec.template_fields <= 100
    assert dec.template_fields_counted <= 25 * 100
    # the addresses seen least recently gave way (as for the exporter table), none was refused
    assert dec.evicted_exporters + dec.exporter_count() == 40 and dec.exporter_count() <= 10
    assert sum(s["errors"].get("template_limit", 0) for s in stats.values()) == 0


@pytest.mark.parametrize("n", [0, 1, 3, 7, 15, 16, 17, 23])
def test_tiny_datagrams(n: int) -> None:
    dec = Decoder()
    for version in (5, 9, 10):
        check(dec, "192.0.2.2", struct.pack("!H", version)[: min(n, 2)] + b"\0" * max(0, n - 2))


def _sampler_options(n: int, first: int) -> tuple[bytes, bytes]:
    """An IPFIX options template (scope observationDomainId; selectorId 302, samplingPacketInterval
    305) and a message teaching `n` sampler ids' rates with it."""
    t = IpfixTemplate(300, (("domain", 149, 0, 4), ("sampler", 302, 0, 4), ("interval", 305, 0, 4)), 1)
    fields = b"".join(struct.pack("!HH", ie, ln) for _n, ie, _pen, ln in t.fields)
    tset = struct.pack("!HHHHH", 3, 10 + len(fields), 300, 3, 1) + fields
    recs = [{"domain": 0, "sampler": first + i, "interval": 10} for i in range(n)]
    return (ipfix_message([tset], seq=0, export_time=EXPORT),
            ipfix_message([data_set(t, recs)], seq=0, export_time=EXPORT))


def _teach(dec: Decoder, src: str, clock: float, ports: int) -> None:
    """One exporter at its per-exporter bounds of sampler rates (1024, in 8 datagrams) plus
    `ports` sequence streams (one exporting process per source port)."""
    for port in range(40000, 40000 + ports):
        dec.decode(ipfix_message([], seq=0, export_time=EXPORT), src, port, clock)
    for i in range(8):
        tset, data = _sampler_options(128, 128 * i)
        dec.decode(tset, src, 4739, clock)
        dec.decode(data, src, 4739, clock)


def test_exporter_state_estimate_follows_what_it_holds() -> None:
    """Decoder.state_bytes (flowscope_exporter_state_bytes, bounded by max_state_bytes) is an
    honest estimate: within a third of what the exporters' state really takes (tracemalloc), and
    it gives back what a withdrawal or an evicted exporter held."""
    import gc
    import tracemalloc

    dec = Decoder(DecoderConfig(default_sampling=0))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for e in range(30):
            _teach(dec, f"10.7.0.{e}", 1.0 + e, ports=20 + 5 * e)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.75 < dec.state_bytes / held < 1.33, (dec.state_bytes, held)
    one = dec.state_bytes
    # RFC 7011 8.1: withdrawing the options templates of a domain forgets what they taught
    dec.decode(ipfix_message([struct.pack("!HHHH", 3, 8, 300, 0)], seq=0, export_time=EXPORT), "10.7.0.0", 4739, 40.0)
    assert one - dec.state_bytes >= 1024 * 150
    evicting = Decoder(DecoderConfig(default_sampling=0, max_exporters=16))
    for e in range(16):
        _teach(evicting, f"10.7.0.{e}", 1.0 + e, ports=4)
    full = evicting.state_bytes
    evicting.decode(ipfix_message([], seq=0, export_time=EXPORT), "10.8.0.1", 0, 50.0)  # evicts 2
    assert evicting.evicted_exporters == 2 and evicting.state_bytes < full * 15 / 16


def test_exporter_state_of_many_exporters_is_bounded() -> None:
    """Each exporter's own bounds (1,024 sampler rates, 256 sequence streams...) times
    --max-exporters would be gigabytes: past max_state_bytes the exporters seen least recently
    are forgotten (counted, their counters folded) and never the one sending, so the state of all
    exporters together stays within the bound plus what one datagram can add."""
    budget = 2 * 1024 * 1024
    dec = Decoder(DecoderConfig(default_sampling=0, max_state_bytes=budget))
    clock = 1.0
    for e in range(60):                    # each about 240 kB: 60 want 14 MB
        clock += 1.0
        src = f"10.6.{e >> 8}.{e & 255}"
        _teach(dec, src, clock, ports=20)
        assert dec.state_bytes <= budget + 128 * 200 + 2560
        assert len(dec.exporter(src).sampler_rates) == 1024      # the sender keeps what it learned
    assert dec.exporter_count() < 15 and dec.evicted_exporters == 60 - dec.exporter_count()
    stats = dec.stats()
    sent = 60 * (20 + 16)
    assert sum(s["datagrams"] for s in stats.values()) == sent and stats[EVICTED]["datagrams"] > 0
    # a returning exporter is decoded as a new one, not refused
    tset, data = _sampler_options(1, 5000)
    dec.decode(tset, "10.6.0.0", 4739, clock + 1)
    assert len(dec.decode(data, "10.6.0.0", 4739, clock + 1).to_dicts()) == 0
    assert dec.exporter("10.6.0.0").sampler_rates == {(10, 0, 4739, 5000): 10}
