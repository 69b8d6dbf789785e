"""sFlow v5 review findings: datagrams built from the XDR layout (sflow.org/sflow_version_5.txt and
its extension documents), each test naming what it checks against."""

from __future__ import annotations

import ipaddress
import logging
import struct

import pytest

from tests.test_sflow import (
    MAC_C,
    MAC_D,
    RECV,
    counter_sample,
    datagram,
    discarded_packet,
    eth,
    flow_sample,
    flow_sample_expanded,
    generic_if,
    geneve,
    ipv4,
    ipv6,
    one_flow,
    raw_header,
    rec,
    sequence_run,
    tcp,
    udp,
    vxlan,
)


def test_vxlan_and_geneve_cut_before_the_inner_headers_keep_the_outer_packet(decoders_mod) -> None:
    """As GRE and IP in IP do (inner_there): a sampled header cut before the tunnel payload's own
    headers keeps the outer packet the flow. Before, VXLAN and Geneve moved the outer header to
    Tunnel* at once and published a flow with no addresses (OVN's Geneve with its 8 bytes of
    options over an IPv6 underlay puts an inner IPv6 header past the 128-byte default snap)."""
    inner6 = eth(ipv6("fd00:10:244::5", "fd00:10:244::9", 6, tcp(1, 443, 2)), 0x86DD, dst=MAC_D, src=MAC_C)
    opts = struct.pack(">HBB", 0x0102, 0x80, 1) + b"\x00\x00\x00\x07"
    outer = eth(ipv6("fd00::2", "fd00::3", 17, udp(61000, 6081, geneve(0x123456, inner6, opts=opts))), 0x86DD)
    assert len(outer) > 128
    f = one_flow(decoders_mod, [raw_header(outer[:128], len(outer) + 4)])
    assert (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("SrcPort"), f.get("DstPort")) == \
        ("fd00::2", "fd00::3", 17, 61000, 6081)
    assert "TunnelType" not in f and f["SrcMac"] != "02:00:00:00:00:01"
    inner4 = eth(ipv4("10.244.1.5", "10.244.2.9", 6, tcp(33000, 443, 0x18)), 0x0800, dst=MAC_D, src=MAC_C)
    full = eth(ipv4("172.18.0.2", "172.18.0.3", 17, udp(51000, 4789, vxlan(4097, inner4))), 0x0800)
    for cut in (14 + 20 + 8 + 8 + 6, 14 + 20 + 8 + 8 + 14 + 10):    # in the inner Ethernet / IPv4 header
        f = one_flow(decoders_mod, [raw_header(full[:cut], 200)])
        assert (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("DstPort"), f.get("Etype")) == \
            ("172.18.0.2", "172.18.0.3", 17, 4789, 0x0800), cut
        assert "TunnelType" not in f, cut
    # whole inner headers (ports cut): the inner packet is the flow, as before
    f = one_flow(decoders_mod, [raw_header(full[:14 + 20 + 8 + 8 + 14 + 20], 200)])
    assert (f["SrcAddr"], f["TunnelType"], f["TunnelId"]) == ("10.244.1.5", "vxlan", 4097)
    inner_arp = eth(b"\0\x01\x08\x00\x06\x04\0\x01" + b"\0" * 20, 0x0806, dst=b"\xff" * 6, src=MAC_C)
    f = one_flow(decoders_mod, [raw_header(eth(ipv4("172.18.0.2", "172.18.0.3", 17,
                                                     udp(1, 6081, geneve(5, inner_arp))), 0x0800), 200)])
    assert (f["TunnelType"], f["Etype"], "SrcAddr" in f) == ("geneve", 0x0806, False)   # non-IP inner frame


