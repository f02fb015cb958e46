"""A tiny real RHM for end-to-end tests: the smallest configuration with every part
(FESA included), so that a pipeline run costs seconds on 2 CPU cores."""
import torch

import frerec_fast as ff
from frerec_fast.model import RHM, RHMConfig

TINY = dict(dim=8, heads=(1, 1, 1, 1), blocks=(1, 1, 1, 1), refinement=0, n_rings=4, n_sectors=8)


def trained_tiny(c: int = 1) -> RHM:
    """A tiny RHM after two AdamW steps (BatchNorm running stats are not the defaults)."""
    torch.manual_seed(0)
    m = RHM(RHMConfig(in_channels=c, **TINY)).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for _ in range(2):
        x = torch.rand(4, c, 64, 64)
        ff.model.rhm_loss(m(x), x).backward()
        opt.step()
        opt.zero_grad()
    return m.eval()
