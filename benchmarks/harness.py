"""Benchmark harness: the highest lossless flow rate per collector and protocol.

``python -m benchmarks.harness`` (or ``make bench``) starts a private Tansu broker, then for
each collector (flowscope, pmacct's nfacctd/sfacctd -> Kafka JSON, nfdump's nfcapd/sfcapd ->
binary files) and protocol it sweeps the offered rate of the C load generator and finds the
highest rate where under 0.1 % of the flows sent fail to arrive, over runs of at least 10 s.
What counts as arrived is what a consumer reads back from the Kafka topic (or what nfdump
reads back from nfcapd's files), never what the collector says it sent.

Per trial it records offered and delivered flows/s, the collector's CPU (all its processes,
from /proc/<pid>/stat sampled every 0.25-0.5 s, as CPU-seconds per second of load: 100 = one core), its peak memory
(the peak of the summed PSS of its processes, sampled; plus VmHWM of the main process), kernel receive drops on its socket (/proc/net/udp) and system-wide UDP
receive-buffer errors (/proc/net/snmp), and how long it took to drain after the load stopped.
Results: results.json, results.md (a table) and delivered_vs_offered.png in --out.

Pinning (when the machine has 2+ CPUs): generator and broker on CPU 0, the collector on
CPU 1, as the reference numbers in ../shared/EXPORTERS.md were taken.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import broker as brk
from benchmarks import peers
from benchmarks.build import build as build_loadgen
from collector.util import popen_child

REPO = Path(__file__).resolve().parent.parent
PROTOS = ("ipfix", "v5", "v9", "sflow")
RCVBUF = 32 * 1024 * 1024  # what each collector asks for (flowscope's default --rcvbuf)


def shared_rcvbuf(requested: int = RCVBUF) -> int:
    """The UDP receive buffer every collector gets: ``requested``, capped at net.core.rmem_max.

    pmacct (nfacctd_pipe_size) and nfcapd (-B) ask with a plain SO_RCVBUF, which the kernel
    caps at rmem_max; flowscope running as root would get more (SO_RCVBUFFORCE), a deeper
    queue for it alone. A comparison of loss at a rate gives them all the same buffer.
    """
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return min(requested, int(f.read()))
    except (OSError, ValueError):
        return requested


@dataclass
class Env:
    """What a collector start function gets for one trial."""

    proto: str
    port: int  # UDP port the generator sends to
    bootstrap: str | None
    topic: str | None
    cpus: str | None
    workers: int
    log_dir: str
    rcvbuf: int = field(default_factory=shared_rcvbuf)  # SO_RCVBUF for every collector alike


@dataclass
class CollectorSpec:
    """A collector under test: how to start it and where its flows land."""

    name: str
    start: Callable[[Env], peers.Peer]
    sink: str  # "kafka" or "files"
    protos: tuple[str, ...] = PROTOS
    workers: int = 1
    loadgen_args: tuple[str, ...] = ()


# ---------------------------------------------------------------- collectors


_FLOWSCOPE_EXTRA: list[str] = []  # --flowscope-args, set by main()


def _start_flowscope(env: Env, extra: tuple[str, ...] = ()) -> peers.Peer:
    nf_port = env.port if env.proto != "sflow" else brk.free_udp_port()
    sf_port = env.port if env.proto == "sflow" else brk.free_udp_port()
    metrics_port = brk.free_port()
    cmd = [
        sys.executable, "-m", "collector.cli", "run",
        "--listen", f"netflow://127.0.0.1:{nf_port}",
        "--listen", f"sflow://127.0.0.1:{sf_port}",
        "--kafka-brokers", env.bootstrap or "",
        "--kafka-topic", env.topic or "",
        "--metrics-addr", f"127.0.0.1:{metrics_port}",
        "--workers", str(env.workers),
        "--rcvbuf", str(env.rcvbuf),
        *_FLOWSCOPE_EXTRA,
        *extra,
    ]
    if env.cpus is not None:
        cmd = ["taskset", "-c", env.cpus, *cmd]
    log_path = os.path.join(env.log_dir, f"flowscope-{env.proto}-{env.port}.log")
    with open(log_path, "wb") as log:
        proc = popen_child(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    peer = peers.Peer(name="flowscope", proc=proc, workdir=env.log_dir, log_path=log_path,
                      ports={env.proto: env.port}, cpus=env.cpus, topic=env.topic,
                      extra={"metrics": f"http://127.0.0.1:{metrics_port}"}, cmd=cmd)
    try:
        peers._wait_udp_bound(proc.pid, env.port, timeout=30)  # noqa: SLF001
    except TimeoutError:
        peer.stop()
        raise RuntimeError(f"flowscope did not start:\n{peer.log_tail()}") from None
    # readiness: /readyz when the collector serves it, else a short grace period
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.2)
    if proc.poll() is not None:
        raise RuntimeError(f"flowscope exited with {proc.returncode}:\n{peer.log_tail()}")
    return peer


def _start_pmacct(env: Env) -> peers.Peer:
    assert env.bootstrap and env.topic
    return peers.start_pmacct(env.proto, port=env.port, bootstrap=env.bootstrap, topic=env.topic, cpus=env.cpus,
                              rcvbuf=env.rcvbuf)


def _start_nfcapd(env: Env) -> peers.Peer:
    return peers.start_nfcapd(env.proto, port=env.port, cpus=env.cpus, rcvbuf=env.rcvbuf)


def collector_specs(workers: list[int], variants: list[tuple[str, tuple[str, ...]]] | None = None,
                    ) -> dict[str, list[CollectorSpec]]:
    """Registry of collectors by name; flowscope yields one entry per worker count and variant
    (--variant NAME=ARGS: the same flowscope with more arguments, measured in the same run)."""
    return {
        "flowscope": [CollectorSpec(f"flowscope-w{w}{'-' + name if name else ''}",
                                    functools.partial(_start_flowscope, extra=extra), "kafka", workers=w)
                      for name, extra in (variants or [("", ())]) for w in workers],
        "pmacct": [CollectorSpec("pmacct", _start_pmacct, "kafka")],
        "nfcapd": [CollectorSpec("nfcapd", _start_nfcapd, "files")],
    }


def scrape_metrics(url: str, prefixes: tuple[str, ...] = ("flowscope_",)) -> dict[str, float]:
    """Prometheus text from ``url``/metrics summed per ``name{labels}`` line (no parser deps)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line or line.startswith("#") or not line.startswith(prefixes):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = out.get(key, 0.0) + float(value)
        except ValueError:
            continue
    return out


