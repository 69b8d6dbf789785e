"""Every Prometheus series the collector exposes, declared in one place, and their aggregation.

Why not prometheus_client counters in the hot path: a labelled counter costs a dict lookup and
a lock per increment, and with `--workers N` each process would need the multiprocess mode's
mmap files. Instead each worker keeps plain integers (and reads the decoder's own per-exporter
statistics every `--stats-interval`), turns them into a `Snapshot` (series -> {labels: value})
and hands it to an `Aggregator`: in-process with one worker, over a pipe from each forked worker
otherwise. The aggregator sums the workers and renders the exposition format on scrape, so one
endpoint shows the whole collector and a scrape never touches the hot path.

Exporter label cardinality is bounded by `ExporterLabels`: at most N exporters
(`--metrics-top-exporters`) have their address as a label, the busiest when a label was free;
everything else is summed into `other` (with `--workers N` the supervisor chooses them for all
workers, `SharedLabels`: an exporter's source ports can reach several workers). A labelled
exporter keeps its label while it sends, and gives it up only after LABEL_IDLE_S of silence to
an exporter that sends without one (every label taken): with nodes replaced over days, the
labels would otherwise all name exporters long gone while every live one was `other`. No
counter series ever goes back (rates would go negative): counts never move between label sets,
they are carried (the history of an exporter that gets a label stays in `other`, its own series
starts at 0; one that gives its label up has that series end, and `other` goes on from where it
was).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest

OTHER = "other"
EVICTED = "(evicted)"  # decoders.EVICTED: Decoder.stats() key of evicted exporters' counters
# Kafka produce latency buckets (seconds): a healthy local broker answers in ms, a struggling one
# in seconds; request_timeout bounds the top.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Series:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    merge: str = "sum"  # how workers combine: sum | max | min (all must say yes: an expected worker
    # without the series, starting or not reported yet, says no, 0)


SERIES: dict[str, Series] = {s.name: s for s in [
    # per exporter and protocol, from Decoder.stats()
    Series("flowscope_datagrams", "counter", "Datagrams handed to the decoder, per exporter and protocol "
           "(those it refused before decoding, rate_limited or too_large, included)",
           ("exporter", "protocol")),
    Series("flowscope_flows", "counter", "Flow records decoded, per exporter and protocol",
           ("exporter", "protocol")),
    Series("flowscope_decode_errors", "counter", "Datagrams (or sets) the decoder rejected, by reason",
           ("exporter", "protocol", "reason")),
    Series("flowscope_missing_template_sets", "counter",
           "Data sets skipped because their template was not (yet) known", ("exporter", "protocol")),
    Series("flowscope_templates", "gauge", "Templates currently held", ("exporter", "protocol")),
    Series("flowscope_templates_evicted", "counter", "Templates forgotten because the exporter's table was full "
           "(--max-templates-per-exporter): the least recently refreshed gives way to a new one (an exporter that "
           "restarts on a new source port leaves its old session's templates behind)", ("exporter", "protocol")),
    Series("flowscope_sequence_lost", "counter", "Lost before reaching flowscope, from the exporters' sequence "
           "numbers (per exporting process and domain; sFlow per agent and sub-agent): flows for netflow5 and netflow7, data "
           "records for ipfix, datagrams for netflow9 (its data records for an exporter that numbers flows, as "
           "Juniper's does) and sflow5; a gap is counted once it has stayed open for a "
           "second (datagrams reordered on the path fill it first)", ("exporter", "protocol")),
    Series("flowscope_exporter_sample_drops", "counter", "Packets sFlow agents say they could not sample (flow "
           "samples) or report (discarded-packet samples) for lack of resources or their rate limit: the increases "
           "of the samples' cumulative drops counters, per agent, sub-agent and data source (the first value seen "
           "of a source is its baseline; a datagram behind its sequence, reordered on the path or a copy, carries "
           "older values and is skipped, not taken for an agent restart; Open vSwitch always sends 0)",
           ("exporter", "protocol")),
    Series("flowscope_exporter_not_sent", "counter", "What IPFIX exporters say they failed to send, by unit (flows, "
           "packets, octets: notSentFlow/Packet/OctetTotalCount, IEs 166-168, of their Exporting Process Reliability "
           "Statistics options records, RFC 7011 4.3; Open vSwitch reports its failed message sends as packets): the "
           "increases of those cumulative totals per exporting process (address and source port), observation domain "
           "and exportingProcessId scope (the first value seen of each is its baseline; a value that goes down is a "
           "counter that restarted, a new baseline; a record whose message was sent before the last value's, numbered "
           "before it and not exported later, is an older one arriving late: skipped). NetFlow v9 defines no such "
           "field: nothing for netflow9",
           ("exporter", "protocol", "unit")),
    Series("flowscope_counter_samples_ignored", "counter", "sFlow counter samples received without --counters: "
           "not flows, so not decoded nor published (--counters publishes them as counter records, "
           "flowscope_counter_records_total), but counted, so that an agent's counter polling arriving unused is "
           "seen (sFlow agents send them at their counter polling interval)", ("exporter", "protocol")),
    Series("flowscope_samples_skipped", "counter", "sFlow samples of a type flowscope does not decode (another "
           "enterprise's, e.g. Host sFlow's rtmetric/rtflow, 4300:1002/1003, or a standard format it does not know): "
           "skipped by their length, as sflow_version_5.txt lets a receiver, not an error, but counted, so that what an "
           "agent sends unread is seen; their formats (enterprise:format) are logged at INFO, at most once per "
           "exporter every 10 s", ("exporter", "protocol")),
    Series("flowscope_sequence_resets", "counter", "Exporter restarts: a sequence number that jumped by more than "
           "2^20, or went back, or forward (the new run's first datagrams lost), with a header uptime (netflow5, netflow7, "
           "netflow9, sflow5) that went back by more than a minute, or went back and kept following on in sequence for a second (a process restarted on the same port); "
           "an IPFIX message whose own options data gives a systemInitTimeMilliseconds (IE 160) more than a minute away from "
           "the one kept for its process and domain, whatever its sequence number and whether or not the rest of it could "
           "be decoded (a message of the old run exported before the new run's first, or carrying the old run's clock, "
           "arriving in the second after it, is a late one: no restart, its clock not kept); tracking starts over", ("exporter", "protocol")),
    Series("flowscope_exporters", "gauge", "Exporters (source addresses) with decoder state that sent since the start (those only "
           "restored from the state file are not counted); with --workers N each address once, however many "
           "workers its source ports reach (as of the workers' latest snapshots)", ()),
    Series("flowscope_exporters_evicted", "counter", "Exporters forgotten because the table was full "
           "(--max-exporters) or their state too large (--max-exporter-state); the least recently seen go, their "
           "counters stay under exporter=\"other\"", ()),
    Series("flowscope_exporter_state_bytes", "gauge", "Estimated memory of the exporters' decoder state beside "
           "templates (sequence streams, options-learned rates and clocks, sFlow drops and IPFIX notSent baselines, "
           "--dedup tables), "
           "bounded by --max-exporter-state per worker", ()),
    Series("flowscope_template_fields", "gauge", "Template fields counted against --max-template-fields (per "
           "worker): all exporters' templates' fields plus 24 per template for its own objects, templates restored "
           "from the state file included", ()),
    Series("flowscope_sampling_rate", "gauge", "Sampling rate of the exporter's latest datagram (no series while no rate "
           "is known)", ("exporter", "protocol"),
           merge="max"),
    # receive stage
    Series("flowscope_received_datagrams", "counter", "Datagrams received on each listener", ("listener",)),
    Series("flowscope_received_bytes", "counter", "UDP payload bytes received on each listener", ("listener",)),
    Series("flowscope_datagrams_dropped", "counter",
           "Datagrams dropped before decoding, by reason (not_allowed, wrong_protocol, internal, socket_error; shutdown: arrived once shutdown had decoded what was queued, read until the listeners closed; with --state-file those of known exporters are counted when the stop ends, after the final save: a process killed before never counts them, nor one whose final save failed while the file was still the save made as the decoding ended, and the next run counts them in flowscope_sequence_lost_total); "
           "datagrams over --max-datagram are decode errors (reason too_large)",
           ("reason",)),
    Series("flowscope_kernel_receive_drops", "counter",
           "Datagrams the kernel dropped because the socket buffer was full (/proc/net/udp drops)",
           ("listener",)),
    Series("flowscope_socket_receive_buffer_bytes", "gauge", "SO_RCVBUF the kernel granted", ("listener",),
           merge="max"),
    Series("flowscope_listener_up", "gauge", "Listener sockets bound (one per worker)", ("listener",)),
    # pipeline / sink
    Series("flowscope_flows_dropped", "counter",
           "Flow records dropped after decoding, by reason (queue_full, evicted: the queue was full; shutdown: "
           "not delivered within --shutdown-timeout; unconfirmed: sent to Kafka (or handed to aiokafka) and not "
           "acknowledged, then given up: in flight at --shutdown-timeout, or queued again after that request failed "
           "without an answer and then still queued at --shutdown-timeout or evicted (they may be in the topic; not "
           "a batch handed to aiokafka for a partition no Produce request was written for since, as for a leader "
           "never connected to: that one is shutdown); sink_error: the file or stdout write failed; rejected: "
           "Kafka refused the batch for good (a batch refused for its size is cut and sent again: only a record "
           "refused alone is dropped so); too_large: a record queued one by one (an sFlow counter record, a "
           "keyed flow before the partition count was known) that aiokafka's batch builder refused even alone in "
           "a batch (a record over --kafka-batch-bytes is otherwise sent in a batch of its own); "
           "duplicate: --dedup; worker_died: held by a --workers N worker that died, as of its last snapshot; "
           "internal: decoded, then lost to an internal error (its datagram counted in "
           "flowscope_datagrams_dropped_total{reason=\"internal\"}))",
           ("reason",)),
    Series("flowscope_flows_delivered", "counter", "Flow records the sink accepted (Kafka: acknowledged)",
           ("sink",)),
    Series("flowscope_counter_records", "counter", "sFlow counter records decoded (--counters): delivered + "
           "dropped + queued", ()),
    Series("flowscope_counter_records_delivered", "counter", "sFlow counter records the sink accepted",
           ("sink",)),
    Series("flowscope_counter_records_dropped", "counter", "sFlow counter records dropped, by reason (as "
           "flowscope_flows_dropped_total)", ("reason",)),
    Series("flowscope_queue_bytes", "gauge", "Encoded bytes queued or in flight to the sink"),
    Series("flowscope_queue_records", "gauge", "Flow records queued or in flight to the sink (the flows decoded "
           "and neither delivered nor dropped yet)"),
    Series("flowscope_counter_records_queued", "gauge", "sFlow counter records queued or in flight to the sink "
           "(--counters)"),
    Series("flowscope_queue_limit_bytes", "gauge", "Queue bound (--queue-bytes) summed over workers"),
    Series("flowscope_batch_buffers", "counter", "Output batches (Kafka record batches, file and stdout lines) by "
           "the buffer they started in: reused, one kept from an earlier batch; fresh, a new allocation (its pages "
           "faulted in and zeroed by the kernel as the batch fills). Fresh ones rising with the batches means more "
           "batches wait at once than the pool keeps (8 a worker)", ("source",)),
    Series("flowscope_sink_connected", "gauge", "1 when the sink is connected; with --workers N, the number of workers connected"),
    Series("flowscope_sink_stalled_seconds", "gauge", "How long records have waited with nothing delivered (0 while the "
           "sink delivers or nothing waits that could go: Kafka's keyed records held for a partition whose leader is "
           "out of reach, flowscope_kafka_unreachable_partitions, do not count; sampled at each metrics snapshot); "
           "/readyz fails beyond "
           "max(10 s, 2 x --kafka-request-timeout-ms)", (), merge="max"),
    Series("flowscope_sink_failing_seconds", "gauge", "How long the sink has failed every flow it was given "
           "(dropped as sink_error or rejected) with no flow delivered, while failures keep coming (0 once one is "
           "delivered, or after the same limit without a failure); /readyz fails beyond the same limit as "
           "flowscope_sink_stalled_seconds", (), merge="max"),
    Series("flowscope_kafka_unreachable_partitions", "gauge", "Partitions of the flows topic whose leader this "
           "host cannot reach, as the sink's latest checks found: a TCP connection to the address the cluster "
           "advertises for it refused, unresolvable or unanswered, or a broker that takes connections and answers no "
           "request on a new one within 5 s (hung: asked once records have waited 5 s with nothing delivered, or "
           "a produce request to it, or through aiokafka a batch handed over for one of its partitions, has "
           "waited 5 s unanswered); or that the cluster's metadata gives no leader (a broker killed is dropped "
           "from it once its session times out, and its partitions have none when no other in-sync replica takes "
           "over). Some: /readyz stays ready (the other partitions take flows; keyed flows of these wait in the "
           "queue), and the log names the brokers (at most once a minute); all: /readyz is unready", (),
           merge="max"),
    Series("flowscope_kafka_send_latency_seconds", "histogram",
           "Time from handing a record batch to the producer to its acknowledgement"),
    Series("flowscope_kafka_errors", "counter", "Kafka errors, by kind (connect, metadata, produce: retried; "
           "rejected: a batch the broker refused for good, dropped; too_large: a batch of several records the broker "
           "refused for its size, cut in two and sent again; admin: --kafka-create-topic failed, or a topic's "
           "max.message.bytes could not be read (DescribeConfigs denied, failed, unanswered or answered with no "
           "number: batch sizes learnt from refusals); "
           "compress: the compression thread failed a batch, sent uncompressed)",
           ("kind",)),
    Series("flowscope_kafka_resent_records", "counter", "Records (flows, sFlow counter records) sent again after "
           "a Produce request that held them was written (or handed to aiokafka) and failed without an answer (a "
           "timeout, a lost connection) or was answered with a retriable error for their partition that may "
           "come after the broker wrote them (REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND...; not one "
           "that comes before, such as NOT_LEADER_OR_FOLLOWER or NOT_ENOUGH_REPLICAS), counted when the new request is written (or handed to aiokafka), and each "
           "time aiokafka sends a batch again by itself (--no-kafka-direct, TLS, SASL, sFlow counter records; after "
           "an error answer too): the broker may have written the first copy, so the topic can hold them twice. "
           "Records queued again and given up before they went out again (at the shutdown deadline, or evicted) "
           "are not counted here but as unconfirmed drops: the topic holds at most delivered + resent + "
           "unconfirmed records. A batch handed to aiokafka that it never wrote counts too, unless no Produce "
           "request for its partition was written while aiokafka had it (a leader never connected to: then it is "
           "in no request; aiokafka's own sends again count no more copies than such requests); label records: "
           "flows or counters", ("records",)),
    Series("flowscope_kafka_batches", "counter", "Record batches acknowledged by Kafka"),
    Series("flowscope_kafka_connections_dropped", "counter", "Connections to the brokers (direct produce and "
           "aiokafka's) the kernel gave up for the broker's silence (ETIMEDOUT: TCP keepalive probes, "
           "--kafka-keepalive-s, or a write's retransmissions unanswered): dropped silently by a NAT, conntrack "
           "or firewall between, or the broker's host gone. Each is closed and replaced; a batch on it "
           "is sent again"),
    Series("flowscope_kafka_throttle_seconds", "counter", "Time the brokers said they throttled the direct produce "
           "path's requests (throttle_time_ms: a produce quota, KIP-13); after a Produce v6+ answer (zstd batches) "
           "its connection sends nothing more for that time (KIP-219). Requests through aiokafka (TLS, SASL, "
           "--no-kafka-direct, sFlow counter records) are not seen here"),
    Series("flowscope_kafka_compression_bytes", "counter", "Bytes of the flows' record batches flowscope writes "
           "itself (key none, and the keyed modes once the topic's partition count is known; not the records aiokafka "
           "batches one by one: sFlow counter records, keyed flows before the partition count) before (side=in) and "
           "after (side=out) kafka.compression", ("side",)),
    Series("flowscope_kafka_compression_thread_seconds", "counter", "Time the compression thread spent "
           "compressing batches (kafka.compression_thread; near 1 per second: that thread is the limit)"),
    # state file
    Series("flowscope_state_saves", "counter", "State file saves, by result (ok, error)", ("result",)),
    Series("flowscope_state_loads", "counter", "State file loads at start, by result (ok, error, missing), and "
           "refresh: files read while running for the templates of exporters that sent data without them (saved "
           "by another replica sharing the file)", ("result",)),
    # enrichment
    Series("flowscope_enrich_lookups", "counter", "Enrichment address lookups (two per flow) by where the answer "
           "came from (lookups_cached: the per-address cache; lookups_index: the index), found or not: not a "
           "count of flows without identity", ("result",)),
    Series("flowscope_enrich_flows", "counter", "Enriched flows by result (flows_identified: an identity on "
           "at least one side; flows_unidentified: neither address is a pod, node or service of the cluster)",
           ("result",)),
    Series("flowscope_enrich_addresses", "counter", "Flow addresses enriched (two per flow) by what held them at "
           "the flow's start: pod, node (a node address, its management port or a host-network pod), service (a "
           "ClusterIP), none (nobody of the cluster)", ("kind",)),
    Series("flowscope_enrich_stat", "gauge", "Enricher statistics as reported by enrich.Enricher.stats(); per "
           "informer kinds_<kind>_errors_<cause> counts failures by cause (continue_expired: a paged list's "
           "continue token expired, 410 Expired: the list ran longer than the API server's etcd compaction "
           "interval, and started again from its first page in larger pages; list_expired: a list given up after "
           "its restarts expired too, retried with backoff (raise --enrich-list-chunk-size); list_gone: 410 Gone "
           "to a list's first request, which names no resourceVersion nor continue token: no compaction race, an "
           "API server or proxy fault, retried with backoff; oversize_page: a list answer past its bound once "
           "decompressed, 256 MiB a page, 4 GiB unpaged: a gzip bomb or an endless answer from a broken server "
           "or proxy, not read on, retried with backoff; list_timeout: a list answer not all there "
           "--enrich-list-page-timeout-seconds after its request, 300 s by default: a server or proxy trickling "
           "it, cut, retried with backoff), kinds_<kind>_list_seconds is how long the last "
           "completed list took (its continue token expires past the API server's etcd compaction interval, "
           "5 min by default) and kinds_<kind>_watches_overdue counts watch streams the API server had not "
           "ended their timeoutSeconds plus 30 s after their answer began (a proxy keeping them open with a byte now "
           "and then while events wait): cut and resumed from the last resourceVersion, no error", ("stat",), merge="max"),
    Series("flowscope_informers_synced", "gauge", "1 when every informer has completed its first list "
           "(with --workers, in every worker), else 0; no series while enrichment is off", merge="min"),
    # the HTTP endpoint (collector/http.py)
    Series("flowscope_http_connections", "gauge", "Connections the /metrics, /healthz and /readyz endpoint holds "
           "(all its addresses), at most --http-max-connections per address"),
    Series("flowscope_http_connections_closed", "counter", "Connections to the /metrics, /healthz and /readyz "
           "endpoint closed without an answer, by reason (evicted: at --http-max-connections, the oldest one that "
           "had not sent its request, closed for a new one; limit: a new one closed at once at the cap, every "
           "connection held being answered; timeout: no request line within 3 s or request head within 10 s)",
           ("reason",)),
    # process
    Series("flowscope_workers", "gauge", "Worker processes reporting metrics"),
    Series("flowscope_ready", "gauge", "1 when /readyz answers 200", merge="max"),
    Series("flowscope_build_info", "gauge", "1, labelled with the flowscope version, the Python version and the "
           "event loop", ("version", "python", "loop"), merge="max"),
]}


Labels = tuple[str, ...]
#: the series labelled by exporter (first label)
EXPORTER_SERIES = tuple(s.name for s in SERIES.values() if s.labels[:1] == ("exporter",))
Snapshot = dict[str, dict[Labels, Any]]  # histogram value: [bucket counts..., sum, count]


def new_histogram() -> list[float]:
    return [0.0] * (len(LATENCY_BUCKETS) + 1) + [0.0, 0.0]


def observe(h: list[float], v: float) -> None:
    """Non-cumulative bucket counts (+Inf last), then sum, then count."""
    for i, b in enumerate(LATENCY_BUCKETS):
        if v <= b:
            h[i] += 1
            break
    else:
        h[len(LATENCY_BUCKETS)] += 1
    h[-2] += v
    h[-1] += 1


#: Seconds without a datagram after which an exporter that has an address label gives it up to
#: one sending without (ExporterLabels.assign): longer than Open vSwitch's template resend (600 s),
#: so an exporter that only refreshes its templates keeps its label.
LABEL_IDLE_S = 900.0


class LabelChoice:
    """Which exporters have an address label: at most `limit`. Exporters sending without one take
    the free labels, the busiest since the last choose() first; with every label taken, labelled
    exporters silent for `idle_after` seconds give theirs up to them. Used by ExporterLabels for
    one worker, and by the supervisor of --workers N for all of them (SharedLabels)."""

    def __init__(self, limit: int, idle_after: float = LABEL_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.idle_after = idle_after
        self.clock = clock
        self.named: set[str] = set()
        # named exporter -> when it was last heard from (named, or sent since a choose())
        self._heard: dict[str, float] = {}

    def choose(self, sent: dict[str, tuple[int, int]]) -> None:
        """sent: exporter -> (datagrams since the last call, datagrams so far), for the exporters
        that sent since the last call."""
        now = self.clock()
        for e in sent:
            if e in self.named:
                self._heard[e] = now
        sending = [e for e in sent if e not in self.named]
        free = self.limit - len(self.named)
        if len(sending) > free:
            silent = sorted((t, e) for e, t in self._heard.items() if now - t >= self.idle_after)
            for _t, e in silent[:len(sending) - free]:
                self.named.discard(e)
                del self._heard[e]
            free = self.limit - len(self.named)
        if free > 0:
            sending.sort(key=lambda e: (-sent[e][0], -sent[e][1], e))
            for e in sending[:free]:
                self.named.add(e)
                self._heard[e] = now


class ExporterLabels:
    """One worker's exporter labels (decoder_series): which exporters are named, chosen here
    (LabelChoice) or, with --workers N, by the supervisor (follow()), and the carries that keep
    every counter series from going back when that changes (see the module docstring)."""

    #: decoder_series' counters, which an evicted exporter's carry keeps under its own label
    COUNTERS = ("flowscope_datagrams", "flowscope_flows", "flowscope_decode_errors", "flowscope_missing_template_sets",
                "flowscope_sequence_lost", "flowscope_sequence_resets", "flowscope_templates_evicted",
                "flowscope_exporter_sample_drops", "flowscope_exporter_not_sent", "flowscope_counter_samples_ignored",
                "flowscope_samples_skipped")

    def __init__(self, limit: int, idle_after: float = LABEL_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        # None once follow() was called: the supervisor chooses
        self.choice: LabelChoice | None = LabelChoice(limit, idle_after, clock)
        self.named: set[str] = set()
        # follow(): the supervisor's latest set (generation, exporters), applied at the next assign()
        self._imposed: tuple[int, frozenset[str]] = (0, frozenset())
        self.generation = 0   # the generation of the supervisor's set that assign() applied last
        # the latest assign()'s senders: exporter -> (datagrams since the call before, so far)
        self.sent: dict[str, tuple[int, int]] = {}
        self._prev: dict[str, int] = {}   # the activity as of the previous assign(): who sends now
        # for keep_evicted, from assign: exporters named now that `other` counted before, and
        # exporters whose label was given up
        self._named_now: list[str] = []
        self._unnamed_now: list[str] = []
        # A named exporter the decoder evicts (--max-exporters) has its counters folded into
        # `other` and starts from 0 if it comes back: its last values seen stay under its own
        # label (carried) and are taken out of `other` again, so neither series goes back. The
        # carry also holds what moves with a label changing hands (keep_evicted).
        self._last: dict[str, tuple[Any, list[tuple[str, Labels, float]]]] = {}
        self._carry: dict[tuple[str, Labels], float] = {}
        # following: exporters labelled with their address before the supervisor named them
        # (their first datagrams here, labels free: see assign), until its answer to `ask`, the
        # latest snapshot that held new ones, says which it named (`_decision`)
        self.held: set[str] = set()
        self.ask = 0
        self._decision: set[str] | None = None
        self._folded_now: list[str] = []   # for keep_evicted: held, then not named

    def carried(self) -> set[str]:
        """The exporters whose Decoder.series_stats() entries keep_evicted() looks up."""
        return {*self._last, *self.named, *self.held}

    def keep_evicted(self, stats: Mapping[str, Any], out: Snapshot) -> None:
        """Apply the carry of named exporters evicted since the last call to `out` (built from
        `stats`, Decoder.series_stats(): those of carried() at least), and of labels that
        changed hands at this call's assign(). An exporter evicted and back within one interval
        is told by its per-protocol dict, which a new decoder state replaces."""
        carry = self._carry
        for exporter in self._folded_now:
            # held, not named: the supervisor showed its counts in `other` meanwhile
            # (SharedLabels.folded), where they are now; what was carried under its label too
            self._last.pop(exporter, None)
            for name, lab in [k for k in carry if k[1][0] == exporter]:
                to = (name, (OTHER, *lab[1:]))
                carry[to] = carry.get(to, 0) + carry.pop((name, lab))
        for exporter in self._unnamed_now:
            # its label's series end; what it had counted as of the last call is now in `other`
            # (under its address while in `stats`, else folded into the evicted exporters'),
            # so `other` goes on from where it was
            for name, lab, v in self._last.pop(exporter, (None, []))[1]:
                other = (OTHER, *lab[1:])
                carry[(name, other)] = carry.get((name, other), 0) - v
            for key in [k for k in carry if k[1][0] == exporter]:
                del carry[key]
        for exporter, (protos, values) in list(self._last.items()):
            st = stats.get(exporter)
            if st is not None and st[3] is protos:
                continue
            for name, lab, v in values:
                carry[(name, lab)] = carry.get((name, lab), 0) + v
                other = (OTHER, *lab[1:])
                carry[(name, other)] = carry.get((name, other), 0) - v
        if self._named_now:
            # counted in `other` until now: that history stays there, its own series starts at 0
            now = set(self._named_now)
            for name in self.COUNTERS:
                for lab, v in out.get(name, {}).items():
                    if lab[0] in now:
                        carry[(name, lab)] = carry.get((name, lab), 0) - v
                        other = (OTHER, *lab[1:])
                        carry[(name, other)] = carry.get((name, other), 0) + v
        self._named_now, self._unnamed_now, self._folded_now = [], [], []
        last: dict[str, tuple[Any, list[tuple[str, Labels, float]]]] = {}
        if self.named or self.held:
            for name in self.COUNTERS:
                for lab, v in out.get(name, {}).items():
                    exporter = lab[0]
                    if (exporter in self.named or exporter in self.held) and exporter in stats:
                        last.setdefault(exporter, (stats[exporter][3], []))[1].append((name, lab, v))
        self._last = last
        for (name, lab), v in carry.items():
            series = out.setdefault(name, {})
            series[lab] = series.get(lab, 0) + v

    def follow(self, generation: int, named: Iterable[str], ask: int = 0, held_named: Iterable[str] = ()) -> None:
        """--workers N: label the exporters the supervisor chose (SharedLabels), from the next
        assign() on; until the first call, none. `ask`, `held_named`: its answer to this
        worker's latest snapshot that held exporters (feed), the ones of those it named."""
        self.choice = None
        self._imposed = (generation, frozenset(named))
        if ask and ask == self.ask and self.held:
            self._decision = set(held_named)

    @property
    def following(self) -> bool:
        return self.choice is None

    def report(self) -> dict[str, tuple[int, int]]:
        """What the supervisor chooses from (SharedLabels.reported), bounded by the limit: of the
        latest assign()'s senders, the named ones (still heard from), the held ones and the
        busiest others."""
        named = self._imposed[1] | self.named
        out = {e: v for e, v in self.sent.items() if e in named or e in self.held}
        others = ((-v[0], -v[1], e) for e, v in self.sent.items() if e not in out)
        for _d, _n, e in heapq.nsmallest(self.limit, others):
            out[e] = self.sent[e]
        return out

    def feed(self, joined: list[str], left: list[str]
             ) -> tuple[int, dict[str, tuple[int, int]], list[str], int, list[str], list[str]]:
        """--workers N: what a worker's snapshot tells the supervisor (LABELS): the generation
        of the set it labels with, report(), the exporters held and the ask they are held for
        (SharedLabels decides on them as it takes the snapshot in, and answers at once), and
        `joined`, `left`: the exporters with datagrams gained and forgotten since the previous
        call (Decoder.exporters_changed: the decoder's table, bounded by --max-exporters, evicts
        the least recently seen), for the count of distinct exporters over all workers
        (flowscope_exporters)."""
        return self.generation, self.report(), sorted(self.held), self.ask, joined, left

    def assign(self, activity: dict[str, int]) -> dict[str, str]:
        """activity: exporter -> datagrams so far. Returns exporter -> label."""
        self.update(activity, [e for e in self._prev if e not in activity])
        return {e: self.label(e) for e in activity}

    def label(self, exporter: str) -> str:
        """The exporter's label as of the latest assign() or update()."""
        return exporter if exporter in self.named or exporter in self.held else OTHER

    def update(self, changed: dict[str, int], gone: Iterable[str]) -> set[str]:
        """assign() by changes, without a walk over every exporter: `changed`, exporter ->
        datagrams so far of those that may have sent since the previous call (the new ones
        included), `gone`: those no longer there (evicted; not in `changed`). Returns the
        exporters whose label() changed."""
        prev = self._prev
        sent = {}
        for e, n in changed.items():
            p = prev.get(e, 0)
            if n != p and n > 0:
                # (fewer than before: evicted by the decoder and back, counting from 0 again)
                sent[e] = (n - p if n > p else n, n)
        self.sent = sent
        held = self.held
        decided: set[str] = set()   # held, and named by the supervisor's answer
        if self.choice is not None:
            self.choice.choose(sent)
            named: set[str] | frozenset[str] = self.choice.named
        else:
            self.generation, named = self._imposed
            if held and self._decision is not None:
                decided = held & self._decision
                self._folded_now.extend(held - self._decision)
                held, self._decision = set(), None
            free = self.limit - len(named | held)
            if free > 0:
                # An exporter's first datagrams here, with labels free: labelled with its address
                # at once, and the supervisor decides (as it takes this snapshot in, before
                # /metrics can show it) whether that is its label or `other` for them, then
                # tells this worker (the answer to `ask`). So the label shows in the same scrape
                # as its first counts, as with one worker; they went to `other` before (and stayed
                # there), its label following a stats interval or two later: the supervisor chose
                # once an interval, the workers applied that at their next snapshots.
                new = [(-d, -n, e) for e, (d, n) in sent.items() if e not in named and e not in held
                       and not prev.get(e, 0)]
                if new:
                    held = held | {e for _d, _n, e in heapq.nsmallest(free, new)}
                    self.ask += 1
                    self._decision = None
        labelled = self.named | self.held
        self.held = held
        was = self.named | decided   # (labelled with their address already)
        for e in was - named:
            self._unnamed_now.append(e)
        for e in named - was:
            if e in prev and e not in held:   # (held: its label until the answer says)
                self._named_now.append(e)
        self.named = set(named) - held
        for e in gone:
            prev.pop(e, None)
        prev.update(changed)
        return labelled ^ (self.named | held)


