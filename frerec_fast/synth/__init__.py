"""A small DCGAN written in the project, to make synthetic test images offline.

``train`` fits it deterministically on CPU; ``generate`` writes 16-bit PNGs; weights are
safetensors with a JSON config beside them. CLI: ``python -m frerec_fast.synth --help``.
"""
from .checkpoint import load_generator, save_generator, state_digest
from .dcgan import DCGANConfig, Discriminator, Generator
from .generate import generate, sample
from .train import train

__all__ = ["DCGANConfig", "Generator", "Discriminator", "train", "generate", "sample",
           "load_generator", "save_generator", "state_digest"]
