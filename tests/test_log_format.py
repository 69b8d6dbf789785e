"""--log-format json: structured logs (DESIGN.md "Structured logs, rate-limited for per-packet
errors"), one JSON object per stderr line, with the exporter and reason of per-packet errors as
fields a log pipeline can group by; the rate limit still holds."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import orjson
import pytest

from collector.util import JsonFormatter, RateLimitedLog
from tests.conftest import ROOT, wait_for


def _json_lines(text: str) -> list[dict]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out = []
    for ln in lines:
        try:
            out.append(orjson.loads(ln))
        except orjson.JSONDecodeError:
            raise AssertionError(f"not a JSON log line: {ln!r}") from None
    return out


def test_run_logs_json_with_exporter_and_reason(collector) -> None:
    c = collector(["--log-format", "json"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\x0a\x00", ("127.0.0.1", c.port))           # 3 bytes: truncated
        s.sendto(b"\x00\x08" + b"\x00" * 30, ("127.0.0.1", c.port))  # NetFlow v8: not decoded
        for _ in range(5):                                           # rate limited: no more lines
            s.sendto(b"\x00\x0a\x00", ("127.0.0.1", c.port))
    wait_for(lambda: c.value("flowscope_received_datagrams_total") >= 7, 15, what="7 datagrams counted")
    c.stop()
    recs = _json_lines(c.log())
    assert all({"time", "level", "logger", "msg"} <= r.keys() for r in recs), recs
    assert all(r["time"].endswith("Z") and r["time"][10] == "T" for r in recs)
    assert any(r["logger"] == "flowscope" and r["msg"].startswith("flowscope ") for r in recs)
    errs = [r for r in recs if r.get("exporter") == "127.0.0.1"]
    assert {r["reason"] for r in errs} == {"truncated", "wrong_protocol"}, errs
    assert [r["listener"] for r in errs if r["reason"] == "wrong_protocol"] == [f"netflow://127.0.0.1:{c.port}"]
    assert len([r for r in errs if r["reason"] == "truncated"]) == 1   # once per 10 s per exporter and reason
    assert all(r["level"] == "warning" for r in errs)


def test_workers_name_themselves(collector) -> None:
    c = collector(["--log-format", "json", "--workers", "2"])
    wait_for(lambda: c.value("flowscope_workers") == 2, 30, what="two workers")
    c.stop()
    recs = _json_lines(c.log())
    assert {r["worker"] for r in recs if "worker" in r} == {0, 1}, recs


def test_formatter_fields_exception_and_suppressed_count() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    lg = logging.getLogger("flowscope.test-json")
    lg.propagate = False
    h = Keep()
    h.setFormatter(JsonFormatter(3))
    lg.addHandler(h)
    try:
        try:
            raise ValueError("boom \"quoted\"\nline")
        except ValueError:
            lg.exception("failed for %s", "x")
        rl = RateLimitedLog(lg, interval=0.0)
        rl._last["k"] = 0.0
        rl._suppressed["k"] = 4
        rl.warning("k", "again", extra={"exporter": "192.0.2.1"})
    finally:
        lg.removeHandler(h)
    a, b = (orjson.loads(r) for r in records)
    assert a["msg"] == "failed for x" and a["worker"] == 3 and a["level"] == "error"
    assert "ValueError: boom" in a["exc"]
    assert b["suppressed"] == 4 and b["exporter"] == "192.0.2.1" and "(4 similar messages suppressed)" in b["msg"]


@pytest.mark.parametrize("how", [["--log-format", "xml"], []])
def test_unknown_log_format_is_a_configuration_error(how: list[str]) -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if not how:
        env["FLOWSCOPE_LOG_FORMAT"] = "xml"
    r = subprocess.run([sys.executable, "-m", "collector.cli", "config", *how], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "xml" in r.stderr and "json" in r.stderr, r.stderr


def test_python_warnings_are_log_records_too(collector, tmp_path) -> None:
    """A kubeconfig with insecure-skip-tls-verify (a lab cluster) makes urllib3 warn on every API
    request; the warnings module wrote each as two bare lines to stderr, so with --log-format
    json a log pipeline got lines that are not JSON ("...: InsecureRequestWarning: ..." and
    "  warnings.warn(")."""
    from tests.support.fake_kube import running_fake_kube

    with running_fake_kube(tls_dir=tmp_path / "apiserver") as kube:
        kc = tmp_path / "kc.json"
        kube.write_kubeconfig(kc)
        d = orjson.loads(kc.read_bytes())
        cluster = d["clusters"][0]["cluster"]
        del cluster["certificate-authority"]
        cluster["insecure-skip-tls-verify"] = True
        kc.write_bytes(orjson.dumps(d))
        c = collector(["--log-format", "json", "--kubeconfig", str(kc)])   # waits for /readyz: informers synced
        c.stop()
    recs = _json_lines(c.log())
    warned = [r for r in recs if "InsecureRequestWarning" in r["msg"]]
    assert warned and all(r["level"] == "warning" and r["logger"] == "py.warnings" for r in warned), recs


def test_a_start_check_refusal_is_a_json_line_too(tmp_path) -> None:
    """`flowscope run` with a valid configuration that a start-up check refuses (a kubeconfig that
    is not there: the shipped manifests' config has log_format json) wrote its one line, the
    reason the pod crash-loops, as bare text: the only line of the pod a log pipeline could not
    parse. The exit status is still 2."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    missing = tmp_path / "no-such-kubeconfig"
    r = subprocess.run([sys.executable, "-m", "collector.cli", "run", "--log-format", "json", "--kubeconfig",
                        str(missing), "--listen", "netflow://127.0.0.1:2055"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 2, r.stderr
    (rec,) = _json_lines(r.stderr)
    assert rec["level"] == "error" and rec["msg"] == (f"configuration error: enrich.kubeconfig (from --kubeconfig): "
                                                      f"{missing}: no such file"), rec
    r = subprocess.run([sys.executable, "-m", "collector.cli", "run", "--kubeconfig", str(missing)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert (r.returncode, r.stderr) == (2, f"flowscope: configuration error: enrich.kubeconfig (from --kubeconfig): "
                                           f"{missing}: no such file\n")


def test_a_configuration_error_is_a_json_line_when_the_sources_ask_for_json(tmp_path) -> None:
    """The shipped manifests' file has log_format json; a misspelt key or a bad value beside it
    (the usual ConfigMap slip) stopped the pod with the bare text line the test above made JSON
    for a start-up check's refusal: load() refused before the log format was known. The format
    is read alone from the flag, variable and file; one that is itself wrong leaves text."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    conf = tmp_path / "config.yaml"
    conf.write_text("log_format: json\nworker: 2\n")

    def run(*args: str, **more: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "collector.cli", "run", *args], capture_output=True, text=True,
                           env={**env, **more}, cwd=ROOT, timeout=60)
        assert r.returncode == 2 and r.stdout == "", r
        return r

    (rec,) = _json_lines(run("--config", str(conf)).stderr)
    assert rec["level"] == "error" and rec["msg"].startswith(
        f"configuration error: worker (from {conf}): unknown option (did you mean workers?);"), rec
    bad = "configuration error: workers (from --workers): 0 is out of range: must be between 1 and 256"
    (rec,) = _json_lines(run("--workers", "0", FLOWSCOPE_LOG_FORMAT="json").stderr)
    assert (rec["level"], rec["msg"]) == ("error", bad), rec
    # flag > variable > file, as for every option
    assert run("--workers", "0", "--log-format", "text", FLOWSCOPE_LOG_FORMAT="json").stderr == f"flowscope: {bad}\n"
    assert run("--workers", "0", "--log-format", "jsn").stderr == f"flowscope: {bad}\n"
    conf.write_text("log-format: json\nworkers: 0\n")
    (rec,) = _json_lines(run("--config", str(conf)).stderr)
    assert rec["msg"] == f"configuration error: workers (from {conf}): 0 is out of range: must be between 1 and 256"


def test_aiokafkas_unreachable_broker_lines_are_rate_limited_per_broker() -> None:
    """aiokafka's "Unable connect to node with id %s: %s" (aiokafka.client's own template) was
    rate-limited by its template alone: with one broker's line said, another broker's first one
    within 10 s was left out. Per broker now, each broker's first said; the repeats counted in the
    next one said, at WARNING (the sink's line about the broker is the ERROR)."""
    from collector.util import _RateLimitFilter

    f = _RateLimitFilter(10.0, debug=True)

    def rec(node: int) -> logging.LogRecord:
        return logging.makeLogRecord({"name": "aiokafka", "levelno": logging.ERROR, "levelname": "ERROR",
                                      "msg": "Unable connect to node with id %s: %s",
                                      "args": (node, ConnectionRefusedError(111, "Connection refused"))})
    assert [f.filter(rec(n)) for n in (1, 2, 1, 1, 2)] == [True, True, False, False, False]
    third = rec(3)
    assert f.filter(third) and third.levelno == logging.WARNING and third.levelname == "WARNING"
    f._gate._last = {k: v - 10.0 for k, v in f._gate._last.items()}   # (10 s on)
    again = rec(1)
    assert f.filter(again)
    assert again.getMessage() == "Unable connect to node with id 1: [Errno 111] Connection refused (2 similar messages suppressed)"
    assert again.suppressed == 2 and again.levelname == "WARNING"   # type: ignore[attr-defined]


@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
def test_aiokafkas_produce_error_for_a_leader_not_connected_to_is_left_to_the_sink(debug: bool) -> None:
    """--no-kafka-direct, a partition's leader that cannot be connected to: aiokafka's sender
    says "Got error produce response: NodeNotReadyError ..." (its own template, at WARNING) at
    each try, which came once per 10 s beside the sink's own ERROR for the same batches ("not
    delivered: NodeNotReadyError") and its warning naming the broker out of reach. Left out now
    but with --log-level debug (there rate-limited as aiokafka's other lines). The same line with
    another cause (a connection lost under a request, which aiokafka sends again and the sink
    may never say) is kept."""
    from aiokafka.errors import KafkaConnectionError, NodeNotReadyError

    from collector.util import _RateLimitFilter

    def rec(err: Exception) -> logging.LogRecord:
        return logging.makeLogRecord({"name": "aiokafka.producer.sender", "levelno": logging.WARNING,
                                      "levelname": "WARNING", "msg": "Got error produce response: %s", "args": (err,)})
    not_ready = NodeNotReadyError("Attempt to send a request to node which is not ready (node id 1).")
    f = _RateLimitFilter(10.0, debug=debug)
    said = [f.filter(rec(not_ready)) for _ in range(3)]
    assert said == ([True, False, False] if debug else [False, False, False])
    lost = rec(KafkaConnectionError("Connection at 127.0.0.1:9092 closed"))
    assert _RateLimitFilter(10.0, debug=debug).filter(lost)
    assert lost.levelname == "WARNING" and lost.getMessage().endswith("Connection at 127.0.0.1:9092 closed")
