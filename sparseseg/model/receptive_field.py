"""Empirical receptive field: how far an input pixel can influence an output pixel."""

from __future__ import annotations

import numpy as np
import torch

from sparseseg.model.unet import UNet


def empirical_halo(model: UNet, size: int | None = None, seed: int = 0) -> int:
    """Largest distance (px, Chebyshev) from the centre output pixel to an input pixel with non-zero gradient.

    Measured at a random input (so ReLUs are in varied states) as the support of the gradient of
    the centre output pixel (all output channels) with respect to the input, as StarDist does with
    an impulse response.
    """
    factor = model.downsampling
    size = size or (4 * model.halo + factor)
    size = -(-size // factor) * factor
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, model.config.in_channels, size, size, generator=generator, dtype=torch.float64)
    image.requires_grad_(True)
    model = model.double().eval()
    centre = size // 2
    model(image)[0, :, centre, centre].sum().backward()
    support = np.argwhere(image.grad[0].abs().sum(0).numpy() > 0)
    model.float()
    if support.size == 0:
        return 0
    return int(np.abs(support - centre).max())
