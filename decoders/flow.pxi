# The compact flow record and the batch that carries a datagram's flows.
#
# A decoder fills C structs (no per-field Python objects); strings and unknown elements are
# kept as (offset, length) references into the datagram, which the batch keeps alive. The JSON
# encoder (encode.pxi) walks the structs once, so the per-flow cost is one pass over ~200 bytes.

from libc.stdlib cimport malloc, calloc, realloc, free
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF


cdef struct Flow:
    uint64_t present          # P_* bits
    uint8_t af                # 4, 6 or 0 (no addresses, e.g. an L2-only OVS record)
    uint8_t noaddr            # NOADDR_* bits: with af (tun_af), an address (tunnel endpoint) without a value
    uint8_t src[16]
    uint8_t dst[16]
    uint8_t nh_af
    uint8_t nexthop[16]
    uint16_t sport
    uint16_t dport
    uint8_t proto
    uint8_t dscp
    uint8_t icmp_type
    uint8_t icmp_code
    uint16_t etype
    uint16_t tcp_flags
    uint64_t bytes
    uint64_t packets
    uint8_t src_mac[6]
    uint8_t dst_mac[6]
    int64_t t_start_ms
    int64_t t_end_ms
    uint32_t sampling
    int8_t direction          # exporter's view: 0 ingress, 1 egress, -1 unknown
    uint8_t duplicate         # the other-direction twin of this record was already seen
    uint8_t end_reason
    uint32_t drop_reason      # with P_DROP: the reason's code, in the drop_src vocabulary
    uint8_t drop_src          # DROP_SFLOW or DROP_FWDSTATUS
    uint8_t drop_only         # a reported drop, not traffic: Bytes/Packets only as PktDrop* (sFlow format 5)
    uint16_t drop_str_len     # sFlow 1042 extended_linux_drop_reason: the kernel's reason name,
    uint32_t drop_str_off     # in the datagram (0 length: none)
    uint16_t fwd_status       # 0x100 | forwardingStatus (89) when the record carried it
    uint8_t tun_type
    uint8_t if_internal       # sFlow: IF_INTERNAL_IN / _OUT bits, the packet's end is the agent itself
    uint32_t in_if
    uint32_t out_if
    uint16_t vlan
    uint16_t template_id
    uint32_t in_name_off      # interfaceName (IPFIX 82): first occurrence = ingress port
    uint32_t out_name_off     # second occurrence = egress port; 0 = absent (no value is at offset 0)
    uint16_t in_name_len      # 0 = absent or empty
    uint16_t out_name_len
    uint64_t tun_id
    uint8_t tun_af
    uint8_t tun_proto
    uint8_t names_learned     # NAMES_* bits: in_name_off (NAMES_IN) / out_name_off (NAMES_OUT) index
                              # FlowBatch.ifnames, a name its exporter's options data gave an interface
                              # (learned_names), not bytes of the datagram; NAMES_OWN: the record has
                              # interfaceName elements of its own (a learned name fills an empty one)
    uint8_t tun_src[16]
    uint8_t tun_dst[16]
    uint16_t tun_sport
    uint16_t tun_dport
    uint32_t src_as
    uint32_t dst_as
    uint8_t src_mask
    uint8_t dst_mask
    uint32_t msg_domain       # with P_MSG: this flow's message is not the datagram's first
    uint32_t msg_sequence
    uint32_t extra_start      # unknown elements of this record: extras[extra_start:+extra_count]
    uint32_t extra_count


cdef struct Extra:
    uint32_t pen
    uint16_t ie
    uint16_t length
    uint32_t off              # offset of the value in the datagram


# An exporter's node as the enricher's C view last answered it (encode.pxi enrich_batch), kept
# in the exporter's state: Open vSwitch sends one record a datagram, and a collector behind a
# Service takes datagrams from many nodes in turn, so a lookup a datagram is a lookup a flow.
cdef struct AgentMemo:
    unsigned long long epoch  # encode.pxi _ev_epoch (the view it came from) when filled; 0: nothing
    unsigned long long gen    # the view's generation it was filled at: the answer's validity, which
                              # encode.pxi _enrich_into compares with the view's before each flow
    PyObject* node            # the answer (borrowed, as the view's own: compared while gen is current)
    uint8_t addr[16]          # the exporter address asked (sFlow's agent address may differ
    int alen                  # from the UDP source's), alen bytes of it


