# The one bounds-checked reader every decoder reads through.
#
# A Reader is a view of a datagram: [buf, buf+end). `rd_take` is the only way to obtain a pointer
# into the datagram; it checks the bounds and raises DecodeError("truncated") out of line, so
# the inline fast path is a compare and an add. The big-endian loaders (`be16`, `be32`, ...)
# only ever see pointers that `rd_take` handed out. Network byte order lives here, nowhere else.

from libc.stdint cimport int8_t, uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t, UINT64_MAX
from libc.string cimport memcmp, memcpy, memmove, memset


cdef struct Reader:
    const uint8_t* buf
    Py_ssize_t pos
    Py_ssize_t end


class DecodeError(Exception):
    """A datagram (or part of it) could not be decoded.

    `reason` is a short label used in metrics (truncated, bad_version, bad_length, bad_set,
    bad_template, template_limit, options_limit, too_large, rate_limited, bad_sample, unsupported); `offset` is the byte
    offset in the datagram where decoding stopped; `detail` names the protocol context
    (version, domain, template id, sample type).
    """

    def __init__(self, reason, offset, detail=""):
        super().__init__(f"{reason} at offset {offset}: {detail}")
        self.reason = reason
        self.offset = offset
        self.detail = detail


cdef int raise_decode(str reason, Py_ssize_t offset, str detail) except -1:
    raise DecodeError(reason, offset, detail)


cdef int _raise_truncated(Reader* r, Py_ssize_t n) except -1:
    raise DecodeError("truncated", r.pos, f"need {n} bytes, {r.end - r.pos} left")


cdef inline void rd_init(Reader* r, const uint8_t* buf, Py_ssize_t start, Py_ssize_t end) noexcept:
    r.buf = buf
    r.pos = start
    r.end = end


cdef inline const uint8_t* rd_take(Reader* r, Py_ssize_t n) except NULL:
    cdef const uint8_t* p
    if n < 0 or r.pos + n > r.end:
        _raise_truncated(r, n)
        return NULL
    p = r.buf + r.pos
    r.pos += n
    return p


cdef inline Py_ssize_t rd_left(Reader* r) noexcept:
    return r.end - r.pos


cdef inline int rd_sub(Reader* r, Reader* sub, Py_ssize_t n) except -1:
    """Carve the next n bytes of r into sub (a set, a sample, a record) and skip them in r."""
    cdef const uint8_t* p = rd_take(r, n)
    sub.buf = r.buf
    sub.pos = p - r.buf
    sub.end = sub.pos + n
    return 0


cdef inline uint16_t be16(const uint8_t* p) noexcept:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t be32(const uint8_t* p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t be64(const uint8_t* p) noexcept:
    return (<uint64_t>be32(p) << 32) | be32(p + 4)


cdef inline uint16_t be16r(const uint8_t* p, Py_ssize_t n) noexcept:
    """An unsigned16 element in 2 bytes or reduced to 1 (the template allows only those)."""
    return be16(p) if n == 2 else p[0]


cdef inline uint32_t be32r(const uint8_t* p, Py_ssize_t n) noexcept:
    """An unsigned32 element in 4 bytes or reduced to 1-3 (the template allows only those)."""
    return be32(p) if n == 4 else <uint32_t>beN(p, n)


cdef inline double be_float(const uint8_t* p, Py_ssize_t n) noexcept:
    """A float64 element in 8 bytes, or reduced to float32 in 4 (RFC 7011 6.2)."""
    cdef uint64_t u8
    cdef uint32_t u4
    cdef double d
    cdef float f
    if n == 8:
        u8 = be64(p)
        memcpy(&d, &u8, 8)
        return d
    u4 = be32(p)
    memcpy(&f, &u4, 4)
    return f


cdef inline uint64_t beN(const uint8_t* p, Py_ssize_t n) noexcept:
    """Unsigned big-endian integer of 1..8 bytes (RFC 7011 6.2 reduced-size encoding)."""
    cdef uint64_t v = 0
    cdef Py_ssize_t i
    # The common widths without a loop: counters are 8 or 4 bytes, ports 2, flags 1.
    if n == 8:
        return be64(p)
    if n == 4:
        return be32(p)
    if n == 2:
        return be16(p)
    if n == 1:
        return p[0]
    if n > 8:
        p += n - 8
        n = 8
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef inline uint8_t rd_u8(Reader* r) except? 0xFF:
    return rd_take(r, 1)[0]


cdef inline uint16_t rd_u16(Reader* r) except? 0xFFFF:
    return be16(rd_take(r, 2))


cdef inline uint32_t rd_u32(Reader* r) except? 0xFFFFFFFF:
    return be32(rd_take(r, 4))


cdef inline uint64_t rd_u64(Reader* r) except? 0xFFFFFFFFFFFFFFFF:
    return be64(rd_take(r, 8))
