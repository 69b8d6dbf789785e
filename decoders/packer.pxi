# Record-batch compression on a thread of its own (kafka.compression_offload).
#
# lz4 is about half of the collector's core at 400k enriched flows/s (benchmarks/RESULTS.md,
# third and fourth sessions), and a Python thread pool could not take it off the event loop:
# each hand-off waited for the GIL, which the loop's thread holds through long Cython stretches.
# Here a POSIX thread that never touches the interpreter compresses the records section of a
# finished RecordBatchWriter in place, with the system's liblz4 / libzstd (loaded with dlopen:
# no build-time headers), and says it is done through an eventfd the event loop watches.
#
# The frames are the codecs' standard ones, as Kafka's consumers read them: LZ4 frame format
# with independent 64 KiB blocks, no checksums and no content size (the same frame as
# collector.sinks._codec writes through python-lz4); zstd's own frame (ZSTD_compress).

cdef extern from *:
    """
    #include <pthread.h>
    #include <dlfcn.h>
    #include <sys/eventfd.h>
    #include <unistd.h>
    #include <stdlib.h>
    #include <string.h>
    #include <errno.h>
    #include <time.h>
    #include <stdint.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    typedef int (*fs_lz4_fast_fn)(const char*, char*, int, int, int);
    typedef size_t (*fs_zstd_fn)(void*, size_t, const void*, size_t, int);
    typedef size_t (*fs_zstd_bound_fn)(size_t);
    typedef unsigned (*fs_zstd_iserr_fn)(size_t);
    static fs_lz4_fast_fn fs_lz4_fast = NULL;
    static fs_zstd_fn fs_zstd = NULL;
    static fs_zstd_bound_fn fs_zstd_bound = NULL;
    static fs_zstd_iserr_fn fs_zstd_iserr = NULL;

    /* 0 when the codec's functions are there; else -1 and *why names what is missing. */
    static int fs_codec_load(int codec, const char** why) {
        void* h;
        if (codec == 3) {
            if (fs_lz4_fast) return 0;
            h = dlopen("liblz4.so.1", RTLD_NOW | RTLD_LOCAL);
            if (!h) { *why = "liblz4.so.1 not found (Debian package liblz4-1)"; return -1; }
            fs_lz4_fast = (fs_lz4_fast_fn)dlsym(h, "LZ4_compress_fast");
            if (!fs_lz4_fast) { *why = "liblz4.so.1 has no LZ4_compress_fast"; return -1; }
            return 0;
        }
        if (codec == 4) {
            if (fs_zstd && fs_zstd_bound && fs_zstd_iserr) return 0;
            h = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
            if (!h) { *why = "libzstd.so.1 not found (Debian package libzstd1)"; return -1; }
            fs_zstd_bound = (fs_zstd_bound_fn)dlsym(h, "ZSTD_compressBound");
            fs_zstd_iserr = (fs_zstd_iserr_fn)dlsym(h, "ZSTD_isError");
            fs_zstd = (fs_zstd_fn)dlsym(h, "ZSTD_compress");
            if (!fs_zstd || !fs_zstd_bound || !fs_zstd_iserr) { *why = "libzstd.so.1 lacks ZSTD_compress"; return -1; }
            return 0;
        }
        *why = "only lz4 and zstd compress on the thread";
        return -1;
    }

    /* flowscope's own LZ4 block encoder ("field-anchored"; kafka.compression_level 0 for lz4).
       liblz4's fast mode hashes every position it passes; flow JSON repeats at field
       boundaries (the keys, a value's common prefix, whole runs of equal fields), so this one
       looks for a match only at each ',' and '{': the key from there up to its ':' (at most 16
       bytes) is hashed to the last place it was seen in the block, the match is extended
       forward 8 bytes at a time and backward over the literals before it. About twice liblz4's
       speed on enriched flow records at the same ratio (benchmarks/RESULTS.md). Any input is
       encoded correctly, as a standard LZ4 block any decoder reads; only the ratio depends on
       the input being JSON. Same contract as LZ4_compress_fast: the block's size, or 0 when it
       does not fit in cap. The end-of-block rules hold: no match starts in the last 12 bytes
       (here 16: the key read), the last 5 bytes are literals. */
    #define FS_FA_HBITS 12
    static inline uint64_t fs_fa_rd64(const unsigned char* p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline uint32_t fs_fa_rd32(const unsigned char* p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline unsigned char* fs_fa_len(unsigned char* o, size_t l) {
        while (l >= 255) { *o++ = 255; l -= 255; }
        *o++ = (unsigned char)l;
        return o;
    }
    /* the next place to look for a match: the first ',' or '{' in s[q..end), or, where there is
       none within FS_FA_STRIDE bytes (input that is not JSON, a long value), the byte there;
       end when there is none */
    #define FS_FA_STRIDE 32
    static inline size_t fs_fa_next(const unsigned char* s, size_t q, size_t end) {
        size_t stop = end - q > FS_FA_STRIDE ? q + FS_FA_STRIDE : end;
    #if defined(__SSE2__)
        const __m128i comma = _mm_set1_epi8(','), brace = _mm_set1_epi8('{');
        while (q + 16 <= end && q < stop) {
            __m128i v = _mm_loadu_si128((const __m128i*)(s + q));
            unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, comma), _mm_cmpeq_epi8(v, brace)));
            if (m) return q + (size_t)__builtin_ctz(m) < stop ? q + (size_t)__builtin_ctz(m) : stop;
            q += 16;
        }
    #endif
        while (q < stop && s[q] != ',' && s[q] != '{') q++;
        return q;
    }
    /* hash of the key at s (16 bytes readable): the bytes up to and with the first ':' */
    static inline uint32_t fs_fa_key(const unsigned char* s) {
        uint64_t lo = fs_fa_rd64(s), hi = fs_fa_rd64(s + 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        /* bytes equal to ':' get their high bit (exact for the lowest one) */
        uint64_t x = lo ^ 0x3A3A3A3A3A3A3A3Aull, m = (x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull;
        if (m) {
            unsigned k = (unsigned)__builtin_ctzll(m) + 1;       /* bits kept, 8 to 64 */
            if (k < 64) lo &= (~0ull) >> (64 - k);
            hi = 0;
        } else {
            x = hi ^ 0x3A3A3A3A3A3A3A3Aull;
            m = (x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull;
            if (m) {
                unsigned k = (unsigned)__builtin_ctzll(m) + 1;
                if (k < 64) hi &= (~0ull) >> (64 - k);
            }
        }
    #endif
        uint64_t h = lo ^ (hi * 0xC2B2AE3D27D4EB4Full) ^ (hi >> 29);
        return (uint32_t)((h * 0x9E3779B185EBCA87ull) >> (64 - FS_FA_HBITS));
    }
    static int fs_fa_block(const char* src, char* dst, int n_, int cap, int accel) {
        const unsigned char* s = (const unsigned char*)src;
        unsigned char* o = (unsigned char*)dst;
        unsigned char* const oend = o + (cap > 0 ? cap : 0);
        size_t n = n_ > 0 ? (size_t)n_ : 0;
        size_t anchor = 0, p = 0, lit;
        size_t mflimit = n > 16 ? n - 16 : 0;   /* a match starts before this */
        size_t mlimit = n > 5 ? n - 5 : 0;      /* and ends at or before this */
        uint32_t tab[1 << FS_FA_HBITS];
        unsigned char* tok;
        (void)accel;
        memset(tab, 0xFF, sizeof tab);
        while (p < mflimit) {
            size_t a = fs_fa_next(s, p, mflimit), m;
            uint32_t h, c;
            if (a >= mflimit) break;
            h = fs_fa_key(s + a);
            c = tab[h];
            tab[h] = (uint32_t)a;
            if (c == 0xFFFFFFFFu || fs_fa_rd32(s + c) != fs_fa_rd32(s + a)) { p = a + 1; continue; }
            m = 4;
            for (;;) {
                if (a + m + 8 <= mlimit) {
                    uint64_t d = fs_fa_rd64(s + a + m) ^ fs_fa_rd64(s + c + m);
                    if (d) {
                    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                        m += (size_t)(__builtin_ctzll(d) >> 3);
                    #else
                        while (s[a + m] == s[c + m]) m++;
                    #endif
                        break;
                    }
                    m += 8;
                } else {
                    while (a + m < mlimit && s[a + m] == s[c + m]) m++;
                    break;
                }
            }
            if (a + m > mlimit) { p = a + 1; continue; }  /* (a + 4 past the end: no match) */
            while (a > anchor && c > 0 && s[a - 1] == s[c - 1]) { a--; c--; m++; }
            lit = a - anchor;
            if ((size_t)(oend - o) < 1 + lit / 255 + 1 + lit + 2 + (m - 4) / 255 + 1) return 0;
            tok = o++;
            if (lit >= 15) o = fs_fa_len(o, lit - 15);
            if ((size_t)(oend - o) >= lit + 16 && anchor + lit + 16 <= n) {
                /* literals 16 bytes at a time (both ends have room for the overshoot) */
                const unsigned char* q = s + anchor;
                unsigned char* d = o;
                unsigned char* e = o + lit;
                while (d < e) { memcpy(d, q, 16); d += 16; q += 16; }
            } else {
                memcpy(o, s + anchor, lit);
            }
            o += lit;
            *o++ = (unsigned char)((a - c) & 0xFF);
            *o++ = (unsigned char)((a - c) >> 8);
            if (m - 4 >= 15) o = fs_fa_len(o, m - 4 - 15);
            *tok = (unsigned char)(((lit >= 15 ? 15 : lit) << 4) | (m - 4 >= 15 ? 15 : m - 4));
            p = anchor = a + m;
        }
        lit = n - anchor;
        if ((size_t)(oend - o) < 1 + lit / 255 + 1 + lit) return 0;
        tok = o++;
        *tok = (unsigned char)((lit >= 15 ? 15 : lit) << 4);
        if (lit >= 15) o = fs_fa_len(o, lit - 15);
        memcpy(o, s + anchor, lit);
        o += lit;
        return (int)(o - (unsigned char*)dst);
    }

    #define FS_LZ4_BLOCK 65536
    /* room for fs_lz4_frame's output whatever the input: header, end mark, a size word a block */
    #define FS_LZ4_FRAME_BOUND(n) ((n) + 64 + 4 * ((n) / FS_LZ4_BLOCK + 1))
    /* LZ4 frame (magic, FLG version 01 + independent blocks, BD 64 KiB, header checksum) of
       src into dst; the frame's size, or 0 when it does not fit in cap (the caller then keeps
       the records uncompressed). A block that does not shrink is stored raw (its size word's
       high bit), as the format allows. accel 0: the blocks by fs_fa_block; else by liblz4's
       fast mode at that acceleration (fs_codec_load(3) first). */
    static size_t fs_lz4_frame(const char* src, size_t n, char* dst, size_t cap,
                               const unsigned char* hdr, int hdr_len, int accel) {
        size_t o = (size_t)hdr_len;
        fs_lz4_fast_fn enc = accel == 0 ? fs_fa_block : fs_lz4_fast;
        if (cap < o + 4) return 0;
        memcpy(dst, hdr, (size_t)hdr_len);
        for (size_t i = 0; i < n; i += FS_LZ4_BLOCK) {
            int len = (int)(n - i < FS_LZ4_BLOCK ? n - i : FS_LZ4_BLOCK);
            uint32_t word;
            int c;
            if (o + 4 + (size_t)len > cap) {
                /* only a compressed block still fits: try with what is left */
                if (o + 5 > cap) return 0;
                c = enc(src + i, dst + o + 4, len, (int)(cap - o - 4 < (size_t)len - 1 ? cap - o - 4 : (size_t)len - 1), accel);
                if (c <= 0) return 0;
            } else {
                c = len > 1 ? enc(src + i, dst + o + 4, len, len - 1, accel) : 0;
            }
            if (c > 0) {
                word = (uint32_t)c;
            } else {
                word = (uint32_t)len | 0x80000000u;
                memcpy(dst + o + 4, src + i, (size_t)len);
                c = len;
            }
            dst[o] = (char)(word & 0xFF); dst[o + 1] = (char)((word >> 8) & 0xFF);
            dst[o + 2] = (char)((word >> 16) & 0xFF); dst[o + 3] = (char)(word >> 24);
            o += 4 + (size_t)c;
        }
        if (o + 4 > cap) return 0;
        memset(dst + o, 0, 4);  /* end mark */
        return o + 4;
    }

    #define FS_PACK_RING 64
    typedef struct {
        char* p;          /* the records section, compressed in place */
        size_t n;         /* its size; after the job, the compressed size (unchanged: not smaller) */
        int codec;        /* 3 lz4, 4 zstd */
        int level;        /* lz4: acceleration; zstd: level */
        int result;       /* 1 compressed, 0 kept (not smaller), -1 failed (no memory, codec error),
                             2 not started (fs_pack_stop discarding) */
        void* owner;      /* the loop's only: the writer (a strong reference), never read here */
    } fs_job;

    typedef struct {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        fs_job ring[FS_PACK_RING];
        unsigned long long submitted, taken, finished;
        int efd;
        int stop;
        int discard;      /* stopping: the jobs not started are handed back undone */
        int paused;       /* tests: jobs wait (fs_pack_pause) */
        int started;
        pthread_t th;
        char* scratch;
        size_t scratch_cap;
        unsigned char lz4_hdr[16];
        int lz4_hdr_len;
        unsigned long long busy_ns;
    } fs_pack;

    static unsigned long long fs_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
    }

    static void fs_pack_one(fs_pack* k, fs_job* j) {
        size_t need, out = 0;
        if (j->codec == 3) need = FS_LZ4_FRAME_BOUND(j->n);
        else need = fs_zstd_bound(j->n);
        if (need > k->scratch_cap) {
            char* s = (char*)realloc(k->scratch, need);
            if (!s) { j->result = -1; return; }
            k->scratch = s;
            k->scratch_cap = need;
        }
        if (j->codec == 3) {
            /* cap n - 1: a frame not smaller than the records is not worth sending */
            out = fs_lz4_frame(j->p, j->n, k->scratch, j->n - 1, k->lz4_hdr, k->lz4_hdr_len, j->level);
        } else {
            size_t r = fs_zstd(k->scratch, k->scratch_cap, j->p, j->n, j->level);
            if (fs_zstd_iserr(r)) { j->result = -1; return; }
            out = r < j->n ? r : 0;
        }
        if (out == 0) { j->result = 0; return; }
        memcpy(j->p, k->scratch, out);
        j->n = out;
        j->result = 1;
    }

    static void* fs_pack_main(void* arg) {
        fs_pack* k = (fs_pack*)arg;
        pthread_mutex_lock(&k->mu);
        for (;;) {
            while (!k->stop && (k->taken == k->submitted || k->paused)) pthread_cond_wait(&k->cv, &k->mu);
            if (k->taken == k->submitted || k->discard) break;  /* stopping: nothing left, or left undone */
            fs_job* j = &k->ring[k->taken % FS_PACK_RING];
            k->taken++;
            pthread_mutex_unlock(&k->mu);
            unsigned long long t0 = fs_now_ns();
            fs_pack_one(k, j);
            unsigned long long dt = fs_now_ns() - t0;
            pthread_mutex_lock(&k->mu);
            k->busy_ns += dt;
            k->finished++;
            pthread_mutex_unlock(&k->mu);
            uint64_t one = 1;
            ssize_t w;
            do { w = write(k->efd, &one, sizeof one); } while (w < 0 && errno == EINTR);
            pthread_mutex_lock(&k->mu);
        }
        pthread_mutex_unlock(&k->mu);
        return NULL;
    }

    static int fs_pack_start(fs_pack* k) {
        memset(k, 0, sizeof *k);
        k->efd = -1;
        if (pthread_mutex_init(&k->mu, NULL) != 0) return -1;
        if (pthread_cond_init(&k->cv, NULL) != 0) return -1;
        k->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (k->efd < 0) return -1;
        if (pthread_create(&k->th, NULL, fs_pack_main, k) != 0) return -1;
        k->started = 1;
        return 0;
    }

    /* finish: 1 compresses every job queued first; 0 only finishes the one under way and marks
       the others not started (result 2), finished for collect(). */
    static void fs_pack_stop(fs_pack* k, int finish) {
        if (k->started) {
            pthread_mutex_lock(&k->mu);
            k->stop = 1;
            k->discard = !finish;
            k->paused = 0;
            pthread_cond_signal(&k->cv);
            pthread_mutex_unlock(&k->mu);
            pthread_join(k->th, NULL);
            k->started = 0;
            pthread_mutex_lock(&k->mu);
            for (; k->taken < k->submitted; k->taken++) k->ring[k->taken % FS_PACK_RING].result = 2;
            k->finished = k->taken;
            pthread_mutex_unlock(&k->mu);
        }
        if (k->efd >= 0) { close(k->efd); k->efd = -1; }
        free(k->scratch);
        k->scratch = NULL;
        k->scratch_cap = 0;
    }

    /* Queue a job; 0, or -1 when the ring is full. A slot is free again only once the loop has
       collected its job (collected: jobs it has read back), not when the thread has finished it:
       the result stays in the slot until then. */
    static int fs_pack_submit(fs_pack* k, char* p, size_t n, int codec, int level, unsigned long long collected,
                              void* owner) {
        pthread_mutex_lock(&k->mu);
        if (k->submitted - collected >= FS_PACK_RING) { pthread_mutex_unlock(&k->mu); return -1; }
        fs_job* j = &k->ring[k->submitted % FS_PACK_RING];
        j->p = p; j->n = n; j->codec = codec; j->level = level; j->result = -1; j->owner = owner;
        k->submitted++;
        pthread_cond_signal(&k->cv);
        pthread_mutex_unlock(&k->mu);
        return 0;
    }

    static void fs_pack_pause(fs_pack* k, int on) {
        pthread_mutex_lock(&k->mu);
        k->paused = on;
        pthread_cond_signal(&k->cv);
        pthread_mutex_unlock(&k->mu);
    }

    static unsigned long long fs_pack_finished(fs_pack* k, unsigned long long* busy) {
        unsigned long long f;
        uint64_t v;
        if (k->efd >= 0) while (read(k->efd, &v, sizeof v) > 0) {}  /* reset the eventfd (non-blocking) */
        pthread_mutex_lock(&k->mu);
        f = k->finished;
        *busy = k->busy_ns;
        pthread_mutex_unlock(&k->mu);
        return f;
    }
    """
    ctypedef struct fs_job:
        char* p
        size_t n
        int codec
        int level
        int result
        void* owner
    ctypedef struct fs_pack:
        fs_job* ring
        int efd
        unsigned char* lz4_hdr
        int lz4_hdr_len
    int FS_PACK_RING
    size_t FS_LZ4_FRAME_BOUND(size_t n) nogil
    size_t fs_lz4_frame(const char* src, size_t n, char* dst, size_t cap, const unsigned char* hdr,
                        int hdr_len, int accel) nogil
    int fs_codec_load(int codec, const char** why) nogil
    int fs_pack_start(fs_pack* k) nogil
    void fs_pack_stop(fs_pack* k, int finish) nogil
    int fs_pack_submit(fs_pack* k, char* p, size_t n, int codec, int level, unsigned long long collected,
                       void* owner) nogil
    unsigned long long fs_pack_finished(fs_pack* k, unsigned long long* busy) nogil
    void fs_pack_pause(fs_pack* k, int on) nogil


