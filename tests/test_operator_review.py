"""Review as a first-hour operator: the mistakes an operator makes (a receive buffer too small
for the exporters' bursts, a port already taken or below 1024) are said in the log with their
cause and their fix, not left to a metric nobody looks at yet."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import DATA, ROOT, wait_for

V5 = DATA / "netflow5" / "mikrotik_netflow5_routeros.pcap"  # one datagram of 30 flows (MikroTik RouterOS)


def _replay(port: int, loops: int) -> None:
    subprocess.run([sys.executable, "-m", "collector.cli", "replay", str(V5), "--to", f"127.0.0.1:{port}",
                    "--loop", str(loops), "--quiet"], cwd=ROOT, check=True, timeout=60)


def test_kernel_drops_for_a_full_receive_buffer_are_logged_with_the_fix(collector: Any, tmp_path: Path) -> None:
    """Datagrams the kernel drops because a listener's receive buffer is full (an --rcvbuf, or
    a net.core.rmem_max, too small for the exporters' bursts) were counted in
    flowscope_kernel_receive_drops_total and nowhere else: the log said nothing, and the stop
    line said "0 dropped" with most of the flows lost. The log now names the listener, the
    number dropped and what to raise, and the stop line counts them."""
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out), "--rcvbuf", "65536"])
    sent = 400
    c.proc.send_signal(signal.SIGSTOP)     # a collector that cannot keep up, for a moment
    try:
        _replay(c.port, sent)
    finally:
        c.proc.send_signal(signal.SIGCONT)
    # the capture's datagram holds 30 flows: what reached the decoder is the lines written / 30
    wait_for(lambda: out.exists() and c.value("flowscope_flows_total") == len(out.read_bytes().splitlines()), 15,
             what="the flows decoded written")
    decoded = len(out.read_bytes().splitlines())
    assert decoded % 30 == 0, decoded
    lost = sent - decoded // 30
    assert lost > sent / 2, (decoded, sent)   # 64 KiB holds a few dozen of these datagrams
    pattern = (rf"WARNING flowscope.server: listener netflow://127.0.0.1:{c.port}: the kernel dropped (\d+) "
               r"datagrams because the socket's receive buffer \(SO_RCVBUF 65536 bytes\) was full")
    wait_for(lambda: re.search(pattern, c.log()), 10, what="a warning about the kernel's drops")
    line = next(ln for ln in c.log().splitlines() if re.search(pattern, ln))
    assert "--rcvbuf" in line and "net.core.rmem_max" in line, line
    assert c.stop(signal.SIGTERM) == 0
    told = [int(n) for n in re.findall(pattern, c.log())]
    assert sum(told) == lost, (told, lost, c.log())
    assert (f"stopped: {decoded} flows delivered to file, 0 dropped; {lost} datagrams dropped by the kernel "
            "before they were read") in c.log(), c.log()


def test_no_kernel_drop_line_without_drops(collector: Any, tmp_path: Path) -> None:
    """A collector that reads everything says nothing of the kernel, and its stop line is as before."""
    out = tmp_path / "flows.jsonl"
    c = collector(["--output-file", str(out)])
    _replay(c.port, 3)
    wait_for(lambda: out.exists() and len(out.read_bytes().splitlines()) == 90, 15, what="90 flows written")
    assert c.stop(signal.SIGTERM) == 0
    log = c.log()
    assert "the kernel dropped" not in log, log
    assert re.search(r"stopped: 90 flows delivered to file, 0 dropped\n", log), log
