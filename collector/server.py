"""One collector worker: UDP sockets, the synchronous hot path, the sink, state and statistics.

Why this shape: the per-datagram path (receive -> decode -> enrich -> encode -> queue) runs in
C, in `decoders.Receiver.read` (recvmmsg when the socket is readable, then each datagram's
allowlist, protocol check, decode and append to the open record batch), synchronously, so a
datagram is fully handled before the next one and there is no per-datagram task, await or
Python frame. What is rare or slow to say (a refused exporter, a full batch, keyed flows before
the partition count is known, errors) comes back to this module's `Worker` methods. Everything slow or fallible (Kafka, disk,
metrics, informers) runs in separate tasks that meet the hot path only at the bounded queue and
at plain integer counters. `Worker` is the composition root of one process; `collector.app`
runs one in-process or forks several.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import orjson

from .config import Config, Listener
from .metrics import FINAL, LABELS, SOCKETS, DecoderSeries, ExporterLabels, Snapshot
from .sinks import COUNTERS, FLOWS, KafkaSink, Prebuilt, Sink, make_sink
from .state import StateFile
from .util import RateLimitedLog

log = logging.getLogger("flowscope.server")

# The label values of the fixed-label counters (docs/collector.md's metrics table), published at
# 0 before their first event.
DATAGRAM_DROP_REASONS = ("not_allowed", "wrong_protocol", "internal", "socket_error", "shutdown")
FLOW_DROP_REASONS = ("queue_full", "evicted", "shutdown", "unconfirmed", "sink_error", "rejected", "too_large",
                     "duplicate", "worker_died", "internal")
KAFKA_ERROR_KINDS = ("connect", "metadata", "produce", "rejected", "too_large", "admin", "compress")


def labelled(known: tuple[str, ...], counts: Mapping[str, int]) -> dict[tuple[str, ...], int]:
    """A one-label counter's values: every known label value at 0, then the counts."""
    out: dict[tuple[str, ...], int] = {(k,): 0 for k in known}
    for k, v in counts.items():
        out[(k,)] = v
    return out


# What each listener scheme takes, by the datagram's first bytes: sFlow v5 starts with a 32-bit
# version 5; NetFlow/IPFIX start with a 16-bit version. (bytes.startswith with a tuple, bound
# once: no slice a datagram.)
SCHEME_PREFIXES: dict[str, tuple[bytes, ...]] = {
    "sflow": (b"\x00\x00\x00\x05",),
    "ipfix": (b"\x00\x0a",),
    "netflow": (b"\x00\x01", b"\x00\x05", b"\x00\x07", b"\x00\x09", b"\x00\x0a"),
}


def sniff_protocol(data: bytes) -> str:
    """What a datagram refused by a listener looks like, for the log: the protocol and version
    its first bytes say, and the listener scheme that takes it (a port mix-up is the usual cause)."""
    if data[:4] == b"\x00\x00\x00\x05":
        return "sFlow v5 (an sflow:// listener takes it)"
    if data[:3] == b"\x00\x00\x00" and len(data) >= 4 and data[3] in (2, 4):
        return f"sFlow v{data[3]} (not decoded: sFlow v5 only)"
    if len(data) < 2:
        return "too short for any flow protocol"
    v = int.from_bytes(data[:2], "big")
    if v == 10:
        return "IPFIX (an ipfix:// or netflow:// listener takes it)"
    if v in (1, 5, 7, 9):
        return f"NetFlow v{v} (a netflow:// listener takes it)"
    if v in (6, 8):
        return f"NetFlow v{v} (not decoded: v1, v5, v7, v9 and IPFIX only)"
    return "no flow protocol flowscope knows"


# The largest receive buffer Linux grants (as open_socket reports it, halved): the kernel keeps
# twice the requested size in an int (sock_setsockopt: min(val, INT_MAX / 2) * 2), whatever
# net.core.rmem_max or CAP_NET_ADMIN allow.
LINUX_MAX_RCVBUF = (2**31 - 1) // 2

# At most one log line per listener this often saying that the kernel dropped datagrams for a
# full receive buffer (each line counts every drop since the previous one).
KERNEL_DROPS_LOG_INTERVAL = 10.0


def rmem_max() -> int | None:
    """net.core.rmem_max: what SO_RCVBUF is capped at without CAP_NET_ADMIN (None: unreadable)."""
    try:
        with open("/proc/sys/net/core/rmem_max") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


