"""Vendor quirks: what real exporters' values mean, beyond what the element registry says.

Each case names the vendor's documentation or the real capture it follows; the datagrams are
built with the helpers of benchmarks/datagrams.py (values chosen by the test).
"""

from __future__ import annotations

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set
from decoders import Decoder, DecoderConfig

EXPORT = 1_700_000_000
EXPORTER = "192.0.2.44"

# YAF (CERT NetSA) sends no tcpControlBits: its TCP flags are initialTCPFlags (the first packet's)
# and unionTCPFlags (the others'), CERT enterprise 6871 elements 14 and 15, and their reverse
# twins with the CERT reverse bit (0x4000: 16398, 16399), as libfixbuf defines them.
YAF = IpfixTemplate(45873, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("sport", 7, 0, 2), ("dport", 11, 0, 2),
                            ("proto", 4, 0, 1), ("b", 85, 0, 8), ("p", 86, 0, 8), ("rb", 85, 29305, 8),
                            ("rp", 86, 29305, 8), ("init", 14, 6871, 1), ("union", 15, 6871, 1),
                            ("rinit", 16398, 6871, 1), ("runion", 16399, 6871, 1)), 0)
YAF_REC = {"src": "172.16.32.100", "dst": "172.16.32.215", "sport": 63499, "dport": 9997, "proto": 6,
           "b": 172, "p": 4, "rb": 92, "rp": 2, "init": 0xC2, "union": 0x11, "rinit": 0x12, "runion": 0x11}


def _yaf(**cfg: object) -> list[dict]:
    dec = Decoder(DecoderConfig(default_sampling=0, **cfg))  # type: ignore[arg-type]
    b = dec.decode(ipfix_message([template_set([YAF]), data_set(YAF, [YAF_REC])], seq=0, export_time=EXPORT),
                   EXPORTER, 4739, EXPORT)
    assert b.error is None
    return b.to_dicts()


def test_yaf_tcp_flags_from_initial_and_union_flags() -> None:
    """A YAF TCP flow's flags are its first packet's (initialTCPFlags, SYN ECE CWR here) and the
    rest's (unionTCPFlags, FIN ACK): Flags is their union, as SiLK reads YAF's records (its
    flags = initial | session). The values are the corpus's cert-yaf_ipfix_applabel flow."""
    (f,) = _yaf()
    assert f["TcpFlagsRaw"] == 0xC2 | 0x11
    assert set(f["Flags"]) == {"SYN", "ECE", "CWR", "FIN", "ACK"}


def test_yaf_reverse_tcp_flags_with_split_biflows() -> None:
    """With --split-biflows the reverse flow's flags are YAF's reverse initial and union flags."""
    fwd, rev = _yaf(split_biflows=True)
    assert set(fwd["Flags"]) == {"SYN", "ECE", "CWR", "FIN", "ACK"}
    assert rev["SrcAddr"] == YAF_REC["dst"] and rev["Bytes"] == 92
    assert rev["TcpFlagsRaw"] == 0x12 | 0x11 and set(rev["Flags"]) == {"SYN", "ACK", "FIN"}


def test_yaf_flags_elements_beside_tcp_control_bits_stay_elements() -> None:
    """A template with tcpControlBits (6) takes Flags from it; YAF's flag elements beside it stay
    as they came."""
    t = IpfixTemplate(300, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("proto", 4, 0, 1), ("flags", 6, 0, 1),
                            ("init", 14, 6871, 1), ("union", 15, 6871, 1)), 0)
    dec = Decoder(DecoderConfig(default_sampling=0))
    rec = {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": 6, "flags": 0x10, "init": 0x02, "union": 0x01}
    (f,) = dec.decode(ipfix_message([template_set([t]), data_set(t, [rec])], seq=0, export_time=EXPORT),
                      EXPORTER, 4739, EXPORT).to_dicts()
    assert f["TcpFlagsRaw"] == 0x10 and f["ie6871_14"] == "02" and f["ie6871_15"] == "01"


def test_yaf_reverse_flow_starts_its_delta_later_with_split_biflows() -> None:
    """YAF sends one flowStart/EndMilliseconds pair per biflow (the forward direction's first
    packet, the last packet of either) and reverseFlowDeltaMilliseconds (CERT 6871 21): how much
    later the reverse direction's first packet came. With --split-biflows the reverse flow starts
    that much later and ends with the record (as SiLK splits YAF's biflows; a delta beyond the
    end is cut to it); without it the element stays as it came."""
    t = IpfixTemplate(45841, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("proto", 4, 0, 1), ("start", 152, 0, 8),
                              ("end", 153, 0, 8), ("b", 85, 0, 8), ("p", 86, 0, 8), ("rb", 85, 29305, 8),
                              ("rp", 86, 29305, 8), ("delta", 21, 6871, 4)), 0)
    start = 1_482_670_713_345
    recs = [{"src": "172.16.32.201", "dst": "172.16.32.100", "proto": 17, "start": start, "end": start + 1002,
             "b": 132, "p": 2, "rb": 200, "rp": 2, "delta": 120},
            {"src": "172.16.32.202", "dst": "172.16.32.100", "proto": 17, "start": start, "end": start + 50,
             "b": 60, "p": 1, "rb": 60, "rp": 1, "delta": 5000}]
    msg = ipfix_message([template_set([t]), data_set(t, recs)], seq=0, export_time=EXPORT)
    flows = Decoder(DecoderConfig(default_sampling=0, split_biflows=True)).decode(msg, EXPORTER, 4739,
                                                                                  EXPORT).to_dicts()
    got = [(f["SrcAddr"], f["TimeFlowStartMs"], f["TimeFlowEndMs"]) for f in flows]
    assert got == [("172.16.32.201", start, start + 1002), ("172.16.32.100", start + 120, start + 1002),
                   ("172.16.32.202", start, start + 50), ("172.16.32.100", start + 50, start + 50)]
    assert all("ie6871_21" not in f for f in flows)
    one = Decoder(DecoderConfig(default_sampling=0)).decode(msg, EXPORTER, 4739, EXPORT).to_dicts()
    assert [(f["TimeFlowStartMs"], f["ie6871_21"]) for f in one] == [(start, "00000078"), (start, "00001388")]
