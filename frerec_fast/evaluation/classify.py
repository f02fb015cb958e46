"""Downstream classifiers of ``frerec eval`` (paper Table 2): backbones and training.

Budget: every method trains for the same fixed number of optimizer steps (mini-batches
drawn with replacement from its training set), so that methods with more data
(GDA: real + synthetic) do not also get more updates than RAW; only the data differ.
The default, 200 steps of 32 images, is 6400 draws: about 37 passes over 171 real
training images, 15 over those plus 256 synthetic ones; about 7 s per run of the small
CNN at 64x64 on one (shared) CPU core here.
``small`` (default): a 4-layer CNN, about 15 k parameters. ``resnet18``: torchvision's,
``weights=None``, with a stem taking the images' channel count, for GPU users.
Deterministic given the seed (weights, batches and augmentation draws all come from it;
on CPU with one thread count).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import afa, autoaugment, mixup

BACKBONES = ("small", "resnet18")
AUGMENTS = (None, "autoaugment", "mixup", "afa")


class SmallCNN(nn.Module):
    """A compact CNN: a stride-2 4x4 stem (``width`` channels), then Conv3x3-BN-ReLU
    blocks of 2, 4, 4 x ``width`` channels with 2x2 max-pools between, global average
    pool, linear head. About 15 k parameters at the default width 8 (about 3 M
    multiply-adds per 64x64 image). x: [B, C, H, W] in [0, 1] -> logits [B, K]."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 8):
        super().__init__()
        chans = (2 * width, 4 * width, 4 * width)
        layers = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1, bias=False),
                  nn.BatchNorm2d(width), nn.ReLU(True)]
        c = width
        for i, o in enumerate(chans):
            layers += [nn.Conv2d(c, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(True)]
            if i < len(chans) - 1:
                layers.append(nn.MaxPool2d(2))
            c = o
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> pooled features [B, 4 * width] (the head removed)."""
        return self.body(x * 2.0 - 1.0).mean((-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (weights=None) with an ``in_channels`` stem."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        import importlib

        from .tv import torchvision

        torchvision("the resnet18 backbone")
        models = importlib.import_module("torchvision.models")
        net = models.resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.fc = net.fc
        net.fc = nn.Identity()
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, 512]."""
        return self.net(x * 2.0 - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def make_backbone(name: str, in_channels: int, num_classes: int, seed: int) -> nn.Module:
    """A freshly initialised classifier; its weights depend only on ``seed``."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN(in_channels, num_classes) if name == "small" else ResNet18(in_channels, num_classes)


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, backbone: str = "small",
                     steps: int = 300, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
                     augment: str | None = None, device: str | torch.device = "cpu",
                     on_step: Callable[[], None] | None = None) -> nn.Module:
    """Train a classifier for exactly ``steps`` AdamW steps (cosine learning rate).

    x: [N, C, H, W] float in [0, 1]; y: [N] int64 in 0..num_classes-1.
    augment: None, "autoaugment", "mixup" or "afa" (applied to each drawn batch).
    Returns the model in eval mode on ``device``.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    dev = torch.device(device)
    model = make_backbone(backbone, x.shape[1], num_classes, seed).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
        xb, yb = x[idx], y[idx]
        target = yb
        if augment == "autoaugment":
            xb = autoaugment(xb, gen)
        elif augment == "afa":
            xb = afa(xb, gen)
        elif augment == "mixup":
            xb, target = mixup(xb, yb, num_classes, gen)
        logits = model(xb.to(dev))
        loss = F.cross_entropy(logits, target.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step()
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities. x: [N, C, H, W] -> [N, K] float64 NumPy."""
    dev = next(model.parameters()).device
    out = [torch.softmax(model(x[i:i + batch_size].to(dev)).double(), 1).cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """The backbone's pooled features (classification head removed). x: [N, C, H, W] -> [N, D]."""
    dev = next(model.parameters()).device
    model.eval()
    out = [model.features(x[i:i + batch_size].to(dev)).double().cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).numpy()
