"""decoders.Receiver: a listener's socket read with recvmmsg and each datagram handled in C.

Real UDP sockets on loopback (127.0.0.0/8 and ::1), a real collector Worker as the owner (not
started: its queue or its open Kafka record batch is where the flows land), datagrams from
make_v5 and the IPFIX corpus."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
import pytest
from conftest import corpus_file, make_v5, udp_payloads

from collector.config import Config, KafkaConfig
from collector.server import SCHEME_PREFIXES, Worker
from collector.sinks import _lines_of
from decoders import Decoder, DecoderConfig, Receiver, RecordBatchWriter


def worker(**kw: Any) -> Worker:
    return Worker(Config(**kw))


def read_all(r: Any, want: int, timeout: float = 10.0) -> int:
    """Receiver.read() until `want` datagrams were read (loopback delivers at once, but the
    socket is read without waiting)."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        n = r.read()
        got += n
        if not n:
            time.sleep(0.001)
    return got


def send_from_each(r: Any, sources: list[str], dst: Any) -> None:
    """Twice over, one single-record v5 datagram from each source address (flow i from
    sources[i]), each round read by the Receiver."""
    for rnd in range(2):
        for i, src in enumerate(sources):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.bind((src, 0))
                tx.sendto(make_v5(rnd, 1, i), dst)
        assert read_all(r, len(sources)) == len(sources)


@pytest.fixture
def udp4() -> Any:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        yield rx


def test_flows_land_in_the_queue_and_every_datagram_is_counted(udp4: socket.socket) -> None:
    """More datagrams than one read's budget and one recvmmsg's batch: every one decoded in
    order, counted once with its bytes."""
    w = worker()
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    w.receivers.append(r)
    payloads = [make_v5(i * 30, 30, i * 30) for i in range(300)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for p in payloads:
            tx.sendto(p, udp4.getsockname())
    first = r.read(100)
    assert 100 <= first < 300      # the budget stops it (at a whole recvmmsg batch)
    assert read_all(r, 300 - first) == 300 - first
    assert r.read() == 0           # empty: nothing more, no error
    w.flush_records()              # (the open lines; the linger loop's work once started)
    snap = w.snapshot()
    name = str(w.listeners[0])
    assert snap["flowscope_received_datagrams"][(name,)] == 300
    assert snap["flowscope_received_bytes"][(name,)] == sum(len(p) for p in payloads)
    assert w.queue.total_records == 300 * 30
    st = w.decoder.stats()["127.0.0.1"]
    assert st["datagrams"] == 300 and st["flows"] == 9000
    assert not any(snap["flowscope_datagrams_dropped"].values())


def test_lines_fill_a_small_queue_and_what_does_not_fit_is_counted(udp4: socket.socket) -> None:
    """The stdout/file sinks' open lines are a quarter of --queue-bytes at most (a writer is
    queued whole: one larger than the queue would be dropped whole, every time): with a 32 KiB
    queue and no sink running, writers fill it and the rest is dropped and counted, each flow
    decoded being queued, open or dropped."""
    w = worker(queue_bytes=32768)
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(100):
            tx.sendto(make_v5(i * 30, 30, i * 30), udp4.getsockname())
    assert read_all(r, 100) == 100
    assert w.writer.max_bytes == 8192
    queued, open_ = w.queue.total_records, w.writer.records
    dropped = w.queue.dropped[(0, "queue_full")]
    assert queued > 0 and dropped > 0
    assert queued + open_ + dropped == 3000
    # --queue-bytes bounds the open lines and the queue together (the open writer's bytes are
    # counted in flowscope_queue_bytes: they never pass flowscope_queue_limit_bytes)
    snap = w.snapshot()
    assert w.writer.size > 0
    assert w.queue.total_bytes + w.writer.size <= 32768
    assert snap["flowscope_queue_bytes"][()] == w.queue.total_bytes + w.writer.size
    assert snap["flowscope_queue_limit_bytes"][()] == 32768


@pytest.mark.parametrize("key", ["none", "exporter", "conversation"])
def test_open_record_batches_and_the_queue_stay_within_queue_bytes(udp4: socket.socket, key: str) -> None:
    """Kafka: the open record batch (key none) or the per-partition ones (keyed) count against
    --queue-bytes with the queue: with no sink running, flows past the bound are dropped and
    counted, and what is queued and open together never passes it."""
    w = worker(queue_bytes=65536, kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=16384, key=key))
    if key != "none":
        w.sink.partitions[w.cfg.kafka.topic] = [0, 1, 2]    # (as if learnt: the worker is not started)
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(150):
            tx.sendto(make_v5(i * 30, 30, i * 30), udp4.getsockname())
            if i % 10 == 9:
                assert read_all(r, 10) == 10
                open_records, open_bytes = w.open_batches()
                assert w.queue.total_bytes + open_bytes <= 65536
                assert w.snapshot()["flowscope_queue_bytes"][()] <= 65536
    open_records, open_bytes = w.open_batches()
    assert open_records > 0
    dropped = w.queue.dropped[(0, "queue_full")]
    assert dropped > 0
    assert w.queue.total_records + open_records + dropped == 4500


