"""sFlow v5 review (third pass): datagrams built from the XDR layout (sflow.org/sflow_version_5.txt
and its extension documents), each test naming the rule it checks. Expected values come from the
bytes built here, never from the decoder's own output."""

from __future__ import annotations

from tests.test_sflow import (
    eth,
    ipv4,
    ipv6,
    one_flow,
    raw_header,
    rec,
    sampled_ip,
    tcp,
)


def test_sampled_ip_record_before_a_header_gives_the_same_flow_as_after(decoders_mod) -> None:
    """A sample's records have no order (sflow_version_5.txt: flow_record flow_records<>), and a
    sampled header describes the packet over a sampled IPv4/IPv6 record (README: "whatever the
    records' order"). With the header first the sampled IP record adds nothing to an IP packet
    the header described; with it last, its ports, TCP flags and ICMP fields stayed on the flow
    wherever the header was cut before its own: a UDP record's ports on a TCP header's flow, and
    ports or flags that the other order does not publish."""
    hdr6 = eth(ipv6("2001:db8::1", "2001:db8::2", 6, tcp(40000, 443, 0x12)), 0x86DD)
    cut = raw_header(hdr6[:14 + 40 + 2], 1500)            # cut inside the TCP source port
    ip6 = rec(4, sampled_ip(True, 1486, 6, "2001:db8::1", "2001:db8::2", 40000, 443, 0x12, 0))
    other = rec(3, sampled_ip(False, 60, 17, "10.1.1.1", "10.1.1.2", 53, 5353, 0, 0))
    hdr4 = raw_header(eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000, 80, 0x02))[:20 + 4], 0x0800), 64)
    icmp = rec(3, sampled_ip(False, 84, 1, "10.0.0.1", "10.0.0.2", 8, 0, 0, 0))
    gre = raw_header(eth(ipv4("10.0.0.1", "10.0.0.2", 47, b"\0\0\x88\xbe"), 0x0800), 64)   # ERSPAN: stays
    for ip_rec, header in ((ip6, cut), (other, cut), (other, hdr4), (icmp, gre)):
        after = one_flow(decoders_mod, [header, ip_rec])
        before = one_flow(decoders_mod, [ip_rec, header])
        assert before == after, (before, after)
    # and what they agree on is the header's packet
    f = one_flow(decoders_mod, [other, hdr4])
    assert (f["SrcAddr"], f["Proto"], f["SrcPort"], f["DstPort"], f["Bytes"]) == ("10.0.0.1", 6, 1000, 80, 64)
    assert "TcpFlagsRaw" not in f           # the header was cut before the flags
    f = one_flow(decoders_mod, [ip6, cut])
    assert (f["SrcAddr"], f["Proto"], f["Bytes"]) == ("2001:db8::1", 6, 1500)
    assert not {"SrcPort", "DstPort", "TcpFlagsRaw"} & set(f)
    f = one_flow(decoders_mod, [icmp, gre])
    assert f["Proto"] == 47 and "IcmpType" not in f
    # with no header (or one that described no IP packet) the sampled IP record still gives the keys
    f = one_flow(decoders_mod, [other])
    assert (f["SrcAddr"], f["Proto"], f["SrcPort"], f["DstPort"], f["Etype"]) == ("10.1.1.1", 17, 53, 5353, 0x0800)
    arp = raw_header(eth(b"\0\x01\x08\x00\x06\x04\0\x01" + b"\0" * 20, 0x0806), 64)
    assert one_flow(decoders_mod, [arp, other]) == one_flow(decoders_mod, [other, arp])
