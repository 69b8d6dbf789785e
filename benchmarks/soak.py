"""A production-like soak of `flowscope run --workers N`: real parts, watched the way an operator would.

What runs: a private Tansu broker (benchmarks.broker), the tests' fake Kubernetes API server
(tests/support/fake_kube.py) holding a few thousand pods under churn (deletes, adds that reuse
the deleted pods' addresses, a 410 relist, every other one meeting a fault two pages into the list, and a dropped watch now
and then), and the C load
generator (benchmarks/loadgen.c) as several exporters, each one address (127.0.0.x) sending
from several source ports, IPFIX, NetFlow v5/v9 and sFlow in turn. Exporters go silent and new
ones appear on new addresses while --metrics-top-exporters is smaller than their number.

What is watched, every --scrape seconds: the RSS of the supervisor and of each worker; /metrics
(no counter series ever lower than in the scrape before, at most --top exporter labels, the
flows decoded = delivered + dropped + queued); /readyz; the log's lines per minute. At the end:
the exporters stop, the queue drains, one last scrape; then SIGTERM: exit code, the workers'
`stopped:` lines, and the topic read back (what the broker holds against what was delivered),
and what the exporters sent against what flowscope counted (received, refused, kernel drops).
With --kill-worker S, a worker is killed with SIGKILL S seconds into the run instead, and the
soak reports what the operator sees (log, exit code, the last /metrics).

    .venv/bin/python -m benchmarks.soak --minutes 18 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import build
from benchmarks.broker import count_messages, create_topic, free_port, free_udp_port, start_broker
from benchmarks.cluster import BASE, objects
from collector.metrics import parse_exposition
from collector.util import popen_child, run_child

PROTOS = (("ipfix", "ipfix"), ("v5", "netflow"), ("v9", "netflow"), ("sflow", "sflow"))
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
LIST_FAULTS = (None, "expired_continue", None, "drop", None, "error500", None, "garbage")


def labels(lab: Any) -> dict[str, str]:
    """A parsed sample's labels (collector.metrics.parse_exposition: sorted (name, value) pairs)."""
    return dict(lab)


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, repr(e)


