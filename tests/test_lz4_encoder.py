"""flowscope's own LZ4 block encoder (decoders/packer.pxi fs_fa_block, kafka.compression_level 0
for lz4, the default): it looks for matches only at JSON field boundaries, so its output must be
checked against decoders it did not write. python-lz4 (liblz4's LZ4_decompress_safe) and
librdkafka (what Kafka consumers in C use) read its frames back; a walker written here from the
LZ4 block format description checks the rules a decoder may not check (the end-of-block rules,
offsets inside the block)."""

from __future__ import annotations

import os
import random
import struct
from typing import Any

import lz4.frame as lz4f
import orjson
import pytest
from conftest import make_v5, send_udp, v5_key
from decoders._core import lz4_frame_of

from collector.sinks import _codec, _lz4_frame_header

HDR = _lz4_frame_header()


def _blocks(frame: bytes) -> list[tuple[bool, bytes]]:
    """The frame's blocks: (compressed, bytes), after the 7-byte header, up to the end mark."""
    assert frame[:7] == HDR
    pos, out = 7, []
    while True:
        (word,) = struct.unpack_from("<I", frame, pos)
        pos += 4
        if word == 0:
            assert pos == len(frame)
            return out
        size = word & 0x7FFFFFFF
        out.append((not word & 0x80000000, frame[pos:pos + size]))
        pos += size


def _length(block: bytes, i: int, nibble: int) -> tuple[int, int]:
    """A token nibble's length: 15 means bytes of 255 follow until one that is not."""
    n = nibble
    while nibble == 15:
        nibble = 15 if block[i] == 255 else 0
        n += block[i]
        i += 1
    return n, i


