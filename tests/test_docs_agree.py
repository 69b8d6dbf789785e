"""What an operator reads against what the software does: the options table of docs/collector.md
against the schema and the parser, and the rules the docs state for configuration errors."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, corpus_file, make_v5, udp_payloads

from collector import config as C
from collector.sinks import check_compression


def load(argv: list[str], env: dict[str, str] | None = None) -> C.Config:
    p = argparse.ArgumentParser()
    C.add_arguments(p)
    return C.load(p.parse_args(argv), environ=env or {})


def _doc_rows() -> dict[str, list[str]]:
    """docs/collector.md's options table: flag -> [env, YAML key, default, meaning]."""
    text = (ROOT / "docs" / "collector.md").read_text()
    start = text.index("| flag | env | YAML key | default | meaning |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("| `--"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = [cells[1].strip("`"), cells[2].strip("`"), cells[3].strip("`"), cells[4]]
    return rows


def test_docs_options_table_is_the_generated_one() -> None:
    """docs/collector.md says `flowscope config --markdown` prints its options table: it must be
    that output (regenerate with `python -m collector.cli config --markdown`), as the series table
    is collector.metrics.markdown_table()."""
    assert C.markdown_table() in (ROOT / "docs" / "collector.md").read_text()


def test_docs_options_table_matches_the_parser() -> None:
    """Every row's flag, variable, key and default are what `flowscope run` takes: the flag is
    the parser's, the variable sets that key, and the key's default (as `flowscope config`
    prints it) is the one the table shows."""
    rows = _doc_rows()
    opts = {o.flag: o for o in C.options()}
    assert set(rows) == set(opts)
    p = argparse.ArgumentParser()
    C.add_arguments(p)
    flags = {s for a in p._actions for s in a.option_strings}
    effective = C.to_dict(load([]), redact=False)   # what run takes with nothing set
    for flag, (env, key, default, _meaning) in rows.items():
        assert flag in flags, flag
        assert (opts[flag].env, opts[flag].key) == (env, key), flag
        sec, _, name = key.partition(".")
        value = effective[sec][name] if name else effective[sec]
        assert C._fmt_default(value) == default, (flag, default, value)


@pytest.mark.parametrize("argv,env,named", [
    (["--kafka-compression", "gzip", "--kafka-compression-thread", "on"], {},
     "kafka.compression (from --kafka-compression) is gzip"),
    (["--kafka-compression-thread", "on"], {"FLOWSCOPE_KAFKA_COMPRESSION": "snappy"},
     "kafka.compression (from FLOWSCOPE_KAFKA_COMPRESSION) is snappy"),
    (["--kafka-compression", "lz4", "--kafka-compression-level", "9", "--kafka-compression-thread", "on"], {},
     "kafka.compression_level (from --kafka-compression-level) is 9"),
])
def test_compression_thread_errors_name_their_settings_sources(argv: list[str], env: dict[str, str],
                                                                named: str) -> None:
    """docs/collector.md: "A check across settings names each setting it involves with its
    source". `--kafka-compression-thread on` with a codec or level that has no thread named
    `kafka.compression gzip` and `kafka.compression_level above 2` without saying where they came
    from (a variable in the Deployment, the ConfigMap, a flag), unlike every other such check."""
    cfg = load(["--kafka-brokers", "127.0.0.1:9092", *argv], env)
    problem = check_compression(cfg.kafka, cfg.named)
    assert problem is not None and problem.startswith(
        "kafka.compression_thread (from --kafka-compression-thread): on, but "), problem
    assert named in problem, problem
    assert not re.search(r"kafka\.compression(_level)? (?!\(from)", problem.split(", but ", 1)[1]), problem


def test_default_sampling_says_which_exporters_it_applies_to() -> None:
    """The options table said `--default-sampling` is the "sampling rate for exporters that send
    none": NetFlow v5 with interval 0 sends none too (OVS's NetFlow export, which is not sampled),
    and it is left without `Sampling`, as the README's output table says (v5: the header
    interval, else --sampling). The help names the protocols it is for and the one it is not."""
    from decoders import Decoder, DecoderConfig

    dec = Decoder(DecoderConfig(default_sampling=400))
    v5 = dec.decode(make_v5(1, 1, 0), "10.0.0.1", 2055, 1.7e9).to_dicts()
    assert "Sampling" not in v5[0]
    flows = [f for _, _, p in udp_payloads(corpus_file("ipfix/openbsd-pflow_ipfix.pcap"))
             for f in dec.decode(p, "10.0.0.2", 4739, 1.7e9).to_dicts()]
    assert flows and {f["Sampling"] for f in flows} == {400}
    help_text = {o.key: o.help for o in C.options()}["default_sampling"]
    assert help_text.startswith("sampling rate for IPFIX and NetFlow v9 exporters that send none"), help_text
    assert "not for NetFlow v5" in help_text, help_text


def test_protocol_label_is_each_datagrams_protocol() -> None:
    """docs/collector.md said "The `protocol` label is the protocol the exporter sent last": the
    per-exporter series are split by each datagram's protocol (one OVS address sends IPFIX, sFlow
    and NetFlow), so an exporter that sent v5 then IPFIX has both series, its v5 counts staying
    under netflow5; only flowscope_sampling_rate follows the latest datagram."""
    from collector.metrics import ExporterLabels, decoder_series
    from decoders import Decoder

    dec = Decoder()
    dec.decode(make_v5(1, 3, 0), "10.0.0.1", 2055, 1.7e9)
    for _, _, p in udp_payloads(corpus_file("ipfix/openbsd-pflow_ipfix.pcap")):
        dec.decode(p, "10.0.0.1", 4739, 1.7e9)
    out = decoder_series(dec.series_stats(), ExporterLabels(20))
    assert out["flowscope_datagrams"] == {("10.0.0.1", "netflow5"): 1, ("10.0.0.1", "ipfix"): 2}
    assert out["flowscope_flows"][("10.0.0.1", "netflow5")] == 3
    assert set(out["flowscope_sampling_rate"]) == {("10.0.0.1", "ipfix")}
    text = " ".join((ROOT / "docs" / "collector.md").read_text().split())
    assert "protocol the exporter sent last" not in text
    assert ("The `protocol` label is the protocol of the datagrams counted: an exporter that sends several "
            in text)


_KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "https://127.0.0.1:6443"{ca}}}
users:
- name: u
  user: {user}