@pytest.mark.parametrize("key", ["none", "exporter", "conversation"])
def test_at_the_smallest_queue_bytes_allowed_a_batch_waits_behind_one_in_flight(udp4: socket.socket,
                                                                                  key: str) -> None:
    """The config check's promise (a record batch is queued whole, so the queue must hold at
    least two) with the open batches now counted in --queue-bytes: at the smallest
    --queue-bytes the check accepts, a full batch offered while another is in flight to the
    broker is queued, not dropped. At twice the batch size the queue's own bound was one batch
    (--queue-bytes less the open batch's reserve), so every batch filled while one was in flight
    was dropped whole, counted queue_full."""
    from collector.config import validate

    batch = 16384

    def cfg(q: int) -> Config:
        return Config(queue_bytes=q, kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=batch, key=key))

    def accepted(q: int) -> bool:
        try:
            validate(cfg(q))
        except Exception:
            return False
        return True

    smallest = next(q for q in range(batch, 8 * batch, 1024) if accepted(q))
    w = Worker(cfg(smallest))
    if key != "none":
        w.sink.partitions[w.cfg.kafka.topic] = [0]    # (one partition: its batch fills as key none's)
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")

    def until_queued(first: int) -> int:
        """Datagrams from `first` until a full batch is queued (or dropped); returns the next one."""
        i = first
        while not w.queue.chunks and not w.queue.dropped:
            assert i < first + 200, "no batch filled"
            tx.sendto(make_v5(i, 30, i * 30), udp4.getsockname())
            assert read_all(r, 1) == 1
            i += 1
        return i

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        i = until_queued(0)
        (sent,) = w.queue.take(1 << 30)             # in flight to the broker (no answer yet)
        assert sent.nbytes > batch // 2
        i = until_queued(i)
    snap = w.snapshot()
    assert w.queue.dropped.get((0, "queue_full"), 0) == 0
    assert len(w.queue.chunks) == 1 and w.queue.inflight_bytes == sent.nbytes
    assert snap["flowscope_queue_bytes"][()] <= snap["flowscope_queue_limit_bytes"][()] == smallest
    # (flowscope_queue_records: queued, in flight and open)
    assert sum(snap["flowscope_flows"].values()) == i * 30 == snap["flowscope_queue_records"][()]


