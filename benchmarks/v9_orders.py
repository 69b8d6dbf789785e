"""NetFlow v9 sequence loss over random arrival orders: how often the count differs from what was
removed from the stream.

    python -m benchmarks.v9_orders [--orders 300] [--records] [--decoders PATH]

Each order: 40 packets of 1-7 flow records (V9_TEMPLATE), numbered as RFC 3954 5.1 does (one a
packet) or, with --records, by the flow records sent before each (Juniper's), the first packet
kept, each other lost with probability 0.1, then each position swapped with the next with
probability 0.3 (packets overtaking their neighbour on the path), 10 ms apart. The expected loss
is built, not read from the decoder: the packets (or their records) removed below the highest
numbered one received (a loss after the last packet is told by nothing). --depth D instead
delays each packet by up to D positions (uniform), --counts LO HI changes the record counts.
--decoders PATH takes the decoders package from another tree (a build of the commit before),
to compare the two side by side.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys


def orders(seed: int, n: int, lo: int, hi: int, depth: float) -> tuple[list[int], list[int]]:
    """(record counts by packet, arrival order) of one trial."""
    rng = random.Random(seed)
    counts = [rng.randrange(lo, hi + 1) for _ in range(n)]
    order = [k for k in range(n) if k == 0 or rng.random() > 0.1]
    if depth:
        keyed = sorted(range(len(order)), key=lambda i: i + (rng.uniform(0, depth) if i else -1.0))
        order = [order[i] for i in keyed]
    else:
        for i in range(1, len(order) - 1):
            if rng.random() < 0.3:
                order[i], order[i + 1] = order[i + 1], order[i]
    return counts, order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--packets", type=int, default=40)
    ap.add_argument("--records", action="store_true", help="number by flow records (Juniper's), not packets")
    ap.add_argument("--counts", type=int, nargs=2, default=(1, 7), metavar=("LO", "HI"))
    ap.add_argument("--depth", type=float, default=0.0, help="delay by up to this many positions instead of swaps")
    ap.add_argument("--decoders", help="a tree whose decoders package to use")
    a = ap.parse_args()
    if a.decoders:
        sys.path.insert(0, a.decoders)
    from benchmarks.datagrams import V9_TEMPLATE, template_set, v9_data_set, v9_datagram
    from decoders import Decoder

    logging.disable(logging.CRITICAL)
    export = 1_700_000_000
    differ = under = over = 0
    for seed in range(a.orders):
        counts, order = orders(seed, a.packets, a.counts[0], a.counts[1], a.depth)
        seqs, s = [], 100
        for n in counts:
            seqs.append(s)
            s += n if a.records else 1
        removed = [k for k in range(max(order)) if k not in order]
        expect = sum(counts[k] for k in removed) if a.records else len(removed)
        rng = random.Random(seed)
        dec = Decoder()
        for i, k in enumerate(order):
            recs = [{"src": f"10.0.0.{rng.randrange(1, 250)}", "dst": "10.1.0.1", "sport": rng.randrange(65536),
                     "dport": 443, "proto": 6, "tos": 0, "flags": 2, "bytes": 100, "packets": 1, "first": 1000,
                     "last": 2000, "input": 1, "output": 2} for _ in range(counts[k])]
            sets = [template_set([V9_TEMPLATE], version=9)] if i == 0 else []
            dec.decode(v9_datagram([*sets, v9_data_set(V9_TEMPLATE, recs)], seq=seqs[k], unix_secs=export,
                                   uptime_ms=500_000), "10.0.0.1", 2055, export + 0.01 * i)
        p = dec.stats(export + 900)["10.0.0.1"]["protocols"]["netflow9"]
        if p["sequence_lost"] != expect or p["sequence_resets"]:
            differ += 1
            under += p["sequence_lost"] < expect
            over += p["sequence_lost"] > expect
    print(f"{'records' if a.records else 'packets'}: {differ} of {a.orders} orders differ from the loss removed "
          f"({under} under, {over} over)")


if __name__ == "__main__":
    main()