def test_a_late_datagram_does_not_restart_the_drops_counter(decoders_mod) -> None:
    """The flow samples' drops counter is cumulative per data source (sflow_version_5.txt: "total
    number of drops detected since the agent was last reset"). A datagram reordered on the path
    (behind its stream's sequence, which the sequence check takes as late, not as a restart)
    carries an older, smaller value: that is no agent restart. Before, its whole cumulative value
    was counted again as new drops (here 5 + 103 + 7 = 115 for 10 drops)."""
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    dec = decoders_mod.Decoder()

    def send(seq: int, drops: int, uptime: int) -> int:
        b = dec.decode(datagram([flow_sample([raw_header(pkt, 60)], src=(0, 3), drops=drops)], seq=seq,
                                uptime=uptime), "192.0.2.1", 6343, RECV)
        assert b.error is None, b.error
        p = dec.stats(RECV)["192.0.2.1"]["protocols"]["sflow5"]
        return p["sample_drops"]

    assert send(1, 100, 100_010_000) == 0   # the baseline
    assert send(3, 105, 100_012_000) == 5
    assert send(2, 103, 100_011_000) == 5   # late: older than what 3 said
    assert send(2, 103, 100_011_000) == 5   # and a copy of it
    assert send(4, 110, 100_013_000) == 10
    p = dec.stats(RECV)["192.0.2.1"]["protocols"]["sflow5"]
    assert (p["sequence_lost"], p["sequence_resets"]) == (0, 0)
    # A real agent restart (uptime and sequence back) still counts the new value whole.
    assert send(1, 4, 500) == 14
    assert send(2, 6, 1_500) == 16


# --------------------------------------------------------------------------------------------
# Corners an audit against sflow_version_5.txt found right but untested (helper 4): each layout
# is built here from the RFCs' and the spec's structures, the expected values are those bytes.


def ipv4_with_options(src: str, dst: str, proto: int, payload: bytes, options: bytes) -> bytes:
    """An IPv4 header whose IHL counts `options` (a multiple of 4 bytes, RFC 791 3.1)."""
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload), 1, 0, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + options + payload


def test_ipv4_options_are_stepped_over_to_the_transport_header(decoders_mod) -> None:
    """RFC 791: the transport header starts IHL * 4 bytes in, not 20 (router alert, record route,
    a security option). An IHL that puts the options past the sampled header's end keeps the
    addresses and protocol without ports; an IHL below 5 is no IPv4 header."""
    opts = b"\x94\x04\x00\x00" + b"\x07\x27\x04" + b"\x00" * 33        # router alert + record route (9 slots)
    pkt = eth(ipv4_with_options("10.1.0.1", "10.1.0.2", 6, tcp(40001, 443, 0x02), opts), 0x0800)
    f = one_flow(decoders_mod, [raw_header(pkt, 120)])
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"], f["Flags"]) == \
        ("10.1.0.1", "10.1.0.2", 6, 40001, 443, ["SYN"])
    f = one_flow(decoders_mod, [raw_header(pkt[:14 + 20 + 30], 120)])     # cut inside the options
    assert (f["SrcAddr"], f["Proto"], "SrcPort" in f) == ("10.1.0.1", 6, False)
    bad = bytearray(eth(ipv4("10.1.0.1", "10.1.0.2", 17, udp(1, 2)), 0x0800))
    bad[14] = 0x44                                                         # IHL 4: 16 bytes
    f = one_flow(decoders_mod, [raw_header(bytes(bad), 60)])
    assert "SrcAddr" not in f and "Proto" not in f and f["Etype"] == 0x0800


def test_ipv6_routing_and_authentication_headers(decoders_mod) -> None:
    """RFC 8200 4.4 routing header (length in 8-byte units after the first 8) and RFC 4302 AH
    (Payload Len in 4-byte units, minus 2): both walked to the TCP header behind them."""
    routing = struct.pack(">BBBB", 51, 2, 0, 1) + b"\0" * 4 + ipaddress.IPv6Address("2001:db8::99").packed
    ah = struct.pack(">BBH", 6, 4, 0) + struct.pack(">II", 0x1000, 7) + b"\xaa" * 12   # (4 + 2) * 4 = 24 bytes
    pkt = eth(ipv6("2001:db8::1", "2001:db8::2", 43, routing + ah + tcp(40002, 22, 0x10)), 0x86DD)
    f = one_flow(decoders_mod, [raw_header(pkt, 200)])
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"], f["Flags"]) == \
        ("2001:db8::1", "2001:db8::2", 6, 40002, 22, ["ACK"])


