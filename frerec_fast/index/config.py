"""What an index is made with (``IndexConfig``), its error type, and the resampling and
thumbnails that both index builds and every query use (method §4)."""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..reference.checks import DOMAINS, WIN, band_is_empty
from ..spectral import luma


class IndexFileError(ValueError):
    """An index file is missing, corrupt, or of another version."""


def _pair(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _strict_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    return v


@dataclass(frozen=True)
class IndexConfig:
    """How an index was made. Checked on creation: ratio in [0, 1] with a non-empty
    high band at the working size, a known domain, sizes of at least 1 pixel (the
    retrieval size at least SSIM's 11x11 window), 1 or 3 channels."""
    ratio: float = 0.5
    domain: str = "complex"
    work_size: tuple[int, int] = (64, 64)
    retrieval_size: tuple[int, int] = (64, 64)
    channels: int = 1

    def __post_init__(self):
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, numbers.Real) \
                or not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must be a number in [0, 1], got {self.ratio!r}")
        object.__setattr__(self, "ratio", float(self.ratio))  # JSON-able (numpy floats)
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        for name, least in (("work_size", 1), ("retrieval_size", WIN)):
            size = getattr(self, name)
            if not isinstance(size, tuple) or len(size) != 2 or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < least for v in size):
                raise ValueError(f"{name} must be two integers >= {least}, got {size!r}")
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if band_is_empty(*self.work_size, self.ratio):
            raise ValueError(f"the high band of the {self.work_size} working size at ratio "
                             f"{self.ratio} is empty")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        """From ``to_dict``'s form, strictly typed (an index file is untrusted input):
        ValueError saying which field is missing or wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        missing = {"ratio", "domain", "work_size", "retrieval_size", "channels"} - set(d)
        if missing:
            raise ValueError(f"config lacks {sorted(missing)}")
        sizes = {}
        for name in ("work_size", "retrieval_size"):
            v = d[name]
            if not isinstance(v, list) or len(v) != 2:
                raise ValueError(f"{name} must be a list [height, width], got {v!r}")
            sizes[name] = tuple(_strict_int(name, x) for x in v)
        if not isinstance(d["domain"], str):
            raise ValueError(f"domain must be a string, got {d['domain']!r}")
        return cls(ratio=d["ratio"], domain=d["domain"], channels=_strict_int("channels",
                   d["channels"]), **sizes)


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an image batch: area averaging when shrinking (method §4), bicubic
    (clamped to [0, 1]) when enlarging; unchanged at the same size.

    x: [B, C, H, W]. Returns: [B, C, size[0], size[1]].
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def thumbnails(x: torch.Tensor, retrieval_size: tuple[int, int]) -> torch.Tensor:
    """Luma retrieval thumbnails (method §4). x: [B, C, H, W] -> [B, 1, h, w] float32."""
    return resample(luma(x.float()), retrieval_size)
