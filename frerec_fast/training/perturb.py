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
    # Appearance of the clean crop itself (input and target alike; ``appearance``): so
    # that real images of another contrast, noise level or resolution pass through.
    gamma: float = 0.0   # max |ln gamma| of a random gamma curve x ** gamma
    noise: float = 0.0   # max std of added Gaussian noise (magnitude taken: Rician-like)
    blur: float = 0.0    # share of crops resampled down (factor 1.5-2.5) and back up

    def __post_init__(self):
        for name in ("identity", "random_bank", "tilt", "blur"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"perturbation {name} must be in [0, 1], got {v!r}")
        if min(self.max_slope, self.max_curve, self.gamma, self.noise) < 0:
            raise ValueError("max_slope, max_curve, gamma and noise must be >= 0")

    @property
    def changes_appearance(self) -> bool:
        return bool(self.gamma or self.noise or self.blur)

    @classmethod
    def spec(cls) -> "Perturbation":
        """method §5 exactly: SHR with the nearest neighbours for every image."""
        return cls(identity=0.0, random_bank=0.0, tilt=0.0, max_slope=0.0, max_curve=0.0)

    def to_dict(self) -> dict:
        # Appearance fields only when used: a run recorded before they existed resumes.
        d = asdict(self)
        return {k: v for k, v in d.items() if v or k not in ("gamma", "noise", "blur")}


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


def appearance(x: torch.Tensor, p: Perturbation, seed: int, step: int) -> torch.Tensor:
    """The clean crops with a random gamma, blur and noise, drawn per image from (seed,
    step): the real images the RHM must learn to pass through and restore, widened
    beyond the training set's own contrast, resolution and noise (docs/rhm_quality.md).
    Each image: half get noise (std uniform in [0, noise]), a ``blur`` share a
    down-and-up resampling, every one a gamma in exp([-gamma, gamma]).
    x: [B, C, h, w] float32 in [0, 1] -> [B, C, h, w] float32 in [0, 1].
    """
    b, _, h, w = x.shape
    g = torch.Generator(device="cpu").manual_seed(image_seed(seed, "frerec_fast.train/appearance", step))
    u = torch.rand(b, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=g).to(x.device)
    out = []
    for i in range(b):
        xi = x[i:i + 1]
        if u[i, 0] < p.blur:
            f = 1.5 + float(u[i, 1])
            small = torch.nn.functional.interpolate(
                xi, size=(max(2, round(h / f)), max(2, round(w / f))), mode="area")
            xi = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear",
                                                 align_corners=False)
        gam = math.exp((2 * float(u[i, 2]) - 1) * p.gamma)
        xi = xi.clamp(0.0, 1.0) ** gam
        if u[i, 3] < 0.5 and p.noise > 0:
            std = p.noise * float(u[i, 3]) * 2  # uniform in [0, noise]
            xi = (xi + std * noise[i:i + 1]).abs()
        out.append(xi.clamp(0.0, 1.0))
    return torch.cat(out).float().contiguous()
