"""Per-flow cost of the collector's hot path, with and without Kubernetes enrichment.

    python -m benchmarks.pipeline_bench [--pods 100000] [--seconds 2]
    python -m benchmarks.pipeline_bench --callgrind [--pods 4000 --rounds 30]
    python -m benchmarks.pipeline_bench --only enriched --seconds 20   (for perf record -p)
    python -m benchmarks.pipeline_bench --thread-time [--rounds 30 --passes 40]   (a busy machine)

What `flowscope run` does per datagram on the fast Kafka path, minus the socket: decode an
OVS-like IPFIX datagram of 25 records (--records; from --agents exporters in turn) and append its flows, JSON-encoded, to a Kafka record
batch (decoders.RecordBatchWriter), sealing each full batch (1 MiB: header, CRC-32C, Produce
request framing) as direct produce does. Measured once without an enricher and once with an index of
--pods pods (plus nodes and services, built by benchmarks.enrich_bench's generators) whose
addresses the flows use, alternating rounds and keeping the best of each, because this machine
is shared and noisy: the ratio is the result (the issue's target: enrichment under +10%).

--only MODE times one loop alone for --seconds, once "ready" is printed (the index built, the
cyclic GC frozen), so that `perf record -p PID` started then sees the hot path only.

--thread-time times the two loops by the thread's CPU time instead, in many short slices, the
best kept (see thread_time()): what the other modes' wall clock cannot tell on a loaded machine.

--callgrind counts instructions instead (valgrind, which load does not affect): it runs the plain
and the enriched loop under callgrind, each over the same datagrams --rounds times, counting only
inside the three calls of the hot path (Decoder.decode, RecordBatchWriter.append and .request,
with everything they call), and divides by the flows. Earlier versions counted whole runs and
subtracted a setup-only run; the setup (index and datagrams) varies by some 18 M instructions
from run to run, which at 30 rounds was +-375 instructions per flow.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import time
from typing import Any

from benchmarks import datagrams as D
from benchmarks import enrich_bench as E
from decoders import Decoder, RecordBatchWriter

EXPORT = 1_780_000_000  # flows after the synthetic pods were created
FLOWS = 64 * 25  # flows a pass over the datagrams


def build(n_pods: int, n_nodes: int, n_services: int, busy: int, records: int = 25,
          n_agents: int = 1, cluster_name: str = "") -> tuple[Any, list[tuple[bytes, str]], list[str]]:
    """The index (its tails naming `cluster_name` when given, as --cluster-name does), then 1,600
    flows in datagrams of `records` records from `n_agents` exporters in turn (each with its own
    sequence numbers), as (payload, exporter address) pairs."""
    import enrich
    from enrich.config import EnrichConfig

    e = enrich.Enricher.from_objects(pods=E.pods(n_pods, n_nodes, n_pods // 5), nodes=E.nodes(n_nodes),
                                     services=E.services(n_services), replicasets=E.replicasets(n_pods // 5),
                                     config=EnrichConfig(cluster_name=cluster_name))
    payloads, agents = flows(n_pods, n_nodes, n_services, busy, records, n_agents)
    return e, payloads, agents


POD_NET = int(ipaddress.IPv4Address("10.128.0.0"))       # (pods' addresses: E.pod_ip)
SERVICE_NET = int(ipaddress.IPv4Address("172.30.0.0"))   # (services': E.services)


def unmatched(ip: str) -> str:
    """The address `ip` (a pod's or a service's here) moved out of every range the index holds
    (pods into 100.64.0.0/10, services into 198.18.0.0/15), at the same distance from its
    network's start: distinct addresses stay distinct, so the per-address cache sees as many."""
    a = int(ipaddress.IPv4Address(ip))
    if POD_NET <= a < POD_NET + (1 << 22):
        return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + a - POD_NET))
    assert SERVICE_NET <= a < SERVICE_NET + (1 << 17), ip
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.0")) + a - SERVICE_NET))


