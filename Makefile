# edge-transfer: every target sets itself up on a fresh machine (venv + installs), then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= data/sample_flowers
SEED   ?= 42
# OUT: unset, `trainer train` writes a new runs/train, runs/train2, ... and records it in runs/LAST
OUT    ?=
# the run that `make tflite/android/bench` use: RUN=dir, else OUT, else the last `make train`
RUN    ?= $(or $(OUT),$(shell cat runs/LAST 2>/dev/null),runs/train)
VARIANT ?= int8
# where `make web` writes the static page folder
WEB_OUT ?= build/web

.PHONY: help setup train doctor tflite android web web-runtime bench test test-fast test-pi fuzz client-venvs debian-packages clean

help:
	@echo "make train [DATA=dir] [OUT=dir [OVERWRITE=1]] [SEED=42]  train (default: the sample photos -> new runs/trainN)"
	@echo "make doctor [DATA=dir] [OUT=dir]   mislabeled photos, twins, photos of no class -> doctor.html, doctor.json"
	@echo "make tflite [RUN=dir]             convert the last run to all TFLite variants + parity"
	@echo "make android [RUN=dir] [VARIANT=int8]  fill android_assets/"
	@echo "make web [RUN=dir] [VARIANT=int8] [WEB_OUT=build/web]  a static web page that runs the model (LiteRT.js)"
	@echo "make bench [RUN=dir]              size / accuracy / latency table for every variant"
	@echo "make test-fast                    in-process tier: trains + converts a small real model (< 2 min)"
	@echo "make test                         the whole test suite (builds client venvs once), then test-pi"
	@echo "make test-pi                      the edge runtime in an emulated 64-bit Raspberry Pi (root)"

# scripts/quiet_pip.py: pip minus known third-party noise; a failing pip prints everything, exits non-zero
PIP    := $(PY) scripts/quiet_pip.py install -q --disable-pip-version-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[train,camera,dev]"
	touch $@

setup: $(VENV)/.installed

# an OUT that holds a run is refused unless OVERWRITE=1 (replaced whole); train records its own runs/trainN
train: setup
	$(PY) -m trainer train --data "$(DATA)" --seed $(SEED)$(if $(OUT), --out "$(OUT)")$(if $(OVERWRITE), --overwrite)$(if $(EXCLUDE), --exclude "$(EXCLUDE)")
	$(if $(OUT),@mkdir -p runs && echo "$(OUT)" > runs/LAST)

# the data doctor: without OUT a new runs/doctor, runs/doctor2, ...; EXCLUDE=DIR/doctor.json:mislabeled for train
doctor: setup
	$(PY) -m trainer doctor "$(DATA)"$(if $(OUT), --out "$(OUT)")

tflite: setup
	$(PY) -m trainer convert "$(RUN)" --mode all

android: setup
	$(PY) -m trainer android "$(RUN)" --variant $(VARIANT)

bench: setup
	$(PY) -m trainer bench "$(RUN)"

# LiteRT.js, pinned in web/package-lock.json, for `trainer web`: npm ci when node_modules is missing or the lock changed
WEB_RUNTIME := web/node_modules/.package-lock.json
$(WEB_RUNTIME): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web-runtime: $(WEB_RUNTIME)

web: setup web-runtime
	$(PY) -m trainer web "$(RUN)" --variant $(VARIANT) --out "$(WEB_OUT)"

# Debian packages the full suite needs: tflite-support (a client venv) needs libusb; report.html
# is rendered in headless Chromium (with the page's last-resort font).
DEBIAN_PACKAGES := libusb-1.0-0 chromium fonts-dejavu-core

# Installs them when run as root; otherwise prints the one command to run and fails.
debian-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "error: make test needs Debian packages:$$missing; run: sudo apt-get install -y$$missing" >&2; exit 1; fi; \
	fi

# mediapipe, tflite-support and tflite-runtime 2.14 + numpy<2 cannot share a venv with TensorFlow 2.21.
client-venvs: setup debian-packages
	$(PY) tests/client_venvs.py

# in-process tier: no client venvs, no browser, no subprocess-heavy tests; still trains and converts a real model
test-fast: setup web-runtime
	$(PY) -m pytest -q -m "not slow and not clients and not browser"

test: client-venvs web-runtime
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-pi

# arm64 Debian bookworm (Pi OS 64-bit's base) under qemu, cached in ~/.cache/edge-transfer (see scripts/pi/)
test-pi: setup
	$(PY) scripts/pi/run.py

# thousands of damaged copies of real models through `edge classify`, on both interpreters
fuzz: client-venvs
	$(PY) scripts/fuzz_models.py --backend ai_edge_litert --count 2000
	$(PY) scripts/fuzz_models.py --backend tflite_runtime --count 2000

clean:
	rm -rf runs .pytest_cache
