"""Instructions a refused datagram costs (over --max-exporter-rate, bucket empty), counted by
callgrind, which load does not change: run it with N refusals and with none, and divide the
difference of the two totals by N.

    for n in 0 2000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/refused_instructions.py TREE ipfix $n 2>&1 | grep Collected; done

TREE: the repository whose decoders to load (a build of another commit, side by side); ipfix:
an Open vSwitch message of 25 flows (template 256 known, one variable-length field), v9: a
NetFlow v9 packet of 25 flows of a fixed-length template. A fourth argument, `decoded`: the same
datagrams decoded instead (no rate limit), numbered one after the other as RFC 7011 / RFC 3954
number them, to count what the sequence check adds to a decoded datagram. `templates` instead:
the refused datagrams are the exporter's template refresh (IPFIX: Open vSwitch's three templates,
v9: its one template), which a refused datagram teaches as a decoded one does.
"""

import logging
import random
import struct
import sys

sys.path.insert(0, sys.argv[1])
from benchmarks.datagrams import (  # noqa: E402
    OVS_EGRESS,
    OVS_INGRESS,
    OVS_TUNNEL,
    V9_TEMPLATE,
    data_set,
    ipfix_message,
    ovs_flows,
    template_set,
    v9_data_set,
    v9_datagram,
)
from decoders import Decoder, DecoderConfig  # noqa: E402

logging.disable(logging.CRITICAL)       # (the refusals' rate-limited log line)
EXPORT = 1_700_000_000
proto, n = sys.argv[2], int(sys.argv[3])
decoded = sys.argv[4:] == ["decoded"]
refresh = sys.argv[4:] == ["templates"]
flows = ovs_flows(25, random.Random(1))
rec = {"src": "10.0.0.1", "dst": "10.1.0.1", "sport": 1, "dport": 443, "proto": 6, "tos": 0, "flags": 2,
       "bytes": 100, "packets": 1, "first": 1000, "last": 2000, "input": 1, "output": 2}


d0 = (ipfix_message([data_set(OVS_INGRESS, flows)], seq=0, export_time=EXPORT) if proto == "ipfix" else
      v9_datagram([v9_data_set(V9_TEMPLATE, [rec] * 25)], seq=0, unix_secs=EXPORT, uptime_ms=5000))


def datagram(i: int) -> bytes:
    """d0 numbered as the i-th (the header's sequence number: IPFIX bytes 8-11, v9 12-15)."""
    at = 8 if proto == "ipfix" else 12
    return d0[:at] + struct.pack("!I", (25 * i if proto == "ipfix" else i) if decoded else 0) + d0[at + 4:]


if proto == "ipfix":
    first = ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=EXPORT)
else:
    first = v9_datagram([template_set([V9_TEMPLATE], version=9)], seq=0, unix_secs=EXPORT, uptime_ms=5000)
data = [datagram(i) for i in range(n)] if decoded else [datagram(0)] * n
if refresh:
    data = [ipfix_message([template_set([OVS_INGRESS, OVS_EGRESS, OVS_TUNNEL])], seq=0, export_time=EXPORT)
            if proto == "ipfix" else first] * n
dec = Decoder(DecoderConfig(max_exporter_rate=0 if decoded else 1))
dec.decode(first, "10.0.0.1", 4739, float(EXPORT))
for d in data:
    dec.decode(d, "10.0.0.1", 4739, float(EXPORT))
if n:
    assert (dec.decode(datagram(0), "10.0.0.1", 4739, float(EXPORT)).error is None) == decoded
