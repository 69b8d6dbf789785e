# JSON lines in C: the stdout and file sinks' open batch (decoders.LineWriter), filled by the
# Receiver as RecordBatchWriter is for Kafka. Each flow is encode_flow's JSON object followed
# by a newline, the same bytes FlowBatch.to_json() gives one by one.


@cython.final
cdef class LineWriter:
    """Flows as JSON lines, each followed by a newline, up to max_bytes (a single line larger
    than that alone)."""

    cdef Buf buf
    cdef readonly Py_ssize_t records
    cdef readonly Py_ssize_t max_bytes

    def __cinit__(self):
        self.buf.p = NULL
        self.buf.n = 0
        self.buf.cap = 0

    def __dealloc__(self):
        pool_give(&self.buf)

    def __init__(self, Py_ssize_t max_bytes=262144):
        if max_bytes < 1024:
            raise ValueError("max_bytes: at least 1024")
        self.max_bytes = max_bytes
        self.records = 0
        if self.buf.p == NULL:
            pool_take(&self.buf, max_bytes + 4096)
        else:
            buf_reserve(&self.buf, max_bytes + 4096)
        self.buf.n = 0

    @property
    def size(self):
        """Bytes of the lines so far."""
        return self.buf.n

    def append(self, FlowBatch bt, object enricher=None, Py_ssize_t start=0):
        """Append bt's flows from index `start` as lines; stop before max_bytes would be passed.
        Returns the index of the first flow not appended (len(bt) when all fit); a line into an
        empty writer is always appended, so progress is always made."""
        return self.append_c(bt, enricher, start)

    cdef Py_ssize_t append_c(self, FlowBatch bt, object enricher, Py_ssize_t start) except -1:
        """append(), called from C (the Receiver)."""
        cdef Py_ssize_t i, rec
        cdef bytes head
        cdef Buf* o = &self.buf
        if start >= bt.n:
            return bt.n
        cdef Py_ssize_t at = o.n, had = self.records
        head = batch_head(bt)
        enrich_batch(bt, start, enricher)
        for i in range(start, bt.n):
            rec = o.n
            try:
                encode_flow(o, bt, &bt.flows[i], enricher, PyBytes_AS_STRING(head), len(head))
            except BaseException:
                # (an enricher bug, memory): the call's lines are taken back, a partial one too,
                # so that what stays is whole lines and the caller counts this call's flows dropped
                o.n = at
                self.records = had
                raise
            if self.records and o.n + 1 > self.max_bytes:
                o.n = rec
                if enricher is not None:
                    enrich_uncount()
                return i
            buf_reserve(o, 1)
            o.p[o.n] = 10         # the line's newline
            o.n += 1
            self.records += 1
        return bt.n

    def lines(self):
        """The lines, as one bytes object."""
        return PyBytes_FromStringAndSize(self.buf.p, self.buf.n)

    def trim(self):
        """Fit the memory to the lines before they wait in a queue (as RecordBatchWriter.trim):
        under half of the buffer used, they move to an allocation of their own size and the big
        buffer goes back to the pool."""
        buf_fit(&self.buf)

    def release(self):
        """Give the memory back once the lines were taken (the next writer reuses it); the
        count stays (the records are still accounted for)."""
        pool_give(&self.buf)