def test_counter_sample_source_ids_compact_and_expanded(decoders_mod) -> None:
    """sflow_version_5.txt: a counters_sample's source_id is sflow_data_source (type in the top 8
    bits, index in the low 24); counters_sample_expanded's is sflow_data_source_expanded, two
    words of their own (an index beyond 24 bits, type 3 a logical entity as hsflowd's
    containers)."""
    from tests.test_sflow import counter_sample, generic_if

    g, _ = generic_if(0x01000005)
    b = decoders_mod.Decoder().decode(datagram([counter_sample([g], seq=9, src=(3, 0x01000005), expanded=True),
                                                counter_sample([g], seq=10, src=(2, 0xABCDEF))]),
                                      "192.0.2.1", 6343, RECV)
    assert b.error is None
    assert [(c["SequenceNum"], c["SourceIdType"], c["SourceIdIndex"], c["IfIndex"]) for c in b.counters] == \
        [(9, 3, 0x01000005, 0x01000005), (10, 2, 0xABCDEF, 0x01000005)]


def test_a_datagram_with_no_samples(decoders_mod) -> None:
    """A datagram whose header counts 0 samples (an agent with nothing sampled in its interval)
    is no error and no flow, and its sequence number counts: the stream goes on through it, with
    nothing lost."""
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    dec = decoders_mod.Decoder()
    for seq, samples in ((1, [flow_sample([raw_header(pkt, 60)])]), (2, []), (3, [flow_sample([raw_header(pkt, 60)])])):
        b = dec.decode(datagram(samples, seq=seq, uptime=1000 * seq), "192.0.2.1", 6343, RECV)
        assert b.error is None and len(b) == len(samples) and b.sequence == seq
    p = dec.stats(RECV + 5)["192.0.2.1"]["protocols"]["sflow5"]
    assert (p["datagrams"], p["flows"], p["errors"], p["sequence_lost"]) == (3, 2, {}, 0)


def test_samples_of_formats_not_decoded_are_skipped_and_counted(decoders_mod) -> None:
    """sflow_version_5.txt lets an agent send sample formats of its own enterprise (Host sFlow's
    rtmetric and rtflow are enterprise 4300 formats 1002 and 1003) and a receiver skip them by
    their length: the samples around them decode, and the skipped ones are counted per exporter
    (samples_skipped, flowscope_samples_skipped_total), not passed over silently and not errors.
    Counter samples left undecoded are counter_samples_ignored, not these."""
    from collector.metrics import ExporterLabels, decoder_series
    from tests.test_sflow import counter_sample, discarded_packet, generic_if, rec, xdr_opaque

    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    rtmetric = rec(1002, xdr_opaque(b"datasource") + struct.pack(">I", 0), ent=4300)
    unknown_std = rec(9, b"\0" * 12)
    dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(keep_counters=False))
    b = dec.decode(datagram([flow_sample([raw_header(pkt, 60)]), rtmetric, counter_sample([generic_if(3)[0]]),
                             unknown_std, discarded_packet([raw_header(pkt, 60)]), flow_sample([raw_header(pkt, 61)])]),
                   "192.0.2.1", 6343, RECV)
    assert b.error is None and len(b) == 3 and [f.get("Bytes") for f in b.to_dicts()] == [60, None, 61]
    p = dec.stats()["192.0.2.1"]["protocols"]["sflow5"]
    assert (p["samples_skipped"], p["counter_samples_ignored"], p["errors"]) == (2, 1, {})
    series = decoder_series(dec.series_stats(), ExporterLabels(10))
    assert series["flowscope_samples_skipped"] == {("192.0.2.1", "sflow5"): 2}


