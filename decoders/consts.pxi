# Compile-time constants of the decoders, in one place.
#
# FLOWSCOPE_DEBUG comes from setup.py's compile_time_env (FLOWSCOPE_DEBUG=1 at build time, `make
# debug`), for compile-time `IF FLOWSCOPE_DEBUG` blocks; none is left: a debug build's checks are
# Cython's bounds, wraparound and initialized checks, and -O0 -g3.

DEF MAX_TEMPLATE_FIELDS = 512        # RFC 7011 allows 65535; no real exporter comes close
DEF EXTRA_SCAN_MAX = 16             # a flow's unknown elements up to this many are grouped by pairwise compares
DEF VARLEN = 0xFFFF                  # RFC 7011 3.2: field length 65535 = variable length
DEF DEDUP_SLOTS = 4096               # per-exporter ring of recent ingress 5-tuples (--dedup)
DEF INGRESS_SLOTS = 1024            # per-exporter table of (process, domain, input port) sampled on input (rate > 1)
DEF INGRESS_PROBE = 8               # ... slots probed for a key
DEF DEDUP_END_MAX = 63               # ingress records of one end waiting for their egress twins (a slot's bits 1-6)
DEF DEDUP_END_LOW = 0x7F             # ... bit 0 their direction; the key is the bits above
DEF SEQ_MAX_GAP = 1 << 20           # export sequence jumps beyond this (either way) are restarts
DEF LOG_KEYS = 4096                 # (reason, exporter) keys of the per-packet error log limit
DEF LOG_INFO = 20                   # logging.INFO / logging.WARNING, for Decoder.log_limited's level
DEF LOG_WARNING = 30
DEF SEQ_RESTART_UPTIME_MS = 60000   # a header uptime this far behind the stream's last one: a restart
DEF SEQ_MAX_STREAMS = 256            # (protocol, port, domain) sequence streams tracked per exporter
DEF SEQ_REORDER_MS = 1000           # a sequence gap is counted as loss once this old (receive time),
                                    # unless datagrams that arrive late fill it first
DEF SEQ_RESTART_RUN = 3            # late datagrams in a row, in sequence and in no gap, over SEQ_REORDER_MS
                                    # or more, none of the expected stream between: a restarted process
DEF SEQ_SHARED = 1 << 32            # the stream key of an IPFIX port numbering all its domains as one
DEF SEQ_MAX_GAPS = 8                # gaps open at once per stream (a newer one counts the oldest)
DEF TX_DURATION = 1                # decode_record's time elements kept as extras: 161/162
DEF TX_SYSUP = 2                   # ... 21/22 without a system init time (IPFIX)
DEF V9_UNCOUNTED = 0xFFFFFFFF     # a v9 packet's record count is not known (ExporterState.v9_convention)
DEF V9_BACK_VOTES = 4              # a v9 stream read by records keeps the packets reading's gaps (sequence) while
                                    # its records votes lead by no more than this
DEF SEQ_HELD_MS = 60000            # an IPFIX loss held back as ambiguous (ipfix_convention) is counted this late
DEF SEQ_FILLED_RING = 16            # late sequence numbers remembered per stream (duplicates fill nothing)
DEF SEQ_RESTORE_MAX_MS = 300000    # sequence state of the previous run (Decoder.import_sequences) goes on only
                                    # for an exporter heard again within this of its latest datagram then
DEF SEQ_FLOOR_BYTES = 1024          # an uncounted IPFIX message's undecoded sets kept up to this many bytes, to
                                    # count their records once their templates come (ExporterState.floor_count)
DEF DROPS_MAX_SOURCES = 1024         # sFlow data sources whose drops counters are tracked per exporter
DEF OPTIONS_MAX_ENTRIES = 1024       # per exporter, in each dict of what options data teaches
DEF NAMES_IN = 1                     # Flow.names_learned: the ingress slot is a learned name,
DEF NAMES_OUT = 2                    # the egress slot is (a learned pair's unnamed one: "", length 0),
DEF NAMES_OWN = 4                    # the record has interfaceName (82) elements of its own
DEF NAMES_EGRESS = 8                 # its single name's interface was crossed egress, IfDirections [1]: the
                                     # reverse flow of a record without a direction (written as ingress)
DEF IFNAME_MAX = 255                 # bytes of an interface name learned from options data (IF-MIB's
                                     # ifName / ifDescr are DisplayStrings, SIZE (0..255)): longer refused
DEF NOT_SENT_MAX_KEYS = 1024         # IPFIX notSent*TotalCount counters tracked per exporter (learn_not_sent)
DEF WITHDRAWN_MAX = 256              # per exporter, exporting processes (source ports) remembered as withdrawn
DEF STATE_BYTES_EXPORTER = 2560     # estimated bytes of an exporter's state (ExporterState.state_size):
DEF STATE_BYTES_ENTRY = 200          # ... of each options-learned entry, sFlow drops source and
                                     # notSent counter
