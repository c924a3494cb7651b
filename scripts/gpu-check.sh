#!/usr/bin/env bash
# GPU checks of issue 11 (docs/reproduce.md): release mode with fp16 CLIP weights and default mode with bf16
# autocast, 20 steps of ViT-B/32 at batch 32 each, and the fast scorer on CUDA against the reference.
# Random weights and inputs; about 2-4 minutes on one recent GPU; hard limit 10 minutes.
# Usage (repository root): scripts/gpu-check.sh [extra scripts/gpu_check.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
timeout 600 "$PY" scripts/gpu_check.py --device cuda --arch ViT-B-32 --steps 20 --batch 32 \
    --out docs/results/gpu_check.json "$@"
