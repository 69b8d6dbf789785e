"""Unit tests of the collector's pure parts: config schema, bounded queue, metrics labels, replay."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, FailsAt, corpus_file, make_v5, udp_payloads

from collector import config as C
from collector import replay as R
from collector.metrics import Aggregator, ExporterLabels, parse_exposition, total
from collector.sinks import FLOWS, BoundedQueue, conversation_key


def load(argv: list[str], env: dict[str, str] | None = None) -> C.Config:
    p = argparse.ArgumentParser()
    C.add_arguments(p)
    return C.load(p.parse_args(argv), environ=env or {})


# ---------------------------------------------------------------------------------------------- config

def test_defaults() -> None:
    cfg = load([])
    assert cfg.listen == ["netflow://0.0.0.0:2055", "ipfix://0.0.0.0:4739", "sflow://0.0.0.0:6343"]
    assert cfg.rcvbuf == 32 * 1024 * 1024 and cfg.queue_bytes == 256 * 1024 * 1024
    assert cfg.kafka.topic == "flowscope-flows" and cfg.kafka.key == "none"
    assert cfg.default_sampling == 400 and cfg.sink_kind() == "stdout" and cfg.loop == "uvloop"


@pytest.mark.parametrize("argv,env,message", [
    (["--listen", "http://0.0.0.0:80"], {}, "listen (from --listen): 'http://0.0.0.0:80': expected "
     "SCHEME://HOST:PORT with SCHEME one of netflow, ipfix, sflow"),
    (["--kafka-compression", "brotli"], {}, "kafka.compression (from --kafka-compression): 'brotli' is not one "
     "of none, gzip, snappy, lz4, zstd"),
    (["--kafka-key", "random"], {}, "kafka.key (from --kafka-key): 'random' is not one of none, exporter, "
     "conversation"),
    ([], {"FLOWSCOPE_WORKERS": "0"}, "workers (from FLOWSCOPE_WORKERS): 0 is out of range: must be between 1 and 256"),
    ([], {"FLOWSCOPE_QUEUE_BYTES": "lots"}, "queue_bytes (from FLOWSCOPE_QUEUE_BYTES): expected a size such as "
     "33554432, 32MiB or 256MB"),
    (["--sampling", "10.0.0.0/8"], {}, "sampling (from --sampling): '10.0.0.0/8': expected CIDR=RATE"),
    (["--allow-exporters", "10.0.0.300/8"], {}, "allow_exporters (from --allow-exporters): '10.0.0.300/8' is "
     "not a CIDR"),
    # bits past the prefix: a network written wrong or one address with a wrong prefix, not widened
    (["--allow-exporters", "10.0.0.1/8"], {}, "allow_exporters (from --allow-exporters): '10.0.0.1/8' has bits "
     "set past its /8: write the network, 10.0.0.0/8, or the one address, 10.0.0.1"),
    (["--sampling", "fd00::1/64=400"], {}, "sampling (from --sampling): 'fd00::1/64' has bits set past its /64: "
     "write the network, fd00::/64, or the one address, fd00::1"),
    (["--kafka-sasl-mechanism", "SCRAM-SHA-256"], {}, "kafka.sasl_user (default): empty, but kafka.sasl_mechanism (from --kafka-sasl-mechanism) is "
     "SCRAM-SHA-256: SASL needs a user"),
    (["--sink", "kafka"], {}, "kafka.brokers (default): empty, but sink (from --sink) is kafka: give the brokers "
     "(--kafka-brokers"),
    (["--listen", "netflow://0.0.0.0:2055", "--listen", "sflow://0.0.0.0:2055"], {},
     "listen (from --listen): 0.0.0.0:2055 is listed twice"),
    (["--drop-policy", "random"], {}, "drop_policy (from --drop-policy): 'random' is not one of newest, oldest"),
    (["--kafka-compression", "gzip", "--kafka-compression-level", "12"], {},
     "kafka.compression_level (from --kafka-compression-level): 12 is out of range for kafka.compression (from "
     "--kafka-compression) gzip: 0 to 9"),
    (["--kafka-compression", "lz4", "--kafka-compression-level", "-1"], {},
     "kafka.compression_level (from --kafka-compression-level): -1 is out of range for kafka.compression (from "
     "--kafka-compression) lz4: 0 to 16"),
    (["--kafka-compression-level", "3"], {}, "kafka.compression_level (from --kafka-compression-level): 3 "
     "is out of range for kafka.compression (default) none: 0 to 0"),
    (["--kafka-sasl-user", "bob"], {}, "kafka.sasl_user (from --kafka-sasl-user) is set but "
     "kafka.sasl_mechanism (default) is none"),
    (["--kafka-brokers", "k:9092", "--counters", "--kafka-counters-topic", "flowscope-flows"], {},
     "kafka.counters_topic (from --kafka-counters-topic): 'flowscope-flows' is also kafka.topic (default)"),
    # a record batch is queued whole: a queue smaller than two dropped whole bursts (review helper-84)
    (["--kafka-brokers", "k:9092", "--queue-bytes", "200000"], {},
     "queue_bytes (from --queue-bytes): 200000 is less than three times kafka.batch_bytes (default) 1048576"),
])
def test_validation_messages(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(C.ConfigError) as e:
        load(argv, env)
    assert str(e.value).startswith(message), str(e.value)


def test_precedence_yaml_env_flag(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("workers: 3\nrcvbuf: 8MiB\nkafka:\n  topic: from-yaml\n  brokers: [a:1, b:2]\n"
                 "sampling:\n  10.0.0.0/8: 100\n")
    cfg = load(["--config", str(f)])
    assert (cfg.workers, cfg.rcvbuf, cfg.kafka.topic, cfg.kafka.brokers) == (3, 8 * 1024**2, "from-yaml",
                                                                             ["a:1", "b:2"])
    assert cfg.sampling == {"10.0.0.0/8": 100} and cfg.sink_kind() == "kafka"
    cfg = load(["--config", str(f)], {"FLOWSCOPE_WORKERS": "2", "FLOWSCOPE_KAFKA_TOPIC": "from-env"})
    assert (cfg.workers, cfg.kafka.topic) == (2, "from-env")
    cfg = load(["--config", str(f), "--workers", "4"], {"FLOWSCOPE_WORKERS": "2"})
    assert cfg.workers == 4
    f.write_text("kafka:\n  topics: x\n")
    with pytest.raises(C.ConfigError, match=r"kafka.topics \(from .*\): unknown option \(did you mean kafka.topic\?\); kafka options are: "
                       "brokers"):
        load(["--config", str(f)])
    f.write_text("- a\n")
    with pytest.raises(C.ConfigError, match="expected a mapping"):
        load(["--config", str(f)])


def test_ipv6_listen_and_repeatable() -> None:
    cfg = load(["--listen", "netflow://[::]:2055", "--listen", "sflow://127.0.0.1:6343,ipfix://[::1]:4739"])
    assert [str(x) for x in cfg.listeners()] == ["netflow://[::]:2055", "sflow://127.0.0.1:6343",
                                                 "ipfix://[::1]:4739"]
    # the allowlist and the brokers add up too, as --listen and --sampling do: a second flag
    # silently replaced the first, and the first allowed exporters were refused (review helper-84)
    cfg = load(["--allow-exporters", "127.0.0.0/8", "--allow-exporters", "10.0.0.0/8,fd00::/8",
                "--kafka-brokers", "a:1", "--kafka-brokers", "b:2,c:3"])
    assert cfg.allow_exporters == ["127.0.0.0/8", "10.0.0.0/8", "fd00::/8"]
    assert cfg.kafka.brokers == ["a:1", "b:2", "c:3"]
    assert load([], {"FLOWSCOPE_ALLOW_EXPORTERS": "127.0.0.0/8,10.0.0.0/8"}).allow_exporters == ["127.0.0.0/8",
                                                                                               "10.0.0.0/8"]


def test_config_command_prints_yaml_round_trip(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT), "FLOWSCOPE_KAFKA_SASL_PASSWORD": "s3cret", "FLOWSCOPE_KAFKA_SASL_USER": "u",
           "FLOWSCOPE_KAFKA_SASL_MECHANISM": "PLAIN", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--workers", "2", "--kafka-key",
                        "exporter"], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert "workers: 2" in r.stdout and "key: exporter" in r.stdout
    assert "s3cret" not in r.stdout and "<redacted>" in r.stdout
    f = tmp_path / "eff.yaml"
    f.write_text(r.stdout.replace("<redacted>", ""))
    assert load(["--config", str(f)], {"FLOWSCOPE_KAFKA_SASL_PASSWORD": "s3cret"}).workers == 2


def test_a_redacted_secret_is_refused_when_the_dump_is_loaded_back(tmp_path: Path) -> None:
    """`flowscope config > f.yaml; flowscope run --config f.yaml`: the dump holds the placeholder,
    not the password. Loading it without the password from its variable is a configuration error
    (it authenticated with the literal '<redacted>'); with the variable set it works."""
    base = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    secret = {"FLOWSCOPE_KAFKA_SASL_PASSWORD": "s3cret", "FLOWSCOPE_KAFKA_SASL_USER": "u",
              "FLOWSCOPE_KAFKA_SASL_MECHANISM": "PLAIN", "FLOWSCOPE_KAFKA_BROKERS": "127.0.0.1:9"}

    def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True,
                              env={**base, **env}, cwd=ROOT, timeout=60)

    dump = cli("config", env=secret)
    assert dump.returncode == 0 and "s3cret" not in dump.stdout
    assert dump.stdout.startswith("# kafka.sasl_password is set but not shown: give it with "
                                  "FLOWSCOPE_KAFKA_SASL_PASSWORD when loading this file")
    f = tmp_path / "eff.yaml"
    f.write_text(dump.stdout)
    for command in ("run", "config"):
        r = cli(command, "--config", str(f), env={})
        assert r.returncode == 2, r.stderr
        assert r.stderr == (f"flowscope: configuration error: kafka.sasl_password (from {f}): <redacted> is the "
                            "placeholder `flowscope config` prints instead of the secret, not the secret: set "
                            "FLOWSCOPE_KAFKA_SASL_PASSWORD (it beats the file) or remove the key\n")
    cfg = load(["--config", str(f)], {"FLOWSCOPE_KAFKA_SASL_PASSWORD": "s3cret"})
    assert (cfg.kafka.sasl_user, cfg.kafka.sasl_password) == ("u", "s3cret")


def test_run_help_documents_every_option() -> None:
    r = subprocess.run([sys.executable, "-m", "collector.cli", "run", "--help"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}, cwd=ROOT,
                       check=True)
    for o in C.options():
        assert o.flag in r.stdout and o.env in r.stdout, o.key


@pytest.mark.parametrize("command,codes", [("run", ("0 when stopped by SIGTERM", "1 when a worker died",
                                                     "2 for a configuration error", "130 for Ctrl-C")),
                                           ("config", ("0 when the configuration was printed",
                                                       "2 for a configuration error"))])
def test_run_and_config_help_give_their_exit_statuses(command: str, codes: tuple[str, ...]) -> None:
    """replay, decode and health say their exit statuses in --help; run and config, the two an
    operator scripts (a systemd unit, a CI check of a values file), said none, though
    docs/collector.md documents them."""
    r = subprocess.run([sys.executable, "-m", "collector.cli", command, "--help"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "2000"}, cwd=ROOT,
                       check=True)
    text = " ".join(r.stdout.split())
    assert "Exit status: " in text, r.stdout[-600:]
    for code in codes:
        assert code in text, code


@pytest.mark.parametrize("command", ["run", "config"])
def test_a_config_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path, command: str) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes("kafka:\n  client_id: caf\u00e9\n".encode("latin-1"))
    r = subprocess.run([sys.executable, "-m", "collector.cli", command, "--config", str(f)], capture_output=True,
                       text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr == (f"flowscope: configuration error: --config {f}: not UTF-8 text (byte 0xe9 on line 2); "
                        "save it as UTF-8\n")


def test_config_command_warns_about_unknown_variables() -> None:
    """A misspelt variable is silently not applied: `flowscope config`, the command one runs to
    see why, says so (on stderr; stdout stays loadable YAML), FLOWSCOPE_ENRICH_* included."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "FLOWSCOPE_ENRICH_KUBECONFG": "/k",
           "FLOWSCOPE_WORKRES": "2", "FLOWSCOPE_ENRICH_CLUSTER_NAME": "prod", "FLOWSCOPE_DEBUG": "1"}
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config"], capture_output=True, text=True, env=env,
                       cwd=ROOT, check=True, timeout=60)
    assert r.stderr.splitlines() == [
        "flowscope: warning: ignoring unknown variable FLOWSCOPE_ENRICH_KUBECONFG "
        "(did you mean FLOWSCOPE_ENRICH_KUBECONFIG?)",
        "flowscope: warning: ignoring unknown variable FLOWSCOPE_WORKRES (did you mean FLOWSCOPE_WORKERS?)"]
    assert "cluster_name: prod" in r.stdout and "kubeconfig: ''" in r.stdout


