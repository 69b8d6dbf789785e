"""The build's switches (setup.py): a build with other switches than the C files were generated
for generates them again, so that `make debug` is a debug build and `make build` after it an
optimised one again."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

TREE = ("setup.py", "pyproject.toml", "README.md", "decoders", "enrich", "collector", "benchmarks")


def _made_for(c_file: Path) -> dict:
    """The macros and compile flags Cython's metadata header says a C file was generated for."""
    m = re.search(r"/\* BEGIN: Cython Metadata\n(.*?)\nEND: Cython Metadata \*/", c_file.read_text()[:65536], re.S)
    assert m, c_file
    return json.loads(m.group(1))["distutils"]


def _cythonize(tree: Path, debug: bool) -> None:
    """setup.py's cythonize step alone (`setup.py --name` evaluates it without compiling)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
    if debug:
        env["FLOWSCOPE_DEBUG"] = "1"
    r = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tree, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr


def test_debug_switch_regenerates_the_c_files_and_its_removal_regenerates_them_back(tmp_path: Path) -> None:
    """`make debug` (FLOWSCOPE_DEBUG=1 setup.py build_ext --inplace --force) kept the C files
    the last build had generated: cythonize regenerates one only when a .pyx/.pxi is newer, so
    Cython's bounds, wraparound and initialized checks, which the Makefile promises, never
    reached the modules (only -O0 -g3 did); and the `make build` after it found every module up
    to date and kept the -O0 ones. Each switch change now regenerates the C files: with the
    debug switch they have Cython's bounds checks (enrich/_fast.c raises IndexError where the
    optimised one has none) and its flags; without it, the optimised ones again."""
    tree = tmp_path / "tree"
    for name in TREE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("*.c", "*.so", "*.html", "__pycache__"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(src, tree / name)
    fast = tree / "enrich" / "_fast.c"
    _cythonize(tree, debug=False)
    optimised = fast.read_text()
    assert "-O2" in _made_for(fast)["extra_compile_args"]
    assert "IndexError" not in optimised
    _cythonize(tree, debug=True)
    made = _made_for(fast)
    assert "-O0" in made["extra_compile_args"] and ["FLOWSCOPE_DEBUG", "1"] in made["define_macros"]
    assert "IndexError" in fast.read_text()          # boundscheck: Cython checks the indexes
    assert "-O0" in _made_for(tree / "decoders" / "_core.c")["extra_compile_args"]
    _cythonize(tree, debug=False)
    assert fast.read_text() == optimised