class KernelDropWarnings:
    """The log line saying that the kernel dropped datagrams because a listener's receive buffer
    was full: lost flows, which no other line shows (the stop line's "dropped" counts flows
    after decoding). At most one per listener every KERNEL_DROPS_LOG_INTERVAL, counting every
    drop since the previous one, with the granted SO_RCVBUF and what to raise. The worker of a
    single-process collector tells its own listeners; with --workers N the supervisor tells
    every worker's (collector.app), since a worker that hangs cannot, while the kernel goes on
    handing its socket a share of the exporters and drops them once its buffer is full."""

    def __init__(self, rcvbuf: int) -> None:
        self.rcvbuf = rcvbuf     # what --rcvbuf asked for (0: the kernel's default)
        self._told: dict[Any, int] = {}      # listener key -> drops told so far
        self._told_at: dict[Any, float] = {}  # ... and when the last line was

    def tell(self, key: Any, listener: str, drops: int, granted: int, final: bool = False, why: str = "") -> None:
        """`drops`: the listener's total so far (the socket's counter); `key`: whose listener it
        is (its index, or (worker, listener)); `final` (stopping): whatever is left untold at
        once; `why`: a cause known besides the buffer's size (a worker not reading), said first."""
        now = time.monotonic()
        new = drops - self._told.get(key, 0)
        if new <= 0 or (not final and now - self._told_at.get(key, -KERNEL_DROPS_LOG_INTERVAL) < KERNEL_DROPS_LOG_INTERVAL):
            return
        self._told[key] = drops
        self._told_at[key] = now
        cap = rmem_max()
        if self.rcvbuf and granted < min(self.rcvbuf, LINUX_MAX_RCVBUF):
            fix = (f"the kernel granted {granted} of the {self.rcvbuf} bytes --rcvbuf asks for: without "
                   f"CAP_NET_ADMIN it caps SO_RCVBUF at net.core.rmem_max ({cap if cap is not None else '?'}); "
                   f"raise it (sysctl -w net.core.rmem_max={self.rcvbuf}) or give the collector "
                   "CAP_NET_ADMIN, or more CPU (--workers)")
        else:
            size = str(self.rcvbuf or "0: the kernel's default, net.core.rmem_default")
            fix = (f"raise --rcvbuf (now {size}"
                   + (f"; without CAP_NET_ADMIN net.core.rmem_max, now {cap}, caps it" if cap is not None else "")
                   + ") to absorb bursts, or give the collector more CPU (--workers)")
        log.warning("listener %s: the kernel dropped %d datagram%s because the socket's receive buffer "
                    "(SO_RCVBUF %d bytes) was full: %s, and their flows are lost; %s (counted in "
                    "flowscope_kernel_receive_drops_total)", listener, new, "" if new == 1 else "s", granted,
                    why or "they arrived faster than flowscope read them", fix)


def bind_hint(exc: OSError, port: int, setting: str) -> str:
    """What to do about a bind that failed, for the error line: the cause an errno names and the
    setting to change (`setting`: the flag of the address, --listen, --metrics-addr...)."""
    if exc.errno == errno.EADDRINUSE:
        return (f" (another process, another collector perhaps, holds port {port}: stop it, or choose "
                f"another port with {setting})")
    if exc.errno == errno.EACCES and port < 1024:
        return (f" (port {port} is below 1024: binding it needs root or CAP_NET_BIND_SERVICE (or a lower "
                f"net.ipv4.ip_unprivileged_port_start); grant it, or choose a port of 1024 or more with {setting})")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f" (no interface of this host has that address: give one it has, or 0.0.0.0 / [::] for all, "
                f"with {setting})")
    return ""


