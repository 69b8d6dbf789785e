"""Starting the tests' and the benchmarks' child processes so that they die with the process
that started them (util.dies_with_us).

A pytest or a benchmark killed outright (SIGKILL: a CI job's timeout, the OOM killer, kill -9)
stops none of what it started; a `flowscope run`, a broker, a peer collector or an exporter left
running holds its ports for every later run on the machine, the more so in a session of its own
(out of reach of a kill of the starter's process group). Every test and benchmark starts its
children with popen_child or run_child (tests/test_test_children.py holds every Popen in tests/
and benchmarks/ to them, and every subprocess.run & co. in benchmarks/ and in a session of its
own in tests/), and a shell it starts runs the commands it puts in the background through
DIES_WITH_SHELL.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector.util import dies_with_us

# The prefix of a command a test's shell starts in the background (`{DIES_WITH_SHELL} cmd &`):
# the parent-death signal is not inherited across fork, so the shell's own (popen_child) does not
# reach what it forks; setpriv (util-linux) asks for SIGKILL when the shell dies and execs `cmd`
# (same PID, the command's own command line). A shell killed in the instant between its fork and
# setpriv's ask is missed (setpriv does not look whether the shell is still there).
DIES_WITH_SHELL = "setpriv --pdeathsig KILL"


def _dying(preexec_fn: Callable[[], None] | None) -> Callable[[], None] | None:
    """The preexec_fn that asks for SIGKILL when this process dies, then runs `preexec_fn`."""
    steps = [f for f in (dies_with_us(), preexec_fn) if f is not None]

    def setup() -> None:
        for step in steps:
            step()

    return setup if steps else None


def popen_child(cmd: Any, *, preexec_fn: Callable[[], None] | None = None, **kw: Any) -> subprocess.Popen:
    """subprocess.Popen(cmd, **kw) whose child is sent SIGKILL when this process dies, however it
    dies; `preexec_fn`, if given, runs after that is asked (in the child, before exec)."""
    return subprocess.Popen(cmd, preexec_fn=_dying(preexec_fn), **kw)


def run_child(cmd: Any, *, preexec_fn: Callable[[], None] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, **kw) the same way (a child that runs for long, or in a session of its
    own, does not outlive this process either)."""
    return subprocess.run(cmd, preexec_fn=_dying(preexec_fn), **kw)


def start_time(pid: int) -> str | None:
    """The start time of a process that has not exited (field 22 of /proc/PID/stat, so that a PID
    used again is not taken for it); None for one that is gone or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]
