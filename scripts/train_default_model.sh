#!/usr/bin/env bash
# Re-create the shipped RHMs (frerec_fast/data/rhm/) from the bundled real images: the
# default model and its no-FESA ablation partner (same command and budget), then measure
# both with scripts/rhm_quality.py and write their model cards.
# CPU, one thread each, deterministic: the same command gives the same weights on the same
# torch build. About 25 minutes per model on one idle core (the two run in parallel).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs}
PY=.venv/bin/python
DATA=$($PY -c "from frerec_fast.datasets import data_root; print(data_root())")
TASK=$DATA/task
train() {  # train NAME [extra frerec train flags]
  local name=$1; shift
  .venv/bin/frerec train "$DATA/real/train" "$OUT/$name" --val "$DATA/real/heldout" \
    --preset small --epochs 60 --batch-size 8 --lr 1e-3 --warmup 50 -k 200 --seed 0 \
    --device cpu --threads 1 --resume "$@"
}
train rhm_default & p1=$!
train rhm_nofesa --no-fesa & p2=$!
wait "$p1"  # each job's own status: a refused or failed training stops the script here
wait "$p2"
BUNDLED="bundled: DCGAN vs held-out real slices (CT + MRI, 64x64)"
UNSEEN="unseen: task DCGAN vs the MNI152 volume (never seen in RHM training)"
for name in rhm_default rhm_nofesa; do
  for stats in shr rhm; do  # calibrate_dir's rhm_stats: the default, then the paper-literal
    $PY scripts/rhm_quality.py --real-train "$DATA/real/train" --real-test "$DATA/real/heldout" \
      --synthetic "$DATA/synthetic" --model "$OUT/$name/rhm.safetensors" --rhm-stats $stats \
      --out "$OUT/q_$name/bundled_$stats" --json "$OUT/q_$name/bundled_$stats.json"
    $PY scripts/rhm_quality.py --real-train "$TASK/real_train" --real-test "$TASK/real_test" \
      --synthetic "$TASK/synthetic" --model "$OUT/$name/rhm.safetensors" --rhm-stats $stats \
      --out "$OUT/q_$name/unseen_$stats" --json "$OUT/q_$name/unseen_$stats.json"
  done
  $PY -m frerec_fast.training.card "$OUT/$name/rhm.safetensors" frerec_fast/data/rhm --name $name \
    --quality "$BUNDLED" "$OUT/q_$name/bundled_shr.json" \
    --quality "$BUNDLED, rhm_stats=rhm" "$OUT/q_$name/bundled_rhm.json" \
    --quality "$UNSEEN" "$OUT/q_$name/unseen_shr.json" \
    --quality "$UNSEEN, rhm_stats=rhm" "$OUT/q_$name/unseen_rhm.json"
done
