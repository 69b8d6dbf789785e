"""`flowscope health`: ask a running collector whether it is healthy (the image's HEALTHCHECK).

A container's health check runs beside the collector, not inside it, so it does not know the
flags the collector was started with. This reads them where the kernel keeps them: the command
line and environment of the `flowscope run` process (PID 1, the container's entrypoint, or the
first such process found in this network namespace; with --pid, that process or else the one
`flowscope run` among its descendants, behind an init or a shell), resolves the configuration as `flowscope run`
did (flag > FLOWSCOPE_* variable > --config file > default) and asks that process's /healthz (or
/readyz) address. The address is asked from here, so a collector in another network namespace
(one a host or a shared PID namespace shows: a pod's, an `ip netns` one) is not taken: its
127.0.0.1 or wildcard address is not this namespace's; the ones left aside are named.

Exit status: 0 healthy (the endpoint answered 200); 1 not (any other answer, no answer, or the
address cannot be worked out from the collector: a --pid that is not a `flowscope run`, nor has
exactly one behind it, or whose command line and environment cannot be read included, which is
never taken for the default address); 2 usage error (a bad option: a malformed --addr too). A collector that serves no HTTP endpoint
(metrics_addr and health_addr both empty) cannot be asked: it is reported healthy while its
process runs, and the line printed says so.
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request
from collections.abc import Mapping

from . import config as config_mod
from .util import positive_seconds


def _addr(s: str) -> str:
    """--addr: HOST:PORT, checked as the option is read, so that a malformed one is a usage error
    (exit 2), not an unhealthy collector (exit 1)."""
    try:
        config_mod.split_hostport(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--addr", metavar="HOST:PORT", default=None, type=_addr,
                        help="ask this address instead of the collector's own health or metrics address")
    parser.add_argument("--pid", type=int, default=None, metavar="PID",
                        help="the `flowscope run` process whose command line, environment and --config "
                        "file give the address, or an init or shell with exactly one behind it [default: PID 1 (a container's entrypoint) if it is one, "
                        "else the first `flowscope run` process found in this network namespace: one in "
                        "another is not asked, and is named]")
    parser.add_argument("--ready", action="store_true", help="ask /readyz (ready to serve) instead of /healthz")
    parser.add_argument("--timeout", type=positive_seconds, default=3.0, metavar="S",
                        help="seconds to wait, > 0 [default: 3]")


def _read_nul_list(path: str) -> list[str]:
    """/proc/PID/cmdline or environ: each item ends with a NUL (an empty argument is one too)."""
    with open(path, "rb") as fh:
        data = fh.read()
    return [p.decode("utf-8", "surrogateescape") for p in data.split(b"\0")[:-1]] if data else []


def run_args(cmdline: list[str]) -> list[str] | None:
    """The arguments after `run` in a `flowscope run ...` command line (the program may be the
    `flowscope` script or `python -m collector.cli`), or None when it is not one."""
    for i, tok in enumerate(cmdline):
        if tok == "run" and i > 0 and (os.path.basename(cmdline[i - 1]) == "flowscope"
                                        or cmdline[i - 1] in ("collector.cli", "collector")):
            return cmdline[i + 1:]
    return None


def net_namespace(pid: int | str) -> tuple[int, int] | None:
    """The network namespace of process `pid` ("self": this one) as /proc/PID/ns/net's device
    and inode, or None when it cannot be read (another user's process: reading it needs the
    same access as its environment)."""
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def find_collector() -> tuple[int | None, list[str]]:
    """PID 1 when it is a `flowscope run` (a container's entrypoint), else the lowest-numbered
    `flowscope run` process this user can see (behind an init such as `docker run --init`),
    among those in this process's network namespace: the address the collector serves is asked
    from here. Also the `flowscope run` processes left aside for that, each as "PID (why)"."""
    ours = net_namespace("self")
    skipped: list[str] = []
    pids = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
    for pid in [1] + [p for p in pids if p not in (1, os.getpid())]:
        try:
            if run_args(_read_nul_list(f"/proc/{pid}/cmdline")) is None:
                continue
        except OSError:
            continue
        if ours is not None and (theirs := net_namespace(pid)) != ours:
            skipped.append(f"{pid} ({'another network namespace' if theirs else 'its network namespace cannot be read'})")
            continue
        return pid, skipped
    return None, skipped


def _skipped_note(skipped: list[str]) -> str:
    if not skipped:
        return ""
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return f" (not asked: `flowscope run` process {', '.join(skipped[:5])}{more})"


class NotACollector(Exception):
    """The process --pid names is not a `flowscope run` whose configuration can be read."""


def process_children() -> dict[int, list[int]]:
    """Each process's children (those this process can see), from the parent PID in /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as fh:
                stat = fh.read()
            ppid = int(stat[stat.rindex(b")") + 1:].split()[1])  # after "(comm)": state, ppid
        except (OSError, ValueError, IndexError):
            continue   # exited meanwhile
        children.setdefault(ppid, []).append(int(d))
    return children


def collectors_behind(pid: int) -> list[int]:
    """The `flowscope run` processes among `pid`'s descendants (behind an init or a shell), the
    outermost only: a collector's workers, forked with its command line, are not others."""
    children = process_children()
    found: list[int] = []
    todo, seen = sorted(children.get(pid, [])), {pid}
    while todo:
        p = todo.pop(0)
        if p in seen:      # (a PID reused while /proc was read)
            continue
        seen.add(p)
        try:
            is_run = run_args(_read_nul_list(f"/proc/{p}/cmdline")) is not None
        except OSError:
            is_run = False
        if is_run:
            found.append(p)
        else:
            todo.extend(sorted(children.get(p, [])))
    return sorted(found)


def _shown_cmdline(cmdline: list[str]) -> str:
    return " ".join(cmdline)[:120] or "no command line: a kernel thread, or a process that has exited"


def resolve_pid(pid: int) -> tuple[int, str]:
    """The `flowscope run` process `--pid pid` means, and a note for the line printed when it is not
    `pid` itself: `pid` when it is a `flowscope run` (or its command line cannot be read:
    collector_config says so), else the one `flowscope run` among its descendants (`pid` an init
    such as tini or `docker run --init`, or a shell, in front of the collector). Raises
    NotACollector when there is none behind it, or several (which one is meant is not guessed)."""
    try:
        cmdline = _read_nul_list(f"/proc/{pid}/cmdline")
    except OSError:
        return pid, ""
    if run_args(cmdline) is not None:
        return pid, ""
    shown = _shown_cmdline(cmdline)
    behind = collectors_behind(pid)
    if not behind:
        raise NotACollector(f"process {pid} is not a `flowscope run` ({shown}), and none runs behind it: give "
                            "the collector's PID with --pid, or its address with --addr")
    if len(behind) > 1:
        more = f" and {len(behind) - 10} more" if len(behind) > 10 else ""
        raise NotACollector(f"process {pid} is not a `flowscope run` ({shown}), and {len(behind)} run behind it "
                            f"(process {', '.join(map(str, behind[:10]))}{more}): give the one to ask with --pid")
    return behind[0], (f" (--pid {pid} is not a `flowscope run` ({shown}): process {behind[0]}, the one "
                       "behind it, was asked)")


def collector_config(pid: int | None) -> tuple[config_mod.Config, str]:
    """The configuration the `flowscope run` process `pid` resolved, and where it came from. With
    no pid (no collector found), this process's own variables and FLOWSCOPE_CONFIG file. Raises
    NotACollector when `pid` is not a `flowscope run` or its command line or environment cannot
    be read: its address would be a guess, this process's or the default one, where another
    collector (or anything else) may answer 200. Raises config_mod.ConfigError when the
    configuration is unusable."""
    if pid is None:
        return config_mod.load(None, os.environ), "this process's environment"
    try:
        cmdline = _read_nul_list(f"/proc/{pid}/cmdline")
        argv = run_args(cmdline)
        if argv is None:
            raise NotACollector(f"process {pid} is not a `flowscope run` ({_shown_cmdline(cmdline)}): give the "
                                "collector's PID with --pid, or its address with --addr")
        environ: Mapping[str, str] = dict(e.split("=", 1) for e in _read_nul_list(f"/proc/{pid}/environ")
                                          if "=" in e)
    except OSError as exc:
        raise NotACollector(f"cannot read the command line and environment of process {pid} "
                            f"({exc.strerror or exc}): run this as the collector's user, or give --addr") from None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)   # (read as `run` reads it)
    config_mod.add_arguments(parser)
    try:
        args, _ = parser.parse_known_args(argv)
    except SystemExit:
        raise config_mod.ConfigError(f"cannot read the command line of process {pid}") from None
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        args.config = environ.get(config_mod.ENV_PREFIX + "CONFIG")  # the process's, not ours
    if args.config and not os.path.isabs(args.config):
        # the collector opened it in its own working directory, which need not be ours
        try:
            args.config = os.path.join(os.readlink(f"/proc/{pid}/cwd"), args.config)
        except OSError:
            pass
    return config_mod.load(args, environ), f"process {pid} ({' '.join(cmdline)[:120]})"


