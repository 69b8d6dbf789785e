"""`flowscope run`: one worker in-process, or a supervisor that forks `--workers N`.

Why fork and not threads: the hot path is CPU-bound Python + Cython, so parallelism needs
processes; each child owns its SO_REUSEPORT sockets, decoder state and producer, and the kernel
keeps one exporter on one socket. Children push metric snapshots over a pipe every
`--stats-interval`; the supervisor sums them and serves /metrics, /healthz and /readyz on one
address. The supervisor forks before it creates an event loop (forking a running loop is not
safe) and forwards SIGTERM/SIGINT; a child that dies unexpectedly takes the whole collector down
with a non-zero exit, so the orchestrator restarts it cleanly rather than running degraded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

from .config import Config
from .http import HttpServer
from .metrics import Aggregator
from .util import setup_logging, tune_malloc

log = logging.getLogger("flowscope")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def enrich_wanted(enrich_cfg: Any) -> bool:
    """Enrichment runs when enabled and a cluster is reachable: in a pod, or a kubeconfig exists.
    Without either, `flowscope run` on a laptop just works (enrichment off, logged)."""
    if enrich_cfg is None or not getattr(enrich_cfg, "enabled", False):
        return False
    if getattr(enrich_cfg, "kubeconfig", None):
        return True
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    kc = os.environ.get("KUBECONFIG", "")
    if kc and any(os.path.exists(p) for p in kc.split(os.pathsep)):
        return True
    if os.path.exists(os.path.expanduser("~/.kube/config")):
        return True
    log.info("enrichment off: not in a cluster and no kubeconfig (use --kubeconfig to enable it)")
    return False


async def start_enricher(enrich_cfg: Any) -> Any:
    if not enrich_wanted(enrich_cfg):
        return None
    import enrich

    enricher = enrich.Enricher(enrich_cfg)
    enricher.start()
    return enricher


async def stop_enricher(enricher: Any) -> None:
    if enricher is not None:
        try:
            enricher.stop()
        except Exception as exc:
            log.warning("enrichment: stop failed: %r", exc)


def readiness(agg: Aggregator, expected: int) -> tuple[bool, list[str]]:
    why: list[str] = []
    if len(agg.workers) < expected:
        why.append(f"{expected - len(agg.workers)} worker(s) not reporting yet")
    for w, snap in sorted(agg.workers.items()):
        ok, reasons = snap.get("_ready", {}).get((), (False, ["no status"]))  # type: ignore[misc]
        if not ok:
            why.extend(f"worker {w}: {r}" for r in reasons)
    return (not why), why


def http_servers(cfg: Config, agg: Aggregator, expected: int, alive: Callable[[], bool]) -> list[HttpServer]:
    def metrics() -> tuple[int, str, bytes]:
        ok, _ = readiness(agg, expected)
        agg.extra["flowscope_ready"] = {(): 1 if ok else 0}
        agg.extra["flowscope_workers"] = {(): len(agg.workers)}
        return 200, "text/plain; version=0.0.4; charset=utf-8", agg.render()

    def healthz() -> tuple[int, str, bytes]:
        return (200, "text/plain", b"ok\n") if alive() else (503, "text/plain", b"worker down\n")

    def readyz() -> tuple[int, str, bytes]:
        ok, why = readiness(agg, expected)
        return (200, "text/plain", b"ready\n") if ok else (503, "text/plain", ("\n".join(why) + "\n").encode())

    out = []
    health = {"/healthz": healthz, "/readyz": readyz}
    if cfg.metrics_addr:
        routes = {"/metrics": metrics}
        if not cfg.health_addr:
            routes.update(health)
        out.append(HttpServer(cfg.metrics_addr, routes))
    if cfg.health_addr:
        out.append(HttpServer(cfg.health_addr, health))
    return out


async def _worker_main(cfg: Config, index: int | None, enrich_cfg: Any,
                       report: Callable[[dict[str, Any]], None], stop: asyncio.Event,
                       agg: Aggregator | None = None) -> int:
    """Run one worker until `stop`; report snapshots periodically and once at the end."""
    from .server import Worker

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers: list[HttpServer] = []
    if agg is not None:
        servers = http_servers(cfg, agg, 1, lambda: True)
        for s in servers:
            try:
                await s.start()
            except OSError as exc:
                log.error("cannot serve HTTP on %s:%d: %s", s.host, s.port, exc)
                return 2
    enricher = await start_enricher(enrich_cfg)
    worker = Worker(cfg, index, enricher=enricher)
    try:
        await worker.start()
    except OSError as exc:
        log.error("cannot bind listener: %s", exc)
        await worker.sink.drain(loop.time())
        for s in servers:
            await s.stop()
        await stop_enricher(enricher)
        return 2

    async def stats() -> None:
        while True:
            try:
                report(worker.snapshot())
            except Exception as exc:
                log.error("metrics snapshot failed: %r", exc)
            await asyncio.sleep(cfg.stats_interval)

    stats_task = loop.create_task(stats())
    await stop.wait()
    log.info("stopping: closing listeners, draining the queue (up to %.1fs)", cfg.shutdown_timeout)
    await worker.stop()
    stats_task.cancel()
    report(worker.snapshot())
    await stop_enricher(enricher)
    for s in servers:
        await s.stop()
    s_ = worker.sink
    log.info("stopped: %d flows delivered to %s, %d dropped", s_.delivered[0], s_.name,
             sum(v for (k, _), v in s_.queue.dropped.items() if k == 0))
    return 0


def run(cfg: Config, enrich_cfg: Any = None) -> int:
    """Blocking entry point of `flowscope run`; returns the exit code."""
    setup_logging(cfg.log_level)
    tune_malloc()
    factory = loop_factory(cfg.loop)
    if cfg.workers == 1:
        agg = Aggregator()

        async def main() -> int:
            return await _worker_main(cfg, None, enrich_cfg, lambda s: agg.update(0, s), asyncio.Event(), agg)

        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main())
    return _supervise(cfg, enrich_cfg, factory)


def _child(cfg: Config, index: int, conn: Connection, enrich_cfg: Any,
           factory: Callable[[], asyncio.AbstractEventLoop]) -> int:
    setup_logging(cfg.log_level, index)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    def report(snap: dict[str, Any]) -> None:
        try:
            conn.send(snap)
        except (OSError, ValueError):
            pass  # supervisor gone: nothing left to report to

    async def main() -> int:
        return await _worker_main(cfg, index, enrich_cfg, report, asyncio.Event())

    with asyncio.Runner(loop_factory=factory) as runner:
        code = runner.run(main())
    conn.close()
    return code


def _supervise(cfg: Config, enrich_cfg: Any, factory: Callable[[], asyncio.AbstractEventLoop]) -> int:
    children: dict[int, tuple[int, Connection]] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    for i in range(cfg.workers):
        r, w = Pipe(duplex=False)
        pid = os.fork()
        if pid == 0:  # child
            r.close()
            for _, (_, other) in children.items():
                other.close()
            code = 1
            try:
                code = _child(cfg, i, w, enrich_cfg, factory)
            except BaseException as exc:  # noqa: BLE001 - report anything, then leave without cleanup
                logging.getLogger("flowscope").exception("worker %d failed: %r", i, exc)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        w.close()
        children[i] = (pid, r)
    log.info("started %d workers: %s", cfg.workers, ", ".join(str(p) for p, _ in children.values()))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        agg = Aggregator()
        stop = asyncio.Event()
        exited: dict[int, int] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def reader(i: int, conn: Connection) -> None:
            try:
                while conn.poll():
                    agg.update(i, conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(conn.fileno())

        for i, (_, conn) in children.items():
            loop.add_reader(conn.fileno(), reader, i, conn)
        servers = http_servers(cfg, agg, cfg.workers, lambda: not exited)
        for s in servers:
            try:
                await s.start()
            except OSError as exc:
                log.error("cannot serve HTTP on %s:%d: %s", s.host, s.port, exc)
                stop.set()

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
            if exited and not stop.is_set():
                log.error("worker(s) exited unexpectedly: %s; stopping the others",
                          ", ".join(f"{i} (code {c})" for i, c in exited.items()))
                failed = True
                break
        for i, (pid, _) in children.items():
            if i not in exited:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + cfg.shutdown_timeout + 10
        while len(exited) < len(children) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            reap()
        for i, (pid, _) in children.items():
            if i not in exited:
                log.error("worker %d did not stop in time; killing it", i)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                exited[i] = -9
        for i, (_, conn) in children.items():
            reader(i, conn)  # last snapshots
        for s in servers:
            await s.stop()
        bad = {i: c for i, c in exited.items() if c != 0}
        return 1 if failed or bad else 0

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
