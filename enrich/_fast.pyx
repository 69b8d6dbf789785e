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

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_New
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy

# The C API the decoders' encoder calls per flow (through a capsule, so neither extension needs
# the other at build time). It resolves both addresses through a per-address cache and returns
# borrowed pointers to the three pre-encoded pieces of the answer: no Python call, no bytes
# object and, on a cache hit, no dict lookup per flow. The capsule holds {reader, function}.
ctypedef int (*parts_fn_t)(void* reader, const unsigned char* src, const unsigned char* dst, int alen,
                           const unsigned char* agent, int aglen, long long t, int direction,
                           PyObject** a, PyObject** b, PyObject** tail) noexcept

cdef struct CApi:
    void* reader
    parts_fn_t parts

DEF ASLOTS = 16384

cdef struct ASlot:
    unsigned char addr[16]
    int alen
    PyObject* entry      # the address's chain head (a strong reference), NULL: not in the index
    PyObject* holder     # the holder at the cached interval (kept alive by entry), NULL: none
    PyObject* src_frag   # holder[0], holder[1], holder[2] (borrowed through entry)
    PyObject* dst_frag
    PyObject* node
    int infra
    long long lo
    long long hi
    long long gen


cdef inline object _holder_at(object e, long long t):
    # Same rule as enrich.index._holder_at: newest-first chain, the holder whose start is at
    # or before the flow start, none if that holder had already gone.
    cdef tuple cur = <tuple>e
    if t <= 0:
        return cur
    while t < <long long>cur[4] and cur[6] is not None:
        cur = <tuple>cur[6]
    if t >= <long long>cur[5]:
        return None
    return cur


cdef inline int _span(object e, long long t, long long* lo, long long* hi):
    """The interval [lo, hi) of flow starts over which the holder of an address at t stays the
    same for this index generation (an empty interval when it is not simple to bound)."""
    cdef tuple head = <tuple>e
    cdef long long start = <long long>head[4]
    cdef long long end = <long long>head[5]
    if head[6] is None:
        # One holder: before its end it is the answer (even before its start, like _holder_at).
        if t < end:
            lo[0] = -(1LL << 62)
            hi[0] = end
        else:
            lo[0] = end
            hi[0] = 1LL << 62
        return 0
    if start <= t < end:
        lo[0] = start
        hi[0] = end
    else:
        lo[0] = t
        hi[0] = t  # a reused address away from its newest holder: not cached
    return 0


