"""Where a NetFlow v9 / IPFIX data set ends, and which scope a sampling rate applies to.

- Set padding after records of 3 bytes or less (RFC 3954 5.3, RFC 7011 3.3.1): zeros that bring
  the set to a 4-byte boundary are padding, never a record.
- Options data scoped by interface (v9 scope type 2 "Interface", IPFIX scope ingressInterface
  (10)): its rate applies to the data records of that ingress interface, not to the whole
  exporting process and domain.
- samplingProbability (IE 311, float64 or reduced-size float32): the rate is 1 / p.
"""

from __future__ import annotations

import struct

import pytest

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set, v9_datagram
from decoders import Decoder, DecoderConfig

EXPORT = 1_700_000_000
EXPORTER = "10.0.0.1"
PORT = 4739


def _tpl(tid: int, *fields: tuple[str, int, int, int], scope: int = 0) -> IpfixTemplate:
    return IpfixTemplate(tid, tuple(fields), scope)


def _ipfix_options_set(templates: list[IpfixTemplate]) -> bytes:
    body = b""
    for t in templates:
        body += struct.pack("!HHH", t.template_id, len(t.fields), t.options_scope)
        body += b"".join(struct.pack("!HH", ie, ln) for _n, ie, _pen, ln in t.fields)
    return struct.pack("!HH", 3, 4 + len(body)) + body


def _v9_options_set(tid: int, scopes: list[tuple[int, int]], fields: list[tuple[int, int]]) -> bytes:
    """RFC 3954 6.1: template id, option scope length, option length (bytes), then the scope
    (type, length) pairs and the option (type, length) pairs; padded to 4 bytes."""
    body = struct.pack("!HHH", tid, 4 * len(scopes), 4 * len(fields))
    body += b"".join(struct.pack("!HH", ty, ln) for ty, ln in scopes + fields)
    body += b"\0" * ((-len(body)) % 4)
    return struct.pack("!HH", 1, 4 + len(body)) + body


def _raw_set(set_id: int, body: bytes, *, pad: bool = True) -> bytes:
    if pad:
        body += b"\0" * ((-len(body)) % 4)
    return struct.pack("!HH", set_id, 4 + len(body)) + body


# ------------------------------------------------------------------ padding after tiny records

TINY = {
    3: _tpl(300, ("proto", 4, 0, 1), ("dport", 11, 0, 2)),
    2: _tpl(300, ("dport", 11, 0, 2)),
    1: _tpl(300, ("proto", 4, 0, 1)),
}
TINY_REC = {"proto": 17, "dport": 53}


@pytest.mark.parametrize("version", [9, 10])
@pytest.mark.parametrize(("size", "n"), [(3, 1), (3, 2), (3, 3), (2, 1), (1, 1), (1, 2), (1, 3)])
def test_zero_padding_after_tiny_records_is_not_a_record(version: int, size: int, n: int) -> None:
    """RFC 3954 5.3: "The Exporter SHOULD insert some padding bytes so that the subsequent
    FlowSet starts at a 4-byte aligned boundary"; RFC 7011 3.3.1 likewise. With records of 3 bytes
    or less the padding may be as long as a record: zeros that end the set on its 4-byte boundary
    are padding, and are neither flows nor records of the message's sequence count."""
    t = TINY[size]
    dec = Decoder(DecoderConfig(default_sampling=0))
    recs = [TINY_REC] * n
    if version == 9:
        dgrams = [v9_datagram([template_set([t], version=9), data_set(t, recs)], seq=seq, unix_secs=EXPORT,
                              uptime_ms=1000) for seq in (0, 1)]
    else:
        dgrams = [ipfix_message([template_set([t]), data_set(t, recs)], seq=seq, export_time=EXPORT)
                  for seq in (0, n)]
    for d in dgrams:
        b = dec.decode(d, EXPORTER, PORT, EXPORT)
        assert b.error is None
        flows = b.to_dicts()
        assert len(flows) == n
        assert all(f.get("Proto", 17) == 17 and f.get("DstPort", 53) == 53 for f in flows)
    st = dec.stats()[EXPORTER]
    assert st["flows"] == 2 * n
    proto = st["protocols"]["ipfix" if version == 10 else "netflow9"]
    assert proto["sequence_lost"] == 0 and proto["sequence_resets"] == 0


@pytest.mark.parametrize("version", [9, 10])
def test_zero_records_that_are_not_padding_stay_records(version: int) -> None:
    """Only zeros that end the set on its 4-byte boundary can be padding: an exporter that does
    not pad (a set of 4 + 3 * 3 bytes) sent three records, the last one all zeros."""
    t = TINY[3]
    dec = Decoder(DecoderConfig(default_sampling=0))
    body = b"".join(struct.pack("!BH", 17, 53) for _ in range(2)) + b"\0\0\0"     # 9 bytes, no padding
    unpadded = _raw_set(300, body, pad=False)
    if version == 9:
        d = v9_datagram([template_set([t], version=9), unpadded], seq=0, unix_secs=EXPORT, uptime_ms=1000)
    else:
        d = ipfix_message([template_set([t]), unpadded], seq=0, export_time=EXPORT)
    b = dec.decode(d, EXPORTER, PORT, EXPORT)
    assert b.error is None and len(b) == 3

