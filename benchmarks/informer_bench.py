"""What keeping the Kubernetes cache current costs the collector's event loop (issue 4).

The informers run in threads of the collector's process, and a thread parsing a list page or a
watch event holds the GIL: while it does, the event loop reading the UDP sockets waits. This
measures how long it waits (the loop's lag: how late a 1 ms timer fires) and the process CPU
spent, in the three situations a production collector meets:

  sync     the first list of every kind at start (100k pods, 5k nodes, 10k services, 20k
           ReplicaSets by default, the shapes of benchmarks.enrich_bench)
  relist   the pods watch gets 410 Gone (etcd compacted): all pods are listed again
  churn    pod updates streaming in on the watch (a rolling deployment), --churn per second

The API server is the tests' fake one (tests/support/fake_kube.py: the real list/watch wire
protocol, paged lists), run in a process of its own so that serving does not take this
process's GIL. The loop is uvloop, as `flowscope run`'s default. What the numbers mean for UDP:
the kernel keeps receiving while the loop waits (up to --rcvbuf, 32 MiB by default: over a
second of a 450k flows/s load), so a lag of milliseconds costs nothing but the CPU it took.

    python -m benchmarks.informer_bench [--pods N] [--churn N] [--churn-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from collector.util import popen_child

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------- the API server

def serve(a: argparse.Namespace) -> None:
    """Child process: the fake API server with the cluster loaded; commands on stdin, one per
    line ("expire KIND", "churn RATE SECONDS", "quit"), each answered "done" on stdout."""
    import random

    from benchmarks import enrich_bench as E
    from tests.support.fake_kube import FakeKube

    kube = FakeKube().start()
    for kind, objs in (("nodes", E.nodes(a.nodes)), ("replicasets", E.replicasets(a.replicasets)),
                       ("services", E.services(a.services)), ("pods", E.pods(a.pods, a.nodes, a.replicasets))):
        for o in objs:
            kube.add(kind, o)
    path = kube.write_kubeconfig(Path(a.workdir) / "kubeconfig.json")
    print(path, flush=True)
    rng = random.Random(5)
    names = list(kube.objects["pods"].keys())
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "expire":
            kube.expire(cmd[1])
            # the fake server compacts up to the next revision; a real one compacts revisions it
            # has: one change brings the current revision there, so that the relist's
            # resourceVersion can be watched from (else the informer lists again and again)
            kube.modify(cmd[1], next(iter(kube.objects[cmd[1]].values())))
        elif cmd[0] == "churn":
            rate, secs = float(cmd[1]), float(cmd[2])
            t0 = time.monotonic()
            n = 0
            total = int(rate * secs)
            while n < total:
                due = min(total, int((time.monotonic() - t0) * rate) + 1)
                while n < due:
                    pod = kube.objects["pods"][names[rng.randrange(len(names))]]
                    pod = json.loads(json.dumps(pod))
                    pod["metadata"].setdefault("labels", {})["pod-template-hash"] = f"h{n % 97}"
                    kube.modify("pods", pod)
                    n += 1
                time.sleep(0.001)
        print("done", flush=True)
    kube.stop()


# ------------------------------------------------------------------------------ the measurement

TICK = 0.005   # the probe's timer (s): fine enough for the stalls that matter, cheap enough not to be one


class Lag:
    """A timer on the loop: how late each firing is; and the CPU of the loop's thread and of the
    others (the informers'), per phase."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(TICK)
            self.samples.append(loop.time() - t - TICK)

    def start(self) -> None:
        self._cpu0 = _cpu()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def phase(self) -> tuple[list[float], float, float]:
        """The samples since the last call, and the CPU seconds of the loop's thread and of the
        other threads since then."""
        s, self.samples = self.samples, []
        (m0, r0), (main, rest) = self._cpu0, _cpu()
        self._cpu0 = (main, rest)
        return s, main - m0, rest - r0


def _cpu() -> tuple[float, float]:
    """CPU seconds of this (the main, event loop) thread and of the process's other threads."""
    tick = os.sysconf("SC_CLK_TCK")
    main = rest = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                st = f.read()
        except OSError:
            continue   # a thread that ended meanwhile
        fields = st[st.rindex(")") + 2:].split()
        t = (int(fields[11]) + int(fields[12])) / tick
        if int(tid) == os.getpid():
            main += t
        else:
            rest += t
    return main, rest


def _row(name: str, wall: float, samples: list[float], loop_cpu: float, other_cpu: float, events: int = 0) -> str:
    s = sorted(samples) or [0.0]
    p99 = s[min(len(s) - 1, int(0.99 * len(s)))]
    per = f"{1e6 * (loop_cpu + other_cpu) / events:.0f}" if events else "-"
    return (f"| {name} | {wall:.1f} | {loop_cpu:.2f} | {other_cpu:.2f} | {per} | {1000 * p99:.1f} | "
            f"{1000 * s[-1]:.1f} | {sum(1 for x in s if x > 0.05)} |")


async def measure(a: argparse.Namespace, kubeconfig: str, child: subprocess.Popen[str]) -> list[str]:
    import enrich
    from enrich.config import EnrichConfig

    def command(cmd: str) -> None:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(cmd + "\n")
        child.stdin.flush()

    async def done() -> None:
        assert child.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
        assert line.strip() == "done", line

    lag = Lag()
    lag.start()
    await asyncio.sleep(0.5)
    lag.phase()
    rows = []
    e = enrich.Enricher(EnrichConfig(kubeconfig=kubeconfig))
    t0 = time.monotonic()
    e.start()
    while not e.ready:
        await asyncio.sleep(0.01)
    rows.append(_row(f"sync: first list of {a.pods:,} pods, {a.nodes:,} nodes, {a.services:,} services, "
                     f"{a.replicasets:,} ReplicaSets", time.monotonic() - t0, *lag.phase()))
    await asyncio.sleep(2.0)
    rows.append(_row("idle, watches open", 2.0, *lag.phase()))

    def relists() -> int:
        return int(e.stats()["kinds"]["pods"]["relists"])

    before = relists()
    t0 = time.monotonic()
    command("expire pods")
    await done()
    while relists() == before or e.stats()["kinds"]["pods"]["state"] != "watching":
        await asyncio.sleep(0.01)
    rows.append(_row(f"relist: pods watch 410 Gone, {a.pods:,} pods listed again", time.monotonic() - t0,
                     *lag.phase()))

    def events() -> int:
        return sum(e.stats()["kinds"]["pods"]["events"].values())

    t0 = time.monotonic()
    events0 = events()
    command(f"churn {a.churn} {a.churn_seconds}")
    await done()
    await asyncio.sleep(0.5)   # the last events in flight
    n = events() - events0
    rows.append(_row(f"churn: {a.churn:,} pod updates/s for {a.churn_seconds:.0f} s ({n:,} events)",
                     time.monotonic() - t0, *lag.phase(), events=n))
    e.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=5_000)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--replicasets", type=int, default=20_000)
    ap.add_argument("--churn", type=int, default=1000, help="pod updates a second in the churn phase")
    ap.add_argument("--churn-seconds", type=float, default=10.0)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a)
        return
    with tempfile.TemporaryDirectory() as tmp:
        child = popen_child(
            [sys.executable, "-m", "benchmarks.informer_bench", "--serve", "--workdir", tmp,
             "--pods", str(a.pods), "--nodes", str(a.nodes), "--services", str(a.services),
             "--replicasets", str(a.replicasets)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            kubeconfig = child.stdout.readline().strip()
            if not kubeconfig:
                raise SystemExit("informer_bench: the fake API server did not start")
            import uvloop

            rows = uvloop.run(measure(a, kubeconfig, child))
        finally:
            if child.stdin is not None:
                try:
                    child.stdin.write("quit\n")
                    child.stdin.flush()
                except OSError:
                    pass
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    print(f"machine: {os.cpu_count()} CPUs; event loop uvloop; the API server in another process")
    print("| phase | wall s | CPU s, loop thread | CPU s, other threads | CPU us per event | loop lag p99 ms | "
          "loop lag max ms | lags > 50 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