def flows(n_pods: int, n_nodes: int, n_services: int, busy: int, records: int = 25, n_agents: int = 1,
          miss: bool = False) -> tuple[list[tuple[bytes, str]], list[str]]:
    """build()'s datagrams and exporters; miss: the same flows between addresses no pod, node or
    service of the index holds (the exporters are its nodes still)."""
    rng = random.Random(7)
    # Flows between a working set of `busy` pods (a collector sees one node's or a few nodes'
    # pods), a tenth towards services; the exporters are the first busy pods' nodes.
    slots = [divmod(rng.randrange(n_pods), n_nodes)[::-1] for _ in range(busy)]
    agents = [E.node_ip(slots[k][0]) for k in range(n_agents)]
    payloads = []
    for i in range(FLOWS // records):
        recs = D.ovs_flows(records, rng)
        for r in recs:
            s = slots[rng.randrange(busy)]
            r["src"] = E.pod_ip(*s)
            if rng.randrange(10):
                r["dst"] = E.pod_ip(*slots[rng.randrange(busy)])
            else:
                r["dst"] = str(ipaddress.IPv4Address(SERVICE_NET + 10 + rng.randrange(n_services)))
            if miss:
                r["src"], r["dst"] = unmatched(str(r["src"])), unmatched(str(r["dst"]))
        seq = (i // n_agents) * records
        payloads.append((D.ipfix_message([D.data_set(D.OVS_INGRESS, recs)], seq=seq, export_time=EXPORT),
                         agents[i % n_agents]))
    return payloads, agents


def decoder(agents: list[str]) -> Decoder:
    """A decoder that has every exporter's template."""
    dec = Decoder()
    for agent in agents:
        dec.decode(D.ipfix_message([D.template_set([D.OVS_INGRESS])], seq=0, export_time=EXPORT), agent)
    return dec


BATCH = 1 << 20  # kafka.batch_bytes' default


def seal(w: RecordBatchWriter) -> None:
    """What the direct produce path does to a full batch: header, CRC-32C, Produce framing."""
    w.request(1, b"flowscope", 1, 10000, b"flows", 0)


def one_pass(dec: Decoder, payloads: list[tuple[bytes, str]], enricher: Any,
             w: RecordBatchWriter) -> tuple[RecordBatchWriter, int]:
    """The hot path over every datagram once, into w and the batches that follow it when it fills
    (each sealed): the batch being filled, and the flows."""
    n = 0
    for p, agent in payloads:
        b = dec.decode(p, agent, 0, EXPORT)
        i = w.append(b, enricher, 0)
        while i < len(b):
            seal(w)
            w = RecordBatchWriter(BATCH)
            i = w.append(b, enricher, i)
        n += len(b)
    return w, n


def rate(dec: Decoder, payloads: list[tuple[bytes, str]], enricher: Any, seconds: float) -> float:
    n = 0
    w = RecordBatchWriter(BATCH)
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        w, k = one_pass(dec, payloads, enricher, w)
        n += k
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - t0)


def own_index(a: argparse.Namespace) -> Any:
    """The unmatched loop's enricher: an index of the same size as the enriched loop's, but its own.
    Sharing one made the unmatched loop's addresses and the enriched loop's (about 2,160 each)
    compete for one per-address cache: more of them past a set's first way, 0.14% of lookups
    through the index instead of 0.06%, and the loop +52 ns a flow instead of +35-39
    (benchmarks/RESULTS.md, helper 5, 2026-12-07); a collector has one cache for its own flows."""
    return build(a.pods, a.nodes, a.services, a.busy, a.records, a.agents, a.cluster_name)[0]


def loop(mode: str, a: argparse.Namespace) -> None:
    """The body one callgrind run measures: setup (not counted), then --rounds passes."""
    e, payloads, agents = build(a.pods, a.nodes, a.services, a.busy, a.records, a.agents, a.cluster_name)
    if mode == "unmatched":
        payloads, _ = flows(a.pods, a.nodes, a.services, a.busy, a.records, a.agents, miss=True)
    dec = decoder(agents)
    enr = None if mode == "plain" else e
    w = RecordBatchWriter(BATCH)
    for _ in range(a.rounds):
        w, _n = one_pass(dec, payloads, enr, w)
    seal(w)


def thread_time(a: argparse.Namespace) -> None:
    """--thread-time: the plain and the enriched loop in one process, timed by the thread's CPU
    time (time.thread_time_ns: time the scheduler gives to other processes is not counted) in
    --rounds short slices of --passes passes each, the two alternating, the best slice of each
    kept; the GC frozen, as `flowscope run` freezes it. For a machine others are using, where
    wall-clock rounds (the default mode) vary by more than what is measured. Its code placement
    still moves the loop by tens of ns a flow between builds (benchmarks/RESULTS.md): compare trees
    by what enrichment adds, over alternating runs of each."""
    import gc

    e, payloads, agents = build(a.pods, a.nodes, a.services, a.busy, a.records, a.agents, a.cluster_name)
    loops = {"plain": (decoder(agents), payloads, None), "enriched": (decoder(agents), payloads, e)}
    if a.unmatched:
        missing, _ = flows(a.pods, a.nodes, a.services, a.busy, a.records, a.agents, miss=True)
        loops["unmatched"] = (decoder(agents), missing, own_index(a))
    gc.freeze()

    def slice_ns(dec: Decoder, p: list[tuple[bytes, str]], enricher: Any, passes: int) -> float:
        n = 0
        w = RecordBatchWriter(BATCH)
        t0 = time.thread_time_ns()
        for _ in range(passes):
            w, k = one_pass(dec, p, enricher, w)
            n += k
        return (time.thread_time_ns() - t0) / n

    for args in loops.values():   # (the cache filled, the code and the batch buffers warm)
        slice_ns(*args, a.passes)
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(a.rounds):
        for k, args in loops.items():
            best[k] = min(best[k], slice_ns(*args, a.passes))
    plain, enriched = best["plain"], best["enriched"]
    print(f"thread CPU time, best of {a.rounds} slices of {a.passes} passes ({a.passes * len(payloads)} datagrams "
          f"of {a.records} records): plain {plain:.1f} ns, enriched {enriched:.1f} ns a flow; enrichment adds "
          f"{enriched - plain:.1f} ns (+{100 * (enriched / plain - 1):.1f}%)")
    if a.unmatched:
        u = best["unmatched"]
        print(f"unmatched (lookups only) {u:.1f} ns a flow; its lookups add {u - plain:.1f} ns "
              f"(+{100 * (u / plain - 1):.1f}%)")


def only(mode: str, a: argparse.Namespace) -> None:
    """One loop timed alone: build, freeze the GC (as `flowscope run` does once its index is
    ready), say "ready", then --rounds slices of --seconds; the best slice's cost a flow."""
    import gc

    e, payloads, agents = build(a.pods, a.nodes, a.services, a.busy, a.records, a.agents, a.cluster_name)
    if mode == "unmatched":
        payloads, _ = flows(a.pods, a.nodes, a.services, a.busy, a.records, a.agents, miss=True)
    dec = decoder(agents)
    gc.freeze()
    print("ready", flush=True)
    best = max(rate(dec, payloads, None if mode == "plain" else e, a.seconds / a.rounds)
               for _ in range(a.rounds))
    print(f"{mode}: {1e9 / best:.0f} ns per flow (best of {a.rounds} slices of {a.seconds / a.rounds:.1f} s)")


# The three calls the loop makes per datagram or batch: their Cython wrappers (__pyx_pw_*), by
# their exact names in the generated C source. (Wildcard --toggle-collect patterns tried for them
# counted only part of the loop, 1,616 instructions per flow instead of ~5,600, for a reason not
# found; the exact names count all of it, as the whole-run difference of 300 and 600 rounds does.)
HOT_CALLS = r"__pyx_pw_\w*?(?:Decoder_\d+decode|RecordBatchWriter_\d+(?:append|request))\b"


def hot_call_names() -> list[str]:
    import re
    from pathlib import Path

    import decoders

    src = Path(decoders.__file__).with_name("_core.c")
    if not src.exists():
        raise SystemExit(f"--callgrind needs {src} (made by `make build`) to name the hot-path calls")
    names = sorted(set(re.findall(HOT_CALLS, src.read_text())))
    if len(names) != 3:
        raise SystemExit(f"--callgrind: expected 3 hot-path wrappers in {src}, found {names}")
    return names


def callgrind(a: argparse.Namespace) -> None:
    import os
    import re
    import shutil
    import subprocess
    import sys
    import tempfile

    from collector.util import run_child

    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
    flows = a.rounds * (FLOWS // a.records) * a.records
    toggles = [f"--toggle-collect={name}" for name in hot_call_names()]
    total: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("plain", "enriched", "unmatched") if a.unmatched else ("plain", "enriched"):
            out = os.path.join(tmp, f"cg.{mode}")
            cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", *toggles,
                   f"--callgrind-out-file={out}", sys.executable, "-m",
                   "benchmarks.pipeline_bench", "--loop", mode, "--pods", str(a.pods), "--nodes", str(a.nodes),
                   "--services", str(a.services), "--busy", str(a.busy), "--rounds", str(a.rounds),
                   "--records", str(a.records), "--agents", str(a.agents),
                   "--cluster-name", a.cluster_name]
            run_child(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONHASHSEED": "0"})
            with open(out) as f:
                m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
            assert m, "no totals in the callgrind output"
            total[mode] = int(m.group(1))
    per = {k: total[k] / flows for k in total}
    if per["plain"] < 1000:
        raise SystemExit(f"callgrind counted {per['plain']:.0f} instructions per flow: the hot-path "
                         f"toggles ({toggles}) missed the calls")
    print(f"callgrind, {a.pods} pods, {flows} flows per loop, counted inside decode/append/request")
    print("| run | instructions | per flow |")
    print("|---|---|---|")
    for k in total:
        print(f"| {k} | {total[k]:,} | {per[k]:,.0f} |")
    for k in total:
        if k != "plain":
            print(f"{k}: enrichment adds {per[k] - per['plain']:,.0f} instructions per flow "
                  f"(+{100 * (per[k] / per['plain'] - 1):.1f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=5_000)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--busy", type=int, default=2_000, help="pods the flows are drawn from")
    ap.add_argument("--records", type=int, default=25, help="records a datagram (Open vSwitch sends 1)")
    ap.add_argument("--agents", type=int, default=1, help="exporters whose datagrams take turns")
    ap.add_argument("--cluster-name", default="", help="the index's cluster name (flowscope run --cluster-name)")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--unmatched", action="store_true",
                    help="a third loop: enriched, the same flows with addresses the index does not hold "
                    "(enrichment's lookups without the bytes of the identities they find)")
    ap.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead")
    ap.add_argument("--thread-time", action="store_true",
                    help="time by the thread's CPU time in --rounds slices of --passes passes, plain and "
                    "enriched alternating in one process, the best of each (for a busy machine)")
    ap.add_argument("--passes", type=int, help="--thread-time: passes over the datagrams a slice (default 40)")
    ap.add_argument("--loop", choices=("plain", "enriched", "unmatched"), help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=("plain", "enriched", "unmatched"),
                    help="time this loop alone (for a profiler); unmatched: --unmatched's")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds: at least 1")
    if a.passes is not None and not a.thread_time:
        ap.error("--passes: only with --thread-time")
    if a.passes is not None and a.passes < 1:
        ap.error("--passes: at least 1")
    if a.thread_time:
        clash = [f for f, on in (("--callgrind", a.callgrind), ("--only", a.only)) if on]
        if clash:
            ap.error(f"--thread-time: not with {clash[0]}")
        a.passes = a.passes or 40
        thread_time(a)
        return
    if a.loop:
        loop(a.loop, a)
        return
    if a.only:
        only(a.only, a)
        return
    if a.callgrind:
        callgrind(a)
        return
    e, payloads, agents = build(a.pods, a.nodes, a.services, a.busy, a.records, a.agents, a.cluster_name)
    dec = decoder(agents)
    sample = dec.decode(*payloads[0], 0, EXPORT).to_dicts(e)
    hits = sum(1 for f in sample if "SrcK8S_Name" in f)
    loops = {"plain": (dec, payloads, None), "enriched": (dec, payloads, e)}
    if a.unmatched:
        missing, _ = flows(a.pods, a.nodes, a.services, a.busy, a.records, a.agents, miss=True)
        dec_u, e_u = decoder(agents), own_index(a)
        sample_u = dec_u.decode(*missing[0], 0, EXPORT).to_dicts(e_u)
        if any("SrcK8S_Name" in f or "DstK8S_Name" in f for f in sample_u):
            raise SystemExit("--unmatched: an address moved out of the index still resolved")
        loops["enriched, no address in the index"] = (dec_u, missing, e_u)
    best = dict.fromkeys(loops, 0.0)
    for _ in range(a.rounds):
        for k, (d, p, enr) in loops.items():
            best[k] = max(best[k], rate(d, p, enr, a.seconds / a.rounds))
    cost = {k: 1e9 / v for k, v in best.items()}
    print(f"index: {a.pods} pods, {a.nodes} nodes, {a.services} services; flows over {a.busy} busy pods; "
          f"{hits}/{len(sample)} sources resolved")
    print("| path | flows/s (one core) | ns per flow |")
    print("|---|---|---|")
    for k in loops:
        print(f"| decode + JSON + Kafka batch, {k} | {best[k] / 1e6:.2f} M | {cost[k]:.0f} |")
    for k in loops:
        if k != "plain":
            print(f"{k}: enrichment adds {cost[k] - cost['plain']:.0f} ns per flow "
                  f"(+{100 * (cost[k] / cost['plain'] - 1):.0f}%)")


if __name__ == "__main__":
    main()
