"""Does the RHM fit this run's real images? A check run once per plan, before any output.

The RHM is trained to leave clean real images alone (pass-through, docs/rhm_quality.md).
On real images unlike its training set (another modality, contrast or noise level) it can
paint its own texture instead: the shipped model gives 31 dB on diffusion b0 EPI slices
and 42-48 dB on other real images it never saw (§8 there), against >= 50 dB on the two
head sets it was made for. A run cannot see its real images, but its index holds their
thumbnails, so the RHM alone is run on a few of them, brought to the working size, and
the PSNR of its output against them is reported (``report["rhm_fit"]``) and warned about
below ``THRESHOLD_DB``. This measures the model against the user's own real data; it does
not change any output.
"""
from __future__ import annotations

import logging
import math

import torch

from ..index.config import resample

log = logging.getLogger("frerec_fast")

THRESHOLD_DB = 50.0   # docs/rhm_quality.md: the pass-through target
SAMPLE = 16           # index images checked: evenly spaced positions, so deterministic


def passthrough_psnr(net, thumbs: torch.Tensor, work_size: tuple[int, int],
                     device: torch.device) -> torch.Tensor:
    """PSNR (dB, peak 1) of the RHM's clipped output against its input, per image.

    thumbs: [N, 1, h, w] float16 (index thumbnails). Returns: [N] float64.
    """
    x = resample(thumbs.float(), tuple(work_size)).clamp(0.0, 1.0).to(device)
    with torch.inference_mode():
        y = net(x).float().clamp(0.0, 1.0)
    mse = ((y - x) ** 2).flatten(1).mean(1).double().cpu()
    p = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-20))
    return torch.where(torch.isfinite(mse), p, -math.inf)  # NaN outputs: no fit at all


def rhm_fit(net, index, device: torch.device) -> dict:
    """The report's ``rhm_fit`` block for ``net`` (an RHM engine) on ``index``'s images;
    logs a warning when the mean PSNR is below THRESHOLD_DB. Once per plan (a Ray actor
    plans once for all its shards)."""
    cfg = index.config
    if cfg.channels != 1:
        # Thumbnails are luma; a colour model needs its images, which the index lacks.
        out = {"checked": 0, "skipped": "the index keeps 1-channel thumbnails of "
               f"{cfg.channels}-channel images; run scripts/passthrough.py on real images"}
    else:
        n = min(SAMPLE, len(index))
        ids = torch.linspace(0, len(index) - 1, n).round().long().unique()
        try:
            p = passthrough_psnr(net, index.thumbs_at(ids), cfg.work_size, device)
        except Exception as e:  # noqa: BLE001 - a check must not end the run it informs
            log.warning("RHM fit check skipped: %s: %s", type(e).__name__, e)
            return {"checked": 0, "skipped": f"{type(e).__name__}: {str(e)[:200]}"}
        mean = float(p.mean())
        out = {"checked": len(ids), "psnr_db": mean, "lowest_db": float(p.min()),
               "threshold_db": THRESHOLD_DB, "fits": mean >= THRESHOLD_DB,
               "on": "index thumbnails at the working size, RHM alone (no SHR)"}
        if not out["fits"]:
            log.warning("%s", advice(out))
    return out


def advice(fit: dict) -> str:
    """The warning for a model that does not fit (also printed in the CLI summary)."""
    return (f"the RHM changes clean real images of this index by PSNR {fit['psnr_db']:.1f} dB "
            f"(lowest {fit['lowest_db']:.1f}; < {fit['threshold_db']:.0f} dB on "
            f"{fit['checked']} of them): it was not trained on images like these and adds its "
            f"own texture. Use SHR alone (frerec shr / model=False), or fine-tune it on your "
            f"real images (frerec train REAL OUT --init default) and check again "
            f"(docs/rhm_quality.md section 8)")