def test_skipped_sample_formats_are_logged_per_exporter(decoders_mod, monkeypatch, caplog) -> None:
    """A skipped sample's format is named in the log (enterprise:format, so that Host sFlow's
    rtmetric 4300:1002 is told from an unknown standard format 0:9), at INFO (not an error),
    through the decoders' rate-limited log: once per exporter every 10 s, the datagrams between
    counted as suppressed, each exporter on its own."""
    import logging
    import types

    import decoders._core as core

    from tests.test_sflow import rec, xdr_opaque

    clock = [1000.0]
    monkeypatch.setattr(core, "time", types.SimpleNamespace(monotonic=lambda: clock[0], time=lambda: RECV))
    caplog.set_level(logging.INFO, logger="flowscope.decoders")
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    rtmetric = rec(1002, xdr_opaque(b"datasource") + struct.pack(">I", 0), ent=4300)
    rtflow = rec(1003, b"\0" * 8, ent=4300)
    unknown_std = rec(9, b"\0" * 12)
    data = datagram([rtmetric, flow_sample([raw_header(pkt, 60)]), unknown_std, rtmetric, rtflow])
    dec = decoders_mod.Decoder()

    def logged() -> list[tuple[str, str, str]]:
        out = [(r.exporter, r.levelname, r.getMessage()) for r in caplog.records if getattr(r, "reason", None) == "samples_skipped"]
        caplog.clear()
        return out

    assert dec.decode(data, "192.0.2.1", 6343, RECV).error is None
    [(exporter, level, msg)] = logged()
    assert (exporter, level) == ("192.0.2.1", "INFO")
    assert msg.endswith("4 sample(s) skipped by length, of a format flowscope does not decode "
                        "(enterprise:format): 4300:1002, 0:9, 4300:1003"), msg
    dec.decode(data, "192.0.2.1", 6343, RECV)           # the same exporter within 10 s: suppressed
    clock[0] += 5
    dec.decode(data, "192.0.2.1", 6343, RECV)
    assert logged() == []
    dec.decode(datagram([rtflow]), "192.0.2.2", 6343, RECV)    # another exporter: its own line
    assert [(e, m.rsplit(": ", 1)[1]) for e, _, m in logged()] == [("192.0.2.2", "4300:1003")]
    clock[0] += 6                                        # 11 s on: logged again, saying what it held back
    dec.decode(data, "192.0.2.1", 6343, RECV)
    [(exporter, _, msg)] = logged()
    assert exporter == "192.0.2.1" and msg.endswith("4300:1003 (2 similar messages suppressed)"), msg
    assert dec.stats()["192.0.2.1"]["protocols"]["sflow5"]["samples_skipped"] == 16


def test_extended_gateway_as_path_of_several_segments(decoders_mod) -> None:
    """extended_gateway's dst_as_path<> is a list of as_path_type unions (type AS_SET 1 or
    AS_SEQUENCE 2, then a counted array of ASes), followed by communities<> and localpref: each
    segment is stepped over by its own count, and the destination AS is the origin, the last AS
    of the last segment. A local route (no segments) and an empty last segment have none; the
    source AS is src_as whatever the path."""
    from tests.test_sflow import rec

    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)

    def gateway(segments: list[tuple[int, list[int]]]) -> bytes:
        body = struct.pack(">I4sIIII", 1, bytes([192, 0, 2, 1]), 65000, 64999, 64998, len(segments))
        for kind, ases in segments:
            body += struct.pack(f">II{len(ases)}I", kind, len(ases), *ases)
        return rec(1003, body + struct.pack(">III", 2, 0xFDE80001, 0xFDE80002) + struct.pack(">I", 100))

    for segments, dst_as in (([(2, [64500, 64501]), (1, [64510, 64511, 64512])], 64512),
                             ([(1, [64510]), (2, [64500, 64501, 64502, 64503])], 64503),
                             ([], None), ([(2, [64500]), (2, [])], None)):
        f = one_flow(decoders_mod, [raw_header(pkt, 60), gateway(segments)])
        assert (f["SrcAS"], f.get("DstAS"), f["NextHop"]) == (64999, dst_as, "192.0.2.1"), segments
    # a segment count the record cannot hold is malformed, not read past
    short = bytearray(gateway([(2, [64500, 64501])]))
    struct.pack_into(">I", short, 8 + 8 + 12, 3)              # dst_as_path<> count: 3, 1 sent
    b = decoders_mod.Decoder().decode(datagram([flow_sample([raw_header(pkt, 60), bytes(short)])]),
                                      "192.0.2.1", 6343, RECV)
    assert b.error is not None and b.error[0] == "bad_length" and len(b) == 0


