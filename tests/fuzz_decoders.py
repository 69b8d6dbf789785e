"""Coverage-guided fuzzing of the decoders and of everything that encodes what they decoded, with
atheris (`make fuzz`; not part of `make test`).

Input format. An input is a run of datagrams, each after a 2-byte big-endian prefix whose low
11 bits are its length (at most 16 datagrams; an input without a whole prefix is one datagram).
The prefixes' top 5 bits, unused by the length, choose how it is decoded, so that the fuzzer
can reach every configuration and seeds written as plain length prefixes keep the defaults:

  first prefix  bit 11 split_biflows, bit 12 keep_options=False, bit 13 dedup,
                bit 14 KeyedBatches mode "conversation" (else "exporter"),
                bit 15 the exporter is 2001:db8::1 (else 192.0.2.1)
  every prefix  bit 11 the datagram comes from the other UDP source port,
                bits 12-13 its receive time: +1 s, the same, +1 h, or 10 s back

All datagrams of an input go to one Decoder, so the fuzzer reaches template state (a template
in one datagram, data in the next) and state across datagrams (sequences, options-learned rates
and clocks, duplicates).

What must hold, for every decoded batch (any failure is a crash, with the input saved by
libFuzzer as crash-*):
  - decode() never raises; a batch's error has a documented reason (REASONS);
  - to_json() without and with an enricher (the compiled one and the pure-Python reference,
    enrich.Enricher.from_objects) gives one JSON object per flow that orjson parses; both
    enrichers give the same bytes; the enriched flow keeps every field of the plain one
    (FlowDirection aside: the enricher writes it, node-relative); to_dicts() is what they parse to;
    the compiled enricher counts each flow once as identified or unidentified, through every path;
  - RecordBatchWriter.append (small batches, so flows spill over into the next batch) takes every
    flow exactly once, each batch within max_bytes unless it holds one record; request() frames
    a Produce request whose sizes, CRC-32C, record count, varints, keys and values are right
    (the values are to_json's bytes, in order), compressed (gzip) or not; build() is the
    request's batch;
  - KeyedBatches.append / take / take_all deliver every flow once, in the partition its key
    hashes to (Kafka's murmur2), with the key collector.sinks would give it;
  - a second decoder fed the same datagrams gives the same flows and errors (no uninitialised
    memory or leftovers of an earlier batch: AddressSanitizer does not see those);
and at the end of the input:
  - every exporter keeps at most max_templates_per_exporter templates, the decoder's
    template_fields is the sum of its templates' fields, and with 24 per template within max_template_fields;
  - export_state() survives a JSON round trip and import_state() into a fresh decoder (nothing
    skipped, every template loaded), whose own export_state() is the same; importing it again
    with only_missing loads nothing.

The sFlow header parsers (sampled headers: Ethernet, VLAN, MPLS, IPv4/6, tunnels) and the
PSAMP packet sections are reached through decode(); seeds carry them (see write_seeds).

Seeds (written to tests/fuzz/seeds on the first run, or with --write-seeds): every pair of
consecutive datagrams of every bundled capture and of the shared corpus
(FLOWSCOPE_SHARED_CORPUS, when set), plus the datagrams each unit test of the decoders feeds
one Decoder (PSAMP reports, biflows, options, sFlow headers and tunnels that no capture has),
recorded by running those tests with a recording Decoder (their DecoderConfig's split_biflows,
keep_options and dedup become the first prefix's bits): run --write-seeds with the normal
(non-fuzz) build. Findings are written by libFuzzer as crash-* files; record the run in
benchmarks/RESULTS.md's fuzzing section with the command and budget.

    python tests/fuzz_decoders.py -max_total_time=300 [corpus_dir]
    python tests/fuzz_decoders.py --write-seeds
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # tests.support, collector (run as a script from any directory)

with atheris.instrument_imports():
    import orjson
    from decoders._core import crc32c

    import enrich
    from decoders import Decoder, DecoderConfig, KeyedBatches, RecordBatchWriter, murmur2_positive

from collector.sinks import conversation_key  # noqa: E402
from tests.support.fake_kube import node, pod, replicaset, service  # noqa: E402

REASONS = {"truncated", "bad_version", "bad_length", "bad_set", "bad_template", "template_limit",
           "options_limit", "too_large", "bad_sample", "unsupported", "template_mismatch"}
SEEDS = Path(__file__).resolve().parent / "fuzz" / "seeds"
MAX_TEMPLATES = 32
MAX_TEMPLATE_FIELDS = 4096
BATCH_BYTES = 1024          # RecordBatchWriter's minimum: flows spill over into further batches
PARTITIONS = 3
RECV0 = 1_700_000_000.0
STEPS = (1.0, 0.0, 3600.0, -10.0)
EXPORTERS = ("192.0.2.1", "2001:db8::1")


def split(data: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """(first prefix's flag bits, [(the datagram's flag bits, datagram)]), see the docstring."""
    out, pos = [], 0
    while pos + 2 <= len(data) and len(out) < 16:
        v = struct.unpack_from("!H", data, pos)[0]
        pos += 2
        out.append((v >> 11, data[pos:pos + (v & 0x7FF)]))
        pos += v & 0x7FF
    if not out:
        return 0, [(0, data)]
    return out[0][0], out


def _enricher(compiled: bool) -> enrich.Enricher:
    """Pods, nodes and services on the addresses the seeds and the unit tests use most (the
    exporters are nodes, so the agent lookup hits too)."""
    pods = [pod("web-1", "shop", ips=["10.244.0.5", "fd00::5"], host_ip="192.0.2.1", owner=("ReplicaSet", "web-rs")),
            pod("db-1", "shop", ips=["10.244.1.5"], node="node-b", host_ip="10.0.0.2"),
            pod("a", "x", ips=["10.0.0.1"], node="node-b", host_ip="10.0.0.2"),
            pod("b", "x", ips=["192.168.0.1", "2001:db8::2"], node="node-a", host_ip="192.0.2.1"),
            pod("c", "x", ips=["172.16.0.1"], host_network=True, node="node-a", host_ip="192.0.2.1"),
            pod("gone", "x", ips=["10.244.2.9"], phase="Succeeded")]
    nodes = [node("node-a", internal=["192.0.2.1", "2001:db8::1"], zone="z1",
                  subnets={"default": ["10.244.0.0/24", "fd00::/64"]}),
             node("node-b", internal=["10.0.0.2"], external=["198.51.100.7"], zone="z2")]
    services = [service("svc", "shop", ips=["172.30.0.10", "fd00:30::10"]), service("dns", "kube-system",
                                                                                   ips=["10.0.0.10"])]
    rs = [replicaset("web-rs", "shop", owner=("Deployment", "web"))]
    return enrich.Enricher.from_objects(pods=pods, nodes=nodes, services=services, replicasets=rs,
                                        config=enrich.EnrichConfig(cluster_name="fuzz"), clock=lambda: RECV0,
                                        compiled=compiled)


ENRICHERS: tuple[enrich.Enricher, enrich.Enricher] | None = None


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Kafka record fields) at pos: (value, next position)."""
    shift = z = 0
    while True:
        c = buf[pos]
        pos += 1
        z |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            break
        if shift > 63:
            raise AssertionError("varint longer than 10 bytes")
    return (z >> 1) ^ -(z & 1), pos


def _records(batch: bytes) -> list[tuple[bytes | None, bytes]]:
    """Check a v2 record batch and return its records as (key, value)."""
    base_offset, blen, _epoch, magic, crc, attrs = struct.unpack_from("!qiibIh", batch, 0)
    assert base_offset == 0 and magic == 2 and blen == len(batch) - 12, (base_offset, magic, blen, len(batch))
    assert crc == crc32c(batch[21:]), "batch CRC-32C"
    last_delta, _t0, _tmax, _pid, _pepoch, _bseq, count = struct.unpack_from("!iqqqhii", batch, 23)
    assert last_delta == count - 1 and count > 0, (last_delta, count)
    body = batch[61:]
    if attrs & 7 == 1:
        body = gzip.decompress(body)
    else:
        assert attrs & 7 == 0, attrs
    out, pos = [], 0
    for k in range(count):
        rlen, pos = _varint(body, pos)
        end = pos + rlen
        assert body[pos] == 0, "record attributes"
        ts, p = _varint(body, pos + 1)
        off, p = _varint(body, p)
        klen, p = _varint(body, p)
        assert ts == 0 and off == k, (ts, off, k)
        key = None if klen < 0 else body[p:p + klen]
        p += max(klen, 0)
        vlen, p = _varint(body, p)
        value = body[p:p + vlen]
        p += vlen
        nh, p = _varint(body, p)
        assert nh == 0 and p == end and len(value) == vlen, (nh, p, end)
        out.append((key, value))
        pos = end
    assert pos == len(body), "bytes after the last record"
    return out