def packer_available(int codec):
    """None when Packer(codec) can work here, else why not (a library missing)."""
    cdef const char* why = NULL
    if fs_codec_load(codec, &why) == 0:
        return None
    return why.decode()


from cpython.ref cimport Py_INCREF, Py_DECREF


cdef class Packer:
    """Compresses finished RecordBatchWriters' records in place on a POSIX thread.

    submit(w) hands a writer over (it takes no appends, trims or requests until it comes back);
    when fileno() is readable, collect() returns the writers done since, in submission order,
    each compressed as RecordBatchWriter.compress would have done it (kept uncompressed when
    that does not shrink it). The thread never takes the GIL. close() waits for the jobs
    queued and stops the thread."""

    cdef fs_pack k
    cdef readonly int codec
    cdef readonly int level
    # The writers in the ring are held by the ring's slots (fs_job.owner, a strong reference
    # each), not by a Python list: the cycle collector could clear a list that only garbage
    # refers to (a KafkaSink never drained) and free the writers the thread is compressing
    # before __dealloc__ has stopped it. The Packer has no Python fields the GC can see.
    cdef unsigned long long given  # jobs submitted
    cdef unsigned long long seen  # jobs already collected
    cdef unsigned long long busy
    cdef readonly long long failed  # jobs the codec failed (sent uncompressed)
    cdef bint running

    def __cinit__(self):
        self.running = False
        self.given = 0
        self.seen = 0
        self.k.efd = -1   # (until started: collect() never reads fd 0)

    def __init__(self, int codec, int level=0, bytes lz4_header=None):
        """codec 3 (lz4: level 0-2 the fast mode, level < 0 its acceleration -level) or 4
        (zstd level); lz4_header: the 7 bytes opening an LZ4 frame with independent 64 KiB
        blocks and nothing optional (python-lz4 writes them: see collector.sinks)."""
        cdef const char* why = NULL
        if codec not in (3, 4):
            raise ValueError("Packer: codec 3 (lz4) or 4 (zstd)")
        if codec == 3 and (lz4_header is None or len(lz4_header) != 7 or lz4_header[:4] != b"\x04\x22\x4d\x18"):
            raise ValueError("Packer: lz4 needs the 7-byte frame header")
        if codec == 3 and level > 2:
            raise ValueError("Packer: lz4 levels above 2 are the HC mode, not compressed here")
        if (codec != 3 or level != 0) and fs_codec_load(codec, &why) != 0:
            raise OSError(why.decode())
        self.codec = codec
        # lz4: 0 flowscope's field-anchored encoder (fs_fa_block), 1-2 liblz4's fast mode,
        # < 0 its acceleration
        self.level = (0 if level == 0 else 1 if level > 0 else -level) if codec == 3 else level
        if fs_pack_start(&self.k) != 0:
            fs_pack_stop(&self.k, 0)
            raise OSError("Packer: cannot start the compression thread")
        if codec == 3:
            memcpy(self.k.lz4_hdr, PyBytes_AS_STRING(lz4_header), 7)
            self.k.lz4_hdr_len = 7
        self.running = True

    def __dealloc__(self):
        if self.running:
            with nogil:
                fs_pack_stop(&self.k, 0)
            self.running = False
        if self.given != self.seen:
            self.collect()  # the ring's references go (the thread is stopped: every job is finished)

    def fileno(self):
        """An eventfd, readable when jobs have finished (then call collect())."""
        return self.k.efd

    @property
    def pending(self):
        """Writers submitted and not collected yet."""
        return <Py_ssize_t>(self.given - self.seen)

    @property
    def busy_seconds(self):
        """Time the thread spent compressing (as of the last collect())."""
        return self.busy / 1e9

    def submit(self, RecordBatchWriter w not None):
        """Hand w's records over to the thread. False (nothing done) when it cannot take them
        now (its queue is full, or the thread is stopped): the caller compresses itself."""
        if not self.running:
            return False
        if w.sealed or w.exports > 0 or w.busy:
            raise ValueError("batch framed as a request or already with the packer")
        if w.packed:
            raise ValueError("batch already compressed")
        if w.records == 0:
            raise ValueError("empty batch")
        if fs_pack_submit(&self.k, w.buf.p + PREFIX + BATCH_HEADER, <size_t>(w.buf.n - PREFIX - BATCH_HEADER),
                          self.codec, self.level, self.seen, <void*>w) != 0:
            return False
        Py_INCREF(w)  # the slot's reference (collect() gives it back)
        self.given += 1
        w.busy = True
        return True

    def collect(self):
        """The writers finished since the last call, in submission order (each now packed,
        with its codec set when compressing shrank it)."""
        cdef unsigned long long fin
        cdef fs_job* j
        cdef RecordBatchWriter w
        cdef list out = []
        if self.given == self.seen and self.k.efd < 0:
            return out
        # (always reads the eventfd: the thread signals after counting a job done, so a signal
        # can come after the collect() that took its job)
        fin = fs_pack_finished(&self.k, &self.busy)
        while self.seen < fin:
            j = &self.k.ring[self.seen % FS_PACK_RING]
            w = <RecordBatchWriter><object>j.owner
            j.owner = NULL
            Py_DECREF(w)  # the slot's reference (w holds one of its own)
            self.seen += 1
            w.busy = False
            out.append(w)
            if j.result == 2:
                continue  # not started (close(finish=False)): as it was given, not packed
            w.packed = True
            if j.result == 1:
                w.buf.n = PREFIX + BATCH_HEADER + <Py_ssize_t>j.n
                w.codec = self.codec
                w.crc_forget()
            elif j.result < 0:
                self.failed += 1
        return out

    def pause(self, bint on=True):
        """Tests: hold the thread before its next job (pause(False) lets it go on; close() too)."""
        if self.running:
            fs_pack_pause(&self.k, on)

    def close(self, bint finish=True):
        """Finish the queued jobs and stop the thread (collect() then returns them; submit()
        returns False from now on). finish=False: only the job under way is finished; the
        others come back from collect() as they were given (not packed: the caller compresses
        them if it still sends them)."""
        cdef int fin = finish
        if self.running:
            with nogil:
                fs_pack_stop(&self.k, fin)
            self.running = False