def _family(m: dict[str, float], name: str) -> float:
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


# ---------------------------------------------------------------- one trial


@dataclass
class Trial:
    collector: str
    proto: str
    workers: int
    target_flows_s: float
    duration_s: float
    sent_flows: int = 0
    sent_datagrams: int = 0
    offered_flows_s: float = 0.0
    delivered: int = 0
    delivered_flows_s: float = 0.0
    loss: float = 1.0
    cpu_pct: float = 0.0  # CPU-seconds per second during the load (100 = one core)
    cpu_total_pct: float = 0.0  # CPU-seconds of load + drain, per second of load
    peak_rss_mib: float = 0.0  # peak of the summed PSS of all the collector's processes
    root_hwm_mib: float = 0.0  # VmHWM of the main process
    kernel_drops: int = 0
    udp_rcvbuf_errors: int = 0
    drain_s: float = 0.0
    count_s: float = 0.0  # how long reading the topic back took
    # flowscope only, from its /metrics after the drain: its own accounting of the loss
    metrics: dict = field(default_factory=dict)
    accounting_gap: int | None = None  # sent - (delivered + flows dropped + kernel-dropped data datagrams x R)
    template_drops: int = 0   # kernel-dropped datagrams that can only have been templates (the gap's rest)
    generator_limited: bool = False
    error: str | None = None
    loadgen: dict = field(default_factory=dict)
    enriched_share: float | None = None  # of a sample read back: share with SrcK8S_Name (--enrich)
    command: str = ""  # how the collector ran (a peer's config file: the copy kept in the log directory)


_last_sample_max = [0]