def _request(w: RecordBatchWriter, corr: int) -> bytes:
    """w's Produce request: check its framing and return the batch it carries."""
    req = bytes(w.request(corr, b"fuzz", -1, 1000, b"flows", 1))
    size, api_key, version, c, clen = struct.unpack_from("!ihhih", req, 0)
    assert size == len(req) - 4 and api_key == 0 and version == 3 and c == corr, (size, api_key, version, c)
    p = 14 + clen
    txn, acks, timeout, ntopics, tlen = struct.unpack_from("!hhiih", req, p)
    assert (txn, acks, timeout, ntopics) == (-1, -1, 1000, 1)
    p += 14 + tlen
    nparts, part, blen = struct.unpack_from("!iii", req, p)
    assert (nparts, part, blen) == (1, 1, len(req) - p - 12)
    return req[p + 12:]


def _check_writer(bt, enricher, values: list[bytes], key: bytes | None, compress: bool) -> None:
    start, n, writers = 0, len(bt), []
    while start < n:
        w = RecordBatchWriter(BATCH_BYTES, key)
        nxt = w.append(bt, enricher, start)
        assert start < nxt <= n and w.records == nxt - start, (start, nxt, n, w.records)
        assert w.records == 1 or w.size <= BATCH_BYTES, (w.records, w.size)
        writers.append(w)
        start = nxt
    got: list[bytes] = []
    for i, w in enumerate(writers):
        packed = compress and i == 0 and w.compress(1, lambda v: gzip.compress(bytes(v), 1))
        batch = _request(w, i)
        assert (batch[22] & 7) == (1 if packed else 0)
        assert bytes(w.build()) == batch, "build() is the request's batch"
        assert _request(w, i + 1000) == batch, "a retry frames the same batch"
        recs = _records(batch)
        assert all(k == key for k, _v in recs)
        got += [v for _k, v in recs]
        w.release()
    assert got == values, "Kafka record values are to_json's"


def _check_keyed(bt, enricher, values: list[bytes], mode: str, exporter: bytes) -> None:
    kb = KeyedBatches(PARTITIONS, BATCH_BYTES, mode)
    taken: list[tuple[int, RecordBatchWriter]] = []
    start, n = 0, len(bt)
    while start < n:
        nxt = kb.append(bt, enricher, start, exporter)
        assert start <= nxt <= n
        if nxt < n:
            assert 0 <= kb.full < PARTITIONS
            w = kb.take(kb.full)
            assert w is not None and w.records, "the full partition's batch holds flows"
            taken.append((kb.full, w))
        start = nxt
    open_ = [w for w in kb.writers if w is not None and w.records]
    assert kb.records == sum(w.records for w in open_) and kb.size == sum(w.size for w in open_), \
        (kb.records, kb.size, [(w.records, w.size) for w in open_])
    taken += kb.take_all()
    assert kb.records == 0 and kb.size == 0
    got = []
    for slot, w in taken:
        assert w.records == 1 or w.size <= BATCH_BYTES, (w.records, w.size)
        for key, value in _records(w.build()):
            want = exporter if mode == "exporter" else conversation_key(value)
            assert key == want, (key, want)
            assert murmur2_positive(key) % PARTITIONS == slot, "partition of the key"
            got.append(value)
        w.release()
    assert sorted(got) == sorted(values), "every flow once in the keyed batches"


