#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): SFT and GRPO steps of a Qwen2.5-0.5B-shaped model through
# `accelerate launch` in bf16 and constrained decoding against the reference, in a few minutes on one GPU.
#
# On a lent GPU machine (no registry there; its python3 has torch + CUDA, transformers, accelerate, peft, but not
# TRL, datasets or vector-quantize-pytorch): first, here, `make gpu-wheels` (fills .whl/, about 3 MB, ignored by
# git), then run through the device tool with carry [".whl"]:
#     bash benchmarks/gpu_check.sh              # writes $OUT/gpu_check.json (or benchmarks/results/gpu_check/)
# On any machine, CPU only, with the project's venv (what the tests run):
#     bash benchmarks/gpu_check.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; fi
OUT_DIR="${OUT:-benchmarks/results}/gpu_check"
if [ -n "$DRY" ]; then
    PY="${PYTHON:-.venv/bin/python}"
else
    PY="${PYTHON:-python3}"
    if [ -d .whl ]; then  # the carried wheels, and genrec itself, into a private site folder
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py $DRY --out "$OUT_DIR"
