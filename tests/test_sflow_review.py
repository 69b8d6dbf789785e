"""sFlow v5 review (third pass): datagrams built from the XDR layout (sflow.org/sflow_version_5.txt
and its extension documents), each test naming the rule it checks. Expected values come from the
bytes built here, never from the decoder's own output."""

from __future__ import annotations

import struct

import pytest

from tests.test_sflow import (
    MAC_A,
    MAC_B,
    MAC_C,
    MAC_D,
    eth,
    ipv4,
    ipv6,
    llc_snap,
    one_flow,
    raw_header,
    rec,
    sampled_ip,
    tcp,
    udp,
    wlan_data,
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


@pytest.mark.parametrize("ds", [0, 1, 2, 3])
def test_80211_a_msdu_is_read_from_its_first_subframe(decoders_mod, ds: int) -> None:
    """IEEE 802.11-2020 9.2.4.5.9 / 9.3.2.2: a QoS data frame whose QoS Control has the A-MSDU
    Present bit (bit 7) carries A-MSDU subframes, each a DA, SA and Length header before its
    LLC/SNAP MSDU; the MAC header's Address 3 is then the BSSID (Table 9-30), the subframe holds
    the frame's DA and SA. sflow_80211.txt names both the MAC frame (header_protocol 15) and a
    subframe alone (IEEE80211_AMSDU_Subframe, 17). The subframe header was read as the LLC
    header, so an aggregated frame (802.11n and later aggregate most traffic) gave no addresses,
    and the MACs were the BSSID's."""
    sa, da, bssid, ra, ta = MAC_A, MAC_B, MAC_C, MAC_D, bytes.fromhex("020000000003")
    # Table 9-30 with A-MSDU present: (addr1, addr2, addr3, addr4)
    addrs = {0: (da, sa, bssid, b""), 1: (bssid, sa, bssid, b""), 2: (da, bssid, bssid, b""),
             3: (ra, ta, bssid, bssid)}[ds]
    msdu = llc_snap(0x0800, ipv4("10.3.0.1", "10.3.0.2", 17, udp(67, 68)))
    sub = da + sa + struct.pack(">H", len(msdu)) + msdu
    hdr = wlan_data(ds, *addrs, qos=True)
    hdr = hdr[:-2] + b"\x85\x00"            # QoS Control: TID 5, A-MSDU Present
    f = one_flow(decoders_mod, [raw_header(hdr + sub, 300, proto=15)])
    assert (f.get("SrcMac"), f.get("DstMac")) == (sa.hex(":"), da.hex(":"))
    assert (f.get("Etype"), f.get("SrcAddr"), f.get("DstAddr"), f.get("SrcPort"), f.get("DstPort")) == \
        (0x0800, "10.3.0.1", "10.3.0.2", 67, 68)
    f = one_flow(decoders_mod, [raw_header(sub, 300, proto=17)])      # the subframe alone
    assert (f.get("SrcMac"), f.get("DstMac"), f.get("SrcAddr"), f.get("DstPort")) == \
        (sa.hex(":"), da.hex(":"), "10.3.0.1", 68)
    # cut inside the subframe header: the MAC header's own addresses stay, nothing more
    f = one_flow(decoders_mod, [raw_header(hdr + sub[:10], 300, proto=15)])
    assert "SrcAddr" not in f and "Etype" not in f
