"""Review of the values the NetFlow v9 / IPFIX decoders publish: times, TCP flags and ICMP type
and code in combinations of elements the other decoder tests do not build. Expected values come
from the RFCs (RFC 7011 6.1.7-6.1.10 time types, RFC 7125 tcpControlBits, RFC 5476/5477 packet
reports) and from what each test built, never from the decoder.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from benchmarks.datagrams import VARLEN, IpfixTemplate, data_set, ipfix_message, template_set
from decoders import Decoder, DecoderConfig

EXPORT = 1_700_000_000
EXPORTER = "10.0.0.1"
NTP_EPOCH = 2_208_988_800   # seconds from 1900-01-01 (NTP era 0) to the Unix epoch


def _tpl(tid: int, *fields: tuple[str, int, int, int]) -> IpfixTemplate:
    return IpfixTemplate(tid, tuple(fields))


def _decode(tpl: IpfixTemplate, rows: list[dict[str, object]]) -> list[dict]:
    b = Decoder(DecoderConfig(default_sampling=0)).decode(
        ipfix_message([template_set([tpl]), data_set(tpl, rows)], seq=0, export_time=EXPORT), EXPORTER, 4739, EXPORT)
    assert b.error is None, b.error
    return b.to_dicts()


def _frame(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    """An Ethernet frame with an IPv4 or IPv6 header and `l4`."""
    addrs = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    if ":" in src:
        return bytes.fromhex("020000000002" "020000000001" "86dd") + \
            struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + addrs + l4
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0) + addrs
    return bytes.fromhex("020000000002" "020000000001" "0800") + ip + l4


@pytest.mark.parametrize("order", ["seconds first", "milliseconds first"])
def test_absolute_times_of_two_precisions_take_the_finest(order: str) -> None:
    """flowStartSeconds/flowEndSeconds (150/151, dateTimeSeconds) beside flowStart/EndMilliseconds
    (152/153) or the NTP-format Microseconds (154/155): the same instants at different
    precisions. Whatever their order in the template, the finest gives the time. Before, the
    later element overwrote the earlier, so a template ordered [150, 152, 153, 151] published the
    start to the millisecond and the end truncated to its second: an end 900 ms BEFORE the start."""
    start_ms, end_ms = EXPORT * 1000 - 2100, EXPORT * 1000 - 1100    # x.900 s and y.900 s
    secs = [("ss", 150, 0, 4), ("es", 151, 0, 4)]
    fine = [("sms", 152, 0, 8), ("ems", 153, 0, 8)]
    fields = secs + fine if order == "seconds first" else fine + secs
    # the mixed order of the docstring: start in seconds then ms, end in ms then seconds
    mixed = [("ss", 150, 0, 4), ("sms", 152, 0, 8), ("ems", 153, 0, 8), ("es", 151, 0, 4)]
    row = {"ss": start_ms // 1000, "es": end_ms // 1000, "sms": start_ms, "ems": end_ms}
    for t in (_tpl(300, ("src", 8, 0, 4), ("dst", 12, 0, 4), *fields),
              _tpl(301, ("src", 8, 0, 4), ("dst", 12, 0, 4), *mixed)):
        f = _decode(t, [dict(row, src="10.0.0.1", dst="10.0.0.2")])[0]
        assert (f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (start_ms, end_ms), t.template_id

    # dateTimeMicroseconds (RFC 7011 6.1.9: NTP seconds since 1900 and a binary fraction whose 11
    # lowest bits are not used) beside dateTimeSeconds: the microseconds one, in either order.
    def ntp(ms: int) -> int:
        return ((ms // 1000 + NTP_EPOCH) << 32) | (((ms % 1000) << 32) // 1000 + 1 & ~0x7FF)

    us = [("sus", 154, 0, 8), ("eus", 155, 0, 8)]
    t = _tpl(302, ("src", 8, 0, 4), *(us + secs if order == "seconds first" else secs + us))
    f = _decode(t, [{"src": "10.0.0.1", "ss": start_ms // 1000, "es": end_ms // 1000,
                     "sus": ntp(start_ms + 1), "eus": ntp(end_ms + 1)}])[0]
    assert (f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (start_ms, end_ms)
    assert not any(k.startswith("ie15") for k in f)   # the coarser elements are not left as extras


def test_an_absolute_time_of_zero_is_no_time() -> None:
    """An absolute time element of 0 (flowStart/EndSeconds 150/151, Milliseconds 152/153, pmacct's
    16-byte Microseconds 154/155, RFC 5103's reverse Milliseconds) is no time, as the NTP ones'
    all zeros already were (RFC 5905 6): exporters send 0 for a time they do not have. ulogd2's
    IPFIX output (a Debian package: conntrack events as flows) sends flowEndSeconds 0 on NEW
    events, and flowStartSeconds 0 without conntrack timestamps (nf_conntrack_timestamp=0, the
    default). They were published as 0 (a flow of January 1970, which consumers such as Loki
    refuse as too old) with an end before the start. The time is then left out, or given by the
    other rules (README: a duration, an observation time; a finer or coarser precision)."""
    t = _tpl(310, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("ss", 150, 0, 4), ("es", 151, 0, 4))
    start_s, end_s = EXPORT - 30, EXPORT - 2
    flows = _decode(t, [{"src": "10.0.0.1", "dst": "10.0.0.2", "ss": start_s, "es": 0},     # NEW
                        {"src": "10.0.0.3", "dst": "10.0.0.4", "ss": 0, "es": end_s},       # no timestamps
                        {"src": "10.0.0.5", "dst": "10.0.0.6", "ss": 0, "es": 0}])
    assert flows[0]["TimeFlowStartMs"] == start_s * 1000 and "TimeFlowEndMs" not in flows[0]
    assert flows[1]["TimeFlowEndMs"] == end_s * 1000 and "TimeFlowStartMs" not in flows[1]
    assert "TimeFlowStartMs" not in flows[2] and "TimeFlowEndMs" not in flows[2]

    # milliseconds with a duration (161): the missing end is the start plus the duration
    t = _tpl(311, ("src", 8, 0, 4), ("sms", 152, 0, 8), ("ems", 153, 0, 8), ("dur", 161, 0, 4))
    f = _decode(t, [{"src": "10.0.0.1", "sms": EXPORT * 1000 - 5000, "ems": 0, "dur": 1500}])[0]
    assert (f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (EXPORT * 1000 - 5000, EXPORT * 1000 - 3500)

    # an observation time (323, as NAT/firewall event loggers send) gives a missing start
    t = _tpl(312, ("src", 8, 0, 4), ("sms", 152, 0, 8), ("obs", 323, 0, 8))
    f = _decode(t, [{"src": "10.0.0.1", "sms": 0, "obs": EXPORT * 1000 - 700}])[0]
    assert f["TimeFlowStartMs"] == EXPORT * 1000 - 700

    # the coarser precision gives the time when the finer one is 0
    t = _tpl(313, ("src", 8, 0, 4), ("ss", 150, 0, 4), ("sms", 152, 0, 8), ("es", 151, 0, 4), ("ems", 153, 0, 8))
    f = _decode(t, [{"src": "10.0.0.1", "ss": start_s, "sms": 0, "es": end_s, "ems": 0}])[0]
    assert (f["TimeFlowStartMs"], f["TimeFlowEndMs"]) == (start_s * 1000, end_s * 1000)

    # pmacct's 16-byte flowStart/EndMicroseconds (64-bit seconds, 64-bit microseconds): all zeros
    t = _tpl(314, ("src", 8, 0, 4), ("sus", 154, 0, 16), ("eus", 155, 0, 16))
    f = _decode(t, [{"src": "10.0.0.1", "sus": struct.pack("!QQ", start_s, 250_000), "eus": bytes(16)}])[0]
    assert f["TimeFlowStartMs"] == start_s * 1000 + 250 and "TimeFlowEndMs" not in f

    # RFC 5103 reverse times (PEN 29305) of 0, split: the reverse flow keeps the record's times
    t = _tpl(315, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("bytes", 1, 0, 8), ("sms", 152, 0, 8), ("ems", 153, 0, 8),
             ("rbytes", 1, 29305, 8), ("rsms", 152, 29305, 8), ("rems", 153, 29305, 8))
    b = Decoder(DecoderConfig(default_sampling=0, split_biflows=True)).decode(
        ipfix_message([template_set([t]), data_set(t, [{"src": "10.0.0.1", "dst": "10.0.0.2", "bytes": 100,
                                                        "sms": EXPORT * 1000 - 9000, "ems": EXPORT * 1000 - 1000,
                                                        "rbytes": 50, "rsms": 0, "rems": 0}])],
                      seq=0, export_time=EXPORT), EXPORTER, 4739, EXPORT)
    assert b.error is None, b.error
    fwd, rev = b.to_dicts()
    assert rev["SrcAddr"] == "10.0.0.2" and rev["Bytes"] == 50
    assert (rev["TimeFlowStartMs"], rev["TimeFlowEndMs"]) == (EXPORT * 1000 - 9000, EXPORT * 1000 - 1000)


def test_sysuptime_times_without_a_system_init_time_across_the_counter_wrap() -> None:
    """IPFIX flowStart/EndSysUpTime (22/21) with no systemInitTimeMilliseconds (160) known: the
    flow ends at its export and lasts what the two values say (README). They are unsigned32
    milliseconds of a counter that wraps every 49.7 days (RFC 5102 / RFC 3954 sysUpTime): a
    start of 0xFFFFF000 and an end of 0x1000 are 8192 ms apart, counted across the wrap, as
    sysup_time reads them when 160 is known. Before, such a flow lasted 0 ms."""
    t = _tpl(303, ("src", 8, 0, 4), ("first", 22, 0, 4), ("last", 21, 0, 4))
    flows = _decode(t, [{"src": "10.0.0.1", "first": 0xFFFFF000, "last": 0x1000},
                        {"src": "10.0.0.2", "first": 1000, "last": 1500}])
    assert [(f["TimeFlowStartMs"] - EXPORT * 1000, f["TimeFlowEndMs"] - EXPORT * 1000) for f in flows] == [
        (-8192, 0), (-500, 0)]
    assert (flows[0]["ie22"], flows[0]["ie21"]) == ("fffff000", "00001000")  # kept as they came


def test_psamp_report_keeps_the_templates_own_tcp_flags_and_icmp_elements() -> None:
    """A PSAMP packet report (RFC 5476/5477) takes from its packet section only what the
    template's own elements lack (README "What decodes"). tcpControlBits (6) and the ICMP
    elements (32, 176-179) are the template's own too: before, the section's SYN replaced an
    exported PSH|ACK, and the section's echo request an exported icmpTypeCodeIPv4 3/3, because
    their presence bits are set only after the section is read."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 2, 0x50, 0x02, 0, 0, 0)     # SYN in the header
    icmp = bytes([8, 0, 0, 0, 0, 1, 0, 1])                                      # echo request
    # (ingressInterface makes each record longer than the builder's 4-byte set padding)
    t_tcp = _tpl(310, ("in", 10, 0, 4), ("flags", 6, 0, 2), ("frame", 315, 0, VARLEN))
    t_icmp = _tpl(311, ("in", 10, 0, 4), ("icmp", 32, 0, 2), ("frame", 315, 0, VARLEN))
    t_icmp_elems = _tpl(312, ("in", 10, 0, 4), ("type", 176, 0, 1), ("code", 177, 0, 1), ("frame", 315, 0, VARLEN))
    b = Decoder(DecoderConfig(default_sampling=0)).decode(
        ipfix_message([template_set([t_tcp, t_icmp, t_icmp_elems]),
                       data_set(t_tcp, [{"in": 1, "flags": 0x0118, "frame": _frame("10.0.0.1", "10.0.0.2", 6, tcp)}]),
                       data_set(t_icmp, [{"in": 1, "icmp": 0x0303, "frame": _frame("10.0.0.1", "10.0.0.2", 1, icmp)}]),
                       data_set(t_icmp_elems, [{"in": 1, "type": 11, "code": 0,
                                                "frame": _frame("10.0.0.1", "10.0.0.2", 1, icmp)}])],
                      seq=0, export_time=EXPORT), EXPORTER, 4739, EXPORT)
    assert b.error is None, b.error
    f_tcp, f_icmp, f_elems = b.to_dicts()
    # RFC 7125: the NS bit (0x100) has no NetObserv flag name; the low 8 bits are the flags
    assert (f_tcp["Proto"], f_tcp["TcpFlagsRaw"], sorted(f_tcp["Flags"])) == (6, 0x18, ["ACK", "PSH"])
    assert (f_tcp["SrcPort"], f_tcp["DstPort"]) == (40000, 443)        # what the template lacks
    assert (f_icmp["Proto"], f_icmp["IcmpType"], f_icmp["IcmpCode"]) == (1, 3, 3)
    assert (f_elems["IcmpType"], f_elems["IcmpCode"]) == (11, 0)
    for f in (f_icmp, f_elems):
        assert "SrcPort" not in f and f["Packets"] == 1


def test_psamp_report_without_flag_or_icmp_elements_still_reads_them_from_the_section() -> None:
    """The other side of the rule above: a template without tcpControlBits or ICMP elements gets
    them from the packet section (the fix must not lose them)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 2, 0x50, 0x12, 0, 0, 0)     # SYN|ACK
    icmp = bytes([0, 0, 0, 0, 0, 1, 0, 1])                                      # echo reply
    t = _tpl(313, ("in", 10, 0, 4), ("frame", 315, 0, VARLEN))
    flows = _decode(t, [{"in": 3, "frame": _frame("10.0.0.1", "10.0.0.2", 6, tcp)},
                        {"in": 3, "frame": _frame("10.0.0.2", "10.0.0.1", 1, icmp)}])
    assert (flows[0]["TcpFlagsRaw"], flows[0]["InIf"]) == (0x12, 3)
    assert (flows[1]["Proto"], flows[1]["IcmpType"], flows[1]["IcmpCode"]) == (1, 0, 0)


def test_psamp_report_icmp_elements_of_the_other_family_leave_the_sections_type() -> None:
    """The template's ICMP elements are its own only for packets of their family: a template
    carrying icmpTypeCodeIPv4 (32), 0 for anything but ICMPv4, and a section holding an ICMPv6
    echo request (Proto 58) publishes the section's type 128, not the IPv4 element's 0."""
    echo6 = bytes([128, 0, 0, 0, 0, 1, 0, 1])
    t = _tpl(314, ("in", 10, 0, 4), ("icmp", 32, 0, 2), ("frame", 315, 0, VARLEN))
    flows = _decode(t, [{"in": 1, "icmp": 0, "frame": _frame("fd00::1", "fd00::2", 58, echo6)},
                        {"in": 1, "icmp": 0x0b00, "frame": _frame("10.0.0.1", "10.0.0.2", 1, bytes(8))}])
    assert (flows[0]["Proto"], flows[0]["IcmpType"], flows[0]["IcmpCode"]) == (58, 128, 0)
    assert (flows[1]["Proto"], flows[1]["IcmpType"], flows[1]["IcmpCode"]) == (1, 11, 0)   # its own family


@pytest.mark.parametrize("fields,values,rate", [
    ((("interval", 34, 0, 8),), {"interval": 1 << 32}, 0xFFFFFFFF),                 # samplingInterval
    ((("interval", 34, 0, 8),), {"interval": 400}, 400),
    ((("pi", 305, 0, 8), ("ps", 306, 0, 8)), {"pi": 1, "ps": (1 << 64) - 1}, 0xFFFFFFFF),
    ((("pi", 305, 0, 4), ("ps", 306, 0, 4)), {"pi": 2, "ps": 5}, 3),                # (2 + 5) // 2
    ((("n", 309, 0, 8), ("N", 310, 0, 8)), {"n": 1, "N": (1 << 64) - 1}, 0xFFFFFFFF),
    ((("n", 309, 0, 8), ("N", 310, 0, 8)), {"n": 3, "N": (1 << 64) - 1}, 0xFFFFFFFF),
    ((("n", 309, 0, 4), ("N", 310, 0, 4)), {"n": 4, "N": 10}, 3),                   # 2.5 rounds half up
    ((("n", 309, 0, 4), ("N", 310, 0, 4)), {"n": 3, "N": 10}, 3),
])
def test_a_records_own_rate_past_32_bits_is_held_not_cut(fields: tuple, values: dict, rate: int) -> None:
    """RFC 5476/5477 rates from 8-byte elements: a rate past 2^32 - 1 is held there (cut to 32
    bits, 2^32 read as 0: no Sampling at all), and sums or roundings of 64-bit elements never
    overflow; ordinary rates as before."""
    t = _tpl(300, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("bytes", 1, 0, 4), *fields)
    f = _decode(t, [{"src": "10.0.0.1", "dst": "10.0.0.2", "bytes": 100, **values}])[0]
    assert f["Sampling"] == rate


def test_interface_zero_is_published_as_exported() -> None:
    """ingressInterface/egressInterface 0 (an exporter that does not know the port: OVS's tunnel
    ports, softflowd reading a capture) is the value sent, as tshark, goflow2 and pmacct show it;
    sFlow's 0 differs: its specification defines it as "not known" (README, InIf row)."""
    t = IpfixTemplate(300, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("in", 10, 0, 4), ("out", 14, 0, 4),
                            ("bytes", 1, 0, 8)))
    dec = Decoder()
    dec.decode(ipfix_message([template_set([t])], seq=0, export_time=EXPORT), EXPORTER)
    recs: list[dict[str, object]] = [{"src": "10.0.0.5", "dst": "10.0.0.6", "in": 0, "out": 7, "bytes": 60},
                                     {"src": "10.0.0.5", "dst": "10.0.0.6", "in": 3, "out": 0, "bytes": 60}]
    flows = dec.decode(ipfix_message([data_set(t, recs)], seq=0, export_time=EXPORT), EXPORTER).to_dicts()
    assert [(f.get("InIf"), f.get("OutIf")) for f in flows] == [(0, 7), (3, 0)]
