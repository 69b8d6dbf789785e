# cython: language_level=3
"""flowscope's decoders, compiled as one unit: NetFlow v5, NetFlow v9, IPFIX and sFlow v5.

Everything the hot path touches lives here so that a datagram crosses from Python into C once:
`Decoder.decode()` reads it through the bounds-checked reader (reader.pxi), fills compact C flow
records (flow.pxi) and `FlowBatch.to_json()` encodes them (encode.pxi). Bad input never raises
out of `decode()`: it becomes a typed error on the batch and a counter on the exporter.
"""

import itertools
import time

include "consts.pxi"
include "reader.pxi"
include "flow.pxi"
include "encode.pxi"
include "kafka.pxi"
include "lines.pxi"
include "packer.pxi"
include "netflow.pxi"
include "sflow.pxi"
include "receive.pxi"

import logging

_log = logging.getLogger("flowscope.decoders")

#: stats() key of the folded counters of evicted exporters (never an address).
EVICTED = "(evicted)"

#: export_state() format: 3 gives each template the time it was last refreshed (the order in
#: which a full table evicts); 2 keys options-learned sampling and clocks by the exporter's UDP
#: source port too. import_state() still reads formats 1 and 2 (their templates count as
#: refreshed when loaded).
STATE_FORMAT = 3
# The decoder's limits, for tools that must agree with it (collector/replay.py follows its
# sequence check and template rules without decoding)
SEQUENCE_MAX_GAP = SEQ_MAX_GAP
SEQUENCE_REORDER_S = SEQ_REORDER_MS / 1000.0
SEQUENCE_RESTART_UPTIME_MS = SEQ_RESTART_UPTIME_MS
TEMPLATE_MAX_FIELDS = MAX_TEMPLATE_FIELDS


def _refreshed(tpl):
    return tpl[0]


cdef tuple entry_of(ExporterState ex):
    """Decoder.series_stats()'s entry of one exporter."""
    return (ex.datagrams, ex.last_sampling, ex.protocol, ex.protocol_counts(),
            ex.templates_by_protocol() if ex.templates else None)


cdef tuple part_of(ExporterState ex):
    """Decoder.series_changed()'s entry of one exporter: its datagrams, sampling rate and
    protocol ("unknown" for none), then 13 values a protocol: name, datagrams, flows, missing
    template sets, templates, sequence lost, sequence resets, templates evicted, sample drops,
    counter samples ignored, samples skipped, errors and not sent ((reason, count) tuples): series_stats()'s entry as plain values."""
    cdef dict protocols = ex.protocol_counts()
    cdef dict tp = ex.templates_by_protocol() if ex.templates else None
    cdef list out = [ex.datagrams, ex.last_sampling, ex.protocol or "unknown"]
    cdef dict p, errors, not_sent
    for proto, p in protocols.items():
        errors = p["errors"]
        not_sent = p["not_sent"]
        out.extend((proto, p["datagrams"], p["flows"], p["missing_template_sets"],
                    tp.get(proto, 0) if tp else 0, p["sequence_lost"], p["sequence_resets"],
                    p["templates_evicted"], p["sample_drops"], p["counter_samples_ignored"], p["samples_skipped"],
                    tuple(errors.items()) if errors else (), tuple(not_sent.items()) if not_sent else ()))
    return tuple(out)


def _last_seen(ex):
    return ex.last_seen


