# NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX (RFC 7011).
#
# v9 and IPFIX share one template machinery: a template is compiled once into a FieldSpec array
# (element id, enterprise number, length, and the action that says where the value goes in the
# Flow struct); data records are decoded by walking that array ("describe once, decode many").
# Templates are keyed per exporter IP by (version, observation domain / source id, template id),
# and their number per exporter is bounded.

import ipaddress
import socket

# Actions: where a field's value goes. Everything without an action is kept as an "extra".
cdef enum:
    A_EXTRA = 0
    A_SKIP            # padding (IE 210) and structured lists (291-293): skipped safely
    A_SCOPE           # v9 options scope fields: scope types, not elements
    A_BYTES
    A_PACKETS
    A_BYTES_TOTAL
    A_PACKETS_TOTAL
    A_PROTO
    A_TOS
    A_DSCP            # ipDiffServCodePoint (195): the DSCP itself
    A_TCPFLAGS
    A_SPORT
    A_DPORT
    A_SRC4
    A_DST4
    A_SRC6
    A_DST6
    A_SRCMASK
    A_DSTMASK
    A_INIF
    A_OUTIF
    A_NEXTHOP4
    A_NEXTHOP6
    A_SRCAS
    A_DSTAS
    A_END_SYSUP
    A_START_SYSUP
    A_ICMP_TC
    A_ICMP_TYPE
    A_ICMP_CODE
    A_SAMPLING_INTERVAL
    A_SAMPLING_ALGO
    A_SAMPLER_ID
    A_SAMPLING_PKT_SPACE
    A_SAMPLING_SIZE
    A_SAMPLING_POPULATION
    A_SRCMAC
    A_DSTMAC
    A_VLAN
    A_IPVERSION
    A_DIRECTION
    A_IFNAME
    A_ENDREASON
    A_START_S
    A_END_S
    A_START_MS
    A_END_MS
    A_START_US
    A_END_US
    A_START_NS
    A_END_NS
    A_START_DELTA_US
    A_END_DELTA_US
    A_SYSINIT_MS
    A_ETYPE
    A_FIN_COUNT
    A_SYN_COUNT
    A_RST_COUNT
    A_PSH_COUNT
    A_ACK_COUNT
    A_URG_COUNT
    A_TUN_TYPE
    A_TUN_KEY
    A_TUN_SRC4
    A_TUN_DST4
    A_TUN_PROTO
    A_TUN_SPORT
    A_TUN_DPORT
    A_TUN_SRC6
    A_TUN_DST6
    # The IPv6 twins of IPv4-only elements: separate actions so that a template carrying both
    # (exporters that fill either family, see pick_family) keeps both and the flow's family
    # picks the value.
    A_SRCMASK6
    A_DSTMASK6
    A_ICMP_TC6
    A_ICMP_TYPE6
    A_ICMP_CODE6
    A_DURATION_MS
    A_DURATION_US
    A_FWDSTATUS
    A_REV_BYTES       # RFC 5103 reverse elements (PEN 29305) of a biflow record
    A_REV_PACKETS
    A_REV_BYTES_TOTAL
    A_REV_PACKETS_TOTAL
    A_REV_TCPFLAGS
    A_REV_TOS
    A_REV_START_MS
    A_REV_END_MS
    A_FRAME_SECTION   # PSAMP packet reports (RFC 5476/5477): dataLinkFrameSection (315),
    A_IP_SECTION      # ipHeaderPacketSection (313): the sampled packet's headers, parsed as sFlow's
    A_FRAME_SIZE      # dataLinkFrameSize (312): its length, the flow's Bytes
    A_OBS_S           # observationTimeSeconds .. Nanoseconds (322-325): when it was observed
    A_OBS_MS
    A_OBS_US
    A_OBS_NS
    A_TEN_SRC4        # VMware vDS / NSX VXLAN templates (PEN 6876 880-887): the VM's traffic
    A_TEN_DST4        # inside the tunnel the record's own addresses describe (tenant_flow)
    A_TEN_SRC6
    A_TEN_DST6
    A_TEN_PROTO
    A_TEN_SPORT
    A_TEN_DPORT
    A_L2SEG           # layer2SegmentId (351): overlay type (top byte) and segment id (VNI)
    A_SCOPE_IF        # an options template's interface scope (v9 scope type 2, IPFIX ingressInterface)
    A_SAMPLING_PROB   # samplingProbability (311): see rate_from
    A_TCPFLAGS_INIT   # YAF's initialTCPFlags / unionTCPFlags (CERT PEN 6871 14/15): see CERT_ACTIONS
    A_TCPFLAGS_UNION
    A_REV_TCPFLAGS_INIT   # ... their reverse twins (6871 16398/16399), with --split-biflows
    A_REV_TCPFLAGS_UNION
    A_REV_DELTA_MS    # YAF's reverseFlowDeltaMilliseconds (6871 21): the reverse direction's start
    A_POST_SRCMAC     # postSource/postDestinationMacAddress (81/57) beside source/destination-
    A_POST_DSTMAC     # MacAddress (56/80): the MAC when the 56/80 value is all zeros (see below)
    A_POST_VLAN       # postVlanId / postDot1qVlanId (59/254): the Vlan when 58/243 give none
    A_SAMPLING_INTERVAL_MORE  # samplingInterval / samplerRandomInterval (34/50) after the first
                              # one: kept as it came, the rate when the ones before are 0
    A_SAMPLING_PKT_INTERVAL   # samplingPacketInterval (305): see rate_from
    A_SCOPE_OUTIF     # an options template's egress interface scope (IPFIX egressInterface, 14)
    A_SCOPE_TID       # an options template's template scope (v9 scope type 5, IPFIX templateId 145)


# Which scope fields an options record has (learn_options)
cdef enum:
    SCOPE_IF = 1
    SCOPE_OUTIF = 2
    SCOPE_TID = 4


# What a template costs against Decoder.max_template_fields beside its fields: its own objects
# (the Template, its key, its table entries: ~290 bytes of RSS) in fields of ~12 bytes (measured
# over 17k-125k templates of 1 to 100 fields: 12-13 bytes per counted field whatever their
# shape). Without it a flood of one-field templates held ~300 bytes per bounded field (1.2 GB
# under the default bound of 4M).
cdef enum:
    TEMPLATE_COST_FIELDS = 24


# Which RFC 5103 reverse elements a record carried (decode_record's `rev`).
cdef enum:
    REV_BYTES = 1
    REV_PACKETS = 2
    REV_FLAGS = 4
    REV_DSCP = 8
    REV_START = 16
    REV_END = 32
    REV_DELTA = 64


# The element -> output mapping table (IANA IPFIX registry ids; v9 uses the same numbers for
# 1-127). The README's "Output" table mirrors this. Lengths: the value is only used when its
# length fits the element's type (else the field is kept as an extra, never misread).
# RFC 7011 6.2: an unsigned integer may be sent in fewer bytes than its type (reduced-size
# encoding), so unsignedN elements take 1..N bytes (read with be16r/be32r/beN).
# Addresses, MACs and dateTime types have no reduced-size encoding: their lengths are exact.
U16 = (1, 2)
U32 = (1, 2, 3, 4)
IE_ACTIONS = {
    # id: (action, allowed lengths or None for any integer length 1..8)
    1: (A_BYTES, None), 2: (A_PACKETS, None), 85: (A_BYTES_TOTAL, None), 86: (A_PACKETS_TOTAL, None),
    # without octet/packetDeltaCount: the post (egress, v9 OUT_BYTES/OUT_PKTS) counts, or a
    # firewall's initiator counts (Cisco ASA NSEL); the responder's are the reverse direction
    # (a flow of its own with --split-biflows, else kept as ie232/ie299)
    23: (A_BYTES_TOTAL, None), 24: (A_PACKETS_TOTAL, None), 231: (A_BYTES_TOTAL, None),
    298: (A_PACKETS_TOTAL, None), 232: (A_REV_BYTES_TOTAL, None), 299: (A_REV_PACKETS_TOTAL, None),
    4: (A_PROTO, (1,)), 5: (A_TOS, (1,)), 195: (A_DSCP, (1,)), 6: (A_TCPFLAGS, (1, 2)),
    7: (A_SPORT, U16), 11: (A_DPORT, U16),
    8: (A_SRC4, (4,)), 12: (A_DST4, (4,)), 27: (A_SRC6, (16,)), 28: (A_DST6, (16,)),
    9: (A_SRCMASK, (1,)), 13: (A_DSTMASK, (1,)), 29: (A_SRCMASK6, (1,)), 30: (A_DSTMASK6, (1,)),
    10: (A_INIF, None), 14: (A_OUTIF, None),
    15: (A_NEXTHOP4, (4,)), 62: (A_NEXTHOP6, (16,)),
    16: (A_SRCAS, None), 17: (A_DSTAS, None),
    21: (A_END_SYSUP, U32), 22: (A_START_SYSUP, U32),
    32: (A_ICMP_TC, U16), 139: (A_ICMP_TC6, U16),
    176: (A_ICMP_TYPE, (1,)), 177: (A_ICMP_CODE, (1,)), 178: (A_ICMP_TYPE6, (1,)), 179: (A_ICMP_CODE6, (1,)),
    34: (A_SAMPLING_INTERVAL, None), 35: (A_SAMPLING_ALGO, (1,)), 48: (A_SAMPLER_ID, None),
    50: (A_SAMPLING_INTERVAL, None), 302: (A_SAMPLER_ID, None),
    305: (A_SAMPLING_PKT_INTERVAL, None), 306: (A_SAMPLING_PKT_SPACE, None),
    309: (A_SAMPLING_SIZE, None), 310: (A_SAMPLING_POPULATION, None),  # see rate_from
    311: (A_SAMPLING_PROB, (4, 8)),     # float64, or float32 (RFC 7011 6.2 reduced-size encoding)
    56: (A_SRCMAC, (6,)), 80: (A_DSTMAC, (6,)),
    58: (A_VLAN, U16), 243: (A_VLAN, U16), 59: (A_POST_VLAN, U16), 254: (A_POST_VLAN, U16),
    60: (A_IPVERSION, (1,)), 61: (A_DIRECTION, (1,)),
    82: (A_IFNAME, "str"), 136: (A_ENDREASON, (1,)), 89: (A_FWDSTATUS, U32),
    150: (A_START_S, (4,)), 151: (A_END_S, (4,)),
    152: (A_START_MS, (8,)), 153: (A_END_MS, (8,)),
    # 154/155 are 8-byte NTP times (RFC 7011 6.1.9); pmacct's nfprobe_tstamp_usec sends them as
    # 16 bytes: a struct timeval, 64-bit Unix seconds then 64-bit microseconds (pmacct
    # nfprobe_plugin/netflow9.c), which no 8-byte encoding can be confused with.
    154: (A_START_US, (8, 16)), 155: (A_END_US, (8, 16)),
    156: (A_START_NS, (8,)), 157: (A_END_NS, (8,)),
    158: (A_START_DELTA_US, U32), 159: (A_END_DELTA_US, U32),
    160: (A_SYSINIT_MS, (8,)),
    161: (A_DURATION_MS, U32), 162: (A_DURATION_US, U32),  # flowDurationMilli/Microseconds
    256: (A_ETYPE, U16),
    218: (A_SYN_COUNT, None), 219: (A_FIN_COUNT, None), 220: (A_RST_COUNT, None),  # tcpSyn, tcpFin, tcpRst TotalCount
    221: (A_PSH_COUNT, None), 222: (A_ACK_COUNT, None), 223: (A_URG_COUNT, None),
    210: (A_SKIP, "any"), 291: (A_SKIP, "any"), 292: (A_SKIP, "any"), 293: (A_SKIP, "any"),
    315: (A_FRAME_SECTION, "any"), 313: (A_IP_SECTION, "any"), 312: (A_FRAME_SIZE, None),
    322: (A_OBS_S, (4,)), 323: (A_OBS_MS, (8,)), 324: (A_OBS_US, (8,)), 325: (A_OBS_NS, (8,)),
    351: (A_L2SEG, (8,)),
}

# RFC 5103 biflows: the reverse direction's elements are the forward ones' ids under enterprise
# number 29305 (softflowd -b, YAF). A record with reverse counters is two flows (decode_record).
PEN_REVERSE = 29305
REVERSE_ACTIONS = {
    1: (A_REV_BYTES, None), 2: (A_REV_PACKETS, None), 85: (A_REV_BYTES_TOTAL, None),
    86: (A_REV_PACKETS_TOTAL, None), 6: (A_REV_TCPFLAGS, (1, 2)), 5: (A_REV_TOS, (1,)),
    152: (A_REV_START_MS, (8,)), 153: (A_REV_END_MS, (8,)),
}

# YAF (CERT NetSA, enterprise number 6871) sends no tcpControlBits: a flow's TCP flags are those of
# its first packet, initialTCPFlags (14), and the union of the others', unionTCPFlags (15); their
# reverse direction's are the same ids with CERT's reverse bit 0x4000 (libfixbuf's
# FB_IE_VENDOR_BIT_REVERSE: 16398, 16399). Flags are the union of the two, as SiLK reads them.
PEN_CERT = 6871
CERT_ACTIONS = {
    14: (A_TCPFLAGS_INIT, (1,)), 15: (A_TCPFLAGS_UNION, (1,)),
    16398: (A_REV_TCPFLAGS_INIT, (1,)), 16399: (A_REV_TCPFLAGS_UNION, (1,)),
    # reverseFlowDeltaMilliseconds: the reverse direction's first packet after the forward
    # one's (YAF's biflows, one flowStart/End pair for both: the reverse flow starts this much
    # later and ends with the record, as SiLK splits them)
    21: (A_REV_DELTA_MS, (1, 2, 4)),
}

# Open vSwitch tunnel elements, VMware enterprise number 6876 (ofproto IPFIX entities).
PEN_VMWARE = 6876
VMWARE_ACTIONS = {
    891: (A_TUN_TYPE, (1,)), 892: (A_TUN_KEY, "any"),
    893: (A_TUN_SRC4, (4,)), 894: (A_TUN_DST4, (4,)), 895: (A_TUN_PROTO, (1,)),
    896: (A_TUN_SPORT, U16), 897: (A_TUN_DPORT, U16),
    899: (A_TUN_SRC6, (16,)), 900: (A_TUN_DST6, (16,)),
    # VMware vDS / NSX-V VXLAN flow templates: tenantProtocol, tenantSource/DestIPv4/IPv6,
    # tenantSource/DestPort
    880: (A_TEN_PROTO, (1,)), 881: (A_TEN_SRC4, (4,)), 882: (A_TEN_DST4, (4,)),
    883: (A_TEN_SRC6, (16,)), 884: (A_TEN_DST6, (16,)), 886: (A_TEN_SPORT, U16), 887: (A_TEN_DPORT, U16),
}

cdef int action_for(uint16_t ie, uint32_t pen, uint16_t length, bint v9_scope):
    cdef object spec
    if v9_scope:
        return A_SCOPE
    if pen == 0:
        spec = IE_ACTIONS.get(ie)
    elif pen == PEN_VMWARE:
        spec = VMWARE_ACTIONS.get(ie)
    elif pen == PEN_REVERSE:
        spec = REVERSE_ACTIONS.get(ie)
    elif pen == PEN_CERT:
        spec = CERT_ACTIONS.get(ie)
    else:
        return A_EXTRA
    if spec is None:
        return A_EXTRA
    action, lengths = spec
    if lengths == "any":
        return action
    if lengths == "str":
        return action
    if length == VARLEN:
        return A_EXTRA
    if lengths is None:
        return action if 1 <= length <= 8 else A_EXTRA
    return action if length in lengths else A_EXTRA


cdef struct FieldSpec:
    uint16_t ie
    uint16_t length           # VARLEN for variable length
    uint32_t pen
    int action


from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc


@cython.final     # (find called directly, inlined in learned_names, not through a method table)
cdef class NameTable:
    """The interface names one exporting process and domain's options data gave (learn_if_name):
    ifIndex -> name (bytes), for the data records' lookups (learned_names, one or two a record):
    a dict keyed by Python ints made learned_names cost 490 instructions a record with two
    lookups, this 185 (benchmarks/RESULTS.md).
    Entries in the order first learned (a name replaced keeps its place, as a dict's would: the
    state file lists them in that order), found by an open-addressing index of their positions.
    The table owns a reference to each name (given back when the name is replaced or the table
    freed), so a name `find` returns lives while the table holds it; whoever keeps it longer
    (a FlowBatch, learned_names) takes its own. Names are only added or replaced, never removed
    one by one (a process's names are forgotten together, its table dropped), so the index needs
    no tombstones. PyMem, not malloc: tracemalloc (test_robustness's state estimate) sees it."""
    cdef uint64_t* keys       # ifIndex of each entry (up to 8 bytes on the wire, learn_if_name)
    cdef PyObject** vals      # its name: an owned reference
    cdef Py_ssize_t count, room
    cdef uint32_t* index      # 1 + an entry's position, 0: an empty slot; at most half full
    cdef uint64_t mask
    cdef int shift            # 64 - log2(index slots): Fibonacci hashing keeps the high bits

    def __cinit__(self):
        self.index = <uint32_t*>PyMem_Malloc(8 * sizeof(uint32_t))
        if self.index == NULL:
            raise MemoryError()
        memset(self.index, 0, 8 * sizeof(uint32_t))
        self.mask = 7
        self.shift = 61

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.count):
            Py_XDECREF(self.vals[i])
        PyMem_Free(self.keys)
        PyMem_Free(self.vals)
        PyMem_Free(self.index)

    def __len__(self):
        return self.count

    cdef inline Py_ssize_t slot(self, uint64_t ifindex) noexcept:
        """The index slot holding ifindex's entry, else the empty one it would go to."""
        cdef uint64_t i = (ifindex * <uint64_t>0x9E3779B97F4A7C15ULL) >> self.shift
        cdef uint32_t e
        while True:
            e = self.index[i]
            if e == 0 or self.keys[e - 1] == ifindex:
                return <Py_ssize_t>i
            i = (i + 1) & self.mask

    cdef inline PyObject* find(self, uint64_t ifindex) noexcept:
        """ifindex's name, borrowed from the table (NULL: none)."""
        cdef uint32_t e = self.index[self.slot(ifindex)]
        return self.vals[e - 1] if e else NULL

    cdef object get(self, uint64_t ifindex):
        cdef PyObject* name = self.find(ifindex)
        return None if name == NULL else <object>name

    cdef int put(self, uint64_t ifindex, bytes name) except -1:
        """ifindex's name is `name` (replacing the one it had)."""
        cdef Py_ssize_t i = self.slot(ifindex)
        cdef uint32_t e = self.index[i]
        cdef PyObject* old
        if e:
            old = self.vals[e - 1]
            Py_INCREF(name)
            self.vals[e - 1] = <PyObject*>name
            Py_XDECREF(old)
            return 0
        if self.count == self.room:
            self.grow_entries()
        if 2 * (self.count + 1) > <Py_ssize_t>(self.mask + 1):
            self.grow_index()
            i = self.slot(ifindex)
        self.keys[self.count] = ifindex
        Py_INCREF(name)
        self.vals[self.count] = <PyObject*>name
        self.count += 1
        self.index[i] = <uint32_t>self.count
        return 0

    cdef int grow_entries(self) except -1:
        cdef Py_ssize_t room = max(4, 2 * self.room)
        cdef uint64_t* keys = <uint64_t*>PyMem_Realloc(self.keys, room * sizeof(uint64_t))
        if keys == NULL:
            raise MemoryError()
        self.keys = keys
        cdef PyObject** vals = <PyObject**>PyMem_Realloc(self.vals, room * sizeof(PyObject*))
        if vals == NULL:
            raise MemoryError()
        self.vals = vals
        self.room = room
        return 0

    cdef int grow_index(self) except -1:
        cdef uint64_t slots = 2 * (self.mask + 1)
        cdef uint32_t* index = <uint32_t*>PyMem_Malloc(slots * sizeof(uint32_t))
        cdef Py_ssize_t e
        if index == NULL:
            raise MemoryError()
        memset(index, 0, slots * sizeof(uint32_t))
        PyMem_Free(self.index)
        self.index = index
        self.mask = slots - 1
        self.shift -= 1
        for e in range(self.count):
            self.index[self.slot(self.keys[e])] = <uint32_t>(e + 1)
        return 0

    cdef list items(self):
        """(ifIndex, name) of its entries, in the order first learned."""
        cdef Py_ssize_t i
        return [(self.keys[i], <object>self.vals[i]) for i in range(self.count)]


cdef class Template:
    """A compiled (options) template: the plan a data record is decoded by."""

    cdef FieldSpec* fields
    cdef readonly int n_fields
    cdef readonly int scope_fields
    cdef readonly bint options
    cdef readonly int version
    cdef readonly uint32_t domain
    cdef readonly uint16_t template_id
    cdef readonly uint16_t port
    cdef Py_ssize_t min_len   # smallest possible record (varlen counted as 1 byte)
    cdef bint varlen          # a field of variable length: records are min_len bytes or more
    # ... then the fixed-length bytes before its first variable-length field, between each two,
    # and after the last (n_var + 1 of them): a record's length is read from its n_var length
    # prefixes alone (count_records; NULL without one)
    cdef int n_var
    cdef uint32_t* var_gaps
    cdef bint has_tcp_counts
    cdef int vlans            # elements giving the Vlan (58, 243): with two, the first non-zero
    cdef bint events          # firewall event records (NSEL): never sampled (resolve_sampling)
    cdef bint not_sent        # IPFIX options with notSent*TotalCount (166-168): learn_not_sent
    cdef bint if_names        # options naming an interface (82/83 and an ifIndex): learn_if_name
    # The interface table of its exporting process and domain (ExporterState.interface_names'
    # entry, None: none), as of the exporter's names_gen: found again only when that changed, so
    # that neither a record nor a data set builds a key to find it (decode_data_set)
    cdef NameTable names_table
    cdef uint64_t names_gen
    cdef readonly double refreshed  # receive time of the datagram that (re)defined it (eviction order)
    # Receive time (down to SEEN_STEP_S) of the latest data read with it, or of what a state file
    # loaded at start said of its exporting process: with `refreshed` and the process's withdrawal,
    # how recent this process's knowledge of the exporting process is (export_state's "seen":
    # replicas sharing a state file keep the newest knowledge of each, collector/state.py)
    cdef readonly double seen

    def __dealloc__(self):
        free(self.fields)
        free(self.var_gaps)

    @property
    def spec(self):
        """((ie, pen, length), ...) as received, for the state file: rebuilt from the compiled
        fields on demand (a kept tuple of tuples cost about 40 KB for a 512-field template)."""
        cdef int i
        return tuple((self.fields[i].ie, self.fields[i].pen, self.fields[i].length) for i in range(self.n_fields))


cdef Template compile_template(int version, uint32_t domain, uint16_t tid, tuple spec, int scope_fields, bint options,
                               Py_ssize_t offset, uint16_t port, bint split_biflows):
    """Compile a template; raise DecodeError("bad_template") for one that cannot be decoded."""
    cdef Template t = Template.__new__(Template)
    cdef int i, vi, n = len(spec)
    cdef FieldSpec* fs
    cdef bint v9_scope
    if n == 0 or n > MAX_TEMPLATE_FIELDS:
        raise_decode("bad_template", offset, f"v{version} domain {domain} template {tid}: {n} fields")
    t.fields = <FieldSpec*>malloc(n * sizeof(FieldSpec))
    if t.fields == NULL:
        raise MemoryError()
    t.n_fields = n
    t.scope_fields = scope_fields
    t.options = options
    t.version = version
    t.domain = domain
    t.template_id = tid
    t.port = port
    t.min_len = 0
    t.varlen = False
    t.has_tcp_counts = False
    t.vlans = 0
    cdef set seen = set()
    # Bytes and Packets come from one family of counters, the first the template has: the
    # delta or total counts (1/2, 85/86), else the post (egress) ones (23/24), else a firewall's
    # initiator counts (231/298); the other families' elements stay as extras (never IN_BYTES
    # with OUT_PKTS). Without octets in the first family (or any), the layer 2 octets (352/353).
    cdef set ies = {sp[0] for sp in spec if sp[1] == 0}
    cdef tuple counters = ((85, 86) if not ies.isdisjoint((1, 2, 85, 86)) else
                           (23, 24) if not ies.isdisjoint((23, 24)) else (231, 298))
    # firewallEvent (233), or Cisco NSEL's NF_F_FW_EVENT (v9 40005): a firewall's connection
    # events, a log of every connection, not samples
    t.events = not options and (233 in ies or (version == 9 and 40005 in ies))
    # RFC 7011 4.3 Exporting Process Reliability Statistics: what the exporter failed to send, as
    # cumulative totals (Open vSwitch fills 167 with its failed sends). IPFIX only: NetFlow v9
    # (RFC 3954) defines no such field type.
    t.not_sent = options and version == 10 and not ies.isdisjoint((166, 167, 168))
    # An interface table (Cisco "option interface-table", Juniper, Nokia): interfaceName (82) or
    # interfaceDescription (83) with the ifIndex they name, an Interface scope (v9 type 2, IPFIX
    # ingressInterface / egressInterface) or an ingressInterface / egressInterface field (IOS-XR
    # v9: scope System, INPUT_SNMP and IF_DESC)
    t.if_names = options and if_table(version, spec, scope_fields)
    for i in range(n):
        ie, pen, length = spec[i]
        fs = &t.fields[i]
        fs.ie = ie
        fs.pen = pen
        fs.length = length
        v9_scope = options and version == 9 and i < scope_fields
        fs.action = action_for(ie, pen, length, v9_scope)
        if (options and i < scope_fields and pen == 0 and ie == (2 if version == 9 else 10)
                and 1 <= length <= 8):
            # Options data scoped by an interface (RFC 3954 6.1 scope type 2 "Interface", its
            # ifIndex: Cisco IOS per-interface sampling; IPFIX scope ingressInterface, RFC 7011
            # 3.4.2.1): what it teaches is that interface's (learn_options)
            fs.action = A_SCOPE_IF
        elif options and i < scope_fields and pen == 0 and 1 <= length <= 8 and (
                (version == 10 and ie == 14) or ie == (5 if version == 9 else 145)):
            # scoped by an egress interface (IPFIX egressInterface), or by a template (v9 scope
            # type 5 "Template", IPFIX templateId: Juniper): what it teaches is for the data
            # records that left by that interface, or of that template (learn_options)
            fs.action = A_SCOPE_OUTIF if version == 10 and ie == 14 else A_SCOPE_TID
        if (fs.action == A_BYTES_TOTAL or fs.action == A_PACKETS_TOTAL) and ie not in counters:
            fs.action = A_EXTRA
        if ((A_REV_BYTES <= fs.action <= A_REV_END_MS or fs.action == A_REV_TCPFLAGS_INIT
                or fs.action == A_REV_TCPFLAGS_UNION or fs.action == A_REV_DELTA_MS) and not split_biflows):
            fs.action = A_EXTRA     # one flow per record: the reverse elements are kept as they came
        # An element repeated in one template (outer and inner headers, Cisco SRv6/MPLS): the
        # first occurrence fills the named field, as Wireshark shows it; later ones stay
        # available as ie<ID> extras. interfaceName is the exception: OVS sends it twice,
        # ingress port first, egress port second.
        if fs.action == A_VLAN:
            t.vlans += 1
        elif fs.action > A_SCOPE and fs.action != A_IFNAME and fs.action != A_POST_VLAN:
            if fs.action in seen:
                # (34 and 50 in one record, akvorado's v9 captures: the first non-zero one is the
                # rate, the first one may be 0, "not given")
                fs.action = A_SAMPLING_INTERVAL_MORE if fs.action == A_SAMPLING_INTERVAL else A_EXTRA
            else:
                seen.add(fs.action)
        if A_FIN_COUNT <= fs.action <= A_URG_COUNT:
            t.has_tcp_counts = True
        t.min_len += 1 if length == VARLEN else length
        t.varlen = t.varlen or length == VARLEN
    if t.min_len == 0:
        raise_decode("bad_template", offset, f"v{version} domain {domain} template {tid}: zero-length records")
    if t.varlen:
        for i in range(n):
            t.n_var += t.fields[i].length == VARLEN
        t.var_gaps = <uint32_t*>calloc(t.n_var + 1, sizeof(uint32_t))
        if t.var_gaps == NULL:
            raise MemoryError()
        vi = 0
        for i in range(n):
            if t.fields[i].length == VARLEN:
                vi += 1
            else:
                t.var_gaps[vi] += t.fields[i].length
    for i in range(n):
        # tcpControlBits (forward, or the reverse one) beside YAF's flag elements gives the
        # flags; those stay as they came
        fs = &t.fields[i]
        if ((fs.action == A_TCPFLAGS_INIT or fs.action == A_TCPFLAGS_UNION) and A_TCPFLAGS in seen
                or (fs.action == A_REV_TCPFLAGS_INIT or fs.action == A_REV_TCPFLAGS_UNION) and A_REV_TCPFLAGS in seen):
            fs.action = A_EXTRA
    if A_TOS in seen and A_DSCP in seen:
        # ipClassOfService gives Dscp; ipDiffServCodePoint beside it stays as it came (ie195)
        for i in range(n):
            if t.fields[i].action == A_DSCP:
                t.fields[i].action = A_EXTRA
    if (A_BYTES not in seen and A_BYTES_TOTAL not in seen and counters[0] == 85
            and not ies.isdisjoint((352, 353))):
        # No octet count but layer2OctetDelta/TotalCount (352/353), as Open vSwitch exports
        # non-IP packets (ARP, LLDP) with packetDeltaCount: Bytes are the frames' bytes
        # (a delta before a total, the first of each).
        for want in (352, 353):
            for i in range(n):
                fs = &t.fields[i]
                if fs.ie == want and fs.pen == 0 and fs.action == A_EXTRA and 1 <= fs.length <= 8:
                    fs.action = A_BYTES_TOTAL
                    seen.add(A_BYTES_TOTAL)
                    break
            if A_BYTES_TOTAL in seen:
                break
    # Without the (ingress) MAC elements, the post ones give them: Cisco exports IN_SRC_MAC (56)
    # with OUT_DST_MAC (57), softflowd -T ether the destination in 57 only. The first of each, as
    # for any element. With both kinds, 57/81 stay extras as they came, and give the MAC where the
    # 56/80 value is all zeros, no address (nfdump's nfreplay sends all four, the frame's source in 56
    # and its destination in 57, the two it does not know as zeros): decode_record.
    post_src = A_SRCMAC if A_SRCMAC not in seen else A_POST_SRCMAC
    post_dst = A_DSTMAC if A_DSTMAC not in seen else A_POST_DSTMAC
    for i in range(n):
        fs = &t.fields[i]
        if fs.pen == 0 and fs.length == 6 and fs.action == A_EXTRA:
            if fs.ie == 81 and post_src not in seen:
                fs.action = post_src
                seen.add(post_src)
            elif fs.ie == 57 and post_dst not in seen:
                fs.action = post_dst
                seen.add(post_dst)
    if A_INIF not in seen or A_OUTIF not in seen:
        # Without ingressInterface / egressInterface (10/14), ingressPhysicalInterface /
        # egressPhysicalInterface (252/253) give them: ifIndexes of the same ifTable (IANA,
        # unsigned32), and some exporters send only those (akvorado's physicalinterfaces
        # capture). The first of each; beside 10/14 they stay extras.
        for i in range(n):
            fs = &t.fields[i]
            if fs.pen == 0 and fs.action == A_EXTRA and 1 <= fs.length <= 8:
                if fs.ie == 252 and A_INIF not in seen:
                    fs.action = A_INIF
                    seen.add(A_INIF)
                elif fs.ie == 253 and A_OUTIF not in seen:
                    fs.action = A_OUTIF
                    seen.add(A_OUTIF)
    return t


cdef inline bint aged(int64_t since_ms, int64_t now_ms, int64_t limit_ms) noexcept:
    """Something seen at since_ms is limit_ms old at now_ms (receive times, the wall clock): or
    the clock stepped back by more than that since, and its age can no longer be told."""
    return now_ms - since_ms >= limit_ms or since_ms - now_ms > limit_ms


cdef inline bint gap_expired(int64_t gap_ms, int64_t now_ms) noexcept:
    """A sequence gap has waited SEQ_REORDER_MS for late datagrams."""
    return aged(gap_ms, now_ms, SEQ_REORDER_MS)