cdef class FlowBatch:
    """The flows (and sFlow counter records) decoded from one datagram."""

    cdef Flow* flows
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    cdef Extra* extras
    cdef Py_ssize_t n_extras
    cdef Py_ssize_t cap_extras
    cdef readonly bytes data
    cdef readonly double recv_time
    cdef uint8_t agent[16]
    cdef uint8_t agent_af
    cdef ExporterState exporter   # its state (AgentMemo), None for a batch of no decoder's
    cdef int proto_kind
    cdef readonly uint32_t sequence
    cdef readonly uint32_t domain
    cdef readonly uint16_t port
    # counters, dropped and options made on first use (batch_counters(), ...): most datagrams
    # have none, and three containers a datagram cost as much as a small record's decode
    cdef list _counters
    cdef readonly object error
    cdef readonly int missing_template_sets
    cdef dict _dropped
    cdef list _options
    # interface names learned from options data its flows carry (bytes: owned references, given
    # back with the batch): what Flow.in_name_off / out_name_off index with NAMES_IN / NAMES_OUT
    # (learned_names); a C array, as a list's growth cost learned_names ~50 instructions a record
    cdef PyObject** ifnames
    cdef Py_ssize_t n_ifnames
    cdef Py_ssize_t cap_ifnames
    # What moves the exporter's times onto the collector's clock to pick the holder of a reused
    # address (the enrichment's flow start, never the published times): the exporter's clock
    # offset (clock_shift) when beyond CLOCK_TOLERANCE_MS, else 0.
    cdef int64_t clock_shift_ms

    def __cinit__(self):
        self.flows = NULL
        self.extras = NULL
        self.ifnames = NULL
        self.n = self.cap = self.n_extras = self.cap_extras = self.n_ifnames = self.cap_ifnames = 0
        self.error = None

    def __dealloc__(self):
        cdef Py_ssize_t i
        free(self.flows)
        free(self.extras)
        for i in range(self.n_ifnames):
            Py_XDECREF(self.ifnames[i])
        free(self.ifnames)

    def __len__(self):
        return self.n

    @property
    def counters(self):
        """sFlow counter records (dicts) the datagram held."""
        return self._counters if self._counters is not None else []

    @property
    def dropped(self):
        """Flows decoded and dropped, by reason (duplicate with dedup)."""
        return self._dropped if self._dropped is not None else {}

    @property
    def options(self):
        """Options data records as dicts (with DecoderConfig.keep_options)."""
        return self._options if self._options is not None else []

    @property
    def protocol(self):
        return PROTOCOL_NAMES.get(self.proto_kind, "")

    @property
    def agent_ip(self):
        if not self.agent_af:
            return ""
        return addr_text(<bytes>self.agent[:addr_len(self.agent_af)])

    def to_json(self, enricher=None):
        """One JSON object (bytes) per flow, NetObserv field names."""
        return encode_batch(self, enricher)

    def to_dicts(self, enricher=None):
        """The same flows as dicts: parsed from to_json so there is one source of truth."""
        return [orjson.loads(j) for j in encode_batch(self, enricher)]


PROTOCOL_NAMES = {PROTO_NETFLOW1: "netflow1", PROTO_NETFLOW5: "netflow5", PROTO_NETFLOW7: "netflow7",
                  PROTO_NETFLOW9: "netflow9", PROTO_IPFIX: "ipfix", PROTO_SFLOW5: "sflow5"}


cdef int batch_reserve(FlowBatch b, Py_ssize_t more) except -1:
    """Room for `more` flows beyond those held, when the caller knows how many a set holds: one
    allocation of the right size (a one-record datagram's fits the allocator's small caches)."""
    cdef Py_ssize_t want = b.n + more
    cdef Flow* p
    if want <= b.cap:
        return 0
    if b.cap:
        want = max(want, b.cap * 2)
    p = <Flow*>realloc(b.flows, want * sizeof(Flow))
    if p == NULL:
        raise MemoryError()
    b.flows = p
    b.cap = want
    return 0


cdef Flow* batch_new_flow(FlowBatch b) except NULL:
    """Append a zeroed flow to the batch and return it."""
    cdef Py_ssize_t newcap
    cdef Flow* p
    if b.n == b.cap:
        newcap = 32 if b.cap == 0 else b.cap * 2
        p = <Flow*>realloc(b.flows, newcap * sizeof(Flow))
        if p == NULL:
            raise MemoryError()
        b.flows = p
        b.cap = newcap
    p = &b.flows[b.n]
    memset(p, 0, sizeof(Flow))
    p.direction = -1
    p.extra_start = <uint32_t>b.n_extras
    b.n += 1
    return p


