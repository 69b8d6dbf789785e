"""Build the C load generator: ``python -m benchmarks.build`` -> ``benchmarks/bin/loadgen``.

The generator is a single C file with no dependencies beyond libc, so a direct gcc call is
simpler and more transparent than a setuptools extension. Rebuilds only when the source is
newer than the binary (or when forced).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from collector.util import run_child

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "loadgen.c"
BIN_DIR = HERE / "bin"
LOADGEN = BIN_DIR / "loadgen"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"]


def build(*, force: bool = False, cc: str | None = None) -> Path:
    """Compile loadgen.c if needed and return the binary's path."""
    if not force and LOADGEN.exists() and LOADGEN.stat().st_mtime >= SOURCE.stat().st_mtime:
        return LOADGEN
    compiler = cc or os.environ.get("CC") or "gcc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"C compiler {compiler!r} not found; install gcc to build the load generator")
    BIN_DIR.mkdir(exist_ok=True)
    tmp = LOADGEN.with_suffix(".tmp")
    run_child([compiler, *CFLAGS, "-o", str(tmp), str(SOURCE)], check=True)
    os.replace(tmp, LOADGEN)
    return LOADGEN


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--cc", default=None, help="C compiler (default: $CC or gcc)")
    args = ap.parse_args(argv)
    print(build(force=args.force, cc=args.cc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
