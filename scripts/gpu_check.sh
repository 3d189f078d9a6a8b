#!/usr/bin/env bash
# The GPU check behind `make gpu-check`: rodin's CUDA paths on this machine's GPUs in at most
# 8 minutes (the CUDA tests, benchmarks.train_step fp32 and bf16, a `--gpus 0` worker training and
# reconstructing through the queue, a `--devices N` job on every GPU), then one table; non-zero
# exit if anything failed. Without a GPU it says so and skips the GPU parts. See scripts/gpu_check.py.
#
#   bash scripts/gpu_check.sh                     # on a GPU machine
#   bash scripts/gpu_check.sh --rehearse-on-cpu   # every step on the CPU: checks the script only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# The script keeps to 480 s and prints its table; this is the backstop (SIGINT: it still prints).
exec timeout --signal=INT --kill-after=30 540 "$PY" -m scripts.gpu_check "$@"