def test_the_kafka_path_appends_to_the_open_record_batch_and_starts_a_new_one_when_full(udp4: socket.socket) -> None:
    """Key mode none: flows go into the worker's RecordBatchWriter in C; a datagram that does
    not fit is handed to Worker.write_records, which queues the full batch and goes on in a new
    one: nothing lost between them."""
    w = worker(kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=16384))
    assert isinstance(w.writer, RecordBatchWriter)
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    first_writer = w.writer
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(40):
            tx.sendto(make_v5(i * 30, 30, i * 30), udp4.getsockname())
    assert read_all(r, 40) == 40
    assert w.writer is not first_writer
    assert w.queue.total_records + w.writer.records == 1200
    assert w.writer.records > 0


def test_a_batch_queued_during_a_read_takes_no_more_flows(udp4: socket.socket) -> None:
    """The Receiver keeps the owner's writer for the read and asks again after calling the
    owner: a batch that filled and went to the queue (Worker.write_records) is never appended
    to again, not even by a short record that would still fit where a long one did not
    (IPFIX records with a 600-byte unknown element, about 1.3 kB of JSON each, then one of two
    addresses, in turn, all in one read)."""
    from benchmarks import datagrams as D

    w = worker(kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=16384))
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    queued: list[tuple[Any, int]] = []
    w._queued_batch = lambda wr: queued.append((wr, wr.records))
    big = D.IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("blob", 100, 9999, 600)))
    small = D.IpfixTemplate(257, (("src", 8, 0, 4), ("dst", 12, 0, 4)))
    rec = {"src": "10.0.0.1", "dst": "10.0.0.2", "blob": bytes(range(256)) * 3}
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(40):
            t, n = (big, 5) if i % 2 == 0 else (small, 1)
            tx.sendto(D.ipfix_message([D.template_set([t]), D.data_set(t, [rec] * n)], seq=sent,
                                      export_time=1_700_000_000), udp4.getsockname())
            sent += n
        assert read_all(r, 40) == 40
    assert len(queued) >= 2
    assert [wr.records for wr, _ in queued] == [n for _, n in queued]
    assert sum(n for _, n in queued) == w.queue.total_records
    assert w.queue.total_records + w.writer.records == sent


@pytest.mark.parametrize("mode", ["exporter", "conversation"])
def test_the_keyed_modes_append_in_c_to_each_partitions_batch(udp4: socket.socket, mode: str) -> None:
    """Keyed Kafka modes: before the topic's partition count is known each datagram goes to the
    worker (records queued one by one); once it is, the Receiver appends to the partitions'
    batches in C, calling the worker only when a batch fills, and each flow lands in the slot
    its key hashes to (murmur2, as Kafka's clients do; exporter mode: the source address of
    each datagram). A new partition count between reads makes new batches, the old ones queued."""
    from aiokafka.partitioner import murmur2
    from aiokafka.record.default_records import DefaultRecordBatch

    from collector.sinks import Prebuilt, conversation_key
    from decoders import KeyedBatches

    w = worker(kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=65536, key=mode))
    assert w.writer is None and w.keyed_mode == mode
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    calls = {"deliver": 0, "write_keyed": 0}

    def counting(name: str) -> Any:
        real = getattr(w, name)

        def counted(*a: Any) -> Any:
            calls[name] += 1
            return real(*a)
        return counted

    for name in calls:
        setattr(w, name, counting(name))
    sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    txs = []
    for src in sources:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind((src, 0))
        txs.append(tx)

    def send(first: int, count: int) -> None:
        for i in range(first, first + count):
            txs[i % 3].sendto(make_v5(i * 30, 30, i * 30), udp4.getsockname())
        assert read_all(r, count) == count

    try:
        send(0, 3)                                   # partition count not known yet
        assert calls == {"deliver": 3, "write_keyed": 3} and w.keyed is None
        assert w.queue.total_records == 90
        w.sink.partitions[w.cfg.kafka.topic] = [0, 1, 2, 3, 4]   # (what the sink learns once connected)
        send(3, 2)
        assert isinstance(w.keyed, KeyedBatches) and w.keyed.partitions == 5
        assert calls == {"deliver": 3, "write_keyed": 3} and w.keyed.records == 60
        send(5, 31)                                  # 64 KiB batches fill: the worker queues them
        assert calls["deliver"] == 3 and 3 < calls["write_keyed"] < 3 + 31
        five = w.keyed
        w.sink.partitions[w.cfg.kafka.topic] = [0, 1, 2]
        send(36, 6)
        assert w.keyed is not five and w.keyed.partitions == 3 and five.records == 0
    finally:
        for tx in txs:
            tx.close()
    w.flush_records()
    chunks = list(w.queue.chunks)
    assert [isinstance(c.records, Prebuilt) for c in chunks[:3]] == [False] * 3
    got: list[tuple[int, bytes, bytes]] = []
    for c in chunks[3:]:
        assert isinstance(c.records, Prebuilt)
        got += [(c.records.slot, r.key, r.value) for r in DefaultRecordBatch(c.records.writer.build())]
    assert len(got) == 39 * 30
    seen = set()
    for slot, key, value in got:
        f = orjson.loads(value)
        dgram = (f["SrcPort"] - 1000) // 30     # (make_v5: flow i of the test has port 1000 + i)
        seen.add(dgram * 30 + (f["SrcPort"] - 1000) % 30)
        assert f["AgentIP"] == sources[dgram % 3]
        assert key == (f["AgentIP"].encode() if mode == "exporter" else conversation_key(value))
        assert slot == (murmur2(key) & 0x7FFFFFFF) % (5 if dgram < 36 else 3), (slot, dgram)
    assert seen == set(range(90, 42 * 30))
    if mode == "exporter":
        assert {orjson.loads(v)["AgentIP"] for *_, v in got} == set(sources)


