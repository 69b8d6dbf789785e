"""`flowscope run`: one worker in-process, or a supervisor that forks `--workers N`.

Why fork and not threads: the hot path is CPU-bound Python + Cython, so parallelism needs
processes; each child owns its SO_REUSEPORT sockets, decoder state and producer, and the kernel
keeps one exporter on one socket. Children push metric snapshots over a pipe every
`--stats-interval`; the supervisor sums them and serves /metrics, /healthz and /readyz on one
address. The supervisor forks before it creates an event loop (forking a running loop is not
safe) and forwards SIGTERM/SIGINT/SIGHUP; a child that dies unexpectedly takes the whole collector down
with a non-zero exit, so the orchestrator restarts it cleanly rather than running degraded.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

import orjson

from .config import Config
from .http import CLOSE_REASONS, HttpServer
from .metrics import FINAL, SOCKETS, Aggregator, ExporterLabels, SharedLabels, starting_snapshot
from .util import die_with_parent, setup_logging, tune_malloc

log = logging.getLogger("flowscope")

#: Signals that stop the collector cleanly (drain, flush, count): SIGHUP too, which a closed
#: terminal sends to every process of the group (workers included), so nothing goes uncounted.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: The stop signals `flowscope run` handles from its first line (collector.cli.main), before its
#: event loop does: SIGINT is Python's KeyboardInterrupt there already (exit 130).
EARLY_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# The stop signals that came after defer_stop_signals and before the event loop took them over.
_deferred_stops: list[int] = []


def _defer_stop(signum: int, _frame: Any) -> None:
    _deferred_stops.append(signum)


def defer_stop_signals(signals: tuple[signal.Signals, ...] = EARLY_STOP_SIGNALS) -> None:
    """From here until the event loop handles them, a SIGTERM or SIGHUP is noted, and acted on
    once the loop takes the signals over (stopped_while_starting): raised as an exception
    (collector.cli) it would leave a supervisor's forked workers behind, and with the default
    action it killed the process with status 143 and no word in the log."""
    for sig in signals:
        signal.signal(sig, _defer_stop)


def stopped_while_starting(what: str) -> bool:
    """Whether a stop signal came before the event loop handled the signals; logged (`what`: what
    is left undone). Called once the loop's handlers are in place, so none goes unseen."""
    if not _deferred_stops:
        return False
    log.info("stopped by %s while starting: %s", signal.Signals(_deferred_stops[0]).name, what)
    return True


def build_info(cfg: Config) -> tuple[str, str, str]:
    """(flowscope version, Python version, event loop): flowscope_build_info's labels."""
    from . import version

    return version(), platform.python_version(), cfg.loop


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


# kubernetes.config.incluster_config.SERVICE_TOKEN_FILENAME: where the kubelet mounts the pod's
# ServiceAccount token (absent with automountServiceAccountToken: false).
SERVICEACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def cluster_access(enrich_cfg: Any) -> str:
    """The cluster access `enrich.enabled: auto` turns enrichment on for, described for the
    log, or "" when there is none: a kubeconfig given explicitly (--kubeconfig, enrich.kubeconfig,
    or $KUBECONFIG naming an existing file), or a pod's ServiceAccount. ~/.kube/config alone does
    not count, so `flowscope run` on a laptop does not start watching whatever cluster kubectl
    points at; `enrich.enabled: true` uses it."""
    if getattr(enrich_cfg, "kubeconfig", None):
        return f"kubeconfig {enrich_cfg.kubeconfig}"
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(SERVICEACCOUNT_TOKEN):
        return "in-cluster ServiceAccount"
    kc = os.environ.get("KUBECONFIG", "")
    if kc and any(os.path.exists(os.path.expanduser(p)) for p in kc.split(os.pathsep) if p):
        return f"$KUBECONFIG {kc}"
    return ""


