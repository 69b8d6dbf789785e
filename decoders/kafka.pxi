# Kafka record batches (message format v2) written straight from decoded flows.
#
# aiokafka's per-message path costs a Python call and a bytes object per flow; its compiled
# builder still needs one Python call per record. Here a datagram's flows are JSON-encoded and
# appended as Kafka records into one growing C buffer, so the hot path crosses into C once per
# datagram and allocates nothing per flow. A finished batch is handed to aiokafka whole
# (collector.sinks wraps it in a duck-typed BatchBuilder for `send_batch`).
#
# Layout (KIP-98, the v2 RecordBatch): baseOffset int64, batchLength int32,
# partitionLeaderEpoch int32, magic int8 = 2, crc uint32 (CRC-32C of attributes..end),
# attributes int16, lastOffsetDelta int32, baseTimestamp int64, maxTimestamp int64,
# producerId int64, producerEpoch int16, baseSequence int32, records count int32, records.
# Record: length varint, attributes int8, timestampDelta varlong, offsetDelta varint,
# key length varint (-1 = null) + key, value length varint + value, header count varint.
# Varints are zigzag-encoded (protobuf style).

cimport cython

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #include <string.h>
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    #endif
    /* CRC-32C (Castagnoli), the Kafka v2 batch checksum: SSE4.2 instruction when the CPU has
       it (chosen once at run time), else a byte-wise table. */
    static uint32_t fs_crc32c_table[256];
    static int fs_crc32c_table_ready = 0;
    static void fs_crc32c_table_init(void) {
        if (fs_crc32c_table_ready) return;
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t v = i;
            for (int k = 0; k < 8; k++) v = (v & 1) ? (v >> 1) ^ 0x82F63B78u : v >> 1;
            fs_crc32c_table[i] = v;
        }
        fs_crc32c_table_ready = 1;
    }
    static uint32_t fs_crc_sw_raw(uint32_t c, const unsigned char* p, size_t n) {
        fs_crc32c_table_init();
        while (n--) c = fs_crc32c_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
        return c;
    }
    static uint32_t fs_crc32c_sw(const unsigned char* p, size_t n) {
        return fs_crc_sw_raw(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
    }
    /* Joining checksums of pieces (RecordBatchWriter checksums its records as they are
       appended, and the header, known only at the seal, goes in front of them): the raw
       register after data D from register c is zeros(c, |D|) ^ raw(0, D), and zeros(c, n), the
       register after n zero bytes, is c(x) x^(8n) mod P. Registers are reflected: bit 31 is
       the term x^0, bit 0 the term x^31. */
    static uint32_t fs_crc_mulmod(uint32_t a, uint32_t b) {
        uint32_t r = 0;
        for (int i = 0; i < 32; i++) {          /* a's term x^i adds b x^i */
            if (a & (0x80000000u >> i)) r ^= b;
            b = (b & 1) ? (b >> 1) ^ 0x82F63B78u : b >> 1;   /* b x^(i+1) mod P */
        }
        return r;
    }
    static uint32_t fs_crc_pow8[64];   /* x^(8 * 2^k) mod P */
    static int fs_crc_pow8_ready = 0;
    static uint32_t fs_crc_zeros(uint32_t c, unsigned long long n) {
        if (!fs_crc_pow8_ready) {
            fs_crc_pow8[0] = 0x80000000u >> 8;  /* x^8 */
            for (int k = 1; k < 64; k++) fs_crc_pow8[k] = fs_crc_mulmod(fs_crc_pow8[k - 1], fs_crc_pow8[k - 1]);
            fs_crc_pow8_ready = 1;
        }
        for (int k = 0; n; k++, n >>= 1)
            if (n & 1) c = fs_crc_mulmod(fs_crc_pow8[k], c);
        return c;
    }
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    /* The crc32 instruction has a latency of 3 cycles and a throughput of 1: one dependent
       chain runs at a third of its speed. Long inputs are cut into three equal blocks whose
       CRCs run as three independent chains, then joined: the raw CRC register is linear, so
       crc(A|B) = zeros(crc(A), |B|) ^ crc0(B), where zeros(c, n) is the register after n zero
       bytes. zeros() for the two block sizes used is a 4x256 table built once from the 32
       single-bit registers (linearity again). */
    #define FS_CRC_LONG 4096
    #define FS_CRC_SHORT 256
    static uint32_t fs_crc_long[4][256], fs_crc_short[4][256];
    static uint32_t fs_crc_zeros_sw(uint32_t c, size_t n) {
        while (n--) c = fs_crc32c_table[c & 0xFF] ^ (c >> 8);
        return c;
    }
    static void fs_crc_zeros_table(uint32_t t[4][256], size_t n) {
        uint32_t bit[32];
        for (int i = 0; i < 32; i++) bit[i] = fs_crc_zeros_sw(1u << i, n);
        for (int k = 0; k < 4; k++)
            for (int b = 0; b < 256; b++) {
                uint32_t v = 0;
                for (int j = 0; j < 8; j++) if ((b >> j) & 1) v ^= bit[8 * k + j];
                t[k][b] = v;
            }
    }
    static inline uint32_t fs_crc_shift(uint32_t t[4][256], uint32_t c) {
        return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
    }
    __attribute__((target("sse4.2")))
    static inline uint32_t fs_crc_3way(uint32_t c, const unsigned char** pp, size_t* np, size_t blk,
                                       uint32_t t[4][256]) {
        const unsigned char* p = *pp;
        size_t n = *np;
        while (n >= 3 * blk) {
            unsigned long long c0 = c, c1 = 0, c2 = 0;
            for (size_t i = 0; i < blk; i += 8) {
                unsigned long long v0, v1, v2;
                memcpy(&v0, p + i, 8); memcpy(&v1, p + blk + i, 8); memcpy(&v2, p + 2 * blk + i, 8);
                c0 = __builtin_ia32_crc32di(c0, v0);
                c1 = __builtin_ia32_crc32di(c1, v1);
                c2 = __builtin_ia32_crc32di(c2, v2);
            }
            c = fs_crc_shift(t, (uint32_t)c0) ^ (uint32_t)c1;
            c = fs_crc_shift(t, c) ^ (uint32_t)c2;
            p += 3 * blk;
            n -= 3 * blk;
        }
        *pp = p;
        *np = n;
        return c;
    }
    /* The raw register after n bytes from register c32 (no inversions). */
    __attribute__((target("sse4.2")))
    static uint32_t fs_crc_hw_raw(uint32_t c32, const unsigned char* p, size_t n) {
        c32 = fs_crc_3way(c32, &p, &n, FS_CRC_LONG, fs_crc_long);
        c32 = fs_crc_3way(c32, &p, &n, FS_CRC_SHORT, fs_crc_short);
        unsigned long long c = c32;
        while (n >= 8) { unsigned long long v; memcpy(&v, p, 8); c = __builtin_ia32_crc32di(c, v); p += 8; n -= 8; }
        c32 = (uint32_t)c;
        while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
        return c32;
    }
    __attribute__((target("sse4.2")))
    static uint32_t fs_crc32c_hw(const unsigned char* p, size_t n) {
        return fs_crc_hw_raw(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
    }
    /* Folding with carry-less multiplication (AVX-512 VPCLMULQDQ), for a whole 1 MiB batch about
       three times the speed of the three crc32 chains above (which run at ~8 bytes a cycle).
       The message is a polynomial over GF(2), the first bit the highest term; its CRC is
       M(x) * x^32 mod P (with the register's initial value xored into the first 32 bits). Four
       512-bit accumulators hold 256 consecutive bytes as sixteen 128-bit blocks A = Ahi x^64 +
       Alo (Ahi: the block's first 8 bytes). Moving a block D = 2048 bits further on (onto the
       block 256 bytes later, xored in) keeps the remainder: A x^D = Ahi x^(D+64) + Alo x^D, and
       each product of a 64-bit half by x^e mod P (32 bits) fits in 128 bits. The data is bit-
       reflected (a byte's bit 0 first), so a 128-bit lane's bit k is the term x^(127-k), and
       VPCLMULQDQ of two reflected 64-bit values gives their product with bit k the term
       x^(126-k): one factor x short, so the constants are x^(D+63) and x^(D-1) mod P. After the
       last whole 256 bytes, the accumulators stand for those 256 bytes: the crc32 instruction
       finishes over them (from register 0) and the tail. */
    #define FS_CRC_FOLD_MIN 1024
    static unsigned long long fs_crc_fold_k[2];
    static unsigned long long fs_crc_xpow(unsigned e) {
        /* x^e mod P (P = 0x1EDC6F41 with x^32), the term x^d at bit 63-d */
        uint32_t r = 1;
        for (unsigned i = 0; i < e; i++) r = (r & 0x80000000u) ? (r << 1) ^ 0x1EDC6F41u : r << 1;
        unsigned long long out = 0;
        for (int d = 0; d < 32; d++) if ((r >> d) & 1) out |= 1ull << (63 - d);
        return out;
    }
    __attribute__((target("avx512f,vpclmulqdq,sse4.2")))
    static uint32_t fs_crc_fold_raw(uint32_t c, const unsigned char* p, size_t n) {
        /* the raw register after n bytes (at least 256) from register c: c xored into the
           first four bytes, then the fold from register 0 */
        const __m512i k = _mm512_broadcast_i32x4(_mm_set_epi64x((long long)fs_crc_fold_k[1],
                                                                (long long)fs_crc_fold_k[0]));
        __m512i a0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_maskz_set1_epi32(1, (int)c));
        __m512i a1 = _mm512_loadu_si512(p + 64), a2 = _mm512_loadu_si512(p + 128);
        __m512i a3 = _mm512_loadu_si512(p + 192);
        p += 256;
        n -= 256;
        #define FS_FOLD(a, at) a = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(a, k, 0x00), \
                _mm512_clmulepi64_epi128(a, k, 0x11), _mm512_loadu_si512(at), 0x96)
        while (n >= 256) {
            FS_FOLD(a0, p); FS_FOLD(a1, p + 64); FS_FOLD(a2, p + 128); FS_FOLD(a3, p + 192);
            p += 256;
            n -= 256;
        }
        #undef FS_FOLD
        unsigned char last[256];
        _mm512_storeu_si512(last, a0); _mm512_storeu_si512(last + 64, a1);
        _mm512_storeu_si512(last + 128, a2); _mm512_storeu_si512(last + 192, a3);
        /* GCC inserts no vzeroupper in a function of its own target("avx512f") here: without
           it the zmm registers' upper halves stay dirty after the batch's seal, and each legacy
           SSE instruction after it (the encoder's doubles, the copies) pays for merging them */
        _mm256_zeroupper();
        return fs_crc_hw_raw(fs_crc_hw_raw(0, last, 256), p, n);
    }
    static uint32_t fs_crc32c_fold(const unsigned char* p, size_t n) {
        return fs_crc_fold_raw(0xFFFFFFFFu, p, n) ^ 0xFFFFFFFFu;
    }
    /* What the fold leaves behind in the vector registers' upper halves: XINUSE (XGETBV with
       ECX=1) right after a fold of n bytes, masked to the states vzeroupper clears (bit 2, the
       upper 128 bits of ymm0-15; bit 6, the upper 256 of zmm0-15); -1 when the CPU cannot say.
       (Left dirty, every later SSE instruction of the hot path merges into them: the whole
       pipeline ran 28% slower, thirty-fifth session; tests/test_decoders.py.) */
    #include <cpuid.h>
    static int fs_crc_fold_upper_state(const unsigned char* p, size_t n) {
        unsigned int a, b, c, d, lo, hi;
        if (n < FS_CRC_FOLD_MIN || !__get_cpuid_count(0xD, 1, &a, &b, &c, &d) || !(a & 4)) return -1;
        volatile uint32_t sink = fs_crc32c_fold(p, n);
        (void)sink;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(1));
        (void)hi;
        return (int)(lo & 0x44);
    }
    /* 0 table, 1 crc32 instruction, 2 and folding for long inputs; -1 not chosen yet */
    static int fs_crc_level = -1;
    static int fs_crc_best(void) {
        if (fs_crc_level < 0) {
            __builtin_cpu_init();
            int level = __builtin_cpu_supports("sse4.2") ? 1 : 0;
            if (level) {
                fs_crc32c_table_init();  /* the zeros tables start from the byte table */
                fs_crc_zeros_table(fs_crc_long, FS_CRC_LONG);
                fs_crc_zeros_table(fs_crc_short, FS_CRC_SHORT);
                if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq")) {
                    fs_crc_fold_k[0] = fs_crc_xpow(2048 + 63);
                    fs_crc_fold_k[1] = fs_crc_xpow(2048 - 1);
                    level = 2;
                }
            }
            fs_crc_level = level;  /* (first called with the GIL held) */
        }
        return fs_crc_level;
    }
    static uint32_t fs_crc32c_at(const unsigned char* p, size_t n, int level) {
        if (level >= 2 && n >= FS_CRC_FOLD_MIN) return fs_crc32c_fold(p, n);
        return level >= 1 ? fs_crc32c_hw(p, n) : fs_crc32c_sw(p, n);
    }
    static uint32_t fs_crc32c(const unsigned char* p, size_t n) {
        return fs_crc32c_at(p, n, fs_crc_best());
    }
    /* The raw register after n bytes from register c, by the best code. */
    static uint32_t fs_crc_raw(uint32_t c, const unsigned char* p, size_t n) {
        int level = fs_crc_best();
        if (level >= 2 && n >= FS_CRC_FOLD_MIN) return fs_crc_fold_raw(c, p, n);
        return level >= 1 ? fs_crc_hw_raw(c, p, n) : fs_crc_sw_raw(c, p, n);
    }
    #else
    static int fs_crc_best(void) { return 0; }
    static int fs_crc_fold_upper_state(const unsigned char* p, size_t n) { return -1; }
    static uint32_t fs_crc32c_at(const unsigned char* p, size_t n, int level) { return fs_crc32c_sw(p, n); }
    static uint32_t fs_crc32c(const unsigned char* p, size_t n) { return fs_crc32c_sw(p, n); }
    static uint32_t fs_crc_raw(uint32_t c, const unsigned char* p, size_t n) { return fs_crc_sw_raw(c, p, n); }
    #endif
    """
    uint32_t fs_crc32c(const unsigned char* p, size_t n) noexcept
    uint32_t fs_crc32c_at(const unsigned char* p, size_t n, int level) noexcept
    int fs_crc_best() noexcept
    int fs_crc_fold_upper_state(const unsigned char* p, size_t n) noexcept
    uint32_t fs_crc_raw(uint32_t c, const unsigned char* p, size_t n) noexcept
    uint32_t fs_crc_zeros(uint32_t c, unsigned long long n) noexcept


def crc32c(data, int level=-1) -> int:
    """CRC-32C of a bytes-like object (what Kafka v2 record batches carry). level (for tests):
    0 the byte table, 1 the crc32 instruction, 2 also folding with VPCLMULQDQ for long inputs;
    -1 the best this CPU has (crc32c_level())."""
    cdef const unsigned char[:] v = data
    if level > fs_crc_best():
        raise ValueError(f"this CPU has CRC-32C level {fs_crc_best()} at most")
    if v.shape[0] == 0:
        return 0
    return fs_crc32c_at(&v[0], v.shape[0], fs_crc_best() if level < 0 else level)


def crc32c_fold_upper_state(data) -> int:
    """For tests: the vector state the VPCLMULQDQ fold leaves dirty after checksumming data
    (1,024 bytes or more): XINUSE bits 2 and 6, which vzeroupper clears; 0 when it cleaned up;
    -1 when this CPU has no fold or cannot tell (XGETBV with ECX=1)."""
    cdef const unsigned char[:] v = data
    if fs_crc_best() < 2:
        return -1
    return fs_crc_fold_upper_state(&v[0], v.shape[0])


def crc32c_level() -> int:
    """The CRC-32C code this CPU runs (see crc32c)."""
    return fs_crc_best()


from cpython.buffer cimport PyBUF_READ, PyBuffer_FillInfo
from cpython.memoryview cimport PyMemoryView_FromMemory


DEF BATCH_HEADER = 61
# The records are checksummed as they are appended, each time this many bytes wait, while they
# are still in the cache (at the seal a megabyte batch had left it: the CRC read it back from
# memory at a third of its speed, perf of the collector into Kafka, thirty-fifth session).
DEF CRC_STEP = 16384
DEF CRC_OFFSET = 17          # crc covers bytes [21, end)
DEF ATTR_OFFSET = 21
# Headroom in front of the batch for a Produce request's framing (RecordBatchWriter.request):
# the request goes to the socket from this one buffer, without a copy.
DEF PREFIX = 512


cdef inline Py_ssize_t zz_len(int64_t v) noexcept:
    cdef uint64_t z = <uint64_t>((v << 1) ^ (v >> 63))
    cdef Py_ssize_t n = 1
    while z >= 0x80:
        z >>= 7
        n += 1
    return n


cdef inline void zz_put(Buf* b, int64_t v) noexcept:
    """Write a zigzag varint; the caller reserved the room."""
    cdef uint64_t z = <uint64_t>((v << 1) ^ (v >> 63))
    while z >= 0x80:
        b.p[b.n] = <char>((z & 0x7F) | 0x80)
        b.n += 1
        z >>= 7
    b.p[b.n] = <char>z
    b.n += 1


cdef inline void put_be32(char* p, uint32_t v) noexcept:
    p[0] = <char>(v >> 24)
    p[1] = <char>(v >> 16)
    p[2] = <char>(v >> 8)
    p[3] = <char>v


cdef inline void put_be64(char* p, uint64_t v) noexcept:
    put_be32(p, <uint32_t>(v >> 32))
    put_be32(p + 4, <uint32_t>v)


# A few finished batches' buffers are kept for the next writers: a fresh 1 MiB allocation per
# batch means fresh pages (page faults and kernel zeroing) for every megabyte sent.
DEF POOL_SIZE = 8
DEF POOL_MIN_CAP = 65536     # smaller buffers (trimmed batches) are not worth keeping
cdef char* _pool[POOL_SIZE]
cdef Py_ssize_t _pool_cap[POOL_SIZE]
cdef int _pool_n = 0
cdef unsigned long long _pool_reused = 0, _pool_allocated = 0


def buffer_pool_stats():
    """The writers' buffer pool: the capacities it keeps now, how many writers took a kept
    buffer and how many needed a fresh allocation (fresh pages: faults and kernel zeroing)."""
    return {"kept": sorted(_pool_cap[i] for i in range(_pool_n)), "reused": _pool_reused,
            "allocated": _pool_allocated, "size": POOL_SIZE}


cdef int pool_take(Buf* b, Py_ssize_t need) except -1:
    """b's buffer for a new writer: the smallest kept one of at least `need` bytes, else an allocation of
    exactly `need` (not buf_grow's doubling: a 1 MiB batch in a 2 MiB buffer is under half of
    it, so trim() copied every full batch that queued behind another into fresh pages, and the
    copies, pooled when their writers went, took the pool's places from the full-size ones)."""
    global _pool_n, _pool_reused, _pool_allocated
    cdef int i, best = -1
    cdef char* p
    for i in range(_pool_n):   # the smallest that fits (a small writer leaves the large ones)
        if _pool_cap[i] >= need and (best < 0 or _pool_cap[i] < _pool_cap[best]):
            best = i
    if best >= 0:
        b.p = _pool[best]
        b.cap = _pool_cap[best]
        b.n = 0
        _pool_n -= 1
        _pool[best] = _pool[_pool_n]
        _pool_cap[best] = _pool_cap[_pool_n]
        _pool_reused += 1
        return 0
    p = <char*>malloc(need)
    if p == NULL:
        raise MemoryError()
    _pool_allocated += 1
    b.p = p
    b.cap = need
    b.n = 0
    return 0


cdef void pool_give(Buf* b) noexcept:
    """Keep b's buffer for the next writer (b is left empty). The pool keeps the largest: a full
    pool gives up its smallest for a larger one (a trimmed batch's buffer, its own size, never
    holds a place a full-size one could take)."""
    global _pool_n
    cdef int i, slot = -1             # where b's buffer goes; -1: freed
    if b.p == NULL:
        return
    if b.cap < POOL_MIN_CAP:
        pass                          # a trimmed (small) buffer is just freed
    elif _pool_n < POOL_SIZE:
        slot = _pool_n
        _pool_n += 1
    else:
        slot = 0                      # the smallest kept, replaced if b's is larger
        for i in range(1, POOL_SIZE):
            if _pool_cap[i] < _pool_cap[slot]:
                slot = i
        if _pool_cap[slot] < b.cap:
            free(_pool[slot])
        else:
            slot = -1
    if slot < 0:
        free(b.p)
    else:
        _pool[slot] = b.p
        _pool_cap[slot] = b.cap
    b.p = NULL
    b.n = b.cap = 0


cdef void frame_request(char* p, Py_ssize_t plen, Py_ssize_t blen, int32_t correlation_id, bytes client_id,
                        int acks, int32_t timeout_ms, bytes topic, int32_t partition, int version) noexcept:
    # Produce v3-v8 framing (size, request header v1, body up to the records' size) in the plen
    # bytes at p, for a batch of blen bytes that follows it: the request body is the same from
    # version 3 to 8 (ProduceRequest.json), only the number in the header differs.
    cdef Py_ssize_t clen = len(client_id)
    cdef Py_ssize_t tlen = len(topic)
    put_be32(p, <uint32_t>(plen - 4 + blen))         # size
    p[4] = 0
    p[5] = 0                                         # api_key 0: Produce
    p[6] = 0
    p[7] = <char>version                             # api_version (3, or 7 for zstd)
    put_be32(p + 8, <uint32_t>correlation_id)
    p[12] = <char>(clen >> 8)
    p[13] = <char>clen
    memcpy(p + 14, PyBytes_AS_STRING(client_id), clen)
    p += 14 + clen
    p[0] = <char>0xFF
    p[1] = <char>0xFF                                # transactional_id: null
    p[2] = <char>((acks >> 8) & 0xFF)
    p[3] = <char>(acks & 0xFF)                       # acks (int16, -1 = all)
    put_be32(p + 4, <uint32_t>timeout_ms)
    put_be32(p + 8, 1)                               # one topic
    p[12] = <char>(tlen >> 8)
    p[13] = <char>tlen
    memcpy(p + 14, PyBytes_AS_STRING(topic), tlen)
    p += 14 + tlen
    put_be32(p, 1)                                   # one partition
    put_be32(p + 4, <uint32_t>partition)
    put_be32(p + 8, <uint32_t>blen)                  # records: the batch


cdef void buf_fit(Buf* b) noexcept:
    """A buffer using under half of its room moves to an allocation of its own size, and the big
    one goes back to the pool (the writers' trim(), before they wait in a queue)."""
    cdef char* small
    cdef Py_ssize_t need = b.n
    if b.p == NULL or need * 2 >= b.cap:
        return
    small = <char*>malloc(need if need else 1)
    if small == NULL:
        return
    memcpy(small, b.p, need)
    pool_give(b)
    b.p = small
    b.n = need
    b.cap = need if need else 1


@cython.final      # (put_flow called directly, not through the class's method table)
cdef class RecordBatchWriter:
    """Accumulates flows as the records of one Kafka v2 record batch, up to max_bytes."""

    cdef Buf buf
    cdef readonly Py_ssize_t records
    cdef readonly Py_ssize_t max_bytes
    cdef readonly int64_t base_timestamp
    cdef readonly bytes key
    cdef bint sealed             # header and CRC written in place (request()): no more appends
    cdef Py_ssize_t req_start    # where the last request() framing starts
    cdef int exports             # live buffer exports (memoryviews of the request)
    cdef readonly int codec      # compression of the records section (compress()): 0 none
    cdef readonly bint packed    # compress() ran (whether or not it helped): no more appends
    cdef readonly bint busy      # with a Packer (its thread compresses the records): hands off
    cdef int64_t max_delta       # largest timestampDelta (maxTimestamp = base_timestamp + this)
    # KeyedBatches.append_c: what this batch held before the call that first touched it (mark),
    # so that an encoder failure takes back that call's records in every partition
    cdef unsigned long mark
    cdef Py_ssize_t mark_n, mark_records
    cdef int64_t mark_delta
    # The records' checksum so far: the raw CRC-32C register from 0 over the records section
    # up to crc_upto (an offset in buf). Taken back (crc_forget) when records before it are.
    cdef Py_ssize_t crc_upto
    cdef uint32_t crc_raw

    def __cinit__(self):
        self.buf.p = NULL
        self.buf.n = 0
        self.buf.cap = 0
        self.crc_forget()   # (split_batch makes writers without __init__)

    def __dealloc__(self):
        pool_give(&self.buf)

    def __init__(self, Py_ssize_t max_bytes=1048576, bytes key=None):
        """max_bytes bounds the batch (keep it under the broker's message.max.bytes); key, when
        given, is set on every record (partitioning by exporter)."""
        if max_bytes < 1024:
            raise ValueError("max_bytes: at least 1024")
        self.max_bytes = max_bytes
        self.key = key
        self.records = 0
        # The whole batch at once: no reallocation (and copy) while it fills.
        if self.buf.p == NULL:
            pool_take(&self.buf, max_bytes + 4096 + PREFIX)
        else:
            buf_reserve(&self.buf, max_bytes + 4096 + PREFIX)
        memset(self.buf.p, 0, PREFIX + BATCH_HEADER)
        self.buf.n = PREFIX + BATCH_HEADER
        self.req_start = PREFIX
        self.crc_forget()
        self.base_timestamp = <int64_t>(time.time() * 1000)

    @property
    def size(self):
        """Bytes of the batch so far."""
        return self.buf.n - PREFIX

    def append(self, FlowBatch bt, object enricher=None, Py_ssize_t start=0):
        """Append bt's flows from index `start`; stop before the batch would exceed max_bytes.

        Returns the index of the first flow not appended (len(bt) when all fit). A single flow
        larger than an empty batch is still appended, so progress is always made.
        """
        return self.append_c(bt, enricher, start)

    cdef Py_ssize_t append_c(self, FlowBatch bt, object enricher, Py_ssize_t start) except -1:
        """append(), called from C (the Receiver)."""
        cdef Py_ssize_t i
        cdef bytes head
        cdef const char* key = NULL
        cdef Py_ssize_t keylen = -1
        self.check_open()
        if start >= bt.n:
            return bt.n
        if self.key is not None:
            key = PyBytes_AS_STRING(self.key)
            keylen = len(self.key)
        cdef Py_ssize_t at = self.buf.n, had = self.records
        cdef int64_t had_delta = self.max_delta
        head = batch_head(bt)
        enrich_batch(bt, start, enricher)
        for i in range(start, bt.n):
            try:
                if self.put_flow(bt, &bt.flows[i], enricher, PyBytes_AS_STRING(head), len(head), key, keylen):
                    return i
            except BaseException:
                # (an enricher bug, memory): the call's records are taken back, a partial one
                # too, so that the batch stays well formed and the caller counts them dropped
                self.take_back(at, had, had_delta)
                raise
        return bt.n

    cdef inline void take_back(self, Py_ssize_t n, Py_ssize_t records, int64_t max_delta) noexcept:
        """Back to what the batch held at n bytes (a call that failed takes its records back),
        its records' checksum with them when it had taken on records past n."""
        self.buf.n = n
        self.records = records
        self.max_delta = max_delta
        if n < self.crc_upto:
            self.crc_forget()

    cdef inline void crc_forget(self) noexcept:
        self.crc_upto = PREFIX + BATCH_HEADER
        self.crc_raw = 0

    cdef inline void crc_catch_up(self) noexcept:
        """After a record: checksum the records appended since the last step, once CRC_STEP
        bytes of them wait."""
        if self.buf.n - self.crc_upto >= CRC_STEP:
            self.crc_raw = fs_crc_raw(self.crc_raw, <const unsigned char*>self.buf.p + self.crc_upto,
                                      self.buf.n - self.crc_upto)
            self.crc_upto = self.buf.n

    cdef uint32_t crc_of(self, char* p, Py_ssize_t n) noexcept:
        """The CRC-32C of the batch at p (n bytes: this batch's bytes from its start, the
        header filled): the header's checksum joined to the records' (taken on as they were
        appended, the rest now), or the whole batch's when the records are compressed."""
        cdef uint32_t h, r
        cdef Py_ssize_t at = self.crc_upto - PREFIX
        if self.codec != 0:
            return fs_crc32c(<const unsigned char*>p + ATTR_OFFSET, n - ATTR_OFFSET)
        h = fs_crc_raw(0xFFFFFFFF, <const unsigned char*>p + ATTR_OFFSET, BATCH_HEADER - ATTR_OFFSET)
        r = fs_crc_raw(self.crc_raw, <const unsigned char*>p + at, n - at)
        return fs_crc_zeros(h, <unsigned long long>(n - BATCH_HEADER)) ^ r ^ 0xFFFFFFFF

    cdef int check_open(self) except -1:
        if self.sealed or self.packed or self.busy:
            raise ValueError("batch already compressed or framed as a request: no more appends")
        return 0

    cdef inline int put_flow(self, FlowBatch bt, Flow* f, object enricher, const char* head, Py_ssize_t head_len,
                             const char* key, Py_ssize_t keylen) except -1:
        """One flow as one record with the given key (keylen -1: null): 0 when appended, 1 when
        it would take the batch past max_bytes (nothing appended; its enrichment counts taken
        back). A flow into an empty batch is always appended."""
        cdef Py_ssize_t vlen, rlen, rec, hdr, hdr_fixed, guess
        cdef Buf* o = &self.buf
        cdef int64_t delta
        if self.records == 0:
            # CreateTime: when the batch's first flows arrived, not when the (pooled, reused)
            # writer was made, which may be a quiet exporter's whole silence earlier
            self.base_timestamp = <int64_t>(bt.recv_time * 1000)
            delta = 0
        else:
            # each record its own datagram's arrival: behind a backlog a batch stays open for
            # seconds (Worker._linger_loop), and stamped all at the first, later flows had a
            # CreateTime before their TimeReceived
            delta = <int64_t>(bt.recv_time * 1000) - self.base_timestamp
        # The JSON is written in place, after room for a record header whose varints are
        # guessed at 2 bytes (records under 8 KiB); a wrong guess costs one memmove.
        rec = o.n
        hdr_fixed = 1 + zz_len(delta) + zz_len(self.records) + zz_len(keylen) + (keylen if keylen > 0 else 0)
        guess = 2 + hdr_fixed + 2
        buf_reserve(o, guess + 1024)
        o.n = rec + guess
        encode_flow(o, bt, f, enricher, head, head_len)
        vlen = o.n - rec - guess
        rlen = hdr_fixed + zz_len(vlen) + vlen + 1
        hdr = zz_len(rlen) + hdr_fixed + zz_len(vlen)
        if self.records and rec - PREFIX + hdr + vlen + 1 > self.max_bytes:
            o.n = rec
            if enricher is not None:
                enrich_uncount()
            return 1
        buf_reserve(o, 16)
        if hdr != guess:
            memmove(o.p + rec + hdr, o.p + rec + guess, vlen)
        o.n = rec
        zz_put(o, rlen)
        o.p[o.n] = 0          # attributes
        o.n += 1
        zz_put(o, delta)      # timestampDelta: from the batch's base timestamp
        zz_put(o, self.records)
        zz_put(o, keylen)
        if keylen > 0:
            memcpy(o.p + o.n, key, keylen)
            o.n += keylen
        zz_put(o, vlen)
        o.n += vlen
        o.p[o.n] = 0          # no headers
        o.n += 1
        if delta > self.max_delta:
            self.max_delta = delta
        self.records += 1
        self.crc_catch_up()
        return 0

    def add_record(self, bytes key, bytes value not None, int64_t timestamp=0):
        """Append one record already encoded (value) with its key (None: null) and CreateTime in
        ms since the epoch (0: now): True when appended, False when it would take the batch past
        max_bytes (a record into an empty batch is always appended). The sink's records queued
        as JSON (before a keyed topic's partition count is known, sFlow counter records) go so
        on the direct path, on the connection the partition's other batches use."""
        cdef Py_ssize_t klen = -1 if key is None else len(key)
        cdef Py_ssize_t vlen = len(value)
        cdef Py_ssize_t rlen, need
        cdef int64_t delta
        cdef Buf* o = &self.buf
        self.check_open()
        if timestamp <= 0:
            timestamp = <int64_t>(time.time() * 1000)
        if self.records == 0:
            self.base_timestamp = timestamp
        delta = timestamp - self.base_timestamp
        rlen = 1 + zz_len(delta) + zz_len(self.records) + zz_len(klen) + (klen if klen > 0 else 0) + \
            zz_len(vlen) + vlen + 1
        need = zz_len(rlen) + rlen
        if self.records and o.n - PREFIX + need > self.max_bytes:
            return False
        buf_reserve(o, need)
        zz_put(o, rlen)
        o.p[o.n] = 0          # attributes
        o.n += 1
        zz_put(o, delta)
        zz_put(o, self.records)
        zz_put(o, klen)
        if klen > 0:
            memcpy(o.p + o.n, PyBytes_AS_STRING(key), klen)
            o.n += klen
        zz_put(o, vlen)
        memcpy(o.p + o.n, PyBytes_AS_STRING(value), vlen)
        o.n += vlen
        o.p[o.n] = 0          # no headers
        o.n += 1
        if delta > self.max_delta:
            self.max_delta = delta
        self.records += 1
        self.crc_catch_up()
        return True

    def records_bytes(self):
        """The records section (for compression by the caller)."""
        if self.busy:
            raise ValueError("batch being compressed by a Packer")
        return PyBytes_FromStringAndSize(self.buf.p + PREFIX + BATCH_HEADER, self.buf.n - PREFIX - BATCH_HEADER)

    def compress(self, int codec, object encode):
        """Compress the records section in place for request(): encode(memoryview) -> bytes-like,
        the codec's frame of the records (codec: 1 gzip, 2 snappy, 3 lz4, 4 zstd). The result is
        written over the records when it is smaller (returns True; the batch then says codec);
        otherwise the batch stays uncompressed (False). Ends appends; a second call is a no-op
        that returns whether the first one compressed. The view passed to encode is released
        when it returns (it must not keep it)."""
        cdef Py_ssize_t raw = self.buf.n - PREFIX - BATCH_HEADER
        cdef const unsigned char[:] out
        cdef object view
        if self.busy:
            raise ValueError("batch being compressed by a Packer")
        if self.packed:
            return self.codec != 0
        if self.sealed or self.exports > 0:
            raise ValueError("batch already framed as a request")
        if codec < 1 or codec > 4:
            raise ValueError("codec: 1 gzip, 2 snappy, 3 lz4 or 4 zstd")
        if self.records == 0:
            raise ValueError("empty batch")
        view = PyMemoryView_FromMemory(self.buf.p + PREFIX + BATCH_HEADER, raw, PyBUF_READ)
        try:
            packed = encode(view)
        finally:
            view.release()
        self.packed = True
        out = packed
        if out.shape[0] == 0 or out.shape[0] >= raw:
            return False
        memcpy(self.buf.p + PREFIX + BATCH_HEADER, &out[0], out.shape[0])
        self.buf.n = PREFIX + BATCH_HEADER + out.shape[0]
        self.codec = codec
        self.crc_forget()
        return True

    def build(self, object crc32c=None):
        """The finished batch as bytes (compressed if compress() made it so); crc32c(bytes) ->
        int, or None for the built-in one (hardware CRC-32C when the CPU has it)."""
        if self.busy:
            raise ValueError("batch being compressed by a Packer")
        cdef bytes out = PyBytes_FromStringAndSize(self.buf.p + PREFIX, self.buf.n - PREFIX)
        cdef Py_ssize_t n = len(out)
        cdef char* p = PyBytes_AS_STRING(out)
        self.fill_header(p, n, self.codec)
        if crc32c is not None:
            put_be32(p + CRC_OFFSET, <uint32_t>crc32c(out[ATTR_OFFSET:]))
        else:
            put_be32(p + CRC_OFFSET, self.crc_of(p, n))
        return out

    cdef void fill_header(self, char* p, Py_ssize_t n, int codec) noexcept:
        put_be64(p, 0)                                   # baseOffset
        put_be32(p + 8, <uint32_t>(n - 12))              # batchLength
        put_be32(p + 12, 0)                              # partitionLeaderEpoch
        p[16] = 2                                        # magic
        p[21] = 0
        p[22] = <char>(codec & 7)                        # attributes
        put_be32(p + 23, <uint32_t>(self.records - 1))  # lastOffsetDelta
        put_be64(p + 27, <uint64_t>self.base_timestamp)
        put_be64(p + 35, <uint64_t>(self.base_timestamp + self.max_delta))  # maxTimestamp
        put_be64(p + 43, <uint64_t>-1)                   # producerId: no idempotence
        p[51] = <char>0xFF
        p[52] = <char>0xFF                               # producerEpoch -1
        put_be32(p + 53, 0xFFFFFFFF)                     # baseSequence -1
        put_be32(p + 57, <uint32_t>self.records)

    def request(self, int32_t correlation_id, bytes client_id not None, int acks, int32_t timeout_ms,
                bytes topic not None, int32_t partition, int api_version=3):
        """The whole Produce request (v3 by default, up to v8, which frame the same body: one
        topic, one partition, this batch, compressed when compress() made it so; a zstd batch
        needs v7 or later, KIP-110) with its size prefix, framed in place in front of the batch: a
        read-only memoryview of this writer, which keeps it alive while a transport holds the view. Seals the batch (no more
        appends; the header and CRC are written once). Calling it again re-frames the same batch
        with a new correlation id (a retry); while an earlier view is still alive, or when the
        client id and topic do not fit in the headroom, the request comes back as a bytes copy
        instead."""
        cdef Py_ssize_t blen = self.buf.n - PREFIX
        cdef Py_ssize_t clen = len(client_id)
        cdef Py_ssize_t tlen = len(topic)
        cdef Py_ssize_t plen = 4 + 8 + 2 + clen + 2 + 2 + 4 + 4 + 2 + tlen + 4 + 4 + 4
        cdef char* p
        cdef bytes out
        if self.records == 0:
            raise ValueError("empty batch")
        if self.busy:
            raise ValueError("batch being compressed by a Packer")
        if clen > 32767 or tlen > 32767:
            raise ValueError("client id or topic longer than a Kafka string (32767 bytes)")
        if not 3 <= api_version <= 8:
            raise ValueError("Produce versions 3 to 8 frame this request body")
        if not self.sealed:
            self.fill_header(self.buf.p + PREFIX, blen, self.codec)
            put_be32(self.buf.p + PREFIX + CRC_OFFSET, self.crc_of(self.buf.p + PREFIX, blen))
            self.sealed = True
        if self.exports > 0 or plen > PREFIX:
            # An earlier request's view may still be in a transport's hands: frame this one in a
            # copy, never under bytes that may still be on their way. So too a framing longer
            # than the headroom (a client id and topic of hundreds of characters, which Kafka
            # allows): refusing it re-queued every batch for ever.
            out = PyBytes_FromStringAndSize(NULL, plen + blen)
            p = PyBytes_AS_STRING(out)
            memcpy(p + plen, self.buf.p + PREFIX, blen)
            frame_request(p, plen, blen, correlation_id, client_id, acks, timeout_ms, topic, partition,
                          api_version)
            return out
        p = self.buf.p + PREFIX - plen
        frame_request(p, plen, blen, correlation_id, client_id, acks, timeout_ms, topic, partition, api_version)
        self.req_start = PREFIX - plen
        return memoryview(self)

    def __getbuffer__(self, Py_buffer* view, int flags):
        # The last request() framing (see request); read-only.
        PyBuffer_FillInfo(view, self, self.buf.p + self.req_start, self.buf.n - self.req_start, 1, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer* view):
        self.exports -= 1

    def trim(self):
        """Fit the memory to the batch before it waits in a queue: a batch using under half of
        its buffer (a linger flush at a low rate, or every batch while the broker is away) moves
        to an allocation of its own size, and the big buffer goes back to the pool for the next
        writer. Without this every queued batch kept a whole max_bytes allocation (a mapping of
        its own: memory far beyond --queue-bytes, and the process's mapping limit). Nothing
        changes for the batch; appending to it afterwards still works (the buffer grows)."""
        if self.exports == 0 and not self.busy:
            buf_fit(&self.buf)

    @property
    def capacity(self):
        """Bytes allocated for the batch (trim)."""
        return self.buf.cap

    def release(self):
        """Give the batch memory back once it has been built (the queue may hold the writer a
        while); the next writer reuses it. Not while a request view is alive (the memory is
        then given back when the writer goes)."""
        if self.exports == 0 and not self.busy:
            pool_give(&self.buf)


cdef inline int64_t varint_get(const unsigned char* p, Py_ssize_t end, Py_ssize_t* off) except? -1:
    """A zigzag varint (varlong) at p[off[0]], off[0] moved past it; ValueError when it runs past end."""
    cdef uint64_t z = 0
    cdef int shift = 0
    cdef unsigned char c
    while True:
        if off[0] >= end or shift > 63:
            raise ValueError("record batch: a varint runs past its record")
        c = p[off[0]]
        off[0] += 1
        z |= <uint64_t>(c & 0x7F) << shift
        if c < 0x80:
            return <int64_t>(z >> 1) ^ -<int64_t>(z & 1)
        shift += 7


def split_batch(data, Py_ssize_t parts=2, object decompress=None, Py_ssize_t max_bytes=0):
    """Cut a finished v2 record batch (RecordBatchWriter.build()'s bytes, or the batch of a
    request) into `parts` batches of consecutive records, about equal in bytes, each a new
    RecordBatchWriter to be compressed and sent like any (a piece with no record is left out;
    a batch of one record gives one); with max_bytes, instead, into as few as hold at most
    max_bytes each uncompressed (a record larger alone in one). Why: a broker refuses a batch over its message.max.bytes
    (or the topic's max.message.bytes) whole, MESSAGE_TOO_LARGE, though its records may each
    fit; Kafka's producers split such a batch and send the halves (KIP-126), and so does the
    sink (collector.sinks KafkaSink._split). A compressed batch's records are first given to
    decompress(codec, bytes) -> bytes (codec: its attributes' 1 gzip, 2 snappy, 3 lz4, 4 zstd).

    Each record is copied as it is but for its offsetDelta (from 0 again in its piece: a batch's
    offsets are lastOffsetDelta + 1 consecutive deltas) and its length varint (the new delta
    may be shorter). Timestamps stay what they were: every piece keeps the batch's
    baseTimestamp, so each record's timestampDelta still gives its CreateTime unchanged."""
    cdef const unsigned char[:] v = data
    cdef Py_ssize_t n = v.shape[0]
    cdef Py_ssize_t blen, count, total, i, j, k, off, start, end, body, rest, rlen, mid
    cdef int64_t base_ts, tsd, size
    cdef const unsigned char* r
    cdef const unsigned char[:] rv
    cdef RecordBatchWriter w
    cdef Buf* o
    cdef list starts, attrs, ends, rests, deltas, pieces, out, cur
    cdef int codec
    if parts < 1:
        raise ValueError("parts: at least 1")
    if n < BATCH_HEADER or v[16] != 2:
        raise ValueError("not a v2 record batch")
    blen = ((<Py_ssize_t>v[8] << 24) | (v[9] << 16) | (v[10] << 8) | v[11]) + 12
    if blen < BATCH_HEADER or blen > n:
        raise ValueError("record batch: batchLength past the data")
    codec = v[22] & 7
    count = (<Py_ssize_t>v[57] << 24) | (v[58] << 16) | (v[59] << 8) | v[60]
    base_ts = 0
    for i in range(27, 35):
        base_ts = (base_ts << 8) | v[i]
    if codec:
        if decompress is None:
            raise ValueError(f"record batch compressed (codec {codec}): a decompress function is needed")
        raw = decompress(codec, bytes(v[BATCH_HEADER:blen]))
        rv = raw
    else:
        rv = v[BATCH_HEADER:blen]
    total = rv.shape[0]
    r = &rv[0] if total > 0 else NULL
    # each record: where it starts and ends, where what follows its offsetDelta starts, its
    # timestampDelta
    starts, attrs, ends, rests, deltas = [], [], [], [], []
    off = 0
    for i in range(count):
        start = off
        size = varint_get(r, total, &off)
        if size < 3 or size > total - off:
            raise ValueError(f"record batch: record {i} of {count} runs past the records")
        end = off + <Py_ssize_t>size
        attrs.append(r[off])
        body = off + 1
        tsd = varint_get(r, end, &body)
        varint_get(r, end, &body)   # offsetDelta: renumbered below
        starts.append(start)
        ends.append(end)
        rests.append(body)
        deltas.append(tsd)
        off = end
    if off != total:
        raise ValueError(f"record batch: {total - off} bytes after its {count} records")
    if max_bytes > 0:
        # filled in turn as RecordBatchWriter.append fills a batch, each record at its new size
        cur = []
        pieces = [cur]
        size = BATCH_HEADER
        j = 0
        for i in range(count):
            rest = <Py_ssize_t>ends[i] - <Py_ssize_t>rests[i]
            rlen = 1 + zz_len(deltas[i]) + zz_len(j) + rest
            if j and size + zz_len(rlen) + rlen > max_bytes:
                cur = []
                pieces.append(cur)
                size = BATCH_HEADER
                j = 0
                rlen = 1 + zz_len(deltas[i]) + 1 + rest
            cur.append(i)
            size += zz_len(rlen) + rlen
            j += 1
    else:
        # a record goes to the piece its middle byte falls in: two records always make two pieces
        pieces = [[] for _ in range(parts)]
        for i in range(count):
            mid = (starts[i] + ends[i]) // 2
            pieces[min(parts - 1, mid * parts // total)].append(i)
    out = []
    for k in range(len(pieces)):
        if not pieces[k]:
            continue
        w = RecordBatchWriter.__new__(RecordBatchWriter)
        w.key = None
        w.base_timestamp = base_ts
        w.req_start = PREFIX
        size = 0
        for i in pieces[k]:
            size += <Py_ssize_t>ends[i] - <Py_ssize_t>rests[i] + 32
        o = &w.buf
        buf_reserve(o, PREFIX + BATCH_HEADER + <Py_ssize_t>size)
        memset(o.p, 0, PREFIX + BATCH_HEADER)
        o.n = PREFIX + BATCH_HEADER
        j = 0
        for i in pieces[k]:
            tsd = deltas[i]
            rest = <Py_ssize_t>ends[i] - <Py_ssize_t>rests[i]
            rlen = 1 + zz_len(tsd) + zz_len(j) + rest
            zz_put(o, rlen)
            o.p[o.n] = <char><int>attrs[i]
            o.n += 1
            zz_put(o, tsd)
            zz_put(o, j)
            memcpy(o.p + o.n, r + <Py_ssize_t>rests[i], rest)
            o.n += rest
            if tsd > w.max_delta:
                w.max_delta = tsd
            j += 1
        w.records = j
        w.max_bytes = max(1024, o.n - PREFIX)
        out.append(w)
    return out


cdef extern from *:
    """
    /* Kafka's default partitioner hash (murmur2 with the Java client's seed), as its
       Utils.murmur2 computes it on a byte array: 32-bit wrap-around arithmetic. */
    static uint32_t fs_murmur2(const unsigned char* p, size_t n) {
        const uint32_t m = 0x5bd1e995u;
        uint32_t h = 0x9747b28cu ^ (uint32_t)n;
        size_t i = 0;
        for (; i + 4 <= n; i += 4) {
            uint32_t k = (uint32_t)p[i] | ((uint32_t)p[i + 1] << 8) | ((uint32_t)p[i + 2] << 16)
                         | ((uint32_t)p[i + 3] << 24);
            k *= m;
            k ^= k >> 24;
            k *= m;
            h *= m;
            h ^= k;
        }
        switch (n & 3) {
            case 3: h ^= (uint32_t)p[i + 2] << 16; /* fall through */
            case 2: h ^= (uint32_t)p[i + 1] << 8;  /* fall through */
            case 1: h ^= (uint32_t)p[i]; h *= m;
        }
        h ^= h >> 13;
        h *= m;
        h ^= h >> 15;
        return h;
    }
    """
    uint32_t fs_murmur2(const unsigned char* p, size_t n) noexcept


def murmur2_positive(data) -> int:
    """toPositive(murmur2(data)): the hash Kafka's clients partition keyed records by."""
    cdef const unsigned char[:] v = data
    if v.shape[0] == 0:
        return fs_murmur2(NULL, 0) & 0x7FFFFFFF
    return fs_murmur2(&v[0], v.shape[0]) & 0x7FFFFFFF


DEF KEY_EXPORTER = 1
DEF KEY_CONVERSATION = 2

cdef Buf _conv              # conversation keys, built per flow (the GIL serialises its users)
_conv.p = NULL
_conv.n = 0
_conv.cap = 0


cdef Py_ssize_t conversation_key(Flow* f, Py_ssize_t* keylen) except -1:
    """The flow's two addresses as the JSON has them (without the quotes; an address the flow
    does not carry is empty), the smaller first, joined by "|": written into _conv, at the
    offset returned, keylen bytes (collector.sinks.conversation_key's key)."""
    cdef Py_ssize_t a0, alen, b0, blen, n
    cdef int c
    _conv.n = 0
    buf_reserve(&_conv, 256)
    a0 = 0
    if f.af and not f.noaddr & NOADDR_SRC:
        buf_ip(&_conv, f.af, f.src, True)
    alen = _conv.n
    b0 = _conv.n
    if f.af and not f.noaddr & NOADDR_DST:
        buf_ip(&_conv, f.af, f.dst, True)
    blen = _conv.n - b0
    # strip the quotes buf_ip writes
    if alen:
        a0 += 1
        alen -= 2
    if blen:
        b0 += 1
        blen -= 2
    n = alen if alen < blen else blen
    c = memcmp(_conv.p + a0, _conv.p + b0, n)
    if c > 0 or (c == 0 and alen > blen):
        a0, alen, b0, blen = b0, blen, a0, alen
    # the key after what was written: smaller, "|", larger
    buf_reserve(&_conv, alen + blen + 1)
    n = _conv.n
    memcpy(_conv.p + n, _conv.p + a0, alen)
    _conv.p[n + alen] = b'|'
    memcpy(_conv.p + n + alen + 1, _conv.p + b0, blen)
    keylen[0] = alen + 1 + blen
    return n


cdef class KeyedBatches:
    """Flows as keyed Kafka records, one RecordBatchWriter per partition (kafka.key exporter or
    conversation on the fast path): each flow's key (the exporter's address, or the
    conversation's two addresses sorted) is hashed as Kafka's clients do,
    toPositive(murmur2(key)) % partitions, and the flow is JSON-encoded straight into the batch
    of that partition. Batches are made when first needed, so memory follows the partitions
    that get flows."""

    cdef readonly list writers       # RecordBatchWriter or None, per partition slot
    cdef readonly int partitions
    cdef readonly int mode
    cdef readonly Py_ssize_t max_bytes
    cdef readonly int full           # after append() stopped early: the slot whose batch is full
    cdef Py_ssize_t nrecords         # flows in the open batches
    cdef Py_ssize_t nbytes           # bytes of the open batches holding flows
    cdef unsigned long call          # append_c calls (RecordBatchWriter.mark)

    def __init__(self, int partitions, Py_ssize_t max_bytes=1048576, str mode="exporter"):
        if partitions < 1:
            raise ValueError("partitions: at least 1")
        if mode not in ("exporter", "conversation"):
            raise ValueError("mode: exporter or conversation")
        self.partitions = partitions
        self.max_bytes = max_bytes
        self.mode = KEY_EXPORTER if mode == "exporter" else KEY_CONVERSATION
        self.writers = [None] * partitions
        self.full = -1
        self.nrecords = 0
        self.nbytes = 0

    @property
    def records(self):
        """Flows in the open batches."""
        return self.nrecords

    @property
    def size(self):
        """Bytes of the open batches (those holding flows)."""
        return self.nbytes

    def append(self, FlowBatch bt, object enricher=None, Py_ssize_t start=0, bytes exporter=None):
        """Append bt's flows from index `start` (exporter: the key of mode exporter); stop at
        the first flow whose partition's batch is full. Returns the index of the first flow not
        appended (len(bt) when all fit); `full` is then that partition's slot: take() its batch
        and append again from there. An encoder failure takes back the call's records, in every
        partition, and raises."""
        return self.append_c(bt, enricher, start, exporter)

    cdef Py_ssize_t append_c(self, FlowBatch bt, object enricher, Py_ssize_t start, bytes exporter) except -1:
        """append(), called from C (the Receiver)."""
        cdef Py_ssize_t i
        cdef bytes head
        cdef Flow* f
        cdef const char* key = NULL
        cdef Py_ssize_t keylen = 0
        cdef int slot = 0
        cdef Py_ssize_t before, off
        cdef RecordBatchWriter w
        cdef Py_ssize_t had_records = self.nrecords, had_bytes = self.nbytes
        self.full = -1
        if start >= bt.n:
            return bt.n
        if self.mode == KEY_EXPORTER:
            if exporter is None:
                raise ValueError("mode exporter: the exporter's key is needed")
            key = PyBytes_AS_STRING(exporter)
            keylen = len(exporter)
            slot = (fs_murmur2(<const unsigned char*>key, keylen) & 0x7FFFFFFF) % self.partitions
        head = batch_head(bt)
        enrich_batch(bt, start, enricher)
        self.call += 1
        try:
            for i in range(start, bt.n):
                f = &bt.flows[i]
                if self.mode == KEY_CONVERSATION:
                    off = conversation_key(f, &keylen)
                    key = _conv.p + off     # (after the call: it may move _conv's buffer)
                    slot = (fs_murmur2(<const unsigned char*>key, keylen) & 0x7FFFFFFF) % self.partitions
                obj = self.writers[slot]
                if obj is None:
                    obj = self.writers[slot] = RecordBatchWriter(self.max_bytes)
                w = <RecordBatchWriter>obj   # (never sealed here: a batch is compressed or framed after take())
                if w.mark != self.call:
                    w.mark = self.call
                    w.mark_n = w.buf.n
                    w.mark_records = w.records
                    w.mark_delta = w.max_delta
                before = w.buf.n - PREFIX if w.records else 0
                if w.put_flow(bt, f, enricher, PyBytes_AS_STRING(head), len(head), key, keylen):
                    self.full = slot
                    return i
                self.nrecords += 1
                self.nbytes += w.buf.n - PREFIX - before
        except BaseException:
            # (an enricher bug, memory): every batch this call wrote to goes back to what it
            # held, a partial record too, and the caller counts the datagram's flows dropped
            for obj in self.writers:
                if obj is not None and (<RecordBatchWriter>obj).mark == self.call:
                    w = <RecordBatchWriter>obj
                    w.take_back(w.mark_n, w.mark_records, w.mark_delta)
            self.nrecords = had_records
            self.nbytes = had_bytes
            self.full = -1
            raise
        return bt.n

    def take_all(self):
        """Every open batch holding flows, as (slot, batch), the slots emptied."""
        cdef list out = []
        cdef Py_ssize_t slot
        if not self.nrecords:
            return out
        for slot in range(self.partitions):
            w = self.writers[slot]
            if w is not None:
                self.writers[slot] = None
                if (<RecordBatchWriter>w).records:
                    out.append((slot, w))
        self.nrecords = 0
        self.nbytes = 0
        return out

    def take(self, int slot):
        """The batch of a partition slot (None when it has no flows); a new one starts there
        when next needed."""
        w = self.writers[slot]
        if w is None or not (<RecordBatchWriter>w).records:
            return None
        self.writers[slot] = None
        self.nrecords -= (<RecordBatchWriter>w).records
        self.nbytes -= (<RecordBatchWriter>w).size
        return w
