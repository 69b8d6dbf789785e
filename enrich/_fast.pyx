# cython: language_level=3
"""Compiled reader of the enrichment index: the per-flow `enrich()` of enrich.index.Index.

Why: in pure Python the hot-path call costs several dict lookups plus two intermediate bytes
concatenations; here the same algorithm reads the same dicts and entry tuples with borrowed
references and writes the output fragment with one allocation and three memcpy. The Python
`Index.enrich` stays the reference implementation; the tests run both on the same index and
require identical bytes, so they cannot drift.

The per-address answer cache is an EnrichView (enrich/view.pxd) that the decoders' encoder reads
in place through a capsule: its hit path is compiled into the encoder, and only a miss comes
back here (Reader.resolve_miss through view.miss).

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
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset

from enrich.view cimport (VIEW_BLOCKS, VIEW_CAPSULE, VIEW_HITS, VIEW_IDENTIFIED, VIEW_KIND_NODE, VIEW_KIND_NONE,
                          VIEW_KIND_POD, VIEW_KIND_SERVICE, VIEW_MISSES, VIEW_SLOTS, VIEW_TEXT, VIEW_UNIDENTIFIED,
                          VIEW_WAYS,
                          EnrichAgent, EnrichParts, EnrichSlot, EnrichView,
                          view_agent, view_agent_set, view_combine, view_resolve)

DEF ALIVE = 1 << 62     # enrich.index.ALIVE: a holder that has not ended

SLOTS = VIEW_SLOTS      # the per-address answer cache's shape (for tests): slots,
WAYS = VIEW_WAYS        # and ways a set

cdef extern from *:
    """
    #include <sys/mman.h>
    /* The slot array: anonymous memory (zeroed) on a 2 MiB boundary, with huge pages asked for
       (transparent huge pages in "madvise" mode honour it; elsewhere the advice is refused or
       ignored and 4 KiB pages serve the same). *base and *size say what to unmap. */
    static void* fs_slots_map(size_t bytes, void** base, size_t* size) {
        const size_t huge = (size_t)2 << 20;
        size_t n = bytes + huge;
        char* p = (char*)mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        char* a;
        if (p == (char*)MAP_FAILED) return NULL;
        a = (char*)(((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1));
    #ifdef MADV_HUGEPAGE
        (void)madvise(a, bytes, MADV_HUGEPAGE);
    #endif
        *base = p;
        *size = n;
        return a;
    }
    static void fs_slots_unmap(void* base, size_t size) {
        if (base != NULL) munmap(base, size);
    }
    """
    void* fs_slots_map(size_t nbytes, void** base, size_t* size)
    void fs_slots_unmap(void* base, size_t size)


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


@cython.final  # no subclass: its cdef methods are called directly
cdef class Reader:
    """Holds the reader-visible dicts of an Index (re-pointed by the Index on every swap) and
    the per-address answer cache the encoder reads in place (enrich/view.pxd)."""

    cdef dict ips
    cdef dict agents
    cdef tuple tails
    cdef EnrichView view
    cdef PyObject** entries      # strong references, parallel to view.cache
    cdef void* map_base          # the mapping view.cache lies in (fs_slots_map)
    cdef size_t map_size
    cdef char* blocks            # VIEW_BLOCKS text blocks of VIEW_TEXT bytes (fs_slots_map)
    cdef void* blocks_base
    cdef size_t blocks_size
    cdef Py_ssize_t blocks_used  # blocks handed out so far (in order: the busiest slots' lie together)
    cdef Py_ssize_t hand         # once all are out, the next one taken back (round the array)
    cdef int* block_owner        # per block: the slot it is lent to, -1: none
    cdef char** block_of         # parallel to view.cache: the slot's block in `blocks`, NULL: none
    cdef char** big              # parallel to view.cache: a malloc'ed block for parts too long for one

    def __cinit__(self, tuple tails):
        cdef int i, j
        self.ips = {}
        self.agents = {}
        self.tails = tails
        if len(tails) != 2 or any(len(t) != 4 for t in tails):
            raise ValueError("tails must be 2 layers x 4 directions")
        memset(&self.view, 0, sizeof(EnrichView))
        for i in range(2):
            for j in range(4):
                self.view.tails[i][j] = <PyObject*>(<tuple>tails[i])[j]
        self.map_base = NULL
        self.blocks_base = NULL
        self.view.cache = <EnrichSlot*>fs_slots_map(VIEW_SLOTS * sizeof(EnrichSlot), &self.map_base,
                                                    &self.map_size)
        self.blocks = <char*>fs_slots_map(VIEW_BLOCKS * VIEW_TEXT, &self.blocks_base, &self.blocks_size)
        self.blocks_used = 0
        self.hand = 0
        self.block_owner = <int*>calloc(VIEW_BLOCKS, sizeof(int))
        self.entries = <PyObject**>calloc(VIEW_SLOTS, sizeof(PyObject*))
        self.block_of = <char**>calloc(VIEW_SLOTS, sizeof(char*))
        self.big = <char**>calloc(VIEW_SLOTS, sizeof(char*))
        if (self.view.cache == NULL or self.blocks == NULL or self.entries == NULL or self.block_of == NULL
                or self.big == NULL or self.block_owner == NULL):
            raise MemoryError()
        self.view.reader = <void*>self
        self.view.miss = _miss
        self.view.agent = _agent

    def __dealloc__(self):
        cdef int i
        if self.entries != NULL:
            for i in range(VIEW_SLOTS):
                Py_XDECREF(self.entries[i])
            free(self.entries)
        if self.big != NULL:
            for i in range(VIEW_SLOTS):
                free(self.big[i])
            free(self.big)
        free(self.block_of)
        free(self.block_owner)
        fs_slots_unmap(self.map_base, self.map_size)
        fs_slots_unmap(self.blocks_base, self.blocks_size)

    def c_api(self):
        """A capsule (VIEW_CAPSULE, "flowscope.enrich.view.v11") pointing at the reader's
        EnrichView for the decoders' encoder; keeps nothing alive by itself: the caller holds
        the reader (or its Enricher) while it uses the capsule."""
        return PyCapsule_New(&self.view, VIEW_CAPSULE, NULL)

    @property
    def generation(self):
        """Moved by the Index on every change readers can see; cached answers of an older
        generation are not used."""
        return self.view.generation

    @generation.setter
    def generation(self, unsigned long long value):
        self.moved(value)

    cdef void moved(self, unsigned long long value) noexcept:
        """Set the generation. A slot keeps the low 32 bits of the generation it was filled at
        (the slot is one cache line, its part lengths 32 bits), so an answer nobody asked for
        while the index changed 2^32 times would read as current again: whenever the high bits
        change (once every 2^32 changes), every slot's interval is emptied (lo = hi: it answers
        for no flow start), and each is filled again on its next lookup."""
        cdef int i
        if (value >> 32) != (self.view.generation >> 32):
            for i in range(VIEW_SLOTS):
                self.view.cache[i].hi = self.view.cache[i].lo
        self.view.generation = value

    @property
    def hits(self):
        """Addresses answered from the per-address cache (for the collector's metrics)."""
        return self.view.counts[VIEW_HITS]

    @property
    def misses(self):
        """Addresses looked up in the index (cache misses)."""
        return self.view.counts[VIEW_MISSES]

    @property
    def flows_identified(self):
        """Flows answered with an identity on at least one side."""
        return self.view.counts[VIEW_IDENTIFIED]

    @property
    def flows_unidentified(self):
        """Flows answered with no identity on either side."""
        return self.view.counts[VIEW_UNIDENTIFIED]

    @property
    def addresses(self):
        """Flow addresses by what they resolved to: {"pod", "node", "service", "none"} (none:
        nobody of the cluster held it at the flow's start)."""
        return {"pod": self.view.counts[VIEW_KIND_POD], "node": self.view.counts[VIEW_KIND_NODE],
                "service": self.view.counts[VIEW_KIND_SERVICE], "none": self.view.counts[VIEW_KIND_NONE]}

    cdef EnrichSlot* resolve_miss(self, EnrichSlot* base, unsigned long long h, const unsigned char* addr,
                                  int alen, long long t, EnrichSlot* avoid) noexcept:
        """view_resolve() without a cache hit in the set at base: refill a way. A miss never
        refills `avoid` (the source's slot while the destination is resolved: both may map to
        one set, and the source's answer, borrowed from its slot, must survive)."""
        cdef EnrichSlot* slot = NULL
        cdef unsigned int gen = <unsigned int>self.view.generation
        cdef int w
        self.view.counts[VIEW_MISSES] += 1
        # victim: the first way holding nothing current, else one picked by the hash's high
        # bits (the set's ways are all equally likely to be asked for: no recency kept)
        for w in range(VIEW_WAYS):
            if (base[w].gen != gen or base[w].alen == 0) and base + w != avoid:
                slot = base + w
                break
        if slot == NULL:
            slot = base + <int>((h >> 60) & (VIEW_WAYS - 1))
            if slot == avoid:   # another way of the set
                slot = base + ((slot - base + 1) & (VIEW_WAYS - 1))
        try:
            return self.fill(slot, addr, alen, t, avoid)
        except BaseException:
            return NULL

    cdef EnrichSlot* fill(self, EnrichSlot* slot, const unsigned char* addr, int alen, long long t,
                          EnrichSlot* avoid) except NULL:
        """Cache miss: look the address up in the index dict and describe its holder at t."""
        cdef PyObject* p
        cdef object e, holder
        cdef long long lo = 0, hi = 0
        key = PyBytes_FromStringAndSize(<const char*>addr, alen)
        p = PyDict_GetItem(self.ips, key)
        cdef Py_ssize_t k = slot - self.view.cache
        Py_XDECREF(self.entries[k])
        self.entries[k] = NULL
        slot.text = NULL
        slot.alen = 0  # not valid until filled
        # nobody's, until a holder says otherwise: how view_combine reads a slot without text
        slot.node = NULL
        slot.infra = 0
        slot.kind = VIEW_KIND_NONE
        slot.src_len = slot.dst_len = 0
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
                self.texts(slot, k, <bytes>(<tuple>holder)[0], <bytes>(<tuple>holder)[1], avoid - self.view.cache
                           if avoid != NULL else -1)
                # Node names are interned by the index (enrich.index._intern): equal names are
                # the same object, so the per-flow comparisons compare pointers.
                slot.node = <PyObject*>(<tuple>holder)[2] if (<tuple>holder)[2] is not None else NULL
                slot.infra = (<tuple>holder)[3] is True
                slot.kind = _kind(<bytes>(<tuple>holder)[0])
        memcpy(slot.addr, addr, alen)
        slot.alen = <signed char>alen
        slot.gen = <unsigned int>self.view.generation
        return slot

    cdef int texts(self, EnrichSlot* slot, Py_ssize_t k, bytes src, bytes dst, Py_ssize_t avoid) except -1:
        """The holder's two parts copied into slot k's text block, or into a block of their own
        when they are longer than one (names of hundreds of characters; freed when the slot is
        refilled). Blocks are lent to slots as they first hold somebody and kept; once all of
        them (VIEW_BLOCKS) are out, one is taken back from the slot it was lent to (round the
        array; never from slot `avoid`, whose answer the caller is reading), which forgets its
        answer: a cache entry, looked up again when next asked for. Why fewer blocks than
        slots: a block for each of the 16,384 slots is 9.4 MB, which put the index of issue 4's
        size (100k pods) past its 200 MB."""
        cdef Py_ssize_t ls = PyBytes_GET_SIZE(src), ld = PyBytes_GET_SIZE(dst), b, o
        cdef char* t
        if ls + ld <= VIEW_TEXT:
            free(self.big[k])
            self.big[k] = NULL
            if self.block_of[k] == NULL:
                if self.blocks_used < VIEW_BLOCKS:
                    b = self.blocks_used
                    self.blocks_used += 1
                else:
                    while True:
                        b = self.hand
                        self.hand = (self.hand + 1) % VIEW_BLOCKS
                        o = self.block_owner[b]
                        if o != avoid:
                            break
                    self.forget(o)
                self.block_owner[b] = <int>k
                self.block_of[k] = self.blocks + b * VIEW_TEXT
            t = self.block_of[k]
        else:
            t = <char*>realloc(self.big[k], ls + ld)
            if t == NULL:
                raise MemoryError()
            self.big[k] = t
        memcpy(t, PyBytes_AS_STRING(src), ls)
        memcpy(t + ls, PyBytes_AS_STRING(dst), ld)
        slot.src_len = <unsigned int>ls
        slot.dst_len = <unsigned int>ld
        slot.text = t
        return 0

    cdef void forget(self, Py_ssize_t o) noexcept:
        """Slot o gives its text block back: its answer is forgotten (empty: a lookup misses)."""
        cdef EnrichSlot* victim = &self.view.cache[o]
        victim.alen = 0
        victim.text = NULL
        victim.src_len = victim.dst_len = 0   # (nobody's, as fill leaves a slot without text)
        self.block_of[o] = NULL
        Py_XDECREF(self.entries[o])
        self.entries[o] = NULL

    cdef PyObject* agent_miss(self, const unsigned char* agent, int aglen, int* failed) noexcept:
        """The view's agent function (view_agent reads a current answer in place and calls this
        otherwise): the (interned) node name of an exporter address, borrowed, looked up in the
        index and kept in the view (EnrichView.agents: VIEW_AGENT_SETS sets of two entries, by
        hash) until the index moves; NULL when unknown or on an error (then failed is set). A
        batch has one exporter, and a collector behind a Service takes datagrams from many nodes
        in turn (one record each, from Open vSwitch)."""
        cdef EnrichAgent* e
        failed[0] = 0
        if aglen != 4 and aglen != 16:
            return NULL     # only addresses name nodes (and an entry holds 16 bytes)
        e = view_agent_set(&self.view, agent, aglen)
        e[1] = e[0]         # the newer answer first: the older one is replaced next
        try:
            return self.agent_lookup(e, agent, aglen)
        except BaseException:
            e[0].alen = 0
            failed[0] = 1
            return NULL

    cdef PyObject* agent_lookup(self, EnrichAgent* e, const unsigned char* agent, int aglen) except? NULL:
        cdef PyObject* p
        p = PyDict_GetItem(self.agents, PyBytes_FromStringAndSize(<const char*>agent, aglen))
        # borrowed from self.agents; a publish() replacing it also moves the generation
        e.node = p if (p is not NULL and <object>p is not None) else NULL
        memcpy(e.addr, agent, aglen)
        e.alen = aglen
        e.gen = self.view.generation
        return e.node

    def publish(self, dict ips not None, dict agents not None):
        """Point the reader at the index's current dicts (called by the writer under its lock)."""
        self.ips = ips
        self.agents = agents
        self.moved(self.view.generation + 1)

    def enrich(self, bytes src, bytes dst, bytes agent, long long t_ms, int direction):
        """See enrich.index.Index.enrich (the contract in docs/INTERNALS.md). Same lookup code
        as the encoder's (enrich/view.pxd), plus one output allocation and three memcpy."""
        cdef EnrichSlot* s = NULL
        cdef EnrichSlot* d = NULL
        cdef EnrichParts parts
        cdef PyObject* an
        cdef int failed = 0
        cdef Py_ssize_t la = 0, lb = 0, lt
        cdef bytes out
        cdef char* buf
        # Only 4- and 16-byte addresses can be held (the index's keys): any other length is
        # answered as nobody's without a lookup (and is never copied into a cache slot).
        if src is not None and (len(src) == 4 or len(src) == 16):
            s = view_resolve(&self.view, src, len(src), t_ms, NULL)
            if s == NULL:
                raise MemoryError()
        if dst is not None and (len(dst) == 4 or len(dst) == 16):
            d = view_resolve(&self.view, dst, len(dst), t_ms, s)
            if d == NULL:
                raise MemoryError()
        if agent is None:
            agent = b""
        an = view_agent(&self.view, agent, len(agent), &failed)
        if failed:
            raise MemoryError()
        view_combine(&self.view, s, d, an, t_ms, direction, &parts)
        if parts.a == NULL and parts.b == NULL:
            return <bytes>parts.tail
        la, lb = parts.la, parts.lb
        lt = PyBytes_GET_SIZE(<bytes>parts.tail)
        out = PyBytes_FromStringAndSize(NULL, la + lb + lt)
        buf = PyBytes_AS_STRING(out)
        if la:
            memcpy(buf, parts.a, la)
        if lb:
            memcpy(buf + la, parts.b, lb)
        memcpy(buf + la + lb, PyBytes_AS_STRING(<bytes>parts.tail), lt)
        return out


cdef extern from "string.h":
    void* memchr(const void* s, int c, size_t n) nogil
    int memcmp(const void* a, const void* b, size_t n) nogil


cdef unsigned char _kind(bytes frag) noexcept:
    """The holder's kind from its source fragment: the letter after `_Type":"` (enrich.index
    writes one of Pod, Node, Service there; a name's quotes are escaped by orjson, so the pattern
    cannot come from a value). Found by memchr over the underscores (one per key before it:
    SrcK8S_Name, SrcK8S_Namespace), not `in`: CPython's bytes.__contains__ first tries its
    argument as an integer and formats a TypeError it then drops (~1,500 instructions a test,
    +120 a flow in the pipeline benchmark), and glibc's memmem costs ~300 a call."""
    cdef const char* p = PyBytes_AS_STRING(frag)
    cdef const char* end = p + PyBytes_GET_SIZE(frag)
    cdef const char* u = p
    while True:
        u = <const char*>memchr(u, b'_', <size_t>(end - u))
        if u == NULL or end - u < 9:
            return VIEW_KIND_NONE
        if memcmp(u, b'_Type":"', 8) == 0:
            break
        u += 1
    if u[8] == b'P':
        return VIEW_KIND_POD
    if u[8] == b'N':
        return VIEW_KIND_NODE
    if u[8] == b'S':
        return VIEW_KIND_SERVICE
    return VIEW_KIND_NONE


cdef EnrichSlot* _miss(void* reader, EnrichSlot* base, unsigned long long h, const unsigned char* addr, int alen,
                       long long t, EnrichSlot* avoid) noexcept:
    return (<Reader>reader).resolve_miss(base, h, addr, alen, t, avoid)


cdef PyObject* _agent(void* reader, const unsigned char* agent, int aglen, int* failed) noexcept:
    return (<Reader>reader).agent_miss(agent, aglen, failed)
