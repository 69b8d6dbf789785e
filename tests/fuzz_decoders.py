"""Coverage-guided fuzzing of the decoders with atheris (`make fuzz`; not part of `make test`).

Each input is split into datagrams (a 2-byte length before each) and fed to one Decoder, so the
fuzzer reaches template state: a template in one datagram, data in the next. The decoder must
never raise, every error must carry a known reason, encoding what decoded must work, and the
decoder must keep its bounds (templates per exporter). Seeds: the bundled corpus datagrams.
Findings are written by libFuzzer as crash-* files; record them in benchmarks/RESULTS.md's fuzzing
section with the command and budget.

    python tests/fuzz_decoders.py -max_total_time=300 [corpus_dir]
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from decoders import Decoder, DecoderConfig

REASONS = {"truncated", "bad_version", "bad_length", "bad_set", "bad_template", "template_limit",
           "options_limit", "too_large", "bad_sample", "unsupported", "template_mismatch"}
SEEDS = Path(__file__).resolve().parent / "fuzz" / "seeds"


def split(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 2 <= len(data) and len(out) < 16:
        n = struct.unpack_from("!H", data, pos)[0] % 2048
        pos += 2
        out.append(data[pos:pos + n])
        pos += n
    return out or [data]


def one_input(data: bytes) -> None:
    dec = Decoder(DecoderConfig(max_templates_per_exporter=32))
    for i, dgram in enumerate(split(data)):
        b = dec.decode(dgram, "192.0.2.1", 1000 + (i & 1), 1.0)
        b.to_json()
        if b.error is not None and b.error[0] not in REASONS:
            raise AssertionError(f"unknown error reason {b.error!r}")
    if dec.stats()["192.0.2.1"]["templates"] > 32:
        raise AssertionError("template bound exceeded")


def write_seeds() -> None:
    """Seed corpus: pairs of consecutive datagrams of every bundled capture."""
    from collector.pcap import iter_udp

    SEEDS.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent / "data" / "corpus"
    for pcap in sorted(root.rglob("*.pcap")):
        dgrams = [d.payload for d in iter_udp(pcap)]
        for i in range(len(dgrams)):
            pair = dgrams[i:i + 2]
            blob = b"".join(struct.pack("!H", len(p)) + p for p in pair if len(p) < 2048)
            (SEEDS / f"{pcap.stem}-{i}").write_bytes(blob)


def main() -> None:
    if not SEEDS.is_dir():
        write_seeds()
    args = sys.argv + ([str(SEEDS)] if not any(os.path.isdir(a) for a in sys.argv[1:]) else [])
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