def test_a_batch_size_learnt_between_reads_makes_new_keyed_batches_of_it(udp4: socket.socket) -> None:
    """Keyed modes: a smaller batch size learnt between two reads (KafkaSink.batch_limit: the
    topic's max.message.bytes, or a refusal) makes the Receiver's next read append to new batches
    of that size, the open ones queued as they were; no batch made after it is larger, and every
    flow is in exactly one batch."""
    from collector.sinks import FLOWS, Prebuilt

    w = worker(kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=1 << 20, key="conversation"))
    w.sink.partitions[w.cfg.kafka.topic] = [0, 1, 2]
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(4):
            tx.sendto(make_v5(i, 30, i * 30), udp4.getsockname())
        assert read_all(r, 4) == 4
        big = w.keyed
        assert big.max_bytes == 1 << 20 and big.records == 120 and not w.queue.chunks
        w.sink.batch_limit[FLOWS] = 4096       # (learnt: KafkaSink._set_limit, _shrink)
        for i in range(4, 10):
            tx.sendto(make_v5(i, 30, i * 30), udp4.getsockname())
        assert read_all(r, 6) == 6
    assert w.keyed is not big and w.keyed.max_bytes == 4096 and big.records == 0
    old = [c for c in w.queue.chunks if c.records.writer.max_bytes == 1 << 20]
    assert sum(len(c.records) for c in old) == 120
    new = [c for c in w.queue.chunks if c not in old]
    assert len(new) > 3 and all(c.records.writer.max_bytes == 4096 and c.nbytes <= 4096 for c in new)
    assert all(isinstance(c.records, Prebuilt) for c in w.queue.chunks)
    got = keyed_records(w)
    assert sorted(f["SrcPort"] for _, _, f in got) == sorted(1000 + i for i in range(300))