def test_bad_config_exit_code() -> None:
    r = subprocess.run([sys.executable, "-m", "collector.cli", "run", "--kafka-acks", "2"], capture_output=True,
                       text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert r.returncode == 2
    assert "kafka.acks (from --kafka-acks): '2' is not one of 0, 1, all" in r.stderr


@pytest.mark.parametrize("argv,env,yaml_text,message", [
    (["--shutdown-timeout", "nan"], {}, "", "shutdown_timeout (from --shutdown-timeout): nan is not a finite number"),
    (["--stats-interval", "inf"], {}, "", "stats_interval (from --stats-interval): inf is not a finite number"),
    (["--pod-tombstone-seconds", "NaN"], {}, "",
     "enrich.tombstone_seconds (from --pod-tombstone-seconds): nan is not a finite number"),
    ([], {"FLOWSCOPE_STATE_INTERVAL": "nan"}, "",
     "state_interval (from FLOWSCOPE_STATE_INTERVAL): nan is not a finite number"),
    ([], {"FLOWSCOPE_SHUTDOWN_TIMEOUT": "-inf"}, "",
     "shutdown_timeout (from FLOWSCOPE_SHUTDOWN_TIMEOUT): -inf is not a finite number"),
    ([], {}, "shutdown_timeout: .nan\n", "shutdown_timeout (from {f}): nan is not a finite number"),
    ([], {}, "enrich:\n  tombstone_seconds: .inf\n", "enrich.tombstone_seconds (from {f}): inf is not a finite number"),
])
def test_non_finite_numbers_are_refused(tmp_path: Path, argv: list[str], env: dict[str, str], yaml_text: str,
                                        message: str) -> None:
    """nan passed every range check (each comparison is false): --stats-interval nan froze /metrics,
    --state-interval nan never saved the state file, --shutdown-timeout nan killed the workers."""
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(C.ConfigError) as e:
        load(["--config", str(f), *argv], env)
    assert str(e.value) == message.format(f=f)


@pytest.mark.parametrize("text,message", [
    ("kafka:\n  brokers: [k1:9092]\n  compression: lz4\nworkers: 2\n# appended later:\nkafka:\n  tls: true\n",
     "kafka (from {f}): given twice, on lines 1 and 6 (only the last would apply): keep one"),
    ("workers: 2\nworkers: 4\n", "workers (from {f}): given twice, on lines 1 and 2"),
    ("max_datagram: 9000\nmax-datagram: 1500\n", "max_datagram (from {f}): given twice, on lines 1 and 2"),
    ("kafka:\n  tls: true\n  topic: t\n  tls: false\n", "kafka.tls (from {f}): given twice, on lines 2 and 4"),
    ("sampling:\n  10.0.0.0/8: 100\n  10.0.0.0/8: 50\n", "sampling.10.0.0.0/8 (from {f}): given twice, on lines 2 and 3"),
    ("sampling:\n  10.0.0.0/8: 100\n  10.0.0.0/255.0.0.0: 50\n",
     "sampling (from {f}): 10.0.0.0/8 and 10.0.0.0/255.0.0.0 are the same network (10.0.0.0/8): give it once"),
])
def test_a_key_given_twice_in_the_config_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    """PyYAML keeps the last of two equal keys silently: a second `kafka:` section appended at the
    bottom of a file discarded the brokers of the first one."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(C.ConfigError) as e:
        load(["--config", str(f)])
    assert str(e.value).startswith(message.format(f=f)), str(e.value)
    # the same keys once each, and a YAML merge key, still load
    f.write_text("kafka:\n  <<: {topic: t, tls: true}\n  tls: false\nworkers: 2\n")
    cfg = load(["--config", str(f)])
    assert (cfg.kafka.topic, cfg.kafka.tls, cfg.workers) == ("t", False, 2)


@pytest.mark.parametrize("key,text,value", [
    ("workers", "010", 10),
    ("rcvbuf", "010", 10),
    ("max_exporter_state", "02000000", 2000000),
    ("shutdown_timeout", "010", 10.0),
    ("kafka.linger_ms", "010", 10),
    ("kafka.compression_level", "-07", -7),
    ("enrich.tombstone_seconds", "0300", 300.0),
])
def test_a_leading_zero_is_decimal_from_every_source(tmp_path: Path, key: str, text: str, value: Any) -> None:
    """YAML 1.1 reads `010` as octal: `workers: 010` started 8 workers, while FLOWSCOPE_WORKERS=010
    and --workers 010 were refused (and --rcvbuf 010 was 10). Nothing here is a file mode: `010`
    is ten from the file, the variable and the flag alike."""
    o = next(o for o in C.options() if o.key == key)
    section, _, name = key.rpartition(".")
    f = tmp_path / "c.yaml"
    extra = {"kafka.compression_level": "  compression: zstd\n"}.get(key, "")
    f.write_text(f"{section}:\n{extra}  {name}: {text}\n" if section else f"{name}: {text}\n")
    env = {"FLOWSCOPE_KAFKA_COMPRESSION": "zstd"} if extra else {}

    def got(cfg: C.Config) -> Any:
        return getattr(getattr(cfg, section) if section else cfg, name)

    assert got(load(["--config", str(f)], env)) == value
    assert got(load([], {**env, o.env: text})) == value
    assert got(load([f"{o.flag}={text}"], env)) == value


def test_yaml_readings_of_numbers_a_flag_does_not_make_are_not_made(tmp_path: Path) -> None:
    """The file's sampling rates read as the flag's (`0100` is 100, not octal 64), and YAML 1.1's
    sexagesimal integers (`workers: 1:20` was 80 workers) are refused as from a flag."""
    f = tmp_path / "c.yaml"
    f.write_text("sampling:\n  10.0.0.0/8: 0100\n")
    assert load(["--config", str(f)]).sampling == load(["--sampling", "10.0.0.0/8=0100"]).sampling \
        == {"10.0.0.0/8": 100}
    # and the same through a YAML merge key
    f.write_text("kafka:\n  <<: {linger_ms: 010}\n<<: {workers: 010}\n")
    cfg = load(["--config", str(f)])
    assert (cfg.kafka.linger_ms, cfg.workers) == (10, 10)
    f.write_text("workers: 1:20\n")
    with pytest.raises(C.ConfigError) as e:
        load(["--config", str(f)])
    assert str(e.value) == f"workers (from {f}): expected an integer"
    with pytest.raises(C.ConfigError):
        load(["--workers", "1:20"])
    # explicit bases keep their meaning everywhere
    f.write_text("kafka:\n  linger_ms: 0x10\nrcvbuf: 0x2000000\n")
    cfg = load(["--config", str(f)])
    assert (cfg.kafka.linger_ms, cfg.rcvbuf) == (16, 0x2000000) == (load(["--kafka-linger-ms", "0x10"]).kafka.linger_ms,
                                                                   load(["--rcvbuf", "0x2000000"]).rcvbuf)


@pytest.mark.parametrize("key,text,value", [
    ("listen", "netflow://127.0.0.1:2055 sflow://127.0.0.1:6343", ["netflow://127.0.0.1:2055", "sflow://127.0.0.1:6343"]),
    ("kafka.brokers", "k1:9092  k2:9092", ["k1:9092", "k2:9092"]),
    ("enrich.infra_namespace_prefixes", "openshift kube- infra-", ["openshift", "kube-", "infra-"]),
    ("allow_exporters", "10.0.0.0/8, 192.0.2.0/24 fd00::/8", ["10.0.0.0/8", "192.0.2.0/24", "fd00::/8"]),
    ("sampling", "10.0.0.0/8=100 192.0.2.0/24 = 7", {"10.0.0.0/8": 100, "192.0.2.0/24": 7}),
])
def test_a_list_option_takes_items_separated_by_spaces_from_every_source(tmp_path: Path, key: str, text: str,
                                                                        value: Any) -> None:
    """`FLOWSCOPE_LISTEN="netflow://... sflow://..."` was refused as one bad listener (nothing said
    to separate with commas), and `--infra-namespace-prefix "openshift kube-"` was taken as one
    prefix that no namespace starts with. No item of a list option can hold a space."""
    o = next(o for o in C.options() if o.key == key)
    section, _, name = key.rpartition(".")
    f = tmp_path / "c.yaml"
    f.write_text(f"{section}:\n  {name}: '{text}'\n" if section else f"{name}: '{text}'\n")

    def got(cfg: C.Config) -> Any:
        return getattr(getattr(cfg, section) if section else cfg, name)

    assert got(load(["--config", str(f)])) == value
    assert got(load([], {o.env: text})) == value
    assert got(load([o.flag, text])) == value


def test_a_section_with_every_option_commented_out_is_no_options(tmp_path: Path) -> None:
    """`kafka:` whose options are all commented out (or left out by a chart's template) is YAML
    null: it was refused, "expected a mapping of kafka options", while a file with every option
    commented out (empty) was taken as no options. A section that is not a mapping still is."""
    f = tmp_path / "c.yaml"
    f.write_text("workers: 2\nkafka:\n#  brokers: [kafka:9092]\n#  topic: flows\nenrich:\n")
    cfg = load(["--config", str(f)])
    assert (cfg.workers, cfg.kafka.brokers, cfg.kafka.topic, cfg.enrich.enabled) == (2, [], "flowscope-flows", "auto")
    f.write_text("kafka: [kafka:9092]\n")
    with pytest.raises(C.ConfigError) as e:
        load(["--config", str(f)])
    assert str(e.value) == f"kafka (from {f}): expected a mapping of kafka options"


@pytest.mark.parametrize("text,line", [("kafka:\n\ttopic: t\n", 2), ("workers:\t2\n", 1)])
def test_a_tab_in_the_config_file_is_named_as_a_tab(tmp_path: Path, text: str, line: int) -> None:
    """A tab indent (or a tab after a key's colon, which PyYAML refuses) gave only PyYAML's
    "found character '\\t' that cannot start any token": the error now says it is a tab and
    what to write instead."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(C.ConfigError) as e:
        load(["--config", str(f)])
    assert f'line {line}, column' in str(e.value)
    assert str(e.value).endswith("(a tab character: YAML indents with spaces, and takes none after a key's colon "
                                 "here; replace it with spaces)"), str(e.value)


def test_the_spellings_kafka_and_loggers_use_are_taken(tmp_path: Path) -> None:
    """acks=-1 is Kafka's producer setting for all, and warn the level name Go's and Python's
    loggers take: a producer's configuration or a chart's logLevel copied over was refused
    ("'-1' is not one of 0, 1, all")."""
    f = tmp_path / "c.yaml"
    f.write_text("log_level: WARN\nkafka:\n  acks: -1\n")
    cfg = load(["--config", str(f)])
    assert (cfg.log_level, cfg.kafka.acks) == ("warning", "all")
    cfg = load([], {"FLOWSCOPE_LOG_LEVEL": "warn", "FLOWSCOPE_KAFKA_ACKS": "-1"})
    assert (cfg.log_level, cfg.kafka.acks) == ("warning", "all")
    assert load(["--kafka-acks=-1", "--log-level", "warn"]).kafka.acks == "all"


def test_a_switch_flag_takes_the_values_its_variable_takes(tmp_path: Path) -> None:
    """FLOWSCOPE_DEDUP=false and `dedup: false` were taken, `--dedup=false` refused by argparse
    ("ignored explicit argument 'false'"): a chart writing `--{{ key }}={{ value }}` into a
    container's args could not set a switch. Every boolean flag takes a value now (the
    variable's spellings), bare (true) and --no-X (false) as before."""
    switches = [o for o in C.options() if isinstance(o.default, bool)]
    assert len(switches) >= 6
    for o in switches:
        section, _, name = o.key.rpartition(".")

        def got(cfg: C.Config, section: str = section, name: str = name) -> bool:
            return bool(getattr(getattr(cfg, section) if section else cfg, name))

        for argv, want in (([f"{o.flag}=false"], False), ([o.flag, "no"], False), ([f"{o.flag}=on"], True),
                           ([o.flag], True), (["--no-" + o.flag[2:]], False), ([f"{o.flag}=1"], True)):
            assert got(load(argv)) is want, (argv, want)
    with pytest.raises(C.ConfigError) as e:
        load(["--dedup=maybe"])
    assert str(e.value) == "dedup (from --dedup): expected true or false (also yes/no, on/off, 1/0)"


@pytest.mark.parametrize("argv,env,message", [
    (["--rcvbuf", "2GiB"], {}, "rcvbuf (from --rcvbuf): 2147483648 is out of range: must be between 0 and 2147483647"),
    ([], {"FLOWSCOPE_RCVBUF": "4294967296"}, "rcvbuf (from FLOWSCOPE_RCVBUF): 4294967296 is out of range"),
    (["--sampling", "0.0.0.0/0=99999999999"], {}, "sampling (from --sampling): 0.0.0.0/0: sampling rate must be "
     "between 1 and 4294967295, got 99999999999"),
    (["--sampling", "10.0.0.0/8=4294967296"], {}, "sampling (from --sampling): 10.0.0.0/8: sampling rate must be "
     "between 1 and 4294967295"),
    (["--default-sampling", "4294967296"], {}, "default_sampling (from --default-sampling): 4294967296 is out of range"),
])
def test_values_the_collector_cannot_use_are_refused_by_validation(argv: list[str], env: dict[str, str],
                                                                  message: str) -> None:
    """setsockopt(SO_RCVBUF) takes a C int and the decoder's sampling rates are 32-bit: these
    values passed `flowscope config` and then made `flowscope run` die with a traceback."""
    with pytest.raises(C.ConfigError) as e:
        load(argv, env)
    assert str(e.value).startswith(message), str(e.value)


def test_run_and_config_take_enrich_auto() -> None:
    """`--enrich auto` (the default, spelled out) is a value of `run` and `config`; only
    `decode` has a bare `--enrich` that must not take the capture's name as its value."""
    from collector.cli import bare_optional_flags

    for argv in (["config", "--enrich", "auto"], ["run", "--enrich", "auto", "--listen", "netflow://127.0.0.1:2055"],
                 ["decode", "c.pcap", "--enrich", "false"]):
        assert bare_optional_flags(argv) == argv
    assert bare_optional_flags(["decode", "--enrich", "c.pcap"]) == ["decode", "--enrich=true", "c.pcap"]
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--enrich", "auto"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "enabled: auto" in r.stdout, r.stderr


@pytest.mark.parametrize("argv,message", [
    (["--kafka-topic", "bad topic"], "kafka.topic (from --kafka-topic): 'bad topic' is not a valid Kafka topic name"),
    (["--kafka-topic", ".."], "kafka.topic (from --kafka-topic): '..' is not a valid Kafka topic name"),
    (["--kafka-topic", "t" * 250], "kafka.topic (from --kafka-topic): '" + "t" * 80 + "'... is not a valid Kafka "
     "topic name"),
    (["--counters", "--kafka-counters-topic", "ctr/x"], "kafka.counters_topic (from --kafka-counters-topic): 'ctr/x' "
     "is not a valid Kafka topic"),
    (["--kafka-brokers", ":9092"], "kafka.brokers (from --kafka-brokers): ':9092': expected HOST:PORT with a host "
     "name or address"),
    # ("a b:9092" is two items now, list items being separated by spaces too: 'a' has no port)
    (["--kafka-brokers", "a/b:9092"], "kafka.brokers (from --kafka-brokers): 'a/b:9092': expected HOST:PORT with a "
     "host name or address"),
    (["--kafka-brokers", "a b:9092"], "kafka.brokers (from --kafka-brokers): 'a': expected HOST:PORT"),
])
def test_kafka_names_a_broker_refuses_are_configuration_errors(argv: list[str], message: str) -> None:
    """A topic name Kafka refuses (or a broker address with no host) started a collector that
    queued every flow for a topic that can never exist, unready for "kafka sink not
    connected" (review helper-79)."""
    with pytest.raises(C.ConfigError) as e:
        load(["--kafka-brokers", "127.0.0.1:9092", *argv])
    assert str(e.value).startswith(message), str(e.value)
    cfg = load(["--kafka-brokers", "kafka-0.kafka:9092,[fd00::1]:9092,10.0.0.1:9093", "--kafka-topic",
                "network-flows_v1." + "x" * 200])
    assert cfg.kafka.brokers == ["kafka-0.kafka:9092", "[fd00::1]:9092", "10.0.0.1:9093"]


def test_the_largest_usable_values_are_accepted_and_the_decoder_takes_them() -> None:
    from decoders import DecoderConfig

    cfg = load(["--rcvbuf", str(2**31 - 1), "--sampling", "0.0.0.0/0=4294967295", "--default-sampling",
                str(2**31)])
    assert cfg.rcvbuf == 2**31 - 1
    DecoderConfig(default_sampling=cfg.default_sampling, sampling=dict(cfg.sampling)).validate()


@pytest.mark.parametrize("var", ["FLOWSCOPE_DEDUP", "FLOWSCOPE_COUNTERS", "FLOWSCOPE_KAFKA_DIRECT",
                                 "FLOWSCOPE_KAFKA_TLS", "FLOWSCOPE_KAFKA_CREATE_TOPIC"])
def test_an_empty_boolean_variable_is_an_error_like_an_empty_integer(var: str) -> None:
    """A Helm value left blank (`value: ""`) silently meant false for a boolean (turning off
    kafka.direct), while FLOWSCOPE_WORKERS="" was an error."""
    key = var.removeprefix("FLOWSCOPE_").lower().replace("kafka_", "kafka.")
    with pytest.raises(C.ConfigError) as e:
        load([], {var: ""})
    assert str(e.value) == f"{key} (from {var}): empty: expected true or false (also yes/no, on/off, 1/0)"
    with pytest.raises(C.ConfigError, match=r"^workers \(from FLOWSCOPE_WORKERS\): expected an integer$"):
        load([], {"FLOWSCOPE_WORKERS": ""})
    assert load([], {"FLOWSCOPE_DEDUP": "false", "FLOWSCOPE_COUNTERS": "0"}).dedup is False


@pytest.mark.parametrize("text,message", [
    ("workers: 2.9\n", "workers (from {f}): expected an integer"),
    ("workers: 2.0\n", "workers (from {f}): expected an integer"),
    ("kafka:\n  linger_ms: 0.5\n", "kafka.linger_ms (from {f}): expected an integer"),
    ("sampling:\n  10.0.0.0/8: 99.9\n", "sampling (from {f}): 10.0.0.0/8: sampling rate: expected an integer, "
     "got 99.9"),
])
def test_a_fraction_for_an_integer_option_is_refused_from_yaml_as_from_a_flag(tmp_path: Path, text: str,
                                                                              message: str) -> None:
    """`workers: 2.9` was truncated to 2 from YAML while FLOWSCOPE_WORKERS=2.9 was an error."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(C.ConfigError) as e:
        load(["--config", str(f)])
    assert str(e.value) == message.format(f=f)
    with pytest.raises(C.ConfigError, match=r"^workers \(from FLOWSCOPE_WORKERS\): expected an integer$"):
        load([], {"FLOWSCOPE_WORKERS": "2.0"})
    with pytest.raises(C.ConfigError, match="10.0.0.0/8: sampling rate: expected an integer, got '99.9'"):
        load(["--sampling", "10.0.0.0/8=99.9"])


@pytest.mark.parametrize("listen,message", [
    (["netflow://[::1]:21055", "sflow://[0::1]:21055"],
     "listen (from --listen): [0::1]:21055 is listed twice (netflow://[::1]:21055 and sflow://[0::1]:21055)"),
    (["netflow://[::1]:21055", "sflow://[0:0:0:0:0:0:0:1]:21055"],
     "listen (from --listen): [0:0:0:0:0:0:0:1]:21055 is listed twice"),
    (["netflow://0.0.0.0:2055", "sflow://127.0.0.1:2055"], "listen (from --listen): netflow://0.0.0.0:2055 and "
     "sflow://127.0.0.1:2055 overlap: 0.0.0.0 takes every IPv4 address on port 2055; list one of them"),
    (["ipfix://[fd00::1]:4739", "netflow://[::]:4739"], "listen (from --listen): ipfix://[fd00::1]:4739 and netflow://[::]:4739 "
     "overlap: :: takes every IPv6 address on port 4739"),
])
def test_listeners_on_one_socket_address_are_refused_whatever_the_spelling(listen: list[str], message: str) -> None:
    """With --workers 2 (SO_REUSEPORT) both bound, and the kernel spread the exporters over the
    netflow and the sflow socket; a wildcard and a specific address of the same family on one
    port split the traffic the same way."""
    argv = [a for s in listen for a in ("--listen", s)]
    with pytest.raises(C.ConfigError) as e:
        load(argv)
    assert str(e.value).startswith(message), str(e.value)


def test_listeners_on_distinct_socket_addresses_are_accepted() -> None:
    cfg = load(["--listen", "netflow://0.0.0.0:2055", "--listen", "netflow://[::]:2055",  # IPV6_V6ONLY
                "--listen", "sflow://127.0.0.1:6343", "--listen", "sflow://127.0.0.2:6343",
                "--listen", "ipfix://0.0.0.0:4739"])
    assert len(cfg.listeners()) == 5


@pytest.mark.parametrize("argv,message", [
    (["--listen", "netflow://127.0.0.1:0"], "listen (from --listen): 'netflow://127.0.0.1:0': port must be 1-65535 "
     "(0 would be a random port)"),
    (["--metrics-addr", "127.0.0.1:29401", "--health-addr", "127.0.0.1:29401"],
     "health_addr (from --health-addr): 127.0.0.1:29401 is also metrics_addr (from --metrics-addr): leave health_addr empty to serve /healthz and /readyz on "
     "the metrics address, or give it another port"),
    (["--metrics-addr", "0.0.0.0:9400", "--health-addr", "10.1.2.3:9400"],
     "health_addr (from --health-addr): 10.1.2.3:9400 overlaps metrics_addr (from --metrics-addr) 0.0.0.0:9400 (0.0.0.0 takes every IPv4 address)"),
    (["--metrics-addr", "[::1]:9400", "--health-addr", "[0::1]:9400"], "health_addr (from --health-addr): [0::1]:9400 is also "
     "metrics_addr (from --metrics-addr)"),
])
def test_addresses_that_cannot_work_at_run_time_are_refused(argv: list[str], message: str) -> None:
    """Port 0 made each worker bind another random port; --health-addr equal to --metrics-addr
    passed validation and then failed with `address already in use` (the docs: an empty
    --health-addr is what serves health on the metrics address)."""
    with pytest.raises(C.ConfigError) as e:
        load(argv)
    assert str(e.value).startswith(message), str(e.value)
    cfg = load(["--metrics-addr", "127.0.0.1:29401", "--health-addr", "127.0.0.1:29402"])
    assert (cfg.metrics_addr, cfg.health_addr) == ("127.0.0.1:29401", "127.0.0.1:29402")


@pytest.mark.parametrize("args,env,yaml_text,message", [
    (["--shutdown-timeout", "nan"], {}, "", "shutdown_timeout (from --shutdown-timeout): nan is not a finite number"),
    (["--config", "{f}"], {}, "kafka:\n  topic: a\nkafka:\n  tls: true\n",
     "kafka (from {f}): given twice, on lines 1 and 3 (only the last would apply): keep one"),
    (["--rcvbuf", "2GiB"], {}, "", "rcvbuf (from --rcvbuf): 2147483648 is out of range: must be between 0 and "
     "2147483647"),
    ([], {"FLOWSCOPE_KAFKA_DIRECT": ""}, "", "kafka.direct (from FLOWSCOPE_KAFKA_DIRECT): empty: expected true or false (also yes/no, on/off, 1/0)"),
    (["--listen", "netflow://[::1]:21055", "--listen", "sflow://[0::1]:21055"], {}, "",
     "listen (from --listen): [0::1]:21055 is listed twice (netflow://[::1]:21055 and sflow://[0::1]:21055)"),
])
def test_bad_values_are_one_configuration_error_line_exit_2(tmp_path: Path, args: list[str], env: dict[str, str],
                                                           yaml_text: str, message: str) -> None:
    """`flowscope config` (which loads and validates exactly as `run` does, without starting a
    collector when a check is missing) prints one line, no traceback, and exits 2."""
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", *(a.format(f=f) for a in args)],
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env},
                       cwd=ROOT, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"flowscope: configuration error: {message.format(f=f)}\n"


@pytest.mark.parametrize("args,env,yaml_text,message", [
    (["--config", "{f}"], {"FLOWSCOPE_KAFKA_BATCH_BYTES": "1MiB"}, "queue_bytes: 1MiB\nkafka:\n  brokers: [k:9092]\n",
     "queue_bytes (from {f}): 1048576 is less than three times kafka.batch_bytes (from "
     "FLOWSCOPE_KAFKA_BATCH_BYTES) 1048576: a record batch is queued whole, so besides the open batches (which "
     "count in queue_bytes too) the queue must hold at least two; raise queue_bytes or lower kafka.batch_bytes"),
    (["--config", "{f}", "--kafka-brokers", "k:9092"], {}, "kafka:\n  sasl_mechanism: PLAIN\n",
     "kafka.sasl_user (default): empty, but kafka.sasl_mechanism (from {f}) is PLAIN: SASL needs a user (and "
     "kafka.sasl_password)"),
    (["--config", "{f}"], {"FLOWSCOPE_KAFKA_SASL_PASSWORD": "p"}, "kafka:\n  sasl_user: u\n",
     "kafka.sasl_user (from {f}) and kafka.sasl_password (from FLOWSCOPE_KAFKA_SASL_PASSWORD) are set but "
     "kafka.sasl_mechanism (default) is none: the collector would connect without authenticating (set "
     "kafka.sasl_mechanism)"),
    ([], {"FLOWSCOPE_LISTEN": "netflow://0.0.0.0:2055,sflow://0.0.0.0:2055"}, "",
     "listen (from FLOWSCOPE_LISTEN): 0.0.0.0:2055 is listed twice (netflow://0.0.0.0:2055 and sflow://0.0.0.0:2055)"),
    ([], {"FLOWSCOPE_LISTEN": ""}, "",
     "listen (from FLOWSCOPE_LISTEN): at least one listener is needed, e.g. netflow://0.0.0.0:2055"),
    (["--config", "{f}"], {"FLOWSCOPE_METRICS_ADDR": "127.0.0.1:9400"}, "health_addr: 127.0.0.1:9400\n",
     "health_addr (from {f}): 127.0.0.1:9400 is also metrics_addr (from FLOWSCOPE_METRICS_ADDR): leave health_addr "
     "empty to serve /healthz and /readyz on the metrics address, or give it another port"),
    (["--sink", "kafka"], {"FLOWSCOPE_KAFKA_BROKERS": ""}, "",
     "kafka.brokers (from FLOWSCOPE_KAFKA_BROKERS): empty, but sink (from --sink) is kafka: give the brokers "
     "(--kafka-brokers HOST:PORT[,...])"),
    (["--config", "{f}"], {}, "sink: file\n",
     "output_file (default): empty, but sink (from {f}) is file: give the file (--output-file PATH)"),
    (["--config", "{f}", "--kafka-compression", "gzip"], {}, "kafka:\n  compression_level: 12\n",
     "kafka.compression_level (from {f}): 12 is out of range for kafka.compression (from --kafka-compression) gzip: "
     "0 to 9 (0 = flowscope's default)"),
    ([], {"FLOWSCOPE_KAFKA_TLS_KEY": "/k.pem"}, "",
     "kafka.tls_key (from FLOWSCOPE_KAFKA_TLS_KEY) is set but kafka.tls_cert (default) is empty: give both for "
     "mutual TLS, or neither"),
    (["--config", "{f}", "--kafka-counters-topic", "flows"], {"FLOWSCOPE_COUNTERS": "true"},
     "kafka:\n  brokers: [k:9092]\n  topic: flows\n",
     "kafka.counters_topic (from --kafka-counters-topic): 'flows' is also kafka.topic (from {f}): counter records "
     "would land among the flows that consumers of the flow format read; give them a topic of their own"),
    (["--kafka-brokers", "k:9092"], {"FLOWSCOPE_COUNTERS": "1", "FLOWSCOPE_KAFKA_COUNTERS_TOPIC": ""}, "",
     "kafka.counters_topic (from FLOWSCOPE_KAFKA_COUNTERS_TOPIC): must not be empty when counters (from "
     "FLOWSCOPE_COUNTERS) is true"),
    ([], {"FLOWSCOPE_KAFKA_TOPIC": "a/b"}, "", "kafka.topic (from FLOWSCOPE_KAFKA_TOPIC): 'a/b' is not a valid Kafka "
     "topic name (letters, digits, '.', '_' and '-', at most 249 characters, not '.' or '..')"),
    # the Kafka TLS files, checked at start: named by the key and source that set them, not always by the flag
    (["--kafka-brokers", "k:9092"], {"FLOWSCOPE_KAFKA_TLS_CA": "{f}.ca"}, "",
     "kafka.tls_ca (from FLOWSCOPE_KAFKA_TLS_CA): {f}.ca: cannot load: [Errno 2] No such file or directory"),
    (["--config", "{f}", "--kafka-tls-key", "{f}.key"], {},
     "kafka:\n  brokers: [k:9092]\n  tls_cert: {f}.crt\n",
     "kafka.tls_cert (from {f}): {f}.crt with kafka.tls_key (from --kafka-tls-key): {f}.key: cannot load: "
     "[Errno 2] No such file or directory"),
    # a compression thread asked for where there is none to have
    (["--kafka-brokers", "k:9092", "--kafka-compression-thread", "on"], {}, "",
     "kafka.compression_thread (from --kafka-compression-thread): on, but kafka.compression (default) is none "
     "(nothing to compress)"),
    (["--kafka-brokers", "k:9092", "--kafka-compression", "lz4"], {"FLOWSCOPE_KAFKA_COMPRESSION_THREAD": "on",
                                                                  "FLOWSCOPE_KAFKA_COMPRESSION_LEVEL": "9"}, "",
     "kafka.compression_thread (from FLOWSCOPE_KAFKA_COMPRESSION_THREAD): on, but kafka.compression_level (from "
     "FLOWSCOPE_KAFKA_COMPRESSION_LEVEL) is 9: above 2 is lz4's HC mode, which compresses on the event loop"),
    (["--config", "{f}"], {}, "kafka:\n  brokers: [k:9092]\n  compression: gzip\n  compression_thread: on\n",
     "kafka.compression_thread (from {f}): on, but kafka.compression (from {f}) is gzip: only lz4 and zstd compress "
     "on a thread"),
])
def test_checks_of_two_settings_name_where_each_came_from(tmp_path: Path, args: list[str], env: dict[str, str],
                                                         yaml_text: str, message: str) -> None:
    """The parsers' errors said `KEY (from SOURCE)`; the checks across settings (and the Kafka TLS
    files, always named by their --kafka-tls-* flag) said neither, though the two settings of a
    clash often come from different places (a file, the pod's variables, a flag)."""
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text.format(f=f))
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", *(a.format(f=f) for a in args)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                            **{k: v.format(f=f) for k, v in env.items()}})
    assert (r.returncode, r.stderr) == (2, f"flowscope: configuration error: {message.format(f=f)}\n")


def test_compression_thread_auto_follows_the_cpus_the_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka.compression_thread auto: a thread only helps where the process may run on a second
    CPU (a collector pinned to one core would only add hand-offs); on and off are as said."""
    from collector.config import KafkaConfig
    from collector.sinks import compression_thread_plan

    k = KafkaConfig(compression="lz4")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3})
    assert compression_thread_plan(k) == (False, "kafka.compression_thread auto: the process may run on one CPU only")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr("collector.sinks.cgroup_cpu_quota", lambda: None)
    assert compression_thread_plan(k) == (True, "kafka.compression_thread auto: 2 CPUs")
    monkeypatch.setattr("collector.sinks.cgroup_cpu_quota", lambda: 1.5)  # a pod's limits.cpu: 1500m
    assert compression_thread_plan(k) == (False, "kafka.compression_thread auto: the cgroup's CPU limit is 1.5 CPUs")
    monkeypatch.setattr("collector.sinks.cgroup_cpu_quota", lambda: None)
    k.compression_thread = "off"
    assert compression_thread_plan(k)[0] is False
    k.compression_thread, k.compression = "on", "zstd"
    assert compression_thread_plan(k) == (True, "kafka.compression_thread on")
    k.compression = "snappy"
    assert compression_thread_plan(k)[0] is False


def test_cgroup_cpu_quota_reads_cpu_max(tmp_path: Path) -> None:
    """A pod's CPU limit is cpu.max of its cgroup (v2) or of a parent: the smallest counts."""
    from collector.sinks import cgroup_cpu_quota

    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    leaf = tmp_path / "kubepods" / "pod1" / "ctr"
    leaf.mkdir(parents=True)
    assert cgroup_cpu_quota(str(tmp_path), str(proc)) is None  # no cpu.max anywhere
    for text, want in (("150000 100000\n", 1.5), ("max 100000\n", None), ("200000 100000", 2.0), ("junk", None)):
        (leaf / "cpu.max").write_text(text)
        assert cgroup_cpu_quota(str(tmp_path), str(proc)) == want
    (leaf / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("100000 100000\n")  # the pod's limit: 1 CPU
    assert cgroup_cpu_quota(str(tmp_path), str(proc)) == 1.0
    assert cgroup_cpu_quota(str(tmp_path), str(tmp_path / "absent")) is None  # no /proc entry: the root only
    # cgroup v1: the cpu controller's hierarchy, cfs quota over period (-1: none)
    proc.write_text("4:memory:/x\n2:cpu,cpuacct:/kubepods/pod2\n0::/\n")
    pod = tmp_path / "cpu,cpuacct" / "kubepods" / "pod2"
    pod.mkdir(parents=True)
    (pod / "cpu.cfs_period_us").write_text("100000\n")
    (pod / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(str(tmp_path), str(proc)) is None
    (pod / "cpu.cfs_quota_us").write_text("50000\n")
    assert cgroup_cpu_quota(str(tmp_path), str(proc)) == 0.5


@pytest.mark.parametrize("given", ["env", "file"])
def test_a_missing_codec_library_names_where_the_codec_came_from(tmp_path: Path, given: str) -> None:
    """The start-up check of the codec's library said `kafka.compression:` without its source.
    (aiokafka's codecs need cramjam: a cramjam that cannot be imported takes zstd away.)"""
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "cramjam.py").write_text("raise ImportError('no cramjam here')\n")
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  compression: zstd\n")
    args, env, source = {"env": ([], {"FLOWSCOPE_KAFKA_COMPRESSION": "zstd"}, "FLOWSCOPE_KAFKA_COMPRESSION"),
                         "file": (["--config", str(f)], {}, str(f))}[given]
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--kafka-brokers", "k:9092", *args],
                       capture_output=True, text=True, cwd=stub, timeout=60,  # (-m: the cwd comes first)
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env})
    assert (r.returncode, r.stderr) == (2, f"flowscope: configuration error: kafka.compression (from {source}): "
                                           "zstd needs the Python package cramjam (or zstandard); install it or "
                                           "choose another codec\n")


KUBECONFIG_ONE_CONTEXT = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:9"}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
users: [{name: u, user: {token: t}}]
"""


def cli_as_on_a_laptop(args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
                       ) -> subprocess.CompletedProcess[str]:
    """`flowscope ARGS` with no pod, no ~/.kube and no inherited FLOWSCOPE_* or KUBECONFIG."""
    full = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **(env or {})}
    return subprocess.run([sys.executable, "-m", "collector.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=full, timeout=60)


@pytest.mark.parametrize("given", ["flag", "env", "file"])
@pytest.mark.parametrize("what", ["not-yaml", "missing", "no-such-context"])
def test_kubeconfig_and_context_errors_name_where_they_came_from(tmp_path: Path, given: str, what: str) -> None:
    """Every other configuration error says `KEY (from SOURCE)`; a kubeconfig that cannot be
    loaded, or a --kube-context the kubeconfig lacks, said neither which flag, variable or file
    set it, and the context error was the client's ("Expected object with name nope in ...")."""
    good = tmp_path / "kc"
    good.write_text(KUBECONFIG_ONE_CONTEXT)
    bad = tmp_path / "bad-kc"
    bad.write_text("not: [valid\n")
    key, value = {"not-yaml": ("kubeconfig", str(bad)), "missing": ("kubeconfig", str(tmp_path / "none")),
                  "no-such-context": ("context", "nope")}[what]
    flag = {"kubeconfig": "--kubeconfig", "context": "--kube-context"}[key]
    base = [] if key == "kubeconfig" else ["--kubeconfig", str(good)]
    env: dict[str, str] = {}
    yaml_file = tmp_path / "c.yaml"
    if given == "flag":
        args, source = [flag, value], flag
    elif given == "env":
        args, source = [], f"FLOWSCOPE_ENRICH_{key.upper()}"
        env[source] = value
    else:
        yaml_file.write_text(f"enrich:\n  {key}: {value}\n")
        args, source = ["--config", str(yaml_file)], str(yaml_file)
    want = {"not-yaml": f"enrich.kubeconfig (from {source}): {bad}: not YAML: ",
            "missing": f"enrich.kubeconfig (from {source}): {tmp_path / 'none'}: no such file\n",
            "no-such-context": f"enrich.context (from {source}): 'nope' is not a context of {good} "
                               "(its contexts: ctx)\n"}[what]
    for command in ("run", "config"):  # `config` refuses what `run` refuses, in the same words
        r = cli_as_on_a_laptop([command, *base, *args, "--listen", "netflow://127.0.0.1:9", "--metrics-addr", ""],
                               tmp_path, env)
        assert r.returncode == 2, (command, r.stderr)
        assert r.stderr.startswith(f"flowscope: configuration error: {want}"), (command, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stdout == "", (command, r.stderr, r.stdout)


def test_a_context_missing_from_kubeconfig_variable_names_both(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    kc.write_text(KUBECONFIG_ONE_CONTEXT)
    r = cli_as_on_a_laptop(["config", "--enrich", "true"], tmp_path,
                           {"KUBECONFIG": str(kc), "FLOWSCOPE_ENRICH_CONTEXT": "prod"})
    assert (r.returncode, r.stderr) == (2, "flowscope: configuration error: enrich.context (from "
                                           f"FLOWSCOPE_ENRICH_CONTEXT): 'prod' is not a context of $KUBECONFIG {kc} "
                                           "(its contexts: ctx)\n")
    ok = cli_as_on_a_laptop(["config", "--enrich", "true"], tmp_path, {"KUBECONFIG": str(kc),
                                                                        "FLOWSCOPE_ENRICH_CONTEXT": "ctx"})
    assert ok.returncode == 0 and "context: ctx" in ok.stdout, ok.stderr


@pytest.mark.parametrize("given", ["flag", "env", "file"])
def test_enrich_true_without_cluster_access_names_where_true_came_from(tmp_path: Path, given: str) -> None:
    """`enrich.enabled is true but there is no cluster access` did not say which of a flag, a
    variable or the file said true (a Helm value or a shared file, on a workstation)."""
    f = tmp_path / "c.yaml"
    f.write_text("enrich:\n  enabled: true\n")
    args, env, source = {"flag": (["--enrich", "yes"], {}, "--enrich"),
                         "env": ([], {"FLOWSCOPE_ENRICH_ENABLED": "on"}, "FLOWSCOPE_ENRICH_ENABLED"),
                         "file": (["--config", str(f)], {}, str(f))}[given]
    for command in ("run", "config"):
        r = cli_as_on_a_laptop([command, *args, "--listen", "netflow://127.0.0.1:9", "--metrics-addr", ""],
                               tmp_path, env)
        assert (r.returncode, r.stderr) == (2, f"flowscope: configuration error: enrich.enabled (from {source}) is "
                                               "true but there is no cluster access: not in a pod "
                                               "(KUBERNETES_SERVICE_HOST unset) and no --kubeconfig, $KUBECONFIG "
                                               "or ~/.kube/config\n"), command
    # without the enrich package, the same setting is named
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "enrich.py").write_text("raise ImportError('no enrich here')\n")
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", *args], capture_output=True, text=True,
                       cwd=stub, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                  "HOME": str(tmp_path), **env})  # (-m: the cwd comes first)
    assert (r.returncode, r.stderr) == (2, f"flowscope: configuration error: enrich.enabled (from {source}) is "
                                           "true but the enrich package cannot be imported\n")