def kubeconfig_env_ignored(enrich_cfg: Any, setting: str = "enrich.kubeconfig",
                           give: str = "--kubeconfig (enrich.kubeconfig)") -> str | None:
    """The warning for a $KUBECONFIG that enrichment will not read, None when there is none: in
    a pod (KUBERNETES_SERVICE_HOST set) without a kubeconfig setting the client loads the
    in-cluster config and never reads $KUBECONFIG (an image's or a manifest's leftover), which
    would otherwise go unsaid. `setting` and `give` are how the caller names that setting."""
    kc = os.environ.get("KUBECONFIG", "")
    if enrich_cfg is None or not kc or getattr(enrich_cfg, "kubeconfig", None) \
            or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    return (f"ignoring $KUBECONFIG ({kc}): in a pod (KUBERNETES_SERVICE_HOST is set) without {setting} "
            f"the in-cluster config (ServiceAccount) is used; give {give} to use a kubeconfig file")


def kube_access_error(enrich_cfg: Any, name: str = "enrich.kubeconfig", context_name: str = "enrich.context",
                      enabled_name: str = "enrich.enabled", *, credentials: bool = True) -> str | None:
    """Load the cluster access the enricher will use, as it will (enrich.load_api_client), and
    describe why it cannot be used; None when it can. Run before forking workers, so a missing
    file, a kubeconfig without current-context or a context it does not have is one line and
    exit 2, not a traceback in each worker. `name`, `context_name` and `enabled_name` are how the
    caller names the kubeconfig, context and enabled settings (`enrich.kubeconfig (from
    --kubeconfig):`, `enrich.enabled (from FLOWSCOPE_ENRICH_ENABLED)`).

    credentials=False (`flowscope config`) checks the kubeconfig files and the context without
    loading the credentials: loading runs a kubeconfig's exec plugin (`aws eks get-token`,
    kubelogin) or auth provider, which a command that starts nothing must not do."""
    import enrich

    kc = getattr(enrich_cfg, "kubeconfig", None)
    files = where = ""  # the kubeconfig files the client will read, and how to name them
    if kc:
        # the client merges a PATH[:PATH...] list (expanding ~) and silently skips missing files
        paths = [os.path.expanduser(p) for p in kc.split(os.pathsep) if p]
        if not any(os.path.exists(p) for p in paths):
            return f"{name} {kc}: no such file"
        what = f"{name} {kc}"
        files = where = kc
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        what = "enrich: in-cluster config (KUBERNETES_SERVICE_HOST is set)"
    elif os.environ.get("KUBECONFIG"):
        files = os.environ["KUBECONFIG"]
        where = f"$KUBECONFIG {files}"
        what = f"enrich: {where}"
    else:
        files = where = "~/.kube/config"
        what = f"enrich: {where}"
        if not os.path.exists(os.path.expanduser(files)):
            return (f"{enabled_name} is true but there is no cluster access: not in a pod "
                    "(KUBERNETES_SERVICE_HOST unset) and no --kubeconfig, $KUBECONFIG or ~/.kube/config")
    context = getattr(enrich_cfg, "context", None)

    def missing_context() -> str | None:
        names = enrich.kubeconfig_contexts(files) if context and files else None
        if names is not None and context not in names:
            # (the client's words: "Expected object with name X in F/contexts list")
            have = f"its contexts: {', '.join(names)}" if names else "it has none"
            return f"{context_name} {context!r} is not a context of {where} ({have})"
        return None

    try:
        if not credentials:
            enrich.check_kubeconfig(enrich_cfg)
            return None
        client = enrich.load_api_client(enrich_cfg)
    except Exception as exc:  # kubernetes' ConfigException, YAML errors, unreadable files
        problem = missing_context()
        if problem:
            return problem
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return f"{what}: {msg}"
    try:
        client.close()
    except Exception:  # noqa: BLE001 - nothing was connected yet
        pass
    return None


async def start_enricher(enrich_cfg: Any) -> Any:
    """The enricher, started, or None when enrichment is off (enrich_cfg None: decided by the
    command line before forking)."""
    if enrich_cfg is None:
        return None
    import enrich

    enricher = enrich.Enricher(enrich_cfg)
    enricher.start()
    return enricher


async def stop_enricher(enricher: Any, timeout: float = 5.0) -> None:
    """Stop the informers, waiting for their threads at most `timeout` seconds (daemons: one stuck
    in a request to an API server that does not answer is left behind when the process exits)."""
    if enricher is not None:
        try:
            enricher.stop(timeout)
        except Exception as exc:
            log.warning("enrichment: stop failed: %r", exc)