contexts:
- name: dev
  context: {{cluster: c, user: u}}
current-context: dev
"""


@pytest.mark.parametrize("ca,user,missing", [
    (", certificate-authority: ca.crt", "{token: x}", "ca.crt"),
    ("", "{client-certificate: tls.crt, client-key: tls.key}", "tls.crt"),
    # an exec plugin (not run by `config`) may give the client certificate: the CA is still checked
    (", certificate-authority: ca.crt", "{exec: {apiVersion: client.authentication.k8s.io/v1beta1, "
     "command: MARKER}}", "ca.crt"),
])
def test_config_refuses_the_kubeconfig_files_run_refuses(tmp_path: Path, ca: str, user: str, missing: str) -> None:
    """docs/collector.md: `flowscope config` checks the kubeconfig ("its files, the context and
    the cluster and user it names") and refuses what `run` would refuse "with the same line and
    exit code 2, so a configuration it prints is one `run` accepts". A kubeconfig whose
    certificate-authority or client-certificate file is missing was printed by `config` (exit 0)
    and refused by `run` ("File does not exist"). The exec plugin is still never run."""
    marker = tmp_path / "exec-ran"
    script = tmp_path / "plugin.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    script.chmod(0o755)
    kc = tmp_path / "kc.yaml"
    kc.write_text(_KUBECONFIG.format(ca=ca, user=user.replace("MARKER", str(script))))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    line = f"flowscope: configuration error: enrich.kubeconfig (from --kubeconfig): {kc}: File does not exist: " \
           f"{tmp_path / missing}\n"
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--kubeconfig", str(kc)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert (r.returncode, r.stderr) == (2, line)
    assert not marker.exists()
    run = subprocess.run([sys.executable, "-m", "collector.cli", "run", "--kubeconfig", str(kc), "--metrics-addr",
                          "", "--output-file", os.devnull, "--listen", "netflow://127.0.0.1:9"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert run.returncode == 2 and run.stderr.endswith(line), run.stderr
    marker.unlink(missing_ok=True)   # (run loads the credentials: it does run the plugin)
    (tmp_path / missing).write_text("")  # present: config takes it (a CA that does not parse is run's to say)
    if missing == "tls.crt":
        (tmp_path / "tls.key").write_text("")
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--kubeconfig", str(kc)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()


def test_deploy_readme_sample_record_has_the_identity_the_enricher_writes(tmp_path: Path) -> None:
    """deploy/README.md shows "One record (from `make demo`)" for operators writing consumers:
    frontend -> cart, both pods of node-a. It showed the destination without DstK8S_Type,
    DstK8S_HostIP, DstK8S_HostName and DstK8S_Zone, which the enricher writes for every pod (the
    source had them): a consumer written from the sample would miss them. The demo's own API
    objects, served by the tests' API server, and the same 5-tuple through the real enricher give
    the identity keys the sample must carry, with the same values."""
    import json
    import struct
    import time

    import enrich
    from decoders import Decoder
    from deploy.demo.demo import api_objects
    from tests.support.fake_kube import running_fake_kube

    text = (ROOT / "deploy" / "README.md").read_text()
    start = text.index("One record (from `make demo`")
    begin = text.index("```json\n", start) + 8
    block = text[begin:text.index("\n```", begin)]
    sample = json.loads(block)
    with running_fake_kube() as fk:
        for kind, objs in api_objects().items():
            for o in objs:
                fk.add(kind, o)
        e = enrich.Enricher(enrich.EnrichConfig(kubeconfig=str(fk.write_kubeconfig(tmp_path / "kc")),
                                                cluster_name="demo"))
        e.start()
        try:
            deadline = time.monotonic() + 30
            while not e.ready and time.monotonic() < deadline:
                time.sleep(0.05)
            assert e.ready
            up, now = 100_000, time.time()
            hdr = struct.pack("!HHIIIIBBH", 5, 1, up, int(now), 0, 1, 0, 0, 0)
            rec = struct.pack("!4s4s4sHHIIIIHHBBBBHHBBH", bytes([10, 128, 0, 10]), bytes([10, 128, 0, 11]),
                              bytes(4), 0, 0, 1, 78, up - 10, up - 10, 41001, 8080, 0, 0x02, 6, 0, 0, 0, 0, 0, 0)
            real = json.loads(Decoder().decode(hdr + rec, sample["AgentIP"], 6343, now).to_json(e)[0])
        finally:
            e.stop()
    identity = {k: v for k, v in real.items() if "K8S_" in k or k == "FlowDirection"}
    assert {k: sample.get(k) for k in identity} == identity
    assert {k for k in sample if "K8S_" in k} == {k for k in identity if k != "FlowDirection"}


@pytest.mark.parametrize("doc", ["README.md", "docs/collector.md", "docs/INTERNALS.md", "deploy/README.md",
                                 "benchmarks/README.md"])
def test_series_and_labels_the_docs_name_exist(doc: str) -> None:
    """Every flowscope_* series an operator doc names is one /metrics exposes (a counter by its
    _total: the bare name is no series a query finds, and one was in the counter records' help),
    and every label it writes in `{...}` is one of that series' labels (test_deploy checks
    deploy/README's names only, not the labels, nor the other docs)."""
    from collector.metrics import SERIES

    labels: dict[str, set[str]] = {}
    for s in SERIES.values():
        if s.kind == "counter":
            labels[s.name + "_total"] = set(s.labels)
        else:
            labels[s.name] = set(s.labels)
        if s.kind == "histogram":
            labels.update({s.name + x: set(s.labels) for x in ("_bucket", "_sum", "_count")})
    text = (ROOT / doc).read_text()
    for name in set(re.findall(r"flowscope_[a-z_]*[a-z]", text)):
        assert name in labels, f"{doc}: {name} is not a series"
    for m in re.finditer(r"(flowscope_[a-z_]*[a-z])\{([^}]*)\}", text):
        used = set(re.findall(r"([a-z_]+)\s*(?:=|,|$)", m.group(2)))
        assert used <= labels[m.group(1)], f"{doc}: {m.group(0)}: no label {used - labels[m.group(1)]}"


def test_rcvbuf_0_is_what_its_help_says() -> None:
    """`--rcvbuf 0` is accepted and asks the kernel for nothing, leaving net.core.rmem_default (a
    few hundred KiB, not the 32 MiB default); --help and the docs' table did not say what 0 means,
    where other options' 0 is "no limit" (--max-exporter-rate) or "leave unset"."""
    from collector.server import open_socket

    rcvbuf = next(o for o in C.options() if o.key == "rcvbuf")
    assert "0 = the kernel's default, net.core.rmem_default" in rcvbuf.f.metadata["help"]
    assert load(["--rcvbuf", "0"]).rcvbuf == 0
    with open("/proc/sys/net/core/rmem_default") as fh:
        rmem_default = int(fh.read())
    sock, granted = open_socket(C.Listener("netflow", "127.0.0.1", 0), 0, False)
    try:
        # what the kernel reports is twice the usable size, which open_socket halves
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == rmem_default
        assert granted == rmem_default // 2
    finally:
        sock.close()


def test_an_ipv6_listener_takes_ipv6_only_as_its_help_says() -> None:
    """`--listen netflow://[::]:2055` answers IPv6 alone (IPV6_V6ONLY), where a Go collector's
    [::] (goflow2) or most programs' take both families; docs/collector.md said so under
    Listeners, --help (and the options table) gave only "IPv6 as netflow://[::]:2055", and an
    IPv4 exporter sending there is refused by the kernel with nothing counted."""
    from collector.server import open_socket

    listen = next(o for o in C.options() if o.key == "listen")
    assert "netflow://[::]:2055, which takes IPv6 only" in listen.f.metadata["help"]
    assert "list 0.0.0.0 too for both families" in listen.f.metadata["help"]
    sock, _ = open_socket(C.Listener("netflow", "::", 0), 0, False)
    port = sock.getsockname()[1]
    try:
        sock.settimeout(0.5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4, \
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as v6:
            v4.sendto(b"v4", ("127.0.0.1", port))
            v6.sendto(b"v6", ("::1", port))
            assert sock.recvfrom(64)[0] == b"v6"
            with pytest.raises(TimeoutError):
                sock.recvfrom(64)
    finally:
        sock.close()


def _workstation_env(tmp_path: Path) -> dict[str, str]:
    """An operator's shell: no FLOWSCOPE_* setting, no kubeconfig, not in a pod."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FLOWSCOPE_") and k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    return env


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and not isinstance(a, bool) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def test_the_config_commands_the_deploy_docs_show_print_the_shipped_file(tmp_path: Path) -> None:
    """deploy/README.md ("print the effective configuration of a file with `flowscope config
    --config deploy/kubernetes/base/config.yaml ...`") and config.yaml's own header give a
    command for a workstation. It said `--enrich false` alone, and exited 2 there: the file's
    state_file is in the pod's state volume, /var/lib/flowscope, which a workstation lacks, and
    `flowscope config` refuses what `flowscope run` would. Each command, run as written (the
    header's from the file's directory), prints the file's settings but for the two lines the
    docs say it changes."""
    import shlex

    import yaml

    base = ROOT / "deploy" / "kubernetes" / "base"
    readme = (ROOT / "deploy" / "README.md").read_text().replace("\n", " ")
    header = " ".join(line.lstrip("# ") for line in (base / "config.yaml").read_text().splitlines()
                      if line.startswith("#"))
    commands = [(c, ROOT) for c in re.findall(r"`(flowscope config --config [^`]*)`", readme)]
    commands += [(c, base) for c in re.findall(r"`(flowscope config --config [^`]*)`", header)]
    assert len(commands) == 2, commands
    shipped = _flat(yaml.safe_load((base / "config.yaml").read_text()))
    for command, cwd in commands:
        argv = shlex.split(command)
        r = subprocess.run([sys.executable, "-m", "collector.cli", *argv[1:]], capture_output=True, text=True,
                           cwd=cwd, env=_workstation_env(tmp_path), timeout=120)
        assert r.returncode == 0, (command, r.stderr)
        printed = _flat(yaml.safe_load(r.stdout))
        # what deploy/README.md says the command prints differently from the file
        assert (printed["enrich.enabled"], printed["state_file"]) == ("false", ""), command
        assert "enabled: 'false'" in readme and "state_file: ''" in readme
        differ = {k: (v, printed.get(k)) for k, v in shipped.items()
                  if k not in ("enrich.enabled", "state_file") and not _same(v, printed.get(k))}
        assert not differ, (command, differ)


FLAG = r"(?<![\w-])--[a-z][a-z0-9-]*"
# `python -m MODULE ...` (and `python DIR/FILE.py ...`) command lines of the project's own tools
TOOL_COMMAND = re.compile(r"python3? (?:-m ((?:benchmarks|deploy\.demo)\.\w+(?:\.\w+)*|collector\.broker)|"
                          r"((?:benchmarks|deploy)/[\w/]+\.py))\b([^`#\n]*)")


def _code(text: str) -> list[str]:
    """The lines of a markdown text's fenced blocks and its inline code spans (joined into one line)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    return [line for b in blocks for line in b.splitlines()] + [s.replace("\n", " ")
                                                                 for s in re.findall(r"`([^`]+)`", prose)]


def _usage(help_text: str) -> tuple[set[str], set[str]]:
    """From an argparse --help's usage lines: the flags it requires, and the flags that take a value."""
    usage = " ".join(help_text.split("\n\n", 1)[0].split())
    required, valued = set(), set()
    for m in re.finditer(r"(\[|\| )?(--[a-z][a-z0-9-]*)( [A-Z][A-Z0-9_:]*)?", usage):
        if m.group(1) is None:
            required.add(m.group(2))
        if m.group(3):
            valued.add(m.group(2))
    return required, valued


def test_the_tool_commands_the_docs_show_start_and_take_their_flags(tmp_path: Path) -> None:
    """Each `python -m benchmarks.X ...`, `python -m deploy.demo.demo ...` or `python -m
    collector.broker ...` command line of the docs, run from the repository root as the docs say,
    starts (its --help exits 0) and takes every flag written after it (those quoted for
    --flowscope-args being `flowscope run`'s), with the flags its usage requires and a value after
    each flag that takes one (README.md cited `python -m benchmarks.stream_ab --kafka
    --enriched`, which has no --tree and no NAME for --enriched: a usage error). benchmarks/README.md's `python benchmarks/build.py`,
    the first command of its load generator section, died with "No module named 'tests'" once
    build.py imported tests.support (a script's directory, not the root, is on its path)."""
    from collector.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    run_flags = {s for a in sub.choices["run"]._actions for s in a.option_strings}
    env = {k: v for k, v in _workstation_env(tmp_path).items() if k != "PYTHONPATH"}
    helps: dict[str, str] = {}
    checked = 0
    for doc in ("README.md", "deploy/README.md", "docs/collector.md", "docs/INTERNALS.md", "benchmarks/README.md"):
        for span in _code((ROOT / doc).read_text()):
            for m in TOOL_COMMAND.finditer(span):
                tool = m.group(1) or m.group(2)
                if tool not in helps:
                    argv = ["-m", tool] if m.group(1) else [tool]
                    r = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True,
                                       cwd=ROOT, env=env, timeout=120)
                    assert r.returncode == 0, f"{doc}: `python {' '.join(argv)}`: {r.stderr[-400:]}"
                    helps[tool] = r.stdout
                quoted = " ".join(re.findall(r"'([^']*)'", m.group(3)))
                words = re.sub(r"'[^']*'", "QUOTED", m.group(3)).split()
                unknown = set(re.findall(FLAG, " ".join(words))) - set(re.findall(FLAG, helps[tool]))
                assert not unknown, f"{doc}: `{m.group(0).strip()}`: {sorted(unknown)} are not {tool}'s"
                required, valued = _usage(helps[tool])
                assert required <= set(words), f"{doc}: `{m.group(0).strip()}` lacks {sorted(required - set(words))}"
                for i, w in enumerate(words):
                    assert w not in valued or (i + 1 < len(words) and not words[i + 1].startswith("-")), \
                        f"{doc}: `{m.group(0).strip()}`: {w} takes a value"
                assert set(re.findall(FLAG, quoted)) <= run_flags, f"{doc}: `{m.group(0).strip()}`"
                checked += 1
    assert {"benchmarks.build", "benchmarks.harness", "deploy.demo.demo", "collector.broker"} <= set(helps)
    assert checked >= 20, checked


@pytest.mark.parametrize("series", ["flowscope_flows_dropped_total{reason}", "flowscope_kafka_errors_total{kind}"])
def test_the_troubleshooting_table_lists_every_value_of_its_drop_and_error_series(series: str) -> None:
    """deploy/README.md's troubleshooting table lists the reasons a flow is dropped and the kinds
    of Kafka error, each with what it means; `unconfirmed`, `worker_died` and `internal` drops,
    and `too_large` and `compress` errors, which /metrics shows from the start at 0, were not in
    its lists, so an operator whose alert fired on one found no word of it there."""
    from collector.server import FLOW_DROP_REASONS, KAFKA_ERROR_KINDS

    values = {"flowscope_flows_dropped_total{reason}": FLOW_DROP_REASONS,
              "flowscope_kafka_errors_total{kind}": KAFKA_ERROR_KINDS}[series]
    text = (ROOT / "deploy" / "README.md").read_text()
    table = text[text.index("| symptom | look at | likely cause |"):]
    listed = re.search(re.escape(f"`{series}` (") + r"([^()]*(?:\([^()]*\)[^()]*)*)\)", table)
    assert listed, series
    assert set(re.findall(r"`([a-z_]+)`", listed.group(1))) >= set(values), listed.group(1)