def _wait_quiescent(cpu: peers.CpuTracker, *, max_wait: float, idle_cpu: float = 0.03, hold: float = 1.5,
                    sample: Callable[[], int] | None = None) -> float:
    """Wait until the collector's processes use < idle_cpu of a core for ``hold`` seconds.

    A collector still draining (pmacct purging its cache, flowscope flushing Kafka batches)
    burns CPU; when it stops, everything it will deliver has been handed to the broker.
    Returns the seconds until it went idle (the hold and the sampling interval not counted;
    max_wait when it never did).
    """
    t0 = time.monotonic()
    last_cpu, last_t, quiet_since = cpu.update(), t0, None
    _last_sample_max[0] = 0
    while time.monotonic() - t0 < max_wait:
        time.sleep(0.5)
        if sample is not None:
            _last_sample_max[0] = max(_last_sample_max[0], sample())
        now, used = time.monotonic(), cpu.update()
        busy = (used - last_cpu) / max(now - last_t, 1e-6)
        last_cpu, last_t = used, now
        if busy < idle_cpu:
            # the sample that showed it idle covers the interval since the previous one
            quiet_since = quiet_since or (now - 0.5)
            if now - quiet_since >= hold:
                return max(0.0, quiet_since - t0)
        else:
            quiet_since = None
    return time.monotonic() - t0


