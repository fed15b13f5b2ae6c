# edge-transfer: every target sets itself up on a fresh machine (venv + installs), then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= data/sample_flowers
OUT    ?= runs/latest
# the run that `make tflite/android/bench` use: RUN=dir, else the last `make train`
RUN    ?= $(shell cat runs/LAST 2>/dev/null || echo $(OUT))
VARIANT ?= int8

.PHONY: help setup train tflite android bench test test-fast test-pi client-venvs clean

help:
	@echo "make train [DATA=dir] [OUT=dir]   train (default: the shipped sample photos)"
	@echo "make tflite [RUN=dir]             convert the last run to all TFLite variants + parity"
	@echo "make android [RUN=dir] [VARIANT=int8]  fill android_assets/"
	@echo "make bench [RUN=dir]              size / accuracy / latency table for every variant"
	@echo "make test                         the whole test suite (builds client venvs once), then test-pi"
	@echo "make test-pi                      the edge runtime in an emulated 64-bit Raspberry Pi (root)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e ".[train,camera,dev]"
	touch $@

setup: $(VENV)/.installed

train: setup
	$(PY) -m trainer train --data "$(DATA)" --out "$(OUT)"
	@mkdir -p runs && echo "$(OUT)" > runs/LAST

tflite: setup
	$(PY) -m trainer convert "$(RUN)" --mode all

android: setup
	$(PY) -m trainer android "$(RUN)" --variant $(VARIANT)

bench: setup
	$(PY) -m trainer bench "$(RUN)"

# tflite-support needs Debian's libusb-1.0-0; the client venvs (mediapipe, tflite-support,
# tflite-runtime 2.14 + numpy<2) cannot share a venv with TensorFlow 2.21.
client-venvs: setup
	@dpkg -s libusb-1.0-0 >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libusb-1.0-0; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libusb-1.0-0; fi; }
	$(PY) tests/client_venvs.py

test: client-venvs
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-pi

# arm64 Debian bookworm (Pi OS 64-bit's base) under qemu, cached in ~/.cache/edge-transfer (see scripts/pi/)
test-pi: setup
	$(PY) scripts/pi/run.py

clean:
	rm -rf runs .pytest_cache
