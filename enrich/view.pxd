# The enrichment cache as both compiled modules see it: a struct plus inline functions, compiled
# into each module that cimports it (no module of its own, nothing imported at run time).
#
# Why: the decoders' encoder asks for two addresses per flow. Through a function of enrich._fast
# (a capsule call per flow) the call itself, its eleven arguments and the per-flow agent and
# counting bookkeeping cost more than the lookup (callgrind, sixteenth session: ~460
# instructions per flow, where a cache hit needs ~25 per address). Here the hit path is inlined
# into the caller; only a miss (an index lookup, Python objects) calls into the reader that owns
# the cache. The functions are C so that they can be forced inline (GCC kept a Cython `inline`
# version out of line: ~20 instructions of calling convention per address).
#
# enrich._fast.Reader owns an EnrichView and fills it; its capsule (FS_VIEW_CAPSULE) hands the
# encoder a pointer to it. Both modules are built from this one file by the same setup.py, so
# the layout cannot differ between them; the capsule's name carries a version all the same.

from cpython.object cimport PyObject

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>
    #define FS_VIEW_CAPSULE "flowscope.enrich.view.v11"
    #define FS_VIEW_SLOTS 16384   /* per-address answers: 4096 sets of 4 ways */
    #define FS_VIEW_WAYS 4
    #define FS_VIEW_SETS (FS_VIEW_SLOTS / FS_VIEW_WAYS)
    #define FS_VIEW_TEXT 576      /* a slot's text block: the holder's two parts, back to back */
    #define FS_VIEW_BLOCKS (FS_VIEW_SLOTS / 4)  /* text blocks (2.4 MB), lent to the slots (enrich._fast Reader.texts) */
    #define FS_VIEW_AGENT_SETS 256  /* exporter address -> node answers: sets of two (a power of two) */
    #if defined(__GNUC__) || defined(__clang__)
    #define FS_ALWAYS_INLINE static inline __attribute__((always_inline))
    #define FS_UNLIKELY(x) __builtin_expect(!!(x), 0)
    #else
    #define FS_ALWAYS_INLINE static inline
    #define FS_UNLIKELY(x) (x)
    #endif

    /* One cache line per slot (64 bytes; the reader maps the array on a 2 MiB boundary): a
       lookup touches one line per way. The holder's two parts (the JSON text the encoder copies
       out) are copies in a text block the reader lends the slot (enrich._fast Reader.texts:
       FS_VIEW_BLOCKS blocks in one array, lent in the order slots first hold somebody, so the
       busiest lie together). Why copies: the parts are Python bytes objects wherever the index
       allocated them; with a few thousand busy pods among 100k each copy touched a page of its
       own, and perf showed the prefetches and copies waiting on page walks (with the blocks,
       enrichment's cost in the pipeline loop at 25 records a datagram fell by a third; blocks
       inside the slots, ten lines a slot, spread the busy ones over the whole array and took a
       fifth off). The address's index entry (the strong reference that keeps node alive) lives
       in the reader, in an array parallel to the slots. */
    typedef struct EnrichSlot {
        unsigned char addr[16];
        long long lo, hi;        /* the slot answers for flow starts in [lo, hi) */
        const char* text;        /* the holder's source part, then its destination part; NULL: nobody holds the
                                    address (then node NULL, infra 0, kind FS_KIND_NONE and the lengths 0:
                                    fs_view_combine reads such a slot without a test) */
        PyObject* node;          /* interned node name, NULL: none */
        unsigned int gen;        /* low 32 bits of the view's generation when filled (the reader
                                    empties every slot's interval when the high bits move: Reader.moved) */
        unsigned int src_len, dst_len;   /* the two parts' lengths in text */
        signed char alen;        /* 0: empty */
        unsigned char infra;     /* the holder's layer bit (enrich.index Index._layer_bit) */
        unsigned char kind;      /* the holder's: FS_KIND_POD, _NODE or _SERVICE (with text) */
    } EnrichSlot;
    _Static_assert(sizeof(EnrichSlot) == 64, "EnrichSlot: one cache line");

    /* What the output rule gives for a flow: the source part and the destination part (text
       and length; NULL and 0 when unknown) and the tail (a borrowed byte string; ti: its place
       in EnrichView.tails read as one array, layer bit * 4 + direction + 1). */
    typedef struct EnrichParts {
        const char* a;
        const char* b;
        Py_ssize_t la, lb;
        PyObject* tail;
        int ti;
    } EnrichParts;

    /* The reader's slow paths (called with the GIL held). miss: refill a way of the set at
       `base` (never `avoid`) for addr at flow start t, counting the lookup; NULL on an error
       (memory). agent: the interned node name of an exporter address, borrowed, NULL when
       unknown; *failed set on an error; its answer kept in `agents` (fs_view_agent reads it
       there first). */
    typedef EnrichSlot* (*view_miss_fn)(void* reader, EnrichSlot* base, unsigned long long h,
                                        const unsigned char* addr, int alen, long long t, EnrichSlot* avoid);
    typedef PyObject* (*view_agent_fn)(void* reader, const unsigned char* agent, int aglen, int* failed);

    /* An exporter address's node (the reader's agent answers, kept until the index moves). */
    typedef struct EnrichAgent {
        unsigned char addr[16];
        int alen;                 /* 0: empty */
        unsigned long long gen;   /* the view's generation when filled */
        PyObject* node;           /* borrowed from the reader's agents dict; NULL: not a node's address */
    } EnrichAgent;

    /* counts[]: flows, lookups, then flow addresses by what they resolved to (FS_KIND_NONE:
       nobody of the cluster; a slot's kind is FS_KIND_NONE + its holder's kind) */
    enum { FS_UNIDENTIFIED, FS_IDENTIFIED, FS_HITS, FS_MISSES,
           FS_KIND_NONE, FS_KIND_POD, FS_KIND_NODE, FS_KIND_SERVICE, FS_COUNTS };
    _Static_assert(FS_COUNTS == 8, "EnrichView.counts: the Cython declarations below say 8");
    _Static_assert(2 * FS_VIEW_AGENT_SETS == 512, "EnrichView.agents: the Cython declarations below say 512");

    typedef struct EnrichView {
        EnrichSlot* cache;
        unsigned long long generation;  /* moved by the index on every change readers can see */
        long long counts[FS_COUNTS];  /* flows without an identity on either side, with one;
                                   addresses answered from the cache, from the index; addresses by kind */
        PyObject* tails[2][4];  /* tails[bit][direction + 1] (the sides' layer bits ORed; Index._build_tails), borrowed from the reader's tuple */
        void* reader;
        view_miss_fn miss;
        view_agent_fn agent;
        EnrichAgent agents[2 * FS_VIEW_AGENT_SETS];  /* by fs_view_hash, two ways a set; filled by agent */
    } EnrichView;

    /* Multiplicative hashing of the address (4 or 16 bytes: the only lengths cached) read
       big-endian (its varying last bytes become the low bits, which the multiply spreads
       upwards), high half folded down for the set index: a few instructions, where a byte-wise
       FNV cost four (IPv4) or sixteen (IPv6) multiply rounds.
       (tests/test_enrich_index.py replicates it to find addresses sharing a set.) */
    FS_ALWAYS_INLINE unsigned long long fs_view_hash(const unsigned char* addr, int alen) {
        uint64_t h;
        if (alen == 4) {
            uint32_t a4;
            memcpy(&a4, addr, 4);
            h = (uint64_t)__builtin_bswap32(a4) * 0x9E3779B97F4A7C15ULL;
        } else {
            uint64_t a0, a1;
            memcpy(&a0, addr, 8);
            memcpy(&a1, addr + 8, 8);
            h = (__builtin_bswap64(a0) * 0xC2B2AE3D27D4EB4FULL + __builtin_bswap64(a1)) * 0x9E3779B97F4A7C15ULL;
        }
        return h ^ (h >> 32);
    }

    FS_ALWAYS_INLINE EnrichSlot* fs_view_set(EnrichView* v, unsigned long long h) {
        return v->cache + (h & (FS_VIEW_SETS - 1)) * FS_VIEW_WAYS;
    }

    /* Start loading the set fs_view_resolve() will read for addr (its first two ways, where
       nearly every address is: a miss fills the first way holding nothing current), so that a
       batch's loads overlap instead of stalling one by one (perf showed the first load waiting). */
    FS_ALWAYS_INLINE void fs_view_prefetch_set(EnrichSlot* s) {
        __builtin_prefetch(s);
        __builtin_prefetch(s + 1);
    }

    FS_ALWAYS_INLINE int fs_view_addr_eq(const unsigned char* x, const unsigned char* y, int n) {
        if (n == 4) {
            uint32_t c, d;
            memcpy(&c, x, 4);
            memcpy(&d, y, 4);
            return c == d;
        }
        uint64_t a0, a1, b0, b1;
        memcpy(&a0, x, 8); memcpy(&a1, x + 8, 8);
        memcpy(&b0, y, 8); memcpy(&b1, y + 8, 8);
        return ((a0 ^ b0) | (a1 ^ b1)) == 0;
    }

    FS_ALWAYS_INLINE int fs_view_hit(const EnrichSlot* s, unsigned int gen, const unsigned char* addr, int alen,
                                     long long t) {
        return s->gen == gen && s->alen == alen && s->lo <= t && t < s->hi && fs_view_addr_eq(s->addr, addr, alen);
    }

    /* Start loading a part's text (about 200-350 bytes for a pod): five lines from its start.
       A prefetch never faults, so a pointer that is stale or NULL costs nothing but the
       instruction. */
    FS_ALWAYS_INLINE void fs_view_prefetch_text(const char* p) {
        __builtin_prefetch(p);
        __builtin_prefetch(p + 64);
        __builtin_prefetch(p + 128);
        __builtin_prefetch(p + 192);
        __builtin_prefetch(p + 256);
    }

    /* Start loading the parts a coming flow's lookups will most likely copy: the ones its
       addresses' cache slots hold now (the slots' first lines were prefetched at the batch's
       start, fs_view_prefetch_set). No validity checks: a wrong guess is a wasted prefetch, never a
       read. Why: with a few thousand busy pods and the 1 MiB record batch streaming through L2,
       every copy started with misses. */
    FS_ALWAYS_INLINE void fs_view_prefetch_parts_in(EnrichSlot* s, EnrichSlot* d, const unsigned char* src,
                                                    const unsigned char* dst, int alen) {
        if (!fs_view_addr_eq(s->addr, src, alen)) s++;   /* (ways 0 and 1: see fs_view_prefetch_set) */
        if (!fs_view_addr_eq(d->addr, dst, alen)) d++;
        fs_view_prefetch_text(s->text);
        fs_view_prefetch_text(d->text + d->src_len);
    }

    FS_ALWAYS_INLINE void fs_view_prefetch_parts(EnrichView* v, const unsigned char* src, const unsigned char* dst,
                                                 int alen) {
        fs_view_prefetch_parts_in(fs_view_set(v, fs_view_hash(src, alen)), fs_view_set(v, fs_view_hash(dst, alen)),
                                  src, dst, alen);
    }

    /* The slot describing the holder of addr (4 or 16 bytes) at flow start t (text NULL:
       nobody holds it); NULL on an error. A hit is a hash and a few compares; a miss calls the
       reader. fs_view_resolve_in takes the set (fs_view_set) from a caller that has it already
       (the encoder hashes a batch's addresses once, decoders/encode.pxi enrich_batch; a miss,
       rare, hashes again for the reader). Four-way set associative: a few thousand busy
       addresses in a direct-mapped table share slots often enough (17% of 3,000 in 16,384
       slots) to keep evicting each other; in 8,192 sets of two ways the sets holding three or
       more still made 1.6% of the lookups miss (each a trip through the index, a microsecond or
       more: 100 ns a flow end to end, thirty-fifth session); in 4,096 sets of four, 0.2%
       measured (0.1% by Poisson). */
    FS_ALWAYS_INLINE EnrichSlot* fs_view_resolve_in(EnrichView* v, EnrichSlot* s, const unsigned char* addr, int alen,
                                                    long long t, EnrichSlot* avoid) {
        unsigned int gen = (unsigned int)v->generation;
        if (!fs_view_hit(s, gen, addr, alen, t)) {
            if (fs_view_hit(s + 1, gen, addr, alen, t)) s += 1;
            else if (fs_view_hit(s + 2, gen, addr, alen, t)) s += 2;
            else if (fs_view_hit(s + 3, gen, addr, alen, t)) s += 3;
            else return v->miss(v->reader, s, fs_view_hash(addr, alen), addr, alen, t, avoid);
        }
        v->counts[FS_HITS]++;
        return s;
    }

    FS_ALWAYS_INLINE EnrichSlot* fs_view_resolve(EnrichView* v, const unsigned char* addr, int alen, long long t,
                                                 EnrichSlot* avoid) {
        return fs_view_resolve_in(v, fs_view_set(v, fs_view_hash(addr, alen)), addr, alen, t, avoid);
    }

    /* The interned node name of an exporter address (4 or 16 bytes), borrowed; NULL when it
       names no node, or on an error (then *failed is set). The answer is read here when the
       reader has it for the index's current generation; otherwise the reader looks it up and
       keeps it (view.agent). Inline: asked once a datagram, and Open vSwitch sends one record a
       datagram, so the call into the reader cost ~60 instructions of every flow. */
    FS_ALWAYS_INLINE EnrichAgent* fs_view_agent_set(EnrichView* v, const unsigned char* agent, int aglen) {
        return v->agents + 2 * (fs_view_hash(agent, aglen) & (FS_VIEW_AGENT_SETS - 1));
    }

    FS_ALWAYS_INLINE PyObject* fs_view_agent(EnrichView* v, const unsigned char* agent, int aglen, int* failed) {
        if (aglen == 4 || aglen == 16) {
            EnrichAgent* e = fs_view_agent_set(v, agent, aglen);
            if (e[0].alen == aglen && e[0].gen == v->generation && fs_view_addr_eq(e[0].addr, agent, aglen)) {
                *failed = 0;
                return e[0].node;
            }
            if (e[1].alen == aglen && e[1].gen == v->generation && fs_view_addr_eq(e[1].addr, agent, aglen)) {
                *failed = 0;
                return e[1].node;
            }
        }
        return v->agent(v->reader, agent, aglen, failed);
    }

    /* enrich.index._agent_at: an exporter address a Node stopped holding (a Node replaced by one
       given its InternalIP) is answered by the reader as a tuple (the address's Node chain, the
       node it names now or None): the node it named at flow start t is the chain's holder then
       (enrich.index._holder_at, as the flow's sides are resolved), else the one it names now.
       Borrowed; NULL when none. Only such addresses pay for it (a node name is a str); out of
       line and cold, so that the output rule it is called from stays as small as it was. */
    #if defined(__GNUC__) || defined(__clang__)
    __attribute__((noinline, cold))
    #endif
    static PyObject* fs_view_agent_at(PyObject* a, long long t) {
        PyObject* e = PyTuple_GET_ITEM(a, 0);
        PyObject* n;
        if (t <= 0) {   /* the live holder, else the newest */
            PyObject* cur = e;
            while (cur != Py_None) {
                if (PyLong_AsLongLong(PyTuple_GET_ITEM(cur, 5)) == (1LL << 62)) { e = cur; break; }
                cur = PyTuple_GET_ITEM(cur, 6);
            }
        } else {
            while (1) {
                PyObject* prev = PyTuple_GET_ITEM(e, 6);
                if (t >= PyLong_AsLongLong(PyTuple_GET_ITEM(e, 4)) || prev == Py_None) {
                    if (t < PyLong_AsLongLong(PyTuple_GET_ITEM(e, 5))) break;
                    if (prev == Py_None) { e = NULL; break; }
                }
                e = prev;
            }
        }
        n = e != NULL ? PyTuple_GET_ITEM(e, 2) : PyTuple_GET_ITEM(a, 1);
        return n == Py_None ? NULL : n;
    }

    /* The output rule of enrich.index.Index.enrich over resolved slots (s or d NULL: no
       address): the source part, the destination part (each NULL, length 0, when unknown) and
       the tail. Node names are interned by the index: the same node is the same object (pointer
       compares). agent_node: the exporter's node (view.agent), NULL when unknown; a tuple for an
       address a Node stopped holding, resolved at flow start t (fs_view_agent_at).
       A slot nobody holds reads as nobody's without a test of its own: text and node NULL,
       lengths and layer bit 0, kind FS_KIND_NONE (enrich._fast Reader.fill keeps that so); an
       absent side reads as such a slot, uncounted. (A branch a side and a part, ~10
       instructions a flow in the encoder, where both sides are always there.) */
    static inline void fs_view_combine(EnrichView* v, const EnrichSlot* s, const EnrichSlot* d,
                                       PyObject* agent_node, long long t, int direction, EnrichParts* out) {
        static const EnrichSlot absent;   /* (zeroes: nobody) */
        PyObject* sn;
        PyObject* dn;
        int layer, fd;
        if (s == NULL) s = &absent;
        else v->counts[s->kind]++;
        if (d == NULL) d = &absent;
        else v->counts[d->kind]++;
        if (direction < -1 || direction > 2) direction = -1;
        v->counts[(s->text != NULL || d->text != NULL) ? FS_IDENTIFIED : FS_UNIDENTIFIED]++;
        out->a = s->text;
        out->la = s->src_len;
        /* (integer arithmetic: nobody's text is NULL, and NULL + 0 is not C) */
        out->b = (const char*)((uintptr_t)d->text + d->src_len);
        out->lb = d->dst_len;
        sn = s->node;
        dn = d->node;
        layer = (s->infra | d->infra) != 0;   /* no side's layer bit: app, or infra under netobserv */
        /* NetObserv's reinterpretDirection: same node -> inner; otherwise egress when the
           exporter is the source's node, ingress when it is the destination's. */
        if (FS_UNLIKELY(agent_node != NULL && PyTuple_CheckExact(agent_node))) agent_node = fs_view_agent_at(agent_node, t);
        if (sn != NULL && sn == dn) fd = 2;
        else if (agent_node == NULL) fd = direction;
        else if (agent_node == sn) fd = 1;
        else if (agent_node == dn) fd = 0;
        else fd = direction;
        out->ti = 4 * layer + fd + 1;
        out->tail = v->tails[layer][fd + 1];
    }

    /* enrich.index.Index.enrich for two addresses of alen (4 or 16) bytes whose cache sets
       (fs_view_set) are ss and ds, as two texts and a borrowed byte string to concatenate (out).
       0, or -1 on an error (the reader's enrich() raises it). A miss on the destination never
       refills the source's slot (its answer is read from that slot). */
    FS_ALWAYS_INLINE int fs_view_parts_in(EnrichView* v, EnrichSlot* ss, EnrichSlot* ds, const unsigned char* src,
                                          const unsigned char* dst, int alen, PyObject* agent_node, long long t,
                                          int direction, EnrichParts* out) {
        EnrichSlot* s = fs_view_resolve_in(v, ss, src, alen, t, NULL);
        EnrichSlot* d;
        if (s == NULL) return -1;
        d = fs_view_resolve_in(v, ds, dst, alen, t, s);
        if (d == NULL) return -1;
        fs_view_combine(v, s, d, agent_node, t, direction, out);
        return 0;
    }
    """
    const char* VIEW_CAPSULE "FS_VIEW_CAPSULE"
    enum:
        VIEW_SLOTS "FS_VIEW_SLOTS"
        VIEW_WAYS "FS_VIEW_WAYS"
        VIEW_TEXT "FS_VIEW_TEXT"
        VIEW_BLOCKS "FS_VIEW_BLOCKS"
        VIEW_AGENT_SETS "FS_VIEW_AGENT_SETS"
        VIEW_UNIDENTIFIED "FS_UNIDENTIFIED"
        VIEW_IDENTIFIED "FS_IDENTIFIED"
        VIEW_HITS "FS_HITS"
        VIEW_MISSES "FS_MISSES"
        VIEW_KIND_NONE "FS_KIND_NONE"
        VIEW_KIND_POD "FS_KIND_POD"
        VIEW_KIND_NODE "FS_KIND_NODE"
        VIEW_KIND_SERVICE "FS_KIND_SERVICE"
        VIEW_COUNTS "FS_COUNTS"

    ctypedef struct EnrichSlot:
        unsigned char addr[16]
        long long lo
        long long hi
        const char* text
        PyObject* node
        unsigned int gen
        unsigned int src_len
        unsigned int dst_len
        signed char alen
        unsigned char infra
        unsigned char kind

    ctypedef struct EnrichParts:
        const char* a
        const char* b
        Py_ssize_t la
        Py_ssize_t lb
        PyObject* tail
        int ti

    ctypedef EnrichSlot* (*view_miss_fn)(void* reader, EnrichSlot* base, unsigned long long h,
                                         const unsigned char* addr, int alen, long long t,
                                         EnrichSlot* avoid) noexcept
    ctypedef PyObject* (*view_agent_fn)(void* reader, const unsigned char* agent, int aglen,
                                        int* failed) noexcept

    ctypedef struct EnrichAgent:
        unsigned char addr[16]
        int alen
        unsigned long long gen
        PyObject* node

    ctypedef struct EnrichView:
        EnrichSlot* cache
        unsigned long long generation
        long long counts[8]
        PyObject* tails[2][4]
        void* reader
        view_miss_fn miss
        view_agent_fn agent
        EnrichAgent agents[512]

    unsigned long long view_hash "fs_view_hash"(const unsigned char* addr, int alen) noexcept nogil
    bint view_addr_eq "fs_view_addr_eq"(const unsigned char* x, const unsigned char* y, int n) noexcept nogil
    EnrichSlot* view_set "fs_view_set"(EnrichView* v, unsigned long long h) noexcept nogil
    void view_prefetch_set "fs_view_prefetch_set"(EnrichSlot* s) noexcept nogil
    void view_prefetch_parts "fs_view_prefetch_parts"(EnrichView* v, const unsigned char* src,
                                                       const unsigned char* dst, int alen) noexcept nogil
    void view_prefetch_parts_in "fs_view_prefetch_parts_in"(EnrichSlot* s, EnrichSlot* d, const unsigned char* src,
                                                             const unsigned char* dst, int alen) noexcept nogil
    EnrichAgent* view_agent_set "fs_view_agent_set"(EnrichView* v, const unsigned char* agent, int aglen) noexcept nogil
    PyObject* view_agent "fs_view_agent"(EnrichView* v, const unsigned char* agent, int aglen, int* failed) noexcept
    EnrichSlot* view_resolve "fs_view_resolve"(EnrichView* v, const unsigned char* addr, int alen, long long t,
                                               EnrichSlot* avoid) noexcept
    EnrichSlot* view_resolve_in "fs_view_resolve_in"(EnrichView* v, EnrichSlot* s, const unsigned char* addr, int alen,
                                                     long long t, EnrichSlot* avoid) noexcept
    void view_combine "fs_view_combine"(EnrichView* v, const EnrichSlot* s, const EnrichSlot* d,
                                        PyObject* agent_node, long long t, int direction, EnrichParts* out) noexcept
    int view_parts_in "fs_view_parts_in"(EnrichView* v, EnrichSlot* ss, EnrichSlot* ds, const unsigned char* src,
                                         const unsigned char* dst, int alen, PyObject* agent_node, long long t,
                                         int direction, EnrichParts* out) noexcept
