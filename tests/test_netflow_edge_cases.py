"""Review of the NetFlow v5/v9 and IPFIX decoders: edge cases of the wire formats that the
other decoder tests do not reach (template records cut by their set, the sequence step of a
message whose data does not fit its template, ...). Expected values come from the RFCs and from
what was built, never from the decoder.
"""

from __future__ import annotations

import struct

import pytest

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set, v9_datagram
from decoders import Decoder

EXPORT = 1_700_000_000
EXPORTER = "10.0.0.1"
PORT = 4739


def _tpl(tid: int, *fields: tuple[str, int, int, int]) -> IpfixTemplate:
    return IpfixTemplate(tid, tuple(fields))


GOOD = _tpl(256, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("bytes", 1, 0, 8), ("packets", 2, 0, 4))
ROW = {"src": "10.0.0.1", "dst": "10.0.0.2", "bytes": 100, "packets": 2}


@pytest.mark.parametrize("case", ["ipfix template", "ipfix options template", "ipfix options header",
                                  "v9 template", "v9 options template", "v9 options header"])
def test_a_template_record_cut_by_its_set_does_not_stop_the_rest_of_the_datagram(case: str) -> None:
    """RFC 7011 3.3.2 / RFC 3954 5.3: the set length says where the next set starts. A template
    record with a valid id whose field specifiers (or options header) run past its set is
    refused and counted (bad_template), as one with an id under 256 or 600 fields already is:
    the sets after it, here the data of a good template, still decode (before, the whole
    datagram was lost as `truncated`)."""
    data = data_set(GOOD, [ROW])
    v9 = case.startswith("v9")
    set_id = (1 if "options" in case else 0) if v9 else (3 if "options" in case else 2)
    if case.endswith("options header"):
        # template id 300 and one more header field only (v9 needs scope and option lengths,
        # IPFIX a scope field count after its field count)
        body = struct.pack("!HH", 300, 8 if v9 else 2)
    elif "options" in case:
        # the header claims 3 fields (v9: scope 4 bytes + options 8 bytes), 1 follows
        body = (struct.pack("!HHH", 300, 4, 8) if v9 else struct.pack("!HHH", 300, 3, 1)) + struct.pack("!HH", 1, 4)
    else:
        body = struct.pack("!HH", 300, 3) + struct.pack("!HH", 8, 4)   # 3 fields claimed, 1 follows
    cut = struct.pack("!HH", set_id, 4 + len(body)) + body
    if v9:
        dgram = v9_datagram([template_set([GOOD], version=9), cut, data], seq=0, unix_secs=EXPORT, uptime_ms=100_000)
    else:
        dgram = ipfix_message([template_set([GOOD]), cut, data], seq=0, export_time=EXPORT)
    dec = Decoder()
    b = dec.decode(dgram, EXPORTER, PORT, EXPORT)
    assert b.error is None, b.error
    assert [(f["SrcAddr"], f["Bytes"], f["Packets"]) for f in b.to_dicts()] == [("10.0.0.1", 100, 2)]
    st = dec.stats()[EXPORTER]
    assert st["templates"] == 1 and st["errors"] == {"bad_template": 1}