def _check_batch(bt, flags: int, exporter: str) -> None:
    if bt.error is not None and bt.error[0] not in REASONS:
        raise AssertionError(f"unknown error reason {bt.error!r}")
    assert ENRICHERS is not None
    fast, ref = ENRICHERS
    n = len(bt)
    plain = bt.to_json()
    counted = _flows_counted(fast)
    enriched = bt.to_json(fast)
    assert _flows_counted(fast) - counted == n, "each flow counted once as identified or not"
    assert isinstance(plain, list) and len(plain) == n and len(enriched) == n, (len(plain), len(enriched), n)
    assert bt.to_json(ref) == enriched, "compiled and pure-Python enrichers disagree"
    pd = [orjson.loads(j) for j in plain]
    ed = [orjson.loads(j) for j in enriched]
    for p, e in zip(pd, ed, strict=True):
        assert isinstance(p, dict) and isinstance(e, dict)
        lost = {k for k in p if k != "FlowDirection" and e.get(k, KeyError) != p[k]}
        assert not lost, f"enrichment changed or dropped {lost}"
    assert bt.to_dicts() == pd and bt.to_dicts(fast) == ed
    if not n:
        return
    _check_writer(bt, None, plain, None, False)
    counted = _flows_counted(fast)
    _check_writer(bt, fast, enriched, exporter.encode(), bool(flags & 2))
    # a flow that did not fit a batch is encoded again into the next: counted once all the same
    assert _flows_counted(fast) - counted == n, "RecordBatchWriter: each flow counted once"
    counted = _flows_counted(fast)
    _check_keyed(bt, fast, enriched, "conversation" if flags & 8 else "exporter", exporter.encode())
    assert _flows_counted(fast) - counted == n, "KeyedBatches: each flow counted once"


def _flows_counted(e: enrich.Enricher) -> int:
    st = e.stats()
    return st["flows_identified"] + st["flows_unidentified"]


def _check_state(dec: Decoder, cfg: DecoderConfig) -> None:
    stats = dec.stats()
    for ip, st in stats.items():
        assert st["templates"] <= MAX_TEMPLATES, f"{ip}: {st['templates']} templates"
    state = orjson.loads(orjson.dumps(dec.export_state()))
    nfields = sum(len(t["fields"]) for ex in state["exporters"].values() for t in ex["templates"])
    ntpl = sum(len(ex["templates"]) for ex in state["exporters"].values())
    assert dec.template_fields == nfields and dec.template_count == ntpl, (dec.template_fields, nfields)
    assert nfields + 24 * ntpl <= MAX_TEMPLATE_FIELDS, (nfields, ntpl)
    fresh = Decoder(cfg)
    r = fresh.import_state(state)
    assert r == {"templates": ntpl, "skipped": 0}, (r, ntpl)
    again = orjson.loads(orjson.dumps(fresh.export_state()))

    def canon(s):
        return {ip: {k: sorted(orjson.dumps(x) for x in v) for k, v in ex.items()} for ip, ex in s["exporters"].items()}

    assert canon(again) == canon(state), "export_state -> import_state -> export_state changed the state"
    assert fresh.import_state(state, only_missing=True)["templates"] == 0


