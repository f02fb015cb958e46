#!/usr/bin/env bash
# Every GPU check of the project in one bounded run, for a GPU machine that already has
# a CUDA torch (its `python3`, or $PYTHON): build, CUDA conformance tests, benchmarks,
# the demo on CUDA, one paper-size training epoch, then the whole suite on CUDA.
#
#   bash scripts/gpu_check.sh            # logs and results into $OUT (default ./gpu_check_out)
#
# Each step has its own time limit (seconds, overridable: BUDGET_BUILD=...), cut to what
# is left of BUDGET_TOTAL (default 560 s, under the device tool's 600 s per command), so
# one hang cannot eat the rest and the script always ends in time; steps run in order of
# value. A failed step is recorded in the summary and the next one runs. Outputs (at most 8 files): gpu_check.log
# (everything), summary.txt, the benchmark JSONs, demo_report.json.
# Nothing is downloaded: the CUDA torch, Triton, CuPy, pytest and pytest-benchmark
# already there are used (pip --no-index --no-deps; tests of missing optional packages
# such as pydicom, nibabel or Ray skip themselves).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 FREREC_CUDA_ARCHS=${FREREC_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16}
T0=$(date +%s)

TOTAL=${BUDGET_TOTAL:-560}

step() {  # step NAME BUDGET_SECONDS COMMAND...
  local name=$1 budget=$2
  shift 2
  local t=$(date +%s)
  local left=$(( TOTAL - (t - T0) ))
  if [ "$left" -lt 20 ]; then
    echo "$name: not run (${left}s left of ${TOTAL}s)" | tee -a "$SUMMARY" "$LOG"
    return
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  echo "===== [$name] (limit ${budget}s, at +$((t - T0))s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$budget" "$@" >>"$LOG" 2>&1
  local rc=$?
  local line="$name: rc=$rc in $(( $(date +%s) - t ))s"
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && line="$line (TIMED OUT)"
  echo "$line" | tee -a "$SUMMARY" "$LOG"
  return $rc
}

step env 60 bash -c "nvidia-smi; $PY - <<'EOF'
import torch, platform
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ('triton', 'cupy', 'numpy', 'onnxruntime', 'pytest_benchmark', 'skimage'):
    try:
        m = __import__(name)
        print(name, getattr(m, '__version__', '?'))
    except Exception as e:
        print(name, 'missing:', e)
EOF"

step build "${BUDGET_BUILD:-300}" $PY -m pip install --no-build-isolation --no-deps --no-index -v -e .
# Fails (rc 1 in the summary) unless _C holds the CUDA kernels: a silent CPU-only build
# would make the CUDA-extension tests skip and the run look green.
step import 60 $PY -c "
import sys, torch, frerec_fast as ff
from frerec_fast import _ext, backends
print('cpp', _ext.has_cpp(), 'cuda kernels in _C', _ext.has_cuda_ext())
dev = torch.device('cuda')
for op in ('shr', 'band_stats', 'ssim_topk', 'ssim_pairs', 'ring_pool', 'ring_scatter', 'ring_pool_amplitude'):
    try:
        print(op, '->', backends.resolve_name(op, 'auto', dev))
    except Exception as e:
        print(op, 'auto failed:', e)
sys.exit(0 if _ext.has_cuda_ext() else 1)
"

PYTEST="$PY -m pytest -p no:cacheprovider -q -rfEs --device=cuda"
# The kernels first: the op conformance suite (every backend and dtype against the NumPy
# oracles) on the GPU, then the modules and ops that use them.
step kernel_tests "${BUDGET_KERNELS:-180}" $PYTEST tests/ops tests/test_backends.py \
  tests/test_fesa_backends.py tests/test_ring_pool.py tests/test_spectral.py tests/test_ssim.py \
  tests/test_prefilter.py tests/test_precision.py

# Issue 6's number: paper-size RHM at 256x256, end to end against the engine alone.
step bench_256 "${BUDGET_BENCH256:-200}" $PY -m pytest -p no:cacheprovider -q \
  benchmarks/test_bench_pipeline_256.py --benchmark --benchmark-json "$OUT/bench_256.json"
step bench_kernels "${BUDGET_BENCH:-200}" $PY -m pytest -p no:cacheprovider -q benchmarks \
  --ignore=benchmarks/test_bench_pipeline_256.py --benchmark --benchmark-json "$OUT/bench_ops.json"
# Fresh folders: a rerun on a warm machine must not pick up the last run's files.
rm -rf /tmp/frerec_demo_cuda /tmp/frerec_train_paper
step demo 90 $PY -m frerec_fast.cli demo --device cuda --precision bf16 --out /tmp/frerec_demo_cuda \
  && cp /tmp/frerec_demo_cuda/demo_report.json "$OUT/demo_report.json"
step train_paper 90 $PY -m frerec_fast.cli train frerec_fast/data/real/train /tmp/frerec_train_paper \
  --preset paper --epochs 1 --batch-size 16 --device cuda --amp bf16 -q
# Whatever time is left: the whole suite on CUDA (the CPU tests run too).
step all_tests "$TOTAL" $PYTEST tests
echo "total: $(( $(date +%s) - T0 ))s" | tee -a "$SUMMARY" "$LOG"
cat "$SUMMARY"
