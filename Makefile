# Two commands set up a fresh machine: `make demo` (the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/experiments/quickstart.yaml
# MuJoCo renders headless through EGL (Mesa's software path on CPU machines, the driver on GPUs);
# torchcodec loads the system's FFmpeg libraries (libavdevice pulls in the rest: 59 on Debian 12, 61 on 13).
FFMPEG_LIBS := $(shell apt-cache show libavdevice61 >/dev/null 2>&1 && echo libavdevice61 || echo libavdevice59)
SYSTEM_PACKAGES := libegl1 libgl1 libosmesa6 libglib2.0-0 $(FFMPEG_LIBS) slurmctld slurmd slurm-client munge
export MUJOCO_GL ?= egl

.PHONY: setup system-packages demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first, so that no dependency pulls a CUDA build on CPU machines
	$(PY) -m pip install -q torch==2.13.0
	# libero: LIBERO's simulator and ~340 MiB of assets; it leaves torch, mujoco and numpy as they are
	$(PY) -m pip install -q -e '.[test,rlds,libero,aloha]'
	# torchcodec's wheel is built against one torch release: no deps, so it cannot swap torch
	$(PY) -m pip install -q --no-deps torchcodec==0.13.0
	touch $@

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	$(VENV)/bin/wamforge run $(CONFIG)

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf runs .pytest_cache
