#!/usr/bin/env bash
# The GPU performance checks (scripts/gpu_check.py), in at most 8 minutes, on a machine with one GPU:
#   bash scripts/gpu_check.sh                 # results also appended to gpu_check.jsonl (or $OUT/)
# Needs the project's packages (make venv). On a machine that cannot reach the package index,
# carry wheels of open_clip_torch, ftfy, wcwidth, omegaconf and antlr4-python3-runtime==4.9.3.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RESULTS=${OUT:-.}/gpu_check.jsonl
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 "$PYTHON" scripts/gpu_check.py --out "$RESULTS" "$@"