class SharedLabels:
    """--workers N: the supervisor's one choice of labelled exporters for all workers. The kernel
    spreads an exporter's datagrams over the workers by source address and port, so an exporter
    sending from several ports (Open vSwitch bridges and collector sets, NetFlow engines, an
    exporter restarted on a new port) reaches several workers; each choosing for itself, one
    labelled it and another counted it in `other`, and the labels named up to N times the limit.

    Each worker's snapshot carries (LABELS, ExporterLabels.feed) the generation of the set it
    labels with and its senders since its previous snapshot (ExporterLabels.report: bounded
    by the limit); tick(), every stats interval, chooses from all of them as one worker
    would (LabelChoice) and returns the set for the workers when it changed. A snapshot that
    holds new exporters (labels free: labelled with their address, ExporterLabels.assign) is
    decided on as it comes in (tick(), before a scrape can show it): those not named are shown
    in `other` (folded) and the worker, answered at once (frames()), does the same from its next
    snapshot on. The workers apply a set at their own
    next snapshots, each keeping its own carries (ExporterLabels.keep_evicted), so each worker's
    series never go back, and neither do their sums: a label handed out starts from 0 in each
    worker in turn. A label given up ends in all of them at once (Aggregator.merged shows only
    the `published` labels: a worker's part alone would be its series going back), and new
    labels are handed out only once every worker labels with a set without the ones given up:
    so an exporter's label that comes back later starts from 0 everywhere, and the labels
    shown never name more exporters than the limit.

    The same feed tells which exporters each worker's decoder holds (flowscope_exporters): an
    address reaching several workers is counted once (`exporters`). Each worker's table is
    bounded by --max-exporters, so is its copy here."""

    def __init__(self, limit: int, workers: int, idle_after: float = LABEL_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.choice = LabelChoice(limit, idle_after, clock)
        self.workers = workers
        self.published: frozenset[str] = frozenset()
        self.generation = 0
        self._gave_up = 0                 # the latest generation that took labels off
        self.applied: dict[int, int] = {}  # worker -> generation its latest snapshot labels with
        self._sent: dict[str, list[int]] = {}   # reported since the last tick(), summed
        # worker -> what was decided for the exporters its latest snapshot held (named or not),
        # and the ask they were held for; whether the set changed since frames() was last called,
        # and the workers to answer
        self._decided: dict[int, dict[str, bool]] = {}
        self._asks: dict[int, int] = {}
        self.changed = False
        self._asked: set[int] = set()
        # worker -> the exporters with datagrams its decoder's table holds; address -> in how
        # many of those tables
        self._tables: dict[int, set[str]] = {}
        self._reach: dict[str, int] = {}

    @property
    def exporters(self) -> int:
        """Distinct exporter addresses the workers' decoders hold that sent (flowscope_exporters)."""
        return len(self._reach)

    def reported(self, worker: int, snap: Snapshot) -> None:
        """Take in a worker's snapshot (those without LABELS, starting or from one worker, are
        left aside)."""
        entry = snap.get(LABELS)
        if not entry:
            return
        generation, sent, held, ask, joined, left = entry[()]
        self.applied[worker] = generation
        for e, (d, n) in sent.items():
            acc = self._sent.setdefault(e, [0, 0])
            acc[0] += d
            acc[1] += n
        if held:
            # decided now, before a scrape shows this snapshot, and for good: what was shown
            # under the label (or folded into `other`) stays there when the worker applies it
            before = self._decided.get(worker, {})
            if any(e not in before for e in held) and self.tick() is not None:
                self.changed = True
            self._decided[worker] = {e: before[e] if e in before else e in self.published for e in held}
            self._asks[worker] = ask
            self._asked.add(worker)
        else:
            self._decided.pop(worker, None)
        mine = self._tables.setdefault(worker, set())
        reach = self._reach
        for e in left:
            if e in mine:
                mine.discard(e)
                reach[e] -= 1
                if not reach[e]:
                    del reach[e]
        for e in joined:
            if e not in mine:
                mine.add(e)
                reach[e] = reach.get(e, 0) + 1

    def folded(self, worker: int) -> set[str]:
        """The exporters the worker's latest snapshot labels with their address, held, that
        were not named: shown in `other` (Aggregator.merged), as the worker will show them."""
        return {e for e, named in self._decided.get(worker, {}).items() if not named}

    def frame(self, worker: int) -> tuple[int, list[str], int, list[str]]:
        """What a worker follows (ExporterLabels.follow): the set, and the answer to its latest
        snapshot that held exporters."""
        decided = self._decided.get(worker, {})
        return self.generation, sorted(self.published), self._asks.get(worker, 0), sorted(
            e for e, named in decided.items() if named)

    def frames(self) -> dict[int, tuple[int, list[str], int, list[str]]]:
        """The frames to send since the last call: to every worker when the set changed, else to
        those whose snapshot held exporters (they wait for the answer)."""
        to = set(range(self.workers)) if self.changed else self._asked
        self.changed, self._asked = False, set()
        return {w: self.frame(w) for w in to}

    def tick(self) -> tuple[int, list[str]] | None:
        """Choose from what was reported since the last call: (generation, exporters) for the
        workers when the set to label with changed, else None."""
        sent, self._sent = self._sent, {}
        self.choice.choose({e: (d, n) for e, (d, n) in sent.items()})
        target = frozenset(self.choice.named)
        if self.published - target:
            # labels given up go first, alone; new ones wait for every worker to apply that
            new = self.published & target
        elif all(self.applied.get(w, 0) >= self._gave_up for w in range(self.workers)):
            new = target
        else:
            return None
        if new == self.published:
            return None
        self.generation += 1
        if self.published - new:
            self._gave_up = self.generation
        self.published = new
        return self.generation, sorted(new)


#: the series decoder_series() makes
DECODER_SERIES = ("flowscope_datagrams", "flowscope_flows", "flowscope_decode_errors", "flowscope_missing_template_sets",
                  "flowscope_templates", "flowscope_sampling_rate", "flowscope_sequence_lost",
                  "flowscope_sequence_resets", "flowscope_templates_evicted", "flowscope_exporter_sample_drops",
                  "flowscope_exporter_not_sent", "flowscope_counter_samples_ignored", "flowscope_samples_skipped")
#: a protocol's counters (Decoder.series_stats()) with a series only while not 0
SPARSE_COUNTERS = (("sequence_lost", "flowscope_sequence_lost"), ("sequence_resets", "flowscope_sequence_resets"),
                   ("templates_evicted", "flowscope_templates_evicted"),
                   ("sample_drops", "flowscope_exporter_sample_drops"),
                   ("counter_samples_ignored", "flowscope_counter_samples_ignored"),
                   ("samples_skipped", "flowscope_samples_skipped"))


def decoder_series(stats: dict[str, Any], labels: ExporterLabels) -> Snapshot:
    """Turn Decoder.series_stats() (cumulative, per exporter) into per-exporter/protocol series:
    a walk over every exporter (DecoderSeries keeps the same up to date by changes)."""
    out: Snapshot = {name: {} for name in DECODER_SERIES}
    # the folded counters of evicted exporters (decoders.EVICTED) are never a label of their own
    names = labels.assign({e: int(s[0]) for e, s in stats.items() if e != EVICTED})
    names[EVICTED] = OTHER
    dg, fl, mt, tm = (out["flowscope_datagrams"], out["flowscope_flows"], out["flowscope_missing_template_sets"],
                      out["flowscope_templates"])
    errs, rates = out["flowscope_decode_errors"], out["flowscope_sampling_rate"]
    ns = out["flowscope_exporter_not_sent"]
    for exporter, (_datagrams, rate, protocol, protocols, templates) in stats.items():
        name = names[exporter]
        # One exporter often speaks several protocols (an OVS node sends IPFIX, sFlow and
        # NetFlow from one address): the decoder keeps per-protocol counts.
        for proto, p in protocols.items():
            lab = (name, proto)
            dg[lab] = dg.get(lab, 0) + p["datagrams"]
            fl[lab] = fl.get(lab, 0) + p["flows"]
            mt[lab] = mt.get(lab, 0) + p["missing_template_sets"]
            for key, series in SPARSE_COUNTERS:
                if p.get(key):
                    seq = out[series]
                    seq[lab] = seq.get(lab, 0) + p[key]
            tm[lab] = tm.get(lab, 0) + (templates.get(proto, 0) if templates else 0)
            for reason, n in p["errors"].items():
                el = (name, proto, reason)
                errs[el] = errs.get(el, 0) + n
            for unit, n in p.get("not_sent", {}).items():
                ul = (name, proto, unit)
                ns[ul] = ns.get(ul, 0) + n
        if rate:
            lab = (name, protocol or "unknown")
            rates[lab] = max(rates.get(lab, 0), rate)
    labels.keep_evicted(stats, out)
    return out


#: the values of a protocol in a Decoder.series_changed() entry (decoders part_of: name,
#: datagrams, flows, missing template sets, templates, SPARSE_COUNTERS' values, errors, not sent)
_PROTO_FIELDS = 5 + len(SPARSE_COUNTERS) + 2


class DecoderSeries:
    """decoder_series() kept up to date by changes (update(), from Decoder.series_changed()), so
    a snapshot costs what changed since the last one, not a walk over every exporter: each
    exporter's part of the sums is kept (its label and Decoder.series_changed()'s entry: plain
    values, not the decoder's dicts, which it goes on counting in), taken out and put back in
    when its entry or its label changes. A series is shown while an exporter adds to it, as
    decoder_series() makes it (a protocol's series from its first datagram; the
    SPARSE_COUNTERS', the sampling rate's, while not 0). `decoder`: its series_entry() gives
    the entries of the labelled exporters (ExporterLabels.keep_evicted)."""

    def __init__(self, decoder: Any, labels: ExporterLabels) -> None:
        self.decoder = decoder
        self.labels = labels
        # exporter -> its part as added to the sums: (label, *its series_changed() entry) (one
        # tuple of plain values: few objects made an interval, and the garbage collector leaves
        # them be)
        self._parts: dict[str, tuple[Any, ...]] = {}
        self._clear()

    def _clear(self) -> None:
        # series -> labels -> sum: those of every protocol while an exporter adds to them (its
        # labels -> how many do: _protos), the others (errors and not sent by reason, never 0
        # an exporter; SPARSE_COUNTERS) while not 0
        self._sums: dict[str, dict[Labels, int]] = {name: {} for name in DECODER_SERIES}
        self._protos: dict[Labels, int] = {}
        # flowscope_sampling_rate: labels -> {rate: exporters with it}
        self._rates: dict[Labels, dict[int, int]] = {}

    def update(self, changed: dict[str, Any], gone: Iterable[str]) -> Snapshot:
        """Decoder.series_changed()'s (entries, gone): decoder_series() of the entries as now."""
        parts, labels, entry = self._parts, self.labels, self.decoder.series_entry
        gone = [e for e in gone if e not in changed]   # (evicted and back: a new entry)
        old = [parts.pop(e) for e in gone if e in parts]
        relabelled = labels.update({e: s[0] for e, s in changed.items() if e != EVICTED}, gone)
        redo = {e: (OTHER if e == EVICTED else labels.label(e),) + s for e, s in changed.items()}
        for e in relabelled:
            part = parts.get(e)
            if e not in redo and part is not None:
                redo[e] = (labels.label(e),) + part[1:]   # (its entry did not change)
        old += [part for part in (parts.pop(e, None) for e in redo) if part is not None]
        if 2 * (len(old) + len(redo)) > len(parts) + len(old):
            # most of them: the sums again from the parts (each exporter added once, as
            # decoder_series would, not taken out and added again)
            self._clear()
            self._add(parts.values(), 1)
        else:
            self._add(old, -1)
        parts.update(redo)
        self._add(redo.values(), 1)
        out: Snapshot = {name: dict(sums) for name, sums in self._sums.items()}
        out["flowscope_sampling_rate"] = {lab: max(rates) for lab, rates in self._rates.items()}
        labels.keep_evicted({e: s for e in labels.carried() if (s := entry(e)) is not None}, out)
        return out

    def _add(self, parts: Iterable[tuple[Any, ...]], sign: int) -> None:
        """Add (sign 1) or take out (-1) exporters' parts (_parts)."""
        sums, protos_at, rates = self._sums, self._protos, self._rates
        dg, fl, mt, tm, errs, ns = (sums[name] for name in (
            "flowscope_datagrams", "flowscope_flows", "flowscope_missing_template_sets", "flowscope_templates",
            "flowscope_decode_errors", "flowscope_exporter_not_sent"))
        sparse_sums = tuple(sums[series] for _key, series in SPARSE_COUNTERS)
        for part in parts:
            name, _datagrams, rate, rate_proto = part[:4]
            for i in range(4, len(part), _PROTO_FIELDS):
                proto, datagrams, flows, missing, templates, *sparse, errors, not_sent = part[i:i + _PROTO_FIELDS]
                lab = (name, proto)
                n = protos_at.get(lab, 0) + sign
                if n:
                    protos_at[lab] = n
                    dg[lab] = dg.get(lab, 0) + sign * datagrams
                    fl[lab] = fl.get(lab, 0) + sign * flows
                    mt[lab] = mt.get(lab, 0) + sign * missing
                    tm[lab] = tm.get(lab, 0) + sign * templates
                else:
                    del protos_at[lab], dg[lab], fl[lab], mt[lab], tm[lab]
                if any(sparse):
                    for target, v in zip(sparse_sums, sparse, strict=True):
                        if v:
                            _bump(target, lab, sign * v)
                for reason, v in errors:
                    _bump(errs, (name, proto, reason), sign * v)
                for unit, v in not_sent:
                    _bump(ns, (name, proto, unit), sign * v)
            if rate:
                lab = (name, rate_proto)
                by_rate = rates.setdefault(lab, {})
                by_rate[rate] = by_rate.get(rate, 0) + sign
                if not by_rate[rate]:
                    del by_rate[rate]
                    if not by_rate:
                        del rates[lab]


def _bump(sums: dict[Labels, int], lab: Labels, v: int) -> None:
    """DecoderSeries._sums: `v` added to `lab`'s sum, which is gone at 0."""
    v += sums.get(lab, 0)
    if v:
        sums[lab] = v
    else:
        del sums[lab]


def merge_into(total: Snapshot, snap: Snapshot) -> None:
    for name, values in snap.items():
        series = SERIES.get(name)
        if series is None:
            continue
        dst = total.setdefault(name, {})
        for lab, v in values.items():
            lab = tuple(lab)
            if series.kind == "histogram":
                cur = dst.get(lab)
                dst[lab] = list(v) if cur is None else [a + b for a, b in zip(cur, v, strict=False)]
            elif series.merge == "max":
                dst[lab] = max(dst.get(lab, 0), v)
            elif series.merge == "min":
                cur = dst.get(lab)
                dst[lab] = v if cur is None else min(cur, v)
            else:
                dst[lab] = dst.get(lab, 0) + v


def fold_into_other(snap: Snapshot, exporters: set[str]) -> Snapshot:
    """`snap` with the exporter series of `exporters` under `other`."""
    out = dict(snap)
    for name in EXPORTER_SERIES:
        values = snap.get(name)
        if values and any(lab[0] in exporters for lab in values):
            kept: Snapshot = {name: {lab: v for lab, v in values.items() if lab[0] not in exporters}}
            for lab, v in values.items():
                if lab[0] in exporters:
                    merge_into(kept, {name: {(OTHER, *lab[1:]): v}})
            out[name] = kept[name]
    return out


STARTING = "_starting"  # key of the snapshot a worker sends before its (possibly long) start-up
FINAL = "_final"        # key of the snapshot a worker sends once stopped (listeners closed, queue counted)
# key of a worker's snapshot listing its listeners' sockets: {(): [(listener, inode), ...]}, so
# the supervisor can read their kernel drop counters itself (kernel_drops_now)
SOCKETS = "_sockets"
# key of a --workers N worker's snapshot for SharedLabels: {(): ExporterLabels.feed(*Decoder.exporters_changed())}
LABELS = "_labels"
# A start-up longer than this is a hang after all (liveness restarts the pod): loading state
# files takes seconds per million template fields
STARTING_LIMIT = 600.0


def starting_snapshot(what: str) -> Snapshot:
    """What a worker reports before it starts: not ready, and why."""
    return {STARTING: {(): 1}, "_ready": {(): (False, [f"starting: {what}"])}}  # type: ignore[dict-item]


class Aggregator:
    """Latest snapshot per worker; sums them on scrape. Also a prometheus_client collector."""

    def __init__(self, expected: int = 0, labels: SharedLabels | None = None) -> None:
        self.workers: dict[int, Snapshot] = {}
        # --workers N: the exporter labels chosen for all workers, fed with each snapshot
        self.labels = labels
        self.extra: Snapshot = {}  # set by the supervisor (workers, ready)
        self.seen: dict[int, float] = {}  # worker -> time.monotonic() of its latest snapshot
        self.starting: set[int] = set()   # workers whose latest snapshot says "starting"
        self.expected = expected          # workers 0..expected-1 are to report
        self.started = time.monotonic()

    def update(self, worker: int, snap: Snapshot) -> None:
        self.workers[worker] = snap
        self.seen[worker] = time.monotonic()
        if self.labels is not None:
            self.labels.reported(worker, snap)
        if STARTING in snap:
            self.starting.add(worker)
        else:
            self.starting.discard(worker)

    def silent(self, limit: float, starting: bool = True) -> dict[int, float]:
        """Workers whose latest snapshot is more than `limit` seconds old: how long ago it was.
        An expected worker that never reported counts from the aggregator's start (a worker hung
        before its first snapshot is as stuck as one hung later: the first snapshot, "starting",
        is sent right after the fork). `starting=False` leaves out the workers that said they
        are starting (loading state files, starting the informers: that can take longer than
        any silence limit, and is not a hang to restart the pod for), for STARTING_LIMIT."""
        now = time.monotonic()
        ages = {w: now - self.seen.get(w, self.started) for w in range(self.expected)}
        ages.update((w, now - t) for w, t in self.seen.items())
        return {w: age for w, age in ages.items()
                if age > limit and (starting or w not in self.starting or age > STARTING_LIMIT)}

    def merged(self) -> Snapshot:
        total: Snapshot = {}
        for worker, snap in self.workers.items():
            folded = self.labels.folded(worker) if self.labels is not None else None
            merge_into(total, fold_into_other(snap, folded) if folded else snap)
        # A "min" series (every worker must say yes) that some worker reports: an expected worker
        # that does not (still starting, its informers not even started, or not reported yet)
        # has not said yes
        for name, series in SERIES.items():
            if series.merge == "min" and name in total and any(
                    name not in self.workers.get(w, {}) for w in range(self.expected)):
                total[name] = {lab: min(v, 0) for lab, v in total[name].items()}
        if self.labels is not None:
            # a label given up ends in every worker's series at once: a worker that has not
            # applied that yet still shows its part, which alone would be a counter going back
            keep = self.labels.published
            for name in EXPORTER_SERIES:
                if name in total:
                    total[name] = {lab: v for lab, v in total[name].items() if lab[0] == OTHER or lab[0] in keep}
            if "flowscope_exporters" in total:
                # each address once, not once per worker its source ports reach
                total["flowscope_exporters"] = {(): self.labels.exporters}
        merge_into(total, self.extra)
        return total

    def value(self, name: str, **labels: str) -> float:
        """Sum of a series over the label sets matching `labels` (used by health and tests)."""
        series = SERIES[name]
        total = 0.0
        for lab, v in self.merged().get(name, {}).items():
            d = dict(zip(series.labels, lab, strict=False))
            if all(d.get(k) == want for k, want in labels.items()):
                total += v[-1] if series.kind == "histogram" else v
        return total

    def collect(self) -> Iterator[Any]:
        merged = self.merged()
        for name, series in SERIES.items():
            values = merged.get(name, {})
            if series.kind == "counter":
                fam: Any = CounterMetricFamily(name, series.help, labels=series.labels)
                for lab, v in sorted(values.items()):
                    fam.add_metric(list(lab), v)
            elif series.kind == "gauge":
                fam = GaugeMetricFamily(name, series.help, labels=series.labels)
                for lab, v in sorted(values.items()):
                    fam.add_metric(list(lab), v)
            else:
                fam = HistogramMetricFamily(name, series.help, labels=series.labels)
                for lab, h in sorted(values.items()):
                    cum, buckets = 0.0, []
                    for i, b in enumerate(LATENCY_BUCKETS):
                        cum += h[i]
                        buckets.append((_le(b), cum))
                    cum += h[len(LATENCY_BUCKETS)]
                    buckets.append(("+Inf", cum))
                    fam.add_metric(list(lab), buckets, h[-2])
            yield fam

    def render(self) -> bytes:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(self)  # type: ignore[arg-type]
        return generate_latest(reg)


def _le(b: float) -> str:
    return repr(float(b)) if not math.isinf(b) else "+Inf"


def parse_exposition(text: str) -> dict[str, dict[Labels, float]]:
    """Parse /metrics text into {sample name: {sorted label items: value}} (tests and tools)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[Labels, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value  # type: ignore[arg-type]
    return out


def total(parsed: dict[str, dict[Labels, float]], name: str, **labels: str) -> float:
    """Sum of samples of `name` whose labels include `labels`."""
    acc = 0.0
    for lab, v in parsed.get(name, {}).items():
        d: dict[Any, Any] = dict(lab)  # type: ignore[arg-type]
        if all(d.get(k) == want for k, want in labels.items()):
            acc += v
    return acc


def markdown_table() -> str:
    """The series table of docs/collector.md, generated so the docs cannot drift from SERIES."""
    rows = ["| series | type | labels | meaning |", "|---|---|---|---|"]
    for name, kind, help_text, labels in iter_names():
        rows.append(f"| `{name}` | {kind} | {', '.join(labels) if labels else '-'} | {help_text} |")
    return "\n".join(rows)


def iter_names() -> Iterable[tuple[str, str, str, tuple[str, ...]]]:
    """(exposed name, type, help, labels) for docs."""
    for s in SERIES.values():
        exposed = s.name + "_total" if s.kind == "counter" else s.name
        yield exposed, s.kind, s.help, s.labels
