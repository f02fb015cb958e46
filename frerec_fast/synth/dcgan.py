"""A small class-conditional DCGAN (Radford et al. 2016) for grayscale medical slices.

The generator upsamples with stride-2 ``ConvTranspose2d`` (kernel 4): the uneven
kernel overlap leaves the periodic "checkerboard" energy in the high band that
FreRec is meant to remove (Odena et al. 2016; Durall et al. 2020). That artefact is
the point of this model, so do not swap in resize-convolutions here.

The class (``"ct"`` / ``"mri"``) is a one-hot vector appended to the latent in the
generator and a one-hot constant map appended to the input of the discriminator, so
one model produces both modalities in chosen proportions.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class DCGANConfig:
    """Architecture; stored as JSON beside the weights."""
    image_size: int = 64
    nz: int = 64            # latent size
    ngf: int = 16           # generator width at the last (largest) feature map
    ndf: int = 16           # discriminator width at the first feature map
    classes: tuple = ("ct", "mri")
    # Fraction of each class in the training set; generate() draws classes in these proportions.
    class_fractions: tuple = field(default=(0.5, 0.5))

    def __post_init__(self):
        n = self.image_size
        if n < 8 or n & (n - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {n}")
        if len(self.class_fractions) != len(self.classes):
            raise ValueError("class_fractions must have one entry per class")

    @property
    def n_up(self) -> int:
        """Stride-2 stages from 4x4 to image_size."""
        return int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"], d["class_fractions"] = list(self.classes), list(self.class_fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DCGANConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("classes", "class_fractions"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


def _init_dcgan(m: nn.Module) -> None:
    # DCGAN's initialisation: N(0, 0.02) weights, BN scale N(1, 0.02).
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z: [B, nz], labels: [B] int64 -> images [B, 1, S, S] in [0, 1]."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        n_cls = len(cfg.classes)
        ch = cfg.ngf * 2 ** (cfg.n_up - 1)
        layers = [nn.ConvTranspose2d(cfg.nz + n_cls, ch, 4, 1, 0, bias=False),  # 1 -> 4
                  nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(cfg.n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_init_dcgan)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(labels, len(self.cfg.classes)).to(z.dtype)
        x = torch.cat([z, onehot], 1)[:, :, None, None]
        return (self.net(x) + 1.0) * 0.5  # tanh range [-1, 1] -> [0, 1]


class Discriminator(nn.Module):
    """images [B, 1, S, S] in [0, 1], labels [B] -> logits [B]."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        n_cls = len(cfg.classes)
        ch = cfg.ndf
        layers = [nn.Conv2d(1 + n_cls, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(cfg.n_up - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]  # 4x4 -> 1x1
        self.net = nn.Sequential(*layers)
        self.apply(_init_dcgan)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        onehot = nn.functional.one_hot(labels, len(self.cfg.classes)).to(x.dtype)
        maps = onehot[:, :, None, None].expand(b, onehot.shape[1], h, w)
        return self.net(torch.cat([x * 2.0 - 1.0, maps], 1)).flatten()
