"""Toolchain checks that need no GPU: Triton's ahead-of-time compile of every kernel,
NVRTC's compile of every CUDA source (the CuPy path), and the CUDA kernels run on the CPU
by emulation. A package (this file) so that its module names cannot clash with other
test files; tests/ stays on ``sys.path`` (tests/conftest.py) for the shared helpers."""