def test_extended_records_with_no_netobserv_field_are_kept_whole(decoders_mod) -> None:
    """extended_user (1004), extended_url (1005), extended_mpls (1006), extended_nat (1007),
    extended_mpls_tunnel (1008) and extended_vlantunnel (1012) have no field in NetObserv's format:
    each is kept as its ie<format> extra, the record's bytes as sent, beside the flow its sampled
    header gives (their strings and label stacks not mistaken for other records). (1012's
    outermost tag also fills Vlan when nothing else gives one: the test after this one.)"""
    from tests.test_sflow import rec, xdr_opaque

    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 80, 0x18)), 0x0800)
    bodies = {
        1004: struct.pack(">I", 106) + xdr_opaque(b"alice") + struct.pack(">I", 106) + xdr_opaque(b"bob"),
        1005: struct.pack(">I", 2) + xdr_opaque(b"/index.html") + xdr_opaque(b"example.com"),
        1006: struct.pack(">I4s", 1, bytes([10, 0, 0, 254])) + struct.pack(">II", 1, 16001 << 12 | 0x1FF)
        + struct.pack(">III", 2, 16002 << 12 | 0x40, 16003 << 12 | 0x1FF),
        1007: struct.pack(">I4sI4s", 1, bytes([203, 0, 113, 5]), 1, bytes([10, 0, 0, 2])),
        1008: xdr_opaque(b"lsp-1") + struct.pack(">II", 7, 3),
        1012: struct.pack(">III", 2, 0x88A80064, 0x810000C8),
    }
    f = one_flow(decoders_mod, [raw_header(pkt, 100)] + [rec(fmt, body) for fmt, body in bodies.items()])
    assert (f["SrcAddr"], f["DstAddr"], f["SrcPort"], f["DstPort"], f["Bytes"]) == ("10.0.0.1", "10.0.0.2", 40000, 80, 100)
    for fmt, body in bodies.items():
        assert f[f"ie{fmt}"] == body.hex(), fmt


def test_extended_vlantunnel_gives_the_vlan_when_extended_switch_does_not(decoders_mod) -> None:
    """extended_vlantunnel (1012): stack<> of the 802.1Q tags stripped before the sampled header,
    each TPID << 16 | TCI, outermost first (sflow_version_5.txt). The spec has extended_switch
    (1001) always reported beside it; when the sampled frame has no tag of its own and no
    extended_switch gives a VLAN (absent, or src_vlan 0), Vlan is the stack's outermost VID
    (VID 0 is a priority tag: the next one), whatever the records' order, ahead of a tunnelled
    inner frame's tag. The stack stays its ie1012 extra. A count the record cannot hold is
    bad_length."""
    from tests.test_sflow import rec

    def stack(*tags: tuple[int, int]) -> bytes:
        return rec(1012, struct.pack(">I", len(tags)) + b"".join(struct.pack(">HH", t, tci) for t, tci in tags))

    def switch(src_vlan: int) -> bytes:
        return rec(1001, struct.pack(">IIII", src_vlan, 0, src_vlan, 0))

    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 80, 0x18)), 0x0800)
    qinq = stack((0x88A8, 100), (0x8100, 200))
    tagged = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 80, 0x18)), 0x0800, tags=((0x8100, 42),))
    inner = eth(ipv4("10.244.0.5", "10.244.1.7", 6, tcp(1, 2, 0x10)), 0x0800, dst=MAC_D, src=MAC_C, tags=((0x8100, 55),))
    tunnelled = eth(ipv4("172.18.0.2", "172.18.0.3", 17, udp(50000, 4789, vxlan(9, inner))), 0x0800)
    cases = [
        ([raw_header(pkt, 100), qinq], 100),
        ([qinq, raw_header(pkt, 100)], 100),
        ([raw_header(pkt, 100), stack((0x8100, 0x2000), (0x8100, 300))], 300),   # PCP 1, VID 0 first
        ([raw_header(pkt, 100), stack((0x8100, 0x2000))], None),
        ([raw_header(pkt, 100), rec(1012, struct.pack(">I", 0))], None),
        ([raw_header(pkt, 100), qinq, switch(7)], 7),
        ([raw_header(pkt, 100), switch(7), qinq], 7),
        ([raw_header(pkt, 100), switch(0), qinq], 100),
        ([raw_header(tagged, 100), qinq], 42),
        ([qinq, raw_header(tagged, 100)], 42),
        ([raw_header(tunnelled, 150), qinq], 100),
        ([raw_header(tunnelled, 150)], 55),
    ]
    for records, vlan in cases:
        f = one_flow(decoders_mod, records)
        assert f.get("Vlan") == vlan, (records, f.get("Vlan"))
    assert one_flow(decoders_mod, [raw_header(pkt, 100), qinq])["ie1012"] == qinq[8:].hex()
    short = bytearray(qinq)
    struct.pack_into(">I", short, 8, 3)                     # stack<> count 3, two tags sent
    b = decoders_mod.Decoder().decode(datagram([flow_sample([raw_header(pkt, 100), bytes(short)])]),
                                      "192.0.2.1", 6343, RECV)
    assert b.error is not None and b.error[0] == "bad_length" and len(b) == 0


