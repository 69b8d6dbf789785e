"""Starting the tests' child processes so that they die with the test process (util.dies_with_us).

A pytest killed outright (SIGKILL: a CI job's timeout, the OOM killer, kill -9) stops none of what
it started; a `flowscope run`, a broker or an exporter left running holds its ports for every later
run on the machine, the more so in a session of its own (out of reach of a kill of pytest's process
group). Every test starts its long-running children with popen_child (tests/test_test_children.py
holds every Popen in tests/ to it), and a shell it starts runs the commands it puts in the
background through DIES_WITH_SHELL.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

from collector.util import dies_with_us

# The prefix of a command a test's shell starts in the background (`{DIES_WITH_SHELL} cmd &`):
# the parent-death signal is not inherited across fork, so the shell's own (popen_child) does not
# reach what it forks; setpriv (util-linux) asks for SIGKILL when the shell dies and execs `cmd`
# (same PID, the command's own command line). A shell killed in the instant between its fork and
# setpriv's ask is missed (setpriv does not look whether the shell is still there).
DIES_WITH_SHELL = "setpriv --pdeathsig KILL"


def popen_child(cmd: Any, *, preexec_fn: Callable[[], None] | None = None, **kw: Any) -> subprocess.Popen:
    """subprocess.Popen(cmd, **kw) whose child is sent SIGKILL when this process dies, however it
    dies; `preexec_fn`, if given, runs after that is asked (in the child, before exec)."""
    steps = [f for f in (dies_with_us(), preexec_fn) if f is not None]

    def setup() -> None:
        for step in steps:
            step()

    return subprocess.Popen(cmd, preexec_fn=setup if steps else None, **kw)