def test_decode_enrich_without_cluster_access_names_its_flag(tmp_path: Path) -> None:
    """`flowscope decode` has no enrich.enabled option: its message named one; it is --enrich."""
    r = cli_as_on_a_laptop(["decode", "--enrich", str(tmp_path / "c.pcap")], tmp_path)
    assert (r.returncode, r.stderr) == (2, "flowscope decode: --enrich is true but there is no cluster access: not "
                                           "in a pod (KUBERNETES_SERVICE_HOST unset) and no --kubeconfig, "
                                           "$KUBECONFIG or ~/.kube/config\n")


# `flowscope run` with the cluster access check passing (no ServiceAccount files outside a pod)
# and the collector itself not started: what run prints before it would start.
RUN_WITHOUT_STARTING = """
import sys
import collector.app as app
app.kube_access_error = lambda *a, **k: None
app.run = lambda cfg, enrich_cfg, note: print("would start, enrichment", enrich_cfg is not None) or 0
from collector.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("given", ["flag", "env", "file"])
def test_a_context_without_kubeconfig_in_a_pod_is_a_warning(tmp_path: Path, given: str) -> None:
    """In a pod without a kubeconfig the client loads the in-cluster config, which has no
    contexts: --kube-context / enrich.context was dropped without a word (other settings that
    do not apply, an unknown variable, are warned about). A warning from `config` (printed) and
    `run` (logged), naming where the context came from; with a kubeconfig it applies, silently."""
    f = tmp_path / "c.yaml"
    f.write_text("enrich:\n  context: prod\n")
    args, env, source = {"flag": (["--kube-context", "prod"], {}, "--kube-context"),
                         "env": ([], {"FLOWSCOPE_ENRICH_CONTEXT": "prod"}, "FLOWSCOPE_ENRICH_CONTEXT"),
                         "file": (["--config", str(f)], {}, str(f))}[given]
    pod = {**env, "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    warning = (f"ignoring enrich.context (from {source}): in a pod (KUBERNETES_SERVICE_HOST is set) without "
               "enrich.kubeconfig the in-cluster config (ServiceAccount) is used, which has no contexts; give "
               "--kubeconfig to use a context of it")
    r = cli_as_on_a_laptop(["config", "--enrich", "true", *args], tmp_path, pod)
    assert (r.returncode, r.stderr) == (0, f"flowscope: warning: {warning}\n")
    assert "context: prod" in r.stdout
    full = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **pod}
    r = subprocess.run([sys.executable, "-c", RUN_WITHOUT_STARTING, "run", "--enrich", "true", *args],
                       capture_output=True, text=True, cwd=ROOT, env=full, timeout=60)
    assert r.returncode == 0 and r.stdout == "would start, enrichment True\n", (r.stdout, r.stderr)
    assert [line.split(" WARNING flowscope: ", 1)[1] for line in r.stderr.splitlines()] == [warning], r.stderr
    # with a kubeconfig the context is used; outside a pod too: no warning
    kc = tmp_path / "kc"
    kc.write_text(KUBECONFIG_ONE_CONTEXT.replace("ctx", "prod"))
    for extra, e in ((["--kubeconfig", str(kc)], pod), ([], {**env, "KUBECONFIG": str(kc)})):
        r = cli_as_on_a_laptop(["config", "--enrich", "true", *args, *extra], tmp_path, e)
        assert (r.returncode, r.stderr) == (0, ""), (extra, r.stderr)


# the real urllib3, saying it is an older release (the one installed here is 2.6 or later)
AS_URLLIB3_2_5 = "import urllib3\nurllib3.__version__ = '2.5.0'\n"


def test_a_urllib3_older_than_required_is_a_warning_at_start_with_enrichment_on(tmp_path: Path) -> None:
    """pyproject requires urllib3 2.6 (one read of a compressed answer inflates no more than
    asked), but a --no-deps install can bring an older one, and nothing said so. With
    enrichment on, `run` logs one WARNING naming the version and why (before the workers
    start), `config` and `decode` print it; with enrichment off, or urllib3 2.6 or later, nothing."""
    import enrich

    kc = tmp_path / "kc"
    kc.write_text(KUBECONFIG_ONE_CONTEXT)
    warning = enrich.urllib3_warning("2.5.0")
    assert warning.startswith("urllib3 2.5.0 is installed; Kubernetes enrichment needs 2.6 or later") and \
        warning.endswith("Install urllib3>=2.6"), warning
    assert "gzip bomb" in warning
    assert enrich.urllib3_warning("1.26.20").startswith("urllib3 1.26.20 is installed")
    for fine in ("2.6.0", "2.6.0rc1", "2.8.0", "2.10.1", "3.0.0", "not a version", ""):
        assert enrich.urllib3_warning(fine) == "", fine
    assert enrich.urllib3_warning() == ""   # the urllib3 installed here
    full = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def cli(code: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", AS_URLLIB3_2_5 + code, *args], capture_output=True, text=True,
                              cwd=ROOT, env=full, timeout=60)

    r = cli(RUN_WITHOUT_STARTING, "run", "--kubeconfig", str(kc))
    assert r.returncode == 0 and r.stdout == "would start, enrichment True\n", (r.stdout, r.stderr)
    assert [line.split(" WARNING flowscope: ", 1)[1] for line in r.stderr.splitlines()] == [warning], r.stderr
    main = "import sys\nfrom collector.cli import main\nsys.exit(main())\n"
    r = cli(main, "config", "--kubeconfig", str(kc))
    assert (r.returncode, r.stderr) == (0, f"flowscope: warning: {warning}\n"), r.stderr
    cap = tmp_path / "empty.pcap"
    cap.write_bytes(b"")
    r = cli(main, "decode", "--kubeconfig", str(kc), "--sync-timeout", "0.2", str(cap))
    assert r.stderr.splitlines()[0] == f"flowscope decode: warning: {warning}", r.stderr
    # enrichment off: nothing to warn of
    r = cli(RUN_WITHOUT_STARTING, "run", "--enrich", "false")
    assert (r.returncode, r.stdout, r.stderr) == (0, "would start, enrichment False\n", ""), r.stderr
    r = cli(main, "config", "--enrich", "false")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


def test_kubeconfig_variable_in_a_pod_without_kubeconfig_is_a_warning(tmp_path: Path) -> None:
    """In a pod without a kubeconfig setting the client loads the in-cluster config and never
    reads $KUBECONFIG: one set in the pod's environment (an image's or a manifest's leftover) was
    ignored without a word. A warning naming it, from `config` (printed) and `run` (logged once,
    before the workers start); which config is used does not change. With --kubeconfig, or
    outside a pod, $KUBECONFIG is nothing to warn about."""
    kc = tmp_path / "kc"
    kc.write_text(KUBECONFIG_ONE_CONTEXT)
    pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBECONFIG": str(kc)}
    warning = (f"ignoring $KUBECONFIG ({kc}): in a pod (KUBERNETES_SERVICE_HOST is set) without enrich.kubeconfig "
               "the in-cluster config (ServiceAccount) is used; give --kubeconfig (enrich.kubeconfig) to use a "
               "kubeconfig file")
    r = cli_as_on_a_laptop(["config", "--enrich", "true"], tmp_path, pod)
    assert (r.returncode, r.stderr) == (0, f"flowscope: warning: {warning}\n")
    assert "kubeconfig: ''" in r.stdout
    # run: the same warning, once, and the in-cluster config all the same (no kubeconfig given to
    # the enricher, which loads the in-cluster config for None in a pod: enrich.load_api_client)
    show = RUN_WITHOUT_STARTING.replace('enrich_cfg is not None)', 'enrich_cfg.kubeconfig)')
    full = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **pod}
    r = subprocess.run([sys.executable, "-c", show, "run", "--enrich", "true"],
                       capture_output=True, text=True, cwd=ROOT, env=full, timeout=60)
    assert r.returncode == 0 and r.stdout == "would start, enrichment None\n", (r.stdout, r.stderr)
    assert [line.split(" WARNING flowscope: ", 1)[1] for line in r.stderr.splitlines()] == [warning], r.stderr
    # with a kubeconfig given in the pod, or outside a pod: no warning; nor with enrichment off
    for extra, e in ((["--enrich", "true", "--kubeconfig", str(kc)], pod),
                     (["--enrich", "true"], {"KUBECONFIG": str(kc)}), (["--enrich", "false"], pod)):
        r = cli_as_on_a_laptop(["config", *extra], tmp_path, e)
        assert (r.returncode, r.stderr) == (0, ""), (extra, r.stderr)
    # `flowscope decode --enrich` in the pod: the same warning (before the in-cluster config,
    # which this test's "pod" cannot load, is refused), in decode's terms; none with --kubeconfig
    cap = tmp_path / "empty.pcap"
    cap.write_bytes(b"")
    r = cli_as_on_a_laptop(["decode", "--enrich", str(cap)], tmp_path, pod)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 2, r.stderr
    assert lines[0] == (f"flowscope decode: warning: ignoring $KUBECONFIG ({kc}): in a pod (KUBERNETES_SERVICE_HOST "
                        "is set) without --kubeconfig the in-cluster config (ServiceAccount) is used; give "
                        "--kubeconfig to use a kubeconfig file")
    assert lines[1].startswith("flowscope decode: enrich: in-cluster config"), r.stderr
    r = cli_as_on_a_laptop(["decode", "--kubeconfig", str(tmp_path / "none"), str(cap)], tmp_path, pod)
    assert r.returncode == 2 and "KUBECONFIG" not in r.stderr, r.stderr


@pytest.mark.parametrize("args,message", [
    (["--kafka-brokers", "127.0.0.1:9", "--kafka-tls-ca", "{d}/no-ca.pem"],
     "kafka.tls_ca (from --kafka-tls-ca): {d}/no-ca.pem: cannot load: [Errno 2] No such file or directory"),
    (["--enrich", "true"], "enrich.enabled (from --enrich) is true but there is no cluster access"),
    (["--kubeconfig", "{d}/kc"], "enrich.kubeconfig (from --kubeconfig): {d}/kc: "),
])
def test_config_refuses_what_run_refuses_at_start(tmp_path: Path, args: list[str], message: str) -> None:
    """`flowscope config` printed (exit 0) configurations `flowscope run` then refused at start:
    TLS files it cannot load, enrichment without cluster access, an unusable kubeconfig. It
    makes the same checks now, with the same line and exit status, and starts nothing."""
    (tmp_path / "kc").write_text("apiVersion: v1\nkind: Config\nclusters: []\n")  # no current-context
    args = [a.format(d=tmp_path) for a in args]
    want = "flowscope: configuration error: " + message.format(d=tmp_path)
    results = {}
    for command in ("run", "config"):
        r = cli_as_on_a_laptop([command, *args, "--listen", "netflow://127.0.0.1:9", "--metrics-addr", ""], tmp_path)
        assert r.stderr.startswith(want) and r.stderr.count("\n") == 1, (command, r.stderr)
        results[command] = (r.returncode, r.stderr)
    assert results["config"] == results["run"] and results["run"][0] == 2


def test_config_checks_the_kubeconfig_without_running_its_credential_plugin(tmp_path: Path) -> None:
    """`flowscope config` starts nothing: checking the cluster access as `run` does had loaded the
    kubeconfig's credentials, which runs its exec plugin (`aws eks get-token`, kubelogin). The
    files, context, cluster and user are still checked, with run's messages."""
    marker = tmp_path / "plugin-ran"
    plugin = tmp_path / "get-token"
    plugin.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    plugin.chmod(0o755)
    kc = tmp_path / "kc"
    kc.write_text(KUBECONFIG_ONE_CONTEXT.replace(
        "{token: t}", "{exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: " + str(plugin) + "}}"))
    r = cli_as_on_a_laptop(["config", "--kubeconfig", str(kc)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "kubeconfig: " in r.stdout and not marker.exists()
    assert r.stderr == ""
    # a context naming a cluster the file lacks is still refused, in the client's words as by run
    kc.write_text(KUBECONFIG_ONE_CONTEXT.replace("{cluster: c, user: u}", "{cluster: c2, user: u}"))
    r = cli_as_on_a_laptop(["config", "--kubeconfig", str(kc)], tmp_path)
    assert (r.returncode, r.stderr) == (2, "flowscope: configuration error: enrich.kubeconfig (from --kubeconfig): "
                                           f"{kc}: Invalid kube-config file. Expected object with name c2 in "
                                           f"{kc}/clusters list\n")


@pytest.mark.parametrize("command,args", [
    ("run", []), ("config", []), ("decode", ["x.pcap"]), ("replay", ["x.pcap", "--to", "127.0.0.1:9"])])
def test_an_unknown_option_is_reported_with_the_subcommands_usage(command: str, args: list[str],
                                                                   tmp_path: Path) -> None:
    """`flowscope run --typo` printed `usage: flowscope [-h] [--version] COMMAND ...`, which says
    nothing of run's options; argparse reports it with the subcommand's usage now."""
    r = cli_as_on_a_laptop([command, *args, "--typo"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith(f"usage: flowscope {command} [-h]"), r.stderr
    assert r.stderr.endswith(f"flowscope {command}: error: unrecognized arguments: --typo\n"), r.stderr


def test_the_docs_commands_name_captures_that_exist() -> None:
    """README and docs/collector.md are followed literally: docs/collector.md's Kafka example
    replayed `tests/data/<capture>.pcap`, a file no one has."""
    for doc in ("README.md", "docs/collector.md", "deploy/README.md"):
        for path in re.findall(r"(?:flowscope (?:replay|decode)) (tests/\S+)", (ROOT / doc).read_text()):
            assert (ROOT / path).is_file(), f"{doc}: {path} does not exist"


def test_make_run_stdout_is_json_flows_only(tmp_path: Path) -> None:
    """README: `make run` prints one JSON flow per line. In a clean clone it first makes the
    virtualenv and installs the package: make's echo of those steps (`python3 -m venv .venv`,
    `pip install ...`, `touch .venv/.installed`) was on its stdout too (`make run | jq` failed on
    it), not only the build step's. Run with a stand-in interpreter whose venv's `flowscope run`
    prints one flow, so every set-up step runs (nothing is built) and the tree is not touched."""
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\n"
                    'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
                    '  mkdir -p "$3/bin" && cp "$0" "$3/bin/python"\n'
                    """  printf '#!/bin/sh\\nexit 0\\n' > "$3/bin/pip"\n"""
                    """  printf '#!/bin/sh\\necho "{\\\\"Bytes\\\\":1}"\\n' > "$3/bin/flowscope"\n"""
                    '  chmod +x "$3/bin/pip" "$3/bin/flowscope"\n'
                    "fi\n")
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    # as from a shell: under `make test` the inherited MAKELEVEL would make this make a sub-make,
    # which prints "Entering directory" lines of its own
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    r = subprocess.run(["make", "run", f"PYTHON={fake}", f"VENV={venv}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert (venv / ".installed").exists(), r.stderr   # the clean-clone steps ran
    assert r.stdout == '{"Bytes":1}\n', r.stdout
    assert "-m venv" in r.stderr and "setup.py -q build_ext --inplace" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------- queue

def test_queue_newest_policy_counts() -> None:
    q = BoundedQueue(limit=100, policy="newest")
    q.offer(FLOWS, [b"x" * 39, b"y" * 39], "e")  # 80 bytes with separators
    q.offer(FLOWS, [b"z" * 30], "e")  # would exceed: dropped
    assert (q.queued_records, q.queued_bytes, q.dropped[(FLOWS, "queue_full")]) == (2, 80, 1)
    got = q.take(1000)
    assert q.inflight_records == 2 and q.total_bytes == 80
    q.requeue(got[0])
    assert q.queued_records == 2 and q.inflight_records == 0


def _drain_stuck(base: Any, took: int) -> Any:
    """A sink of class `base` that takes `took` bytes of its queue (3 flows, then 2 sFlow counter
    records) in flight and never hears back, drained with a 0.1 s deadline."""
    import asyncio

    from collector.config import Config
    from collector.sinks import COUNTERS

    class Stuck(base):  # type: ignore[misc, valid-type]
        async def _run(self) -> None:
            self.queue.take(took)  # in flight, never acknowledged
            await asyncio.sleep(3600)

        async def _close(self, timeout: float) -> None:
            pass

    async def go() -> Any:
        s = Stuck(Config())
        s.queue.offer(FLOWS, [b"f1", b"f2", b"f3"], "e")
        s.queue.offer(COUNTERS, [b"c1", b"c2"], "e")
        await s.start()
        await asyncio.sleep(0.05)
        await s.drain(asyncio.get_running_loop().time() + 0.1)
        return s

    return asyncio.run(go())


def test_records_in_flight_at_the_shutdown_deadline_are_counted_by_kind() -> None:
    """A sink stuck with flows and sFlow counter records in flight when --shutdown-timeout
    passes: each kind is counted as dropped (shutdown) under its own series."""
    from collector.sinks import COUNTERS, Sink

    s = _drain_stuck(Sink, 1 << 30)
    assert s.queue.dropped[(FLOWS, "shutdown")] == 3 and s.queue.dropped[(COUNTERS, "shutdown")] == 2
    assert s.queue.total_records == 0 and s.queue.inflight == [0, 0]


def test_kafka_records_taken_but_never_written_at_the_deadline_are_shutdown(caplog) -> None:
    """Kafka: records the sink took from the queue but never wrote to a connection when
    --shutdown-timeout passes (waiting for a connection, or in aiokafka's accumulator) are
    `shutdown`, not `unconfirmed`: only a written Produce request may have reached the broker
    (tests/test_collector_kafka.py freezes a real broker for those)."""
    import logging

    from collector.sinks import COUNTERS, KafkaSink

    with caplog.at_level(logging.INFO, logger="flowscope"):
        s = _drain_stuck(KafkaSink, 12)   # the flows' chunk is taken and never written
    assert s.queue.dropped[(FLOWS, "shutdown")] == 3 and s.queue.dropped[(COUNTERS, "shutdown")] == 2
    assert (FLOWS, "unconfirmed") not in s.queue.dropped and s.queue.total_records == 0
    assert "5 records could not be delivered" in caplog.text and "unconfirmed" not in caplog.text


def test_a_failed_keyed_batch_is_requeued_with_each_records_exporter() -> None:
    """kafka.key exporter: a batch that failed goes back to the queue (set aside with its
    partition's, KafkaSink._hold) as one chunk per exporter run, each with its exporter, so the
    retry keeps the key and the partition."""
    from collector.config import Config
    from collector.sinks import KafkaSink, _Open

    cfg = Config()
    cfg.kafka.key = "exporter"
    sink = KafkaSink(cfg)
    o = _Open(FLOWS, 1, None)
    for rec, ex in ((b"a1", "10.0.0.1"), (b"a2", "10.0.0.1"), (b"b1", "10.0.0.2"), (b"a3", "10.0.0.1")):
        o.add(rec, ex)
    sink.queue.inflight[FLOWS], sink.queue.inflight_bytes = 4, o.nbytes
    sink._failed(o, ConnectionError("broker gone"))
    got = [(c.exporter, c.records) for c in sink._held[(FLOWS, 1)].chunks]
    assert got == [("10.0.0.1", [b"a1", b"a2"]), ("10.0.0.2", [b"b1"]), ("10.0.0.1", [b"a3"])]
    assert sink.queue.queued_records == 4 and sink.queue.inflight_records == 0 and sink.queue.inflight_bytes == 0


@pytest.mark.parametrize("older_file", [0, 1])
def test_state_files_of_several_workers_restore_the_latest_definition(tmp_path: Path, older_file: int) -> None:
    """Per-worker state files of earlier runs: of the definitions of one template, the one the
    exporter sent last is restored, whichever worker file holds it and whichever file was saved
    last (a worker keeps re-saving what it loaded at start of an exporter that now goes to the
    other worker: its file is the newer one, its definition the older)."""
    import os

    from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set
    from collector.state import StateFile
    from decoders import Decoder

    old_t = IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4)), 0)
    new_t = IpfixTemplate(256, (("dst", 12, 0, 4), ("src", 8, 0, 4), ("proto", 4, 0, 1)), 0)
    base = str(tmp_path / "state.json")
    for worker, t, received in ((0, new_t, 1_700_000_600.0), (1, old_t, 1_700_000_000.0)):
        d = Decoder()
        d.decode(ipfix_message([template_set([t])], seq=0, export_time=int(received)), "192.0.2.1", 4739, received)
        sf = StateFile(base, worker)
        assert sf.save(d)
        mtime = 1_000_000_000 if worker == older_file else 2_000_000_000
        os.utime(sf.path, (mtime, mtime))
    fresh = Decoder()
    StateFile(base, 0).load_into(fresh)
    rec = {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": 6}
    f = fresh.decode(ipfix_message([data_set(new_t, [rec])], seq=1, export_time=1_700_000_700),
                     "192.0.2.1", 4739, 1_700_000_700.0).to_dicts()[0]
    assert (f["SrcAddr"], f["DstAddr"], f["Proto"]) == ("10.0.0.1", "10.0.0.2", 6)


def test_replicas_sharing_a_state_file_keep_each_others_exporters(tmp_path: Path) -> None:
    """Two collectors on one --state-file (a shared volume): each save keeps the exporters only
    the other wrote (refreshed within the last hour), so both get their templates back after a
    restart (review helper-83: the last writer's state replaced the other's)."""
    import json
    import random
    import time

    from benchmarks.datagrams import OVS_INGRESS, data_set, ipfix_message, ovs_flows, template_set
    from collector.state import FOREIGN_MAX_AGE, StateFile
    from decoders import Decoder

    path = str(tmp_path / "state.json")
    now = time.time()
    decs, files = [], []
    for ip in ("192.0.2.1", "192.0.2.2"):
        d = Decoder()
        d.decode(ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=int(now)), ip, 4739, now)
        decs.append(d)
        files.append(StateFile(path, None))
    assert files[0].save(decs[0]) and files[1].save(decs[1]) and files[0].save(decs[0])
    assert set(json.loads(Path(path).read_text())["exporters"]) == {"192.0.2.1", "192.0.2.2"}
    data = ipfix_message([data_set(OVS_INGRESS, ovs_flows(1, random.Random(1)))], seq=0, export_time=int(now))
    for ip in ("192.0.2.1", "192.0.2.2"):
        fresh = Decoder()
        StateFile(path, None).load_into(fresh)
        assert len(fresh.decode(data, ip, 4739, now)) == 1, ip
    # another writer's exporter not refreshed for longer than FOREIGN_MAX_AGE is let go
    old = Decoder()
    old.decode(ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=int(now)), "192.0.2.3", 4739,
               now - FOREIGN_MAX_AGE - 60)
    assert StateFile(path, None).save(old) and files[1].save(decs[1])
    assert set(json.loads(Path(path).read_text())["exporters"]) == {"192.0.2.1", "192.0.2.2"}


def test_state_file_is_written_beside_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The periodic save writes and fsyncs in a thread: a slow disk (a network volume) must not
    stop the worker's loop, whose metrics the supervisor watches for a hang. A write older than
    one already done (the periodic one finishing after the shutdown's final save) is skipped."""
    import asyncio
    import os
    import time

    from benchmarks.datagrams import IpfixTemplate, ipfix_message, template_set
    from collector import state as S
    from decoders import Decoder

    d = Decoder()
    d.decode(ipfix_message([template_set([IpfixTemplate(256, (("src", 8, 0, 4),), 0)])], seq=0,
                           export_time=1_700_000_000), "192.0.2.1", 4739, 1_700_000_000.0)
    sf = S.StateFile(str(tmp_path / "state.json"), None)
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.5)
        real_fsync(fd)

    monkeypatch.setattr(S.os, "fsync", slow_fsync)

    async def main() -> tuple[bool, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        t = asyncio.get_running_loop().create_task(ticker())
        ok = await sf.save_async(d)
        t.cancel()
        return ok, ticks

    ok, ticks = asyncio.run(main())
    assert ok and sf.saves["ok"] == 1 and os.path.exists(sf.path)
    assert ticks >= 10, ticks   # the loop ran through the two half-second fsyncs
    monkeypatch.setattr(S.os, "fsync", real_fsync)
    assert sf._write(b'{"newer": 1}', 3) and sf._write(b'{"older": 1}', 2)
    assert Path(sf.path).read_bytes() == b'{"newer": 1}'


def test_the_final_state_save_is_the_last_word(tmp_path: Path) -> None:
    """A periodic write still in its thread may hold older state than the shutdown's final save;
    the final save writes even when its state equals the last one written (before, it returned
    at once and the thread's older state landed after it)."""
    from benchmarks.datagrams import IpfixTemplate, ipfix_message, template_set
    from collector import state as S
    from decoders import Decoder

    def decoder(fields: tuple) -> Decoder:
        d = Decoder()
        d.decode(ipfix_message([template_set([IpfixTemplate(256, fields, 0)])], seq=0, export_time=1_700_000_000),
                 "192.0.2.1", 4739, 1_700_000_000.0)
        return d

    a, b = decoder((("src", 8, 0, 4),)), decoder((("dst", 12, 0, 4),))
    sf = S.StateFile(str(tmp_path / "state.json"), None)
    assert sf.save(a)
    on_disk_a = Path(sf.path).read_bytes()
    data_b = sf._export(b)
    assert data_b is not None and data_b != on_disk_a
    gen_b = sf._next_gen()          # a periodic write of B handed to its thread, not yet run
    assert sf.save(a)               # shutdown: the state is A again
    assert sf._write(data_b, gen_b)  # the thread runs now: older than the final save, skipped
    assert Path(sf.path).read_bytes() == on_disk_a


def test_a_sink_failing_every_flow_is_failing_even_when_counter_records_deliver() -> None:
    """failing_for() looks at flows only: sFlow counter records reaching their own topic say
    nothing of the flows' topic refusing every flow."""
    import time

    from collector.config import Config
    from collector.sinks import COUNTERS, Sink

    sink = Sink(Config())
    assert sink.failing_for(0.5) == 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.3:
        sink.queue.dropped[(FLOWS, "rejected")] += 10
        sink.delivered[COUNTERS] += 1
        sink.failing_for(0.5)
        time.sleep(0.02)
    assert sink.failing_for(0.5) >= 0.25
    sink.delivered[FLOWS] += 1          # one flow delivered: not failing any more
    assert sink.failing_for(0.5) == 0.0


def test_a_batch_aiokafka_says_cannot_succeed_is_dropped_not_retried_for_ever() -> None:
    """TLS/SASL, --no-kafka-direct, keyed modes: aiokafka's non-retriable produce errors (not
    authorized, invalid topic, corrupt; too large for a single record) drop the batch as
    rejected, like the direct path; a retriable one re-queues it and the next attempt waits
    longer each time. (Too large for several records: cut and sent again, see
    test_kafka_direct.)"""
    from aiokafka.errors import CorruptRecordException, MessageSizeTooLargeError, NotEnoughReplicasError

    from collector.config import Config
    from collector.sinks import KafkaSink, _Open

    sink = KafkaSink(Config())
    o = _Open(FLOWS, 0, None)
    o.add(b"x" * 10)
    o.add(b"y" * 10)
    sink.queue.inflight[FLOWS], sink.queue.inflight_bytes = 2, o.nbytes
    sink._failed(o, CorruptRecordException())
    assert sink.queue.dropped[(FLOWS, "rejected")] == 2 and not sink.queue.chunks
    assert sink.errors["rejected"] == 1 and sink.queue.inflight_records == 0
    one = _Open(FLOWS, 0, None)
    one.add(b"z" * 10)
    sink.queue.inflight[FLOWS], sink.queue.inflight_bytes = 1, one.nbytes
    sink._failed(one, MessageSizeTooLargeError())
    assert sink.queue.dropped[(FLOWS, "rejected")] == 3 and not sink.queue.chunks
    assert sink.errors["rejected"] == 2 and sink.queue.inflight_records == 0
    waits = []
    for _ in range(6):
        sink.queue.inflight[FLOWS], sink.queue.inflight_bytes = 2, o.nbytes
        sink._failed(o, NotEnoughReplicasError())
        waits.append(sink._retry_wait)
        sink.queue.take(1 << 20)
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0] and sink.errors["produce"] == 6


def test_unreadable_tls_files_are_a_start_up_error(tmp_path: Path) -> None:
    from collector.config import Config
    from collector.sinks import check_tls

    cfg = Config()
    assert check_tls(cfg.kafka) is None
    cfg.kafka.tls_ca = str(tmp_path / "missing-ca.pem")
    msg = check_tls(cfg.kafka)
    assert msg == f"kafka.tls_ca: {tmp_path / 'missing-ca.pem'}: cannot load: [Errno 2] No such file or directory"


def test_queue_oldest_policy_evicts() -> None:
    q = BoundedQueue(limit=100, policy="oldest")
    for i in range(5):
        q.offer(FLOWS, [b"a" * 19], str(i))  # 20 bytes each: fills to 100
    q.offer(FLOWS, [b"b" * 39], "new")  # needs 40: evicts two
    assert q.dropped[(FLOWS, "evicted")] == 2
    assert [c.exporter for c in q.chunks] == ["2", "3", "4", "new"]
    assert q.queued_bytes == 100


def test_conversation_key_symmetric() -> None:
    a = b'{"SrcAddr":"10.0.0.2","DstAddr":"10.0.0.1","Bytes":1}'
    b = b'{"SrcAddr":"10.0.0.1","DstAddr":"10.0.0.2","Bytes":9}'
    assert conversation_key(a) == conversation_key(b) == b"10.0.0.1|10.0.0.2"


# ---------------------------------------------------------------------------------------------- metrics

def test_exporter_labels_sticky_top_n() -> None:
    lab = ExporterLabels(2)
    assert lab.assign({"a": 5, "b": 9, "c": 1}) == {"a": "a", "b": "b", "c": "other"}
    # c becomes the busiest later but a and b keep their names: counters never move between labels
    assert lab.assign({"a": 5, "b": 9, "c": 100})["c"] == "other"


def test_a_silent_exporters_label_goes_to_one_sending_without() -> None:
    """--metrics-top-exporters labels were never given up: the first N exporters kept them for the
    life of the process, so with nodes replaced over days they all named exporters long gone and
    every live one was `other` (memory and series stayed bounded: N per worker). A labelled
    exporter silent for LABEL_IDLE_S now gives its label up to one that sends without, and no
    counter series goes back: the newcomer's history stays in `other` and its own series starts
    at 0; the silent one's series ends, and `other` goes on from where it was."""
    import random

    from benchmarks.datagrams import v5_datagram, v5_records
    from collector.metrics import LABEL_IDLE_S, decoder_series
    from decoders import Decoder, DecoderConfig

    dec = Decoder(DecoderConfig())
    clock = [0.0]
    lab = ExporterLabels(2, clock=lambda: clock[0])
    rec = v5_records(10, random.Random(3), uptime_ms=100_000)
    seen: dict[tuple[str, tuple[str, ...]], float] = {}
    a, b, c = "10.0.0.1", "10.0.0.2", "10.0.0.3"

    def send(exporter: str, n: int) -> None:
        for i in range(n):
            dec.decode(v5_datagram(rec, seq=i, unix_secs=1_700_000_000, uptime_ms=100_000), exporter, 0, 1000.0)

    def at(t: float) -> dict[str, float]:
        clock[0] = t
        snap = decoder_series(dec.series_stats(), lab)
        for name, k in list(seen):
            if k not in snap.get(name, {}):
                del seen[(name, k)]    # an ended series (one that starts again later is a new one)
        for name in ExporterLabels.COUNTERS:
            for k, v in snap.get(name, {}).items():
                assert v >= seen.get((name, k), 0), (name, k, v, seen.get((name, k)))
                seen[(name, k)] = v
        return {k[0]: v for k, v in snap["flowscope_datagrams"].items()}

    send(a, 3)
    send(b, 3)
    assert at(0) == {a: 3, b: 3}
    send(c, 2)
    assert at(100) == {a: 3, b: 3, "other": 2}                 # a and b silent for 100 s only
    send(c, 1)
    # a and b silent for LABEL_IDLE_S: one label is wanted, a's (the lower address of the two
    # silent as long) goes to c, whose 3 datagrams so far stay in `other`
    assert at(LABEL_IDLE_S) == {b: 3, c: 0, "other": 3}
    send(c, 4)
    assert at(LABEL_IDLE_S + 1) == {b: 3, c: 4, "other": 3}
    flows = decoder_series(dec.series_stats(), lab)["flowscope_flows"]
    assert flows == {(b, "netflow5"): 30, (c, "netflow5"): 40, ("other", "netflow5"): 30}
    # with no exporter waiting for one, a silent exporter keeps its label
    assert at(10 * LABEL_IDLE_S) == {b: 3, c: 4, "other": 3}
    # a sends again: b (silent longest) gives its label up to it, and a's 4 datagrams stay in
    # `other` (its earlier series, ended at 3, is not taken up again)
    send(a, 1)
    assert at(10 * LABEL_IDLE_S + 1) == {a: 0, c: 4, "other": 4}
    send(a, 2)
    assert at(10 * LABEL_IDLE_S + 2) == {a: 2, c: 4, "other": 4}


def test_evicted_exporters_counters_stay_in_other() -> None:
    """Exporters forgotten because the table was full (--max-exporters) keep counting: their
    totals move under exporter="other", never under a label of their own, and never go back."""
    import random

    from benchmarks.datagrams import v5_datagram, v5_records
    from collector.metrics import decoder_series
    from decoders import Decoder, DecoderConfig

    dec = Decoder(DecoderConfig(max_exporters=16))
    lab = ExporterLabels(4)
    rec = v5_records(3, random.Random(1), uptime_ms=100_000)
    last = 0
    for i in range(100):
        dec.decode(v5_datagram(rec, seq=i, unix_secs=1_700_000_000, uptime_ms=100_000), f"10.0.0.{i}", 0,
                   1000.0 + i)
        snap = decoder_series(dec.series_stats(), lab)
        flows = sum(snap["flowscope_flows"].values())
        assert flows == 3 * (i + 1) and flows >= last
        last = flows
        assert all(k[0] != "(evicted)" for k in snap["flowscope_flows"])
    assert dec.evicted_exporters > 0 and snap["flowscope_flows"][("other", "netflow5")] > 0


def test_named_exporter_evicted_and_back_never_goes_backwards() -> None:
    """A named exporter (its address is its label) that the decoder evicts and that comes back
    keeps its counts under its own label, and `other` does not count them a second time: no
    series of the per-exporter counters ever goes back, and the totals stay exact."""
    import random

    from benchmarks.datagrams import v5_datagram, v5_records
    from collector.metrics import decoder_series
    from decoders import Decoder, DecoderConfig

    dec = Decoder(DecoderConfig(max_exporters=16))
    lab = ExporterLabels(40)
    rec = v5_records(10, random.Random(2), uptime_ms=100_000)
    t = [1000.0]
    seen: dict[tuple[str, tuple[str, ...]], float] = {}

    def send(exporter: str, n: int = 1, bad: bool = False) -> None:
        for _ in range(n):
            t[0] += 1
            data = b"\x00\x05\x00\x01" + bytes(8) if bad else v5_datagram(rec, seq=0, unix_secs=1_700_000_000, uptime_ms=100_000)
            dec.decode(data, exporter, 0, t[0])

    def check() -> dict[str, dict[tuple[str, ...], float]]:
        snap = decoder_series(dec.series_stats(), lab)
        for name in ExporterLabels.COUNTERS:
            for k, v in snap.get(name, {}).items():
                assert v >= seen.get((name, k), 0), (name, k, v, seen.get((name, k)))
                seen[(name, k)] = v
        return snap

    send("127.0.0.2", 5)
    send("127.0.0.2", 1, bad=True)
    check()
    for i in range(17):          # 17 newcomers: the table of 16 evicts the least recently seen
        send(f"10.1.0.{i}", 2)
        check()
    assert dec.exporter("127.0.0.2") is None
    send("127.0.0.2", 1)
    snap = check()
    assert snap["flowscope_datagrams"][("127.0.0.2", "netflow5")] == 7
    assert snap["flowscope_flows"][("127.0.0.2", "netflow5")] == 60
    assert snap["flowscope_decode_errors"][("127.0.0.2", "netflow5", "truncated")] == 1
    assert sum(snap["flowscope_datagrams"].values()) == 7 + 34
    assert sum(snap["flowscope_flows"].values()) == 60 + 340
    for i in range(40):          # evicted again, and more churn
        send(f"10.2.0.{i}", 1)
        check()
    send("127.0.0.2", 2)
    snap = check()
    assert snap["flowscope_datagrams"][("127.0.0.2", "netflow5")] == 9
    assert sum(snap["flowscope_datagrams"].values()) == 9 + 34 + 40
    for i in range(20):          # evicted and back between two snapshots
        send(f"10.3.0.{i}", 1)
    send("127.0.0.2", 1)
    snap = check()
    assert snap["flowscope_datagrams"][("127.0.0.2", "netflow5")] == 10
    assert sum(snap["flowscope_datagrams"].values()) == 10 + 34 + 40 + 20


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+(?:_[a-z0-9]+)*", text))


def _check_values_documented(series: str, emitted: set[str]) -> None:
    """Every label value the code emits is named in the series' help (the docs table is generated
    from it, see test_docs_metrics_table_is_generated), the help names no value with an underscore
    that nothing emits, and the label lists of the operator docs name only emitted values."""
    from collector.metrics import SERIES

    help_words = _words(SERIES[series].help)
    assert emitted <= help_words, f"{series}: emitted but not in the help: {emitted - help_words}"
    listed = {w for w in help_words if "_" in w and not w.startswith("flowscope_")}
    assert listed <= emitted, f"{series}: in the help but never emitted: {listed - emitted}"
    for doc in ("docs/collector.md", "deploy/README.md"):
        text = (ROOT / doc).read_text()
        for m in re.finditer(rf"`{series}(?:_total)?\{{\w+\}}` \(([^)]*)\)", text):
            documented = set(re.findall(r"`([a-z_]+)`", m.group(1)))
            assert documented <= emitted, f"{doc}: {series} lists {documented - emitted}, never emitted"


def test_flows_dropped_reasons_documented_are_the_ones_counted() -> None:
    """The reasons flowscope_flows_dropped_total carries: every literal the queue and the sinks
    count under (collector/), and the decoder's batch drops (decoders/, --dedup)."""
    collector_src = "".join(p.read_text() for p in (ROOT / "collector").glob("*.py"))
    decoder_src = "".join(p.read_text() for p in (ROOT / "decoders").glob("*.p[yx][xi]"))
    emitted = set(re.findall(r'dropped\[\([\w.]+, "([a-z_]+)"\)\]', collector_src))
    emitted |= set(re.findall(r'drop_all\("([a-z_]+)"\)', collector_src))
    emitted |= set(re.findall(r'\[\("([a-z_]+)",\)\]', collector_src))    # the supervisor's (app.died)
    emitted |= set(re.findall(r'\bflow_drops\["([a-z_]+)"\]', collector_src))    # the receiver's (server.py)
    emitted |= set(re.findall(r'\bb\._?dropped\["([a-z_]+)"\]', decoder_src))
    assert {"queue_full", "rejected", "too_large", "duplicate", "worker_died", "internal"} <= emitted  # the scan finds them
    _check_values_documented("flowscope_flows_dropped", emitted)


def test_kafka_error_kinds_documented_are_the_ones_counted() -> None:
    import inspect

    from collector.sinks import KafkaSink

    emitted = set(re.findall(r'self\.errors\["([a-z_]+)"\]', inspect.getsource(KafkaSink)))
    assert {"connect", "produce", "admin", "rejected"} <= emitted
    _check_values_documented("flowscope_kafka_errors", emitted)


def test_enrich_lookup_results_documented_are_the_ones_exported() -> None:
    """What flowscope_enrich_lookups_total{result} really carries, from a real enricher that
    enriched real flows: where each address's answer came from (two per flow), found or not."""
    import random

    import enrich
    from benchmarks.datagrams import OVS_INGRESS, data_set, ipfix_message, ovs_flows, template_set
    from collector.metrics import SERIES
    from collector.server import enrich_series
    from decoders import Decoder
    from tests.support.fake_kube import node, pod

    e = enrich.Enricher.from_objects(pods=[pod("p", "ns", ips=["10.128.0.5"], node="n", host_ip="10.0.0.1")],
                                     nodes=[node("n", internal=["10.0.0.1"])])
    recs = ovs_flows(10, random.Random(1))
    recs[0]["src"] = "10.128.0.5"
    dec = Decoder()
    dec.decode(ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=1_700_000_000), "10.0.0.1")
    batch = dec.decode(ipfix_message([data_set(OVS_INGRESS, recs)], seq=0, export_time=1_700_000_000), "10.0.0.1",
                       0, 1_700_000_001)
    assert len(batch.to_json(e)) == 10
    lookups = {k[0]: v for k, v in enrich_series(e)["flowscope_enrich_lookups"].items()}
    if not lookups:
        pytest.skip("enrich._fast not built: the pure-Python index reports no lookups")
    assert sum(lookups.values()) == 20  # two addresses per flow, hits and misses of identity alike
    # flows with an identity on a side: the one from the pod, and those whose exporter-side
    # address happens to be the node (ovs_flows draws 10.128/10.129 pod-network addresses)
    expect = sum(1 for r in recs if r["src"] in ("10.128.0.5", "10.0.0.1") or r["dst"] in ("10.128.0.5", "10.0.0.1"))
    flows = {k[0]: v for k, v in enrich_series(e)["flowscope_enrich_flows"].items()}
    assert flows == {"flows_identified": expect, "flows_unidentified": 10 - expect}
    kinds = {"10.128.0.5": "pod", "10.0.0.1": "node"}
    want = {"pod": 0, "node": 0, "service": 0, "none": 0}
    for r in recs:
        for a in (r["src"], r["dst"]):
            want[kinds.get(str(a), "none")] += 1
    addresses = {k[0]: v for k, v in enrich_series(e)["flowscope_enrich_addresses"].items()}
    assert addresses == want and want["pod"] and want["none"]
    _check_values_documented("flowscope_enrich_addresses", set(addresses))
    _check_values_documented("flowscope_enrich_flows", set(flows))
    emitted = set(lookups)
    _check_values_documented("flowscope_enrich_lookups", emitted)
    assert not {"hit", "miss"} & _words(SERIES["flowscope_enrich_lookups"].help)  # no such results exist


