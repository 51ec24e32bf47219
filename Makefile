# One command per job, the same locally and in CI.
#   make demo   set up the Python environment and run the seed examples (and the Rust queue and pool demos)
#   make test   every test: Rust (unit, property, multi-process, loom), Python, oracle floor
#   make bench  benchmarks (JSON lines), channel and Python level
#   make fuzz   every fuzz target, long (make test runs each briefly)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: test-cluster bench-multinode bench-multinode-objects plugin wheel test-wheel setup demo test test-rust test-loom test-py test-pythons test-testbed oracle lint typecheck bench bench-py clean-shm soak fuzz

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# The development requirements, installed again when the list changes (so an
# older venv gets a new entry).
REQS := $(VENV)/requirements.stamp
$(REQS): dragon-py/requirements-dev.txt | $(VPY)
	$(VPY) -m pip install -q -r dragon-py/requirements-dev.txt
	touch $@

# The off-node transport plugin ships inside the package (dragon/).
PLUGIN_SO := dragon-py/python/dragon/libdragon_transport_tcp.so
# The features of builds by make: pyproject.toml's minus bundled-plugin (with
# which build.rs builds the plugin itself, for builds by pip).
MATURIN_FEATURES := -F pyo3/extension-module

plugin:
	$(CARGO) build --release -q -p transport-tcp-plugin
	cp target/release/libdragon_transport_tcp.so $(PLUGIN_SO).tmp
	mv $(PLUGIN_SO).tmp $(PLUGIN_SO)

# Build the extension in release mode and install the package into the venv
# (editable: the Python sources are used where they are; the start-method
# hook, dragon_hook.pth and its module, is installed as the wheel's data).
setup: $(REQS) plugin
	@# The distribution was called "dragon" before it was "dragon-rs".
	@$(VPY) -m pip uninstall -q -y dragon >/dev/null 2>&1 || true
	cd dragon-py && ../$(VENV)/bin/maturin develop --release -q $(MATURIN_FEATURES)
	@# Byte-compile the (editable) sources: with PYTHONDONTWRITEBYTECODE set,
	@# every process would otherwise recompile them, template and children too.
	$(VPY) -m compileall -q dragon-py/python/dragon

# The distribution (dist/): the abi3 manylinux wheel, its libraries'
# debug information split off into dist/debug/, and the sdist.
wheel: $(REQS) plugin
	rm -rf dist
	cd dragon-py && ../$(VENV)/bin/maturin build --release -q $(MATURIN_FEATURES) --out ../dist
	cd dragon-py && ../$(VENV)/bin/maturin sdist --out ../dist >/dev/null
	$(VPY) scripts/strip-wheel.py dist/*.whl --debug-dir dist/debug

# The wheel installed into a fresh venv without Rust on PATH runs the seed tour.
test-wheel: wheel
	scripts/wheel-check

demo: setup
	@for f in examples/*.py; do echo "== $$f"; $(VPY) $$f || exit 1; done
	@echo "== queues/examples/queue_demo.rs"
	@$(CARGO) run --release -q -p queues --example queue_demo
	@echo "== pool/examples/pool_demo.rs"
	@$(CARGO) run --release -q -p pool --example pool_demo
	@echo "== docs/examples/rust_service.rs (pool and queues together)"
	@$(CARGO) run --release -q -p docs --example rust_service

# clippy.toml keeps atomics and UnsafeCell behind shm_primitives::sync.
# stubtest (mypy) checks dragon/_native.pyi against the built extension:
# every name it registers, every signature (a few seconds). ruff checks the
# Python code (rules in ruff.toml).
lint: typecheck setup
	$(CARGO) fmt --all --check
	$(CARGO) fmt --manifest-path channels-bench/Cargo.toml --check
	$(CARGO) clippy --workspace --all-targets -q -- -D warnings
	MYPY_CACHE_DIR=target/mypy-cache $(VPY) -m mypy.stubtest --concise dragon._native
	@$(VPY) -m ruff --version >/dev/null 2>&1 || $(VPY) -m pip install -q -r dragon-py/requirements-dev.txt
	RUFF_CACHE_DIR=target/ruff-cache $(VPY) -m ruff check -q dragon-py/python dragon-py/tests dragon-py/bench examples testbed scripts/oracle scripts/check-shm-leftovers scripts/strip-wheel.py

# mypy --strict on examples/*.py and the typed public API (dragon.native,
# dragon.data.ddict, Policy): the files and settings are in
# dragon-py/pyproject.toml ([tool.mypy]). Reads the sources and _native.pyi;
# needs no build. A venv made before mypy was a requirement gets it here.
typecheck: $(VPY)
	@$(VPY) -m mypy --version >/dev/null 2>&1 || $(VPY) -m pip install -q -r dragon-py/requirements-dev.txt
	$(VPY) -m mypy --config-file dragon-py/pyproject.toml

test-rust:
	$(CARGO) test --workspace --release -q

# Loom models: same code, threads standing in for processes. Every crate
# with models next to its code (src/**/loom_*.rs) is listed here.
LOOM_CRATES := channels-core sync-objects ddict-shard pool
test-loom:
	RUSTFLAGS="--cfg dragon_loom" CARGO_TARGET_DIR=target/loom \
	    $(CARGO) test $(addprefix -p ,$(LOOM_CRATES)) --release -q --lib loom

