# flowscope: every target sets up what it needs.
#   make test    virtualenv + package (compiled) + Debian test tools (as root) + pytest
#   make run     virtualenv + package, then `flowscope run` printing JSON flows to stdout
#   make kafka   start the bundled Tansu Kafka-protocol broker on 127.0.0.1:9092
#   make bench   benchmark harness (see benchmarks/README.md)
#   make fuzz    atheris fuzzing of the decoders and encoders for FUZZ_SECONDS (not in CI);
#                FUZZ_ARGS: more libFuzzer options (-timeout=25, -artifact_prefix=DIR/)
#   make debug   rebuild the extensions with FLOWSCOPE_DEBUG=1 (Cython bounds checks, -O0 -g);
#                the next make build (run, test, ...) rebuilds them optimised
#   make lint    ruff and mypy
#   make demo    the end-to-end demo: Open vSwitch -> flowscope -> Kafka (deploy/demo)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEB_PACKAGES := tshark softflowd fprobe pmacct tcpdump iptables openvswitch-switch libfaketime nfdump nfdump-sflow tcpreplay iproute2 ethtool kubectl gcc liblz4-1 libzstd1 buildah podman runc debootstrap
PYTEST_ARGS ?=
FUZZ_SECONDS ?= 300
FUZZ_ARGS ?=

.PHONY: test run kafka bench fuzz debug deps venv build clean lint demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel Cython==3.0.11

venv: $(PY)

# Build and install the package with its test extras, then build in place so that the
# tests import the compiled modules from this tree.
# The install (an isolated build of the extensions, about a minute) runs again only when the
# packaging files change; the in-place build recompiles only what changed.
build: $(VENV)/.installed
	@echo "$(PY) setup.py -q build_ext --inplace" >&2
	@$(PY) setup.py -q build_ext --inplace >&2

$(VENV)/.installed: $(PY) setup.py pyproject.toml
	$(PIP) install -q -e '.[test]'
	touch $@

# Debian packages the tests need: installed only when running as root and missing.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "not root: tests needing$$missing will be skipped (run 'sudo make deps')"; \
	  fi; \
	fi

test: deps build
	$(PY) -m pytest $(PYTEST_ARGS)

lint: build
	$(VENV)/bin/ruff check collector enrich tests benchmarks
	$(VENV)/bin/mypy

debug: $(PY)
	FLOWSCOPE_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force

# Everything before the collector (virtualenv, install, build: make's echo of each step and
# their output) goes to stderr: `make run`'s stdout is the JSON flows, one per line, from the
# first run in a clean clone on.
run:
	@$(MAKE) --no-print-directory build >&2
	@$(VENV)/bin/flowscope run $(RUN_ARGS)

kafka: build
	@$(PY) -m collector.broker --port 9092

bench: deps build
	$(PIP) install -q -e '.[test,bench]'
	$(PY) -m benchmarks.harness $(BENCH_ARGS)

# Instrumented build (clang, libFuzzer coverage + ASan), fuzz, then the normal build again.
fuzz: build
	$(PIP) install -q -e '.[fuzz]'
	command -v clang >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang)
	CC=clang LDSHARED="clang -shared" FLOWSCOPE_FUZZ=1 $(PY) setup.py -q build_ext --inplace --force
	LD_PRELOAD="$$($(PY) -c 'import atheris, os; print(os.path.join(atheris.path(), "asan_with_fuzzer.so"))')" \
	  ASAN_OPTIONS=detect_leaks=0 $(PY) tests/fuzz_decoders.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ_ARGS); \
	  rc=$$?; $(PY) setup.py -q build_ext --inplace --force; exit $$rc

demo: deps build
	$(PY) -m deploy.demo.demo

clean:
	rm -rf build *.egg-info decoders/*.c decoders/*.so enrich/*.c enrich/*.so
