"""RHM: Restormer's U-shape with FET-blocks (FESA + GDFN), method §5 / paper Fig. 4."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RHMConfig
from .fesa import FESA, MDTA

MULTIPLE = 8  # three 2x pixel-unshuffles


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at each pixel, with weight and bias (Restormer's 'WithBias').

    x: [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=1, keepdim=True)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + self.eps)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network. x: [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, dim: int, expansion: float = 2.66, bias: bool = False):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class FETBlock(nn.Module):
    """x = x + Attn(LN(x)); x = x + GDFN(LN(x)), Attn = FESA increment or plain MDTA.

    x: [B, C, H, W] -> [B, C, H, W]. See fesa.py for why FESA returns only the increment.
    """

    def __init__(self, dim: int, heads: int, cfg: RHMConfig):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = (FESA(dim, heads, cfg.bias, cfg.n_rings, cfg.n_sectors, cfg.dft) if cfg.fesa
                     else MDTA(dim, heads, cfg.bias))
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GDFN(dim, cfg.ffn_expansion, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _stage(n: int, dim: int, heads: int, cfg: RHMConfig) -> nn.Sequential:
    return nn.Sequential(*[FETBlock(dim, heads, cfg) for _ in range(n)])


class Downsample(nn.Sequential):
    """[B, C, H, W] -> [B, 2C, H/2, W/2]: 3x3 conv to C/2 then pixel-unshuffle."""

    def __init__(self, dim: int):
        super().__init__(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    """[B, C, H, W] -> [B, C/2, 2H, 2W]: 3x3 conv to 2C then pixel-shuffle."""

    def __init__(self, dim: int):
        super().__init__(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


def pad_to_multiple(x: torch.Tensor, multiple: int = MULTIPLE) -> tuple[torch.Tensor, int, int]:
    """Pad the bottom/right of x: [B, C, H, W] to multiples of `multiple`.

    Reflect padding (no artificial edge in the spectrum the FESA branch sees); a side too
    short to reflect (pad >= size, e.g. a 3-pixel image) falls back to replicate.
    Returns (padded, H, W) so the caller can crop back.
    """
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, h, w
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), h, w


OUTPUT_INIT_SCALE = 0.01


class RHM(nn.Module):
    """The RHM denoising auto-encoder (FET-Restormer), `fesa=False` for plain Restormer.

    forward(x: [B, C, H, W] float32, C = config.in_channels, any H, W >= 1)
        -> [B, C, H, W], x + residual predicted by the network (no clipping; the caller
        clips final outputs, method §6).
    Inputs are padded (reflect) to multiples of 8 and cropped back. In train mode the FESA
    BatchNorms need more than one value per channel at level 4 (H/8 x W/8): use a batch of
    2 or more, or inputs larger than 8 px on a side.
    """

    def __init__(self, config: RHMConfig | None = None):
        super().__init__()
        cfg = self.config = config or RHMConfig()
        d, hd, nb = cfg.dim, cfg.heads, cfg.blocks
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, 3, padding=1, bias=cfg.bias)
        self.encoder1 = _stage(nb[0], d, hd[0], cfg)
        self.down1_2 = Downsample(d)
        self.encoder2 = _stage(nb[1], d * 2, hd[1], cfg)
        self.down2_3 = Downsample(d * 2)
        self.encoder3 = _stage(nb[2], d * 4, hd[2], cfg)
        self.down3_4 = Downsample(d * 4)
        self.latent = _stage(nb[3], d * 8, hd[3], cfg)
        self.up4_3 = Upsample(d * 8)
        self.reduce3 = nn.Conv2d(d * 8, d * 4, 1, bias=cfg.bias)
        self.decoder3 = _stage(nb[2], d * 4, hd[2], cfg)
        self.up3_2 = Upsample(d * 4)
        self.reduce2 = nn.Conv2d(d * 4, d * 2, 1, bias=cfg.bias)
        self.decoder2 = _stage(nb[1], d * 2, hd[1], cfg)
        self.up2_1 = Upsample(d * 2)
        # Level 1 keeps the concatenated 2*dim channels (no reduction), as in Restormer.
        self.decoder1 = _stage(nb[0], d * 2, hd[0], cfg)
        self.refinement = _stage(cfg.refinement, d * 2, hd[0], cfg)
        self.output = nn.Conv2d(d * 2, cfg.in_channels, 3, padding=1, bias=cfg.bias)
        # Start near the identity (the global residual carries the input): SHR moves real
        # images only slightly, so a default-scaled output layer would begin far below the
        # input's own PSNR and spend most of a short CPU training climbing back. Not zero,
        # so that every parameter still gets a gradient on the first step.
        with torch.no_grad():
            self.output.weight.mul_(OUTPUT_INIT_SCALE)

    def set_dft(self, mode: str) -> "RHM":
        """Switch every FESA frequency branch to 'fft' or 'matmul' (no weights change)."""
        self.config = self.config.replace(dft=mode)  # validates the mode
        for m in self.modules():
            if hasattr(m, "dft") and isinstance(m.dft, str):
                m.dft = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"RHM expects [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        xp, h, w = pad_to_multiple(x)
        e1 = self.encoder1(self.patch_embed(xp))
        e2 = self.encoder2(self.down1_2(e1))
        e3 = self.encoder3(self.down2_3(e2))
        lat = self.latent(self.down3_4(e3))
        d3 = self.decoder3(self.reduce3(torch.cat([self.up4_3(lat), e3], dim=1)))
        d2 = self.decoder2(self.reduce2(torch.cat([self.up3_2(d3), e2], dim=1)))
        d1 = self.decoder1(torch.cat([self.up2_1(d2), e1], dim=1))
        out = self.output(self.refinement(d1)) + xp
        return out[..., :h, :w]
