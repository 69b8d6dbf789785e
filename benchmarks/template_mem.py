"""What decoder templates cost in memory, by shape: the basis of --max-template-fields' accounting.

    python -m benchmarks.template_mem [--fields 1,10,30,100] [--budget 2000000]

For each template width, IPFIX templates of that many 4-byte fields are learned from as many
exporters as it takes (up to 60,000 template ids each) until about --budget counted fields
(fields + 24 per template, decoders' TEMPLATE_COST_FIELDS) are held, and the process's RSS
growth is divided by the templates, the fields and the counted fields. RSS, not tracemalloc: a
template's field array is C memory tracemalloc does not see. Each width runs in a process of its
own, so that one width's freed memory does not serve the next.
"""

from __future__ import annotations

import argparse
import gc
import sys

from collector.util import run_child

COST = 24  # decoders/netflow.pxi TEMPLATE_COST_FIELDS


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def one(nf: int, budget: int) -> str:
    from benchmarks.datagrams import IpfixTemplate, ipfix_message, template_set
    from decoders import Decoder, DecoderConfig

    fields = tuple((f"f{i}", 1 + i, 0, 4) for i in range(nf))
    dec = Decoder(DecoderConfig(max_template_fields=1 << 31, max_templates_per_exporter=60000,
                                max_exporters=100000))
    per = max(1, min(50, 1000 // (4 * nf + 4)))   # templates per message, under 64 KB
    want = budget // (nf + COST)
    gc.collect()
    before = _rss()
    tid, e, n = 256, 0, 0
    while n < want:
        ts = [IpfixTemplate(t, fields, 0) for t in range(tid, tid + per)]
        dec.decode(ipfix_message([template_set(ts)], seq=0, export_time=1), f"10.{e >> 8 & 255}.{e & 255}.1", 0, 1.0)
        tid, n = tid + per, n + per
        if tid > 60000:
            tid, e = 256, e + 1
    gc.collect()
    grown = _rss() - before
    t, f = dec.template_count, dec.template_fields
    return (f"| {nf} | {t:,} | {grown / t:,.0f} | {grown / f:,.1f} | {grown / (f + COST * t):,.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", default="1,10,30,100", help="comma list of template widths")
    ap.add_argument("--budget", type=int, default=2_000_000, help="counted fields to fill per width")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        print(one(a.one, a.budget))
        return
    print("| fields a template | templates | RSS bytes a template | a field | a counted field (+24 a template) |")
    print("|---:|---:|---:|---:|---:|")
    for nf in (int(x) for x in a.fields.split(",") if x):
        out = run_child([sys.executable, "-m", "benchmarks.template_mem", "--one", str(nf),
                              "--budget", str(a.budget)], capture_output=True, text=True, check=True)
        print(out.stdout.strip())


if __name__ == "__main__":
    main()
