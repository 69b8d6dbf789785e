"""What kafka.compression costs per flow record, and what it saves the broker.

    python -m benchmarks.compress_bench [--seconds 1]
    python -m benchmarks.compress_bench --thread [--rounds 3]

One 1 MiB record batch of OVS-like IPFIX flows, plain and enriched (the pipeline_bench index),
compressed by each codec as flowscope does it (collector.sinks._codec: the fast end of each
codec unless kafka.compression_level says otherwise) and, for comparison, by aiokafka's encoders
at Kafka's default levels (lz4 9, zstd 3), which the first collectors used. Prints the ratio,
MB/s of JSON in, and ns per flow record on one core.

--thread: what the event loop's thread pays per enriched record for compressing, on itself
(RecordBatchWriter.compress, kafka.compression_thread off) against handing the batch to the
compression thread (decoders' Packer, kafka.compression_thread on): 64 batches of 1 MiB per
round, the loop's CPU time (time.thread_time) and the thread's busy time per record, best round.
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


def thread_vs_loop(rounds: int) -> None:
    import select

    from decoders._core import Packer

    from collector.sinks import _codec, _lz4_frame_header

    print("| codec | compressed by | loop thread ns per record | compression thread ns per record | wall ns per record |")
    print("|---|---|---:|---:|---:|")
    for name, codec, level in (("lz4", 3, 0), ("zstd", 4, 3)):
        encode = _codec(name)[1]
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(rounds):
            ws = batches(True, 64, 1 << 20)
            n = sum(w.records for w in ws)
            t0, c0 = time.perf_counter(), time.thread_time()
            for w in ws:
                w.compress(codec, encode)
            c1, t1 = time.thread_time(), time.perf_counter()
            r = ((c1 - c0) / n * 1e9, 0.0, (t1 - t0) / n * 1e9)
            best["event loop"] = min(best.get("event loop", r), r)
            ws = batches(True, 64, 1 << 20)
            n = sum(w.records for w in ws)
            p = Packer(codec, level, _lz4_frame_header())
            back = 0
            t0, c0 = time.perf_counter(), time.thread_time()
            for w in ws:
                assert p.submit(w)
            while back < len(ws):
                select.select([p.fileno()], [], [], 10)
                back += len(p.collect())
            c1, t1 = time.thread_time(), time.perf_counter()
            r = ((c1 - c0) / n * 1e9, p.busy_seconds / n * 1e9, (t1 - t0) / n * 1e9)
            p.close()
            best["thread"] = min(best.get("thread", r), r)
        for where, (loop_ns, thr_ns, wall_ns) in best.items():
            print(f"| {name} | {where} | {loop_ns:,.0f} | {thr_ns:,.0f} | {wall_ns:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="per codec and record kind")
    ap.add_argument("--thread", action="store_true", help="the event loop's cost with and without the "
                    "compression thread (kafka.compression_thread)")
    ap.add_argument("--rounds", type=int, default=3, help="--thread: rounds (the best is printed)")
    a = ap.parse_args()
    if a.thread:
        thread_vs_loop(a.rounds)
        return
    from aiokafka import codec as c

    from collector.sinks import _codec

    codecs: list[tuple[str, Callable[[Any], Any]]] = [
        (f"flowscope {name}", _codec(name)[1]) for name in ("lz4", "zstd", "snappy", "gzip")  # type: ignore[misc]
    ]
    codecs.insert(1, ("lz4 fast mode (level 1)", _codec("lz4", 1)[1]))  # type: ignore[arg-type]
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
