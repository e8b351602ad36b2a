"""Object sizes of an instance label image."""

from __future__ import annotations

import numpy as np


def median_diameter_px(labels: np.ndarray) -> float:
    """Diameter (px) of the disc whose area is the objects' median area; 0 when there is no object."""
    sizes = np.bincount(labels.ravel())[1:]
    sizes = sizes[sizes > 0]
    return float(np.sqrt(4 * np.median(sizes) / np.pi)) if sizes.size else 0.0