def run_trial(
    spec: CollectorSpec,
    proto: str,
    rate: float,
    *,
    duration: float,
    broker: brk.Broker | None,
    loadgen: Path,
    cpus: dict[str, str | None],
    log_dir: str,
    max_drain: float,
    loadgen_extra: list[str],
    count_with: str = "aiokafka",
    partitions: int = 1,
    rcvbuf: int | None = None,
) -> Trial:
    tr = Trial(collector=spec.name, proto=proto, workers=spec.workers, target_flows_s=rate, duration_s=duration)
    topic = brk.create_topic(broker.bootstrap, partitions=partitions) if spec.sink == "kafka" and broker else None
    port = brk.free_udp_port()
    env = Env(proto=proto, port=port, bootstrap=broker.bootstrap if broker else None, topic=topic,
              cpus=cpus["collector"], workers=spec.workers, log_dir=log_dir,
              rcvbuf=rcvbuf if rcvbuf is not None else shared_rcvbuf())
    peer = None
    gen: subprocess.Popen[str] | None = None
    try:
        peer = spec.start(env)
        tr.command = shlex.join(peer.cmd)
        if peer.config:   # the peer's private directory goes after the trial: keep its config beside the logs
            kept = os.path.join(log_dir, f"{peer.name}-{proto}-{int(rate)}{Path(peer.config).suffix}")
            shutil.copyfile(peer.config, kept)
            tr.command = shlex.join(kept if a == peer.config else a for a in peer.cmd)
        # idle baseline: what the collector burns with no load (timers, metrics, client
        # heartbeats); "done draining" is judged against it
        cpu = peers.CpuTracker(peer.pid)
        c_a, t_a = cpu.update(), time.monotonic()
        time.sleep(1.0)
        idle_cpu = (cpu.update() - c_a) / (time.monotonic() - t_a)
        snmp0 = peers.snmp_udp_counters()
        cpu0 = cpu.update()
        cmd = [str(loadgen), "--proto", proto, "--to", f"127.0.0.1:{port}", "--duration", str(duration),
               "--rate", str(int(rate)), *spec.loadgen_args, *loadgen_extra]
        if cpus["generator"] is not None:
            cmd = ["taskset", "-c", cpus["generator"], *cmd]
        gen = popen_child(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        hwm = 0
        while gen.poll() is None:  # sample CPU and memory while processes come and go
            hwm = max(hwm, peers.tree_pss_kib(peer.pids()))
            cpu.update()
            time.sleep(0.25)
        out, err = gen.communicate()
        if gen.returncode != 0:
            raise RuntimeError(f"loadgen failed ({gen.returncode}): {err.strip()}")
        g = json.loads(out.strip().splitlines()[-1])
        tr.loadgen = g
        tr.sent_flows, tr.sent_datagrams = g["flows"], g["datagrams"]
        tr.offered_flows_s = g["flows_per_s"]
        tr.generator_limited = g["flows_per_s"] < 0.97 * rate
        tr.kernel_drops = peers.udp_drops(port)
        tr.cpu_pct = 100.0 * (cpu.update() - cpu0) / max(g["elapsed_s"], 1e-6)
        hwm = max(hwm, peers.tree_pss_kib(peer.pids()))
        tr.drain_s = _wait_quiescent(cpu, max_wait=max_drain, idle_cpu=max(0.03, 1.5 * idle_cpu + 0.02),
                                     sample=lambda: peers.tree_pss_kib(peer.pids()) if peer else 0)
        tr.kernel_drops = max(tr.kernel_drops, peers.udp_drops(port))
        hwm = max(hwm, peers.tree_pss_kib(peer.pids()), _last_sample_max[0])
        tr.root_hwm_mib = peers.vm_hwm_kib([peer.pid]) / 1024.0
        tr.cpu_total_pct = 100.0 * (cpu.update() - cpu0) / max(g["elapsed_s"], 1e-6)
        if "metrics" in peer.extra:
            m = scrape_metrics(peer.extra["metrics"])
            tr.metrics = {k: v for k, v in m.items() if any(
                k.startswith(f) for f in ("flowscope_flows", "flowscope_datagrams_dropped",
                                          "flowscope_kernel_receive_drops", "flowscope_received_datagrams",
                                          "flowscope_decode_errors", "flowscope_missing_template_sets"))}
        tr.udp_rcvbuf_errors = peers.snmp_udp_counters().get("RcvbufErrors", 0) - snmp0.get("RcvbufErrors", 0)
        tr.peak_rss_mib = hwm / 1024.0
        if not peer.alive():
            tr.error = f"collector exited with {peer.proc.returncode}"
        peer.stop()
        if spec.sink == "kafka":
            assert broker and topic
            c = brk.count_messages(broker.bootstrap, topic, expected=tr.sent_flows, idle=3.0, backend=count_with,
                                   keep=200)
            tr.count_s = c.seconds
            tr.delivered = c.messages
            if c.sample and spec.name.startswith("flowscope") and "--kubeconfig" in _FLOWSCOPE_EXTRA:
                tr.enriched_share = sum(1 for m in c.sample if b'"SrcK8S_Name"' in m) / len(c.sample)
        else:
            assert peer.nfcapd_dir
            tr.delivered = peers.count_nfcapd_flows(peer.nfcapd_dir)
        tr.delivered_flows_s = tr.delivered / max(g["elapsed_s"], 1e-6)
        tr.loss, over = loss_of(sent=tr.sent_flows, delivered=tr.delivered)
        if over and tr.error is None:
            tr.error = over
        if tr.metrics:
            per = g.get("records_per_datagram", 0)
            dropped = _family(tr.metrics, "flowscope_flows_dropped_total")
            tr.accounting_gap = int(tr.sent_flows - tr.delivered - dropped - tr.kernel_drops * per)
            # The kernel's drop counter does not say which datagrams it dropped: a template datagram
            # (IPFIX, v9) carries no flows, so each one among them makes the gap `per` too negative.
            tmpl = min(int(g.get("template_datagrams", 0)), tr.kernel_drops)
            if per and tr.accounting_gap < 0 and -tr.accounting_gap % per == 0 and -tr.accounting_gap // per <= tmpl:
                tr.template_drops = -tr.accounting_gap // per
                tr.accounting_gap = 0
    except Exception as e:  # noqa: BLE001 - a failed trial is a result, the sweep goes on
        tr.error = _one_line(f"{type(e).__name__}: {e}")
    finally:
        if gen is not None and gen.poll() is None:   # interrupted (SIGTERM, Ctrl-C) mid-load
            gen.kill()
            gen.wait()
        if peer is not None:
            peer.stop()
            if peer.workdir != log_dir:       # a peer's private directory: keep its log, drop the rest
                keep = os.path.join(log_dir, f"{peer.name}-{proto}-{int(rate)}.log")
                try:
                    shutil.copyfile(peer.log_path, keep)
                except OSError:
                    pass
                peer.cleanup()
        if topic and broker:
            brk.delete_topic(broker.bootstrap, topic)
    return tr


def loss_of(*, sent: int, delivered: int) -> tuple[float, str | None]:
    """The share of the flows sent that was not read back, and an error when more was read back
    than sent: duplicates (pmacct purging one cache twice, a producer's retries) would hide as
    many lost flows, so that count cannot tell loss and the trial is not lossless."""
    if not sent:
        return 1.0, None
    if delivered > sent:
        return 0.0, f"{delivered - sent} more flows read back than sent (duplicates): the count cannot show loss"
    return 1.0 - delivered / sent, None


def _one_line(text: str, limit: int = 300) -> str:
    """An error as one table-safe line: the first line plus the last non-empty one (a
    traceback's exception), pipes escaped."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    msg = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return msg.replace("|", "\\|")[:limit]


# ---------------------------------------------------------------- sweep


def sweep(spec: CollectorSpec, proto: str, *, start: float, max_trials: float, max_loss: float,
          precision: float, log: Callable[[str], None], **kw) -> tuple[Trial | None, list[Trial]]:
    """Double the rate until loss, then bisect; returns (best lossless trial, all trials)."""
    trials: list[Trial] = []
    good: Trial | None = None
    bad: Trial | None = None
    rate = start
    while len(trials) < max_trials:
        tr = run_trial(spec, proto, rate, **kw)
        trials.append(tr)
        ok = tr.error is None and tr.loss < max_loss
        log(f"  {spec.name:14s} {proto:5s} target {rate:>11,.0f}/s offered {tr.offered_flows_s:>11,.0f}/s "
            f"delivered {tr.delivered_flows_s:>11,.0f}/s loss {tr.loss:7.3%} cpu {tr.cpu_pct:4.0f}/{tr.cpu_total_pct:4.0f}% "
            f"rss {tr.peak_rss_mib:6.0f}MiB drops {tr.kernel_drops} drain {tr.drain_s:.1f}s"
            + (f" unaccounted {tr.accounting_gap}" if tr.accounting_gap is not None else "")
            + (f" ({tr.template_drops} of the kernel drops were template datagrams)" if tr.template_drops else "")
            + (" GENERATOR-LIMITED" if tr.generator_limited else "") + (f" ERROR {tr.error}" if tr.error else ""))
        if ok:
            if good is None or tr.offered_flows_s > good.offered_flows_s:
                good = tr
            if tr.generator_limited:
                break  # the collector kept up with everything the generator could send
        else:
            if tr.error and good is None and bad is None and ("did not start" in tr.error
                                                               or "not installed" in tr.error):
                break
            bad = tr if bad is None or rate < bad.target_flows_s else bad
        if bad is None:
            rate *= 2
        elif good is None:
            rate = bad.target_flows_s / 4
            if rate < 1000:
                break
        else:
            if bad.target_flows_s / good.target_flows_s <= 1 + precision:
                break
            rate = (good.target_flows_s + bad.target_flows_s) / 2
    return good, trials


# ---------------------------------------------------------------- reporting


def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return {"host": platform.node(), "kernel": platform.release(), "cpu": model, "cpus": os.cpu_count(),
            "memory": mem, "python": platform.python_version()}


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def write_markdown(path: Path, meta: dict, best: list[dict]) -> None:
    lines = [
        "# flowscope benchmark run",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']['cpu']} x{meta['machine']['cpus']}, {meta['machine']['memory']}, "
        f"Linux {meta['machine']['kernel']}",
        f"- pinning: generator on CPU {meta['cpus']['generator']}, broker on CPU {meta['cpus']['broker']}, "
        f"collector on CPU {meta['cpus']['collector']} (workers > 1: CPU {meta['cpus']['collector_multi']})",
        f"- command: `{meta['command']}`",
        f"- generator: `loadgen {' '.join(meta['loadgen_extra'])}` (C, sendmmsg), one fresh collector per trial",
        f"- Kafka: a fresh topic per trial, {meta.get('partitions', 1)} partition(s)",
        *([f"- UDP receive buffer: {meta['rcvbuf']} bytes for every collector (SO_RCVBUF; net.core.rmem_max caps "
           "pmacct's and nfcapd's, so flowscope gets no more)"] if meta.get("rcvbuf") else []),
        f"- flowscope: `{' '.join(meta['flowscope_args']) or 'defaults'}`"
        + (f", enrichment on against a simulated cluster ({', '.join(f'{n} {k}' for k, n in meta['enrich'].items())}; "
           "share of enriched flows in a sample of each trial's topic in the last column)" if meta.get("enrich") else ""),
        *(["- variants (flowscope-wN-NAME adds these arguments): "
           + "; ".join(f"{n}: `{a or 'nothing more'}`" for n, a in meta["variants"].items())] if meta.get("variants") else []),
        f"- trial length {meta['duration_s']} s; lossless = under {meta['max_loss']:.1%} of sent flows missing "
        "from the Kafka topic (read back by a consumer) or from nfcapd's files (read back by nfdump)",
        "",
        "| collector | protocol | max lossless flows/s | loss there | CPU % (load) | CPU % (load+drain) "
        "| peak PSS MiB | kernel drops | drain s | first lossy offered flows/s (loss) | trials | enriched |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in best:
        g = b["best"]
        f = b["first_lossy"]
        lossy = f"{_fmt_rate(f['offered_flows_s'])} ({f['loss']:.2%})" if f else "-"
        if g:
            # no trial lost: the sweep ended (--max-trials) below the ceiling, which is higher
            lim = (" (generator max)" if g["generator_limited"]
                   else " (no trial lost: a lower bound)" if not f else "")
            lines.append(
                f"| {b['collector']} | {b['proto']} | {_fmt_rate(g['delivered_flows_s'])}{lim} | {g['loss']:.3%} | "
                f"{g['cpu_pct']:.0f} | {g['cpu_total_pct']:.0f} | {g['peak_rss_mib']:.0f} | {g['kernel_drops']} | {g['drain_s']:.1f} | "
                f"{lossy} | {b['trials']} | {_share(g.get('enriched_share'))} |")
        else:
            err = b.get("error") or "no lossless rate found"
            lines.append(f"| {b['collector']} | {b['proto']} | - | - | - | - | - | - | - | {lossy} | {b['trials']} ({err}) | - |")
    commands = [(b["collector"], b["proto"], t["command"]) for b in best
                for t in (b["best"] or b["first_lossy"],) if t and t.get("command")]
    if commands:
        lines += ["", "Collector commands (one trial's of each row; ports and directories change per trial):", ""]
        lines += [f"- {c} {p}: `{cmd}`" for c, p, cmd in commands]
    lines += ["", "CPU % is CPU-seconds used by all the collector's processes (including pmacct's purge "
              "children) per second of load, 100 = one core: during the load, and including the drain after it.",
              "Drain: seconds after the load stopped until the collector went idle."]
    path.write_text("\n".join(lines) + "\n")


#: what the harness says when it cannot draw the plot (the bench extra is not installed)
NO_MATPLOTLIB = "no plot: matplotlib is not installed; make bench installs it (pip install -e '.[bench]')"


def write_plot(path: Path, trials: list[dict], best: list[dict] | None = None) -> str:
    """One panel per protocol: delivered vs offered flows/s per collector (log-log), the
    lossless diagonal, and a star on each collector's highest lossless rate. Returns the path
    written, or why there is no plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return NO_MATPLOTLIB
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for t in trials:
        if t["error"] is None:
            series.setdefault(t["proto"], {}).setdefault(t["collector"], []).append(
                (t["offered_flows_s"], t["delivered_flows_s"]))
    if not series:
        return "no plot: no trial completed"
    protos = [p for p in PROTOS if p in series]
    cols = 2 if len(protos) > 1 else 1
    rows = (len(protos) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 5 * rows), squeeze=False)
    colors: dict[str, str] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, proto in enumerate(protos):
        ax = axes[i // cols][i % cols]
        hi, lo = 1.0, float("inf")
        for coll, pts in sorted(series[proto].items()):
            pts.sort()
            color = colors.setdefault(coll, palette[len(colors) % len(palette)])
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            hi, lo = max(hi, *xs, *ys), min(lo, *xs, *ys)
            ax.plot(xs, ys, marker="o", color=color, label=coll)
        for b in best or []:
            if b["proto"] == proto and b["best"]:
                g = b["best"]
                ax.plot([g["offered_flows_s"]], [g["delivered_flows_s"]], marker="*", markersize=15,
                        color=colors.get(b["collector"], "black"), linestyle="none")
        ax.plot([lo * 0.8, hi * 1.2], [lo * 0.8, hi * 1.2], color="grey", linestyle=":", linewidth=1,
                label="lossless")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{proto}: delivered vs offered (star: max lossless)")
        ax.set_xlabel("offered flows/s")
        ax.set_ylabel("delivered flows/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for j in range(len(protos), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(allow_abbrev=False, prog="python -m benchmarks.harness", description=__doc__.splitlines()[0])
    ap.add_argument("--collectors", default="flowscope,pmacct,nfcapd",
                    help="comma list from: flowscope, pmacct, nfcapd (default all)")
    ap.add_argument("--protos", default=",".join(PROTOS), help="comma list from ipfix,v5,v9,sflow")
    ap.add_argument("--workers", default="1,2", help="flowscope --workers values to measure")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per trial (>= 10 for results)")
    ap.add_argument("--start-rate", type=float, default=50000, help="first offered rate, flows/s")
    ap.add_argument("--max-trials", type=int, default=8, help="trials per collector and protocol")
    ap.add_argument("--max-loss", type=float, default=0.001, help="loss fraction still counted lossless")
    ap.add_argument("--precision", type=float, default=0.15, help="stop bisecting when bad/good <= 1+this")
    ap.add_argument("--max-drain", type=float, default=60.0, help="max seconds to wait for a collector to drain")
    ap.add_argument("--exporters", type=int, default=4,
                    help="generator exporters (source ports); SO_REUSEPORT spreads exporters, not datagrams, "
                    "over flowscope workers, so --workers N needs several")
    ap.add_argument("--partitions", type=int, default=1,
                    help="partitions of each trial's topic (the keyed modes write a batch per partition)")
    ap.add_argument("--rcvbuf", type=int, default=RCVBUF, metavar="BYTES",
                    help="UDP receive buffer for every collector alike (flowscope --rcvbuf, nfacctd_pipe_size, "
                    "nfcapd -B), capped at net.core.rmem_max since pmacct and nfcapd cannot exceed it "
                    f"(default {RCVBUF})")
    ap.add_argument("--flowscope-args", default="",
                    help="extra flags for flowscope run (e.g. '--kafka-connections 1')")
    ap.add_argument("--enrich", action="store_true",
                    help="run flowscope with Kubernetes enrichment against a simulated cluster (benchmarks/cluster.py: "
                    "the fake API server with a Pod for every generator address)")
    ap.add_argument("--count-with", choices=("aiokafka", "confluent"), default="aiokafka",
                    help="consumer that reads the topic back (confluent is faster for big runs)")
    ap.add_argument("--records", type=int, default=None, metavar="R",
                    help="records per data datagram for every protocol (default: loadgen's, IPFIX/v9 25, v5 30, "
                    "sFlow 8); Open vSwitch sends one IPFIX data record per message, so --records 1 measures "
                    "the datagram rate an OVN-Kubernetes node's flows really cost")
    ap.add_argument("--no-ifname", action="store_true",
                    help="IPFIX without the varlen interfaceName (IE 82) OVS sends, for every collector")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "bin" / "results"), help="output directory")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="measure flowscope once per variant, each with these extra arguments (repeatable; "
                         "NAME= with nothing after it is flowscope with --flowscope-args alone)")
    ap.add_argument("--collector-cpus", default=None, metavar="LIST",
                    help="taskset CPU list for flowscope whatever its workers (default: CPU 1 for one "
                         "worker, all CPUs for more)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run, under 2 minutes with the three collectors: IPFIX only, flowscope with one "
                    "worker, two 2 s trials per collector (what is given explicitly stays as given)")
    args = ap.parse_args(argv)
    if args.quick:
        # each option keeps a value given on the command line (one that differs from its default)
        for name, value in (("duration", 2.0), ("max_trials", 2), ("protos", "ipfix"), ("workers", "1")):
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
    return args