def test_enrich_addresses_by_kind() -> None:
    """flowscope_enrich_addresses_total{kind} (DESIGN.md: "enrichment hits by kind and misses"):
    each flow address counted once by what held it at the flow's start: a pod, a node (its
    address, the OVN management port, a host-network pod's), a service ClusterIP, or nobody;
    an address a pod held before it was deleted counts as that pod for flows from then only."""
    import enrich
    from tests.support.fake_kube import node, pod, service

    e = enrich.Enricher.from_objects(
        pods=[pod("web", "shop", ips=["10.128.1.10", "fd00:10:128:1::a"], node="n1", host_ip="10.0.0.1"),
              pod("agent", "kube-system", ips=["10.0.0.1"], node="n1", host_ip="10.0.0.1", host_network=True)],
        nodes=[node("n1", internal=["10.0.0.1"], subnets={"default": ["10.128.1.0/24"]})],
        services=[service("web", "shop", ips=["172.30.0.10"])])
    r = e.index._reader
    if r is None:
        pytest.skip("enrich._fast not built: the pure-Python index counts no addresses")
    pairs = [("10.128.1.10", "172.30.0.10"),        # pod -> service
             ("10.128.1.2", "10.0.0.1"),            # management port -> node (host-network pod: node)
             ("10.128.1.10", "8.8.8.8"),            # pod -> outside
             ("fd00:10:128:1::a", "fd00::1"),       # IPv6 pod -> outside
             ("192.0.2.1", "192.0.2.2")]            # nobody
    for s, d in pairs:
        e.enrich(_raw(s), _raw(d), b"", 0, -1)
    assert r.addresses == {"pod": 3, "node": 2, "service": 1, "none": 4}
    st = e.stats()
    assert {k: st[f"addresses_{k}"] for k in ("pod", "node", "service", "none")} == r.addresses