def test_raw_ip_header_protocols_and_frame_length(decoders_mod) -> None:
    """sampled_header with header_protocol IPv4 (11) and IPv6 (12), built to sflow_version_5.txt:
    header<> starts at the IP header (no MACs), DSCP from the TOS / traffic class. Bytes is
    frame_length as sent, "Original length of packet before sampling", whatever `stripped` says
    (octets an agent adds to frame_length for encapsulations removed "must also be added to the
    stripped count": stripped describes header<>, it is not subtracted), for ETHERNET-ISO88023
    (1) too. An IP header whose version contradicts header_protocol is read by its version (as
    Wireshark reads a version-6 header labelled 11); an empty one keeps the declared EtherType.
    A sampled_ethernet record beside a raw IP header gives the MACs, not Bytes."""
    from tests.test_sflow import MAC_A, MAC_B, rec

    v4 = ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 443, 0x18), tos=0xB8)
    v6 = ipv6("2001:db8::1", "2001:db8::2", 17, udp(5353, 53), tclass=0xB8)
    keys = ("Etype", "SrcAddr", "DstAddr", "Proto", "SrcPort", "DstPort", "Dscp", "Bytes")
    v4_keys = (0x0800, "10.0.0.1", "10.0.0.2", 6, 40000, 443, 0xB8 >> 2)
    v6_keys = (0x86DD, "2001:db8::1", "2001:db8::2", 17, 5353, 53, 0xB8 >> 2)
    for header, proto, frame_len, stripped, want in (
            (v4, 11, 1518, 18, v4_keys + (1518,)),      # an Ethernet header and FCS stripped, counted
            (v4, 11, 1500, 0, v4_keys + (1500,)),
            (v6, 12, 1240, 0, v6_keys + (1240,)),
            (v6, 12, 1262, 22, v6_keys + (1262,)),
            (v6, 11, 1240, 4, v6_keys + (1240,)),        # labelled IPv4, an IPv6 header
            (v4, 12, 1500, 4, v4_keys + (1500,)),        # labelled IPv6, an IPv4 header
            (eth(v4, 0x0800), 1, 1522, 4, v4_keys + (1522,)),
            (eth(v4, 0x0800)[:36], 1, 1522, 1000, (0x0800, "10.0.0.1", "10.0.0.2", 6, None, None, 0xB8 >> 2, 1522))):
        f = one_flow(decoders_mod, [raw_header(header, frame_len, proto=proto, stripped=stripped)])
        assert tuple(f.get(k) for k in keys) == want, (proto, frame_len, stripped)
        assert ("SrcMac" in f) == (proto == 1)
    for proto, etype in ((11, 0x0800), (12, 0x86DD)):
        f = one_flow(decoders_mod, [raw_header(b"", 100, proto=proto)])
        assert (f.get("Etype"), f.get("Bytes"), "SrcAddr" in f) == (etype, 100, False)
    ethernet = rec(2, struct.pack(">I", 1518) + MAC_A + b"\0\0" + MAC_B + b"\0\0" + struct.pack(">I", 0x0800))
    for records in ([raw_header(v4, 1500, proto=11), ethernet], [ethernet, raw_header(v4, 1500, proto=11)]):
        f = one_flow(decoders_mod, records)
        assert (f["Bytes"], f["SrcMac"], f["DstMac"], f["SrcAddr"]) == (1500, MAC_A.hex(":"), MAC_B.hex(":"), "10.0.0.1")


