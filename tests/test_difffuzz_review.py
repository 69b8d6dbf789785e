"""Regression tests for what randomized differential testing against tshark found
(tests/support/difffuzz.py: seeded random IPFIX, NetFlow v9 and sFlow v5 datagrams decoded by
flowscope and by tshark, compared with the golden comparators).

Each test is the minimal datagram of a disagreement that was flowscope's fault. Expected values
come from the RFCs and the bytes the test built; where tshark is installed the test checks tshark
reads those bytes the same way, never flowscope's output.
"""

from __future__ import annotations

import struct
from pathlib import Path

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set
from decoders import Decoder, DecoderConfig
from tests.support.tshark import TSHARK, CflowReader, run_tshark, tshark_date_ms
from tests.test_pcap import eth, ip4, pcap, udp

EXPORT = 1_700_000_000
PORT = 4739
NTP_UNIX = 2_208_988_800  # seconds from the NTP epoch (1900) to the Unix epoch (1970)


def _decode(payload: bytes) -> list[dict]:
    b = Decoder(DecoderConfig(default_sampling=0)).decode(payload, "10.0.0.1", PORT, EXPORT)
    assert b.error is None, b.error
    return b.to_dicts()


def _tshark_records(tmp_path: Path, payload: bytes) -> list[dict]:
    f = tmp_path / "d.pcap"
    f.write_bytes(pcap([eth(ip4(udp(payload, 50000, PORT), src=bytes([10, 0, 0, 1])))]))
    pkts = run_tshark(f, decode_as=[f"udp.port=={PORT},cflow"])
    return [r for p in CflowReader().packets(pkts) for _s, r in p.flow_records]


def test_ntp_times_of_era_1_and_the_unknown_time_are_not_negative_unix_times(tmp_path: Path) -> None:
    """flowStartMicroseconds / flowEndNanoseconds (154/157) are NTP timestamps (RFC 7011
    6.1.9/6.1.10): 32-bit seconds since 1900 and a binary fraction. Found by the differential
    fuzzer: flowscope read every value in NTP era 0, so
      * the all-zero timestamp, which RFC 5905 section 6 reserves for "unknown or unsynchronized
        time" (an exporter's unset time), came out as 1900: TimeFlowStartMs -2208988800000;
      * seconds with the top bit clear, which RFC 4330 section 3 reads as era 1 (after
        2036-02-07 06:28:16, as tshark does), came out as times of 1900-1968, also negative.
    A negative Unix time in TimeFlowStartMs/EndMs is no time at all for NetObserv's consumers."""
    t = IpfixTemplate(300, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("proto", 4, 0, 1),
                            ("start", 154, 0, 8), ("end", 157, 0, 8)))
    now = struct.pack("!II", EXPORT + NTP_UNIX, 1 << 30)               # 2023-11-14 22:13:20.25
    unknown = bytes(8)
    # 2040-01-01 00:00:00 UTC = Unix 2208988800: NTP seconds 4417977600, past 2^32 (era 1)
    era1 = struct.pack("!II", 2 * NTP_UNIX - (1 << 32), 0)
    rows = [
        {"src": "10.1.1.1", "dst": "10.2.2.2", "proto": 6, "start": unknown, "end": now},
        {"src": "10.1.1.1", "dst": "10.2.2.2", "proto": 6, "start": now, "end": era1},
    ]
    msg = ipfix_message([template_set([t]), data_set(t, rows)], seq=0, export_time=EXPORT)
    f0, f1 = _decode(msg)
    assert "TimeFlowStartMs" not in f0, f0        # unknown: no start, not 1900
    assert f0["TimeFlowEndMs"] == EXPORT * 1000 + 250
    assert f1["TimeFlowStartMs"] == EXPORT * 1000 + 250
    assert f1["TimeFlowEndMs"] == 2_208_988_800_000, f1
    if TSHARK:
        r0, r1 = _tshark_records(tmp_path, msg)
        # (tshark renders the fraction 2^30 as .249999999 s: within the millisecond)
        assert abs(tshark_date_ms(r1["cflow.abstimestart"]) - (EXPORT * 1000 + 250)) <= 1
        assert tshark_date_ms(r1["cflow.abstimeend"]) == 2_208_988_800_000  # tshark: era 1 too