cdef inline void batch_drop_last(FlowBatch b) noexcept:
    """Forget the flow most recently appended (a record that turned out not to be a flow)."""
    if b.n > 0:
        b.n_extras = b.flows[b.n - 1].extra_start
        b.n -= 1


cdef int batch_add_extra(FlowBatch b, Flow* f, uint32_t pen, uint16_t ie, Py_ssize_t off, Py_ssize_t length) except -1:
    """Keep an element flowscope has no name for, as a reference into the datagram."""
    cdef Py_ssize_t newcap
    cdef Extra* p
    if b.n_extras == b.cap_extras:
        newcap = 64 if b.cap_extras == 0 else b.cap_extras * 2
        p = <Extra*>realloc(b.extras, newcap * sizeof(Extra))
        if p == NULL:
            raise MemoryError()
        b.extras = p
        b.cap_extras = newcap
    p = &b.extras[b.n_extras]
    p.pen = pen
    p.ie = ie
    p.length = <uint16_t>(length if length < 0xFFFF else 0xFFFF)
    p.off = <uint32_t>off
    b.n_extras += 1
    f.extra_count += 1
    return 0


cdef void drop_extras(FlowBatch b, Flow* f, const Py_ssize_t* at, int n) noexcept:
    """Remove the flow's extras at batch indexes `at[:n]` (ascending), keeping the others' order."""
    cdef Py_ssize_t src, dst, end = b.n_extras
    cdef int k = 0
    if n == 0:
        return
    dst = at[0]
    for src in range(at[0], end):
        if k < n and src == at[k]:
            k += 1
            continue
        b.extras[dst] = b.extras[src]
        dst += 1
    b.n_extras = dst
    f.extra_count -= <uint32_t>n


cdef void scale_counts(FlowBatch b) noexcept:
    """--renormalize: a flow whose rate its exporter sent (P_SAMPLING: the v5 header's interval,
    the record's sampling elements or its options data, the sFlow sample's rate) counted sampled
    packets: its Bytes and Packets become estimates of the totals, times the rate (as pmacct's
    renormalize does; 2^64-1 where the product overflows). A rate flowscope's own flags gave is no
    such statement (Open vSwitch, what --default-sampling is for, already counts each sampled
    packet as rate packets), and a drop event (sFlow format 5) has no rate."""
    cdef Py_ssize_t i
    cdef Flow* f
    cdef uint64_t rate
    for i in range(b.n):
        f = &b.flows[i]
        if f.present & P_SAMPLING and f.sampling > 1:
            rate = f.sampling
            f.bytes = f.bytes * rate if f.bytes <= UINT64_MAX // rate else UINT64_MAX
            f.packets = f.packets * rate if f.packets <= UINT64_MAX // rate else UINT64_MAX


cdef inline bint has_ports(uint8_t proto) noexcept:
    """TCP, UDP and SCTP: the protocols whose ports a flow has (NetObserv writes SrcPort/DstPort
    for those only)."""
    return proto == 6 or proto == 17 or proto == 132


cdef inline Py_ssize_t addr_len(uint8_t af) noexcept:
    return 4 if af == 4 else (16 if af == 6 else 0)


cdef inline bint addr_zero(const uint8_t* a, uint8_t af) noexcept:
    """The unspecified address (0.0.0.0 or ::) of family af: no address."""
    cdef Py_ssize_t i
    for i in range(addr_len(af)):
        if a[i]:
            return False
    return True


cdef inline uint8_t tun_noaddr(Flow* f, int have) noexcept:
    """Flow.noaddr's tunnel bits: an endpoint of the f.tun_af family the record did not carry
    (have: 1 source, 2 destination), or that is the unspecified address, has no value. 0.0.0.0 and
    :: are never a tunnel's endpoint (RFC 1122 3.2.1.3, RFC 4291 2.5.2); OVS writes them for "not
    set" in its tunnel metadata (an egress tunnel without local_ip: the kernel picks the source
    after sampling), in IPFIX (PEN 6876) as in sFlow (1023-1026)."""
    return ((NOADDR_TUNSRC if not (have & 1) or addr_zero(f.tun_src, f.tun_af) else 0)
            | (NOADDR_TUNDST if not (have & 2) or addr_zero(f.tun_dst, f.tun_af) else 0))
