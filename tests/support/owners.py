"""Who made what a test leaves behind when it is killed outright, so that the next session sweeps it.

A pytest killed before its finalizers ran (SIGKILL, a CI job's timeout, the OOM killer) stops
what it started (collector.util.popen_child) but deletes nothing: its network namespaces (bind
mounts under /run/netns), its run directories (OVS's databases, sockets and logs, the
exporter tests' captures, in /tmp/fs-*) and its containers (test_image's, detached: podman's
conmon keeps them running) stay. A container carries its maker as a label instead of a file
(tests/support/image.py). Each is claimed before it is made: an owner file
holding the maker's PID and start time (so that a PID used again is not taken for it), removed
with it. The next session (conftest's pytest_sessionstart) removes those whose maker is gone and
leaves alone those of a maker still running (another session on the machine). What was made
without an owner file is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from collector.util import start_time

# A run directory's owner file, inside it; run directories are tempdir/fs-*.
DIR_OWNER = ".flowscope-owner"
DIR_PREFIX = "fs-"


def maker() -> str:
    """This process as an owner file names it: "PID START-TIME" (a PID used again is another
    process, with another start time)."""
    return f"{os.getpid()} {start_time(os.getpid())}"


def claim(owner: Path) -> None:
    """Write owner file `owner`: this process made what it stands for."""
    owner.write_text(maker() + "\n")


def gone(made_by: str) -> bool:
    """Whether the process `made_by` names (maker()'s form) no longer runs; False for what is
    not in that form (a half-written owner file, a label set by hand)."""
    try:
        pid, started = made_by.split()
        return start_time(int(pid)) != started
    except ValueError:
        return False


def maker_gone(owner: Path) -> bool:
    """Whether the process that wrote owner file `owner` no longer runs (False for one that
    cannot be read: removed meanwhile, or still being written)."""
    try:
        return gone(owner.read_text())
    except OSError:
        return False


@contextlib.contextmanager
def run_dir(prefix: str) -> Iterator[Path]:
    """A new directory tempdir/PREFIX*, claimed (`prefix` starts with fs-); removed after, or
    kept for a look with FLOWSCOPE_KEEP_CAPTURES set (unclaimed then: no sweep takes it)."""
    if not prefix.startswith(DIR_PREFIX):
        raise ValueError(f"{prefix!r}: a run directory's name starts with {DIR_PREFIX} (sweep_stale_dirs looks there)")
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        claim(d / DIR_OWNER)
        yield d
    finally:
        if os.environ.get("FLOWSCOPE_KEEP_CAPTURES"):   # set it to keep captures and logs
            (d / DIR_OWNER).unlink(missing_ok=True)
        else:
            shutil.rmtree(d, ignore_errors=True)


def sweep_stale_dirs() -> list[Path]:
    """Remove the run directories (run_dir) whose maker is no longer running; returns them."""
    removed = []
    for owner in sorted(Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*/{DIR_OWNER}")):
        if maker_gone(owner):
            shutil.rmtree(owner.parent, ignore_errors=True)
            removed.append(owner.parent)
    return removed
