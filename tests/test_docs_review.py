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
    flowscope_templates series shows: with the bound full the gauge said 1104 of 2352. It must be the bound's own figure."""
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
    # another exporter's templates: the gauge at the bound meant no room, so the restored
    # exporters (never heard from) give way to them, and the gauge stays within the bound
    send_udp([p for _, _, p in udp_payloads(corpus_file("ipfix/openbsd-pflow_ipfix.pcap"))], c.port)
    wait_for(lambda: c.value("flowscope_templates") > 0, 30, what="the new exporter's templates")
    assert c.value("flowscope_template_fields") <= counted
    assert c.value("flowscope_decode_errors_total", reason="template_limit") == 0


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


# -- claims of a kind that can be checked mechanically ----------------------------------------------

OPERATOR_DOCS = ("README.md", "deploy/README.md", "docs/collector.md", "docs/INTERNALS.md", "Makefile")
FLAG = r"(?<![\w-])--[a-z][a-z0-9-]*"
# Flags of other programs the docs quote in their own commands (ovnkube, kubectl, oc, buildah, etcdutl,
# podman, Kafka's console consumer, the demo script, a benchmark): not flowscope's to check.
FOREIGN_FLAGS = {
    "deploy/README.md": {"--ipfix-targets", "--sflow-targets", "--netflow-targets", "--ipfix-sampling",
                         "--ipfix-cache-max-flows", "--ipfix-cache-active-timeout", "--set", "--type",
                         "--patch-file", "--from-literal", "--from-file", "--format", "--ignorefile",
                         "--read-only", "--bootstrap-server", "--topic", "--from-beginning", "--property",
                         "--keep", "--init"},   # (docker run --init)
    "README.md": {"--thread", "--records", "--kafka", "--enriched", "--only", "--agents", "--unmatched",
                  "--collectors", "--flowscope-args", "--callgrind", "--pods", "--nodes", "--services",
                  "--rounds", "--tree"},   # benchmarks: compress_bench --thread, harness --records/--collectors/--flowscope-args, stream_ab --kafka/--tree/--enriched/--unmatched, pipeline_bench --only/--agents/--unmatched/--callgrind/--pods/--nodes/--services/--rounds
    # etcdutl snapshot restore --bump-revision, kube-apiserver --etcd-compaction-interval, kubectl --chunk-size,
    # docker run --init, pip install --no-deps
    "docs/collector.md": {"--bump-revision", "--etcd-compaction-interval", "--chunk-size", "--init", "--no-deps"},
}
# flags the docs name as what flowscope refuses (an abbreviation: usage error, did you mean ...)
REFUSED_FLAGS = {"--kafka-broker"}
# FLOWSCOPE_* names that are not options: the config file's variable, build switches, the
# variables the kubelet's service links would add, and docs/collector.md's misspelling example.
FOREIGN_VARIABLES = {"FLOWSCOPE_CONFIG", "FLOWSCOPE_DEBUG", "FLOWSCOPE_FUZZ", "FLOWSCOPE_SERVICE_HOST",
                     "FLOWSCOPE_PORT_4739_UDP", "FLOWSCOPE_METRICS_PORT", "FLOWSCOPE_ENRICH",
                     "FLOWSCOPE_ENRICH_KUBECONFG"}


def _command_flags() -> dict[str, set[str]]:
    import argparse

    from collector.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in sp._actions for s in a.option_strings} for name, sp in sub.choices.items()}


def test_every_flag_the_docs_name_is_a_flowscope_flag() -> None:
    """An operator copies flags from the docs: each `--flag` is one a flowscope command takes (or
    one of another program's the docs quote), and one written after `flowscope CMD` on the same
    line or in the same code span is CMD's own (a decode flag shown on run would fail at start)."""
    import re

    flags = _command_flags()
    known = set().union(*flags.values()) | {"--version"}
    for doc in OPERATOR_DOCS:
        text = (ROOT / doc).read_text()
        unknown = set(re.findall(FLAG, text)) - known - FOREIGN_FLAGS.get(doc, set()) - REFUSED_FLAGS
        assert doc == "Makefile" or not unknown, f"{doc}: not a flag of any flowscope command: {sorted(unknown)}"
        for m in re.finditer(r"flowscope (run|decode|replay|config|health)\b([^`\n]*)", text):
            if m.group(2).startswith(": error: unrecognized arguments:"):
                continue   # (the usage error quoted, not a command line)
            wrong = set(re.findall(FLAG, m.group(2))) - flags[m.group(1)]
            assert not wrong, f"{doc}: `{m.group(0)}`: {sorted(wrong)} are not flowscope {m.group(1)}'s"