cdef class SeqStream:
    """One sequence stream of an exporter: a protocol's (exporting process, domain)."""
    cdef int kind
    cdef uint32_t port
    cdef uint64_t domain
    cdef bint synced        # next is known (False: new, or the last message was not decoded whole)
    cdef bint floor         # not synced, next is the number of an IPFIX message not counted (its records
                            # unknown): what is numbered at or before it was sent before it (ipfix_forget)
    # ... what is known of that message's records, for the gaps around it (settle_floor): the
    # records decoded, at most how many it held, its undecoded data sets ((domain, set id, bytes),
    # None: not kept) to count once their templates are known; and, when the stream was followed
    # before it (floor_from_set), the number it expected then and the record count of the
    # message before (the gap before it, in either reading)
    cdef uint32_t floor_known
    cdef uint32_t floor_max
    cdef object floor_sets
    cdef bint floor_from_set
    cdef uint32_t floor_from
    cdef uint32_t floor_prev
    cdef bint skipped       # an uncounted message taken for one sent before, filling nothing, since
                            # the latest counted one (then the loss before the next floor is not told)
    cdef uint32_t next      # sequence number expected next
    cdef uint32_t next_count    # the record count of the message that set next (IPFIX, v5: the
                                # two readings of ipfix_convention expect next apart by it)
    cdef bint last_set_next     # the latest message (last_seq) set next (not late): a step from
                                # it is in order in the reading it votes for
    cdef int64_t uptime     # header uptime of its latest datagram (ms), -1 where the protocol has none
    # Gaps not counted yet, oldest first: numbers [start, start + span) were skipped, of which
    # `missing` have not arrived late since; seen at receive time ms.
    cdef int ngaps
    cdef uint32_t gap_start[SEQ_MAX_GAPS]
    cdef uint32_t gap_span[SEQ_MAX_GAPS]
    cdef uint32_t gap_missing[SEQ_MAX_GAPS]
    cdef int64_t gap_ms[SEQ_MAX_GAPS]
    # How much more the reading the stream does not follow (IPFIX, v5: ipfix_convention; v9:
    # v9_convention) would call lost in the gap (other_reading)
    cdef int64_t gap_adj[SEQ_MAX_GAPS]
    # NetFlow v9 read by packets: what the records reading calls missing in the gap, late
    # packets' records taken off (-1: not known; v9_convention recounts to it)
    cdef int64_t gap_rec[SEQ_MAX_GAPS]
    # ... read by records: what the packets reading calls missing (-1: not known) and where its
    # range starts (it ends where the records reading's does: the packet that opened the gap).
    # The records reading's gap leaves out the numbers after the packet that set what it
    # expects (that packet's records), the packets reading's does not: a late packet numbered
    # there fills the packets reading's gap only.
    cdef int64_t gap_pkt[SEQ_MAX_GAPS]
    cdef uint32_t gap_pkt_start[SEQ_MAX_GAPS]
    # The latest sequence numbers that filled a gap (a ring): a duplicate of one fills nothing.
    cdef uint32_t filled[SEQ_FILLED_RING]
    cdef int nfilled        # entries of the ring in use (at most SEQ_FILLED_RING)
    cdef int fill_pos       # where the next one goes
    # IPFIX only: the previous message's sequence number and record count (has_last: known, the
    # message decoded whole), and whether the exporter counts the message's own records in
    # its sequence number (softflowd does; RFC 7011 3.1 counts those sent before it).
    cdef bint has_last
    cdef bint inclusive
    cdef uint32_t last_seq
    cdef uint32_t last_count
    cdef uint16_t inc_votes     # steps that were this message's count (see ipfix_convention)
    cdef uint16_t rfc_votes     # ... the previous message's count
    cdef uint32_t held_lost     # records the RFC's reading would call lost, held while undecided
    cdef uint32_t held_start    # ... the numbers they were ([start, start + span), for late ones)
    cdef uint32_t held_span
    cdef int64_t held_ms        # ... since when (counted after SEQ_HELD_MS with no vote)
    cdef bint held_soft         # ... a step from a message of templates only: not counted after
                                # SEQ_HELD_MS, left to the votes (expire_held)
    cdef uint32_t prev_count    # the record count of the message before the latest
    # Late datagrams in no open gap that follow each other (a restart on the same port?): how
    # many, the number expected after the latest, and when the first arrived.
    cdef uint32_t late_run
    cdef uint32_t late_next
    cdef int64_t late_ms
    cdef int64_t export_s       # the latest export time (s) of the expected stream, -1 if none
    # sFlow (no export time): a datagram of the run the stream follows, its first since it was
    # (re)synced (run_uptime -1: none yet), and the uptime of the latest late one in a run
    cdef uint32_t run_seq
    cdef int64_t run_uptime
    cdef int64_t late_uptime
    # The exporter restarted (its uptime went back) at receive time restart_ms: for
    # SEQ_REORDER_MS, a datagram whose uptime is far ahead of the new one's is from before.
    cdef bint uptime_restarted
    cdef int64_t restart_ms
    # IPFIX: the process restarted, told by its systemInitTimeMilliseconds (IE 160), at receive
    # time restart_ms, the new run's first message exported at restart_export_s: for
    # SEQ_REORDER_MS, a message exported before that one is the old run's (before_restart).
    cdef bint init_restarted
    cdef int64_t restart_export_s
    # ... and the old run's clock (IE 160, ms; -1: not known): for SEQ_REORDER_MS a message that
    # carries it is the old run's whatever its export time (old_run_clock)
    cdef int64_t restart_old_init
    # NetFlow v9 only: the exporter numbers its packets by the flow records sent before them, as
    # NetFlow v5 does (Juniper), not by export packets (RFC 3954); see v9_convention, which
    # counts its votes in inc_votes (records) and rfc_votes (packets) and holds as IPFIX does.
    cdef bint by_records
    cdef bint uncounted         # the latest packet's record count is unknown (not decoded whole)
    # ... read by packets: the number the records reading expects (the furthest packet's number
    # and records; rec_known: no packet uncounted since), and how far the latest packet is past
    # it (rec_ahead, -1: not known), for gap_rec
    cdef bint rec_known
    cdef uint32_t rec_next
    cdef int64_t rec_ahead
    # ... read by records: the number the packets reading expects (the furthest packet's number
    # and one; pkt_known: set since the run began) and how far the latest packet is past it
    # (pkt_ahead, -1: not known), for gap_pkt
    cdef bint pkt_known
    cdef uint32_t pkt_next
    cdef int64_t pkt_ahead
    # ... the latest step that voted for the records reading: the packet it was from and where
    # that packet's records end, numbers no other packet has in that reading (vote_set: one
    # stands; a packet numbered there since takes it back, v9_convention)
    cdef bint vote_set
    cdef uint32_t vote_lo
    cdef uint32_t vote_hi
    # Gaps counted while the reading was open (reading_open) were counted as the smaller of the
    # two readings' losses; what each reading adds to that, counted once the reading is no
    # longer open (settle_undecided), never while it is: a loss is not known to be more.
    cdef int64_t undec_rfc
    cdef int64_t undec_inc


cdef inline bint sent_before_known(SeqStream st, uint32_t seq) noexcept:
    """An IPFIX message numbered seq was sent before what the stream already knows of: behind
    the number it expects (within SEQ_MAX_GAP), or at or behind the number of an uncounted
    message (SeqStream.floor: ipfix_forget)."""
    cdef uint32_t behind = st.next - seq
    return behind <= SEQ_MAX_GAP and ((st.synced and behind > 0) or st.floor)


cdef inline bint sent_after(int64_t export_s, int64_t latest_s) noexcept:
    """A datagram with header export time export_s was sent after a stream's latest, latest_s:
    later, or a minute or more earlier (a clock set back, with a restart or an NTP step)."""
    return export_s > latest_s or latest_s - export_s > SEQ_RESTART_UPTIME_MS // 1000


cdef inline bint sflow_other_run(SeqStream st, uint32_t seq, int64_t uptime) noexcept:
    """A late sFlow datagram (numbered seq, behind the stream's next) cannot be of the run the
    stream follows: sflow_version_5.txt increments the sequence number with each datagram a
    sub-agent sends, and its uptime is read at the send, so within one run a datagram numbered
    after another was sent at the same uptime or later (an agent that restarts starts both over,
    or its sequence alone when its uptime is the device's). Against the run's latest datagram
    (numbered next - 1) and its first one seen (run_seq): sent after the latest but numbered
    before it; numbered at or after the first but sent before it; or numbered like either with
    another uptime. (uptime wraps at 2^32 ms: "after" is a difference below 2^31.)"""
    cdef uint32_t u = <uint32_t>uptime
    if st.uptime >= 0:
        if 0 < <uint32_t>(u - <uint32_t>st.uptime) < 0x80000000u:
            return True
        if seq == st.next - 1 and u != <uint32_t>st.uptime:
            return True
    if st.run_uptime >= 0 and <uint32_t>(seq - st.run_seq) < 0x80000000u:
        if 0 < <uint32_t>(<uint32_t>st.run_uptime - u) < 0x80000000u:
            return True
        if seq == st.run_seq and u != <uint32_t>st.run_uptime:
            return True
    return False


cdef inline bint before_restart(SeqStream st, int64_t export_s, int64_t now_ms) noexcept:
    """An IPFIX message exported at export_s, within SEQ_REORDER_MS of its stream's restart told
    by IE 160, was sent before the new run's first message: the old run's, late (reordered on
    the path, or a copy). Within a run the export time, read at the send, never goes back, so no
    message of the new run is exported before its first; an old one exported in the same second
    as that one cannot be told so."""
    if not st.init_restarted:
        return False
    if aged(st.restart_ms, now_ms, SEQ_REORDER_MS):
        st.init_restarted = False
        return False
    return 0 <= export_s < st.restart_export_s


cdef inline bint old_run_clock(SeqStream st, int64_t sysinit, int64_t now_ms) noexcept:
    """A message whose options data carries `sysinit` (IE 160), within SEQ_REORDER_MS of its
    stream's restart told by IE 160, is the old run's when that is the old run's clock (as far
    as a clock read at each export jitters): a process restarted has a new one, so no third run
    within the second has the clock of the run before the last. The export time cannot tell so
    (before_restart): the old run's messages exported in the new run's first second, or after
    it by a clock set back at the restart (NTP at the exporter's boot), are not before it."""
    if not st.init_restarted or sysinit < 0 or st.restart_old_init < 0:
        return False
    if aged(st.restart_ms, now_ms, SEQ_REORDER_MS):
        return False
    return abs(sysinit - st.restart_old_init) <= SEQ_RESTART_UPTIME_MS


cdef inline bint numbering_decided(SeqStream st, bint inclusive) noexcept:
    """The votes of ipfix_convention have decided the stream's numbering: softflowd's (a message
    counting its own records, `inclusive`) or the RFC's, by two votes or more."""
    return st.inc_votes > st.rfc_votes + 1 if inclusive else st.rfc_votes > st.inc_votes + 1


cdef inline bint reading_open(SeqStream st) noexcept:
    """The stream is read the RFC's way (IPFIX and v5: the records before the message, not
    softflowd's / Open vSwitch's with its own, ipfix_convention; v9: by packets, not by records,
    v9_convention) without the RFC's votes leading: a gap's loss is either reading's (gap_adj
    tells the other's). (Where they lead, by one even, the RFC's reading stands, as a new
    stream of an exporter decided for it counts a loss shaped like the other's step.)"""
    return not (st.inclusive or st.by_records) and st.rfc_votes <= st.inc_votes


cdef inline uint64_t seq_mark(uint32_t seq, uint32_t adv) noexcept:
    """A message's sequence number and record count in one value (SeqPort.dom_last)."""
    return (<uint64_t>seq << 32) | adv


cdef class SeqPort:
    """One IPFIX exporting process (an exporter's UDP port) across its observation domains.
    RFC 7011 3.1 counts sequence numbers per domain; Open vSwitch counts one sequence over all
    the domains it exports (options records in domain 0, sampled flows in the domains of its
    sample actions). Where consecutive messages change domain, whether the number follows the
    port's previous message or the domain's own previous one is a vote; the port's sequence is
    one stream (SEQ_SHARED) while its votes lead."""
    cdef bint has_prev          # the port's previous message was counted (decoded whole)
    cdef uint32_t prev_domain
    cdef uint32_t prev_seq
    cdef uint32_t prev_adv
    cdef uint16_t shared_votes
    cdef uint16_t domain_votes
    cdef dict dom_last          # domain -> its last message's sequence << 32 | records (as of the
                                # port's latest change away from it)


# What a SeqStream / SeqPort holds, as the state file keeps it across a restart (ExporterState.
# sequences_state): every field, so that what is counted after the restart is what one run
# would have counted of the same datagrams (an undecided reading's gaps, counted as the
# smaller reading, undec_rfc / undec_inc, and a held loss, soft or not, wait for the votes of
# the next run; open gaps, none at a final save, which counts them first, are kept by the save
# as a stop begins: Decoder.export_sequences). Left out:
# the caches (ExporterState.cur_seq, cur_port), what is derived (pending_gaps, floor_bytes, dom_entries),
# and the msg_* fields of the message being decoded (msg_restarted: its IE 160 against the one
# kept, which the state file keeps as options data, "sysinit_ms", so a restart of the exporting
# process while the collector was down is told by its first message after). A field left out
# of an entry (a file of an earlier version) is what a new stream has.
cdef object seq_int(dict d, str name, object lo, object hi, object default=0):
    v = d.get(name, default)
    if type(v) is bool or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"sequence field {name} out of range")
    return v


cdef object seq_u32(dict d, str name):
    return seq_int(d, name, 0, 0xFFFFFFFF)


cdef object seq_i64(dict d, str name, object default=0):
    return seq_int(d, name, -(1 << 63), (1 << 63) - 1, default)


cdef bint seq_bool(dict d, str name) except -1:
    v = d.get(name, False)
    if not isinstance(v, bool):
        raise ValueError(f"sequence field {name} not a boolean")
    return v


cdef list seq_list(dict d, str name, Py_ssize_t most):
    v = d.get(name, [])
    if not isinstance(v, list) or len(v) > most:
        raise ValueError(f"sequence field {name} not a list of at most {most}")
    return v


cdef dict seq_stream_state(SeqStream st):
    cdef int i
    return {
        "kind": st.kind, "port": st.port, "domain": st.domain,
        "synced": st.synced, "floor": st.floor, "floor_known": st.floor_known, "floor_max": st.floor_max,
        # (undecoded data sets, bytes as hex; None: not kept, the floor's count is floor_max at most)
        "floor_sets": (None if st.floor_sets is None else
                       [[x[0], x[1], (<bytes>x[2]).hex()] for x in <list>st.floor_sets]),
        "floor_from_set": st.floor_from_set, "floor_from": st.floor_from, "floor_prev": st.floor_prev,
        "skipped": st.skipped, "next": st.next, "next_count": st.next_count, "last_set_next": st.last_set_next,
        "uptime": st.uptime,
        # the ring oldest first, so that it goes on in the same order
        "filled": [st.filled[(st.fill_pos - st.nfilled + i) % SEQ_FILLED_RING] for i in range(st.nfilled)],
        "has_last": st.has_last, "inclusive": st.inclusive, "last_seq": st.last_seq, "last_count": st.last_count,
        "inc_votes": st.inc_votes, "rfc_votes": st.rfc_votes,
        "held_lost": st.held_lost, "held_start": st.held_start, "held_span": st.held_span, "held_ms": st.held_ms,
        "held_soft": st.held_soft, "prev_count": st.prev_count,
        "late_run": st.late_run, "late_next": st.late_next, "late_ms": st.late_ms, "export_s": st.export_s,
        "run_seq": st.run_seq, "run_uptime": st.run_uptime, "late_uptime": st.late_uptime,
        "uptime_restarted": st.uptime_restarted, "restart_ms": st.restart_ms,
        "by_records": st.by_records, "uncounted": st.uncounted,
        "undec_rfc": st.undec_rfc, "undec_inc": st.undec_inc,
        # (v9 read by packets: what the records reading expects, for gap_rec; init_restarted and
        # restart_export_s are not kept: they last SEQ_REORDER_MS after an IE 160 restart, over by
        # the next start; rec_ahead is the latest packet's, set before each use)
        "rec_known": st.rec_known, "rec_next": st.rec_next,
        # (v9 read by records: what the packets reading expects, for gap_pkt)
        "pkt_known": st.pkt_known, "pkt_next": st.pkt_next,
        "vote_set": st.vote_set, "vote_lo": st.vote_lo, "vote_hi": st.vote_hi,
        # (none once Decoder.export_sequences has counted them: at the final save; the save as a
        # stop begins keeps them, for the next run to count if the process is killed before the
        # final one: the stopping run counts nothing from then on until it, Worker.stop)
        "gaps": [[st.gap_start[i], st.gap_span[i], st.gap_missing[i], st.gap_ms[i], st.gap_adj[i], st.gap_rec[i],
                  st.gap_pkt[i], st.gap_pkt_start[i]] for i in range(st.ngaps)],
    }


cdef SeqStream seq_stream_of(dict d):
    """A SeqStream from seq_stream_state's form; ValueError (or TypeError) for a bad entry."""
    cdef SeqStream st = SeqStream.__new__(SeqStream)
    cdef int i
    cdef list filled, sets
    cdef Py_ssize_t size = 0
    st.kind = seq_int(d, "kind", PROTO_NETFLOW5, PROTO_SFLOW5)
    if st.kind not in (PROTO_NETFLOW5, PROTO_NETFLOW7, PROTO_NETFLOW9, PROTO_IPFIX, PROTO_SFLOW5):
        raise ValueError("sequence field kind: no protocol")
    st.port = seq_int(d, "port", 0, 0xFFFF)
    # (an sFlow stream's key is its agent and sub-agent, 64 bits: sflow_stream)
    st.domain = seq_int(d, "domain", 0, 0xFFFFFFFFFFFFFFFF if st.kind == PROTO_SFLOW5 else SEQ_SHARED)
    st.synced = seq_bool(d, "synced")
    st.floor = seq_bool(d, "floor")
    st.floor_known = seq_u32(d, "floor_known")
    st.floor_max = seq_u32(d, "floor_max")
    if d.get("floor_sets") is not None:
        sets = []
        for x in seq_list(d, "floor_sets", SEQ_FLOOR_BYTES):
            if not (isinstance(x, list) and len(x) == 3 and isinstance(x[2], str)):
                raise ValueError("sequence field floor_sets: a bad set")
            body = bytes.fromhex(x[2])
            size += len(body)
            sets.append((seq_int({"v": x[0]}, "v", 0, 0xFFFFFFFF), seq_int({"v": x[1]}, "v", 0, 0xFFFF), body))
        if size > SEQ_FLOOR_BYTES:
            raise ValueError("sequence field floor_sets: too many bytes")
        st.floor_sets = sets
    st.floor_from_set = seq_bool(d, "floor_from_set")
    st.floor_from = seq_u32(d, "floor_from")
    st.floor_prev = seq_u32(d, "floor_prev")
    st.skipped = seq_bool(d, "skipped")
    st.next = seq_u32(d, "next")
    st.next_count = seq_u32(d, "next_count")
    st.last_set_next = seq_bool(d, "last_set_next")
    st.uptime = seq_i64(d, "uptime")
    # (none at a final save: Decoder.export_sequences counts every open gap before it saves;
    # the save as a stop begins keeps them, each what a gap found in one run could be)
    gaps = seq_list(d, "gaps", SEQ_MAX_GAPS)
    for i, g in enumerate(gaps):
        if not (isinstance(g, list) and len(g) == 8):
            raise ValueError("sequence field gaps: a bad gap")
        v = {"start": g[0], "span": g[1], "missing": g[2], "ms": g[3], "adj": g[4], "rec": g[5], "pkt": g[6],
             "pkt_start": g[7]}
        st.gap_start[i] = seq_u32(v, "start")
        st.gap_span[i] = seq_u32(v, "span")
        # (what a bad entry can count is bounded as a held loss is: count_oldest caps the other
        # reading's too)
        st.gap_missing[i] = seq_int(v, "missing", 0, SEQ_MAX_GAP)
        st.gap_ms[i] = seq_i64(v, "ms")
        st.gap_adj[i] = seq_int(v, "adj", -(1 << 40), 1 << 40)
        st.gap_rec[i] = seq_int(v, "rec", -1, 0xFFFFFFFF)
        st.gap_pkt[i] = seq_int(v, "pkt", -1, 0xFFFFFFFF)
        st.gap_pkt_start[i] = seq_u32(v, "pkt_start")
    st.ngaps = len(gaps)
    filled = seq_list(d, "filled", SEQ_FILLED_RING)
    for i, v in enumerate(filled):
        st.filled[i] = seq_u32({"v": v}, "v")
    st.nfilled = len(filled)
    st.fill_pos = st.nfilled % SEQ_FILLED_RING
    st.has_last = seq_bool(d, "has_last")
    st.inclusive = seq_bool(d, "inclusive")
    st.last_seq = seq_u32(d, "last_seq")
    st.last_count = seq_u32(d, "last_count")
    st.inc_votes = seq_int(d, "inc_votes", 0, 0xFFFF)
    st.rfc_votes = seq_int(d, "rfc_votes", 0, 0xFFFF)
    st.held_lost = seq_int(d, "held_lost", 0, SEQ_MAX_GAP)
    st.held_start = seq_u32(d, "held_start")
    st.held_span = seq_u32(d, "held_span")
    st.held_ms = seq_i64(d, "held_ms")
    st.held_soft = seq_bool(d, "held_soft")
    st.prev_count = seq_u32(d, "prev_count")
    st.late_run = seq_u32(d, "late_run")
    st.late_next = seq_u32(d, "late_next")
    st.late_ms = seq_i64(d, "late_ms")
    st.export_s = seq_i64(d, "export_s")
    st.run_seq = seq_u32(d, "run_seq")
    st.run_uptime = seq_i64(d, "run_uptime", -1)
    st.late_uptime = seq_i64(d, "late_uptime")
    st.uptime_restarted = seq_bool(d, "uptime_restarted")
    st.restart_ms = seq_i64(d, "restart_ms")
    st.by_records = seq_bool(d, "by_records")
    st.uncounted = seq_bool(d, "uncounted")
    # (each at most what SEQ_MAX_GAPS gaps of SEQ_MAX_GAP can add between two votes, a bound
    # on what one bad entry can count)
    st.undec_rfc = seq_int(d, "undec_rfc", 0, 1 << 40)
    st.undec_inc = seq_int(d, "undec_inc", 0, 1 << 40)
    st.rec_known = seq_bool(d, "rec_known")
    st.rec_next = seq_u32(d, "rec_next")
    st.rec_ahead = -1
    st.pkt_known = seq_bool(d, "pkt_known")
    st.pkt_next = seq_u32(d, "pkt_next")
    st.pkt_ahead = -1
    st.vote_set = seq_bool(d, "vote_set")
    st.vote_lo = seq_u32(d, "vote_lo")
    st.vote_hi = seq_u32(d, "vote_hi")
    return st


cdef dict seq_port_state(SeqPort sp):
    return {"has_prev": sp.has_prev, "prev_domain": sp.prev_domain, "prev_seq": sp.prev_seq,
            "prev_adv": sp.prev_adv, "shared_votes": sp.shared_votes, "domain_votes": sp.domain_votes,
            "dom_last": [[dom, mark] for dom, mark in sp.dom_last.items()]}


cdef SeqPort seq_port_of(dict d):
    cdef SeqPort sp = SeqPort.__new__(SeqPort)
    sp.has_prev = seq_bool(d, "has_prev")
    sp.prev_domain = seq_u32(d, "prev_domain")
    sp.prev_seq = seq_u32(d, "prev_seq")
    sp.prev_adv = seq_u32(d, "prev_adv")
    sp.shared_votes = seq_int(d, "shared_votes", 0, 0xFFFF)
    sp.domain_votes = seq_int(d, "domain_votes", 0, 0xFFFF)
    sp.dom_last = {}
    for e in seq_list(d, "dom_last", SEQ_MAX_STREAMS):
        if not (isinstance(e, list) and len(e) == 2):
            raise ValueError("sequence field dom_last: a bad entry")
        sp.dom_last[seq_u32({"v": e[0]}, "v")] = seq_int({"v": e[1]}, "v", 0, 0xFFFFFFFFFFFFFFFF)
    return sp


cdef inline bint seq_follows(uint32_t seq, uint32_t adv, uint32_t prev_seq, uint32_t prev_adv,
                             bint inclusive) noexcept:
    """A message numbered seq (adv records) follows one numbered prev_seq (prev_adv records),
    counted as the RFC does (the records before it) or, inclusive, as softflowd does (its own
    too; see ExporterState.ipfix_convention)."""
    return seq - adv == prev_seq if inclusive else seq == prev_seq + prev_adv