def lz4_frame_of(const unsigned char[:] data not None, bytes header not None, int accel=0):
    """The LZ4 frame of data as the Packer's thread writes it (independent 64 KiB blocks, each
    stored raw when it does not shrink), or None when the frame would not be smaller than
    data. accel 0: flowscope's field-anchored encoder (kafka.compression_level 0, the default;
    no library needed); else liblz4's fast mode at that acceleration. header: the 7 bytes
    opening the frame (collector.sinks._lz4_frame_header)."""
    cdef const char* why = NULL
    cdef size_t n = data.shape[0]
    cdef size_t cap = FS_LZ4_FRAME_BOUND(n)
    cdef size_t out
    cdef bytes buf
    if accel != 0 and fs_codec_load(3, &why) != 0:
        raise OSError(why.decode())
    if len(header) != 7:
        raise ValueError("header: 7 bytes")
    cdef const char* src = <const char*>&data[0] if n > 0 else <const char*>NULL
    buf = PyBytes_FromStringAndSize(NULL, cap)
    cdef char* dst = PyBytes_AS_STRING(buf)
    cdef const unsigned char* hdr = <const unsigned char*>PyBytes_AS_STRING(header)
    with nogil:
        out = fs_lz4_frame(src, n, dst, n - 1 if n > 0 else 0, hdr, 7, accel)
    if out == 0:
        return None
    return buf[:out]
