"""sFlow v5 values (second review pass): datagrams built from the XDR layout
(sflow.org/sflow_version_5.txt and its extension documents), each test naming the rule it
checks. Expected values come from the bytes built here, never from the decoder's own output."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest

from tests.test_sflow import (
    MAC_C,
    MAC_D,
    datagram,
    eth,
    ipv4,
    one_flow,
    raw_header,
    tcp,
)


@pytest.fixture(scope="module")
def dec_mod() -> Any:
    mod = pytest.importorskip("decoders", reason="decoders package not importable")
    if not hasattr(mod, "Decoder"):
        pytest.skip("decoders.Decoder missing: build with `python setup.py build_ext --inplace`")
    return mod


def gre_routed(ptype: int, payload: bytes, hops: list[str], csum: bool = True) -> bytes:
    """RFC 1701 GRE with the Routing Present bit: checksum and offset (present when C or R is
    set), then the source route entries (address family 0x0800: IPv4 hops) up to a null SRE."""
    out = struct.pack(">HHHH", 0x4000 | (0x8000 if csum else 0), ptype, 0, 0)
    out += struct.pack(">HBB", 0x0800, 0, 4 * len(hops)) + b"".join(ipaddress.IPv4Address(a).packed for a in hops)
    return out + struct.pack(">HBB", 0, 0, 0) + payload


def test_gre_with_rfc1701_routing_keeps_the_outer_packet(dec_mod) -> None:
    """RFC 1701's R bit puts source route entries between the GRE header and its payload, a
    layout RFC 2784 (2.3) lets a receiver that does not implement RFC 1701 refuse: the outer
    packet stays the flow. Read as an RFC 2784 header, the SREs were parsed as the NVGRE
    payload's Ethernet header (MACs and EtherType 0x0a00 from the hop addresses)."""
    inner = eth(ipv4("10.244.1.5", "10.244.2.9", 6, tcp(33000, 443, 0x18)), 0x0800, dst=MAC_D, src=MAC_C)
    for ptype, payload in ((0x6558, inner), (0x0800, inner[14:])):
        for csum in (True, False):
            outer = eth(ipv4("172.18.0.2", "172.18.0.3", 47,
                             gre_routed(ptype, payload, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], csum)), 0x0800)
            f = one_flow(dec_mod, [raw_header(outer, 300)])
            assert (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("Etype"), f.get("SrcMac")) == \
                ("172.18.0.2", "172.18.0.3", 47, 0x0800, "0a:58:0a:80:00:05"), (ptype, csum)
            assert "TunnelType" not in f, (ptype, csum)
