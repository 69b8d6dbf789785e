"""sFlow v5 values (second review pass): datagrams built from the XDR layout
(sflow.org/sflow_version_5.txt and its extension documents), each test naming the rule it
checks. Expected values come from the bytes built here, never from the decoder's own output."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tests.test_sflow import (
    MAC_C,
    MAC_D,
    datagram,
    eth,
    flow_sample,
    ipv4,
    one_flow,
    raw_header,
    tcp,
    udp,
)


def gre_routed(ptype: int, payload: bytes, hops: list[str], csum: bool = True) -> bytes:
    """RFC 1701 GRE with the Routing Present bit: checksum and offset (present when C or R is
    set), then the source route entries (address family 0x0800: IPv4 hops) up to a null SRE."""
    out = struct.pack(">HHHH", 0x4000 | (0x8000 if csum else 0), ptype, 0, 0)
    out += struct.pack(">HBB", 0x0800, 0, 4 * len(hops)) + b"".join(ipaddress.IPv4Address(a).packed for a in hops)
    return out + struct.pack(">HBB", 0, 0, 0) + payload


def test_gre_with_rfc1701_routing_keeps_the_outer_packet(decoders_mod) -> None:
    """RFC 1701's R bit puts source route entries between the GRE header and its payload, a
    layout RFC 2784 (2.3) lets a receiver that does not implement RFC 1701 refuse: the outer
    packet stays the flow. Read as an RFC 2784 header, the SREs were parsed as the NVGRE
    payload's Ethernet header (MACs and EtherType 0x0a00 from the hop addresses)."""
    inner = eth(ipv4("10.244.1.5", "10.244.2.9", 6, tcp(33000, 443, 0x18)), 0x0800, dst=MAC_D, src=MAC_C)
    for ptype, payload in ((0x6558, inner), (0x0800, inner[14:])):
        for csum in (True, False):
            outer = eth(ipv4("172.18.0.2", "172.18.0.3", 47,
                             gre_routed(ptype, payload, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], csum)), 0x0800)
            f = one_flow(decoders_mod, [raw_header(outer, 300)])
            assert (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("Etype"), f.get("SrcMac")) == \
                ("172.18.0.2", "172.18.0.3", 47, 0x0800, "0a:58:0a:80:00:05"), (ptype, csum)
            assert "TunnelType" not in f, (ptype, csum)


@pytest.mark.parametrize("base", [5000, 50_000_000])
def test_a_datagram_from_before_an_agent_restart_arriving_late(decoders_mod, base: int) -> None:
    """An agent restarts (uptime and sequence start over: a reset); a datagram it sent before,
    reordered on the path, arrives after the first ones of the new run. It is a late datagram:
    no loss, no second restart, and its drops counter, of the old run, is not counted again.
    Before, its sequence number opened a gap of thousands (or jumped: a restart), the next
    datagram of the new run was another restart, and flowscope_exporter_sample_drops_total took
    the old run's whole cumulative drops a second time. A datagram of the new run less than a
    second after the restart still opens a gap as any does."""
    dec = decoders_mod.Decoder()
    pkt = eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2)), 0x0800)
    t0 = 1_700_000_000.0

    def send(seq: int, uptime: int, drops: int, t: float) -> None:
        b = dec.decode(datagram([flow_sample([raw_header(pkt, 60)], drops=drops)], seq=seq, uptime=uptime),
                       "10.9.9.9", 50000, t)
        assert b.error is None

    def stats(now: float) -> tuple[int, int, int]:
        p = dec.stats(now)["10.9.9.9"]["protocols"]["sflow5"]
        return p["sequence_lost"], p["sequence_resets"], p["sample_drops"]

    for i in range(1, 101):                          # a day up; drops 10 a datagram
        send(base + i, 86_400_000 + 1000 * i, 10 * i, t0 + i)
    assert stats(t0 + 100) == (0, 0, 990)
    for i in range(1, 4):                            # restarted: 1 drop a datagram
        send(i, 500 + 100 * i, i, t0 + 101 + 0.1 * i)
    assert stats(t0 + 101.3) == (0, 1, 993)
    send(base + 101, 86_400_000 + 101_000, 1010, t0 + 101.35)   # late, from the old run
    for i in range(4, 8):
        send(i, 500 + 100 * i, i, t0 + 101 + 0.1 * i)
    assert stats(t0 + 200) == (0, 1, 997)
    send(10, 1500, 10, t0 + 101.8)                   # the new run's 8 and 9 lost
    assert stats(t0 + 200) == (2, 1, 1000)


def test_netflow5_datagram_from_before_a_restart_arriving_late(decoders_mod) -> None:
    """The same rule holds for every header with an uptime (NetFlow v5 here, v9 alike): the
    sequence check is shared. v5 counts flows: one record a datagram."""
    dec = decoders_mod.Decoder()
    t0 = 1_700_000_000.0
    rec5 = struct.pack(">4s4s4sHHIIIIHHBBBBHHBBH", bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes(4),
                       1, 2, 1, 60, 0, 0, 1000, 2000, 0, 0, 17, 0, 0, 0, 0, 0, 0)

    def send(seq: int, uptime: int, t: float) -> None:
        head = struct.pack(">HHIIIIBBH", 5, 1, uptime, int(t), 0, seq, 0, 0, 0)
        assert dec.decode(head + rec5, "10.9.9.8", 2055, t).error is None

    def stats() -> tuple[int, int]:
        p = dec.stats(t0 + 300)["10.9.9.8"]["protocols"]["netflow5"]
        return p["sequence_lost"], p["sequence_resets"]

    for i in range(100):
        send(7000 + i, 86_400_000 + 1000 * i, t0 + i)
    for i in range(3):
        send(i, 500 + 100 * i, t0 + 101 + 0.1 * i)
    send(7100, 86_400_000 + 100_000, t0 + 101.35)   # late, from the old run
    send(3, 800, t0 + 101.4)
    assert stats() == (0, 1)
