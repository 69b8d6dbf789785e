"""The benchmark harness as an operator sizing a deployment uses it: every collector measured
under the same conditions, and a table that does not overstate what a run showed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import free_udp_port

from benchmarks import harness


def _granted_rcvbuf(port: int) -> set[int]:
    """SO_RCVBUF of the sockets bound to UDP ``port``, as the kernel reports them (ss -m: rb)."""
    out = subprocess.run(["ss", "-uamnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {int(rb) for rb in re.findall(r"\brb(\d+)", out)}


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed")
@pytest.mark.skipif(shutil.which("nfcapd") is None, reason="nfdump not installed")
def test_every_collector_gets_the_same_receive_buffer(broker: Any, tmp_path: Path) -> None:
    """flowscope (root: SO_RCVBUFFORCE) was given 32 MiB while pmacct and nfcapd, which ask
    with a plain SO_RCVBUF, were capped at net.core.rmem_max (4 MiB here): an 8x deeper queue
    for flowscope alone, in a comparison of loss at a rate."""
    specs = harness.collector_specs([1])
    names = ["flowscope", "nfcapd"] + (["pmacct"] if shutil.which("nfacctd") else [])
    got: dict[str, set[int]] = {}
    for name in names:
        spec = specs[name][0]
        port = free_udp_port()
        env = harness.Env(proto="ipfix", port=port, bootstrap=broker.bootstrap, topic="bench-rcvbuf-review",
                          cpus=None, workers=1, log_dir=str(tmp_path))
        peer = spec.start(env)
        try:
            got[name] = _granted_rcvbuf(port)
        finally:
            peer.stop()
            if peer.workdir != str(tmp_path):
                peer.cleanup()
    assert all(len(v) == 1 for v in got.values()), got
    assert len({next(iter(v)) for v in got.values()}) == 1, f"receive buffers differ: {got}"
