# Included by _core.pyx. The listeners' receive loop in C: recvmmsg while the socket is
# readable, and for each datagram the exporter allowlist, the listener's protocol check, decode
# and the append to the open Kafka record batch without a Python frame. Open vSwitch sends one
# IPFIX record a datagram, so at its rates the work around each datagram (a system call, an
# event-loop callback, the address tuple, a Python method) cost as much as decoding it.
# The keyed Kafka modes append to their partitions' batches the same way. Everything rare (a
# refused exporter, a wrong protocol, a full batch, flows before the partition count is known,
# sFlow counters, errors) is handed to the owner's Python methods: collector.server.Worker.

from cpython.unicode cimport PyUnicode_FromString

cdef extern from *:
    """
    #include <errno.h>
    #include <string.h>
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <netdb.h>
    #include <time.h>

    /* Datagrams one recvmmsg call can return, and the buffer of each: a UDP payload is at most
       65,535 bytes (65,507 over IPv4), so no datagram is ever truncated. The buffers are
       virtual memory touched only as far as the datagrams reach. */
    #define FS_RX_SLOT 65536

    typedef struct {
        int vlen;
        struct mmsghdr *msgs;
        struct iovec *iovs;
        struct sockaddr_storage *addrs;
        char *bufs;
    } fs_rx;

    static void fs_rx_free(fs_rx *r) {
        free(r->msgs); free(r->iovs); free(r->addrs); free(r->bufs);
        r->msgs = NULL; r->iovs = NULL; r->addrs = NULL; r->bufs = NULL; r->vlen = 0;
    }

    static int fs_rx_init(fs_rx *r, int vlen) {
        int i;
        r->vlen = vlen;
        r->msgs = (struct mmsghdr *)calloc((size_t)vlen, sizeof(struct mmsghdr));
        r->iovs = (struct iovec *)calloc((size_t)vlen, sizeof(struct iovec));
        r->addrs = (struct sockaddr_storage *)calloc((size_t)vlen, sizeof(struct sockaddr_storage));
        r->bufs = (char *)malloc((size_t)vlen * FS_RX_SLOT);
        if (!r->msgs || !r->iovs || !r->addrs || !r->bufs) { fs_rx_free(r); return -1; }
        for (i = 0; i < vlen; i++) {
            r->iovs[i].iov_base = r->bufs + (size_t)i * FS_RX_SLOT;
            r->iovs[i].iov_len = FS_RX_SLOT;
            r->msgs[i].msg_hdr.msg_iov = &r->iovs[i];
            r->msgs[i].msg_hdr.msg_iovlen = 1;
            r->msgs[i].msg_hdr.msg_name = &r->addrs[i];
        }
        return 0;
    }

    /* Datagrams read (> 0), 0 when none, or -errno. */
    static int fs_rx_recv(fs_rx *r, int fd) {
        int i, n;
        for (i = 0; i < r->vlen; i++) {
            r->msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
            r->msgs[i].msg_hdr.msg_flags = 0;
            r->msgs[i].msg_len = 0;
        }
        n = recvmmsg(fd, r->msgs, (unsigned int)r->vlen, MSG_DONTWAIT, NULL);
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
        return n;
    }

    static inline const char *fs_rx_data(fs_rx *r, int k) { return r->bufs + (size_t)k * FS_RX_SLOT; }
    static inline unsigned int fs_rx_len(fs_rx *r, int k) { return r->msgs[k].msg_len; }

    /* The source address as the cache compares it (family, 16 address bytes, IPv6 scope) and
       its port; 0 for a family other than IPv4 and IPv6. */
    static int fs_rx_source(fs_rx *r, int k, unsigned char *addr, uint32_t *scope, int *port) {
        struct sockaddr_storage *ss = &r->addrs[k];
        memset(addr, 0, 16);
        *scope = 0;
        if (ss->ss_family == AF_INET && r->msgs[k].msg_hdr.msg_namelen >= sizeof(struct sockaddr_in)) {
            struct sockaddr_in *a = (struct sockaddr_in *)ss;
            memcpy(addr, &a->sin_addr, 4);
            *port = ntohs(a->sin_port);
            return 4;
        }
        if (ss->ss_family == AF_INET6 && r->msgs[k].msg_hdr.msg_namelen >= sizeof(struct sockaddr_in6)) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
            memcpy(addr, &a->sin6_addr, 16);
            *scope = a->sin6_scope_id;
            *port = ntohs(a->sin6_port);
            return 6;
        }
        return 0;
    }

    /* The source address as text, as Python's socket module writes it (getnameinfo, numeric:
       "fe80::1%eth0" for a scoped IPv6 address); 0 or an EAI_ error. */
    static int fs_rx_source_text(fs_rx *r, int k, char *out, size_t outlen) {
        return getnameinfo((struct sockaddr *)&r->addrs[k], r->msgs[k].msg_hdr.msg_namelen,
                           out, (socklen_t)outlen, NULL, 0, NI_NUMERICHOST);
    }

    static double fs_rx_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }

    static const char *fs_strerror(int e) { return strerror(e); }
    """
    ctypedef struct fs_rx:
        int vlen
    int fs_rx_init(fs_rx* r, int vlen)
    void fs_rx_free(fs_rx* r)
    int fs_rx_recv(fs_rx* r, int fd) nogil
    const char* fs_rx_data(fs_rx* r, int k)
    unsigned int fs_rx_len(fs_rx* r, int k)
    int fs_rx_source(fs_rx* r, int k, unsigned char* addr, uint32_t* scope, int* port)
    int fs_rx_source_text(fs_rx* r, int k, char* out, size_t outlen)
    double fs_rx_now()
    const char* fs_strerror(int e)
    int EINTR