def loadgen_args(args: argparse.Namespace) -> list[str]:
    """The generator's arguments every trial of the run shares (the rate and duration aside)."""
    return (["--exporters", str(args.exporters)] + (["--records", str(args.records)] if args.records else [])
            + (["--no-ifname"] if args.no_ifname else []))


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the finally blocks: stop the broker and collectors


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _sigterm)
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = str(out / "logs")
    os.makedirs(log_dir, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    ncpu = os.cpu_count() or 1
    pin = not args.no_pin and ncpu >= 2
    cpus = {
        "generator": "0" if pin else None,
        "broker": "0" if pin else None,
        "collector": "1" if pin else None,
        "collector_multi": f"1-{ncpu - 1}" if pin and ncpu > 2 else ("0-1" if pin else None),
    }
    if args.collector_cpus and pin:
        cpus["collector"] = cpus["collector_multi"] = args.collector_cpus
    loadgen = build_loadgen()
    protos = [p for p in args.protos.split(",") if p]
    for p in protos:
        if p not in PROTOS:
            raise SystemExit(f"unknown protocol {p!r}")
    workers = [int(w) for w in args.workers.split(",") if w]
    variants: list[tuple[str, tuple[str, ...]]] = []
    for v in args.variant:
        name, sep, vargs = v.partition("=")
        if not sep or not name.replace("-", "").replace("_", "").isalnum():
            raise SystemExit(f"--variant {v!r}: expected NAME=ARGS")
        variants.append((name, tuple(shlex.split(vargs))))
    registry = collector_specs(workers, variants or None)
    specs: list[CollectorSpec] = []
    for name in args.collectors.split(","):
        if name not in registry:
            raise SystemExit(f"unknown collector {name!r} (known: {', '.join(registry)})")
        specs.extend(registry[name])
    if any(s.name.startswith("flowscope") for s in specs) and not (REPO / "collector" / "cli.py").exists():
        log("collector/cli.py not found: skipping flowscope")
        specs = [s for s in specs if not s.name.startswith("flowscope")]

    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "cpus": cpus,
        "command": "python -m benchmarks.harness " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "duration_s": args.duration,
        "max_loss": args.max_loss,
        "loadgen_extra": loadgen_args(args),
        "flowscope_args": shlex.split(args.flowscope_args),
        "partitions": args.partitions,
        "rcvbuf": shared_rcvbuf(args.rcvbuf),
        "variants": {name: " ".join(extra) for name, extra in variants},
    }
    _FLOWSCOPE_EXTRA[:] = meta["flowscope_args"]
    cluster = None
    if args.enrich:
        from benchmarks.cluster import Cluster, loadgen_pods

        cluster = Cluster(loadgen_pods(loadgen, meta["loadgen_extra"]), log_dir)
        _FLOWSCOPE_EXTRA.extend(cluster.flowscope_args())
        meta["enrich"] = cluster.counts
        log(f"simulated cluster for enrichment: {cluster.counts}")
    log(f"machine: {meta['machine']}; pinning: {cpus}")
    if meta["rcvbuf"] < args.rcvbuf:
        log(f"net.core.rmem_max caps UDP receive buffers at {meta['rcvbuf']} bytes: every collector gets that "
            f"(sysctl -w net.core.rmem_max={args.rcvbuf} for {args.rcvbuf})")
    try:
        return _run_all(args, meta, specs, protos, cpus, loadgen, out, log_dir, log)
    finally:
        if cluster is not None:
            cluster.stop()


