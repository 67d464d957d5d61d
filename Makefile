# Two commands do everything on a fresh machine: `make demo` and `make test` (`make demo-full`: the full study).
# Both create .venv when it is missing and install the project (idempotent: a stamp file records the install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO_DIR ?= runs/demo

.PHONY: demo demo-full test install clean bench lint

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned: the CPU build on this machine's disk. An unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# the engine, the two-tower alone, the baselines and the oracle; no ablation-only model (2.5 minutes on 2 cores)
demo: install
	$(BIN)/recsys demo --out $(DEMO_DIR)

# the full study: every ablation model trained and evaluated
demo-full: install
	$(BIN)/recsys demo --full --out $(DEMO_DIR)

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_synthetic.py

clean:
	rm -rf runs $(VENV) .pytest_cache
