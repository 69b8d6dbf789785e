"""Decode-only throughput per protocol, side by side with the pure-Python `netflow` package.

    python -m benchmarks.decode_bench [--seconds 2] [--markdown]

Datagrams are realistic (benchmarks/datagrams.py): Open vSwitch-like IPFIX with 25 records per
datagram, NetFlow v5 with 30, NetFlow v9 with 25, sFlow v5 with 8 flow samples carrying raw
Ethernet/IPv4/TCP headers. For each, it measures records per second on one core into
flowscope's internal record form (`Decoder.decode`), and with JSON encoding (`to_json`), and
the `netflow` package (PyPI, pure Python) on the same bytes where it can parse them (it has no
sFlow and fails on variable-length IPFIX fields, so the IPFIX comparison uses the OVS template
without interfaceName). Each figure is the best of several rounds, the two decoders alternating,
because this machine is shared and noisy: the ratio is what to read.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections.abc import Callable

from benchmarks import datagrams as D
from decoders import Decoder

EXPORT = 1_700_000_000


def workloads() -> dict[str, tuple[list[bytes], list[bytes], int]]:
    """name -> (setup datagrams, measured datagrams, records per measured datagram)."""
    rng = random.Random(42)
    out = {}
    fixed = D.IpfixTemplate(260, D._COMMON)
    tpl = D.ipfix_message([D.template_set([D.OVS_INGRESS, D.OVS_EGRESS, fixed])], seq=0, export_time=EXPORT)
    out["ipfix-ovs (varlen names)"] = (
        [tpl], [D.ipfix_message([D.data_set(D.OVS_EGRESS, D.ovs_flows(25, rng, direction=1))], seq=i * 25,
                                export_time=EXPORT) for i in range(64)], 25)
    out["ipfix-ovs-fixed"] = (
        [tpl], [D.ipfix_message([D.data_set(fixed, D.ovs_flows(25, rng))], seq=i * 25, export_time=EXPORT)
                for i in range(64)], 25)
    out["netflow5"] = ([], [D.v5_datagram(D.v5_records(30, rng, uptime_ms=100_000), seq=i * 30,
                                          unix_secs=EXPORT, uptime_ms=100_000) for i in range(64)], 30)
    v9recs = [[{"src": f"10.128.{rng.randrange(16)}.{rng.randrange(1, 255)}",
                "dst": f"10.129.{rng.randrange(16)}.{rng.randrange(1, 255)}",
                "sport": rng.randrange(1024, 65535), "dport": 443, "proto": 6, "tos": 0, "flags": 0x18,
                "bytes": rng.randrange(60, 10**6), "packets": rng.randrange(1, 1000),
                "first": 10_000, "last": 90_000, "input": 3, "output": 4} for _ in range(25)] for _ in range(64)]
    out["netflow9"] = (
        [D.v9_datagram([D.template_set([D.V9_TEMPLATE], version=9)], seq=0, unix_secs=EXPORT, uptime_ms=100_000,
                       count=1)],
        [D.v9_datagram([D.data_set(D.V9_TEMPLATE, r)], seq=i + 1, unix_secs=EXPORT, uptime_ms=100_000, count=len(r))
         for i, r in enumerate(v9recs)], 25)
    samples = [[D.SflowSample(src=f"10.128.0.{rng.randrange(1, 255)}", dst=f"10.129.0.{rng.randrange(1, 255)}",
                              sport=rng.randrange(1024, 65535), dport=443, proto=6,
                              frame_length=rng.randrange(64, 1500), flags=0x18, rate=400, input=3, output=4)
                for _ in range(8)] for _ in range(64)]
    out["sflow5"] = ([], [D.sflow_datagram(s, seq=i + 1) for i, s in enumerate(samples)], 8)
    return out


def best_rate(fn: Callable[[bytes], object], payloads: list[bytes], per: int, seconds: float, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds / rounds
        while True:
            for p in payloads:
                fn(p)
            n += len(payloads)
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n * per / (now - t0))
    return best


def run(seconds: float) -> list[dict[str, object]]:
    rows = []
    try:
        import netflow  # the pure-Python peer column: `pip install .[bench]` (make bench) installs it
    except ImportError:
        netflow = None
        print("benchmarks.decode_bench: the `netflow` package (make bench installs it) is missing: "
              "no peer column", file=sys.stderr)
    for name, (setup, payloads, per) in workloads().items():
        dec = Decoder()
        for s in setup:
            assert dec.decode(s, "10.0.0.1").error is None
        check = dec.decode(payloads[0], "10.0.0.1")
        assert check.error is None and len(check) == per, (name, check.error, len(check))
        decode = best_rate(lambda p, dec=dec: dec.decode(p, "10.0.0.1", 0, EXPORT), payloads, per, seconds, 5)
        encode = best_rate(lambda p, dec=dec: dec.decode(p, "10.0.0.1", 0, EXPORT).to_json(), payloads, per, seconds, 5)
        peer = None
        peer_kinds = ("ipfix-ovs-fixed", "netflow5", "netflow9")   # what the `netflow` package decodes
        if name in peer_kinds and netflow is not None:
            templates: dict = {"netflow": {}, "ipfix": {}}
            for s in setup:
                netflow.parse_packet(s, templates)
            assert len(netflow.parse_packet(payloads[0], templates).flows) == per
            peer = best_rate(lambda p, t=templates: netflow.parse_packet(p, t), payloads, per, seconds, 5)
        rows.append({"workload": name, "records_per_datagram": per, "decode": decode, "decode_json": encode,
                     "netflow_pkg": peer, "peer_missing": netflow is None and name in peer_kinds})
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| workload | records/datagram | flowscope decode (records/s) | decode + JSON (records/s) | "
             "`netflow` package (records/s) | decode ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        peer = r["netflow_pkg"]
        ratio = (f"{r['decode'] / peer:.0f}x" if peer else
                 "n/a (`netflow` not installed)" if r.get("peer_missing") else "n/a (no support)")
        lines.append(f"| {r['workload']} | {r['records_per_datagram']} | {r['decode'] / 1e6:.2f} M | "
                     f"{r['decode_json'] / 1e6:.2f} M | {f'{peer / 1e3:.0f} k' if peer else '-'} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure (default 2)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args()
    rows = run(args.seconds)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} {platform.python_version()}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