def probe_url(addr: str, path: str) -> str:
    """http://HOST:PORT/path for a listening address: a wildcard host is asked on loopback."""
    host, port = config_mod.split_hostport(addr)
    host = config_mod.local_host(host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"


def run(args: argparse.Namespace) -> int:
    path = "/readyz" if args.ready else "/healthz"
    note = ""
    if args.addr:
        addr, source = args.addr, "--addr"
    else:
        skipped: list[str] = []
        if args.pid is not None:
            pid: int | None = args.pid
        else:
            pid, skipped = find_collector()
        note = _skipped_note(skipped)
        if pid is not None and not os.path.exists(f"/proc/{pid}"):
            print(f"unhealthy: there is no process {pid}")
            return 1
        try:
            if args.pid is not None:
                pid, note = resolve_pid(args.pid)
                if (ours := net_namespace("self")) is not None and net_namespace(pid) not in (ours, None):
                    note += f" (process {pid} runs in another network namespace: its address was asked in this one)"
            cfg, source = collector_config(pid)
        except NotACollector as exc:
            print(f"unhealthy: {exc}{note}")
            return 1
        except (config_mod.ConfigError, ValueError) as exc:
            print(f"unhealthy: the collector's configuration cannot be read: {exc}")
            return 1
        addr = cfg.health_addr or cfg.metrics_addr
        if not addr:
            if pid is None:
                print(f"unhealthy: no `flowscope run` process found{' in this network namespace' if skipped else ''}, "
                      f"and no {path} address in {source}{note}")
                return 1
            print(f"healthy: the collector serves no {path} (metrics_addr and health_addr are empty in "
                  f"{source}); process {pid} runs{note}")
            return 0
    try:
        url = probe_url(addr, path)
    except ValueError as exc:
        print(f"unhealthy: {exc}{note}")
        return 1
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            body = resp.read(200).decode("utf-8", "replace").strip()
            print(f"healthy: {url} answered {resp.status} {body}{note}")
            return 0
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode("utf-8", "replace").strip()
        print(f"unhealthy: {url} answered {exc.code} {body}{note}")
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url} (from {source}): {getattr(exc, 'reason', exc)}{note}")
    return 1
