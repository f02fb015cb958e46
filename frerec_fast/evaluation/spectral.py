"""Frequency gaps of ``frerec eval`` (method §8, paper Fig. 6) under both named protocols.

* baseline: raw synthetic vs raw real test images;
* "against raw real": calibrated synthetic vs raw real test images;
* "deployed": calibrated synthetic vs calibrated real test images (method §6: everything
  that feeds a classifier is calibrated).

All images are at one size (the index's working size) before profiles are taken.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..spectral import frequency_gap, spectral_profile

BASELINE = "baseline (raw synthetic vs raw real test)"
AGAINST_RAW = "against raw real"
DEPLOYED = "deployed"
PROTOCOLS = {AGAINST_RAW: "calibrated synthetic vs raw (uncalibrated) real test images",
             DEPLOYED: "calibrated synthetic vs calibrated real test images (method §6)"}


def set_profiles(x: torch.Tensor, labels: Sequence[int] | None,
                 classes: Sequence[str] | None) -> dict:
    """Mean log10 radial power profiles of a set, overall and per class.

    x: [N, C, H, W] in [0, 1]; labels: [N] class numbers or None.
    Returns {"overall": [R] float64, "per_class": {class: [R]}} (empty per_class when
    unlabelled; a class without images is left out).
    """
    per = spectral_profile(x, per_image=True)  # [N, R]
    out = {"overall": per.mean(0), "per_class": {}}
    if labels is not None:
        lab = torch.as_tensor(list(labels))
        for c, name in enumerate(classes):
            sel = lab == c
            if sel.any():
                out["per_class"][name] = per[sel].mean(0)
    return out


def gap(a: dict, b: dict, ratio: float = 0.5) -> dict:
    """Frequency gaps between two ``set_profiles`` results, overall and per class.

    Returns {"overall": {"high_band", "all_radii"}, "per_class": {class: {...}}}.
    """
    def one(pa, pb):
        hi, al = frequency_gap(pa, pb, ratio)
        return {"high_band": hi, "all_radii": al}

    return {"overall": one(a["overall"], b["overall"]),
            "per_class": {c: one(a["per_class"][c], b["per_class"][c])
                          for c in a["per_class"] if c in b["per_class"]}}


def protocol_gaps(raw_real: dict, cal_syn: dict, cal_real: dict, ratio: float = 0.5) -> dict:
    """The gaps of one calibration variant under both protocols.

    Each argument is a ``set_profiles`` result: the raw real test set, and the synthetic
    and real test sets calibrated with the variant. Returns {AGAINST_RAW: gap, DEPLOYED: gap}.
    """
    return {AGAINST_RAW: gap(cal_syn, raw_real, ratio), DEPLOYED: gap(cal_syn, cal_real, ratio)}
