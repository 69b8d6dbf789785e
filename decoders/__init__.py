"""flowscope decoders: NetFlow v5, NetFlow v9, IPFIX and sFlow v5 (compiled: decoders._core)."""

from decoders._core import (
    EVICTED,
    DecodeError,
    Decoder,
    FlowBatch,
    KeyedBatches,
    LineWriter,
    Receiver,
    RecordBatchWriter,
    addr_text,
    buffer_pool_stats,
    murmur2_positive,
    split_batch,
)
from decoders.config import DecoderConfig

__all__ = ["EVICTED", "DecodeError", "Decoder", "DecoderConfig", "FlowBatch", "KeyedBatches", "LineWriter", "Receiver",
           "RecordBatchWriter", "addr_text", "buffer_pool_stats", "murmur2_positive", "split_batch"]