def test_agent_address_type_unknown_names_the_udp_source(decoders_mod) -> None:
    """sflow_version_5.txt's `address` union: type 0 (UNKNOWN) carries no address bytes, so the
    sub-agent id follows the type at once. The agent is then the datagram's UDP source, for flow
    and counter samples alike (IPv4 and IPv6 sources), and its datagrams are still one sequence
    stream (a missing number counted lost)."""
    from tests.test_sflow import counter_sample, generic_if

    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    samples = flow_sample([raw_header(pkt, 60)]) + counter_sample([generic_if(3)[0]])
    dec = decoders_mod.Decoder()
    for source in ("192.0.2.44", "2001:db8::44"):
        for seq in (1, 2, 4):
            data = struct.pack(">II", 5, 0) + struct.pack(">IIII", 0, seq, 1000 * seq, 2) + samples
            b = dec.decode(data, source, 6343, RECV)
            assert b.error is None and len(b) == 1 and len(b.counters) == 1 and b.sequence == seq
            assert (b.to_dicts()[0]["AgentIP"], b.counters[0]["AgentIP"]) == (source, source)
        assert dec.stats(RECV + 5)[source]["protocols"]["sflow5"]["sequence_lost"] == 1


def _count(sample: bytes, at: int, n: int) -> bytes:
    """The sample with the record count at byte `at` of its body set to n (its length unchanged)."""
    b = bytearray(sample)
    struct.pack_into(">I", b, 8 + at, n)
    return bytes(b)


