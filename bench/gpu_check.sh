#!/usr/bin/env bash
# GPU check of the engine: trains a factorized-binary ResNet-20 a few epochs on CUDA with
# bf16 autocast and on the CPU with the same seed, and prints step times and loss curves
# (bench/gpu_train.py). Installs nothing; needs torch (with CUDA), tensorly and pydantic.
# Finishes in well under 3 minutes on one GPU. Extra arguments go to gpu_train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 exec "$PY" bench/gpu_train.py "$@"
