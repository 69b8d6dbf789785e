"""flowscope decoders: NetFlow v5, NetFlow v9, IPFIX and sFlow v5 (compiled: decoders._core)."""

from decoders._core import EVICTED, DecodeError, Decoder, FlowBatch, RecordBatchWriter, addr_text
from decoders.config import DecoderConfig

__all__ = ["EVICTED", "DecodeError", "Decoder", "DecoderConfig", "FlowBatch", "RecordBatchWriter", "addr_text"]