test-py: setup
	$(VPY) -m pytest -q dragon-py/tests

# CPython's multiprocessing suite under the dragon start method, against the
# committed floor (dragon-py/oracle-floor.txt). About 75 s on 2 cores.
oracle: setup
	PYTHON=$(VPY) scripts/oracle

# The same suite across the three nodes of the test bed (testbed/cluster.py;
# root): each of its workers is a `dragon --hostlist node1,node2,node3` run,
# so the processes of a test go round-robin over the nodes. Against
# dragon-py/oracle-floor-cluster.txt; every node must end clean.
# About 4 minutes on 2 cores. Not part of `make test` yet (see README,
# Tests): run it before resolving multi-node work.
test-cluster: setup
	PYTHON=$(VPY) scripts/oracle --cluster

# The same on CPython 3.12 and 3.13 when they are installed (the wheel is
# abi3): about 4 minutes more.
test-pythons: setup
	scripts/test-pythons

# The multi-node test bed (testbed/cluster.py): nodes made of namespaces on
# one machine, each with its own sshd. Needs root and openssh-server (CI
# has both); DRAGON_SKIP_NETNS=1 skips it elsewhere. About 20 s.
test-testbed: $(REQS)
	$(VPY) -m pytest -q testbed

test: lint test-rust test-loom test-py oracle test-pythons test-testbed test-wheel
	@$(MAKE) -s clean-shm-check

# Fails if a test left segments in /dev/shm (of runs whose owner is dead:
# live runs of other programs on the machine are not leaks).
clean-shm-check:
	@scripts/check-shm-leftovers

# Soak: every stress scenario (channel, sync, ddict) for SOAK_SECONDS each,
# workers SIGKILLed at random; one JSON line per scenario (docs/stress.md).
# Not part of `make test` (whose smoke runs are stress/tests/smoke.rs).
SOAK_SECONDS ?= 200
soak:
	$(CARGO) build --release -q -p stress
	target/release/stress all --seconds $(SOAK_SECONDS) $(if $(SEED),--seed $(SEED))

# Fuzzing: every fuzz target, FUZZ_CASES mutated inputs each: the `fuzz_*`
# tests of every crate (<crate>/tests/fuzz_<target>.rs, corpus in
# <crate>/tests/corpus/<target>/) and the Python ones (test_fuzz_*.py).
# `make test` runs the same targets with 1000 inputs each (the default of
# DRAGON_FUZZ_CASES). Figures in docs/stress.md.
FUZZ_CASES ?= 100000
fuzz: setup
	DRAGON_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --workspace --release -q --test 'fuzz_*' -- --nocapture
	DRAGON_FUZZ_CASES=$(FUZZ_CASES) $(VPY) -m pytest -q -s dragon-py/tests/test_fuzz_*.py

# The channel benchmarks live in their own workspace (channels-bench/), so
# that `make test` never builds their bench-only peer, iceoryx2.
bench: setup
	cd channels-bench && CARGO_TARGET_DIR=../target/bench $(CARGO) run --release -q

# The Python-level benchmarks (the shared bench/ scripts, fork/spawn/dragon
# in one run, ratio tables in bench-results/). About 5 minutes.
bench-py: setup
	PYTHON=$(VPY) scripts/bench-py

# Across nodes of the namespaced test bed (as root): Queue round trip and
# 1 MiB streaming against raw TCP between the same two nodes, and a 3-node
# bring-up (docs/multinode.md, Performance).
bench-multinode: setup
	$(VPY) dragon-py/bench/multinode.py --reps 5 --out bench-results/multinode.jsonl

# Pools, locks, values and DDicts across nodes of the test bed (as root):
# Pool.map on 3 nodes against 1, remote Lock/Value against raw TCP round
# trips, DDict from a node without shard against redis (redis-server in a
# node's namespace, redis-py) and on the shard's node against a one-node
# run (docs/multinode.md, Performance). Not part of `make test`. About 5 minutes.
bench-multinode-objects: setup
	@command -v redis-server >/dev/null || { echo "bench-multinode-objects needs redis-server: apt-get install redis-server" >&2; exit 1; }
	$(VPY) -m pip install -q redis
	$(VPY) dragon-py/bench/multinode_objects.py --reps 5 --out bench-results/multinode-objects.jsonl
