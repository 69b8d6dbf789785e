"""RSS of the pods informer over many 410 relists, with pods churned between them.

The parent runs the tests' fake API server (tests/support/fake_kube.py) with the soak's cluster
(benchmarks.cluster.objects: --pods pods on 512 nodes); a child process runs one Enricher against
it and is measured alone (the fake server's own memory stays in the parent). Each round: the
child's clock moves --round-seconds on (the soak's 150 s between 410s: tombstones expire as
they do there), --churn pods are deleted and added again under new names and uids with the same
addresses (applied by the watch), every pod address is looked up once through the compiled
reader, then a 410 forces a relist (with --faults every other one meets the soak's list faults
two pages in: a continue token expired, which restarts the list in pages of twice the size, a
cut connection, a 500, a body not JSON). After each relist the child reports its RSS (and by kind
of mapping, from smaps), glibc's mallinfo2 (bytes malloc'ed, free in its arenas), pymalloc's
blocks in use, the PodRecs the cyclic collector tracks (those of the first list are frozen by
Enricher._set_ready's gc.freeze until replaced) and tombstones, and with --tracemalloc the bytes
Python allocations hold. --trim calls malloc_trim(0) after each relist.

    .venv/bin/python -m benchmarks.relist_rss --relists 200 --faults --out /tmp/relist.jsonl 2>/dev/null
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from collector.util import popen_child


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def mallinfo2() -> dict[str, int]:
    """glibc's heap statistics (bytes): arena (the heap), uordblks (in use), fordblks (free in
    it), hblkhd (mmapped blocks); {} where there is no mallinfo2 (glibc < 2.33, musl)."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _Mallinfo2
    m = fn()
    return {k: getattr(m, k) for k in ("arena", "uordblks", "fordblks", "hblkhd")}


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def rss_parts_kb(pid: int) -> dict[str, int]:
    """Resident kB by kind of mapping: glibc's main arena ([heap]), its thread arenas (anonymous,
    64 MiB aligned, a reserved ---p rest after them), other anonymous memory (pymalloc's arenas,
    large mmapped blocks, the reader's slot arrays) and files."""
    maps: list[list[Any]] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not line[0].isupper():
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                maps.append([lo, hi, head[1], head[5] if len(head) > 5 else "", 0])
            elif head[0] == "Rss:":
                maps[-1][4] = int(head[1])
    out = {"heap": 0, "thread_arenas": 0, "anon": 0, "file": 0}
    for i, (lo, hi, _perms, name, rss) in enumerate(maps):
        nxt = maps[i + 1] if i + 1 < len(maps) else None
        if name == "[heap]":
            out["heap"] += rss
        elif name.startswith("/"):
            out["file"] += rss
        elif not name and lo % (64 << 20) == 0 and nxt is not None and nxt[0] == hi and nxt[2] == "---p":
            out["thread_arenas"] += rss
        else:
            out["anon"] += rss
    return out


