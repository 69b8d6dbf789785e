"""sFlow v5 review findings: datagrams built from the XDR layout (sflow.org/sflow_version_5.txt and
its extension documents), each test naming what it checks against."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from tests.test_sflow import MAC_C, MAC_D, eth, geneve, ipv4, ipv6, one_flow, raw_header, tcp, udp, vxlan


@pytest.fixture(scope="module")
def dec_mod() -> Any:
    mod = pytest.importorskip("decoders", reason="decoders package not importable")
    if not hasattr(mod, "Decoder"):
        pytest.skip("decoders.Decoder missing: build with `python setup.py build_ext --inplace`")
    return mod


def test_vxlan_and_geneve_cut_before_the_inner_headers_keep_the_outer_packet(dec_mod) -> None:
    """As GRE and IP in IP do (inner_there): a sampled header cut before the tunnel payload's own
    headers keeps the outer packet the flow. Before, VXLAN and Geneve moved the outer header to
    Tunnel* at once and published a flow with no addresses (OVN's Geneve with its 8 bytes of
    options over an IPv6 underlay puts an inner IPv6 header past the 128-byte default snap)."""
    inner6 = eth(ipv6("fd00:10:244::5", "fd00:10:244::9", 6, tcp(1, 443, 2)), 0x86DD, dst=MAC_D, src=MAC_C)
    opts = struct.pack(">HBB", 0x0102, 0x80, 1) + b"\x00\x00\x00\x07"
    outer = eth(ipv6("fd00::2", "fd00::3", 17, udp(61000, 6081, geneve(0x123456, inner6, opts=opts))), 0x86DD)
    assert len(outer) > 128
    f = one_flow(dec_mod, [raw_header(outer[:128], len(outer) + 4)])
    assert (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("SrcPort"), f.get("DstPort")) == \
        ("fd00::2", "fd00::3", 17, 61000, 6081)
    assert "TunnelType" not in f and f["SrcMac"] != "02:00:00:00:00:01"
    inner4 = eth(ipv4("10.244.1.5", "10.244.2.9", 6, tcp(33000, 443, 0x18)), 0x0800, dst=MAC_D, src=MAC_C)
    full = eth(ipv4("172.18.0.2", "172.18.0.3", 17, udp(51000, 4789, vxlan(4097, inner4))), 0x0800)
    for cut in (14 + 20 + 8 + 8 + 6, 14 + 20 + 8 + 8 + 14 + 10):    # in the inner Ethernet / IPv4 header
        f = one_flow(dec_mod, [raw_header(full[:cut], 200)])
        assert (f.get("SrcAddr"), f.get("DstAddr"), f.get("Proto"), f.get("DstPort"), f.get("Etype")) == \
            ("172.18.0.2", "172.18.0.3", 17, 4789, 0x0800), cut
        assert "TunnelType" not in f, cut
    # whole inner headers (ports cut): the inner packet is the flow, as before
    f = one_flow(dec_mod, [raw_header(full[:14 + 20 + 8 + 8 + 14 + 20], 200)])
    assert (f["SrcAddr"], f["TunnelType"], f["TunnelId"]) == ("10.244.1.5", "vxlan", 4097)
    inner_arp = eth(b"\0\x01\x08\x00\x06\x04\0\x01" + b"\0" * 20, 0x0806, dst=b"\xff" * 6, src=MAC_C)
    f = one_flow(dec_mod, [raw_header(eth(ipv4("172.18.0.2", "172.18.0.3", 17,
                                                     udp(1, 6081, geneve(5, inner_arp))), 0x0800), 200)])
    assert (f["TunnelType"], f["Etype"], "SrcAddr" in f) == ("geneve", 0x0806, False)   # non-IP inner frame
