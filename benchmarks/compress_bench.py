"""What kafka.compression costs per flow record, and what it saves the broker.

    python -m benchmarks.compress_bench [--seconds 1]

One 1 MiB record batch of OVS-like IPFIX flows, plain and enriched (the pipeline_bench index),
compressed by each codec as flowscope does it (collector.sinks._codec: the fast end of each
codec unless kafka.compression_level says otherwise) and, for comparison, by aiokafka's encoders
at Kafka's default levels (lz4 9, zstd 3), which the first collectors used. Prints the ratio,
MB/s of JSON in, and ns per flow record on one core.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from benchmarks.broker_ceiling import batches


def batch(enriched: bool) -> tuple[bytes, int]:
    w = batches(enriched, 1, 1 << 20)[0]
    return w.records_bytes(), w.records


def measure(encode: Callable[[Any], Any], raw: bytes, seconds: float) -> tuple[float, float]:
    out = encode(raw)
    n = 0
    t0 = time.perf_counter()
    while True:
        encode(raw)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return len(raw) / len(memoryview(out)), dt / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="per codec and record kind")
    a = ap.parse_args()
    from aiokafka import codec as c

    from collector.sinks import _codec

    codecs: list[tuple[str, Callable[[Any], Any]]] = [
        (f"flowscope {name}", _codec(name)[1]) for name in ("lz4", "zstd", "snappy", "gzip")  # type: ignore[misc]
    ]
    codecs += [("aiokafka lz4 (level 9)", c.lz4_encode), ("aiokafka zstd (level 3)", c.zstd_encode)]
    print("| records | codec | ratio | MB/s in | ns per record |")
    print("|---|---|---:|---:|---:|")
    for enriched in (False, True):
        raw, n = batch(enriched)
        kind = f"{'enriched' if enriched else 'plain'} ({len(raw) // n} B)"
        for name, encode in codecs:
            ratio, per = measure(encode, raw, a.seconds)
            print(f"| {kind} | {name} | {ratio:.1f} | {len(raw) / per / 1e6:,.0f} | {per / n * 1e9:,.0f} |")


if __name__ == "__main__":
    main()
