# Two commands from a fresh clone:
#   make smoke   set up, then train the tiny model offline on the shipped data (~1 min)
#   make test    set up, then run the test suite
# and make demo: set up, then the offline demo that learns (experiment=tiny_demo, ~11 min here)
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
	$(PY) -m riscv_ft.train experiment=smoke

demo: setup
	$(PY) -m riscv_ft.train experiment=tiny_demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) experiments/runs experiments/sweeps test-artifacts
