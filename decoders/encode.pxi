# JSON encoding of a batch: NetObserv field names, written byte by byte into one reused buffer.
#
# orjson would need a dict per flow; building that dict costs more than writing the JSON. The
# field -> key table below is the single place output names live (README "Output" mirrors it).
# Keys are written only when the record carried a value (fields with no value are omitted).

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.stdio cimport snprintf
from libc.string cimport strlen

import orjson


cdef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef Buf _out           # the encoder's reused output buffer (the GIL serialises its users)
_out.p = NULL
_out.n = 0
_out.cap = 0

cdef const char* HEXDIGITS = b"0123456789abcdef"


cdef int buf_grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* p
    cap = b.cap * 2 if b.cap else 4096
    while cap < b.n + extra:
        cap *= 2
    p = <char*>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int buf_reserve(Buf* b, Py_ssize_t extra) except -1:
    if b.n + extra > b.cap:
        return buf_grow(b, extra)
    return 0


cdef inline int buf_put(Buf* b, const char* s, Py_ssize_t n) except -1:
    buf_reserve(b, n)
    memcpy(b.p + b.n, s, n)
    b.n += n
    return 0


cdef inline int buf_lit(Buf* b, bytes s) except -1:
    return buf_put(b, PyBytes_AS_STRING(s), len(s))


cdef const char* DIGITS2 = (b"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                            b"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                            b"8081828384858687888990919293949596979899")


cdef inline void put8(char* p, uint32_t v) noexcept:
    # Exactly 8 digits (leading zeros) of v < 10**8: one split into two 4-digit halves whose
    # 2-digit lookups are independent, instead of a serial divide-by-100 chain.
    cdef uint32_t hi = v // 10000
    cdef uint32_t lo = v - hi * 10000
    cdef uint32_t a = hi // 100
    cdef uint32_t c = lo // 100
    memcpy(p, DIGITS2 + 2 * a, 2)
    memcpy(p + 2, DIGITS2 + 2 * (hi - a * 100), 2)
    memcpy(p + 4, DIGITS2 + 2 * c, 2)
    memcpy(p + 6, DIGITS2 + 2 * (lo - c * 100), 2)


cdef inline int ndigits8(uint32_t v) noexcept:
    # Decimal digits of 0 < v < 10**8.
    if v < 10000:
        return 1 + <int>(v >= 10) + <int>(v >= 100) + <int>(v >= 1000)
    return 5 + <int>(v >= 100000) + <int>(v >= 1000000) + <int>(v >= 10000000)


cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define FS_LITTLE_ENDIAN 1
    #else
    #define FS_LITTLE_ENDIAN 0
    #endif
    """
    bint FS_LITTLE_ENDIAN


cdef inline char* put_head(char* p, uint32_t v) noexcept:
    # v < 10**8 without leading zeros; returns the end. p must have 8 writable bytes: on
    # little-endian machines the zero-padded 8 digits are loaded as one word, shifted past the
    # leading zeros and stored whole (a variable-length memcpy is a libc call per integer).
    cdef char tmp[8]
    cdef uint64_t w
    cdef int n
    if v < 100:
        if v < 10:
            p[0] = <char>(48 + v)
            return p + 1
        memcpy(p, DIGITS2 + 2 * v, 2)
        return p + 2
    n = ndigits8(v)
    put8(tmp, v)
    if FS_LITTLE_ENDIAN:
        memcpy(&w, tmp, 8)
        w >>= 8 * (8 - n)
        memcpy(p, &w, 8)
    else:
        memcpy(p, tmp + 8 - n, n)
    return p + n


cdef inline int buf_uint(Buf* b, uint64_t v) except -1:
    """Decimal text of v, written in place. The new length comes back as uint_at's result and is
    stored here, in the caller: the caller's next write reads it from a register instead of
    loading it back from memory right after the call (perf, thirty-fourth session: with the
    buffer in a register the callee leaves alone, those loads took 80 ns a flow, a sixth of the
    plain pipeline loop, depending only on GCC's register allocation in encode_flow)."""
    if b.n + 20 > b.cap:
        buf_grow(b, 20)
    b.n = uint_at(b.p, b.n, v)
    return 0


cdef Py_ssize_t uint_at(char* base, Py_ssize_t n, uint64_t v) noexcept:
    """Decimal text of v at base + n; the length after it (at most 20 bytes: put_head may store
    8 bytes from where it starts, and the integer's tail groups follow it)."""
    cdef char* p = base + n
    cdef uint64_t hi
    cdef uint32_t top, mid
    if v < 100000000ULL:
        p = put_head(p, <uint32_t>v)
    elif v < 10000000000000000ULL:
        hi = v // 100000000ULL
        p = put_head(p, <uint32_t>hi)
        put8(p, <uint32_t>(v - hi * 100000000ULL))
        p += 8
    else:
        hi = v // 100000000ULL
        top = <uint32_t>(hi // 100000000ULL)
        mid = <uint32_t>(hi - <uint64_t>top * 100000000ULL)
        p = put_head(p, top)
        put8(p, mid)
        put8(p + 8, <uint32_t>(v - hi * 100000000ULL))
        p += 16
    return p - base


cdef int buf_int(Buf* b, int64_t v) except -1:
    if v < 0:
        buf_put(b, "-", 1)
        return buf_uint(b, <uint64_t>0 - <uint64_t>v)  # no signed overflow at INT64_MIN
    return buf_uint(b, <uint64_t>v)


def addr_text(bytes raw not None):
    """A 4- or 16-byte address as the encoder writes an exporter's (RFC 5952; IPv4-mapped as
    ::ffff:a.b.c.d): one spelling for AgentIP in flows and counter records and for exporter keys
    (a flow's own addresses write a mapped one as its dotted quad: buf_ip)."""
    cdef uint8_t a[16]
    cdef Py_ssize_t n = len(raw)
    if n != 4 and n != 16:
        raise ValueError(f"an address is 4 or 16 bytes, not {n}")
    memcpy(a, PyBytes_AS_STRING(raw), n)
    _out.n = 0
    buf_ip(&_out, 4 if n == 4 else 6, a, False)
    return PyBytes_FromStringAndSize(_out.p + 1, _out.n - 2).decode("ascii")   # without the quotes


# ,"TimeReceived":<seconds> as last written: every flow of a datagram (and of the second) has
# the same, so it is formatted once and copied.
cdef int64_t _tr_value = -1
cdef char _tr_text[48]
cdef Py_ssize_t _tr_len = 0


cdef inline int put_time_received(Buf* b, int64_t v) except -1:
    global _tr_value, _tr_len
    cdef Py_ssize_t start
    if v != _tr_value:
        start = b.n
        buf_put(b, ",\"TimeReceived\":", 16)
        buf_int(b, v)
        _tr_len = b.n - start
        memcpy(_tr_text, b.p + start, _tr_len)
        _tr_value = v
        return 0
    return buf_put(b, _tr_text, _tr_len)


# Each byte value's decimal text and a dot, in 4-byte slots ("7.", "42.", "255."), with the
# text's length: an IPv4 address is four fixed-size copies, not four integer conversions.
cdef char OCTET_TEXT[1024]
cdef uint8_t OCTET_LEN[256]


def _octet_table() -> None:
    cdef int i
    cdef bytes t
    for i in range(256):
        t = str(i).encode() + b"."
        memcpy(OCTET_TEXT + 4 * i, PyBytes_AS_STRING(t), len(t))
        OCTET_LEN[i] = <uint8_t>len(t)


_octet_table()


cdef inline char* put_ipv4(char* p, const uint8_t* a) noexcept:
    # "a.b.c.d" at p, returning its end; p needs 16 writable bytes (each copy stores 4).
    memcpy(p, OCTET_TEXT + 4 * a[0], 4)
    p += OCTET_LEN[a[0]]
    memcpy(p, OCTET_TEXT + 4 * a[1], 4)
    p += OCTET_LEN[a[1]]
    memcpy(p, OCTET_TEXT + 4 * a[2], 4)
    p += OCTET_LEN[a[2]]
    memcpy(p, OCTET_TEXT + 4 * a[3], 4)
    return p + OCTET_LEN[a[3]] - 1     # without the last dot


cdef int buf_ip(Buf* b, uint8_t af, const uint8_t* a, bint mapped_as_v4) except -1:
    """IPv4 dotted quad or RFC 5952 IPv6 text, quoted. An IPv4-mapped address (::ffff:a.b.c.d)
    with mapped_as_v4 is written as its dotted quad, as NetObserv writes it (Go's net.IP.String):
    the flow's address fields (SrcAddr, DstAddr, NextHop, Tunnel*Addr) and the conversation key
    read from them; exporter names (AgentIP, addr_text) keep the mapped form, the receiver's."""
    cdef int i, best_start = -1, best_len = 0, run_start = -1, run_len = 0
    cdef uint16_t g
    cdef char tmp[64]
    cdef int n
    cdef char* p
    if af == 4:
        buf_reserve(b, 18)
        p = b.p + b.n
        p[0] = 34
        p = put_ipv4(p + 1, a)
        p[0] = 34
        b.n = p + 1 - b.p
        return 0
    buf_put(b, "\"", 1)
    # IPv4-mapped (::ffff:a.b.c.d) is printed with the dotted tail, as inet_ntop does.
    if a[0] == 0 and a[1] == 0 and a[2] == 0 and a[3] == 0 and a[4] == 0 and a[5] == 0 and a[6] == 0 \
            and a[7] == 0 and a[8] == 0 and a[9] == 0 and a[10] == 0xFF and a[11] == 0xFF:
        buf_reserve(b, 24)
        p = b.p + b.n
        if not mapped_as_v4:
            memcpy(p, b"::ffff:", 7)
            p += 7
        p = put_ipv4(p, a + 12)
        p[0] = 34
        b.n = p + 1 - b.p
        return 0
    for i in range(8):
        if a[2 * i] == 0 and a[2 * i + 1] == 0:
            if run_start < 0:
                run_start = i
                run_len = 0
            run_len += 1
            if run_len > best_len:
                best_len = run_len
                best_start = run_start
        else:
            run_start = -1
    if best_len < 2:
        best_start = -1
    i = 0
    while i < 8:
        if i == best_start:
            buf_put(b, "::", 2)
            i += best_len
            continue
        if i and i != best_start + best_len:
            buf_put(b, ":", 1)
        g = be16(a + 2 * i)
        n = snprintf(tmp, 64, "%x", g)
        buf_put(b, tmp, n)
        i += 1
    return buf_put(b, "\"", 1)


# Each byte value's two lowercase hex digits: a byte is one 2-byte copy.
cdef char HEX2[512]


def _hex_table() -> None:
    cdef int i
    for i in range(256):
        HEX2[2 * i] = HEXDIGITS[i >> 4]
        HEX2[2 * i + 1] = HEXDIGITS[i & 15]


_hex_table()


cdef int buf_mac(Buf* b, const uint8_t* m) except -1:
    cdef char* p
    cdef int i
    buf_reserve(b, 19)
    p = b.p + b.n
    p[0] = 34  # "
    for i in range(6):
        memcpy(p + 1 + 3 * i, HEX2 + 2 * m[i], 2)
        p[3 + 3 * i] = 58  # ':' (the last one is replaced by the closing quote)
    p[18] = 34
    b.n += 19
    return 0


cdef int buf_hex(Buf* b, const uint8_t* p, Py_ssize_t n) except -1:
    cdef Py_ssize_t i
    cdef char* q
    buf_reserve(b, 2 * n + 2)
    q = b.p + b.n
    q[0] = 34
    for i in range(n):
        memcpy(q + 1 + 2 * i, HEX2 + 2 * p[i], 2)
    q[2 * n + 1] = 34
    b.n += 2 * n + 2
    return 0


cdef int buf_jstr(Buf* b, const uint8_t* p, Py_ssize_t n) except -1:
    """A JSON string from exporter bytes: trailing NULs cut, escapes, invalid UTF-8 replaced."""
    cdef Py_ssize_t i
    cdef uint8_t c
    cdef bint plain = True
    cdef bytes enc
    while n > 0 and p[n - 1] == 0:
        n -= 1
    for i in range(n):
        c = p[i]
        if c < 0x20 or c == 34 or c == 92 or c >= 0x80:
            plain = False
            break
    if plain:
        buf_reserve(b, n + 2)
        b.p[b.n] = 34
        memcpy(b.p + b.n + 1, p, n)
        b.p[b.n + 1 + n] = 34
        b.n += n + 2
        return 0
    enc = orjson.dumps((<bytes>p[:n]).decode("utf-8", "replace"))
    return buf_lit(b, enc)


cdef const char* TUNNEL_NAMES[9]
TUNNEL_NAMES[:] = [b"unknown", b"vxlan", b"gre", b"lisp", b"stt", b"ipsec_gre", b"unknown", b"geneve", b"ipip"]

# sFlow drop_reason names, as PktDropLatestDropCause publishes them: sflow.org/sflow_drops.txt
# (0-15, the ICMP unreachable codes, and 256-303) continued by hsflowd's src/sflow/sflow_drop.h
# (304-372, the Linux drop reasons it maps); codes 0-15 at 0-15, 256-372 at 16-132. The spec's
# "dst_host_tos_unreacheable" is spelled right here. hsflowd's table has two typos that reach
# the wire, dev_hdr as 33 and tc_egress as 36 (332 and 366 meant): drop_name reads those too.
DEF N_DROP_NAMES = 133
cdef const char* DROP_NAMES[N_DROP_NAMES]
DROP_NAMES[:] = [
    b"net_unreachable", b"host_unreachable", b"protocol_unreachable", b"port_unreachable", b"frag_needed",
    b"src_route_failed", b"dst_net_unknown", b"dst_host_unknown", b"src_host_isolated",
    b"dst_net_prohibited", b"dst_host_prohibited", b"dst_net_tos_unreachable", b"dst_host_tos_unreachable",
    b"comm_admin_prohibited", b"host_precedence_violation", b"precedence_cutoff", b"unknown",
    b"ttl_exceeded", b"acl", b"no_buffer_space", b"red", b"traffic_shaping", b"pkt_too_big",
    b"src_mac_is_multicast", b"vlan_tag_mismatch", b"ingress_vlan_filter", b"ingress_spanning_tree_filter",
    b"port_list_is_empty", b"port_loopback_filter", b"blackhole_route", b"non_ip", b"uc_dip_over_mc_dmac",
    b"dip_is_loopback_address", b"sip_is_mc", b"sip_is_loopback_address", b"ip_header_corrupted",
    b"ipv4_sip_is_limited_bc", b"ipv6_mc_dip_reserved_scope", b"ipv6_mc_dip_interface_local_scope",
    b"unresolved_neigh", b"mc_reverse_path_forwarding", b"non_routable_packet", b"decap_error",
    b"overlay_smac_is_mc", b"unknown_l2", b"unknown_l3", b"unknown_l3_exception", b"unknown_buffer",
    b"unknown_tunnel", b"unknown_l4", b"sip_is_unspecified", b"mlag_port_isolation",
    b"blackhole_arp_neigh", b"src_mac_is_dmac", b"dmac_is_reserved", b"sip_is_class_e",
    b"mc_dmac_mismatch", b"sip_is_dip", b"dip_is_local_network", b"dip_is_link_local",
    b"overlay_smac_is_dmac", b"egress_vlan_filter", b"uc_reverse_path_forwarding", b"split_horizon",
    b"locked_port", b"dmac_filter", b"blackhole_nexthop", b"vxlan_parsing", b"llc_snap_parsing",
    b"vlan_parsing", b"pppoe_ppp_parsing", b"mpls_parsing", b"arp_parsing", b"ip_1_parsing",
    b"ip_n_parsing", b"gre_parsing", b"udp_parsing", b"tcp_parsing", b"ipsec_parsing", b"sctp_parsing",
    b"dccp_parsing", b"gtp_parsing", b"esp_parsing", b"unknown_parsing", b"pkt_too_small",
    b"unhandled_proto", b"ipv6disabled", b"invalid_proto", b"ip_noproto", b"skb_csum", b"skb_ucopy_fault",
    b"dev_ready", b"dev_hdr", b"dup_frag", b"skb_gso_seg", b"reverse_path_forwarding", b"icmp_parsing",
    b"tcp_md5notfound", b"tcp_md5unexpected", b"tcp_md5failure", b"tcp_flags", b"tcp_zerowindow",
    b"tcp_old_data", b"tcp_overwindow", b"tcp_ofomerge", b"tcp_rfc7323_paws", b"tcp_invalid_sequence",
    b"tcp_reset", b"tcp_invalid_syn", b"tcp_close", b"tcp_fastopen", b"tcp_old_ack", b"tcp_too_old_ack",
    b"tcp_ack_unsent_data", b"tcp_ofo_queue_prune", b"tcp_ofo_drop", b"tcp_minttl", b"ipv6_bad_exthdr",
    b"ipv6_ndisc_frag", b"ipv6_ndisc_hop_limit", b"ipv6_ndisc_bad_code", b"ipv6_ndisc_bad_options",
    b"ipv6_ndisc_ns_otherhost", b"tap_filter", b"tap_txfilter", b"tc_ingress", b"tc_egress", b"xdp",
    b"cpu_backlog", b"bpf_cgroup_egress", b"xfrm_policy", b"socket_filter", b"bgp_flowspec",
]

# forwardingStatus (IPFIX 89) reason codes of status Dropped (128-143), IANA's "Forwarding Status"
# registry, at 0-15.
cdef const char* FWD_DROP_NAMES[16]
FWD_DROP_NAMES[:] = [
    b"unknown", b"acl_deny", b"acl_drop", b"unroutable", b"adjacency", b"fragmentation_and_df_set",
    b"bad_header_checksum", b"bad_total_length", b"bad_header_length", b"bad_ttl", b"policer", b"wred",
    b"rpf", b"for_us", b"bad_output_interface", b"hardware",
]


cdef inline const char* drop_name(uint8_t src, uint32_t reason) noexcept nogil:
    """The name of a drop reason in its vocabulary (Flow.drop_src), or NULL for a code not listed."""
    if src == DROP_FWDSTATUS:
        return FWD_DROP_NAMES[reason - 128] if 128 <= reason < 144 else NULL
    if reason < 16:
        return DROP_NAMES[reason]
    if 256 <= reason < 256 + N_DROP_NAMES - 16:
        return DROP_NAMES[reason - 240]
    if reason == 33:
        return DROP_NAMES[332 - 240]
    if reason == 36:
        return DROP_NAMES[366 - 240]
    return NULL


cdef const char* FLAG_NAMES[8]
FLAG_NAMES[:] = [b"FIN", b"SYN", b"RST", b"PSH", b"ACK", b"URG", b"ECE", b"CWR"]


# ---------------------------------------------------------------- enrichment in C
#
# An enricher with a C view (enrich._fast.Reader.c_api: a capsule pointing at its EnrichView,
# enrich/view.pxd) is read in place: the cache's hit path is inlined here, only a miss calls the
# reader, and the answer is three pre-encoded texts (source part and destination part, held in
# the cache's slots, and a borrowed tail) copied into the output. Other enrichers are called
# through the Python contract (docs/INTERNALS.md).

from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid

from enrich.view cimport (VIEW_CAPSULE, EnrichParts, EnrichSlot, EnrichView, view_addr_eq, view_agent, view_hash,
                          view_parts_in, view_prefetch_parts, view_prefetch_parts_in, view_prefetch_set, view_set)

cdef EnrichView* _ev = NULL
cdef object _ev_owner = None     # the enricher whose capsule _ev came from (kept alive)
cdef unsigned long long _ev_epoch = 0  # moved whenever _ev changes: AgentMemo answers of another view are stale

# Per batch (enrich_batch): the exporter's address as the index sees it and its node.
cdef const uint8_t* _ag = NULL
cdef int _aglen = 0
cdef PyObject* _ag_node = NULL   # borrowed from the index (interned), valid for _ag_gen
cdef unsigned long long _ag_gen = 0
cdef bint _ag_ok = False         # _ag_node looked up (False: the lookup failed; flows take enrich())
cdef AgentMemo* _ag_memo = NULL  # the batch's exporter's memo (FlowBatch.exporter), NULL: none

cdef Flow* _ev_first = NULL     # the batch's first flow to encode (enrich_batch's start)
# ... and the cache sets of its flows' addresses from there (source's, destination's: flow k
# from _ev_first at 2k), hashed once by enrich_batch for the prefetches and the lookups: each
# address was hashed up to three times (the batch's prefetch, the parts' prefetch a flow ahead,
# the lookup), ~20 instructions a flow. Flows past SETS_AHEAD (datagrams of more records than
# that) are hashed where they are used.
DEF SETS_AHEAD = 64              # (more prefetched at once would leave L1 before they are used)
cdef EnrichSlot* _sets[2 * SETS_AHEAD]
cdef Py_ssize_t _nsets = 0       # flows from _ev_first with sets in _sets
cdef bint _last_counted = False  # enrich_into's last flow was counted in the view (snapshot below)
# The view's eight tails (EnrichView.tails, by EnrichParts.ti) copied at attach time into slots of
# TAIL_PAD bytes, so that a flow's tail is one fixed-size copy the compiler writes inline (a libc
# call for ~40 bytes, with a reference taken and dropped around it, cost ~20 instructions a
# flow); only when every tail fits: with a --cluster-name the longest ones (infra, FlowDirection
# 2: 42 bytes without it) pass 64, and the byte strings are copied as they are.
DEF TAIL_PAD = 64
cdef char _tail_pad[8][TAIL_PAD]
cdef uint8_t _tail_len[8]
cdef bint _tails_padded = False
cdef long long _last_counts[8]   # the view's counts before that flow (EnrichView.counts)


cdef const uint8_t* V4MAPPED = b"\0\0\0\0\0\0\0\0\0\0\xff\xff"


cdef inline int v4mapped(const uint8_t* a) noexcept:
    """12 when a (16 bytes) is an IPv4-mapped IPv6 address (::ffff:a.b.c.d), else 0."""
    return 12 if memcmp(a, V4MAPPED, 12) == 0 else 0


cdef inline bint enrich_c(object enricher) noexcept:
    # (_ev_owner is None or has set _ev, enrich_attach: where the caller has tested enricher
    # against None already, as encode_flow has, the compiler drops the second test)
    return enricher is not None and enricher is _ev_owner


cdef void enrich_agent_node() noexcept:
    """The exporter's node from the view, kept in the batch's exporter's memo when it has one
    (only a successful answer: a failed one is asked again)."""
    global _ag_node, _ag_gen, _ag_ok
    cdef int failed = 0
    cdef AgentMemo* m = _ag_memo
    _ag_node = view_agent(_ev, _ag, _aglen, &failed)
    _ag_gen = _ev.generation
    _ag_ok = not failed
    if m != NULL:
        m.epoch = 0
        if _ag_ok and (_aglen == 4 or _aglen == 16):
            m.epoch = _ev_epoch
            m.gen = _ag_gen
            m.node = _ag_node
            m.alen = _aglen
            memcpy(m.addr, _ag, _aglen)


cdef int enrich_attach(object enricher) except -1:
    """Take the enricher's C view when it has one (a new enricher: rare, so out of enrich_batch,
    which then holds no Python object of its own to release at every call)."""
    global _ev, _ev_owner, _ev_epoch, _tails_padded
    cdef int i
    cdef PyObject* t
    _ev = NULL
    _ev_owner = None
    _ev_epoch += 1
    _tails_padded = False
    getter = getattr(enricher, "c_api", None)
    if getter is not None:
        cap = getter()
        if PyCapsule_IsValid(cap, VIEW_CAPSULE):
            _ev = <EnrichView*>PyCapsule_GetPointer(cap, VIEW_CAPSULE)
            _ev_owner = enricher
            _tails_padded = True
            for i in range(8):
                t = _ev.tails[i // 4][i % 4]
                if not PyBytes_Check(<object>t) or PyBytes_GET_SIZE(<object>t) > TAIL_PAD:
                    _tails_padded = False
                    break
                memset(_tail_pad[i], 0, TAIL_PAD)
                memcpy(_tail_pad[i], PyBytes_AS_STRING(<object>t), PyBytes_GET_SIZE(<object>t))
                _tail_len[i] = <uint8_t>PyBytes_GET_SIZE(<object>t)
    return 0


# enrich_attach through a pointer: called from one place, GCC inlined it into enrich_batch, whose
# every call then saved and restored six registers for code that runs once an enricher
cdef int (*_attach)(object) except -1
_attach = enrich_attach


cdef int enrich_batch(FlowBatch bt, Py_ssize_t start, object enricher) except -1:
    """Before encoding a batch's flows from `start`: use the enricher's C view when it has one,
    take the exporter's node (from its memo while the view has not moved, else looked up), and
    start loading the cache sets the first flows' lookups will read (so that those loads overlap
    instead of stalling one by one), keeping them in _sets."""
    global _ag, _aglen, _ev_first, _ag_memo, _ag_node, _ag_gen, _ag_ok, _nsets
    cdef Py_ssize_t i, n
    cdef AgentMemo* m
    if enricher is None:
        return 0
    if enricher is not _ev_owner:
        _attach(enricher)
    _ag = bt.agent
    _aglen = addr_len(bt.agent_af)
    if _aglen == 16 and v4mapped(_ag):
        _ag += 12       # an IPv4-mapped agent address (sFlow's) is its IPv4 address to the index too
        _aglen = 4
    _ev_first = NULL
    _ag_memo = NULL
    _nsets = 0
    if _ev == NULL:
        return 0
    _ev_first = &bt.flows[start]
    m = &bt.exporter.agent_memo if bt.exporter is not None else NULL
    _ag_memo = m
    # The memo answers for this view and this address; it carries the generation its answer is
    # valid for, which _enrich_into compares with the view's before every flow (every change of
    # the index moves it: enrich.index bumps it after each store), asking again when they differ.
    if m != NULL and m.epoch == _ev_epoch and m.alen == _aglen and view_addr_eq(m.addr, _ag, _aglen):
        _ag_node = m.node
        _ag_gen = m.gen
        _ag_ok = True
    else:
        enrich_agent_node()
    n = min(bt.n - start, SETS_AHEAD)
    if n <= 0:
        return 0
    _nsets = n
    flow_sets(_ev_first, _sets)   # (the first apart: one record a datagram, Open vSwitch's, runs no loop)
    for i in range(1, n):
        flow_sets(_ev_first + i, _sets + 2 * i)
    return 0


cdef inline void flow_sets(Flow* f, EnrichSlot** out) noexcept:
    """The flow's two cache sets into out[0] and out[1], their loads started (a flow without
    addresses: never read, a valid set all the same)."""
    cdef EnrichSlot* ss
    cdef EnrichSlot* ds
    if f.af == 4:    # (constant lengths: the hashes' branch folds)
        ss, ds = view_set(_ev, view_hash(f.src, 4)), view_set(_ev, view_hash(f.dst, 4))
    elif f.af == 6:
        ss, ds = view_set(_ev, view_hash(f.src, 16)), view_set(_ev, view_hash(f.dst, 16))
    else:
        ss = ds = _ev.cache
    out[0] = ss
    out[1] = ds
    view_prefetch_set(ss)
    view_prefetch_set(ds)


cdef void enrich_uncount() noexcept:
    """The flow enrich_into last wrote is thrown away (it did not fit the batch and will be
    encoded again): take back the counts its lookups added, in the view or through enrich()."""
    global _last_counted
    if _last_counted and _ev != NULL:
        memcpy(_ev.counts, _last_counts, sizeof(_last_counts))
    _last_counted = False


cdef inline int enrich_into(Buf* o, FlowBatch bt, Flow* f, object enricher, int64_t t) except -1:
    """The flow's identity fragment, through the C view or the enricher's enrich(); the view's
    counts before it are kept for enrich_uncount()."""
    global _last_counted
    _last_counted = enrich_c(enricher)
    if _last_counted:
        memcpy(_last_counts, _ev.counts, sizeof(_last_counts))
    return _enrich_into(o, bt, f, enricher, t)


cdef int enrich_py(Buf* o, object enricher, bytes src, bytes dst, Flow* f, int64_t t) except -1:
    """The Python contract (docs/INTERNALS.md): one enrich() call, its fragment appended."""
    cdef bytes frag = enricher.enrich(src, dst, (<bytes>_ag[:_aglen]), t, f.direction)
    if frag:
        buf_lit(o, frag)
    return 0


cdef int _enrich_into(Buf* o, FlowBatch bt, Flow* f, object enricher, int64_t t) except -1:
    cdef EnrichParts e
    cdef Py_ssize_t lt
    cdef char* p
    cdef int ms, md, alen, r
    cdef Py_ssize_t k
    cdef EnrichSlot* ss
    cdef EnrichSlot* ds
    if f.af == 6:
        # IPv4-mapped addresses (::ffff:a.b.c.d) are their IPv4 addresses to the index (as
        # NetObserv reads them); the published text stays as exported
        ms, md = v4mapped(f.src), v4mapped(f.dst)
        if ms or md:
            return enrich_py(o, enricher, b"" if f.noaddr & NOADDR_SRC else (<bytes>f.src[ms:16]),
                             b"" if f.noaddr & NOADDR_DST else (<bytes>f.dst[md:16]), f, t)
    if f.noaddr & (NOADDR_SRC | NOADDR_DST):
        # One address absent: it is b"" to the enricher (the contract's "absent"), never
        # looked up as 0.0.0.0 or ::. Rare (a template with one address), so the Python call.
        return enrich_py(o, enricher, b"" if f.noaddr & NOADDR_SRC else (<bytes>f.src[:addr_len(f.af)]),
                         b"" if f.noaddr & NOADDR_DST else (<bytes>f.dst[:addr_len(f.af)]), f, t)
    alen = <int>addr_len(f.af)
    if enrich_c(enricher) and alen:
        if _ev.generation != _ag_gen:   # the index moved (between batches, or a miss let a writer in)
            enrich_agent_node()
        k = f - _ev_first    # (its place in _sets)
        if <size_t>k < <size_t>_nsets:
            ss, ds = _sets[2 * k], _sets[2 * k + 1]
        else:
            ss, ds = view_set(_ev, view_hash(f.src, alen)), view_set(_ev, view_hash(f.dst, alen))
        if not _ag_ok:
            r = -1
        elif alen == 4:    # (a constant length folds the lookups' compares: ~10 instructions a flow)
            r = view_parts_in(_ev, ss, ds, f.src, f.dst, 4, _ag_node, t, f.direction, &e)
        else:
            r = view_parts_in(_ev, ss, ds, f.src, f.dst, 16, _ag_node, t, f.direction, &e)
        if r == 0:
            if _tails_padded:
                buf_reserve(o, e.la + e.lb + TAIL_PAD)
                p = o.p + o.n
                if e.la:
                    memcpy(p, e.a, e.la)
                p += e.la
                if e.lb:
                    memcpy(p, e.b, e.lb)
                p += e.lb
                memcpy(p, _tail_pad[e.ti], TAIL_PAD)
                o.n = p + _tail_len[e.ti] - o.p
                return 0
            lt = PyBytes_GET_SIZE(<bytes>e.tail)
            buf_reserve(o, e.la + e.lb + lt)
            p = o.p + o.n
            if e.la:
                memcpy(p, e.a, e.la)
            if e.lb:
                memcpy(p + e.la, e.b, e.lb)
            memcpy(p + e.la + e.lb, PyBytes_AS_STRING(<bytes>e.tail), lt)
            o.n += e.la + e.lb + lt
            return 0
    # the Python contract (an error in the C view is raised by the reader's enrich())
    return enrich_py(o, enricher, (<bytes>f.src[:addr_len(f.af)]), (<bytes>f.dst[:addr_len(f.af)]), f, t)


cdef inline int64_t lookup_ms(FlowBatch bt, Flow* f) noexcept:
    """The flow start that picks the holder of a reused address (the enricher's t): the exported
    start moved onto the collector's clock when the exporter's is off (FlowBatch.clock_shift_ms),
    and never after the datagram was received; the receive time when the flow has no start."""
    cdef int64_t recv_ms = <int64_t>(bt.recv_time * 1000)
    cdef int64_t t
    if not f.present & P_TSTART:
        return recv_ms
    t = f.t_start_ms + bt.clock_shift_ms
    return t if t < recv_ms else recv_ms


# Repeated unknown elements of one flow (encode_flow groups them under one key). Up to
# EXTRA_SCAN_MAX of them (every real record: OVS sends two) pairs are compared; beyond, a
# datagram made of thousands of unknown records in one sFlow sample, or IPFIX records of
# hundreds of unknown fields, would cost the square of that per flow (0.1 s for one 64 KB
# datagram), so link_extras() chains equal keys through a hash table once: linear.
cdef int32_t* _xnext = NULL      # per extra of the flow: the next extra with its key, -1: none
cdef uint8_t* _xlater = NULL     # per extra: 1 when an earlier extra has its key
cdef int32_t* _xtab = NULL       # open addressing: 1 + the latest extra with a key, 0: empty
cdef Py_ssize_t _xcap = 0        # extras the three arrays have room for (the table twice that)


cdef int link_extras(FlowBatch bt, Flow* f) except -1:
    """Fill _xnext and _xlater for the flow's extras (see above)."""
    global _xnext, _xlater, _xtab, _xcap
    cdef Py_ssize_t k = f.extra_count, i, cap
    cdef uint32_t mask, h, t
    cdef Extra* x
    cdef Extra* y
    if k > _xcap:
        cap = 64
        while cap < k:
            cap *= 2
        free(_xnext); free(_xlater); free(_xtab)
        _xnext = <int32_t*>malloc(cap * sizeof(int32_t))
        _xlater = <uint8_t*>malloc(cap)
        _xtab = <int32_t*>malloc(2 * cap * sizeof(int32_t))
        if _xnext == NULL or _xlater == NULL or _xtab == NULL:
            free(_xnext); free(_xlater); free(_xtab)
            _xnext = NULL; _xlater = NULL; _xtab = NULL
            _xcap = 0
            raise MemoryError()
        _xcap = cap
    mask = 1
    while mask < 2 * k:
        mask <<= 1
    mask -= 1
    memset(_xtab, 0, (mask + 1) * sizeof(int32_t))
    for i in range(k):
        x = &bt.extras[f.extra_start + i]
        _xnext[i] = -1
        _xlater[i] = 0
        h = ((x.pen * <uint32_t>0x9E3779B1u) ^ x.ie) * <uint32_t>0x85EBCA6Bu
        h = (h ^ (h >> 15)) & mask
        while True:
            t = <uint32_t>_xtab[h]
            if t == 0:
                _xtab[h] = <int32_t>(i + 1)
                break
            y = &bt.extras[f.extra_start + t - 1]
            if y.ie == x.ie and y.pen == x.pen:
                _xnext[t - 1] = <int32_t>i
                _xlater[i] = 1
                _xtab[h] = <int32_t>(i + 1)
                break
            h = (h + 1) & mask
    return 0


cdef int encode_extras(Buf* o, FlowBatch bt, Flow* f, const uint8_t* data) except -1:
    """The flow's unknown elements, `"ie<id>":"<hex>"` each. An element repeated in the record
    (Cisco SRv6, Juniper, zero-length padding fields): one key whose value is the array of its
    occurrences in order, never a repeated key (a JSON parser would keep only the last).
    (A function of its own: inside encode_flow it made GCC inline less of the rest, ~75
    instructions more per flow.)"""
    cdef int i, j, k
    cdef bint linked
    cdef Extra* x
    cdef Extra* y
    linked = f.extra_count > EXTRA_SCAN_MAX and link_extras(bt, f) == 0
    k = f.extra_count
    for i in range(k):
        x = &bt.extras[f.extra_start + i]
        # j: the next extra with x's key (-1: none); an x whose key came earlier is done.
        # (Scanned inline below EXTRA_SCAN_MAX: helper calls cost ~40 instructions per extra.)
        if linked:
            if _xlater[i]:
                continue
            j = _xnext[i]
        else:
            j = i - 1
            while j >= 0 and not (bt.extras[f.extra_start + j].ie == x.ie and bt.extras[f.extra_start + j].pen == x.pen):
                j -= 1
            if j >= 0:
                continue
            j = i + 1
            while j < k and not (bt.extras[f.extra_start + j].ie == x.ie and bt.extras[f.extra_start + j].pen == x.pen):
                j += 1
            if j == k:
                j = -1
        buf_put(o, ",\"ie", 4)
        if x.pen:
            buf_uint(o, x.pen)
            buf_put(o, "_", 1)
        buf_uint(o, x.ie)
        buf_put(o, "\":", 2)
        if j < 0:
            buf_hex(o, data + x.off, x.length)
            continue
        buf_put(o, "[", 1)
        buf_hex(o, data + x.off, x.length)
        while j >= 0:
            y = &bt.extras[f.extra_start + j]
            buf_put(o, ",", 1)
            buf_hex(o, data + y.off, y.length)
            if linked:
                j = _xnext[j]
            else:
                j += 1
                while j < k and not (bt.extras[f.extra_start + j].ie == x.ie and bt.extras[f.extra_start + j].pen == x.pen):
                    j += 1
                if j == k:
                    j = -1
        buf_put(o, "]", 1)
    return 0


cdef int put_if_name(Buf* o, FlowBatch bt, const uint8_t* data, uint32_t off, uint16_t n, bint learned) except -1:
    """An Interfaces entry: n bytes of the datagram at off, or with `learned` the name
    FlowBatch.ifnames holds at index off (learned_names); "" for n = 0."""
    if learned and n:
        if off >= bt.n_ifnames:     # (outside the array: the list it once was raised IndexError too)
            raise IndexError(f"learned interface name {off} of {bt.n_ifnames}")
        return buf_jstr(o, <const uint8_t*>PyBytes_AS_STRING(<object>bt.ifnames[off]), n)
    return buf_jstr(o, data + off, n)


cdef int encode_flow(Buf* o, FlowBatch bt, Flow* f, object enricher, const char* head, Py_ssize_t head_len) except -1:
    cdef int i, j
    cdef bint first
    cdef const char* name
    cdef const uint8_t* data = <const uint8_t*>PyBytes_AS_STRING(bt.data)
    cdef Flow* nx = f + 1
    cdef Py_ssize_t k
    if enricher is not None and enrich_c(enricher) and nx < bt.flows + bt.n and addr_len(nx.af):
        # the next flow's fragments start loading while this one is written (view.pxd)
        k = nx - _ev_first
        if <size_t>k < <size_t>_nsets:
            view_prefetch_parts_in(_sets[2 * k], _sets[2 * k + 1], nx.src, nx.dst, addr_len(nx.af))
        else:
            view_prefetch_parts(_ev, nx.src, nx.dst, addr_len(nx.af))
    buf_reserve(o, 1024)
    buf_put(o, head, head_len)   # {"FlowProtocol":..,"AgentIP":..: the same for the whole batch
    if f.af:
        if not f.noaddr & NOADDR_SRC:
            buf_put(o, ",\"SrcAddr\":", 11)
            buf_ip(o, f.af, f.src, True)
        if not f.noaddr & NOADDR_DST:
            buf_put(o, ",\"DstAddr\":", 11)
            buf_ip(o, f.af, f.dst, True)
    if f.present & P_SRCMAC:
        buf_put(o, ",\"SrcMac\":", 10)
        buf_mac(o, f.src_mac)
    if f.present & P_DSTMAC:
        buf_put(o, ",\"DstMac\":", 10)
        buf_mac(o, f.dst_mac)
    if f.present & P_SPORT:
        buf_put(o, ",\"SrcPort\":", 11)
        buf_uint(o, f.sport)
    if f.present & P_DPORT:
        buf_put(o, ",\"DstPort\":", 11)
        buf_uint(o, f.dport)
    if f.present & P_PROTO:
        buf_put(o, ",\"Proto\":", 9)
        buf_uint(o, f.proto)
    if f.present & P_ETYPE:
        buf_put(o, ",\"Etype\":", 9)
        buf_uint(o, f.etype)
    if f.present & P_BYTES and not f.drop_only:
        buf_put(o, ",\"Bytes\":", 9)
        buf_uint(o, f.bytes)
    if f.present & P_PACKETS and not f.drop_only:
        buf_put(o, ",\"Packets\":", 11)
        buf_uint(o, f.packets)
    if f.present & P_FLAGS and (f.proto == 6 or not f.present & P_PROTO):   # TCP's (NetObserv: TCP only)
        buf_put(o, ",\"Flags\":[", 10)
        first = True
        for i in range(8):
            if f.tcp_flags & (1 << i):
                if not first:
                    buf_put(o, ",", 1)
                first = False
                buf_put(o, "\"", 1)
                buf_put(o, FLAG_NAMES[i], 3)
                buf_put(o, "\"", 1)
        buf_put(o, "],\"TcpFlagsRaw\":", 16)
        buf_uint(o, f.tcp_flags)
    if f.present & P_DSCP:
        buf_put(o, ",\"Dscp\":", 8)
        buf_uint(o, f.dscp)
    if f.present & P_ICMP:
        buf_put(o, ",\"IcmpType\":", 12)
        buf_uint(o, f.icmp_type)
        buf_put(o, ",\"IcmpCode\":", 12)
        buf_uint(o, f.icmp_code)
    if f.present & P_TSTART:
        buf_put(o, ",\"TimeFlowStartMs\":", 19)
        buf_int(o, f.t_start_ms)
    if f.present & P_TEND:
        buf_put(o, ",\"TimeFlowEndMs\":", 17)
        buf_int(o, f.t_end_ms)
    put_time_received(o, <int64_t>bt.recv_time)
    if f == _ev_first and enricher is not None and enrich_c(enricher) and addr_len(f.af):
        # the first flow of the call has had no earlier flow start loading its parts (at one
        # record a datagram, Open vSwitch's, that is every flow): its cache sets, prefetched by
        # enrich_batch, have come in by now, so the parts they point to can start loading for
        # the copy at the end
        view_prefetch_parts_in(_sets[0], _sets[1], f.src, f.dst, addr_len(f.af))
    if f.sampling:
        buf_put(o, ",\"Sampling\":", 12)
        buf_uint(o, f.sampling)
    if enricher is None:
        if f.direction >= 0:
            buf_put(o, ",\"FlowDirection\":", 17)
            buf_uint(o, <uint64_t>f.direction)
    if f.in_name_len or f.out_name_len:
        # Either name non-empty: both slots of a pair are listed (an empty ingress name stays "",
        # so the egress name keeps its place in NetObserv's parallel Interfaces/IfDirections
        # arrays); a single one is the interface the record was observed on. A slot is the
        # datagram's bytes or a name options data gave (learned_names, Flow.names_learned).
        buf_put(o, ",\"Interfaces\":[", 15)
        put_if_name(o, bt, data, f.in_name_off, f.in_name_len, f.names_learned & NAMES_IN)
        if f.out_name_off or f.names_learned & NAMES_OUT:
            buf_put(o, ",", 1)
            put_if_name(o, bt, data, f.out_name_off, f.out_name_len, f.names_learned & NAMES_OUT)
            buf_put(o, "],\"IfDirections\":[0,1]", 22)
        else:
            buf_put(o, "],\"IfDirections\":[", 18)
            buf_uint(o, <uint64_t>(1 if f.names_learned & NAMES_EGRESS else f.direction if f.direction >= 0 else 0))
            buf_put(o, "]", 1)
    if f.present & P_INIF:
        buf_put(o, ",\"InIf\":", 8)
        buf_uint(o, f.in_if)
    if f.present & P_OUTIF:
        buf_put(o, ",\"OutIf\":", 9)
        buf_uint(o, f.out_if)
    if f.if_internal & IF_INTERNAL_IN:
        buf_put(o, ",\"InIfInternal\":true", 20)
    if f.if_internal & IF_INTERNAL_OUT:
        buf_put(o, ",\"OutIfInternal\":true", 21)
    if f.present & P_VLAN:
        buf_put(o, ",\"Vlan\":", 8)
        buf_uint(o, f.vlan)
    if f.nh_af:
        buf_put(o, ",\"NextHop\":", 11)
        buf_ip(o, f.nh_af, f.nexthop, True)
    if f.present & P_SRCAS:
        buf_put(o, ",\"SrcAS\":", 9)
        buf_uint(o, f.src_as)
    if f.present & P_DSTAS:
        buf_put(o, ",\"DstAS\":", 9)
        buf_uint(o, f.dst_as)
    if f.present & P_SRCMASK:
        buf_put(o, ",\"SrcPrefixLen\":", 16)
        buf_uint(o, f.src_mask)
    if f.present & P_DSTMASK:
        buf_put(o, ",\"DstPrefixLen\":", 16)
        buf_uint(o, f.dst_mask)
    if f.present & P_ENDREASON:
        buf_put(o, ",\"FlowEndReason\":", 17)
        buf_uint(o, f.end_reason)
    if f.fwd_status:
        buf_put(o, ",\"ForwardingStatus\":", 20)
        buf_uint(o, f.fwd_status & 0xFF)
    if f.present & P_DROP:
        # NetObserv's packet-drop fields: the flow's packets (an sFlow sample: its one packet) were dropped.
        if f.present & P_BYTES:
            buf_put(o, ",\"PktDropBytes\":", 16)
            buf_uint(o, f.bytes)
        if f.present & P_PACKETS:
            buf_put(o, ",\"PktDropPackets\":", 18)
            buf_uint(o, f.packets)
        if f.drop_src == DROP_SFLOW and f.present & P_FLAGS and f.proto == 6:
            buf_put(o, ",\"PktDropLatestFlags\":", 22)
            buf_uint(o, f.tcp_flags)
        buf_put(o, ",\"PktDropLatestDropCause\":\"", 27)
        if f.drop_str_len:
            # The Linux kernel's own name (sFlow record 1042): NetObserv's vocabulary.
            buf_put(o, "SKB_DROP_REASON_", 16)
            buf_put(o, <const char*>data + f.drop_str_off, f.drop_str_len)
        else:
            name = drop_name(f.drop_src, f.drop_reason)
            if name != NULL:
                buf_put(o, name, strlen(name))
            else:
                buf_uint(o, f.drop_reason)
        buf_put(o, "\"", 1)
    if f.present & P_TUNTYPE:
        buf_put(o, ",\"TunnelType\":\"", 15)
        if f.tun_type < 9:
            buf_put(o, TUNNEL_NAMES[f.tun_type], len(TUNNEL_NAMES[f.tun_type]))
        else:
            buf_uint(o, f.tun_type)
        buf_put(o, "\"", 1)
    if f.present & P_TUNID:
        buf_put(o, ",\"TunnelId\":", 12)
        buf_uint(o, f.tun_id)
    if f.tun_af:
        if not f.noaddr & NOADDR_TUNSRC:
            buf_put(o, ",\"TunnelSrcAddr\":", 17)
            buf_ip(o, f.tun_af, f.tun_src, True)
        if not f.noaddr & NOADDR_TUNDST:
            buf_put(o, ",\"TunnelDstAddr\":", 17)
            buf_ip(o, f.tun_af, f.tun_dst, True)
    if f.present & P_TUNPROTO:
        buf_put(o, ",\"TunnelProto\":", 15)
        buf_uint(o, f.tun_proto)
    if f.present & P_TUNSPORT:
        buf_put(o, ",\"TunnelSrcPort\":", 17)
        buf_uint(o, f.tun_sport)
    if f.present & P_TUNDPORT:
        buf_put(o, ",\"TunnelDstPort\":", 17)
        buf_uint(o, f.tun_dport)
    if f.duplicate:
        buf_put(o, ",\"Duplicate\":true", 17)
    if bt.proto_kind == PROTO_NETFLOW9 or bt.proto_kind == PROTO_IPFIX:
        buf_put(o, ",\"ObservationDomain\":", 21)
        buf_uint(o, f.msg_domain if f.present & P_MSG else bt.domain)
        buf_put(o, ",\"TemplateId\":", 14)
        buf_uint(o, f.template_id)
    if bt.proto_kind != PROTO_NETFLOW1:      # (v1 headers carry no sequence number)
        buf_put(o, ",\"SequenceNum\":", 15)
        buf_uint(o, f.msg_sequence if f.present & P_MSG else bt.sequence)
    if f.extra_count:
        encode_extras(o, bt, f, data)
    if enricher is not None:
        enrich_into(o, bt, f, enricher, lookup_ms(bt, f))
    return buf_put(o, "}", 1)


# batch_head's answers by (protocol, agent address): a datagram's head was built anew each time
# (a dict lookup, str.encode, the address's text and a bytes object: ~1,200 instructions a
# datagram, a tenth of the whole cost of a one-record datagram, which is what Open vSwitch sends).
# Direct-mapped on a hash of the whole address and the protocol (a collector behind a Service
# takes datagrams from every node in turn: 4,096 slots, ~200 kB with all of them filled); a
# slot's bytes object is kept in _heads.
DEF HEADS = 4096
cdef list _heads = [None] * HEADS
cdef uint8_t _head_key[HEADS][18]   # proto_kind, agent_af, agent[16]


cdef bytes batch_head(FlowBatch bt):
    """The part of every flow's JSON that is the same for the whole datagram."""
    cdef uint8_t key[18]
    cdef int slot
    cdef bytes head
    key[0] = bt.proto_kind
    key[1] = bt.agent_af
    memcpy(key + 2, bt.agent, 16)
    # the enrichment cache's address hash (every byte counts: nodes numbered 10.0.1.10,
    # 10.0.2.10, ... took one slot by the last bytes alone, and a collector taking their
    # datagrams in turn built the head again for each one); an IPv4 address as 4 bytes (hashed
    # as 16, zero-padded, its low bits are its last byte and a half: 256 exporters in 16 slots)
    slot = <int>((view_hash(bt.agent, 4 if bt.agent_af == 4 else 16) ^ (<uint64_t>bt.proto_kind << 7))
                 & (HEADS - 1))
    if memcmp(key, _head_key[slot], 18) == 0 and _heads[slot] is not None:
        return <bytes>_heads[slot]
    head = make_batch_head(bt)
    _heads[slot] = head
    memcpy(_head_key[slot], key, 18)
    return head


cdef bytes make_batch_head(FlowBatch bt):
    _out.n = 0
    buf_put(&_out, "{\"FlowProtocol\":\"", 17)
    buf_lit(&_out, PROTOCOL_NAMES[bt.proto_kind].encode())
    buf_put(&_out, "\"", 1)
    if bt.agent_af:
        buf_put(&_out, ",\"AgentIP\":", 11)
        buf_ip(&_out, bt.agent_af, bt.agent, False)
    return PyBytes_FromStringAndSize(_out.p, _out.n)


cdef list encode_batch(FlowBatch bt, object enricher):
    cdef list out = []
    cdef Py_ssize_t i
    cdef bytes head
    if bt.n == 0:
        return out
    head = batch_head(bt)
    enrich_batch(bt, 0, enricher)
    for i in range(bt.n):
        _out.n = 0
        encode_flow(&_out, bt, &bt.flows[i], enricher, PyBytes_AS_STRING(head), len(head))
        out.append(PyBytes_FromStringAndSize(_out.p, _out.n))
    return out
