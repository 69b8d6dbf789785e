"""`flowscope health` (the image's HEALTHCHECK) against real `flowscope run` processes: it finds
the address the collector serves from that process's command line and environment, not its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT, free_tcp_port, free_udp_port, wait_for

from collector.health import probe_url, run_args
from collector.util import DIES_WITH_SHELL, popen_child


def health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector.cli", "health", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})})


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
    sleeper = popen_child(["sleep", "30"])
    try:
        r = health("--pid", str(sleeper.pid), "--addr", f"127.0.0.1:{port}")
        assert r.returncode == 1
    finally:
        sleeper.kill()
        sleeper.wait()


def test_health_of_a_pid_that_is_no_collector_is_unhealthy_and_asks_nothing(collector: Any) -> None:
    """`--pid` of a process that is not `flowscope run` fell back to health's own environment and
    the default address, where another collector (here one that health's environment points at)
    answered 200: healthy, of a process that is no collector. It is unhealthy now, naming it."""
    other = collector([])
    env = {"FLOWSCOPE_METRICS_ADDR": f"127.0.0.1:{other.http}"}
    sleeper = popen_child(["sleep", "30"])
    try:
        r = health("--pid", str(sleeper.pid), env=env)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert r.returncode == 1, r
    assert r.stdout.startswith(f"unhealthy: process {sleeper.pid} is not a `flowscope run` (sleep 30), and none runs "
                               "behind it: give the collector's PID with --pid, or its address with --addr"), r
    assert "answered" not in r.stdout, r
    # a kernel thread (kthreadd is PID 2 where the PID namespace is the host's): no command line
    try:
        with open("/proc/2/comm") as fh:
            kthread = fh.read().strip() == "kthreadd"
    except OSError:
        kthread = False
    if kthread:
        r = health("--pid", "2", env=env)
        assert r.returncode == 1 and "process 2 is not a `flowscope run` (no command line" in r.stdout, r


def _wrapper(script: str, tmp_path: Any) -> tuple[subprocess.Popen, list[int]]:
    """`sh -c SCRIPT` in a session of its own (so the processes it starts go with it), as an
    init or a shell runs in front of a collector; SCRIPT says the PIDs of the processes it starts
    (`echo $!`), read from its output, and starts each through DIES_WITH_SHELL (so they die
    with the shell, as it dies with this process)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    sh = popen_child(["sh", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                     text=True, start_new_session=True)
    assert sh.stdout is not None
    pids = [int(sh.stdout.readline()) for _ in range(script.count("echo $!"))]
    return sh, pids


def _stop_wrapper(sh: subprocess.Popen) -> None:
    os.killpg(sh.pid, signal.SIGKILL)
    sh.wait()


def _children(pid: int) -> list[int]:
    """The processes whose parent (the 4th field of /proc/PID/stat) is `pid`."""
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[1] == str(pid):
                    found.append(int(d))
        except OSError:
            pass
    return found


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode().strip()


def _run_cmd(tmp_path: Any, name: str, *args: str) -> str:
    return (f"{DIES_WITH_SHELL} {sys.executable} -m collector.cli run --listen netflow://127.0.0.1:{free_udp_port()} "
            f"--output-file {tmp_path / name} {' '.join(args)}")


def test_health_pid_of_an_init_or_shell_asks_the_one_collector_behind_it(collector: Any, tmp_path: Any) -> None:
    """`--pid 1` where PID 1 is tini, `docker run --init` or `sh -c "flowscope run ..."` was
    unhealthy (it is not a `flowscope run`): the collector behind it is asked now, and the line
    says which. Its forked workers (`--workers 2`: the same command line) are not collectors
    of their own."""
    other = collector([])     # where health's own variables point: not to be asked
    metrics, healthp = free_tcp_port(), free_tcp_port()
    run = _run_cmd(tmp_path, "out.jsonl", "--workers", "2", "--metrics-addr", f"127.0.0.1:{metrics}",
                   "--health-addr", f"127.0.0.1:{healthp}")
    sh, (pid,) = _wrapper(f"{run} & echo $!; wait", tmp_path)
    try:
        wait_for(lambda: health("--addr", f"127.0.0.1:{healthp}").returncode == 0, 30, what="the health port")
        assert len(_children(pid)) >= 2, "the collector's workers run"
        r = health("--pid", str(sh.pid), env={"FLOWSCOPE_METRICS_ADDR": f"127.0.0.1:{other.http}"})
        shown = _cmdline(sh.pid)
        assert (r.returncode, r.stdout.strip()) == (
            0, f"healthy: http://127.0.0.1:{healthp}/healthz answered 200 ok (--pid {sh.pid} is not a `flowscope run` "
               f"({shown[:120]}): process {pid}, the one behind it, was asked)"), r
        r = health("--pid", str(sh.pid), "--ready")
        assert r.returncode == 0 and r.stdout.startswith(f"healthy: http://127.0.0.1:{healthp}/readyz answered 200"), r
    finally:
        _stop_wrapper(sh)


def test_health_pid_of_an_init_with_no_collector_or_several_behind_it_is_unhealthy(collector: Any,
                                                                                   tmp_path: Any) -> None:
    other = collector([])
    env = {"FLOWSCOPE_METRICS_ADDR": f"127.0.0.1:{other.http}"}
    sh, (sleeper,) = _wrapper(f"{DIES_WITH_SHELL} sleep 60 & echo $!; wait", tmp_path)
    try:
        wait_for(lambda: _cmdline(sleeper) == "sleep 60", 10, what="the sleep behind the shell")
        r = health("--pid", str(sh.pid), env=env)
        assert (r.returncode, r.stdout.strip()) == (
            1, f"unhealthy: process {sh.pid} is not a `flowscope run` ({_cmdline(sh.pid)}), and none runs behind it: "
               "give the collector's PID with --pid, or its address with --addr"), r
    finally:
        _stop_wrapper(sh)
    # two, one of them behind a second shell: which one is meant is not guessed
    one, two = (_run_cmd(tmp_path, f"{n}.jsonl", "--metrics-addr", f"127.0.0.1:{free_tcp_port()}") for n in "ab")
    sh, (first, inner) = _wrapper(f"{one} & echo $!; {DIES_WITH_SHELL} sh -c '{two} & echo $!; wait' & wait",
                                   tmp_path)
    try:
        for p in (first, inner):
            wait_for(lambda p=p: "collector.cli run" in _cmdline(p), 10, what=f"the collector {p}")
        r = health("--pid", str(sh.pid), env=env)
        assert (r.returncode, r.stdout.strip()) == (
            1, f"unhealthy: process {sh.pid} is not a `flowscope run` ({_cmdline(sh.pid)[:120]}), and 2 run behind it "
               f"(process {min(first, inner)}, {max(first, inner)}): give the one to ask with --pid"), r
    finally:
        _stop_wrapper(sh)


def test_health_without_pid_asks_the_collector_of_its_own_network_namespace(collector: Any, tmp_path: Any) -> None:
    """Without --pid, health took PID 1 or else the lowest-numbered `flowscope run` it could see,
    whatever its network namespace: run beside a pod's collector on a host that shows every
    process (or, as here, in an `ip netns` namespace while another collector runs outside it),
    it read the other collector's address and asked it in its own namespace, where nothing (or
    something else) answers. It now takes the collector of its own namespace and names the
    ones it left aside."""
    import os

    from tests.support import netns as N

    if (why := N.root_skip_reason()) is not None:
        pytest.skip(why)
    outside = collector([])     # started first: a lower PID than the one inside
    with N.NetNS() as ns:
        port = free_tcp_port()
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
        inside = ns.popen([sys.executable, "-m", "collector.cli", "run", "--listen", "netflow://127.0.0.1:2055",
                           "--metrics-addr", f"127.0.0.1:{port}", "--output-file", str(tmp_path / "in.jsonl")],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert inside.pid > outside.proc.pid

        def health_inside(*args: str) -> subprocess.CompletedProcess:
            return ns.run([sys.executable, "-m", "collector.cli", "health", *args], check=False, cwd=ROOT,
                          env=env, text=True)

        wait_for(lambda: health_inside("--addr", f"127.0.0.1:{port}").returncode == 0, 20,
                 what="the collector inside the namespace serving /healthz")
        assert os.stat(f"/proc/{inside.pid}/ns/net").st_ino != os.stat(f"/proc/{outside.proc.pid}/ns/net").st_ino
        r = health_inside()
        assert r.returncode == 0, r
        assert r.stdout.startswith(f"healthy: http://127.0.0.1:{port}/healthz answered 200 ok (not asked: "
                                   "`flowscope run` process "), r
        # (named, unless more than five collectors with lower PIDs run elsewhere on this machine)
        assert f"{outside.proc.pid} (another network namespace)" in r.stdout or " more)" in r.stdout, r
        # --pid naming the collector outside: asked all the same, and said so
        r = health_inside("--pid", str(outside.proc.pid))
        assert r.returncode == 1, r
        assert r.stdout.strip().endswith(f"(process {outside.proc.pid} runs in another network namespace: its "
                                         "address was asked in this one)"), r
