"""Thin Python wrappers of the compiled (C++ CPU, CUDA) ops; dispatch lives in ``backends``."""
