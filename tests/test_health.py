"""`flowscope health` (the image's HEALTHCHECK) against real `flowscope run` processes: it finds
the address the collector serves from that process's command line and environment, not its own."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT, free_tcp_port, wait_for

from collector.health import probe_url, run_args


def health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector.cli", "health", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("cmdline,want", [
    (["/usr/local/bin/python", "/usr/local/bin/flowscope", "run", "--metrics-addr", ""], ["--metrics-addr", ""]),
    (["flowscope", "run"], []),
    (["python3", "-m", "collector.cli", "run", "--config", "/c.yaml"], ["--config", "/c.yaml"]),
    (["flowscope", "decode", "run"], None),       # a file named run
    (["/bin/sh", "-c", "flowscope run"], None),
    ([], None),
])
def test_run_args(cmdline: list[str], want: list[str] | None) -> None:
    assert run_args(cmdline) == want


def test_probe_url_asks_a_wildcard_address_on_loopback() -> None:
    assert probe_url("0.0.0.0:9400", "/healthz") == "http://127.0.0.1:9400/healthz"
    assert probe_url("[::]:9400", "/readyz") == "http://[::1]:9400/readyz"
    assert probe_url("10.1.2.3:80", "/healthz") == "http://10.1.2.3:80/healthz"


def test_health_reads_the_collectors_flags(collector: Any) -> None:
    c = collector([])
    r = health("--pid", str(c.proc.pid))
    assert (r.returncode, r.stdout.strip()) == (0, f"healthy: http://127.0.0.1:{c.http}/healthz answered 200 ok"), r
    r = health("--pid", str(c.proc.pid), "--ready")
    assert r.returncode == 0 and r.stdout.startswith(f"healthy: http://127.0.0.1:{c.http}/readyz answered 200"), r
    pid = c.proc.pid
    c.stop()
    r = health("--pid", str(pid))
    assert (r.returncode, r.stdout.strip()) == (1, f"unhealthy: there is no process {pid}"), r


def test_health_reads_the_collectors_environment_not_its_own(collector: Any) -> None:
    # health_addr set by a variable only the collector has: this process's environment lacks it
    port = free_tcp_port()
    c = collector([], env={"FLOWSCOPE_HEALTH_ADDR": f"127.0.0.1:{port}"}, wait_ready=False)
    wait_for(lambda: health("--addr", f"127.0.0.1:{port}").returncode == 0, 20, what="the health port")
    r = health("--pid", str(c.proc.pid))
    assert r.returncode == 0 and r.stdout.startswith(f"healthy: http://127.0.0.1:{port}/healthz answered 200"), r


def test_health_says_what_did_not_answer(collector: Any) -> None:
    port = free_tcp_port()
    r = health("--addr", f"127.0.0.1:{port}")
    assert r.returncode == 1 and r.stdout.startswith(f"unhealthy: http://127.0.0.1:{port}/healthz (from --addr): "), r
    # a malformed --addr is a usage error (README: "2 for a usage error", as --timeout 0 is), not
    # an unhealthy collector: it exited 1, as if the collector had not answered
    r = health("--addr", "nonsense")
    assert r.returncode == 2 and "argument --addr: 'nonsense': expected HOST:PORT" in r.stderr, r
    assert r.stdout == "", r
    # a process that is not a collector: its own environment, then the default address
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        r = health("--pid", str(sleeper.pid), "--addr", f"127.0.0.1:{port}")
        assert r.returncode == 1
        r = health("--pid", str(sleeper.pid))
        assert r.returncode in (0, 1) and f"process {sleeper.pid} is not a `flowscope run`" in r.stdout, r
    finally:
        sleeper.kill()
        sleeper.wait()
