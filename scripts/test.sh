#!/usr/bin/env bash
# Install into .venv (scripts/install.sh), then run every check CI runs:
# nvcc compile of each .cu, the CMake build + ctest, a smoke run of the benchmarks,
# and the Python test suite (CUDA-only tests skip themselves without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-68719476736}

echo "== nvcc: compile every CUDA source =="
if command -v nvcc >/dev/null 2>&1; then
  for cu in csrc/cuda/*.cu; do
    nvcc -c -std=c++17 -O3 -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
      "$cu" -o "/tmp/frerec_$(basename "$cu").o"
    echo "nvcc ok: $cu"
  done
else
  echo "nvcc not found: CUDA sources not compiled (CI has nvcc; install the CUDA toolkit to check)"
fi

echo "== CMake build + ctest =="
cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE="$PWD/.venv/bin/python" >/dev/null
cmake --build build/cmake -j2 >/dev/null
ctest --test-dir build/cmake --output-on-failure

echo "== benchmarks (one smoke round each, --benchmark-disable) =="
python -m pytest benchmarks -q --benchmark-disable -p no:cacheprovider

echo "== Python tests =="
# The Triton kernels must run in the CPU interpreter here, never be skipped for it.
export FREREC_REQUIRE_TRITON_INTERPRETER=1
# ... and the CUDA sources must compile with NVRTC (the CuPy backend's compiler).
export FREREC_REQUIRE_NVRTC=1
python -m pytest tests -q -ra -p no:cacheprovider "$@"