def silence_limit(cfg: Config) -> float:
    """Seconds without a snapshot after which a worker of `--workers N` counts as stuck (its event
    loop stopped: the supervisor cannot see it otherwise, while the kernel keeps handing its
    socket a share of the exporters): /readyz fails. Generous, so that a busy loop is not taken
    for a stuck one; liveness waits three times as long (LIVENESS_FACTOR) before the
    orchestrator restarts the pod and its templates are lost."""
    return 10.0 + 3.0 * cfg.stats_interval


LIVENESS_FACTOR = 3.0

#: --workers N: seconds past --shutdown-timeout after which the supervisor kills a worker still
#: running (SIGKILL): the longest a stop takes, which a pod's terminationGracePeriodSeconds must
#: exceed (tests/test_production_review.py checks the manifests).
KILL_AFTER = 10.0


def silent_workers(agg: Aggregator, limit: float, starting: bool = True) -> list[str]:
    """One line per worker whose latest snapshot is more than `limit` seconds old (`starting`:
    including the workers still starting up, see Aggregator.silent)."""
    return [f"worker {w}: starting for {s:.0f} s" if w in agg.starting else
            f"worker {w}: no report for {s:.0f} s (hung?)" if w in agg.seen else
            f"worker {w}: no report since the start, {s:.0f} s ago (hung while starting?)"
            for w, s in sorted(agg.silent(limit, starting).items())]


def readiness(agg: Aggregator, expected: int, silent_after: float = 0.0) -> tuple[bool, list[str]]:
    why: list[str] = []
    if len(agg.workers) < expected:
        why.append(f"{expected - len(agg.workers)} worker(s) not reporting yet")
    if silent_after:
        why.extend(silent_workers(agg, silent_after))
    for w, snap in sorted(agg.workers.items()):
        ok, reasons = snap.get("_ready", {}).get((), (False, ["no status"]))  # type: ignore[misc]
        if not ok:
            why.extend(f"worker {w}: {r}" for r in reasons)
    return (not why), why


def kernel_drops_now(agg: Aggregator, seen: dict[tuple[int, str], int]) -> None:
    """Bring each worker's flowscope_kernel_receive_drops up to its sockets' counters now. A
    worker reads them only in its own snapshots, so a hung worker's (its loop stopped while the
    kernel keeps handing its socket a share of the exporters, and drops them once the buffer is
    full) stayed at its last report: lost datagrams /metrics never showed. The supervisor shares
    the workers' network namespace and reads the same /proc/net/udp. `seen`: the highest value
    shown per (worker, listener), so that a snapshot read before this and received after it
    cannot take the counter back."""
    from .server import udp_socket_stats

    socks = {w: snap.get(SOCKETS, {}).get((), ()) for w, snap in agg.workers.items()}
    inodes = {ino for s in socks.values() for _, ino in s}
    live = udp_socket_stats(inodes) if inodes else {}
    for w, snap in agg.workers.items():
        drops = snap.get("flowscope_kernel_receive_drops")
        if drops is None:
            continue
        for name, ino in socks[w]:
            if ino in live:
                seen[(w, name)] = max(seen.get((w, name), 0), live[ino][1])
        new = {}
        for lab, v in drops.items():
            new[lab] = seen[(w, lab[0])] = max(v, seen.get((w, lab[0]), 0))
        snap["flowscope_kernel_receive_drops"] = new


def tell_kernel_drops(agg: Aggregator, warnings: Any, quiet_after: float, final: bool = False) -> None:
    """--workers N: the log line of each worker's listener whose socket the kernel dropped
    datagrams on (server.KernelDropWarnings, as one worker tells its own), from the counts
    kernel_drops_now brought up to date. The supervisor tells them, not the workers: a worker
    that hangs (stopped, or stuck in a call) cannot, while the kernel goes on handing its socket
    a share of the exporters and drops them once its buffer is full; its line then says that it
    has not reported for `quiet_after` seconds or more. `final`: whatever is left untold."""
    quiet = agg.silent(quiet_after, starting=False)
    for w, snap in sorted(agg.workers.items()):
        granted = snap.get("flowscope_socket_receive_buffer_bytes", {})
        why = (f"worker {w} has sent no report for {quiet[w]:.0f} s (hung, or stopped?) and reads nothing"
               if w in quiet and not final else "")
        for lab, n in sorted(snap.get("flowscope_kernel_receive_drops", {}).items()):
            warnings.tell((w, lab[0]), f"{lab[0]} (worker {w})", int(n), int(granted.get(lab, 0)), final, why)


