"""A helper shared by the flow tests (imported as ``from weights import randomize``)."""

import torch
from torch import nn


def randomize(module: nn.Module, *, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Replace every parameter by scale * N(0, 1), drawn from a generator seeded with ``seed``.

    Zero-initialised last layers (every coupling starts as the identity) would hide bugs in
    the maths under test. Actnorm layers are marked as initialised, so that their first call
    in training mode does not overwrite the random values.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    for m in module.modules():
        if hasattr(m, "initialized") and hasattr(m, "_ready"):  # an ActNorm
            m.initialized.fill_(True)
            m._ready = True
    return module
