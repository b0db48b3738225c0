# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SCENARIO ?= payload_sim/scenarios/demo.toml
# The tested versions (constraints/lock-dev.txt): results and speed do not drift with a new
# release between two runs. `make test LOCK=` installs the newest allowed by pyproject.toml.
LOCK ?= constraints/lock-dev.txt
PIP_LOCK := $(if $(LOCK),-c $(LOCK))

.PHONY: run test lint models bench bench-smoke verify verify-aarch64 calibration flight-wheel gallery clean native native-aarch64

$(VENV)/.runtime: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel  # the packaging test builds a wheel without build isolation
	$(PY) -m pip install --quiet $(PIP_LOCK) -e '.[sim,ground]'
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PY) -m pip install --quiet $(PIP_LOCK) -e '.[dev]'
	touch $@

$(VENV)/.train: $(VENV)/.dev
	$(PY) -m pip install --quiet $(PIP_LOCK) -e '.[train]'
	touch $@

# The native kernels (flight/native, issue #16), built next to their source for this machine when
# a C compiler is here; without one the flight's default "auto" mode runs its numpy/OpenCV path and
# says so. Written to a temporary name first: a running flight may have the old file mapped.
# -ffp-contract=off: a fused multiply-add would round differently from the numpy/OpenCV reference.
ARCH := $(shell uname -m)
NATIVE_SRC := flight/native/kernels.c
NATIVE_LIB := flight/native/libflight_kernels.$(ARCH).so
NATIVE_CFLAGS := -O3 -shared -fPIC -ffp-contract=off -Wall -Wextra -Werror
native:
	@if command -v $(CC) >/dev/null 2>&1; then $(MAKE) --no-print-directory $(NATIVE_LIB); \
	else echo "native kernels: no C compiler ($(CC)): the flight uses its numpy/OpenCV path"; fi

$(NATIVE_LIB): $(NATIVE_SRC)
	$(CC) $(NATIVE_CFLAGS) -o $@.tmp $< && mv $@.tmp $@

ifneq ($(ARCH),aarch64)
native-aarch64: flight/native/libflight_kernels.aarch64.so  ## the board's library, cross-compiled (gcc-aarch64-linux-gnu)
flight/native/libflight_kernels.aarch64.so: $(NATIVE_SRC)
	aarch64-linux-gnu-gcc $(NATIVE_CFLAGS) -o $@.tmp $< && mv $@.tmp $@
else
native-aarch64: native
endif

RUN_ARGS ?=
run: $(VENV)/.runtime native  ## the end-to-end demo with the operator console (RUN_ARGS=--console-stay keeps it up after)
	$(PY) -m payload_sim.hil $(SCENARIO) --console $(RUN_ARGS)

# Test files run on 2 workers (pytest-xdist; a file's tests stay together on one worker, with its
# module fixtures): the slowest end-to-end tests mostly wait on emulated links at their real rates,
# so the suite takes about 8 instead of 15 minutes on 2 cores. More workers than cores would make
# the timing checks of those tests compete for CPU. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.dev native  ## every test: unit, property, integration, end-to-end
	$(PY) -m models verify
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.dev
	$(PY) -m ruff check flight payload_sim ground_link models benchmarks tests
	$(PY) -m mypy flight ground_link --ignore-missing-imports

models: $(VENV)/.train  ## retrain, quantize, card and golden-vector every model (seeded)
	$(PY) -m models build

verify: $(VENV)/.runtime native
	$(PY) -m models verify

bench: $(VENV)/.dev native  ## the full benchmark harness; non-zero when a budget is exceeded
	$(PY) -m benchmarks.harness --profile default

bench-smoke: $(VENV)/.dev native
	$(PY) -m benchmarks.harness --profile default --smoke

# aarch64 correctness under qemu user-mode emulation (issue #15, docs/deploy.md): builds an arm64
# sysroot in .cache/aarch64 once (about 30 s here), then models verify and a short in-process flight
# run on emulated Cortex-A72 and `max` CPUs, compared byte for byte with x86. Timings mean nothing.
verify-aarch64: $(VENV)/.runtime native
	PY=$(abspath $(PY)) scripts/verify_aarch64.sh

CAL ?= runs/calibration-cal-1.npz
calibration: $(VENV)/.runtime  ## calibration products for SCENARIO's sensor: make calibration CAL=out.npz
	$(PY) -m payload_sim.calibrate $(SCENARIO) --out $(CAL)

flight-wheel: $(VENV)/.runtime  ## the wheel a board installs (flight runtime deps only): dist/
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w dist .

gallery: $(VENV)/.dev
	$(PY) -m payload_sim.gallery --out docs/gallery

clean:
	rm -rf $(VENV) runs dist .pytest_cache .hypothesis .ruff_cache .mypy_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
