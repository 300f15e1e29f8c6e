# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision come from the range in pyproject.toml; pip picks the newest allowed build.
# --no-compile: pip would byte-compile every module of torch; `python -m wiseseg.bytecode` then
# writes the byte code of what a run imports, even under PYTHONDONTWRITEBYTECODE (timings:
# benchmarks/install_time.sh, benchmarks/results/install_time.txt).
PIP_INSTALL := $(BIN)/python -m pip install --quiet --no-compile

.PHONY: demo test install install-dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) -e .
	$(BIN)/python -m wiseseg.bytecode
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) -e ".[dev]"
	$(BIN)/python -m wiseseg.bytecode
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