def http_servers(cfg: Config, agg: Aggregator, expected: int, alive: Callable[[], bool],
                 silent_after: float = 0.0,
                 kernel_seen: dict[tuple[int, str], int] | None = None) -> list[HttpServer]:
    """The /metrics, /healthz and /readyz endpoints over `agg`; `kernel_seen`: kernel_drops_now's
    record, shared with whoever else brings the kernel drops up to date (the supervisor's loop)."""
    if kernel_seen is None:
        kernel_seen = {}

    def metrics() -> tuple[int, str, bytes]:
        kernel_drops_now(agg, kernel_seen)
        ok, _ = readiness(agg, expected, silent_after)
        agg.extra["flowscope_ready"] = {(): 1 if ok else 0}
        agg.extra["flowscope_workers"] = {(): len(agg.workers)}
        agg.extra["flowscope_build_info"] = {build_info(cfg): 1}
        agg.extra["flowscope_http_connections"] = {(): sum(s.open for s in out)}
        agg.extra["flowscope_http_connections_closed"] = {
            (r,): sum(s.closed[r] for s in out) for r in CLOSE_REASONS}
        return 200, "text/plain; version=0.0.4; charset=utf-8", agg.render()

    def healthz() -> tuple[int, str, bytes]:
        if not alive():
            return 503, "text/plain", b"worker down\n"
        hung = silent_workers(agg, silent_after * LIVENESS_FACTOR, starting=False) if silent_after else []
        if hung:
            return 503, "text/plain", ("\n".join(hung) + "\n").encode()
        return 200, "text/plain", b"ok\n"

    def readyz() -> tuple[int, str, bytes]:
        ok, why = readiness(agg, expected, silent_after)
        return (200, "text/plain", b"ready\n") if ok else (503, "text/plain", ("\n".join(why) + "\n").encode())

    out: list[HttpServer] = []
    health = {"/healthz": healthz, "/readyz": readyz}
    if cfg.metrics_addr:
        routes = {"/metrics": metrics}
        if not cfg.health_addr:
            routes.update(health)
        moved = {path: f"the health address {cfg.health_addr} (--health-addr)" for path in health} if cfg.health_addr else {}
        out.append(HttpServer(cfg.metrics_addr, routes, max_connections=cfg.http_max_connections, elsewhere=moved))
    if cfg.health_addr:
        out.append(HttpServer(cfg.health_addr, health, max_connections=cfg.http_max_connections))
    return out


def label_frame(generation: int, named: list[str], ask: int, held_named: list[str]) -> bytes:
    """One set of labelled exporters, supervisor to worker (SharedLabels.frame): a 4-byte
    length, then JSON [generation, [exporter, ...], ask, [exporter, ...]]."""
    payload = orjson.dumps([generation, named, ask, held_named])
    return len(payload).to_bytes(4, "big") + payload


class LabelFeed:
    """A --workers N worker's end of the supervisor's exporter label sets (metrics.SharedLabels):
    the latest one read is followed from the worker's next snapshot, which `changed` asks for at
    once (so a set is applied in every worker within moments, not a stats interval apart). Each
    frame also carries the supervisor's answer about the new exporters this worker's latest
    snapshot held (SharedLabels.frame)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, labels: ExporterLabels,
                 changed: asyncio.Event) -> None:
        self._loop = loop
        self.sock = sock
        self.labels = labels
        self.changed = changed
        self._buf = bytearray()
        labels.follow(0, ())    # the supervisor chooses; none labelled until it says
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self.readable)

    def stop(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def readable(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:      # the supervisor is gone (the worker stops on its own: die_with_parent)
            self.stop()
            return
        buf = self._buf
        buf += data
        latest = None
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            n = int.from_bytes(buf[:4], "big")
            latest = orjson.loads(bytes(buf[4:4 + n]))
            del buf[:4 + n]
        if latest is not None:
            self.labels.follow(*latest)
            self.changed.set()


class LabelSender:
    """The supervisor's end of one worker's label feed: frames are written without blocking the
    supervisor's loop (a worker that does not read, hung, cannot stall /metrics and the probes),
    and only the latest one waits while another is being written (each frame is a whole set)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._pending: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    def send(self, frame: bytes) -> None:
        self._pending = frame
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending is not None:
            frame, self._pending = self._pending, None
            try:
                await loop.sock_sendall(self.sock, frame)
            except OSError:
                return    # the worker is gone: the supervisor sees it exit

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sock.close()