def test_a_sample_short_of_its_record_count_keeps_its_records(decoders_mod, caplog: pytest.LogCaptureFixture) -> None:
    """A flow, expanded flow, discarded-packet or counter sample whose record count is more than
    it holds, ending where a record would start: the same disagreement as a datagram short of its
    sample count (bad_count since 938fb8b), one level down. The records it holds are decoded and
    kept, the sample is counted bad_count (logged with that reason) and the samples after it in
    the datagram are read: the sample's length, not its count, says where the next one starts.
    Before, such a sample failed as bad_sample (its count times 8 bytes more than its length), the
    datagram with it, and every sample after it was lost. A record cut inside its sample stays a
    failed sample."""
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 443, 0x18)), 0x0800)
    hdr = raw_header(pkt, 1518)
    sw = rec(1001, struct.pack(">IIII", 300, 0, 301, 0))
    g, gvals = generic_if(4)
    after = flow_sample([raw_header(eth(ipv4("10.9.0.1", "10.9.0.2", 17, udp(53, 53)), 0x0800), 90)])
    # record count offsets in the sample bodies: compact flow 28, expanded flow 40, discarded 28,
    # counter 8 (compact) / 12 (expanded)
    short = [_count(flow_sample([hdr, sw]), 28, 3), _count(flow_sample_expanded([hdr, sw]), 40, 5),
             _count(discarded_packet([hdr, sw]), 28, 0x7FFFFFFF), _count(counter_sample([g]), 8, 2),
             _count(counter_sample([g], expanded=True), 12, 0xFFFFFFFF)]
    caplog.set_level(logging.INFO, logger="flowscope.decoders")
    dec = decoders_mod.Decoder()
    b = dec.decode(datagram(short + [after]), "192.0.2.1", 6343, RECV)
    assert b.error is None, b.error
    flows = b.to_dicts()
    assert len(flows) == 4
    for f in flows[:3]:     # the header's keys and frame length, extended switch's VLAN
        assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["DstPort"], f["Vlan"]) == \
            ("10.0.0.1", "10.0.0.2", 6, 40000, 443, 300)
    assert flows[0]["Bytes"] == flows[1]["Bytes"] == 1518 and flows[2]["PktDropBytes"] == 1518
    assert (flows[0]["Sampling"], flows[1]["Sampling"]) == (400, 512)
    assert flows[3]["SrcAddr"] == "10.9.0.1"            # the sample after them
    assert len(b.counters) == 2 and [c["Records"] for c in b.counters] == [[1], [1]]
    assert all(c[k] == v for c in b.counters for k, v in gvals.items())
    assert dec.stats()["192.0.2.1"]["errors"] == {"bad_count": 5}
    logged = [r for r in caplog.records if getattr(r, "exporter", None) == "192.0.2.1"]
    assert [getattr(r, "reason", None) for r in logged] == ["bad_count"]   # (rate-limited: once)
    # short by all its records: the sample header's own fields are still the flow's
    f = decoders_mod.Decoder().decode(datagram([_count(flow_sample([]), 28, 2)]), "192.0.2.1", 6343, RECV)
    assert f.error is None and [(x["Sampling"], x["InIf"], x["OutIf"]) for x in f.to_dicts()] == [(400, 5, 6)]
    # a record cut inside the sample (its header, or its body past the sample's end) still fails it,
    # the samples before it kept
    for cut in (4, 12):
        body = flow_sample([hdr])[8:] + sw[:cut]
        bad = struct.pack(">II", 1, len(body)) + body
        bad = _count(bad, 28, 2)
        b = decoders_mod.Decoder().decode(datagram([after, bad, after]), "192.0.2.1", 6343, RECV)
        assert b.error is not None and b.error[0] in ("bad_sample", "bad_length") and len(b) == 1, cut


def test_a_restart_numbered_past_the_old_run_is_a_restart_not_a_loss(decoders_mod) -> None:
    """sflow_version_5.txt numbers a sub-agent's datagrams one by one and reads the uptime at the
    send: within one run a datagram numbered after another is never sent before it. One numbered
    past the stream's latest whose uptime went back by more than the minute that tells a restart
    is the agent's new run, its first datagrams lost (or the old run a short one): a restart, as
    for one numbered behind. Before, the difference between the two runs' numbers was counted as
    lost (up to 2^20 of it) and no restart. An uptime that wrapped at 2^32 ms is no restart: the
    datagrams between are lost, as before."""
    def run(sends: list[tuple[int, int, float]]) -> tuple[int, int]:
        return sequence_run(decoders_mod, sends)

    # an agent up for about 17 minutes, a datagram a second; rebooted, 90 s into its new run
    old = [(i, 1_000_000 + 1000 * i, float(i)) for i in range(1, 101)]
    for first in (500, 1_000_000):          # the new run's first datagram heard
        new = [(j, 90_000 + 100 * (j - first), 300 + 0.1 * (j - first)) for j in range(first, first + 60)]
        assert run(old + new) == (0, 1), first
        assert run(old + new[:20] + new[21:]) == (1, 1), first     # a loss in the new run still counts
        # a datagram of the old run arriving late, just after the restart: old, nothing counted
        assert run(old + new[:3] + [(102, 1_102_000, 300.35)] + new[3:]) == (0, 1), first
    # the 32-bit uptime wrapped between two datagrams, two lost between them: a gap, no restart
    wrap = [(1, 0xFFFFF000, 0.0), (2, 0xFFFFF400, 1.0), (5, 0x400, 4.0), (6, 0x800, 5.0)]
    assert run(wrap) == (2, 0)
    # uptime back by less than the minute: read as before (a gap)
    assert run([(1, 200_000, 0.0), (2, 201_000, 1.0), (5, 150_000, 4.0), (6, 151_000, 5.0)]) == (2, 0)