def _raw(ip: str) -> bytes:
    import ipaddress

    return ipaddress.ip_address(ip).packed


def test_enrich_flow_counts_survive_batch_overflow() -> None:
    """A flow that does not fit a Kafka batch is encoded, thrown away and encoded again into
    the next batch: flowscope_enrich_flows_total counts it once, and the lookups it took (two
    addresses a flow, from the cache or the index) once."""
    import random

    import enrich
    from benchmarks.datagrams import OVS_INGRESS, data_set, ipfix_message, ovs_flows, template_set
    from decoders import Decoder, RecordBatchWriter
    from tests.support.fake_kube import pod

    e = enrich.Enricher.from_objects(pods=[pod("p", "ns", ips=["10.128.0.1"])])
    r = e.index._reader
    if r is None:
        pytest.skip("enrich._fast not built: the pure-Python index counts no flows")
    def batches(b: Any, e: Any) -> int:
        """Append the datagram's flows to 4 KB batches as the direct path does: how many it took."""
        w, n = RecordBatchWriter(4096), 1
        i = w.append(b, e, 0)
        while i < len(b):
            w, n = RecordBatchWriter(4096), n + 1
            i = w.append(b, e, i)
        return n

    dec = Decoder()
    dec.decode(ipfix_message([template_set([OVS_INGRESS])], seq=0, export_time=1_700_000_000), "192.0.2.1")
    recs = ovs_flows(25, random.Random(1), pods=4)
    b = dec.decode(ipfix_message([data_set(OVS_INGRESS, recs)], seq=1, export_time=1_700_000_000), "192.0.2.1",
                   0, 1_700_000_001)
    assert batches(b, e) > 2  # the overflow path ran
    assert r.flows_identified + r.flows_unidentified == len(b) == 25
    assert r.flows_identified == sum(1 for x in recs if "10.128.0.1" in (x["src"], x["dst"]))
    assert r.hits + r.misses == 2 * 25
    held = sum((x["src"] == "10.128.0.1") + (x["dst"] == "10.128.0.1") for x in recs)
    assert r.addresses == {"pod": held, "node": 0, "service": 0, "none": 50 - held} and held
    # a template with the source address only: the encoder asks enrich() (one address absent),
    # and takes its counts back the same way
    from benchmarks.datagrams import _COMMON, IpfixTemplate

    src_only = IpfixTemplate(300, (("in_name", 82, 0, 0xFFFF),) + tuple(f for f in _COMMON if f[0] != "dst"))
    e = enrich.Enricher.from_objects(pods=[pod("p", "ns", ips=["10.128.0.1"])])
    r = e.index._reader
    dec.decode(ipfix_message([template_set([src_only])], seq=2, export_time=1_700_000_000), "192.0.2.1")
    for x in recs:
        x["in_name"] = b"x" * 200   # fatter records: more of them overflow
    b = dec.decode(ipfix_message([data_set(src_only, recs)], seq=2, export_time=1_700_000_000), "192.0.2.1",
                   0, 1_700_000_001)
    assert batches(b, e) > 2
    assert r.flows_identified + r.flows_unidentified == 25 and r.hits + r.misses == 25
    assert sum(r.addresses.values()) == 25