cdef class ExporterState:
    """Everything flowscope knows about one exporter (by IP): templates, clocks, rates, counters."""

    cdef readonly str ip
    cdef uint8_t addr[16]
    cdef uint8_t af
    cdef readonly dict templates        # (version << 48 | domain << 16 | template id) -> Template
    # The template the last data set used, by its key (an exporter sends one or a few templates'
    # data over and over: no dict key built and hashed a set). Forgotten whenever templates
    # change (store_template, drop_template).
    cdef Template last_t
    cdef uint64_t last_tkey
    cdef int last_tver
    # What options data teaches belongs to the exporting process that sent it, as templates do
    # (RFC 7011 3.1: Transport Session + Observation Domain): keyed by the UDP source port too,
    # so two processes on one host (softflowd per interface, OVS bridges) keep their own.
    cdef readonly dict domain_sampling  # (version, domain, port) -> rate learned from options data
    cdef readonly dict sampler_rates    # (version, domain, port, sampler id) -> rate
    cdef readonly dict interface_rates  # (version, domain, port, ifIndex) -> rate (interface-scoped options)
    cdef readonly dict egress_rates     # (version, domain, port, ifIndex) -> rate (egressInterface-scoped)
    cdef readonly dict template_rates   # (version, domain, port, template id) -> rate (template-scoped)
    # (version, domain, port) -> NameTable (ifIndex -> its name, learn_if_name): one table per
    # exporting process and domain, which its templates keep (Template.names_table), so that a
    # record's lookups (learned_names) are by its ifIndex alone, no key tuple built and hashed
    cdef readonly dict interface_names
    # interface_names has had an entry: decode_data_set looks a set's table up only then
    # (a field read per set; never cleared, as narrow_rates)
    cdef bint has_if_names
    cdef Py_ssize_t names_count        # names in interface_names' tables (its bound, state_size)
    cdef uint64_t names_gen            # counts the tables' coming and going (Template.names_table)
    cdef Py_ssize_t names_bytes        # bytes of those names (state_size)
    # egress_rates or template_rates has had an entry: resolve_sampling looks them up only then
    # (a field read per record, not two dict sizes; never cleared, a stale True costs lookups)
    cdef bint narrow_rates
    cdef readonly dict sysinit_ms       # (version, domain, port) -> systemInitTimeMilliseconds (IE 160)
    # IPFIX exporting process (UDP source port) -> receive time it withdrew its last template
    # (RFC 7011 8.1), until it defines one again: saved, so that a copy of its templates older
    # than the withdrawal (another replica's, in a shared state file) does not bring them back
    cdef readonly dict withdrawn
    cdef public uint32_t configured_sampling   # from --sampling CIDR=RATE / --default-sampling
    cdef public uint32_t cidr_sampling         # explicit CIDR rate (0 = none matched)
    cdef readonly uint64_t datagrams
    cdef readonly uint64_t flows
    cdef readonly uint64_t missing_template_sets
    cdef readonly uint64_t missing_template_records_sets
    cdef readonly uint64_t templates_evicted  # templates forgotten for new ones (table full)
    cdef readonly dict errors
    cdef readonly dict dropped
    cdef readonly str protocol
    cdef readonly uint32_t last_sampling
    cdef uint64_t* dedup_keys
    cdef int64_t* dedup_times
    cdef uint64_t* ingress_ports       # sampled_twin: (process, domain, input port) keys of sampled ingress records
    cdef dict _by_protocol             # protocol name -> {"datagrams", "flows", "errors", ...}
    # datagrams and flows by protocol slot (PROTO_SLOTS) not yet added to _by_protocol: the
    # decoder counts every datagram here in C, by_protocol adds them when read
    cdef uint64_t slot_datagrams[8]
    cdef uint64_t slot_flows[8]
    cdef str cur_protocol
    cdef public double last_seen       # receive time of its latest datagram (eviction order)
    cdef readonly Py_ssize_t template_fields  # fields of its templates (Decoder.max_template_fields)
    cdef dict seq_streams              # (protocol kind, port, domain) -> SeqStream
    # The numbering its NetFlow v5 and IPFIX streams decided (ipfix_convention): -1 none yet, 0
    # the RFC's / Cisco's, 1 a message's own records included. A new stream of the protocol (a
    # new source port) starts with it: Open vSwitch reopens its NetFlow socket at every bridge
    # reconfiguration (netflow_set_options), a pod's port added among them, and a stream that
    # short seldom sees the two size changes that decide it (its first one was held, then
    # counted as lost when none came).
    cdef signed char reading_v5, reading_ipfix
    cdef SeqStream cur_seq             # the stream of its latest datagram (no dict lookup and no key
                                       # tuple per datagram while one stream follows another)
    cdef dict seq_ports                # IPFIX exporter port -> SeqPort
    cdef dict tid_latest               # IPFIX port << 16 | template id -> its latest Template in any domain
    cdef bint borrow_logged            # borrowed_template said so once
    cdef SeqPort cur_port              # ... of its latest IPFIX message
    cdef uint32_t cur_port_no
    cdef Py_ssize_t dom_entries        # SeqPort.dom_last entries of all its ports (state_size)
    cdef set tpl_domains               # IPFIX port << 32 | domain that sent template sets (borrowed_template)
    cdef set borrowers                 # ... that read data with another domain's templates
    cdef uint32_t msg_seq              # the IPFIX message being decoded: its sequence number
    cdef int64_t msg_export_s          # ... and its export time (s)
    cdef public Py_ssize_t pending_gaps  # open sequence gaps of all its streams (settle_gaps skips when 0)
    cdef dict drops_seen               # sFlow (stream, sample kind and source) -> its drops counter's last value
    cdef readonly dict not_sent_seen   # IPFIX (port, domain, exportingProcessId, unit) -> its notSent total's last
                                       # value, and its message's sequence number and export time
    cdef int64_t clk_cur               # smallest receive - export time (ms) in the current window
    cdef int64_t clk_prev              # ... in the previous one (clock_shift)
    cdef int64_t clk_start             # receive time (ms) the current window began; 0 = none yet
    cdef double rl_tokens              # --max-exporter-rate token bucket: datagrams it may still send
    cdef double rl_time                # ... as of this receive time (0 = never limited yet)
    cdef uint64_t msg_records          # data records of the IPFIX message / v9 packet being decoded
    cdef uint64_t msg_opt_records      # ... of them options records (v9_convention counts flows only)
    cdef bint msg_uncounted            # ... some of which could not be counted (unknown template)
    cdef bint msg_restarted            # ... its options data told a restart of the process (learn_options)
    cdef int64_t msg_old_init          # ... the clock (IE 160) of the run that restart ended
    cdef bint msg_old_run              # ... its options data carries the clock of the run a restart just ended
    cdef uint64_t msg_unknown_bytes    # ... the bytes those records are in (each record is one at least)
    cdef list msg_unknown_sets         # ... its data sets without their template (floor_sets), None: none
    cdef bint msg_sets_kept            # ... every undecoded record is in msg_unknown_sets
    # reading the options data of a datagram refused before decoding (refuse_ipfix): what is
    # wrong in it is not counted (count_error) nor logged, the refusal is the datagram's reason
    cdef bint refusing
    cdef Py_ssize_t floor_bytes        # bytes of its streams' floor_sets (state_size)
    cdef Py_ssize_t state_bytes        # its state_size() as last added to Decoder.state_bytes
    cdef AgentMemo agent_memo          # its node, as the enricher's view last answered (enrich_batch)
    # Decoder.series_changed(): in its list of exporters to read again (dirty), and read by it
    # at least once (seen: the caller holds its entry, to be told when it is evicted)
    cdef bint series_dirty, series_seen
    cdef bint gapped                   # in Decoder._gapped
    # receive time (ms) of its latest datagram of the previous run, whose sequence state it has
    # (Decoder.import_sequences) and has not heard from since (resume_sequences); 0: none
    cdef int64_t seq_restored_ms

    def __cinit__(self):
        self.dedup_keys = NULL
        self.dedup_times = NULL
        self.ingress_ports = NULL
        self.agent_memo.epoch = 0

    def __dealloc__(self):
        free(self.dedup_keys)
        free(self.dedup_times)
        free(self.ingress_ports)

    def __init__(self, str ip):
        cdef bytes raw
        self.ip = ip
        try:
            # the address without its IPv6 zone: "fe80::1%eth0", a link-local exporter as the
            # receiver names it (getnameinfo), is AgentIP fe80::1 (inet_pton refuses a zone, and
            # its flows went out with no AgentIP); the zone stays in the exporter's name (self.ip)
            raw = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip.partition("%")[0])
        except OSError:
            raw = b""
        self.af = 4 if len(raw) == 4 else (6 if len(raw) == 16 else 0)
        if self.af:
            memcpy(self.addr, <const uint8_t*>raw, len(raw))
        self.templates = {}
        self.domain_sampling = {}
        self.sampler_rates = {}
        self.interface_rates = {}
        self.egress_rates = {}
        self.template_rates = {}
        self.interface_names = {}
        self.sysinit_ms = {}
        self.withdrawn = {}
        self.errors = {}
        self.dropped = {}
        self.protocol = ""
        self.cur_protocol = "unknown"
        self._by_protocol = {}
        memset(self.slot_datagrams, 0, sizeof(self.slot_datagrams))
        memset(self.slot_flows, 0, sizeof(self.slot_flows))
        self.seq_streams = {}
        self.reading_v5 = self.reading_ipfix = -1
        self.seq_ports = {}
        self.tid_latest = {}
        self.tpl_domains = set()
        self.borrowers = set()
        self.drops_seen = {}
        self.not_sent_seen = {}

    cdef Py_ssize_t state_size(self) noexcept:
        """Estimated bytes of its state beside templates (those have their own bound,
        Decoder.max_template_fields), for Decoder.max_state_bytes: each kind of entry at about
        what it was measured to cost (tracemalloc; tests/test_robustness.py checks the estimate
        stays within a third of what the state really takes)."""
        return (STATE_BYTES_EXPORTER
                + STATE_BYTES_ENTRY * (len(self.domain_sampling) + len(self.sampler_rates)
                                       + len(self.interface_rates) + len(self.egress_rates) + len(self.template_rates)
                                       + len(self.sysinit_ms) + len(self.drops_seen) + len(self.withdrawn)
                                       + len(self.not_sent_seen))
                + STATE_BYTES_NAME * self.names_count + self.names_bytes
                + STATE_BYTES_STREAM * (len(self.seq_streams) + len(self.seq_ports)) + self.floor_bytes
                + STATE_BYTES_ENTRY * (self.dom_entries + len(self.tpl_domains) + len(self.borrowers))
                + (DEDUP_SLOTS * (sizeof(uint64_t) + sizeof(int64_t)) if self.dedup_keys != NULL else 0)
                + (INGRESS_SLOTS * sizeof(uint64_t) if self.ingress_ports != NULL else 0))

    @property
    def by_protocol(self):
        """protocol name -> {"datagrams", "flows", "errors", "missing_template_sets", ...}: the
        exporter's own dicts, read them, never keep or change them."""
        return self.protocol_counts()

    cdef void count_names(self):
        """names_count and names_bytes again, after tables of interface_names were removed."""
        cdef NameTable table
        cdef Py_ssize_t i
        self.names_count = self.names_bytes = 0
        for table in self.interface_names.values():
            self.names_count += table.count
            for i in range(table.count):
                self.names_bytes += PyBytes_GET_SIZE(<object>table.vals[i])

    cdef dict flat_names(self):
        """interface_names as the state file has it: (version, domain, port, ifIndex) -> name."""
        cdef NameTable table
        return {process + (ifindex,): name for process, table in self.interface_names.items()
                for ifindex, name in table.items()}

    cdef void set_names(self, dict flat):
        """interface_names from flat_names' form (a state file loaded into it), counted again."""
        cdef dict tables = {}
        cdef NameTable table
        for key, name in flat.items():
            table = tables.get(key[:3])
            if table is None:
                table = tables[key[:3]] = NameTable()
            table.put(key[3], name)
        self.interface_names = tables
        self.names_gen += 1
        if tables:
            self.has_if_names = True
        self.count_names()

    cdef dict protocol_counts(self):
        """_by_protocol with the datagrams and flows counted in the slots added."""
        cdef int i
        cdef dict d
        for i in range(PROTO_SLOT_COUNT):
            if self.slot_datagrams[i] or self.slot_flows[i]:
                d = self.proto_stats(PROTO_SLOTS[i])
                d["datagrams"] += self.slot_datagrams[i]
                d["flows"] += self.slot_flows[i]
                self.slot_datagrams[i] = 0
                self.slot_flows[i] = 0
        return self._by_protocol

    cdef dict proto_stats(self, str name):
        cdef dict d = self._by_protocol.get(name)
        if d is None:
            d = self._by_protocol[name] = {"datagrams": 0, "flows": 0, "errors": {}, "missing_template_sets": 0,
                                          "sequence_lost": 0, "sequence_resets": 0, "templates_evicted": 0,
                                          "sample_drops": 0, "counter_samples_ignored": 0, "samples_skipped": 0,
                                          "not_sent": {}}
        return d

    cdef void sequence(self, int kind, uint32_t port, uint64_t domain, uint32_t seq, uint32_t advance,
                       int64_t uptime, int64_t now_ms, int64_t export_s=-1, bint restarted=False) noexcept:
        """An export's sequence number against the one expected from the same exporting process
        (port) and domain. A forward jump is a gap: what never arrived (in the protocol's unit:
        flows for v5, records for IPFIX, datagrams for v9 and sFlow), unless datagrams behind the
        expected number fill it within SEQ_REORDER_MS (reordered on the path); a datagram ahead
        whose header uptime (v5, v7, v9, sFlow) went back by more than SEQ_RESTART_UPTIME_MS is a
        restart, not a gap. What is left of a gap then is counted as lost (settle_gaps, or the stream's next datagram); up to
        SEQ_MAX_GAPS gaps are open at once (a newer one counts the oldest). A jump of more than
        SEQ_MAX_GAP either way is a restart. A datagram behind is a late one, unless the header's
        uptime (v5, v9, sFlow; `uptime` -1 for IPFIX, which has none) went back by more than
        SEQ_RESTART_UPTIME_MS too: the exporter restarted, its sequence with it (an uptime going
        back while the sequence goes on, as `flowscope replay` loops a capture, is no restart),
        or late datagrams sent after the stream's latest (their header's export time, `export_s`,
        -1 for sFlow, which has none) keep following each other in sequence (SEQ_RESTART_RUN,
        over SEQ_REORDER_MS, with none of the expected stream between them: a process restarted
        on the same port, less than SEQ_MAX_GAP behind, which IPFIX has no uptime to tell; copies
        of old datagrams on a slower path carry old export times). `restarted`: the datagram's
        own options data told that the exporting process restarted (IPFIX, learn_options), read
        as an uptime gone back.
        A late datagram that falls in no open gap (its gap was counted, or it is a duplicate)
        changes nothing."""
        cdef SeqStream st = self.cur_seq
        cdef uint32_t ahead, behind, back
        cdef bint went_back
        cdef int i
        if st is None or st.kind != kind or st.port != port or st.domain != domain:
            st = self.seq_stream(kind, port, domain)
        if st.ngaps and gap_expired(st.gap_ms[0], now_ms):
            self.count_gaps(st, now_ms)
        if st.synced and st.uptime_restarted and uptime >= 0 and st.uptime >= 0:
            if aged(st.restart_ms, now_ms, SEQ_REORDER_MS):
                st.uptime_restarted = False
            elif SEQ_RESTART_UPTIME_MS // 2 < <uint32_t>(uptime - st.uptime) < 0x80000000u:
                # Sent before the restart, late (reordered on the path, or a copy): the old run's
                # uptime was more than SEQ_RESTART_UPTIME_MS ahead of the new one's, and less
                # than SEQ_REORDER_MS since, no datagram of the new run is half that far ahead.
                # Read on, its sequence number, of the old run, was a gap or a jump (a restart),
                # and the next datagram of the new run another restart: thousands lost, two
                # restarts and the old run's cumulative counters (sFlow's drops) counted again.
                # Like a late datagram, it changes nothing.
                return
        if kind == PROTO_IPFIX and (before_restart(st, export_s, now_ms) or self.msg_old_run):
            # The same for IPFIX, which has no header uptime: a message of the old run arriving
            # after the new run's first, read on, was a gap up to the old run's number (the new
            # run numbered behind it: hundreds of records counted lost), the new run's next
            # messages late behind it, and after a second of them a second restart.
            return
        if restarted:
            # RFC 7011 3.1 numbers a process's messages from its start: the new run's number
            # says nothing of the old run's. A restart told by IE 160 (learn_options: moved by
            # more than a minute) is one whatever the number: on a stream not followed (after
            # a message not decoded whole, or new) or numbered exactly as the old run's next
            # message would have been, it was read as no restart, or its floor settled across
            # the two runs (the distance between their numbers counted lost).
            self.restarted_run(st, now_ms, export_s)
        if (kind == PROTO_IPFIX and advance == 0
                and (st.floor or st.synced and <uint32_t>(st.next - seq) <= SEQ_MAX_GAP)):
            # RFC 7011 3.1: the number counts the Data Records sent before the message. One
            # without any (template-only) at or behind the number expected tells nothing new in
            # either reading (ipfix_convention): Open vSwitch numbers its template-only messages
            # like the data message it sends next. Arriving after that one, as a vote it read as
            # a message counting its own records (softflowd's way): a few refreshes reordered so
            # turned the reading, and every refresh in order after that counted a record lost;
            # as a late one into the gap before a data message that overtook them all, it was
            # remembered as filling its number, and the data message numbered like it, when it
            # came, was taken for a duplicate: its record counted lost.
            # After an uncounted message (the floor) neither: the message with records that
            # follows settles what lies between (settle_floor), with the templates of the whole
            # refresh known by then (Open vSwitch spreads its 89 over 18 messages, and the
            # uncounted message's may be in any of them).
            return
        # uptime wraps at 2^32 ms (49.7 days): "went back" is a difference below 2^31
        back = <uint32_t>(st.uptime - uptime) if st.synced and uptime >= 0 and st.uptime >= 0 else 0
        went_back = SEQ_RESTART_UPTIME_MS < back < 0x80000000u or restarted
        # A datagram whose uptime went back is of the exporter's next run (or `flowscope
        # replay`'s next loop): its step from the latest is no vote on the numbering. Taken for
        # one on a stream not decided yet, a restart numbered the previous datagram's count past
        # it was held as a possible loss and read as in order: counted lost, and no restart.
        if kind == PROTO_IPFIX or kind == PROTO_NETFLOW5:
            if st.held_lost and aged(st.held_ms, now_ms, SEQ_HELD_MS):
                self.expire_held(st)        # no vote came to decide: the RFC's reading stands
            seq = self.ipfix_convention(st, seq, &advance, now_ms, not went_back)
        elif kind == PROTO_NETFLOW9:
            if st.held_lost and aged(st.held_ms, now_ms, SEQ_HELD_MS):
                self.expire_held(st)
            self.v9_convention(st, seq, &advance, now_ms, not went_back)
        st.last_set_next = False
        if st.synced:
            ahead = seq - st.next
            behind = st.next - seq
            if ahead == 0:
                if (st.by_records and st.pkt_ahead > 0 and st.inc_votes <= st.rfc_votes + V9_BACK_VOTES
                        and st.ngaps < SEQ_MAX_GAPS):
                    # v9 read by records, in order, past packets the packets reading has not
                    # had: while the votes could still turn back to that reading, its gap
                    # (gap_pkt; none read by records), for v9_to_packets to count, as late
                    # packets fill it. Not kept, a stream RFC 3954 numbers, taken for the
                    # records reading by two losses that looked like its steps, lost the
                    # packets of every step until the votes turned back.
                    self.open_gap(st, seq, 0, 0, now_ms)
                    st.gap_pkt[st.ngaps - 1] = st.pkt_ahead
                    st.gap_pkt_start[st.ngaps - 1] = seq - <uint32_t>st.pkt_ahead
            elif ahead <= SEQ_MAX_GAP and not went_back:
                self.open_gap(st, st.next, ahead, self.other_reading(st, advance, ahead), now_ms)
                if kind == PROTO_NETFLOW9:
                    if not st.by_records:
                        st.gap_rec[st.ngaps - 1] = st.rec_ahead
                    elif st.pkt_ahead >= 0:
                        st.gap_pkt[st.ngaps - 1] = st.pkt_ahead
                        st.gap_pkt_start[st.ngaps - 1] = seq - <uint32_t>st.pkt_ahead
            elif behind <= SEQ_MAX_GAP and not went_back:
                if self.late(st, seq, advance, now_ms, export_s, uptime):
                    return
            else:
                # A jump past SEQ_MAX_GAP either way, or the exporter restarted: sequence and
                # uptime went back. A datagram numbered after the latest but sent more than
                # SEQ_RESTART_UPTIME_MS before it is a restart too: within one run the sequence
                # and the header's uptime, read at the send, both go forward (sflow_version_5.txt
                # numbers an sFlow sub-agent's datagrams one by one, sflow_other_run; NetFlow v5 /
                # v7 number the flows sent, v9 the export packets, RFC 3954 5.1, each with the
                # sysUpTime at export), so it is the first datagram seen of the exporter's new
                # run, numbered past the old run's latest (its first ones lost, or the old run a
                # short one); read as a gap, the difference between two runs' numbers was counted
                # lost, up to SEQ_MAX_GAP of it, and no restart. (`flowscope replay` keeps the
                # v5/v9 header uptime of each loop, its flows' times count from it, and continues
                # the sequence exactly: in order, no gap, whatever the uptime.)
                self.restart(st)
                st.uptime_restarted = went_back
                st.restart_ms = now_ms
        elif st.floor and <uint32_t>(st.next - seq) <= SEQ_MAX_GAP and (st.next != seq or not st.inclusive):
            # At or behind the number of a message that was not counted (ipfix_forget): sent
            # before it, late. Open vSwitch numbers its template-only messages as the data
            # message it sends next (the options record that follows its templates): that one
            # arriving first, without its options template, and then its templates, the stream
            # would be read from the templates' number, and the options record, never counted,
            # taken for a lost one at the next data message. (Read softflowd's way, the number
            # counts that message's own records: the next message is numbered like it.)
            if self.late(st, seq, advance, now_ms, export_s, uptime):
                return
        elif st.floor:
            self.settle_floor(st, seq, advance, st.inclusive, now_ms)
        if st.floor_sets is not None:
            self.clear_floor(st)
        st.floor = False
        st.skipped = False
        st.late_run = 0
        st.synced = not (st.uncounted and st.by_records)    # (the next packet sets the expectation)
        st.next = seq + advance
        st.next_count = st.last_count
        st.last_set_next = True
        st.uptime = uptime
        if st.run_uptime < 0 and uptime >= 0:
            st.run_seq = seq
            st.run_uptime = uptime
        if sent_after(export_s, st.export_s):
            st.export_s = export_s

    cdef int restarted_run(self, SeqStream st, int64_t now_ms, int64_t export_s) except -1:
        """The stream's next message, exported at export_s, is the first of the process's new run,
        told by IE 160: a restart (counted, the old run's open gaps with it), the old run's loss
        before its uncounted message counted (floor_before), its number and floor no longer
        followed, and its late messages told for SEQ_REORDER_MS (before_restart). One place for
        both paths that read IE 160 (sequence, and a message not decoded whole)."""
        if st.floor:
            self.floor_before(st, now_ms)
        self.restart(st)
        st.synced = False
        st.floor = False
        st.skipped = False
        st.late_run = 0
        self.clear_floor(st)
        st.init_restarted = export_s >= 0
        st.restart_ms = now_ms
        st.restart_export_s = export_s
        st.restart_old_init = self.msg_old_init if self.msg_restarted else -1
        return 0

    cdef int64_t other_reading(self, SeqStream st, uint32_t advance, uint32_t ahead) noexcept:
        """How much more the reading the stream does not follow would call lost in the gap of
        `ahead` before a datagram of `advance` (gap_adj: count_oldest takes the smaller while
        the reading is open, a switch to the other reading recounts with it; 0 for sFlow and v7).
        IPFIX and v5 read the RFC's way: the previous message's count less this one's (softflowd's
        numbers leave its options records out, ipfix_convention); read softflowd's way, the
        reverse. v9 read by packets: read by records, the packet that set what is expected is
        followed by its records' numbers, not by one
        (unknown records: no loss is certain); never more than by packets (a template-only
        packet numbered like the data packet after it sets what the packets reading expects, and
        that data packet is late by it, in order by records)."""
        cdef uint64_t opt
        if st.kind == PROTO_IPFIX or st.kind == PROTO_NETFLOW5:
            if st.inclusive:                # (advance: its data records already, ipfix_convention)
                return <int64_t>advance - <int64_t>st.prev_count
            opt = self.msg_opt_records if st.kind == PROTO_IPFIX else 0
            return <int64_t>st.prev_count - <int64_t>(advance - opt if opt < advance else advance)
        if st.kind == PROTO_NETFLOW9 and not st.by_records:
            return min(0, 1 - <int64_t>st.next_count) if st.next_count != V9_UNCOUNTED else -<int64_t>ahead
        return 0

    cdef bint late(self, SeqStream st, uint32_t seq, uint32_t advance, int64_t now_ms, int64_t export_s,
                   int64_t uptime) noexcept:
        """A datagram numbered behind what its stream expects (see sequence): it fills what it
        can of the range held back or of an open gap, or it is old and changes nothing (True),
        or it is the run of a process restarted on the same port: the stream restarted, and the
        datagram begins its new sequence (False)."""
        if self.fill_late(st, seq, advance):
            return True
        # Behind and in no open gap: a duplicate, a gap counted already, or an exporting process
        # that restarted on the same port with a sequence less than SEQ_MAX_GAP behind (IPFIX
        # has no uptime to tell; an sFlow agent's uptime, since its start, went back by less than
        # SEQ_RESTART_UPTIME_MS when it restarts within a minute of its start). A restarted one
        # sends nothing but its new sequence: late datagrams that follow each other, with none
        # of the expected stream between them, for SEQ_REORDER_MS (a burst that was late for its
        # gap comes at once, and the stream goes on).
        if export_s >= 0:
            if not sent_after(export_s, st.export_s):
                return True             # sent before the expected stream's latest: old
            if st.late_run and seq == st.late_next:
                st.late_run += 1
            else:
                st.late_run = 1
                st.late_ms = now_ms
        elif uptime >= 0:
            # sFlow has no export time: the run begins with a datagram that cannot be of the
            # run the stream follows (sflow_other_run), and goes on with datagrams numbered one
            # after the other whose uptime does not go back (a copy of the old run's is neither:
            # copies on a slower path are old datagrams)
            if st.late_run and seq == st.late_next and <uint32_t>(uptime - st.late_uptime) < 0x80000000u:
                st.late_run += 1
            elif sflow_other_run(st, seq, uptime):
                st.late_run = 1
                st.late_ms = now_ms
            else:
                return True
            st.late_uptime = uptime
        else:
            return True
        st.late_next = seq + advance
        if st.late_run < SEQ_RESTART_RUN or not aged(st.late_ms, now_ms, SEQ_REORDER_MS):
            return True                 # what is expected stays
        self.restart(st)                # a new sequence for a second
        return False

    cdef bint fill_late(self, SeqStream st, uint32_t seq, uint32_t advance) noexcept:
        """A late datagram numbered seq (advance records) into the range held back or into an
        open gap fills what it can of it (True); False when it falls in neither."""
        cdef uint32_t fill
        cdef int i, j
        cdef bint inside, by_pkt
        if st.held_lost and <uint32_t>(seq - st.held_start) < st.held_span:
            # late into the range held back (ipfix_convention): not lost after all
            st.late_run = 0
            if advance >= st.held_lost:
                self.count_held(st, False)
            else:
                st.held_lost -= advance
            return True
        for i in range(st.ngaps):
            inside = <uint32_t>(seq - st.gap_start[i]) < st.gap_span[i]
            # (v9 read by records: or in the packets reading's wider range only, see gap_pkt)
            by_pkt = (st.kind == PROTO_NETFLOW9 and st.by_records and st.gap_pkt[i] >= 0
                      and <uint32_t>(seq - st.gap_pkt_start[i]) < <uint32_t>(st.gap_start[i] + st.gap_span[i]
                                                                           - st.gap_pkt_start[i]))
            if inside or by_pkt:
                st.late_run = 0
                for j in range(st.nfilled):
                    if st.filled[j] == seq:
                        return True     # a duplicate of a late one: fills nothing
                st.filled[st.fill_pos] = seq
                st.fill_pos = (st.fill_pos + 1) % SEQ_FILLED_RING
                if st.nfilled < SEQ_FILLED_RING:
                    st.nfilled += 1
                if inside:
                    fill = advance if advance < st.gap_missing[i] else st.gap_missing[i]
                    st.gap_missing[i] -= fill
                if st.kind == PROTO_NETFLOW9 and not st.by_records and st.gap_rec[i] > 0:
                    # read by records, the packet fills its records (not known: nor the loss)
                    st.gap_rec[i] = (-1 if st.last_count == V9_UNCOUNTED else
                                     max(0, st.gap_rec[i] - <int64_t>st.last_count))
                    # ... and the smaller reading counted while the votes are open (count_oldest)
                    # with it: kept from the gap's opening, a packet of 2 records filling a gap
                    # of 4 records took off 1, not 2, and the stream, Juniper's, counted 3 lost
                    # records where its lost packet held 2
                    st.gap_adj[i] = (-<int64_t>st.gap_missing[i] if st.gap_rec[i] < 0 else
                                     min(0, st.gap_rec[i] - <int64_t>st.gap_missing[i]))
                elif by_pkt and st.gap_pkt[i] > 0:
                    st.gap_pkt[i] -= 1      # read by packets, the packet fills one
                return True
        return False

    cdef SeqStream seq_stream(self, int kind, uint32_t port, uint64_t domain):
        """The stream of (protocol kind, exporting process, domain), made if new; the current one."""
        cdef SeqStream st
        cdef int reading
        cdef object key
        key = (kind, port, domain)
        st = self.seq_streams.get(key)
        if st is None:
            if len(self.seq_streams) >= SEQ_MAX_STREAMS:
                self.settle_gaps(-1)        # bounded: a spray of domains or ports only
                self.seq_streams.clear()    # starts tracking over
                self.floor_bytes = 0
                self.seq_ports.clear()
                self.dom_entries = 0
                self.cur_port = None
            st = SeqStream.__new__(SeqStream)
            st.kind, st.port, st.domain = kind, port, domain
            st.run_uptime = -1
            reading = (self.reading_v5 if kind == PROTO_NETFLOW5 else
                       self.reading_ipfix if kind == PROTO_IPFIX else -1)
            if reading == 1:                # decided as by the votes of another stream
                st.inclusive = True
                st.inc_votes = 2
            elif reading == 0:
                st.rfc_votes = 2
            self.seq_streams[key] = st
        self.cur_seq = st
        return st

    cdef void count_held(self, SeqStream st, bint lost=True) noexcept:
        """Settle the loss ipfix_convention held back: lost (the RFC's reading stands), or not."""
        if st.held_lost:
            if lost:
                self.proto_stats(PROTOCOL_NAMES[st.kind])["sequence_lost"] += st.held_lost
            st.held_lost = 0
            st.held_soft = False
            self.pending_gaps -= 1

    cdef void expire_held(self, SeqStream st) noexcept:
        """The loss held back is settled with no vote that decides (SEQ_HELD_MS, a restart, the
        end): the RFC's reading stands, unless it was held soft (hold), then it waits for the
        RFC's votes to lead (settle_undecided)."""
        if st.held_soft:
            st.undec_rfc += st.held_lost
            self.count_held(st, False)
        else:
            self.count_held(st)

    cdef uint32_t ipfix_convention(self, SeqStream st, uint32_t seq, uint32_t* advance, int64_t now_ms,
                                   bint vote) noexcept:
        """RFC 7011 3.1: an IPFIX message's sequence number counts the Data Records sent before
        it. softflowd counts the message's own records too (its first message carries the
        number of records in it). Where two messages in a row (both decoded whole) differ in
        record count, the step between their numbers is a vote: the previous message's count
        (the RFC's reading) or this one's (the other). A stream is read the other way once those
        votes lead by two, and back when they no longer do; a loss can look like one vote, never
        like a run of them. While they lead by one only (a new stream's first count change),
        the step opens no gap: what the RFC's reading would call lost is held back (late
        datagrams fill it as a gap's), and counted when a vote for the RFC comes, or after
        SEQ_HELD_MS without a deciding vote; gaps still open when the reading changes are
        recounted (gap_adj). Options records, which softflowd leaves out, may make its step
        smaller than the count: up to the count, the step is what the message advanced by.
        NetFlow v5 is read the same way (its flow_sequence counts the flows before the datagram):
        Open vSwitch sets it to the number of the datagram's last record (ofproto/netflow.c
        gen_netflow_rec: `flow_seq = netflow_cnt++` for every record it adds), its own records
        but one, so its steps are the new datagram's count too. Without `vote` (a datagram of
        another run, see sequence) the step is no vote."""
        cdef uint32_t step = seq - st.last_seq
        cdef uint32_t n0
        cdef uint64_t opt = self.msg_opt_records if st.kind == PROTO_IPFIX else 0
        if (vote and st.kind == PROTO_IPFIX and not st.has_last and not st.synced and not st.floor
                and st.inc_votes == 0 and st.rfc_votes == 0 and opt < advance[0] and seq == advance[0] - opt):
            # A new stream's first message numbered exactly its own data records: softflowd's
            # first (its templates, its options record and 24 flows, numbered 24). The RFC's
            # first message is numbered 0, and one seen later is numbered so only if exactly
            # that many records came before it. Without this vote, softflowd's next messages,
            # full ones of 32 flows, were one vote for its reading and none after: the 7 the
            # RFC's reading puts between 24 + 25 and 56 were held, and counted lost at the
            # end of a capture or after SEQ_HELD_MS.
            st.inc_votes = 1
        if vote and st.has_last and st.synced and advance[0] != st.last_count:
            if step == advance[0]:
                if st.inc_votes < 0xFFFF:
                    st.inc_votes += 1
                if not st.inclusive and st.inc_votes > st.rfc_votes + 1:
                    st.inclusive = True
                    self.count_held(st, False)          # it was no loss
                    # read this way: after the message that set it, or after the previous one
                    # where that one, taken for late (behind by what the RFC's reading adds),
                    # comes in order after it by this reading (softflowd's template refresh: 24
                    # flows and its options record, numbered 24 on, read late by 8 while undecided;
                    # the stream set back to the message before, its 24 were counted lost at the
                    # next). A previous message not so (a process restarted on the same port) moves
                    # nothing.
                    n0 = st.next - st.next_count
                    st.next = st.last_seq if <uint32_t>(st.last_seq - n0) <= st.last_count else n0
                    self.recount_gaps(st)               # and the gaps still open
                elif not st.inclusive and st.inc_votes > st.rfc_votes:
                    # from a message of templates only (last_count 0): see hold's `soft`
                    self.hold(st, seq, now_ms, st.last_count == 0)
            elif step == st.last_count:
                if st.rfc_votes < 0xFFFF:
                    st.rfc_votes += 1
                self.count_held(st)
                if st.inclusive and st.rfc_votes + 1 >= st.inc_votes:
                    st.inclusive = False
                    st.next += st.next_count
                    # and the gaps still open, as the switch the other way does (kept as
                    # softflowd's reading counts them, a message of 12 lost was counted 16)
                    self.recount_gaps(st)
            self.settle_undecided(st)
            if numbering_decided(st, True) or numbering_decided(st, False):
                # decided: the exporter's next streams (new source ports) start so
                if st.kind == PROTO_NETFLOW5:
                    self.reading_v5 = st.inclusive
                else:
                    self.reading_ipfix = st.inclusive
        st.has_last = True
        st.last_seq = seq
        st.prev_count = st.last_count
        st.last_count = advance[0]
        if not st.inclusive:
            return seq
        if st.synced and seq - st.next <= advance[0]:
            advance[0] = seq - st.next              # in order (fewer counted: options records)
            return st.next
        if opt < advance[0]:
            # softflowd's numbers leave its options records out: the message's own step is its
            # data records (else a gap before a template refresh is one record short, and a
            # late refresh message starts one before the gap it fills)
            advance[0] -= <uint32_t>opt
        return seq - advance[0]

    cdef void recount_gaps(self, SeqStream st) noexcept:
        """The stream's reading changed: its open gaps are what the new one calls lost
        (gap_adj), and the old one's is the other's now."""
        cdef int i
        cdef int64_t was
        for i in range(st.ngaps):
            was = st.gap_missing[i]
            st.gap_missing[i] = <uint32_t>max(0, min(was + st.gap_adj[i], <int64_t>SEQ_MAX_GAP))
            st.gap_adj[i] = was - <int64_t>st.gap_missing[i]

    cdef void hold(self, SeqStream st, uint32_t seq, int64_t now_ms, bint soft=False) noexcept:
        """An undecided step (the other reading's votes lead by one): what the stream's reading
        would call lost before seq is held back, not a gap (count_held settles it), and seq is
        in order. `soft`: the step is from a message of templates only that set what is expected
        (a stream's first, numbered 0): the RFC's reading calls all of this message's records
        lost, softflowd's none, as for softflowd's first message numbered exactly its own
        records, which is a vote and no hold (ipfix_convention); held so, it was counted after
        SEQ_HELD_MS when no vote came (softflowd's equal messages that follow never vote). It
        is counted only once the RFC's votes lead (expire_held, settle_undecided); a late message
        still fills it, a vote for the RFC still counts it."""
        cdef uint32_t ahead = seq - st.next
        if not st.last_set_next:
            # The step was from a message that did not set what the stream expects (a late
            # one, or the first of a process restarted on the same port, which only late()
            # tells): sequence reads this one against the stream. Taken for in order, the
            # stream went back to it, and a restarted process was never a restart.
            return
        if 0 < ahead <= SEQ_MAX_GAP:
            self.expire_held(st)            # (one held range at a time)
            st.held_soft = soft
            st.held_lost = ahead
            self.pending_gaps += 1          # (settle_gaps counts it when it expires)
            st.held_start = st.next
            st.held_span = ahead
            st.held_ms = now_ms
        st.next = seq

    cdef void v9_convention(self, SeqStream st, uint32_t seq, uint32_t* advance, int64_t now_ms, bint vote) noexcept:
        """RFC 3954 5.1: a v9 packet's sequence number counts the export packets sent. Some
        exporters count the flow records sent before the packet instead, as NetFlow v5 does
        (Juniper's v9: "sequence counter of total flows"). `advance` comes in as the packet's
        flow records, options records left out (V9_UNCOUNTED: not known), and goes out as the
        step the stream expects.
        Where the previous packet (decoded whole) held more than one record, a step of exactly
        its record count is a vote for the records reading, a step of 1 for the packets reading;
        the stream is read by records once those votes lead by two, and back when they no
        longer do. While they lead by one only, the step opens no gap: what the packets reading
        would call lost is held back, counted when a packets vote comes or after SEQ_HELD_MS
        (as ipfix_convention holds), kept as that reading's gap when the records votes decide
        (held_to_pkt_gap, as the packets each step read by records passes over are while the
        votes could turn back, sequence); gaps still open when the stream turns to the records
        reading are what that reading calls lost (gap_rec), those open when it turns back what
        the packets reading calls lost (gap_pkt: over its own range, which the records
        reading's leaves the numbers of the records of the packet that set what it expects out
        of, so late packets numbered there fill it); gaps counted while the packets' votes do
        not lead count the smaller reading (count_oldest).
        Read by records, a step smaller than the previous count (options records left out of
        the count) is in order. Without `vote` (a datagram of another run, see sequence) the
        step is no vote. Reordering is no vote either: a step from a late packet to one past
        all others is none, a packet numbered among the records of the packet whose step last
        voted for records takes that vote back for packets (vote_lo, vote_hi), and a vote for
        packets makes the loss held back a gap (held_to_gap), which late packets still fill."""
        cdef uint32_t n = advance[0]
        cdef uint32_t step = seq - st.last_seq
        cdef uint32_t n0, end
        cdef int i
        # behind the furthest packet (late in either reading)
        cdef bint behind = st.pkt_known and 0 < <uint32_t>(st.pkt_next - seq - 1) < 0x80000000u
        st.uncounted = n == V9_UNCOUNTED
        # the records reading's expectation, followed beside the packets reading (gap_rec)
        if st.uncounted or not st.rec_known or not vote:
            st.rec_ahead = -1
        else:
            st.rec_ahead = max(0, <int32_t>(seq - st.rec_next))
        if st.uncounted:
            st.rec_known = False
        elif not st.rec_known or not vote or <uint32_t>(seq + n - st.rec_next) < 0x80000000u:
            st.rec_next = seq + n
            st.rec_known = True
        # ... and the packets reading's beside the records reading (gap_pkt): a packet not
        # decoded whole still numbers one
        st.pkt_ahead = max(0, <int32_t>(seq - st.pkt_next)) if st.pkt_known and vote else -1
        if not st.pkt_known or not vote or <uint32_t>(seq + 1 - st.pkt_next) < 0x80000000u:
            st.pkt_next = seq + 1
            st.pkt_known = True
        if (vote and st.vote_set
                and <uint32_t>(seq - st.vote_lo - 1) < <uint32_t>(st.vote_hi - st.vote_lo - 1)):
            # Numbered among the records of the packet whose step voted for the records reading:
            # no packet is, read so; read by packets it is one the voting packet overtook (a
            # step of its record count by chance: 5 of 2 records, 7, then 6). The vote is taken
            # back and is the packets reading's: reordering turned RFC-numbered streams to the
            # records reading, their lost packets then uncounted.
            st.vote_set = False
            if st.inc_votes:
                st.inc_votes -= 1
            if st.rfc_votes < 0xFFFF:
                st.rfc_votes += 1
            self.held_to_gap(st)
            if st.by_records and st.rfc_votes + 1 >= st.inc_votes:
                self.v9_to_packets(st, seq, True)
            self.settle_undecided(st)
        elif vote and st.has_last and st.synced and st.last_count > 1 and not st.uncounted:
            if step == st.last_count and (st.last_set_next or behind):
                # (a step from a late packet to one ahead of it all is no vote: read by packets
                # such steps are anything, 7 of 3 records late after 8, then 10; two late ones
                # in a row, overtaken by the same packet, are one after the other)
                if st.inc_votes < 0xFFFF:
                    st.inc_votes += 1
                st.vote_set = True
                st.vote_lo = st.last_seq
                st.vote_hi = seq
                if not st.by_records and st.inc_votes > st.rfc_votes + 1:
                    st.by_records = True
                    # The gaps still open are what the records reading calls lost (a packet
                    # lost before the votes decided: its records); zeroed, they went uncounted
                    # when the votes came within the second a gap waits. (The packets reading's
                    # count is no measure of it: a data packet numbered like the template-only
                    # one before it is late by packets, in order by records.) Not known (a
                    # packet not decoded whole): none is certain.
                    for i in range(st.ngaps):
                        # (what the packets reading still misses stays, for a switch back)
                        st.gap_pkt[i] = st.gap_missing[i]
                        st.gap_pkt_start[i] = st.gap_start[i]
                        st.gap_missing[i] = <uint32_t>min(max(0, st.gap_rec[i]), <int64_t>SEQ_MAX_GAP)
                        st.gap_adj[i] = 0
                    self.held_to_pkt_gap(st)            # no loss read so (but see held_to_pkt_gap)
                    if st.last_set_next or st.next_count == V9_UNCOUNTED:
                        st.next = seq
                    else:
                        # The step was from a late packet (two in a row overtaken by the next):
                        # this one is late too. What is expected stays after the packet that set
                        # it, read by its records; moved back to this one, that packet's records,
                        # which came, were a gap at the next packet and counted lost.
                        st.next += st.next_count - 1
                elif not st.by_records and st.inc_votes > st.rfc_votes:
                    self.hold(st, seq, now_ms)
            elif step == 1:
                if st.rfc_votes < 0xFFFF:
                    st.rfc_votes += 1
                self.held_to_gap(st)
                if st.by_records and st.rfc_votes + 1 >= st.inc_votes:
                    self.v9_to_packets(st, seq, False)
            self.settle_undecided(st)
        if st.by_records and st.has_last and st.synced and st.last_set_next and step <= st.last_count:
            # in order: the previous packet counted fewer than its records (one late itself
            # set no expectation: after it, this one is late too, and fills its gap)
            st.next = seq
        st.has_last = not st.uncounted
        st.last_seq = seq
        st.last_count = n
        advance[0] = 1 if not st.by_records else 0 if st.uncounted else n

    cdef void held_to_gap(self, SeqStream st) noexcept:
        """A vote for the packets reading of a v9 stream: the loss held back (hold) is that
        reading's, a gap as any other from when it was held, which late packets fill for
        SEQ_REORDER_MS (counted at the vote, a packet the held step overtook, arriving after it,
        was counted lost: 0 of 4 records, 4, 5, then 1). Read by records it was no loss."""
        if not st.held_lost:
            return
        self.open_gap(st, st.held_start, st.held_span, 0, st.held_ms)
        st.gap_missing[st.ngaps - 1] = st.held_lost
        st.gap_rec[st.ngaps - 1] = 0
        self.count_held(st, False)

    cdef void held_to_pkt_gap(self, SeqStream st) noexcept:
        """The votes turn a v9 stream to the records reading: the loss held back (hold) is none
        read so, but a gap of the packets reading's only (gap_pkt; the records reading's range
        empty), which a switch back within SEQ_REORDER_MS counts, as it does the packets gaps
        of the steps after it (sequence). Dropped, an RFC-numbered stream whose losses after
        packets of 2 records looked like two records votes, turned back by the next steps of 1,
        never counted those packets (2 lost, 0 counted)."""
        if not st.held_lost:
            return
        self.open_gap(st, st.held_start + st.held_span, 0, 0, st.held_ms)
        st.gap_missing[st.ngaps - 1] = 0
        st.gap_pkt[st.ngaps - 1] = st.held_lost
        st.gap_pkt_start[st.ngaps - 1] = st.held_start
        self.count_held(st, False)

    cdef void v9_to_packets(self, SeqStream st, uint32_t seq, bint late) noexcept:
        """The votes turn a v9 stream read by records back to packets (v9_convention) at the packet
        numbered seq: its open gaps are recounted by packets, and what it expects is set again.
        `late`: the packet is numbered among the records of an earlier one, behind what the
        packets reading expects (the furthest packet's number and one, pkt_next): it fills
        that reading's gaps as any late packet does."""
        cdef uint32_t n0, end
        cdef int i
        st.by_records = False
        for i in range(st.ngaps):
            # The gaps still open are what the packets reading calls lost (gap_pkt:
            # the packets numbered from the one after the packet that set what the
            # records reading expected, late ones taken off), over the packets
            # reading's range, where late packets fill them from now on; void, a
            # packet lost just before the votes turned back went uncounted. The
            # records reading's count stays beside it (gap_rec, gap_adj: the
            # smaller while the votes do not lead, count_oldest). Not known: none
            # is certain.
            end = st.gap_start[i] + st.gap_span[i]
            st.gap_rec[i] = st.gap_missing[i]
            if st.gap_pkt[i] >= 0:
                st.gap_start[i] = st.gap_pkt_start[i]
                st.gap_span[i] = end - st.gap_start[i]
            st.gap_missing[i] = <uint32_t>min(max(0, st.gap_pkt[i]), <int64_t>SEQ_MAX_GAP)
            st.gap_adj[i] = st.gap_rec[i] - <int64_t>st.gap_missing[i]
            st.gap_pkt[i] = -1
        n0 = st.next - st.next_count        # the packet that set what is expected
        if late:
            if st.pkt_known:
                st.next = st.pkt_next
        elif (st.last_set_next or st.next_count == V9_UNCOUNTED
                or <uint32_t>(st.last_seq - n0) <= 1):
            st.next = seq
        else:
            # The step was from a late packet that does not follow that one by
            # packets either (two in a row overtaken by the next): this one is late
            # too. Moved back to it, the packet that set what is expected, which
            # came, was a gap at the next packet and counted lost (as 41c7e31 keeps
            # it the other way).
            st.next = n0 + 1

    cdef void restart(self, SeqStream st) noexcept:
        st.run_uptime = -1          # (the datagram that goes on is the new run's first)
        # The numbers of the old run's latest records vote (v9_convention) are the new run's too:
        # a packet of the new run numbered there took that vote back for packets (a restart
        # does not change how the exporter numbers), and a records-numbered stream just decided
        # turned to packets, its next step a gap of packets never sent
        st.vote_set = False
        self.count_gaps(st, -1)
        self.expire_held(st)
        self.proto_stats(PROTOCOL_NAMES[st.kind])["sequence_resets"] += 1

    cdef void count_oldest(self, SeqStream st) noexcept:
        """Count what is still missing of the stream's oldest open gap as lost, and close it.
        While the stream's reading is open (reading_open: the RFC's votes not leading), the
        smaller of the two readings' losses: a lost message at a count change (softflowd's 32
        flows after its first message of 24, read the RFC's way: 39; a v9 packet of 4 records
        after one of 6 numbered by records, read by packets: 9) is no more than its own. What the other adds waits for the votes
        (settle_undecided)."""
        cdef int i
        cdef int64_t missing = st.gap_missing[0]
        cdef int64_t other, low
        if st.gap_adj[0] and reading_open(st):
            other = max(0, min(missing + st.gap_adj[0], <int64_t>SEQ_MAX_GAP))
            low = min(missing, other)
            st.undec_rfc += missing - low
            st.undec_inc += other - low
            missing = low
        if missing:
            self.proto_stats(PROTOCOL_NAMES[st.kind])["sequence_lost"] += missing
        for i in range(1, st.ngaps):
            st.gap_start[i - 1], st.gap_span[i - 1] = st.gap_start[i], st.gap_span[i]
            st.gap_missing[i - 1], st.gap_ms[i - 1] = st.gap_missing[i], st.gap_ms[i]
            st.gap_adj[i - 1] = st.gap_adj[i]
            st.gap_rec[i - 1] = st.gap_rec[i]
            st.gap_pkt[i - 1], st.gap_pkt_start[i - 1] = st.gap_pkt[i], st.gap_pkt_start[i]
        st.ngaps -= 1
        self.pending_gaps -= 1

    cdef void settle_undecided(self, SeqStream st) noexcept:
        """After a vote: once the stream's reading is no longer open (reading_open), what it adds
        to the gaps counted while it was (count_oldest) is lost after all."""
        cdef int64_t more
        if not (st.undec_rfc or st.undec_inc) or reading_open(st):
            return
        more = st.undec_inc if st.inclusive or st.by_records else st.undec_rfc
        if more:
            self.proto_stats(PROTOCOL_NAMES[st.kind])["sequence_lost"] += more
        st.undec_rfc = st.undec_inc = 0

    cdef void count_gaps(self, SeqStream st, int64_t now_ms) noexcept:
        """Close the stream's gaps seen SEQ_REORDER_MS or longer before now_ms (all of them when
        now_ms < 0), counting what is still missing of them as lost."""
        while st.ngaps and (now_ms < 0 or gap_expired(st.gap_ms[0], now_ms)):
            self.count_oldest(st)

    cdef void settle_gaps(self, int64_t now_ms) noexcept:
        """count_gaps over every stream of the exporter."""
        cdef SeqStream st
        if not self.pending_gaps:
            return
        for st in self.seq_streams.values():
            if st.ngaps:
                self.count_gaps(st, now_ms)
            if st.held_lost and (now_ms < 0 or aged(st.held_ms, now_ms, SEQ_HELD_MS)):
                self.expire_held(st)

    cdef dict sequences_state(self):
        """Its sequence state for the state file (Decoder.export_sequences; seq_stream_state),
        None when it has none of this run: the previous run's, not heard of since, is stale
        by the next start (another worker may be receiving the exporter)."""
        cdef SeqStream st
        cdef SeqPort sp
        if self.seq_restored_ms or not (self.seq_streams or self.reading_v5 >= 0 or self.reading_ipfix >= 0
                                        or self.drops_seen or self.not_sent_seen):
            return None
        return {"seen": self.last_seen, "reading": [self.reading_v5, self.reading_ipfix],
                "streams": [seq_stream_state(st) for st in self.seq_streams.values()],
                "ports": [[port, seq_port_state(sp)] for port, sp in self.seq_ports.items()],
                # The baselines of the cumulative loss counters its datagrams carry: without them
                # the first value after a restart was a new baseline, and what the counter rose
                # by while the collector was down (and since the last value before the stop)
                # was never counted. sFlow drops (stream, sample kind, source, value) and IPFIX
                # notSent totals (port, domain, exportingProcessId or None, IE, value, and the
                # sequence number and export time of its message, learn_not_sent).
                "drops": [[k[0], k[1], k[2], v] for k, v in self.drops_seen.items()],
                "not_sent": [[*k, *v] for k, v in self.not_sent_seen.items()]}

    cdef dict hand_over_sequences(self, bint final=True):
        """sequences_state for the final save (Decoder.export_sequences), its open gaps counted
        first; a held loss is left in the state and closed here uncounted (the file holds it for
        the next run, whose votes decide it). None (no state of this run): everything counted,
        as settle_gaps(-1) does. Not `final` (the save as the stop begins): the state only, its
        open gaps in it, the decoder left as it was for the final save: those gaps, younger than
        the reorder window, may still be filled by a datagram read and refused after it (taken
        as received), and its held losses are handed over by the final save."""
        cdef SeqStream st
        cdef dict e = self.sequences_state()
        if not final:
            return e
        if e is None:
            self.settle_gaps(-1)
            return None
        for st in self.seq_streams.values():
            if st.ngaps:
                self.count_gaps(st, -1)
        e = self.sequences_state()
        for st in self.seq_streams.values():
            if st.held_lost:
                self.count_held(st, False)
        return e

    cdef void install_sequences(self, dict streams, dict ports, int reading_v5, int reading_ipfix,
                                int64_t seen_ms, dict drops, dict not_sent):
        """The previous run's sequence state (Decoder.import_sequences), in place of what it has:
        its streams and the baselines of its loss counters (sequences_state)."""
        cdef SeqStream st
        cdef SeqPort sp
        cdef object x
        self.seq_streams = streams
        self.seq_ports = ports
        self.drops_seen = drops
        self.not_sent_seen = not_sent
        self.cur_seq = None
        self.cur_port = None
        self.reading_v5, self.reading_ipfix = reading_v5, reading_ipfix
        self.pending_gaps = self.floor_bytes = self.dom_entries = 0
        for st in streams.values():
            self.pending_gaps += st.ngaps + (1 if st.held_lost else 0)
            if st.floor_sets is not None:
                for x in <list>st.floor_sets:
                    self.floor_bytes += PyBytes_GET_SIZE(<bytes>(<tuple>x)[2])
        for sp in ports.values():
            self.dom_entries += len(sp.dom_last)
        self.seq_restored_ms = seen_ms if seen_ms else 1

    cdef void resume_sequences(self, int64_t now_ms):
        """Its first datagram since its sequence state was restored (install_sequences). Within
        SEQ_RESTORE_MAX_MS of its latest datagram of the previous run, its streams go on where
        they were (what it sent while the collector was down is lost, as that of any other gap).
        Later they start over, as they did before the state file kept them: it may have been
        another collector's meanwhile (a replica's, a worker's), and a gap would count what that
        one received. What was open then (gaps, a held loss) is counted as a restart does. The
        loss counters' baselines go with them: their next values are baselines again, as at a
        first start (what another collector counted of them is not counted again here)."""
        if aged(self.seq_restored_ms, now_ms, SEQ_RESTORE_MAX_MS):
            self.settle_gaps(-1)
            self.drops_seen.clear()
            self.not_sent_seen.clear()
            self.seq_streams.clear()
            self.floor_bytes = 0
            self.seq_ports.clear()
            self.dom_entries = 0
            self.cur_seq = None
            self.cur_port = None
        self.seq_restored_ms = 0

    cdef void sample_drops(self, uint64_t stream, uint32_t kind, uint32_t source, uint32_t drops, bint late):
        """An sFlow sample's drops counter (packets its agent could not sample, or discard events it
        could not report), cumulative per data source: its increase since the source's last sample
        is counted (a value below the last one: the agent restarted, all of it is new; the first
        value seen is the baseline). A counter at 0 is skipped without a lookup (Open vSwitch
        always sends 0). `late`: the sample's datagram is behind its stream's sequence (reordered
        on the path, or a copy; a restart moves the sequence on): its value predates the latest
        one seen, so it is skipped too (the counter being cumulative, the next sample counts
        whatever it held)."""
        cdef object key, last
        cdef uint32_t delta
        if drops == 0 or late:
            return
        key = (stream, kind, source)
        last = keep_last(self.drops_seen, key, drops, DROPS_MAX_SOURCES)
        if last is None:
            return
        delta = drops - <uint32_t>last if drops >= <uint32_t>last else drops
        if delta:
            self.proto_stats(self.cur_protocol)["sample_drops"] += delta

    cdef SeqPort seq_port(self, uint32_t port):
        cdef SeqPort sp = self.cur_port
        if sp is not None and self.cur_port_no == port:
            return sp
        sp = self.seq_ports.get(port)
        if sp is None:
            if len(self.seq_ports) >= SEQ_MAX_STREAMS:
                self.seq_ports.clear()
                self.dom_entries = 0
            sp = SeqPort.__new__(SeqPort)
            sp.dom_last = {}
            self.seq_ports[port] = sp
        self.cur_port, self.cur_port_no = sp, port
        return sp

    cdef void ipfix_sequence(self, uint32_t port, uint32_t domain, uint32_t seq, uint32_t advance,
                             int64_t now_ms, int64_t export_s, bint restarted=False) noexcept:
        """An IPFIX message's sequence number (see SeqPort): counted in its domain's stream, or
        in its port's one stream where the exporter numbers all its domains as one."""
        cdef SeqPort sp = self.seq_port(port)
        cdef object last
        cdef uint64_t v
        cdef bint was_shared = sp.shared_votes > sp.domain_votes
        cdef bint by_port, by_domain, inclusive
        cdef SeqStream st
        if sp.has_prev and sp.prev_domain != domain:
            # the domain left behind: where its sequence was (kept at changes only, not per message)
            if sp.prev_domain not in sp.dom_last:
                if len(sp.dom_last) >= SEQ_MAX_STREAMS:
                    self.dom_entries -= len(sp.dom_last)
                    sp.dom_last.clear()
                self.dom_entries += 1
            sp.dom_last[sp.prev_domain] = seq_mark(sp.prev_seq, sp.prev_adv)
            last = sp.dom_last.get(domain)
            if last is not None:
                v = last
                # the numbering as the stream in use reads it (softflowd's, which counts each
                # message's own records, is the RFC's shifted: both would match too often)
                st = self.seq_streams.get((PROTO_IPFIX, port, SEQ_SHARED if was_shared else domain))
                inclusive = st is not None and st.inclusive
                by_port = seq_follows(seq, advance, sp.prev_seq, sp.prev_adv, inclusive)
                by_domain = seq_follows(seq, advance, <uint32_t>(v >> 32), <uint32_t>v, inclusive)
                if by_port and not by_domain and sp.shared_votes < 0xFFFF:
                    sp.shared_votes += 1
                elif by_domain and not by_port and sp.domain_votes < 0xFFFF:
                    sp.domain_votes += 1
                if (sp.shared_votes > sp.domain_votes) != was_shared:
                    # The port is read the other way from now: what the reading left behind took
                    # for gaps is void (its numbers were read the wrong way), and the streams of
                    # the other reading go on from where the port's messages left them (the
                    # port's previous one; each domain's last, dom_last).
                    for st in self.seq_streams.values():
                        if st.kind != PROTO_IPFIX or st.port != port:
                            continue
                        if (st.domain == SEQ_SHARED) == was_shared:
                            self.discard_gaps(st)
                            continue
                        st.has_last = False
                        last = (None if st.inclusive else
                                seq_mark(sp.prev_seq, sp.prev_adv) if st.domain == SEQ_SHARED else
                                sp.dom_last.get(<uint32_t>st.domain))
                        if last is None:
                            st.synced = False
                        else:
                            v = last
                            st.next = <uint32_t>(v >> 32) + <uint32_t>v
                            st.next_count = <uint32_t>v
                            st.synced = True
                    was_shared = not was_shared
        sp.has_prev = True
        sp.prev_domain, sp.prev_seq, sp.prev_adv = domain, seq, advance
        self.sequence(PROTO_IPFIX, port, SEQ_SHARED if was_shared else domain, seq, advance, -1, now_ms, export_s,
                      restarted)

    cdef void discard_gaps(self, SeqStream st) noexcept:
        """Close a stream's open gaps and held loss without counting them (read the wrong way)."""
        self.pending_gaps -= st.ngaps
        st.ngaps = 0
        self.count_held(st, False)

    cdef void ipfix_forget(self, uint32_t port, uint32_t domain, uint32_t seq, bint has_records,
                           uint64_t known, uint64_t most, object sets, int64_t now_ms, int64_t export_s=-1,
                           bint restarted=False):
        """sequence_forget for an IPFIX message numbered seq (in the stream its port reads it in):
        the stream's next message sets the expectation again, unless it is numbered at or
        before seq (SeqStream.floor; made here if new). RFC 7011 3.1: the message's records
        were numbered from seq, what the exporter sent after it is numbered beyond; has_records:
        it held at least one (a data set without its template, or that does not fit it; a
        datagram refused before decoding may have held none). What is known of its records:
        `known` decoded, `most` at most in all (each takes a byte at least), its undecoded data
        sets `sets` (keep_unknown_set; None: not all kept). What was lost before and after it
        is counted when the stream's next message comes (settle_floor). `export_s`, `restarted`:
        as for sequence (a message of the old run after a restart, one telling a restart)."""
        cdef SeqPort sp = self.seq_port(port)
        cdef SeqStream st
        cdef object x
        sp.has_prev = False
        if sp.dom_last.pop(domain, None) is not None:
            self.dom_entries -= 1
        st = self.seq_stream(PROTO_IPFIX, port, SEQ_SHARED if sp.shared_votes > sp.domain_votes else domain)
        if before_restart(st, export_s, now_ms) or self.msg_old_run:
            return                      # the old run's, late (see sequence)
        if restarted:
            # The options record that told the restart was decoded, whatever else of its message
            # was not: the message is the new run's first (see sequence), and its number the new
            # run's floor. Ignored, the new run's numbers were read against the old run's, as
            # late messages (numbered behind it) or as its floor's loss (ahead of it).
            self.restarted_run(st, now_ms, export_s)
        if sent_before_known(st, seq):
            # Sent before what the stream already knows of: a late one, and what comes next is
            # still known. Into the range held back or an open gap, it fills one record, the
            # least it held (OVS's statistics record overtaken by the next flow and arriving
            # before its options template: the gap the flow opened is its record).
            if not (has_records and self.fill_late(st, seq, 1)):
                # (or one the stream's reading misplaced: softflowd's numbers read the RFC's way,
                # while the reading is not decided; its records then lie between what the
                # stream expected and the next uncounted message, not lost)
                st.skipped = True
            return
        if st.ngaps and now_ms >= 0 and gap_expired(st.gap_ms[0], now_ms):
            self.count_gaps(st, now_ms)
        most = min(most, <uint64_t>SEQ_MAX_GAP)
        if st.floor:
            # after another uncounted message: what lies between the two (this one's records
            # begin `most` records before its number at most, read softflowd's way)
            self.settle_floor(st, seq, <uint32_t>most, False, now_ms)
            st.floor_from_set = False
        else:
            st.floor_from_set = st.synced and not st.skipped
            st.floor_from = st.next
            st.floor_prev = st.last_count
        st.next = seq
        st.floor = True
        st.synced = False
        st.has_last = False
        st.floor_known = <uint32_t>min(known, most)
        st.floor_max = <uint32_t>most
        st.floor_sets = sets
        if sets is not None:
            for x in <list>sets:
                self.floor_bytes += PyBytes_GET_SIZE(<bytes>(<tuple>x)[2])

    cdef void clear_floor(self, SeqStream st):
        cdef object x
        if st.floor_sets is not None:
            for x in <list>st.floor_sets:
                self.floor_bytes -= PyBytes_GET_SIZE(<bytes>(<tuple>x)[2])
            st.floor_sets = None

    cdef int64_t floor_count(self, SeqStream st):
        """The records of the uncounted message at the stream's floor: those decoded plus those
        of its undecoded sets, read with their templates if all are known by now (data that came
        before its template, and the template since), else -1."""
        cdef int64_t k = st.floor_known
        cdef Py_ssize_t n
        cdef Template t
        cdef tuple x
        cdef bytes body
        if st.floor_sets is None:
            return -1
        for x in <list>st.floor_sets:
            t = self.templates.get(tkey(10, <uint32_t>x[0], <uint16_t>x[1], st.port))
            if t is None:
                return -1
            body = <bytes>x[2]
            n = count_records(t, <const uint8_t*>PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
            if n < 0:
                return -1
            k += n
        return k

    cdef void settle_floor(self, SeqStream st, uint32_t seq, uint32_t adv, bint normalized, int64_t now_ms):
        """The message after the uncounted one at the floor came, numbered seq with adv records
        (`normalized`: seq is already the number of its first record, softflowd's way; from
        ipfix_forget adv is at most how many). The records lost around the uncounted message
        are a gap each, as far as the numbers tell (then counted, unless late messages fill them,
        as any gap); none the uncounted message may have held is counted (its set is counted
        as missing its template already). RFC 7011 3.1: its records are numbered from the floor
        on, k of them (floor_count, or floor_max at most: then the gap after it is the loss that
        is certain); the loss before it is its number less the one expected. softflowd's way
        its number counts its own records: the loss before it is its number less k less the
        one expected, and after it the next message's first record less its number. A stream
        whose reading is not decided (ipfix_convention's votes: Open vSwitch's one record a
        message never votes) gets the smaller of the two (they agree where the messages' counts
        are equal)."""
        cdef int64_t k = self.floor_before(st, now_ms)
        cdef int64_t rfc, inc, lost
        cdef bint by_inc = st.inclusive
        cdef bint by_rfc = not by_inc and numbering_decided(st, False)
        rfc = <int32_t>(seq - st.next) - k
        inc = <int32_t>((seq if normalized else seq - adv) - st.next)
        lost = inc if by_inc else rfc if by_rfc else min(rfc, inc)
        if 0 < lost <= SEQ_MAX_GAP:
            self.open_gap(st, st.next + <uint32_t>(0 if by_inc else k), <uint32_t>lost, 0, now_ms)
        self.clear_floor(st)

    cdef int64_t floor_before(self, SeqStream st, int64_t now_ms):
        """The gap before the uncounted message at the stream's floor, opened (see settle_floor;
        also at a restart, which ends the run before the message after it is seen); its record
        count (floor_count, else at most floor_max)."""
        cdef int64_t k = self.floor_count(st)
        cdef int64_t rfc, inc, lost
        cdef bint by_inc = st.inclusive
        cdef bint by_rfc = not by_inc and numbering_decided(st, False)
        if k < 0:
            k = st.floor_max
        if st.floor_from_set:
            rfc = <int32_t>(st.next - st.floor_from)
            inc = (<int32_t>(st.next - st.floor_from) - k + (0 if by_inc else <int64_t>st.floor_prev))
            lost = rfc if by_rfc else inc if by_inc else min(rfc, inc)
            if 0 < lost <= SEQ_MAX_GAP:
                self.open_gap(st, st.floor_from, <uint32_t>lost, 0, now_ms)
        return k

    cdef void open_gap(self, SeqStream st, uint32_t start, uint32_t span, int64_t adj, int64_t now_ms) noexcept:
        """Numbers [start, start + span) skipped: a gap, counted as lost when it has stayed open
        SEQ_REORDER_MS (see sequence); `adj`: gap_adj."""
        cdef int i
        if st.ngaps == SEQ_MAX_GAPS:
            self.count_oldest(st)
        i = st.ngaps
        st.gap_start[i], st.gap_span[i], st.gap_missing[i], st.gap_ms[i] = start, span, span, now_ms
        st.gap_adj[i] = adj
        st.gap_rec[i] = -1
        st.gap_pkt[i] = -1
        st.gap_pkt_start[i] = start
        st.ngaps += 1
        self.pending_gaps += 1

    cdef bint ipfix_behind(self, uint32_t port, uint32_t domain, uint32_t seq):
        """The IPFIX message numbered seq, not yet counted, is behind what the stream its port
        reads it in expects: sent before the latest message counted (see sequence). False when
        the stream is not followed (new, or starting over)."""
        cdef SeqPort sp = self.seq_ports.get(port)
        cdef SeqStream st = self.seq_streams.get(
            (PROTO_IPFIX, port, SEQ_SHARED if sp is not None and sp.shared_votes > sp.domain_votes else domain))
        return st is not None and sent_before_known(st, seq)

    cdef bint ipfix_before_restart(self, uint32_t port, uint32_t domain, int64_t export_s, int64_t now_ms,
                                   int64_t sysinit=-1):
        """The IPFIX message exported at export_s, its options data carrying the clock sysinit
        (IE 160), is the old run's, late, after its stream's restart told by IE 160
        (before_restart, old_run_clock), in the stream its port reads it in."""
        cdef SeqPort sp = self.seq_ports.get(port)
        cdef SeqStream st = self.seq_streams.get(
            (PROTO_IPFIX, port, SEQ_SHARED if sp is not None and sp.shared_votes > sp.domain_votes else domain))
        return st is not None and (before_restart(st, export_s, now_ms) or old_run_clock(st, sysinit, now_ms))

    cdef void sequence_forget(self, int kind, uint32_t port, uint64_t domain) noexcept:
        """What the last message advanced by is unknown (not decoded whole): the stream's next
        datagram sets the expectation again (gaps already open stay open)."""
        cdef SeqStream st = self.cur_seq
        if st is None or st.kind != kind or st.port != port or st.domain != domain:
            st = self.seq_streams.get((kind, port, domain)) if self.seq_streams else None
        if st is not None:
            st.synced = False
            st.has_last = False

    cdef bint rate_ok(self, double now, double rate) noexcept:
        """Token bucket of --max-exporter-rate: `rate` datagrams a second, bursts of one
        second's worth (at least one datagram)."""
        cdef double burst = rate if rate > 1.0 else 1.0
        cdef double dt
        if self.rl_time == 0.0:
            self.rl_tokens = burst
        else:
            dt = now - self.rl_time
            if dt > 0.0:            # a clock stepped back refills nothing
                self.rl_tokens += dt * rate
                if self.rl_tokens > burst:
                    self.rl_tokens = burst
        # ... and the bucket refills from the new time on: keeping the latest time seen instead
        # refused every datagram over the burst until the clock was back past it (an hour's
        # step back of the wall clock, an hour of an exporter's flows)
        self.rl_time = now
        if self.rl_tokens >= 1.0:
            self.rl_tokens -= 1.0
            return True
        return False

    cdef bint forget_stream(self, const uint8_t* h, Py_ssize_t n, uint32_t port, int64_t now_ms) noexcept:
        """A datagram refused before decoding (rate limit, size, a shutdown's last reads): its flows
        are counted as refused, so its sequence number is taken as received, from its header,
        rather than counted a second time as lost before reaching flowscope (by this run, or by
        the next one after the final save). The header tells what it advances by where the
        protocol numbers flows or datagrams (NetFlow v5 / v7 count, sFlow 1). IPFIX and NetFlow
        v9 count their records from their sets: refuse_ipfix, refuse_v9. True when a stream took
        it."""
        cdef uint32_t v = be16(h) if n >= 2 else 0
        cdef Py_ssize_t off
        if (v == 5 or v == 7) and n >= 24:
            self.sequence(PROTO_NETFLOW5 if v == 5 else PROTO_NETFLOW7, port,
                          (<uint32_t>h[20] << 8) | h[21] if v == 5 else 0, be32(h + 16), be16(h + 2),
                          be32(h + 4), now_ms, be32(h + 8))
            return True
        elif v == 0 and n >= 8 and be32(h) == 5:
            off = 12 if be32(h + 4) == 1 else 24 if be32(h + 4) == 2 else 8
            if n >= off + 12:
                self.sequence(PROTO_SFLOW5, port, sflow_stream(h + 8, off - 8, be32(h + off)), be32(h + off + 4), 1,
                              be32(h + off + 8), now_ms)
                return True
        return False

    cdef void count_error(self, str reason):
        cdef dict e
        if self.refusing:
            return
        self.errors[reason] = self.errors.get(reason, 0) + 1
        e = self.proto_stats(self.cur_protocol)["errors"]
        e[reason] = e.get(reason, 0) + 1

    cdef dict templates_by_protocol(self):
        """Templates held, by protocol name ({} when none)."""
        cdef Template t
        cdef dict out = {}
        for t in self.templates.values():
            name = "ipfix" if t.version == 10 else "netflow9"
            out[name] = out.get(name, 0) + 1
        return out

    cdef void absorb(self, ExporterState other):
        """Add other's counters to this one's (the decoder's tally of evicted exporters)."""
        cdef dict d, mine
        other.settle_gaps(-1)
        for name, d in other.protocol_counts().items():
            mine = self.proto_stats(name)
            for key in ("datagrams", "flows", "missing_template_sets", "sequence_lost", "sequence_resets",
                        "templates_evicted", "sample_drops", "counter_samples_ignored", "samples_skipped"):
                mine[key] += d[key]
            for reason, n in d["errors"].items():
                mine["errors"][reason] = mine["errors"].get(reason, 0) + n
            for unit, n in d["not_sent"].items():
                mine["not_sent"][unit] = mine["not_sent"].get(unit, 0) + n
        for mine, d in ((self.errors, other.errors), (self.dropped, other.dropped)):
            for reason, n in d.items():
                mine[reason] = mine.get(reason, 0) + n
        self.datagrams += other.datagrams
        self.flows += other.flows
        self.missing_template_sets += other.missing_template_sets
        self.templates_evicted += other.templates_evicted

    def stats(self):
        cdef dict tp = self.templates_by_protocol()
        per = {name: dict(d, errors=dict(d["errors"]), not_sent=dict(d["not_sent"]), templates=tp.get(name, 0))
               for name, d in self.protocol_counts().items()}
        return {
            "protocols": per,
            "datagrams": self.datagrams,
            "flows": self.flows,
            "errors": dict(self.errors),
            "dropped": dict(self.dropped),
            "missing_template_sets": self.missing_template_sets,
            "templates": len(self.templates),
            "templates_evicted": self.templates_evicted,
            "sampling": self.last_sampling,
            "protocol": self.protocol,
        }


from cpython.long cimport PyLong_FromUnsignedLongLong

cdef extern from "Python.h":
    object _PyLong_FromByteArray(const unsigned char* b, size_t n, int little_endian, int is_signed)


cdef inline object tkey(int version, uint32_t domain, uint16_t tid, uint16_t port):
    # Templates belong to an exporting process: (exporter IP, UDP source port, observation
    # domain / source id, template id), as Wireshark scopes them. Two processes on one host
    # (OVS bridges, pmacct "multiple sources") may reuse ids with different definitions.
    # (the integer built from its 10 little-endian bytes: as Python arithmetic, a shift and an
    # add of long integers, it cost ~500 instructions a data set)
    cdef uint64_t lo = (<uint64_t>version << 48) | (<uint64_t>domain << 16) | tid
    cdef unsigned char b[10]
    cdef int i
    if port == 0:
        return PyLong_FromUnsignedLongLong(lo)
    for i in range(8):
        b[i] = <unsigned char>(lo >> (8 * i))
    b[8] = <unsigned char>(port & 0xFF)
    b[9] = <unsigned char>(port >> 8)
    return _PyLong_FromByteArray(b, 10, 1, 0)


# ---------------------------------------------------------------- NetFlow v5

cdef int decode_v5(Decoder dec, ExporterState ex, FlowBatch b, Reader* r, int version=5) except -1:
    """NetFlow v5 and its fixed-format relatives, v1 and v7 (Cisco's NetFlow export datagram
    formats; fprobe -n 1|7, softflowd -v 1): v1 has a 16-byte header (no flow_sequence, engine
    or sampling interval) and 48-byte records without AS numbers or masks, its TCP flags at
    offset 40; v7 has v5's header with its last 4 bytes reserved and 52-byte records, v5's
    with the flags byte at 36 (which fields are invalid) and router_sc at 48."""
    cdef Py_ssize_t hlen = 16 if version == 1 else 24
    cdef Py_ssize_t rlen = 52 if version == 7 else 48
    cdef uint16_t max_count = 24 if version == 1 else 28 if version == 7 else 30
    cdef const uint8_t* h = rd_take(r, hlen)
    cdef uint16_t count = be16(h + 2)
    cdef uint32_t uptime = be32(h + 4)
    cdef int64_t base_ms
    cdef uint16_t interval = be16(h + 22) & 0x3FFF if version == 5 else 0
    cdef const uint8_t* p
    cdef Flow* f
    cdef int i
    cdef uint32_t rate
    b.proto_kind = PROTO_NETFLOW5 if version == 5 else PROTO_NETFLOW7 if version == 7 else PROTO_NETFLOW1
    if version != 1:
        b.sequence = be32(h + 16)
        # flow_sequence counts flows; engine type/id (v5) tell an exporter's engines apart
        ex.sequence(b.proto_kind, b.port, (<uint32_t>h[20] << 8) | h[21] if version == 5 else 0, b.sequence,
                    count, uptime, <int64_t>(b.recv_time * 1000.0), be32(h + 8))
    cdef bint bad_count = False
    # Records are 48 bytes (v7: 52) and a datagram holds at most 30 (v1: 24, v7: 28) (Cisco's
    # formats). When the header's count disagrees with the length, decode the whole records
    # that are there (as Wireshark does) and count the disagreement as bad_count on the exporter.
    if count == 0 or count > max_count or rd_left(r) < rlen * count:
        bad_count = True
        count = <uint16_t>min(rd_left(r) // rlen, max_count)
        if count == 0:
            raise_decode("bad_length", 2, f"v{version} header count {be16(h + 2)} with {rd_left(r)} bytes of records")
    # first/last are sysUptime ms: absolute = export time - uptime + value, where a value more
    # than SYSUP_SKEW_MS above the header's uptime was counted before the 32-bit counter
    # wrapped (sysup_time); one less far above is the exporter stamping flows ahead. Wireshark
    # prints only the raw offset; the corpus's 0xFFFFFFFF from a router 3.4 s after boot is a
    # flow seen 1 ms before the counter's 0, not 49.7 days after the export.
    base_ms = <int64_t>be32(h + 8) * 1000 + be32(h + 12) // 1000000 - uptime
    b.clock_shift_ms = clock_shift(ex, b, base_ms + uptime)
    rate = interval if interval else ex.cidr_sampling
    for i in range(count):
        p = rd_take(r, rlen)
        f = batch_new_flow(b)
        f.af = 4
        memcpy(f.src, p, 4)
        memcpy(f.dst, p + 4, 4)
        if be32(p + 8):
            f.nh_af = 4
            memcpy(f.nexthop, p + 8, 4)
        f.in_if = be16(p + 12)
        f.out_if = be16(p + 14)
        f.packets = be32(p + 16)
        f.bytes = be32(p + 20)
        f.t_start_ms = sysup_time(base_ms, be32(p + 24), base_ms + uptime + SYSUP_SKEW_MS)
        f.t_end_ms = sysup_time(base_ms, be32(p + 28), base_ms + uptime + SYSUP_SKEW_MS)
        f.sport = be16(p + 32)
        f.dport = be16(p + 34)
        f.proto = p[38]
        f.dscp = p[39] >> 2
        f.etype = 0x0800
        f.sampling = rate
        f.present = (P_SPORT | P_DPORT | P_PROTO | P_ETYPE | P_BYTES | P_PACKETS | P_DSCP | P_TSTART
                     | P_TEND | P_INIF | P_OUTIF | (P_SAMPLING if interval else 0))
        if version == 1:
            f.tcp_flags = p[40]     # (v1: pad1 at 36, prot, tos, flags; no AS numbers or masks)
        else:
            f.tcp_flags = p[37]
            f.src_as = be16(p + 40)
            f.dst_as = be16(p + 42)
            f.src_mask = p[44]
            f.dst_mask = p[45]
            f.present |= P_SRCAS | P_DSTAS | P_SRCMASK | P_DSTMASK
        if f.proto == 6:
            f.present |= P_FLAGS
        elif f.proto == 1:
            # ICMP has no ports (NetObserv writes them for TCP, UDP and SCTP only); type and
            # code travel in them. Cisco: the destination port, type << 8 | code (the source 0).
            # fprobe: the bare type in the source port, the code in the destination port. Some
            # IOS versions: type << 8 | code in the source port, the destination 0 (nfdump reads
            # all three so). A destination below 256 with a source of 0 cannot be Cisco's (type
            # 0, echo reply, has only code 0): not guessed at, as in v9/IPFIX.
            if f.sport == 0:
                if not 0 < f.dport < 256:
                    f.icmp_type = f.dport >> 8
                    f.icmp_code = f.dport & 0xFF
                    f.present |= P_ICMP
            elif f.sport < 256 and f.dport < 256:
                f.icmp_type = <uint8_t>f.sport
                f.icmp_code = <uint8_t>f.dport
                f.present |= P_ICMP
            elif f.dport == 0:
                f.icmp_type = f.sport >> 8
                f.icmp_code = f.sport & 0xFF
                f.present |= P_ICMP
            else:
                f.icmp_type = f.dport >> 8
                f.icmp_code = f.dport & 0xFF
                f.present |= P_ICMP
        if not has_ports(f.proto):
            f.present &= ~(<uint64_t>(P_SPORT | P_DPORT))     # (as in v9/IPFIX: decode_record)
    ex.last_sampling = rate
    if bad_count:
        ex.count_error("bad_count")
        dec.log_limited("bad_count", ex.ip, f"v{version} header count {be16(h + 2)} but {b.n} records in the datagram")
    return 0


# ---------------------------------------------------------------- v9 / IPFIX templates

cdef void bounded_add(set keys, object key):
    """Add to a per-exporter set of (port, domain) keys, bounded as the sequence streams are: a
    spray of domains only starts it over."""
    if key not in keys:
        if len(keys) >= SEQ_MAX_STREAMS:
            keys.clear()
        keys.add(key)


cdef int parse_template_set(Decoder dec, ExporterState ex, FlowBatch b, Reader* s, int version,
                            uint32_t domain, bint options) except -1:
    cdef uint16_t tid, count, scope_count, ie, length
    cdef uint32_t pen
    cdef int i
    cdef list spec
    cdef Py_ssize_t start, fields_at
    cdef uint16_t scope_len, opt_len
    cdef Template t, old
    cdef str bad
    # A set ends with padding shorter than a template record header, or with longer zero
    # padding (RFC 3954 5.3 and RFC 7011 3.3.1: padding octets are zero and counted in the set
    # length; NetFlow v9 exporters pad to 8 bytes): no template has id 0, so an all-zero rest of
    # the set is padding, as Wireshark reads it, not a bad template.
    # A template record flowscope cannot use is counted (bad_template) and skipped, as an
    # unknown set id is: its field specifiers say where the next record starts (RFC 7011
    # 3.4.1, RFC 3954 5.2), and where they do not, the set length says where the next set does
    # (RFC 7011 3.3.2, RFC 3954 5.3). The records, sets and messages after it still decode.
    if version == 10:     # (borrowed_template: this domain has templates of its own)
        bounded_add(ex.tpl_domains, (<object>b.port << 32) | domain)
    while rd_left(s) >= 4:
        start = s.pos
        tid = rd_u16(s)
        if tid == 0 and all_zero(s.buf, start, s.end):
            break
        bad = None
        if version == 9 and options:
            # RFC 3954 6.1: template id, option scope length, option length (both in bytes).
            if rd_left(s) < 4:
                cut_options_header(dec, ex, b, s, start, version, domain, tid)
                break
            scope_len = rd_u16(s)
            opt_len = rd_u16(s)
            if scope_len % 4 or opt_len % 4:
                # No field boundaries to go by: the rest of the flowset goes with it.
                refuse_template(dec, ex, b, start, version, domain, tid,
                                f"v9 domain {domain} options template {tid}: lengths {scope_len}/{opt_len}")
                s.pos = s.end
                break
            scope_count = scope_len // 4
            count = scope_count + opt_len // 4
        else:
            count = rd_u16(s)
            scope_count = 0
            if version == 10 and count == 0:
                # RFC 7011 8.1: a withdrawal, template id + field count 0 only (an options
                # template withdrawal has no scope field count). Template id == set id (2 or 3)
                # withdraws all of that kind.
                withdraw(dec, ex, version, domain, tid, options, b.port, b.recv_time)
                continue
            if options:
                if rd_left(s) < 2:
                    cut_options_header(dec, ex, b, s, start, version, domain, tid)
                    break
                scope_count = rd_u16(s)
                if scope_count == 0 or scope_count > count:
                    bad = f"v{version} domain {domain} options template {tid}: scope count {scope_count}"
        if bad is None and tid < 256:
            bad = f"v{version} domain {domain}: template id {tid} < 256"
        if bad is None and (count == 0 or count > MAX_TEMPLATE_FIELDS):
            bad = f"v{version} domain {domain} template {tid}: {count} fields"
        if bad is None:
            # Field specifiers that run past the set: the record is cut (or its count is wrong),
            # so it is refused like the others above, not a truncated datagram that would take
            # the sets and messages after it along (RFC 7011 3.3.2 / RFC 3954 5.3: the set length
            # says where the next set starts).
            fields_at = s.pos
            if skip_fields(s, version, count):
                s.pos = fields_at
            else:
                bad = f"v{version} domain {domain} template {tid}: {count} fields run past the set"
        if bad is not None:
            if not skip_fields(s, version, count):
                s.pos = s.end       # its fields run past the set: the rest of the set goes with it
            refuse_template(dec, ex, b, start, version, domain, tid, bad)
            continue
        key = tkey(version, domain, tid, b.port)
        old = ex.templates.get(key)
        if old is not None and same_template(old, s, version, count, scope_count, options):
            # A refresh of the template held (RFC 7011 8.4 / RFC 3954 5.2 resend it unchanged):
            # restamped, not compiled again (~75,000 instructions for one of Open vSwitch's, what
            # a refused datagram's template refresh would cost otherwise, refuse_ipfix)
            skip_fields(s, version, count)
            refresh_template(ex, old, key, b.recv_time)
            continue
        spec = []
        for i in range(count):
            ie = rd_u16(s)
            length = rd_u16(s)
            pen = 0
            if version == 10 and ie & 0x8000:
                ie &= 0x7FFF
                pen = rd_u32(s)
            spec.append((ie, pen, length))
        try:
            t = compile_template(version, domain, tid, tuple(spec), scope_count, options, start, b.port,
                                 dec.split_biflows)
        except DecodeError as e:
            refuse_template(dec, ex, b, start, version, domain, tid, e.detail)
            continue
        if old is not None and max(old.refreshed, old.seen) > b.recv_time:
            # The wall clock stepped back (one that ran ahead, corrected): the (re)definition is
            # still the newest knowledge of its exporting process (export_state's "seen"), not
            # older than the definition it replaces: else a state file stamped before the step
            # (the previous run's, another worker's) outvoted it and the old layout came back
            # (RFC 7011 8). A millisecond later, as withdraw does.
            t.seen = max(old.refreshed, old.seen) + 0.001
        store_template(dec, ex, t, b.recv_time)
    return 0


cdef bint same_template(Template t, Reader* s, int version, uint16_t count, uint16_t scope_count,
                        bint options) noexcept:
    """The template record whose field specifiers start at s.pos (count of them, checked to fit
    the set) defines t again, field for field as received (Template.spec)."""
    cdef Py_ssize_t pos = s.pos
    cdef const uint8_t* p
    cdef uint16_t ie
    cdef uint32_t pen
    cdef int i
    if t.n_fields != count or t.scope_fields != scope_count or t.options != options:
        return False
    for i in range(count):
        p = s.buf + pos
        ie = be16(p)
        pen = 0
        pos += 4
        if version == 10 and ie & 0x8000:
            ie &= 0x7FFF
            pen = be32(p + 4)
            pos += 4
        if t.fields[i].ie != ie or t.fields[i].pen != pen or t.fields[i].length != be16(p + 2):
            return False
    return True


cdef void refresh_template(ExporterState ex, Template t, object key, double now):
    """t received again unchanged at `now`: what store_template does for a (re)definition of
    the same fields, on the template held (its refresh time and place in the eviction order,
    the clock-step rule of parse_template_set for its "seen")."""
    if max(t.refreshed, t.seen) > now:
        t.seen = max(t.refreshed, t.seen) + 0.001   # (the wall clock stepped back: see parse_template_set)
    t.refreshed = now
    if ex.withdrawn:
        ex.withdrawn.pop(t.port, None)
    seat_template(ex, key, t, True)


cdef int cut_options_header(Decoder dec, ExporterState ex, FlowBatch b, Reader* s, Py_ssize_t start, int version,
                            uint32_t domain, uint16_t tid) except -1:
    """An options template record whose header the end of its set cuts (not padding: that is
    zeros): refused as the records parse_template_set cannot read are, and the rest of the set
    goes with it; not a truncated datagram that would take the sets and messages after it."""
    refuse_template(dec, ex, b, start, version, domain, tid,
                    f"v{version} domain {domain} options template {tid}: header runs past the set")
    s.pos = s.end
    return 0


cdef int skip_fields(Reader* s, int version, uint16_t count) except -1:
    """Step over a template record's field specifiers: 1, or 0 when they run past the set."""
    cdef int i
    cdef const uint8_t* p
    for i in range(count):
        if rd_left(s) < 4:
            return 0
        p = rd_take(s, 4)
        if version == 10 and be16(p) & 0x8000:
            if rd_left(s) < 4:
                return 0
            rd_take(s, 4)       # enterprise number
    return 1


cdef int refuse_template(Decoder dec, ExporterState ex, FlowBatch b, Py_ssize_t start, int version,
                         uint32_t domain, uint16_t tid, str detail) except -1:
    """A template record flowscope cannot use: counted as bad_template, not fatal to the
    datagram. RFC 7011 8 and RFC 3954 5.2: a template id the exporter sends again is redefined,
    so its old definition is void even though the new one is refused: data in the new layout
    must never be read with the old."""
    if tid >= 256:
        drop_template(dec, ex, tkey(version, domain, tid, b.port))
    ex.count_error("bad_template")
    dec.log_limited("bad_template", ex.ip, f"{'ipfix' if version == 10 else 'netflow9'} template refused: "
                                           f"bad_template at offset {start}: {detail} (record skipped)")
    return 0


cdef void withdraw(Decoder dec, ExporterState ex, int version, uint32_t domain, uint16_t tid, bint options,
                   uint16_t port, double now):
    cdef Template t
    cdef list keys
    cdef double known = ex.withdrawn.get(port, 0.0) if ex.withdrawn else 0.0
    # The withdrawal is stamped later than what this decoder knew of the exporting process (its
    # templates' refresh and data, a state file's stamps loaded with them): after the wall clock
    # stepped back (a clock that ran ahead, corrected), a receive time older than those, or a tie,
    # let the older knowledge win (export_state's "seen": a state file merge, or another worker's
    # file at start) and brought the withdrawn templates back (RFC 7011 8.1). A millisecond later.
    for t in ex.templates.values():
        if t.port == port and max(t.refreshed, t.seen) > known:
            known = max(t.refreshed, t.seen)
    if known > now:
        now = known + 0.001
    if tid == 2 or tid == 3:
        keys = [k for k, t in ex.templates.items()
                if t.version == version and t.domain == domain and t.options == options and t.port == port]
        if options:
            # Every options template of the domain is withdrawn (RFC 7011 8.1): what their
            # data taught (sampling, clock) goes with them.
            forget_options(ex, version, domain, port)
    else:
        keys = [tkey(version, domain, tid, port)]
    for key in keys:
        drop_template(dec, ex, key)
    if options and tid >= 256:
        forget_unless_options_left(ex, version, domain, port)
    for t in ex.templates.values():
        if t.port == port:
            # what this process knows of the exporting process changed now (export_state's
            # "seen": another replica's older copy of the withdrawn template must not win)
            if now > t.seen:
                t.seen = now
            return
    mark_withdrawn(ex, port, now)    # its last template: remembered (ExporterState.withdrawn)


cdef void mark_withdrawn(ExporterState ex, object port, double when):
    """Remember that the exporting process on `port` withdrew its last template at `when`,
    bounded: an exporter that withdraws as it shuts down and restarts on a new source port
    (RFC 7011 8: a new Transport Session) leaves one entry a restart, which it never reuses
    soon. Past WITHDRAWN_MAX the oldest withdrawal goes: what it guards against, an older copy
    of that dead session's templates in another replica's file, would only take a table slot
    until evicted, while the entries of every restart for weeks are memory and state file."""
    cdef object oldest
    if port not in ex.withdrawn and len(ex.withdrawn) >= WITHDRAWN_MAX:
        oldest = min(ex.withdrawn, key=ex.withdrawn.__getitem__)
        if ex.withdrawn[oldest] > when:
            return                       # older than every one kept
        del ex.withdrawn[oldest]
    ex.withdrawn[port] = when


cdef void forget_unless_options_left(ExporterState ex, int version, uint32_t domain, uint16_t port):
    """An options template of an exporting process and domain is gone (withdrawn or evicted):
    when it was their last, what their options data taught goes with it. Another one (a sampler
    table beside an interface table) may be what taught the rates, so it stays while one is left."""
    cdef Template t
    for t in ex.templates.values():
        if t.options and t.version == version and t.domain == domain and t.port == port:
            return
    forget_options(ex, version, domain, port)


cdef void drop_template(Decoder dec, ExporterState ex, object key):
    """Forget one template (withdrawn, or redefined in a way flowscope refuses) and give back
    its fields to the per-exporter and global bounds."""
    cdef Template t = ex.templates.pop(key, None)
    cdef object k
    ex.last_t = None
    if t is not None:
        ex.template_fields -= t.n_fields
        dec.template_fields -= t.n_fields
        dec.template_count -= 1
        if t.version == 10:
            k = (<object>t.port << 16) | t.template_id
            if ex.tid_latest.get(k) is t:
                del ex.tid_latest[k]


cdef int store_template(Decoder dec, ExporterState ex, Template t, double now, bint make_room=True) except -1:
    """Keep a template received (or loaded) at `now`. The table's order is its refresh order:
    a template (re)defined goes last, so the first is the least recently refreshed. make_room:
    over max_template_fields, the other exporters seen least recently give way first (False
    when loading a state file: with --workers N every worker loads every worker's file)."""
    cdef object key = tkey(t.version, t.domain, t.template_id, t.port)
    cdef Template old = ex.templates.get(key)
    cdef Template victim = None
    cdef Py_ssize_t delta = t.n_fields - (old.n_fields if old is not None else 0)
    cdef Py_ssize_t freed = 0
    cdef Py_ssize_t grow
    t.refreshed = now
    if ex.withdrawn:
        ex.withdrawn.pop(t.port, None)   # the process has a template again
    if old is None and len(ex.templates) >= dec.max_templates:
        # RFC 7011 8.4: templates received over UDP have a lifetime, and those of a session the
        # exporter abandoned (it restarted on a new source port, RFC 7011 8) are void. Instead of
        # refusing the live session's templates once the dead ones fill the table, the one
        # refreshed least recently gives way; none expires by age alone (OVS resends every
        # 600 s, and templates must survive a collector restart).
        victim = next(iter(ex.templates.values()))
        freed = victim.n_fields
    # the bound counts each template as its fields plus TEMPLATE_COST_FIELDS
    grow = delta - freed + TEMPLATE_COST_FIELDS * ((old is None) - (victim is not None))
    # Exporters come and go (an autoscaling cluster's nodes are replaced, each new one from a
    # new address): the templates of those gone silent must not fill the bound for good and
    # lock every new exporter out, so the ones seen least recently are forgotten, as for
    # max_exporters (their counters folded), while other exporters hold templates.
    while (make_room and grow > 0 and dec.template_count > len(ex.templates)
           and dec.template_fields + TEMPLATE_COST_FIELDS * dec.template_count + grow > dec.max_template_fields):
        dec.evict(ex, f"all exporters' templates are over max_template_fields {dec.max_template_fields}")
    if grow > 0 and (dec.template_fields + TEMPLATE_COST_FIELDS * dec.template_count + grow
                     > dec.max_template_fields):
        # The memory of all exporters' templates together is bounded too (many addresses each
        # sending their per-exporter maximum of wide templates). RFC 7011 8 / RFC 3954 5.2: the
        # exporter has redefined the id, so the old definition is void even though the new one
        # is refused (else data in the new layout would be read with the old one).
        drop_template(dec, ex, key)
        ex.count_error("template_limit")
        dec.log_limited("template_limit", ex.ip, f"v{t.version} domain {t.domain} template "
                        f"{t.template_id} refused: all exporters' {dec.template_count} templates hold "
                        f"{dec.template_fields} fields, {TEMPLATE_COST_FIELDS} more counted per template "
                        f"(max_template_fields {dec.max_template_fields})")
        return 0
    if victim is not None:
        evict_template(dec, ex, victim)
    seat_template(ex, key, t, old is not None)
    ex.template_fields += delta
    dec.template_fields += delta
    if old is None:
        dec.template_count += 1
    if old is not None and old.options and not t.options:
        # An options template's id redefined as a data template (RFC 7011 8, RFC 3954 5.2: the
        # old definition is void): the options template is gone as if withdrawn, so when it was
        # the process and domain's last, what its options data taught (sampling, clock) goes
        # with it, as for a withdrawal or an eviction.
        forget_unless_options_left(ex, t.version, t.domain, t.port)
    return 0


cdef inline void seat_template(ExporterState ex, object key, Template t, bint held):
    """t goes last in the exporter's table (its refresh order; `held`: the key is there, taken
    out first) and is the one its id reads by (tid_latest, IPFIX): store_template's (re)definition
    and refresh_template's unchanged refresh alike."""
    if held:
        del ex.templates[key]
    ex.templates[key] = t
    ex.last_t = None
    if t.version == 10:
        ex.tid_latest[(<object>t.port << 16) | t.template_id] = t


cdef void evict_template(Decoder dec, ExporterState ex, Template victim):
    """Forget the least recently refreshed template for a new one, counted per exporter and
    protocol (flowscope_templates_evicted_total); the last options template of an exporting
    process and domain takes what their options data taught with it."""
    cdef str name = "ipfix" if victim.version == 10 else "netflow9"
    drop_template(dec, ex, tkey(victim.version, victim.domain, victim.template_id, victim.port))
    if victim.options:
        forget_unless_options_left(ex, victim.version, victim.domain, victim.port)
    ex.templates_evicted += 1
    ex.proto_stats(name)["templates_evicted"] += 1
    dec.log_limited("template_evicted", ex.ip, f"v{victim.version} domain {victim.domain} port {victim.port} "
                    f"template {victim.template_id} forgotten: the exporter has {dec.max_templates} templates "
                    f"and that one was refreshed least recently (counted in flowscope_templates_evicted_total)",
                    LOG_WARNING, True)


# ---------------------------------------------------------------- v9 / IPFIX data records

cdef inline bint mac_zero(const uint8_t* p) noexcept:
    """A MAC element of all zeros: no address (what exporters send for one they do not know)."""
    return p[0] == 0 and p[1] == 0 and p[2] == 0 and p[3] == 0 and p[4] == 0 and p[5] == 0


cdef int decode_record(Decoder dec, ExporterState ex, FlowBatch b, Template t, Reader* s,
                       int64_t export_ms, int64_t sysinit_ms, NameTable if_names) except -1:
    """Decode one data record of template t into a new Flow (options records update state);
    if_names: the interface table of t's exporting process and domain, None without one."""
    cdef int i, a
    cdef FieldSpec* fs
    cdef Py_ssize_t L
    cdef const uint8_t* p
    cdef Flow* f = batch_new_flow(b)
    cdef uint64_t v
    cdef int64_t start_sysup = -1, end_sysup = -1, start_delta = -1, end_delta = -1
    cdef int64_t rec_sysinit = -1, duration_ms = -1, latest_ms
    cdef bint dup
    cdef uint64_t dh = 0     # the record's dedup key once dedup_prefetch has it (is_duplicate), 0: not yet
    cdef int start_prec = 0, end_prec = 0   # absolute times: 1 seconds, 2 ms, 3 NTP (us/ns)
    # Time elements also kept as extras until the times they give are known (then removed
    # again): where they went among the batch's extras, and which (TX_DURATION, TX_SYSUP)
    cdef Py_ssize_t tx_at[4]
    cdef int tx_kind[4]
    cdef int n_tx = 0
    cdef uint64_t sampling_interval = 0, sampling_space = 0, sampler_id = 0
    cdef uint64_t sampling_size = 0, sampling_population = 0, scope_if = 0
    cdef uint64_t sampling_pkt_interval = 0, scope_outif = 0, scope_tid = 0
    cdef int scopes = 0     # SCOPE_* bits: the options record's scope fields (learn_options)
    cdef double sampling_prob = 0.0
    cdef uint32_t own_rate
    cdef bint inband = False
    cdef bint has_sampler = False, has_flags = False, has_ifname = False, has_out_ifname = False
    cdef uint16_t count_flags = 0
    cdef int ipversion = 0
    cdef Py_ssize_t rec_start = s.pos
    cdef uint8_t src4[4]
    cdef uint8_t dst4[4]
    cdef uint8_t nh4[4]
    cdef bint has_nh4 = False
    cdef int addrs = 0      # bits: 1 src4, 2 dst4, 4 src6, 8 dst6
    cdef int tun = 0        # the same bits for the tunnel endpoints
    cdef int ten = 0        # the same bits for VMware's tenant addresses; 16 protocol, 32/64 ports
    cdef uint8_t ten_src[16]
    cdef uint8_t ten_dst[16]
    cdef uint16_t ten_sport = 0, ten_dport = 0
    cdef uint8_t ten_proto = 0
    cdef uint8_t mask6_src = 0, mask6_dst = 0, icmp6_type = 0, icmp6_code = 0
    cdef int has_v6only = 0  # bits: 1 src mask, 2 dst mask
    cdef int icmp = 0        # bits: 1 an ICMP element (32, 176, 177), 2 an ICMPv6 one (139, 178, 179),
                             # 4 an ICMP type (32, 176), 8 an ICMPv6 type (139, 178)
    cdef int rev = 0         # REV_* bits: RFC 5103 reverse elements of a biflow record
    cdef uint64_t rev_bytes = 0, rev_packets = 0
    cdef int64_t rev_start = 0, rev_end = 0, rev_delta = 0
    cdef uint16_t rev_flags = 0
    cdef uint8_t rev_dscp = 0
    cdef Py_ssize_t fi
    cdef Flow* r
    cdef const uint8_t* sect = NULL    # PSAMP: the sampled packet's headers
    cdef Py_ssize_t sect_len = 0
    cdef bint sect_ip = False
    cdef uint64_t frame_size = 0
    cdef int64_t obs_ms = -1
    cdef uint16_t post_vlan = 0    # the first non-zero postVlanId / postDot1qVlanId (A_POST_VLAN)
    cdef int64_t t_ms
    memset(src4, 0, 4)
    memset(dst4, 0, 4)
    f.template_id = t.template_id
    for i in range(t.n_fields):
        fs = &t.fields[i]
        L = fs.length
        if L == VARLEN:
            # RFC 7011 7: one length byte, or 255 followed by a two-byte length.
            L = rd_u8(s)
            if L == 255:
                L = rd_u16(s)
        p = rd_take(s, L)
        a = fs.action
        if a == A_EXTRA:
            batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
        elif a == A_SKIP or a == A_SCOPE:
            pass
        elif a == A_BYTES:
            f.bytes = beN(p, L)
            f.present |= P_BYTES
        elif a == A_PACKETS:
            f.packets = beN(p, L)
            f.present |= P_PACKETS
        elif a == A_BYTES_TOTAL:
            if not f.present & P_BYTES:
                f.bytes = beN(p, L)
                f.present |= P_BYTES
        elif a == A_PACKETS_TOTAL:
            if not f.present & P_PACKETS:
                f.packets = beN(p, L)
                f.present |= P_PACKETS
        elif a == A_PROTO:
            f.proto = p[0]
            f.present |= P_PROTO
        elif a == A_TOS:
            f.dscp = p[0] >> 2
            f.present |= P_DSCP
        elif a == A_DSCP:
            # its 6 bits (IANA): the value ipClassOfService >> 2 gives (a template with both
            # takes Dscp from ipClassOfService; compile_template)
            f.dscp = p[0] & 0x3F
            f.present |= P_DSCP
        elif a == A_TCPFLAGS:
            # RFC 7125: 2-byte tcpControlBits carries NS/... in the high bits; keep the low 8.
            f.tcp_flags = <uint16_t>(beN(p, L) & 0xFF)
            has_flags = True
        elif a == A_SPORT:
            f.sport = be16r(p, L)
            f.present |= P_SPORT
        elif a == A_DPORT:
            f.dport = be16r(p, L)
            f.present |= P_DPORT
        elif a == A_SRC4:
            memcpy(src4, p, 4)
            addrs |= 1
        elif a == A_DST4:
            memcpy(dst4, p, 4)
            addrs |= 2
        elif a == A_SRC6:
            memcpy(f.src, p, 16)
            addrs |= 4
        elif a == A_DST6:
            memcpy(f.dst, p, 16)
            addrs |= 8
        elif a == A_SRCMASK:
            f.src_mask = p[0]
            f.present |= P_SRCMASK
        elif a == A_DSTMASK:
            f.dst_mask = p[0]
            f.present |= P_DSTMASK
        elif a == A_INIF:
            f.in_if = <uint32_t>beN(p, L)
            f.present |= P_INIF
        elif a == A_OUTIF:
            f.out_if = <uint32_t>beN(p, L)
            f.present |= P_OUTIF
        elif a == A_NEXTHOP4:
            memcpy(nh4, p, 4)
            has_nh4 = True
        elif a == A_NEXTHOP6:
            memcpy(f.nexthop, p, 16)
            f.nh_af = 6
        elif a == A_SRCAS:
            f.src_as = <uint32_t>beN(p, L)
            f.present |= P_SRCAS
        elif a == A_DSTAS:
            f.dst_as = <uint32_t>beN(p, L)
            f.present |= P_DSTAS
        elif a == A_END_SYSUP or a == A_START_SYSUP:
            if a == A_END_SYSUP:
                end_sysup = be32r(p, L)
            else:
                start_sysup = be32r(p, L)
            if sysinit_ms < 0:
                # IPFIX without a systemInitTimeMilliseconds (160) learned yet: the value is
                # kept as the element unless the record's own 160 anchors it (Mikrotik, IOS-XR)
                tx_at[n_tx] = b.n_extras
                tx_kind[n_tx] = TX_SYSUP
                n_tx += 1
                batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
        elif a == A_ICMP_TC:
            v = be16r(p, L)  # type * 256 + code
            f.icmp_type = <uint8_t>(v >> 8)
            f.icmp_code = <uint8_t>v
            icmp |= 1 | 4
        elif a == A_ICMP_TYPE:
            f.icmp_type = p[0]
            icmp |= 1 | 4
        elif a == A_ICMP_CODE:
            f.icmp_code = p[0]
            icmp |= 1
        elif a == A_SRCMASK6:
            mask6_src = p[0]
            has_v6only |= 1
        elif a == A_DSTMASK6:
            mask6_dst = p[0]
            has_v6only |= 2
        elif a == A_ICMP_TC6:
            v = be16r(p, L)
            icmp6_type = <uint8_t>(v >> 8)
            icmp6_code = <uint8_t>v
            icmp |= 2 | 8
        elif a == A_ICMP_TYPE6:
            icmp6_type = p[0]
            icmp |= 2 | 8
        elif a == A_ICMP_CODE6:
            icmp6_code = p[0]
            icmp |= 2
        elif a == A_SAMPLING_INTERVAL:
            sampling_interval = beN(p, L)
        elif a == A_SAMPLING_PKT_SPACE:
            sampling_space = beN(p, L)
        elif a == A_SAMPLING_SIZE:
            sampling_size = beN(p, L)
        elif a == A_SAMPLING_POPULATION:
            sampling_population = beN(p, L)
        elif a == A_SAMPLER_ID:
            sampler_id = beN(p, L)
            has_sampler = True
        elif a == A_SAMPLING_ALGO:
            pass
        elif a == A_SAMPLING_PROB:
            sampling_prob = be_float(p, L)
        elif a == A_SCOPE_IF:
            scope_if = beN(p, L)
            scopes |= SCOPE_IF
        elif a == A_SAMPLING_PKT_INTERVAL:
            sampling_pkt_interval = beN(p, L)
        elif a == A_SAMPLING_INTERVAL_MORE:
            batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
            if not sampling_interval:
                sampling_interval = beN(p, L)
        elif a == A_SCOPE_OUTIF:
            scope_outif = beN(p, L)
            scopes |= SCOPE_OUTIF
        elif a == A_SCOPE_TID:
            scope_tid = beN(p, L)
            scopes |= SCOPE_TID
        elif a == A_SRCMAC:
            # (an all-zero value after a post element's address leaves that address)
            if not (f.present & P_SRCMAC and mac_zero(p)):
                memcpy(f.src_mac, p, 6)
                f.present |= P_SRCMAC
        elif a == A_DSTMAC:
            if not (f.present & P_DSTMAC and mac_zero(p)):
                memcpy(f.dst_mac, p, 6)
                f.present |= P_DSTMAC
        elif a == A_POST_SRCMAC:
            # kept as it came, and the MAC where 56 gives none (all zeros), whichever comes first
            batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
            if not mac_zero(p) and not (f.present & P_SRCMAC and not mac_zero(f.src_mac)):
                memcpy(f.src_mac, p, 6)
                f.present |= P_SRCMAC
        elif a == A_POST_DSTMAC:
            batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
            if not mac_zero(p) and not (f.present & P_DSTMAC and not mac_zero(f.dst_mac)):
                memcpy(f.dst_mac, p, 6)
                f.present |= P_DSTMAC
        elif a == A_VLAN:
            # IEEE 802.1Q: VID 0 means the frame carries a priority tag only, no VLAN (Cisco
            # IOS-XR sends dot1qVlanId 0 for untagged traffic): no Vlan, as for sFlow. With both
            # vlanId (58) and dot1qVlanId (243) the first non-zero one is the Vlan, the other
            # kept as it came.
            v = be16r(p, L) & 0x0FFF
            if v and not f.present & P_VLAN:
                f.vlan = <uint16_t>v
                f.present |= P_VLAN
            elif v and t.vlans > 1:
                batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
        elif a == A_POST_VLAN:
            # kept as it came; the Vlan only when no vlanId/dot1qVlanId (58/243) gives one, after
            # the record (nfdump's nfreplay sends the frame's tag in postVlanId (59), vlanId 0)
            batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
            if not post_vlan:
                post_vlan = be16r(p, L) & 0x0FFF
        elif a == A_IPVERSION:
            ipversion = p[0]
        elif a == A_DIRECTION:
            if p[0] <= 1:  # RFC 5102 flowDirection: 0 ingress, 1 egress; other values unknown
                f.direction = <int8_t>p[0]
        elif a == A_IFNAME:
            # OVS egress templates carry interfaceName twice: the first is the ingress port.
            # A fixed-length name is NUL-padded (v9 IF_NAME): an all-NUL one is no name.
            while L and p[L - 1] == 0:
                L -= 1
            if not has_ifname:
                f.in_name_off = <uint32_t>(p - s.buf)
                f.in_name_len = <uint16_t>L
                has_ifname = True
            elif not has_out_ifname:
                f.out_name_off = <uint32_t>(p - s.buf)
                f.out_name_len = <uint16_t>L
                has_out_ifname = True
            else:   # a third one has no meaning flowscope knows: kept as the element
                batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
        elif a == A_ENDREASON:
            f.end_reason = p[0]
            f.present |= P_ENDREASON
        elif a == A_FWDSTATUS:
            # forwardingStatus: its structure is the least significant byte (IANA; Cisco sends
            # 4 bytes, 0x000000c3), status in the top two bits (2 = dropped), reason in the rest.
            v = <uint32_t>(beN(p, L) & 0xFF)
            f.fwd_status = <uint16_t>(0x100 | v)
            if v >> 6 == 2:
                f.drop_src = DROP_FWDSTATUS
                f.drop_reason = v
                f.present |= P_DROP
        # Absolute times: a template with more than one precision of a time (flowStartSeconds
        # and flowStartMilliseconds) takes the finest whatever their order, the first of it
        # (else seconds after milliseconds would truncate the start, or the end only, and put
        # the end before the start). A value of 0 is no time, as the NTP ones' all zeros (RFC
        # 5905 6): no flow is from January 1970, and exporters send 0 for a time they do not
        # have (ulogd2's IPFIX output: the end of a conntrack NEW event, the start of one
        # without conntrack timestamps); published, it was a flow of 1970 (a consumer such as
        # Loki refuses entries that old), or one that ended before it started.
        elif a == A_START_S:
            if start_prec < 1 and be32(p):
                f.t_start_ms = <int64_t>be32(p) * 1000
                f.present |= P_TSTART
                start_prec = 1
        elif a == A_END_S:
            if end_prec < 1 and be32(p):
                f.t_end_ms = <int64_t>be32(p) * 1000
                f.present |= P_TEND
                end_prec = 1
        elif a == A_START_MS:
            if start_prec < 2 and be64(p):
                f.t_start_ms = <int64_t>be64(p)
                f.present |= P_TSTART
                start_prec = 2
        elif a == A_END_MS:
            if end_prec < 2 and be64(p):
                f.t_end_ms = <int64_t>be64(p)
                f.present |= P_TEND
                end_prec = 2
        elif a == A_START_US or a == A_START_NS:
            t_ms = timeval_to_ms(p) if L == 16 else ntp_to_ms(p, a == A_START_US)
            if start_prec < 3 and t_ms >= 0:    # (-1: an NTP time that gives none)
                f.t_start_ms = t_ms
                f.present |= P_TSTART
                start_prec = 3
        elif a == A_END_US or a == A_END_NS:
            t_ms = timeval_to_ms(p) if L == 16 else ntp_to_ms(p, a == A_END_US)
            if end_prec < 3 and t_ms >= 0:
                f.t_end_ms = t_ms
                f.present |= P_TEND
                end_prec = 3
        elif a == A_START_DELTA_US:
            start_delta = be32r(p, L)
        elif a == A_END_DELTA_US:
            end_delta = be32r(p, L)
        elif a == A_SYSINIT_MS:
            rec_sysinit = <int64_t>be64(p)
        elif a == A_DURATION_MS or a == A_DURATION_US:
            # the first of 161 / 162 gives the duration; each is also kept as the element, in
            # template order, until the times it completes are known (removed again then)
            if duration_ms < 0:
                duration_ms = <int64_t>beN(p, L) // (1 if a == A_DURATION_MS else 1000)
            tx_at[n_tx] = b.n_extras
            tx_kind[n_tx] = TX_DURATION
            n_tx += 1
            batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
        elif a == A_ETYPE:
            f.etype = be16r(p, L)
            f.present |= P_ETYPE
        elif a == A_FIN_COUNT:
            count_flags |= TCP_FIN if beN(p, L) else 0
        elif a == A_SYN_COUNT:
            count_flags |= TCP_SYN if beN(p, L) else 0
        elif a == A_RST_COUNT:
            count_flags |= TCP_RST if beN(p, L) else 0
        elif a == A_PSH_COUNT:
            count_flags |= TCP_PSH if beN(p, L) else 0
        elif a == A_ACK_COUNT:
            count_flags |= TCP_ACK if beN(p, L) else 0
        elif a == A_URG_COUNT:
            count_flags |= TCP_URG if beN(p, L) else 0
        elif a == A_TUN_TYPE:
            f.tun_type = p[0]
            f.present |= P_TUNTYPE
        elif a == A_TUN_KEY:
            if 0 < L <= 8:
                f.tun_id = beN(p, L)
                f.present |= P_TUNID
            else:   # no number fits it (empty, or a key longer than 64 bits): kept as the element
                batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
        elif a == A_TUN_SRC4:
            memcpy(f.tun_src, p, 4)
            f.tun_af = 4
            tun |= 1
        elif a == A_TUN_DST4:
            memcpy(f.tun_dst, p, 4)
            f.tun_af = 4
            tun |= 2
        elif a == A_TUN_SRC6:
            memcpy(f.tun_src, p, 16)
            f.tun_af = 6
            tun |= 4
        elif a == A_TUN_DST6:
            memcpy(f.tun_dst, p, 16)
            f.tun_af = 6
            tun |= 8
        elif a == A_TUN_PROTO:
            f.tun_proto = p[0]
            f.present |= P_TUNPROTO
        elif a == A_TUN_SPORT:
            f.tun_sport = be16r(p, L)
            f.present |= P_TUNSPORT
        elif a == A_TUN_DPORT:
            f.tun_dport = be16r(p, L)
            f.present |= P_TUNDPORT
        elif a == A_REV_BYTES:
            rev_bytes = beN(p, L)
            rev |= REV_BYTES
        elif a == A_REV_PACKETS:
            rev_packets = beN(p, L)
            rev |= REV_PACKETS
        elif a == A_REV_BYTES_TOTAL:
            if not rev & REV_BYTES:
                rev_bytes = beN(p, L)
                rev |= REV_BYTES
        elif a == A_REV_PACKETS_TOTAL:
            if not rev & REV_PACKETS:
                rev_packets = beN(p, L)
                rev |= REV_PACKETS
        elif a == A_REV_TCPFLAGS:
            rev_flags = <uint16_t>(beN(p, L) & 0xFF)
            rev |= REV_FLAGS
        elif a == A_REV_TOS:
            rev_dscp = p[0] >> 2
            rev |= REV_DSCP
        elif a == A_REV_START_MS:
            rev_start = <int64_t>be64(p)
            if rev_start:   # (0: no time, as for the forward times)
                rev |= REV_START
        elif a == A_REV_END_MS:
            rev_end = <int64_t>be64(p)
            if rev_end:
                rev |= REV_END
        elif a == A_FRAME_SECTION or a == A_IP_SECTION:
            sect = p
            sect_len = L
            sect_ip = a == A_IP_SECTION
        elif a == A_FRAME_SIZE:
            frame_size = beN(p, L)
        elif a == A_OBS_S:
            obs_ms = <int64_t>be32(p) * 1000
        elif a == A_OBS_MS:
            obs_ms = <int64_t>be64(p)
        elif a == A_OBS_US or a == A_OBS_NS:
            obs_ms = ntp_to_ms(p, a == A_OBS_US)
        elif a == A_TEN_SRC4:
            memcpy(ten_src, p, 4)
            ten |= 1
        elif a == A_TEN_DST4:
            memcpy(ten_dst, p, 4)
            ten |= 2
        elif a == A_TEN_SRC6:
            memcpy(ten_src, p, 16)
            ten |= 4
        elif a == A_TEN_DST6:
            memcpy(ten_dst, p, 16)
            ten |= 8
        elif a == A_TEN_PROTO:
            ten_proto = p[0]
            ten |= 16
        elif a == A_TEN_SPORT:
            ten_sport = be16r(p, L)
            ten |= 32
        elif a == A_TEN_DPORT:
            ten_dport = be16r(p, L)
            ten |= 64
        elif a == A_L2SEG:
            # the top byte: 1 VXLAN, 2 NVGRE (IANA); another (0: reserved) is kept as it came
            if (p[0] == 1 or p[0] == 2) and not f.present & P_TUNTYPE:
                f.tun_type = TUN_VXLAN if p[0] == 1 else TUN_GRE
                f.tun_id = be64(p) & <uint64_t>0x00FFFFFFFFFFFFFFULL
                f.present |= P_TUNTYPE | P_TUNID
            else:
                batch_add_extra(b, f, fs.pen, fs.ie, p - s.buf, L)
        elif a == A_TCPFLAGS_INIT or a == A_TCPFLAGS_UNION:
            f.tcp_flags |= p[0]     # no tcpControlBits in the template (compile_template)
            has_flags = True
        elif a == A_REV_TCPFLAGS_INIT or a == A_REV_TCPFLAGS_UNION:
            rev_flags |= p[0]
            rev |= REV_FLAGS
        elif a == A_REV_DELTA_MS:
            rev_delta = <int64_t>beN(p, L)
            rev |= REV_DELTA

    if addrs:
        pick_family(f, src4, dst4, (addrs & 3) != 0, (addrs & 12) != 0, ipversion)
        # A template with one address of the family and not the other: the missing one has no
        # value and is omitted (DESIGN.md), never published as 0.0.0.0 or ::.
        f.noaddr = <uint8_t>(3 & ~(addrs if f.af == 4 else addrs >> 2))
    if tun:
        # The same for the tunnel endpoints (OVS's PEN 6876 elements), and a zero one (tun_noaddr).
        f.noaddr |= tun_noaddr(f, tun if f.tun_af == 4 else tun >> 2)
    if ten & 15 and not tun and tenant_there(ten, ten_src, ten_dst):
        tenant_flow(f, ten, ten_src, ten_dst, ten_proto, ten_sport, ten_dport)
    elif ten:
        # no tenant address to be the flow (zeros: no tenant traffic), or OVS's own tunnel
        # elements beside them: the record's addresses stay the flow, the tenant elements as
        # they came
        extras_of(b, f, t, s.buf, rec_start, A_TEN_SRC4, A_TEN_DPORT)
    if has_nh4:
        pick_nexthop(f, nh4)
    if f.nh_af and addr_zero(f.nexthop, f.nh_af):
        # 0.0.0.0 / :: is "no next hop" (a local or dropped flow, a template filled for every
        # flow): omitted, as for v5 and sFlow, and as 507dc7f does for absent addresses.
        f.nh_af = 0
    if has_v6only:
        # IPv6 prefix lengths: used for an IPv6 flow, or when the template has no IPv4 element
        # of that kind.
        if has_v6only & 1 and (f.af == 6 or not f.present & P_SRCMASK):
            f.src_mask = mask6_src
            f.present |= P_SRCMASK
        if has_v6only & 2 and (f.af == 6 or not f.present & P_DSTMASK):
            f.dst_mask = mask6_dst
            f.present |= P_DSTMASK
    if sect != NULL:
        # A PSAMP packet report (Juniper inline monitoring, softflowd -v psamp): one sampled
        # packet, its headers in the record. What the template's own elements lack comes from
        # them (addresses, ports, protocol, MACs, VLAN, DSCP, flags, tunnel), Bytes from its
        # dataLinkFrameSize (else from its headers' lengths), and it is one packet.
        # tcpControlBits (or the tcp*TotalCount elements) and the ICMP elements are the
        # template's own too, though their presence bits are only set below: the section's
        # flags and ICMP type must not replace them.
        packet_section(f, s.buf, sect - s.buf, sect_len, sect_ip,
                       P_FLAGS if has_flags or count_flags or t.has_tcp_counts else 0, icmp)
        if not f.present & P_PACKETS:
            f.packets = 1
            f.present |= P_PACKETS
        if not f.present & P_BYTES:
            if not frame_size:     # absent, or 0 (says nothing)
                frame_size = section_length(sect, sect_len, sect_ip)
            if frame_size:
                f.bytes = frame_size
                f.present |= P_BYTES
    if post_vlan and not f.present & P_VLAN:
        # RFC 7012 postVlanId / postDot1qVlanId: the VLAN "associated with the egress interface",
        # which an exporter that knows one VLAN per flow may send alone (nfdump's nfreplay: the
        # frame's tag in 59, vlanId 0), as for the post MAC elements: the Vlan when the
        # ingress elements (and a packet section's own tag) give none.
        f.vlan = post_vlan
        f.present |= P_VLAN
    if icmp and f.present & P_PROTO and (f.proto == 1 or f.proto == 58):
        # ICMP type and code belong to an ICMP (1) or ICMPv6 (58) flow only: templates that
        # carry 32/139/176-179 on every flow fill 0 ("echo reply") for TCP and UDP, and
        # NetObserv writes IcmpType/IcmpCode for protocols 1 and 58 alone (as the v5 and sFlow
        # decoders do). The protocol picks the family's elements, the other family's when the
        # template has only those (v9 exporters send ICMP_TYPE (32) for ICMPv6 too).
        # A code without its family's type (177 or 179 alone) gives no ICMP field: codes are
        # defined per type (RFC 792, RFC 4443), and the type left at 0 would state "echo reply"
        # (ICMPv6: a reserved type) that the exporter never sent. (A packet section's own ICMP
        # header then stays the flow's: packet_section.)
        if icmp & 8 and (f.proto == 58 or not icmp & 1):
            f.icmp_type = icmp6_type
            f.icmp_code = icmp6_code
            f.present |= P_ICMP
        elif icmp & 4:
            f.present |= P_ICMP     # (also an ICMPv6 flow with 32 and a lone 179: 32's, as v9 sends)
    if f.present & P_PROTO and (f.proto == 1 or f.proto == 58):
        if not icmp and f.present & P_DPORT and not 0 < f.dport < 256 and not (f.dport == 0 and f.proto == 58):
            # No ICMP element: pmacct's templates (and akvorado's corpus capture) carry type and
            # code in destinationTransportPort (type << 8 | code), as NetFlow v5 does. A value
            # below 256 cannot be that (type 0, echo reply, has only code 0): Procera writes the
            # bare type there, which is not guessed at; and 0 for ICMPv6, whose type 0 is
            # reserved, is an exporter's placeholder (Cisco's also write bare ICMPv6 types).
            f.icmp_type = <uint8_t>(f.dport >> 8)
            f.icmp_code = <uint8_t>f.dport
            f.present |= P_ICMP
    if f.present & P_PROTO and not has_ports(f.proto):
        # Ports are TCP's, UDP's and SCTP's: NetObserv writes SrcPort/DstPort for those only.
        # Other flows' port elements hold zeros (IGMP, GRE), an ICMP type and code (just read),
        # or whatever the exporter put there (an ESP SPI).
        f.present &= ~(<uint64_t>(P_SPORT | P_DPORT))

    if t.options:
        # Options data teaches the exporter's clock and sampling; it is not a flow.
        own_rate = rate_from(sampling_interval, sampling_pkt_interval, sampling_space, sampling_size,
                             sampling_population, sampling_prob)
        learn_options(dec, ex, t, own_rate, has_sampler, sampler_id, scopes, scope_if, scope_outif, scope_tid,
                      rec_sysinit)
        if t.not_sent:
            learn_not_sent(ex, t, s.buf, rec_start, s.pos)
        if t.if_names:
            learn_if_name(dec, ex, t, s.buf, rec_start, s.pos)
        if dec.keep_options:
            if b._options is None:
                b._options = []
            b._options.append(options_dict(b, f, t, rec_start, s.pos))
        batch_drop_last(b)
        return 0

    # Times: absolute fields win; else sysUpTime-relative (v9 header or IE 160); else deltas
    # before the export time (RFC 7011 flowStart/EndDeltaMicroseconds, what OVS sends).
    # The latest instant a sysUpTime value can stand for (sysup_time): up to SYSUP_SKEW_MS after
    # the export. With systemInitTimeMilliseconds (IE 160) export time and system init come from
    # two clock readings (the export time in whole seconds, RFC 7011 3.1); with the v9 header's
    # sysUpTime, exporters stamp flows from their own packet clock (nProbe's run 13 s ahead of
    # its header): a value somewhat after the export is their disagreement, not a counter that
    # wrapped 49.7 days ago.
    if f.af and f.direction >= 0 and not rev and ex.dedup_keys != NULL and dec.track_duplicates:
        dh = dedup_prefetch(ex, f)     # (not a biflow record: one may be reversed in place below)
    latest_ms = export_ms + SYSUP_SKEW_MS
    if rec_sysinit >= 0:
        sysinit_ms = rec_sysinit
    if n_tx and sysinit_ms >= 0:
        drop_time_extras(b, f, tx_at, tx_kind, n_tx, TX_SYSUP)   # anchored: they are the times
    if not f.present & P_TSTART:
        if start_sysup >= 0 and sysinit_ms >= 0:
            f.t_start_ms = sysup_time(sysinit_ms, start_sysup, latest_ms)
            f.present |= P_TSTART
        elif start_delta >= 0:
            # the instant export - delta, truncated to its millisecond as the NTP times are
            f.t_start_ms = export_ms - (start_delta + 999) // 1000
            f.present |= P_TSTART
    if not f.present & P_TEND:
        if end_sysup >= 0 and sysinit_ms >= 0:
            f.t_end_ms = sysup_time(sysinit_ms, end_sysup, latest_ms)
            f.present |= P_TEND
        elif end_delta >= 0:
            f.t_end_ms = export_ms - (end_delta + 999) // 1000
            f.present |= P_TEND
    if duration_ms >= 0:
        # flowDurationMilliseconds (161) / Microseconds (162): the time from the flow's first to
        # its last packet (RFC 5102), so one end and the duration give the other.
        if f.present & P_TSTART and not f.present & P_TEND:
            f.t_end_ms = f.t_start_ms + duration_ms
            f.present |= P_TEND
        elif f.present & P_TEND and not f.present & P_TSTART:
            f.t_start_ms = f.t_end_ms - duration_ms
            f.present |= P_TSTART
        elif obs_ms >= 0 and not f.present & (P_TSTART | P_TEND):
            # an observation time and a duration alone: the flow was observed (reported) at
            # its end
            f.t_end_ms = obs_ms
            f.t_start_ms = obs_ms - duration_ms
            f.present |= P_TSTART | P_TEND
        if f.present & P_TSTART:
            # the times carry it; with no time to anchor it (Barracuda sends the duration
            # alone) the elements stay as they are
            drop_time_extras(b, f, tx_at, tx_kind, n_tx, TX_DURATION)
    if obs_ms >= 0:
        # the instant the packet (PSAMP) or the event (NAT logging) was observed: the flow starts
        # and ends then, unless the record has flow times of its own, in any of their forms
        # (absolute, sysUpTime-relative, deltas, with a duration)
        # (with one flow time of its own, the other never passes it: start <= end)
        if not f.present & P_TSTART:
            f.t_start_ms = min(obs_ms, f.t_end_ms) if f.present & P_TEND else obs_ms
            f.present |= P_TSTART
        if not f.present & P_TEND:
            f.t_end_ms = max(obs_ms, f.t_start_ms)
            f.present |= P_TEND
    if not f.present & (P_TSTART | P_TEND) and (start_sysup >= 0 or end_sysup >= 0):
        # IPFIX sysUpTime-relative times with no systemInitTimeMilliseconds (160) known (MikroTik
        # sends none; Juniper's options data comes every 10 minutes): no flow without times
        # (NetObserv's always have both), so it ends at its export and lasts its duration (161/162)
        # or what the two values say; the values stay as they came (ie21/ie22), which tells such
        # a record. sysUpTime is a 32-bit counter (sysup_time): an end below the start is one
        # counted after the counter wrapped, so the duration is their difference modulo 2^32.
        f.t_end_ms = export_ms
        f.t_start_ms = export_ms - (duration_ms if duration_ms >= 0 else
                                    (end_sysup - start_sysup) & 0xFFFFFFFF if start_sysup >= 0 and end_sysup >= 0
                                    else 0)
        f.present |= P_TSTART | P_TEND

    if has_flags:
        f.present |= P_FLAGS
    elif count_flags or (f.proto == 6 and f.present & P_PROTO and t.has_tcp_counts):
        # OVS sends no tcpControlBits: a flag is set when its total counter is non-zero.
        f.tcp_flags = count_flags
        f.present |= P_FLAGS | P_FLAGCOUNTS

    if f.af and not f.present & P_ETYPE:
        # both ends IPv4-mapped (::ffff:a.b.c.d in IE 27/28): IPv4 traffic, which no IPv6 packet
        # carries (RFC 4291 2.5.5.2); written as dotted quads (buf_ip), and IPv4's EtherType
        f.etype = 0x0800 if f.af == 4 or (v4mapped(f.src) and v4mapped(f.dst)) else 0x86DD
        f.present |= P_ETYPE

    if if_names is not None:
        # (a record of an exporter without names pays that test alone, benchmarks/RESULTS.md;
        # learned_names tells a record's own names by their offsets)
        learned_names(if_names, b, f)     # (a record's own non-empty interfaceName wins)

    own_rate = rate_from(sampling_interval, sampling_pkt_interval, sampling_space, sampling_size,
                         sampling_population, sampling_prob)
    f.sampling = resolve_sampling(dec, ex, t, own_rate, has_sampler, sampler_id, f, &inband)
    if inband:
        f.present |= P_SAMPLING
    if rev & (REV_BYTES | REV_PACKETS) and (rev_bytes or rev_packets):
        # RFC 5103 biflow, with --split-biflows (rev is 0 without): the reverse direction's
        # traffic is a flow of its own (NetObserv's records are one direction each). A record
        # whose forward counters are 0 carries the reverse direction only (softflowd -b keys
        # its biflows by address order).
        if not (f.bytes or f.packets):
            reverse_flow(f, rev, rev_bytes, rev_packets, rev_flags, rev_dscp, rev_start, rev_end, rev_delta, True)
        else:
            fi = f - b.flows
            r = batch_new_flow(b)       # may move the batch's array
            f = &b.flows[fi]
            memcpy(r, f, sizeof(Flow))  # the extras stay the forward flow's, shared
            reverse_flow(r, rev, rev_bytes, rev_packets, rev_flags, rev_dscp, rev_start, rev_end, rev_delta, False)
            return 0    # two flows: the ingress/egress twin check is for one-direction records
    if f.direction >= 0 and dec.track_duplicates and (f.af or f.present & (P_SRCMAC | P_DSTMAC)):
        # (sampled 1:N, one packet's two samples are independent draws: sampled_twin)
        dup = sampled_twin(ex, t, f, dh) if f.sampling > 1 else is_duplicate(ex, f, dh)
        if dup:
            f.duplicate = 1
            if dec.dedup:
                ex.dropped["duplicate"] = ex.dropped.get("duplicate", 0) + 1
                if b._dropped is None:
                    b._dropped = {}
                b._dropped["duplicate"] = b._dropped.get("duplicate", 0) + 1
                batch_drop_last(b)
    return 0


cdef uint64_t section_length(const uint8_t* p, Py_ssize_t n, bint ip) noexcept:
    """A sampled packet's length from its own headers, for a PSAMP report without
    dataLinkFrameSize (softflowd): the IP total length (IPv6: payload length + 40), plus the
    Ethernet header, VLAN tags, MPLS labels or PPPoE session header before it in a frame
    section; 0 when the section does not reach it or carries no IP (other EtherTypes)."""
    cdef Py_ssize_t o = 0
    cdef uint16_t etype
    if not ip:
        if n < 14:
            return 0
        etype = be16(p + 12)
        o = 14
        while etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:
            if n < o + 4:
                return 0
            etype = be16(p + o + 2)
            o += 4
        if etype == 0x8847 or etype == 0x8848:
            # an MPLS label stack (RFC 3032): the labels up to the bottom of stack count as the
            # VLAN tags do; IP under it is told by its version nibble, as the headers' parser does
            while True:
                if n < o + 4:
                    return 0
                o += 4
                if p[o - 2] & 1:
                    break
        elif etype == 0x8864:
            # a PPPoE session (RFC 2516): its 6-byte header and the PPP protocol, IPv4 or IPv6
            if n < o + 8 or (be16(p + o + 6) != 0x0021 and be16(p + o + 6) != 0x0057):
                return 0
            o += 8
        elif etype != 0x0800 and etype != 0x86DD:
            return 0
    if n >= o + 4 and p[o] >> 4 == 4:
        return <uint64_t>(o + be16(p + o + 2))
    if n >= o + 6 and p[o] >> 4 == 6:
        return <uint64_t>(o + 40 + be16(p + o + 4))
    return 0


cdef int section_headers(Flow* h, const uint8_t* buf, Py_ssize_t off, Py_ssize_t n, bint ip, int depth) except -1:
    """A packet section's headers into a cleared `h`; `depth` 1 leaves tunnels wrapped."""
    cdef Reader r
    memset(h, 0, sizeof(Flow))
    rd_init(&r, buf, off, off + n)
    if not ip:
        hdr_ethernet(h, &r, depth)
    elif n > 0 and buf[off] >> 4 == 4:
        hdr_ethertype(h, &r, 0x0800, depth)
    elif n > 0 and buf[off] >> 4 == 6:
        hdr_ethertype(h, &r, 0x86DD, depth)
    return 0


cdef int packet_section(Flow* f, const uint8_t* buf, Py_ssize_t off, Py_ssize_t n, bint ip,
                        uint64_t have, int icmp) except -1:
    """Fill what `f` lacks from a PSAMP record's packet section (dataLinkFrameSection from the
    Ethernet header on, or ipHeaderPacketSection from the IP header), parsed by the sFlow raw
    header parser: a section cut anywhere gives what it holds. `have`: P_* bits the record's own
    elements give that f.present does not show yet; `icmp`: decode_record's ICMP element bits (4
    an IPv4 type element, 8 an IPv6 one), the record's own type and code for a packet of that family."""
    cdef Flow h
    cdef uint64_t miss
    cdef uint8_t proto
    section_headers(&h, buf, off, n, ip, 0)
    if (h.present & P_TUNTYPE and f.af and not (f.af == h.af and memcmp(f.src, h.src, 16) == 0
                                                and memcmp(f.dst, h.dst, 16) == 0)):
        # a tunnelled packet whose outer addresses the template gives (not the inner ones): the
        # record describes the outer packet, so its headers are read without unwrapping, not
        # mixed with the inner packet's ports and protocol
        section_headers(&h, buf, off, n, ip, 1)
    if f.af == 0 and h.af:
        f.af = h.af
        memcpy(f.src, h.src, 16)
        memcpy(f.dst, h.dst, 16)
    proto = f.proto if f.present & P_PROTO else h.proto
    if (icmp & 4 and proto == 1) or (icmp & 8 and proto == 58):
        have |= P_ICMP      # (a code alone is no ICMP field of the record's: the section's win)
    miss = h.present & ~(f.present | have)
    if miss & P_SPORT:
        f.sport = h.sport
    if miss & P_DPORT:
        f.dport = h.dport
    if miss & P_PROTO:
        f.proto = h.proto
    if miss & P_ETYPE:
        f.etype = h.etype
    if miss & P_FLAGS:
        f.tcp_flags = h.tcp_flags
    if miss & P_DSCP:
        f.dscp = h.dscp
    if miss & P_ICMP:
        f.icmp_type = h.icmp_type
        f.icmp_code = h.icmp_code
    if miss & P_SRCMAC:
        memcpy(f.src_mac, h.src_mac, 6)
    if miss & P_DSTMAC:
        memcpy(f.dst_mac, h.dst_mac, 6)
    if miss & P_VLAN:
        f.vlan = h.vlan
    f.present |= miss & (P_SPORT | P_DPORT | P_PROTO | P_ETYPE | P_FLAGS | P_DSCP | P_ICMP | P_SRCMAC
                         | P_DSTMAC | P_VLAN | P_VLANHDR)
    if h.present & P_TUNTYPE and not f.present & (P_TUNTYPE | P_TUNID) and f.tun_af == 0:
        # the packet was VXLAN/Geneve: its outer headers are the tunnel's
        f.tun_af = h.tun_af
        memcpy(f.tun_src, h.tun_src, 16)
        memcpy(f.tun_dst, h.tun_dst, 16)
        f.tun_sport = h.tun_sport
        f.tun_dport = h.tun_dport
        f.tun_proto = h.tun_proto
        f.tun_type = h.tun_type
        f.tun_id = h.tun_id
        f.noaddr |= h.noaddr & (NOADDR_TUNSRC | NOADDR_TUNDST)
        f.present |= h.present & (P_TUNTYPE | P_TUNID | P_TUNSPORT | P_TUNDPORT | P_TUNPROTO)
    return 0


cdef inline uint64_t swap_bits(uint64_t v, uint64_t a, uint64_t b) noexcept:
    """v with the single bits a and b exchanged."""
    cdef uint64_t out = v & ~(a | b)
    if v & a:
        out |= b
    if v & b:
        out |= a
    return out


cdef void drop_time_extras(FlowBatch b, Flow* f, Py_ssize_t* at, int* kind, int n, int which) noexcept:
    """Remove the time elements of kind `which` kept among the flow's extras (decode_record's
    tx_at/tx_kind; the others' indexes move down accordingly)."""
    cdef Py_ssize_t drop[4]
    cdef int i, m = 0, gone = 0
    for i in range(n):
        if kind[i] == which:
            drop[m] = at[i]
            m += 1
    if m == 0:
        return
    drop_extras(b, f, drop, m)
    for i in range(n):
        if kind[i] == which:
            gone += 1
            kind[i] = 0
        else:
            at[i] -= gone
    # (entries of kind 0 are gone; a later call skips them)


cdef void reverse_flow(Flow* f, int rev, uint64_t rev_bytes, uint64_t rev_packets, uint16_t rev_flags,
                       uint8_t rev_dscp, int64_t rev_start, int64_t rev_end, int64_t rev_delta,
                       bint only) noexcept:
    """Turn a biflow record's flow into its reverse direction (RFC 5103): the endpoints swapped
    (addresses, ports, MACs, interfaces, AS numbers, masks, tunnel endpoints), the reverse
    elements' counters, and their flags, DSCP and times where the record has them (else the
    times are the record's, and the flags, DSCP, ICMP type, next hop and forwarding status,
    which differ by direction, none).
    An exporter's direction (ingress/egress) flips, and the Interfaces names turn with it (a pair
    swaps, a record's single name stays, its direction reversed). `only`: the record carries the reverse
    direction alone, so its ICMP type and code are that direction's."""
    cdef uint8_t tmp[16]
    cdef uint64_t pr = f.present
    memcpy(tmp, f.src, 16)
    memcpy(f.src, f.dst, 16)
    memcpy(f.dst, tmp, 16)
    f.sport, f.dport = f.dport, f.sport
    memcpy(tmp, f.src_mac, 6)
    memcpy(f.src_mac, f.dst_mac, 6)
    memcpy(f.dst_mac, tmp, 6)
    f.in_if, f.out_if = f.out_if, f.in_if
    if f.out_name_off or f.names_learned & NAMES_OUT:
        # a pair of names (ingress, egress) swaps with the interfaces
        f.in_name_off, f.out_name_off = f.out_name_off, f.in_name_off
        f.in_name_len, f.out_name_len = f.out_name_len, f.in_name_len
        f.names_learned = <uint8_t>swap_bits(f.names_learned, NAMES_IN, NAMES_OUT)
    elif f.direction < 0:
        # A single name is the one interface the record was observed on, written as ingress
        # without a direction ([name], IfDirections [0]); the reverse direction's packets
        # crossed that interface the other way: [name] with [1], as for a record with
        # flowDirection 0 (whose direction flips below). Moved to the egress slot, it was
        # ["", name] with [0, 1]: an ingress observation of an interface with no name.
        f.names_learned ^= NAMES_EGRESS
    f.src_as, f.dst_as = f.dst_as, f.src_as
    f.src_mask, f.dst_mask = f.dst_mask, f.src_mask
    memcpy(tmp, f.tun_src, 16)
    memcpy(f.tun_src, f.tun_dst, 16)
    memcpy(f.tun_dst, tmp, 16)
    f.tun_sport, f.tun_dport = f.tun_dport, f.tun_sport
    f.noaddr = <uint8_t>swap_bits(swap_bits(f.noaddr, NOADDR_SRC, NOADDR_DST), NOADDR_TUNSRC, NOADDR_TUNDST)
    pr = swap_bits(swap_bits(swap_bits(pr, P_SPORT, P_DPORT), P_SRCMAC, P_DSTMAC), P_INIF, P_OUTIF)
    pr = swap_bits(swap_bits(swap_bits(pr, P_SRCAS, P_DSTAS), P_SRCMASK, P_DSTMASK), P_TUNSPORT, P_TUNDPORT)
    pr &= ~(<uint64_t>(P_BYTES | P_PACKETS | P_FLAGS | P_FLAGCOUNTS | P_DSCP | P_DROP))
    # the forward direction's route and fate (next hop, forwardingStatus) are not the reverse's;
    # the other elements kept as extras stay the record's, shared by both flows
    f.nh_af = 0
    f.fwd_status = 0
    if not only:
        pr &= ~(<uint64_t>P_ICMP)
        f.icmp_type = f.icmp_code = 0
    f.bytes = rev_bytes
    f.packets = rev_packets
    if rev & REV_BYTES:
        pr |= P_BYTES
    if rev & REV_PACKETS:
        pr |= P_PACKETS
    f.tcp_flags = rev_flags
    if rev & REV_FLAGS:
        pr |= P_FLAGS
    f.dscp = rev_dscp
    if rev & REV_DSCP:
        pr |= P_DSCP
    if rev & REV_START:
        f.t_start_ms = rev_start
        pr |= P_TSTART
    elif rev & REV_DELTA and pr & P_TSTART:
        # YAF: the record's start is the forward direction's; the reverse one's first packet
        # came reverseFlowDeltaMilliseconds later (never after the record's end)
        f.t_start_ms += rev_delta
        if pr & P_TEND and f.t_start_ms > f.t_end_ms:
            f.t_start_ms = f.t_end_ms
    if rev & REV_END:
        f.t_end_ms = rev_end
        pr |= P_TEND
    if f.direction == 0 or f.direction == 1:
        f.direction = 1 - f.direction
    f.duplicate = 0
    f.present = pr


cdef int extras_of(FlowBatch b, Flow* f, Template t, const uint8_t* buf, Py_ssize_t pos, int lo,
                   int hi) except -1:
    """Keep as extras the elements of the record at pos (decoded whole) whose actions are lo..hi:
    read, and then not used."""
    cdef int i
    cdef Py_ssize_t L
    cdef FieldSpec* fs
    for i in range(t.n_fields):
        fs = &t.fields[i]
        L = fs.length
        if L == VARLEN:
            L = buf[pos]
            pos += 1
            if L == 255:
                L = be16(buf + pos)
                pos += 2
        if lo <= fs.action <= hi:
            batch_add_extra(b, f, fs.pen, fs.ie, pos, L)
        pos += L
    return 0


cdef bint tenant_there(int ten, const uint8_t* src, const uint8_t* dst) noexcept:
    """A tenant address carried and not the unspecified one (of the family carried)."""
    cdef uint8_t af = 4 if ten & 3 else 6
    return bool((ten & 5 and not addr_zero(src, af)) or (ten & 10 and not addr_zero(dst, af)))


cdef void tenant_flow(Flow* f, int ten, const uint8_t* src, const uint8_t* dst, uint8_t proto,
                      uint16_t sport, uint16_t dport) noexcept:
    """VMware vDS / NSX-V VXLAN templates: the record's own addresses, ports and protocol are the
    VXLAN packet's (between the hosts' VTEPs), its tenant elements the VM's traffic inside. The
    flow is the VM's (its pods and services are what enrichment looks up), the outer header its
    tunnel, as Open vSwitch's tunnel elements give one."""
    cdef int have
    if f.af:
        f.tun_af = f.af
        memcpy(f.tun_src, f.src, 16)
        memcpy(f.tun_dst, f.dst, 16)
        f.noaddr = (f.noaddr & 3) << 2      # NOADDR_SRC/DST -> NOADDR_TUNSRC/TUNDST
        f.noaddr |= tun_noaddr(f, 3 & ~(f.noaddr >> 2))
    if f.present & P_PROTO:
        f.tun_proto = f.proto
        f.present |= P_TUNPROTO
        if has_ports(f.proto):
            if f.present & P_SPORT:
                f.tun_sport = f.sport
                f.present |= P_TUNSPORT
            if f.present & P_DPORT:
                f.tun_dport = f.dport
                f.present |= P_TUNDPORT
    f.present &= ~(<uint64_t>(P_SPORT | P_DPORT | P_PROTO))
    memset(f.src, 0, 16)
    memset(f.dst, 0, 16)
    if ten & 3:
        f.af = 4
        have = ten & 3
    else:
        f.af = 6
        have = (ten >> 2) & 3
    if have & 1:
        memcpy(f.src, src, 4 if f.af == 4 else 16)
    if have & 2:
        memcpy(f.dst, dst, 4 if f.af == 4 else 16)
    f.noaddr = (f.noaddr & ~3) | (3 & ~have)
    f.present &= ~(<uint64_t>P_ETYPE)   # the outer frame's: decode_record gives the tenant family's
    f.sport, f.dport, f.proto = sport, dport, proto
    if ten & 16:
        f.present |= P_PROTO
    if ten & 32:
        f.present |= P_SPORT
    if ten & 64:
        f.present |= P_DPORT


cdef void pick_family(Flow* f, const uint8_t* src4, const uint8_t* dst4, bint has4, bint has6, int ipversion) noexcept:
    """Some exporters (Procera, some Cisco) fill both IPv4 and IPv6 address elements in one
    template, leaving the family not in use zero. ipVersion (IE 60) decides when present (a
    template with one family's elements only has that family whatever it says); else the family
    with a non-zero address wins, IPv4 on a tie."""
    cdef bint nz4 = be32(src4) != 0 or be32(dst4) != 0
    cdef bint nz6 = False
    cdef int i
    if has6:
        for i in range(16):
            if f.src[i] or f.dst[i]:
                nz6 = True
                break
    if has4 and (not has6 or ipversion == 4 or (ipversion != 6 and (nz4 or not nz6))):
        memset(f.src, 0, 16)
        memset(f.dst, 0, 16)
        memcpy(f.src, src4, 4)
        memcpy(f.dst, dst4, 4)
        f.af = 4
    else:
        f.af = 6


cdef void pick_nexthop(Flow* f, const uint8_t* nh4) noexcept:
    """ipNextHopIPv4Address (15) and ipNextHopIPv6Address (62) in one template (the exporters
    of pick_family): the flow's address family picks; a flow without addresses takes the
    non-zero one, IPv4 on a tie. A template with only 15 takes it."""
    cdef int i
    cdef bint nz6 = False
    if f.nh_af == 6:
        if f.af == 6:
            return
        if f.af == 0:
            for i in range(16):
                if f.nexthop[i]:
                    nz6 = True
                    break
            if nz6 and be32(nh4) == 0:
                return
    memset(f.nexthop, 0, 16)
    memcpy(f.nexthop, nh4, 4)
    f.nh_af = 4


cdef int64_t clock_shift(ExporterState ex, FlowBatch b, int64_t export_ms) noexcept:
    """FlowBatch.clock_shift_ms of a message the exporter stamped export_ms (its clock): how far
    its clock is off the collector's, for the enrichment's lookup time. receive - export time is
    the clock offset plus the datagram's delay (network, socket buffer, a collector running
    behind), and delay only ever adds: the offset is the smallest value over the last one to
    two CLOCK_WINDOW_MS windows, so a late datagram from an exporter whose clock is right is not
    taken for skew once one on time was seen. Within CLOCK_TOLERANCE_MS (1 s export-time
    granularity plus delay) it is 0."""
    cdef int64_t now = <int64_t>(b.recv_time * 1000)
    cdef int64_t off = now - export_ms
    cdef int64_t est
    if ex.clk_start == 0 or now < ex.clk_start or now - ex.clk_start >= 2 * CLOCK_WINDOW_MS:
        ex.clk_cur = ex.clk_prev = off          # first seen, silent for long, or a clock step back
        ex.clk_start = now
    elif now - ex.clk_start >= CLOCK_WINDOW_MS:
        ex.clk_prev = ex.clk_cur
        ex.clk_cur = off
        ex.clk_start = now
    elif off < ex.clk_cur:
        ex.clk_cur = off
    est = ex.clk_cur if ex.clk_cur < ex.clk_prev else ex.clk_prev
    return est if est > CLOCK_TOLERANCE_MS or est < -CLOCK_TOLERANCE_MS else 0


cdef inline int64_t sysup_time(int64_t sysinit_ms, int64_t value, int64_t latest_ms) noexcept:
    """The Unix ms of a sysUpTime value (v5 First/Last, v9/IPFIX IEs 21/22): sysUpTime is a
    32-bit millisecond counter that wraps every 49.7 days (RFC 3954 8, RFC 5102
    flowStartSysUpTime: unsigned32), so the value stands for the latest sysinit + value +
    k * 2^32 not after latest_ms (the export plus SYSUP_SKEW_MS). A value more than that above
    the exporter's current uptime was counted before the last wrap (or, seconds after boot,
    0xFFFFFFFF: 1 ms before the counter's 0), and a system up for more than 49.7 days (uptime
    from IE 160) has wrapped k times."""
    cdef int64_t d = latest_ms - sysinit_ms - value
    # d >> 32 is floor(d / 2^32) for a negative d too (arithmetic shift; cdivision truncates)
    cdef int64_t t = sysinit_ms + value + (d >> 32) * (<int64_t>1 << 32)
    if t < 0 <= sysinit_ms + value:
        # an exporter whose clock says January 1970 (never set): no wrap puts a flow before the
        # epoch; consumers that store times unsigned would refuse the record
        return sysinit_ms + value
    return t


cdef int64_t ntp_to_ms(const uint8_t* p, bint micro) noexcept:
    """RFC 7011 6.1.9/6.1.10: NTP seconds since 1900 and a binary fraction, as Unix ms; -1 when
    the timestamp gives no time.

    RFC 5905 section 6: "the 64-bit value of all zeros is a special case representing unknown or
    unsynchronized time" (an exporter's unset start/end), not 1900. The 32-bit seconds wrap on
    2036-02-07 (era 1): RFC 4330 section 3 reads seconds whose top bit is clear as era 1
    (2036-2104) and the others as era 0 (1968-2036), as tshark does; read in era 0 they were
    times of 1900-1968, published as negative milliseconds. A time before the epoch (January
    1968-1970) is none either, as for sysUpTime times (uptime_to_ms)."""
    cdef uint64_t secs = be32(p)
    cdef uint64_t frac = be32(p + 4)
    cdef int64_t ms
    if secs == 0 and frac == 0:
        return -1
    if not secs & 0x80000000:
        secs += <uint64_t>1 << 32
    if micro:
        frac &= 0xFFFFF800  # the 11 lowest bits of dateTimeMicroseconds are not significant
    ms = (<int64_t>secs - 2208988800) * 1000 + <int64_t>((frac * 1000) >> 32)
    return ms if ms >= 0 else -1


cdef int64_t timeval_to_ms(const uint8_t* p) noexcept:
    """pmacct's 16-byte flowStart/EndMicroseconds: Unix seconds and microseconds, 64 bits each
    (unsigned arithmetic: a hostile value wraps instead of overflowing a signed integer); -1
    when both are 0 (no time, as for the other absolute times)."""
    if be64(p) == 0 and be64(p + 8) == 0:
        return -1
    return <int64_t>(be64(p) * 1000 + be64(p + 8) // 1000)


cdef inline uint32_t rate_from(uint64_t interval, uint64_t pkt_interval, uint64_t space, uint64_t size,
                               uint64_t population, double probability) noexcept:
    """A record's sampling rate from its own elements, 0 when it has none.

    RFC 5477 8.2.4/8.2.5 (selectorAlgorithm 3, random n-out-of-N, what Cisco IOS-XR sends):
    samplingSize (309) n packets out of samplingPopulation (310) N, so the rate is N / n (309
    missing or 0 counts as 1), rounded to the nearest, half up. Else RFC 5476 count-based:
    samplingPacketInterval (305) packets selected out of interval + samplingPacketSpace (306);
    without a space, 305 is the rate. Without 305 (or 305 = 0): samplingInterval (34) or
    samplerRandomInterval (50), the first of them in the template that is not 0 (`interval`: a
    record may carry both, Cisco's v9 sampler options send 50 then 34, and some exporters send 0
    for "not given" in one of them), likewise with a space. Else RFC 5477 8.2.6 (selectorAlgorithm 4/5, probabilistic): samplingProbability (311) p
    selects one packet in 1 / p, rounded to the nearest; a p outside (0, 1] (0, negative, above
    1, NaN) is no probability, so no rate. Time-based selection (samplingTimeInterval 307 /
    samplingTimeSpace 308, RFC 5477 8.2.2/8.2.3) selects by time, not packets: no rate (they
    stay as extras)."""
    cdef uint64_t r
    cdef double q
    if pkt_interval:
        interval = pkt_interval
    if population:
        if size == 0:
            size = 1
        # (population + size // 2) // size, rounded half up, without overflowing
        r = population // size + (1 if population % size >= size - size // 2 else 0)
        return <uint32_t>(r if r < 0xFFFFFFFFULL else 0xFFFFFFFFULL) if r else 1
    if interval:
        if space:
            r = space // interval         # (interval + space) // interval - 1, without overflowing
            return <uint32_t>(r + 1 if r < 0xFFFFFFFFULL else 0xFFFFFFFFULL)
        # rates past 32 bits (8-byte elements from a broken or hostile exporter) are held at
        # 2^32 - 1: cut to 32 bits, 2^32 would read as 0, no rate
        return <uint32_t>(interval if interval < 0xFFFFFFFFULL else 0xFFFFFFFFULL)
    if 0.0 < probability <= 1.0:      # (NaN compares false)
        q = 1.0 / probability + 0.5   # held at 2^32 - 1 like the others (a tiny p: 1 / p is huge or inf)
        return <uint32_t>q if q < 4294967295.0 else 0xFFFFFFFFU
    return 0


cdef void learn_options(Decoder dec, ExporterState ex, Template t, uint32_t rate, bint has_sampler,
                        uint64_t sampler_id, int scopes, uint64_t scope_if, uint64_t scope_outif,
                        uint64_t scope_tid, int64_t sysinit):
    """What an options data record teaches: the exporting process's clock, and a rate, which is
    its sampler id's when it names one, and its scope's when its scope (SCOPE_* bits) is an
    ingress interface (v9 Interface, IPFIX ingressInterface: per-interface sampling, several
    interfaces' rates side by side, each for the data records that came in on it), else an
    egress interface (IPFIX egressInterface: for the records that left by it), else a template
    (v9 Template, IPFIX templateId, Juniper: for that template's data records). A rate with none
    of these (nor a sampler id) is the whole process and domain's: a rate scoped by one
    interface or template never is."""
    cdef tuple process = (t.version, t.domain, t.port)
    cdef object kept
    cdef bint learn_clock = True
    if sysinit >= 0:
        if t.version == 10:
            # IPFIX has no header uptime to tell a process restarted on the same port and domain
            # by: its systemInitTimeMilliseconds moving as far as a v9 uptime must go back does
            # (a clock read at each export jitters by far less). The message's sequence number,
            # checked once its sets are decoded, is then the new run's first (decode_ipfix).
            kept = ex.sysinit_ms.get(process) if len(ex.sysinit_ms) else None
            if kept is not None and abs(<int64_t>kept - sysinit) > SEQ_RESTART_UPTIME_MS:
                if ex.ipfix_before_restart(t.port, t.domain, ex.msg_export_s, <int64_t>(ex.last_seen * 1000.0),
                                           sysinit):
                    # The old run's clock, in one of its messages arriving late after the new
                    # run's first: learned, the new run's flows were timed by the old run's
                    # clock, and this message and the new run's next record of 160 were two
                    # more restarts. The message is the old run's (sequence, ipfix_forget).
                    learn_clock = False
                    ex.msg_old_run = True
                else:
                    ex.msg_restarted = True
                    ex.msg_old_init = <int64_t>kept
        if learn_clock:
            learn(dec, ex, ex.sysinit_ms, process, sysinit)
    if not rate:
        return
    if has_sampler:
        learn(dec, ex, ex.sampler_rates, process + (sampler_id,), rate)
    if scopes & SCOPE_IF:
        learn(dec, ex, ex.interface_rates, process + (scope_if,), rate)
    elif scopes & SCOPE_OUTIF:
        learn(dec, ex, ex.egress_rates, process + (scope_outif,), rate)
        ex.narrow_rates = True
    elif scopes & SCOPE_TID:
        learn(dec, ex, ex.template_rates, process + (scope_tid,), rate)
        ex.narrow_rates = True
    elif not has_sampler:
        learn(dec, ex, ex.domain_sampling, process, rate)


cdef void learn(Decoder dec, ExporterState ex, dict d, tuple key, object value):
    """One entry of what options data teaches, bounded per exporter (RFC 7011 11.4: a sender
    must not grow the collector's state without limit; a spray of sampler ids or domains would):
    a known key is updated, a new one past OPTIONS_MAX_ENTRIES refused and counted."""
    if key in d or not options_full(dec, ex, len(d), key[0], key[1]):
        d[key] = value


cdef bint options_full(Decoder dec, ExporterState ex, Py_ssize_t held, int version, uint32_t domain):
    """An exporter holding `held` entries of a kind of options-learned state has no room for a
    new one (learn; learn_if_name counts the names of all its tables): counted and logged."""
    if held < OPTIONS_MAX_ENTRIES:
        return False
    ex.count_error("options_limit")
    dec.log_limited("options_limit", ex.ip, f"v{version} domain {domain} options data not learned: exporter "
                                            f"already has {held} such entries")
    return True


NOT_SENT_UNITS = {166: "flows", 167: "packets", 168: "octets"}


cdef inline object keep_last(dict seen, object key, object value, Py_ssize_t limit):
    """A cumulative counter's previous value under key (None: first seen, value is its
    baseline), value kept as its last. Bounded: a new key past `limit` starts the table over (a
    spray of keys only starts the baselines over). sFlow drops (ExporterState.sample_drops) and
    IPFIX notSent totals (learn_not_sent)."""
    cdef object last = seen.get(key)
    if last is None and len(seen) >= limit:
        seen.clear()
    seen[key] = value
    return last


# A walk over the fields of one record decoded whole (walk_fields, next_field).
cdef struct FieldWalk:
    const FieldSpec* fields
    int n
    int i                     # the field it is at (-1 before the first)
    const uint8_t* buf
    Py_ssize_t pos            # where the next field starts
    Py_ssize_t end            # the record's end
    const uint8_t* p          # the field's value,
    Py_ssize_t length         # and its length (a variable-length one's, read from its prefix)


cdef inline void walk_fields(FieldWalk* w, Template t, const uint8_t* buf, Py_ssize_t start,
                             Py_ssize_t end) noexcept:
    """Start a walk over the fields of t's record at buf[start:end], which decode_record has
    decoded whole: the cold second walks of options records (learn_not_sent, learn_if_name,
    options_dict) share it; decode_record's own loop is the hot path, not this."""
    w.fields = t.fields
    w.n = t.n_fields
    w.i = -1
    w.buf = buf
    w.pos = start
    w.end = end


cdef inline bint next_field(FieldWalk* w) noexcept nogil:
    """The walk's next field (w.i, w.p, w.length): False past the last one, or where one would
    run past the record's end (never for a record decoded whole)."""
    cdef Py_ssize_t L
    if w.i + 1 >= w.n:
        return False
    L = w.fields[w.i + 1].length
    if L == VARLEN:
        # RFC 7011 7: one length byte, 255 then two more (big-endian)
        if w.pos >= w.end:
            return False
        L = w.buf[w.pos]
        w.pos += 1
        if L == 255:
            if w.end - w.pos < 2:
                return False
            L = (<Py_ssize_t>w.buf[w.pos] << 8) | w.buf[w.pos + 1]
            w.pos += 2
    if w.end - w.pos < L:
        return False
    w.i += 1
    w.p = w.buf + w.pos
    w.length = L
    w.pos += L
    return True


cdef void learn_not_sent(ExporterState ex, Template t, const uint8_t* buf, Py_ssize_t start, Py_ssize_t end):
    """An IPFIX Exporting Process Reliability Statistics record (RFC 7011 4.3): its cumulative
    notSentFlow/Packet/OctetTotalCount (166-168), per exporting process (source port), domain and
    exportingProcessId scope (144, when the record has one). Their increase since the key's last
    value is counted; the first value seen of a key is its baseline (losses before flowscope
    started are not new), and a value below the last one is a counter that restarted: a new
    baseline, nothing counted (the loss between its last report and the restart is not known).
    A record whose message was sent before the one of the key's last value is older: skipped,
    whatever its value (read as a restart, its rise to the last value was counted again at the
    next report). Sent before: numbered before it (RFC 7011 3.1), behind what the message's
    stream expects (an exporter that restarted numbers from where it starts again, and the
    stream follows it), and not exported later (a restarted one sends its first report later).
    Options records only (t.not_sent): their record is walked again here, never the data
    records' path. Bounded as ExporterState.sample_drops is: a spray of scopes or ports only
    starts the baselines over."""
    cdef FieldWalk w
    cdef const FieldSpec* fs
    cdef object scope = None, last, key
    cdef uint64_t v, prev
    cdef list found = []
    cdef dict counts
    walk_fields(&w, t, buf, start, end)
    while next_field(&w):
        fs = &w.fields[w.i]
        if fs.pen or not 1 <= w.length <= 8:
            continue
        if fs.ie == 144 and w.i < t.scope_fields and scope is None:
            scope = beN(w.p, w.length)
        elif 166 <= fs.ie <= 168:
            found.append((fs.ie, beN(w.p, w.length)))
    for ie, v in found:
        key = (t.port, t.domain, scope, ie)
        last = ex.not_sent_seen.get(key)
        if (last is not None and 0 < <uint32_t>(<uint32_t>last[1] - ex.msg_seq) <= SEQ_MAX_GAP
                and ex.msg_export_s <= <int64_t>last[2] and ex.ipfix_behind(t.port, t.domain, ex.msg_seq)):
            continue
        last = keep_last(ex.not_sent_seen, key, (v, ex.msg_seq, ex.msg_export_s), NOT_SENT_MAX_KEYS)
        if last is None:
            continue
        prev = last[0]
        if v > prev:
            counts = ex.proto_stats(ex.cur_protocol)["not_sent"]
            unit = NOT_SENT_UNITS[ie]
            counts[unit] = counts.get(unit, 0) + (v - prev)


cdef bint if_table(int version, tuple spec, int scope_fields):
    """An options template whose records name an interface (Template.if_names): interfaceName
    (82) or interfaceDescription (83) beside its ifIndex, as an Interface scope (v9 scope type 2,
    RFC 3954 6.1; IPFIX ingressInterface (10) or egressInterface (14), RFC 7011 3.4.2.1, which
    Cisco IOS-XR sends both) or, without one, an ingressInterface / egressInterface field (IOS-XR
    v9: scope System, then INPUT_SNMP and IF_DESC)."""
    cdef bint named = False, indexed = False
    cdef int i
    for i in range(len(spec)):
        ie, pen, length = spec[i]
        if pen:
            continue
        if i >= scope_fields and (ie == 82 or ie == 83):
            named = True
        elif 1 <= length <= 8 and (ie in (10, 14) if version == 10 or i >= scope_fields else ie == 2):
            indexed = True
    return named and indexed


cdef void learn_if_name(Decoder dec, ExporterState ex, Template t, const uint8_t* buf, Py_ssize_t start,
                        Py_ssize_t end):
    """An interface table's options record (t.if_names: Cisco's "option interface-table", Juniper,
    Nokia): the name of the ifIndex it is scoped by (else of its first ingressInterface /
    egressInterface field) is its interfaceName (82), else its interfaceDescription (83) (IANA:
    ifName, and ifDescr, "FastEthernet 1/0"), trailing NULs cut (v9 pads fixed-length strings).
    Kept per exporting process and domain (a table of each, ExporterState.interface_names), for
    the data records that carry no interfaceName of their own (learned_names); bounded as
    interface rates are (options_full: all the tables' names together), and a name
    longer than IF-MIB's 255 bytes is refused and counted as options_limit too. A record with no
    name (or an empty one) teaches nothing. The record is walked again here, as learn_not_sent
    does: decode_record's loop has no case for it."""
    cdef FieldWalk w
    cdef const FieldSpec* fs
    cdef Py_ssize_t L
    cdef const uint8_t* p
    cdef bint has_if = False, scoped = False
    cdef uint64_t ifindex = 0
    cdef const uint8_t* name_p = NULL
    cdef const uint8_t* desc_p = NULL
    cdef Py_ssize_t name_len = 0, desc_len = 0
    cdef object name, old, process
    cdef NameTable table
    walk_fields(&w, t, buf, start, end)
    while next_field(&w):
        fs = &w.fields[w.i]
        L = w.length
        p = w.p
        if fs.pen:
            continue
        if w.i < t.scope_fields:
            if not scoped and 1 <= L <= 8 and (fs.ie == 2 if t.version == 9 else fs.ie == 10 or fs.ie == 14):
                ifindex = beN(p, L)
                has_if = scoped = True
        elif fs.ie == 82 or fs.ie == 83:
            while L and p[L - 1] == 0:
                L -= 1
            if L and fs.ie == 82 and name_p == NULL:
                name_p, name_len = p, L
            elif L and fs.ie == 83 and desc_p == NULL:
                desc_p, desc_len = p, L
        elif not has_if and (fs.ie == 10 or fs.ie == 14) and 1 <= L <= 8:
            ifindex = beN(p, L)
            has_if = True
    if name_p == NULL:
        name_p, name_len = desc_p, desc_len
    if name_p == NULL or not has_if:
        return
    name = <bytes>name_p[:name_len]
    if len(name) > IFNAME_MAX:
        ex.count_error("options_limit")
        dec.log_limited("options_limit", ex.ip, f"v{t.version} domain {t.domain} interface {ifindex}: a name of "
                                                f"{len(name)} bytes not learned (at most {IFNAME_MAX})")
        return
    process = (t.version, t.domain, t.port)
    table = ex.interface_names.get(process)
    old = None if table is None else table.get(ifindex)
    if old is None and options_full(dec, ex, ex.names_count, t.version, t.domain):
        return
    if table is None:
        table = ex.interface_names[process] = NameTable()
        ex.names_gen += 1
    table.put(ifindex, name)
    if old is None:
        ex.names_count += 1
    ex.names_bytes += len(name) - (0 if old is None else len(old))
    ex.has_if_names = True


cdef int learned_names(NameTable table, FlowBatch b, Flow* f) except -1:
    """The names an exporter's options data gave interfaces (learn_if_name), for a data record's
    Interfaces slots its own interfaceName (82) elements leave empty (Flow.names_learned);
    `table` is its exporting process and domain's (ifIndex -> name, decode_data_set).
    NetObserv's Interfaces / IfDirections are parallel: an interface the flow was observed on and
    the direction it was observed in there (0 ingress, 1 egress). The slots:
    - a record with no interfaceName of its own: with flowDirection / DIRECTION (61), the one
      interface it was observed on, as a record's own single name is written ([name],
      IfDirections [direction]): its ingress interface's name for 0, its egress interface's for 1
      (none when that one is not named, whatever the other's: the one the record was not observed
      on is no observation point; interface_rate reads a v9 record's interface the same way);
      without a direction, both, [ingress, egress] with IfDirections [0, 1] ("" for the one not
      named when the other is);
    - one of its own, empty (NUL padding only): the interface it was observed on, as above (a
      record without a direction is written as ingress, IfDirections [0]: its ingress one's);
    - two of its own (Open vSwitch: ingress port, egress port): an empty one is its ingress
      (egress) interface's name.
    Offsets of the record's own names are in the datagram, never 0 (its header is there)."""
    cdef bint own = f.in_name_off != 0
    cdef bint pair = f.out_name_off != 0 or (not own and f.direction < 0)
    cdef bint egress = f.direction == 1
    # (bytes: learn_if_name, import_state; borrowed from the table, which holds them while the
    # record is decoded: the batch takes its own reference)
    cdef PyObject* n_in = NULL
    cdef PyObject* n_out = NULL
    cdef PyObject** grown
    cdef Py_ssize_t cap
    cdef uint8_t bits = NAMES_OWN if own else 0
    # (the lookups written out, not in a helper returning the name: that helper, called for
    # each slot, cost 70 instructions a record more, benchmarks/RESULTS.md)
    if pair:
        if not f.in_name_len and f.present & P_INIF:
            n_in = table.find(f.in_if)
        if not f.out_name_len and f.present & P_OUTIF:
            n_out = table.find(f.out_if)
    elif not f.in_name_len and f.present & (P_OUTIF if egress else P_INIF):
        # one slot: the interface the record was observed on
        n_in = table.find(f.out_if if egress else f.in_if)
    if n_in == NULL and n_out == NULL:
        return 0
    if b.n_ifnames + 2 > b.cap_ifnames:
        # two a flow of the room the batch has for flows, at first
        cap = max(2 * b.cap_ifnames, 2 * b.cap, 16)
        grown = <PyObject**>realloc(b.ifnames, cap * sizeof(PyObject*))
        if grown == NULL:
            raise MemoryError()
        b.ifnames = grown
        b.cap_ifnames = cap
    if n_in != NULL:
        f.in_name_off = <uint32_t>b.n_ifnames
        f.in_name_len = <uint16_t>PyBytes_GET_SIZE(<object>n_in)
        Py_INCREF(<object>n_in)
        b.ifnames[b.n_ifnames] = n_in
        b.n_ifnames += 1
        bits |= NAMES_IN
    if n_out != NULL:
        f.out_name_off = <uint32_t>b.n_ifnames
        f.out_name_len = <uint16_t>PyBytes_GET_SIZE(<object>n_out)
        Py_INCREF(<object>n_out)
        b.ifnames[b.n_ifnames] = n_out
        b.n_ifnames += 1
        bits |= NAMES_OUT
    elif pair and not own:
        bits |= NAMES_OUT       # the pair's egress slot: "" (length 0)
    f.names_learned = bits
    return 0


cdef inline bint own_ingress_name_empty(const Flow* f) noexcept:
    """The record's own first interfaceName (82) is there and empty (NUL padding only), whether
    or not learned_names filled its slot."""
    if f.names_learned & NAMES_IN:
        return (f.names_learned & NAMES_OWN) != 0
    return f.in_name_off != 0 and f.in_name_len == 0


cdef void forget_options(ExporterState ex, int version, uint32_t domain, uint16_t port):
    """What options data of an exporting process and domain taught (all its options templates
    were withdrawn)."""
    cdef tuple key = (version, domain, port)
    ex.sysinit_ms.pop(key, None)
    ex.domain_sampling.pop(key, None)
    for rates in (ex.sampler_rates, ex.interface_rates, ex.egress_rates, ex.template_rates):
        if rates:
            for k in [k for k in rates if k[:3] == key]:
                del rates[k]
    if ex.interface_names.pop(key, None) is not None:
        ex.names_gen += 1
        ex.count_names()


cdef uint32_t interface_rate(ExporterState ex, Template t, const Flow* f):
    """The rate options scoped by the interface the record was sampled on gave, else 0
    (resolve_sampling, when the exporter has interface rates): its ingress interface's, but a
    NetFlow v9 record observed on output (DIRECTION 61 = 1: egress monitoring) its egress
    interface's, as v9's "Interface" scope (type 2) names an interface, not a direction (the one
    the sampler is on). IPFIX's scope says ingressInterface: always the ingress interface.
    A v9 record without DIRECTION is read as observed on input, its ingress interface's rate:
    RFC 3954 gives the Interface scope (6.1) no direction and DIRECTION (8) only "0 - ingress
    flow, 1 - egress flow", so the record's own direction is all that says which interface it
    was metered on; without one, NetFlow's default metering is the ingress one (Cisco's
    Traditional and Sampled NetFlow meter the packets an interface receives, `ip flow ingress`
    or a `flow-sampler` applied to it; egress metering, `ip flow egress` or a sampler applied
    `egress`, is configured explicitly, and it is what DIRECTION 1 tells), as a record's single
    interfaceName without DIRECTION is written as ingress (IfDirections [0], learned_names)."""
    cdef object r
    if t.version == 9 and f.direction == 1 and f.present & P_OUTIF:
        r = ex.interface_rates.get((t.version, t.domain, t.port, f.out_if))
    elif f.present & P_INIF:
        r = ex.interface_rates.get((t.version, t.domain, t.port, f.in_if))
    else:
        return 0
    return 0 if r is None else r


cdef uint32_t egress_or_template_rate(ExporterState ex, Template t, const Flow* f):
    """The rate options scoped by the record's egress interface gave (not for a record that says
    it was observed on input, flowDirection 0: sampled at its input's rate), else the one options
    scoped by its template gave, else 0 (resolve_sampling, when the exporter has either kind)."""
    cdef object r = None
    if f.present & P_OUTIF and f.direction != 0 and len(ex.egress_rates):
        r = ex.egress_rates.get((t.version, t.domain, t.port, f.out_if))
    if r is None and len(ex.template_rates):
        r = ex.template_rates.get((t.version, t.domain, t.port, t.template_id))
    return 0 if r is None else r


cdef uint32_t resolve_sampling(Decoder dec, ExporterState ex, Template t, uint32_t rate,
                               bint has_sampler, uint64_t sampler_id, const Flow* f, bint* inband):
    """The record's own rate, else one learned from options (for its sampler id, else for its
    ingress interface (IE 10; a v9 record observed on output: its egress interface, see
    interface_rate), else for its egress interface (IE 14: options scoped by egressInterface,
    output sampling), else for its template (options scoped by templateId), else
    for its exporting process and domain), else a --sampling
    CIDR rate. Else: sampler id 0 with no rate
    learned for it is no sampler (Cisco: "0 = not sampled"; RFC 5477 reserves selector id 0): 1;
    firewall event records (t.events) get none; others --default-sampling (which is for what
    Open vSwitch samples without saying so). *inband: the exporting process gave the rate (the
    record or its options data), so the record counts sampled packets; a rate from the flags
    does not say so (OVS, the exporter they are for, counts each sampled packet as rate)."""
    cdef object r
    if rate == 0 and has_sampler:
        r = ex.sampler_rates.get((t.version, t.domain, t.port, sampler_id))
        if r is not None:
            rate = r
    if rate == 0 and len(ex.interface_rates):
        rate = interface_rate(ex, t, f)
    if rate == 0 and ex.narrow_rates:
        rate = egress_or_template_rate(ex, t, f)
    if rate == 0 and len(ex.domain_sampling):
        r = ex.domain_sampling.get((t.version, t.domain, t.port))
        if r is not None:
            rate = r
    inband[0] = rate != 0
    if rate == 0:
        if ex.cidr_sampling:
            rate = ex.cidr_sampling     # the operator's word for this exporter
        elif has_sampler and sampler_id == 0:
            rate = 1
        elif not t.events:
            rate = ex.configured_sampling
    ex.last_sampling = rate
    return rate


cdef inline uint64_t dedup_mix(uint64_t h) noexcept:
    # FNV-1a moves its last inputs (the protocol, the bytes) into the high bits only by carries:
    # mixed (MurmurHash3's finaliser) so that records of one address pair spread over the slots
    h = (h ^ (h >> 33)) * <uint64_t>0xff51afd7ed558ccdULL
    h = (h ^ (h >> 33)) * <uint64_t>0xc4ceb9fe1a85ec53ULL
    return h ^ (h >> 33)


cdef uint64_t dedup_end_key(Flow* f, int tag, const uint8_t* a, uint16_t port) noexcept:
    """The key of one end of an IP record: `tag` (which end), its address `a` and `port`, the
    protocol (ICMP type and code), the ingress interface, bytes and packets."""
    cdef uint64_t h = <uint64_t>1469598103934665603ULL
    cdef uint64_t prime = <uint64_t>1099511628211ULL
    cdef int i
    h = (h ^ tag) * prime
    h = (h ^ f.af) * prime
    for i in range(addr_len(f.af)):
        h = (h ^ a[i]) * prime
    h = (h ^ port) * prime
    h = (h ^ f.proto) * prime
    h = (h ^ ((<uint64_t>f.icmp_type << 8) | f.icmp_code)) * prime
    h = (h ^ f.in_if) * prime
    h = (h ^ f.bytes) * prime
    h = (h ^ f.packets) * prime
    return dedup_mix(h)


cdef inline uint64_t dedup_half_key(Flow* f, bint src_side) noexcept:
    """The key of one end of an IP record (its address and port); `src_side` picks the end."""
    if src_side:
        return dedup_end_key(f, 1, &f.src[0], f.sport)
    return dedup_end_key(f, 2, &f.dst[0], f.dport)


cdef inline uint64_t dedup_waiting(ExporterState ex, uint64_t slot, uint64_t key, uint64_t d, int64_t now) noexcept:
    """Records of direction `d` waiting in an end's slot for their twins: its count when the
    slot holds `key`, that direction and a latest end time within DEDUP_WINDOW_MS of `now`, else 0."""
    cdef uint64_t have = ex.dedup_keys[slot]
    if ((have & ~(<uint64_t>DEDUP_END_LOW)) == key and (have & 1) == d
            and now - ex.dedup_times[slot] <= DEDUP_WINDOW_MS and ex.dedup_times[slot] - now <= DEDUP_WINDOW_MS):
        return (have >> 1) & DEDUP_END_MAX
    return 0


cdef bint dedup_take_twin(ExporterState ex, uint64_t h, Flow* f, int64_t now) noexcept:
    """The slot of end key `h` holds records of the other direction not yet paired, the latest
    ending within DEDUP_WINDOW_MS of `now`: one of them is marked paired and True is returned."""
    cdef uint64_t key = h & ~(<uint64_t>DEDUP_END_LOW)
    cdef uint64_t slot = (h >> 20) % DEDUP_SLOTS
    cdef uint64_t d = (<uint64_t>f.direction & 1) ^ 1
    cdef uint64_t waiting = dedup_waiting(ex, slot, key, d, now)
    if waiting:
        ex.dedup_keys[slot] = key | ((waiting - 1) << 1) | d
        return True
    return False


cdef inline void dedup_store(ExporterState ex, uint64_t h, Flow* f, int64_t now) noexcept:
    """An ingress record's end: one more record waiting in the slot of key `h` when it holds
    records of that end still waiting (a stream's next packets' input samples can come before
    the first one's output sample), else the only one."""
    cdef uint64_t key = h & ~(<uint64_t>DEDUP_END_LOW)
    cdef uint64_t slot = (h >> 20) % DEDUP_SLOTS
    cdef uint64_t d = <uint64_t>f.direction & 1
    cdef uint64_t waiting = dedup_waiting(ex, slot, key, d, now)
    if waiting < DEDUP_END_MAX:
        waiting += 1
    ex.dedup_keys[slot] = key | (waiting << 1) | d
    ex.dedup_times[slot] = now


cdef bint ingress_key_seen(ExporterState ex, uint64_t key, bint add) noexcept:
    """Whether `key` (never 0) is in the exporter's table of sampled input ports; with `add`,
    it is put there when not (a full probe run takes its first slot: the table is bounded)."""
    cdef uint64_t i, slot
    if ex.ingress_ports == NULL:
        if not add:
            return False
        ex.ingress_ports = <uint64_t*>calloc(INGRESS_SLOTS, sizeof(uint64_t))
        if ex.ingress_ports == NULL:
            return False
    for i in range(INGRESS_PROBE):
        slot = ((key >> 17) + i) % INGRESS_SLOTS
        if ex.ingress_ports[slot] == key:
            return True
        if ex.ingress_ports[slot] == 0:
            if add:
                ex.ingress_ports[slot] = key
            return False
    if add:
        ex.ingress_ports[(key >> 17) % INGRESS_SLOTS] = key
    return False


cdef inline uint64_t ingress_key(Template t, bint has_if, uint32_t in_if) noexcept:
    cdef uint64_t h = 0xCBF29CE484222325ULL
    h = (h ^ t.port) * 0x100000001B3ULL
    h = (h ^ t.domain) * 0x100000001B3ULL
    h = (h ^ (<uint64_t>in_if | (<uint64_t>(not has_if) << 32))) * 0x9E3779B97F4A7C15ULL
    return (h ^ (h >> 29)) | 1


cdef bint sampled_twin(ExporterState ex, Template t, Flow* f, uint64_t dh):
    """Sampled 1:N (OVN-Kubernetes' 400), OVS composes a sample(probability) datapath action for
    a packet's input and another for each output, each its own random draw, and counts each
    sampled packet as N: a packet's ingress and egress samples are not the same packets, and
    each direction's records estimate all the traffic (with both kept, twice the traffic).
    A packet is counted by its input sample: an egress record is Duplicate when its exporting
    process and domain sample input on the port it came in by (its ingressInterface; without
    one, any port), which its ingress records from that port tell. Egress records of packets
    whose input port is not sampled (output sampling only, an exporter sampling on some
    interfaces' input and others' output, a packet in by another bridge's port) count, as
    nothing else of this exporting process estimates those packets.
    The other records go through is_duplicate's pairing, as at 1:1: an egress record sent
    before the first ingress record from its port, and an ingress record of the same key and
    bytes after it, are one estimate twice (the ingress record is marked: the totals are the
    same whichever of the two stays). An egress record marked here is not put in is_duplicate's
    table, where an ingress record of its bytes would pair with it and both be gone."""
    cdef bint has_if = (f.present & P_INIF) != 0
    if f.direction == 0:
        # (the any-port key goes in with each port's first: not probed again per record)
        if not ingress_key_seen(ex, ingress_key(t, has_if, f.in_if), True) and has_if:
            ingress_key_seen(ex, ingress_key(t, False, 0), True)
    elif has_if and f.in_if == 0 and own_ingress_name_empty(f):
        # OVS writes an egress record's input port from its own bridge's ports, and zeros (index
        # 0, an empty name) for a port it does not have (ofproto-dpif-ipfix.c,
        # ipfix_put_iface_data_record): the packet came in by another bridge, through a patch
        # port, and was not sampled on input by this exporting process. (Its own ports without a
        # Linux ifindex, userspace tunnels and DPDK, are index 0 too, but named.)
        pass
    elif ingress_key_seen(ex, ingress_key(t, has_if, f.in_if), False):
        return True
    return is_duplicate(ex, f, dh)


cdef extern from *:
    """
    #define fs_prefetch(p) __asm__ volatile("prefetcht0 %0" :: "m"(*(const char*)(p)))
    """
    void prefetch "fs_prefetch"(const void* p) noexcept nogil


cdef inline uint64_t dedup_hash(Flow* f) noexcept:
    """is_duplicate's key of a record: its 5-tuple (a non-IP one: the MAC addresses and
    EtherType) and bytes."""
    cdef uint64_t h = <uint64_t>1469598103934665603ULL
    cdef uint64_t prime = <uint64_t>1099511628211ULL
    cdef int i
    cdef Py_ssize_t n = addr_len(f.af)
    for i in range(n):
        h = (h ^ f.src[i]) * prime
        h = (h ^ f.dst[i]) * prime
    if n == 0:      # a non-IP record (ARP, LLDP): its frame's addresses and type
        for i in range(6):
            h = (h ^ f.src_mac[i]) * prime
            h = (h ^ f.dst_mac[i]) * prime
        h = (h ^ f.etype) * prime
    h = (h ^ f.sport) * prime
    h = (h ^ f.dport) * prime
    h = (h ^ f.proto) * prime
    h = (h ^ ((<uint64_t>f.icmp_type << 8) | f.icmp_code)) * prime
    h = (h ^ f.bytes) * prime
    return dedup_mix(h)


cdef inline uint64_t dedup_prefetch(ExporterState ex, Flow* f) noexcept:
    """Start loading the slot is_duplicate will read first for this IP record. Why: the
    exporter's table (DEDUP_SLOTS keys and times) is read at one random slot a record, and the
    loads that missed the cache stalled there (perf, pipeline_bench --only at 25 records a
    datagram from 4 exporters: 13 ns a flow plain, 38 with enrichment, whose texts and longer
    records push the table out of L2); issued before the record's times and sampling are worked
    out, the loads overlap them. (An asm prefetch: with __builtin_prefetch GCC emitted none here.)
    Returns the key, which is_duplicate takes from the caller then (dh) instead of hashing again."""
    cdef uint64_t h = dedup_hash(f)
    cdef uint64_t slot = (h >> 20) % DEDUP_SLOTS
    prefetch(&ex.dedup_keys[slot])
    prefetch(&ex.dedup_times[slot])   # (read when the key is there: a flow's next record)
    return h


cdef bint is_duplicate(ExporterState ex, Flow* f, uint64_t dh):
    """Ingress and egress sampling report the same packet twice (OVS flowDirection 0/1), and a
    flooded packet once per output port: a record with the 5-tuple (a non-IP one: the MAC
    addresses and EtherType) and bytes of the latest one of that key, seen in the other
    direction with its end time within DEDUP_WINDOW_MS, is marked Duplicate (once: the next
    record of the key in that direction is another packet, or the flow's next export); so are
    further copies of the pair's packet, egress records, ending within DEDUP_COPY_MS of it
    (records without times pair, but have no copies). An ingress record is never a copy: OVS
    samples a packet once on input, so one of the same key is the flow's next packet (without a
    flow cache, OVN-Kubernetes' default, each sampled packet is a record: a stream's packets
    come a few ms apart, all of one size). The windows are what records of one
    packet differ by, below the time between two exports of one flow (an active timeout of
    1 s), so records of different packets pair only with one another, one for one.

    A packet translated between its two samples has another 5-tuple in each: OVN's load
    balancer turns a ClusterIP into a backend pod's address (and a reply's source back into the
    ClusterIP) on the client's node, after the input sample and before the output one. An
    egress IP record with an ingress interface that found no twin by its 5-tuple pairs, the
    same way, with an ingress record not yet paired that has its source end (address and port),
    or its destination end, protocol, ingress interface, bytes and packets, the latest of them
    ending within DEDUP_WINDOW_MS of it (the same packets: once, as by the 5-tuple; up to
    DEDUP_END_MAX such records an end wait, as a loaded node exports a stream's next packets'
    input samples before the first one's output sample). Only egress records
    pair so: OVS takes (and exports) a packet's input sample before its output sample, so an
    ingress record that has no twin of its own never takes another packet's egress record.

    A pod reaching its own Service (hairpin) has both ends translated: OVN DNATs the ClusterIP
    to the pod and SNATs the source to OVN-Kubernetes' hairpin masquerade address (169.254.169.5,
    its load balancers' hairpin_snat_ip), and sends the packet back out of the port it came in
    by; its reply has the masquerade address turned back into the pod and the pod's source back
    into the ClusterIP. The sender is the destination of the output record, which keeps one of
    the input record's ports: the request its source port (pod:p -> VIP:80, then MASQ:p ->
    pod:8080), the reply its destination port (pod:8080 -> MASQ:p, then VIP:80 -> pod:p). So an
    egress record with no twin yet pairs, the same way, with an ingress record whose
    source address is its destination address and whose source port is its source port (or
    whose destination port is its destination port), with the same protocol, ingress interface,
    bytes and packets: a packet that came in by a port and is sent to the address that sent it
    from that port is one coming back (seen on OVS 3.1's userspace datapath with conntrack NAT
    in tests/test_cluster_e2e_review.py)."""
    cdef Py_ssize_t n = addr_len(f.af)
    cdef uint64_t h, key, slot, have, hs = 0, hd = 0
    cdef bint halves = n != 0 and f.present & P_INIF   # the ends' keys: ingress records store them,
    cdef bint egress = f.direction == 1                 # egress records pair by them
    cdef int64_t now = f.t_end_ms if f.present & P_TEND else 0
    if ex.dedup_keys == NULL:
        ex.dedup_keys = <uint64_t*>calloc(DEDUP_SLOTS, sizeof(uint64_t))
        ex.dedup_times = <int64_t*>calloc(DEDUP_SLOTS, sizeof(int64_t))
        if ex.dedup_keys == NULL or ex.dedup_times == NULL:
            return False
    h = dh if dh else dedup_hash(f)     # (dh: dedup_prefetch's key of the record as it stands, 0: none)
    if halves:
        hs = dedup_half_key(f, True)
        hd = dedup_half_key(f, False)
    # A slot: the key (low bits cleared) | bit 1: a twin was seen | bit 0: the first's direction
    key = h & ~(<uint64_t>3)
    slot = (h >> 20) % DEDUP_SLOTS
    have = ex.dedup_keys[slot]
    if (have & ~(<uint64_t>3)) == key and (now - ex.dedup_times[slot] < DEDUP_WINDOW_MS
                                         and ex.dedup_times[slot] - now < DEDUP_WINDOW_MS):
        if not have & 2 and (have & 1) != (<uint64_t>f.direction & 1):
            ex.dedup_keys[slot] = have | 2      # the first record's twin
            if halves and egress:   # the ingress record's ends are paired too: no other record takes them
                dedup_take_twin(ex, hs, f, now)
                dedup_take_twin(ex, hd, f, now)
                dedup_take_twin(ex, dedup_end_key(f, 3, &f.src[0], f.dport), f, now)
            return True
        if have & 2 and egress and now != 0 and (now - ex.dedup_times[slot] <= DEDUP_COPY_MS
                                                 and ex.dedup_times[slot] - now <= DEDUP_COPY_MS):
            return True                         # another copy of that packet (flooded to more ports)
    if halves and egress and (dedup_take_twin(ex, hs, f, now)
                              or dedup_take_twin(ex, hd, f, now)):
        return True                             # translated between its two samples (NAT)
    # a hairpin: its destination is the ingress record's sender (an ingress record's source end
    # is its key 1, its source address with its destination port its key 3)
    if halves and egress and (dedup_take_twin(ex, dedup_end_key(f, 1, &f.dst[0], f.sport), f, now)
                              or dedup_take_twin(ex, dedup_end_key(f, 3, &f.dst[0], f.dport), f, now)):
        return True
    ex.dedup_keys[slot] = key | (<uint64_t>f.direction & 1)
    ex.dedup_times[slot] = now
    if halves and f.direction == 0:
        dedup_store(ex, hs, f, now)
        dedup_store(ex, hd, f, now)
        dedup_store(ex, dedup_end_key(f, 3, &f.src[0], f.dport), f, now)   # its sender, for a hairpin
    return False


cdef dict options_dict(FlowBatch b, Flow* f, Template t, Py_ssize_t start, Py_ssize_t end):
    """An options data record as a dict of its raw elements (exposed on batch.options)."""
    cdef FieldWalk w
    cdef dict d = {"RecordType": "options", "TemplateId": t.template_id, "ObservationDomain": t.domain}
    cdef const FieldSpec* fs
    cdef str key
    walk_fields(&w, t, <const uint8_t*>PyBytes_AS_STRING(b.data), start, end)
    while next_field(&w):
        fs = &w.fields[w.i]
        if t.version == 9 and w.i < t.scope_fields:
            key = f"scope{fs.ie}"
        elif fs.pen:
            key = f"ie{fs.pen}_{fs.ie}"
        else:
            key = f"ie{fs.ie}"
        value = (<bytes>w.p[:w.length]).hex()
        prev = d.get(key)
        if prev is None:
            d[key] = value
        elif type(prev) is list:
            prev.append(value)
        else:
            # An element repeated in the template: one key, its values in order (as for flows).
            d[key] = [prev, value]
    return d


# ---------------------------------------------------------------- v9 / IPFIX messages

cdef int decode_data_set(Decoder dec, ExporterState ex, FlowBatch b, Reader* s, int version,
                         uint32_t domain, uint16_t set_id, int64_t export_ms, int64_t sysinit_ms) except -1:
    cdef uint64_t k64 = (<uint64_t>domain << 32) | (<uint64_t>set_id << 16) | b.port
    cdef Template t
    cdef Py_ssize_t before, n_before, start = s.pos
    cdef NameTable if_names = None
    if ex.last_t is not None and ex.last_tkey == k64 and ex.last_tver == version:
        t = ex.last_t
    else:
        t = ex.templates.get(tkey(version, domain, set_id, b.port))
        if t is not None:
            ex.last_t = t
            ex.last_tkey = k64
            ex.last_tver = version
    if t is None and version == 10 and ex.tid_latest:
        t = borrowed_template(dec, ex, b, s, domain, set_id)
    if t is None:
        # RFC 7011 8: data for an unknown template cannot be decoded; count it, go on.
        ex.msg_uncounted = True
        if version == 10:
            keep_unknown_set(ex, domain, set_id, s.buf + s.pos, rd_left(s))
        b.missing_template_sets += 1
        ex.missing_template_sets += 1
        ex.proto_stats(ex.cur_protocol)["missing_template_sets"] += 1
        return 0
    if b.recv_time >= t.seen + SEEN_STEP_S:
        t.seen = <double>(<int64_t>(b.recv_time / SEEN_STEP_S)) * SEEN_STEP_S
    if not t.options and t.min_len > 0 and b.n == 0:
        # the records the set can hold, up to the batch's usual first size
        batch_reserve(b, min(32, max(1, rd_left(s) // t.min_len)))
    if ex.has_if_names and not t.options:
        # the interface table of the set's exporting process and domain (learned_names), as the
        # template last found it unless tables came or went since; its records teach no names
        # (options records do) and nothing forgets a table mid-set
        if t.names_gen != ex.names_gen:
            t.names_table = ex.interface_names.get((t.version, t.domain, t.port))
            t.names_gen = ex.names_gen
        if_names = t.names_table
    while rd_left(s) >= t.min_len:
        if rd_left(s) < 4 and (s.end - start) % 4 == 0 and all_zero(s.buf, s.pos, s.end):
            # RFC 3954 5.3: "The Exporter SHOULD insert some padding bytes so that the subsequent
            # FlowSet starts at a 4-byte aligned boundary" (RFC 7011 3.3.1 likewise): after
            # records of 3 bytes or less it may be as long as a record. Zeros shorter than 4
            # that end the set on its boundary are that padding, not a record (an all-zero
            # record there is lost: nothing tells the two apart, and it would be no flow).
            # (Only checked in a set's last 3 bytes; records of 4 bytes or more never get here.)
            break
        before = s.pos
        n_before = b.n
        try:
            decode_record(dec, ex, b, t, s, export_ms, sysinit_ms, if_names)
        except BaseException as e:
            # A record that did not decode is not a flow: forget what it had filled in (the
            # records before it stay), whatever the error. Any other than a DecodeError
            # (MemoryError) goes on to the datagram's caller.
            while b.n > n_before:
                batch_drop_last(b)
            if not isinstance(e, DecodeError):
                raise
            # A record that runs past its set (a variable-length field too long): the set's
            # length says where the next set starts (RFC 7011 3.3.2, RFC 3954 5.3), so the
            # sets and messages after it still decode, as after a refused template record.
            if before == start and s.end - start >= 4:
                s.pos = start   # its first record: not one fits, the data is in another layout
                break           # (template_mismatch, below)
            cut_record(dec, ex, b, s, version, domain, set_id, before, e)
            break
        if s.pos == before:
            break
        ex.msg_records += 1
        if t.options:
            ex.msg_opt_records += 1
    if s.pos == start and rd_left(s) >= 4 and not all_zero(s.buf, s.pos, s.end):
        # Not one record in a set that is more than padding: the data is not in this template's
        # layout (an exporter that redefined it while the new template did not reach the
        # collector). (Bytes left after records are not checked: exporters pad with whatever
        # their buffer held, Mikrotik and nProbe among them, as Wireshark shows.)
        # How many records the exporter put in it is not known, as for a set without its
        # template: the message's sequence step (RFC 7011 3.1: the Data Records sent) cannot be
        # told, so its records are not taken for lost ones when the next message comes.
        ex.msg_uncounted = True
        if version == 10:
            keep_unknown_set(ex, domain, set_id, s.buf + start, s.end - start)
        ex.count_error("template_mismatch")
        dec.log_limited("template_mismatch", ex.ip, f"v{version} domain {domain} data set {set_id}: "
                        f"{rd_left(s)} bytes, " + (f"shorter than one record of template {set_id} ({t.min_len} bytes)"
                                                   if rd_left(s) < t.min_len else
                                                   f"its first record runs past the set (template {set_id})")
                        + ": the data does not fit its template")
    return 0


cdef int cut_record(Decoder dec, ExporterState ex, FlowBatch b, Reader* s, int version, uint32_t domain,
                    uint16_t set_id, Py_ssize_t at, object e) except -1:
    """A data record at `at`, after records of its set that fit, that its set's end cuts (a
    set whose first record does not fit is a template_mismatch): counted as truncated (the datagram's error,
    for `flowscope decode`), it and the rest of its set skipped. How many records those bytes
    held is not known, so the message's sequence step is not taken for lost ones (as when the
    error ended the datagram: decode_ipfix's `whole`)."""
    ex.msg_uncounted = True
    if version == 10:
        ex.msg_unknown_bytes += <uint64_t>(s.end - at)
        ex.msg_sets_kept = False
        ex.msg_unknown_sets = None
    s.pos = s.end
    ex.count_error(e.reason)
    if b.error is None:
        b.error = (e.reason, e.offset, e.detail)
    dec.log_limited(e.reason, ex.ip, f"{'ipfix' if version == 10 else 'netflow9'} v{version} domain {domain} data set "
                                     f"{set_id}: a record at offset {at} runs past its set ({e.detail}): "
                                     f"it and the rest of the set skipped")
    return 0


cdef void keep_unknown_set(ExporterState ex, uint32_t domain, uint16_t set_id, const uint8_t* p, Py_ssize_t n):
    """An IPFIX data set of the message being decoded that could not be decoded (no template, or
    not in its template's layout): its records are in its n bytes (one at least each), and its
    bytes are kept (up to SEQ_FLOOR_BYTES a message) to count them once the template is known."""
    ex.msg_unknown_bytes += <uint64_t>n
    if not ex.msg_sets_kept:
        return
    if ex.msg_unknown_bytes > SEQ_FLOOR_BYTES:
        ex.msg_sets_kept = False
        ex.msg_unknown_sets = None
        return
    if ex.msg_unknown_sets is None:
        ex.msg_unknown_sets = []
    ex.msg_unknown_sets.append((domain, set_id, PyBytes_FromStringAndSize(<const char*>p, n)))


cdef Py_ssize_t record_end(Template t, const uint8_t* buf, Py_ssize_t pos, Py_ssize_t end) noexcept:
    """Where the record of template t starting at buf[pos] ends (its fields' lengths, RFC 7011
    7 for variable-length ones), or -1 when it runs past end. Only the length prefixes are read:
    the fixed-length runs between them are Template.var_gaps."""
    cdef int j
    cdef uint32_t L
    if not t.varlen:
        return pos + t.min_len if end - pos >= t.min_len else -1
    for j in range(t.n_var):
        if end - pos < <Py_ssize_t>t.var_gaps[j] + 1:
            return -1
        pos += t.var_gaps[j]
        L = buf[pos]
        pos += 1
        if L == 255:
            if end - pos < 2:
                return -1
            L = be16(buf + pos)
            pos += 2
        if end - pos < L:
            return -1
        pos += L
    if end - pos < <Py_ssize_t>t.var_gaps[t.n_var]:
        return -1
    return pos + t.var_gaps[t.n_var]


cdef Py_ssize_t count_records(Template t, const uint8_t* buf, Py_ssize_t n) noexcept:
    """The records of template t in a data set's n bytes, read as decode_data_set reads them
    (padding after the last one: zeros shorter than a record), or -1 when they do not fit it.
    Not a field is read but the length prefixes (a refused datagram's records are counted so)."""
    cdef Py_ssize_t pos = 0, k = 0, e
    if not t.varlen and t.min_len >= 4:
        # every record min_len bytes: what is left after the last is padding (no record of 4
        # bytes or more ends on decode_data_set's short-zeros check), and no record runs past
        k = n // t.min_len
        pos = k * t.min_len
    while n - pos >= t.min_len:
        if n - pos < 4 and n % 4 == 0 and all_zero(buf, pos, n):
            break
        e = record_end(t, buf, pos, n)
        if e < 0:
            return -1
        if e == pos:
            break
        pos = e
        k += 1
    if k == 0 and n - pos >= 4 and not all_zero(buf, pos, n):
        return -1
    return k


cdef Template borrowed_template(Decoder dec, ExporterState ex, FlowBatch b, Reader* s, uint32_t domain,
                                uint16_t tid):
    """A data set whose domain has no template of its id: the same exporting process's (port's)
    latest (data) template of that id in another domain, when the domain never sent templates,
    the process numbers its messages over its domains as one (SeqPort), and the set's records
    fit the template exactly.
    Open vSwitch keys one template refresh per exporter: it sends its templates in the
    observation domain of the sample that was due when the refresh was (every 10 minutes), so
    with flow sample actions of several obs_domain_ids the other domains' data comes without
    templates of its own. RFC 7011 scopes templates by domain, so only a missing one is borrowed
    (a domain's own template always wins)."""
    cdef Template t = ex.tid_latest.get((<object>b.port << 16) | tid)
    cdef Py_ssize_t pos, n
    cdef SeqPort sp
    cdef object key = (<object>b.port << 32) | domain
    if t is None or t.domain == domain or t.options or key in ex.tpl_domains:
        return None     # (options data teaches per domain; a domain with templates of its own has
                        # this one refused, withdrawn or still to come: never another's layout)
    if key not in ex.borrowers:
        # An exporting process that numbers its domains as one: read so already (votes), or
        # this message's number follows the port's previous data message in another domain
        sp = ex.seq_port(b.port)
        if not (sp.shared_votes > sp.domain_votes or (sp.has_prev and sp.prev_domain != domain and sp.prev_adv
                                                       and seq_follows(ex.msg_seq, 0, sp.prev_seq, sp.prev_adv, False))):
            return None
    pos = s.pos
    n = 0
    while s.end - pos >= t.min_len:     # walk the records by the template's lengths alone
        pos = record_end(t, s.buf, pos, s.end)
        if pos < 0:
            return None
        n += 1
    if n == 0 or not all_zero(s.buf, pos, s.end):     # what is left: RFC 7011 padding, zeros
        return None
    bounded_add(ex.borrowers, key)
    if not ex.borrow_logged:    # expected of Open vSwitch: said once per exporter
        ex.borrow_logged = True
        _log.info("exporter %s: IPFIX port %d domain %d: data set %d read with the template of domain %d (the "
                  "exporting process sends its templates in one domain only, as Open vSwitch does)",
                  ex.ip, b.port, domain, tid, t.domain)
    return t


cdef bint all_zero(const uint8_t* buf, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef Py_ssize_t i
    for i in range(start, end):
        if buf[i]:
            return False
    return True


cdef int decode_v9(Decoder dec, ExporterState ex, FlowBatch b, Reader* r) except -1:
    cdef const uint8_t* h = rd_take(r, 20)
    cdef uint32_t uptime = be32(h + 4)
    cdef uint32_t unix_secs = be32(h + 8)
    cdef uint32_t domain = be32(h + 16)
    cdef int64_t export_ms = <int64_t>unix_secs * 1000
    cdef int64_t sysinit_ms = export_ms - uptime
    cdef uint16_t set_id, set_len
    cdef Reader s
    cdef Py_ssize_t set_start
    cdef bint whole
    b.proto_kind = PROTO_NETFLOW9
    b.sequence = be32(h + 12)
    b.domain = domain
    b.clock_shift_ms = clock_shift(ex, b, export_ms)
    ex.msg_records = 0
    ex.msg_opt_records = 0
    ex.msg_uncounted = False
    whole = False
    try:
        # RFC 3954 5.1: "count" is not reliable across vendors; walk the flowsets to the end.
        while rd_left(r) >= 4:
            set_start = r.pos
            set_id = rd_u16(r)
            set_len = rd_u16(r)
            if set_id == 0 and set_len == 0 and all_zero(r.buf, set_start, r.end):
                break  # zero padding after the last flowset (Palo Alto, Cisco ACI): not an error
            if set_len < 4 or set_len - 4 > rd_left(r):
                raise_decode("bad_set", set_start, f"v9 source id {domain} flowset {set_id} length {set_len}")
            rd_sub(r, &s, set_len - 4)
            if set_id == 0 or set_id == 1:
                parse_template_set(dec, ex, b, &s, 9, domain, set_id == 1)
            elif set_id >= 256:
                decode_data_set(dec, ex, b, &s, 9, domain, set_id, export_ms, sysinit_ms)
            else:
                ex.count_error("bad_set")
        whole = True
    finally:
        # RFC 3954: export packets per Source ID, or the flow records before them (v9_convention;
        # a per-flow count leaves options records out, as NetFlow v5's counts flows)
        ex.sequence(PROTO_NETFLOW9, b.port, domain, b.sequence,
                    <uint32_t>(ex.msg_records - ex.msg_opt_records) if whole and not ex.msg_uncounted
                    else V9_UNCOUNTED,
                    uptime, <int64_t>(b.recv_time * 1000.0), unix_secs)
    return 0


cdef int decode_ipfix(Decoder dec, ExporterState ex, FlowBatch b, Reader* r) except -1:
    cdef const uint8_t* h
    cdef uint16_t msg_len, set_id, set_len
    cdef uint32_t domain
    cdef int64_t export_ms, sysinit_ms
    cdef Reader m, s
    cdef Py_ssize_t set_start, msg_start, msg_flows, i
    cdef bint first = True, whole
    cdef object si
    b.proto_kind = PROTO_IPFIX
    if rd_left(r) < 16:
        raise_decode("truncated", 0, f"{rd_left(r)}-byte IPFIX datagram, the header alone is 16")
    # A datagram may carry several IPFIX messages back to back (RFC 7011 10.3.3).
    while rd_left(r) >= 16:
        msg_start = r.pos
        h = rd_take(r, 16)
        if be16(h) != 10:
            raise_decode("bad_version", msg_start, f"IPFIX message version {be16(h)}")
        msg_len = be16(h + 2)
        if msg_len < 16 or msg_len - 16 > rd_left(r):
            raise_decode("bad_length", msg_start, f"IPFIX message length {msg_len}, datagram has {rd_left(r) + 16}")
        domain = be32(h + 12)
        export_ms = <int64_t>be32(h + 4) * 1000
        if first:
            b.sequence = be32(h + 8)
            b.domain = domain
        ex.msg_seq = be32(h + 8)
        ex.msg_export_s = be32(h + 4)
        # every message's export time refines the exporter's clock estimate (clock_shift), which
        # the whole datagram's flows share: one exporter, one clock
        b.clock_shift_ms = clock_shift(ex, b, export_ms)
        msg_flows = b.n
        rd_sub(r, &m, msg_len - 16)
        ex.msg_records = 0
        ex.msg_opt_records = 0
        ex.msg_uncounted = False
        ex.msg_restarted = False
        ex.msg_old_run = False
        ex.msg_unknown_bytes = 0
        ex.msg_unknown_sets = None
        ex.msg_sets_kept = True
        set_start = m.pos
        whole = False
        try:
            while rd_left(&m) >= 4:
                set_start = m.pos
                set_id = rd_u16(&m)
                set_len = rd_u16(&m)
                if set_id == 0 and set_len == 0 and all_zero(m.buf, set_start, m.end):
                    break  # zero padding to the end of the message
                if set_len < 4 or set_len - 4 > rd_left(&m):
                    raise_decode("bad_set", set_start, f"IPFIX domain {domain} set {set_id} length {set_len}")
                rd_sub(&m, &s, set_len - 4)
                if set_id == 2 or set_id == 3:
                    parse_template_set(dec, ex, b, &s, 10, domain, set_id == 3)
                elif set_id >= 256:
                    si = ex.sysinit_ms.get((10, domain, b.port)) if len(ex.sysinit_ms) else None
                    sysinit_ms = si if si is not None else -1
                    decode_data_set(dec, ex, b, &s, 10, domain, set_id, export_ms, sysinit_ms)
                else:
                    ex.count_error("bad_set")
            whole = True
        finally:
            # RFC 7011 3.1: the sequence number counts the Data Records sent in the domain
            # (or in all of them: ipfix_sequence)
            if whole and not ex.msg_uncounted:
                ex.ipfix_sequence(b.port, domain, be32(h + 8), <uint32_t>ex.msg_records,
                                  <int64_t>(b.recv_time * 1000.0), be32(h + 4), ex.msg_restarted)
            else:
                if not whole:   # what the message held from the set that failed on is not known
                    ex.msg_unknown_bytes += <uint64_t>(m.end - set_start)
                    ex.msg_sets_kept = False
                ex.ipfix_forget(b.port, domain, be32(h + 8), ex.msg_uncounted or ex.msg_records > 0,
                                ex.msg_records, ex.msg_records + ex.msg_unknown_bytes,
                                ex.msg_unknown_sets if ex.msg_sets_kept else None,
                                <int64_t>(b.recv_time * 1000.0), be32(h + 4), ex.msg_restarted)
            if not first:
                # A later message of the datagram (RFC 7011 10.3.3): its flows carry its own
                # observation domain and sequence number.
                for i in range(msg_flows, b.n):
                    b.flows[i].msg_domain = domain
                    b.flows[i].msg_sequence = be32(h + 8)
                    b.flows[i].present |= P_MSG
        first = False
    if rd_left(r):
        # Bytes after the last message that cannot be one: the header's length disagrees with
        # the datagram (garbage, or a length field cut short).
        raise_decode("bad_length", r.pos, f"{rd_left(r)} bytes after the last IPFIX message")
    return 0


cdef int refuse_ipfix(Decoder dec, ExporterState ex, FlowBatch b, const uint8_t* buf, Py_ssize_t n) except -1:
    """An IPFIX datagram refused before decoding (see ExporterState.forget_stream): its flows are
    not decoded (what the refusal saves), but each message's records are counted, as decoding
    would have counted them, so that its sequence number says what was lost after it (RFC 7011
    3.1: the next message's number is this one's plus its Data Records). A data set of a known
    template gives its record count without its fields being read (count_records: a division
    for a fixed-length template, the length prefixes walked for a variable-length one); a
    message counted whole goes into its stream as a decoded one does (ipfix_sequence), one with
    a set that could not be counted as one not decoded whole (ipfix_forget: its undecoded sets
    kept to count once their templates are known, its bytes the bound). Counted by its bytes
    alone, a refused message of 30 records in 1400 bytes hid a loss of up to 1370 records
    after it: the collector's last reads refused at shutdown, the next run missed most of the
    exporter's downtime loss. Its options data sets of known templates are decoded (they are
    records too): a systemInitTimeMilliseconds (IE 160) telling a restart of the exporting
    process in a refused message was not seen, the restart then missed (the new run numbered
    ahead of the old one) or counted twice (numbered behind it: once by its late messages, again
    by its next record of IE 160). Its export time goes with it (before_restart: the old run's
    message, late after a restart told by IE 160, changes nothing). Its template sets are learned
    as a decoded message's are (parse_template_set: the same per-exporter and global bounds, an
    eviction counted, a withdrawal applied): not read, a refused template refresh left the data
    after it unread (missing templates) until the next refresh, 10 minutes with Open vSwitch's
    default. The sets are read in the message's order, a data set counted by the templates as
    they are where it stands (RFC 7011 8: a template goes before the data that uses it).
    Returns the messages whose sequence numbers were taken."""
    cdef Reader r, m, s
    cdef int taken = 0
    cdef const uint8_t* h
    cdef uint16_t msg_len, set_id, set_len
    cdef uint32_t domain
    cdef Py_ssize_t set_start, k
    cdef Template t
    cdef object si
    cdef bint whole
    cdef int64_t now_ms = <int64_t>(b.recv_time * 1000.0)
    rd_init(&r, buf, 0, n)
    while rd_left(&r) >= 16:
        h = rd_take(&r, 16)
        msg_len = be16(h + 2)
        domain = be32(h + 12)
        ex.msg_seq = be32(h + 8)
        ex.msg_export_s = be32(h + 4)
        ex.msg_records = 0
        ex.msg_opt_records = 0
        ex.msg_uncounted = False
        ex.msg_restarted = False
        ex.msg_old_run = False
        ex.msg_unknown_bytes = 0
        ex.msg_unknown_sets = None
        ex.msg_sets_kept = True
        taken += 1
        if be16(h) != 10 or msg_len < 16 or msg_len - 16 > rd_left(&r):
            ex.ipfix_forget(b.port, domain, be32(h + 8), False, 0, <uint64_t>rd_left(&r), None, now_ms, be32(h + 4))
            break
        rd_sub(&r, &m, msg_len - 16)
        set_start = m.pos
        whole = False
        # One datagram, one reason: the refusal (rate_limited, too_large: the datagram's decode
        # error; shutdown: the collector's drop) is what is counted of it. A template record or
        # an options set in it that is malformed, or teaches more than there is room for, is
        # neither counted as a decode error of its own (ExporterState.refusing) nor logged
        # (Decoder.quiet).
        ex.refusing = True
        dec.quiet = True
        try:
            while rd_left(&m) >= 4:
                set_start = m.pos
                set_id = rd_u16(&m)
                set_len = rd_u16(&m)
                if set_id == 0 and set_len == 0 and all_zero(m.buf, set_start, m.end):
                    break       # zero padding to the end of the message
                if set_len < 4 or set_len - 4 > rd_left(&m):
                    raise_decode("bad_set", set_start, "")
                rd_sub(&m, &s, set_len - 4)
                if set_id == 2 or set_id == 3:
                    # learned as when decoded (the same limits and eviction counts), in the
                    # message's order: a data set after it is counted by it (RFC 7011 8)
                    parse_template_set(dec, ex, b, &s, 10, domain, set_id == 3)
                    continue
                if set_id < 256:
                    continue
                t = ex.templates.get(tkey(10, domain, set_id, b.port))
                if t is None and ex.tid_latest:
                    t = borrowed_template(dec, ex, b, &s, domain, set_id)
                if t is not None and t.options:
                    si = ex.sysinit_ms.get((10, domain, b.port)) if len(ex.sysinit_ms) else None
                    decode_data_set(dec, ex, b, &s, 10, domain, set_id, <int64_t>be32(h + 4) * 1000,
                                    si if si is not None else -1)
                    continue
                k = count_records(t, s.buf + s.pos, rd_left(&s)) if t is not None else -1
                if k >= 0:
                    ex.msg_records += <uint64_t>k
                else:
                    ex.msg_uncounted = True
                    keep_unknown_set(ex, domain, set_id, s.buf + s.pos, rd_left(&s))
            whole = True
        except DecodeError:
            pass        # (as above: what it held is not counted beside the refusal)
        finally:
            ex.refusing = False
            dec.quiet = False
        # as decode_ipfix's end of a message
        if whole and not ex.msg_uncounted:
            ex.ipfix_sequence(b.port, domain, be32(h + 8), <uint32_t>ex.msg_records, now_ms, be32(h + 4),
                              ex.msg_restarted)
        else:
            if not whole:
                ex.msg_unknown_bytes += <uint64_t>(m.end - set_start)
                ex.msg_sets_kept = False
            ex.ipfix_forget(b.port, domain, be32(h + 8), ex.msg_uncounted or ex.msg_records > 0,
                            ex.msg_records, ex.msg_records + ex.msg_unknown_bytes,
                            ex.msg_unknown_sets if ex.msg_sets_kept else None, now_ms, be32(h + 4),
                            ex.msg_restarted)
    return taken


cdef int refuse_v9(Decoder dec, ExporterState ex, FlowBatch b, const uint8_t* buf, Py_ssize_t n) except -1:
    """A NetFlow v9 packet refused before decoding (see ExporterState.forget_stream): its flows are
    not decoded, but its flow records are counted as decode_v9 counts them (data flowsets of
    known templates by count_records, options records left out), so that it goes into its stream
    as a decoded packet does (v9_convention): read by packets (RFC 3954 5.1) it advances by one
    whatever it held, read by flow records (Juniper's numbering) by its records. Taken as of
    unknown records, a loss right after it in a stream read by records went uncounted (the next
    packet set what is expected), and its step was no vote. A flowset whose template is not
    known (or that does not fit it) leaves the count unknown, as for a packet not decoded whole.
    Its template flowsets are learned as a decoded packet's are (parse_template_set), in the
    packet's order: a data flowset after one is counted by it (RFC 3954 5: a template before
    the data that uses it). Returns 1 when its stream took it (a whole header), else 0."""
    cdef Reader r, s
    cdef const uint8_t* h
    cdef uint16_t set_id, set_len
    cdef uint32_t domain
    cdef Py_ssize_t set_start, k
    cdef uint64_t flows = 0
    cdef bint counted = True
    cdef Template t
    if n < 20:
        return 0
    rd_init(&r, buf, 0, n)
    h = rd_take(&r, 20)
    domain = be32(h + 16)
    # one datagram, one reason (refuse_ipfix): a template record in it flowscope refuses, or
    # one over the limits, is neither counted as an error of its own nor logged
    ex.refusing = True
    dec.quiet = True
    try:
        while rd_left(&r) >= 4:
            set_start = r.pos
            set_id = rd_u16(&r)
            set_len = rd_u16(&r)
            if set_id == 0 and set_len == 0 and all_zero(r.buf, set_start, r.end):
                break           # zero padding after the last flowset
            if set_len < 4 or set_len - 4 > rd_left(&r):
                counted = False
                break
            rd_sub(&r, &s, set_len - 4)
            if set_id == 0 or set_id == 1:
                # learned as when decoded, in the packet's order (refuse_ipfix); the flowsets
                # after one whose records could not be counted are still read for theirs
                parse_template_set(dec, ex, b, &s, 9, domain, set_id == 1)
                continue
            if set_id < 256 or not counted:
                continue
            t = ex.templates.get(tkey(9, domain, set_id, b.port))
            k = count_records(t, s.buf + s.pos, rd_left(&s)) if t is not None else -1
            if k < 0:
                counted = False
            elif not t.options:
                flows += <uint64_t>k
    except DecodeError:
        counted = False         # (as above: not counted beside the refusal)
    finally:
        ex.refusing = False
        dec.quiet = False
    ex.sequence(PROTO_NETFLOW9, b.port, domain, be32(h + 12),
                <uint32_t>flows if counted and flows < V9_UNCOUNTED else V9_UNCOUNTED,
                be32(h + 4), <int64_t>(b.recv_time * 1000.0), be32(h + 8))
    return 1