def test_sflow_flows_and_counter_records_in_the_keyed_modes(udp4: socket.socket) -> None:
    """sFlow with --counters, key exporter, the partition count known: each datagram's flow
    samples are appended in C to the batch of the partition its sender's address hashes to (the
    datagram's source, as the per-record path keys; not the sFlow agent address), its counter
    records queued one by one for the counters topic; flows = queued + open, and every counter
    record decoded is queued."""
    from aiokafka.partitioner import murmur2
    from test_sflow import counter_sample, datagram, eth, flow_sample, generic_if, ipv4, raw_header, tcp

    from collector.sinks import COUNTERS

    w = worker(counters=True, kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=1 << 20, key="exporter"))
    w.sink.partitions[w.cfg.kafka.topic] = list(range(5))
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "sflow")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(10):
            pkts = [eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000 + 3 * i + k, 80, 0x10)), 0x0800) for k in range(3)]
            tx.sendto(datagram([counter_sample([generic_if(100 + i)[0]], seq=500 + i, src=(0, 100 + i)),
                                *(flow_sample([raw_header(p, 60)], seq=900 + 3 * i + k) for k, p in enumerate(pkts))],
                               seq=i + 1), udp4.getsockname())
        assert read_all(r, 10) == 10
    assert w.keyed is not None and w.keyed.records == 30
    counters = [c for c in w.queue.chunks if c.kind == COUNTERS]
    assert sum(len(c.records) for c in counters) == 10 == w.counter_records
    assert {c.exporter for c in counters} == {"127.0.0.1"}
    snap = w.snapshot()
    assert sum(snap["flowscope_flows"].values()) == 30 == snap["flowscope_queue_records"][()]
    got = keyed_records(w)
    assert sorted(f["SrcPort"] for _, _, f in got) == list(range(1000, 1030))
    assert {(slot, key) for slot, key, _ in got} == {((murmur2(b"127.0.0.1") & 0x7FFFFFFF) % 5, b"127.0.0.1")}
    assert {f["AgentIP"] for _, _, f in got} == {"198.51.100.7"}


def test_the_listener_takes_what_its_scheme_prefixes_say_and_counts_the_rest(udp4: socket.socket) -> None:
    """The compiled check agrees with collector.server.SCHEME_PREFIXES for every first two or
    four bytes that matter, short datagrams included."""
    heads = [b"", b"\x00", b"\x00\x0a", b"\x00\x05", b"\x00\x09", b"\x00\x01", b"\x00\x07", b"\x00\x00\x00\x05",
             b"\x00\x00\x00\x04", b"\x00\x00\x00", b"\x05\x00", b"\x0a\x00", b"\x00\x0b", b"\xff\xff\xff\xff"]
    for scheme, prefixes in SCHEME_PREFIXES.items():
        w = worker()
        r = Receiver(udp4.fileno(), w.decoder, w, 0, scheme)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for h in heads:
                tx.sendto(h + b"\x00" * 20 if len(h) >= 2 else h, udp4.getsockname())
        assert read_all(r, len(heads)) == len(heads)
        taken = [h for h in heads if (h + b"\x00" * 20 if len(h) >= 2 else h).startswith(prefixes)]
        assert w.dgram_drops["wrong_protocol"] == len(heads) - len(taken), scheme
        # what the listener took reached the decoder (as errors: these are no real datagrams)
        st = w.decoder.stats().get("127.0.0.1", {"datagrams": 0})
        assert st["datagrams"] == len(taken), scheme


def test_each_source_address_is_its_own_exporter_past_the_address_cache(udp4: socket.socket) -> None:
    """The receiver keeps 1,024 source addresses' text in a direct-mapped table: 1,500 sources
    (127.0.x.y) collide in it and each datagram is still its own sender's."""
    w = worker()
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(1500)]
    send_from_each(r, sources, udp4.getsockname())
    st = w.decoder.stats()
    assert set(st) == set(sources)
    assert all(st[s]["datagrams"] == 2 and st[s]["flows"] == 2 for s in sources)
    # and each flow says who sent it: flow i came from sources[i]
    w.flush_records()
    flows = [orjson.loads(rec) for chunk in w.queue.chunks for rec in _lines_of(chunk).splitlines()]
    assert len(flows) == 3000
    for f in flows:
        i = int(f["SrcAddr"].rsplit(".", 1)[1]) + 256 * int(f["SrcAddr"].split(".")[2])
        assert f["AgentIP"] == sources[i], f


