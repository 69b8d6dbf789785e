"""Small shared helpers: the rate-limited error logger, logging setup, and starting children that
die with the process that started them (dies_with_us, popen_child: the collector's broker, the
tests' and the benchmarks' children).

Why rate-limited: one bad exporter can send a million malformed datagrams a minute, and a log
line per datagram would cost more than decoding them. Each call site has a key; a key logs at
most once per interval and then reports how many messages it suppressed meanwhile.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    """At most one message per key per `interval` seconds, with a count of the suppressed ones."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None while `key` was said within the interval (counted as suppressed); else how many
        were suppressed since it was last said (0 for none)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def log(self, level: int, key: str, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        n = self.admit(key)
        if n is None:
            return
        if n:
            msg += f" ({n} similar messages suppressed)"
            extra = {**(extra or {}), "suppressed": n}
        self.logger.log(level, msg, *args, extra=extra)

    def error(self, key: str, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        self.log(logging.ERROR, key, msg, *args, extra=extra)

    def warning(self, key: str, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        self.log(logging.WARNING, key, msg, *args, extra=extra)


# aiokafka's own lines (their message templates' start) for what flowscope's Kafka sink reports
# itself, rate-limited, with the reason and the setting to change (collector.sinks: "kafka: cannot
# connect to ...", "kafka: ... (not connected)"): beside it each cause was said twice, and for a
# port that is not a Kafka broker's aiokafka's line had an empty reason ("Unable connect to
# "HOST:PORT": "). Shown with --log-level debug only; aiokafka's other lines are kept, and so is
# an "Unable connect to" whose cause is a TLS error (a certificate kafka.tls_ca does not trust:
# CERTIFICATE_VERIFY_FAILED), which the exception the sink sees does not carry. A failed
# Produce request ("Got error produce response: ...", --no-kafka-direct) only when its cause is
# NodeNotReadyError, its leader not connected to: the sink says that batch "not delivered:
# NodeNotReadyError" and the broker out of reach; other causes (a connection lost under a
# request, which aiokafka sends again) the sink may never say.
PRODUCE_FAILED = "Got error produce response: "
AIOKAFKA_REPORTED = ("Unable connect to ", "Unable to update metadata from ", PRODUCE_FAILED)


def _said_by_the_sink(record: logging.LogRecord) -> bool:
    """An aiokafka line of AIOKAFKA_REPORTED's whose cause the Kafka sink's own line says."""
    if not (isinstance(record.msg, str) and record.msg.startswith(AIOKAFKA_REPORTED)):
        return False
    cause = record.args[-1] if isinstance(record.args, tuple) and record.args else None
    if record.msg.startswith(PRODUCE_FAILED):
        from aiokafka.errors import NodeNotReadyError

        return isinstance(cause, NodeNotReadyError)
    return not (record.msg.startswith("Unable connect to ") and isinstance(cause, ssl.SSLError))


class _RateLimitFilter(logging.Filter):
    """Throttles a chatty third-party logger (aiokafka logs every reconnect attempt at ERROR):
    each of its lines at most once per `interval`, per broker for those that name one
    ("Unable connect to ...": the first about each broker is said), per error class for a failed
    Produce request ("Got error produce response: ..."), the next one shown saying
    how many were left out. Its lines that flowscope's own say better (AIOKAFKA_REPORTED) are
    left out unless `debug`, and said at WARNING then (the sink's own line is the ERROR)."""

    def __init__(self, interval: float, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug
        self._gate = RateLimitedLog(logging.getLogger(__name__), interval)   # (its admit() only)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("aiokafka", "kafka")):
            return True
        said = _said_by_the_sink(record)
        if not self.debug and said:
            return False
        key = f"{record.name}:{record.msg}"
        if isinstance(record.msg, str) and record.msg.startswith("Unable connect to ") and isinstance(record.args, tuple):
            key += repr(record.args[:-1])   # (the node id, or host and port: the cause is the last)
        elif isinstance(record.msg, str) and record.msg.startswith(PRODUCE_FAILED) and isinstance(record.args, tuple) \
                and record.args:
            # per error class (as many keys as aiokafka has KafkaError classes): under one key a
            # connection lost under a request hid the NodeNotReadyError of every retry after it,
            # or the other way round, for 10 s
            key += type(record.args[-1]).__name__
        n = self._gate.admit(key)
        if n is None:
            return False
        if said and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        if n:
            record.msg, record.args = f"{record.getMessage()} ({n} similar messages suppressed)", ()
            record.suppressed = n
        return True


# Attributes a record may carry (logging's `extra=`) that the JSON format writes as fields.
LOG_FIELDS = ("exporter", "reason", "suppressed", "listener", "topic", "kind")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601, ms), level, logger, worker (with
    --workers N), msg, the LOG_FIELDS the record carries, and exc (the traceback) when there is
    one. Log pipelines (Loki, Elasticsearch, Cloud Logging) parse it without a regex, and the
    exporter of a decode error is a field to group by rather than words in a sentence."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        t = time.gmtime(record.created)
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name}
        if self.worker is not None:
            out["worker"] = self.worker
        out["msg"] = record.getMessage()
        for k in LOG_FIELDS:
            v = record.__dict__.get(k)
            if v is not None:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str, worker: int | None = None, fmt: str = "text") -> None:
    """Logs go to stderr (stdout may carry JSON flows) as `time level logger [worker] message`,
    or with fmt "json" as one JSON object a line (JsonFormatter)."""
    tag = f" w{worker}" if worker is not None else ""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python warnings (urllib3's InsecureRequestWarning on every API request with a kubeconfig's
    # insecure-skip-tls-verify) went to stderr as two bare lines each, neither in the text format
    # nor JSON: through logging ("py.warnings") they are one log record like any other.
    logging.captureWarnings(True)
    # on the handler: logger filters do not apply to records of child loggers
    handler.addFilter(_RateLimitFilter(10.0, debug=level.lower() == "debug"))
    for name in ("aiokafka", "kafka"):
        lg = logging.getLogger(name)
        if level.lower() != "debug":
            lg.setLevel(logging.WARNING)


def tune_malloc() -> None:
    """Keep megabyte-sized buffers in the heap instead of fresh mmap()s.

    Every Kafka record batch passes through several ~1 MiB bytes objects (the batch, aiokafka's
    request, the transport write). glibc serves each with a fresh mmap() and returns it with
    munmap(), so every megabyte sent costs page faults and kernel page zeroing (about 10% of the
    collector's CPU at 300k flows/s). Raising the mmap and trim thresholds lets freed batches be
    reused; memory stays bounded by the queue (--queue-bytes). MALLOC_* variables set by the
    operator win.
    """
    import ctypes
    import ctypes.util
    import os

    if any(k.startswith("MALLOC_") for k in os.environ) or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl has no mallopt thresholds)
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 * 1024 * 1024)
    mallopt(m_trim_threshold, 512 * 1024 * 1024)


