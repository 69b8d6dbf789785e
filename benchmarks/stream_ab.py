"""The file sink's CPU per flow, two source trees side by side (A/B).

    python -m benchmarks.stream_ab --tree before=/tmp/old --tree after=. [--rate 100000]
        [--seconds 8] [--rounds 3] [--records 1] [--enrich-off]

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

from benchmarks.broker import free_port, free_udp_port

HERE = Path(__file__).resolve().parent


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round(tree: Path, args: argparse.Namespace, out: Path) -> tuple[float, int, int]:
    """(CPU seconds, lines written, flows sent) for one collector run."""
    port, http = free_udp_port(), free_port()
    cmd = ["taskset", "-c", "1", sys.executable, "-m", "collector.cli", "run", "--listen", f"ipfix://127.0.0.1:{port}",
           "--sink", "file", "--output-file", str(out), "--enrich", "false", "--metrics-addr", f"127.0.0.1:{http}",
           "--log-level", "warning"]
    p = subprocess.Popen(cmd, cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), stderr=subprocess.DEVNULL)
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
        g = subprocess.run(["taskset", "-c", "0", str(HERE / "bin" / "loadgen"), "--proto", "ipfix", "--to",
                            f"127.0.0.1:{port}", "--rate", str(args.rate), "--duration", str(args.seconds),
                            "--records", str(args.records)], capture_output=True, text=True, check=True)
        time.sleep(1.0)
        c1 = _cpu_seconds(p.pid)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    sent = json.loads(g.stdout.strip().splitlines()[-1])["flows"]
    with out.open("rb") as f:
        lines = sum(1 for _ in f)
    return c1 - c0, lines, sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="NAME=DIR, repeatable (built source trees)")
    ap.add_argument("--rate", type=int, default=100000, help="flows/s offered")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=1, help="flows a datagram")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, d in trees.items():
                out = Path(tmp) / f"{name}-{r}.json"
                cpu, lines, sent = _round(Path(d).resolve(), args, out)
                out.unlink()
                per = cpu / max(lines, 1) * 1e6
                best[name] = min(best.get(name, per), per)
                print(f"round {r} {name}: {cpu:.2f} s CPU, {lines} lines of {sent} flows sent "
                      f"({'lossless' if lines == sent else f'{sent - lines} missing'}): {per:.2f} us a flow", flush=True)
    for name, per in best.items():
        print(f"{name}: best {per:.2f} us a flow")


if __name__ == "__main__":
    main()
