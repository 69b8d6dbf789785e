# sFlow v5 (placeholder until the sFlow decoder lands).

cdef int decode_sflow(Decoder dec, ExporterState ex, FlowBatch b, Reader* r) except -1:
    b.proto_kind = PROTO_SFLOW5
    raise_decode("unsupported", 0, "sFlow v5 not decoded yet")
