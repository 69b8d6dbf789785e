"""Build flowscope: cythonize the decoders (and other compiled hot-path modules).

Switches (environment variables, read at build time):
  FLOWSCOPE_DEBUG=1   compile with -O0 -g3 and Cython's bounds, wraparound and initialized
                      checks on (and FLOWSCOPE_DEBUG true for compile-time `IF` blocks).
  FLOWSCOPE_ANNOTATE=1  write Cython's HTML annotation next to each .pyx.
  FLOWSCOPE_FUZZ=1    (with CC=clang) instrument for atheris/libFuzzer with AddressSanitizer.
A build whose switches differ from those the existing C files were generated for cythonizes
them again (stale_c_files), so `make debug` is a debug build and the `make build` after it
an optimised one again.
"""
import json
import os
import re
import sys

from setuptools import Extension, find_packages, setup

CYTHON_REQUIRED = "3.0.11"

try:
    import Cython
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - pyproject's build requirements install it
    sys.exit(f"flowscope needs Cython=={CYTHON_REQUIRED} to build (pip install Cython=={CYTHON_REQUIRED})")

if Cython.__version__ != CYTHON_REQUIRED:
    sys.exit(f"flowscope is tested with Cython=={CYTHON_REQUIRED}, found {Cython.__version__}")

DEBUG = os.environ.get("FLOWSCOPE_DEBUG", "0") not in ("", "0")
# FLOWSCOPE_FUZZ=1 (with CC=clang): libFuzzer coverage and AddressSanitizer for `make fuzz`.
FUZZ = os.environ.get("FLOWSCOPE_FUZZ", "0") not in ("", "0")
ANNOTATE = os.environ.get("FLOWSCOPE_ANNOTATE", "0") not in ("", "0")

extra_compile_args = ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
if DEBUG:
    extra_compile_args += ["-O0", "-g3"]
    define_macros = [("FLOWSCOPE_DEBUG", "1"), ("CYTHON_TRACE_NOGIL", "0")]
else:
    # large-function-insns (GCC's default 2700): encode_flow, with the enrichment lookup and the
    # unknown-elements writer it calls once per flow, is past it, so GCC inlined one or the other
    # depending on unrelated code elsewhere in the module (+47 instructions per enriched flow
    # after a change to the state export; benchmarks/RESULTS.md, twentieth session)
    # inline-unit-growth (GCC's default 40%): the module sits at that budget, so code added
    # anywhere moved which small writers (buf_uint, ...) GCC inlined into encode_flow; at 80 it
    # inlines them all: the pipeline loop 8-11% faster a flow at 25 records a datagram, 4% at
    # one (pipeline_bench, forty-fifth session, benchmarks/RESULTS.md), the module 5% larger
    extra_compile_args += ["-O2", "--param=large-function-insns=4000", "--param=inline-unit-growth=80"]
    define_macros = [("FLOWSCOPE_DEBUG", "0")]
extra_link_args: list[str] = []
if FUZZ:
    extra_compile_args += ["-g", "-fsanitize=address,fuzzer-no-link"]
    extra_link_args += ["-fsanitize=address,fuzzer-no-link"]

compiler_directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
    "warn.unused": False,
}


def ext(name: str, sources: list[str]) -> Extension:
    return Extension(
        name,
        sources,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
        define_macros=define_macros,
    )


extensions = [
    ext("decoders._core", ["decoders/_core.pyx"]),
    ext("enrich._fast", ["enrich/_fast.pyx"]),
]


def stale_c_files(exts: list[Extension]) -> list[str]:
    """The generated C files that were made for other switches than this build's. cythonize
    regenerates a C file only when a .pyx/.pxi is newer, and build_ext compiles it only when it
    is newer than the module: without this, FLOWSCOPE_DEBUG=1 with the C files already there
    kept them as they were (no bounds checks: only -O0 -g3 came of it), and the build after
    it, the switch gone, found everything up to date and kept the -O0 modules. Cython writes the
    macros and flags a C file was generated with in its metadata header; a C file whose header
    differs from this build's is removed, so that cythonize generates it again (and build_ext
    compiles it again)."""
    stale = []
    for e in exts:
        c_file = os.path.splitext(e.sources[0])[0] + ".c"
        try:
            with open(c_file, encoding="utf-8", errors="replace") as fh:
                head = fh.read(65536)
        except FileNotFoundError:
            continue
        m = re.search(r"/\* BEGIN: Cython Metadata\n(.*?)\nEND: Cython Metadata \*/", head, re.S)
        made = json.loads(m.group(1)).get("distutils", {}) if m else {}
        wanted = {"define_macros": [list(d) for d in e.define_macros], "extra_compile_args": e.extra_compile_args,
                  "extra_link_args": e.extra_link_args}
        if any(made.get(k, []) != v for k, v in wanted.items()):
            stale.append(c_file)
    return stale


for stale in stale_c_files(extensions):
    print(f"flowscope: {stale} was generated for other build switches: cythonizing it again", file=sys.stderr)
    os.remove(stale)

setup(
    packages=find_packages(include=["collector*", "decoders*", "enrich*", "benchmarks*"]),
    package_data={"decoders": ["*.pyi", "*.pxd", "*.pxi", "py.typed"], "collector": ["py.typed"], "enrich": ["*.pyi", "*.pxd", "py.typed"]},
    ext_modules=cythonize(
        extensions,
        compiler_directives=compiler_directives,
        compile_time_env={"FLOWSCOPE_DEBUG": DEBUG},
        annotate=ANNOTATE,
    ),
    zip_safe=False,
)