# Source addresses whose text and allowlist answer the receiver keeps (direct-mapped: a spray of
# spoofed sources replaces entries, it never grows the table).
cdef enum:
    RX_CACHE = 1024
    # listener schemes, by what the datagram must start with (collector.server.SCHEME_PREFIXES)
    RX_SFLOW = 1
    RX_IPFIX = 2
    RX_NETFLOW = 3


cdef struct RxSource:
    uint8_t fam                 # 0: empty slot
    uint8_t addr[16]
    uint32_t scope
    PyObject* text              # owned reference: the exporter's address as text
    PyObject* key               # owned reference: the same as bytes (the keyed Kafka modes' key)
    bint allowed


cdef inline uint32_t rx_hash(const uint8_t* a, int fam, uint32_t scope) noexcept:
    cdef uint32_t h = 2166136261u ^ scope
    cdef int i
    for i in range(4 if fam == 4 else 16):
        h = (h ^ a[i]) * 16777619u
    return h ^ (h >> 15)


@cython.final
cdef class Receiver:
    """One listener's socket, read in C (see the top of this file).

    owner (collector.server.Worker) gives: `writer` (the open RecordBatchWriter, the stdout/file
    sinks' LineWriter, or None in the keyed modes), `keyed_mode`, `keyed_cap`, `enricher`,
    `dgram_drops`, and the methods `allowed(ip)`, `keyed_batches()` (the keyed modes' open
    KeyedBatches, or None while the partition count is not known),
    `write_records(batch, done, ip)`, `write_keyed(batch, ip, done)` (these two count
    their own failures: flows of a datagram may be in batches already), `deliver(batch, ip)`, `after_decode(batch, ip)`,
    `refused(index, ip)`, `wrong_protocol(index, ip, data)`, `internal_error(ip, exc, pending)`
    and `socket_error(index, exc)`. `enricher` is read once a read() call (it is set when the
    owner is made); `writer` for each datagram (write_records starts a new one when a batch
    fills)."""

    cdef fs_rx rx
    cdef readonly int fd
    cdef readonly int index
    cdef int kind
    cdef Decoder dec
    cdef object owner
    cdef object drops            # the owner's datagram drop counters by reason (a defaultdict)
    cdef RxSource* cache
    cdef public bint refusing             # shutting down: read and count as dropped, not decoded
    # ... and the owner saves the exporters' sequence state when the stop ends (a state file):
    # a refused datagram that a sequence stream took is held here, not counted in `drops` at
    # once (the owner counts them once its stop ends; see Worker.stop)
    cdef public bint hold_refused
    cdef readonly unsigned long long refused_held
    cdef readonly unsigned long long datagrams
    cdef readonly unsigned long long nbytes
    # the keyed Kafka modes' open batches for this read() call (the owner's keyed_batches():
    # neither the partition count nor the batch size can change while a read runs, the event
    # loop being held), the bytes past which all go to the queue, and whether keys are exporters
    cdef KeyedBatches kb
    cdef Py_ssize_t keyed_cap
    cdef bint key_exporter
    cdef object enr     # the owner's enricher for this read() call

    def __cinit__(self):
        self.rx.vlen = 0
        self.cache = NULL

    def __dealloc__(self):
        cdef int i
        if self.cache != NULL:
            for i in range(RX_CACHE):
                if self.cache[i].text != NULL:
                    Py_DECREF(<object>self.cache[i].text)
                if self.cache[i].key != NULL:
                    Py_DECREF(<object>self.cache[i].key)
            free(self.cache)
        fs_rx_free(&self.rx)

    def __init__(self, int fd, Decoder decoder not None, object owner not None, int index, str scheme not None,
                 int vlen=32):
        """fd: a bound, non-blocking UDP socket (the caller keeps it open while this is used).
        vlen: datagrams a recvmmsg call reads at most."""
        if scheme == "sflow":
            self.kind = RX_SFLOW
        elif scheme == "ipfix":
            self.kind = RX_IPFIX
        elif scheme == "netflow":
            self.kind = RX_NETFLOW
        else:
            raise ValueError(f"unknown listener scheme {scheme!r}")
        if vlen < 1 or vlen > 1024:
            raise ValueError("vlen: 1 to 1024")
        self.fd = fd
        self.index = index
        self.dec = decoder
        self.owner = owner
        self.drops = owner.dgram_drops
        if self.rx.vlen == 0 and fs_rx_init(&self.rx, vlen) != 0:
            raise MemoryError()
        if self.cache == NULL:
            self.cache = <RxSource*>calloc(RX_CACHE, sizeof(RxSource))
            if self.cache == NULL:
                raise MemoryError()

    def read(self, Py_ssize_t budget=128):
        """Read and handle datagrams until the socket has none or `budget` were read (the event
        loop's other work waits meanwhile); returns how many were read. Never raises for what
        a datagram holds: see the owner's methods."""
        cdef int n, k
        cdef Py_ssize_t got = 0
        cdef double now
        self.kb = None
        self.enr = self.owner.enricher
        if self.owner.keyed_mode:
            try:
                self.kb = self.owner.keyed_batches()
            except Exception:   # (each datagram then goes through deliver(), which counts it)
                self.kb = None
            if self.kb is not None:
                self.keyed_cap = self.owner.keyed_cap
                self.key_exporter = self.kb.mode == KEY_EXPORTER
        while got < budget:
            n = fs_rx_recv(&self.rx, self.fd)
            if n <= 0:
                if n == -EINTR:
                    continue
                if n < 0:
                    self.owner.socket_error(self.index, OSError(-n, fs_strerror(-n).decode()))
                break
            now = fs_rx_now()
            for k in range(n):
                self.handle(k, now)
            got += n
            if n < self.rx.vlen:
                break       # the socket is empty: no call to learn it again
        self.kb = None      # (no reference kept between reads: a new count makes new batches)
        self.enr = None
        return got

    cdef RxSource* source(self, int k, int* port):
        """The cache slot of datagram k's source address (filled on a miss); NULL for an
        address family this does not know."""
        cdef uint8_t addr[16]
        cdef uint32_t scope
        cdef int fam = fs_rx_source(&self.rx, k, addr, &scope, port)
        cdef RxSource* s
        cdef char text[128]
        if fam == 0:
            return NULL
        s = &self.cache[rx_hash(addr, fam, scope) & (RX_CACHE - 1)]
        if s.fam == fam and s.scope == scope and memcmp(s.addr, addr, 16) == 0:
            return s
        if fs_rx_source_text(&self.rx, k, text, sizeof(text)) != 0:
            return NULL
        ip = PyUnicode_FromString(text)
        allowed = bool(self.owner.allowed(ip))
        key = ip.encode()
        if s.text != NULL:
            Py_DECREF(<object>s.text)
        if s.key != NULL:
            Py_DECREF(<object>s.key)
        Py_INCREF(ip)
        s.text = <PyObject*>ip
        Py_INCREF(key)
        s.key = <PyObject*>key
        s.fam = <uint8_t>fam
        s.scope = scope
        memcpy(s.addr, addr, 16)
        s.allowed = allowed
        return s

    cdef inline bint scheme_takes(self, const uint8_t* p, unsigned int n) noexcept:
        if self.kind == RX_IPFIX:
            return n >= 2 and p[0] == 0 and p[1] == 10
        if self.kind == RX_SFLOW:
            return n >= 4 and p[0] == 0 and p[1] == 0 and p[2] == 0 and p[3] == 5
        return n >= 2 and p[0] == 0 and (p[1] == 1 or p[1] == 5 or p[1] == 7 or p[1] == 9 or p[1] == 10)

    cdef void handle(self, int k, double now) noexcept:
        cdef const char* p = fs_rx_data(&self.rx, k)
        cdef unsigned int n = fs_rx_len(&self.rx, k)
        cdef int port = 0
        cdef RxSource* s
        cdef object ip
        cdef Py_ssize_t pending = 0, done
        cdef FlowBatch b
        self.datagrams += 1
        self.nbytes += n
        try:
            if self.refusing:
                # its sequence number is taken as received (Decoder.refused): counted dropped
                # by this run, it must not be counted lost as well by the next run, which goes
                # on from the final save after these reads. One a stream took is held until the
                # stop ends (hold_refused): killed before (SIGKILL during the drain), this run
                # never counts it, and the next run, going on from the save made as the refusals
                # began, counts it lost instead; once, either way.
                s = self.source(k, &port)
                if (s != NULL and s.allowed and self.scheme_takes(<const uint8_t*>p, n)
                        and self.dec.refused_c(<const uint8_t*>p, n, <str><object>s.text, port, now)
                        and self.hold_refused):
                    self.refused_held += 1
                else:
                    self.drops["shutdown"] += 1
                return
            s = self.source(k, &port)
            if s == NULL:
                self.drops["internal"] += 1
                return
            ip = <object>s.text
            if not s.allowed:
                self.owner.refused(self.index, ip)
                return
            if not self.scheme_takes(<const uint8_t*>p, n):
                self.owner.wrong_protocol(self.index, ip, PyBytes_FromStringAndSize(p, n))
                return
            data = PyBytes_FromStringAndSize(p, n)
            try:
                b = self.dec.decode_c(data, ip, port, now)
                pending = b.n
                if pending:
                    wr = self.owner.writer
                    if type(wr) is RecordBatchWriter:
                        done = (<RecordBatchWriter>wr).append_c(b, self.enr, 0)
                        if done < pending:
                            self.owner.write_records(b, done, ip)
                    elif type(wr) is LineWriter:
                        done = (<LineWriter>wr).append_c(b, self.enr, 0)
                        if done < pending:
                            self.owner.write_records(b, done, ip)
                    elif self.kb is not None:
                        done = self.kb.append_c(b, self.enr, 0, <bytes>s.key if self.key_exporter else None)
                        if done < pending or self.kb.nbytes > self.keyed_cap:
                            self.owner.write_keyed(b, ip, done)
                    else:
                        self.owner.deliver(b, ip)
                    pending = 0
                if b._counters is not None or b._dropped is not None:
                    self.owner.after_decode(b, ip)
            except Exception as exc:
                self.owner.internal_error(ip, exc, pending)
        except Exception:       # the owner's own handlers failing: counted, never raised
            try:
                self.drops["internal"] += 1
            except Exception:
                pass