def open_socket(lst: Listener, rcvbuf: int, reuseport: bool) -> tuple[socket.socket, int]:
    """A bound non-blocking UDP socket and the receive buffer the kernel granted."""
    family = socket.AF_INET6 if ":" in lst.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            # keep [::]:P from also claiming 0.0.0.0:P, so both can be listed
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if rcvbuf:
            forced = False
            force = getattr(socket, "SO_RCVBUFFORCE", 33)
            try:
                # CAP_NET_ADMIN may exceed net.core.rmem_max; without it fall back to the capped call
                sock.setsockopt(socket.SOL_SOCKET, force, rcvbuf)
                forced = True
            except OSError:
                pass
            if not forced:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((lst.host, lst.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    # Linux reports twice the requested value (bookkeeping overhead); halve it to compare.
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    return sock, granted


def udp_socket_stats(inodes: set[int]) -> dict[int, tuple[int, int]]:
    """Per socket of ours (by inode), from /proc/net/udp{,6}: the bytes waiting in its receive
    queue and its kernel drop counter (the last column).

    asyncio cannot use recvmsg with SO_RXQ_OVFL, and /proc has the same counter."""
    out: dict[int, tuple[int, int]] = {}
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) < 13:
                        continue
                    ino = int(parts[9])
                    if ino in inodes:
                        out[ino] = (int(parts[4].partition(":")[2], 16), int(parts[12]))
        except OSError:
            continue
    return out


class StartupError(Exception):
    """A part of the worker that could not start, named: which listener, which output file."""


# Seconds the open record batch may keep filling behind queued batches before it is queued too.
OPEN_BATCH_MAX_AGE = 1.0
# stdout and file: the lines a writer holds before it is queued (the sink writes up to 4 MiB at
# a time), and how long its first line may wait for more while nothing else is queued.
STREAM_BATCH_BYTES = 256 << 10
STREAM_LINGER = 0.005
# Bytes the keyed modes' open batches may hold together (or four batches, if more) before they
# are all queued: with many partitions none may fill up for a long while.
KEYED_OPEN_BYTES = 32 << 20


class Worker:
    """Composition root of one worker process (or the only one)."""

    def __init__(self, cfg: Config, index: int | None = None, *, enricher: Any = None) -> None:
        from decoders import (  # compiled; imported late so `flowscope config` works without it
            Decoder,
            DecoderConfig,
            Receiver,
        )

        self.cfg = cfg
        self.index = index
        self.listeners = cfg.listeners()
        self.decoder = Decoder(DecoderConfig(
            max_templates_per_exporter=cfg.max_templates_per_exporter,
            max_exporters=cfg.max_exporters,
            max_template_fields=cfg.max_template_fields,
            max_state_bytes=cfg.max_exporter_state,
            default_sampling=cfg.default_sampling,
            sampling=dict(cfg.sampling),
            dedup=cfg.dedup,
            split_biflows=cfg.split_biflows,
            renormalize=cfg.renormalize,
            max_datagram=cfg.max_datagram,
            max_exporter_rate=cfg.max_exporter_rate,
            keep_options=False,     # (batch.options: nothing here reads them)
            keep_counters=cfg.counters,   # (without --counters: counted per exporter, not decoded)
        ))
        self.decode = self.decoder.decode
        self._receiver_cls = Receiver
        self.enricher = enricher
        # Kafka: flows are written straight into Kafka record batches in C. Key mode none: one
        # open batch (decoders.RecordBatchWriter), any partition. Keyed modes: a batch per
        # partition (decoders.KeyedBatches), each flow hashed to its partition as Kafka's
        # clients do, once the sink knows the topic's partition count; until then (the first
        # datagrams) flows go per record, keyed by the sink.
        self.writer: Any = None
        self.keyed: Any = None
        self.keyed_mode = ""
        self._open_gen = 0      # flush_records() calls: the linger loop's age of the open batches
        if cfg.sink_kind() == "kafka":
            from decoders import KeyedBatches, RecordBatchWriter

            self._writer_cls = RecordBatchWriter
            if cfg.kafka.key == "none":
                self.writer = RecordBatchWriter(cfg.kafka.batch_bytes)
            else:
                self.keyed_mode = cfg.kafka.key
                self._keyed_cls = KeyedBatches
        else:
            # stdout and file: JSON lines written in C (decoders.LineWriter), queued a writer at a
            # time (the linger loop's rule, at STREAM_LINGER)
            from decoders import LineWriter

            self._writer_cls = LineWriter
            # (a quarter of --queue-bytes at most: a writer is queued whole, and one larger than
            # the queue's room would be dropped whole)
            self._stream_bytes = max(1024, min(STREAM_BATCH_BYTES, cfg.queue_bytes // 4))
            self.writer = LineWriter(self._stream_bytes)
        # bytes the keyed modes' open batches (one per partition) may hold before all are queued
        # (half of --queue-bytes at most, one batch at least, and room left for two batches in the
        # queue: one waiting behind one in flight; the config's three batches allow that)
        self.keyed_cap = max(cfg.kafka.batch_bytes,
                             min(cfg.queue_bytes // 2, cfg.queue_bytes - 2 * cfg.kafka.batch_bytes,
                                 max(KEYED_OPEN_BYTES, 4 * cfg.kafka.batch_bytes)))
        self.counters = cfg.counters
        self.counter_records = 0   # sFlow counter records decoded (and offered to the queue)
        self.sink: Sink = make_sink(cfg)
        # with kafka.compression_thread, the sink's hook that starts compressing a queued batch
        self._queued_batch: Any = getattr(self.sink, "queued_batch", None)
        # Readiness fails once queued records have waited this long with nothing delivered.
        self.stall_limit = max(10.0, cfg.kafka.request_timeout_ms / 1000 * 2)
        self.queue = self.sink.queue
        # --queue-bytes bounds the open batches and the queue together: the queue takes what the
        # open batches may hold off its bound (they never grow past it: a full one is queued, the
        # keyed ones all go at keyed_cap), so queued + in flight + open stays within it
        if self.keyed_mode:
            self.queue.limit = cfg.queue_bytes - self.keyed_cap
        elif self.writer is not None:
            self.queue.limit = cfg.queue_bytes - self.writer.max_bytes
        self.allow_nets = [ipaddress.ip_network(c) for c in cfg.allow_exporters]
        self.dgram_drops: dict[str, int] = collections.defaultdict(int)
        self.flow_drops: dict[str, int] = collections.defaultdict(int)
        self.rl = RateLimitedLog(log)
        self.state = StateFile(cfg.state_file, index) if cfg.state_file else None
        self.labels = ExporterLabels(cfg.metrics_top_exporters)
        self.series = DecoderSeries(self.decoder, self.labels)   # the decoder's series, kept up to date by changes
        # per listener, once bound: its socket and the Receiver reading it (decoders.Receiver)
        self.sockets: list[socket.socket] = []
        self.receivers: list[Any] = []
        # what listeners closed (or never opened) had received: datagrams, bytes
        self._rx_closed: list[list[int]] = [[0, 0] for _ in self.listeners]
        # datagrams refused at shutdown that closed listeners held for the final save (Receiver.
        # refused_held), and of all held, those counted in dgram_drops (_count_refused)
        self._refused_held = 0
        self._refused_counted = 0
        # the decoder's series as of the save as the stop began, shown from then until the stop
        # ends (Worker.stop; None: as the decoder counts them)
        self._held_series: Snapshot | None = None
        self.inodes: list[int] = []
        self.granted: list[int] = []
        self.bound = False
        self.stopping = False
        self._kernel_drops: list[int] = [0] * len(self.listeners)
        # the log lines about them (a worker of --workers N leaves them to its supervisor, which
        # tells them also while this worker cannot: KernelDropWarnings)
        self._kernel_drop_log = KernelDropWarnings(cfg.rcvbuf) if index is None else None
        self._tasks: list[asyncio.Task[None]] = []

    # -- hot-path helpers -------------------------------------------------------------------------
    def allowed(self, ip: str) -> bool:
        """Allowlist decision for one address (decoders.Receiver keeps the answer per source
        address in its bounded table: asked once per address it has not seen lately)."""
        if not self.allow_nets:
            return True
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        return any(addr in n for n in self.allow_nets)

    # What decoders.Receiver hands back (see its docstring): the rare cases of the hot path.
    def refused(self, index: int, ip: str) -> None:
        """A datagram from an exporter --allow-exporters does not list."""
        self.dgram_drops["not_allowed"] += 1
        # one line per 10 s per listener, as for wrong_protocol: a wrong allowlist otherwise
        # looks like nothing arriving
        lst = self.listeners[index]
        self.rl.warning(f"not_allowed:{index}", "listener %s: datagram from %s, which --allow-exporters does not "
                        "list: dropped, counted in flowscope_datagrams_dropped_total{reason=\"not_allowed\"}",
                        lst, ip, extra={"listener": str(lst), "exporter": ip, "reason": "not_allowed"})

    def wrong_protocol(self, index: int, ip: str, data: bytes) -> None:
        """A datagram that is not what its listener takes (SCHEME_PREFIXES)."""
        self.dgram_drops["wrong_protocol"] += 1
        # one line per 10 s per listener (a key per source would grow without bound under a
        # spoofed flood): which exporter sends what this listener does not take, and what it
        # looks like
        lst = self.listeners[index]
        self.rl.warning(f"wrong_protocol:{index}", "listener %s: datagram from %s starting %s is not %s but looks "
                        "like %s: dropped, counted in flowscope_datagrams_dropped_total{reason=\"wrong_protocol\"}",
                        lst, ip, data[:4].hex(), lst.scheme, sniff_protocol(data),
                        extra={"listener": str(lst), "exporter": ip, "reason": "wrong_protocol"})

    def deliver(self, batch: Any, ip: str) -> None:
        """A decoded datagram's flows where there is no open batch for the Receiver to append to:
        the keyed Kafka modes (every other sink has one: a RecordBatchWriter or a LineWriter)."""
        self.write_keyed(batch, ip)

    def after_decode(self, batch: Any, ip: str) -> None:
        """A decoded datagram's sFlow counter records (with --counters) and the flows the
        decoder dropped, by reason."""
        if self.counters:
            cs = batch.counters
            if cs:
                self.counter_records += len(cs)
                self.queue.offer(COUNTERS, [orjson.dumps(c) for c in cs], ip, -1, int(batch.recv_time * 1000))
        for reason, n in batch.dropped.items():
            self.flow_drops[reason] += n

    def internal_error(self, ip: str, exc: Exception, pending: int) -> None:
        """A decoder, enricher or encoder bug: it costs one datagram, not the listener. pending:
        flows the decoder counted (in flowscope_flows_total) that were not handed on: dropped,
        said."""
        self.dgram_drops["internal"] += 1
        if pending:
            self.flow_drops["internal"] += pending
        self.rl.error("hot", "datagram from %s: internal error %r (datagram dropped%s)", ip, exc,
                      f", {pending} decoded flows with it: flowscope_flows_dropped_total{{reason=\"internal\"}}"
                      if pending else "", extra={"exporter": ip, "reason": "internal"})

    def socket_error(self, index: int, exc: OSError) -> None:
        """A listener's socket refused a read (not for want of datagrams)."""
        self.dgram_drops["socket_error"] += 1
        self.rl.warning("sockerr", "listener %s: %s", self.listeners[index], exc,
                        extra={"listener": str(self.listeners[index]), "reason": "socket_error"})

    def received(self) -> tuple[list[int], list[int]]:
        """Per listener: datagrams and bytes received, its closed sockets' included."""
        dg = [c[0] for c in self._rx_closed]
        by = [c[1] for c in self._rx_closed]
        for r in self.receivers:
            dg[r.index] += r.datagrams
            by[r.index] += r.nbytes
        return dg, by

    def write_records(self, batch: Any, done: int | None = None, ip: str = "") -> None:
        """Hot path (fast Kafka): append a datagram's flows to the open record batch; a full
        batch goes to the queue whole. done: the flows the open batch already took (its
        append() answer; decoders.Receiver makes that first call itself). A failure (the
        encoder's, the enricher's) is counted here."""
        n = len(batch)
        i = 0 if done is None else done
        try:
            if done is None:
                i = self.writer.append(batch, self.enricher, 0)
            while i < n:
                self.flush_records()
                i = self.writer.append(batch, self.enricher, i)
        except Exception as exc:
            # an append that raises takes back only its own call's records: the flows before it
            # are in batches (open, or queued when one filled) and will be delivered, so only
            # the n - i in none are dropped (the Receiver, knowing only its own C append, would
            # have counted the whole datagram's); the datagram counted once, not raised
            self.internal_error(ip, exc, n - i)

    def keyed_batches(self) -> Any:
        """The keyed modes' open batches (decoders.KeyedBatches), made for the topic's partition
        count and the batch size of now; None while the count is not known. decoders.Receiver
        asks once a read (neither changes while the event loop is held) and appends in C."""
        parts = self.sink.partitions.get(self.cfg.kafka.topic)  # type: ignore[attr-defined]
        if parts is None:
            return None
        kb = self.keyed
        if kb is None or kb.partitions != len(parts) or kb.max_bytes != self._batch_bytes():
            # batches keyed for the old count go as they are; so do those of the size a broker
            # refused (KafkaSink._shrink: cut before they go)
            self.flush_records()
            kb = self.keyed = self._keyed_cls(len(parts), self._batch_bytes(), self.keyed_mode)
            log.info("kafka: flows keyed by %s written into record batches per partition (%d partition%s of %s)",
                     self.keyed_mode, len(parts), "" if len(parts) == 1 else "s", self.cfg.kafka.topic)
        return kb

    def write_keyed(self, batch: Any, ip: str, done: int | None = None) -> None:
        """Hot path (keyed Kafka modes): append a datagram's flows to their partitions' open
        batches (a full one goes to the queue whole); per record while the partition count is
        not known yet. done: the flows the open batches already took (decoders.Receiver's
        append, which hands the datagram on when a batch filled or all passed keyed_cap). A
        failure is counted here, as in write_records."""
        key = ip.encode() if self.keyed_mode == "exporter" else None
        n = len(batch)
        i = 0 if done is None else done
        try:
            if done is None:
                kb = self.keyed_batches()
                if kb is None:
                    self.queue.offer(FLOWS, batch.to_json(self.enricher), ip, -1, int(batch.recv_time * 1000))
                    return
                i = kb.append(batch, self.enricher, 0, key)
            else:
                kb = self.keyed
            while i < n:
                self._queue_batch(kb.take(kb.full), kb.full)
                i = kb.append(batch, self.enricher, i, key)
            if kb.size > self.keyed_cap:
                # many partitions, none full yet: the open batches go to the queue, where their
                # bytes count against --queue-bytes (as a Kafka producer's buffer.memory bounds its
                # per-partition batches)
                self.flush_records()
        except Exception as exc:
            self.internal_error(ip, exc, n - i)     # (as write_records)

    def _queue_batch(self, wr: Any, slot: int = -1) -> None:
        # A small batch that waits behind another gives its max-size buffer back (trim: copied
        # into an allocation of its own size), and so does the one it queues behind. One queued
        # into an empty queue goes out next: copying it cost a copy of every flow's bytes and
        # fresh pages for the copy (perf, thirty-fifth session: 70 ns an enriched flow at
        # 150k flows/s, where every linger flush was a small batch), for nothing.
        chunks = self.queue.chunks
        if chunks:
            wr.trim()
            last = chunks[-1].records
            if isinstance(last, Prebuilt):
                last.writer.trim()
        if self.queue.offer(FLOWS, Prebuilt(wr, slot), "", wr.size) and self._queued_batch is not None:
            self._queued_batch(wr)

    def flush_records(self) -> None:
        """Queue the open record batches (those holding any flow) and start new ones."""
        self._open_gen += 1
        wr = self.writer
        if wr is not None and wr.records:
            self._queue_batch(wr)
            self.writer = self._writer_cls(self._batch_bytes())
        kb = self.keyed
        if kb is not None:
            for slot, wr in kb.take_all():
                self._queue_batch(wr, slot)

    def _batch_bytes(self) -> int:
        """The size of new flow record batches: --kafka-batch-bytes, or less once a broker refused
        one as too large (KafkaSink.batch_limit); stdout and file: STREAM_BATCH_BYTES of lines (less
        with a small --queue-bytes)."""
        limit = getattr(self.sink, "batch_limit", None)
        return self._stream_bytes if limit is None else int(limit[FLOWS])

    def open_batches(self) -> tuple[int, int]:
        """Records and bytes in the open record batches (decoded, neither queued nor dropped)."""
        wr = self.writer
        if wr is not None:
            return (wr.records, wr.size) if wr.records else (0, 0)  # (an empty batch is its header)
        kb = self.keyed
        if kb is not None:
            return kb.records, kb.size
        return 0, 0

    async def _linger_loop(self) -> None:
        # The open batch waits at most linger_ms for more flows, like a producer's linger, but
        # only while nothing is queued: behind a backlog it keeps filling towards
        # --kafka-batch-bytes. Flushing it every linger_ms regardless made batches of
        # rate x linger_ms, each sent as its own request: with a broker answering in more than
        # about 40 ms the requests in flight could not keep up at any rate, and the queue grew.
        # Behind a backlog that does not move (the broker away), the open batch still goes to the
        # queue after OPEN_BATCH_MAX_AGE: there its flows are bounded by --queue-bytes and
        # counted if dropped, and a shutdown finds them queued.
        delay = max(self.cfg.kafka.linger_ms, 1) / 1000 if self.cfg.sink_kind() == "kafka" else STREAM_LINGER
        loop = asyncio.get_running_loop()
        opened = -1                 # the open batches when first seen (flush_records() count), and when
        since = 0.0
        while True:
            await asyncio.sleep(delay)
            wr = self.writer
            if wr is not None:
                if not wr.records:
                    if wr.max_bytes != self._batch_bytes():
                        # (the topic's max.message.bytes read since it was made, KafkaSink._set_limit:
                        # made at the new size before flows fill it; a full one is cut before it goes)
                        self.writer = self._writer_cls(self._batch_bytes())
                    continue
            elif self.keyed is None or not self.keyed.records:
                continue
            if opened != self._open_gen:
                opened, since = self._open_gen, loop.time()
            if not self.queue.chunks or loop.time() - since >= OPEN_BATCH_MAX_AGE:
                self.flush_records()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.state is not None:
            self.state.load_into(self.decoder)
        try:
            await self.sink.start()
        except OSError as exc:
            what = f"output file {self.cfg.output_file}" if self.sink.name == "file" else f"{self.sink.name} sink"
            raise StartupError(f"{what}: cannot open: {exc.strerror or exc}") from None
        loop = asyncio.get_running_loop()
        reuse = self.cfg.workers > 1
        for i, lst in enumerate(self.listeners):
            try:
                sock, granted = open_socket(lst, self.cfg.rcvbuf, reuse)
            except OSError as exc:
                raise StartupError(f"listener {lst}: cannot bind: {exc.strerror or exc}"
                                   f"{bind_hint(exc, lst.port, '--listen')}") from None
            try:
                rcv = self._receiver_cls(sock.fileno(), self.decoder, self, i, lst.scheme)
                loop.add_reader(sock.fileno(), rcv.read)
            except BaseException:
                sock.close()
                raise
            self.inodes.append(os.fstat(sock.fileno()).st_ino)
            self.granted.append(granted)
            self.sockets.append(sock)
            self.receivers.append(rcv)
            if self.cfg.rcvbuf and granted < self.cfg.rcvbuf and granted >= LINUX_MAX_RCVBUF:
                # neither net.core.rmem_max nor CAP_NET_ADMIN raises this one
                log.warning("listener %s: SO_RCVBUF %d requested, kernel granted %d, the most Linux grants "
                            "(it keeps twice the size in a C int); ask for at most %d",
                            lst, self.cfg.rcvbuf, granted, LINUX_MAX_RCVBUF)
            elif self.cfg.rcvbuf and granted < self.cfg.rcvbuf:
                log.warning("listener %s: SO_RCVBUF %d requested, kernel granted %d; raise it with "
                            "`sysctl -w net.core.rmem_max=%d` (or run with CAP_NET_ADMIN)",
                            lst, self.cfg.rcvbuf, granted, self.cfg.rcvbuf)
            else:
                log.info("listener %s: bound, SO_RCVBUF %d", lst, granted)
        self.bound = True
        if self.state is not None:
            self._tasks.append(loop.create_task(self._state_loop()))
        if self.writer is not None or self.keyed_mode:
            self._tasks.append(loop.create_task(self._linger_loop()))

    async def _state_loop(self) -> None:
        assert self.state is not None
        while True:
            await asyncio.sleep(self.cfg.state_interval)
            try:
                await self.state.refresh_into(self.decoder)
            except Exception as exc:    # a shared file that cannot be read must not stop the saves
                log.warning("state: refreshing templates from %s failed: %r", self.cfg.state_file, exc)
            await self.state.save_async(self.decoder)

    def ready(self) -> tuple[bool, list[str]]:
        why = []
        if self.stopping:
            why.append("shutting down")
        elif not self.bound:
            why.append("listeners not bound")
        # (a sink that knows no record can reach its destination: the Kafka sink whose partition
        # leaders cannot be reached, however well the bootstrap brokers answer)
        unreachable = self.sink.unreachable()
        if not self.sink.connected:
            problem = self.sink.problem or unreachable
            why.append(f"{self.sink.name} sink not connected" + (f" ({problem})" if problem else ""))
        elif unreachable:
            why.append(f"{self.sink.name} sink connected, but {unreachable}")
        else:
            stalled = self.sink.stalled_for()
            if stalled > self.stall_limit:
                # Connected but delivering nothing (every produce refused and retried, or the
                # keyed modes' producer retrying inside aiokafka): as unready as disconnected.
                why.append(f"{self.sink.name} sink delivered nothing for {stalled:.0f} s with "
                           f"{self.sink.waiting()} records waiting")
            failing = self.sink.failing_for(self.stall_limit)
            if failing > self.stall_limit:
                # Dropping what it is given (disk full, closed stdout, a topic the broker refuses
                # for good): nothing waits, but nothing lands either.
                why.append(f"{self.sink.name} sink failed every flow for {failing:.0f} s (see "
                           "flowscope_flows_dropped_total{reason=\"sink_error\"|\"rejected\"})")
        if self.enricher is not None and not getattr(self.enricher, "ready", True):
            unsynced = getattr(self.enricher, "unsynced", None)
            why.extend((unsynced() if unsynced is not None else None) or ["informers not synced"])
        return (not why), why

    async def stop(self) -> None:
        """Decode what is queued, drain the sink within the shutdown timeout, close the listeners,
        then save state. What the kernel already holds in the listeners' receive buffers (under load, up to --rcvbuf of
        datagrams) is still decoded, for up to half of --shutdown-timeout; from then on until the
        sockets close (sink drained), what arrives is read and counted as
        flowscope_datagrams_dropped_total{reason="shutdown"}, not left unread in a socket about
        to be closed, and its sequence number taken as received (Decoder.refused): the final
        save comes after the last of those reads, so the next run, going on from it, does not
        count them lost as well.

        A save is made as well when the decoding ends, before the sink drains (StateFile.
        save_stopping), so that a process killed during the drain (SIGKILL: a Kubernetes grace
        period shorter than the drain, the supervisor's kill) leaves the sequence state too. The
        datagrams refused after it that a stream took are then counted by one run only: held
        (Receiver.hold_refused) and counted here when the stop ends; killed before, this run
        never counts them and the next one, going on from that save, counts them lost
        (flowscope_sequence_lost_total) with what the exporters sent while it was down. So too
        when the final save fails while that save is still the file (_leave_refused). That save
        carries the gaps still open, and the decoder's series are held as they were at it
        (_held_series) until the final save is written: what the refusals fill, decide or settle
        in the streams is then counted by one run only, as well."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.shutdown_timeout
        self.stopping = True    # /readyz: not ready from here on
        await self._drain_sockets(loop.time() + self.cfg.shutdown_timeout / 2)
        for task in self._tasks:
            task.cancel()
        early: asyncio.Task[None] | None = None
        if self.state is not None:
            # (exported here, before the first refused read: every datagram the file does not
            # carry is one held below; and the decoder's series held as of here, the gaps older
            # than the reorder window counted first: the next run counts the rest from that save
            # if this process is killed before the final one, so this run must not, unless the
            # final save is written)
            self._held_series = self.series.update(*self.decoder.series_changed(time.time()))
            write = self.state.save_stopping(self.decoder)
            if write is not None:
                early = loop.create_task(self._saved_stopping(write))
            else:
                self._held_series = None
        for r in self.receivers:
            r.hold_refused = early is not None
            r.refusing = True   # read on, counted as dropped (reason shutdown), not decoded
        self.bound = False      # flowscope_listener_up: no longer decoding
        try:
            self.flush_records()
            await self.sink.drain(deadline)
            self._close_listeners(time.monotonic() + max(0.0, deadline - loop.time()))
        finally:
            if early is not None:
                try:
                    await early
                except Exception as exc:    # (the final save below is the one that matters)
                    log.error("state: the save as the stop began failed: %r", exc)
            # (saved first, as before, a drain cut short still left the templates saved)
            if self.state is not None and not self.state.save(self.decoder, sequences=True) \
                    and self.state.holds_stopping():
                self._leave_refused()
            else:
                self._held_series = None
            self._count_refused()
            if self.dgram_drops.get("shutdown"):
                log.warning("shutdown: %d datagrams were read and not decoded (exporters kept sending, or the "
                            "listeners' receive buffers held more than half of --shutdown-timeout could decode; "
                            "counted in flowscope_datagrams_dropped_total{reason=\"shutdown\"})",
                            self.dgram_drops["shutdown"])

    async def _saved_stopping(self, write: Coroutine[Any, Any, bool]) -> None:
        """The save as the stop began, written: one that failed carries no datagram refused
        since, so those held for it are counted now, and those still to come at once."""
        if await write:
            return
        self._held_series = None
        for r in self.receivers:
            r.hold_refused = False
        self._count_refused()

    def _leave_refused(self) -> None:
        """The final save failed and the save as the stop began is still the file: the next run
        on this host goes on from it and counts the refusals held since in flowscope_sequence_
        lost_total, as after a kill. Counted as shutdown drops here too, they were counted twice.
        (So are the sequence counts since, which the metrics go on holding: _held_series.)"""
        held = self._refused_held + sum(r.refused_held for r in self.receivers)
        if held > self._refused_counted:
            log.warning("shutdown: the final state save failed: %d datagrams read and not decoded since the save "
                        "as the decoding ended are not counted as shutdown drops; the next start on this host goes "
                        "on from that save and counts them in flowscope_sequence_lost_total (within 5 minutes of "
                        "their exporters' last datagrams)", held - self._refused_counted)
            self._refused_counted = held

    def _count_refused(self) -> None:
        """Count in dgram_drops["shutdown"] the refused datagrams the listeners held (Receiver.
        hold_refused) and not counted yet."""
        held = self._refused_held + sum(r.refused_held for r in self.receivers)
        if held > self._refused_counted:
            self.dgram_drops["shutdown"] += held - self._refused_counted
            self._refused_counted = held

    async def _drain_sockets(self, until: float) -> None:
        """Let the listeners read on until their receive queues are empty or `until`."""
        loop = asyncio.get_running_loop()
        inodes = set(self.inodes)
        if not inodes or not self.bound:
            return
        while loop.time() < until:
            if not any(queued for queued, _ in udp_socket_stats(inodes).values()):
                return
            await asyncio.sleep(0.01)

    def _close_listeners(self, until: float) -> None:
        """Read and count what the sockets still hold, then close them; what the kernel receives
        after that is refused by it (ICMP unreachable). Reading goes on until the sockets are
        empty or `until` (what is left of --shutdown-timeout; a quarter of a second at least):
        the event loop does not run meanwhile, and a large --rcvbuf can hold seconds of
        datagrams. What is still queued then is discarded by the kernel uncounted as datagrams:
        its size is logged."""
        stop_counting = max(time.monotonic() + 0.25, until)
        left = 0
        for i, r in enumerate(self.receivers):
            r.refusing = True
            while True:
                if time.monotonic() >= stop_counting:
                    left += sum(q for q, _ in udp_socket_stats({self.inodes[i]}).values())
                    break
                if not r.read(1024):
                    break
        self._read_kernel_drops()   # before the sockets, and their counters, are gone
        self.close_sockets()
        if left:
            log.error("shutdown: datagrams still queued in the listeners' receive buffers at --shutdown-timeout "
                      "were discarded unread, not counted (%d bytes of socket memory: their payload and the "
                      "kernel's overhead per datagram)", left)

    def _read_kernel_drops(self) -> None:
        """Bring the listeners' kernel drop counts up to their sockets' counters (/proc/net/udp)."""
        drops = {ino: d for ino, (_, d) in udp_socket_stats(set(self.inodes)).items()}
        for i, ino in enumerate(self.inodes):
            if ino in drops:
                # keep the max: the socket is gone (0) after close, the count must not go back
                self._kernel_drops[i] = max(self._kernel_drops[i], drops[ino])

    def _warn_kernel_drops(self, final: bool) -> None:
        """Say in the log that the kernel dropped datagrams on a listener (KernelDropWarnings);
        `final` (stopping): whatever is left untold."""
        if self._kernel_drop_log is None:
            return
        for i, lst in enumerate(self.listeners):
            self._kernel_drop_log.tell(i, str(lst), self._kernel_drops[i],
                                       self.granted[i] if i < len(self.granted) else 0, final)

    @property
    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped on this worker's listeners (receive buffers full)."""
        return sum(self._kernel_drops)

    def close_sockets(self) -> None:
        """Stop reading the listeners and close their sockets (what they received stays counted)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        dg, by = self.received()
        for r, sock in zip(self.receivers, self.sockets, strict=True):
            if loop is not None:
                loop.remove_reader(sock.fileno())
            sock.close()
            self._rx_closed[r.index] = [dg[r.index], by[r.index]]
            self._refused_held += r.refused_held
        self.receivers = []
        self.sockets = []

    # -- statistics ----------------------------------------------------------------------------------
    def snapshot(self, final: bool = False) -> Snapshot:
        """The worker's series. Export-sequence gaps older than the reorder window are counted as
        lost here (a late datagram can no longer fill them); `final`: every gap still open is.
        (The decoder's series stay as they were at the save as a stop began until its final save
        is written: _held_series, Worker.stop.)"""
        if self._held_series is not None:
            snap = dict(self._held_series)
        else:
            snap = self.series.update(*self.decoder.series_changed(None if final else time.time()))
        if self.labels.following:
            # --workers N: the supervisor chooses the labels from every worker's senders, and
            # counts the exporters over all workers
            snap[LABELS] = {(): self.labels.feed(*self.decoder.exporters_changed())}
        snap["flowscope_exporters"] = {(): self.decoder.exporter_count()}
        snap["flowscope_exporters_evicted"] = {(): self.decoder.evicted_exporters}
        snap["flowscope_exporter_state_bytes"] = {(): self.decoder.state_bytes}
        snap["flowscope_template_fields"] = {(): self.decoder.template_fields_counted}
        names = [str(lst) for lst in self.listeners]
        rx_datagrams, rx_bytes = self.received()
        snap["flowscope_received_datagrams"] = {(n,): v for n, v in zip(names, rx_datagrams, strict=False)}
        snap["flowscope_received_bytes"] = {(n,): v for n, v in zip(names, rx_bytes, strict=False)}
        # every documented reason from the start, at 0: an alert on increase() sees the first
        # event, and `== 0` checks have a series to compare
        snap["flowscope_datagrams_dropped"] = labelled(DATAGRAM_DROP_REASONS, self.dgram_drops)
        self._read_kernel_drops()
        self._warn_kernel_drops(final)
        snap["flowscope_kernel_receive_drops"] = {(n,): v for n, v in zip(names, self._kernel_drops, strict=False)}
        snap[SOCKETS] = {(): list(zip(names, self.inodes, strict=False))}
        snap["flowscope_socket_receive_buffer_bytes"] = {(n,): v for n, v in zip(names, self.granted, strict=False)}
        snap["flowscope_listener_up"] = {(n,): (1 if self.bound else 0) for n in names}
        q = self.queue
        fd = labelled(FLOW_DROP_REASONS, self.flow_drops)
        cd = labelled(FLOW_DROP_REASONS if self.counters else (), {})
        for (kind, reason), v in q.dropped.items():
            target = fd if kind == FLOWS else cd
            target[(reason,)] = target.get((reason,), 0) + v
        snap["flowscope_flows_dropped"] = fd
        snap["flowscope_counter_records_dropped"] = cd
        s = self.sink
        snap["flowscope_flows_delivered"] = {(s.name,): s.delivered[FLOWS]}
        snap["flowscope_counter_records_delivered"] = {(s.name,): s.delivered[COUNTERS]}
        # the open record batches are counted with the queue: flows in them are decoded and
        # neither delivered nor dropped yet
        open_records, open_bytes = self.open_batches()
        snap["flowscope_queue_bytes"] = {(): q.total_bytes + open_bytes}
        snap["flowscope_queue_records"] = {(): q.records_of(FLOWS) + open_records}
        if self.counters:
            snap["flowscope_counter_records"] = {(): self.counter_records}
            snap["flowscope_counter_records_queued"] = {(): q.records_of(COUNTERS)}
        snap["flowscope_queue_limit_bytes"] = {(): self.cfg.queue_bytes}
        from decoders import buffer_pool_stats  # (imported late, as in __init__)

        pool = buffer_pool_stats()
        snap["flowscope_batch_buffers"] = {("reused",): pool["reused"], ("fresh",): pool["allocated"]}
        snap["flowscope_sink_connected"] = {(): 1 if s.connected else 0}
        snap["flowscope_sink_stalled_seconds"] = {(): round(s.stalled_for(), 1)}
        snap["flowscope_sink_failing_seconds"] = {(): round(s.failing_for(self.stall_limit), 1)}
        if isinstance(s, KafkaSink):
            snap["flowscope_kafka_unreachable_partitions"] = {(): len(s.unreachable_partitions())}
            snap["flowscope_kafka_send_latency_seconds"] = {(): list(s.latency)}
            snap["flowscope_kafka_errors"] = labelled(KAFKA_ERROR_KINDS, s.errors)
            snap["flowscope_kafka_batches"] = {(): s.batches}
            snap["flowscope_kafka_resent_records"] = {("flows",): s.resent[FLOWS], ("counters",): s.resent[COUNTERS]}
            snap["flowscope_kafka_throttle_seconds"] = {(): s.throttle_seconds()}
            snap["flowscope_kafka_connections_dropped"] = {(): s.connections_dropped()}
            snap["flowscope_kafka_compression_bytes"] = {("in",): s.compressed_bytes[0],
                                                         ("out",): s.compressed_bytes[1]}
            if s.packer_seconds() is not None:
                snap["flowscope_kafka_compression_thread_seconds"] = {(): s.packer_seconds()}
        if self.state is not None:
            snap["flowscope_state_saves"] = {(k,): v for k, v in self.state.saves.items()}
            snap["flowscope_state_loads"] = {(k,): v for k, v in self.state.loads.items()}
        if self.enricher is not None:
            snap.update(enrich_series(self.enricher))
        ok, why = self.ready()
        snap["_ready"] = {(): (ok, why)}  # type: ignore[dict-item]
        if final:
            snap[FINAL] = {(): 1}   # nothing received after it (app.died)
        return snap


def enrich_series(enricher: Any) -> Snapshot:
    """Map Enricher.stats() onto the declared series without knowing its exact shape: counts named
    lookups_* (today lookups_cached and lookups_index: where an address's answer came from, not
    whether it had one) or hit*/miss* become lookups by result, flows_* (flows_identified,
    flows_unidentified) enriched flows by result, addresses_* (pod, node, service, none) flow
    addresses by kind, every other number an enrich_stat gauge."""
    out: Snapshot = {"flowscope_enrich_lookups": {}, "flowscope_enrich_flows": {}, "flowscope_enrich_addresses": {},
                     "flowscope_enrich_stat": {},
                     "flowscope_informers_synced": {(): 1 if getattr(enricher, "ready", False) else 0}}
    try:
        stats = enricher.stats() or {}
    except Exception:
        return out

    def walk(prefix: str, d: Any) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(f"{prefix}_{k}" if prefix else str(k), v)
        elif isinstance(d, (int, float)) and not isinstance(d, bool):
            if prefix.startswith(("hit", "miss", "lookups_")):
                out["flowscope_enrich_lookups"][(prefix,)] = d
            elif prefix.startswith("flows_"):
                out["flowscope_enrich_flows"][(prefix,)] = d
            elif prefix.startswith("addresses_"):
                out["flowscope_enrich_addresses"][(prefix[len("addresses_"):],)] = d
            else:
                out["flowscope_enrich_stat"][(prefix,)] = d
        elif isinstance(d, bool):
            out["flowscope_enrich_stat"][(prefix,)] = int(d)
        elif isinstance(d, str) and prefix.endswith("_last_error"):
            # an informer whose list/watch keeps failing serves its last cache and stays synced:
            # without this, only a rising errors_<cause> count said the API server was gone
            out["flowscope_enrich_stat"][(prefix[:-len("_last_error")] + "_failing",)] = 1 if d else 0

    walk("", stats)
    return out
