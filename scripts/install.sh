#!/usr/bin/env bash
# Create .venv at the repository root and install frerec_fast into it with the C++
# extension and every tool the tests and the demo use. Safe to re-run: it rebuilds
# only when the package's sources or build files changed.
#   FREREC_TORCH  pip requirement for torch (default torch==2.13.0, a CPU build here;
#                 elsewhere pass e.g. "torch --index-url https://download.pytorch.org/whl/cpu")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP="$VENV/bin/python -m pip"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[install] installing ${FREREC_TORCH:-torch==2.13.0}"
  # shellcheck disable=SC2086
  $PIP install -q ${FREREC_TORCH:-torch==2.13.0}
fi
# Build tools first: the package is built without isolation so that it compiles
# against the torch in this venv (and never replaces it).
$PIP install -q setuptools wheel pybind11 ninja
stamp="$VENV/.frerec_build_stamp"
want=$(cat setup.py pyproject.toml csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c "import frerec_fast._C" 2>/dev/null; then
  echo "[install] building frerec_fast (C++ extension, about a minute)"
  $PIP install -q --no-build-isolation -e ".[dev,medical,progress,plot,onnx,openvino,triton,ray,eval]"
  echo "$want" > "$stamp"
else
  echo "[install] frerec_fast is up to date in $VENV"
fi
# torchvision for frerec eval (AutoAugment, Mix-up, resnet18): the release paired with this
# torch (2.N <-> 0.(N+15)), so that pip never swaps the torch above for another one.
TV=$("$VENV/bin/python" -c "import torch; m = int(torch.__version__.split('.')[1]); print(f'0.{m + 15}.*')")
$PIP install -q "torchvision==$TV"
# NVRTC alone (no GPU needed): tests/toolchain/test_nvrtc_compile.py compiles the .cu files as
# the CuPy backend does at run time. Only into this CPU venv, never into a CUDA torch
# environment, whose own NVRTC torch pins.
$PIP install -q nvidia-cuda-nvrtc==13.0.88
"$VENV/bin/python" - <<'PY'
import frerec_fast, frerec_fast._ext as e
print(f"[install] frerec_fast {frerec_fast.__version__}: C++ extension "
      f"{'loaded' if e.has_cpp() else 'MISSING: ' + str(e.LOAD_ERROR)}")
PY
