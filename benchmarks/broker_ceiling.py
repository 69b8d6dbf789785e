"""How many JSON flows per second the broker itself accepts: the ceiling of any collector's
"into Kafka" rate on this machine, measured the way the harness pins things.

    python -m benchmarks.broker_ceiling [--seconds 10] [--connections 4]

Tansu runs on CPU 0 (as in the harness); this producer on CPU 1 sends ready-made record batches
of real flow records (OVS-like IPFIX decoded and JSON-encoded by flowscope, plain and enriched
against a 4,000-pod index) over flowscope's direct produce path, as fast as the broker
acknowledges them. Nothing is decoded or encoded during the measurement, so the rate is the
broker's (plus a nearly idle client core), and a collector's harness result divided by it is the
share of the reachable maximum that collector delivers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from benchmarks import broker as brk
from benchmarks import peers
from benchmarks import pipeline_bench as P


def batches(enriched: bool, n: int, batch_bytes: int) -> list[Any]:
    from decoders import RecordBatchWriter

    e, payloads, agents = P.build(4000, 200, 500, 2000)
    dec = P.decoder(agents)
    out = []
    i = 0
    while len(out) < n:
        w = RecordBatchWriter(batch_bytes)
        while True:
            b = dec.decode(*payloads[i % len(payloads)], 0, P.EXPORT)
            i += 1
            if w.append(b, e if enriched else None, 0) < len(b):
                break
        out.append(w)
    return out


async def produce(bootstrap: str, topic: str, ws: list[Any], seconds: float, connections: int) -> tuple[int, int, float]:
    from aiokafka import AIOKafkaProducer

    from collector.kafka_direct import DirectProducer

    meta = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await meta.start()
    try:
        await meta.partitions_for(topic)
        d = DirectProducer(meta.client, client_id="ceiling", acks=1, request_timeout_ms=10000,
                           connections=connections, max_in_flight=2)
        acked = [0, 0]
        pending: set[asyncio.Future[None]] = set()

        def done(f: asyncio.Future[None], n: int, size: int) -> None:
            pending.discard(f)
            if f.exception() is None:
                acked[0] += n
                acked[1] += size

        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            w = ws[k % len(ws)]
            k += 1
            fut = await d.send(w, topic, 0)
            pending.add(fut)
            fut.add_done_callback(lambda f, n=w.records, s=w.size: done(f, n, s))
        if pending:
            await asyncio.wait(pending)
        dt = time.monotonic() - t0
        d.close()
        return acked[0], acked[1], dt
    finally:
        await meta.stop()


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--batch-bytes", type=int, default=1 << 20)
    a = ap.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    import uvloop

    print("| records | bytes/record | flows/s acknowledged | MB/s | broker CPU % |")
    print("|---|---:|---:|---:|---:|")
    for enriched in (False, True):
        ws = batches(enriched, 16, a.batch_bytes)
        b = brk.start_broker(cpus="0" if (os.cpu_count() or 1) >= 2 else None)
        try:
            topic = brk.create_topic(b.bootstrap)
            cpu = peers.CpuTracker(b.pid)
            c0 = cpu.update()
            n, size, dt = uvloop.run(produce(b.bootstrap, topic, ws, a.seconds, a.connections))
            bcpu = 100 * (cpu.update() - c0) / dt
        finally:
            b.stop()
        print(f"| {'enriched' if enriched else 'plain'} OVS IPFIX flows | {size / max(n, 1):.0f} | {n / dt:,.0f} | "
              f"{size / dt / 1e6:.0f} | {bcpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
