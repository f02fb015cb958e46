"""The RHM's training inputs: SHR-perturbed real crops, drawn from a distribution wide
enough to cover what the RHM meets at inference.

method §5 trains the RHM on ``SHR(x)`` with ``x``'s own nearest real neighbours. Measured on
the bundled data (docs/rhm_quality.md), that alone teaches the wrong job:
  * SHR with near neighbours barely moves a real image (about 51 dB at K = 20), and SHR
    keeps the *shape* of the high band (it rescales the whole band by one statistic), so
    the network only ever sees "the right spectrum at a slightly wrong level" and learns
    to invert that rescaling. On a synthetic image it then restores the generator's own
    level, i.e. undoes SHR's alignment, and it passes the generator's high-band *shape*
    (the DCGAN's rising MRI profile) straight through, because no training input had it;
  * it never sees a clean input, so it adds its own error floor to images SHR leaves alone.
So each training image draws one of three perturbations (a ``Perturbation`` sets the
fractions; ``Perturbation.spec()`` is method §5 exactly):
  * **identity**: the clean crop itself (target = input);
  * **SHR** with the nearest neighbours (method §5), or with a bank of K *random* real
    images (a stronger, retrieval-independent change of level; off by default: it
    teaches the network to restore a level, which on a synthetic image is the
    generator's, undoing SHR; docs/rhm_quality.md);
  * before that SHR, for a share of the images, a random smooth **radial gain** on the
    high band (``band_tilt``): a slope and a curvature of log-amplitude over the band, so
    the input's high-band shape differs from a real image's the way a generator's does.
Every draw comes from a generator seeded by (seed, step), so resume stays bit-exact.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..seeding import image_seed


@dataclass(frozen=True)
class Perturbation:
    """Fractions of each training input kind and the radial gain's range.

    identity: share of clean inputs. random_bank: share of the SHR inputs whose bank is
    K random real images instead of the nearest K. tilt: share of the SHR inputs that get
    a random radial high-band gain first. max_slope, max_curve: log10-amplitude slope
    and curvature of that gain at the band's outer edge, drawn uniformly in +-max.
    """
    identity: float = 0.3
    random_bank: float = 0.0
    tilt: float = 0.8
    max_slope: float = 1.0
    max_curve: float = 0.5

    def __post_init__(self):
        for name in ("identity", "random_bank", "tilt"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"perturbation {name} must be in [0, 1], got {v!r}")
        if self.max_slope < 0 or self.max_curve < 0:
            raise ValueError("max_slope and max_curve must be >= 0")

    @classmethod
    def spec(cls) -> "Perturbation":
        """method §5 exactly: SHR with the nearest neighbours for every image."""
        return cls(identity=0.0, random_bank=0.0, tilt=0.0, max_slope=0.0, max_curve=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Draws:
    """One step's per-image choices. All [B]: identity, random_bank (bool), slope, curve."""
    identity: torch.Tensor
    random_bank: torch.Tensor
    slope: torch.Tensor
    curve: torch.Tensor


def draw(p: Perturbation, batch: int, seed: int, step: int) -> Draws:
    """The per-image draws of one step; a function of (p, batch, seed, step) only."""
    g = torch.Generator(device="cpu").manual_seed(image_seed(seed, "frerec_fast.train/perturb", step))
    u = torch.rand(batch, 5, generator=g, dtype=torch.float64)
    tilt = u[:, 2] < p.tilt
    return Draws(identity=u[:, 0] < p.identity, random_bank=u[:, 1] < p.random_bank,
                 slope=torch.where(tilt, (2 * u[:, 3] - 1) * p.max_slope, 0.0).float(),
                 curve=torch.where(tilt, (2 * u[:, 4] - 1) * p.max_curve, 0.0).float())


def random_banks(mu: torch.Tensor, sigma: torch.Tensor, self_pos: torch.Tensor, k: int,
                 seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Banks of k random index entries per image, never the image itself.

    mu, sigma: [N, C] index statistics; self_pos: [B] int64 (-1: not in the index).
    Returns: mu_bank, sigma_bank [B, k, C] (k <= N - 1).
    """
    n = mu.shape[0]
    g = torch.Generator(device="cpu").manual_seed(image_seed(seed, "frerec_fast.train/bank", step))
    rows = []
    for s in self_pos.tolist():
        ids = torch.randperm(n - 1 if s >= 0 else n, generator=g)[:k]
        if s >= 0:
            ids = ids + (ids >= s).long()  # skip the image's own entry
        rows.append(ids)
    ids = torch.stack(rows).to(mu.device)
    return mu[ids], sigma[ids]


def band_tilt(x: torch.Tensor, slope: torch.Tensor, curve: torch.Tensor,
              ratio: float = 0.5) -> torch.Tensor:
    """Multiply the high band's spectrum by a smooth radial gain.

    With t = clip((rho - ratio) / (1 - ratio), 0, 1), rho the frequency radius as a
    fraction of Nyquist (elliptical for H != W), the gain is
    ``10 ** (slope * t + curve * 4 t (t - 1))``: 1 on the low band, ``10 ** slope`` at
    Nyquist and beyond, log-linear in t plus a bump of height ``-curve`` mid-band. The
    gain is real and symmetric under f -> -f, so the result is real.
    x: [B, C, H, W] float32; slope, curve: [B]. Returns: [B, C, H, W] float32 (unclipped).
    """
    b, _, h, w = x.shape
    if ratio >= 1.0:  # no high band (method §1 allows r = 1): nothing to tilt
        return x.float().clone()
    fu = torch.fft.fftfreq(h, device=x.device) * 2.0   # in units of Nyquist
    fv = torch.fft.fftfreq(w, device=x.device) * 2.0
    rho = torch.sqrt(fu[:, None] ** 2 + fv[None, :] ** 2)
    t = ((rho - ratio) / (1.0 - ratio)).clamp(0.0, 1.0)
    expo = (slope.view(b, 1, 1, 1).to(x.device) * t
            + curve.view(b, 1, 1, 1).to(x.device) * 4.0 * t * (t - 1.0))
    gain = torch.pow(10.0, expo)
    return torch.fft.ifft2(torch.fft.fft2(x.float()) * gain).real.contiguous()


def strength_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """PSNR (dB) of a perturbed batch against its clean one: how strong the change is."""
    mse = float(((x_hat - x) ** 2).mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)