def test_every_variable_the_docs_name_is_an_option() -> None:
    """A FLOWSCOPE_* variable misspelled in the docs is ignored by the collector (with a warning
    an operator may not read): each one the docs name sets an option."""
    import re

    from collector import config as C

    variables = {o.env for o in C.options()}
    for doc in (*OPERATOR_DOCS, "benchmarks/README.md"):
        named = set(re.findall(r"FLOWSCOPE_[A-Z0-9_]*[A-Z0-9]", (ROOT / doc).read_text()))
        assert not named - variables - FOREIGN_VARIABLES, f"{doc}: {sorted(named - variables - FOREIGN_VARIABLES)}"


def test_label_values_the_docs_name_are_ones_the_collector_writes() -> None:
    """`flowscope_x_total{reason="y"}` in a doc is a query an operator pastes into an alert: y must
    be a value the collector writes for that series (a misspelt one matches nothing, silently)."""
    import re

    from collector.http import CLOSE_REASONS
    from collector.server import DATAGRAM_DROP_REASONS, FLOW_DROP_REASONS, KAFKA_ERROR_KINDS

    decode_reasons = {"truncated", "bad_version", "bad_length", "bad_set", "bad_template", "template_limit",
                      "options_limit", "too_large", "rate_limited", "bad_sample", "template_mismatch", "bad_count"}
    values = {
        ("flowscope_datagrams_dropped_total", "reason"): set(DATAGRAM_DROP_REASONS),
        ("flowscope_flows_dropped_total", "reason"): set(FLOW_DROP_REASONS),
        ("flowscope_counter_records_dropped_total", "reason"): set(FLOW_DROP_REASONS),
        ("flowscope_kafka_errors_total", "kind"): set(KAFKA_ERROR_KINDS),
        ("flowscope_http_connections_closed_total", "reason"): set(CLOSE_REASONS),
        ("flowscope_decode_errors_total", "reason"): decode_reasons,
        ("flowscope_state_saves_total", "result"): {"ok", "error"},
        ("flowscope_state_loads_total", "result"): {"ok", "error", "missing", "refresh"},
        ("flowscope_enrich_addresses_total", "kind"): {"pod", "node", "service", "none"},
        ("flowscope_enrich_flows_total", "result"): {"flows_identified", "flows_unidentified"},
        ("flowscope_enrich_lookups_total", "result"): {"lookups_cached", "lookups_index"},
        ("flowscope_kafka_compression_bytes_total", "side"): {"in", "out"},
        ("flowscope_kafka_resent_records_total", "records"): {"flows", "counters"},
    }
    # the decoder's reasons are the ones its code raises and counts
    core = "".join((ROOT / "decoders" / f).read_text() for f in ("_core.pyx", "netflow.pxi", "sflow.pxi"))
    raised = set(re.findall(r'(?:raise_decode|count_error)\("([a-z_]+)"', core))
    assert raised - {"rate_limited", "too_large"} <= decode_reasons <= raised | {"rate_limited", "too_large"}, raised
    for doc in OPERATOR_DOCS:
        for m in re.finditer(r'(flowscope_[a-z_]+)\{([a-z_]+)="([^"]*)"((?:\|"[^"]*")*)\}', (ROOT / doc).read_text()):
            key = (m.group(1), m.group(2))
            if key in values:
                for v in [m.group(3), *re.findall(r'"([^"]*)"', m.group(4))]:
                    assert v in values[key], f"{doc}: {m.group(0)}: {v!r} is not one of {sorted(values[key])}"


def test_yaml_the_docs_show_loads() -> None:
    """The YAML blocks of the operator docs are meant to be pasted into config.yaml: each one's keys
    must be the schema's (a key the schema lacks is a start-up error)."""
    import argparse
    import re
    import tempfile

    from collector import config as C

    blocks = [b for doc in ("deploy/README.md", "docs/collector.md", "README.md")
              for b in re.findall(r"```yaml\n(.*?)```", (ROOT / doc).read_text(), re.S)]
    assert len(blocks) >= 2
    for block in blocks:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
            fh.write(block)
            fh.flush()
            p = argparse.ArgumentParser()
            C.add_arguments(p)
            # (the password of a block with SASL comes from the Secret, as the docs say: the variable)
            env = {"FLOWSCOPE_KAFKA_SASL_PASSWORD": "from-the-secret"} if "sasl_mechanism:" in block else {}
            C.load(p.parse_args(["--config", fh.name]), environ=env)


def test_internals_names_the_view_capsule_the_code_exports() -> None:
    """docs/INTERNALS.md is "the contract every part of flowscope codes against": an enricher
    written to it offers its C view under the capsule name it gives. It said
    flowscope.enrich.view.v6 after the view became v7 (the slot's holder kind for
    flowscope_enrich_addresses_total), a name the encoder no longer takes."""
    import re

    code = re.search(r'#define FS_VIEW_CAPSULE "([^"]+)"', (ROOT / "enrich" / "view.pxd").read_text())
    assert code is not None
    named = set(re.findall(r"flowscope\.enrich\.view\.v\d+", (ROOT / "docs" / "INTERNALS.md").read_text()))
    assert named == {code.group(1)}, named
