"""pmacct's processes as /proc shows them: its core and the plugins it forks, and when those
plugins wait for data. Used by both starters of pmacct daemons: tests/support/exporters.run_pmacctd
(pmacctd nfprobe/sfprobe reading a pcap) and benchmarks/peers.start_pmacct (nfacctd/sfacctd with
the Kafka plugin); here, so that benchmarks import tests/support and never the other way round.
"""

from __future__ import annotations

import os
import platform
import re
import time


def all_stats() -> list[tuple[int, list[str]]]:
    """(PID, the fields of /proc/PID/stat after the command) of every process."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                out.append((int(d), f.read().rsplit(")", 1)[1].split()))
        except (OSError, IndexError):
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (pmacct forks a process per plugin)."""
    children: dict[int, list[int]] = {}
    for p, fields in all_stats():
        children.setdefault(int(fields[1]), []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def plugin_count(config: str) -> int:
    """How many plugins a pmacct configuration starts: the names on its `plugins:` line
    ("plugins: nfprobe[a], sfprobe[b]"); without that line pmacct starts one, its default."""
    m = re.search(r"^\s*plugins\s*:\s*(.+)$", config, re.MULTILINE)
    return len([n for n in m.group(1).split(",") if n.strip()]) if m else 1


# The system calls poll() is made with, by machine (glibc's poll on aarch64 is ppoll); both take
# the number of descriptors as their second argument.
_POLL_SYSCALLS = {"x86_64": {7, 271}, "aarch64": {73}}.get(platform.machine(), {7, 271})


def _polling_one_fd(pid: int) -> bool:
    """Whether process `pid`'s main thread is blocked in poll() on one descriptor
    (/proc/PID/syscall: number, then arguments) and asleep there: a wake-up (data on that
    descriptor) makes it runnable at once, before it runs (/proc/PID/stat: S)."""
    with open(f"/proc/{pid}/syscall") as f:
        fields = f.read().split()
    with open(f"/proc/{pid}/stat") as f:
        asleep = f.read().rsplit(")", 1)[1].split()[0] == "S"
    return (asleep and len(fields) > 2 and fields[0].isdigit() and int(fields[0]) in _POLL_SYSCALLS
            and int(fields[2], 16) == 1)


def wait_plugins_polling(pid: int, *, plugins: int, timeout: float = 30.0) -> None:
    """Wait until all `plugins` plugins of pmacct's core `pid` (its children) wait in their main
    loop's poll() on their pipe from the core. A plugin sets the flag that asks the core to write
    to that pipe (status->wakeup) just before each such poll; the core puts what it receives in
    the ring buffer it shares with the plugin and writes to the pipe only while that flag is set,
    and the plugin reads the ring only when the pipe wakes it. A burst that arrived before the
    plugin's first poll therefore stayed in the ring, unread until more traffic came: every purge
    wrote 0 entries and the trial read back 0 flows (8 of 31 pmacct_stop trials; the Kafka plugin
    took 0.6-0.9 s after the core bound its port here, clearing its 530 MB cache, against the 1 s
    this waited before; 3 of 3 lost with no wait). The same holds for pmacctd reading a pcap
    (tests/support/exporters.run_pmacctd).

    The core forks its plugins one after the other, each once it has set up that plugin's ring
    (plugin_pipe_size bytes, cleared): "every child polls" is true of the first plugin before the
    next exists, so the number the configuration starts (plugin_count) is waited for. Only the
    core's children count: a plugin's own children (the Kafka plugin's purge writers) are not
    plugins. Raises ChildProcessError once the core has exited (nothing will start then),
    TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                exited = f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            exited = True
        if exited:
            raise ChildProcessError(f"pmacct {pid} exited before its plugins waited for data")
        children = [p for p, fields in all_stats() if int(fields[1]) == pid]
        try:
            if len(children) >= plugins and all(_polling_one_fd(p) for p in children):
                return
        except (OSError, ValueError):
            pass   # a plugin gone or not yet readable: look again
        if time.monotonic() > deadline:
            raise TimeoutError(f"pmacct {pid}: {len(children)} of its {plugins} plugins {children} did not reach "
                               f"their main loop within {timeout}s")
        time.sleep(0.02)