DEF STATE_BYTES_STREAM = 450         # ... of each sequence stream
DEF STATE_BYTES_NAME = 56            # ... of each learned interface name beside its bytes (a bytes
                                     # object's head, its NameTable slot, key and index; tracemalloc)
DEF DEDUP_WINDOW_MS = 250            # end times of one packet's ingress and egress records differ by less (is_duplicate)
DEF DEDUP_COPY_MS = 10               # ... and those of its copies flooded to several ports
DEF CLOCK_TOLERANCE_MS = 2000        # export times have 1 s granularity, plus network delay: an
                                     # exporter clock off by more is corrected for enrichment
DEF CLOCK_WINDOW_MS = 60000          # the exporter's clock offset is the smallest receive - export
                                     # time over the last one to two such windows (clock_shift)
DEF SEEN_STEP_S = 60.0               # Template.seen moves in steps of this (the state file changes, and is
                                     # rewritten, at most this often for data alone)
DEF SYSUP_SKEW_MS = 3600000          # sysUpTime values (v5, v9 header, IE 160) up to this far after
                                     # the export are clock disagreement, not a 32-bit wrap (sysup_time)

# Presence bits of Flow.present: which optional fields a record carried.
cdef enum:
    P_SPORT = 1 << 0
    P_DPORT = 1 << 1
    P_PROTO = 1 << 2
    P_ETYPE = 1 << 3
    P_BYTES = 1 << 4
    P_PACKETS = 1 << 5
    P_FLAGS = 1 << 6
    P_DSCP = 1 << 7
    P_ICMP = 1 << 8
    P_SRCMAC = 1 << 9
    P_DSTMAC = 1 << 10
    P_TSTART = 1 << 11
    P_TEND = 1 << 12
    P_INIF = 1 << 13
    P_OUTIF = 1 << 14
    P_VLAN = 1 << 15
    P_TUNTYPE = 1 << 16
    P_TUNID = 1 << 17
    P_TUNSPORT = 1 << 18
    P_TUNDPORT = 1 << 19
    P_SRCAS = 1 << 20
    P_DSTAS = 1 << 21
    P_SRCMASK = 1 << 22
    P_DSTMASK = 1 << 23
    P_ENDREASON = 1 << 24
    P_FLAGCOUNTS = 1 << 25   # flags derived from tcp*TotalCount (OVS) rather than tcpControlBits
    P_SAMPLING = 1 << 26     # the exporter sent the rate (record, options data, v5 header, sFlow
                             # sample): the counts are of sampled packets (--renormalize scales them)
    P_TUNPROTO = 1 << 27
    P_MSG = 1 << 28          # msg_domain/msg_sequence: from a later IPFIX message of the datagram
    P_VLANHDR = 1 << 29      # Vlan is the sampled frame's own outer tag (sFlow; not encoded)
    P_DROP = 1 << 30         # the flow's packets were dropped: Flow.drop_src, drop_reason say why

# Flow.drop_src: the vocabulary of Flow.drop_reason (with P_DROP).
cdef enum:
    DROP_SFLOW = 0           # sflow_drops.txt drop_reason (flow sample output format 1, format 5 sample)
    DROP_FWDSTATUS = 1       # IPFIX/v9 forwardingStatus (89), status Dropped: the whole byte (128-191)

# Flow.if_internal bits: an sFlow sample's input / output interface is the agent itself
# (format 0, value 0x3FFFFFFF; expanded 0xFFFFFFFF), published as InIfInternal / OutIfInternal.
cdef enum:
    IF_INTERNAL_IN = 1
    IF_INTERNAL_OUT = 2

# Flow.noaddr bits: a v9/IPFIX template with one address of the pair and not the other (the
# missing one is omitted from the output, not written as 0.0.0.0 or ::), 0 for v5 and sFlow; a
# tunnel endpoint with no value (see tun_noaddr), omitted the same way.
cdef enum:
    NOADDR_SRC = 1
    NOADDR_DST = 2
    NOADDR_TUNSRC = 4
    NOADDR_TUNDST = 8

# TCP flag bits (RFC 793 / RFC 3168), the order NetObserv prints them in.
cdef enum:
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_PSH = 0x08
    TCP_ACK = 0x10
    TCP_URG = 0x20
    TCP_ECE = 0x40
    TCP_CWR = 0x80

# Protocol of the datagram a batch came from.
cdef enum:
    PROTO_NONE = 0
    PROTO_NETFLOW1 = 1
    PROTO_NETFLOW5 = 5
    PROTO_NETFLOW7 = 7
    PROTO_NETFLOW9 = 9
    PROTO_IPFIX = 10
    PROTO_SFLOW5 = 100

# The decoder's protocol slots (ExporterState.slot_datagrams): the names its per-protocol
# counters are kept under, "unknown" for a datagram of no known version.
cdef tuple PROTO_SLOTS = ("unknown", "netflow5", "netflow9", "netflow1", "netflow7", "ipfix", "sflow5")
DEF PROTO_SLOT_COUNT = 7