def one_input(data: bytes) -> None:
    flags, dgrams = split(data)
    cfg = DecoderConfig(max_templates_per_exporter=MAX_TEMPLATES, max_template_fields=MAX_TEMPLATE_FIELDS,
                        split_biflows=bool(flags & 1), keep_options=not flags & 2, dedup=bool(flags & 4))
    exporter = EXPORTERS[(flags >> 4) & 1]
    dec, again = Decoder(cfg), Decoder(cfg)
    t = RECV0
    for dflags, dgram in dgrams:
        t += STEPS[(dflags >> 1) & 3]
        bt = dec.decode(dgram, exporter, 4739 + (dflags & 1), t)
        if not cfg.keep_options:
            assert not bt.options, "keep_options=False: no options dicts"
        _check_batch(bt, flags, exporter)
        # the same datagram into a second decoder in the same state gives the same flows (no
        # uninitialised memory or leftovers of an earlier batch, which ASan does not see)
        b2 = again.decode(dgram, exporter, 4739 + (dflags & 1), t)
        assert b2.to_json() == bt.to_json() and b2.error == bt.error, "decoding is not deterministic"
    _check_state(dec, cfg)


# ---------------------------------------------------------------- seeds

def _blob(dgrams: list[bytes], flags: int = 0) -> bytes:
    out = b"".join(struct.pack("!H", len(p)) + p for p in dgrams if len(p) < 2048)
    return bytes([out[0] | flags << 3]) + out[1:] if out else out


def write_seeds() -> None:
    """Seed corpus: pairs of consecutive datagrams of every capture, and what the decoders' unit
    tests feed each Decoder (recorded by running them, see _harvest_tests)."""
    from collector.pcap import iter_udp

    SEEDS.mkdir(parents=True, exist_ok=True)
    roots = [ROOT / "tests" / "data" / "corpus"]
    if os.environ.get("FLOWSCOPE_SHARED_CORPUS"):
        roots.append(Path(os.environ["FLOWSCOPE_SHARED_CORPUS"]))
    for root in roots:
        for pcap in sorted(root.rglob("*.pcap")):
            try:
                dgrams = [d.payload for d in iter_udp(pcap)]
            except Exception as e:  # noqa: BLE001 - a capture iter_udp cannot read is no seed
                print(f"{pcap}: {e}", file=sys.stderr)
                continue
            for i in range(len(dgrams)):
                blob = _blob(dgrams[i:i + 2])
                if blob:
                    (SEEDS / f"{root.name}-{pcap.stem}-{i}").write_bytes(blob)
    _harvest_tests()


def _harvest_tests() -> None:
    """Run the decoders' unit tests with decoders.Decoder replaced by a subclass that records the
    datagrams given to each instance; each instance's first 16 datagrams become one seed."""
    import pytest

    import decoders

    recorded: list[tuple[int, list[bytes]]] = []

    class Recording(decoders.Decoder):
        def decode(self, data, exporter, port=0, recv_time=-1.0):
            rec = self.__dict__.get("_fz")
            if rec is None:
                rec = self.__dict__["_fz"] = []
                c = self.config     # the test's configuration, as the first prefix's flags
                recorded.append((c.split_biflows | (not c.keep_options) << 1 | c.dedup << 2, rec))
            if len(rec) < 16:
                rec.append(bytes(data))
            return super().decode(data, exporter, port, recv_time)

    class Plugin:
        def pytest_configure(self, config):
            decoders.Decoder = Recording

    files = [str(ROOT / "tests" / f) for f in ("test_decoders.py", "test_netflow_values.py", "test_netflow_edge_cases.py",
                                               "test_sflow.py", "test_sflow_edge_cases.py", "test_robustness.py")]
    pytest.main(["-q", "-p", "no:cacheprovider", *files], plugins=[Plugin()])
    seen = set()
    for k, (flags, rec) in enumerate(recorded):
        blob = _blob(rec, flags)
        if blob and blob not in seen:
            seen.add(blob)
            (SEEDS / f"unit-{k}").write_bytes(blob)


def main() -> None:
    global ENRICHERS
    if "--write-seeds" in sys.argv:
        write_seeds()
        return
    if not SEEDS.is_dir():
        write_seeds()
    ENRICHERS = (_enricher(True), _enricher(False))
    logging.disable(logging.CRITICAL)     # the decoders' rate-limited warnings about bad input
    args = sys.argv + ([str(SEEDS)] if not any(os.path.isdir(a) for a in sys.argv[1:]) else [])
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
