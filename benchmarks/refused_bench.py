"""Cost of a datagram refused over --max-exporter-rate (Decoder.decode, bucket empty): an OVS
IPFIX message of 25 flows (template 256 known) and a NetFlow v5 datagram of 30; best of 5 runs
of 100k refusals each, with the decoders of the repository given as argv[1] (default: this
one), to compare two builds side by side."""

import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent))
from benchmarks.datagrams import (  # noqa: E402
    OVS_INGRESS,
    data_set,
    ipfix_message,
    ovs_flows,
    template_set,
    v5_datagram,
    v5_records,
)
from decoders import Decoder, DecoderConfig  # noqa: E402

logging.disable(logging.CRITICAL)       # (the refusals' rate-limited log line)
rng = random.Random(1)
EXPORT = 1_700_000_000
tpl = ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=EXPORT)
ipfix = ipfix_message([data_set(OVS_INGRESS, ovs_flows(25, rng))], seq=0, export_time=EXPORT)
v5 = v5_datagram(v5_records(30, rng, uptime_ms=100_000), seq=0, unix_secs=EXPORT, uptime_ms=100_000)
for name, first, d in (("ipfix", tpl, ipfix), ("netflow5", v5, v5)):
    best = 1e9
    for _ in range(5):
        dec = Decoder(DecoderConfig(max_exporter_rate=1))
        dec.decode(first, "10.0.0.1", 4739, float(EXPORT))
        t = time.perf_counter()
        for _ in range(100_000):
            dec.decode(d, "10.0.0.1", 4739, float(EXPORT))
        best = min(best, time.perf_counter() - t)
    assert dec.decode(d, "10.0.0.1", 4739, float(EXPORT)).error[0] == "rate_limited"
    print(f"{name}: {best / 100_000 * 1e9:.0f} ns per refused datagram")
