"""A hosts file of a test's own for one child process: names that resolve as the test needs
(one name to several loopback addresses, as a headless Kubernetes Service resolves to its
pods'), without touching the machine's /etc/hosts. The child gets a mount namespace of its own
(private, so that nothing mounted there reaches the machine's) with the file bind-mounted over
/etc/hosts. Root only (CAP_SYS_ADMIN)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_CLONE_NEWNS = 0x00020000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000


def hosts_preexec(path: Path) -> Callable[[], None]:
    """A preexec_fn (popen_child, Collector's `preexec`) that gives the child `path` as its
    /etc/hosts: a mount namespace of its own, every mount in it made private first (else, under
    the shared propagation systemd sets, the bind mount would reach the machine's /etc/hosts),
    then the bind mount. Raises (the child is not started) if any step fails."""
    src = os.fsencode(path)

    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        if libc.mount(src, b"/etc/hosts", None, _MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --bind over /etc/hosts")

    return setup


def private_hosts_skip(path: Path, name: str, want: set[str]) -> str | None:
    """Why a child given `path` as /etc/hosts (hosts_preexec) cannot be shown to resolve `name`
    to the addresses `want` here (None: it can): not root, no mount namespace, or a resolver
    that does not give every address of a name from the hosts file."""
    if os.geteuid() != 0:
        return "needs root (a mount namespace for a private /etc/hosts)"
    code = ("import socket; print(' '.join(sorted({i[4][0] for i in "
            f"socket.getaddrinfo({name!r}, 9092, type=socket.SOCK_STREAM)}})))")
    try:
        got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                             preexec_fn=hosts_preexec(path))
    except subprocess.SubprocessError as exc:
        return f"a private /etc/hosts cannot be set up here: {exc}"
    if got.returncode != 0 or set(got.stdout.split()) != want:
        return f"{name} resolves to {got.stdout.strip() or got.stderr.strip()!r} with that hosts file, not {want}"
    return None
