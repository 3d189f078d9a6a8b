# Two commands for a newcomer:
#   make demo   set up, make a swords dataset, train through the queue, reconstruct by model id
#   make test   set up and run the test suite (what CI runs)
VENV ?= .venv
PYTHON ?= python3
# A GPU user may bring their own build: make TORCH_SPEC="torch==2.13.0+cu128" ...
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,postgres]"
	touch $@

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

# Installs Redis, PostgreSQL, Chromium and docker-compose where it can (scripts/test_servers.sh)
# so that their tests run rather than skip. Three test processes: most of the slow tests wait on
# workers and servers rather than compute (7.8 min in one process on 2 cores, 4.3 in three).
# A module's tests stay in one process (loadscope): they share its module fixtures. One torch
# thread in each test process (the workers a test starts set their own): three processes of two
# OpenMP threads each, beside the workers, oversubscribe 2 cores (a 3 s test took 30 s); the
# whole suite 7.4 to 8.0 min -> 6.4 min, 12 -> 10.4 min of CPU (2026-12-07).
test: setup
	bash scripts/test_servers.sh
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 3 --dist loadscope

# The unit tier for the edit-test loop: no worker, server or benchmark is started; two
# processes (80 s in one on 2 cores, under a minute in two).
test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" -n 2

# On a machine with a CUDA GPU, in at most 8 minutes: the CUDA tests, benchmarks.train_step fp32
# and bf16, a `--gpus 0` worker through the queue, `--devices N` on every GPU; one table, non-zero
# exit on a failure. Without a GPU it says so and skips the GPU parts (scripts/gpu_check.py).
gpu-check: setup
	bash scripts/gpu_check.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) reconstructions .pytest_cache