def test_documented_decode_error_reasons_are_the_ones_raised() -> None:
    """README and docs/INTERNALS.md list the reasons of flowscope_decode_errors_total: exactly the
    ones the decoders raise (bad_count is counted without failing and documented apart)."""
    import struct

    from decoders import Decoder

    src = "".join(p.read_text() for p in (ROOT / "decoders").glob("*.p[yx][xi]"))
    raised = set(re.findall(r'(?:raise_decode|_error|DecodeError)\(\s*"([a-z_]+)"', src))
    assert {"truncated", "bad_version", "too_large", "bad_sample"} <= raised  # the scan finds them
    readme = (ROOT / "README.md").read_text()
    internals = (ROOT / "docs" / "INTERNALS.md").read_text()
    spans = {"README.md": readme[readme.index("each failure is a typed error ("):
                                 readme.index("with the exporter, protocol context")],
             "docs/INTERNALS.md": internals[internals.index("Error reasons (labels):"):
                                            internals.index("; `bad_count` is counted")]}
    for doc, span in spans.items():
        assert set(re.findall(r"`([a-z_]+)`", span)) == raised - {"bad_count"}, doc
    dec = Decoder()  # a version flowscope does not decode is bad_version, as documented
    dec.decode(struct.pack("!HH", 8, 1) + bytes(60), "10.0.0.1", 0, 1.0)
    assert dec.stats()["10.0.0.1"]["errors"] == {"bad_version": 1}


def test_docs_metrics_table_is_generated() -> None:
    """docs/collector.md's series table is collector.metrics.markdown_table() (regenerate with
    `python -c 'from collector.metrics import markdown_table; print(markdown_table())'`)."""
    from collector.metrics import markdown_table

    assert markdown_table() in (ROOT / "docs" / "collector.md").read_text()


def test_aggregator_sums_workers() -> None:
    agg = Aggregator()
    agg.update(0, {"flowscope_flows": {("1.1.1.1", "ipfix"): 10}, "flowscope_sampling_rate": {("x", "ipfix"): 400}})
    agg.update(1, {"flowscope_flows": {("1.1.1.1", "ipfix"): 5}, "flowscope_sampling_rate": {("x", "ipfix"): 100}})
    parsed = parse_exposition(agg.render().decode())
    assert total(parsed, "flowscope_flows_total", exporter="1.1.1.1") == 15
    assert total(parsed, "flowscope_sampling_rate") == 400


def test_a_worker_that_never_reports_is_silent_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --workers N a worker hung before its first snapshot (in its start-up) fails /readyz
    and then /healthz like one hung later: its silence counts from the supervisor's start."""
    from collector import app as A

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    agg = Aggregator(2)
    ready = {"_ready": {(): (True, [])}}
    agg.update(0, ready)
    clock[0] += 5
    assert agg.silent(10) == {} and A.readiness(agg, 2, 10)[1] == ["1 worker(s) not reporting yet"]
    clock[0] += 10
    agg.update(0, ready)
    assert agg.silent(10) == {1: 15.0}
    assert A.silent_workers(agg, 10) == ["worker 1: no report since the start, 15 s ago (hung while starting?)"]
    clock[0] += 50
    assert agg.silent(10) == {0: 50.0, 1: 65.0}
    assert A.silent_workers(agg, 10)[0] == "worker 0: no report for 50 s (hung?)"