async def _worker_main(cfg: Config, index: int | None, enrich_cfg: Any,
                       report: Callable[[dict[str, Any]], None], stop: asyncio.Event,
                       agg: Aggregator | None = None, labels: socket.socket | None = None) -> int:
    """Run one worker until `stop`; report snapshots periodically and once at the end.
    `labels`: with --workers N, where the supervisor sends the exporters to label (LabelFeed)."""
    from .server import StartupError, Worker

    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    if stopped_while_starting("nothing was received; exiting"):
        return 0
    servers: list[HttpServer] = []
    # Before the start-up, which can outlast any silence limit (state files of millions of
    # template fields take seconds each, and every worker loads all of them): with --workers N
    # the supervisor then counts this worker as starting (unready, but not hung).
    report(starting_snapshot("enrichment, state files and listeners"))
    if agg is not None:
        servers = http_servers(cfg, agg, 1, lambda: True)
        for s in servers:
            try:
                await s.start()
            except OSError as exc:
                http_bind_failed(s, exc)
                return 2
    try:
        enricher = await start_enricher(enrich_cfg)
    except Exception as exc:  # checked before forking (kube_access_error); the file may have gone since
        log.error("enrichment: cannot start: %s", " ".join(str(exc).split()) or type(exc).__name__)
        for s in servers:
            await s.stop()
        return 2
    worker = Worker(cfg, index, enricher=enricher)
    try:
        await worker.start()
    except (StartupError, OSError) as exc:
        log.error("cannot start: %s", exc)
        worker.close_sockets()   # the listeners bound before the one that failed
        await worker.sink.drain(loop.time())
        for s in servers:
            await s.stop()
        await stop_enricher(enricher)
        return 2

    labels_changed = asyncio.Event()
    feed = LabelFeed(loop, labels, worker.labels, labels_changed) if labels is not None else None
    # Set before the final snapshot. Cancelling the task is not enough: on Python 3.11 a
    # wait_for() whose event was set (a label set read) as the task is cancelled returns
    # instead of raising, and a snapshot sent after the final one made the supervisor take the
    # worker for one that died after it ("what it received ... is not known").
    stats_done = False

    async def stats() -> None:
        while not stats_done:
            labels_changed.clear()
            try:
                report(worker.snapshot())
            except Exception as exc:
                log.error("metrics snapshot failed: %r", exc)
            try:
                await asyncio.wait_for(labels_changed.wait(), cfg.stats_interval)
            except asyncio.TimeoutError:
                pass

    stats_task = loop.create_task(stats())
    stopped = loop.create_task(stop.wait())
    gone = loop.create_task(worker.sink.gone_event.wait())
    await asyncio.wait((stopped, gone), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    gone.cancel()
    log.info("stopping: decoding what the listeners hold, draining the queue, then closing the listeners "
             "(up to %.1fs)", cfg.shutdown_timeout)
    stop_began = loop.time()
    await worker.stop()
    stats_done = True
    stats_task.cancel()
    if feed is not None:
        feed.stop()
    report(worker.snapshot(final=True))
    # within what is left of --shutdown-timeout (half a second at least): the supervisor of
    # --workers N kills a worker still running 10 s past it
    await stop_enricher(enricher, max(0.5, cfg.shutdown_timeout - (loop.time() - stop_began)))
    for s in servers:
        await s.stop()
    s_ = worker.sink
    counters = (f"; {s_.delivered[1]} sFlow counter records delivered, "
                f"{sum(v for (k, _), v in s_.queue.dropped.items() if k == 1)} dropped") if cfg.counters else ""
    # every reason flowscope_flows_dropped_total counts: the queue's and the sink's, and the hot
    # path's own (duplicate with --dedup, internal), so that delivered + dropped is what was decoded
    # datagrams the kernel dropped (a receive buffer full) never reached the decoder: their
    # flows are in no count above, and were lost all the same
    kernel = (f"; {worker.kernel_drops} datagrams dropped by the kernel before they were read (receive "
              "buffer full: flowscope_kernel_receive_drops_total)") if worker.kernel_drops else ""
    log.info("stopped: %d flows delivered to %s, %d dropped%s%s", s_.delivered[0], s_.name,
             sum(v for (k, _), v in s_.queue.dropped.items() if k == 0) + sum(worker.flow_drops.values()),
             counters, kernel)
    if s_.gone:
        log.error("exiting: %s", s_.gone)
        return 1
    return 0


def sink_destination(cfg: Config) -> str:
    """Where the flows go, for the start-up log: the listeners and HTTP addresses are logged as
    they are bound, the output was not (a Kafka topic or a file path mistyped went unseen until
    a consumer found nothing)."""
    kind = cfg.sink_kind()
    if kind == "kafka":
        counters = f", sFlow counter records to topic {cfg.kafka.counters_topic}" if cfg.counters else ""
        return f"Kafka topic {cfg.kafka.topic} (brokers {','.join(cfg.kafka.brokers)}){counters}"
    if kind == "file":
        return f"file {os.path.abspath(cfg.output_file)}"
    return "stdout"


def run(cfg: Config, enrich_cfg: Any = None, enrich_note: str = "") -> int:
    """Blocking entry point of `flowscope run`; returns the exit code. `enrich_cfg` is None when
    enrichment is off (`enrich_note` says why, or where its cluster access comes from)."""
    defer_stop_signals()
    setup_logging(cfg.log_level, fmt=cfg.log_format)
    tune_malloc()
    log.info("flowscope %s (Python %s, %s event loop)", *build_info(cfg))
    log.info("configuration: %s", cfg.provenance())
    if enrich_note:
        log.info("%s", enrich_note)
    log.info("flows to %s", sink_destination(cfg))
    if not cfg.metrics_addr:
        # (the served ones are logged as they start: `http: serving ... on ADDR`)
        log.info("http: /metrics not served (metrics_addr empty)%s",
                 "" if cfg.health_addr else "; nor /healthz and /readyz (health_addr empty too)")
    factory = loop_factory(cfg.loop)
    if cfg.workers == 1:
        agg = Aggregator()

        async def main() -> int:
            return await _worker_main(cfg, None, enrich_cfg, lambda s: agg.update(0, s), asyncio.Event(), agg)

        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main())
    return _supervise(cfg, enrich_cfg, factory)


