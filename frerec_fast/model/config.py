"""RHMConfig: every size and switch of the RHM network, JSON-able for checkpoints."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

DFT_MODES = ("fft", "matmul")
# FESA's polar grid: cells of the pooled map per image (the paper's is 16 x 32 = 512).
MAX_POLAR_CELLS = 1 << 16


@dataclass(frozen=True)
class RHMConfig:
    """Sizes of the RHM denoising auto-encoder (method §5; defaults are the paper's).

    in_channels: 1 (grayscale) or 3 (RGB); the output has the same channels (global residual).
    dim: channels at level 1; level i (1-based) has dim * 2**(i-1).
    heads, blocks: per level 1..4 (the latent is level 4); decoder levels reuse them.
    refinement: FET-blocks after the decoder, at level-1 resolution and 2*dim channels.
    fesa: False gives the plain Restormer block (MDTA only), the paper's ablation.
    n_rings, n_sectors: polar grid of FESA's frequency branch (see reference/rings.py).
    dft: "fft" (torch.fft, for training and eager inference) or "matmul" (DFT as matrix
        products, which exports to ONNX at opsets 17-20 and runs faster in onnxruntime).
    """
    in_channels: int = 1
    dim: int = 48
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    blocks: tuple[int, int, int, int] = (2, 4, 6, 8)
    refinement: int = 2
    ffn_expansion: float = 2.66
    bias: bool = False
    fesa: bool = True
    n_rings: int = 16
    n_sectors: int = 32
    dft: str = "fft"

    def __post_init__(self):
        # Types first: a checkpoint's sidecar is untrusted JSON, and a float or a string
        # here would fail deep inside a layer with no hint of the cause.
        for name in ("in_channels", "dim", "refinement", "n_rings", "n_sectors"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        for name in ("heads", "blocks"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or any(
                    isinstance(x, bool) or not isinstance(x, int) for x in v):
                raise ValueError(f"{name} must be a list of integers, got {v!r}")
        for name in ("bias", "fesa"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.ffn_expansion, bool) or not isinstance(self.ffn_expansion, (int, float)) \
                or not math.isfinite(self.ffn_expansion):
            raise ValueError(f"ffn_expansion must be a finite number, got {self.ffn_expansion!r}")
        # JSON gives lists; tuples keep the config hashable and comparable.
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if len(self.heads) != 4 or len(self.blocks) != 4:
            raise ValueError(f"heads and blocks need 4 entries (levels 1-4), got {self.heads}, {self.blocks}")
        if self.dim < 1 or min(self.heads) < 1 or min(self.blocks) < 0 or self.refinement < 0:
            raise ValueError("dim and heads must be >= 1, blocks and refinement >= 0")
        # Level-1 decoder and refinement run at 2*dim with heads[0]; encoder level i at dim*2**i.
        for level, h in enumerate(self.heads):
            ch = self.dim * 2 ** level
            if ch % h:
                raise ValueError(f"level {level + 1}: {ch} channels not divisible by {h} heads")
        if self.n_rings < 1 or self.n_sectors < 1:
            raise ValueError("n_rings and n_sectors must be >= 1")
        if self.n_rings * self.n_sectors > MAX_POLAR_CELLS:
            # Not in the weights: an absurd grid would only show as memory at run time.
            raise ValueError(f"n_rings * n_sectors must be <= {MAX_POLAR_CELLS}, got "
                             f"{self.n_rings} * {self.n_sectors}")
        if self.dft not in DFT_MODES:
            raise ValueError(f"dft must be one of {DFT_MODES}, got {self.dft!r}")
        if self.ffn_expansion <= 0:
            raise ValueError("ffn_expansion must be > 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["heads"], d["blocks"] = list(self.heads), list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RHMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RHMConfig fields {sorted(unknown)} (a newer checkpoint format?)")
        return cls(**d)

    def replace(self, **changes) -> "RHMConfig":
        return dataclasses.replace(self, **changes)