@functools.cache
def _prctl() -> Any:
    """libc's prctl, loaded once (None where there is none: not Linux, not a libc with prctl).
    Looked up before any fork: find_library runs ldconfig, which a preexec_fn must not."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent: int, sig: int) -> bool:
    """Ask Linux to send this process `sig` when its parent dies (prctl PR_SET_PDEATHSIG), so a
    worker whose supervisor was killed with SIGKILL (OOM killer, `kill -9`) stops instead of
    holding its SO_REUSEPORT socket and taking a share of the datagrams meant for the next
    collector. False where that cannot be arranged (not Linux, no prctl). A parent that died
    before the call (`parent` is no longer our parent) gets the signal sent right away.
    Linux's "parent" is the THREAD that forked this process: the signal comes when that thread
    ends, even with the rest of the parent process still running."""
    import os

    prctl = _prctl()
    pr_set_pdeathsig = 1
    if prctl is None or prctl(pr_set_pdeathsig, sig, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def dies_with_us(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A subprocess.Popen preexec_fn under which the child is sent `sig` (default SIGKILL) when
    this process dies, however it dies: a child in a session of its own (start_new_session) is
    out of reach of the terminal's Ctrl-C and of a kill of our process group, and a parent killed
    outright (SIGKILL, the OOM killer, a CI job's timeout) stops nothing itself. The signal
    survives exec, and exec of a program that execs in turn (taskset, `ip netns exec`), not a
    daemon's fork. None, nothing asked, where it cannot be arranged (not Linux) and when called
    from a thread other than the main one: Linux sends the signal when the forking THREAD ends,
    which would kill the child as soon as that thread returned (a broker started in a worker
    thread); such a child outlives a killed parent as before."""
    import os
    import threading

    if threading.current_thread() is not threading.main_thread() or _prctl() is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(parent, sig)

    return preexec


# The prefix of a command a shell we start runs in the background (`{DIES_WITH_SHELL} cmd &`):
# the parent-death signal is not inherited across fork, so the shell's own (popen_child) does not
# reach what it forks; setpriv (util-linux) asks for SIGKILL when the shell dies and execs `cmd`
# (same PID, the command's own command line). A shell killed in the instant between its fork and
# setpriv's ask is missed (setpriv does not look whether the shell is still there).
DIES_WITH_SHELL = "setpriv --pdeathsig KILL"


def _dying(preexec_fn: Callable[[], None] | None) -> Callable[[], None] | None:
    """The preexec_fn that asks for SIGKILL when this process dies, then runs `preexec_fn`."""
    steps = [f for f in (dies_with_us(), preexec_fn) if f is not None]

    def setup() -> None:
        for step in steps:
            step()

    return setup if steps else None


def popen_child(cmd: Any, *, preexec_fn: Callable[[], None] | None = None, **kw: Any) -> subprocess.Popen:
    """subprocess.Popen(cmd, **kw) whose child is sent SIGKILL when this process dies, however it
    dies (dies_with_us); `preexec_fn`, if given, runs after that is asked (in the child, before
    exec). Every child the collector (its broker), the tests and the benchmarks start goes
    through this or run_child (tests/test_test_children.py holds them to it)."""
    return subprocess.Popen(cmd, preexec_fn=_dying(preexec_fn), **kw)


def run_child(cmd: Any, *, preexec_fn: Callable[[], None] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, **kw) the same way (a child that runs for long, or in a session of its
    own, does not outlive this process either)."""
    return subprocess.run(cmd, preexec_fn=_dying(preexec_fn), **kw)


def start_time(pid: int) -> str | None:
    """The start time of a process that has not exited (field 22 of /proc/PID/stat, so that a PID
    used again is not taken for it); None for one that is gone or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def udp_port(s: str) -> int:
    """A --port value (decode, replay): an out-of-range one would match no datagram and say
    only that none was found."""
    try:
        port = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected a UDP port 1-65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{s}: expected a UDP port 1-65535")
    return port



def positive_seconds(s: str) -> float:
    """A timeout in seconds (health --timeout): 0 would give urllib a non-blocking socket that
    fails at once, and the probe would report the collector down when it is not."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected seconds > 0") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"{s}: expected seconds > 0")
    return v