def test_the_allowlist_is_applied_per_source(udp4: socket.socket) -> None:
    w = worker(allow_exporters=["127.0.0.2/32"])
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.2", 0))
        b.bind(("127.0.0.3", 0))
        for i in range(5):
            a.sendto(make_v5(i, 2, i * 2), udp4.getsockname())
            b.sendto(make_v5(i, 2, i * 2), udp4.getsockname())
    assert read_all(r, 10) == 10
    assert w.dgram_drops["not_allowed"] == 5
    assert set(w.decoder.stats()) == {"127.0.0.2"}
    w.flush_records()
    assert w.queue.total_records == 10


def test_ipv6_sources_are_named_as_the_socket_module_names_them() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        rx.bind(("::", 0))
        rx.setblocking(False)
        port = rx.getsockname()[1]
        w = worker()
        r = Receiver(rx.fileno(), w.decoder, w, 0, "netflow")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx6, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx4:
            tx6.sendto(make_v5(0, 3, 0), ("::1", port))
            tx4.sendto(make_v5(0, 4, 0), ("127.0.0.1", port))
        assert read_all(r, 2) == 2
        # what recvfrom would have said: "::1" and, on a dual-stack socket, the mapped address
        assert set(w.decoder.stats()) == {"::1", "::ffff:127.0.0.1"}
        w.flush_records()
        assert w.queue.total_records == 7


def keyed_records(w: Worker) -> list[tuple[int, bytes, dict[str, Any]]]:
    """The keyed modes' flow records, open and queued: (partition slot, key, flow)."""
    from aiokafka.record.default_records import DefaultRecordBatch

    from collector.sinks import FLOWS, Prebuilt

    w.flush_records()
    out = []
    for c in w.queue.chunks:
        if c.kind != FLOWS:
            continue        # (sFlow counter records, queued one by one)
        assert isinstance(c.records, Prebuilt)
        out += [(c.records.slot, rec.key, orjson.loads(rec.value))
                for rec in DefaultRecordBatch(c.records.writer.build())]
    return out


def test_exporter_keys_past_the_address_cache_are_each_datagrams_sender(udp4: socket.socket) -> None:
    """Key exporter: the key bytes the Receiver keeps beside each cached source address (RxSource.key)
    are replaced with it: 1,500 sources colliding in the 1,024-slot table, twice over, and each
    record's key is its own datagram's sender (the name the worker gives it: the key the per-record
    path makes), in the partition that key hashes to."""
    from aiokafka.partitioner import murmur2

    w = worker(kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=1 << 20, key="exporter"))
    w.sink.partitions[w.cfg.kafka.topic] = list(range(7))
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(1500)]
    send_from_each(r, sources, udp4.getsockname())
    got = keyed_records(w)
    assert len(got) == 3000
    for slot, key, f in got:
        i = int(f["SrcAddr"].rsplit(".", 1)[1]) + 256 * int(f["SrcAddr"].split(".")[2])
        assert key == sources[i].encode() and f["AgentIP"] == sources[i], (key, f)
        assert slot == (murmur2(key) & 0x7FFFFFFF) % 7


