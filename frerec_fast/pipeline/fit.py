"""Does the RHM fit this run's real images? A check run once per plan, before any output.

The RHM is trained to leave clean real images alone (pass-through, docs/rhm_quality.md).
On real images unlike its training set (another modality, contrast or noise level) it can
paint its own texture instead: the shipped model gives 31 dB on diffusion b0 EPI slices
and 42-48 dB on other real images it never saw (§8 there), against >= 50 dB on the two
head sets it was made for. A run cannot see its real images, but its index holds their
thumbnails, so the RHM alone is run on some of them and the PSNR of its output against
them is reported (``report["rhm_fit"]``) and warned about below ``THRESHOLD_DB``. This
measures the model against the user's own real data; it does not change any output.

The thumbnails are at the index's retrieval size. Where the working size is the same (the
default for 64x64 data) the run's own engine checks them; where it differs they are
downsampled versions of the images (upsampling them would hide the high band the RHM acts
on), so the RHM module runs them eagerly at that size and the report says so.
"""
from __future__ import annotations

import logging

import torch

from ..spectral import psnr

log = logging.getLogger("frerec_fast")

THRESHOLD_DB = 50.0   # docs/rhm_quality.md: the pass-through target
SAMPLE = 16           # index images checked: evenly spaced positions, so deterministic
PSNR_CAP_DB = 100.0   # as training's validation: an all-but-exact image cannot lift the mean
FOREGROUND = 0.15     # the bundled data's rule: >= 15 % of pixels above 0.1, else background


def passthrough_psnr(run, x: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, peak 1, capped at PSNR_CAP_DB) of ``run(x)`` clipped to [0, 1] against
    ``x``, per image; NaN where the output is not finite.

    x: [N, 1, h, w] float32 in [0, 1]. Returns: [N] float64 on the CPU.
    """
    with torch.inference_mode():
        y = run(x).float().clamp(0.0, 1.0)
    return psnr(y, x).cpu().clamp(max=PSNR_CAP_DB)  # NaN stays NaN


def sample_positions(n: int, k: int = SAMPLE) -> list[int]:
    """``min(k, n)`` evenly spaced positions in 0..n-1, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({i * (n - 1) // (k - 1) for i in range(k)})


def rhm_fit(net, index, device: torch.device) -> dict:
    """The report's ``rhm_fit`` block for ``net`` (an ``RHMEngine``) on ``index``'s images;
    logs a warning when the mean PSNR is below THRESHOLD_DB. Never raises: a check that
    cannot run is reported as skipped, with the reason."""
    cfg = index.config
    if cfg.channels != 1:
        # Thumbnails are luma; a colour model needs its images, which the index lacks.
        return {"checked": 0, "skipped": f"the index keeps 1-channel thumbnails of "
                f"{cfg.channels}-channel images; run scripts/passthrough.py on real images"}
    try:
        x = index.thumbs_at(sample_positions(len(index))).float().clamp(0.0, 1.0)
        x = x[(x > 0.1).flatten(1).float().mean(1) >= FOREGROUND]
        if not len(x):
            return {"checked": 0, "skipped": "every sampled index image is background"}
        same = tuple(cfg.retrieval_size) == tuple(cfg.work_size)
        run = net if same else getattr(net, "module", net)
        p = passthrough_psnr(run, x.to(device))
    except Exception as e:  # noqa: BLE001 - a check must not end the run it informs
        log.warning("RHM fit check skipped: %s: %s", type(e).__name__, e)
        return {"checked": 0, "skipped": f"{type(e).__name__}: {str(e)[:200]}"}
    size = "x".join(map(str, cfg.retrieval_size))
    on = (f"index thumbnails ({size}), RHM alone (no SHR), "
          + ("the run's engine" if same else "downsampled from the images: the RHM module "
             "eagerly, an approximation"))
    if bool(torch.isnan(p).any()):
        out = {"checked": len(p), "psnr_db": None, "lowest_db": None,
               "threshold_db": THRESHOLD_DB, "fits": False, "on": on,
               "reason": "non-finite RHM outputs on clean real images"}
        log.warning("the RHM gives non-finite outputs on clean real images of this index")
        return out
    mean = float(p.mean())
    out = {"checked": len(p), "psnr_db": mean, "lowest_db": float(p.min()),
           "threshold_db": THRESHOLD_DB, "fits": mean >= THRESHOLD_DB, "on": on}
    if not out["fits"]:
        log.warning("%s", advice(out))
    return out


def advice(fit: dict) -> str:
    """The warning for a model that does not fit (the CLI summary points back to it)."""
    return (f"the RHM changes clean real images of this index by PSNR {fit['psnr_db']:.1f} dB "
            f"(lowest {fit['lowest_db']:.1f}; < {fit['threshold_db']:.0f} dB on "
            f"{fit['checked']} of them): it was not trained on images like these and adds its "
            f"own texture. Use SHR alone (frerec shr / model=False), or fine-tune it on your "
            f"real images (frerec train REAL OUT --init default) and check again "
            f"(docs/rhm_quality.md section 8)")