def test_a_starting_worker_is_unready_but_not_hung(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker reports "starting" before its start-up (state files of millions of template
    fields take seconds each, and each worker loads them all): however long that takes, it keeps
    /readyz failing with the reason but never fails /healthz (a restart would only start it over);
    its first real snapshot ends that."""
    from collector import app as A
    from collector.metrics import starting_snapshot

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    agg = Aggregator(2)
    agg.update(0, {"_ready": {(): (True, [])}})
    agg.update(1, starting_snapshot("state files"))
    clock[0] += 300
    agg.update(0, {"_ready": {(): (True, [])}})
    assert A.silent_workers(agg, 10, starting=False) == []
    ok, why = A.readiness(agg, 2, 10)
    assert not ok and why == ["worker 1: starting for 300 s", "worker 1: starting: state files"]
    clock[0] += 301   # starting for more than STARTING_LIMIT (600 s): hung in its start-up
    agg.update(0, {"_ready": {(): (True, [])}})
    assert A.silent_workers(agg, 10, starting=False) == ["worker 1: starting for 601 s"]
    agg.update(1, {"_ready": {(): (True, [])}})
    assert A.readiness(agg, 2, 10) == (True, [])
    clock[0] += 50   # silent again after having started: a hang
    assert A.silent_workers(agg, 10, starting=False) == ["worker 0: no report for 50 s (hung?)",
                                                         "worker 1: no report for 50 s (hung?)"]


# ---------------------------------------------------------------------------------------------- replay

def _v9(seq: int, secs: int) -> bytes:
    return struct.pack("!HHIIII", 9, 0, 1000, secs, seq, 7)


def _ipfix(seq: int, secs: int, data_bytes: int) -> bytes:
    body = struct.pack("!HH", 256, 4 + data_bytes) + b"\0" * data_bytes
    return struct.pack("!HHIII", 10, 16 + len(body), secs, seq, 3) + body


def _sflow(seq: int, uptime: int) -> bytes:
    return struct.pack("!II4sIIII", 5, 1, bytes([192, 0, 2, 1]), 0, seq, uptime, 0)


def test_rewrite_each_protocol() -> None:
    src = ("192.0.2.1", 2055)
    pk = [R.Packet(src, make_v5(100, 30, 0, unix_secs=1000), 100.0),
          R.Packet(src, make_v5(130, 10, 30, unix_secs=1001), 101.2)]
    plan = R.Plan(pk)
    assert plan.period == 3  # ceil(1.2) + 1 seconds
    out = [p for _, p in plan.datagrams(2)]
    # v5: the stream spans 40 flows (100..140): loop 2 starts at 180; unix_secs +6
    assert struct.unpack_from("!I", out[0], 16)[0] == 180 and struct.unpack_from("!I", out[1], 16)[0] == 210
    assert struct.unpack_from("!I", out[0], 8)[0] == 1006
    assert [p for _, p in plan.datagrams(0)] == [x.payload for x in pk]

    v9 = R.Plan([R.Packet(src, _v9(5, 50), 0.0), R.Packet(src, _v9(6, 50), 0.0)])
    got = [struct.unpack_from("!II", p, 8) for _, p in v9.datagrams(1)]
    assert got == [(51, 7), (51, 8)]  # secs +1 (period 1), sequence +2 packets

    ipf = R.Plan([R.Packet(src, _ipfix(1000, 70, 40), 0.0)])
    (_, p), = list(ipf.datagrams(3))
    assert struct.unpack_from("!II", p, 4) == (73, 1000 + 3 * 40)

    sf = R.Plan([R.Packet(src, _sflow(9, 5000), 0.0), R.Packet(src, _sflow(10, 6000), 0.5)])
    got = [struct.unpack_from("!II", p, 16) for _, p in sf.datagrams(1)]
    assert got == [(11, 7000), (12, 8000)]  # seq +2, uptime +2 s (period 2)


def test_rewrite_sflow_agent_address_types() -> None:
    # sFlow v5 address type 0 (unknown) has no address bytes, 2 (IPv6) sixteen: the sequence
    # and uptime sit after it, and nothing else of the datagram changes.
    for atype, addr in ((0, b""), (1, bytes(4)), (2, bytes(range(16)))):
        p = struct.pack("!II", 5, atype) + addr + struct.pack("!IIII", 7, 9, 5000, 1) + b"sample.."
        src = ("192.0.2.1", 6343)
        (u,) = R.units(src, p)
        off = 8 + len(addr)
        assert (u.key[2:], u.seq_off, u.clock_off) == ((addr, 7), off + 4, off + 8)
        q = R.Plan([R.Packet(src, p, 0.0)]).shifted(src, p, 10)   # one datagram a loop, period 1 s
        assert struct.unpack_from("!III", q, off) == (7, 19, 15000)
        assert q[:off] == p[:off] and q[off + 12:] == p[off + 12:]


def test_replay_command_sends_rewritten(tmp_path: Path) -> None:
    cap = corpus_file("netflow5/juniper-mx80_netflow5.pcap")
    orig = udp_payloads(cap)[0][2]
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "collector.cli", "replay", str(cap), "--to", f"127.0.0.1:{port}",
                        "--loop", "3", "--rate", "1000"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    got = [rx.recv(65535) for _ in range(3)]
    rx.close()
    seq0 = struct.unpack_from("!I", orig, 16)[0]
    secs0 = struct.unpack_from("!I", orig, 8)[0]
    assert got[0] == orig
    assert [struct.unpack_from("!I", g, 16)[0] - seq0 for g in got] == [0, 29, 58]
    assert [struct.unpack_from("!I", g, 8)[0] - secs0 for g in got] == [0, 1, 2]
    assert [g[24:] for g in got] == [orig[24:]] * 3  # records untouched


def test_batch_buffers_series_counts_each_writer_once_by_where_its_buffer_came_from() -> None:
    """flowscope_batch_buffers_total: every output batch a worker starts counts once, reused when
    its buffer was one the pool kept, fresh when it needed a new allocation; a writer started
    while the pool holds a full-size buffer is a reuse."""
    from collector.config import Config
    from collector.server import Worker
    from decoders import RecordBatchWriter, buffer_pool_stats

    cfg = Config()
    cfg.kafka.brokers = ["127.0.0.1:9"]   # never connected: the worker is not started
    w = Worker(cfg)

    def counts() -> tuple[int, int]:
        got = w.snapshot()["flowscope_batch_buffers"]
        return got[("reused",)], got[("fresh",)]

    r0, f0 = counts()
    writers = [RecordBatchWriter(1 << 20) for _ in range(buffer_pool_stats()["size"] + 1)]
    r1, f1 = counts()
    assert (r1 - r0) + (f1 - f0) == len(writers) and f1 > f0   # more than the pool keeps: one fresh at least
    writers.pop()                          # its buffer back to the pool
    RecordBatchWriter(1 << 20)             # takes it (and gives it back when it goes)
    assert counts() == (r1 + 1, f1)


def test_linger_does_not_cut_the_open_batch_behind_a_backlog() -> None:
    """Key mode none: the open record batch is queued every --kafka-linger-ms only while nothing
    waits in the queue. Behind queued batches it keeps filling towards --kafka-batch-bytes
    (before, a batch of rate x linger went out as its own request every linger: a broker slower
    than about 40 ms could not be kept up with at any rate). A small batch waiting behind
    another (and the one ahead of it) no longer holds a buffer of --kafka-batch-bytes; alone in
    the queue it goes out next and keeps it (no copy of its flows' bytes)."""
    import asyncio
    import random

    from benchmarks.datagrams import v5_datagram, v5_records
    from collector.config import Config
    from collector.server import Worker

    cfg = Config()
    cfg.kafka.brokers = ["127.0.0.1:9"]   # never connected: the worker is not started
    cfg.kafka.linger_ms = 5
    w = Worker(cfg)
    assert w.writer is not None, "key mode none writes record batches directly"
    b = w.decoder.decode(v5_datagram(v5_records(30, random.Random(3), uptime_ms=100_000), seq=0,
                                     unix_secs=1_700_000_000, uptime_ms=100_000), "10.0.0.1")

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(w._linger_loop())
        try:
            w.write_records(b)
            await asyncio.sleep(0.1)       # 20 lingers: the quiet queue takes the batch
            assert len(w.queue.chunks) == 1 and w.writer.records == 0
            first = w.queue.chunks[0].records.writer
            assert first.capacity > 1 << 20, "alone in the queue, a batch is not copied"
            for _ in range(5):             # behind it, the next one keeps filling
                w.write_records(b)
                await asyncio.sleep(0.05)
            assert len(w.queue.chunks) == 1 and w.writer.records == 150
            assert first.capacity > 1 << 20
            # the open batch's flows are counted with the queue's (decoded, not yet delivered)
            assert w.snapshot()["flowscope_queue_records"] == {(): 180}
            w.queue.take(1 << 30)          # the backlog goes: the open batch follows at the next linger
            deadline = asyncio.get_running_loop().time() + 5
            while not w.queue.chunks and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert len(w.queue.chunks) == 1 and len(w.queue.chunks[0].records) == 150
            # Behind a backlog that does not move (the broker away), the open batch is queued
            # after OPEN_BATCH_MAX_AGE all the same: its flows are then bounded and counted.
            w.write_records(b)
            await asyncio.sleep(0.3)
            assert len(w.queue.chunks) == 1 and w.writer.records == 30
            deadline = asyncio.get_running_loop().time() + 5
            while len(w.queue.chunks) == 1 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert len(w.queue.chunks) == 2 and w.writer.records == 0
            # two waiting: both hold buffers of their own size (the first was trimmed when the
            # second queued behind it), their records untouched
            for c, n in zip(w.queue.chunks, (150, 30), strict=True):
                assert c.records.writer.capacity <= c.records.writer.size + 1024 and len(c.records) == n
        finally:
            task.cancel()

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["exporter", "conversation"])
def test_keyed_modes_write_batches_per_partition_once_the_count_is_known(mode: str) -> None:
    """--kafka-key exporter|conversation: until the sink knows the topic's partition count the
    flows go per record (the sink keys them); then each flow is written into the batch of its
    key's partition (decoders.KeyedBatches), a partition slot per batch; when the count changes
    the open batches are queued as they are and new ones are keyed for the new count. The
    linger loop queues the open batches, and the snapshot counts their flows with the queue."""
    import asyncio
    import random

    from aiokafka.partitioner import murmur2
    from aiokafka.record._crecords.cutil import crc32c_cython
    from aiokafka.record.default_records import DefaultRecordBatch

    from benchmarks.datagrams import v5_datagram, v5_records
    from collector.config import Config
    from collector.server import Worker
    from collector.sinks import Prebuilt, conversation_key

    cfg = Config()
    cfg.kafka.brokers = ["127.0.0.1:9"]   # never connected: the worker is not started
    cfg.kafka.key = mode
    cfg.kafka.linger_ms = 5
    w = Worker(cfg)
    assert w.writer is None and w.keyed is None
    rng = random.Random(4)
    b = [w.decoder.decode(v5_datagram(v5_records(30, rng, uptime_ms=100_000), seq=30 * i, unix_secs=1_700_000_000,
                                      uptime_ms=100_000), f"10.0.0.{i % 4 + 1}") for i in range(8)]

    def key(j: bytes, exporter: str) -> bytes:
        return conversation_key(j) if mode == "conversation" else exporter.encode()

    w.write_keyed(b[0], "10.0.0.1")             # partition count not known: per record
    assert w.keyed is None and len(w.queue.chunks) == 1 and w.queue.chunks[0].records == b[0].to_json()
    w.sink.partitions[cfg.kafka.topic] = [0, 1, 2]
    for i in range(1, 5):
        w.write_keyed(b[i], f"10.0.0.{i % 4 + 1}")
    assert w.keyed.partitions == 3 and w.keyed.records == 120 and len(w.queue.chunks) == 1
    assert w.snapshot()["flowscope_queue_records"] == {(): 150}
    w.sink.partitions[cfg.kafka.topic] = [0, 1, 2, 3, 4]     # partitions added
    for i in range(5, 8):
        w.write_keyed(b[i], f"10.0.0.{i % 4 + 1}")
    assert w.keyed.partitions == 5 and w.keyed.records == 90
    assert w.snapshot()["flowscope_queue_bytes"] == {(): w.queue.total_bytes + w.keyed.size}

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(w._linger_loop())
        try:
            deadline = asyncio.get_running_loop().time() + 5
            while w.keyed.records and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(run())
    assert w.keyed.records == 0
    chunks = list(w.queue.chunks)[1:]
    assert all(isinstance(c.records, Prebuilt) for c in chunks)
    got: list[tuple[int, bytes, bytes]] = []
    for c in chunks:
        got += [(c.records.slot, r.key, r.value) for r in DefaultRecordBatch(c.records.writer.build(crc32c_cython))]
    sent = [(key(j, f"10.0.0.{i % 4 + 1}"), j) for i in range(1, 8) for j in b[i].to_json()]
    assert sorted((k, v) for _, k, v in got) == sorted(sent)
    # each record in the slot its key hashes to, for the count of the time it was written
    first = {(key(j, f"10.0.0.{i % 4 + 1}"), j) for i in range(1, 5) for j in b[i].to_json()}
    for slot, k, v in got:
        parts = 3 if (k, v) in first else 5
        assert slot == (murmur2(k) & 0x7FFFFFFF) % parts
    # Many partitions, none full: past keyed_cap bytes the open batches are all queued.
    w.sink.partitions[cfg.kafka.topic] = list(range(64))
    w.keyed_cap = 20000
    queued = len(w.queue.chunks)
    w.write_keyed(b[1], "10.0.0.2")
    assert w.keyed.partitions == 64 and w.keyed.size < 20000 and len(w.queue.chunks) == queued
    for i in range(2, 8):
        w.write_keyed(b[i], f"10.0.0.{i % 4 + 1}")
        assert w.keyed.size <= 20000
    assert len(w.queue.chunks) > queued
    assert w.keyed.records + sum(len(c.records) for c in list(w.queue.chunks)[queued:]) == 7 * 30


def test_a_sink_delivering_nothing_with_records_waiting_makes_the_worker_unready(monkeypatch) -> None:
    """Connected is not enough: records waiting longer than max(10 s, 2 x request timeout) with
    nothing delivered (a broker answering every produce with a retriable error, or the keyed
    modes retrying inside aiokafka) make /readyz fail with the reason, and
    flowscope_sink_stalled_seconds shows it; a delivery or an empty queue clears it."""
    from collector import sinks
    from collector.config import Config
    from collector.server import Worker

    clock = [1000.0]
    monkeypatch.setattr(sinks.time, "monotonic", lambda: clock[0])
    cfg = Config()
    cfg.kafka.request_timeout_ms = 10000
    w = Worker(cfg)                      # stdout sink, not started
    w.bound, w.sink.connected = True, True
    assert w.stall_limit == 20.0 and w.ready() == (True, [])
    w.queue.offer(FLOWS, [b"a", b"b"], "e")
    assert w.sink.stalled_for() == 0.0
    clock[0] += 15
    assert w.ready()[0] and w.snapshot()["flowscope_sink_stalled_seconds"] == {(): 15.0}
    clock[0] += 10
    ok, why = w.ready()
    assert not ok and why == ["stdout sink delivered nothing for 25 s with 2 records waiting"]
    w.sink.delivered[FLOWS] += 1         # something went out: the clock starts over
    assert w.ready() == (True, []) and w.sink.stalled_for() == 0.0
    clock[0] += 30
    w.queue.take(1 << 20)
    w.queue.done(FLOWS, 4, 2)            # nothing waits: not stalled, however long since
    assert w.sink.stalled_for() == 0.0 and w.ready() == (True, [])


def test_a_refused_datagram_is_named_for_the_log() -> None:
    """The wrong_protocol log line says what arrived and which listener takes it (the usual cause
    is a port mix-up), or that flowscope decodes no such version."""
    from collector.server import sniff_protocol

    assert sniff_protocol(b"\x00\x00\x00\x05\x00\x00\x00\x01") == "sFlow v5 (an sflow:// listener takes it)"
    assert sniff_protocol(b"\x00\x0a\x00\x10") == "IPFIX (an ipfix:// or netflow:// listener takes it)"
    assert sniff_protocol(b"\x00\x09\x00\x01") == "NetFlow v9 (a netflow:// listener takes it)"
    assert sniff_protocol(b"\x00\x07\x00\x01") == "NetFlow v7 (a netflow:// listener takes it)"
    assert sniff_protocol(b"\x00\x08\x00\x01") == "NetFlow v8 (not decoded: v1, v5, v7, v9 and IPFIX only)"
    from collector.server import SCHEME_PREFIXES  # a netflow:// listener takes what it decodes

    assert [v for v in range(12) if struct.pack("!HH", v, 1).startswith(SCHEME_PREFIXES["netflow"])] == [1, 5, 7, 9, 10]
    assert sniff_protocol(b"\x00\x00\x00\x04") == "sFlow v4 (not decoded: sFlow v5 only)"
    assert sniff_protocol(b"GET / HTTP/1.1") == "no flow protocol flowscope knows"
    assert sniff_protocol(b"\x05") == "too short for any flow protocol"


@pytest.mark.parametrize("args, msg", [
    (["--metrics-addr", "127.0.0.1:0"], "metrics_addr (from --metrics-addr): 127.0.0.1:0: port must be 1-65535 (empty disables it)"),
    (["--health-addr", "[::1]:0"], "health_addr (from --health-addr): [::1]:0: port must be 1-65535 (empty disables it)"),
    (["--kafka-brokers", "127.0.0.1:0"], "kafka.brokers (from --kafka-brokers): '127.0.0.1:0': port must be 1-65535"),
])
def test_port_zero_is_refused_where_nothing_could_find_it(args: list[str], msg: str) -> None:
    """A random port for /metrics or the probes is one nothing scrapes or probes, and a broker
    on port 0 cannot be reached: refused as the listeners' port 0 is."""
    with pytest.raises(C.ConfigError) as e:
        load(args)
    assert str(e.value) == msg


def test_bundled_broker_refuses_a_port_in_use() -> None:
    """`make kafka` on a port something already listens on said "tansu listening" (it connected
    to the other program) and then exited 1 with no reason (review helper-84)."""
    from collector.broker import Broker, main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port} is already in use"):
            Broker(port=port).start()
        assert main(["--port", str(port)]) == 1


def test_the_enrich_switch_takes_every_boolean_spelling() -> None:
    """--enrich / FLOWSCOPE_ENRICH_ENABLED: auto, or a switch spelled as every other one may be
    (yes/no, on/off, 1/0); `decode --enrich yes` took them and `run --enrich yes` refused them
    (review helper-84)."""
    for raw, want in (("yes", "true"), ("off", "false"), ("1", "true"), ("AUTO", "auto"), ("False", "false")):
        assert load(["--enrich", raw]).enrich.enabled == want, raw
    assert load([], {"FLOWSCOPE_ENRICH_ENABLED": "no"}).enrich.enabled == "false"
    with pytest.raises(C.ConfigError, match="'maybe': expected auto, true or false"):
        load(["--enrich", "maybe"])


def test_shared_state_keeps_the_other_writers_templates_of_an_exporter_both_know(tmp_path: Path) -> None:
    """A save over a file another replica wrote keeps that replica's state of an exporter this
    one knows too, for the exporting processes (UDP source ports) this one has nothing of:
    templates refreshed within FOREIGN_MAX_AGE and their options-learned entries. A process this
    one has state of is its own to say: a template it withdrew is not brought back, nor its
    rates replaced (review helper-84: the other's templates were all lost; helper-87: per
    template, withdrawn ones came back and entries piled up)."""
    import json

    from collector.state import FOREIGN_MAX_AGE, StateFile

    now = time.time()

    def tpl(tid: int, port: int, refreshed: float, fields: list[list[int]]) -> dict[str, Any]:
        return {"version": 10, "domain": 0, "id": tid, "port": port, "options": False, "refreshed": refreshed,
                "scope": 0, "fields": fields}

    theirs = {"format": 3, "exporters": {"10.0.0.1": {
        "templates": [tpl(256, 4739, now - 5, [[8, 0, 4]]), tpl(257, 4739, now - 5, [[12, 0, 4]]),
                      tpl(256, 5000, now - 5, [[8, 0, 4]]), tpl(300, 6000, now - FOREIGN_MAX_AGE - 60, [[1, 0, 4]])],
        "domain_sampling": [[10, 0, 4739, 100], [10, 0, 5000, 200], [10, 0, 6000, 300]],
        "sampler_rates": [], "sysinit_ms": []}}}
    mine = {"format": 3, "exporters": {"10.0.0.1": {
        "templates": [tpl(256, 4739, now - 50, [[8, 0, 4], [12, 0, 4]])],
        "domain_sampling": [], "sampler_rates": [], "sysinit_ms": []}}}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(theirs))       # written by another replica
    merged = json.loads(StateFile(str(path), None)._merged(json.dumps(mine).encode()))["exporters"]["10.0.0.1"]
    assert sorted((t["port"], t["id"]) for t in merged["templates"]) == [(4739, 256), (5000, 256)]
    assert [t["fields"] for t in merged["templates"] if t["port"] == 4739] == [[[8, 0, 4], [12, 0, 4]]]
    assert merged["domain_sampling"] == [[10, 0, 5000, 200]]

def test_a_config_file_error_names_where_the_path_came_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """FLOWSCOPE_CONFIG pointing nowhere was reported as `--config PATH` (review helper-84)."""
    missing = str(tmp_path / "nope.yaml")
    monkeypatch.setenv("FLOWSCOPE_CONFIG", missing)
    with pytest.raises(C.ConfigError, match=f"^FLOWSCOPE_CONFIG {re.escape(missing)}: No such file"):
        load([], {"FLOWSCOPE_CONFIG": missing})
    with pytest.raises(C.ConfigError, match=f"^--config {re.escape(missing)}x: No such file"):
        load(["--config", missing + "x"], {"FLOWSCOPE_CONFIG": missing})


def test_refresh_takes_only_what_a_running_collector_lacks(tmp_path: Path) -> None:
    """refresh_into (a replica reading what another saved, for exporters that sent data without
    a template): it takes the missing templates, never replaces rates or clocks the collector
    learned itself (review helper-87: a refresh put the file's old sampling rate back), and an
    exporter that misses templates later is looked up in a file already read for another one."""
    import asyncio
    import json

    from benchmarks.datagrams import IpfixTemplate, data_set, ipfix_message, template_set
    from collector.state import StateFile
    from decoders import Decoder, DecoderConfig

    t = IpfixTemplate(256, (("src", 8, 0, 4), ("dst", 12, 0, 4), ("b", 1, 0, 4)))
    opt_body = struct.pack("!HHH", 400, 2, 1) + struct.pack("!HHHH", 149, 4, 305, 4)
    opt = [struct.pack("!HH", 3, 4 + len(opt_body)) + opt_body, struct.pack("!HHII", 400, 12, 0, 1000)]
    rec = {"src": "10.0.0.1", "dst": "10.0.0.2", "b": 100}
    other = Decoder(DecoderConfig(default_sampling=0))          # the other replica, which saved
    for ip in ("10.9.0.1", "10.9.0.2"):
        other.decode(ipfix_message([template_set([t]), *opt], seq=0, export_time=1_700_000_000), ip, 4739)
    state = other.export_state()
    for ent in state["exporters"].values():
        ent["domain_sampling"] = [[10, 0, 4739, 100]]            # an old rate in the file
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    sf = StateFile(str(path), None)
    dec = Decoder(DecoderConfig(default_sampling=0))
    data = ipfix_message([data_set(t, [rec])], seq=0, export_time=1_700_000_000)
    dec.decode(ipfix_message(opt, seq=0, export_time=1_700_000_000), "10.9.0.1", 4739)   # learned live: 1000
    assert dec.decode(data, "10.9.0.1", 4739).missing_template_sets == 1
    assert asyncio.run(sf.refresh_into(dec)) == 1
    assert dec.decode(data, "10.9.0.1", 4739).to_dicts()[0]["Sampling"] == 1000
    assert dec.decode(data, "10.9.0.2", 4739).missing_template_sets == 1    # another exporter, later
    sf._refreshed_at = 0.0                                       # (past REFRESH_MIN_S)
    assert asyncio.run(sf.refresh_into(dec)) == 2   # the file did not change: read again for it (data and options)
    assert len(dec.decode(data, "10.9.0.2", 4739)) == 1


def test_worker_decoder_learns_options_without_keeping_them() -> None:
    """The collector reads nothing from batch.options: its decoder keeps no dict per options
    record (an exporter sending small options records at line rate cost 40 ms of CPU per
    datagram building them), and still learns what options data teaches."""
    import struct

    from benchmarks.datagrams import data_set, ipfix_message, template_set
    from collector.config import Config
    from collector.server import Worker
    from tests.test_decoders import _tpl

    cfg = Config()
    cfg.default_sampling = 0
    w = Worker(cfg)
    assert w.decoder.keep_options is False
    # options template 400: scope observationDomainId (149), samplingPacketInterval (305) and
    # samplingPacketSpace (306): 1 packet out of 1 + 49
    body = struct.pack("!HHH", 400, 3, 1) + struct.pack("!HHHHHH", 149, 4, 305, 4, 306, 4)
    opt_data = struct.pack("!HH", 400, 16) + struct.pack("!III", 0, 1, 49)
    t = _tpl(256, ("src", 8, 0, 4), ("bytes", 1, 0, 4))
    b = w.decoder.decode(ipfix_message([struct.pack("!HH", 3, 4 + len(body)) + body, opt_data, template_set([t])],
                                       seq=0, export_time=1_780_000_000), "10.0.0.1")
    assert b.error is None and b.options == []
    f = w.decoder.decode(ipfix_message([data_set(t, [{"src": "10.1.1.1", "bytes": 1}])], seq=1,
                                       export_time=1_780_000_000), "10.0.0.1").to_dicts()[0]
    assert f["Sampling"] == 50


def test_key_none_batches_skip_partitions_without_a_leader() -> None:
    """Key none: batches rotate over the partitions that have a leader in the client's metadata
    (a broker down, a partition with no other replica: its share of batches went to a partition
    that could take none); all of them when none has a leader; keyed slots keep their partition."""
    import asyncio

    from aiokafka import AIOKafkaProducer
    from aiokafka.protocol.metadata import MetadataResponse_v0

    from collector.config import Config
    from collector.sinks import KafkaSink

    async def run() -> None:
        cfg = Config()
        cfg.kafka.brokers = ["127.0.0.1:9"]
        sink = KafkaSink(cfg)
        sink.producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")   # never started
        sink.partitions[cfg.kafka.topic] = [0, 1, 2, 3]

        def metadata(leaders: list[int]) -> None:
            # (error, partition, leader, replicas, isr); LEADER_NOT_AVAILABLE (5) where leader -1
            parts = [(5 if lead < 0 else 0, p, lead, [lead] if lead >= 0 else [], [lead] if lead >= 0 else [])
                     for p, lead in enumerate(leaders)]
            sink.producer.client.cluster.update_metadata(
                MetadataResponse_v0([(0, "127.0.0.1", 9092), (1, "127.0.0.1", 9093)],
                                    [(0, cfg.kafka.topic, parts)]))

        def rotation(n: int = 12) -> list[int]:
            return [sink._new_open(0, -1, direct=True).partition for _ in range(n)]

        assert sorted(set(rotation())) == [0, 1, 2, 3]          # nothing known: every partition
        metadata([0, -1, 1, -1])
        got = rotation()
        assert set(got) == {0, 2} and got.count(0) == got.count(2)
        assert sink._new_open(0, 1, direct=True).partition == 1  # a keyed slot keeps its partition
        metadata([-1, -1, -1, -1])
        assert sorted(set(rotation())) == [0, 1, 2, 3]          # none led: as before
        metadata([0, 1, 0, 1])
        assert sorted(set(rotation())) == [0, 1, 2, 3]

    asyncio.run(run())


