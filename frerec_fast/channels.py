"""The one channel converter between an image's channels and the index/model's."""
from __future__ import annotations

import torch

from .spectral import luma


class ColourMismatch(ValueError):
    """A colour image met a 1-channel index or model in strict mode."""


def to_channels(x: torch.Tensor, channels: int, strict: str | None = None) -> torch.Tensor:
    """Match ``channels``: grey -> RGB by replication; RGB -> grey by luma, or, when
    ``strict`` names the image, only if its three channels are equal (a grey image
    stored as RGB; a real colour image raises ColourMismatch naming it).

    x: [B, C, H, W]. Returns: [B, channels, H, W] (a view when nothing is computed).
    """
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    if strict is None:
        return luma(x)
    if (x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all():
        return x[:, :1]
    raise ColourMismatch(f"{strict}: colour image, but the index/model are 1-channel "
                         "(build a 3-channel index and model for colour data)")


def from_channels(y: torch.Tensor, channels: int) -> torch.Tensor:
    """Back to the source's ``channels``: y [B, C, H, W] -> [B, channels, H, W]
    (grey -> RGB by replicating channel 0, RGB -> grey by luma)."""
    if y.shape[1] == channels:
        return y
    return y[:, :1].expand(-1, 3, -1, -1) if channels == 3 else luma(y)