def _child(cfg: Config, index: int, conn: Connection, enrich_cfg: Any,
           factory: Callable[[], asyncio.AbstractEventLoop], parent: int, turn: Any,
           labels: socket.socket) -> int:
    # A stop forwarded by the supervisor (or a terminal's Ctrl-C, sent to the whole group) while
    # this worker starts is noted, not fatal (see defer_stop_signals): with the default action
    # (as before) the worker died at once, counted as failed. First, so that no SIGINT lands as
    # a KeyboardInterrupt traceback meanwhile.
    defer_stop_signals(STOP_SIGNALS)
    setup_logging(cfg.log_level, index, fmt=cfg.log_format)
    from . import sinks

    sinks.topic_turn = (turn, index == 0)
    # A supervisor killed outright (SIGKILL, the OOM killer) cannot forward a stop: the kernel
    # sends SIGTERM instead, and the worker drains, flushes and counts as on any stop.
    die_with_parent(parent, signal.SIGTERM)

    def report(snap: dict[str, Any]) -> None:
        try:
            conn.send(snap)
        except (OSError, ValueError):
            pass  # supervisor gone: nothing left to report to

    async def main() -> int:
        return await _worker_main(cfg, index, enrich_cfg, report, asyncio.Event(), labels=labels)

    with asyncio.Runner(loop_factory=factory) as runner:
        code = runner.run(main())
    conn.close()
    return code


def http_bind_failed(server: HttpServer, exc: OSError) -> None:
    """Log why the metrics or health address could not be served, and which setting moves it."""
    from .server import bind_hint

    setting = "--metrics-addr" if "/metrics" in server.routes else "--health-addr"
    log.error("cannot serve HTTP on %s: %s%s", server.addr, exc.strerror or exc, bind_hint(exc, server.port, setting))