cdef class Decoder:
    """Decoder state for all exporters: templates, learned rates, clocks and counters."""

    cdef readonly object config
    cdef dict exporters
    cdef public Py_ssize_t max_templates
    cdef public Py_ssize_t max_exporters
    cdef public Py_ssize_t max_datagram
    cdef public double max_rate       # datagrams per second per exporter (0 = no limit)
    cdef public bint dedup
    cdef public bint split_biflows
    cdef public bint keep_options    # options data records as dicts on batch.options
    cdef public bint keep_counters   # sFlow counter samples as dicts on batch.counters (else counted, skipped)
    cdef public bint track_duplicates
    cdef public bint renormalize     # Bytes/Packets times the rate the exporter sent (scale_counts)
    cdef uint32_t default_sampling
    cdef list sampling_nets
    cdef dict _log_last         # (reason, exporter) -> [last logged (monotonic s), suppressed since]
    cdef dict _log_suppressed   # reason -> [last logged, suppressed since]: keys beyond LOG_KEYS
    cdef readonly uint64_t evicted_exporters
    cdef public Py_ssize_t max_template_fields
    cdef readonly Py_ssize_t template_fields  # of all exporters' templates together
    cdef readonly Py_ssize_t template_count   # all exporters' templates (each counts TEMPLATE_COST_FIELDS more)
    cdef ExporterState evicted        # counters of evicted exporters, folded (see evict())
    cdef public Py_ssize_t max_state_bytes
    cdef readonly Py_ssize_t state_bytes      # of all exporters' state beside templates (estimated)
    # exporters_changed(): None until its first call, then exporter -> True (gained: sent its
    # first datagram) or False (forgotten: evicted after sending) since its previous call
    cdef dict _changed
    # series_changed(): None until its first call, then the exporters whose series_stats() entry
    # may have changed since its previous call (ip -> state: a datagram, a state file's templates,
    # a sequence gap settled), those it had given that were evicted since, and whether the
    # evicted exporters' counters grew
    cdef dict _dirty
    cdef set _gone
    cdef bint _evicted_dirty
    cdef bint quiet               # log_limited says nothing (refuse_ipfix reading a refused datagram)
    cdef Py_ssize_t _sent_count   # exporters in the table that sent (exporter_count)
    # exporters that had open sequence gaps after a datagram (ip -> state), until settled: what
    # series_changed() settles, not a walk over every exporter
    cdef dict _gapped

    def __init__(self, config=None):
        from decoders.config import DecoderConfig
        if config is None:
            config = DecoderConfig()
        config.validate()
        self.config = config
        self.exporters = {}
        self.evicted = ExporterState(EVICTED)
        self.max_templates = config.max_templates_per_exporter
        self.max_exporters = config.max_exporters
        self.max_template_fields = config.max_template_fields
        self.max_state_bytes = config.max_state_bytes
        self.max_datagram = config.max_datagram
        self.max_rate = config.max_exporter_rate
        self.dedup = config.dedup
        self.split_biflows = config.split_biflows
        self.keep_options = config.keep_options
        self.keep_counters = config.keep_counters
        self.track_duplicates = config.mark_duplicates or config.dedup
        self.renormalize = config.renormalize
        self.default_sampling = config.default_sampling
        # Longest prefix first, so the first match wins.
        self.sampling_nets = sorted(
            ((ipaddress.ip_network(cidr, strict=False), int(rate)) for cidr, rate in config.sampling.items()),
            key=lambda nr: -nr[0].prefixlen,
        )
        self._log_last = {}
        self._log_suppressed = {}
        self._gapped = {}

    cdef ExporterState exporter_state(self, str ip, bint make_room=True):
        cdef ExporterState ex = self.exporters.get(ip)
        cdef object addr
        if ex is not None:
            if not ex.series_dirty and self._dirty is not None:
                self.mark_dirty(ex)
            return ex
        if make_room and len(self.exporters) >= self.max_exporters:
            self.evict(None, f"{self.max_exporters} exporters have state")
        ex = ExporterState(ip)
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            addr = None
        if addr is not None and addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # an IPv4 exporter seen through a dual-stack socket or capture
        for net, rate in self.sampling_nets:
            if addr is not None and addr.version == net.version and addr in net:
                ex.cidr_sampling = rate
                break
        ex.configured_sampling = ex.cidr_sampling if ex.cidr_sampling else self.default_sampling
        self.exporters[ip] = ex
        self.sync_state(ex)
        if self._dirty is not None:
            self.mark_dirty(ex)
        return ex

    cdef void mark_dirty(self, ExporterState ex):
        """For series_changed(): ex's entry is to be read again."""
        ex.series_dirty = True
        self._dirty[ex.ip] = ex

    cdef inline void sync_state(self, ExporterState ex) noexcept:
        """Brings state_bytes up to date with what the exporter holds now."""
        cdef Py_ssize_t size = ex.state_size()
        self.state_bytes += size - ex.state_bytes
        ex.state_bytes = size

    cdef void evict(self, ExporterState keep, str why):
        """The table is full (or the exporters' state is over max_state_bytes): forget the eighth
        of the exporters seen least recently, never `keep` (their templates, clocks and rates; a
        returning one starts over and re-learns its templates) so a new exporter is never
        refused. Their counters are folded into stats()[EVICTED], so the totals built from
        stats() never go back."""
        cdef ExporterState ex
        cdef Py_ssize_t k = max(1, len(self.exporters) // 8)
        cdef list oldest = [ex for ex in sorted(self.exporters.values(), key=_last_seen)[:k + 1]
                            if ex is not keep][:k]
        cdef Py_ssize_t seen = 0
        if not oldest:
            return
        for ex in oldest:
            self.evicted.absorb(ex)
            self.template_fields -= ex.template_fields
            self.template_count -= len(ex.templates)
            self.state_bytes -= ex.state_bytes
            del self.exporters[ex.ip]
            if self._dirty is not None:
                self._evicted_dirty = True
                if ex.series_dirty:
                    del self._dirty[ex.ip]
                if ex.series_seen:
                    self._gone.add(ex.ip)
            if ex.gapped:
                del self._gapped[ex.ip]
            if ex.datagrams:
                seen += 1
                self._sent_count -= 1
                if self._changed is not None:
                    self.note_changed(ex.ip, False)
        # Exporters only loaded from a state file and never heard from (with --workers N every
        # worker loads every file; they go first, never seen) are not counted as evicted
        self.evicted_exporters += seen
        if seen:
            self.log_limited("exporter_limit", "*", f"{why}: forgot the {len(oldest)} seen least recently "
                             f"(counted in flowscope_exporters_evicted_total)", LOG_WARNING, True)

    cdef void note_changed(self, str ip, bint gained):
        """For exporters_changed(): `ip` joined or left the exporters that sent. Its changes
        alternate, so a second one since the last call takes the first back."""
        if ip in self._changed:
            del self._changed[ip]
        else:
            self._changed[ip] = gained

    def exporters_changed(self):
        """(gained, forgotten), sorted: the exporters that sent this process a datagram (those
        exporter_count() counts) gained and forgotten (evicted) since the previous call, so a
        caller keeps that set without a walk over every exporter each time; the first call gives
        all of them, gained, and starts the tracking. An exporter gained and forgotten between
        two calls (or forgotten and back) is in neither: what is kept is bounded by the table
        (at most max_exporters of each)."""
        cdef ExporterState ex
        cdef dict changed = self._changed
        self._changed = {}
        if changed is None:
            return sorted([ip for ip, ex in self.exporters.items() if ex.datagrams]), []
        return (sorted([ip for ip, g in changed.items() if g]),
                sorted([ip for ip, g in changed.items() if not g]))

    def exporter_count(self):
        """Exporters with state that sent this process a datagram (not those only loaded from a
        state file: with --workers N every worker loads every file, and the workers' counts add
        up)."""
        return self._sent_count

    cdef void log_limited(self, str reason, str ip, str msg, int level=LOG_WARNING, bint change=False):
        """Per-packet errors (and, at `level` INFO, what is not an error but worth telling an
        operator) are logged at most once per reason and exporter every 10 s. The
        table of (reason, exporter) keys holds LOG_KEYS, in the order they last logged: keys
        quiet for 10 s give way to new ones; beyond LOG_KEYS keys logging within 10 s (a flood
        from spoofed sources), the rest log once per reason every 10 s, with their count.
        While a refused datagram is read (quiet) only a `change` is: what it did to the state
        (an eviction, counted as when decoded), not what is wrong in it."""
        cdef double now
        cdef list ov
        if self.quiet and not change:
            return
        now = time.monotonic()
        key = (reason, ip)
        ent = self._log_last.get(key)
        if ent is not None and now - ent[0] < 10.0:
            ent[1] += 1
            return
        if ent is not None:
            del self._log_last[key]      # re-inserted last: the table stays in logging order
        elif len(self._log_last) >= LOG_KEYS:
            for k in list(itertools.islice(self._log_last, len(self._log_last) // 4 + 1)):
                if now - self._log_last[k][0] < 10.0:
                    break
                del self._log_last[k]
            if len(self._log_last) >= LOG_KEYS:
                ov = self._log_suppressed.get(reason)
                if ov is not None and now - ov[0] < 10.0:
                    ov[1] += 1
                    return
                if len(self._log_suppressed) >= LOG_KEYS:
                    self._log_suppressed.clear()
                self._log_suppressed[reason] = [now, 0]
                _log.log(level, "exporter %s: %s (more than %d exporters logging %s: %s similar messages of "
                             "others suppressed)", ip, msg, LOG_KEYS, reason, ov[1] if ov is not None else 0,
                             extra={"exporter": ip, "reason": reason,
                                    "suppressed": ov[1] if ov is not None and ov[1] else None})
                return
        self._log_last[key] = [now, 0]
        _log.log(level, "exporter %s: %s%s", ip, msg,
                     f" ({ent[1]} similar messages suppressed)" if ent is not None and ent[1] else "",
                     extra={"exporter": ip, "reason": reason,
                            "suppressed": ent[1] if ent is not None and ent[1] else None})

    def decode(self, bytes data not None, str exporter not None, int port=0, double recv_time=-1.0):
        """Decode one datagram from `exporter`, received at `recv_time` (Unix seconds; left out or
        negative: now; 0 is a time, a capture's frame at the epoch); never raises for bad input
        (see batch.error)."""
        return self.decode_c(data, exporter, port, recv_time)

    def refused(self, bytes data not None, str exporter not None, int port=0, double recv_time=-1.0):
        """A datagram from `exporter` read and not decoded, counted as dropped by the caller (the
        collector's last reads at shutdown): its export sequence number goes into its stream as
        received (ExporterState.forget_stream), so that the final save, after it, does not have
        the next run count it lost as well. An exporter not heard from is left alone. True when
        a sequence stream took it (a state file's sequence state saved after it carries it)."""
        return self.refused_c(<const uint8_t*>PyBytes_AS_STRING(data), len(data), exporter, port, recv_time)

    cdef bint refused_c(self, const uint8_t* buf, Py_ssize_t n, str exporter, int port, double recv_time):
        """refused(), called from C (the Receiver)."""
        cdef ExporterState ex = self.exporters.get(exporter)
        cdef FlowBatch b
        cdef bint taken
        if ex is None:
            return False
        b = FlowBatch.__new__(FlowBatch)
        b.port = <uint16_t>port
        b.recv_time = recv_time if recv_time >= 0.0 else time.time()
        b.exporter = ex
        if not ex.series_dirty and self._dirty is not None:
            self.mark_dirty(ex)     # (a gap it opens or counts changes the exporter's series)
        if ex.seq_restored_ms:
            ex.resume_sequences(<int64_t>(b.recv_time * 1000.0))
        ex.last_seen = b.recv_time
        taken = self.refused_seq(ex, b, buf, n)
        if ex.pending_gaps and not ex.gapped:
            ex.gapped = True
            self._gapped[exporter] = ex
        return taken

    cdef bint refused_seq(self, ExporterState ex, FlowBatch b, const uint8_t* buf, Py_ssize_t n):
        """A datagram refused before decoding: its sequence number taken as received
        (ExporterState.forget_stream; IPFIX: refuse_ipfix, NetFlow v9: refuse_v9). True when a
        stream took it (a header whole enough to say where its stream is)."""
        if n >= 2 and be16(buf) == 10:
            ex.cur_protocol = <str>PROTO_SLOTS[5]
            return refuse_ipfix(self, ex, b, buf, n) > 0
        if n >= 2 and be16(buf) == 9:
            return refuse_v9(self, ex, b, buf, n) > 0
        return ex.forget_stream(buf, n, b.port, <int64_t>(b.recv_time * 1000.0))

    cdef FlowBatch decode_c(self, bytes data, str exporter, int port, double recv_time):
        """decode(), called from C (the Receiver); data and exporter not None."""
        cdef FlowBatch b = FlowBatch.__new__(FlowBatch)
        cdef ExporterState ex
        cdef Reader r
        cdef Py_ssize_t n = len(data)
        cdef Py_ssize_t nflows
        cdef const uint8_t* buf = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef uint16_t version
        cdef int slot
        b.data = data
        b.port = <uint16_t>port
        b.recv_time = recv_time if recv_time >= 0.0 else time.time()
        ex = self.exporter_state(exporter)
        if ex.seq_restored_ms:
            ex.resume_sequences(<int64_t>(b.recv_time * 1000.0))
        ex.last_seen = b.recv_time
        if self.state_bytes > self.max_state_bytes:
            self.evict(ex, f"exporter state is over {self.max_state_bytes >> 20} MiB")
        b.agent_af = ex.af
        memcpy(b.agent, ex.addr, 16)
        b.exporter = ex
        if not ex.datagrams:
            self._sent_count += 1
            if self._changed is not None:
                self.note_changed(exporter, True)
        ex.datagrams += 1
        version = be16(buf) if n >= 4 else 0
        # Per-protocol counters: one exporter (an OVS node) often sends IPFIX, sFlow and NetFlow.
        # (counted in C slots, added to the exporter's per-protocol dicts when they are read)
        slot = (1 if version == 5 else 2 if version == 9 else 3 if version == 1 else 4 if version == 7 else
                5 if version == 10 else 6 if version == 0 and n >= 4 and be32(buf) == 5 else 0)
        ex.cur_protocol = <str>PROTO_SLOTS[slot]
        ex.slot_datagrams[slot] += 1
        try:
            if self.max_rate > 0.0 and not ex.rate_ok(b.recv_time, self.max_rate):
                self.refused_seq(ex, b, buf, n)
                raise_decode("rate_limited", 0, f"over --max-exporter-rate {self.max_rate:g} datagrams/s: "
                                                "datagram dropped")
            if n > self.max_datagram:
                self.refused_seq(ex, b, buf, n)
                raise_decode("too_large", 0, f"{n} bytes > limit {self.max_datagram}")
            rd_init(&r, buf, 0, n)
            if n < 4:
                raise_decode("truncated", 0, f"{n}-byte datagram")
            if version == 5 or version == 1 or version == 7:
                decode_v5(self, ex, b, &r, version)
            elif version == 9:
                decode_v9(self, ex, b, &r)
            elif version == 10:
                decode_ipfix(self, ex, b, &r)
            elif version == 0 and be32(buf) == 5:
                decode_sflow(self, ex, b, &r)
            else:
                raise_decode("bad_version", 0, f"unknown version {version}")
        except DecodeError as e:
            b.error = (e.reason, e.offset, e.detail)
            ex.count_error(e.reason)
            self.log_limited(e.reason, exporter, f"{b.protocol or 'datagram'} decode error: {e}")
        if ex.pending_gaps and not ex.gapped:
            ex.gapped = True
            self._gapped[exporter] = ex
        if self.renormalize and b.n:
            scale_counts(b)
        # flows decoded: those in the batch plus those dedup removed (counted as dropped,
        # reason duplicate), so decoded = delivered + dropped + queued holds with --dedup too
        nflows = b.n + (b._dropped.get("duplicate", 0) if b._dropped is not None else 0)
        self.sync_state(ex)
        ex.flows += nflows
        ex.slot_flows[slot] += nflows
        if b.proto_kind:
            ex.protocol = PROTOCOL_NAMES[b.proto_kind]
        return b

    def stats(self, now=None):
        """Per exporter: datagrams, flows, errors by reason, missing-template sets, templates...
        After evictions, key EVICTED ("(evicted)") holds the evicted exporters' counters.
        Sequence gaps seen SEQUENCE_REORDER_S before `now` (Unix seconds; left out: all of them,
        as at the end of the input) are counted as lost first: no late datagram will fill them."""
        self.settle_gaps(now)
        out = {ip: ex.stats() for ip, ex in self.exporters.items()}
        if self.evicted_exporters:
            out[EVICTED] = self.evicted.stats()
        return out

    def settle_gaps(self, now=None):
        """Count the sequence gaps older than SEQUENCE_REORDER_S at `now` (all when None) as lost."""
        cdef ExporterState ex
        cdef int64_t now_ms = -1 if now is None else <int64_t>(<double>now * 1000.0)
        for ex in self.exporters.values():
            if ex.pending_gaps:
                ex.settle_gaps(now_ms)
                if not ex.series_dirty and self._dirty is not None:
                    self.mark_dirty(ex)

    cdef void settle_gapped(self, now):
        """settle_gaps(now), over the exporters that had open gaps after a datagram."""
        cdef ExporterState ex
        cdef int64_t now_ms = -1 if now is None else <int64_t>(<double>now * 1000.0)
        cdef list settled = []
        for ex in self._gapped.values():
            if ex.pending_gaps:
                ex.settle_gaps(now_ms)
                if not ex.series_dirty and self._dirty is not None:
                    self.mark_dirty(ex)
            if not ex.pending_gaps:
                settled.append(ex)
        for ex in settled:
            ex.gapped = False
            del self._gapped[ex.ip]

    def series_stats(self, now=None):
        """What the metrics need, over every exporter (the metrics snapshot, on the event loop
        every stats interval, takes the changes instead: series_changed): exporter -> (datagrams, last sampling rate, protocol, per-protocol
        counters {name: {"datagrams", "flows", "errors", "missing_template_sets"}}, templates
        by protocol or None). The per-protocol dicts are the decoder's own: read, never keep or
        change them. Evicted exporters' counters under EVICTED. Sequence gaps are settled first,
        as by stats(now)."""
        cdef ExporterState ex
        cdef dict out = {}
        self.settle_gaps(now)
        for ip, ex in self.exporters.items():
            out[ip] = entry_of(ex)
        if self.evicted_exporters:
            out[EVICTED] = self.evicted_entry()
        return out

    def series_entry(self, str ip):
        """series_stats()'s entry of one exporter, None when the table has no state for it."""
        cdef ExporterState ex = self.exporters.get(ip)
        return None if ex is None else entry_of(ex)

    cdef tuple evicted_entry(self):
        cdef ExporterState ex = self.evicted
        return (ex.datagrams, 0, "", ex.protocol_counts(), None)

    def series_changed(self, now=None):
        """series_stats(now) as changes since the previous call, so that a caller keeps it
        without a walk over every exporter each time (the metrics snapshot, every stats interval):
        (entries, gone). entries (their values as part_of() gives them): those of series_stats()
        that may have changed (an exporter that
        sent, had templates loaded or a sequence gap settled; EVICTED when exporters were
        evicted), gone: those given before that were evicted since (one evicted and back is in
        both: drop, then take its new entry). The first call gives every entry and starts the
        tracking. What is kept between calls is bounded by the table."""
        cdef ExporterState ex
        cdef dict dirty
        cdef dict out = {}
        cdef set gone
        cdef bint evicted
        self.settle_gapped(now)    # (those with gaps settled are dirty now)
        dirty, gone, evicted = self._dirty, self._gone, self._evicted_dirty
        self._dirty, self._gone, self._evicted_dirty = {}, set(), False
        if dirty is None:
            dirty, gone, evicted = self.exporters, set(), True
        for ip, ex in dirty.items():
            ex.series_dirty = False
            ex.series_seen = True
            out[ip] = part_of(ex)
        if evicted and self.evicted_exporters:
            out[EVICTED] = part_of(self.evicted)
        return out, sorted(gone)

    def exporter(self, str ip):
        return self.exporters.get(ip)

    @property
    def template_fields_counted(self):
        """What max_template_fields bounds: all templates' fields plus TEMPLATE_COST_FIELDS per
        template (the collector's flowscope_template_fields, so it compares with the bound)."""
        return self.template_fields + TEMPLATE_COST_FIELDS * self.template_count

    def template_misses(self):
        """{exporter: data sets it sent without their template} for those that sent any (the
        collector's StateFile.refresh_into looks for their templates in a shared state file)."""
        cdef ExporterState ex
        cdef dict out = {}
        for ip, e in self.exporters.items():
            ex = e
            if ex.missing_template_sets:
                out[ip] = ex.missing_template_sets
        return out

    def export_state(self):
        """Templates, options-learned sampling and clocks per exporter, as JSON-able data.

        Format 3: templates carry the receive time of their last refresh ("refreshed"). Format 2:
        the options-learned entries carry the exporter's UDP source port, as templates do
        (format 1 scoped them by version and domain only). "seen" (format 3, an addition older
        versions ignore): per exporting process (UDP source port) with templates, how recent
        what this decoder knows of it is (the latest of its templates' refresh and of the data
        read with them, Template.seen), so replicas sharing a file keep the newer knowledge."""
        cdef ExporterState ex
        cdef Template t
        cdef dict seen
        out = {}
        for ip, ex in self.exporters.items():
            seen = {}
            for t in ex.templates.values():
                if max(t.refreshed, t.seen) > seen.get(t.port, -1.0):
                    seen[t.port] = max(t.refreshed, t.seen)
            out[ip] = {
                "templates": [
                    {"version": t.version, "domain": t.domain, "id": t.template_id, "port": t.port,
                     "options": bool(t.options), "refreshed": t.refreshed,
                     "scope": t.scope_fields, "fields": [list(f) for f in t.spec]}
                    for t in ex.templates.values()
                ],
                "domain_sampling": [[v, d, p, rate] for (v, d, p), rate in ex.domain_sampling.items()],
                "sampler_rates": [[v, d, p, s, rate] for (v, d, p, s), rate in ex.sampler_rates.items()],
                "interface_rates": [[v, d, p, i, rate] for (v, d, p, i), rate in ex.interface_rates.items()],
                "egress_rates": [[v, d, p, i, rate] for (v, d, p, i), rate in ex.egress_rates.items()],
                "template_rates": [[v, d, p, i, rate] for (v, d, p, i), rate in ex.template_rates.items()],
                # (names are exporter bytes: invalid UTF-8 is replaced, as the JSON output does)
                "interface_names": [[v, d, p, i, name.decode("utf-8", "replace")]
                                    for (v, d, p, i), name in ex.flat_names().items()],
                "sysinit_ms": [[v, d, p, ms] for (v, d, p), ms in ex.sysinit_ms.items()],
                "withdrawn": [[p, w] for p, w in ex.withdrawn.items()],
                "seen": [[p, w] for p, w in seen.items()],
            }
        return {"format": STATE_FORMAT, "exporters": out}

    def export_sequences(self, hand_over=True):
        """The sequence state of its exporters (every SeqStream and SeqPort, seq_stream_state),
        as JSON-able data: {exporter: {"seen", "reading", "streams", "ports"}}. The collector's
        final save at shutdown keeps it (StateFile.save), for import_sequences at the next start:
        periodic saves do not, as what a crash leaves is older than what the crashed run counted
        (a gap from there would count what it received).
        Every gap still open is counted first (as settle_gaps() does): by this run, as its final
        metrics count them, not again by the next. A held loss is not (ExporterState.
        hand_over_sequences): it is a loss in one reading only, which the next votes decide, and
        it goes on in the saved stream (the next run counts it as one run would: at a vote for
        the RFC's reading, or SEQ_HELD_MS after it was held, by receive time); counted here as
        the RFC's reading, a stop made the stream's total differ from one run's (18 records
        where one run counted 12: the vote that came next was the records reading's). What goes
        on is what is not counted yet: where each stream is, the votes on its numbering, what
        an undecided reading adds and the loss held.
        `hand_over` false (the save as the stop begins, before the final one: StateFile.
        save_stopping): the state only, nothing counted nor closed, so that the final save
        finds the decoder as it was (its gaps still open, its held losses); one of the two saves
        is the next run's. Its open gaps are in it too: a process killed before its final save
        counted nothing after it (Worker.stop holds its metrics from then on), and the next run
        counts them, as one run would have (a datagram refused after it that fills one, never
        counted by the killed run, counted lost; what an undecided reading adds to one, at the
        next run's votes)."""
        cdef ExporterState ex
        out = {}
        for ip, ex in self.exporters.items():
            e = ex.hand_over_sequences(hand_over)
            if not ex.series_dirty and self._dirty is not None:
                self.mark_dirty(ex)
            if e is not None:
                out[ip] = e
        return out

    def import_sequences(self, data, gaps=True):
        """Load what export_sequences() saved: each exporter's streams (and its loss counters'
        baselines, sFlow drops and IPFIX notSent totals) go on where they were,
        if it is heard again within SEQ_RESTORE_MAX_MS of its latest datagram then (else they
        start over, ExporterState.resume_sequences). An exporter this decoder has heard from
        keeps its own; of two files describing one (worker files), the later latest datagram
        wins. A bad exporter entry is skipped and counted, not fatal. `gaps` false: the open
        gaps a save as a stop began carries are left out (StateFile: another worker's file,
        which that worker loads too and counts them from; every worker loads every file)."""
        cdef ExporterState ex
        cdef SeqStream st
        cdef dict streams, ports, drops, not_sent
        cdef int64_t seen_ms
        loaded = skipped = 0
        if not isinstance(data, dict):
            raise ValueError("sequences: expected an object")
        for ip, e in data.items():
            try:
                seen = e["seen"]
                if type(seen) is bool or not isinstance(seen, (int, float)) or not 0 <= seen <= 1e11:
                    raise ValueError("seen out of range")
                seen_ms = <int64_t>(<double>seen * 1000.0)
                reading = e["reading"]
                if not (isinstance(reading, list) and len(reading) == 2
                        and all(type(r) is int and -1 <= r <= 1 for r in reading)):
                    raise ValueError("reading: expected two of -1, 0, 1")
                if not isinstance(e["streams"], list) or len(e["streams"]) > SEQ_MAX_STREAMS:
                    raise ValueError("streams: expected a list")
                streams = {}
                for sd in e["streams"]:
                    st = seq_stream_of(sd)
                    if not gaps:
                        st.ngaps = 0
                    streams[(st.kind, st.port, st.domain)] = st
                if not isinstance(e["ports"], list) or len(e["ports"]) > SEQ_MAX_STREAMS:
                    raise ValueError("ports: expected a list")
                ports = {}
                for p, pd in e["ports"]:
                    if type(p) is not int or not 0 <= p <= 0xFFFF:
                        raise ValueError("ports: a bad port")
                    ports[p] = seq_port_of(pd)
                # (absent in a file of an earlier version: the baselines start over, as before)
                drops = {}
                for x in seq_list(e, "drops", DROPS_MAX_SOURCES):
                    if not (isinstance(x, list) and len(x) == 4):
                        raise ValueError("drops: a bad entry")
                    v = {"stream": x[0], "kind": x[1], "source": x[2], "value": x[3]}
                    drops[(seq_int(v, "stream", 0, 0xFFFFFFFFFFFFFFFF), seq_u32(v, "kind"),
                           seq_u32(v, "source"))] = seq_u32(v, "value")
                not_sent = {}
                for x in seq_list(e, "not_sent", NOT_SENT_MAX_KEYS):
                    if not (isinstance(x, list) and len(x) == 7):
                        raise ValueError("not_sent: a bad entry")
                    v = {"port": x[0], "domain": x[1], "ie": x[3], "value": x[4], "seq": x[5], "export_s": x[6]}
                    scope = None if x[2] is None else seq_int({"v": x[2]}, "v", 0, 0xFFFFFFFFFFFFFFFF)
                    not_sent[(seq_int(v, "port", 0, 0xFFFF), seq_u32(v, "domain"), scope,
                              seq_int(v, "ie", 166, 168))] = (seq_int(v, "value", 0, 0xFFFFFFFFFFFFFFFF),
                                                              seq_u32(v, "seq"), seq_i64(v, "export_s"))
            except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError):
                skipped += 1
                continue
            ex = self.exporters.get(ip)
            if ex is not None and (ex.datagrams or (ex.seq_restored_ms and ex.seq_restored_ms >= seen_ms)):
                continue    # its own sequence state, or a later one's (another worker's file)
            ex = self.exporter_state(str(ip), False)
            ex.install_sequences(streams, ports, reading[0], reading[1], seen_ms, drops, not_sent)
            if ex.pending_gaps and not ex.gapped:
                ex.gapped = True
                self._gapped[ex.ip] = ex
            self.sync_state(ex)
            loaded += 1
        return {"exporters": loaded, "skipped": skipped}

    def import_state(self, state, only_missing=False):
        """Load what export_state() saved (format 3, or formats 1 and 2 of earlier versions); bad
        entries (wrong types, numbers out of their field's range) are skipped and counted, not
        fatal. Templates are stored oldest refresh first, so a full table evicts in the same
        order as before the restart. Several files (one per worker) may describe one template:
        the most recently refreshed definition wins, whichever file is loaded last.
        only_missing (a running collector reading another replica's save): templates it has
        stay whatever their refresh time, and so do the rates and clocks it learned; it takes
        only what it lacks."""
        cdef ExporterState ex
        cdef Template t, have
        loaded = skipped = 0
        fmt = state.get("format") if isinstance(state, dict) else None
        if fmt not in (1, 2, STATE_FORMAT):
            raise ValueError("unknown state format")
        now = time.time()
        exporters = state.get("exporters", {})
        if not isinstance(exporters, dict):
            raise ValueError("exporters: expected an object")
        for ip, st in exporters.items():
            if not isinstance(st, dict):
                skipped += 1    # one bad entry: the others still load
                continue
            # Loaded beyond --max-exporters if need be: with --workers N every worker loads every
            # worker's file, and which exporters the kernel gives this one is not known yet.
            # Those never heard from have last_seen 0: the first evicted when room is needed.
            ex = self.exporter_state(str(ip), False)
            compiled = []
            tpls = st.get("templates", [])
            if not isinstance(tpls, list):
                skipped += 1
                tpls = []
            for tpl in tpls:
                try:
                    spec = tuple((int(a), int(b_), int(c)) for a, b_, c in tpl["fields"])
                    t = compile_template(int(tpl["version"]), int(tpl["domain"]), int(tpl["id"]), spec,
                                         int(tpl.get("scope", 0)), bool(tpl.get("options")), 0,
                                         int(tpl.get("port", 0)), self.split_biflows)
                    refreshed = float(tpl.get("refreshed", now))
                    if not 0.0 <= refreshed <= now + 86400.0:   # NaN fails too
                        raise ValueError("refresh time out of range")
                    compiled.append((refreshed, t))
                except (KeyError, TypeError, ValueError, OverflowError, DecodeError):
                    skipped += 1
            # How recent the file's knowledge of each exporting process is (export_state's "seen",
            # and withdrawals): kept with the templates loaded at start, so this process's next
            # save says it again (a refresh's copy is another process's knowledge: its own data
            # will stamp it).
            seen = {}
            withdrawals = []
            for name in ("seen", "withdrawn"):
                entries = st.get(name, [])
                if not isinstance(entries, list):
                    skipped += 1
                    entries = []
                for entry in entries:
                    try:
                        port, when = int(entry[0]), float(entry[1])
                        if len(entry) != 2 or not 0 <= port <= 0xFFFF or not 0.0 <= when <= now + 86400.0:
                            raise ValueError(f"{name} entry out of range")
                    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
                        skipped += 1
                        continue
                    if name == "seen":
                        seen[port] = max(when, seen.get(port, 0.0))
                    else:
                        withdrawals.append((port, when))
            # With --workers N every file is loaded, oldest first; an exporting process goes to one
            # worker at a time, and a worker it left goes on saving its older state (the newer
            # file). Of a process two files stamp, the one that knows it more recently wins whole:
            # a template or rate the other file alone has is one the process withdrew or changed
            # since (RFC 7011 8.1), not to be brought back (files without stamps: per template).
            older = set()
            if not only_missing and (seen or withdrawals) and (ex.templates or ex.withdrawn):
                stamps = dict(seen)
                for port, when in withdrawals:
                    stamps[port] = max(when, stamps.get(port, 0.0))
                have_at = dict(ex.withdrawn)
                for have in ex.templates.values():
                    have_at[have.port] = max(have.refreshed, have.seen, have_at.get(have.port, 0.0))
                for port, when in stamps.items():
                    if port not in have_at or when == have_at[port]:
                        continue
                    if when < have_at[port]:
                        older.add(port)
                        continue
                    for key in [k for k, have in ex.templates.items() if have.port == port]:
                        drop_template(self, ex, key)
                    # (interface_names: by (version, domain, port), each a table of the process;
                    # set_names, below, counts them again and tells the templates)
                    for target in (ex.domain_sampling, ex.sampler_rates, ex.interface_rates, ex.egress_rates,
                                   ex.template_rates, ex.interface_names, ex.sysinit_ms):
                        for key in [k for k in target if k[2] == port]:
                            del target[key]
                    ex.withdrawn.pop(port, None)
            # RFC 7011 8.1: exporting processes that withdrew their last template (ExporterState.
            # withdrawn): what the file or this process knows of them from before is gone.
            # (Another replica's word does not remove what this running one has: only_missing.)
            for port, when in withdrawals:
                if only_missing or port in older:
                    continue
                if any(have.port == port and have.refreshed > when for have in ex.templates.values()):
                    continue    # defined again since (another worker's file)
                for key in [k for k, have in ex.templates.items() if have.port == port]:
                    drop_template(self, ex, key)
                mark_withdrawn(ex, port, max(when, ex.withdrawn.get(port, 0.0)))
            compiled.sort(key=_refreshed)     # stable: ties keep the file's order
            for refreshed, t in compiled:
                have = ex.templates.get(tkey(t.version, t.domain, t.template_id, t.port))
                if have is not None and (only_missing or have.refreshed > refreshed):
                    continue    # another worker's file saw a later (re)definition
                if refreshed <= ex.withdrawn.get(t.port, -1.0) or t.port in older:
                    continue    # a copy from before its process withdrew it, or older knowledge
                if not only_missing:
                    t.seen = seen.get(t.port, 0.0)
                store_template(self, ex, t, refreshed, False)
                loaded += 1
            if fmt == 1:
                # Format 1 had no port: an entry stood for every exporting process of its version
                # and domain, so it goes to each port the exporter's templates of that version
                # and domain came from (port 0 when none).
                ports = {}
                for t in ex.templates.values():
                    ports.setdefault((t.version, t.domain), set()).add(t.port)
            names = ex.flat_names()     # (loaded as the others are, then made tables again)
            for name, width, target in (("domain_sampling", 2, ex.domain_sampling),
                                        ("sampler_rates", 3, ex.sampler_rates),
                                        ("interface_rates", 3, ex.interface_rates),
                                        ("egress_rates", 3, ex.egress_rates),
                                        ("template_rates", 3, ex.template_rates),
                                        ("interface_names", 3, names),
                                        ("sysinit_ms", 2, ex.sysinit_ms)):
                entries = st.get(name, [])
                if not isinstance(entries, list):
                    skipped += 1
                    entries = []
                for entry in entries:
                    # key fields then the value; format 2 has the port third
                    n = width + (1 if fmt == 1 else 2)
                    if not isinstance(entry, list) or len(entry) != n:
                        skipped += 1
                        continue
                    # an interface name is a string (learn_if_name's bound), the others numbers
                    named = name == "interface_names"
                    try:
                        vals = [int(x) for x in (entry[:n - 1] if named else entry)]
                        value = entry[n - 1].encode("utf-8", "replace") if named else vals[n - 1]
                        if named and not 0 < len(value) <= IFNAME_MAX:
                            raise ValueError("interface name length")
                    except (TypeError, ValueError, AttributeError):
                        skipped += 1
                        continue
                    if named:
                        vals.append(0)      # (the value's range check below: a name is checked above)
                    # version, domain, port (uint16 / uint32), sampler id (uint64), the value
                    # (a rate: uint32; sysinit: ms since the epoch, int64)
                    if not (vals[0] in (9, 10) and 0 <= vals[1] <= 0xFFFFFFFF
                            and all(0 <= v < (1 << 64) for v in vals[2:n - 1])
                            and (fmt == 1 or vals[2] <= 0xFFFF)
                            and 0 <= vals[n - 1] < ((1 << 63) if name == "sysinit_ms" else (1 << 32))):
                        skipped += 1
                        continue
                    keys = ([tuple(vals[:2]) + (port,) + tuple(vals[2:n - 1])
                             for port in ports.get((vals[0], vals[1]), (0,))] if fmt == 1 else [tuple(vals[:n - 1])])
                    for key in keys:
                        if (only_missing and key in target) or key[2] in older:
                            continue
                        if len(target) >= OPTIONS_MAX_ENTRIES and key not in target:
                            skipped += 1    # bounded as when learned (a file of an older version)
                            continue
                        target[key] = value
            if ex.egress_rates or ex.template_rates:
                ex.narrow_rates = True
            ex.set_names(names)
            self.sync_state(ex)
        return {"templates": loaded, "skipped": skipped}
