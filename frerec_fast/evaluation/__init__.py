"""``frerec eval``: does FreRec close the frequency gap, and does a classifier trained
with calibrated synthetic images do better? (paper Fig. 6-7, Tables 2-3)

Modules: ``folders`` (ImageFolder-style inputs, validated), ``metrics`` (AUC/accuracy/F1,
Fréchet distance, bootstrap), ``augment`` (AutoAugment, Mix-up, AFA), ``classify``
(backbones, fixed-budget training), ``features`` (encoder, t-SNE), ``spectral`` (gaps
under both protocols), ``report`` (markdown, figures), ``run`` (``evaluate``).
"""
from .folders import EvalInputError
from .run import evaluate

__all__ = ["evaluate", "EvalInputError"]