def _walk(block: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
    """Decode one LZ4 block by the format's description (token: literal length and match
    length - 4 in its nibbles, 15 meaning more bytes of 255 follow; literals; a 2-byte
    little-endian offset; the last sequence has literals only): the output and its matches as
    (output position, offset, length)."""
    out = bytearray()
    matches = []
    i = 0
    while True:
        tok = block[i]
        i += 1
        lit, i = _length(block, i, tok >> 4)
        out += block[i:i + lit]
        i += lit
        if i == len(block):
            return bytes(out), matches
        off = block[i] | block[i + 1] << 8
        i += 2
        ml, i = _length(block, i, tok & 15)
        ml += 4
        assert 1 <= off <= len(out), f"offset {off} outside the {len(out)} bytes decoded so far"
        matches.append((len(out), off, ml))
        for _ in range(ml):
            out.append(out[-off])


def _flow_json(rng: random.Random, n: int) -> bytes:
    """Flow records as the collector writes them (orjson, NetObserv keys), values drawn at random."""
    out = []
    for _ in range(n):
        f: dict[str, Any] = {"FlowProtocol": "ipfix", "AgentIP": f"10.0.{rng.randrange(4)}.10",
                             "SrcAddr": f"10.128.{rng.randrange(256)}.{rng.randrange(256)}",
                             "DstAddr": f"10.129.{rng.randrange(256)}.{rng.randrange(256)}",
                             "SrcPort": rng.randrange(65536), "DstPort": rng.choice([53, 443, 6379, 8080]),
                             "Proto": rng.choice([6, 17]), "Bytes": rng.randrange(10**7),
                             "Packets": rng.randrange(10**4), "TimeFlowStartMs": 1780000000000 - rng.randrange(60000),
                             "TimeFlowEndMs": 1780000000000, "Interfaces": [f"veth{rng.randrange(999)}"] * rng.randrange(1, 3)}
        if rng.randrange(2):
            f.update({"SrcK8S_Name": f"api-{rng.randrange(50)}-7d9f", "SrcK8S_Namespace": f"team-{rng.randrange(9)}",
                      "SrcK8S_OwnerType": "Deployment", "SrcK8S_HostName": f"worker-{rng.randrange(9)}.internal"})
        out.append(orjson.dumps(f))
    return b"\n".join(out)


def _inputs() -> list[tuple[str, bytes]]:
    rng = random.Random(11)
    flows = _flow_json(rng, 2000)
    out = [(f"flows[:{n}]", flows[:n]) for n in (0, 1, 5, 12, 13, 16, 17, 18, 21, 40, 65535, 65536, 65537, 131073)]
    out += [("flows", flows), ("random", os.urandom(150000)), ("commas", b"," * 70000),
            ("braces and commas", bytes(rng.choice(b',{:"x') for _ in range(100000))),
            ("one byte", b"x" * 70000), ("period 10", b"abcdefghij" * 9000),
            ("long literals then a long match", os.urandom(300) + b',"k":' + os.urandom(4000) + b',"k":'
             + b"y" * 5000 + b',"k":' + b"y" * 5000 + os.urandom(64)),
            ("flows with random bytes between", b"".join(flows[i:i + 700] + os.urandom(rng.randrange(40))
                                                         for i in range(0, 200000, 700)))]
    for k in range(40):  # short flow-like pieces, every length near the end-of-block limits
        out.append((f"pieces {k}", b"".join(b',"k%d":%d' % (rng.randrange(9), rng.randrange(99))
                                            for _ in range(rng.randrange(1, 12)))[:rng.randrange(0, 60)]))
    return out


@pytest.mark.parametrize("name,data", _inputs(), ids=[n for n, _ in _inputs()])
def test_frames_read_back_with_liblz4_and_keep_the_block_rules(name: str, data: bytes) -> None:
    """Whatever the input, the frame (when smaller than the input) is one liblz4 decodes to the
    input, and each compressed block keeps LZ4's end-of-block rules: its last 5 bytes are
    literals and no match starts in its last 12 bytes (decoders are allowed to rely on both),
    every offset points inside what the block decoded so far."""
    frame = lz4_frame_of(data, HDR)
    if frame is None:  # not smaller (the collector then sends the records uncompressed): only
        assert name == "random" or len(data) < 64, name  # where nothing repeats, or too short
        return
    assert len(frame) < len(data)
    assert lz4f.decompress(frame) == data
    blocks = _blocks(frame)
    assert len(blocks) == -(-len(data) // 65536)
    got = b""
    for i, (compressed, body) in enumerate(blocks):
        size = min(65536, len(data) - 65536 * i)
        if not compressed:
            assert body == data[65536 * i:65536 * i + size]
            got += body
            continue
        out, matches = _walk(body)
        assert out == data[65536 * i:65536 * i + size]
        for pos, _, ml in matches:
            assert pos < size - 12 and pos + ml <= size - 5, (pos, ml, size)
        got += out
    assert got == data


def test_flow_json_compresses_as_well_as_liblz4_fast_mode() -> None:
    """On the collector's own records (an enriched batch as the pipeline benchmark builds it,
    and the plain one) the field-anchored blocks shrink the records about as much as liblz4's
    fast mode (level 1, what level 0 was before): a hash or a matching bug that made it store
    blocks raw, or find only short matches, would still decode correctly but fail here."""
    from benchmarks.broker_ceiling import batches

    for enriched in (False, True):
        raw = batches(enriched, 1, 1 << 20)[0].records_bytes()
        ours = lz4_frame_of(raw, HDR)
        theirs = lz4_frame_of(raw, HDR, 1)
        assert ours is not None and theirs is not None
        assert lz4f.decompress(ours) == raw
        assert all(c for c, _ in _blocks(ours))  # every 64 KiB block of flows shrinks
        assert len(ours) < len(raw) / 4
        assert len(ours) < len(theirs) * 1.15, (enriched, len(raw), len(ours), len(theirs))


@pytest.mark.parametrize("shared", [1, 3, 7, 8, 9, 15, 16, 17, 40])
def test_a_match_reaches_back_over_the_literals_it_shares(shared: int) -> None:
    """A key matched at its ',' is extended backwards over the literals before it that equal
    the bytes before the earlier key: the suffix two values share (a host name's domain) is
    part of the match, whatever its length against the encoder's 8-byte steps, and never
    reaches into the literals' first differing byte."""
    suffix = bytes(ord("a") + i % 26 for i in range(shared))
    first = b'{"Host":"q1' + suffix + b'","Proto":6,"SrcPort":53}\n'
    second = b'{"Host":"zz' + suffix + b'","Proto":6,"SrcPort":53}\n'
    data = first + second + b"." * 40          # room past the end-of-block limits
    frame = lz4_frame_of(data, HDR)
    assert frame is not None and lz4f.decompress(frame) == data
    (compressed, body), = _blocks(frame)
    assert compressed
    out, matches = _walk(body)
    assert out == data
    start = len(first) + len(b'{"Host":"zz')    # the suffix's first byte in the second record
    # the match found at ',"Proto"' starts where the shared bytes start (the '1'/'z' before
    # them differ), taking the suffix and the '"' before the comma
    assert any(pos == start and off == len(first) for pos, off, _ in matches), (matches, start)


def test_level_zero_is_the_field_anchored_encoder_and_one_is_liblz4() -> None:
    """kafka.compression_level 0 (the default) writes flowscope's frames, 1-2 liblz4's fast mode:
    both are the same frame format, and they differ (each encoder's own matches)."""
    raw = _flow_json(random.Random(5), 3000)
    z0 = bytes(_codec("lz4", 0)[1](memoryview(raw)))  # type: ignore[misc]
    z1 = bytes(_codec("lz4", 1)[1](memoryview(raw)))  # type: ignore[misc]
    assert z0 == lz4_frame_of(raw, HDR) and z0 != z1
    assert z0[:7] == z1[:7] == HDR
    assert lz4f.decompress(z0) == lz4f.decompress(z1) == raw
    assert _codec("lz4", 0)[1](memoryview(os.urandom(5000))) == b""  # not smaller: kept uncompressed


@pytest.mark.parametrize("level,thread", [(0, "off"), (0, "on"), (1, "on")])
def test_a_real_broker_and_librdkafka_read_the_collectors_lz4_batches(broker: Any, collector: Any, level: int,
                                                                       thread: str) -> None:
    """The collector's lz4 batches (flowscope's encoder at level 0, on the event loop or on the
    compression thread; liblz4's at level 1) go through Tansu and librdkafka's consumer (its own
    LZ4 frame decoder and CRC check) reads every flow back as sent."""
    import uuid

    from test_collector_kafka import _rdkafka_read

    t = "t-" + uuid.uuid4().hex[:10]
    c = collector(["--kafka-brokers", broker.bootstrap, "--kafka-topic", t, "--kafka-compression", "lz4",
                   "--kafka-compression-level", str(level), "--kafka-compression-thread", thread,
                   "--kafka-batch-bytes", "256KB"])
    send_udp([make_v5(i, 30, i * 30) for i in range(200)], c.port)
    got = _rdkafka_read(broker.bootstrap, t, 6000)
    assert len(got) == 6000
    flows = [orjson.loads(v) for _, _, _, _, v in got]
    assert len({v5_key(f) for f in flows}) == 6000
    c.wait_value("flowscope_flows_delivered_total", 6000)
    raw = c.value("flowscope_kafka_compression_bytes_total", side="in")
    packed = c.value("flowscope_kafka_compression_bytes_total", side="out")
    assert raw > 6000 * 300 and 0 < packed < raw / 3
    assert c.value("flowscope_kafka_errors_total", kind="compress") == 0
    assert c.stop() == 0
