"""Image-level augmentations compared with GDA in ``frerec eval`` (paper Table 2).

AutoAugment and Mix-up are torchvision's own (``transforms.v2``); AFA is written here
from its paper's description. Every function takes a ``torch.Generator`` so that a
training run is reproducible from its seed.
"""
from __future__ import annotations

import math

import torch

from .tv import torchvision


def _v2(purpose: str):
    import importlib

    torchvision(purpose)
    return importlib.import_module("torchvision.transforms.v2")


def afa(x: torch.Tensor, gen: torch.Generator, max_freq: int | None = None,
        amplitude_std: float = 0.2) -> torch.Tensor:
    """Fourier-basis augmentation (AFA): add one random planar Fourier basis wave per image.

    Vaish, Wang and Strisciuglio, "Fourier-basis Functions to Bridge Augmentation Gap:
    Rethinking Frequency Augmentation in Image Classification", CVPR 2024. Each image
    gets ``a * sin(2 pi (ku * i / H + kv * j / W) + phi)`` added to every channel: a
    single-frequency sinusoid with frequency magnitude ``f ~ U{1..max_freq}`` (cycles
    per image; default ``min(H, W) // 2 - 1``), orientation ``theta ~ U[0, pi)`` (the
    wave vector ``(f cos theta, f sin theta)`` rounded to the DFT grid, so the wave is
    periodic on the image and touches exactly one pair of conjugate frequencies),
    phase ``phi ~ U[0, 2 pi)`` and amplitude ``a = |N(0, amplitude_std)|``. Not clipped,
    as in the paper (the classifier sees the sum).

    x: [B, C, H, W] float. Returns: [B, C, H, W] float, x plus the waves.
    """
    b, _, h, w = x.shape
    fmax = max_freq or max(min(h, w) // 2 - 1, 1)
    f = torch.randint(1, fmax + 1, (b,), generator=gen).double()
    theta = torch.rand(b, generator=gen, dtype=torch.float64) * math.pi
    phi = torch.rand(b, generator=gen, dtype=torch.float64) * 2 * math.pi
    amp = torch.randn(b, generator=gen, dtype=torch.float64).abs() * amplitude_std
    hu, hv = (h - 1) // 2, (w - 1) // 2  # below Nyquist: +k and -k are distinct bins
    ku = torch.round(f * torch.cos(theta)).clamp(-hu, hu)
    kv = torch.round(f * torch.sin(theta)).clamp(-hv, hv)
    kv = torch.where((ku == 0) & (kv == 0), torch.ones_like(kv), kv)  # never the DC term
    i = torch.arange(h, dtype=torch.float64)[None, :, None]
    j = torch.arange(w, dtype=torch.float64)[None, None, :]
    wave = amp[:, None, None] * torch.sin(2 * math.pi * (ku[:, None, None] * i / h
                                                         + kv[:, None, None] * j / w)
                                          + phi[:, None, None])
    return (x.double() + wave[:, None]).to(x.dtype)


def autoaugment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """torchvision's ``transforms.v2.AutoAugment`` (ImageNet policy) on each image.

    AutoAugment works on uint8 images: x is rounded to 8 bits, augmented, and scaled
    back to [0, 1] (16-bit inputs lose their low bits in this method only).
    x: [B, C, H, W] float in [0, 1]. Returns: [B, C, H, W] float32.
    """
    v2 = _v2("AutoAugment")
    aug = v2.AutoAugment()
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    seeds = torch.randint(0, 2 ** 62, (x.shape[0],), generator=gen).tolist()
    out = []
    with torch.random.fork_rng(devices=[]):  # torchvision draws from the global RNG
        for img, s in zip(u8, seeds):
            torch.manual_seed(s)
            out.append(aug(img))
    return torch.stack(out).float() / 255.0


def mixup(x: torch.Tensor, y: torch.Tensor, num_classes: int, gen: torch.Generator,
          alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's ``transforms.v2.MixUp`` on a batch.

    x: [B, C, H, W] float; y: [B] int64. Returns the mixed images [B, C, H, W] and soft
    labels [B, num_classes] float.
    """
    v2 = _v2("Mix-up")
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return v2.MixUp(alpha=alpha, num_classes=num_classes)(x, y)