def test_a_cut_redefinition_voids_the_old_template() -> None:
    """RFC 7011 8: a template id sent again is redefined; when the new record cannot be used
    (its fields run past the set) the old layout must not stay, as for any refused one."""
    dec = Decoder()
    dec.decode(ipfix_message([template_set([GOOD])], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    body = struct.pack("!HH", 256, 5) + struct.pack("!HH", 12, 4)
    cut = struct.pack("!HH", 2, 4 + len(body)) + body
    b = dec.decode(ipfix_message([cut, data_set(GOOD, [ROW])], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert b.error is None and len(b) == 0 and b.missing_template_sets == 1
    assert dec.stats()[EXPORTER]["templates"] == 0


def test_an_options_withdrawal_at_the_end_of_its_set_is_still_a_withdrawal() -> None:
    """RFC 7011 8.1: an options template withdrawal is 4 bytes (no scope field count), so one
    that ends its set is not a cut header."""
    dec = Decoder()
    opt = struct.pack("!HHH", 400, 2, 1) + struct.pack("!HHHH", 149, 4, 305, 4)
    dec.decode(ipfix_message([struct.pack("!HH", 3, 4 + len(opt)) + opt], seq=0, export_time=EXPORT),
               EXPORTER, PORT, EXPORT)
    assert dec.stats()[EXPORTER]["templates"] == 1
    b = dec.decode(ipfix_message([struct.pack("!HHHH", 3, 8, 400, 0)], seq=0, export_time=EXPORT),
                   EXPORTER, PORT, EXPORT)
    assert b.error is None
    st = dec.stats()[EXPORTER]
    assert st["templates"] == 0 and st["errors"] == {}


def test_a_data_set_that_does_not_fit_its_template_is_not_sequence_loss() -> None:
    """RFC 7011 3.1: the sequence number counts the Data Records sent. A data set in which not
    one record of its template fits (template_mismatch: the exporter redefined the template and
    the new definition did not arrive) holds records the decoder cannot count, as a set without
    its template does: the next message's step must not be taken for lost records (they
    arrived, and are counted as template_mismatch)."""
    t = _tpl(373, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("b", 1, 0, 8), ("p", 2, 0, 8), ("x", 210, 0, 13))
    row = {"src": "10.0.0.1", "dst": "10.0.0.2", "b": 100, "p": 1, "x": 0}
    dec = Decoder()
    dec.decode(ipfix_message([template_set([t])], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert len(dec.decode(ipfix_message([data_set(t, [row])], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)) == 1
    # one 32-byte record of a layout the decoder never saw (records of 373 are 37 bytes)
    short = struct.pack("!HH", 373, 4 + 32) + bytes(range(1, 33))
    b = dec.decode(ipfix_message([short], seq=1, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert len(b) == 0 and b.error is None
    b = dec.decode(ipfix_message([data_set(t, [row])], seq=2, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert len(b) == 1
    st = dec.stats(EXPORT + 60)[EXPORTER]["protocols"]["ipfix"]
    assert st["errors"] == {"template_mismatch": 1}
    assert st["sequence_lost"] == 0
    # a real loss after it is still counted
    dec.decode(ipfix_message([data_set(t, [row])], seq=5, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert dec.stats(EXPORT + 60)[EXPORTER]["protocols"]["ipfix"]["sequence_lost"] == 2


def test_enterprise_elements_numbered_like_decoded_iana_ones_are_kept_as_they_came() -> None:
    """RFC 7011 3.2: an element with the enterprise bit is the enterprise's own, whatever its
    number: Cisco's (PEN 9) 8, 12, 1 and 7, Juniper's (2636) 4 and ntop's (35632) 82 are not
    sourceIPv4Address, destinationIPv4Address, octetDeltaCount, sourceTransportPort,
    protocolIdentifier and interfaceName, before or after the IANA ones in the template; a
    template with only the enterprise ones has no addresses. NetFlow v9 (RFC 3954) has no
    enterprise bit: field type 32769 is a vendor's type, not octetDeltaCount (1)."""
    t = _tpl(300, ("e_src", 8, 9, 4), ("e_bytes", 1, 9, 4), ("src", 8, 0, 4), ("dst", 12, 0, 4),
             ("e_dst", 12, 9, 4), ("proto", 4, 0, 1), ("e_proto", 4, 2636, 1), ("e_sport", 7, 9, 2),
             ("sport", 7, 0, 2), ("bytes", 1, 0, 4), ("e_name", 82, 35632, 0xFFFF))
    only = _tpl(301, ("e_src", 8, 9, 4), ("e_dst", 12, 9, 4), ("e_bytes", 1, 9, 4))
    row = {"e_src": "192.0.2.1", "e_bytes": 999, "src": "10.0.0.1", "dst": "10.0.0.2", "e_dst": "192.0.2.2",
           "proto": 6, "e_proto": 17, "e_sport": 5353, "sport": 443, "bytes": 100, "e_name": b"eth0"}
    b = Decoder().decode(ipfix_message([template_set([t, only]), data_set(t, [row]), data_set(only, [row])],
                                       seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert b.error is None
    f, g = b.to_dicts()
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"], f["SrcPort"], f["Bytes"]) == ("10.0.0.1", "10.0.0.2", 6, 443, 100)
    assert (f["ie9_8"], f["ie9_12"], f["ie9_1"], f["ie9_7"], f["ie2636_4"], f["ie35632_82"]) == (
        "c0000201", "c0000202", "000003e7", "14e9", "11", "65746830")
    assert "Interfaces" not in f
    assert "SrcAddr" not in g and "DstAddr" not in g and "Bytes" not in g
    assert (g["ie9_8"], g["ie9_12"], g["ie9_1"]) == ("c0000201", "c0000202", "000003e7")
    v9 = _tpl(302, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("vendor", 32769, 0, 4), ("bytes", 1, 0, 4))
    b = Decoder().decode(v9_datagram([template_set([v9], version=9), data_set(v9, [dict(row, vendor=7)])],
                                     seq=0, unix_secs=EXPORT, uptime_ms=5000), EXPORTER, PORT, EXPORT)
    assert b.error is None
    (f,) = b.to_dicts()
    assert f["Bytes"] == 100 and f["ie32769"] == "00000007"


def test_structured_lists_and_long_form_lengths_are_stepped_over_by_their_length() -> None:
    """RFC 6313 subTemplateList (292) and subTemplateMultiList (293) between fixed fields, and
    RFC 7011 7 lengths in the three-byte form (255, then two bytes) whatever the value: 0, below
    255 (allowed, "MAY"), and above. Each list is skipped by its length (never decoded as
    fields, never published), and the fields after it are read where they are."""
    tpl = struct.pack("!HH", 256, 6) + struct.pack("!12H", 8, 4, 292, 0xFFFF, 12, 4, 293, 0xFFFF, 82, 0xFFFF, 1, 4)
    sub = bytes([3]) + struct.pack("!H", 257) + bytes(range(1, 41))   # semantic, template 257, 40 bytes of records

    def rec(src: int, stl: bytes, stml: bytes, name: bytes, n: int) -> bytes:
        return bytes([10, 0, 0, src]) + stl + bytes([10, 0, 1, src]) + stml + name + struct.pack("!I", n)

    body = (rec(1, b"\xff\x00\x00", b"\x00", b"\xff\x00\x03br0", 100)
            + rec(2, b"\xff" + struct.pack("!H", len(sub)) + sub, b"\xff\x01\x2c" + bytes(300), b"\x00", 200)
            + rec(3, bytes([len(sub)]) + sub, b"\xff\x00\x00", b"\x04eth1", 300))
    body += bytes(-len(body) % 4)
    b = Decoder().decode(ipfix_message([struct.pack("!HH", 2, 4 + len(tpl)) + tpl,
                                        struct.pack("!HH", 256, 4 + len(body)) + body], seq=0, export_time=EXPORT),
                         EXPORTER, PORT, EXPORT)
    assert b.error is None
    flows = b.to_dicts()
    assert [(f["SrcAddr"], f["DstAddr"], f["Bytes"], f.get("Interfaces")) for f in flows] == [
        ("10.0.0.1", "10.0.1.1", 100, ["br0"]), ("10.0.0.2", "10.0.1.2", 200, None), ("10.0.0.3", "10.0.1.3", 300, ["eth1"])]
    assert not any(k.startswith(("ie292", "ie293")) for f in flows for k in f)


def test_a_set_whose_first_record_runs_past_it_is_a_template_mismatch() -> None:
    """A set long enough for a record of its template, whose first record's variable-length field
    says more bytes than the set has: not one record fits, data in another layout than the one
    held (an exporter that redefined the template while the new definition did not arrive), so it
    is counted as template_mismatch as a set shorter than a record is, not as a cut record
    (truncated), and is no sequence loss; the set after it decodes."""
    t = _tpl(380, ("src", 8, 0, 4), ("dst", 12, 0, 4), ("name", 82, 0, 0xFFFF), ("b", 1, 0, 4))
    row = {"src": "10.0.0.1", "dst": "10.0.0.2", "name": b"eth0", "b": 100}
    dec = Decoder()
    dec.decode(ipfix_message([template_set([t]), data_set(t, [row])], seq=0, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    other = struct.pack("!HH", 380, 4 + 16) + bytes([10, 0, 0, 9, 10, 0, 0, 8, 40]) + bytes(range(1, 8))
    b = dec.decode(ipfix_message([other, data_set(t, [row])], seq=1, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    assert b.error is None and [f["Bytes"] for f in b.to_dicts()] == [100]
    dec.decode(ipfix_message([data_set(t, [row])], seq=3, export_time=EXPORT), EXPORTER, PORT, EXPORT)
    st = dec.stats(EXPORT + 60)[EXPORTER]["protocols"]["ipfix"]
    assert st["errors"] == {"template_mismatch": 1}
    assert st["sequence_lost"] == 0


def test_v9_ipv6_record_with_end_reason_direction_and_two_byte_interfaces() -> None:
    """A NetFlow v9 IPv6 record as routers send one: 2-byte SNMP interfaces, DIRECTION (61),
    FORWARDING_STATUS (89, 1 byte: 0x42 forwarded), flowEndReason (136: 3 end of flow
    detected), IPv6 masks and next hop, a VLAN, an MPLS label (kept as ie70) and a flow label
    (ie31), times from the header's sysUpTime (uptime 5 s at the export: 4 s and 4.9 s are
    1 s and 0.1 s before it)."""
    fields = (("src", 27, 0, 16), ("dst", 28, 0, 16), ("sm", 29, 0, 1), ("dm", 30, 0, 1), ("nh", 62, 0, 16),
              ("sp", 7, 0, 2), ("dp", 11, 0, 2), ("proto", 4, 0, 1), ("flags", 6, 0, 1), ("b", 1, 0, 4),
              ("p", 2, 0, 4), ("in", 10, 0, 2), ("out", 14, 0, 2), ("dir", 61, 0, 1), ("fwd", 89, 0, 1),
              ("end", 136, 0, 1), ("vlan", 58, 0, 2), ("mpls", 70, 0, 3), ("first", 22, 0, 4), ("last", 21, 0, 4),
              ("label", 31, 0, 3))
    t = _tpl(260, *fields)
    row = {"src": "2001:db8::1", "dst": "2001:db8::2", "sm": 64, "dm": 48, "nh": "2001:db8::fe", "sp": 1234,
           "dp": 443, "proto": 6, "flags": 0x1B, "b": 1000, "p": 10, "in": 5, "out": 6, "dir": 1, "fwd": 0x42,
           "end": 3, "vlan": 100, "mpls": 0x493001, "first": 4000, "last": 4900, "label": 0x1234}
    b = Decoder().decode(v9_datagram([template_set([t], version=9), data_set(t, [row])], seq=0, unix_secs=EXPORT,
                                     uptime_ms=5000), EXPORTER, PORT, EXPORT)
    assert b.error is None
    (f,) = b.to_dicts()
    want = {"SrcAddr": "2001:db8::1", "DstAddr": "2001:db8::2", "SrcPrefixLen": 64, "DstPrefixLen": 48,
            "NextHop": "2001:db8::fe", "SrcPort": 1234, "DstPort": 443, "Proto": 6, "Etype": 0x86DD,
            "Flags": ["FIN", "SYN", "PSH", "ACK"], "Bytes": 1000, "Packets": 10, "InIf": 5, "OutIf": 6,
            "FlowDirection": 1, "ForwardingStatus": 0x42, "FlowEndReason": 3, "Vlan": 100, "ie70": "493001",
            "ie31": "001234", "TimeFlowStartMs": EXPORT * 1000 - 1000, "TimeFlowEndMs": EXPORT * 1000 - 100}
    assert {k: f.get(k) for k in want} == want