cdef class Reader:
    """Holds the reader-visible dicts of an Index (re-pointed by the Index on every swap)."""

    cdef dict ips
    cdef dict agents
    cdef tuple tails
    #: bumped by the Index on every change readers can see; callers caching answers
    #: (the decoders' encoder) drop them when it moves.
    cdef public long long generation

    cdef ASlot* cache
    cdef CApi api
    cdef unsigned char last_agent[16]
    cdef int last_agent_len
    cdef long long last_agent_gen
    cdef object last_agent_node

    def __cinit__(self, tuple tails):
        self.ips = {}
        self.agents = {}
        self.tails = tails
        self.cache = <ASlot*>calloc(ASLOTS, sizeof(ASlot))
        if self.cache == NULL:
            raise MemoryError()
        self.api.reader = <void*>self
        self.api.parts = _parts
        self.last_agent_len = -1
        self.last_agent_node = None

    def __dealloc__(self):
        cdef int i
        if self.cache != NULL:
            for i in range(ASLOTS):
                Py_XDECREF(self.cache[i].entry)
            free(self.cache)

    def c_api(self):
        """A capsule ("flowscope.enrich.parts") for the decoders' encoder; keeps nothing alive
        by itself: the caller holds the reader (or its Enricher) while it uses the capsule."""
        return PyCapsule_New(&self.api, b"flowscope.enrich.parts", NULL)

    cdef ASlot* resolve(self, const unsigned char* addr, int alen, long long t) except NULL:
        """The cache slot describing the holder of an address at flow start t (slot.holder is
        NULL when nobody holds it)."""
        cdef unsigned long long h = 1469598103934665603ULL
        cdef int i
        cdef ASlot* slot
        cdef PyObject* p
        cdef object e, holder
        cdef long long lo, hi
        for i in range(alen):
            h = (h ^ addr[i]) * 1099511628211ULL
        slot = &self.cache[(h ^ (h >> 29)) % ASLOTS]
        if (slot.gen == self.generation and slot.alen == alen and slot.lo <= t < slot.hi
                and memcmp(slot.addr, addr, alen) == 0):
            return slot
        key = PyBytes_FromStringAndSize(<const char*>addr, alen)
        p = PyDict_GetItem(self.ips, key)
        Py_XDECREF(slot.entry)
        slot.entry = NULL
        slot.holder = NULL
        if p is NULL:
            slot.lo = -(1LL << 62)
            slot.hi = 1LL << 62
        else:
            e = <object>p
            _span(e, t, &lo, &hi)
            slot.lo = lo
            slot.hi = hi
            Py_INCREF(e)
            slot.entry = p
            holder = _holder_at(e, t)
            if holder is not None:
                slot.holder = <PyObject*>holder  # part of e's chain: alive while entry is
                slot.src_frag = <PyObject*>(<tuple>holder)[0]
                slot.dst_frag = <PyObject*>(<tuple>holder)[1]
                slot.node = <PyObject*>(<tuple>holder)[2]
                slot.infra = (<tuple>holder)[3] is True
        memcpy(slot.addr, addr, alen)
        slot.alen = alen
        slot.gen = self.generation
        return slot

    cdef object agent_node(self, const unsigned char* agent, int aglen):
        cdef PyObject* p
        if aglen <= 0:
            return None
        if (aglen == self.last_agent_len and self.last_agent_gen == self.generation
                and memcmp(self.last_agent, agent, aglen) == 0):
            return self.last_agent_node
        p = PyDict_GetItem(self.agents, PyBytes_FromStringAndSize(<const char*>agent, aglen))
        self.last_agent_node = <object>p if p is not NULL else None
        memcpy(self.last_agent, agent, aglen)
        self.last_agent_len = aglen
        self.last_agent_gen = self.generation
        return self.last_agent_node

    def publish(self, dict ips not None, dict agents not None):
        """Point the reader at the index's current dicts (called by the writer under its lock)."""
        self.ips = ips
        self.agents = agents
        self.generation += 1

    def enrich(self, bytes src, bytes dst, bytes agent, long long t_ms, int direction):
        """See enrich.index.Index.enrich (the contract in docs/INTERNALS.md)."""
        cdef dict ips = self.ips
        cdef PyObject* p
        cdef object s = None
        cdef object d = None
        cdef tuple st, dt
        cdef object sn = None, dn = None, an
        cdef int layer, fd
        cdef bytes a, b, tail, out
        cdef Py_ssize_t la, lb, lt
        cdef char* buf

        if src is not None:
            p = PyDict_GetItem(ips, src)
            if p is not NULL:
                st = <tuple><object>p
                if t_ms < <long long>st[4] or t_ms >= <long long>st[5]:
                    s = _holder_at(st, t_ms)
                else:
                    s = st
        if dst is not None:
            p = PyDict_GetItem(ips, dst)
            if p is not NULL:
                dt = <tuple><object>p
                if t_ms < <long long>dt[4] or t_ms >= <long long>dt[5]:
                    d = _holder_at(dt, t_ms)
                else:
                    d = dt
        if direction < -1 or direction > 2:
            direction = -1
        if s is None and d is None:
            return (<tuple>self.tails[0])[direction + 1]
        if s is not None:
            st = <tuple>s
            sn = st[2]
        if d is not None:
            dt = <tuple>d
            dn = dt[2]
        if (s is not None and st[3] is True) or (d is not None and dt[3] is True):
            layer = 2
        else:
            layer = 1
        # NetObserv's reinterpretDirection: same node -> inner; otherwise egress when the
        # exporter is the source's node, ingress when it is the destination's.
        if sn is not None and (sn is dn or sn == dn):
            fd = 2
        else:
            an = None
            if agent is not None:
                p = PyDict_GetItem(self.agents, agent)
                if p is not NULL:
                    an = <object>p
            if an is None:
                fd = direction
            elif an is sn or an == sn:
                fd = 1
            elif an is dn or an == dn:
                fd = 0
            else:
                fd = direction
        tail = <bytes>(<tuple>self.tails[layer])[fd + 1]
        a = <bytes>st[0] if s is not None else b""
        b = <bytes>dt[1] if d is not None else b""
        la = PyBytes_GET_SIZE(a)
        lb = PyBytes_GET_SIZE(b)
        lt = PyBytes_GET_SIZE(tail)
        out = PyBytes_FromStringAndSize(NULL, la + lb + lt)
        buf = PyBytes_AS_STRING(out)
        memcpy(buf, PyBytes_AS_STRING(a), la)
        memcpy(buf + la, PyBytes_AS_STRING(b), lb)
        memcpy(buf + la + lb, PyBytes_AS_STRING(tail), lt)
        return out


cdef inline bint _same(PyObject* x, PyObject* y):
    if x == y:
        return True
    if x == NULL or y == NULL or <object>x is None or <object>y is None:
        return False
    return <object>x == <object>y


cdef int _parts(void* reader, const unsigned char* src, const unsigned char* dst, int alen,
                const unsigned char* agent, int aglen, long long t, int direction,
                PyObject** a, PyObject** b, PyObject** tail) noexcept:
    """Same answer as Reader.enrich, as three borrowed byte strings to concatenate (a and b may
    be NULL). Returns 0, or -1 when an exception occurred (cleared; the caller falls back)."""
    cdef Reader r = <Reader>reader
    cdef ASlot* s
    cdef ASlot* d
    cdef PyObject* sn = NULL
    cdef PyObject* dn = NULL
    cdef object an
    cdef int layer = 1, fd
    if alen <= 0:
        return -1
    try:
        s = r.resolve(src, alen, t)
        sh = s.holder != NULL
        sn = s.node if sh else NULL
        d = r.resolve(dst, alen, t)
        dh = d.holder != NULL
        dn = d.node if dh else NULL
    except BaseException:
        return -1
    if direction < -1 or direction > 2:
        direction = -1
    a[0] = s.src_frag if sh else NULL
    b[0] = d.dst_frag if dh else NULL
    if not sh and not dh:
        tail[0] = <PyObject*>(<tuple>r.tails[0])[direction + 1]
        return 0
    if (sh and s.infra) or (dh and d.infra):
        layer = 2
    if sn != NULL and <object>sn is not None and _same(sn, dn):
        fd = 2
    else:
        try:
            an = r.agent_node(agent, aglen)
        except BaseException:
            return -1
        if an is None:
            fd = direction
        elif _same(<PyObject*>an, sn):
            fd = 1
        elif _same(<PyObject*>an, dn):
            fd = 0
        else:
            fd = direction
    tail[0] = <PyObject*>(<tuple>r.tails[layer])[fd + 1]
    return 0
