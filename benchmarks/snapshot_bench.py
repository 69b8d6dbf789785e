"""What building the metrics snapshot costs the event loop, by number of exporters.

    python -m benchmarks.snapshot_bench [--exporters 1000,10000,16384,65536] [--following] [--snapshots 5]
        [--sending 0.1] [--no-snapshots]

Worker.snapshot() runs on the event loop every --stats-interval; while it runs no datagram is
read. It costs what changed since the previous one (Decoder.series_changed, DecoderSeries; it
walked every exporter the decoder holds state for before). One NetFlow v5 datagram from each of
N addresses, then the mean time of five snapshots (file sink, no Kafka). --sending F: before
each snapshot that fraction of the exporters (spread over them) sends a datagram again (not
timed). --following: the worker's labels follow a supervisor's choice, as with `flowscope run
--workers N` (each snapshot then carries the label channel, ExporterLabels.feed).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exporters", default="1000,10000,16384,65536", help="comma list of exporter counts")
    ap.add_argument("--following", action="store_true", help="as a --workers N worker (the label channel)")
    ap.add_argument("--snapshots", type=int, default=5, help="snapshots timed at each count")
    ap.add_argument("--sending", type=float, default=0.0, help="fraction of exporters sending before each snapshot")
    ap.add_argument("--no-snapshots", action="store_true", help="all but the timed snapshots (a baseline for "
                    "callgrind: its instructions subtracted from a run's are the snapshots')")
    a = ap.parse_args()
    from benchmarks.datagrams import v5_datagram, v5_records
    from collector import config
    from collector.server import Worker

    counts = [int(x) for x in a.exporters.split(",") if x]
    env = {"FLOWSCOPE_OUTPUT_FILE": os.devnull, "FLOWSCOPE_MAX_EXPORTERS": str(max(counts))}
    import random

    d = v5_datagram(v5_records(1, random.Random(1), uptime_ms=100_000), seq=1, unix_secs=1_700_000_000,
                    uptime_ms=100_000)
    print("| exporters | snapshot ms |")
    print("|---:|---:|")
    for n in counts:
        w = Worker(config.load(None, environ=env))
        if a.following:
            w.labels.follow(1, [], 0)
        names = [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(n)]
        for e in names:
            w.decode(d, e, 2055, time.time())
        w.snapshot()
        step = max(1, round(1 / a.sending)) if a.sending > 0 else 0
        took = 0.0
        for k in range(a.snapshots):
            for e in names[k % step::step] if step else ():
                w.decode(d, e, 2055, time.time())
            t = time.perf_counter()
            if not a.no_snapshots:
                w.snapshot()
            took += time.perf_counter() - t
        print(f"| {n:,} | {1000 * took / max(1, a.snapshots):.2f} |")


if __name__ == "__main__":
    main()
