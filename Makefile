# ddpm-flowers. Two commands on a fresh machine:
#   make run    set up .venv, then execute solution.ipynb headless with the profile that fits the hardware
#   make test   set up .venv, then run the unit tests (with the smoke rehearsal of reproduce) and the notebook under nbval
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Profile of `make run`: DDPM_PROFILE if set, else the package picks it from the hardware (gpu with CUDA, else cpu).
export DDPM_PROFILE

.PHONY: help venv run reproduce plan rehearse notebook render test unit nbval lint bench clean

help:  ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --editable .  # import ddpm from anywhere
	touch $@

venv: $(VENV)/.installed  ## Create .venv with the pinned requirements

run: venv  ## Execute solution.ipynb headless -> outputs/solution.<profile>.ipynb, figures/, runs/
	@mkdir -p outputs
	@profile=$$($(PY) -c "from ddpm.config import default_profile; print(default_profile())"); \
	echo "executing solution.ipynb with profile $$profile"; \
	time $(PY) -m jupyter nbconvert --to notebook --execute solution.ipynb --ExecutePreprocessor.timeout=-1 \
		--output-dir outputs --output solution.$$profile.ipynb

reproduce: venv  ## Make the profile's plan: train, evaluate, execute the notebook, write results (resumable)
	time $(PY) -m ddpm reproduce

plan: venv  ## FLOPs and estimated minutes of each phase of the profile's plan (MFU=0.35 PEAK_TFLOPS=800)
	$(PY) -m ddpm plan --list --mfu $(or $(MFU),0.35) --peak-tflops $(or $(PEAK_TFLOPS),800)

rehearse: venv  ## Only CI's rehearsal of reproduce: the smoke plan end to end, then the notebook alone
	$(PY) -m pytest tests/test_reproduce.py -k REHEARSAL

notebook: venv  ## Execute solution.ipynb in place (refreshes the committed outputs)
	time $(PY) -m jupyter nbconvert --to notebook --execute solution.ipynb --ExecutePreprocessor.timeout=-1 --inplace

render: venv  ## Screenshot the committed outputs of solution.ipynb (no execution) -> outputs/render/*.png
	time $(PY) tools/render_notebook.py solution.ipynb --out outputs/render

test: venv unit nbval  ## Unit tests + the notebook under nbval (what CI runs)

unit: venv  ## pytest on tests/
	$(PY) -m pytest tests

nbval: venv  ## Execute the notebook with the smoke profile (fresh run folder) and compare its checked cells
	rm -rf outputs/nbval
	time DDPM_PROFILE=smoke DDPM_RUNS_DIR=$(CURDIR)/outputs/nbval/runs DDPM_FIGURES_DIR=$(CURDIR)/outputs/nbval/figures \
		$(PY) -m pytest --nbval-lax --nbval-current-env solution.ipynb

lint: venv  ## hadolint on the Dockerfile
	$(VENV)/bin/hadolint --failure-threshold error Dockerfile

bench: venv  ## Throughput of both networks vs diffusers' UNet2DModel on this machine
	$(PY) benchmarks/throughput.py

clean:  ## Remove runs, outputs and caches (not .venv)
	rm -rf runs outputs data/.cache .pytest_cache

# ---- Docker (GPU) -------------------------------------------------------------------------------------------------
DOCKER_IMAGE   ?= ddpm-flowers
DOCKER_PROFILE ?= gpu
# The image user gets your uid/gid so files in the mounted figures/ runs/ outputs/ belong to you. The image never runs
# as root, so a root caller builds it with uid 1000 and hands the mounted folders to that uid.
DOCKER_UID := $(shell id -u)
DOCKER_GID := $(shell id -g)
ifeq ($(DOCKER_UID),0)
DOCKER_UID := 1000
DOCKER_GID := 1000
DOCKER_FIX_OWNER := chown -R 1000:1000 figures runs outputs
else
DOCKER_FIX_OWNER := true
endif
DOCKER_RUN := docker run --rm --gpus all --shm-size=2g \
	-v "$(CURDIR)/figures:/app/figures" -v "$(CURDIR)/runs:/app/runs" -v "$(CURDIR)/outputs:/app/outputs"

.PHONY: docker-build docker-run docker-lab docker-mounts docker-test

# BuildKit (the Dockerfile mounts an optional CA bundle as a build secret): built into Docker 20.10 behind
# DOCKER_BUILDKIT=1, the default from Docker 23 on (with the buildx plugin).
docker-build:  ## Build the GPU image ddpm-flowers (CUDA 13.0, torch 2.14.1)
	DOCKER_BUILDKIT=1 docker build --build-arg UID=$(DOCKER_UID) --build-arg GID=$(DOCKER_GID) -t $(DOCKER_IMAGE) .

docker-mounts:
	mkdir -p figures runs outputs
	$(DOCKER_FIX_OWNER)

docker-run: docker-mounts  ## Execute solution.ipynb on the GPU -> outputs/solution.executed.ipynb, figures/, runs/
	$(DOCKER_RUN) -e DDPM_PROFILE=$(DOCKER_PROFILE) $(DOCKER_IMAGE) run

docker-lab: docker-mounts  ## JupyterLab in the GPU image on http://localhost:8888 (token in the log)
	$(DOCKER_RUN) -p 8888:8888 $(DOCKER_IMAGE) lab

# CI runs this after `make test`. No GPU and no Docker Hub needed: see docker/test.sh for the steps and settings.
docker-test:  ## Build the Dockerfile on a bootstrapped Debian stand-in, run config, the smoke notebook and lab in it
	time bash docker/test.sh