def _run_all(args: argparse.Namespace, meta: dict, specs: list[CollectorSpec], protos: list[str], cpus: dict,
             loadgen: Path, out: Path, log_dir: str, log: Callable[[str], None]) -> int:
    all_trials: list[dict] = []
    best: list[dict] = []
    for spec in specs:
        for proto in protos:
            if proto not in spec.protos:
                continue
            ccpu = cpus["collector"] if spec.workers == 1 else cpus["collector_multi"]
            # a fresh broker per series: Tansu's memory storage keeps every message in RAM
            broker = None
            if spec.sink == "kafka":
                try:
                    broker = brk.start_broker(cpus=cpus["broker"], log_dir=log_dir)
                except Exception as e:  # noqa: BLE001 - this series fails, the others (nfcapd) still run
                    err = _one_line(f"Kafka broker (Tansu) did not start: {type(e).__name__}: {e} "
                                    f"(its log: {log_dir}/tansu-*.log)", limit=600)
                    log(f"  {spec.name:14s} {proto:5s} {err}")
                    best.append({"collector": spec.name, "proto": proto, "best": None, "first_lossy": None,
                                 "trials": 0, "error": err, "collector_cpus": ccpu})
                    (out / "results.json").write_text(json.dumps({"meta": meta, "best": best, "trials": all_trials},
                                                                 indent=1))
                    continue
            try:
                good, trials = sweep(
                    spec, proto, start=args.start_rate, max_trials=args.max_trials, max_loss=args.max_loss,
                    precision=args.precision, log=log, duration=args.duration, broker=broker, loadgen=loadgen,
                    cpus={**cpus, "collector": ccpu}, log_dir=log_dir, max_drain=args.max_drain,
                    loadgen_extra=meta["loadgen_extra"], count_with=args.count_with,
                    partitions=args.partitions, rcvbuf=meta["rcvbuf"],
                )
            finally:
                if broker:
                    broker.stop()
            tds = [asdict(t) for t in trials]
            all_trials.extend(tds)
            lossy = [t for t in tds if t["error"] is None and t["loss"] >= args.max_loss]
            first_lossy = min(lossy, key=lambda t: t["offered_flows_s"]) if lossy else None
            errors = [t["error"] for t in tds if t["error"]]
            best.append({"collector": spec.name, "proto": proto, "best": asdict(good) if good else None,
                         "first_lossy": first_lossy, "trials": len(tds), "error": errors[0] if errors else None,
                         "collector_cpus": ccpu})
            (out / "results.json").write_text(json.dumps({"meta": meta, "best": best, "trials": all_trials}, indent=1))
    write_markdown(out / "results.md", meta, best)
    png = out / "delivered_vs_offered.png"
    plot = write_plot(png, all_trials, best)
    log((out / "results.md").read_text())
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}" + (f", {png}" if plot == str(png) else f" ({plot})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