class Churn(threading.Thread):
    """Pod churn on the fake API server: every second `rate` pods deleted and as many added, the
    new ones reusing the deleted ones' addresses (IP reuse); a 410 (expire) every `gone_every`
    seconds and a dropped watch every `drop_every` seconds."""

    def __init__(self, kube: Any, pods: list[dict[str, Any]], rate: int, gone_every: float,
                 drop_every: float) -> None:
        super().__init__(daemon=True, name="churn")
        self.kube, self.rate = kube, rate
        self.live = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in pods}
        self.gone_every, self.drop_every = gone_every, drop_every
        self.stop_ev = threading.Event()
        self.counts = {"deleted": 0, "added": 0, "expired": 0, "dropped": 0}
        self.rng = random.Random(7)
        self.serial = 0

    def replace(self, n: int) -> None:
        """Delete `n` pods at random and add each again under a new name and uid, same address."""
        for key in self.rng.sample(sorted(self.live), n):
            old = self.live.pop(key)
            ns, name = key.split("/", 1)
            self.kube.delete("pods", name, ns)
            self.counts["deleted"] += 1
            self.serial += 1
            new = json.loads(json.dumps(old))
            m = new["metadata"]
            m["name"] = f"{m['name'].rsplit('-', 1)[0]}-r{self.serial:06x}"
            m["uid"] = f"churn-{self.serial:08x}"
            m.pop("resourceVersion", None)
            m["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.kube.add("pods", new)
            self.live[f"{m['namespace']}/{m['name']}"] = new
            self.counts["added"] += 1

    def run(self) -> None:
        t0 = time.monotonic()
        next_gone, next_drop = t0 + self.gone_every, t0 + self.drop_every
        while not self.stop_ev.wait(1.0):
            self.replace(self.rate)
            now = time.monotonic()
            if now >= next_gone:
                # every other relist meets a fault two pages in (both workers' lists, about):
                # a continue token compacted away, a cut connection, a 500, a body not JSON
                fault = LIST_FAULTS[self.counts["expired"] % len(LIST_FAULTS)]
                if fault:
                    self.kube.fail("pods", "list", fault, times=2, after=2)
                    self.counts[f"list_{fault}"] = self.counts.get(f"list_{fault}", 0) + 1
                self.kube.expire("pods")
                self.counts["expired"] += 1
                next_gone = now + self.gone_every
            if now >= next_drop:
                self.kube.drop_watches(self.rng.choice(["pods", "nodes", "services", "replicasets"]))
                self.counts["dropped"] += 1
                next_drop = now + self.drop_every


class Exporters:
    """Load generators, one per exporter address, each sending from `ports` source ports."""

    def __init__(self, loadgen: Path, ports: dict[str, int], dps: float, nports: int, pods: int) -> None:
        self.loadgen, self.ports, self.dps, self.nports, self.pods = loadgen, ports, dps, nports, pods
        self.running: dict[str, tuple[subprocess.Popen[str], str]] = {}
        self.sent: dict[str, dict[str, Any]] = {}
        self.next_host = 2

    def start(self, dps: float | None = None) -> str:
        addr = f"127.0.0.{self.next_host}"
        proto, listener = PROTOS[self.next_host % len(PROTOS)]
        self.next_host += 1
        argv = [str(self.loadgen), "--proto", proto, "--to", f"127.0.0.1:{self.ports[listener]}",
                "--exporters", str(self.nports), "--src", addr, "--dps", str(dps or self.dps),
                "--pods", str(self.pods), "--template-interval", "30"]
        self.running[addr] = (popen_child(argv, stdout=subprocess.PIPE, text=True), proto)
        return addr

    def stop(self, addr: str) -> None:
        proc, proto = self.running.pop(addr)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        lines = out.strip().splitlines()
        # no line: the SIGTERM came before loadgen took the signal over (it had not sent yet)
        done = json.loads(lines[-1]) if lines else {"datagrams": 0, "flows": 0, "unsent": 0, "killed_early": True}
        self.sent[addr] = {**done, "proto": proto}

    def stop_all(self) -> None:
        for addr in list(self.running):
            self.stop(addr)


class Watch:
    """Scrapes and checks /metrics and /readyz; samples RSS and the log."""

    def __init__(self, base: str, pid: int, top: int, log_path: Path) -> None:
        self.base, self.pid, self.top, self.log_path = base, pid, top, log_path
        self.prev: dict[tuple[str, Any], float] = {}
        self.present: set[tuple[str, Any]] = set()   # the counter series of the latest scrape
        self.ended: dict[tuple[str, Any], float] = {}  # series no longer shown: their last values
        self.back: list[str] = []          # counter series lower than in an earlier scrape
        self.reborn: list[str] = []        # a series that vanished and came back lower
        self.too_many: list[str] = []
        self.unready: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self.labels_seen: list[list[str]] = []
        self.last: dict[str, dict[Any, float]] = {}
        self.t0 = time.monotonic()

    def scrape(self) -> dict[str, Any]:
        t = time.monotonic() - self.t0
        code, body = get(self.base + "/metrics")
        rcode, rbody = get(self.base + "/readyz")
        row: dict[str, Any] = {"t": round(t, 1), "readyz": rcode,
                               "rss_sup_kb": rss_kb(self.pid),
                               "rss_workers_kb": [rss_kb(p) for p in children(self.pid)]}
        try:
            row["log_lines"] = sum(1 for _ in open(self.log_path))
        except OSError:
            row["log_lines"] = 0
        if rcode != 200:
            self.unready.append(f"t={t:.0f}s {rcode} {rbody.strip()[:200]}")
        if code != 200:
            row["metrics"] = code
            self.samples.append(row)
            return row
        parsed = parse_exposition(body)
        self.last = parsed
        now: dict[tuple[str, Any], float] = {}
        for name, series in parsed.items():
            if not name.endswith(COUNTER_SUFFIXES):
                continue
            for lab, v in series.items():
                now[(name, lab)] = v
                was = self.prev.get((name, lab))
                if was is not None and v < was:
                    # absent from the scrape before: a series that ended and started again
                    where = self.reborn if (name, lab) not in self.present else self.back
                    where.append(f"t={t:.0f}s {name}{labels(lab)}: {was} -> {v}")
        # a series that ended (an exporter's label given up) keeps its last value here: the sums
        # below count it, as its increases were counted while it was shown
        for key in self.present - set(now):
            self.ended[key] = self.ended.get(key, 0) + self.prev[key]
        self.present = set(now)
        self.prev.update(now)
        exporters = sorted({labels(lab).get("exporter", "") for name, s in parsed.items()
                            if name.startswith("flowscope_datagrams") for lab in s} - {"", "other"})
        self.labels_seen.append(exporters)
        if len(exporters) > self.top:
            self.too_many.append(f"t={t:.0f}s {exporters}")

        def tot(name: str) -> float:
            return sum(parsed.get(name, {}).values()) + sum(v for (n, _), v in self.ended.items() if n == name)

        flows = tot("flowscope_flows_total")
        delivered = tot("flowscope_flows_delivered_total")
        dropped = tot("flowscope_flows_dropped_total")
        queued = tot("flowscope_queue_records")
        row.update(exporters=exporters, flows=flows, delivered=delivered, dropped=dropped, queued=queued,
                   unaccounted=flows - delivered - dropped - queued,
                   datagrams=tot("flowscope_datagrams_total"),
                   received=tot("flowscope_received_datagrams_total"),
                   kernel_drops=tot("flowscope_kernel_receive_drops_total"),
                   synced=tot("flowscope_informers_synced"), workers=tot("flowscope_workers"),
                   # the exporters' decoder state (all workers): kept for every exporter seen, up
                   # to --max-exporters / --max-exporter-state, so the workers' RSS grows with it
                   # while new exporters keep coming (a new one a --churn-every)
                   exporter_state=tot("flowscope_exporter_state_bytes"))
        self.samples.append(row)
        return row


def wait_ready(base: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get(base + "/readyz", 2)[0] == 200:
            return True
        time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=18.0, help="traffic time")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--top", type=int, default=3, help="--metrics-top-exporters")
    ap.add_argument("--exporters", type=int, default=6, help="exporters sending at once")
    ap.add_argument("--ports", type=int, default=4, help="source ports per exporter")
    ap.add_argument("--dps", type=float, default=25.0, help="datagrams/s per exporter")
    ap.add_argument("--churn-every", type=float, default=60.0, help="seconds between an exporter going silent "
                    "and a new one appearing")
    ap.add_argument("--pods", type=int, default=3000)
    ap.add_argument("--pod-churn", type=int, default=5, help="pods replaced per second")
    ap.add_argument("--gone-every", type=float, default=150.0, help="seconds between 410s to the pods watches "
                    "(every other relist then meets a fault two pages in)")
    ap.add_argument("--drop-every", type=float, default=110.0, help="seconds between cut watch connections")
    ap.add_argument("--scrape", type=float, default=5.0)
    ap.add_argument("--stats-interval", type=float, default=1.0)
    ap.add_argument("--kill-worker", type=float, default=0.0, help="SIGKILL a worker this many seconds in")
    ap.add_argument("--out", default="/tmp/flowscope-soak")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loadgen = build.build()
    pod_ips = run_child([str(loadgen), "--print-pods", "--pods", str(min(args.pods, 2000))], check=True,
                             capture_output=True, text=True).stdout.split()
    pod_ips = [ip for ip in pod_ips if 0 <= int(ipaddress.IPv4Address(ip)) - BASE < 512 * 512]
    from tests.support.fake_kube import FakeKube

    broker = start_broker(log_dir=str(out))
    kube = FakeKube().start()
    kube.bookmark_before_timeout = 2.0
    objs = objects(pod_ips, pods=args.pods, nodes=512)
    for kind, items in objs.items():
        for o in items:
            kube.add(kind, o)
    kubeconfig = kube.write_kubeconfig(out / "kubeconfig.json")
    topic = create_topic(broker.bootstrap, partitions=2)
    ports = {"netflow": free_udp_port(), "ipfix": free_udp_port(), "sflow": free_udp_port()}
    maddr = f"127.0.0.1:{free_port()}"
    base = f"http://{maddr}"
    log_path = out / "flowscope.log"
    cmd = [sys.executable, "-m", "collector.cli", "run", "--workers", str(args.workers),
           "--listen", f"netflow://127.0.0.1:{ports['netflow']}", "--listen", f"ipfix://127.0.0.1:{ports['ipfix']}",
           "--listen", f"sflow://127.0.0.1:{ports['sflow']}", "--kafka-brokers", broker.bootstrap,
           "--kafka-topic", topic, "--metrics-addr", maddr, "--metrics-top-exporters", str(args.top),
           "--stats-interval", str(args.stats_interval), "--enrich", "true", "--kubeconfig", str(kubeconfig),
           "--log-format", "text"]
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    logf = open(log_path, "w")
    proc = popen_child(cmd, stdout=subprocess.DEVNULL, stderr=logf, cwd=str(Path(__file__).parent.parent))
    exp = Exporters(loadgen, ports, args.dps, args.ports, min(args.pods, 2000))
    churn = Churn(kube, objs["pods"], args.pod_churn, gone_every=args.gone_every, drop_every=args.drop_every)
    report: dict[str, Any] = {"args": vars(args), "command": cmd}
    try:
        if not wait_ready(base, 90):
            print("flowscope never became ready", file=sys.stderr)
            return 1
        watch = Watch(base, proc.pid, args.top, log_path)
        # the first exporters: one busier than the rest (it keeps its label), the others even
        keeper = exp.start(args.dps * 2)
        for _ in range(args.exporters - 1):
            exp.start()
        churn.start()
        t_end = time.monotonic() + args.minutes * 60
        next_churn = time.monotonic() + args.churn_every
        killed = None
        with open(out / "samples.jsonl", "w") as samples:
            while time.monotonic() < t_end and proc.poll() is None:
                time.sleep(args.scrape)
                row = watch.scrape()
                samples.write(json.dumps(row) + "\n")
                samples.flush()
                if time.monotonic() >= next_churn:
                    next_churn = time.monotonic() + args.churn_every
                    quiet = [a for a in exp.running if a != keeper]
                    exp.stop(quiet[0])
                    exp.start()
                if args.kill_worker and killed is None and row["t"] >= args.kill_worker:
                    workers = children(proc.pid)
                    killed = workers[-1]
                    os.kill(killed, signal.SIGKILL)
                    report["killed"] = {"pid": killed, "t": row["t"], "before": row}
                    # what /readyz and /metrics say while the supervisor stops the others
                    seen = []
                    while proc.poll() is None:
                        after = watch.scrape()
                        seen.append({k: after.get(k) for k in ("t", "readyz", "metrics", "flows", "delivered",
                                                                "dropped", "queued", "unaccounted", "workers")})
                        time.sleep(0.1)
                    report["killed"]["after"] = seen
                    report["killed"]["dropped_by_reason"] = {
                        labels(lab).get("reason"): v for lab, v in watch.last.get("flowscope_flows_dropped_total", {}).items() if v}
            exp.stop_all()
            churn.stop_ev.set()
            if proc.poll() is None:
                time.sleep(3 * args.stats_interval + 2)    # the queue drains, the workers report
                row = watch.scrape()
                samples.write(json.dumps(row) + "\n")
        report["last_scrape"] = watch.samples[-1] if watch.samples else None
        final_metrics = watch.last
        if proc.poll() is None:
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            report["sigterm_s"] = round(time.monotonic() - t, 2)
        else:
            code = proc.wait()
        report["exit_code"] = code
        logf.close()
        log_lines = log_path.read_text().splitlines()
        report["log_lines"] = len(log_lines)
        report["log_tail"] = log_lines[-25:]
        stopped = [ln for ln in log_lines if "stopped:" in ln]
        report["stopped_lines"] = stopped
        delivered_logged = sum(int(ln.split("stopped: ")[1].split()[0]) for ln in stopped)
        count = count_messages(broker.bootstrap, topic, expected=delivered_logged, idle=10.0, backend="confluent")
        report["topic_messages"] = count.messages
        report["delivered_logged"] = delivered_logged
        sent_dg = sum(s["datagrams"] for s in exp.sent.values())
        sent_fl = sum(s["flows"] for s in exp.sent.values())
        unsent = sum(s["unsent"] for s in exp.sent.values())

        def tot(name: str, **want: str) -> float:
            # with the series that ended (exporter labels given up) at their last values
            shown = list(final_metrics.get(name, {}).items())
            ended = [(lab, v) for (n, lab), v in watch.ended.items() if n == name]
            return sum(v for lab, v in shown + ended if all(labels(lab).get(k) == w for k, w in want.items()))

        report["exporters_sent"] = exp.sent
        report["accounting"] = {
            "sent_datagrams": sent_dg, "sent_flows": sent_fl, "unsent": unsent,
            "received_datagrams": tot("flowscope_received_datagrams_total"),
            "decoder_datagrams": tot("flowscope_datagrams_total"),
            "dropped_before_decoding": tot("flowscope_datagrams_dropped_total"),
            "kernel_drops": tot("flowscope_kernel_receive_drops_total"),
            "decoded_flows": tot("flowscope_flows_total"),
            "ended_series_flows": sum(v for (n, _), v in watch.ended.items() if n == "flowscope_flows_total"),
            "decode_errors": tot("flowscope_decode_errors_total"),
            "missing_template_sets": tot("flowscope_missing_template_sets_total"),
            "delivered": tot("flowscope_flows_delivered_total"),
            "dropped": {labels(lab).get("reason"): v for lab, v in final_metrics.get("flowscope_flows_dropped_total", {}).items()},
            "queued": tot("flowscope_queue_records"),
            "resent": tot("flowscope_kafka_resent_records_total"),
        }
        per = {}
        for addr, s in exp.sent.items():
            per[addr] = {"sent_datagrams": s["datagrams"], "sent_flows": s["flows"],
                         "metrics_datagrams": tot("flowscope_datagrams_total", exporter=addr),
                         "metrics_flows": tot("flowscope_flows_total", exporter=addr)}
        report["per_exporter"] = per
        report["checks"] = {"counter_went_back": watch.back, "series_back_after_gap": watch.reborn[:50],
                            "more_labels_than_top": watch.too_many, "unready": watch.unready[:50]}
        rss = [(r["t"], r["rss_sup_kb"], r["rss_workers_kb"], r.get("exporter_state")) for r in watch.samples]
        report["rss_kb"] = rss[:: max(1, len(rss) // 30)] + rss[-1:]
        report["churn"] = churn.counts
        report["enrich_stat"] = {labels(lab)["stat"]: v for lab, v in final_metrics.get("flowscope_enrich_stat", {}).items()
                                 if "error" in labels(lab)["stat"] or "relist" in labels(lab)["stat"] or "pods" in labels(lab)["stat"]}
        report["labels_over_time"] = watch.labels_seen[:: max(1, len(watch.labels_seen) // 40)]
    finally:
        for addr in list(exp.running):
            try:
                exp.stop(addr)
            except Exception:  # noqa: BLE001 - cleanup
                pass
        churn.stop_ev.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kube.stop()
        broker.stop()
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: report.get(k) for k in ("exit_code", "sigterm_s", "accounting", "checks", "topic_messages",
                                                  "delivered_logged", "log_lines")}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