def test_exporter_keys_of_ipv6_and_ipv4_mapped_sources() -> None:
    """Key exporter on a dual-stack listener: an IPv6 source and an IPv4 one (seen as
    ::ffff:127.0.0.1) are keyed by the names the worker gives them, in C as through the per-record
    path before the partition count is known: one exporter, one key, whichever path it took."""
    from aiokafka.partitioner import murmur2

    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        rx.bind(("::", 0))
        rx.setblocking(False)
        port = rx.getsockname()[1]
        w = worker(kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=1 << 20, key="exporter"))
        r = Receiver(rx.fileno(), w.decoder, w, 0, "netflow")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx6, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx4:
            tx6.sendto(make_v5(0, 3, 0), ("::1", port))
            tx4.sendto(make_v5(0, 4, 3), ("127.0.0.1", port))
            assert read_all(r, 2) == 2                  # partition count not known: per record
            early = {c.exporter.encode() for c in w.queue.chunks}     # (the sink keys these by it)
            w.queue.chunks.clear()
            w.sink.partitions[w.cfg.kafka.topic] = list(range(5))
            tx6.sendto(make_v5(1, 3, 7), ("::1", port))
            tx4.sendto(make_v5(1, 4, 10), ("127.0.0.1", port))
            assert read_all(r, 2) == 2                  # in C
    names = set(w.decoder.stats())
    assert names == {"::1", "::ffff:127.0.0.1"}
    got = keyed_records(w)
    assert len(got) == 7
    assert {k for _, k, _ in got} == {n.encode() for n in names}
    for slot, key, f in got:
        assert key == (b"::1" if 7 <= f["SrcPort"] - 1000 < 10 else b"::ffff:127.0.0.1")
        assert slot == (murmur2(key) & 0x7FFFFFFF) % 5
    assert early == {n.encode() for n in names}


def test_a_datagram_of_the_largest_udp_size_is_read_whole(udp4: socket.socket) -> None:
    """No truncation: a 65,507-byte datagram is counted with all its bytes and refused by the
    decoder's size limit, not cut to a buffer."""
    w = worker(max_datagram=9000)
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "ipfix")
    big = b"\x00\x0a" + b"\x00" * 65505
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.sendto(big, udp4.getsockname())
    assert read_all(r, 1) == 1
    assert r.nbytes == 65507
    assert w.decoder.stats()["127.0.0.1"]["errors"] == {"too_large": 1}


def test_shutdown_reads_and_counts_without_decoding(udp4: socket.socket) -> None:
    w = worker()
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "netflow")
    r.refusing = True
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(7):
            tx.sendto(make_v5(i, 1, i), udp4.getsockname())
    assert read_all(r, 7) == 7
    assert w.dgram_drops["shutdown"] == 7
    assert w.decoder.stats() == {}
    assert r.datagrams == 7


def test_a_socket_that_fails_is_counted_not_raised() -> None:
    """recvmmsg failing for another reason than an empty socket (here: the descriptor was
    closed under it) is counted as reason socket_error and the read returns."""
    w = worker()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    fd = s.fileno()
    r = Receiver(fd, w.decoder, w, 0, "netflow")
    s.close()
    assert r.read() == 0
    assert w.dgram_drops["socket_error"] == 1


def test_real_ipfix_from_the_corpus_decodes_as_through_decode(udp4: socket.socket) -> None:
    """A real exporter's IPFIX capture (templates, then data) sent over loopback: the flows the
    receiver queues are those Decoder.decode and to_json give for the same payloads from the
    same address and port (the same decoder, reached from C), but for the receive time."""
    payloads = [p for _, _, p in udp_payloads(corpus_file("ipfix/openbsd-pflow_ipfix.pcap"))]
    assert payloads
    w = worker()
    r = Receiver(udp4.fileno(), w.decoder, w, 0, "ipfix")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.bind(("127.0.0.1", 0))
        port = tx.getsockname()[1]
        for p in payloads:
            tx.sendto(p, udp4.getsockname())
    assert read_all(r, len(payloads)) == len(payloads)
    ref = Decoder(DecoderConfig())
    want = [orjson.loads(j) for p in payloads for j in ref.decode(p, "127.0.0.1", port, 1.0).to_json()]
    w.flush_records()
    got = [orjson.loads(rec) for chunk in w.queue.chunks for rec in _lines_of(chunk).splitlines()]
    assert want, "the capture holds flows"
    for f in want + got:
        f.pop("TimeReceived", None)
    assert got == want