def ports_free(cfg: Config) -> bool:
    """Before forking `--workers N`: each listener's address can be bound without SO_REUSEPORT,
    so no other process holds it. The workers share each port through SO_REUSEPORT, which any
    other process of the same user that sets it could join too (a second collector started by
    mistake), taking a share of the exporters without an error on either side."""
    from .server import bind_hint, open_socket

    for lst in cfg.listeners():
        try:
            sock, _ = open_socket(lst, 0, False)
        except OSError as exc:
            log.error("cannot start: listener %s: cannot bind: %s%s", lst, exc.strerror or exc,
                      bind_hint(exc, lst.port, "--listen"))
            return False
        sock.close()
    return True


def died(agg: Aggregator, worker: int, code: int) -> None:
    """A worker died (killed, crashed): the flows its last snapshot held (queued, or sent and
    not acknowledged) are gone with it. They are counted as dropped, reason worker_died, in its
    snapshot (its queue emptied), and said in the log; what it received after that snapshot
    (up to --stats-interval) cannot be known."""
    snap = agg.workers.get(worker)
    if snap is None:
        log.error("worker %d (code %s) died before its first report: what it had received is unknown", worker, code)
        return
    snap = dict(snap)
    lost = {}
    for queued, dropped in (("flowscope_queue_records", "flowscope_flows_dropped"),
                            ("flowscope_counter_records_queued", "flowscope_counter_records_dropped")):
        n = int(sum(snap.get(queued, {}).values()))
        lost[queued] = n
        snap[queued] = {k: 0 for k in snap.get(queued, {})} or {(): 0}
        if n:
            d = dict(snap.get(dropped, {}))
            d[("worker_died",)] = d.get(("worker_died",), 0) + n
            snap[dropped] = d
    snap["flowscope_queue_bytes"] = {(): 0}
    # its sockets and its sink went with it: not bound, not connected, not ready
    snap["flowscope_listener_up"] = {k: 0 for k in snap.get("flowscope_listener_up", {})}
    snap["flowscope_sink_connected"] = {(): 0}
    snap["_ready"] = {(): (False, [f"exited (code {code})"])}  # type: ignore[dict-item]
    age = time.monotonic() - agg.seen.get(worker, agg.started)
    agg.workers[worker] = snap
    if FINAL in snap:
        # it had stopped (its listeners closed) and counted everything in its final report: an
        # exit code of its own (stdout closed by its reader: 1), nothing unknown
        log.error("worker %d exited with code %s after its final report (%.1f s before): everything it "
                  "received is counted there", worker, code, age)
        return
    if not any(lost.values()):
        # (a worker that failed to start, its reason logged by itself: nothing was lost)
        log.error("worker %d exited with code %s holding no flow records in its last report (%.1f s before); "
                  "what it received after that report is not known", worker, code, age)
        return
    log.error("worker %d (code %s) died holding %d flow records and %d counter records (queued or not yet "
              "acknowledged in its report of %.1f s before): counted as dropped (worker_died), though those it had "
              "sent may be in the topic; what it received or delivered after that report is not known", worker, code, lost["flowscope_queue_records"],
              lost["flowscope_counter_records_queued"], age)


