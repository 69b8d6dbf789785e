# cython: language_level=3
"""Compiled reader of the enrichment index: the per-flow `enrich()` of enrich.index.Index.

Why: in pure Python the hot-path call costs several dict lookups plus two intermediate bytes
concatenations; here the same algorithm reads the same dicts and entry tuples with borrowed
references and writes the output fragment with one allocation and three memcpy. The Python
`Index.enrich` stays the reference implementation; the tests run both on the same index and
require identical bytes, so they cannot drift.

Entry tuples (built by enrich.index, read by position):
    (src_fragment: bytes, dst_fragment: bytes, node: str | None, infra: bool,
     start_ms: int, end_ms: int, previous_holder: tuple | None)
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_New
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset

# The C API the decoders' encoder calls per flow (through a capsule, so neither extension needs
# the other at build time). It resolves both addresses through a per-address cache and returns
# borrowed pointers to the three pre-encoded pieces of the answer: no Python call, no bytes
# object and, on a cache hit, no dict lookup per flow. The capsule holds {reader, functions}:
# prefetch(reader, addr, alen) starts loading an address's cache set, so that the encoder can
# ask for every address of a datagram before it resolves the first one (the sets' lines are
# often out of the CPU's caches by then: perf showed resolve() waiting on its first load).
ctypedef int (*parts_fn_t)(void* reader, const unsigned char* src, const unsigned char* dst, int alen,
                           const unsigned char* agent, int aglen, long long t, int direction,
                           PyObject** a, PyObject** b, PyObject** tail) noexcept
ctypedef void (*prefetch_fn_t)(void* reader, const unsigned char* addr, int alen) noexcept

cdef struct CApi:
    void* reader
    parts_fn_t parts
    prefetch_fn_t prefetch
    long long* flows    # [unidentified, identified]: parts() counts each answer; an encoder that
                        # throws an encoded flow away (a full batch) takes its count back,
    long long* hits     # and the cache hits and index lookups the answer took (Reader.hits,
    long long* misses   # Reader.misses)

cdef extern from *:
    void __builtin_prefetch(const void* p) nogil

DEF ASLOTS = 16384     # per-address answers: 8192 sets of 2 ways
DEF AWAYS = 2
DEF ALIVE = 1 << 62     # enrich.index.ALIVE: a holder that has not ended

cdef extern from "stdlib.h":
    void* aligned_alloc(size_t alignment, size_t size)

# One cache line per slot (64 bytes, 64-aligned): a lookup touches one line per way. The
# address's index entry (the strong reference that keeps the borrowed pointers below alive)
# lives in a parallel array that only a fill touches.
cdef struct ASlot:
    unsigned char addr[16]
    long long lo         # the slot answers for flow starts in [lo, hi)
    long long hi
    PyObject* src_frag   # holder[0], holder[1], holder[2]; src_frag NULL: nobody holds it
    PyObject* dst_frag
    PyObject* node       # interned node name, NULL: none
    unsigned int gen     # low 32 bits of the reader generation the slot was filled at
    signed char alen
    unsigned char infra


cdef inline object _holder_at(object e, long long t):
    # Same rule as enrich.index._holder_at: newest-first chain, the newest holder whose
    # [start, end) contains the flow start (the oldest also before its start), else none.
    cdef tuple cur = <tuple>e
    if t <= 0:
        while True:
            if <long long>cur[5] == ALIVE:
                return cur
            if cur[6] is None:
                return e
            cur = <tuple>cur[6]
    while True:
        if t >= <long long>cur[4] or cur[6] is None:
            if t < <long long>cur[5]:
                return cur
            if cur[6] is None:
                return None
        cur = <tuple>cur[6]


cdef inline int _span(object e, long long t, long long* lo, long long* hi):
    """The interval [lo, hi) of flow starts over which the holder of an address at t stays the
    same for this index generation (an empty interval when it is not simple to bound)."""
    cdef tuple cur = <tuple>e
    cdef long long b
    cdef int k
    if cur[6] is None:
        # One holder: before its end it is the answer (even before its start, like _holder_at).
        b = <long long>cur[5]
        if t < b:
            lo[0] = -(1LL << 62)
            hi[0] = b
        else:
            lo[0] = b
            hi[0] = 1LL << 62
        return 0
    if t <= 0:  # prefers a live holder over a newer tombstone: not cached
        lo[0] = t
        hi[0] = t
        return 0
    # _holder_at only compares t with the chain's starts and ends: between two neighbouring
    # ones its answer cannot change (t <= 0 has its own rule: never in the interval).
    lo[0] = 1
    hi[0] = 1LL << 62
    while True:
        for k in range(4, 6):
            b = <long long>cur[k]
            if b <= t:
                if b > lo[0]:
                    lo[0] = b
            elif b < hi[0]:
                hi[0] = b
        if cur[6] is None:
            return 0
        cur = <tuple>cur[6]


@cython.final  # no subclass: its cdef methods are called directly and the hit paths inlined
cdef class Reader:
    """Holds the reader-visible dicts of an Index (re-pointed by the Index on every swap)."""

    cdef dict ips
    cdef dict agents
    cdef tuple tails
    #: bumped by the Index on every change readers can see; callers caching answers
    #: (the decoders' encoder) drop them when it moves.
    cdef public long long generation
    #: per-address cache hits and index lookups (misses), for the collector's metrics
    cdef public long long hits
    cdef public long long misses
    cdef long long flows[2]      # answers without, with an identity (CApi.flows)

    cdef ASlot* cache
    cdef PyObject** entries      # strong references, parallel to cache
    cdef CApi api
    cdef PyObject* tailp[3][4]   # tails[layer][direction + 1], borrowed from self.tails
    cdef unsigned char last_agent[16]
    cdef int last_agent_len
    cdef long long last_agent_gen
    cdef PyObject* last_agent_node
    cdef bint agent_failed

    def __cinit__(self, tuple tails):
        cdef int i, j
        self.ips = {}
        self.agents = {}
        self.tails = tails
        if len(tails) != 3 or any(len(t) != 4 for t in tails):
            raise ValueError("tails must be 3 layers x 4 directions")
        for i in range(3):
            for j in range(4):
                self.tailp[i][j] = <PyObject*>(<tuple>tails[i])[j]
        self.cache = <ASlot*>aligned_alloc(64, ASLOTS * sizeof(ASlot))
        self.entries = <PyObject**>calloc(ASLOTS, sizeof(PyObject*))
        if self.cache == NULL or self.entries == NULL:
            raise MemoryError()
        memset(self.cache, 0, ASLOTS * sizeof(ASlot))
        self.api.reader = <void*>self
        self.api.parts = _parts
        self.api.prefetch = _prefetch
        self.api.flows = self.flows
        self.api.hits = &self.hits
        self.api.misses = &self.misses
        self.flows[0] = self.flows[1] = 0
        self.last_agent_len = -1
        self.last_agent_node = NULL

    def __dealloc__(self):
        cdef int i
        if self.entries != NULL:
            for i in range(ASLOTS):
                Py_XDECREF(self.entries[i])
            free(self.entries)
        free(self.cache)

    def c_api(self):
        """A capsule ("flowscope.enrich.parts.v4") for the decoders' encoder; keeps nothing alive
        by itself: the caller holds the reader (or its Enricher) while it uses the capsule."""
        return PyCapsule_New(&self.api, b"flowscope.enrich.parts.v4", NULL)

    cdef inline ASlot* resolve(self, const unsigned char* addr, int alen, long long t, ASlot* avoid) noexcept:
        """The cache slot describing the holder of an address at flow start t (slot.src_frag is
        NULL when nobody holds it); NULL on an error (memory). A hit costs a hash, a compare
        and no Python call (inlined into the callers; a miss goes to resolve_miss)."""
        cdef unsigned long long h = _ahash(addr, alen)
        cdef int i
        # Two-way set associative: a few thousand busy addresses in a direct-mapped table share
        # slots often enough (17% of 3,000 in 16,384 slots) to keep evicting each other.
        cdef ASlot* slot = &self.cache[(h & (ASLOTS // AWAYS - 1)) * AWAYS]
        cdef unsigned int gen = <unsigned int>self.generation
        for i in range(AWAYS):
            if (slot[i].gen == gen and slot[i].alen == alen and slot[i].lo <= t < slot[i].hi
                    and _addr_eq(slot[i].addr, addr, alen)):
                self.hits += 1
                return &slot[i]
        return self.resolve_miss(slot, h, addr, alen, t, avoid)

    cdef ASlot* resolve_miss(self, ASlot* base, unsigned long long h, const unsigned char* addr, int alen,
                             long long t, ASlot* avoid) noexcept:
        """resolve() without a cache hit in the set at base: refill a way. A miss never refills
        `avoid` (the source's slot while the destination is resolved: both may map to one
        set, and the source's answer, borrowed from its slot, must survive)."""
        cdef ASlot* slot = base
        cdef unsigned int gen = <unsigned int>self.generation
        self.misses += 1
        # victim: a way holding nothing current, else one picked by the hash's high bits
        if slot[0].gen != gen or slot[0].alen == 0:
            pass
        elif slot[1].gen != gen or slot[1].alen == 0:
            slot += 1
        else:
            slot += (h >> 60) & 1
        if slot == avoid:  # the set's other way (AWAYS == 2)
            slot = base + (1 - (slot - base))
        try:
            return self.fill(slot, addr, alen, t)
        except BaseException:
            return NULL

    cdef ASlot* fill(self, ASlot* slot, const unsigned char* addr, int alen, long long t) except NULL:
        """Cache miss: look the address up in the index dict and describe its holder at t."""
        cdef PyObject* p
        cdef object e, holder
        cdef long long lo = 0, hi = 0
        key = PyBytes_FromStringAndSize(<const char*>addr, alen)
        p = PyDict_GetItem(self.ips, key)
        cdef Py_ssize_t k = slot - self.cache
        Py_XDECREF(self.entries[k])
        self.entries[k] = NULL
        slot.src_frag = NULL
        slot.alen = 0  # not valid until filled
        if p is NULL:
            slot.lo = -(1LL << 62)
            slot.hi = 1LL << 62
        else:
            e = <object>p
            _span(e, t, &lo, &hi)
            slot.lo = lo
            slot.hi = hi
            Py_INCREF(e)
            self.entries[k] = p
            holder = _holder_at(e, t)
            if holder is not None:
                # holder is part of e's chain: its pieces stay alive while the entry is held
                slot.src_frag = <PyObject*>(<tuple>holder)[0]
                slot.dst_frag = <PyObject*>(<tuple>holder)[1]
                # Node names are interned by the index (enrich.index._intern): equal names are
                # the same object, so the per-flow comparisons below compare pointers.
                slot.node = <PyObject*>(<tuple>holder)[2] if (<tuple>holder)[2] is not None else NULL
                slot.infra = (<tuple>holder)[3] is True
        memcpy(slot.addr, addr, alen)
        slot.alen = <signed char>alen
        slot.gen = <unsigned int>self.generation
        return slot

    cdef inline PyObject* agent_node(self, const unsigned char* agent, int aglen) noexcept:
        """The (interned) node name of an exporter address, borrowed; NULL when unknown or on
        an error (then agent_failed is set). The last answer is kept: a batch has one exporter."""
        if (aglen == self.last_agent_len and self.last_agent_gen == self.generation
                and _addr_eq(self.last_agent, agent, aglen)):
            self.agent_failed = False
            return self.last_agent_node
        return self.agent_slow(agent, aglen)

    cdef PyObject* agent_slow(self, const unsigned char* agent, int aglen) noexcept:
        self.agent_failed = False
        if aglen <= 0:
            return NULL
        try:
            return self.agent_lookup(agent, aglen)
        except BaseException:
            self.agent_failed = True
            return NULL

    cdef PyObject* agent_lookup(self, const unsigned char* agent, int aglen) except? NULL:
        cdef PyObject* p
        p = PyDict_GetItem(self.agents, PyBytes_FromStringAndSize(<const char*>agent, aglen))
        # borrowed from self.agents; a publish() replacing it also moves generation
        self.last_agent_node = p if (p is not NULL and <object>p is not None) else NULL
        memcpy(self.last_agent, agent, aglen)
        self.last_agent_len = aglen
        self.last_agent_gen = self.generation
        return self.last_agent_node

    @property
    def flows_identified(self):
        """Flows answered with an identity on at least one side."""
        return self.flows[1]

    @property
    def flows_unidentified(self):
        """Flows answered with no identity on either side."""
        return self.flows[0]

    def publish(self, dict ips not None, dict agents not None):
        """Point the reader at the index's current dicts (called by the writer under its lock)."""
        self.ips = ips
        self.agents = agents
        self.generation += 1

    def enrich(self, bytes src, bytes dst, bytes agent, long long t_ms, int direction):
        """See enrich.index.Index.enrich (the contract in docs/INTERNALS.md). Same lookup code
        as the encoder's C API (_parts), plus one output allocation and three memcpy."""
        cdef ASlot* s = NULL
        cdef ASlot* d = NULL
        cdef PyObject* pa
        cdef PyObject* pb
        cdef PyObject* pt
        cdef Py_ssize_t la = 0, lb = 0, lt
        cdef bytes out
        cdef char* buf
        if src is not None and len(src) > 0:
            s = self.resolve(src, len(src), t_ms, NULL)
            if s == NULL:
                raise MemoryError()
        if dst is not None and len(dst) > 0:
            d = self.resolve(dst, len(dst), t_ms, s)
            if d == NULL:
                raise MemoryError()
        if agent is None:
            agent = b""
        if _combine(self, s, d, agent, len(agent), direction, &pa, &pb, &pt) != 0:
            raise MemoryError()
        if pa == NULL and pb == NULL:
            return <bytes>pt
        if pa != NULL:
            la = PyBytes_GET_SIZE(<bytes>pa)
        if pb != NULL:
            lb = PyBytes_GET_SIZE(<bytes>pb)
        lt = PyBytes_GET_SIZE(<bytes>pt)
        out = PyBytes_FromStringAndSize(NULL, la + lb + lt)
        buf = PyBytes_AS_STRING(out)
        if la:
            memcpy(buf, PyBytes_AS_STRING(<bytes>pa), la)
        if lb:
            memcpy(buf + la, PyBytes_AS_STRING(<bytes>pb), lb)
        memcpy(buf + la + lb, PyBytes_AS_STRING(<bytes>pt), lt)
        return out


cdef extern from *:
    uint32_t __builtin_bswap32(uint32_t x) nogil
    uint64_t __builtin_bswap64(uint64_t x) nogil


cdef inline unsigned long long _ahash(const unsigned char* addr, int alen) noexcept:
    # Multiplicative hashing of the address read big-endian (its varying last bytes become the
    # low bits, which the multiply spreads upwards), high half folded down for the set index: a
    # few instructions, where a byte-wise FNV cost four (IPv4) or sixteen (IPv6) multiply
    # rounds, twice per address (prefetch and resolve). Set overflow on pod addresses as FNV's.
    cdef uint32_t a4
    cdef uint64_t a0, a1, h
    cdef int i
    if alen == 4:
        memcpy(&a4, addr, 4)
        h = <uint64_t>__builtin_bswap32(a4) * 0x9E3779B97F4A7C15ULL
    elif alen == 16:
        memcpy(&a0, addr, 8)
        memcpy(&a1, addr + 8, 8)
        h = (__builtin_bswap64(a0) * 0xC2B2AE3D27D4EB4FULL + __builtin_bswap64(a1)) * 0x9E3779B97F4A7C15ULL
    else:
        h = 1469598103934665603ULL
        for i in range(alen):
            h = (h ^ addr[i]) * 1099511628211ULL
    return h ^ (h >> 32)


cdef void _prefetch(void* reader, const unsigned char* addr, int alen) noexcept:
    """Start loading the cache set resolve() will read for addr (one 128-byte set: two lines)."""
    cdef ASlot* slot
    if alen <= 0:
        return
    slot = &(<Reader>reader).cache[(_ahash(addr, alen) & (ASLOTS // AWAYS - 1)) * AWAYS]
    __builtin_prefetch(slot)
    __builtin_prefetch(slot + 1)


cdef inline bint _addr_eq(const unsigned char* x, const unsigned char* y, int n) noexcept:
    # Addresses are 4 or 16 bytes: two word compares instead of a memcmp call.
    cdef uint64_t a0, a1, b0, b1
    cdef uint32_t c, d
    if n == 4:
        memcpy(&c, x, 4)
        memcpy(&d, y, 4)
        return c == d
    if n == 16:
        memcpy(&a0, x, 8)
        memcpy(&a1, x + 8, 8)
        memcpy(&b0, y, 8)
        memcpy(&b1, y + 8, 8)
        return a0 == b0 and a1 == b1
    return memcmp(x, y, n) == 0


cdef int _parts(void* reader, const unsigned char* src, const unsigned char* dst, int alen,
                const unsigned char* agent, int aglen, long long t, int direction,
                PyObject** a, PyObject** b, PyObject** tail) noexcept:
    """Same answer as Reader.enrich, as three borrowed byte strings to concatenate (a and b may
    be NULL). Returns 0, or -1 on an error (the caller falls back to Reader.enrich, which
    raises it). On a cache hit this is two hashed slot reads and pointer compares."""
    cdef Reader r = <Reader>reader
    cdef ASlot* s
    cdef ASlot* d
    if alen <= 0:
        return -1
    s = r.resolve(src, alen, t, NULL)
    if s == NULL:
        return -1
    d = r.resolve(dst, alen, t, s)
    if d == NULL:
        return -1
    return _combine(r, s, d, agent, aglen, direction, a, b, tail)


cdef inline int _combine(Reader r, ASlot* s, ASlot* d, const unsigned char* agent, int aglen, int direction,
                         PyObject** a, PyObject** b, PyObject** tail) noexcept:
    # The output rule of enrich.index.Index.enrich over resolved slots (s or d NULL: no address).
    # Node names are interned by the index, so the same node is the same object (pointer compares).
    cdef PyObject* sn = NULL
    cdef PyObject* dn = NULL
    cdef PyObject* an
    cdef int layer = 1, fd
    cdef bint sh = s != NULL and s.src_frag != NULL
    cdef bint dh = d != NULL and d.src_frag != NULL
    if direction < -1 or direction > 2:
        direction = -1
    a[0] = NULL
    b[0] = NULL
    if not sh and not dh:
        r.flows[0] += 1
        tail[0] = r.tailp[0][direction + 1]
        return 0
    r.flows[1] += 1
    if sh:
        a[0] = s.src_frag
        sn = s.node
        if s.infra:
            layer = 2
    if dh:
        b[0] = d.dst_frag
        dn = d.node
        if d.infra:
            layer = 2
    if sn != NULL and sn == dn:
        # NetObserv's reinterpretDirection: same node -> inner; otherwise egress when the
        # exporter is the source's node, ingress when it is the destination's.
        fd = 2
    else:
        an = r.agent_node(agent, aglen)
        if an == NULL:
            if r.agent_failed:
                return -1
            fd = direction
        elif an == sn:
            fd = 1
        elif an == dn:
            fd = 0
        else:
            fd = direction
    tail[0] = r.tailp[layer][fd + 1]
    return 0
