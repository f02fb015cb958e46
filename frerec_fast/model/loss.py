"""RHM training loss, method §5, Eq. 7: pixel MSE plus MSE of the ortho rfft2 amplitudes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rhm_loss(pred: torch.Tensor, target: torch.Tensor, lambda_f: float = 1.0) -> torch.Tensor:
    """MSE(pred, target) + lambda_f * MSE(|rfft2(pred)|, |rfft2(target)|), norm="ortho".

    pred, target: [B, C, H, W] float. Returns a scalar. Amplitudes, not complex spectra:
    a squared error on the complex spectra would equal the pixel MSE (Parseval). The
    frequency mean runs over the rfft2 half-spectrum [B, C, H, W // 2 + 1].
    """
    if pred.shape != target.shape:
        raise ValueError(f"rhm_loss: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    pixel = F.mse_loss(pred, target)
    if lambda_f == 0:
        return pixel
    # torch's complex abs has gradient 0 at 0 (not NaN), so no guard is needed here.
    amp_p = torch.fft.rfft2(pred, norm="ortho").abs()
    amp_t = torch.fft.rfft2(target, norm="ortho").abs()
    return pixel + lambda_f * F.mse_loss(amp_p, amp_t)