def child(kubeconfig: str, trace: bool) -> None:
    """Commands on stdin, one JSON line answered on stdout each: advance S, lookup, report."""
    import tracemalloc

    import enrich
    from enrich.index import PodRec

    if trace:
        tracemalloc.start()
    offset = [0.0]
    cfg = enrich.EnrichConfig(kubeconfig=kubeconfig, watch_timeout_seconds=300, backoff_initial_seconds=0.02,
                              backoff_max_seconds=0.2, backoff_jitter=0.0)
    e = enrich.Enricher(cfg, clock=lambda: time.time() + offset[0])
    e.start()
    if not e.wait_ready(60):
        raise SystemExit("not ready in 60 s")
    inf = e._informers["pods"]
    for line in sys.stdin:
        cmd, *arg = line.split()
        out: dict[str, Any] = {}
        if cmd == "advance":
            offset[0] += float(arg[0])
        elif cmd == "lookup":
            # every address once, now (the compiled reader's per-address cache holds entries)
            now = int((time.time() + offset[0]) * 1000)
            for ip in list(e.index._ips):
                e.enrich(ip, ip, b"", now, -1)
        elif cmd == "trim":
            ctypes.CDLL(None).malloc_trim(0)
        elif cmd == "report":
            st = inf.stats
            out = {"relists": st.relists, "state": st.state, "errors": dict(st.errors), "events": dict(st.events),
                   "rss_kb": rss_kb(), "blocks": sys.getallocatedblocks(), **mallinfo2(), **e.index.counts()}
            if arg and arg[0] == "full":
                out["podrecs"] = sum(1 for o in gc.get_objects() if type(o) is PodRec)
                out["gc_objects"] = len(gc.get_objects())
                out["frozen"] = gc.get_freeze_count()
                if trace:
                    out["traced"] = tracemalloc.get_traced_memory()[0]
        print(json.dumps(out), flush=True)
    e.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relists", type=int, default=200)
    ap.add_argument("--pods", type=int, default=3000)
    ap.add_argument("--churn", type=int, default=750, help="pods replaced a round (the soak: 5/s x 150 s)")
    ap.add_argument("--round-seconds", type=float, default=150.0, help="the child's clock moves this much a round")
    ap.add_argument("--faults", action="store_true", help="every other relist meets a fault two pages in, in "
                    "the soak's order (benchmarks.soak.LIST_FAULTS)")
    ap.add_argument("--trim", action="store_true", help="malloc_trim(0) in the child after each relist")
    ap.add_argument("--tracemalloc", action="store_true", help="trace Python allocations in the child (slower)")
    ap.add_argument("--out", type=Path, help="one JSON line per relist")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.tracemalloc)
        return 0

    from benchmarks.cluster import objects
    from benchmarks.soak import LIST_FAULTS, Churn
    from tests.support.fake_kube import FakeKube

    kube = FakeKube().start()
    objs = objects([], pods=args.pods, nodes=512)
    for kind in ("nodes", "replicasets", "services", "pods"):
        for o in objs[kind]:
            kube.add(kind, o)
    churn = Churn(kube, objs["pods"], args.churn, gone_every=0.0, drop_every=0.0)   # (not started: replace())
    tmp = tempfile.TemporaryDirectory()
    kc = kube.write_kubeconfig(Path(tmp.name) / "kubeconfig")
    cmd = [sys.executable, "-m", "benchmarks.relist_rss", "--child", str(kc)] + (["--tracemalloc"] * args.tracemalloc)
    proc = popen_child(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    kube.server.handle_error = lambda *a: None  # type: ignore[union-attr,method-assign] # (the child's exit)
    assert proc.stdin is not None and proc.stdout is not None

    def ask(line: str) -> dict[str, Any]:
        proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(proc.stdout.readline())  # type: ignore[union-attr]

    def wait(pred: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while not pred(ask("report")):
            if time.monotonic() > deadline:
                raise SystemExit(f"the child did not get to {what} in 60 s")
            time.sleep(0.02)

    out = args.out.open("w") if args.out else None
    try:
        t0 = time.monotonic()
        for i in range(args.relists + 1):
            if i:
                ask(f"advance {args.round_seconds}")
                churn.replace(args.churn)
                added = churn.serial
                wait(lambda r, n=added: r["events"]["ADDED"] >= n and r["events"]["DELETED"] >= n, "the churn")
                ask("lookup")
                fault = LIST_FAULTS[(i - 1) % len(LIST_FAULTS)] if args.faults else None
                if fault:
                    kube.fail("pods", "list", fault, times=2, after=2)
                kube.expire("pods")   # a 410: the relist's resourceVersion is one the watch may start from
                wait(lambda r, n=i: r["relists"] >= n and r["state"] == "watching", f"relist {i}")
                if args.trim:
                    ask("trim")
                kube.snapshots.clear()
                kube.requests.clear()
            r = ask("report full")
            r.update({f"rss_{k}_kb": v for k, v in rss_parts_kb(proc.pid).items()})
            r["round"], r["t"] = i, round(time.monotonic() - t0, 1)
            line = json.dumps(r)
            if out:
                out.write(line + "\n")
                out.flush()
            if i % 10 == 0 or i == args.relists:
                print(f"relists {r['relists']:4d}  rss {r['rss_kb'] / 1000:7.1f} MB  malloc'ed "
                      f"{r.get('uordblks', 0) / 1e6:6.1f} free {r.get('fordblks', 0) / 1e6:6.1f} MB  podrecs "
                      f"{r['podrecs']}  tombstones {r['tombstones']}"
                      + (f"  traced {r['traced'] / 1e6:.1f} MB" if "traced" in r else ""), flush=True)
    finally:
        proc.stdin.close()
        proc.wait(30)
        kube.stop()
        if out:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
