"""RHM training (method §5): ``train_rhm``, resumable checkpoints, the shipped default model.

train.py (the loop), data.py (image cache, per-step draws), state.py (optimizer state and
resume markers), cli.py (``frerec train`` / ``python -m frerec_fast.training``), default.py.
"""
from .default import default_model_path
from .state import ResumeError, lr_at
from .train import train_rhm

__all__ = ["train_rhm", "default_model_path", "ResumeError", "lr_at"]
