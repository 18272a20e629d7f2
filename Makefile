# Two commands a newcomer needs:  make demo   |   make test
# Both create .venv on first use (idempotent: a stamp file records the install).
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch. On a GPU machine set TORCH=torch (or a CUDA-specific wheel).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.lexiray-installed
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup demo test test-fast benchmarks gpu-check clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch ($(TORCH)) and lexiray into $(VENV) — about 2 minutes the first time"
	@$(PIP) install -q "$(TORCH)" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PIP) install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import lexiray, torch, ray, transformers, peft" || { echo "install failed"; exit 1; }
	@touch $(STAMP)

setup: $(STAMP)

# A real local Ray Tune run with ASHA over the tiny offline model and the bundled data.
demo: $(STAMP)
	$(BIN)/lexiray tune

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/ray_overhead.py
	$(BIN)/python benchmarks/asha_vs_fifo.py
	$(BIN)/python benchmarks/tuning_vs_peers.py
	$(BIN)/python benchmarks/scale_sim.py
	$(BIN)/python benchmarks/packing.py
	$(BIN)/python benchmarks/gpu_step.py
	$(BIN)/python benchmarks/eval_memory.py

# The GPU check in one call (benchmarks/gpu_check.py), on a GPU machine's own Python (its torch):
# the packages its image lacks come from .gpu/ (../shared/gpu/make-bundle): wheels installed with
# pip from .gpu alone, or the bundle's unpacked site folder put on PYTHONPATH. Writes
# $$OUT/gpu-check-summary.json (./gpu-check-summary.json without OUT); on CPU it marks the GPU parts skipped.
GPU_PYTHON ?= python3
gpu-check:
	@set -e; \
	if ls .gpu/*.whl >/dev/null 2>&1; then $(GPU_PYTHON) -m pip install -q --no-index --find-links .gpu .gpu/*.whl; fi; \
	if [ -f .gpu/bundle.tar.xz ]; then site=$$(mktemp -d); tar -xJf .gpu/bundle.tar.xz -C "$$site"; \
	  export PYTHONPATH="$$site$${PYTHONPATH:+:$$PYTHONPATH}"; fi; \
	export PYTHONPATH="$$PWD$${PYTHONPATH:+:$$PYTHONPATH}"; \
	timeout 480 $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) lexiray_results runs .pytest_cache
