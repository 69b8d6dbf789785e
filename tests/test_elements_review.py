"""Review of how the NetFlow v9 / IPFIX decoders map information elements to output fields, with
tshark (Wireshark's cflow dissector) as the independent reading of the same datagrams and the IANA
IPFIX registry / RFC 7011 / RFC 3954 as the meaning of each element.

Each test builds the datagrams itself (benchmarks/datagrams.py builders), decodes them with
flowscope's Decoder and, where tshark is installed, checks that tshark reads the built values in
the elements the test names, so the expected values come from the bytes built and the element
definitions, never from flowscope's output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set, v9_datagram
from decoders import Decoder, DecoderConfig
from tests.support.tshark import TSHARK, CflowReader, run_tshark
from tests.test_pcap import eth, ip4, pcap, udp

EXPORT = 1_700_000_000
EXPORTER = bytes([10, 0, 0, 1])


def _ipfix(t: IpfixTemplate, rows: list[dict[str, object]]) -> bytes:
    return ipfix_message([template_set([t]), data_set(t, rows)], seq=0, export_time=EXPORT)


def _v9(t: IpfixTemplate, rows: list[dict[str, object]]) -> bytes:
    return v9_datagram([template_set([t], version=9), data_set(t, rows)], seq=0, unix_secs=EXPORT,
                       uptime_ms=3_600_000, count=1 + len(rows))


def _flowscope(payload: bytes, port: int) -> list[dict]:
    b = Decoder(DecoderConfig(default_sampling=0)).decode(payload, "10.0.0.1", port, EXPORT)
    assert b.error is None, b.error
    return b.to_dicts()


def _tshark(tmp_path: Path, payload: bytes, port: int) -> list[dict]:
    """tshark's flat records (cflow.* fields) of the data sets of `payload`, sent to `port`."""
    f = tmp_path / f"d{port}.pcap"
    f.write_bytes(pcap([eth(ip4(udp(payload, 50000, port), src=EXPORTER))]))
    pkts = run_tshark(f, decode_as=[f"udp.port=={port},cflow"])
    return [r for p in CflowReader().packets(pkts) for _s, r in p.flow_records]


BASE = (("src", 8, 0, 4), ("dst", 12, 0, 4), ("proto", 4, 0, 1))
BASE_ROW = {"src": "10.1.1.1", "dst": "10.2.2.2", "proto": 17}


@pytest.mark.parametrize("version", [9, 10])
def test_physical_interfaces_give_the_interfaces_when_the_template_has_no_ingress_egress_interface(
        version: int, tmp_path: Path) -> None:
    """ingressPhysicalInterface (252) / egressPhysicalInterface (253) are the ifIndex of the
    physical interface the flow's packets came in on / went out of (IANA, unsigned32), the same
    ifTable numbering as ingressInterface / egressInterface (10/14). Exporters that send only the
    physical ones (the shared corpus' ipfix/akvorado_physicalinterfaces.pcap: 252 = 0x5000000b,
    253 = 0, no 10/14) had no InIf / OutIf: the interfaces were kept as ie252 / ie253 only.
    Without 10/14 they are InIf / OutIf (akvorado reads them the same way); beside 10/14 they stay
    elements (the logical interface is the one the README names)."""
    port = 2055 if version == 9 else 4739
    build = _v9 if version == 9 else _ipfix
    phys = IpfixTemplate(300, BASE + (("pin", 252, 0, 4), ("pout", 253, 0, 2)))
    rows = [dict(BASE_ROW, pin=0x5000000B, pout=7)]
    (f,) = _flowscope(build(phys, rows), port)
    assert (f.get("InIf"), f.get("OutIf")) == (0x5000000B, 7), f
    assert "ie252" not in f and "ie253" not in f

    both = IpfixTemplate(301, BASE + (("pin", 252, 0, 4), ("in", 10, 0, 4), ("out", 14, 0, 4), ("pout", 253, 0, 4)))
    (g,) = _flowscope(build(both, [dict(BASE_ROW, pin=11, pout=12, **{"in": 3, "out": 4})]), port)
    assert (g["InIf"], g["OutIf"], g["ie252"], g["ie253"]) == (3, 4, "0000000b", "0000000c")

    # only one of the two logical elements: the other side's physical one fills in
    half = IpfixTemplate(302, BASE + (("in", 10, 0, 2), ("pin", 252, 0, 4), ("pout", 253, 0, 4)))
    (h,) = _flowscope(build(half, [dict(BASE_ROW, pin=11, pout=12, **{"in": 3})]), port)
    assert (h["InIf"], h["OutIf"], h["ie252"]) == (3, 12, "0000000b")

    if TSHARK:
        (r,) = _tshark(tmp_path, build(phys, rows), port)
        assert (int(r["cflow.ingress_physical_interface"]), int(r["cflow.egress_physical_interface"])) == (
            0x5000000B, 7)
        assert "cflow.inputint" not in r and "cflow.outputint" not in r
