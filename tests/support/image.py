"""Build and run deploy/Dockerfile without a Docker engine: buildah builds, podman runs.

These machines have the docker client but no engine, and Docker Hub (the Dockerfile's
`python:3.11-slim-bookworm`) is out of reach; Debian's archive and PyPI are not. So the base is
made here the way that image is made: Debian bookworm (debootstrap, minbase) with CPython 3.11,
pip and its headers, pip allowed to install into the system Python (the official image has no
EXTERNALLY-MANAGED marker either). deploy/Dockerfile itself is built unchanged, with its
PYTHON_IMAGE argument pointing at that base.

Two adaptations to this sandbox, neither in the Dockerfile: the base trusts the CA bundle of the
machine that builds it (its outbound HTTPS goes through a proxy that signs with its own CA, so
`pip` in the build stage needs it, as `pip` on the host does), and containers get explicit
`nofile`/`nproc` limits below the sandbox's own (it refuses the runtime's defaults).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from tests.support import owners

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("buildah", "podman", "runc", "debootstrap")
# Image storage of these tests only (not the machine's): kept between local runs, so the base
# (a minute or two of debootstrap) is made once per machine; CI starts without it.
STORE = Path(os.environ.get("FLOWSCOPE_IMAGE_STORE", "/var/tmp/flowscope-image-test"))
BASE = "localhost/flowscope-test-base:bookworm-py311"
SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-pip,python3-dev,python-is-python3,ca-certificates"
# The label naming a test container's maker (tests/support/owners.maker(): "PID START-TIME")
OWNER_LABEL = "io.flowscope.test.maker"


def _store_args() -> list[str]:
    return ["--root", str(STORE / "root"), "--runroot", str(STORE / "run"), "--storage-driver", "vfs"]


def podman(*args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *_store_args(), *args], capture_output=True, text=True,
                          check=check, timeout=timeout, **kw)


def limits() -> list[str]:
    """--ulimit flags under this process's own limits (the sandbox refuses the runtime's defaults)."""
    out = []
    for name, res in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft = resource.getrlimit(res)[0]
        v = 4096 if soft == resource.RLIM_INFINITY else max(256, min(4096, soft // 2))
        out += ["--ulimit", f"{name}={v}:{v}"]
    return out


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb.debian.org when none is configured)."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = f.read_text()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(r"^deb\s+(\S+/debian)\s+\S+", text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def have_base() -> bool:
    return podman("image", "exists", BASE, check=False).returncode == 0


def make_base(log: Path) -> None:
    """debootstrap bookworm + Python 3.11 into a directory and import it as BASE."""
    with tempfile.TemporaryDirectory(prefix="flowscope-base-", dir=STORE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        with open(log, "a") as out:
            subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(rootfs),
                            debian_mirror()], stdout=out, stderr=subprocess.STDOUT, check=True, timeout=1200)
        (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        tar = Path(tmp) / "rootfs.tar"
        with tarfile.open(tar, "w") as t:
            t.add(rootfs, arcname=".")
        podman("import", "--change", 'CMD ["python3"]', str(tar), BASE, timeout=600)


def build(tag: str, log: Path) -> None:
    """buildah bud deploy/Dockerfile (unchanged) from the repository root, FROM BASE. No layer
    cache: buildah 1.28 loses a cached stage's files that a later `RUN --mount=from=` binds."""
    cmd = ["buildah", *_store_args(), "bud", "--isolation", "chroot", "--network", "host", "--format", "docker",
           "--layers=false", *limits(), "--ignorefile", str(ROOT / "deploy/Dockerfile.dockerignore"),
           "--build-arg", f"PYTHON_IMAGE={BASE}", "-f", str(ROOT / "deploy/Dockerfile"), "-t", tag, str(ROOT)]
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=1800)


def run_args(*, maker: str | None = None) -> list[str]:
    """`podman run` flags every test container gets: runc (this kernel's cgroups are in the hybrid
    layout crun refuses), the host's network (loopback is where the broker and replay are), and
    its maker (this process, unless `maker`) as a label, so that the next session removes it if
    this one is killed before it does (sweep_stale_containers)."""
    return ["--runtime", "runc", "--network", "host", "--label", f"{OWNER_LABEL}={maker or owners.maker()}",
            *limits()]


def sweep_stale_containers() -> list[str]:
    """Remove the test containers (any state) whose maker no longer runs: a test process killed
    before its finalizers left them running, holding the host's ports. Those of test processes
    still running (another session on the machine) are left alone, and so is a container without
    the label. Returns the names removed; nothing to do where these tests never ran (no STORE)."""
    if not STORE.is_dir() or shutil.which("podman") is None:
        return []
    listed = podman("ps", "-a", "--filter", f"label={OWNER_LABEL}", "--format",
                    f'{{{{.Names}}}}\t{{{{index .Labels "{OWNER_LABEL}"}}}}', check=False, timeout=60)
    removed = []
    for line in listed.stdout.splitlines():
        name, _, made_by = line.partition("\t")
        if name and owners.gone(made_by):
            podman("rm", "-f", "-t", "0", name, check=False, timeout=90)
            removed.append(name)
    return removed
