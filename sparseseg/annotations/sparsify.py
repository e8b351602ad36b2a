"""Sparse annotations generated from dense ground truth, for experiments (science.md sections 2, 4).

- ``gp_mask``: threshold Gaussian-filtered white noise so that a chosen fraction of pixels is kept
  (the Sketchpose protocol; sigma 50 px at 0.5 um/px, i.e. 25 um, scaled with the pixel size);
- ``sparsify_dense``: keep the dense labels on such a mask (objects entirely kept are complete);
- ``objects_and_background``: k complete objects plus background strokes (Sugawara's subsets).
All are deterministic given the seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from sparseseg.annotations.model import BACKGROUND, PatchAnnotation, encode_dense

DEFAULT_SIGMA_UM = 25.0  # 50 px at 0.5 um/px


def gp_mask(shape: tuple[int, int], fraction: float, seed: int, pixel_size_um: float = 0.5,
            sigma_um: float = DEFAULT_SIGMA_UM) -> np.ndarray:
    """bool mask with ``round(fraction * size)`` pixels: the top values of smoothed white noise."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.ones(shape, bool)
    noise = np.random.default_rng(seed).standard_normal(shape)
    field = ndi.gaussian_filter(noise, sigma_um / pixel_size_um, mode="wrap")
    keep = int(round(fraction * field.size))
    order = np.argsort(field, axis=None)[::-1][:keep]  # exact count, ties broken by position
    mask = np.zeros(field.size, bool)
    mask[order] = True
    return mask.reshape(shape)


def sparsify_dense(labels: np.ndarray, fraction: float, seed: int, pixel_size_um: float = 0.5,
                   sigma_um: float = DEFAULT_SIGMA_UM) -> PatchAnnotation:
    """Dense instance labels (0 background) seen only through a GP mask covering ``fraction``."""
    mask = gp_mask(labels.shape, fraction, seed, pixel_size_um, sigma_um)
    partial = np.where(mask, encode_dense(labels), 0).astype(np.uint32)
    ids = np.unique(labels[labels > 0])
    inside = ndi.minimum(mask, labels, ids) if ids.size else []
    complete = frozenset(int(k) + 1 for k, whole in zip(ids, inside) if whole)
    return PatchAnnotation(partial=partial, complete=complete)


def objects_and_background(labels: np.ndarray, n_objects: int, seed: int, background_fraction: float = 0.25,
                           pixel_size_um: float = 0.5, sigma_um: float = DEFAULT_SIGMA_UM) -> PatchAnnotation:
    """``n_objects`` random complete objects plus GP background strokes over ``background_fraction``
    of the background pixels; everything else unknown."""
    rng = np.random.default_rng(seed)
    ids = np.unique(labels[labels > 0])
    chosen = rng.choice(ids, size=min(n_objects, ids.size), replace=False) if ids.size else ids
    partial = np.zeros(labels.shape, np.uint32)
    for k in chosen:
        partial[labels == k] = k + 1
    background = labels == 0
    if background.any() and background_fraction > 0:
        noise = ndi.gaussian_filter(rng.standard_normal(labels.shape), sigma_um / pixel_size_um, mode="wrap")
        threshold = np.quantile(noise[background], 1 - background_fraction)
        strokes = background & (noise >= threshold)
        partial[strokes] = BACKGROUND
    return PatchAnnotation(partial=partial, complete=frozenset(int(k) + 1 for k in chosen))
