# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use (CPU torch wheel unless an NVIDIA GPU is present) and are
# cheap to re-run: the install step only re-runs when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sparseseg-installed
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch>=2.4
DEMO_OUT ?= demo-output
TEST_PROCESSES ?= 2

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing CUDA torch"; $(PY) -m pip install -q "$(TORCH_GPU)"; \
	else \
		echo "no NVIDIA GPU: installing the CPU torch wheel ($(TORCH_CPU))"; $(PY) -m pip install -q "$(TORCH_CPU)"; \
	fi
	@# pin the torch just installed so resolving the package never swaps it for another build
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/sparseseg demo --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n $(TEST_PROCESSES)

bench: $(STAMP)
	$(PY) bench/ingest.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
