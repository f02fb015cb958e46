"""Feature-space view of ``frerec eval`` (paper Fig. 7): an encoder trained on 80 % of
the real training images, features of the other 20 % and of as many synthetic images,
their t-SNE embedding and the Fréchet distance between the two sets.

Labelled inputs: the encoder is the evaluation's classifier backbone trained on the
80 % (labels used), head removed. Unlabelled inputs: there are no labels to train on,
and this tool uses no self-supervised training, so the encoder is the same backbone at
a fixed random initialisation (seeded): a fixed random convolutional feature map,
which still separates sets whose local statistics differ.
"""
from __future__ import annotations

import numpy as np
import torch

from .classify import make_backbone, train_classifier


def split_80_20(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)`` into 80 % (encoder training) and 20 %.

    Returns two sorted int arrays; the 20 % part has at least 2 items when n >= 4.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = max(2 if n >= 4 else 1, int(round(0.2 * n)))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def make_encoder(x: torch.Tensor, y: torch.Tensor | None, num_classes: int | None, *,
                 backbone: str, steps: int, batch_size: int, seed: int, device) -> tuple[torch.nn.Module, str]:
    """The feature encoder: trained on (x, y) when labelled, else random-init.

    x: [N, C, H, W]. Returns the model (call ``.features``) and how it was made.
    """
    if y is None:
        return make_backbone(backbone, x.shape[1], 2, seed).to(device).eval(), \
            "random initialisation (unlabelled inputs: no training)"
    model = train_classifier(x, y, num_classes, backbone=backbone, steps=steps,
                             batch_size=batch_size, seed=seed, device=device)
    return model, f"trained on {x.shape[0]} real training images (80 %), {steps} steps"


def tsne_2d(feats: np.ndarray, seed: int = 0) -> np.ndarray:
    """scikit-learn t-SNE of [N, D] features to [N, 2] (fixed ``random_state``;
    perplexity min(30, (N - 1) / 3), as t-SNE needs perplexity < N)."""
    from .deps import need

    manifold = need("sklearn.manifold", "the t-SNE plot of frerec eval")
    perplexity = float(min(30.0, max((feats.shape[0] - 1) / 3.0, 1.0)))
    return manifold.TSNE(n_components=2, perplexity=perplexity, init="pca",
                         random_state=seed).fit_transform(np.asarray(feats, dtype=np.float64))