def test_kafka_connections_are_stopped_together_at_shutdown() -> None:
    """At the shutdown deadline every connection is stopped at once (one after the other, each
    given at least half a second, four connections overran --shutdown-timeout by two seconds)."""
    import asyncio

    from collector.config import Config
    from collector.sinks import KafkaSink

    active = [0, 0]     # stopping now, most at once

    class Conn:
        async def stop(self) -> None:
            active[0] += 1
            active[1] = max(active[1], active[0])
            await asyncio.sleep(0.05)
            active[0] -= 1

    async def run() -> None:
        sink = KafkaSink(Config())
        sink.producers = [Conn() for _ in range(4)]
        sink.producer = sink.producers[0]
        await sink._close(0.0)

    asyncio.run(run())
    assert active == [0, 4]


def test_informers_synced_is_1_only_when_every_worker_has_synced() -> None:
    """flowscope_informers_synced was merged across workers with max: one worker still listing
    (not ready, its flows unenriched) was hidden by another that had synced (review helper-108)."""
    from collector.metrics import merge_into

    total: dict = {}
    for synced in (1, 0, 1):
        merge_into(total, {"flowscope_informers_synced": {(): synced}})
    assert total["flowscope_informers_synced"][()] == 0
    total = {}
    for synced in (1, 1):
        merge_into(total, {"flowscope_informers_synced": {(): synced}})
    assert total["flowscope_informers_synced"][()] == 1


def test_flows_lost_to_an_internal_error_after_decoding_are_counted() -> None:
    """A datagram the decoder took, whose flows the encoder (or the enricher, or the queue) then
    failed on, was counted as an internal datagram drop only: its flows, counted in
    flowscope_flows_total, were neither queued nor dropped, and the accounting identity broke.
    They are dropped with reason internal."""
    from collector.config import Config
    from collector.server import Worker

    class Broken:
        def enrich(self, *a: Any) -> Any:
            raise RuntimeError("an enricher bug")

    cfg = Config()
    w = Worker(cfg)                      # stdout sink (its open lines), not started
    with receiving(w) as (r, tx, rx):
        tx.sendto(make_v5(0, 30, 0), rx.getsockname())
        assert wait_read(r) == 1
        assert w.writer.records == 30       # the path works
        good = w.writer.lines()
        w.enricher = Broken()
        tx.sendto(make_v5(1, 30, 30), rx.getsockname())
        assert wait_read(r) == 1
        snap = w.snapshot()
    assert snap["flowscope_received_datagrams"][(str(w.listeners[0]),)] == 2
    assert snap["flowscope_datagrams_dropped"][("internal",)] == 1
    assert snap["flowscope_flows_dropped"][("internal",)] == 30
    assert sum(snap["flowscope_flows"].values()) == 60
    # the failed datagram left nothing behind, not even part of a line
    assert w.writer.records == 30 and w.writer.lines() == good
    assert snap["flowscope_queue_records"][()] == 30


@pytest.mark.parametrize("key", ["none", "exporter", "conversation"])
def test_an_encoder_failure_after_a_full_batch_counts_only_the_flows_not_written(key: str) -> None:
    """A datagram whose flows fill the open record batch (or a partition's) is handed to the
    worker (write_records / write_keyed) with the flows the Receiver's C append already took;
    the worker queues the full batch and appends the rest. An enricher failing on a later flow
    then takes back only that call's records: the flows before it are in batches (queued or
    open). They were also counted dropped as internal (the whole datagram), so the identity
    flows = queued + open + dropped broke: only the flows in no batch are dropped."""
    from collector.config import Config, KafkaConfig
    from collector.server import Worker

    # 4 KiB batches hold a few v5 flows each: a datagram of 30 fills several
    w = Worker(Config(kafka=KafkaConfig(brokers=["127.0.0.1:1"], batch_bytes=4096, key=key)))
    if key != "none":
        w.sink.partitions[w.cfg.kafka.topic] = [0]    # (as if learnt: the worker is not started)
    with receiving(w) as (r, tx, rx):
        w.enricher = FailsAt(25)
        tx.sendto(make_v5(0, 30, 0), rx.getsockname())
        assert wait_read(r) == 1
        snap = w.snapshot()
    assert w.enricher.calls == 25       # (the failure came after a full batch was queued)
    queued = snap["flowscope_queue_records"][()]
    assert 0 < queued < 25
    assert snap["flowscope_datagrams_dropped"][("internal",)] == 1
    assert sum(snap["flowscope_flows"].values()) == 30
    assert snap["flowscope_flows_dropped"][("internal",)] == 30 - queued


@contextlib.contextmanager
def receiving(w: Any) -> Any:
    """A worker's netflow listener on a loopback socket, read by a decoders.Receiver (not
    started: the test calls read()), and a socket to send to it: (receiver, tx, rx)."""
    from decoders import Receiver

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        r = Receiver(rx.fileno(), w.decoder, w, 0, "netflow")
        w.receivers.append(r)
        yield r, tx, rx


def wait_read(r: Any, timeout: float = 5.0) -> int:
    """Receiver.read() once a datagram has arrived on its socket (loopback: at once, but the
    socket is read without waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        n = r.read()
        if n or time.monotonic() > deadline:
            return n
        time.sleep(0.001)


def test_a_text_option_keeps_a_plain_yaml_value_as_written(tmp_path: Path) -> None:
    """YAML 1.1 reads `0123` as the octal number 83, `1.10` as 1.1, `no` as False and `10_000` as
    10000: a cluster name, client id, user or topic written that way in the --config file was
    published (or sent to the broker) as '83', '1.1', 'False', '10000'. Text options keep the text."""
    f = tmp_path / "c.yaml"
    f.write_text("enrich:\n  enabled: false\n  cluster_name: 0123\n  infra_namespace_prefixes: [0777, on]\n"
                 "kafka:\n  client_id: 1.10\n  topic: 10_000\n  sasl_mechanism: PLAIN\n  sasl_user: no\n"
                 "  sasl_password: 0600\n")
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--config", str(f)], capture_output=True,
                       text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    import yaml

    eff = yaml.safe_load(r.stdout)
    assert eff["enrich"]["cluster_name"] == "0123"
    assert eff["enrich"]["infra_namespace_prefixes"] == ["0777", "on"]
    assert (eff["kafka"]["client_id"], eff["kafka"]["topic"], eff["kafka"]["sasl_user"]) == ("1.10", "10_000", "no")
    # (the password is not printed; what run would use is what load gives)
    assert load(["--config", str(f)]).kafka.sasl_password == "0600"
    # numbers and switches are still read as such, and a quoted value was always text
    f.write_text("workers: 2\ncounters: yes\nkafka:\n  client_id: '0123'\n")
    cfg = load(["--config", str(f)])
    assert (cfg.workers, cfg.counters, cfg.kafka.client_id) == (2, True, "0123")


@pytest.mark.parametrize("text,meant", [
    ("worker: 2\n", "workers"),                                   # a slip
    ("allow_exporter: [10.0.0.0/8]\n", "allow_exporters"),
    ("kafka:\n  sasl_pasword: x\n", "kafka.sasl_password"),
    ("enrich:\n  kube_config: /etc/kc\n", "enrich.kubeconfig"),
    ("brokers: [k:9092]\n", "kafka.brokers"),                     # a section's option at the top level
    ("kafka_brokers: k:9092\n", "kafka.brokers"),                 # the variable's spelling
    ("FLOWSCOPE_KAFKA_BROKERS: k:9092\n", "kafka.brokers"),       # the variable itself
    ("FLOWSCOPE_WORKERS: 2\n", "workers"),
    ("kafka:\n  FLOWSCOPE_KAFKA_TOPIC: t\n", "kafka.topic"),
    ("kafka:\n  workers: 2\n", "workers"),                        # a top-level option in a section
    ("blah: 1\n", None),
    ("kafka:\n  enabled: true\n", None),                          # not enrich.enabled
])
def test_an_unknown_yaml_key_names_the_option_it_probably_meant(tmp_path: Path, text: str, meant: str | None) -> None:
    """A misspelt FLOWSCOPE_* variable was reported with the option it probably meant, a misspelt
    key of the --config file only with every option's name (some sixty) to look through."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--config", str(f)], capture_output=True,
                       text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "unknown option" in r.stderr, r.stderr
    if meant is None:
        assert "did you mean" not in r.stderr, r.stderr
    else:
        assert f"unknown option (did you mean {meant}?);" in r.stderr, r.stderr


@pytest.mark.parametrize("word,want", [("false", "off"), ("no", "off"), ("0", "off"), ("true", "on"), ("yes", "on"),
                                       ("1", "on"), ("Off", "off"), ("auto", "auto")])
def test_an_on_off_option_takes_a_switchs_words_from_every_source(tmp_path: Path, word: str, want: str) -> None:
    """kafka.compression_thread (auto, on or off): `compression_thread: false` in the file was off
    (YAML reads it as a boolean), while FLOWSCOPE_KAFKA_COMPRESSION_THREAD=false or
    --kafka-compression-thread false stopped the collector at start, as `yes`, `1` did."""
    f = tmp_path / "c.yaml"
    f.write_text(f"kafka:\n  compression_thread: {word}\n")
    base = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    got = []
    for args, env in ((["--config", str(f)], {}), ([], {"FLOWSCOPE_KAFKA_COMPRESSION_THREAD": word}),
                      (["--kafka-compression-thread", word], {})):
        r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--enrich", "false", *args],
                           capture_output=True, text=True, env={**base, **env}, cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        got.append(re.search(r"^  compression_thread: '?(\w+)'?$", r.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert got == [want] * 3
    with pytest.raises(C.ConfigError, match=r"'maybe' is not one of auto, on, off \(also true/false, yes/no, 1/0\)"):
        load([], {"FLOWSCOPE_KAFKA_COMPRESSION_THREAD": "maybe"})


def test_sizes_take_kubernetes_binary_units(tmp_path: Path) -> None:
    """`512Mi` is how the same manifests write memory (resources.limits.memory); a Helm value
    queue_bytes: 128Mi was refused with a message that did not say which units exist."""
    f = tmp_path / "c.yaml"
    f.write_text("rcvbuf: 16Mi\n")
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--enrich", "false", "--config", str(f),
                        "--max-exporter-state", "1Gi", "--kafka-batch-bytes", "512Ki"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "FLOWSCOPE_QUEUE_BYTES": "128Mi"},
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    import yaml

    eff = yaml.safe_load(r.stdout)
    assert (eff["rcvbuf"], eff["queue_bytes"], eff["max_exporter_state"], eff["kafka"]["batch_bytes"]) == (
        16 * 2**20, 128 * 2**20, 2**30, 512 * 2**10)
    with pytest.raises(C.ConfigError, match=r"expected a size such as .*\(units: .*Mi, GiB, Gi, powers of 1024\)"):
        load([], {"FLOWSCOPE_QUEUE_BYTES": "1T"})


def test_sasl_without_a_password_is_a_configuration_error(tmp_path: Path) -> None:
    """The manifests' Secret flowscope-kafka is optional: not created, or holding the password
    under another key (a Strimzi KafkaUser's `password`), FLOWSCOPE_KAFKA_SASL_PASSWORD was unset
    and the collector started, unready for ever, logging the broker's refusal as "wrong password,
    or no credentials for that user". With a mechanism set, an empty password stops it at start."""
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  brokers: [k:9092]\n  sasl_mechanism: SCRAM-SHA-512\n  sasl_user: flowscope\n")
    base = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for command in ("config", "run"):
        r = subprocess.run([sys.executable, "-m", "collector.cli", command, "--config", str(f), "--enrich", "false"],
                           capture_output=True, text=True, env=base, cwd=ROOT, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr == (f"flowscope: configuration error: kafka.sasl_password (default): empty, but "
                            f"kafka.sasl_mechanism (from {f}) is SCRAM-SHA-512: give the password with "
                            "FLOWSCOPE_KAFKA_SASL_PASSWORD\n")
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--config", str(f), "--enrich", "false"],
                       capture_output=True, text=True, env={**base, "FLOWSCOPE_KAFKA_SASL_PASSWORD": "pw"}, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("text,seconds", [("1m30s", 90.0), ("1h0m0s", 3600.0), ("2m0.5s", 120.5), ("1s500ms", 1.5),
                                          ("100us", 0.0001), ("250000\u00b5s", 0.25), ("5000000ns", 0.005)])
def test_seconds_take_gos_compound_durations(tmp_path: Path, text: str, seconds: float) -> None:
    """Durations are documented as "as Go and Kubernetes write them", but Go's own form
    (time.Duration's String(): 1m30s, 1h0m0s; what a Go operator or chart renders) was refused,
    as were its us/ns units. Each source takes them."""
    f = tmp_path / "c.yaml"
    f.write_text(f"shutdown_timeout: {text}\n")
    assert load(["--config", str(f)]).shutdown_timeout == seconds
    assert load([], {"FLOWSCOPE_SHUTDOWN_TIMEOUT": text}).shutdown_timeout == seconds
    assert load(["--shutdown-timeout", text]).shutdown_timeout == seconds


def test_seconds_take_a_duration_with_its_unit(tmp_path: Path) -> None:
    """FLOWSCOPE_SHUTDOWN_TIMEOUT=30s (how Go flags and Kubernetes manifests write durations)
    stopped the collector at start with "expected a number", which did not say seconds."""
    f = tmp_path / "c.yaml"
    f.write_text("stats_interval: 2s\nenrich:\n  tombstone_seconds: 5m\n")
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--enrich", "false", "--config", str(f),
                        "--state-interval", "500ms"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "FLOWSCOPE_SHUTDOWN_TIMEOUT": "30s"},
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    import yaml

    eff = yaml.safe_load(r.stdout)
    assert (eff["shutdown_timeout"], eff["state_interval"], eff["stats_interval"], eff["enrich"]["tombstone_seconds"]) == (
        30.0, 0.5, 2.0, 300.0)
    with pytest.raises(C.ConfigError, match=r"^shutdown_timeout \(from FLOWSCOPE_SHUTDOWN_TIMEOUT\): expected seconds "
                       r"such as 10, 0.5, 10s, 500ms, 2m or 1m30s$"):
        load([], {"FLOWSCOPE_SHUTDOWN_TIMEOUT": "30 seconds"})
    with pytest.raises(C.ConfigError, match=r"^shutdown_timeout \(from --shutdown-timeout\): 7200.0 is out of range"):
        load(["--shutdown-timeout", "2h"])


def test_a_failed_limit_request_after_a_read_limit_says_the_limit_stays(caplog: pytest.LogCaptureFixture) -> None:
    """A topic whose max.message.bytes was read once and whose later request failed keeps the
    batch size that limit made (nothing resets it): the warning said "batches of up to
    --kafka-batch-bytes N go" as if it had never been read."""
    from collector.config import Config
    from collector.sinks import KafkaSink

    sink = KafkaSink(Config())
    topic = sink.k.topic
    with caplog.at_level(logging.INFO, logger="flowscope.sink"):
        sink._fall_back("never-read", "connection refused", True)
        sink._set_limit(topic, 200_000)
        size = sink.batch_limit[FLOWS]
        sink._fall_back(topic, "connection refused", True)
    said = [r.getMessage() for r in caplog.records if "could not read topic" in r.getMessage()]
    assert f"batches of up to --kafka-batch-bytes {sink.k.batch_bytes} go" in said[0], said
    assert "the limit read before (200000)" in said[1] and "--kafka-batch-bytes" not in said[1], said
    assert sink.batch_limit[FLOWS] == size == 200_000


@pytest.mark.parametrize(("value", "error"), [
    ("500", "500 is out of range: must be 0 (never close idle connections) or between 1000 and 86400000"),
    ("-1", "-1 is out of range: must be between 0 and 86400000"),
])
def test_the_idle_connection_limit_is_refused_below_a_second(value: str, error: str) -> None:
    """--kafka-connections-max-idle-ms: 0 (never) or at least 1000; anything else is refused
    with the bounds, not taken (0 < n < 1000 would close and reopen connections between batches)."""
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", "--kafka-brokers", "k:9092",
                        "--kafka-connections-max-idle-ms", value], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert (r.returncode, r.stderr) == (2, "flowscope: configuration error: kafka.connections_max_idle_ms (from "
                                           f"--kafka-connections-max-idle-ms): {error}\n")


@pytest.mark.parametrize(("ms", "aiokafka"), [(0, None), (2000, 2000)])
def test_the_idle_connection_limit_reaches_aiokafka(ms: int, aiokafka: int | None) -> None:
    """The option is aiokafka's connections_max_idle_ms too; its 0 (never) is aiokafka's None (at 0
    aiokafka's idle check would wake without pause)."""
    from collector.config import KafkaConfig
    from collector.sinks import producer_kwargs

    k = KafkaConfig()
    k.brokers, k.connections_max_idle_ms = ["k:9092"], ms
    assert producer_kwargs(k)["connections_max_idle_ms"] == aiokafka


def test_a_failure_being_explained_is_said_while_the_brokers_check_runs() -> None:
    """KafkaSink._explain sets the failure's reason (problem, what /readyz says after "not
    connected") before it waits for the advertised brokers' check, not after: the caller has
    already set connected False, and for the check's seconds /readyz said "kafka sink not
    connected" with the reason before (none, after a partition's error answer)."""
    import asyncio

    from collector.config import Config
    from collector.sinks import KafkaSink

    async def main() -> None:
        sink = KafkaSink(Config())
        release = asyncio.Event()
        seen: list[str] = []

        async def slow_check(failing: bool = False) -> None:
            seen.append(sink.problem)
            await release.wait()

        sink._advertised_problem = slow_check  # type: ignore[method-assign]
        sink.connected = False
        task = asyncio.create_task(sink._explain("metadata refresh failed: ", "no broker of b:9092 answered"))
        while not seen:
            await asyncio.sleep(0)
        assert seen[0] == "metadata refresh failed: no broker of b:9092 answered"
        release.set()
        assert await task == "metadata refresh failed: no broker of b:9092 answered"

    asyncio.run(main())
