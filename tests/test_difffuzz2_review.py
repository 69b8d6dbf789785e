"""Regression tests for the second round of randomized differential testing against tshark
(tests/support/difffuzz.py). Each test is the minimal datagram of a disagreement that was
flowscope's fault; the expected values come from the RFCs and the bytes the test built, and
where tshark is installed the test checks tshark reads those bytes the same way.

(The other disagreements of that round were tshark 4.0's faults or the comparator's gaps, listed
in the header of tests/support/difffuzz.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set
from tests.support.tshark import TSHARK
from tests.test_difffuzz_review import EXPORT, _decode, _tshark_records

V4_ICMP = (("src", 8, 0, 4), ("dst", 12, 0, 4), ("proto", 4, 0, 1))
V6_ICMP = (("src", 27, 0, 16), ("dst", 28, 0, 16), ("proto", 4, 0, 1))


@pytest.mark.parametrize("family, ie_code", [(4, 177), (6, 179)])
def test_an_icmp_code_without_its_type_is_no_icmp_type_0(tmp_path: Path, family: int, ie_code: int) -> None:
    """A record with icmpCodeIPv4 (177) or icmpCodeIPv6 (179) and no type element (176/178, or
    the packed 32/139) does not say the ICMP type. flowscope published IcmpType 0 for it: for
    IPv4 that states "echo reply" (RFC 792), for ICMPv6 a type RFC 4443 reserves, neither of
    which the exporter sent. A code means something only under its type (the IANA registries
    list codes per type), so such a record has neither IcmpType nor IcmpCode; a record with the
    type element beside it keeps both."""
    base = V4_ICMP if family == 4 else V6_ICMP
    src, dst, proto = ("10.1.1.1", "10.2.2.2", 1) if family == 4 else ("fd00::1", "fd00::2", 58)
    only_code = IpfixTemplate(300, (*base, ("code", ie_code, 0, 1)))
    both = IpfixTemplate(301, (*base, ("type", ie_code - 1, 0, 1), ("code", ie_code, 0, 1)))
    row = {"src": src, "dst": dst, "proto": proto, "type": 3, "code": 4}
    msg = ipfix_message([template_set([only_code, both]), data_set(only_code, [row]), data_set(both, [row])],
                        seq=0, export_time=EXPORT)
    f_code, f_both = _decode(msg)
    assert f_code["Proto"] == proto and f_code["SrcAddr"] == src, f_code
    assert "IcmpType" not in f_code and "IcmpCode" not in f_code, f_code
    assert (f_both["IcmpType"], f_both["IcmpCode"]) == (3, 4), f_both
    if TSHARK:
        r_code, r_both = _tshark_records(tmp_path, msg)
        v = f"ipv{family}"
        assert f"cflow.icmp_{v}_code" in r_code and f"cflow.icmp_{v}_type" not in r_code, r_code
        assert int(r_both[f"cflow.icmp_{v}_type"]) == 3 and int(r_both[f"cflow.icmp_{v}_code"]) == 4


def test_an_icmpv6_flow_with_the_packed_v4_element_and_a_lone_v6_code_keeps_the_packed_type() -> None:
    """NetFlow v9 exporters send ICMP_TYPE (32, type << 8 | code) for ICMPv6 flows too: a
    template with 32 and a lone icmpCodeIPv6 (179) has its type in 32, which the flow keeps."""
    t = IpfixTemplate(302, (*V6_ICMP, ("tc", 32, 0, 2), ("code6", 179, 0, 1)))
    row = {"src": "fd00::1", "dst": "fd00::2", "proto": 58, "tc": (128 << 8) | 0, "code6": 0}
    msg = ipfix_message([template_set([t]), data_set(t, [row])], seq=0, export_time=EXPORT)
    (f,) = _decode(msg)
    assert (f["IcmpType"], f["IcmpCode"]) == (128, 0), f
