# `make demo` and `make test` do all set-up on a fresh machine (create .venv, install the
# pinned requirements) before running the demo or the fast test suite; later runs reuse
# .venv and reinstall only when a requirements file changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: setup demo serve test test-all bench wheels gpu-check clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-build.txt | $(PY)
	@echo "[setup] installing build requirements (torch first: deepspeed builds against it)"
	$(PIP) -r requirements-build.txt
	@echo "[setup] installing runtime and test requirements"
	$(PIP) --no-build-isolation -r requirements.txt
	touch $(STAMP)

# The whole pipeline at demo scale into runs/demo (python -m launch.demo --help): a second
# run skips finished stages and resumes an interrupted one. DEMO_ARGS passes options.
demo: $(STAMP)
	$(PY) -m launch.demo --out runs/demo $(DEMO_ARGS)

# The demo's cartoonizer as a web page on http://127.0.0.1:8000/ (python -m launch.serve --help).
serve: $(STAMP)
	$(PY) -m launch.serve --bundle runs/demo/demo.bundle --examples runs/demo/data/photos/test $(SERVE_ARGS)

# Fast suite: everything not marked slow (CUDA tests skip themselves without a GPU).
test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/ops.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/train_gan.py
	$(PY) benchmarks/train_encoder.py
	$(PY) benchmarks/fid.py
	$(PY) benchmarks/zero.py

# Every package toonmix needs beside torch, for an offline GPU node (python -m launch.wheels
# --help): CPython 3.12 manylinux x86_64 unless WHEELS_ARGS says otherwise, into wheels/.
wheels: $(STAMP)
	$(PY) -m launch.wheels --out wheels $(WHEELS_ARGS)

# One CUDA GPU proven in about 8 minutes: build, CUDA tests, every headline benchmark, into
# $(OUT)/results.json and log.txt (docs/gpu_check.md). No set-up step: it runs on .venv where
# that exists, else on the node's own python3 (an image's torch plus the offline wheels).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
OUT ?= runs/gpu-check
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py --out $(OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
