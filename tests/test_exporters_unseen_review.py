"""End-to-end: real exporters in configurations the other exporter tests do not use (review).

Same method as tests/test_exporters.py: the exporter reads a pcap the test wrote, inside a fresh
namespace; its export is captured and flowscope's decode is compared with tshark's and with the
traffic that was generated.

- nfdump with `nfpcapd -o fat`: its records carry the frames' MAC addresses, and nfreplay sends
  NetFlow v9's four MAC elements, IN_SRC_MAC (56), OUT_DST_MAC (57), IN_DST_MAC (80) and
  OUT_SRC_MAC (81), the frame's source in 56 and its destination in 57, the two it has no
  address for as zeros.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.support import exporters as E
from tests.support import pcapgen as G
from tests.test_exporters import (
    START,
    _flow_key,
    _generated_key,
    _skip_unless,
    capture_export,
    check_against_traffic,
    decode_capture,
)
from tests.test_exporters_more import vlan_pcap

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_nfdump_nfreplay_macs(workdir: Path, decoders_mod) -> None:
    """nfpcapd -o fat + nfreplay v9: every flow's SrcMac and DstMac are its frames' (a distinct
    pair per flow), not the zeros nfreplay sends in IN_DST_MAC (80) for the destination it
    keeps in OUT_DST_MAC (57); the elements themselves stay as they came (ie57, ie81)."""
    _skip_unless("nfpcapd", "nfreplay")
    generated = G.standard_flows()
    for i, g in enumerate(generated):
        g.src_mac, g.dst_mac = f"02:00:00:00:01:{i:02x}", f"02:00:00:00:02:{i:02x}"
    (workdir / E.PCAP_NAME).write_bytes(G.build_pcap(generated, start=START))
    cap, port = capture_export(workdir, lambda ns, port: E.run_nfreplay(ns, workdir, 9, port,
                                                                        nfpcapd_options=("-o", "fat")))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    problems += check_against_traffic(flows, generated)
    want = {_generated_key(g): (g.src_mac, g.dst_mac) for g in generated}
    for f in flows:
        k = _flow_key(f)
        if k in want and (f.get("SrcMac"), f.get("DstMac")) != want[k]:
            problems.append(f"{k}: (SrcMac, DstMac) {(f.get('SrcMac'), f.get('DstMac'))}, the frames' {want[k]}")
        if k in want and (f.get("ie57"), f.get("ie81")) != (want[k][1].replace(":", ""), "000000000000"):
            problems.append(f"{k}: ie57 {f.get('ie57')} ie81 {f.get('ie81')}, as nfreplay sent them")
    assert flows, "nfreplay sent no flow"
    assert not problems, "\n".join(problems[:20])


def _v9(fields: list[tuple[int, int]], record: bytes) -> bytes:
    """A NetFlow v9 datagram: template 256 with `fields`, then one data record."""
    tpl = struct.pack("!HH", 256, len(fields)) + b"".join(struct.pack("!HH", t, n) for t, n in fields)
    tset = struct.pack("!HH", 0, 4 + len(tpl)) + tpl
    dset = struct.pack("!HH", 256, 4 + len(record)) + record
    return struct.pack("!HHIIII", 9, 2, 1000, 1_700_000_000, 1, 0) + tset + dset


@pytest.mark.parametrize("order", [(56, 57, 80, 81), (80, 81, 56, 57), (57, 81, 56, 80)])
def test_v9_zero_mac_elements_beside_post_ones(order: tuple[int, ...], decoders_mod) -> None:
    """RFC 3954's IN_SRC_MAC/IN_DST_MAC (56/80) with OUT_SRC_MAC/OUT_DST_MAC (81/57) in one
    template, in any order: an ingress element with an address gives the MAC (the post one
    stays an element); one of all zeros gives none, and the post element's address is the MAC;
    both zero, the zeros as sent."""
    mac = {56: "02:00:00:00:00:56", 57: "02:00:00:00:00:57", 80: "02:00:00:00:00:80", 81: "02:00:00:00:00:81"}
    zero = "00:00:00:00:00:00"
    cases = [({}, (mac[56], mac[80])),                     # all four: the ingress ones
             ({80: zero}, (mac[56], mac[57])),             # nfreplay's: 80 unknown
             ({56: zero, 80: zero}, (mac[81], mac[57])),
             ({56: zero, 81: zero}, (zero, mac[80])),
             ({56: zero, 81: zero, 80: zero, 57: zero}, (zero, zero))]
    fields = [(8, 4), (12, 4), (2, 4), (1, 4)] + [(ie, 6) for ie in order]
    for values, want in cases:
        vals = {**mac, **values}
        rec = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!II", 1, 100)
        rec += b"".join(bytes.fromhex(vals[ie].replace(":", "")) for ie in order)
        dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
        (f,) = dec.decode(_v9(fields, rec), "192.0.2.1", 2055, 1_700_000_000.0).to_dicts()
        assert (f.get("SrcMac"), f.get("DstMac")) == want, (order, values, f)
        assert f.get("ie57") == vals[57].replace(":", "") and f.get("ie81") == vals[81].replace(":", ""), f


def test_nfdump_nfreplay_vlans(workdir: Path, decoders_mod) -> None:
    """nfpcapd -o fat + nfreplay v9 on 802.1Q-tagged frames: nfreplay sends the frame's tag in
    postVlanId (59) and vlanId (58) as 0; every flow's Vlan is its frames' tag (a distinct one
    per flow), and ie59 stays as it came."""
    _skip_unless("nfpcapd", "nfreplay")
    generated = G.standard_flows()
    vlans = [100 + i for i in range(len(generated))]
    (workdir / E.PCAP_NAME).write_bytes(vlan_pcap(generated, vlans))
    cap, port = capture_export(workdir, lambda ns, port: E.run_nfreplay(ns, workdir, 9, port,
                                                                        nfpcapd_options=("-o", "fat")))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port)
    problems += check_against_traffic(flows, generated)
    want = {_generated_key(g): vid for g, vid in zip(generated, vlans, strict=True)}
    for f in flows:
        k = _flow_key(f)
        if k in want and f.get("Vlan") != want[k]:
            problems.append(f"{k}: Vlan {f.get('Vlan')}, the frames' tag {want[k]} (ie59 {f.get('ie59')})")
        if k in want and f.get("ie59") != f"{want[k]:04x}":
            problems.append(f"{k}: ie59 {f.get('ie59')}, nfreplay sent {want[k]:04x}")
    assert flows, "nfreplay sent no flow"
    assert not problems, "\n".join(problems[:20])


def test_softflowd_biflow_vlans(workdir: Path, decoders_mod) -> None:
    """softflowd -v 10 -b -T vlan, split into one flow per direction: each direction's frames
    carry their own tag, and softflowd keeps a direction whose tag differs from its reverse's as
    a record of its own, all in the reverse counters, with vlanId 0 and the tag in postVlanId (59),
    its VLAN for the reverse direction. Every flow's Vlan is its frames' tag."""
    _skip_unless("softflowd")
    generated = G.standard_flows()
    vlans = [100 + i for i in range(len(generated))]
    (workdir / E.PCAP_NAME).write_bytes(vlan_pcap(generated, vlans))
    cap, port = capture_export(workdir, lambda ns, port: E.run_softflowd(ns, workdir, "10", port,
                                                                         extra=("-b", "-T", "vlan")))
    problems, flows = decode_capture(decoders_mod, cap, "cflow", port, split_biflows=True)
    problems += check_against_traffic(flows, generated)
    want = {_generated_key(g): vid for g, vid in zip(generated, vlans, strict=True)}
    for f in flows:
        k = _flow_key(f)
        if k in want and f.get("Vlan") != want[k]:
            problems.append(f"{k}: Vlan {f.get('Vlan')}, the frames' tag {want[k]} (ie59 {f.get('ie59')})")
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("version", [9, 10])
def test_post_vlan_elements_beside_ingress_ones(version: int, decoders_mod) -> None:
    """vlanId/dot1qVlanId (58/243) with postVlanId/postDot1qVlanId (59/254), in either order:
    an ingress element with a VID gives the Vlan; without one (absent, or VID 0: a priority tag
    only), the first post element with a VID does; the post elements stay as they came."""
    post = 59 if version == 9 else 254
    cases = [  # (template VLAN elements with their values, expected Vlan)
        ([(58, 0), (59, 300)], 300),            # nfreplay's
        ([(59, 300), (58, 0)], 300),
        ([(58, 7), (59, 300)], 7),
        ([(59, 300), (58, 7)], 7),
        ([(post, 300)], 300),                   # only the egress one
        ([(post, 0x2000 | 300)], 300),          # the PCP bits are no part of the VID
        ([(58, 0), (59, 0)], None),
        ([(58, 0), (243, 0), (59, 0), (254, 44)], 44),
        ([(58, 0), (243, 9), (254, 44)], 9),
    ]
    for vlans, want in cases:
        fields = [(8, 4), (12, 4), (2, 4), (1, 4)] + [(ie, 2) for ie, _ in vlans]
        rec = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!II", 1, 100)
        rec += b"".join(struct.pack("!H", v) for _, v in vlans)
        dec = decoders_mod.Decoder(decoders_mod.DecoderConfig(default_sampling=0))
        dgram = _v9(fields, rec) if version == 9 else _ipfix(fields, rec)
        (f,) = dec.decode(dgram, "192.0.2.1", 2055, 1_700_000_000.0).to_dicts()
        assert f.get("Vlan") == want, (vlans, f)
        for ie, v in vlans:
            if ie in (59, 254):
                assert f.get(f"ie{ie}") == f"{v:04x}", (vlans, f)


def _ipfix(fields: list[tuple[int, int]], record: bytes) -> bytes:
    """An IPFIX message: template 256 with `fields`, then one data record."""
    tpl = struct.pack("!HH", 256, len(fields)) + b"".join(struct.pack("!HH", t, n) for t, n in fields)
    tset = struct.pack("!HH", 2, 4 + len(tpl)) + tpl
    dset = struct.pack("!HH", 256, 4 + len(record)) + record
    body = tset + dset
    return struct.pack("!HHIII", 10, 16 + len(body), 1_700_000_000, 1, 0) + body