def _supervise(cfg: Config, enrich_cfg: Any, factory: Callable[[], asyncio.AbstractEventLoop]) -> int:
    children: dict[int, tuple[int, Connection]] = {}
    if not ports_free(cfg):
        return 2
    if stopped_while_starting("no worker was started; exiting"):
        return 0
    me = os.getpid()
    turn = multiprocessing.get_context("fork").Event()  # see sinks.topic_turn
    sys.stdout.flush()
    sys.stderr.flush()
    # supervisor -> worker: the exporters to label in metrics (LabelSender -> LabelFeed)
    label_socks: dict[int, socket.socket] = {}
    for i in range(cfg.workers):
        r, w = Pipe(duplex=False)
        down, up = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # child
            r.close()
            down.close()
            for _, (_, other) in children.items():
                other.close()
            for s in label_socks.values():
                s.close()
            code = 1
            try:
                code = _child(cfg, i, w, enrich_cfg, factory, me, turn, up)
            except BaseException as exc:  # noqa: BLE001 - report anything, then leave without cleanup
                logging.getLogger("flowscope").exception("worker %d failed: %r", i, exc)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        w.close()
        up.close()
        children[i] = (pid, r)
        label_socks[i] = down
    log.info("started %d workers: %s", cfg.workers, ", ".join(str(p) for p, _ in children.values()))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        # one choice of labelled exporters for all workers (an exporter's source ports can reach
        # several): chosen here from their reports, every stats interval, and at once for new
        # exporters a worker's snapshot holds (labels free)
        shared = SharedLabels(cfg.metrics_top_exporters, cfg.workers)
        agg = Aggregator(cfg.workers, shared)
        senders = {i: LabelSender(s) for i, s in label_socks.items()}
        labels_at = time.monotonic()
        stop = asyncio.Event()
        exited: dict[int, int] = {}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        if stopped_while_starting("stopping the workers"):
            stop.set()

        def reader(i: int, conn: Connection) -> None:
            try:
                while conn.poll():
                    agg.update(i, conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(conn.fileno())
            if not stop.is_set():
                send_labels()   # (a worker whose snapshot held new exporters waits for the answer)

        def send_labels() -> None:
            for w, frame in shared.frames().items():
                senders[w].send(label_frame(*frame))

        for i, (_, conn) in children.items():
            loop.add_reader(conn.fileno(), reader, i, conn)
        # the kernel's drops on the workers' listeners, told in the log here (tell_kernel_drops)
        from .server import KernelDropWarnings

        kernel_seen: dict[tuple[int, str], int] = {}
        drop_log = KernelDropWarnings(cfg.rcvbuf)
        quiet_after = 1.0 + 2 * cfg.stats_interval
        drops_read = time.monotonic()
        servers = http_servers(cfg, agg, cfg.workers, lambda: not exited, silence_limit(cfg), kernel_seen)
        start_failed = False  # exit 2 like one worker does: a start-up error, not a clean stop
        for s in servers:
            try:
                await s.start()
            except OSError as exc:
                http_bind_failed(s, exc)
                start_failed = True
                stop.set()
                break

        def reap() -> None:
            for i, (pid, _) in children.items():
                if i in exited:
                    continue
                try:
                    p, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    exited[i] = 1
                    continue
                if p:
                    exited[i] = os.waitstatus_to_exitcode(status)

        failed = False
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            reap()
            if time.monotonic() - labels_at >= cfg.stats_interval:
                labels_at = time.monotonic()
                if shared.tick() is not None:
                    shared.changed = True
                    send_labels()
            if time.monotonic() - drops_read >= cfg.stats_interval:
                drops_read = time.monotonic()
                kernel_drops_now(agg, kernel_seen)
                tell_kernel_drops(agg, drop_log, quiet_after)
            if exited and not stop.is_set():
                for i in exited:
                    reader(i, children[i][1])   # anything it sent before it went
                log.error("worker(s) exited unexpectedly: %s; stopping the others",
                          ", ".join(f"{i} (code {c})" for i, c in exited.items()))
                for i, c in exited.items():
                    if c != 0:
                        died(agg, i, c)
                failed = True
                break
        for i, (pid, _) in children.items():
            if i not in exited:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + cfg.shutdown_timeout + KILL_AFTER
        while len(exited) < len(children) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            reap()
        for i, (pid, _) in children.items():
            if i not in exited:
                log.error("worker %d did not stop in time; killing it", i)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                exited[i] = -9
                # what its last report held goes with it: said (and counted) as for a worker
                # that dies while running, not lost silently
                reader(i, children[i][1])
                died(agg, i, -9)
        for i, (_, conn) in children.items():
            reader(i, conn)  # last snapshots
        kernel_drops_now(agg, kernel_seen)
        tell_kernel_drops(agg, drop_log, quiet_after, final=True)
        for s in servers:
            await s.stop()
        for sender in senders.values():
            sender.close()
        bad = {i: c for i, c in exited.items() if c != 0}
        if start_failed or (failed and 2 in bad.values()):
            return 2  # a worker returns 2 only when it could not start (listener, HTTP, enrichment)
        return 1 if failed or bad else 0

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
