"""The file sink's (or Kafka's) CPU per flow, two source trees side by side (A/B).

    python -m benchmarks.stream_ab --tree before=/tmp/old --tree after=. [--rate 100000]
        [--seconds 8] [--rounds 3] [--records 1]
        [--kafka [--partitions 12] [--collector-args '--kafka-key exporter']] [--exporters K]

`--enriched NAME` (repeatable) runs that tree's collector with Kubernetes enrichment against the
harness's simulated cluster (benchmarks/cluster.py: a Pod for every address loadgen uses, padded
to `--cluster-pods` on `--cluster-nodes` with `--cluster-services`), the
others with `--enrich false`: the same tree given twice, once enriched, measures what enrichment
adds to the whole pipeline's CPU a flow. `--unmatched NAME` runs a tree enriched against a second
cluster of the same size where no pod holds loadgen's addresses: every lookup misses and the
records grow only by the two fields enrichment always writes (`K8S_FlowLayer`, `FlowDirection`),
so plain, unmatched and enriched side by side part enrichment's own work from the cost of
carrying the identities it finds (~580 bytes a flow).

With `--kafka`, a Tansu broker (benchmarks.broker, on CPU 0 with the generator) takes the flows
instead of a file, a new topic of `--partitions` each run, and a flow counts when the collector
says it was delivered (flowscope_flows_delivered_total, once its queue is empty).

Each tree must be built (`python setup.py build_ext --inplace` in it). Per round and tree: a
fresh `flowscope run --sink file` (enrichment off) from that tree on CPU 1, the C load generator
(benchmarks/bin/loadgen, OVS-like IPFIX, `--records` flows a datagram) on CPU 0 at `--rate` flows/s
for `--seconds`; the collector's CPU time (user + system, /proc) over the load and a second after,
divided by the lines it wrote, and the lines against what was sent (lossless or not). Trees
alternate within each round so that the machine's load falls on both; the best round of each is
printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.broker import free_port, free_udp_port
from collector.util import popen_child, run_child

HERE = Path(__file__).resolve().parent


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metric(http: int, name: str, label: str = "") -> float:
    """A series summed over its labels (those whose label set holds `label`, when given)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{") and label in line)


def agents(n: int) -> list[str]:
    """--exporters: the addresses loadgen's exporters send from (one node per /24, as 10.0.i.10:
    loopback's 127/8 is all local)."""
    return [f"127.0.{i + 1}.10" for i in range(n)]


def _exporter_args(args: argparse.Namespace) -> list[str]:
    if not args.exporters:
        return []
    return ["--exporters", str(args.exporters), "--src", ",".join(agents(args.exporters))]


def _round(tree: Path, args: argparse.Namespace, out: Path, bootstrap: str = "",
           enrich: list[str] | None = None) -> tuple[float, int, int]:
    """(CPU seconds, lines written or flows delivered, flows sent) for one collector run."""
    port, http = free_udp_port(), free_port()
    if bootstrap:
        from benchmarks.broker import create_topic

        topic = create_topic(bootstrap, partitions=args.partitions)
        sink = ["--kafka-brokers", bootstrap, "--kafka-topic", topic]
    else:
        sink = ["--sink", "file", "--output-file", str(out)]
    cmd = ["taskset", "-c", "1", sys.executable, "-m", "collector.cli", "run", "--listen", f"ipfix://127.0.0.1:{port}",
           *sink, *(enrich or ["--enrich", "false"]), "--metrics-addr", f"127.0.0.1:{http}", "--log-level", "warning",
           *args.collector_args.split()]
    p = popen_child(cmd, cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or p.poll() is not None:
                    raise RuntimeError(f"collector from {tree} did not get ready") from None
                time.sleep(0.1)
        c0 = _cpu_seconds(p.pid)
        prof = None
        if args.perf:
            # samples of the collector over the load only (cpu-clock by default: a VM may have no
            # counters; --perf-event another)
            prof = popen_child(["perf", "record", "-q", "--call-graph", args.perf_call_graph,
                                     *(["-e", args.perf_event] if args.perf_event else []), "-p", str(p.pid), "-o",
                                     str(Path(args.perf) / f"{out.stem}.perf.data")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spy = None
        if args.pyspy:
            # which Python functions the collector runs over the load (collapsed stacks of Python
            # frames, every thread, idle samples left out, the process not paused; what the C
            # under them does is --perf's)
            spy = popen_child([str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--format",
                                    "raw", "--rate", "1000", "--threads", "-p", str(p.pid), "-o",
                                    str(Path(args.pyspy) / f"{out.stem}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        g = run_child(["taskset", "-c", "0", str(HERE / "bin" / "loadgen"), "--proto", "ipfix", "--to",
                            f"127.0.0.1:{port}", "--rate", str(args.rate), "--duration", str(args.seconds),
                            "--records", str(args.records), *_exporter_args(args)],
                           capture_output=True, text=True, check=True)
        if prof is not None:
            prof.send_signal(signal.SIGINT)
            prof.wait(60)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        time.sleep(1.0)
        if bootstrap:
            deadline = time.monotonic() + 30
            while _metric(http, "flowscope_queue_records") and time.monotonic() < deadline:
                time.sleep(0.2)
            delivered = int(_metric(http, "flowscope_flows_delivered_total"))
            print(f"  ({int(_metric(http, 'flowscope_kafka_batches_total'))} record batches acknowledged)", flush=True)
        if enrich:
            identified = _metric(http, "flowscope_enrich_flows_total", 'result="flows_identified"')
            hits = _metric(http, "flowscope_enrich_lookups_total", 'lookups_cached')
            print(f"  (enriched: {identified / max(1, _metric(http, 'flowscope_enrich_flows_total')):.1%} of "
                  f"flows identified on at least one side; {hits / max(1, _metric(http, 'flowscope_enrich_lookups_total')):.1%} "
                  "of lookups answered from the cache)", flush=True)
        c1 = _cpu_seconds(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
        if bootstrap:
            from benchmarks.broker import delete_topic

            delete_topic(bootstrap, topic)     # (Tansu keeps its topics in memory here)
    sent = json.loads(g.stdout.strip().splitlines()[-1])["flows"]
    if bootstrap:
        return c1 - c0, delivered, sent
    with out.open("rb") as f:
        lines = sum(1 for _ in f)
    return c1 - c0, lines, sent


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="NAME=DIR, repeatable (built source trees)")
    ap.add_argument("--rate", type=int, default=100000, help="flows/s offered")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=1, help="flows a datagram")
    ap.add_argument("--exporters", type=int, default=0,
                    help="exporters sending from addresses of their own, 127.0.i.10 (the simulated cluster's first "
                         "nodes with --enriched); 0: loadgen's default, 4 from 127.0.0.1")
    ap.add_argument("--kafka", action="store_true", help="into a Tansu broker instead of a file")
    ap.add_argument("--partitions", type=int, default=12, help="--kafka: the topic's partitions")
    ap.add_argument("--bootstrap", default="", metavar="HOST:PORT",
                    help="--kafka: a broker already running (another machine, or another network namespace: "
                         "its TCP receive then not on the collector's core, as loopback puts it) instead of "
                         "a Tansu started here")
    ap.add_argument("--collector-args", default="", help="more `flowscope run` flags, split on spaces")
    ap.add_argument("--enriched", action="append", default=[], metavar="NAME",
                    help="a tree (by its NAME) run with enrichment against the simulated cluster; repeatable")
    ap.add_argument("--cluster-pods", type=int, default=0, help="--enriched: pods in all (padded past loadgen's)")
    ap.add_argument("--cluster-nodes", type=int, default=512, help="--enriched: nodes (512 at least)")
    ap.add_argument("--cluster-services", type=int, default=1000, help="--enriched: services")
    ap.add_argument("--unmatched", action="append", default=[], metavar="NAME",
                    help="as --enriched, against a second simulated cluster of the same size where no pod holds "
                    "loadgen's addresses (every lookup misses: enrichment's work without the bytes of the "
                    "identities it finds)")
    ap.add_argument("--perf", metavar="DIR", help="perf record the collector over each round's load into "
                    "DIR/NAME-ROUND.perf.data (perf report -i ...)")
    ap.add_argument("--pyspy", metavar="DIR", help="py-spy record (Python frames, raw collapsed stacks) the "
                    "collector over each round's load into DIR/<tree>-<round>.txt")
    ap.add_argument("--perf-call-graph", default="fp", metavar="MODE",
                    help="--perf: perf record's --call-graph (fp; dwarf,16384 for libc's callers)")
    ap.add_argument("--perf-event", default="", metavar="EVENT",
                    help="--perf: perf record's event instead of its default (page-faults: where fresh memory is touched)")
    args = ap.parse_args()
    if args.bootstrap and not args.kafka:
        ap.error("--bootstrap is the broker for --kafka: give both, or neither")
    trees = dict(t.split("=", 1) for t in args.tree)
    best: dict[str, float] = {}
    broker = None
    clusters: list[Any] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            enrich: dict[str, list[str]] = {}
            for names, unmatched in ((args.enriched, False), (args.unmatched, True)):
                if not names:
                    continue
                from benchmarks.cluster import Cluster, loadgen_pods

                work = Path(tmp) / ("unmatched" if unmatched else "matched")
                work.mkdir()
                cluster = Cluster(loadgen_pods(HERE / "bin" / "loadgen", []), str(work), pods=args.cluster_pods,
                                  nodes=args.cluster_nodes, services=args.cluster_services,
                                  agents=agents(args.exporters), unmatched=unmatched)
                clusters.append(cluster)
                held = " (no pod holds loadgen's addresses)" if unmatched else ""
                print(f"simulated cluster{held}: {cluster.counts}", flush=True)
                enrich.update({name: cluster.flowscope_args() for name in names})
            bootstrap = args.bootstrap
            if args.kafka and not bootstrap:
                from benchmarks.broker import start_broker

                broker = start_broker(cpus="0")
                bootstrap = broker.bootstrap
            _rounds(args, trees, best, Path(tmp), bootstrap, enrich)
    finally:
        if broker is not None:
            broker.stop()
        for cluster in clusters:
            cluster.stop()
    for name, per in best.items():
        print(f"{name}: best {per:.2f} us a flow")


def _rounds(args: argparse.Namespace, trees: dict[str, str], best: dict[str, float], tmp: Path,
            bootstrap: str, enrich: dict[str, list[str]]) -> None:
    for r in range(args.rounds):
        for name, d in trees.items():
            out = tmp / f"{name}-{r}.json"
            cpu, lines, sent = _round(Path(d).resolve(), args, out, bootstrap, enrich.get(name))
            out.unlink(missing_ok=True)
            per = cpu / max(lines, 1) * 1e6
            best[name] = min(best.get(name, per), per)
            print(f"round {r} {name}: {cpu:.2f} s CPU, {lines} {'delivered' if bootstrap else 'lines'} of {sent} "
                  f"flows sent ({'lossless' if lines == sent else f'{sent - lines} missing'}): {per:.2f} us a flow",
                  flush=True)


if __name__ == "__main__":
    main()
