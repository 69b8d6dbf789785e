"""How long stopping the pmacct peer takes, and what it delivered: the stop the harness had
(SIGTERM, which pmacct's core keeps blocked once idle: SIGKILL at the 15 s timeout) against
PmacctPeer's (a purge begun after the stop finds the cache empty, then SIGKILL), alternating.

Each trial: a fresh topic on one Tansu, nfacctd (NetFlow v5) started, `--flows` flows sent with
loadgen, `--settle` seconds, the stop timed, the topic read back. One JSON line per trial. A
settle of half a second stops pmacct with the flows in its cache; one of two refresh intervals
stops it after they were delivered, as the harness does (it waits until pmacct is idle).

    python -m benchmarks.pmacct_stop --refresh 5 --rounds 3 [--settle 0.5]
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from collections.abc import Sequence

from benchmarks import broker as brk
from benchmarks import peers
from benchmarks.build import build
from collector.util import run_child


def trial(bootstrap: str, mode: str, refresh: int, datagrams: int, settle: float) -> dict:
    topic = brk.create_topic(bootstrap)
    port = brk.free_udp_port()
    peer = peers.start_pmacct("v5", port=port, bootstrap=bootstrap, topic=topic, refresh_s=refresh)
    try:
        out = run_child([str(build()), "--proto", "v5", "--to", f"127.0.0.1:{port}", "--count", str(datagrams),
                         "--rate", "30000"], capture_output=True, text=True, check=True, timeout=60)
        sent = json.loads(out.stdout)["flows"]
        time.sleep(settle)
        t0 = time.monotonic()
        rc = peer.stop(sig=signal.SIGTERM if mode == "sigterm" else None)
        took = time.monotonic() - t0
    finally:
        peer.stop()
        peer.cleanup()
    read = brk.count_messages(bootstrap, topic, expected=sent, idle=3).messages
    return {"mode": mode, "refresh_s": refresh, "settle_s": settle, "sent": sent, "read": read, "stop_s": round(took, 2),
            "returncode": rc, "timed_out": peer.timed_out}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refresh", type=int, default=5, help="kafka_refresh_time, seconds (the harness's: 5)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--datagrams", type=int, default=200, help="v5 datagrams of 30 flows each")
    ap.add_argument("--settle", type=float, default=0.5, help="seconds between the last datagram and the stop")
    args = ap.parse_args(argv)
    b = brk.start_broker()
    try:
        for r in range(args.rounds):
            for mode in ("sigterm", "purge"):
                print(json.dumps({"round": r, **trial(b.bootstrap, mode, args.refresh, args.datagrams, args.settle)}), flush=True)
    finally:
        b.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
