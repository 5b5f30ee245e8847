# `make demo`: set up .venv and run the whole pipeline on the built-in synthetic catalog.
# `make test`: set up .venv if needed and run the default (non-slow) test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genrec-installed

.PHONY: setup demo test test-slow lint industrial

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,serve]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/genrec pipeline configs/pipeline/demo.yaml --run-dir runs/demo
	for b in popularity cooc knn; do HF_HUB_OFFLINE=1 $(BIN)/genrec baseline $$b --run-dir runs/demo || exit 1; done
	$(BIN)/genrec report --run-dir runs/demo

industrial: setup
	HF_HUB_OFFLINE=1 $(BIN)/genrec pipeline configs/pipeline/industrial-cpu.yaml --run-dir runs/industrial-cpu

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .
