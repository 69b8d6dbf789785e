"""What the operator docs (README.md, deploy/README.md, docs/collector.md, the --help texts) promise
against what the collector does, where a reading of the docs found them apart."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
from conftest import ROOT, corpus_file, send_udp, udp_payloads, wait_for

from decoders import Decoder

VMWARE = "ipfix/vmware-vds_ipfix.pcap"   # 13 templates, 276 fields


def test_template_fields_gauge_is_what_the_bound_counts(collector, tmp_path: Path) -> None:
    """docs/collector.md, Security: "--max-template-fields ... and --max-exporter-state ... Their
    current values are `flowscope_template_fields` and `flowscope_exporter_state_bytes`". The bound
    counts each template's fields plus 24 for its own objects, but the gauge showed the fields
    alone, and the series table's recipe (plus 24 x the sum of flowscope_templates) misses the
    templates restored from the state file for exporters not heard from since, which no
    flowscope_templates series shows: with the bound full (new templates refused as
    template_limit) the gauge said 1104 of 2352. It must be the bound's own figure."""
    now = time.time()
    dec = Decoder()
    for ip in ("192.0.2.7", "192.0.2.8", "192.0.2.9", "192.0.2.10"):   # (the bound's minimum is 1000)
        for _, _, p in udp_payloads(corpus_file(VMWARE)):
            dec.decode(p, ip, 4739, now)
    counted = dec.template_fields + 24 * dec.template_count
    assert (dec.template_count, dec.template_fields, counted) == (52, 1104, 2352)
    state = tmp_path / "state.json"
    state.write_bytes(orjson.dumps(dec.export_state()))
    c = collector(["--output-file", str(tmp_path / "out.json"), "--state-file", str(state),
                   "--state-interval", "600", "--max-template-fields", str(counted)])
    wait_for(lambda: c.value("flowscope_state_loads_total", result="ok") == 1, 30, what="state loaded")
    assert c.value("flowscope_templates") == 0          # restored only: no exporter series yet
    assert c.value("flowscope_template_fields") == counted   # ... and the bound is full
    # another exporter's template is refused: the gauge at the bound meant no room
    send_udp([p for _, _, p in udp_payloads(corpus_file("ipfix/openbsd-pflow_ipfix.pcap"))], c.port)
    wait_for(lambda: c.value("flowscope_decode_errors_total", reason="template_limit") >= 1, 30,
             what="template_limit")
    assert c.value("flowscope_template_fields") == counted


def test_replay_to_a_port_the_capture_never_sent_to_says_so(tmp_path: Path) -> None:
    """README: replay exits 1 when the capture "holds no UDP datagram (as `decode`)", and decode
    says "A capture with no UDP datagram (or none to the `--port` given) prints a line saying so".
    replay --port 9 on a capture of 4 datagrams to 2055 said "no UDP datagrams found": the operator
    is told the capture is wrong when the port is. It must say what decode says."""
    path = str(corpus_file(VMWARE))
    for cmd, prog in ((["replay", path, "--to", "127.0.0.1:9", "--port", "9"], "replay"),
                      (["decode", path, "--port", "9"], "decode")):
        r = subprocess.run([sys.executable, "-m", "collector.cli", *cmd], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
        assert r.returncode == 1, r.stderr
        assert r.stderr == f"flowscope {prog}: {path}: 4 UDP datagrams, none to port 9\n", r.stderr
