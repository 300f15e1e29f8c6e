# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision come from the range in pyproject.toml; pip picks the newest allowed build.
# --no-compile: Python compiles each module to byte code when it is first imported, instead of
# pip compiling all of torch's at install time: the install 76 → 52 s on 2 cores, the first
# import 3 → 9 s (benchmarks/install_time.sh, benchmarks/results/install_time.txt).
PIP_INSTALL := $(BIN)/python -m pip install --quiet --no-compile

.PHONY: demo test install install-dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/wiseseg run --data shapes --preset cpu --out runs/demo

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
