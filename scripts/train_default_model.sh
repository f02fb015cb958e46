#!/usr/bin/env bash
# Re-create the shipped default RHM (frerec_fast/data/rhm/) from the bundled real images.
# CPU, one thread, deterministic: the same command gives the same weights on the same
# torch build. Takes about 15-25 minutes on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/rhm_default}
DATA=$(.venv/bin/python -c "from frerec_fast.datasets import data_root; print(data_root())")
.venv/bin/frerec train "$DATA/real/train" "$OUT" --val "$DATA/real/heldout" \
  --preset small --epochs 60 --batch-size 8 --lr 1e-3 --warmup 50 -k 200 --seed 0 \
  --device cpu --threads 1 --resume
.venv/bin/python -m frerec_fast.training.card "$OUT/rhm.safetensors" frerec_fast/data/rhm
